//! `tern convert` against the reference GGUFs, round trips, and bad input.

mod common;
use common::*;
use sha2::{Digest, Sha256};
use std::path::Path;
use tern::convert::{convert, ConvertOptions};
use tern::gguf::GgufFile;
use tern::quant::{i2s, tq, GgmlType};

fn conv(
    input: &Path,
    out: &Path,
    outtype: GgmlType,
    embd: GgmlType,
) -> tern::convert::ConvertReport {
    convert(&ConvertOptions {
        input: input.to_path_buf(),
        outfile: Some(out.to_path_buf()),
        outtype,
        embd_type: embd,
        force: false,
        quiet: true,
    })
    .unwrap_or_else(|e| panic!("convert {}: {:#}", input.display(), e))
}

fn dir_hash(dir: &Path) -> Vec<(String, Vec<u8>)> {
    listing(dir)
        .into_iter()
        .map(|n| {
            let b = std::fs::read(dir.join(&n)).unwrap();
            (n, Sha256::digest(&b).to_vec())
        })
        .collect()
}

#[test]
fn fixtures_match_reference_ggufs_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ALL_MODELS {
        let before = dir_hash(&hf_dir(name));
        let out = tmp.path().join(format!("{}.gguf", name));
        let rep = conv(&hf_dir(name), &out, GgmlType::I2S, GgmlType::F32);
        assert_eq!(
            dir_hash(&hf_dir(name)),
            before,
            "{}: input folder changed",
            name
        );
        let ours = GgufFile::open(&out).unwrap();
        let reference = GgufFile::open(&ref_gguf(name)).unwrap();
        // Every reference key with the same value (general.name may differ).
        for (k, v) in &reference.kv {
            if k == "general.name" {
                continue;
            }
            assert_eq!(ours.get(k), Some(v), "{}: metadata {}", name, k);
        }
        assert_eq!(ours.tensors.len(), reference.tensors.len(), "{}", name);
        for rt in &reference.tensors {
            let t = ours
                .tensor(&rt.name)
                .unwrap_or_else(|| panic!("{}: missing {}", name, rt.name));
            assert_eq!((&t.dims, t.ty), (&rt.dims, rt.ty), "{}: {}", name, rt.name);
            assert!(
                ours.tensor_data(t) == reference.tensor_data(rt),
                "{}: data of {} differs",
                name,
                rt.name
            );
        }
        let expected_kind = match *name {
            "b158-sparse" => (0, 14, 0),
            "b158-packed" => (0, 0, 14),
            _ => (rep.continuous, 0, 0),
        };
        assert_eq!(
            (rep.continuous, rep.ternary, rep.packed),
            expected_kind,
            "{}",
            name
        );
    }
}

#[test]
fn architecture_and_activation_keys() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, arch, act) in [
        ("b158-bf16", "bitnet-b1.58", "relu2"),
        ("bitnet-silu", "bitnet", "silu"),
    ] {
        let out = tmp.path().join(format!("{}.gguf", name));
        conv(&hf_dir(name), &out, GgmlType::I2S, GgmlType::F16);
        let g = GgufFile::open(&out).unwrap();
        assert_eq!(g.architecture(), Some(arch));
        assert_eq!(g.get_str(&format!("{}.hidden_activation", arch)), Some(act));
        assert_eq!(g.tensor("token_embd.weight").unwrap().ty, GgmlType::F16);
        assert_eq!(g.get_str("tokenizer.ggml.pre"), Some("llama-bpe"));
        assert_eq!(g.get_u64("tokenizer.ggml.eot_token_id"), Some(2057));
        assert_eq!(g.get_u64("tokenizer.ggml.bos_token_id"), Some(2048));
        assert!(g
            .get_str("tokenizer.chat_template")
            .unwrap()
            .contains("Assistant: "));
    }
}

/// Every ternary output type decodes to the same codes and scale as I2_S.
#[test]
fn tq_and_float_outputs_decode_to_the_same_ternary_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let src = hf_dir("b158-sparse");
    let base = tmp.path().join("i2s.gguf");
    conv(&src, &base, GgmlType::I2S, GgmlType::F32);
    let gi = GgufFile::open(&base).unwrap();
    for ty in [
        GgmlType::TQ2_0,
        GgmlType::TQ1_0,
        GgmlType::F16,
        GgmlType::F32,
    ] {
        let out = tmp.path().join(format!("{}.gguf", ty.name()));
        let rep = conv(&src, &out, ty, GgmlType::F32);
        let g = GgufFile::open(&out).unwrap();
        let mut checked = 0;
        for t in gi.tensors.iter().filter(|t| t.ty == GgmlType::I2S) {
            let n = t.n_elements() as usize;
            let d = gi.tensor_data(t);
            let codes = i2s::decode_codes(d, n);
            let s = i2s::scale(d, n);
            let o = g.tensor(&t.name).unwrap();
            let od = g.tensor_data(o);
            let want = |i: usize| codes[i] as f32 * s;
            match o.ty {
                GgmlType::TQ2_0 | GgmlType::TQ1_0 => {
                    let (c, ds) = if o.ty == GgmlType::TQ2_0 {
                        tq::decode_tq2_0(od)
                    } else {
                        tq::decode_tq1_0(od)
                    }
                    .unwrap();
                    assert_eq!(c, codes, "{} {}", ty.name(), t.name);
                    let s16 = half::f16::from_f32(s).to_f32();
                    for (bi, &dd) in ds.iter().enumerate() {
                        if c[bi * 256..(bi + 1) * 256].iter().any(|&x| x != 0) {
                            assert_eq!(dd, s16, "{} {} block {}", ty.name(), t.name, bi);
                        }
                    }
                }
                GgmlType::F16 => {
                    for i in 0..n {
                        let v = half::f16::from_le_bytes([od[2 * i], od[2 * i + 1]]).to_f32();
                        assert_eq!(v, half::f16::from_f32(want(i)).to_f32());
                    }
                }
                GgmlType::F32 => {
                    for i in 0..n {
                        let v = f32::from_le_bytes([
                            od[4 * i],
                            od[4 * i + 1],
                            od[4 * i + 2],
                            od[4 * i + 3],
                        ]);
                        assert_eq!(v, want(i));
                    }
                }
                other => panic!("unexpected type {:?}", other),
            }
            checked += 1;
        }
        assert_eq!(checked, 14);
        if matches!(ty, GgmlType::TQ2_0 | GgmlType::TQ1_0) {
            // ffn_down has 640 columns: not a multiple of 256, so F16 like llama.cpp.
            assert_eq!(rep.fallbacks.len(), 2, "{:?}", rep.fallbacks);
        }
    }
}

#[test]
fn writer_reader_round_trip() {
    use tern::gguf::{write_gguf, TensorPlan, Value, ValueType};
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("rt.gguf");
    let kv = vec![
        (
            "general.architecture".to_string(),
            Value::String("bitnet".into()),
        ),
        ("a.u8".into(), Value::U8(7)),
        ("a.i8".into(), Value::I8(-7)),
        ("a.u16".into(), Value::U16(700)),
        ("a.i16".into(), Value::I16(-700)),
        ("a.i32".into(), Value::I32(-70000)),
        ("a.u64".into(), Value::U64(1 << 40)),
        ("a.i64".into(), Value::I64(-(1 << 40))),
        ("a.f64".into(), Value::F64(0.1)),
        ("a.f32".into(), Value::F32(0.5)),
        ("a.bool".into(), Value::Bool(true)),
        (
            "a.arr".into(),
            Value::Array(ValueType::I32, vec![Value::I32(1), Value::I32(-2)]),
        ),
        ("a.empty".into(), Value::Array(ValueType::String, vec![])),
    ];
    let plans = vec![
        TensorPlan {
            name: "x".into(),
            dims: vec![3],
            ty: GgmlType::F32,
        },
        TensorPlan {
            name: "w".into(),
            dims: vec![128, 2],
            ty: GgmlType::I2S,
        },
    ];
    let codes: Vec<i8> = (0..256).map(|i| (i % 3) as i8 - 1).collect();
    let mut w = Vec::new();
    i2s::encode(&codes, 0.25, &mut w);
    let x: Vec<u8> = [1f32, 2.0, 3.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    write_gguf(&p, false, &kv, &plans, |i, out| {
        out.write_all(if i == 0 { &x } else { &w })?;
        Ok(())
    })
    .unwrap();
    let g = GgufFile::open(&p).unwrap();
    assert_eq!(g.kv, kv);
    assert_eq!(g.tensor_data(g.tensor("x").unwrap()), &x[..]);
    assert_eq!(g.tensor_data(g.tensor("w").unwrap()), &w[..]);
    assert_eq!(g.tensor("w").unwrap().offset % 32, 0);
    // A producer that writes the wrong size aborts and leaves no file.
    let q = tmp.path().join("bad.gguf");
    let e = write_gguf(&q, false, &kv, &plans, |_, out| {
        out.write_all(&[0u8; 5])?;
        Ok(())
    });
    assert!(e.is_err());
    assert_eq!(listing(tmp.path()), vec!["rt.gguf"]);
}

// ---------------------------------------------------------------- bad input

fn bad_convert(dir: &Path, extra: &[&str], needle: &str) {
    let out_dir = tempfile::tempdir().unwrap();
    let before_in = dir_hash(dir);
    let mut args = vec!["convert", dir.to_str().unwrap(), "--outfile", "out.gguf"];
    args.extend_from_slice(extra);
    let o = run_tern(&args, Some(out_dir.path()));
    assert_clean_failure(&o, needle);
    assert!(
        listing(out_dir.path()).is_empty(),
        "left files: {:?}",
        listing(out_dir.path())
    );
    assert_eq!(dir_hash(dir), before_in, "input changed");
}

#[test]
fn missing_config() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("m");
    copy_dir(&hf_dir("b158-bf16"), &d);
    std::fs::remove_file(d.join("config.json")).unwrap();
    bad_convert(&d, &[], "config.json");
}

#[test]
fn unknown_architecture() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("m");
    copy_dir(&hf_dir("b158-bf16"), &d);
    edit_config(&d, |j| {
        j["architectures"] = serde_json::json!(["LlamaForCausalLM"])
    });
    bad_convert(&d, &[], "LlamaForCausalLM");
}

#[test]
fn truncated_safetensors() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("m");
    copy_dir(&hf_dir("b158-bf16"), &d);
    let p = d.join("model.safetensors");
    let b = std::fs::read(&p).unwrap();
    std::fs::write(&p, &b[..b.len() / 2]).unwrap();
    bad_convert(&d, &[], "truncated");
}

#[test]
fn shape_disagrees_with_config() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("m");
    copy_dir(&hf_dir("b158-bf16"), &d);
    edit_config(&d, |j| j["intermediate_size"] = serde_json::json!(512));
    bad_convert(&d, &[], "shape");
}

#[test]
fn packed_without_weight_scale() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("m");
    copy_dir(&hf_dir("b158-packed"), &d);
    // Rewrite the safetensors without one weight_scale tensor.
    let p = d.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let drop = "model.layers.1.mlp.up_proj.weight_scale";
    let keep: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != drop)
        .collect();
    let out = safetensors::serialize(keep, &None).unwrap();
    std::fs::write(&p, out).unwrap();
    bad_convert(&d, &[], "weight_scale");
}

#[test]
fn width_not_multiple_of_128_for_i2s() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("m");
    let shape = tern::synth::Shape {
        hidden: 192,
        intermediate: 384,
        layers: 1,
        heads: 6,
        kv_heads: 2,
        vocab: 768,
    };
    tern::synth::synth_hf(&d, shape, 3).unwrap();
    bad_convert(&d, &["--outtype", "i2_s"], "multiple of 128");
}

#[test]
fn existing_outfile_needs_force() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out.gguf");
    std::fs::write(&out, b"keep me").unwrap();
    let src = hf_dir("b158-bf16");
    let o = run_tern(
        &["convert", src.to_str().unwrap(), "--outfile", "out.gguf"],
        Some(t.path()),
    );
    assert_clean_failure(&o, "--force");
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    assert_eq!(listing(t.path()), vec!["out.gguf"]);
    let o = run_tern(
        &[
            "convert",
            src.to_str().unwrap(),
            "--outfile",
            "out.gguf",
            "--force",
        ],
        Some(t.path()),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(GgufFile::open(&out).is_ok());
}

#[test]
fn default_outfile_and_report() {
    let t = tempfile::tempdir().unwrap();
    let src = hf_dir("b158-sparse");
    let o = run_tern(
        &["convert", src.to_str().unwrap(), "--outtype", "tq2_0"],
        Some(t.path()),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{}", err);
    assert_eq!(listing(t.path()), vec!["b158-sparse-tq2_0.gguf"]);
    // Per-tensor report with kind, scale, zeros, and the summary line.
    assert!(
        err.contains("blk.0.attn_q.weight") && err.contains("ternary") && err.contains("zeros"),
        "{}",
        err
    );
    assert!(err.contains("14 already ternary"), "{}", err);
}

#[test]
fn default_name_has_the_head_type_and_outfile_may_be_a_folder() {
    let t = tempfile::tempdir().unwrap();
    let src = hf_dir("b158-bf16");
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    for embd in ["f16", "q6_k", "f32"] {
        let o = run_tern(
            &["convert", src.to_str().unwrap(), "--embd-type", embd],
            Some(t.path()),
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let o = run_tern(
            &[
                "convert",
                src.to_str().unwrap(),
                "--embd-type",
                embd,
                "--outfile",
                "out",
            ],
            Some(t.path()),
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let names = [
        "b158-bf16-i2_s-f32.gguf",
        "b158-bf16-i2_s-q6_k.gguf",
        "b158-bf16-i2_s.gguf",
    ];
    assert_eq!(listing(&out), names);
    let mut top = names.to_vec();
    top.push("out");
    top.sort();
    assert_eq!(listing(t.path()), top);
}

#[test]
fn missing_tokenizer() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("m");
    copy_dir(&hf_dir("b158-bf16"), &d);
    std::fs::remove_file(d.join("tokenizer.json")).unwrap();
    bad_convert(&d, &[], "tokenizer");
}

#[test]
fn sentencepiece_vocab_fallback() {
    // No tokenizer.json but a tokenizer.model: the vocabulary comes from it (pitfall 5).
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("m");
    let shape = tern::synth::Shape {
        hidden: 256,
        intermediate: 256,
        layers: 1,
        heads: 4,
        kv_heads: 4,
        vocab: 768,
    };
    tern::synth::synth_hf(&d, shape, 5).unwrap();
    std::fs::remove_file(d.join("tokenizer.json")).unwrap();
    std::fs::copy(
        root().join("models/fixtures/spm-tiny/tokenizer.model"),
        d.join("tokenizer.model"),
    )
    .unwrap();
    let out = t.path().join("o.gguf");
    let rep = conv(&d, &out, GgmlType::I2S, GgmlType::F16);
    assert_eq!(rep.continuous, 7);
    let g = GgufFile::open(&out).unwrap();
    assert_eq!(g.get_str("tokenizer.ggml.model"), Some("llama"));
    let toks = g.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap();
    assert_eq!(toks.len(), 768, "padded to the embedding rows");
    assert_eq!(toks[767].as_str(), Some("[PAD767]"));
    assert!(g.get("tokenizer.ggml.scores").is_some());
}

#[test]
fn sharded_checkpoint_converts_identically() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("sharded");
    copy_dir(&hf_dir("b158-bf16"), &d);
    let bytes = std::fs::read(d.join("model.safetensors")).unwrap();
    let half = safetensors::SafeTensors::deserialize(&bytes).unwrap().len() / 2;
    shard_checkpoint(&d, 2, |i, _| usize::from(i >= half));
    let out = t.path().join("s.gguf");
    conv(&d, &out, GgmlType::I2S, GgmlType::F32);
    let ours = GgufFile::open(&out).unwrap();
    let reference = GgufFile::open(&ref_gguf("b158-bf16")).unwrap();
    for rt in &reference.tensors {
        let t = ours.tensor(&rt.name).unwrap();
        assert!(
            ours.tensor_data(t) == reference.tensor_data(rt),
            "{}",
            rt.name
        );
    }
    // A missing shard is a clean error.
    std::fs::remove_file(d.join("model-00002-of-00002.safetensors")).unwrap();
    bad_convert(&d, &[], "missing shard");
}
