//! Memory-mapped safetensors checkpoint (single file or sharded with an
//! index). Tensors are read one at a time; pages of a tensor that has been
//! consumed are handed back to the kernel so resident memory stays bounded.

use anyhow::{anyhow, bail, Context, Result};
use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// A shard's bytes: a read-only map of the file, or a buffer (tests, fuzzing).
enum Backing {
    Mmap(Mmap),
    Bytes(Vec<u8>),
}

impl std::ops::Deref for Backing {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Bytes(b) => b,
        }
    }
}

struct Shard {
    path: PathBuf,
    mmap: Backing,
    /// name → (dtype, shape, byte range within the file)
    tensors: BTreeMap<String, (Dtype, Vec<usize>, usize, usize)>,
}

pub struct Checkpoint {
    shards: Vec<Shard>,
    /// name → shard index
    index: BTreeMap<String, usize>,
}

/// A view of one tensor's raw bytes.
pub struct RawTensor<'a> {
    pub name: &'a str,
    pub dtype: Dtype,
    pub shape: &'a [usize],
    pub data: &'a [u8],
}

impl RawTensor<'_> {
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }
    /// Elements `[start, start + len)` widened to f32 (bf16/f16/f32 only).
    pub fn to_f32_range(&self, start: usize, len: usize) -> Result<Vec<f32>> {
        let w = match self.dtype {
            Dtype::BF16 | Dtype::F16 => 2,
            Dtype::F32 => 4,
            other => bail!(
                "tensor {}: dtype {:?} is not a float type",
                self.name,
                other
            ),
        };
        let bytes = self
            .data
            .get(start * w..(start + len) * w)
            .ok_or_else(|| anyhow!("tensor {}: range past its data", self.name))?;
        Ok(match self.dtype {
            Dtype::BF16 => bytes
                .par_chunks_exact(2)
                .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
                .collect(),
            Dtype::F16 => bytes
                .par_chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            _ => bytes
                .par_chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        })
    }
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        self.to_f32_range(0, self.n_elements())
    }
}

fn open_shard(path: &Path) -> Result<Shard> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: read-only private mapping of a checkpoint file that tern never
    // writes; the converter treats its input folder as read-only. Another
    // process truncating it underneath raises SIGBUS, which `crate::signals`
    // turns into a one-line error.
    let mmap =
        unsafe { Mmap::map(&f) }.with_context(|| format!("cannot map {}", path.display()))?;
    parse_shard(Backing::Mmap(mmap), path)
}

fn parse_shard(mmap: Backing, path: &Path) -> Result<Shard> {
    let st = SafeTensors::deserialize(&mmap).map_err(|e| {
        anyhow!(
            "{}: not a valid safetensors file ({}); is it truncated?",
            path.display(),
            crate::untrusted::one_line(&e.to_string())
        )
    })?;
    let base = mmap.as_ptr() as usize;
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        let d = view.data();
        // Offset of the view within the buffer it was parsed from.
        let start = d.as_ptr() as usize - base;
        tensors.insert(
            name,
            (view.dtype(), view.shape().to_vec(), start, start + d.len()),
        );
    }
    Ok(Shard {
        path: path.to_path_buf(),
        mmap,
        tensors,
    })
}

impl Checkpoint {
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let files: Vec<PathBuf> = if index_path.is_file() {
            let j: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(&index_path)
                    .with_context(|| format!("cannot read {}", index_path.display()))?,
            )
            .map_err(|e| anyhow!("model.safetensors.index.json is not valid JSON: {}", e))?;
            let map = j
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| anyhow!("model.safetensors.index.json has no weight_map"))?;
            let mut files: Vec<String> = map
                .values()
                .filter_map(|v| v.as_str().map(String::from))
                .collect();
            files.sort();
            files.dedup();
            for f in &files {
                if f.contains('/') || f.contains('\\') || f == ".." {
                    bail!(
                        "model.safetensors.index.json names a shard outside the folder: {}",
                        crate::untrusted::quoted(f)
                    );
                }
            }
            files.into_iter().map(|f| dir.join(f)).collect()
        } else if single.is_file() {
            vec![single]
        } else {
            bail!(
                "{} has no model.safetensors or model.safetensors.index.json",
                dir.display()
            );
        };
        let mut shards = Vec::new();
        let mut index = BTreeMap::new();
        for f in files {
            if !f.is_file() {
                bail!(
                    "missing shard {}",
                    crate::untrusted::quoted(&f.to_string_lossy())
                );
            }
            let s = open_shard(&f)?;
            for name in s.tensors.keys() {
                if index.insert(name.clone(), shards.len()).is_some() {
                    bail!(
                        "tensor {} appears in more than one shard",
                        crate::untrusted::quoted(name)
                    );
                }
            }
            shards.push(s);
        }
        Ok(Checkpoint { shards, index })
    }

    /// A single-shard checkpoint held in memory (the bytes of a
    /// `model.safetensors`), for tests and fuzzing.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Checkpoint> {
        let s = parse_shard(Backing::Bytes(bytes), Path::new("<memory>"))?;
        let index = s.tensors.keys().map(|n| (n.clone(), 0)).collect();
        Ok(Checkpoint {
            shards: vec![s],
            index,
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(|s| s.as_str())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn get(&self, name: &str) -> Option<RawTensor<'_>> {
        let &si = self.index.get(name)?;
        let s = &self.shards[si];
        let (key, (dtype, shape, a, b)) = s.tensors.get_key_value(name)?;
        Some(RawTensor {
            name: key,
            dtype: *dtype,
            shape,
            data: &s.mmap[*a..*b],
        })
    }

    pub fn require(&self, name: &str) -> Result<RawTensor<'_>> {
        self.get(name)
            .ok_or_else(|| anyhow!("checkpoint has no tensor {}", name))
    }

    /// Tell the kernel the pages of `name` are no longer needed, so that a
    /// streaming pass over a large checkpoint keeps a bounded resident set.
    pub fn release(&self, name: &str) {
        let Some(&si) = self.index.get(name) else {
            return;
        };
        let s = &self.shards[si];
        if let (Some(&(_, _, a, b)), Backing::Mmap(mmap)) = (s.tensors.get(name), &s.mmap) {
            release_pages(mmap, a, b - a);
            let _ = &s.path;
        }
    }
}

/// Drop bytes `off..off + len` of a read-only file mapping from this
/// process's resident memory; later reads fault them back in from the file
/// with identical contents. Best effort: failures are ignored.
#[cfg(unix)]
fn release_pages(m: &Mmap, off: usize, len: usize) {
    // SAFETY: the mapping is a read-only, file-backed private map that is
    // never written. MADV_DONTNEED on such pages only drops them from memory;
    // later reads fault them back in from the file with identical contents,
    // so no Rust reference observes a change.
    let _ = unsafe { m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, off, len) };
}

/// Windows has no MADV_DONTNEED for views of a file; `VirtualUnlock` on pages
/// that are not locked removes them from the working set instead (documented
/// behaviour of VirtualUnlock; it then reports ERROR_NOT_LOCKED, ignored here).
#[cfg(windows)]
fn release_pages(m: &Mmap, off: usize, len: usize) {
    let Some(range) = m.get(off..off.saturating_add(len)) else {
        return;
    };
    if range.is_empty() {
        return;
    }
    // SAFETY: `range` lies inside the live mapping `m`; VirtualUnlock only
    // changes which of its pages are resident, never their contents.
    let _ = unsafe {
        windows_sys::Win32::System::Memory::VirtualUnlock(range.as_ptr().cast(), range.len())
    };
}

#[cfg(not(any(unix, windows)))]
fn release_pages(_: &Mmap, _: usize, _: usize) {}
