//! A ternary model loaded from GGUF: hyper-parameters, weights re-packed for
//! the kernels, tokenizer; plus the forward pass (`forward`) and sampling.
//! The graph comes from the architecture's row in [`crate::arch::ARCHS`].

pub mod forward;
pub mod generate;
pub mod hparams;
pub mod sampling;

pub use forward::{Batch, Context, KvCache};
pub use hparams::Hparams;

use crate::gguf::{GgufFile, TensorInfo};
use crate::kernels::weights::{self, ActQuant, Source, Weight};
use crate::kernels::{self, Kernel};
use crate::quant::GgmlType;
use crate::tokenizer::{Tokenizer, VocabSpec};
use anyhow::{anyhow, bail, Context as _, Result};
use std::path::Path;

/// The trained BitNet chat format (from the HF tokenizer_config of 2B-4T).
pub const BITNET_CHAT_TEMPLATE: &str = "{% for message in messages %}{% if loop.first %}{{ bos_token }}{% endif %}{% if message['role'] == 'system' %}{{ 'System: ' + message['content'] + '<|eot_id|>' }}{% elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '<|eot_id|>' }}{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + '<|eot_id|>' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}";

/// The chat template used when a file has none (or only the official GGUF's
/// placeholder): the trained BitNet format when the vocabulary has
/// `<|eot_id|>`; otherwise the same format with each turn ended by the
/// vocabulary's own EOS (`</s>` in SentencePiece base models such as
/// 1bitLLM's), so that the end of a turn is a real token the model can emit.
pub fn default_chat_template(tok: &Tokenizer) -> String {
    if tok.find_token("<|eot_id|>").is_some() {
        BITNET_CHAT_TEMPLATE.to_string()
    } else {
        BITNET_CHAT_TEMPLATE.replace("'<|eot_id|>'", "eos_token")
    }
}

/// The built-in model: a small trained BitNet b1.58, 4 layers, hidden 256
/// (tern-shakespeare, see models/PROVENANCE.md), carried in the binary.
pub static BUILTIN_GGUF: &[u8] = include_bytes!("../../models/tern-shakespeare-i2_s.gguf");
/// The file name the built-in model was made from.
pub const BUILTIN_NAME: &str = "tern-shakespeare-i2_s.gguf";

/// One projection's input RMSNorm weights (`use_rms_norm` checkpoints:
/// transformers' BitLinear normalizes its own input), per projection.
pub struct InputNorms {
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub o: Vec<f32>,
    pub gate: Vec<f32>,
    pub up: Vec<f32>,
    pub down: Vec<f32>,
}

pub struct Layer {
    pub attn_norm: Vec<f32>,
    pub ffn_norm: Vec<f32>,
    /// The BitNet sub-norms (`None` for graphs without them, e.g. llama).
    pub attn_sub_norm: Option<Vec<f32>>,
    pub ffn_sub_norm: Option<Vec<f32>>,
    pub input_norms: Option<InputNorms>,
    pub wq: Weight,
    pub wk: Weight,
    pub wv: Weight,
    pub wo: Weight,
    pub wgate: Weight,
    pub wup: Weight,
    pub wdown: Weight,
}

pub struct Model {
    pub gguf: GgufFile,
    pub hp: Hparams,
    /// Token embeddings (`n_vocab` rows of `n_embd`), looked up by row.
    pub tok_embd: Weight,
    /// The output head; `None` when it is tied to the embedding. A ternary
    /// `output.weight` (a checkpoint whose `modules_to_not_convert` leaves
    /// `lm_head` converted) is a BitLinear, with int8 activations.
    pub output: Option<Weight>,
    pub output_norm: Vec<f32>,
    pub layers: Vec<Layer>,
    pub tokenizer: Tokenizer,
    pub chat_template: String,
    pub kernel: &'static Kernel,
    pub warnings: Vec<String>,
}

fn f32_data(g: &GgufFile, t: &TensorInfo) -> Result<Vec<f32>> {
    let n = usize::try_from(t.n_elements())
        .map_err(|_| anyhow!("tensor {}: too many elements", t.name))?;
    crate::quant::dequantize(t.ty, g.tensor_data(t), n)
        .with_context(|| format!("tensor {}", t.name))
}

/// What a projection tensor holds, for a graph that runs only ternary ones.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ProjNature {
    /// A ternary type, or a float tensor holding only `{-s, 0, +s}`.
    Ternary,
    /// A float tensor with other values: a non-ternary model.
    Float,
    /// A block-quantized tensor (Q4_0, Q8_0, Q6_K): the type llama-quantize
    /// falls back to for rows a ternary type cannot hold.
    Fallback,
}

impl Model {
    pub fn load(path: &Path) -> Result<Model> {
        let gguf = GgufFile::open(path)?;
        Self::from_gguf(gguf).with_context(|| format!("{}", path.display()))
    }

    /// The built-in model ([`BUILTIN_GGUF`]).
    pub fn builtin() -> Result<Model> {
        Self::from_gguf(GgufFile::from_bytes(BUILTIN_GGUF.to_vec())?)
    }

    pub fn from_gguf(gguf: GgufFile) -> Result<Model> {
        let mut warnings = Vec::new();
        // Tokenizer first: the vocabulary size is one of the hyper-parameters.
        let spec = vocab_spec(&gguf, &mut warnings)?;
        let n_vocab = spec.tokens.len();
        let hp = Hparams::from_gguf(&gguf, n_vocab)?;
        // Every tensor the counts imply, before anything is sized from them.
        hp.check_tensors(&gguf)?;
        let tokenizer = Tokenizer::from_spec(&spec)?;
        let (n_embd, n_ff, n_layer) = (hp.n_embd, hp.n_ff, hp.n_layer);
        let (arch, graph) = (hp.arch.clone(), hp.graph);

        let kernel = kernels::active()?;
        let get = |name: &str, dims: &[usize]| -> Result<&TensorInfo> {
            let dims: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
            hparams::tensor_with_dims(&gguf, name, &dims)
        };
        let norm = |name: &str, n: usize| -> Result<Vec<f32>> {
            let t = get(name, &[n])?;
            if !matches!(t.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
                bail!("norm {} has type {}; expected F32", name, t.ty.name());
            }
            f32_data(&gguf, t)
        };
        let matrix = |t: &TensorInfo,
                      rows: usize,
                      cols: usize,
                      act: ActQuant,
                      warnings: &mut Vec<String>|
         -> Result<Weight> {
            let src = Source {
                file: &gguf,
                info: t,
                rows,
                cols,
            };
            weights::load(&src, act, warnings)
        };
        // Embedding and float head: held as the file has them, multiplied
        // with the type's own activations (BF16, Q4_0, Q4_K dequantized once
        // at load: mainline llama-quantize writes a TQ model's token_embd in
        // Q4_K).
        let embedding = |name: &str, warnings: &mut Vec<String>| -> Result<Weight> {
            let t = get(name, &[n_embd, n_vocab])?;
            if t.ty.info().ternary {
                bail!(
                    "tensor {}: type {} is not supported for embeddings",
                    name,
                    t.ty.name()
                );
            }
            matrix(t, n_vocab, n_embd, ActQuant::Native, warnings)
        };
        // Projections: BitLinear.
        let mut natures: Vec<(String, ProjNature)> = Vec::new();
        let mut proj =
            |name: &str, rows: usize, cols: usize, warnings: &mut Vec<String>| -> Result<Weight> {
                let t = get(name, &[cols, rows])?;
                let w = matrix(t, rows, cols, ActQuant::BitLinear, warnings)?;
                let nature = if w.ternary() {
                    ProjNature::Ternary
                } else if matches!(t.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
                    ProjNature::Float
                } else {
                    ProjNature::Fallback
                };
                natures.push((name.to_string(), nature));
                Ok(w)
            };

        let tok_embd = embedding("token_embd.weight", &mut warnings)?;
        let output = match gguf.tensor("output.weight") {
            Some(t) if t.ty.info().ternary => {
                Some(proj("output.weight", n_vocab, n_embd, &mut warnings)?)
            }
            Some(_) => Some(embedding("output.weight", &mut warnings)?),
            None => None,
        };
        let output_norm = norm("output_norm.weight", n_embd)?;
        let (qd, kvd) = (hp.q_dim(), hp.kv_dim());
        let mut layers = Vec::with_capacity(n_layer);
        for l in 0..n_layer {
            let b = |s: &str| format!("blk.{}.{}.weight", l, s);
            let sub = |s: &str, n: usize| -> Result<Option<Vec<f32>>> {
                match graph.sub_norms {
                    Some(_) => Ok(Some(norm(&b(s), n)?)),
                    None => Ok(None),
                }
            };
            let inorm = |gg: &str, n: usize| norm(&crate::convert::input_norm_name(l, gg), n);
            let input_norms = if gguf
                .tensor(&crate::convert::input_norm_name(l, "attn_q"))
                .is_some()
            {
                Some(InputNorms {
                    q: inorm("attn_q", n_embd)?,
                    k: inorm("attn_k", n_embd)?,
                    v: inorm("attn_v", n_embd)?,
                    o: inorm("attn_output", qd)?,
                    gate: inorm("ffn_gate", n_embd)?,
                    up: inorm("ffn_up", n_embd)?,
                    down: inorm("ffn_down", n_ff)?,
                })
            } else {
                None
            };
            layers.push(Layer {
                attn_norm: norm(&b("attn_norm"), n_embd)?,
                ffn_norm: norm(&b("ffn_norm"), n_embd)?,
                attn_sub_norm: sub("attn_sub_norm", qd)?,
                ffn_sub_norm: sub("ffn_sub_norm", n_ff)?,
                input_norms,
                wq: proj(&b("attn_q"), qd, n_embd, &mut warnings)?,
                wk: proj(&b("attn_k"), kvd, n_embd, &mut warnings)?,
                wv: proj(&b("attn_v"), kvd, n_embd, &mut warnings)?,
                wo: proj(&b("attn_output"), n_embd, qd, &mut warnings)?,
                wgate: proj(&b("ffn_gate"), n_ff, n_embd, &mut warnings)?,
                wup: proj(&b("ffn_up"), n_ff, n_embd, &mut warnings)?,
                wdown: proj(&b("ffn_down"), n_embd, n_ff, &mut warnings)?,
            });
        }

        if graph.ternary_only {
            check_ternary(&arch, &natures)?;
        }

        // Chat template, with the official GGUF's placeholder replaced.
        let chat_template = match gguf.get_str("tokenizer.chat_template") {
            Some(t)
                if t.contains("BITNETAssistant") || (t.contains("Human:") && !t.contains("{%")) =>
            {
                warnings.push("the embedded chat template is the official GGUF's placeholder (Human:/BITNETAssistant:); using the trained System:/User:/Assistant: format".into());
                default_chat_template(&tokenizer)
            }
            Some(t) => t.to_string(),
            None => default_chat_template(&tokenizer),
        };
        Ok(Model {
            gguf,
            hp,
            tok_embd,
            output,
            output_norm,
            layers,
            tokenizer,
            chat_template,
            kernel,
            warnings,
        })
    }

    /// The output head (the embedding when tied).
    pub fn head(&self) -> &Weight {
        self.output.as_ref().unwrap_or(&self.tok_embd)
    }

    /// Bytes read per generated token: every projection and the head, as
    /// held (KV cache and norms not counted).
    pub fn bytes_per_token(&self) -> u64 {
        let proj: usize = self
            .layers
            .iter()
            .map(|l| {
                [&l.wq, &l.wk, &l.wv, &l.wo, &l.wgate, &l.wup, &l.wdown]
                    .iter()
                    .map(|p| p.bytes())
                    .sum::<usize>()
            })
            .sum();
        (self.head().bytes() + proj) as u64
    }

    pub fn n_params(&self) -> u64 {
        let h = &self.hp;
        let proj = h.n_layer
            * (h.n_embd * (h.n_head + 2 * h.n_head_kv) * h.head_dim
                + h.n_head * h.head_dim * h.n_embd
                + 3 * h.n_embd * h.n_ff);
        let emb = h.n_vocab * h.n_embd * if self.output.is_some() { 2 } else { 1 };
        (proj + emb) as u64
    }
}

/// Read the tokenizer keys, fixing the official GGUF's known gaps with a warning each.
fn vocab_spec(g: &GgufFile, warnings: &mut Vec<String>) -> Result<VocabSpec> {
    let model = g
        .get_str("tokenizer.ggml.model")
        .ok_or_else(|| anyhow!("tokenizer.ggml.model is missing or not a string"))?
        .to_string();
    let strs = |k: &str| -> Result<Vec<String>> {
        match g.get(k) {
            None => Ok(vec![]),
            Some(v) => v
                .as_array()
                .ok_or_else(|| anyhow!("{} is not an array", k))?
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(String::from)
                        .ok_or_else(|| anyhow!("{} holds a non-string", k))
                })
                .collect(),
        }
    };
    let tokens = strs("tokenizer.ggml.tokens")?;
    if tokens.is_empty() {
        bail!("tokenizer.ggml.tokens is missing or empty");
    }
    let merges = strs("tokenizer.ggml.merges")?;
    let array = |k: &str| -> Result<Option<&[crate::gguf::Value]>> {
        match g.get(k) {
            None => Ok(None),
            Some(v) => Ok(Some(
                v.as_array()
                    .ok_or_else(|| anyhow!("{} is not an array", k))?,
            )),
        }
    };
    let token_types: Vec<i32> = match array("tokenizer.ggml.token_type")? {
        Some(a) => a
            .iter()
            .map(|x| {
                x.as_i64()
                    .and_then(|t| i32::try_from(t).ok())
                    .ok_or_else(|| anyhow!("tokenizer.ggml.token_type holds a non-i32 value"))
            })
            .collect::<Result<_>>()?,
        None => vec![1; tokens.len()],
    };
    if token_types.len() != tokens.len() {
        bail!(
            "tokenizer.ggml.token_type has {} entries for {} tokens",
            token_types.len(),
            tokens.len()
        );
    }
    let scores: Vec<f32> = match array("tokenizer.ggml.scores")? {
        // f64 → f32 rounds; scores only order merges.
        Some(a) => a
            .iter()
            .map(|x| {
                x.as_f64()
                    .map(|s| s as f32)
                    .ok_or_else(|| anyhow!("tokenizer.ggml.scores holds a non-number"))
            })
            .collect::<Result<_>>()?,
        None => vec![],
    };
    let id = |k: &str| -> Result<Option<u32>> {
        let Some(v) = g.get(k) else {
            return Ok(None);
        };
        let n = v
            .as_u64()
            .ok_or_else(|| anyhow!("{} is not a non-negative integer", k))?;
        match u32::try_from(n) {
            Ok(i) if usize::try_from(n).is_ok_and(|n| n < tokens.len()) => Ok(Some(i)),
            _ => bail!(
                "{} = {} is outside the vocabulary of {}",
                k,
                n,
                tokens.len()
            ),
        }
    };
    let find = |s: &str| {
        tokens
            .iter()
            .position(|t| t == s)
            .and_then(|i| u32::try_from(i).ok())
    };
    let mut eot = id("tokenizer.ggml.eot_token_id")?;
    if eot.is_none() {
        if let Some(e) = find("<|eot_id|>") {
            warnings.push("<|eot_id|> is not marked as end of turn in this file (tokenizer.ggml.eot_token_id missing); treating it as end of generation".into());
            eot = Some(e);
        }
    }
    let mut pre = g.get_str("tokenizer.ggml.pre").map(String::from);
    if pre.is_none() && model == "gpt2" && find("<|begin_of_text|>").is_some() {
        warnings.push("tokenizer.ggml.pre is missing for a LLaMA-3 vocabulary; using the llama-bpe pre-tokenizer".into());
        pre = Some("llama-bpe".into());
    }
    let bos = id("tokenizer.ggml.bos_token_id")?;
    let eos = id("tokenizer.ggml.eos_token_id")?;
    Ok(VocabSpec {
        model,
        pre,
        tokens,
        token_types,
        merges,
        scores,
        bos,
        eos,
        eot,
        add_bos: g.get_bool("tokenizer.ggml.add_bos_token").unwrap_or(true),
    })
}

/// A graph that runs only ternary projections (llama): refuse a file whose
/// projections are float with other values, or that has no ternary one at
/// all (an ordinary Llama GGUF), in one line. Block-quantized fallbacks
/// beside ternary tensors (mainline's Q4_0 `ffn_down` in a TQ2_0 file) run
/// with BitLinear semantics like the rest.
fn check_ternary(arch: &str, natures: &[(String, ProjNature)]) -> Result<()> {
    if let Some((name, _)) = natures.iter().find(|(_, n)| *n == ProjNature::Float) {
        bail!(
            "{} is not ternary (it holds more than the three values -s, 0, +s): tern runs {:?} GGUFs only with ternary projections (BitNet b1.58), never an ordinary {} model",
            name,
            arch,
            arch
        );
    }
    if !natures.iter().any(|(_, n)| *n == ProjNature::Ternary) {
        bail!(
            "no projection of this {:?} GGUF is ternary (all are block-quantized): tern runs {:?} GGUFs only with ternary projections (BitNet b1.58)",
            arch,
            arch
        );
    }
    Ok(())
}
