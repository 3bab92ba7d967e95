//! The `serve` example end to end: the server binary and fake providers are real HTTP servers on
//! loopback; clients are a real OpenAI client (async-openai) and plain HTTP (reqwest, for headers
//! and malformed requests).

mod common;
#[path = "common/fake_llm.rs"]
mod fake_llm;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionRequestSystemMessageArgs, ChatCompletionRequestUserMessageArgs, ChatCompletionStreamOptions,
    CreateChatCompletionRequestArgs,
};
use fake_llm::{FakeLlm, FAKE_PRICES as PRICES, PROVIDER_KEY};
use futures_util::StreamExt;
use serde_json::{json, Value};

/// Close to a built-in formatting exemplar, so it is routed, not sent to the fallback model.
const PROMPT: &str = r#"Reformat this JSON so it is indented: {"id": 7, "tags": ["a", "b"]}"#;
const CLIENT_KEY: &str = "client-key-for-tests-abcdef123456";
/// A second client of the same server.
const OTHER_KEY: &str = "client-key-of-another-client-7890";

/// A running `serve`; killed on drop.
struct Serve {
    child: Child,
    addr: String,
    stderr: Arc<Mutex<String>>,
    dir: tempfile::TempDir,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
    fn openai(&self, key: &str) -> async_openai::Client<OpenAIConfig> {
        async_openai::Client::with_config(OpenAIConfig::new().with_api_base(self.url("/v1")).with_api_key(key))
    }
    fn usage(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.dir.path().join("usage.jsonl")).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
    /// Waits until the usage log holds `n` records (it is written by a background thread).
    async fn usage_n(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let f = self.usage();
            if f.len() >= n || Instant::now() > deadline {
                return f;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Starts `serve` with one endpoint per `(price-table name, protocol, provider model id)` on the
/// fake, and waits for its "listening on" line.
fn serve(fake: &FakeLlm, models: &[(&str, &str, &str)], extra: &[&str]) -> Serve {
    serve_with(fake, models, extra, true)
}

/// [`serve`], in its own temporary folder (its working directory), with a learning log there
/// unless `learn_log` is false or `extra` names one; with both client keys unless `extra` has
/// `--no-auth` or its own `--client-keys`.
fn serve_with(fake: &FakeLlm, models: &[(&str, &str, &str)], extra: &[&str], learn_log: bool) -> Serve {
    let dir = tempfile::tempdir().unwrap();
    write_files(fake, models, dir.path());
    let mut cmd = common::semroute("serve");
    if learn_log && !extra.contains(&"--learn-log") {
        cmd.arg("--learn-log").arg(dir.path().join("learned.jsonl"));
    }
    if !extra.contains(&"--no-auth") && !extra.contains(&"--client-keys") {
        cmd.arg("--client-keys").arg(dir.path().join("client-keys"));
    }
    cmd.current_dir(dir.path())
        .arg("--providers")
        .arg(dir.path().join("providers.toml"))
        .arg("--prices")
        .arg(dir.path().join("prices.toml"))
        .arg("--usage-log")
        .arg(dir.path().join("usage.jsonl"))
        .args(["--listen", "127.0.0.1:0"])
        .args(extra);
    spawn_serve(cmd, dir)
}

/// Writes the providers file (one endpoint per model on the fake), the prices and the client keys
/// into `dir`.
fn write_files(fake: &FakeLlm, models: &[(&str, &str, &str)], dir: &std::path::Path) {
    let mut providers = String::new();
    for (name, protocol, id) in models {
        providers.push_str(&format!(
            "[models.\"{name}\"]\nprotocol = \"{protocol}\"\nbase_url = \"{}\"\nmodel = \"{id}\"\napi_key_env = \"FAKE_PROVIDER_KEY\"\ntimeout_secs = 1.0\n{}\n",
            fake.base_url(),
            // The fake's caching Anthropic models are asked to cache (cache_control).
            if *protocol == "anthropic" && id.contains("cached") { "cache_prompt = true\n" } else { "" }
        ));
    }
    std::fs::write(dir.join("providers.toml"), providers).unwrap();
    std::fs::write(dir.join("prices.toml"), PRICES).unwrap();
    std::fs::write(dir.join("client-keys"), format!("# test clients\n{CLIENT_KEY}\n{OTHER_KEY}\n")).unwrap();
}

/// Starts `cmd` (a `semroute serve`) and waits for its "listening on" line.
fn spawn_serve(mut cmd: Command, dir: tempfile::TempDir) -> Serve {
    let mut child = cmd.env("FAKE_PROVIDER_KEY", PROVIDER_KEY).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start serve");
    let stderr = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let err = child.stderr.take().unwrap();
    let log = stderr.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
            }
            log.lock().unwrap().push_str(&line);
            log.lock().unwrap().push('\n');
        }
    });
    let addr = match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(a) => a,
        Err(_) => {
            let _ = child.kill();
            panic!("serve did not start:\n{}", stderr.lock().unwrap());
        }
    };
    Serve { child, addr, stderr, dir }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap()
}

async fn post(s: &Serve, key: Option<&str>, body: impl Into<reqwest::Body>) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = http().post(s.url("/v1/chat/completions")).header("content-type", "application/json").body(body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.expect("the server answers");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    (status, headers, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
}

fn header<'a>(h: &'a reqwest::header::HeaderMap, k: &str) -> &'a str {
    h.get(k).and_then(|v| v.to_str().ok()).unwrap_or_else(|| panic!("no header {k}"))
}

const ALL_OK: &[(&str, &str, &str)] =
    &[("fake-cheap", "openai", "cheap-1"), ("fake-mid", "anthropic", "mid-1"), ("fake-strong", "anthropic", "strong-1")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_client_whole_and_streamed_on_both_protocols() {
    let fake = FakeLlm::start().await;
    let s = serve(&fake, ALL_OK, &[]);
    let client = s.openai(CLIENT_KEY);
    let ask = |model: &str, stream: bool| {
        let mut b = CreateChatCompletionRequestArgs::default();
        b.model(model).messages([
            ChatCompletionRequestSystemMessageArgs::default().content("Answer briefly.").build().unwrap().into(),
            ChatCompletionRequestUserMessageArgs::default().content(PROMPT).build().unwrap().into(),
        ]);
        if stream {
            b.stream(true).stream_options(ChatCompletionStreamOptions { include_usage: Some(true), include_obfuscation: None });
        }
        b.build().unwrap()
    };
    let expected = format!("echo: {PROMPT}");
    let words = expected.split(' ').count() as u32;

    // Routed, bar 0: every model clears it, so the cheapest (OpenAI protocol) answers.
    let r = client.chat().create(ask("auto:0", false)).await.expect("auto:0 answers");
    assert_eq!(r.model, "fake-cheap");
    assert_eq!(r.choices[0].message.content.as_deref(), Some(expected.as_str()));
    let u = r.usage.expect("usage");
    assert_eq!((u.prompt_tokens, u.completion_tokens), (20, words));

    // Named model on the Anthropic protocol: translated there and back.
    let r = client.chat().create(ask("fake-strong", false)).await.expect("a named Anthropic model answers");
    assert_eq!(r.model, "fake-strong");
    assert_eq!(r.choices[0].message.content.as_deref(), Some(expected.as_str()));
    let u = r.usage.expect("usage");
    assert_eq!((u.prompt_tokens, u.completion_tokens), (20, words), "system message counted by the fake's rule");
    let seen = fake.seen.requests.lock().unwrap().clone();
    let (path, id, body) = seen.last().unwrap();
    assert_eq!((path.as_str(), id.as_str()), ("anthropic", "strong-1"));
    assert_eq!(body["system"], "Answer briefly.");
    assert_eq!(body["messages"].as_array().unwrap().len(), 1);

    // Streamed, both protocols, through the real client's SSE parser.
    for model in ["auto:0", "fake-mid"] {
        let mut stream = client.chat().create_stream(ask(model, true)).await.expect("stream starts");
        let (mut text, mut usage, mut chunks) = (String::new(), None, 0);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap_or_else(|e| panic!("{model}: {e}"));
            chunks += 1;
            if let Some(c) = chunk.choices.first().and_then(|c| c.delta.content.clone()) {
                text.push_str(&c);
            }
            if chunk.usage.is_some() {
                usage = chunk.usage;
            }
        }
        assert_eq!(text, expected, "{model}");
        assert!(chunks >= 10, "{model}: {chunks} chunks, expected one per word");
        let u = usage.unwrap_or_else(|| panic!("{model}: no usage chunk"));
        assert_eq!(u.completion_tokens, words, "{model}");
    }
    // The OpenAI-protocol upstream was asked for usage even though the translation is ours.
    let seen = fake.seen.requests.lock().unwrap().clone();
    let streamed_openai = seen.iter().find(|(p, _, b)| p == "openai" && b["stream"] == true).unwrap();
    assert_eq!(streamed_openai.2["stream_options"]["include_usage"], true);

    // Decision headers and the explanation in the body (plain HTTP, to see headers).
    let body = json!({"model": "auto:0", "messages": [{"role": "user", "content": PROMPT}]});
    let (status, h, v) = post(&s, Some(CLIENT_KEY), body.to_string()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(header(&h, "x-semroute-model"), "fake-cheap");
    assert_eq!(header(&h, "x-semroute-routed"), "true");
    let predicted: f64 = header(&h, "x-semroute-predicted-quality").parse().unwrap();
    assert!((0.0..=1.0).contains(&predicted));
    let expected_cost: f64 = header(&h, "x-semroute-expected-cost-usd").parse().unwrap();
    let actual: f64 = header(&h, "x-semroute-actual-cost-usd").parse().unwrap();
    // 10 input tokens and one output token per word at $0.10 / $0.40 per million.
    assert!((actual - (10.0 * 0.10 + f64::from(words) * 0.40) / 1e6).abs() < 1e-9, "{actual}");
    assert!(expected_cost > 0.0);
    assert_eq!(v["semroute"]["model"], "fake-cheap");
    assert_eq!(v["semroute"]["quality_bar"], 0.0);
    assert!(v["semroute"]["reason"].as_str().is_some_and(|r| !r.is_empty()));

    // A streamed request says the same in its headers.
    let mut sb = body.clone();
    sb["stream"] = true.into();
    let resp = http().post(s.url("/v1/chat/completions")).bearer_auth(CLIENT_KEY).json(&sb).send().await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["x-semroute-model"], "fake-cheap");
    let text = resp.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(!text.contains("\"usage\""), "no usage chunk unless asked for: {text}");

    // /v1/models lists auto and the served models with their prices.
    let models: Value = http().get(s.url("/v1/models")).bearer_auth(CLIENT_KEY).send().await.unwrap().json().await.unwrap();
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["auto", "fake-cheap", "fake-mid", "fake-strong"]);
    assert_eq!(models["data"][3]["semroute"]["output_per_mtok"], 15.0);

    // Every answer is in the usage log with its real tokens and cost, and no prompt text.
    let fb = s.usage_n(6).await;
    assert_eq!(fb.len(), 6, "{fb:?}");
    assert!(fb.iter().all(|r| r["outcome"] == "ok" && r["cost_usd"].as_f64().unwrap() > 0.0 && r["usage_reported"] == true), "{fb:?}");
    assert!(fb.iter().all(|r| r.get("prompt").is_none()));
    let strong = fb.iter().find(|r| r["model"] == "fake-strong").unwrap();
    assert_eq!(strong["routed"], false);
    assert!((strong["cost_usd"].as_f64().unwrap() - (20.0 * 3.0 + f64::from(words) * 15.0) / 1e6).abs() < 1e-12);

    // Metrics: requests, decisions per model, spend against always-strongest.
    let m = http().get(s.url("/metrics")).bearer_auth(CLIENT_KEY).send().await.unwrap().text().await.unwrap();
    assert!(m.contains("semroute_requests_total{outcome=\"ok\"} 6"), "{m}");
    assert!(m.contains("semroute_decisions_total{model=\"fake-cheap\",routed=\"true\"} 4"), "{m}");
    assert!(m.contains("semroute_request_duration_seconds_bucket"), "{m}");
    assert!(m.contains("semroute_routing_duration_seconds_count 4"), "{m}");
    let value =
        |name: &str| -> f64 { m.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().last()).unwrap().parse().unwrap() };
    assert!(value("semroute_spent_usd_total") < value("semroute_strongest_usd_total"));

    // Neither key, nor any prompt, is in the server's log.
    let log = s.stderr.lock().unwrap().clone();
    assert!(!log.contains(PROVIDER_KEY) && !log.contains(CLIENT_KEY), "{log}");
    assert!(!log.contains("Reformat this JSON"), "prompt text logged without --log-prompts:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_before_the_first_byte() {
    let fake = FakeLlm::start().await;
    let user = |stream: bool| json!({"model": "auto:0", "stream": stream, "messages": [{"role": "user", "content": "Translate 'good morning' into French."}]});
    for (bad_id, kind) in [("cheap-fail503", "server_error"), ("cheap-fail429", "rate_limited"), ("cheap-slow", "timeout")] {
        let s = serve(
            &fake,
            &[("fake-cheap", "openai", bad_id), ("fake-mid", "anthropic", "mid-1"), ("fake-strong", "openai", "strong-1")],
            &[],
        );
        let (status, h, v) = post(&s, Some(CLIENT_KEY), user(false).to_string()).await;
        assert_eq!(status, 200, "{bad_id}: {v}");
        assert_eq!(header(&h, "x-semroute-model"), "fake-mid", "{bad_id}: the next cheapest model that clears the bar");
        assert_eq!(header(&h, "x-semroute-failover"), format!("fake-cheap:{kind}"));
        assert_eq!(v["semroute"]["failover"][0]["error"], kind);
        assert_eq!(v["choices"][0]["message"]["content"], "echo: Translate 'good morning' into French.");

        let resp = http().post(s.url("/v1/chat/completions")).bearer_auth(CLIENT_KEY).json(&user(true)).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-semroute-failover"], format!("fake-cheap:{kind}").as_str());
        let text = resp.text().await.unwrap();
        assert!(text.contains("\"model\":\"fake-mid\"") && text.ends_with("data: [DONE]\n\n"), "{text}");

        let fb = s.usage_n(2).await;
        assert_eq!(fb.len(), 2);
        assert!(fb.iter().all(|r| r["failovers"][0]["model"] == "fake-cheap" && r["model"] == "fake-mid"));
        let m = http().get(s.url("/metrics")).bearer_auth(CLIENT_KEY).send().await.unwrap().text().await.unwrap();
        assert!(m.contains(&format!("semroute_upstream_failures_total{{model=\"fake-cheap\",kind=\"{kind}\"}} 2")), "{m}");
        assert!(m.contains("semroute_failovers_total 2"), "{m}");
    }

    // Every model failing is a 502 naming each failure; a named model does not fail over.
    let s = serve(&fake, &[("fake-cheap", "openai", "a-fail503"), ("fake-mid", "anthropic", "b-fail503")], &[]);
    let (status, _, v) = post(&s, Some(CLIENT_KEY), user(false).to_string()).await;
    assert_eq!(status, 502, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("fake-cheap: server_error") && msg.contains("fake-mid: server_error"), "{msg}");
    let (status, _, v) =
        post(&s, Some(CLIENT_KEY), json!({"model": "fake-cheap", "messages": [{"role": "user", "content": "hi"}]}).to_string()).await;
    assert_eq!(status, 502, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_pass_through_without_buffering_and_report_breaks() {
    let fake = FakeLlm::start().await;
    let s = serve(
        &fake,
        &[("fake-cheap", "openai", "cheap-drip"), ("fake-mid", "anthropic", "mid-drip"), ("fake-strong", "anthropic", "strong-midfail")],
        &[],
    );
    for model in ["fake-cheap", "fake-mid"] {
        let body = json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "one two three four five six"}]});
        let started = Instant::now();
        let resp = http().post(s.url("/v1/chat/completions")).bearer_auth(CLIENT_KEY).json(&body).send().await.unwrap();
        let mut bytes = resp.bytes_stream();
        let mut arrivals = Vec::new();
        let mut text = String::new();
        while let Some(b) = bytes.next().await {
            let b = b.unwrap();
            text.push_str(std::str::from_utf8(&b).unwrap());
            arrivals.push(started.elapsed());
        }
        // The fake waits 300 ms between its 9 or so events: the first bytes arrive long before the last.
        let (first, last) = (arrivals[0], *arrivals.last().unwrap());
        assert!(last >= Duration::from_millis(1500), "{model}: the whole answer took {last:?}");
        assert!(first + Duration::from_millis(1000) < last, "{model}: first bytes at {first:?}, last at {last:?}: buffered");
        assert!(arrivals.len() >= 5, "{model}: {} reads", arrivals.len());
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    }
    // A break after the first chunk cannot fail over: the client gets an error event, no [DONE].
    let body = json!({"model": "fake-strong", "stream": true, "messages": [{"role": "user", "content": "one two three"}]});
    let resp = http().post(s.url("/v1/chat/completions")).bearer_auth(CLIENT_KEY).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.contains("\"error\"") && text.contains("overloaded_error") && !text.contains("[DONE]"), "{text}");
    let fb = s.usage_n(3).await;
    assert_eq!(fb.iter().filter(|r| r["outcome"] == "ok").count(), 2, "{fb:?}");
    let broken = fb.iter().find(|r| r["model"] == "fake-strong").unwrap();
    assert_eq!(broken["outcome"], "upstream_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors() {
    let fake = FakeLlm::start().await;
    let s = serve(&fake, ALL_OK, &["--max-body-bytes", "65536", "--log-prompts"]);
    let ok = json!({"model": "auto", "messages": [{"role": "user", "content": "What is the capital of France?"}]});

    let cases: Vec<(Option<&str>, String, u16, &str)> = vec![
        (None, ok.to_string(), 401, "invalid_api_key"),
        (Some("client-key-that-is-wrong-00000"), ok.to_string(), 401, "invalid_api_key"),
        (Some(CLIENT_KEY), "{\"model\": \"auto\", \"messages\": [".into(), 400, "invalid_json"),
        (Some(CLIENT_KEY), json!({"model": "auto"}).to_string(), 400, "invalid_request"),
        (Some(CLIENT_KEY), json!({"model": "auto", "messages": [{"role": "user", "content": 5}]}).to_string(), 400, "invalid_request"),
        (Some(CLIENT_KEY), json!({"messages": [{"role": "user", "content": "hi"}]}).to_string(), 400, "missing_model"),
        (Some(CLIENT_KEY), json!({"model": "gpt-17", "messages": [{"role": "user", "content": "hi"}]}).to_string(), 404, "model_not_found"),
        (Some(CLIENT_KEY), json!({"model": "auto:1.5", "messages": [{"role": "user", "content": "hi"}]}).to_string(), 400, "invalid_model"),
        (Some(CLIENT_KEY), json!({"model": "auto", "messages": [{"role": "user", "content": "   "}]}).to_string(), 400, "invalid_request"),
        (
            Some(CLIENT_KEY),
            json!({"model": "fake-mid", "response_format": {"type": "json_object"},
            "messages": [{"role": "user", "content": "hi"}]})
            .to_string(),
            400,
            "unsupported_for_model",
        ),
        (
            Some(CLIENT_KEY),
            json!({"model": "auto", "messages": [{"role": "user", "content": "x".repeat(70_000)}]}).to_string(),
            413,
            "request_too_large",
        ),
    ];
    for (key, body, want_status, want_code) in cases {
        let started = Instant::now();
        let (status, _, v) = post(&s, key, body.clone()).await;
        assert_eq!((status, v["error"]["code"].as_str().unwrap_or("")), (want_status, want_code), "{}: {v}", &body[..body.len().min(80)]);
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(started.elapsed() < Duration::from_secs(5), "a bad request must not hang");
    }
    // /v1/models needs a key too.
    assert_eq!(http().get(s.url("/v1/models")).send().await.unwrap().status(), 401);
    // The server survived all of that and still answers; with --log-prompts the prompt is logged.
    let (status, _, _) = post(&s, Some(CLIENT_KEY), ok.to_string()).await;
    assert_eq!(status, 200);
    assert!(s.stderr.lock().unwrap().contains("capital of France"));
    let fb = s.usage_n(1).await;
    assert_eq!(fb[0]["prompt"], "What is the capital of France?");
    let m = http().get(s.url("/metrics")).bearer_auth(CLIENT_KEY).send().await.unwrap().text().await.unwrap();
    assert!(m.contains("semroute_requests_total{outcome=\"unauthorized\"} 2"), "{m}");
}

#[test]
fn refuses_to_start_without_client_keys_or_provider_keys() {
    let dir = tempfile::tempdir().unwrap();
    let providers = dir.path().join("providers.toml");
    std::fs::write(&providers, "[models.\"fake-cheap\"]\nprotocol = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"m\"\napi_key_env = \"SEMROUTE_TEST_UNSET_KEY\"\n").unwrap();
    let prices = dir.path().join("prices.toml");
    std::fs::write(&prices, PRICES).unwrap();
    let run = |extra: &[&str]| {
        let out = common::semroute("serve")
            .arg("--providers")
            .arg(&providers)
            .arg("--prices")
            .arg(&prices)
            .args(["--listen", "127.0.0.1:0"])
            .arg("--learn-log")
            .arg(dir.path().join("learned.jsonl"))
            .arg("--usage-log")
            .arg(dir.path().join("usage.jsonl"))
            .args(extra)
            .env_remove("SEMROUTE_TEST_UNSET_KEY")
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    assert!(run(&[]).contains("--client-keys"));
    let short: PathBuf = dir.path().join("keys");
    std::fs::write(&short, "# comment\n\nshort\n").unwrap();
    let e = run(&["--client-keys", short.to_str().unwrap()]);
    assert!(e.contains("keys:3") && e.contains("at least 16"), "{e}");
    let e = run(&["--no-auth"]);
    assert!(e.contains("SEMROUTE_TEST_UNSET_KEY"), "{e}");
    // A quality target's model without the target is refused before anything starts.
    let e = run(&["--no-auth", "--of", "fake-cheap"]);
    assert!(e.contains("--keep"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_teaches_the_router_and_reload_swaps_data_without_dropping_requests() {
    let fake = FakeLlm::start().await;
    let s = serve(&fake, ALL_OK, &[]);
    let ask = json!({"model": "auto", "messages": [{"role": "user", "content": PROMPT}]});
    let (status, h, _) = post(&s, Some(CLIENT_KEY), ask.to_string()).await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "x-semroute-model"), "fake-cheap", "a formatting prompt goes to the cheap model");

    // Twice the cheap model's answer was bad: the router learns it and stops sending this there.
    let feedback_url = s.url("/v1/feedback");
    let fb = |body: Value| {
        let url = feedback_url.clone();
        async move {
            let resp = http().post(url).bearer_auth(CLIENT_KEY).json(&body).send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    let first_id = header(&h, "x-request-id").to_string();
    let (status, v) = fb(json!({"request_id": first_id, "good": false})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["model"], "fake-cheap");
    let (status, h2, _) = post(&s, Some(CLIENT_KEY), ask.to_string()).await;
    assert_eq!(status, 200);
    let (status, _) = fb(json!({"request_id": header(&h2, "x-request-id"), "quality": 0.0})).await;
    assert_eq!(status, 200);
    let (_, h3, v3) = post(&s, Some(CLIENT_KEY), ask.to_string()).await;
    assert_ne!(header(&h3, "x-semroute-model"), "fake-cheap", "{v3}");

    // Feedback errors.
    let (status, v) = fb(json!({"request_id": first_id, "good": true})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (409, Some("already_learned")), "{v}");
    let (status, v) = fb(json!({"request_id": "sr-nope", "good": true})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (404, Some("unknown_request")), "{v}");
    let (status, _) = fb(json!({"request_id": header(&h3, "x-request-id"), "quality": 2})).await;
    assert_eq!(status, 400);
    let (status, _) = fb(json!({"request_id": header(&h3, "x-request-id")})).await;
    assert_eq!(status, 400);
    let learned = std::fs::read_to_string(s.dir.path().join("learned.jsonl")).unwrap();
    assert_eq!(learned.lines().count(), 2, "{learned}");
    assert!(learned.contains("\"cost_usd\"") && learned.contains("\"output_tokens\""));

    // Reload: fine, then refused (broken prices) with the old data kept, requests served throughout.
    let reload_url = s.url("/admin/reload");
    let reload = || {
        let url = reload_url.clone();
        async move { http().post(url).bearer_auth(CLIENT_KEY).send().await.unwrap() }
    };
    let r = reload().await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["models"], 3);
    let good_prices = std::fs::read_to_string(s.dir.path().join("prices.toml")).unwrap();
    std::fs::write(s.dir.path().join("prices.toml"), good_prices.replace("output_per_mtok = 15.00", "output_per_mtok = -1")).unwrap();
    let r = reload().await;
    assert_eq!(r.status(), 422);
    let msg = r.json::<Value>().await.unwrap()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("prices.toml") && msg.contains("old exemplars and prices stay"), "{msg}");
    let (status, h4, _) = post(&s, Some(CLIENT_KEY), ask.to_string()).await;
    assert_eq!(status, 200);
    assert_ne!(header(&h4, "x-semroute-model"), "fake-cheap", "what was learned survives reloads");
    assert_eq!(http().post(s.url("/admin/reload")).send().await.unwrap().status(), 401);

    // A restarted server replays what it learned.
    std::fs::write(s.dir.path().join("prices.toml"), good_prices).unwrap();
    let learned_path = s.dir.path().join("learned.jsonl");
    let again = serve(&fake, ALL_OK, &["--learn-log", learned_path.to_str().unwrap()]);
    let (status, h5, _) = post(&again, Some(CLIENT_KEY), ask.to_string()).await;
    assert_eq!(status, 200);
    assert_ne!(header(&h5, "x-semroute-model"), "fake-cheap");
}

/// `serve --keep` tunes its quality target at start and again at each reload, on the new data;
/// the reload's answer says what it found; a reload the target cannot be tuned on is refused and
/// the old tuning stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quality_target_is_tuned_again_at_each_reload() {
    let fake = FakeLlm::start().await;
    let data = tempfile::tempdir().unwrap();
    let graded = data.path().join("graded.jsonl");
    // 60 measured prompts; the cheap model's and the middle one's quality on each given.
    let write = |cheap: &dyn Fn(usize) -> f64, mid: &dyn Fn(usize) -> f64, strong: bool| {
        let lines: Vec<String> = (0..60)
            .map(|i| {
                let r = |q: f64| format!(r#"{{"quality":{q},"output_tokens":20}}"#);
                let others = format!(r#""fake-cheap":{},"fake-mid":{},"#, r(cheap(i)), r(mid(i)));
                format!(
                    r#"{{"id":"g{i}","prompt":"Reformat item {i} of the list as indented JSON","results":{{{}"fake-strong":{}}}}}"#,
                    if strong { others } else { String::new() },
                    r(1.0)
                )
            })
            .collect();
        std::fs::write(&graded, lines.join("\n")).unwrap();
    };
    // The cheap model is as good as any: it meets 90% alone.
    write(&|_| 1.0, &|_| 1.0, true);
    let s = serve(&fake, ALL_OK, &["--exemplars", graded.to_str().unwrap(), "--keep", "90%"]);
    let ask = json!({"model": "auto", "messages": [{"role": "user", "content": "Reformat item 7 of the list as indented JSON"}]});
    let (status, h, v) = post(&s, Some(CLIENT_KEY), ask.to_string()).await;
    assert_eq!((status, header(&h, "x-semroute-model")), (200, "fake-cheap"), "{v}");

    // Now the cheap model fails everywhere and the middle one on 2 of 60: a reload tunes again.
    write(&|_| 0.0, &|i| if i % 30 == 0 { 0.0 } else { 1.0 }, true);
    let reload = || async { http().post(s.url("/admin/reload")).bearer_auth(CLIENT_KEY).send().await.unwrap() };
    let r = reload().await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!((v["exemplars"].as_u64(), v["models"].as_u64()), (Some(60), Some(3)), "{v}");
    assert_eq!(v["tuned"]["figures"]["reference_model"], "fake-strong", "{v}");
    assert_eq!(v["tuned"]["figures"]["exemplars"], 60, "{v}");
    let summary = v["tuned"]["summary"].as_str().unwrap();
    assert!(summary.starts_with("keep 90% of fake-strong's quality"), "{summary}");
    let (status, h, v) = post(&s, Some(CLIENT_KEY), ask.to_string()).await;
    assert_eq!((status, header(&h, "x-semroute-model")), (200, "fake-mid"), "{v}");

    // Only the strong model measured: nothing to compare, so the reload is refused, and the
    // tuning found before stays in force.
    write(&|_| 0.0, &|_| 0.0, false);
    let r = reload().await;
    assert_eq!(r.status(), 422);
    let msg = r.json::<Value>().await.unwrap()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("fewer than two priced models are measured") && msg.contains("old exemplars and prices stay"), "{msg}");
    let (status, h, v) = post(&s, Some(CLIENT_KEY), ask.to_string()).await;
    assert_eq!((status, header(&h, "x-semroute-model")), (200, "fake-mid"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_round_trip_through_an_anthropic_model() {
    use async_openai::types::chat::{
        ChatCompletionMessageToolCall, ChatCompletionMessageToolCalls, ChatCompletionRequestAssistantMessageArgs,
        ChatCompletionRequestToolMessageArgs, ChatCompletionTool, ChatCompletionTools, FunctionCall, FunctionObjectArgs,
    };
    let fake = FakeLlm::start().await;
    let s = serve(&fake, ALL_OK, &[]);
    let client = s.openai(CLIENT_KEY);
    let tool = ChatCompletionTools::Function(ChatCompletionTool {
        function: FunctionObjectArgs::default()
            .name("weather")
            .description("Current weather in a city")
            .parameters(json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}))
            .build()
            .unwrap(),
    });
    let question = ChatCompletionRequestUserMessageArgs::default().content("What is the weather in Oslo?").build().unwrap();
    let req = CreateChatCompletionRequestArgs::default()
        .model("fake-strong")
        .messages([question.clone().into()])
        .tools(vec![tool.clone()])
        .build()
        .unwrap();
    let r = client.chat().create(req).await.expect("a tool call comes back");
    assert_eq!(r.choices[0].finish_reason, Some(async_openai::types::chat::FinishReason::ToolCalls));
    let calls = r.choices[0].message.tool_calls.clone().expect("tool_calls");
    let ChatCompletionMessageToolCalls::Function(call) = &calls[0] else { panic!("{calls:?}") };
    assert_eq!(call.function.name, "weather");
    assert_eq!(serde_json::from_str::<Value>(&call.function.arguments).unwrap(), json!({"city": "Oslo"}));
    let seen = fake.seen.requests.lock().unwrap().last().unwrap().2.clone();
    assert_eq!(seen["tools"][0]["input_schema"]["required"], json!(["city"]));

    // The tool's result goes back; the model answers in words.
    let assistant = ChatCompletionRequestAssistantMessageArgs::default()
        .tool_calls(vec![ChatCompletionMessageToolCalls::Function(ChatCompletionMessageToolCall {
            id: call.id.clone(),
            function: FunctionCall { name: "weather".into(), arguments: call.function.arguments.clone() },
        })])
        .build()
        .unwrap();
    let result = ChatCompletionRequestToolMessageArgs::default().tool_call_id(call.id.clone()).content("-3 C and snow").build().unwrap();
    let req = CreateChatCompletionRequestArgs::default()
        .model("fake-strong")
        .messages([question.into(), assistant.into(), result.into()])
        .tools(vec![tool])
        .build()
        .unwrap();
    let r = client.chat().create(req).await.expect("an answer after the tool result");
    assert_eq!(r.choices[0].message.content.as_deref(), Some("tool said: -3 C and snow"));
    let seen = fake.seen.requests.lock().unwrap().last().unwrap().2.clone();
    assert_eq!(seen["messages"][1]["content"][0]["type"], "tool_use");
    assert_eq!(seen["messages"][2]["content"][0]["tool_use_id"], call.id.as_str());

    // Streamed: the call arrives as tool_call deltas whose arguments join into the JSON.
    let body = json!({"model": "fake-strong", "stream": true, "messages": [{"role": "user", "content": "Weather in Oslo?"}],
                      "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]});
    let text = http().post(s.url("/v1/chat/completions")).bearer_auth(CLIENT_KEY).json(&body).send().await.unwrap().text().await.unwrap();
    let chunks: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let args: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()).collect();
    assert_eq!(serde_json::from_str::<Value>(&args).unwrap(), json!({"city": "Oslo"}), "{text}");
    assert!(chunks.iter().any(|c| c["choices"][0]["delta"]["tool_calls"][0]["id"] == "toolu_fake"));
    assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "tool_calls"));
}

/// Waits up to `limit` for `child` to exit; how long it took, or `None` if it still runs.
fn exited_within(child: &mut Child, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if child.try_wait().unwrap().is_some() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn sigterm(child: &Child) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

/// Reads from `conn` until the server closes it (EOF or reset); the time that took, or `None`
/// when it was still open after `limit`.
async fn closed_within(conn: &mut tokio::net::TcpStream, limit: Duration) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(started.elapsed()), conn.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {} // a 408 or similar before the close is fine
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_half_a_header_is_closed() {
    use tokio::io::AsyncWriteExt;
    let fake = FakeLlm::start().await;
    let s = serve(&fake, ALL_OK, &["--header-timeout-secs", "1"]);
    let mut conn = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    conn.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let took = closed_within(&mut conn, Duration::from_secs(6)).await;
    assert!(took.is_some_and(|t| t < Duration::from_secs(4)), "a half-sent header held the connection: {took:?}");
    // Whole requests are still served.
    let ok = json!({"model": "fake-cheap", "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(post(&s, Some(CLIENT_KEY), ok.to_string()).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_requests_finish_but_stops_within_the_shutdown_deadline() {
    use tokio::io::AsyncWriteExt;
    let fake = FakeLlm::start().await;

    // A request in flight at SIGTERM (a stream of ~3 s) is answered whole, then the server exits.
    let mut s = serve(&fake, &[("fake-cheap", "openai", "cheap-drip")], &["--shutdown-secs", "10"]);
    let body = json!({"model": "fake-cheap", "stream": true, "messages": [{"role": "user", "content": "one two three four five six"}]});
    let resp = http().post(s.url("/v1/chat/completions")).bearer_auth(CLIENT_KEY).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    sigterm(&s.child);
    let text = resp.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "the request in flight was cut: {text}");
    assert!(exited_within(&mut s.child, Duration::from_secs(5)).is_some(), "serve still runs after its last request ended");
    let usage = s.usage();
    assert!(usage.len() == 1 && usage[0]["outcome"] == "ok", "the usage log was not drained before the exit: {usage:?}");

    // A request whose body never comes does not keep the server up past --shutdown-secs.
    let mut s = serve(&fake, ALL_OK, &["--shutdown-secs", "1"]);
    let mut conn = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CLIENT_KEY}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"model\""
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    sigterm(&s.child);
    let took = exited_within(&mut s.child, Duration::from_secs(10));
    assert!(took.is_some_and(|t| t < Duration::from_secs(4)), "serve did not exit within its shutdown deadline: {took:?}");
    let log = s.stderr.lock().unwrap().clone();
    assert!(!log.contains(CLIENT_KEY), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_unguessable_and_feedback_is_bound_to_the_client_that_asked() {
    let fake = FakeLlm::start().await;
    let s = serve(&fake, ALL_OK, &[]);
    let ask = json!({"model": "auto", "messages": [{"role": "user", "content": PROMPT}]});
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (status, h, _) = post(&s, Some(CLIENT_KEY), ask.to_string()).await;
        assert_eq!(status, 200);
        ids.push(header(&h, "x-request-id").to_string());
    }
    for id in &ids {
        let hex = id.strip_prefix("sr-").unwrap_or_else(|| panic!("{id}"));
        assert!(hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit()), "not 128 random bits: {id}");
    }
    assert_ne!(ids[0], ids[1]);
    let fb = |key: &'static str, body: Value| {
        let url = s.url("/v1/feedback");
        async move {
            let resp = http().post(url).bearer_auth(key).json(&body).send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    // Another client's key: answered as if the id were unknown, so nothing says it exists.
    let (status, other) = fb(OTHER_KEY, json!({"request_id": ids[0], "good": false})).await;
    assert_eq!((status, other["error"]["code"].as_str()), (404, Some("unknown_request")), "{other}");
    let unknown_id = format!("sr-{}", "0".repeat(32));
    let (_, unknown) = fb(OTHER_KEY, json!({"request_id": unknown_id, "good": false})).await;
    assert_eq!(
        other["error"]["message"].as_str().unwrap().replace(&ids[0], "ID"),
        unknown["error"]["message"].as_str().unwrap().replace(&unknown_id, "ID")
    );
    // The client that asked can.
    let (status, v) = fb(CLIENT_KEY, json!({"request_id": ids[0], "good": false})).await;
    assert_eq!(status, 200, "{v}");

    // Without client keys there is nothing to bind to: any caller may give feedback.
    let open = serve(&fake, ALL_OK, &["--no-auth"]);
    let (status, h, _) = post(&open, None, ask.to_string()).await;
    assert_eq!(status, 200);
    let resp =
        http().post(open.url("/v1/feedback")).json(&json!({"request_id": header(&h, "x-request-id"), "good": true})).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_text_reaches_disk_only_with_a_learning_log_that_was_asked_for() {
    let fake = FakeLlm::start().await;
    // No --learn-log: feedback is learned in memory, and no file holds the prompt.
    let s = serve_with(&fake, ALL_OK, &[], false);
    let ask = json!({"model": "auto", "messages": [{"role": "user", "content": PROMPT}]});
    let (status, h, _) = post(&s, Some(CLIENT_KEY), ask.to_string()).await;
    assert_eq!(status, 200);
    let resp = http()
        .post(s.url("/v1/feedback"))
        .bearer_auth(CLIENT_KEY)
        .json(&json!({"request_id": header(&h, "x-request-id"), "good": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    s.usage_n(1).await;
    for entry in std::fs::read_dir(s.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(!text.contains("Reformat this JSON"), "{} holds prompt text without --learn-log or --log-prompts", path.display());
    }
    assert!(s.stderr.lock().unwrap().contains("in memory only"), "{}", s.stderr.lock().unwrap());

    // With --learn-log the start-up log says plainly that prompts are kept there.
    let s = serve(&fake, ALL_OK, &[]);
    let log = s.stderr.lock().unwrap().clone();
    assert!(log.contains("learned.jsonl") && log.contains("prompt text"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_a_client_key_unless_made_public() {
    let fake = FakeLlm::start().await;
    let s = serve(&fake, ALL_OK, &[]);
    let status = |s: &Serve, key: Option<&'static str>| {
        let mut req = http().get(s.url("/metrics"));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        async move { req.send().await.unwrap() }
    };
    let resp = status(&s, None).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["code"], "invalid_api_key");
    assert_eq!(status(&s, Some("client-key-that-is-wrong-00000")).await.status(), 401);
    assert_eq!(status(&s, Some(CLIENT_KEY)).await.status(), 200);
    let public = serve(&fake, ALL_OK, &["--public-metrics"]);
    assert_eq!(status(&public, None).await.status(), 200);
    let open = serve(&fake, ALL_OK, &["--no-auth"]);
    assert_eq!(status(&open, None).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_feedback_is_413_and_the_bearer_scheme_is_case_insensitive() {
    let fake = FakeLlm::start().await;
    let s = serve(&fake, ALL_OK, &["--max-body-bytes", "65536"]);
    let big = json!({"request_id": "x".repeat(70_000), "good": true});
    let resp = http().post(s.url("/v1/feedback")).bearer_auth(CLIENT_KEY).json(&big).send().await.unwrap();
    assert_eq!(resp.status(), 413);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "request_too_large", "{v}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");

    let ok = json!({"model": "fake-cheap", "messages": [{"role": "user", "content": "hi"}]});
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let resp = http().get(s.url("/v1/models")).header("authorization", format!("{scheme} {CLIENT_KEY}")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{scheme}");
        let resp = http()
            .post(s.url("/v1/chat/completions"))
            .header("authorization", format!("{scheme} {CLIENT_KEY}"))
            .json(&ok)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{scheme}");
    }
    let resp = http().get(s.url("/v1/models")).header("authorization", format!("Basic {CLIENT_KEY}")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
}

/// Resident memory of a process, from /proc: (VmRSS, VmHWM) in MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok()).unwrap() / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Issue 16, item 1: a long streamed answer without usage once kept every chunk's text and
/// counted its tokens at the end, on an async worker (33 MB of text became 1.6 GB resident and
/// 30 s of CPU after the client had gone). Now it is counted in 64 KiB blocks as it passes: while
/// a 40 MiB usage-less stream goes through, read to the end and then cut by its client, serve's
/// resident memory (sampled every 5 ms) stays within 32 MiB of where it settled after start-up,
/// less than the stream itself, and its tokens are counted. (Checked against the code before the
/// fix: it rose by 74 MiB there, and by 3 MiB here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_stream_without_usage_is_tallied_in_bounded_memory() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let fake = FakeLlm::start().await;
    let s =
        serve(&fake, &[("fake-cheap", "openai", "cheap-huge"), ("fake-mid", "openai", "mid"), ("fake-strong", "openai", "strong")], &[]);
    let pid = s.child.id();
    // Start-up peaks higher than serve then runs at: take the level it settles at.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (settled, _) = memory_mib(pid);
    let (stop, highest) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let sampler = {
        let (stop, highest) = (stop.clone(), highest.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if std::fs::metadata(format!("/proc/{pid}")).is_err() {
                    break;
                }
                highest.fetch_max((memory_mib(pid).0 * 1024.0) as u64, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let body = json!({"model": "fake-cheap", "stream": true, "messages": [{"role": "user", "content": "write a lot"}]});

    // Read to the end: 40 MiB of words in 64 KiB chunks, no usage chunk.
    let resp = http().post(s.url("/v1/chat/completions")).bearer_auth(CLIENT_KEY).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut bytes = resp.bytes_stream();
    let mut received = 0usize;
    while let Some(b) = bytes.next().await {
        received += b.unwrap().len();
    }
    assert!(received > 40 << 20, "{received} bytes");

    // Cut by the client after 8 MiB.
    let resp = http().post(s.url("/v1/chat/completions")).bearer_auth(CLIENT_KEY).json(&body).send().await.unwrap();
    let mut bytes = resp.bytes_stream();
    let mut cut_at = 0usize;
    while let Some(b) = bytes.next().await {
        cut_at += b.unwrap().len();
        if cut_at > 8 << 20 {
            break;
        }
    }
    drop(bytes);

    let records = s.usage_n(2).await;
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    assert_eq!(records.len(), 2, "{records:?}");
    let whole = &records[0];
    assert_eq!(whole["usage_reported"], false);
    // "lorem ipsum dolor sit amet " is 5 to 7 tokens per 27 bytes.
    let tokens = whole["output_tokens"].as_u64().unwrap();
    assert!(tokens > 7_000_000 && tokens < 12_000_000, "{tokens} tokens counted for 40 MiB");
    assert!(records[1]["output_tokens"].as_u64().unwrap() > 1_000_000, "{:?}", records[1]);
    let peak = highest.load(Ordering::Relaxed) as f64 / 1024.0;
    eprintln!("serve memory: {settled:.0} MiB settled after start-up, at most {peak:.0} MiB during two 40 MiB usage-less streams");
    assert!(peak < settled + 32.0, "resident memory rose from {settled:.0} to {peak:.0} MiB: the stream's text is being kept");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_file_sets_everything_and_flags_override_it() {
    let fake = FakeLlm::start().await;
    let models = [("fake-cheap", "openai", "cheap-1"), ("fake-mid", "openai", "mid-1"), ("fake-strong", "anthropic", "strong-1")];
    let start = |extra: &[&str]| {
        let dir = tempfile::tempdir().unwrap();
        write_files(&fake, &models, dir.path());
        // Relative paths: relative to the file, wherever serve is started from.
        std::fs::write(
            dir.path().join("semroute.toml"),
            "[router]\nprices = \"prices.toml\"\nquality_bar = 0.95\n\n[serve]\nlisten = \"127.0.0.1:0\"\n\
             providers = \"providers.toml\"\nclient_keys = \"client-keys\"\nusage_log = \"usage.jsonl\"\n",
        )
        .unwrap();
        let mut cmd = common::semroute("serve");
        cmd.current_dir("/").arg("--config").arg(dir.path().join("semroute.toml")).args(extra);
        spawn_serve(cmd, dir)
    };
    let body = json!({"model": "auto", "messages": [{"role": "user", "content": PROMPT}]}).to_string();
    let s = start(&[]);
    let (status, h, _) = post(&s, Some(CLIENT_KEY), body.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "x-semroute-quality-bar"), "0.95");
    assert_eq!(s.usage_n(1).await.len(), 1, "the usage log is where the file says");
    assert_eq!(post(&s, None, body.clone()).await.0, 401, "the client keys are the file's");
    drop(s);
    let s = start(&["--quality-bar", "0.5"]);
    let (status, h, _) = post(&s, Some(CLIENT_KEY), body).await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "x-semroute-quality-bar"), "0.5", "a flag overrides the file");

    // A bad value or an unknown key names the file, the line and the key; nothing starts.
    for (text, line, key) in [
        ("[serve]\nlisten = 8080\n", 2, "serve.listen"),
        ("[router]\nk = 8\n\n[serve]\nmax_attempt = 2\n", 5, "serve.max_attempt"),
        ("[router]\ncaution = -1.0\n", 2, "router.caution"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("semroute.toml");
        std::fs::write(&path, text).unwrap();
        let out = common::semroute("serve").arg("--config").arg(&path).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("semroute.toml:{line}: invalid setting (key `{key}`)")), "{err}");
    }
}

/// Sends one chat turn to `model` (named, not routed) and returns the answer.
async fn turn(s: &Serve, model: &str, messages: &Value, stream: bool) -> Value {
    let mut body = json!({"model": model, "messages": messages});
    if !stream {
        let (status, _, answer) = post(s, Some(CLIENT_KEY), body.to_string()).await;
        assert_eq!(status, 200, "{answer}");
        return answer;
    }
    body["stream"] = true.into();
    body["stream_options"] = json!({"include_usage": true});
    let text = http()
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The chunk with usage.
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|c| c.get("usage").is_some_and(|u| !u.is_null()))
        .unwrap_or_else(|| panic!("no usage chunk in {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_tokens_are_read_from_both_protocols_into_cost_log_and_metrics() {
    let fake = FakeLlm::start().await;
    let models =
        [("fake-cheap", "openai", "cheap-cached"), ("fake-mid", "anthropic", "mid-cached"), ("fake-strong", "anthropic", "strong-1")];
    let s = serve(&fake, &models, &[]);
    let first = json!([{"role": "system", "content": "You are a coding agent."}, {"role": "user", "content": "Fix the failing test."}]);
    let mut second = first.clone();
    second
        .as_array_mut()
        .unwrap()
        .extend([json!({"role": "assistant", "content": "Reading the test."}), json!({"role": "user", "content": "It is in tests/a.rs."})]);

    // OpenAI protocol: the second turn repeats two messages (20 tokens by the fake's rule).
    turn(&s, "fake-cheap", &first, false).await;
    let a = turn(&s, "fake-cheap", &second, false).await;
    assert_eq!(a["usage"]["prompt_tokens"], 40);
    assert_eq!(a["usage"]["prompt_tokens_details"]["cached_tokens"], 20, "{a}");
    // Anthropic, asked to cache: the body carries cache_control marks; the first turn writes the
    // cache (20 tokens: system and one message), the second reads 20 and writes 20; streamed.
    turn(&s, "fake-mid", &first, false).await;
    let b = turn(&s, "fake-mid", &second, true).await;
    assert_eq!(b["usage"]["prompt_tokens"], 40, "Anthropic's three counts add up to the prompt: {b}");
    assert_eq!(b["usage"]["prompt_tokens_details"]["cached_tokens"], 20, "{b}");
    assert_eq!(b["usage"]["prompt_tokens_details"]["cache_write_tokens"], 20, "{b}");
    let bodies = fake.seen.requests.lock().unwrap().clone();
    let (_, id, body) = bodies.last().unwrap();
    assert_eq!(id, "mid-cached");
    assert_eq!(body["system"][0]["cache_control"]["type"], "ephemeral", "{body}");
    assert_eq!(body["messages"].as_array().unwrap().last().unwrap()["content"][0]["cache_control"]["type"], "ephemeral");
    // An Anthropic endpoint not asked to cache is sent no marks.
    turn(&s, "fake-strong", &first, false).await;
    let plain = fake.seen.requests.lock().unwrap().last().unwrap().2.clone();
    assert!(!plain.to_string().contains("cache_control"), "{plain}");

    let log = s.usage_n(5).await;
    assert_eq!(log.len(), 5);
    let cost = |i: usize| log[i]["cost_usd"].as_f64().unwrap();
    let out = |i: usize| log[i]["output_tokens"].as_f64().unwrap();
    assert_eq!((log[1]["cached_input_tokens"].as_u64(), log[1]["cache_write_tokens"].as_u64()), (Some(20), Some(0)));
    let want = (20.0 * 0.10 + 20.0 * 0.01 + out(1) * 0.40) / 1e6;
    assert!((cost(1) - want).abs() < 1e-15, "cheap, cached: {} against {want}", cost(1));
    assert_eq!((log[2]["cached_input_tokens"].as_u64(), log[2]["cache_write_tokens"].as_u64()), (Some(0), Some(20)));
    let want = (20.0 * 1.25 + out(2) * 4.0) / 1e6;
    assert!((cost(2) - want).abs() < 1e-15, "mid, first turn writes: {} against {want}", cost(2));
    assert_eq!((log[3]["cached_input_tokens"].as_u64(), log[3]["cache_write_tokens"].as_u64()), (Some(20), Some(20)));
    let want = (20.0 * 0.10 + 20.0 * 1.25 + out(3) * 4.0) / 1e6;
    assert!((cost(3) - want).abs() < 1e-15, "mid, second turn (streamed): {} against {want}", cost(3));
    assert_eq!(log[4]["cached_input_tokens"].as_u64(), Some(0));

    let metrics = http().get(s.url("/metrics")).bearer_auth(CLIENT_KEY).send().await.unwrap().text().await.unwrap();
    for line in [
        r#"semroute_tokens_total{model="fake-cheap",kind="cache_read"} 20"#,
        r#"semroute_tokens_total{model="fake-cheap",kind="uncached"} 40"#,
        r#"semroute_tokens_total{model="fake-mid",kind="cache_read"} 20"#,
        r#"semroute_tokens_total{model="fake-mid",kind="cache_write"} 40"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_requests_are_steps_of_a_session() {
    let fake = FakeLlm::start().await;
    let models =
        [("fake-cheap", "openai", "cheap-cached"), ("fake-mid", "anthropic", "mid-cached"), ("fake-strong", "anthropic", "strong-1")];
    let s = serve(&fake, &models, &[]);
    let mut messages = json!([{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": PROMPT}]);
    let send = |messages: Value, session: Option<&'static str>| {
        let mut req = http()
            .post(s.url("/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .header("content-type", "application/json")
            .body(json!({"model": "auto", "messages": messages}).to_string());
        if let Some(name) = session {
            req = req.header("x-semroute-session", name);
        }
        async move {
            let resp = req.send().await.unwrap();
            let h = resp.headers().clone();
            let body: Value = resp.json().await.unwrap();
            (h, body)
        }
    };
    let (h1, b1) = send(messages.clone(), Some("agent-run-1")).await;
    assert_eq!(header(&h1, "x-semroute-session-step"), "1", "{b1}");
    let id = header(&h1, "x-semroute-session").to_string();
    assert_eq!(id.len(), 32);
    messages.as_array_mut().unwrap().push(json!({"role": "assistant", "content": "done"}));
    messages.as_array_mut().unwrap().push(json!({"role": "user", "content": "Observation: the file was saved."}));
    let (h2, b2) = send(messages.clone(), Some("agent-run-1")).await;
    assert_eq!((header(&h2, "x-semroute-session"), header(&h2, "x-semroute-session-step")), (id.as_str(), "2"));
    assert_eq!(b2["semroute"]["session"]["step"], 2, "{b2}");
    assert_eq!(b2["semroute"]["session"]["task_reused"], true, "{b2}");
    // Without the header the leading messages name the session: another one.
    let (h3, _) = send(messages.clone(), None).await;
    assert_ne!(header(&h3, "x-semroute-session"), id);
    let log = s.usage_n(3).await;
    assert_eq!(log[1]["session"]["id"], id.as_str());
    assert_eq!(log[1]["session"]["step"], 2);
    // A session name with a control character is refused.
    let bad = http()
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .header("x-semroute-session", "a\tb")
        .body(json!({"model": "auto", "messages": messages}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

/// With a static embedder a short request is routed on the server's async tasks, a long one on a
/// blocking thread (`Router::is_quick`); both are answered, routed and recorded alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_embedder_routes_short_requests_in_place_and_long_ones_aside() {
    let fake = FakeLlm::start().await;
    let s = serve(&fake, ALL_OK, &["--embedding-model", "static-all-minilm-l6-v2"]);
    let long = format!("Summarise this report in three bullet points:\n{}", "The quarterly figures rose in every region. ".repeat(120));
    assert!(long.len() > semroute::router::QUICK_BYTES);
    for prompt in [PROMPT, long.as_str()] {
        let (status, headers, body) =
            post(&s, Some(CLIENT_KEY), json!({"model": "auto", "messages": [{"role": "user", "content": prompt}]}).to_string()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(header(&headers, "x-semroute-routed"), "true");
        assert!(body["choices"][0]["message"]["content"].is_string(), "{body}");
    }
    let usage = s.usage_n(2).await;
    assert_eq!(usage.len(), 2, "{usage:?}");
}
