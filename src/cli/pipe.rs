//! A closed pipe on stdout (`tern inspect M | head -1`, `tern run … | head`)
//! ends tern quietly with status 0, like other command-line tools, for every
//! subcommand at once.
//!
//! On Unix the Rust runtime ignores SIGPIPE, so a write to a pipe whose
//! reader is gone fails with EPIPE instead of killing the process; on Windows
//! the write fails with ERROR_NO_DATA. Both are `io::ErrorKind::BrokenPipe`.
//! Such an error can come back two ways: as an `Err` that a command returns
//! (streamed output written with `write!`), or as the panic of `println!`,
//! which unwinds (running destructors, so temporary files are removed) to
//! [`quiet_broken_pipe`], which turns both into exit status 0 without a word.
//! It is also where a failed command gets its one-line error and status 1,
//! as does a print that fails otherwise (`> /dev/full`: no space left).

use std::any::Any;
use std::io::{self, ErrorKind, Write};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

/// Run `f`, the whole command: 0 on success or on a closed pipe, 1 with a
/// one-line error otherwise. Other panics go on as before.
pub fn quiet_broken_pipe(f: impl FnOnce() -> anyhow::Result<()>) -> i32 {
    install_hook();
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) if is_broken_pipe(&e) => 0,
        Ok(Err(e)) if e.is::<Reported>() => 1,
        Ok(Err(e)) => {
            // One line: the outermost context and its causes joined; text
            // from files was quoted where it entered the message, and any
            // control character left is escaped here. A closed stderr has
            // no one to tell.
            let _ = writeln!(
                io::stderr(),
                "tern: error: {}",
                crate::untrusted::escape_controls(&format!("{:#}", e))
            );
            1
        }
        Err(p) if is_print_to_closed_pipe(p.as_ref()) => 0,
        Err(p) => match print_failure(p.as_ref()) {
            // Any other failed print (`> /dev/full`: no space left): one line, status 1.
            Some(msg) => {
                let _ = writeln!(io::stderr(), "tern: error: {}", msg);
                1
            }
            None => panic::resume_unwind(p),
        },
    }
}

/// A failure the command has reported itself (e.g. `check`'s FAIL verdict):
/// exit status 1 with no further message.
#[derive(Debug, thiserror::Error)]
#[error("failure already reported")]
pub struct Reported;

/// Whether an error, or any of its causes, is a broken pipe.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == ErrorKind::BrokenPipe)
    })
}

/// The panic message of `println!`/`eprintln!` failing to write
/// ("failed printing to stdout: " and the OS error's text), or None for any
/// other panic.
fn print_failure(payload: &(dyn Any + Send)) -> Option<&str> {
    let msg = match (
        payload.downcast_ref::<String>(),
        payload.downcast_ref::<&str>(),
    ) {
        (Some(s), _) => s.as_str(),
        (None, Some(s)) => s,
        (None, None) => return None,
    };
    msg.starts_with("failed printing to std").then_some(msg)
}

/// A [`print_failure`] whose OS error has the kind `BrokenPipe` (EPIPE on
/// Unix, ERROR_NO_DATA or ERROR_BROKEN_PIPE on Windows; found by asking std
/// which codes map to that kind, so no platform's wording is written here).
fn is_print_to_closed_pipe(payload: &(dyn Any + Send)) -> bool {
    let Some(msg) = print_failure(payload) else {
        return false;
    };
    let Some(err) = msg
        .strip_prefix("failed printing to stdout: ")
        .or_else(|| msg.strip_prefix("failed printing to stderr: "))
    else {
        return false;
    };
    (1..4096).any(|code| {
        let e = io::Error::from_raw_os_error(code);
        e.kind() == ErrorKind::BrokenPipe && e.to_string() == err
    })
}

/// Keep the default panic message, except for printing to a closed pipe and
/// for a failed print on the main thread (which [`quiet_broken_pipe`]
/// reports in one line).
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let p = info.payload();
            let main = std::thread::current().name() == Some("main");
            let reported = main && print_failure(p).is_some();
            if !(reported || is_print_to_closed_pipe(p)) {
                default(info);
            }
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognizes_closed_pipes_only() {
        let epipe = io::Error::from(ErrorKind::BrokenPipe);
        let e = anyhow::Error::from(epipe).context("cannot write the reply");
        assert!(is_broken_pipe(&e));
        assert!(!is_broken_pipe(&anyhow::anyhow!("Broken pipe")));
        let os = (1..4096)
            .map(io::Error::from_raw_os_error)
            .find(|e| e.kind() == ErrorKind::BrokenPipe)
            .expect("this platform has a broken-pipe error code");
        let msg = format!("failed printing to stdout: {}", os);
        assert!(is_print_to_closed_pipe(&msg));
        let full = format!(
            "failed printing to stdout: {}",
            io::Error::from_raw_os_error(28)
        );
        assert!(!is_print_to_closed_pipe(&full));
        assert_eq!(print_failure(&full), Some(full.as_str()));
        assert!(!is_print_to_closed_pipe(&"index out of bounds"));
        assert!(print_failure(&"index out of bounds").is_none());
    }
}
