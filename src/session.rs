//! Agent sessions: route the task, keep the provider's prompt cache, switch models only when it
//! pays.
//!
//! An agent does not send one prompt: it sends the same growing conversation again and again,
//! tens to hundreds of calls for one task. Providers bill a cached prefix at a fraction of the
//! input price, and a cache lives with one model. [`Router::route_session`](crate::Router::route_session)
//! therefore keeps, per session:
//!
//! - **the task's assessment**: the first user turn is assessed once, and its predictions are
//!   reused at every later step (no embedding), so a tool result never makes a hard task look
//!   easy. A later user turn the exemplars recognise can only make the session harder (each
//!   model's predicted quality is the lower of the two). When the router learns or reloads, the
//!   task is assessed again from the request, which always carries it;
//! - **the model in use and what its provider has cached**: the prompt of the last call, until
//!   the model's cache lifetime ([`ModelPrice::cache_ttl`](crate::pricing::ModelPrice::cache_ttl))
//!   has passed since its last use.
//!
//! Each candidate's cost then counts its cached prefix at the cached price and the rest at the
//! full price, and is spread over the steps the session is expected to take (as many again as it
//! has taken, within [`SessionSettings::max_horizon`]): a model without the cache pays once to
//! build it, and is taken only when what it saves per step (or the quality it adds) repays that
//! within the horizon. The decision's [`SessionInfo`] and reason say which way it went and why.
//!
//! A session is named by the caller (`x-semroute-session` in `serve`, the `session` argument in
//! the library), or else identified by the conversation's leading messages (system prompts and
//! the first user turn): the same task asked again continues the same session. State lives in a
//! [`SessionStore`]: in memory by default ([`MemorySessions`], bounded, least recently used
//! first out), or in PostgreSQL so that replicas behind a load balancer share it.
//!
//! ```no_run
//! use semroute::chat::ChatRequest;
//! use semroute::{Constraints, Router};
//! use serde_json::json;
//!
//! let router = Router::builder().build()?;
//! let mut messages = vec![
//!     json!({"role": "system", "content": "You are a coding agent with a shell tool."}),
//!     json!({"role": "user", "content": "Make the flaky integration test deterministic."}),
//! ];
//! for step in 0..3 {
//!     let chat = ChatRequest::from_json(json!({"messages": messages}))?;
//!     let d = router.route_session(&chat, Some("task-42"), &Constraints::default())?;
//!     let s = d.session.as_ref().unwrap();
//!     println!("step {}: {} ({} tokens cached) {}", s.step, d.model, s.cached_tokens, d.reason);
//!     messages.push(json!({"role": "assistant", "content": format!("running step {step}")}));
//!     messages.push(json!({"role": "tool", "tool_call_id": "t", "content": "ok"}));
//! }
//! # Ok::<(), semroute::Error>(())
//! ```

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::chat::ChatRequest;
use crate::error::{Error, Result};
use crate::predict::{ModelPrediction, Predictions};

/// How sessions are kept.
///
/// ```
/// use semroute::session::SessionSettings;
///
/// let s = SessionSettings::default().max_sessions(10_000).idle_secs(1800);
/// assert_eq!(s.max_sessions, 10_000);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SessionSettings {
    /// Sessions kept in memory (default 100,000, a few hundred bytes each); the least recently
    /// used goes first.
    pub max_sessions: usize,
    /// A session unused this long is forgotten (default 3,600 s).
    pub idle_secs: u64,
    /// The most steps a model switch is expected to pay back over (default 50).
    pub max_horizon: f64,
    /// Whether a later user turn the exemplars recognise can raise the session's difficulty
    /// (default true).
    pub follow_ups: bool,
}

/// The most sessions [`SessionSettings::max_sessions`] may keep.
pub const MAX_SESSIONS: usize = 100_000_000;

/// The longest [`SessionSettings::idle_secs`]: 30 days.
pub const MAX_IDLE_SECS: u64 = 30 * 24 * 3600;

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings { max_sessions: 100_000, idle_secs: 3600, max_horizon: 50.0, follow_ups: true }
    }
}

impl SessionSettings {
    /// Sets [`max_sessions`](Self::max_sessions).
    pub fn max_sessions(mut self, n: usize) -> Self {
        self.max_sessions = n;
        self
    }

    /// Sets [`idle_secs`](Self::idle_secs).
    pub fn idle_secs(mut self, secs: u64) -> Self {
        self.idle_secs = secs;
        self
    }

    /// Sets [`max_horizon`](Self::max_horizon).
    pub fn max_horizon(mut self, steps: f64) -> Self {
        self.max_horizon = steps;
        self
    }

    /// Sets [`follow_ups`](Self::follow_ups).
    pub fn follow_ups(mut self, on: bool) -> Self {
        self.follow_ups = on;
        self
    }

    pub(crate) fn check(&self) -> Result<()> {
        if !(1..=MAX_SESSIONS).contains(&self.max_sessions) {
            return Err(Error::Config(format!("sessions: max_sessions must be within 1..={MAX_SESSIONS}, got {}", self.max_sessions)));
        }
        if !(1..=MAX_IDLE_SECS).contains(&self.idle_secs) {
            return Err(Error::Config(format!("sessions: idle_secs must be within 1..={MAX_IDLE_SECS} (30 days), got {}", self.idle_secs)));
        }
        if !(self.max_horizon.is_finite() && (1.0..=10_000.0).contains(&self.max_horizon)) {
            return Err(Error::Config(format!("sessions: max_horizon must be from 1 to 10,000 steps, got {}", self.max_horizon)));
        }
        Ok(())
    }
}

/// A session's identity: 16 bytes of SHA-256 over the caller's name for it, or over the
/// conversation's leading messages.
///
/// ```
/// use semroute::chat::ChatRequest;
/// use semroute::session::SessionKey;
/// use serde_json::json;
///
/// let first = ChatRequest::from_json(json!({"messages": [
///     {"role": "system", "content": "agent"}, {"role": "user", "content": "task"}]}))?;
/// let later = ChatRequest::from_json(json!({"messages": [
///     {"role": "system", "content": "agent"}, {"role": "user", "content": "task"},
///     {"role": "assistant", "content": "step"}, {"role": "user", "content": "more"}]}))?;
/// assert_eq!(SessionKey::of(&first, None)?, SessionKey::of(&later, None)?);
/// assert_ne!(SessionKey::of(&first, Some("a"))?, SessionKey::of(&first, Some("b"))?);
/// assert_eq!(SessionKey::of(&first, Some("a"))?.to_string().len(), 32);
/// # Ok::<(), semroute::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey([u8; 16]);

/// The longest session name accepted, in bytes.
pub const MAX_SESSION_NAME: usize = 256;

impl SessionKey {
    /// The key of a named session, or of the conversation's leading messages (every system or
    /// developer message before the first user turn, and that turn).
    pub fn of(chat: &ChatRequest, name: Option<&str>) -> Result<SessionKey> {
        let mut h = Sha256::new();
        match name {
            Some(n) => {
                if n.is_empty() || n.len() > MAX_SESSION_NAME || n.chars().any(char::is_control) {
                    return Err(Error::InvalidRequest(format!(
                        "a session name must be 1 to {MAX_SESSION_NAME} bytes without control characters, got {} bytes",
                        n.len()
                    )));
                }
                h.update(b"name\0");
                h.update(n.as_bytes());
            }
            None => {
                h.update(b"conversation\0");
                let mut user = false;
                for (role, text) in chat.texts() {
                    h.update(role.as_bytes());
                    h.update([0]);
                    h.update(text.as_bytes());
                    h.update([0]);
                    if role == "user" {
                        user = true;
                        break;
                    }
                }
                if !user {
                    return Err(Error::InvalidRequest("the conversation holds no user message to route on".into()));
                }
            }
        }
        let mut k = [0u8; 16];
        k.copy_from_slice(&h.finalize()[..16]);
        Ok(SessionKey(k))
    }

    /// The key's 16 bytes.
    pub fn bytes(&self) -> [u8; 16] {
        self.0
    }

    /// The key written as 32 hex digits (as in [`SessionInfo::id`]).
    pub fn parse(hex: &str) -> Result<SessionKey> {
        let bad = || Error::InvalidRequest(format!("a session id is 32 hex digits, got {:?}", hex.chars().take(40).collect::<String>()));
        if hex.len() != 32 || !hex.is_ascii() {
            return Err(bad());
        }
        let mut k = [0u8; 16];
        for (i, b) in k.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(SessionKey(k))
    }
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionKey({self})")
    }
}

/// One model's prediction for a session's task, compactly (in price-table order).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TaskPrediction {
    /// Predicted quality; `None` where the model had no prediction.
    pub quality: Option<f32>,
    /// Predicted answer tokens.
    pub output_tokens: f32,
    /// Neighbour weight behind it.
    pub support: f32,
    /// Effective number of neighbours behind it.
    pub effective_neighbours: f32,
    /// Predicted USD from measured costs, where any.
    pub cost_usd: Option<f32>,
    /// The quality's standard error where a fitted model gave one
    /// ([`ModelPrediction::quality_se`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality_se: Option<f32>,
    /// The answer tokens' standard error ([`ModelPrediction::output_tokens_se`]).
    #[serde(default)]
    pub output_tokens_se: f32,
    /// The measured cost's standard error ([`ModelPrediction::cost_se_usd`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_se_usd: Option<f32>,
}

/// What a session remembers between steps. Serializable, so that a shared store can keep it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SessionState {
    /// The model that served the last step.
    pub model: String,
    /// Prompt tokens its provider holds cached (the last step's prompt).
    pub cached_tokens: u64,
    /// Unix milliseconds until which that cache lives.
    pub cache_until_ms: u64,
    /// The last step's prompt tokens.
    pub last_input_tokens: u64,
    /// Unix milliseconds of the last step.
    pub last_used_ms: u64,
    /// Steps routed so far.
    pub steps: u32,
    /// User turns the task's predictions cover.
    pub user_turns: u32,
    /// Which router data the predictions came from (they are recomputed when it changes).
    pub tag: u64,
    /// The task's predictions, one per priced model in name order.
    pub task: Vec<TaskPrediction>,
    /// A hash of the task (the first user turn): a named session given another task is
    /// assessed afresh.
    #[serde(default)]
    pub task_check: u64,
    /// Why the exemplars do not know the task, when they do not.
    pub unfamiliar: Option<String>,
    /// The task's unfamiliarity (density rule).
    pub unfamiliarity: Option<f32>,
    /// Messages whose tokens are counted in `counted_tokens` (the conversation's first ones).
    pub counted_messages: u32,
    /// Their tokens (with the chat format's per-message overhead).
    pub counted_tokens: u64,
    /// A hash of the last counted message, to notice a rewritten conversation.
    pub counted_check: u64,
}

impl SessionState {
    /// The task's predictions as the policy reads them, for `names` (the price table's models in
    /// order); `None` when they were made for another table.
    pub(crate) fn predictions<'a>(&self, names: impl Iterator<Item = &'a str>) -> Option<Predictions> {
        let names: Vec<&str> = names.collect();
        if names.len() != self.task.len() {
            return None;
        }
        let per_model = names
            .into_iter()
            .zip(&self.task)
            .filter_map(|(m, t)| Some((m, t, t.quality?)))
            .map(|(m, t, quality)| {
                (
                    m.to_string(),
                    ModelPrediction {
                        quality: f64::from(quality),
                        output_tokens: f64::from(t.output_tokens),
                        support: f64::from(t.support),
                        effective_neighbours: f64::from(t.effective_neighbours),
                        cost_usd: t.cost_usd.map(f64::from),
                        quality_se: t.quality_se.map(f64::from),
                        output_tokens_se: f64::from(t.output_tokens_se),
                        cost_se_usd: t.cost_se_usd.map(f64::from),
                    },
                )
            })
            .collect();
        Some(Predictions { per_model, weights: Vec::new() })
    }

    /// Compacts `p` for `names`.
    pub(crate) fn compact<'a>(p: &Predictions, names: impl Iterator<Item = &'a str>) -> Vec<TaskPrediction> {
        names
            .map(|m| match p.per_model.get(m) {
                Some(p) => TaskPrediction {
                    quality: Some(p.quality as f32),
                    output_tokens: p.output_tokens as f32,
                    support: p.support as f32,
                    effective_neighbours: p.effective_neighbours as f32,
                    cost_usd: p.cost_usd.map(|c| c as f32),
                    quality_se: p.quality_se.map(|c| c as f32),
                    output_tokens_se: p.output_tokens_se as f32,
                    cost_se_usd: p.cost_se_usd.map(|c| c as f32),
                },
                None => TaskPrediction {
                    quality: None,
                    output_tokens: 0.0,
                    support: 0.0,
                    effective_neighbours: 0.0,
                    cost_usd: None,
                    quality_se: None,
                    output_tokens_se: 0.0,
                    cost_se_usd: None,
                },
            })
            .collect()
    }
}

/// Where sessions live between steps. Implementations must be cheap to call on every request.
pub trait SessionStore: Send + Sync {
    /// The state of `key`, if kept.
    fn load(&self, key: &SessionKey) -> Result<Option<SessionState>>;
    /// Keeps `state` for `key`.
    fn save(&self, key: &SessionKey, state: &SessionState) -> Result<()>;
    /// Sessions kept now (for reports; may be approximate, and 0 when the store cannot say).
    fn len(&self) -> usize;
    /// Whether none is kept.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Sessions in this process's memory: at most `max_sessions`, least recently used out first.
///
/// ```
/// use semroute::chat::ChatRequest;
/// use semroute::session::{MemorySessions, SessionKey, SessionState, SessionStore};
/// use serde_json::json;
///
/// let key = |task: &str| SessionKey::of(&ChatRequest::user(task), None).unwrap();
/// let state: SessionState = serde_json::from_value(json!({"model": "m", "cached_tokens": 0,
///     "cache_until_ms": 0, "last_input_tokens": 0, "last_used_ms": 0, "steps": 1, "user_turns": 1,
///     "tag": 0, "task": [], "unfamiliar": null, "unfamiliarity": null, "counted_messages": 1,
///     "counted_tokens": 9, "counted_check": 0}))?;
/// let store = MemorySessions::new(2);
/// for task in ["a", "b", "c"] {
///     store.save(&key(task), &state)?;
/// }
/// // At most two kept: the least recently used went first.
/// assert_eq!(store.len(), 2);
/// assert!(store.load(&key("a"))?.is_none() && store.load(&key("c"))?.is_some());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct MemorySessions {
    /// Grown as sessions come (every router has one, most never route a session: a capacity
    /// reserved up front would cost each of them megabytes), held to `capacity` by hand.
    map: Mutex<lru::LruCache<SessionKey, SessionState>>,
    capacity: usize,
}

impl MemorySessions {
    /// An empty store for at most `capacity` sessions (at least one).
    pub fn new(capacity: usize) -> Self {
        MemorySessions { map: Mutex::new(lru::LruCache::unbounded()), capacity: capacity.max(1) }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, lru::LruCache<SessionKey, SessionState>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl fmt::Debug for MemorySessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemorySessions").field("sessions", &self.len()).finish()
    }
}

impl SessionStore for MemorySessions {
    fn load(&self, key: &SessionKey) -> Result<Option<SessionState>> {
        Ok(self.map().get(key).cloned())
    }

    fn save(&self, key: &SessionKey, state: &SessionState) -> Result<()> {
        let mut map = self.map();
        map.put(*key, state.clone());
        while map.len() > self.capacity {
            map.pop_lru();
        }
        Ok(())
    }

    fn len(&self) -> usize {
        self.map().len()
    }
}

/// What a routed step of a session looked like, in its [`RouteDecision`](crate::RouteDecision).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SessionInfo {
    /// The session's key as 32 hex digits (pass it to [`Router::session_served`](crate::Router::session_served)).
    pub id: String,
    /// This step's number, from 1.
    pub step: u32,
    /// The model of the previous step, if the session was known.
    pub previous_model: Option<String>,
    /// Prompt tokens cached at the previous model's provider and still alive.
    pub cached_tokens: u64,
    /// Whether this step changes model.
    pub switched: bool,
    /// Steps the cost of a switch is spread over.
    pub horizon: f64,
    /// Whether the task's predictions were reused from an earlier step (no embedding).
    pub task_reused: bool,
}

/// What a session has cached, as the policy prices it.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheView {
    /// The model whose provider holds the session's cache, and the prompt tokens it holds;
    /// `None` when nothing is cached (the session's first step, or its cache has expired).
    pub held: Option<(String, u64)>,
    /// Prompt tokens new at each step (what the conversation grew by since the last step).
    pub new_tokens: u64,
    /// Steps a switch's cost is spread over.
    pub horizon: f64,
}

/// A session as hard as its hardest recognised turn: each model's prediction becomes the less
/// hopeful of `task`'s and `turn`'s (the longer answer kept).
pub(crate) fn raise(task: &mut Predictions, turn: &Predictions) {
    for (model, p) in &turn.per_model {
        match task.per_model.get_mut(model) {
            Some(q) if p.quality < q.quality => *q = ModelPrediction { output_tokens: q.output_tokens.max(p.output_tokens), ..*p },
            Some(q) => q.output_tokens = q.output_tokens.max(p.output_tokens),
            None => {
                task.per_model.insert(model.clone(), *p);
            }
        }
    }
}

/// Unix time in milliseconds.
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, ms)
}

pub(crate) fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

/// A cheap hash of one message, to notice a conversation rewritten under an unchanged count
/// (SipHash with fixed keys: the same in every replica running this build).
pub(crate) fn message_check(role: &str, text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    role.hash(&mut h);
    text.hash(&mut h);
    h.finish()
}
