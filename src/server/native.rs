//! llama-server's own endpoints, beside the OpenAI ones in [`super::http`]:
//! `POST /completion` (also `/completions`, as llama-server routes both),
//! `GET /props`, `GET /slots` and `POST /apply-template`. The shapes are those of
//! llama.cpp's `tools/server/README.md`: a completion answers with
//! `content`, `stop`, `stop_type` (`eos`, `limit` or `word`),
//! `stopping_word`, `tokens_predicted`, `tokens_evaluated`,
//! `tokens_cached`, `generation_settings`, `timings`; streamed, each SSE
//! event carries one token's `content` and `tokens` with `stop: false`, and
//! the last one the whole summary with `stop: true` (no `[DONE]`).

use super::api::{NativeRequest, PromptPart, TemplateRequest};
use super::engine::{Event, FinishReason, Request, Summary, TokenLogprob};
use super::http::{blocking, data, gather, parse, piece, random_u64, timings, ApiError, AppState};
use crate::model::Model;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedReceiver;

/// What a completion's response repeats of its request.
struct Meta {
    /// The prompt's tokens (the response's `prompt` is their text).
    prompt: Vec<u32>,
    /// `generation_settings`.
    settings: Value,
    n_probs: bool,
    return_tokens: bool,
}

/// llama-server's sampling settings object for request `r`: its sampling
/// values, `n_predict` (-1: no limit), `stop`, `ignore_eos`, … under
/// llama.cpp's names; `seed` as given (the server's defaults say -1 for
/// "each request draws one").
fn params_json(r: &Request, seed: Value, n_probs: u32, stream: bool) -> Value {
    let p = &r.params;
    let repeat_last_n = if p.repeat_last_n == usize::MAX {
        json!(-1)
    } else {
        json!(p.repeat_last_n)
    };
    json!({
        "n_predict": r.max_tokens.map_or(json!(-1), |n| json!(n)),
        "seed": seed,
        "temperature": p.temp,
        "top_k": p.top_k,
        "top_p": p.top_p,
        "min_p": p.min_p,
        "repeat_penalty": p.repeat_penalty,
        "repeat_last_n": repeat_last_n,
        "presence_penalty": p.presence_penalty,
        "frequency_penalty": p.frequency_penalty,
        "stop": r.stop,
        "ignore_eos": r.ignore_eos,
        "n_probs": n_probs,
        "stream": stream,
        "logit_bias": [],
    })
}

/// `POST /completion`: one prompt (text, token ids, or both mixed; BOS
/// first when the model adds one and the prompt begins with text) →
/// llama-server's completion object, or its event stream.
pub(super) async fn completion(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    st.ready()?;
    let req: NativeRequest = parse(body)?;
    let mut settings = req
        .settings(&st.config.defaults, random_u64())
        .map_err(ApiError::bad)?;
    let parts = req.prompt().map_err(ApiError::bad)?;
    let s2 = st.clone();
    let prompt = blocking(move || {
        let tok = &s2.model()?.tokenizer;
        let mut ids = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            match part {
                PromptPart::Text(t) => ids.extend(
                    tok.encode(t, i == 0 && tok.add_bos())
                        .map_err(|e| ApiError::bad(format!("{e:#}")))?,
                ),
                PromptPart::Tokens(t) => ids.extend_from_slice(t),
            }
        }
        Ok(ids)
    })
    .await?;
    let l = st.ready()?;
    let r = &mut settings.request;
    r.prompt = prompt;
    r.deadline = Instant::now().checked_add(st.config.timeout);
    let mut gen = params_json(r, json!(r.params.seed), req.n_probs, settings.stream);
    gen["n_ctx"] = json!(l.engine.config.n_ctx);
    gen["model"] = json!(st.config.alias);
    let meta = Meta {
        prompt: r.prompt.clone(),
        settings: gen,
        n_probs: req.n_probs > 0,
        return_tokens: req.return_tokens,
    };
    let rx = l.engine.submit(settings.request)?;
    if settings.stream {
        Ok(stream(st.clone(), rx, meta).into_response())
    } else {
        collect(&st, rx, meta).await
    }
}

/// One entry of `completion_probabilities`: the sampled token and the
/// most likely ones, with log-probabilities.
fn probs_entry(m: &Model, id: u32, lp: &TokenLogprob) -> Value {
    let entry = |id: u32, logprob: f32| {
        let (token, bytes) = piece(m, id);
        json!({"id": id, "token": token, "bytes": bytes, "logprob": logprob})
    };
    let mut e = entry(id, lp.logprob);
    e["top_logprobs"] = lp.top.iter().map(|&(t, l)| entry(t, l)).collect();
    e
}

/// The finished completion: everything but the per-token fields.
/// `has_new_line`: the generated text holds a newline (streamed, the
/// content here is empty and the caller tracked newlines).
fn summary(
    st: &AppState,
    m: &Model,
    meta: &Meta,
    (content, has_new_line): (&str, bool),
    tokens: &[u32],
    s: &Summary,
) -> Value {
    let stop_type = match (&s.stopping_word, s.finish) {
        (Some(_), _) => "word",
        (None, FinishReason::Stop) => "eos",
        (None, FinishReason::Length) => "limit",
    };
    json!({
        "index": 0,
        "content": content,
        "tokens": tokens,
        "id_slot": s.slot,
        "stop": true,
        "model": st.config.alias,
        "tokens_predicted": s.completion_tokens,
        "tokens_evaluated": s.prompt_tokens,
        // All the slot's cache holds now (llama-server's): the prompt and
        // the generated tokens but the last; `timings.cache_n` is the part
        // of the prompt that was found there.
        "tokens_cached": s.n_cached_end,
        "generation_settings": meta.settings,
        "prompt": m.tokenizer.decode(&meta.prompt, true),
        "has_new_line": has_new_line,
        // Cut by a full context (not n_predict, a stop or the time limit).
        "truncated": s.ctx_full,
        "stop_type": stop_type,
        "stopping_word": s.stopping_word.as_deref().unwrap_or(""),
        "timings": timings(s),
    })
}

async fn collect(
    st: &AppState,
    mut rx: UnboundedReceiver<Event>,
    meta: Meta,
) -> Result<Response, ApiError> {
    let model = st.model()?;
    let (out, ids, s) = gather(&mut rx).await?;
    let shown: &[u32] = if meta.return_tokens { &ids } else { &[] };
    let nl = out.text.contains('\n');
    let mut body = summary(st, model, &meta, (&out.text, nl), shown, &s);
    if meta.n_probs {
        body["completion_probabilities"] = out
            .tokens
            .iter()
            .map(|(id, lp)| probs_entry(model, *id, lp))
            .collect();
    }
    Ok(Json(body).into_response())
}

struct StreamState {
    st: Arc<AppState>,
    rx: UnboundedReceiver<Event>,
    meta: Meta,
    n_predicted: usize,
    /// A newline was generated.
    new_line: bool,
    finished: bool,
}

impl StreamState {
    /// The SSE payload for one engine event; the last one sets `finished`.
    fn on_event(&mut self, ev: Event) -> Value {
        let Ok(model) = self.st.model() else {
            self.finished = true;
            return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the model is gone").body();
        };
        match ev {
            Event::Token { id, text, logprob } => {
                self.n_predicted += 1;
                self.new_line |= text.contains('\n');
                let mut v = json!({"index": 0, "content": text, "tokens": [id], "stop": false});
                v["tokens_predicted"] = json!(self.n_predicted);
                v["tokens_evaluated"] = json!(self.meta.prompt.len());
                if let Some(lp) = logprob {
                    v["completion_probabilities"] = json!([probs_entry(model, id, &lp)]);
                }
                v
            }
            // Text released after the last token (held back for a stop
            // string or an unfinished character when the end-of-generation
            // token came): an event of its own, without a token, so that
            // clients summing `content` until `stop` get all of it.
            Event::Text(text) => {
                self.new_line |= text.contains('\n');
                json!({"index": 0, "content": text, "tokens": [], "stop": false})
            }
            Event::Done(s) => {
                self.finished = true;
                summary(&self.st, model, &self.meta, ("", self.new_line), &[], &s)
            }
            Event::Error(e) => {
                self.finished = true;
                ApiError::from(e).body()
            }
        }
    }
}

fn stream(st: Arc<AppState>, rx: UnboundedReceiver<Event>, meta: Meta) -> impl IntoResponse {
    let s = StreamState {
        st,
        rx,
        meta,
        n_predicted: 0,
        new_line: false,
        finished: false,
    };
    let events = futures_util::stream::unfold(s, |mut s| async move {
        if s.finished {
            return None;
        }
        let v = match s.rx.recv().await {
            Some(ev) => s.on_event(ev),
            None => {
                s.finished = true;
                ApiError::dropped().body()
            }
        };
        Some((Ok::<_, Infallible>(data(&v)), s))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// `GET /props`: the server's settings as llama-server reports them —
/// request defaults, slots, context, model, chat template, BOS/EOS texts.
pub(super) async fn props(State(st): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let l = st.ready()?;
    let m = &l.engine.model;
    let c = &l.engine.config;
    let d = &st.config.defaults;
    let tok = &m.tokenizer;
    let text = |id: Option<u32>| id.map_or("", |i| tok.token_text(i));
    // What a request that gives nothing gets.
    let defaults = Request {
        params: d.params.clone(),
        max_tokens: d.max_tokens,
        ..Request::default()
    };
    // -1: each request draws its own seed (llama.cpp's "random").
    let seed = if d.fixed_seed {
        json!(d.params.seed)
    } else {
        json!(-1)
    };
    Ok(Json(json!({
        "default_generation_settings": {
            "n_ctx": c.n_ctx,
            "params": params_json(&defaults, seed, 0, false),
        },
        "total_slots": c.n_slots,
        "model_alias": st.config.alias,
        "model_path": st.config.model_path,
        "n_ctx_train": m.hp.n_ctx_train,
        "chat_template": l.template.source(),
        "bos_token": text(tok.bos()),
        "eos_token": text(tok.eos()),
        "build_info": format!("tern {}", env!("CARGO_PKG_VERSION")),
        "modalities": {"vision": false, "audio": false},
    })))
}

/// `GET /slots` (unless the server turned it off, then 501 as
/// llama-server): each slot's `id`, `n_ctx`, `is_processing`,
/// `n_prompt_tokens` and `next_token.n_decoded` (of the running request, or
/// the last one), and `tokens_cached` (what the slot's KV cache holds), as
/// of the last step.
/// With `?fail_on_no_slot` (any value, as llama-server) and no idle slot,
/// 503.
pub(super) async fn slots(
    State(st): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    if !st.config.slots_endpoint {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "This server does not support the slots endpoint.",
        ));
    }
    let l = st.ready()?;
    let n_ctx = l.engine.config.n_ctx;
    let infos = l.engine.slots();
    if query.contains_key("fail_on_no_slot") && infos.iter().all(|s| s.is_processing) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no slot available",
        ));
    }
    let slots: Vec<Value> = infos
        .iter()
        .enumerate()
        .map(|(id, s)| {
            json!({
                "id": id,
                "n_ctx": n_ctx,
                "is_processing": s.is_processing,
                "n_prompt_tokens": s.n_prompt,
                "tokens_cached": s.n_cached,
                "next_token": {"n_decoded": s.n_decoded},
            })
        })
        .collect();
    Ok(Json(Value::Array(slots)))
}

/// `POST /apply-template`: `{"messages": [...]}` → `{"prompt": TEXT}`, the
/// text the chat template renders for them, ending where the assistant's
/// reply begins (what `/v1/chat/completions` would evaluate), or after the
/// last message with `"add_generation_prompt": false`.
pub(super) async fn apply_template(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    st.ready()?;
    let req: TemplateRequest = parse(body)?;
    let messages = req.messages().map_err(ApiError::bad)?;
    let add_generation_prompt = req.add_generation_prompt;
    let prompt = blocking(move || {
        st.ready()?
            .template
            .render(&messages, add_generation_prompt)
            .map_err(|e| ApiError::bad(format!("{e:#}")))
    })
    .await?;
    Ok(Json(json!({ "prompt": prompt })))
}
