use crate::convert::{convert, parse_embd_type, parse_outtype, ConvertOptions};
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Hugging Face model folder (config.json, *.safetensors, tokenizer files).
    pub model_dir: PathBuf,
    /// Output file (default: <dir-name>-<outtype>.gguf in the current directory).
    #[arg(long)]
    pub outfile: Option<PathBuf>,
    /// Projection type: i2_s, tq2_0, tq1_0, f16, f32.
    #[arg(long, default_value = "i2_s")]
    pub outtype: String,
    /// Token embedding / output head type: f16, f32, q8_0 or q6_k (ggml's
    /// reference quantizers, byte for byte; rows that do not hold whole
    /// blocks fall back as llama.cpp's tools do: q6_k → q8_0 → f16).
    #[arg(long = "embd-type", default_value = "f16")]
    pub embd_type: String,
    /// Overwrite an existing output file.
    #[arg(long)]
    pub force: bool,
}

pub fn run(a: Args) -> Result<()> {
    let outtype = parse_outtype(&a.outtype).context("--outtype")?;
    let embd_type = parse_embd_type(&a.embd_type).context("--embd-type")?;
    convert(&ConvertOptions {
        input: a.model_dir,
        outfile: a.outfile,
        outtype,
        embd_type,
        force: a.force,
        quiet: false,
    })?;
    Ok(())
}
