//! `config.json` and the graph variant it describes.

use crate::arch::Arch;
use crate::untrusted::quoted;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value as J;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Relu2,
    Silu,
}

impl Activation {
    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu2 => "relu2",
            Activation::Silu => "silu",
        }
    }
    pub fn parse(s: &str) -> Option<Activation> {
        match s.to_ascii_lowercase().as_str() {
            "relu2" | "relu_squared" | "squared_relu" | "relu²" => Some(Activation::Relu2),
            "silu" | "swish" | "swiglu" => Some(Activation::Silu),
            _ => None,
        }
    }
}

/// Which transformers class a bitnet `quantization_config` swaps the
/// linears for (`integrations/bitnet.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinearClass {
    /// `BitLinear` (the default, also when `linear_class` is absent): packed
    /// uint8 codes and `weight_scale`, `W = T / weight_scale`.
    BitLinear,
    /// `AutoBitLinear` with `quantization_mode: offline`: the same codes
    /// (packed, or unpacked float), but `W = T × weight_scale`.
    AutoOffline,
    /// `AutoBitLinear` with `quantization_mode: online`: float masters,
    /// absmean per tensor at run time.
    AutoOnline,
}

/// `quantization_config` with `quant_method: "bitnet"` (transformers'
/// `BitNetQuantConfig`).
#[derive(Debug, Clone, PartialEq)]
pub struct BitnetQuant {
    pub linear_class: LinearClass,
    /// `use_rms_norm`: an RMSNorm with its own weight
    /// (`<linear>.rms_norm.weight`) on each converted linear's input.
    pub use_rms_norm: bool,
    /// `rms_norm_eps` of those norms (default 1e-6).
    pub rms_norm_eps: f32,
    /// `modules_to_not_convert`: `None` keeps `lm_head` float; a list is
    /// literal (a module stays float when any entry is a substring of its
    /// dotted name, as transformers matches).
    pub modules_to_not_convert: Option<Vec<String>>,
}

impl BitnetQuant {
    /// Whether the module with this dotted HF name (`lm_head`,
    /// `model.layers.0.mlp.down_proj`) stays a float `nn.Linear`.
    pub fn keeps_float(&self, module: &str) -> bool {
        match &self.modules_to_not_convert {
            None => module == "lm_head",
            Some(list) => list.iter().any(|k| module.contains(k.as_str())),
        }
    }

    fn from_json(q: &J) -> Result<BitnetQuant> {
        let s = |k: &str| -> Result<Option<String>> {
            match q.get(k) {
                None | Some(J::Null) => Ok(None),
                Some(J::String(v)) => Ok(Some(v.to_ascii_lowercase())),
                Some(other) => bail!(
                    "config.json: quantization_config.{} is not a string ({})",
                    k,
                    crate::hf::short_json(other)
                ),
            }
        };
        let mode = s("quantization_mode")?;
        let linear_class = match s("linear_class")?.as_deref() {
            None | Some("bitlinear") => LinearClass::BitLinear,
            Some("autobitlinear") => match mode.as_deref() {
                None | Some("offline") => LinearClass::AutoOffline,
                Some("online") => LinearClass::AutoOnline,
                Some(m) => bail!(
                    "config.json: quantization_config.quantization_mode {:?} is not offline or online",
                    crate::hf::short(m)
                ),
            },
            Some(c) => bail!(
                "config.json: quantization_config.linear_class {:?} is not bitlinear or autobitlinear",
                crate::hf::short(c)
            ),
        };
        let use_rms_norm = match q.get("use_rms_norm") {
            None | Some(J::Null) => false,
            Some(J::Bool(b)) => *b,
            Some(v) => bail!(
                "config.json: quantization_config.use_rms_norm is not a boolean ({})",
                crate::hf::short_json(v)
            ),
        };
        let rms_norm_eps = match q.get("rms_norm_eps") {
            None | Some(J::Null) => 1e-6,
            Some(v) => match v.as_f64() {
                Some(e) if e > 0.0 && e < 1.0 => e as f32,
                _ => bail!(
                    "config.json: quantization_config.rms_norm_eps must be a number in (0, 1) ({})",
                    crate::hf::short_json(v)
                ),
            },
        };
        let modules_to_not_convert = match q.get("modules_to_not_convert") {
            None | Some(J::Null) => None,
            Some(J::Array(a)) => Some(
                a.iter()
                    .map(|x| {
                        x.as_str().map(String::from).ok_or_else(|| {
                            anyhow!("config.json: quantization_config.modules_to_not_convert holds a non-string")
                        })
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
            Some(v) => bail!(
                "config.json: quantization_config.modules_to_not_convert is not a list ({})",
                crate::hf::short_json(v)
            ),
        };
        Ok(BitnetQuant {
            linear_class,
            use_rms_norm,
            rms_norm_eps,
            modules_to_not_convert,
        })
    }
}

/// `rope_scaling` (or transformers 5's `rope_parameters`) as tern applies
/// it. The frequencies each type gives are computed in
/// [`crate::rope`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (GGUF `rope.scaling.type = linear`).
    Linear {
        factor: f32,
    },
    /// Llama 3.1's per-frequency factors (written as the `rope_freqs.weight`
    /// tensor, as llama.cpp's converter does).
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_context: u32,
    },
    /// YaRN with transformers' defaults (beta_fast 32, beta_slow 1,
    /// attention factor 0.1·ln(factor) + 1); GGUF `rope.scaling.type = yarn`.
    Yarn {
        factor: f32,
        original_context: u32,
    },
}

impl RopeScaling {
    fn from_json(j: &J, max_pos: Option<u64>) -> Result<RopeScaling> {
        let r = match j.get("rope_scaling").filter(|v| !v.is_null()) {
            Some(r) => r,
            None => match j.get("rope_parameters").filter(|v| !v.is_null()) {
                Some(r) => r,
                None => return Ok(RopeScaling::None),
            },
        };
        if !r.is_object() {
            bail!(
                "config.json: rope_scaling is not an object ({})",
                crate::hf::short_json(r)
            );
        }
        let ty = r
            .get("rope_type")
            .or_else(|| r.get("type"))
            .and_then(|v| v.as_str())
            .unwrap_or("default")
            .to_ascii_lowercase();
        let num = |k: &str| -> Result<Option<f32>> {
            match r.get(k) {
                None | Some(J::Null) => Ok(None),
                Some(v) => match v.as_f64() {
                    Some(x) if x.is_finite() && x > 0.0 && x < 1e6 => Ok(Some(x as f32)),
                    _ => bail!(
                        "config.json: rope_scaling.{} must be a positive number ({})",
                        k,
                        crate::hf::short_json(v)
                    ),
                },
            }
        };
        let factor = |ty: &str| -> Result<f32> {
            num("factor")?
                .ok_or_else(|| anyhow!("config.json: rope_scaling of type {} has no factor", ty))
        };
        let orig = || -> Result<u32> {
            let v = match r.get("original_max_position_embeddings").and_then(|v| v.as_u64()) {
                Some(v) => v,
                None => max_pos.ok_or_else(|| {
                    anyhow!("config.json: rope_scaling needs original_max_position_embeddings or max_position_embeddings")
                })?,
            };
            if v == 0 || v > (1 << 31) {
                bail!(
                    "config.json: rope_scaling original context {} is out of range",
                    v
                );
            }
            Ok(v as u32)
        };
        Ok(match ty.as_str() {
            "default" | "none" => RopeScaling::None,
            "linear" => RopeScaling::Linear {
                factor: factor("linear")?,
            },
            "llama3" => RopeScaling::Llama3 {
                factor: factor("llama3")?,
                low_freq_factor: num("low_freq_factor")?.unwrap_or(1.0),
                high_freq_factor: num("high_freq_factor")?.unwrap_or(4.0),
                original_context: orig()?,
            },
            "yarn" => {
                // Only transformers' defaults are applied; anything else is refused.
                for (k, default) in [("beta_fast", Some(32.0)), ("beta_slow", Some(1.0))] {
                    if let Some(v) = num(k)? {
                        if Some(v) != default {
                            bail!("config.json: rope_scaling yarn with {} = {}: tern applies YaRN only with beta_fast 32 and beta_slow 1", k, v);
                        }
                    }
                }
                for k in ["attention_factor", "mscale", "mscale_all_dim"] {
                    if r.get(k).is_some_and(|v| !v.is_null()) {
                        bail!("config.json: rope_scaling yarn with {}: tern cannot apply it", k);
                    }
                }
                if r.get("truncate").and_then(|v| v.as_bool()) == Some(false) {
                    bail!("config.json: rope_scaling yarn with truncate false: tern cannot apply it");
                }
                RopeScaling::Yarn {
                    factor: factor("yarn")?,
                    original_context: orig()?,
                }
            }
            other => bail!(
                "config.json: rope_scaling type {:?}: tern cannot apply it (linear, llama3 and yarn are supported)",
                crate::hf::short(other)
            ),
        })
    }
}

#[derive(Debug, Clone)]
pub struct HfConfig {
    pub architecture: String,
    pub arch: &'static Arch,
    pub activation: Activation,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub rms_eps: f32,
    pub rope_theta: f32,
    pub context: usize,
    pub tied: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// `quantization_config` with `quant_method: "bitnet"`, if any.
    pub quant: Option<BitnetQuant>,
    pub rope_scaling: RopeScaling,
}

/// A JSON value from a file as it appears in messages (escaped, cut short).
pub fn json_shown(v: &J) -> String {
    match v {
        J::String(s) => quoted(s).to_string(),
        // Numbers, booleans, null, arrays and objects as compact JSON.
        _ => quoted(&v.to_string()).to_string(),
    }
}

/// Largest dimension or count accepted from config.json; the same bound the
/// runtime puts on GGUF counts (llama.cpp stores them as `uint32_t`).
pub const MAX_DIM: u64 = 1 << 31;

/// An optional integer `key` in `1..=max`: `None` when absent or `null`;
/// present with another type (negative, fractional, string) or out of range
/// is an error, never silently the default.
fn opt_count(j: &J, key: &str, max: u64) -> Result<Option<usize>> {
    let v = match j.get(key) {
        None | Some(J::Null) => return Ok(None),
        Some(v) => v,
    };
    let n = v.as_u64().ok_or_else(|| {
        anyhow!(
            "config.json: {} is not a non-negative integer ({})",
            key,
            json_shown(v)
        )
    })?;
    if n == 0 || n > max {
        bail!("config.json: {} = {} is out of range (1..={})", key, n, max);
    }
    Ok(Some(usize::try_from(n)?))
}

fn get_usize(j: &J, key: &str) -> Result<usize> {
    opt_count(j, key, MAX_DIM)?.ok_or_else(|| anyhow!("config.json has no {}", key))
}

/// An optional number that must be finite and positive once rounded to the
/// f32 the GGUF stores (a tiny f64 that rounds to 0, or a huge one that
/// rounds to infinity, is refused like 0 or infinity).
fn opt_positive_f32(key: &str, v: Option<&J>) -> Result<Option<f32>> {
    let v = match v {
        None | Some(J::Null) => return Ok(None),
        Some(v) => v,
    };
    let x = v
        .as_f64()
        .ok_or_else(|| anyhow!("config.json: {} is not a number ({})", key, json_shown(v)))?;
    // `as` rounds f64 → f32 (to ±inf out of range): checked just below.
    let x32 = x as f32;
    if !(x32.is_finite() && x32 > 0.0) {
        bail!(
            "config.json: {} = {} is not a finite positive number (as f32)",
            key,
            x
        );
    }
    Ok(Some(x32))
}

/// Token ids (`bos_token_id`, `eos_token_id`: a number or a list of
/// numbers; `null` = none). An id that is not a u32 is an error.
pub fn token_ids(file: &str, key: &str, v: Option<&J>) -> Result<Vec<u32>> {
    let one = |x: &J| -> Result<u32> {
        x.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| anyhow!("{}: {} holds {}, not a token id", file, key, json_shown(x)))
    };
    match v {
        None | Some(J::Null) => Ok(vec![]),
        Some(J::Array(a)) => a.iter().map(one).collect(),
        Some(x) => Ok(vec![one(x)?]),
    }
}

impl HfConfig {
    pub fn load(dir: &Path) -> Result<HfConfig> {
        let p = dir.join("config.json");
        if !p.is_file() {
            bail!(
                "{} has no config.json: not a Hugging Face model folder",
                dir.display()
            );
        }
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        let j: J = serde_json::from_str(&text)
            .map_err(|e| anyhow!("config.json is not valid JSON: {}", e))?;
        Self::from_json(&j)
    }

    pub fn from_json(j: &J) -> Result<HfConfig> {
        let archs: Vec<String> = j
            .get("architectures")
            .and_then(|a| a.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let model_type = j.get("model_type").and_then(|x| x.as_str()).unwrap_or("");
        let arch = archs.first().cloned().unwrap_or_default();
        let quant = match j.get("quantization_config").filter(|q| !q.is_null()) {
            Some(q) => match q.get("quant_method").and_then(|m| m.as_str()) {
                Some(m) if m.eq_ignore_ascii_case("bitnet") => Some(BitnetQuant::from_json(q)?),
                other => bail!(
                    "config.json: quantization_config.quant_method {} is not bitnet; tern converts ternary (BitNet) checkpoints only",
                    quoted(other.unwrap_or("<none>"))
                ),
            },
            None => None,
        };
        let arch_row = match Arch::from_hf(&arch) {
            Some(a) => a,
            None if arch.is_empty() && model_type == "bitnet" => {
                Arch::from_gguf("bitnet-b1.58").expect("a bitnet-b1.58 row")
            }
            None => bail!(
                "unsupported architecture {} (model_type {}): tern converts {}",
                quoted(if arch.is_empty() { "<none>" } else { &arch }),
                quoted(model_type),
                Arch::hf_names()
            ),
        };
        if arch_row.ternary_only && quant.is_none() {
            bail!(
                "{} without a bitnet quantization_config is not a ternary model; tern converts ternary (BitNet b1.58) checkpoints only",
                crate::hf::short(&arch)
            );
        }
        let activation = match j.get("hidden_act").and_then(|x| x.as_str()) {
            Some(s) => match Activation::parse(s) {
                Some(a)
                    if arch_row.activation.from_metadata || a == arch_row.activation.default =>
                {
                    a
                }
                _ => bail!(
                    "config.json: unsupported hidden_act {} for {} ({})",
                    quoted(s),
                    arch,
                    if arch_row.activation.from_metadata {
                        "relu2 or silu"
                    } else {
                        arch_row.activation.default.name()
                    }
                ),
            },
            None => arch_row.activation.default,
        };
        let hidden = get_usize(j, "hidden_size")?;
        let heads = get_usize(j, "num_attention_heads")?;
        let kv_heads = opt_count(j, "num_key_value_heads", MAX_DIM)?.unwrap_or(heads);
        let head_dim = match opt_count(j, "head_dim", MAX_DIM)? {
            Some(h) => h,
            None => {
                if hidden % heads != 0 {
                    bail!(
                        "config.json: hidden_size {} is not divisible by num_attention_heads {}",
                        hidden,
                        heads
                    );
                }
                hidden / heads
            }
        };
        if heads % kv_heads != 0 {
            bail!(
                "config.json: num_attention_heads {} is not a multiple of num_key_value_heads {}",
                heads,
                kv_heads
            );
        }
        if head_dim % 2 != 0 {
            bail!(
                "config.json: head dimension {} is odd; RoPE needs it even",
                head_dim
            );
        }
        let rope_theta = match opt_positive_f32("rope_theta", j.get("rope_theta"))? {
            Some(t) => t,
            None => opt_positive_f32(
                "rope_parameters.rope_theta",
                j.get("rope_parameters").and_then(|r| r.get("rope_theta")),
            )?
            .unwrap_or(10000.0),
        };
        let rms_eps = opt_positive_f32("rms_norm_eps", j.get("rms_norm_eps"))?.unwrap_or(1e-5);
        let max_pos = opt_count(j, "max_position_embeddings", u64::from(u32::MAX))?;
        let rope_scaling = RopeScaling::from_json(j, max_pos.map(|n| n as u64))?;
        let cfg = HfConfig {
            architecture: if arch.is_empty() {
                model_type.to_string()
            } else {
                arch
            },
            arch: arch_row,
            activation,
            hidden,
            intermediate: get_usize(j, "intermediate_size")?,
            layers: get_usize(j, "num_hidden_layers")?,
            heads,
            kv_heads,
            head_dim,
            vocab: get_usize(j, "vocab_size")?,
            rms_eps,
            rope_theta,
            context: max_pos.unwrap_or(4096),
            tied: match j.get("tie_word_embeddings") {
                None | Some(J::Null) => false,
                Some(v) => v.as_bool().ok_or_else(|| {
                    anyhow!(
                        "config.json: tie_word_embeddings is not a boolean ({})",
                        json_shown(v)
                    )
                })?,
            },
            bos_token_id: token_ids("config.json", "bos_token_id", j.get("bos_token_id"))?
                .first()
                .copied(),
            eos_token_ids: token_ids("config.json", "eos_token_id", j.get("eos_token_id"))?,
            quant,
            rope_scaling,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The config's values against each other: the attention widths
    /// (`num_attention_heads · head_dim`, `num_key_value_heads · head_dim`)
    /// computed with checked arithmetic and bounded like every other
    /// dimension, so that no value the GGUF gets can wrap.
    pub fn validate(&self) -> Result<()> {
        for (what, heads) in [
            ("num_attention_heads", self.heads),
            ("num_key_value_heads", self.kv_heads),
        ] {
            if heads
                .checked_mul(self.head_dim)
                .is_none_or(|w| w as u64 > MAX_DIM)
            {
                bail!(
                    "config.json: {} {} × head_dim {} is out of range",
                    what,
                    heads,
                    self.head_dim
                );
            }
        }
        Ok(())
    }

    /// Attention width `num_attention_heads · head_dim` (checked by `validate`).
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }
    /// K/V width `num_key_value_heads · head_dim` (checked by `validate`).
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants() {
        let base = r#"{"hidden_size":256,"intermediate_size":640,"num_hidden_layers":2,"num_attention_heads":8,"vocab_size":10}"#;
        let mut j: J = serde_json::from_str(base).unwrap();
        j["architectures"] = serde_json::json!(["BitNetForCausalLM"]);
        let c = HfConfig::from_json(&j).unwrap();
        assert_eq!(c.arch.gguf, "bitnet-b1.58");
        assert_eq!(c.activation, Activation::Relu2);
        assert_eq!(c.kv_heads, 8);
        j["architectures"] = serde_json::json!(["BitnetForCausalLM"]);
        let c = HfConfig::from_json(&j).unwrap();
        assert_eq!(c.arch.gguf, "bitnet");
        assert_eq!(c.activation, Activation::Silu);
        j["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
        let e = HfConfig::from_json(&j).unwrap_err().to_string();
        assert!(
            e.contains("LlamaForCausalLM") && e.contains("not a ternary model"),
            "{}",
            e
        );
        j["quantization_config"] = serde_json::json!({"quant_method": "bitnet"});
        let c = HfConfig::from_json(&j).unwrap();
        assert_eq!(c.arch.gguf, "llama");
        assert_eq!(c.activation, Activation::Silu);
        let q = c.quant.unwrap();
        assert_eq!(q.linear_class, LinearClass::BitLinear);
        assert!(q.keeps_float("lm_head") && !q.keeps_float("model.layers.0.mlp.down_proj"));
        j["architectures"] = serde_json::json!(["Qwen3ForCausalLM"]);
        let e = HfConfig::from_json(&j).unwrap_err().to_string();
        assert!(e.contains("LlamaForCausalLM"), "{}", e);
    }

    #[test]
    fn quantization_configs() {
        let q = |v: serde_json::Value| BitnetQuant::from_json(&v);
        let c = q(serde_json::json!({"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline"})).unwrap();
        assert_eq!(c.linear_class, LinearClass::AutoOffline);
        let c = q(serde_json::json!({"linear_class": "autobitlinear", "quantization_mode": "online", "modules_to_not_convert": ["lm_head", "down_proj"], "use_rms_norm": true})).unwrap();
        assert_eq!(c.linear_class, LinearClass::AutoOnline);
        assert!(c.use_rms_norm && c.rms_norm_eps == 1e-6);
        assert!(
            c.keeps_float("model.layers.1.mlp.down_proj")
                && !c.keeps_float("model.layers.1.mlp.up_proj")
        );
        // A list is literal: without lm_head, lm_head is converted too.
        let c = q(serde_json::json!({"modules_to_not_convert": []})).unwrap();
        assert!(!c.keeps_float("lm_head"));
        // bitlinear ignores quantization_mode.
        let c = q(serde_json::json!({"quantization_mode": "online"})).unwrap();
        assert_eq!(c.linear_class, LinearClass::BitLinear);
        assert!(q(serde_json::json!({"linear_class": "int4"})).is_err());
        assert!(q(serde_json::json!({"rms_norm_eps": -1})).is_err());
    }

    #[test]
    fn rope_scaling_types() {
        let r = |v: serde_json::Value| RopeScaling::from_json(&v, Some(8192));
        assert_eq!(r(serde_json::json!({})).unwrap(), RopeScaling::None);
        assert_eq!(
            r(serde_json::json!({"rope_scaling": null})).unwrap(),
            RopeScaling::None
        );
        assert_eq!(
            r(serde_json::json!({"rope_scaling": {"type": "linear", "factor": 2.0}})).unwrap(),
            RopeScaling::Linear { factor: 2.0 }
        );
        assert_eq!(
            r(serde_json::json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}})).unwrap(),
            RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_context: 8192 }
        );
        assert_eq!(
            r(serde_json::json!({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}})).unwrap(),
            RopeScaling::Yarn { factor: 4.0, original_context: 8192 }
        );
        for bad in [
            serde_json::json!({"rope_scaling": {"type": "dynamic", "factor": 2.0}}),
            serde_json::json!({"rope_scaling": {"type": "longrope", "factor": 2.0}}),
            serde_json::json!({"rope_scaling": {"type": "linear"}}),
            serde_json::json!({"rope_scaling": {"type": "yarn", "factor": 2.0, "mscale": 0.7}}),
            serde_json::json!({"rope_scaling": {"type": "linear", "factor": -1}}),
        ] {
            assert!(r(bad.clone()).is_err(), "{}", bad);
        }
    }
}
