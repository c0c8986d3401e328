//! Weight formats: how a GGUF tensor becomes a matrix the kernels multiply.
//!
//! Each format owns three things behind one row of [`FORMATS`]: its load
//! (repack, or read in place from the memory map), the preparation of the
//! activations it multiplies (per-token int8 for BitLinear, Q8_0 / Q8_K
//! blocks for ggml's quantized types, plain f32), and its product. The
//! model holds [`Weight`]s and calls [`Linear::matmul`] with [`Acts`]; it
//! never names a format. A new layout is one file here plus one row.
//!
//! | row | GGUF types | held as | activations |
//! |---|---|---|---|
//! | `ternary` | I2_S, TQ2_0, TQ1_0 (one scale); F32/F16/BF16 projections holding only `{-s, 0, +s}` | [`crate::kernels::Packed`], repacked at load (rows not whole I2_S blocks: f32) | int8 per token |
//! | `float` | F32, F16, BF16, Q4_0, Q4_K (and TQ with per-block scales) | F16 as in the file, else f32 | int8 per token (BitLinear) or f32 |
//! | `quant` | Q8_0, Q6_K | the file's blocks, four rows interleaved; Q6_K codes rearranged (`quant::q6_k::repack`) | int8 per token via f32 (BitLinear), or Q8_0 / Q8_K blocks |
//!
//! Every format copies what it keeps into huge-page memory
//! ([`super::memory::HugeBuf`]) and gives the file's pages back as it goes
//! ([`crate::gguf::GgufFile::release`]), so the resident set holds each
//! weight once: peak RSS ≈ the weights as held + KV cache + scratch.

mod float;
mod quant;
mod ternary;

use super::matmul::{par_rows, quantize_batch, Job, QBatch};
use super::qhead::{BlockActs, QuantHead};
use super::Kernel;
use crate::gguf::{GgufFile, TensorInfo};
use crate::quant::GgmlType;
use anyhow::{anyhow, Result};
use std::sync::OnceLock;

/// A matrix of `rows` outputs × `cols` inputs, ready for the kernels.
pub trait Linear: Send + Sync {
    fn rows(&self) -> usize;
    fn cols(&self) -> usize;
    /// The GGUF type it was loaded from.
    fn ty(&self) -> GgmlType;
    /// Whether its values are ternary codes times a scale (one per tensor
    /// or per block), whatever they are held as: a graph that runs only
    /// ternary projections checks it.
    fn ternary(&self) -> bool;
    /// Bytes one product streams (the whole matrix as held).
    fn bytes(&self) -> usize;
    /// The bytes one product streams, in row order (rows `m0..m1` lie at
    /// about `m0/rows .. m1/rows` of them), for prefetch hints
    /// ([`hint_next`]); empty where the format gives none.
    fn stream(&self) -> &[u8] {
        &[]
    }
    /// Row `i` as f32 (`out.len() == cols`): an embedding lookup.
    fn row(&self, i: usize, out: &mut [f32]);
    /// Prepare what [`Linear::matmul_rows`] reads from `x` (its
    /// activations in this format's form), before the tasks start.
    fn prepare(&self, kern: &Kernel, x: &Acts);
    /// One task of a product: rows `m0 .. m0 + outs[0].len()` (`m0` a
    /// multiple of 4) for every token, `outs[t]` being token t's slice.
    /// Each output is computed by one kernel call in a fixed order: the
    /// result does not depend on how the rows are split or on how many
    /// tokens are in `x`.
    fn matmul_rows(&self, kern: &Kernel, x: &Acts, m0: usize, outs: &mut [&mut [f32]]);
}

impl dyn Linear + '_ {
    /// `out[t · rows + m] = W[m] · x_t` for the `x.n()` rows of `x`, with
    /// the activation semantics chosen at load ([`ActQuant`]), threaded on
    /// the current rayon pool (see [`matmul_many`]).
    pub fn matmul(&self, kern: &Kernel, x: &Acts, out: &mut [f32]) {
        matmul_many(kern, x, &mut [(self, out)])
    }
}

/// Several products of the same activations in one parallel region:
/// `out_i[t · rows_i + m] = W_i[m] · x_t` for each `(W_i, out_i)`.
pub fn matmul_many(kern: &Kernel, x: &Acts, prods: &mut [(&dyn Linear, &mut [f32])]) {
    for (w, _) in prods.iter() {
        assert_eq!(x.k(), w.cols(), "activation width");
        w.prepare(kern, x);
    }
    let ws: Vec<&dyn Linear> = prods.iter().map(|p| p.0).collect();
    let jobs = prods
        .iter_mut()
        .map(|(w, out)| Job {
            rows: w.rows(),
            out: &mut out[..],
        })
        .collect();
    par_rows(jobs, x.n(), |j, m0, outs| {
        ws[j].matmul_rows(kern, x, m0, outs)
    });
}

/// Bytes of its next region's first span each idle thread prefetches
/// ([`hint_next`]): a few claims' worth, well inside a 2 MiB L2. Whole
/// decode steps of the 2B-4T Q6_K file on two threads (Intel Xeon VM,
/// 2026-12-02, six alternated rounds, medians of % of the bound): 79.9%
/// with 256 KiB, 79.1% with no hints, 80.0% with 128 KiB, 79.8% with 512
/// KiB, 80.0% with 1 MiB.
pub const HINT_BYTES: usize = 256 << 10;

/// Tell the pool's idle workers which products the next one-token region
/// will run (`ws`, as `matmul_many` will get them), so that each prefetches
/// into its L2 the first [`HINT_BYTES`] of the span it will start on
/// (`matmul::span_start`) while the leader does the serial work between
/// the regions (norms, quantization, attention). A hint: a worker that
/// starts elsewhere, or one that never sees it, costs nothing but the
/// bytes. No effect on one thread.
pub fn hint_next(ws: &[&dyn Linear]) {
    if !crate::kernels::matmul::hints_on() {
        return;
    }
    for (t, addr, len) in hint_ranges(ws, rayon::current_num_threads()) {
        crate::kernels::matmul::publish_hint(t, addr, len);
    }
}

/// What [`hint_next`] publishes on `threads` threads: for each span `t ≥ 1`
/// (up to `matmul::MAX_HINTS`), the address and length of the first
/// [`HINT_BYTES`] from its first row on; nothing on one thread.
fn hint_ranges(ws: &[&dyn Linear], threads: usize) -> Vec<(usize, usize, usize)> {
    let rows: Vec<usize> = ws.iter().map(|w| w.rows()).collect();
    let mut out = Vec::new();
    for t in 1..threads.min(crate::kernels::matmul::MAX_HINTS + 1) {
        let Some((j, m0)) = crate::kernels::matmul::span_start(&rows, threads, t) else {
            continue;
        };
        let s = ws[j].stream();
        if s.is_empty() || rows[j] == 0 {
            continue;
        }
        // m0 ≤ rows[j]: the offset is at most s.len().
        let off = u128::try_from(s.len()).unwrap_or(u128::MAX) * m0 as u128 / rows[j] as u128;
        let off = usize::try_from(off).unwrap_or(s.len()).min(s.len());
        let span = &s[off..];
        out.push((t, span.as_ptr() as usize, span.len().min(HINT_BYTES)));
    }
    out
}

/// A loaded matrix.
pub type Weight = Box<dyn Linear>;

/// How the activations of a matrix are quantized: a property of the graph
/// the matrix sits in, not of its storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActQuant {
    /// BitNet's BitLinear (docs §2): each token's activations quantized to
    /// int8 with its own absmax scale, whatever the weights are stored as.
    BitLinear,
    /// The storage type's own pairing, as ggml does it: f32 activations for
    /// float weights, Q8_0 / Q8_K blocks for Q8_0 / Q6_K weights.
    Native,
}

/// One tensor of a GGUF file to load as a `rows × cols` matrix.
pub struct Source<'a> {
    pub file: &'a GgufFile,
    pub info: &'a TensorInfo,
    pub rows: usize,
    pub cols: usize,
}

impl Source<'_> {
    fn name(&self) -> &str {
        &self.info.name
    }
    fn data(&self) -> &[u8] {
        self.file.tensor_data(self.info)
    }
}

/// One row of the format table.
pub struct Format {
    /// Short name (`ternary`, `float`, `quant`).
    pub name: &'static str,
    /// The GGUF types it loads.
    pub types: &'static [GgmlType],
    /// Load a tensor of one of `types`; warnings (a fallback taken) go to
    /// the list.
    pub load: fn(&Source, ActQuant, &mut Vec<String>) -> Result<Weight>,
}

/// The formats, one row each.
pub const FORMATS: &[Format] = &[ternary::FORMAT, float::FORMAT, quant::FORMAT];

/// Load `src` with the row of [`FORMATS`] that takes its type.
pub fn load(src: &Source, act: ActQuant, warnings: &mut Vec<String>) -> Result<Weight> {
    let f = FORMATS
        .iter()
        .find(|f| f.types.contains(&src.info.ty))
        .ok_or_else(|| {
            anyhow!(
                "tensor {}: type {} is not supported for matrices",
                src.name(),
                src.info.ty.name()
            )
        })?;
    (f.load)(src, act, warnings)
}

/// A ternary matrix from canonical I2_S bytes (`rows · cols / 4`, no
/// scale tail) and its scale, repacked (for tests, benches and tools).
pub fn ternary_i2s(canonical: &[u8], rows: usize, cols: usize, scale: f32) -> Result<Weight> {
    Ok(Box::new(ternary::Ternary::from_i2s(
        canonical, rows, cols, scale,
    )?))
}

/// A float matrix of `rows × cols` f16 values.
pub fn float_f16(data: Vec<half::f16>, rows: usize, cols: usize, act: ActQuant) -> Weight {
    Box::new(float::Float::f16(data, rows, cols, act))
}

/// A float matrix of `rows × cols` f32 values.
pub fn float_f32(data: Vec<f32>, rows: usize, cols: usize, act: ActQuant) -> Weight {
    Box::new(float::Float::owned(data, rows, cols, GgmlType::F32, act))
}

/// A `kind` matrix of `rows × cols` from its blocks, with native
/// activations (an output head).
pub fn quant_blocks(kind: QuantHead, blocks: Vec<u8>, rows: usize, cols: usize) -> Result<Weight> {
    quant::Quant::new(kind, super::memory::HugeBuf::copy_of(&blocks), rows, cols)
        .map(|q| Box::new(q) as Weight)
}

/// The activations of one or more products (`n` rows of `k` f32 values),
/// prepared once per kind on first use and shared by every matrix that
/// multiplies them (say Q, K and V): int8 per token, its copy interleaved
/// for the ternary prompt tile, Q8_0 or Q8_K blocks.
pub struct Acts<'a> {
    x: &'a [f32],
    k: usize,
    n: usize,
    int8: OnceLock<QBatch>,
    int8_f32: OnceLock<Vec<f32>>,
    tiles: OnceLock<Option<super::memory::LineAligned<i8>>>,
    q8_0: OnceLock<BlockActs>,
    q8_k: OnceLock<BlockActs>,
}

impl<'a> Acts<'a> {
    /// `x` as rows of `k` values.
    pub fn new(x: &'a [f32], k: usize) -> Acts<'a> {
        assert!(
            k > 0 && x.len().is_multiple_of(k),
            "activations are not whole rows of {}",
            k
        );
        Acts {
            x,
            k,
            n: x.len() / k,
            int8: OnceLock::new(),
            int8_f32: OnceLock::new(),
            tiles: OnceLock::new(),
            q8_0: OnceLock::new(),
            q8_k: OnceLock::new(),
        }
    }
    /// Rows (tokens).
    pub fn n(&self) -> usize {
        self.n
    }
    /// Row length.
    pub fn k(&self) -> usize {
        self.k
    }
    /// The f32 values.
    pub fn f32(&self) -> &[f32] {
        self.x
    }
    /// Int8 per token (BitLinear; [`Kernel::quantize_act`]).
    pub fn int8(&self, kern: &Kernel) -> &QBatch {
        self.int8
            .get_or_init(|| quantize_batch(kern, self.x, self.k))
    }
    /// The int8 values as f32 (for float matrices with BitLinear activations).
    pub fn int8_f32(&self, kern: &Kernel) -> &[f32] {
        self.int8_f32
            .get_or_init(|| self.int8(kern).q.iter().map(|&q| q as f32).collect())
    }
    /// The int8 values interleaved by `kern`'s ternary token tiles, for
    /// batches that take the panel path (`None` for smaller ones).
    pub fn int8_tiles(&self, kern: &Kernel) -> Option<&[i8]> {
        self.tiles
            .get_or_init(|| {
                super::ternary::takes_panels(kern, self.n).then(|| {
                    super::ternary::tile_tokens(kern.ops().i2s_shape, &self.int8(kern).q, self.k)
                })
            })
            .as_deref()
    }
    /// The rows quantized per block for a `kind` matrix (as ggml does).
    pub fn blocks(&self, kind: QuantHead) -> &BlockActs {
        let cell = match kind {
            QuantHead::Q8_0 => &self.q8_0,
            QuantHead::Q6K => &self.q8_k,
        };
        cell.get_or_init(|| BlockActs::quantize(kind, self.x, self.k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::matmul::span_start;

    /// With two threads, the hint for span 1 is the first bytes (at most
    /// `HINT_BYTES`) of the product and row that span starts on; with one
    /// thread there is none; with three, one each for spans 1 and 2.
    #[test]
    fn hints_point_at_each_span_start() {
        let cols = 256;
        let mk = |rows: usize, byte: u8| {
            ternary::Ternary::from_i2s(&vec![byte; rows * cols / 4], rows, cols, 1.0).unwrap()
        };
        // Q, K, V-like: 2560 + 640 + 640 rows.
        let (q, k, v) = (mk(2560, 0x55), mk(640, 0x66), mk(640, 0x99));
        let ws: [&dyn Linear; 3] = [&q, &k, &v];
        let rows = [2560, 640, 640];
        assert!(hint_ranges(&ws, 1).is_empty());
        for threads in [2, 3] {
            let got = hint_ranges(&ws, threads);
            assert_eq!(got.len(), threads - 1);
            for (t, addr, len) in got {
                let (j, m0) = span_start(&rows, threads, t).unwrap();
                let s = ws[j].stream();
                let off = s.len() * m0 / rows[j];
                assert_eq!(
                    addr,
                    s.as_ptr() as usize + off,
                    "{threads} threads, span {t}"
                );
                assert_eq!(len, (s.len() - off).min(HINT_BYTES));
            }
        }
        // Two threads: span 1 starts at row 1920 of Q (3840 rows in all).
        assert_eq!(span_start(&rows, 2, 1), Some((0, 1920)));
    }
}
