//! AVX-512 ternary tiles (x86_64, AVX-512 F + BW, and VNNI where present),
//! selected at run time and covered by tests/kernels.rs wherever the CPU
//! has them (both variants verified on an Intel Xeon with AVX-512 VNNI,
//! 2026-12-01; see the README).
//!
//! The ternary tiles, the float (F16 and F32) head tiles ([`float_tile`],
//! 16-lane sums, so their last bits differ from AVX2's 8-lane ones) and
//! the grouped attention over an f16 KV cache ([`scores_heads`],
//! [`values_heads`]: bit for bit AVX2's) are AVX-512; everything else
//! (the quantized heads, activation quantization, per-head and f32-cache
//! attention, the panel unpack) comes from the AVX2 table it is built on
//! — every AVX-512 CPU has AVX2, FMA and F16C.
//! VNNI had its own Q6_K head tile over ggml's block layout (tg64 on the
//! Q6_K file, Intel Xeon VM, 17.4 → 18.4–18.7 t/s on one thread against
//! AVX2's then); since the head is kept in tern's load-time layout
//! (`quant::q6_k::repack`) the AVX2 one serves here too (see `OPS_VNNI`):
//! on an AMD EPYC Zen 5 VM with AVX-512 VNNI (2026-12-03) it read the
//! 2B-4T head at 33.4–33.5 GB/s on one thread, 96–97% of the streaming
//! sum measured beside it (`examples/tg_profile`, two runs), so nothing
//! is left for a VNNI routine of its own to gain there.
//!
//! One token (generation), with VNNI, goes through [`tile_streams_vnni`]:
//! eight row groups at once from eight runs of the span (four on AMD, see
//! [`StreamPlan`]; the groups left over through [`tile1_vnni`]), see
//! there. The history below is of one group
//! at a time. [`tile1_vnni`] prefetches both into L1 (`avx2::PREFETCH_L1`, 1.5 KiB ahead) and into
//! L2 ([`PREFETCH_L2_NEAR`], 4 KiB; it was 16 KiB, as AVX2's, when the
//! figures below were taken); without VNNI through the packed tile below,
//! which for one token prefetches the same way (it had AVX2's L2 prefetch
//! only: forced with `TERN_KERNEL=avx512bw` on the Intel Xeon VM, copies
//! alternated in one process over a 640 MB matrix, two builds, it streamed
//! 12.0–13.0 GB/s on one thread and 24.3–25.7 on two against a streaming
//! sum of 17.7–18.1 / 35.7; with these prefetches 14.4 / 28.6–29.3). The
//! one-token tile AVX2 uses, with its L2 prefetch only, streams at one of
//! two rates on the Intel Xeon VM depending on the build, not on its own
//! code: the same tile code ran tg32 on the Q6_K file at 18.7–18.9 t/s in
//! one build and 15.3 in one that differs only by a never-called function
//! padded into the driver (one thread; 34.0–34.5 against 28.2–28.9 on
//! two; two alternated rounds, as the README's table). Copies of the tile's loop written out in assembly
//! showed the same two rates depending on the instructions run before
//! the loop, and with no PMU in the VM the cause stayed unknown. With
//! the L1 prefetch the VNNI tile ran 18.5–19.3 / 34.6–36.7 t/s in all
//! three builds (F16 head: 13.0–13.4 / 24.4–25.3, against 13.1 / 24.4–24.6
//! and 11.4 / 21.3–21.5 for AVX2's tile); with the L1 prefetch alone it
//! was 3–5% slower on two threads, and an L1 distance of 3 KiB lost 20%
//! on one. The earlier 512-bit one-token tiles (with the L2
//! prefetch only) had measured slower than AVX2's in a fast build (tg64
//! 12.0 against 13.0–13.3 t/s, F16 head).
//!
//! Packed tile: one packed group block (128 bytes) is two 64-byte vectors,
//! rows 0|1 and rows 2|3; each 32-byte activation chunk is broadcast to
//! both 256-bit halves, so every lane multiplies a code with its own
//! activation. Prompt tile (without VNNI only; with VNNI the packed tile
//! serves every batch): 4 rows × 6 tokens over 64-byte steps of unpacked
//! codes. Without VNNI the products are summed exactly as in the AVX2
//! kernel (16-bit `vpmaddubsw` pair sums over a bounded run, then
//! widened); with VNNI `vpdpbusd` accumulates the u8×i8 products straight
//! into 32 bits. Both give the exact integer sum.

use super::float;
use super::ops::Kv;
use super::ternary::{self, TileShape, GROUP, GROUP_BLOCK_BYTES, QK};
use super::{avx2, Kernel, Ops, StreamPlan};
use std::arch::x86_64::*;

/// How far ahead AVX-512's one-group one-token ternary tiles (VNNI's
/// [`tile1_vnni`], which takes the groups [`tile_streams_vnni`] leaves over,
/// and the BW packed tile for one token) prefetch into L2, beside their
/// L1 prefetch [`avx2::PREFETCH_L1`] 1.5 KiB ahead. VNNI's own Q6_K head
/// routine (since replaced by AVX2's, see `avx2::prefetch_q6_k_near`)
/// used it too until it read four groups at once.
///
/// Measured on the Intel Xeon VM (2026-12-01, night) with copies of the
/// tile that differ only in their prefetches, run in turn in one process
/// over a 640 MB matrix on huge pages (medians of five passes beside a
/// streaming sum of 1 GiB): with the L2 prefetch 16 KiB ahead (as AVX2's
/// [`avx2::PREFETCH_GEMV`]) the tile streamed at 85–92% of the sum in four
/// builds (0, 64, 200, 333 bytes of never-called padding in the driver),
/// with 4 KiB at 94–97% in the same builds; 2, 3, 6 and 8 KiB were at or
/// below 4 in each; in one build, against 17.1 GB/s with both prefetches
/// (L2 at 16 KiB), T0 alone gave 16.1, T1 alone 14.6, neither 14.5; one
/// T0 line per run instead of two swung 13.4–17.3 between builds (the
/// lottery again), so both stay. On the 2B-4T Q6_K file's
/// weights, alternated in one process: the projections 14.9 → 16.3 GB/s
/// on one thread and 25.9 → 27.9 on two; the Q6_K head with an L2 line 4
/// KiB ahead beside its L1 one 15.7 → 16.5 and 30.3 → 33.1 (the F16 head's
/// 32 KiB stayed: 4 and 8 KiB lost 7%). `tern bench -p 0 -n 32 -r 2`, the
/// commit before and three builds of this one (0, 64, 200 bytes padded),
/// two alternated rounds, t/s at 1 / 2 threads: Q6_K head 18.6–19.3 /
/// 36.0–36.5 → 20.1–21.4 / 36.5–39.1, F16 head 13.2–13.4 / 25.1–25.3 →
/// 13.6–14.1 / 25.0–26.9.
pub(super) const PREFETCH_L2_NEAR: usize = 4 << 10;

/// The one-token tiles' prefetch for the 128-byte run at `wb`: both its
/// lines [`avx2::PREFETCH_L1`] ahead into L1 and [`PREFETCH_L2_NEAR`]
/// ahead into L2 (hints only: the addresses may lie past the buffer).
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn prefetch_run_near(wb: *const u8) {
    avx2::prefetch_lines::<_MM_HINT_T0>(wb.wrapping_add(avx2::PREFETCH_L1), 2);
    avx2::prefetch_lines::<_MM_HINT_T1>(wb.wrapping_add(PREFETCH_L2_NEAR), 2);
}

/// Blocks summed in 16-bit lanes before widening (packed tile, no VNNI).
const CHUNK: usize = 8;
/// Steps of 64 values summed in 16-bit lanes before widening (prompt
/// tile, no VNNI): 32 · 2·3·128 < 2^15.
const CODE_CHUNK: usize = 32;
/// The prompt tile: 4 rows × 6 tokens, 64 bytes of K per step (24
/// accumulators, four code vectors and one activation vector of the 32
/// registers).
const SHAPE: TileShape = TileShape {
    rows: 4,
    tokens: 6,
    lane: 64,
};

const OPS_BW: Ops = Ops {
    attn_scores_group: Some(attn_scores_group),
    attn_values_group: Some(attn_values_group),
    i2s_packed: packed_bw,
    i2s_tile: tile_bw,
    i2s_shape: SHAPE,
    i2s_unpack: avx2::i2s_unpack,
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
    ..avx2::OPS
};

/// VNNI: the packed tile for every batch size. Its prompt tile (4 × 6
/// over unpacked codes, `vpdpbusd`) measured slower than the packed one
/// at pp128 and pp512: with VNNI's doubled multiply-add rate, the panels'
/// one byte per code and the activations stream from L2 faster than the
/// packed 2-bit codes (see `ternary::PANEL_MIN_TOKENS`), so it was removed;
/// the panel entries inherited from `OPS_BW` are never reached.
///
/// The Q6_K head is AVX2's (inherited): its blocks are in tern's
/// load-time layout (`quant::q6_k::repack`), which AVX2 unpacks with 11
/// operations per 128 codes. The `vpdpbusd` routine VNNI had for ggml's
/// layout was removed with that change; measured afterwards on a Zen 5
/// VM with VNNI, AVX2's routine reads the head at 96–97% of the
/// streaming sum on one thread (see the module doc), so no VNNI routine
/// for the new layout was written.
const OPS_VNNI: Ops = Ops {
    i2s_packed: packed_vnni,
    i2s_streams: Some(ternary::Streams {
        four: tile_streams_vnni::<4>,
        eight: tile_streams_vnni::<8>,
    }),
    i2s_panel_min_tokens: usize::MAX,
    ..OPS_BW
};

static BW: Kernel = Kernel::new("avx512", "avx512bw", OPS_BW);
static VNNI: Kernel = Kernel::new("avx512", "avx512vnni", OPS_VNNI);
static BW_NARROW: Kernel = Kernel::new("avx512", "avx512bw", OPS_BW).with_plan(StreamPlan::NARROW);
static VNNI_NARROW: Kernel =
    Kernel::new("avx512", "avx512vnni", OPS_VNNI).with_plan(StreamPlan::NARROW);

/// Whether this CPU runs the AVX-512 tables (AVX-512 F + BW and the AVX2
/// table's features).
pub fn detect() -> bool {
    avx2::detect() && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")
}

/// Every AVX-512 variant this CPU can run, best last, with the CPU's
/// [`StreamPlan`] (`narrow` if `narrow`).
fn variants_with(narrow: bool) -> Vec<&'static Kernel> {
    let mut v = Vec::new();
    if detect() {
        v.push(if narrow { &BW_NARROW } else { &BW });
        if is_x86_feature_detected!("avx512vnni") {
            v.push(if narrow { &VNNI_NARROW } else { &VNNI });
        }
    }
    v
}

/// Every AVX-512 variant this CPU can run, best last, with the CPU's
/// [`StreamPlan`].
pub fn variants() -> Vec<&'static Kernel> {
    variants_with(StreamPlan::for_this_cpu() == StreamPlan::NARROW)
}

/// The same variants with the other plan, for the property tests.
pub fn other_plan() -> Vec<&'static Kernel> {
    variants_with(StreamPlan::for_this_cpu() != StreamPlan::NARROW)
}

// The entries below are reached only through `BW` / `VNNI` and their
// narrow-plan twins, which `variants` / `other_plan` hand out after
// checking the CPU's features (the VNNI ones only with VNNI): that is
// the SAFETY argument of each call to a `#[target_feature]` function;
// the drivers checked the sizes.

unsafe fn packed_bw(
    w: *const u8,
    nb: usize,
    x: *const i8,
    k: usize,
    t: usize,
    out: *mut i32,
    ld: usize,
) {
    // SAFETY: the tile contract (`ternary::PackedTile`) and the CPU check.
    match t {
        1 => ptile_bw::<1>(w, nb, x, k, out, ld),
        2 => ptile_bw::<2>(w, nb, x, k, out, ld),
        3 => ptile_bw::<3>(w, nb, x, k, out, ld),
        _ => ptile_bw::<4>(w, nb, x, k, out, ld),
    }
}

unsafe fn packed_vnni(
    w: *const u8,
    nb: usize,
    x: *const i8,
    k: usize,
    t: usize,
    out: *mut i32,
    ld: usize,
) {
    // SAFETY: as for `packed_bw`, with VNNI checked.
    match t {
        1 => tile1_vnni(w, nb, x, out),
        2 => ptile_vnni::<2>(w, nb, x, k, out, ld),
        3 => ptile_vnni::<3>(w, nb, x, k, out, ld),
        _ => ptile_vnni::<4>(w, nb, x, k, out, ld),
    }
}

unsafe fn tile_bw(c: *const u8, x: *const i8, steps: usize, t: usize, out: *mut i32, ld: usize) {
    // SAFETY: the tile contract (`ternary::CodeTile`) and the CPU check.
    match t {
        1 => ctile_bw::<1>(c, x, steps, out, ld),
        2 => ctile_bw::<2>(c, x, steps, out, ld),
        3 => ctile_bw::<3>(c, x, steps, out, ld),
        4 => ctile_bw::<4>(c, x, steps, out, ld),
        5 => ctile_bw::<5>(c, x, steps, out, ld),
        _ => ctile_bw::<6>(c, x, steps, out, ld),
    }
}

/// Sum of the sixteen i32 lanes.
#[target_feature(enable = "avx512f,avx512bw,avx2")]
#[inline]
unsafe fn hsum512(v: __m512i) -> i32 {
    let h = _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v));
    let s = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// The four code vectors (0..3 per byte) of a 64-byte vector holding two
/// rows' 32-byte blocks.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn codes(wv: __m512i) -> [__m512i; 4] {
    let mask = _mm512_set1_epi8(3);
    [
        _mm512_and_si512(_mm512_srli_epi16::<6>(wv), mask),
        _mm512_and_si512(_mm512_srli_epi16::<4>(wv), mask),
        _mm512_and_si512(_mm512_srli_epi16::<2>(wv), mask),
        _mm512_and_si512(wv, mask),
    ]
}

/// One token with VNNI: a packed group (four rows) against one activation
/// row; writes `out[r]` = Σ code·x.
///
/// The 2-bit fields are masked in place instead of shifted down: field `f`
/// of a byte (bits `7 - 2f ..= 6 - 2f`, the code of activation chunk `f`)
/// is `code << (6 - 2f)` after the mask, so `vpdpbusd` sums
/// `(code · x) << (6 - 2f)` into its own accumulator, and one arithmetic
/// shift per accumulator at the end gives the exact sum back (every term
/// is a multiple of `1 << (6 - 2f)`). A lane adds at most
/// 4 · 192 · 128 = 98304 per block, so the sums are exact below 21845
/// blocks (`Packed` takes at most `ternary::MAX_COLS` = 2^20 columns).
/// Eight AND + eight `vpdpbusd` per 128-byte block, against six shifts,
/// eight AND and eight `vpdpbusd` for the shifted codes of [`ptile_vnni`].
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2")]
#[allow(clippy::needless_range_loop)]
unsafe fn tile1_vnni(wp: *const u8, nb: usize, x0: *const i8, out: *mut i32) {
    let mask = [
        _mm512_set1_epi8(0xC0u8 as i8),
        _mm512_set1_epi8(0x30),
        _mm512_set1_epi8(0x0C),
        _mm512_set1_epi8(0x03),
    ];
    // acc[p][f]: rows 2p | 2p+1 (lower | upper 256 bits), field f.
    let mut acc = [[_mm512_setzero_si512(); 4]; 2];
    for bi in 0..nb {
        let wb = wp.add(bi * GROUP_BLOCK_BYTES);
        prefetch_run_near(wb);
        let w = [
            _mm512_loadu_si512(wb as *const __m512i),
            _mm512_loadu_si512(wb.add(64) as *const __m512i),
        ];
        let xb = x0.add(bi * QK);
        for f in 0..4 {
            let xv = _mm512_broadcast_i64x4(_mm256_loadu_si256(xb.add(32 * f) as *const __m256i));
            for p in 0..2 {
                acc[p][f] = _mm512_dpbusd_epi32(acc[p][f], _mm512_and_si512(w[p], mask[f]), xv);
            }
        }
    }
    let pairs = acc.map(|a| {
        _mm512_add_epi32(
            _mm512_add_epi32(_mm512_srai_epi32::<6>(a[0]), _mm512_srai_epi32::<4>(a[1])),
            _mm512_add_epi32(_mm512_srai_epi32::<2>(a[2]), a[3]),
        )
    });
    store_group(pairs, out);
}

/// Store a group's four row sums from its two row-pair vectors (rows 2p
/// | 2p+1 in the lower | upper 256 bits of `pairs[p]`, eight lanes each):
/// `out[r]` = the sum of row `r`'s lanes.
#[target_feature(enable = "avx512f,avx2")]
#[inline]
unsafe fn store_group(pairs: [__m512i; 2], out: *mut i32) {
    let r = [
        _mm512_castsi512_si256(pairs[0]),
        _mm512_extracti64x4_epi64::<1>(pairs[0]),
        _mm512_castsi512_si256(pairs[1]),
        _mm512_extracti64x4_epi64::<1>(pairs[1]),
    ];
    _mm_storeu_si128(out as *mut __m128i, avx2::hsum4(r));
}

/// One token with VNNI against `S` packed groups at once (4 or 8,
/// [`ternary::StreamsTile`]; which one a CPU gets: [`StreamPlan`]):
/// `out[s][r]` = Σ code·x for row `r` of group `s`.
///
/// Each block's 128 bytes hold four fields per byte (bits 7–6, 5–4, 3–2,
/// 1–0); 16-bit shifts by 4 and 2 right and 2 left bring each field in
/// turn to bits 3–2, so `vpdpbusd` of `(shifted byte) & 0x0C` sums `4 ·
/// code · x` for every field: one accumulator per row pair (two per
/// group, sixteen in all) and one shift per group at the end give the
/// exact sums. A lane adds at most 4 · 4 · 12 · 128 = 24576 per block:
/// exact far past `ternary::MAX_COLS`.
///
/// Why several groups: on the Intel Xeon VM (2026-12-02, one token's
/// products of the 2B-4T layers, 521 MB, in one process alternated
/// with plain streaming reads of the same bytes) [`tile1_vnni`]'s
/// arithmetic between the loads of one stream held it 12–15% under the
/// plain read of that stream (16.4 vs 16.7 GB/s on one thread in a
/// fast round, 12.1 vs 13.8 in a slow one; 27.5 vs 29.7 on two), while
/// the same arithmetic over four distant streams read at or above the
/// plain rate (19.1 on one thread, 30.6 on two). The products of those
/// layers (`matmul_many`, all regions of all layers), four groups at
/// once against one at a time alternated in one process, nine rounds,
/// medians: 14.5 → 18.4 GB/s on one thread, 24.7 → 31.7 on two.
///
/// Why eight on the Intel Xeon VM (four on AMD Zen 5: [`StreamPlan`]):
/// a plain read of those layers' bytes with eight streams
/// read 6% more than with four on one thread (18.2 against 17.2 GB/s,
/// 15 alternated rounds), where the products with four streams were at
/// 16.5. Four groups kept two accumulators per row pair (fields ×4 and
/// ×1, one shift per 64 bytes), which eight groups cannot hold in 32
/// registers; with one accumulator per row pair the layers' products,
/// eight groups against four, 41 alternated rounds, two runs each
/// (medians): 14.2 → 15.3 and 14.2 → 15.1 GB/s on one thread, 25.3 →
/// 26.2 and 24.4 → 24.9 on two; a third run, on a faster moment of the
/// host, 20.8 → 21.0 on one thread. Four groups with one accumulator read
/// as fast as with two; twelve read slower (register spills), six no
/// faster than eight. Whole decode steps, alternated the same way, stayed
/// inside the host's noise (the F16-head file −4 to +5% on one thread).
///
/// Where the time goes (perf annotate, one thread, 2026-12-02): over half
/// the tile's samples sit on the first load of each stream's block (the
/// core waits for memory); the arithmetic has few. Tried: the three
/// 16-bit shifts (port 0, as `vpdpbusd`) replaced by `vpmultishiftqb`
/// byte rotations (VBMI, port 5), or by `vgf2p8affineqb` (GFNI, one
/// instruction per isolated field) — same sums; whole decode steps
/// alternated in one process read +2 points of the bound in one build and
/// −3 in another (the rotations as a kernel table of their own), ±0.5
/// when the same routine was reached through this one, so not kept: on
/// this host such build-to-build differences are as large as the change.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2")]
#[allow(clippy::needless_range_loop)]
unsafe fn tile_streams_vnni<const S: usize>(
    w: [*const u8; S],
    nb: usize,
    x0: *const i8,
    out: [*mut i32; S],
) {
    let m = _mm512_set1_epi8(0x0C);
    // acc[s][p]: 4 × the sums of rows 2p | 2p+1 of group s.
    let mut acc = [[_mm512_setzero_si512(); 2]; S];
    for bi in 0..nb {
        let xb = x0.add(bi * QK);
        let xv: [__m512i; 4] = std::array::from_fn(|f| {
            _mm512_broadcast_i64x4(_mm256_loadu_si256(xb.add(32 * f) as *const __m256i))
        });
        for s in 0..S {
            let wb = w[s].add(bi * GROUP_BLOCK_BYTES);
            avx2::prefetch_lines::<_MM_HINT_T0>(wb.wrapping_add(avx2::PREFETCH_L1), 2);
            for p in 0..2 {
                let v = _mm512_loadu_si512(wb.add(64 * p) as *const __m512i);
                let fields = [
                    _mm512_srli_epi16::<4>(v),
                    _mm512_srli_epi16::<2>(v),
                    v,
                    _mm512_slli_epi16::<2>(v),
                ];
                let a = &mut acc[s][p];
                for f in 0..4 {
                    *a = _mm512_dpbusd_epi32(*a, _mm512_and_si512(fields[f], m), xv[f]);
                }
            }
        }
    }
    for s in 0..S {
        store_group(acc[s].map(|a| _mm512_srai_epi32::<2>(a)), out[s]);
    }
}

/// Grouped attention scores ([`Kernel::attn_scores_group`]) with 512-bit
/// registers for f16 keys (f32 keys as AVX2 does them), bit for bit
/// AVX2's: a 512-bit accumulator over 16-value steps holds in its two
/// halves exactly AVX2's two 256-bit accumulators, whose sum goes through
/// the same horizontal sum. See [`scores_heads`] for what the width buys.
fn attn_scores_group(
    k: Kv,
    stride: usize,
    off: usize,
    qs: &[f32],
    d: usize,
    scale: f32,
    scores: &mut [f32],
) {
    match k {
        // SAFETY: CPU checked (AVX-512 F, with AVX2, FMA and F16C);
        // `Kernel::attn_scores_group` checked the sizes and that every
        // row read lies inside the cache.
        Kv::F16(k) => unsafe {
            scores_group_f16(k.as_ptr() as *const u16, stride, off, qs, d, scale, scores)
        },
        Kv::F32(_) => avx2::attn_scores_group(k, stride, off, qs, d, scale, scores),
    }
}

/// Grouped attention values ([`Kernel::attn_values_group`]) with 512-bit
/// registers for f16 values (f32 values as AVX2 does them), bit for bit
/// AVX2's: every output value is the same chain of FMAs in position
/// order, only more of them side by side.
fn attn_values_group(v: Kv, stride: usize, off: usize, ps: &[f32], g: usize, outs: &mut [f32]) {
    match v {
        // SAFETY: CPU checked; `Kernel::attn_values_group` checked the
        // sizes and that every row read lies inside the cache.
        Kv::F16(v) => unsafe {
            values_group_f16(v.as_ptr() as *const u16, stride, off, ps, g, outs)
        },
        Kv::F32(_) => avx2::attn_values_group(v, stride, off, ps, g, outs),
    }
}

#[target_feature(enable = "avx512f,avx2,fma,f16c")]
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
    for (h0, hc) in avx2::head_groups(g) {
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

/// Runs of positions whose scores [`scores_heads`] computes side by side.
const SCORE_POSITIONS: usize = 2;

/// `H` heads (`q`, `d` apart) × `npos` positions; `s[h · npos + t]`, as
/// `avx2::scores_heads` writes them (each score is one position's sum on
/// its own, so the order positions are taken in changes no bit). The
/// positions go as [`SCORE_POSITIONS`] runs, position `t` of each run at
/// once: each 16-value step loads a query vector once for both, the 2·H
/// chains of FMAs are independent (AVX2's one position had 2·H chains of
/// 8-wide FMAs and reloaded the queries for every position), and the keys
/// come from two streams, not one.
///
/// Measured on the Intel Xeon VM (2026-12-02, 30 layers × 5 KV heads of
/// 128, groups of 4 query heads, head-major f16 caches, one thread,
/// alternated in one process with AVX2's grouped routines, six rounds
/// each): at 64 positions (in cache) scores 69–73 → 51–54 cycles per
/// position and KV head (82 in a first, cold round), values 65–69 →
/// 34–37; at 3072 positions (from memory) scores 100–145 → 80–94 and
/// values 101–148 → 77–83. Two runs of positions read the keys 13%
/// faster from memory than two neighbouring positions (88–92 against
/// 102–103 cycles, alternated); an L2 prefetch 128 or 160 positions
/// ahead on top of the L1 one 16 ahead gained nothing clear.
///
/// With four heads, both runs and no tail (the 2B-4T case), the eight
/// horizontal sums go through [`reduce8`] side by side, the same adds as
/// one by one: 2048 positions of one KV head in L2, alternated in one
/// process (Intel Xeon VM, 2026-12-02, six rounds, best of 200 each),
/// 34.0–34.1 → 31.3–31.4 µs.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
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
    const P: usize = SCORE_POSITIONS;
    let full = d - d % 16;
    let half = npos.div_ceil(P);
    for t in 0..half {
        // Position t of each of the P runs; a run that has none (an odd
        // count) reads the first run's row again (inside the cache) and
        // its sums are dropped.
        let pos: [usize; P] = std::array::from_fn(|p| {
            let u = t + p * half;
            if u < npos {
                u
            } else {
                t
            }
        });
        let pc = 1 + pos[1..].iter().filter(|&&u| u != t).count();
        let kr: [*const u16; P] = std::array::from_fn(|p| k.add(pos[p] * stride + off));
        for p in 0..pc {
            // The head's slice of the key KV_AHEAD positions on (as AVX2).
            avx2::prefetch_lines::<_MM_HINT_T0>(
                kr[p].wrapping_add(avx2::KV_AHEAD.wrapping_mul(stride)) as *const u8,
                (2 * d).div_ceil(64),
            );
        }
        let mut acc = [[_mm512_setzero_ps(); H]; P];
        let mut i = 0;
        while i < full {
            let kv: [__m512; P] = std::array::from_fn(|p| {
                _mm512_cvtph_ps(_mm256_loadu_si256(kr[p].add(i) as *const __m256i))
            });
            for h in 0..H {
                let qv = _mm512_loadu_ps(q.add(h * d + i));
                for p in 0..P {
                    acc[p][h] = _mm512_fmadd_ps(kv[p], qv, acc[p][h]);
                }
            }
            i += 16;
        }
        if H == 4 && P == 2 && pc == P && full == d {
            // The eight sums at once, then `· scale` as below.
            let r = reduce8(std::array::from_fn(|j| acc[j / 4][j % 4]));
            let mut out = [0f32; 8];
            _mm256_storeu_ps(out.as_mut_ptr(), _mm256_mul_ps(r, _mm256_set1_ps(scale)));
            for (j, &v) in out.iter().enumerate() {
                *s.add((j % 4) * npos + pos[j / 4]) = v;
            }
            continue;
        }
        for p in 0..pc {
            for h in 0..H {
                // Lanes 0–7 are AVX2's first accumulator, 8–15 its second.
                let a = acc[p][h];
                let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a)));
                let u = _mm256_add_ps(_mm512_castps512_ps256(a), hi);
                *s.add(h * npos + pos[p]) =
                    avx2::finish_score(u, kr[p], q.add(h * d), full, d) * scale;
            }
        }
    }
}

/// Eight scores' sums at once: lane `j` of the result is
/// `avx2::hsum_f32(lo + hi)` of `a[j]`'s two 256-bit halves, bit for bit
/// (the same pairwise adds: lanes `i` and `i + 8`, then `i` and `i + 4`,
/// then `i` and `i + 2`, then the last two, only eight sums side by side).
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn reduce8(a: [__m512; 8]) -> __m256 {
    // [lo(x), lo(y)] + [hi(x), hi(y)]: the 256-bit sums u of two scores.
    let u = |x: __m512, y: __m512| {
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x44>(x, y),
            _mm512_shuffle_f32x4::<0xEE>(x, y),
        )
    };
    let (u01, u23, u45, u67) = (u(a[0], a[1]), u(a[2], a[3]), u(a[4], a[5]), u(a[6], a[7]));
    // Each u's low 128 + high 128: 128-bit lane j of s holds score j's four.
    let s = |x: __m512, y: __m512| {
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(x, y),
            _mm512_shuffle_f32x4::<0xDD>(x, y),
        )
    };
    let (sa, sb) = (s(u01, u23), s(u45, u67));
    // Per 128-bit lane: [a0 + a2, a1 + a3, b0 + b2, b1 + b3].
    let t = _mm512_add_ps(
        _mm512_shuffle_ps::<0x44>(sa, sb),
        _mm512_shuffle_ps::<0xEE>(sa, sb),
    );
    // [a, b, a, b] per lane: (x0 + x2) + (x1 + x3).
    let r = _mm512_add_ps(
        _mm512_shuffle_ps::<0x88>(t, t),
        _mm512_shuffle_ps::<0xDD>(t, t),
    );
    // Scores 0–3 sit in element 0 of lanes 0–3, scores 4–7 in element 1.
    let idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0);
    _mm512_castps512_ps256(_mm512_permutexvar_ps(idx, r))
}

#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn values_group_f16(
    v: *const u16,
    stride: usize,
    off: usize,
    ps: &[f32],
    g: usize,
    outs: &mut [f32],
) {
    let (npos, d) = (ps.len() / g, outs.len() / g);
    for (h0, hc) in avx2::head_groups(g) {
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

/// `H` heads' weights (`p`, `npos` apart) × `d` values; `o[h · d + i]`, as
/// `avx2::values_heads` writes them: positions in blocks of
/// `avx2::VALUES_BLOCK`, each block in column passes whose sums stay in
/// registers across the block (64 values a pass here, 16 there; then 32,
/// 16, 8), per output value the same FMAs in the same position order,
/// the values past a multiple of 8 as `y += p · v` at the end.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
#[inline]
unsafe fn values_heads<const H: usize>(
    v: *const u16,
    stride: usize,
    off: usize,
    p: *const f32,
    npos: usize,
    o: *mut f32,
    d: usize,
) {
    let full = d - d % 8;
    // Block starts; with no positions, one empty block writes the zeros.
    for t0 in (0..npos.max(1)).step_by(avx2::VALUES_BLOCK) {
        let t1 = (t0 + avx2::VALUES_BLOCK).min(npos);
        let mut c0 = 0;
        while c0 < full {
            let c = (v, stride, off, p, npos, o, d);
            c0 += match full - c0 {
                64.. => values_pass::<H, 4>(c, t0, t1, c0),
                32.. => values_pass::<H, 2>(c, t0, t1, c0),
                16.. => values_pass::<H, 1>(c, t0, t1, c0),
                _ => values_pass8::<H>(c, t0, t1, c0),
            };
        }
    }
    avx2::values_tail::<H>(v as *const u8, stride, off, p, npos, o, d, full);
}

/// What a values pass reads and writes: `(v, stride, off, p, npos, o, d)`
/// of [`values_heads`].
type ValuesArgs = (*const u16, usize, usize, *const f32, usize, *mut f32, usize);

/// One column pass of `16 · N` values from `c0` over positions `t0..t1`
/// for `H` heads; returns the columns done.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
#[inline]
#[allow(clippy::needless_range_loop)]
unsafe fn values_pass<const H: usize, const N: usize>(
    (v, stride, off, p, npos, o, d): ValuesArgs,
    t0: usize,
    t1: usize,
    c0: usize,
) -> usize {
    let mut acc = [[_mm512_setzero_ps(); N]; H];
    if t0 > 0 {
        for h in 0..H {
            for n in 0..N {
                acc[h][n] = _mm512_loadu_ps(o.add(h * d + c0 + 16 * n));
            }
        }
    }
    for t in t0..t1 {
        let base = t * stride + off + c0;
        if c0 == 0 {
            prefetch_values_row(v, base, stride, d);
        }
        let vv: [__m512; N] = std::array::from_fn(|n| {
            _mm512_cvtph_ps(_mm256_loadu_si256(v.add(base + 16 * n) as *const __m256i))
        });
        for h in 0..H {
            let pv = _mm512_set1_ps(*p.add(h * npos + t));
            for n in 0..N {
                acc[h][n] = _mm512_fmadd_ps(pv, vv[n], acc[h][n]);
            }
        }
    }
    for h in 0..H {
        for n in 0..N {
            _mm512_storeu_ps(o.add(h * d + c0 + 16 * n), acc[h][n]);
        }
    }
    16 * N
}

/// The first column pass of a block brings in each row's whole slice (the
/// later passes find it in L1): prefetch the head's slice of the row
/// `avx2::KV_AHEAD` positions after element `base` of `v`, as AVX2 does.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn prefetch_values_row(v: *const u16, base: usize, stride: usize, d: usize) {
    let ahead = base.wrapping_add(avx2::KV_AHEAD.wrapping_mul(stride));
    avx2::prefetch_lines::<_MM_HINT_T0>(v.wrapping_add(ahead) as *const u8, (2 * d).div_ceil(64));
}

/// The last eight columns before the tail, as [`values_pass`] with
/// 256-bit registers.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
#[inline]
#[allow(clippy::needless_range_loop)]
unsafe fn values_pass8<const H: usize>(
    (v, stride, off, p, npos, o, d): ValuesArgs,
    t0: usize,
    t1: usize,
    c0: usize,
) -> usize {
    let mut acc = [_mm256_setzero_ps(); H];
    if t0 > 0 {
        for h in 0..H {
            acc[h] = _mm256_loadu_ps(o.add(h * d + c0));
        }
    }
    for t in t0..t1 {
        let base = t * stride + off + c0;
        if c0 == 0 {
            prefetch_values_row(v, base, stride, d);
        }
        let vv = _mm256_cvtph_ps(_mm_loadu_si128(v.add(base) as *const __m128i));
        for h in 0..H {
            acc[h] = _mm256_fmadd_ps(_mm256_set1_ps(*p.add(h * npos + t)), vv, acc[h]);
        }
    }
    for h in 0..H {
        _mm256_storeu_ps(o.add(h * d + c0), acc[h]);
    }
    8
}

/// Generates the packed tile for one feature set (`$vnni`: accumulate
/// with `vpdpbusd`). Two copies, so the non-VNNI code is never compiled
/// with VNNI enabled.
macro_rules! packed_tile {
    ($ptile:ident, $feat:literal, $vnni:literal) => {
        /// One packed group × `T` tokens; `out[t·ld + r]` = Σ code·x.
        #[target_feature(enable = $feat)]
        #[allow(clippy::needless_range_loop)]
        unsafe fn $ptile<const T: usize>(
            wp: *const u8,
            nb: usize,
            x0: *const i8,
            k: usize,
            out: *mut i32,
            ld: usize,
        ) {
            let ones = _mm512_set1_epi16(1);
            // acc32[t][p][j]: 32-bit sums of token t, row pair p (rows
            // 2p | 2p+1); with VNNI two chains j (even / odd fields) so the
            // `vpdpbusd` latency does not bound one token's loop.
            let mut acc32 = [[[_mm512_setzero_si512(); 2]; 2]; T];
            let mut b = 0;
            while b < nb {
                let be = if $vnni { nb } else { (b + CHUNK).min(nb) };
                let mut acc = [[_mm512_setzero_si512(); 2]; T];
                for bi in b..be {
                    let wb = wp.add(bi * GROUP_BLOCK_BYTES);
                    if T == 1 {
                        // One token (only without VNNI: VNNI has
                        // `tile1_vnni`): as there.
                        prefetch_run_near(wb);
                    } else {
                        // The weights stream once per token tile: prefetch
                        // both lines of the run as far ahead into L2 as the
                        // AVX2 tiles do (hints only, so `wrapping_add`).
                        avx2::prefetch_lines::<_MM_HINT_T1>(
                            wb.wrapping_add(avx2::PREFETCH_GEMV),
                            2,
                        );
                    }
                    let c = [
                        codes(_mm512_loadu_si512(wb as *const __m512i)),
                        codes(_mm512_loadu_si512(wb.add(64) as *const __m512i)),
                    ];
                    for t in 0..T {
                        let xb = x0.add(t * k + bi * QK);
                        for i in 0..4 {
                            let xv = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                                xb.add(32 * i) as *const __m256i
                            ));
                            for p in 0..2 {
                                if $vnni {
                                    let a = &mut acc32[t][p][i & 1];
                                    *a = _mm512_dpbusd_epi32(*a, c[p][i], xv);
                                } else {
                                    acc[t][p] = _mm512_add_epi16(
                                        acc[t][p],
                                        _mm512_maddubs_epi16(c[p][i], xv),
                                    );
                                }
                            }
                        }
                    }
                }
                if !$vnni {
                    for t in 0..T {
                        for p in 0..2 {
                            acc32[t][p][0] = _mm512_add_epi32(
                                acc32[t][p][0],
                                _mm512_madd_epi16(acc[t][p], ones),
                            );
                        }
                    }
                }
                b = be;
            }
            for t in 0..T {
                let p0 = _mm512_add_epi32(acc32[t][0][0], acc32[t][0][1]);
                let p1 = _mm512_add_epi32(acc32[t][1][0], acc32[t][1][1]);
                // Lower 256 bits of pair p belong to row 2p, upper to row 2p+1.
                let r0 = _mm512_castsi512_si256(p0);
                let r1 = _mm512_extracti64x4_epi64::<1>(p0);
                let r2 = _mm512_castsi512_si256(p1);
                let r3 = _mm512_extracti64x4_epi64::<1>(p1);
                let s = _mm256_hadd_epi32(_mm256_hadd_epi32(r0, r1), _mm256_hadd_epi32(r2, r3));
                let r = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
                _mm_storeu_si128(out.add(t * ld) as *mut __m128i, r);
            }
        }
    };
}

packed_tile!(ptile_bw, "avx512f,avx512bw,avx2", false);
packed_tile!(ptile_vnni, "avx512f,avx512bw,avx512vnni,avx2", true);

/// The prompt tile: 4 rows × `T` tokens over unpacked codes
/// (`[step][4][64]`) and interleaved activations (`[step][T][64]`).
/// Writes `out[t·ld + r]` = Σ code·x.
#[target_feature(enable = "avx512f,avx512bw,avx2")]
#[allow(clippy::needless_range_loop)]
unsafe fn ctile_bw<const T: usize>(
    c: *const u8,
    x: *const i8,
    steps: usize,
    out: *mut i32,
    ld: usize,
) {
    let ones = _mm512_set1_epi16(1);
    let mut acc32 = [[_mm512_setzero_si512(); T]; 4];
    let mut s = 0;
    while s < steps {
        let se = (s + CODE_CHUNK).min(steps);
        let mut acc = [[_mm512_setzero_si512(); T]; 4];
        let mut cp = c.add(s * 4 * 64);
        let mut xp = x.add(s * T * 64);
        for _ in s..se {
            let cv: [__m512i; 4] =
                std::array::from_fn(|r| _mm512_loadu_si512(cp.add(64 * r) as *const __m512i));
            for t in 0..T {
                let xv = _mm512_loadu_si512(xp.add(64 * t) as *const __m512i);
                for r in 0..4 {
                    acc[r][t] = _mm512_add_epi16(acc[r][t], _mm512_maddubs_epi16(cv[r], xv));
                }
            }
            cp = cp.add(4 * 64);
            xp = xp.add(T * 64);
        }
        for r in 0..4 {
            for t in 0..T {
                acc32[r][t] = _mm512_add_epi32(acc32[r][t], _mm512_madd_epi16(acc[r][t], ones));
            }
        }
        s = se;
    }
    for t in 0..T {
        for r in 0..4 {
            *out.add(t * ld + r) = hsum512(acc32[r][t]);
        }
    }
}

// `GROUP` documents the packed layout the tiles read (four rows per run).
const _: () = assert!(GROUP == 4 && GROUP_BLOCK_BYTES == 128);

/// How far ahead, into L1 only, the one-token float product over distant
/// rows ([`float_streams`]) prefetches each row; no L2 prefetch. On the
/// AMD EPYC Zen 5 VM (2026-12-03, copies of the tile that differ only in
/// their prefetches, in a throwaway example, alternated in one process over
/// the 2B-4T head, 24 rounds, medians, one thread, beside a streaming sum
/// of 37.4–38.5 GB/s): the F16 head read at 37.2–37.6 GB/s with 2 KiB,
/// 35.6–36.2 with 1.5 KiB, 34.9–35.8 with 3 KiB, 32.4–33.0 with 4 KiB,
/// 32.4–33.1 with 1 KiB, and 29.8–30.1 with AVX2's distances (L2 4 KiB +
/// L1 3 KiB, [`avx2`]'s `PREFETCH_STREAMS_*`); the same head as F32
/// 38.2 GB/s with 2 KiB, 38.3 with 1.5, 33.3 with AVX2's. On two threads
/// (two rows each, the narrow plan) every distance read 40–44 GB/s in
/// the same runs, within their spread. AVX2's 8-lane tile with its own
/// distances read the F16 head at 31.0–31.8 GB/s beside this one's
/// 36.4–36.7 (L1 2 KiB) in the same process.
const PREFETCH_STREAMS_L1: usize = 2 << 10;

// The float entries below are reached only through the AVX-512 tables,
// which `variants` / `other_plan` hand out after checking the CPU's
// features (AVX-512 F with AVX2, FMA and F16C); the drivers checked the
// sizes (`float::gemm`).

/// `float::StreamsTile` for F16 (`F16`) or F32 rows: `S` distant rows of
/// one token, each row's value as [`float_dispatch`] gives it.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn float_streams<const F16: bool, const S: usize>(
    w: [*const u8; S],
    d: usize,
    x: *const f32,
) -> [f32; S] {
    float_tile::<F16, S, 1, 0, PREFETCH_STREAMS_L1>(w, [x], d).map(|[v]| v)
}

float::float_dispatch_fn!(
    "avx512f,avx2,fma,f16c",
    float_tile,
    { avx2::PREFETCH_HEAD },
    { avx2::PREFETCH_L1 }
);

/// The sixteen lanes of `v` summed in a fixed order (the upper eight
/// added to the lower, then `avx2::hsum_f32`), written out rather than
/// `_mm512_reduce_add_ps`, whose order is the compiler's to choose.
#[target_feature(enable = "avx512f,avx2")]
#[inline]
unsafe fn hsum16(v: __m512) -> f32 {
    let lo = _mm512_castps512_ps256(v);
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
    avx2::hsum_f32(_mm256_add_ps(lo, hi))
}

/// Sixteen values of row `p` from value `i` on, as f32.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn load16<const F16: bool>(p: *const u8, i: usize) -> __m512 {
    if F16 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p.add(i * 2) as *const __m256i))
    } else {
        _mm512_loadu_ps((p as *const f32).add(i))
    }
}

/// `R` weight rows × `T` tokens (f16 or f32 rows by `F16`). Each (row,
/// token) dot keeps one 16-lane accumulator over the first `d − d % 16`
/// values, a fixed horizontal sum ([`hsum16`]), then the tail in order:
/// the result does not depend on `R`, `T`, the prefetches or the thread
/// split (it differs in its last bits from AVX2's 8-lane sums). Each
/// row's line `L2` bytes ahead is prefetched into L2 (none when 0) and
/// `L1` bytes ahead into L1.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
#[inline]
#[allow(clippy::needless_range_loop)]
unsafe fn float_tile<
    const F16: bool,
    const R: usize,
    const T: usize,
    const L2: usize,
    const L1: usize,
>(
    w: [*const u8; R],
    x: [*const f32; T],
    d: usize,
) -> [[f32; T]; R] {
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    let es = if F16 { 2 } else { 4 };
    let mut i = 0;
    while i + 16 <= d {
        // Once per 64-byte line of each row (hints only, so
        // `wrapping_add`).
        if (i * es) % 64 == 0 {
            for wr in w.iter() {
                let p = wr.wrapping_add(i * es);
                if L2 != 0 {
                    _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(L2) as *const i8);
                }
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(L1) as *const i8);
            }
        }
        let xv: [__m512; T] = std::array::from_fn(|t| _mm512_loadu_ps(x[t].add(i)));
        for r in 0..R {
            let wv = load16::<F16>(w[r], i);
            for t in 0..T {
                acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
            }
        }
        i += 16;
    }
    let mut res = [[0f32; T]; R];
    for r in 0..R {
        for t in 0..T {
            let mut s = hsum16(acc[r][t]);
            for j in i..d {
                s += avx2::elem::<F16>(w[r], j) * *x[t].add(j);
            }
            res[r][t] = s;
        }
    }
    res
}
