//! A load run of `semroute serve` on loopback: how much time routing adds per request, how many
//! requests per second the server passes, and whether it holds many concurrent streams.
//!
//! ```text
//! cargo build --release --bin semroute --examples
//! cargo run --release --example serve_load -- [--requests 300] [--concurrency 16] [--streams 200] [--json]
//! ```
//! It starts a fake provider (the tests' `fake_llm`, OpenAI protocol) in this process and the
//! `semroute` binary built next to it as a child process, then runs three phases, each bounded
//! by a request count and by `--max-seconds`:
//! 1. latency, one request at a time: the fake called directly, then through `serve` with a named
//!    model (proxy only) and with `auto` (routing: embedding, search, policy); prompts are the
//!    built-in exemplar prompts, cycled;
//! 2. throughput: `auto` requests at `--concurrency` in flight;
//! 3. `--streams` streaming requests open at once against a provider that drips its answer over
//!    about 3 s; each must end with `[DONE]` and the whole answer.
//!
//! Client, server and fake share this machine's cores, so the figures are for this machine only.

#[path = "../tests/common/fake_llm.rs"]
mod fake_llm;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use fake_llm::{FakeLlm, FAKE_PRICES as PRICES, PROVIDER_KEY};
use futures_util::StreamExt;
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
    /// Requests per latency series and for the throughput phase.
    #[arg(long, default_value_t = 300)]
    requests: usize,
    /// Requests in flight in the throughput phase.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Streaming connections held open at once.
    #[arg(long, default_value_t = 200)]
    streams: usize,
    /// Time bound of each phase, in seconds.
    #[arg(long, default_value_t = 60)]
    max_seconds: u64,
    /// Print one JSON object with every figure.
    #[arg(long)]
    json: bool,
    /// The embedding model serve routes with (e.g. `static-all-minilm-l6-v2`; default MiniLM).
    #[arg(long)]
    embedding_model: Option<String>,
}

const CLIENT_KEY: &str = "load-client-key-0123456789abcdef";

struct ServeChild(Child);
impl Drop for ServeChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `serve` with every fake model on the fake provider, the `drip` ones under `drip-` names.
fn start_serve(fake: &FakeLlm, dir: &std::path::Path, drip: bool, model: Option<&str>) -> Result<(ServeChild, String), String> {
    let mut providers = String::new();
    for (name, id) in [("fake-cheap", "cheap"), ("fake-mid", "mid"), ("fake-strong", "strong")] {
        let id = if drip { format!("{id}-drip") } else { id.to_string() };
        providers.push_str(&format!(
            "[models.\"{name}\"]\nprotocol = \"openai\"\nbase_url = \"{}\"\nmodel = \"{id}\"\napi_key_env = \"FAKE_PROVIDER_KEY\"\ntimeout_secs = 30\n\n",
            fake.base_url()
        ));
    }
    std::fs::write(dir.join("providers.toml"), providers).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("prices.toml"), PRICES).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("keys"), format!("{CLIENT_KEY}\n")).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // `target/<profile>/examples/<this>` -> `target/<profile>/semroute`.
    let serve =
        exe.parent().and_then(|d| d.parent()).map(|d| d.join(format!("semroute{}", std::env::consts::EXE_SUFFIX))).unwrap_or_default();
    if !serve.exists() {
        return Err(format!("{} is missing: run `cargo build --release --bin semroute --examples` first", serve.display()));
    }
    let mut cmd = Command::new(&serve);
    cmd.arg("serve");
    if let Some(m) = model {
        cmd.args(["--embedding-model", m]);
    }
    let mut child = cmd
        .arg("--providers")
        .arg(dir.join("providers.toml"))
        .arg("--prices")
        .arg(dir.join("prices.toml"))
        .arg("--client-keys")
        .arg(dir.join("keys"))
        .arg("--usage-log")
        .arg(dir.join(if drip { "usage-drip.jsonl" } else { "usage.jsonl" }))
        .arg("--learn-log")
        .arg(dir.join("learned.jsonl"))
        .args(["--listen", "127.0.0.1:0"])
        .env("FAKE_PROVIDER_KEY", PROVIDER_KEY)
        .env("SEMROUTE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", serve.display()))?;
    let err = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
            } else {
                eprintln!("serve: {line}");
            }
        }
    });
    let child = ServeChild(child);
    let addr = rx.recv_timeout(Duration::from_secs(300)).map_err(|_| "serve did not start within 300 s".to_string())?;
    Ok((child, addr))
}

fn prompts() -> Result<Vec<String>, String> {
    let set = semroute::ExemplarSet::builtin().map_err(|e| e.to_string())?;
    Ok(set.iter().map(|e| e.prompt.clone()).collect())
}

#[derive(Debug, Clone, serde::Serialize)]
struct Series {
    name: String,
    requests: usize,
    failed: usize,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    mean_ms: f64,
}

fn summarise(name: &str, mut ms: Vec<f64>, failed: usize) -> Series {
    ms.sort_by(f64::total_cmp);
    let q = |p: f64| {
        if ms.is_empty() {
            f64::NAN
        } else {
            ms[((ms.len() - 1) as f64 * p).round() as usize]
        }
    };
    let mean = if ms.is_empty() { f64::NAN } else { ms.iter().sum::<f64>() / ms.len() as f64 };
    Series { name: name.into(), requests: ms.len() + failed, failed, p50_ms: q(0.5), p90_ms: q(0.9), p99_ms: q(0.99), mean_ms: mean }
}

async fn one(http: &reqwest::Client, url: &str, key: &str, model: &str, prompt: &str) -> Result<f64, String> {
    // Each request its own agent session, so that a prompt sent again is routed afresh (its
    // embedding included), not as the next step of the session its first sending opened.
    static SESSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let session = format!("load-{}", SESSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let started = Instant::now();
    let resp = http
        .post(url)
        .bearer_auth(key)
        .header("x-semroute-session", session)
        .json(&json!({"model": model, "messages": [{"role": "user", "content": prompt}]}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let body: Value = resp.json().await.map_err(|e| e.to_string())?;
    if !status.is_success() || body["choices"][0]["message"]["content"].as_str().is_none() {
        return Err(format!("HTTP {status}: {body}"));
    }
    Ok(started.elapsed().as_secs_f64() * 1e3)
}

async fn sequential(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    model: &str,
    prompts: &[String],
    n: usize,
    bound: Duration,
) -> (Vec<f64>, usize) {
    let (mut ms, mut failed) = (Vec::new(), 0);
    let deadline = Instant::now() + bound;
    for p in prompts.iter().cycle().take(n) {
        if Instant::now() > deadline {
            break;
        }
        match one(http, url, key, model, p).await {
            Ok(t) => ms.push(t),
            Err(e) => {
                failed += 1;
                eprintln!("serve_load: {e}");
            }
        }
    }
    (ms, failed)
}

async fn run(args: Args) -> Result<Value, String> {
    let fake = FakeLlm::start().await;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let prompts = prompts()?;
    let http = reqwest::Client::builder().pool_max_idle_per_host(1024).build().map_err(|e| e.to_string())?;
    let bound = Duration::from_secs(args.max_seconds);
    let direct = format!("{}/chat/completions", fake.base_url());

    let (_child, addr) = start_serve(&fake, dir.path(), false, args.embedding_model.as_deref())?;
    let via = format!("http://{addr}/v1/chat/completions");
    // Warm-up: connections, the embedding model's first runs.
    sequential(&http, &via, CLIENT_KEY, "auto", &prompts, 20, bound).await;
    sequential(&http, &direct, PROVIDER_KEY, "cheap", &prompts, 20, bound).await;

    // 1. Latency, one request at a time.
    let (d, df) = sequential(&http, &direct, PROVIDER_KEY, "cheap", &prompts, args.requests, bound).await;
    let (p, pf) = sequential(&http, &via, CLIENT_KEY, "fake-cheap", &prompts, args.requests, bound).await;
    let (a, af) = sequential(&http, &via, CLIENT_KEY, "auto", &prompts, args.requests, bound).await;
    let direct_s = summarise("provider directly", d, df);
    let proxy_s = summarise("serve, named model (proxy only)", p, pf);
    let auto_s = summarise("serve, auto (routed)", a, af);

    // 2. Throughput at `concurrency` in flight.
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + bound;
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (http, via, prompts, next, failed) = (http.clone(), via.clone(), prompts.clone(), next.clone(), failed.clone());
        let n = args.requests;
        tasks.push(tokio::spawn(async move {
            let mut ms = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n || Instant::now() > deadline {
                    return ms;
                }
                match one(&http, &via, CLIENT_KEY, "auto", &prompts[i % prompts.len()]).await {
                    Ok(t) => ms.push(t),
                    Err(e) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        eprintln!("serve_load: {e}");
                    }
                }
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.map_err(|e| e.to_string())?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let done = all.len();
    let throughput = summarise(&format!("serve, auto, {} in flight", args.concurrency), all, failed.load(Ordering::SeqCst));
    let rps = done as f64 / elapsed;
    drop(_child);

    // 3. Many streams open at once, against a provider that drips each answer.
    let (_drip_child, addr) = start_serve(&fake, dir.path(), true, args.embedding_model.as_deref())?;
    let via = format!("http://{addr}/v1/chat/completions");
    let open = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.streams {
        let (http, via, open, peak) = (http.clone(), via.clone(), open.clone(), peak.clone());
        let prompt = format!("Stream number {i}: say hello in five short words please");
        tasks.push(tokio::spawn(async move {
            let req = http
                .post(&via)
                .bearer_auth(CLIENT_KEY)
                .timeout(bound)
                .json(&json!({"model": "auto", "stream": true, "messages": [{"role": "user", "content": prompt}]}));
            let resp = req.send().await.map_err(|e| e.to_string())?;
            if !resp.status().is_success() {
                return Err(format!("HTTP {}", resp.status()));
            }
            let now_open = open.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now_open, Ordering::SeqCst);
            let mut body = resp.bytes_stream();
            let mut text = String::new();
            let mut result = Ok(());
            while let Some(b) = body.next().await {
                match b {
                    Ok(b) => text.push_str(&String::from_utf8_lossy(&b)),
                    Err(e) => {
                        result = Err(e.to_string());
                        break;
                    }
                }
            }
            open.fetch_sub(1, Ordering::SeqCst);
            result?;
            let content: String = text
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .filter(|d| *d != "[DONE]")
                .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_string))
                .collect();
            if !text.ends_with("data: [DONE]\n\n") || content != format!("echo: {prompt}") {
                return Err(format!("incomplete stream: {content:?}"));
            }
            Ok(started.elapsed().as_secs_f64())
        }));
    }
    let (mut ok, mut errors, mut last) = (0, Vec::new(), 0.0f64);
    for t in tasks {
        match t.await.map_err(|e| e.to_string())? {
            Ok(s) => {
                ok += 1;
                last = last.max(s);
            }
            Err(e) => errors.push(e),
        }
    }
    for e in errors.iter().take(5) {
        eprintln!("serve_load: stream failed: {e}");
    }

    let overhead = |s: &Series| json!({"p50_ms": s.p50_ms - direct_s.p50_ms, "p99_ms": s.p99_ms - direct_s.p99_ms});
    Ok(json!({
        "latency": [direct_s, proxy_s, auto_s],
        "overhead_vs_direct": {"proxy": overhead(&proxy_s), "auto": overhead(&auto_s)},
        "throughput": {"series": throughput, "requests_per_s": rps, "concurrency": args.concurrency},
        "streams": {"requested": args.streams, "ok": ok, "failed": errors.len(), "peak_open": peak.load(Ordering::SeqCst), "seconds": last},
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "prompts": prompts.len(),
    }))
}

fn main() {
    let args = Args::parse();
    let json_out = args.json;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    match rt.block_on(run(args)) {
        Ok(v) if json_out => println!("{v}"),
        Ok(v) => {
            println!("latency, one request at a time ({} built-in exemplar prompts, cycled):", v["prompts"]);
            println!("  {:<36} {:>6} {:>8} {:>8} {:>8} {:>8}", "", "n", "p50 ms", "p90 ms", "p99 ms", "failed");
            for s in v["latency"].as_array().into_iter().flatten() {
                println!(
                    "  {:<36} {:>6} {:>8.2} {:>8.2} {:>8.2} {:>8}",
                    s["name"].as_str().unwrap_or(""),
                    s["requests"],
                    s["p50_ms"].as_f64().unwrap_or(f64::NAN),
                    s["p90_ms"].as_f64().unwrap_or(f64::NAN),
                    s["p99_ms"].as_f64().unwrap_or(f64::NAN),
                    s["failed"]
                );
            }
            let o = &v["overhead_vs_direct"];
            println!(
                "added by serve: proxy only p50 {:+.2} ms, p99 {:+.2} ms; with routing p50 {:+.2} ms, p99 {:+.2} ms",
                o["proxy"]["p50_ms"].as_f64().unwrap_or(f64::NAN),
                o["proxy"]["p99_ms"].as_f64().unwrap_or(f64::NAN),
                o["auto"]["p50_ms"].as_f64().unwrap_or(f64::NAN),
                o["auto"]["p99_ms"].as_f64().unwrap_or(f64::NAN)
            );
            let t = &v["throughput"];
            println!(
                "throughput: {:.1} requests/s with {} in flight (p50 {:.2} ms, p99 {:.2} ms, {} failed)",
                t["requests_per_s"].as_f64().unwrap_or(f64::NAN),
                t["concurrency"],
                t["series"]["p50_ms"].as_f64().unwrap_or(f64::NAN),
                t["series"]["p99_ms"].as_f64().unwrap_or(f64::NAN),
                t["series"]["failed"]
            );
            let s = &v["streams"];
            println!(
                "streams: {} of {} complete, {} failed, {} open at once at the peak, all done in {:.1} s",
                s["ok"],
                s["requested"],
                s["failed"],
                s["peak_open"],
                s["seconds"].as_f64().unwrap_or(f64::NAN)
            );
            println!("({} cores, shared by the client, the server and the fake provider)", v["cores"]);
        }
        Err(e) => {
            eprintln!("serve_load: {e}");
            std::process::exit(1);
        }
    }
}
