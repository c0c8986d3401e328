use super::run::new_context;
use super::{set_threads, ModelArgs};
use anyhow::{anyhow, bail, Context as _, Result};
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Comma-separated token ids (BOS included if wanted).
    #[arg(long, conflicts_with = "prompt")]
    pub tokens: Option<String>,
    /// Text to tokenize (BOS as the model says).
    #[arg(short = 'p', long)]
    pub prompt: Option<String>,
    /// Output file: f32 little-endian, positions × vocab.
    #[arg(long)]
    pub out: PathBuf,
    /// Keep the KV cache in f32 instead of f16.
    #[arg(long = "kv-f32")]
    pub kv_f32: bool,
}

pub fn parse_tokens(s: &str) -> Result<Vec<u32>> {
    s.split(',')
        .map(|t| {
            t.trim()
                .parse::<u32>()
                .map_err(|_| anyhow!("--tokens: {:?} is not a token id", t.trim()))
        })
        .collect()
}

pub fn run(a: Args) -> Result<()> {
    set_threads(a.model.threads)?;
    let m = a.model.load()?;
    let tokens = match (&a.tokens, &a.prompt) {
        (Some(t), _) => parse_tokens(t)?,
        (None, Some(p)) => m.tokenizer.encode_prompt(p)?.0,
        (None, None) => bail!("give --tokens or -p"),
    };
    if tokens.is_empty() {
        bail!("no tokens");
    }
    // One position per token: past the training context the model is out
    // of its depth (and attention grows quadratically).
    let mut ctx = new_context(&m, tokens.len(), a.kv_f32, "tern logits")?;
    let logits = ctx.eval(&tokens, true)?;
    let mut buf = Vec::with_capacity(logits.len() * 4);
    for x in &logits {
        buf.extend_from_slice(&x.to_le_bytes());
    }
    let mut f = crate::gguf::writer::AtomicFile::create(&a.out, true)?;
    f.file()
        .write_all(&buf)
        .with_context(|| format!("cannot write {}", a.out.display()))?;
    f.commit()?;
    eprintln!(
        "tern logits: {} positions × {} vocab → {}",
        tokens.len(),
        m.hp.n_vocab,
        a.out.display()
    );
    Ok(())
}
