//! What the server writes about each answer: the usage record (one JSON line in the usage log),
//! the `semroute` object added to answers, and the `x-semroute-*` headers.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;

use axum::http::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use crate::decision::RouteDecision;
use crate::error::{Error, Result};

/// The version of the usage record's layout written by this build. A reader accepts records of
/// this version and every earlier one (fields added later have defaults).
pub const USAGE_SCHEMA_VERSION: u32 = 1;

/// One answered (or abandoned) request, as appended to the usage log.
///
/// ```
/// use semroute::serve::UsageRecord;
///
/// let line = r#"{"schema_version":1,"ts":1.7e9,"request_id":"sr-1","routed":true,"model":"m",
///   "input_tokens":10,"output_tokens":20,"usage_reported":true,"cost_usd":0.001,
///   "strongest_model":"s","strongest_cost_usd":0.01,"outcome":"ok","stream":false,"latency_ms":12.0}"#;
/// let r: UsageRecord = serde_json::from_str(line)?;
/// assert_eq!((r.model.as_str(), r.output_tokens), ("m", 20));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct UsageRecord {
    /// [`USAGE_SCHEMA_VERSION`] when written (records from before it had none: read as 0).
    #[serde(default)]
    pub schema_version: u32,
    /// Unix time in seconds when the answer ended.
    pub ts: f64,
    /// The request id (`x-request-id`).
    pub request_id: String,
    /// Whether semroute chose the model (`auto`) rather than the client naming it.
    pub routed: bool,
    /// The model that answered (or last failed).
    pub model: String,
    /// The quality bar in force, for a routed request.
    #[serde(default)]
    pub quality_bar: Option<f64>,
    /// The answering model's predicted quality, for a routed request.
    #[serde(default)]
    pub predicted_quality: Option<f64>,
    /// Its expected cost when routed.
    #[serde(default)]
    pub expected_cost_usd: Option<f64>,
    /// Prompt tokens billed.
    pub input_tokens: u64,
    /// Answer tokens billed.
    pub output_tokens: u64,
    /// Of the prompt tokens, those the provider read from its prompt cache (as it reported them).
    #[serde(default)]
    pub cached_input_tokens: u64,
    /// Of the prompt tokens, those the provider wrote into its prompt cache.
    #[serde(default)]
    pub cache_write_tokens: u64,
    /// Whether the provider reported the tokens (else they were counted locally).
    pub usage_reported: bool,
    /// USD the answer cost at the price table's prices.
    pub cost_usd: f64,
    /// The strongest priced model.
    pub strongest_model: String,
    /// USD the same tokens would have cost on it.
    pub strongest_cost_usd: f64,
    /// Models that failed before this one, with the kind of failure.
    #[serde(default)]
    pub failovers: Vec<Failover>,
    /// `ok`, `upstream_error` or `client_closed`.
    pub outcome: String,
    /// Whether the answer was streamed.
    pub stream: bool,
    /// Whole request time in milliseconds.
    pub latency_ms: f64,
    /// The agent session a routed request belonged to, and its step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionRef>,
    /// The nearest exemplars behind a routed decision (ids and similarities; no prompt text).
    #[serde(default)]
    pub neighbours: Option<Vec<NeighbourRef>>,
    /// The last user message, only when the server logs prompts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
}

/// A model that failed before the one that answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failover {
    /// The model.
    pub model: String,
    /// What went wrong (`timeout`, `rate_limited`, `server_error`, `connection`, ...).
    pub error: String,
}

/// A session step named in a usage record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRef {
    /// The session's id ([`SessionInfo::id`](crate::session::SessionInfo::id)).
    pub id: String,
    /// The step, from 1.
    pub step: u32,
    /// Whether the step changed model.
    pub switched: bool,
    /// Prompt tokens the routing expected the provider to hold cached.
    pub cached_tokens: u64,
}

/// A neighbour named in a usage record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeighbourRef {
    /// Exemplar id.
    pub id: String,
    /// Its similarity to the prompt.
    pub similarity: f32,
}

/// What one request was answered with, for its headers and its `semroute` object.
pub(crate) struct Explained<'a> {
    pub(crate) request_id: &'a str,
    pub(crate) decision: Option<&'a RouteDecision>,
    pub(crate) quality_bar: Option<f64>,
    pub(crate) model: &'a str,
    pub(crate) failovers: &'a [Failover],
}

impl Explained<'_> {
    fn candidate(&self) -> Option<&crate::decision::Candidate> {
        self.decision?.candidates.iter().find(|c| c.model == self.model)
    }

    /// The `x-request-id` and `x-semroute-*` headers.
    pub(crate) fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let mut h: Vec<(&'static str, String)> = vec![
            ("x-request-id", self.request_id.to_string()),
            ("x-semroute-model", self.model.to_string()),
            ("x-semroute-routed", self.decision.is_some().to_string()),
        ];
        if let Some(c) = self.candidate() {
            if let Some(q) = c.predicted_quality {
                h.push(("x-semroute-predicted-quality", format!("{q:.4}")));
            }
            h.push(("x-semroute-expected-cost-usd", format!("{:.8}", c.expected_cost_usd)));
        }
        if let Some(bar) = self.quality_bar {
            h.push(("x-semroute-quality-bar", format!("{bar}")));
        }
        if let Some(d) = self.decision {
            h.push(("x-semroute-strongest-cost-usd", format!("{:.8}", d.strongest_cost_usd)));
            if d.fallback {
                h.push(("x-semroute-fallback", "true".into()));
            }
            if let Some(session) = &d.session {
                h.push(("x-semroute-session", session.id.clone()));
                h.push(("x-semroute-session-step", session.step.to_string()));
            }
        }
        if !self.failovers.is_empty() {
            let list: Vec<String> = self.failovers.iter().map(|f| format!("{}:{}", f.model, f.error)).collect();
            h.push(("x-semroute-failover", list.join(",")));
        }
        h.into_iter().filter_map(|(k, v)| Some((HeaderName::from_static(k), HeaderValue::from_str(&v).ok()?))).collect()
    }

    /// The `semroute` object added to answers; `costs` are the actual and the strongest model's
    /// cost of the tokens billed, once known.
    pub(crate) fn body(&self, costs: Option<(f64, f64)>) -> serde_json::Value {
        let cand = self.candidate();
        serde_json::json!({
            "request_id": self.request_id,
            "model": self.model,
            "routed": self.decision.is_some(),
            "quality_bar": self.quality_bar,
            "predicted_quality": cand.and_then(|c| c.predicted_quality),
            "expected_cost_usd": cand.map(|c| c.expected_cost_usd),
            "actual_cost_usd": costs.map(|c| c.0),
            "strongest_model": self.decision.map(|d| d.strongest_model.clone()),
            "strongest_cost_usd": costs.map(|c| c.1),
            "reason": self.decision.map(|d| d.reason.clone()),
            "fallback": self.decision.map(|d| d.fallback),
            "failover": self.failovers,
            "session": self.decision.and_then(|d| d.session.as_ref()),
        })
    }

    /// The usage record, but for what only the end of the answer knows.
    pub(crate) fn record(&self) -> UsageRecord {
        let cand = self.candidate();
        UsageRecord {
            schema_version: USAGE_SCHEMA_VERSION,
            ts: 0.0,
            request_id: self.request_id.to_string(),
            routed: self.decision.is_some(),
            model: self.model.to_string(),
            quality_bar: self.quality_bar,
            predicted_quality: cand.and_then(|c| c.predicted_quality),
            expected_cost_usd: cand.map(|c| c.expected_cost_usd),
            input_tokens: 0,
            output_tokens: 0,
            cached_input_tokens: 0,
            cache_write_tokens: 0,
            usage_reported: false,
            cost_usd: 0.0,
            strongest_model: String::new(),
            strongest_cost_usd: 0.0,
            failovers: self.failovers.to_vec(),
            outcome: String::new(),
            stream: false,
            latency_ms: 0.0,
            session: self.decision.and_then(|d| d.session.as_ref()).map(|s| SessionRef {
                id: s.id.clone(),
                step: s.step,
                switched: s.switched,
                cached_tokens: s.cached_tokens,
            }),
            neighbours: self
                .decision
                .map(|d| d.neighbours.iter().map(|n| NeighbourRef { id: n.id.clone(), similarity: n.similarity }).collect()),
            prompt: None,
        }
    }
}

/// Records arriving within this long of the first share one write and one sync: at a thousand
/// requests a second, one sync per record would wake the writer and the disk each time.
const GROUP_COMMIT: std::time::Duration = std::time::Duration::from_millis(3);

/// Appends usage records to a file from a thread of its own, syncing after each burst (the
/// records of one [`GROUP_COMMIT`] window).
pub(crate) struct UsageLog {
    tx: Sender<UsageRecord>,
}

impl UsageLog {
    /// Opens (creates, appends to) `path` and starts the writer; the thread ends when the log is
    /// dropped and what was sent is written.
    pub(crate) fn open(path: &Path) -> Result<(Self, std::thread::JoinHandle<()>)> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(path, e))?;
        let (tx, rx) = std::sync::mpsc::channel::<UsageRecord>();
        let path: PathBuf = path.to_path_buf();
        let handle = std::thread::spawn(move || {
            let mut out = std::io::BufWriter::new(file);
            while let Ok(first) = rx.recv() {
                let mut write = |r: UsageRecord| {
                    let line = serde_json::to_string(&r).unwrap_or_default();
                    if let Err(e) = writeln!(out, "{line}") {
                        tracing::error!("usage log {}: {e}", path.display());
                    }
                };
                write(first);
                std::thread::sleep(GROUP_COMMIT);
                while let Ok(more) = rx.try_recv() {
                    write(more);
                }
                if let Err(e) = out.flush().and_then(|()| out.get_ref().sync_data()) {
                    tracing::error!("usage log {}: {e}", path.display());
                }
            }
        });
        Ok((UsageLog { tx }, handle))
    }

    pub(crate) fn send(&self, r: UsageRecord) {
        // The writer only stops at shutdown; a record sent after that is lost on purpose.
        let _ = self.tx.send(r);
    }
}
