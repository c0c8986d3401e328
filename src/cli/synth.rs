use crate::synth::{synth_hf_variant, Shape};
use anyhow::{anyhow, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Output folder (Hugging Face layout).
    pub out_dir: PathBuf,
    /// Shape: 2b4t (BitNet b1.58 2B-4T: 2560/6912/30 layers/20:5 heads/128256 vocab) or tiny.
    #[arg(long, default_value = "2b4t")]
    pub shape: String,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Model variant: b1.58 (BitNetForCausalLM, ReLU², GGUF `bitnet-b1.58`)
    /// or bitnet (BitnetForCausalLM, SiLU, GGUF `bitnet`: what the bitnet.cpp
    /// of `--features bitnet-cpp` runs, e.g. for `tern bench --bitnet-cpp`).
    #[arg(long, default_value = "b1.58")]
    pub variant: String,
    /// Replace the checkpoint files already in the folder.
    #[arg(long)]
    pub force: bool,
}

/// The files a checkpoint folder holds that `synth` writes.
const CHECKPOINT_FILES: [&str; 5] = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
];

pub fn run(a: Args) -> Result<()> {
    let shape = Shape::by_name(&a.shape)
        .ok_or_else(|| anyhow!("unknown --shape {:?} (2b4t, tiny)", a.shape))?;
    let silu = match a.variant.as_str() {
        "b1.58" | "bitnet-b1.58" => false,
        "bitnet" => true,
        v => return Err(anyhow!("unknown --variant {:?} (b1.58, bitnet)", v)),
    };
    if !a.force {
        if let Some(f) = CHECKPOINT_FILES
            .iter()
            .find(|f| a.out_dir.join(f).symlink_metadata().is_ok())
        {
            return Err(anyhow!(
                "{} already holds {} (use --force to overwrite the checkpoint)",
                a.out_dir.display(),
                f
            ));
        }
    }
    synth_hf_variant(&a.out_dir, shape, a.seed, silu)?;
    eprintln!(
        "tern synth: wrote a random bf16 {} checkpoint ({}) to {}",
        if silu {
            "BitnetForCausalLM (SiLU)"
        } else {
            "BitNetForCausalLM (ReLU²)"
        },
        shape,
        a.out_dir.display()
    );
    Ok(())
}
