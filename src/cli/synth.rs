use crate::synth::{synth_hf, Shape};
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
}

pub fn run(a: Args) -> Result<()> {
    let shape = Shape::by_name(&a.shape)
        .ok_or_else(|| anyhow!("unknown --shape {:?} (2b4t, tiny)", a.shape))?;
    synth_hf(&a.out_dir, shape, a.seed)?;
    eprintln!(
        "tern synth: wrote a random bf16 {:?} checkpoint to {}",
        shape,
        a.out_dir.display()
    );
    Ok(())
}
