//! Chat: the model's Jinja chat template rendered with minijinja, the
//! conversation, and a [`Session`] that keeps the KV cache across turns.
//!
//! Every turn the whole conversation is rendered and tokenized again; the
//! longest common prefix with the tokens already in the KV cache is kept and
//! only the rest is evaluated. That makes multi-turn chat cheap (each turn
//! prefills only the new message, plus the few tokens where the re-tokenized
//! reply differs from what the model generated) and makes every change to the
//! history (`/system`, `/load`, dropping old turns when the context fills)
//! correct by construction: whatever no longer matches is re-prefilled.

use crate::model::generate::{reusable_prefix, GenStats, Generation, StopReason, TextStream};
use crate::model::sampling::{Sampler, SamplingParams};
use crate::model::{Context, Model};
use crate::tokenizer::Tokenizer;
use anyhow::{anyhow, bail, Result};
use minijinja::value::{from_args, Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// One chat message, as the templates and the JSON transcripts see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
    pub fn system(content: &str) -> Message {
        Message::new("system", content)
    }
    pub fn user(content: &str) -> Message {
        Message::new("user", content)
    }
    pub fn assistant(content: &str) -> Message {
        Message::new("assistant", content)
    }
}

/// Chat formats `--chat-template NAME` selects (llama.cpp's names), as
/// Jinja sources: `bitnet`, the trained BitNet b1.58 format (turns ended by
/// `<|eot_id|>`; the CLI ends them with the EOS of a vocabulary without
/// that token, as tern's fallback for a file without a template does);
/// `chatml` (`<|im_start|>role\n…<|im_end|>`);
/// `llama3` (`<|start_header_id|>role<|end_header_id|>\n\n…<|eot_id|>`,
/// each content trimmed, as Meta's template does).
pub const NAMED_TEMPLATES: &[(&str, &str)] = &[
    ("bitnet", crate::model::BITNET_CHAT_TEMPLATE),
    (
        "chatml",
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    ),
    (
        "llama3",
        "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
    ),
];

/// Most bytes of a chat template given on the command line or in a file
/// (the largest templates in use, tool-calling ones, are ~20 KB).
pub const MAX_TEMPLATE_BYTES: usize = 1 << 20;

/// The Jinja source of `--chat-template SPEC`: a name of
/// [`NAMED_TEMPLATES`], or a template itself (anything with `{{` or `{%`),
/// compiled here so that a mistake is reported before a model loads.
/// Errors: an unknown name (the names listed), a template over
/// [`MAX_TEMPLATE_BYTES`] or one that does not compile.
pub fn template_source(spec: &str) -> Result<String> {
    if let Some((_, src)) = NAMED_TEMPLATES.iter().find(|(n, _)| *n == spec.trim()) {
        return Ok(src.to_string());
    }
    if !(spec.contains("{{") || spec.contains("{%")) {
        let names: Vec<&str> = NAMED_TEMPLATES.iter().map(|(n, _)| *n).collect();
        bail!(
            "{} is neither a chat template name ({}) nor a Jinja template",
            crate::untrusted::quoted(spec),
            names.join(", ")
        );
    }
    checked_template(spec.to_string())
}

/// The special-token markers (`<|name|>`: at most 64 bytes, the name of
/// ASCII letters, digits and `_-.:`) written
/// literally in a template's text that are not tokens of `tok`: they would
/// be read as plain text, so the model never sees the turn structure the
/// template means (e.g. `--chat-template chatml` on a model without
/// `<|im_start|>`). Each listed once, in order of appearance.
pub fn missing_markers(source: &str, tok: &Tokenizer) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find("<|") {
        let tail = &rest[at..];
        match tail.find("|>") {
            Some(end)
                if end > 2
                    && end <= 64
                    && tail[2..end]
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c)) =>
            {
                let marker = &tail[..end + 2];
                if tok.find_token(marker).is_none() && !out.iter().any(|m| m == marker) {
                    out.push(marker.to_string());
                }
                rest = &tail[end + 2..];
            }
            _ => rest = &tail[2..],
        }
    }
    out
}

/// `source` as a chat template: not blank, at most
/// [`MAX_TEMPLATE_BYTES`], compiling, and rendering a one-message
/// conversation (as llama-server test-renders its template at start), so
/// that a template that cannot render fails here rather than at every
/// request.
pub fn checked_template(source: String) -> Result<String> {
    if source.trim().is_empty() {
        bail!("the chat template is empty");
    }
    if source.len() > MAX_TEMPLATE_BYTES {
        bail!(
            "the chat template has {} bytes; at most {}",
            source.len(),
            MAX_TEMPLATE_BYTES
        );
    }
    ChatTemplate::new(&source, "<s>", "</s>")?
        .render(&[Message::user("Hello")], true)
        .map_err(|e| anyhow!("the chat template does not render a user message: {e:#}"))?;
    Ok(source)
}

/// A compiled chat template plus the special-token texts it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

const TEMPLATE_NAME: &str = "chat";

impl ChatTemplate {
    /// Compile `source` the way Hugging Face renders chat templates
    /// (`trim_blocks` and `lstrip_blocks` on), with `raise_exception`, a
    /// `tojson` filter and the common Python string/dict methods available.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| anyhow!("chat template syntax: {}", e))?,
        );
        env.set_unknown_method_callback(python_method);
        env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_filter("tojson", tojson);
        env.add_filter("join", join);
        env.add_filter("trim", trim);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| {
                anyhow!(
                    "the chat template does not compile: {}",
                    crate::untrusted::one_line(&e.to_string())
                )
            })?;
        Ok(ChatTemplate {
            env,
            source: source.to_string(),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// The model's template (`model.chat_template`: the file's own, with the
    /// official-GGUF placeholder already replaced by the trained BitNet format,
    /// or the built-in BitNet format when the file has none).
    pub fn for_model(model: &Model) -> Result<ChatTemplate> {
        let tok = &model.tokenizer;
        let text = |id: Option<u32>| id.map_or("", |i| tok.token_text(i)).to_string();
        ChatTemplate::new(&model.chat_template, &text(tok.bos()), &text(tok.eos()))
    }

    /// The Jinja source the template was compiled from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The prompt text for `messages`; with `add_generation_prompt` it ends
    /// where the assistant's reply begins.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        // The template comes from the model file: give this render a budget
        // so that a loop that never ends or data that grows without bound is
        // an error, not a hang or an exhausted memory.
        let fuel = render_fuel(messages);
        let mut env = self.env.clone();
        env.set_fuel(Some(fuel));
        let tmpl = env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| anyhow!("chat template: {}", e))?;
        let ctx = minijinja::context! {
            messages => Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        };
        // The output goes to a writer that stops at the budget's bytes, so
        // even a value that minijinja prints before paying for it (a lazily
        // repeated list) cannot grow the prompt past that.
        let mut out = CappedWriter {
            bytes: Vec::new(),
            cap: usize::try_from(fuel.saturating_mul(FUEL_BYTES)).unwrap_or(usize::MAX),
            hit: false,
        };
        let done = tmpl.render_captured_to(ctx, &mut out).map(drop);
        done.map_err(|e| {
            if e.kind() == ErrorKind::OutOfFuel || out.hit {
                anyhow!(
                    "chat template: rendering {} message(s) ran past its budget of {} steps \
                     (about {} MiB of data); does the template loop without end?",
                    messages.len(),
                    fuel,
                    fuel.saturating_mul(FUEL_BYTES) >> 20
                )
            } else {
                anyhow!(
                    "chat template: {}",
                    crate::untrusted::one_line(&e.to_string())
                )
            }
        })?;
        String::from_utf8(out.bytes).map_err(|_| anyhow!("chat template: the output is not UTF-8"))
    }

    /// The prompt tokens for `messages`: [`ChatTemplate::render`], then
    /// [`tokenize_prompt`]. The one path from messages to tokens that
    /// `tern chat` and `tern serve` share.
    pub fn prompt_tokens(
        &self,
        tok: &Tokenizer,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        tokenize_prompt(tok, &self.render(messages, add_generation_prompt)?)
    }
}

/// Fuel every render gets whatever the messages (minijinja's unit: about one
/// instruction, or [`FUEL_BYTES`] bytes of data created; see
/// `Environment::set_fuel`). 1 M: a few hundred milliseconds, 64 MiB.
const FUEL_BASE: u64 = 1_000_000;
/// Fuel added per message. The BitNet and Llama 3 formats spend 31 per
/// message (measured with minijinja 3.1), so templates 30× as busy still fit.
const FUEL_PER_MESSAGE: u64 = 1_000;
/// Content bytes per unit of added fuel. Those formats spend about 3 fuel per
/// 64 bytes of content; 1 per 8 bytes (8 per 64) leaves them 2.7× that, about
/// eight copies of the content, before the base is touched.
const CONTENT_BYTES_PER_FUEL: u64 = 8;
/// Bytes of created data that cost one fuel (minijinja 3.1's accounting).
const FUEL_BYTES: u64 = 64;

/// The fuel budget of one render of `messages`: [`FUEL_BASE`], plus
/// [`FUEL_PER_MESSAGE`] per message and one per [`CONTENT_BYTES_PER_FUEL`]
/// bytes of content. It bounds both the time a render takes and the memory the
/// template can allocate (fuel × [`FUEL_BYTES`]), in proportion to the input.
fn render_fuel(messages: &[Message]) -> u64 {
    let count = u64::try_from(messages.len()).unwrap_or(u64::MAX);
    let bytes = messages.iter().fold(0u64, |acc, m| {
        let len = u64::try_from(m.role.len().saturating_add(m.content.len())).unwrap_or(u64::MAX);
        acc.saturating_add(len)
    });
    FUEL_BASE
        .saturating_add(count.saturating_mul(FUEL_PER_MESSAGE))
        .saturating_add(bytes / CONTENT_BYTES_PER_FUEL)
}

/// Tokenize a rendered prompt: special-token texts (`<|begin_of_text|>`,
/// `<|eot_id|>`, ...) become their ids, and BOS appears exactly once at the
/// start (templates usually write it themselves; it is added only when the
/// vocabulary wants BOS and the text does not begin with it).
pub fn tokenize_prompt(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    Ok(tok.encode_prompt(text)?.0)
}

/// The chat history: an optional system prompt and the user/assistant messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conversation {
    pub system: Option<String>,
    pub turns: Vec<Message>,
}

impl Conversation {
    pub fn new(system: Option<String>) -> Conversation {
        Conversation {
            system,
            turns: Vec::new(),
        }
    }

    /// Everything the template sees: the system message first (if any).
    pub fn messages(&self) -> Vec<Message> {
        let mut v = Vec::with_capacity(self.turns.len() + 1);
        if let Some(s) = &self.system {
            v.push(Message::system(s));
        }
        v.extend(self.turns.iter().cloned());
        v
    }

    /// Drop the oldest turn (a user message and the replies after it), never
    /// the system prompt nor the last user message. False when nothing can go.
    pub fn drop_oldest_turn(&mut self) -> bool {
        let next_user = self
            .turns
            .iter()
            .enumerate()
            .skip(1)
            .find(|(_, m)| m.role == "user")
            .map(|(i, _)| i);
        match next_user {
            Some(i) => {
                self.turns.drain(..i);
                true
            }
            None => false,
        }
    }

    /// The transcript as a JSON array of `{"role", "content"}` messages.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.messages()).unwrap_or_else(|_| "[]".to_string())
    }

    /// Parse a transcript written by [`Conversation::to_json`] (or an object
    /// with a `messages` array). Roles must be system (first only), user or
    /// assistant.
    pub fn from_json(text: &str) -> Result<Conversation> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Transcript {
            List(Vec<Message>),
            Object { messages: Vec<Message> },
        }
        let msgs = match serde_json::from_str::<Transcript>(text) {
            Ok(Transcript::List(m)) | Ok(Transcript::Object { messages: m }) => m,
            Err(_) => bail!(
                "not a chat transcript (expected a JSON array of {{\"role\", \"content\"}} messages)"
            ),
        };
        let mut conv = Conversation::default();
        for (i, m) in msgs.into_iter().enumerate() {
            match m.role.as_str() {
                "system" if i == 0 => conv.system = Some(m.content),
                "system" => bail!("message {}: a system message may only come first", i + 1),
                "user" | "assistant" => conv.turns.push(m),
                other => bail!(
                    "message {}: unknown role {} (expected system, user or assistant)",
                    i + 1,
                    crate::untrusted::quoted(other)
                ),
            }
        }
        Ok(conv)
    }
}

/// A turn ready to generate: the full prompt and how much of it is cached.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The whole conversation, rendered and tokenized, ending with the generation prompt.
    pub tokens: Vec<u32>,
    /// Leading tokens already in the KV cache (only the rest is evaluated).
    pub reused: usize,
    /// Oldest turns dropped to make room.
    pub dropped_turns: usize,
}

/// What one reply produced.
#[derive(Debug, Clone)]
pub struct Reply {
    pub text: String,
    pub stats: GenStats,
}

/// A chat with one model: template, conversation, sampler and the KV cache.
pub struct Session<'m> {
    pub model: &'m Model,
    pub template: ChatTemplate,
    pub conv: Conversation,
    pub sampler: Sampler,
    /// Most tokens per reply (None: until end of turn or a full context).
    pub n_predict: Option<usize>,
    ctx: Context<'m>,
    /// The token ids whose keys/values are in the cache (`len == ctx.n_past`).
    cached: Vec<u32>,
    /// Statistics of the last reply and of all replies.
    pub last: Option<GenStats>,
    pub total: GenStats,
    pub replies: usize,
    /// What the user should know about chatting with this model (e.g. that
    /// it is a base model without a chat template).
    pub warnings: Vec<String>,
}

/// A warning when `model` has no chat template of its own and no
/// `<|eot_id|>` token: a base model (e.g. a SentencePiece 1bitLLM model),
/// chatted with through [`crate::model::default_chat_template`].
pub fn base_model_warning(model: &Model) -> Option<String> {
    let tok = &model.tokenizer;
    if model.gguf.get_str("tokenizer.chat_template").is_some()
        || tok.find_token("<|eot_id|>").is_some()
        // A template given with --chat-template.
        || model.chat_template != crate::model::default_chat_template(tok)
    {
        return None;
    }
    let end = tok.eos().map_or_else(
        || "(none: the vocabulary has no EOS)".to_string(),
        |e| crate::untrusted::quoted(tok.token_text(e)).to_string(),
    );
    Some(format!(
        "this model has no chat template and no <|eot_id|> token, so it is probably a base model not trained to chat; using the System:/User:/Assistant: format with turns ended by {}",
        end
    ))
}

impl<'m> Session<'m> {
    pub fn new(
        model: &'m Model,
        n_ctx: usize,
        kv_f32: bool,
        params: SamplingParams,
        system: Option<String>,
    ) -> Result<Session<'m>> {
        if n_ctx < 2 {
            bail!("the context size must be at least 2 tokens");
        }
        params.validate()?;
        Ok(Session {
            model,
            template: ChatTemplate::for_model(model)?,
            conv: Conversation::new(system),
            sampler: Sampler::new(params),
            n_predict: Some(256),
            ctx: Context::try_new(model, n_ctx, kv_f32)?,
            cached: Vec::new(),
            last: None,
            total: GenStats::default(),
            replies: 0,
            warnings: base_model_warning(model).into_iter().collect(),
        })
    }

    /// Most prompt tokens per forward pass (see [`Context::n_batch`]).
    pub fn set_batch(&mut self, n: usize) {
        self.ctx.n_batch = n;
    }

    pub fn n_ctx(&self) -> usize {
        self.ctx.n_ctx()
    }

    /// Tokens currently in the KV cache.
    pub fn n_cached(&self) -> usize {
        self.ctx.n_past()
    }

    /// Forget the conversation (the system prompt stays) and empty the cache.
    pub fn reset(&mut self) {
        self.conv.turns.clear();
        self.clear_cache();
    }

    /// Empty the KV cache; the next turn prefills the whole conversation.
    pub fn clear_cache(&mut self) {
        self.ctx.truncate(0);
        self.cached.clear();
    }

    /// The conversation as tokens, optionally with the generation prompt.
    pub fn tokens(&self, add_generation_prompt: bool) -> Result<Vec<u32>> {
        self.template.prompt_tokens(
            &self.model.tokenizer,
            &self.conv.messages(),
            add_generation_prompt,
        )
    }

    /// Room kept free for the reply when deciding whether old turns must go.
    fn reply_room(&self) -> usize {
        let n = self.ctx.n_ctx();
        match self.n_predict {
            Some(p) => p.min(n / 2),
            None => n / 4,
        }
    }

    /// Add the user's message and work out what to evaluate: drop the oldest
    /// turns while the prompt and the reply room do not fit the context, and
    /// keep the cached prefix. On error the message is not kept.
    pub fn prepare(&mut self, user: &str) -> Result<Prepared> {
        self.conv.turns.push(Message::user(user));
        let r = self.fit();
        if r.is_err() {
            self.conv.turns.pop();
        }
        r
    }

    /// Like [`Session::prepare`] for a conversation that already ends with
    /// the user's message (e.g. one just loaded).
    pub fn fit(&mut self) -> Result<Prepared> {
        let n_ctx = self.ctx.n_ctx();
        let room = self.reply_room();
        let mut dropped = 0;
        let saved = self.conv.clone();
        let tokens = loop {
            let t = match self.tokens(true) {
                Ok(t) => t,
                Err(e) => {
                    self.conv = saved;
                    return Err(e);
                }
            };
            if t.len() + room <= n_ctx {
                break t;
            }
            if self.conv.drop_oldest_turn() {
                dropped += 1;
                continue;
            }
            if t.len() < n_ctx {
                break t; // less room for the reply than wished, but some
            }
            self.conv = saved;
            bail!(
                "the message needs {} tokens with the system prompt and the template, but the context holds {} (raise -c)",
                t.len(),
                n_ctx
            );
        };
        let reused = reusable_prefix(&self.cached, &tokens);
        self.ctx.truncate(reused);
        self.cached.truncate(reused);
        Ok(Prepared {
            tokens,
            reused,
            dropped_turns: dropped,
        })
    }

    /// Evaluate the new part of the prompt and sample the reply. `on_text`
    /// gets the reply as it is produced (always whole UTF-8 characters) and
    /// returns false to stop. The reply (partial if stopped) joins the history.
    pub fn generate(
        &mut self,
        prep: &Prepared,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<Reply> {
        let n_ctx = self.ctx.n_ctx();
        let left = n_ctx.saturating_sub(prep.tokens.len());
        let n_predict = self.n_predict.map_or(left, |p| p.min(left));
        let tok = &self.model.tokenizer;
        let mut g = Generation::new(prep.tokens.clone(), n_predict, false)?;
        let reused = g.sync(&self.cached);
        debug_assert_eq!(reused, prep.reused);
        let mut stream = TextStream::default();
        let mut text = String::new();
        let r = g.run(&mut self.ctx, &mut self.sampler, |t| {
            let piece = stream.push(tok, t);
            text.push_str(&piece);
            on_text(&piece)
        });
        let mut stats = match r {
            Ok(s) => s,
            Err(e) => {
                // The cache state is unknown: start over next time.
                self.clear_cache();
                self.conv.turns.pop();
                return Err(e);
            }
        };
        let rest = stream.finish();
        if !rest.is_empty() {
            text.push_str(&rest);
            on_text(&rest);
        }
        if stats.stop == StopReason::Length && prep.tokens.len() + stats.gen_tokens >= n_ctx {
            stats.stop = StopReason::ContextFull;
        }
        self.cached = g.evaluated().to_vec();
        self.conv.turns.push(Message::assistant(&text));
        self.total.prompt_tokens += stats.prompt_tokens;
        self.total.prompt_secs += stats.prompt_secs;
        self.total.gen_tokens += stats.gen_tokens;
        self.total.gen_secs += stats.gen_secs;
        self.replies += 1;
        self.last = Some(stats.clone());
        Ok(Reply { text, stats })
    }
}

/// The rendered prompt, refusing to grow past `cap` bytes (`hit` says it
/// refused).
struct CappedWriter {
    bytes: Vec<u8>,
    cap: usize,
    hit: bool,
}

impl std::io::Write for CappedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() > self.cap.saturating_sub(self.bytes.len()) {
            self.hit = true;
            return Err(std::io::Error::other("over the render budget"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The widest `tojson(indent=N)` a template may ask for.
const MAX_JSON_INDENT: usize = 64;

/// Bytes of serialized JSON that cost one fuel: minijinja charges walking a
/// value 16 of its 64 units a byte, as serializing is slower than copying.
const JSON_BYTES_PER_FUEL: u64 = 4;

/// The `tojson` filter of Hugging Face templates (`indent` honoured up to
/// [`MAX_JSON_INDENT`]; other keyword arguments such as `ensure_ascii`
/// accepted and ignored), paying for its output as it grows.
fn tojson(state: &State, value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    for k in ["ensure_ascii", "separators", "sort_keys"] {
        let _: Option<Value> = kwargs.get(k)?;
    }
    kwargs.assert_all_used()?;
    let mut out = FuelBuffer::new(state, JSON_BYTES_PER_FUEL);
    let done = match indent {
        Some(n) if n > MAX_JSON_INDENT => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: indent {n} is over {MAX_JSON_INDENT}"),
            ))
        }
        Some(n) => {
            let pad = vec![b' '; n];
            let fmt = serde_json::ser::PrettyFormatter::with_indent(&pad);
            value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, fmt))
        }
        None => value.serialize(&mut serde_json::Serializer::with_formatter(
            &mut out,
            PySeparators,
        )),
    };
    if let Err(e) = done {
        // Running out of fuel inside the serializer stays OutOfFuel.
        return Err(out
            .error
            .take()
            .unwrap_or_else(|| Error::new(ErrorKind::InvalidOperation, e.to_string())));
    }
    Ok(Value::from_safe_string(out.into_string()))
}

/// Output that a filter or method builds on behalf of a template: each byte
/// is paid for with fuel ([`State::consume_fuel`], one per `bytes_per_fuel`)
/// before it is stored, so what a template makes tern allocate stays within
/// the render's budget. minijinja charges its own operators this way but a
/// custom filter only for the value it returns, after building it.
struct FuelBuffer<'a, 's> {
    state: &'a State<'a, 's>,
    bytes: Vec<u8>,
    bytes_per_fuel: u64,
    /// Bytes stored but not paid for yet (below `bytes_per_fuel`).
    unpaid: u64,
    /// The fuel error, kept for the caller when a writer API hides it.
    error: Option<Error>,
}

impl<'a, 's> FuelBuffer<'a, 's> {
    fn new(state: &'a State<'a, 's>, bytes_per_fuel: u64) -> Self {
        FuelBuffer {
            state,
            bytes: Vec::new(),
            bytes_per_fuel: bytes_per_fuel.max(1),
            unpaid: 0,
            error: None,
        }
    }

    /// Pay for `n` more bytes.
    fn pay(&mut self, n: usize) -> Result<(), Error> {
        let total = self
            .unpaid
            .saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
        self.unpaid = total % self.bytes_per_fuel;
        self.state.consume_fuel(total / self.bytes_per_fuel)
    }

    fn push(&mut self, b: &[u8]) -> Result<(), Error> {
        self.pay(b.len())?;
        self.bytes.extend_from_slice(b);
        Ok(())
    }

    /// The text (every piece written was whole UTF-8, so no copy is made).
    fn into_string(self) -> String {
        String::from_utf8(self.bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

impl std::io::Write for FuelBuffer<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.push(buf) {
            Ok(()) => Ok(buf.len()),
            Err(e) => {
                self.error = Some(e);
                Err(std::io::Error::other("out of fuel"))
            }
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl std::fmt::Write for FuelBuffer<'_, '_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.push(s.as_bytes()).map_err(|e| {
            self.error = Some(e);
            std::fmt::Error
        })
    }
}

/// Jinja's `join(d="", attribute=None)`, paying for its output as it grows.
/// It replaces minijinja's own: with an empty separator that one charges a
/// list of repeated strings (`[s] * n`, created lazily for free) per item, not
/// per byte, so a template could make it build gigabytes.
fn join(
    state: &State,
    value: &Value,
    d: Option<Value>,
    attribute: Option<Value>,
    kwargs: Kwargs,
) -> Result<Value, Error> {
    let text = |v: Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
    let d = match d {
        Some(d) => Some(d),
        None => kwargs.get::<Option<Value>>("d")?,
    };
    let attribute = match attribute {
        Some(a) => Some(a),
        None => kwargs.get::<Option<Value>>("attribute")?,
    };
    kwargs.assert_all_used()?;
    let d = d.map(text).unwrap_or_default();
    let attribute = attribute.map(text);
    let mut out = FuelBuffer::new(state, FUEL_BYTES);
    for (i, item) in value.try_iter()?.checked().enumerate() {
        state.consume_fuel(1)?;
        let item = match &attribute {
            Some(path) => attribute_path(state, item?, path)?,
            None => item?,
        };
        if i > 0 {
            out.push(d.as_bytes())?;
        }
        match item.as_str() {
            Some(s) => out.push(s.as_bytes())?,
            None => {
                use std::fmt::Write;
                if write!(out, "{item}").is_err() {
                    return Err(out.error.take().unwrap_or_else(|| {
                        Error::new(ErrorKind::WriteFailure, "join: formatting failed")
                    }));
                }
            }
        }
    }
    Ok(Value::from(out.into_string()))
}

/// `value.a.0.b` for the dotted `path` "a.0.b", as Jinja's `attribute=`
/// arguments read it: a part of digits only is an index, anything else an
/// attribute. Indexing a lazy iterable walks it from the start, which
/// minijinja does not charge for, so that walk is paid here first.
fn attribute_path(state: &State, value: Value, path: &str) -> Result<Value, Error> {
    path.split('.').try_fold(value, |v, part| {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return v.get_attr(part);
        }
        let Ok(i) = part.parse::<usize>() else {
            return Ok(Value::UNDEFINED);
        };
        if v.kind() == ValueKind::Iterable {
            let walk = v.len().map_or(i, |n| n.min(i));
            state.consume_fuel(u64::try_from(walk / 2).unwrap_or(u64::MAX))?;
        }
        v.get_item(&Value::from(i))
    })
}

/// Python's `json.dumps` default separators: `", "` and `": "`.
struct PySeparators;

impl serde_json::ser::Formatter for PySeparators {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

/// Python string and dict methods that chat templates call (`.strip()`,
/// `.startswith()`, `.split()`, `.items()`, `.get()`, ...).
fn python_method(
    state: &mut State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    if let Some(s) = value.as_str() {
        return string_method(state, s, method, args);
    }
    if value.kind() == ValueKind::Map {
        match method {
            "items" => {
                let _: () = from_args(args)?;
                return state.apply_filter("items", std::slice::from_ref(value));
            }
            "keys" => {
                let _: () = from_args(args)?;
                return Ok(Value::from(value.try_iter()?.collect::<Vec<_>>()));
            }
            "values" => {
                let _: () = from_args(args)?;
                let mut v = Vec::new();
                for k in value.try_iter()? {
                    v.push(value.get_item(&k)?);
                }
                return Ok(Value::from(v));
            }
            "get" => {
                let (key, default): (Value, Option<Value>) = from_args(args)?;
                let v = value.get_item(&key)?;
                return Ok(if v.is_undefined() {
                    default.unwrap_or(Value::from(()))
                } else {
                    v
                });
            }
            _ => {}
        }
    }
    Err(Error::from(ErrorKind::UnknownMethod))
}

fn string_method(state: &State, s: &str, method: &str, args: &[Value]) -> Result<Value, Error> {
    let v = match method {
        "strip" | "lstrip" | "rstrip" => {
            let (chars,): (Option<&str>,) = from_args(args)?;
            let ends = match method {
                "strip" => Ends::Both,
                "lstrip" => Ends::Start,
                _ => Ends::End,
            };
            Value::from(strip_chars(s, chars, ends))
        }
        "startswith" | "endswith" => {
            let (p,): (Value,) = from_args(args)?;
            let test = |p: &str| {
                if method == "startswith" {
                    s.starts_with(p)
                } else {
                    s.ends_with(p)
                }
            };
            // A single prefix or a list/tuple of them, as in Python; each one
            // tried costs a step and the bytes compared.
            let hit = match p.as_str() {
                Some(one) => test(one),
                None => {
                    let mut hit = false;
                    for x in p.try_iter()?.checked() {
                        let x = x?;
                        let Some(x) = x.as_str() else {
                            return Err(Error::new(
                                ErrorKind::InvalidOperation,
                                "expected a string prefix",
                            ));
                        };
                        let compared = u64::try_from(x.len().min(s.len())).unwrap_or(u64::MAX);
                        state.consume_fuel(1 + compared / FUEL_BYTES)?;
                        if test(x) {
                            hit = true;
                            break;
                        }
                    }
                    hit
                }
            };
            Value::from(hit)
        }
        "upper" | "lower" | "title" | "capitalize" => {
            let _: () = from_args(args)?;
            Value::from(match method {
                "upper" => s.to_uppercase(),
                "lower" => s.to_lowercase(),
                "title" => title_case(s),
                _ => {
                    let mut c = s.chars();
                    match c.next() {
                        Some(f) => f
                            .to_uppercase()
                            .chain(c.flat_map(char::to_lowercase))
                            .collect(),
                        None => String::new(),
                    }
                }
            })
        }
        "split" => {
            let (sep, maxsplit): (Option<&str>, Option<i64>) = from_args(args)?;
            let max = maxsplit.and_then(|m| usize::try_from(m).ok());
            if sep == Some("") {
                return Err(Error::new(ErrorKind::InvalidOperation, "empty separator"));
            }
            // Each part becomes a value: pay for them before they exist.
            let parts = match sep {
                Some(sep) => s.matches(sep).count(),
                None => s.split_whitespace().count(),
            };
            let parts = max.map_or(parts, |m| parts.min(m)).saturating_add(1);
            state.consume_fuel(u64::try_from(parts).unwrap_or(u64::MAX))?;
            let parts: Vec<Value> = match sep {
                Some(sep) => match max {
                    Some(m) => s
                        .splitn(m.saturating_add(1), sep)
                        .map(Value::from)
                        .collect(),
                    None => s.split(sep).map(Value::from).collect(),
                },
                None => {
                    let mut out = Vec::new();
                    let mut rest = s.trim_start();
                    while !rest.is_empty() {
                        if max.is_some_and(|m| out.len() == m) {
                            out.push(Value::from(rest));
                            break;
                        }
                        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                        out.push(Value::from(&rest[..end]));
                        rest = rest[end..].trim_start();
                    }
                    out
                }
            };
            Value::from(parts)
        }
        "replace" => {
            let (old, new, count): (&str, &str, Option<i64>) = from_args(args)?;
            // Pay for the result before building it: it can be far longer
            // than `s` (a long `new`, or an empty `old` that matches
            // between every two characters).
            let limit = match count {
                Some(n) if n >= 0 => usize::try_from(n).unwrap_or(usize::MAX),
                _ => usize::MAX,
            };
            let hits = s.matches(old).take(limit).count();
            let len = u64::try_from(s.len().saturating_add(hits.saturating_mul(new.len())))
                .unwrap_or(u64::MAX);
            state.consume_fuel(len / FUEL_BYTES)?;
            Value::from(match count {
                Some(n) if n >= 0 => s.replacen(old, new, usize::try_from(n).unwrap_or(usize::MAX)),
                _ => s.replace(old, new),
            })
        }
        _ => return Err(Error::from(ErrorKind::UnknownMethod)),
    };
    Ok(v)
}

/// Which ends [`strip_chars`] trims.
#[derive(Clone, Copy)]
enum Ends {
    Start,
    End,
    Both,
}

/// Python's `str.strip(chars)` (and `lstrip`/`rstrip`), also Jinja's
/// `trim(chars)`: whitespace, or any of the characters in `chars`. The set
/// is sorted, so a long `chars` costs a binary search per character, not a
/// scan.
fn strip_chars<'s>(s: &'s str, chars: Option<&str>, ends: Ends) -> &'s str {
    let set: Option<Vec<char>> = chars.map(|c| {
        let mut v: Vec<char> = c.chars().collect();
        v.sort_unstable();
        v.dedup();
        v
    });
    let strip = |ch: char| match &set {
        Some(set) => set.binary_search(&ch).is_ok(),
        None => ch.is_whitespace(),
    };
    match ends {
        Ends::Both => s.trim_matches(strip),
        Ends::Start => s.trim_start_matches(strip),
        Ends::End => s.trim_end_matches(strip),
    }
}

/// Jinja's `trim(chars=None)` filter over [`strip_chars`]; it replaces
/// minijinja's, which scans `chars` once per character of the string.
fn trim(value: Cow<'_, str>, chars: Option<Cow<'_, str>>) -> String {
    strip_chars(&value, chars.as_deref(), Ends::Both).to_string()
}

fn title_case(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev_alpha = false;
    for c in s.chars() {
        if prev_alpha {
            out.extend(c.to_lowercase());
        } else {
            out.extend(c.to_uppercase());
        }
        prev_alpha = c.is_alphabetic();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected strings below were rendered with Python jinja2 3.1.6
    // (ImmutableSandboxedEnvironment, trim_blocks and lstrip_blocks, as
    // transformers' apply_chat_template does).

    const LLAMA3_STYLE: &str = "{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = \"\" %}
{%- endif %}
{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}
{{- system_message }}
{{- \"<|eot_id|>\" }}
{%- for message in messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'].strip() + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
";

    const CHATML_STYLE: &str = "{% for message in messages %}
  {% if loop.first and message['role'] != 'system' %}
<|im_start|>system
You are helpful.<|im_end|>
  {% endif %}
<|im_start|>{{ message['role'] }}
{{ message['content'] }}<|im_end|>
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant
{% endif %}
";

    fn msgs() -> Vec<Message> {
        vec![
            Message::system("  Be brief. "),
            Message::user(" Hi "),
            Message::assistant("Hello."),
            Message::user("Bye"),
        ]
    }

    #[test]
    fn runaway_templates_stop_at_the_budget() {
        let cases = [
            // 10^10 steps
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            // 100 MB at once; a list of 10^8 items walked, then joined
            "{{ 'x' * 100000000 }}",
            "{% for x in [0] * 100000000 %}{% endfor %}",
            "{{ ([0] * 100000000) | join(',') }}",
            // doubling without end
            "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s | length }}",
            // a hundred thousand 1 MB strings joined (minijinja's own join
            // built all of it), replaced, split
            "{{ (['x' * 1000000] * 100000) | join | length }}",
            "{{ ('x' * 10000000).replace('x', 'y' * 10000000) | length }}",
            "{{ ('x' * 10000000).replace('', 'y' * 1000) | length }}",
            "{{ ('x ' * 10000000).split() | length }}",
            "{{ ('x' * 10000000) | replace('x', 'y' * 10000000) | length }}",
            // a prefix list of 10^8 one-megabyte strings
            "{{ 'abc'.startswith(['x' * 1000000] * 100000000) }}",
            // indexing deep into lazy lists, item after item
            "{{ ([[0] * 100000000] * 100000000) | join(attribute='99999999') }}",
        ];
        for src in cases {
            let t = ChatTemplate::new(src, "", "").unwrap();
            let start = std::time::Instant::now();
            let e = t.render(&msgs(), true).unwrap_err().to_string();
            assert!(e.contains("ran past its budget"), "{src}: {e}");
            assert!(!e.contains('\n'), "{e}");
            let took = start.elapsed();
            assert!(took.as_secs() < 10, "{src}: {took:?}");
        }
    }

    #[test]
    fn strip_and_trim_with_long_character_sets() {
        // 10^6 characters against a set of 10^6: a binary search each, not
        // a scan (which would be 10^12 comparisons).
        let t = ChatTemplate::new(
            "{% set s = 'a' * 1000000 + 'c' %}{% set cs = 'b' * 1000000 ~ 'a' %}\
             {{ s.strip(cs) }}|{{ s.lstrip(cs) | length }}|{{ s | trim(cs) }}|{{ '  x  ' | trim }}|{{ 'xxayxx'.rstrip('x') }}",
            "",
            "",
        )
        .unwrap();
        let start = std::time::Instant::now();
        assert_eq!(t.render(&msgs(), false).unwrap(), "c|1|c|x|xxay");
        assert!(start.elapsed().as_secs() < 10, "{:?}", start.elapsed());
    }

    #[test]
    fn join_matches_jinja2() {
        // Rendered with jinja2 3.1.6 (Python prints True/None where
        // minijinja prints true/none; tern keeps minijinja's).
        let t = ChatTemplate::new(
            "{{ messages | join(', ', attribute='role') }}|{{ messages | join(attribute='content.0') }}|\
             {{ 'abc' | join('-') }}|{{ [1, 2] | join(0) }}|{{ [1, 2] | join(d='+') }}|[{{ nothing | join }}]",
            "",
            "",
        )
        .unwrap();
        assert_eq!(
            t.render(&[Message::user("hi"), Message::assistant("yo")], false)
                .unwrap(),
            "user, assistant|hy|a-b-c|102|1+2|[]"
        );
        // An error inside a lazy iterable is an error, not text.
        let t =
            ChatTemplate::new("{{ [1, 2] | map('nosuchfilter') | join(',') }}", "", "").unwrap();
        assert!(t.render(&msgs(), false).is_err());
    }

    #[test]
    fn tojson_refuses_a_huge_indent() {
        let t = ChatTemplate::new("{{ messages | tojson(indent=1000000000000) }}", "", "").unwrap();
        let e = t.render(&msgs(), true).unwrap_err().to_string();
        assert!(e.contains("indent 1000000000000 is over 64"), "{e}");
    }

    #[test]
    fn the_budget_grows_with_the_conversation() {
        // 20 000 short messages and one of 8 MiB (more than any context
        // holds) render in full with a template that copies the content.
        let t = ChatTemplate::new(LLAMA3_STYLE, "<s>", "").unwrap();
        let mut m: Vec<Message> = (0..20_000)
            .map(|i| {
                if i % 2 == 0 {
                    Message::user("hello there")
                } else {
                    Message::assistant("general kenobi")
                }
            })
            .collect();
        m.push(Message::user(&"y".repeat(8 << 20)));
        let out = t.render(&m, true).unwrap();
        assert!(out.len() > (8 << 20) + 20_000 * 40, "{}", out.len());
        let out = ChatTemplate::new(CHATML_STYLE, "", "")
            .unwrap()
            .render(&m, true)
            .unwrap();
        assert!(out.len() > (8 << 20) + 20_000 * 40, "{}", out.len());
    }

    #[test]
    fn bitnet_template() {
        let t =
            ChatTemplate::new(crate::model::BITNET_CHAT_TEMPLATE, "<|begin_of_text|>", "").unwrap();
        let m = vec![
            Message::system("S"),
            Message::user("U"),
            Message::assistant("A"),
        ];
        assert_eq!(
            t.render(&m, true).unwrap(),
            "<|begin_of_text|>System: S<|eot_id|>User: U<|eot_id|>Assistant: A<|eot_id|>Assistant: "
        );
        assert_eq!(
            t.render(&m[1..2], false).unwrap(),
            "<|begin_of_text|>User: U<|eot_id|>"
        );
    }

    #[test]
    fn llama3_style_template_matches_jinja2() {
        let t = ChatTemplate::new(LLAMA3_STYLE, "<|begin_of_text|>", "<|eot_id|>").unwrap();
        assert_eq!(
            t.render(&msgs(), true).unwrap(),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        let e = t
            .render(&[Message::user("a"), Message::user("b")], true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("Conversation roles must alternate"), "{e}");
    }

    #[test]
    fn chatml_style_template_matches_jinja2() {
        let t = ChatTemplate::new(CHATML_STYLE, "", "").unwrap();
        let m = &msgs()[1..];
        let base = "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n Hi <|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n";
        assert_eq!(t.render(m, false).unwrap(), base);
        assert_eq!(
            t.render(m, true).unwrap(),
            format!("{base}<|im_start|>assistant\n")
        );
    }

    #[test]
    fn python_methods_and_tojson() {
        let src = "{{ ' a b  c '.split()|join('/') }}|{{ 'x,y,z'.split(',', 1)|join('/') }}|{{ '--a--'.strip('-') }}|\
{{ 'abc'.startswith(('x', 'a')) }}|{{ 'hello world'.title() }}|{{ {'k': 1}.get('k') }}{{ {'k': 1}.get('z', 2) }}|\
{{ messages[0] | tojson }}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        assert_eq!(
            t.render(&[Message::user("q\"")], false).unwrap(),
            "a/b/c|x/y,z|a|True|Hello World|12|{\"role\": \"user\", \"content\": \"q\\\"\"}"
        );
    }

    #[test]
    fn bad_templates_are_errors() {
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
        let t = ChatTemplate::new("{{ messages[0].content.nosuchmethod() }}", "", "").unwrap();
        assert!(t.render(&[Message::user("x")], false).is_err());
    }

    #[test]
    fn missing_markers_lists_literal_special_tokens_the_vocabulary_lacks() {
        let m = crate::model::Model::builtin().unwrap();
        let tok = &m.tokenizer;
        assert!(tok.find_token("<|eot_id|>").is_some());
        let src = "{{ '<|im_start|>' }}<|eot_id|><|im_start|><| not one |>a<|b\
                   <|im_end|>{{ '<|' + 'x|>' }}";
        // Not markers: spaces or quotes inside, an unclosed `<|b`.
        assert_eq!(
            missing_markers(src, tok),
            vec!["<|im_start|>", "<|im_end|>"]
        );
        let long = format!("<|{}|>", "x".repeat(80));
        assert!(missing_markers(&long, tok).is_empty());
        assert!(missing_markers(crate::model::BITNET_CHAT_TEMPLATE, tok).is_empty());
    }

    #[test]
    fn named_templates_render_their_formats() {
        let msgs = [Message::system("S"), Message::user(" U ")];
        let render = |name: &str| {
            let src = template_source(name).unwrap();
            ChatTemplate::new(&src, "<|begin_of_text|>", "<|end_of_text|>")
                .unwrap()
                .render(&msgs, true)
                .unwrap()
        };
        assert_eq!(
            render("chatml"),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n U <|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            render("llama3"),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        assert_eq!(
            render("bitnet"),
            "<|begin_of_text|>System: S<|eot_id|>User:  U <|eot_id|>Assistant: "
        );
        // A template itself is taken as given; anything else is an error
        // naming the choices.
        assert_eq!(template_source("{{ 'x' }}").unwrap(), "{{ 'x' }}");
        let e = template_source("vicuna").unwrap_err().to_string();
        assert!(e.contains("bitnet, chatml, llama3"), "{e}");
        assert!(template_source("{% if %}").is_err());
        let big = "{{ 'x' }}".repeat(MAX_TEMPLATE_BYTES / 9 + 1);
        assert!(template_source(&big)
            .unwrap_err()
            .to_string()
            .contains("at most"));
    }

    #[test]
    fn dropping_turns_keeps_system_and_last_message() {
        let mut c = Conversation::new(Some("sys".into()));
        c.turns = vec![
            Message::user("1"),
            Message::assistant("a"),
            Message::user("2"),
            Message::assistant("b"),
            Message::user("3"),
        ];
        assert!(c.drop_oldest_turn());
        assert_eq!(c.turns[0], Message::user("2"));
        assert!(c.drop_oldest_turn());
        assert_eq!(c.turns, vec![Message::user("3")]);
        assert!(!c.drop_oldest_turn());
        assert_eq!(c.system.as_deref(), Some("sys"));
    }

    #[test]
    fn transcript_round_trip_and_validation() {
        let mut c = Conversation::new(Some("sys".into()));
        c.turns = vec![Message::user("héllo"), Message::assistant("hi\n")];
        let back = Conversation::from_json(&c.to_json()).unwrap();
        assert_eq!(back, c);
        let obj = r#"{"messages": [{"role": "user", "content": "x"}]}"#;
        assert_eq!(Conversation::from_json(obj).unwrap().turns.len(), 1);
        assert!(Conversation::from_json("[1, 2]").is_err());
        assert!(Conversation::from_json(r#"[{"role": "tool", "content": "x"}]"#).is_err());
        let late_system =
            r#"[{"role": "user", "content": "x"}, {"role": "system", "content": "y"}]"#;
        assert!(Conversation::from_json(late_system).is_err());
    }
}
