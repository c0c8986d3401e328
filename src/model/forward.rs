//! The one forward pass of every architecture (docs §1, §7) over
//! per-sequence KV caches: the blocks are shared, the architecture's row
//! (`Model::hp.graph`) says which norms, activation and RoPE layout apply.
//! One pass runs the tokens of many sequences ([`Batch`], llama.cpp's
//! `llama_batch`); [`Context`], one sequence over one cache, sits on top.

use super::{Hparams, Model};
use crate::hf::config::Activation;
use crate::kernels::ops::{attend, Kv, RopeTable};
use crate::kernels::weights::{hint_next, matmul_many, Acts, Linear};
use crate::kernels::Kernel;
use anyhow::{bail, Result};
use half::{f16, slice::HalfFloatSliceExt};
use rayon::prelude::*;

/// Most tokens pushed through the graph at once (bounds scratch memory).
pub const MAX_BATCH: usize = 512;

/// Keys or values of one KV head of one layer, `positions × head_dim`. The
/// capacity for the whole context is reserved up front (address space only);
/// the vector grows as positions are written, so memory follows use.
enum KvStore {
    F16(Vec<f16>),
    F32(Vec<f32>),
}

impl KvStore {
    fn new(n: usize, f32: bool) -> KvStore {
        if f32 {
            KvStore::F32(Vec::with_capacity(n))
        } else {
            KvStore::F16(Vec::with_capacity(n))
        }
    }
    /// Like `new`, but an allocation the system refuses is `None`.
    fn try_new(n: usize, f32: bool) -> Option<KvStore> {
        Some(if f32 {
            let mut v = Vec::new();
            v.try_reserve_exact(n).ok()?;
            KvStore::F32(v)
        } else {
            let mut v = Vec::new();
            v.try_reserve_exact(n).ok()?;
            KvStore::F16(v)
        })
    }
    /// Write `src` at value offset `at`; `at` is at most the current length
    /// (positions are written in order), so the store grows contiguously.
    ///
    /// The writes of a 2B-4T token (300 stores × 256 bytes) took 0.18 ms
    /// of a decode step on the Zen 5 VM (2026-12-03, one thread): ~0.08
    /// the page faults of growing stores (18.8 a token), the rest reaching
    /// lines not in cache. Converting into a buffer on the stack and
    /// extending the store (one pass over the new lines instead of a zero
    /// fill and a conversion) gave the same step time, alternated in one
    /// process.
    fn write(&mut self, at: usize, src: &[f32]) {
        match self {
            KvStore::F16(v) => {
                if v.len() < at + src.len() {
                    v.resize(at + src.len(), f16::ZERO);
                }
                // half's slice conversion: F16C eight at a time where the
                // CPU has it, the same round-to-nearest-even bits as
                // `f16::from_f32` one value at a time.
                v[at..at + src.len()].convert_from_f32_slice(src);
            }
            KvStore::F32(v) => {
                if v.len() < at + src.len() {
                    v.resize(at + src.len(), 0.0);
                }
                v[at..at + src.len()].copy_from_slice(src)
            }
        }
    }
    fn view(&self) -> Kv<'_> {
        match self {
            KvStore::F16(v) => Kv::F16(v),
            KvStore::F32(v) => Kv::F32(v),
        }
    }
}

/// The KV cache of one sequence: keys and values of every layer for up to
/// `n_ctx` positions, of which the first `n_past` are filled.
///
/// Head-major: each KV head of each layer has its own store
/// (`positions × head_dim`, index `layer · n_head_kv + head`), so a
/// head's attention reads its keys and values as one contiguous stream
/// that the hardware prefetchers follow. With the heads side by side in
/// each position's row (llama.cpp's layout) a head reads 256 of every
/// 1280 bytes at the 2B-4T shapes; on the Intel Xeon VM (2026-12-02, two
/// threads, 30 layers' caches, five KV heads of 128, one token's
/// attention, both layouts alternated in one process) that took
/// 11.4–16.8 ms at depth 1024 and 41–57 ms at 3072 where head-major
/// took 9.2–12.9 and 24–40.
pub struct KvCache {
    n_ctx: usize,
    n_past: usize,
    n_head_kv: usize,
    head_dim: usize,
    k: Vec<KvStore>,
    v: Vec<KvStore>,
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

impl KvCache {
    /// A cache of `n_ctx` positions whose size was checked first:
    /// `n_ctx` must be at least 1, and the cache must fit in the memory that
    /// is available (where the system says) and be granted by the allocator.
    /// The error states the size the cache would need.
    pub fn try_new(hp: &Hparams, n_ctx: usize, kv_f32: bool) -> Result<KvCache, ContextError> {
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
        // Elements per head store; the allocator refuses what cannot be addressed.
        let Some(n) = n_ctx.checked_mul(hp.head_dim) else {
            return Err(err(ContextLimit::AddressSpace));
        };
        if let Some(avail) = available_memory() {
            if kv_cache_bytes(hp, n_ctx, kv_f32) > avail {
                return Err(err(ContextLimit::Memory(avail)));
            }
        }
        let stores = hp.n_layer * hp.n_head_kv;
        let mut k = Vec::with_capacity(stores);
        let mut v = Vec::with_capacity(stores);
        for _ in 0..stores {
            match (KvStore::try_new(n, kv_f32), KvStore::try_new(n, kv_f32)) {
                (Some(a), Some(b)) => {
                    k.push(a);
                    v.push(b);
                }
                _ => return Err(err(ContextLimit::Refused)),
            }
        }
        Ok(KvCache::with_stores(hp, n_ctx, k, v))
    }

    /// An empty cache for `n_ctx` positions (f16, or f32 with `kv_f32`).
    /// Callers bound `n_ctx` first (see [`KvCache::bytes`]).
    pub fn new(hp: &Hparams, n_ctx: usize, kv_f32: bool) -> KvCache {
        let n = n_ctx * hp.head_dim;
        let stores = hp.n_layer * hp.n_head_kv;
        KvCache::with_stores(
            hp,
            n_ctx,
            (0..stores).map(|_| KvStore::new(n, kv_f32)).collect(),
            (0..stores).map(|_| KvStore::new(n, kv_f32)).collect(),
        )
    }

    /// An empty cache over the head stores `k` and `v` (`n_layer ·
    /// n_head_kv` each, index `layer · n_head_kv + head`).
    fn with_stores(hp: &Hparams, n_ctx: usize, k: Vec<KvStore>, v: Vec<KvStore>) -> KvCache {
        KvCache {
            n_ctx,
            n_past: 0,
            n_head_kv: hp.n_head_kv,
            head_dim: hp.head_dim,
            k,
            v,
        }
    }

    /// Write one position's keys and values of layer `li` (`k`, `v`: all
    /// KV heads side by side, `n_head_kv · head_dim` values) into each
    /// head's store.
    fn write(&mut self, li: usize, pos: usize, k: &[f32], v: &[f32]) {
        let hd = self.head_dim;
        for h in 0..self.n_head_kv {
            let i = li * self.n_head_kv + h;
            self.k[i].write(pos * hd, &k[h * hd..(h + 1) * hd]);
            self.v[i].write(pos * hd, &v[h * hd..(h + 1) * hd]);
        }
    }

    /// Keys and values of KV head `h` of layer `li`: `positions ×
    /// head_dim` each.
    fn head(&self, li: usize, h: usize) -> (Kv<'_>, Kv<'_>) {
        let i = li * self.n_head_kv + h;
        (self.k[i].view(), self.v[i].view())
    }

    /// Bytes a full cache of `n_ctx` positions takes (keys and values of
    /// every layer); `None` on overflow.
    pub fn bytes(hp: &Hparams, n_ctx: usize, kv_f32: bool) -> Option<u64> {
        u64::try_from(kv_cache_bytes(hp, n_ctx, kv_f32)).ok()
    }

    /// Positions the cache holds.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Positions filled (the next token goes at position `n_past`).
    pub fn n_past(&self) -> usize {
        self.n_past
    }

    /// Forget everything after the first `n` cached positions.
    pub fn truncate(&mut self, n: usize) {
        self.n_past = self.n_past.min(n);
    }
}

/// The tokens of one forward pass, of any number of sequences (llama.cpp's
/// `llama_batch`): entry `i` is token `token[i]` at position `pos[i]` of
/// sequence `seq[i]` (an index into the caches given to [`decode`]), and its
/// logits are returned when `logits[i]`.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub token: Vec<u32>,
    pub pos: Vec<usize>,
    pub seq: Vec<usize>,
    pub logits: Vec<bool>,
}

impl Batch {
    pub fn add(&mut self, token: u32, pos: usize, seq: usize, logits: bool) {
        self.token.push(token);
        self.pos.push(pos);
        self.seq.push(seq);
        self.logits.push(logits);
    }
    pub fn len(&self) -> usize {
        self.token.len()
    }
    pub fn is_empty(&self) -> bool {
        self.token.is_empty()
    }
    pub fn clear(&mut self) {
        *self = Batch::default();
    }
    /// Entries whose logits [`decode`] returns.
    pub fn n_logits(&self) -> usize {
        self.logits.iter().filter(|&&l| l).count()
    }
}

fn rmsnorm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    crate::kernels::ops::rmsnorm(x, w, eps, out)
}

/// One BitLinear of a group: the weights, its input norm if any, its output.
type Projection<'a> = (&'a dyn Linear, Option<&'a [f32]>, &'a mut [f32]);

/// BitLinear projections sharing one input `x` (rows of `width`), each into
/// its output. Without input norms the activations are prepared once and
/// the products run in one parallel region ([`matmul_many`]); with them
/// (`use_rms_norm`), each projection first normalizes the input with its
/// own weights.
fn bitlinear(kern: &Kernel, x: &[f32], width: usize, norm_eps: f32, outs: &mut [Projection<'_>]) {
    if outs.iter().all(|(_, n, _)| n.is_none()) {
        let mut prods: Vec<(&dyn Linear, &mut [f32])> = outs
            .iter_mut()
            .map(|(w, _, out)| (*w, &mut **out))
            .collect();
        matmul_many(kern, &Acts::new(x, width), &mut prods);
        return;
    }
    let mut xn = vec![0f32; x.len()];
    for (w, n, out) in outs.iter_mut() {
        match n {
            Some(g) => {
                rmsnorm(x, g, norm_eps, &mut xn);
                w.matmul(kern, &Acts::new(&xn, width), out);
            }
            None => w.matmul(kern, &Acts::new(x, width), out),
        }
    }
}

/// Check a batch against the caches: every token in the vocabulary, every
/// sequence index valid, each sequence's positions continuing its cache
/// (`n_past`, `n_past + 1`, … in batch order) and within its context.
fn check_batch(model: &Model, caches: &[&mut KvCache], b: &Batch) -> Result<()> {
    let n = b.len();
    if n == 0 {
        bail!("no tokens to evaluate");
    }
    if n > MAX_BATCH {
        bail!("{} tokens in one batch; at most {}", n, MAX_BATCH);
    }
    if b.pos.len() != n || b.seq.len() != n || b.logits.len() != n {
        bail!("batch fields differ in length");
    }
    let nv = model.hp.n_vocab;
    let mut next: Vec<usize> = caches.iter().map(|c| c.n_past).collect();
    for i in 0..n {
        if b.token[i] as usize >= nv {
            bail!(
                "token id {} is outside the vocabulary of {}",
                b.token[i],
                nv
            );
        }
        let s = b.seq[i];
        let Some(want) = next.get_mut(s) else {
            bail!("sequence {} has no KV cache ({} given)", s, caches.len());
        };
        if b.pos[i] != *want {
            bail!(
                "sequence {}: position {} does not continue its cache (next is {})",
                s,
                b.pos[i],
                want
            );
        }
        if b.pos[i] >= caches[s].n_ctx {
            bail!(
                "context is full: sequence {} at position {} >= context size {}",
                s,
                b.pos[i],
                caches[s].n_ctx
            );
        }
        *want += 1;
    }
    Ok(())
}

/// One forward pass over `batch` (at most [`MAX_BATCH`] tokens of any
/// sequences): writes each token's keys and values into its sequence's
/// cache, attends over that cache only, and returns the logits of the
/// entries marked `logits`, row-major `rows × vocab` in batch order.
///
/// Every kernel computes each output in a fixed order whatever the batch
/// holds, so a sequence's logits do not depend on the other sequences in the
/// batch (`tests/serve_batch.rs` checks bit equality).
///
/// Errors (nothing is written): an empty or oversized batch, a token outside
/// the vocabulary, a position that does not continue its cache or exceeds
/// its context.
pub fn decode(model: &Model, caches: &mut [&mut KvCache], batch: &Batch) -> Result<Vec<f32>> {
    check_batch(model, caches, batch)?;
    crate::kernels::matmul::with_busy_pool(|| forward(model, caches, batch))
}

/// The forward pass of [`decode`] on a checked batch.
fn forward(model: &Model, caches: &mut [&mut KvCache], batch: &Batch) -> Result<Vec<f32>> {
    let m = model;
    let hp = &m.hp;
    let kern = m.kernel;
    let tokens = &batch.token;
    let n = tokens.len();
    let d = hp.n_embd;
    let hd = hp.head_dim;
    let qd = hp.n_head * hd;
    let kvd = hp.n_head_kv * hd;
    let ff = hp.n_ff;

    let mut x = vec![0f32; n * d];
    for (j, &t) in tokens.iter().enumerate() {
        m.tok_embd.row(t as usize, &mut x[j * d..(j + 1) * d]);
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
    let ieps = hp.input_norm_eps;
    // RoPE angles per run of consecutive positions of one sequence: each
    // token is rotated by its own position's angles.
    let mut ropes: Vec<RopeTable> = Vec::new();
    let rope_of: Vec<usize> = (0..n)
        .map(|j| {
            let (s, p) = (batch.seq[j], batch.pos[j]);
            if j == 0 || batch.seq[j - 1] != s || batch.pos[j - 1] + 1 != p {
                let len = (j..n)
                    .take_while(|&i| batch.seq[i] == s && batch.pos[i] == p + (i - j))
                    .count();
                ropes.push(RopeTable::new(&hp.rope.inv_freq, hp.rope.mscale, p, len));
            }
            ropes.len() - 1
        })
        .collect();

    // Prefetch hints for the idle threads (`hint_next`) name the products
    // of the next region: one token, products sharing one region (with
    // input norms each projection is a region of its own).
    let hints = n == 1 && m.layers.iter().all(|l| l.input_norms.is_none());
    for (li, layer) in m.layers.iter().enumerate() {
        if hints {
            hint_next(&[&*layer.wq, &*layer.wk, &*layer.wv]);
        }
        let inorm = layer.input_norms.as_ref();
        rmsnorm(&x, &layer.attn_norm, hp.eps, &mut a);
        bitlinear(
            kern,
            &a,
            d,
            ieps,
            &mut [
                (&*layer.wq, inorm.map(|n| &n.q[..]), &mut q),
                (&*layer.wk, inorm.map(|n| &n.k[..]), &mut kk),
                (&*layer.wv, inorm.map(|n| &n.v[..]), &mut vv),
            ],
        );
        if hints {
            hint_next(&[&*layer.wo]);
        }
        for j in 0..n {
            let (p, s) = (batch.pos[j], batch.seq[j]);
            let rope = &ropes[rope_of[j]];
            rope.apply(&mut q[j * qd..(j + 1) * qd], hp.n_head, p, hp.rope_layout);
            rope.apply(
                &mut kk[j * kvd..(j + 1) * kvd],
                hp.n_head_kv,
                p,
                hp.rope_layout,
            );
            caches[s].write(
                li,
                p,
                &kk[j * kvd..(j + 1) * kvd],
                &vv[j * kvd..(j + 1) * kvd],
            );
        }
        // Read-only from here on in this layer.
        let cached: &[&mut KvCache] = caches;
        let qref = &q;
        // One task per (token, KV head): the `group` query heads that share
        // the KV head read each of its K and V rows once. (2B-4T, two
        // threads, 2026-12-02: two tasks per KV head, half its query heads
        // each, so that five KV heads split evenly, took 0.66 ms of a
        // decode step against 0.61; prefetching every head's K and V rows
        // into L2 before the tasks did not shorten them either. At a depth,
        // 2026-12-02: attention reads ~50% of the streaming rate on one
        // thread and ~40% on two at 4096 positions (tg32 @ d4096 on the
        // Q6_K file: 21.5 of 49.4 ms a step on two threads); splitting the
        // five tasks into scores per 1024-position run, softmax per row
        // and values per 64-column slice, so two threads share evenly,
        // same bits, moved tg32 @ d1024 / d4096 by +2-6% in alternated
        // `tern bench` runs as noisy as that, not kept; an L2 prefetch of
        // V (or of K and V) 128-512 positions ahead, alternated in one
        // process over caches made cold by a 1 GiB read, gained nothing.
        // Zen 5 VM, 2026-12-03, whole decode steps alternated in one
        // process at d4096 on two threads, bits identical: scores by halves
        // of the positions and values by halves of the columns (ten tasks,
        // two regions) 6-9% slower a step; the scores split alone, the
        // five value tasks as here, no different. The same caches on 2 MiB
        // pages (each head's store carved from huge-page memory): steps
        // 2-2.5% faster at d2048-4096, 0-1% at d512 - not taken, since a
        // store's memory would then grow 2 MiB at a time (all of a cache
        // of up to 8192 positions at its first token).)
        o.par_chunks_mut(group * hd)
            .enumerate()
            .for_each(|(c, out)| {
                let j = c / hp.n_head_kv;
                let kvh = c % hp.n_head_kv;
                let qs = &qref[j * qd + kvh * group * hd..j * qd + (kvh + 1) * group * hd];
                let (kc, vc) = cached[batch.seq[j]].head(li, kvh);
                attend(kern, qs, hd, kc, vc, hd, 0, batch.pos[j] + 1, scale, out);
            });
        let attn_out = match &layer.attn_sub_norm {
            Some(w) => {
                rmsnorm(&o, w, hp.eps, &mut o2);
                &o2
            }
            None => &o,
        };
        bitlinear(
            kern,
            attn_out,
            qd,
            ieps,
            &mut [(&*layer.wo, inorm.map(|n| &n.o[..]), &mut tmp)],
        );
        if hints {
            hint_next(&[&*layer.wgate, &*layer.wup]);
        }
        for (xi, ti) in x.iter_mut().zip(&tmp) {
            *xi += ti;
        }
        rmsnorm(&x, &layer.ffn_norm, hp.eps, &mut a);
        bitlinear(
            kern,
            &a,
            d,
            ieps,
            &mut [
                (&*layer.wgate, inorm.map(|n| &n.gate[..]), &mut g),
                (&*layer.wup, inorm.map(|n| &n.up[..]), &mut u),
            ],
        );
        if hints {
            hint_next(&[&*layer.wdown]);
        }
        match hp.activation {
            Activation::Relu2 => {
                for (gi, ui) in g.iter_mut().zip(&u) {
                    let r = gi.max(0.0);
                    *gi = r * r * ui;
                }
            }
            Activation::Silu => {
                for (gi, ui) in g.iter_mut().zip(&u) {
                    *gi = *gi / (1.0 + libm::expf(-*gi)) * ui;
                }
            }
        }
        let ffn_act = match &layer.ffn_sub_norm {
            Some(w) => {
                rmsnorm(&g, w, hp.eps, &mut f2);
                &f2
            }
            None => &g,
        };
        bitlinear(
            kern,
            ffn_act,
            ff,
            ieps,
            &mut [(&*layer.wdown, inorm.map(|n| &n.down[..]), &mut tmp)],
        );
        for (xi, ti) in x.iter_mut().zip(&tmp) {
            *xi += ti;
        }
    }
    if hints && batch.logits[0] {
        hint_next(&[&**m.head()]);
    }
    for &s in &batch.seq {
        caches[s].n_past += 1;
    }
    let rows: Vec<usize> = (0..n).filter(|&j| batch.logits[j]).collect();
    if rows.is_empty() {
        return Ok(vec![]);
    }
    let mut xn = vec![0f32; rows.len() * d];
    for (r, &j) in rows.iter().enumerate() {
        rmsnorm(
            &x[j * d..(j + 1) * d],
            &m.output_norm,
            hp.eps,
            &mut xn[r * d..(r + 1) * d],
        );
    }
    let mut logits = vec![0f32; rows.len() * hp.n_vocab];
    m.head().matmul(kern, &Acts::new(&xn, d), &mut logits);
    Ok(logits)
}

/// One sequence over one KV cache: a thin wrapper over [`decode`].
pub struct Context<'m> {
    pub model: &'m Model,
    pub kv: KvCache,
    /// Most tokens per forward pass when a prompt is evaluated (llama.cpp's
    /// `n_ubatch`); at most [`MAX_BATCH`].
    pub n_batch: usize,
}

impl<'m> Context<'m> {
    pub fn new(model: &'m Model, n_ctx: usize, kv_f32: bool) -> Context<'m> {
        Context {
            model,
            kv: KvCache::new(&model.hp, n_ctx, kv_f32),
            n_batch: MAX_BATCH,
        }
    }

    /// A context whose KV cache size was checked first ([`KvCache::try_new`]).
    pub fn try_new(
        model: &'m Model,
        n_ctx: usize,
        kv_f32: bool,
    ) -> Result<Context<'m>, ContextError> {
        Ok(Context {
            model,
            kv: KvCache::try_new(&model.hp, n_ctx, kv_f32)?,
            n_batch: MAX_BATCH,
        })
    }

    /// Positions the cache holds.
    pub fn n_ctx(&self) -> usize {
        self.kv.n_ctx
    }

    /// Tokens currently in the cache.
    pub fn n_past(&self) -> usize {
        self.kv.n_past
    }

    /// Forget everything after the first `n` cached tokens.
    pub fn truncate(&mut self, n: usize) {
        self.kv.truncate(n);
    }

    /// Run `tokens` after the cached ones (in batches of at most
    /// [`MAX_BATCH`]). Returns the logits of every new position (`all`) or
    /// of the last one only, row-major `positions × vocab`.
    pub fn eval(&mut self, tokens: &[u32], all: bool) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            bail!("no tokens to evaluate");
        }
        let nv = self.model.hp.n_vocab;
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= nv) {
            bail!("token id {} is outside the vocabulary of {}", t, nv);
        }
        let (n_past, n_ctx) = (self.kv.n_past, self.kv.n_ctx);
        if n_past + tokens.len() > n_ctx {
            bail!(
                "context is full: {} cached + {} new tokens > context size {}",
                n_past,
                tokens.len(),
                n_ctx
            );
        }
        let mut logits = Vec::with_capacity(if all { tokens.len() * nv } else { nv });
        let mut batch = Batch::default();
        let n_batch = self.n_batch.clamp(1, MAX_BATCH);
        for (ci, ch) in tokens.chunks(n_batch).enumerate() {
            let last_chunk = (ci + 1) * n_batch >= tokens.len();
            batch.clear();
            let pos0 = self.kv.n_past;
            for (j, &t) in ch.iter().enumerate() {
                let want = all || (last_chunk && j + 1 == ch.len());
                batch.add(t, pos0 + j, 0, want);
            }
            let l = decode(self.model, &mut [&mut self.kv], &batch)?;
            logits.extend_from_slice(&l);
        }
        Ok(logits)
    }
}
