use super::{load_model, set_threads, ModelArgs};
use crate::model::generate::{Generation, StopReason, TextStream};
use crate::model::sampling::{Sampler, SamplingParams};
use crate::model::Context;
use anyhow::{bail, Result};
use std::io::Write;
use std::time::Instant;

/// Sampling flags shared by `run` and `chat` (llama.cpp names and defaults).
#[derive(clap::Args, Debug, Clone)]
pub struct SampleArgs {
    /// Temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temp: f32,
    #[arg(long = "top-k", default_value_t = 40)]
    pub top_k: usize,
    #[arg(long = "top-p", default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long = "min-p", default_value_t = 0.05)]
    pub min_p: f32,
    #[arg(long = "repeat-penalty", default_value_t = 1.1)]
    pub repeat_penalty: f32,
    /// RNG seed (default: random).
    #[arg(long)]
    pub seed: Option<u64>,
}

impl SampleArgs {
    pub fn params(&self) -> SamplingParams {
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        });
        SamplingParams {
            temp: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: 64,
            seed,
            ..SamplingParams::default()
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt text.
    #[arg(short = 'p', long)]
    pub prompt: String,
    /// Tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 128)]
    pub n_predict: usize,
    /// Context size (default: the model's, at most 4096).
    #[arg(short = 'c', long = "ctx-size")]
    pub ctx: Option<usize>,
    #[command(flatten)]
    pub sample: SampleArgs,
    /// Keep generating past end-of-generation tokens.
    #[arg(long = "ignore-eos")]
    pub ignore_eos: bool,
    /// Keep the KV cache in f32 instead of f16.
    #[arg(long = "kv-f32")]
    pub kv_f32: bool,
}

pub fn run(a: Args) -> Result<()> {
    let threads = set_threads(a.model.threads)?;
    let t0 = Instant::now();
    let m = load_model(a.model.model.as_deref())?;
    let load = t0.elapsed().as_secs_f64();
    let n_ctx = a.ctx.unwrap_or(m.hp.n_ctx_train.min(4096));
    if n_ctx == 0 {
        bail!("--ctx-size must be positive");
    }
    let prompt = m.tokenizer.encode(&a.prompt, m.tokenizer.add_bos())?;
    if prompt.len() >= n_ctx {
        bail!(
            "the prompt has {} tokens but the context holds {} (raise -c)",
            prompt.len(),
            n_ctx
        );
    }
    let mut ctx = Context::new(&m, n_ctx, a.kv_f32);
    let mut sampler = Sampler::new(a.sample.params());
    let mut generation = Generation::new(prompt, a.n_predict, a.ignore_eos)?;
    let mut out = std::io::stdout().lock();
    // Echo the prompt like llama-cli (without the BOS text).
    write!(out, "{}", a.prompt)?;
    out.flush()?;
    let mut text = TextStream::default();
    let st = generation.run(&mut ctx, &mut sampler, |t| {
        let _ = out.write_all(text.push(&m.tokenizer, t).as_bytes());
        let _ = out.flush();
        true
    })?;
    writeln!(out, "{}", text.finish())?;
    out.flush()?;
    eprintln!();
    eprintln!(
        "tern: {} threads, kernel {}, seed {}",
        threads,
        m.kernel.name(),
        sampler.params.seed
    );
    eprintln!("      load time = {:10.2} ms", load * 1000.0);
    eprintln!("{}", st.report());
    if st.stop == StopReason::EndOfGeneration {
        eprintln!("[end of text]");
    }
    Ok(())
}
