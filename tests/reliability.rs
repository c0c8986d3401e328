//! Hostile input and concurrent use (issue 15): each fault found by fuzzing
//! and by hand, driven through the real binary, with its input kept under
//! `tests/data/reliability/` or built here from a fixture.

mod common;

use common::*;
use serde_json::{json, Value as J};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tern::gguf::{GgufFile, Value};

fn data(name: &str) -> PathBuf {
    root().join("tests/data/reliability").join(name)
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `tern logits -m model --tokens tokens --out out`.
fn logits(model: &Path, tokens: &str, out: &Path) -> std::process::Output {
    run_tern(
        &[
            "logits",
            "-m",
            model.to_str().unwrap(),
            "--tokens",
            tokens,
            "--out",
            out.to_str().unwrap(),
        ],
        None,
    )
}

/// `tern logits` on `model`: must fail cleanly, mention `needle`, write nothing.
fn logits_fails(model: &Path, needle: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let o = logits(model, "1,2,3", &dir.path().join("out.f32"));
    assert_clean_failure(&o, needle);
    assert!(listing(dir.path()).is_empty(), "{:?}", listing(dir.path()));
    stderr(&o)
}

// ---- 1. attention.key_length wrapping n_head · head_dim -----------------

#[test]
fn keylen_wrap_is_refused_before_any_allocation() {
    let f = data("keylen-wrap-capacity-overflow.gguf");
    let g = GgufFile::open(&f).unwrap();
    let kl = g.get_u64("bitnet-b1.58.attention.key_length").unwrap();
    assert!(kl > 1 << 63, "the reproducer's key_length wraps: {kl}");
    logits_fails(&f, "attention.key_length");
}

#[test]
fn head_widths_are_checked_arithmetic_and_against_the_tensors() {
    let f = data("keylen-wrap-capacity-overflow.gguf");
    let dir = tempfile::tempdir().unwrap();
    let k = "bitnet-b1.58.attention.key_length";
    // In range on its own, but 2 heads × 2^31 is past any width.
    let p = with_key(&f, k, Value::U64(1 << 31), dir.path(), "wide.gguf");
    logits_fails(&p, "overflows");
    // A sane key length that the tensors do not have: named tensor mismatch.
    let p = with_key(&f, k, Value::U32(32), dir.path(), "k32.gguf");
    logits_fails(&p, "the hyper-parameters imply");
    // The repaired file (key_length 16 = 32 / 2 heads) loads and runs.
    let p = with_key(&f, k, Value::U32(16), dir.path(), "ok.gguf");
    let o = logits(&p, "1,2", &dir.path().join("ok.f32"));
    assert!(o.status.success(), "{}", stderr(&o));
}

// ---- 2. block_count = 2^30 --------------------------------------------

#[test]
fn huge_block_count_fails_before_allocating() {
    let f = data("block-count-alloc-abort.gguf");
    assert_eq!(std::fs::metadata(&f).unwrap().len(), 1280);
    let t = Instant::now();
    logits_fails(&f, "block_count");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
}

#[test]
fn a_block_count_past_the_tensors_present_is_refused() {
    let f = data("keylen-wrap-capacity-overflow.gguf");
    let dir = tempfile::tempdir().unwrap();
    let ok = with_key(
        &f,
        "bitnet-b1.58.attention.key_length",
        Value::U32(16),
        dir.path(),
        "ok.gguf",
    );
    // One layer's tensors (13 in all); two layers claimed.
    assert_eq!(GgufFile::open(&ok).unwrap().tensors.len(), 13);
    let p = with_key(
        &ok,
        "bitnet-b1.58.block_count",
        Value::U32(2),
        dir.path(),
        "two.gguf",
    );
    logits_fails(&p, "block_count");
}

// ---- 5. text from files in messages ------------------------------------

fn assert_safe_text(s: &str) {
    assert!(!s.contains('\u{1b}'), "raw ESC reached the terminal: {s:?}");
    assert!(!s.contains('\r'), "raw CR: {s:?}");
    for l in s.lines() {
        assert!(l.len() < 600, "line of {} bytes", l.len());
    }
}

#[test]
fn escape_sequences_in_keys_are_quoted() {
    let f = data("errmsg-escape-injection.gguf");
    for args in [
        vec!["inspect", f.to_str().unwrap()],
        vec!["run", "-m", f.to_str().unwrap(), "-p", "x", "-n", "1"],
    ] {
        let o = run_tern(&args, None);
        let err = stderr(&o);
        assert_clean_failure(&o, "unknown value type");
        assert_safe_text(&err);
        assert_eq!(err.lines().count(), 1, "one line: {err:?}");
        assert!(err.contains(r"\u{1b}[2J"), "escaped: {err}");
        assert!(!err.contains("\ntern: error: nothing"), "{err}");
    }
}

/// A GGUF whose first key is `key` with an unknown value type.
fn bad_key_file(dir: &Path, key: &[u8]) -> PathBuf {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.extend_from_slice(&(key.len() as u64).to_le_bytes());
    b.extend_from_slice(key);
    b.extend_from_slice(&99u32.to_le_bytes());
    b.extend_from_slice(&[0; 16]);
    let p = dir.join("key.gguf");
    std::fs::write(&p, b).unwrap();
    p
}

#[test]
fn a_megabyte_key_gives_a_short_error() {
    let dir = tempfile::tempdir().unwrap();
    let key: Vec<u8> = b"k\n".iter().copied().cycle().take(1 << 20).collect();
    let p = bad_key_file(dir.path(), &key);
    let o = run_tern(&["inspect", p.to_str().unwrap()], None);
    assert_clean_failure(&o, "unknown value type 99");
    let err = stderr(&o);
    assert!(err.len() < 400, "{} bytes: {}", err.len(), err);
    assert!(err.contains("1048576 bytes"), "{err}");
}

#[test]
fn hostile_tensor_names_are_escaped_by_inspect_and_in_errors() {
    // Rename a tensor of a valid model to a name with ESC and a newline.
    let ok_dir = tempfile::tempdir().unwrap();
    let src = with_key(
        &data("keylen-wrap-capacity-overflow.gguf"),
        "bitnet-b1.58.attention.key_length",
        Value::U32(16),
        ok_dir.path(),
        "ok.gguf",
    );
    let g = GgufFile::open(&src).unwrap();
    let evil = "blk.0.attn_q.weight\u{1b}[31m\nFAKE";
    let plans: Vec<tern::gguf::TensorPlan> = g
        .tensors
        .iter()
        .map(|t| tern::gguf::TensorPlan {
            name: if t.name == "blk.0.attn_q.weight" {
                evil.to_string()
            } else {
                t.name.clone()
            },
            dims: t.dims.clone(),
            ty: t.ty,
        })
        .collect();
    let p = ok_dir.path().join("evil.gguf");
    tern::gguf::write_gguf(&p, false, &g.kv, &plans, |i, w| {
        w.write_all(g.tensor_data(&g.tensors[i]))?;
        Ok(())
    })
    .unwrap();
    let o = run_tern(&["inspect", p.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_safe_text(&out);
    assert!(
        out.contains(r#""blk.0.attn_q.weight\u{1b}[31m\nFAKE""#),
        "{out}"
    );
    assert!(!out.lines().any(|l| l.starts_with("FAKE")), "{out}");
    // The loader misses blk.0.attn_q.weight; a tensor "past the layers"
    // would be named quoted too.
    let err = logits_fails(&p, "attn_q.weight");
    assert_safe_text(&err);
}

// ---- 6. concurrent converts and symlinked temporary names ---------------

fn convert_cmd(model: &str, out: &Path) -> Command {
    let mut c = tern();
    c.args([
        "convert",
        hf_dir(model).to_str().unwrap(),
        "--outfile",
        out.to_str().unwrap(),
        "--force",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    c
}

fn convert_to(model: &str, out: &Path) -> Vec<u8> {
    let o = convert_cmd(model, out).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::read(out).unwrap()
}

#[test]
fn concurrent_converts_to_one_outfile_leave_one_whole_model() {
    let dir = tempfile::tempdir().unwrap();
    let a = convert_to("b158-bf16", &dir.path().join("a.gguf"));
    let b = convert_to("bitnet-silu", &dir.path().join("b.gguf"));
    assert_ne!(a, b);
    let out = dir.path().join("same.gguf");
    let (mut saw_a, mut saw_b) = (0, 0);
    for round in 0..10 {
        let mut pa = convert_cmd("b158-bf16", &out).spawn().unwrap();
        let mut pb = convert_cmd("bitnet-silu", &out).spawn().unwrap();
        assert!(pa.wait().unwrap().success(), "round {round}");
        assert!(pb.wait().unwrap().success(), "round {round}");
        let got = std::fs::read(&out).unwrap();
        if got == a {
            saw_a += 1;
        } else if got == b {
            saw_b += 1;
        } else {
            panic!("round {round}: the output is neither model (a mix of both)");
        }
        // Nothing left behind but the three models.
        assert_eq!(listing(dir.path()), ["a.gguf", "b.gguf", "same.gguf"]);
    }
    eprintln!("last writer: b158-bf16 {saw_a}×, bitnet-silu {saw_b}×");
}

#[cfg(unix)]
#[test]
fn symlinks_at_the_output_or_a_partial_name_are_never_followed() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, b"keep me").unwrap();
    let out = dir.path().join("m.gguf");
    // The name the old writer used for its temporary file, and the output
    // itself, both symlinks to a file that must survive.
    symlink(&victim, dir.path().join("m.gguf.partial")).unwrap();
    symlink(&victim, &out).unwrap();
    let want = convert_to("b158-sparse", &dir.path().join("ref.gguf"));
    let got = convert_to("b158-sparse", &out);
    assert_eq!(got, want);
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
    assert!(std::fs::symlink_metadata(&out)
        .unwrap()
        .file_type()
        .is_file());
    assert!(std::fs::symlink_metadata(dir.path().join("m.gguf.partial"))
        .unwrap()
        .file_type()
        .is_symlink());
    // The same holds for the other files tern writes, e.g. logits --out.
    let lo = dir.path().join("l.f32");
    symlink(&victim, dir.path().join("l.f32.partial")).unwrap();
    symlink(&victim, &lo).unwrap();
    let o = logits(&out, "1,2", &lo);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
    assert_eq!(std::fs::metadata(&lo).unwrap().len(), 2 * 2304 * 4);
    assert!(std::fs::symlink_metadata(&lo)
        .unwrap()
        .file_type()
        .is_file());
}

// ---- 7. the converter range-checks everything it writes -----------------

/// A fixture copy whose config.json has `patch` merged in (`null` removes).
fn patched(model: &str, patch: &J, dir: &Path) -> PathBuf {
    let d = dir.join(model);
    copy_dir(&hf_dir(model), &d);
    let p = d.join("config.json");
    let mut cfg: J = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    for (k, v) in patch.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    std::fs::write(&p, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    d
}

/// `tern convert dir` into an empty folder: must fail mentioning `needle`
/// and leave the folder empty.
fn convert_fails(model_dir: &Path, extra: &[&str], needle: &str) {
    let out = tempfile::tempdir().unwrap();
    let mut args = vec![
        "convert",
        model_dir.to_str().unwrap(),
        "--outfile",
        "m.gguf",
    ];
    args.extend_from_slice(extra);
    let o = run_tern(&args, Some(out.path()));
    assert_clean_failure(&o, needle);
    assert!(listing(out.path()).is_empty(), "{:?}", listing(out.path()));
}

#[test]
fn config_values_that_would_wrap_or_break_the_runtime_are_refused() {
    // (patch, what the error names). Each was accepted before: a head_dim
    // of 32 + 2^63 wrapped to a working model, a negative one was ignored,
    // eps / theta ≤ 0 or infinite were written, max_position_embeddings
    // 2^32 + 5 became 5, and an id of 2^40 became 0.
    let cases = [
        (json!({"head_dim": 9223372036854775840u64}), "head_dim"),
        (json!({"head_dim": -32}), "head_dim"),
        (json!({"head_dim": 32.5}), "head_dim"),
        (json!({"rms_norm_eps": 0.0}), "rms_norm_eps"),
        (json!({"rms_norm_eps": -1e-5}), "rms_norm_eps"),
        (json!({"rms_norm_eps": 1e-60}), "rms_norm_eps"),
        (json!({"rope_theta": 0.0}), "rope_theta"),
        (json!({"rope_theta": -10000.0}), "rope_theta"),
        (json!({"rope_theta": 1e39}), "rope_theta"),
        (json!({"rope_theta": "10000"}), "rope_theta"),
        (
            json!({"max_position_embeddings": 4294967301u64}),
            "max_position_embeddings",
        ),
        (
            json!({"max_position_embeddings": 0}),
            "max_position_embeddings",
        ),
        (json!({"num_key_value_heads": -2}), "num_key_value_heads"),
        (json!({"bos_token_id": 1099511627776u64}), "bos_token_id"),
        (
            json!({"eos_token_id": [2049, 1099511627776u64]}),
            "eos_token_id",
        ),
        (json!({"num_hidden_layers": 1}), "num_hidden_layers"),
        (
            json!({"num_attention_heads": 1073741824, "num_key_value_heads": 1073741824, "head_dim": 4}),
            "head_dim",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, (patch, needle)) in cases.iter().enumerate() {
        let d = patched("b158-bf16", patch, &dir.path().join(i.to_string()));
        convert_fails(&d, &[], needle);
    }
}

#[test]
fn tokenizer_ids_that_do_not_fit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (field, id)) in [
        ("added", json!(1099511627776u64)),
        ("added", json!(2304)),
        ("vocab", json!(1099511627776u64)),
        ("vocab", json!(-1)),
    ]
    .into_iter()
    .enumerate()
    {
        let d = dir.path().join(i.to_string());
        copy_dir(&hf_dir("b158-bf16"), &d);
        let p = d.join("tokenizer.json");
        let mut tj: J = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        if field == "added" {
            tj["added_tokens"][0]["id"] = id;
        } else {
            let v = tj["model"]["vocab"].as_object_mut().unwrap();
            let first = v.keys().next().unwrap().clone();
            v[&first] = id;
        }
        std::fs::write(&p, tj.to_string()).unwrap();
        convert_fails(&d, &[], "tokenizer.json");
    }
}

/// Overwrite the data of tensor `name` in a fixture copy's safetensors with `bytes`
/// at element offset 0.
fn poke_tensor(dir: &Path, name: &str, bytes: &[u8]) {
    let p = dir.join("model.safetensors");
    let mut b = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let h: J = serde_json::from_slice(&b[8..8 + n]).unwrap();
    let start = h[name]["data_offsets"][0].as_u64().unwrap() as usize + 8 + n;
    b[start..start + bytes.len()].copy_from_slice(bytes);
    std::fs::write(&p, b).unwrap();
}

fn bf16(x: f32) -> [u8; 2] {
    ((x.to_bits() >> 16) as u16).to_le_bytes()
}

#[test]
fn weight_scales_and_weights_that_break_the_runtime_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let scale = "model.layers.0.mlp.down_proj.weight_scale";
    for (i, ws) in [0.0f32, -2.0, f32::INFINITY, f32::NAN, 1e-40]
        .iter()
        .enumerate()
    {
        let d = dir.path().join(format!("ws{i}"));
        copy_dir(&hf_dir("b158-packed"), &d);
        poke_tensor(&d, scale, &bf16(*ws));
        convert_fails(&d, &[], "weight_scale");
    }
    // A NaN weight in a continuous projection, a non-finite norm.
    for (i, name) in [
        "model.layers.1.self_attn.q_proj.weight",
        "model.layers.0.input_layernorm.weight",
        "model.embed_tokens.weight",
    ]
    .iter()
    .enumerate()
    {
        let d = dir.path().join(format!("nan{i}"));
        copy_dir(&hf_dir("b158-bf16"), &d);
        poke_tensor(&d, name, &bf16(f32::NAN));
        convert_fails(&d, &[], "finite");
    }
    // An embedding value past f16's range: refused as F16, fine as F32.
    let d = dir.path().join("big");
    copy_dir(&hf_dir("b158-bf16"), &d);
    poke_tensor(&d, "model.embed_tokens.weight", &bf16(1e6));
    convert_fails(&d, &[], "--embd-type f32");
    let out = tempfile::tempdir().unwrap();
    let o = run_tern(
        &[
            "convert",
            d.to_str().unwrap(),
            "--outfile",
            "m.gguf",
            "--embd-type",
            "f32",
        ],
        Some(out.path()),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // A projection scale past f16's range: refused for TQ2_0 (f16 block
    // scales), fine for I2_S (f32 scale).
    let d = dir.path().join("bigscale");
    copy_dir(&hf_dir("b158-packed"), &d);
    poke_tensor(&d, scale, &bf16(1e-6));
    convert_fails(&d, &["--outtype", "tq2_0"], "f16");
    let o = run_tern(
        &["convert", d.to_str().unwrap(), "--outfile", "m2.gguf"],
        Some(out.path()),
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

// ---- 9. a model truncated while in use ---------------------------------

#[cfg(unix)]
#[test]
fn a_model_truncated_while_running_does_not_disturb_it() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.gguf");
    std::fs::copy(root().join("models/tern-shakespeare-i2_s.gguf"), &m).unwrap();
    let mut child = tern()
        .args([
            "run",
            "-m",
            m.to_str().unwrap(),
            "-p",
            "ROMEO.",
            "-n",
            "100000",
            "--ignore-eos",
            "-t",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it generates (the model is loaded), then cut the file to
    // nothing: every weight was copied out of the map at load and the map
    // is not read again, so the run goes on to the end of its context.
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    out.read_exact(&mut first).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&m)
        .unwrap()
        .set_len(0)
        .unwrap();
    let mut rest = Vec::new();
    let _ = out.read_to_end(&mut rest);
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert!(o.status.success(), "status {:?}, stderr {err}", o.status);
    assert!(!err.contains("error"), "{err}");
    assert!(err.contains("eval time"), "{err}");
    assert!(
        rest.len() > 100,
        "the generation went on: {} bytes",
        rest.len()
    );
}

// ---- 10. found by review and a new user's trial (2026-12-03) -----------

#[test]
fn a_huge_head_dimension_is_refused_before_the_rope_table() {
    let f = data("keylen-wrap-capacity-overflow.gguf");
    let dir = tempfile::tempdir().unwrap();
    // 2 heads × 2^29 is inside the width check; the RoPE table of 2^28
    // f64 entries took 2 GiB and 18 s before the tensor check refused it.
    let p = with_key(
        &f,
        "bitnet-b1.58.attention.key_length",
        Value::U64(1 << 29),
        dir.path(),
        "wide-head.gguf",
    );
    let t = Instant::now();
    let err = logits_fails(&p, "head dimension");
    assert!(err.contains("65536"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

#[test]
fn metadata_arrays_are_bounded_by_elements_not_only_by_bytes() {
    // One u8 array of 2^24 + 1 elements: 16 MiB in the file, 32 bytes
    // each once read.
    let dir = tempfile::tempdir().unwrap();
    let key = b"test.bytes";
    let n: u64 = (1 << 24) + 1;
    let mut b = Vec::with_capacity(1 << 25);
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.extend_from_slice(&(key.len() as u64).to_le_bytes());
    b.extend_from_slice(key);
    b.extend_from_slice(&9u32.to_le_bytes()); // array
    b.extend_from_slice(&0u32.to_le_bytes()); // of u8
    b.extend_from_slice(&n.to_le_bytes());
    b.resize(b.len() + usize::try_from(n).unwrap(), 7);
    let p = dir.path().join("bytes.gguf");
    std::fs::write(&p, b).unwrap();
    let o = run_tern(&["inspect", p.to_str().unwrap()], None);
    let err = assert_clean_failure(&o, "elements in all");
    assert!(err.contains("test.bytes"), "{err}");
    // Just under the limit reads (and is then no model).
    let mut ok = std::fs::read(&p).unwrap();
    let at = 4 + 4 + 8 + 8 + 8 + key.len() + 4 + 4;
    ok[at..at + 8].copy_from_slice(&(n - 1).to_le_bytes());
    ok.pop();
    std::fs::write(&p, ok).unwrap();
    let o = run_tern(&["inspect", p.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Everything written to the FIFO `fifo`, read on a thread of its own.
#[cfg(unix)]
fn read_fifo(fifo: &Path) -> std::thread::JoinHandle<Vec<u8>> {
    use std::io::Read;
    let fifo = fifo.to_path_buf();
    std::thread::spawn(move || {
        let mut v = Vec::new();
        std::fs::File::open(&fifo)
            .unwrap()
            .read_to_end(&mut v)
            .unwrap();
        v
    })
}

#[cfg(unix)]
#[test]
fn a_fifo_output_is_written_into_not_replaced() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe");
    let st = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(st.success());
    let reader = read_fifo(&fifo);
    let g = ref_gguf("tern-shakespeare");
    let o = logits(&g, "1,2,3", &fifo);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = reader.join().unwrap();
    let vocab = GgufFile::open(&g)
        .unwrap()
        .get_u64("bitnet-b1.58.vocab_size")
        .unwrap();
    assert_eq!(got.len() as u64, 3 * vocab * 4);
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(listing(dir.path()), vec!["pipe".to_string()]);

    // `convert` through a symlink to the FIFO (as `/dev/stdout` is one),
    // without --force: the pipe gets the same bytes as a file would.
    let link = dir.path().join("link.gguf");
    std::os::unix::fs::symlink(&fifo, &link).unwrap();
    let reader = read_fifo(&fifo);
    let convert = |out: &Path| {
        let src = root().join("models/tern-shakespeare");
        let o = run_tern(
            &[
                "convert",
                src.to_str().unwrap(),
                "--outfile",
                out.to_str().unwrap(),
            ],
            None,
        );
        assert!(o.status.success(), "{}", stderr(&o));
        o
    };
    convert(&link);
    let piped = reader.join().unwrap();
    let file = dir.path().join("file.gguf");
    let o = convert(&file);
    assert_eq!(piped, std::fs::read(&file).unwrap());
    let mb = format!("({:.1} MB)", piped.len() as f64 / 1e6);
    assert!(stderr(&o).contains(&mb), "{} {mb}", stderr(&o));
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn flag_values_that_size_work_are_bounded() {
    let g = ref_gguf("tern-shakespeare");
    let g = g.to_str().unwrap();
    let o = run_tern(
        &[
            "bench",
            "-m",
            g,
            "-p",
            "4",
            "-n",
            "0",
            "-r",
            "18446744073709551615",
        ],
        None,
    );
    assert_clean_failure(&o, "-r must be between 1 and");
    let o = run_tern(
        &[
            "serve",
            "-m",
            g,
            "--port",
            "0",
            "--max-queue",
            "18446744073709551615",
        ],
        None,
    );
    assert_clean_failure(&o, "--max-queue must be at most");
    let o = run_tern(
        &["run", "-m", g, "-p", "x", "-n", "1", "-t", "100000"],
        None,
    );
    assert_clean_failure(&o, "between 1 and 512");
    // More threads than CPUs: runs, with a warning.
    let o = run_tern(&["run", "-m", g, "-p", "x", "-n", "1", "-t", "3"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(
        stderr(&o).contains("threads on"),
        cpus < 3,
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_repeated_option_takes_its_last_value_as_in_llama_cpp() {
    let g = ref_gguf("tern-shakespeare");
    let g = g.to_str().unwrap();
    let out = |args: &[&str]| {
        let o = run_tern(args, None);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    let twice = out(&[
        "run", "-m", g, "-p", "ROMEO.", "-n", "40", "--temp", "0", "-n", "6",
    ]);
    let once = out(&["run", "-m", g, "-p", "ROMEO.", "-n", "6", "--temp", "0"]);
    assert_eq!(twice, once);
    assert_ne!(
        twice,
        out(&["run", "-m", g, "-p", "ROMEO.", "-n", "40", "--temp", "0"])
    );
}

#[test]
fn synth_keeps_an_existing_checkpoint_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    std::fs::create_dir(&hf).unwrap();
    std::fs::write(hf.join("config.json"), b"{\"mine\": 1}").unwrap();
    let h = hf.to_str().unwrap();
    let o = run_tern(&["synth", h, "--shape", "tiny"], None);
    assert_clean_failure(&o, "--force");
    assert_eq!(
        std::fs::read(hf.join("config.json")).unwrap(),
        b"{\"mine\": 1}"
    );
    assert_eq!(listing(&hf), vec!["config.json".to_string()]);
    let o = run_tern(&["synth", h, "--shape", "tiny", "--force"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(hf.join("model.safetensors").exists());
}

#[cfg(unix)]
#[test]
fn ctrl_c_during_convert_leaves_no_partial_file() {
    signal_during_convert_leaves_no_partial_file("INT", 2);
}

#[cfg(unix)]
#[test]
fn sigterm_during_convert_leaves_no_partial_file() {
    signal_during_convert_leaves_no_partial_file("TERM", 15);
}

/// Send signal `name` (number `number`) to a `convert` while its
/// `.partial` file exists: the file is removed and tern ends by that
/// signal.
#[cfg(unix)]
fn signal_during_convert_leaves_no_partial_file(name: &str, number: i32) {
    use std::io::Write;
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let src = root().join("models/tern-shakespeare");
    // The write takes a few ms: catch it with its .partial file present,
    // trying again when the conversion won the race. The signal comes from
    // a shell started beside the conversion and waiting on its stdin, so
    // that sending it is a pipe write and the shell's builtin `kill`, not a
    // process start (which, under load, outlasted the write in every one
    // of 40 attempts once).
    // A signal this process started with ignored (SIGINT, SIGQUIT under a
    // shell's `cmd &` without job control) is ignored in the child too,
    // and tern rightly keeps it so: reset it for the child with GNU env.
    let ignored = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|st| {
            let hex = st.lines().find_map(|l| l.strip_prefix("SigIgn:"))?;
            u64::from_str_radix(hex.trim(), 16).ok()
        })
        .is_some_and(|mask| mask >> (number - 1) & 1 == 1);
    let tern_cmd = || {
        if ignored {
            let mut c = Command::new("env");
            c.arg(format!("--default-signal={name}"))
                .arg(env!("CARGO_BIN_EXE_tern"));
            c
        } else {
            tern()
        }
    };
    if ignored {
        let ok = Command::new("env")
            .args([&format!("--default-signal={name}"), "true"])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SIG{name} is ignored here and env cannot reset it: not tested");
            return;
        }
    }
    for attempt in 0..100 {
        let out = dir.path().join(format!("m{attempt}.gguf"));
        let mut child = tern_cmd()
            .args([
                "convert",
                src.to_str().unwrap(),
                "--outtype",
                "f32",
                "--outfile",
            ])
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut killer = Command::new("sh")
            .args(["-c", &format!("read go && kill -{name} {}", child.id())])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        let caught = loop {
            if listing(dir.path()).iter().any(|n| n.ends_with(".partial")) {
                break true;
            }
            if child.try_wait().unwrap().is_some() || t0.elapsed() > Duration::from_secs(30) {
                break false;
            }
            std::thread::sleep(Duration::from_micros(100));
        };
        if !caught {
            drop(killer.stdin.take());
            let _ = killer.wait();
            let _ = child.wait();
            continue;
        }
        let mut go = killer.stdin.take().unwrap();
        go.write_all(b"go\n").unwrap();
        drop(go);
        let st = killer.wait().unwrap();
        // The shell's kill fails only when the conversion already ended.
        let o = child.wait_with_output().unwrap();
        assert!(st.success() || o.status.success(), "{st:?} {:?}", o.status);
        if o.status.success() {
            // Finished between the look and the signal.
            continue;
        }
        // Ended by the signal (its default action, re-raised after the
        // clean-up, so that a shell loop stops too).
        assert_eq!(o.status.signal(), Some(number), "{:?}", o.status);
        // No temporary file; the output either absent or, when the signal
        // came after the rename, complete.
        let names = listing(dir.path());
        let left: Vec<&String> = names.iter().filter(|n| n.ends_with(".partial")).collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        if out.exists() {
            GgufFile::open(&out).unwrap();
        }
        return;
    }
    panic!("never caught the conversion while it was writing");
}
