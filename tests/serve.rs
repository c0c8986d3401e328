//! `tern serve` through raw HTTP/1.1 against the real binary and the
//! built-in model: the endpoints, streaming, stop strings, every error
//! status, API keys, a client leaving mid-stream, eight concurrent streams
//! on four slots equal to the same requests alone, a two-turn chat equal to
//! `tern chat`, and a graceful stop on SIGTERM.

mod common;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn tern() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tern"))
}

/// A `tern serve --port 0` child, ready (health 200) when returned.
struct Server {
    child: Child,
    addr: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut child = tern()
            .args(["serve", "--port", "0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut log = String::new();
        let addr = loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("tern serve exited:\n{log}"))
                .unwrap();
            log.push_str(&line);
            log.push('\n');
            if let Some(rest) = line.split("listening on http://").nth(1) {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        let log = Arc::new(Mutex::new(log));
        let l2 = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut l = l2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let s = Server { child, addr, log };
        let t0 = Instant::now();
        while get(&s.addr, "/health").status != 200 {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "not ready:\n{}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }
    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
    fn post(&self, path: &str, body: &Value) -> Resp {
        request(&self.addr, "POST", path, &[], body.to_string().as_bytes())
    }
    /// Start a streamed chat that generates `max_tokens` whatever the model
    /// says (ignore_eos); returns the connection once the first bytes of the
    /// response arrived.
    fn open_stream(&self, max_tokens: u32) -> TcpStream {
        let mut body = chat_body("ROMEO.", max_tokens);
        body["stream"] = json!(true);
        body["ignore_eos"] = json!(true);
        let mut c = send_head(
            &self.addr,
            "POST",
            "/v1/chat/completions",
            &[],
            body.to_string().as_bytes(),
        );
        let mut buf = [0u8; 256];
        assert!(c.read(&mut buf).unwrap() > 0);
        c
    }
    fn metric(&self, name: &str) -> f64 {
        let r = get(&self.addr, "/metrics");
        let text = String::from_utf8(r.body).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("tern_{name} ")))
            .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
            .parse()
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// The `data:` payloads of an SSE body.
    fn events(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.body)
            .lines()
            .filter_map(|l| l.strip_prefix("data: ").map(String::from))
            .collect()
    }
}

fn send_head(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    s
}

/// One request on its own connection; the whole response.
fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut s = send_head(addr, method, path, headers, body);
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    // A server that answers before reading the whole body (413) may reset
    // the connection after its response: keep what arrived.
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if !raw.is_empty() => {
                eprintln!("read after the response: {e}");
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    parse_response(&raw)
}

fn get(addr: &str, path: &str) -> Resp {
    request(addr, "GET", path, &[], b"")
}

fn parse_response(raw: &[u8]) -> Resp {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers end");
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(nl) = rest.windows(2).position(|w| w == b"\r\n") {
            let size =
                usize::from_str_radix(String::from_utf8_lossy(&rest[..nl]).trim(), 16).unwrap();
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[nl + 2..nl + 2 + size]);
            rest = &rest[nl + 4 + size..];
        }
        body = out;
    }
    Resp {
        status,
        headers,
        body,
    }
}

/// `tern serve` with `args` refuses to start: one clear error line naming
/// `needle`, exit status 1.
fn serve_fails(args: &[&str], needle: &str) {
    let o = tern()
        .args(["serve", "--port", "0"])
        .args(args)
        .output()
        .unwrap();
    common::assert_clean_failure(&o, needle);
}

fn chat_body(content: &str, max_tokens: u32) -> Value {
    json!({
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
    })
}

/// The text of a streamed chat or completion, and its finish reason.
fn streamed_text(r: &Resp) -> (String, String) {
    let ev = r.events();
    assert_eq!(ev.last().map(String::as_str), Some("[DONE]"), "{ev:?}");
    let mut text = String::new();
    let mut finish = String::new();
    for e in &ev[..ev.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        assert!(v.get("error").is_none(), "{v}");
        for c in v["choices"].as_array().unwrap() {
            if let Some(t) = c["delta"]["content"].as_str().or(c["text"].as_str()) {
                text.push_str(t);
            }
            if let Some(f) = c["finish_reason"].as_str() {
                finish = f.to_string();
            }
        }
    }
    (text, finish)
}

#[test]
fn endpoints_streaming_and_stop_strings() {
    // llama-server's --jinja and --metrics: what tern serve always does.
    let s = Server::start(&["-np", "2", "--jinja", "--metrics", "-t", "-1"]);
    // Models.
    let m = get(&s.addr, "/v1/models").json();
    assert_eq!(m["data"][0]["id"], "tern-shakespeare-i2_s.gguf");
    assert_eq!(m["data"][0]["meta"]["n_slots"], 2);
    // Tokenize / detokenize round trip.
    let t = s
        .post("/tokenize", &json!({"content": "ROMEO. What, ho!"}))
        .json();
    let ids = t["tokens"].as_array().unwrap().clone();
    assert!(ids.len() > 3);
    let d = s.post("/detokenize", &json!({"tokens": ids})).json();
    assert_eq!(d["content"], "ROMEO. What, ho!");
    let tp = s
        .post(
            "/tokenize",
            &json!({"content": "ROMEO.", "add_special": true, "with_pieces": true}),
        )
        .json();
    assert_eq!(tp["tokens"][0]["piece"], "<|begin_of_text|>");

    // Chat, not streamed: max_tokens → finish_reason length, usage counts.
    let r = s.post(
        "/v1/chat/completions",
        &chat_body("Good morrow! Who art thou?", 16),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 16);
    let u = &v["usage"];
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + 16
    );
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!text.is_empty());

    // The same streamed: role chunk, content deltas, finish, usage, [DONE].
    let mut body = chat_body("Good morrow! Who art thou?", 16);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = s.post("/v1/chat/completions", &body);
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let ev = r.events();
    let first: Value = serde_json::from_str(&ev[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    let usage: Value = serde_json::from_str(&ev[ev.len() - 2]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 16);
    assert_eq!(streamed_text(&r), (text.clone(), "length".to_string()));

    // Stop strings: the text ends before the first occurrence, finish stop.
    let words: Vec<&str> = text.split_whitespace().collect();
    let stop_word = words[words.len() / 2];
    let cut = &text[..text.find(stop_word).unwrap()];
    let mut body = chat_body("Good morrow! Who art thou?", 16);
    body["stop"] = json!(["@@never@@", stop_word]);
    let v = s.post("/v1/chat/completions", &body).json();
    assert_eq!(v["choices"][0]["message"]["content"], cut);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    body["stream"] = json!(true);
    let r = s.post("/v1/chat/completions", &body);
    assert_eq!(streamed_text(&r), (cut.to_string(), "stop".to_string()));

    // Completions with a string and with token ids give the same text.
    let c = json!({"prompt": "ROMEO.", "max_tokens": 12, "temperature": 0});
    let v = s.post("/v1/completions", &c).json();
    assert_eq!(v["object"], "text_completion");
    let ctext = v["choices"][0]["text"].as_str().unwrap().to_string();
    let ids = s
        .post(
            "/tokenize",
            &json!({"content": "ROMEO.", "add_special": true}),
        )
        .json()["tokens"]
        .clone();
    let v2 = s
        .post(
            "/v1/completions",
            &json!({"prompt": ids, "max_tokens": 12, "temperature": 0}),
        )
        .json();
    assert_eq!(v2["choices"][0]["text"], ctext.as_str());
    let mut cs = c.clone();
    cs["stream"] = json!(true);
    assert_eq!(streamed_text(&s.post("/v1/completions", &cs)).0, ctext);

    // Logprobs: the sampled token's log-probability and its alternatives.
    let mut body = chat_body("Good morrow!", 4);
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(3);
    let v = s.post("/v1/chat/completions", &body).json();
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 4);
    for e in content {
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy: the sampled token is the most likely one.
        assert_eq!(e["token"], top[0]["token"]);
        assert!(e["logprob"].as_f64().unwrap() <= 0.0);
    }

    // Metrics in Prometheus text.
    assert_eq!(s.metric("requests_total"), 8.0);
    assert!(s.metric("tokens_predicted_total") > 0.0);
    assert_eq!(s.metric("requests_queued"), 0.0);
}

#[test]
fn error_statuses() {
    let s = Server::start(&[
        "-np",
        "1",
        "-c",
        "128",
        "--body-limit",
        "4096",
        "--max-queue",
        "0",
    ]);
    let check = |r: Resp, status: u16, needle: &str| {
        assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
        let v = r.json();
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
        assert_eq!(v["error"]["code"], status);
        assert!(v["error"]["type"].is_string());
    };
    let raw = |body: &str| {
        request(
            &s.addr,
            "POST",
            "/v1/chat/completions",
            &[],
            body.as_bytes(),
        )
    };
    check(raw("{\"messages\": [}"), 400, "invalid request body");
    check(raw(r#"{"messages": "hi"}"#), 400, "invalid type");
    check(
        raw(r#"{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}"#),
        400,
        "invalid",
    );
    check(
        raw(r#"{"messages": [{"role": "user", "content": "x"}], "n": 2}"#),
        400,
        "n must be 1",
    );
    check(
        raw(r#"{"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}"#),
        400,
        "tool",
    );
    check(
        raw(r#"{"messages": [{"role": "user", "content": "x"}], "top_p": 1.5}"#),
        400,
        "top_p",
    );
    let long = "ROMEO. ".repeat(200);
    let r = s.post("/v1/chat/completions", &chat_body(&long, 4));
    // llama-server's shape: its type, the sizes as fields.
    let e = r.json()["error"].clone();
    assert_eq!(
        (&e["type"], &e["n_ctx"]),
        (&json!("exceed_context_size_error"), &json!(128)),
        "{e}"
    );
    assert!(e["n_prompt_tokens"].as_u64().unwrap() > 128, "{e}");
    check(r, 400, "exceeds the available context size");
    check(
        s.post("/v1/completions", &json!({"prompt": [1, 2, 999999]})),
        400,
        "outside the vocabulary",
    );
    let big = format!(r#"{{"prompt": "{}"}}"#, "a".repeat(20000));
    check(raw(&big), 413, "limit");
    check(get(&s.addr, "/v2/nothing"), 404, "no such endpoint");
    check(get(&s.addr, "/v1/chat/completions"), 405, "method");

    // Queue full: one slot, no queue; a running stream makes the next one wait → 503.
    let busy = s.open_stream(100);
    let r = s.post("/v1/chat/completions", &chat_body("x", 1));
    assert_eq!(r.header("retry-after"), Some("1"));
    check(r, 503, "busy");
    drop(busy);
}

#[test]
fn api_key() {
    let s = Server::start(&["--api-key", "s3cret"]);
    // llama-server's public endpoints.
    for path in ["/health", "/v1/health", "/models", "/v1/models"] {
        assert_eq!(get(&s.addr, path).status, 200, "{path}");
    }
    let tokenize = |headers: &[(&str, &str)]| {
        request(
            &s.addr,
            "POST",
            "/tokenize",
            headers,
            br#"{"content": "a"}"#,
        )
    };
    let r = tokenize(&[]);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["type"], "authentication_error");
    assert_eq!(tokenize(&[("Authorization", "Bearer s3creT")]).status, 401);
    assert_eq!(tokenize(&[("Authorization", "Bearer s3cret")]).status, 200);
    // Or in X-Api-Key (llama-server's other header).
    assert_eq!(tokenize(&[("X-Api-Key", "s3cret")]).status, 200);
    assert_eq!(tokenize(&[("X-Api-Key", "nope")]).status, 401);
    assert_eq!(get(&s.addr, "/props").status, 401);
    let body = chat_body("ROMEO.", 2).to_string();
    let r = request(
        &s.addr,
        "POST",
        "/v1/chat/completions",
        &[("Authorization", "Bearer s3cret")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        s.post("/v1/chat/completions", &chat_body("ROMEO.", 2))
            .status,
        401
    );
    // Without --cors no CORS headers are sent.
    let pre = request(
        &s.addr,
        "OPTIONS",
        "/v1/chat/completions",
        &[
            ("Origin", "http://x.test"),
            ("Access-Control-Request-Method", "POST"),
        ],
        b"",
    );
    assert!(pre.header("access-control-allow-origin").is_none());
}

#[test]
fn client_leaving_mid_stream_frees_its_slot() {
    // One slot and no queue: the next request is refused unless the slot is free.
    let s = Server::start(&["-np", "1", "-c", "4096", "--max-queue", "0"]);
    let mut c = s.open_stream(4000);
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while got.windows(6).filter(|w| w == b"data: ").count() < 5 {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(s.metric("requests_processing"), 1.0);
    let left = Instant::now();
    drop(c);
    while s.metric("requests_processing") != 0.0 {
        assert!(
            left.elapsed() < Duration::from_secs(2),
            "the slot stayed busy"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let r = s.post("/v1/chat/completions", &chat_body("JULIET.", 4));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // The abandoned request was far from its 4000 tokens.
    assert!(s.metric("tokens_predicted_total") < 2000.0);
}

#[test]
fn eight_streams_on_four_slots_equal_each_alone() {
    let s = Server::start(&["-np", "4"]);
    let prompts = [
        "Good morrow!",
        "What news from Rome?",
        "Tell me of the king.",
        "Who goes there?",
        "Speak, I charge thee.",
        "Is this a dagger?",
        "My lord, the queen.",
        "Farewell!",
    ];
    let body = |p: &str| {
        let mut b = chat_body(p, 24);
        b["stream"] = json!(true);
        b
    };
    let alone: Vec<(String, String)> = prompts
        .iter()
        .map(|p| streamed_text(&s.post("/v1/chat/completions", &body(p))))
        .collect();
    let addr = s.addr.clone();
    let handles: Vec<_> = prompts
        .iter()
        .map(|p| {
            let (addr, b) = (addr.clone(), body(p).to_string());
            std::thread::spawn(move || {
                streamed_text(&request(
                    &addr,
                    "POST",
                    "/v1/chat/completions",
                    &[],
                    b.as_bytes(),
                ))
            })
        })
        .collect();
    let together: Vec<(String, String)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(together, alone);
    assert!(alone.iter().all(|(t, _)| !t.is_empty()));
}

/// The `N` of "prompt eval time = … / N tokens" after `marker` in `text`.
fn prompt_eval_tokens(text: &str, marker: &str) -> usize {
    let after = &text[text
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker:?} in {text}"))..];
    let line = after
        .lines()
        .find(|l| l.contains("prompt eval time"))
        .unwrap();
    line.split('/')
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// llama-server's sampling flags set what a request that leaves a field
/// out gets; a request's own field wins; bad values fail at start.
#[test]
fn sampling_flags_are_request_defaults() {
    let s = Server::start(&["-np", "1", "--temp", "0", "-n", "3", "-s", "5"]);
    let ask = |body: Value| s.post("/v1/completions", &body).json();
    let plain = ask(json!({"prompt": "ROMEO."}));
    let explicit = ask(json!({"prompt": "ROMEO.", "temperature": 0, "max_tokens": 3}));
    assert_eq!(plain["usage"]["completion_tokens"], 3, "{plain}");
    assert_eq!(plain["choices"][0]["text"], explicit["choices"][0]["text"]);
    // -n also caps what a request asks (llama-server's slot budget).
    let longer = ask(json!({"prompt": "ROMEO.", "max_tokens": 5}));
    assert_eq!(longer["usage"]["completion_tokens"], 3, "{longer}");
    let shorter = ask(json!({"prompt": "ROMEO.", "max_tokens": 2}));
    assert_eq!(shorter["usage"]["completion_tokens"], 2, "{shorter}");
    // /props reports them as llama-server's default generation settings.
    let props = get(&s.addr, "/props").json();
    let d = &props["default_generation_settings"]["params"];
    assert_eq!(
        (&d["temperature"], &d["n_predict"], &d["seed"]),
        (&json!(0.0), &json!(3), &json!(5)),
        "{props}"
    );
    assert_eq!(props["total_slots"], 1);
    for (flag, value, needle) in [
        ("--top-p", "3", "--top-p 3: must be between 0 and 1"),
        ("-n", "0", "-n 0: give at least 1 token"),
    ] {
        serve_fails(&[flag, value], needle);
    }
}

/// llama-server's own endpoints: `/completion` (and `/completions`) with
/// its request fields and response shape, streamed and not; `/props`;
/// `/apply-template`; `/v1/health`.
#[test]
fn llama_server_completion_props_and_apply_template() {
    let s = Server::start(&["-np", "1"]);
    let native = |body: Value| {
        let r = s.post("/completion", &body);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()
    };
    let greedy =
        json!({"prompt": "ROMEO.", "n_predict": 12, "temperature": 0, "return_tokens": true});
    let v = native(greedy.clone());
    let oai = s
        .post(
            "/v1/completions",
            &json!({"prompt": "ROMEO.", "max_tokens": 12, "temperature": 0}),
        )
        .json();
    let content = v["content"].as_str().unwrap().to_string();
    assert_eq!(content, oai["choices"][0]["text"].as_str().unwrap());
    assert_eq!(
        (v["stop"].clone(), v["stop_type"].clone()),
        (json!(true), json!("limit"))
    );
    assert_eq!(v["tokens_predicted"], 12);
    assert_eq!(v["tokens_evaluated"], oai["usage"]["prompt_tokens"]);
    assert_eq!(v["generation_settings"]["n_predict"], 12);
    assert_eq!(v["truncated"], false);
    // return_tokens: the generated ids, whose text is the content.
    let toks = v["tokens"].clone();
    assert_eq!(toks.as_array().unwrap().len(), 12);
    let d = s.post("/detokenize", &json!({"tokens": toks})).json();
    assert_eq!(d["content"], content.as_str());
    // n_probs, not streamed: an entry per generated token.
    let mut body = greedy.clone();
    body["n_probs"] = json!(3);
    let p = native(body);
    let probs = p["completion_probabilities"].as_array().unwrap();
    assert_eq!(probs.len(), 12);
    for (e, id) in probs.iter().zip(toks.as_array().unwrap()) {
        assert_eq!(&e["id"], id);
        assert_eq!(e["top_logprobs"].as_array().unwrap().len(), 3);
        assert!(e["logprob"].as_f64().unwrap() <= 0.0);
    }
    // `/completions` is the same endpoint (llama-server's routes).
    assert_eq!(
        s.post("/completions", &greedy).json()["content"],
        content.as_str()
    );
    // A prompt of token ids and text mixed: BOS as an id, then the text
    // (no second BOS): the same prompt as the string.
    let ids = s
        .post("/tokenize", &json!({"content": "", "add_special": true}))
        .json()["tokens"]
        .clone();
    let mut mixed = greedy.clone();
    mixed["prompt"] = json!([ids[0], "ROMEO."]);
    let m = native(mixed);
    assert_eq!(
        (&m["content"], &m["tokens_evaluated"]),
        (&v["content"], &v["tokens_evaluated"])
    );

    // A stop string: content cut before it, stop_type word, the word named.
    let words: Vec<&str> = content.split_whitespace().collect();
    let stop_word = words[words.len() / 2];
    let mut body = greedy.clone();
    body["stop"] = json!(["@@never@@", stop_word]);
    let w = native(body);
    assert_eq!(w["content"], &content[..content.find(stop_word).unwrap()]);
    assert_eq!(
        (&w["stop_type"], &w["stopping_word"]),
        (&json!("word"), &json!(stop_word))
    );

    // Streamed: one token a event (stop false), then the summary (stop
    // true), no [DONE]; the pieces make the same text.
    let mut body = greedy.clone();
    body["stream"] = json!(true);
    body["n_probs"] = json!(2);
    let ev: Vec<Value> = s
        .post("/completion", &body)
        .events()
        .iter()
        .map(|e| serde_json::from_str(e).unwrap_or_else(|_| panic!("not JSON: {e}")))
        .collect();
    let (last, parts) = ev.split_last().unwrap();
    assert_eq!(
        (&last["stop"], &last["stop_type"]),
        (&json!(true), &json!("limit")),
        "{last}"
    );
    assert_eq!(last["tokens_predicted"], 12);
    let mut text = String::new();
    for p in parts {
        assert_eq!(p["stop"], false, "{p}");
        // Every event before the summary carries its token.
        assert_eq!(p["tokens"].as_array().unwrap().len(), 1, "{p}");
        text.push_str(p["content"].as_str().unwrap());
        if let Some(probs) = p["completion_probabilities"].as_array() {
            assert_eq!(p["tokens"].as_array().unwrap().len(), 1);
            let top = probs[0]["top_logprobs"].as_array().unwrap();
            assert_eq!(top.len(), 2);
            // Greedy: the sampled token is the most likely one.
            assert_eq!(probs[0]["id"], top[0]["id"]);
            assert_eq!(probs[0]["id"], p["tokens"][0]);
        }
    }
    assert_eq!(
        parts
            .iter()
            .filter(|p| p["completion_probabilities"].is_array())
            .count(),
        12
    );
    assert_eq!(text, content);

    // n_predict 0: the prompt goes into the slot's cache, nothing is
    // generated; the next request finds it there.
    let prompt = "KING HENRY. Once more unto the breach";
    let z = native(json!({"prompt": prompt, "n_predict": 0}));
    assert_eq!(
        (&z["content"], &z["tokens_predicted"]),
        (&json!(""), &json!(0)),
        "{z}"
    );
    let n = z["tokens_evaluated"].as_u64().unwrap();
    // /slots: the one slot, idle, its cache holding that prompt.
    let slots = get(&s.addr, "/slots").json();
    assert_eq!(slots.as_array().unwrap().len(), 1, "{slots}");
    assert_eq!(
        (&slots[0]["is_processing"], &slots[0]["tokens_cached"]),
        (&json!(false), &json!(n)),
        "{slots}"
    );
    let again = native(json!({"prompt": prompt, "n_predict": 1}));
    // timings.cache_n: the prompt found in the cache; tokens_cached: all
    // the cache holds at the end (the one generated token is not in it).
    assert_eq!(
        again["timings"]["cache_n"].as_u64().unwrap(),
        n - 1,
        "{again}"
    );
    assert_eq!(again["tokens_cached"].as_u64().unwrap(), n, "{again}");
    assert!(
        again["timings"]["predicted_per_token_ms"].is_number(),
        "{again}"
    );
    assert_eq!(again["generation_settings"]["logit_bias"], json!([]));

    // /tokenize: a piece that is not UTF-8 alone is its bytes; with
    // parse_special false a special token's text is plain text.
    let t = s
        .post("/tokenize", &json!({"content": "é", "with_pieces": true}))
        .json();
    let pieces: Vec<Value> = t["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["piece"].clone())
        .collect();
    assert!(pieces.iter().any(|p| p.is_array()), "{t}");
    let bos = |parse: bool| {
        s.post(
            "/tokenize",
            &json!({"content": "<|begin_of_text|>", "parse_special": parse}),
        )
        .json()["tokens"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(bos(true), 1);
    assert!(bos(false) > 1);

    // /slots?fail_on_no_slot: 503 while the one slot is busy.
    let busy = s.open_stream(900);
    // The stream's first bytes come before the scheduler takes it.
    let t0 = Instant::now();
    while get(&s.addr, "/slots").json()[0]["is_processing"] != true {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the slot never got busy"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let r = get(&s.addr, "/slots?fail_on_no_slot=1");
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    drop(busy);

    // Refused: several prompts, samplers tern does not have; their "off"
    // values are fine.
    for (body, needle) in [
        (json!({"prompt": ["a", "b"]}), "one prompt per request"),
        (json!({"prompt": "a", "dry_multiplier": 0.8}), "DRY"),
        (json!({"prompt": "a", "n_probs": 99}), "n_probs"),
        (json!({"prompt": {"prompt_string": "a"}}), "prompt must be"),
    ] {
        let r = s.post("/completion", &body);
        assert_eq!(r.status, 400, "{body}");
        let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    let ok = native(
        json!({"prompt": "a", "n_predict": 1, "dry_multiplier": 0, "xtc_probability": 0.0, "cache_prompt": true, "id_slot": -1}),
    );
    assert_eq!(ok["tokens_predicted"], 1);

    // /apply-template renders what the chat endpoint evaluates.
    let messages = json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who art thou?"}]);
    let t = s
        .post("/apply-template", &json!({"messages": messages}))
        .json();
    let rendered = t["prompt"].as_str().unwrap();
    let n_rendered = s.post("/tokenize", &json!({"content": rendered})).json()["tokens"]
        .as_array()
        .unwrap()
        .len();
    let chat = s
        .post(
            "/v1/chat/completions",
            &json!({"messages": messages, "max_tokens": 1}),
        )
        .json();
    assert_eq!(chat["usage"]["prompt_tokens"], n_rendered, "{rendered:?}");
    let bare = s
        .post(
            "/apply-template",
            &json!({"messages": messages, "add_generation_prompt": false}),
        )
        .json();
    let bare = bare["prompt"].as_str().unwrap();
    assert!(
        rendered.starts_with(bare) && bare.len() < rendered.len(),
        "{bare:?} {rendered:?}"
    );
    let r = s.post(
        "/apply-template",
        &json!({"messages": messages, "tools": [{"type": "function"}]}),
    );
    assert_eq!(r.status, 400);

    // /props: slots, context, the template the server renders with.
    let props = get(&s.addr, "/props").json();
    assert_eq!(props["total_slots"], 1);
    assert_eq!(
        props["default_generation_settings"]["n_ctx"],
        v["generation_settings"]["n_ctx"]
    );
    assert!(
        props["chat_template"]
            .as_str()
            .unwrap()
            .contains("add_generation_prompt"),
        "{props}"
    );
    assert_eq!(get(&s.addr, "/v1/health").status, 200);
}

/// llama-server's `-v` (a line per request), `-b`/`-ub` (a step is the
/// smaller, at most 512), `--threads-http`, `--log-disable` (no start and
/// stop lines; errors remain).
#[test]
fn llama_server_logging_batch_and_thread_flags() {
    let s = Server::start(&[
        "-np",
        "1",
        "-v",
        "-b",
        "2048",
        "-ub",
        "256",
        "--threads-http",
        "3",
        "--no-slots",
        "-c",
        "64",
    ]);
    let wait_for = |needle: &str| {
        let t0 = Instant::now();
        while !s.log().contains(needle) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "no {needle:?} in:\n{}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for("batch 256,");
    wait_for("GET /health 200 ");
    assert_eq!(s.post("/v1/completions", &json!({"prompt": 3})).status, 400);
    wait_for("POST /v1/completions 400 ");
    // A path is the client's text: escaped in the log.
    assert_eq!(get(&s.addr, "/no%0Asuch").status, 404);
    wait_for("GET /no%0Asuch 404 ");
    assert_eq!(get(&s.addr, "/slots").status, 501);
    // A long path is shortened in the log.
    let long = format!("/{}", "a".repeat(3000));
    assert_eq!(get(&s.addr, &long).status, 404);
    wait_for("GET /aaaa");
    let line = s
        .log()
        .lines()
        .find(|l| l.contains("GET /aaaa"))
        .unwrap()
        .to_string();
    assert!(line.len() < 1500 && line.contains('…'), "{line}");
    // llama-server's `truncated`: the context (64 here) ended the text,
    // not n_predict.
    let ask = |n_predict: i64| {
        s.post(
            "/completion",
            &json!({"prompt": "ROMEO.", "n_predict": n_predict, "temperature": 0, "ignore_eos": true}),
        )
        .json()
    };
    let full = ask(-1);
    assert_eq!(
        (&full["stop_type"], &full["truncated"]),
        (&json!("limit"), &json!(true)),
        "{full}"
    );
    let short = ask(3);
    assert_eq!(
        (&short["stop_type"], &short["truncated"]),
        (&json!("limit"), &json!(false)),
        "{short}"
    );
    drop(s);

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.gguf");
    let o = tern()
        .args(["serve", "--port", "0", "--log-disable", "-m"])
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("listening"), "{err}");
    assert!(err.contains("missing.gguf"), "{err}");
    for (args, needle) in [
        (
            &["--threads-http", "999"][..],
            "--threads-http 999: at most",
        ),
        (&["-ub", "0"][..], "-b and -ub must be at least 1"),
    ] {
        serve_fails(args, needle);
    }
}

/// `-c 0` is the model's whole training context (llama-server's); without
/// -c the context is the training context at most 4096.
#[test]
fn ctx_size_zero_is_the_training_context() {
    let dir = tempfile::tempdir().unwrap();
    let f = common::with_key(
        &common::root().join("models/tern-shakespeare-i2_s.gguf"),
        "bitnet-b1.58.context_length",
        tern::gguf::Value::U32(8192),
        dir.path(),
        "long.gguf",
    );
    let f = f.to_str().unwrap();
    for (args, want) in [
        (&["-c", "0"][..], "1 slot × 8192 tokens"),
        (&[][..], "1 slot × 4096 tokens"),
    ] {
        let mut a = vec!["-m", f, "-np", "1"];
        a.extend_from_slice(args);
        let s = Server::start(&a);
        // The ready line comes just before /health turns 200.
        let t0 = Instant::now();
        while !s.log().contains("ready:") && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(s.log().contains(want), "{args:?}: {}", s.log());
    }
}

/// `--chat-template-file` (llama-server's) renders every request's
/// messages: BOS, then the template's "X:" and the message.
#[test]
fn chat_template_file_renders_requests() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.jinja");
    std::fs::write(&f, "{{ 'X:' + messages[-1]['content'] }}").unwrap();
    let s = Server::start(&["-np", "1", "--chat-template-file", f.to_str().unwrap()]);
    let v = s
        .post(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}),
        )
        .json();
    assert_eq!(v["usage"]["prompt_tokens"], 5, "{v}");
}

#[test]
fn two_turn_chat_equals_tern_chat_and_reuses_the_prefix() {
    let s = Server::start(&["-np", "2"]);
    let sys = "You are a helpful assistant.";
    let (u1, u2) = ("Good morrow! Who art thou?", "Tell me of the king.");
    let sampling = json!({"temperature": 0.7, "top_k": 40, "top_p": 0.95, "min_p": 0.05,
                          "repeat_penalty": 1.1, "presence_penalty": 0.4,
                          "frequency_penalty": -0.3, "seed": 42, "max_tokens": 24});
    let ask = |messages: Value| {
        let mut b = sampling.clone();
        b["messages"] = messages;
        let v = s.post("/v1/chat/completions", &b).json();
        (
            v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string(),
            v,
        )
    };
    let (r1, v1) =
        ask(json!([{"role": "system", "content": sys}, {"role": "user", "content": u1}]));
    let (r2, v2) = ask(json!([
        {"role": "system", "content": sys},
        {"role": "user", "content": u1},
        {"role": "assistant", "content": r1},
        {"role": "user", "content": u2}
    ]));

    let mut chat = tern()
        .args([
            "chat", "--system", sys, "-n", "24", "--temp", "0.7", "--top-k", "40",
        ])
        .args([
            "--top-p",
            "0.95",
            "--min-p",
            "0.05",
            "--repeat-penalty",
            "1.1",
            "--presence-penalty",
            "0.4",
            "--frequency-penalty",
            "-0.3",
            "--seed",
            "42",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // `/set seed` gives the second turn a fresh generator, as each request has.
    let input = format!("{u1}\n/set seed 42\n{u2}\n/stats\n");
    chat.stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = chat.wait_with_output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    // Piped `tern chat` prints each reply trimmed, one after the other.
    assert_eq!(stdout, format!("{}\n{}\n", r1.trim(), r2.trim()));

    // The second turn evaluated only what tern chat evaluated: the new
    // message (one more token when the first reply was cut by max_tokens,
    // since tern chat also evaluates the last token of a reply).
    let chat_new = prompt_eval_tokens(&stderr, "last reply:");
    let u = &v2["usage"];
    let cached = u["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap() as usize;
    let server_new = u["prompt_tokens"].as_u64().unwrap() as usize - cached;
    let cut = v1["choices"][0]["finish_reason"] == "length";
    assert!(
        server_new == chat_new || (cut && server_new == chat_new + 1),
        "server evaluated {server_new} new tokens, tern chat {chat_new}"
    );
    assert!(cached >= v1["usage"]["prompt_tokens"].as_u64().unwrap() as usize);
    assert_eq!(v2["timings"]["slot"], v1["timings"]["slot"]);
    assert!(s.metric("prompt_tokens_cached_total") >= cached as f64);
}

// SIGTERM and the `kill` command are Unix-only (on Windows the server stops on Ctrl-C).
#[cfg(unix)]
#[test]
fn sigterm_finishes_or_cancels_and_exits_zero() {
    let mut s = Server::start(&["-np", "1", "-c", "4096"]);
    let mut c = s.open_stream(4000);
    let t0 = Instant::now();
    let ok = Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    // The running stream ends (finished or cancelled) and the process exits 0.
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "still running:\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}\n{}", s.log());
    assert!(t0.elapsed() < Duration::from_secs(12));
    std::thread::sleep(Duration::from_millis(100));
    assert!(s.log().contains("stopping"), "{}", s.log());
    // New connections are refused.
    assert!(TcpStream::connect(&s.addr).is_err());
}
