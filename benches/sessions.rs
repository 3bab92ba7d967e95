//! Agent-session costs: `cargo bench --bench sessions`.
//!
//! - `session/bookkeeping`: what a session adds to a routed request: its key (a hash of the
//!   system prompt and the task), loading its state from the in-memory store and saving the next
//!   (`SessionKey::of`, `MemorySessions::load` and `save`), for an agent conversation with a
//!   2,000-token system prompt;
//! - `session/step`: a whole later step through `Router::route_session` (the task's predictions
//!   reused: no embedding; the new tool result's tokens counted), against `session/route_chat`,
//!   per-request routing of the same conversation (an embedding and a count of every token);
//! - printed once: the resident memory 100,000 idle sessions take, per session.

#[path = "common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use semroute::chat::ChatRequest;
use semroute::session::{MemorySessions, SessionKey, SessionStore};
use semroute::{Constraints, Router};
use serde_json::{json, Value};

fn system() -> String {
    let tools: String = (0..40)
        .map(|i| format!("\n{{\"name\": \"tool_{i}\", \"description\": \"Runs step {i} of the build in the workspace and returns its output\", \"parameters\": {{\"type\": \"object\", \"properties\": {{\"path\": {{\"type\": \"string\"}}}}}}}}"))
        .collect();
    format!("You are a coding agent. Think, then call one tool. Tools:{tools}")
}

fn conversation(steps: usize) -> Vec<Value> {
    let mut m = vec![
        json!({"role": "system", "content": system()}),
        json!({"role": "user", "content": "Make the flaky integration test in tests/net.rs deterministic."}),
    ];
    for i in 0..steps {
        m.push(json!({"role": "assistant", "content": format!("tool_3(\"cargo test --test net\") for step {i}")}));
        m.push(json!({"role": "tool", "tool_call_id": format!("c{i}"), "content": "test net::retries ... ok\ntest net::timeouts ... FAILED\n".repeat(20)}));
    }
    m
}

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

fn bench_sessions(c: &mut Criterion) {
    idle_memory();
    // The router's sessions in a store this benchmark can read.
    let shared = std::sync::Arc::new(MemorySessions::new(1000));
    let router = Router::builder().session_store(shared.clone()).build().expect("router (run `semroute setup` first)");
    let constraints = Constraints::default();
    let mut messages = conversation(10);
    let chat = ChatRequest::from_json(json!({ "messages": messages })).unwrap();
    // A session with a state to load: routed once; the state as the router keeps it.
    let first = router.route_session(&chat, None, &constraints).unwrap();
    let key = SessionKey::parse(&first.session.unwrap().id).unwrap();
    let state = shared.load(&key).unwrap().expect("the router kept the session");
    let store = MemorySessions::new(1000);

    let mut g = c.benchmark_group("session");
    g.measurement_time(Duration::from_secs(5)).sample_size(60);
    store.save(&key, &state).unwrap();
    g.bench_function("bookkeeping", |b| {
        b.iter(|| {
            let k = SessionKey::of(black_box(&chat), None).unwrap();
            let s = store.load(&k).unwrap().unwrap();
            store.save(&k, black_box(&s)).unwrap();
        })
    });
    // A later step: one more tool call and result each time, then back (so the state's count
    // stays valid: the conversation is the same length at every iteration).
    messages.push(json!({"role": "assistant", "content": "tool_3(\"cargo test --test net\") once more"}));
    messages.push(json!({"role": "tool", "tool_call_id": "last", "content": "test net::timeouts ... ok\n".repeat(20)}));
    let later = ChatRequest::from_json(json!({ "messages": messages })).unwrap();
    // Each iteration starts from the state after step 11 (put back into the store, outside the
    // timing), so each is step 12 again.
    let named = router.route_session(&chat, Some("bench-step"), &constraints).unwrap();
    let named = SessionKey::parse(&named.session.unwrap().id).unwrap();
    let after_11 = shared.load(&named).unwrap().unwrap();
    g.bench_function("step", |b| {
        b.iter_batched(
            || shared.save(&named, &after_11).unwrap(),
            |()| router.route_session(black_box(&later), Some("bench-step"), &constraints).unwrap(),
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("route_chat", |b| b.iter(|| router.route_chat(black_box(&later), &constraints).unwrap()));
    g.finish();

    let _ = state;
}

/// The resident memory of 100,000 idle sessions, measured in a process that has routed nothing
/// yet (so no freed memory is there to reuse), each with 16 models' predictions and a model
/// name like the router keeps.
fn idle_memory() {
    let task: Vec<Value> = (0..16)
        .map(|_| json!({"quality": 0.8, "output_tokens": 250.0, "support": 1.0, "effective_neighbours": 6.5, "cost_usd": null}))
        .collect();
    let state: semroute::session::SessionState = serde_json::from_value(json!({
        "model": "claude-sonnet-5-5", "cached_tokens": 12000, "cache_until_ms": 1, "last_input_tokens": 12000,
        "last_used_ms": 1, "steps": 7, "user_turns": 1, "tag": 99, "task": task, "task_check": 3, "unfamiliar": null,
        "unfamiliarity": 0.9, "counted_messages": 15, "counted_tokens": 12000, "counted_check": 5
    }))
    .expect("a session state");
    let many = MemorySessions::new(100_000);
    let keys: Vec<SessionKey> = (0..100_000u32)
        .map(|i| {
            SessionKey::of(&ChatRequest::from_json(json!({"messages": [{"role": "user", "content": format!("task {i}")}]})).unwrap(), None)
                .unwrap()
        })
        .collect();
    let before = rss_kib();
    for k in &keys {
        many.save(k, &state).unwrap();
    }
    if let (Some(a), Some(b)) = (before, rss_kib()) {
        println!(
            "100,000 idle sessions (16 models each): {} KiB resident, {:.0} bytes a session",
            b - a,
            (b - a) as f64 * 1024.0 / 100_000.0
        );
    }
    drop(many);
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = bench_sessions
}
criterion_main!(benches);
