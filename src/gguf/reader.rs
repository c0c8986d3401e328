//! Bounds-checked GGUF reader over a memory map.

use super::{align_up, Value, ValueType, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS};
use crate::quant::GgmlType;
use crate::untrusted::quoted;
use anyhow::{anyhow, bail, Context, Result};
use memmap2::Mmap;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: dims[0] is the row length (contiguous).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset relative to the start of the data section.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
}

impl TensorInfo {
    /// Number of elements (the reader checked that it is below 2^48).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    /// Number of elements as a `usize` (fits: the data lies in the file).
    pub fn n_elements_usize(&self) -> usize {
        usize::try_from(self.n_elements()).expect("tensor sizes are checked against the file")
    }
    /// (rows, cols) of a 2-D weight: rows = outputs = dims[1], cols = dims[0].
    pub fn rows_cols(&self) -> (usize, usize) {
        let cols = self.dims[0];
        let rows = self.n_elements() / cols.max(1);
        let fit = |x: u64| usize::try_from(x).expect("tensor sizes are checked against the file");
        (fit(rows), fit(cols))
    }
}

enum Backing {
    Mmap(Mmap),
    Bytes(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Bytes(b) => b,
        }
    }
}

pub struct GgufFile {
    backing: Backing,
    pub path: PathBuf,
    pub version: u32,
    pub kv: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    pub data_start: u64,
    /// Tensor name → index in `tensors`.
    by_name: HashMap<String, usize>,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Array elements of the metadata read so far (see [`MAX_META_ELEMENTS`]).
    elements: u64,
}

/// Most array elements the metadata of one file may hold, all arrays
/// together. Each is held as a [`Value`] of 32 bytes however few bytes it
/// takes in the file (one for a u8 or a bool), so the check that an array
/// fits in the file alone let a 64 MiB file take 2 GiB of memory. The
/// largest real metadata is a tokenizer's: ~262 thousand tokens with
/// their types and scores, and a few hundred thousand merges.
pub const MAX_META_ELEMENTS: u64 = 1 << 24;

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            bail!(
                "truncated file: {} needs {} bytes at offset {}, only {} left",
                what,
                n,
                self.pos,
                self.remaining()
            );
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u64(what)?;
        if n > self.remaining() as u64 {
            bail!(
                "{} has length {} past the end of the file (offset {})",
                what,
                n,
                self.pos
            );
        }
        let n = usize::try_from(n).expect("bounded by the remaining bytes");
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| anyhow!("{} is not valid UTF-8", what))
    }
    fn value(&mut self, ty: ValueType, what: &str, depth: usize) -> Result<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.arr::<1>(what)?[0]),
            ValueType::I8 => Value::I8(self.arr::<1>(what)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.arr(what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.arr(what)?)),
            ValueType::U32 => Value::U32(self.u32(what)?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.arr(what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.arr(what)?)),
            ValueType::Bool => match self.arr::<1>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => bail!("{}: invalid bool byte {}", what, b),
            },
            ValueType::String => Value::String(self.string(what)?),
            ValueType::U64 => Value::U64(self.u64(what)?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.arr(what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.arr(what)?)),
            ValueType::Array => {
                if depth > 2 {
                    bail!("{}: arrays nested too deeply", what);
                }
                let et_raw = self.u32(what)?;
                let et = ValueType::from_u32(et_raw)
                    .ok_or_else(|| anyhow!("{}: unknown array element type {}", what, et_raw))?;
                let n = self.u64(what)?;
                if n.saturating_mul(et.min_size()) > self.remaining() as u64 {
                    bail!("{}: array of {} elements does not fit in the file", what, n);
                }
                self.elements = self.elements.saturating_add(n);
                if self.elements > MAX_META_ELEMENTS {
                    bail!(
                        "{}: the metadata's arrays hold more than {} elements in all",
                        what,
                        MAX_META_ELEMENTS
                    );
                }
                // Bounded by the bytes left, checked just above.
                let mut v = Vec::with_capacity(usize::try_from(n)?);
                for _ in 0..n {
                    v.push(self.value(et, what, depth + 1)?);
                }
                Value::Array(et, v)
            }
        })
    }
}

impl GgufFile {
    /// Open and validate a GGUF file through a read-only memory map.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let len = f.metadata()?.len();
        if len < 24 {
            bail!("{}: not a GGUF file (only {} bytes)", path.display(), len);
        }
        // SAFETY: the map is read-only and private to this process; tern never
        // writes the file while it is mapped. Another process truncating the
        // file underneath us is outside what any mmap-based reader can guard
        // against (llama.cpp has the same contract): reads past the new end
        // raise SIGBUS, which `crate::signals` turns into a one-line error.
        let mmap =
            unsafe { Mmap::map(&f) }.with_context(|| format!("cannot map {}", path.display()))?;
        Self::parse(Backing::Mmap(mmap), path).with_context(|| format!("{}", path.display()))
    }

    /// Parse a GGUF image held in memory (tests, small files).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile> {
        Self::parse(Backing::Bytes(bytes), Path::new("<memory>"))
    }

    fn parse(backing: Backing, path: &Path) -> Result<GgufFile> {
        let buf = backing.bytes();
        let mut c = Cursor {
            buf,
            pos: 0,
            elements: 0,
        };
        let magic = c.take(4, "magic")?;
        if magic != GGUF_MAGIC {
            bail!("not a GGUF file (bad magic {:02x?})", magic);
        }
        let version = c.u32("version")?;
        if version != 2 && version != 3 {
            bail!("unsupported GGUF version {} (tern reads 2 and 3)", version);
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("metadata count")?;
        // Each metadata entry takes at least 8 (key len) + 4 (type) + 1 bytes,
        // each tensor entry at least 8 + 4 + 8 + 4 + 8.
        if n_kv.saturating_mul(13) > c.remaining() as u64 {
            bail!(
                "truncated or corrupt file: metadata count {} does not fit in the file",
                n_kv
            );
        }
        if n_tensors.saturating_mul(32) > c.remaining() as u64 {
            bail!(
                "truncated or corrupt file: tensor count {} does not fit in the file",
                n_tensors
            );
        }
        // Both counts are bounded by the bytes left, checked just above.
        let mut kv = Vec::with_capacity(usize::try_from(n_kv)?);
        for i in 0..n_kv {
            let key = c.string(&format!("metadata key #{}", i))?;
            let what = format!("metadata {}", quoted(&key));
            let ty_raw = c.u32(&what)?;
            let ty = ValueType::from_u32(ty_raw)
                .ok_or_else(|| anyhow!("{}: unknown value type {}", what, ty_raw))?;
            let v = c.value(ty, &what, 0)?;
            kv.push((key, v));
        }
        let alignment = match kv.iter().find(|(k, _)| k == "general.alignment") {
            Some((_, v)) => {
                let a = v
                    .as_u64()
                    .ok_or_else(|| anyhow!("general.alignment is not an integer"))?;
                if a == 0 || !a.is_power_of_two() || a > 1 << 20 {
                    bail!("general.alignment {} is not a sane power of two", a);
                }
                a
            }
            None => DEFAULT_ALIGNMENT,
        };
        let mut tensors = Vec::with_capacity(usize::try_from(n_tensors)?);
        let mut by_name = HashMap::with_capacity(tensors.capacity());
        for i in 0..n_tensors {
            let name = c.string(&format!("tensor name #{}", i))?;
            let what = format!("tensor {}", quoted(&name));
            let nd = c.u32(&what)?;
            let nd = match usize::try_from(nd) {
                Ok(nd) if (1..=MAX_DIMS).contains(&nd) => nd,
                _ => bail!("{}: {} dimensions (1..={} allowed)", what, nd, MAX_DIMS),
            };
            let mut dims = Vec::with_capacity(nd);
            for _ in 0..nd {
                dims.push(c.u64(&what)?);
            }
            let ty_raw = c.u32(&what)?;
            let ty = GgmlType::from_id(ty_raw).ok_or_else(|| {
                anyhow!("{}: unknown or unsupported tensor type {}", what, ty_raw)
            })?;
            let offset = c.u64(&what)?;
            let mut n: u64 = 1;
            for &d in &dims {
                if d == 0 {
                    bail!("{}: zero dimension in {:?}", what, dims);
                }
                n = n
                    .checked_mul(d)
                    .filter(|&n| n < (1u64 << 48))
                    .ok_or_else(|| anyhow!("{}: absurd dimensions {:?}", what, dims))?;
            }
            let size = ty
                .tensor_bytes(n, dims[0])
                .with_context(|| format!("{} {:?}", what, dims))?;
            if offset % alignment != 0 {
                bail!(
                    "{}: offset {} is not aligned to {}",
                    what,
                    offset,
                    alignment
                );
            }
            if by_name.insert(name.clone(), tensors.len()).is_some() {
                bail!("{} appears twice", what);
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
                size,
            });
        }
        let data_start = align_up(c.pos as u64, alignment);
        let file_len = buf.len() as u64;
        if data_start > file_len && !tensors.is_empty() {
            bail!("truncated file: data section starts past the end");
        }
        for t in &tensors {
            let end = data_start
                .checked_add(t.offset)
                .and_then(|x| x.checked_add(t.size))
                .ok_or_else(|| anyhow!("tensor {}: offset overflows", quoted(&t.name)))?;
            if end > file_len {
                bail!(
                    "tensor {}: data [{}, {}) runs past the end of the file ({} bytes); the file is truncated or corrupt",
                    quoted(&t.name),
                    data_start + t.offset,
                    end,
                    file_len
                );
            }
        }
        Ok(GgufFile {
            backing,
            path: path.to_path_buf(),
            version,
            kv,
            tensors,
            alignment,
            data_start,
            by_name,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.kv.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(|v| v.as_str())
    }
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(|v| v.as_u64())
    }
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(|v| v.as_f64())
    }
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(|v| v.as_bool())
    }
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }
    /// Byte range of a tensor's data in the file image. Bounds were checked
    /// at open, so the range lies in the image and the casts cannot wrap.
    pub fn tensor_range(&self, t: &TensorInfo) -> std::ops::Range<usize> {
        let start = usize::try_from(self.data_start + t.offset).expect("checked at open");
        start..start + usize::try_from(t.size).expect("checked at open")
    }
    /// The bytes of a tensor (bounds were checked at open).
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        &self.backing.bytes()[self.tensor_range(t)]
    }
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }
    /// The whole file image.
    pub fn raw_bytes(&self) -> &[u8] {
        self.backing.bytes()
    }
    pub fn file_size(&self) -> u64 {
        self.backing.bytes().len() as u64
    }

    /// Give the resident pages of a tensor's bytes back to the OS, for a
    /// tensor that was copied out (repacked) and is not read from the map
    /// again: they no longer count in this process's resident set.
    pub fn release(&self, t: &TensorInfo) {
        self.release_range(t, 0, self.tensor_range(t).len())
    }

    /// [`GgufFile::release`] for bytes `start .. start + len` of a tensor
    /// (clamped to it). Only whole pages inside the range are released
    /// (rounded inwards to 64 KiB, a multiple of every common page size),
    /// so neighbours are untouched. A no-op for in-memory files and off
    /// Unix.
    pub fn release_range(&self, t: &TensorInfo, start: usize, len: usize) {
        #[cfg(unix)]
        if let Backing::Mmap(m) = &self.backing {
            const ALIGN: usize = 64 << 10;
            let range = self.tensor_range(t);
            let (at, size) = (range.start, range.len());
            let (start, end) = (start.min(size), start.saturating_add(len).min(size));
            let base = m.as_ptr() as usize;
            let a = (base + at + start).next_multiple_of(ALIGN) - base;
            let b = (base + at + end) / ALIGN * ALIGN - base;
            if a < b {
                // SAFETY: the map is read-only and private and tern never
                // writes it, so dropping its pages loses nothing: a later
                // read (say, by a caller that still holds `tensor_data` of
                // this range) faults the same bytes back in from the file.
                // The range lies inside the map (the tensor bounds were
                // checked at open).
                let _ = unsafe {
                    m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, a, b - a)
                };
            }
        }
        #[cfg(not(unix))]
        let _ = (t, start, len);
    }
}
