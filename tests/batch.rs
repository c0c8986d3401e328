//! Prompts of any length: one `eval` call far past the internal batch size
//! gives the same logits as the same tokens fed in pieces, and `tern bench`
//! times such a prompt without trouble (bitnet.cpp overflows its stack a
//! little past 300 tokens per batch at 2B-4T shapes).

mod common;

use common::{assert_clean_failure, run_tern};
use std::path::{Path, PathBuf};
use tern::model::{Context, Model};

/// A tiny random `bitnet-b1.58` model converted to I2_S in `dir`.
fn tiny_gguf(dir: &Path) -> PathBuf {
    let hf = dir.join("hf");
    let o = run_tern(
        &[
            "synth",
            hf.to_str().unwrap(),
            "--shape",
            "tiny",
            "--seed",
            "7",
        ],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = dir.join("tiny.gguf");
    let o = run_tern(
        &[
            "convert",
            hf.to_str().unwrap(),
            "--outfile",
            out.to_str().unwrap(),
        ],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

fn tokens(n: usize, vocab: usize) -> Vec<u32> {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % vocab as u64) as u32
        })
        .collect()
}

#[test]
fn long_prompt_in_one_call_equals_pieces() {
    let t = tempfile::tempdir().unwrap();
    let m = Model::load(&tiny_gguf(t.path())).unwrap();
    let nv = m.hp.n_vocab;
    let n = 2 * tern::model::forward::MAX_BATCH + 300;
    let toks = tokens(n, nv);

    // All positions' logits in one call.
    let mut whole = Context::new(&m, n, false);
    let all = whole.eval(&toks, true).unwrap();
    assert_eq!(all.len(), n * nv);
    assert!(all.iter().all(|v| v.is_finite()));

    // The same tokens in uneven pieces, the last few one at a time.
    let mut parts = Context::new(&m, n, false);
    let cuts = [0, 1, 333, 900, n - 3, n - 2, n - 1, n];
    for w in cuts.windows(2) {
        let l = parts.eval(&toks[w[0]..w[1]], false).unwrap();
        assert_eq!(l.len(), nv, "last-position logits only");
        let at = (w[1] - 1) * nv;
        let want = &all[at..at + nv];
        let diff = l
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let scale = want.iter().map(|v| v.abs()).fold(0f32, f32::max);
        assert!(
            diff <= 1e-4 * scale.max(1.0),
            "position {}: max |diff| {} (logit scale {})",
            w[1] - 1,
            diff,
            scale
        );
    }
    // Full context: one more token is refused, not a crash.
    assert!(parts.eval(&[1], false).is_err());
}

#[test]
fn bench_times_a_prompt_past_the_batch_size() {
    let t = tempfile::tempdir().unwrap();
    let g = tiny_gguf(t.path());
    let p = (tern::model::forward::MAX_BATCH + 200).to_string();
    let o = run_tern(
        &[
            "bench",
            "-m",
            g.to_str().unwrap(),
            "-p",
            &p,
            "-n",
            "0",
            "-r",
            "1",
            "-t",
            "2",
            "--bw-mib",
            "8",
        ],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = String::from_utf8_lossy(&o.stdout);
    assert!(md.contains(&format!("pp{}", p)), "{}", md);
}

#[test]
fn bench_times_tests_at_a_depth() {
    let t = tempfile::tempdir().unwrap();
    let g = tiny_gguf(t.path());
    let args = |extra: &[&str]| {
        let mut v = vec![
            "bench",
            "-m",
            g.to_str().unwrap(),
            "-p",
            "4",
            "-n",
            "2",
            "-r",
            "1",
            "-t",
            "1",
            "--bw-mib",
            "8",
        ];
        v.extend_from_slice(extra);
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |a: Vec<String>| {
        let a: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
        run_tern(&a, None)
    };
    let o = run(args(&["-d", "0,8"]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = String::from_utf8_lossy(&o.stdout);
    for name in ["| pp4 |", "| tg2 |", "| pp4 @ d8 |", "| tg2 @ d8 |"] {
        assert!(md.contains(name), "{name} missing:\n{md}");
    }
    let o = run(args(&["-d", "8", "-o", "json"]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let js = String::from_utf8_lossy(&o.stdout);
    // The tg test at a depth has a bound, against the weights and the
    // cache its tokens attend (8 positions and more), so it reads more
    // per token than the weights the pp record counts.
    let recs: serde_json::Value = serde_json::from_str(&js).expect("valid JSON");
    let (pp, tg) = (&recs[0], &recs[1]);
    let depths: Vec<_> = recs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["n_depth"].as_u64())
        .collect();
    assert_eq!(depths, [Some(8), Some(8)], "{js}");
    assert_eq!(
        (pp["n_prompt"].as_u64(), tg["n_gen"].as_u64()),
        (Some(4), Some(2)),
        "{js}"
    );
    assert!(tg.get("bound_frac").is_some(), "{js}");
    assert!(pp.get("bound_frac").is_none(), "{js}");
    let bytes = |r: &serde_json::Value| r["bytes_per_token"].as_u64().unwrap();
    assert!(bytes(tg) > bytes(pp), "{js}");
    assert_clean_failure(&run(args(&["-d", "x"])), "-d");
    // A cache no machine holds (10^12 positions).
    assert_clean_failure(&run(args(&["-d", "1000000000000"])), "context");
}

#[cfg(not(feature = "bitnet-cpp"))]
#[test]
fn bench_against_bitnet_cpp_needs_the_feature() {
    let t = tempfile::tempdir().unwrap();
    let g = tiny_gguf(t.path());
    let o = run_tern(
        &[
            "bench",
            "-m",
            g.to_str().unwrap(),
            "--bitnet-cpp",
            "-r",
            "1",
        ],
        None,
    );
    assert_clean_failure(&o, "--features bitnet-cpp");
}

#[cfg(feature = "bitnet-cpp")]
#[test]
fn bench_against_bitnet_cpp_needs_a_file() {
    let o = run_tern(&["bench", "--bitnet-cpp", "-r", "1"], None);
    assert_clean_failure(&o, "-m MODEL.gguf");
}
