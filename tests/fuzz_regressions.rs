//! The fuzz targets' bodies (`fuzz/src/lib.rs`) on stable, over every seed
//! (`fuzz/seeds/<target>/`) and every input that once crashed a target
//! (`fuzz/regressions/<target>/`): each must run without a panic. The
//! campaign itself needs nightly and cargo-fuzz (README, "Fuzzing").

#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod bodies;

use std::path::PathBuf;

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut v = Vec::new();
    for kind in ["seeds", "regressions"] {
        let dir = root.join(kind).join(target);
        if let Ok(rd) = std::fs::read_dir(&dir) {
            v.extend(rd.map(|e| e.unwrap().path()).filter(|p| p.is_file()));
        }
    }
    v.sort();
    v
}

fn replay(target: &str, body: fn(&[u8])) {
    let files = inputs(target);
    assert!(!files.is_empty(), "no seeds for {target}");
    for f in files {
        let data = std::fs::read(&f).unwrap();
        eprintln!("{target}: {}", f.display());
        body(&data);
    }
}

#[test]
fn gguf_model() {
    replay("gguf_model", bodies::gguf_model);
}

#[test]
fn hf_convert() {
    replay("hf_convert", bodies::hf_convert);
}

#[test]
fn sentencepiece() {
    replay("sentencepiece", bodies::sentencepiece);
}

#[test]
fn chat_template() {
    replay("chat_template", bodies::chat_template);
    // The template that the fuzzer found slow (a list repeated in a loop:
    // 14 s and 2 GB with minijinja 2.24, 6 s without a budget on 3.1) now
    // stops at the render's fuel budget.
    let slow = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions/chat_template/list-repeated-in-a-loop");
    let start = std::time::Instant::now();
    bodies::chat_template(&std::fs::read(slow).unwrap());
    let took = start.elapsed();
    assert!(took.as_secs_f64() < 3.0, "{took:?}");
}

/// The seeds are what they claim: the valid ones load (so the fuzzer starts
/// past the parsers) and convert.
#[test]
fn seeds_reach_the_model() {
    for f in inputs("gguf_model") {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let g = tern::gguf::GgufFile::from_bytes(std::fs::read(&f).unwrap());
        let loaded = g.and_then(tern::model::Model::from_gguf);
        let reproducer = ["block-count", "errmsg", "keylen"]
            .iter()
            .any(|p| name.starts_with(p));
        assert_eq!(loaded.is_ok(), !reproducer, "{name}: {:?}", loaded.err());
    }
    for f in inputs("hf_convert") {
        let data = std::fs::read(&f).unwrap();
        let mut parts = data[1..].splitn(4, |&b| b == 0);
        let cfg: serde_json::Value = serde_json::from_slice(parts.next().unwrap()).unwrap();
        let tj: serde_json::Value = serde_json::from_slice(parts.next().unwrap()).unwrap();
        let tc: serde_json::Value = serde_json::from_slice(parts.next().unwrap()).unwrap();
        let ck = tern::hf::Checkpoint::from_bytes(parts.next().unwrap().to_vec()).unwrap();
        let cfg = tern::hf::HfConfig::from_json(&cfg).unwrap();
        let files = tern::hf::vocab::TokenizerFiles {
            tokenizer_json: Some(tj),
            tokenizer_config: tc,
            ..Default::default()
        };
        let ty = [
            tern::quant::GgmlType::I2S,
            tern::quant::GgmlType::TQ2_0,
            tern::quant::GgmlType::TQ1_0,
            tern::quant::GgmlType::F16,
            tern::quant::GgmlType::F32,
        ][usize::from(data[0]) % 5];
        let mut out = Vec::new();
        tern::convert::convert_to_writer(
            &cfg,
            &ck,
            &files,
            "seed",
            ty,
            tern::quant::GgmlType::F16,
            &mut out,
        )
        .unwrap_or_else(|e| panic!("{}: {e:#}", f.display()));
    }
}
