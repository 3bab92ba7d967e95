//! A soak run of `semroute serve` (issue #16): hostile providers, hostile clients, reloads,
//! bounded in time; then a report of what broke.
//!
//! ```text
//! cargo build --release --bin semroute --example soak
//! cargo run --release --example soak -- [--minutes 10] [--clients 50] [--json]
//! ```
//! It starts the tests' fake provider (`tests/common/fake_llm.rs`) on loopback in this process, and
//! the `semroute` binary built next to it as a child process, with `--learn-log`. Serve's
//! providers file has three well-behaved models and hostile ones that: fail at once (503, 429),
//! hang (never answer), stall after their first bytes, die mid-answer (connection dropped), never
//! end, send malformed streams (bad JSON, invalid UTF-8, a 2 MiB line without end) or a non-JSON
//! body, send 40 MiB answers, drip slowly, or break a stream with an error event. Two hostile
//! models are cheaper than the good ones, so `auto` requests meet them and fail over.
//!
//! `--clients` clients, each with its own client key, send whole and streamed chat requests to
//! `auto` (three bars) and to named models until the run's end; some close streams mid-way,
//! and some give feedback on answers (with the key that asked). Every `--reload-secs` the
//! harness reloads serve, by `POST /admin/reload` and SIGHUP in turn. A thread samples serve's
//! VmRSS every 200 ms. At the end serve gets SIGTERM with whatever is still in flight; the
//! learning log is then read back, and every acknowledged feedback must be in it.
//!
//! All traffic is on 127.0.0.1. Every loop is bounded in count and in time.

#[path = "../tests/common/fake_llm.rs"]
mod fake_llm;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use fake_llm::{FakeLlm, PROVIDER_KEY};
use futures_util::StreamExt;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
    /// How long clients send requests, in minutes (fractions allowed).
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Seconds between reloads (HTTP and SIGHUP in turn).
    #[arg(long, default_value_t = 30)]
    reload_secs: u64,
    /// Upper bound on requests per client.
    #[arg(long, default_value_t = 100_000)]
    max_requests: usize,
    /// Serve's `--shutdown-secs`.
    #[arg(long, default_value_t = 10.0)]
    shutdown_secs: f64,
    /// Targets left out of the request mix (comma-separated names, e.g. `huge-x,endless-x`), to
    /// find which one a figure comes from.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// Share of requests streamed.
    #[arg(long, default_value_t = STREAM_SHARE)]
    stream_share: f64,
    /// Share of complete answers given feedback.
    #[arg(long, default_value_t = FEEDBACK_SHARE)]
    feedback_share: f64,
    /// Keep serve's stderr, the learning log and the other files in this folder.
    #[arg(long)]
    keep: Option<std::path::PathBuf>,
    /// Print one JSON line with every figure.
    #[arg(long)]
    json: bool,
}

/// Limits set in serve's providers file, on every model: the defaults except where a short soak
/// needs shorter ones.
const TIMEOUT_SECS: f64 = 5.0; // default 60: a hung provider would hold a client a minute
const MAX_STREAM_SECS: f64 = 20.0; // default 600: an endless stream would last the whole run
const LIMITS_NOTE: &str = "timeout_secs = 5 (default 60) and max_stream_secs = 20 (default 600) on every model, so that hung and \
     endless providers are cut many times within a short soak; max_body_bytes (16 MiB) and max_stream_bytes (64 MiB) are the defaults";

/// (price-table name, provider model id on the fake, tier, input $/Mtok, output $/Mtok, weight in the request mix).
const MODELS: &[(&str, &str, &str, f64, f64, u32)] = &[
    ("fake-cheap", "cheap-1", "cheap", 0.10, 0.40, 6),
    ("fake-mid", "mid-1", "mid", 1.00, 4.00, 5),
    ("fake-strong", "strong-1", "strong", 3.00, 15.00, 4),
    // Cheaper than the good ones of their tier: `auto` tries them first, then fails over.
    ("flaky-cheap", "cheap-fail503", "cheap", 0.05, 0.20, 3),
    ("hang-mid", "mid-hang", "mid", 0.80, 3.20, 3),
    // Reached by name (and by routing only when nothing cheaper will do).
    ("stall-x", "x-stall", "strong", 20.0, 80.0, 5),
    ("die-x", "x-die", "strong", 20.0, 80.0, 5),
    ("endless-x", "x-endless", "strong", 20.0, 80.0, 3),
    ("garbage-x", "x-garbage", "strong", 20.0, 80.0, 6),
    ("huge-x", "x-huge", "strong", 20.0, 80.0, 1),
    ("trickle-x", "x-trickle", "strong", 20.0, 80.0, 4),
    ("drip-x", "x-drip", "strong", 20.0, 80.0, 4),
    ("slow-x", "x-slow", "strong", 20.0, 80.0, 3),
    ("midfail-x", "x-midfail", "strong", 20.0, 80.0, 4),
    ("ratelimit-x", "x-fail429", "strong", 20.0, 80.0, 3),
];
/// `auto` targets and their weights.
const AUTOS: &[(&str, u32)] = &[("auto", 20), ("auto:0.5", 8), ("auto:0.9", 7)];
/// Share of requests streamed, of streams the client cuts, of answers given feedback.
const STREAM_SHARE: f64 = 0.5;
const CUT_SHARE: f64 = 0.2;
const FEEDBACK_SHARE: f64 = 0.4;
/// Client-side bound on one request (serve bounds them well below this).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);

fn client_key(i: usize) -> String {
    format!("soak-client-{i:03}-0123456789abcdef")
}

struct ServeChild(Child);
impl Drop for ServeChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What serve wrote on stderr, counted as it comes (the lines themselves are not all kept).
#[derive(Default)]
struct StderrStats {
    lines: AtomicU64,
    warn: AtomicU64,
    error: AtomicU64,
    sighup_reloads: AtomicU64,
    panics: Mutex<Vec<String>>,
    samples: Mutex<Vec<String>>,
}

fn start_serve(fake: &FakeLlm, dir: &std::path::Path, args: &Args) -> Result<(ServeChild, String, Arc<StderrStats>), String> {
    let (mut providers, mut prices) = (String::new(), String::new());
    for (name, id, tier, input, output, _) in MODELS {
        providers.push_str(&format!(
            "[models.\"{name}\"]\nprotocol = \"openai\"\nbase_url = \"{}\"\nmodel = \"{id}\"\napi_key_env = \"FAKE_PROVIDER_KEY\"\n\
             timeout_secs = {TIMEOUT_SECS:?}\nmax_stream_secs = {MAX_STREAM_SECS:?}\n\n",
            fake.base_url()
        ));
        prices.push_str(&format!(
            "[models.\"{name}\"]\nprovider = \"fakeco\"\ninput_per_mtok = {input:?}\noutput_per_mtok = {output:?}\ntier = \"{tier}\"\n\
             source = \"soak fixture\"\nas_of = \"2026-11-30\"\n\n"
        ));
    }
    let w = |f: &str, t: String| std::fs::write(dir.join(f), t).map_err(|e| format!("{f}: {e}"));
    w("providers.toml", providers)?;
    w("prices.toml", prices)?;
    w("keys", (0..args.clients.max(1)).map(|i| client_key(i) + "\n").collect())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // `target/<profile>/examples/<this>` -> `target/<profile>/semroute`.
    let serve =
        exe.parent().and_then(|d| d.parent()).map(|d| d.join(format!("semroute{}", std::env::consts::EXE_SUFFIX))).unwrap_or_default();
    if !serve.exists() {
        return Err(format!("{} is missing: run `cargo build --release --bin semroute --examples` first", serve.display()));
    }
    let mut child = Command::new(&serve)
        .arg("serve")
        .current_dir(dir)
        .arg("--providers")
        .arg(dir.join("providers.toml"))
        .arg("--prices")
        .arg(dir.join("prices.toml"))
        .arg("--client-keys")
        .arg(dir.join("keys"))
        .arg("--usage-log")
        .arg(dir.join("usage.jsonl"))
        .arg("--learn-log")
        .arg(dir.join("learned.jsonl"))
        .arg("--shutdown-secs")
        .arg(args.shutdown_secs.to_string())
        .args(["--listen", "127.0.0.1:0"])
        .env("FAKE_PROVIDER_KEY", PROVIDER_KEY)
        .env("SEMROUTE_LOG", "info")
        .env("RUST_BACKTRACE", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", serve.display()))?;
    let err = child.stderr.take().expect("piped");
    let stats = Arc::new(StderrStats::default());
    let (tx, rx) = std::sync::mpsc::channel();
    let st = stats.clone();
    let mut copy = std::fs::File::create(dir.join("serve.stderr")).ok();
    std::thread::spawn(move || {
        use std::io::Write;
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if let Some(f) = copy.as_mut() {
                let _ = writeln!(f, "{line}");
            }
            st.lines.fetch_add(1, Ordering::Relaxed);
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
            }
            if line.contains("reloaded on SIGHUP") {
                st.sighup_reloads.fetch_add(1, Ordering::Relaxed);
            }
            if line.contains("panicked") {
                let mut p = st.panics.lock().unwrap();
                if p.len() < 20 {
                    p.push(line.clone());
                }
            }
            let (is_warn, is_err) = (line.contains(" WARN "), line.contains(" ERROR "));
            if is_warn {
                st.warn.fetch_add(1, Ordering::Relaxed);
            }
            if is_err {
                st.error.fetch_add(1, Ordering::Relaxed);
            }
            if is_warn || is_err {
                let mut s = st.samples.lock().unwrap();
                if s.len() < 12 {
                    s.push(line.chars().take(300).collect());
                }
            }
        }
    });
    let child = ServeChild(child);
    let addr = rx.recv_timeout(Duration::from_secs(300)).map_err(|_| "serve did not start within 300 s".to_string())?;
    Ok((child, addr, stats))
}

fn vm_kb(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default()
}

#[derive(Default)]
struct Tally {
    /// Outcome kind -> count.
    kinds: Mutex<BTreeMap<String, u64>>,
    /// Requested target -> outcome kind -> count.
    by_target: Mutex<BTreeMap<String, BTreeMap<String, u64>>>,
    /// Model that answered `auto` requests (x-semroute-model) -> count.
    routed_to: Mutex<BTreeMap<String, u64>>,
    sent: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    cut: AtomicU64,
    stream_bytes: AtomicU64,
    feedback_sent: AtomicU64,
    feedback_kinds: Mutex<BTreeMap<String, u64>>,
    acked: Mutex<Vec<String>>,
}

impl Tally {
    fn note(&self, target: &str, kind: &str) {
        *self.kinds.lock().unwrap().entry(kind.to_string()).or_default() += 1;
        *self.by_target.lock().unwrap().entry(target.to_string()).or_default().entry(kind.to_string()).or_default() += 1;
    }
}

fn pick<'a>(rng: &mut impl Rng, items: &[(&'a str, u32)]) -> &'a str {
    let total: u32 = items.iter().map(|i| i.1).sum();
    let mut x = rng.random_range(0..total);
    for (name, w) in items {
        if x < *w {
            return name;
        }
        x -= w;
    }
    items[0].0
}

fn error_code(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
        .unwrap_or_else(|| "no error code".into())
}

enum Outcome {
    Ok,
    Failed,
    Cut,
}

/// What one request asks: which model (or `auto`), the prompt, whether streamed, and after how
/// many events the client cuts a stream off.
struct Request<'a> {
    target: &'a str,
    prompt: &'a str,
    stream: bool,
    cut_after: Option<usize>,
}

/// One request; returns the outcome kind and, for a complete answer, its request id.
async fn one(http: &reqwest::Client, url: &str, key: &str, request: Request<'_>, tally: &Tally) -> (Outcome, String, Option<String>) {
    let Request { target, prompt, stream, cut_after } = request;
    let mut body = json!({"model": target, "messages": [{"role": "user", "content": prompt}]});
    if stream {
        body["stream"] = true.into();
        body["stream_options"] = json!({"include_usage": true});
    }
    let mode = if stream { "stream" } else { "whole" };
    let resp = match http.post(url).bearer_auth(key).timeout(CLIENT_TIMEOUT).json(&body).send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return (Outcome::Failed, format!("{mode}: client timeout before headers"), None),
        Err(e) => return (Outcome::Failed, format!("{mode}: send error ({})", if e.is_connect() { "connect" } else { "other" }), None),
    };
    let status = resp.status();
    let id = resp.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    if target.starts_with("auto") {
        if let Some(m) = resp.headers().get("x-semroute-model").and_then(|v| v.to_str().ok()) {
            *tally.routed_to.lock().unwrap().entry(m.to_string()).or_default() += 1;
        }
    }
    if !status.is_success() || !stream {
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                let what = if e.is_timeout() { "client timeout in body" } else { "body cut off" };
                return (Outcome::Failed, format!("{mode}: HTTP {} {what}", status.as_u16()), None);
            }
        };
        if !status.is_success() {
            return (Outcome::Failed, format!("{mode}: HTTP {} {}", status.as_u16(), error_code(&bytes)), None);
        }
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if v["choices"][0]["message"]["content"].is_string() {
            return (Outcome::Ok, "whole: HTTP 200 answer".into(), id);
        }
        return (Outcome::Failed, "whole: HTTP 200 malformed answer".into(), None);
    }
    // A stream: keep only a tail of it (a `huge` one is 40 MiB).
    let mut s = resp.bytes_stream();
    let mut tail: Vec<u8> = Vec::new();
    let mut chunks = 0usize;
    let mut broken = None;
    while let Some(b) = s.next().await {
        match b {
            Ok(b) => {
                chunks += 1;
                tally.stream_bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                tail.extend_from_slice(&b);
                if tail.len() > 8192 {
                    tail.drain(..tail.len() - 8192);
                }
                if cut_after.is_some_and(|n| chunks >= n) {
                    drop(s);
                    return (Outcome::Cut, "stream: cut by the client".into(), None);
                }
            }
            Err(e) => {
                broken = Some(if e.is_timeout() { "client timeout mid-stream" } else { "connection broken mid-stream" });
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&tail);
    let last = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        .next_back()
        .unwrap_or("")
        .trim()
        .to_string();
    if let Some(what) = broken {
        return (Outcome::Failed, format!("stream: HTTP 200, {what}"), None);
    }
    if last == "[DONE]" {
        return (Outcome::Ok, "stream: HTTP 200 [DONE]".into(), id);
    }
    match serde_json::from_str::<Value>(&last) {
        Ok(v) if v.get("error").is_some() => {
            let code = v["error"]["code"].as_str().unwrap_or("no code").to_string();
            (Outcome::Failed, format!("stream: HTTP 200, error event {code}"), None)
        }
        _ => (Outcome::Failed, "stream: HTTP 200, ended without [DONE] or error event".into(), None),
    }
}

#[allow(clippy::too_many_arguments)]
async fn client(
    i: usize,
    base: String,
    prompts: Arc<Vec<String>>,
    deadline: Instant,
    max_requests: usize,
    tally: Arc<Tally>,
    in_flight: Arc<AtomicUsize>,
    stop_feedback: Arc<AtomicBool>,
    skip: Arc<Vec<String>>,
    feedback_share: f64,
    stream_share: f64,
) {
    let http = match reqwest::Client::builder().pool_max_idle_per_host(4).build() {
        Ok(h) => h,
        Err(_) => return,
    };
    let key = client_key(i);
    let url = format!("{base}/v1/chat/completions");
    let mix: Vec<(&str, u32)> =
        AUTOS.iter().copied().chain(MODELS.iter().map(|m| (m.0, m.5))).filter(|(name, _)| !skip.iter().any(|s| s == name)).collect();
    if mix.is_empty() {
        return;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x50a4 + i as u64);
    for n in 0..max_requests {
        if Instant::now() >= deadline {
            break;
        }
        let target = pick(&mut rng, &mix).to_string();
        let stream = rng.random_bool(stream_share);
        let cut_after = (stream && rng.random_bool(CUT_SHARE)).then(|| rng.random_range(1..6));
        let prompt = format!("{} (client {i}, request {n})", prompts[rng.random_range(0..prompts.len())]);
        let give_feedback = rng.random_bool(feedback_share);
        let quality: f64 = rng.random_range(0.0..1.0);
        tally.sent.fetch_add(1, Ordering::Relaxed);
        in_flight.fetch_add(1, Ordering::Relaxed);
        let (outcome, kind, id) = one(&http, &url, &key, Request { target: &target, prompt: &prompt, stream, cut_after }, &tally).await;
        in_flight.fetch_sub(1, Ordering::Relaxed);
        tally.note(&target, &kind);
        match outcome {
            Outcome::Ok => tally.succeeded.fetch_add(1, Ordering::Relaxed),
            Outcome::Failed => tally.failed.fetch_add(1, Ordering::Relaxed),
            Outcome::Cut => tally.cut.fetch_add(1, Ordering::Relaxed),
        };
        if let (Some(id), true) = (id, give_feedback) {
            if !stop_feedback.load(Ordering::Relaxed) {
                tally.feedback_sent.fetch_add(1, Ordering::Relaxed);
                let r = http
                    .post(format!("{base}/v1/feedback"))
                    .bearer_auth(&key)
                    .timeout(Duration::from_secs(60))
                    .json(&json!({"request_id": id, "quality": quality}))
                    .send()
                    .await;
                let kind = match r {
                    Ok(r) if r.status().is_success() => {
                        tally.acked.lock().unwrap().push(id);
                        "2xx".to_string()
                    }
                    Ok(r) => {
                        let st = r.status().as_u16();
                        let b = r.bytes().await.unwrap_or_default();
                        format!("HTTP {st} {}", error_code(&b))
                    }
                    Err(e) => format!("transport error{}", if e.is_timeout() { " (timeout)" } else { "" }),
                };
                *tally.feedback_kinds.lock().unwrap().entry(kind).or_default() += 1;
            }
        }
        let pause = rng.random_range(0..100);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

async fn run(args: Args) -> Result<Value, String> {
    let started_wall = Instant::now();
    let load_start = loadavg();
    let fake = FakeLlm::start().await;
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = match &args.keep {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
            let _ = std::fs::remove_file(d.join("learned.jsonl"));
            d.clone()
        }
        None => tmp.path().to_path_buf(),
    };
    let prompts: Vec<String> = semroute::ExemplarSet::builtin().map_err(|e| e.to_string())?.iter().map(|e| e.prompt.clone()).collect();
    let prompts = Arc::new(prompts);

    let (mut child, addr, stderr) = start_serve(&fake, &dir, &args)?;
    let pid = child.0.id();
    let base = format!("http://{addr}");
    eprintln!("soak: serve (pid {pid}) on {base}; {} clients for {} min; files in {}", args.clients, args.minutes, dir.display());

    // Memory: VmRSS every 200 ms until told to stop.
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let peak_rss = Arc::new(AtomicU64::new(0));
    let rss_series = Arc::new(Mutex::new(Vec::<(f64, u64)>::new()));
    let start_rss = vm_kb(pid, "VmRSS:").unwrap_or(0);
    let sampler = {
        let (stop, peak, series) = (stop_sampling.clone(), peak_rss.clone(), rss_series.clone());
        let t0 = Instant::now();
        std::thread::spawn(move || {
            let mut last_kept = -1.0f64;
            // Bounded: at most 24 h of samples.
            for _ in 0..(24 * 3600 * 5) {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if let Some(kb) = vm_kb(pid, "VmRSS:") {
                    peak.fetch_max(kb, Ordering::Relaxed);
                    let t = t0.elapsed().as_secs_f64();
                    if t - last_kept >= 15.0 {
                        series.lock().unwrap().push((t, kb));
                        last_kept = t;
                    }
                } else {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };

    let run_for = Duration::from_secs_f64(args.minutes * 60.0);
    let t0 = Instant::now();
    let deadline = t0 + run_for;
    let tally = Arc::new(Tally::default());
    let in_flight = Arc::new(AtomicUsize::new(0));
    let stop_feedback = Arc::new(AtomicBool::new(false));
    let skip = Arc::new(args.skip.clone());
    let mut tasks = Vec::new();
    for i in 0..args.clients {
        tasks.push(tokio::spawn(client(
            i,
            base.clone(),
            prompts.clone(),
            deadline,
            args.max_requests,
            tally.clone(),
            in_flight.clone(),
            stop_feedback.clone(),
            skip.clone(),
            args.feedback_share.clamp(0.0, 1.0),
            args.stream_share.clamp(0.0, 1.0),
        )));
    }

    // Reloads every `reload_secs`, HTTP and SIGHUP in turn; progress every minute.
    let (mut reload_http_ok, mut reload_http_failed, mut sighups) = (0u64, 0u64, 0u64);
    let mut reload_errors: Vec<String> = Vec::new();
    let admin = reqwest::Client::new();
    let mut next_reload = t0 + Duration::from_secs(args.reload_secs);
    let mut next_progress = t0 + Duration::from_secs(60);
    let mut turn = 0u64;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = Instant::now();
        if now >= next_reload && now < deadline {
            next_reload += Duration::from_secs(args.reload_secs);
            turn += 1;
            if turn % 2 == 1 {
                let r = admin.post(format!("{base}/admin/reload")).bearer_auth(client_key(0)).timeout(Duration::from_secs(60)).send().await;
                match r {
                    Ok(r) if r.status().is_success() => reload_http_ok += 1,
                    Ok(r) => {
                        reload_http_failed += 1;
                        let st = r.status();
                        reload_errors
                            .push(format!("HTTP {st}: {}", r.text().await.unwrap_or_default().chars().take(200).collect::<String>()));
                    }
                    Err(e) => {
                        reload_http_failed += 1;
                        reload_errors.push(e.to_string());
                    }
                }
            } else {
                // SAFETY: kill(2) on our own child's pid.
                if unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) } == 0 {
                    sighups += 1;
                }
            }
        }
        if now >= next_progress {
            next_progress += Duration::from_secs(60);
            eprintln!(
                "soak: {:>4.0} s: sent {} ok {} failed {} cut {} in flight {}; feedback acked {}; reloads {}; RSS {} MB (peak {} MB); load {}",
                t0.elapsed().as_secs_f64(),
                tally.sent.load(Ordering::Relaxed),
                tally.succeeded.load(Ordering::Relaxed),
                tally.failed.load(Ordering::Relaxed),
                tally.cut.load(Ordering::Relaxed),
                in_flight.load(Ordering::Relaxed),
                tally.acked.lock().unwrap().len(),
                reload_http_ok + sighups,
                vm_kb(pid, "VmRSS:").unwrap_or(0) / 1024,
                peak_rss.load(Ordering::Relaxed) / 1024,
                loadavg()
            );
        }
    }
    let sending_secs = t0.elapsed().as_secs_f64();

    // The end: no new requests; give those in flight 5 s, then SIGTERM with the rest still open.
    stop_feedback.store(true, Ordering::Relaxed);
    let grace = Instant::now() + Duration::from_secs(5);
    while Instant::now() < grace && in_flight.load(Ordering::Relaxed) > 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let in_flight_at_sigterm = in_flight.load(Ordering::Relaxed);
    let hwm_kb = vm_kb(pid, "VmHWM:").unwrap_or(0);
    let end_rss = vm_kb(pid, "VmRSS:").unwrap_or(0);
    let sigterm_at = Instant::now();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let mut exit = None;
    for _ in 0..1200 {
        if let Ok(Some(st)) = child.0.try_wait() {
            exit = Some(st);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let exit_secs = sigterm_at.elapsed().as_secs_f64();
    let killed = exit.is_none();
    if killed {
        let _ = child.0.kill();
        let _ = child.0.wait();
    }
    stop_sampling.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    // serve's own shutdown: --shutdown-secs for requests in flight, then up to 1 s for its runtime.
    let exit_limit = args.shutdown_secs + 2.0;
    let exited_in_time = !killed && exit_secs <= exit_limit;

    // Clients whose connections serve closed finish now; bounded.
    let wait_until = Instant::now() + Duration::from_secs(30);
    for t in tasks {
        let left = wait_until.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, t).await.is_err() {
            eprintln!("soak: a client task was still running 30 s after serve exited");
        }
    }
    std::thread::sleep(Duration::from_millis(300)); // the stderr reader's last lines

    // Feedback: every acknowledged id must be in the learning log.
    let logged: HashSet<String> = std::fs::read_to_string(dir.join("learned.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["id"].as_str().map(str::to_string))
        .collect();
    let acked: Vec<String> = tally.acked.lock().unwrap().clone();
    let acked_set: HashSet<&String> = acked.iter().collect();
    let lost: Vec<&String> = acked.iter().filter(|id| !logged.contains(*id)).collect();
    let logged_not_acked = logged.iter().filter(|id| !acked_set.contains(id)).count();

    let panics = stderr.panics.lock().unwrap().clone();
    let peak_mb = peak_rss.load(Ordering::Relaxed) as f64 / 1024.0;
    let sighup_seen = stderr.sighup_reloads.load(Ordering::Relaxed);
    let load_end = loadavg();
    let v = json!({
        "minutes": args.minutes,
        "clients": args.clients,
        "sending_secs": sending_secs,
        "wall_secs": started_wall.elapsed().as_secs_f64(),
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "limits": LIMITS_NOTE,
        "skipped": args.skip,
        "feedback_share": args.feedback_share,
        "stream_share": args.stream_share,
        "requests": {
            "sent": tally.sent.load(Ordering::Relaxed),
            "succeeded": tally.succeeded.load(Ordering::Relaxed),
            "failed": tally.failed.load(Ordering::Relaxed),
            "cut_by_client": tally.cut.load(Ordering::Relaxed),
            "by_kind": *tally.kinds.lock().unwrap(),
            "by_target": *tally.by_target.lock().unwrap(),
            "auto_routed_to": *tally.routed_to.lock().unwrap(),
            "stream_bytes_received": tally.stream_bytes.load(Ordering::Relaxed),
            "fake_provider_calls": fake.seen.count.load(Ordering::Relaxed),
        },
        "feedback": {
            "sent": tally.feedback_sent.load(Ordering::Relaxed),
            "acknowledged": acked.len(),
            "by_kind": *tally.feedback_kinds.lock().unwrap(),
            "in_learn_log": logged.len(),
            "lost": lost.len(),
            "lost_ids": lost.iter().take(10).collect::<Vec<_>>(),
            "logged_not_acknowledged": logged_not_acked,
        },
        "reloads": {
            "http_ok": reload_http_ok,
            "http_failed": reload_http_failed,
            "http_errors": reload_errors,
            "sighup_sent": sighups,
            "sighup_logged": sighup_seen,
            "done": reload_http_ok + sighup_seen,
        },
        "memory": {
            "start_rss_mb": start_rss as f64 / 1024.0,
            "peak_rss_mb": peak_mb,
            "vm_hwm_mb": hwm_kb as f64 / 1024.0,
            "end_rss_mb": end_rss as f64 / 1024.0,
            "rss_mb_series": rss_series.lock().unwrap().iter().map(|(t, kb)| json!([t.round(), (*kb as f64 / 1024.0).round()])).collect::<Vec<_>>(),
        },
        "shutdown": {
            "in_flight_at_sigterm": in_flight_at_sigterm,
            "exit_secs": exit_secs,
            "limit_secs": exit_limit,
            "exited_in_time": exited_in_time,
            "killed": killed,
            "exit_status": exit.map(|s| s.to_string()),
        },
        "serve_stderr": {
            "lines": stderr.lines.load(Ordering::Relaxed),
            "warn": stderr.warn.load(Ordering::Relaxed),
            "error": stderr.error.load(Ordering::Relaxed),
            "samples": *stderr.samples.lock().unwrap(),
        },
        "panicked": !panics.is_empty(),
        "panic_lines": panics,
        "targets": {
            "rss_under_400_mb": peak_mb < 400.0,
            "zero_panics": panics_empty(&stderr),
            "zero_feedback_lost": lost.is_empty(),
        },
    });
    drop(tmp);
    Ok(v)
}

fn panics_empty(s: &StderrStats) -> bool {
    s.panics.lock().unwrap().is_empty()
}

fn print_report(v: &Value) {
    let r = &v["requests"];
    println!(
        "soak: {} min, {} clients, {} cores (load average {} at the start, {} at the end)",
        v["minutes"],
        v["clients"],
        v["cores"],
        v["loadavg_start"].as_str().unwrap_or(""),
        v["loadavg_end"].as_str().unwrap_or("")
    );
    println!("limits: {}", v["limits"].as_str().unwrap_or(""));
    if v["skipped"].as_array().is_some_and(|a| !a.is_empty()) {
        println!("left out of the mix: {}", v["skipped"]);
    }
    println!(
        "requests: {} sent, {} succeeded, {} failed, {} streams cut by the client ({:.0} MB of streams received)",
        r["sent"],
        r["succeeded"],
        r["failed"],
        r["cut_by_client"],
        r["stream_bytes_received"].as_f64().unwrap_or(0.0) / 1e6
    );
    for (k, n) in r["by_kind"].as_object().into_iter().flatten() {
        println!("  {n:>7}  {k}");
    }
    println!("by target:");
    for (t, kinds) in r["by_target"].as_object().into_iter().flatten() {
        let parts: Vec<String> = kinds.as_object().into_iter().flatten().map(|(k, n)| format!("{n} {k}")).collect();
        println!("  {t:<12} {}", parts.join("; "));
    }
    let routed: Vec<String> = r["auto_routed_to"].as_object().into_iter().flatten().map(|(k, n)| format!("{k} {n}")).collect();
    println!("auto answered by: {}", routed.join(", "));
    let f = &v["feedback"];
    println!(
        "feedback: {} sent, {} acknowledged (2xx), {} in the learning log after shutdown, {} lost; {} logged but not acknowledged",
        f["sent"], f["acknowledged"], f["in_learn_log"], f["lost"], f["logged_not_acknowledged"]
    );
    for (k, n) in f["by_kind"].as_object().into_iter().flatten() {
        println!("  {n:>7}  {k}");
    }
    let rl = &v["reloads"];
    println!(
        "reloads: {} done ({} by POST /admin/reload, {} failed; {} SIGHUP sent, {} logged by serve)",
        rl["done"], rl["http_ok"], rl["http_failed"], rl["sighup_sent"], rl["sighup_logged"]
    );
    let m = &v["memory"];
    let series: Vec<String> = m["rss_mb_series"].as_array().into_iter().flatten().map(|p| format!("{}s:{}", p[0], p[1])).collect();
    println!(
        "serve memory: peak VmRSS {:.1} MB (VmHWM {:.1} MB), {:.1} MB after start-up, {:.1} MB at the end",
        m["peak_rss_mb"].as_f64().unwrap_or(0.0),
        m["vm_hwm_mb"].as_f64().unwrap_or(0.0),
        m["start_rss_mb"].as_f64().unwrap_or(0.0),
        m["end_rss_mb"].as_f64().unwrap_or(0.0)
    );
    println!("  RSS over time (MB): {}", series.join(" "));
    let s = &v["shutdown"];
    println!(
        "shutdown: SIGTERM with {} requests in flight; exited after {:.2} s ({}; limit {} s), status {}",
        s["in_flight_at_sigterm"],
        s["exit_secs"].as_f64().unwrap_or(f64::NAN),
        if s["exited_in_time"] == true { "in time" } else { "NOT in time" },
        s["limit_secs"],
        s["exit_status"].as_str().unwrap_or("killed")
    );
    let e = &v["serve_stderr"];
    println!("serve stderr: {} lines, {} WARN, {} ERROR, panicked: {}", e["lines"], e["warn"], e["error"], v["panicked"]);
    for l in v["panic_lines"].as_array().into_iter().flatten() {
        println!("  {}", l.as_str().unwrap_or(""));
    }
    let t = &v["targets"];
    println!(
        "targets: RSS < 400 MB: {}; zero panics: {}; zero acknowledged feedback lost: {}",
        t["rss_under_400_mb"], t["zero_panics"], t["zero_feedback_lost"]
    );
}

fn main() {
    let args = Args::parse();
    let json_out = args.json;
    if !(args.minutes > 0.0 && args.minutes <= 24.0 * 60.0) || args.clients == 0 || args.reload_secs == 0 {
        eprintln!("soak: --minutes must be in (0, 1440], --clients and --reload-secs at least 1");
        std::process::exit(2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    match rt.block_on(run(args)) {
        Ok(v) => {
            print_report(&v);
            if json_out {
                println!("{v}");
            }
            let ok = v["targets"].as_object().is_some_and(|t| t.values().all(|x| *x == true)) && v["shutdown"]["exited_in_time"] == true;
            rt.shutdown_timeout(Duration::from_secs(1));
            std::process::exit(if ok { 0 } else { 1 });
        }
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::exit(1);
        }
    }
}
