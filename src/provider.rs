//! Model providers: where each priced model is served, and a client that calls it.
//!
//! Two wire protocols reach nearly every provider: OpenAI's chat completions (OpenAI, Moonshot/Kimi,
//! DeepSeek, Qwen, MiniMax, GLM, Gemini's compatible endpoint, OpenRouter, vLLM, Ollama) and
//! Anthropic's messages API. A [`Providers`] file maps each model name of the price table to its
//! endpoint; API keys are read from the environment variable it names and never printed, logged
//! or put in `Debug` output ([`ApiKey`]).
//!
//! ```
//! use semroute::provider::{Protocol, Providers};
//!
//! let providers = Providers::from_toml_str(r#"
//! [models."deepseek-flash"]
//! protocol = "openai"
//! base_url = "https://api.deepseek.com/v1"
//! model = "deepseek-chat"
//! api_key_env = "DEEPSEEK_API_KEY"
//!
//! [models."claude-haiku-5-5"]
//! protocol = "anthropic"
//! base_url = "https://api.anthropic.com/v1"
//! model = "claude-haiku-5-5"
//! api_key_env = "ANTHROPIC_API_KEY"
//! max_tokens = 2048
//! "#, "providers.toml")?;
//! assert_eq!(providers.get("deepseek-flash").unwrap().protocol, Protocol::Openai);
//! assert_eq!(providers.get("claude-haiku-5-5").unwrap().group(), "api.anthropic.com");
//! # Ok::<(), semroute::Error>(())
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures_util::{Stream, StreamExt};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::chat::{self, AnthropicStream, ChatRequest, Usage};
use crate::error::{Error, Result};
use crate::pricing::{PriceTable, TokenCounter};

/// The wire protocol of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Protocol {
    /// `POST {base_url}/chat/completions`, bearer key.
    Openai,
    /// `POST {base_url}/messages`, `x-api-key`, `anthropic-version: 2023-06-01`.
    Anthropic,
}

/// Where and how one model is called.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Endpoint {
    /// The wire protocol.
    pub protocol: Protocol,
    /// API root, e.g. `https://api.openai.com/v1` (the protocol's path is appended).
    pub base_url: String,
    /// The provider's own model id.
    pub model: String,
    /// Name of the environment variable holding the API key (never the key itself).
    pub api_key_env: String,
    /// Answer length cap sent with each request (default 1024).
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Seconds before a call counts as timed out (default 60).
    #[serde(default)]
    pub timeout_secs: Option<f64>,
    /// Name of the concurrency group (default: the host of `base_url`): calls are bounded per group.
    #[serde(default)]
    pub provider: Option<String>,
    /// Largest whole (non-streamed) answer body read, in bytes (default 16 MiB): a larger one
    /// fails with [`CallError::TooLarge`] as soon as it passes the limit.
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// Largest streamed answer passed on, in bytes of the provider's event stream (default
    /// 64 MiB).
    #[serde(default)]
    pub max_stream_bytes: Option<u64>,
    /// Longest a streamed answer may run, in seconds from its first byte (default 600); the
    /// timeout still bounds each wait between events.
    #[serde(default)]
    pub max_stream_secs: Option<f64>,
    /// Anthropic endpoints only: mark each request's system prompt and conversation so far for
    /// the prompt cache ([`chat::mark_anthropic_cache`]; default false). Worth it for agents and
    /// long chats, whose next call repeats the prefix within the cache's five minutes; a one-off
    /// prompt pays the 25% write premium for nothing.
    #[serde(default)]
    pub cache_prompt: Option<bool>,
}

/// Longest `timeout_secs` or `max_stream_secs` accepted: a day (larger values would overflow the
/// clock arithmetic, and no call should wait longer).
pub const MAX_SECS: f64 = 86_400.0;

/// Default of [`Endpoint::max_body_bytes`].
pub const DEFAULT_MAX_BODY_BYTES: u64 = 16 << 20;
/// Default of [`Endpoint::max_stream_bytes`].
pub const DEFAULT_MAX_STREAM_BYTES: u64 = 64 << 20;
/// Default of [`Endpoint::max_stream_secs`].
pub const DEFAULT_MAX_STREAM_SECS: f64 = 600.0;
/// Longest line of a provider's event stream (an SSE field); a provider that never ends a line
/// is cut off here instead of growing the parser's buffer without end.
pub const MAX_EVENT_LINE_BYTES: usize = 1 << 20;

impl Endpoint {
    /// The concurrency group: `provider`, else the host of `base_url`.
    pub fn group(&self) -> &str {
        if let Some(p) = &self.provider {
            return p;
        }
        let rest = self.base_url.split_once("://").map_or(self.base_url.as_str(), |(_, r)| r);
        rest.split(['/', '?']).next().unwrap_or(rest)
    }

    /// The answer length cap.
    pub fn max_tokens(&self) -> u32 {
        self.max_tokens.unwrap_or(1024)
    }

    /// The call timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout_secs.unwrap_or(60.0))
    }

    /// The whole-answer size limit.
    pub fn max_body_bytes(&self) -> u64 {
        self.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES)
    }

    /// The streamed-answer size limit.
    pub fn max_stream_bytes(&self) -> u64 {
        self.max_stream_bytes.unwrap_or(DEFAULT_MAX_STREAM_BYTES)
    }

    /// The streamed-answer duration limit.
    pub fn max_stream_duration(&self) -> Duration {
        Duration::from_secs_f64(self.max_stream_secs.unwrap_or(DEFAULT_MAX_STREAM_SECS))
    }
}

/// Endpoints by model name (the names of the price table).
#[derive(Debug, Clone, PartialEq)]
pub struct Providers {
    models: BTreeMap<String, Endpoint>,
}

impl Providers {
    /// Loads and validates a providers file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml_str(&text, path)
    }

    /// Parses and validates providers TOML; `origin` names the source in errors.
    pub fn from_toml_str(text: &str, origin: impl AsRef<Path>) -> Result<Self> {
        let origin = origin.as_ref();
        let entries = crate::models_toml::parse::<Endpoint>(text, origin).map_err(|e| {
            Error::Config(match e.model {
                Some(m) => format!("{}: model `{m}`: {}", e.at, e.message),
                None => format!("{}: {}", e.at, e.message),
            })
        })?;
        let mut models = BTreeMap::new();
        for (name, ep, at) in entries {
            let bad = |m: String| Error::Config(format!("{at}: model `{name}`: {m}"));
            if !(ep.base_url.starts_with("http://") || ep.base_url.starts_with("https://")) {
                return Err(bad(format!("field `base_url` must start with http:// or https://, got {:?}", ep.base_url)));
            }
            for (field, v) in [("model", &ep.model), ("api_key_env", &ep.api_key_env)] {
                if v.trim().is_empty() {
                    return Err(bad(format!("field `{field}` is empty")));
                }
            }
            for (field, v) in [("timeout_secs", ep.timeout_secs), ("max_stream_secs", ep.max_stream_secs)] {
                if let Some(t) = v.filter(|t| !(t.is_finite() && *t > 0.0 && *t <= MAX_SECS)) {
                    return Err(bad(format!("field `{field}` must be positive and at most {MAX_SECS} s (a day), got {t}")));
                }
            }
            if ep.max_tokens == Some(0) {
                return Err(bad("field `max_tokens` must be positive".into()));
            }
            if ep.cache_prompt == Some(true) && ep.protocol != Protocol::Anthropic {
                return Err(bad(
                    "field `cache_prompt` is for Anthropic endpoints (OpenAI-protocol providers cache prompts without being asked)".into(),
                ));
            }
            for (field, v) in [("max_body_bytes", ep.max_body_bytes), ("max_stream_bytes", ep.max_stream_bytes)] {
                if v == Some(0) {
                    return Err(bad(format!("field `{field}` must be positive")));
                }
            }
            models.insert(name, ep);
        }
        Ok(Providers { models })
    }

    /// The endpoint of `model`.
    pub fn get(&self, model: &str) -> Option<&Endpoint> {
        self.models.get(model)
    }

    /// Model names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }

    /// Every model here must be priced (its cost is computed from the table).
    pub fn check_prices(&self, prices: &PriceTable) -> Result<()> {
        for name in self.names() {
            prices.require(name, "the providers file")?;
        }
        Ok(())
    }
}

/// An API key read from the environment. Its `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    /// Reads the key from the variable `var`; a missing or empty variable is an error naming it.
    pub fn from_env(var: &str) -> Result<Self> {
        match std::env::var(var) {
            Ok(k) if !k.trim().is_empty() => Ok(ApiKey(k.trim().to_string())),
            _ => Err(Error::Config(format!("the environment variable {var} (an API key) is not set"))),
        }
    }

    /// A key given directly (tests, programmatic use).
    pub fn new(key: impl Into<String>) -> Self {
        ApiKey(key.into())
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Completion {
    /// The answer text.
    pub text: String,
    /// Prompt tokens billed.
    pub input_tokens: u64,
    /// Answer tokens billed.
    pub output_tokens: u64,
    /// Whether the token counts are the provider's (`false`: counted with tiktoken cl100k).
    pub usage_reported: bool,
    /// Wall time of the successful attempt.
    pub latency: Duration,
    /// Attempts made (1 = no retry).
    pub attempts: u32,
}

/// A whole chat answer, OpenAI-shaped whatever the endpoint's protocol.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ChatAnswer {
    /// An OpenAI `chat.completion` object.
    pub body: Value,
    /// The tokens the provider reported, if it did.
    pub usage: Option<Usage>,
    /// Wall time of the successful attempt.
    pub latency: Duration,
    /// Attempts made (1 = no retry).
    pub attempts: u32,
}

impl From<crate::chat::Malformed> for CallError {
    fn from(m: crate::chat::Malformed) -> Self {
        CallError::Malformed(m.0)
    }
}

/// Why a call failed. Each is recorded for its (exemplar, model) pair; none stops a run. It
/// converts into [`crate::Error::Provider`] with `?`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// No answer within the endpoint's timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The server could not be reached (after retries).
    #[error("could not connect: {0}")]
    Connect(String),
    /// The key was refused (HTTP 401/403).
    #[error("the API key was refused (HTTP {0})")]
    Auth(u16),
    /// Still rate-limited or failing (429 / 5xx) after every retry.
    #[error("HTTP {status} after {attempts} attempts")]
    Exhausted {
        /// Last status.
        status: u16,
        /// Attempts made.
        attempts: u32,
    },
    /// Another HTTP error (4xx).
    #[error("HTTP {status}: {body}")]
    Http {
        /// Status code.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// The body ended before its announced length, or the connection dropped mid-body.
    #[error("truncated response body: {0}")]
    Truncated(String),
    /// The body was not the protocol's JSON.
    #[error("malformed response: {0}")]
    Malformed(String),
    /// The model refused.
    #[error("the model refused: {0}")]
    Refusal(String),
    /// The answer was empty.
    #[error("empty answer")]
    Empty,
    /// The request cannot be expressed in the endpoint's protocol (nothing was sent).
    #[error("{0}")]
    Request(String),
    /// A streamed answer broke off after it had started (an error event, or no end marker).
    #[error("the stream broke off: {0}")]
    Stream(String),
    /// The answer passed one of the endpoint's limits (body or stream size, stream duration,
    /// event line length) and was cut off there.
    #[error("the answer is too large: {0}")]
    TooLarge(String),
}

impl CallError {
    /// A short stable name for records (`timeout`, `auth`, `rate_limited`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Timeout(_) => "timeout",
            CallError::Connect(_) => "connect",
            CallError::Auth(_) => "auth",
            CallError::Exhausted { status: 429, .. } => "rate_limited",
            CallError::Exhausted { .. } => "server_error",
            CallError::Http { .. } => "http",
            CallError::Truncated(_) => "truncated",
            CallError::Malformed(_) => "malformed",
            CallError::Refusal(_) => "refusal",
            CallError::Empty => "empty",
            CallError::Request(_) => "invalid_request",
            CallError::Stream(_) => "stream",
            CallError::TooLarge(_) => "too_large",
        }
    }

    /// Whether another model may succeed where this one failed: the provider was slow, busy,
    /// down or unreachable (not: the request or the key was wrong).
    pub fn is_transient(&self) -> bool {
        matches!(self, CallError::Timeout(_) | CallError::Connect(_) | CallError::Exhausted { .. } | CallError::Truncated(_))
    }
}

/// How 429 and 5xx answers (and failed connections) are retried: exponential backoff from
/// `base_delay`, doubled each attempt up to `max_delay`; a `Retry-After` header (seconds) wins,
/// capped at `max_delay`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, at least 1 (default 5).
    pub max_attempts: u32,
    /// First backoff (default 500 ms).
    pub base_delay: Duration,
    /// Longest wait (default 30 s).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: 5, base_delay: Duration::from_millis(500), max_delay: Duration::from_secs(30) }
    }
}

impl RetryPolicy {
    fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        retry_after.unwrap_or_else(|| self.base_delay.saturating_mul(1 << (attempt - 1).min(20))).min(self.max_delay)
    }
}

/// Calls endpoints over HTTP (one connection pool for all of them).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    retry: RetryPolicy,
    counter: TokenCounter,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("retry", &self.retry).finish_non_exhaustive()
    }
}

impl Client {
    /// A client with `retry`.
    pub fn new(retry: RetryPolicy) -> Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("semroute/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Config(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Client { http, retry: RetryPolicy { max_attempts: retry.max_attempts.max(1), ..retry }, counter: TokenCounter::cl100k()? })
    }

    /// Sends one user `prompt` to `endpoint` and returns the answer text, retrying 429/5xx. A
    /// refusal and an empty answer are errors here (a grade needs an answer).
    pub async fn complete(&self, endpoint: &Endpoint, key: &ApiKey, prompt: &str) -> std::result::Result<Completion, CallError> {
        let answer = self.chat(endpoint, key, &ChatRequest::user(prompt)).await?;
        let choice = &answer.body["choices"][0];
        let message = &choice["message"];
        if let Some(r) = message.get("refusal").and_then(Value::as_str).filter(|r| !r.is_empty()) {
            return Err(CallError::Refusal(r.chars().take(200).collect()));
        }
        let text = message.get("content").and_then(Value::as_str).unwrap_or_default().to_string();
        if choice.get("finish_reason").and_then(Value::as_str) == Some("content_filter") {
            return Err(CallError::Refusal(if text.is_empty() {
                "finish_reason content_filter".into()
            } else {
                text.chars().take(200).collect()
            }));
        }
        if text.trim().is_empty() {
            return Err(CallError::Empty);
        }
        let (input_tokens, output_tokens, usage_reported) = match answer.usage {
            Some(u) => (u.input_tokens, u.output_tokens, true),
            None => (self.counter.count(prompt), self.counter.count(&text), false),
        };
        Ok(Completion { text, input_tokens, output_tokens, usage_reported, latency: answer.latency, attempts: answer.attempts })
    }

    /// Sends a chat request to `endpoint` (translated to its protocol) and returns the whole answer,
    /// OpenAI-shaped, retrying 429/5xx under the client's [`RetryPolicy`]. `stream` in the
    /// request is ignored: see [`chat_stream`](Client::chat_stream).
    pub async fn chat(&self, endpoint: &Endpoint, key: &ApiKey, request: &ChatRequest) -> std::result::Result<ChatAnswer, CallError> {
        let mut body = wire_body(endpoint, request)?;
        if let Some(o) = body.as_object_mut() {
            o.remove("stream");
            o.remove("stream_options");
        }
        let (resp, attempts, started) = self.send(endpoint, key, &body, true).await?;
        let status = resp.status().as_u16();
        let bytes = read_bounded(resp, endpoint).await?;
        if !(200..300).contains(&status) {
            let body: String = String::from_utf8_lossy(&bytes).chars().take(200).collect();
            return Err(CallError::Http { status, body });
        }
        let latency = started.elapsed();
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| CallError::Malformed(e.to_string()))?;
        let body = match endpoint.protocol {
            Protocol::Openai => chat::check_openai(&v).map(|()| v),
            Protocol::Anthropic => chat::anthropic_to_openai(&v),
        }?;
        Ok(ChatAnswer { usage: Usage::of(&body), body, latency, attempts })
    }

    /// Sends a chat request to `endpoint` and streams the answer as OpenAI `chat.completion.chunk`
    /// objects, one per upstream event, without buffering. Retries (429/5xx) happen only before
    /// the answer starts. The last chunk carries `usage` when the provider reports it (semroute
    /// asks OpenAI-protocol endpoints for it). Between chunks, the endpoint's timeout applies to
    /// each wait, not to the whole answer.
    pub async fn chat_stream(
        &self,
        endpoint: &Endpoint,
        key: &ApiKey,
        request: &ChatRequest,
    ) -> std::result::Result<ChatStream, CallError> {
        let mut body = wire_body(endpoint, request)?;
        body["stream"] = true.into();
        if endpoint.protocol == Protocol::Openai {
            body["stream_options"]["include_usage"] = true.into();
        }
        let (resp, _, _) = self.send(endpoint, key, &body, false).await?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let text = match tokio::time::timeout(endpoint.timeout(), resp.text()).await {
                Ok(Ok(t)) => t.chars().take(200).collect(),
                _ => String::new(),
            };
            return Err(CallError::Http { status, body: text });
        }
        Ok(ChatStream::new(resp, endpoint.protocol, endpoint.timeout(), Limits::of(endpoint)))
    }

    /// Posts `body` to the endpoint's protocol path, retrying 429/5xx and failed connections;
    /// returns the first other response (any status but 401/403), the attempts made and when the
    /// successful attempt started. `whole` puts the endpoint's timeout on the whole exchange;
    /// otherwise it bounds the wait for the response head only (streams).
    async fn send(
        &self,
        endpoint: &Endpoint,
        key: &ApiKey,
        body: &Value,
        whole: bool,
    ) -> std::result::Result<(reqwest::Response, u32, Instant), CallError> {
        let url = match endpoint.protocol {
            Protocol::Openai => format!("{}/chat/completions", endpoint.base_url.trim_end_matches('/')),
            Protocol::Anthropic => format!("{}/messages", endpoint.base_url.trim_end_matches('/')),
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self.http.post(&url).json(body);
            if whole {
                req = req.timeout(endpoint.timeout());
            }
            req = match endpoint.protocol {
                Protocol::Openai => req.bearer_auth(key.expose()),
                Protocol::Anthropic => req.header("x-api-key", key.expose()).header("anthropic-version", "2023-06-01"),
            };
            let started = Instant::now();
            let retry_or = |e: CallError, after: Option<Duration>| {
                if attempt < self.retry.max_attempts {
                    Err(self.retry.backoff(attempt, after))
                } else {
                    Ok(e)
                }
            };
            let sent = match tokio::time::timeout(endpoint.timeout(), req.send()).await {
                Ok(r) => r,
                Err(_) => return Err(CallError::Timeout(endpoint.timeout())),
            };
            let resp = match sent {
                Ok(r) => r,
                Err(e) if e.is_timeout() => return Err(CallError::Timeout(endpoint.timeout())),
                Err(e) => match retry_or(CallError::Connect(describe(e)), None) {
                    Err(wait) => {
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    Ok(err) => return Err(err),
                },
            };
            let status = resp.status().as_u16();
            if status == 429 || (500..600).contains(&status) {
                let after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .map(Duration::from_secs_f64);
                match retry_or(CallError::Exhausted { status, attempts: attempt }, after) {
                    Err(wait) => {
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    Ok(err) => return Err(err),
                }
            }
            if status == 401 || status == 403 {
                return Err(CallError::Auth(status));
            }
            return Ok((resp, attempt, started));
        }
    }
}

/// A whole answer's body, read chunk by chunk and refused as soon as it passes the endpoint's
/// limit (a provider sending without end cannot grow memory past it).
async fn read_bounded(mut resp: reqwest::Response, endpoint: &Endpoint) -> std::result::Result<Vec<u8>, CallError> {
    let limit = endpoint.max_body_bytes();
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(CallError::TooLarge(format!(
            "the body announces {} bytes, over the limit of {limit}",
            resp.content_length().unwrap_or(0)
        )));
    }
    // The chunks are kept as they come and joined once at the end, into one buffer of the exact
    // size: growing one buffer by doubling up to the limit left the allocator holding freed
    // multi-megabyte blocks (a soak run's resident memory grew without bound).
    let mut chunks = Vec::new();
    let mut len = 0u64;
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                len += chunk.len() as u64;
                if len > limit {
                    return Err(CallError::TooLarge(format!("the body passed the limit of {limit} bytes")));
                }
                chunks.push(chunk);
            }
            Ok(None) => return Ok(chunks.concat()),
            Err(e) if e.is_timeout() => return Err(CallError::Timeout(endpoint.timeout())),
            Err(e) => return Err(CallError::Truncated(describe(e))),
        }
    }
}

/// What a stream may not pass.
#[derive(Debug, Clone, Copy)]
struct Limits {
    bytes: u64,
    duration: Duration,
}

impl Limits {
    fn of(endpoint: &Endpoint) -> Self {
        Limits { bytes: endpoint.max_stream_bytes(), duration: endpoint.max_stream_duration() }
    }
}

/// The provider's bytes, cut off (with the reason kept in `hit`) past `limits.bytes` in total or
/// [`MAX_EVENT_LINE_BYTES`] without a line end.
fn limited_bytes(
    resp: reqwest::Response,
    limits: Limits,
    hit: Arc<Mutex<Option<String>>>,
) -> impl Stream<Item = std::result::Result<bytes::Bytes, LimitError>> + Send {
    struct St<S> {
        inner: S,
        total: u64,
        line: usize,
        hit: Arc<Mutex<Option<String>>>,
        limits: Limits,
        stopped: bool,
        /// The stream's first bytes, held until a leading byte-order mark can be told apart (the
        /// event-stream parser panics on one) and dropped; `None` once that is settled.
        head: Option<Vec<u8>>,
    }
    let st = St { inner: Box::pin(resp.bytes_stream()), total: 0, line: 0, hit, limits, stopped: false, head: Some(Vec::new()) };
    futures_util::stream::unfold(st, |mut st| async move {
        if st.stopped {
            return None;
        }
        const BOM: &[u8] = b"\xEF\xBB\xBF";
        let next = loop {
            let next = st.inner.next().await;
            let Some(head) = st.head.as_mut() else { break next };
            match next {
                Some(Ok(chunk)) => {
                    head.extend_from_slice(&chunk);
                    if head.len() < BOM.len() && BOM.starts_with(head) {
                        continue;
                    }
                    let mut head = st.head.take().unwrap_or_default();
                    if head.starts_with(BOM) {
                        head.drain(..BOM.len());
                    }
                    break Some(Ok(bytes::Bytes::from(head)));
                }
                // The stream ended or failed before the mark could be told apart: what was held
                // (at most two bytes of a mark) is dropped with it.
                other => {
                    st.head = None;
                    break other;
                }
            }
        };
        let item = match next? {
            Err(e) => Err(LimitError(describe(e))),
            Ok(chunk) => {
                st.total += chunk.len() as u64;
                st.line = match chunk.iter().rposition(|&b| b == b'\n' || b == b'\r') {
                    Some(i) => chunk.len() - i - 1,
                    None => st.line + chunk.len(),
                };
                let over = if st.total > st.limits.bytes {
                    Some(format!("the stream passed the limit of {} bytes", st.limits.bytes))
                } else if st.line > MAX_EVENT_LINE_BYTES {
                    Some(format!("an event line passed {MAX_EVENT_LINE_BYTES} bytes without ending"))
                } else {
                    None
                };
                match over {
                    Some(why) => {
                        *st.hit.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
                        st.stopped = true;
                        Err(LimitError(why))
                    }
                    None => Ok(chunk),
                }
            }
        };
        Some((item, st))
    })
}

/// Why the byte stream under a [`ChatStream`] stopped.
#[derive(Debug)]
struct LimitError(String);

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LimitError {}

/// The request in the endpoint's protocol, for the endpoint's own model id.
fn wire_body(endpoint: &Endpoint, request: &ChatRequest) -> std::result::Result<Value, CallError> {
    let max = u64::from(endpoint.max_tokens());
    match endpoint.protocol {
        Protocol::Openai => Ok(request.to_openai(&endpoint.model, max)),
        Protocol::Anthropic => {
            let mut body = request.to_anthropic(&endpoint.model, max).map_err(|e| match e {
                Error::InvalidRequest(m) => CallError::Request(m),
                other => CallError::Request(other.to_string()),
            })?;
            if endpoint.cache_prompt == Some(true) {
                chat::mark_anthropic_cache(&mut body);
            }
            Ok(body)
        }
    }
}

/// reqwest's message and its causes, without the URL.
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

type EventStream = Pin<Box<dyn Stream<Item = std::result::Result<eventsource_stream::Event, String>> + Send>>;

/// A streamed chat answer: OpenAI `chat.completion.chunk` objects as they arrive.
///
/// It ends after the provider's end marker (`[DONE]`, or Anthropic's `message_stop`); a stream
/// that stops without one ends with [`CallError::Truncated`], an error event with
/// [`CallError::Stream`], and a wait longer than the endpoint's timeout with
/// [`CallError::Timeout`].
pub struct ChatStream {
    inner: Pin<Box<dyn Stream<Item = std::result::Result<Value, CallError>> + Send>>,
}

impl fmt::Debug for ChatStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChatStream")
    }
}

struct StreamState {
    events: EventStream,
    protocol: Protocol,
    anthropic: AnthropicStream,
    pending: VecDeque<Value>,
    idle: Duration,
    /// When the stream must have ended ([`Endpoint::max_stream_secs`] from its start).
    deadline: tokio::time::Instant,
    limits: Limits,
    /// Set when the byte stream was cut off at a limit.
    hit: Arc<Mutex<Option<String>>>,
    done: bool,
}

impl ChatStream {
    fn new(resp: reqwest::Response, protocol: Protocol, idle: Duration, limits: Limits) -> Self {
        let hit = Arc::new(Mutex::new(None));
        let bytes = limited_bytes(resp, limits, hit.clone());
        let events: EventStream = Box::pin(bytes.eventsource().map(|e| e.map_err(|e| e.to_string())));
        let deadline = tokio::time::Instant::now() + limits.duration;
        let state = StreamState {
            events,
            protocol,
            anthropic: AnthropicStream::default(),
            pending: VecDeque::new(),
            idle,
            deadline,
            limits,
            hit,
            done: false,
        };
        let inner = futures_util::stream::unfold(state, |mut st| async move {
            loop {
                if let Some(chunk) = st.pending.pop_front() {
                    return Some((Ok(chunk), st));
                }
                if st.done {
                    return None;
                }
                let left = st.deadline.saturating_duration_since(tokio::time::Instant::now());
                let next = match tokio::time::timeout(st.idle.min(left), st.events.next()).await {
                    Err(_) if left <= st.idle => Err(CallError::TooLarge(format!("the stream ran longer than {:?}", st.limits.duration))),
                    Err(_) => Err(CallError::Timeout(st.idle)),
                    Ok(None) => Err(CallError::Truncated("the stream ended without its end marker".into())),
                    Ok(Some(Err(e))) => match st.hit.lock().unwrap_or_else(|p| p.into_inner()).take() {
                        Some(why) => Err(CallError::TooLarge(why)),
                        None => Err(CallError::Truncated(e)),
                    },
                    Ok(Some(Ok(ev))) => Ok(ev),
                };
                let ev = match next {
                    Ok(ev) => ev,
                    Err(e) => {
                        st.done = true;
                        return Some((Err(e), st));
                    }
                };
                match st.protocol {
                    Protocol::Openai => {
                        if ev.data.trim() == "[DONE]" {
                            st.done = true;
                            continue;
                        }
                        match serde_json::from_str::<Value>(&ev.data) {
                            Ok(v) if !v.is_object() => {
                                // A chunk is an object; a bare number, string or array is not
                                // passed on (a proxy editing chunks would trip over it).
                                st.done = true;
                                return Some((Err(CallError::Malformed("stream chunk is not a JSON object".into())), st));
                            }
                            Ok(v) if v.get("error").is_some() => {
                                st.done = true;
                                return Some((Err(CallError::Stream(v["error"].to_string())), st));
                            }
                            Ok(v) => st.pending.push_back(v),
                            Err(e) => {
                                st.done = true;
                                return Some((Err(CallError::Malformed(format!("stream chunk: {e}"))), st));
                            }
                        }
                    }
                    Protocol::Anthropic => {
                        let parsed = serde_json::from_str::<Value>(&ev.data)
                            .map_err(|e| CallError::Malformed(format!("stream event: {e}")))
                            .and_then(|v| st.anthropic.event(&ev.event, &v).map_err(|e| CallError::Stream(e.0)));
                        match parsed {
                            Ok(chunks) => {
                                st.pending.extend(chunks);
                                st.done = st.anthropic.finished();
                            }
                            Err(e) => {
                                st.done = true;
                                return Some((Err(e), st));
                            }
                        }
                    }
                }
            }
        });
        ChatStream { inner: Box::pin(inner) }
    }
}

impl Stream for ChatStream {
    type Item = std::result::Result<Value, CallError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}
