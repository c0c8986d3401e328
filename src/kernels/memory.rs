//! Memory for weights the kernels stream: large buffers are anonymous
//! mappings advised for transparent huge pages, the data starting on a
//! 2 MiB boundary, so every whole 2 MiB of it can be one TLB entry. A
//! token's products stream every weight once; with 4 KiB pages the page
//! walks cost a measurable share of the read bandwidth (a head read from
//! the file's 4 KiB-mapped pages ran 10–25% slower per byte than the same
//! bytes in huge pages on the 2-core Zen 3 VM tern is measured on).
//!
//! Most projection matrices are smaller than a huge page or not a whole
//! number of them (0.4–4.4 MB at the 2B-4T shapes), so buffers from 64 KiB
//! to 32 MiB are carved one after another out of shared 256 MiB
//! huge-page mappings ([`Chunk`]s), a small gap after each
//! ([`SLAB_GAP`]), instead of taking pages of their own (the heap below 2
//! MiB, a mapping with a small-page tail above): the projections lie on
//! huge pages, wasting at most the unused part of one huge page per chunk
//! and the gaps (3.4 MB on the 2B-4T model; peak RSS of `tern run -n 1`
//! 1.301 → 1.309 GB for its 1.186 GB file). Measured on the Intel Xeon VM
//! with `tern bench -p 0 -n 64`, the same binary before and after in two
//! alternating rounds: tg64 with the AVX2 one-token tile 10.7–11.0 →
//! 13.0–13.3 t/s on one thread and 20.3 → 24.1–24.5 on two (F16 head).

use rayon::prelude::*;
use std::sync::{Arc, Mutex, Weak};

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
    /// `len` bytes at this offset of a shared chunk, which no other
    /// buffer's bytes overlap.
    Slab(Arc<Chunk>, usize),
    /// Small buffers, or where no mapping could be made: the heap, from a
    /// cache line on (so f16 / f32 views are aligned too).
    Vec(LineAligned<u64>),
}

/// Bytes of one shared chunk.
const CHUNK: usize = 256 << 20;
/// Buffers of `SLAB_MIN ..= SLAB_MAX` bytes are carved out of chunks.
const SLAB_MIN: usize = 64 << 10;
const SLAB_MAX: usize = 32 << 20;
/// Alignment of a buffer inside a chunk (a page).
const SLAB_ALIGN: usize = 4 << 10;
/// Bytes left unused after each buffer in a chunk. Measured on the Intel
/// Xeon VM (one thread, the 2B-4T projections streamed one after another
/// as a token does): carved end to end, they streamed at 13.6–13.9 GB/s,
/// no faster than from the heap and mappings of their own; with 16, 32 or
/// 64 KiB between them, 15.0–15.5 GB/s — as fast as each on whole huge
/// pages of its own, which would cost ~260 MB of partly used huge pages
/// on that model. The cause was not pinned down (the one-token tiles
/// prefetched 16 KiB ahead then, the head's 32 KiB, so each stream's
/// prefetches run into whatever lies after it).
const SLAB_GAP: usize = 16 << 10;

/// One anonymous mapping of [`CHUNK`] bytes from a 2 MiB boundary, all
/// advised for huge pages, handed out front to back to the buffers that
/// hold an `Arc` of it; unmapped when the last of them is dropped. Bytes
/// are never handed out twice, so every buffer starts zeroed.
pub struct Chunk {
    /// Kept to unmap the chunk; its bytes are reached through `base` only.
    _map: memmap2::MmapMut,
    /// The chunk's first byte (2 MiB aligned), from the map's mutable
    /// pointer.
    base: *mut u8,
}

// SAFETY: a chunk is plain memory; the buffers carved from it own
// disjoint ranges and give access to them only through `&` / `&mut`
// borrows of themselves, so sharing or sending the chunk shares nothing
// more than `MmapMut` (itself `Send + Sync`) does.
unsafe impl Send for Chunk {}
unsafe impl Sync for Chunk {}

/// The chunk being filled and the offset of its first free byte. A `Weak`:
/// once every buffer of it is gone, the chunk goes too (its free tail was
/// never touched), and the next buffer starts a new one.
static CURRENT: Mutex<Option<(Weak<Chunk>, usize)>> = Mutex::new(None);

/// An anonymous mapping of `len + HUGE` bytes and the offset `< HUGE` of
/// its first 2 MiB boundary, from which the whole 2 MiB pages of `len`
/// bytes are advised for huge pages (a partial tail is not, so it takes
/// small pages); `None` when the mapping fails.
fn huge_aligned_map(len: usize) -> Option<(memmap2::MmapMut, usize)> {
    let map = memmap2::MmapMut::map_anon(len.checked_add(HUGE)?).ok()?;
    let off = (map.as_ptr() as usize).next_multiple_of(HUGE) - map.as_ptr() as usize;
    #[cfg(target_os = "linux")]
    let _ = map.advise_range(memmap2::Advice::HugePage, off, len / HUGE * HUGE);
    Some((map, off))
}

/// Offset in a shared chunk for `len` bytes (`SLAB_MIN ..= SLAB_MAX`), or
/// `None` when no chunk could be mapped.
fn carve(len: usize) -> Option<(Arc<Chunk>, usize)> {
    let mut cur = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((weak, used)) = cur.as_ref() {
        let at = used.next_multiple_of(SLAB_ALIGN);
        if let Some(chunk) = weak.upgrade() {
            if at + len <= CHUNK {
                *cur = Some((Arc::downgrade(&chunk), at + len + SLAB_GAP));
                return Some((chunk, at));
            }
        }
    }
    let (mut map, off) = huge_aligned_map(CHUNK)?;
    // In bounds: off < HUGE and the map holds CHUNK + HUGE bytes.
    let base = map[off..].as_mut_ptr();
    let chunk = Arc::new(Chunk { _map: map, base });
    *cur = Some((Arc::downgrade(&chunk), len + SLAB_GAP));
    Some((chunk, 0))
}

impl HugeBuf {
    /// `len` zero bytes. From 64 KiB to 32 MiB a piece of a shared
    /// huge-page chunk (see the module comment); above, an anonymous
    /// mapping of its own whose whole 2 MiB pages of data are advised for
    /// huge pages (nothing is allocated for the unused head of the
    /// mapping; the partial tail is not advised, so it takes small pages
    /// instead of a mostly unused huge one — under THP's `madvise` mode;
    /// with `always` the kernel decides); else, or when mapping fails,
    /// the heap.
    pub fn zeroed(len: usize) -> HugeBuf {
        if (SLAB_MIN..=SLAB_MAX).contains(&len) {
            if let Some((chunk, off)) = carve(len) {
                return HugeBuf {
                    inner: Inner::Slab(chunk, off),
                    len,
                };
            }
        }
        if len >= HUGE {
            if let Some((m, off)) = huge_aligned_map(len) {
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
            // SAFETY: `carve` handed out `off .. off + len` of the chunk's
            // mapping (which lives as long as the `Arc`) to this buffer
            // alone; a shared borrow of the buffer reads only those bytes.
            Inner::Slab(c, off) => unsafe {
                std::slice::from_raw_parts(c.base.add(*off) as *const u8, self.len)
            },
            Inner::Vec(v) => &bytemuck::cast_slice(v)[..self.len],
        }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        match &mut self.inner {
            Inner::Map(m, off) => &mut m[*off..*off + self.len],
            // SAFETY: as in `bytes`; no other buffer's bytes overlap these,
            // and `&mut self` excludes every other borrow of them; `base`
            // came from the writable map's mutable pointer.
            Inner::Slab(c, off) => unsafe {
                std::slice::from_raw_parts_mut(c.base.add(*off), self.len)
            },
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

    /// Buffers carved from shared chunks start zeroed and aligned, never
    /// overlap (each keeps its own pattern while the others are written,
    /// from several threads at once) and outlive the other buffers of
    /// their chunk; a buffer after all of a chunk's are dropped is zeroed.
    #[test]
    fn carved_buffers_are_zeroed_disjoint_and_independent() {
        let sizes = [SLAB_MIN, 100_000, 1 << 20, 3 << 20, 5_000_000, SLAB_MAX];
        let mut bufs: Vec<HugeBuf> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(move || sizes.map(HugeBuf::zeroed)))
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        for (i, b) in bufs.iter_mut().enumerate() {
            assert!(matches!(b.inner, Inner::Slab(..)), "buffer {i} is carved");
            assert!((b.bytes().as_ptr() as usize).is_multiple_of(SLAB_ALIGN));
            assert!(
                b.bytes().iter().all(|&v| v == 0),
                "buffer {i} starts zeroed"
            );
            b.bytes_mut().fill(i as u8 + 1);
        }
        for (i, b) in bufs.iter().enumerate() {
            assert!(b.bytes().iter().all(|&v| v == i as u8 + 1), "buffer {i}");
        }
        // Drop every other buffer: the rest keep their bytes.
        let kept: Vec<(usize, HugeBuf)> = bufs
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == 1)
            .collect();
        let fresh = HugeBuf::zeroed(1 << 20);
        assert!(fresh.bytes().iter().all(|&v| v == 0));
        for (i, b) in &kept {
            assert!(
                b.bytes().iter().all(|&v| v == *i as u8 + 1),
                "buffer {i} after drops"
            );
        }
        drop(kept);
        drop(fresh);
        let again = HugeBuf::zeroed(2 << 20);
        assert!(again.bytes().iter().all(|&v| v == 0));
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
