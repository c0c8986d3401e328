//! NEON kernels (aarch64), selected at run time; the dot-product extension
//! (`sdot`) is used where the CPU has it.
//!
//! Same packed layout as every kernel: a row's 32-byte block is two 16-byte
//! vectors, bytes `j` and `16 + j` of block `b` holding values
//! `b·128 + 32·i + j` in bits `6 − 2i`. With `dotprod`, `sdot` sums four
//! code×activation products straight into 32 bits (codes 0..3 are valid
//! signed bytes). Without it, `smlal` accumulates the products in 16 bits
//! over at most [`CHUNK`] blocks (|sum| ≤ 4·16·3·128 < 2^15, even for the
//! invalid code 3) before `sadalp` widens them. Either way the integer sum
//! is exact, so the results equal the scalar reference bit for bit.
//!
//! `vdotq_s32` is not stable in Rust yet, hence the one-instruction `asm!`.

use super::{BlockActs, Kernel, Packed, QuantHead, GROUP, GROUP_BLOCK_BYTES, QK};
use crate::quant::{q6_k, q8_0};
use half::f16;
use std::arch::aarch64::*;
use std::arch::asm;

pub struct Neon {
    dotprod: bool,
}

/// Blocks summed in 16-bit lanes before widening (no-dotprod path).
const CHUNK: usize = 4;
/// Tokens per register tile.
const TILE_T: usize = 4;
/// Row groups sharing one token tile.
const GROUP_BLOCK: usize = 8;

static WITH_DOTPROD: Neon = Neon { dotprod: true };
static PLAIN: Neon = Neon { dotprod: false };

impl Neon {
    /// The best NEON kernel for this CPU (NEON is part of every aarch64 CPU).
    pub fn get() -> &'static Neon {
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            &WITH_DOTPROD
        } else {
            &PLAIN
        }
    }
    /// Every NEON variant this CPU can run (for tests).
    pub fn variants() -> Vec<&'static Neon> {
        let mut v = vec![&PLAIN];
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            v.push(&WITH_DOTPROD);
        }
        v
    }
}

impl Kernel for Neon {
    fn name(&self) -> &'static str {
        "neon"
    }
    fn variant(&self) -> &'static str {
        if self.dotprod {
            "neon+dotprod"
        } else {
            "neon"
        }
    }
    fn i2s_gemm(&self, w: &Packed, g0: usize, g1: usize, xs: &[i8], sums: &[i32], out: &mut [i32]) {
        super::check_gemm(w, g0, g1, xs, sums, out);
        // SAFETY: NEON is part of aarch64; the dotprod path is taken only
        // when the CPU reported it. `check_gemm` asserted the sizes the
        // pointer arithmetic relies on.
        unsafe {
            if self.dotprod {
                gemm_dot(w, g0, g1, xs, sums, out)
            } else {
                gemm_plain(w, g0, g1, xs, sums, out)
            }
        }
    }
    fn f16_gemm(
        &self,
        w: &[f16],
        d: usize,
        v0: usize,
        v1: usize,
        xs: &[f32],
        n: usize,
        out: &mut [f32],
    ) {
        super::check_float_gemm(w.len(), d, v0, v1, xs, n, out);
        // SAFETY: NEON is part of aarch64; sizes asserted above.
        unsafe { float_gemm::<true>(w.as_ptr() as *const u8, d, v0, v1, xs, n, out) }
    }
    fn f32_gemm(
        &self,
        w: &[f32],
        d: usize,
        v0: usize,
        v1: usize,
        xs: &[f32],
        n: usize,
        out: &mut [f32],
    ) {
        super::check_float_gemm(w.len(), d, v0, v1, xs, n, out);
        // SAFETY: NEON is part of aarch64; sizes asserted above.
        unsafe { float_gemm::<false>(w.as_ptr() as *const u8, d, v0, v1, xs, n, out) }
    }
    fn quantize_act(&self, x: &[f32], q: &mut [i8]) -> (f32, i32) {
        assert_eq!(x.len(), q.len());
        // SAFETY: NEON is part of aarch64; lengths equal.
        unsafe { quantize_neon(x, q) }
    }
    fn q8_0_block_dots(&self, w: &[u8], a: &[i8], out: &mut [i32]) {
        super::check_block_dots(QuantHead::Q8_0, w, a, out);
        for (b, o) in out.iter_mut().enumerate() {
            let (wb, ab) = (
                w[b * q8_0::BLOCK_BYTES..].as_ptr(),
                a[b * q8_0::QK8_0..].as_ptr(),
            );
            // SAFETY: NEON is part of aarch64, dotprod used only when the CPU
            // reported it; `check_block_dots` asserted that block `b` lies
            // inside `w` (34 bytes) and `a` (32 values).
            *o = unsafe {
                vaddvq_s32(if self.dotprod {
                    q8_block_dot::<1>(wb, [ab])[0]
                } else {
                    q8_block_plain::<1>(wb, [ab])[0]
                })
            };
        }
    }
    fn q6_k_block_dots(&self, w: &[u8], a: &[i8], bsums: &[i16], out: &mut [i32]) {
        super::check_block_dots(QuantHead::Q6K, w, a, out);
        assert_eq!(bsums.len(), a.len() / 16, "activation sums");
        for (b, o) in out.iter_mut().enumerate() {
            let (wb, ab) = (
                w[b * q6_k::BLOCK_BYTES..].as_ptr(),
                a[b * q6_k::QK_K..].as_ptr(),
            );
            // SAFETY: as above, block `b` lies inside `w` (210 bytes) and `a` (256).
            *o = unsafe {
                if self.dotprod {
                    q6_block_dot::<1>(wb, [ab])[0]
                } else {
                    q6_block_plain::<1>(wb, [ab])[0]
                }
            };
        }
    }
    fn q8_0_gemm(&self, w: &[u8], v0: usize, v1: usize, x: &BlockActs, out: &mut [f32]) {
        super::check_quant_gemm(QuantHead::Q8_0, w, v0, v1, x, out);
        // SAFETY: NEON is part of aarch64, dotprod used only when the CPU
        // reported it; `check_quant_gemm` asserted the sizes of the rows,
        // activations and output.
        unsafe {
            if self.dotprod {
                qgemm_dot::<false>(w, v0, v1, x, out)
            } else {
                qgemm_plain::<false>(w, v0, v1, x, out)
            }
        }
    }
    fn q6_k_gemm(&self, w: &[u8], v0: usize, v1: usize, x: &BlockActs, out: &mut [f32]) {
        super::check_quant_gemm(QuantHead::Q6K, w, v0, v1, x, out);
        // SAFETY: as for `q8_0_gemm`.
        unsafe {
            if self.dotprod {
                qgemm_dot::<true>(w, v0, v1, x, out)
            } else {
                qgemm_plain::<true>(w, v0, v1, x, out)
            }
        }
    }
    fn dot_f16(&self, a: &[f16], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        // SAFETY: NEON is part of aarch64; loads stay below `n`.
        unsafe { float_tile::<true, 1, 1>([a.as_ptr() as *const u8], [b.as_ptr()], n)[0][0] }
    }
    fn dot_f32(&self, a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        // SAFETY: NEON is part of aarch64; loads stay below `n`.
        unsafe { float_tile::<false, 1, 1>([a.as_ptr() as *const u8], [b.as_ptr()], n)[0][0] }
    }
    fn axpy_f16(&self, p: f32, x: &[f16], y: &mut [f32]) {
        let n = x.len().min(y.len());
        // SAFETY: NEON is part of aarch64; accesses stay below `n`.
        unsafe { axpy_neon::<true>(p, x.as_ptr() as *const u8, &mut y[..n]) }
    }
    fn axpy_f32(&self, p: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len().min(y.len());
        // SAFETY: NEON is part of aarch64; accesses stay below `n`.
        unsafe { axpy_neon::<false>(p, x.as_ptr() as *const u8, &mut y[..n]) }
    }
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

/// Generates a GEMM driver and register tile for one accumulation method.
macro_rules! gemm_impl {
    ($gemm:ident, $tile:ident, $feat:literal, $dot:literal) => {
        #[target_feature(enable = $feat)]
        unsafe fn $gemm(
            w: &Packed,
            g0: usize,
            g1: usize,
            xs: &[i8],
            sums: &[i32],
            out: &mut [i32],
        ) {
            let n = sums.len();
            let k = w.cols();
            let nb = w.blocks();
            let ld = GROUP * (g1 - g0);
            let gstride = nb * GROUP_BLOCK_BYTES;
            let wbase = w.group_bytes(g0, g1).as_ptr();
            let (xp, op, sp) = (xs.as_ptr(), out.as_mut_ptr(), sums.as_ptr());
            let mut gb = 0;
            while gb < g1 - g0 {
                let ge = (gb + GROUP_BLOCK).min(g1 - g0);
                let mut t = 0;
                while t < n {
                    let tt = (n - t).min(TILE_T);
                    for g in gb..ge {
                        let wp = wbase.add(g * gstride);
                        let o = op.add(t * ld + g * GROUP);
                        let x0 = xp.add(t * k);
                        match tt {
                            1 => $tile::<1>(wp, nb, x0, k, sp.add(t), o, ld),
                            2 => $tile::<2>(wp, nb, x0, k, sp.add(t), o, ld),
                            3 => $tile::<3>(wp, nb, x0, k, sp.add(t), o, ld),
                            _ => $tile::<4>(wp, nb, x0, k, sp.add(t), o, ld),
                        }
                    }
                    t += tt;
                }
                gb = ge;
            }
        }

        /// One packed group × `T` tokens; `out[t·ld + r]` = dot − sums[t].
        #[target_feature(enable = $feat)]
        #[inline]
        #[allow(clippy::needless_range_loop)]
        unsafe fn $tile<const T: usize>(
            wp: *const u8,
            nb: usize,
            x0: *const i8,
            k: usize,
            sums: *const i32,
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
                let s = *sums.add(t);
                for r in 0..GROUP {
                    *out.add(t * ld + r) = vaddvq_s32(acc32[t][r]) - s;
                }
            }
        }
    };
}

gemm_impl!(gemm_plain, tile_plain, "neon", false);
gemm_impl!(gemm_dot, tile_dot, "neon,dotprod", true);

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
unsafe fn float_gemm<const F16: bool>(
    w: *const u8,
    d: usize,
    v0: usize,
    v1: usize,
    xs: &[f32],
    n: usize,
    out: &mut [f32],
) {
    let es = if F16 { 2 } else { 4 };
    let row = |v: usize| w.add(v * d * es);
    let ld = v1 - v0;
    let mut t = 0;
    while t < n {
        let tt = (n - t).min(4);
        for v in v0..v1 {
            macro_rules! run {
                ($t:literal) => {{
                    let xv: [*const f32; $t] =
                        std::array::from_fn(|j| xs.as_ptr().add((t + j) * d));
                    let res = float_tile::<F16, 1, $t>([row(v)], xv, d);
                    for (u, &val) in res[0].iter().enumerate() {
                        out[(t + u) * ld + v - v0] = val;
                    }
                }};
            }
            match tt {
                4 => run!(4),
                3 => run!(3),
                2 => run!(2),
                _ => run!(1),
            }
        }
        t += tt;
    }
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

/// Prefetch the line at `p` into L2 (a hint: any address is allowed).
#[target_feature(enable = "neon")]
#[inline]
unsafe fn prefetch_l2(p: *const u8) {
    asm!("prfm pldl2keep, [{0}]", in(reg) p, options(nostack, readonly, preserves_flags));
}

/// How far ahead the one-token head product prefetches its rows.
const PREFETCH_HEAD: usize = 32 << 10;

/// Generates the block dots and the GEMM driver of the quantized head for
/// one accumulation method (`sdot` or `smull`).
macro_rules! qhead_impl {
    ($gemm:ident, $tile:ident, $q8:ident, $q6:ident, $feat:literal, $dot:literal) => {
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

        /// One Q6_K block against the matching 256 Q8_K quants of `T`
        /// tokens: per token `Σ_j scale_j · Σ (q − 32)·a`, exact. Each
        /// 16-byte code vector is one sub-block; `q − 32` fits a signed
        /// byte, so no sums of the activations are needed.
        #[target_feature(enable = $feat)]
        #[inline]
        #[allow(clippy::needless_range_loop)]
        unsafe fn $q6<const T: usize>(w: *const u8, a: [*const i8; T]) -> [i32; T] {
            let m4 = vdupq_n_u8(0x0F);
            let m3 = vdupq_n_u8(0x03);
            let off = vdupq_n_s8(32);
            let mut acc = [vdupq_n_s32(0); T];
            for h in 0..2 {
                for e in 0..2 {
                    let l0 = vld1q_u8(w.add(64 * h + 16 * e));
                    let l1 = vld1q_u8(w.add(64 * h + 32 + 16 * e));
                    let hb = vld1q_u8(w.add(q6_k::QH_OFF + 32 * h + 16 * e));
                    let q = [
                        vorrq_u8(vandq_u8(l0, m4), vshlq_n_u8::<4>(vandq_u8(hb, m3))),
                        vorrq_u8(
                            vandq_u8(l1, m4),
                            vshlq_n_u8::<4>(vandq_u8(vshrq_n_u8::<2>(hb), m3)),
                        ),
                        vorrq_u8(
                            vshrq_n_u8::<4>(l0),
                            vshlq_n_u8::<4>(vandq_u8(vshrq_n_u8::<4>(hb), m3)),
                        ),
                        vorrq_u8(vshrq_n_u8::<4>(l1), vshlq_n_u8::<4>(vshrq_n_u8::<6>(hb))),
                    ];
                    for (k, &qk) in q.iter().enumerate() {
                        // Values 128h + 32k + 16e .. + 16: sub-block 8h + 2k + e.
                        let qs = vsubq_s8(vreinterpretq_s8_u8(qk), off);
                        let sc = *w.add(q6_k::SC_OFF + 8 * h + 2 * k + e) as i8 as i32;
                        for t in 0..T {
                            let av = vld1q_s8(a[t].add(128 * h + 32 * k + 16 * e));
                            let d = if $dot {
                                sdot_s8(vdupq_n_s32(0), qs, av)
                            } else {
                                dot16_plain(qs, av)
                            };
                            acc[t] = vmlaq_n_s32(acc[t], d, sc);
                        }
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
                    let wb = w[r].add(b * bb);
                    if T == 1 {
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

        /// One token: four rows at a time; many tokens: tiles of up to
        /// four tokens per row.
        #[target_feature(enable = $feat)]
        unsafe fn $gemm<const Q6: bool>(
            w: &[u8],
            v0: usize,
            v1: usize,
            x: &BlockActs,
            out: &mut [f32],
        ) {
            let kind = if Q6 { QuantHead::Q6K } else { QuantHead::Q8_0 };
            let rb = kind.row_bytes(x.k);
            let nb = x.k / kind.block();
            let row = |v: usize| w.as_ptr().add(v * rb);
            let ap = |t: usize| x.qs.as_ptr().add(t * x.k);
            let dp = |t: usize| x.d.as_ptr().add(t * nb);
            let ld = v1 - v0;
            if x.n == 1 {
                let mut v = v0;
                while v + 4 <= v1 {
                    let r = $tile::<Q6, 4, 1>(
                        [row(v), row(v + 1), row(v + 2), row(v + 3)],
                        [ap(0)],
                        [dp(0)],
                        nb,
                    );
                    for (j, rr) in r.iter().enumerate() {
                        out[v - v0 + j] = rr[0];
                    }
                    v += 4;
                }
                while v < v1 {
                    out[v - v0] = $tile::<Q6, 1, 1>([row(v)], [ap(0)], [dp(0)], nb)[0][0];
                    v += 1;
                }
                return;
            }
            let mut t = 0;
            while t < x.n {
                let tt = (x.n - t).min(4);
                for v in v0..v1 {
                    macro_rules! run {
                        ($t:literal) => {{
                            let mut a = [std::ptr::null::<i8>(); $t];
                            let mut d = [std::ptr::null::<f32>(); $t];
                            for j in 0..$t {
                                a[j] = ap(t + j);
                                d[j] = dp(t + j);
                            }
                            let res = $tile::<Q6, 1, $t>([row(v)], a, d, nb);
                            for (u, &val) in res[0].iter().enumerate() {
                                out[(t + u) * ld + v - v0] = val;
                            }
                        }};
                    }
                    match tt {
                        4 => run!(4),
                        3 => run!(3),
                        2 => run!(2),
                        _ => run!(1),
                    }
                }
                t += tt;
            }
        }
    };
}

qhead_impl!(
    qgemm_plain,
    qtile_plain,
    q8_block_plain,
    q6_block_plain,
    "neon",
    false
);
qhead_impl!(
    qgemm_dot,
    qtile_dot,
    q8_block_dot,
    q6_block_dot,
    "neon,dotprod",
    true
);
