//! `tern._tern`: the compiled half of the `tern-bitnet` Python package.
//!
//! It wraps the tern library — model loading, the KV-cache context, sampling,
//! the generation loop, chat templates, the converter and perplexity — and
//! leaves the llama-cpp-python-shaped dictionaries to `tern/llama.py`.
//!
//! Every call that computes releases the GIL (`Python::detach`) and runs on
//! the model's own rayon pool of `n_threads` threads, so two `Llama` objects
//! compute at the same time from two Python threads. Generation checks for
//! signals between tokens and perplexity between chunks, so Ctrl-C raises
//! `KeyboardInterrupt` there.

mod errors;

use anyhow::anyhow;
use errors::{value_error, Fail};
use numpy::ndarray::Array2;
use numpy::PyArray2;
use pyo3::prelude::*;
use rayon::ThreadPool;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;
use tern::chat::{ChatTemplate, Message};
use tern::convert::{
    convert as convert_checkpoint, parse_embd_type, parse_outtype, ConvertOptions,
};
use tern::model::forward::KvCache;
use tern::model::generate::{Generation, StopReason, TextStream};
use tern::model::sampling::{Sampler, SamplingParams};
use tern::model::{Context, Model};
use tern::perplexity as ppl;

/// Most threads a model's pool may have.
const MAX_THREADS: usize = 1024;
/// Largest context (tokens) a `Llama` may ask for.
const MAX_CTX: usize = 1 << 20;
/// Largest KV cache a `Llama` may allocate (bytes).
const MAX_KV_BYTES: u64 = 256 << 30;

/// The KV cache and what it holds.
struct Cache {
    /// None only after a panic took it mid-step (then a new one is made).
    kv: Option<KvCache>,
    /// Tokens whose keys/values are in the cache, from position 0.
    tokens: Vec<u32>,
    /// The stream that last used the cache (0: none).
    user: u64,
}

impl Cache {
    fn clear(&mut self) {
        if let Some(kv) = self.kv.as_mut() {
            kv.truncate(0);
        }
        self.tokens.clear();
        self.user = 0;
    }
}

/// A loaded model, its KV cache and its thread pool (`tern.Llama` wraps it).
#[pyclass(frozen, module = "tern._tern")]
struct Engine {
    model: Arc<Model>,
    cache: Mutex<Cache>,
    pool: ThreadPool,
    n_threads: usize,
    n_ctx: usize,
    kv_f32: bool,
    /// The chat template, compiled on first use.
    template: OnceLock<Result<ChatTemplate, String>>,
    next_stream: AtomicU64,
}

fn token_ids(model: &Model, ids: &[i64]) -> PyResult<Vec<u32>> {
    let nv = model.hp.n_vocab;
    ids.iter()
        .map(|&t| match u32::try_from(t) {
            Ok(u) if (u as usize) < nv => Ok(u),
            _ => Err(value_error(format!(
                "token id {} is outside the vocabulary of {}",
                t, nv
            ))),
        })
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine {
    /// The KV cache, emptied if a panic left it in an unknown state.
    fn cache(&self) -> MutexGuard<'_, Cache> {
        match self.cache.lock() {
            Ok(g) => g,
            Err(p) => {
                let mut g = p.into_inner();
                g.clear();
                self.cache.clear_poison();
                g
            }
        }
    }

    /// Run `f` on a context over the KV cache.
    fn with_context<R>(&self, cache: &mut Cache, f: impl FnOnce(&mut Context) -> R) -> R {
        let kv = cache
            .kv
            .take()
            .unwrap_or_else(|| KvCache::new(&self.model.hp, self.n_ctx, self.kv_f32));
        let mut ctx = Context {
            model: &self.model,
            kv,
            n_batch: tern::model::forward::MAX_BATCH,
        };
        let r = f(&mut ctx);
        cache.kv = Some(ctx.kv);
        r
    }

    /// Run `job` on the pool with the GIL released; `stop` turns true when
    /// Ctrl-C arrives meanwhile, and the KeyboardInterrupt is raised once
    /// `job` has returned.
    fn interruptible<R: Send + 'static>(
        &self,
        py: Python<'_>,
        job: impl FnOnce(&AtomicBool) -> R + Send + 'static,
    ) -> PyResult<R> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        // Receivers are not Sync; detach needs a Send closure.
        let rx = Mutex::new(rx);
        let flag = stop.clone();
        self.pool.spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&flag)));
            let _ = tx.send(r);
        });
        let mut interrupt = None;
        loop {
            match py.detach(|| lock(&rx).recv_timeout(Duration::from_millis(50))) {
                Ok(Ok(r)) => return interrupt.map_or(Ok(r), Err),
                Ok(Err(_)) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(
                        Fail::runtime(anyhow!("internal error: the computation panicked")).into(),
                    )
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if interrupt.is_none() {
                        if let Err(e) = py.check_signals() {
                            stop.store(true, Ordering::SeqCst);
                            interrupt = Some(e);
                        }
                    }
                }
            }
        }
    }
}

#[pymethods]
impl Engine {
    /// Load `path` (None: the built-in model) with a context of `n_ctx`
    /// tokens (0: the model's training context) and `n_threads` threads
    /// (None: the physical cores).
    #[new]
    #[pyo3(signature = (path=None, n_ctx=512, n_threads=None, kv_f32=false))]
    fn new(
        py: Python<'_>,
        path: Option<PathBuf>,
        n_ctx: usize,
        n_threads: Option<usize>,
        kv_f32: bool,
    ) -> PyResult<Self> {
        let n_threads = n_threads.unwrap_or_else(tern::kernels::physical_cores);
        if !(1..=MAX_THREADS).contains(&n_threads) {
            return Err(value_error(format!(
                "n_threads must be between 1 and {} (got {})",
                MAX_THREADS, n_threads
            )));
        }
        if n_ctx > MAX_CTX {
            return Err(value_error(format!(
                "n_ctx must be at most {} tokens (got {})",
                MAX_CTX, n_ctx
            )));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n_threads)
            .thread_name(|i| format!("tern-{}", i))
            .build()
            .map_err(|e| Fail::runtime(anyhow!("cannot start {} threads: {}", n_threads, e)))?;
        let model = py
            .detach(|| {
                pool.install(|| match &path {
                    Some(p) => Model::load(p),
                    None => Model::builtin(),
                })
            })
            .map_err(Fail::os)?;
        let n_ctx = match n_ctx {
            0 => model.hp.n_ctx_train.min(MAX_CTX),
            n => n,
        };
        match KvCache::bytes(&model.hp, n_ctx, kv_f32) {
            Some(b) if b <= MAX_KV_BYTES => {}
            _ => {
                return Err(value_error(format!(
                    "n_ctx = {} needs a KV cache of more than {} GiB",
                    n_ctx,
                    MAX_KV_BYTES >> 30
                )))
            }
        }
        let kv = py.detach(|| KvCache::new(&model.hp, n_ctx, kv_f32));
        Ok(Engine {
            model: Arc::new(model),
            cache: Mutex::new(Cache {
                kv: Some(kv),
                tokens: Vec::new(),
                user: 0,
            }),
            pool,
            n_threads,
            n_ctx,
            kv_f32,
            template: OnceLock::new(),
            next_stream: AtomicU64::new(1),
        })
    }

    /// Context size in tokens.
    #[getter]
    fn n_ctx(&self) -> usize {
        self.n_ctx
    }
    #[getter]
    fn n_vocab(&self) -> usize {
        self.model.hp.n_vocab
    }
    #[getter]
    fn n_embd(&self) -> usize {
        self.model.hp.n_embd
    }
    #[getter]
    fn n_ctx_train(&self) -> usize {
        self.model.hp.n_ctx_train
    }
    #[getter]
    fn n_threads(&self) -> usize {
        self.n_threads
    }
    #[getter]
    fn architecture(&self) -> String {
        self.model.hp.arch.clone()
    }
    #[getter]
    fn kernel(&self) -> &'static str {
        self.model.kernel.name()
    }
    #[getter]
    fn bos(&self) -> Option<u32> {
        self.model.tokenizer.bos()
    }
    #[getter]
    fn eos(&self) -> Option<u32> {
        self.model.tokenizer.eos()
    }
    #[getter]
    fn add_bos(&self) -> bool {
        self.model.tokenizer.add_bos()
    }
    /// What the loader fixed in the file (one line each).
    #[getter]
    fn warnings(&self) -> Vec<String> {
        self.model.warnings.clone()
    }
    /// Tokens in the KV cache.
    #[getter]
    fn n_cached(&self) -> usize {
        self.cache().tokens.len()
    }

    /// Token ids of `text`; control-token texts become their ids only with
    /// `special` (user-defined tokens always do).
    #[pyo3(signature = (text, add_bos=true, special=true))]
    fn tokenize(
        &self,
        py: Python<'_>,
        text: &str,
        add_bos: bool,
        special: bool,
    ) -> PyResult<Vec<u32>> {
        let tok = &self.model.tokenizer;
        let add_bos = add_bos && tok.add_bos();
        Ok(py
            .detach(|| tok.encode_with(text, add_bos, special))
            .map_err(Fail::value)?)
    }

    /// The bytes `ids` stand for (control tokens only with `special`).
    #[pyo3(signature = (ids, special=false))]
    fn detokenize(&self, ids: Vec<i64>, special: bool) -> PyResult<Vec<u8>> {
        let ids = token_ids(&self.model, &ids)?;
        let tok = &self.model.tokenizer;
        Ok(ids
            .iter()
            .flat_map(|&t| tok.token_bytes(t, special))
            .collect())
    }

    /// Logits of every position of `ids`, evaluated in one batch from an
    /// empty cache: float32, shape (len(ids), n_vocab).
    fn eval_logits<'py>(
        &self,
        py: Python<'py>,
        ids: Vec<i64>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let ids = token_ids(&self.model, &ids)?;
        let n_ctx = self.n_ctx;
        if ids.is_empty() || ids.len() > n_ctx {
            return Err(value_error(format!(
                "eval_logits needs 1 to n_ctx = {} tokens (got {})",
                n_ctx,
                ids.len()
            )));
        }
        let (model, kv_f32) = (&*self.model, self.kv_f32);
        let logits = py
            .detach(|| {
                self.pool
                    .install(|| Context::new(model, ids.len(), kv_f32).eval(&ids, true))
            })
            .map_err(Fail::runtime)?;
        let a = Array2::from_shape_vec((ids.len(), model.hp.n_vocab), logits)
            .map_err(|e| Fail::runtime(anyhow!("internal error: {}", e)))?;
        Ok(PyArray2::from_owned_array(py, a))
    }

    /// llama-perplexity's estimate over `text`: (PPL, its ± error, chunks,
    /// tokens in the text).
    #[pyo3(signature = (text, n_ctx=512, n_batch=512, n_chunks=None))]
    fn perplexity(
        &self,
        py: Python<'_>,
        text: String,
        n_ctx: usize,
        n_batch: usize,
        n_chunks: Option<usize>,
    ) -> PyResult<(f64, f64, usize, usize)> {
        let opts = ppl::Options {
            n_ctx,
            n_batch,
            max_chunks: n_chunks,
            kv_f32: self.kv_f32,
        };
        opts.validate().map_err(Fail::value)?;
        let tok = &self.model.tokenizer;
        let tokens = py
            .detach(|| tok.encode(&text, tok.add_bos()))
            .map_err(Fail::value)?;
        ppl::chunk_count(tokens.len(), n_ctx, n_chunks).map_err(Fail::value)?;
        let model = self.model.clone();
        let r = self.interruptible(py, move |stop| {
            let mut go_on = |_: usize, _: usize, _: f64, _: f64| !stop.load(Ordering::SeqCst);
            ppl::perplexity(&model, &tokens, &opts, None, &mut go_on)
        })?;
        let r = r.map_err(Fail::runtime)?;
        Ok((r.ppl(), r.stats.ppl_err(), r.n_chunk, r.n_tokens))
    }

    /// Prompt tokens for a chat: `messages` as (role, content) pairs rendered
    /// with the model's chat template, ending with the assistant's turn.
    fn chat_tokens(&self, py: Python<'_>, messages: Vec<(String, String)>) -> PyResult<Vec<u32>> {
        let template = self
            .template
            .get_or_init(|| ChatTemplate::for_model(&self.model).map_err(|e| format!("{:#}", e)))
            .as_ref()
            .map_err(|e| Fail::runtime(anyhow!("{}", e)))?;
        let messages: Vec<Message> = messages
            .iter()
            .map(|(role, content)| Message::new(role, content))
            .collect();
        let tok = &self.model.tokenizer;
        Ok(py
            .detach(|| template.prompt_tokens(tok, &messages, true))
            .map_err(Fail::value)?)
    }

    /// Start generating after `prompt` (token ids, BOS included as wanted):
    /// at most `max_tokens` tokens, stopping at end-of-generation tokens and
    /// at the first of `stop`. Returns an iterator of text pieces.
    #[pyo3(signature = (prompt, max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, frequency_penalty, presence_penalty, seed, stop))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        slf: &Bound<'_, Self>,
        prompt: Vec<i64>,
        max_tokens: usize,
        temperature: f32,
        top_k: i64,
        top_p: f32,
        min_p: f32,
        repeat_penalty: f32,
        frequency_penalty: f32,
        presence_penalty: f32,
        seed: u64,
        stop: Vec<String>,
    ) -> PyResult<Stream> {
        let this = slf.get();
        let prompt = token_ids(&this.model, &prompt)?;
        let n_ctx = this.n_ctx;
        if prompt.is_empty() {
            return Err(value_error("the prompt is empty"));
        }
        if prompt.len() >= n_ctx {
            return Err(value_error(format!(
                "the prompt has {} tokens but the context holds {} (raise n_ctx)",
                prompt.len(),
                n_ctx
            )));
        }
        let params = SamplingParams {
            temp: temperature,
            top_k: usize::try_from(top_k.max(0)).unwrap_or(usize::MAX),
            top_p,
            min_p,
            repeat_penalty,
            frequency_penalty,
            presence_penalty,
            seed,
            ..SamplingParams::default()
        };
        // The field names are llama-cpp-python's argument names, but for temp.
        params.validate().map_err(|e| {
            let e = tern::model::sampling::SamplingError {
                name: if e.name == "temp" {
                    "temperature".to_string()
                } else {
                    e.name
                },
                ..e
            };
            Fail::value(e)
        })?;
        let gen = Generation::new(prompt, max_tokens, false).map_err(Fail::value)?;
        Ok(Stream {
            engine: slf.clone().unbind(),
            id: this.next_stream.fetch_add(1, Ordering::Relaxed),
            state: Mutex::new(StreamState {
                gen,
                sampler: Sampler::new(params),
                text: TextStream::new(stop),
                finish: None,
            }),
        })
    }

    /// Empty the KV cache.
    fn reset(&self) {
        self.cache().clear();
    }
}

struct StreamState {
    gen: Generation,
    sampler: Sampler,
    text: TextStream,
    /// "stop" or "length" once finished.
    finish: Option<&'static str>,
}

/// One generation in progress: iterating yields its text, piece by piece
/// (whole UTF-8 characters, stop strings never shown).
#[pyclass(frozen, module = "tern._tern")]
struct Stream {
    engine: Py<Engine>,
    id: u64,
    state: Mutex<StreamState>,
}

impl Stream {
    /// One token: its text (maybe empty), or None at the end.
    fn step(&self, engine: &Engine) -> Result<Option<String>, Fail> {
        let mut st = lock(&self.state);
        let st = &mut *st;
        if st.finish.is_some() {
            return Ok(None);
        }
        let mut cache = engine.cache();
        let cache = &mut *cache;
        if cache.user != self.id {
            // Another stream (or nothing) used the cache since our last step.
            st.gen.sync(&cache.tokens);
            cache.user = self.id;
        }
        let (gen, sampler) = (&mut st.gen, &mut st.sampler);
        let r = engine.with_context(cache, |ctx| gen.next_token(ctx, sampler));
        cache.tokens.clear();
        cache.tokens.extend_from_slice(st.gen.evaluated());
        let tok = &engine.model.tokenizer;
        match r {
            Err(e) => {
                cache.clear();
                st.finish = Some("error");
                Err(Fail::runtime(e))
            }
            Ok(Some(t)) => {
                let piece = st.text.push(tok, t);
                if st.text.stopped() {
                    st.gen.interrupt();
                    st.finish = Some("stop");
                }
                Ok(Some(piece))
            }
            Ok(None) => {
                st.finish = Some(match st.gen.stats().stop {
                    StopReason::EndOfGeneration => "stop",
                    _ => "length",
                });
                Ok(Some(st.text.finish()))
            }
        }
    }
}

#[pymethods]
impl Stream {
    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        let engine = self.engine.get();
        loop {
            py.check_signals()?;
            match py.detach(|| engine.pool.install(|| self.step(engine)))? {
                Some(piece) if piece.is_empty() => continue,
                Some(piece) => return Ok(Some(piece)),
                None => return Ok(None),
            }
        }
    }

    /// "stop" (end-of-generation token or stop string), "length"
    /// (max_tokens or a full context), or None while running.
    #[getter]
    fn finish_reason(&self) -> Option<&'static str> {
        lock(&self.state).finish.filter(|f| *f != "error")
    }
    #[getter]
    fn prompt_tokens(&self) -> usize {
        lock(&self.state).gen.n_prompt()
    }
    /// Ids of the tokens generated so far.
    #[getter]
    fn completion_ids(&self) -> Vec<u32> {
        lock(&self.state).gen.generated().to_vec()
    }
    /// Timings, llama.cpp style (two lines).
    fn timings(&self) -> String {
        lock(&self.state).gen.stats().report()
    }
}

/// Convert a Hugging Face BitNet checkpoint folder to GGUF, as `tern
/// convert` does; returns the output path.
#[pyfunction]
#[pyo3(signature = (model_dir, outfile=None, outtype="i2_s", embd_type="f16", force=false, verbose=false))]
fn convert(
    py: Python<'_>,
    model_dir: PathBuf,
    outfile: Option<PathBuf>,
    outtype: &str,
    embd_type: &str,
    force: bool,
    verbose: bool,
) -> PyResult<PathBuf> {
    let opts = ConvertOptions {
        input: model_dir,
        outfile,
        outtype: parse_outtype(outtype).map_err(Fail::value)?,
        embd_type: parse_embd_type(embd_type).map_err(Fail::value)?,
        force,
        quiet: !verbose,
    };
    let report = py.detach(|| convert_checkpoint(&opts)).map_err(Fail::os)?;
    Ok(report.outfile)
}

#[pymodule]
fn _tern(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Engine>()?;
    m.add_class::<Stream>()?;
    m.add_function(wrap_pyfunction!(convert, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("BUILTIN_MODEL", tern::model::BUILTIN_NAME)?;
    Ok(())
}
