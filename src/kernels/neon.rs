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

use super::{Kernel, Packed, GROUP, GROUP_BLOCK_BYTES, QK};
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
