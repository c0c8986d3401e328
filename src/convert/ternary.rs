//! The three checkpoint kinds (docs §3) and their exact arithmetic (§2).

use anyhow::{bail, Result};
use rayon::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TernaryKind {
    /// Continuous master weights: absmean.
    Continuous,
    /// Already ternary `{-s, 0, +s}`: kept exactly.
    Ternary,
    /// Offline packed uint8 + weight_scale: `W = T / weight_scale`.
    Packed,
}

impl TernaryKind {
    pub fn name(self) -> &'static str {
        match self {
            TernaryKind::Continuous => "absmean",
            TernaryKind::Ternary => "ternary",
            TernaryKind::Packed => "packed",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Ternarized {
    pub codes: Vec<i8>,
    pub scale: f32,
    pub kind: TernaryKind,
    pub zeros: usize,
}

fn count_zeros(codes: &[i8]) -> usize {
    codes.par_iter().filter(|&&c| c == 0).count()
}

/// Classify a float tensor: at most three values `{-s, 0, +s}` means already
/// ternary (kept exactly); anything else gets the absmean rule.
pub fn ternarize_float(w: &[f32]) -> Ternarized {
    let m = w.par_iter().map(|x| x.abs()).reduce(|| 0f32, f32::max);
    let ternary = m > 0.0 && w.par_iter().all(|&x| x == 0.0 || x.abs() == m);
    if ternary {
        let codes: Vec<i8> = w
            .par_iter()
            .map(|&x| {
                if x == 0.0 {
                    0
                } else if x > 0.0 {
                    1
                } else {
                    -1
                }
            })
            .collect();
        let zeros = count_zeros(&codes);
        return Ternarized {
            codes,
            scale: m,
            kind: TernaryKind::Ternary,
            zeros,
        };
    }
    // The sum runs sequentially: its rounding order is part of the exact result.
    let sum: f64 = w.iter().map(|&x| (x as f64).abs()).sum();
    let s = (sum / w.len().max(1) as f64).max(1e-5);
    let codes: Vec<i8> = w
        .par_iter()
        .map(|&x| (x as f64 / s).round_ties_even().clamp(-1.0, 1.0) as i8)
        .collect();
    let zeros = count_zeros(&codes);
    Ternarized {
        codes,
        scale: s as f32,
        kind: TernaryKind::Continuous,
        zeros,
    }
}

/// Unpack an offline-packed projection of `rows × cols` (stored as
/// `rows/4 × cols` bytes): byte `b` at packed row `r`, column `c` holds
/// `T[i·R + r, c] = ((b >> 2i) & 3) - 1` for i = 0..3, R = rows / 4.
pub fn unpack_packed(
    data: &[u8],
    rows: usize,
    cols: usize,
    weight_scale: f32,
) -> Result<Ternarized> {
    let r4 = rows / 4;
    if !rows.is_multiple_of(4) || data.len() != r4 * cols {
        bail!(
            "packed data has {} bytes, expected {} × {}",
            data.len(),
            r4,
            cols
        );
    }
    if !(weight_scale.is_finite() && weight_scale != 0.0) {
        bail!(
            "weight_scale {} is not a finite non-zero number",
            weight_scale
        );
    }
    let mut codes = vec![0i8; rows * cols];
    for r in 0..r4 {
        for c in 0..cols {
            let b = data[r * cols + c];
            for i in 0..4 {
                let q = (b >> (2 * i)) & 3;
                if q == 3 {
                    bail!(
                        "packed byte at row {} column {} holds the invalid code 3",
                        r,
                        c
                    );
                }
                codes[(i * r4 + r) * cols + c] = q as i8 - 1;
            }
        }
    }
    let zeros = count_zeros(&codes);
    Ok(Ternarized {
        codes,
        scale: (1.0f64 / weight_scale as f64) as f32,
        kind: TernaryKind::Packed,
        zeros,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_ternary_keeps_scale() {
        // Pitfall 8: absmean would give s·(1 - sparsity).
        let s = 0.0625f32;
        let w = [s, 0.0, -s, 0.0, 0.0, s];
        let t = ternarize_float(&w);
        assert_eq!(t.kind, TernaryKind::Ternary);
        assert_eq!(t.scale, s);
        assert_eq!(t.codes, vec![1, 0, -1, 0, 0, 1]);
        assert_eq!(t.zeros, 3);
    }

    #[test]
    fn absmean() {
        let w = [0.5f32, -1.5, 0.25, 2.0];
        let t = ternarize_float(&w);
        assert_eq!(t.kind, TernaryKind::Continuous);
        assert_eq!(t.scale, 1.0625);
        assert_eq!(t.codes, vec![0, -1, 0, 1]);
        // exactly half rounds to even: 0.5 / 1.0 → 0
        let t = ternarize_float(&[0.5, 1.5, -1.0, -1.0]);
        assert_eq!(t.scale, 1.0);
        assert_eq!(t.codes, vec![0, 1, -1, -1]);
    }

    #[test]
    fn packed_layout() {
        // rows 8, cols 1: R = 2; byte0 (row 0) codes i=0..3 → rows 0,2,4,6.
        let b0 = 2 | (1 << 2) | (2 << 6); // code 0 (= -1) at bits 4..5
        let b1 = 1 | (1 << 2) | (1 << 4); // code 0 (= -1) at bits 6..7
        let t = unpack_packed(&[b0, b1], 8, 1, 4.0).unwrap();
        assert_eq!(t.codes, vec![1, 0, 0, 0, -1, 0, 1, -1]);
        assert_eq!(t.scale, 0.25);
        assert!(unpack_packed(&[0xff, 0], 8, 1, 4.0).is_err());
        assert!(unpack_packed(&[0, 0], 8, 1, 0.0).is_err());
    }
}
