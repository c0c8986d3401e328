//! Live cross-checks against bitnet.cpp linked in-process (cargo feature
//! `bitnet-cpp`; `.ci/bitnet-cpp.sh` installs what it needs and runs them):
//!
//! - kernel level: tern's I2_S packing, activation quantization and int8 ×
//!   ternary dot products against ggml's `quantize_i2_s`,
//!   `quantize_row_i8_s` and `ggml_vec_dot_i2_i8_s` on random data: identical
//!   bytes and integers (this is also what shows gcc built that code right);
//! - model level: tern and bitnet.cpp on the `bitnet-silu` reference GGUF,
//!   directly and through `tern check --bitnet-cpp`.
#![cfg(feature = "bitnet-cpp")]

use std::path::{Path, PathBuf};
use std::process::Command;
use tern::bitnet_cpp;
use tern::kernels::{self, scalar, Packed};
use tern::metrics::{compare, Thresholds};
use tern::model::{Context, Model};
use tern::quant::i2s;

mod common;
use common::{convert_to, root};

fn silu_gguf() -> PathBuf {
    root().join("vendor/reference/gguf/bitnet-silu.i2_s.gguf")
}

/// Small deterministic generator (PCG-style LCG, high bits).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
    /// Ternary code with about 30% zeros.
    fn code(&mut self) -> i8 {
        match self.next() % 10 {
            0..=2 => 0,
            3..=6 => 1,
            _ => -1,
        }
    }
    fn i8(&mut self) -> i8 {
        self.next() as u8 as i8
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() as f64 / (1u64 << 31) as f64 - 1.0) as f32
    }
}

/// Shapes (rows, cols) covering one block, tails of the 32-block groups in
/// ggml's kernel (cols / 128 not a multiple of 32) and whole groups.
const SHAPES: &[(usize, usize)] = &[
    (1, 128),
    (3, 256),
    (5, 640),
    (4, 2560),
    (2, 4096),
    (3, 4096 + 384),
    (1, 12288),
];

#[test]
fn build_record_and_abi() {
    eprintln!("bitnet.cpp sources: {}", bitnet_cpp::SOURCE_DIR);
    eprintln!("compiled by: {}", bitnet_cpp::COMPILER);
    assert!(Path::new(bitnet_cpp::SOURCE_DIR).ends_with("bitnet-cpp-sys-0.0.5"));
    let bad = bitnet_cpp::layout_mismatches();
    assert!(bad.is_empty(), "struct layouts differ: {:?}", bad);
    bitnet_cpp::ensure_ready().unwrap();
}

#[test]
fn i2s_packing_matches_quantize_i2_s() {
    let mut rng = Rng(0x1234);
    for &(rows, cols) in SHAPES {
        let n = rows * cols;
        let codes: Vec<i8> = (0..n).map(|_| rng.code()).collect();
        let scale = 0.001 + (rng.next() % 1000) as f32 * 1e-4;
        let values: Vec<f32> = codes.iter().map(|&c| c as f32 * scale).collect();
        let mut ours = Vec::new();
        i2s::encode(&codes, scale, &mut ours);
        let theirs = bitnet_cpp::quantize_i2_s(&values, rows, cols).unwrap();
        assert_eq!(ours.len(), theirs.len(), "size for {}×{}", rows, cols);
        if let Some(i) = ours.iter().zip(&theirs).position(|(a, b)| a != b) {
            panic!(
                "{}×{}: first differing byte {}: tern {:#04x}, ggml {:#04x}",
                rows, cols, i, ours[i], theirs[i]
            );
        }
        assert_eq!(i2s::decode_codes(&theirs, n), codes);
        assert_eq!(i2s::scale(&theirs, n), scale);
    }
}

#[test]
fn reference_gguf_tensors_repack_identically() {
    // Every ternary tensor of the bitnet-silu reference GGUF, unpacked by
    // tern and packed again by bitnet.cpp: the file's bytes come back.
    let g = tern::gguf::GgufFile::open(&silu_gguf()).unwrap();
    let mut seen = 0;
    for t in g
        .tensors
        .iter()
        .filter(|t| t.ty == tern::quant::GgmlType::I2S)
    {
        let data = g.tensor_data(t);
        let n = t.n_elements() as usize;
        let (rows, cols) = t.rows_cols();
        let s = i2s::validate(data, n).unwrap();
        let values: Vec<f32> = i2s::decode_codes(data, n)
            .iter()
            .map(|&c| c as f32 * s)
            .collect();
        let packed = bitnet_cpp::quantize_i2_s(&values, rows, cols).unwrap();
        assert_eq!(packed, data, "{}", t.name);
        seen += 1;
    }
    assert_eq!(seen, 14);
}

#[test]
fn activation_quantization_matches_quantize_row_i8_s() {
    let mut rng = Rng(0x5678);
    let kerns = kernels::available();
    for (i, &k) in [128usize, 256, 640, 2560, 4096].iter().enumerate() {
        for trial in 0..6 {
            let mag = [1e-3f32, 0.1, 1.0, 30.0, 1e4, 0.0][trial];
            let mut x: Vec<f32> = (0..k).map(|_| rng.unit() * mag).collect();
            if trial == 2 {
                // Exact halves after scaling (max 127 → scale 1): ties to even.
                for (j, v) in x.iter_mut().enumerate() {
                    *v = (j % 255) as f32 - 127.0 + if j.is_multiple_of(3) { 0.5 } else { 0.0 };
                }
                x[0] = 127.0;
            }
            let (q, s, sum) = bitnet_cpp::quantize_row_i8_s(&x).unwrap();
            for kern in &kerns {
                let mut ours = vec![0i8; k];
                let (a, our_sum) = kern.quantize_act(&x, &mut ours);
                let ctx = format!("{} k {} case {} (shape {})", kern.name(), k, trial, i);
                assert_eq!(ours, q, "{}", ctx);
                assert_eq!(our_sum, sum, "{}", ctx);
                assert_eq!(a.to_bits(), s.to_bits(), "{}: scale {} vs {}", ctx, a, s);
            }
        }
    }
}

#[test]
fn ternary_dot_products_match_ggml() {
    let mut rng = Rng(0x9abc);
    let kerns = kernels::available();
    for &(rows, cols) in SHAPES {
        let codes: Vec<i8> = (0..rows * cols).map(|_| rng.code()).collect();
        let mut w = Vec::new();
        i2s::encode(&codes, 1.0, &mut w);
        w.truncate(rows * cols / 4);
        let packed = Packed::from_i2s(&w, rows, cols).unwrap();
        // Two activation rows: raw random int8, and real quantized floats.
        let mut xs: Vec<i8> = (0..cols).map(|_| rng.i8()).collect();
        let f: Vec<f32> = (0..cols).map(|_| rng.unit() * 3.0).collect();
        let (q, _, qsum) = bitnet_cpp::quantize_row_i8_s(&f).unwrap();
        let rsum: i32 = xs.iter().map(|&v| v as i32).sum();
        xs.extend_from_slice(&q);
        let sums = [rsum, qsum];
        let groups = packed.groups();
        let ld = 4 * groups;
        let mut outs: Vec<(&str, Vec<i32>)> = Vec::new();
        for kern in &kerns {
            let mut out = vec![0i32; 2 * ld];
            kern.i2s_gemm(&packed, 0, groups, &xs, &sums, &mut out);
            outs.push((kern.name(), out));
        }
        for t in 0..2 {
            let x = &xs[t * cols..(t + 1) * cols];
            for m in 0..rows {
                let row = &w[m * cols / 4..(m + 1) * cols / 4];
                let exact: i64 = codes[m * cols..(m + 1) * cols]
                    .iter()
                    .zip(x)
                    .map(|(&c, &v)| c as i64 * v as i64)
                    .sum();
                let ggml = bitnet_cpp::ternary_dot(row, x).unwrap();
                let ours = scalar::dot_i2s(row, x, sums[t]) as i64;
                let ctx = format!("{}×{} row {} act {}", rows, cols, m, t);
                assert_eq!(ggml, exact, "ggml vs exact, {}", ctx);
                assert_eq!(ours, ggml, "tern scalar vs ggml, {}", ctx);
                for (name, out) in &outs {
                    assert_eq!(
                        out[t * ld + m] as i64,
                        ggml,
                        "tern {} vs ggml, {}",
                        name,
                        ctx
                    );
                }
            }
        }
    }
}

#[test]
fn ggml_dot_wraps_in_int16_where_tern_does_not() {
    // A documented limit of the reference kernel, not of tern: ggml's AVX2
    // I2_S dot product sums the products of up to 32 blocks in 16-bit lanes,
    // so extreme inputs (all weights +1, all activations 127, 32 blocks)
    // wrap modulo 2^16 per lane. The random data above stays far from this.
    let cols = 4096;
    let codes = vec![1i8; cols];
    let mut w = Vec::new();
    i2s::encode(&codes, 1.0, &mut w);
    w.truncate(cols / 4);
    let x = vec![127i8; cols];
    let exact = 127 * cols as i64;
    let ours = scalar::dot_i2s(&w, &x, 127 * cols as i32) as i64;
    assert_eq!(ours, exact);
    let ggml = bitnet_cpp::ternary_dot(&w, &x).unwrap();
    assert_ne!(ggml, exact, "ggml's kernel was expected to wrap here");
    assert_eq!(
        (exact - ggml).rem_euclid(1 << 16),
        0,
        "ggml {} vs exact {}",
        ggml,
        exact
    );
}

fn prompts() -> Vec<(String, Vec<u32>)> {
    let dir = root().join("vendor/reference/bitnet.cpp/bitnet-silu");
    let mut v = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if let Some(stem) = name.strip_suffix(".tokens.json") {
            let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            let toks = j["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap() as u32)
                .collect();
            v.push((stem.to_string(), toks));
        }
    }
    v.sort();
    assert_eq!(v.len(), 5);
    v
}

#[test]
fn bitnet_silu_logits_agree_with_tern() {
    let path = silu_gguf();
    let model = Model::load(&path).unwrap();
    let engine = bitnet_cpp::Engine::load(&path).unwrap();
    let nv = model.hp.n_vocab;
    assert_eq!(engine.n_vocab(), nv);
    let t = Thresholds::default();
    for (name, toks) in prompts() {
        let ours = Context::new(&model, toks.len(), false)
            .eval(&toks, true)
            .unwrap();
        let theirs = engine.evaluate(&toks, 0).unwrap().logits;
        assert_eq!(
            theirs,
            bitnet_cpp::logits_all(&path, &toks).unwrap(),
            "{}: logits_all",
            name
        );
        let a = compare(&theirs, &ours, nv);
        eprintln!(
            "{}: tern vs live bitnet.cpp: max rel RMS {:.5}, mean KL {:.2e}, top-1 {:.2}",
            name, a.max_rel_rms, a.mean_kl, a.top1
        );
        assert!(a.passes(&t), "{}: {:?}", name, a);
        // The stored early-2026 bitnet.cpp reference and the linked late-2024
        // one run the same graph for `bitnet`.
        let stored = tern::metrics::read_f32_file(&root().join(format!(
            "vendor/reference/bitnet.cpp/bitnet-silu/{}.logits.f32",
            name
        )))
        .unwrap();
        let b = compare(&stored, &theirs, nv);
        eprintln!(
            "{}: live vs stored bitnet.cpp: max rel RMS {:.5}, mean KL {:.2e}, top-1 {:.2}",
            name, b.max_rel_rms, b.mean_kl, b.top1
        );
        assert!(b.passes(&t), "{}: {:?}", name, b);
    }
}

#[test]
fn greedy_continuation_uses_the_kv_cache() {
    // Greedy tokens from the cached path equal argmax of a fresh one-batch
    // evaluation of the extended sequence.
    let path = silu_gguf();
    let engine = bitnet_cpp::Engine::load(&path).unwrap();
    let (_, toks) = &prompts()[0];
    let ev = engine.evaluate(toks, 4).unwrap();
    assert_eq!(ev.greedy.len(), 4);
    let mut ext = toks.clone();
    ext.extend_from_slice(&ev.greedy[..3]);
    let full = engine.evaluate(&ext, 0).unwrap().logits;
    let nv = engine.n_vocab();
    for i in 0..4 {
        let row = &full[(toks.len() - 1 + i) * nv..(toks.len() + i) * nv];
        assert_eq!(
            tern::model::sampling::argmax(row),
            ev.greedy[i],
            "greedy token {}",
            i
        );
    }
}

#[test]
fn refuses_what_this_bitnet_cpp_cannot_run() {
    let g = root().join("vendor/reference/gguf/b158-bf16.i2_s.gguf");
    let e = bitnet_cpp::logits_all(&g, &[1, 2, 3])
        .unwrap_err()
        .to_string();
    assert!(e.contains("bitnet-b1.58"), "{}", e);
    let e = bitnet_cpp::logits_all(&silu_gguf(), &[1, 999_999])
        .unwrap_err()
        .to_string();
    assert!(e.contains("999999"), "{}", e);
    let e = bitnet_cpp::logits_all(&silu_gguf(), &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("no tokens"), "{}", e);
    let e = bitnet_cpp::logits_all(&root().join("no/such.gguf"), &[1]).unwrap_err();
    assert!(format!("{:#}", e).contains("no/such.gguf"), "{:#}", e);
    assert!(bitnet_cpp::quantize_i2_s(&[0.0; 100], 1, 100).is_err());
    assert!(bitnet_cpp::vec_dot_i2_i8_s(&[0u8; 32], &[0i8; 64]).is_err());
}

#[test]
fn tern_check_bitnet_cpp_cli() {
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["check", "--bitnet-cpp", "-m"])
        .arg(silu_gguf())
        .args(["-p", "The capital of France is", "-p", "Numbers: 1, 2, 3,"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{}{}", stdout, stderr);
    assert!(
        out.status.success(),
        "tern check --bitnet-cpp failed:\n{}{}",
        stdout,
        stderr
    );
    assert!(stdout.contains("bitnet.cpp (live)"), "{}", stdout);
    assert!(stdout.contains("PASS: 2/2 prompts"), "{}", stdout);
}

/// The timing entry points behind `tern bench --bitnet-cpp`: one sample per
/// repetition, each a real run (a prompt past the micro-batch cap goes
/// through in pieces instead of overflowing bitnet.cpp's stack), and the
/// context they use leaves the engine's logits unchanged afterwards.
#[test]
fn engine_timings_for_bench() {
    let engine = bitnet_cpp::Engine::load(&silu_gguf()).unwrap();
    let nv = engine.n_vocab() as u32;
    let mut rng = Rng(11);
    let toks: Vec<u32> = (0..bitnet_cpp::BENCH_MAX_UBATCH + 150)
        .map(|_| rng.next() % nv)
        .collect();
    let before = engine.evaluate(&toks[..8], 0).unwrap().logits;
    for threads in [1, 2] {
        let pp = engine.time_prompt(threads, &toks, 2).unwrap();
        assert_eq!(pp.len(), 2);
        assert!(pp.iter().all(|&s| s > 0.0 && s.is_finite()), "{:?}", pp);
        let tg = engine.time_gen(threads, &toks[..6], 3).unwrap();
        assert_eq!(tg.len(), 3);
        assert!(tg.iter().all(|&s| s > 0.0 && s.is_finite()), "{:?}", tg);
    }
    assert!(engine.time_prompt(1, &[], 1).is_err());
    assert!(engine.time_gen(1, &[nv], 1).is_err());
    assert_eq!(engine.evaluate(&toks[..8], 0).unwrap().logits, before);

    // Through the CLI, side by side with tern.
    let g = silu_gguf();
    let o = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args([
            "bench",
            "-m",
            g.to_str().unwrap(),
            "--bitnet-cpp",
            "-p",
            "32",
            "-n",
            "4",
            "-r",
            "1",
            "-t",
            "1",
            "--bw-mib",
            "8",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = String::from_utf8_lossy(&o.stdout);
    for want in [
        "| tern ",
        "| bitnet.cpp late-2024 (",
        "pp32, 1 thread: tern",
        "tg4, 1 thread: tern",
        // Which bitnet.cpp it is: the late-2024 one of the crate, said in
        // the output so nobody reads it as today's bitnet.cpp.
        "bitnet-cpp-sys 0.0.5",
        "late 2024",
    ] {
        assert!(md.contains(want), "missing {:?} in\n{}", want, md);
    }
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("bitnet-cpp-sys 0.0.5"),
        "the build is named before the timings too"
    );
}

/// A quantized token embedding / output head (`--embd-type q8_0|q6_k`):
/// bitnet.cpp runs the very file tern wrote (ggml's own Q8_0 / Q6_K dot
/// products on it) and tern's logits agree within the usual thresholds.
#[test]
fn quantized_head_agrees_with_bitnet_cpp() {
    let t = tempfile::tempdir().unwrap();
    let hf = root().join("models/fixtures/bitnet-silu");
    for (embd, ty) in [
        ("q8_0", tern::quant::GgmlType::Q8_0),
        ("q6_k", tern::quant::GgmlType::Q6K),
    ] {
        let out = t.path().join(format!("silu-{}.gguf", embd));
        let o = Command::new(env!("CARGO_BIN_EXE_tern"))
            .arg("convert")
            .arg(&hf)
            .args(["--embd-type", embd, "--outfile"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let g = tern::gguf::GgufFile::open(&out).unwrap();
        assert_eq!(g.tensor("token_embd.weight").unwrap().ty, ty);
        let o = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["check", "--bitnet-cpp", "-m"])
            .arg(&out)
            .args(["-p", "The capital of France is", "-p", "Numbers: 1, 2, 3,"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout);
        eprintln!("{}: {}{}", embd, stdout, String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "{}", stdout);
        assert!(stdout.contains("PASS: 2/2 prompts"), "{}", stdout);
    }
}

/// bitnet.cpp's llama graph on tern's own `llama` I2_S conversion of the
/// `llama-b158-packed` fixture (permuted Q/K, F16 token_embd and output),
/// through `tern check --bitnet-cpp` with the transformers reference prompts.
#[test]
fn tern_check_bitnet_cpp_llama_i2s() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("llama-b158-packed-i2_s.gguf");
    convert_to(
        &root().join("models/fixtures/llama-b158-packed"),
        &out,
        tern::quant::GgmlType::I2S,
        tern::quant::GgmlType::F16,
    );
    let o = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["check", "--bitnet-cpp", "-m"])
        .arg(&out)
        .arg("--reference")
        .arg(root().join("vendor/reference/transformers/llama-b158-packed"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    eprintln!("{}{}", stdout, stderr);
    assert!(o.status.success(), "{}{}", stdout, stderr);
    assert!(stdout.contains("bitnet.cpp (live)"), "{}", stdout);
    assert!(stdout.contains("PASS: 5/5 prompts"), "{}", stdout);
    // And bitnet.cpp against the transformers reference directly.
    let dir = root().join("vendor/reference/transformers/llama-b158-packed");
    let th = Thresholds::default();
    for name in ["capital", "split"] {
        let j: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("{}.tokens.json", name))).unwrap(),
        )
        .unwrap();
        let tokens: Vec<u32> = j["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let theirs = bitnet_cpp::logits_all(&out, &tokens).unwrap();
        let reference =
            tern::metrics::read_f32_file(&dir.join(format!("{}.logits.f32", name))).unwrap();
        let a = compare(&reference, &theirs, 2304);
        eprintln!(
            "bitnet.cpp vs transformers, {}: max rel RMS {:.4}, mean KL {:.5}, top-1 {:.2}",
            name, a.max_rel_rms, a.mean_kl, a.top1
        );
        assert!(a.passes(&th), "{}", name);
    }
}
