//! The agent-session replay: synthetic agent sessions, replayed through three ways of routing
//! them, with what each costs, how often it switches model and the quality it is predicted to
//! deliver.
//!
//! A session is a task (a prompt from the caller's list, so tasks of mixed difficulty) worked on
//! by an agent: a system prompt with tool definitions (1,000 to 3,000 tokens), then 2 to 250
//! steps (log-uniform, as public SWE-bench agent runs spread), each an assistant tool call and
//! the tool's output (30 to 1,500 tokens, log-uniform), as a `tool` message or, in a share of
//! sessions, as a user message (`Observation: ...`, as ReAct loops send it). Between steps a few
//! seconds pass, and now and then a pause longer than a provider keeps its cache.
//!
//! The strategies, all on one [`Router`]:
//! - **per-request**: [`Router::route_chat`] on every step, as semroute routed before sessions
//!   (the last user message decides; the whole prompt at the full input price);
//! - **sticky**: the session's first step routed by [`Router::route_session`], and that model
//!   kept to the end;
//! - **cache-aware**: [`Router::route_session`] on every step.
//!
//! Every strategy is billed by the same simulated provider cache: a step served by the model of
//! the previous step, within that model's cache lifetime, reads the previous step's prompt from
//! the cache (at least the provider's minimum); providers that bill cache writes (Anthropic, with
//! `cache_prompt` on) write the rest. Quality is the router's predicted quality *of the task* for
//! the model that served each step (from [`Router::assess`] on the task), so a step routed on a
//! tool result is judged by the task it serves.

use std::time::{Duration, Instant, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};

use crate::chat::{ChatRequest, Usage};
use crate::error::{Error, Result};
use crate::policy::Constraints;
use crate::router::Router;

/// What [`replay`] generates and how.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReplaySettings {
    /// Sessions (default 60).
    pub sessions: usize,
    /// Seed of the generator (default 42).
    pub seed: u64,
    /// Most steps in a session (default 250; the fewest is 2).
    pub max_steps: u32,
    /// Share of sessions whose tool results come back as user messages (default 0.5).
    pub react_share: f64,
    /// Chance that the wait before a step is longer than a cache lives: 6 to 20 minutes
    /// (default 0.02).
    pub pause_chance: f64,
    /// The constraints every step is routed under (default: the router's own).
    pub constraints: Constraints,
}

impl Default for ReplaySettings {
    fn default() -> Self {
        ReplaySettings { sessions: 60, seed: 42, max_steps: 250, react_share: 0.5, pause_chance: 0.02, constraints: Constraints::default() }
    }
}

/// One strategy's totals over the replay.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct StrategyReport {
    /// `per-request`, `sticky` or `cache-aware`.
    pub strategy: String,
    /// USD billed over every step of every session.
    pub cost_usd: f64,
    /// Steps served by another model than the step before.
    pub switches: usize,
    /// Mean over steps of the task's predicted quality on the model that served the step.
    pub predicted_quality: f64,
    /// Share of prompt tokens read from a cache.
    pub cached_share: f64,
    /// Mean time to route one step, in milliseconds (sticky: its first step only).
    pub routing_ms: f64,
    /// Cumulative USD after each step, in replay order (for the plot).
    pub cumulative_usd: Vec<f64>,
}

/// What [`replay`] measured.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ReplayReport {
    /// Sessions replayed.
    pub sessions: usize,
    /// Steps in all.
    pub steps: usize,
    /// The longest session's steps.
    pub longest: u32,
    /// Prompt tokens of the largest step.
    pub largest_prompt_tokens: u64,
    /// Per strategy, in the order per-request, sticky, cache-aware.
    pub strategies: Vec<StrategyReport>,
    /// Seconds for the whole replay.
    pub seconds: f64,
}

/// One generated step: the messages it adds and its answer length.
struct Step {
    messages: Vec<Value>,
    output_tokens: u64,
    /// Seconds since the step before.
    gap_secs: u64,
}

struct Session {
    task: usize,
    system: String,
    steps: Vec<Step>,
}

const WORDS: &[&str] = &[
    "compiling",
    "running",
    "test",
    "passed",
    "failed",
    "warning",
    "unused",
    "variable",
    "src/lib.rs",
    "src/main.rs",
    "error[E0308]",
    "mismatched",
    "types",
    "expected",
    "found",
    "fn",
    "let",
    "mut",
    "impl",
    "struct",
    "return",
    "Result",
    "Ok",
    "Err",
    "line",
    "col",
    "at",
    "in",
    "module",
    "crate",
    "finished",
    "release",
    "target",
    "debug",
    "assert_eq!",
    "left",
    "right",
    "panicked",
    "thread",
    "main",
    "note",
    "help",
    "--> ",
    "|",
    "12",
    "34",
    "56",
    "78",
    "90",
    "0.42s",
    "ok",
    "ignored",
    "measured",
    "filtered",
    "out",
];

fn line(rng: &mut StdRng, words: usize) -> String {
    (0..words).map(|_| WORDS[rng.random_range(0..WORDS.len())]).collect::<Vec<_>>().join(" ")
}

fn log_uniform(rng: &mut StdRng, lo: f64, hi: f64) -> f64 {
    (lo.ln() + rng.random::<f64>() * (hi.ln() - lo.ln())).exp()
}

fn generate(tasks: usize, s: &ReplaySettings) -> Vec<Session> {
    let mut rng = StdRng::seed_from_u64(s.seed);
    (0..s.sessions)
        .map(|_| {
            let task = rng.random_range(0..tasks);
            let tools = rng.random_range(20..70);
            let system = format!(
                "You are a coding agent working in a repository. Think, then call exactly one tool per turn. Tools:{}",
                (0..tools)
                    .map(|i| format!(
                        "\n{{\"name\": \"tool_{i}\", \"description\": \"{}\", \"parameters\": {{\"type\": \"object\", \"properties\": {{\"path\": {{\"type\": \"string\"}}}}}}}}",
                        line(&mut rng, 8)
                    ))
                    .collect::<String>()
            );
            let n = log_uniform(&mut rng, 2.0, f64::from(s.max_steps.max(2))).round() as u32;
            let react = rng.random::<f64>() < s.react_share;
            let steps = (0..n)
                .map(|i| {
                    let call = format!("I will run the next check. tool_{}(\"{}\")", rng.random_range(0..tools), line(&mut rng, 3));
                    let lines = log_uniform(&mut rng, 3.0, 150.0).round() as usize;
                    let out: Vec<String> = (0..lines).map(|_| line(&mut rng, 9)).collect();
                    let out = out.join("\n");
                    let mut messages = vec![json!({"role": "assistant", "content": call})];
                    messages.push(if react {
                        json!({"role": "user", "content": format!("Observation: {out}")})
                    } else {
                        json!({"role": "tool", "tool_call_id": format!("call-{i}"), "content": out})
                    });
                    let gap_secs = if rng.random::<f64>() < s.pause_chance { rng.random_range(360..1200) } else { rng.random_range(2..40) };
                    Step { messages, output_tokens: rng.random_range(60..400), gap_secs }
                })
                .collect();
            Session { task, system, steps }
        })
        .collect()
}

/// One strategy's simulated provider cache (in the session being replayed) and its tallies over
/// the whole replay.
#[derive(Default)]
struct Tally {
    model: Option<String>,
    cached_prompt: u64,
    last_ms: u64,
    cost: f64,
    switches: usize,
    quality: f64,
    prompt_tokens: u64,
    cached_tokens: u64,
    routing: Duration,
    routed: usize,
    cumulative: Vec<f64>,
}

impl Tally {
    /// A new session: nothing is cached and no model is in use.
    fn start_session(&mut self) {
        self.model = None;
        self.cached_prompt = 0;
    }

    /// Bills one step served by `model`.
    fn bill(&mut self, router: &Router, model: &str, input: u64, output: u64, now_ms: u64, quality: f64) {
        let prices = router.prices();
        let price = prices.get(model).expect("routed models are priced");
        let min = price.cache_min_tokens();
        let alive = self.model.as_deref() == Some(model) && now_ms.saturating_sub(self.last_ms) <= price.cache_ttl().as_millis() as u64;
        let cached = if alive && self.cached_prompt >= min && input >= min { self.cached_prompt.min(input) } else { 0 };
        let written = if price.cache_write_per_mtok.is_some() && input >= min { input - cached } else { 0 };
        let usage = Usage { cached_input_tokens: cached, cache_write_tokens: written, ..Usage::new(input, output) };
        if self.model.as_deref().is_some_and(|m| m != model) {
            self.switches += 1;
        }
        self.cost += price.cost_of(&usage);
        self.cumulative.push(self.cost);
        self.quality += quality;
        self.prompt_tokens += input;
        self.cached_tokens += cached;
        self.model = Some(model.to_string());
        self.cached_prompt = input;
        self.last_ms = now_ms;
    }

    fn routed(&mut self, took: Duration) {
        self.routing += took;
        self.routed += 1;
    }
}

/// Answer tokens of a session's first call, the task alone.
const FIRST_ANSWER_TOKENS: u64 = 200;

/// Replays `settings.sessions` generated sessions over `tasks` through `router` (see the module
/// docs). The router's session store keeps the replay's sessions under names of their own.
///
/// ```no_run
/// use semroute::eval::{replay, ReplaySettings};
/// use semroute::Router;
///
/// let router = Router::builder().build()?;
/// let tasks = vec!["Fix the failing unit test in the parser.".to_string()];
/// let report = replay(&router, &tasks, &ReplaySettings::default())?;
/// for s in &report.strategies {
///     println!("{}: ${:.2}, {} switches", s.strategy, s.cost_usd, s.switches);
/// }
/// # Ok::<(), semroute::Error>(())
/// ```
pub fn replay(router: &Router, tasks: &[String], settings: &ReplaySettings) -> Result<ReplayReport> {
    let started = Instant::now();
    if tasks.is_empty() {
        return Err(Error::Config("the replay needs at least one task".into()));
    }
    if settings.sessions == 0 || settings.max_steps < 2 {
        return Err(Error::Config("the replay needs at least one session of at least two steps".into()));
    }
    for (name, v) in [("react_share", settings.react_share), ("pause_chance", settings.pause_chance)] {
        if !(0.0..=1.0).contains(&v) {
            return Err(Error::Config(format!("{name} must be within [0, 1], got {v}")));
        }
    }
    let sessions = generate(tasks.len(), settings);
    let c = &settings.constraints;
    // per-request, sticky, cache-aware
    let mut tally: [Tally; 3] = Default::default();
    let (mut steps, mut longest, mut largest) = (0usize, 0u32, 0u64);
    let origin = SystemTime::now();
    // Session names of this run only: a second replay on the same router starts afresh.
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    for (i, session) in sessions.iter().enumerate() {
        let task = &tasks[session.task];
        // The task's predicted quality per model: what every strategy is judged by.
        let truth = router.assess(task)?;
        let quality = |m: &str| truth.predictions().per_model.get(m).map_or(0.0, |p| p.quality);
        let name = format!("replay-{run}-{}-{i}", settings.seed);
        let mut messages = vec![json!({"role": "system", "content": session.system}), json!({"role": "user", "content": task})];
        tally.iter_mut().for_each(Tally::start_session);
        let mut sticky: Option<String> = None;
        let mut clock_ms: u64 = 0;
        longest = longest.max(session.steps.len() as u32);
        for step in std::iter::once(None).chain(session.steps.iter().map(Some)) {
            // The last step's answer and tool result join the conversation (the first call is
            // the task alone).
            let output = step.map_or(FIRST_ANSWER_TOKENS, |s| s.output_tokens);
            if let Some(s) = step {
                messages.extend(s.messages.iter().cloned());
                clock_ms += s.gap_secs * 1000;
            }
            let now = origin + Duration::from_millis(clock_ms);
            let chat = ChatRequest::from_json(json!({ "messages": messages }))?;
            steps += 1;

            let t = Instant::now();
            let d = router.route_chat(&chat, c)?;
            tally[0].routed(t.elapsed());
            // The router's own count of the conversation bills every strategy.
            let input = d.input_tokens;
            largest = largest.max(input);
            tally[0].bill(router, &d.model, input, output, clock_ms, quality(&d.model));

            let t = Instant::now();
            let d = router.route_session_at(&chat, Some(&name), c, now)?;
            let took = t.elapsed();
            tally[2].routed(took);
            tally[2].bill(router, &d.model, input, output, clock_ms, quality(&d.model));

            // Sticky keeps the session's first choice (the same first decision as cache-aware).
            let model = sticky.get_or_insert_with(|| {
                tally[1].routed(took);
                d.model.clone()
            });
            tally[1].bill(router, model, input, output, clock_ms, quality(model));
        }
    }
    let strategies = ["per-request", "sticky", "cache-aware"]
        .iter()
        .zip(tally)
        .map(|(name, t)| StrategyReport {
            strategy: (*name).to_string(),
            cost_usd: t.cost,
            switches: t.switches,
            predicted_quality: t.quality / steps.max(1) as f64,
            cached_share: t.cached_tokens as f64 / t.prompt_tokens.max(1) as f64,
            routing_ms: t.routing.as_secs_f64() * 1e3 / t.routed.max(1) as f64,
            cumulative_usd: t.cumulative,
        })
        .collect();
    Ok(ReplayReport {
        sessions: sessions.len(),
        steps,
        longest,
        largest_prompt_tokens: largest,
        strategies,
        seconds: started.elapsed().as_secs_f64(),
    })
}
