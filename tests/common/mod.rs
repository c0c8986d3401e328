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

/// A copy (`dir/name`) of the GGUF at `src` with metadata `key` set to `v`
/// (added when absent).
pub fn with_key(src: &Path, key: &str, v: tern::gguf::Value, dir: &Path, name: &str) -> PathBuf {
    let g = tern::gguf::GgufFile::open(src).unwrap();
    let mut kv = g.kv.clone();
    match kv.iter_mut().find(|(k, _)| k == key) {
        Some(e) => e.1 = v,
        None => kv.push((key.to_string(), v)),
    }
    let p = dir.join(name);
    rewrite_gguf(&g, &p, &kv);
    p
}

/// Write a copy of the GGUF `src` with metadata `kv`, each tensor passed
/// through `f` (return `None` to drop it; `extra` tensors are appended).
pub fn rewrite_gguf_tensors(
    src: &tern::gguf::GgufFile,
    out: &Path,
    kv: &[(String, tern::gguf::Value)],
    mut f: impl FnMut(&tern::gguf::TensorInfo, &[u8]) -> Option<(tern::gguf::TensorPlan, Vec<u8>)>,
    extra: Vec<(tern::gguf::TensorPlan, Vec<u8>)>,
) {
    let mut tensors: Vec<(tern::gguf::TensorPlan, Vec<u8>)> = src
        .tensors
        .iter()
        .filter_map(|t| f(t, src.tensor_data(t)))
        .collect();
    tensors.extend(extra);
    let plans: Vec<_> = tensors.iter().map(|(p, _)| p.clone()).collect();
    tern::gguf::write_gguf(out, false, kv, &plans, |i, w| {
        w.write_all(&tensors[i].1)?;
        Ok(())
    })
    .unwrap();
}

/// Metadata of `g` with keys renamed by `f` (return `None` to drop a key).
pub fn map_metadata(
    g: &tern::gguf::GgufFile,
    mut f: impl FnMut(&str) -> Option<String>,
) -> Vec<(String, tern::gguf::Value)> {
    g.kv.iter()
        .filter_map(|(k, v)| f(k).map(|k2| (k2, v.clone())))
        .collect()
}

/// A safetensors tensor as the tests rewrite them: dtype, shape, bytes.
pub type StTensor = (safetensors::Dtype, Vec<usize>, Vec<u8>);

/// Copy the Hugging Face folder `src` to `dst`, passing every tensor of its
/// `model.safetensors` through `f` (name → `None` drops it); `extra` adds.
pub fn rewrite_checkpoint(
    src: &Path,
    dst: &Path,
    mut f: impl FnMut(&str, StTensor) -> Option<StTensor>,
    extra: Vec<(String, StTensor)>,
) {
    copy_dir(src, dst);
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, StTensor)> = Vec::new();
    let mut names: Vec<String> = st.names().into_iter().cloned().collect();
    names.sort();
    for n in names {
        let t = st.tensor(&n).unwrap();
        if let Some(x) = f(&n, (t.dtype(), t.shape().to_vec(), t.data().to_vec())) {
            out.push((n, x));
        }
    }
    out.extend(extra);
    let views: Vec<(String, safetensors::tensor::TensorView)> = out
        .iter()
        .map(|(n, (d, s, b))| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let p = dst.join("model.safetensors");
    std::fs::remove_file(&p).unwrap();
    safetensors::serialize_to_file(views, &None, &p).unwrap();
}

/// A bf16 or f32 scalar tensor's value.
pub fn scalar_f32(t: &StTensor) -> f32 {
    match t.0 {
        safetensors::Dtype::BF16 => half::bf16::from_le_bytes([t.2[0], t.2[1]]).to_f32(),
        safetensors::Dtype::F32 => f32::from_le_bytes([t.2[0], t.2[1], t.2[2], t.2[3]]),
        d => panic!("scalar of dtype {:?}", d),
    }
}

/// Edit a folder's config.json in place.
pub fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut j);
    std::fs::write(&p, serde_json::to_string(&j).unwrap()).unwrap();
}

/// Split the folder's `model.safetensors` into `n` shards (tensor `name`
/// goes to shard `shard_of(index in name order, name)`) with an index file,
/// as `save_pretrained` writes large checkpoints.
pub fn shard_checkpoint(dir: &Path, n: usize, shard_of: impl Fn(usize, &str) -> usize) {
    let single = dir.join("model.safetensors");
    let bytes = std::fs::read(&single).unwrap();
    std::fs::remove_file(&single).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut all = st.tensors();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let mut map = serde_json::Map::new();
    for s in 0..n {
        let fname = format!("model-{:05}-of-{:05}.safetensors", s + 1, n);
        let part: Vec<_> = all
            .iter()
            .enumerate()
            .filter(|(i, (name, _))| shard_of(*i, name) == s)
            .map(|(_, (name, v))| (name.clone(), v.clone()))
            .collect();
        for (name, _) in &part {
            map.insert(name.clone(), serde_json::json!(fname));
        }
        std::fs::write(
            dir.join(&fname),
            safetensors::serialize(part, &None).unwrap(),
        )
        .unwrap();
    }
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_string(&serde_json::json!({"metadata": {}, "weight_map": map})).unwrap(),
    )
    .unwrap();
}

/// Convert the checkpoint `input` to `out` with `ty` projections and an
/// `embd` token embedding (library call, quiet, no `--force`); panics with
/// the error chain on failure. Returns `out`.
pub fn convert_to(
    input: &Path,
    out: &Path,
    ty: tern::quant::GgmlType,
    embd: tern::quant::GgmlType,
) -> PathBuf {
    tern::convert::convert(&tern::convert::ConvertOptions {
        input: input.to_path_buf(),
        outfile: Some(out.to_path_buf()),
        outtype: ty,
        embd_type: embd,
        force: false,
        quiet: true,
    })
    .unwrap_or_else(|e| panic!("convert {}: {:#}", input.display(), e));
    out.to_path_buf()
}
