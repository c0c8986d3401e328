//! The three checkpoint kinds (docs §3) and their exact arithmetic (§2).

use anyhow::{bail, Result};
use rayon::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TernaryKind {
    /// Continuous master weights: absmean.
    Continuous,
    /// Already ternary `{-s, 0, +s}`: kept exactly.
    Ternary,
    /// Offline codes (packed uint8, or unpacked float) + weight_scale:
    /// `W = T / weight_scale` or `W = T × weight_scale` by [`ScaleRule`].
    Packed,
}

/// What a checkpoint's stored `weight_scale` means (transformers'
/// `integrations/bitnet.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleRule {
    /// `BitLinear`: the output is divided, `W = T / weight_scale`.
    Divide,
    /// `AutoBitLinear` offline: the output is multiplied, `W = T × weight_scale`.
    Multiply,
}

impl ScaleRule {
    /// The effective per-tensor scale `s` of `W = s·T`, rounded once to f32.
    pub fn tensor_scale(self, weight_scale: f32) -> f32 {
        match self {
            ScaleRule::Divide => (1.0f64 / weight_scale as f64) as f32,
            ScaleRule::Multiply => weight_scale,
        }
    }
    pub fn formula(self) -> &'static str {
        match self {
            ScaleRule::Divide => "W = T / weight_scale",
            ScaleRule::Multiply => "W = T × weight_scale",
        }
    }
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
/// ternary (kept exactly); anything else gets the absmean rule. A NaN or
/// infinite weight is an error (absmean would turn it into a silent 0).
pub fn ternarize_float(w: &[f32]) -> Result<Ternarized> {
    check_finite(w)?;
    if let Some((codes, scale)) = crate::quant::exact_ternary(w) {
        let zeros = count_zeros(&codes);
        return Ok(Ternarized {
            codes,
            scale,
            kind: TernaryKind::Ternary,
            zeros,
        });
    }
    absmean(w)
}

fn check_finite(w: &[f32]) -> Result<()> {
    if let Some(i) = w.par_iter().position_any(|x| !x.is_finite()) {
        bail!("weight {} is {}, not a finite number", i, w[i]);
    }
    Ok(())
}

/// The absmean rule on its own (transformers' online `WeightQuant`, which
/// applies it even to weights that are already ternary):
/// `s = mean|W|` (at least 1e-5), `T = clamp(round_half_even(W / s), -1, 1)`.
/// A NaN or infinite weight is an error.
pub fn absmean(w: &[f32]) -> Result<Ternarized> {
    check_finite(w)?;
    // The sum runs sequentially: its rounding order is part of the exact result.
    let sum: f64 = w.iter().map(|&x| (x as f64).abs()).sum();
    let s = (sum / w.len().max(1) as f64).max(1e-5);
    let codes: Vec<i8> = w
        .par_iter()
        .map(|&x| (x as f64 / s).round_ties_even().clamp(-1.0, 1.0) as i8)
        .collect();
    let zeros = count_zeros(&codes);
    Ok(Ternarized {
        codes,
        scale: s as f32,
        kind: TernaryKind::Continuous,
        zeros,
    })
}

/// Unpack an offline-packed projection of `rows × cols` (stored as
/// `rows/4 × cols` bytes): byte `b` at packed row `r`, column `c` holds
/// `T[i·R + r, c] = ((b >> 2i) & 3) - 1` for i = 0..3, R = rows / 4.
pub fn unpack_packed(
    data: &[u8],
    rows: usize,
    cols: usize,
    weight_scale: f32,
    rule: ScaleRule,
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
    check_weight_scale(weight_scale, rule)?;
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
    Ok(offline(codes, weight_scale, rule))
}

/// Unpacked offline codes: a float tensor holding only -1, 0 and 1, with
/// its `weight_scale` (AutoBitLinear's load hook unpacks to this form).
pub fn float_codes(w: &[f32], weight_scale: f32, rule: ScaleRule) -> Result<Ternarized> {
    check_weight_scale(weight_scale, rule)?;
    let mut codes = Vec::with_capacity(w.len());
    for (i, &x) in w.iter().enumerate() {
        codes.push(match x {
            1.0 => 1,
            -1.0 => -1,
            0.0 => 0,
            _ => bail!(
                "value {} at element {} is not a ternary code (-1, 0, 1), but the tensor has a weight_scale",
                x,
                i
            ),
        });
    }
    Ok(offline(codes, weight_scale, rule))
}

/// Offline codes with their stored `weight_scale`, read by `rule`.
fn offline(codes: Vec<i8>, weight_scale: f32, rule: ScaleRule) -> Ternarized {
    let zeros = count_zeros(&codes);
    Ternarized {
        codes,
        scale: rule.tensor_scale(weight_scale),
        kind: TernaryKind::Packed,
        zeros,
    }
}

/// A `weight_scale` must be finite and positive, and so must the tensor
/// scale `rule` makes of it (a subnormal one has an infinite inverse).
fn check_weight_scale(weight_scale: f32, rule: ScaleRule) -> Result<()> {
    let s = rule.tensor_scale(weight_scale);
    if !(weight_scale.is_finite() && weight_scale > 0.0 && s.is_finite() && s > 0.0) {
        bail!(
            "weight_scale {} is not a finite positive number ({} would make the scale {})",
            weight_scale,
            rule.formula(),
            s
        );
    }
    Ok(())
}

/// Reorder the rows of a Q or K projection (`n_head` heads of `rows /
/// n_head` rows, each row `cols` long) from Hugging Face's rotate-half RoPE
/// layout to llama.cpp's adjacent-pair one: within a head of `d` rows, new
/// row `2j + t` is old row `t·d/2 + j` (llama.cpp's converter:
/// `reshape(n_head, 2, d/2, cols).swapaxes(1, 2)`).
pub fn permute_rope_rows<T: Copy>(
    w: &[T],
    rows: usize,
    cols: usize,
    n_head: usize,
) -> Result<Vec<T>> {
    if n_head == 0 || !rows.is_multiple_of(2 * n_head) || w.len() != rows * cols {
        bail!(
            "cannot permute {} rows of {} for RoPE over {} heads",
            rows,
            cols,
            n_head
        );
    }
    let d = rows / n_head;
    let half = d / 2;
    let mut out = Vec::with_capacity(w.len());
    for h in 0..n_head {
        for j in 0..half {
            for t in 0..2 {
                let old = h * d + t * half + j;
                out.extend_from_slice(&w[old * cols..(old + 1) * cols]);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_ternary_keeps_scale() {
        // Pitfall 8: absmean would give s·(1 - sparsity).
        let s = 0.0625f32;
        let w = [s, 0.0, -s, 0.0, 0.0, s];
        let t = ternarize_float(&w).unwrap();
        assert_eq!(t.kind, TernaryKind::Ternary);
        assert_eq!(t.scale, s);
        assert_eq!(t.codes, vec![1, 0, -1, 0, 0, 1]);
        assert_eq!(t.zeros, 3);
    }

    #[test]
    fn absmean() {
        let w = [0.5f32, -1.5, 0.25, 2.0];
        let t = ternarize_float(&w).unwrap();
        assert_eq!(t.kind, TernaryKind::Continuous);
        assert_eq!(t.scale, 1.0625);
        assert_eq!(t.codes, vec![0, -1, 0, 1]);
        // exactly half rounds to even: 0.5 / 1.0 → 0
        let t = ternarize_float(&[0.5, 1.5, -1.0, -1.0]).unwrap();
        assert_eq!(t.scale, 1.0);
        assert_eq!(t.codes, vec![0, 1, -1, -1]);
    }

    #[test]
    fn packed_layout() {
        // rows 8, cols 1: R = 2; byte0 (row 0) codes i=0..3 → rows 0,2,4,6.
        let b0 = 2 | (1 << 2) | (2 << 6); // code 0 (= -1) at bits 4..5
        let b1 = 1 | (1 << 2) | (1 << 4); // code 0 (= -1) at bits 6..7
        let t = unpack_packed(&[b0, b1], 8, 1, 4.0, ScaleRule::Divide).unwrap();
        assert_eq!(t.codes, vec![1, 0, 0, 0, -1, 0, 1, -1]);
        assert_eq!(t.scale, 0.25);
        let t = unpack_packed(&[b0, b1], 8, 1, 4.0, ScaleRule::Multiply).unwrap();
        assert_eq!(t.scale, 4.0);
        assert!(unpack_packed(&[0xff, 0], 8, 1, 4.0, ScaleRule::Divide).is_err());
        for bad in [0.0, -4.0, f32::INFINITY, f32::NAN, 1e-45] {
            assert!(
                unpack_packed(&[0x55, 0x55], 8, 1, bad, ScaleRule::Divide).is_err(),
                "{bad}"
            );
        }
        assert!(ternarize_float(&[1.0, f32::NAN]).is_err());
        assert!(ternarize_float(&[1.0, f32::INFINITY]).is_err());
    }

    #[test]
    fn unpacked_codes_and_online_absmean() {
        let t = float_codes(&[1.0, 0.0, -1.0, 1.0], 0.02, ScaleRule::Multiply).unwrap();
        assert_eq!((t.codes.as_slice(), t.scale), (&[1i8, 0, -1, 1][..], 0.02));
        assert!(float_codes(&[0.5], 0.02, ScaleRule::Multiply).is_err());
        // Online: an already-ternary tensor still gets s = mean|W|.
        let t = super::absmean(&[0.5, 0.0, -0.5, 0.0]).unwrap();
        assert_eq!((t.codes.as_slice(), t.scale), (&[1i8, 0, -1, 0][..], 0.25));
    }

    #[test]
    fn rope_permutation() {
        // One head of 4 rows, 1 column: [a0 a1 | b0 b1] → [a0 b0 a1 b1].
        assert_eq!(
            permute_rope_rows(&[0, 1, 2, 3], 4, 1, 1).unwrap(),
            vec![0, 2, 1, 3]
        );
        // Two heads of 4 rows, 2 columns.
        let w: Vec<u8> = (0..16).collect();
        let p = permute_rope_rows(&w, 8, 2, 2).unwrap();
        assert_eq!(
            p,
            vec![0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]
        );
        assert!(permute_rope_rows(&w, 8, 2, 3).is_err());
    }
}
