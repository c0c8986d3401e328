//! The `tern` command line: a thin layer over the library.

mod bench;
mod chat;
mod check;
mod convert;
mod inspect;
mod llama_flags;
mod logits;
mod perplexity;
mod pipe;
mod run;
mod serve;
mod synth;

use anyhow::{bail, Context as _, Result};
use clap::{CommandFactory, FromArgMatches, Subcommand};
use std::path::{Path, PathBuf};

#[derive(clap::Parser)]
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
    /// Generate text from a prompt (llama-cli's options; -cnv starts a chat).
    Run(run::Args),
    /// Write the logits of every prompt position (f32 LE, positions × vocab).
    Logits(logits::Args),
    /// Interactive chat in the terminal (llama-cli's conversation mode).
    Chat(run::Args),
    /// Perplexity of a text file, and KL divergence between models.
    Perplexity(perplexity::Args),
    /// Compare a model's logits with a reference bundle (or bitnet.cpp).
    Check(check::Args),
    /// Prompt-processing and generation speed, llama-bench style.
    Bench(bench::Args),
    /// Write a random BitNet checkpoint in Hugging Face layout (for benchmarks).
    Synth(synth::Args),
    /// OpenAI-compatible HTTP server with llama-server's own endpoints, concurrent sequences batched.
    Serve(serve::Args),
}

/// Options shared by every command that loads a model.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// GGUF model file (default: the tern-shakespeare model built into tern).
    #[arg(short = 'm', long = "model")]
    pub model: Option<PathBuf>,
    /// Threads; -1 (or any count ≤ 0) = the default, the number of physical cores.
    #[arg(short = 't', long = "threads", value_parser = threads_value)]
    pub threads: Option<usize>,
    /// Read the model into memory instead of mapping it.
    #[arg(long = "no-mmap")]
    pub no_mmap: bool,
}

impl ModelArgs {
    pub fn load(&self) -> Result<crate::model::Model> {
        open_model(self.model.as_deref(), self.no_mmap)
    }
}

/// A chat template given on the command line instead of the model's
/// (llama.cpp's `--chat-template`, `--chat-template-file`): `chat`,
/// `run -cnv` and `serve`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TemplateArgs {
    /// Chat template instead of the model's: bitnet, chatml, llama3, or a Jinja template.
    #[arg(long = "chat-template", value_name = "NAME|JINJA")]
    pub chat_template: Option<String>,
    /// Read the chat template (Jinja) from a file.
    #[arg(
        long = "chat-template-file",
        value_name = "FILE",
        conflicts_with = "chat_template"
    )]
    pub chat_template_file: Option<PathBuf>,
}

/// Put `source` (from [`TemplateArgs::source`]) in place of `m`'s chat
/// template. The `bitnet` format ends turns the way tern's fallback for a
/// file without a template does ([`crate::model::default_chat_template`]:
/// `<|eot_id|>`, or the vocabulary's EOS where it has no such token).
///
/// Warns (stderr) about `<|…|>` markers in the template that are not
/// tokens of the model ([`crate::chat::missing_markers`]).
pub fn use_template(m: &mut crate::model::Model, source: String) {
    m.chat_template = if source == crate::model::BITNET_CHAT_TEMPLATE {
        crate::model::default_chat_template(&m.tokenizer)
    } else {
        source
    };
    let missing = crate::chat::missing_markers(&m.chat_template, &m.tokenizer);
    if !missing.is_empty() {
        let shown: Vec<String> = missing
            .iter()
            .take(4)
            .map(|t| crate::untrusted::quoted(t).to_string())
            .collect();
        eprintln!(
            "tern: warning: the chat template's {}{} {} not tokens of this model: the model reads them as plain text",
            shown.join(", "),
            if missing.len() > 4 { ", …" } else { "" },
            if missing.len() == 1 { "is" } else { "are" }
        );
    }
}

impl TemplateArgs {
    /// The template's Jinja source, checked (it compiles; a file at most
    /// [`crate::chat::MAX_TEMPLATE_BYTES`] of UTF-8); None: the model's own.
    pub fn source(&self) -> Result<Option<String>> {
        use std::io::Read;
        if let Some(t) = &self.chat_template {
            return crate::chat::template_source(t)
                .context("--chat-template")
                .map(Some);
        }
        let Some(f) = &self.chat_template_file else {
            return Ok(None);
        };
        let max = crate::chat::MAX_TEMPLATE_BYTES;
        // One byte past the limit tells a file over it.
        let cap = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
        let mut bytes = Vec::new();
        std::fs::File::open(f)
            .and_then(|h| h.take(cap).read_to_end(&mut bytes))
            .with_context(|| format!("cannot read {}", f.display()))?;
        if bytes.len() > max {
            bail!(
                "{}: a chat template of more than {} bytes",
                f.display(),
                max
            );
        }
        let text = String::from_utf8(bytes).map_err(|_| {
            anyhow::anyhow!("--chat-template-file: {} is not UTF-8 text", f.display())
        })?;
        // A byte-order mark is not part of the template.
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text).to_string();
        crate::chat::checked_template(text)
            .with_context(|| format!("--chat-template-file {}", f.display()))
            .map(Some)
    }
}

pub use crate::model::BUILTIN_NAME as DEFAULT_MODEL_NAME;

/// The default thread count: physical cores, as llama.cpp defaults to
/// (hyper-threads share one core's SIMD units).
pub use crate::kernels::physical_cores;

/// Most threads `-t` may ask for (ggml's `GGML_MAX_N_THREADS`).
pub const MAX_THREADS: usize = 512;

/// Check a thread count from a flag: 1 to [`MAX_THREADS`], and a warning
/// when it is more than the CPUs this process may run on. The workers of
/// a forward pass spin between its steps instead of sleeping, so extra
/// threads only take turns on the CPUs: on a 2-core VM, `-t 1024` made a
/// token take 2.3 s and `-t 4096` did not finish a token in a minute.
pub fn check_threads(n: usize) -> Result<()> {
    if !(1..=MAX_THREADS).contains(&n) {
        anyhow::bail!("--threads must be between 1 and {}", MAX_THREADS);
    }
    if let Ok(cpus) = std::thread::available_parallelism() {
        if n > cpus.get() {
            eprintln!(
                "tern: warning: {} threads on {} CPUs: threads wait for one another's steps by spinning, so more threads than CPUs slows every token",
                n, cpus
            );
        }
    }
    Ok(())
}

/// `-t N`: a count (checked by [`check_threads`] once parsed), or -1 (any
/// count ≤ 0) for the default ([`default_threads`]), as llama.cpp's.
fn threads_value(s: &str) -> Result<usize, String> {
    match s.trim().parse::<i64>() {
        // llama.cpp takes any count ≤ 0 as "the default".
        Ok(n) if n <= 0 => Ok(default_threads()),
        Ok(n) => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
        Err(_) => Err(format!(
            "not a thread count: give 1 to {MAX_THREADS}, or -1 for the default"
        )),
    }
}

/// The thread count without `-t`: the physical cores, at most [`MAX_THREADS`].
pub fn default_threads() -> usize {
    physical_cores().min(MAX_THREADS)
}

pub fn set_threads(n: Option<usize>) -> Result<usize> {
    let n = n.unwrap_or_else(default_threads);
    check_threads(n)?;
    // Ignore the error when a pool already exists (tests call this repeatedly).
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
    Ok(n)
}

/// A note on stderr, llama.cpp style (`tern: note: …`).
pub fn note(s: &str) {
    eprintln!("tern: note: {}", s);
}

pub fn load_model(path: Option<&Path>) -> Result<crate::model::Model> {
    open_model(path, false)
}

/// Refuse a model path that is a folder or a safetensors file, with the
/// hint to convert it first (`-m` of every command, `inspect`'s file).
pub fn refuse_hf_path(p: &Path) -> Result<()> {
    let hf = |what: &str, dir: &Path| {
        format!(
            "{} {}; for a Hugging Face folder run `tern convert {}` and pass the .gguf it writes",
            p.display(),
            what,
            dir.display()
        )
    };
    if p.is_dir() {
        bail!("{}", hf("is a directory", p));
    }
    if p.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
    {
        let dir = p.parent().filter(|d| !d.as_os_str().is_empty());
        bail!(
            "{}",
            hf(
                "is a safetensors file, not GGUF",
                dir.unwrap_or(Path::new("."))
            )
        );
    }
    Ok(())
}

/// Load `path` (mapped, or read into memory with `no_mmap`), or the built-in
/// model; print the loader's warnings. A folder or a safetensors file gets
/// the hint to convert it first.
fn open_model(path: Option<&Path>, no_mmap: bool) -> Result<crate::model::Model> {
    if let Some(p) = path {
        refuse_hf_path(p)?;
    }
    let m = match path {
        Some(p) if no_mmap => {
            let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
            crate::gguf::GgufFile::from_bytes(bytes)
                .and_then(crate::model::Model::from_gguf)
                .with_context(|| p.display().to_string())?
        }
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
    pipe::quiet_broken_pipe(dispatch)
}

fn dispatch() -> Result<()> {
    // As in llama.cpp, an option given twice takes its last value (so a
    // wrapper can append to a base command line) instead of an error.
    let mut cmd = Cli::command().mut_subcommands(|s| s.args_override_self(true));
    cmd.build();
    let t = match llama_flags::translate(&cmd, llama_spellings(std::env::args_os())) {
        Ok(t) => t,
        // A usage error, reported (and exited with 2) the way clap reports its own.
        Err(e) => cmd.error(clap::error::ErrorKind::UnknownArgument, e).exit(),
    };
    let matches = cmd
        .try_get_matches_from(&t.args)
        .unwrap_or_else(|e| e.exit());
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let quiet = t.args.iter().any(|a| a == "--log-disable");
    if !quiet {
        for n in &t.notes {
            note(n);
        }
    }
    // Commands that write files and do not handle Ctrl-C themselves remove
    // what they were writing when interrupted or terminated.
    if matches!(
        cli.cmd,
        Cmd::Convert(_) | Cmd::Logits(_) | Cmd::Perplexity(_) | Cmd::Check(_) | Cmd::Synth(_)
    ) {
        crate::signals::remove_partials_on_signal();
    }
    match cli.cmd {
        Cmd::Convert(a) => convert::run(a),
        Cmd::Inspect(a) => inspect::run(a),
        Cmd::Run(a) if a.is_chat(false) => chat::run(a),
        Cmd::Run(a) => run::run(a),
        Cmd::Chat(a) if a.is_chat(true) => chat::run(a),
        Cmd::Chat(a) => run::run(a),
        Cmd::Logits(a) => logits::run(a),
        Cmd::Perplexity(a) => perplexity::run(a),
        Cmd::Check(a) => check::run(a),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Synth(a) => synth::run(a),
        Cmd::Serve(a) => serve::run(a),
    }
}
