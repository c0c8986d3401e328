//! The BitNet graph (docs §1) over a KV cache, batched over prompt tokens.

use super::{Hparams, Model};
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
    /// Like `new`, but an allocation the system refuses is an error.
    fn try_new(n: usize, f32: bool) -> Option<KvStore> {
        fn zeroed<T: Clone>(n: usize, zero: T) -> Option<Vec<T>> {
            let mut v = Vec::new();
            v.try_reserve_exact(n).ok()?;
            v.resize(n, zero);
            Some(v)
        }
        Some(if f32 {
            KvStore::F32(zeroed(n, 0.0)?)
        } else {
            KvStore::F16(zeroed(n, f16::ZERO)?)
        })
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
    /// Most tokens per forward pass when a prompt is evaluated (llama.cpp's
    /// `n_ubatch`); at most [`MAX_BATCH`].
    pub n_batch: usize,
    k: Vec<KvStore>,
    v: Vec<KvStore>,
}

fn rmsnorm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    crate::kernels::ops::rmsnorm(x, w, eps, out)
}

/// Bytes of the KV cache for `n_ctx` tokens: keys and values of every layer,
/// `2 · n_layer · n_ctx · n_head_kv · head_dim` elements of 2 (f16) or 4
/// (f32) bytes. In u128, so that no context size overflows it.
pub fn kv_cache_bytes(hp: &Hparams, n_ctx: usize, kv_f32: bool) -> u128 {
    let elem: u128 = if kv_f32 { 4 } else { 2 };
    // usize → u128 never loses bits.
    let [layers, ctx, kvd] = [hp.n_layer, n_ctx, hp.n_head_kv * hp.head_dim].map(|x| x as u128);
    2 * layers * ctx * kvd * elem
}

/// `bytes` as "1.50 GiB" (binary units, as llama.cpp prints buffer sizes).
pub fn human_bytes(bytes: u128) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut x = bytes as f64;
    let mut u = 0;
    while x >= 1024.0 && u + 1 < UNITS.len() {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{} B", bytes)
    } else {
        format!("{:.2} {}", x, UNITS[u])
    }
}

/// Memory this process could still get (Linux: `MemAvailable + SwapFree`
/// from /proc/meminfo); None where unknown.
pub fn available_memory() -> Option<u128> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u128> {
        let line = info.lines().find(|l| l.starts_with(name))?;
        let kib: u128 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    };
    Some(field("MemAvailable:")? + field("SwapFree:").unwrap_or(0))
}

/// A context that cannot be made: its size, what its KV cache would need,
/// and why that is too much.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a context of {n_ctx} tokens {}",
    match limit {
        ContextLimit::Empty => "holds nothing: it must be at least 1 token".to_string(),
        _ => format!(
            "needs a KV cache of {} ({n_layer} layers × K and V × {n_ctx} tokens × {kv_dim} values × {elem_bytes} bytes), {}",
            human_bytes(*bytes),
            limit
        ),
    }
)]
pub struct ContextError {
    pub n_ctx: usize,
    /// Bytes the KV cache would take ([`kv_cache_bytes`]).
    pub bytes: u128,
    pub n_layer: usize,
    /// K (or V) values per token and layer: `n_head_kv · head_dim`.
    pub kv_dim: usize,
    pub elem_bytes: usize,
    pub limit: ContextLimit,
}

/// What a [`ContextError`] ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ContextLimit {
    #[error("an empty context")]
    Empty,
    #[error("more than this machine can address")]
    AddressSpace,
    /// Bytes of memory available.
    #[error("more than the {} of memory available", human_bytes(*.0))]
    Memory(u128),
    #[error("and the system refused that much memory")]
    Refused,
}

impl<'m> Context<'m> {
    /// A context of `n_ctx` tokens whose KV cache size was checked first:
    /// `n_ctx` must be at least 1, and the cache must fit in the memory that
    /// is available (where the system says) and be granted by the allocator.
    /// The error states the size the cache would need.
    pub fn try_new(
        model: &'m Model,
        n_ctx: usize,
        kv_f32: bool,
    ) -> Result<Context<'m>, ContextError> {
        let hp = &model.hp;
        let err = |limit| ContextError {
            n_ctx,
            bytes: kv_cache_bytes(hp, n_ctx, kv_f32),
            n_layer: hp.n_layer,
            kv_dim: hp.n_head_kv * hp.head_dim,
            elem_bytes: if kv_f32 { 4 } else { 2 },
            limit,
        };
        if n_ctx == 0 {
            return Err(err(ContextLimit::Empty));
        }
        // Elements per layer and tensor; the allocator refuses what cannot be addressed.
        let Some(n) = n_ctx.checked_mul(hp.n_head_kv * hp.head_dim) else {
            return Err(err(ContextLimit::AddressSpace));
        };
        if let Some(avail) = available_memory() {
            if kv_cache_bytes(hp, n_ctx, kv_f32) > avail {
                return Err(err(ContextLimit::Memory(avail)));
            }
        }
        let mut k = Vec::with_capacity(hp.n_layer);
        let mut v = Vec::with_capacity(hp.n_layer);
        for _ in 0..hp.n_layer {
            match (KvStore::try_new(n, kv_f32), KvStore::try_new(n, kv_f32)) {
                (Some(a), Some(b)) => {
                    k.push(a);
                    v.push(b);
                }
                _ => return Err(err(ContextLimit::Refused)),
            }
        }
        Ok(Context {
            model,
            n_ctx,
            n_past: 0,
            n_batch: MAX_BATCH,
            k,
            v,
        })
    }

    pub fn new(model: &'m Model, n_ctx: usize, kv_f32: bool) -> Context<'m> {
        let hp = &model.hp;
        let kvd = hp.n_head_kv * hp.head_dim;
        let n = n_ctx * kvd;
        Context {
            model,
            n_ctx,
            n_past: 0,
            n_batch: MAX_BATCH,
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
        let chunks: Vec<&[u32]> = tokens.chunks(self.n_batch.clamp(1, MAX_BATCH)).collect();
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
