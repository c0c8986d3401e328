//! Float weights (F32, F16, BF16; Q4_0 / Q4_K and ternary blocks with
//! differing scales, dequantized). A float projection whose values are
//! exactly ternary goes to the ternary format instead. F16 is copied from
//! the file as it is, the others are held as f32, both in huge-page memory
//! ([`HugeBuf`]; the file's pages are released as they are copied). With
//! BitLinear activations the int8 quantized activations are multiplied as
//! floats and divided by the token's scale; with native ones the f32
//! activations directly (an output head).

use super::{ternary, ActQuant, Acts, Format, Linear, Source, Weight};
use crate::kernels::float::Rows;
use crate::kernels::matmul::float_block;
use crate::kernels::memory::HugeBuf;
use crate::kernels::Kernel;
use crate::quant::GgmlType;
use anyhow::{anyhow, bail, Result};
use half::f16;

pub(super) const FORMAT: Format = Format {
    name: "float",
    types: &[
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4K,
    ],
    load,
};

enum Store {
    /// F16 rows.
    F16(HugeBuf),
    /// F32 rows.
    F32(HugeBuf),
}

/// A float matrix and the activations it takes.
pub struct Float {
    store: Store,
    rows: usize,
    cols: usize,
    ty: GgmlType,
    act: ActQuant,
    /// The values are ternary codes times per-block scales (see
    /// [`Linear::ternary`]).
    pub(super) ternary: bool,
}

impl Float {
    /// f32 values of `rows × cols` (row-major) from a `ty` tensor.
    pub fn owned(data: Vec<f32>, rows: usize, cols: usize, ty: GgmlType, act: ActQuant) -> Float {
        assert_eq!(data.len(), rows * cols, "float matrix size");
        Float {
            store: Store::F32(HugeBuf::copy_of(bytemuck::cast_slice(&data))),
            rows,
            cols,
            ty,
            act,
            ternary: false,
        }
    }

    /// f16 values of `rows × cols` (row-major).
    pub fn f16(data: Vec<f16>, rows: usize, cols: usize, act: ActQuant) -> Float {
        assert_eq!(data.len(), rows * cols, "float matrix size");
        Float {
            store: Store::F16(HugeBuf::copy_of(bytemuck::cast_slice(&data))),
            rows,
            cols,
            ty: GgmlType::F16,
            act,
            ternary: false,
        }
    }

    fn rows_view(&self) -> Rows<'_> {
        // HugeBuf data is 8-byte aligned and a whole number of elements.
        match &self.store {
            Store::F16(b) => Rows::F16(bytemuck::cast_slice(b.bytes())),
            Store::F32(b) => Rows::F32(bytemuck::cast_slice(b.bytes())),
        }
    }
}

fn load(src: &Source, act: ActQuant, _warnings: &mut Vec<String>) -> Result<Weight> {
    let (rows, cols, ty) = (src.rows, src.cols, src.info.ty);
    let n = rows
        .checked_mul(cols)
        .ok_or_else(|| anyhow!("tensor {}: {}×{} is too large", src.name(), rows, cols))?;
    let want = ty.tensor_bytes(n as u64, cols as u64);
    if want.ok() != Some(src.data().len() as u64) {
        bail!(
            "tensor {}: {} bytes of {} for {}×{} values",
            src.name(),
            src.data().len(),
            ty.name(),
            rows,
            cols
        );
    }
    // f32 values, for the ternary test and for what is held as f32.
    let values = match (ty, act) {
        (GgmlType::F16, ActQuant::Native) => None,
        _ => Some(crate::quant::dequantize(ty, src.data(), n)?),
    };
    if let (ActQuant::BitLinear, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16, Some(v)) =
        (act, ty, &values)
    {
        // A float projection holding only {-s, 0, +s} (a checkpoint saved
        // after quantization) runs on the ternary kernels.
        if let Some((codes, scale)) = crate::quant::exact_ternary(v) {
            src.file.release(src.info);
            return ternary::from_codes(&codes, scale, rows, cols, ty);
        }
    }
    let store = match values {
        // BF16, F32, and the block types of mainline's fallbacks (Q4_0,
        // Q4_K), dequantized once.
        Some(v) if ty != GgmlType::F16 => {
            let b = HugeBuf::copy_of(bytemuck::cast_slice(&v));
            // Converted: the map's pages of this tensor are not read again.
            src.file.release(src.info);
            Store::F32(b)
        }
        // F16 as the file has it (the copy releases the file's pages).
        _ => Store::F16(HugeBuf::copy_of_tensor(src.file, src.info)),
    };
    Ok(Box::new(Float {
        store,
        rows,
        cols,
        ty,
        act,
        ternary: false,
    }))
}

impl Linear for Float {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn ty(&self) -> GgmlType {
        self.ty
    }
    fn ternary(&self) -> bool {
        self.ternary
    }
    fn stream(&self) -> &[u8] {
        match &self.store {
            Store::F16(b) | Store::F32(b) => b.bytes(),
        }
    }
    fn bytes(&self) -> usize {
        match self.rows_view() {
            Rows::F16(w) => w.len() * 2,
            Rows::F32(w) => w.len() * 4,
        }
    }
    fn row(&self, i: usize, out: &mut [f32]) {
        let d = self.cols;
        match self.rows_view() {
            Rows::F16(w) => {
                for (o, x) in out.iter_mut().zip(&w[i * d..(i + 1) * d]) {
                    *o = x.to_f32();
                }
            }
            Rows::F32(w) => out.copy_from_slice(&w[i * d..(i + 1) * d]),
        }
    }
    fn prepare(&self, kern: &Kernel, x: &Acts) {
        if self.act == ActQuant::BitLinear {
            x.int8_f32(kern);
        }
    }
    fn matmul_rows(&self, kern: &Kernel, x: &Acts, v0: usize, outs: &mut [&mut [f32]]) {
        let (n, k) = (x.n(), self.cols);
        let v1 = v0 + outs[0].len();
        // BitLinear: the int8 values as floats, divided by the scale after.
        let bitlinear = self.act == ActQuant::BitLinear;
        let xs = if bitlinear { x.int8_f32(kern) } else { x.f32() };
        let w = self.rows_view();
        float_block(n, v1 - v0, outs, |buf| match w {
            Rows::F16(w) => kern.f16_gemm(w, k, v0, v1, xs, n, buf),
            Rows::F32(w) => kern.f32_gemm(w, k, v0, v1, xs, n, buf),
        });
        if bitlinear {
            for (o, &a) in outs.iter_mut().zip(&x.int8(kern).a) {
                for v in o.iter_mut() {
                    *v /= a;
                }
            }
        }
    }
}
