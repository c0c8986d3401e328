//! NEON tiles and primitives (aarch64), selected at run time; the
//! dot-product extension (`sdot`) is used where the CPU has it. The loops
//! around the tiles are the shared drivers in `kernels::{ternary, float,
//! qhead}`.
//!
//! Same packed layout as every kernel: a row's 32-byte block is two 16-byte
//! vectors, bytes `j` and `16 + j` of block `b` holding values
//! `b·128 + 32·i + j` in bits `6 − 2i`. With `dotprod`, `sdot` sums four
//! code×activation products straight into 32 bits (codes 0..3 are valid
//! signed bytes). Without it, `smlal` accumulates the products in 16 bits
//! over a bounded run (|sum| ≤ 4·16·3·128 < 2^15 for the packed tile,
//! 16·4·3·128 for the prompt tile, even for the invalid code 3) before
//! `sadalp` widens them. Either way the integer sum is exact, so the
//! results equal the scalar reference bit for bit.
//!
//! `vdotq_s32` is not stable in Rust yet, hence the one-instruction `asm!`.

use super::float::store_tile;
use super::layout::Steps;
use super::ops::{self, Kv};
use super::qhead::quant_tile_shapes;
use super::ternary::{self, TileShape, GROUP, GROUP_BLOCK_BYTES, QK};
use super::{scalar, BlockActs, Kernel, Ops};
use crate::quant::{q6_k, q8_0};
use half::f16;
use std::arch::aarch64::*;
use std::arch::asm;

/// Blocks summed in 16-bit lanes before widening (packed tile, no dotprod).
const CHUNK: usize = 4;
/// Steps of 32 values summed in 16-bit lanes before widening (prompt tile,
/// no dotprod).
const CODE_CHUNK: usize = 16;
/// How far ahead the one-token products prefetch their weights.
const PREFETCH_GEMV: usize = 16 << 10;
/// Prompt tiles: 4 rows × 4 tokens with `sdot` (sixteen 32-bit
/// accumulators, eight code and two activation vectors of the 32
/// registers); 2 rows × 4 tokens without it (eight 16-bit and eight
/// 32-bit accumulators).
const SHAPE_DOT: TileShape = TileShape {
    rows: 4,
    tokens: 4,
    lane: 32,
};
const SHAPE_PLAIN: TileShape = TileShape {
    rows: 2,
    tokens: 4,
    lane: 32,
};

const OPS_PLAIN: Ops = Ops {
    i2s_packed: packed_plain,
    i2s_streams: None,
    i2s_tile: tile_plain,
    i2s_shape: SHAPE_PLAIN,
    i2s_unpack: ternary::unpack_generic,
    f16_tile: float_dispatch::<true>,
    f32_tile: float_dispatch::<false>,
    f16_streams: None,
    f32_streams: None,
    q8_0_tile: q8_0_tile_plain,
    q6_k_tile: q6_k_tile_plain,
    q8_0_block_dots: q8_0_block_dots_plain,
    q6_k_block_dots: q6_k_block_dots_plain,
    quantize_act,
    dot_f32,
    dot_f16,
    axpy_f16,
    axpy_f32,
    attn_scores,
    attn_values,
    attn_scores_group: None,
    attn_values_group: None,
    ..scalar::OPS
};

const OPS_DOT: Ops = Ops {
    i2s_packed: packed_dot,
    i2s_streams: None,
    i2s_tile: tile_dot,
    i2s_shape: SHAPE_DOT,
    q8_0_tile: q8_0_tile_dot,
    q6_k_tile: q6_k_tile_dot,
    q8_0_block_dots: q8_0_block_dots_dot,
    q6_k_block_dots: q6_k_block_dots_dot,
    ..OPS_PLAIN
};

static PLAIN: Kernel = Kernel::new("neon", "neon", OPS_PLAIN);
static WITH_DOTPROD: Kernel = Kernel::new("neon", "neon+dotprod", OPS_DOT);

fn has_dotprod() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
}

/// The best NEON kernel for this CPU (NEON is part of every aarch64 CPU).
pub fn get() -> &'static Kernel {
    if has_dotprod() {
        &WITH_DOTPROD
    } else {
        &PLAIN
    }
}

/// Every NEON variant this CPU can run (for tests), best last.
pub fn variants() -> Vec<&'static Kernel> {
    let mut v = vec![&PLAIN];
    if has_dotprod() {
        v.push(&WITH_DOTPROD);
    }
    v
}

// NEON is part of aarch64; the dotprod entries are reached only through
// `WITH_DOTPROD`, which `get` / `variants` hand out after the CPU reported
// the extension: that is the SAFETY argument of each call to a
// `#[target_feature]` function below. The drivers checked the sizes.

macro_rules! dispatch_ternary {
    ($packed:ident, $tile:ident, $ptile:ident, $ctile:ident, $rows:literal) => {
        unsafe fn $packed(
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
                1 => $ptile::<1>(w, nb, x, k, out, ld),
                2 => $ptile::<2>(w, nb, x, k, out, ld),
                3 => $ptile::<3>(w, nb, x, k, out, ld),
                _ => $ptile::<4>(w, nb, x, k, out, ld),
            }
        }

        unsafe fn $tile(
            c: *const u8,
            x: *const i8,
            steps: usize,
            t: usize,
            out: *mut i32,
            ld: usize,
        ) {
            // SAFETY: the tile contract (`ternary::CodeTile`) and the CPU check.
            match t {
                1 => $ctile::<$rows, 1>(c, x, steps, out, ld),
                2 => $ctile::<$rows, 2>(c, x, steps, out, ld),
                3 => $ctile::<$rows, 3>(c, x, steps, out, ld),
                _ => $ctile::<$rows, 4>(c, x, steps, out, ld),
            }
        }
    };
}

dispatch_ternary!(packed_plain, tile_plain, ptile_plain, ctile_plain, 2);
dispatch_ternary!(packed_dot, tile_dot, ptile_dot, ctile_dot, 4);

super::float::float_dispatch_fn!("neon", float_tile);

macro_rules! dispatch_quant {
    ($q8tile:ident, $q6tile:ident, $q8dots:ident, $q6dots:ident, $tile:ident, $q8:ident, $q6:ident) => {
        #[allow(clippy::too_many_arguments)]
        unsafe fn $q8tile(
            w: *const u8,
            steps: Steps,
            r: usize,
            x: &BlockActs,
            t0: usize,
            t: usize,
            out: *mut f32,
            ld: usize,
        ) {
            // SAFETY: the tile contract (`qhead::Tile`) and the CPU check.
            quant_dispatch!($tile, false, w, steps, r, x, t0, t, out, ld)
        }

        #[allow(clippy::too_many_arguments)]
        unsafe fn $q6tile(
            w: *const u8,
            steps: Steps,
            r: usize,
            x: &BlockActs,
            t0: usize,
            t: usize,
            out: *mut f32,
            ld: usize,
        ) {
            // SAFETY: as above.
            quant_dispatch!($tile, true, w, steps, r, x, t0, t, out, ld)
        }

        fn $q8dots(w: &[u8], a: &[i8], out: &mut [i32]) {
            for (b, o) in out.iter_mut().enumerate() {
                let (wb, ab) = (
                    w[b * q8_0::BLOCK_BYTES..].as_ptr(),
                    a[b * q8_0::QK8_0..].as_ptr(),
                );
                // SAFETY: CPU checked; `Kernel::q8_0_block_dots` asserted that
                // block `b` lies inside `w` (34 bytes) and `a` (32 values).
                *o = unsafe { vaddvq_s32($q8::<1>(wb, [ab])[0]) };
            }
        }

        fn $q6dots(w: &[u8], a: &[i8], _bsums: &[i16], out: &mut [i32]) {
            for (b, o) in out.iter_mut().enumerate() {
                let (wb, ab) = (
                    w[b * q6_k::BLOCK_BYTES..].as_ptr(),
                    a[b * q6_k::QK_K..].as_ptr(),
                );
                // SAFETY: as above, block `b` lies inside `w` (210 bytes) and `a` (256).
                *o = unsafe { $q6::<1>(wb, [ab])[0] };
            }
        }
    };
}

/// Calls the quantized tile `$tile::<Q6, R, T>` for the shapes of
/// `qhead::Tile` and stores its results.
macro_rules! quant_dispatch {
    ($tile:ident, $q6:literal, $w:expr, $steps:expr, $r:expr, $x:expr, $t0:expr, $t:expr, $out:expr, $ld:expr) => {{
        let (w, steps, x, t0, out, ld): (*const u8, Steps, &BlockActs, usize, *mut f32, usize) =
            ($w, $steps, $x, $t0, $out, $ld);
        let nb = x.k / if $q6 { q6_k::QK_K } else { q8_0::QK8_0 };
        let row = |j: usize| w.add(j * steps.row);
        let ap = |u: usize| x.qs.as_ptr().add((t0 + u) * x.k);
        let dp = |u: usize| x.d.as_ptr().add((t0 + u) * nb);
        macro_rules! run {
            ($rr:literal, $tt:literal) => {{
                let res = $tile::<$q6, $rr, $tt>(
                    std::array::from_fn(row),
                    std::array::from_fn(ap),
                    std::array::from_fn(dp),
                    nb,
                    steps.block,
                );
                store_tile(res, out, ld);
            }};
        }
        quant_tile_shapes!($r, $t, run)
    }};
}

dispatch_quant!(
    q8_0_tile_plain,
    q6_k_tile_plain,
    q8_0_block_dots_plain,
    q6_k_block_dots_plain,
    qtile_plain,
    q8_block_plain,
    q6_block_plain
);
dispatch_quant!(
    q8_0_tile_dot,
    q6_k_tile_dot,
    q8_0_block_dots_dot,
    q6_k_block_dots_dot,
    qtile_dot,
    q8_block_dot,
    q6_block_dot
);

fn quantize_act(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    // SAFETY: NEON is part of aarch64; `Kernel::quantize_act` asserted equal lengths.
    unsafe { quantize_neon(x, q) }
}

fn dot_f16(a: &[f16], b: &[f32]) -> f32 {
    // SAFETY: NEON is part of aarch64; `Kernel::dot_f16` cut both to one length.
    unsafe { float_tile::<true, 1, 1>([a.as_ptr() as *const u8], [b.as_ptr()], a.len())[0][0] }
}

fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: NEON is part of aarch64; `Kernel::dot_f32` cut both to one length.
    unsafe { float_tile::<false, 1, 1>([a.as_ptr() as *const u8], [b.as_ptr()], a.len())[0][0] }
}

fn axpy_f16(p: f32, x: &[f16], y: &mut [f32]) {
    // SAFETY: NEON is part of aarch64; `Kernel::axpy_f16` cut both to one length.
    unsafe { axpy_neon::<true>(p, x.as_ptr() as *const u8, y) }
}

fn axpy_f32(p: f32, x: &[f32], y: &mut [f32]) {
    // SAFETY: NEON is part of aarch64; `Kernel::axpy_f32` cut both to one length.
    unsafe { axpy_neon::<false>(p, x.as_ptr() as *const u8, y) }
}

fn attn_scores(k: Kv, stride: usize, off: usize, q: &[f32], scale: f32, scores: &mut [f32]) {
    ops::scores_with(dot_f16, dot_f32, k, stride, off, q, scale, scores)
}

fn attn_values(v: Kv, stride: usize, off: usize, p: &[f32], out: &mut [f32]) {
    ops::values_with(axpy_f16, axpy_f32, v, stride, off, p, out)
}

/// `acc + Σ` of four adjacent u8-code × i8 products per lane (`sdot`).
#[target_feature(enable = "neon,dotprod")]
#[inline]
unsafe fn sdot(acc: int32x4_t, a: uint8x16_t, b: int8x16_t) -> int32x4_t {
    let mut r = acc;
    asm!(
        "sdot {0:v}.4s, {1:v}.16b, {2:v}.16b",
        inout(vreg) r,
        in(vreg) vreinterpretq_s8_u8(a),
        in(vreg) b,
        options(pure, nomem, nostack, preserves_flags)
    );
    r
}

/// The eight code vectors of one row's 32-byte block: index `2i + h` holds
/// field `i` (bits `6 − 2i`) of half `h`.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn codes(p: *const u8) -> [uint8x16_t; 8] {
    let m = vdupq_n_u8(3);
    let lo = vld1q_u8(p);
    let hi = vld1q_u8(p.add(16));
    [
        vshrq_n_u8::<6>(lo),
        vshrq_n_u8::<6>(hi),
        vandq_u8(vshrq_n_u8::<4>(lo), m),
        vandq_u8(vshrq_n_u8::<4>(hi), m),
        vandq_u8(vshrq_n_u8::<2>(lo), m),
        vandq_u8(vshrq_n_u8::<2>(hi), m),
        vandq_u8(lo, m),
        vandq_u8(hi, m),
    ]
}

/// Generates the packed tile and the prompt tile for one accumulation
/// method (`sdot` or `smlal`).
macro_rules! ternary_tiles {
    ($ptile:ident, $ctile:ident, $feat:literal, $dot:literal) => {
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
            let mut acc32 = [[vdupq_n_s32(0); GROUP]; T];
            let mut b = 0;
            while b < nb {
                let be = if $dot { nb } else { (b + CHUNK).min(nb) };
                let mut acc16 = [[vdupq_n_s16(0); GROUP]; T];
                for bi in b..be {
                    let wb = wp.add(bi * GROUP_BLOCK_BYTES);
                    {
                        // The weights stream once per token tile: both
                        // lines of the run, PREFETCH_GEMV ahead, into L2.
                        prefetch_l2(wb.wrapping_add(PREFETCH_GEMV));
                        prefetch_l2(wb.wrapping_add(PREFETCH_GEMV + 64));
                    }
                    for r in 0..GROUP {
                        let c = codes(wb.add(r * 32));
                        for t in 0..T {
                            let xb = x0.add(t * k + bi * QK);
                            for (ci, &cv) in c.iter().enumerate() {
                                // field i = ci / 2 covers x[32 i ..], half h = ci % 2.
                                let xv = vld1q_s8(xb.add(32 * (ci / 2) + 16 * (ci % 2)));
                                if $dot {
                                    acc32[t][r] = sdot(acc32[t][r], cv, xv);
                                } else {
                                    let cs = vreinterpretq_s8_u8(cv);
                                    let a = vmlal_s8(acc16[t][r], vget_low_s8(cs), vget_low_s8(xv));
                                    acc16[t][r] = vmlal_high_s8(a, cs, xv);
                                }
                            }
                        }
                    }
                }
                if !$dot {
                    for t in 0..T {
                        for r in 0..GROUP {
                            acc32[t][r] = vpadalq_s16(acc32[t][r], acc16[t][r]);
                        }
                    }
                }
                b = be;
            }
            for t in 0..T {
                for r in 0..GROUP {
                    *out.add(t * ld + r) = vaddvq_s32(acc32[t][r]);
                }
            }
        }

        /// The prompt tile: `R` rows × `T` tokens over unpacked codes
        /// (`[step][R][32]`) and interleaved activations (`[step][T][32]`).
        /// Writes `out[t·ld + r]` = Σ code·x.
        #[target_feature(enable = $feat)]
        #[allow(clippy::needless_range_loop)]
        unsafe fn $ctile<const R: usize, const T: usize>(
            c: *const u8,
            x: *const i8,
            steps: usize,
            out: *mut i32,
            ld: usize,
        ) {
            let mut acc32 = [[vdupq_n_s32(0); T]; R];
            let mut s = 0;
            while s < steps {
                let se = if $dot {
                    steps
                } else {
                    (s + CODE_CHUNK).min(steps)
                };
                let mut acc16 = [[vdupq_n_s16(0); T]; R];
                let mut cp = c.add(s * R * 32);
                let mut xp = x.add(s * T * 32);
                for _ in s..se {
                    let cv: [[uint8x16_t; 2]; R] = std::array::from_fn(|r| {
                        [vld1q_u8(cp.add(32 * r)), vld1q_u8(cp.add(32 * r + 16))]
                    });
                    for t in 0..T {
                        let xv = [vld1q_s8(xp.add(32 * t)), vld1q_s8(xp.add(32 * t + 16))];
                        for r in 0..R {
                            for h in 0..2 {
                                if $dot {
                                    acc32[r][t] = sdot(acc32[r][t], cv[r][h], xv[h]);
                                } else {
                                    let cs = vreinterpretq_s8_u8(cv[r][h]);
                                    let a =
                                        vmlal_s8(acc16[r][t], vget_low_s8(cs), vget_low_s8(xv[h]));
                                    acc16[r][t] = vmlal_high_s8(a, cs, xv[h]);
                                }
                            }
                        }
                    }
                    cp = cp.add(R * 32);
                    xp = xp.add(T * 32);
                }
                if !$dot {
                    for r in 0..R {
                        for t in 0..T {
                            acc32[r][t] = vpadalq_s16(acc32[r][t], acc16[r][t]);
                        }
                    }
                }
                s = se;
            }
            for t in 0..T {
                for r in 0..R {
                    *out.add(t * ld + r) = vaddvq_s32(acc32[r][t]);
                }
            }
        }
    };
}

ternary_tiles!(ptile_plain, ctile_plain, "neon", false);
ternary_tiles!(ptile_dot, ctile_dot, "neon,dotprod", true);

#[target_feature(enable = "neon")]
unsafe fn quantize_neon(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    let n = x.len();
    let xp = x.as_ptr();
    let mut mx = vdupq_n_f32(0.0);
    let mut i = 0;
    while i + 4 <= n {
        // fmaxnm ignores a NaN operand, as the scalar fold does.
        mx = vmaxnmq_f32(mx, vabsq_f32(vld1q_f32(xp.add(i))));
        i += 4;
    }
    let mut m = vmaxnmvq_f32(mx);
    for &v in &x[i..] {
        m = m.max(v.abs());
    }
    let a = 127.0 / m.max(1e-5);
    let av = vdupq_n_f32(a);
    let lo = vdupq_n_f32(-128.0);
    let hi = vdupq_n_f32(127.0);
    let mut sumv = vdupq_n_s32(0);
    let mut i = 0;
    while i + 4 <= n {
        // frintn: round to nearest, ties to even.
        let r = vrndnq_f32(vmulq_f32(vld1q_f32(xp.add(i)), av));
        // NaN → 0 (`NaN as i8` is 0); the mask is taken before the clamp.
        let ord = vceqq_f32(r, r);
        let r = vminq_f32(vmaxq_f32(r, lo), hi);
        let v = vandq_s32(vcvtq_s32_f32(r), vreinterpretq_s32_u32(ord));
        sumv = vaddq_s32(sumv, v);
        let mut lanes = [0i32; 4];
        vst1q_s32(lanes.as_mut_ptr(), v);
        for (j, &l) in lanes.iter().enumerate() {
            q[i + j] = l as i8;
        }
        i += 4;
    }
    let mut sum = vaddvq_s32(sumv);
    for j in i..n {
        let r = (x[j] * a).round_ties_even().clamp(-128.0, 127.0) as i8;
        q[j] = r;
        sum += r as i32;
    }
    (a, sum)
}

/// Four f32 from `p` (f16 when `F16`).
#[target_feature(enable = "neon")]
#[inline]
unsafe fn load4<const F16: bool>(p: *const u8, i: usize) -> float32x4_t {
    if F16 {
        vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((p as *const u16).add(i))))
    } else {
        vld1q_f32((p as *const f32).add(i))
    }
}

#[target_feature(enable = "neon")]
#[inline]
unsafe fn elem<const F16: bool>(p: *const u8, i: usize) -> f32 {
    if F16 {
        f16::from_bits(*(p as *const u16).add(i)).to_f32()
    } else {
        *(p as *const f32).add(i)
    }
}

/// `R` rows × `T` tokens; one 4-lane accumulator per (row, token), so a
/// dot does not depend on the tile shape.
#[target_feature(enable = "neon")]
#[inline]
#[allow(clippy::needless_range_loop)]
unsafe fn float_tile<const F16: bool, const R: usize, const T: usize>(
    w: [*const u8; R],
    x: [*const f32; T],
    d: usize,
) -> [[f32; T]; R] {
    let mut acc = [[vdupq_n_f32(0.0); T]; R];
    let mut i = 0;
    while i + 4 <= d {
        let xv: [float32x4_t; T] = std::array::from_fn(|t| vld1q_f32(x[t].add(i)));
        for r in 0..R {
            let wv = load4::<F16>(w[r], i);
            for t in 0..T {
                acc[r][t] = vfmaq_f32(acc[r][t], wv, xv[t]);
            }
        }
        i += 4;
    }
    let mut res = [[0f32; T]; R];
    for r in 0..R {
        for t in 0..T {
            let mut s = vaddvq_f32(acc[r][t]);
            for j in i..d {
                s += elem::<F16>(w[r], j) * *x[t].add(j);
            }
            res[r][t] = s;
        }
    }
    res
}

#[target_feature(enable = "neon")]
unsafe fn axpy_neon<const F16: bool>(p: f32, x: *const u8, y: &mut [f32]) {
    let n = y.len();
    let pv = vdupq_n_f32(p);
    let yp = y.as_mut_ptr();
    let mut i = 0;
    while i + 4 <= n {
        vst1q_f32(
            yp.add(i),
            vfmaq_f32(vld1q_f32(yp.add(i)), pv, load4::<F16>(x, i)),
        );
        i += 4;
    }
    while i < n {
        *yp.add(i) += p * elem::<F16>(x, i);
        i += 1;
    }
}

// ------------------------------------------------- quantized output head

/// `acc + Σ` of four adjacent i8 × i8 products per lane (`sdot`).
#[target_feature(enable = "neon,dotprod")]
#[inline]
unsafe fn sdot_s8(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut r = acc;
    asm!(
        "sdot {0:v}.4s, {1:v}.16b, {2:v}.16b",
        inout(vreg) r,
        in(vreg) a,
        in(vreg) b,
        options(pure, nomem, nostack, preserves_flags)
    );
    r
}

/// Σ a·b of sixteen i8 pairs as four i32 lanes without `sdot`: `smull`
/// into 16 bits (|product| ≤ 2¹⁴), widened pairwise at once.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn dot16_plain(a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    vpadalq_s16(vpaddlq_s16(lo), vmull_high_s8(a, b))
}

/// Σ a·b of sixteen i8 pairs as four i32 lanes without `sdot`, lane `j`
/// summing bytes `4j .. 4j + 4` as `sdot` does (`smull`, pairwise widening,
/// one pairwise add).
#[target_feature(enable = "neon")]
#[inline]
unsafe fn dot4_plain(a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let lo = vpaddlq_s16(vmull_s8(vget_low_s8(a), vget_low_s8(b)));
    let hi = vpaddlq_s16(vmull_high_s8(a, b));
    vpaddq_s32(lo, hi)
}

/// Prefetch the line at `p` into L2 (a hint: any address is allowed).
#[target_feature(enable = "neon")]
#[inline]
unsafe fn prefetch_l2(p: *const u8) {
    asm!("prfm pldl2keep, [{0}]", in(reg) p, options(nostack, readonly, preserves_flags));
}

/// How far ahead the one-token head product prefetches its rows.
const PREFETCH_HEAD: usize = 32 << 10;

/// Generates the block dots and the tile of the quantized head for one
/// accumulation method (`sdot` or `smull`).
macro_rules! qhead_impl {
    ($tile:ident, $q8:ident, $q6:ident, $feat:literal, $dot:literal) => {
        /// One Q8_0 block (`w` at its f16 scale) against the matching 32
        /// activation quants of `T` tokens: four i32 lanes per token summing
        /// to `Σ w·a` exactly.
        #[target_feature(enable = $feat)]
        #[inline]
        #[allow(clippy::needless_range_loop)]
        unsafe fn $q8<const T: usize>(w: *const u8, a: [*const i8; T]) -> [int32x4_t; T] {
            let w0 = vld1q_s8(w.add(2) as *const i8);
            let w1 = vld1q_s8(w.add(18) as *const i8);
            let mut r = [vdupq_n_s32(0); T];
            for t in 0..T {
                let a0 = vld1q_s8(a[t]);
                let a1 = vld1q_s8(a[t].add(16));
                r[t] = if $dot {
                    sdot_s8(sdot_s8(vdupq_n_s32(0), w0, a0), w1, a1)
                } else {
                    vaddq_s32(dot16_plain(w0, a0), dot16_plain(w1, a1))
                };
            }
            r
        }

        /// One Q6_K block (tern's load-time layout, `q6_k::repack`)
        /// against the matching 256 Q8_K quants of `T` tokens (the same
        /// lane order): per token `Σ_j scale_j · Σ (q − 32)·a`, exact.
        /// Each 16 bytes of codes hold four of each of four sub-blocks,
        /// four bytes per sub-block as `sdot` sums them, so the four code
        /// vectors of a quarter share one i32 accumulator and one
        /// multiply by the quarter's four scales; `q − 32` fits a signed
        /// byte, so no sums of the activations are needed.
        #[target_feature(enable = $feat)]
        #[inline]
        #[allow(clippy::needless_range_loop)]
        unsafe fn $q6<const T: usize>(w: *const u8, a: [*const i8; T]) -> [i32; T] {
            let m6 = vdupq_n_u8(0x3F);
            let off = vdupq_n_s8(32);
            // The sixteen scales as i32, vector 2h + f holding sub-blocks
            // 8h + 4f .. + 4.
            let sc8 = vld1q_s8(w.add(q6_k::SC_OFF) as *const i8);
            let (s_lo, s_hi) = (vmovl_s8(vget_low_s8(sc8)), vmovl_high_s8(sc8));
            let scales = [
                vmovl_s16(vget_low_s16(s_lo)),
                vmovl_high_s16(s_lo),
                vmovl_s16(vget_low_s16(s_hi)),
                vmovl_high_s16(s_hi),
            ];
            let mut acc = [vdupq_n_s32(0); T];
            for h in 0..2 {
                for f in 0..2 {
                    let byte = |c: usize| vld1q_u8(w.add(96 * h + 32 * c + 16 * f));
                    let (b0, b1, b2) = (byte(0), byte(1), byte(2));
                    // The fourth code: bits 4-5, 2-3, 0-1 from the top bits
                    // of the three bytes.
                    let top = vorrq_u8(
                        vorrq_u8(
                            vshlq_n_u8::<4>(vshrq_n_u8::<6>(b0)),
                            vshlq_n_u8::<2>(vshrq_n_u8::<6>(b1)),
                        ),
                        vshrq_n_u8::<6>(b2),
                    );
                    // q − 32 as signed bytes, once for every token.
                    let qs = [vandq_u8(b0, m6), vandq_u8(b1, m6), vandq_u8(b2, m6), top]
                        .map(|q| vsubq_s8(vreinterpretq_s8_u8(q), off));
                    for t in 0..T {
                        let mut d = vdupq_n_s32(0);
                        for (k, &qs) in qs.iter().enumerate() {
                            // Positions 128h + 32k + 16f ..: four each of
                            // sub-blocks 8h + 4f .. + 4.
                            let av = vld1q_s8(a[t].add(128 * h + 32 * k + 16 * f));
                            d = if $dot {
                                sdot_s8(d, qs, av)
                            } else {
                                vaddq_s32(d, dot4_plain(qs, av))
                            };
                        }
                        acc[t] = vmlaq_s32(acc[t], d, scales[2 * h + f]);
                    }
                }
            }
            let mut r = [0i32; T];
            for t in 0..T {
                r[t] = vaddvq_s32(acc[t]);
            }
            r
        }

        /// `R` rows × `T` tokens; Q8_0: one 4-lane f32 accumulator per
        /// (row, token); Q6_K: the scalar reference's float sum over exact
        /// block dots. Independent of `R`, `T` and the thread split.
        #[target_feature(enable = $feat)]
        #[inline]
        #[allow(clippy::needless_range_loop)]
        unsafe fn $tile<const Q6: bool, const R: usize, const T: usize>(
            w: [*const u8; R],
            a: [*const i8; T],
            da: [*const f32; T],
            nb: usize,
            bstep: usize,
        ) -> [[f32; T]; R] {
            let (qk, bb) = if Q6 {
                (q6_k::QK_K, q6_k::BLOCK_BYTES)
            } else {
                (q8_0::QK8_0, q8_0::BLOCK_BYTES)
            };
            let mut acc = [[vdupq_n_f32(0.0); T]; R];
            let mut sacc = [[0f32; T]; R];
            for b in 0..nb {
                for r in 0..R {
                    let wb = w[r].add(b * bstep);
                    {
                        // The rows stream once per token tile.
                        let pf = wb.wrapping_add(PREFETCH_HEAD);
                        prefetch_l2(pf);
                        if Q6 {
                            prefetch_l2(pf.wrapping_add(64));
                            prefetch_l2(pf.wrapping_add(128));
                            prefetch_l2(pf.wrapping_add(192));
                        }
                    }
                    let mut at = [std::ptr::null::<i8>(); T];
                    for t in 0..T {
                        at[t] = a[t].add(b * qk);
                    }
                    if Q6 {
                        let dw = q6_k::block_d(std::slice::from_raw_parts(wb, bb));
                        let dots = $q6::<T>(wb, at);
                        for t in 0..T {
                            sacc[r][t] += (dw * *da[t].add(b)) * dots[t] as f32;
                        }
                    } else {
                        let dw = f16::from_le_bytes([*wb, *wb.add(1)]).to_f32();
                        let dots = $q8::<T>(wb, at);
                        for t in 0..T {
                            let s = vdupq_n_f32(dw * *da[t].add(b));
                            acc[r][t] = vfmaq_f32(acc[r][t], vcvtq_f32_s32(dots[t]), s);
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
                    res[r][t] = vaddvq_f32(acc[r][t]);
                }
            }
            res
        }
    };
}

qhead_impl!(qtile_plain, q8_block_plain, q6_block_plain, "neon", false);
qhead_impl!(qtile_dot, q8_block_dot, q6_block_dot, "neon,dotprod", true);
