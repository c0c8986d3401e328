//! `tern run`: generate from a prompt, llama-cli style. Its options are
//! shared with `tern chat` (llama-cli's conversation mode): `run -cnv` is a
//! chat and `chat -no-cnv` a run, as in llama-cli.

use super::{llama_flags::process_escapes, note, set_threads, ModelArgs};
use crate::model::forward::ContextError;
use crate::model::generate::{Generation, ReversePrompts, StopReason, TextStream};
use crate::model::sampling::{random_seed, Sampler, SamplingParams};
use crate::model::{Context, Model};
use anyhow::{anyhow, bail, Context as _, Result};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// Sampling flags (llama.cpp names and defaults; checked by
/// [`SamplingParams::set`], the same check as `/set` in the chat).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SampleArgs {
    /// Temperature; 0 or less is greedy [default: 0.8]
    #[arg(long, value_name = "T")]
    pub temp: Option<String>,
    /// Keep the K most likely tokens; 0 keeps all [default: 40]
    #[arg(long = "top-k", value_name = "K")]
    pub top_k: Option<String>,
    /// Nucleus sampling threshold in [0, 1]; 1 is off [default: 0.95]
    #[arg(long = "top-p", value_name = "P")]
    pub top_p: Option<String>,
    /// Drop tokens below P × the top probability, P in [0, 1] [default: 0.05]
    #[arg(long = "min-p", value_name = "P")]
    pub min_p: Option<String>,
    /// Penalty on recently seen tokens, > 0; 1 is off [default: 1.0]
    #[arg(long = "repeat-penalty", value_name = "X")]
    pub repeat_penalty: Option<String>,
    /// Recent tokens the penalties look at; -1 = all [default: 64]
    #[arg(long = "repeat-last-n", value_name = "N")]
    pub repeat_last_n: Option<String>,
    /// Subtracted from a token's logit once per time it occurs among the
    /// recent tokens, -2 to 2; 0 is off [default: 0]
    #[arg(long = "frequency-penalty", value_name = "X")]
    pub frequency_penalty: Option<String>,
    /// Subtracted from the logit of every token among the recent ones, -2
    /// to 2; 0 is off [default: 0]
    #[arg(long = "presence-penalty", value_name = "X")]
    pub presence_penalty: Option<String>,
    /// RNG seed; -1 = random [default: -1]
    #[arg(short = 's', long, value_name = "N")]
    pub seed: Option<String>,
}

impl SampleArgs {
    /// llama.cpp's defaults with a random seed, then each flag given.
    pub fn params(&self) -> Result<SamplingParams> {
        let mut p = SamplingParams {
            seed: random_seed(),
            ..Default::default()
        };
        for (flag, v) in [
            ("temp", &self.temp),
            ("top-k", &self.top_k),
            ("top-p", &self.top_p),
            ("min-p", &self.min_p),
            ("repeat-penalty", &self.repeat_penalty),
            ("repeat-last-n", &self.repeat_last_n),
            ("frequency-penalty", &self.frequency_penalty),
            ("presence-penalty", &self.presence_penalty),
            ("seed", &self.seed),
        ] {
            if let Some(v) = v {
                p.set(flag, v)
                    .map_err(|e| anyhow!("--{} {}: {}", flag, v, e.problem))?;
            }
        }
        Ok(p)
    }
}

/// The options of `tern run` and `tern chat` (llama-cli's).
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt; in a conversation (`chat`, `run -cnv`) the system prompt, unless --system is given.
    #[arg(short = 'p', long, value_name = "TEXT")]
    pub prompt: Option<String>,
    /// Read the prompt from a file (one final newline dropped, as llama.cpp does).
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        conflicts_with = "prompt"
    )]
    pub file: Option<PathBuf>,
    /// System prompt of a conversation (llama.cpp's -sys).
    #[arg(long = "system", value_name = "TEXT", alias = "sys")]
    pub system: Option<String>,
    /// Read the system prompt from a file (llama.cpp's -sysf).
    #[arg(
        long = "system-file",
        value_name = "FILE",
        conflicts_with = "system",
        alias = "system-prompt-file"
    )]
    pub system_file: Option<PathBuf>,
    /// Process the escapes \n \r \t \' \" \\ \xHH in the prompt and the system prompt (the default).
    #[arg(short = 'e', long = "escape")]
    pub escape: bool,
    /// Take the prompt as typed: no escape processing.
    #[arg(long = "no-escape", conflicts_with = "escape")]
    pub no_escape: bool,
    /// Tokens to generate (per reply in a chat); -1 or -2 = until the end of generation or a full context [default: 128; 256 in a chat]
    #[arg(short = 'n', long = "n-predict", value_name = "N")]
    pub n_predict: Option<i64>,
    /// Context size in tokens; 0 = the model's training context [default: the model's, at most 4096]
    #[arg(short = 'c', long = "ctx-size", value_name = "N")]
    pub ctx: Option<u64>,
    /// Prompt tokens per forward pass: the smaller of -b and -ub, at most 512.
    #[arg(
        short = 'b',
        long = "batch-size",
        value_name = "N",
        default_value_t = 2048
    )]
    pub batch_size: usize,
    /// See --batch-size (llama.cpp's physical batch, -ub).
    #[arg(long = "ubatch-size", value_name = "N", default_value_t = 512)]
    pub ubatch_size: usize,
    #[command(flatten)]
    pub sample: SampleArgs,
    #[command(flatten)]
    pub template: super::TemplateArgs,
    /// Keep generating past end-of-generation tokens.
    #[arg(long = "ignore-eos")]
    pub ignore_eos: bool,
    /// Keep the KV cache in f32 instead of f16 (= -ctk f32 -ctv f32).
    #[arg(long = "kv-f32")]
    pub kv_f32: bool,
    /// KV cache type of the keys: f16 (default) or f32 (llama.cpp's -ctk).
    #[arg(long = "cache-type-k", value_name = "TYPE")]
    pub cache_type_k: Option<String>,
    /// KV cache type of the values: f16 (default) or f32 (llama.cpp's -ctv).
    #[arg(long = "cache-type-v", value_name = "TYPE")]
    pub cache_type_v: Option<String>,
    /// Start a conversation, as `tern chat` (llama.cpp's -cnv).
    #[arg(long)]
    pub conversation: bool,
    /// Generate once from the prompt, as `tern run` (llama.cpp's -no-cnv).
    #[arg(long = "no-conversation", conflicts_with = "conversation")]
    pub no_conversation: bool,
    /// Same as --conversation (llama.cpp's -i and -if).
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Do not echo the prompt before the generated text.
    #[arg(long = "no-display-prompt")]
    pub no_display_prompt: bool,
    /// Neither read nor write the chat's line-editing history file.
    #[arg(long = "no-history")]
    pub no_history: bool,
    /// No notes and no timings on stderr (warnings and errors remain).
    #[arg(long = "log-disable")]
    pub log_disable: bool,
    /// No timings at the end (llama.cpp's --no-perf); notes remain.
    #[arg(long = "no-perf")]
    pub no_perf: bool,
    /// Also print the prompt's tokens on stderr.
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// Halt generation once the generated text contains TEXT, which is
    /// printed (a chat's reply ends there); may be given several times;
    /// escapes as in -p.
    #[arg(
        short = 'r',
        long = "reverse-prompt",
        value_name = "TEXT",
        action = clap::ArgAction::Append
    )]
    pub reverse_prompt: Vec<String>,
}

impl Args {
    /// Whether these options ask for a conversation (`chat`, or `run -cnv`/`-i`).
    pub fn is_chat(&self, chat_command: bool) -> bool {
        if chat_command {
            !self.no_conversation
        } else {
            self.conversation || self.interactive
        }
    }

    fn escaped(&self, s: String) -> String {
        if self.no_escape {
            s
        } else {
            process_escapes(&s)
        }
    }

    /// The prompt from -p or -f, escapes processed.
    pub fn prompt_text(&self) -> Result<Option<String>> {
        let text = match (&self.prompt, &self.file) {
            (Some(p), _) => p.clone(),
            (None, Some(f)) => {
                let mut t = read_text(f)?;
                if t.ends_with('\n') {
                    t.pop();
                }
                t
            }
            (None, None) => return Ok(None),
        };
        Ok(Some(self.escaped(text)))
    }

    /// The system prompt from --system or --system-file, escapes processed.
    pub fn system_text(&self) -> Result<Option<String>> {
        let text = match (&self.system, &self.system_file) {
            (Some(s), _) => s.clone(),
            (None, Some(f)) => read_text(f)?.trim_end_matches('\n').to_string(),
            (None, None) => return Ok(None),
        };
        Ok(Some(self.escaped(text)))
    }

    /// The reverse prompts (`-r`), escapes processed.
    pub fn reverse_prompts(&self) -> ReversePrompts {
        let texts: Vec<String> = self
            .reverse_prompt
            .iter()
            .map(|r| self.escaped(r.clone()))
            .collect();
        ReversePrompts::new(&texts)
    }

    /// `-n`: Some(limit), or None for "until the end of generation or a full context".
    pub fn n_predict(&self, default: usize) -> Result<Option<usize>> {
        n_predict_value(self.n_predict.unwrap_or(i64::try_from(default)?))
    }

    /// Whether the KV cache is f32 (`--kv-f32`, or `-ctk f32 -ctv f32`).
    pub fn kv_f32(&self) -> Result<bool> {
        let ty = |flag: &str, v: &Option<String>| -> Result<Option<bool>> {
            match v.as_deref() {
                None => Ok(None),
                Some("f16") => Ok(Some(false)),
                Some("f32") => Ok(Some(true)),
                Some(o) => bail!("{} {}: tern keeps the KV cache in f16 or f32", flag, o),
            }
        };
        let k = ty("--cache-type-k", &self.cache_type_k)?;
        let v = ty("--cache-type-v", &self.cache_type_v)?;
        match (k, v) {
            (Some(a), Some(b)) if a != b => {
                bail!("-ctk and -ctv must name the same type: tern keeps keys and values alike")
            }
            (a, b) => Ok(self.kv_f32 || a.or(b).unwrap_or(false)),
        }
    }

    /// The prompt batch (`-b`, `-ub`): the smaller one, at least 1.
    pub fn n_batch(&self) -> Result<usize> {
        let n = self.batch_size.min(self.ubatch_size);
        if n == 0 {
            bail!("-b and -ub must be at least 1");
        }
        Ok(n)
    }

    /// Notes on stderr unless --log-disable.
    pub fn note(&self, s: &str) {
        if !self.log_disable {
            note(s);
        }
    }
}

/// `-n` and `/set n_predict`: a positive count, or -1 / -2 for no limit.
pub fn n_predict_value(n: i64) -> Result<Option<usize>> {
    match n {
        -1 | -2 => Ok(None),
        n if n >= 0 => Ok(Some(usize::try_from(n)?)),
        n => bail!(
            "-n {}: give a number of tokens, or -1 to generate until the end of generation or a full context",
            n
        ),
    }
}

fn read_text(f: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(f).with_context(|| format!("cannot read {} as UTF-8 text", f.display()))
}

/// The context size: `-c` (0 = the model's training context), else the
/// model's, at most 4096.
pub fn context_size(m: &Model, c: Option<u64>) -> Result<usize> {
    let train = m.hp.n_ctx_train;
    match c {
        None => Ok(train.clamp(1, 4096)),
        Some(0) => Ok(train.max(1)),
        Some(c) => usize::try_from(c)
            .map_err(|_| anyhow!("-c {}: more tokens than this machine can address", c)),
    }
}

/// The warning llama.cpp prints for a context above the training context.
pub fn warn_past_training(m: &Model, n_ctx: usize, what: &str) {
    if n_ctx > m.hp.n_ctx_train {
        eprintln!(
            "{}: warning: the model was trained on only {} context tokens ({} specified)",
            what, m.hp.n_ctx_train, n_ctx
        );
    }
}

/// Add the remedy to a context-size error (the library's message states the
/// KV-cache size it would need).
pub fn lower_c(e: anyhow::Error) -> anyhow::Error {
    if e.chain().any(|c| c.is::<ContextError>()) {
        anyhow!("{:#}: lower -c", e)
    } else {
        e
    }
}

/// A context of `n_ctx` tokens (error: the KV-cache size it would need),
/// and the warning above the training context.
pub fn new_context<'m>(
    m: &'m Model,
    n_ctx: usize,
    kv_f32: bool,
    what: &str,
) -> Result<Context<'m>> {
    let ctx = Context::try_new(m, n_ctx, kv_f32).map_err(|e| lower_c(e.into()))?;
    warn_past_training(m, n_ctx, what);
    Ok(ctx)
}

/// `id:"text"` for each token, comma-separated (`-v`).
pub fn shown_tokens(tok: &crate::tokenizer::Tokenizer, ids: &[u32]) -> String {
    let shown: Vec<String> = ids
        .iter()
        .map(|&t| format!("{}:{:?}", t, tok.token_text(t)))
        .collect();
    shown.join(", ")
}

pub fn run(a: Args) -> Result<()> {
    let text = a.prompt_text()?.ok_or_else(|| {
        anyhow!("give a prompt with -p TEXT or -f FILE (or start a chat with -cnv)")
    })?;
    if a.system.is_some() || a.system_file.is_some() {
        a.note("the system prompt is used in conversations only (add -cnv)");
    }
    if a.template.chat_template.is_some() || a.template.chat_template_file.is_some() {
        a.note("the chat template is used in conversations only (add -cnv)");
    }
    let n_predict = a.n_predict(128)?;
    let params = a.sample.params()?;
    let kv_f32 = a.kv_f32()?;
    let n_batch = a.n_batch()?;
    let threads = set_threads(a.model.threads)?;
    let t0 = Instant::now();
    let m = a.model.load()?;
    let load = t0.elapsed().as_secs_f64();
    let n_ctx = context_size(&m, a.ctx)?;
    let (prompt, own_bos) = m.tokenizer.encode_prompt(&text)?;
    if own_bos {
        eprintln!(
            "tern: warning: the prompt already starts with the BOS token {}; not adding a second one",
            crate::untrusted::quoted(m.tokenizer.token_text(prompt[0]))
        );
    }
    if prompt.is_empty() {
        bail!("the prompt is empty and the model adds no BOS token: nothing to start from");
    }
    if prompt.len() >= n_ctx {
        bail!(
            "the prompt has {} tokens but the context holds {} (raise -c)",
            prompt.len(),
            n_ctx
        );
    }
    if a.verbose {
        eprintln!(
            "tern: prompt: {} tokens [{}]",
            prompt.len(),
            shown_tokens(&m.tokenizer, &prompt)
        );
    }
    // The last token sampled needs no room in the cache.
    let room = n_ctx - prompt.len() + 1;
    if let Some(n) = n_predict.filter(|&n| n > room) {
        a.note(&format!(
            "-n {} is more than the context leaves: it holds {} tokens and the prompt takes {}, so generation stops after at most {} (raise -c)",
            n,
            n_ctx,
            prompt.len(),
            room
        ));
    }
    let mut ctx = new_context(&m, n_ctx, kv_f32, "tern run")?;
    ctx.n_batch = n_batch;
    let mut sampler = Sampler::new(params);
    let mut out = std::io::stdout().lock();
    if !a.no_display_prompt {
        // Echo the prompt like llama-cli (without the BOS text).
        write!(out, "{}", text)?;
        out.flush()?;
    }
    let mut generation = Generation::new(prompt, n_predict.unwrap_or(usize::MAX), a.ignore_eos)?;
    let mut stream = TextStream::default();
    let mut reverse = a.reverse_prompts();
    let mut write_err = None;
    let st = generation.run(&mut ctx, &mut sampler, |t| {
        let s = stream.push(&m.tokenizer, t);
        match out.write_all(s.as_bytes()).and_then(|_| out.flush()) {
            // A reverse prompt halts generation after it is shown.
            Ok(()) => !reverse.push(&s),
            Err(e) => {
                write_err = Some(e);
                false
            }
        }
    })?;
    if let Some(e) = write_err {
        return Err(e.into());
    }
    writeln!(out, "{}", stream.finish())?;
    out.flush()?;
    drop(out);
    match st.stop {
        StopReason::EndOfGeneration => eprintln!("[end of text]"),
        StopReason::ContextFull => {
            eprintln!("[context full after {} tokens: raise -c]", st.gen_tokens)
        }
        StopReason::Length | StopReason::Interrupted => {}
    }
    if !a.log_disable && !a.no_perf {
        eprintln!();
        eprintln!(
            "tern: {} thread{}, kernel {}, seed {}",
            threads,
            if threads == 1 { "" } else { "s" },
            m.kernel.variant(),
            sampler.params.seed
        );
        eprintln!("      load time = {:10.2} ms", load * 1000.0);
        eprintln!("{}", st.report());
    }
    Ok(())
}
