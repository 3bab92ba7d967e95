//! `POST /v1/chat/completions`: route (or take the model named), call, fail over, answer whole
//! or streamed, and record the answer.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures_util::StreamExt;
use serde_json::Value;
use tracing::{info, warn};

use super::api::ApiError;
use super::auth::Caller;
use super::metrics::{Failure, Mode, Served};
use super::record::{Explained, Failover};
use super::{now, Answered, App};
use crate::chat::{ChatRequest, Usage};
use crate::decision::RouteDecision;
use crate::error::Error;
use crate::policy::Constraints;
use crate::provider::{ApiKey, CallError, ChatStream, Endpoint};

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
    /// The prompt for the logs (only when the server logs prompts).
    prompt: Option<String>,
    /// The last user message, kept in memory for feedback (never logged unless asked).
    text: Option<String>,
    started: Instant,
    stream: bool,
}

impl Plan {
    fn explained<'a>(&'a self, model: &'a str, failovers: &'a [Failover]) -> Explained<'a> {
        Explained { request_id: &self.request_id, decision: self.decision.as_deref(), quality_bar: self.quality_bar, model, failovers }
    }

    fn routed_label(&self) -> &'static str {
        if self.decision.is_some() {
            "true"
        } else {
            "false"
        }
    }
}

/// Records one finished (or abandoned) answer: metrics, the usage log, the log line, and (if it
/// went well) the memory feedback is learned from.
fn record(app: &App, plan: &Plan, model: &str, failovers: &[Failover], outcome: &'static str, usage: Usage, usage_reported: bool) {
    let cost = app.cost(model, usage);
    let strongest = app.strongest_cost(usage);
    let latency = plan.started.elapsed();
    app.metrics.outcome(outcome);
    app.metrics.spent_usd.inc_by(cost);
    app.metrics.strongest_usd.inc_by(strongest);
    app.metrics.tokens(model, usage);
    app.metrics.request_seconds.get_or_create(&Mode { stream: if plan.stream { "true" } else { "false" } }).observe(latency.as_secs_f64());
    let mut rec = plan.explained(model, failovers).record();
    rec.ts = now();
    rec.input_tokens = usage.input_tokens;
    rec.output_tokens = usage.output_tokens;
    rec.cached_input_tokens = usage.cached_input_tokens;
    rec.cache_write_tokens = usage.cache_write_tokens;
    rec.usage_reported = usage_reported;
    rec.cost_usd = cost;
    rec.strongest_model = app.router.prices().strongest().to_string();
    rec.strongest_cost_usd = strongest;
    rec.outcome = outcome.to_string();
    rec.stream = plan.stream;
    rec.latency_ms = latency.as_secs_f64() * 1e3;
    rec.prompt = plan.prompt.clone();
    app.usage_log.send(rec);
    let failed_over = plan.decision.as_ref().filter(|d| d.model != model).and_then(|d| d.session.as_ref());
    if let (Some(session), "ok") = (failed_over, outcome) {
        // After a failover the session holds this model's cache, not the routed model's.
        if let Err(e) = app.router.session_served(&session.id, model) {
            warn!(request_id = %plan.request_id, error = %e, "the session could not be updated");
        }
    }
    if let (Some(text), "ok") = (&plan.text, outcome) {
        let answered = Answered {
            caller: plan.caller,
            prompt: text.clone(),
            model: model.to_string(),
            output_tokens: usage.output_tokens,
            cost_usd: cost,
        };
        app.recent.lock().unwrap_or_else(|p| p.into_inner()).put(plan.request_id.clone(), answered);
    }
    info!(
        request_id = %plan.request_id,
        model,
        routed = plan.decision.is_some(),
        outcome,
        cost_usd = cost,
        input_tokens = usage.input_tokens,
        output_tokens = usage.output_tokens,
        failovers = failovers.len(),
        latency_ms = latency.as_millis() as u64,
        "answered"
    );
}

/// The handler.
pub(crate) async fn completions(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match answer(app.clone(), caller, &headers, body).await {
        Ok(r) => r,
        Err(e) => {
            let outcome = match e.status.as_u16() {
                401 => "unauthorized",
                400..=499 => "client_error",
                502 => "upstream_error",
                _ => "server_error",
            };
            app.metrics.outcome(outcome);
            e.into_response()
        }
    }
}

/// The header naming a request's agent session (else its leading messages identify it).
pub(crate) const SESSION_HEADER: &str = "x-semroute-session";

async fn answer(app: Arc<App>, caller: Caller, headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let started = Instant::now();
    let bytes = body.map_err(|rej| ApiError::body(&rej))?;
    let json: Value =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid("invalid_json", format!("the body is not valid JSON: {e}")))?;
    let chat = ChatRequest::from_json(json).map_err(|e| ApiError::invalid("invalid_request", e.to_string()))?;
    let Some(asked) = chat.model().map(str::to_string) else {
        return Err(ApiError::invalid("missing_model", "field `model` is missing (use \"auto\" to route)"));
    };
    let request_id = super::new_request_id().map_err(|e| ApiError::server("no_randomness", format!("cannot make a request id: {e}")))?;
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
                return Err(ApiError::invalid(
                    "invalid_model",
                    format!("`{asked}`: the quality bar after `auto:` must be a number in [0, 1]"),
                ))
            }
        };
        let mut constraints = Constraints::default().allow_models(app.served.iter().cloned());
        constraints.quality_bar = bar;
        let session = match headers.get(SESSION_HEADER).map(|v| v.to_str()) {
            None => None,
            Some(Ok(v)) => Some(v.to_string()),
            Some(Err(_)) => return Err(ApiError::invalid("invalid_session", format!("header `{SESSION_HEADER}` must be visible ASCII"))),
        };
        let router = app.router.clone();
        // A quick decision is made here; a slow one (a transformer, a shared store, a long
        // text) on a blocking thread, so that it holds up no other request.
        let routed = if router.is_quick(&chat) {
            Ok(router.route_session(&chat, session.as_deref(), &constraints))
        } else {
            let chat2 = chat.clone();
            tokio::task::spawn_blocking(move || router.route_session(&chat2, session.as_deref(), &constraints)).await
        };
        app.metrics.routing_seconds.observe(started.elapsed().as_secs_f64());
        let decision = match routed {
            Ok(Ok(d)) => d,
            Ok(Err(e @ (Error::InvalidPrompt(_) | Error::InvalidRequest(_)))) => {
                return Err(ApiError::invalid("invalid_request", e.to_string()))
            }
            Ok(Err(e @ Error::NoEligibleModel(_))) => {
                return Err(ApiError::invalid("no_eligible_model", e.to_string()).with_status(StatusCode::UNPROCESSABLE_ENTITY))
            }
            Ok(Err(e)) => return Err(ApiError::server("routing_failed", e.to_string())),
            Err(e) => return Err(ApiError::server("routing_failed", format!("the routing task failed: {e}"))),
        };
        plan.quality_bar = Some(decision.quality_bar);
        // What feedback on a session's step teaches about is its task.
        if decision.session.is_some() {
            plan.text = chat.first_user_text();
        }
        // The policy's own order: the chosen model, then where it would go without it.
        plan.order = std::iter::once(decision.model.clone()).chain(decision.failover.iter().cloned()).collect();
        plan.decision = Some(Arc::new(decision));
    } else if app.keys.contains_key(&asked) {
        plan.order = vec![asked];
    } else {
        let known = std::iter::once("auto").chain(app.served.iter().map(String::as_str)).collect::<Vec<_>>().join(", ");
        return Err(ApiError::invalid("model_not_found", format!("unknown model `{asked}`; this server serves: {known}"))
            .with_status(StatusCode::NOT_FOUND));
    }

    let mut failovers: Vec<Failover> = Vec::new();
    for model in plan.order.clone() {
        let (Some(ep), Some(key)) = (app.providers.get(&model), app.keys.get(&model)) else {
            // Routing is limited to served models; a reload cannot add one.
            continue;
        };
        let failed = if plan.stream {
            match start_stream(&app, ep, key, &chat).await {
                Ok((first, rest)) => return Ok(stream_response(app.clone(), plan, model, failovers, chat, first, rest)),
                Err(e) => e,
            }
        } else {
            match app.client.chat(ep, key, &chat).await {
                Ok(answer) => {
                    // Counted locally only when the provider reports no usage.
                    let usage = answer.usage.unwrap_or_else(|| count_answer(&app, &chat, &answer.body));
                    record(&app, &plan, &model, &failovers, "ok", usage, answer.usage.is_some());
                    app.metrics.decisions.get_or_create(&Served { model: model.clone(), routed: plan.routed_label() }).inc();
                    let explained = plan.explained(&model, &failovers);
                    let cost = app.cost(&model, usage);
                    let mut body = answer.body;
                    body["model"] = model.clone().into();
                    body["semroute"] = explained.body(Some((cost, app.strongest_cost(usage))));
                    let mut resp = (StatusCode::OK, [("content-type", "application/json")], body.to_string()).into_response();
                    let h = resp.headers_mut();
                    for (k, v) in explained.headers() {
                        h.insert(k, v);
                    }
                    if let Ok(v) = HeaderValue::from_str(&format!("{cost:.8}")) {
                        h.insert("x-semroute-actual-cost-usd", v);
                    }
                    return Ok(resp);
                }
                Err(e) => e,
            }
        };
        app.metrics.upstream_failures.get_or_create(&Failure { model: model.clone(), kind: failed.kind() }).inc();
        warn!(request_id = %plan.request_id, model = %model, error = failed.kind(), detail = %failed, "provider call failed");
        if let CallError::Request(m) = &failed {
            return Err(ApiError::invalid("unsupported_for_model", format!("model `{model}`: {m}")));
        }
        if !(failed.is_transient() || matches!(failed, CallError::Stream(_))) {
            return Err(upstream(failed.kind(), format!("model `{model}` failed: {failed}")));
        }
        failovers.push(Failover { model, error: failed.kind().to_string() });
        if failovers.len() < plan.order.len() {
            app.metrics.failovers.inc();
        }
    }
    let tried = failovers.iter().map(|f| format!("{}: {}", f.model, f.error)).collect::<Vec<_>>().join("; ");
    Err(upstream("all_models_failed", format!("every eligible model failed ({tried})")))
}

fn upstream(code: &str, message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_GATEWAY, "upstream_error", code, message)
}

/// Tokens of an answer counted locally, for a provider that reports none.
fn count_answer(app: &App, chat: &ChatRequest, body: &Value) -> Usage {
    let text = body["choices"][0]["message"]["content"].as_str().unwrap_or_default();
    count_text(app, chat, text)
}

fn count_text(app: &App, chat: &ChatRequest, answer: &str) -> Usage {
    let counter = &app.tokens;
    let input: u64 = chat.texts().map(|(_, t)| counter.count(&t) + crate::router::CHAT_TOKENS_PER_MESSAGE).sum();
    Usage::new(input, counter.count(answer))
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
    failovers: Vec<Failover>,
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
        record(&self.app, &self.plan, &self.model, &self.failovers, outcome, usage, self.usage.is_some());
    }
}

fn event(v: &Value) -> Event {
    Event::default().data(v.to_string())
}

/// The answer as server-sent events (axum's SSE), chunk by chunk as the provider sends them.
fn stream_response(
    app: Arc<App>,
    plan: Plan,
    model: String,
    failovers: Vec<Failover>,
    chat: ChatRequest,
    first: Value,
    rest: ChatStream,
) -> Response {
    app.metrics.decisions.get_or_create(&Served { model: model.clone(), routed: plan.routed_label() }).inc();
    let headers = plan.explained(&model, &failovers).headers();
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
    let events = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            match st.chunks.next().await {
                None => {
                    st.done = true;
                    st.tally.outcome = Some("ok");
                    return Some((Ok::<Event, Infallible>(Event::default().data("[DONE]")), st));
                }
                Some(Err(e)) => {
                    st.done = true;
                    st.tally.outcome = Some("upstream_error");
                    let t = &st.tally;
                    t.app.metrics.upstream_failures.get_or_create(&Failure { model: t.model.clone(), kind: e.kind() }).inc();
                    warn!(request_id = %t.plan.request_id, model = %t.model, error = e.kind(), detail = %e, "stream broke off");
                    let err = upstream(e.kind(), format!("model `{}`: {e}", t.model));
                    return Some((Ok(event(&err.json())), st));
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
                            let costs = t.usage.map(|u| (t.app.cost(&t.model, u), t.app.strongest_cost(u)));
                            o.insert("semroute".into(), t.plan.explained(&t.model, &t.failovers).body(costs));
                        }
                    }
                    return Some((Ok(event(&chunk)), st));
                }
            }
        }
    });
    let mut resp = Sse::new(events).into_response();
    let h = resp.headers_mut();
    for (k, v) in headers {
        h.insert(k, v);
    }
    resp
}
