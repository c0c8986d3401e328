//! The smaller operations of a token: attention over the KV cache and RoPE,
//! on top of the kernel's vector primitives.

use super::Kernel;
use half::f16;
use rayon::prelude::*;
use std::cell::RefCell;

/// RMS norm of each row of `x` (rows of `w.len()`): `x / sqrt(mean(x²) + eps) · w`,
/// the squares summed in f64 ([`sum_squares_f64`]); rows in parallel when
/// there are several.
pub fn rmsnorm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    let row = |(xr, or): (&[f32], &mut [f32])| {
        let ss = sum_squares_f64(xr);
        let inv = 1.0 / ((ss / d as f64) as f32 + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * inv * g;
        }
    };
    if x.len() >= 4 * d && rayon::current_num_threads() > 1 {
        x.par_chunks(d).zip(out.par_chunks_mut(d)).for_each(row);
    } else {
        x.chunks(d).zip(out.chunks_mut(d)).for_each(row);
    }
}

/// Lanes of [`sum_squares_f64`].
const SQ_LANES: usize = 16;

/// `Σ x[i]²` in f64 (each square exact: an f32 times itself fits in an
/// f64's 53 bits), element `i` going to lane `i mod 16` of 16 running sums
/// that are added in order at the end, the last `len mod 16` elements
/// after them in order. The order is fixed, so the result is the same on
/// every CPU, thread count and batch; it differs from one running sum
/// (what `rmsnorm` did before, and ggml's `rms_norm` over squares rounded
/// to f32) only in the last bits of the f64, which reach the f32 scale
/// only when it lies within one f64 ulp of an f32 rounding boundary.
///
/// Why lanes: one running sum is a chain of dependent f64 adds (4 cycles
/// each), 2.6 µs for 2560 values and 7.0 µs for 6912 on the Intel Xeon VM
/// (2026-12-01, hot caches) — four norms a layer made 0.9 ms of serial
/// work per 2B-4T token, which at two threads the other thread waits for.
/// Sixteen independent sums let the compiler use vector registers: the
/// sum then takes 0.75 / 2.2 µs, the whole norm 1.5 / 4.1 µs, and the
/// four norms of a layer inside a decode step 14 µs instead of 26.
pub fn sum_squares_f64(x: &[f32]) -> f64 {
    let mut acc = [0f64; SQ_LANES];
    let chunks = x.chunks_exact(SQ_LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += (v as f64) * (v as f64);
        }
    }
    let mut s = acc.iter().fold(0f64, |s, &a| s + a);
    for &v in rest {
        s += (v as f64) * (v as f64);
    }
    s
}

/// One layer of a KV cache: `positions × stride` values.
#[derive(Clone, Copy)]
pub enum Kv<'a> {
    F16(&'a [f16]),
    F32(&'a [f32]),
}

impl Kv<'_> {
    pub fn len(&self) -> usize {
        match self {
            Kv::F16(v) => v.len(),
            Kv::F32(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Check that `rows` head vectors of `width` at `t·stride + off` lie in `kv`
/// (every attention kernel calls this first, so SIMD code may rely on it).
pub fn check_rows(kv: Kv, stride: usize, off: usize, width: usize, rows: usize) {
    if rows > 0 {
        let end = (rows - 1)
            .checked_mul(stride)
            .and_then(|a| a.checked_add(off))
            .and_then(|a| a.checked_add(width));
        assert!(
            end.is_some_and(|e| e <= kv.len()),
            "{} rows of {} at stride {} + {} exceed a cache of {}",
            rows,
            width,
            stride,
            off,
            kv.len()
        );
    }
}

/// Attention scores from a kernel's own dots (for tables without a
/// dedicated routine): `scores[t] = scale · dot(K_t, q)`, so each score
/// equals `scale ·` that kernel's `dot_f16`/`dot_f32`. Sizes checked by
/// [`Kernel::attn_scores`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn scores_with(
    dot16: fn(&[f16], &[f32]) -> f32,
    dot32: fn(&[f32], &[f32]) -> f32,
    k: Kv,
    stride: usize,
    off: usize,
    q: &[f32],
    scale: f32,
    scores: &mut [f32],
) {
    for (t, s) in scores.iter_mut().enumerate() {
        let at = t * stride + off;
        *s = match k {
            Kv::F16(k) => dot16(&k[at..at + q.len()], q),
            Kv::F32(k) => dot32(&k[at..at + q.len()], q),
        } * scale;
    }
}

/// The weighted sum of values from a kernel's own axpy: `out = Σ_t p[t] ·
/// V_t` in position order. Sizes checked by [`Kernel::attn_values`].
pub(crate) fn values_with(
    axpy16: fn(f32, &[f16], &mut [f32]),
    axpy32: fn(f32, &[f32], &mut [f32]),
    v: Kv,
    stride: usize,
    off: usize,
    p: &[f32],
    out: &mut [f32],
) {
    out.fill(0.0);
    let d = out.len();
    for (t, &pt) in p.iter().enumerate() {
        let at = t * stride + off;
        match v {
            Kv::F16(v) => axpy16(pt, &v[at..at + d], out),
            Kv::F32(v) => axpy32(pt, &v[at..at + d], out),
        }
    }
}

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// [`Kernel::attn_scores_group`]'s table entry: `(k, stride, off, qs, d,
/// scale, scores)`, sizes checked by the wrapper.
pub type ScoresGroup = fn(Kv, usize, usize, &[f32], usize, f32, &mut [f32]);
/// [`Kernel::attn_values_group`]'s table entry: `(v, stride, off, ps, g,
/// outs)`, sizes checked by the wrapper.
pub type ValuesGroup = fn(Kv, usize, usize, &[f32], usize, &mut [f32]);

/// The grouped scores head by head through a per-head routine (a table's
/// `attn_scores`): what [`Kernel::attn_scores_group`] does for a table
/// without a grouped routine, and AVX2's for f32 caches. Sizes checked by
/// the wrapper (`scores` is `qs.len() / d` rows of `npos`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn scores_per_head(
    per_head: fn(Kv, usize, usize, &[f32], f32, &mut [f32]),
    k: Kv,
    stride: usize,
    off: usize,
    qs: &[f32],
    d: usize,
    scale: f32,
    scores: &mut [f32],
) {
    let npos = scores.len() / (qs.len() / d);
    for (q, s) in qs.chunks_exact(d).zip(scores.chunks_exact_mut(npos)) {
        per_head(k, stride, off, q, scale, s)
    }
}

/// The grouped values head by head through a per-head routine (a table's
/// `attn_values`); see [`scores_per_head`]. Sizes checked by the wrapper.
pub(crate) fn values_per_head(
    per_head: fn(Kv, usize, usize, &[f32], &mut [f32]),
    v: Kv,
    stride: usize,
    off: usize,
    ps: &[f32],
    g: usize,
    outs: &mut [f32],
) {
    let (npos, d) = (ps.len() / g, outs.len() / g);
    for h in 0..g {
        per_head(
            v,
            stride,
            off,
            &ps[h * npos..(h + 1) * npos],
            &mut outs[h * d..(h + 1) * d],
        )
    }
}

/// Softmax attention of the query heads `qs` (`g` heads of `d` values, one
/// after another) that share one KV head, over the first `npos` positions
/// of `k`/`v` (that head's values at `off..off + d` of each position,
/// positions `stride` apart): for each head `h`, `outs[h·d..(h+1)·d] = Σ_t
/// softmax(scale · q_h·k_t)_t · v_t`. Each head's result is the one it
/// would get alone (the kernels' grouped routines are bit for bit their
/// per-head ones); a group reads each K and V row once for all its heads.
///
/// # Panics
/// If `d` is 0, `qs` is not a whole number of heads or `outs` is not as
/// long as `qs`, or a row lies outside the cache.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    kern: &Kernel,
    qs: &[f32],
    d: usize,
    k: Kv,
    v: Kv,
    stride: usize,
    off: usize,
    npos: usize,
    scale: f32,
    outs: &mut [f32],
) {
    assert!(
        d > 0 && qs.len().is_multiple_of(d) && outs.len() == qs.len(),
        "{} query and {} output values for heads of {}",
        qs.len(),
        outs.len(),
        d
    );
    let g = qs.len() / d;
    if g == 0 {
        return;
    }
    SCORES.with(|s| {
        let mut s = s.borrow_mut();
        s.resize(g * npos, 0.0);
        kern.attn_scores_group(k, stride, off, qs, d, scale, &mut s);
        if npos > 0 {
            for row in s.chunks_exact_mut(npos) {
                kern.softmax(row);
            }
        }
        kern.attn_values_group(v, stride, off, &s, g, outs);
    });
}

/// RoPE angles for a run of positions: cos/sin of `pos · inv_freq[i]`
/// (computed in f64 as the reference does, with the `libm`
/// crate so that every OS gets the same bits) times `mscale` (YaRN's
/// attention factor, else 1), for each of the head's `d/2` pairs.
pub struct RopeTable {
    half: usize,
    pos0: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// Which elements of a head form a rotated pair (see
/// [`crate::arch::RopeLayout`]).
pub use crate::arch::RopeLayout;

impl RopeTable {
    /// Angles for positions `pos0 .. pos0 + n`, one per inverse frequency.
    pub fn new(inv_freq: &[f64], mscale: f32, pos0: usize, n: usize) -> RopeTable {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for p in pos0..pos0 + n {
            for &f in inv_freq {
                let (s, c) = libm::sincos(p as f64 * f);
                cos.push(c as f32 * mscale);
                sin.push(s as f32 * mscale);
            }
        }
        RopeTable {
            half,
            pos0,
            cos,
            sin,
        }
    }

    /// Rotate every head of `x` (`n_heads × 2·half`) for position `pos`:
    /// pair `i` is (`i`, `i + half`) in the NeoX layout, (`2i`, `2i + 1`) in
    /// the adjacent one.
    pub fn apply(&self, x: &mut [f32], n_heads: usize, pos: usize, layout: RopeLayout) {
        let half = self.half;
        let r = (pos - self.pos0) * half;
        let (cos, sin) = (&self.cos[r..r + half], &self.sin[r..r + half]);
        for v in x.chunks_exact_mut(2 * half).take(n_heads) {
            match layout {
                RopeLayout::Neox => {
                    let (a, b) = v.split_at_mut(half);
                    for i in 0..half {
                        let (x0, x1) = (a[i], b[i]);
                        a[i] = x0 * cos[i] - x1 * sin[i];
                        b[i] = x0 * sin[i] + x1 * cos[i];
                    }
                }
                RopeLayout::Adjacent => {
                    for (i, pair) in v.chunks_exact_mut(2).enumerate() {
                        let (x0, x1) = (pair[0], pair[1]);
                        pair[0] = x0 * cos[i] - x1 * sin[i];
                        pair[1] = x0 * sin[i] + x1 * cos[i];
                    }
                }
            }
        }
    }
}

/// The buffer the read bandwidth is measured on: `bytes` (a multiple of 8)
/// in the same huge-page memory the weights are held in
/// ([`super::memory::HugeBuf`]), filled with ones so every page is
/// backed. A heap buffer of 4 KiB pages (what `tern bench` used before)
/// streams 12–16% slower on the Intel Xeon VM when THP is in `madvise`
/// mode (15.8 vs 18.3 GB/s on one thread, 31.5 vs 37.0 on two,
/// [`stream_sum`] with the L2 prefetch, 1 GiB, 2026-12-01), so the bound it gave
/// was lower than what the weights' memory can deliver and depended on
/// the THP setting.
pub fn bandwidth_buffer(bytes: usize) -> super::memory::HugeBuf {
    let mut b = super::memory::HugeBuf::zeroed(bytes);
    b.bytes_mut()
        .par_chunks_mut(1 << 20)
        .for_each(|c| c.fill(1));
    b
}

/// Streaming read bandwidth in GB/s: every thread of the current pool sums
/// its share of `buf`; the best of two passes with each [`StreamRead`]
/// (see [`stream_sum`]). `tern bench`'s bound and `examples/tg_profile`'s
/// reference rate.
pub fn read_bandwidth(buf: &[u64]) -> f64 {
    let threads = rayon::current_num_threads().max(1);
    let part = staggered_part(buf.len(), threads).max(1);
    let mut best = 0f64;
    for pass in 0..2 * StreamRead::ALL.len() {
        let how = StreamRead::ALL[pass % StreamRead::ALL.len()];
        let t0 = std::time::Instant::now();
        // Wrapping, as each part's sum is (a plain `sum` overflows in a
        // debug build).
        let s = buf
            .par_chunks(part)
            .map(|c| stream_sum(c, how))
            .reduce(|| 0, u64::wrapping_add);
        let secs = t0.elapsed().as_secs_f64();
        std::hint::black_box(s);
        best = best.max((buf.len() * 8) as f64 / secs / 1e9);
    }
    best
}

/// Prefetch the 64-byte lines of `addr .. addr + len` into L2 (x86-64;
/// elsewhere nothing). The range is only a hint: it is never read, so any
/// address is safe.
pub fn prefetch_l2(addr: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        // Every line the range touches, from the line `addr` lies in.
        let end = addr.saturating_add(len);
        let mut line = addr & !63;
        while line < end {
            // SAFETY: a prefetch never faults; the address is formed from
            // an integer, never dereferenced.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(line as *const i8) };
            line += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (addr, len);
}

/// The software prefetch a [`stream_sum`] issues for each 64-byte line
/// (x86-64; elsewhere every kind reads without one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamPrefetch {
    /// None: the hardware prefetchers alone.
    None,
    /// 16 KiB ahead into L2, as AVX2's one-token tiles prefetch
    /// (`avx2::PREFETCH_GEMV`).
    FarL2,
    /// 1.5 KiB ahead into L1 and 4 KiB ahead into L2, as AVX-512's
    /// one-group one-token tiles prefetch (`avx2::PREFETCH_L1`,
    /// `avx512::PREFETCH_L2_NEAR`). On the Intel Xeon VM (2026-12-01, seven
    /// alternated passes over 1 GiB, one thread) this read 18.8 GB/s
    /// against 17.5 without a prefetch and 16.7 with [`StreamPrefetch::FarL2`]:
    /// a bound that left it out was that much low.
    NearL1L2,
    /// 1.5 KiB ahead into L1 only, as the VNNI streams tiles prefetch
    /// (with several streams the fastest kind more often than not on the
    /// Intel Xeon VM, 2026-12-02).
    NearL1,
}

/// How a [`stream_sum`] reads: its prefetch, and how many parts of the
/// buffer it reads at once (line `i` of each part, then line `i + 1`;
/// parts of [`staggered_part`]'s length, the words left over read after).
///
/// Several streams at once: one core keeps more lines in flight than
/// along one stream, as the one-token ternary products do since they
/// read several row groups at once (`kernels::StreamPlan`). On the Intel Xeon
/// VM (2026-12-02, 1 GiB of huge pages, nine alternated rounds) one
/// stream read 14.9–16.8 GB/s on one thread at best, four or eight
/// 18.5–22.2 (two threads: 29.7–32.8 against 35.0–40.9); a bound that
/// kept to one stream was that much low, and the products read faster
/// than it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamRead {
    pub prefetch: StreamPrefetch,
    /// 1, 4 or 8.
    pub streams: usize,
}

impl StreamRead {
    /// Every kind, in the order [`read_bandwidth`] cycles through them.
    pub const ALL: [StreamRead; 8] = [
        StreamRead::new(StreamPrefetch::None, 1),
        StreamRead::new(StreamPrefetch::FarL2, 1),
        StreamRead::new(StreamPrefetch::NearL1L2, 1),
        StreamRead::new(StreamPrefetch::None, 4),
        StreamRead::new(StreamPrefetch::NearL1, 4),
        StreamRead::new(StreamPrefetch::NearL1L2, 4),
        StreamRead::new(StreamPrefetch::None, 8),
        StreamRead::new(StreamPrefetch::NearL1, 8),
    ];

    pub const fn new(prefetch: StreamPrefetch, streams: usize) -> StreamRead {
        StreamRead { prefetch, streams }
    }
}

/// Words in each of `parts` parts of `len` words read side by side (by
/// [`sum_streams`]'s streams or [`read_bandwidth`]'s threads): at most
/// `len / parts`, a whole number of 64-byte lines, and, once a part
/// spans [`STAGGER_BYTES`] twice, [`STAGGER_SKEW`] bytes short of a
/// multiple of it, so no two parts start a power of two apart.
///
/// Streams a power of two apart read far slower on the 2-core Zen 3 VM
/// (2026-12-03, 1 GiB of huge pages, one thread, five alternated rounds,
/// medians): four streams 256 MiB apart 12.4–13.1 GB/s, a few KiB off it
/// 22.0–25.3; eight 14.7–15.3 against 19.0–26.3; one stream 17.8–19.5.
/// With equal parts [`read_bandwidth`] was the one stream's rate, far
/// under what the memory delivers: equal against staggered parts, eight
/// alternated rounds, 17.0–20.5 against 26.6–28.6 GB/s on one thread,
/// 30.1–34.7 against 32.8–50.3 on two.
pub fn staggered_part(len: usize, parts: usize) -> usize {
    const WORDS: usize = STAGGER_BYTES / 8;
    let part = len / parts.max(1);
    if part >= 2 * WORDS {
        part - part % WORDS - STAGGER_SKEW / 8
    } else {
        part / 8 * 8
    }
}

/// The alignment [`staggered_part`] keeps parts off (64 KiB).
const STAGGER_BYTES: usize = 64 << 10;
/// How far short of a multiple of [`STAGGER_BYTES`] each part ends (26
/// KiB: 2 KiB past a multiple of 8 KiB).
const STAGGER_SKEW: usize = 26 << 10;

/// Wrapping sum of `words`, with independent lanes so the loop is bound by
/// memory, not by an add chain: the streaming read that `tern bench` takes
/// as the machine's read bandwidth, read as `how` says (streams other than
/// 4 and 8 read as one), with the widest vectors the CPU has (on the
/// Intel Xeon VM the baseline's 16-byte loads read one stream 18% slower
/// than 64-byte ones, 13.3 against 16.3 GB/s, 2026-12-02).
pub fn stream_sum(words: &[u64], how: StreamRead) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked above).
            return unsafe { stream_sum_avx512(words, how) };
        }
        if is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked above).
            return unsafe { stream_sum_avx2(words, how) };
        }
    }
    stream_sum_any(words, how)
}

/// [`stream_sum`] compiled for AVX-512 (the same code, wider vectors).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn stream_sum_avx512(words: &[u64], how: StreamRead) -> u64 {
    stream_sum_any(words, how)
}

/// [`stream_sum`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn stream_sum_avx2(words: &[u64], how: StreamRead) -> u64 {
    stream_sum_any(words, how)
}

#[inline(always)]
fn stream_sum_any(words: &[u64], how: StreamRead) -> u64 {
    match how.streams {
        4 => sum_streams::<4>(words, how.prefetch),
        8 => sum_streams::<8>(words, how.prefetch),
        _ => sum_streams::<1>(words, how.prefetch),
    }
}

/// [`stream_sum`] over `S` parts of `words`, each [`staggered_part`]
/// long, read side by side (the words past them summed after).
#[inline(always)]
fn sum_streams<const S: usize>(words: &[u64], prefetch: StreamPrefetch) -> u64 {
    let part = staggered_part(words.len(), S);
    let (body, tail) = words.split_at(S * part);
    let mut acc = [[0u64; 8]; S];
    for i in (0..part).step_by(8) {
        for (s, acc) in acc.iter_mut().enumerate() {
            let w = &body[s * part + i..s * part + i + 8];
            #[cfg(target_arch = "x86_64")]
            {
                use super::avx2::{PREFETCH_GEMV, PREFETCH_L1};
                use super::avx512::PREFETCH_L2_NEAR;
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0, _MM_HINT_T1};
                let p = w.as_ptr() as *const i8;
                // SAFETY: a prefetch is only a hint; it never faults, and the
                // addresses are formed with `wrapping_add`, never dereferenced.
                unsafe {
                    match prefetch {
                        StreamPrefetch::None => {}
                        StreamPrefetch::FarL2 => {
                            _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(PREFETCH_GEMV))
                        }
                        StreamPrefetch::NearL1L2 => {
                            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_L1));
                            _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(PREFETCH_L2_NEAR));
                        }
                        StreamPrefetch::NearL1 => {
                            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_L1))
                        }
                    }
                }
            }
            for (a, &x) in acc.iter_mut().zip(w) {
                *a = a.wrapping_add(x);
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = prefetch;
    let rest = tail.iter().fold(0u64, |a, &b| a.wrapping_add(b));
    acc.iter().flatten().fold(rest, |a, &b| a.wrapping_add(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every way of reading sums every word once, whatever the length
    /// (parts, lines and the words left over).
    #[test]
    fn stream_sum_reads_every_word_once() {
        for n in [
            0usize, 1, 7, 8, 9, 63, 64, 65, 255, 256, 1000, 4099, 70_001, 140_003,
        ] {
            let words: Vec<u64> = (0..n as u64).map(|i| i * 0x9E37_79B9 + 1).collect();
            let want = words.iter().fold(0u64, |a, &b| a.wrapping_add(b));
            for how in StreamRead::ALL {
                assert_eq!(stream_sum(&words, how), want, "n = {n}, {how:?}");
            }
        }
    }

    /// Every part [`staggered_part`] gives is whole lines and fits its
    /// share; a part of two 64 KiB spans or more ends 26 KiB short of a
    /// multiple of 64 KiB (so parts never start a power of two apart) and
    /// gives up less than two spans of its share.
    #[test]
    fn staggered_parts_are_lines_off_powers_of_two() {
        let span = STAGGER_BYTES / 8;
        for len in [
            0usize,
            7,
            8,
            100,
            16_383,
            16_384,
            65_536,
            1 << 27,
            (1 << 27) + 12_345,
        ] {
            for parts in [1usize, 2, 4, 8] {
                let p = staggered_part(len, parts);
                assert!(p * parts <= len, "len {len}, parts {parts}: {p}");
                assert_eq!(p % 8, 0, "len {len}, parts {parts}: {p}");
                if len / parts >= 2 * span {
                    assert_eq!((p * 8) % STAGGER_BYTES, STAGGER_BYTES - STAGGER_SKEW);
                    assert!(!(p * 8).is_power_of_two());
                    assert!(len / parts - p < 2 * span, "len {len}, parts {parts}: {p}");
                }
            }
        }
        assert_eq!(staggered_part(1 << 27, 4), (1 << 25) - STAGGER_SKEW / 8);
    }

    /// Integer-valued squares sum exactly, so every length (a dropped tail
    /// or lane fails) gives the exact sum; other values agree with an
    /// exact-as-possible reference to f64 rounding; the norm scales by it.
    #[test]
    fn sum_of_squares_and_rmsnorm() {
        for n in 0..70usize {
            let x: Vec<f32> = (0..n).map(|i| (i as f32) - 20.0).collect();
            let exact: f64 = (0..n).map(|i| ((i as f64) - 20.0).powi(2)).sum();
            assert_eq!(sum_squares_f64(&x), exact, "n = {n}");
        }
        let x: Vec<f32> = (0..6912)
            .map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 37.0)
            .collect();
        // Neumaier's compensated sum: within an ulp or two of exact.
        let (mut reference, mut c) = (0f64, 0f64);
        for &v in &x {
            let y = (v as f64) * (v as f64);
            let t = reference + y;
            c += if reference.abs() >= y.abs() {
                (reference - t) + y
            } else {
                (y - t) + reference
            };
            reference = t;
        }
        reference += c;
        let s = sum_squares_f64(&x);
        // 432 sums of 16 and 16 of those: a few 1e-14 at most.
        assert!(
            (s - reference).abs() <= reference * 1e-13,
            "{s} vs {reference}"
        );
        let w: Vec<f32> = (0..x.len()).map(|i| 1.0 + (i % 3) as f32).collect();
        let mut out = vec![0f32; x.len()];
        rmsnorm(&x, &w, 1e-5, &mut out);
        let inv = 1.0 / ((s / x.len() as f64) as f32 + 1e-5).sqrt();
        for i in [0, 1, 17, 6911] {
            assert_eq!(out[i], x[i] * inv * w[i]);
        }
    }
}
