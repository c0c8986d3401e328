//! Write the seed corpora of the fuzz targets (`fuzz/seeds/<target>/`):
//! tiny but complete inputs, so that the fuzzer starts past the parsers.
//!
//! ```sh
//! cargo run --release --example fuzz_seeds -- fuzz/seeds
//! ```
//!
//! * `gguf_model`: BitNet GGUFs of 1 layer (I2_S / F32 / F16 projections,
//!   F16 / F32 / BF16 embeddings, a Q8_0 head, byte-level BPE and
//!   SentencePiece vocabularies), and the reliability reproducers.
//! * `hf_convert`: `[type byte] config.json \0 tokenizer.json \0
//!   tokenizer_config.json \0 model.safetensors` of tiny checkpoints
//!   (continuous bf16, offline-packed uint8 + weight_scale, the `bitnet`
//!   variant's names).
//! * `sentencepiece`: the `spm-tiny` fixture's tokenizer.model.
//! * `chat_template`: `template \0 role \0 content …` with the BitNet,
//!   Llama-3 and ChatML templates.

use anyhow::Result;
use serde_json::json;
use std::path::{Path, PathBuf};
use tern::gguf::{write_gguf_to, TensorPlan, Value, ValueType};
use tern::quant::{i2s, q8_0, GgmlType};
use tern::synth::Rng;

/// A ternary code in {-1, 0, +1}.
fn code(r: &mut Rng) -> i8 {
    (r.next_u64() % 3) as i8 - 1
}

/// A float in [-1, 1].
fn float(r: &mut Rng) -> f32 {
    (r.next_u64() % 2001) as f32 / 1000.0 - 1.0
}

struct Shape {
    arch: &'static str,
    n_embd: usize,
    n_ff: usize,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
    proj: GgmlType,
    embd: GgmlType,
    /// An untied head of this type.
    output: Option<GgmlType>,
    spm: bool,
}

fn gpt2_vocab(kv: &mut Vec<(String, Value)>) {
    let tokens = [
        "<|begin_of_text|>",
        "<|eot_id|>",
        "a",
        "b",
        "c",
        "Ġ",
        "Ġa",
        "ab",
    ];
    kv.push(("tokenizer.ggml.model".into(), Value::String("gpt2".into())));
    kv.push((
        "tokenizer.ggml.pre".into(),
        Value::String("llama-bpe".into()),
    ));
    kv.push((
        "tokenizer.ggml.tokens".into(),
        Value::string_array(tokens.iter().map(|s| s.to_string()).collect()),
    ));
    kv.push((
        "tokenizer.ggml.token_type".into(),
        Value::Array(
            ValueType::I32,
            [3, 3, 1, 1, 1, 1, 1, 1].map(Value::I32).to_vec(),
        ),
    ));
    kv.push((
        "tokenizer.ggml.merges".into(),
        Value::string_array(vec!["a b".into(), "Ġ a".into()]),
    ));
    kv.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(0)));
    kv.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(1)));
    kv.push(("tokenizer.ggml.eot_token_id".into(), Value::U32(1)));
}

fn spm_vocab(kv: &mut Vec<(String, Value)>) {
    let tokens = [
        "<unk>", "<s>", "</s>", "▁", "a", "b", "▁a", "ab", "<0x0A>", "<0x41>",
    ];
    kv.push(("tokenizer.ggml.model".into(), Value::String("llama".into())));
    kv.push((
        "tokenizer.ggml.tokens".into(),
        Value::string_array(tokens.iter().map(|s| s.to_string()).collect()),
    ));
    kv.push((
        "tokenizer.ggml.scores".into(),
        Value::Array(
            ValueType::F32,
            [0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -1.5, -2.5, 0.0, 0.0]
                .map(Value::F32)
                .to_vec(),
        ),
    ));
    kv.push((
        "tokenizer.ggml.token_type".into(),
        Value::Array(
            ValueType::I32,
            [2, 3, 3, 1, 1, 1, 1, 1, 6, 6].map(Value::I32).to_vec(),
        ),
    ));
    kv.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(1)));
    kv.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(2)));
    kv.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(true)));
    kv.push((
        "tokenizer.chat_template".into(),
        Value::String(tern::model::BITNET_CHAT_TEMPLATE.into()),
    ));
}

fn float_bytes(ty: GgmlType, xs: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for &x in xs {
        match ty {
            GgmlType::F32 => out.extend_from_slice(&x.to_le_bytes()),
            GgmlType::F16 => out.extend_from_slice(&half::f16::from_f32(x).to_le_bytes()),
            GgmlType::BF16 => out.extend_from_slice(&half::bf16::from_f32(x).to_le_bytes()),
            _ => {}
        }
    }
    if ty == GgmlType::Q8_0 {
        q8_0::quantize(xs, &mut out);
    }
    out
}

fn tiny_gguf(s: &Shape, seed: u64) -> Result<Vec<u8>> {
    let mut rng = Rng(seed);
    let a = |k: &str| format!("{}.{}", s.arch, k);
    let mut kv: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(s.arch.into())),
        (a("context_length"), Value::U32(64)),
        (a("embedding_length"), Value::U32(s.n_embd as u32)),
        (a("block_count"), Value::U32(1)),
        (a("feed_forward_length"), Value::U32(s.n_ff as u32)),
        (a("attention.head_count"), Value::U32(s.n_head as u32)),
        (a("attention.head_count_kv"), Value::U32(s.n_head_kv as u32)),
        (a("rope.dimension_count"), Value::U32(s.head_dim as u32)),
        (a("rope.freq_base"), Value::F32(10000.0)),
        (a("attention.layer_norm_rms_epsilon"), Value::F32(1e-5)),
    ];
    if s.n_head * s.head_dim != s.n_embd {
        kv.push((a("attention.key_length"), Value::U32(s.head_dim as u32)));
    }
    if s.spm {
        spm_vocab(&mut kv);
    } else {
        gpt2_vocab(&mut kv);
    }
    let n_vocab = kv
        .iter()
        .find(|(k, _)| k == "tokenizer.ggml.tokens")
        .and_then(|(_, v)| v.as_array())
        .map_or(0, |t| t.len());
    let (d, qd, kvd, ff) = (
        s.n_embd,
        s.n_head * s.head_dim,
        s.n_head_kv * s.head_dim,
        s.n_ff,
    );
    // (name, dims, type)
    let mut tensors: Vec<(String, Vec<usize>, GgmlType)> = vec![
        ("token_embd.weight".into(), vec![d, n_vocab], s.embd),
        ("output_norm.weight".into(), vec![d], GgmlType::F32),
    ];
    if let Some(t) = s.output {
        tensors.push(("output.weight".into(), vec![d, n_vocab], t));
    }
    for (n, dims) in [
        ("attn_norm", vec![d]),
        ("ffn_norm", vec![d]),
        ("attn_sub_norm", vec![qd]),
        ("ffn_sub_norm", vec![ff]),
    ] {
        tensors.push((format!("blk.0.{n}.weight"), dims, GgmlType::F32));
    }
    for (n, cols, rows) in [
        ("attn_q", d, qd),
        ("attn_k", d, kvd),
        ("attn_v", d, kvd),
        ("attn_output", qd, d),
        ("ffn_gate", d, ff),
        ("ffn_up", d, ff),
        ("ffn_down", ff, d),
    ] {
        tensors.push((format!("blk.0.{n}.weight"), vec![cols, rows], s.proj));
    }
    let mut data = Vec::new();
    for (name, dims, ty) in &tensors {
        let n: usize = dims.iter().product();
        data.push(if name.contains("norm") {
            float_bytes(*ty, &vec![1.0; n])
        } else if *ty == GgmlType::I2S {
            let codes: Vec<i8> = (0..n).map(|_| code(&mut rng)).collect();
            let mut out = Vec::new();
            i2s::encode(&codes, 0.05, &mut out);
            out
        } else {
            let xs: Vec<f32> = (0..n).map(|_| float(&mut rng)).collect();
            float_bytes(*ty, &xs)
        });
    }
    let plans: Vec<TensorPlan> = tensors
        .iter()
        .map(|(name, dims, ty)| TensorPlan {
            name: name.clone(),
            dims: dims.iter().map(|&x| x as u64).collect(),
            ty: *ty,
        })
        .collect();
    let mut out = Vec::new();
    write_gguf_to(&mut out, &kv, &plans, |i, w| {
        w.write_all(&data[i])?;
        Ok(())
    })?;
    Ok(out)
}

/// A tiny HF checkpoint as the `hf_convert` target reads it.
struct Ckpt {
    hidden: usize,
    ff: usize,
    heads: usize,
    kv_heads: usize,
    packed: bool,
    bitnet: bool,
}

fn tokenizer_json() -> serde_json::Value {
    json!({
        "version": "1.0",
        "added_tokens": [
            {"id": 8, "content": "<|begin_of_text|>", "special": true},
            {"id": 9, "content": "<|eot_id|>", "special": true}
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": tern::hf::vocab::LLAMA3_REGEX},
             "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]},
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}]},
        "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2, "Ġ": 3, "Ġa": 4, "ab": 5, "ba": 6, "Ċ": 7},
                  "merges": ["a b", ["Ġ", "a"], "b a"]}
    })
}

fn safetensors(tensors: &[(String, &str, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut off = 0;
    for (name, dtype, shape, bytes) in tensors {
        header.insert(
            name.clone(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": [off, off + bytes.len()]}),
        );
        off += bytes.len();
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    for (_, _, _, b) in tensors {
        out.extend_from_slice(b);
    }
    out
}

fn hf_seed(c: &Ckpt, type_byte: u8, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let vocab = 10;
    let hd = c.hidden / c.heads;
    let (qd, kvd) = (c.hidden, c.kv_heads * hd);
    let bf16 = |xs: &[f32]| -> Vec<u8> { float_bytes(GgmlType::BF16, xs) };
    let mut t: Vec<(String, &str, Vec<usize>, Vec<u8>)> = Vec::new();
    let n_emb = vocab * c.hidden;
    t.push((
        "model.embed_tokens.weight".into(),
        "BF16",
        vec![vocab, c.hidden],
        bf16(&(0..n_emb).map(|_| float(&mut rng)).collect::<Vec<_>>()),
    ));
    t.push((
        "model.norm.weight".into(),
        "BF16",
        vec![c.hidden],
        bf16(&vec![1.0; c.hidden]),
    ));
    let (sub_attn, sub_ffn) = if c.bitnet {
        ("self_attn.inner_attn_ln", "mlp.ffn_layernorm")
    } else {
        ("self_attn.attn_sub_norm", "mlp.ffn_sub_norm")
    };
    for (n, len) in [
        ("input_layernorm", c.hidden),
        ("post_attention_layernorm", c.hidden),
        (sub_attn, qd),
        (sub_ffn, c.ff),
    ] {
        t.push((
            format!("model.layers.0.{n}.weight"),
            "BF16",
            vec![len],
            bf16(&vec![1.0; len]),
        ));
    }
    for (n, rows, cols) in [
        ("self_attn.q_proj", qd, c.hidden),
        ("self_attn.k_proj", kvd, c.hidden),
        ("self_attn.v_proj", kvd, c.hidden),
        ("self_attn.o_proj", c.hidden, qd),
        ("mlp.gate_proj", c.ff, c.hidden),
        ("mlp.up_proj", c.ff, c.hidden),
        ("mlp.down_proj", c.hidden, c.ff),
    ] {
        let name = format!("model.layers.0.{n}.weight");
        if c.packed {
            // Four rows per byte, codes 0..=2 (= -1, 0, +1).
            let b: Vec<u8> = (0..rows / 4 * cols)
                .map(|_| {
                    (0..4)
                        .map(|i| ((rng.next_u64() % 3) as u8) << (2 * i))
                        .sum()
                })
                .collect();
            t.push((name.clone(), "U8", vec![rows / 4, cols], b));
            t.push((format!("{name}_scale"), "BF16", vec![1], bf16(&[20.0])));
        } else {
            let xs: Vec<f32> = (0..rows * cols).map(|_| float(&mut rng)).collect();
            t.push((name, "BF16", vec![rows, cols], bf16(&xs)));
        }
    }
    let mut cfg = json!({
        "architectures": [if c.bitnet { "BitnetForCausalLM" } else { "BitNetForCausalLM" }],
        "hidden_size": c.hidden, "intermediate_size": c.ff, "num_hidden_layers": 1,
        "num_attention_heads": c.heads, "num_key_value_heads": c.kv_heads,
        "vocab_size": vocab, "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": true,
        "bos_token_id": 8, "eos_token_id": 9
    });
    if c.packed {
        cfg["quantization_config"] =
            json!({"quant_method": "bitnet", "quantization_mode": "offline"});
    }
    let tcfg = json!({
        "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "add_bos_token": true,
        "chat_template": tern::model::BITNET_CHAT_TEMPLATE
    });
    let mut out = vec![type_byte];
    out.extend_from_slice(cfg.to_string().as_bytes());
    out.push(0);
    out.extend_from_slice(tokenizer_json().to_string().as_bytes());
    out.push(0);
    out.extend_from_slice(tcfg.to_string().as_bytes());
    out.push(0);
    out.extend_from_slice(&safetensors(&t));
    out
}

fn chat_seed(template: &str, messages: &[(&str, &str)]) -> Vec<u8> {
    let mut out = template.as_bytes().to_vec();
    for (r, c) in messages {
        out.push(0);
        out.extend_from_slice(r.as_bytes());
        out.push(0);
        out.extend_from_slice(c.as_bytes());
    }
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(name), bytes)?;
    println!("{} ({} bytes)", dir.join(name).display(), bytes.len());
    Ok(())
}

fn main() -> Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/seeds".into()),
    );
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));

    let g = out.join("gguf_model");
    let base = Shape {
        arch: "bitnet-b1.58",
        n_embd: 128,
        n_ff: 128,
        n_head: 2,
        n_head_kv: 1,
        head_dim: 64,
        proj: GgmlType::I2S,
        embd: GgmlType::F16,
        output: None,
        spm: false,
    };
    write(&g, "i2s-gpt2.gguf", &tiny_gguf(&base, 1)?)?;
    write(
        &g,
        "i2s-q8head-spm.gguf",
        &tiny_gguf(
            &Shape {
                embd: GgmlType::F32,
                output: Some(GgmlType::Q8_0),
                spm: true,
                ..base
            },
            2,
        )?,
    )?;
    let small = Shape {
        n_embd: 32,
        n_ff: 32,
        n_head: 2,
        n_head_kv: 2,
        head_dim: 16,
        proj: GgmlType::F32,
        embd: GgmlType::F32,
        ..base
    };
    write(&g, "f32-gpt2.gguf", &tiny_gguf(&small, 3)?)?;
    write(
        &g,
        "f16-bf16embd-bitnet.gguf",
        &tiny_gguf(
            &Shape {
                arch: "bitnet",
                proj: GgmlType::F16,
                embd: GgmlType::BF16,
                head_dim: 8,
                ..small
            },
            4,
        )?,
    )?;
    for f in std::fs::read_dir(root.join("tests/data/reliability"))? {
        let p = f?.path();
        write(
            &g,
            &p.file_name().unwrap().to_string_lossy(),
            &std::fs::read(&p)?,
        )?;
    }

    // type byte: outtype = b % 5 (i2_s, tq2_0, tq1_0, f16, f32), embd = b / 5 % 4
    // (f16, f32, q8_0, q6_k).
    let h = out.join("hf_convert");
    let packed = Ckpt {
        hidden: 128,
        ff: 128,
        heads: 2,
        kv_heads: 1,
        packed: true,
        bitnet: false,
    };
    write(&h, "packed-i2s.bin", &hf_seed(&packed, 0, 5))?;
    write(&h, "packed-tq2-q8.bin", &hf_seed(&packed, 1 + 5 * 2, 6))?;
    let cont = Ckpt {
        hidden: 32,
        ff: 64,
        heads: 4,
        kv_heads: 2,
        packed: false,
        bitnet: false,
    };
    write(&h, "bf16-f16.bin", &hf_seed(&cont, 3, 7))?;
    write(
        &h,
        "bitnet-f32.bin",
        &hf_seed(
            &Ckpt {
                bitnet: true,
                ..cont
            },
            4 + 5,
            8,
        ),
    )?;

    let s = out.join("sentencepiece");
    write(
        &s,
        "spm-tiny.model",
        &std::fs::read(root.join("models/fixtures/spm-tiny/tokenizer.model"))?,
    )?;

    let c = out.join("chat_template");
    let msgs = [
        ("system", "You are terse."),
        ("user", "Hi <|eot_id|> {{ x }}"),
        ("assistant", "Hello."),
        ("user", "Again?"),
    ];
    write(
        &c,
        "bitnet.txt",
        &chat_seed(tern::model::BITNET_CHAT_TEMPLATE, &msgs),
    )?;
    write(&c, "llama3.txt", &chat_seed("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}", &msgs))?;
    write(&c, "chatml.txt", &chat_seed("{% for m in messages %}{% if m.role == 'system' and not loop.first %}{{ raise_exception('system must come first') }}{% endif %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}", &msgs))?;
    write(&c, "methods.txt", &chat_seed("{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{{ m.content.strip().upper() | tojson }}{{ m.role.startswith('us') }}{{ m.get('role') }}{% endfor %}{{ ns.n }}{{ messages[-1]['content'].split(' ') | length }}", &msgs))?;
    Ok(())
}
