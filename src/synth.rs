//! Synthetic BitNet checkpoints in Hugging Face layout, for speed work and
//! converter benchmarks: real formats (bf16 safetensors, byte-level BPE
//! tokenizer.json with LLaMA-3 specials), random weights.

use crate::gguf::writer::AtomicFile;
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::collections::HashSet;
use std::io::{BufWriter, Write};
use std::path::Path;

#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
}

/// "hidden 2560, intermediate 6912, 30 layers, 20/5 heads, vocab 128256".
impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "hidden {}, intermediate {}, {} layers, {}/{} heads, vocab {}",
            self.hidden, self.intermediate, self.layers, self.heads, self.kv_heads, self.vocab
        )
    }
}

impl Shape {
    /// BitNet b1.58 2B-4T.
    pub const B2B4T: Shape = Shape {
        hidden: 2560,
        intermediate: 6912,
        layers: 30,
        heads: 20,
        kv_heads: 5,
        vocab: 128256,
    };
    /// A small shape for tests.
    pub const TINY: Shape = Shape {
        hidden: 256,
        intermediate: 640,
        layers: 2,
        heads: 8,
        kv_heads: 2,
        vocab: 2304,
    };

    pub fn by_name(s: &str) -> Option<Shape> {
        match s {
            "2b4t" | "2b-4t" | "2B-4T" => Some(Shape::B2B4T),
            "tiny" => Some(Shape::TINY),
            _ => None,
        }
    }
}

/// xorshift64 (seed must be non-zero): reproducible random data for
/// synthetic checkpoints and fuzz seeds.
pub struct Rng(pub u64);
impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Roughly normal(0, sd) from a sum of uniforms, as bf16 bits.
    fn bf16_normal(&mut self, sd: f32) -> u16 {
        let r = self.next_u64();
        let s = ((r & 0xffff) + ((r >> 16) & 0xffff) + ((r >> 32) & 0xffff) + (r >> 48)) as f32
            / 65535.0
            - 2.0;
        let v = s * sd * 1.732;
        (v.to_bits() >> 16) as u16
    }
}

/// GPT-2 byte-to-unicode table.
fn byte_chars() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut out = vec![' '; 256];
    for (b, c) in bs.iter().zip(cs) {
        out[*b as usize] = char::from_u32(c).expect("valid char");
    }
    out
}

fn tokenizer_json(n_bpe: usize, n_special: usize) -> serde_json::Value {
    let chars = byte_chars();
    let mut tokens: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
    let mut seen: HashSet<String> = tokens.iter().cloned().collect();
    let mut merges = Vec::new();
    let mut rng = Rng(0x2545F4914F6CDD1D);
    // Merge letters first so the vocabulary looks like words.
    let letters: Vec<usize> = (b'a'..=b'z').map(|b| b as usize).collect();
    while tokens.len() < n_bpe {
        // Letter pairs first (at most 26² exist), then pairs of earlier tokens.
        let pool = tokens.len();
        let early = merges.len() < 400;
        let a = if early {
            letters[(rng.next_u64() % 26) as usize]
        } else {
            (rng.next_u64() as usize) % pool
        };
        let b = if early {
            letters[(rng.next_u64() % 26) as usize]
        } else {
            (rng.next_u64() as usize) % pool
        };
        let t = format!("{}{}", tokens[a], tokens[b]);
        if t.chars().count() > 16 || !seen.insert(t.clone()) {
            continue;
        }
        merges.push(format!("{} {}", tokens[a], tokens[b]));
        tokens.push(t);
    }
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let mut specials = vec![
        "<|begin_of_text|>".to_string(),
        "<|end_of_text|>".to_string(),
    ];
    for i in 0..n_special - 2 {
        specials.push(if i == 7 {
            "<|eot_id|>".into()
        } else {
            format!("<|reserved_special_token_{}|>", i)
        });
    }
    let added: Vec<serde_json::Value> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"id": n_bpe + i, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": crate::hf::vocab::LLAMA3_REGEX}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": true,
                  "vocab": vocab, "merges": merges}
    })
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let mut f = AtomicFile::create(path, true)?;
    f.file()
        .write_all(serde_json::to_string_pretty(v)?.as_bytes())?;
    f.commit()
}

/// Write a random bf16 BitNet (`BitNetForCausalLM`, relu², tied) checkpoint.
pub fn synth_hf(dir: &Path, shape: Shape, seed: u64) -> Result<()> {
    synth_hf_variant(dir, shape, seed, false)
}

/// [`synth_hf`], or with `silu` the original BitNet variant
/// (`BitnetForCausalLM`, `model_type` llama, SiLU, its sub-norm names; GGUF
/// architecture `bitnet`), which the late-2024 bitnet.cpp linked by the
/// `bitnet-cpp` feature can run. Same shapes, so the same cost per token.
pub fn synth_hf_variant(dir: &Path, shape: Shape, seed: u64, silu: bool) -> Result<()> {
    let s = shape;
    if s.vocab <= 256 + 256
        || !s.hidden.is_multiple_of(s.heads)
        || !s.heads.is_multiple_of(s.kv_heads)
    {
        bail!("unusable shape ({})", s);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let hd = s.hidden / s.heads;
    let (arch, model_type, act) = if silu {
        ("BitnetForCausalLM", "llama", "silu")
    } else {
        ("BitNetForCausalLM", "bitnet", "relu2")
    };
    let (attn_sub, ffn_sub) = if silu {
        ("self_attn.inner_attn_ln.weight", "mlp.ffn_layernorm.weight")
    } else {
        ("self_attn.attn_sub_norm.weight", "mlp.ffn_sub_norm.weight")
    };
    let config = json!({
        "architectures": [arch], "model_type": model_type, "hidden_act": act,
        "hidden_size": s.hidden, "intermediate_size": s.intermediate, "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads, "num_key_value_heads": s.kv_heads, "vocab_size": s.vocab,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "tie_word_embeddings": true, "bos_token_id": s.vocab - 256, "eos_token_id": s.vocab - 255,
        "torch_dtype": "bfloat16"
    });
    write_json(&dir.join("config.json"), &config)?;
    write_json(
        &dir.join("tokenizer.json"),
        &tokenizer_json(s.vocab - 256, 256),
    )?;
    write_json(
        &dir.join("tokenizer_config.json"),
        &json!({"add_bos_token": true, "bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>",
                "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": crate::model::BITNET_CHAT_TEMPLATE}),
    )?;
    write_json(
        &dir.join("generation_config.json"),
        &json!({"bos_token_id": s.vocab - 256, "eos_token_id": [s.vocab - 255, s.vocab - 256 + 9]}),
    )?;

    // Tensor list (name, shape, std-dev; 0 = norm weights of ones).
    let mut tensors: Vec<(String, Vec<usize>, f32)> = vec![(
        "model.embed_tokens.weight".into(),
        vec![s.vocab, s.hidden],
        0.02,
    )];
    tensors.push(("model.norm.weight".into(), vec![s.hidden], 0.0));
    for l in 0..s.layers {
        let p = format!("model.layers.{}.", l);
        let kv = s.kv_heads * hd;
        for (n, sh) in [
            ("input_layernorm.weight", vec![s.hidden]),
            ("post_attention_layernorm.weight", vec![s.hidden]),
            (attn_sub, vec![s.hidden]),
            (ffn_sub, vec![s.intermediate]),
        ] {
            tensors.push((format!("{p}{n}"), sh, 0.0));
        }
        for (n, sh) in [
            ("self_attn.q_proj.weight", vec![s.hidden, s.hidden]),
            ("self_attn.k_proj.weight", vec![kv, s.hidden]),
            ("self_attn.v_proj.weight", vec![kv, s.hidden]),
            ("self_attn.o_proj.weight", vec![s.hidden, s.hidden]),
            ("mlp.gate_proj.weight", vec![s.intermediate, s.hidden]),
            ("mlp.up_proj.weight", vec![s.intermediate, s.hidden]),
            ("mlp.down_proj.weight", vec![s.hidden, s.intermediate]),
        ] {
            tensors.push((format!("{p}{n}"), sh, 0.02));
        }
    }
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut off = 0usize;
    for (n, sh, _) in &tensors {
        let bytes = sh.iter().product::<usize>() * 2;
        header.insert(
            n.clone(),
            json!({"dtype": "BF16", "shape": sh, "data_offsets": [off, off + bytes]}),
        );
        off += bytes;
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header))?;
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut f = AtomicFile::create(&dir.join("model.safetensors"), true)?;
    {
        let mut w = BufWriter::with_capacity(1 << 22, f.file());
        w.write_all(&(h.len() as u64).to_le_bytes())?;
        w.write_all(&h)?;
        let mut rng = Rng(seed | 1);
        let mut buf = Vec::with_capacity(1 << 22);
        for (_, sh, sd) in &tensors {
            let n: usize = sh.iter().product();
            let mut left = n;
            while left > 0 {
                let k = left.min(1 << 20);
                buf.clear();
                for _ in 0..k {
                    let v = if *sd == 0.0 {
                        0x3f80
                    } else {
                        rng.bf16_normal(*sd)
                    };
                    buf.extend_from_slice(&v.to_le_bytes());
                }
                w.write_all(&buf)?;
                left -= k;
            }
        }
        w.flush()?;
    }
    f.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_checkpoint_converts() {
        let d = tempfile::tempdir().unwrap();
        let m = d.path().join("m");
        synth_hf(&m, Shape::TINY, 1).unwrap();
        let out = d.path().join("m.gguf");
        let r = crate::convert::convert(&crate::convert::ConvertOptions {
            input: m,
            outfile: Some(out.clone()),
            outtype: crate::quant::GgmlType::I2S,
            embd_type: crate::quant::GgmlType::F16,
            force: false,
            quiet: true,
        })
        .unwrap();
        assert_eq!(r.continuous, 14);
        let model = crate::model::Model::load(&out).unwrap();
        let ids = model
            .tokenizer
            .encode("hello world<|eot_id|>", true)
            .unwrap();
        assert_eq!(ids[0], 2048);
        assert_eq!(*ids.last().unwrap(), 2048 + 9);
    }
}
