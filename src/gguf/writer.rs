//! Streaming GGUF writer. The header is written from a plan (names, dims,
//! types, sizes), then each tensor's bytes are produced one at a time, so
//! memory stays bounded by the largest tensor. The file appears atomically
//! ([`AtomicFile`]): it is written to a uniquely named temporary file beside
//! it, fsynced and renamed.

use super::{align_up, Value, DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION};
use crate::quant::GgmlType;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct TensorPlan {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
}

impl TensorPlan {
    pub fn size(&self) -> Result<u64> {
        let n = self
            .dims
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .with_context(|| format!("tensor {}: dims {:?} overflow", self.name, self.dims))?;
        let row = *self
            .dims
            .first()
            .with_context(|| format!("tensor {} has no dimensions", self.name))?;
        self.ty
            .tensor_bytes(n, row)
            .with_context(|| format!("tensor {} {:?}", self.name, self.dims))
    }
}

fn put_str(w: &mut impl Write, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn put_value(w: &mut impl Write, v: &Value) -> std::io::Result<()> {
    match v {
        Value::U8(x) => w.write_all(&[*x]),
        Value::I8(x) => w.write_all(&[*x as u8]),
        Value::U16(x) => w.write_all(&x.to_le_bytes()),
        Value::I16(x) => w.write_all(&x.to_le_bytes()),
        Value::U32(x) => w.write_all(&x.to_le_bytes()),
        Value::I32(x) => w.write_all(&x.to_le_bytes()),
        Value::F32(x) => w.write_all(&x.to_le_bytes()),
        Value::Bool(x) => w.write_all(&[*x as u8]),
        Value::String(s) => put_str(w, s),
        Value::U64(x) => w.write_all(&x.to_le_bytes()),
        Value::I64(x) => w.write_all(&x.to_le_bytes()),
        Value::F64(x) => w.write_all(&x.to_le_bytes()),
        Value::Array(et, items) => {
            w.write_all(&(*et as u32).to_le_bytes())?;
            w.write_all(&(items.len() as u64).to_le_bytes())?;
            for it in items {
                put_value(w, it)?;
            }
            Ok(())
        }
    }
}

/// Counts bytes so the writer can check that each producer wrote exactly
/// the planned size (and [`write_gguf`] report what it wrote).
struct Counting<W: Write> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A file that only appears under its final name once `commit` is called;
/// dropping it uncommitted removes the temporary file.
///
/// The bytes go to a new, uniquely named file in the target's directory
/// (`.<name>.<random>.partial`, created with `O_EXCL` by the `tempfile`
/// crate, so an existing file or symlink of that name is never opened or
/// followed), which is fsynced and renamed over the target. Two processes
/// writing the same target at once each write their own file; the target
/// ends as one of the two complete files, never a mix.
///
/// A target that is a character device or a FIFO (`/dev/null`, a named
/// pipe) is written straight into instead, as a shell redirection would:
/// renaming over it would replace the device or pipe with a plain file
/// (and where the directory is not writable, as `/dev` is not for most
/// users, fail). A block device or a socket is refused.
pub struct AtomicFile {
    target: PathBuf,
    /// `None` once committed.
    sink: Option<Sink>,
}

/// The temporary files of outputs being written, for [`remove_partials_then`].
static PARTIALS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

fn partials() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    PARTIALS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Remove the temporary files of every [`AtomicFile`] not yet committed,
/// then call `end`, which should end the process: for a signal handler
/// ([`crate::signals::remove_partials_on_signal`]), since an exit skips the
/// drops that would remove them. The list stays locked until `end`
/// returns, so another thread that is creating or committing an output
/// waits instead of creating a file no one removes or renaming one
/// already removed.
pub fn remove_partials_then(end: impl FnOnce()) {
    let mut list = partials();
    for p in list.drain(..) {
        let _ = std::fs::remove_file(p);
    }
    end();
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        // Uncommitted: the temporary file goes with the NamedTempFile, and
        // only then off the list (so a Ctrl-C between the two still finds
        // it).
        if let Some(Sink::Partial(f)) = self.sink.take() {
            let p = f.path().to_path_buf();
            let mut list = partials();
            drop(f);
            list.retain(|q| *q != p);
        }
    }
}

enum Sink {
    /// The temporary file renamed over the target on commit.
    Partial(tempfile::NamedTempFile),
    /// A character device or FIFO, opened for writing (Unix only).
    #[cfg_attr(not(unix), allow(dead_code))]
    Stream(File),
}

impl AtomicFile {
    /// Start writing `target`. Without `force` an existing target is an
    /// error (a character device or FIFO, which is written into, is not);
    /// a directory is always an error.
    pub fn create(target: &Path, force: bool) -> Result<AtomicFile> {
        let fail = |kind, msg| Err(std::io::Error::new(kind, msg).into());
        if target.is_dir() {
            return fail(
                std::io::ErrorKind::IsADirectory,
                format!("{} is a directory", target.display()),
            );
        }
        match special_target(target) {
            Some(Special::Stream) => {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(target)
                    .with_context(|| format!("cannot open {} for writing", target.display()))?;
                return Ok(AtomicFile {
                    target: target.to_path_buf(),
                    sink: Some(Sink::Stream(f)),
                });
            }
            Some(Special::Refused) => {
                return fail(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "{} is a block device or a socket, not a file tern writes",
                        target.display()
                    ),
                );
            }
            None => {}
        }
        if target.symlink_metadata().is_ok() && !force {
            return fail(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} already exists (use --force to overwrite)",
                    target.display()
                ),
            );
        }
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let mut prefix = std::ffi::OsString::from(".");
        prefix.push(target.file_name().unwrap_or_default());
        prefix.push(".");
        let mut b = tempfile::Builder::new();
        b.prefix(&prefix).suffix(".partial");
        // tempfile creates 0600 files; an output file gets the mode a plain
        // File::create would give it (0666 less the umask).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            b.permissions(std::fs::Permissions::from_mode(0o666));
        }
        // Listed under the same lock as it is created (see
        // `remove_partials_then`).
        let mut list = partials();
        let file = b.tempfile_in(dir).with_context(|| {
            format!(
                "cannot create a temporary file in {} for {}",
                dir.display(),
                target.display()
            )
        })?;
        list.push(file.path().to_path_buf());
        drop(list);
        Ok(AtomicFile {
            target: target.to_path_buf(),
            sink: Some(Sink::Partial(file)),
        })
    }
    pub fn file(&mut self) -> &mut File {
        match self.sink.as_mut() {
            Some(Sink::Partial(f)) => f.as_file_mut(),
            Some(Sink::Stream(f)) => f,
            None => unreachable!("an AtomicFile is not used after commit"),
        }
    }
    /// Sync the bytes and rename the temporary file over the target (which
    /// replaces a file or symlink of that name, never follows it).
    pub fn commit(mut self) -> Result<()> {
        let file = match self.sink.take() {
            Some(Sink::Partial(f)) => f,
            // Nothing to sync or rename: the bytes went to the device or pipe.
            Some(Sink::Stream(_)) | None => return Ok(()),
        };
        let partial = file.path().to_path_buf();
        if let Err(e) = file.as_file().sync_all() {
            // Dropping the file removes it.
            let mut list = partials();
            drop(file);
            list.retain(|q| *q != partial);
            return Err(e).with_context(|| format!("cannot sync {}", partial.display()));
        }
        // Renamed and taken off the list under the lock (see
        // `remove_partials_then`); a failed persist gives the file back
        // inside its error, which removes it when dropped.
        let mut list = partials();
        let persisted = file.persist(&self.target);
        list.retain(|q| *q != partial);
        drop(list);
        persisted.map_err(|e| {
            anyhow::anyhow!(
                "cannot rename {} to {}: {}",
                partial.display(),
                self.target.display(),
                e.error
            )
        })?;
        // Make the rename itself durable (best effort: not every platform
        // can open a directory).
        #[cfg(unix)]
        if let Some(dir) = self.target.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

/// Write a GGUF file atomically ([`AtomicFile`]). `produce(i, w)` must
/// write exactly the bytes of tensor `i` of `tensors`. Returns the bytes
/// written (also what a device or pipe target received).
pub fn write_gguf(
    path: &Path,
    force: bool,
    kv: &[(String, Value)],
    tensors: &[TensorPlan],
    produce: impl FnMut(usize, &mut dyn Write) -> Result<()>,
) -> Result<u64> {
    let mut out = AtomicFile::create(path, force)?;
    let n = {
        let mut w = Counting {
            inner: BufWriter::with_capacity(1 << 20, out.file()),
            n: 0,
        };
        write_gguf_to(&mut w, kv, tensors, produce)?;
        w.flush()?;
        w.n
    };
    out.commit()?;
    Ok(n)
}

/// What an output path that is not a plain file or a symlink to one is
/// (Unix only).
#[cfg_attr(not(unix), allow(dead_code))]
enum Special {
    /// A character device or a FIFO: written straight into.
    Stream,
    /// A block device or a socket: refused.
    Refused,
}

/// `path`'s kind when it is (or a symlink leads to: `/dev/stdout`) a
/// device, FIFO or socket; `None` for anything else (Unix; elsewhere
/// always `None`). A symlink to anything else is replaced, never followed.
fn special_target(path: &Path) -> Option<Special> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let ft = path.metadata().ok()?.file_type();
        if ft.is_char_device() || ft.is_fifo() {
            Some(Special::Stream)
        } else if ft.is_block_device() || ft.is_socket() {
            Some(Special::Refused)
        } else {
            None
        }
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Whether `path` is (or links to) a character device or a FIFO, which
/// [`AtomicFile`] writes straight into: nothing there is overwritten, so
/// no `--force` is needed for it.
pub fn is_stream_target(path: &Path) -> bool {
    matches!(special_target(path), Some(Special::Stream))
}

/// Write a GGUF image to any writer (a file, or a `Vec<u8>` for tests and
/// fuzzing); see [`write_gguf`].
pub fn write_gguf_to(
    out: &mut dyn Write,
    kv: &[(String, Value)],
    tensors: &[TensorPlan],
    mut produce: impl FnMut(usize, &mut dyn Write) -> Result<()>,
) -> Result<()> {
    let alignment = kv
        .iter()
        .find(|(k, _)| k == "general.alignment")
        .and_then(|(_, v)| v.as_u64())
        .unwrap_or(DEFAULT_ALIGNMENT);
    let mut sizes = Vec::with_capacity(tensors.len());
    for t in tensors {
        sizes.push(t.size()?);
    }
    let mut w = Counting { inner: out, n: 0 };
    let zeros = |n: u64| -> Result<Vec<u8>> { Ok(vec![0u8; usize::try_from(n)?]) };
    w.write_all(GGUF_MAGIC)?;
    w.write_all(&GGUF_VERSION.to_le_bytes())?;
    w.write_all(&(tensors.len() as u64).to_le_bytes())?;
    w.write_all(&(kv.len() as u64).to_le_bytes())?;
    for (k, v) in kv {
        put_str(&mut w, k)?;
        w.write_all(&(v.value_type() as u32).to_le_bytes())?;
        put_value(&mut w, v)?;
    }
    let mut offset = 0u64;
    let mut offsets = Vec::with_capacity(tensors.len());
    for (t, &size) in tensors.iter().zip(&sizes) {
        put_str(&mut w, &t.name)?;
        w.write_all(&u32::try_from(t.dims.len())?.to_le_bytes())?;
        for d in &t.dims {
            w.write_all(&d.to_le_bytes())?;
        }
        w.write_all(&t.ty.id().to_le_bytes())?;
        w.write_all(&offset.to_le_bytes())?;
        offsets.push(offset);
        offset = align_up(offset + size, alignment);
    }
    let pad = align_up(w.n, alignment) - w.n;
    w.write_all(&zeros(pad)?)?;
    let data_start = w.n;
    for (i, t) in tensors.iter().enumerate() {
        let here = w.n - data_start;
        if here < offsets[i] {
            w.write_all(&zeros(offsets[i] - here)?)?;
        }
        let before = w.n;
        produce(i, &mut w)?;
        let wrote = w.n - before;
        if wrote != sizes[i] {
            bail!(
                "internal error: tensor {} produced {} bytes, planned {}",
                t.name,
                wrote,
                sizes[i]
            );
        }
    }
    Ok(())
}
