//! An OpenAI-compatible routing server: point any agent framework's base URL here.
//!
//! ```text
//! cargo run --release --example serve -- --providers providers.toml [--listen 127.0.0.1:8080] \
//!     [--exemplars DIR] [--prices FILE] [--client-keys FILE | --no-auth]
//! ```
//! - `POST /v1/chat/completions` with `"model": "auto"` (or `"auto:0.8"`, a quality bar) routes the
//!   last user message, counting the whole conversation's tokens, and forwards the request to the
//!   chosen model in its own protocol (OpenAI-compatible or Anthropic messages, translated both
//!   ways). The answer is OpenAI-shaped, whole or streamed (`"stream": true`, passed through chunk
//!   by chunk). A concrete model name from the providers file is served as asked, unrouted.
//! - Each answer says why: `x-semroute-*` headers (chosen model, predicted quality, expected and
//!   actual cost, failover) and a `semroute` object in the body (in the usage chunk of a stream
//!   that asked for `stream_options.include_usage`).
//! - If the chosen provider times out, rate-limits or fails (5xx, connection) before the first
//!   byte, the request goes to the next cheapest model that clears the bar.
//! - `GET /v1/models` lists `auto` and the models served; `GET /metrics` is Prometheus text
//!   (it needs a client key too, unless `--public-metrics`).
//! - Clients send `Authorization: Bearer <key>` (the scheme in any case, or `x-api-key`) with a
//!   key of the `--client-keys` file (one per line), compared in constant time. Provider keys
//!   stay in the server's environment (the variables the providers file names) and are never
//!   logged; prompts are logged only with `--log-prompts`.
//! - Every answer's real tokens and cost are appended to the usage log (`--usage-log`, JSONL).
//! - `POST /v1/feedback {"request_id": ..., "quality": 0..1}` teaches the router how well the
//!   model that answered did. Request ids are 128 random bits, and only the client key that made
//!   a request can give feedback on it. Learned in memory, and with `--learn-log` synced there
//!   before the reply and replayed at start (that log keeps the prompt text: replay embeds it).
//!   `POST /admin/reload` or SIGHUP re-reads exemplars and prices without dropping a request.
//! - A request head must arrive within `--header-timeout-secs`; on SIGTERM or SIGINT the server
//!   stops accepting, and exits when its requests are done or `--shutdown-secs` have passed.

mod metrics;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Parser;
use futures_util::StreamExt;
use metrics::{Failure, Metrics, Mode, Outcome, Served};
use semroute::chat::{ChatRequest, Usage};
use semroute::feedback::Feedback;
use semroute::pricing::TokenCounter;
use semroute::provider::{ApiKey, CallError, ChatStream, Client, Endpoint, Providers, RetryPolicy};
use semroute::{Constraints, Error, ExemplarSet, PriceTable, RouteDecision, Router};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::{debug, info, warn};

#[derive(Parser, Debug)]
#[command(about = "OpenAI-compatible server that routes each request to the cheapest good-enough model")]
struct Args {
    /// Providers file: per model its protocol, base URL, model id and key variable.
    #[arg(long)]
    providers: PathBuf,
    /// Address to listen on (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// An exemplar JSONL file, or a folder of them (default: the built-in exemplars).
    #[arg(long, value_name = "DIR")]
    exemplars: Option<PathBuf>,
    /// Price table TOML (default: the built-in price table).
    #[arg(long, value_name = "FILE")]
    prices: Option<PathBuf>,
    /// The installed embedding model to use (a folder under <home>/models).
    #[arg(long, value_name = "NAME")]
    embedding_model: Option<String>,
    /// Default quality bar for `auto` (a request's `auto:<bar>` overrides it).
    #[arg(long, value_name = "X")]
    quality_bar: Option<f64>,
    /// File of client keys, one per line (`#` starts a comment).
    #[arg(long, value_name = "FILE")]
    client_keys: Option<PathBuf>,
    /// Serve without client keys (only sensible on loopback).
    #[arg(long, conflicts_with = "client_keys")]
    no_auth: bool,
    /// Where each answer's real tokens and cost are appended (JSONL).
    #[arg(long, default_value = "semroute-usage.jsonl")]
    usage_log: PathBuf,
    /// Log prompt text (off by default) and put it in the usage log.
    #[arg(long)]
    log_prompts: bool,
    /// Serve `/metrics` without a client key (by default it needs one, like every endpoint).
    #[arg(long)]
    public_metrics: bool,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    max_body_bytes: usize,
    /// The router's durable learning log (JSONL): feedback posted to `/v1/feedback` is synced
    /// here before it is acknowledged, and replayed at start. It keeps the prompt text (the last
    /// user message) of each request given feedback, since replay embeds it again. Without it,
    /// feedback is learned in memory only and lost at restart.
    #[arg(long, value_name = "FILE")]
    learn_log: Option<PathBuf>,
    /// Answered requests remembered (in memory only) so feedback can name them by request id.
    #[arg(long, default_value_t = 10_000)]
    remember: usize,
    /// Attempts per model for 429 / 5xx before failing over to the next model.
    #[arg(long, default_value_t = 1)]
    max_attempts: u32,
    /// Seconds a client has to send a request's head (line and headers); a connection that
    /// sends less is closed. Also how long an idle kept-alive connection stays open.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    header_timeout_secs: f64,
    /// On SIGTERM or SIGINT: seconds requests in flight get to finish before the server exits anyway.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    shutdown_secs: f64,
}

struct App {
    router: Router,
    providers: Providers,
    /// Provider key per served model.
    keys: HashMap<String, ApiKey>,
    /// Models with an endpoint, a price and a key, sorted.
    served: Vec<String>,
    client: Client,
    /// SHA-256 of each client key (compared in constant time; hashing fixes the length).
    client_keys: Vec<[u8; 32]>,
    auth: bool,
    public_metrics: bool,
    metrics: Metrics,
    usage_log: std::sync::mpsc::Sender<Value>,
    log_prompts: bool,
    tokens: TokenCounter,
    /// Recent answers by request id: what feedback on them teaches (prompts stay in memory).
    recent: std::sync::Mutex<lru::LruCache<String, Answered>>,
    /// Where `/admin/reload` and SIGHUP re-read exemplars and prices from.
    exemplars_path: Option<PathBuf>,
    prices_path: Option<PathBuf>,
}

/// Who made a request: the SHA-256 digest of its client key (the key itself is never kept);
/// `None` with `--no-auth`.
type Caller = Option<[u8; 32]>;

/// One answered request, kept so that feedback on it can be learned.
#[derive(Clone)]
struct Answered {
    /// Only this client may give feedback on it.
    caller: Caller,
    prompt: String,
    model: String,
    output_tokens: u64,
    cost_usd: f64,
}

/// An OpenAI-shaped error response.
fn error(status: StatusCode, kind: &str, code: &str, message: impl Into<String>) -> Response {
    let body = json!({"error": {"message": message.into(), "type": kind, "param": null, "code": code}});
    (status, [("content-type", "application/json")], body.to_string()).into_response()
}

/// The error for a request body that could not be read: 413 past `--max-body-bytes`.
fn body_rejected(rej: &BytesRejection) -> Response {
    let status = rej.status();
    let code = if status == StatusCode::PAYLOAD_TOO_LARGE { "request_too_large" } else { "bad_body" };
    error(status, "invalid_request_error", code, rej.body_text())
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// A request id no client can guess: 128 bits from the operating system's CSPRNG.
fn new_request_id() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(format!("sr-{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

/// The client key a request carries: `Authorization: <scheme> <key>` with the scheme `Bearer` in
/// any case (RFC 7235), else `x-api-key`.
fn given_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| {
        let (scheme, key) = v.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then_some(key)
    });
    bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok())).map(str::trim)
}

impl App {
    /// Who sent a request, if it may be served: `Some(None)` with `--no-auth`, `None` without a
    /// valid client key.
    fn caller(&self, headers: &HeaderMap) -> Option<Caller> {
        if !self.auth {
            return Some(None);
        }
        let digest: [u8; 32] = Sha256::digest(given_key(headers)?.as_bytes()).into();
        // Every key is compared, whatever matched, so the time says nothing about which.
        let mut ok = subtle::Choice::from(0);
        for k in &self.client_keys {
            ok |= k.ct_eq(&digest);
        }
        bool::from(ok).then_some(Some(digest))
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        self.caller(headers).is_some()
    }

    fn cost(&self, model: &str, usage: Usage) -> f64 {
        self.router.prices().get(model).map_or(0.0, |p| p.cost_usd(usage.input_tokens, usage.output_tokens))
    }

    fn strongest_cost(&self, usage: Usage) -> f64 {
        self.cost(self.router.prices().strongest(), usage)
    }
}

/// What was decided for one request, carried into its response and its usage record.
#[derive(Clone)]
struct Plan {
    request_id: String,
    /// Who asked (the only client whose feedback on this answer counts).
    caller: Caller,
    decision: Option<Arc<RouteDecision>>,
    quality_bar: Option<f64>,
    /// Models to try, in order.
    order: Vec<String>,
    prompt: Option<String>,
    /// The last user message, kept in memory for feedback (never logged unless `--log-prompts`).
    text: Option<String>,
    started: Instant,
    stream: bool,
}

impl Plan {
    fn candidate(&self, model: &str) -> Option<&semroute::Candidate> {
        self.decision.as_ref()?.candidates.iter().find(|c| c.model == model)
    }
}

/// Records one finished (or abandoned) answer: metrics, the usage log, the log line, and (if it
/// went well) the memory feedback is learned from.
struct Finish<'a> {
    app: &'a App,
    plan: &'a Plan,
    model: &'a str,
    failovers: &'a [(String, &'static str)],
}

impl Finish<'_> {
    /// `usage`: the tokens billed; `usage_reported`: whether the provider said so (else counted).
    fn record(&self, outcome: &'static str, usage: Usage, usage_reported: bool) {
        let app = self.app;
        let cost = app.cost(self.model, usage);
        let strongest = app.strongest_cost(usage);
        let latency = self.plan.started.elapsed();
        app.metrics.requests.get_or_create(&Outcome { outcome }).inc();
        app.metrics.spent_usd.inc_by(cost);
        app.metrics.strongest_usd.inc_by(strongest);
        app.metrics
            .request_seconds
            .get_or_create(&Mode { stream: if self.plan.stream { "true" } else { "false" } })
            .observe(latency.as_secs_f64());
        let cand = self.plan.candidate(self.model);
        let mut rec = json!({
            "ts": now(),
            "request_id": self.plan.request_id,
            "routed": self.plan.decision.is_some(),
            "model": self.model,
            "quality_bar": self.plan.quality_bar,
            "predicted_quality": cand.and_then(|c| c.predicted_quality),
            "expected_cost_usd": cand.map(|c| c.expected_cost_usd),
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "usage_reported": usage_reported,
            "cost_usd": cost,
            "strongest_model": app.router.prices().strongest(),
            "strongest_cost_usd": strongest,
            "failovers": self.failovers.iter().map(|(m, k)| json!({"model": m, "error": k})).collect::<Vec<_>>(),
            "outcome": outcome,
            "stream": self.plan.stream,
            "latency_ms": latency.as_secs_f64() * 1e3,
            "neighbours": self.plan.decision.as_ref().map(|d| d.neighbours.iter().map(|n| json!({"id": n.id, "similarity": n.similarity})).collect::<Vec<_>>()),
        });
        if let Some(p) = &self.plan.prompt {
            rec["prompt"] = p.clone().into();
        }
        // The writer thread only stops at shutdown; a record sent after that is lost on purpose.
        let _ = app.usage_log.send(rec);
        if let (Some(text), "ok") = (&self.plan.text, outcome) {
            let answered = Answered {
                caller: self.plan.caller,
                prompt: text.clone(),
                model: self.model.to_string(),
                output_tokens: usage.output_tokens,
                cost_usd: cost,
            };
            app.recent.lock().unwrap_or_else(|p| p.into_inner()).put(self.plan.request_id.clone(), answered);
        }
        info!(
            request_id = %self.plan.request_id,
            model = self.model,
            routed = self.plan.decision.is_some(),
            outcome,
            cost_usd = cost,
            input_tokens = usage.input_tokens,
            output_tokens = usage.output_tokens,
            failovers = self.failovers.len(),
            latency_ms = latency.as_millis() as u64,
            "answered"
        );
    }
}

fn decision_headers(plan: &Plan, model: &str, failovers: &[(String, &'static str)]) -> Vec<(HeaderName, HeaderValue)> {
    let mut h: Vec<(&'static str, String)> = vec![
        ("x-request-id", plan.request_id.clone()),
        ("x-semroute-model", model.to_string()),
        ("x-semroute-routed", plan.decision.is_some().to_string()),
    ];
    if let Some(c) = plan.candidate(model) {
        if let Some(q) = c.predicted_quality {
            h.push(("x-semroute-predicted-quality", format!("{q:.4}")));
        }
        h.push(("x-semroute-expected-cost-usd", format!("{:.8}", c.expected_cost_usd)));
    }
    if let Some(bar) = plan.quality_bar {
        h.push(("x-semroute-quality-bar", format!("{bar}")));
    }
    if let Some(d) = &plan.decision {
        h.push(("x-semroute-strongest-cost-usd", format!("{:.8}", d.strongest_cost_usd)));
        if d.fallback {
            h.push(("x-semroute-fallback", "true".into()));
        }
    }
    if !failovers.is_empty() {
        h.push(("x-semroute-failover", failovers.iter().map(|(m, k)| format!("{m}:{k}")).collect::<Vec<_>>().join(",")));
    }
    h.into_iter().filter_map(|(k, v)| Some((HeaderName::from_static(k), HeaderValue::from_str(&v).ok()?))).collect()
}

/// The `semroute` object added to answers.
fn explanation(app: &App, plan: &Plan, model: &str, failovers: &[(String, &'static str)], usage: Option<Usage>) -> Value {
    let cand = plan.candidate(model);
    json!({
        "request_id": plan.request_id,
        "model": model,
        "routed": plan.decision.is_some(),
        "quality_bar": plan.quality_bar,
        "predicted_quality": cand.and_then(|c| c.predicted_quality),
        "expected_cost_usd": cand.map(|c| c.expected_cost_usd),
        "actual_cost_usd": usage.map(|u| app.cost(model, u)),
        "strongest_model": plan.decision.as_ref().map(|d| d.strongest_model.clone()),
        "strongest_cost_usd": usage.map(|u| app.strongest_cost(u)),
        "reason": plan.decision.as_ref().map(|d| d.reason.clone()),
        "fallback": plan.decision.as_ref().map(|d| d.fallback),
        "failover": failovers.iter().map(|(m, k)| json!({"model": m, "error": k})).collect::<Vec<_>>(),
    })
}

async fn chat_completions(State(app): State<Arc<App>>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let started = Instant::now();
    let client_error = |status, code: &str, msg: String| {
        app.metrics.requests.get_or_create(&Outcome { outcome: "client_error" }).inc();
        error(status, "invalid_request_error", code, msg)
    };
    let Some(caller) = app.caller(&headers) else {
        app.metrics.requests.get_or_create(&Outcome { outcome: "unauthorized" }).inc();
        return error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid_api_key",
            "missing or invalid client key (send `Authorization: Bearer <key>`)",
        );
    };
    let bytes = match body {
        Ok(b) => b,
        Err(rej) => {
            app.metrics.requests.get_or_create(&Outcome { outcome: "client_error" }).inc();
            return body_rejected(&rej);
        }
    };
    let json: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => return client_error(StatusCode::BAD_REQUEST, "invalid_json", format!("the body is not valid JSON: {e}")),
    };
    let chat = match ChatRequest::from_json(json) {
        Ok(c) => c,
        Err(e) => return client_error(StatusCode::BAD_REQUEST, "invalid_request", e.to_string()),
    };
    let Some(asked) = chat.model().map(str::to_string) else {
        return client_error(StatusCode::BAD_REQUEST, "missing_model", "field `model` is missing (use \"auto\" to route)".into());
    };
    let request_id = match new_request_id() {
        Ok(id) => id,
        Err(e) => {
            app.metrics.requests.get_or_create(&Outcome { outcome: "server_error" }).inc();
            return error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "no_randomness", format!("cannot make a request id: {e}"));
        }
    };
    let prompt = if app.log_prompts { chat.last_user_text() } else { None };
    if let Some(p) = &prompt {
        info!(request_id = %request_id, prompt = %p, "prompt");
    }
    let text = chat.last_user_text();
    let mut plan =
        Plan { request_id, caller, decision: None, quality_bar: None, order: Vec::new(), prompt, text, started, stream: chat.stream() };

    if asked == "auto" || asked.starts_with("auto:") {
        let bar = match asked.strip_prefix("auto:").map(str::parse::<f64>) {
            None => None,
            Some(Ok(b)) if (0.0..=1.0).contains(&b) => Some(b),
            _ => {
                return client_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_model",
                    format!("`{asked}`: the quality bar after `auto:` must be a number in [0, 1]"),
                )
            }
        };
        let mut constraints = Constraints::default().allow_models(app.served.iter().cloned());
        constraints.quality_bar = bar;
        let router = app.router.clone();
        let chat2 = chat.clone();
        let routed = tokio::task::spawn_blocking(move || router.route_chat(&chat2, &constraints)).await;
        app.metrics.routing_seconds.observe(started.elapsed().as_secs_f64());
        let decision = match routed {
            Ok(Ok(d)) => d,
            Ok(Err(e @ (Error::InvalidPrompt(_) | Error::InvalidRequest(_)))) => {
                return client_error(StatusCode::BAD_REQUEST, "invalid_request", e.to_string())
            }
            Ok(Err(e @ Error::NoEligibleModel(_))) => {
                return client_error(StatusCode::UNPROCESSABLE_ENTITY, "no_eligible_model", e.to_string())
            }
            Ok(Err(e)) => {
                app.metrics.requests.get_or_create(&Outcome { outcome: "server_error" }).inc();
                return error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "routing_failed", e.to_string());
            }
            Err(e) => {
                app.metrics.requests.get_or_create(&Outcome { outcome: "server_error" }).inc();
                return error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "routing_failed", format!("the routing task failed: {e}"));
            }
        };
        plan.quality_bar = Some(decision.quality_bar);
        plan.order = failover_order(&decision);
        plan.decision = Some(Arc::new(decision));
    } else if app.keys.contains_key(&asked) {
        plan.order = vec![asked];
    } else {
        let known = std::iter::once("auto").chain(app.served.iter().map(String::as_str)).collect::<Vec<_>>().join(", ");
        app.metrics.requests.get_or_create(&Outcome { outcome: "client_error" }).inc();
        return error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            format!("unknown model `{asked}`; this server serves: {known}"),
        );
    }

    let mut failovers: Vec<(String, &'static str)> = Vec::new();
    for model in plan.order.clone() {
        let ep: &Endpoint = app.providers.get(&model).expect("served models have endpoints");
        let key = &app.keys[&model];
        let failed = if plan.stream {
            match start_stream(&app, ep, key, &chat).await {
                Ok((first, rest)) => return stream_response(app.clone(), plan, model, failovers, chat, first, rest),
                Err(e) => e,
            }
        } else {
            match app.client.chat(ep, key, &chat).await {
                Ok(answer) => {
                    // Counted locally only when the provider reports no usage.
                    let usage = answer.usage.unwrap_or_else(|| count_answer(&app, &chat, &answer.body));
                    Finish { app: &app, plan: &plan, model: &model, failovers: &failovers }.record("ok", usage, answer.usage.is_some());
                    app.metrics.decisions.get_or_create(&Served { model: model.clone(), routed: routed_label(&plan) }).inc();
                    let mut body = answer.body;
                    body["model"] = model.clone().into();
                    body["semroute"] = explanation(&app, &plan, &model, &failovers, Some(usage));
                    let mut resp = (StatusCode::OK, [("content-type", "application/json")], body.to_string()).into_response();
                    let h = resp.headers_mut();
                    for (k, v) in decision_headers(&plan, &model, &failovers) {
                        h.insert(k, v);
                    }
                    if let Ok(v) = HeaderValue::from_str(&format!("{:.8}", app.cost(&model, usage))) {
                        h.insert("x-semroute-actual-cost-usd", v);
                    }
                    return resp;
                }
                Err(e) => e,
            }
        };
        app.metrics.upstream_failures.get_or_create(&Failure { model: model.clone(), kind: failed.kind() }).inc();
        warn!(request_id = %plan.request_id, model = %model, error = failed.kind(), detail = %failed, "provider call failed");
        if let CallError::Request(m) = &failed {
            return client_error(StatusCode::BAD_REQUEST, "unsupported_for_model", format!("model `{model}`: {m}"));
        }
        if !(failed.is_transient() || matches!(failed, CallError::Stream(_))) {
            app.metrics.requests.get_or_create(&Outcome { outcome: "upstream_error" }).inc();
            return error(StatusCode::BAD_GATEWAY, "upstream_error", failed.kind(), format!("model `{model}` failed: {failed}"));
        }
        failovers.push((model, failed.kind()));
        if failovers.len() < plan.order.len() {
            app.metrics.failovers.inc();
        }
    }
    app.metrics.requests.get_or_create(&Outcome { outcome: "upstream_error" }).inc();
    let tried = failovers.iter().map(|(m, k)| format!("{m}: {k}")).collect::<Vec<_>>().join("; ");
    error(StatusCode::BAD_GATEWAY, "upstream_error", "all_models_failed", format!("every eligible model failed ({tried})"))
}

fn routed_label(plan: &Plan) -> &'static str {
    if plan.decision.is_some() {
        "true"
    } else {
        "false"
    }
}

/// The chosen model, then the other models that clear the bar, cheapest first; after a
/// fallback decision (no exemplar close enough), the other eligible models by predicted quality.
fn failover_order(d: &RouteDecision) -> Vec<String> {
    let eligible = |c: &&semroute::Candidate| c.excluded.is_none() && c.model != d.model;
    let mut order = vec![d.model.clone()];
    let clearing: Vec<String> = d.candidates.iter().filter(eligible).filter(|c| c.clears_bar).map(|c| c.model.clone()).collect();
    if clearing.is_empty() || d.fallback {
        let mut rest: Vec<&semroute::Candidate> = d.candidates.iter().filter(eligible).collect();
        rest.sort_by(|a, b| b.predicted_quality.unwrap_or(-1.0).total_cmp(&a.predicted_quality.unwrap_or(-1.0)).then(b.tier.cmp(&a.tier)));
        order.extend(rest.into_iter().map(|c| c.model.clone()));
    } else {
        order.extend(clearing);
    }
    order
}

/// Tokens of an answer counted locally, for a provider that reports none.
fn count_answer(app: &App, chat: &ChatRequest, body: &Value) -> Usage {
    let text = body["choices"][0]["message"]["content"].as_str().unwrap_or_default();
    count_text(app, chat, text)
}

fn count_text(app: &App, chat: &ChatRequest, answer: &str) -> Usage {
    let counter = &app.tokens;
    let input: u64 = chat.texts().map(|(_, t)| counter.count(&t) + semroute::router::CHAT_TOKENS_PER_MESSAGE).sum();
    Usage { input_tokens: input, output_tokens: counter.count(answer) }
}

/// Opens a stream and waits for its first chunk, so that a provider failing before its first
/// byte can still be failed over.
async fn start_stream(app: &App, ep: &Endpoint, key: &ApiKey, chat: &ChatRequest) -> Result<(Value, ChatStream), CallError> {
    let mut s = app.client.chat_stream(ep, key, chat).await?;
    match s.next().await {
        Some(Ok(first)) => Ok((first, s)),
        Some(Err(e)) => Err(e),
        None => Err(CallError::Truncated("the stream ended before its first chunk".into())),
    }
}

/// Tracks a stream as it passes through, and records it when it ends or the client leaves.
struct StreamTally {
    app: Arc<App>,
    plan: Plan,
    model: String,
    failovers: Vec<(String, &'static str)>,
    chat: ChatRequest,
    usage: Option<Usage>,
    /// The answer's text not yet counted (at most [`TALLY_BLOCK`] bytes): it is counted in
    /// blocks as it passes, so memory stays bounded and little is left to count at the end.
    text: String,
    /// Tokens of the text already counted.
    counted: u64,
    outcome: Option<&'static str>,
}

/// Answer text counted at once while a stream passes (tiktoken on 64 KiB takes a few ms).
const TALLY_BLOCK: usize = 64 << 10;

impl StreamTally {
    fn add(&mut self, text: &str) {
        // Counting is only needed when the provider reports no usage; until its last chunk that
        // is unknown, so the text is kept, but never more than one block of it.
        self.text.push_str(text);
        if self.text.len() >= TALLY_BLOCK {
            self.counted += self.app.tokens.count(&self.text);
            self.text.clear();
        }
    }
}

impl Drop for StreamTally {
    fn drop(&mut self) {
        // At most one block is left to count, whether the stream ended or the client left.
        let usage = self.usage.unwrap_or_else(|| {
            let u = count_text(&self.app, &self.chat, &self.text);
            Usage { output_tokens: u.output_tokens + self.counted, ..u }
        });
        let outcome = self.outcome.unwrap_or("client_closed");
        Finish { app: &self.app, plan: &self.plan, model: &self.model, failovers: &self.failovers }.record(
            outcome,
            usage,
            self.usage.is_some(),
        );
    }
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

fn stream_response(
    app: Arc<App>,
    plan: Plan,
    model: String,
    failovers: Vec<(String, &'static str)>,
    chat: ChatRequest,
    first: Value,
    rest: ChatStream,
) -> Response {
    app.metrics.decisions.get_or_create(&Served { model: model.clone(), routed: routed_label(&plan) }).inc();
    let headers = decision_headers(&plan, &model, &failovers);
    let include_usage = chat.include_usage();
    let tally = StreamTally { app, plan, model, failovers, chat, usage: None, text: String::new(), counted: 0, outcome: None };
    let chunks = futures_util::stream::once(async move { Ok(first) }).chain(rest);
    struct St {
        chunks: std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Value, CallError>> + Send>>,
        tally: StreamTally,
        include_usage: bool,
        done: bool,
    }
    let st = St { chunks: Box::pin(chunks), tally, include_usage, done: false };
    let body = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            match st.chunks.next().await {
                None => {
                    st.done = true;
                    st.tally.outcome = Some("ok");
                    return Some((Ok::<Bytes, Infallible>(Bytes::from_static(b"data: [DONE]\n\n")), st));
                }
                Some(Err(e)) => {
                    st.done = true;
                    st.tally.outcome = Some("upstream_error");
                    let t = &st.tally;
                    t.app.metrics.upstream_failures.get_or_create(&Failure { model: t.model.clone(), kind: e.kind() }).inc();
                    warn!(request_id = %t.plan.request_id, model = %t.model, error = e.kind(), detail = %e, "stream broke off");
                    let err =
                        json!({"error": {"message": format!("model `{}`: {e}", t.model), "type": "upstream_error", "code": e.kind()}});
                    return Some((Ok(sse(&err)), st));
                }
                Some(Ok(mut chunk)) => {
                    if let Some(u) = Usage::of(&chunk) {
                        st.tally.usage = Some(u);
                    }
                    if st.tally.usage.is_none() {
                        if let Some(t) = chunk["choices"][0]["delta"]["content"].as_str() {
                            st.tally.add(t);
                        }
                    }
                    let usage_only = chunk["choices"].as_array().is_some_and(Vec::is_empty);
                    if usage_only && !st.include_usage {
                        continue;
                    }
                    if !st.include_usage {
                        if let Some(o) = chunk.as_object_mut() {
                            o.remove("usage");
                        }
                    }
                    // The client library hands on JSON objects only (anything else is `malformed`).
                    if let Some(o) = chunk.as_object_mut() {
                        o.insert("model".into(), st.tally.model.clone().into());
                        if usage_only {
                            let t = &st.tally;
                            o.insert("semroute".into(), explanation(&t.app, &t.plan, &t.model, &t.failovers, t.usage));
                        }
                    }
                    return Some((Ok(sse(&chunk)), st));
                }
            }
        }
    });
    let mut resp = Response::new(Body::from_stream(body));
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static("text/event-stream"));
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    for (k, v) in headers {
        h.insert(k, v);
    }
    resp
}

/// `POST /v1/feedback` `{"request_id": "...", "quality": 0.0..1.0}` (or `"good": true|false`):
/// the router learns how well the model that answered did there.
async fn feedback(State(app): State<Arc<App>>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let Some(caller) = app.caller(&headers) else {
        return error(StatusCode::UNAUTHORIZED, "authentication_error", "invalid_api_key", "missing or invalid client key");
    };
    let bad = |code: &str, msg: String| error(StatusCode::BAD_REQUEST, "invalid_request_error", code, msg);
    let bytes = match body {
        Ok(b) => b,
        Err(rej) => return body_rejected(&rej),
    };
    let v: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => return bad("invalid_json", format!("the body is not valid JSON: {e}")),
    };
    let Some(id) = v.get("request_id").and_then(Value::as_str) else {
        return bad("invalid_request", "field `request_id` is missing or not a string".into());
    };
    let quality = match (v.get("quality"), v.get("good")) {
        (Some(q), None) => match q.as_f64() {
            Some(q) => q,
            None => return bad("invalid_request", "field `quality` must be a number in [0, 1]".into()),
        },
        (None, Some(Value::Bool(g))) => f64::from(u8::from(*g)),
        _ => return bad("invalid_request", "give exactly one of `quality` (0..1) and `good` (true/false)".into()),
    };
    // Another client's request is answered as if it were unknown: nothing says it exists.
    let remembered = app.recent.lock().unwrap_or_else(|p| p.into_inner()).peek(id).filter(|a| a.caller == caller).cloned();
    let Some(answered) = remembered else {
        return error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "unknown_request",
            format!("no answered request {id:?} is remembered"),
        );
    };
    let fb = Feedback {
        id: id.to_string(),
        prompt: answered.prompt,
        model: answered.model.clone(),
        quality,
        output_tokens: u32::try_from(answered.output_tokens).unwrap_or(u32::MAX),
        cost_usd: Some(answered.cost_usd),
        category: None,
        language: None,
    };
    let router = app.router.clone();
    match tokio::task::spawn_blocking(move || router.learn(&fb)).await {
        Ok(Ok(())) => {
            info!(request_id = id, model = %answered.model, quality, "learned");
            axum::Json(json!({"learned": true, "request_id": id, "model": answered.model, "quality": quality})).into_response()
        }
        Ok(Err(e @ (Error::InvalidRequest(_) | Error::Exemplar { .. }))) => {
            let code = if e.to_string().contains("duplicate id") { "already_learned" } else { "invalid_request" };
            let status = if code == "already_learned" { StatusCode::CONFLICT } else { StatusCode::BAD_REQUEST };
            error(status, "invalid_request_error", code, e.to_string())
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "learn_failed", e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "learn_failed", e.to_string()),
    }
}

/// Re-reads exemplars and prices (the files given at start, else the built-in ones) and swaps
/// them in while requests keep being served; on any error the old ones stay.
fn reload(app: &App) -> Result<(usize, usize), String> {
    let exemplars = match &app.exemplars_path {
        Some(p) if p.is_file() => ExemplarSet::load_file(p),
        Some(p) => ExemplarSet::load_dir(p),
        None => ExemplarSet::builtin(),
    }
    .map_err(|e| e.to_string())?;
    let prices = match &app.prices_path {
        Some(p) => PriceTable::from_file(p),
        None => PriceTable::builtin(),
    }
    .map_err(|e| e.to_string())?;
    for model in &app.served {
        prices.require(model, "the providers file (a served model)").map_err(|e| e.to_string())?;
    }
    let counts = (exemplars.len(), prices.len());
    app.router.reload(exemplars, prices).map_err(|e| e.to_string())?;
    Ok(counts)
}

async fn admin_reload(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if !app.authorized(&headers) {
        return error(StatusCode::UNAUTHORIZED, "authentication_error", "invalid_api_key", "missing or invalid client key");
    }
    let a = app.clone();
    match tokio::task::spawn_blocking(move || reload(&a)).await {
        Ok(Ok((exemplars, models))) => {
            info!(exemplars, models, "reloaded");
            axum::Json(json!({"reloaded": true, "exemplars": exemplars, "models": models})).into_response()
        }
        Ok(Err(e)) => {
            warn!("reload refused, the old exemplars and prices stay: {e}");
            error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request_error",
                "reload_failed",
                format!("{e} (the old exemplars and prices stay in force)"),
            )
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "reload_failed", e.to_string()),
    }
}

async fn list_models(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if !app.authorized(&headers) {
        return error(StatusCode::UNAUTHORIZED, "authentication_error", "invalid_api_key", "missing or invalid client key");
    }
    let mut data = vec![json!({"id": "auto", "object": "model", "created": 0, "owned_by": "semroute"})];
    let prices = app.router.prices();
    for name in &app.served {
        let p = prices.get(name).expect("served models are priced");
        data.push(json!({"id": name, "object": "model", "created": 0, "owned_by": p.provider,
            "semroute": {"tier": p.tier, "input_per_mtok": p.input_per_mtok, "output_per_mtok": p.output_per_mtok,
                         "context_window": p.context_window, "jurisdiction": p.jurisdiction}}));
    }
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn metrics_text(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if !app.public_metrics && !app.authorized(&headers) {
        return error(StatusCode::UNAUTHORIZED, "authentication_error", "invalid_api_key", "missing or invalid client key");
    }
    ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], app.metrics.render()).into_response()
}

/// Reads client keys: one per line, `#` comments and blank lines skipped.
fn read_client_keys(path: &Path) -> Result<Vec<[u8; 32]>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let key = line.split('#').next().unwrap_or("").trim();
        if key.is_empty() {
            continue;
        }
        if key.chars().any(char::is_whitespace) || key.len() < 16 {
            return Err(format!("{}:{}: a client key must be one word of at least 16 characters", path.display(), i + 1));
        }
        keys.push(Sha256::digest(key.as_bytes()).into());
    }
    if keys.is_empty() {
        return Err(format!("{}: holds no client key", path.display()));
    }
    Ok(keys)
}

/// Appends usage records from a channel, syncing after each burst.
fn usage_writer(path: PathBuf) -> Result<(std::sync::mpsc::Sender<Value>, std::thread::JoinHandle<()>), String> {
    use std::io::Write;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| format!("cannot open the usage log {}: {e}", path.display()))?;
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    let handle = std::thread::spawn(move || {
        let mut out = std::io::BufWriter::new(file);
        while let Ok(first) = rx.recv() {
            let mut write = |v: Value| {
                if let Err(e) = writeln!(out, "{v}") {
                    tracing::error!("usage log {}: {e}", path.display());
                }
            };
            write(first);
            while let Ok(more) = rx.try_recv() {
                write(more);
            }
            if let Err(e) = out.flush().and_then(|()| out.get_ref().sync_data()) {
                tracing::error!("usage log {}: {e}", path.display());
            }
        }
    });
    Ok((tx, handle))
}

fn build_router(args: &Args) -> Result<Router, Error> {
    let mut b = Router::builder();
    if let Some(name) = &args.embedding_model {
        b = b.embedder(Arc::new(semroute::FastEmbedder::load_installed(name)?));
    }
    if let Some(dir) = &args.exemplars {
        b = b.exemplars(if dir.is_file() { ExemplarSet::load_file(dir)? } else { ExemplarSet::load_dir(dir)? });
    }
    if let Some(file) = &args.prices {
        b = b.prices(PriceTable::from_file(file)?);
    }
    if let Some(x) = args.quality_bar {
        b = b.quality_bar(x);
    }
    if let Some(log) = &args.learn_log {
        b = b.feedback_log(log);
    }
    b.build()
}

async fn run(args: Args) -> Result<(), String> {
    let header_timeout = secs("--header-timeout-secs", args.header_timeout_secs)?;
    if header_timeout.is_zero() {
        return Err("--header-timeout-secs must be more than 0".into());
    }
    let deadline = secs("--shutdown-secs", args.shutdown_secs)?;
    let client_keys = match (&args.client_keys, args.no_auth) {
        (Some(path), _) => read_client_keys(path)?,
        (None, true) => Vec::new(),
        (None, false) => return Err("give --client-keys FILE (one key per line), or --no-auth to serve without client keys".into()),
    };
    let providers = Providers::from_file(&args.providers).map_err(|e| e.to_string())?;
    let router = build_router(&args).map_err(|e| e.to_string())?;
    providers.check_prices(&router.prices()).map_err(|e| e.to_string())?;
    let mut keys = HashMap::new();
    for name in providers.names() {
        let ep = providers.get(name).expect("listed");
        match ApiKey::from_env(&ep.api_key_env) {
            Ok(k) => {
                keys.insert(name.to_string(), k);
            }
            Err(_) => warn!("model `{name}` is not served: its key variable {} is not set", ep.api_key_env),
        }
    }
    if keys.is_empty() {
        return Err(format!("no model can be served: none of the key variables of {} is set", args.providers.display()));
    }
    let mut served: Vec<String> = keys.keys().cloned().collect();
    served.sort();
    let client =
        Client::new(RetryPolicy { max_attempts: args.max_attempts.max(1), ..RetryPolicy::default() }).map_err(|e| e.to_string())?;
    let (usage_log, writer) = usage_writer(args.usage_log.clone())?;
    let app = Arc::new(App {
        router,
        providers,
        keys,
        served: served.clone(),
        client,
        auth: !args.no_auth,
        client_keys,
        metrics: Metrics::new(),
        usage_log,
        public_metrics: args.public_metrics,
        log_prompts: args.log_prompts,
        tokens: TokenCounter::cl100k().map_err(|e| e.to_string())?,
        recent: std::sync::Mutex::new(lru::LruCache::new(std::num::NonZeroUsize::new(args.remember.max(1)).expect("at least 1"))),
        exemplars_path: args.exemplars.clone(),
        prices_path: args.prices.clone(),
    });
    // SIGHUP reloads exemplars and prices, like `POST /admin/reload`.
    let hup = app.clone();
    let hup_task = tokio::spawn(async move {
        let Ok(mut signal) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            return;
        };
        while signal.recv().await.is_some() {
            let a = hup.clone();
            match tokio::task::spawn_blocking(move || reload(&a)).await {
                Ok(Ok((exemplars, models))) => info!(exemplars, models, "reloaded on SIGHUP"),
                Ok(Err(e)) => {
                    warn!("reload on SIGHUP refused, the old exemplars and prices stay: {e}")
                }
                Err(e) => warn!("reload on SIGHUP failed: {e}"),
            }
        }
    });
    let routes = axum::Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(list_models))
        .route("/v1/feedback", post(feedback))
        .route("/admin/reload", post(admin_reload))
        .route("/metrics", get(metrics_text))
        .route("/health", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(args.max_body_bytes))
        .with_state(app.clone());
    let listener = tokio::net::TcpListener::bind(args.listen).await.map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let stop = stop_signal()?;
    match &args.learn_log {
        Some(log) => info!(
            "feedback is learned and synced to {}; that log keeps the prompt text (last user message) of every request given \
             feedback, because a restart embeds it again to replay what was learned",
            log.display()
        ),
        None => info!("no --learn-log: feedback is learned in memory only (lost at restart), and no prompt text is written for it"),
    }
    eprintln!(
        "semroute serve: listening on http://{addr} ({} models: {}; client keys: {})",
        served.len(),
        served.join(", "),
        if app.auth { app.client_keys.len().to_string() } else { "none, --no-auth".into() }
    );
    let finished = serve_until(listener, routes, header_timeout, stop, deadline).await;
    hup_task.abort();
    let _ = hup_task.await;
    // Close the channel (the last sender is in `app`) and let the writer drain, when every
    // connection has ended and nothing else holds the state (a connection's task lets go of it
    // just after the connection ends).
    for _ in 0..100 {
        if !finished || Arc::strong_count(&app) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if finished && Arc::strong_count(&app) == 1 {
        drop(app);
        let _ = writer.join();
    }
    Ok(())
}

/// A flag's seconds as a duration (finite, not negative).
fn secs(flag: &str, s: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(s).map_err(|_| format!("{flag}: {s} is not a number of seconds"))
}

/// Resolves on the first SIGTERM or SIGINT.
fn stop_signal() -> Result<impl std::future::Future<Output = ()>, String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("cannot handle SIGINT: {e}"))?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Serves HTTP/1 connections until `stop`, each given `header_timeout` to send a request head
/// (and that long idle between requests); then stops accepting and waits at most `deadline` for
/// the requests in flight. Whether every connection ended in time.
async fn serve_until(
    listener: tokio::net::TcpListener,
    routes: axum::Router,
    header_timeout: Duration,
    stop: impl std::future::Future<Output = ()>,
    deadline: Duration,
) -> bool {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(header_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(routes.clone())));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                // Slow or broken clients (a header that took too long, a reset): not the server's fault.
                debug!("connection ended: {e}");
            }
        });
    }
    drop(listener);
    drop(routes);
    info!("shutting down: no new connections; waiting up to {deadline:?} for requests in flight");
    match tokio::time::timeout(deadline, graceful.shutdown()).await {
        Ok(()) => true,
        Err(_) => {
            warn!("requests still in flight after {deadline:?} (--shutdown-secs): exiting anyway");
            false
        }
    }
}

/// glibc's allocator raises its mmap threshold each time a large block is freed, so later
/// multi-megabyte answer buffers come from its per-thread heaps and stay there after use: under
/// a soak with 40 MiB provider answers, resident memory grew about 90 MB a minute (to 1,065 MB in
/// 10 minutes), and stayed under 300 MB with the threshold fixed at 1 MiB and two arenas. The
/// environment (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_ARENA_MAX`) still wins when set.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets allocator parameters; it is called before any thread starts.
        unsafe {
            if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
            }
            if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
                libc::mallopt(libc::M_ARENA_MAX, 2);
            }
        }
    }
}

fn main() {
    tune_allocator();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("SEMROUTE_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    let result = rt.block_on(run(args));
    // Connections still open after the shutdown deadline are dropped here, not waited for.
    rt.shutdown_timeout(Duration::from_secs(1));
    if let Err(e) = result {
        eprintln!("serve: {e}");
        std::process::exit(1);
    }
}
