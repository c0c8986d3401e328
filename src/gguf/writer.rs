//! Streaming GGUF writer. The header is written from a plan (names, dims,
//! types, sizes), then each tensor's bytes are produced one at a time, so
//! memory stays bounded by the largest tensor. The file appears atomically:
//! it is written to `<out>.partial`, fsynced and renamed.

use super::{align_up, Value, DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION};
use crate::quant::GgmlType;
use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
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
        let n: u64 = self.dims.iter().product();
        self.ty
            .tensor_bytes(n, self.dims[0])
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
/// the planned size.
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
/// dropping it uncommitted removes the partial file.
pub struct AtomicFile {
    partial: PathBuf,
    target: PathBuf,
    file: Option<File>,
}

impl AtomicFile {
    pub fn create(target: &Path, force: bool) -> Result<AtomicFile> {
        let fail = |kind, msg| Err(std::io::Error::new(kind, msg).into());
        if target.exists() && !force {
            return fail(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} already exists (use --force to overwrite)",
                    target.display()
                ),
            );
        }
        if target.is_dir() {
            return fail(
                std::io::ErrorKind::IsADirectory,
                format!("{} is a directory", target.display()),
            );
        }
        let mut partial = target.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&partial)
            .with_context(|| format!("cannot create {}", partial.display()))?;
        Ok(AtomicFile {
            partial,
            target: target.to_path_buf(),
            file: Some(file),
        })
    }
    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("file present until commit")
    }
    pub fn commit(mut self) -> Result<()> {
        let f = self.file.take().expect("file present until commit");
        f.sync_all()
            .with_context(|| format!("cannot sync {}", self.partial.display()))?;
        drop(f);
        std::fs::rename(&self.partial, &self.target).with_context(|| {
            format!(
                "cannot rename {} to {}",
                self.partial.display(),
                self.target.display()
            )
        })?;
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

/// Write a GGUF file. `produce(i, w)` must write exactly the bytes of tensor
/// `i` of `tensors`.
pub fn write_gguf(
    path: &Path,
    force: bool,
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
    let mut out = AtomicFile::create(path, force)?;
    {
        let mut w = Counting {
            inner: BufWriter::with_capacity(1 << 20, out.file()),
            n: 0,
        };
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
            w.write_all(&(t.dims.len() as u32).to_le_bytes())?;
            for d in &t.dims {
                w.write_all(&d.to_le_bytes())?;
            }
            w.write_all(&t.ty.id().to_le_bytes())?;
            w.write_all(&offset.to_le_bytes())?;
            offsets.push(offset);
            offset = align_up(offset + size, alignment);
        }
        let pad = align_up(w.n, alignment) - w.n;
        w.write_all(&vec![0u8; pad as usize])?;
        let data_start = w.n;
        for (i, t) in tensors.iter().enumerate() {
            let here = w.n - data_start;
            if here < offsets[i] {
                w.write_all(&vec![0u8; (offsets[i] - here) as usize])?;
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
        w.flush()?;
    }
    out.commit()
}
