//! The request bodies (OpenAI's, and llama-server's own `/completion` and
//! `/apply-template`) and their translation into engine requests: field
//! types, ranges and the fields tern refuses because they would change the
//! meaning of a request it cannot honour.

use super::engine::{Request, MAX_TOP_LOGPROBS};
use crate::chat::Message;
use crate::model::sampling::SamplingParams;
use serde::Deserialize;
use serde_json::{Map, Value};

/// What a request that leaves a field out gets (llama-server's sampling
/// flags set them: `--temp`, `--top-k`, … `-s`, `-n`).
#[derive(Debug, Clone, Default)]
pub struct Defaults {
    /// Sampling values; `params.seed` applies only when `fixed_seed`.
    pub params: SamplingParams,
    /// The server was given a seed (`-s N`): requests without one use it
    /// instead of a fresh random seed.
    pub fixed_seed: bool,
    /// Tokens a request generates at most (llama-server's `-n`): the
    /// value of a request that gives no `max_tokens`, and a cap on one
    /// that does (None: until the end of generation or a full context).
    pub max_tokens: Option<usize>,
}

/// Fields shared by `/v1/chat/completions`, `/v1/completions` and
/// llama-server's `/completion`.
#[derive(Debug, Default, Deserialize)]
pub struct Common {
    pub model: Option<String>,
    /// At least 1 (`/completion`: 0 too); -1 or -2: until the end of
    /// generation or a full context (llama-server's `n_predict`, also
    /// accepted under that name).
    #[serde(alias = "n_predict")]
    pub max_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// 0 or less keeps every token (as `--top-k` does; -1 is the usual
    /// "off" of OpenAI-style clients).
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub repeat_penalty: Option<f32>,
    /// -1: the whole history (as `--repeat-last-n -1`).
    pub repeat_last_n: Option<i64>,
    pub n: Option<u32>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    /// llama-server's: keep generating past end-of-generation tokens.
    #[serde(default)]
    pub ignore_eos: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    pub max_completion_tokens: Option<i64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u32>,
    #[serde(flatten)]
    pub common: Common,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Value,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub prompt: Value,
    /// OpenAI's legacy form: how many alternatives per token (0..=20).
    pub logprobs: Option<u32>,
    #[serde(default)]
    pub echo: bool,
    #[serde(flatten)]
    pub common: Common,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// What `/v1/completions` was asked to continue.
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

/// The request settings after checking, before the prompt is tokenized.
pub struct Settings {
    pub request: Request,
    pub stream: bool,
    pub include_usage: bool,
    pub logprobs: bool,
}

/// Fields that change what a request means and that tern does not
/// implement: refused rather than silently ignored. A field is accepted
/// when its value is null or the neutral value given here.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("tools", "tool calls are not supported"),
    ("tool_choice", "tool calls are not supported"),
    ("functions", "function calls are not supported"),
    ("function_call", "function calls are not supported"),
    (
        "response_format",
        "only the text response format is supported",
    ),
    ("logit_bias", "logit_bias is not supported"),
    ("best_of", "best_of must be 1"),
    ("suffix", "suffix (fill in the middle) is not supported"),
    ("grammar", "grammars are not supported"),
    ("json_schema", "JSON schemas are not supported"),
    ("audio", "audio output is not supported"),
    ("modalities", "only the text modality is supported"),
    ("prediction", "predicted outputs are not supported"),
    ("mirostat", "mirostat sampling is not supported"),
    ("typical_p", "typical sampling is not supported"),
    // llama-server's own fields.
    ("dry_multiplier", "DRY sampling is not supported"),
    ("xtc_probability", "XTC sampling is not supported"),
    ("dynatemp_range", "dynamic temperature is not supported"),
    ("n_indent", "n_indent is not supported"),
    ("t_max_predict_ms", "t_max_predict_ms is not supported"),
    (
        "post_sampling_probs",
        "post_sampling_probs is not supported (probabilities are the model's, before sampling)",
    ),
    ("n_cmpl", "n_cmpl must be 1"),
    ("lora", "LoRA adapters are not supported"),
    ("response_fields", "response_fields is not supported"),
    ("top_n_sigma", "top-n-sigma sampling is not supported"),
];

fn neutral(key: &str, v: &Value) -> bool {
    match (key, v) {
        (_, Value::Null) => true,
        ("response_format", Value::Object(o)) => {
            o.get("type").and_then(Value::as_str) == Some("text")
        }
        ("logit_bias", Value::Object(o)) => o.is_empty(),
        ("mirostat", v) => v.as_f64() == Some(0.0),
        ("typical_p", v) => v.as_f64() == Some(1.0),
        (
            "dry_multiplier" | "xtc_probability" | "dynatemp_range" | "n_indent"
            | "t_max_predict_ms",
            v,
        ) => v.as_f64() == Some(0.0),
        ("post_sampling_probs", Value::Bool(b)) => !b,
        ("n_cmpl", v) => v.as_u64() == Some(1),
        ("lora" | "response_fields" | "logit_bias", Value::Array(a)) => a.is_empty(),
        ("top_n_sigma", v) => v.as_f64().is_some_and(|x| x <= 0.0),
        ("best_of", v) => v.as_u64() == Some(1),
        ("suffix" | "grammar", Value::String(s)) => s.is_empty(),
        ("tools" | "functions", Value::Array(a)) => a.is_empty(),
        ("tool_choice", Value::String(s)) => s == "none",
        ("modalities", Value::Array(a)) => a.iter().all(|m| m.as_str() == Some("text")),
        _ => false,
    }
}

fn refuse_unsupported(extra: &Map<String, Value>) -> Result<(), String> {
    for (key, why) in UNSUPPORTED {
        if let Some(v) = extra.get(*key) {
            if !neutral(key, v) {
                return Err(format!("{key}: {why}"));
            }
        }
    }
    Ok(())
}

/// llama.cpp's sampler names (`samplers` as a list) and letters (as a
/// string, `--sampler-seq`'s), as tern's sampling steps: `Some(i)` is the
/// i-th step of [`TERN_SAMPLERS`]; `None` a sampler tern does not have,
/// whose own field is refused unless off ([`UNSUPPORTED`]), so that it is
/// inactive whether listed or not.
fn sampler_step(name: &str) -> Result<Option<usize>, String> {
    Ok(match name {
        "e" | "penalties" => Some(0),
        "k" | "top_k" | "top-k" => Some(1),
        "p" | "top_p" | "top-p" | "nucleus" => Some(2),
        "m" | "min_p" | "min-p" => Some(3),
        "t" | "temperature" | "temp" => Some(4),
        "d" | "dry" | "y" | "typ_p" | "typ-p" | "typical_p" | "typical-p" | "typical" | "typ"
        | "x" | "xtc" | "s" | "top_n_sigma" | "top-n-sigma" => None,
        other => {
            return Err(format!(
                "samplers: {:?} is not a sampler tern has",
                truncate(other)
            ))
        }
    })
}

/// tern's sampling steps, in the order it applies them (llama.cpp's default
/// order, less the samplers tern does not have).
const TERN_SAMPLERS: [&str; 5] = ["penalties", "top_k", "top_p", "min_p", "temperature"];

/// llama-server's `samplers` (a list of names or a string of letters)
/// chooses which samplers run and in what order. tern's order is fixed, so
/// a list is accepted when the steps it names come in tern's order, each
/// once, and every step it leaves out is off in `params` (no penalties,
/// `top_k` 0, `top_p` 1, `min_p` 0, temperature 1); otherwise it is refused
/// rather than ignored.
fn check_samplers(extra: &Map<String, Value>, params: &SamplingParams) -> Result<(), String> {
    let names: Vec<String> = match extra.get("samplers") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::String(s)) => s.chars().map(String::from).collect(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(String::from)
                    .ok_or_else(|| "samplers: a list of sampler names".to_string())
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("samplers: a list of sampler names, or a string of letters".into()),
    };
    let mut steps = Vec::new();
    for n in &names {
        if let Some(i) = sampler_step(n)? {
            steps.push(i);
        }
    }
    if steps.windows(2).any(|w| w[0] >= w[1]) {
        return Err(format!(
            "samplers: tern applies {} in that order, each once",
            TERN_SAMPLERS.join(", ")
        ));
    }
    let off = [
        params.repeat_penalty == 1.0
            && params.frequency_penalty == 0.0
            && params.presence_penalty == 0.0,
        params.top_k == 0,
        params.top_p >= 1.0,
        params.min_p == 0.0,
        params.temp == 1.0,
    ];
    for (i, name) in TERN_SAMPLERS.iter().enumerate() {
        if !steps.contains(&i) && !off[i] {
            return Err(format!(
                "samplers leaves out {name}, which this request (or the server's defaults) turns on; list it or turn it off"
            ));
        }
    }
    Ok(())
}

/// How an endpoint names two of [`Common`]'s fields in its errors, and
/// whether it takes 0 tokens (llama-server's `n_predict: 0`: evaluate the
/// prompt only).
struct Dialect {
    max_tokens: &'static str,
    top_logprobs: &'static str,
    zero_tokens: bool,
}

/// OpenAI's endpoints.
const OPENAI: Dialect = Dialect {
    max_tokens: "max_tokens",
    top_logprobs: "top_logprobs",
    zero_tokens: false,
};

/// llama-server's `/completion`.
const LLAMA: Dialect = Dialect {
    max_tokens: "n_predict",
    top_logprobs: "n_probs",
    zero_tokens: true,
};

impl Common {
    /// The engine request's settings: sampling values, `n`, the stop
    /// strings from these fields; `max_tokens` and logprobs as the endpoint
    /// reads them; `extra`'s fields refused unless off, and its `samplers`
    /// checked against the result.
    fn settings(
        &self,
        dialect: &Dialect,
        extra: &Map<String, Value>,
        defaults: &Defaults,
        max_tokens: Option<i64>,
        top_logprobs: Option<u32>,
        random_seed: u64,
    ) -> Result<Settings, String> {
        refuse_unsupported(extra)?;
        if let Some(n) = self.n {
            if n != 1 {
                return Err(format!(
                    "n = {n}: tern returns one choice per request (n must be 1)"
                ));
            }
        }
        let max_tokens = match max_tokens {
            None => defaults.max_tokens,
            Some(-1 | -2) => None,
            Some(n) => match usize::try_from(n) {
                Ok(n) if n >= 1 || dialect.zero_tokens => Some(n),
                _ => {
                    return Err(format!(
                        "{} = {n}: must be {}, or -1 for no limit",
                        dialect.max_tokens,
                        if dialect.zero_tokens {
                            "0 or more"
                        } else {
                            "at least 1"
                        }
                    ))
                }
            },
        };
        // The server's -n caps what a request asks, as llama-server's slot
        // budget does.
        let max_tokens = match (max_tokens, defaults.max_tokens) {
            (Some(n), Some(cap)) => Some(n.min(cap)),
            (n, cap) => n.or(cap),
        };
        let repeat_last_n = match self.repeat_last_n {
            None => None,
            Some(-1) => Some(usize::MAX),
            Some(n) => Some(usize::try_from(n).map_err(|_| {
                format!("repeat_last_n = {n}: must be 0 or more, or -1 for the whole history")
            })?),
        };
        if let Some(k) = top_logprobs {
            if k as usize > MAX_TOP_LOGPROBS {
                return Err(format!(
                    "{} must be between 0 and {MAX_TOP_LOGPROBS}",
                    dialect.top_logprobs
                ));
            }
        }
        let d = &defaults.params;
        let seed = match self.seed {
            None if defaults.fixed_seed => d.seed,
            None | Some(-1) => random_seed,
            Some(s) if s >= 0 => s as u64,
            Some(s) => {
                return Err(format!(
                    "seed = {s}: must be non-negative (or -1 for random)"
                ))
            }
        };
        let params = SamplingParams {
            temp: self.temperature.unwrap_or(d.temp),
            top_k: self.top_k.map_or(d.top_k, SamplingParams::top_k_of),
            top_p: self.top_p.unwrap_or(d.top_p),
            min_p: self.min_p.unwrap_or(d.min_p),
            repeat_penalty: self.repeat_penalty.unwrap_or(d.repeat_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(d.frequency_penalty),
            presence_penalty: self.presence_penalty.unwrap_or(d.presence_penalty),
            repeat_last_n: repeat_last_n.unwrap_or(d.repeat_last_n),
            seed,
        };
        params.validate().map_err(|e| {
            // Name the field as the request did.
            let field = match e.name.as_str() {
                "temp" => "temperature",
                other => other,
            };
            format!("{field} = {}: {}", e.value, e.problem)
        })?;
        let stop = match &self.stop {
            None => vec![],
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > MAX_STOPS {
            return Err(format!("stop: at most {MAX_STOPS} stop strings"));
        }
        if stop.iter().any(|s| s.len() > MAX_STOP_BYTES) {
            return Err(format!(
                "stop: a stop string is at most {MAX_STOP_BYTES} bytes"
            ));
        }
        check_samplers(extra, &params)?;
        Ok(Settings {
            request: Request {
                params,
                max_tokens,
                stop,
                top_logprobs: top_logprobs.map(|k| k as usize),
                ignore_eos: self.ignore_eos,
                ..Default::default()
            },
            stream: self.stream,
            include_usage: self
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
            logprobs: top_logprobs.is_some(),
        })
    }
}

/// Most stop strings a request may give.
pub const MAX_STOPS: usize = 16;

/// Longest stop string, in bytes. Each generated piece is checked against
/// every prefix of every stop string on the thread that decodes for all
/// slots, so the work per token grows with the square of this: sixteen
/// strings of 500 KB (inside the 8 MB body limit) cost 32 ms a token.
pub const MAX_STOP_BYTES: usize = 256;

impl ChatRequest {
    /// The engine request's settings: the request's fields, `defaults`
    /// for those it leaves out, `random_seed` unless a seed is given.
    pub fn settings(&self, defaults: &Defaults, random_seed: u64) -> Result<Settings, String> {
        let top = match (self.logprobs, self.top_logprobs) {
            (Some(true), k) => Some(k.unwrap_or(0)),
            (_, Some(_)) => return Err("top_logprobs needs logprobs: true".into()),
            _ => None,
        };
        self.common.settings(
            &OPENAI,
            &self.extra,
            defaults,
            self.max_completion_tokens.or(self.common.max_tokens),
            top,
            random_seed,
        )
    }

    /// The messages as the chat template takes them ([`messages_of`]).
    pub fn messages(&self) -> Result<Vec<Message>, String> {
        messages_of(&self.messages)
    }
}

/// `/apply-template`'s body (llama-server's): the messages of a chat
/// request, rendered with the server's chat template and not run.
#[derive(Debug, Deserialize)]
pub struct TemplateRequest {
    pub messages: Vec<ChatMessage>,
    /// End where the assistant's reply begins (the default), or after the
    /// last message.
    #[serde(default = "yes")]
    pub add_generation_prompt: bool,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `true`, for serde's `default =` of fields that are on unless given.
pub(super) fn yes() -> bool {
    true
}

impl TemplateRequest {
    /// As [`ChatRequest::messages`]; fields a chat request refuses
    /// (`tools`, …) are refused here too.
    pub fn messages(&self) -> Result<Vec<Message>, String> {
        refuse_unsupported(&self.extra)?;
        messages_of(&self.messages)
    }
}

/// Chat messages as the chat template takes them: roles system
/// (`developer` too), user and assistant; content a string or an array of
/// text parts (joined with newlines). Errors name the message.
fn messages_of(messages: &[ChatMessage]) -> Result<Vec<Message>, String> {
    if messages.is_empty() {
        return Err("messages must not be empty".into());
    }
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                other => {
                    return Err(format!(
                    "messages[{i}].role = {:?}: tern supports system, user and assistant messages",
                    truncate(other)
                ))
                }
            };
            if m.extra
                .get("tool_calls")
                .is_some_and(|v| !neutral("tools", v))
            {
                return Err(format!("messages[{i}]: tool calls are not supported"));
            }
            let content =
                content_text(&m.content).map_err(|e| format!("messages[{i}].content: {e}"))?;
            Ok(Message::new(role, &content))
        })
        .collect()
}

fn content_text(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut texts = Vec::with_capacity(parts.len());
            for p in parts {
                match (p.get("type").and_then(Value::as_str), p.get("text")) {
                    (Some("text"), Some(Value::String(t))) => texts.push(t.as_str()),
                    (Some("text"), _) => return Err("a text part needs a string \"text\"".into()),
                    (Some(other), _) => {
                        return Err(format!(
                            "content parts of type {:?} are not supported (text only)",
                            truncate(other)
                        ))
                    }
                    (None, _) => return Err("each content part needs a \"type\"".into()),
                }
            }
            Ok(texts.join("\n"))
        }
        _ => Err("must be a string or an array of text parts".into()),
    }
}

impl CompletionRequest {
    /// As [`ChatRequest::settings`].
    pub fn settings(&self, defaults: &Defaults, random_seed: u64) -> Result<Settings, String> {
        if self.echo {
            return Err("echo is not supported".into());
        }
        self.common.settings(
            &OPENAI,
            &self.extra,
            defaults,
            self.common.max_tokens,
            self.logprobs,
            random_seed,
        )
    }

    /// A string, a list of token ids, or a list holding one of those.
    pub fn prompt(&self) -> Result<Prompt, String> {
        let ids = |a: &[Value]| -> Result<Vec<u32>, String> {
            a.iter()
                .map(|v| {
                    v.as_u64()
                        .and_then(|t| u32::try_from(t).ok())
                        .ok_or_else(|| "prompt: a token list holds only token ids".to_string())
                })
                .collect()
        };
        match &self.prompt {
            Value::String(s) => Ok(Prompt::Text(s.clone())),
            Value::Array(a) if a.iter().all(Value::is_number) && !a.is_empty() => {
                Ok(Prompt::Tokens(ids(a)?))
            }
            Value::Array(a) if a.len() == 1 => match &a[0] {
                Value::String(s) => Ok(Prompt::Text(s.clone())),
                Value::Array(t) if !t.is_empty() => Ok(Prompt::Tokens(ids(t)?)),
                _ => Err("prompt must be a string or a list of token ids".into()),
            },
            Value::Array(a) if a.len() > 1 => Err(
                "prompt: one prompt per request (a list of several prompts is not supported)"
                    .into(),
            ),
            _ => Err("prompt must be a string or a list of token ids".into()),
        }
    }
}

/// llama-server's own completion request (`POST /completion`, also
/// `/completions`): the sampling fields of [`Common`] under llama.cpp's
/// names (`n_predict`, `temperature`, `top_k`, …), plus `n_probs` and
/// `return_tokens`. `cache_prompt` and `id_slot` are accepted and ignored:
/// tern always reuses a slot's cached prefix, and a sequence's results do
/// not depend on its slot or on what was cached (every kernel computes each
/// output the same way whatever the batch).
#[derive(Debug, Deserialize)]
pub struct NativeRequest {
    pub prompt: Value,
    /// Alternatives per generated token in `completion_probabilities`
    /// (0: no probabilities), at most [`MAX_TOP_LOGPROBS`].
    #[serde(default)]
    pub n_probs: u32,
    /// Put the generated token ids in `tokens`.
    #[serde(default)]
    pub return_tokens: bool,
    #[serde(flatten)]
    pub common: Common,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One piece of a llama-server prompt: text (tokenized with special-token
/// texts matched) or token ids.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptPart {
    Text(String),
    Tokens(Vec<u32>),
}

impl NativeRequest {
    /// As [`ChatRequest::settings`]; `n_predict: 0` evaluates the prompt
    /// into a slot's cache and generates nothing.
    pub fn settings(&self, defaults: &Defaults, random_seed: u64) -> Result<Settings, String> {
        self.common.settings(
            &LLAMA,
            &self.extra,
            defaults,
            self.common.max_tokens,
            (self.n_probs > 0).then_some(self.n_probs),
            random_seed,
        )
    }

    /// llama-server's prompt shapes for one completion: a string, a list of
    /// token ids and strings mixed, or a list holding one of those. A list
    /// of several prompts (which llama-server answers with a list of
    /// completions) is refused.
    pub fn prompt(&self) -> Result<Vec<PromptPart>, String> {
        const SHAPES: &str = "prompt must be a string, or a list of token ids and strings";
        let parts = |a: &[Value]| -> Result<Vec<PromptPart>, String> {
            let mut out: Vec<PromptPart> = Vec::new();
            for v in a {
                match v {
                    Value::String(s) => out.push(PromptPart::Text(s.clone())),
                    Value::Number(n) => {
                        let id = n
                            .as_u64()
                            .and_then(|t| u32::try_from(t).ok())
                            .ok_or_else(|| format!("prompt: {n} is not a token id"))?;
                        match out.last_mut() {
                            Some(PromptPart::Tokens(t)) => t.push(id),
                            _ => out.push(PromptPart::Tokens(vec![id])),
                        }
                    }
                    _ => return Err(SHAPES.into()),
                }
            }
            Ok(out)
        };
        // llama-server's reading: numbers only, or numbers and strings
        // mixed, are one prompt; a list of strings is several prompts.
        let one = |a: &[Value]| {
            a.iter()
                .all(|v| matches!(v, Value::Number(_) | Value::String(_)))
                && a.iter().any(Value::is_number)
        };
        match &self.prompt {
            Value::String(s) => Ok(vec![PromptPart::Text(s.clone())]),
            Value::Array(a) if one(a) => parts(a),
            Value::Array(a) if a.len() == 1 => match &a[0] {
                Value::String(s) => Ok(vec![PromptPart::Text(s.clone())]),
                Value::Array(inner) if one(inner) => parts(inner),
                _ => Err(SHAPES.into()),
            },
            Value::Array(a) if a.len() > 1 => Err(
                "prompt: one prompt per request (a list of several prompts is not supported)"
                    .into(),
            ),
            _ => Err(SHAPES.into()),
        }
    }
}

/// At most 64 characters of user text, for messages.
pub fn truncate(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> ChatRequest {
        serde_json::from_str(body).unwrap()
    }

    #[test]
    fn chat_fields() {
        let r = chat(
            r#"{"messages": [{"role": "developer", "content": "S"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
                "max_tokens": 5, "max_completion_tokens": 7, "temperature": 0, "stop": "x",
                "seed": 3, "logprobs": true, "top_logprobs": 2, "user": "ignored"}"#,
        );
        let m = r.messages().unwrap();
        assert_eq!(m, vec![Message::system("S"), Message::user("a\nb")]);
        let s = r.settings(&Defaults::default(), 99).unwrap();
        assert_eq!(s.request.max_tokens, Some(7));
        assert_eq!(s.request.params.seed, 3);
        assert_eq!(s.request.params.temp, 0.0);
        assert_eq!(s.request.stop, vec!["x".to_string()]);
        assert_eq!(s.request.top_logprobs, Some(2));
        // top_k -1 (or 0) keeps every token, as --top-k does.
        let off = chat(r#"{"messages": [{"role": "user", "content": "hi"}], "top_k": -1}"#);
        assert_eq!(
            off.settings(&Defaults::default(), 0)
                .unwrap()
                .request
                .params
                .top_k,
            0
        );
    }

    #[test]
    fn server_defaults_fill_what_a_request_leaves_out() {
        let d = Defaults {
            params: SamplingParams {
                temp: 0.0,
                top_k: 7,
                seed: 5,
                ..Default::default()
            },
            fixed_seed: true,
            max_tokens: Some(3),
        };
        // One user message plus `extra` fields, with the server's defaults
        // `defaults` and a drawn seed of 99.
        let settings = |defaults: &Defaults, extra: &str| {
            chat(&format!(
                r#"{{"messages": [{{"role": "user", "content": "hi"}}]{extra}}}"#
            ))
            .settings(defaults, 99)
        };
        let s = settings(&d, "").unwrap();
        let p = &s.request.params;
        assert_eq!((p.temp, p.top_k, p.seed), (0.0, 7, 5));
        assert_eq!(s.request.max_tokens, Some(3));
        let s = settings(&d, r#", "seed": -1, "temperature": 0.5, "max_tokens": 2"#).unwrap();
        let p = &s.request.params;
        assert_eq!((p.temp, p.top_k, p.seed), (0.5, 7, 99));
        assert_eq!(s.request.max_tokens, Some(2));
        // The server's -n caps a request's own value, -1 (no limit) too,
        // as llama-server's; n_predict is max_tokens' other spelling.
        let s = settings(&d, r#", "n_predict": -1, "repeat_last_n": -1"#).unwrap();
        assert_eq!(s.request.max_tokens, Some(3));
        assert_eq!(s.request.params.repeat_last_n, usize::MAX);
        let s = settings(&d, r#", "n_predict": 4"#).unwrap();
        assert_eq!(s.request.max_tokens, Some(3));
        // Without a server -n, -1 is no limit.
        let s = settings(&Defaults::default(), r#", "max_tokens": -1"#).unwrap();
        assert_eq!(s.request.max_tokens, None);
        for (body, needle) in [
            (r#", "max_tokens": 0"#, "at least 1, or -1"),
            (r#", "max_tokens": -3"#, "at least 1, or -1"),
            (r#", "repeat_last_n": -2"#, "or -1 for the whole history"),
            (r#", "mirostat": 2"#, "mirostat"),
            (r#", "typical_p": 0.5"#, "typical"),
        ] {
            let e = settings(&d, body).err().unwrap();
            assert!(e.contains(needle), "{body}: {e}");
        }
        // Their "off" values are fine.
        assert!(settings(&d, r#", "mirostat": 0, "typical_p": 1.0"#).is_ok());
        // Without a server seed, each request draws one.
        let s = settings(&Defaults::default(), "").unwrap();
        assert_eq!(s.request.params.seed, 99);
    }

    #[test]
    fn refusals() {
        let bad = |body: &str| {
            let r = chat(body);
            r.settings(&Defaults::default(), 0)
                .err()
                .or_else(|| r.messages().err())
                .unwrap()
        };
        let base = r#""messages": [{"role": "user", "content": "hi"}]"#;
        assert!(bad(&format!("{{{base}, \"n\": 2}}")).contains("n must be 1"));
        assert!(bad(&format!(
            "{{{base}, \"tools\": [{{\"type\": \"function\"}}]}}"
        ))
        .contains("tool"));
        assert!(bad(&format!(
            "{{{base}, \"response_format\": {{\"type\": \"json_object\"}}}}"
        ))
        .contains("response format"));
        assert!(bad(&format!("{{{base}, \"temperature\": 1e9, \"top_p\": 3}}")).contains("top_p"));
        assert!(bad(&format!("{{{base}, \"top_logprobs\": 2}}")).contains("logprobs"));
        assert!(bad(r#"{"messages": [{"role": "tool", "content": "x"}]}"#).contains("role"));
        assert!(
            bad(r#"{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#)
                .contains("image_url")
        );
        assert!(bad(r#"{"messages": []}"#).contains("empty"));
        let long = "x".repeat(MAX_STOP_BYTES + 1);
        assert!(bad(&format!("{{{base}, \"stop\": [\"a\", \"{long}\"]}}")).contains("bytes"));
        let many = vec!["\"s\""; MAX_STOPS + 1].join(",");
        assert!(bad(&format!("{{{base}, \"stop\": [{many}]}}")).contains("at most"));
        let at_limit = "x".repeat(MAX_STOP_BYTES);
        assert!(chat(&format!("{{{base}, \"stop\": \"{at_limit}\"}}"))
            .settings(&Defaults::default(), 0)
            .is_ok());
        // Neutral values of those fields are fine.
        let ok = chat(&format!(
            "{{{base}, \"n\": 1, \"tools\": [], \"response_format\": {{\"type\": \"text\"}}, \"logit_bias\": {{}}}}"
        ));
        assert!(ok.settings(&Defaults::default(), 0).is_ok());
        // Wrong types are parse errors.
        assert!(serde_json::from_str::<ChatRequest>(&format!(
            "{{{base}, \"temperature\": \"hot\"}}"
        ))
        .is_err());
        assert!(serde_json::from_str::<ChatRequest>(r#"{"messages": "hi"}"#).is_err());
    }

    #[test]
    fn completion_prompts() {
        let p = |v: &str| {
            let r: CompletionRequest =
                serde_json::from_str(&format!("{{\"prompt\": {v}}}")).unwrap();
            r.prompt()
        };
        assert!(matches!(p("\"hi\""), Ok(Prompt::Text(t)) if t == "hi"));
        assert!(matches!(p("[1, 2]"), Ok(Prompt::Tokens(t)) if t == vec![1, 2]));
        assert!(matches!(p("[[5]]"), Ok(Prompt::Tokens(t)) if t == vec![5]));
        assert!(matches!(p("[\"a\"]"), Ok(Prompt::Text(t)) if t == "a"));
        assert!(p("[\"a\", \"b\"]").is_err());
        assert!(p("[-1]").is_err());
        assert!(p("[]").is_err());
        assert!(p("3").is_err());
    }

    #[test]
    fn llama_server_prompts_and_n_predict() {
        let req = |v: &str| -> NativeRequest { serde_json::from_str(v).unwrap() };
        let p = |v: &str| req(&format!("{{\"prompt\": {v}}}")).prompt();
        use PromptPart::{Text, Tokens};
        assert_eq!(p("\"hi\""), Ok(vec![Text("hi".into())]));
        assert_eq!(p("[1, 2]"), Ok(vec![Tokens(vec![1, 2])]));
        // Ids and text mixed, in order; runs of ids kept together.
        assert_eq!(
            p("[1, 2, \"a\", 3]"),
            Ok(vec![Tokens(vec![1, 2]), Text("a".into()), Tokens(vec![3])])
        );
        assert_eq!(p("[\"a\", 7]"), Ok(vec![Text("a".into()), Tokens(vec![7])]));
        assert_eq!(
            p("[[\"a\", 7]]"),
            Ok(vec![Text("a".into()), Tokens(vec![7])])
        );
        assert_eq!(p("[\"a\"]"), Ok(vec![Text("a".into())]));
        // Strings alone are several prompts (llama-server's reading).
        assert!(p("[\"a\", \"b\"]").unwrap_err().contains("one prompt"));
        assert!(p("[[1], [2]]").unwrap_err().contains("one prompt"));
        assert!(p("[1, -2]").unwrap_err().contains("-2"));
        assert!(p("[1, 2.5]").is_err());
        assert!(p("[]").is_err());
        assert!(p("{}").is_err());
        // n_predict 0 evaluates the prompt only; -1 is no limit; n_probs
        // asks for that many alternatives and is checked under its name.
        let d = Defaults::default();
        let s = |v: &str| req(&format!("{{\"prompt\": \"a\", {v}}}")).settings(&d, 1);
        assert_eq!(s("\"n_predict\": 0").unwrap().request.max_tokens, Some(0));
        assert_eq!(s("\"n_predict\": -1").unwrap().request.max_tokens, None);
        assert_eq!(s("\"n_probs\": 3").unwrap().request.top_logprobs, Some(3));
        assert_eq!(s("\"n_probs\": 0").unwrap().request.top_logprobs, None);
        assert!(s("\"n_probs\": 21").err().unwrap().starts_with("n_probs"));
        assert!(s("\"n_predict\": -5")
            .err()
            .unwrap()
            .starts_with("n_predict = -5: must be 0 or more, or -1"));
        assert!(s("\"xtc_probability\": 0.5").err().unwrap().contains("XTC"));
        assert!(s("\"top_n_sigma\": 1.5")
            .err()
            .unwrap()
            .contains("top-n-sigma"));
        assert!(s("\"top_n_sigma\": -1, \"logit_bias\": []").is_ok());
        // samplers: llama.cpp's default order, as letters or names, fits
        // tern's; a list that leaves out a step this request turns on, or
        // reorders tern's steps, is refused.
        for ok in [
            r#""samplers": "edkypmxt""#,
            r#""samplers": "dkypmxt""#,
            r#""samplers": ["penalties", "dry", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature"]"#,
            r#""samplers": ["temperature"], "top_k": 0, "top_p": 1, "min_p": 0"#,
            r#""samplers": "k", "top_p": 1, "min_p": 0, "temperature": 1"#,
        ] {
            assert!(s(ok).is_ok(), "{ok}: {:?}", s(ok).err());
        }
        for (bad, needle) in [
            (r#""samplers": ["temperature"]"#, "leaves out top_k"),
            (r#""samplers": "tk""#, "in that order"),
            (r#""samplers": "kkpmt""#, "each once"),
            (r#""samplers": "kpmtz""#, "\"z\" is not a sampler"),
            (r#""samplers": 5"#, "samplers:"),
            (
                r#""samplers": "kpm", "temperature": 0.7"#,
                "leaves out temperature",
            ),
            (
                r#""samplers": "kpmt", "repeat_penalty": 1.1"#,
                "leaves out penalties",
            ),
        ] {
            let e = s(bad).err().unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }
}
