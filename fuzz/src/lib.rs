//! The bodies of the fuzz targets, shared by the libFuzzer binaries
//! (`fuzz_targets/*.rs`) and by tern's stable regression test
//! (`tests/fuzz_regressions.rs` includes this file), which replays the seed
//! corpora and every crash input kept in `fuzz/regressions/<target>/`.
//! A panic is a finding.

use serde_json::Value as J;
use tern::chat::{ChatTemplate, Message};
use tern::convert::convert_to_writer;
use tern::gguf::GgufFile;
use tern::hf::sentencepiece::parse_model;
use tern::hf::vocab::TokenizerFiles;
use tern::hf::{Checkpoint, HfConfig};
use tern::model::{Context, Model};
use tern::quant::{i2s, q6_k, q8_0, tq, GgmlType};
use tern::tokenizer::{Tokenizer, VocabSpec};

/// Every per-type decoder `tern inspect` and the loader use, on each tensor.
fn decode_tensors(g: &GgufFile) {
    for t in &g.tensors {
        let data = g.tensor_data(t);
        let n = t.n_elements_usize();
        match t.ty {
            GgmlType::I2S if i2s::validate(data, n).is_ok() => {
                let _ = i2s::decode_codes(data, n);
            }
            GgmlType::TQ2_0 => {
                let _ = tq::decode_tq2_0(data);
            }
            GgmlType::TQ1_0 => {
                let _ = tq::decode_tq1_0(data);
            }
            GgmlType::Q8_0 => {
                let mut out = vec![0f32; n];
                q8_0::dequantize(data, &mut out);
            }
            GgmlType::Q6K => {
                let mut out = vec![0f32; n];
                q6_k::dequantize(data, &mut out);
            }
            _ => {}
        }
    }
}

/// The GGUF reader and the model loader on arbitrary bytes, then a short
/// forward pass and the tokenizer on whatever loads. Properties: no panic,
/// no abort, no allocation past the input's size (libFuzzer's -rss_limit_mb
/// and -malloc_limit_mb), no hang; a model that loads must run.
pub fn gguf_model(data: &[u8]) {
    let _ = tern::cli::set_threads(Some(1));
    let Ok(g) = GgufFile::from_bytes(data.to_vec()) else {
        return;
    };
    for (k, v) in &g.kv {
        let _ = tern::untrusted::name(k);
        let _ = v.display_short();
    }
    decode_tensors(&g);
    let Ok(m) = Model::from_gguf(g) else {
        return;
    };
    let _ = m.n_params();
    let _ = m.bytes_per_token();
    // A model that loads runs: two tokens in one batch, then one more.
    let nv = u32::try_from(m.hp.n_vocab).expect("the tokenizer checks this");
    let toks: Vec<u32> = data.iter().take(3).map(|&b| u32::from(b) % nv).collect();
    let mut ctx = Context::new(&m, 4, false);
    ctx.eval(&toks[..2.min(toks.len())], true)
        .expect("a loaded model evaluates");
    if toks.len() == 3 {
        ctx.eval(&toks[2..], false)
            .expect("a loaded model evaluates");
    }
    // Its tokenizer round-trips text without panicking.
    if let Ok(ids) = m.tokenizer.encode("ab a\n<|eot_id|> é", true) {
        let _ = m.tokenizer.decode(&ids, true);
    }
    for id in 0..nv.min(64) {
        let _ = m.tokenizer.token_bytes(id, true);
    }
    let _ = tern::chat::ChatTemplate::for_model(&m);
}

const OUTTYPES: [GgmlType; 5] = [
    GgmlType::I2S,
    GgmlType::TQ2_0,
    GgmlType::TQ1_0,
    GgmlType::F16,
    GgmlType::F32,
];
const EMBD_TYPES: [GgmlType; 4] = [GgmlType::F16, GgmlType::F32, GgmlType::Q8_0, GgmlType::Q6K];

/// The converter's inputs: config.json, tokenizer.json,
/// tokenizer_config.json and a safetensors file, in one buffer:
/// `[type byte] config \0 tokenizer.json \0 tokenizer_config \0 safetensors`
/// (outtype = byte % 5 of i2_s, tq2_0, tq1_0, f16, f32; embedding type =
/// byte / 5 % 4 of f16, f32, q8_0, q6_k). Properties: no panic or abort,
/// and what the converter writes, the runtime loads (a file the runtime
/// refuses must be refused by the converter instead).
pub fn hf_convert(data: &[u8]) {
    let _ = tern::cli::set_threads(Some(1));
    let Some((&ty, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(4, |&b| b == 0);
    let (Some(cfg), Some(tj), Some(tc), Some(st)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let json = |b: &[u8]| serde_json::from_slice::<J>(b).ok();
    let Some(cfg) = json(cfg) else { return };
    let Ok(cfg) = HfConfig::from_json(&cfg) else {
        return;
    };
    let Ok(ck) = Checkpoint::from_bytes(st.to_vec()) else {
        return;
    };
    let files = TokenizerFiles {
        tokenizer_json: json(tj),
        tokenizer_config: json(tc).unwrap_or(J::Null),
        ..Default::default()
    };
    let outtype = OUTTYPES[usize::from(ty) % 5];
    let embd = EMBD_TYPES[usize::from(ty) / 5 % 4];
    let mut out = Vec::new();
    if convert_to_writer(&cfg, &ck, &files, "fuzz", outtype, embd, &mut out).is_err() {
        return;
    }
    let g = GgufFile::from_bytes(out).expect("the converter wrote a GGUF tern cannot read");
    if let Err(e) = Model::from_gguf(g) {
        panic!("the converter wrote a GGUF the runtime refuses: {e:#}");
    }
}

/// The SentencePiece `tokenizer.model` reader (a protobuf wire parser), and
/// the runtime's SentencePiece tokenizer built from what it reads.
pub fn sentencepiece(data: &[u8]) {
    let Ok(m) = parse_model(data) else {
        return;
    };
    let id = |x: Option<i32>| x.and_then(|i| u32::try_from(i).ok());
    let spec = VocabSpec {
        model: "llama".into(),
        pre: None,
        tokens: m.pieces.iter().map(|p| p.piece.clone()).collect(),
        token_types: m.pieces.iter().map(|p| p.kind.gguf_token_type()).collect(),
        merges: vec![],
        scores: m.pieces.iter().map(|p| p.score).collect(),
        bos: id(m.bos_id),
        eos: id(m.eos_id),
        eot: None,
        add_bos: true,
    };
    let Ok(tok) = Tokenizer::from_spec(&spec) else {
        return;
    };
    for text in ["Hello world", "", " a  b\n\té東京🚀", "<s></s><unk>"] {
        if let Ok(ids) = tok.encode(text, true) {
            let _ = tok.decode(&ids, true);
            let _ = tok.decode(&ids, false);
        }
    }
}

/// Chat-template rendering with hostile templates and messages:
/// `template \0 role \0 content \0 role \0 content …`. Properties: no
/// panic, no hang, no unbounded memory.
pub fn chat_template(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let Some(template) = parts.next() else {
        return;
    };
    let rest: Vec<&str> = parts.collect();
    let messages: Vec<Message> = rest
        .chunks(2)
        .map(|c| Message::new(c[0], c.get(1).copied().unwrap_or("")))
        .collect();
    let Ok(t) = ChatTemplate::new(template, "<|begin_of_text|>", "<|eot_id|>") else {
        return;
    };
    let _ = t.render(&messages, true);
    let _ = t.render(&messages, false);
}
