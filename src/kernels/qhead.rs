//! Quantized (Q8_0 / Q6_K) matrices multiplied as ggml does: the
//! activations are quantized per block ([`BlockActs`]: Q8_0 blocks, or
//! Q8_K blocks with sums of 16), the products are integer per block
//! (bit-identical across kernels) and one float multiply-add per block
//! applies both scales. One driver ([`gemm`]) over per-ISA tiles: one
//! token streams four rows per tile (two or four groups of four from as
//! many runs of the rows at once, as the kernel's `StreamPlan` says,
//! where the ISA has a [`StreamsTile`]: AVX2's Q6_K, which AVX-512
//! inherits); several tokens take one row × up to four tokens, so each
//! weight block is decoded once per tile. Q6_K sums
//! the blocks in the scalar order on every kernel (bit-identical results);
//! Q8_0 keeps one float accumulator per lane (agreeing with scalar to
//! rounding); neither depends on the tiling, threads or batch.

use super::layout::{stream_runs, RowLayout, Steps, INTERLEAVE};
use super::Kernel;

/// The block format of a quantized matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantHead {
    /// Q8_0 weights, Q8_0 activations (blocks of 32).
    Q8_0,
    /// Q6_K weights, Q8_K activations (blocks of 256).
    Q6K,
}

impl QuantHead {
    /// Values per weight (and activation) block.
    pub fn block(self) -> usize {
        match self {
            QuantHead::Q8_0 => crate::quant::q8_0::QK8_0,
            QuantHead::Q6K => crate::quant::q6_k::QK_K,
        }
    }
    /// Bytes per weight block.
    pub fn block_bytes(self) -> usize {
        match self {
            QuantHead::Q8_0 => crate::quant::q8_0::BLOCK_BYTES,
            QuantHead::Q6K => crate::quant::q6_k::BLOCK_BYTES,
        }
    }
    /// Bytes of one weight row of `k` values.
    pub fn row_bytes(self, k: usize) -> usize {
        k / self.block() * self.block_bytes()
    }
}

/// Activation rows quantized per block for a quantized matrix, the way
/// ggml quantizes the other operand of its dot products: Q8_0 blocks for a
/// Q8_0 matrix (`quant::q8_0::quantize_acts`), Q8_K blocks for a Q6_K one
/// (`quant::q6_k::quantize_q8_k`, with the sums of each 16 quants), their
/// quants then put in the lane order of tern's load-time Q6_K layout
/// (`quant::q6_k::order_q8_k`), as the weights are.
#[derive(Debug, Clone)]
pub struct BlockActs {
    pub kind: QuantHead,
    /// Row length.
    pub k: usize,
    /// Rows.
    pub n: usize,
    /// `n · k` quants, each in -127..=127 as quantized here (the kernels
    /// take -128 too); Q8_K: each block in the lane order of
    /// `quant::q6_k::lane_position`.
    pub qs: Vec<i8>,
    /// `n · k / block` block scales.
    pub d: Vec<f32>,
    /// `n · k / 16` sums of the 16 quants of each sub-block, in value
    /// order (Q8_K only; empty for Q8_0). In the lane order of `qs` a
    /// sub-block's quants are not consecutive
    /// (`quant::q6_k::lane_sub_block`).
    pub bsums: Vec<i16>,
}

impl BlockActs {
    /// Quantize `n` rows of `k` values (`k` a multiple of the block).
    pub fn quantize(kind: QuantHead, x: &[f32], k: usize) -> BlockActs {
        assert!(
            k > 0 && k.is_multiple_of(kind.block()) && x.len().is_multiple_of(k),
            "activations are not whole rows of whole blocks"
        );
        let n = x.len() / k;
        let mut qs = vec![0i8; x.len()];
        let mut d = vec![0f32; x.len() / kind.block()];
        let mut bsums = Vec::new();
        match kind {
            QuantHead::Q8_0 => crate::quant::q8_0::quantize_acts(x, &mut qs, &mut d),
            QuantHead::Q6K => {
                bsums = vec![0i16; x.len() / 16];
                crate::quant::q6_k::quantize_q8_k(x, &mut qs, &mut d, &mut bsums);
                crate::quant::q6_k::order_q8_k(&mut qs);
            }
        }
        BlockActs {
            kind,
            k,
            n,
            qs,
            d,
            bsums,
        }
    }
    /// The quants of row `t`.
    pub fn row(&self, t: usize) -> &[i8] {
        &self.qs[t * self.k..(t + 1) * self.k]
    }
    /// The block scales of row `t`.
    pub fn scales(&self, t: usize) -> &[f32] {
        let nb = self.k / self.kind.block();
        &self.d[t * nb..(t + 1) * nb]
    }
    /// The sub-block sums of row `t` (Q8_K; see [`BlockActs::bsums`]).
    pub fn sums16(&self, t: usize) -> &[i16] {
        &self.bsums[t * self.k / 16..(t + 1) * self.k / 16]
    }
}

/// Exact integer dots of one Q6_K row (its blocks, in tern's load-time
/// layout) with Q8_K activations (codes in the same lane order and the
/// per-16 sums of codes), one `i32` per block.
pub type Q6KBlockDots = fn(&[u8], &[i8], &[i16], &mut [i32]);

/// `r` rows of a quantized matrix (their blocks where `steps` puts them,
/// from `w`) × tokens `t0 .. t0 + t` of `x`: `out[u · ld + j]` = row j ·
/// token t0 + u. Shapes: `r ≤ 4` with `t = 1`, or `r = 1` with `t ≤ 4`.
pub type Tile = unsafe fn(
    w: *const u8,
    steps: Steps,
    r: usize,
    x: &BlockActs,
    t0: usize,
    t: usize,
    out: *mut f32,
    ld: usize,
);

/// One token against `S` groups of four interleaved rows
/// ([`RowLayout::Interleaved4`]) that lie apart in memory: block `b` of
/// row `j` of group `s` at `w[s] + j · steps.row + b · steps.block`;
/// writes the four rows' outputs of group `s` to `out[s] .. + 4`, the
/// same values as the one-token tile gives them. Several distant streams
/// keep more lines in flight than one (see `ops::StreamRead`): the 2B-4T
/// Q6_K head, AVX-512 VNNI, four groups against one at a time alternated
/// in one process on the Intel Xeon VM (2026-12-02, 11 rounds, medians):
/// 14.8 → 17.1 GB/s on one thread, 30.0 → 34.7 on two; eight measured no
/// faster than four there (12.9 and 11.9 GB/s against 13.6 and 12.3 on
/// one thread, 25.8 against 26.7 on two). How many a CPU reads fastest:
/// [`super::StreamPlan`].
pub type StreamsTile<const S: usize> =
    unsafe fn(w: [*const u8; S], steps: Steps, x: &BlockActs, out: [*mut f32; S]);

/// A kernel's one-token Q6_K [`StreamsTile`]s, one per group count; the
/// kernel's [`super::StreamPlan`] says which a product takes.
#[derive(Clone, Copy)]
pub struct Streams {
    pub two: StreamsTile<2>,
    pub four: StreamsTile<4>,
}

/// Rows per tile with one token; tokens per tile with several.
pub const GEMV_ROWS: usize = INTERLEAVE;

/// `$run!(R, T)` for the tile shape `(r, t)` the driver asks for (`r ≤ 4`
/// with one token, one row with up to four): the one table of shapes the
/// ISA files instantiate their quantized tiles for.
macro_rules! quant_tile_shapes {
    ($r:expr, $t:expr, $run:ident) => {
        match ($r, $t) {
            (4, 1) => $run!(4, 1),
            (3, 1) => $run!(3, 1),
            (2, 1) => $run!(2, 1),
            (_, 4) => $run!(1, 4),
            (_, 3) => $run!(1, 3),
            (_, 2) => $run!(1, 2),
            _ => $run!(1, 1),
        }
    };
}
pub(crate) use quant_tile_shapes;
pub const GEMM_TOKENS: usize = 4;

/// Check the arguments of [`gemm`]; the tiles rely on them.
fn check(layout: RowLayout, w: &[u8], v0: usize, v1: usize, x: &BlockActs, out: &[f32]) {
    let kind = x.kind;
    let nb = x.k / kind.block();
    assert!(
        x.k > 0 && x.k.is_multiple_of(kind.block()),
        "row length {}",
        x.k
    );
    assert_eq!(x.qs.len(), x.n * x.k, "activation size");
    assert_eq!(x.d.len(), x.n * nb, "activation scales");
    if kind == QuantHead::Q6K {
        assert_eq!(x.bsums.len(), x.n * x.k / 16, "activation sums");
    }
    let rb = kind.row_bytes(x.k);
    assert!(
        v0 <= v1 && v1.checked_mul(rb).is_some_and(|e| e <= w.len()),
        "rows {}..{} of {}",
        v0,
        v1,
        w.len() / rb
    );
    assert!(
        layout == RowLayout::Rows || w.len().is_multiple_of(rb),
        "interleaved rows are not whole rows"
    );
    assert!(out.len() >= x.n * (v1 - v0), "output size");
}

/// Check the arguments of the block-dot functions.
pub(crate) fn check_block_dots(kind: QuantHead, w: &[u8], a: &[i8], out: &[i32]) {
    let nb = a.len() / kind.block();
    assert!(a.len().is_multiple_of(kind.block()), "activation size");
    assert_eq!(w.len(), nb * kind.block_bytes(), "weight row size");
    assert_eq!(out.len(), nb, "output size");
}

/// Rows `v0..v1` of a matrix of `x.kind` blocks (the activations were
/// quantized for it; row length `x.k`, stored as `layout` in `w`) against
/// the `x.n` activation rows of `x`:
/// `out[t · (v1 - v0) + (v - v0)] = Σ_b d_w[v][b] · d_x[t][b] · dot_b`.
/// The layout changes where the tiles read, not what they compute.
pub fn gemm(
    kern: &Kernel,
    layout: RowLayout,
    w: &[u8],
    v0: usize,
    v1: usize,
    x: &BlockActs,
    out: &mut [f32],
) {
    check(layout, w, v0, v1, x, out);
    let kind = x.kind;
    let tile = match kind {
        QuantHead::Q8_0 => kern.ops().q8_0_tile,
        QuantHead::Q6K => kern.ops().q6_k_tile,
    };
    let (rb, bb) = (kind.row_bytes(x.k), kind.block_bytes());
    let n_rows = w.len() / rb;
    let ld = v1 - v0;
    // Rows va..vb of every token, tile by tile.
    let plain = |va: usize, vb: usize, out: &mut [f32]| {
        let (rows, tokens) = if x.n == 1 {
            (GEMV_ROWS, 1)
        } else {
            (1, GEMM_TOKENS)
        };
        let mut t = 0;
        while t < x.n {
            let tt = (x.n - t).min(tokens);
            let mut v = va;
            while v < vb {
                let (r, steps) = layout.tile(rb, bb, n_rows, v, (vb - v).min(rows));
                let off = layout.block_offset(rb, bb, n_rows, v, 0);
                // SAFETY: `check` put rows v..v + r inside `w` (for the
                // interleaved layout, whole groups and the tail rows after
                // them, which `steps` walks), tokens t..t + tt inside `x` and
                // their outputs inside `out`; the table is this CPU's and the
                // shape one the tiles take.
                unsafe {
                    tile(
                        w.as_ptr().add(off),
                        steps,
                        r,
                        x,
                        t,
                        tt,
                        out.as_mut_ptr().add(t * ld + v - v0),
                        ld,
                    )
                }
                v += r;
            }
            t += tt;
        }
    };
    let streams = match kind {
        QuantHead::Q6K if x.n == 1 && layout == RowLayout::Interleaved4 => kern.ops().q6_k_streams,
        _ => None,
    };
    let Some(streams) = streams else {
        return plain(v0, v1, out);
    };
    // One token over interleaved rows: the whole groups inside v0..v1 in
    // as many runs as the plan says, group i of each run beside the
    // others; the rows before, after and left over tile by tile.
    let (ga, gb) = (
        v0.div_ceil(INTERLEAVE).min(n_rows / INTERLEAVE),
        (v1 / INTERLEAVE).min(n_rows / INTERLEAVE),
    );
    if ga >= gb {
        return plain(v0, v1, out);
    }
    let (_, steps) = layout.tile(rb, bb, n_rows, ga * INTERLEAVE, INTERLEAVE);
    // SAFETY (both): every group from `ga` to `gb` lies inside v0..v1 and
    // the interleaved groups of `w`, and its four outputs inside `out`
    // (as for `plain`); the tiles are this CPU's.
    let at = |v: usize| {
        w.as_ptr()
            .wrapping_add(layout.block_offset(rb, bb, n_rows, v, 0))
    };
    let left = match kern.plan().q6_k_now() {
        2 => unsafe { groups_apart(streams.two, &at, steps, ga..gb, v0, x, out) },
        _ => unsafe { groups_apart(streams.four, &at, steps, ga..gb, v0, x, out) },
    };
    plain(v0, ga * INTERLEAVE, out);
    plain(left * INTERLEAVE, v1, out);
}

/// The groups `ga..gb` of interleaved rows in `S` runs through `tile`,
/// group `i` of each run beside the others (row `v`'s first block at
/// `at(v)`), the outputs of row `v` at `out[v − v0]`; returns the first
/// group left over.
///
/// # Safety
/// The groups must lie inside the matrix and inside the caller's rows
/// `v0..`, their outputs inside `out`, and `x` must hold one token;
/// `tile` must be this CPU's.
unsafe fn groups_apart<const S: usize>(
    tile: StreamsTile<S>,
    at: &dyn Fn(usize) -> *const u8,
    steps: Steps,
    groups: std::ops::Range<usize>,
    v0: usize,
    x: &BlockActs,
    out: &mut [f32],
) -> usize {
    let ga = groups.start;
    let (runs, rest) = stream_runs::<S>(groups.len());
    for g in runs {
        let v = g.map(|g| (ga + g) * INTERLEAVE);
        // SAFETY: the caller's extents.
        unsafe { tile(v.map(at), steps, x, v.map(|v| out.as_mut_ptr().add(v - v0))) }
    }
    ga + rest.start
}
