//! `tern check` end to end: every vendored reference GGUF passes against both
//! vendored references (bitnet.cpp and transformers), a GGUF with wrong I2_S
//! scales fails, `--dump` round-trips exactly, and bad input gives a one-line
//! error.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tern::gguf::{write_gguf, GgufFile, TensorPlan};
use tern::quant::GgmlType;

const MODELS: [&str; 5] = [
    "b158-bf16",
    "b158-sparse",
    "b158-packed",
    "bitnet-silu",
    "tern-shakespeare",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn gguf(name: &str) -> PathBuf {
    root().join(format!("vendor/reference/gguf/{name}.i2_s.gguf"))
}

fn reference(engine: &str, name: &str) -> PathBuf {
    root().join(format!("vendor/reference/{engine}/{name}"))
}

fn tern(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("check")
        .args(["-t", "2"])
        .args(args)
        .output()
        .expect("run tern")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Non-zero exit and exactly one `tern: error:` line on stderr.
fn assert_one_line_error(o: &Output, what: &str, needle: &str) {
    let (out, err) = text(o);
    assert!(!o.status.success(), "{what}: should fail\n{out}{err}");
    let errs: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("tern: error:"))
        .collect();
    assert_eq!(errs.len(), 1, "{what}: one error line expected\n{err}");
    assert!(
        errs[0].contains(needle),
        "{what}: {:?} lacks {needle:?}",
        errs[0]
    );
    assert!(!err.contains("panicked"), "{what}: panic\n{err}");
}

fn prompt_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tokens.json")
        })
        .count()
}

#[test]
fn every_fixture_passes_both_references() {
    let mut failures = Vec::new();
    for name in MODELS {
        for engine in ["bitnet.cpp", "transformers"] {
            let dir = reference(engine, name);
            let o = tern(&["-m", p(&gguf(name)), "--reference", p(&dir)]);
            let (out, err) = text(&o);
            let n = prompt_count(&dir);
            let verdict = format!("PASS: {n}/{n} prompts");
            let pass_rows = out.lines().filter(|l| l.ends_with("  PASS")).count();
            if !o.status.success() || !out.lines().any(|l| l == verdict) || pass_rows != n {
                failures.push(format!("{name} vs {engine}:\n{out}{err}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A copy of `src` with every I2_S tensor scale multiplied by `factor`.
fn write_scaled(src: &Path, dst: &Path, factor: f32) {
    let g = GgufFile::open(src).unwrap();
    let plans: Vec<TensorPlan> = g
        .tensors
        .iter()
        .map(|t| TensorPlan {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ty: t.ty,
        })
        .collect();
    let mut scaled = 0;
    write_gguf(dst, false, &g.kv, &plans, |i, w: &mut dyn Write| {
        let t = &g.tensors[i];
        let mut data = g.tensor_data(t).to_vec();
        if t.ty == GgmlType::I2S {
            let at = t.n_elements() as usize / 4;
            let s = f32::from_le_bytes(data[at..at + 4].try_into().unwrap());
            data[at..at + 4].copy_from_slice(&(s * factor).to_le_bytes());
            scaled += 1;
        }
        w.write_all(&data)?;
        Ok(())
    })
    .unwrap();
    assert!(scaled > 0, "no I2_S tensor in {}", src.display());
}

#[test]
fn wrong_scales_fail() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["b158-bf16", "tern-shakespeare"] {
        let bad = tmp.path().join(format!("{name}.bad.gguf"));
        write_scaled(&gguf(name), &bad, 1.0 - 0.426);
        let dir = reference("bitnet.cpp", name);
        let o = tern(&["-m", p(&bad), "--reference", p(&dir)]);
        let (out, err) = text(&o);
        assert!(
            !o.status.success(),
            "{name}: wrong scales passed\n{out}{err}"
        );
        let n = prompt_count(&dir);
        assert!(
            out.lines()
                .any(|l| l.starts_with("FAIL: ") && l.ends_with(&format!("/{n} prompts failed"))),
            "{name}: no FAIL verdict\n{out}"
        );
        assert!(out.lines().any(|l| l.ends_with("  FAIL")), "{name}\n{out}");
        // The verdict is given once: status 1, no error line repeating it.
        assert_eq!(o.status.code(), Some(1), "{name}\n{err}");
        assert!(
            !err.contains("tern: error"),
            "{name}: verdict repeated\n{err}"
        );
        assert!(!err.contains("panicked"), "{name}\n{err}");
    }
}

#[test]
fn dump_round_trip_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let model = gguf("b158-sparse");
    let reference_dir = reference("bitnet.cpp", "b158-sparse");
    let dump = tmp.path().join("bundle");

    // Check and dump in one go.
    let o = tern(&[
        "-m",
        p(&model),
        "--reference",
        p(&reference_dir),
        "--dump",
        p(&dump),
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert_eq!(prompt_count(&dump), prompt_count(&reference_dir));
    assert!(dump.join("greedy.json").exists());
    for e in std::fs::read_dir(&dump).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!n.ends_with(".partial"), "left-over {n}");
    }

    // tern against its own dump: exact.
    let o = tern(&[
        "-m",
        p(&model),
        "--reference",
        p(&dump),
        "--min-greedy",
        "1",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    let rows: Vec<&str> = out.lines().filter(|l| l.ends_with("  PASS")).collect();
    assert_eq!(rows.len(), prompt_count(&dump), "{out}");
    for row in rows {
        let cols: Vec<&str> = row.split_whitespace().collect();
        // prompt pos relRMSmax relRMSavg KLmean KLmax top-1 greedy (pfx) result
        assert_eq!(cols[2].parse::<f64>().unwrap(), 0.0, "{row}");
        assert_eq!(cols[3].parse::<f64>().unwrap(), 0.0, "{row}");
        assert_eq!(cols[4].parse::<f64>().unwrap(), 0.0, "{row}");
        assert_eq!(cols[6].parse::<f64>().unwrap(), 1.0, "{row}");
        assert_eq!(cols[7], "32/32", "{row}");
    }

    // The dumped tokens are the reference's, byte for byte equal logits size.
    let a: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(reference_dir.join("split.tokens.json")).unwrap(),
    )
    .unwrap();
    let mut b: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dump.join("split.tokens.json")).unwrap())
            .unwrap();
    // The dump records the head type that made its logits.
    assert_eq!(b["head_type"], "F32");
    b.as_object_mut().unwrap().remove("head_type");
    assert_eq!(a, b);

    // A second dump into the same place needs --force.
    let o = tern(&[
        "-m",
        p(&model),
        "--reference",
        p(&reference_dir),
        "--dump",
        p(&dump),
    ]);
    assert_one_line_error(&o, "dump over existing", "already exists");

    // -p prompts: dump only, named by --name.
    let own = tmp.path().join("own");
    let o = tern(&[
        "-m",
        p(&gguf("tern-shakespeare")),
        "-p",
        "To be, or not to be",
        "-p",
        "My lord,",
        "--name",
        "hamlet",
        "--name",
        "lord",
        "--dump",
        p(&own),
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(own.join("hamlet.tokens.json").exists() && own.join("lord.logits.f32").exists());
    let o = tern(&["-m", p(&gguf("tern-shakespeare")), "--reference", p(&own)]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(out.lines().any(|l| l == "PASS: 2/2 prompts"), "{out}");
}

#[test]
fn bad_input_is_a_one_line_error() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let o = tern(&["-m", p(&gguf("b158-bf16")), "--reference", p(&missing)]);
    assert_one_line_error(&o, "missing dir", "cannot read reference directory");

    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = tern(&["-m", p(&gguf("b158-bf16")), "--reference", p(&empty)]);
    assert_one_line_error(&o, "empty dir", "no <prompt>.tokens.json");

    // The fixtures have 2304 tokens, tern-shakespeare 4352.
    let o = tern(&[
        "-m",
        p(&gguf("b158-bf16")),
        "--reference",
        p(&reference("bitnet.cpp", "tern-shakespeare")),
    ]);
    assert_one_line_error(&o, "vocab mismatch", "vocabulary mismatch");

    // A truncated logits file.
    let cut = tmp.path().join("cut");
    std::fs::create_dir(&cut).unwrap();
    let src = reference("bitnet.cpp", "b158-bf16");
    std::fs::copy(
        src.join("capital.tokens.json"),
        cut.join("capital.tokens.json"),
    )
    .unwrap();
    let logits = std::fs::read(src.join("capital.logits.f32")).unwrap();
    std::fs::write(cut.join("capital.logits.f32"), &logits[..logits.len() - 4]).unwrap();
    let o = tern(&["-m", p(&gguf("b158-bf16")), "--reference", p(&cut)]);
    assert_one_line_error(&o, "truncated logits", "expected 10 positions");

    let o = tern(&["-m", p(&gguf("b158-bf16")), "--bitnet-cpp", "-p", "hi"]);
    if !tern::check::BITNET_CPP {
        assert_one_line_error(&o, "--bitnet-cpp", "built without the `bitnet-cpp` feature");
    }

    let o = tern(&["-m", p(&gguf("b158-bf16")), "-p", "hi"]);
    assert_one_line_error(&o, "-p alone", "--dump");

    let o = tern(&[
        "-m",
        p(&gguf("b158-bf16")),
        "--reference",
        p(&src),
        "--min-top1",
        "2",
    ]);
    assert_one_line_error(&o, "bad threshold", "--min-top1");
}

#[test]
fn a_head_type_unlike_the_reference_is_noted() {
    let tmp = tempfile::tempdir().unwrap();
    let q8 = tmp.path().join("q8.gguf");
    let hf = root().join("models/fixtures/b158-sparse");
    let o = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args([
            "convert",
            p(&hf),
            "--embd-type",
            "q8_0",
            "--outfile",
            p(&q8),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o).1);
    let note = "note: the model's output head is Q8_0";
    let o = tern(&[
        "-m",
        p(&q8),
        "--reference",
        p(&reference("bitnet.cpp", "b158-sparse")),
    ]);
    let (out, err) = text(&o);
    assert_eq!(err.matches(note).count(), 1, "{out}{err}");
    assert!(
        err.contains("the thresholds assume matching types"),
        "{err}"
    );
    // Against its own dump (which records Q8_0): no note.
    let dump = tmp.path().join("dump");
    let o = tern(&["-m", p(&q8), "-p", "Hello there", "--dump", p(&dump)]);
    assert!(o.status.success(), "{}", text(&o).1);
    let o = tern(&["-m", p(&q8), "--reference", p(&dump)]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(!err.contains("note: the model's output head"), "{err}");
    // The F32-head GGUF against the same dump: the types differ.
    let o = tern(&["-m", p(&gguf("b158-sparse")), "--reference", p(&dump)]);
    let err = text(&o).1;
    assert!(
        err.contains("output head is F32 but the reference's is Q8_0"),
        "{err}"
    );
}
