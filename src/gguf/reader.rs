//! Bounds-checked GGUF reader over a memory map.

use super::{align_up, Value, ValueType, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS};
use crate::quant::GgmlType;
use anyhow::{anyhow, bail, Context, Result};
use memmap2::Mmap;
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
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    /// (rows, cols) of a 2-D weight: rows = outputs = dims[1], cols = dims[0].
    pub fn rows_cols(&self) -> (usize, usize) {
        let cols = self.dims[0] as usize;
        let rows = (self.n_elements() / self.dims[0].max(1)) as usize;
        (rows, cols)
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
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

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
        let b = self.take(n as usize, what)?;
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
                let mut v = Vec::with_capacity(n as usize);
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
        // against (llama.cpp has the same contract).
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
        let mut c = Cursor { buf, pos: 0 };
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
        let mut kv = Vec::with_capacity(n_kv as usize);
        for i in 0..n_kv {
            let key = c.string(&format!("metadata key #{}", i))?;
            let ty_raw = c.u32(&key)?;
            let ty = ValueType::from_u32(ty_raw)
                .ok_or_else(|| anyhow!("metadata {}: unknown value type {}", key, ty_raw))?;
            let v = c.value(ty, &key, 0)?;
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
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = c.string(&format!("tensor name #{}", i))?;
            let nd = c.u32(&name)? as usize;
            if nd == 0 || nd > MAX_DIMS {
                bail!(
                    "tensor {}: {} dimensions (1..={} allowed)",
                    name,
                    nd,
                    MAX_DIMS
                );
            }
            let mut dims = Vec::with_capacity(nd);
            for _ in 0..nd {
                dims.push(c.u64(&name)?);
            }
            let ty_raw = c.u32(&name)?;
            let ty = GgmlType::from_id(ty_raw).ok_or_else(|| {
                anyhow!(
                    "tensor {}: unknown or unsupported tensor type {}",
                    name,
                    ty_raw
                )
            })?;
            let offset = c.u64(&name)?;
            let mut n: u64 = 1;
            for &d in &dims {
                if d == 0 {
                    bail!("tensor {}: zero dimension in {:?}", name, dims);
                }
                n = n
                    .checked_mul(d)
                    .filter(|&n| n < (1u64 << 48))
                    .ok_or_else(|| anyhow!("tensor {}: absurd dimensions {:?}", name, dims))?;
            }
            let size = ty
                .tensor_bytes(n, dims[0])
                .with_context(|| format!("tensor {} {:?}", name, dims))?;
            if offset % alignment != 0 {
                bail!(
                    "tensor {}: offset {} is not aligned to {}",
                    name,
                    offset,
                    alignment
                );
            }
            if tensors.iter().any(|t: &TensorInfo| t.name == name) {
                bail!("tensor {} appears twice", name);
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
                .ok_or_else(|| anyhow!("tensor {}: offset overflows", t.name))?;
            if end > file_len {
                bail!(
                    "tensor {}: data [{}, {}) runs past the end of the file ({} bytes); the file is truncated or corrupt",
                    t.name,
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
        self.tensors.iter().find(|t| t.name == name)
    }
    /// The bytes of a tensor (bounds were checked at open).
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let s = (self.data_start + t.offset) as usize;
        &self.backing.bytes()[s..s + t.size as usize]
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
}
