//! Memory for weights the kernels stream: large buffers are anonymous
//! mappings advised for transparent huge pages, the data starting on a
//! 2 MiB boundary, so every whole 2 MiB of it can be one TLB entry. A
//! token's products stream every weight once; with 4 KiB pages the page
//! walks cost a measurable share of the read bandwidth (a head read from
//! the file's 4 KiB-mapped pages ran 10–25% slower per byte than the same
//! bytes in huge pages on the 2-core Zen 3 VM tern is measured on).

use rayon::prelude::*;

/// Transparent huge page size on x86-64 and most aarch64 kernels.
const HUGE: usize = 2 << 20;

/// A zeroed, 8-byte aligned buffer of bytes (see the module comment).
pub struct HugeBuf {
    inner: Inner,
    len: usize,
}

enum Inner {
    /// An anonymous mapping and the offset of the data in it.
    Map(memmap2::MmapMut, usize),
    /// Small buffers, or where no mapping could be made: the heap, in
    /// words so that f16 / f32 views are aligned.
    Vec(Vec<u64>),
}

impl HugeBuf {
    /// `len` zero bytes. From 2 MiB up an anonymous mapping whose whole
    /// 2 MiB pages of data are advised for huge pages (nothing is
    /// allocated for the unused head of the mapping; the partial tail is
    /// not advised, so it takes small pages instead of a mostly unused
    /// huge one — under THP's `madvise` mode; with `always` the kernel
    /// decides); else, or when mapping fails, the heap.
    pub fn zeroed(len: usize) -> HugeBuf {
        if len >= HUGE {
            if let Ok(m) = memmap2::MmapMut::map_anon(len + HUGE) {
                let off = (m.as_ptr() as usize).next_multiple_of(HUGE) - m.as_ptr() as usize;
                #[cfg(target_os = "linux")]
                let _ = m.advise_range(memmap2::Advice::HugePage, off, len / HUGE * HUGE);
                return HugeBuf {
                    inner: Inner::Map(m, off),
                    len,
                };
            }
        }
        HugeBuf {
            inner: Inner::Vec(vec![0u64; len.div_ceil(8)]),
            len,
        }
    }

    /// A copy of `src`, made by every thread of the current pool.
    pub fn copy_of(src: &[u8]) -> HugeBuf {
        let mut b = HugeBuf::zeroed(src.len());
        b.bytes_mut()
            .par_chunks_mut(1 << 20)
            .zip(src.par_chunks(1 << 20))
            .for_each(|(d, s)| d.copy_from_slice(s));
        b
    }

    /// A copy of a tensor of `file`, made a piece at a time, each piece's
    /// pages of the file's map given back once copied (see
    /// [`crate::gguf::GgufFile::release_range`]): the resident set never
    /// holds more than one piece twice.
    pub fn copy_of_tensor(file: &crate::gguf::GgufFile, t: &crate::gguf::TensorInfo) -> HugeBuf {
        const PIECE: usize = 64 << 20;
        let src = file.tensor_data(t);
        let mut b = HugeBuf::zeroed(src.len());
        for (i, (d, s)) in b
            .bytes_mut()
            .chunks_mut(PIECE)
            .zip(src.chunks(PIECE))
            .enumerate()
        {
            d.par_chunks_mut(1 << 20)
                .zip(s.par_chunks(1 << 20))
                .for_each(|(d, s)| d.copy_from_slice(s));
            file.release_range(t, i * PIECE, s.len());
        }
        b
    }

    pub fn bytes(&self) -> &[u8] {
        match &self.inner {
            Inner::Map(m, off) => &m[*off..*off + self.len],
            Inner::Vec(v) => &bytemuck::cast_slice(v)[..self.len],
        }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        match &mut self.inner {
            Inner::Map(m, off) => &mut m[*off..*off + self.len],
            Inner::Vec(v) => &mut bytemuck::cast_slice_mut(v)[..self.len],
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
