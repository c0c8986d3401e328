//! Ternary products: the repacked weight layout ([`Packed`]) and the one
//! driver ([`gemm`]) every ISA shares.
//!
//! Ternary weights arrive in the canonical I2_S block layout per row (see
//! `quant::i2s`): a row of K values is K/128 blocks of 32 bytes, value `j`
//! of a block at byte `j % 32`, bits `6 - 2 (j / 32)`, code = T + 1. At load
//! they are repacked into [`Packed`]: rows interleaved by four so that one
//! 128-byte run holds the same block of four rows, which the kernels read
//! as one sequential stream. Every product computes `Σ code·x − Σ x`
//! exactly in integers.
//!
//! Two paths, chosen by the number of tokens `n`:
//!
//! * **few tokens** (generation, batched decoding of several sequences,
//!   short prompts; `n <` the kernel's `i2s_panel_min_tokens`, by default
//!   [`PANEL_MIN_TOKENS`]; see [`takes_panels`]): the ISA's [`PackedTile`]
//!   reads the packed groups directly, four rows × up to four tokens,
//!   unpacking the 2-bit codes in registers and prefetching the weights,
//!   which stream once per four tokens. One token, where the ISA has a
//!   [`StreamsTile`] (AVX-512 VNNI), reads four or eight row groups at
//!   once (the kernel's [`super::StreamPlan`]) from as many runs of the
//!   span: several distant streams keep more lines in flight than one.
//! * **prompt batches**: row groups are unpacked, a panel at a time, into
//!   one byte per code with the rows interleaved by the tile height
//!   (`[row tile][k step][R rows][L bytes]`), the int8 activations are
//!   interleaved the same way by token tiles (`[token tile][k step][T
//!   tokens][L bytes]`, see [`Acts`]), and the ISA's [`CodeTile`] runs an
//!   `R × T` register tile over them: each code vector serves `T` tokens,
//!   each activation vector `R` rows, both come from one sequential stream,
//!   and no unpacking is left in the inner loop (the "interleaved rows"
//!   idea of ik_llama.cpp's IQ2_BN_R4, applied at run time so the file
//!   stays I2_S). The panel stays in L2 while every token tile passes.

use super::layout::stream_runs;
use super::memory::{HugeBuf, LineAligned};
use super::Kernel;
use rayon::prelude::*;
use std::cell::RefCell;

/// Values per I2_S block.
pub const QK: usize = 128;
/// Rows interleaved in one [`Packed`] group.
pub const GROUP: usize = 4;
/// Bytes of one block of one row.
pub const BLOCK_BYTES: usize = 32;
/// Bytes of one block of a whole group.
pub const GROUP_BLOCK_BYTES: usize = GROUP * BLOCK_BYTES;
/// From this many tokens on, products go through unpacked panels and the
/// ISA's register tile; below it, the packed tiles, four tokens at a time
/// with the weights prefetched (the default of `Ops::i2s_panel_min_tokens`).
/// Measured on the 2B-4T shapes with AVX2 and two threads
/// (`examples/batch_step.rs`, `tern bench -p`): the packed tiles take half
/// the time of the panels at 8 tokens (a decode step of eight sequences),
/// 0.8× at 16 and 0.9× at 32, and tie at 64 and pp128. AVX-512 VNNI never
/// takes the panels: its packed tile ran pp128 1.5× and pp512 1.35× faster
/// than its panel tile (Intel Xeon, 2026-12-01), whose byte-per-code panels
/// and activations stream from L2 faster than the 2-bit codes do.
pub const PANEL_MIN_TOKENS: usize = 64;

/// The most columns a [`Packed`] matrix takes: keeps every tile's 32-bit
/// sums exact with room to spare (AVX-512 VNNI's one-group one-token tile
/// `tile1_vnni` lets a lane hold up to 64× the codes' sums; 2B-4T's
/// widest rows are 6912).
pub const MAX_COLS: usize = 1 << 20;

/// Whether `kern` computes `n` tokens through the unpacked panels (and so
/// wants the activations interleaved by [`tile_tokens`]).
pub fn takes_panels(kern: &Kernel, n: usize) -> bool {
    n >= kern.ops().i2s_panel_min_tokens
}
/// Row groups unpacked per panel (16 rows: 40–110 KB of codes at the
/// 2B-4T shapes, which stay in L2 while every token tile passes).
const PANEL_GROUPS: usize = 4;
/// Most tokens the packed tiles take at once.
pub const PACKED_TOKENS: usize = 4;
/// Row groups that share one token tile on the packed path (its
/// activations stay in L1 while the groups' weights come from L2).
const GROUP_BLOCK: usize = 8;
/// Activation bytes of one token chunk on the packed path: every group
/// block passes over one chunk before the next, so a long batch's
/// activations come from L2 instead of streaming from L3 once per group
/// block (K = 6912 at pp512: 3.5 MB per block, 80 blocks a matrix).
const PACKED_CHUNK_BYTES: usize = 256 << 10;

/// Four rows of one packed group × `t` tokens (`1 ..= PACKED_TOKENS`):
/// `w` points at the group's `nb` runs of 128 bytes, `x` at `t` int8 rows
/// `k` apart; writes `out[u · ld + r] = Σ_j code[r][j] · x[u][j]` (the raw
/// code sums, before `− Σ x`). With `t == 1` the tile streams: it
/// prefetches the weights ahead.
pub type PackedTile =
    unsafe fn(w: *const u8, nb: usize, x: *const i8, k: usize, t: usize, out: *mut i32, ld: usize);

/// One token against `S` packed groups that lie apart in memory (each
/// `w[s]` at its group's `nb` runs of 128 bytes): writes `out[s][r] =
/// Σ_j code[r][j] · x[j]` for each group `s` (the raw code sums, as
/// [`PackedTile`] with one token). Reading several distant streams at
/// once keeps more lines in flight than one stream with the same
/// arithmetic between its loads (see `avx512::tile_streams_vnni`).
pub type StreamsTile<const S: usize> =
    unsafe fn(w: [*const u8; S], nb: usize, x: *const i8, out: [*mut i32; S]);

/// A kernel's one-token [`StreamsTile`]s, one per group count; the
/// kernel's [`super::StreamPlan`] says which a product takes.
#[derive(Clone, Copy)]
pub struct Streams {
    pub four: StreamsTile<4>,
    pub eight: StreamsTile<8>,
}

/// `R` rows × `t` tokens (`1 ..= T`) of unpacked codes: `c` points at the
/// rows' codes laid out `[step][R][L]`, `x` at the token tile's int8
/// values laid out `[step][t][L]`, `steps = K / L`; writes
/// `out[u · ld + r] = Σ_j code[r][j] · x[u][j]` for `r < R`, `u < t`.
pub type CodeTile =
    unsafe fn(c: *const u8, x: *const i8, steps: usize, t: usize, out: *mut i32, ld: usize);

/// Unpack `groups` packed groups (each `nb` runs, starting at `w`) into
/// one code byte per value, rows interleaved by `shape.rows` as
/// [`CodeTile`] reads them: `dst[((m / R) · steps + s) · R · L + (m % R) · L
/// + i]` = code of row `m`, value `s · L + i`.
pub type Unpack = unsafe fn(w: *const u8, nb: usize, groups: usize, shape: TileShape, dst: *mut u8);

/// The register tile of an ISA's prompt kernel: `rows` (R) × `tokens` (T),
/// over `lane` (L) bytes of K per step. `rows` divides [`GROUP`], `lane`
/// divides [`QK`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileShape {
    pub rows: usize,
    pub tokens: usize,
    pub lane: usize,
}

/// Ternary weights repacked for the kernels.
///
/// Rows are padded to a multiple of four and cut into groups of four; group
/// `g` is `K/128` runs of 128 bytes, run `b` holding block `b` of rows
/// `4g, 4g+1, 4g+2, 4g+3` (32 canonical bytes each). Padding rows hold code
/// 1 (weight 0). The bytes live in a [`HugeBuf`] (huge pages: fewer TLB
/// misses while streaming).
pub struct Packed {
    buf: HugeBuf,
    rows: usize,
    cols: usize,
}

impl Packed {
    /// Repack `rows × cols` ternary weights given as canonical I2_S bytes
    /// (`rows · cols / 4` bytes, no scale tail; `cols` a multiple of 128).
    pub fn from_i2s(canonical: &[u8], rows: usize, cols: usize) -> anyhow::Result<Packed> {
        if cols == 0 || !cols.is_multiple_of(QK) {
            anyhow::bail!(
                "ternary rows of {} values are not a multiple of {}",
                cols,
                QK
            );
        }
        if cols > MAX_COLS {
            anyhow::bail!(
                "ternary rows of {} values: tern takes at most {} per row",
                cols,
                MAX_COLS
            );
        }
        let want = rows
            .checked_mul(cols / 4)
            .ok_or_else(|| anyhow::anyhow!("a {}×{} matrix is too large", rows, cols))?;
        if canonical.len() != want {
            anyhow::bail!(
                "{} bytes of I2_S data for a {}×{} matrix (want {})",
                canonical.len(),
                rows,
                cols,
                want
            );
        }
        let groups = rows.div_ceil(GROUP);
        let nb = cols / QK;
        let rb = cols / 4;
        let mut buf = HugeBuf::zeroed(groups * nb * GROUP_BLOCK_BYTES);
        let dst = buf.bytes_mut();
        dst.par_chunks_exact_mut(nb * GROUP_BLOCK_BYTES)
            .enumerate()
            .for_each(|(g, gd)| {
                for r in 0..GROUP {
                    let m = g * GROUP + r;
                    for b in 0..nb {
                        let d = &mut gd[b * GROUP_BLOCK_BYTES + r * BLOCK_BYTES..][..BLOCK_BYTES];
                        if m < rows {
                            d.copy_from_slice(
                                &canonical[m * rb + b * BLOCK_BYTES..][..BLOCK_BYTES],
                            );
                        } else {
                            d.fill(0x55);
                        }
                    }
                }
            });
        Ok(Packed { buf, rows, cols })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Row groups (rows / 4, rounded up).
    pub fn groups(&self) -> usize {
        self.rows.div_ceil(GROUP)
    }
    /// Blocks of 128 values per row.
    pub fn blocks(&self) -> usize {
        self.cols / QK
    }
    /// The packed bytes of groups `g0..g1`.
    pub fn group_bytes(&self, g0: usize, g1: usize) -> &[u8] {
        let s = self.blocks() * GROUP_BLOCK_BYTES;
        &self.buf.bytes()[g0 * s..g1 * s]
    }
    /// Row `m` back in canonical I2_S layout (for tests and tools).
    pub fn canonical_row(&self, m: usize) -> Vec<u8> {
        let nb = self.blocks();
        let g = self.group_bytes(m / GROUP, m / GROUP + 1);
        let r = m % GROUP;
        (0..nb)
            .flat_map(|b| &g[b * GROUP_BLOCK_BYTES + r * BLOCK_BYTES..][..BLOCK_BYTES])
            .copied()
            .collect()
    }
}

impl std::ops::Deref for Packed {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.buf.bytes()
    }
}

/// int8 activation rows for [`gemm`]: row-major `xs` (`n · k` values),
/// their sums, and — for batches that take the panels ([`takes_panels`])
/// — the same values interleaved by the kernel's token tiles (see
/// [`tile_tokens`]).
pub struct Acts<'a> {
    xs: &'a [i8],
    sums: &'a [i32],
    k: usize,
    tiled: Option<Tiled<'a>>,
}

/// The interleaved activations of [`Acts`]: made here or lent by the caller.
enum Tiled<'a> {
    Owned(LineAligned<i8>),
    Borrowed(&'a [i8]),
}

impl std::ops::Deref for Tiled<'_> {
    type Target = [i8];
    fn deref(&self) -> &[i8] {
        match self {
            Tiled::Owned(v) => v,
            Tiled::Borrowed(s) => s,
        }
    }
}

impl<'a> Acts<'a> {
    /// Activations for `kern`, interleaving them when the batch is large
    /// enough for the panel path.
    pub fn new(kern: &Kernel, xs: &'a [i8], sums: &'a [i32], k: usize) -> Acts<'a> {
        let tiled = takes_panels(kern, sums.len())
            .then(|| Tiled::Owned(tile_tokens(kern.ops().i2s_shape, xs, k)));
        Acts { xs, sums, k, tiled }
    }

    /// Activations with an interleaved copy made earlier by [`tile_tokens`]
    /// for `kern` (`None` where it does not take the panels).
    pub fn with_tiles(
        kern: &Kernel,
        xs: &'a [i8],
        sums: &'a [i32],
        k: usize,
        tiled: Option<&'a [i8]>,
    ) -> Acts<'a> {
        assert_eq!(
            tiled.is_some(),
            takes_panels(kern, sums.len()),
            "interleaved activations exactly for panel batches"
        );
        Acts {
            xs,
            sums,
            k,
            tiled: tiled.map(Tiled::Borrowed),
        }
    }

    /// Tokens.
    pub fn n(&self) -> usize {
        self.sums.len()
    }
}

/// `xs` (`n` rows of `k`) interleaved by token tiles of `shape`: tile `j`
/// holds tokens `j·T .. j·T + t` (`t ≤ T`, the last tile may be short) at
/// offset `j·T·k`, laid out `[step][t][L]`; the first value on a cache
/// line (the tiles' loads stay within lines).
pub fn tile_tokens(shape: TileShape, xs: &[i8], k: usize) -> LineAligned<i8> {
    let (tt, l) = (shape.tokens, shape.lane);
    assert!(k.is_multiple_of(l) && xs.len().is_multiple_of(k.max(1)));
    let n = xs.len() / k;
    let mut out = LineAligned::zeroed(xs.len());
    let mut t0 = 0;
    while t0 < n {
        let t = (n - t0).min(tt);
        let base = t0 * k;
        for s in 0..k / l {
            for u in 0..t {
                out[base + (s * t + u) * l..][..l]
                    .copy_from_slice(&xs[(t0 + u) * k + s * l..][..l]);
            }
        }
        t0 += t;
    }
    out
}

/// The reference [`Unpack`] (and every ISA's fallback).
///
/// # Safety
/// `w` must hold `groups · nb · 128` bytes and `dst` `groups · 4 · nb · 128`;
/// `shape.rows` divides 4 and `shape.lane` divides 128.
pub unsafe fn unpack_generic(
    w: *const u8,
    nb: usize,
    groups: usize,
    shape: TileShape,
    dst: *mut u8,
) {
    let (r_, l) = (shape.rows, shape.lane);
    let k = nb * QK;
    let steps = k / l;
    // SAFETY: the caller guarantees both extents.
    let src = std::slice::from_raw_parts(w, groups * nb * GROUP_BLOCK_BYTES);
    let dst = std::slice::from_raw_parts_mut(dst, groups * GROUP * k);
    for g in 0..groups {
        for r in 0..GROUP {
            let m = g * GROUP + r;
            let base = (m / r_) * steps * r_ * l + (m % r_) * l;
            for b in 0..nb {
                let run = &src[(g * nb + b) * GROUP_BLOCK_BYTES + r * BLOCK_BYTES..][..BLOCK_BYTES];
                for i in 0..4 {
                    for (j, &byte) in run.iter().enumerate() {
                        let v = b * QK + 32 * i + j;
                        dst[base + (v / l) * r_ * l + v % l] = (byte >> (6 - 2 * i)) & 3;
                    }
                }
            }
        }
    }
}

thread_local! {
    static PANEL: RefCell<LineAligned<u8>> = RefCell::new(LineAligned::zeroed(0));
}

/// Check the arguments of [`gemm`]; the tiles rely on them.
fn check(w: &Packed, g0: usize, g1: usize, x: &Acts, out: &[i32]) {
    let n = x.n();
    assert!(
        g0 <= g1 && g1 <= w.groups(),
        "row groups {}..{} of {}",
        g0,
        g1,
        w.groups()
    );
    assert_eq!(x.k, w.cols(), "activation width");
    assert_eq!(x.xs.len(), n * w.cols(), "activation size");
    if let Some(t) = &x.tiled {
        assert_eq!(t.len(), x.xs.len(), "interleaved activation size");
    }
    assert!(out.len() >= n * GROUP * (g1 - g0), "output size");
}

/// One token against the row groups `g0..g1` of `w`: the groups in `S`
/// runs, group `i` of each run beside the others through `tile`; the few
/// left over one at a time through `packed`. Writes the raw code sums of
/// group `g0 + g` at `out[4g..4g + 4]`.
///
/// # Safety
/// `check(w, g0, g1, x, out)` must have passed with one token in `x`;
/// the tiles must be this CPU's.
unsafe fn one_token_streams<const S: usize>(
    tile: StreamsTile<S>,
    packed: PackedTile,
    w: &Packed,
    g0: usize,
    g1: usize,
    x: &Acts,
    out: &mut [i32],
) {
    let nb = w.blocks();
    let gstride = nb * GROUP_BLOCK_BYTES;
    let wbase = w.group_bytes(g0, g1).as_ptr();
    let (runs, rest) = stream_runs::<S>(g1 - g0);
    let (xs, o) = (x.xs.as_ptr(), out.as_mut_ptr());
    for g in runs {
        // SAFETY: every g is below g1 − g0 (the caller's `check`).
        unsafe {
            tile(
                g.map(|g| wbase.add(g * gstride)),
                nb,
                xs,
                g.map(|g| o.add(g * GROUP)),
            )
        }
    }
    for g in rest {
        // SAFETY: as above, with one token (`ld` unused for it).
        unsafe {
            packed(
                wbase.add(g * gstride),
                nb,
                xs,
                x.k,
                1,
                o.add(g * GROUP),
                GROUP * (g1 - g0),
            )
        }
    }
}

/// The ternary product of the row groups `g0..g1` of `w` with the tokens
/// of `x` (see [`Kernel::i2s_gemm`] for the output layout): exact, one
/// fixed integer sum per output, so every kernel, tile and thread split
/// gives the same values.
pub fn gemm(kern: &Kernel, w: &Packed, g0: usize, g1: usize, x: &Acts, out: &mut [i32]) {
    check(w, g0, g1, x, out);
    let n = x.n();
    let k = w.cols();
    let nb = w.blocks();
    let ld = GROUP * (g1 - g0);
    let gstride = nb * GROUP_BLOCK_BYTES;
    let wbase = w.group_bytes(g0, g1).as_ptr();
    let ops = kern.ops();
    let streams = if n == 1 { ops.i2s_streams } else { None };
    match (&x.tiled, streams) {
        (None, Some(st)) => {
            let packed = ops.i2s_packed;
            // SAFETY: `check` passed, with one token; the tiles are this
            // CPU's.
            unsafe {
                match kern.plan().ternary_now() {
                    8 => one_token_streams(st.eight, packed, w, g0, g1, x, out),
                    _ => one_token_streams(st.four, packed, w, g0, g1, x, out),
                }
            }
        }
        (None, None) => {
            // Token chunks of whole tiles, so the tiles (and the sums) are
            // the same however the batch is chunked.
            let chunk = (PACKED_CHUNK_BYTES / k.max(1) / PACKED_TOKENS).max(1) * PACKED_TOKENS;
            for t0 in (0..n).step_by(chunk) {
                let t1 = (t0 + chunk).min(n);
                for gb in (0..g1 - g0).step_by(GROUP_BLOCK) {
                    let ge = (gb + GROUP_BLOCK).min(g1 - g0);
                    for t in (t0..t1).step_by(PACKED_TOKENS) {
                        let tt = (t1 - t).min(PACKED_TOKENS);
                        for g in gb..ge {
                            // SAFETY: `check` put groups g0..g1 inside `w`,
                            // tokens t..t + tt inside `xs` and row
                            // t·ld + 4g + 3 of `out` inside it; the table is
                            // this CPU's.
                            unsafe {
                                (ops.i2s_packed)(
                                    wbase.add(g * gstride),
                                    nb,
                                    x.xs.as_ptr().add(t * k),
                                    k,
                                    tt,
                                    out.as_mut_ptr().add(t * ld + g * GROUP),
                                    ld,
                                )
                            }
                        }
                    }
                }
            }
        }
        (Some(tiled), _) => {
            let shape = ops.i2s_shape;
            let (rr, tmax) = (shape.rows, shape.tokens);
            let steps = k / shape.lane;
            PANEL.with(|p| {
                let mut panel = p.borrow_mut();
                let need = PANEL_GROUPS * GROUP * k;
                panel.reserve_zeroed(need);
                let mut g = 0;
                while g < g1 - g0 {
                    let pg = (g1 - g0 - g).min(PANEL_GROUPS);
                    // SAFETY: groups g0 + g .. + pg lie inside `w`; the
                    // panel holds PANEL_GROUPS · 4 · k bytes.
                    unsafe {
                        (ops.i2s_unpack)(wbase.add(g * gstride), nb, pg, shape, panel.as_mut_ptr())
                    };
                    let mut t = 0;
                    while t < n {
                        let tt = (n - t).min(tmax);
                        for rt in 0..pg * GROUP / rr {
                            // SAFETY: row tile rt of the panel holds
                            // steps · R · L codes; token tile t holds tt · k
                            // values at t · k; the outputs rows are inside
                            // `out` (checked above).
                            unsafe {
                                (ops.i2s_tile)(
                                    panel.as_ptr().add(rt * rr * k),
                                    tiled.as_ptr().add(t * k),
                                    steps,
                                    tt,
                                    out.as_mut_ptr().add(t * ld + g * GROUP + rt * rr),
                                    ld,
                                )
                            }
                        }
                        t += tt;
                    }
                    g += pg;
                }
            });
        }
    }
    for (row, &s) in out.chunks_mut(ld).zip(x.sums) {
        for v in row.iter_mut() {
            *v -= s;
        }
    }
}
