//! Text that comes from input files (GGUF keys and tensor names, checkpoint
//! tensor names, tokenizer pieces, chat templates), made safe to print.
//!
//! A crafted file can hold any bytes in a name: ANSI escape sequences that
//! repaint the terminal, newlines that forge extra `tern: error:` lines, or a
//! megabyte-long key. Every message that shows such text goes through
//! [`quoted`]: Rust's `{:?}` escaping (control characters, quotes and
//! backslashes become `\u{1b}`, `\n`, `\"`, …) inside double quotes, cut
//! after [`MAX_SHOWN`] characters of escaped text with `…` and the full
//! length in bytes.

use std::fmt;

/// Most characters of escaped text shown before the cut.
pub const MAX_SHOWN: usize = 80;

/// A file-derived string as it appears in messages; see the module docs.
/// `format!("{}", quoted("a\nb"))` is `"a\nb"` (with the quotes).
pub fn quoted(s: &str) -> Quoted<'_> {
    Quoted(s)
}

/// Display wrapper returned by [`quoted`].
#[derive(Clone, Copy)]
pub struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        let mut shown = 0;
        for (i, c) in self.0.char_indices() {
            // `escape_debug` is what `{:?}` uses for each character of a str
            // (grapheme extenders are escaped too, which is fine here).
            let e = c.escape_debug();
            let n = e.len();
            if shown + n > MAX_SHOWN {
                return write!(f, "\"… ({} bytes, cut at byte {})", self.0.len(), i);
            }
            shown += n;
            for ch in e {
                f.write_str(ch.encode_utf8(&mut [0; 4]))?;
            }
        }
        f.write_str("\"")
    }
}

impl fmt::Debug for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A name shown bare when it is plain (at most [`MAX_SHOWN`] characters, all
/// graphic ASCII or printable non-ASCII, no spaces), otherwise [`quoted`].
/// For tables such as `tern inspect`, where real names read best unquoted.
pub fn name(s: &str) -> String {
    let plain = s.len() <= MAX_SHOWN
        && !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_graphic() || (!c.is_ascii() && c.escape_debug().len() == 1));
    if plain && !s.contains('"') && !s.contains('\\') {
        s.to_string()
    } else {
        quoted(s).to_string()
    }
}

/// An error message produced by a library from file contents (a JSON,
/// safetensors or template error), reduced to one safe line: control
/// characters escaped, at most 4 × [`MAX_SHOWN`] characters.
pub fn one_line(msg: &str) -> String {
    let mut out = String::new();
    for (n, c) in msg.chars().enumerate() {
        if n == 4 * MAX_SHOWN {
            out.push('…');
            break;
        }
        push_escaped(&mut out, c);
    }
    out
}

/// `msg` with control characters (newlines, ESC, …) escaped: the last line
/// of defence before a message reaches the terminal.
pub fn escape_controls(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    for c in msg.chars() {
        push_escaped(&mut out, c);
    }
    out
}

fn push_escaped(out: &mut String, c: char) {
    if c.is_control() {
        out.extend(c.escape_debug());
    } else {
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_control_characters() {
        let s = "\u{1b}[2J\u{1b}[31mFAKE\nline2\r";
        let q = quoted(s).to_string();
        assert_eq!(q, r#""\u{1b}[2J\u{1b}[31mFAKE\nline2\r""#);
        assert!(!q.chars().any(|c| c.is_control()));
    }

    #[test]
    fn truncates_long_text() {
        let s = "k".repeat(1 << 20);
        let q = quoted(&s).to_string();
        assert!(q.len() < MAX_SHOWN + 60, "{}", q);
        assert!(q.contains("1048576 bytes"), "{}", q);
        // An escape sequence is never cut in half.
        let s = "\u{1b}".repeat(100);
        let q = quoted(&s).to_string();
        assert!(
            q.starts_with(r#""\u{1b}"#) && q.contains("\"… (100 bytes"),
            "{}",
            q
        );
        assert_eq!(q.matches("\\u{1b}").count(), MAX_SHOWN / 6);
    }

    #[test]
    fn plain_names_stay_bare() {
        assert_eq!(name("blk.0.attn_q.weight"), "blk.0.attn_q.weight");
        assert_eq!(name("a b"), "\"a b\"");
        assert_eq!(name(""), "\"\"");
        assert_eq!(name("x\u{1b}"), r#""x\u{1b}""#);
        assert_eq!(name("Ġthe"), "Ġthe");
    }

    #[test]
    fn one_line_messages() {
        let m = one_line("bad\nthing\u{1b}[0m");
        assert_eq!(m, r"bad\nthing\u{1b}[0m");
        assert!(one_line(&"x".repeat(10_000)).chars().count() <= 4 * MAX_SHOWN + 2);
    }
}
