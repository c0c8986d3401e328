//! The HTTP layer (axum): routes, the OpenAI wire format, errors in
//! OpenAI's JSON shape, authentication, CORS, the body limit and panic
//! isolation. Requests are checked and tokenized here and handed to the
//! [`Engine`]; everything else happens there.

use super::api::{ChatRequest, CompletionRequest, Prompt, Settings};
use super::engine::{Engine, EngineError, Event, FinishReason, Summary, TokenLogprob};
use crate::chat::ChatTemplate;
use crate::model::Model;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc::UnboundedReceiver;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Settings of the HTTP layer.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// The model name in responses and `/v1/models`.
    pub alias: String,
    /// The model file as given (`/props`' `model_path`; empty for the
    /// built-in model).
    pub model_path: String,
    /// Accepted API keys (`Authorization: Bearer KEY`); empty = no auth.
    pub api_keys: Vec<String>,
    /// Allowed CORS origin (`*` for any); None = no CORS headers.
    pub cors: Option<String>,
    /// Largest request body, in bytes.
    pub body_limit: usize,
    /// Longest a request may run (queue wait included).
    pub timeout: Duration,
    /// What requests that leave a sampling field out get.
    pub defaults: super::api::Defaults,
    /// Log one line per request on stderr (llama-server's `-v`).
    pub log_requests: bool,
    /// Serve `GET /slots` (llama-server's `--slots`, on by default).
    pub slots_endpoint: bool,
}

/// The model and its engine, once loaded.
pub struct Loaded {
    pub engine: Engine,
    pub template: ChatTemplate,
}

pub struct AppState {
    pub config: HttpConfig,
    pub loaded: OnceLock<Loaded>,
    /// Unix time the server started (`created` of the model).
    pub started: u64,
}

impl AppState {
    pub fn new(config: HttpConfig) -> AppState {
        AppState {
            config,
            loaded: OnceLock::new(),
            started: unix_now(),
        }
    }

    pub(super) fn ready(&self) -> Result<&Loaded, ApiError> {
        self.loaded
            .get()
            .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Loading model"))
    }

    pub(super) fn model(&self) -> Result<&Model, ApiError> {
        Ok(&self.ready()?.engine.model)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A random u64 (std's per-process random hash keys; not for secrets).
pub(super) fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// An error in OpenAI's shape: `{"error": {"message", "type", "code"}}`
/// (llama-server's, which adds fields to some).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Seconds for `Retry-After` (503 when the queue is full).
    pub retry_after: Option<u64>,
    /// The prompt and context sizes of llama-server's
    /// `exceed_context_size_error` (`n_prompt_tokens`, `n_ctx`).
    pub exceeded: Option<(usize, usize)>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
            exceeded: None,
        }
    }
    /// The engine ended a request's channel without a last event.
    pub(super) fn dropped() -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error: the engine dropped the request",
        )
    }
    pub(super) fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    fn kind(&self) -> &'static str {
        if self.exceeded.is_some() {
            return "exceed_context_size_error";
        }
        match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::BAD_REQUEST => "invalid_request_error",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable_error",
            StatusCode::NOT_IMPLEMENTED => "not_supported_error",
            _ => "server_error",
        }
    }
    pub(super) fn body(&self) -> Value {
        let mut e =
            json!({"message": self.message, "type": self.kind(), "code": self.status.as_u16()});
        if let Some((n_prompt, n_ctx)) = self.exceeded {
            e["n_prompt_tokens"] = json!(n_prompt);
            e["n_ctx"] = json!(n_ctx);
        }
        json!({ "error": e })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        let status = match e {
            EngineError::QueueFull(_) | EngineError::ShuttingDown | EngineError::QueueTimeout => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            EngineError::BadRequest(_) | EngineError::ContextExceeded { .. } => {
                StatusCode::BAD_REQUEST
            }
            EngineError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut a = ApiError::new(status, e.to_string());
        match e {
            EngineError::QueueFull(_) => a.retry_after = Some(1),
            EngineError::ContextExceeded { n_prompt, n_ctx } => {
                a.exceeded = Some((n_prompt, n_ctx))
            }
            _ => {}
        }
        a
    }
}

/// The response for a panic anywhere in a request's handler: a 500.
fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error: the request's handler panicked",
    )
    .into_response()
}

/// Parse a JSON body (413 past the body limit, 400 for bad JSON or types).
pub(super) fn parse<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|r| {
        let status = r.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "the request body is larger than the server's limit".to_string()
        } else {
            r.body_text()
        };
        ApiError::new(status, message)
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad(format!("invalid request body: {e}")))
}

/// The routes, without the layers (see [`router`]).
fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/health", get(health))
        .route("/v1/health", get(health))
        .route("/v1/models", get(models))
        .route("/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        // llama-server's own completion endpoint under both of its names.
        .route("/completion", post(super::native::completion))
        .route("/completions", post(super::native::completion))
        .route("/props", get(super::native::props))
        .route("/slots", get(super::native::slots))
        .route("/apply-template", post(super::native::apply_template))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        // Registered after the routes: it applies to each of them.
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "this endpoint does not take that method",
            )
        })
}

/// Add the layers to `routes`: body limit, API key, panics → 500, CORS
/// (outermost, so that preflight requests need no key).
fn layered(routes: Router<Arc<AppState>>, state: Arc<AppState>) -> Router {
    let cfg = &state.config;
    let mut app = routes
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(DefaultBodyLimit::max(cfg.body_limit))
        .layer(CatchPanicLayer::custom(panic_response));
    if let Some(origin) = &cfg.cors {
        let allow = if origin == "*" {
            AllowOrigin::any()
        } else {
            match HeaderValue::from_str(origin) {
                Ok(v) => AllowOrigin::exact(v),
                Err(_) => AllowOrigin::list([]),
            }
        };
        app = app.layer(
            CorsLayer::new()
                .allow_origin(allow)
                .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
                .allow_headers([
                    header::AUTHORIZATION,
                    header::CONTENT_TYPE,
                    header::HeaderName::from_static("x-api-key"),
                ]),
        );
    }
    // Outermost: every request is logged, refused, panicked or preflight.
    app.layer(middleware::from_fn_with_state(state.clone(), log_request))
        .with_state(state)
}

/// The whole application.
pub fn router(state: Arc<AppState>) -> Router {
    layered(routes(), state)
}

/// With API keys set, every endpoint but `/health`, `/v1/health`,
/// `/models` and `/v1/models` (llama-server's public ones) needs
/// `Authorization: Bearer KEY` or `X-Api-Key: KEY`; keys are compared in
/// constant time.
async fn auth(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let keys = &st.config.api_keys;
    let public = matches!(
        req.uri().path(),
        "/health" | "/v1/health" | "/models" | "/v1/models"
    );
    if keys.is_empty() || (public && matches!(*req.method(), Method::GET | Method::HEAD)) {
        return next.run(req).await;
    }
    let ok = {
        let h = req.headers();
        let text = |name: header::HeaderName| h.get(name).and_then(|v| v.to_str().ok());
        let given = text(header::AUTHORIZATION)
            .and_then(|v| v.strip_prefix("Bearer "))
            .or_else(|| text(header::HeaderName::from_static("x-api-key")))
            .map(str::trim);
        given.is_some_and(|g| {
            keys.iter()
                .fold(subtle::Choice::from(0), |acc, k| {
                    acc | k.as_bytes().ct_eq(g.as_bytes())
                })
                .into()
        })
    };
    if ok {
        next.run(req).await
    } else {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid or missing API key (Authorization: Bearer KEY, or X-Api-Key: KEY)",
        )
        .into_response()
    }
}

/// With `log_requests`, one line per request on stderr once its response
/// begins: method, path (no query), status, milliseconds. The outermost
/// layer, so refused, panicked and preflight requests are logged too;
/// method and path are the client's text, escaped and shortened.
async fn log_request(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if !st.config.log_requests {
        return next.run(req).await;
    }
    let method = crate::untrusted::one_line(req.method().as_str());
    // The path as sent, shortened and escaped: it is the client's text.
    let path = crate::untrusted::one_line(req.uri().path());
    let t0 = Instant::now();
    let r = next.run(req).await;
    eprintln!(
        "tern serve: {method} {path} {} {:.1} ms",
        r.status().as_u16(),
        t0.elapsed().as_secs_f64() * 1e3
    );
    r
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    match st.ready() {
        Ok(_) => Json(json!({"status": "ok"})).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn models(State(st): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let l = st.ready()?;
    let m = &l.engine.model;
    let c = &l.engine.config;
    Ok(Json(json!({
        "object": "list",
        "data": [{
            "id": st.config.alias,
            "object": "model",
            "created": st.started,
            "owned_by": "tern",
            "meta": {
                "architecture": m.hp.arch,
                "n_vocab": m.hp.n_vocab,
                "n_ctx_train": m.hp.n_ctx_train,
                "n_embd": m.hp.n_embd,
                "n_params": m.n_params(),
                "n_ctx": c.n_ctx,
                "n_slots": c.n_slots,
            }
        }]
    })))
}

#[derive(Deserialize)]
struct TokenizeRequest {
    content: String,
    #[serde(default)]
    add_special: bool,
    /// Special-token texts (`<|eot_id|>`) become their ids (the default);
    /// false: they are plain text.
    #[serde(default = "super::api::yes")]
    parse_special: bool,
    #[serde(default)]
    with_pieces: bool,
}

async fn tokenize(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let m = st.model()?;
    let r: TokenizeRequest = parse(body)?;
    let tok = &m.tokenizer;
    let ids = tok
        .encode_with(&r.content, r.add_special && tok.add_bos(), r.parse_special)
        .map_err(|e| ApiError::bad(format!("{e:#}")))?;
    let tokens: Vec<Value> = if r.with_pieces {
        // A piece that is not UTF-8 on its own (a byte of a character)
        // is its byte values, as llama-server gives it.
        ids.iter()
            .map(|&id| {
                let b = tok.token_bytes(id, true);
                let piece = match String::from_utf8(b) {
                    Ok(s) => json!(s),
                    Err(e) => json!(e.into_bytes()),
                };
                json!({"id": id, "piece": piece})
            })
            .collect()
    } else {
        ids.iter().map(|&id| json!(id)).collect()
    };
    Ok(Json(json!({ "tokens": tokens })))
}

#[derive(Deserialize)]
struct DetokenizeRequest {
    tokens: Vec<u32>,
}

async fn detokenize(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let m = st.model()?;
    let r: DetokenizeRequest = parse(body)?;
    let nv = m.hp.n_vocab;
    if let Some(t) = r.tokens.iter().find(|&&t| t as usize >= nv) {
        return Err(ApiError::bad(format!(
            "token id {t} is outside the vocabulary of {nv}"
        )));
    }
    Ok(Json(
        json!({ "content": m.tokenizer.decode(&r.tokens, false) }),
    ))
}

async fn metrics(State(st): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let l = st.ready()?;
    let e = &l.engine;
    let m = e.metrics();
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let decode_secs = get(&m.decode_nanos) as f64 / 1e9;
    let predicted = get(&m.tokens_predicted);
    let rate = if decode_secs > 0.0 {
        predicted as f64 / decode_secs
    } else {
        0.0
    };
    let rows: [(&str, &str, &str, String); 12] = [
        (
            "requests_total",
            "counter",
            "Requests accepted.",
            get(&m.requests).to_string(),
        ),
        (
            "requests_failed_total",
            "counter",
            "Requests that ended with an error.",
            get(&m.requests_failed).to_string(),
        ),
        (
            "requests_processing",
            "gauge",
            "Requests in a slot.",
            e.active().to_string(),
        ),
        (
            "requests_queued",
            "gauge",
            "Requests waiting for a slot.",
            e.queued().to_string(),
        ),
        (
            "slots",
            "gauge",
            "Sequence slots (-np).",
            e.config.n_slots.to_string(),
        ),
        (
            "prompt_tokens_total",
            "counter",
            "Prompt tokens of admitted requests.",
            get(&m.prompt_tokens).to_string(),
        ),
        (
            "prompt_tokens_cached_total",
            "counter",
            "Prompt tokens found in a slot's KV cache (not evaluated).",
            get(&m.prompt_tokens_cached).to_string(),
        ),
        (
            "prompt_tokens_evaluated_total",
            "counter",
            "Prompt tokens evaluated.",
            get(&m.prompt_tokens_evaluated).to_string(),
        ),
        (
            "tokens_predicted_total",
            "counter",
            "Generated tokens.",
            predicted.to_string(),
        ),
        (
            "tokens_predicted_seconds_total",
            "counter",
            "Seconds spent in steps that decoded tokens.",
            format!("{decode_secs:.6}"),
        ),
        (
            "predicted_tokens_per_second",
            "gauge",
            "Generated tokens per second of decoding steps (all sequences together).",
            format!("{rate:.3}"),
        ),
        (
            "steps_total",
            "counter",
            "Forward passes.",
            get(&m.steps).to_string(),
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in rows {
        out.push_str(&format!(
            "# HELP tern_{name} {help}\n# TYPE tern_{name} {kind}\ntern_{name} {value}\n"
        ));
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}

/// Chat or text completion: the response shapes differ.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Text,
}

struct Meta {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    logprobs: bool,
    include_usage: bool,
}

async fn chat_completions(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    st.ready()?;
    let req: ChatRequest = parse(body)?;
    let settings = req
        .settings(&st.config.defaults, random_u64())
        .map_err(ApiError::bad)?;
    let messages = req.messages().map_err(ApiError::bad)?;
    let s2 = st.clone();
    let prompt = blocking(move || {
        let l = s2.ready()?;
        l.template
            .prompt_tokens(&l.engine.model.tokenizer, &messages, true)
            .map_err(|e| ApiError::bad(format!("{e:#}")))
    })
    .await?;
    run(st, settings, prompt, Kind::Chat).await
}

async fn completions(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    st.ready()?;
    let req: CompletionRequest = parse(body)?;
    let settings = req
        .settings(&st.config.defaults, random_u64())
        .map_err(ApiError::bad)?;
    let prompt = match req.prompt().map_err(ApiError::bad)? {
        Prompt::Tokens(t) => t,
        Prompt::Text(text) => {
            let s2 = st.clone();
            blocking(move || {
                let tok = &s2.model()?.tokenizer;
                tok.encode(&text, tok.add_bos())
                    .map_err(|e| ApiError::bad(format!("{e:#}")))
            })
            .await?
        }
    };
    run(st, settings, prompt, Kind::Text).await
}

/// Run `f` on the blocking pool (tokenizing a large prompt takes a while);
/// a panic in it is a 500.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error: preparing the prompt failed",
        )
    })?
}

async fn run(
    st: Arc<AppState>,
    mut settings: Settings,
    prompt: Vec<u32>,
    kind: Kind,
) -> Result<Response, ApiError> {
    let l = st.ready()?;
    settings.request.prompt = prompt;
    settings.request.deadline = Instant::now().checked_add(st.config.timeout);
    let rx = l.engine.submit(settings.request)?;
    let meta = Meta {
        kind,
        id: format!(
            "{}-{:016x}",
            if kind == Kind::Chat {
                "chatcmpl"
            } else {
                "cmpl"
            },
            random_u64()
        ),
        created: unix_now(),
        model: st.config.alias.clone(),
        logprobs: settings.logprobs,
        include_usage: settings.include_usage,
    };
    if settings.stream {
        Ok(stream(st.clone(), rx, meta).into_response())
    } else {
        collect(&st, rx, meta).await
    }
}

/// What a request produced so far.
#[derive(Default)]
pub(super) struct Output {
    pub(super) text: String,
    /// The tokens that came with log-probabilities, and those.
    pub(super) tokens: Vec<(u32, TokenLogprob)>,
}

fn usage(s: &Summary) -> Value {
    json!({
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.completion_tokens,
        "total_tokens": s.prompt_tokens + s.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": s.cached_tokens},
    })
}

/// llama-server's `timings` object.
pub(super) fn timings(s: &Summary) -> Value {
    let per = |n: usize, secs: f64| {
        if n > 0 && secs > 0.0 {
            n as f64 / secs
        } else {
            0.0
        }
    };
    let ms_per = |n: usize, secs: f64| if n > 0 { secs * 1e3 / n as f64 } else { 0.0 };
    let evaluated = s.prompt_tokens - s.cached_tokens;
    json!({
        "cache_n": s.cached_tokens,
        "prompt_n": evaluated,
        "prompt_ms": s.prompt_secs * 1e3,
        "prompt_per_token_ms": ms_per(evaluated, s.prompt_secs),
        "prompt_per_second": per(evaluated, s.prompt_secs),
        "predicted_n": s.completion_tokens,
        "predicted_ms": s.gen_secs * 1e3,
        "predicted_per_token_ms": ms_per(s.completion_tokens, s.gen_secs),
        "predicted_per_second": per(s.completion_tokens, s.gen_secs),
        "queue_ms": s.queue_secs * 1e3,
        "slot": s.slot,
    })
}

pub(super) fn piece(m: &Model, id: u32) -> (String, Vec<u8>) {
    let b = m.tokenizer.token_bytes(id, true);
    (String::from_utf8_lossy(&b).into_owned(), b)
}

/// The `logprobs` of a choice: OpenAI's chat form (`content`) or the legacy
/// completion form (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`).
fn logprobs_json(m: &Model, kind: Kind, toks: &[(u32, TokenLogprob)], offset0: usize) -> Value {
    match kind {
        Kind::Chat => {
            let entry = |id: u32, lp: f32| {
                let (t, b) = piece(m, id);
                json!({"token": t, "logprob": lp, "bytes": b})
            };
            let content: Vec<Value> = toks
                .iter()
                .map(|(id, lp)| {
                    let mut e = entry(*id, lp.logprob);
                    e["top_logprobs"] = lp.top.iter().map(|&(t, l)| entry(t, l)).collect();
                    e
                })
                .collect();
            json!({ "content": content })
        }
        Kind::Text => {
            let mut offset = offset0;
            let (mut tokens, mut lps, mut tops, mut offs) = (vec![], vec![], vec![], vec![]);
            for (id, lp) in toks {
                let (t, _) = piece(m, *id);
                offs.push(offset);
                offset += t.len();
                tokens.push(t);
                lps.push(lp.logprob);
                let top: serde_json::Map<String, Value> = lp
                    .top
                    .iter()
                    .map(|&(t, l)| (piece(m, t).0, json!(l)))
                    .collect();
                tops.push(Value::Object(top));
            }
            json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offs})
        }
    }
}

fn choice(
    meta: &Meta,
    m: &Model,
    out: &Output,
    finish: Option<FinishReason>,
    delta: bool,
    offset0: usize,
) -> Value {
    let logprobs = if meta.logprobs {
        logprobs_json(m, meta.kind, &out.tokens, offset0)
    } else {
        Value::Null
    };
    let finish = finish.map(|f| f.as_str());
    match (meta.kind, delta) {
        (Kind::Chat, false) => json!({
            "index": 0,
            "message": {"role": "assistant", "content": out.text},
            "logprobs": logprobs,
            "finish_reason": finish,
        }),
        (Kind::Chat, true) => {
            let d = if out.text.is_empty() {
                json!({})
            } else {
                json!({"content": out.text})
            };
            json!({"index": 0, "delta": d, "logprobs": logprobs, "finish_reason": finish})
        }
        (Kind::Text, _) => json!({
            "index": 0,
            "text": out.text,
            "logprobs": logprobs,
            "finish_reason": finish,
        }),
    }
}

fn object(meta: &Meta, chunk: bool) -> &'static str {
    match (meta.kind, chunk) {
        (Kind::Chat, false) => "chat.completion",
        (Kind::Chat, true) => "chat.completion.chunk",
        (Kind::Text, _) => "text_completion",
    }
}

fn envelope(meta: &Meta, chunk: bool, choices: Value) -> Value {
    json!({
        "id": meta.id,
        "object": object(meta, chunk),
        "created": meta.created,
        "model": meta.model,
        "choices": choices,
    })
}

/// Every event of a request up to its last: the text, the log-probabilities
/// of the tokens that have them (in `Output`), every generated token id, and
/// the summary. An engine error, or a channel that ends without a last
/// event, is the error. Shared by the OpenAI and llama-server endpoints.
pub(super) async fn gather(
    rx: &mut UnboundedReceiver<Event>,
) -> Result<(Output, Vec<u32>, Summary), ApiError> {
    let mut out = Output::default();
    let mut ids = Vec::new();
    loop {
        match rx.recv().await {
            Some(Event::Token { id, text, logprob }) => {
                out.text.push_str(&text);
                ids.push(id);
                if let Some(lp) = logprob {
                    out.tokens.push((id, lp));
                }
            }
            Some(Event::Text(t)) => out.text.push_str(&t),
            Some(Event::Done(s)) => return Ok((out, ids, s)),
            Some(Event::Error(e)) => return Err(e.into()),
            None => return Err(ApiError::dropped()),
        }
    }
}

async fn collect(
    st: &AppState,
    mut rx: UnboundedReceiver<Event>,
    meta: Meta,
) -> Result<Response, ApiError> {
    let model = st.model()?;
    let (out, _, s) = gather(&mut rx).await?;
    let mut body = envelope(
        &meta,
        false,
        json!([choice(&meta, model, &out, Some(s.finish), false, 0)]),
    );
    body["usage"] = usage(&s);
    body["timings"] = timings(&s);
    Ok(Json(body).into_response())
}

struct StreamState {
    st: Arc<AppState>,
    rx: UnboundedReceiver<Event>,
    meta: Meta,
    queue: VecDeque<SseEvent>,
    finished: bool,
    /// Bytes of text sent so far (completion logprobs' `text_offset`).
    sent: usize,
}

pub(super) fn data(v: &Value) -> SseEvent {
    SseEvent::default().data(v.to_string())
}

impl StreamState {
    /// Turn one engine event into SSE events.
    fn on_event(&mut self, ev: Event) {
        let Ok(model) = self.st.model() else {
            self.finished = true;
            return;
        };
        let meta = &self.meta;
        let chunk = |out: &Output, finish: Option<FinishReason>, offset0: usize| {
            let mut v = envelope(
                meta,
                true,
                json!([choice(meta, model, out, finish, true, offset0)]),
            );
            if meta.include_usage {
                v["usage"] = Value::Null;
            }
            data(&v)
        };
        match ev {
            Event::Token { id, text, logprob } => {
                let mut out = Output {
                    text,
                    tokens: vec![],
                };
                if let Some(lp) = logprob {
                    out.tokens.push((id, lp));
                }
                if !out.text.is_empty() || !out.tokens.is_empty() {
                    self.queue.push_back(chunk(&out, None, self.sent));
                    self.sent += out.text.len();
                }
            }
            Event::Text(text) => {
                let out = Output {
                    text,
                    tokens: vec![],
                };
                self.queue.push_back(chunk(&out, None, self.sent));
                self.sent += out.text.len();
            }
            Event::Done(s) => {
                let mut last = envelope(
                    meta,
                    true,
                    json!([choice(
                        meta,
                        model,
                        &Output::default(),
                        Some(s.finish),
                        true,
                        self.sent
                    )]),
                );
                last["timings"] = timings(&s);
                if meta.include_usage {
                    last["usage"] = Value::Null;
                }
                self.queue.push_back(data(&last));
                if meta.include_usage {
                    let mut u = envelope(meta, true, json!([]));
                    u["usage"] = usage(&s);
                    self.queue.push_back(data(&u));
                }
                self.queue.push_back(SseEvent::default().data("[DONE]"));
                self.finished = true;
            }
            Event::Error(e) => {
                self.queue.push_back(data(&ApiError::from(e).body()));
                self.finished = true;
            }
        }
    }
}

fn stream(st: Arc<AppState>, rx: UnboundedReceiver<Event>, meta: Meta) -> impl IntoResponse {
    let mut s = StreamState {
        st,
        rx,
        meta,
        queue: VecDeque::new(),
        finished: false,
        sent: 0,
    };
    if s.meta.kind == Kind::Chat {
        // OpenAI's first chunk carries the role.
        let mut first = envelope(
            &s.meta,
            true,
            json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]),
        );
        if s.meta.include_usage {
            first["usage"] = Value::Null;
        }
        s.queue.push_back(data(&first));
    }
    let events = futures_util::stream::unfold(s, |mut s| async move {
        loop {
            if let Some(e) = s.queue.pop_front() {
                return Some((Ok::<_, Infallible>(e), s));
            }
            if s.finished {
                return None;
            }
            match s.rx.recv().await {
                Some(ev) => s.on_event(ev),
                None => {
                    let e = ApiError::dropped();
                    s.queue.push_back(data(&e.body()));
                    s.finished = true;
                }
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    fn state(keys: &[&str]) -> Arc<AppState> {
        Arc::new(AppState::new(HttpConfig {
            alias: "test".into(),
            model_path: String::new(),
            api_keys: keys.iter().map(|k| k.to_string()).collect(),
            cors: Some("http://example.test".into()),
            body_limit: 1024,
            timeout: Duration::from_secs(60),
            defaults: Default::default(),
            log_requests: false,
            slots_endpoint: true,
        }))
    }

    async fn call(
        app: Router,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (StatusCode, Value, axum::http::HeaderMap) {
        let mut b = axum::http::Request::builder().method(method).uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let r = app
            .oneshot(b.body(axum::body::Body::from(body.to_string())).unwrap())
            .await
            .unwrap();
        let status = r.status();
        let headers = r.headers().clone();
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            headers,
        )
    }

    async fn boom() -> StatusCode {
        panic!("boom")
    }

    #[tokio::test]
    async fn loading_panics_auth_limits_and_cors() {
        let st = state(&["sekret"]);
        let app = layered(routes().route("/boom", get(boom)), st.clone());
        // While loading: /health 503 (without a key), the rest 503 too.
        let (s, v, _) = call(app.clone(), "GET", "/health", &[], "").await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(v["error"]["code"], 503);
        let auth = [("authorization", "Bearer sekret")];
        let (s, _, _) = call(app.clone(), "GET", "/v1/models", &auth, "").await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        // Keys (`/v1/models` is public, as llama-server's; HEAD too, as
        // load balancers probe).
        let (s, _, _) = call(app.clone(), "GET", "/v1/models", &[], "").await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        let (s, _, _) = call(app.clone(), "HEAD", "/health", &[], "").await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        let (s, v, _) = call(app.clone(), "GET", "/props", &[], "").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(v["error"]["type"], "authentication_error");
        let (s, _, _) = call(
            app.clone(),
            "GET",
            "/props",
            &[("authorization", "Bearer sekreT")],
            "",
        )
        .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        // A panic is a 500 in OpenAI's shape; the app keeps answering.
        let (s, v, _) = call(app.clone(), "GET", "/boom", &auth, "").await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(v["error"]["type"], "server_error");
        // Body limit (1024 here) → 413, before loading matters.
        let big = format!("{{\"content\": \"{}\"}}", "a".repeat(4096));
        let (s, v, _) = call(app.clone(), "POST", "/tokenize", &auth, &big).await;
        assert!(
            s == StatusCode::PAYLOAD_TOO_LARGE || s == StatusCode::SERVICE_UNAVAILABLE,
            "{s} {v}"
        );
        // CORS preflight for the allowed origin needs no key.
        let (s, _, h) = call(
            app.clone(),
            "OPTIONS",
            "/v1/chat/completions",
            &[
                ("origin", "http://example.test"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "x-api-key"),
            ],
            "",
        )
        .await;
        assert!(s.is_success(), "{s}");
        assert_eq!(
            h.get("access-control-allow-origin").unwrap(),
            "http://example.test"
        );
        // A browser may send the key as X-Api-Key.
        let allowed = h.get("access-control-allow-headers").unwrap();
        assert!(
            allowed.to_str().unwrap().contains("x-api-key"),
            "{allowed:?}"
        );
        // Unknown path → 404 JSON.
        let (s, v, _) = call(app, "GET", "/nope", &auth, "").await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert_eq!(v["error"]["code"], 404);
    }
}
