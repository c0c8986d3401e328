//! The float GEMM driver (F16/F32 output heads and float projections),
//! shared by every ISA: one token streams four rows per tile (where the
//! ISA has a [`StreamsTile`], two or four rows from as many distant runs
//! of the range, as the kernel's `StreamPlan` says), several tokens take
//! tiles of two rows × up to four tokens.
//!
//! Every ISA's [`Tile`] (and [`StreamsTile`]) computes each (row, token)
//! dot with one fixed accumulation order that does not depend on how many
//! rows or tokens the tile holds, so a kernel's result does not depend on
//! the tiling, the thread split or the batch.

use super::layout::stream_runs;
use super::Kernel;
use half::f16;

/// Float weight rows, row-major.
#[derive(Clone, Copy)]
pub enum Rows<'a> {
    F16(&'a [f16]),
    F32(&'a [f32]),
}

impl Rows<'_> {
    fn len(&self) -> usize {
        match self {
            Rows::F16(w) => w.len(),
            Rows::F32(w) => w.len(),
        }
    }
    fn ptr(&self) -> *const u8 {
        match self {
            Rows::F16(w) => w.as_ptr() as *const u8,
            Rows::F32(w) => w.as_ptr() as *const u8,
        }
    }
    fn elem(&self) -> usize {
        match self {
            Rows::F16(_) => 2,
            Rows::F32(_) => 4,
        }
    }
}

/// `r` weight rows (`d` elements each, back to back from `w`; f16 or f32
/// by the table entry) × `t` f32 token rows (`d` apart from `x`):
/// `out[u · ld + j] = w_j · x_u`. Shapes: `r ≤ 4` with `t = 1`, or `r ≤ 2`
/// with `t ≤ 4`.
pub type Tile =
    unsafe fn(w: *const u8, d: usize, r: usize, x: *const f32, t: usize, out: *mut f32, ld: usize);

/// `$run!(R, T)` for the tile shape `(r, t)` the driver asks for (`r ≤ 4`
/// with one token, `r ≤ 2` with up to four): the one table of shapes the
/// ISA files instantiate their float tiles for.
macro_rules! float_tile_shapes {
    ($r:expr, $t:expr, $run:ident) => {
        match ($r, $t) {
            (4, 1) => $run!(4, 1),
            (3, 1) => $run!(3, 1),
            (2, 4) => $run!(2, 4),
            (2, 3) => $run!(2, 3),
            (2, 2) => $run!(2, 2),
            (2, _) => $run!(2, 1),
            (_, 4) => $run!(1, 4),
            (_, 3) => $run!(1, 3),
            (_, 2) => $run!(1, 2),
            _ => $run!(1, 1),
        }
    };
}
pub(crate) use float_tile_shapes;

/// An ISA's [`Tile`], `unsafe fn float_dispatch<const F16: bool>` with
/// the target features `$feat`, over its register tile
/// `$tile::<F16, R, T, $extra…>(rows, tokens, d) -> [[f32; T]; R]` in the
/// shape the driver asks for ([`float_tile_shapes`]), stored with
/// [`store_tile`]. The table entries are `float_dispatch::<true>` (f16
/// rows) and `float_dispatch::<false>` (f32).
macro_rules! float_dispatch_fn {
    ($feat:literal, $tile:ident $(, $extra:tt)*) => {
        /// `float::Tile` for F16 (`F16`) or F32 rows: the register tile in
        /// the shape the driver asks for.
        ///
        /// # Safety
        /// The tile contract of `float::Tile`, on a CPU with the features
        /// this function is compiled for.
        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = $feat)]
        unsafe fn float_dispatch<const F16: bool>(
            w: *const u8,
            d: usize,
            r: usize,
            x: *const f32,
            t: usize,
            out: *mut f32,
            ld: usize,
        ) {
            let es = if F16 { 2 } else { 4 };
            let row = |j: usize| w.add(j * d * es);
            let xr = |u: usize| x.add(u * d);
            macro_rules! run {
                ($rr:literal, $tt:literal) => {{
                    let res = $tile::<F16, $rr, $tt $(, $extra)*>(
                        std::array::from_fn(row),
                        std::array::from_fn(xr),
                        d,
                    );
                    $crate::kernels::float::store_tile(res, out, ld);
                }};
            }
            $crate::kernels::float::float_tile_shapes!(r, t, run)
        }
    };
}
pub(crate) use float_dispatch_fn;

/// Store an `R × T` tile's results, row `j` token `u`, at `out[u · ld + j]`.
///
/// # Safety
/// `out` must be valid for writes at `u · ld + j` for every `u < T`, `j < R`.
#[inline(always)]
pub(crate) unsafe fn store_tile<const R: usize, const T: usize>(
    res: [[f32; T]; R],
    out: *mut f32,
    ld: usize,
) {
    for (j, rj) in res.iter().enumerate() {
        for (u, &val) in rj.iter().enumerate() {
            // SAFETY: the caller's contract.
            unsafe { *out.add(u * ld + j) = val };
        }
    }
}

/// One token against `S` weight rows that lie apart in memory (each
/// `w[s]` at a row of `d` f16 or f32 values by the table entry; `x` at
/// `d` f32 values): returns `w[s] · x` for each, each the bits the plain
/// [`Tile`] gives that row. Rows far apart keep more lines in flight than
/// four neighbouring rows (see `ops::StreamRead`), as the one-token
/// ternary and Q6_K products read their groups (`ternary::StreamsTile`,
/// `qhead::StreamsTile`).
pub type StreamsTile<const S: usize> =
    unsafe fn(w: [*const u8; S], d: usize, x: *const f32) -> [f32; S];

/// A kernel's one-token [`StreamsTile`]s for one element type, one per row
/// count; the kernel's [`super::StreamPlan`] says which a product takes.
#[derive(Clone, Copy)]
pub struct Streams {
    pub two: StreamsTile<2>,
    pub four: StreamsTile<4>,
}

/// Rows per tile with one token, and rows × tokens with several.
pub const GEMV_ROWS: usize = 4;
pub const GEMM_ROWS: usize = 2;
pub const GEMM_TOKENS: usize = 4;

/// Check the arguments of the float GEMMs.
fn check(wlen: usize, d: usize, v0: usize, v1: usize, xs: &[f32], n: usize, out: &[f32]) {
    assert!(
        v0 <= v1 && v1.checked_mul(d).is_some_and(|e| e <= wlen),
        "rows {}..{} of {}",
        v0,
        v1,
        wlen / d.max(1)
    );
    assert!(xs.len() >= n * d, "activation size");
    assert!(out.len() >= n * (v1 - v0), "output size");
}

/// Rows `v0..v1` in `S` runs through `tile`, row `i` of each run beside
/// the others, their values at `out[v − v0]`; returns the first row left
/// over (the rest of the range is the caller's). `row(v)` is row `v`'s
/// address.
///
/// # Safety
/// Rows `v0..v1` (`d` values each, at `row(v)`) must lie inside the
/// matrix, `x` must hold one token of `d` and `out` at least `v1 − v0`
/// values; `tile` must be this CPU's.
unsafe fn rows_apart<const S: usize>(
    tile: StreamsTile<S>,
    row: impl Fn(usize) -> *const u8,
    v0: usize,
    v1: usize,
    d: usize,
    x: *const f32,
    out: &mut [f32],
) -> usize {
    let (runs, rest) = stream_runs::<S>(v1 - v0);
    for r in runs {
        // SAFETY: the caller's extents.
        let res = unsafe { tile(r.map(|i| row(v0 + i)), d, x) };
        for (&i, val) in r.iter().zip(res) {
            out[i] = val;
        }
    }
    v0 + rest.start
}

/// Rows `v0..v1` of `w` (row length `d`) against `n` f32 rows `xs`:
/// `out[t · (v1 - v0) + (v - v0)] = w_v · xs_t`.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    kern: &Kernel,
    w: Rows,
    d: usize,
    v0: usize,
    v1: usize,
    xs: &[f32],
    n: usize,
    out: &mut [f32],
) {
    check(w.len(), d, v0, v1, xs, n, out);
    let tile = match w {
        Rows::F16(_) => kern.ops().f16_tile,
        Rows::F32(_) => kern.ops().f32_tile,
    };
    let row = |v: usize| w.ptr().wrapping_add(v * d * w.elem());
    let streams = match w {
        Rows::F16(_) if n == 1 => kern.ops().f16_streams,
        Rows::F32(_) if n == 1 => kern.ops().f32_streams,
        _ => None,
    };
    // With one token and a streams tile, the rows in as many runs as the
    // plan says (row i of each run beside the others) first; the rows left
    // over from `first` on tile by tile below.
    let mut first = v0;
    if let Some(st) = streams {
        let x = xs.as_ptr();
        // SAFETY: `check` put rows v0..v1 inside `w`, one token of `d`
        // inside `xs` and `v1 − v0` values inside `out`; the tiles are
        // this CPU's.
        first = match kern.plan().float_now() {
            2 => unsafe { rows_apart(st.two, row, v0, v1, d, x, out) },
            _ => unsafe { rows_apart(st.four, row, v0, v1, d, x, out) },
        };
    }
    let ld = v1 - v0;
    let (rows, tokens) = if n == 1 {
        (GEMV_ROWS, 1)
    } else {
        (GEMM_ROWS, GEMM_TOKENS)
    };
    let mut t = 0;
    while t < n {
        let tt = (n - t).min(tokens);
        // `first` is v0 but with one token.
        let mut v = first;
        while v < v1 {
            let r = (v1 - v).min(rows);
            // SAFETY: `check` put rows v..v + r inside `w`, tokens
            // t..t + tt inside `xs` and their outputs inside `out`; the
            // table is this CPU's and the shape one the tiles take.
            unsafe {
                tile(
                    row(v),
                    d,
                    r,
                    xs.as_ptr().add(t * d),
                    tt,
                    out.as_mut_ptr().add(t * ld + v - v0),
                    ld,
                )
            }
            v += r;
        }
        t += tt;
    }
}
