//! `tern chat`: multi-turn chat in the terminal (line editing, history,
//! streaming, Ctrl-C to stop a reply), or one message per line when stdin
//! is not a terminal, so it can be scripted.

use super::run::{context_size, lower_c, n_predict_value, shown_tokens, warn_past_training, Args};
use super::{set_threads, DEFAULT_MODEL_NAME};
use crate::chat::{Conversation, Session};
use crate::gguf::writer::AtomicFile;
use crate::model::generate::{ReversePrompts, StopReason};
use crate::model::sampling::SETTINGS;
use anyhow::{anyhow, bail, Context as _, Result};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

const PROMPT: &str = "> ";
const CONTINUE: &str = "... ";
const TRIPLE: &str = "\"\"\"";

const HELP: &str = "\
Type a message and press Enter. End a line with \\ to continue it on the next
line, or put the message between lines of \"\"\" (a message that starts with /
is sent as is when written //...).
Commands:
  /help                 this text
  /reset                clear the history (the system prompt stays) and the cache
  /system [TEXT]        set the system prompt (without TEXT: show it)
  /set [NAME VALUE]     temp, top_k, top_p, min_p, repeat_penalty,
                        repeat_last_n, frequency_penalty, presence_penalty,
                        seed (-1: random) or n_predict (-1: no limit);
                        without arguments: show them
  /stats                speed of the last reply and of all replies
  /save FILE            write the transcript as JSON messages
  /load FILE            read a transcript written by /save
  /exit                 leave (also Ctrl-D, or Ctrl-C twice at the prompt)
Ctrl-C during a reply stops it; the partial reply stays in the history.";

/// Set while a reply is being generated; Ctrl-C then only stops the reply.
static GENERATING: AtomicBool = AtomicBool::new(false);
/// Set by Ctrl-C during generation; checked after every token.
static STOP: AtomicBool = AtomicBool::new(false);

/// A chat (`tern chat`, `tern run -cnv`): the system prompt from -sys, or
/// else from -p/-f as llama-cli's conversation mode takes it.
pub fn run(a: Args) -> Result<()> {
    let system = match (a.system_text()?, a.prompt_text()?) {
        (Some(_), Some(_)) => bail!(
            "in a conversation -p/-f is the system prompt: give it once, with -p or with -sys"
        ),
        (s, p) => s.or(p),
    };
    let n_predict = reply_limit(a.n_predict(256)?)?;
    let params = a.sample.params()?;
    let kv_f32 = a.kv_f32()?;
    let n_batch = a.n_batch()?;
    if a.no_display_prompt || a.ignore_eos {
        a.note("--no-display-prompt and --ignore-eos have no effect in a chat");
    }
    let template = a.template.source()?;
    let threads = set_threads(a.model.threads)?;
    let mut m = a.model.load()?;
    if let Some(t) = template {
        super::use_template(&mut m, t);
    }
    let n_ctx = context_size(&m, a.ctx)?;
    let mut s = Session::new(&m, n_ctx, kv_f32, params, system).map_err(lower_c)?;
    warn_past_training(&m, n_ctx, "tern chat");
    s.n_predict = n_predict;
    s.set_batch(n_batch);
    for w in &s.warnings {
        eprintln!("tern: warning: {}", w);
    }

    let interactive = std::io::stdin().is_terminal();
    let ui = Ui {
        interactive,
        verbose: a.verbose,
        reverse: a.reverse_prompts(),
    };
    install_ctrlc(!interactive);
    let mut reader: Box<dyn Reader> = if interactive {
        let name = match &a.model.model {
            Some(p) => p.file_name().map_or_else(
                || p.display().to_string(),
                |f| f.to_string_lossy().into_owned(),
            ),
            None => DEFAULT_MODEL_NAME.to_string(),
        };
        ui.info(&format!(
            "tern chat: {}, context {} tokens, {} thread{}, kernel {}.\n\
             /help for commands; Ctrl-C stops a reply; Ctrl-D exits.",
            name,
            n_ctx,
            threads,
            if threads == 1 { "" } else { "s" },
            m.kernel.variant()
        ));
        Box::new(Terminal::new(!a.no_history)?)
    } else {
        Box::new(Piped {
            lines: std::io::stdin().lock().lines(),
        })
    };

    let r = chat_loop(&mut s, reader.as_mut(), &ui);
    reader.close();
    if s.replies > 0 && !a.log_disable && !a.no_perf {
        eprintln!(
            "tern: {} {}, seed {}\n{}",
            s.replies,
            if s.replies == 1 { "reply" } else { "replies" },
            s.sampler.params.seed,
            s.total.report()
        );
    }
    r
}

/// A chat reply needs at least one token.
fn reply_limit(n: Option<usize>) -> Result<Option<usize>> {
    if n == Some(0) {
        bail!("-n 0: a reply needs at least one token (-1: no limit)");
    }
    Ok(n)
}

fn install_ctrlc(exit_when_idle: bool) {
    let r = ctrlc::set_handler(move || {
        if GENERATING.load(Ordering::SeqCst) {
            STOP.store(true, Ordering::SeqCst);
        } else if exit_when_idle {
            // Piped mode, blocked on reading stdin: leave like an unhandled SIGINT.
            std::process::exit(130);
        }
    });
    if let Err(e) = r {
        eprintln!(
            "tern: warning: cannot catch Ctrl-C ({}); it will end tern",
            e
        );
    }
}

/// Where notes go: the terminal's stdout when interactive, stderr when piped
/// (so that stdout carries the replies only).
struct Ui {
    interactive: bool,
    /// `-v`: each turn's prompt tokens on stderr.
    verbose: bool,
    /// `-r`: reverse prompts that end a reply (escapes processed).
    reverse: ReversePrompts,
}

impl Ui {
    fn info(&self, s: &str) {
        if self.interactive {
            println!("{}", s);
        } else {
            let _ = std::io::stdout().flush();
            eprintln!("{}", s);
        }
    }
}

enum Input {
    Line(String),
    Interrupted,
    Eof,
}

trait Reader {
    fn read(&mut self, prompt: &str) -> Result<Input>;
    /// Record a message in the line-editing history.
    fn remember(&mut self, _msg: &str) {}
    /// Save what must outlive the session.
    fn close(&mut self) {}
}

struct Piped {
    lines: std::io::Lines<std::io::StdinLock<'static>>,
}

impl Reader for Piped {
    fn read(&mut self, _prompt: &str) -> Result<Input> {
        match self.lines.next() {
            None => Ok(Input::Eof),
            Some(Ok(l)) => Ok(Input::Line(l.strip_suffix('\r').unwrap_or(&l).to_string())),
            Some(Err(e)) => Err(e).context("cannot read stdin"),
        }
    }
}

struct Terminal {
    ed: rustyline::DefaultEditor,
    history: Option<PathBuf>,
}

impl Terminal {
    fn new(use_history: bool) -> Result<Terminal> {
        let cfg = rustyline::Config::builder()
            .auto_add_history(false)
            .max_history_size(1000)
            .map_err(|e| anyhow!("line editor: {}", e))?
            .build();
        let mut ed = rustyline::DefaultEditor::with_config(cfg)
            .map_err(|e| anyhow!("cannot start the line editor: {}", e))?;
        let history = if use_history { history_file() } else { None };
        if let Some(h) = &history {
            if h.exists() {
                if let Err(e) = ed.load_history(h) {
                    eprintln!("tern: warning: cannot read {}: {}", h.display(), e);
                }
            }
        }
        Ok(Terminal { ed, history })
    }
}

/// `<data dir>/tern/chat_history.txt` (e.g. ~/.local/share/tern on Linux).
fn history_file() -> Option<PathBuf> {
    let dir = dirs::data_dir()?.join("tern");
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!(
            "tern: warning: cannot create {} ({}); no chat history",
            dir.display(),
            e
        );
        return None;
    }
    Some(dir.join("chat_history.txt"))
}

impl Reader for Terminal {
    fn read(&mut self, prompt: &str) -> Result<Input> {
        use rustyline::error::ReadlineError;
        match self.ed.readline(prompt) {
            Ok(l) => Ok(Input::Line(l)),
            Err(ReadlineError::Interrupted) => Ok(Input::Interrupted),
            Err(ReadlineError::Eof) => Ok(Input::Eof),
            Err(e) => Err(anyhow!("cannot read the terminal: {}", e)),
        }
    }
    fn remember(&mut self, msg: &str) {
        let _ = self.ed.add_history_entry(msg);
    }
    fn close(&mut self) {
        if let Some(h) = &self.history {
            if let Err(e) = self.ed.save_history(h) {
                eprintln!("tern: warning: cannot write {}: {}", h.display(), e);
            }
        }
    }
}

/// One message: a line, lines joined by a trailing `\`, or a `"""` block.
fn read_message(r: &mut dyn Reader) -> Result<Input> {
    let first = match r.read(PROMPT)? {
        Input::Line(l) => l,
        other => return Ok(other),
    };
    if let Some(rest) = first.trim_start().strip_prefix(TRIPLE) {
        let rest = rest.trim_end();
        if let Some(one) = rest.strip_suffix(TRIPLE) {
            return Ok(Input::Line(one.to_string()));
        }
        let mut lines = Vec::new();
        if !rest.is_empty() {
            lines.push(rest.to_string());
        }
        loop {
            match r.read(CONTINUE)? {
                Input::Line(l) => match l.trim_end().strip_suffix(TRIPLE) {
                    Some(last) => {
                        if !last.is_empty() {
                            lines.push(last.to_string());
                        }
                        break;
                    }
                    None => lines.push(l),
                },
                Input::Interrupted => return Ok(Input::Interrupted),
                Input::Eof => break,
            }
        }
        return Ok(Input::Line(lines.join("\n")));
    }
    let mut msg = String::new();
    let mut line = first;
    while let Some(head) = line.strip_suffix('\\') {
        msg.push_str(head);
        msg.push('\n');
        line = match r.read(CONTINUE)? {
            Input::Line(l) => l,
            Input::Interrupted => return Ok(Input::Interrupted),
            Input::Eof => String::new(),
        };
    }
    msg.push_str(&line);
    Ok(Input::Line(msg))
}

enum Flow {
    Continue,
    Exit,
}

fn chat_loop(s: &mut Session, r: &mut dyn Reader, ui: &Ui) -> Result<()> {
    let mut interrupts = 0;
    loop {
        let msg = match read_message(r)? {
            Input::Eof => return Ok(()),
            Input::Interrupted => {
                interrupts += 1;
                if interrupts >= 2 {
                    return Ok(());
                }
                ui.info("(Ctrl-C again or Ctrl-D to exit)");
                continue;
            }
            Input::Line(l) => {
                interrupts = 0;
                l
            }
        };
        let msg = msg.trim();
        if msg.is_empty() {
            continue;
        }
        r.remember(msg);
        let result = match msg.strip_prefix('/') {
            Some(cmd) if !cmd.starts_with('/') => command(s, cmd, ui),
            Some(escaped) => turn(s, escaped, ui).map(|_| Flow::Continue),
            None => turn(s, msg, ui).map(|_| Flow::Continue),
        };
        match result {
            Ok(Flow::Continue) => {}
            Ok(Flow::Exit) => return Ok(()),
            // At the terminal a mistake costs one line; a script stops.
            Err(e) if ui.interactive => eprintln!("tern: error: {:#}", e),
            Err(e) => return Err(e),
        }
    }
}

/// One exchange: the user's message in, the streamed reply out.
fn turn(s: &mut Session, text: &str, ui: &Ui) -> Result<()> {
    let prep = s.prepare(text)?;
    if ui.verbose {
        eprintln!(
            "tern: prompt: {} tokens, {} reused from the cache, evaluating [{}]",
            prep.tokens.len(),
            prep.reused,
            shown_tokens(&s.model.tokenizer, &prep.tokens[prep.reused..])
        );
    }
    if prep.dropped_turns > 0 {
        ui.info(&format!(
            "[context full: dropped the {} oldest turn{}, re-reading {} tokens]",
            prep.dropped_turns,
            if prep.dropped_turns == 1 { "" } else { "s" },
            prep.tokens.len() - prep.reused
        ));
    }
    let mut out = std::io::stdout().lock();
    let mut write_err = None;
    let mut shown = Trimmed::default();
    let mut reverse = ui.reverse.clone();
    let mut reversed = false;
    STOP.store(false, Ordering::SeqCst);
    GENERATING.store(true, Ordering::SeqCst);
    let r = s.generate(&prep, |piece| {
        let text = shown.push(piece);
        if let Err(e) = out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
            write_err = Some(e);
            return false;
        }
        // A reverse prompt ends the reply where it appears (the history
        // keeps it, as llama-cli's does).
        reversed = reversed || reverse.push(piece);
        !reversed && !STOP.load(Ordering::SeqCst)
    });
    GENERATING.store(false, Ordering::SeqCst);
    let reply = r?;
    if let Some(e) = write_err {
        return Err(e).context("cannot write the reply");
    }
    writeln!(out).context("cannot write the reply")?;
    out.flush().context("cannot write the reply")?;
    drop(out);
    match reply.stats.stop {
        StopReason::Interrupted if reversed => {}
        StopReason::Interrupted => ui.info("[interrupted]"),
        StopReason::ContextFull => {
            ui.info("[the context is full: reply cut; older turns go next time]")
        }
        StopReason::Length | StopReason::EndOfGeneration => {}
    }
    Ok(())
}

/// The reply as shown: without the whitespace it starts or ends with (the
/// history keeps the text exactly as generated). Trailing whitespace is held
/// back until more text follows it.
#[derive(Default)]
struct Trimmed {
    started: bool,
    pending: String,
}

impl Trimmed {
    /// The text to print now for the next piece of the reply.
    fn push(&mut self, piece: &str) -> String {
        let end = piece.trim_end().len();
        if end == 0 {
            if self.started {
                self.pending.push_str(piece);
            }
            return String::new();
        }
        let mut out = std::mem::take(&mut self.pending);
        let body = &piece[..end];
        out.push_str(if self.started {
            body
        } else {
            body.trim_start()
        });
        self.started = true;
        self.pending.push_str(&piece[end..]);
        out
    }
}

fn command(s: &mut Session, line: &str, ui: &Ui) -> Result<Flow> {
    let (name, arg) = match line.split_once(char::is_whitespace) {
        Some((n, a)) => (n, a.trim()),
        None => (line, ""),
    };
    match name {
        "help" | "?" => ui.info(HELP),
        "exit" | "quit" => return Ok(Flow::Exit),
        "reset" => {
            s.reset();
            ui.info("[history and cache cleared]");
        }
        "system" => {
            if arg.is_empty() {
                match &s.conv.system {
                    Some(t) => ui.info(&format!("system prompt: {}", t)),
                    None => ui.info("(no system prompt)"),
                }
            } else {
                s.conv.system = Some(arg.to_string());
                ui.info("[system prompt set]");
            }
        }
        "set" => set(s, arg, ui)?,
        "stats" => ui.info(&stats(s)),
        "save" => {
            if arg.is_empty() {
                bail!("usage: /save FILE");
            }
            let path = PathBuf::from(arg);
            let mut f = AtomicFile::create(&path, true)?;
            let json = s.conv.to_json();
            f.file()
                .write_all(format!("{}\n", json).as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
            f.commit()?;
            ui.info(&format!(
                "[saved {} messages to {}]",
                s.conv.messages().len(),
                path.display()
            ));
        }
        "load" => {
            if arg.is_empty() {
                bail!("usage: /load FILE");
            }
            let text =
                std::fs::read_to_string(arg).with_context(|| format!("cannot read {}", arg))?;
            let mut conv = Conversation::from_json(&text).with_context(|| arg.to_string())?;
            if conv.system.is_none() {
                conv.system = s.conv.system.clone();
            }
            let n = conv.messages().len();
            s.conv = conv;
            ui.info(&format!("[loaded {} messages from {}]", n, arg));
        }
        "" => bail!("empty command (try /help)"),
        other => bail!("unknown command /{} (try /help)", other),
    }
    Ok(Flow::Continue)
}

fn set(s: &mut Session, arg: &str, ui: &Ui) -> Result<()> {
    let words: Vec<&str> = arg.split_whitespace().collect();
    let (key, val) = match words[..] {
        [] => {
            ui.info(&settings(s));
            return Ok(());
        }
        [k, v] => (k.replace('-', "_"), v),
        _ => bail!(
            "usage: /set NAME VALUE ({}, n_predict)",
            SETTINGS.join(", ")
        ),
    };
    let shown = if key == "n_predict" {
        let n = val
            .parse::<i64>()
            .map_err(|_| anyhow!("/set n_predict {}: is not a whole number", val))?;
        s.n_predict = n_predict_value(n)
            .and_then(reply_limit)
            .map_err(|e| anyhow!("/set {:#}", e))?;
        val.to_string()
    } else {
        // The same check as the command-line flags (SamplingParams::set).
        let mut p = s.sampler.params.clone();
        p.set(&key, val).map_err(|e| {
            if SETTINGS.contains(&key.as_str()) {
                anyhow!("/set {} {}: {}", key, val, e.problem)
            } else {
                anyhow!(
                    "/set: unknown setting {} ({}, n_predict)",
                    key,
                    SETTINGS.join(", ")
                )
            }
        })?;
        let seed = p.seed;
        s.sampler.params = p;
        if key == "seed" {
            s.sampler.reseed(seed);
        }
        s.sampler.params.get(&key).unwrap_or_default()
    };
    ui.info(&format!("[{} = {}]", key, shown));
    Ok(())
}

fn settings(s: &Session) -> String {
    let p = &s.sampler.params;
    let mut parts: Vec<String> = SETTINGS
        .iter()
        .map(|k| format!("{} {}", k, p.get(k).unwrap_or_default()))
        .collect();
    parts.push(format!(
        "n_predict {}",
        s.n_predict.map_or("-1".to_string(), |n| n.to_string())
    ));
    parts.join(", ")
}

fn stats(s: &Session) -> String {
    let mut t = format!(
        "replies: {}; context: {}/{} tokens cached; kernel {}",
        s.replies,
        s.n_cached(),
        s.n_ctx(),
        s.model.kernel.variant()
    );
    if let Some(last) = &s.last {
        t.push_str(&format!("\nlast reply:\n{}", last.report()));
        t.push_str(&format!("\nall replies:\n{}", s.total.report()));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimmed_reply() {
        let mut t = Trimmed::default();
        let pieces = [" ", "\n", " Hello", ",", " ", "\n", "world", "\n\n", " "];
        let shown: String = pieces.iter().map(|p| t.push(p)).collect();
        assert_eq!(shown, "Hello, \nworld");
    }

    struct Script(Vec<Input>);
    impl Reader for Script {
        fn read(&mut self, _p: &str) -> Result<Input> {
            Ok(if self.0.is_empty() {
                Input::Eof
            } else {
                self.0.remove(0)
            })
        }
    }

    fn lines(a: &[&str]) -> Script {
        Script(a.iter().map(|s| Input::Line(s.to_string())).collect())
    }

    fn next(r: &mut Script) -> String {
        match read_message(r).unwrap() {
            Input::Line(l) => l,
            _ => panic!("expected a message"),
        }
    }

    #[test]
    fn multi_line_input() {
        let mut r = lines(&[
            "one \\",
            "two\\",
            "three",
            "\"\"\"",
            "a",
            "",
            "b\"\"\"",
            "\"\"\"x\"\"\"",
            "\"\"\"head",
            "tail",
            "\"\"\"",
            "plain",
        ]);
        assert_eq!(next(&mut r), "one \ntwo\nthree");
        assert_eq!(next(&mut r), "a\n\nb");
        assert_eq!(next(&mut r), "x");
        assert_eq!(next(&mut r), "head\ntail");
        assert_eq!(next(&mut r), "plain");
        assert!(matches!(read_message(&mut r).unwrap(), Input::Eof));
        let mut r = Script(vec![Input::Line("a\\".into()), Input::Interrupted]);
        assert!(matches!(read_message(&mut r).unwrap(), Input::Interrupted));
    }
}
