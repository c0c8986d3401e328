//! bitnet.cpp linked in-process (cargo feature `bitnet-cpp`), for live
//! cross-checks of tern against the reference engine.
//!
//! `build.rs` compiles the sources that the crates.io package
//! `bitnet-cpp-sys` 0.0.5 ships (microsoft/BitNet as of late 2024 with its
//! llama.cpp fork: the I2_S type 36 and its AVX2 kernels, the `bitnet`
//! architecture with the SiLU graph, no `bitnet-b1.58`) with gcc/g++, and
//! links them into tern. [`sys`] holds the bindgen bindings of the part of
//! its C API used here; this module wraps them:
//!
//! - kernel level: [`quantize_i2_s`] (ggml's I2_S packer),
//!   [`quantize_row_i8_s`] (its per-token int8 activation quantizer) and
//!   [`vec_dot_i2_i8_s`] (its int8 × I2_S dot product);
//! - model level: [`Engine`] loads a GGUF through bitnet.cpp's own loader and
//!   evaluates token sequences like bitnet.cpp's `llama_decode` (all prompt
//!   positions in one batch with every position's logits, then greedy tokens
//!   with the KV cache); [`logits_all`] and [`open`] are the entry points of
//!   `tern check --bitnet-cpp`.
//!
//! Every call into C first checks that this CPU has the instructions the C
//! code was compiled for and that gcc laid out the structs passed by value
//! the way the bindings (generated with libclang) say. Calls that touch
//! llama.cpp's global state are serialized. llama.cpp's log is kept quiet
//! (its warnings and errors end up in tern's error messages); set
//! `TERN_BITNET_CPP_LOG=1` to see all of it on stderr.

#[allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code,
    clippy::all
)]
pub mod sys;

use crate::check::{Evaluation, LogitSource};
use crate::gguf::GgufFile;
use crate::model::sampling::argmax;
use anyhow::{anyhow, bail, Result};
use std::ffi::{c_char, c_void, CStr, CString};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard, OnceLock};

/// The unpacked `bitnet-cpp-sys` package whose sources this build compiled.
pub const SOURCE_DIR: &str = env!("TERN_BITNET_CPP_SRC");
/// The C++ compiler that built them (path and `--version` line).
pub const COMPILER: &str = env!("TERN_BITNET_CPP_CXX");
/// Which bitnet.cpp this is, for reports: not today's tree.
pub const LINKED: &str =
    "bitnet-cpp-sys 0.0.5: microsoft/BitNet with its llama.cpp fork as of late 2024, \
before bitnet.cpp's Nov-2025 I2_S kernel update";

/// Values per I2_S block in bitnet.cpp (`QK_I2_S`).
pub const QK_I2_S: usize = 128;

extern "C" {
    /// `src/bitnet_cpp/shim.c`: the C compiler's struct layout.
    fn tern_bitnet_cpp_layout(out: *mut usize, cap: usize) -> usize;
}

/// The layout values `shim.c` reports, in its order, as the bindings see them.
fn rust_layout() -> [(&'static str, usize); 16] {
    use std::mem::{offset_of, size_of};
    use sys::{llama_batch as B, llama_context_params as C, llama_model_params as M};
    [
        ("sizeof llama_batch", size_of::<B>()),
        ("llama_batch.token", offset_of!(B, token)),
        ("llama_batch.pos", offset_of!(B, pos)),
        ("llama_batch.n_seq_id", offset_of!(B, n_seq_id)),
        ("llama_batch.seq_id", offset_of!(B, seq_id)),
        ("llama_batch.logits", offset_of!(B, logits)),
        ("sizeof llama_model_params", size_of::<M>()),
        ("llama_model_params.use_mmap", offset_of!(M, use_mmap)),
        (
            "llama_model_params.check_tensors",
            offset_of!(M, check_tensors),
        ),
        ("sizeof llama_context_params", size_of::<C>()),
        ("llama_context_params.n_batch", offset_of!(C, n_batch)),
        ("llama_context_params.n_ubatch", offset_of!(C, n_ubatch)),
        ("llama_context_params.n_threads", offset_of!(C, n_threads)),
        (
            "llama_context_params.n_threads_batch",
            offset_of!(C, n_threads_batch),
        ),
        ("llama_context_params.logits_all", offset_of!(C, logits_all)),
        (
            "llama_context_params.abort_callback_data",
            offset_of!(C, abort_callback_data),
        ),
    ]
}

/// Struct layouts on which the bindings and the C compiler disagree, as
/// `name: rust vs c` lines (empty when they agree).
pub fn layout_mismatches() -> Vec<String> {
    let want = rust_layout();
    let mut got = [0usize; 16];
    // SAFETY: the shim writes at most `cap` values into `got` and reads nothing.
    let n = unsafe { tern_bitnet_cpp_layout(got.as_mut_ptr(), got.len()) };
    if n != want.len() {
        return vec![format!(
            "layout probe returned {} values, expected {}",
            n,
            want.len()
        )];
    }
    want.iter()
        .zip(got)
        .filter(|((_, r), c)| r != c)
        .map(|((name, r), c)| format!("{}: bindings {} vs C {}", name, r, c))
        .collect()
}

/// Check once that the C code can run here: the CPU has what it was compiled
/// for, and the struct layouts agree.
pub fn ensure_ready() -> Result<()> {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    READY
        .get_or_init(|| {
            let cpu_ok = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            if !cpu_ok {
                return Err(
                    "this CPU lacks AVX2, FMA or F16C, which the bitnet-cpp build of \
                            bitnet.cpp's kernels is compiled for"
                        .to_string(),
                );
            }
            let bad = layout_mismatches();
            if !bad.is_empty() {
                return Err(format!(
                    "the bitnet.cpp bindings do not match the C compiler's struct layout ({})",
                    bad.join("; ")
                ));
            }
            Ok(())
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// ggml's I2_S packer (`quantize_i2_s`) on a `rows × cols` matrix given as
/// floats. It keeps only the sign of each value (|x| < 1e-6 counts as zero)
/// and stores max |x| as the scale, so feed it ternary values `s · T`.
/// Returns the whole tensor: `rows · cols / 4` packed bytes and the 32-byte
/// tail with the scale (the tail's other bytes zero).
pub fn quantize_i2_s(values: &[f32], rows: usize, cols: usize) -> Result<Vec<u8>> {
    ensure_ready()?;
    let n = rows
        .checked_mul(cols)
        .filter(|&n| n == values.len())
        .ok_or_else(|| anyhow!("{} values for a {}×{} matrix", values.len(), rows, cols))?;
    if n == 0 || !n.is_multiple_of(QK_I2_S) {
        bail!(
            "I2_S needs a non-empty multiple of {} values, got {}",
            QK_I2_S,
            n
        );
    }
    if n > i32::MAX as usize {
        bail!("{} values overflow bitnet.cpp's int element count", n);
    }
    let mut out = vec![0u8; n / 4 + 32];
    // SAFETY: `values` holds rows·cols floats; `out` has room for the n/4
    // packed bytes plus the 4-byte scale the function writes after them; the
    // importance-weights pointer may be null (it is unused).
    let written = unsafe {
        sys::quantize_i2_s(
            values.as_ptr(),
            out.as_mut_ptr() as *mut c_void,
            rows as i64,
            cols as i64,
            std::ptr::null(),
        )
    };
    if written != out.len() {
        bail!(
            "quantize_i2_s reported {} bytes, expected {}",
            written,
            out.len()
        );
    }
    Ok(out)
}

/// ggml's per-token activation quantizer for I2_S products
/// (`quantize_row_i8_s`): returns the int8 values, the scale
/// `127 / max(|x|, 1e-5)` and the sum of the int8 values.
pub fn quantize_row_i8_s(x: &[f32]) -> Result<(Vec<i8>, f32, i32)> {
    ensure_ready()?;
    let mut q = vec![0i8; x.len()];
    let mut scale = 0f32;
    let mut sum = 0i32;
    // SAFETY: reads x.len() floats from `x`, writes as many int8 into `q`
    // and one value each into `scale` and `sum`.
    unsafe {
        sys::quantize_row_i8_s(
            x.as_ptr(),
            q.as_mut_ptr() as *mut c_void,
            x.len() as i64,
            &mut scale,
            &mut sum,
        )
    };
    Ok((q, scale, sum))
}

/// ggml's int8 × I2_S dot product (`ggml_vec_dot_i2_i8_s`, AVX2) of one
/// canonical I2_S row `w` (`y.len() / 4` bytes, no tail) with int8 values
/// `y`, exactly as ggml returns it: Σ code·y with code = T + 1 ∈ {0, 1, 2},
/// as f32. ggml's mul_mat subtracts Σ y afterwards; so does
/// [`ternary_dot`].
pub fn vec_dot_i2_i8_s(w: &[u8], y: &[i8]) -> Result<f32> {
    ensure_ready()?;
    if y.is_empty() || !y.len().is_multiple_of(QK_I2_S) {
        bail!(
            "the I2_S dot product needs a non-empty multiple of {} values, got {}",
            QK_I2_S,
            y.len()
        );
    }
    if w.len() * 4 != y.len() {
        bail!(
            "{} bytes of I2_S weights for {} activations (want {})",
            w.len(),
            y.len(),
            y.len() / 4
        );
    }
    if y.len() > i32::MAX as usize {
        bail!("{} values overflow bitnet.cpp's int element count", y.len());
    }
    let mut s = 0f32;
    // SAFETY: with n = y.len() (a multiple of 128) the kernel reads n/4
    // bytes of `w` and n bytes of `y` and writes one float to `s`; strides
    // are unused for one row (nrc = 1).
    unsafe {
        sys::ggml_vec_dot_i2_i8_s(
            y.len() as i32,
            &mut s,
            0,
            w.as_ptr() as *const c_void,
            0,
            y.as_ptr() as *const c_void,
            0,
            1,
        )
    };
    Ok(s)
}

/// Σ T·y through ggml's kernel: [`vec_dot_i2_i8_s`] minus Σ y, as ggml's
/// mul_mat does it.
pub fn ternary_dot(w: &[u8], y: &[i8]) -> Result<i64> {
    let raw = vec_dot_i2_i8_s(w, y)?;
    let sum: i64 = y.iter().map(|&v| v as i64).sum();
    Ok(raw as i64 - sum)
}

// ---------------------------------------------------------------------------
// Model level.

/// Serializes everything that touches llama.cpp's global state (backend
/// init, the log callback, model load and decode).
static ENGINE_LOCK: Mutex<()> = Mutex::new(());

/// The last lines llama.cpp logged (warnings and errors), for error messages.
static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());
const LOG_KEEP: usize = 32;

fn engine_lock() -> MutexGuard<'static, ()> {
    // A panic while holding the lock leaves no C state half-changed that a
    // later caller could trip over (each call creates and frees its own).
    ENGINE_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

unsafe extern "C" fn log_callback(level: sys::ggml_log_level, text: *const c_char, _: *mut c_void) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a NUL-terminated string that lives for the call.
    let s = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    if std::env::var_os("TERN_BITNET_CPP_LOG").is_some() {
        eprint!("{}", s);
    }
    let keep = level == sys::ggml_log_level_GGML_LOG_LEVEL_ERROR
        || level == sys::ggml_log_level_GGML_LOG_LEVEL_WARN;
    if let Ok(mut log) = LOG.lock() {
        if keep {
            log.push(s.trim_end().to_string());
            let extra = log.len().saturating_sub(LOG_KEEP);
            log.drain(..extra);
        }
    }
}

/// Drain the kept log lines into one string ("" when none).
fn take_log() -> String {
    let mut log = LOG.lock().unwrap_or_else(|e| e.into_inner());
    let lines: Vec<String> = log.drain(..).filter(|l| !l.is_empty()).collect();
    lines.join(" | ")
}

fn with_log(msg: String) -> anyhow::Error {
    let log = take_log();
    if log.is_empty() {
        anyhow!(msg)
    } else {
        anyhow!("{} (bitnet.cpp: {})", msg, log)
    }
}

/// Initialize the backend once and route llama.cpp's log into [`LOG`].
/// Call with the engine lock held.
fn init_backend() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        // SAFETY: plain C calls with no arguments beyond a callback of the
        // declared signature; the CPU and ABI were checked by `ensure_ready`.
        unsafe {
            sys::llama_log_set(Some(log_callback), std::ptr::null_mut());
            sys::llama_backend_init();
        }
    });
}

/// What bitnet.cpp's late-2024 fork can run correctly, checked with tern's
/// own GGUF reader before bitnet.cpp sees the file (its loader aborts the
/// process on some inputs instead of returning an error).
fn precheck(path: &Path) -> Result<()> {
    let g = GgufFile::open(path)?;
    let arch = g.architecture().unwrap_or("");
    if arch != "bitnet" && arch != "llama" {
        bail!(
            "{}: architecture {:?}: the bitnet.cpp linked into this tern (bitnet-cpp-sys 0.0.5, \
             late 2024) only runs `bitnet` (the SiLU graph) and `llama`; `bitnet-b1.58` files need a newer bitnet.cpp",
            path.display(),
            crate::hf::short(arch)
        );
    }
    if let Some(act) = g.get_str("bitnet.hidden_activation") {
        if act != "silu" {
            bail!(
                "{}: bitnet.hidden_activation is {:?}, but this bitnet.cpp always builds the SiLU \
                 graph for `bitnet`: it would run the wrong graph",
                path.display(),
                act
            );
        }
    }
    Ok(())
}

/// A model loaded by bitnet.cpp.
pub struct Engine {
    model: NonNull<sys::llama_model>,
    n_vocab: usize,
    n_threads: i32,
}

impl Engine {
    /// Load a GGUF through bitnet.cpp's loader (`llama_load_model_from_file`).
    pub fn load(path: &Path) -> Result<Engine> {
        ensure_ready()?;
        precheck(path)?;
        let cpath = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| anyhow!("{}: path holds a NUL byte", path.display()))?;
        let _guard = engine_lock();
        init_backend();
        take_log();
        // SAFETY: default parameters from the library itself; `cpath` is a
        // valid C string for the duration of the call.
        let raw = unsafe {
            let mut params = sys::llama_model_default_params();
            params.n_gpu_layers = 0;
            sys::llama_load_model_from_file(cpath.as_ptr(), params)
        };
        let model = NonNull::new(raw)
            .ok_or_else(|| with_log(format!("bitnet.cpp could not load {}", path.display())))?;
        // SAFETY: `model` is a live model returned just above.
        let n_vocab = unsafe { sys::llama_n_vocab(model.as_ptr()) };
        let n_threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(16) as i32;
        let engine = Engine {
            model,
            n_vocab: n_vocab.max(0) as usize,
            n_threads,
        };
        if engine.n_vocab == 0 {
            bail!(
                "bitnet.cpp reports an empty vocabulary for {}",
                path.display()
            );
        }
        Ok(engine)
    }

    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    /// Threads bitnet.cpp uses (its results do not depend on the count).
    pub fn set_threads(&mut self, n: usize) {
        self.n_threads = n.clamp(1, 512) as i32;
    }

    /// Evaluate `tokens` from a fresh context: one `llama_decode` of all
    /// tokens with logits for every position (positions × vocab), then
    /// `n_greedy` greedy tokens decoded one at a time with the KV cache.
    pub fn evaluate(&self, tokens: &[u32], n_greedy: usize) -> Result<Evaluation> {
        self.check_tokens(tokens)?;
        let n = tokens.len();
        let total = n
            .checked_add(n_greedy)
            .filter(|&t| t <= (i32::MAX / 2) as usize)
            .ok_or_else(|| anyhow!("{} + {} tokens is too many", n, n_greedy))?;
        let _guard = engine_lock();
        take_log();
        let ctx = ContextGuard::new(self, total as u32, n as u32)?;
        let nv = self.n_vocab;

        let mut batch = BatchGuard::new(n)?;
        for (i, &t) in tokens.iter().enumerate() {
            batch.set(i, t as i32, i as i32, true);
        }
        ctx.decode(&batch, n)?;
        let logits = ctx.logits(n * nv)?;

        let mut greedy = Vec::with_capacity(n_greedy);
        let mut row = logits[(n - 1) * nv..].to_vec();
        let mut one = BatchGuard::new(1)?;
        for i in 0..n_greedy {
            let next = argmax(&row);
            greedy.push(next);
            if i + 1 < n_greedy {
                one.set(0, next as i32, (n + i) as i32, true);
                ctx.decode(&one, 1)?;
                row = ctx.logits(nv)?;
            }
        }
        Ok(Evaluation { logits, greedy })
    }
}

/// One untimed warm-up of `run`, then `reps` timed runs, each from an
/// emptied KV cache: seconds per run.
fn timed_runs(
    ctx: &ContextGuard,
    reps: usize,
    mut run: impl FnMut() -> Result<()>,
) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(reps);
    for rep in 0..=reps {
        ctx.clear();
        let t0 = std::time::Instant::now();
        run()?;
        if rep > 0 {
            out.push(t0.elapsed().as_secs_f64());
        }
    }
    Ok(out)
}

/// Tokens per micro-batch in [`Engine::time_prompt`]: llama-bench's default
/// is 512, but this bitnet.cpp overflows its stack a little past 300 tokens
/// per batch at BitNet 2B-4T's shapes (which would take tern down with it),
/// so longer prompts go through in micro-batches of this many tokens.
pub const BENCH_MAX_UBATCH: usize = 256;

impl Engine {
    /// Seconds per run of `llama_decode` over `tokens` in one batch from an
    /// emptied KV cache, with logits for the last position only (what
    /// llama-bench's prompt test does): one untimed warm-up, then `reps`
    /// timed runs on `n_threads` threads.
    pub fn time_prompt(&self, n_threads: usize, tokens: &[u32], reps: usize) -> Result<Vec<f64>> {
        self.check_tokens(tokens)?;
        let n = tokens.len();
        let _guard = engine_lock();
        take_log();
        let ctx = ContextGuard::with(
            self,
            n as u32,
            n as u32,
            n.min(BENCH_MAX_UBATCH) as u32,
            n_threads,
        )?;
        let mut batch = BatchGuard::new(n)?;
        for (i, &t) in tokens.iter().enumerate() {
            batch.set(i, t as i32, i as i32, i + 1 == n);
        }
        timed_runs(&ctx, reps, || ctx.decode(&batch, n))
    }

    /// Seconds per run of `tokens.len()` single-token `llama_decode` calls
    /// from an emptied KV cache, each with its logits (llama-bench's
    /// generation test): one untimed warm-up, then `reps` timed runs.
    pub fn time_gen(&self, n_threads: usize, tokens: &[u32], reps: usize) -> Result<Vec<f64>> {
        self.check_tokens(tokens)?;
        let n = tokens.len();
        let _guard = engine_lock();
        take_log();
        let ctx = ContextGuard::with(self, n as u32, 1, 1, n_threads)?;
        let mut one = BatchGuard::new(1)?;
        timed_runs(&ctx, reps, || {
            for (i, &t) in tokens.iter().enumerate() {
                one.set(0, t as i32, i as i32, true);
                ctx.decode(&one, 1)?;
            }
            Ok(())
        })
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        if tokens.is_empty() {
            bail!("no tokens to evaluate");
        }
        if tokens.len() > (i32::MAX / 2) as usize {
            bail!("{} tokens is too many", tokens.len());
        }
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= self.n_vocab) {
            bail!(
                "token id {} is outside bitnet.cpp's vocabulary of {}",
                t,
                self.n_vocab
            );
        }
        Ok(())
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _guard = engine_lock();
        // SAFETY: the model was returned by llama_load_model_from_file and is
        // freed exactly once; no context outlives an `evaluate` call.
        unsafe { sys::llama_free_model(self.model.as_ptr()) };
    }
}

impl LogitSource for Engine {
    fn label(&self) -> String {
        "bitnet.cpp".to_string()
    }
    fn n_vocab(&self) -> usize {
        self.n_vocab
    }
    fn evaluate(&mut self, tokens: &[u32], n_greedy: usize) -> Result<Evaluation> {
        Engine::evaluate(self, tokens, n_greedy)
    }
}

/// A llama context, freed on drop. Created and used under the engine lock.
struct ContextGuard {
    ctx: NonNull<sys::llama_context>,
}

impl ContextGuard {
    /// The whole prompt in one batch and one micro-batch, on the engine's threads.
    fn new(engine: &Engine, n_ctx: u32, n_batch: u32) -> Result<ContextGuard> {
        Self::with(
            engine,
            n_ctx,
            n_batch,
            n_batch,
            engine.n_threads.max(1) as usize,
        )
    }

    fn with(
        engine: &Engine,
        n_ctx: u32,
        n_batch: u32,
        n_ubatch: u32,
        n_threads: usize,
    ) -> Result<ContextGuard> {
        let n_threads = n_threads.clamp(1, 512) as i32;
        // SAFETY: default parameters from the library, adjusted field by
        // field; the model pointer is live for the engine's lifetime.
        let raw = unsafe {
            let mut p = sys::llama_context_default_params();
            p.n_ctx = n_ctx.max(1);
            p.n_batch = n_batch.max(1);
            p.n_ubatch = n_ubatch.clamp(1, n_batch.max(1));
            p.n_threads = n_threads;
            p.n_threads_batch = n_threads;
            p.no_perf = true;
            sys::llama_new_context_with_model(engine.model.as_ptr(), p)
        };
        let ctx = NonNull::new(raw)
            .ok_or_else(|| with_log("bitnet.cpp could not create a context".to_string()))?;
        Ok(ContextGuard { ctx })
    }

    /// Empty the KV cache (cells and data).
    fn clear(&self) {
        // SAFETY: the context is live; the call only resets its cache.
        unsafe { sys::llama_kv_cache_clear(self.ctx.as_ptr()) }
    }

    fn decode(&self, batch: &BatchGuard, n: usize) -> Result<()> {
        let mut b = batch.batch;
        b.n_tokens = n as i32;
        // SAFETY: the batch arrays hold at least `n` filled entries (checked
        // by BatchGuard::set) and the context is live.
        let rc = unsafe { sys::llama_decode(self.ctx.as_ptr(), b) };
        if rc != 0 {
            return Err(with_log(format!(
                "bitnet.cpp's llama_decode failed ({})",
                rc
            )));
        }
        Ok(())
    }

    /// The logits of the last decode: `len` floats (outputs × vocab).
    fn logits(&self, len: usize) -> Result<Vec<f32>> {
        // SAFETY: after a successful decode with every token marked for
        // output, llama_get_logits points at outputs × vocab floats in batch
        // order, valid until the next decode.
        let p = unsafe { sys::llama_get_logits(self.ctx.as_ptr()) };
        if p.is_null() {
            return Err(with_log("bitnet.cpp returned no logits".to_string()));
        }
        // SAFETY: see above; copied out before anything else runs.
        Ok(unsafe { std::slice::from_raw_parts(p, len) }.to_vec())
    }
}

impl Drop for ContextGuard {
    fn drop(&mut self) {
        // SAFETY: created by llama_new_context_with_model, freed once.
        unsafe { sys::llama_free(self.ctx.as_ptr()) };
    }
}

/// A `llama_batch` from `llama_batch_init` for one sequence, freed on drop.
struct BatchGuard {
    batch: sys::llama_batch,
    cap: usize,
}

impl BatchGuard {
    fn new(cap: usize) -> Result<BatchGuard> {
        // SAFETY: allocates token/pos/n_seq_id/seq_id/logits arrays of `cap`
        // entries, with room for one sequence id each.
        let batch = unsafe { sys::llama_batch_init(cap as i32, 0, 1) };
        if batch.token.is_null()
            || batch.pos.is_null()
            || batch.n_seq_id.is_null()
            || batch.seq_id.is_null()
            || batch.logits.is_null()
        {
            bail!("bitnet.cpp could not allocate a batch of {} tokens", cap);
        }
        Ok(BatchGuard { batch, cap })
    }

    fn set(&mut self, i: usize, token: i32, pos: i32, logits: bool) {
        assert!(i < self.cap, "batch index {} of {}", i, self.cap);
        // SAFETY: `i < cap`, the arrays were allocated with `cap` entries and
        // seq_id[i] with room for one id.
        unsafe {
            *self.batch.token.add(i) = token;
            *self.batch.pos.add(i) = pos;
            *self.batch.n_seq_id.add(i) = 1;
            *(*self.batch.seq_id.add(i)) = 0;
            *self.batch.logits.add(i) = logits as i8;
        }
    }
}

impl Drop for BatchGuard {
    fn drop(&mut self) {
        // SAFETY: allocated by llama_batch_init, freed once.
        unsafe { sys::llama_batch_free(self.batch) };
    }
}

/// bitnet.cpp's logits for `tokens` evaluated from a fresh state in one
/// batch: positions × vocab, row-major (like its `llama_decode` with logits
/// for every position).
pub fn logits_all(gguf_path: &Path, tokens: &[u32]) -> Result<Vec<f32>> {
    let engine = Engine::load(gguf_path)?;
    Ok(engine.evaluate(tokens, 0)?.logits)
}

/// bitnet.cpp as a [`LogitSource`] for `tern check --bitnet-cpp`.
pub fn open(path: &Path) -> Result<Box<dyn LogitSource>> {
    Ok(Box::new(Engine::load(path)?))
}
