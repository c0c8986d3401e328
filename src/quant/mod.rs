//! Tensor element types: one row per type in [`TYPE_TABLE`] (block size,
//! bytes per block, name), plus the packing code of each ternary format.

pub mod i2s;
pub mod q4_0;
pub mod q4_k;
pub mod q6_k;
pub mod q8_0;
pub mod tq;

use anyhow::{bail, Result};

/// ggml tensor types that tern reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q8_0,
    Q4K,
    Q6K,
    BF16,
    TQ1_0,
    TQ2_0,
    I2S,
}

/// One row of the type table.
#[derive(Debug, Clone, Copy)]
pub struct TypeInfo {
    pub ty: GgmlType,
    /// ggml's numeric id as stored in GGUF.
    pub id: u32,
    pub name: &'static str,
    /// Elements per block (the row length must be a multiple of it).
    pub block: usize,
    /// Bytes per block.
    pub block_bytes: usize,
    /// Extra bytes per *tensor* after the blocks (I2_S keeps its scale there).
    pub tensor_tail: usize,
    /// Whether the type stores ternary weights.
    pub ternary: bool,
}

pub const TYPE_TABLE: &[TypeInfo] = &[
    TypeInfo {
        ty: GgmlType::F32,
        id: 0,
        name: "F32",
        block: 1,
        block_bytes: 4,
        tensor_tail: 0,
        ternary: false,
    },
    TypeInfo {
        ty: GgmlType::F16,
        id: 1,
        name: "F16",
        block: 1,
        block_bytes: 2,
        tensor_tail: 0,
        ternary: false,
    },
    TypeInfo {
        ty: GgmlType::Q4_0,
        id: 2,
        name: "Q4_0",
        block: 32,
        block_bytes: 18,
        tensor_tail: 0,
        ternary: false,
    },
    TypeInfo {
        ty: GgmlType::Q8_0,
        id: 8,
        name: "Q8_0",
        block: 32,
        block_bytes: 34,
        tensor_tail: 0,
        ternary: false,
    },
    TypeInfo {
        ty: GgmlType::Q4K,
        id: 12,
        name: "Q4_K",
        block: 256,
        block_bytes: 144,
        tensor_tail: 0,
        ternary: false,
    },
    TypeInfo {
        ty: GgmlType::Q6K,
        id: 14,
        name: "Q6_K",
        block: 256,
        block_bytes: 210,
        tensor_tail: 0,
        ternary: false,
    },
    TypeInfo {
        ty: GgmlType::BF16,
        id: 30,
        name: "BF16",
        block: 1,
        block_bytes: 2,
        tensor_tail: 0,
        ternary: false,
    },
    TypeInfo {
        ty: GgmlType::TQ1_0,
        id: 34,
        name: "TQ1_0",
        block: 256,
        block_bytes: 54,
        tensor_tail: 0,
        ternary: true,
    },
    TypeInfo {
        ty: GgmlType::TQ2_0,
        id: 35,
        name: "TQ2_0",
        block: 256,
        block_bytes: 66,
        tensor_tail: 0,
        ternary: true,
    },
    TypeInfo {
        ty: GgmlType::I2S,
        id: 36,
        name: "I2_S",
        block: 128,
        block_bytes: 32,
        tensor_tail: 32,
        ternary: true,
    },
];

impl GgmlType {
    pub fn info(self) -> &'static TypeInfo {
        TYPE_TABLE
            .iter()
            .find(|t| t.ty == self)
            .expect("every type has a table row")
    }
    pub fn from_id(id: u32) -> Option<GgmlType> {
        TYPE_TABLE.iter().find(|t| t.id == id).map(|t| t.ty)
    }
    pub fn id(self) -> u32 {
        self.info().id
    }
    pub fn name(self) -> &'static str {
        self.info().name
    }
    pub fn from_name(s: &str) -> Option<GgmlType> {
        let s = s.to_ascii_uppercase().replace('-', "_");
        let s = match s.as_str() {
            "I2S" => "I2_S".to_string(),
            "Q80" => "Q8_0".to_string(),
            "Q40" => "Q4_0".to_string(),
            "Q6K" => "Q6_K".to_string(),
            "Q4K" => "Q4_K".to_string(),
            _ => s,
        };
        TYPE_TABLE.iter().find(|t| t.name == s).map(|t| t.ty)
    }
    /// Byte size of a tensor of `n_elems` elements whose rows hold `row_len`
    /// elements, or an error naming why the shape cannot be held.
    pub fn tensor_bytes(self, n_elems: u64, row_len: u64) -> Result<u64> {
        let info = self.info();
        let b = info.block as u64;
        if row_len == 0 || !row_len.is_multiple_of(b) {
            bail!(
                "{} needs rows whose length is a multiple of {}, got {}",
                info.name,
                b,
                row_len
            );
        }
        if !n_elems.is_multiple_of(row_len) {
            bail!(
                "{} elements is not a whole number of rows of {}",
                n_elems,
                row_len
            );
        }
        let blocks = n_elems / b;
        blocks
            .checked_mul(info.block_bytes as u64)
            .and_then(|x| x.checked_add(info.tensor_tail as u64))
            .ok_or_else(|| anyhow::anyhow!("tensor size overflows"))
    }
}

/// Every element of a tensor of type `ty` as f32 (`n` elements in `data`,
/// whose length the reader has checked against the type table): the one
/// dequantization entry point, a row per type.
pub fn dequantize(ty: GgmlType, data: &[u8], n: usize) -> Result<Vec<f32>> {
    let words = |w: usize| data[..n * w].chunks_exact(w);
    Ok(match ty {
        GgmlType::F32 => words(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        GgmlType::F16 => words(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        GgmlType::BF16 => words(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        GgmlType::Q4_0 | GgmlType::Q8_0 | GgmlType::Q4K | GgmlType::Q6K => {
            let mut v = vec![0f32; n];
            match ty {
                GgmlType::Q4_0 => q4_0::dequantize(data, &mut v),
                GgmlType::Q8_0 => q8_0::dequantize(data, &mut v),
                GgmlType::Q4K => q4_k::dequantize(data, &mut v),
                _ => q6_k::dequantize(data, &mut v),
            }
            v
        }
        GgmlType::TQ2_0 | GgmlType::TQ1_0 => {
            let mut v = Vec::with_capacity(n);
            if ty == GgmlType::TQ2_0 {
                tq::dequantize_tq2_0(data, &mut v)?;
            } else {
                tq::dequantize_tq1_0(data, &mut v)?;
            }
            v
        }
        GgmlType::I2S => {
            let s = i2s::validate(data, n)?;
            i2s::decode_codes(data, n)
                .into_iter()
                .map(|c| c as f32 * s)
                .collect()
        }
    })
}

/// The codes and scale of values that are exactly ternary: at most three
/// distinct values `{-s, 0, +s}` with `s > 0`; `None` for anything else.
pub fn exact_ternary(w: &[f32]) -> Option<(Vec<i8>, f32)> {
    use rayon::prelude::*;
    let m = w.par_iter().map(|x| x.abs()).reduce(|| 0f32, f32::max);
    if !(m > 0.0 && m.is_finite() && w.par_iter().all(|&x| x == 0.0 || x.abs() == m)) {
        return None;
    }
    let codes = w
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
    Some((codes, m))
}
