//! ggml's Q8_0 (type 8): blocks of 32 values, each an f16 scale `d`
//! followed by 32 signed bytes, value = `d · q`.
//!
//! Quantization follows ggml's reference `quantize_row_q8_0_ref`, the
//! function llama-quantize writes files with, and gguf-py's numpy Q8_0
//! (what `convert_hf_to_gguf.py --outtype q8_0` writes), which is
//! bit-exact with it: `amax = max |x|`, `d = amax / 127` in f32, stored
//! rounded to f16 (nearest, ties to even); `id = 1 / d` from the *unrounded*
//! `d` (0 when `d` is 0); `q = roundf(x · id)`, i.e. rounded half away from
//! zero (`np_roundf` in gguf-py; `f32::round` here) — not numpy's
//! half-to-even `np.round`. ggml's SIMD `quantize_row_q8_0` (used for the
//! activations of a dot product on x86) differs from the reference in the
//! last bit on rare ties (it rounds `x · (127 / amax)` half to even); tern
//! uses the reference rule everywhere, for the file and for activations.

use half::f16;

/// Values per block.
pub const QK8_0: usize = 32;
/// Bytes per block: f16 scale + 32 quants.
pub const BLOCK_BYTES: usize = 2 + QK8_0;

/// ggml's `MAX(a, b)` = `a > b ? a : b` (so NaN handling matches too).
#[inline]
fn cmax(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// One block: the f16 scale and the quants.
#[inline]
pub fn quantize_block(x: &[f32], q: &mut [i8]) -> f16 {
    debug_assert_eq!(x.len(), QK8_0);
    let mut amax = 0f32;
    for &v in x {
        amax = cmax(amax, v.abs());
    }
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (qi, &v) in q.iter_mut().zip(x) {
        // |x · id| ≤ 127 (up to rounding); `as` saturates anyway.
        *qi = (v * id).round() as i8;
    }
    f16::from_f32(d)
}

/// Quantize `x` (a multiple of 32 values) and append the blocks to `out`.
pub fn quantize(x: &[f32], out: &mut Vec<u8>) {
    assert!(
        x.len().is_multiple_of(QK8_0),
        "Q8_0 needs a multiple of 32 values"
    );
    out.reserve(x.len() / QK8_0 * BLOCK_BYTES);
    let mut q = [0i8; QK8_0];
    for xb in x.chunks_exact(QK8_0) {
        let d = quantize_block(xb, &mut q);
        out.extend_from_slice(&d.to_le_bytes());
        out.extend(q.iter().map(|&v| v as u8));
    }
}

/// Quantize activations for a Q8_0 dot product: per block of 32, the
/// quants into `qs` and the scale (rounded to f16, as ggml stores it) into
/// `ds`. Every quant is in -127..=127.
pub fn quantize_acts(x: &[f32], qs: &mut [i8], ds: &mut [f32]) {
    assert!(x.len().is_multiple_of(QK8_0) && qs.len() == x.len());
    assert_eq!(ds.len(), x.len() / QK8_0);
    for ((xb, qb), d) in x
        .chunks_exact(QK8_0)
        .zip(qs.chunks_exact_mut(QK8_0))
        .zip(ds.iter_mut())
    {
        *d = quantize_block(xb, qb).to_f32();
    }
}

/// Dequantize whole blocks (`data.len()` = `out.len() / 32 · 34`).
pub fn dequantize(data: &[u8], out: &mut [f32]) {
    assert!(out.len().is_multiple_of(QK8_0));
    assert_eq!(data.len(), out.len() / QK8_0 * BLOCK_BYTES);
    for (b, o) in data
        .chunks_exact(BLOCK_BYTES)
        .zip(out.chunks_exact_mut(QK8_0))
    {
        let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
        for (v, &q) in o.iter_mut().zip(&b[2..]) {
            *v = q as i8 as f32 * d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_half_away_from_zero() {
        // amax 127 → d = 1, id = 1: 0.5 → 1, -2.5 → -3 (half-even would give 0, -2).
        let mut x = [0f32; 32];
        x[0] = 127.0;
        x[1] = 0.5;
        x[2] = -2.5;
        x[3] = 1.5;
        let mut out = Vec::new();
        quantize(&x, &mut out);
        assert_eq!(out.len(), BLOCK_BYTES);
        assert_eq!(f16::from_le_bytes([out[0], out[1]]).to_f32(), 1.0);
        assert_eq!(&out[2..6], &[127u8, 1, (-3i8) as u8, 2]);
        let mut back = [0f32; 32];
        dequantize(&out, &mut back);
        assert_eq!(back[2], -3.0);
    }

    #[test]
    fn zero_block() {
        let x = [0f32; 64];
        let mut out = Vec::new();
        quantize(&x, &mut out);
        assert!(out.iter().all(|&b| b == 0));
    }
}
