//! The `tern` command line: a thin layer over the library.

mod bench;
mod chat;
mod check;
mod convert;
mod inspect;
mod logits;
mod perplexity;
mod run;
mod serve;
mod synth;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "tern",
    version,
    about = "Convert and run ternary (BitNet b1.58) language models"
)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Convert a Hugging Face BitNet checkpoint folder to GGUF.
    Convert(convert::Args),
    /// Show a GGUF file's metadata and tensors.
    Inspect(inspect::Args),
    /// Generate text from a prompt.
    Run(run::Args),
    /// Write the logits of every prompt position (f32 LE, positions × vocab).
    Logits(logits::Args),
    /// Interactive chat in the terminal.
    Chat(chat::Args),
    /// Perplexity of a text file, and KL divergence between models.
    Perplexity(perplexity::Args),
    /// Compare a model's logits with a reference bundle (or bitnet.cpp).
    Check(check::Args),
    /// Prompt-processing and generation speed, llama-bench style.
    Bench(bench::Args),
    /// Write a random BitNet checkpoint in Hugging Face layout (for benchmarks).
    Synth(synth::Args),
    /// OpenAI-compatible HTTP server with concurrent sequences.
    Serve(serve::Args),
}

/// Options shared by every command that loads a model.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// GGUF model file (default: the tern-shakespeare model built into tern).
    #[arg(short = 'm', long = "model")]
    pub model: Option<PathBuf>,
    /// Threads (default: the number of physical cores).
    #[arg(short = 't', long = "threads")]
    pub threads: Option<usize>,
}

pub use crate::model::BUILTIN_NAME as DEFAULT_MODEL_NAME;

/// The default thread count: physical cores, as llama.cpp defaults to
/// (hyper-threads share one core's SIMD units).
pub use crate::kernels::physical_cores;

pub fn set_threads(n: Option<usize>) -> Result<usize> {
    let n = n.unwrap_or_else(physical_cores);
    if n == 0 {
        anyhow::bail!("--threads must be at least 1");
    }
    // Ignore the error when a pool already exists (tests call this repeatedly).
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
    Ok(n)
}

pub fn load_model(path: Option<&Path>) -> Result<crate::model::Model> {
    let m = match path {
        Some(p) => crate::model::Model::load(p)?,
        None => {
            eprintln!(
                "tern: no -m given; using the built-in model {} (trained BitNet b1.58, 4 layers)",
                DEFAULT_MODEL_NAME
            );
            crate::model::Model::builtin()?
        }
    };
    for w in &m.warnings {
        eprintln!("tern: warning: {}", w);
    }
    Ok(m)
}

/// The command line with llama-server's one-dash long options (`-np`)
/// spelled the way clap reads them (`--parallel`), for `tern serve`.
fn llama_spellings(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let args: Vec<std::ffi::OsString> = args.collect();
    if args.get(1).and_then(|a| a.to_str()) != Some("serve") {
        return args;
    }
    args.into_iter()
        .map(|a| {
            match serve::LLAMA_SERVER_SPELLINGS
                .iter()
                .find(|(short, _)| a.to_str() == Some(short))
            {
                Some((_, long)) => long.into(),
                None => a,
            }
        })
        .collect()
}

pub fn main() -> i32 {
    crate::signals::install_sigbus_handler();
    let cli = Cli::parse_from(llama_spellings(std::env::args_os()));
    let r = match cli.cmd {
        Cmd::Convert(a) => convert::run(a),
        Cmd::Inspect(a) => inspect::run(a),
        Cmd::Run(a) => run::run(a),
        Cmd::Logits(a) => logits::run(a),
        Cmd::Chat(a) => chat::run(a),
        Cmd::Perplexity(a) => perplexity::run(a),
        Cmd::Check(a) => check::run(a),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Synth(a) => synth::run(a),
        Cmd::Serve(a) => serve::run(a),
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            // One line: the outermost context and its causes joined; text
            // from files was quoted where it entered the message, and any
            // control character left is escaped here.
            eprintln!(
                "tern: error: {}",
                crate::untrusted::escape_controls(&format!("{:#}", e))
            );
            1
        }
    }
}
