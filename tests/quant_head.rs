//! Quantized token embedding / output head (`tern convert --embd-type
//! q8_0 | q6_k`): the quantizers against bytes written by ggml's own
//! reference code (`vendor/reference/quant`, see its PROVENANCE.md), the
//! dot products against ggml's, and the converter and runtime end to end
//! from the CLI on the built-in trained model. The kernel property tests
//! (every SIMD variant against the scalar reference) are in tests/kernels.rs,
//! which CI also runs under qemu for NEON.

mod common;

use common::*;
use half::f16;
use std::path::{Path, PathBuf};
use tern::gguf::GgufFile;
use tern::kernels::{all_variants, BlockActs, QuantHead, RowLayout};
use tern::quant::{q6_k, q8_0, GgmlType};

fn refdir() -> PathBuf {
    root().join("vendor/reference/quant")
}

fn vendored(name: &str) -> Vec<u8> {
    std::fs::read(refdir().join(name)).unwrap_or_else(|e| panic!("{}: {}", name, e))
}

/// 12 rows of 256 floats: embedding-like, uniform, outliers, zero
/// sub-blocks, tiny, exact halves (rounding ties), all zero, a negative
/// maximum, constant, ramp, large, spiky.
fn inputs() -> Vec<f32> {
    tern::metrics::read_f32_file(&refdir().join("inputs.f32")).unwrap()
}

const ROWS: usize = 12;
const K: usize = 256;
/// ggml's `block_q8_K`: f32 d, 256 quants, 16 i16 sums.
const Q8K_BYTES: usize = 4 + 256 + 32;

#[test]
fn q8_0_quantizer_writes_ggml_reference_bytes() {
    let x = inputs();
    assert_eq!(x.len(), ROWS * K);
    let mut got = Vec::new();
    q8_0::quantize(&x, &mut got);
    let want = vendored("q8_0.bin");
    assert_eq!(got.len(), want.len());
    for (b, (g, w)) in got
        .chunks(q8_0::BLOCK_BYTES)
        .zip(want.chunks(q8_0::BLOCK_BYTES))
        .enumerate()
    {
        assert_eq!(g, w, "Q8_0 block {} (row {})", b, b / 8);
    }
    // Dequantization is d · q exactly.
    let mut y = vec![0f32; x.len()];
    q8_0::dequantize(&want, &mut y);
    for (i, &v) in y.iter().enumerate() {
        let b = &want[i / 32 * 34..];
        let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
        assert_eq!(v, d * (b[2 + i % 32] as i8) as f32);
    }
}

#[test]
fn q6_k_quantizer_writes_ggml_reference_bytes() {
    let x = inputs();
    let mut got = Vec::new();
    q6_k::quantize(&x, &mut got);
    let want = vendored("q6_k.bin");
    assert_eq!(want.len(), ROWS * q6_k::BLOCK_BYTES);
    for (r, (g, w)) in got
        .chunks(q6_k::BLOCK_BYTES)
        .zip(want.chunks(q6_k::BLOCK_BYTES))
        .enumerate()
    {
        assert_eq!(g, w, "Q6_K block of row {}", r);
    }
    // Dequantization gives gguf-py's numpy `Q6_K.dequantize` bit for bit.
    let mut y = vec![0f32; x.len()];
    q6_k::dequantize(&want, &mut y);
    let deq = tern::metrics::read_f32_file(&refdir().join("q6_k.dequant.f32")).unwrap();
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&y), bits(&deq));
}

/// The vendored Q8_K blocks as [`BlockActs`] rows.
fn ref_q8k() -> BlockActs {
    let bytes = vendored("q8_k.bin");
    assert_eq!(bytes.len(), ROWS * Q8K_BYTES);
    let mut a = BlockActs {
        kind: QuantHead::Q6K,
        k: K,
        n: ROWS,
        qs: vec![],
        d: vec![],
        bsums: vec![],
    };
    for b in bytes.chunks(Q8K_BYTES) {
        a.d.push(f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        a.qs.extend(b[4..260].iter().map(|&v| v as i8));
        a.bsums
            .extend(b[260..].chunks(2).map(|c| i16::from_le_bytes([c[0], c[1]])));
    }
    a
}

#[test]
fn q8_k_activations_match_ggml_reference() {
    let x = inputs();
    let got = BlockActs::quantize(QuantHead::Q6K, &x, K);
    let mut want = ref_q8k();
    // tern keeps the quants in its Q6_K layout's lane order.
    q6_k::order_q8_k(&mut want.qs);
    assert_eq!(got.qs, want.qs);
    assert_eq!(got.bsums, want.bsums);
    let (gd, wd): (Vec<u32>, Vec<u32>) = (
        got.d.iter().map(|v| v.to_bits()).collect(),
        want.d.iter().map(|v| v.to_bits()).collect(),
    );
    assert_eq!(gd, wd);
    // Q8_0 activations are the file quantizer's blocks (scale kept as f16).
    let a = BlockActs::quantize(QuantHead::Q8_0, &x, K);
    let ref8 = vendored("q8_0.bin");
    for (b, blk) in ref8.chunks(34).enumerate() {
        assert_eq!(a.d[b], f16::from_le_bytes([blk[0], blk[1]]).to_f32());
        let q: Vec<u8> = a.qs[32 * b..32 * b + 32].iter().map(|&v| v as u8).collect();
        assert_eq!(&q[..], &blk[2..]);
    }
}

fn rb(kind: QuantHead) -> usize {
    kind.row_bytes(K)
}

/// Σ |d_w · d_x · scale · q · a| over one row of one block type: the sum of
/// the magnitudes of every product the dot adds up.
fn abs_dot(kind: QuantHead, row: &[u8], x: &BlockActs) -> f32 {
    let a = x.row(0);
    let mut mag = 0f32;
    for (b, blk) in row.chunks(kind.block_bytes()).enumerate() {
        let (dw, s) = match kind {
            QuantHead::Q8_0 => (
                f16::from_le_bytes([blk[0], blk[1]]).to_f32(),
                (0..32)
                    .map(|i| (blk[2 + i] as i8 as i32 * a[32 * b + i] as i32).abs())
                    .sum::<i32>(),
            ),
            QuantHead::Q6K => {
                // tern's layout, the quants in the same lane order.
                let q = q6_k::lane_codes(blk);
                (
                    q6_k::block_d(blk),
                    (0..256)
                        .map(|p| {
                            let sc = blk[q6_k::SC_OFF + q6_k::lane_sub_block(p)] as i8 as i32;
                            (sc * (q[p] as i32 - 32) * a[256 * b + p] as i32).abs()
                        })
                        .sum::<i32>(),
                )
            }
        };
        mag += (dw * x.d[b]).abs() * s as f32;
    }
    mag
}

#[test]
fn dot_products_match_ggml() {
    // ggml's generic ggml_vec_dot_q8_0_q8_0 / ggml_vec_dot_q6_K_q8_K of
    // weights row r against activations row (r + 3) % 12.
    let dots = tern::metrics::read_f32_file(&refdir().join("dots.f32")).unwrap();
    assert_eq!(dots.len(), 2 * ROWS);
    let w8 = vendored("q8_0.bin");
    // The kernels read Q6_K in tern's load-time layout, with the Q8_K
    // quants in its lane order: the reference dots check that rearranging
    // too.
    let mut w6 = vendored("q6_k.bin");
    q6_k::repack(&mut w6);
    let x = inputs();
    let a8 = BlockActs::quantize(QuantHead::Q8_0, &x, K);
    let mut a6 = ref_q8k();
    q6_k::order_q8_k(&mut a6.qs);
    let pick = |acts: &BlockActs, t: usize| {
        let nb = K / acts.kind.block();
        BlockActs {
            kind: acts.kind,
            k: K,
            n: 1,
            qs: acts.row(t).to_vec(),
            d: acts.d[t * nb..(t + 1) * nb].to_vec(),
            bsums: if acts.bsums.is_empty() {
                vec![]
            } else {
                acts.sums16(t).to_vec()
            },
        }
    };
    for kern in all_variants() {
        for r in 0..ROWS {
            let t = (r + 3) % ROWS;
            for (kind, w, acts, want) in [
                (QuantHead::Q8_0, &w8, &a8, dots[r]),
                (QuantHead::Q6K, &w6, &a6, dots[ROWS + r]),
            ] {
                let x1 = pick(acts, t);
                let mut out = [f32::NAN];
                kern.quant_gemm(w, RowLayout::Rows, r, r + 1, &x1, &mut out);
                // Both sides sum exact integer dots in f32 in different
                // orders: a few ulps of the sum of the magnitudes.
                let bound = 1e-6 * abs_dot(kind, &w[r * rb(kind)..(r + 1) * rb(kind)], &x1) + 1e-30;
                assert!(
                    (out[0] - want).abs() <= bound,
                    "{} {:?} row {}: {} vs ggml {}",
                    kern.variant(),
                    kind,
                    r,
                    out[0],
                    want
                );
            }
        }
    }
}

// ------------------------------------------------------------ end to end

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Run tern successfully; its stderr and stdout.
fn ok(args: &[&str]) -> String {
    let o = run_tern(args, None);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "tern {:?} failed: {}", args, err);
    err + &String::from_utf8_lossy(&o.stdout)
}

fn convert(dir: &Path, src: &Path, embd: &str, outtype: &str) -> (PathBuf, String) {
    let out = dir.join(format!("m-{}-{}.gguf", outtype, embd));
    let err = ok(&[
        "convert",
        s(src),
        "--outtype",
        outtype,
        "--embd-type",
        embd,
        "--outfile",
        s(&out),
    ]);
    (out, err)
}

fn embd_type(p: &Path) -> GgmlType {
    GgufFile::open(p)
        .unwrap()
        .tensor("token_embd.weight")
        .unwrap()
        .ty
}

/// The first `n` characters of the held-out text.
fn heldout_prefix(n: usize) -> String {
    let t = std::fs::read_to_string(root().join("models/tern-shakespeare/heldout.txt")).unwrap();
    t.chars().take(n).collect()
}

/// Mean KL against the base file and the "Same top p" percentage, from
/// `tern perplexity --kl-divergence`'s report.
fn kld_report(err: &str) -> (f64, f64) {
    let num = |prefix: &str| -> f64 {
        let line = err
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {:?} in\n{}", prefix, err));
        line[prefix.len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    (num("Mean    KLD:"), num("Same top p:"))
}

#[test]
fn cli_quantized_heads_on_the_trained_model() {
    let dir = tempfile::tempdir().unwrap();
    let src = hf_dir("tern-shakespeare");
    let (f32m, _) = convert(dir.path(), &src, "f32", "i2_s");
    let (f16m, _) = convert(dir.path(), &src, "f16", "i2_s");
    let (q8m, e8) = convert(dir.path(), &src, "Q8_0", "i2_s");
    let (q6m, e6) = convert(dir.path(), &src, "q6_k", "i2_s");
    assert!(
        e8.contains("token_embd.weight") && e8.contains("→ Q8_0"),
        "{}",
        e8
    );
    assert!(e6.contains("→ Q6_K") && !e6.contains("fallback"), "{}", e6);
    assert_eq!(embd_type(&q8m), GgmlType::Q8_0);
    assert_eq!(embd_type(&q6m), GgmlType::Q6K);

    // The file holds exactly the quantizer's bytes of the checkpoint's
    // values (those of the F32 conversion); every other tensor is unchanged.
    let g32 = GgufFile::open(&f32m).unwrap();
    let e: Vec<f32> = g32
        .tensor_data(g32.tensor("token_embd.weight").unwrap())
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let g16 = GgufFile::open(&f16m).unwrap();
    for (path, ty) in [(&q8m, GgmlType::Q8_0), (&q6m, GgmlType::Q6K)] {
        let g = GgufFile::open(path).unwrap();
        let mut want = Vec::new();
        match ty {
            GgmlType::Q8_0 => q8_0::quantize(&e, &mut want),
            _ => q6_k::quantize(&e, &mut want),
        }
        assert!(g.tensor_data(g.tensor("token_embd.weight").unwrap()) == &want[..]);
        for t in &g16.tensors {
            if t.name != "token_embd.weight" {
                let u = g.tensor(&t.name).unwrap();
                assert!(g.tensor_data(u) == g16.tensor_data(t), "{}", t.name);
            }
        }
    }

    // Runtime: the head stays quantized (fewer bytes per token), the
    // embedding lookup dequantizes one row.
    let m16 = tern::model::Model::load(&f16m).unwrap();
    let (nv, d) = (m16.hp.n_vocab, m16.hp.n_embd);
    let b16 = m16.bytes_per_token();
    for (path, kind) in [(&q8m, QuantHead::Q8_0), (&q6m, QuantHead::Q6K)] {
        let m = tern::model::Model::load(path).unwrap();
        let want_ty = match kind {
            QuantHead::Q8_0 => GgmlType::Q8_0,
            QuantHead::Q6K => GgmlType::Q6K,
        };
        assert_eq!(m.head().ty(), want_ty, "the head stays quantized");
        assert_eq!(
            m.bytes_per_token(),
            b16 - (nv * d * 2) as u64 + (nv * kind.row_bytes(d)) as u64
        );
        let rb = kind.row_bytes(d);
        let mut row = vec![0f32; d];
        let mut want = vec![0f32; d];
        let mut r16 = vec![0f32; d];
        for tok in [0, 1, 97, nv - 1] {
            m.tok_embd.row(tok, &mut row);
            let head = m
                .gguf
                .tensor_data(m.gguf.tensor("token_embd.weight").unwrap());
            let bytes = &head[tok * rb..(tok + 1) * rb];
            match kind {
                QuantHead::Q8_0 => q8_0::dequantize(bytes, &mut want),
                QuantHead::Q6K => q6_k::dequantize(bytes, &mut want),
            }
            assert_eq!(row, want);
            m16.tok_embd.row(tok, &mut r16);
            let amax = r16.iter().fold(0f32, |a, v| a.max(v.abs()));
            for (a, b) in row.iter().zip(&r16) {
                assert!(
                    (a - b).abs() <= 0.05 * amax,
                    "token {}: {} vs {}",
                    tok,
                    a,
                    b
                );
            }
        }
    }
    let o = run_tern(&["inspect", s(&q6m)], None);
    assert!(String::from_utf8_lossy(&o.stdout).contains("Q6_K"));

    // Logits of a held-out passage (166 positions) against the F16-head
    // model. Measured: mean KL 2.3e-4 (Q8_0) / 4.8e-4 (Q6_K), top-1 0.97 /
    // 0.98 (the full held-out text: 2.3e-4 / 5.5e-4, 98.6% / 97.6%). The
    // thresholds leave about 10x headroom on the mean KL, well inside the
    // project's 0.01 bound for "the same model".
    let text = heldout_prefix(600);
    let logits = |m: &Path| {
        let out = dir
            .path()
            .join(format!("{}.f32", m.file_name().unwrap().to_string_lossy()));
        ok(&["logits", "-m", s(m), "-p", &text, "--out", s(&out)]);
        tern::metrics::read_f32_file(&out).unwrap()
    };
    let base = logits(&f16m);
    for (m, max_kl) in [(&q8m, 0.003), (&q6m, 0.006)] {
        let a = tern::metrics::compare(&base, &logits(m), nv);
        eprintln!(
            "{}: {} positions, mean KL {:.2e}, max KL {:.2e}, top-1 {:.3}, max rel RMS {:.3}",
            m.display(),
            a.positions,
            a.mean_kl,
            a.max_kl,
            a.top1,
            a.max_rel_rms
        );
        assert!(a.positions > 100);
        assert!(a.mean_kl < max_kl && a.top1 >= 0.9, "{:?}", a);
    }

    // llama-perplexity-style KL divergence against the F16-head base file.
    let kld = dir.path().join("f16.kld");
    let heldout = root().join("models/tern-shakespeare/heldout.txt");
    ok(&[
        "perplexity",
        "-m",
        s(&f16m),
        "-f",
        s(&heldout),
        "-c",
        "128",
        "--chunks",
        "8",
        "--kl-divergence-base",
        s(&kld),
    ]);
    for (m, max_kl) in [(&q8m, 0.003), (&q6m, 0.006)] {
        let err = ok(&[
            "perplexity",
            "-m",
            s(m),
            "--kl-divergence-base",
            s(&kld),
            "--kl-divergence",
        ]);
        let (kl, same) = kld_report(&err);
        eprintln!("{}: mean KLD {} same top p {}%", m.display(), kl, same);
        assert!(kl < max_kl && same >= 90.0, "{}", err);
    }
}

#[test]
fn cli_bad_embd_type_is_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["q4_0", "i2_s", "q6", "int8"] {
        let out = dir.path().join("x.gguf");
        let o = run_tern(
            &[
                "convert",
                s(&hf_dir("b158-bf16")),
                "--embd-type",
                bad,
                "--outfile",
                s(&out),
            ],
            None,
        );
        assert_clean_failure(&o, "--embd-type");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("q8_0") && err.contains("q6_k"), "{}", err);
        assert!(!out.exists());
        assert_eq!(listing(dir.path()), Vec::<String>::new());
    }
}

/// A random checkpoint whose hidden size is not a multiple of 256.
fn odd_checkpoint(dir: &Path, hidden: usize, heads: usize) -> PathBuf {
    let hf = dir.join(format!("hf{}", hidden));
    let shape = tern::synth::Shape {
        hidden,
        intermediate: 640,
        layers: 1,
        heads,
        kv_heads: heads / 2,
        vocab: 768,
    };
    tern::synth::synth_hf(&hf, shape, 5).unwrap();
    hf
}

#[test]
fn cli_rows_without_whole_blocks_fall_back_like_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    // 384 = 12 · 32: Q6_K (256) does not fit, Q8_0 does (llama-quantize's
    // fallback for Q6_K).
    let hf = odd_checkpoint(dir.path(), 384, 6);
    let (m, err) = convert(dir.path(), &hf, "q6_k", "i2_s");
    assert!(
        err.contains("fallback: token_embd.weight") && err.contains("Q8_0"),
        "{}",
        err
    );
    assert_eq!(embd_type(&m), GgmlType::Q8_0);
    let out = dir.path().join("l.f32");
    ok(&[
        "logits",
        "-m",
        s(&m),
        "--tokens",
        "1,2,3,4",
        "--out",
        s(&out),
    ]);
    // The same bytes as asking for Q8_0.
    let (q8, _) = convert(dir.path(), &hf, "q8_0", "i2_s");
    let embd_bytes = |p: &Path| {
        let g = GgufFile::open(p).unwrap();
        g.tensor_data(g.tensor("token_embd.weight").unwrap())
            .to_vec()
    };
    assert!(embd_bytes(&q8) == embd_bytes(&m));
    // 200 values: not even Q8_0 blocks → F16 (convert_hf_to_gguf.py's rule).
    let hf = odd_checkpoint(dir.path(), 200, 4);
    for embd in ["q8_0", "q6_k"] {
        let (m, err) = convert(dir.path(), &hf, embd, "f16");
        assert!(
            err.contains("fallback: token_embd.weight") && err.contains("): F16"),
            "{}",
            err
        );
        assert_eq!(embd_type(&m), GgmlType::F16);
    }
}

#[test]
fn cli_untied_head_is_quantized_too() {
    // tern-shakespeare with an explicit lm_head (a copy of the embedding)
    // and tie_word_embeddings false: both tensors are quantized, and the
    // logits equal the tied conversion's bit for bit.
    let dir = tempfile::tempdir().unwrap();
    let src = hf_dir("tern-shakespeare");
    let untied = dir.path().join("untied");
    copy_dir(&src, &untied);
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors = st.tensors();
    let emb = st.tensor("model.embed_tokens.weight").unwrap();
    tensors.push(("lm_head.weight".to_string(), emb));
    std::fs::write(
        untied.join("model.safetensors"),
        safetensors::serialize(tensors, &None).unwrap(),
    )
    .unwrap();
    let cfg_path = untied.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["tie_word_embeddings"] = serde_json::Value::Bool(false);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();

    let (tied, _) = convert(dir.path(), &src, "q6_k", "i2_s");
    let out = dir.path().join("u.gguf");
    let err = ok(&[
        "convert",
        s(&untied),
        "--embd-type",
        "q6_k",
        "--outfile",
        s(&out),
    ]);
    assert!(
        err.contains("output.weight") && err.contains("head"),
        "{}",
        err
    );
    let g = GgufFile::open(&out).unwrap();
    let (te, ow) = (
        g.tensor("token_embd.weight").unwrap(),
        g.tensor("output.weight").unwrap(),
    );
    assert_eq!((te.ty, ow.ty), (GgmlType::Q6K, GgmlType::Q6K));
    assert!(g.tensor_data(te) == g.tensor_data(ow));
    let m = tern::model::Model::load(&out).unwrap();
    assert!(m.output.is_some());
    assert_eq!(m.head().ty(), GgmlType::Q6K);
    let logits = |p: &Path| {
        let o = dir.path().join("l.f32");
        ok(&[
            "logits",
            "-m",
            s(p),
            "--tokens",
            "1,50,300,7,9",
            "--out",
            s(&o),
        ]);
        std::fs::read(&o).unwrap()
    };
    assert!(logits(&tied) == logits(&out));
}
