//! Agent sessions through `Router::route_session`, with the real embedding model and the built-in
//! exemplars and prices.

mod common;

use semroute::chat::ChatRequest;
use semroute::session::SessionSettings;
use semroute::{Constraints, Router};
use serde_json::{json, Value};

const SYSTEM_HEAD: &str = "You are a coding agent. Think, then call one tool. Tools:";

/// An agent's system prompt with its tool definitions: over the 1,024 tokens providers cache.
fn system() -> String {
    let tools: String = (0..24)
        .map(|i| format!("\n{{\"name\": \"tool_{i}\", \"description\": \"Runs step {i} of the build in the workspace and returns its output\", \"parameters\": {{\"type\": \"object\", \"properties\": {{\"path\": {{\"type\": \"string\"}}}}}}}}"))
        .collect();
    format!("{SYSTEM_HEAD}{tools}")
}
const HARD: &str = "Refactor this multithreaded Java job scheduler so it cannot deadlock, and prove that \
                    your lock ordering is deadlock-free under every interleaving of the worker threads.";

fn chat(messages: &[Value]) -> ChatRequest {
    ChatRequest::from_json(json!({ "messages": messages })).unwrap()
}

/// An agent turn: the assistant calls a tool and the tool answers (`react`: as a user message, the
/// way ReAct loops send observations).
fn step(messages: &mut Vec<Value>, i: usize, react: bool) {
    messages.push(json!({"role": "assistant", "content": format!("Calling run(\"cargo test\") for step {i}.")}));
    let out = format!("test result: ok. {i} passed; 0 failed\n{}", "compiling semroute v0.1.0\n".repeat(40));
    if react {
        messages.push(json!({"role": "user", "content": format!("Observation: {out}")}));
    } else {
        messages.push(json!({"role": "tool", "tool_call_id": format!("call-{i}"), "content": out}));
    }
}

#[test]
fn a_session_routes_its_task_once_and_keeps_its_model_and_cache() {
    let router = common::router();
    let c = Constraints::default();
    let mut messages = vec![json!({"role": "system", "content": system()}), json!({"role": "user", "content": HARD})];
    let first = router.route_session(&chat(&messages), Some("keeps-its-model"), &c).unwrap();
    let s = first.session.clone().unwrap();
    assert_eq!((s.step, s.switched, s.task_reused, s.cached_tokens), (1, false, false, 0));
    assert!(first.reason.contains("first step of the session"), "{}", first.reason);
    assert!(first.candidates.iter().find(|c| c.model == first.model).unwrap().clears_bar, "{}", first.reason);

    let mut previous_input = first.input_tokens;
    for i in 1..=4 {
        step(&mut messages, i, i % 2 == 0);
        let d = router.route_session(&chat(&messages), Some("keeps-its-model"), &c).unwrap();
        let s = d.session.clone().unwrap();
        assert_eq!(s.step, i as u32 + 1);
        assert_eq!(d.model, first.model, "step {}: {}", s.step, d.reason);
        assert!(!s.switched);
        assert!(s.task_reused, "the task's predictions are reused, not recomputed");
        assert!(previous_input >= 1024);
        assert_eq!(s.cached_tokens, previous_input, "the last step's prompt is cached");
        assert!(d.reason.contains("stays on"), "{}", d.reason);
        // The conversation's tokens, counted only for what is new, match a full count.
        assert_eq!(d.input_tokens, router.route_chat(&chat(&messages), &c).unwrap().input_tokens);
        let chosen = d.candidates.iter().find(|c| c.model == d.model).unwrap();
        assert_eq!(chosen.cached_tokens, Some(previous_input));
        // Cached tokens are billed at the cached price: this step costs less than it would afresh.
        let fresh = router.prices().get(&d.model).unwrap().cost_usd(d.input_tokens, chosen.predicted_output_tokens);
        assert!(d.expected_cost_usd < fresh, "{} against {fresh}", d.expected_cost_usd);
        // A tool result (as a user message in ReAct form) does not make the hard task look easy.
        assert!(d.predicted_quality <= first.predicted_quality + 1e-6);
        previous_input = d.input_tokens;
    }
    // Past the provider's cache lifetime (300 s for these models) nothing is cached any more.
    step(&mut messages, 5, false);
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(400);
    let d = router.route_session_at(&chat(&messages), Some("keeps-its-model"), &c, later).unwrap();
    assert_eq!(d.session.as_ref().unwrap().cached_tokens, 0);
    assert!(d.reason.ends_with(&format!("no cache is alive with the session's previous model {}", first.model)), "{}", d.reason);
    assert!(!d.reason.contains("first step"), "{}", d.reason);
}

#[test]
fn a_session_is_named_or_found_from_its_leading_messages() {
    let router = common::router();
    let c = Constraints::default();
    let task = "Summarise the design document in the attached notes for the weekly update.";
    let mut messages = vec![json!({"role": "system", "content": "derived-key test"}), json!({"role": "user", "content": task})];
    let a = router.route_session(&chat(&messages), None, &c).unwrap().session.unwrap();
    step(&mut messages, 1, false);
    let b = router.route_session(&chat(&messages), None, &c).unwrap().session.unwrap();
    assert_eq!((a.id.clone(), b.step), (b.id.clone(), 2), "the same leading messages continue the session");
    let named = router.route_session(&chat(&messages), Some("derived-key-named"), &c).unwrap().session.unwrap();
    assert_ne!(named.id, a.id);
    assert_eq!(named.step, 1);
    // A session name is bounded and printable.
    for bad in [String::new(), "x".repeat(257), "a\nb".to_string()] {
        let e = router.route_session(&chat(&messages), Some(&bad), &c).unwrap_err();
        assert!(e.to_string().contains("session name"), "{e}");
    }
    assert!(router.session_served("not-hex", "kimi-k2.6").unwrap_err().to_string().contains("32 hex digits"));
}

#[test]
fn the_model_that_really_served_holds_the_cache() {
    let router = common::router();
    let c = Constraints::default();
    let mut messages = vec![json!({"role": "system", "content": system()}), json!({"role": "user", "content": HARD})];
    let first = router.route_session(&chat(&messages), Some("failed-over"), &c).unwrap();
    let other = first.failover.first().expect("a failover model").clone();
    // The routed model failed; the next one in the failover order answered.
    router.session_served(&first.session.unwrap().id, &other).unwrap();
    step(&mut messages, 1, false);
    let d = router.route_session(&chat(&messages), Some("failed-over"), &c).unwrap();
    let s = d.session.unwrap();
    assert_eq!(s.previous_model.as_deref(), Some(other.as_str()));
    let held = d.candidates.iter().find(|c| c.model == other).unwrap();
    assert_eq!(held.cached_tokens, Some(first.input_tokens));
    assert!(d.candidates.iter().filter(|c| c.model != other).all(|c| c.cached_tokens == Some(0)));
}

#[test]
fn an_idle_session_is_forgotten_and_a_rewritten_conversation_recounted() {
    let router = Router::builder()
        .embedder(common::embedder())
        .cache_dir(common::vector_cache())
        .sessions(SessionSettings::default().idle_secs(1))
        .build()
        .unwrap();
    let c = Constraints::default();
    let mut messages = vec![json!({"role": "user", "content": "Translate 'good morning' into French."})];
    router.route_session(&chat(&messages), Some("idle"), &c).unwrap();
    step(&mut messages, 1, false);
    assert_eq!(router.route_session(&chat(&messages), Some("idle"), &c).unwrap().session.unwrap().step, 2);
    // The agent rewrites its history (same number of messages, other text): counted afresh.
    let last = messages.len() - 1;
    messages[last] = json!({"role": "tool", "tool_call_id": "call-1", "content": "short"});
    let d = router.route_session(&chat(&messages), Some("idle"), &c).unwrap();
    assert_eq!(d.input_tokens, router.route_chat(&chat(&messages), &c).unwrap().input_tokens);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert_eq!(router.route_session(&chat(&messages), Some("idle"), &c).unwrap().session.unwrap().step, 1, "forgotten after idling");
    assert_eq!(router.sessions(), 1);
    // A name given to another task: the task is assessed afresh (the session goes on).
    let other = vec![json!({"role": "user", "content": HARD})];
    let d = router.route_session(&chat(&other), Some("idle"), &c).unwrap().session.unwrap();
    assert_eq!((d.step, d.task_reused), (2, false));
    let e = Router::builder().embedder(common::embedder()).sessions(SessionSettings::default().max_sessions(0)).build().unwrap_err();
    assert!(e.to_string().contains("max_sessions"), "{e}");
}

#[test]
fn a_harder_follow_up_raises_an_easy_session() {
    let router = common::router();
    let c = Constraints::default();
    let mut messages = vec![json!({"role": "user", "content": "What is the capital of Australia?"})];
    let easy = router.route_session(&chat(&messages), Some("follow-up"), &c).unwrap();
    messages.push(json!({"role": "assistant", "content": "Canberra."}));
    messages.push(json!({"role": "user", "content": HARD}));
    let d = router.route_session(&chat(&messages), Some("follow-up"), &c).unwrap();
    let hard_alone = router.route(HARD).unwrap();
    let q = |d: &semroute::RouteDecision, m: &str| d.candidates.iter().find(|c| c.model == m).and_then(|c| c.predicted_quality).unwrap();
    assert!(q(&d, &easy.model) <= q(&easy, &easy.model) + 1e-6, "a follow-up can only make the session harder");
    assert!(q(&d, &easy.model) < q(&easy, &easy.model), "this one did");
    assert_eq!(d.model, hard_alone.model, "{}", d.reason);
    assert!(d.session.unwrap().switched || easy.model == hard_alone.model);
    // With follow-ups turned off, the session stays as hard as its first turn.
    let tasks_only = Router::builder()
        .embedder(common::embedder())
        .cache_dir(common::vector_cache())
        .sessions(SessionSettings::default().follow_ups(false))
        .build()
        .unwrap();
    tasks_only.route_session(&chat(&messages[..1]), Some("follow-up"), &c).unwrap();
    let d = tasks_only.route_session(&chat(&messages), Some("follow-up"), &c).unwrap();
    assert!((q(&d, &easy.model) - q(&easy, &easy.model)).abs() < 1e-6, "kept as f32 between steps");
    assert_eq!(d.model, easy.model, "{}", d.reason);
}

#[test]
fn the_replay_bills_every_strategy_by_the_same_simulated_cache() {
    use semroute::eval::{replay, ReplaySettings};
    let router = common::router();
    let tasks = vec![HARD.to_string(), "Sort these words alphabetically: pear, apple, fig.".to_string()];
    let mut settings = ReplaySettings::default();
    settings.sessions = 3;
    settings.max_steps = 6;
    settings.seed = 5;
    let r = replay(&router, &tasks, &settings).unwrap();
    assert_eq!(r.sessions, 3);
    assert!(r.longest <= 6 && r.longest >= 2);
    let names: Vec<&str> = r.strategies.iter().map(|s| s.strategy.as_str()).collect();
    assert_eq!(names, ["per-request", "sticky", "cache-aware"]);
    for s in &r.strategies {
        assert_eq!(s.cumulative_usd.len(), r.steps, "{}", s.strategy);
        assert!(s.cumulative_usd.windows(2).all(|w| w[1] >= w[0]));
        assert!((s.cumulative_usd.last().unwrap() - s.cost_usd).abs() < 1e-9);
        assert!(s.cost_usd > 0.0 && (0.0..=1.0).contains(&s.predicted_quality) && (0.0..1.0).contains(&s.cached_share));
    }
    assert_eq!(r.strategies[1].switches, 0, "sticky never switches");
    // The same seed gives the same sessions and decisions.
    let again = replay(&router, &tasks, &settings).unwrap();
    assert_eq!(again.steps, r.steps);
    for (a, b) in again.strategies.iter().zip(&r.strategies) {
        assert_eq!((a.cost_usd, a.switches), (b.cost_usd, b.switches), "{}", a.strategy);
    }
    let mut bad = settings.clone();
    bad.react_share = 2.0;
    assert!(replay(&router, &tasks, &bad).unwrap_err().to_string().contains("react_share"));
    assert!(replay(&router, &[], &settings).is_err());
}
