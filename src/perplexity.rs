//! Perplexity and KL divergence, by llama.cpp's `llama-perplexity` method.
//!
//! # Perplexity
//!
//! The text is tokenized once (BOS first when the model adds BOS) and cut into
//! `n_chunk = n_tokens / n_ctx` chunks of `n_ctx` tokens; the tail that does not
//! fill a chunk is dropped. When the model adds BOS, the first token of every
//! chunk is *replaced* by BOS (not inserted before it), so every chunk is still
//! exactly `n_ctx` tokens. Each chunk is evaluated from an empty KV cache, in
//! pieces of `n_batch` tokens. Only the second half of a chunk is scored: with
//! `first = n_ctx / 2`, the logits at position `j` (for `j` in
//! `first..=n_ctx - 2`) predict the original token `j + 1`, giving
//! `n_ctx - 1 - first` scored tokens per chunk. `PPL = exp(mean NLL)`, and its
//! uncertainty is `PPL * sqrt((mean(NLL²) - mean(NLL)²) / (count - 1))`.
//!
//! # KL-divergence base file (`.kld`)
//!
//! Byte-compatible with the file llama.cpp's `llama-perplexity
//! --kl-divergence-base` writes, so a base saved by either tool can be read by
//! the other. All numbers are little-endian:
//!
//! | bytes | content |
//! |---|---|
//! | 8 | magic `_logits_` |
//! | 4 | `n_ctx` (i32) |
//! | 4 | `n_vocab` (i32) |
//! | 4 | `n_chunk` (i32) |
//! | 4·n_ctx·n_chunk | the evaluated tokens (i32), as tokenized (BOS not substituted) |
//! | … | per chunk, per scored position (`n_ctx - 1 - n_ctx/2` of them), one record |
//!
//! A record is `nv = 2·⌈n_vocab/2⌉ + 4` u16 words (`2·nv` bytes): f32 `scale`,
//! f32 `min_log_prob`, then `n_vocab` u16 codes `q[i]`, then zero padding to
//! `nv` words. The base model's log-probability of token `i` is
//! `scale·q[i] + min_log_prob`: every record describes its own range, and
//! readers need nothing else. The codes cover `[lo, max logit]`, with
//! `scale = (max logit - lo) / 65535`,
//! `min_log_prob = lo - max logit - ln Σ exp(logit - max logit)` and
//! `q[i] = round((logit[i] - lo) / scale)` (0 for logits at or below `lo`).
//! llama.cpp takes `lo = max(min logit, max logit - 16)`; tern lowers the floor
//! to the target token's logit when that is further down (never below
//! `max logit - 64`), so the base's NLL of the scored token is kept rather than
//! clipped at ~16 nats and `PPL(base)` matches the base run's own estimate.
//! The top token is exact; others carry at most `scale/2` (≤ 1.3e-4 nats, or
//! ≤ 5e-4 in a widened record) of rounding, so a model compared with itself
//! shows per-position KL values of a few 1e-5 of either sign and a mean of
//! order 1e-7, rather than exactly 0.
//! In the KL sum, base log-probabilities at or below -16 are skipped, as in
//! llama.cpp.

use crate::model::{Context, Model};
use anyhow::{bail, Context as _, Result};
use rayon::prelude::*;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::Path;
use std::time::Instant;

/// Magic bytes at the start of a KL-divergence base file.
pub const KLD_MAGIC: &[u8; 8] = b"_logits_";

/// How a text is cut and evaluated.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Tokens per chunk (`-c`).
    pub n_ctx: usize,
    /// Tokens per forward pass (`-b`).
    pub n_batch: usize,
    /// Evaluate at most this many chunks (`--chunks`).
    pub max_chunks: Option<usize>,
    /// Keep the KV cache in f32 instead of f16.
    pub kv_f32: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            n_ctx: 512,
            n_batch: 512,
            max_chunks: None,
            kv_f32: false,
        }
    }
}

impl Options {
    /// Check the sizes: `n_ctx` ≥ 3, `n_batch` ≥ 1, `max_chunks` ≥ 1.
    pub fn validate(&self) -> Result<()> {
        if self.n_ctx < 3 {
            bail!(
                "context size {} is too small: -c must be at least 3",
                self.n_ctx
            );
        }
        if self.n_batch == 0 {
            bail!("batch size must be at least 1");
        }
        if self.max_chunks == Some(0) {
            bail!("--chunks must be at least 1");
        }
        Ok(())
    }
}

/// First scored logit position of a chunk (`n_ctx / 2`).
pub fn first_scored(n_ctx: usize) -> usize {
    n_ctx / 2
}

/// Scored tokens per chunk: `n_ctx - 1 - n_ctx / 2`.
pub fn scored_per_chunk(n_ctx: usize) -> usize {
    n_ctx - 1 - first_scored(n_ctx)
}

/// The smallest context that scores a token (`scored_per_chunk` ≥ 1).
pub const MIN_CTX: usize = 3;

/// Refuse a context too small to score a token (below [`MIN_CTX`]).
pub fn check_n_ctx(n_ctx: usize) -> Result<()> {
    if n_ctx < MIN_CTX {
        bail!(
            "a context of {} tokens scores nothing: perplexity needs at least {} (the second half of each chunk is scored)",
            n_ctx,
            MIN_CTX
        );
    }
    Ok(())
}

/// Number of chunks a text of `n_tokens` gives: `n_tokens / n_ctx`, capped by
/// `max_chunks`. Like llama-perplexity, at least `2·n_ctx` tokens are required.
pub fn chunk_count(n_tokens: usize, n_ctx: usize, max_chunks: Option<usize>) -> Result<usize> {
    check_n_ctx(n_ctx)?;
    // u128: no context size overflows the doubling.
    let need = 2 * n_ctx as u128;
    if (n_tokens as u128) < need {
        bail!(
            "the text tokenizes to only {} tokens; perplexity with a context of {} needs at least {} (use a longer text or a smaller -c)",
            n_tokens,
            n_ctx,
            need
        );
    }
    let n = n_tokens / n_ctx;
    Ok(max_chunks.map_or(n, |m| m.min(n)))
}

/// The tokens fed to the model for chunk `i`: `tokens[i·n_ctx .. (i+1)·n_ctx]`
/// with the first one replaced by `bos` when given.
pub fn chunk_input(tokens: &[u32], i: usize, n_ctx: usize, bos: Option<u32>) -> Vec<u32> {
    let mut v = tokens[i * n_ctx..(i + 1) * n_ctx].to_vec();
    if let Some(b) = bos {
        v[0] = b;
    }
    v
}

/// The BOS substituted at the start of each chunk, if the model adds BOS.
pub fn chunk_bos(model: &Model) -> Option<u32> {
    if model.tokenizer.add_bos() {
        model.tokenizer.bos()
    } else {
        None
    }
}

/// Evaluate one chunk from an empty cache in pieces of `n_batch` tokens and
/// return the logits of positions `first..input.len()` (row-major, × vocab).
/// Pieces that end before `first` are run without computing their logits.
pub fn eval_chunk(
    ctx: &mut Context,
    input: &[u32],
    n_batch: usize,
    first: usize,
) -> Result<Vec<f32>> {
    let nv = ctx.model.hp.n_vocab;
    ctx.truncate(0);
    let mut out = Vec::with_capacity((input.len() - first) * nv);
    let mut start = 0;
    for piece in input.chunks(n_batch.max(1)) {
        let end = start + piece.len();
        if end <= first {
            ctx.eval(piece, false)?;
        } else {
            let l = ctx.eval(piece, true)?;
            let skip = first.saturating_sub(start);
            out.extend_from_slice(&l[skip * nv..]);
        }
        start = end;
    }
    Ok(out)
}

/// Log of the softmax normaliser of one logit row: (max, index of the first
/// max, max + ln Σ exp(x - max)).
fn log_norm(row: &[f32]) -> (f32, usize, f64) {
    let mut imax = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[imax] {
            imax = i;
        }
    }
    let mx = row[imax];
    let sum: f64 = row.iter().map(|&v| libm::exp((v - mx) as f64)).sum();
    (mx, imax, mx as f64 + libm::log(sum))
}

/// Negative log-likelihood of `target` under one row of logits.
pub fn nll(row: &[f32], target: u32) -> f64 {
    let (_, _, log_z) = log_norm(row);
    log_z - row[target as usize] as f64
}

/// Running sums of the per-token NLL.
#[derive(Debug, Clone, Copy, Default)]
pub struct PplStats {
    pub sum_nll: f64,
    pub sum_nll2: f64,
    pub count: usize,
}

impl PplStats {
    pub fn add(&mut self, v: f64) {
        self.sum_nll += v;
        self.sum_nll2 += v * v;
        self.count += 1;
    }
    /// exp(mean NLL).
    pub fn ppl(&self) -> f64 {
        libm::exp(self.sum_nll / self.count as f64)
    }
    /// llama-perplexity's ± : PPL · standard error of the mean NLL (0 when undefined).
    pub fn ppl_err(&self) -> f64 {
        if self.count < 2 {
            return 0.0;
        }
        let n = self.count as f64;
        let m = self.sum_nll / n;
        let var = self.sum_nll2 / n - m * m;
        if var > 0.0 {
            (var / (n - 1.0)).sqrt() * self.ppl()
        } else {
            0.0
        }
    }
}

/// What a perplexity run produced.
#[derive(Debug, Clone)]
pub struct PplResult {
    pub n_ctx: usize,
    pub n_chunk: usize,
    /// Tokens of the whole text.
    pub n_tokens: usize,
    pub stats: PplStats,
    /// The running estimate after each chunk (`[1]x,[2]y,…`).
    pub running: Vec<f64>,
    /// Seconds spent evaluating and scoring chunks.
    pub eval_secs: f64,
}

impl PplResult {
    pub fn ppl(&self) -> f64 {
        self.stats.ppl()
    }
    /// Tokens pushed through the model per second.
    pub fn tokens_per_sec(&self) -> f64 {
        let n = (self.n_chunk * self.n_ctx) as f64;
        if self.eval_secs > 0.0 {
            n / self.eval_secs
        } else {
            0.0
        }
    }
}

/// Progress after each chunk: (chunk index from 0, chunk count, running
/// estimate, seconds that chunk took). Returning false stops the run with an
/// error that says after which chunk.
pub type ChunkProgress<'a> = &'a mut dyn FnMut(usize, usize, f64, f64) -> bool;

/// Perplexity of `tokens` (already tokenized, BOS included as the model wants).
/// With `base`, also writes a KL-divergence base file (see the module docs) to it.
pub fn perplexity(
    model: &Model,
    tokens: &[u32],
    opts: &Options,
    mut base: Option<&mut dyn Write>,
    progress: ChunkProgress,
) -> Result<PplResult> {
    opts.validate()?;
    let n_ctx = opts.n_ctx;
    let nv = model.hp.n_vocab;
    let n_chunk = chunk_count(tokens.len(), n_ctx, opts.max_chunks)?;
    let first = first_scored(n_ctx);
    let n_scored = scored_per_chunk(n_ctx);
    let bos = chunk_bos(model);
    let rec = record_bytes(nv);

    if let Some(w) = base.as_deref_mut() {
        write_header(w, n_ctx, nv, &tokens[..n_chunk * n_ctx])?;
    }

    let mut ctx = Context::try_new(model, n_ctx, opts.kv_f32)?;
    let mut stats = PplStats::default();
    let mut running = Vec::with_capacity(n_chunk);
    let mut records = vec![0u8; if base.is_some() { n_scored * rec } else { 0 }];
    let t0 = Instant::now();
    for i in 0..n_chunk {
        let tc = Instant::now();
        let input = chunk_input(tokens, i, n_ctx, bos);
        let logits = eval_chunk(&mut ctx, &input, opts.n_batch, first)?;
        let targets = &tokens[i * n_ctx + first + 1..(i + 1) * n_ctx];
        let rows = logits[..n_scored * nv].par_chunks(nv);
        let values: Vec<f64> = if base.is_some() {
            rows.zip(records.par_chunks_mut(rec))
                .zip(targets.par_iter())
                .map(|((row, r), &t)| encode_record(row, t, r))
                .collect()
        } else {
            rows.zip(targets.par_iter())
                .map(|(row, &t)| nll(row, t))
                .collect()
        };
        for &v in &values {
            if !v.is_finite() {
                bail!("the model produced non-finite logits in chunk {}", i + 1);
            }
            stats.add(v);
        }
        if let Some(w) = base.as_deref_mut() {
            w.write_all(&records)
                .context("cannot write the KL-divergence base file")?;
        }
        running.push(stats.ppl());
        if !progress(i, n_chunk, stats.ppl(), tc.elapsed().as_secs_f64()) && i + 1 < n_chunk {
            bail!("perplexity: stopped after chunk {} of {}", i + 1, n_chunk);
        }
    }
    Ok(PplResult {
        n_ctx,
        n_chunk,
        n_tokens: tokens.len(),
        stats,
        running,
        eval_secs: t0.elapsed().as_secs_f64(),
    })
}

// ---------------------------------------------------------------------------
// The base file.

/// u16 words per record: `2·⌈n_vocab/2⌉ + 4`.
pub fn record_words(n_vocab: usize) -> usize {
    2 * n_vocab.div_ceil(2) + 4
}

/// Bytes per record.
pub fn record_bytes(n_vocab: usize) -> usize {
    2 * record_words(n_vocab)
}

fn write_header(w: &mut dyn Write, n_ctx: usize, n_vocab: usize, tokens: &[u32]) -> Result<()> {
    let n_chunk = tokens.len() / n_ctx;
    let mut h = Vec::with_capacity(20 + 4 * tokens.len());
    h.extend_from_slice(KLD_MAGIC);
    for v in [n_ctx, n_vocab, n_chunk] {
        let v = i32::try_from(v).context("value too large for the base file")?;
        h.extend_from_slice(&v.to_le_bytes());
    }
    for &t in tokens {
        h.extend_from_slice(&t.to_le_bytes());
    }
    w.write_all(&h)
        .context("cannot write the KL-divergence base file")
}

/// Encode one row of logits as a base-file record into `out`
/// (`record_bytes(row.len())` bytes) and return the NLL of `target`.
pub fn encode_record(row: &[f32], target: u32, out: &mut [u8]) -> f64 {
    let (mx, _, log_z) = log_norm(row);
    // The codes cover [lo, max]: 16 nats like llama.cpp, widened (up to 64
    // nats) to reach the target so that its NLL survives exactly.
    let floor = (mx - 16.0).min(row[target as usize]).max(mx - 64.0);
    let mn = row.iter().fold(f32::INFINITY, |a, &b| a.min(b)).max(floor);
    let lse = log_z - mx as f64;
    let min_log_prob = (mn as f64 - mx as f64 - lse) as f32;
    let scale = (mx - mn) / 65535.0;
    out[0..4].copy_from_slice(&scale.to_le_bytes());
    out[4..8].copy_from_slice(&min_log_prob.to_le_bytes());
    let codes = &mut out[8..];
    codes.fill(0);
    if scale > 0.0 {
        let inv = 1.0 / scale;
        for (c, &x) in codes.chunks_exact_mut(2).zip(row) {
            let q = if x > mn {
                (inv * (x - mn)).round_ties_even().clamp(0.0, 65535.0) as u16
            } else {
                0
            };
            c.copy_from_slice(&q.to_le_bytes());
        }
    }
    log_z - row[target as usize] as f64
}

/// Decode a record into the base model's log-probabilities (`n_vocab` of them).
pub fn decode_record(rec: &[u8], n_vocab: usize) -> Vec<f32> {
    let scale = f32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]]);
    let min_lp = f32::from_le_bytes([rec[4], rec[5], rec[6], rec[7]]);
    rec[8..8 + 2 * n_vocab]
        .chunks_exact(2)
        .map(|c| scale * u16::from_le_bytes([c[0], c[1]]) as f32 + min_lp)
        .collect()
}

/// A KL-divergence base file opened for reading, header parsed.
pub struct KldBase {
    pub n_ctx: usize,
    pub n_vocab: usize,
    pub n_chunk: usize,
    /// `n_ctx · n_chunk` tokens, as tokenized.
    pub tokens: Vec<u32>,
    reader: Box<dyn Read>,
    name: String,
    next_chunk: usize,
}

impl KldBase {
    /// Open and check a base file (magic, header, exact size).
    pub fn open(path: &Path) -> Result<KldBase> {
        let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let len = f
            .metadata()
            .with_context(|| format!("cannot read {}", path.display()))?
            .len();
        Self::from_reader(
            Box::new(BufReader::new(f)),
            Some(len),
            &path.display().to_string(),
        )
    }

    /// Parse a base from any reader; `len`, when known, is checked against the header.
    pub fn from_reader(mut r: Box<dyn Read>, len: Option<u64>, name: &str) -> Result<KldBase> {
        let bad = || {
            format!(
                "{} is not a KL-divergence base file (truncated header)",
                name
            )
        };
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic).with_context(bad)?;
        if &magic != KLD_MAGIC {
            bail!(
                "{} is not a KL-divergence base file (no {:?} magic)",
                name,
                std::str::from_utf8(KLD_MAGIC).unwrap_or_default()
            );
        }
        let mut h = [0u8; 12];
        r.read_exact(&mut h).with_context(bad)?;
        let field =
            |k: usize| i32::from_le_bytes([h[4 * k], h[4 * k + 1], h[4 * k + 2], h[4 * k + 3]]);
        let (n_ctx, n_vocab, n_chunk) = (field(0), field(1), field(2));
        if n_ctx < 3 || n_vocab < 1 || n_chunk < 1 {
            bail!(
                "{}: bad header (n_ctx {}, n_vocab {}, n_chunk {})",
                name,
                n_ctx,
                n_vocab,
                n_chunk
            );
        }
        // Positive i32s (checked above); the sizes they imply are computed
        // with checked arithmetic so that no header can wrap them back to
        // the file's length.
        let (n_ctx, n_vocab, n_chunk) = (
            usize::try_from(n_ctx)?,
            usize::try_from(n_vocab)?,
            usize::try_from(n_chunk)?,
        );
        let n_tok = (n_ctx as u64) * (n_chunk as u64);
        let expect = (n_chunk as u64)
            .checked_mul(scored_per_chunk(n_ctx) as u64)
            .and_then(|x| x.checked_mul(record_bytes(n_vocab) as u64))
            .and_then(|x| x.checked_add(20 + 4 * n_tok))
            .with_context(|| {
                format!(
                    "{}: header (n_ctx {}, n_vocab {}, n_chunk {}) implies more than 2^64 bytes",
                    name, n_ctx, n_vocab, n_chunk
                )
            })?;
        if let Some(len) = len {
            if len != expect {
                bail!(
                    "{}: {} bytes, but its header (n_ctx {}, n_vocab {}, n_chunk {}) implies {}",
                    name,
                    len,
                    n_ctx,
                    n_vocab,
                    n_chunk,
                    expect
                );
            }
        }
        // Bounded by the file's length when it is known (checked above).
        let mut tb = vec![0u8; usize::try_from(4 * n_tok)?];
        r.read_exact(&mut tb)
            .with_context(|| format!("{}: truncated token list", name))?;
        let tokens = tb
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .map(|t| {
                u32::try_from(t)
                    .ok()
                    .filter(|&t| (t as usize) < n_vocab)
                    .with_context(|| format!("{}: token id {} outside the vocabulary", name, t))
            })
            .collect::<Result<Vec<u32>>>()?;
        Ok(KldBase {
            n_ctx,
            n_vocab,
            n_chunk,
            tokens,
            reader: r,
            name: name.to_string(),
            next_chunk: 0,
        })
    }

    /// The records of the next chunk (`scored_per_chunk(n_ctx)` of them, back to back).
    pub fn read_chunk(&mut self) -> Result<Vec<u8>> {
        let mut b = vec![0u8; scored_per_chunk(self.n_ctx) * record_bytes(self.n_vocab)];
        self.reader.read_exact(&mut b).with_context(|| {
            format!("{}: truncated at chunk {}", self.name, self.next_chunk + 1)
        })?;
        self.next_chunk += 1;
        Ok(b)
    }
}

// ---------------------------------------------------------------------------
// KL divergence.

/// One scored position compared with the base.
#[derive(Debug, Clone, Copy)]
pub struct KlPoint {
    pub nll: f64,
    pub nll_base: f64,
    pub kld: f64,
    pub same_top: bool,
    /// p(target) − p_base(target).
    pub p_diff: f64,
}

/// Compare one row of logits with a base record, as llama-perplexity does:
/// KL = Σ p_base·(ln p_base − ln q) over the tokens whose decoded base
/// log-probability is above −16 (the dequantised base probabilities are not
/// renormalised, so their 16-bit rounding leaves per-position noise of a few
/// 1e-5 of either sign, which averages out).
pub fn kl_point(row: &[f32], rec: &[u8], target: u32) -> KlPoint {
    let nv = row.len();
    let (_, imax, log_z) = log_norm(row);
    let base = decode_record(rec, nv);
    let mut imax_base = 0;
    let mut kld = 0f64;
    for (i, (&lb, &x)) in base.iter().zip(row).enumerate() {
        if lb > base[imax_base] {
            imax_base = i;
        }
        if lb > -16.0 {
            let lb = lb as f64;
            kld += libm::exp(lb) * (lb - (x as f64 - log_z));
        }
    }
    let t = target as usize;
    let nll = log_z - row[t] as f64;
    let nll_base = -(base[t] as f64);
    KlPoint {
        nll,
        nll_base,
        kld,
        same_top: imax == imax_base,
        p_diff: libm::exp(-nll) - libm::exp(-nll_base),
    }
}

/// Accumulated KL statistics.
#[derive(Debug, Clone, Default)]
pub struct KlStats {
    pub sum_nll: f64,
    pub sum_nll2: f64,
    pub sum_nll_base: f64,
    pub sum_nll_base2: f64,
    pub sum_nll_nll_base: f64,
    pub sum_kld: f64,
    pub sum_kld2: f64,
    pub sum_p_diff: f64,
    pub sum_p_diff2: f64,
    pub sum_p_diff4: f64,
    pub n_same_top: usize,
    pub count: usize,
    pub kld_values: Vec<f64>,
    pub p_diff_values: Vec<f64>,
}

/// Mean and its standard error (0 with 10 values or fewer, as llama-perplexity).
fn mean_err(sum: f64, sum2: f64, n: usize) -> (f64, f64) {
    if n < 1 {
        return (0.0, 0.0);
    }
    let f = sum / n as f64;
    let v = sum2 / n as f64 - f * f;
    (
        f,
        if v > 0.0 && n > 10 {
            (v / (n as f64 - 1.0)).sqrt()
        } else {
            0.0
        },
    )
}

fn covariance(a: f64, b: f64, ab: f64, n: usize) -> f64 {
    if n < 10 {
        return 0.0;
    }
    let n = n as f64;
    (ab / n - (a / n) * (b / n)) / (n - 1.0)
}

/// Linear interpolation between order statistics of `sorted`.
pub fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    if fraction <= 0.0 {
        return sorted[0];
    }
    if fraction >= 1.0 {
        return sorted[sorted.len() - 1];
    }
    let p = fraction * (sorted.len() - 1) as f64;
    let ip = p as usize;
    let f = p - ip as f64;
    (1.0 - f) * sorted[ip] + f * sorted[(ip + 1).min(sorted.len() - 1)]
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    match n {
        0 => 0.0,
        _ if n.is_multiple_of(2) => 0.5 * (sorted[n / 2] + sorted[n / 2 - 1]),
        _ => sorted[n / 2],
    }
}

/// `value ± uncertainty`.
pub type Est = (f64, f64);

/// The llama-perplexity KL summary.
#[derive(Debug, Clone, Default)]
pub struct KlSummary {
    pub count: usize,
    pub ppl: Est,
    pub ppl_base: Est,
    /// Correlation of ln PPL(Q) and ln PPL(base) (NaN when undefined).
    pub cor: f64,
    pub ln_ratio: Est,
    /// PPL(Q)/PPL(base).
    pub ratio: Est,
    pub diff: Est,
    pub kld_mean: Est,
    pub kld_max: f64,
    pub kld_min: f64,
    pub kld_median: f64,
    /// (fraction, value) for 99.9, 99, 95, 90, 10, 5, 1, 0.1 %.
    pub kld_pct: Vec<(f64, f64)>,
    pub dp_mean: Est,
    pub dp_max: f64,
    pub dp_min: f64,
    pub dp_median: f64,
    /// (fraction, value) for 99.9, 99, 95, 90, 75, 25, 10, 5, 1, 0.1 %.
    pub dp_pct: Vec<(f64, f64)>,
    pub dp_rms: Est,
    /// Fraction of positions where both models have the same most likely token.
    pub same_top: Est,
}

impl KlStats {
    pub fn add(&mut self, p: &KlPoint) {
        self.sum_nll += p.nll;
        self.sum_nll2 += p.nll * p.nll;
        self.sum_nll_base += p.nll_base;
        self.sum_nll_base2 += p.nll_base * p.nll_base;
        self.sum_nll_nll_base += p.nll * p.nll_base;
        self.sum_kld += p.kld;
        self.sum_kld2 += p.kld * p.kld;
        self.sum_p_diff += p.p_diff;
        let d2 = p.p_diff * p.p_diff;
        self.sum_p_diff2 += d2;
        self.sum_p_diff4 += d2 * d2;
        self.n_same_top += p.same_top as usize;
        self.count += 1;
        self.kld_values.push(p.kld);
        self.p_diff_values.push(p.p_diff);
    }

    fn log_ppls(&self) -> (Est, Est, f64) {
        let a = mean_err(self.sum_nll, self.sum_nll2, self.count);
        let b = mean_err(self.sum_nll_base, self.sum_nll_base2, self.count);
        let cov = covariance(
            self.sum_nll,
            self.sum_nll_base,
            self.sum_nll_nll_base,
            self.count,
        );
        (a, b, cov)
    }

    fn same_top(&self) -> Est {
        let p = self.n_same_top as f64 / self.count as f64;
        let e = if self.count > 1 {
            (p * (1.0 - p) / (self.count as f64 - 1.0)).sqrt()
        } else {
            0.0
        };
        (p, e)
    }

    fn dp_rms(&self) -> Est {
        let mse = mean_err(self.sum_p_diff2, self.sum_p_diff4, self.count);
        let rms = mse.0.sqrt();
        (rms, if rms > 0.0 { 0.5 / rms * mse.1 } else { 0.0 })
    }

    /// The running per-chunk line of llama-perplexity's KL table.
    pub fn chunk_line(&self, chunk: usize) -> String {
        let (lp, lb, cov) = self.log_ppls();
        let ppl = libm::exp(lp.0);
        let lr = (
            lp.0 - lb.0,
            (lp.1 * lp.1 + lb.1 * lb.1 - 2.0 * cov).max(0.0).sqrt(),
        );
        let k = mean_err(self.sum_kld, self.sum_kld2, self.count);
        let rms = self.dp_rms();
        let top = self.same_top();
        format!(
            "{:4}    {:9.4} ± {:9.4}    {:10.5} ± {:10.5}    {:10.5} ± {:10.5}    {:6.3} ± {:6.3} %    {:6.3} ± {:6.3} %",
            chunk,
            ppl,
            ppl * lp.1,
            lr.0,
            lr.1,
            k.0,
            k.1,
            100.0 * rms.0,
            100.0 * rms.1,
            100.0 * top.0,
            100.0 * top.1
        )
    }

    /// Final statistics.
    pub fn summary(&self) -> KlSummary {
        let (lp, lb, cov) = self.log_ppls();
        let ppl = (libm::exp(lp.0), libm::exp(lp.0) * lp.1);
        let ppl_base = (libm::exp(lb.0), libm::exp(lb.0) * lb.1);
        let cor = cov / (lp.1 * lb.1);
        let ln_ratio = (
            lp.0 - lb.0,
            (lp.1 * lp.1 + lb.1 * lb.1 - 2.0 * cov).max(0.0).sqrt(),
        );
        let r = libm::exp(ln_ratio.0);
        let ppl_cov = ppl.0 * ppl_base.0 * cov;
        let diff = (
            ppl.0 - ppl_base.0,
            (ppl.1 * ppl.1 + ppl_base.1 * ppl_base.1 - 2.0 * ppl_cov)
                .max(0.0)
                .sqrt(),
        );
        let mut kv = self.kld_values.clone();
        kv.sort_by(f64::total_cmp);
        let mut dv = self.p_diff_values.clone();
        dv.sort_by(f64::total_cmp);
        let pct = |v: &[f64], fr: &[f64]| fr.iter().map(|&f| (f, percentile(v, f))).collect();
        KlSummary {
            count: self.count,
            ppl,
            ppl_base,
            cor,
            ln_ratio,
            ratio: (r, r * ln_ratio.1),
            diff,
            kld_mean: mean_err(self.sum_kld, self.sum_kld2, self.count),
            kld_max: kv.last().copied().unwrap_or(0.0),
            kld_min: kv.first().copied().unwrap_or(0.0),
            kld_median: median(&kv),
            kld_pct: pct(&kv, &[0.999, 0.99, 0.95, 0.90, 0.10, 0.05, 0.01, 0.001]),
            dp_mean: mean_err(self.sum_p_diff, self.sum_p_diff2, self.count),
            dp_max: dv.last().copied().unwrap_or(0.0),
            dp_min: dv.first().copied().unwrap_or(0.0),
            dp_median: median(&dv),
            dp_pct: pct(
                &dv,
                &[0.999, 0.99, 0.95, 0.90, 0.75, 0.25, 0.10, 0.05, 0.01, 0.001],
            ),
            dp_rms: self.dp_rms(),
            same_top: self.same_top(),
        }
    }
}

/// Header of the per-chunk KL table.
pub const KL_TABLE_HEADER: &str = "chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence              Δp RMS            Same top p";

fn pct_label(f: f64) -> String {
    format!("{:4.1}%", 100.0 * f)
}

impl KlSummary {
    /// The three statistics blocks of llama-perplexity's KL mode.
    pub fn report(&self) -> String {
        let mut s = String::new();
        let mut line = |l: String| {
            s.push_str(&l);
            s.push('\n');
        };
        line("====== Perplexity statistics ======".into());
        line(format!(
            "Mean PPL(Q)                   : {:10.6} ± {:10.6}",
            self.ppl.0, self.ppl.1
        ));
        line(format!(
            "Mean PPL(base)                : {:10.6} ± {:10.6}",
            self.ppl_base.0, self.ppl_base.1
        ));
        if self.cor.is_finite() {
            line(format!(
                "Cor(ln(PPL(Q)), ln(PPL(base))): {:6.2}%",
                100.0 * self.cor
            ));
        } else {
            line("Cor(ln(PPL(Q)), ln(PPL(base))):    n/a (too few positions)".into());
        }
        line(format!(
            "Mean ln(PPL(Q)/PPL(base))     : {:10.6} ± {:10.6}",
            self.ln_ratio.0, self.ln_ratio.1
        ));
        line(format!(
            "Mean PPL(Q)/PPL(base)         : {:10.6} ± {:10.6}",
            self.ratio.0, self.ratio.1
        ));
        line(format!(
            "Mean PPL(Q)-PPL(base)         : {:10.6} ± {:10.6}",
            self.diff.0, self.diff.1
        ));
        line(String::new());
        line("====== KL divergence statistics ======".into());
        line(format!(
            "Mean    KLD: {:10.6} ± {:10.6}",
            self.kld_mean.0, self.kld_mean.1
        ));
        line(format!("Maximum KLD: {:10.6}", self.kld_max));
        for &(f, v) in &self.kld_pct[..4] {
            line(format!("{}   KLD: {:10.6}", pct_label(f), v));
        }
        line(format!("Median  KLD: {:10.6}", self.kld_median));
        for &(f, v) in &self.kld_pct[4..] {
            line(format!("{}   KLD: {:10.6}", pct_label(f), v));
        }
        line(format!("Minimum KLD: {:10.6}", self.kld_min));
        line(String::new());
        line("====== Token probability statistics ======".into());
        line(format!(
            "Mean    Δp: {:6.3} ± {:5.3} %",
            100.0 * self.dp_mean.0,
            100.0 * self.dp_mean.1
        ));
        line(format!("Maximum Δp: {:6.3}%", 100.0 * self.dp_max));
        for &(f, v) in &self.dp_pct[..5] {
            line(format!("{}   Δp: {:6.3}%", pct_label(f), 100.0 * v));
        }
        line(format!("Median  Δp: {:6.3}%", 100.0 * self.dp_median));
        for &(f, v) in &self.dp_pct[5..] {
            line(format!("{}   Δp: {:6.3}%", pct_label(f), 100.0 * v));
        }
        line(format!("Minimum Δp: {:6.3}%", 100.0 * self.dp_min));
        line(format!(
            "RMS Δp    : {:6.3} ± {:5.3} %",
            100.0 * self.dp_rms.0,
            100.0 * self.dp_rms.1
        ));
        line(format!(
            "Same top p: {:6.3} ± {:5.3} %",
            100.0 * self.same_top.0,
            100.0 * self.same_top.1
        ));
        s
    }
}

/// What a KL run produced.
#[derive(Debug, Clone)]
pub struct KlResult {
    pub n_ctx: usize,
    pub n_chunk: usize,
    pub stats: KlStats,
    pub eval_secs: f64,
}

impl KlResult {
    pub fn tokens_per_sec(&self) -> f64 {
        if self.eval_secs > 0.0 {
            (self.n_chunk * self.n_ctx) as f64 / self.eval_secs
        } else {
            0.0
        }
    }
}

/// Compare `model` with a base file: evaluate the base's chunks (its `n_ctx`;
/// `opts.n_ctx` is ignored) and accumulate the KL statistics. `on_chunk`
/// receives (chunk index from 0, chunk count, statistics so far, seconds).
pub fn kl_divergence(
    model: &Model,
    base: &mut KldBase,
    opts: &Options,
    on_chunk: &mut dyn FnMut(usize, usize, &KlStats, f64),
) -> Result<KlResult> {
    let opts = Options {
        n_ctx: base.n_ctx,
        ..*opts
    };
    opts.validate()?;
    let nv = model.hp.n_vocab;
    if base.n_vocab != nv {
        bail!(
            "{} was made with a vocabulary of {} tokens, this model has {}",
            base.name,
            base.n_vocab,
            nv
        );
    }
    let n_ctx = base.n_ctx;
    let n_chunk = opts
        .max_chunks
        .map_or(base.n_chunk, |m| m.min(base.n_chunk));
    let first = first_scored(n_ctx);
    let n_scored = scored_per_chunk(n_ctx);
    let rec = record_bytes(nv);
    let bos = chunk_bos(model);
    let mut ctx = Context::try_new(model, n_ctx, opts.kv_f32)?;
    let mut stats = KlStats::default();
    let t0 = Instant::now();
    for i in 0..n_chunk {
        let tc = Instant::now();
        let records = base.read_chunk()?;
        let input = chunk_input(&base.tokens, i, n_ctx, bos);
        let logits = eval_chunk(&mut ctx, &input, opts.n_batch, first)?;
        let targets = &base.tokens[i * n_ctx + first + 1..(i + 1) * n_ctx];
        let points: Vec<KlPoint> = logits[..n_scored * nv]
            .par_chunks(nv)
            .zip(records.par_chunks(rec))
            .zip(targets.par_iter())
            .map(|((row, r), &t)| kl_point(row, r, t))
            .collect();
        for p in &points {
            if !(p.nll.is_finite() && p.kld.is_finite()) {
                bail!("non-finite log-probabilities in chunk {}", i + 1);
            }
            stats.add(p);
        }
        on_chunk(i, n_chunk, &stats, tc.elapsed().as_secs_f64());
    }
    Ok(KlResult {
        n_ctx,
        n_chunk,
        stats,
        eval_secs: t0.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunking() {
        let toks: Vec<u32> = (10..30).collect();
        assert!(chunk_count(toks.len(), 11, None).is_err());
        assert_eq!(chunk_count(toks.len(), 8, None).unwrap(), 2);
        assert_eq!(chunk_count(toks.len(), 8, Some(1)).unwrap(), 1);
        assert_eq!(
            chunk_input(&toks, 1, 8, Some(1)),
            vec![1, 19, 20, 21, 22, 23, 24, 25]
        );
        assert_eq!(
            chunk_input(&toks, 0, 8, None),
            (10..18).collect::<Vec<u32>>()
        );
        assert_eq!(first_scored(512), 256);
        assert_eq!(scored_per_chunk(512), 255);
        assert_eq!(scored_per_chunk(3), 1);
    }

    #[test]
    fn record_round_trip() {
        let row: Vec<f32> = (0..7).map(|i| (i as f32 * 1.7).sin() * 5.0).collect();
        let mut rec = vec![0xAAu8; record_bytes(row.len())];
        assert_eq!(rec.len(), 2 * (8 + 4));
        let v = encode_record(&row, 3, &mut rec);
        assert!((v - nll(&row, 3)).abs() < 1e-12);
        assert!(rec[8 + 14..].iter().all(|&b| b == 0), "padding is zeroed");
        let lp = decode_record(&rec, row.len());
        let exact = crate::metrics::log_softmax(&row);
        for (a, b) in lp.iter().zip(&exact) {
            assert!((*a as f64 - b).abs() < 2e-4, "{a} vs {b}");
        }
        let p = kl_point(&row, &rec, 3);
        assert!(
            p.kld.abs() < 1e-4 && p.same_top && p.p_diff.abs() < 1e-4,
            "{p:?}"
        );
        // A flat row: scale 0, every code 0, log p = -ln n.
        let flat = [2.0f32; 4];
        let mut rec = vec![0u8; record_bytes(4)];
        encode_record(&flat, 0, &mut rec);
        for v in decode_record(&rec, 4) {
            assert!((v + 4f32.ln()).abs() < 1e-6);
        }
    }

    #[test]
    fn header_checks() {
        let mut b = Vec::new();
        write_header(&mut b, 4, 3, &[0, 1, 2, 0, 1, 2, 0, 1]).unwrap();
        let full = b.len() as u64 + 2 * scored_per_chunk(4) as u64 * record_bytes(3) as u64;
        b.resize(full as usize, 0);
        let k = KldBase::from_reader(Box::new(std::io::Cursor::new(b.clone())), Some(full), "x")
            .unwrap();
        assert_eq!((k.n_ctx, k.n_vocab, k.n_chunk), (4, 3, 2));
        assert_eq!(k.tokens, vec![0, 1, 2, 0, 1, 2, 0, 1]);
        assert!(KldBase::from_reader(
            Box::new(std::io::Cursor::new(b.clone())),
            Some(full - 1),
            "x"
        )
        .is_err());
        b[0] = b'x';
        assert!(KldBase::from_reader(Box::new(std::io::Cursor::new(b)), Some(full), "x").is_err());
    }

    #[test]
    fn stats() {
        let mut s = PplStats::default();
        for v in [1.0, 2.0, 3.0] {
            s.add(v);
        }
        assert!((s.ppl() - 2f64.exp()).abs() < 1e-12);
        // sample sd of the mean: sqrt(var_pop / (n-1)) = sqrt((2/3)/2)
        assert!((s.ppl_err() - 2f64.exp() * (1.0f64 / 3.0).sqrt()).abs() < 1e-12);
        let v = [0.0, 1.0, 2.0, 3.0];
        assert_eq!(percentile(&v, 0.5), 1.5);
        assert_eq!(percentile(&v, 1.0), 3.0);
        assert_eq!(median(&v), 1.5);
    }
}
