//! A fake LLM provider: a real HTTP server on loopback speaking OpenAI chat completions
//! (`POST /v1/chat/completions`) and Anthropic messages (`POST /v1/messages`), whole and streamed.
//! Used by the `serve` tests and the `serve_load` example.
//!
//! The provider's model id picks the behaviour (substrings, combinable):
//! - `fail503` / `fail429`: that status, every time;
//! - `slow`: waits 3 s before answering;
//! - `drip`: streams with 300 ms between chunks;
//! - `midfail`: streams two chunks, then an error event;
//! - `nousage`: reports no token usage;
//! - `cached`: keeps a prompt cache per model id, as providers do: the leading messages a request
//!   shares with the previous request to that model id are reported as cached, at 10 tokens a
//!   message (OpenAI: `prompt_tokens_details.cached_tokens`; Anthropic: `cache_read_input_tokens`
//!   and `cache_creation_input_tokens`, only for requests marked with `cache_control`).
//!
//! Hostile behaviours (for the `soak` example; OpenAI protocol except `hang`), whole and streamed:
//! - `hang`: never answers (holds the request for an hour);
//! - `stall`: sends the first bytes of its answer, then nothing more (for an hour);
//! - `die`: sends the first bytes, then drops the connection;
//! - `endless`: a stream (or a whole body) that never ends, about 500 KB/s;
//! - `garbage`: malformed answers: a body that is not JSON; streams of bad JSON, invalid UTF-8,
//!   wrongly shaped chunks, or a 2 MiB line that never ends (in turn, request by request);
//! - `huge`: a 40 MiB answer (a whole body, or a stream of 64 KiB chunks without usage);
//! - `trickle`: a slow drip: 15 stream chunks 1 s apart, or a whole body 16 bytes per 200 ms.
//!
//! With `tools`, the Anthropic side calls the first tool with `{"city": "Oslo"}` (whole or
//! streamed), and answers `tool said: <result>` once the last turn holds a tool result.
//!
//! Otherwise it answers `echo: <last user message>`, word by word when streaming, with usage
//! `prompt_tokens` = 10 × messages, `completion_tokens` = words of the answer.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Json;
use serde_json::{json, Value};

/// A price table for the fake's three models (cheap, mid, strong), for `serve --prices`.
pub const FAKE_PRICES: &str = r#"
[models."fake-cheap"]
provider = "fakeco"
input_per_mtok = 0.10
output_per_mtok = 0.40
cached_input_per_mtok = 0.01
tier = "cheap"
source = "fake provider fixture"
as_of = "2026-11-23"

[models."fake-mid"]
provider = "fakeco"
input_per_mtok = 1.00
output_per_mtok = 4.00
cached_input_per_mtok = 0.10
cache_write_per_mtok = 1.25
tier = "mid"
source = "fake provider fixture"
as_of = "2026-11-23"

[models."fake-strong"]
provider = "otherco"
input_per_mtok = 3.00
output_per_mtok = 15.00
cached_input_per_mtok = 0.30
cache_write_per_mtok = 3.75
tier = "strong"
source = "fake provider fixture"
as_of = "2026-11-23"
"#;

/// The key the fake accepts (bearer or `x-api-key`).
pub const PROVIDER_KEY: &str = "fake-provider-key-0123456789";

/// What the fake saw.
#[derive(Default)]
pub struct Seen {
    /// (path, model id, body) of each request.
    pub requests: Mutex<Vec<(String, String, Value)>>,
    pub count: AtomicUsize,
    /// The last request's messages per `cached` model id (the system prompt first, if any).
    prefixes: Mutex<std::collections::HashMap<String, Vec<Value>>>,
}

impl Seen {
    /// Messages (system first) this request shares with the previous one to `model`, and remembers
    /// this request's.
    fn cached_messages(&self, model: &str, body: &Value) -> u64 {
        let mut now: Vec<Value> = body.get("system").into_iter().cloned().collect();
        now.extend(body["messages"].as_array().cloned().unwrap_or_default());
        // A cache_control mark is not part of what is cached, and a string is one text block.
        fn strip(v: &Value) -> Value {
            match v {
                Value::String(t) => json!([{"type": "text", "text": t}]),
                Value::Array(parts) => Value::Array(
                    parts
                        .iter()
                        .map(|p| {
                            let mut p = p.clone();
                            if let Some(o) = p.as_object_mut() {
                                o.remove("cache_control");
                            }
                            p
                        })
                        .collect(),
                ),
                Value::Object(o) => {
                    let mut o = o.clone();
                    if let Some(c) = o.get("content").map(strip) {
                        o.insert("content".into(), c);
                    }
                    Value::Object(o)
                }
                other => other.clone(),
            }
        }
        let now: Vec<Value> = now.iter().map(strip).collect();
        let mut prefixes = self.prefixes.lock().unwrap();
        let shared = prefixes.get(model).map_or(0, |before| before.iter().zip(&now).take_while(|(a, b)| a == b).count());
        prefixes.insert(model.to_string(), now);
        shared as u64
    }
}

fn marked(body: &Value) -> bool {
    body.to_string().contains("\"cache_control\"")
}

impl Seen {
    pub fn models(&self) -> Vec<String> {
        self.requests.lock().unwrap().iter().map(|(_, m, _)| m.clone()).collect()
    }
}

pub struct FakeLlm {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
}

impl FakeLlm {
    /// Starts the fake on a free loopback port, on the current tokio runtime.
    pub async fn start() -> FakeLlm {
        let seen = Arc::new(Seen::default());
        let app =
            axum::Router::new().route("/v1/chat/completions", post(openai)).route("/v1/messages", post(anthropic)).with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeLlm { addr, seen }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

fn last_user(body: &Value) -> String {
    let msgs = body["messages"].as_array().cloned().unwrap_or_default();
    let m = msgs.iter().rev().find(|m| m["role"] == "user").cloned().unwrap_or(Value::Null);
    match &m["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join("\n"),
        _ => String::new(),
    }
}

/// Common checks; `Err` is the response to send instead of an answer.
async fn admit(seen: &Seen, path: &str, headers: &HeaderMap, body: &Value) -> Result<String, Response> {
    let model = body["model"].as_str().unwrap_or_default().to_string();
    seen.requests.lock().unwrap().push((path.to_string(), model.clone(), body.clone()));
    seen.count.fetch_add(1, Ordering::SeqCst);
    let key = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
    if key != Some(PROVIDER_KEY) {
        return Err((StatusCode::UNAUTHORIZED, Json(json!({"error": {"message": "bad key"}}))).into_response());
    }
    if model.contains("fail503") {
        return Err((StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": {"message": "overloaded"}}))).into_response());
    }
    if model.contains("fail429") {
        return Err((StatusCode::TOO_MANY_REQUESTS, Json(json!({"error": {"message": "slow down"}}))).into_response());
    }
    if model.contains("slow") {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    if model.contains("hang") {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    Ok(model)
}

fn words(body: &Value) -> Vec<String> {
    format!("echo: {}", last_user(body)).split(' ').map(str::to_string).collect()
}

fn sse_body(events: Vec<(Option<&'static str>, Value)>, gap: Duration, done: bool) -> Response {
    let stream = futures_util::stream::unfold((events.into_iter(), true, done), move |(mut it, first, done)| async move {
        match it.next() {
            Some((event, data)) => {
                if !first && !gap.is_zero() {
                    tokio::time::sleep(gap).await;
                }
                let text = match event {
                    Some(e) => format!("event: {e}\ndata: {data}\n\n"),
                    None => format!("data: {data}\n\n"),
                };
                Some((Ok::<Bytes, Infallible>(Bytes::from(text)), (it, false, done)))
            }
            None if done => Some((Ok(Bytes::from_static(b"data: [DONE]\n\n")), (it, false, false))),
            None => None,
        }
    });
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut().insert("content-type", "text/event-stream".parse().unwrap());
    resp
}

async fn openai(State(seen): State<Arc<Seen>>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    let model = match admit(&seen, "openai", &headers, &body).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    if let Some(r) = hostile(&model, &body) {
        return r;
    }
    let w = words(&body);
    let n_msgs = body["messages"].as_array().map_or(0, Vec::len) as u64;
    let mut usage = json!({"prompt_tokens": 10 * n_msgs, "completion_tokens": w.len(), "total_tokens": 10 * n_msgs + w.len() as u64});
    if model.contains("cached") {
        usage["prompt_tokens_details"] = json!({"cached_tokens": 10 * seen.cached_messages(&model, &body)});
    }
    let base = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model});
    if body["stream"] != true {
        let mut answer = json!({"id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": w.join(" ")}, "finish_reason": "stop"}]});
        if !model.contains("nousage") {
            answer["usage"] = usage;
        }
        return Json(answer).into_response();
    }
    let chunk = |delta: Value, finish: Value| {
        let mut c = base.clone();
        c["choices"] = json!([{"index": 0, "delta": delta, "finish_reason": finish}]);
        (None, c)
    };
    let mut events = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)];
    for (i, word) in w.iter().enumerate() {
        let text = if i == 0 { word.clone() } else { format!(" {word}") };
        events.push(chunk(json!({"content": text}), Value::Null));
        if model.contains("midfail") && i == 1 {
            events.push((None, json!({"error": {"message": "upstream crashed", "type": "server_error"}})));
            return sse_body(events, Duration::ZERO, false);
        }
    }
    events.push(chunk(json!({}), "stop".into()));
    if body["stream_options"]["include_usage"] == true && !model.contains("nousage") {
        let mut u = base.clone();
        u["choices"] = json!([]);
        u["usage"] = usage;
        events.push((None, u));
    }
    let gap = if model.contains("drip") { Duration::from_millis(300) } else { Duration::ZERO };
    sse_body(events, gap, true)
}

async fn anthropic(State(seen): State<Arc<Seen>>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    let model = match admit(&seen, "anthropic", &headers, &body).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    if headers.get("anthropic-version").is_none() || body["max_tokens"].as_u64().is_none() {
        return (StatusCode::BAD_REQUEST, Json(json!({"type": "error", "error": {"type": "invalid_request_error", "message": "anthropic-version and max_tokens are required"}}))).into_response();
    }
    if body["messages"].as_array().into_iter().flatten().any(|m| m["role"] == "system") {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"type": "error", "error": {"type": "invalid_request_error", "message": "system is a top-level field"}})),
        )
            .into_response();
    }
    let input = 10 * body["messages"].as_array().map_or(0, Vec::len) as u64 + u64::from(body.get("system").is_some()) * 10;
    if let Some(tool) = body["tools"][0]["name"].as_str() {
        // A tool result in the last turn is answered in words; otherwise the fake calls the first tool.
        let last = body["messages"].as_array().and_then(|m| m.last()).cloned().unwrap_or(Value::Null);
        let result = last["content"].as_array().and_then(|c| c.iter().find(|b| b["type"] == "tool_result")).map(|b| b["content"].clone());
        if result.is_none() {
            return anthropic_tool_call(&model, tool, input, body["stream"] == true);
        }
        let text = format!("tool said: {}", result.unwrap().as_str().unwrap_or(""));
        return Json(json!({"id": "msg_fake", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "usage": {"input_tokens": input, "output_tokens": 3}}))
        .into_response();
    }
    let w = words(&body);
    if body["stream"] != true {
        let mut answer = json!({"id": "msg_fake", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": w.join(" ")}], "stop_reason": "end_turn"});
        if !model.contains("nousage") {
            answer["usage"] = json!({"input_tokens": input, "output_tokens": w.len()});
            if model.contains("cached") && marked(&body) {
                let read = 10 * seen.cached_messages(&model, &body);
                answer["usage"] = json!({"input_tokens": 0, "output_tokens": w.len(),
                    "cache_read_input_tokens": read, "cache_creation_input_tokens": input - read});
            }
        }
        return Json(answer).into_response();
    }
    let mut start_usage = json!({"input_tokens": input, "output_tokens": 1});
    if model.contains("cached") && marked(&body) {
        let read = 10 * seen.cached_messages(&model, &body);
        start_usage =
            json!({"input_tokens": 0, "output_tokens": 1, "cache_read_input_tokens": read, "cache_creation_input_tokens": input - read});
    }
    let mut events = vec![
        (
            Some("message_start"),
            json!({"type": "message_start", "message": {"id": "msg_fake", "type": "message", "role": "assistant",
            "model": model, "content": [], "usage": start_usage}}),
        ),
        (Some("content_block_start"), json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})),
        (Some("ping"), json!({"type": "ping"})),
    ];
    for (i, word) in w.iter().enumerate() {
        let text = if i == 0 { word.clone() } else { format!(" {word}") };
        events.push((
            Some("content_block_delta"),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
        ));
        if model.contains("midfail") && i == 1 {
            events.push((Some("error"), json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})));
            return sse_body(events, Duration::ZERO, false);
        }
    }
    events.push((Some("content_block_stop"), json!({"type": "content_block_stop", "index": 0})));
    events.push((
        Some("message_delta"),
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": w.len()}}),
    ));
    events.push((Some("message_stop"), json!({"type": "message_stop"})));
    let gap = if model.contains("drip") { Duration::from_millis(300) } else { Duration::ZERO };
    sse_body(events, gap, false)
}

fn anthropic_tool_call(model: &str, tool: &str, input: u64, stream: bool) -> Response {
    if !stream {
        return Json(json!({"id": "msg_fake", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": "Let me check."}, {"type": "tool_use", "id": "toolu_fake", "name": tool, "input": {"city": "Oslo"}}],
            "stop_reason": "tool_use", "usage": {"input_tokens": input, "output_tokens": 12}}))
        .into_response();
    }
    let events = vec![
        (
            Some("message_start"),
            json!({"type": "message_start", "message": {"id": "msg_fake", "model": model, "usage": {"input_tokens": input, "output_tokens": 1}}}),
        ),
        (
            Some("content_block_start"),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "toolu_fake", "name": tool, "input": {}}}),
        ),
        (
            Some("content_block_delta"),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": "}}),
        ),
        (
            Some("content_block_delta"),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "\"Oslo\"}"}}),
        ),
        (Some("content_block_stop"), json!({"type": "content_block_stop", "index": 0})),
        (Some("message_delta"), json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 12}})),
        (Some("message_stop"), json!({"type": "message_stop"})),
    ];
    sse_body(events, Duration::ZERO, false)
}

/// The hostile behaviours' answers (OpenAI protocol), or `None` for a well-behaved model id.
fn hostile(model: &str, body: &Value) -> Option<Response> {
    use futures_util::StreamExt;
    type Item = Result<Bytes, std::io::Error>;
    let kind = ["stall", "die", "endless", "garbage", "huge", "trickle"].into_iter().find(|k| model.contains(k))?;
    let stream = body["stream"] == true;
    let m = model.to_string();
    let chunk = move |content: &str| -> Bytes {
        let c = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": m,
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]});
        Bytes::from(format!("data: {c}\n\n"))
    };
    let hour = Duration::from_secs(3600);
    let whole_head = Bytes::from(format!(
        "{{\"id\": \"chatcmpl-fake\", \"object\": \"chat.completion\", \"created\": 1, \"model\": \"{model}\", \"choices\": [{{\"index\": 0, \"message\": {{\"role\": \"assistant\", \"content\": \""
    ));
    let whole_tail = Bytes::from_static(b"\"}, \"finish_reason\": \"stop\"}]}");
    // 64 KiB of words, shared by every `huge` and `endless` answer.
    static BLOCK: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    let block = BLOCK.get_or_init(|| Bytes::from("lorem ipsum dolor sit amet ".repeat(65536 / 27))).clone();
    let body: Body = match (kind, stream) {
        ("stall", true) => {
            let first = vec![chunk(""), chunk("stalled"), chunk(" here")];
            let s =
                futures_util::stream::iter(first.into_iter().map(Ok::<_, std::io::Error>)).chain(futures_util::stream::once(async move {
                    tokio::time::sleep(hour).await;
                    Ok::<_, std::io::Error>(Bytes::new())
                }));
            Body::from_stream(s)
        }
        ("stall", false) => {
            let s = futures_util::stream::once(async move { Ok::<_, std::io::Error>(whole_head) }).chain(futures_util::stream::once(
                async move {
                    tokio::time::sleep(hour).await;
                    Ok::<_, std::io::Error>(whole_tail)
                },
            ));
            Body::from_stream(s)
        }
        ("die", _) => {
            let first: Vec<Item> =
                if stream { vec![Ok(chunk("")), Ok(chunk("about to")), Ok(chunk(" die"))] } else { vec![Ok(whole_head)] };
            let s = futures_util::stream::iter(first).chain(futures_util::stream::once(async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err::<Bytes, _>(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "the fake provider died"))
            }));
            Body::from_stream(s)
        }
        ("endless", _) => {
            let piece = if stream { chunk(&"more words ".repeat(93)) } else { block.slice(..1024) };
            let head = if stream { chunk("") } else { whole_head };
            let s = futures_util::stream::once(async move { Ok::<_, std::io::Error>(head) }).chain(futures_util::stream::unfold(
                0u64,
                move |i| {
                    let piece = piece.clone();
                    async move {
                        if i >= 100_000_000 {
                            return None;
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        Some((Ok::<_, std::io::Error>(piece), i + 1))
                    }
                },
            ));
            Body::from_stream(s)
        }
        ("garbage", false) => {
            let mut r = Response::new(Body::from("<html>502 Bad Gateway</html> {\"choices\": [ {{{ not json"));
            r.headers_mut().insert("content-type", "application/json".parse().unwrap());
            return Some(r);
        }
        ("garbage", true) => {
            static TURN: AtomicUsize = AtomicUsize::new(0);
            let parts: Vec<Bytes> = match TURN.fetch_add(1, Ordering::Relaxed) % 4 {
                0 => vec![
                    chunk("ok so far"),
                    Bytes::from_static(b"data: {\"id\": \"chatcmpl-fake\", \"choices\": [{\"delta\": {\"content\": oops\n\n"),
                    Bytes::from_static(b"data: [DONE]\n\n"),
                ],
                1 => vec![
                    chunk("bytes:"),
                    Bytes::from_static(b"data: \xff\xfe\x00\x01 not utf-8 \xc3\x28\n\n"),
                    Bytes::from_static(b"data: [DONE]\n\n"),
                ],
                2 => vec![
                    Bytes::from_static(b": a comment\n\nevent: nonsense\ndata: 42\n\n"),
                    Bytes::from_static(b"data: {\"choices\": \"not an array\", \"usage\": \"none\"}\n\n"),
                    Bytes::from_static(b"data: [DONE]\n\n"),
                ],
                _ => {
                    let mut v = vec![chunk("a long line follows")];
                    v.extend(std::iter::repeat_n(Bytes::from(vec![b'A'; 64 << 10]), 32));
                    v
                }
            };
            Body::from_stream(futures_util::stream::iter(parts.into_iter().map(Ok::<_, std::io::Error>)))
        }
        ("huge", _) => {
            let n = (40 << 20) / block.len();
            let parts: Vec<Bytes> = if stream {
                let big = chunk(std::str::from_utf8(&block).unwrap());
                std::iter::once(chunk(""))
                    .chain(std::iter::repeat_n(big, n))
                    .chain([
                        Bytes::from_static(b"data: {\"choices\": [{\"index\": 0, \"delta\": {}, \"finish_reason\": \"stop\"}]}\n\n"),
                        Bytes::from_static(b"data: [DONE]\n\n"),
                    ])
                    .collect()
            } else {
                std::iter::once(whole_head).chain(std::iter::repeat_n(block, n)).chain([whole_tail]).collect()
            };
            Body::from_stream(futures_util::stream::iter(parts.into_iter().map(Ok::<_, std::io::Error>)))
        }
        ("trickle", true) => {
            let mut parts: Vec<Bytes> = (0..15).map(|i| chunk(&format!(" drop{i}"))).collect();
            parts.push(Bytes::from_static(b"data: {\"choices\": [{\"index\": 0, \"delta\": {}, \"finish_reason\": \"stop\"}]}\n\n"));
            parts.push(Bytes::from_static(b"data: [DONE]\n\n"));
            Body::from_stream(futures_util::stream::unfold(parts.into_iter().enumerate(), |mut it| async move {
                let (i, b) = it.next()?;
                if i > 0 && i <= 15 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Some((Ok::<_, std::io::Error>(b), it))
            }))
        }
        ("trickle", false) => {
            let mut text = whole_head.to_vec();
            let answer = serde_json::to_string(&format!("echo: {}", last_user(body))).unwrap();
            text.extend_from_slice(&answer.as_bytes()[1..answer.len() - 1]);
            text.extend_from_slice(&whole_tail);
            let pieces: Vec<Bytes> = text.chunks(16).map(Bytes::copy_from_slice).collect();
            Body::from_stream(futures_util::stream::unfold(pieces.into_iter(), |mut it| async move {
                let b = it.next()?;
                tokio::time::sleep(Duration::from_millis(200)).await;
                Some((Ok::<_, std::io::Error>(b), it))
            }))
        }
        _ => return None,
    };
    let mut r = Response::new(body);
    let ct = if stream { "text/event-stream" } else { "application/json" };
    r.headers_mut().insert("content-type", ct.parse().unwrap());
    Some(r)
}
