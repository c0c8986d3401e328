//! The BitNet graph (docs §1) over a KV cache, batched over prompt tokens.

use super::Model;
use crate::hf::config::Activation;
use crate::kernels::matmul::{head_matmul, matmul, quantize_batch};
use crate::kernels::ops::{attend, Kv, RopeTable};
use anyhow::{bail, Result};
use half::f16;
use rayon::prelude::*;

/// Most tokens pushed through the graph at once (bounds scratch memory).
pub const MAX_BATCH: usize = 512;

enum KvStore {
    F16(Vec<f16>),
    F32(Vec<f32>),
}

impl KvStore {
    fn new(n: usize, f32: bool) -> KvStore {
        if f32 {
            KvStore::F32(vec![0.0; n])
        } else {
            KvStore::F16(vec![f16::ZERO; n])
        }
    }
    fn write(&mut self, at: usize, src: &[f32]) {
        match self {
            KvStore::F16(v) => {
                for (d, s) in v[at..at + src.len()].iter_mut().zip(src) {
                    *d = f16::from_f32(*s);
                }
            }
            KvStore::F32(v) => v[at..at + src.len()].copy_from_slice(src),
        }
    }
    fn view(&self) -> Kv<'_> {
        match self {
            KvStore::F16(v) => Kv::F16(v),
            KvStore::F32(v) => Kv::F32(v),
        }
    }
}

/// Inference state: the KV cache of one sequence.
pub struct Context<'m> {
    pub model: &'m Model,
    pub n_ctx: usize,
    /// Tokens currently in the cache.
    pub n_past: usize,
    k: Vec<KvStore>,
    v: Vec<KvStore>,
}

fn rmsnorm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    crate::kernels::ops::rmsnorm(x, w, eps, out)
}

impl<'m> Context<'m> {
    pub fn new(model: &'m Model, n_ctx: usize, kv_f32: bool) -> Context<'m> {
        let hp = &model.hp;
        let kvd = hp.n_head_kv * hp.head_dim;
        let n = n_ctx * kvd;
        Context {
            model,
            n_ctx,
            n_past: 0,
            k: (0..hp.n_layer).map(|_| KvStore::new(n, kv_f32)).collect(),
            v: (0..hp.n_layer).map(|_| KvStore::new(n, kv_f32)).collect(),
        }
    }

    /// Forget everything after the first `n` cached tokens.
    pub fn truncate(&mut self, n: usize) {
        self.n_past = self.n_past.min(n);
    }

    /// Run `tokens` after the cached ones. Returns the logits of every new
    /// position (`all`) or of the last one only, row-major `positions × vocab`.
    pub fn eval(&mut self, tokens: &[u32], all: bool) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            bail!("no tokens to evaluate");
        }
        let nv = self.model.hp.n_vocab;
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= nv) {
            bail!("token id {} is outside the vocabulary of {}", t, nv);
        }
        if self.n_past + tokens.len() > self.n_ctx {
            bail!(
                "context is full: {} cached + {} new tokens > context size {}",
                self.n_past,
                tokens.len(),
                self.n_ctx
            );
        }
        let mut logits = Vec::with_capacity(if all { tokens.len() * nv } else { nv });
        let chunks: Vec<&[u32]> = tokens.chunks(MAX_BATCH).collect();
        let last = chunks.len() - 1;
        for (ci, ch) in chunks.into_iter().enumerate() {
            let want = all || ci == last;
            let l = self.eval_batch(ch, want, all)?;
            logits.extend_from_slice(&l);
        }
        Ok(logits)
    }

    fn eval_batch(&mut self, tokens: &[u32], want_logits: bool, all: bool) -> Result<Vec<f32>> {
        let m = self.model;
        let hp = &m.hp;
        let kern = m.kernel;
        let n = tokens.len();
        let d = hp.n_embd;
        let hd = hp.head_dim;
        let qd = hp.n_head * hd;
        let kvd = hp.n_head_kv * hd;
        let ff = hp.n_ff;
        let pos0 = self.n_past;

        let mut x = vec![0f32; n * d];
        for (j, &t) in tokens.iter().enumerate() {
            m.float_row(&m.tok_embd, t as usize, &mut x[j * d..(j + 1) * d]);
        }
        let mut a = vec![0f32; n * d];
        let mut q = vec![0f32; n * qd];
        let mut kk = vec![0f32; n * kvd];
        let mut vv = vec![0f32; n * kvd];
        let mut o = vec![0f32; n * qd];
        let mut o2 = vec![0f32; n * qd];
        let mut tmp = vec![0f32; n * d];
        let mut g = vec![0f32; n * ff];
        let mut u = vec![0f32; n * ff];
        let mut f2 = vec![0f32; n * ff];
        let scale = 1.0 / (hd as f32).sqrt();
        let group = hp.n_head / hp.n_head_kv;
        let rope = RopeTable::new(hd, hp.rope_theta, pos0, n);

        for (li, layer) in m.layers.iter().enumerate() {
            rmsnorm(&x, &layer.attn_norm, hp.eps, &mut a);
            let qa = quantize_batch(kern, &a, d);
            matmul(kern, &layer.wq, &qa, &mut q);
            matmul(kern, &layer.wk, &qa, &mut kk);
            matmul(kern, &layer.wv, &qa, &mut vv);
            for j in 0..n {
                rope.apply(&mut q[j * qd..(j + 1) * qd], hp.n_head, pos0 + j);
                rope.apply(&mut kk[j * kvd..(j + 1) * kvd], hp.n_head_kv, pos0 + j);
                self.k[li].write((pos0 + j) * kvd, &kk[j * kvd..(j + 1) * kvd]);
                self.v[li].write((pos0 + j) * kvd, &vv[j * kvd..(j + 1) * kvd]);
            }
            let (kc, vc) = (self.k[li].view(), self.v[li].view());
            let qref = &q;
            o.par_chunks_mut(hd).enumerate().for_each(|(c, out)| {
                let j = c / hp.n_head;
                let h = c % hp.n_head;
                let qv = &qref[j * qd + h * hd..j * qd + (h + 1) * hd];
                attend(
                    kern,
                    qv,
                    kc,
                    vc,
                    kvd,
                    (h / group) * hd,
                    pos0 + j + 1,
                    scale,
                    out,
                );
            });
            rmsnorm(&o, &layer.attn_sub_norm, hp.eps, &mut o2);
            let qo = quantize_batch(kern, &o2, qd);
            matmul(kern, &layer.wo, &qo, &mut tmp);
            for (xi, ti) in x.iter_mut().zip(&tmp) {
                *xi += ti;
            }
            rmsnorm(&x, &layer.ffn_norm, hp.eps, &mut a);
            let qf = quantize_batch(kern, &a, d);
            matmul(kern, &layer.wgate, &qf, &mut g);
            matmul(kern, &layer.wup, &qf, &mut u);
            match hp.activation {
                Activation::Relu2 => {
                    for (gi, ui) in g.iter_mut().zip(&u) {
                        let r = gi.max(0.0);
                        *gi = r * r * ui;
                    }
                }
                Activation::Silu => {
                    for (gi, ui) in g.iter_mut().zip(&u) {
                        *gi = *gi / (1.0 + (-*gi).exp()) * ui;
                    }
                }
            }
            rmsnorm(&g, &layer.ffn_sub_norm, hp.eps, &mut f2);
            let qd2 = quantize_batch(kern, &f2, ff);
            matmul(kern, &layer.wdown, &qd2, &mut tmp);
            for (xi, ti) in x.iter_mut().zip(&tmp) {
                *xi += ti;
            }
        }
        self.n_past += n;
        if !want_logits {
            return Ok(vec![]);
        }
        let rows: Vec<usize> = if all { (0..n).collect() } else { vec![n - 1] };
        let mut xn = vec![0f32; rows.len() * d];
        for (r, &j) in rows.iter().enumerate() {
            rmsnorm(
                &x[j * d..(j + 1) * d],
                &m.output_norm,
                hp.eps,
                &mut xn[r * d..(r + 1) * d],
            );
        }
        let m = self.model;
        Ok(head_matmul(
            m.kernel,
            m.head_weights(),
            &xn,
            rows.len(),
            hp.n_vocab,
            d,
        ))
    }
}
