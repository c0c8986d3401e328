//! Portable reference kernels.

use super::{BlockActs, Kernel, Packed, QuantHead, BLOCK_BYTES, GROUP, GROUP_BLOCK_BYTES, QK};
use crate::quant::{q6_k, q8_0};
use half::f16;

pub struct Scalar;

impl Kernel for Scalar {
    fn name(&self) -> &'static str {
        "scalar"
    }
    fn i2s_gemm(&self, w: &Packed, g0: usize, g1: usize, xs: &[i8], sums: &[i32], out: &mut [i32]) {
        i2s_gemm(w, g0, g1, xs, sums, out)
    }
}

/// Reference ternary dot over one canonical I2_S row `w` (K/4 bytes):
/// Σ code·x − Σ x, code = T + 1.
pub fn dot_i2s(w: &[u8], x: &[i8], x_sum: i32) -> i32 {
    assert_eq!(w.len() * 4, x.len());
    let mut acc = 0i32;
    for (wb, xb) in w.chunks_exact(BLOCK_BYTES).zip(x.chunks_exact(QK)) {
        acc += block_dot(wb, xb);
    }
    acc - x_sum
}

/// Σ code·x over one 32-byte block and its 128 activations.
fn block_dot(wb: &[u8], xb: &[i8]) -> i32 {
    let mut acc = 0i32;
    for (i, &b) in wb.iter().enumerate() {
        acc += ((b >> 6) & 3) as i32 * xb[i] as i32;
        acc += ((b >> 4) & 3) as i32 * xb[32 + i] as i32;
        acc += ((b >> 2) & 3) as i32 * xb[64 + i] as i32;
        acc += (b & 3) as i32 * xb[96 + i] as i32;
    }
    acc
}

/// Reference [`Kernel::i2s_gemm`] over the packed layout.
pub fn i2s_gemm(w: &Packed, g0: usize, g1: usize, xs: &[i8], sums: &[i32], out: &mut [i32]) {
    super::check_gemm(w, g0, g1, xs, sums, out);
    let k = w.cols();
    let nb = w.blocks();
    let ld = GROUP * (g1 - g0);
    let data = w.group_bytes(g0, g1);
    for (t, &s) in sums.iter().enumerate() {
        let x = &xs[t * k..(t + 1) * k];
        for (gi, gd) in data.chunks_exact(nb * GROUP_BLOCK_BYTES).enumerate() {
            for r in 0..GROUP {
                let mut acc = 0i32;
                for b in 0..nb {
                    let wb = &gd[b * GROUP_BLOCK_BYTES + r * BLOCK_BYTES..][..BLOCK_BYTES];
                    acc += block_dot(wb, &x[b * QK..(b + 1) * QK]);
                }
                out[t * ld + gi * GROUP + r] = acc - s;
            }
        }
    }
}

pub fn quantize_act(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    let m = x.iter().fold(0f32, |a, &v| a.max(v.abs())).max(1e-5);
    let a = 127.0 / m;
    let mut sum = 0i32;
    for (qi, &v) in q.iter_mut().zip(x) {
        let r = (v * a).round_ties_even().clamp(-128.0, 127.0) as i8;
        *qi = r;
        sum += r as i32;
    }
    (a, sum)
}

/// Largest |x| (NaN ignored) — the first half of [`quantize_act`].
pub fn max_abs(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |a, &v| a.max(v.abs()))
}

pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators: lets the compiler vectorize and keeps
    // the rounding order fixed regardless of the CPU.
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

pub fn dot_f16(a: &[f16], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i].to_f32() * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x.to_f32() * y;
    }
    s
}

pub fn axpy_f16(p: f32, x: &[f16], y: &mut [f32]) {
    for (o, v) in y.iter_mut().zip(x) {
        *o += p * v.to_f32();
    }
}

pub fn axpy_f32(p: f32, x: &[f32], y: &mut [f32]) {
    for (o, v) in y.iter_mut().zip(x) {
        *o += p * v;
    }
}

pub fn f16_gemm(w: &[f16], d: usize, v0: usize, v1: usize, xs: &[f32], n: usize, out: &mut [f32]) {
    super::check_float_gemm(w.len(), d, v0, v1, xs, n, out);
    let ld = v1 - v0;
    for v in v0..v1 {
        let row = &w[v * d..(v + 1) * d];
        for t in 0..n {
            out[t * ld + v - v0] = dot_f16(row, &xs[t * d..(t + 1) * d]);
        }
    }
}

pub fn f32_gemm(w: &[f32], d: usize, v0: usize, v1: usize, xs: &[f32], n: usize, out: &mut [f32]) {
    super::check_float_gemm(w.len(), d, v0, v1, xs, n, out);
    let ld = v1 - v0;
    for v in v0..v1 {
        let row = &w[v * d..(v + 1) * d];
        for t in 0..n {
            out[t * ld + v - v0] = dot_f32(row, &xs[t * d..(t + 1) * d]);
        }
    }
}

/// Reference [`Kernel::q8_0_block_dots`].
pub fn q8_0_block_dots(w: &[u8], a: &[i8], out: &mut [i32]) {
    super::check_block_dots(QuantHead::Q8_0, w, a, out);
    for ((wb, ab), o) in w
        .chunks_exact(q8_0::BLOCK_BYTES)
        .zip(a.chunks_exact(q8_0::QK8_0))
        .zip(out.iter_mut())
    {
        *o = wb[2..]
            .iter()
            .zip(ab)
            .map(|(&q, &x)| q as i8 as i32 * x as i32)
            .sum();
    }
}

/// Reference [`Kernel::q6_k_block_dots`] (straight from the codes; `bsums`
/// is only checked for its size, the SIMD kernels use it).
pub fn q6_k_block_dots(w: &[u8], a: &[i8], bsums: &[i16], out: &mut [i32]) {
    super::check_block_dots(QuantHead::Q6K, w, a, out);
    assert_eq!(bsums.len(), a.len() / 16, "activation sums");
    for ((wb, ab), o) in w
        .chunks_exact(q6_k::BLOCK_BYTES)
        .zip(a.chunks_exact(q6_k::QK_K))
        .zip(out.iter_mut())
    {
        let q = q6_k::codes(wb);
        let mut isum = 0i32;
        for j in 0..16 {
            let sc = wb[q6_k::SC_OFF + j] as i8 as i32;
            let s: i32 = (16 * j..16 * j + 16)
                .map(|i| (q[i] as i32 - 32) * ab[i] as i32)
                .sum();
            isum += sc * s;
        }
        *o = isum;
    }
}

/// Reference quantized head product: per row and token, the block dots
/// summed in block order as `Σ (d_w · d_x) · dot` in f32.
#[allow(clippy::too_many_arguments)]
fn quant_gemm(
    kind: QuantHead,
    w: &[u8],
    v0: usize,
    v1: usize,
    x: &BlockActs,
    out: &mut [f32],
    dots: impl Fn(&[u8], &[i8], usize, &mut [i32]),
    wd: impl Fn(&[u8]) -> f32,
) {
    super::check_quant_gemm(kind, w, v0, v1, x, out);
    let rb = kind.row_bytes(x.k);
    let nb = x.k / kind.block();
    let ld = v1 - v0;
    let mut buf = vec![0i32; nb];
    for v in v0..v1 {
        let row = &w[v * rb..(v + 1) * rb];
        for t in 0..x.n {
            dots(row, x.row(t), t, &mut buf);
            let mut s = 0f32;
            for ((wb, &dx), &dot) in row
                .chunks_exact(kind.block_bytes())
                .zip(x.scales(t))
                .zip(&buf)
            {
                s += (wd(wb) * dx) * dot as f32;
            }
            out[t * ld + v - v0] = s;
        }
    }
}

/// Reference [`Kernel::q8_0_gemm`].
pub fn q8_0_gemm(w: &[u8], v0: usize, v1: usize, x: &BlockActs, out: &mut [f32]) {
    quant_gemm(
        QuantHead::Q8_0,
        w,
        v0,
        v1,
        x,
        out,
        |row, a, _, o| q8_0_block_dots(row, a, o),
        |b| f16::from_le_bytes([b[0], b[1]]).to_f32(),
    )
}

/// Reference [`Kernel::q6_k_gemm`].
pub fn q6_k_gemm(w: &[u8], v0: usize, v1: usize, x: &BlockActs, out: &mut [f32]) {
    quant_gemm(
        QuantHead::Q6K,
        w,
        v0,
        v1,
        x,
        out,
        |row, a, t, o| q6_k_block_dots(row, a, x.sums16(t), o),
        q6_k::block_d,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::i2s;

    #[test]
    fn dot_matches_codes() {
        let mut s = 7u32;
        let mut rnd = || {
            s = s.wrapping_mul(747796405).wrapping_add(2891336453);
            s >> 16
        };
        let k = 384;
        let codes: Vec<i8> = (0..k).map(|_| (rnd() % 3) as i8 - 1).collect();
        let x: Vec<i8> = (0..k).map(|_| (rnd() % 256) as u8 as i8).collect();
        let mut w = Vec::new();
        i2s::encode(&codes, 1.0, &mut w);
        let want: i32 = codes
            .iter()
            .zip(&x)
            .map(|(&c, &v)| c as i32 * v as i32)
            .sum();
        let sum: i32 = x.iter().map(|&v| v as i32).sum();
        assert_eq!(dot_i2s(&w[..k / 4], &x, sum), want);
    }

    #[test]
    fn packed_gemm_matches_rows() {
        let mut s = 11u32;
        let mut rnd = || {
            s = s.wrapping_mul(747796405).wrapping_add(2891336453);
            s >> 16
        };
        let (rows, k, n) = (7, 256, 3);
        let codes: Vec<i8> = (0..rows * k).map(|_| (rnd() % 3) as i8 - 1).collect();
        let mut w = Vec::new();
        i2s::encode(&codes, 1.0, &mut w);
        w.truncate(rows * k / 4);
        let p = Packed::from_i2s(&w, rows, k).unwrap();
        assert_eq!(p.groups(), 2);
        assert_eq!(p.canonical_row(5), w[5 * k / 4..6 * k / 4].to_vec());
        let x: Vec<i8> = (0..n * k).map(|_| (rnd() % 256) as u8 as i8).collect();
        let sums: Vec<i32> = x
            .chunks(k)
            .map(|r| r.iter().map(|&v| v as i32).sum())
            .collect();
        let mut out = vec![0i32; n * 8];
        i2s_gemm(&p, 0, 2, &x, &sums, &mut out);
        for t in 0..n {
            for m in 0..8 {
                let want = if m < rows {
                    dot_i2s(
                        &w[m * k / 4..(m + 1) * k / 4],
                        &x[t * k..(t + 1) * k],
                        sums[t],
                    )
                } else {
                    0
                };
                assert_eq!(out[t * 8 + m], want, "t {} m {}", t, m);
            }
        }
    }

    #[test]
    fn quantize_half_even() {
        // max 127 → a = 1; 0.5 → 0, 1.5 → 2, -2.5 → -2
        let x = [127.0f32, 0.5, 1.5, -2.5];
        let mut q = [0i8; 4];
        let (a, sum) = quantize_act(&x, &mut q);
        assert_eq!(a, 1.0);
        assert_eq!(q, [127, 0, 2, -2]);
        assert_eq!(sum, 127);
        // all-zero row uses the 1e-5 floor
        let (a, _) = quantize_act(&[0.0; 4], &mut q);
        assert_eq!(a, 127.0 / 1e-5);
    }
}
