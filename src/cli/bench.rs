//! `tern bench`: prompt-processing and generation speed in the style of
//! llama-bench, plus the bytes read per generated token, the memory read
//! bandwidth of this machine and how close generation comes to the bound
//! they imply.

use super::load_model;
use crate::kernels;
use crate::model::{Context, Model};
use anyhow::{anyhow, bail, Context as _, Result};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// GGUF model file (default: the built-in model). Several are timed
    /// one after another, in one table: `-m A -m B` or, as llama-bench
    /// takes it, `-m A,B`.
    #[arg(short = 'm', long = "model", action = clap::ArgAction::Append)]
    pub model: Vec<PathBuf>,
    /// Prompt lengths to time (comma-separated or repeated; 0 skips the test).
    #[arg(short = 'p', long = "n-prompt", default_value = "128", action = clap::ArgAction::Append)]
    pub n_prompt: Vec<String>,
    /// Generated token counts to time (comma-separated or repeated; 0 skips the test).
    #[arg(short = 'n', long = "n-gen", default_value = "128", action = clap::ArgAction::Append)]
    pub n_gen: Vec<String>,
    /// Prompt-then-generation tests, as llama-bench's `-pg PP,TG`: a prompt
    /// of PP tokens in one batch, then TG tokens one at a time, timed
    /// together (`pp512+tg128`); may be given several times.
    #[arg(long = "pg", value_name = "PP,TG", action = clap::ArgAction::Append)]
    pub pg: Vec<String>,
    /// Context depths: tokens put in the KV cache (untimed) before each
    /// repetition of every test, as llama-bench's `-d` (comma-separated).
    #[arg(short = 'd', long = "n-depth", default_value = "0", action = clap::ArgAction::Append)]
    pub n_depth: Vec<String>,
    /// Thread counts (comma-separated or repeated; -1: physical cores, the
    /// default).
    #[arg(short = 't', long = "threads", action = clap::ArgAction::Append)]
    pub threads: Vec<String>,
    /// Repetitions of each test.
    #[arg(short = 'r', long = "repetitions", default_value_t = 3)]
    pub reps: usize,
    /// Output format: md (table), or json, jsonl, csv (llama-bench's
    /// field names).
    #[arg(short = 'o', long = "output", default_value = "md")]
    pub output: String,
    /// Size of the buffer for the read-bandwidth measurement, MiB
    /// (1–16384).
    #[arg(long = "bw-mib", default_value_t = 1024)]
    pub bw_mib: usize,
    /// Also time bitnet.cpp's `llama_decode` on the same file, threads and
    /// tokens, each test right after tern's (needs a build with
    /// `--features bitnet-cpp` and `-m`).
    #[arg(long = "bitnet-cpp")]
    pub bitnet_cpp: bool,
}

/// Who ran a test.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Engine {
    Tern,
    BitnetCpp,
}

/// The values of an option given several times (llama-bench: "by
/// separating them with ',' or by specifying the parameter multiple
/// times"), in order.
fn parse_lists(flag: &str, values: &[String], allow_zero: bool) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for v in values {
        out.extend(parse_list(flag, v, allow_zero)?);
    }
    Ok(out)
}

/// `-t`: counts, with -1 or 0 for the default ([`super::default_threads`]),
/// as llama-bench's `-t` takes them.
fn parse_threads(values: &[String]) -> Result<Vec<usize>> {
    if values.is_empty() {
        return Ok(vec![super::default_threads()]);
    }
    let mut out = Vec::new();
    for v in values {
        for x in v.split(',') {
            out.push(match x.trim() {
                "-1" => super::default_threads(),
                "0" => bail!("-t must be at least 1 (or -1 for the default)"),
                t => t
                    .parse::<usize>()
                    .map_err(|_| anyhow!("-t: {:?} is not a whole number", t))?,
            });
        }
    }
    Ok(out)
}

fn parse_list(flag: &str, s: &str, allow_zero: bool) -> Result<Vec<usize>> {
    let v: Vec<usize> = s
        .split(',')
        .map(|x| {
            x.trim()
                .parse::<usize>()
                .map_err(|_| anyhow!("{}: {:?} is not a whole number", flag, x.trim()))
        })
        .collect::<Result<_>>()?;
    if !allow_zero && v.contains(&0) {
        bail!("{} must be at least 1", flag);
    }
    Ok(v)
}

/// One timed test: `n_prompt` tokens in one batch, or `n_gen` tokens one by one.
struct Record {
    engine: Engine,
    threads: usize,
    n_prompt: usize,
    n_gen: usize,
    /// Tokens in the cache before the timed ones.
    n_depth: usize,
    /// Seconds per repetition.
    samples: Vec<f64>,
    /// Where the bound applies: the read bandwidth (GB/s) measured beside
    /// each repetition, the better of the measurements right before and
    /// right after it; empty elsewhere.
    bounds: Vec<f64>,
}

impl Record {
    fn tokens(&self) -> usize {
        self.n_prompt + self.n_gen
    }
    /// llama-bench's test name: `pp512`, `tg128`, `pp512+tg128`,
    /// `tg128 @ d4096`.
    fn name(&self) -> String {
        let base = match (self.n_prompt, self.n_gen) {
            (p, 0) => format!("pp{}", p),
            (0, g) => format!("tg{}", g),
            (p, g) => format!("pp{}+tg{}", p, g),
        };
        if self.n_depth > 0 {
            format!("{} @ d{}", base, self.n_depth)
        } else {
            base
        }
    }
    /// Whether the bound applies: a tg test (one token at a time, at any
    /// depth).
    fn has_bound(&self) -> bool {
        bound_applies(self.n_prompt, self.n_gen)
    }
    /// Mean bytes one of this test's tokens reads: `weights` (every
    /// projection and the head, [`crate::model::Model::bytes_per_token`])
    /// plus the KV cache positions its attention reads, `kv_per_pos` bytes
    /// each (keys and values of every layer). The token at position `p`
    /// reads positions `0..=p`; a tg test's tokens sit at `n_depth ..
    /// n_depth + n_gen`, so on average `n_depth + (n_gen + 1) / 2`
    /// positions. A pp or pg test: the weights alone (what its JSON
    /// record's `bytes_per_token` has always said).
    fn bytes_per_token(&self, weights: u64, kv_per_pos: u64) -> f64 {
        if !self.has_bound() {
            return weights as f64;
        }
        let positions = self.n_depth as f64 + (self.n_gen as f64 + 1.0) / 2.0;
        weights as f64 + kv_per_pos as f64 * positions
    }
    fn ts(&self) -> Vec<f64> {
        self.samples
            .iter()
            .map(|s| self.tokens() as f64 / s)
            .collect()
    }
    /// Mean implied weight rate (GB/s), mean bound rate (GB/s) and mean
    /// fraction of the bound over the repetitions, each repetition against
    /// the bandwidth measured beside it; `None` where no bound applies.
    fn bound_stats(&self, bytes_per_token: f64) -> Option<(f64, f64, f64)> {
        if !self.has_bound()
            || self.bounds.len() != self.samples.len()
            || self.bounds.is_empty()
            || self.bounds.iter().any(|&b| b.is_nan() || b <= 0.0)
        {
            return None;
        }
        let n = self.samples.len() as f64;
        let implied: Vec<f64> = self
            .ts()
            .iter()
            .map(|ts| bytes_per_token * ts / 1e9)
            .collect();
        let frac = implied
            .iter()
            .zip(&self.bounds)
            .map(|(i, b)| i / b)
            .sum::<f64>()
            / n;
        Some((
            implied.iter().sum::<f64>() / n,
            self.bounds.iter().sum::<f64>() / n,
            frac,
        ))
    }
}

/// Whether the bound applies to a test: generation, one token at a time
/// (see [`Record::has_bound`]).
fn bound_applies(n_prompt: usize, n_gen: usize) -> bool {
    n_prompt == 0 && n_gen > 0
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, var.sqrt())
}

/// Token ids for the timed prompt: BOS (if the model adds one), then a fixed
/// pseudo-random sequence over the vocabulary.
fn bench_tokens(model: &Model, n: usize) -> Vec<u32> {
    let nv = model.hp.n_vocab as u64;
    let mut s = 0x243f_6a88_85a3_08d3u64;
    let mut v: Vec<u32> = Vec::with_capacity(n);
    if model.tokenizer.add_bos() {
        if let Some(b) = model.tokenizer.bos() {
            v.push(b);
        }
    }
    while v.len() < n {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        v.push((s % nv) as u32);
    }
    v.truncate(n);
    v
}

/// Empty the cache, then (untimed) fill it with the `depth` tokens (the
/// context is reused across repetitions, as llama-bench does, so the cache
/// pages are not faulted in again inside the timing).
fn fill_depth(ctx: &mut Context, depth: &[u32]) -> Result<()> {
    ctx.truncate(0);
    if !depth.is_empty() {
        ctx.eval(depth, false)?;
    }
    Ok(())
}

/// One prompt-processing run of `toks` in one batch after `depth`.
fn time_prompt(ctx: &mut Context, depth: &[u32], toks: &[u32]) -> Result<f64> {
    fill_depth(ctx, depth)?;
    let t0 = Instant::now();
    ctx.eval(toks, false)?;
    Ok(t0.elapsed().as_secs_f64())
}

/// `prompt` in one batch, then `gen.len()` single-token evaluations, after
/// `depth` (llama-bench's pg test).
fn time_pg(ctx: &mut Context, depth: &[u32], prompt: &[u32], gen: &[u32]) -> Result<f64> {
    fill_depth(ctx, depth)?;
    let t0 = Instant::now();
    ctx.eval(prompt, false)?;
    for &t in gen {
        ctx.eval(&[t], false)?;
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// `toks.len()` single-token evaluations after `depth`.
fn time_gen(ctx: &mut Context, depth: &[u32], toks: &[u32]) -> Result<f64> {
    fill_depth(ctx, depth)?;
    let t0 = Instant::now();
    for &t in toks {
        ctx.eval(&[t], false)?;
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// The bench's KV cache holds f16 keys and values (llama-bench's default
/// `type_k`/`type_v`, as its JSON says), not f32.
const KV_F32: bool = false;

/// Largest `--bw-mib`.
const MAX_BW_MIB: usize = 16 << 10;

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name") || l.starts_with("Model"))
                .and_then(|l| l.split(':').nth(1))
                .map(|x| x.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// A model size as llama-bench prints it: MiB below 1 GiB, else GiB.
fn size_label(bytes: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    let b = bytes as f64;
    if b < GIB {
        format!("{:.2} MiB", b / (1u64 << 20) as f64)
    } else {
        format!("{:.2} GiB", b / GIB)
    }
}

/// A parameter count as llama-bench prints it: M below 10⁹, else B.
fn params_label(n: u64) -> String {
    let x = n as f64;
    if x < 1e9 {
        format!("{:.2} M", x / 1e6)
    } else {
        format!("{:.2} B", x / 1e9)
    }
}

/// llama-bench's `model_type`: architecture, size and weight type
/// (`bitnet-b1.58 3.74M I2_S`), not a file name.
fn model_type(model: &Model) -> String {
    let proj = model
        .gguf
        .tensor("blk.0.attn_q.weight")
        .map_or("?", |t| t.ty.name());
    format!(
        "{} {} {}",
        model.hp.arch,
        params_label(model.n_params()).replace(' ', ""),
        proj
    )
}

/// Repetitions that differ by more than this (sd / mean) make a test suspect.
const MAX_SPREAD: f64 = 0.10;
/// tern / bitnet.cpp ratios outside [1/x, x] are more likely a mistake (other
/// file, threads or a machine busy in one run) than a real difference.
const MAX_RATIO: f64 = 4.0;

/// Warnings about the figures: tests whose repetitions spread widely (a busy
/// machine) and tern / bitnet.cpp ratios that are implausible.
fn warnings(records: &[Record]) -> Vec<String> {
    let mut w = Vec::new();
    for r in records {
        let (m, sd) = mean_sd(&r.ts());
        if m > 0.0 && sd / m > MAX_SPREAD {
            w.push(format!(
                "warning: {} ({}, {} thread{}) varies by {:.0}% between repetitions: the machine is probably busy; rerun with more -r or when it is idle",
                r.name(),
                if r.engine == Engine::Tern { "tern" } else { "bitnet.cpp" },
                r.threads,
                if r.threads == 1 { "" } else { "s" },
                100.0 * sd / m
            ));
        }
    }
    for (t, b) in ratio_pairs(records) {
        let ratio = mean_sd(&t.ts()).0 / mean_sd(&b.ts()).0;
        if !(1.0 / MAX_RATIO..=MAX_RATIO).contains(&ratio) {
            w.push(format!(
                "warning: {}, {} thread{}: tern / bitnet.cpp = {:.2}× is implausible; check that the machine was idle and rerun",
                t.name(),
                t.threads,
                if t.threads == 1 { "" } else { "s" },
                ratio
            ));
        }
    }
    w
}

/// (tern, bitnet.cpp) records of the same test.
fn ratio_pairs(records: &[Record]) -> Vec<(&Record, &Record)> {
    records
        .iter()
        .filter(|r| r.engine == Engine::BitnetCpp)
        .filter_map(|b| {
            records
                .iter()
                .find(|t| {
                    t.engine == Engine::Tern
                        && t.threads == b.threads
                        && t.n_prompt == b.n_prompt
                        && t.n_gen == b.n_gen
                        && t.n_depth == b.n_depth
                })
                .map(|t| (t, b))
        })
        .collect()
}

/// bitnet.cpp loaded for `--bitnet-cpp`.
#[cfg(feature = "bitnet-cpp")]
struct Reference(crate::bitnet_cpp::Engine);

#[cfg(feature = "bitnet-cpp")]
impl Reference {
    /// Whether `--bitnet-cpp` can run: always with the feature.
    fn check() -> Result<()> {
        Ok(())
    }
    fn open(path: Option<&std::path::Path>) -> Result<Reference> {
        let path = path
            .ok_or_else(|| anyhow!("--bitnet-cpp needs the model as a file: pass -m MODEL.gguf"))?;
        Ok(Reference(crate::bitnet_cpp::Engine::load(path)?))
    }
    fn label() -> String {
        format!(
            "bitnet.cpp late-2024 ({})",
            compiler_short(crate::bitnet_cpp::COMPILER)
        )
    }
    fn linked() -> String {
        format!(
            "{}; compiled with {}",
            crate::bitnet_cpp::LINKED,
            compiler_short(crate::bitnet_cpp::COMPILER)
        )
    }
    fn time_prompt(&self, nt: usize, toks: &[u32], reps: usize) -> Result<Vec<f64>> {
        self.0.time_prompt(nt, toks, reps)
    }
    fn time_gen(&self, nt: usize, toks: &[u32], reps: usize) -> Result<Vec<f64>> {
        self.0.time_gen(nt, toks, reps)
    }
}

/// "clang 19.1.7" or "g++ 12.2.0" from build.rs's "path (`--version` line)".
#[cfg_attr(not(feature = "bitnet-cpp"), allow(dead_code))]
fn compiler_short(s: &str) -> String {
    let line = s
        .split_once(" (")
        .map(|x| x.1.strip_suffix(')').unwrap_or(x.1))
        .unwrap_or(s)
        .trim();
    let words: Vec<&str> = line.split_whitespace().collect();
    if let Some(i) = words.iter().position(|&w| w == "version") {
        if line.contains("clang") && i + 1 < words.len() {
            return format!("clang {}", words[i + 1]);
        }
    }
    match (words.first(), words.last()) {
        (Some(first), Some(last)) if words.len() > 1 => format!("{} {}", first, last),
        _ => line.to_string(),
    }
}

/// Stand-in for builds without the feature: `--bitnet-cpp` is an error.
#[cfg(not(feature = "bitnet-cpp"))]
struct Reference;

#[cfg(not(feature = "bitnet-cpp"))]
impl Reference {
    /// Whether `--bitnet-cpp` can run: never without the feature.
    fn check() -> Result<()> {
        bail!("--bitnet-cpp: this tern was built without bitnet.cpp; rebuild with `cargo build --release --features bitnet-cpp`")
    }
    fn open(_: Option<&std::path::Path>) -> Result<Reference> {
        Self::check().map(|()| Reference)
    }
    fn label() -> String {
        String::new()
    }
    fn linked() -> String {
        String::new()
    }
    fn time_prompt(&self, _: usize, _: &[u32], _: usize) -> Result<Vec<f64>> {
        unreachable!("Reference::open always fails without the feature")
    }
    fn time_gen(&self, _: usize, _: &[u32], _: usize) -> Result<Vec<f64>> {
        unreachable!("Reference::open always fails without the feature")
    }
}

/// Most repetitions `-r` asks for (each repetition's samples are kept).
pub const MAX_REPS: usize = 100_000;

/// The models `-m` names, in order: each occurrence of `-m`, and within
/// one a comma-separated list as llama-bench takes it (a value that is an
/// existing file is one model even with a comma in its name). None: the
/// built-in model.
///
/// Errors: an `-m` value that names no file (`-m ,`).
fn model_paths(values: &[PathBuf]) -> Result<Vec<Option<PathBuf>>> {
    let mut out = Vec::new();
    for v in values {
        let whole = v.exists();
        match v.to_str() {
            Some(s) if !whole && s.contains(',') => {
                let before = out.len();
                out.extend(
                    s.split(',')
                        .map(str::trim)
                        .filter(|x| !x.is_empty())
                        .map(|x| Some(PathBuf::from(x))),
                );
                if out.len() == before {
                    bail!("-m {}: no model file named", crate::untrusted::quoted(s));
                }
            }
            _ => out.push(Some(v.clone())),
        }
    }
    if out.is_empty() {
        out.push(None);
    }
    Ok(out)
}

/// Most models one `tern bench` times.
const MAX_MODELS: usize = 64;

/// What every model is timed with.
struct Plan<'a> {
    a: &'a Args,
    /// (n_prompt, n_gen, n_depth), one of the first two 0.
    tests: Vec<(usize, usize, usize)>,
    threads: Vec<usize>,
    pools: Vec<rayon::ThreadPool>,
    /// The buffer of the read-bandwidth measurements.
    bw_buf: &'a [u64],
}

/// One model's tests and what its summary lines need.
struct ModelRun {
    name: String,
    mtype: String,
    model_size: u64,
    n_params: u64,
    kernel: &'static str,
    /// Bytes of weights one generated token reads.
    bpt: u64,
    /// KV cache bytes of one position (keys and values of every layer).
    kv_per_pos: u64,
    records: Vec<Record>,
    /// (threads, GB/s): the better of the measurements before and after
    /// this model's tests.
    bandwidth: Vec<(usize, f64)>,
    /// bitnet.cpp ran beside tern.
    reference: bool,
}

impl ModelRun {
    fn bytes_of(&self, r: &Record) -> f64 {
        r.bytes_per_token(self.bpt, self.kv_per_pos)
    }
    fn bw_of(&self, nt: usize) -> f64 {
        self.bandwidth
            .iter()
            .find(|b| b.0 == nt)
            .map(|b| b.1)
            .unwrap_or(0.0)
    }
}

pub fn run(a: Args) -> Result<()> {
    let prompts = parse_lists("-p", &a.n_prompt, true)?;
    let gens = parse_lists("-n", &a.n_gen, true)?;
    let depths = parse_lists("-d", &a.n_depth, true)?;
    let mut pgs = Vec::new();
    for v in &a.pg {
        match parse_list("-pg", v, false)?[..] {
            [pp, tg] => pgs.push((pp, tg)),
            _ => bail!(
                "-pg {}: give two numbers, PP,TG",
                crate::untrusted::quoted(v)
            ),
        }
    }
    let threads = parse_threads(&a.threads)?;
    for &t in &threads {
        super::check_threads(t)?;
    }
    if !(1..=MAX_REPS).contains(&a.reps) {
        bail!("-r must be between 1 and {}", MAX_REPS);
    }
    let output = match a.output.as_str() {
        o @ ("md" | "json" | "jsonl" | "csv") => o,
        o => bail!(
            "-o {}: choose md, json, jsonl or csv",
            crate::untrusted::quoted(o)
        ),
    };
    if prompts.iter().chain(&gens).all(|&n| n == 0) && pgs.is_empty() {
        bail!("nothing to time: every -p and -n is 0");
    }
    if a.bitnet_cpp && !pgs.is_empty() {
        bail!("--bitnet-cpp times pp and tg tests only; drop -pg or --bitnet-cpp");
    }
    if !(1..=MAX_BW_MIB).contains(&a.bw_mib) {
        bail!("--bw-mib {}: choose 1 to {}", a.bw_mib, MAX_BW_MIB);
    }
    if a.bitnet_cpp && depths.iter().any(|&d| d > 0) {
        bail!("--bitnet-cpp times tests from an empty cache only; drop -d or --bitnet-cpp");
    }
    let models = model_paths(&a.model)?;
    if models.len() > MAX_MODELS {
        bail!("-m names {} models; at most {}", models.len(), MAX_MODELS);
    }
    // Every file is checked before any is timed, so a typo in the last
    // one does not cost the minutes of the first.
    for p in models.iter().flatten() {
        super::refuse_hf_path(p)?;
        std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?;
    }
    if a.bitnet_cpp {
        Reference::check()?;
    }
    let bw_mem = kernels::ops::bandwidth_buffer(a.bw_mib << 20);
    // pp tests, then tg tests, then pg tests, each at every depth.
    let tests: Vec<(usize, usize, usize)> = depths
        .iter()
        .flat_map(|&d| {
            prompts
                .iter()
                .filter(|&&p| p > 0)
                .map(move |&p| (p, 0, d))
                .chain(gens.iter().filter(|&&n| n > 0).map(move |&n| (0, n, d)))
                .chain(pgs.iter().map(move |&(p, n)| (p, n, d)))
        })
        .collect();
    let pools = threads
        .iter()
        .map(|&nt| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(nt)
                .build()
                .with_context(|| format!("cannot start {} threads", nt))
        })
        .collect::<Result<Vec<_>>>()?;
    let plan = Plan {
        a: &a,
        tests,
        threads,
        pools,
        bw_buf: bytemuck::cast_slice(bw_mem.bytes()),
    };
    // One model in memory at a time. A model that fails (a file that does
    // not load) ends the bench, after the figures of those before it.
    let mut runs = Vec::new();
    let mut failed = None;
    for p in &models {
        match bench_model(&plan, p.as_deref()) {
            Ok(r) => runs.push(r),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    if runs.is_empty() {
        return Err(failed.unwrap_or_else(|| anyhow!("no model was timed")));
    }
    match output {
        "json" => print_json(&runs),
        "jsonl" => print_jsonl(&runs),
        "csv" => print_csv(&runs)?,
        _ => print_md(&runs, a.bw_mib),
    }
    // After the figures, whatever the format.
    for r in &runs {
        for w in warnings(&r.records) {
            if runs.len() > 1 {
                eprintln!("tern bench: {}: {}", crate::untrusted::name(&r.name), w);
            } else {
                eprintln!("tern bench: {}", w);
            }
        }
    }
    failed.map_or(Ok(()), Err)
}

/// Time every test of `plan` on the model at `path` (None: the built-in
/// one), and with `--bitnet-cpp` on bitnet.cpp right after each.
fn bench_model(plan: &Plan, path: Option<&std::path::Path>) -> Result<ModelRun> {
    let a = plan.a;
    let bw_buf = plan.bw_buf;
    let reference = if a.bitnet_cpp {
        let r = Reference::open(path)?;
        eprintln!(
            "tern bench: bitnet.cpp side by side: {}",
            Reference::linked()
        );
        Some(r)
    } else {
        None
    };
    let model = load_model(path)?;
    let kern = model.kernel;
    let name = path
        .and_then(|p| p.file_name())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| super::DEFAULT_MODEL_NAME.to_string());
    let model_size: u64 = model.gguf.tensors.iter().map(|t| t.size).sum();
    let n_params = model.n_params();
    // Keys and values of every layer at one position, as the bench's cache
    // holds them.
    let kv_per_pos = crate::model::forward::KvCache::bytes(&model.hp, 1, KV_F32)
        .ok_or_else(|| anyhow!("the KV cache of one position does not fit 64 bits"))?;
    let cpu = cpu_name();
    let mtype = model_type(&model);
    eprintln!(
        "tern bench: {} ({}, {}, {} params), kernel {}, CPU {}",
        crate::untrusted::name(&name),
        mtype,
        size_label(model_size),
        params_label(n_params),
        kern.variant(),
        cpu
    );

    // The bandwidth is measured before and after the timed tests (the
    // summary lines) and beside every repetition of a test the bound
    // applies to (its % of bound), the best pass kept each time, so a busy
    // moment on a shared machine does not make the bound look lower than
    // it is.
    let mut records = Vec::new();
    let mut bandwidth = Vec::new();
    for (&nt, pool) in plan.threads.iter().zip(&plan.pools) {
        bandwidth.push((nt, pool.install(|| kernels::ops::read_bandwidth(bw_buf))));
    }
    for (&nt, pool) in plan.threads.iter().zip(&plan.pools) {
        // Each test runs on tern and then (with --bitnet-cpp) on bitnet.cpp,
        // so both see the same state of the machine.
        for &(n_prompt, n_gen, n_depth) in &plan.tests {
            // The context first: its size is checked before anything is
            // sized from the token count.
            let n_ctx = n_prompt
                .checked_add(n_gen)
                .and_then(|n| n.checked_add(n_depth))
                .ok_or_else(|| anyhow!("-d {} is too large", n_depth))?;
            let mut ctx = Context::try_new(&model, n_ctx, KV_F32)?;
            let all = bench_tokens(&model, n_ctx);
            let (depth, toks) = all.split_at(n_depth);
            let time = |ctx: &mut Context| match (n_prompt, n_gen) {
                (_, 0) => time_prompt(ctx, depth, toks),
                (0, _) => time_gen(ctx, depth, toks),
                _ => time_pg(ctx, depth, &toks[..n_prompt], &toks[n_prompt..]),
            };
            // Where the bound applies, the read bandwidth is measured
            // before every repetition and after the last: a shared
            // machine's rate drifts by 10–20% within a minute (the Intel
            // Xeon VM, 2026-12-01), so a rate measured minutes away from a
            // repetition says little about the bound it ran against.
            let bounded = bound_applies(n_prompt, n_gen);
            let bw_now = || pool.install(|| kernels::ops::read_bandwidth(bw_buf));
            let beside =
                |rates: &[f64]| -> Vec<f64> { rates.windows(2).map(|w| w[0].max(w[1])).collect() };
            let (samples, bounds) = pool.install(|| -> Result<(Vec<f64>, Vec<f64>)> {
                time(&mut ctx)?; // warm-up
                let mut samples = Vec::with_capacity(a.reps);
                let mut rates = Vec::with_capacity(a.reps + 1);
                for _ in 0..a.reps {
                    if bounded {
                        rates.push(kernels::ops::read_bandwidth(bw_buf));
                    }
                    samples.push(time(&mut ctx)?);
                }
                if bounded {
                    rates.push(kernels::ops::read_bandwidth(bw_buf));
                }
                Ok((samples, beside(&rates)))
            })?;
            let record = |engine, samples, bounds| Record {
                engine,
                threads: nt,
                n_prompt,
                n_gen,
                n_depth,
                samples,
                bounds,
            };
            records.push(record(Engine::Tern, samples, bounds));
            if let Some(r) = &reference {
                // bitnet.cpp times its repetitions in one call: its
                // repetitions share the rate measured around the call.
                let before = if bounded { bw_now() } else { 0.0 };
                let samples = if n_gen == 0 {
                    r.time_prompt(nt, toks, a.reps)?
                } else {
                    r.time_gen(nt, toks, a.reps)?
                };
                let bounds = if bounded {
                    vec![before.max(bw_now()); samples.len()]
                } else {
                    Vec::new()
                };
                records.push(record(Engine::BitnetCpp, samples, bounds));
            }
        }
    }
    for ((&nt, pool), b) in plan
        .threads
        .iter()
        .zip(&plan.pools)
        .zip(bandwidth.iter_mut())
    {
        let after = pool.install(|| kernels::ops::read_bandwidth(bw_buf));
        *b = (nt, b.1.max(after));
    }
    Ok(ModelRun {
        name,
        mtype,
        model_size,
        n_params,
        kernel: kern.variant(),
        bpt: model.bytes_per_token(),
        kv_per_pos,
        records,
        bandwidth,
        reference: reference.is_some(),
    })
}

/// Each record of every model as one JSON object with llama-bench's field
/// names (and tern's: `engine`, `kernel`, `bytes_per_token`,
/// `read_bw_gbs`; generation tests also `implied_gbs`, `bound_ts`,
/// `bound_frac`, `bound_gbs_per_rep`).
fn record_values(runs: &[ModelRun]) -> Vec<serde_json::Value> {
    let cpu = cpu_name();
    let mut out = Vec::new();
    for run in runs {
        for r in &run.records {
            let ts = r.ts();
            let (m, sd) = mean_sd(&ts);
            let ns: Vec<u64> = r.samples.iter().map(|s| (s * 1e9) as u64).collect();
            let (mns, sdns) = mean_sd(&r.samples.iter().map(|s| s * 1e9).collect::<Vec<_>>());
            let bytes = run.bytes_of(r);
            let stats = r.bound_stats(bytes);
            let bw = stats.map_or(run.bw_of(r.threads), |s| s.1);
            let (engine, kernel, n_batch) = match r.engine {
                Engine::Tern => ("tern", run.kernel, crate::model::forward::MAX_BATCH),
                Engine::BitnetCpp => ("bitnet.cpp", "ggml-i2_s", r.n_prompt.max(1)),
            };
            let mut v = serde_json::json!({
                "engine": engine,
                "engine_info": engine_label(run, r.engine),
                "model_filename": run.name,
                "model_type": run.mtype,
                "model_size": run.model_size,
                "model_n_params": run.n_params,
                "backends": "CPU",
                "cpu_info": cpu,
                "kernel": kernel,
                "n_threads": r.threads,
                "n_batch": n_batch,
                "type_k": "f16",
                "type_v": "f16",
                "n_prompt": r.n_prompt,
                "n_gen": r.n_gen,
                "n_depth": r.n_depth,
                "avg_ns": mns as u64,
                "stddev_ns": sdns as u64,
                "avg_ts": m,
                "stddev_ts": sd,
                "samples_ns": ns,
                "samples_ts": ts,
                "bytes_per_token": bytes.round() as u64,
                "read_bw_gbs": bw,
            });
            if let Some((implied, bound, frac)) = stats {
                v["implied_gbs"] = implied.into();
                v["bound_ts"] = (bound * 1e9 / bytes).into();
                v["bound_frac"] = frac.into();
                v["bound_gbs_per_rep"] = r.bounds.clone().into();
            }
            out.push(v);
        }
    }
    out
}

/// The records as one JSON array, an object a line (as llama-bench's `-o
/// json`).
fn print_json(runs: &[ModelRun]) {
    let lines: Vec<String> = record_values(runs)
        .iter()
        .map(|v| format!("  {v}"))
        .collect();
    println!("[\n{}\n]", lines.join(",\n"));
}

/// The records as JSON Lines: an object a line, no array (llama-bench's
/// `-o jsonl`).
fn print_jsonl(runs: &[ModelRun]) {
    for v in record_values(runs) {
        println!("{v}");
    }
}

/// The columns of `-o csv`: llama-bench's names for what both report,
/// then tern's (the bound's columns are empty for prompt tests).
const CSV_COLUMNS: &[&str] = &[
    "cpu_info",
    "backends",
    "model_filename",
    "model_type",
    "model_size",
    "model_n_params",
    "n_batch",
    "n_threads",
    "type_k",
    "type_v",
    "n_prompt",
    "n_gen",
    "n_depth",
    "avg_ns",
    "stddev_ns",
    "avg_ts",
    "stddev_ts",
    "engine",
    "engine_info",
    "kernel",
    "bytes_per_token",
    "read_bw_gbs",
    "implied_gbs",
    "bound_ts",
    "bound_frac",
];

/// The records as CSV with a header line (llama-bench's `-o csv`: one row
/// per test, strings quoted).
fn print_csv(runs: &[ModelRun]) -> Result<()> {
    let mut w = csv::WriterBuilder::new()
        .quote_style(csv::QuoteStyle::NonNumeric)
        .from_writer(std::io::stdout().lock());
    w.write_record(CSV_COLUMNS)?;
    for v in record_values(runs) {
        let row: Vec<String> = CSV_COLUMNS
            .iter()
            .map(|c| match &v[*c] {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => String::new(),
                other => other.to_string(),
            })
            .collect();
        w.write_record(&row)?;
    }
    w.flush()?;
    Ok(())
}

/// "tern avx2", or the bitnet.cpp that ran beside it.
fn engine_label(run: &ModelRun, e: Engine) -> String {
    match e {
        Engine::Tern => format!("tern {}", run.kernel),
        Engine::BitnetCpp => Reference::label(),
    }
}

/// One llama-bench style table of every model's records, then each
/// model's ratios, bytes per token and bandwidth lines.
fn print_md(runs: &[ModelRun], bw_mib: usize) {
    println!("| model | size | params | engine | threads | test | t/s | GB/s | % of bound |");
    println!("| ----- | ---: | -----: | ------ | ------: | ---: | --: | ---: | ---------: |");
    for run in runs {
        for r in &run.records {
            let (m, sd) = mean_sd(&r.ts());
            let (gbs, frac) = match r.bound_stats(run.bytes_of(r)) {
                Some((implied, _, frac)) => {
                    (format!("{:.2}", implied), format!("{:.0}%", 100.0 * frac))
                }
                None => ("-".into(), "-".into()),
            };
            println!(
                "| {} | {} | {} | {} | {} | {} | {:.2} ± {:.2} | {} | {} |",
                run.mtype,
                size_label(run.model_size),
                params_label(run.n_params),
                engine_label(run, r.engine),
                r.threads,
                r.name(),
                m,
                sd,
                gbs,
                frac
            );
        }
    }
    for run in runs {
        println!();
        if runs.len() > 1 {
            println!("{}:", crate::untrusted::name(&run.name));
        }
        summary_lines(run, bw_mib);
    }
}

/// A model's tern / bitnet.cpp ratios, bytes read per generated token and
/// the read bandwidth and bound of each thread count.
fn summary_lines(run: &ModelRun, bw_mib: usize) {
    let records = &run.records;
    let (bpt, kv_per_pos) = (run.bpt, run.kv_per_pos);
    for (t, r) in ratio_pairs(records) {
        let (mt, _) = mean_sd(&t.ts());
        let (mb, _) = mean_sd(&r.ts());
        println!(
            "{}, {} thread{}: tern {:.2} t/s vs bitnet.cpp {:.2} t/s → {:.2}×",
            r.name(),
            r.threads,
            if r.threads == 1 { "" } else { "s" },
            mt,
            mb,
            mt / mb
        );
    }
    if run.reference {
        println!(
            "bitnet.cpp here is the build linked into tern ({}), not today's tree",
            Reference::linked()
        );
    }
    // Each tg test once (its bytes do not depend on the threads).
    let mut per_test: Vec<String> = Vec::new();
    for r in records.iter().filter(|r| r.has_bound()) {
        let t = format!("{} {:.3} GB", r.name(), run.bytes_of(r) / 1e9);
        if !per_test.contains(&t) {
            per_test.push(t);
        }
    }
    println!(
        "bytes read per generated token: {:.3} GB of weights (ternary projections + output head) + {:.1} KB of KV cache per position attended{}",
        bpt as f64 / 1e9,
        kv_per_pos as f64 / 1e3,
        if per_test.is_empty() {
            String::new()
        } else {
            format!(" (mean per token: {})", per_test.join(", "))
        }
    );
    for &(nt, bw) in &run.bandwidth {
        let beside: Vec<f64> = records
            .iter()
            .filter(|r| r.threads == nt && r.has_bound())
            .flat_map(|r| r.bounds.iter().copied())
            .collect();
        let range = match (
            beside.iter().copied().reduce(f64::min),
            beside.iter().copied().reduce(f64::max),
        ) {
            (Some(lo), Some(hi)) => format!(
                "; beside the tg repetitions {:.2}–{:.2} GB/s, what each repetition's % of bound is taken against",
                lo, hi
            ),
            _ => String::new(),
        };
        println!(
            "read bandwidth, {} thread{}: {:.2} GB/s before and after the tests (streaming sum over {} MiB of huge pages) → bound {:.2} tokens/s for the weights alone{}",
            nt,
            if nt == 1 { "" } else { "s" },
            bw,
            bw_mib,
            bw * 1e9 / bpt as f64,
            range
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_bench_units() {
        assert_eq!(size_label(2_904_424), "2.77 MiB");
        assert_eq!(size_label(1_264_893_952), "1.18 GiB");
        assert_eq!(params_label(3_740_000), "3.74 M");
        assert_eq!(params_label(2_412_000_000), "2.41 B");
    }

    #[test]
    fn spread_and_ratio_warnings() {
        let rec = |engine, samples: &[f64]| Record {
            engine,
            threads: 2,
            n_prompt: 0,
            n_gen: 16,
            n_depth: 0,
            samples: samples.to_vec(),
            bounds: Vec::new(),
        };
        let steady = [1.0, 1.01, 0.99];
        assert!(
            warnings(&[rec(Engine::Tern, &steady), rec(Engine::BitnetCpp, &steady)]).is_empty()
        );
        let w = warnings(&[rec(Engine::Tern, &[1.0, 2.0, 1.0])]);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("varies by"), "{w:?}");
        // bitnet.cpp taking 10× as long: tern / bitnet.cpp = 10×.
        let w = warnings(&[
            rec(Engine::Tern, &steady),
            rec(Engine::BitnetCpp, &[10.0, 10.1, 9.9]),
        ]);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("implausible"), "{w:?}");
    }

    /// One tern repetition of a test on one thread.
    fn one_rep(n_prompt: usize, n_gen: usize, n_depth: usize) -> Record {
        Record {
            engine: Engine::Tern,
            threads: 1,
            n_prompt,
            n_gen,
            n_depth,
            samples: vec![1.0],
            bounds: vec![10.0],
        }
    }

    #[test]
    fn test_names_carry_the_depth() {
        let rec = one_rep;
        assert_eq!(rec(512, 0, 0).name(), "pp512");
        assert_eq!(rec(0, 128, 0).name(), "tg128");
        assert_eq!(rec(0, 128, 4096).name(), "tg128 @ d4096");
        assert_eq!(rec(512, 0, 1024).name(), "pp512 @ d1024");
    }

    /// Each repetition is set against the rate measured beside it: two
    /// repetitions at the same speed, one beside a slow measurement and one
    /// beside a fast one, are at different fractions of their bounds; a
    /// bound at a depth too; none for prompts, or without one rate per
    /// repetition.
    #[test]
    fn each_repetition_against_its_own_bound() {
        let rec = |n_gen, n_depth, bounds: Vec<f64>| Record {
            engine: Engine::Tern,
            threads: 2,
            n_prompt: 0,
            n_gen,
            n_depth,
            // 10 tokens in 1 s and in 0.5 s: 10 and 20 t/s.
            samples: vec![1.0, 0.5],
            bounds,
        };
        // 1 GB a token: 10 and 20 GB/s against 20 and 25 GB/s.
        let (implied, bound, frac) = rec(10, 0, vec![20.0, 25.0]).bound_stats(1e9).unwrap();
        assert!((implied - 15.0).abs() < 1e-9, "{implied}");
        assert!((bound - 22.5).abs() < 1e-9, "{bound}");
        assert!((frac - (0.5 + 0.8) / 2.0).abs() < 1e-9, "{frac}");
        assert!(rec(10, 64, vec![20.0, 25.0]).bound_stats(1.0).is_some());
        assert!(rec(0, 0, vec![20.0, 25.0]).bound_stats(1.0).is_none());
        assert!(rec(10, 0, vec![20.0]).bound_stats(1.0).is_none());
        assert!(rec(10, 0, vec![20.0, 0.0]).bound_stats(1.0).is_none());
    }

    /// A tg token reads the weights and the cache positions it attends:
    /// from an empty cache, tokens at positions 0..4 read 1, 2, 3, 4
    /// positions (2.5 on average); at depth 100, 101..104 (102.5). A pp
    /// test counts the weights alone.
    #[test]
    fn tg_tokens_read_the_cache_they_attend() {
        let rec = one_rep;
        assert_eq!(rec(0, 4, 0).bytes_per_token(1000, 10), 1025.0);
        assert_eq!(rec(0, 4, 100).bytes_per_token(1000, 10), 2025.0);
        assert_eq!(rec(0, 1, 0).bytes_per_token(1000, 0), 1000.0);
        assert_eq!(rec(512, 0, 0).bytes_per_token(1000, 10), 1000.0);
    }

    #[test]
    fn compiler_names() {
        assert_eq!(
            compiler_short("clang++-19 (Debian clang version 19.1.7 (3~deb12u1))"),
            "clang 19.1.7"
        );
        assert_eq!(
            compiler_short("g++ (g++ (Debian 12.2.0-14+deb12u1) 12.2.0)"),
            "g++ 12.2.0"
        );
    }
}
