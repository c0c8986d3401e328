//! bitnet.cpp's I2_S (type 36) in its canonical x86 layout.
//!
//! Values are flattened row-major and cut into blocks of 128. Within a
//! block, value `j` goes to byte `j % 32` at bit offset `6 - 2 * (j / 32)`,
//! coded `-1 → 0, 0 → 1, +1 → 2`. After the `n / 4` packed bytes comes a
//! 32-byte tail whose first four bytes hold the f32 tensor scale.

use anyhow::{bail, Result};
use rayon::prelude::*;

pub const BLOCK: usize = 128;
pub const BLOCK_BYTES: usize = 32;
pub const TAIL: usize = 32;

/// Byte size of an I2_S tensor of `n` values.
pub fn tensor_bytes(n: usize) -> usize {
    n / 4 + TAIL
}

/// Pack ternary codes (-1, 0, +1; `codes.len()` a multiple of 128) and the
/// tensor scale.
pub fn encode(codes: &[i8], scale: f32, out: &mut Vec<u8>) {
    assert!(
        codes.len().is_multiple_of(BLOCK),
        "I2_S needs a multiple of 128 values"
    );
    let start = out.len();
    out.resize(start + codes.len() / 4, 0);
    out[start..]
        .par_chunks_mut(BLOCK_BYTES)
        .zip(codes.par_chunks(BLOCK))
        .for_each(|(b, block)| {
            for (j, &c) in block.iter().enumerate() {
                let code = (c + 1) as u8;
                b[j % 32] |= code << (6 - 2 * (j / 32));
            }
        });
    out.extend_from_slice(&scale.to_le_bytes());
    out.extend_from_slice(&[0u8; TAIL - 4]);
}

/// Validate an I2_S tensor of `n` values: size, no code 3, finite scale.
/// Returns the scale.
pub fn validate(data: &[u8], n: usize) -> Result<f32> {
    if !n.is_multiple_of(BLOCK) {
        bail!(
            "I2_S tensor of {} values is not a whole number of 128-blocks",
            n
        );
    }
    if data.len() != tensor_bytes(n) {
        bail!(
            "I2_S tensor of {} values must be {} bytes, found {}",
            n,
            tensor_bytes(n),
            data.len()
        );
    }
    let packed = &data[..n / 4];
    // A byte holds code 3 somewhere iff some 2-bit field has both bits set.
    // Searched in parallel by chunks (a per-byte parallel search pays
    // rayon's bookkeeping on every byte), sequentially within one.
    const CHUNK: usize = 1 << 16;
    let bad = |b: &u8| (b & (b >> 1) & 0b0101_0101) != 0;
    if let Some(pos) = packed
        .par_chunks(CHUNK)
        .enumerate()
        .find_map_first(|(i, c)| c.iter().position(bad).map(|p| i * CHUNK + p))
    {
        bail!("I2_S data holds the invalid code 3 at byte {}", pos);
    }
    let s = scale(data, n);
    if !s.is_finite() {
        bail!("I2_S scale is not finite ({})", s);
    }
    Ok(s)
}

/// The tensor scale stored in the tail.
pub fn scale(data: &[u8], n: usize) -> f32 {
    let t = &data[n / 4..n / 4 + 4];
    f32::from_le_bytes([t[0], t[1], t[2], t[3]])
}

/// Unpack to ternary codes (-1, 0, +1). Code 3 (invalid) decodes as 2 -
/// callers validate first.
pub fn decode_codes(data: &[u8], n: usize) -> Vec<i8> {
    let mut out = vec![0i8; n];
    for (bi, block) in out.chunks_exact_mut(BLOCK).enumerate() {
        let b = &data[bi * BLOCK_BYTES..(bi + 1) * BLOCK_BYTES];
        for (j, v) in block.iter_mut().enumerate() {
            let code = (b[j % 32] >> (6 - 2 * (j / 32))) & 3;
            *v = code.min(2) as i8 - 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_bytes() {
        // j = 0 (+1) → byte 0 bits 7..6 = 2; j = 32 (-1) → byte 0 bits 5..4 = 0;
        // every other value 0 → code 1.
        let mut codes = vec![0i8; 128];
        codes[0] = 1;
        codes[32] = -1;
        let mut out = Vec::new();
        encode(&codes, 0.5, &mut out);
        assert_eq!(out.len(), 64);
        assert_eq!(out[0], 0b10_00_01_01);
        assert_eq!(out[1], 0b01_01_01_01);
        assert_eq!(&out[32..36], &0.5f32.to_le_bytes());
        assert!(out[36..].iter().all(|&b| b == 0));
    }

    #[test]
    fn roundtrip_and_validate() {
        let mut x = 12345u32;
        let codes: Vec<i8> = (0..128 * 7)
            .map(|_| {
                x = x.wrapping_mul(1664525).wrapping_add(1013904223);
                ((x >> 24) % 3) as i8 - 1
            })
            .collect();
        let mut out = Vec::new();
        encode(&codes, 1.25, &mut out);
        assert_eq!(validate(&out, codes.len()).unwrap(), 1.25);
        assert_eq!(decode_codes(&out, codes.len()), codes);
        let mut bad = out.clone();
        bad[5] |= 0b11;
        assert!(validate(&bad, codes.len()).is_err());
        let mut nan = out.clone();
        let k = codes.len() / 4;
        nan[k..k + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(validate(&nan, codes.len()).is_err());
        assert!(validate(&out[..out.len() - 1], codes.len()).is_err());
    }
}
