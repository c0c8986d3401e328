//! AVX2 tiles and primitives (x86_64), selected at run time; the loops
//! around them are the shared drivers in `kernels::{ternary, float, qhead}`.
//!
//! Ternary products: `vpmaddubsw` of the unsigned codes (0..3) with the
//! signed activations gives exact 16-bit pair sums; those are summed in 16
//! bits over a bounded run (|sum| ≤ 32·2·3·128 < 2^15 even for the invalid
//! code 3), then widened to 32 bits with `vpmaddwd`, so the result equals
//! the scalar integer sum exactly.

use super::float::{self, store_tile};
use super::layout::Steps;
use super::ops::{self, Kv};
use super::qhead::{self, quant_tile_shapes};
use super::ternary::{TileShape, GROUP, GROUP_BLOCK_BYTES, QK};
use super::{BlockActs, Kernel, Ops, StreamPlan};
use crate::quant::{q6_k, q8_0};
use half::f16;
use std::arch::x86_64::*;

/// The AVX2 function table (everything has an AVX2 version).
pub(crate) const OPS: Ops = Ops {
    i2s_packed,
    i2s_streams: None,
    i2s_tile,
    i2s_shape: SHAPE,
    i2s_panel_min_tokens: super::ternary::PANEL_MIN_TOKENS,
    i2s_unpack,
    f16_tile: float_dispatch::<true>,
    f32_tile: float_dispatch::<false>,
    f16_streams: Some(float::Streams {
        two: float_streams::<true, 2>,
        four: float_streams::<true, 4>,
    }),
    f32_streams: Some(float::Streams {
        two: float_streams::<false, 2>,
        four: float_streams::<false, 4>,
    }),
    q8_0_tile,
    q6_k_tile,
    q6_k_streams: Some(qhead::Streams {
        two: q6_k_streams::<2>,
        four: q6_k_streams::<4>,
    }),
    q8_0_block_dots,
    q6_k_block_dots,
    quantize_act,
    dot_f32,
    dot_f16,
    axpy_f16,
    axpy_f32,
    attn_scores,
    attn_values,
    attn_scores_group: Some(attn_scores_group),
    attn_values_group: Some(attn_values_group),
    softmax,
};

static AVX2: Kernel = Kernel::new("avx2", "avx2", OPS);
static AVX2_NARROW: Kernel = Kernel::new("avx2", "avx2", OPS).with_plan(StreamPlan::NARROW);

/// Whether this CPU runs the AVX2 table (AVX2, FMA, F16C).
pub fn detect() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// The AVX2 kernel with the narrow plan if `narrow`, else the wide one,
/// if this CPU has the features.
fn with_plan(narrow: bool) -> Option<&'static Kernel> {
    detect().then_some(if narrow { &AVX2_NARROW } else { &AVX2 })
}

/// The AVX2 kernel, if this CPU has the features, with the CPU's
/// [`StreamPlan`].
pub fn get() -> Option<&'static Kernel> {
    with_plan(StreamPlan::for_this_cpu() == StreamPlan::NARROW)
}

/// The AVX2 kernel with the plan [`get`] does not give it, for the
/// property tests.
pub fn other_plan() -> Option<&'static Kernel> {
    with_plan(StreamPlan::for_this_cpu() != StreamPlan::NARROW)
}

/// Blocks summed in 16-bit lanes before widening (packed tiles).
const CHUNK: usize = 8;
/// Steps of 32 values summed in 16-bit lanes before widening (code tile):
/// 32 · 2·3·128 < 2^15.
const CODE_CHUNK: usize = 32;
/// The prompt tile: 2 rows × 6 tokens, 32 bytes of K per step. Twelve
/// 16-bit accumulators, two code vectors, one activation vector and one
/// product fill the 16 registers.
const SHAPE: TileShape = TileShape {
    rows: 2,
    tokens: 6,
    lane: 32,
};
/// How far ahead the one-token ternary product prefetches its weight
/// stream, and the one-token float and quantized head products each row.
/// Measured on a 2-core Zen 3 VM: without them the hardware prefetcher
/// alone left generation at ~70% of the read bandwidth, with them ~85–100%.
pub(super) const PREFETCH_GEMV: usize = 16 << 10;
pub(super) const PREFETCH_HEAD: usize = 32 << 10;
/// How far ahead, into L1, the products that stream their weights from
/// memory also prefetch (besides, or instead of, the L2 prefetches above):
/// the float heads here (every token count; this table serves AMD too,
/// where it is not measured), and AVX-512's one-token ternary tiles (VNNI
/// and BW). On the
/// 2-core Intel Xeon VM (huge pages, `examples/tg_profile`, best of
/// 1024–4096 bytes) 1536 was best or tied everywhere, 3 KiB and more lost 20–30%:
/// the F16 head 16.0–16.4 → 16.4–16.6 GB/s on one thread and 30.3–31.0 →
/// 31.8–32.4 on two with it added to the L2 prefetch; see `avx512` for the
/// others.
pub(super) const PREFETCH_L1: usize = 1536;
/// How far ahead the one-token float product over distant rows
/// ([`float_streams`]) prefetches each row into L2 and into L1: with
/// several distant streams a near L2 line and a longer L1 distance than one
/// stream's. The 2B-4T F16 head's one-token product on the Intel Xeon VM
/// (2026-12-02, alternated in one process, medians of six rounds, % of
/// the streaming sum measured beside them), against the four-neighbouring-rows
/// tile at 82–84% (1 thread) and 85–86% (2): L1 only at 1536 89 / 91%, at
/// 3072 90 / 92%; L2 4 KiB + L1 1536 90 / 91%, + L1 3072 91–93 / 92–93%,
/// + L1 4096 88 / 92%; L2 8 or 16 KiB 79 / 86–87%.
const PREFETCH_STREAMS_L2: usize = 4 << 10;
const PREFETCH_STREAMS_L1: usize = 3 << 10;

// Every entry below is reached only through `AVX2` / `AVX2_NARROW` (or the
// AVX-512 tables built on `OPS`), which `get` / `other_plan` /
// `avx512::variants` / `avx512::other_plan` hand out after checking the
// CPU's features; that is the SAFETY argument of each `unsafe` call to
// a `#[target_feature]` function in them. The drivers and `Kernel` methods
// checked the sizes.

pub(super) unsafe fn i2s_packed(
    w: *const u8,
    nb: usize,
    x: *const i8,
    k: usize,
    t: usize,
    out: *mut i32,
    ld: usize,
) {
    // SAFETY: the tile contract (see `ternary::PackedTile`) and the CPU check.
    match t {
        1 => tile1(w, nb, x, out),
        2 => tile2::<2>(w, nb, x, k, out, ld),
        3 => tile2::<3>(w, nb, x, k, out, ld),
        _ => tile2::<4>(w, nb, x, k, out, ld),
    }
}

unsafe fn i2s_tile(c: *const u8, x: *const i8, steps: usize, t: usize, out: *mut i32, ld: usize) {
    // SAFETY: the tile contract (see `ternary::CodeTile`) and the CPU check.
    match t {
        1 => code_tile::<1>(c, x, steps, out, ld),
        2 => code_tile::<2>(c, x, steps, out, ld),
        3 => code_tile::<3>(c, x, steps, out, ld),
        4 => code_tile::<4>(c, x, steps, out, ld),
        5 => code_tile::<5>(c, x, steps, out, ld),
        _ => code_tile::<6>(c, x, steps, out, ld),
    }
}

/// `float::StreamsTile` for F16 (`F16`) or F32 rows: the one-token
/// `S`-row tile over `S` distant rows (each row's value as
/// `float_dispatch` gives it). The 2B-4T file with an
/// F32 head (1.3 of its 1.8 GB), whole decode steps alternated in one
/// process on the Intel Xeon VM (2026-12-02, five rounds, medians of % of
/// the bound), against four neighbouring rows: 86.1 → 94.0% on one
/// thread, 84.6 → 91.8% on two; the F16 head: see
/// [`PREFETCH_STREAMS_L2`].
unsafe fn float_streams<const F16: bool, const S: usize>(
    w: [*const u8; S],
    d: usize,
    x: *const f32,
) -> [f32; S] {
    // SAFETY: the tile contract (see `float::StreamsTile`) and the CPU check.
    float_tile::<F16, S, 1, true>(w, [x], d).map(|[v]| v)
}

#[allow(clippy::too_many_arguments)]
unsafe fn q8_0_tile(
    w: *const u8,
    steps: Steps,
    r: usize,
    x: &BlockActs,
    t0: usize,
    t: usize,
    out: *mut f32,
    ld: usize,
) {
    // SAFETY: the tile contract (see `qhead::Tile`) and the CPU check.
    quant_dispatch::<false>(w, steps, r, x, t0, t, out, ld)
}

#[allow(clippy::too_many_arguments)]
unsafe fn q6_k_tile(
    w: *const u8,
    steps: Steps,
    r: usize,
    x: &BlockActs,
    t0: usize,
    t: usize,
    out: *mut f32,
    ld: usize,
) {
    // SAFETY: as for `q8_0_tile`.
    quant_dispatch::<true>(w, steps, r, x, t0, t, out, ld)
}

/// `qhead::StreamsTile` for Q6_K: the four-row tile's sums
/// ([`q6_k_streams_avx2`]) for `S` groups, block by block, prefetched
/// as [`prefetch_q6_k_near`] says; each group's four rows `steps.row`
/// apart, its outputs written to `out[s] .. + 4`. Whole decode steps of
/// the 2B-4T Q6_K file with `TERN_KERNEL=avx2` on the Intel Xeon VM
/// (2026-12-02, five rounds alternated in one process, medians of % of
/// the bound) against group by group, both with the far L2 prefetch:
/// 56.3 → 59.9% on one thread, 57.1 → 59.5% on two.
unsafe fn q6_k_streams<const S: usize>(
    w: [*const u8; S],
    steps: Steps,
    x: &BlockActs,
    out: [*mut f32; S],
) {
    let nb = x.k / q6_k::QK_K;
    let rows = w.map(|g| std::array::from_fn(|j| g.add(j * steps.row)));
    // SAFETY: the tile contract (`qhead::StreamsTile`: the groups' blocks
    // and one token's quants, scales and sums in bounds) and the CPU check.
    let res = q6_k_streams_avx2::<S>(
        rows,
        x.qs.as_ptr(),
        x.d.as_ptr(),
        x.bsums.as_ptr(),
        nb,
        steps.block,
    );
    for (o, r) in out.iter().zip(res) {
        std::ptr::copy_nonoverlapping(r.as_ptr(), *o, 4);
    }
}

fn q8_0_block_dots(w: &[u8], a: &[i8], out: &mut [i32]) {
    for (b, o) in out.iter_mut().enumerate() {
        // SAFETY: CPU checked; `Kernel::q8_0_block_dots` asserted that block
        // `b` lies inside `w` (34 bytes) and `a` (32).
        *o = unsafe {
            hsum_i32(
                q8_0_block::<1>(
                    w.as_ptr().add(b * q8_0::BLOCK_BYTES),
                    [a.as_ptr().add(b * q8_0::QK8_0)],
                )[0],
            )
        };
    }
}

fn q6_k_block_dots(w: &[u8], a: &[i8], bsums: &[i16], out: &mut [i32]) {
    for (b, o) in out.iter_mut().enumerate() {
        // SAFETY: CPU checked; `Kernel::q6_k_block_dots` asserted that block
        // `b` lies inside `w` (210 bytes), `a` (256) and `bsums` (16).
        *o = unsafe {
            hsum_i32(
                q6_k_block::<1>(
                    w.as_ptr().add(b * q6_k::BLOCK_BYTES),
                    [a.as_ptr().add(b * q6_k::QK_K)],
                    [bsums.as_ptr().add(b * 16)],
                )[0],
            )
        };
    }
}

fn quantize_act(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    // SAFETY: CPU checked; `Kernel::quantize_act` asserted equal lengths.
    unsafe { quantize_avx2(x, q) }
}

fn softmax(x: &mut [f32]) {
    // SAFETY: CPU checked (AVX2 and FMA); the loops stay inside `x`.
    unsafe { softmax_avx2(x) }
}

fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: CPU checked; `Kernel::dot_f32` cut both to one length.
    unsafe { dot_f32_avx2(a, b) }
}

fn dot_f16(a: &[f16], b: &[f32]) -> f32 {
    // SAFETY: CPU checked; `Kernel::dot_f16` cut both to one length.
    unsafe { dot_f16_avx2(a, b) }
}

fn axpy_f16(p: f32, x: &[f16], y: &mut [f32]) {
    // SAFETY: CPU checked; `Kernel::axpy_f16` cut both to one length.
    unsafe { axpy_avx2::<true>(p, x.as_ptr() as *const u8, y) }
}

fn axpy_f32(p: f32, x: &[f32], y: &mut [f32]) {
    // SAFETY: CPU checked; `Kernel::axpy_f32` cut both to one length.
    unsafe { axpy_avx2::<false>(p, x.as_ptr() as *const u8, y) }
}

fn attn_scores(k: Kv, stride: usize, off: usize, q: &[f32], scale: f32, scores: &mut [f32]) {
    let d = q.len();
    // SAFETY: CPU checked; `Kernel::attn_scores` asserted that every row
    // read lies inside the cache (and the slices are bounds-checked).
    unsafe {
        match k {
            Kv::F16(k) => {
                for (t, s) in scores.iter_mut().enumerate() {
                    let at = t * stride + off;
                    *s = dot_f16_avx2(&k[at..at + d], q) * scale;
                }
            }
            Kv::F32(k) => {
                for (t, s) in scores.iter_mut().enumerate() {
                    let at = t * stride + off;
                    *s = dot_f32_avx2(&k[at..at + d], q) * scale;
                }
            }
        }
    }
}

fn attn_values(v: Kv, stride: usize, off: usize, p: &[f32], out: &mut [f32]) {
    // SAFETY: CPU checked; `Kernel::attn_values` asserted that every row
    // read lies inside the cache.
    unsafe {
        match v {
            Kv::F16(v) => values_avx2::<true>(v.as_ptr() as *const u8, stride, off, p, out),
            Kv::F32(v) => values_avx2::<false>(v.as_ptr() as *const u8, stride, off, p, out),
        }
    }
}

pub(super) fn attn_scores_group(
    k: Kv,
    stride: usize,
    off: usize,
    qs: &[f32],
    d: usize,
    scale: f32,
    scores: &mut [f32],
) {
    match k {
        // SAFETY: CPU checked; `Kernel::attn_scores_group` checked the
        // sizes and that every row read lies inside the cache.
        Kv::F16(k) => unsafe {
            scores_group_f16(k.as_ptr() as *const u16, stride, off, qs, d, scale, scores)
        },
        Kv::F32(_) => ops::scores_per_head(attn_scores, k, stride, off, qs, d, scale, scores),
    }
}

pub(super) fn attn_values_group(
    v: Kv,
    stride: usize,
    off: usize,
    ps: &[f32],
    g: usize,
    outs: &mut [f32],
) {
    match v {
        // SAFETY: CPU checked; `Kernel::attn_values_group` checked the
        // sizes and that every row read lies inside the cache.
        Kv::F16(v) => unsafe {
            values_group_f16(v.as_ptr() as *const u8, stride, off, ps, g, outs)
        },
        Kv::F32(_) => ops::values_per_head(attn_values, v, stride, off, ps, g, outs),
    }
}

/// Positions ahead that the grouped attention prefetches the K / V rows
/// (a head's slice of each row, `stride` apart: 256 bytes 1280 apart
/// when measured below, contiguous since the cache went head-major —
/// where it still paid: without it, the same head-major caches took
/// 13.0–14.2 ms instead of 11.0–11.2 at depth 1024 on two threads, and
/// 41–49 instead of 34–38 at 3072, alternated in one process). Measured on the Intel Xeon
/// VM, `tern bench -p 0 -n 32 -d 2048` on the 2B-4T Q6_K file (5 KV heads
/// of 128, 157 MB of cache read per token), the commit before and this
/// one alternated: 9.4–9.6 → 13.2 t/s on one thread, 16.1–16.8 → 22.2 on
/// two; grouping the heads alone (before the prefetch) changed nothing
/// there, but took pp512 from 87 to 91 t/s. 6 and 48 positions ahead
/// were no better than 16.
pub(super) const KV_AHEAD: usize = 16;

/// Scores of the heads `qs` (`d` values each) against f16 keys, at most
/// four heads per pass over the keys: per head and position exactly
/// [`dot_f16_avx2`]'s operations (two accumulators over 16-value steps,
/// the same horizontal sum, then the tail in order), times `scale`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scores_group_f16(
    k: *const u16,
    stride: usize,
    off: usize,
    qs: &[f32],
    d: usize,
    scale: f32,
    scores: &mut [f32],
) {
    let g = qs.len() / d;
    let npos = scores.len() / g;
    for (h0, hc) in head_groups(g) {
        let q = qs.as_ptr().add(h0 * d);
        let s = scores.as_mut_ptr().add(h0 * npos);
        match hc {
            4 => scores_heads::<4>(k, stride, off, q, d, npos, scale, s),
            3 => scores_heads::<3>(k, stride, off, q, d, npos, scale, s),
            2 => scores_heads::<2>(k, stride, off, q, d, npos, scale, s),
            _ => scores_heads::<1>(k, stride, off, q, d, npos, scale, s),
        }
    }
}

/// The grouped attention's passes over `g` heads: `(first head, heads)`,
/// at most four heads each.
pub(super) fn head_groups(g: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..g).step_by(4).map(move |h0| (h0, (g - h0).min(4)))
}

/// `H` heads (`q`, `d` apart) × `npos` positions; `s[h · npos + t]`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn scores_heads<const H: usize>(
    k: *const u16,
    stride: usize,
    off: usize,
    q: *const f32,
    d: usize,
    npos: usize,
    scale: f32,
    s: *mut f32,
) {
    let full = d - d % 16;
    for t in 0..npos {
        let kr = k.add(t * stride + off);
        // The head's slice of the key KV_AHEAD positions on (see
        // KV_AHEAD: it pays even where the rows are contiguous).
        prefetch_lines::<_MM_HINT_T0>(
            kr.wrapping_add(KV_AHEAD.wrapping_mul(stride)) as *const u8,
            (2 * d).div_ceil(64),
        );
        let mut a0 = [_mm256_setzero_ps(); H];
        let mut a1 = [_mm256_setzero_ps(); H];
        let mut i = 0;
        while i < full {
            let k0 = _mm256_cvtph_ps(_mm_loadu_si128(kr.add(i) as *const __m128i));
            let k1 = _mm256_cvtph_ps(_mm_loadu_si128(kr.add(i + 8) as *const __m128i));
            for h in 0..H {
                let qh = q.add(h * d + i);
                a0[h] = _mm256_fmadd_ps(k0, _mm256_loadu_ps(qh), a0[h]);
                a1[h] = _mm256_fmadd_ps(k1, _mm256_loadu_ps(qh.add(8)), a1[h]);
            }
            i += 16;
        }
        for h in 0..H {
            *s.add(h * npos + t) =
                finish_score(_mm256_add_ps(a0[h], a1[h]), kr, q.add(h * d), full, d) * scale;
        }
    }
}

/// One head's dot with one f16 key row once its 16-value steps are summed
/// into the eight lanes of `u`: the horizontal sum, then the values
/// `full..d` in order (`k` the row, `q` the head). Every grouped score
/// routine (here and in `avx512`) ends with it, so they agree bit for bit.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn finish_score(
    u: __m256,
    k: *const u16,
    q: *const f32,
    full: usize,
    d: usize,
) -> f32 {
    let mut v = hsum_f32(u);
    for j in full..d {
        v += f16::from_bits(*k.add(j)).to_f32() * *q.add(j);
    }
    v
}

/// Weighted sums of f16 values for `g` heads (weights `ps`, `npos` per
/// head), at most four heads per pass over the values: per output value
/// exactly [`values_avx2`]'s operations (`p[t] · v + acc` in position
/// order from zero; the tail past a multiple of 8 as `y += p · v`).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn values_group_f16(
    v: *const u8,
    stride: usize,
    off: usize,
    ps: &[f32],
    g: usize,
    outs: &mut [f32],
) {
    let (npos, d) = (ps.len() / g, outs.len() / g);
    for (h0, hc) in head_groups(g) {
        let p = ps.as_ptr().add(h0 * npos);
        let o = outs.as_mut_ptr().add(h0 * d);
        match hc {
            4 => values_heads::<4>(v, stride, off, p, npos, o, d),
            3 => values_heads::<3>(v, stride, off, p, npos, o, d),
            2 => values_heads::<2>(v, stride, off, p, npos, o, d),
            _ => values_heads::<1>(v, stride, off, p, npos, o, d),
        }
    }
}

/// Positions per block of [`values_heads`]: a block's rows come from
/// memory in its first column pass and from L1 in the others (a head's
/// slice of 32 f16 rows of 128 is 8 KiB). Measured on the Intel Xeon VM
/// (2026-12-02, 30 layers' head-major caches, five KV heads of 128, one
/// token's attention, alternated in one process, three rounds): at depth
/// 3072, 29.6–33.9 → 25.2–27.4 ms on two threads and 51.9–56.0 →
/// 48.2–49.3 on one; 64 and 128 positions did as well on two threads but
/// no better than none on one.
pub(super) const VALUES_BLOCK: usize = 32;

/// `H` heads' weights (`p`, `npos` apart) × `d` values; `o[h · d + i]`.
/// Positions go in blocks of [`VALUES_BLOCK`], each block in column
/// passes of 16 values whose sums stay in registers across the block and
/// in `o` between blocks: per output value the same FMAs in the same
/// position order as one pass over all positions (an f32 stored and
/// loaded back is exact), so the same bits.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn values_heads<const H: usize>(
    v: *const u8,
    stride: usize,
    off: usize,
    p: *const f32,
    npos: usize,
    o: *mut f32,
    d: usize,
) {
    let full = d - d % 8;
    // Block starts; with no positions, one empty block writes the zeros.
    for t0 in (0..npos.max(1)).step_by(VALUES_BLOCK) {
        let t1 = (t0 + VALUES_BLOCK).min(npos);
        let mut c0 = 0;
        while c0 < full {
            let two = full - c0 >= 16;
            let mut acc = [[_mm256_setzero_ps(); 2]; H];
            if t0 > 0 {
                for h in 0..H {
                    acc[h][0] = _mm256_loadu_ps(o.add(h * d + c0));
                    if two {
                        acc[h][1] = _mm256_loadu_ps(o.add(h * d + c0 + 8));
                    }
                }
            }
            for t in t0..t1 {
                let base = t * stride + off + c0;
                if c0 == 0 {
                    // The first pass brings in each row's whole slice (the
                    // later passes find it in L1), KV_AHEAD positions on.
                    let ahead = base.wrapping_add(KV_AHEAD.wrapping_mul(stride));
                    prefetch_lines::<_MM_HINT_T0>(
                        v.wrapping_add(ahead.wrapping_mul(2)),
                        (2 * d).div_ceil(64),
                    );
                }
                let v0 = load8::<true>(v, base);
                let v1 = if two { load8::<true>(v, base + 8) } else { v0 };
                for h in 0..H {
                    let pv = _mm256_set1_ps(*p.add(h * npos + t));
                    acc[h][0] = _mm256_fmadd_ps(pv, v0, acc[h][0]);
                    if two {
                        acc[h][1] = _mm256_fmadd_ps(pv, v1, acc[h][1]);
                    }
                }
            }
            for h in 0..H {
                _mm256_storeu_ps(o.add(h * d + c0), acc[h][0]);
                if two {
                    _mm256_storeu_ps(o.add(h * d + c0 + 8), acc[h][1]);
                }
            }
            c0 += if two { 16 } else { 8 };
        }
    }
    values_tail::<H>(v, stride, off, p, npos, o, d, full);
}

/// The values `full..d` of `H` heads' weighted sums over f16 values (the
/// columns past the last whole 8-wide pass) as `y += p · v` in position
/// order from zero; every grouped values routine (here and in `avx512`)
/// ends with it.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn values_tail<const H: usize>(
    v: *const u8,
    stride: usize,
    off: usize,
    p: *const f32,
    npos: usize,
    o: *mut f32,
    d: usize,
    full: usize,
) {
    for h in 0..H {
        for i in full..d {
            let mut y = 0f32;
            for t in 0..npos {
                y += *p.add(h * npos + t) * elem::<true>(v, t * stride + off + i);
            }
            *o.add(h * d + i) = y;
        }
    }
}

/// Unpack packed groups into a code tile's layout: any tile height, lanes
/// of 32, 64 or 128 bytes (one canonical field of one block, 32 values,
/// lands whole in one lane). Also the AVX-512 tables' unpack.
///
/// # Safety
/// As `ternary::Unpack`.
pub(crate) unsafe fn i2s_unpack(
    w: *const u8,
    nb: usize,
    groups: usize,
    shape: TileShape,
    dst: *mut u8,
) {
    debug_assert!(matches!(shape.lane, 32 | 64 | 128));
    unpack_avx2(w, nb, groups, shape.rows, shape.lane, dst)
}

#[target_feature(enable = "avx2")]
unsafe fn unpack_avx2(w: *const u8, nb: usize, groups: usize, rr: usize, l: usize, dst: *mut u8) {
    let mask = _mm256_set1_epi8(3);
    let steps = nb * QK / l;
    for g in 0..groups {
        for r in 0..GROUP {
            let m = g * GROUP + r;
            let base = dst.add((m / rr) * steps * rr * l + (m % rr) * l);
            for b in 0..nb {
                let v = _mm256_loadu_si256(
                    w.add((g * nb + b) * GROUP_BLOCK_BYTES + r * 32) as *const __m256i
                );
                // Field i holds values b·128 + 32i .. + 32: lane (b·128 + 32i) / l.
                let st = |i: usize| {
                    let at = b * QK + 32 * i;
                    base.add((at / l) * rr * l + at % l) as *mut __m256i
                };
                _mm256_storeu_si256(st(0), _mm256_and_si256(_mm256_srli_epi16::<6>(v), mask));
                _mm256_storeu_si256(st(1), _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask));
                _mm256_storeu_si256(st(2), _mm256_and_si256(_mm256_srli_epi16::<2>(v), mask));
                _mm256_storeu_si256(st(3), _mm256_and_si256(v, mask));
            }
        }
    }
}

/// The prompt tile: 2 rows × `T` tokens over unpacked codes (`[step][2][32]`)
/// and interleaved activations (`[step][T][32]`), both one sequential
/// stream; 16-bit sums widened every [`CODE_CHUNK`] steps. Writes
/// `out[t·ld + r]` = Σ code·x.
#[target_feature(enable = "avx2")]
#[allow(clippy::needless_range_loop)]
unsafe fn code_tile<const T: usize>(
    c: *const u8,
    x: *const i8,
    steps: usize,
    out: *mut i32,
    ld: usize,
) {
    let ones = _mm256_set1_epi16(1);
    let mut acc32 = [[_mm256_setzero_si256(); T]; 2];
    let mut s = 0;
    while s < steps {
        let se = (s + CODE_CHUNK).min(steps);
        let mut acc = [[_mm256_setzero_si256(); T]; 2];
        let mut cp = c.add(s * 64);
        let mut xp = x.add(s * T * 32);
        for _ in s..se {
            let c0 = _mm256_loadu_si256(cp as *const __m256i);
            let c1 = _mm256_loadu_si256(cp.add(32) as *const __m256i);
            for t in 0..T {
                let xv = _mm256_loadu_si256(xp.add(32 * t) as *const __m256i);
                acc[0][t] = _mm256_add_epi16(acc[0][t], _mm256_maddubs_epi16(c0, xv));
                acc[1][t] = _mm256_add_epi16(acc[1][t], _mm256_maddubs_epi16(c1, xv));
            }
            cp = cp.add(64);
            xp = xp.add(T * 32);
        }
        for r in 0..2 {
            for t in 0..T {
                acc32[r][t] = _mm256_add_epi32(acc32[r][t], _mm256_madd_epi16(acc[r][t], ones));
            }
        }
        s = se;
    }
    for t in 0..T {
        for r in 0..2 {
            *out.add(t * ld + r) = hsum_i32(acc32[r][t]);
        }
    }
}

float::float_dispatch_fn!("avx2,fma,f16c", float_tile, false);

/// The quantized tile shapes of `qhead::Tile` (Q6_K's four-row,
/// one-token shape through [`q6_k_rows4_avx2`]).
///
/// # Safety
/// The tile contract of `qhead::Tile`, on a CPU with AVX2, FMA and F16C.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quant_dispatch<const Q6: bool>(
    w: *const u8,
    steps: Steps,
    r: usize,
    x: &BlockActs,
    t0: usize,
    t: usize,
    out: *mut f32,
    ld: usize,
) {
    let nb = x.k / if Q6 { q6_k::QK_K } else { q8_0::QK8_0 };
    let row = |j: usize| w.add(j * steps.row);
    let ap = |u: usize| x.qs.as_ptr().add((t0 + u) * x.k);
    let dp = |u: usize| x.d.as_ptr().add((t0 + u) * nb);
    // Q8_0 has no sums: any valid pointer, never read.
    let bp = |u: usize| {
        if Q6 {
            x.bsums.as_ptr().add((t0 + u) * x.k / 16)
        } else {
            x.bsums.as_ptr()
        }
    };
    macro_rules! run {
        ($r:literal, $t:literal) => {{
            let res = quant_tile::<Q6, $r, $t>(
                std::array::from_fn(row),
                std::array::from_fn(ap),
                std::array::from_fn(dp),
                std::array::from_fn(bp),
                nb,
                steps.block,
            );
            store_tile(res, out, ld);
        }};
    }
    quant_tile_shapes!(r, t, run)
}

/// `out = Σ_t p[t] · V_t` with the running sums of up to 64 outputs in
/// registers across all positions; per element the same FMA sequence as
/// repeated [`axpy_avx2`] (and its scalar tail for the last `len % 8`).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn values_avx2<const F16: bool>(
    v: *const u8,
    stride: usize,
    off: usize,
    p: &[f32],
    out: &mut [f32],
) {
    let d = out.len();
    let full = d - d % 8;
    let mut c0 = 0;
    while c0 < full {
        let nv = ((full - c0) / 8).min(8);
        let mut acc = [_mm256_setzero_ps(); 8];
        for (t, &pt) in p.iter().enumerate() {
            let pv = _mm256_set1_ps(pt);
            let base = t * stride + off + c0;
            for (j, a) in acc.iter_mut().enumerate().take(nv) {
                *a = _mm256_fmadd_ps(pv, load8::<F16>(v, base + 8 * j), *a);
            }
        }
        for (j, a) in acc.iter().enumerate().take(nv) {
            _mm256_storeu_ps(out.as_mut_ptr().add(c0 + 8 * j), *a);
        }
        c0 += 8 * nv;
    }
    for (i, o) in out.iter_mut().enumerate().skip(full) {
        let mut y = 0f32;
        for (t, &pt) in p.iter().enumerate() {
            y += pt * elem::<F16>(v, t * stride + off + i);
        }
        *o = y;
    }
}

/// An empty `asm!` that pins `v` in a register: keeps LLVM from
/// re-associating the accumulator sums into trees that need more registers
/// than there are (and then spill).
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn keep(v: &mut __m256i) {
    // SAFETY: the template is empty, so no instruction runs; the operand
    // only tells the compiler that `v` is read and rewritten in a register.
    std::arch::asm!(
        "/* {0} */",
        inout(ymm_reg) * v,
        options(pure, nomem, nostack, preserves_flags)
    );
}

/// Sum the eight 32-bit lanes of four row accumulators: `[Σa0, Σa1, Σa2, Σa3]`.
#[target_feature(enable = "avx2")]
#[inline]
pub(super) unsafe fn hsum4(a: [__m256i; 4]) -> __m128i {
    let s = _mm256_hadd_epi32(_mm256_hadd_epi32(a[0], a[1]), _mm256_hadd_epi32(a[2], a[3]));
    _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s))
}

/// Blocks one-token sums stay in 16-bit lanes in [`tile1`]: five blocks of
/// the ×4 sums (each lane at most 2 · 12 · 128 per product, two products a
/// block) stay below 2^15 even for code 3 (which validation refuses, but
/// the kernels still match the reference on it).
const CHUNK1: usize = 5;

/// One token (generation): the four rows of a packed group against one
/// activation row; each activation vector is loaded once for four rows.
/// Writes `out[r]` = Σ code·x.
///
/// Cheaper unpacking than a shift and a mask per code: one 4-bit shift
/// per weight vector, and the codes at bits 2–3 of a byte (of it and of
/// the shifted copy) are used in place, as 4 · code: their products (4×
/// the true ones, at most 2 · 12 · 128 per lane, no saturation) go to a
/// second 16-bit sum that is divided by 4 (an exact shift: every term is
/// a multiple of 4) before widening: 13 vector operations per 32 weight
/// bytes instead of 15 (three shifts and four masks before).
///
/// On the 2-core Zen 3 VM (2026-12-02) the one-token product was bound
/// by those operations: 256 rows × 2560 held in L2 ran at 20.7–21.2 GB/s,
/// no faster than the 18–20 GB/s streaming read. Old and new tile
/// alternated in one process, five rounds each (two runs; ranges from the
/// steadier): in L2 20.7–21.2 → 24.2–24.8 GB/s; 100 cold 6912 × 2560
/// matrices 17.2–20.5 → 19.7–22.1 GB/s on one thread, medians 26.1 → 27.7
/// and 28.7 → 30.3 GB/s on two. Whole decode steps of the 2B-4T files,
/// eight alternated rounds, median step time old ÷ new: 1.05 (Q6_K head)
/// and 1.03 (F16 head) on one thread, 1.05 and 1.01 on two.
#[target_feature(enable = "avx2")]
#[inline]
#[allow(clippy::needless_range_loop)]
unsafe fn tile1(wp: *const u8, nb: usize, x0: *const i8, out: *mut i32) {
    let m03 = _mm256_set1_epi8(0x03);
    let m0c = _mm256_set1_epi8(0x0c);
    let ones = _mm256_set1_epi16(1);
    let mut acc32 = [_mm256_setzero_si256(); GROUP];
    let mut b = 0;
    while b < nb {
        let be = (b + CHUNK1).min(nb);
        // Per row: the ×1 sums (codes at bits 0–1) and the ×4 sums (codes
        // at bits 2–3), of the weights and of the weights >> 4.
        let mut a1 = [_mm256_setzero_si256(); GROUP];
        let mut a4 = [_mm256_setzero_si256(); GROUP];
        for bi in b..be {
            let wb = wp.add(bi * GROUP_BLOCK_BYTES);
            // Both lines of the run PREFETCH_GEMV ahead, into L2. A hint
            // only: the address may lie past the buffer, so no `add`.
            let a = wb.wrapping_add(PREFETCH_GEMV) as *const i8;
            _mm_prefetch::<_MM_HINT_T1>(a);
            _mm_prefetch::<_MM_HINT_T1>(a.wrapping_add(64));
            let xb = x0.add(bi * QK);
            // Value j of a block: byte j % 32, bits 6 − 2 (j / 32).
            let x = [
                _mm256_loadu_si256(xb as *const __m256i),
                _mm256_loadu_si256(xb.add(32) as *const __m256i),
                _mm256_loadu_si256(xb.add(64) as *const __m256i),
                _mm256_loadu_si256(xb.add(96) as *const __m256i),
            ];
            for r in 0..GROUP {
                let wv = _mm256_loadu_si256(wb.add(r * 32) as *const __m256i);
                // Bits 4–7 of each byte down to 0–3 (bits of the byte
                // above land in 4–7, which the masks drop).
                let w4 = _mm256_srli_epi16::<4>(wv);
                let p1 = _mm256_add_epi16(
                    _mm256_maddubs_epi16(_mm256_and_si256(wv, m03), x[3]),
                    _mm256_maddubs_epi16(_mm256_and_si256(w4, m03), x[1]),
                );
                let p4 = _mm256_add_epi16(
                    _mm256_maddubs_epi16(_mm256_and_si256(wv, m0c), x[2]),
                    _mm256_maddubs_epi16(_mm256_and_si256(w4, m0c), x[0]),
                );
                a1[r] = _mm256_add_epi16(a1[r], p1);
                a4[r] = _mm256_add_epi16(a4[r], p4);
            }
        }
        for r in 0..GROUP {
            // |a1| ≤ 5 · 2 · 768 and |a4 / 4| ≤ 5 · 2 · 768: the sum fits.
            let s = _mm256_add_epi16(a1[r], _mm256_srai_epi16::<2>(a4[r]));
            acc32[r] = _mm256_add_epi32(acc32[r], _mm256_madd_epi16(s, ones));
        }
        b = be;
    }
    _mm_storeu_si128(out as *mut __m128i, hsum4(acc32));
}

/// Many tokens (prompt): a packed group × `T` tokens, two rows at a time so
/// the 2·T accumulators, two code vectors and one activation vector fit
/// the 16 registers (each unpacked code vector serves `T` tokens, each
/// activation vector two rows). Writes `out[t·ld + r]` = Σ code·x.
#[target_feature(enable = "avx2")]
#[inline]
#[allow(clippy::needless_range_loop)]
unsafe fn tile2<const T: usize>(
    wp: *const u8,
    nb: usize,
    x0: *const i8,
    k: usize,
    out: *mut i32,
    ld: usize,
) {
    let mask = _mm256_set1_epi8(3);
    let ones = _mm256_set1_epi16(1);
    let mut acc32 = [[_mm256_setzero_si256(); GROUP]; T];
    for half in 0..2 {
        let wh = wp.add(half * 64);
        let mut b = 0;
        while b < nb {
            let be = (b + CHUNK).min(nb);
            let mut acc = [[_mm256_setzero_si256(); 2]; T];
            for bi in b..be {
                let wb = wh.add(bi * GROUP_BLOCK_BYTES);
                if half == 0 {
                    // Both lines of the run PREFETCH_GEMV ahead, as in
                    // `tile1` (a hint only, so `wrapping_add`).
                    let a = wb.wrapping_add(PREFETCH_GEMV) as *const i8;
                    _mm_prefetch::<_MM_HINT_T1>(a);
                    _mm_prefetch::<_MM_HINT_T1>(a.wrapping_add(64));
                }
                let w0 = _mm256_loadu_si256(wb as *const __m256i);
                let w1 = _mm256_loadu_si256(wb.add(32) as *const __m256i);
                let xb = x0.add(bi * QK);
                macro_rules! step {
                    ($i:literal, $c0:expr, $c1:expr) => {{
                        let (c0, c1) = ($c0, $c1);
                        for t in 0..T {
                            let xv = _mm256_loadu_si256(xb.add(t * k + 32 * $i) as *const __m256i);
                            acc[t][0] = _mm256_add_epi16(acc[t][0], _mm256_maddubs_epi16(c0, xv));
                            acc[t][1] = _mm256_add_epi16(acc[t][1], _mm256_maddubs_epi16(c1, xv));
                            keep(&mut acc[t][0]);
                            keep(&mut acc[t][1]);
                        }
                    }};
                }
                step!(
                    0,
                    _mm256_and_si256(_mm256_srli_epi16::<6>(w0), mask),
                    _mm256_and_si256(_mm256_srli_epi16::<6>(w1), mask)
                );
                step!(
                    1,
                    _mm256_and_si256(_mm256_srli_epi16::<4>(w0), mask),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(w1), mask)
                );
                step!(
                    2,
                    _mm256_and_si256(_mm256_srli_epi16::<2>(w0), mask),
                    _mm256_and_si256(_mm256_srli_epi16::<2>(w1), mask)
                );
                step!(3, _mm256_and_si256(w0, mask), _mm256_and_si256(w1, mask));
            }
            for t in 0..T {
                for r in 0..2 {
                    let a = &mut acc32[t][2 * half + r];
                    *a = _mm256_add_epi32(*a, _mm256_madd_epi16(acc[t][r], ones));
                }
            }
            b = be;
        }
    }
    for t in 0..T {
        _mm_storeu_si128(out.add(t * ld) as *mut __m128i, hsum4(acc32[t]));
    }
}

/// `exp` of eight floats, for softmax: Cody–Waite range reduction
/// `x = n·ln 2 + r` (|r| ≤ ln 2 / 2, ln 2 split in a short high part and a
/// correction so `n·ln2_hi` is exact) and Cephes' degree-7 `expf`
/// polynomial for `e^r`, scaled by 2^n through the exponent bits; within
/// 2 ulp of `libm::expf`. Inputs below −87.3 give 0 (e^x is then under the
/// smallest normal float), above 88.7 give +inf; NaN stays NaN.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn exp_avx2(x: __m256) -> __m256 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const P: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5, // Cephes: 5.0000001201e-1, which rounds to 0.5 in f32
    ];
    let lo = _mm256_set1_ps(-87.336_54);
    let hi = _mm256_set1_ps(88.722_83);
    // Clamp for the exponent arithmetic; NaN lanes go through as NaN
    // (min/max return the second operand when either is NaN).
    let xc = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        xc,
        _mm256_set1_ps(LOG2E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), xc);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    let mut y = _mm256_set1_ps(P[0]);
    for &c in &P[1..] {
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
    }
    let r2 = _mm256_mul_ps(r, r);
    let y = _mm256_add_ps(_mm256_fmadd_ps(y, r2, r), _mm256_set1_ps(1.0));
    // 2^n from the exponent field: n is within [-126, 128] after the clamp;
    // 2^128 is split as 2^127 · 2 so the bits stay a finite power.
    let ni = _mm256_cvtps_epi32(n);
    let big = _mm256_cmpgt_epi32(ni, _mm256_set1_epi32(127));
    let ni = _mm256_sub_epi32(ni, _mm256_and_si256(big, _mm256_set1_epi32(1)));
    let pow = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
        ni,
        _mm256_set1_epi32(127),
    )));
    let y = _mm256_mul_ps(y, pow);
    let y = _mm256_blendv_ps(y, _mm256_add_ps(y, y), _mm256_castsi256_ps(big));
    // Below the clamp the true value is under the normal range: 0. Above
    // it, infinity.
    let y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps::<_CMP_LT_OQ>(x, lo));
    let y = _mm256_blendv_ps(
        y,
        _mm256_set1_ps(f32::INFINITY),
        _mm256_cmp_ps::<_CMP_GT_OQ>(x, hi),
    );
    // NaN in, NaN out.
    _mm256_blendv_ps(y, x, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x))
}

/// [`Kernel::softmax`](super::Kernel::softmax) with [`exp_avx2`]: max and
/// sum over eight lanes; the tail goes through the same vector `exp`,
/// padded with −inf.
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_avx2(x: &mut [f32]) {
    let n = x.len();
    let p = x.as_mut_ptr();
    let mut mx = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut i = 0;
    while i + 8 <= n {
        mx = _mm256_max_ps(_mm256_loadu_ps(p.add(i)), mx);
        i += 8;
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), mx);
    let m = x[i..]
        .iter()
        .chain(lanes.iter())
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mv = _mm256_set1_ps(m);
    let mut sv = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        let e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), mv));
        _mm256_storeu_ps(p.add(i), e);
        sv = _mm256_add_ps(sv, e);
        i += 8;
    }
    if i < n {
        // The tail through the same vector `exp`, padded with −inf (→ 0).
        let mut t = [f32::NEG_INFINITY; 8];
        t[..n - i].copy_from_slice(&x[i..]);
        let e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(t.as_ptr()), mv));
        _mm256_storeu_ps(t.as_mut_ptr(), e);
        x[i..].copy_from_slice(&t[..n - i]);
        sv = _mm256_add_ps(sv, e);
    }
    _mm256_storeu_ps(lanes.as_mut_ptr(), sv);
    let sum: f32 = lanes.iter().sum();
    let sumv = _mm256_set1_ps(sum);
    let mut i = 0;
    while i + 8 <= n {
        _mm256_storeu_ps(p.add(i), _mm256_div_ps(_mm256_loadu_ps(p.add(i)), sumv));
        i += 8;
    }
    for v in &mut x[i..] {
        *v /= sum;
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_avx2(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    let n = x.len();
    let xp = x.as_ptr();
    let absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let mut mx = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        // maxps returns its second operand when either is NaN: NaN inputs
        // are skipped, as in the scalar fold.
        mx = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(xp.add(i)), absmask), mx);
        i += 8;
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), mx);
    // max is exact and order-free, so any reduction order matches scalar.
    let mut m = lanes.iter().fold(0f32, |a, &v| a.max(v));
    for &v in &x[i..] {
        m = m.max(v.abs());
    }
    let a = 127.0 / m.max(1e-5);
    let av = _mm256_set1_ps(a);
    let lo = _mm256_set1_ps(-128.0);
    let hi = _mm256_set1_ps(127.0);
    let perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let mut sumv = _mm256_setzero_si256();
    let qp = q.as_mut_ptr();
    let mut i = 0;
    while i + 32 <= n {
        let i0 = quant8(xp.add(i), av, lo, hi);
        let i1 = quant8(xp.add(i + 8), av, lo, hi);
        let i2 = quant8(xp.add(i + 16), av, lo, hi);
        let i3 = quant8(xp.add(i + 24), av, lo, hi);
        sumv = _mm256_add_epi32(
            sumv,
            _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3)),
        );
        let p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
        _mm256_storeu_si256(
            qp.add(i) as *mut __m256i,
            _mm256_permutevar8x32_epi32(p, perm),
        );
        i += 32;
    }
    let mut sl = [0i32; 8];
    _mm256_storeu_si256(sl.as_mut_ptr() as *mut __m256i, sumv);
    let mut sum: i32 = sl.iter().sum();
    for j in i..n {
        let r = (x[j] * a).round_ties_even().clamp(-128.0, 127.0) as i8;
        q[j] = r;
        sum += r as i32;
    }
    (a, sum)
}

/// `clamp(round_half_even(x·a), lo, hi)` of eight values as i32.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn quant8(p: *const f32, av: __m256, lo: __m256, hi: __m256) -> __m256i {
    let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        _mm256_loadu_ps(p),
        av,
    ));
    // NaN → 0, as `NaN as i8` is 0 (the mask is taken before the clamp,
    // which would turn NaN into a bound).
    let ord = _mm256_cmp_ps::<_CMP_ORD_Q>(r, r);
    let r = _mm256_min_ps(_mm256_max_ps(r, lo), hi);
    _mm256_cvtps_epi32(_mm256_and_ps(r, ord))
}

#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn hsum_f32(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps::<1>(v);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
    _mm_cvtss_f32(s)
}

/// Eight f32 from `p` (f16 when `F16`).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load8<const F16: bool>(p: *const u8, i: usize) -> __m256 {
    if F16 {
        _mm256_cvtph_ps(_mm_loadu_si128(p.add(i * 2) as *const __m128i))
    } else {
        _mm256_loadu_ps((p as *const f32).add(i))
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn elem<const F16: bool>(p: *const u8, i: usize) -> f32 {
    if F16 {
        f16::from_bits(*(p as *const u16).add(i)).to_f32()
    } else {
        *(p as *const f32).add(i)
    }
}

/// `R` weight rows × `T` tokens. Each (row, token) dot keeps one 8-lane
/// accumulator over the first `d − d % 8` values, a fixed horizontal sum,
/// then the tail in order: the result does not depend on `R`, `T` or the
/// thread split.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
#[allow(clippy::needless_range_loop)]
unsafe fn float_tile<const F16: bool, const R: usize, const T: usize, const DISTANT: bool>(
    w: [*const u8; R],
    x: [*const f32; T],
    d: usize,
) -> [[f32; T]; R] {
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let es = if F16 { 2 } else { 4 };
    let (pf2, pf1) = if DISTANT {
        (PREFETCH_STREAMS_L2, PREFETCH_STREAMS_L1)
    } else {
        (PREFETCH_HEAD, PREFETCH_L1)
    };
    let mut i = 0;
    while i + 8 <= d {
        // The rows stream once per token tile: each row's line
        // PREFETCH_HEAD ahead into L2 and PREFETCH_L1 ahead into L1, or
        // for distant rows the PREFETCH_STREAMS_* distances (hints
        // only, so `wrapping_add`). (With several tokens the L2 prefetch
        // halved the F16 head's time at 4.)
        if (i * es) % 64 == 0 {
            for wr in w.iter() {
                let p = wr.wrapping_add(i * es);
                _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(pf2) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(pf1) as *const i8);
            }
        }
        let xv: [__m256; T] = std::array::from_fn(|t| _mm256_loadu_ps(x[t].add(i)));
        for r in 0..R {
            let wv = load8::<F16>(w[r], i);
            for t in 0..T {
                acc[r][t] = _mm256_fmadd_ps(wv, xv[t], acc[r][t]);
            }
        }
        i += 8;
    }
    let mut res = [[0f32; T]; R];
    for r in 0..R {
        for t in 0..T {
            let mut s = hsum_f32(acc[r][t]);
            for j in i..d {
                s += elem::<F16>(w[r], j) * *x[t].add(j);
            }
            res[r][t] = s;
        }
    }
    res
}

#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len();
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut i = 0;
    while i + 16 <= n {
        acc0 = _mm256_fmadd_ps(
            _mm256_loadu_ps(a.as_ptr().add(i)),
            _mm256_loadu_ps(b.as_ptr().add(i)),
            acc0,
        );
        acc1 = _mm256_fmadd_ps(
            _mm256_loadu_ps(a.as_ptr().add(i + 8)),
            _mm256_loadu_ps(b.as_ptr().add(i + 8)),
            acc1,
        );
        i += 16;
    }
    let mut s = hsum_f32(_mm256_add_ps(acc0, acc1));
    while i < n {
        s += a[i] * b[i];
        i += 1;
    }
    s
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn dot_f16_avx2(a: &[f16], b: &[f32]) -> f32 {
    let n = a.len();
    let ap = a.as_ptr() as *const u16;
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut i = 0;
    while i + 16 <= n {
        let h0 = _mm256_cvtph_ps(_mm_loadu_si128(ap.add(i) as *const __m128i));
        let h1 = _mm256_cvtph_ps(_mm_loadu_si128(ap.add(i + 8) as *const __m128i));
        acc0 = _mm256_fmadd_ps(h0, _mm256_loadu_ps(b.as_ptr().add(i)), acc0);
        acc1 = _mm256_fmadd_ps(h1, _mm256_loadu_ps(b.as_ptr().add(i + 8)), acc1);
        i += 16;
    }
    let mut s = hsum_f32(_mm256_add_ps(acc0, acc1));
    while i < n {
        s += a[i].to_f32() * b[i];
        i += 1;
    }
    s
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn axpy_avx2<const F16: bool>(p: f32, x: *const u8, y: &mut [f32]) {
    let n = y.len();
    let pv = _mm256_set1_ps(p);
    let yp = y.as_mut_ptr();
    let mut i = 0;
    while i + 8 <= n {
        let v = _mm256_fmadd_ps(pv, load8::<F16>(x, i), _mm256_loadu_ps(yp.add(i)));
        _mm256_storeu_ps(yp.add(i), v);
        i += 8;
    }
    while i < n {
        *yp.add(i) += p * elem::<F16>(x, i);
        i += 1;
    }
}

/// Sum of the eight i32 lanes.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// An f16 at `p` (any alignment) as f32.
#[target_feature(enable = "avx2,f16c")]
#[inline]
unsafe fn f16_at(p: *const u8) -> f32 {
    let bits = u16::from_le_bytes([*p, *p.add(1)]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// One Q8_0 block (`w` at its f16 scale, quants after it) against the
/// matching 32 activation quants of `T` tokens: per token eight i32 lanes
/// summing to `Σ w·a` exactly. `|w|` (`vpsignb` of the activations by the
/// weights' signs) keeps `vpmaddubsw` exact: |pair sum| ≤ 2·128·127 < 2¹⁵;
/// needs activations ≠ -128, which the Q8_0 quantizer guarantees.
#[target_feature(enable = "avx2")]
#[inline]
#[allow(clippy::needless_range_loop)]
unsafe fn q8_0_block<const T: usize>(w: *const u8, a: [*const i8; T]) -> [__m256i; T] {
    let wv = _mm256_loadu_si256(w.add(2) as *const __m256i);
    let aw = _mm256_abs_epi8(wv);
    let ones = _mm256_set1_epi16(1);
    let mut r = [_mm256_setzero_si256(); T];
    for t in 0..T {
        let av = _mm256_loadu_si256(a[t] as *const __m256i);
        r[t] = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(av, wv)), ones);
    }
    r
}

/// One Q6_K block (`w`, 210 bytes in tern's load-time layout,
/// `q6_k::repack`) against the matching 256 Q8_K quants (`a`, each in
/// -128..=127, in the same lane order) and their 16 sums (`bs`, value
/// order) of `T` tokens: per token eight i32 lanes summing to `Σ_j
/// scale_j · Σ (q − 32)·a` exactly.
///
/// Each 32 codes hold four of each of eight sub-blocks, four bytes per
/// sub-block: three masks give 96 codes per half, three masks, three
/// shifts and two ors the last 32 (no shift carries a bit across bytes:
/// the bytes shifted have their low bits clear). The codes (0..63) go
/// through `vpmaddubsw` unsigned (|pair sum| ≤ 2·63·128, two of them
/// summed in 16 bits ≤ 32256), and one `vpmaddwd` per 64 codes applies the
/// scales, i16 pairs of the half's eight sub-blocks (one `vpermq` and two
/// unpacks per block, no shuffle per vector). The −32 offset is taken out
/// once per block as `32 · Σ_j scale_j · bsum_j`.
#[target_feature(enable = "avx2")]
#[inline]
#[allow(clippy::needless_range_loop)]
unsafe fn q6_k_block<const T: usize>(
    w: *const u8,
    a: [*const i8; T],
    bs: [*const i16; T],
) -> [__m256i; T] {
    let m6 = _mm256_set1_epi8(0x3F);
    let top = _mm256_set1_epi8(0xC0u8 as i8);
    // [s0..s7 | s8..s15] as i16; its 64-bit quarters reordered [0, 2 | 1, 3]
    // so the unpacks give [s0 s0 .. s3 s3 | s4 s4 .. s7 s7] and the same
    // for s8..s15: the scale of each i32 lane's four codes, per half.
    let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(w.add(q6_k::SC_OFF) as *const __m128i));
    let sq = _mm256_permute4x64_epi64::<0b11_01_10_00>(sc16);
    let scales = [_mm256_unpacklo_epi16(sq, sq), _mm256_unpackhi_epi16(sq, sq)];
    let mut acc = [_mm256_setzero_si256(); T];
    for h in 0..2 {
        let b0 = _mm256_loadu_si256(w.add(96 * h) as *const __m256i);
        let b1 = _mm256_loadu_si256(w.add(96 * h + 32) as *const __m256i);
        let b2 = _mm256_loadu_si256(w.add(96 * h + 64) as *const __m256i);
        let hi = _mm256_or_si256(
            _mm256_or_si256(
                _mm256_and_si256(b0, top),
                _mm256_srli_epi16::<2>(_mm256_and_si256(b1, top)),
            ),
            _mm256_srli_epi16::<4>(_mm256_and_si256(b2, top)),
        );
        let q = [
            _mm256_and_si256(b0, m6),
            _mm256_and_si256(b1, m6),
            _mm256_and_si256(b2, m6),
            _mm256_srli_epi16::<2>(hi),
        ];
        for t in 0..T {
            let av = |k: usize| _mm256_loadu_si256(a[t].add(128 * h + 32 * k) as *const __m256i);
            let p01 = _mm256_add_epi16(
                _mm256_maddubs_epi16(q[0], av(0)),
                _mm256_maddubs_epi16(q[1], av(1)),
            );
            let p23 = _mm256_add_epi16(
                _mm256_maddubs_epi16(q[2], av(2)),
                _mm256_maddubs_epi16(q[3], av(3)),
            );
            acc[t] = _mm256_add_epi32(
                acc[t],
                _mm256_add_epi32(
                    _mm256_madd_epi16(p01, scales[h]),
                    _mm256_madd_epi16(p23, scales[h]),
                ),
            );
        }
    }
    for t in 0..T {
        let b = _mm256_madd_epi16(_mm256_loadu_si256(bs[t] as *const __m256i), sc16);
        acc[t] = _mm256_sub_epi32(acc[t], _mm256_slli_epi32::<5>(b));
    }
    acc
}

/// Prefetch into L2 the lines [`PREFETCH_HEAD`] past the quantized head
/// block at `wb` (`Q6`: a 210-byte Q6_K block, four lines; else a Q8_0
/// block, one). A hint only, so `wrapping_add`.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn prefetch_head_block<const Q6: bool>(wb: *const u8) {
    prefetch_lines::<_MM_HINT_T1>(wb.wrapping_add(PREFETCH_HEAD), if Q6 { 4 } else { 1 });
}

/// The Q6_K head's prefetch when it reads several groups at once (AVX2's
/// streams, which every x86 kernel uses): the four lines of a block
/// [`PREFETCH_L1`] ahead into L1, nothing into L2. With VNNI the L2
/// prefetch 32 KiB ahead ([`prefetch_head_block`]) made it slower: the 2B-4T
/// Q6_K head (`examples/tg_profile`, Intel Xeon VM, two alternated
/// rounds) streamed 13.7–14.2 GB/s with it (alone or beside the L1 one),
/// 15.3–15.4 with the L1 one only (one thread; two: 27.4–28.3 →
/// 30.8–31.2). An L2 line `avx512::PREFETCH_L2_NEAR` ahead beside the L1 one
/// helped while the head was read one group of four rows at a time; once
/// four groups are read at once (then AVX-512 VNNI's own Q6_K routine) it costs: the
/// 2B-4T head alternated in one process (seven rounds each, two runs,
/// 2026-12-02) read 12.6–13.1 → 14.1–14.5 GB/s on one thread and 24.7–29.3
/// → 26.7–31.5 on two without it (1, 2 or 3 KiB ahead, or one prefetch
/// per four-row step instead of one per row, no better).
/// AVX2's streams (`TERN_KERNEL=avx2` on the Intel Xeon VM, 2026-12-02,
/// whole decode steps of the 2B-4T Q6_K file alternated in one process,
/// five rounds, medians of % of the bound): 59.4 → 62.3% on one thread,
/// 58.2 → 60.9% on two against the far L2 prefetch (L2 4 KiB + L1 3 KiB:
/// 61.2 / 60.8%; L2 4 KiB alone: 60.7 / 59.3%).
///
/// The pattern's own ceiling (VNNI, 2026-12-02, the head alone, both
/// files loaded in one process and alternated, seven rounds, medians of
/// the streaming sum): the same four groups read with this prefetch but
/// without the arithmetic (loads only) reach 86–87% on one thread, 89%
/// on two; with L1 3 KiB + L2 4 KiB ahead 89–90% / 91%; the real tile
/// 84–85% / 83% with this prefetch, 86% with that one — where the F16
/// head's four distant rows read 92–93% / 91%. Aligning the loads to
/// lines (the 210-byte blocks make most straddle two) changed nothing.
/// Whole decode steps with L1 3 KiB + L2 4 KiB: +0.5 point on one thread,
/// none on two (noise), so the prefetch stays. (Those VNNI figures are of
/// VNNI's own routine over ggml's block layout, before the load-time
/// layout of `q6_k::repack`; not re-measured since.)
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn prefetch_q6_k_near(wb: *const u8) {
    prefetch_lines::<_MM_HINT_T0>(wb.wrapping_add(PREFETCH_L1), 4);
}

/// Prefetch the `lines` 64-byte lines from `p` on with hint `H`
/// (`_MM_HINT_T0`: into L1, `_MM_HINT_T1`: into L2). A hint only, so the
/// addresses may lie past any buffer (`wrapping_add`).
#[target_feature(enable = "avx2")]
#[inline]
pub(super) unsafe fn prefetch_lines<const H: i32>(p: *const u8, lines: usize) {
    for line in 0..lines {
        _mm_prefetch::<H>(p.wrapping_add(64 * line) as *const i8);
    }
}

/// One Q6_K block of one token as [`q6_k_block`] computes it, kept out
/// of line: inlined into the four rows of [`q6_k_streams_avx2`], the
/// compiler interleaved the rows' unpacking and spilled most of it to the
/// stack (61 stack accesses per four blocks), and the 2B-4T head's blocks
/// ran ~20% slower from L2 and ~10% from memory than with this call
/// (a copy of the routine, alternated in one process, Zen 3 VM,
/// 2026-12-03).
#[target_feature(enable = "avx2")]
#[inline(never)]
unsafe fn q6_k_block1(w: *const u8, a: *const i8, bs: *const i16) -> __m256i {
    q6_k_block::<1>(w, [a], [bs])[0]
}

/// The four-row, one-token Q6_K head tile: rows `w`, one token's quants
/// `a`, block scales `da` and sub-block sums `bs`, `nb` blocks `bstep`
/// bytes apart in each row; each row's value. The four rows' float steps
/// `s += (d_w · d_x) · Σ` run in the four lanes of one vector, the same
/// operations per row as the scalar reference, so its bits. The rows'
/// `d_w` go into a vector as register inserts (four 2-byte stores read
/// back as one 16-byte load cannot be forwarded from the store buffer, a
/// stall every block). One group is prefetched as [`prefetch_head_block`]
/// says, several at once ([`q6_k_streams_avx2`]) as [`prefetch_q6_k_near`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_k_rows4_avx2(
    w: [*const u8; 4],
    a: *const i8,
    da: *const f32,
    bs: *const i16,
    nb: usize,
    bstep: usize,
) -> [f32; 4] {
    q6_k_streams_avx2::<1>([w], a, da, bs, nb, bstep)[0]
}

/// `S` four-row tiles at once, block by block (each its own
/// stream of blocks, the same sums as one tile at a time).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn q6_k_streams_avx2<const S: usize>(
    w: [[*const u8; 4]; S],
    a: *const i8,
    da: *const f32,
    bs: *const i16,
    nb: usize,
    bstep: usize,
) -> [[f32; 4]; S] {
    let qk = q6_k::QK_K;
    let d_w = |wb: *const u8| {
        let d = wb.add(q6_k::D_OFF);
        i16::from_le_bytes([*d, *d.add(1)])
    };
    let mut sacc = [_mm_setzero_ps(); S];
    for b in 0..nb {
        for s in 0..S {
            let mut dots = [_mm256_setzero_si256(); 4];
            for r in 0..4 {
                let wb = w[s][r].add(b * bstep);
                if S == 1 {
                    prefetch_head_block::<true>(wb);
                } else {
                    prefetch_q6_k_near(wb);
                }
                dots[r] = q6_k_block1(wb, a.add(b * qk), bs.add(b * 16));
            }
            // [Σ dots[0], Σ dots[1], Σ dots[2], Σ dots[3]], exact in i32.
            let sums = hsum4(dots);
            let wb = |r: usize| w[s][r].add(b * bstep);
            let dw = _mm_setr_epi16(d_w(wb(0)), d_w(wb(1)), d_w(wb(2)), d_w(wb(3)), 0, 0, 0, 0);
            let dwv = _mm_cvtph_ps(dw);
            let scale = _mm_mul_ps(dwv, _mm_set1_ps(*da.add(b)));
            sacc[s] = _mm_add_ps(sacc[s], _mm_mul_ps(scale, _mm_cvtepi32_ps(sums)));
        }
    }
    let mut lanes = [[0f32; 4]; S];
    for s in 0..S {
        _mm_storeu_ps(lanes[s].as_mut_ptr(), sacc[s]);
    }
    lanes
}

/// `R` head rows × `T` tokens of a quantized head (`Q6`: Q6_K, else Q8_0)
/// over `nb` blocks. Q8_0: each (row, token) keeps one 8-lane f32
/// accumulator, `acc += f32(block lanes) · (d_w · d_x)` block after block,
/// then a fixed horizontal sum. Q6_K (ten times fewer, larger blocks): each
/// block's lanes are summed exactly in integers first and the float sum is
/// the scalar reference's, bit for bit. Either way the result does not
/// depend on `R`, `T` or the thread split.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
#[allow(clippy::needless_range_loop)]
unsafe fn quant_tile<const Q6: bool, const R: usize, const T: usize>(
    w: [*const u8; R],
    a: [*const i8; T],
    da: [*const f32; T],
    bs: [*const i16; T],
    nb: usize,
    bstep: usize,
) -> [[f32; T]; R] {
    let qk = if Q6 { q6_k::QK_K } else { q8_0::QK8_0 };
    if Q6 && R == 4 && T == 1 {
        let lanes = q6_k_rows4_avx2([w[0], w[1], w[2], w[3]], a[0], da[0], bs[0], nb, bstep);
        let mut res = [[0f32; T]; R];
        for r in 0..R {
            res[r][0] = lanes[r];
        }
        return res;
    }
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let mut sacc = [[0f32; T]; R];
    for b in 0..nb {
        for r in 0..R {
            let wb = w[r].add(b * bstep);
            // The rows stream once per token tile.
            prefetch_head_block::<Q6>(wb);
            let at: [*const i8; T] = std::array::from_fn(|t| a[t].add(b * qk));
            if Q6 {
                let bt: [*const i16; T] = std::array::from_fn(|t| bs[t].add(b * 16));
                let dw = f16_at(wb.add(q6_k::D_OFF));
                let dots = q6_k_block::<T>(wb, at, bt);
                for t in 0..T {
                    sacc[r][t] += (dw * *da[t].add(b)) * hsum_i32(dots[t]) as f32;
                }
            } else {
                let dw = f16_at(wb);
                let dots = q8_0_block::<T>(wb, at);
                for t in 0..T {
                    let s = _mm256_set1_ps(dw * *da[t].add(b));
                    acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots[t]), s, acc[r][t]);
                }
            }
        }
    }
    if Q6 {
        return sacc;
    }
    let mut res = [[0f32; T]; R];
    for r in 0..R {
        for t in 0..T {
            res[r][t] = hsum_f32(acc[r][t]);
        }
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between two finite floats of
    /// one sign.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        if !detect() {
            return;
        }
        let mut worst = (0u32, 0f32);
        let mut x = -87.0f32;
        let mut xs = Vec::new();
        while x < 88.7 {
            xs.push(x);
            x += 1.3e-4;
        }
        xs.extend([0.0, -0.0, 1.0, -1.0, 1e-30, -1e-30, 88.72, -87.33]);
        for c in xs.chunks(8) {
            let mut v = [0f32; 8];
            v[..c.len()].copy_from_slice(c);
            let mut out = [0f32; 8];
            // SAFETY: AVX2 and FMA detected above.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), exp_avx2(_mm256_loadu_ps(v.as_ptr()))) };
            for (&xi, &got) in c.iter().zip(&out) {
                let want = libm::expf(xi);
                let d = ulps(got, want);
                if d > worst.0 {
                    worst = (d, xi);
                }
            }
        }
        assert!(
            worst.0 <= 2,
            "exp({}) is {} ulp from libm",
            worst.1,
            worst.0
        );
        // The edges: under the normal range 0, over it inf, NaN stays NaN.
        let edges = [
            -1e4,
            -88.0,
            89.0,
            1e4,
            f32::NEG_INFINITY,
            f32::INFINITY,
            f32::NAN,
            0.5,
        ];
        let mut out = [0f32; 8];
        // SAFETY: as above.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), exp_avx2(_mm256_loadu_ps(edges.as_ptr()))) };
        assert_eq!(&out[..2], &[0.0, 0.0]);
        assert_eq!(&out[2..4], &[f32::INFINITY, f32::INFINITY]);
        assert_eq!(out[4], 0.0);
        assert_eq!(out[5], f32::INFINITY);
        assert!(out[6].is_nan());
        assert!(ulps(out[7], libm::expf(0.5)) <= 2);
    }
}
