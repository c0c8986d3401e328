//! ggml's Q4_0 (type 2): blocks of 32 values, an f16 scale `d` then 16
//! bytes; byte `j` holds element `j` in its low nibble and element `j + 16`
//! in its high nibble, value = `d · (q − 8)`. Mainline llama-quantize writes
//! it for TQ2_0 / TQ1_0 models' tensors whose rows are not whole 256-blocks
//! (e.g. an `ffn_down` of a width that is not a multiple of 256).
//!
//! Quantization follows ggml's `quantize_row_q4_0_ref`: `max` = the value of
//! largest magnitude (first one on ties, sign kept), `d = max / −8`,
//! `id = 1/d` (0 when `d` is 0), `q = min(15, trunc(x·id + 8.5))`.

use anyhow::{bail, Result};
use half::f16;

/// Values per block.
pub const QK4_0: usize = 32;
/// Bytes per block: f16 scale + 16 bytes of nibbles.
pub const BLOCK_BYTES: usize = 2 + QK4_0 / 2;

/// Quantize `x` (a multiple of 32 values) and append the blocks to `out`.
pub fn quantize(x: &[f32], out: &mut Vec<u8>) -> Result<()> {
    if !x.len().is_multiple_of(QK4_0) {
        bail!("Q4_0 needs a multiple of 32 values, got {}", x.len());
    }
    for xb in x.chunks_exact(QK4_0) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in xb {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        for j in 0..QK4_0 / 2 {
            // `as u8` of a value in [0, 16.5): truncation toward zero, like
            // the C `(int8_t)` cast on these non-negative values.
            let q = |v: f32| ((v * id + 8.5) as u8).min(15);
            out.push(q(xb[j]) | (q(xb[j + QK4_0 / 2]) << 4));
        }
    }
    Ok(())
}

/// Dequantize whole blocks into `out` (`data.len() / 18 · 32` values).
pub fn dequantize(data: &[u8], out: &mut [f32]) {
    for (b, o) in data
        .chunks_exact(BLOCK_BYTES)
        .zip(out.chunks_exact_mut(QK4_0))
    {
        let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
        for (j, &q) in b[2..].iter().enumerate() {
            o[j] = d * ((q & 0x0f) as f32 - 8.0);
            o[j + QK4_0 / 2] = d * ((q >> 4) as f32 - 8.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ternary_block_round_trip() {
        // A ternary block whose first largest value is negative: -s, +s map
        // to q 0 and 16 → 15, i.e. -s and 7s/8 (Q4_0 cannot hold +s there).
        let s = 0.5f32;
        let mut x = [0f32; 32];
        x[0] = -s;
        x[1] = s;
        x[20] = -s;
        let mut b = Vec::new();
        quantize(&x, &mut b).unwrap();
        assert_eq!(b.len(), BLOCK_BYTES);
        let mut y = [0f32; 32];
        dequantize(&b, &mut y);
        assert_eq!((y[0], y[1], y[2], y[20]), (-s, 7.0 * s / 8.0, 0.0, -s));
        assert!(quantize(&x[..31], &mut b).is_err());
    }
}
