//! The generation loop shared by `run`, `chat` and the Python package: a
//! [`Generation`] evaluates a prompt and samples one token per step, a
//! [`TextStream`] turns the sampled tokens into text (whole UTF-8 characters,
//! stop strings held back and cut).

use super::sampling::Sampler;
use super::Context;
use crate::tokenizer::{StreamDecoder, Tokenizer};
use anyhow::{bail, Result};
use std::time::Instant;

#[derive(Debug, Clone, Default)]
pub struct GenStats {
    /// Prompt tokens evaluated (those already in the KV cache are not counted).
    pub prompt_tokens: usize,
    /// Seconds spent evaluating them.
    pub prompt_secs: f64,
    /// Tokens sampled.
    pub gen_tokens: usize,
    /// Seconds spent sampling them and evaluating all but the last one.
    pub gen_secs: f64,
    /// Why generation stopped.
    pub stop: StopReason,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StopReason {
    /// `n_predict` tokens were generated.
    #[default]
    Length,
    /// The model sampled an end-of-generation token (not part of the output).
    EndOfGeneration,
    /// The last generated token no longer fits in the context.
    ContextFull,
    /// The caller stopped it.
    Interrupted,
}

impl GenStats {
    pub fn report(&self) -> String {
        let per = |n: usize, s: f64| {
            if n > 0 && s > 0.0 {
                (s * 1000.0 / n as f64, n as f64 / s)
            } else {
                (0.0, 0.0)
            }
        };
        let (pm, pt) = per(self.prompt_tokens, self.prompt_secs);
        let (gm, gt) = per(self.gen_tokens, self.gen_secs);
        format!(
            "prompt eval time = {:10.2} ms / {:5} tokens ({:8.2} ms per token, {:8.2} tokens per second)\n       eval time = {:10.2} ms / {:5} tokens ({:8.2} ms per token, {:8.2} tokens per second)",
            self.prompt_secs * 1000.0,
            self.prompt_tokens,
            pm,
            pt,
            self.gen_secs * 1000.0,
            self.gen_tokens,
            gm,
            gt
        )
    }
}

/// Length of the longest common prefix of `a` and `b`.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// How many leading tokens of `tokens` can be kept from a KV cache holding
/// `cached`: their common prefix, but never all of `tokens` (the last one must
/// be evaluated to get the next-token logits).
pub fn reusable_prefix(cached: &[u32], tokens: &[u32]) -> usize {
    common_prefix(cached, tokens).min(tokens.len().saturating_sub(1))
}

/// One sequence being generated, a token per [`Generation::next_token`]:
/// the part of the prompt not yet in the KV cache is evaluated on the first
/// step, then each step evaluates the previous token and samples the next.
/// A sampled token is only evaluated when the following one is asked for, so
/// stopping costs no wasted forward pass.
///
/// The context is passed to every step, so a caller may use it for something
/// else in between: it then calls [`Generation::sync`] with what the cache
/// holds, and the generation re-evaluates whatever it lost.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The prompt, then the generated tokens.
    tokens: Vec<u32>,
    n_prompt: usize,
    /// Leading tokens of `tokens` whose keys/values are in the context.
    n_eval: usize,
    /// Next-token logits after `tokens[..n_eval]` (valid when `n_eval == tokens.len()`).
    logits: Vec<f32>,
    n_predict: usize,
    ignore_eos: bool,
    stats: GenStats,
    done: bool,
}

impl Generation {
    /// Generate after `prompt` (all the tokens of the sequence, BOS included),
    /// at most `n_predict` tokens, stopping at end-of-generation tokens unless
    /// `ignore_eos`. Nothing is assumed to be cached: see [`Generation::sync`].
    pub fn new(prompt: Vec<u32>, n_predict: usize, ignore_eos: bool) -> Result<Generation> {
        if prompt.is_empty() {
            bail!("the prompt is empty");
        }
        Ok(Generation {
            n_prompt: prompt.len(),
            tokens: prompt,
            n_eval: 0,
            logits: Vec::new(),
            n_predict,
            ignore_eos,
            stats: GenStats::default(),
            done: false,
        })
    }

    /// The context's cache holds `cached` (from its first position): keep what
    /// this generation can reuse and re-evaluate the rest on the next step.
    /// Returns the number of tokens kept (the next step truncates the context
    /// to it).
    pub fn sync(&mut self, cached: &[u32]) -> usize {
        let common = common_prefix(cached, &self.tokens);
        self.n_eval = if common > self.n_eval {
            // Gained cached tokens; logits are only known at our own n_eval.
            reusable_prefix(cached, &self.tokens)
        } else {
            common
        };
        self.n_eval
    }

    /// The next token, or `None` once generation has stopped ([`GenStats::stop`]
    /// says why). `ctx` must hold at least the tokens this generation has
    /// evaluated ([`Generation::evaluated`]); anything after them is dropped.
    pub fn next_token(&mut self, ctx: &mut Context, sampler: &mut Sampler) -> Result<Option<u32>> {
        if self.done {
            return Ok(None);
        }
        if self.stats.gen_tokens >= self.n_predict {
            return Ok(self.finish(StopReason::Length));
        }
        if ctx.n_past() < self.n_eval {
            bail!(
                "the context holds {} tokens, but this generation needs its first {}",
                ctx.n_past(),
                self.n_eval
            );
        }
        ctx.truncate(self.n_eval);
        let mut t = Instant::now();
        if self.n_eval < self.tokens.len() {
            if self.tokens.len() > ctx.n_ctx() {
                if self.n_eval >= self.n_prompt {
                    return Ok(self.finish(StopReason::ContextFull));
                }
                bail!(
                    "the prompt has {} tokens but the context holds {}",
                    self.n_prompt,
                    ctx.n_ctx()
                );
            }
            let in_prompt = self.n_eval < self.n_prompt;
            let new = &self.tokens[self.n_eval..];
            self.logits = ctx.eval(new, false)?;
            self.n_eval = self.tokens.len();
            if in_prompt {
                self.stats.prompt_tokens += new.len();
                self.stats.prompt_secs += t.elapsed().as_secs_f64();
                t = Instant::now();
            }
        }
        let next = sampler.sample(&self.logits, &self.tokens);
        self.stats.gen_secs += t.elapsed().as_secs_f64();
        if !self.ignore_eos && ctx.model.tokenizer.is_eog(next) {
            return Ok(self.finish(StopReason::EndOfGeneration));
        }
        self.tokens.push(next);
        self.stats.gen_tokens += 1;
        Ok(Some(next))
    }

    fn finish(&mut self, why: StopReason) -> Option<u32> {
        self.done = true;
        self.stats.stop = why;
        None
    }

    /// Stop here (the caller's reason); later steps return `None`.
    pub fn interrupt(&mut self) {
        if !self.done {
            self.finish(StopReason::Interrupted);
        }
    }

    /// Run to the end, handing each token to `on_token`; it returns false to
    /// stop (then [`GenStats::stop`] is `Interrupted`).
    pub fn run(
        &mut self,
        ctx: &mut Context,
        sampler: &mut Sampler,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<GenStats> {
        while let Some(t) = self.next_token(ctx, sampler)? {
            if !on_token(t) {
                self.interrupt();
            }
        }
        Ok(self.stats.clone())
    }

    /// The prompt and the tokens generated so far.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// The generated tokens.
    pub fn generated(&self) -> &[u32] {
        &self.tokens[self.n_prompt..]
    }

    /// The tokens whose keys/values this generation has put in the context.
    pub fn evaluated(&self) -> &[u32] {
        &self.tokens[..self.n_eval]
    }

    pub fn n_prompt(&self) -> usize {
        self.n_prompt
    }

    pub fn stats(&self) -> &GenStats {
        &self.stats
    }

    pub fn is_done(&self) -> bool {
        self.done
    }
}

/// The text of a generation as it streams: token bytes decoded to whole UTF-8
/// characters (llama.cpp's `token_to_piece` without special tokens), and stop
/// strings ([`StopMatcher`]): text that may still grow into a stop string is
/// held back, and once one appears, the text before it is final and the rest
/// is dropped.
#[derive(Debug, Clone, Default)]
pub struct TextStream {
    dec: StreamDecoder,
    stop: StopMatcher,
    stopped: bool,
}

impl TextStream {
    /// A stream cut at the first of `stops` (empty strings are ignored).
    pub fn new(stops: Vec<String>) -> TextStream {
        TextStream {
            stop: StopMatcher::new(&stops),
            ..Default::default()
        }
    }

    /// Add token `id`; returns the text that is now final (often empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        self.push_bytes(&tok.token_bytes(id, false))
    }

    /// Add the bytes of one token.
    pub fn push_bytes(&mut self, bytes: &[u8]) -> String {
        if self.stopped {
            return String::new();
        }
        let piece = self.dec.push(bytes);
        let (out, hit) = self.stop.push(&piece);
        self.stopped = hit;
        out
    }

    /// The end of generation: whatever was held back.
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        let rest = self.dec.flush();
        let (mut out, hit) = self.stop.push(&rest);
        self.stopped = hit;
        if !hit {
            out.push_str(&self.stop.flush());
        }
        out
    }

    /// Whether a stop string appeared (then nothing more comes out).
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// The stop string that appeared, if one did.
    pub fn stopping_word(&self) -> Option<&str> {
        self.stop.found()
    }
}

/// llama-cli's reverse prompts (`-r TEXT`): generation halts once the
/// generated text contains one of them. Unlike a server's stop strings
/// ([`StopMatcher`]) nothing is held back or cut: the text, reverse prompt
/// included, has been shown when generation halts, as in llama-cli. Only
/// generated text is searched (llama-cli also looks at the end of the
/// prompt); a reverse prompt split over several tokens is found.
#[derive(Debug, Clone, Default)]
pub struct ReversePrompts {
    prompts: Vec<String>,
    /// The end of the text so far: shorter than the longest reverse prompt.
    tail: String,
}

impl ReversePrompts {
    /// Empty strings are ignored.
    pub fn new(prompts: &[String]) -> ReversePrompts {
        ReversePrompts {
            prompts: prompts.iter().filter(|s| !s.is_empty()).cloned().collect(),
            tail: String::new(),
        }
    }

    /// Add generated text; true once a reverse prompt has appeared in the
    /// text added so far.
    pub fn push(&mut self, text: &str) -> bool {
        if self.prompts.is_empty() {
            return false;
        }
        self.tail.push_str(text);
        if self.prompts.iter().any(|p| self.tail.contains(p.as_str())) {
            return true;
        }
        // Keep fewer bytes than the longest reverse prompt (whole
        // characters): enough for any of them to complete later, never a
        // whole one already seen.
        let longest = self.prompts.iter().map(String::len).max().unwrap_or(0);
        let mut cut = self.tail.len().saturating_sub(longest - 1);
        while !self.tail.is_char_boundary(cut) {
            cut += 1;
        }
        self.tail.drain(..cut);
        false
    }
}

/// Holds back generated text that may be the start of a stop string, and
/// finds the first complete one.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
    /// The stop string found, once one is.
    found: Option<String>,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> StopMatcher {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
            found: None,
        }
    }

    /// The stop string that ended the text (the one that appears first; of
    /// two starting at the same place, the first given), once one has.
    pub fn found(&self) -> Option<&str> {
        self.found.as_deref()
    }

    /// Add generated text. Returns the text that can be released now and
    /// whether a stop string was found (the text before it is released, the
    /// stop string and anything after it are dropped).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.held.push_str(piece);
        // The earliest occurrence; `min_by_key` keeps the first of equals.
        if let Some((at, s)) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()).map(|at| (at, s)))
            .min_by_key(|&(at, _)| at)
        {
            let out = self.held[..at].to_string();
            self.found = Some(s.clone());
            self.held.clear();
            return (out, true);
        }
        // Keep the longest tail of the text that a stop string starts with.
        let keep = self
            .stops
            .iter()
            .flat_map(|s| s.char_indices().skip(1).map(move |(i, _)| &s[..i]))
            .filter(|p| self.held.ends_with(p))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        (out, false)
    }

    /// Whatever is held back (at the end of generation).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reusable() {
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4, 5]), 2);
        assert_eq!(common_prefix(&[1, 2], &[1, 2]), 2);
        assert_eq!(reusable_prefix(&[1, 2, 3], &[1, 2, 4, 5]), 2);
        assert_eq!(reusable_prefix(&[], &[1]), 0);
        assert_eq!(reusable_prefix(&[1, 2], &[1, 2]), 1);
        assert_eq!(reusable_prefix(&[1, 2, 3], &[1, 2]), 1);
    }

    fn stream(stops: &[&str], pieces: &[&[u8]]) -> (Vec<String>, String, bool) {
        let mut s = TextStream::new(stops.iter().map(|s| s.to_string()).collect());
        let out = pieces.iter().map(|p| s.push_bytes(p)).collect();
        let end = s.finish();
        (out, end, s.stopped())
    }

    #[test]
    fn stop_matcher_holds_back_prefixes() {
        let mut s = StopMatcher::new(&["END".to_string(), "\n\n".to_string(), String::new()]);
        assert_eq!(s.push("abc E"), ("abc ".to_string(), false));
        assert_eq!(s.push("N"), (String::new(), false));
        assert_eq!(s.push("x"), ("ENx".to_string(), false));
        assert_eq!(s.push("é\n"), ("é".to_string(), false));
        assert_eq!(s.found(), None);
        assert_eq!(s.push("\nrest"), (String::new(), true));
        assert_eq!(s.found(), Some("\n\n"));
        // The earliest occurrence names the stop, whatever the order given.
        let mut s = StopMatcher::new(&["cd".to_string(), "bc".to_string()]);
        assert_eq!(s.push("abcd"), ("a".to_string(), true));
        assert_eq!(s.found(), Some("bc"));
        let mut s = StopMatcher::new(&["ab".to_string()]);
        assert_eq!(s.push("xxa"), ("xx".to_string(), false));
        assert_eq!(s.flush(), "a");
    }

    #[test]
    fn text_without_stops_passes_through() {
        let (out, end, stopped) = stream(&[], &[b"Hello", b", ", b"world"]);
        assert_eq!(out, ["Hello", ", ", "world"]);
        assert_eq!((end.as_str(), stopped), ("", false));
        // A character split over two tokens comes out whole.
        let (out, end, _) = stream(&[], &[b"caf", b"\xc3", b"\xa9!"]);
        assert_eq!(out, ["caf", "", "\u{e9}!"]);
        assert_eq!(end, "");
        // An incomplete character at the end becomes U+FFFD.
        let (_, end, _) = stream(&[], &[b"a\xe2\x82"]);
        assert_eq!(end, "\u{fffd}");
    }

    #[test]
    fn reverse_prompts_halt_once_seen_even_across_pieces() {
        let mut r = ReversePrompts::new(&["User:".into(), String::new(), "é!".into()]);
        assert!(!r.push("Hello there. Us"));
        assert!(!r.push("e"));
        assert!(r.push("r: hi"));
        let mut r = ReversePrompts::new(&["é!".into()]);
        assert!(!r.push("caf"));
        assert!(!r.push("é"));
        assert!(r.push("!"));
        // Nothing to look for: never halts.
        let mut r = ReversePrompts::new(&[String::new()]);
        assert!(!r.push("anything"));
        // The tail stays short whatever the length of the text.
        let mut r = ReversePrompts::new(&["ab".into()]);
        for _ in 0..1000 {
            assert!(!r.push("éééé"));
        }
        assert!(r.tail.len() <= 2);
        assert!(r.push("ab"));
    }

    #[test]
    fn stop_strings_are_held_back_and_cut() {
        // The stop string spans tokens; nothing of it is ever shown.
        let (out, end, stopped) = stream(&["\nUser:"], &[b"Fine", b".\n", b"Us", b"er: more"]);
        assert_eq!(out, ["Fine", ".", "", ""]);
        assert_eq!((end.as_str(), stopped), ("", true));
        // A partial match that fails is released.
        let (out, end, stopped) = stream(&["\nUser:"], &[b"a\nU", b"p"]);
        assert_eq!(out, ["a", "\nUp"]);
        assert_eq!((end.as_str(), stopped), ("", false));
        // Held text is released at the end.
        let (out, end, stopped) = stream(&["STOP"], &[b"xST"]);
        assert_eq!(out, ["x"]);
        assert_eq!((end.as_str(), stopped), ("ST", false));
        // The earliest of several stop strings wins, inside one token too.
        let (out, _, stopped) = stream(&["bb", "ab"], &[b"xabb"]);
        assert_eq!((out[0].as_str(), stopped), ("x", true));
        // Overlapping prefixes: "aab" in "aaab".
        let (out, _, _) = stream(&["aab"], &[b"aa", b"ab"]);
        assert_eq!(out, ["", "a"]);
        // Multi-byte stop strings cut on character boundaries.
        let (out, _, stopped) = stream(&["\u{e9}t\u{e9}"], &[b"l'\xc3\xa9", b"t\xc3\xa9"]);
        assert_eq!((out.concat().as_str(), stopped), ("l'", true));
        // After the stop nothing more comes out.
        let mut s = TextStream::new(vec!["x".into()]);
        assert_eq!(s.push_bytes(b"axb"), "a");
        assert_eq!(s.push_bytes(b"c"), "");
        assert_eq!(s.finish(), "");
    }
}
