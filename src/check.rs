//! `tern check`: compare a model's logits with a reference, prompt by prompt.
//!
//! A *reference bundle* is a directory holding, for every prompt `<p>`:
//! - `<p>.tokens.json`: `{"text": …, "tokens": [ids, BOS included], "vocab": N}`
//! - `<p>.logits.f32`: little-endian f32, positions × vocab, the logits of
//!   every prompt position computed in one batch;
//!
//! and optionally `greedy.json`: `{"<p>": [ids]}`, the greedy continuation
//! (argmax, KV cache, not stopping at end-of-generation) after the prompt.
//!
//! Anything that produces logits for a token sequence is a [`LogitSource`]:
//! tern's own runtime ([`TernSource`]) is the one under test; a live engine
//! (bitnet.cpp, behind the `bitnet-cpp` cargo feature) can stand in for the
//! stored reference by turning its [`Evaluation`]s into [`RefPrompt`]s.

use crate::gguf::writer::AtomicFile;
use crate::metrics::{compare, Agreement, Thresholds};
use crate::model::sampling::argmax;
use crate::model::{Context as ModelContext, Model};
use anyhow::{anyhow, bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Greedy tokens generated after each prompt (what the vendored references use).
pub const GREEDY_TOKENS: usize = 32;

/// Whether this build can run bitnet.cpp's engine in-process (`--bitnet-cpp`).
pub const BITNET_CPP: bool = cfg!(feature = "bitnet-cpp");

/// The message for `--bitnet-cpp` in a build without the feature.
pub const NO_BITNET_CPP: &str = "this tern was built without the `bitnet-cpp` feature, so --bitnet-cpp is not available (rebuild with `cargo build --release --features bitnet-cpp`)";

/// bitnet.cpp's own engine loaded with `model`, as a logit source. The
/// `bitnet-cpp` feature brings the crate module `bitnet_cpp` (the FFI to
/// bitnet.cpp's `llama.h`), whose `open` must evaluate like [`TernSource`]:
/// all prompt tokens in one decode with every position's logits, then
/// greedy tokens with the KV cache.
#[cfg(feature = "bitnet-cpp")]
pub fn bitnet_cpp_source(model: &Path) -> Result<Box<dyn LogitSource>> {
    crate::bitnet_cpp::open(model)
}

/// bitnet.cpp's own engine loaded with `model`, as a logit source: not in
/// this build.
#[cfg(not(feature = "bitnet-cpp"))]
pub fn bitnet_cpp_source(_model: &Path) -> Result<Box<dyn LogitSource>> {
    bail!("{}", NO_BITNET_CPP)
}

/// What a source computes for one prompt.
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    /// Logits of every prompt position, positions × vocab, one batch.
    pub logits: Vec<f32>,
    /// Greedy continuation after the prompt.
    pub greedy: Vec<u32>,
}

/// Something that turns token sequences into logits.
pub trait LogitSource {
    /// A short name for reports ("tern", "bitnet.cpp").
    fn label(&self) -> String;
    /// Vocabulary size: the width of every logit row.
    fn n_vocab(&self) -> usize;
    /// Evaluate `tokens` from a fresh state: the logits of every position
    /// in one batch, then `n_greedy` greedy tokens with the KV cache (not
    /// stopping at end-of-generation).
    fn evaluate(&mut self, tokens: &[u32], n_greedy: usize) -> Result<Evaluation>;
}

/// tern's own runtime as a logit source.
pub struct TernSource<'m> {
    pub model: &'m Model,
    /// Keep the KV cache in f32 (default f16, as bitnet.cpp).
    pub kv_f32: bool,
}

impl<'m> TernSource<'m> {
    pub fn new(model: &'m Model, kv_f32: bool) -> TernSource<'m> {
        TernSource { model, kv_f32 }
    }
}

impl LogitSource for TernSource<'_> {
    fn label(&self) -> String {
        "tern".to_string()
    }

    fn n_vocab(&self) -> usize {
        self.model.hp.n_vocab
    }

    fn evaluate(&mut self, tokens: &[u32], n_greedy: usize) -> Result<Evaluation> {
        if tokens.is_empty() {
            bail!("no tokens to evaluate");
        }
        let nv = self.model.hp.n_vocab;
        let mut ctx = ModelContext::try_new(self.model, tokens.len() + n_greedy, self.kv_f32)?;
        let logits = ctx.eval(tokens, true)?;
        let mut greedy = Vec::with_capacity(n_greedy);
        let mut row = logits[logits.len() - nv..].to_vec();
        for i in 0..n_greedy {
            let next = argmax(&row);
            greedy.push(next);
            if i + 1 < n_greedy {
                row = ctx.eval(&[next], false)?;
            }
        }
        Ok(Evaluation { logits, greedy })
    }
}

/// One prompt of a reference: its tokens and the reference logits.
#[derive(Debug, Clone)]
pub struct RefPrompt {
    pub name: String,
    /// The prompt text, when known (informational: the tokens are checked).
    pub text: Option<String>,
    pub tokens: Vec<u32>,
    pub vocab: usize,
    /// positions × vocab.
    pub logits: Vec<f32>,
    pub greedy: Option<Vec<u32>>,
}

impl RefPrompt {
    /// A reference prompt from a live source's evaluation.
    pub fn from_evaluation(
        name: &str,
        text: Option<String>,
        tokens: Vec<u32>,
        vocab: usize,
        ev: Evaluation,
    ) -> RefPrompt {
        RefPrompt {
            name: name.to_string(),
            text,
            tokens,
            vocab,
            logits: ev.logits,
            greedy: Some(ev.greedy),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct TokensJson {
    #[serde(default)]
    text: Option<String>,
    tokens: Vec<u32>,
    vocab: usize,
    /// GGML type of the output head that made the logits (written by
    /// `--dump`; absent in the vendored bundles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    head_type: Option<String>,
}

/// A reference bundle loaded from disk.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    /// Sorted by name.
    pub prompts: Vec<RefPrompt>,
    /// The output head's type that made the logits, when the bundle says.
    pub head_type: Option<String>,
}

/// Prompt names become file names: keep them plain.
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.starts_with('.')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        bail!(
            "prompt name {:?} is not usable as a file name (letters, digits, '_', '-', '.')",
            name
        );
    }
    if name == "greedy" {
        bail!("prompt name \"greedy\" is reserved (greedy.json)");
    }
    Ok(())
}

impl Bundle {
    pub fn load(dir: &Path) -> Result<Bundle> {
        let rd = std::fs::read_dir(dir)
            .map_err(|e| anyhow!("cannot read reference directory {}: {}", dir.display(), e))?;
        let mut names = Vec::new();
        for entry in rd {
            let entry = entry
                .map_err(|e| anyhow!("cannot read reference directory {}: {}", dir.display(), e))?;
            let fname = entry.file_name();
            if let Some(stem) = fname.to_str().and_then(|s| s.strip_suffix(".tokens.json")) {
                names.push(stem.to_string());
            }
        }
        names.sort();
        if names.is_empty() {
            bail!(
                "{} is not a reference bundle: it holds no <prompt>.tokens.json files",
                dir.display()
            );
        }
        let greedy_path = dir.join("greedy.json");
        let greedy: BTreeMap<String, Vec<u32>> = if greedy_path.exists() {
            let s = std::fs::read_to_string(&greedy_path)
                .map_err(|e| anyhow!("cannot read {}: {}", greedy_path.display(), e))?;
            serde_json::from_str(&s).map_err(|e| {
                anyhow!(
                    "{} is not a map of prompt names to token id lists: {}",
                    greedy_path.display(),
                    e
                )
            })?
        } else {
            BTreeMap::new()
        };
        let mut prompts = Vec::with_capacity(names.len());
        let mut head_type = None;
        for name in names {
            let tp = dir.join(format!("{}.tokens.json", name));
            let s = std::fs::read_to_string(&tp)
                .map_err(|e| anyhow!("cannot read {}: {}", tp.display(), e))?;
            let tj: TokensJson = serde_json::from_str(&s).map_err(|e| {
                anyhow!(
                    "{} is not {{\"text\", \"tokens\", \"vocab\"}} JSON: {}",
                    tp.display(),
                    e
                )
            })?;
            if tj.tokens.is_empty() {
                bail!("{} holds no tokens", tp.display());
            }
            if tj.vocab == 0 {
                bail!("{} gives a vocabulary of 0", tp.display());
            }
            if let Some(&t) = tj.tokens.iter().find(|&&t| t as usize >= tj.vocab) {
                bail!(
                    "{}: token id {} is outside its own vocabulary of {}",
                    tp.display(),
                    t,
                    tj.vocab
                );
            }
            let lp = dir.join(format!("{}.logits.f32", name));
            if !lp.exists() {
                bail!("{} has no matching {}", tp.display(), lp.display());
            }
            let logits = crate::metrics::read_f32_file(&lp)?;
            let Some(want) = tj.tokens.len().checked_mul(tj.vocab) else {
                bail!(
                    "{}: {} positions × vocab {} overflows",
                    tp.display(),
                    tj.tokens.len(),
                    tj.vocab
                );
            };
            if logits.len() != want {
                bail!(
                    "{} holds {} values, expected {} positions × {} vocab = {}",
                    lp.display(),
                    logits.len(),
                    tj.tokens.len(),
                    tj.vocab,
                    want
                );
            }
            head_type = head_type.or(tj.head_type);
            prompts.push(RefPrompt {
                greedy: greedy.get(&name).cloned(),
                name,
                text: tj.text,
                tokens: tj.tokens,
                vocab: tj.vocab,
                logits,
            });
        }
        Ok(Bundle {
            dir: dir.to_path_buf(),
            prompts,
            head_type,
        })
    }
}

/// The GGML type name of `model`'s output head (the tied embedding when
/// there is no `output.weight`).
pub fn head_type(model: &Model) -> &'static str {
    model
        .gguf
        .tensor("output.weight")
        .or_else(|| model.gguf.tensor("token_embd.weight"))
        .map_or("?", |t| t.ty.name())
}

/// A note when the model's head type differs from the reference's (or the
/// reference does not say and the model's head is quantized): the
/// thresholds assume matching types.
pub fn head_type_note(model_head: &str, reference_head: Option<&str>) -> Option<String> {
    let float = |t: &str| matches!(t, "F32" | "F16" | "BF16");
    match reference_head {
        Some(r) if r != model_head => Some(format!(
            "the model's output head is {} but the reference's is {}: the thresholds assume matching types, so expect larger differences",
            model_head,
            crate::untrusted::name(r)
        )),
        None if !float(model_head) => Some(format!(
            "the model's output head is {} and the reference does not record its own (the vendored bundles come from float heads): the thresholds assume matching types, so expect larger differences",
            model_head
        )),
        _ => None,
    }
}

/// Pass/fail rules.
#[derive(Debug, Clone, Copy, Default)]
pub struct Criteria {
    pub thresholds: Thresholds,
    /// Minimum greedy agreement (fraction of matching ids); `None`: greedy
    /// agreement is reported only.
    pub min_greedy: Option<f64>,
}

/// Agreement of two greedy continuations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GreedyAgreement {
    /// Positions where the ids match.
    pub matching: usize,
    /// Reference length.
    pub len: usize,
    /// Length of the common prefix.
    pub prefix: usize,
}

impl GreedyAgreement {
    pub fn new(reference: &[u32], test: &[u32]) -> GreedyAgreement {
        let matching = reference.iter().zip(test).filter(|(a, b)| a == b).count();
        let prefix = reference
            .iter()
            .zip(test)
            .take_while(|(a, b)| a == b)
            .count();
        GreedyAgreement {
            matching,
            len: reference.len(),
            prefix,
        }
    }

    pub fn fraction(&self) -> f64 {
        if self.len == 0 {
            1.0
        } else {
            self.matching as f64 / self.len as f64
        }
    }
}

/// The result for one prompt.
#[derive(Debug, Clone)]
pub struct PromptReport {
    pub name: String,
    pub agreement: Agreement,
    pub greedy: Option<GreedyAgreement>,
    /// Why it failed, one entry per broken rule; empty: it passed.
    pub failures: Vec<String>,
}

impl PromptReport {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Check `test` against one reference prompt: evaluate the prompt's tokens,
/// compare logits (and the greedy continuation when the reference has one).
/// Returns the report and the test source's evaluation (for `--dump`).
pub fn check_prompt(
    test: &mut dyn LogitSource,
    reference: &RefPrompt,
    criteria: &Criteria,
) -> Result<(PromptReport, Evaluation)> {
    let nv = test.n_vocab();
    if reference.vocab != nv {
        bail!(
            "vocabulary mismatch: reference prompt {:?} has {} logits per position, the model has a vocabulary of {} (is this the reference of another model?)",
            reference.name,
            reference.vocab,
            nv
        );
    }
    if reference.logits.len() != reference.tokens.len() * nv {
        bail!(
            "reference prompt {:?}: {} logits for {} positions × {} vocab",
            reference.name,
            reference.logits.len(),
            reference.tokens.len(),
            nv
        );
    }
    let n_greedy = reference.greedy.as_ref().map_or(GREEDY_TOKENS, |g| g.len());
    let ev = test
        .evaluate(&reference.tokens, n_greedy)
        .with_context(|| format!("{} on prompt {:?}", test.label(), reference.name))?;
    if ev.logits.len() != reference.logits.len() {
        bail!(
            "{} returned {} logits for prompt {:?}, expected {}",
            test.label(),
            ev.logits.len(),
            reference.name,
            reference.logits.len()
        );
    }
    let agreement = compare(&reference.logits, &ev.logits, nv);
    let greedy = reference
        .greedy
        .as_ref()
        .map(|g| GreedyAgreement::new(g, &ev.greedy));
    let t = &criteria.thresholds;
    let mut failures = Vec::new();
    // NaN fails every rule.
    let over = |x: f64, max: f64| x.is_nan() || x > max;
    let under = |x: f64, min: f64| x.is_nan() || x < min;
    if over(agreement.max_rel_rms, t.max_rel_rms) {
        failures.push(format!(
            "rel RMS {:.4} > {}",
            agreement.max_rel_rms, t.max_rel_rms
        ));
    }
    if over(agreement.mean_kl, t.mean_kl) {
        failures.push(format!("mean KL {:.5} > {}", agreement.mean_kl, t.mean_kl));
    }
    if under(agreement.top1, t.min_top1) {
        failures.push(format!("top-1 {:.3} < {}", agreement.top1, t.min_top1));
    }
    if let Some(min) = criteria.min_greedy {
        match &greedy {
            Some(g) if g.fraction() >= min => {}
            Some(g) => failures.push(format!("greedy {:.3} < {}", g.fraction(), min)),
            None => failures.push(format!("no greedy reference for --min-greedy {}", min)),
        }
    }
    Ok((
        PromptReport {
            name: reference.name.clone(),
            agreement,
            greedy,
            failures,
        },
        ev,
    ))
}

/// The report table's header line.
pub fn table_header(name_width: usize) -> String {
    format!(
        "{:<w$}  {:>5}  {:>9}  {:>9}  {:>9}  {:>9}  {:>6}  {:>15}  {}",
        "prompt",
        "pos",
        "relRMSmax",
        "relRMSavg",
        "KL mean",
        "KL max",
        "top-1",
        "greedy (pfx)",
        "result",
        w = name_width
    )
}

/// One row of the report table.
pub fn table_row(r: &PromptReport, name_width: usize) -> String {
    let a = &r.agreement;
    let greedy = match &r.greedy {
        Some(g) => format!("{}/{} ({})", g.matching, g.len, g.prefix),
        None => "-".to_string(),
    };
    format!(
        "{:<w$}  {:>5}  {:>9.5}  {:>9.5}  {:>9.6}  {:>9.6}  {:>6.3}  {:>15}  {}",
        r.name,
        a.positions,
        a.max_rel_rms,
        a.mean_rel_rms,
        a.mean_kl,
        a.max_kl,
        a.top1,
        greedy,
        if r.passed() { "PASS" } else { "FAIL" },
        w = name_width
    )
}

/// The closing one-line verdict.
pub fn verdict(reports: &[PromptReport]) -> String {
    let failed = reports.iter().filter(|r| !r.passed()).count();
    if failed == 0 {
        format!("PASS: {}/{} prompts", reports.len(), reports.len())
    } else {
        format!("FAIL: {}/{} prompts failed", failed, reports.len())
    }
}

/// One prompt to write into a bundle.
pub struct DumpPrompt<'a> {
    pub name: &'a str,
    /// GGML type name of the model's output head (recorded in the bundle).
    pub head_type: &'a str,
    pub text: Option<&'a str>,
    pub tokens: &'a [u32],
    pub vocab: usize,
    pub eval: &'a Evaluation,
}

/// The files a dump of `names` into `dir` writes.
pub fn dump_paths(dir: &Path, names: &[&str]) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = names
        .iter()
        .flat_map(|n| {
            [
                dir.join(format!("{}.tokens.json", n)),
                dir.join(format!("{}.logits.f32", n)),
            ]
        })
        .collect();
    v.push(dir.join("greedy.json"));
    v
}

fn write_atomic(path: &Path, bytes: &[u8], force: bool) -> Result<()> {
    let mut f = AtomicFile::create(path, force)?;
    f.file()
        .write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.commit()
}

/// Write prompts as a reference bundle (each file atomically). Refuses to
/// overwrite existing files unless `force`; nothing is written when any
/// target exists.
pub fn write_bundle(dir: &Path, prompts: &[DumpPrompt], force: bool) -> Result<()> {
    let names: Vec<&str> = prompts.iter().map(|p| p.name).collect();
    for n in &names {
        validate_name(n)?;
    }
    let mut seen = std::collections::HashSet::new();
    for n in &names {
        if !seen.insert(*n) {
            bail!("prompt name {:?} is given twice", n);
        }
    }
    for p in prompts {
        if p.eval.logits.len() != p.tokens.len() * p.vocab {
            bail!(
                "internal error: prompt {:?} has {} logits for {} × {}",
                p.name,
                p.eval.logits.len(),
                p.tokens.len(),
                p.vocab
            );
        }
    }
    if dir.exists() && !dir.is_dir() {
        bail!("--dump {} exists and is not a directory", dir.display());
    }
    if !force {
        if let Some(p) = dump_paths(dir, &names).iter().find(|p| p.exists()) {
            bail!("{} already exists (use --force to overwrite)", p.display());
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut greedy = BTreeMap::new();
    for p in prompts {
        let tj = TokensJson {
            text: p.text.map(str::to_string),
            tokens: p.tokens.to_vec(),
            vocab: p.vocab,
            head_type: Some(p.head_type.to_string()),
        };
        let json = serde_json::to_string(&tj).context("cannot serialize tokens.json")?;
        write_atomic(
            &dir.join(format!("{}.tokens.json", p.name)),
            json.as_bytes(),
            force,
        )?;
        let mut buf = Vec::with_capacity(p.eval.logits.len() * 4);
        for x in &p.eval.logits {
            buf.extend_from_slice(&x.to_le_bytes());
        }
        write_atomic(&dir.join(format!("{}.logits.f32", p.name)), &buf, force)?;
        greedy.insert(p.name.to_string(), p.eval.greedy.clone());
    }
    let json = serde_json::to_string(&greedy).context("cannot serialize greedy.json")?;
    write_atomic(&dir.join("greedy.json"), json.as_bytes(), force)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source that replays fixed logits.
    struct Fixed {
        vocab: usize,
        ev: Evaluation,
    }

    impl LogitSource for Fixed {
        fn label(&self) -> String {
            "fixed".into()
        }
        fn n_vocab(&self) -> usize {
            self.vocab
        }
        fn evaluate(&mut self, _tokens: &[u32], n: usize) -> Result<Evaluation> {
            let mut ev = self.ev.clone();
            ev.greedy.truncate(n);
            Ok(ev)
        }
    }

    fn reference() -> RefPrompt {
        RefPrompt {
            name: "p".into(),
            text: None,
            tokens: vec![0, 1],
            vocab: 3,
            logits: vec![1.0, 2.0, 3.0, 3.0, 2.0, 1.0],
            greedy: Some(vec![2, 0, 1, 1]),
        }
    }

    #[test]
    fn greedy_agreement() {
        let g = GreedyAgreement::new(&[1, 2, 3, 4], &[1, 2, 0, 4]);
        assert_eq!((g.matching, g.len, g.prefix), (3, 4, 2));
        assert_eq!(g.fraction(), 0.75);
    }

    #[test]
    fn exact_and_wrong() {
        let r = reference();
        let crit = Criteria::default();
        let mut same = Fixed {
            vocab: 3,
            ev: Evaluation {
                logits: r.logits.clone(),
                greedy: vec![2, 0, 9, 1],
            },
        };
        let (rep, _) = check_prompt(&mut same, &r, &crit).unwrap();
        assert!(rep.passed(), "{:?}", rep.failures);
        assert_eq!(rep.agreement.max_rel_rms, 0.0);
        assert_eq!(rep.greedy.unwrap().prefix, 2);
        // Greedy becomes a rule only on request.
        let strict = Criteria {
            min_greedy: Some(0.9),
            ..crit
        };
        let (rep, _) = check_prompt(&mut same, &r, &strict).unwrap();
        assert!(!rep.passed());

        let mut wrong = Fixed {
            vocab: 3,
            ev: Evaluation {
                logits: vec![3.0, 2.0, 1.0, 1.0, 2.0, 3.0],
                greedy: vec![2, 0, 1, 1],
            },
        };
        let (rep, _) = check_prompt(&mut wrong, &r, &crit).unwrap();
        assert_eq!(rep.failures.len(), 3, "{:?}", rep.failures);
        assert_eq!(verdict(&[rep]), "FAIL: 1/1 prompts failed");

        let mut nan = Fixed {
            vocab: 3,
            ev: Evaluation {
                logits: vec![f32::NAN; 6],
                greedy: vec![],
            },
        };
        let (rep, _) = check_prompt(&mut nan, &r, &crit).unwrap();
        assert!(!rep.passed());
    }

    #[test]
    fn vocab_mismatch_is_an_error() {
        let r = reference();
        let mut other = Fixed {
            vocab: 4,
            ev: Evaluation::default(),
        };
        let e = check_prompt(&mut other, &r, &Criteria::default()).unwrap_err();
        assert!(format!("{:#}", e).contains("vocabulary mismatch"));
    }

    #[test]
    fn names() {
        assert!(validate_name("prompt1").is_ok());
        assert!(validate_name("a-b_c.d").is_ok());
        for bad in ["", ".x", "a/b", "greedy", "a b"] {
            assert!(validate_name(bad).is_err(), "{:?}", bad);
        }
    }
}
