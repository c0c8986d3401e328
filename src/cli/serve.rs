//! `tern serve`: flags (llama-server's names where they overlap) → the
//! library's server.

use super::{load_model, set_threads, ModelArgs, DEFAULT_MODEL_NAME};
use crate::server::api::Defaults;
use crate::server::engine::{EngineConfig, MAX_SLOTS};
use crate::server::http::HttpConfig;
use crate::server::{serve, ServeConfig};
use anyhow::{bail, Context as _, Result};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Sequence slots decoded together (llama-server's -np).
    #[arg(long = "parallel", value_name = "N", default_value_t = 4)]
    pub parallel: usize,
    /// Context per sequence, in tokens; 0 = the model's training context (default: the model's, at most 4096).
    #[arg(short = 'c', long = "ctx-size")]
    pub ctx: Option<usize>,
    /// Tokens per step: one per decoding sequence, prompt chunks fill the
    /// rest; the smaller of -b and -ub, at most 512.
    #[arg(short = 'b', long = "batch-size", default_value_t = 128)]
    pub batch: usize,
    /// See --batch-size (llama-server's physical batch, -ub).
    #[arg(long = "ubatch-size", value_name = "N", default_value_t = 512)]
    pub ubatch: usize,
    /// Requests that may wait for a slot; more get 503.
    #[arg(long = "max-queue", value_name = "N", default_value_t = 64)]
    pub max_queue: usize,
    /// Require `Authorization: Bearer KEY` or `X-Api-Key: KEY` (every
    /// endpoint but /health, /v1/health, /models, /v1/models).
    #[arg(long = "api-key", value_name = "KEY", conflicts_with = "api_key_file")]
    pub api_key: Option<String>,
    /// Read API keys from a file, one per line.
    #[arg(long = "api-key-file", value_name = "F")]
    pub api_key_file: Option<PathBuf>,
    /// Model name in responses and /v1/models (default: the file name).
    #[arg(short = 'a', long = "alias")]
    pub alias: Option<String>,
    /// Seconds a request may take, queue included (then it ends with
    /// finish_reason "length").
    #[arg(long = "timeout", default_value_t = 600)]
    pub timeout: u64,
    /// Allow cross-origin requests from ORIGIN (`*` for any); off by default.
    #[arg(long = "cors", value_name = "ORIGIN")]
    pub cors: Option<String>,
    /// Largest request body in bytes.
    #[arg(long = "body-limit", value_name = "BYTES", default_value_t = 8 << 20)]
    pub body_limit: usize,
    /// Keep the KV caches in f32 instead of f16.
    #[arg(long = "kv-f32")]
    pub kv_f32: bool,
    #[command(flatten)]
    pub template: super::TemplateArgs,
    /// Defaults of the requests' sampling fields (llama-server's flags).
    #[command(flatten)]
    pub sample: super::run::SampleArgs,
    /// Tokens a request generates at most: the value of requests that give
    /// no max_tokens, and a cap on those that do (llama-server's); -1 = until
    /// the end of generation or a full context [default: -1]
    #[arg(short = 'n', long = "n-predict", value_name = "N")]
    pub n_predict: Option<i64>,
    /// Continuous batching (llama-server's -cb): always on; accepted for
    /// compatibility.
    #[arg(long = "cont-batching", hide = true)]
    pub cont_batching: bool,
    /// No start, ready and stop lines on stderr (warnings and errors remain).
    #[arg(long = "log-disable")]
    pub log_disable: bool,
    /// One line on stderr per request: method, path, status, milliseconds
    /// until the response began.
    #[arg(short = 'v', long = "verbose")]
    pub verbose: bool,
    /// Threads that serve HTTP (≤ 0: the default, 2); the model's compute
    /// threads are -t.
    #[arg(long = "threads-http", value_name = "N", allow_negative_numbers = true)]
    pub threads_http: Option<i64>,
    /// Serve GET /slots (the default; llama-server's --slots).
    #[arg(long = "slots", overrides_with = "no_slots")]
    pub slots: bool,
    /// Do not serve GET /slots (it answers 501).
    #[arg(long = "no-slots", overrides_with = "slots")]
    pub no_slots: bool,
}

/// Most HTTP threads `--threads-http` takes.
pub const MAX_HTTP_THREADS: i64 = 256;

/// llama-server spells some options with one dash and several letters;
/// clap reads those as clusters of short flags, so they are rewritten first.
pub const LLAMA_SERVER_SPELLINGS: &[(&str, &str)] = &[
    ("-np", "--parallel"),
    ("-cb", "--cont-batching"),
    ("-to", "--timeout"),
];

fn api_keys(a: &Args) -> Result<Vec<String>> {
    let keys: Vec<String> = match (&a.api_key, &a.api_key_file) {
        (Some(k), _) => vec![k.clone()],
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("cannot read the API key file {}", f.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
        (None, None) => vec![],
    };
    if keys.iter().any(String::is_empty) || (a.api_key_file.is_some() && keys.is_empty()) {
        bail!("an API key must not be empty");
    }
    Ok(keys)
}

/// Most requests `--max-queue` lets wait for a slot.
pub const MAX_QUEUE: usize = 1 << 20;

pub fn run(a: Args) -> Result<()> {
    if !(1..=MAX_SLOTS).contains(&a.parallel) {
        bail!("-np must be between 1 and {}", MAX_SLOTS);
    }
    if a.batch == 0 || a.ubatch == 0 {
        bail!("-b and -ub must be at least 1");
    }
    // As llama.cpp's: a step is the smaller batch; tern's forward pass
    // takes at most MAX_BATCH tokens.
    let n_batch = a.batch.min(a.ubatch).min(crate::model::forward::MAX_BATCH);
    let http_threads = match a.threads_http {
        None => 2,
        Some(n) if n <= 0 => 2,
        Some(n) if n <= MAX_HTTP_THREADS => usize::try_from(n)?,
        Some(n) => bail!("--threads-http {n}: at most {MAX_HTTP_THREADS}"),
    };
    if a.ctx == Some(1) {
        bail!("-c must be at least 2 (or 0 for the model's training context)");
    }
    if a.max_queue > MAX_QUEUE {
        bail!("--max-queue must be at most {}", MAX_QUEUE);
    }
    if a.timeout == 0 {
        bail!("--timeout must be at least 1 second");
    }
    if a.body_limit < 1024 {
        bail!("--body-limit must be at least 1024 bytes");
    }
    let keys = api_keys(&a)?;
    let defaults = Defaults {
        params: a.sample.params()?,
        // `-s -1` is "random", as without -s.
        fixed_seed: a.sample.seed.as_deref().is_some_and(|s| s.trim() != "-1"),
        max_tokens: match a.n_predict {
            Some(0) => bail!("-n 0: give at least 1 token, or -1 for no limit"),
            Some(n) => super::run::n_predict_value(n)?,
            None => None,
        },
    };
    let template = a.template.source()?;
    let threads = set_threads(a.model.threads)?;
    let alias = a.alias.clone().unwrap_or_else(|| match &a.model.model {
        Some(p) => p.file_name().map_or_else(
            || p.display().to_string(),
            |f| f.to_string_lossy().into_owned(),
        ),
        None => DEFAULT_MODEL_NAME.to_string(),
    });
    let cfg = ServeConfig {
        host: a.host.clone(),
        port: a.port,
        http: HttpConfig {
            alias,
            model_path: a
                .model
                .model
                .as_ref()
                .map_or_else(String::new, |p| p.display().to_string()),
            api_keys: keys,
            cors: a.cors.clone(),
            body_limit: a.body_limit,
            timeout: Duration::from_secs(a.timeout),
            defaults,
            log_requests: a.verbose,
            slots_endpoint: !a.no_slots,
        },
        engine: EngineConfig {
            n_slots: a.parallel,
            // -c 0: the whole training context, as llama-server's.
            n_ctx: match a.ctx {
                None => 0,
                Some(0) => usize::MAX,
                Some(c) => c,
            },
            kv_f32: a.kv_f32,
            n_batch,
            max_queue: a.max_queue,
        },
        threads,
        http_threads,
        quiet: a.log_disable,
    };
    let path = a.model.model.clone();
    serve(cfg, move || {
        let mut m = load_model(path.as_deref())?;
        if let Some(t) = template {
            super::use_template(&mut m, t);
        }
        Ok(m)
    })
}
