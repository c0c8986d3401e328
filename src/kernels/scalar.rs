//! Portable reference kernels.

use super::Kernel;

pub struct Scalar;

impl Kernel for Scalar {
    fn name(&self) -> &'static str {
        "scalar"
    }
    fn dot_i2s(&self, w: &[u8], x: &[i8], x_sum: i32) -> i32 {
        dot_i2s(w, x, x_sum)
    }
}

/// Reference ternary dot: Σ code·x − Σ x, code = T + 1 ∈ {0, 1, 2}.
pub fn dot_i2s(w: &[u8], x: &[i8], x_sum: i32) -> i32 {
    debug_assert_eq!(w.len() * 4, x.len());
    let mut acc = 0i32;
    for (wb, xb) in w.chunks_exact(32).zip(x.chunks_exact(128)) {
        for (i, &b) in wb.iter().enumerate() {
            acc += ((b >> 6) & 3) as i32 * xb[i] as i32;
            acc += ((b >> 4) & 3) as i32 * xb[32 + i] as i32;
            acc += ((b >> 2) & 3) as i32 * xb[64 + i] as i32;
            acc += (b & 3) as i32 * xb[96 + i] as i32;
        }
    }
    acc - x_sum
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

pub fn dot_f16(a: &[half::f16], b: &[f32]) -> f32 {
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
