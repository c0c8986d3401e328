//! Ternary weights (I2_S, and TQ2_0 / TQ1_0 with one scale): repacked at
//! load into [`Packed`] (the file stays canonical; the mapped pages of an
//! I2_S tensor are released once copied), multiplied as BitLinear with
//! int8 activations per token by the ternary driver.

use super::{float, ActQuant, Acts, Format, Linear, Source, Weight};
use crate::kernels::matmul::with_i32;
use crate::kernels::ternary::{self, Packed, GROUP, QK};
use crate::kernels::Kernel;
use crate::quant::{i2s, tq, GgmlType};
use anyhow::{bail, Context as _, Result};

pub(super) const FORMAT: Format = Format {
    name: "ternary",
    types: &[GgmlType::I2S, GgmlType::TQ2_0, GgmlType::TQ1_0],
    load,
};

/// Packed ternary codes and the tensor scale.
pub struct Ternary {
    data: Packed,
    scale: f32,
    ty: GgmlType,
}

impl Ternary {
    /// Canonical I2_S bytes of `rows × cols` codes (no scale tail) and the
    /// tensor scale.
    pub fn from_i2s(canonical: &[u8], rows: usize, cols: usize, scale: f32) -> Result<Ternary> {
        Ok(Ternary {
            data: Packed::from_i2s(canonical, rows, cols)?,
            scale,
            ty: GgmlType::I2S,
        })
    }
}

fn load(src: &Source, act: ActQuant, warnings: &mut Vec<String>) -> Result<Weight> {
    // Ternary weights only come with BitLinear activations (bitnet.cpp's
    // I8_S pairing for I2_S is the same per-tensor int8 scheme).
    let _ = act;
    let (name, rows, cols) = (src.name(), src.rows, src.cols);
    let data = src.data();
    let n = rows
        .checked_mul(cols)
        .ok_or_else(|| anyhow::anyhow!("tensor {}: {}×{} is too large", name, rows, cols))?;
    match src.info.ty {
        GgmlType::I2S => {
            if !cols.is_multiple_of(i2s::BLOCK) {
                bail!(
                    "tensor {}: I2_S rows of {} values are not a multiple of 128",
                    name,
                    cols
                );
            }
            let scale = i2s::validate(data, n).with_context(|| format!("tensor {}", name))?;
            let w = Ternary::from_i2s(&data[..n / 4], rows, cols, scale)
                .with_context(|| format!("tensor {}", name))?;
            // Copied out: the map's pages of this tensor are not read again.
            src.file.release(src.info);
            Ok(Box::new(w))
        }
        ty => {
            let (codes, ds) = if ty == GgmlType::TQ2_0 {
                tq::decode_tq2_0(data)
            } else {
                tq::decode_tq1_0(data)
            }
            .with_context(|| format!("tensor {}", name))?;
            if codes.len() != n {
                bail!(
                    "tensor {}: {} values of {} for {}×{}",
                    name,
                    codes.len(),
                    ty.name(),
                    rows,
                    cols
                );
            }
            // Decoded: the map's pages of this tensor are not read again.
            src.file.release(src.info);
            let per_block = tq::QK_K;
            let mut scale = None;
            let mut uniform = true;
            for (bi, &d) in ds.iter().enumerate() {
                if !d.is_finite() {
                    bail!("tensor {}: block {} has a non-finite scale", name, bi);
                }
                if codes[bi * per_block..(bi + 1) * per_block]
                    .iter()
                    .all(|&c| c == 0)
                {
                    continue;
                }
                match scale {
                    None => scale = Some(d),
                    Some(s) if s == d => {}
                    Some(_) => uniform = false,
                }
            }
            if uniform {
                from_codes(&codes, scale.unwrap_or(0.0), rows, cols, ty)
            } else {
                warnings.push(format!(
                    "{}: {} blocks have different scales; running it as float weights",
                    name,
                    ty.name()
                ));
                let data = codes
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| c as f32 * ds[i / per_block])
                    .collect();
                let mut f = float::Float::owned(data, rows, cols, ty, ActQuant::BitLinear);
                f.ternary = true;
                Ok(Box::new(f))
            }
        }
    }
}

/// A BitLinear matrix from ternary codes (`rows × cols`, row-major) and one
/// scale, loaded from a `ty` tensor: packed for the ternary kernels when its
/// rows hold whole I2_S blocks, else run as float weights `code · scale`.
pub(super) fn from_codes(
    codes: &[i8],
    scale: f32,
    rows: usize,
    cols: usize,
    ty: GgmlType,
) -> Result<Weight> {
    if !cols.is_multiple_of(i2s::BLOCK) {
        let data = codes.iter().map(|&c| c as f32 * scale).collect();
        let mut f = float::Float::owned(data, rows, cols, ty, ActQuant::BitLinear);
        f.ternary = true;
        return Ok(Box::new(f));
    }
    let n = rows * cols;
    let mut packed = Vec::with_capacity(n / 4 + i2s::TAIL);
    i2s::encode(codes, 0.0, &mut packed);
    packed.truncate(n / 4);
    let mut w = Ternary::from_i2s(&packed, rows, cols, scale)?;
    w.ty = ty;
    Ok(Box::new(w))
}

impl Linear for Ternary {
    fn rows(&self) -> usize {
        self.data.rows()
    }
    fn cols(&self) -> usize {
        self.data.cols()
    }
    fn ty(&self) -> GgmlType {
        self.ty
    }
    fn ternary(&self) -> bool {
        true
    }
    fn bytes(&self) -> usize {
        self.data.len()
    }
    fn stream(&self) -> &[u8] {
        self.data.group_bytes(0, self.data.groups())
    }
    fn row(&self, i: usize, out: &mut [f32]) {
        let cols = self.cols();
        let row = self.data.canonical_row(i);
        for (wb, ob) in row.chunks_exact(32).zip(out.chunks_exact_mut(QK)) {
            for (j, &byte) in wb.iter().enumerate() {
                for f in 0..4 {
                    let code = (byte >> (6 - 2 * f)) & 3;
                    ob[32 * f + j] = (code.min(2) as f32 - 1.0) * self.scale;
                }
            }
        }
        debug_assert_eq!(out.len(), cols);
    }
    fn prepare(&self, kern: &Kernel, x: &Acts) {
        // Both before the tasks start: made lazily inside the region, the
        // first task would quantize while the other threads' first tasks
        // park on the cell (and take ~60 µs each to wake).
        x.int8(kern);
        x.int8_tiles(kern);
    }
    fn matmul_rows(&self, kern: &Kernel, x: &Acts, m0: usize, outs: &mut [&mut [f32]]) {
        let n = x.n();
        let qb = x.int8(kern);
        let tiles = x.int8_tiles(kern);
        let g0 = m0 / GROUP;
        let g1 = (m0 + outs[0].len()).div_ceil(GROUP);
        let ld = GROUP * (g1 - g0);
        with_i32(n * ld, |s| {
            let acts = ternary::Acts::with_tiles(kern, &qb.q, &qb.sums, qb.k, tiles);
            ternary::gemm(kern, &self.data, g0, g1, &acts, s);
            for (t, o) in outs.iter_mut().enumerate() {
                let f = self.scale / qb.a[t];
                for (dst, &v) in o.iter_mut().zip(&s[t * ld..]) {
                    *dst = v as f32 * f;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `prepare` makes everything `matmul_rows` reads: made lazily inside
    /// the parallel region, the other threads' first tasks would park on
    /// the cell while one task quantizes.
    #[test]
    fn prepare_quantizes_before_the_tasks() {
        for kern in crate::kernels::all_variants() {
            let (rows, cols) = (8, 256);
            let w = Ternary::from_i2s(&vec![0x6Au8; rows * cols / 4], rows, cols, 0.5).unwrap();
            for n in [1, 4, 100] {
                let x: Vec<f32> = (0..n * cols).map(|i| (i % 7) as f32 - 3.0).collect();
                let acts = Acts::new(&x, cols);
                w.prepare(kern, &acts);
                assert!(acts.int8.get().is_some(), "int8 activations of {n} tokens");
                assert!(acts.tiles.get().is_some(), "token tiles of {n} tokens");
            }
        }
    }
}
