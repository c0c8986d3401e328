//! Matrix products of the graph: ternary / float projections with BitLinear
//! semantics, and the float output head, threaded on the current rayon pool
//! (the global one, or the one a caller `install`ed).
//!
//! Work is split over output rows only: every output value is computed by
//! one kernel call in a fixed order, so results do not depend on the thread
//! count. One token (generation) splits the rows into a few chunks per
//! thread, each streaming its weights once; many tokens (prompt) use
//! smaller row blocks whose packed weights stay in cache while every token
//! passes over them. Per-call scratch is thread-local and reused.

use super::{BlockActs, Kernel, Packed, QuantHead, GROUP};
use crate::model::Proj;
use half::f16;
use rayon::prelude::*;
use std::cell::RefCell;

/// A batch of activation rows quantized to int8.
#[derive(Default)]
pub struct QBatch {
    pub q: Vec<i8>,
    /// Per-row scale `a` (`q ≈ x·a`).
    pub a: Vec<f32>,
    /// Per-row Σq.
    pub sums: Vec<i32>,
    /// Row length.
    pub k: usize,
}

/// Quantize `x` (rows of `k`) per row; see [`Kernel::quantize_act`].
pub fn quantize_batch(kern: &dyn Kernel, x: &[f32], k: usize) -> QBatch {
    let mut qb = QBatch::default();
    quantize_into(kern, x, k, &mut qb);
    qb
}

/// [`quantize_batch`] into an existing batch (no allocation once it is large enough).
pub fn quantize_into(kern: &dyn Kernel, x: &[f32], k: usize, qb: &mut QBatch) {
    assert!(
        k > 0 && x.len().is_multiple_of(k),
        "activations are not whole rows of {}",
        k
    );
    let n = x.len() / k;
    qb.k = k;
    qb.q.resize(n * k, 0);
    qb.a.resize(n, 0.0);
    qb.sums.resize(n, 0);
    let rows = qb.q.chunks_mut(k).zip(x.chunks(k));
    let scales = qb.a.iter_mut().zip(qb.sums.iter_mut());
    if n < 4 || rayon::current_num_threads() == 1 {
        for ((q, xr), (a, s)) in rows.zip(scales) {
            (*a, *s) = kern.quantize_act(xr, q);
        }
    } else {
        qb.q.par_chunks_mut(k)
            .zip(x.par_chunks(k))
            .zip(qb.a.par_iter_mut().zip(qb.sums.par_iter_mut()))
            .for_each(|((q, xr), (a, s))| (*a, *s) = kern.quantize_act(xr, q));
    }
}

thread_local! {
    static SCRATCH_I32: RefCell<Vec<i32>> = const { RefCell::new(Vec::new()) };
    static SCRATCH_F32: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Split `out` (`n` rows of `rows` values) into `ceil(rows / chunk)` tasks
/// of `chunk` output rows each and run `f(task, first_row, outs)` on the
/// pool, `outs[t]` being token t's slice of the task's rows.
fn par_rows<F>(out: &mut [f32], n: usize, rows: usize, chunk: usize, f: F)
where
    F: Fn(usize, usize, &mut [&mut [f32]]) + Sync,
{
    assert_eq!(out.len(), n * rows, "output size");
    if n == 0 || rows == 0 {
        return;
    }
    let ntasks = rows.div_ceil(chunk);
    if ntasks <= 1 || rayon::current_num_threads() == 1 {
        for task in 0..ntasks {
            let m0 = task * chunk;
            let m1 = (m0 + chunk).min(rows);
            let mut outs: Vec<&mut [f32]> = out.chunks_mut(rows).map(|r| &mut r[m0..m1]).collect();
            f(task, m0, &mut outs);
        }
        return;
    }
    let mut tasks: Vec<Vec<&mut [f32]>> = (0..ntasks).map(|_| Vec::with_capacity(n)).collect();
    for row in out.chunks_mut(rows) {
        let mut rest = row;
        for t in tasks.iter_mut() {
            let len = chunk.min(rest.len());
            let (a, b) = rest.split_at_mut(len);
            t.push(a);
            rest = b;
        }
    }
    tasks
        .into_par_iter()
        .enumerate()
        .for_each(|(task, mut outs)| f(task, task * chunk, &mut outs));
}

/// Output rows per task: a few chunks per thread for one token (each
/// streams its weights once; several per thread balance a busy core),
/// blocks of at most `max_rows` for many tokens.
fn chunk_rows(rows: usize, n: usize, max_rows: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let c = if n == 1 {
        rows.div_ceil(threads * 4)
    } else {
        rows.div_ceil(threads * 8).min(max_rows)
    };
    c.max(1).next_multiple_of(GROUP)
}

/// `out[t·rows + m] = W[m] · x_t` with BitLinear semantics.
pub fn matmul(kern: &dyn Kernel, w: &Proj, xb: &QBatch, out: &mut [f32]) {
    let n = xb.a.len();
    assert_eq!(xb.k, w.cols(), "activation width");
    match w {
        Proj::Ternary { data, scale, .. } => ternary(kern, data, *scale, xb, out),
        Proj::Float { data, rows, cols } => {
            let xf: Vec<f32> = xb.q.iter().map(|&q| q as f32).collect();
            let (rows, k) = (*rows, *cols);
            let chunk = chunk_rows(rows, n, 64);
            par_rows(out, n, rows, chunk, |_, m0, outs| {
                let m1 = m0 + outs[0].len();
                float_block(n, m1 - m0, outs, |buf| {
                    kern.f32_gemm(data, k, m0, m1, &xf, n, buf)
                });
                for (o, &a) in outs.iter_mut().zip(&xb.a) {
                    for v in o.iter_mut() {
                        *v /= a;
                    }
                }
            });
        }
    }
}

/// The ternary product: integer dots from the kernel, then `s · dot / a_t`.
pub fn ternary(kern: &dyn Kernel, w: &Packed, scale: f32, xb: &QBatch, out: &mut [f32]) {
    let n = xb.a.len();
    let rows = w.rows();
    let chunk = chunk_rows(rows, n, 64);
    par_rows(out, n, rows, chunk, |_, m0, outs| {
        let g0 = m0 / GROUP;
        let g1 = (m0 + outs[0].len()).div_ceil(GROUP);
        let ld = GROUP * (g1 - g0);
        SCRATCH_I32.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < n * ld {
                s.resize(n * ld, 0);
            }
            kern.i2s_gemm(w, g0, g1, &xb.q, &xb.sums, &mut s[..n * ld]);
            for (t, o) in outs.iter_mut().enumerate() {
                let f = scale / xb.a[t];
                for (dst, &v) in o.iter_mut().zip(&s[t * ld..]) {
                    *dst = v as f32 * f;
                }
            }
        });
    });
}

/// Run a float GEMM `run(buf)` producing `n × len` values token-major and
/// copy them into the per-token slices `outs`; with one token the kernel
/// writes into the output directly.
fn float_block(n: usize, len: usize, outs: &mut [&mut [f32]], run: impl FnOnce(&mut [f32])) {
    if n == 1 {
        run(outs[0]);
        return;
    }
    SCRATCH_F32.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < n * len {
            s.resize(n * len, 0.0);
        }
        run(&mut s[..n * len]);
        for (t, o) in outs.iter_mut().enumerate() {
            o.copy_from_slice(&s[t * len..(t + 1) * len]);
        }
    });
}

/// Output-head weights (`vocab × d`, row-major).
#[derive(Clone, Copy)]
pub enum HeadWeights<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    /// Q8_0 blocks (34 bytes per 32 values), rows back to back.
    Q8_0(&'a [u8]),
    /// Q6_K blocks (210 bytes per 256 values), rows back to back.
    Q6K(&'a [u8]),
}

/// `logits[r·vocab + v] = W_v · xn_r` for `nr` rows of `xn`: in float for
/// F32/F16 weights; for Q8_0/Q6_K weights each row of `xn` is first
/// quantized per block as ggml does (see [`BlockActs`]) and the products
/// are integer per block.
pub fn head_matmul(
    kern: &dyn Kernel,
    w: HeadWeights,
    xn: &[f32],
    nr: usize,
    nv: usize,
    d: usize,
) -> Vec<f32> {
    let mut out = vec![0f32; nv * nr];
    head_matmul_into(kern, w, xn, nr, nv, d, &mut out);
    out
}

/// [`head_matmul`] into `out` (`nr · nv` values).
pub fn head_matmul_into(
    kern: &dyn Kernel,
    w: HeadWeights,
    xn: &[f32],
    nr: usize,
    nv: usize,
    d: usize,
    out: &mut [f32],
) {
    let chunk = chunk_rows(nv, nr, 64);
    let acts = match w {
        HeadWeights::Q8_0(_) => Some(BlockActs::quantize(QuantHead::Q8_0, &xn[..nr * d], d)),
        HeadWeights::Q6K(_) => Some(BlockActs::quantize(QuantHead::Q6K, &xn[..nr * d], d)),
        _ => None,
    };
    par_rows(out, nr, nv, chunk, |_, v0, outs| {
        let v1 = v0 + outs[0].len();
        float_block(nr, v1 - v0, outs, |buf| match (w, &acts) {
            (HeadWeights::F32(w), _) => kern.f32_gemm(w, d, v0, v1, xn, nr, buf),
            (HeadWeights::F16(w), _) => kern.f16_gemm(w, d, v0, v1, xn, nr, buf),
            (HeadWeights::Q8_0(w), Some(x)) => kern.q8_0_gemm(w, v0, v1, x, buf),
            (HeadWeights::Q6K(w), Some(x)) => kern.q6_k_gemm(w, v0, v1, x, buf),
            _ => unreachable!("quantized weights come with quantized activations"),
        });
    });
}
