//! `tern perplexity`: the PPL against an independent computation from
//! `tern logits`, the KL-divergence base file and statistics, the built-in
//! model against bitnet.cpp's reference perplexity, and bad input.

mod common;

use common::{convert_to, root};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_tern");

fn heldout() -> PathBuf {
    root().join("models/tern-shakespeare/heldout.txt")
}

fn fixture() -> PathBuf {
    root().join("vendor/reference/gguf/b158-bf16.i2_s.gguf")
}

fn tern(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .expect("run tern")
}

fn ok(args: &[&str]) -> (String, String) {
    let o = tern(args);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        o.status.success(),
        "tern {:?} failed:\n{}\n{}",
        args,
        out,
        err
    );
    (out, err)
}

/// A one-line `tern: error: ...` and a non-zero exit.
fn fails(args: &[&str]) -> String {
    let o = tern(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "tern {:?} should fail", args);
    let last = err.lines().last().unwrap_or_default().to_string();
    assert!(last.starts_with("tern: error: "), "stderr: {}", err);
    assert!(!err.contains("panicked"), "stderr: {}", err);
    last
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `Final estimate: PPL = X +/- Y`.
fn final_estimate(out: &str) -> (f64, f64) {
    let l = out
        .lines()
        .find_map(|l| l.strip_prefix("Final estimate: PPL = "))
        .unwrap_or_else(|| panic!("no final estimate in {}", out));
    let (a, b) = l.split_once(" +/- ").unwrap();
    (a.trim().parse().unwrap(), b.trim().parse().unwrap())
}

/// The running estimates `[1]x,[2]y,…`.
fn running(out: &str) -> Vec<f64> {
    let l = out.lines().find(|l| l.starts_with("[1]")).unwrap();
    l.split(',')
        .filter(|p| !p.is_empty())
        .enumerate()
        .map(|(i, p)| {
            let v = p.strip_prefix(&format!("[{}]", i + 1)).unwrap();
            v.parse().unwrap()
        })
        .collect()
}

/// The first number after `label` on its line of a KL report.
fn stat(out: &str, label: &str) -> f64 {
    let l = out
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no {:?} in\n{}", label, out));
    let rest = l[label.len()..].trim_start_matches([' ', ':']);
    let num: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == '-')
        .collect();
    num.parse()
        .unwrap_or_else(|_| panic!("bad number in {:?}", l))
}

fn log_softmax_at(row: &[f32], t: usize) -> f64 {
    let mx = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let z: f64 = row.iter().map(|&v| (v as f64 - mx).exp()).sum();
    row[t] as f64 - mx - z.ln()
}

fn read_f32(p: &Path) -> Vec<f32> {
    std::fs::read(p)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn ppl_equals_independent_computation_from_tern_logits() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("text.txt");
    let full = std::fs::read_to_string(heldout()).unwrap();
    let cut = full.char_indices().nth(2500).unwrap().0;
    std::fs::write(&text, &full[..cut]).unwrap();
    let model = fixture();
    let (n_ctx, n_chunk) = (64usize, 3usize);

    // -b 16 < -c: each chunk goes through in four passes.
    let (out, err) = ok(&[
        "perplexity",
        "-m",
        s(&model),
        "-f",
        s(&text),
        "-c",
        "64",
        "-b",
        "16",
        "--chunks",
        "3",
        "-t",
        "2",
    ]);
    assert!(err.contains("tokens/s"), "{}", err);
    let (ppl, err_ppl) = final_estimate(&out);
    let run = running(&out);
    assert_eq!(run.len(), n_chunk);

    // The same chunks by hand: tokenize once (BOS first), replace each chunk's
    // first token with BOS, take the logits from `tern logits`, and score
    // positions n_ctx/2 ..= n_ctx-2 against the next token.
    let m = tern::model::Model::load(&model).unwrap();
    assert!(m.tokenizer.add_bos());
    let bos = m.tokenizer.bos().unwrap();
    let toks = m.tokenizer.encode(&full[..cut], true).unwrap();
    assert!(
        toks.len() >= n_chunk * n_ctx && toks.len() / n_ctx > n_chunk,
        "text too short for the test"
    );
    let nv = m.hp.n_vocab;
    let (mut sum, mut sum2, mut count) = (0f64, 0f64, 0usize);
    for i in 0..n_chunk {
        let mut input = toks[i * n_ctx..(i + 1) * n_ctx].to_vec();
        input[0] = bos;
        let list: Vec<String> = input.iter().map(|t| t.to_string()).collect();
        let lf = dir.path().join(format!("chunk{}.f32", i));
        ok(&[
            "logits",
            "-m",
            s(&model),
            "--tokens",
            &list.join(","),
            "--out",
            s(&lf),
        ]);
        let logits = read_f32(&lf);
        assert_eq!(logits.len(), n_ctx * nv);
        for j in n_ctx / 2..n_ctx - 1 {
            let target = toks[i * n_ctx + j + 1] as usize;
            let v = -log_softmax_at(&logits[j * nv..(j + 1) * nv], target);
            sum += v;
            sum2 += v * v;
            count += 1;
        }
        let want = (sum / count as f64).exp();
        assert!(
            ((run[i] - want) / want).abs() < 1e-4,
            "chunk {}: running estimate {} vs {}",
            i + 1,
            run[i],
            want
        );
    }
    assert_eq!(count, n_chunk * (n_ctx - 1 - n_ctx / 2));
    let mean = sum / count as f64;
    let want = mean.exp();
    let want_err = ((sum2 / count as f64 - mean * mean) / (count as f64 - 1.0)).sqrt() * want;
    eprintln!(
        "fixture PPL: tern perplexity {ppl} ± {err_ppl}; from tern logits {want} ± {want_err}"
    );
    assert!(
        ((ppl - want) / want).abs() < 1e-4,
        "PPL {} vs {}",
        ppl,
        want
    );
    assert!(
        ((err_ppl - want_err) / want_err).abs() < 1e-3,
        "± {} vs {}",
        err_ppl,
        want_err
    );
}

#[test]
fn builtin_model_matches_bitnet_cpp_reference_ppl() {
    // bitnet.cpp `llama-perplexity -c 256` on the reference GGUF: 82.7345, 119 chunks.
    let (out, err) = ok(&["perplexity", "-f", s(&heldout()), "-c", "256"]);
    assert!(err.contains("built-in model"), "{}", err);
    let run = running(&out);
    assert_eq!(run.len(), 119);
    let (ppl, unc) = final_estimate(&out);
    eprintln!("built-in model, heldout.txt, -c 256: PPL = {ppl} +/- {unc} (bitnet.cpp 82.7345)");
    assert!(
        ((ppl - 82.7345) / 82.7345).abs() < 0.05,
        "PPL {} is not within 5% of 82.7345",
        ppl
    );
    assert!(err.contains("tokens/s"), "{}", err);
}

/// Check a base file against the documented layout, independently of tern's reader.
fn check_base_layout(path: &Path, n_ctx: usize, n_vocab: usize, n_chunk: usize, tokens: &[u32]) {
    let b = std::fs::read(path).unwrap();
    let i32_at = |o: usize| i32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    assert_eq!(&b[..8], b"_logits_");
    assert_eq!(i32_at(8) as usize, n_ctx);
    assert_eq!(i32_at(12) as usize, n_vocab);
    assert_eq!(i32_at(16) as usize, n_chunk);
    for (k, &t) in tokens[..n_ctx * n_chunk].iter().enumerate() {
        assert_eq!(i32_at(20 + 4 * k), t as i32, "token {}", k);
    }
    let nv = 2 * n_vocab.div_ceil(2) + 4;
    let scored = n_ctx - 1 - n_ctx / 2;
    let head = 20 + 4 * n_ctx * n_chunk;
    assert_eq!(b.len(), head + n_chunk * scored * nv * 2);
    // Every record decodes to a distribution (the part above e^-16 sums to ~1).
    for r in 0..n_chunk * scored {
        let rec = &b[head + r * nv * 2..head + (r + 1) * nv * 2];
        let scale = f32::from_le_bytes(rec[0..4].try_into().unwrap());
        let min_lp = f32::from_le_bytes(rec[4..8].try_into().unwrap());
        let total: f64 = rec[8..8 + 2 * n_vocab]
            .chunks_exact(2)
            .map(|c| scale * u16::from_le_bytes([c[0], c[1]]) as f32 + min_lp)
            .filter(|&lp| lp > -16.0)
            .map(|lp| (lp as f64).exp())
            .sum();
        assert!((total - 1.0).abs() < 2e-3, "record {} sums to {}", r, total);
    }
}

#[test]
fn kl_divergence_of_a_model_against_itself_is_zero() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.kld");
    let (out, _) = ok(&[
        "perplexity",
        "-f",
        s(&heldout()),
        "-c",
        "128",
        "--chunks",
        "6",
        "--kl-divergence-base",
        s(&base),
    ]);
    let (ppl, _) = final_estimate(&out);
    let m = tern::model::Model::load(&root().join("models/tern-shakespeare-i2_s.gguf")).unwrap();
    let toks = m
        .tokenizer
        .encode(&std::fs::read_to_string(heldout()).unwrap(), true)
        .unwrap();
    check_base_layout(&base, 128, m.hp.n_vocab, 6, &toks);

    // Writing over an existing base needs --force.
    let e = fails(&[
        "perplexity",
        "-f",
        s(&heldout()),
        "-c",
        "128",
        "--kl-divergence-base",
        s(&base),
    ]);
    assert!(e.contains("already exists"), "{}", e);

    let (kl, err) = ok(&[
        "perplexity",
        "--kl-divergence-base",
        s(&base),
        "--kl-divergence",
    ]);
    eprintln!("{}", kl);
    assert!(err.contains("tokens/s"), "{}", err);
    assert_eq!(
        kl.lines().filter(|l| l.starts_with("   ")).count(),
        6,
        "one table row per chunk"
    );
    assert!((stat(&kl, "Mean PPL(Q) ") - ppl).abs() / ppl < 1e-5);
    assert!((stat(&kl, "Mean PPL(base)") - ppl).abs() / ppl < 1e-4);
    assert!((stat(&kl, "Mean PPL(Q)/PPL(base)") - 1.0).abs() < 1e-4);
    // Zero up to the 16-bit rounding of the base log-probabilities.
    assert!(stat(&kl, "Mean    KLD").abs() < 1e-5);
    assert!(stat(&kl, "Maximum KLD").abs() < 1e-4);
    assert!(stat(&kl, "Minimum KLD").abs() < 1e-4);
    assert_eq!(stat(&kl, "Same top p"), 100.0);

    // The library gives the same, exactly enough to see the rounding floor.
    let mut b = tern::perplexity::KldBase::open(&base).unwrap();
    let r = tern::perplexity::kl_divergence(
        &m,
        &mut b,
        &tern::perplexity::Options::default(),
        &mut |_, _, _, _| {},
    )
    .unwrap();
    let sum = r.stats.summary();
    eprintln!(
        "self KL (library): mean {:e}, max {:e}",
        sum.kld_mean.0, sum.kld_max
    );
    assert_eq!(sum.count, 6 * 63);
    assert!(sum.kld_mean.0.abs() < 1e-6 && sum.kld_max < 1e-4);
    assert_eq!(sum.same_top.0, 1.0);
}

#[test]
fn kl_divergence_of_i2s_against_its_f16_conversion_is_small() {
    let dir = tempfile::tempdir().unwrap();
    let f16 = dir.path().join("tern-shakespeare-f16.gguf");
    convert_to(
        &root().join("models/tern-shakespeare"),
        &f16,
        tern::quant::GgmlType::F16,
        tern::quant::GgmlType::F16,
    );
    let base = dir.path().join("f16.kld");
    ok(&[
        "perplexity",
        "-m",
        s(&f16),
        "-f",
        s(&heldout()),
        "-c",
        "128",
        "--chunks",
        "6",
        "-b",
        "50",
        "--kl-divergence-base",
        s(&base),
    ]);
    let (kl, _) = ok(&[
        "perplexity",
        "-m",
        s(&root().join("models/tern-shakespeare-i2_s.gguf")),
        "--kl-divergence-base",
        s(&base),
        "--kl-divergence",
    ]);
    let mean = stat(&kl, "Mean    KLD");
    let max = stat(&kl, "Maximum KLD");
    let top = stat(&kl, "Same top p");
    let ratio = stat(&kl, "Mean PPL(Q)/PPL(base)");
    eprintln!(
        "I2_S vs its F16 conversion: mean KLD {mean}, max KLD {max}, same top p {top}%, PPL(Q)/PPL(base) {ratio}"
    );
    assert!(mean < 0.01, "mean KLD {}", mean);
    assert!(
        mean > 0.0,
        "the two files differ, so the KLD should not vanish"
    );
    assert!(top > 90.0, "same top p {}", top);
    assert!((ratio - 1.0).abs() < 0.02, "PPL ratio {}", ratio);
}

#[test]
fn bad_input_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "To be, or not to be.").unwrap();
    let base = dir.path().join("b.kld");
    let e = fails(&[
        "perplexity",
        "-f",
        s(&short),
        "-c",
        "64",
        "--kl-divergence-base",
        s(&base),
    ]);
    assert!(e.contains("needs at least 128"), "{}", e);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "no base file, no partial file: {:?}", names);

    let e = fails(&["perplexity", "--kl-divergence"]);
    assert!(e.contains("--kl-divergence-base"), "{}", e);
    let e = fails(&["perplexity"]);
    assert!(e.contains("-f"), "{}", e);
    let e = fails(&[
        "perplexity",
        "--kl-divergence",
        "--kl-divergence-base",
        s(&short),
    ]);
    assert!(e.contains("not a KL-divergence base file"), "{}", e);
    let e = fails(&["perplexity", "-f", s(&heldout()), "-c", "2"]);
    assert!(e.contains("-c"), "{}", e);

    // A truncated base, and one made with another vocabulary.
    let good = dir.path().join("good.kld");
    ok(&[
        "perplexity",
        "-f",
        s(&heldout()),
        "-c",
        "16",
        "--chunks",
        "2",
        "--kl-divergence-base",
        s(&good),
    ]);
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.path().join("cut.kld");
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    let e = fails(&[
        "perplexity",
        "--kl-divergence",
        "--kl-divergence-base",
        s(&cut),
    ]);
    assert!(e.contains("implies"), "{}", e);
    let e = fails(&[
        "perplexity",
        "-m",
        s(&fixture()),
        "--kl-divergence",
        "--kl-divergence-base",
        s(&good),
    ]);
    assert!(e.contains("vocabulary"), "{}", e);
    let e = fails(&[
        "perplexity",
        "--kl-divergence",
        "--kl-divergence-base",
        s(&good),
        "-c",
        "32",
    ]);
    assert!(e.contains("-c 16"), "{}", e);
}
