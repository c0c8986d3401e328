//! ggml's Q4_K (type 12): super-blocks of 256 values, 144 bytes: f16 `d`,
//! f16 `dmin`, 12 bytes of eight 6-bit sub-block scales and mins, 128 bytes
//! of 4-bit quants. Sub-block `s` (32 values) holds
//! `d·sc_s·q − dmin·m_s`; quants of sub-blocks `2j` and `2j+1` share the
//! bytes `32j..32j+32` (low, high nibble). Mainline llama-quantize writes
//! `token_embd.weight` in Q4_K for TQ1_0 / TQ2_0 models; tern reads it
//! (ggml's `dequantize_row_q4_K`, `get_scale_min_k4`).

use half::f16;

/// Values per super-block.
pub const QK_K: usize = 256;
/// Bytes per super-block.
pub const BLOCK_BYTES: usize = 4 + 12 + QK_K / 2;

/// Scale and min (6 bits each) of sub-block `j` from the 12 packed bytes.
fn scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Dequantize whole super-blocks into `out` (`data.len() / 144 · 256` values).
pub fn dequantize(data: &[u8], out: &mut [f32]) {
    for (b, o) in data
        .chunks_exact(BLOCK_BYTES)
        .zip(out.chunks_exact_mut(QK_K))
    {
        let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
        let dmin = f16::from_le_bytes([b[2], b[3]]).to_f32();
        let scales = &b[4..16];
        let qs = &b[16..];
        for j in 0..QK_K / 64 {
            let (sc1, m1) = scale_min(2 * j, scales);
            let (sc2, m2) = scale_min(2 * j + 1, scales);
            let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
            let q = &qs[32 * j..32 * j + 32];
            let o = &mut o[64 * j..64 * j + 64];
            for l in 0..32 {
                o[l] = d1 * (q[l] & 0x0f) as f32 - m1;
                o[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_made_block() {
        let mut b = vec![0u8; BLOCK_BYTES];
        b[0..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        b[2..4].copy_from_slice(&f16::from_f32(0.25).to_le_bytes());
        // Sub-block 0: scale 3, min 2; sub-block 5: scale 33 (0b10_0001), min 18 (0b01_0010).
        b[4] = 3;
        b[4 + 4] = 2;
        b[4 + 1] |= 0b10 << 6; // scale 5, high bits
        b[4 + 5] |= 0b01 << 6; // min 5, high bits
        b[4 + 9] = 0x1 | (0x2 << 4); // scale 5, min 5: low nibbles
        b[16] = 0x07; // q[0] of sub-block 0 = 7
        b[16 + 64 + 1] = 0x90; // q[1] of sub-block 5 (high nibble of bytes 64..96) = 9
        let mut y = vec![0f32; QK_K];
        dequantize(&b, &mut y);
        assert_eq!(y[0], 0.5 * 3.0 * 7.0 - 0.25 * 2.0);
        assert_eq!(y[1], -0.5);
        assert_eq!(y[5 * 32 + 1], 0.5 * 33.0 * 9.0 - 0.25 * 18.0);
        assert_eq!(y[5 * 32], -0.25 * 18.0);
    }
}
