//! Portable reference kernels: every tile and primitive of the table, in
//! plain Rust. The SIMD tables take what they do not provide from here.

use super::layout::Steps;
use super::ternary::{self, TileShape, BLOCK_BYTES, GROUP, GROUP_BLOCK_BYTES, QK};
use super::{ops, BlockActs, Kernel, Ops, QuantHead};
use crate::quant::{q6_k, q8_0};
use half::f16;

/// The reference function table.
pub const OPS: Ops = Ops {
    i2s_packed,
    i2s_streams: None,
    i2s_tile,
    i2s_shape: SHAPE,
    i2s_panel_min_tokens: super::ternary::PANEL_MIN_TOKENS,
    i2s_unpack: ternary::unpack_generic,
    f16_tile,
    f32_tile,
    f16_streams: None,
    f32_streams: None,
    q8_0_tile,
    q6_k_tile,
    q6_k_streams: None,
    q8_0_block_dots,
    q6_k_block_dots,
    quantize_act,
    dot_f32,
    dot_f16,
    axpy_f16,
    axpy_f32,
    attn_scores,
    attn_values,
    attn_scores_group: None,
    attn_values_group: None,
    softmax,
};

/// The reference kernel.
pub static SCALAR: Kernel = Kernel::new("scalar", "scalar", OPS);

/// The reference tile shape (any shape works for plain loops).
const SHAPE: TileShape = TileShape {
    rows: 4,
    tokens: 4,
    lane: 32,
};

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

/// Reference [`ternary::PackedTile`].
///
/// # Safety
/// As the type's contract: `w` holds `nb` runs, `x` `t` rows of `k`, `out`
/// rows `u · ld + 0..4` for `u < t`.
unsafe fn i2s_packed(
    w: *const u8,
    nb: usize,
    x: *const i8,
    k: usize,
    t: usize,
    out: *mut i32,
    ld: usize,
) {
    // SAFETY: the extents the caller guarantees.
    let w = std::slice::from_raw_parts(w, nb * GROUP_BLOCK_BYTES);
    for u in 0..t {
        let xu = std::slice::from_raw_parts(x.add(u * k), nb * QK);
        for r in 0..GROUP {
            let mut acc = 0i32;
            for b in 0..nb {
                let wb = &w[b * GROUP_BLOCK_BYTES + r * BLOCK_BYTES..][..BLOCK_BYTES];
                acc += block_dot(wb, &xu[b * QK..(b + 1) * QK]);
            }
            *out.add(u * ld + r) = acc;
        }
    }
}

/// Reference [`ternary::CodeTile`] for [`SHAPE`].
///
/// # Safety
/// As the type's contract.
unsafe fn i2s_tile(c: *const u8, x: *const i8, steps: usize, t: usize, out: *mut i32, ld: usize) {
    let (rr, l) = (SHAPE.rows, SHAPE.lane);
    // SAFETY: the extents the caller guarantees.
    let c = std::slice::from_raw_parts(c, steps * rr * l);
    let x = std::slice::from_raw_parts(x, steps * t * l);
    for u in 0..t {
        for r in 0..rr {
            let mut acc = 0i32;
            for s in 0..steps {
                let cs = &c[(s * rr + r) * l..][..l];
                let xs = &x[(s * t + u) * l..][..l];
                acc += cs
                    .iter()
                    .zip(xs)
                    .map(|(&a, &b)| a as i32 * b as i32)
                    .sum::<i32>();
            }
            *out.add(u * ld + r) = acc;
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

fn attn_scores(k: ops::Kv, stride: usize, off: usize, q: &[f32], scale: f32, scores: &mut [f32]) {
    ops::scores_with(dot_f16, dot_f32, k, stride, off, q, scale, scores)
}

fn attn_values(v: ops::Kv, stride: usize, off: usize, p: &[f32], out: &mut [f32]) {
    ops::values_with(axpy_f16, axpy_f32, v, stride, off, p, out)
}

/// Reference softmax (`Kernel::softmax`): max, `libm::expf` and sum in
/// index order, then one division per value.
pub(crate) fn softmax(x: &mut [f32]) {
    let mx = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = libm::expf(*v - mx);
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// Reference [`super::float::Tile`] over f16 rows: each dot is [`dot_f16`].
///
/// # Safety
/// As the type's contract.
unsafe fn f16_tile(
    w: *const u8,
    d: usize,
    r: usize,
    x: *const f32,
    t: usize,
    out: *mut f32,
    ld: usize,
) {
    for j in 0..r {
        // SAFETY: row j of `d` f16 values and token u of `d` f32 values lie
        // inside the caller's extents.
        let row = std::slice::from_raw_parts((w as *const f16).add(j * d), d);
        for u in 0..t {
            *out.add(u * ld + j) = dot_f16(row, std::slice::from_raw_parts(x.add(u * d), d));
        }
    }
}

/// Reference [`super::float::Tile`] over f32 rows: each dot is [`dot_f32`].
///
/// # Safety
/// As the type's contract.
unsafe fn f32_tile(
    w: *const u8,
    d: usize,
    r: usize,
    x: *const f32,
    t: usize,
    out: *mut f32,
    ld: usize,
) {
    for j in 0..r {
        // SAFETY: as in `f16_tile`.
        let row = std::slice::from_raw_parts((w as *const f32).add(j * d), d);
        for u in 0..t {
            *out.add(u * ld + j) = dot_f32(row, std::slice::from_raw_parts(x.add(u * d), d));
        }
    }
}

/// Reference [`Kernel::q8_0_block_dots`].
pub fn q8_0_block_dots(w: &[u8], a: &[i8], out: &mut [i32]) {
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

/// Reference [`Kernel::q6_k_block_dots`] (straight from the codes, in
/// tern's load-time layout; `bsums` is not needed here, the SIMD kernels
/// use it).
pub fn q6_k_block_dots(w: &[u8], a: &[i8], _bsums: &[i16], out: &mut [i32]) {
    for ((wb, ab), o) in w
        .chunks_exact(q6_k::BLOCK_BYTES)
        .zip(a.chunks_exact(q6_k::QK_K))
        .zip(out.iter_mut())
    {
        // Codes and quants in the same lane order (`q6_k::lane_position`):
        // each sub-block's sum over its sixteen positions, then the scales.
        let q = q6_k::lane_codes(wb);
        let mut sums = [0i32; 16];
        for (p, (&c, &x)) in q.iter().zip(ab).enumerate() {
            sums[q6_k::lane_sub_block(p)] += (c as i32 - 32) * x as i32;
        }
        *o = sums
            .iter()
            .enumerate()
            .map(|(j, s)| wb[q6_k::SC_OFF + j] as i8 as i32 * s)
            .sum();
    }
}

/// Reference quantized product of one row and token: the block dots summed
/// in block order as `Σ (d_w · d_x) · dot` in f32.
fn quant_dot(kind: QuantHead, row: &[u8], x: &BlockActs, t: usize, buf: &mut [i32]) -> f32 {
    let wd = |wb: &[u8]| match kind {
        QuantHead::Q8_0 => f16::from_le_bytes([wb[0], wb[1]]).to_f32(),
        QuantHead::Q6K => q6_k::block_d(wb),
    };
    match kind {
        QuantHead::Q8_0 => q8_0_block_dots(row, x.row(t), buf),
        QuantHead::Q6K => q6_k_block_dots(row, x.row(t), x.sums16(t), buf),
    }
    let mut s = 0f32;
    for ((wb, &dx), &dot) in row
        .chunks_exact(kind.block_bytes())
        .zip(x.scales(t))
        .zip(buf.iter())
    {
        s += (wd(wb) * dx) * dot as f32;
    }
    s
}

/// Reference [`super::qhead::Tile`] for either block format: each row's
/// blocks gathered into one row, then [`quant_dot`].
///
/// # Safety
/// As the type's contract.
#[allow(clippy::too_many_arguments)]
unsafe fn quant_tile(
    kind: QuantHead,
    w: *const u8,
    steps: Steps,
    r: usize,
    x: &BlockActs,
    t0: usize,
    t: usize,
    out: *mut f32,
    ld: usize,
) {
    let (nb, bb) = (x.k / kind.block(), kind.block_bytes());
    let mut buf = vec![0i32; nb];
    let mut row = vec![0u8; nb * bb];
    for j in 0..r {
        for (b, blk) in row.chunks_exact_mut(bb).enumerate() {
            // SAFETY: block b of row j lies where `steps` says, inside the
            // caller's extent.
            let src = std::slice::from_raw_parts(w.add(j * steps.row + b * steps.block), bb);
            blk.copy_from_slice(src);
        }
        for u in 0..t {
            *out.add(u * ld + j) = quant_dot(kind, &row, x, t0 + u, &mut buf);
        }
    }
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
    // SAFETY: the caller's contract is the tile's.
    quant_tile(QuantHead::Q8_0, w, steps, r, x, t0, t, out, ld)
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
    // SAFETY: the caller's contract is the tile's.
    quant_tile(QuantHead::Q6K, w, steps, r, x, t0, t, out, ld)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Packed;
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
        let (rows, k) = (7, 256);
        let codes: Vec<i8> = (0..rows * k).map(|_| (rnd() % 3) as i8 - 1).collect();
        let mut w = Vec::new();
        i2s::encode(&codes, 1.0, &mut w);
        w.truncate(rows * k / 4);
        let p = Packed::from_i2s(&w, rows, k).unwrap();
        assert_eq!(p.groups(), 2);
        assert_eq!(p.canonical_row(5), w[5 * k / 4..6 * k / 4].to_vec());
        // Both paths: the packed tiles (3 tokens) and the panels (9).
        for n in [3, 9] {
            let x: Vec<i8> = (0..n * k).map(|_| (rnd() % 256) as u8 as i8).collect();
            let sums: Vec<i32> = x
                .chunks(k)
                .map(|r| r.iter().map(|&v| v as i32).sum())
                .collect();
            let mut out = vec![0i32; n * 8];
            SCALAR.i2s_gemm(&p, 0, 2, &x, &sums, &mut out);
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
                    assert_eq!(out[t * 8 + m], want, "n {} t {} m {}", n, t, m);
                }
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
