//! Matrix products of the graph: ternary / float projections with
//! BitLinear semantics, and the float output head. Threaded with rayon over
//! output rows; each output is computed by one thread in a fixed order, so
//! results do not depend on the thread count.

use super::Kernel;
use crate::model::Proj;
use half::f16;
use rayon::prelude::*;

/// A batch of activation rows quantized to int8.
pub struct QBatch {
    pub q: Vec<i8>,
    pub a: Vec<f32>,
    pub sums: Vec<i32>,
    pub k: usize,
}

pub fn quantize_batch(kern: &dyn Kernel, x: &[f32], k: usize) -> QBatch {
    let n = x.len() / k;
    let mut q = vec![0i8; n * k];
    let mut a = vec![0f32; n];
    let mut sums = vec![0i32; n];
    for j in 0..n {
        let (aj, sj) = kern.quantize_act(&x[j * k..(j + 1) * k], &mut q[j * k..(j + 1) * k]);
        a[j] = aj;
        sums[j] = sj;
    }
    QBatch { q, a, sums, k }
}

/// `out[j·rows + m] = W[m] · x_j` with BitLinear semantics.
pub fn matmul(kern: &dyn Kernel, w: &Proj, xb: &QBatch, out: &mut [f32]) {
    let n = xb.a.len();
    let rows = w.rows();
    let k = xb.k;
    debug_assert_eq!(k, w.cols());
    // Work in row blocks; each block writes a transposed [rows_in_block × n] tile.
    let block = (rows / (rayon::current_num_threads() * 4)).clamp(8, 256);
    let mut tiles = vec![0f32; rows * n];
    match w {
        Proj::Ternary { data, scale, .. } => {
            let rb = k / 4;
            tiles
                .par_chunks_mut(block * n)
                .enumerate()
                .for_each(|(bi, tile)| {
                    let mut acc = vec![0i32; n];
                    for (r, trow) in tile.chunks_mut(n).enumerate() {
                        let m = bi * block + r;
                        kern.dot_i2s_rows(
                            &data[m * rb..(m + 1) * rb],
                            &xb.q,
                            &xb.sums,
                            k,
                            &mut acc,
                        );
                        for j in 0..n {
                            trow[j] = acc[j] as f32 * (*scale / xb.a[j]);
                        }
                    }
                });
        }
        Proj::Float { data, .. } => {
            let xf: Vec<f32> = xb.q.iter().map(|&q| q as f32).collect();
            tiles
                .par_chunks_mut(block * n)
                .enumerate()
                .for_each(|(bi, tile)| {
                    for (r, trow) in tile.chunks_mut(n).enumerate() {
                        let m = bi * block + r;
                        let wr = &data[m * k..(m + 1) * k];
                        for j in 0..n {
                            trow[j] = kern.dot_f32(wr, &xf[j * k..(j + 1) * k]) / xb.a[j];
                        }
                    }
                });
        }
    }
    if n == 1 {
        out.copy_from_slice(&tiles);
    } else {
        for m in 0..rows {
            for j in 0..n {
                out[j * rows + m] = tiles[m * n + j];
            }
        }
    }
}


/// Output-head weights (`vocab × d`, row-major).
pub enum HeadWeights<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

/// `logits[r·vocab + v] = W_v · xn_r` for `nr` rows of `xn`, in float.
pub fn head_matmul(kern: &dyn Kernel, w: HeadWeights, xn: &[f32], nr: usize, nv: usize, d: usize) -> Vec<f32> {
    let mut t = vec![0f32; nv * nr];
    let block = 64;
    t.par_chunks_mut(block * nr).enumerate().for_each(|(bi, tile)| {
        for (r, trow) in tile.chunks_mut(nr).enumerate() {
            let v = bi * block + r;
            for (j, o) in trow.iter_mut().enumerate() {
                let x = &xn[j * d..(j + 1) * d];
                *o = match w {
                    HeadWeights::F32(w) => kern.dot_f32(&w[v * d..(v + 1) * d], x),
                    HeadWeights::F16(w) => kern.dot_f16(&w[v * d..(v + 1) * d], x),
                };
            }
        }
    });
    if nr == 1 {
        return t;
    }
    let mut out = vec![0f32; nv * nr];
    for v in 0..nv {
        for j in 0..nr {
            out[j * nv + v] = t[v * nr + j];
        }
    }
    out
}
