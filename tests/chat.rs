//! `tern chat`: prompt rendering with the fixtures' chat templates, KV-cache
//! reuse across turns, piped mode through the real binary, and an
//! interactive session under a pseudo-terminal (tmux).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
// The pseudo-terminal tests drive tmux, which only exists on Unix; on
// Windows the interactive session is checked under wine by .ci/windows.sh.
#[cfg(unix)]
use std::time::{Duration, Instant};
use tern::chat::{tokenize_prompt, ChatTemplate, Conversation, Message, Session};
use tern::gguf::GgufFile;
use tern::model::sampling::SamplingParams;
use tern::model::Model;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture() -> PathBuf {
    root().join("vendor/reference/gguf/b158-bf16.i2_s.gguf")
}

const SYSTEM: &str = "You are a helpful assistant.";

/// System + two user turns (with the first reply) + generation prompt.
fn four_messages() -> Vec<Message> {
    vec![
        Message::system(SYSTEM),
        Message::user("Hello! Who are you?"),
        Message::assistant("I am tern, a small model."),
        Message::user("What is 2+2? Answer in één word."),
    ]
}

// The expected ids were computed independently: the template of each HF
// folder's tokenizer_config.json rendered by Python jinja2 3.1.6
// (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks — as
// transformers' apply_chat_template does), then tokenized by Hugging Face
// `tokenizers` 0.23.3 from the folder's tokenizer.json with
// add_special_tokens=False.
const B158_IDS: &[u32] = &[
    2048, 50, 1371, 1174, 25, 688, 678, 263, 413, 823, 79, 69, 424, 1288, 281, 663, 83, 13, 2057,
    52, 1527, 25, 507, 823, 326, 0, 456, 568, 678, 403, 30, 2057, 32, 82, 82, 281, 663, 83, 25,
    375, 263, 76, 376, 77, 11, 263, 279, 277, 1365, 414, 75, 13, 2057, 52, 1527, 25, 456, 71, 329,
    462, 220, 17, 10, 17, 30, 1478, 82, 86, 257, 306, 220, 127, 102, 127, 102, 77, 318, 261, 67,
    13, 2057, 32, 82, 82, 281, 663, 83, 25, 220,
];
const SHAKESPEARE_IDS: &[u32] = &[
    4096, 50, 88, 304, 490, 25, 1565, 435, 258, 1409, 697, 1286, 653, 453, 13, 4105, 52, 82, 271,
    25, 446, 426, 78, 0, 2859, 435, 289, 30, 4105, 548, 82, 653, 453, 25, 294, 465, 1872, 77, 11,
    258, 2903, 2394, 529, 13, 4105, 52, 82, 271, 25, 1077, 326, 220, 17, 10, 17, 30, 1311, 857,
    271, 307, 220, 127, 102, 127, 102, 77, 751, 13, 4105, 548, 82, 653, 453, 25, 220,
];

/// The expected prompt assembled piece by piece: BOS, then each message's
/// text tokenized on its own, each followed by `<|eot_id|>`.
fn assembled(m: &Model) -> Vec<u32> {
    let tok = &m.tokenizer;
    let eot = tok.find_token("<|eot_id|>").unwrap();
    let mut ids = vec![tok.bos().unwrap()];
    for piece in [
        format!("System: {SYSTEM}"),
        "User: Hello! Who are you?".to_string(),
        "Assistant: I am tern, a small model.".to_string(),
        "User: What is 2+2? Answer in één word.".to_string(),
    ] {
        ids.extend(tok.encode(&piece, false).unwrap());
        ids.push(eot);
    }
    ids.extend(tok.encode("Assistant: ", false).unwrap());
    ids
}

fn check_prompt(m: &Model, expected: &[u32]) {
    let t = ChatTemplate::for_model(m).unwrap();
    let text = t.render(&four_messages(), true).unwrap();
    let ids = tokenize_prompt(&m.tokenizer, &text).unwrap();
    assert_eq!(ids, expected);
    assert_eq!(ids, assembled(m));
    let bos = m.tokenizer.bos().unwrap();
    assert_eq!(ids[0], bos);
    assert_eq!(ids.iter().filter(|&&t| t == bos).count(), 1, "BOS once");
}

#[test]
fn prompt_ids_match_the_reference_tokenization() {
    let m = Model::load(&fixture()).unwrap();
    check_prompt(&m, B158_IDS);
    let m = Model::load(&root().join("models/tern-shakespeare-i2_s.gguf")).unwrap();
    check_prompt(&m, SHAKESPEARE_IDS);

    // The session renders the same thing from its conversation.
    let mut s = Session::new(
        &m,
        256,
        false,
        SamplingParams::default(),
        Some(SYSTEM.into()),
    )
    .unwrap();
    s.conv.turns = four_messages()[1..].to_vec();
    assert_eq!(s.tokens(true).unwrap(), SHAKESPEARE_IDS);
}

#[test]
fn placeholder_or_missing_template_gives_the_bitnet_format() {
    for replace in [true, false] {
        let mut g = GgufFile::open(&fixture()).unwrap();
        g.kv.retain(|(k, _)| k != "tokenizer.chat_template");
        if replace {
            g.kv.push((
                "tokenizer.chat_template".into(),
                tern::gguf::Value::String(
                    "{% for message in messages %}{{ 'Human: ' + message['content'] + '\\n\\nBITNETAssistant: ' }}{% endfor %}"
                        .into(),
                ),
            ));
        }
        let m = Model::from_gguf(g).unwrap();
        check_prompt(&m, B158_IDS);
    }
}

fn greedy() -> SamplingParams {
    SamplingParams {
        temp: 0.0,
        repeat_penalty: 1.0,
        ..Default::default()
    }
}

#[test]
fn later_turns_prefill_only_the_new_tokens() {
    let m = Model::load(&root().join("models/tern-shakespeare-i2_s.gguf")).unwrap();
    let mut s = Session::new(&m, 512, false, greedy(), Some(SYSTEM.into())).unwrap();
    s.n_predict = Some(12);

    let p1 = s.prepare("Good morrow, sir.").unwrap();
    assert_eq!(p1.reused, 0);
    let r1 = s.generate(&p1, |_| true).unwrap();
    assert_eq!(r1.stats.prompt_tokens, p1.tokens.len());
    assert!(r1.stats.gen_tokens > 0);
    assert_eq!(s.conv.turns.len(), 2);
    let cached_after_1 = s.n_cached();

    let p2 = s.prepare("What news?").unwrap();
    let new_msg = m.tokenizer.encode("User: What news?", false).unwrap().len();
    // Everything up to (at most a few tokens into) the first reply is reused.
    assert!(
        p2.reused >= p1.tokens.len() - 1,
        "{} < {}",
        p2.reused,
        p1.tokens.len()
    );
    assert!(p2.reused <= cached_after_1);
    let fresh = p2.tokens.len() - p2.reused;
    assert!(
        fresh <= new_msg + r1.stats.gen_tokens + 8,
        "turn 2 evaluates {fresh} tokens"
    );
    let r2 = s.generate(&p2, |_| true).unwrap();
    assert_eq!(r2.stats.prompt_tokens, fresh);

    // The same conversation from a cold cache gives the same greedy reply.
    let mut cold = Session::new(&m, 512, false, greedy(), Some(SYSTEM.into())).unwrap();
    cold.n_predict = Some(12);
    cold.conv.turns = s.conv.turns[..3].to_vec();
    let pc = cold.fit().unwrap();
    assert_eq!(pc.tokens, p2.tokens);
    assert_eq!(pc.reused, 0);
    let rc = cold.generate(&pc, |_| true).unwrap();
    assert_eq!(rc.text, r2.text);

    // Stopping from the callback keeps the partial reply in the history.
    let p3 = s.prepare("Speak on.").unwrap();
    let mut n = 0;
    let r3 = s
        .generate(&p3, |_| {
            n += 1;
            n < 3
        })
        .unwrap();
    assert_eq!(r3.stats.gen_tokens, 3);
    assert_eq!(
        r3.stats.stop,
        tern::model::generate::StopReason::Interrupted
    );
    assert_eq!(s.conv.turns.last().unwrap(), &Message::assistant(&r3.text));
    assert_eq!(s.conv.turns.len(), 6);
}

#[test]
fn a_full_context_drops_the_oldest_turns() {
    let m = Model::load(&fixture()).unwrap();
    let mut s = Session::new(&m, 96, false, greedy(), Some("Be brief.".into())).unwrap();
    s.n_predict = Some(8);
    let mut dropped = 0;
    for i in 0..8 {
        let p = s
            .prepare(&format!("Message number {i}, please answer."))
            .unwrap();
        assert!(p.tokens.len() + 8 <= 96);
        dropped += p.dropped_turns;
        s.generate(&p, |_| true).unwrap();
        assert!(s.n_cached() <= 96);
    }
    assert!(dropped > 0);
    assert_eq!(s.conv.system.as_deref(), Some("Be brief."));
    assert_eq!(s.conv.turns.last().unwrap().role, "assistant");
    assert!(s.conv.turns[s.conv.turns.len() - 2]
        .content
        .starts_with("Message number 7"));

    // A message that cannot fit at all is refused and not kept.
    let before = s.conv.clone();
    let long = "word ".repeat(200);
    assert!(s.prepare(&long).is_err());
    assert_eq!(s.conv, before);
}

fn run_piped(args: &[&str], input: &str) -> Output {
    let mut a = vec!["chat"];
    a.extend_from_slice(args);
    common::run_with_stdin(&a, input)
}

fn transcript(p: &Path) -> Conversation {
    Conversation::from_json(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn piped_mode_is_scriptable() {
    let dir = tempfile::tempdir().unwrap();
    let t1 = dir.path().join("t1.json");
    let t2 = dir.path().join("t2.json");
    let t3 = dir.path().join("t3.json");
    let input = format!(
        "What is your name?\n\
         Tell me more \\\n\
         about it.\n\
         /save {}\n\
         /reset\n\
         What is your name?\n\
         /save {}\n\
         /set temp 0.7\n\
         /set top_k 5\n\
         /set top-p 0.9\n\
         /set min_p 0.1\n\
         /set repeat_penalty 1.2\n\
         /set seed 7\n\
         /system Answer in French.\n\
         \"\"\"\n\
         One more,\n\
         on two lines.\n\
         \"\"\"\n\
         /stats\n\
         /save {}\n\
         /exit\n\
         never read\n",
        t1.display(),
        t2.display(),
        t3.display()
    );
    let fx = fixture();
    let out = run_piped(
        &[
            "-m",
            fx.to_str().unwrap(),
            "-sys",
            SYSTEM,
            "-n",
            "10",
            "--temp",
            "0",
            "-t",
            "2",
        ],
        &input,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");

    let a = transcript(&t1);
    assert_eq!(a.system.as_deref(), Some(SYSTEM));
    let roles: Vec<&str> = a.turns.iter().map(|m| m.role.as_str()).collect();
    assert_eq!(roles, ["user", "assistant", "user", "assistant"]);
    assert_eq!(a.turns[0].content, "What is your name?");
    assert_eq!(a.turns[2].content, "Tell me more \nabout it.");

    // After /reset the same first message gets the same greedy reply.
    let b = transcript(&t2);
    assert_eq!(b.system.as_deref(), Some(SYSTEM));
    assert_eq!(b.turns.len(), 2);
    assert_eq!(b.turns[1], a.turns[1]);

    let c = transcript(&t3);
    assert_eq!(c.system.as_deref(), Some("Answer in French."));
    assert_eq!(c.turns.len(), 4);
    assert_eq!(c.turns[2].content, "One more,\non two lines.");

    // stdout holds the replies and nothing else, one after the other.
    let replies = [&a.turns[1], &a.turns[3], &b.turns[1], &c.turns[3]];
    let expected: String = replies
        .iter()
        .map(|m| format!("{}\n", m.content.trim()))
        .collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);

    for note in [
        "[temp = 0.7]",
        "[top_k = 5]",
        "[top_p = 0.9]",
        "[seed = 7]",
        "[history and cache cleared]",
        "replies: 4;",
        "tern: 4 replies, seed 7",
        "eval time =",
    ] {
        assert!(stderr.contains(note), "missing {note:?} in:\n{stderr}");
    }
}

#[test]
fn piped_mode_reports_the_context_filling() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t.json");
    let mut input = String::new();
    for i in 0..6 {
        input.push_str(&format!("This is message {i} of a long chat.\n"));
    }
    input.push_str(&format!("/save {}\n", t.display()));
    let fx = fixture();
    let out = run_piped(
        &[
            "-m",
            fx.to_str().unwrap(),
            "-c",
            "80",
            "-n",
            "8",
            "--system",
            "S",
            "--temp",
            "0",
            "-t",
            "2",
        ],
        &input,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("[context full: dropped the"), "{stderr}");
    let c = transcript(&t);
    assert_eq!(c.system.as_deref(), Some("S"));
    assert!(c.turns.len() < 12);
    assert_eq!(
        c.turns[c.turns.len() - 2].content,
        "This is message 5 of a long chat."
    );
}

#[test]
fn verbose_shows_each_turns_prompt_tokens() {
    // `-v` as in `run`: the tokens evaluated for each turn, after what the
    // cache already holds from the turn before.
    let out = run_piped(
        &["-v", "-n", "4", "--temp", "0", "-t", "2"],
        "Hi\nWho are you?\n",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("tern: prompt: "))
        .collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].contains(", 0 reused from the cache, evaluating ["),
        "{stderr}"
    );
    assert!(lines[1].contains("\"Ġyou\""), "{stderr}");
    assert!(!lines[1].contains(", 0 reused"), "{stderr}");
}

/// `--chat-template NAME|JINJA` and `--chat-template-file` (llama.cpp's)
/// replace the model's template: the prompt a turn evaluates is rendered by
/// it. An unknown name, a template that does not compile, an oversized file
/// are one-line errors; the two flags together are a usage error.
#[test]
fn chat_template_flags_replace_the_models() {
    let dir = tempfile::tempdir().unwrap();
    let source = "{{ 'X:' + messages[-1]['content'] }}";
    let f = dir.path().join("t.jinja");
    std::fs::write(&f, source).unwrap();
    let f = f.to_str().unwrap();
    let prompt = |args: &[&str]| -> String {
        let mut a = vec!["-v", "-n", "1", "--temp", "0"];
        a.extend_from_slice(args);
        let out = run_piped(&a, "Hi\n");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{args:?}: {stderr}");
        stderr
            .lines()
            .find(|l| l.starts_with("tern: prompt: "))
            .unwrap_or_else(|| panic!("no prompt line: {stderr}"))
            .to_string()
    };
    let from_file = prompt(&["--chat-template-file", f]);
    // BOS (the model adds it), then the template's text.
    assert!(
        from_file.starts_with("tern: prompt: 5 tokens"),
        "{from_file}"
    );
    assert!(
        from_file.ends_with(r#":"X", 25:":", 39:"H", 72:"i"]"#),
        "{from_file}"
    );
    assert_eq!(prompt(&["--chat-template", source]), from_file);
    // Markers a template writes that are not tokens of the model are
    // named in a warning (the built-in model has Llama 3's, not ChatML's).
    let warned = |name: &str| {
        let out = run_piped(&["-n", "1", "--chat-template", name], "Hi\n");
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| l.contains("not tokens of this model"))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let w = warned("chatml");
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains(r#""<|im_start|>", "<|im_end|>" are"#),
        "{w:?}"
    );
    assert!(warned("llama3").is_empty());
    let chatml = prompt(&["--chat-template", "chatml"]);
    assert!(
        chatml.contains(r#""im""#) && chatml.contains(r#""art""#),
        "{chatml}"
    );
    assert_ne!(prompt(&[]), chatml);

    let fails = |args: &[&str], needle: &str| {
        let mut a = vec!["chat"];
        a.extend_from_slice(args);
        common::assert_clean_failure(&common::run_with_stdin(&a, "Hi\n"), needle);
    };
    fails(&["--chat-template", "vicuna"], "bitnet, chatml, llama3");
    fails(&["--chat-template", "{% if %}"], "does not compile");
    // One that compiles but cannot render a conversation fails at start too.
    fails(
        &["--chat-template", "{{ raise_exception('no') }}"],
        "does not render a user message",
    );
    let blank = dir.path().join("blank.jinja");
    std::fs::write(&blank, " \n\n").unwrap();
    fails(
        &["--chat-template-file", blank.to_str().unwrap()],
        "is empty",
    );
    // A byte-order mark is not template text.
    let bom = dir.path().join("bom.jinja");
    std::fs::write(&bom, format!("\u{feff}{source}")).unwrap();
    assert_eq!(
        prompt(&["--chat-template-file", bom.to_str().unwrap()]),
        from_file
    );
    let big = dir.path().join("big.jinja");
    std::fs::write(&big, "{{ 'x' }}".repeat(200_000)).unwrap();
    fails(
        &["--chat-template-file", big.to_str().unwrap()],
        "more than 1048576 bytes",
    );
    let both = common::run_with_stdin(
        &[
            "chat",
            "--chat-template",
            "chatml",
            "--chat-template-file",
            f,
        ],
        "",
    );
    assert_eq!(both.status.code(), Some(2));
}

#[test]
fn piped_mode_stops_at_a_bad_command() {
    let fx = fixture();
    for (input, msg) in [
        ("/set temp hot\n", "/set temp hot: is not a number"),
        ("/set top_p 2\n", "/set top_p 2: must be between 0 and 1"),
        (
            "/set top-p nan\n",
            "/set top_p nan: must be between 0 and 1",
        ),
        ("/set min_p 2\n", "/set min_p 2: must be between 0 and 1"),
        (
            "/set repeat_penalty 0\n",
            "/set repeat_penalty 0: must be a positive number",
        ),
        ("/set temp nan\n", "/set temp nan: must be a finite number"),
        ("/set colour red\n", "unknown setting colour"),
        ("/frobnicate\n", "unknown command /frobnicate"),
        (
            "/load /nonexistent/file.json\n",
            "cannot read /nonexistent/file.json",
        ),
    ] {
        let out = run_piped(&["-m", fx.to_str().unwrap(), "-t", "2"], input);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{input}: {stderr}");
        assert!(stderr.contains(msg), "{input}: {stderr}");
        assert!(stderr
            .trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with("tern: error: "));
    }
    // A stray argument is refused rather than taken for a message.
    let out = run_piped(&["-m", fx.to_str().unwrap(), "hello"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unexpected argument 'hello'"));
    let out = run_piped(&["-m", fx.to_str().unwrap(), "-n", "0"], "");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn a_runaway_chat_template_is_a_clean_error() {
    // The template comes from the model file; one that loops 10^10 times
    // stops at the render's budget, in well under a second of work.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("runaway.gguf");
    let g = GgufFile::open(&fixture()).unwrap();
    let mut kv = common::map_metadata(&g, |k| {
        (k != "tokenizer.chat_template").then(|| k.to_string())
    });
    kv.push((
        "tokenizer.chat_template".into(),
        tern::gguf::Value::String(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
                .into(),
        ),
    ));
    common::rewrite_gguf(&g, &bad, &kv);
    let start = std::time::Instant::now();
    let out = run_piped(&["-m", bad.to_str().unwrap(), "-t", "2"], "Hello\n");
    common::assert_clean_failure(&out, "ran past its budget");
    assert!(start.elapsed().as_secs() < 60, "{:?}", start.elapsed());
}

/// A tmux server of our own (its own socket), killed on drop.
#[cfg(unix)]
struct Tmux {
    /// The server's socket, inside `_dir` so that it goes with it.
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

#[cfg(unix)]
impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.socket);
        c
    }
    fn run(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-J", "-S", "-", "-t", "chat"])
    }
    fn keys(&self, keys: &[&str]) {
        let mut a = vec!["send-keys", "-t", "chat"];
        a.extend_from_slice(keys);
        self.run(&a);
    }
    fn type_line(&self, text: &str) {
        self.run(&["send-keys", "-t", "chat", "-l", text]);
        self.keys(&["Enter"]);
    }
    fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let t0 = Instant::now();
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            if t0.elapsed() > Duration::from_secs(120) {
                panic!("timed out waiting for {what}; the screen:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    /// tern's exit status, once the wrapper shell has printed it (tmux's own
    /// `pane_dead_status` is unreliable: tmux 3.3 sometimes never reaps the child).
    fn wait_exit(&self) -> i32 {
        let s = self.wait_for("tern to exit", |s| s.contains(EXIT_MARK));
        let i = s.rfind(EXIT_MARK).unwrap() + EXIT_MARK.len();
        let code: String = s[i..].chars().take_while(char::is_ascii_digit).collect();
        code.parse().unwrap()
    }
}

#[cfg(unix)]
const EXIT_MARK: &str = "[tern exit status ";

#[cfg(unix)]
impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
    }
}

/// Start `tern chat ARGS` in a fresh tmux pane (None when tmux is missing).
#[cfg(unix)]
fn tmux_chat(args: &[&str]) -> Option<(Tmux, PathBuf)> {
    if Command::new("tmux").arg("-V").output().is_err() {
        if std::env::var_os("TERN_REQUIRE_TMUX").is_some() {
            panic!("tmux is required (TERN_REQUIRE_TMUX is set) but not installed");
        }
        eprintln!("skipping the pseudo-terminal test: tmux is not installed");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("tmux.conf");
    std::fs::write(
        &conf,
        "set -g remain-on-exit on\nset -g history-limit 10000\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let socket = dir.path().join("tmux.sock");
    let t = Tmux { socket, _dir: dir };
    let mut a: Vec<String> = vec![
        "-f".into(),
        conf.to_string_lossy().into_owned(),
        "new-session".into(),
        "-d".into(),
        "-s".into(),
        "chat".into(),
        "-x".into(),
        "160".into(),
        "-y".into(),
        "50".into(),
        // A shell that reports the exit status; it lets Ctrl-C through to
        // tern (a caught trap resets to the default in the child).
        "sh".into(),
        "-c".into(),
        format!("trap : INT; \"$@\"; echo \"{EXIT_MARK}$?]\""),
        "sh".into(),
        "env".into(),
        format!("XDG_DATA_HOME={}", data.display()),
        env!("CARGO_BIN_EXE_tern").into(),
        "chat".into(),
    ];
    a.extend(args.iter().map(|s| s.to_string()));
    let out = t.cmd().args(&a).output().unwrap();
    assert!(
        out.status.success(),
        "tmux: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some((t, data))
}

/// The lines after the last line that reads exactly `line`, without the
/// blank rows below the cursor.
#[cfg(unix)]
fn after<'a>(screen: &'a str, line: &str) -> Option<Vec<&'a str>> {
    let mut lines: Vec<&str> = screen.lines().collect();
    while lines.last().is_some_and(|l| l.trim().is_empty()) {
        lines.pop();
    }
    let i = lines.iter().rposition(|l| l.trim_end() == line)?;
    Some(lines[i + 1..].to_vec())
}

#[cfg(unix)]
#[test]
fn interactive_session_in_a_pseudo_terminal() {
    let Some((t, data)) = tmux_chat(&["-n", "8", "-c", "8192", "--temp", "0", "-t", "2"]) else {
        return;
    };
    t.wait_for("the banner and prompt", |s| {
        s.contains("Ctrl-D exits") && s.trim_end().ends_with('>')
    });

    // A short reply: streamed text, then the prompt again.
    t.type_line("Hello there");
    let s = t.wait_for("the reply and the prompt", |s| {
        after(s, "> Hello there").is_some_and(|rest| {
            rest.len() >= 2
                && rest.last().unwrap().trim_end() == ">"
                && rest[..rest.len() - 1].iter().any(|l| !l.trim().is_empty())
        })
    });
    assert!(!s.contains("tern: error"), "{s}");

    // A long reply, stopped with Ctrl-C once it is streaming.
    t.type_line("/set n_predict -1");
    t.wait_for("the /set note", |s| s.contains("[n_predict = -1]"));
    t.type_line("Tell me a long story");
    t.wait_for("streamed output", |s| {
        after(s, "> Tell me a long story")
            .is_some_and(|rest| rest.iter().map(|l| l.trim().len()).sum::<usize>() >= 40)
    });
    t.keys(&["C-c"]);
    t.wait_for("the interruption and the prompt", |s| {
        after(s, "[interrupted]").is_some_and(|rest| rest.iter().any(|l| l.trim_end() == ">"))
    });

    // Ctrl-D leaves cleanly, with the speed lines and the history saved.
    t.keys(&["C-d"]);
    assert_eq!(t.wait_exit(), 0, "{}", t.screen());
    let s = t.screen();
    assert!(s.contains("tern: 2 replies"), "{s}");
    assert!(s.contains("eval time ="), "{s}");
    let hist = std::fs::read_to_string(data.join("tern/chat_history.txt")).unwrap();
    assert!(
        hist.contains("Hello there") && hist.contains("Tell me a long story"),
        "{hist}"
    );
}

#[cfg(unix)]
#[test]
fn ctrl_c_twice_at_the_prompt_exits() {
    let Some((t, _)) = tmux_chat(&["-m", fixture().to_str().unwrap(), "--no-history", "-t", "2"])
    else {
        return;
    };
    t.wait_for("the prompt", |s| {
        s.contains("Ctrl-D exits") && s.trim_end().ends_with('>')
    });
    t.keys(&["C-c"]);
    t.wait_for("the hint", |s| {
        s.contains("(Ctrl-C again or Ctrl-D to exit)")
    });
    t.keys(&["C-c"]);
    assert_eq!(t.wait_exit(), 0, "{}", t.screen());
}

#[test]
fn type_ahead_is_kept() {
    let Some((t, _)) = tmux_chat(&[
        "--no-history",
        "-n",
        "4",
        "-c",
        "4096",
        "--temp",
        "0",
        "-t",
        "2",
    ]) else {
        return;
    };
    t.wait_for("the prompt", |s| {
        s.contains("Ctrl-D exits") && s.trim_end().ends_with('>')
    });
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("t.json");

    // Two lines in one send-keys: the second one is not lost.
    t.keys(&["Good morrow", "Enter", "/stats", "Enter"]);
    t.wait_for("the typed-ahead /stats", |s| {
        after(s, "> /stats").is_some_and(|rest| rest.iter().any(|l| l.starts_with("replies: 1;")))
    });

    // A """ block typed in one go, then /save.
    let save = format!("/save {}", saved.display());
    t.keys(&[
        "\"\"\"", "Enter", "one", "Enter", "two", "Enter", "\"\"\"", "Enter", &save, "Enter",
    ]);
    t.wait_for("the transcript", |s| s.contains("[saved 4 messages"));
    let c = transcript(&saved);
    assert_eq!(c.turns[2].content, "one\ntwo");

    // Lines typed while a long reply streams are kept for the next prompts.
    t.type_line("/set n_predict 2000");
    t.wait_for("the /set note", |s| s.contains("[n_predict = 2000]"));
    t.type_line("Tell me a long story");
    t.wait_for("streamed output", |s| {
        after(s, "> Tell me a long story")
            .is_some_and(|rest| rest.iter().map(|l| l.trim().len()).sum::<usize>() >= 40)
    });
    t.keys(&["/stats", "Enter", "/exit", "Enter"]);
    assert_eq!(t.wait_exit(), 0, "{}", t.screen());
    let s = t.screen();
    let rest = after(&s, "> /stats").unwrap_or_else(|| panic!("no /stats prompt:\n{s}"));
    assert!(rest.iter().any(|l| l.starts_with("replies: 3;")), "{s}");
    assert!(s.contains("> /exit"), "{s}");
}
