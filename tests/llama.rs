//! The Llama-architecture ternary checkpoints (Falcon3-1.58bit, Falcon-E,
//! Llama3-8B-1.58; docs §7): conversion of `LlamaForCausalLM` + bitnet
//! `quantization_config`, the scale rules, the files bitnet.cpp and mainline
//! llama.cpp write, rope_scaling, and the bughunt cases `llama-*`,
//! `rope-scaling-*`, `autobitlinear-*`.

mod common;
use common::*;
use safetensors::Dtype;
use std::path::{Path, PathBuf};
use tern::gguf::{GgufFile, TensorPlan, Value};
use tern::metrics::{compare, Thresholds};
use tern::model::{Context, Model};
use tern::quant::{q4_0, q8_0, GgmlType};

const LLAMA: &[&str] = &["llama-b158-packed", "llama-b158-online"];

/// `llama-b158-packed` converted to `ty` (F16 embedding and head) in `dir`.
fn packed_as(dir: &Path, ty: GgmlType) -> PathBuf {
    let out = dir.join(format!("llama-b158-packed-{}.gguf", ty.name()));
    convert_to(&hf_dir("llama-b158-packed"), &out, ty, GgmlType::F16)
}

fn logits(m: &Model, tokens: &[u32]) -> Vec<f32> {
    let mut ctx = Context::new(m, tokens.len(), false);
    ctx.eval(tokens, true).unwrap()
}

/// The model agrees with `vendor/reference/transformers/<reference>` on
/// every prompt (tokens from the GGUF's own tokenizer, then logits).
fn check_transformers(gguf: &Path, reference: &str, th: &Thresholds) {
    let m = Model::load(gguf).unwrap_or_else(|e| panic!("{}: {:#}", gguf.display(), e));
    let dir = ref_dir("transformers", reference);
    let mut worst = (0f64, 0f64, 1f64);
    for p in prompts(&dir) {
        assert_eq!(
            m.tokenizer.encode(&p.text, true).unwrap(),
            p.tokens,
            "{}: tokens",
            p.name
        );
        let a = compare(&ref_logits(&dir, &p.name), &logits(&m, &p.tokens), p.vocab);
        worst = (
            worst.0.max(a.max_rel_rms),
            worst.1.max(a.mean_kl),
            worst.2.min(a.top1),
        );
        assert!(
            a.passes(th),
            "{} vs transformers/{} on {}: max rel RMS {:.4}, mean KL {:.5}, top-1 {:.2}",
            gguf.display(),
            reference,
            p.name,
            a.max_rel_rms,
            a.mean_kl,
            a.top1
        );
    }
    eprintln!(
        "{} vs transformers/{}: max rel RMS ≤ {:.4}, mean KL ≤ {:.5}, top-1 ≥ {:.2}",
        gguf.file_name().unwrap().to_string_lossy(),
        reference,
        worst.0,
        worst.1,
        worst.2
    );
}

#[test]
fn llama_fixtures_match_transformers_as_i2s_tq2_0_and_f16() {
    let t = tempfile::tempdir().unwrap();
    for name in LLAMA {
        for ty in [GgmlType::I2S, GgmlType::TQ2_0, GgmlType::F16] {
            let out = t.path().join(format!("{}-{}.gguf", name, ty.name()));
            convert_to(&hf_dir(name), &out, ty, GgmlType::F16);
            let g = GgufFile::open(&out).unwrap();
            assert_eq!(g.architecture(), Some("llama"));
            assert!(g.tensor("output.weight").is_some());
            assert!(g.tensor("blk.0.attn_sub_norm.weight").is_none());
            assert_eq!(g.get_u64("llama.rope.dimension_count"), Some(32));
            check_transformers(&out, name, &Thresholds::default());
        }
    }
}

#[test]
fn convert_report_and_metadata_from_the_cli() {
    let t = tempfile::tempdir().unwrap();
    let o = run_tern(
        &[
            "convert",
            hf_dir("llama-b158-packed").to_str().unwrap(),
            "--outfile",
            "p.gguf",
        ],
        Some(t.path()),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{}", err);
    assert!(
        err.contains("LlamaForCausalLM (silu) → llama [I2_S]"),
        "{}",
        err
    );
    assert!(err.contains("14 packed → W = T / weight_scale"), "{}", err);
    let g = GgufFile::open(&t.path().join("p.gguf")).unwrap();
    // The graph is implied by `llama`; no BitNet-only keys.
    assert!(g.get_str("llama.hidden_activation").is_none());
    assert_eq!(g.get_str("tokenizer.ggml.pre"), Some("llama-bpe"));
    assert_eq!(
        g.tensor("output.weight").unwrap().ty,
        GgmlType::F16,
        "untied head F16 by default"
    );
    let o = run_tern(
        &[
            "convert",
            hf_dir("llama-b158-online").to_str().unwrap(),
            "--outfile",
            "o.gguf",
        ],
        Some(t.path()),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("14 continuous → absmean"), "{}", err);
}

/// Inverted scales: `weight_scale` replaced by `1 / weight_scale` (F32),
/// as transformers' AutoBitLinear (W = T × weight_scale) stores them.
fn invert_scales(src: &Path, dst: &Path) {
    rewrite_checkpoint(
        src,
        dst,
        |n, t| {
            if n.ends_with(".weight_scale") {
                let inv = (1.0f64 / scalar_f32(&t) as f64) as f32;
                Some((Dtype::F32, t.1, inv.to_le_bytes().to_vec()))
            } else {
                Some(t)
            }
        },
        vec![],
    );
}

fn autobitlinear_offline(j: &mut serde_json::Value) {
    let q = j["quantization_config"]
        .as_object_mut()
        .expect("a quantization_config");
    q.insert("linear_class".into(), "autobitlinear".into());
    q.insert("quantization_mode".into(), "offline".into());
}

#[test]
fn autobitlinear_offline_gives_the_bitlinear_logits() {
    let t = tempfile::tempdir().unwrap();
    let auto = t.path().join("llama-auto");
    invert_scales(&hf_dir("llama-b158-packed"), &auto);
    edit_config(&auto, autobitlinear_offline);
    let a = convert_to(
        &auto,
        &t.path().join("a.gguf"),
        GgmlType::I2S,
        GgmlType::F16,
    );
    let b = packed_as(t.path(), GgmlType::I2S);
    let (ma, mb) = (Model::load(&a).unwrap(), Model::load(&b).unwrap());
    for p in prompts(&ref_dir("transformers", "llama-b158-packed")) {
        assert_eq!(logits(&ma, &p.tokens), logits(&mb, &p.tokens), "{}", p.name);
    }
    check_transformers(&a, "llama-b158-packed", &Thresholds::default());
    // Dividing (what bitnet.cpp's and mainline's converters do) is garbage.
    let wrong = t.path().join("llama-wrong");
    invert_scales(&hf_dir("llama-b158-packed"), &wrong);
    let w = convert_to(
        &wrong,
        &t.path().join("w.gguf"),
        GgmlType::I2S,
        GgmlType::F16,
    );
    let m = Model::load(&w).unwrap();
    let dir = ref_dir("transformers", "llama-b158-packed");
    let p = &prompts(&dir)[0];
    let cmp = compare(&ref_logits(&dir, &p.name), &logits(&m, &p.tokens), p.vocab);
    assert!(cmp.max_rel_rms > 0.5, "{:?}", cmp.max_rel_rms);
}

/// `../shared/cases/bughunt/autobitlinear-offline-scale`: b158-packed with
/// the AutoBitLinear offline config and multiplier scales (derived here from
/// the vendored b158-packed exactly as the case's file was: F32 1/scale).
#[test]
fn case_autobitlinear_offline_scale() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("autobitlinear-offline-scale");
    invert_scales(&hf_dir("b158-packed"), &d);
    std::fs::copy(
        root().join("tests/data/bughunt/autobitlinear-offline-scale/config.json"),
        d.join("config.json"),
    )
    .unwrap();
    assert_same_tensors_as_shared_case(
        &d.join("model.safetensors"),
        "autobitlinear-offline-scale/model.safetensors",
        &[],
    );
    let o = run_tern(
        &["convert", d.to_str().unwrap(), "--outfile", "out.gguf"],
        Some(t.path()),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{}", err);
    assert!(err.contains("packed → W = T × weight_scale"), "{}", err);
    let out = t.path().join("out.gguf");
    let g = GgufFile::open(&out).unwrap();
    for ti in g.tensors.iter().filter(|t| t.ty == GgmlType::I2S) {
        let s = tern::quant::i2s::scale(g.tensor_data(ti), ti.n_elements() as usize);
        assert!((0.01..0.05).contains(&s), "{}: scale {}", ti.name, s);
    }
    let o = run_tern(
        &[
            "logits",
            "-m",
            "out.gguf",
            "--tokens",
            "2048,1357,384,1610,288,324,383,444,335,462",
            "--out",
            "l.f32",
        ],
        Some(t.path()),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ours = tern::metrics::read_f32_file(&t.path().join("l.f32")).unwrap();
    let dir = ref_dir("transformers", "b158-packed");
    let p = prompts(&dir)
        .into_iter()
        .find(|p| p.name == "capital")
        .unwrap();
    assert_eq!(
        p.tokens,
        vec![2048, 1357, 384, 1610, 288, 324, 383, 444, 335, 462]
    );
    let a = compare(&ref_logits(&dir, "capital"), &ours, p.vocab);
    assert!(
        a.passes(&Thresholds::default()),
        "rel RMS {} KL {} top-1 {}",
        a.max_rel_rms,
        a.mean_kl,
        a.top1
    );
}

/// Where `../shared` is beside the checkout (not needed by the suite), the
/// input rebuilt here must hold the same tensors as the case's own file
/// (but `except`, which the case fills with its own random values).
fn assert_same_tensors_as_shared_case(ours: &Path, case_file: &str, except: &[&str]) {
    let shared = root().join("../shared/cases/bughunt").join(case_file);
    if !shared.is_file() {
        return;
    }
    let (a, b) = (
        std::fs::read(ours).unwrap(),
        std::fs::read(&shared).unwrap(),
    );
    if case_file.ends_with(".gguf") {
        let (ga, gb) = (
            GgufFile::open(ours).unwrap(),
            GgufFile::open(&shared).unwrap(),
        );
        assert_eq!(ga.tensors.len(), gb.tensors.len());
        for t in gb
            .tensors
            .iter()
            .filter(|t| !except.contains(&t.name.as_str()))
        {
            let o = ga.tensor(&t.name).unwrap();
            assert_eq!((o.ty, &o.dims), (t.ty, &t.dims), "{}", t.name);
            assert!(ga.tensor_data(o) == gb.tensor_data(t), "{}", t.name);
        }
        return;
    }
    let (sa, sb) = (
        safetensors::SafeTensors::deserialize(&a).unwrap(),
        safetensors::SafeTensors::deserialize(&b).unwrap(),
    );
    assert_eq!(sa.len(), sb.len());
    for (n, t) in sb.tensors() {
        let o = sa.tensor(&n).unwrap();
        assert_eq!(
            (o.dtype(), o.shape(), o.data()),
            (t.dtype(), t.shape(), t.data()),
            "{}",
            n
        );
    }
}

/// Metadata as bitnet.cpp's pipeline writes it: no eot id.
fn bitnet_cpp_kv(g: &GgufFile) -> Vec<(String, Value)> {
    map_metadata(g, |k| {
        (k != "tokenizer.ggml.eot_token_id").then(|| k.to_string())
    })
}

#[test]
fn bitnet_cpp_layout_runs_with_the_same_logits() {
    let t = tempfile::tempdir().unwrap();
    // F16 token_embd and output (tern's default), I2_S projections,
    // permuted Q/K: the layout of convert-hf-to-gguf-bitnet.py + llama-quantize.
    let base = packed_as(t.path(), GgmlType::I2S);
    let g = GgufFile::open(&base).unwrap();
    let f16 = t.path().join("bitnet-cpp-f16.gguf");
    rewrite_gguf(&g, &f16, &bitnet_cpp_kv(&g));
    // The Q8_0 output bitnet.cpp writes when the width is not a multiple of 256.
    let q8 = t.path().join("bitnet-cpp-q8.gguf");
    requantize_where(
        &g,
        &q8,
        &bitnet_cpp_kv(&g),
        |n| n == "output.weight",
        GgmlType::Q8_0,
    );
    let mb = Model::load(&base).unwrap();
    let mf = Model::load(&f16).unwrap();
    for p in prompts(&ref_dir("transformers", "llama-b158-packed")) {
        assert_eq!(logits(&mb, &p.tokens), logits(&mf, &p.tokens));
    }
    check_transformers(&q8, "llama-b158-packed", &Thresholds::default());
}

/// A plain Q4_K encoder (not ggml's iterative one, but a valid encoding of
/// the format `tern::quant::q4_k` reads): per 32-value sub-block
/// `x ≈ d·sc·q − dmin·m` with 6-bit `sc`, `m` and 4-bit `q`.
fn q4_k_encode(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for blk in x.chunks_exact(256) {
        let (mut scale, mut mins) = ([0f32; 8], [0f32; 8]);
        for (s, sub) in blk.chunks_exact(32).enumerate() {
            let lo = sub.iter().fold(0f32, |a, &v| a.min(v));
            let hi = sub.iter().fold(0f32, |a, &v| a.max(v));
            scale[s] = (hi - lo) / 15.0;
            mins[s] = -lo;
        }
        let d = scale.iter().fold(0f32, |a, &v| a.max(v)) / 63.0;
        let dmin = mins.iter().fold(0f32, |a, &v| a.max(v)) / 63.0;
        let (d16, dmin16) = (half::f16::from_f32(d), half::f16::from_f32(dmin));
        let q6 = |v: f32, u: f32| {
            if u > 0.0 {
                (v / u).round().clamp(0.0, 63.0) as u8
            } else {
                0
            }
        };
        let sc: Vec<u8> = scale.iter().map(|&v| q6(v, d16.to_f32())).collect();
        let m: Vec<u8> = mins.iter().map(|&v| q6(v, dmin16.to_f32())).collect();
        let mut scales = [0u8; 12];
        for j in 0..4 {
            scales[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            scales[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
            scales[j + 8] = (sc[j + 4] & 0x0f) | ((m[j + 4] & 0x0f) << 4);
        }
        out.extend_from_slice(&d16.to_le_bytes());
        out.extend_from_slice(&dmin16.to_le_bytes());
        out.extend_from_slice(&scales);
        let q = |s: usize, v: f32| {
            let step = d16.to_f32() * sc[s] as f32;
            if step > 0.0 {
                ((v + dmin16.to_f32() * m[s] as f32) / step)
                    .round()
                    .clamp(0.0, 15.0) as u8
            } else {
                0
            }
        };
        for j in 0..4 {
            for l in 0..32 {
                let lo = q(2 * j, blk[64 * j + l]);
                let hi = q(2 * j + 1, blk[64 * j + 32 + l]);
                out.push(lo | (hi << 4));
            }
        }
    }
    out
}

/// A tensor re-encoded in `ty` (Q8_0 or Q4_0) the way ggml's reference
/// quantizers write it.
fn requantize(ti: &tern::gguf::TensorInfo, b: &[u8], ty: GgmlType) -> (TensorPlan, Vec<u8>) {
    let x = tern::quant::dequantize(ti.ty, b, ti.n_elements() as usize).unwrap();
    let mut out = Vec::new();
    match ty {
        GgmlType::Q8_0 => q8_0::quantize(&x, &mut out),
        GgmlType::Q4_0 => q4_0::quantize(&x, &mut out).unwrap(),
        GgmlType::Q6K => tern::quant::q6_k::quantize(&x, &mut out),
        GgmlType::Q4K => out = q4_k_encode(&x),
        other => panic!("requantize to {}", other.name()),
    }
    (TensorPlan { ty, ..plan_of(ti) }, out)
}

/// Copy of `g` (metadata `kv`) with the tensors `pick` names re-encoded in `ty`.
fn requantize_where(
    g: &GgufFile,
    out: &Path,
    kv: &[(String, Value)],
    pick: impl Fn(&str) -> bool,
    ty: GgmlType,
) {
    rewrite_gguf_tensors(
        g,
        out,
        kv,
        |ti, b| {
            Some(if pick(&ti.name) {
                requantize(ti, b, ty)
            } else {
                (plan_of(ti), b.to_vec())
            })
        },
        vec![],
    );
}

fn plan_of(t: &tern::gguf::TensorInfo) -> TensorPlan {
    TensorPlan {
        name: t.name.clone(),
        dims: t.dims.clone(),
        ty: t.ty,
    }
}

/// Mainline llama.cpp's `llama-quantize … TQ2_0` puts tensors whose rows are
/// not whole 256-blocks in Q4_0, `token_embd` in Q4_K and `output` in Q6_K;
/// the fixture's rows all fit, so the Q4_0 `ffn_down` is made here the way
/// ggml's `quantize_row_q4_0_ref` makes it, then the embedding and head.
#[test]
fn mainline_tq2_0_with_q4_0_ffn_down_runs() {
    let t = tempfile::tempdir().unwrap();
    let tq = packed_as(t.path(), GgmlType::TQ2_0);
    let g = GgufFile::open(&tq).unwrap();
    let mixed = t.path().join("mainline-tq2_0.gguf");
    let step = t.path().join("step.gguf");
    requantize_where(
        &g,
        &step,
        &g.kv,
        |n| n.ends_with("ffn_down.weight"),
        GgmlType::Q4_0,
    );
    let g = GgufFile::open(&step).unwrap();
    let step2 = t.path().join("step2.gguf");
    requantize_where(
        &g,
        &step2,
        &g.kv,
        |n| n == "token_embd.weight",
        GgmlType::Q4K,
    );
    let g = GgufFile::open(&step2).unwrap();
    requantize_where(&g, &mixed, &g.kv, |n| n == "output.weight", GgmlType::Q6K);
    let g = GgufFile::open(&mixed).unwrap();
    assert_eq!(g.tensor("token_embd.weight").unwrap().ty, GgmlType::Q4K);
    assert_eq!(
        g.tensor("blk.0.ffn_down.weight").unwrap().ty,
        GgmlType::Q4_0
    );
    let o = run_tern(
        &[
            "run",
            "-m",
            mixed.to_str().unwrap(),
            "-p",
            "Hello",
            "-n",
            "4",
            "--temp",
            "0",
        ],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Q4_0 holds +s as 7s/8 in blocks led by a negative value: close to the
    // reference, not at the noise floor.
    check_transformers(
        &mixed,
        "llama-b158-packed",
        &Thresholds {
            max_rel_rms: 0.25,
            mean_kl: 0.05,
            min_top1: 0.7,
        },
    );
}

#[test]
fn llama_gguf_with_non_ternary_projections_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let f32 = packed_as(t.path(), GgmlType::F32);
    let g = GgufFile::open(&f32).unwrap();
    // One projection with continuous values: an ordinary Llama tensor.
    let bad = t.path().join("float.gguf");
    rewrite_gguf_tensors(
        &g,
        &bad,
        &g.kv,
        |ti, b| {
            let mut b = b.to_vec();
            if ti.name == "blk.1.ffn_up.weight" {
                b[0..4].copy_from_slice(&0.123f32.to_le_bytes());
            }
            Some((plan_of(ti), b))
        },
        vec![],
    );
    let o = run_tern(
        &["run", "-m", bad.to_str().unwrap(), "-p", "Hi", "-n", "1"],
        None,
    );
    assert_clean_failure(&o, "blk.1.ffn_up.weight is not ternary");
    // Every projection block-quantized (an ordinary Q8_0 Llama): refused.
    let q8 = t.path().join("q8.gguf");
    requantize_where(
        &g,
        &q8,
        &g.kv,
        |n| n.starts_with("blk.") && !n.ends_with("norm.weight"),
        GgmlType::Q8_0,
    );
    let o = run_tern(
        &["run", "-m", q8.to_str().unwrap(), "-p", "Hi", "-n", "1"],
        None,
    );
    assert_clean_failure(&o, "no projection");
    // The F32 file itself holds only {-s, 0, +s}: it runs.
    check_transformers(&f32, "llama-b158-packed", &Thresholds::default());
}

/// `../shared/cases/bughunt/llama-arch-gguf`: the b158-packed I2_S file as
/// bitnet.cpp lays out a Llama model (arch `llama`, no sub-norms, F16
/// token_embd and a separate F16 `output.weight`). Rebuilt here from the
/// vendored reference GGUF, tensor for tensor as the case's file holds them,
/// except the head: the case's holds other random values, this one the
/// embedding's.
pub fn llama_arch_gguf(out: &Path) {
    let g = GgufFile::open(&ref_gguf("b158-packed")).unwrap();
    let kv = map_metadata(&g, |k| {
        if k == "bitnet-b1.58.hidden_activation" {
            None
        } else if k == "general.architecture" {
            Some(k.into())
        } else {
            Some(k.replace("bitnet-b1.58.", "llama."))
        }
    })
    .into_iter()
    .map(|(k, v)| {
        if k == "general.architecture" {
            (k, Value::String("llama".into()))
        } else {
            (k, v)
        }
    })
    .collect::<Vec<_>>();
    let te = g.tensor("token_embd.weight").unwrap();
    let x = tern::quant::dequantize(te.ty, g.tensor_data(te), te.n_elements() as usize).unwrap();
    let f16: Vec<u8> = x
        .iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .collect();
    let mut out_plan = plan_of(te);
    out_plan.name = "output.weight".into();
    out_plan.ty = GgmlType::F16;
    rewrite_gguf_tensors(
        &g,
        out,
        &kv,
        |ti, b| {
            if ti.name.contains("sub_norm") {
                None
            } else if ti.name == "token_embd.weight" {
                Some((
                    TensorPlan {
                        ty: GgmlType::F16,
                        ..plan_of(ti)
                    },
                    f16.clone(),
                ))
            } else {
                Some((plan_of(ti), b.to_vec()))
            }
        },
        vec![(out_plan, f16.clone())],
    );
}

#[test]
fn case_llama_arch_gguf() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("llama-arch-i2s.gguf");
    llama_arch_gguf(&f);
    assert_same_tensors_as_shared_case(
        &f,
        "llama-arch-gguf/llama-arch-i2s.gguf",
        &["output.weight"],
    );
    let o = run_tern(
        &[
            "run",
            "-m",
            f.to_str().unwrap(),
            "-p",
            "Hello",
            "-n",
            "4",
            "--temp",
            "0",
        ],
        None,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{}", err);
    assert!(err.contains("eval time"), "{}", err);
    let m = Model::load(&f).unwrap();
    assert_eq!(m.hp.arch, "llama");
    assert!(m.layers.iter().all(|l| l.attn_sub_norm.is_none()));
    assert!(m.output.is_some());
    // The llama graph, not the BitNet one: SiLU, adjacent-pair RoPE.
    assert_eq!(m.hp.activation, tern::hf::config::Activation::Silu);
    assert_eq!(m.hp.rope_layout, tern::arch::RopeLayout::Adjacent);
}

/// `../shared/cases/bughunt/llama-family-convert`: a Falcon3-1.58bit-shaped
/// checkpoint (and the Llama3-8B-1.58 config variant). Its weights are the
/// vendored b158-packed codes without sub-norms plus an untied `lm_head`, the
/// form of the case's `falcon3-llama` folder.
#[test]
fn case_llama_family_convert() {
    let t = tempfile::tempdir().unwrap();
    for cfg in [
        "config.falcon3-llama.json",
        "config.llama3-8b-1.58-variant.json",
    ] {
        let d = t.path().join(cfg.trim_end_matches(".json"));
        let mut lm_head = None;
        rewrite_checkpoint(
            &hf_dir("b158-packed"),
            &d,
            |n, x| {
                if n == "model.embed_tokens.weight" {
                    lm_head = Some(x.clone());
                }
                (!n.contains("sub_norm")).then_some(x)
            },
            vec![],
        );
        // lm_head: the embedding, reversed row order (untied, not a copy).
        let (dt, shape, bytes) = lm_head.unwrap();
        let row = shape[1] * 2;
        let rev: Vec<u8> = bytes.chunks(row).rev().flatten().copied().collect();
        let d2 = t
            .path()
            .join(format!("{}-full", cfg.trim_end_matches(".json")));
        rewrite_checkpoint(
            &d,
            &d2,
            |_, x| Some(x),
            vec![("lm_head.weight".into(), (dt, shape, rev))],
        );
        std::fs::copy(
            root()
                .join("tests/data/bughunt/llama-family-convert")
                .join(cfg),
            d2.join("config.json"),
        )
        .unwrap();
        let out = t.path().join(format!("{}.gguf", cfg));
        let o = run_tern(
            &[
                "convert",
                d2.to_str().unwrap(),
                "--outfile",
                out.to_str().unwrap(),
            ],
            None,
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let g = GgufFile::open(&out).unwrap();
        assert_eq!(g.architecture(), Some("llama"));
        assert_eq!(g.tensor("output.weight").unwrap().ty, GgmlType::F16);
        assert!(g
            .tensors
            .iter()
            .filter(|t| t.name.starts_with("blk.") && !t.name.contains("norm"))
            .all(|t| t.ty == GgmlType::I2S));
        let o = run_tern(
            &["run", "-m", out.to_str().unwrap(), "-p", "Hello", "-n", "4"],
            None,
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    // A LlamaForCausalLM that is not ternary: a clear refusal.
    let d = t.path().join("plain-llama");
    copy_dir(&hf_dir("llama-b158-online"), &d);
    edit_config(&d, |j| {
        j.as_object_mut().unwrap().remove("quantization_config");
    });
    let o = run_tern(
        &["convert", d.to_str().unwrap(), "--outfile", "x.gguf"],
        Some(t.path()),
    );
    assert_clean_failure(&o, "not a ternary model");
}

/// `../shared/cases/bughunt/rope-scaling-dropped-convert`: b158-bf16 with
/// `rope_scaling {type: linear, factor: 2}`.
#[test]
fn case_rope_scaling_dropped_convert() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("rope-scaling-dropped-convert");
    copy_dir(&hf_dir("b158-bf16"), &d);
    std::fs::copy(
        root().join("tests/data/bughunt/rope-scaling-dropped-convert/config.json"),
        d.join("config.json"),
    )
    .unwrap();
    let o = run_tern(
        &["convert", d.to_str().unwrap(), "--outfile", "out.gguf"],
        Some(t.path()),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run_tern(&["inspect", "out.gguf"], Some(t.path()));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("bitnet-b1.58.rope.scaling.type") && text.contains("\"linear\""),
        "{}",
        text
    );
    assert!(
        text.contains("bitnet-b1.58.rope.scaling.factor"),
        "{}",
        text
    );
    // Applied: every angle halved (position p rotates as p/2 would) ...
    let scaled = Model::load(&t.path().join("out.gguf")).unwrap();
    let plain = Model::load(&ref_gguf("b158-bf16")).unwrap();
    for (a, b) in scaled.hp.rope.inv_freq.iter().zip(&plain.hp.rope.inv_freq) {
        assert_eq!(*a, *b / 2.0);
    }
    // ... and the logits agree with an independent linear-2× reference
    // (vendor/reference/numpy), which the unscaled model misses.
    let dir = root().join("vendor/reference/numpy/rope-scaling-linear2");
    for p in prompts(&dir) {
        let reference = ref_logits(&dir, &p.name);
        let a = compare(&reference, &logits(&scaled, &p.tokens), p.vocab);
        assert!(
            a.passes(&Thresholds::default()),
            "{}: rel RMS {:.4}, KL {:.5}, top-1 {:.2}",
            p.name,
            a.max_rel_rms,
            a.mean_kl,
            a.top1
        );
        let b = compare(&reference, &logits(&plain, &p.tokens), p.vocab);
        assert!(b.max_rel_rms > 0.07, "{}: {:.4}", p.name, b.max_rel_rms);
    }
    // A type tern cannot apply is an error at conversion, not dropped.
    edit_config(&d, |j| {
        j["rope_scaling"] = serde_json::json!({"type": "dynamic", "factor": 2.0});
    });
    let o = run_tern(
        &["convert", d.to_str().unwrap(), "--outfile", "dyn.gguf"],
        Some(t.path()),
    );
    assert_clean_failure(&o, "cannot apply");
    // And at run time.
    let g = GgufFile::open(&t.path().join("out.gguf")).unwrap();
    let kv = map_metadata(&g, |k| Some(k.into()))
        .into_iter()
        .map(|(k, v)| {
            if k.ends_with("rope.scaling.type") {
                (k, Value::String("longrope".into()))
            } else {
                (k, v)
            }
        })
        .collect::<Vec<_>>();
    let bad = t.path().join("longrope.gguf");
    rewrite_gguf(&g, &bad, &kv);
    let o = run_tern(
        &["run", "-m", bad.to_str().unwrap(), "-p", "Hi", "-n", "1"],
        None,
    );
    assert_clean_failure(&o, "cannot apply");
}

/// llama3 and yarn scaling are written the way llama.cpp's converter writes
/// them and read back into the same frequencies.
#[test]
fn llama3_and_yarn_rope_scaling_round_trip() {
    let t = tempfile::tempdir().unwrap();
    for (scaling, expect) in [
        (
            serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 256}),
            tern::hf::config::RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_context: 256,
            },
        ),
        (
            serde_json::json!({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048}),
            tern::hf::config::RopeScaling::Yarn {
                factor: 4.0,
                original_context: 2048,
            },
        ),
    ] {
        let d = t.path().join("m");
        let _ = std::fs::remove_dir_all(&d);
        copy_dir(&hf_dir("llama-b158-packed"), &d);
        edit_config(&d, |j| j["rope_scaling"] = scaling.clone());
        let out = t.path().join("s.gguf");
        let _ = std::fs::remove_file(&out);
        convert_to(&d, &out, GgmlType::I2S, GgmlType::F16);
        let g = GgufFile::open(&out).unwrap();
        let m = Model::load(&out).unwrap();
        let want = tern::rope::freqs(
            32,
            1000042.0,
            expect,
            Some(&tern::rope::llama3_freq_factors(32, 1000042.0, expect)),
        );
        assert_eq!(m.hp.rope, want);
        match expect {
            tern::hf::config::RopeScaling::Llama3 { .. } => {
                assert!(g.tensor("rope_freqs.weight").is_some());
                assert!(g.get_str("llama.rope.scaling.type").is_none());
            }
            _ => {
                assert_eq!(g.get_str("llama.rope.scaling.type"), Some("yarn"));
                assert_eq!(
                    g.get_u64("llama.rope.scaling.original_context_length"),
                    Some(2048)
                );
            }
        }
    }
}

/// `use_rms_norm`: every converted linear normalizes its own input with its
/// own weights; the norms are carried into the GGUF and applied. Shown by a
/// property only they have: scaling `attn_norm`/`ffn_norm` by a constant
/// leaves the logits unchanged (each input norm removes it), while without
/// them the projections' outputs scale with it.
#[test]
fn use_rms_norm_input_norms_are_kept_and_applied() {
    let t = tempfile::tempdir().unwrap();
    let with_norms = |scale_pre_norms: f32, name: &str| -> Model {
        let d = t.path().join(name);
        rewrite_checkpoint(
            &hf_dir("llama-b158-packed"),
            &d,
            |n, x| {
                if n.ends_with("input_layernorm.weight")
                    || n.ends_with("post_attention_layernorm.weight")
                {
                    let v: Vec<u8> =
                        x.2.chunks(2)
                            .flat_map(|c| {
                                let f = half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
                                half::bf16::from_f32(f * scale_pre_norms).to_le_bytes()
                            })
                            .collect();
                    Some((x.0, x.1, v))
                } else {
                    Some(x)
                }
            },
            (0..2)
                .flat_map(|l| {
                    [
                        ("self_attn.q_proj", 256),
                        ("self_attn.k_proj", 256),
                        ("self_attn.v_proj", 256),
                        ("self_attn.o_proj", 256),
                        ("mlp.gate_proj", 256),
                        ("mlp.up_proj", 256),
                        ("mlp.down_proj", 768),
                    ]
                    .into_iter()
                    .map(move |(m, n)| {
                        // Weights 0.5..1.5 varying along the input.
                        let w: Vec<u8> = (0..n)
                            .flat_map(|i| {
                                half::bf16::from_f32(0.5 + (i % 7) as f32 / 7.0).to_le_bytes()
                            })
                            .collect();
                        (
                            format!("model.layers.{}.{}.rms_norm.weight", l, m),
                            (Dtype::BF16, vec![n], w),
                        )
                    })
                })
                .collect(),
        );
        edit_config(&d, |j| {
            j["quantization_config"]["use_rms_norm"] = true.into();
        });
        let out = t.path().join(format!("{}.gguf", name));
        convert_to(&d, &out, GgmlType::I2S, GgmlType::F16);
        let g = GgufFile::open(&out).unwrap();
        assert!(g.tensor("blk.1.ffn_down_input_norm.weight").is_some());
        Model::load(&out).unwrap()
    };
    let a = with_norms(1.0, "n1");
    let b = with_norms(4.0, "n4");
    assert!(a.layers.iter().all(|l| l.input_norms.is_some()));
    let plain = Model::load(&packed_as(t.path(), GgmlType::I2S)).unwrap();
    let p = &prompts(&ref_dir("transformers", "llama-b158-packed"))[0];
    let (la, lb) = (logits(&a, &p.tokens), logits(&b, &p.tokens));
    // Equal up to int8 rounding flips (the f32 norms of c·x and x differ in
    // the last bits).
    let same = compare(&la, &lb, 2304);
    let differ = compare(&logits(&plain, &p.tokens), &la, 2304);
    eprintln!(
        "pre-norms ×4 with input norms: rel RMS {:.4}; without input norms: {:.4}",
        same.max_rel_rms, differ.max_rel_rms
    );
    assert!(
        same.passes(&Thresholds::default()),
        "input norms not applied: {}",
        same.max_rel_rms
    );
    assert!(
        differ.max_rel_rms > 0.3,
        "input norms had no effect: {}",
        differ.max_rel_rms
    );
}

/// A Falcon3-style tokenizer: the LLaMA-3 split in a vocabulary carrying the
/// Falcon family's special tokens (here two reserved specials renamed).
/// Converted, it is named `falcon3`; tern's run-time tokenization (built from
/// the GGUF alone) equals the `tokenizers` crate's on tokenizer.json.
#[test]
fn falcon3_tokenizer_converts_and_tokenizes_like_tokenizers() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("falcon3-tok");
    copy_dir(&hf_dir("llama-b158-packed"), &d);
    let p = d.join("tokenizer.json");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("<|reserved_special_token_0|>", ">>TITLE<<")
        .replace("<|reserved_special_token_1|>", ">>ABSTRACT<<");
    std::fs::write(&p, text).unwrap();
    let out = convert_to(&d, &t.path().join("f.gguf"), GgmlType::I2S, GgmlType::F16);
    let g = GgufFile::open(&out).unwrap();
    assert_eq!(g.get_str("tokenizer.ggml.pre"), Some("falcon3"));
    let m = Model::load(&out).unwrap();
    let hf = tokenizers::Tokenizer::from_file(&p).unwrap();
    let dir = ref_dir("transformers", "llama-b158-packed");
    for pr in prompts(&dir) {
        let ours = m.tokenizer.encode(&pr.text, true).unwrap();
        let theirs = hf
            .encode(pr.text.as_str(), true)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(ours, theirs, "{}", pr.name);
        assert_eq!(ours, pr.tokens, "{}", pr.name);
    }
    // The same vocabulary with the LLaMA-3 split stays llama-bpe.
    let g = GgufFile::open(&packed_as(t.path(), GgmlType::I2S)).unwrap();
    assert_eq!(g.get_str("tokenizer.ggml.pre"), Some("llama-bpe"));
}

/// A sharded Falcon3-style checkpoint whose weights and `weight_scale`s lie
/// in different shards converts to the same bytes as the single file.
#[test]
fn sharded_llama_checkpoint_with_scales_in_another_shard() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("sharded");
    copy_dir(&hf_dir("llama-b158-packed"), &d);
    shard_checkpoint(&d, 2, |_, name| usize::from(name.ends_with("weight_scale")));
    let a = convert_to(&d, &t.path().join("s.gguf"), GgmlType::I2S, GgmlType::F16);
    let b = packed_as(t.path(), GgmlType::I2S);
    let (ga, gb) = (GgufFile::open(&a).unwrap(), GgufFile::open(&b).unwrap());
    assert_eq!(ga.tensors.len(), gb.tensors.len());
    for tb in &gb.tensors {
        let ta = ga.tensor(&tb.name).unwrap();
        assert!(ga.tensor_data(ta) == gb.tensor_data(tb), "{}", tb.name);
    }
}

/// `modules_to_not_convert: []` (a literal list without `lm_head`): the head
/// is a BitLinear too. tern writes it ternary and runs it with int8
/// activations; the independent numpy reference of that model agrees, the
/// float-head model does not.
#[test]
fn lm_head_converted_when_the_list_leaves_it_out() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("head");
    copy_dir(&hf_dir("llama-b158-online"), &d);
    edit_config(&d, |j| {
        j["quantization_config"]["modules_to_not_convert"] = serde_json::json!([]);
    });
    let out = convert_to(&d, &t.path().join("h.gguf"), GgmlType::I2S, GgmlType::F16);
    let g = GgufFile::open(&out).unwrap();
    assert_eq!(g.tensor("output.weight").unwrap().ty, GgmlType::I2S);
    let m = Model::load(&out).unwrap();
    assert!(m.output.is_some());
    assert_eq!(m.head().ty(), GgmlType::I2S, "the head is a BitLinear");
    assert!(m.head().ternary());
    let plain = Model::load(&convert_to(
        &hf_dir("llama-b158-online"),
        &t.path().join("p.gguf"),
        GgmlType::I2S,
        GgmlType::F16,
    ))
    .unwrap();
    let dir = root().join("vendor/reference/numpy/llama-b158-online-ternary-head");
    for p in prompts(&dir) {
        let reference = ref_logits(&dir, &p.name);
        let a = compare(&reference, &logits(&m, &p.tokens), p.vocab);
        assert!(
            a.passes(&Thresholds::default()),
            "{}: {:.4}",
            p.name,
            a.max_rel_rms
        );
        let b = compare(&reference, &logits(&plain, &p.tokens), p.vocab);
        assert!(
            !b.passes(&Thresholds::default()),
            "{}: {:.4}",
            p.name,
            b.max_rel_rms
        );
    }
    // Tied embeddings with a converted head: refused in one line.
    edit_config(&d, |j| j["tie_word_embeddings"] = true.into());
    let o = run_tern(
        &["convert", d.to_str().unwrap(), "--outfile", "x.gguf"],
        Some(t.path()),
    );
    assert_clean_failure(&o, "lm_head");
}
