//! `tern perplexity`: llama-perplexity's perplexity and KL-divergence modes.

use super::{load_model, set_threads, ModelArgs};
use crate::perplexity::{self as ppl, KldBase, Options};
use anyhow::{bail, Context as _, Result};
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
    pub ctx_size: Option<usize>,
    /// Tokens per forward pass.
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    pub batch_size: usize,
    /// Evaluate at most this many chunks.
    #[arg(long)]
    pub chunks: Option<usize>,
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
    if let (Some(b), Some(c)) = (&base_in, a.ctx_size) {
        if b.n_ctx != c {
            bail!(
                "the base file was made with -c {}; drop -c or pass -c {}",
                b.n_ctx,
                b.n_ctx
            );
        }
    }

    set_threads(a.model.threads)?;
    let model = load_model(a.model.model.as_deref())?;
    let opts = Options {
        n_ctx: base_in
            .as_ref()
            .map_or(a.ctx_size.unwrap_or(512), |b| b.n_ctx),
        n_batch: a.batch_size,
        max_chunks: a.chunks,
        kv_f32: a.kv_f32,
    };
    if opts.n_ctx > model.hp.n_ctx_train {
        eprintln!(
            "perplexity: warning: the model was trained on only {} context tokens ({} specified)",
            model.hp.n_ctx_train, opts.n_ctx
        );
    }

    if let Some(base) = base_in.as_mut() {
        if a.file.is_some() {
            eprintln!("perplexity: note: -f is ignored with --kl-divergence (the tokens come from the base file)");
        }
        return run_kl(&model, base, &opts);
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
    )?;
    println!();
    println!(
        "Final estimate: PPL = {:.4} +/- {:.5}",
        r.ppl(),
        r.stats.ppl_err()
    );
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
