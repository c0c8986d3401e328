//! llama.cpp's command lines, accepted as typed.
//!
//! llama.cpp matches every argument as a whole word, so its options include
//! multi-letter single-dash names (`-ngl`, `-cnv`, `-temp`, `-sys`, `-fa`,
//! `-ctk`, …) that clap would split into clusters of short flags. Before clap
//! sees the command line, [`translate`] rewrites it with the one table below
//! ([`FLAGS`]): an option tern has under another name is renamed, an option
//! with no meaning on the CPU is accepted and dropped (with a one-line note
//! where someone could expect an effect), and every option that takes a value
//! is rewritten as `--long=VALUE`, so that values starting with `-` (`-n -1`,
//! `--seed -1`, `--temp -1`, `-p "-x"`) are values, as in llama.cpp. A
//! single-dash word that is neither in the table nor a short option with a
//! numeric value attached (`-t2`) is an error that names it exactly.
//!
//! The README's command table lists the same flags; keep the two together.

use clap::{Arg, Command};
use std::ffi::OsString;

/// What tern does with a llama.cpp option.
enum Action {
    /// The same as tern's `--NAME` (where the subcommand has it).
    Rename(&'static str),
    /// Accepted and ignored where a model is loaded. `note`: the one line
    /// printed when it is used (None: silently).
    Ignore {
        value: Value,
        note: Option<&'static str>,
    },
}

/// The value an ignored option takes.
enum Value {
    None,
    Required,
    /// Taken when the next word passes the check (e.g. `-fa` alone, or `-fa on`).
    Optional(fn(&str) -> bool),
}

/// One llama.cpp option: every spelling, and what tern does with it.
struct Flag {
    names: &'static [&'static str],
    action: Action,
}

const CPU: Option<&str> = Some("tern runs on the CPU");

fn on_off(v: &str) -> bool {
    matches!(v, "on" | "off" | "auto")
        || (!v.is_empty() && v.split(',').all(|x| x == "0" || x == "1"))
}

/// The translation table (see the module documentation).
const FLAGS: &[Flag] = &[
    // Options tern has under another name.
    Flag {
        names: &["-cnv", "--conversation"],
        action: Action::Rename("conversation"),
    },
    Flag {
        names: &["-no-cnv", "--no-conversation"],
        action: Action::Rename("no-conversation"),
    },
    Flag {
        names: &["-if", "--interactive-first"],
        action: Action::Rename("interactive"),
    },
    Flag {
        names: &["-sys", "--system-prompt"],
        action: Action::Rename("system"),
    },
    Flag {
        names: &["-temp"],
        action: Action::Rename("temp"),
    },
    Flag {
        names: &["-ub"],
        action: Action::Rename("ubatch-size"),
    },
    Flag {
        names: &["-ctk"],
        action: Action::Rename("cache-type-k"),
    },
    Flag {
        names: &["-ctv"],
        action: Action::Rename("cache-type-v"),
    },
    Flag {
        names: &["-pg"],
        action: Action::Rename("pg"),
    },
    // GPU-only options: accepted, with a note.
    Flag {
        names: &["-ngl", "--gpu-layers", "--n-gpu-layers"],
        action: Action::Ignore {
            value: Value::Required,
            note: CPU,
        },
    },
    Flag {
        names: &["-mg", "--main-gpu"],
        action: Action::Ignore {
            value: Value::Required,
            note: CPU,
        },
    },
    Flag {
        names: &["-sm", "--split-mode"],
        action: Action::Ignore {
            value: Value::Required,
            note: CPU,
        },
    },
    Flag {
        names: &["-ts", "--tensor-split"],
        action: Action::Ignore {
            value: Value::Required,
            note: CPU,
        },
    },
    Flag {
        names: &["-dev", "--device"],
        action: Action::Ignore {
            value: Value::Required,
            note: CPU,
        },
    },
    Flag {
        names: &["-nkvo", "--no-kv-offload"],
        action: Action::Ignore {
            value: Value::None,
            note: CPU,
        },
    },
    // Options with nothing to do in tern.
    Flag {
        names: &["-fa", "--flash-attn"],
        action: Action::Ignore {
            value: Value::Optional(on_off),
            note: Some("tern's CPU attention is already one fused pass"),
        },
    },
    Flag {
        names: &["-tb", "--threads-batch"],
        action: Action::Ignore {
            value: Value::Required,
            note: Some("tern evaluates prompts with the -t threads"),
        },
    },
    Flag {
        names: &["--no-warmup"],
        action: Action::Ignore {
            value: Value::None,
            note: None,
        },
    },
    Flag {
        names: &["-co", "--color"],
        action: Action::Ignore {
            value: Value::Optional(on_off),
            note: None,
        },
    },
    Flag {
        names: &["--mlock"],
        action: Action::Ignore {
            value: Value::None,
            note: None,
        },
    },
    Flag {
        names: &["-mli", "--multiline-input"],
        action: Action::Ignore {
            value: Value::None,
            note: None,
        },
    },
    Flag {
        names: &["--numa"],
        action: Action::Ignore {
            value: Value::Required,
            note: None,
        },
    },
    // What tern always does: render the model's chat template with a Jinja
    // engine (minijinja); serve /metrics.
    Flag {
        names: &["--jinja"],
        action: Action::Ignore {
            value: Value::None,
            note: None,
        },
    },
    Flag {
        names: &["--metrics"],
        action: Action::Ignore {
            value: Value::None,
            note: None,
        },
    },
    // tern serve has no web UI to turn off.
    Flag {
        names: &["--no-webui"],
        action: Action::Ignore {
            value: Value::None,
            note: None,
        },
    },
];

/// The command line rewritten for clap, and notes for stderr.
#[derive(Debug, Default, PartialEq)]
pub struct Translated {
    pub args: Vec<OsString>,
    pub notes: Vec<String>,
}

fn lookup(name: &str) -> Option<&'static Flag> {
    FLAGS.iter().find(|f| f.names.contains(&name))
}

fn long_arg<'c>(sub: &'c Command, long: &str) -> Option<&'c Arg> {
    sub.get_arguments().find(|a| {
        a.get_long() == Some(long) || a.get_all_aliases().is_some_and(|al| al.contains(&long))
    })
}

fn short_arg(sub: &Command, c: char) -> Option<&Arg> {
    sub.get_arguments().find(|a| {
        a.get_short() == Some(c) || a.get_all_short_aliases().is_some_and(|al| al.contains(&c))
    })
}

fn takes_value(a: &Arg) -> bool {
    a.get_action().takes_values()
}

/// `--LONG` of a clap argument (or `-S` when it has only a short name).
fn spelled(a: &Arg) -> String {
    match (a.get_long(), a.get_short()) {
        (Some(l), _) => format!("--{}", l),
        (None, Some(s)) => format!("-{}", s),
        (None, None) => a.get_id().to_string(),
    }
}

/// Rewrite `args` (program name first) for `cli`, whose subcommands are
/// looked up to know which options take values. The error names the word
/// as typed.
pub fn translate(cli: &Command, args: Vec<OsString>) -> Result<Translated, String> {
    let mut out = Translated::default();
    let mut it = args.into_iter();
    out.args.extend(it.next());
    let rest: Vec<OsString> = it.collect();
    let Some(sub) = rest
        .first()
        .and_then(|s| s.to_str())
        .and_then(|name| cli.find_subcommand(name))
    else {
        // No subcommand first: clap reports what is wrong (or prints help).
        out.args.extend(rest);
        return Ok(out);
    };
    let loads_model = long_arg(sub, "model").is_some();
    out.args.push(rest[0].clone());
    let mut i = 1;
    // Push `--LONG=VALUE` for an option that takes a value, taking the next
    // word when the value is not attached.
    let with_value = |out: &mut Translated,
                      i: &mut usize,
                      typed: &str,
                      a: &Arg,
                      attached: Option<&str>|
     -> Result<(), String> {
        let value = match attached {
            Some(v) => OsString::from(v),
            None => {
                *i += 1;
                rest.get(*i)
                    .cloned()
                    .ok_or_else(|| format!("{} needs a value", typed))?
            }
        };
        let mut s = OsString::from(format!("{}=", spelled(a)));
        s.push(value);
        out.args.push(s);
        Ok(())
    };
    while i < rest.len() {
        let word = &rest[i];
        let Some(w) = word.to_str() else {
            out.args.push(word.clone());
            i += 1;
            continue;
        };
        if w == "--" {
            out.args.extend(rest[i..].iter().cloned());
            break;
        }
        if !w.starts_with('-') || w == "-" {
            out.args.push(word.clone());
            i += 1;
            continue;
        }
        let (name, attached) = match w.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (w, None),
        };
        if let Some(flag) = lookup(name) {
            match &flag.action {
                Action::Rename(long) => {
                    let a = long_arg(sub, long).ok_or_else(|| {
                        format!("{} is not an option of `tern {}`", name, sub.get_name())
                    })?;
                    if takes_value(a) {
                        with_value(&mut out, &mut i, name, a, attached)?;
                    } else if attached.is_some() {
                        return Err(format!("{} takes no value", name));
                    } else {
                        out.args.push(format!("--{}", long).into());
                    }
                }
                Action::Ignore { value, note } => {
                    if !loads_model {
                        return Err(format!(
                            "{} is not an option of `tern {}`",
                            name,
                            sub.get_name()
                        ));
                    }
                    let mut shown = name.to_string();
                    match (value, attached) {
                        (_, Some(v)) => shown = format!("{} {}", name, v),
                        (Value::None, None) => {}
                        (Value::Required, None) => {
                            i += 1;
                            let v = rest
                                .get(i)
                                .ok_or_else(|| format!("{} needs a value", name))?;
                            shown = format!("{} {}", name, v.to_string_lossy());
                        }
                        (Value::Optional(ok), None) => {
                            if let Some(v) = rest.get(i + 1).and_then(|v| v.to_str()) {
                                if ok(v) {
                                    i += 1;
                                    shown = format!("{} {}", name, v);
                                }
                            }
                        }
                    }
                    if let Some(why) = note {
                        out.notes.push(format!("{} ignored: {}", shown, why));
                    }
                }
            }
            i += 1;
            continue;
        }
        if let Some(long) = name.strip_prefix("--") {
            // clap names an unknown long option as typed; only values move.
            match long_arg(sub, long) {
                Some(a) if takes_value(a) => with_value(&mut out, &mut i, name, a, attached)?,
                _ => out.args.push(word.clone()),
            }
            i += 1;
            continue;
        }
        // A single dash: `-x`, `-x VALUE`, `-xVALUE` with a numeric value, `-x=VALUE`.
        let mut chars = w[1..].chars();
        let c = chars.next().unwrap_or('-');
        let tail = chars.as_str();
        let arg = short_arg(sub, c);
        match arg {
            Some(a) if takes_value(a) => {
                let attached = if tail.is_empty() {
                    None
                } else if let Some(v) = tail.strip_prefix('=') {
                    Some(v)
                } else if tail.starts_with(|ch: char| ch.is_ascii_digit())
                    || (tail.starts_with('-')
                        && tail[1..].starts_with(|ch: char| ch.is_ascii_digit()))
                {
                    Some(tail)
                } else {
                    return Err(unknown(w, sub));
                };
                with_value(&mut out, &mut i, &w[..2], a, attached)?;
            }
            Some(_) if tail.is_empty() => out.args.push(word.clone()),
            None if tail.is_empty() => out.args.push(word.clone()),
            _ => return Err(unknown(w, sub)),
        }
        i += 1;
    }
    Ok(out)
}

fn unknown(w: &str, sub: &Command) -> String {
    format!(
        "unknown option '{}' for `tern {}` (see `tern {} --help`; the llama.cpp options tern accepts are listed in the README)",
        w,
        sub.get_name(),
        sub.get_name()
    )
}

/// llama.cpp's escape processing of prompts (`-e`, on by default): `\n`,
/// `\r`, `\t`, `\'`, `\"`, `\\` and `\xHH` (two hex digits); any other
/// backslash is kept as typed.
pub fn process_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut bytes: Vec<u8> = Vec::new();
    let mut it = s.chars().peekable();
    // Bytes from \xHH may form multi-byte UTF-8 sequences: collect them and
    // decode when plain text resumes.
    let flush = |bytes: &mut Vec<u8>, out: &mut String| {
        if !bytes.is_empty() {
            out.push_str(&String::from_utf8_lossy(bytes));
            bytes.clear();
        }
    };
    while let Some(c) = it.next() {
        if c != '\\' {
            flush(&mut bytes, &mut out);
            out.push(c);
            continue;
        }
        let Some(&n) = it.peek() else {
            flush(&mut bytes, &mut out);
            out.push('\\');
            break;
        };
        let simple = match n {
            'n' => Some('\n'),
            'r' => Some('\r'),
            't' => Some('\t'),
            '\'' | '"' | '\\' => Some(n),
            _ => None,
        };
        if let Some(x) = simple {
            it.next();
            flush(&mut bytes, &mut out);
            out.push(x);
            continue;
        }
        if n == 'x' {
            let mut look = it.clone();
            look.next();
            let hex: String = look.clone().take(2).collect();
            if hex.len() == 2 && hex.chars().all(|h| h.is_ascii_hexdigit()) {
                if let Ok(b) = u8::from_str_radix(&hex, 16) {
                    bytes.push(b);
                    it.next();
                    it.next();
                    it.next();
                    continue;
                }
            }
        }
        flush(&mut bytes, &mut out);
        out.push('\\');
    }
    flush(&mut bytes, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn tr(words: &[&str]) -> Result<Translated, String> {
        let mut cli = super::super::Cli::command();
        cli.build();
        let mut args = vec![OsString::from("tern")];
        args.extend(words.iter().map(OsString::from));
        translate(&cli, args)
    }

    fn args(words: &[&str]) -> Vec<String> {
        tr(words)
            .unwrap()
            .args
            .iter()
            .skip(1)
            .map(|s| s.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn run_inference_py_command_line() {
        let t = tr(&[
            "run", "-m", "M.gguf", "-n", "32", "-t", "2", "-p", "Hi", "-ngl", "0", "-c", "2048",
            "-temp", "0.8", "-b", "1", "-cnv",
        ])
        .unwrap();
        let a: Vec<String> = t.args[1..]
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            a,
            [
                "run",
                "--model=M.gguf",
                "--n-predict=32",
                "--threads=2",
                "--prompt=Hi",
                "--ctx-size=2048",
                "--temp=0.8",
                "--batch-size=1",
                "--conversation"
            ]
        );
        assert_eq!(t.notes, ["-ngl 0 ignored: tern runs on the CPU"]);
    }

    #[test]
    fn negative_values_and_equals() {
        assert_eq!(
            args(&[
                "run",
                "-n",
                "-1",
                "--seed",
                "-1",
                "--temp=-1",
                "-p",
                "-x",
                "-s=-1"
            ]),
            [
                "run",
                "--n-predict=-1",
                "--seed=-1",
                "--temp=-1",
                "--prompt=-x",
                "--seed=-1"
            ]
        );
        assert_eq!(
            args(&["chat", "-n-1", "-t2", "-c=64"]),
            ["chat", "--n-predict=-1", "--threads=2", "--ctx-size=64"]
        );
        // Flags and positionals pass through; `--` ends the options.
        assert_eq!(
            args(&["inspect", "-", "--", "-ngl"]),
            ["inspect", "-", "--", "-ngl"]
        );
    }

    #[test]
    fn ignored_and_unknown() {
        let t = tr(&[
            "chat",
            "-fa",
            "-mg",
            "1",
            "-ts",
            "3,1",
            "--no-warmup",
            "-fa",
            "on",
            "-i",
        ])
        .unwrap();
        assert_eq!(t.args.len(), 3, "{:?}", t.args);
        assert_eq!(t.notes.len(), 4, "{:?}", t.notes);
        assert!(t.notes[3].starts_with("-fa on ignored"));
        for (words, typed) in [
            (vec!["run", "-xyz"], "'-xyz'"),
            (vec!["run", "-pHello"], "'-pHello'"),
            (vec!["run", "-ctxcp", "2"], "'-ctxcp'"),
            (
                vec!["inspect", "-temp", "1"],
                "-temp is not an option of `tern inspect`",
            ),
            (
                vec!["convert", "-ngl", "9"],
                "-ngl is not an option of `tern convert`",
            ),
            (vec!["run", "-ngl"], "-ngl needs a value"),
            (vec!["run", "-n"], "-n needs a value"),
        ] {
            let e = tr(&words).unwrap_err();
            assert!(e.contains(typed), "{words:?}: {e}");
        }
    }

    #[test]
    fn escapes() {
        assert_eq!(process_escapes(r"KING HENRY.\n"), "KING HENRY.\n");
        assert_eq!(
            process_escapes(r#"a\tb\r\'\"\\ \q \x41\xc3\xa9 \xZZ \"#),
            "a\tb\r'\"\\ \\q Aé \\xZZ \\"
        );
    }
}
