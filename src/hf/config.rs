//! `config.json` and the graph variant it describes.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value as J;
use std::path::Path;

/// The two BitNet graphs (docs §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `BitNetForCausalLM` (2B-4T style): GGUF `bitnet-b1.58`, relu², sub-norms
    /// `attn_sub_norm` / `ffn_sub_norm`.
    B158,
    /// `BitnetForCausalLM` (1bitLLM style): GGUF `bitnet`, SiLU, sub-norms
    /// `inner_attn_ln` / `ffn_layernorm`.
    Bitnet,
}

impl Variant {
    pub fn gguf_arch(self) -> &'static str {
        match self {
            Variant::B158 => "bitnet-b1.58",
            Variant::Bitnet => "bitnet",
        }
    }
    pub fn default_activation(self) -> Activation {
        match self {
            Variant::B158 => Activation::Relu2,
            Variant::Bitnet => Activation::Silu,
        }
    }
}

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

#[derive(Debug, Clone)]
pub struct HfConfig {
    pub architecture: String,
    pub variant: Variant,
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
    /// `quantization_config.quant_method == "bitnet"` with offline mode.
    pub offline_packed: bool,
}

fn get_usize(j: &J, key: &str) -> Result<usize> {
    let v = j
        .get(key)
        .ok_or_else(|| anyhow!("config.json has no {}", key))?;
    let n = v
        .as_u64()
        .ok_or_else(|| anyhow!("config.json: {} is not a non-negative integer ({})", key, v))?;
    if n == 0 || n > (1 << 31) {
        bail!("config.json: {} = {} is out of range", key, n);
    }
    Ok(n as usize)
}

fn ids(v: Option<&J>) -> Vec<u32> {
    match v {
        Some(J::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(J::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => vec![],
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
        let variant = match arch.as_str() {
            "BitNetForCausalLM" => Variant::B158,
            "BitnetForCausalLM" => Variant::Bitnet,
            "" if model_type == "bitnet" => Variant::B158,
            _ => bail!(
                "unsupported architecture {:?} (model_type {:?}): tern converts BitNetForCausalLM and BitnetForCausalLM",
                if arch.is_empty() { "<none>" } else { &arch },
                model_type
            ),
        };
        let activation = match j.get("hidden_act").and_then(|x| x.as_str()) {
            Some(s) => Activation::parse(s).ok_or_else(|| {
                anyhow!(
                    "config.json: unsupported hidden_act {:?} (relu2 or silu)",
                    s
                )
            })?,
            None => variant.default_activation(),
        };
        let hidden = get_usize(j, "hidden_size")?;
        let heads = get_usize(j, "num_attention_heads")?;
        let kv_heads = if j
            .get("num_key_value_heads")
            .map(|v| !v.is_null())
            .unwrap_or(false)
        {
            get_usize(j, "num_key_value_heads")?
        } else {
            heads
        };
        let head_dim = match j.get("head_dim").and_then(|v| v.as_u64()) {
            Some(h) => h as usize,
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
        let rope_theta = j
            .get("rope_theta")
            .and_then(|v| v.as_f64())
            .or_else(|| {
                j.get("rope_parameters")
                    .and_then(|r| r.get("rope_theta"))
                    .and_then(|v| v.as_f64())
            })
            .unwrap_or(10000.0) as f32;
        let rms_eps = j
            .get("rms_norm_eps")
            .and_then(|v| v.as_f64())
            .unwrap_or(1e-5) as f32;
        let qc = j.get("quantization_config");
        let offline_packed = qc
            .map(|q| {
                q.get("quant_method").and_then(|x| x.as_str()) == Some("bitnet")
                    && q.get("quantization_mode")
                        .and_then(|x| x.as_str())
                        .unwrap_or("offline")
                        == "offline"
            })
            .unwrap_or(false);
        Ok(HfConfig {
            architecture: if arch.is_empty() {
                model_type.to_string()
            } else {
                arch
            },
            variant,
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
            context: j
                .get("max_position_embeddings")
                .and_then(|v| v.as_u64())
                .unwrap_or(4096) as usize,
            tied: j
                .get("tie_word_embeddings")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            bos_token_id: ids(j.get("bos_token_id")).first().copied(),
            eos_token_ids: ids(j.get("eos_token_id")),
            offline_packed,
        })
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
        assert_eq!(c.variant, Variant::B158);
        assert_eq!(c.activation, Activation::Relu2);
        assert_eq!(c.kv_heads, 8);
        j["architectures"] = serde_json::json!(["BitnetForCausalLM"]);
        let c = HfConfig::from_json(&j).unwrap();
        assert_eq!(c.variant.gguf_arch(), "bitnet");
        assert_eq!(c.activation, Activation::Silu);
        j["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
        let e = HfConfig::from_json(&j).unwrap_err().to_string();
        assert!(e.contains("LlamaForCausalLM"), "{}", e);
    }
}
