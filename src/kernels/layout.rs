//! How the rows of a weight matrix lie in memory, for the drivers that
//! stream them ([`super::qhead`]'s quantized heads). A row is a run of
//! fixed-size *blocks* (one Q8_0 or Q6_K block); the layout says where
//! block `b` of row `v` starts, and the [`Steps`] a tile walks to find its
//! rows' blocks. Both layouts hold the same bytes.
//!
//! F16/F32 heads stay in [`RowLayout::Rows`]: measured on the 2B-4T head
//! (128256 × 2560 f16) with the AVX2 tiles, interleaving its rows by four
//! (blocks of eight values) read one token at 17–19 GB/s against 17–20 with
//! plain rows at two threads (already the machine's read bandwidth), and
//! four tokens took 47–52 ms against 43 ms; only one thread gained (8.8 →
//! 9.9 GB/s). Quantized heads spend more work per byte, and there the
//! interleaved rows let compute and memory overlap (1.4×).

use rayon::prelude::*;

/// `n` items as `S` runs of `n / S`, for the one-token drivers that read
/// several distant streams at once (as many as the kernel's
/// `StreamPlan` says): each entry of the iterator is item `i` of every
/// run (`[i, len + i, 2·len + i, …]`), for `i` in `0..len`; the range is
/// the items left over after the runs, to take one at a time.
pub fn stream_runs<const S: usize>(
    n: usize,
) -> (impl Iterator<Item = [usize; S]>, std::ops::Range<usize>) {
    let len = n / S;
    (
        (0..len).map(move |i| std::array::from_fn(|s| s * len + i)),
        S * len..n,
    )
}

/// Rows per group of [`RowLayout::Interleaved4`] (the one-token tiles'
/// rows).
pub const INTERLEAVE: usize = 4;

/// Where the blocks of a matrix's rows lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowLayout {
    /// Row after row, each row's blocks in order: the GGUF layout.
    Rows,
    /// Rows in groups of four ([`INTERLEAVE`]) whose blocks alternate:
    /// block `b` of rows `4g .. 4g + 4` lie side by side, then block
    /// `b + 1` of the same four rows (as ik_llama.cpp's `_R4` repacks). The
    /// one-token product then streams the matrix front to back instead of
    /// four rows a row's length apart; a whole group takes the same bytes
    /// as in [`RowLayout::Rows`], and the last `rows % 4` rows are stored
    /// as there.
    Interleaved4,
}

/// Where the blocks of a tile's rows lie: block `b` of the tile's row `j`
/// starts `j · row + b · block` bytes after the tile's pointer. For rows
/// stored one after the other ([`RowLayout::Rows`]) `row` is the row's
/// bytes and `block` the block's; inside a group of
/// [`RowLayout::Interleaved4`] `row` is one block and `block` four.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Steps {
    pub row: usize,
    pub block: usize,
}

impl RowLayout {
    /// Byte offset of block `b` of row `v` in a matrix of `rows` rows of
    /// `row_bytes` bytes in blocks of `block_bytes` (`v < rows`).
    pub fn block_offset(
        self,
        row_bytes: usize,
        block_bytes: usize,
        rows: usize,
        v: usize,
        b: usize,
    ) -> usize {
        match self {
            RowLayout::Interleaved4 if v < grouped(rows) => {
                let g = v / INTERLEAVE;
                g * INTERLEAVE * row_bytes + (b * INTERLEAVE + v % INTERLEAVE) * block_bytes
            }
            _ => v * row_bytes + b * block_bytes,
        }
    }

    /// The tile that starts at row `v` (of `rows`): how many rows from `v`
    /// on lie the same way (one tile never spans two groups, or a group and
    /// the plain rows after them), at most `want`, and the steps between
    /// its rows' blocks.
    pub fn tile(
        self,
        row_bytes: usize,
        block_bytes: usize,
        rows: usize,
        v: usize,
        want: usize,
    ) -> (usize, Steps) {
        match self {
            RowLayout::Interleaved4 if v < grouped(rows) => (
                want.min(INTERLEAVE - v % INTERLEAVE),
                Steps {
                    row: block_bytes,
                    block: INTERLEAVE * block_bytes,
                },
            ),
            _ => (
                want,
                Steps {
                    row: row_bytes,
                    block: block_bytes,
                },
            ),
        }
    }
}

/// Rows of a `rows`-row matrix that lie in whole interleaved groups.
fn grouped(rows: usize) -> usize {
    rows / INTERLEAVE * INTERLEAVE
}

/// Reorders a matrix of whole rows of `row_bytes` bytes (blocks of
/// `block_bytes`) stored as [`RowLayout::Rows`] into
/// [`RowLayout::Interleaved4`], in place (one group's bytes of scratch per
/// rayon job: `for_each_init` may make more than one per thread as the work
/// is split).
/// Panics if `w` is not whole rows of whole blocks.
pub fn interleave4(row_bytes: usize, block_bytes: usize, w: &mut [u8]) {
    assert!(
        block_bytes > 0
            && row_bytes.is_multiple_of(block_bytes)
            && row_bytes > 0
            && w.len().is_multiple_of(row_bytes),
        "not whole rows of whole blocks"
    );
    w.par_chunks_exact_mut(INTERLEAVE * row_bytes)
        .for_each_init(
            || vec![0u8; INTERLEAVE * row_bytes],
            |group, g| {
                group.copy_from_slice(g);
                for (j, row) in group.chunks_exact(row_bytes).enumerate() {
                    for (b, blk) in row.chunks_exact(block_bytes).enumerate() {
                        let o = (b * INTERLEAVE + j) * block_bytes;
                        g[o..o + block_bytes].copy_from_slice(blk);
                    }
                }
            },
        );
}
