//! `tern perplexity`: llama-perplexity's perplexity and KL-divergence modes.

use super::run::{lower_c, warn_past_training};
use super::{set_threads, ModelArgs};
use crate::perplexity::{self as ppl, KldBase, Options};
use anyhow::{anyhow, bail, Context as _, Result};
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text file to score (not needed with --kl-divergence: the base file holds the tokens).
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Tokens per chunk [default: 512; with --kl-divergence, the base file's].
    #[arg(short = 'c', long = "ctx-size")]
    pub ctx_size: Option<u64>,
    /// Tokens per forward pass.
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    pub batch_size: usize,
    /// Evaluate at most this many chunks; -1 = all (as llama-perplexity).
    #[arg(long)]
    pub chunks: Option<i64>,
    /// Base file of log-probabilities: written by a plain run, read with --kl-divergence.
    #[arg(long = "kl-divergence-base")]
    pub kl_divergence_base: Option<PathBuf>,
    /// Compare this model with the base file given by --kl-divergence-base.
    #[arg(long = "kl-divergence")]
    pub kl_divergence: bool,
    /// Overwrite an existing --kl-divergence-base file.
    #[arg(long)]
    pub force: bool,
    /// Keep the KV cache in f32 instead of f16.
    #[arg(long = "kv-f32")]
    pub kv_f32: bool,
}

fn eta(secs_per_pass: f64, n_chunk: usize) -> String {
    let mut total = (secs_per_pass * n_chunk as f64) as u64;
    let mut s = String::new();
    if total >= 3600 {
        s.push_str(&format!("{} hours ", total / 3600));
        total %= 3600;
    }
    s.push_str(&format!("{:.2} minutes", total as f64 / 60.0));
    s
}

pub fn run(a: Args) -> Result<()> {
    if a.kl_divergence && a.kl_divergence_base.is_none() {
        bail!("--kl-divergence needs --kl-divergence-base FILE (the base model's saved log-probabilities)");
    }
    if !a.kl_divergence && a.file.is_none() {
        bail!("give a text file with -f FILE");
    }
    let base_out = if a.kl_divergence {
        None
    } else {
        a.kl_divergence_base.clone()
    };
    if let Some(p) = &base_out {
        if p.exists() && !a.force {
            bail!(
                "{} already exists (add --kl-divergence to compare against it, or --force to overwrite it)",
                p.display()
            );
        }
    }
    // Open the base (kl mode) and read the text before the model loads, so bad
    // input fails fast.
    let mut base_in = if a.kl_divergence {
        let p = a.kl_divergence_base.as_ref().expect("checked above");
        Some(KldBase::open(p)?)
    } else {
        None
    };
    let text = match (&a.file, a.kl_divergence) {
        (Some(f), false) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {} as UTF-8 text", f.display()))?,
        ),
        _ => None,
    };
    let ctx_size = a
        .ctx_size
        .map(|c| {
            usize::try_from(c)
                .map_err(|_| anyhow!("-c {}: more tokens than this machine can address", c))
        })
        .transpose()?;
    if let Some(c) = ctx_size {
        ppl::check_n_ctx(c).with_context(|| format!("-c {}", c))?;
    }
    if a.batch_size == 0 {
        bail!("-b must be at least 1");
    }
    if let (Some(b), Some(c)) = (&base_in, ctx_size) {
        if b.n_ctx != c {
            bail!(
                "the base file was made with -c {}; drop -c or pass -c {}",
                b.n_ctx,
                b.n_ctx
            );
        }
    }

    set_threads(a.model.threads)?;
    let model = a.model.load()?;
    let opts =
        Options {
            n_ctx: base_in
                .as_ref()
                .map_or(ctx_size.unwrap_or(512), |b| b.n_ctx),
            n_batch: a.batch_size,
            max_chunks: match a.chunks {
                None | Some(-1) => None,
                Some(n) => Some(usize::try_from(n).map_err(|_| {
                    anyhow!("--chunks {}: give a number of chunks, or -1 for all", n)
                })?),
            },
            kv_f32: a.kv_f32,
        };
    let warn_ctx = || warn_past_training(&model, opts.n_ctx, "perplexity");

    if let Some(base) = base_in.as_mut() {
        if a.file.is_some() {
            eprintln!("perplexity: note: -f is ignored with --kl-divergence (the tokens come from the base file)");
        }
        warn_ctx();
        return run_kl(&model, base, &opts).map_err(lower_c);
    }

    let text = text.expect("read above");
    eprintln!("perplexity: tokenizing the input ..");
    let t = std::time::Instant::now();
    let tokens = model.tokenizer.encode(&text, model.tokenizer.add_bos())?;
    eprintln!(
        "perplexity: tokenization took {:.3} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let n_chunk = ppl::chunk_count(tokens.len(), opts.n_ctx, opts.max_chunks)?;
    warn_ctx();
    eprintln!(
        "perplexity: calculating perplexity over {} chunks of {} tokens ({} tokens in the text), n_ctx={}, batch_size={}",
        n_chunk,
        opts.n_ctx,
        tokens.len(),
        opts.n_ctx,
        opts.n_batch.min(opts.n_ctx)
    );

    let mut file = match &base_out {
        Some(p) => Some(crate::gguf::writer::AtomicFile::create(p, true)?),
        None => None,
    };
    let mut writer = file.as_mut().map(|f| std::io::BufWriter::new(f.file()));
    let stdout = std::io::stdout();
    let mut progress = |i: usize, n: usize, running: f64, secs: f64| {
        if i == 0 {
            eprintln!(
                "perplexity: {:.2} seconds per pass - ETA {}",
                secs,
                eta(secs, n)
            );
        }
        let mut o = stdout.lock();
        let _ = write!(o, "[{}]{:.4},", i + 1, running);
        let _ = o.flush();
        true
    };
    let r = ppl::perplexity(
        &model,
        &tokens,
        &opts,
        writer.as_mut().map(|w| w as &mut dyn Write),
        &mut progress,
    )
    .map_err(lower_c)?;
    // The base file is complete before stdout is written again (a closed
    // stdout then still leaves a finished file).
    writer
        .map(|w| w.into_inner().map(|_| ()).map_err(|e| e.into_error()))
        .transpose()
        .context("cannot write the KL-divergence base file")?;
    if let (Some(f), Some(p)) = (file, &base_out) {
        f.commit()?;
        eprintln!(
            "perplexity: saved the base log-probabilities of {} chunks to {}",
            r.n_chunk,
            p.display()
        );
    }
    println!();
    println!(
        "Final estimate: PPL = {:.4} +/- {:.5}",
        r.ppl(),
        r.stats.ppl_err()
    );
    eprintln!(
        "perplexity: {} tokens ({} chunks × {}) in {:.2} s, {:.2} tokens/s",
        r.n_chunk * r.n_ctx,
        r.n_chunk,
        r.n_ctx,
        r.eval_secs,
        r.tokens_per_sec()
    );
    Ok(())
}

fn run_kl(model: &crate::model::Model, base: &mut KldBase, opts: &Options) -> Result<()> {
    let n_chunk = opts
        .max_chunks
        .map_or(base.n_chunk, |m| m.min(base.n_chunk));
    eprintln!(
        "kl_divergence: comparing with the base over {} of its {} chunks, n_ctx={}, batch_size={}",
        n_chunk,
        base.n_chunk,
        base.n_ctx,
        opts.n_batch.min(base.n_ctx)
    );
    println!("{}", ppl::KL_TABLE_HEADER);
    let mut on_chunk = |i: usize, n: usize, s: &ppl::KlStats, secs: f64| {
        if i == 0 {
            eprintln!(
                "kl_divergence: {:.2} seconds per pass - ETA {}",
                secs,
                eta(secs, n)
            );
        }
        println!("{}", s.chunk_line(i + 1));
    };
    let r = ppl::kl_divergence(model, base, opts, &mut on_chunk)?;
    println!();
    print!("{}", r.stats.summary().report());
    eprintln!(
        "kl_divergence: {} tokens ({} chunks × {}) in {:.2} s, {:.2} tokens/s",
        r.n_chunk * r.n_ctx,
        r.n_chunk,
        r.n_ctx,
        r.eval_secs,
        r.tokens_per_sec()
    );
    Ok(())
}
