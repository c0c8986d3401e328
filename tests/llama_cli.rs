//! Command lines of llama-cli / bitnet.cpp work as typed, and tern always
//! says why it stopped (issue 13): every test drives the real binary.

mod common;

use common::{assert_clean_failure, hf_dir, ref_gguf, root, run_with_stdin, tern};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use tern::chat::Session;
use tern::model::sampling::SamplingParams;
use tern::model::Model;

fn run(args: &[&str]) -> Output {
    tern().args(args).stdin(Stdio::null()).output().unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn ok(o: &Output, what: &str) -> (String, String) {
    let (out, err) = text(o);
    assert!(o.status.success(), "{what}: {:?}\n{err}", o.status);
    assert!(!err.contains("panicked"), "{what}\n{err}");
    (out, err)
}

/// A usage error as clap reports it: status 2, one `error:` line with `needle`.
fn usage_error(o: &Output, what: &str, needle: &str) {
    let (_, err) = text(o);
    assert_eq!(o.status.code(), Some(2), "{what}\n{err}");
    assert!(!err.contains("panicked"), "{what}: panic\n{err}");
    let errs: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errs.len(), 1, "{what}: one error line expected\n{err}");
    assert!(
        errs[0].contains(needle),
        "{what}: {:?} lacks {needle:?}",
        errs[0]
    );
}

fn fixture() -> PathBuf {
    ref_gguf("b158-bf16")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `../shared/cases/bughunt/run-context-full-silent/puppet-loop.gguf`,
/// stored gzipped in tests/data: greedy decoding loops "Hi😀é" forever.
fn puppet_loop(dir: &Path) -> PathBuf {
    let gz = std::fs::File::open(root().join("tests/data/puppet-loop.gguf.gz")).unwrap();
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut bytes)
        .unwrap();
    let p = dir.join("puppet-loop.gguf");
    std::fs::write(&p, bytes).unwrap();
    p
}

fn spm_base_model() -> PathBuf {
    root().join("tests/data/bitnet-large-spm-i2_s.gguf")
}

/// The line `eval time = … / N tokens (…)`: N.
fn eval_tokens(err: &str, which: &str) -> usize {
    let line = err
        .lines()
        .find(|l| l.trim_start().starts_with(which))
        .unwrap_or_else(|| panic!("no {which:?} line in\n{err}"));
    let after = line.split(" / ").nth(1).unwrap();
    after.split_whitespace().next().unwrap().parse().unwrap()
}

/// The command line bitnet.cpp's run_inference.py builds, for model `m`.
fn run_inference_py(m: &str) -> Vec<&str> {
    vec![
        "run", "-m", m, "-n", "32", "-t", "2", "-p", "Hi", "-ngl", "0", "-c", "2048", "-temp",
        "0.8", "-b", "1",
    ]
}

#[test]
fn run_inference_py_command_line_runs_unchanged() {
    let fx = fixture();
    let o = run(&run_inference_py(s(&fx)));
    let (out, err) = ok(&o, "run_inference.py line");
    assert!(out.starts_with("Hi"), "{out}");
    assert!(
        err.contains("tern: note: -ngl 0 ignored: tern runs on the CPU"),
        "{err}"
    );
    // The prompt is BOS + "Hi", then up to 32 tokens.
    let m = Model::load(&fx).unwrap();
    let n_prompt = m.tokenizer.encode_prompt("Hi").unwrap().0.len();
    assert_eq!(eval_tokens(&err, "prompt eval time"), n_prompt);
    let n = eval_tokens(&err, "eval time");
    assert!(n == 32 || err.contains("[end of text]"), "{err}");

    // The same line with -cnv is a chat whose system prompt is -p.
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t.json");
    let mut cnv = run_inference_py(s(&fx));
    cnv.push("-cnv");
    let o = run_with_stdin(&cnv, &format!("Hello there\n/save {}\n", t.display()));
    ok(&o, "-cnv");
    let conv = std::fs::read_to_string(&t).unwrap();
    let msgs: serde_json::Value = serde_json::from_str(&conv).unwrap();
    assert_eq!(msgs[0]["role"], "system");
    assert_eq!(msgs[0]["content"], "Hi");
    assert_eq!(msgs[1]["content"], "Hello there");
    assert_eq!(msgs[2]["role"], "assistant");
    assert_eq!(msgs.as_array().unwrap().len(), 3);

    // -i is a chat too; `chat -no-cnv` is a plain run.
    let o = run_with_stdin(&["run", "-m", s(&fx), "-i", "-n", "4", "-s", "5"], "Hi\n");
    let (_, err) = ok(&o, "-i");
    assert!(err.contains("tern: 1 reply, seed 5"), "{err}");
    let o = run(&["chat", "-m", s(&fx), "-no-cnv", "-p", "Hello", "-n", "3"]);
    let (out, _) = ok(&o, "chat -no-cnv");
    assert!(out.starts_with("Hello"), "{out}");
}

#[test]
fn llama_cpp_options_are_accepted_or_named_exactly() {
    let fx = fixture();
    // GPU-only and no-op options are accepted (a note for the GPU ones).
    let with = |extra: &[&str]| {
        let mut a = vec![
            "run",
            "-m",
            s(&fx),
            "-p",
            "Hi",
            "-n",
            "4",
            "--temp",
            "0",
            "-fa",
            "-mg",
            "0",
            "-sm",
            "none",
            "-ts",
            "1,0",
            "-nkvo",
            "-dev",
            "none",
            "--no-warmup",
            "--color",
            "--mlock",
            "--no-mmap",
            "-tb",
            "2",
            "-ctk",
            "f32",
            "-ctv",
            "f32",
            "-ub",
            "8",
            "--repeat-last-n",
            "-1",
            "-e",
            "--jinja",
            "-t",
            "-1",
        ];
        a.extend_from_slice(extra);
        let o = run(&a);
        ok(&o, "accepted options")
    };
    let (shown, _) = with(&[]);
    let (out, err) = with(&["--no-display-prompt"]);
    assert_eq!(shown, format!("Hi{out}"), "--no-display-prompt");
    for n in [
        "-mg 0 ignored",
        "-sm none ignored",
        "-ts 1,0 ignored",
        "-nkvo ignored",
        "-dev none ignored",
    ] {
        assert!(
            err.contains(&format!("tern: note: {n}: tern runs on the CPU")),
            "{n}\n{err}"
        );
    }
    // --log-disable drops the notes and timings; --no-perf the timings only.
    let stderr_with = |cmd: &str, flag: &str| {
        let args = [cmd, "-m", s(&fx), "-p", "Hi", "-n", "2", "-ngl", "99", flag];
        ok(&run_with_stdin(&args, "Hello\n"), flag).1
    };
    let err = stderr_with("run", "--log-disable");
    assert!(!err.contains("note") && !err.contains("eval time"), "{err}");
    for cmd in ["run", "chat"] {
        let err = stderr_with(cmd, "--no-perf");
        assert!(err.contains("tern: note: -ngl 99 ignored"), "{cmd}: {err}");
        assert!(!err.contains("eval time"), "{cmd}: {err}");
    }

    // Unknown options are errors naming exactly what was typed.
    for (args, typed) in [
        (vec!["run", "-p", "x", "-xyz"], "'-xyz'"),
        (vec!["run", "-p", "x", "-ctxcp", "2"], "'-ctxcp'"),
        (vec!["run", "-p", "x", "--frobnicate"], "'--frobnicate'"),
        // -t: a count, or -1 (any count ≤ 0) for the default (as llama.cpp's).
        (vec!["run", "-p", "x", "-t", "two"], "or -1 for the default"),
        (
            vec!["inspect", "-temp", "1", "x.gguf"],
            "-temp is not an option of `tern inspect`",
        ),
    ] {
        let o = run(&args);
        usage_error(&o, &format!("{args:?}"), typed);
    }
    // -ctk q8_0: one line naming what tern keeps.
    let o = run(&["run", "-m", s(&fx), "-p", "x", "-ctk", "q8_0"]);
    assert_clean_failure(&o, "--cache-type-k q8_0");
}

#[test]
fn negative_numbers_as_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let puppet = puppet_loop(dir.path());
    // -n -1: until the end of generation or a full context; with or without `=`.
    for n in [
        ["-n", "-1"].as_slice(),
        &["-n=-1"],
        &["--n-predict=-1"],
        &["-n", "-2"],
    ] {
        let mut a = vec!["run", "-m", s(&puppet), "-p", "", "-c", "16", "--temp", "0"];
        a.extend_from_slice(n);
        let (out, err) = ok(&run(&a), &format!("{n:?}"));
        assert!(
            err.contains("[context full after 16 tokens: raise -c]"),
            "{err}"
        );
        assert!(out.starts_with("Hi😀é"), "{out}");
    }
    // --temp -1 is greedy, as --temp 0; --seed -1 is random (and says which).
    let fx = fixture();
    let greedy = |t: &[&str]| {
        let mut a = vec!["run", "-m", s(&fx), "-p", "The", "-n", "12"];
        a.extend_from_slice(t);
        ok(&run(&a), &format!("{t:?}")).0
    };
    let g0 = greedy(&["--temp", "0", "--seed", "1"]);
    assert_eq!(greedy(&["--temp", "-1", "--seed", "-1"]), g0);
    assert_eq!(greedy(&["--temp=-1", "--seed=-1"]), g0);
    assert_eq!(greedy(&["-temp", "-1", "-s", "-1"]), g0);
    let (_, err) = ok(
        &run(&["run", "-m", s(&fx), "-p", "x", "-n", "1", "--seed", "-1"]),
        "seed -1",
    );
    assert!(err.contains(", seed "), "{err}");
    // In a chat too.
    let o = run_with_stdin(
        &[
            "chat",
            "-m",
            s(&fx),
            "-n",
            "-1",
            "--seed",
            "-1",
            "--temp",
            "-1",
            "-c",
            "64",
        ],
        "Hi\n",
    );
    ok(&o, "chat negatives");
    // Other negative counts are refused by name.
    assert_clean_failure(&run(&["run", "-m", s(&fx), "-p", "x", "-n", "-3"]), "-n -3");
}

#[test]
fn prompt_from_a_file_and_escapes() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    // -n 0 prints the prompt only: what tern took as the prompt.
    let prompt = |a: &[&str]| {
        let mut args = vec!["run", "-m", s(&fx), "-n", "0", "--temp", "0"];
        args.extend_from_slice(a);
        ok(&run(&args), &format!("{a:?}")).0
    };
    // -p "KING HENRY.\n" holds a newline; --no-escape keeps the backslash.
    assert_eq!(prompt(&["-p", "KING HENRY.\\n"]), "KING HENRY.\n\n");
    assert_eq!(
        prompt(&["-p", "KING HENRY.\\n", "--no-escape"]),
        "KING HENRY.\\n\n"
    );
    assert_eq!(prompt(&["-p", r"a\tb\x41"]), "a\tbA\n");
    // -f: the file's text, one final newline dropped, escapes processed (as llama.cpp).
    let f = dir.path().join("prompt.txt");
    std::fs::write(&f, "ROMEO.\\tJuliet\nwherefore\n").unwrap();
    assert_eq!(prompt(&["-f", s(&f)]), "ROMEO.\tJuliet\nwherefore\n");
    assert_eq!(
        prompt(&["--file", s(&f), "--no-escape"]),
        "ROMEO.\\tJuliet\nwherefore\n"
    );
    assert_clean_failure(
        &run(&["run", "-m", s(&fx), "-f", s(&dir.path().join("none.txt"))]),
        "cannot read",
    );
    // -f in a chat is the system prompt.
    let t = dir.path().join("t.json");
    let o = run_with_stdin(
        &["chat", "-m", s(&fx), "-f", s(&f), "-n", "2"],
        &format!("/save {}\n", t.display()),
    );
    ok(&o, "chat -f");
    assert!(std::fs::read_to_string(&t)
        .unwrap()
        .contains("ROMEO.\\tJuliet\\nwherefore"));
}

#[test]
fn sampling_values_are_validated_alike() {
    let fx = fixture();
    for (flag, value, problem) in [
        ("--temp", "nan", "must be a finite number"),
        ("--top-p", "nan", "must be between 0 and 1"),
        ("--min-p", "2", "must be between 0 and 1"),
        ("--repeat-penalty", "0", "must be a positive number"),
        ("--presence-penalty", "3", "must be between -2 and 2"),
        ("--frequency-penalty", "-2.5", "must be between -2 and 2"),
        ("--top-k", "many", "is not a whole number"),
        (
            "--seed",
            "-5",
            "must be a whole number from 0 to 2^64-1, or -1 (random)",
        ),
    ] {
        let want = format!("{flag} {value}: {problem}");
        assert_clean_failure(&run(&["run", "-m", s(&fx), "-p", "x", flag, value]), &want);
        assert_clean_failure(
            &run_with_stdin(&["chat", "-m", s(&fx), flag, value], ""),
            &want,
        );
        // /set in the chat: the same check.
        let name = flag.trim_start_matches("--").replace('-', "_");
        let o = run_with_stdin(&["chat", "-m", s(&fx)], &format!("/set {name} {value}\n"));
        assert_clean_failure(&o, &format!("/set {name} {value}: {problem}"));
    }
    // chat -s is the seed (as in llama.cpp), not the system prompt.
    let o = run_with_stdin(&["chat", "-m", s(&fx), "-s", "42", "-n", "2"], "Hi\n");
    let (_, err) = ok(&o, "chat -s");
    assert!(err.contains("seed 42"), "{err}");
}

/// `-r/--reverse-prompt` (llama-cli's): generation halts once the
/// generated text contains it, the reverse prompt shown; it may span
/// several tokens (the puppet model writes "Hi😀é" a byte at a time), may be
/// given several times, and takes -p's escapes. In a chat the reply ends
/// there, without "[interrupted]".
#[test]
fn reverse_prompt_halts_generation() {
    let dir = tempfile::tempdir().unwrap();
    let puppet = puppet_loop(dir.path());
    let gen = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "-m",
            s(&puppet),
            "-p",
            "Hi",
            "-n",
            "12",
            "--temp",
            "0",
        ];
        args.extend_from_slice(extra);
        let (out, err) = ok(&run(&args), "run -r");
        (out, eval_tokens(&err, "eval time"))
    };
    assert_eq!(gen(&[]), ("Hi😀éHi😀\n".to_string(), 12));
    // 😀 and é: six one-byte tokens.
    assert_eq!(gen(&["-r", "😀é"]), ("Hi😀é\n".to_string(), 6));
    assert_eq!(
        gen(&["--reverse-prompt", "never", "-r", "\\x48i"]),
        ("Hi😀éHi\n".to_string(), 8)
    );
    let o = run_with_stdin(
        &[
            "chat",
            "-m",
            s(&puppet),
            "-n",
            "12",
            "--temp",
            "0",
            "-r",
            "😀é",
        ],
        "Hi\n",
    );
    let (out, err) = ok(&o, "chat -r");
    assert_eq!(out, "Hi😀é\n");
    assert!(
        !err.contains("interrupted") && !out.contains("interrupted"),
        "{err}"
    );
}

/// `--chat-template bitnet` on a base model without `<|eot_id|>` ends each
/// turn with the vocabulary's EOS, as tern's fallback format does (a
/// literal "<|eot_id|>" would be text the model cannot end a turn with).
#[test]
fn bitnet_template_name_ends_turns_with_the_models_eos() {
    let m = spm_base_model();
    let o = run_with_stdin(
        &[
            "chat",
            "-m",
            s(&m),
            "-n",
            "1",
            "--temp",
            "0",
            "-v",
            "--chat-template",
            "bitnet",
        ],
        "Hi\n",
    );
    let (_, err) = ok(&o, "--chat-template bitnet");
    let line = err
        .lines()
        .find(|l| l.starts_with("tern: prompt: "))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains(r#"2:"</s>""#), "{line}");
    assert!(!line.contains("eot"), "{line}");
}

#[test]
fn a_full_context_is_reported() {
    // ../shared/cases/bughunt/run-context-full-silent
    let dir = tempfile::tempdir().unwrap();
    let puppet = puppet_loop(dir.path());
    let o = run(&[
        "run",
        "-m",
        s(&puppet),
        "-p",
        "",
        "-n",
        "100",
        "-c",
        "16",
        "--temp",
        "0",
    ]);
    let (out, err) = ok(&o, "context full");
    assert!(
        err.contains("-n 100 is more than the context leaves"),
        "said at start:\n{err}"
    );
    assert!(
        err.contains("[context full after 16 tokens: raise -c]"),
        "{err}"
    );
    // Whole characters only: "Hi😀é" repeated, then the final newline.
    let body = out.strip_suffix('\n').unwrap();
    assert!(
        !body.is_empty() && body.replace("Hi😀é", "").is_empty(),
        "{out:?}"
    );
    // -n within the context: no note, no context message.
    let o = run(&[
        "run",
        "-m",
        s(&puppet),
        "-p",
        "",
        "-n",
        "8",
        "-c",
        "16",
        "--temp",
        "0",
    ]);
    let (out, err) = ok(&o, "-n 8");
    assert!(
        !err.contains("context full") && !err.contains("note"),
        "{err}"
    );
    assert_eq!(out, "Hi😀é\n");
}

#[test]
fn a_prompt_with_its_own_bos_gets_no_second_one() {
    // ../shared/cases/bughunt/run-double-bos: base-b158-bf16.gguf is this conversion.
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("base-b158-bf16.gguf");
    let o = run(&["convert", s(&hf_dir("b158-bf16")), "--outfile", s(&m)]);
    ok(&o, "convert");
    let tokens = |p: &str| {
        let o = run(&["run", "-m", s(&m), "-p", p, "-n", "1", "--temp", "0"]);
        let (_, err) = ok(&o, p);
        (eval_tokens(&err, "prompt eval time"), err)
    };
    let (plain, err) = tokens("Hello");
    assert!(!err.contains("BOS"), "{err}");
    let (with_bos, err) = tokens("<|begin_of_text|>Hello");
    assert_eq!(with_bos, plain, "one BOS");
    let warns: Vec<&str> = err.lines().filter(|l| l.contains("BOS")).collect();
    assert_eq!(warns.len(), 1, "{err}");
    assert!(
        warns[0].contains("already starts with the BOS token"),
        "{err}"
    );
}

#[test]
fn chat_on_a_base_model_uses_its_own_end_token() {
    // ../shared/cases/bughunt/spm-chat-literal-eot
    let spm = spm_base_model();
    let o = run_with_stdin(
        &[
            "chat",
            "-m",
            s(&spm),
            "-n",
            "3",
            "--temp",
            "0",
            "--no-history",
        ],
        "Hello there\n",
    );
    let (_, err) = ok(&o, "spm chat");
    assert!(
        err.contains("tern: warning: this model has no chat template and no <|eot_id|> token"),
        "{err}"
    );
    // The prompt: BOS "User: Hello there" </s> "Assistant: ", with </s> a token.
    let m = Model::load(&spm).unwrap();
    let tok = &m.tokenizer;
    let mut s = Session::new(&m, 256, false, SamplingParams::default(), None).unwrap();
    assert_eq!(s.warnings.len(), 1);
    s.conv.turns.push(tern::chat::Message::user("Hello there"));
    let ids = s.tokens(true).unwrap();
    let eos = tok.eos().unwrap();
    assert_eq!(ids.iter().filter(|&&t| t == eos).count(), 1, "{ids:?}");
    assert!(!tok.decode(&ids, true).contains("eot_id"));
    let mut expected = vec![tok.bos().unwrap()];
    expected.extend(tok.encode("User: Hello there", false).unwrap());
    expected.push(eos);
    expected.extend(tok.encode("Assistant: ", false).unwrap());
    assert_eq!(ids, expected);
    assert_eq!(eval_tokens(&err, "prompt eval time"), expected.len());
    // A BitNet vocabulary keeps <|eot_id|> and gets no warning.
    let m = Model::load(&fixture()).unwrap();
    let s = Session::new(&m, 256, false, SamplingParams::default(), None).unwrap();
    assert!(s.warnings.is_empty());
}

#[test]
fn huge_contexts_are_one_line_errors() {
    let fx = fixture();
    for c in ["1000000000", "18446744073709551615", "9223372036854775808"] {
        for (what, o) in [
            ("run", run(&["run", "-m", s(&fx), "-p", "x", "-c", c])),
            (
                "chat",
                run_with_stdin(&["chat", "-m", s(&fx), "-c", c], "Hi\n"),
            ),
        ] {
            let line = assert_clean_failure(&o, "needs a KV cache of");
            assert!(
                line.contains(&format!("a context of {c} tokens")),
                "{what}: {line}"
            );
            assert!(line.ends_with("lower -c"), "{what}: {line}");
        }
    }
    // perplexity: -c 0 and a -c larger than the text are errors, not NaN.
    let heldout = root().join("models/tern-shakespeare/heldout.txt");
    for (c, needle) in [
        ("0", "a context of 0 tokens scores nothing"),
        ("2", "a context of 2 tokens scores nothing"),
        ("9223372036854775808", "needs at least 18446744073709551616"),
        (
            "18446744073709551615",
            "needs at least 36893488147419103230",
        ),
    ] {
        let o = run(&["perplexity", "-f", s(&heldout), "-c", c]);
        assert_clean_failure(&o, needle);
        assert!(!text(&o).0.contains("PPL"));
    }
    // Above the training context: a warning in run and chat, as in perplexity.
    let o = run(&["run", "-m", s(&fx), "-p", "x", "-n", "1", "-c", "5000"]);
    let (_, err) = ok(&o, "-c 5000");
    assert!(
        err.contains("warning: the model was trained on only 4096 context tokens (5000 specified)"),
        "{err}"
    );
    let o = run_with_stdin(&["chat", "-m", s(&fx), "-n", "1", "-c", "5000"], "Hi\n");
    let (_, err) = ok(&o, "chat -c 5000");
    assert!(
        err.contains("trained on only 4096 context tokens (5000 specified)"),
        "{err}"
    );
}

#[test]
fn logits_past_the_training_context_warns() {
    // Issue 15, item 8: as perplexity does.
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("l.f32");
    let ids = vec!["17"; 4100].join(",");
    let o = run(&["logits", "-m", s(&fx), "--tokens", &ids, "--out", s(&out)]);
    let (_, err) = ok(&o, "logits 4100");
    assert!(
        err.contains("warning: the model was trained on only 4096 context tokens (4100 specified)"),
        "{err}"
    );
    let o = run(&[
        "logits",
        "-m",
        s(&fx),
        "--tokens",
        "1,2,3",
        "--out",
        s(&out),
    ]);
    let (_, err) = ok(&o, "logits 3");
    assert!(!err.contains("warning"), "{err}");
}

/// Run with stdout a pipe whose reader is already gone (`… | head -0`).
fn closed_stdout(args: &[&str]) -> Output {
    let mut child = tern()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    child.wait_with_output().unwrap()
}

#[test]
fn a_closed_pipe_ends_quietly() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let heldout = root().join("models/tern-shakespeare/heldout.txt");
    let base = dir.path().join("base.kld");
    for (what, args) in [
        ("inspect", vec!["inspect", s(&fx)]),
        ("run", vec!["run", "-m", s(&fx), "-p", "x", "-n", "200"]),
        (
            "perplexity",
            vec![
                "perplexity",
                "-f",
                s(&heldout),
                "-c",
                "64",
                "--chunks",
                "3",
                "--kl-divergence-base",
                s(&base),
            ],
        ),
        (
            "bench",
            vec![
                "bench",
                "-m",
                s(&fx),
                "-p",
                "8",
                "-n",
                "0",
                "-r",
                "1",
                "--bw-mib",
                "8",
            ],
        ),
    ] {
        let o = closed_stdout(&args);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(0), "{what}\n{err}");
        assert!(
            !err.contains("panicked") && !err.contains("error"),
            "{what}\n{err}"
        );
    }
    // The base file perplexity was asked for is complete all the same.
    assert!(base.metadata().unwrap().len() > 20);
    // A chat reading messages writes its reply to the closed pipe: quiet too.
    let mut child = tern()
        .args(["chat", "-m", s(&fx), "-n", "50"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Hello\nHello again\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    assert!(!text(&o).1.contains("panicked"));
}

#[test]
fn a_folder_or_safetensors_as_model_gets_the_convert_hint() {
    let dir = hf_dir("b158-bf16");
    let o = run(&["run", "-m", s(&dir), "-p", "x"]);
    let line = assert_clean_failure(&o, "is a directory");
    assert!(
        line.contains(&format!("run `tern convert {}`", dir.display())),
        "{line}"
    );
    let st = dir.join("model.safetensors");
    let o = run(&["chat", "-m", s(&st)]);
    let line = assert_clean_failure(&o, "is a safetensors file, not GGUF");
    assert!(
        line.contains(&format!("run `tern convert {}`", dir.display())),
        "{line}"
    );
    let heldout = root().join("models/tern-shakespeare/heldout.txt");
    let o = run(&["perplexity", "-m", s(&dir), "-f", s(&heldout)]);
    assert_clean_failure(&o, "is a directory");
    // `inspect` takes its file as an argument: the same hints.
    let line = assert_clean_failure(&run(&["inspect", s(&dir)]), "is a directory");
    assert!(line.contains("run `tern convert"), "{line}");
    assert_clean_failure(
        &run(&["inspect", s(&st)]),
        "is a safetensors file, not GGUF",
    );
}

/// stdout on a full disk (`> /dev/full`): a one-line error and status 1,
/// not a panic, whether the command prints with `println!` or `write!`.
#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_is_a_one_line_error() {
    let fx = fixture();
    for args in [
        vec!["inspect", s(&fx)],
        vec!["run", "-m", s(&fx), "-p", "x", "-n", "4"],
    ] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let o = tern()
            .args(&args)
            .stdin(Stdio::null())
            .stdout(full)
            .output()
            .unwrap();
        assert_clean_failure(&o, "No space left on device");
    }
}

#[test]
fn save_and_load_count_the_same_messages() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t.json");
    let o = run_with_stdin(
        &["chat", "-m", s(&fx), "-sys", "Be brief.", "-n", "3"],
        &format!("Hello\n/save {0}\n/load {0}\n", t.display()),
    );
    let (_, err) = ok(&o, "save/load");
    assert!(err.contains("[saved 3 messages"), "{err}");
    assert!(err.contains("[loaded 3 messages"), "{err}");
    // In a conversation -p is the system prompt: given twice, it is refused.
    let o = run_with_stdin(&["chat", "-m", s(&fx), "-sys", "A", "-p", "B"], "");
    assert_clean_failure(&o, "give it once");
}

#[test]
fn perplexity_chunks_minus_one_is_all() {
    let heldout = root().join("models/tern-shakespeare/heldout.txt");
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.txt");
    let text = std::fs::read_to_string(heldout).unwrap();
    std::fs::write(&short, &text[..3000]).unwrap();
    let o = run(&["perplexity", "-f", s(&short), "-c", "128", "--chunks", "-1"]);
    let (out, err) = ok(&o, "--chunks -1");
    assert!(out.contains("Final estimate: PPL = "), "{out}{err}");
    assert_clean_failure(
        &run(&["perplexity", "-f", s(&short), "-c", "128", "--chunks", "-2"]),
        "--chunks -2",
    );
}
