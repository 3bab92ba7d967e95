//! Hostile providers, as real HTTP servers on loopback: a whole answer larger than the limit, a
//! stream without end, a stream that never ends a line, a stream that runs too long. Each call
//! must fail fast with `too_large`, with memory bounded by the limit (issue: a 33 MB stream once
//! became 1.6 GB of resident memory in `serve`).

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::response::Response;
use axum::routing::post;
use futures_util::StreamExt;
use semroute::chat::ChatRequest;
use semroute::provider::{ApiKey, CallError, Client, Providers, RetryPolicy};

/// Serves `POST /v1/chat/completions` with the behaviour the path's first segment names.
async fn hostile() -> String {
    async fn whole_huge() -> Response {
        // 64 MiB of valid JSON string, sent without a length, chunk by chunk.
        let head = futures_util::stream::once(async {
            Ok::<Bytes, Infallible>(Bytes::from_static(b"{\"choices\":[{\"message\":{\"role\":\"assistant\",\"content\":\""))
        });
        let body = futures_util::stream::iter((0..1024).map(|_| Ok::<Bytes, Infallible>(Bytes::from(vec![b'a'; 64 << 10]))));
        Response::new(Body::from_stream(head.chain(body)))
    }
    async fn endless_stream() -> Response {
        let chunk = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}}]}\n\n".repeat(256);
        let body = futures_util::stream::iter(std::iter::repeat(chunk).map(|c| Ok::<Bytes, Infallible>(Bytes::from(c))));
        sse(Body::from_stream(body))
    }
    async fn endless_line() -> Response {
        let first = futures_util::stream::once(async {
            Ok::<Bytes, Infallible>(Bytes::from_static(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\ndata: "))
        });
        let body = futures_util::stream::iter(std::iter::repeat_with(|| Ok::<Bytes, Infallible>(Bytes::from(vec![b'x'; 16 << 10]))));
        sse(Body::from_stream(first.chain(body)))
    }
    async fn long_drip() -> Response {
        // A short chunk every 50 ms, for ever: each wait is well within the idle timeout.
        let body = futures_util::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Some((
                Ok::<Bytes, Infallible>(Bytes::from_static(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n")),
                (),
            ))
        });
        sse(Body::from_stream(body))
    }
    async fn not_an_object() -> Response {
        // Valid JSON, but a number: serve once indexed into it and panicked.
        sse(Body::from("data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\ndata: 42\n\n"))
    }
    fn sse(body: Body) -> Response {
        let mut r = Response::new(body);
        r.headers_mut().insert("content-type", "text/event-stream".parse().unwrap());
        r
    }
    let app = axum::Router::new()
        .route("/huge/v1/chat/completions", post(whole_huge))
        .route("/endless/v1/chat/completions", post(endless_stream))
        .route("/line/v1/chat/completions", post(endless_line))
        .route("/drip/v1/chat/completions", post(long_drip))
        .route("/number/v1/chat/completions", post(not_an_object));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn providers(base: &str, extra: &str) -> Providers {
    let mut toml = String::new();
    for name in ["huge", "endless", "line", "drip", "number"] {
        toml.push_str(&format!(
            "[models.{name}]\nprotocol = \"openai\"\nbase_url = \"{base}/{name}/v1\"\nmodel = \"m\"\napi_key_env = \"K\"\ntimeout_secs = 5\n{extra}\n"
        ));
    }
    Providers::from_toml_str(&toml, "providers.toml").unwrap()
}

fn request() -> ChatRequest {
    ChatRequest::from_json(serde_json::json!({"messages": [{"role": "user", "content": "hello"}]})).unwrap()
}

fn client() -> Client {
    Client::new(RetryPolicy { max_attempts: 1, ..RetryPolicy::default() }).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_answer_past_the_limit_is_refused_as_soon_as_it_passes() {
    let base = hostile().await;
    let p = providers(&base, "max_body_bytes = 1048576");
    let started = Instant::now();
    let err = client().chat(p.get("huge").unwrap(), &ApiKey::new("k"), &request()).await.unwrap_err();
    assert!(matches!(err, CallError::TooLarge(_)), "{err}");
    assert_eq!(err.kind(), "too_large");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

async fn drain(model: &str, extra: &str) -> (CallError, usize, Duration) {
    let base = hostile().await;
    let p = providers(&base, extra);
    let started = Instant::now();
    let mut s = client().chat_stream(p.get(model).unwrap(), &ApiKey::new("k"), &request()).await.unwrap();
    let mut chunks = 0;
    loop {
        match s.next().await {
            Some(Ok(_)) => chunks += 1,
            Some(Err(e)) => return (e, chunks, started.elapsed()),
            None => panic!("{model}: the stream ended without an error after {chunks} chunks"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_end_is_cut_at_its_size_limit() {
    let (err, chunks, took) = drain("endless", "max_stream_bytes = 4194304").await;
    assert!(matches!(&err, CallError::TooLarge(m) if m.contains("4194304 bytes")), "{err}");
    // About 4 MiB of ~100-byte events passed on before the cut.
    assert!(chunks > 10_000 && chunks < 60_000, "{chunks}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_that_never_ends_is_cut_without_growing_the_parser() {
    let (err, chunks, took) = drain("line", "").await;
    assert!(matches!(&err, CallError::TooLarge(m) if m.contains("event line")), "{err}");
    assert_eq!(chunks, 1);
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_runs_too_long_is_cut_at_its_duration_limit() {
    let (err, chunks, took) = drain("drip", "max_stream_secs = 1.0").await;
    assert!(matches!(&err, CallError::TooLarge(m) if m.contains("longer than")), "{err}");
    assert!(chunks > 5, "{chunks}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(4), "{took:?}");
}

#[test]
fn limits_must_be_positive() {
    for (extra, field) in [
        ("max_body_bytes = 0", "max_body_bytes"),
        ("max_stream_bytes = 0", "max_stream_bytes"),
        ("max_stream_secs = -1.0", "max_stream_secs"),
    ] {
        let toml = format!(
            "[models.a]\nprotocol = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"m\"\napi_key_env = \"K\"\n{extra}\n"
        );
        let msg = Providers::from_toml_str(&toml, "p.toml").unwrap_err().to_string();
        assert!(msg.contains(field), "{msg}");
    }
}

#[test]
fn a_timeout_that_would_overflow_the_clock_is_refused() {
    for (field, v) in [("timeout_secs", "1e300"), ("max_stream_secs", "1e19"), ("timeout_secs", "86401")] {
        let toml = format!("[models.a]\nprotocol = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"m\"\napi_key_env = \"K\"\n{field} = {v}\n");
        let msg = Providers::from_toml_str(&toml, "p.toml").unwrap_err().to_string();
        assert!(msg.contains(field) && msg.contains("at most 86400"), "{msg}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_chunk_that_is_not_an_object_is_malformed() {
    let (err, chunks, _) = drain("number", "").await;
    assert!(matches!(&err, CallError::Malformed(m) if m.contains("not a JSON object")), "{err}");
    assert_eq!(chunks, 1);
}
