//! ggml's Q8_0 and Q6_K blocks, copied from the file (into huge-page
//! memory; the file's pages are released as they are copied) with the
//! blocks of each four rows interleaved ([`RowLayout::Interleaved4`]: the
//! same bytes, so the one-token product reads the matrix as one stream),
//! each Q6_K block's codes rearranged into tern's load-time layout
//! (`quant::q6_k::repack`: same size, cheaper to unpack),
//! and never dequantized as a whole. With native activations (an output head)
//! each token is quantized per block as ggml does (Q8_0, or Q8_K for Q6_K)
//! and the block products are integer; with BitLinear activations (a
//! projection of a BitNet graph) the matrix is dequantized to f32 at load
//! and runs as a float matrix.

use super::{float::Float, ActQuant, Acts, Format, Linear, Source, Weight};
use crate::kernels::layout::{self, RowLayout};
use crate::kernels::matmul::float_block;
use crate::kernels::memory::HugeBuf;
use crate::kernels::qhead::QuantHead;
use crate::kernels::Kernel;
use crate::quant::{q6_k, q8_0, GgmlType};
use anyhow::{bail, Context as _, Result};
use rayon::prelude::*;

pub(super) const FORMAT: Format = Format {
    name: "quant",
    types: &[GgmlType::Q8_0, GgmlType::Q6K],
    load,
};

/// Q6_K blocks rearranged per rayon job at load.
const REPACK_BLOCKS: usize = 1024;

/// A Q8_0 / Q6_K matrix, its blocks as [`RowLayout::Interleaved4`].
pub struct Quant {
    kind: QuantHead,
    bytes: HugeBuf,
    rows: usize,
    cols: usize,
}

fn kind_of(ty: GgmlType) -> QuantHead {
    if ty == GgmlType::Q8_0 {
        QuantHead::Q8_0
    } else {
        QuantHead::Q6K
    }
}

impl Quant {
    /// `rows` rows of `cols` values as `kind` blocks, back to back (the
    /// GGUF layout); repacks (Q6_K) and interleaves them in place.
    pub fn new(kind: QuantHead, mut bytes: HugeBuf, rows: usize, cols: usize) -> Result<Quant> {
        if cols == 0
            || !cols.is_multiple_of(kind.block())
            || Some(bytes.len()) != rows.checked_mul(kind.row_bytes(cols))
        {
            bail!(
                "{} bytes of {:?} blocks for {} rows of {}",
                bytes.len(),
                kind,
                rows,
                cols
            );
        }
        if kind == QuantHead::Q6K {
            // Block by block, so split over the pool as the interleaving is.
            bytes
                .bytes_mut()
                .par_chunks_mut(REPACK_BLOCKS * q6_k::BLOCK_BYTES)
                .for_each(q6_k::repack);
        }
        layout::interleave4(kind.row_bytes(cols), kind.block_bytes(), bytes.bytes_mut());
        Ok(Quant {
            kind,
            bytes,
            rows,
            cols,
        })
    }
}

fn load(src: &Source, act: ActQuant, _warnings: &mut Vec<String>) -> Result<Weight> {
    let kind = kind_of(src.info.ty);
    let (rows, cols) = (src.rows, src.cols);
    let q = Quant::new(
        kind,
        HugeBuf::copy_of_tensor(src.file, src.info),
        rows,
        cols,
    )
    .with_context(|| format!("tensor {}", src.name()))?;
    Ok(match act {
        ActQuant::Native => Box::new(q),
        ActQuant::BitLinear => {
            let mut data = vec![0f32; rows * cols];
            for (i, r) in data.chunks_exact_mut(cols).enumerate() {
                q.row(i, r);
            }
            drop(q);
            Box::new(Float::owned(data, rows, cols, src.info.ty, act))
        }
    })
}

impl Linear for Quant {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn ty(&self) -> GgmlType {
        match self.kind {
            QuantHead::Q8_0 => GgmlType::Q8_0,
            QuantHead::Q6K => GgmlType::Q6K,
        }
    }
    fn ternary(&self) -> bool {
        false
    }
    fn bytes(&self) -> usize {
        self.bytes.len()
    }
    fn stream(&self) -> &[u8] {
        self.bytes.bytes()
    }
    fn row(&self, i: usize, out: &mut [f32]) {
        let (k, bb) = (self.kind.block(), self.kind.block_bytes());
        let w = self.bytes.bytes();
        for (b, o) in out[..self.cols].chunks_exact_mut(k).enumerate() {
            let off = RowLayout::Interleaved4.block_offset(
                self.kind.row_bytes(self.cols),
                bb,
                self.rows,
                i,
                b,
            );
            let blk = &w[off..off + bb];
            match self.kind {
                QuantHead::Q8_0 => q8_0::dequantize(blk, o),
                QuantHead::Q6K => q6_k::dequantize_repacked(blk, o),
            }
        }
    }
    fn prepare(&self, _kern: &Kernel, x: &Acts) {
        x.blocks(self.kind);
    }
    fn matmul_rows(&self, kern: &Kernel, x: &Acts, v0: usize, outs: &mut [&mut [f32]]) {
        let n = x.n();
        let v1 = v0 + outs[0].len();
        let blocks = x.blocks(self.kind);
        let w = self.bytes.bytes();
        float_block(n, v1 - v0, outs, |buf| {
            kern.quant_gemm(w, RowLayout::Interleaved4, v0, v1, blocks, buf)
        });
    }
}
