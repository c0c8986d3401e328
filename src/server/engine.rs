//! The serving engine: `n_slots` sequence slots, each with its own KV cache,
//! and a scheduler that runs one batched forward pass per step over every
//! active sequence ([`crate::model::forward::decode`]).
//!
//! - Continuous batching: requests wait in a bounded queue and join free
//!   slots between steps; a finished sequence leaves at once.
//! - Chunked prefill: each step carries one token of every decoding
//!   sequence, and prompt tokens fill the rest of the step's budget
//!   (`n_batch`), so a long prompt is prefilled over several steps while the
//!   others keep receiving tokens.
//! - Prefix reuse: a slot keeps its cache after a request; a new request goes
//!   to the free slot whose cached tokens share the longest prefix with its
//!   prompt (else the least recently used one) and prefills only the rest.
//! - Cancellation: a request whose receiver is dropped (client gone) is ended
//!   at the start of the next step and its slot is free again.
//! - Isolation: a panic while sampling for one sequence fails that request
//!   only; a panic in the forward pass fails the requests of that batch; the
//!   engine keeps serving.

use crate::model::forward::{decode, Batch, KvCache, MAX_BATCH};
use crate::model::generate::{common_prefix, TextStream};
use crate::model::sampling::{Sampler, SamplingParams};
use crate::model::Model;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// Most alternatives per token for `top_logprobs` (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;
/// Most sequence slots.
pub const MAX_SLOTS: usize = 256;

/// How the engine is sized.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Sequence slots (`-np`), 1..=[`MAX_SLOTS`].
    pub n_slots: usize,
    /// Context per sequence, in tokens. Before the model is loaded
    /// ([`crate::server::serve`] resolves it): 0 for the model's training
    /// context at most 4096 (the default), `usize::MAX` for the whole
    /// training context (llama-server's `-c 0`).
    pub n_ctx: usize,
    /// f32 instead of f16 KV caches.
    pub kv_f32: bool,
    /// Tokens per step (decode tokens first, prompt chunks fill the rest),
    /// 1..=[`MAX_BATCH`].
    pub n_batch: usize,
    /// Requests that may wait for a slot; more are refused.
    pub max_queue: usize,
}

/// One generation request, prompt already tokenized.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    /// Most tokens to generate (None: until end of generation or a full
    /// context). 0: the prompt is evaluated into the slot's cache and nothing
    /// is generated (llama-server's `n_predict: 0`).
    pub max_tokens: Option<usize>,
    /// Generation stops before the first occurrence of any of these.
    pub stop: Vec<String>,
    /// Log-probabilities of each sampled token, with this many alternatives.
    pub top_logprobs: Option<usize>,
    /// Keep generating past end-of-generation tokens.
    pub ignore_eos: bool,
    /// Ended (finish reason `length`) when still running at this instant.
    pub deadline: Option<Instant>,
    /// Test hook: panic while sampling the n-th token of this request.
    #[cfg(test)]
    pub panic_at: Option<usize>,
}

/// Log-probability of a sampled token and of the most likely tokens, from
/// the model's distribution (log-softmax of the logits, before penalties and
/// temperature).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub logprob: f32,
    /// (token id, log-probability), most likely first.
    pub top: Vec<(u32, f32)>,
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End of generation token or a stop string.
    Stop,
    /// `max_tokens`, a full context, or the time limit.
    Length,
}

impl FinishReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// What a finished request cost.
#[derive(Debug, Clone)]
pub struct Summary {
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    /// Prompt tokens found in the slot's cache (not evaluated again).
    pub cached_tokens: usize,
    pub completion_tokens: usize,
    /// From admission to the first sampled token.
    pub prompt_secs: f64,
    /// From the first sampled token to the end.
    pub gen_secs: f64,
    /// Time spent waiting for a slot.
    pub queue_secs: f64,
    pub slot: usize,
    /// The stop string that ended the text (usually with `finish` `Stop`;
    /// one completed by the text released at the end may come with
    /// `Length`).
    pub stopping_word: Option<String>,
    /// Generation ended because the context was full (not `max_tokens`,
    /// a stop or the time limit): llama-server's `truncated`.
    pub ctx_full: bool,
    /// Tokens the slot's cache holds at the end: the prompt and the
    /// generated tokens but the last (llama-server's `tokens_cached`).
    pub n_cached_end: usize,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error("the server is busy: {0} requests are already waiting for a slot")]
    QueueFull(usize),
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("the request timed out waiting for a slot")]
    QueueTimeout,
    #[error("{0}")]
    BadRequest(String),
    /// The prompt does not leave a slot's context room for one token
    /// (llama-server's `exceed_context_size_error`).
    #[error("the request exceeds the available context size: the prompt has {n_prompt} tokens, a slot's context holds {n_ctx}")]
    ContextExceeded { n_prompt: usize, n_ctx: usize },
    #[error("internal error: {0}")]
    Internal(String),
}

/// What a request's receiver gets, in order: tokens, then `Done` or `Error`.
#[derive(Debug, Clone)]
pub enum Event {
    /// A sampled token and the text it releases (may be empty while an
    /// incomplete UTF-8 character or a possible stop string is held back).
    Token {
        id: u32,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    /// Held-back text released at the end.
    Text(String),
    Done(Summary),
    Error(EngineError),
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub requests_failed: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub prompt_tokens_cached: AtomicU64,
    pub prompt_tokens_evaluated: AtomicU64,
    pub tokens_predicted: AtomicU64,
    /// Nanoseconds spent in steps that decoded at least one token.
    pub decode_nanos: AtomicU64,
    /// Nanoseconds spent in all steps.
    pub busy_nanos: AtomicU64,
    pub steps: AtomicU64,
}

/// What `/slots` shows of one slot, as of the engine's last step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotInfo {
    /// A request is in the slot.
    pub is_processing: bool,
    /// Tokens whose keys and values the slot's cache holds.
    pub n_cached: usize,
    /// The prompt tokens of the running request, or of the last one.
    pub n_prompt: usize,
    /// Tokens the running request has generated, or the last one did.
    pub n_decoded: usize,
}

struct Job {
    req: Request,
    events: UnboundedSender<Event>,
    queued: Instant,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Job>,
    /// Requests in slots.
    active: usize,
    /// Refuse new requests.
    draining: bool,
    /// End every request now.
    cancel_all: bool,
    /// Leave the engine thread.
    stop: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    metrics: Metrics,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic never happens with the lock held (jobs are moved out
        // first), but stay usable if one did.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running engine: the scheduler on its own thread, fed through a queue.
pub struct Engine {
    pub model: Arc<Model>,
    pub config: EngineConfig,
    shared: Arc<Shared>,
    /// The scheduler's [`SlotInfo`]s (`Scheduler::publish`).
    slot_view: Arc<Mutex<Vec<SlotInfo>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Engine {
    /// Allocate the slots and start the scheduler thread. The caller bounds
    /// `n_ctx × n_slots` first ([`KvCache::bytes`]).
    pub fn start(model: Arc<Model>, config: EngineConfig) -> Result<Engine, EngineError> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            metrics: Metrics::default(),
        });
        let mut sched = Scheduler::new(model.clone(), &config)?;
        let slot_view = sched.slot_view.clone();
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("tern-engine".into())
            .spawn(move || sched.run(&sh))
            .map_err(|e| EngineError::Internal(format!("cannot start the engine thread: {e}")))?;
        Ok(Engine {
            model,
            config,
            shared,
            slot_view,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queue a request; its events arrive on the returned receiver. Dropping
    /// the receiver cancels the request.
    pub fn submit(&self, req: Request) -> Result<UnboundedReceiver<Event>, EngineError> {
        check_request(&self.model, &self.config, &req)?;
        let (tx, rx) = unbounded_channel();
        let mut q = self.shared.lock();
        if q.draining || q.stop {
            return Err(EngineError::ShuttingDown);
        }
        // Requests whose clients left no longer count against the limit.
        q.waiting.retain(|j| !j.events.is_closed());
        let limit = self.config.n_slots.saturating_add(self.config.max_queue);
        if q.active + q.waiting.len() >= limit {
            return Err(EngineError::QueueFull(q.waiting.len()));
        }
        q.waiting.push_back(Job {
            req,
            events: tx,
            queued: Instant::now(),
        });
        self.shared.metrics.requests.fetch_add(1, Ordering::Relaxed);
        drop(q);
        self.shared.wake.notify_all();
        Ok(rx)
    }

    /// Requests waiting for a slot.
    pub fn queued(&self) -> usize {
        self.shared.lock().waiting.len()
    }

    /// Requests in slots.
    pub fn active(&self) -> usize {
        self.shared.lock().active
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Each slot's state as of the last step (index = slot id); a
    /// request's end is shown before its last event is sent.
    pub fn slots(&self) -> Vec<SlotInfo> {
        self.slot_view
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Refuse new requests from now on (running and queued ones go on).
    pub fn drain(&self) {
        self.shared.lock().draining = true;
        self.shared.wake.notify_all();
    }

    /// End every running and queued request now (they get
    /// [`EngineError::ShuttingDown`]).
    pub fn cancel_all(&self) {
        let mut q = self.shared.lock();
        q.draining = true;
        q.cancel_all = true;
        drop(q);
        self.shared.wake.notify_all();
    }

    /// Cancel everything and wait for the scheduler thread to end.
    pub fn stop(&self) {
        {
            let mut q = self.shared.lock();
            q.draining = true;
            q.stop = true;
        }
        self.shared.wake.notify_all();
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Checks that need only the request: a non-empty prompt of known tokens
/// that leaves room in the context, a sane `top_logprobs`, valid sampling
/// values.
pub fn check_request(model: &Model, cfg: &EngineConfig, req: &Request) -> Result<(), EngineError> {
    let bad = |m: String| Err(EngineError::BadRequest(m));
    if req.prompt.is_empty() {
        return bad("the prompt is empty".into());
    }
    let nv = model.hp.n_vocab;
    if let Some(t) = req.prompt.iter().find(|&&t| t as usize >= nv) {
        return bad(format!("token id {t} is outside the vocabulary of {nv}"));
    }
    if req.prompt.len() >= cfg.n_ctx {
        return Err(EngineError::ContextExceeded {
            n_prompt: req.prompt.len(),
            n_ctx: cfg.n_ctx,
        });
    }
    if req.top_logprobs.is_some_and(|k| k > MAX_TOP_LOGPROBS) {
        return bad(format!("top_logprobs must be at most {MAX_TOP_LOGPROBS}"));
    }
    req.params.validate().or_else(|e| bad(e.to_string()))
}

/// The model's log-probability of `token` and the `k` most likely tokens
/// (log-softmax of `logits`, summed in f64).
pub fn logprobs(logits: &[f32], token: u32, k: usize) -> TokenLogprob {
    let mx = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let lse = mx
        + libm::log(
            logits
                .iter()
                .map(|&v| libm::exp(v as f64 - mx))
                .sum::<f64>(),
        );
    let lp = |v: f32| (v as f64 - lse) as f32;
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let k = k.min(idx.len());
    let by_logit = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    if k > 0 && k < idx.len() {
        idx.select_nth_unstable_by(k - 1, by_logit);
    }
    idx.truncate(k);
    idx.sort_by(by_logit);
    TokenLogprob {
        logprob: logits
            .get(token as usize)
            .map_or(f32::NEG_INFINITY, |&v| lp(v)),
        top: idx
            .into_iter()
            .map(|t| (t, lp(logits[t as usize])))
            .collect(),
    }
}

/// A request in a slot.
struct Active {
    job: Job,
    /// Most tokens to generate.
    limit: usize,
    /// Prompt tokens already in the cache (reused or evaluated).
    n_prompt_done: usize,
    cached: usize,
    /// Prompt and generated tokens (for the penalties).
    history: Vec<u32>,
    sampler: Sampler,
    /// Sampled but not yet evaluated.
    pending: Option<u32>,
    n_generated: usize,
    /// The generated text, UTF-8 whole and stop strings held back.
    text: TextStream,
    /// Ended by a full context.
    ctx_full: bool,
    admitted: Instant,
    first_token: Option<Instant>,
}

struct Slot {
    cache: KvCache,
    /// The tokens whose keys and values are in `cache` (`len == n_past`).
    tokens: Vec<u32>,
    last_used: u64,
    seq: Option<Active>,
    /// Prompt and generated tokens of the last request that ended here.
    last: (usize, usize),
}

impl Slot {
    fn reset(&mut self) {
        self.cache.truncate(0);
        self.tokens.clear();
    }
}

/// The slots and one step of work over them; [`Engine`] runs it on a thread.
pub struct Scheduler {
    model: Arc<Model>,
    slots: Vec<Slot>,
    n_batch: usize,
    clock: u64,
    batch: Batch,
    /// What `/slots` shows ([`Scheduler::publish`]).
    slot_view: Arc<Mutex<Vec<SlotInfo>>>,
}

impl Scheduler {
    pub fn new(model: Arc<Model>, cfg: &EngineConfig) -> Result<Scheduler, EngineError> {
        if !(1..=MAX_SLOTS).contains(&cfg.n_slots) {
            return Err(EngineError::BadRequest(format!(
                "the number of slots must be between 1 and {MAX_SLOTS}"
            )));
        }
        if !(1..=MAX_BATCH).contains(&cfg.n_batch) {
            return Err(EngineError::BadRequest(format!(
                "the batch size must be between 1 and {MAX_BATCH}"
            )));
        }
        if cfg.n_ctx < 2 {
            return Err(EngineError::BadRequest(
                "the context must hold at least 2 tokens".into(),
            ));
        }
        // Fallible: `size_engine` compares the caches with the machine's
        // memory only where the system says how much there is.
        let slots = (0..cfg.n_slots)
            .map(|_| {
                Ok(Slot {
                    cache: KvCache::try_new(&model.hp, cfg.n_ctx, cfg.kv_f32)
                        .map_err(|e| EngineError::BadRequest(e.to_string()))?,
                    tokens: Vec::new(),
                    last_used: 0,
                    seq: None,
                    last: (0, 0),
                })
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        Ok(Scheduler {
            model,
            slot_view: Arc::new(Mutex::new(vec![SlotInfo::default(); slots.len()])),
            slots,
            n_batch: cfg.n_batch,
            clock: 0,
            batch: Batch::default(),
        })
    }

    fn n_active(&self) -> usize {
        self.slots.iter().filter(|s| s.seq.is_some()).count()
    }

    /// Show the slots' state in `/slots`: after each step, when a request
    /// starts, and when one ends (before its last event is sent).
    fn publish(&self) {
        *self.slot_view.lock().unwrap_or_else(|e| e.into_inner()) = self.slot_infos();
    }

    fn slot_infos(&self) -> Vec<SlotInfo> {
        self.slots
            .iter()
            .map(|s| SlotInfo {
                is_processing: s.seq.is_some(),
                n_cached: s.cache.n_past(),
                n_prompt: s.seq.as_ref().map_or(s.last.0, |a| a.job.req.prompt.len()),
                n_decoded: s.seq.as_ref().map_or(s.last.1, |a| a.n_generated),
            })
            .collect()
    }

    fn has_free_slot(&self) -> bool {
        self.slots.iter().any(|s| s.seq.is_none())
    }

    /// Move waiting jobs into free slots, in arrival order; jobs whose
    /// receiver is gone or whose deadline passed are dropped.
    fn admit(&mut self, waiting: &mut VecDeque<Job>, m: &Metrics) {
        while self.has_free_slot() {
            let Some(job) = waiting.pop_front() else {
                return;
            };
            if job.events.is_closed() {
                continue;
            }
            if job.req.deadline.is_some_and(|d| Instant::now() >= d) {
                m.requests_failed.fetch_add(1, Ordering::Relaxed);
                let _ = job.events.send(Event::Error(EngineError::QueueTimeout));
                continue;
            }
            self.start(job, m);
        }
    }

    /// The free slot for `prompt`: the one whose cache shares the longest
    /// prefix with it when that covers at least half of the prompt (the next
    /// turn of a conversation), else the least recently used one (keeping
    /// the other slots' conversations). Returns (slot, common prefix).
    fn pick_slot(&self, prompt: &[u32]) -> (usize, usize) {
        let free = || {
            self.slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.seq.is_none())
                .map(|(i, s)| (i, common_prefix(&s.tokens, prompt)))
        };
        let best = free().max_by(|a, b| {
            a.1.cmp(&b.1)
                .then(self.slots[b.0].last_used.cmp(&self.slots[a.0].last_used))
        });
        let lru = free().min_by_key(|&(i, _)| self.slots[i].last_used);
        match (best, lru) {
            (Some(b), _) if 2 * b.1 >= prompt.len() => b,
            (_, Some(l)) => l,
            _ => unreachable!("admit only runs with a free slot"),
        }
    }

    fn start(&mut self, job: Job, m: &Metrics) {
        let (i, common) = self.pick_slot(&job.req.prompt);
        let n = job.req.prompt.len();
        // At least the last prompt token is evaluated, for its logits.
        let reused = common.min(n - 1);
        let slot = &mut self.slots[i];
        slot.cache.truncate(reused);
        slot.tokens.truncate(reused);
        let room = slot.cache.n_ctx() - n;
        let limit = job.req.max_tokens.map_or(room, |t| t.min(room));
        m.prompt_tokens.fetch_add(n as u64, Ordering::Relaxed);
        m.prompt_tokens_cached
            .fetch_add(reused as u64, Ordering::Relaxed);
        slot.seq = Some(Active {
            limit,
            n_prompt_done: reused,
            cached: reused,
            history: job.req.prompt.clone(),
            sampler: Sampler::new(job.req.params.clone()),
            pending: None,
            n_generated: 0,
            text: TextStream::new(job.req.stop.clone()),
            ctx_full: false,
            admitted: Instant::now(),
            first_token: None,
            job,
        });
        self.publish();
    }

    /// End slot `i`'s request with `ev` (Done or Error) and free the slot.
    fn finish(&mut self, i: usize, ev: Option<Event>, m: &Metrics) {
        self.clock += 1;
        let slot = &mut self.slots[i];
        slot.last_used = self.clock;
        let seq = slot.seq.take();
        if let Some(a) = &seq {
            slot.last = (a.job.req.prompt.len(), a.n_generated);
        }
        // Idle in /slots before the client hears of the end.
        self.publish();
        if let Some(a) = seq {
            if let Some(ev) = ev {
                if let Event::Error(e) = &ev {
                    m.requests_failed.fetch_add(1, Ordering::Relaxed);
                    if matches!(e, EngineError::Internal(_)) {
                        eprintln!("tern serve: slot {i}: {e}");
                    }
                }
                let _ = a.job.events.send(ev);
            }
        }
    }

    fn done(&mut self, i: usize, finish: FinishReason, m: &Metrics) {
        let n_cached_end = self.slots[i].cache.n_past();
        let Some(a) = self.slots[i].seq.as_mut() else {
            return;
        };
        // Release what the decoder and the stop matcher still hold.
        let text = a.text.finish();
        if !text.is_empty() {
            let _ = a.job.events.send(Event::Text(text));
        }
        let now = Instant::now();
        let first = a.first_token.unwrap_or(now);
        let summary = Summary {
            finish,
            prompt_tokens: a.job.req.prompt.len(),
            cached_tokens: a.cached,
            completion_tokens: a.n_generated,
            prompt_secs: (first - a.admitted).as_secs_f64(),
            gen_secs: (now - first).as_secs_f64(),
            queue_secs: (a.admitted - a.job.queued).as_secs_f64(),
            slot: i,
            stopping_word: a.text.stopping_word().map(str::to_string),
            ctx_full: a.ctx_full,
            n_cached_end,
        };
        self.finish(i, Some(Event::Done(summary)), m);
    }

    /// End requests whose client left (silently), ran past their deadline
    /// (`length`), or all of them with `cancel` (shutting down).
    fn sweep(&mut self, cancel: bool, m: &Metrics) {
        let now = Instant::now();
        for i in 0..self.slots.len() {
            let Some(a) = &self.slots[i].seq else {
                continue;
            };
            if cancel {
                self.finish(i, Some(Event::Error(EngineError::ShuttingDown)), m);
            } else if a.job.events.is_closed() {
                self.finish(i, None, m);
            } else if a.job.req.deadline.is_some_and(|d| now >= d) {
                self.done(i, FinishReason::Length, m);
            }
        }
    }

    /// One step: a forward pass over one token of every decoding sequence
    /// and prompt chunks up to the step budget, then sampling for every
    /// sequence that got logits. False when there was nothing to do.
    pub fn step(&mut self, m: &Metrics) -> bool {
        let t0 = Instant::now();
        self.batch.clear();
        // Decoding sequences first: one token each.
        let mut n_decode = 0;
        for (i, s) in self.slots.iter().enumerate() {
            if let Some(a) = &s.seq {
                if let Some(t) = a.pending {
                    self.batch.add(t, s.cache.n_past(), i, true);
                    n_decode += 1;
                }
            }
        }
        // Then prompt chunks, oldest request first, within the budget.
        let mut budget = self
            .n_batch
            .saturating_sub(n_decode)
            .max(1)
            .min(MAX_BATCH - n_decode);
        let mut order: Vec<usize> = (0..self.slots.len())
            .filter(|&i| {
                self.slots[i]
                    .seq
                    .as_ref()
                    .is_some_and(|a| a.pending.is_none())
            })
            .collect();
        order.sort_by_key(|&i| self.slots[i].seq.as_ref().map(|a| a.admitted));
        for i in order {
            if budget == 0 {
                break;
            }
            let s = &self.slots[i];
            let Some(a) = &s.seq else { continue };
            let prompt = &a.job.req.prompt;
            let from = a.n_prompt_done;
            let take = (prompt.len() - from).min(budget);
            for (k, &t) in prompt[from..from + take].iter().enumerate() {
                let last = from + k + 1 == prompt.len();
                self.batch.add(t, s.cache.n_past() + k, i, last);
            }
            budget -= take;
        }
        if self.batch.is_empty() {
            return false;
        }

        let model = self.model.clone();
        let batch = std::mem::take(&mut self.batch);
        let result = {
            let mut caches: Vec<&mut KvCache> =
                self.slots.iter_mut().map(|s| &mut s.cache).collect();
            catch_unwind(AssertUnwindSafe(|| decode(&model, &mut caches, &batch)))
        };
        let logits = match result {
            Ok(Ok(l)) => l,
            failed => {
                let msg = match failed {
                    Ok(Err(e)) => format!("{e:#}"),
                    Err(p) => format!("the forward pass panicked: {}", panic_text(&p)),
                    Ok(Ok(_)) => unreachable!(),
                };
                let mut hit: Vec<usize> = batch.seq.clone();
                hit.dedup();
                for i in hit {
                    // The cache state is unknown: start this slot over.
                    self.slots[i].reset();
                    self.finish(i, Some(Event::Error(EngineError::Internal(msg.clone()))), m);
                }
                self.batch = batch;
                return true;
            }
        };
        // The caches now hold the batch's tokens.
        for j in 0..batch.len() {
            let i = batch.seq[j];
            self.slots[i].tokens.push(batch.token[j]);
            if let Some(a) = self.slots[i].seq.as_mut() {
                if a.pending.take().is_none() {
                    a.n_prompt_done += 1;
                    m.prompt_tokens_evaluated.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let nv = self.model.hp.n_vocab;
        let rows: Vec<usize> = (0..batch.len()).filter(|&j| batch.logits[j]).collect();
        for (r, &j) in rows.iter().enumerate() {
            let i = batch.seq[j];
            let row = &logits[r * nv..(r + 1) * nv];
            let outcome = catch_unwind(AssertUnwindSafe(|| self.sample(i, row, m)));
            match outcome {
                Ok(None) => {}
                Ok(Some(f)) => self.done(i, f, m),
                Err(p) => {
                    let msg = format!("generation panicked: {}", panic_text(&p));
                    self.slots[i].reset();
                    self.finish(i, Some(Event::Error(EngineError::Internal(msg))), m);
                }
            }
        }
        self.batch = batch;
        let dt = t0.elapsed().as_nanos() as u64;
        m.busy_nanos.fetch_add(dt, Ordering::Relaxed);
        m.steps.fetch_add(1, Ordering::Relaxed);
        if n_decode > 0 {
            m.decode_nanos.fetch_add(dt, Ordering::Relaxed);
        }
        self.publish();
        true
    }

    /// Sample slot `i`'s next token from `row`, send it, and say whether the
    /// request is finished.
    fn sample(&mut self, i: usize, row: &[f32], m: &Metrics) -> Option<FinishReason> {
        let tok = &self.model.tokenizer;
        let slot = &mut self.slots[i];
        let a = slot.seq.as_mut()?;
        #[cfg(test)]
        if a.job.req.panic_at == Some(a.n_generated) {
            panic!("test panic at token {}", a.n_generated);
        }
        if a.job.req.max_tokens == Some(0) {
            return Some(FinishReason::Length);
        }
        let next = a.sampler.sample(row, &a.history);
        if a.first_token.is_none() {
            a.first_token = Some(Instant::now());
        }
        if !a.job.req.ignore_eos && tok.is_eog(next) {
            return Some(FinishReason::Stop);
        }
        let logprob = a.job.req.top_logprobs.map(|k| logprobs(row, next, k));
        a.history.push(next);
        a.n_generated += 1;
        m.tokens_predicted.fetch_add(1, Ordering::Relaxed);
        let mut text = a.text.push(tok, next);
        let hit = a.text.stopped();
        let full = a.n_generated >= a.limit || slot.cache.n_past() >= slot.cache.n_ctx();
        if full && !hit {
            // The last token: what is held back goes with it, so that no
            // event without a token follows (llama-server's streams).
            text.push_str(&a.text.finish());
        }
        if a.job
            .events
            .send(Event::Token {
                id: next,
                text,
                logprob,
            })
            .is_err()
        {
            // The client left; the sweep at the next step frees the slot.
            return None;
        }
        if hit {
            return Some(FinishReason::Stop);
        }
        if full {
            // The context, unless max_tokens was reached.
            a.ctx_full = a.job.req.max_tokens.is_none_or(|t| a.n_generated < t);
            return Some(FinishReason::Length);
        }
        a.pending = Some(next);
        None
    }

    /// The scheduler loop: admit, step, repeat; sleep while idle.
    fn run(&mut self, sh: &Shared) {
        loop {
            {
                let mut q = sh.lock();
                loop {
                    if q.stop || q.cancel_all {
                        self.sweep(true, &sh.metrics);
                        for j in q.waiting.drain(..) {
                            let _ = j.events.send(Event::Error(EngineError::ShuttingDown));
                        }
                        q.active = 0;
                        q.cancel_all = false;
                        if q.stop {
                            return;
                        }
                    }
                    self.sweep(false, &sh.metrics);
                    self.admit(&mut q.waiting, &sh.metrics);
                    q.active = self.n_active();
                    if q.active > 0 {
                        break;
                    }
                    // Idle: wait for work (with a timeout to expire deadlines).
                    q = sh
                        .wake
                        .wait_timeout(q, Duration::from_millis(500))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
            self.step(&sh.metrics);
        }
    }
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Arc<Model> {
        Arc::new(Model::builtin().unwrap())
    }

    fn cfg(n_slots: usize, n_batch: usize) -> EngineConfig {
        EngineConfig {
            n_slots,
            n_ctx: 512,
            kv_f32: false,
            n_batch,
            max_queue: 16,
        }
    }

    fn greedy(prompt: Vec<u32>, max_tokens: usize) -> Request {
        Request {
            prompt,
            params: SamplingParams {
                temp: 0.0,
                ..Default::default()
            },
            max_tokens: Some(max_tokens),
            ..Default::default()
        }
    }

    fn job(req: Request) -> (Job, UnboundedReceiver<Event>) {
        let (tx, rx) = unbounded_channel();
        (
            Job {
                req,
                events: tx,
                queued: Instant::now(),
            },
            rx,
        )
    }

    /// Every event received so far: token ids, and the summary if done.
    fn drain(
        rx: &mut UnboundedReceiver<Event>,
    ) -> (Vec<u32>, Option<Summary>, Option<EngineError>) {
        let (mut ids, mut sum, mut err) = (vec![], None, None);
        while let Ok(ev) = rx.try_recv() {
            match ev {
                Event::Token { id, .. } => ids.push(id),
                Event::Text(_) => {}
                Event::Done(s) => sum = Some(s),
                Event::Error(e) => err = Some(e),
            }
        }
        (ids, sum, err)
    }

    fn prompt(m: &Model, text: &str) -> Vec<u32> {
        m.tokenizer.encode(text, true).unwrap()
    }

    #[test]
    fn logprobs_are_a_log_softmax() {
        let l = [1.0f32, 3.0, 2.0, 3.0];
        let lp = logprobs(&l, 2, 3);
        let z: f64 = l.iter().map(|&v| (v as f64).exp()).sum();
        assert!((lp.logprob as f64 - (2.0 - z.ln())).abs() < 1e-6);
        assert_eq!(
            lp.top.iter().map(|t| t.0).collect::<Vec<_>>(),
            vec![1, 3, 2]
        );
        assert!(lp.top[0].1 >= lp.top[2].1);
    }

    #[test]
    fn long_prompt_is_prefilled_in_chunks_between_decode_steps() {
        let m = model();
        let metrics = Metrics::default();
        let mut s = Scheduler::new(m.clone(), &cfg(2, 16)).unwrap();
        let mut q = VecDeque::new();
        let (a, mut rx_a) = job(greedy(prompt(&m, "ROMEO."), 40));
        q.push_back(a);
        s.admit(&mut q, &metrics);
        while drain(&mut rx_a).0.is_empty() {
            assert!(s.step(&metrics));
        }
        let long = "Now is the winter of our discontent made glorious summer. ".repeat(12);
        let long = prompt(&m, &long);
        assert!(long.len() > 100, "{}", long.len());
        let (b, mut rx_b) = job(greedy(long.clone(), 4));
        q.push_back(b);
        s.admit(&mut q, &metrics);
        // B needs several steps of 15 prompt tokens; A gets a token in each.
        let mut steps = 0;
        loop {
            assert!(s.step(&metrics));
            steps += 1;
            let (ids_a, _, _) = drain(&mut rx_a);
            let (ids_b, _, _) = drain(&mut rx_b);
            assert_eq!(ids_a.len(), 1, "A decodes at every step");
            if !ids_b.is_empty() {
                break;
            }
        }
        assert_eq!(steps, long.len().div_ceil(15));
    }

    #[test]
    fn batched_greedy_equals_alone_and_prefix_is_reused() {
        let m = model();
        let metrics = Metrics::default();
        let texts = [
            "ROMEO.",
            "KING HENRY.",
            "First Citizen:",
            "JULIET. O",
            "HAMLET.",
        ];
        let run = |s: &mut Scheduler, reqs: Vec<Request>| -> Vec<(Vec<u32>, Summary)> {
            let mut q = VecDeque::new();
            let mut rxs = vec![];
            for r in reqs {
                let (j, rx) = job(r);
                q.push_back(j);
                rxs.push((rx, vec![], None));
            }
            s.admit(&mut q, &metrics);
            while s.step(&metrics) {}
            rxs.into_iter()
                .map(|(mut rx, _, _): (_, Vec<u32>, Option<Summary>)| {
                    let (ids, sum, err) = drain(&mut rx);
                    assert!(err.is_none(), "{err:?}");
                    (ids, sum.expect("finished"))
                })
                .collect()
        };
        let reqs: Vec<Request> = texts.iter().map(|t| greedy(prompt(&m, t), 24)).collect();
        let mut alone = Vec::new();
        for r in &reqs {
            let mut s = Scheduler::new(m.clone(), &cfg(1, 64)).unwrap();
            alone.push(run(&mut s, vec![r.clone()]).remove(0));
        }
        let mut s = Scheduler::new(m.clone(), &cfg(5, 64)).unwrap();
        let together = run(&mut s, reqs.clone());
        for (a, t) in alone.iter().zip(&together) {
            assert_eq!(a.0, t.0);
            assert_eq!(t.1.finish, FinishReason::Length);
            assert_eq!(t.1.completion_tokens, 24);
        }
        // The next turn of request 2 goes to its slot and reuses the prefix.
        let mut next = reqs[2].prompt.clone();
        next.extend(&together[2].0);
        next.extend(prompt(&m, " more")[1..].iter());
        let again = run(&mut s, vec![greedy(next.clone(), 4)]).remove(0);
        assert_eq!(again.1.slot, together[2].1.slot);
        // Everything but the last generated token (never evaluated) was cached.
        assert_eq!(again.1.cached_tokens, reqs[2].prompt.len() + 24 - 1);

        // What /slots shows: processing while a request runs, then idle
        // with the prompt and all but the last generated token cached.
        let p = prompt(&m, "Third Citizen:");
        let mut s = Scheduler::new(m.clone(), &cfg(1, 64)).unwrap();
        let (j, mut rx) = job(greedy(p.clone(), 5));
        let mut q = VecDeque::from([j]);
        s.admit(&mut q, &metrics);
        s.step(&metrics);
        let busy = s.slot_infos();
        assert_eq!(
            (busy[0].is_processing, busy[0].n_prompt, busy[0].n_decoded),
            (true, p.len(), 1)
        );
        while s.step(&metrics) {}
        assert!(drain(&mut rx).1.is_some());
        let idle = s.slot_infos();
        assert_eq!(
            idle[0],
            SlotInfo {
                is_processing: false,
                n_cached: p.len() + 4,
                n_prompt: p.len(),
                n_decoded: 5
            }
        );

        // max_tokens 0 (llama-server's n_predict 0): the prompt goes into
        // a slot's cache, nothing is generated; the prompt is then found.
        let p = prompt(&m, "Second Servingman:");
        let mut s = Scheduler::new(m.clone(), &cfg(1, 64)).unwrap();
        let mut r = greedy(p.clone(), 4);
        r.max_tokens = Some(0);
        let (ids, sum) = run(&mut s, vec![r]).remove(0);
        assert!(ids.is_empty());
        assert_eq!(
            (sum.finish, sum.completion_tokens),
            (FinishReason::Length, 0)
        );
        let (ids, sum) = run(&mut s, vec![greedy(p.clone(), 4)]).remove(0);
        assert_eq!(sum.cached_tokens, p.len() - 1);
        let mut fresh = Scheduler::new(m.clone(), &cfg(1, 64)).unwrap();
        assert_eq!(ids, run(&mut fresh, vec![greedy(p, 4)]).remove(0).0);
    }

    #[test]
    fn a_panic_fails_one_request_only() {
        let m = model();
        let metrics = Metrics::default();
        let mut s = Scheduler::new(m.clone(), &cfg(2, 64)).unwrap();
        let mut bad = greedy(prompt(&m, "ROMEO."), 10);
        bad.panic_at = Some(3);
        let good = greedy(prompt(&m, "JULIET."), 10);
        let mut q = VecDeque::new();
        let (jb, mut rb) = job(bad);
        let (jg, mut rg) = job(good.clone());
        q.push_back(jb);
        q.push_back(jg);
        s.admit(&mut q, &metrics);
        while s.step(&metrics) {}
        let (ids_b, sum_b, err_b) = drain(&mut rb);
        assert_eq!(ids_b.len(), 3);
        assert!(sum_b.is_none());
        assert!(matches!(err_b, Some(EngineError::Internal(ref e)) if e.contains("panicked")));
        let (ids_g, sum_g, _) = drain(&mut rg);
        assert_eq!(sum_g.unwrap().completion_tokens, 10);
        // The slot is usable again and gives the same output as before.
        let (j, mut r) = job(good);
        q.push_back(j);
        s.admit(&mut q, &metrics);
        while s.step(&metrics) {}
        assert_eq!(drain(&mut r).0, ids_g);
    }

    #[test]
    fn a_dropped_receiver_frees_the_slot_within_a_step() {
        let m = model();
        let metrics = Metrics::default();
        let mut s = Scheduler::new(m.clone(), &cfg(1, 64)).unwrap();
        let mut q = VecDeque::new();
        let (j, rx) = job(greedy(prompt(&m, "ROMEO."), 200));
        q.push_back(j);
        s.admit(&mut q, &metrics);
        s.step(&metrics);
        s.step(&metrics);
        drop(rx);
        s.sweep(false, &metrics);
        assert!(s.has_free_slot());
        assert!(!s.step(&metrics));
    }
}
