//! The smaller operations of a token: attention over the KV cache and RoPE,
//! on top of the kernel's vector primitives.

use super::Kernel;
use half::f16;
use std::cell::RefCell;

/// One layer of a KV cache: `positions × stride` values.
#[derive(Clone, Copy)]
pub enum Kv<'a> {
    F16(&'a [f16]),
    F32(&'a [f32]),
}

impl Kv<'_> {
    fn dot(&self, kern: &dyn Kernel, at: usize, q: &[f32]) -> f32 {
        match self {
            Kv::F16(v) => kern.dot_f16(&v[at..at + q.len()], q),
            Kv::F32(v) => kern.dot_f32(&v[at..at + q.len()], q),
        }
    }
    fn axpy(&self, kern: &dyn Kernel, at: usize, p: f32, out: &mut [f32]) {
        let n = out.len();
        match self {
            Kv::F16(v) => kern.axpy_f16(p, &v[at..at + n], out),
            Kv::F32(v) => kern.axpy_f32(p, &v[at..at + n], out),
        }
    }
}

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Softmax attention of one query head `q` over the first `npos` positions
/// of `k`/`v` (the head's values at `off..off + q.len()` of each position,
/// positions `stride` apart): `out = Σ_t softmax(scale · q·k_t)_t · v_t`.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    kern: &dyn Kernel,
    q: &[f32],
    k: Kv,
    v: Kv,
    stride: usize,
    off: usize,
    npos: usize,
    scale: f32,
    out: &mut [f32],
) {
    SCORES.with(|s| {
        let mut s = s.borrow_mut();
        s.clear();
        s.extend((0..npos).map(|t| k.dot(kern, t * stride + off, q) * scale));
        let mx = s.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let mut sum = 0f32;
        for x in s.iter_mut() {
            *x = (*x - mx).exp();
            sum += *x;
        }
        out.fill(0.0);
        for (t, &p) in s.iter().enumerate() {
            v.axpy(kern, t * stride + off, p / sum, out);
        }
    });
}

/// NeoX RoPE angles for a run of positions: cos/sin of `pos · θ^(−2i/d)`
/// for i < d/2, computed in f64 as the reference does.
pub struct RopeTable {
    half: usize,
    pos0: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    /// Angles for positions `pos0 .. pos0 + n` of heads `hd` wide.
    pub fn new(hd: usize, theta: f32, pos0: usize, n: usize) -> RopeTable {
        let half = hd / 2;
        let freqs: Vec<f64> = (0..half)
            .map(|i| (theta as f64).powf(-2.0 * i as f64 / hd as f64))
            .collect();
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for p in pos0..pos0 + n {
            for &f in &freqs {
                let (s, c) = (p as f64 * f).sin_cos();
                cos.push(c as f32);
                sin.push(s as f32);
            }
        }
        RopeTable {
            half,
            pos0,
            cos,
            sin,
        }
    }

    /// Rotate every head of `x` (`n_heads × hd`) for position `pos`:
    /// element i pairs with i + hd/2 within each head.
    pub fn apply(&self, x: &mut [f32], n_heads: usize, pos: usize) {
        let half = self.half;
        let r = (pos - self.pos0) * half;
        let (cos, sin) = (&self.cos[r..r + half], &self.sin[r..r + half]);
        for v in x.chunks_exact_mut(2 * half).take(n_heads) {
            let (a, b) = v.split_at_mut(half);
            for i in 0..half {
                let (x0, x1) = (a[i], b[i]);
                a[i] = x0 * cos[i] - x1 * sin[i];
                b[i] = x0 * sin[i] + x1 * cos[i];
            }
        }
    }
}
