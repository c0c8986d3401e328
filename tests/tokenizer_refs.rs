//! The runtime tokenizer against the Hugging Face tokenizers' own token ids.
//!
//! For every fixture and the tern-shakespeare model vendored in `models/` (references in `vendor/reference`), a `VocabSpec` is
//! built from `tokenizer.json` the way the converter writes GGUF tokenizer metadata,
//! and every `reference/transformers/<name>/<prompt>.tokens.json` must encode to the
//! same ids.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tern::tokenizer::{StreamDecoder, Tokenizer, VocabSpec};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// (name, model folder) for every model with transformers token references.
fn models() -> Vec<(&'static str, PathBuf)> {
    let mut out: Vec<(&'static str, PathBuf)> =
        ["b158-bf16", "b158-sparse", "b158-packed", "bitnet-silu"]
            .into_iter()
            .map(|n| (n, root().join("models/fixtures").join(n)))
            .collect();
    out.push(("tern-shakespeare", root().join("models/tern-shakespeare")));
    out
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("cannot parse {}: {e}", path.display()))
}

/// First id of a config field that may be a number or a list of numbers.
fn config_id(config: &Value, key: &str) -> Option<u32> {
    match &config[key] {
        Value::Number(n) => n.as_u64().map(|v| v as u32),
        Value::Array(a) => a.first().and_then(Value::as_u64).map(|v| v as u32),
        _ => None,
    }
}

/// Build the GGUF vocabulary metadata a converter writes for an HF byte-level BPE
/// tokenizer: tokens by id (model vocab plus added tokens), type 3 for added special
/// tokens, merges as "a b", pre = llama-bpe, bos/eos from config.json.
fn vocab_spec(model_dir: &Path) -> VocabSpec {
    let tj = read_json(&model_dir.join("tokenizer.json"));
    let config = read_json(&model_dir.join("config.json"));
    let model = &tj["model"];
    assert_eq!(
        model["type"],
        "BPE",
        "{}: not a BPE tokenizer",
        model_dir.display()
    );

    let mut entries: Vec<(u32, String, i32)> = Vec::new();
    for (text, id) in model["vocab"]
        .as_object()
        .expect("model.vocab is an object")
    {
        entries.push((id.as_u64().unwrap() as u32, text.clone(), 1));
    }
    for added in tj["added_tokens"].as_array().into_iter().flatten() {
        let id = added["id"].as_u64().unwrap() as u32;
        let content = added["content"].as_str().unwrap().to_string();
        let ty = if added["special"].as_bool().unwrap_or(false) {
            3
        } else {
            1
        };
        entries.retain(|e| e.0 != id);
        entries.push((id, content, ty));
    }
    let n = entries.iter().map(|e| e.0 as usize + 1).max().unwrap_or(0);
    let mut tokens: Vec<String> = (0..n).map(|i| format!("[PAD{i}]")).collect();
    let mut token_types = vec![5; n];
    for (id, text, ty) in entries {
        tokens[id as usize] = text;
        token_types[id as usize] = ty;
    }

    let merges = model["merges"]
        .as_array()
        .expect("model.merges is an array")
        .iter()
        .map(|m| match m {
            Value::String(s) => s.clone(),
            Value::Array(pair) => format!(
                "{} {}",
                pair[0].as_str().unwrap(),
                pair[1].as_str().unwrap()
            ),
            other => panic!("unexpected merge entry {other}"),
        })
        .collect();

    let eot = tokens
        .iter()
        .position(|t| t == "<|eot_id|>")
        .map(|i| i as u32);
    VocabSpec {
        model: "gpt2".into(),
        pre: Some("llama-bpe".into()),
        tokens,
        token_types,
        merges,
        scores: Vec::new(),
        bos: config_id(&config, "bos_token_id"),
        eos: config_id(&config, "eos_token_id"),
        eot,
        add_bos: true,
    }
}

/// (prompt name, text, expected ids with BOS) for every reference prompt of a model.
fn references(name: &str) -> Vec<(String, String, Vec<u32>)> {
    let dir = root().join("vendor/reference/transformers").join(name);
    let mut out = Vec::new();
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let Some(prompt) = file.strip_suffix(".tokens.json") else {
            continue;
        };
        let j = read_json(&path);
        let text = j["text"].as_str().expect("text").to_string();
        let ids = j["tokens"]
            .as_array()
            .expect("tokens")
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        out.push((prompt.to_string(), text, ids));
    }
    out.sort();
    assert!(
        !out.is_empty(),
        "no <prompt>.tokens.json references in {}",
        dir.display()
    );
    out
}

fn tokenizer(model_dir: &Path) -> Tokenizer {
    Tokenizer::from_spec(&vocab_spec(model_dir))
        .unwrap_or_else(|e| panic!("{}: {e:#}", model_dir.display()))
}

#[test]
fn encode_matches_transformers_references() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for (name, dir) in models() {
        let tok = tokenizer(&dir);
        for (prompt, text, expected) in references(name) {
            let got = tok.encode(&text, true).unwrap();
            if got != expected {
                failures.push(format!(
                    "{name}/{prompt}: {text:?}\n  expected {expected:?}\n  got      {got:?}"
                ));
            }
            checked += 1;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked >= 24, "only {checked} references checked");
}

#[test]
fn decode_round_trips_reference_texts() {
    for (name, dir) in models() {
        let tok = tokenizer(&dir);
        for (prompt, text, expected) in references(name) {
            assert_eq!(expected[0], tok.bos().unwrap(), "{name}/{prompt}: BOS");
            // BOS is a control token: it prints nothing unless special is asked for.
            assert_eq!(tok.decode(&expected, false), text, "{name}/{prompt}");
            assert_eq!(tok.decode(&expected[1..], false), text, "{name}/{prompt}");
            let bos_text = tok.token_text(expected[0]).to_string();
            assert_eq!(
                tok.decode(&expected, true),
                format!("{bos_text}{text}"),
                "{name}/{prompt}"
            );
        }
    }
}

#[test]
fn special_token_text_in_prompt_is_one_id() {
    for (name, dir) in models() {
        let tok = tokenizer(&dir);
        let eot = tok.find_token("<|eot_id|>").expect("<|eot_id|> in vocab");
        let bos = tok.bos().unwrap();
        let text = "User: hi there<|eot_id|>Assistant:";
        let ids = tok.encode(text, true).unwrap();
        assert_eq!(ids[0], bos, "{name}");
        assert_eq!(
            ids.iter().filter(|&&i| i == eot).count(),
            1,
            "{name}: {ids:?}"
        );
        // The parts around the special token are tokenized on their own.
        let pos = ids.iter().position(|&i| i == eot).unwrap();
        assert_eq!(
            ids[1..pos],
            tok.encode("User: hi there", false).unwrap()[..]
        );
        assert_eq!(ids[pos + 1..], tok.encode("Assistant:", false).unwrap()[..]);
        assert_eq!(tok.decode(&ids[1..], true), text, "{name}");
        assert_eq!(
            tok.decode(&ids[1..], false),
            "User: hi thereAssistant:",
            "{name}"
        );
        // BOS text inside a prompt is the BOS id too.
        let ids = tok
            .encode(&format!("{}x", tok.token_text(bos)), false)
            .unwrap();
        assert_eq!(ids[0], bos, "{name}");
        assert_eq!(ids.len(), 2, "{name}: {ids:?}");
        // Without parse_special the control texts are plain text.
        let plain = tok.encode_with(text, false, false).unwrap();
        assert!(!plain.contains(&eot) && !plain.contains(&bos), "{name}");
        assert_eq!(tok.decode(&plain, false), text, "{name}");
        assert_eq!(
            tok.encode_with(text, true, true).unwrap(),
            tok.encode(text, true).unwrap()
        );
    }
}

#[test]
fn end_of_generation_ids() {
    for (name, dir) in models() {
        let tok = tokenizer(&dir);
        let eos = tok.eos().expect("eos");
        let eot = tok.eot().expect("eot");
        assert!(tok.is_eog(eos), "{name}");
        assert!(tok.is_eog(eot), "{name}");
        assert!(
            tok.is_eog(tok.find_token("<|end_of_text|>").unwrap()),
            "{name}"
        );
        assert!(!tok.is_eog(tok.bos().unwrap()), "{name}");
        let a = tok.encode("a", false).unwrap();
        assert!(!tok.is_eog(a[0]), "{name}");
        assert!(!tok.is_eog(u32::MAX), "{name}");
        assert!(tok.token_bytes(tok.n_vocab() as u32, true).is_empty());
        assert_eq!(tok.token_text(tok.n_vocab() as u32), "");
    }
}

#[test]
fn stream_decoder_on_split_multibyte_chars() {
    let (_, dir) = &models()[0];
    let tok = tokenizer(dir);
    let text = "Ünïcödé — 東京 🚀";
    let ids = tok.encode(text, false).unwrap();
    // At least one character must be split across tokens for this to test anything.
    let split = ids
        .iter()
        .any(|&id| std::str::from_utf8(&tok.token_bytes(id, false)).is_err());
    assert!(split, "no token splits a multi-byte character: {ids:?}");

    let mut dec = StreamDecoder::new();
    let mut out = String::new();
    let mut held = 0;
    for &id in &ids {
        let piece = dec.push(&tok.token_bytes(id, false));
        assert!(!piece.contains('\u{FFFD}'), "{piece:?}");
        if piece.is_empty() {
            held += 1;
        }
        out.push_str(&piece);
    }
    out.push_str(&dec.flush());
    assert_eq!(out, text);
    assert!(held > 0);
}

#[test]
fn split_prompt_needs_the_llama3_pre_tokenizer() {
    // The `split` prompt separates the LLaMA-3 split from GPT-2's: with the GPT-2
    // regex the same vocabulary must give different ids.
    for (name, dir) in models() {
        let mut spec = vocab_spec(&dir);
        spec.pre = Some("gpt-2".into());
        let gpt2 = Tokenizer::from_spec(&spec).unwrap();
        let (_, text, expected) = references(name)
            .into_iter()
            .find(|r| r.0 == "split")
            .expect("split prompt");
        assert_ne!(gpt2.encode(&text, true).unwrap(), expected, "{name}");
    }
}
