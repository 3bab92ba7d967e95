//! The grading pipeline against fake providers: real HTTP servers on loopback that speak the
//! OpenAI and Anthropic protocols, with every fault the `grade` example must survive, and a
//! resume after SIGKILL.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use semroute::eval::Dataset;
use semroute::grade::{journal_path, match_reference, parse_judge_score, CallRecord, Journal};
use semroute::provider::ApiKey;
use semroute::ExemplarSet;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "test-key-not-secret-but-never-printed";

/// What the fake providers saw.
#[derive(Default)]
struct Fake {
    /// Requests per (model, prompt).
    calls: Mutex<HashMap<(String, String), Vec<Instant>>>,
    in_flight: Mutex<HashMap<String, (usize, usize)>>, // model -> (now, max)
    all: AtomicUsize,
}

impl Fake {
    fn seen(&self, model: &str, prompt: &str) -> usize {
        self.calls.lock().unwrap().get(&(model.to_string(), prompt.to_string())).map_or(0, Vec::len)
    }
}

struct Flight<'a>(&'a Fake, String);
impl Drop for Flight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.lock().unwrap().get_mut(&self.1).unwrap().0 -= 1;
    }
}

fn answer_for(model: &str) -> &'static str {
    if model.contains("wrong") {
        "Let me see: 6 x 7 is 41. The answer is 41."
    } else {
        "6 x 7 = 42. The answer is 42."
    }
}

async fn openai(State(fake): State<Arc<Fake>>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    let model = body["model"].as_str().unwrap_or_default().to_string();
    let prompt = body["messages"][0]["content"].as_str().unwrap_or_default().to_string();
    let n = {
        let mut calls = fake.calls.lock().unwrap();
        let v = calls.entry((model.clone(), prompt.clone())).or_default();
        v.push(Instant::now());
        v.len()
    };
    fake.all.fetch_add(1, Ordering::SeqCst);
    {
        let mut f = fake.in_flight.lock().unwrap();
        let e = f.entry(model.clone()).or_default();
        e.0 += 1;
        e.1 = e.1.max(e.0);
    }
    let _flight = Flight(&fake, model.clone());
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {KEY}")) {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": {"message": "invalid api key"}}))).into_response();
    }
    let ok = |text: &str| {
        Json(json!({"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 12, "completion_tokens": 5}}))
        .into_response()
    };
    match model.as_str() {
        "flaky-429" if n == 1 => (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], "slow down").into_response(),
        "flaky-503" if n <= 2 => (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response(),
        "always-429" => (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "0")], "slow down").into_response(),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            ok(answer_for(&model))
        }
        m if m.starts_with("steady") => {
            tokio::time::sleep(Duration::from_millis(40)).await;
            ok(answer_for(m))
        }
        "malformed" => (StatusCode::OK, [("content-type", "application/json")], "{\"choices\": [{\"message\": ").into_response(),
        "refusal" => Json(json!({"choices": [{"message": {"role": "assistant", "content": null, "refusal": "I can't help with that."}, "finish_reason": "stop"}]})).into_response(),
        "empty" => ok(""),
        "no-usage" => Json(json!({"choices": [{"message": {"role": "assistant", "content": answer_for(&model)}, "finish_reason": "stop"}]})).into_response(),
        "judge" => {
            // The rubric's answer section decides: a right answer gets 10, a wrong one 1.
            let rating = if prompt.contains("[Answer to grade]\n6 x 7 = 42") { 10 } else { 1 };
            ok(&format!("Checked the arithmetic. Rating: [[{rating}]]"))
        }
        m => ok(answer_for(m)),
    }
}

async fn anthropic(State(fake): State<Arc<Fake>>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    let model = body["model"].as_str().unwrap_or_default().to_string();
    let prompt = body["messages"][0]["content"].as_str().unwrap_or_default().to_string();
    fake.calls.lock().unwrap().entry((model.clone(), prompt)).or_default().push(Instant::now());
    if headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some(KEY) || headers.get("anthropic-version").is_none() {
        return (StatusCode::UNAUTHORIZED, Json(json!({"type": "error", "error": {"type": "authentication_error"}}))).into_response();
    }
    if body["max_tokens"].as_u64().is_none() {
        return (StatusCode::BAD_REQUEST, "max_tokens is required").into_response();
    }
    let stop = if model == "claude-refusal" { "refusal" } else { "end_turn" };
    let text = if model == "claude-refusal" { "" } else { answer_for(&model) };
    Json(json!({"type": "message", "role": "assistant", "content": [{"type": "text", "text": text}],
                "stop_reason": stop, "usage": {"input_tokens": 11, "output_tokens": 7}}))
    .into_response()
}

/// A server that announces 500 bytes of body, sends 20 and hangs up.
async fn truncating_server(listener: tokio::net::TcpListener) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else { return };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            let mut got = Vec::new();
            // Read the headers and the announced body.
            loop {
                let n = sock.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got);
                if let Some(h) = text.find("\r\n\r\n") {
                    let len = text[..h]
                        .lines()
                        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)))
                        .unwrap_or(0);
                    if got.len() >= h + 4 + len {
                        break;
                    }
                }
            }
            let _ = sock
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{\"choices\": [{\"mes")
                .await;
            let _ = sock.shutdown().await;
        });
    }
}

struct Servers {
    _rt: tokio::runtime::Runtime,
    fake: Arc<Fake>,
    base: String,
    truncating: String,
}

fn servers() -> Servers {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let fake = Arc::new(Fake::default());
    let (base, truncating) = rt.block_on(async {
        let app = Router::new()
            .route("/openai/v1/chat/completions", post(openai))
            .route("/anthropic/v1/messages", post(anthropic))
            .with_state(fake.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        let t = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let truncating = format!("http://{}", t.local_addr().unwrap());
        tokio::spawn(truncating_server(t));
        (base, truncating)
    });
    Servers { _rt: rt, fake, base, truncating }
}

/// A providers entry and a price entry for each (name, protocol, base, model id, key var, extra).
fn write_config(dir: &Path, entries: &[(&str, &str, String, &str, &str)]) -> (PathBuf, PathBuf) {
    let mut providers = String::new();
    let mut prices = String::new();
    for (name, protocol, base, key_env, extra) in entries {
        providers.push_str(&format!(
            "[models.\"{name}\"]\nprotocol = \"{protocol}\"\nbase_url = \"{base}\"\nmodel = \"{name}\"\napi_key_env = \"{key_env}\"\n{extra}\n\n"
        ));
        prices.push_str(&format!(
            "[models.\"{name}\"]\nprovider = \"fake\"\ninput_per_mtok = 1.0\noutput_per_mtok = 2.0\ntier = \"cheap\"\nsource = \"test\"\nas_of = \"2026-11-23\"\n\n"
        ));
    }
    let (p, q) = (dir.join("providers.toml"), dir.join("prices.toml"));
    std::fs::write(&p, providers).unwrap();
    std::fs::write(&q, prices).unwrap();
    (p, q)
}

fn grade_cmd(providers: &Path, prices: &Path, exemplars: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = common::semroute("grade");
    c.args(["--providers", providers.to_str().unwrap(), "--prices", prices.to_str().unwrap()])
        .args(["--exemplars", exemplars.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .args(["--retry-base-ms", "10"])
        .args(extra)
        .env("FAKE_KEY", KEY)
        .env("WRONG_KEY", "sk-wrong");
    c
}

fn records(out: &Path) -> Vec<CallRecord> {
    Journal::open(journal_path(out)).unwrap().1.records
}

#[test]
fn every_fault_is_recorded_and_the_run_goes_on() {
    let s = servers();
    let dir = tempfile::tempdir().unwrap();
    let oa = format!("{}/openai/v1", s.base);
    let an = format!("{}/anthropic/v1", s.base);
    let entries = vec![
        ("good", "openai", oa.clone(), "FAKE_KEY", ""),
        ("wrong", "openai", oa.clone(), "FAKE_KEY", ""),
        ("flaky-429", "openai", oa.clone(), "FAKE_KEY", ""),
        ("flaky-503", "openai", oa.clone(), "FAKE_KEY", ""),
        ("always-429", "openai", oa.clone(), "FAKE_KEY", ""),
        ("slow", "openai", oa.clone(), "FAKE_KEY", "timeout_secs = 0.5"),
        ("malformed", "openai", oa.clone(), "FAKE_KEY", ""),
        ("refusal", "openai", oa.clone(), "FAKE_KEY", ""),
        ("empty", "openai", oa.clone(), "FAKE_KEY", ""),
        ("no-usage", "openai", oa.clone(), "FAKE_KEY", ""),
        ("bad-key", "openai", oa.clone(), "WRONG_KEY", ""),
        ("truncated", "openai", s.truncating.clone(), "FAKE_KEY", ""),
        ("claude-good", "anthropic", an.clone(), "FAKE_KEY", ""),
        ("claude-refusal", "anthropic", an.clone(), "FAKE_KEY", ""),
        ("judge", "openai", oa.clone(), "FAKE_KEY", "provider = \"judges\""),
    ];
    let (providers, prices) = write_config(dir.path(), &entries);
    let tasks = dir.path().join("tasks.jsonl");
    std::fs::write(
        &tasks,
        concat!(
            r#"{"id":"ref","prompt":"What is 6 x 7?","category":"math","language":"en","reference":"42"}"#,
            "\n",
            r#"{"id":"judged","prompt":"Explain 6 x 7.","category":"math","language":"en","label":{"tier":"cheap","reason":"r","output_tokens":10}}"#,
            "\n"
        ),
    )
    .unwrap();
    let out = dir.path().join("results.jsonl");
    let models: Vec<&str> = entries.iter().map(|e| e.0).filter(|m| *m != "judge").collect();
    let models = models.join(",");

    // The estimate spends nothing.
    let est = grade_cmd(&providers, &prices, &tasks, &out, &["--judge", "judge", "--models", &models, "--estimate"]).output().unwrap();
    assert!(est.status.success(), "{}", String::from_utf8_lossy(&est.stderr));
    let text = String::from_utf8(est.stdout).unwrap();
    let e: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!((e["calls"].as_u64(), e["judge_calls"].as_u64()), (Some(28), Some(14)));
    assert!(e["max_usd"].as_f64().unwrap() > 0.0);
    assert_eq!(s.fake.all.load(Ordering::SeqCst), 0, "--estimate made a call");

    let started = Instant::now();
    let run = grade_cmd(&providers, &prices, &tasks, &out, &["--judge", "judge", "--models", &models, "--max-attempts", "3"]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&run.stdout).to_string(), String::from_utf8_lossy(&run.stderr).to_string());
    assert!(run.status.success(), "{stdout}\n{stderr}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(!stdout.contains(KEY) && !stderr.contains(KEY), "a key was printed");

    let recs = records(&out);
    assert_eq!(recs.len(), 28);
    let get = |task: &str, model: &str| recs.iter().find(|r| r.exemplar == task && r.model == model).unwrap().clone();
    let kind = |task: &str, model: &str| get(task, model).error_kind.unwrap_or_else(|| "ok".into());

    let good = get("ref", "good");
    assert_eq!((good.quality, good.scored_by.as_deref()), (Some(1.0), Some("reference")));
    assert_eq!((good.input_tokens, good.output_tokens, good.tokens_from.as_str()), (12, 5, "provider"));
    assert!((good.cost_usd - (12.0 * 1.0 + 5.0 * 2.0) / 1e6).abs() < 1e-12);
    assert_eq!(good.response.as_deref(), Some("6 x 7 = 42. The answer is 42."));
    assert_eq!(get("ref", "wrong").quality, Some(0.0));
    let judged = get("judged", "good");
    assert_eq!((judged.quality, judged.scored_by.as_deref()), (Some(1.0), Some("judge:judge")));
    assert!(judged.judge_cost_usd > 0.0);
    assert_eq!(get("judged", "wrong").quality, Some(0.0));

    // Retried: 429 once (honouring Retry-After: 1 s, far above the 10 ms backoff), 503 twice.
    let f429 = get("ref", "flaky-429");
    assert_eq!((f429.quality, f429.attempts), (Some(1.0), 2));
    let times = s.fake.calls.lock().unwrap()[&("flaky-429".to_string(), "What is 6 x 7?".to_string())].clone();
    assert!(times[1] - times[0] >= Duration::from_millis(900), "Retry-After ignored: {:?}", times[1] - times[0]);
    assert_eq!((get("ref", "flaky-503").quality, get("ref", "flaky-503").attempts), (Some(1.0), 3));
    let r429 = get("ref", "always-429");
    assert_eq!((kind("ref", "always-429").as_str(), r429.attempts, r429.quality), ("rate_limited", 3, None));
    assert_eq!(s.fake.seen("always-429", "What is 6 x 7?"), 3);

    for (model, expected) in [
        ("slow", "timeout"),
        ("malformed", "malformed"),
        ("refusal", "refusal"),
        ("empty", "empty"),
        ("bad-key", "auth"),
        ("truncated", "truncated"),
        ("claude-refusal", "refusal"),
    ] {
        for task in ["ref", "judged"] {
            assert_eq!(kind(task, model), expected, "{task} / {model}");
            assert_eq!(get(task, model).quality, None);
        }
    }
    // A timed-out call took its whole timeout (0.5 s), and says so.
    assert!(get("ref", "slow").latency_ms >= 450, "{}", get("ref", "slow").latency_ms);
    let nu = get("ref", "no-usage");
    assert_eq!((nu.quality, nu.tokens_from.as_str()), (Some(1.0), "tiktoken"));
    assert!(nu.input_tokens > 0 && nu.output_tokens > 0);
    let cg = get("ref", "claude-good");
    assert_eq!((cg.quality, cg.input_tokens, cg.output_tokens), (Some(1.0), 11, 7));

    // The output is measured exemplars the router and the savings benchmark read as they are.
    let set = ExemplarSet::load_file(&out).unwrap();
    assert_eq!(set.len(), 2);
    let text = std::fs::read_to_string(&out).unwrap();
    let line: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(line["results"]["good"]["quality"], 1.0);
    assert_eq!(line["results"]["good"]["output_tokens"], 5);
    // The measured cost travels with the result, and the router reads it as the neighbours' cost.
    assert_eq!(line["results"]["good"]["cost_usd"], line["calls"]["good"]["cost_usd"]);
    assert!(line["results"]["good"]["cost_usd"].as_f64().unwrap() > 0.0);
    assert!(line["results"].get("slow").is_none());
    assert_eq!(line["calls"]["slow"]["error_kind"], "timeout");
    assert_eq!(line["calls"]["good"]["response"], "6 x 7 = 42. The answer is 42.");
    assert!(line["calls"]["good"]["latency_ms"].as_u64().is_some());
    let data = Dataset::load(&out).unwrap();
    assert_eq!(data.records[0].scores["claude-good"], 1.0);
    assert_eq!(data.records[0].output_tokens["claude-good"], 7);
    assert!(data.records[0].cost_usd["claude-good"] > 0.0);

    // Run again: nothing left to do, nothing repeated.
    let before = s.fake.all.load(Ordering::SeqCst);
    let again = grade_cmd(&providers, &prices, &tasks, &out, &["--judge", "judge", "--models", &models]).output().unwrap();
    assert!(again.status.success());
    assert_eq!(s.fake.all.load(Ordering::SeqCst), before);
    assert_eq!(records(&out).len(), 28);
}

#[test]
fn a_run_killed_with_sigkill_resumes_without_loss_or_repeats() {
    let s = servers();
    let dir = tempfile::tempdir().unwrap();
    let oa = format!("{}/openai/v1", s.base);
    let entries = vec![
        ("steady-a", "openai", oa.clone(), "FAKE_KEY", "provider = \"a\""),
        ("steady-b", "openai", oa.clone(), "FAKE_KEY", "provider = \"b\""),
    ];
    let (providers, prices) = write_config(dir.path(), &entries);
    let tasks = dir.path().join("tasks.jsonl");
    let mut f = std::fs::File::create(&tasks).unwrap();
    for i in 0..60 {
        writeln!(f, r#"{{"id":"t{i}","prompt":"What is 6 x 7? (#{i})","reference":"42"}}"#).unwrap();
    }
    drop(f);
    let out = dir.path().join("results.jsonl");
    let journal = journal_path(&out);

    // Start, wait for some records, SIGKILL.
    let mut child = grade_cmd(&providers, &prices, &tasks, &out, &["--concurrency", "2"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&journal).map_or(0, |t| t.lines().count()) < 20 {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let killed_at = records(&out);
    assert!(killed_at.len() >= 20 && killed_at.len() < 120, "{}", killed_at.len());
    assert!(!out.exists(), "the output is written only at the end");

    // Tear the last record in half, as a crash mid-write would.
    let text = std::fs::read_to_string(&journal).unwrap();
    let body = text.trim_end_matches('\n');
    let cut = body.rfind('\n').map_or(0, |i| i + 1);
    let torn_line = &body[cut..];
    let torn: CallRecord = serde_json::from_str(torn_line).unwrap();
    std::fs::write(&journal, format!("{}{}", &body[..cut], &torn_line[..torn_line.len() / 2])).unwrap();

    let run = grade_cmd(&providers, &prices, &tasks, &out, &["--concurrency", "2"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("torn last line"), "{stderr}");
    eprintln!("killed after {} of 120 records; {}", killed_at.len(), stderr.lines().next().unwrap_or_default());

    let done = records(&out);
    assert_eq!(done.len(), 120, "every pair once");
    let mut pairs: Vec<(String, String)> = done.iter().map(|r| (r.exemplar.clone(), r.model.clone())).collect();
    pairs.sort();
    pairs.dedup();
    assert_eq!(pairs.len(), 120, "a pair was recorded twice");
    assert!(done.iter().all(|r| r.quality == Some(1.0)));
    // What was recorded before the kill was not asked again; the torn one was redone.
    for r in &killed_at {
        let prompt = format!("What is 6 x 7? (#{})", &r.exemplar[1..]);
        let expect = if r.exemplar == torn.exemplar && r.model == torn.model { 2 } else { 1 };
        assert_eq!(s.fake.seen(&r.model, &prompt), expect, "{} / {}", r.exemplar, r.model);
    }
    // Concurrency stayed bounded per provider.
    for (model, (_, max)) in s.fake.in_flight.lock().unwrap().iter() {
        assert!(*max <= 2, "{model}: {max} calls in flight");
    }
    assert_eq!(ExemplarSet::load_file(&out).unwrap().len(), 60);
}

#[test]
fn a_damaged_journal_line_before_the_end_is_an_error_and_nothing_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.calls.jsonl");
    let good = r#"{"exemplar":"a","model":"m","quality":1.0,"input_tokens":1,"output_tokens":1,"tokens_from":"provider","cost_usd":0.0,"latency_ms":1,"attempts":1}"#;
    let text = format!("{good}\n{{garbage\n{}\n", good.replace("\"a\"", "\"b\""));
    std::fs::write(&path, &text).unwrap();
    let msg = Journal::open(&path).unwrap_err().to_string();
    assert!(msg.contains("j.calls.jsonl:2"), "{msg}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
}

#[test]
fn reference_matching_and_judge_parsing() {
    assert_eq!(match_reference("so she pays $1,234.50 in total", "1234.5"), 1.0);
    assert_eq!(match_reference("The answer is 18.", "18"), 1.0);
    assert_eq!(match_reference("18 or maybe 19", "18"), 0.0);
    assert_eq!(match_reference("-3", "-3"), 1.0);
    assert_eq!(match_reference("Reasoning...\nParis.", "paris"), 1.0);
    assert_eq!(match_reference("London", "Paris"), 0.0);
    assert_eq!(parse_judge_score("Rating: [[1]]"), Some(0.0));
    assert_eq!(parse_judge_score("[[3]] then revised: Rating: [[10]]"), Some(1.0));
    assert_eq!(parse_judge_score("Rating: [[11]]"), None);
    assert_eq!(parse_judge_score("no rating"), None);
    assert_eq!(format!("{:?}", ApiKey::new("sk-secret")), "ApiKey(<redacted>)");
}

#[test]
fn the_example_providers_file_matches_the_price_table() {
    let p = semroute::provider::Providers::from_file(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/providers.example.toml")).unwrap();
    let prices = semroute::PriceTable::builtin().unwrap();
    p.check_prices(&prices).unwrap();
    assert_eq!(p.names().count(), prices.len());
    // A bad entry names file, line and model.
    let bad = "[models.\"x\"]\nprotocol = \"openai\"\nbase_url = \"ftp://nope\"\nmodel = \"x\"\napi_key_env = \"K\"\n";
    let msg = semroute::provider::Providers::from_toml_str(bad, "providers.toml").unwrap_err().to_string();
    assert!(msg.contains("providers.toml:1") && msg.contains("`x`") && msg.contains("base_url"), "{msg}");
}

#[test]
fn a_run_in_which_every_call_fails_exits_non_zero() {
    let s = servers();
    let dir = tempfile::tempdir().unwrap();
    let oa = format!("{}/openai/v1", s.base);
    let entries = vec![("bad-key", "openai", oa.clone(), "WRONG_KEY", ""), ("always-429", "openai", oa, "FAKE_KEY", "")];
    let (providers, prices) = write_config(dir.path(), &entries);
    let tasks = dir.path().join("tasks.jsonl");
    std::fs::write(&tasks, r#"{"id":"ref","prompt":"What is 6 x 7?","reference":"42"}"#).unwrap();
    let out = dir.path().join("results.jsonl");
    let run = grade_cmd(&providers, &prices, &tasks, &out, &["--max-attempts", "1"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "exit 0 although every call failed: {stderr}");
    assert!(stderr.contains("every one of this run's 2 calls failed"), "{stderr}");
    // What was recorded stays recorded (a rerun can retry).
    assert_eq!(records(&out).len(), 2);
}

#[test]
fn grading_throughput_on_loopback() {
    // 300 exemplars x 4 models against instant fake providers; prints the rate (see README).
    let s = servers();
    let dir = tempfile::tempdir().unwrap();
    let oa = format!("{}/openai/v1", s.base);
    let an = format!("{}/anthropic/v1", s.base);
    let entries = vec![
        ("fast-1", "openai", oa.clone(), "FAKE_KEY", "provider = \"p1\""),
        ("fast-2", "openai", oa.clone(), "FAKE_KEY", "provider = \"p2\""),
        ("claude-fast-3", "anthropic", an.clone(), "FAKE_KEY", "provider = \"p3\""),
        ("claude-fast-4", "anthropic", an.clone(), "FAKE_KEY", "provider = \"p4\""),
    ];
    let (providers, prices) = write_config(dir.path(), &entries);
    let tasks = dir.path().join("tasks.jsonl");
    let lines: Vec<String> = (0..300).map(|i| format!(r#"{{"id":"t{i}","prompt":"What is 6 x 7? ({i})","reference":"42"}}"#)).collect();
    std::fs::write(&tasks, lines.join("\n")).unwrap();
    let out = dir.path().join("results.jsonl");
    let run = grade_cmd(&providers, &prices, &tasks, &out, &["--concurrency", "8"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    eprintln!("{}", stdout.lines().find(|l| l.starts_with("this run")).unwrap());
    assert_eq!(records(&out).iter().filter(|r| r.quality == Some(1.0)).count(), 1200);
}
