//! `tern serve`: an OpenAI-compatible HTTP server over the batched engine,
//! with llama-server's own endpoints beside (`native`).
//!
//! [`engine`] holds the scheduler (slots, per-sequence KV caches, one
//! batched forward pass per step); [`api`] the request bodies; [`http`] the
//! axum routes. [`serve`] binds, loads the model in the background (the
//! server answers `/health` with 503 meanwhile), serves until Ctrl-C or
//! SIGTERM, then stops accepting, lets running requests finish for a bounded
//! time, cancels the rest and returns.

pub mod api;
pub mod engine;
pub mod http;
mod native;

use crate::chat::ChatTemplate;
use crate::model::forward::KvCache;
use crate::model::Model;
use anyhow::{anyhow, bail, Context as _, Result};
use engine::{Engine, EngineConfig};
use http::{AppState, HttpConfig, Loaded};
use std::sync::Arc;
use std::time::Duration;

/// How long running requests may go on after Ctrl-C / SIGTERM before they
/// are cancelled.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Everything [`serve`] needs besides the model.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub host: String,
    pub port: u16,
    pub http: HttpConfig,
    /// Slots, batch and queue; `n_ctx` 0 means the model's trained context,
    /// at most 4096.
    pub engine: EngineConfig,
    /// Compute threads (for the startup line only; the pool is the caller's).
    pub threads: usize,
    /// Threads of the async runtime that serves HTTP (at least 1).
    pub http_threads: usize,
    /// No start, ready and stop lines on stderr (warnings and errors remain).
    pub quiet: bool,
}

/// Physical memory in bytes, from /proc/meminfo where there is one.
fn mem_total() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// Resolve the context size and check that the KV caches of every slot fit
/// in memory.
fn size_engine(model: &Model, mut cfg: EngineConfig) -> Result<EngineConfig> {
    if cfg.n_ctx == 0 {
        cfg.n_ctx = model.hp.n_ctx_train.min(4096);
    }
    if cfg.n_ctx == usize::MAX {
        cfg.n_ctx = model.hp.n_ctx_train;
    }
    if cfg.n_ctx < 2 {
        bail!("a context of {} tokens per sequence: at least 2", cfg.n_ctx);
    }
    if cfg.n_ctx > model.hp.n_ctx_train {
        eprintln!(
            "tern serve: warning: -c {} is beyond the {} tokens the model was trained on",
            cfg.n_ctx, model.hp.n_ctx_train
        );
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let need = KvCache::bytes(&model.hp, cfg.n_ctx, cfg.kv_f32)
        .and_then(|b| b.checked_mul(cfg.n_slots as u64))
        .ok_or_else(|| anyhow!("-c {} × -np {} overflows", cfg.n_ctx, cfg.n_slots))?;
    if let Some(total) = mem_total() {
        if need > total {
            bail!(
                "-c {} × -np {} needs {:.1} GiB of KV cache; this machine has {:.1} GiB (lower -c or -np)",
                cfg.n_ctx,
                cfg.n_slots,
                gib(need),
                gib(total)
            );
        }
    }
    Ok(cfg)
}

/// Bind, load the model with `load` (in the background), serve until a
/// signal, shut down gracefully. Errors: the address cannot be bound, the
/// model does not load, or the caches do not fit.
pub fn serve(
    cfg: ServeConfig,
    load: impl FnOnce() -> Result<Model> + Send + 'static,
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.http_threads.max(1))
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let r = rt.block_on(run(cfg, load));
    rt.shutdown_timeout(Duration::from_secs(1));
    r
}

async fn run(
    cfg: ServeConfig,
    load: impl FnOnce() -> Result<Model> + Send + 'static,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind((cfg.host.as_str(), cfg.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", cfg.host, cfg.port))?;
    let addr = listener.local_addr()?;
    let quiet = cfg.quiet;
    let info = move |line: String| {
        if !quiet {
            eprintln!("tern serve: {line}");
        }
    };
    info(format!("listening on http://{addr} (loading the model)"));
    let state = Arc::new(AppState::new(cfg.http.clone()));

    // Load in the background; a failure stops the server.
    let (fail_tx, fail_rx) = tokio::sync::oneshot::channel::<anyhow::Error>();
    let st = state.clone();
    let ecfg = cfg.engine.clone();
    let threads = cfg.threads;
    tokio::task::spawn_blocking(move || {
        let r = (|| -> Result<()> {
            let model = load()?;
            let ecfg = size_engine(&model, ecfg)?;
            let template = ChatTemplate::for_model(&model)?;
            let engine = Engine::start(Arc::new(model), ecfg.clone())?;
            let _ = st.loaded.set(Loaded { engine, template });
            info(format!(
                "ready: model {:?}, {} slot{} × {} tokens, batch {}, queue {}, {} thread{}, kernel {}; OpenAI API at http://{addr}/v1",
                st.config.alias,
                ecfg.n_slots,
                if ecfg.n_slots == 1 { "" } else { "s" },
                ecfg.n_ctx,
                ecfg.n_batch,
                ecfg.max_queue,
                threads,
                if threads == 1 { "" } else { "s" },
                st.loaded.get().map_or("", |l| l.engine.model.kernel.variant()),
            ));
            Ok(())
        })();
        if let Err(e) = r {
            let _ = fail_tx.send(e);
        }
    });

    /// The loader's error; or, when the loader ended without sending one
    /// and without a model (it panicked), an error saying so — not a
    /// server that answers "loading" for ever. Pending after a load.
    async fn load_failure(
        rx: tokio::sync::oneshot::Receiver<anyhow::Error>,
        st: &AppState,
    ) -> anyhow::Error {
        match rx.await {
            Ok(e) => e,
            Err(_) if st.loaded.get().is_none() => {
                anyhow!("loading the model stopped without a result (an internal error)")
            }
            Err(_) => std::future::pending().await,
        }
    }

    let signaled = Arc::new(tokio::sync::Notify::new());
    let failed = Arc::new(std::sync::Mutex::new(None));
    let shutdown = {
        let st = state.clone();
        let signaled = signaled.clone();
        let failed = failed.clone();
        async move {
            tokio::select! {
                _ = stop_signal() => {
                    info(format!(
                        "stopping: no new requests; running ones get {} s to finish",
                        SHUTDOWN_GRACE.as_secs()
                    ));
                    if let Some(l) = st.loaded.get() {
                        l.engine.drain();
                    }
                    let st2 = st.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(SHUTDOWN_GRACE).await;
                        if let Some(l) = st2.loaded.get() {
                            l.engine.cancel_all();
                        }
                    });
                }
                e = load_failure(fail_rx, &st) => {
                    *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                }
            }
            signaled.notify_one();
        }
    };
    let server =
        axum::serve(listener, http::router(state.clone())).with_graceful_shutdown(shutdown);
    // Bounded: connections that do not close after the grace period are cut.
    let deadline = async {
        signaled.notified().await;
        tokio::time::sleep(SHUTDOWN_GRACE + Duration::from_secs(3)).await;
    };
    tokio::select! {
        r = server => r.context("the HTTP server failed")?,
        _ = deadline => eprintln!("tern serve: closing the remaining connections"),
    }
    if let Some(l) = state.loaded.get() {
        l.engine.stop();
    }
    if let Some(e) = failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    info("stopped".into());
    Ok(())
}

/// Ctrl-C, or SIGTERM on Unix.
async fn stop_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
