//! Library errors as Python exceptions of `tern._errors`: every one is a
//! `tern.TernError`, its text the library's one-line message (what the CLI
//! prints after `tern: error:`). Bad arguments are also `ValueError`s, file
//! problems also `OSError`s (with `errno`, and the `FileNotFoundError` /
//! `FileExistsError` subclasses where the OS error says so).

use pyo3::prelude::*;

/// Which exception a failure becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A bad argument: `tern.TernValueError` (a `ValueError`).
    Value,
    /// A file that cannot be used: `tern.TernOSError` (an `OSError`).
    Os,
    /// Anything else: `tern.TernError`.
    Runtime,
}

/// A library error and the exception it becomes. An I/O error anywhere in
/// the chain makes it an `OSError` whatever the kind.
#[derive(Debug)]
pub struct Fail(pub Kind, pub anyhow::Error);

impl Fail {
    pub fn value(e: impl Into<anyhow::Error>) -> Fail {
        Fail(Kind::Value, e.into())
    }
    pub fn os(e: impl Into<anyhow::Error>) -> Fail {
        Fail(Kind::Os, e.into())
    }
    pub fn runtime(e: impl Into<anyhow::Error>) -> Fail {
        Fail(Kind::Runtime, e.into())
    }
}

/// A `ValueError` (`tern.TernValueError`) with `msg`.
pub fn value_error(msg: impl std::fmt::Display) -> PyErr {
    Fail::value(anyhow::anyhow!("{}", msg)).into()
}

/// errno for an I/O error: the OS's own, or the usual one for its kind.
fn errno(e: &std::io::Error) -> Option<i32> {
    use std::io::ErrorKind as K;
    e.raw_os_error().or(match e.kind() {
        // The POSIX numbers, the same on Linux, macOS and the BSDs.
        K::NotFound => Some(2),
        K::PermissionDenied => Some(13),
        K::AlreadyExists => Some(17),
        K::NotADirectory => Some(20),
        K::IsADirectory => Some(21),
        _ => None,
    })
}

fn to_pyerr(py: Python<'_>, f: Fail) -> PyResult<PyErr> {
    let Fail(kind, e) = f;
    // One line: the outermost context and its causes, as the CLI prints it.
    let msg = format!("{:#}", e);
    let io = e.chain().find_map(|c| c.downcast_ref::<std::io::Error>());
    let m = py.import("tern._errors")?;
    let exc = match kind {
        _ if io.is_some() || kind == Kind::Os => {
            m.getattr("_os_error")?.call1((msg, io.and_then(errno)))?
        }
        Kind::Value => m.getattr("TernValueError")?.call1((msg,))?,
        _ => m.getattr("TernError")?.call1((msg,))?,
    };
    Ok(PyErr::from_value(exc))
}

impl From<Fail> for PyErr {
    fn from(f: Fail) -> PyErr {
        Python::attach(|py| to_pyerr(py, f).unwrap_or_else(|e| e))
    }
}
