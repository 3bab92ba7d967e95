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

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::pricing::{PriceTable, TokenCounter};

/// The wire protocol of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// `POST {base_url}/chat/completions`, bearer key.
    Openai,
    /// `POST {base_url}/messages`, `x-api-key`, `anthropic-version: 2023-06-01`.
    Anthropic,
}

/// Where and how one model is called.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
}

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
            if let Some(t) = ep.timeout_secs.filter(|t| !(t.is_finite() && *t > 0.0)) {
                return Err(bad(format!("field `timeout_secs` must be positive, got {t}")));
            }
            if ep.max_tokens == Some(0) {
                return Err(bad("field `max_tokens` must be positive".into()));
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

/// Why a call failed. Each is recorded for its (exemplar, model) pair; none stops a run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
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
        }
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

    /// Sends one user `prompt` to `endpoint` and returns the answer, retrying 429/5xx.
    pub async fn complete(&self, endpoint: &Endpoint, key: &ApiKey, prompt: &str) -> std::result::Result<Completion, CallError> {
        let (url, body) = match endpoint.protocol {
            Protocol::Openai => (
                format!("{}/chat/completions", endpoint.base_url.trim_end_matches('/')),
                json!({"model": endpoint.model, "max_tokens": endpoint.max_tokens(),
                       "messages": [{"role": "user", "content": prompt}]}),
            ),
            Protocol::Anthropic => (
                format!("{}/messages", endpoint.base_url.trim_end_matches('/')),
                json!({"model": endpoint.model, "max_tokens": endpoint.max_tokens(),
                       "messages": [{"role": "user", "content": prompt}]}),
            ),
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self.http.post(&url).timeout(endpoint.timeout()).json(&body);
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
            let resp = match req.send().await {
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
            let bytes = match resp.bytes().await {
                Ok(b) => b,
                Err(e) if e.is_timeout() => return Err(CallError::Timeout(endpoint.timeout())),
                Err(e) => return Err(CallError::Truncated(describe(e))),
            };
            if !(200..300).contains(&status) {
                let body: String = String::from_utf8_lossy(&bytes).chars().take(200).collect();
                return Err(CallError::Http { status, body });
            }
            let latency = started.elapsed();
            let v: Value = serde_json::from_slice(&bytes).map_err(|e| CallError::Malformed(e.to_string()))?;
            let parsed = match endpoint.protocol {
                Protocol::Openai => parse_openai(&v),
                Protocol::Anthropic => parse_anthropic(&v),
            }?;
            let (input_tokens, output_tokens, usage_reported) = match parsed.usage {
                Some((i, o)) => (i, o, true),
                None => (self.counter.count(prompt), self.counter.count(&parsed.text), false),
            };
            return Ok(Completion { text: parsed.text, input_tokens, output_tokens, usage_reported, latency, attempts: attempt });
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

struct Parsed {
    text: String,
    usage: Option<(u64, u64)>,
}

fn parse_openai(v: &Value) -> std::result::Result<Parsed, CallError> {
    let choice = v
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or_else(|| CallError::Malformed("no `choices[0]` in the answer".into()))?;
    let message = choice.get("message").ok_or_else(|| CallError::Malformed("no `choices[0].message`".into()))?;
    if let Some(r) = message.get("refusal").and_then(Value::as_str).filter(|r| !r.is_empty()) {
        return Err(CallError::Refusal(r.chars().take(200).collect()));
    }
    if choice.get("finish_reason").and_then(Value::as_str) == Some("content_filter") {
        return Err(CallError::Refusal("finish_reason content_filter".into()));
    }
    let text = match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => return Err(CallError::Malformed(format!("`content` is not a string: {other}"))),
    };
    if text.trim().is_empty() {
        return Err(CallError::Empty);
    }
    let usage = v.get("usage").and_then(|u| {
        Some((u.get("prompt_tokens")?.as_u64()?, u.get("completion_tokens")?.as_u64()?))
    });
    Ok(Parsed { text, usage })
}

fn parse_anthropic(v: &Value) -> std::result::Result<Parsed, CallError> {
    if v.get("type").and_then(Value::as_str) == Some("error") {
        return Err(CallError::Malformed(format!("error object in a 2xx answer: {}", v.get("error").unwrap_or(&Value::Null))));
    }
    let blocks = v.get("content").and_then(Value::as_array).ok_or_else(|| CallError::Malformed("no `content` array".into()))?;
    let text: String = blocks
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join("");
    if v.get("stop_reason").and_then(Value::as_str) == Some("refusal") {
        return Err(CallError::Refusal(text.chars().take(200).collect()));
    }
    if text.trim().is_empty() {
        return Err(CallError::Empty);
    }
    let usage = v.get("usage").and_then(|u| Some((u.get("input_tokens")?.as_u64()?, u.get("output_tokens")?.as_u64()?)));
    Ok(Parsed { text, usage })
}
