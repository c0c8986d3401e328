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

/// A zeroed buffer of bytes starting on a cache line (see the module
/// comment).
pub struct HugeBuf {
    inner: Inner,
    len: usize,
}

enum Inner {
    /// An anonymous mapping and the offset of the data in it.
    Map(memmap2::MmapMut, usize),
    /// Small buffers, or where no mapping could be made: the heap, from a
    /// cache line on (so f16 / f32 views are aligned too).
    Vec(LineAligned<u64>),
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
            inner: Inner::Vec(LineAligned::zeroed(len.div_ceil(8))),
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

/// Bytes of a cache line on the CPUs tern targets (x86-64, most aarch64).
pub const CACHE_LINE: usize = 64;

/// `len` values on the heap, the first at a cache-line boundary.
///
/// The kernels' vector loads from the unpacked panels and the interleaved
/// activations are 32 or 64 bytes wide; from the heap's 16-byte aligned
/// blocks half of them straddle two lines, which cost the prompt tile
/// 25–40% of its speed on the 2-core Zen 3 VM tern is measured on
/// (`benches/kernels.rs`, `gemm128`).
pub struct LineAligned<T> {
    buf: Vec<T>,
    off: usize,
    len: usize,
}

impl<T: bytemuck::Zeroable + Copy> LineAligned<T> {
    /// `len` zero values.
    pub fn zeroed(len: usize) -> LineAligned<T> {
        let pad = CACHE_LINE / std::mem::size_of::<T>().max(1);
        let buf = vec![T::zeroed(); len + pad];
        // `align_offset` may in principle decline (usize::MAX); then the
        // data starts at the block's own alignment, still correct.
        let off = buf.as_ptr().align_offset(CACHE_LINE);
        let off = if off <= pad { off } else { 0 };
        LineAligned { buf, off, len }
    }

    /// Grow to at least `len` values (contents not kept).
    pub fn reserve_zeroed(&mut self, len: usize) {
        if self.len < len {
            *self = LineAligned::zeroed(len);
        }
    }

    /// Make it `len` values long, as `Vec::resize` with zeros: the first
    /// `min(len, self.len())` values are kept, new ones are zero.
    pub fn resize(&mut self, len: usize) {
        if self.off + len <= self.buf.len() {
            if len > self.len {
                self.buf[self.off + self.len..self.off + len].fill(T::zeroed());
            }
            self.len = len;
        } else {
            let mut grown = LineAligned::zeroed(len);
            grown[..self.len].copy_from_slice(self);
            *self = grown;
        }
    }
}

impl<T: bytemuck::Zeroable + Copy> Default for LineAligned<T> {
    fn default() -> Self {
        LineAligned::zeroed(0)
    }
}

impl<T> std::ops::Deref for LineAligned<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.buf[self.off..self.off + self.len]
    }
}

impl<T> std::ops::DerefMut for LineAligned<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.buf[self.off..self.off + self.len]
    }
}

impl<T: bytemuck::Zeroable + Copy> Clone for LineAligned<T> {
    /// A copy in a new block, aligned again (the offset is the block's).
    fn clone(&self) -> Self {
        let mut c = LineAligned::zeroed(self.len);
        c.copy_from_slice(self);
        c
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for LineAligned<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_start<T>(s: &[T]) -> bool {
        (s.as_ptr() as usize).is_multiple_of(CACHE_LINE)
    }

    #[test]
    fn line_aligned_starts_on_a_line_and_resizes_like_vec() {
        for len in [0usize, 1, 63, 64, 1000, 300_000] {
            let mut a = LineAligned::<i8>::zeroed(len);
            assert_eq!(a.len(), len);
            assert!(len == 0 || line_start(&a), "len {len}");
            assert!(a.iter().all(|&v| v == 0));
            for (i, v) in a.iter_mut().enumerate() {
                *v = (i % 100) as i8 + 1;
            }
            let c = a.clone();
            assert_eq!(&c[..], &a[..]);
            assert!(len == 0 || line_start(&c));
            // Shrink, then grow in place: the kept values stay, the new
            // ones are zero (as `Vec::resize(n, 0)`).
            a.resize(len / 2);
            a.resize(len);
            for (i, &v) in a.iter().enumerate() {
                let want = if i < len / 2 { (i % 100) as i8 + 1 } else { 0 };
                assert_eq!(v, want, "len {len} at {i}");
            }
            // Grow past the block: a new, aligned block with the values.
            a.resize(2 * len + 100);
            assert!(line_start(&a));
            assert_eq!(a.len(), 2 * len + 100);
            assert!(a[len / 2..].iter().all(|&v| v == 0));
            assert_eq!(a[..len / 2], c[..len / 2]);
        }
        let w = LineAligned::<u64>::zeroed(5);
        assert!(line_start(&w));
    }

    #[test]
    fn small_huge_bufs_start_on_a_line() {
        for len in [1usize, 100, 400 << 10] {
            let b = HugeBuf::zeroed(len);
            assert!(line_start(b.bytes()), "len {len}");
            assert_eq!(b.len(), len);
        }
    }
}
