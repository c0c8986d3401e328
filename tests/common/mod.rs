//! Shared helpers for the integration tests: vendored data paths, reference
//! bundles, running the binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const FIXTURES: &[&str] = &["b158-bf16", "b158-sparse", "b158-packed", "bitnet-silu"];
pub const ALL_MODELS: &[&str] = &[
    "b158-bf16",
    "b158-sparse",
    "b158-packed",
    "bitnet-silu",
    "tern-shakespeare",
];

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Hugging Face folder of a fixture or of tern-shakespeare.
pub fn hf_dir(name: &str) -> PathBuf {
    if name == "tern-shakespeare" {
        root().join("models/tern-shakespeare")
    } else {
        root().join("models/fixtures").join(name)
    }
}

pub fn ref_gguf(name: &str) -> PathBuf {
    root()
        .join("vendor/reference/gguf")
        .join(format!("{}.i2_s.gguf", name))
}

/// `vendor/reference/<which>/<name>` (which = transformers or bitnet.cpp).
pub fn ref_dir(which: &str, name: &str) -> PathBuf {
    root().join("vendor/reference").join(which).join(name)
}

pub struct RefPrompt {
    pub name: String,
    pub text: String,
    pub tokens: Vec<u32>,
    pub vocab: usize,
}

pub fn prompts(dir: &Path) -> Vec<RefPrompt> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {}", dir.display(), e))
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".tokens.json"))
        .collect();
    entries.sort();
    for p in entries {
        let j: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let name = p
            .file_name()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches(".tokens.json")
            .to_string();
        out.push(RefPrompt {
            name,
            text: j["text"].as_str().unwrap().to_string(),
            tokens: j["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap() as u32)
                .collect(),
            vocab: j["vocab"].as_u64().unwrap() as usize,
        });
    }
    assert!(!out.is_empty(), "no reference prompts in {}", dir.display());
    out
}

pub fn ref_logits(dir: &Path, prompt: &str) -> Vec<f32> {
    tern::metrics::read_f32_file(&dir.join(format!("{}.logits.f32", prompt))).unwrap()
}

pub fn tern() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tern"))
}

pub fn run_tern(args: &[&str], cwd: Option<&Path>) -> Output {
    let mut c = tern();
    c.args(args);
    if let Some(d) = cwd {
        c.current_dir(d);
    }
    c.output().expect("run tern")
}

/// Run tern with `input` on stdin (stdout and stderr captured).
pub fn run_with_stdin(args: &[&str], input: &str) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = tern()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tern");
    let mut stdin = child.stdin.take().expect("stdin");
    // tern may stop reading early (a bad command); a closed pipe is fine.
    let _ = stdin.write_all(input.as_bytes());
    drop(stdin);
    child.wait_with_output().expect("wait for tern")
}

/// A failing run: non-zero exit, no panic, exactly one `tern: error:` line
/// (returned).
pub fn assert_clean_failure(o: &Output, needle: &str) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {}",
        err
    );
    assert_eq!(o.status.code(), Some(1), "stderr: {}", err);
    assert!(!err.contains("panicked"), "panic: {}", err);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("tern: error:"))
        .collect();
    assert_eq!(lines.len(), 1, "want one error line, stderr: {}", err);
    assert!(
        lines[0].to_lowercase().contains(&needle.to_lowercase()),
        "error {:?} does not mention {:?}",
        lines[0],
        needle
    );
    assert!(!lines[0].contains('\n'));
    lines[0].to_string()
}

/// Copy a folder (one level) into `dst`.
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
        }
    }
}

/// Names of the files in a folder.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Write a copy of the GGUF `src` with metadata `kv` and the same tensors.
pub fn rewrite_gguf(src: &tern::gguf::GgufFile, out: &Path, kv: &[(String, tern::gguf::Value)]) {
    let plans: Vec<tern::gguf::TensorPlan> = src
        .tensors
        .iter()
        .map(|t| tern::gguf::TensorPlan {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ty: t.ty,
        })
        .collect();
    tern::gguf::write_gguf(out, false, kv, &plans, |i, w| {
        w.write_all(src.tensor_data(&src.tensors[i]))?;
        Ok(())
    })
    .unwrap();
}
