//! Chat requests and answers in OpenAI's chat-completions shape, and their translation to and from
//! Anthropic's messages API.
//!
//! OpenAI's shape is the lingua franca of agent frameworks, so it is the shape semroute speaks at
//! its edges: a [`ChatRequest`] is an OpenAI request body (validated), and every answer, whole or
//! streamed, comes back OpenAI-shaped whatever the endpoint's protocol. The
//! `provider::Client` (the `gateway` feature) does the sending; this module only reshapes JSON, so it is
//! pure and testable without a network.
//!
//! ```
//! use semroute::chat::{ChatRequest, Usage};
//! use serde_json::json;
//!
//! let req = ChatRequest::from_json(json!({
//!     "model": "auto",
//!     "messages": [
//!         {"role": "system", "content": "Answer briefly."},
//!         {"role": "user", "content": "What is 6 x 7?"}
//!     ]
//! }))?;
//! assert_eq!(req.model(), Some("auto"));
//! assert_eq!(req.last_user_text().as_deref(), Some("What is 6 x 7?"));
//!
//! // The same request as Anthropic's messages API wants it.
//! let body = req.to_anthropic("claude-haiku-4-5", 1024)?;
//! assert_eq!(body["system"], "Answer briefly.");
//! assert_eq!(body["messages"][0]["role"], "user");
//!
//! // And an Anthropic answer, OpenAI-shaped.
//! let answer = semroute::chat::anthropic_to_openai(&json!({
//!     "id": "msg_1", "model": "claude-haiku-4-5", "stop_reason": "end_turn",
//!     "content": [{"type": "text", "text": "42"}],
//!     "usage": {"input_tokens": 20, "output_tokens": 2}
//! }))?;
//! assert_eq!(answer["choices"][0]["message"]["content"], "42");
//! assert_eq!(Usage::of(&answer), Some(Usage::new(20, 2)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};

/// Tokens billed for one answer.
///
/// `input_tokens` counts every prompt token; of those, `cached_input_tokens` were read from the
/// provider's prompt cache and `cache_write_tokens` were written into it (providers that bill a
/// cache write, such as Anthropic, charge those at their write price).
///
/// ```
/// use semroute::chat::Usage;
/// use serde_json::json;
///
/// // OpenAI reports cache hits under `prompt_tokens_details`.
/// let u = Usage::of(&json!({"usage": {"prompt_tokens": 3000, "completion_tokens": 50,
///                                     "prompt_tokens_details": {"cached_tokens": 2048}}})).unwrap();
/// assert_eq!((u.input_tokens, u.cached_input_tokens), (3000, 2048));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens, cached or not.
    pub input_tokens: u64,
    /// Answer tokens.
    pub output_tokens: u64,
    /// Of the prompt tokens, those read from the provider's prompt cache.
    #[serde(default)]
    pub cached_input_tokens: u64,
    /// Of the prompt tokens, those written into the provider's prompt cache.
    #[serde(default)]
    pub cache_write_tokens: u64,
}

impl Usage {
    /// Prompt and answer tokens, nothing cached.
    pub fn new(input_tokens: u64, output_tokens: u64) -> Usage {
        Usage { input_tokens, output_tokens, ..Usage::default() }
    }

    /// The `usage` of an OpenAI-shaped answer or stream chunk, if it carries one. Cache hits are
    /// read from `prompt_tokens_details.cached_tokens` (OpenAI) or `prompt_cache_hit_tokens`
    /// (DeepSeek); cache writes from `prompt_tokens_details.cache_write_tokens` (what
    /// semroute writes for Anthropic's `cache_creation_input_tokens`). A provider claiming more
    /// cached tokens than prompt tokens is held to the prompt tokens.
    pub fn of(openai: &Value) -> Option<Usage> {
        let u = openai.get("usage")?;
        let input = u.get("prompt_tokens")?.as_u64()?;
        let details = u.get("prompt_tokens_details");
        let detail = |k: &str| details.and_then(|d| d.get(k)).and_then(Value::as_u64);
        let cached = detail("cached_tokens").or_else(|| u.get("prompt_cache_hit_tokens").and_then(Value::as_u64)).unwrap_or(0).min(input);
        let written = detail("cache_write_tokens").unwrap_or(0).min(input - cached);
        Some(Usage {
            input_tokens: input,
            output_tokens: u.get("completion_tokens")?.as_u64()?,
            cached_input_tokens: cached,
            cache_write_tokens: written,
        })
    }

    /// Prompt tokens neither read from nor written to the cache (billed at the input price).
    pub fn uncached_input_tokens(&self) -> u64 {
        self.input_tokens.saturating_sub(self.cached_input_tokens).saturating_sub(self.cache_write_tokens)
    }

    /// Anthropic's `usage` object: its `input_tokens` leaves out what was read from or written to
    /// the cache, so the prompt is the sum of the three.
    fn of_anthropic(u: &Value) -> Usage {
        let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
        let (read, written) = (n("cache_read_input_tokens"), n("cache_creation_input_tokens"));
        Usage {
            input_tokens: n("input_tokens").saturating_add(read).saturating_add(written),
            output_tokens: n("output_tokens"),
            cached_input_tokens: read,
            cache_write_tokens: written,
        }
    }

    fn to_openai(self) -> Value {
        let mut v = json!({"prompt_tokens": self.input_tokens, "completion_tokens": self.output_tokens,
                           "total_tokens": self.input_tokens + self.output_tokens});
        if self.cached_input_tokens > 0 || self.cache_write_tokens > 0 {
            v["prompt_tokens_details"] = json!({"cached_tokens": self.cached_input_tokens});
            if self.cache_write_tokens > 0 {
                v["prompt_tokens_details"]["cache_write_tokens"] = self.cache_write_tokens.into();
            }
        }
        v
    }
}

/// A validated OpenAI chat-completions request body.
///
/// Fields semroute does not know (`tools`, `response_format`, `seed`, ...) are kept and passed
/// through to OpenAI-protocol endpoints untouched.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    body: Map<String, Value>,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidRequest(msg.into())
}

impl ChatRequest {
    /// Validates an OpenAI request body: an object whose `messages` is a non-empty array of
    /// `{role, content}` objects with a known role and string or text-part content.
    pub fn from_json(body: Value) -> Result<Self> {
        let Value::Object(body) = body else {
            return Err(invalid("the request body must be a JSON object"));
        };
        let messages = body
            .get("messages")
            .ok_or_else(|| invalid("field `messages` is missing"))?
            .as_array()
            .ok_or_else(|| invalid("field `messages` must be an array"))?;
        if messages.is_empty() {
            return Err(invalid("field `messages` is empty"));
        }
        for (i, m) in messages.iter().enumerate() {
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(format!("messages[{i}]: field `role` is missing or not a string")))?;
            if !matches!(role, "system" | "developer" | "user" | "assistant" | "tool") {
                return Err(invalid(format!("messages[{i}]: unknown role {role:?}")));
            }
            match m.get("content") {
                Some(Value::String(_)) => {}
                Some(Value::Array(parts)) => {
                    for (j, p) in parts.iter().enumerate() {
                        if p.get("type").and_then(Value::as_str).is_none() {
                            return Err(invalid(format!("messages[{i}].content[{j}]: field `type` is missing")));
                        }
                    }
                }
                // An assistant turn that only calls tools has no content.
                Some(Value::Null) | None if role == "assistant" => {}
                _ => return Err(invalid(format!("messages[{i}]: field `content` must be a string or an array of parts"))),
            }
        }
        if let Some(m) = body.get("model").filter(|m| !m.is_string()) {
            return Err(invalid(format!("field `model` must be a string, got {m}")));
        }
        if let Some(s) = body.get("stream").filter(|s| !s.is_boolean() && !s.is_null()) {
            return Err(invalid(format!("field `stream` must be true or false, got {s}")));
        }
        Ok(ChatRequest { body })
    }

    /// A request holding one user message.
    pub fn user(prompt: &str) -> Self {
        let mut body = Map::new();
        body.insert("messages".into(), json!([{"role": "user", "content": prompt}]));
        ChatRequest { body }
    }

    /// The requested `model`, if any.
    pub fn model(&self) -> Option<&str> {
        self.body.get("model").and_then(Value::as_str)
    }

    /// Whether the answer is to be streamed.
    pub fn stream(&self) -> bool {
        self.body.get("stream").and_then(Value::as_bool).unwrap_or(false)
    }

    /// Whether the caller asked for a final usage chunk (`stream_options.include_usage`).
    pub fn include_usage(&self) -> bool {
        self.body.get("stream_options").and_then(|o| o.get("include_usage")).and_then(Value::as_bool).unwrap_or(false)
    }

    /// The caller's answer-length cap (`max_completion_tokens`, else `max_tokens`).
    pub fn max_tokens(&self) -> Option<u64> {
        ["max_completion_tokens", "max_tokens"].iter().find_map(|k| self.body.get(*k).and_then(Value::as_u64))
    }

    /// The text of every message, in order, as `(role, text)` (for counting the conversation's
    /// tokens); non-text parts are left out.
    pub fn texts(&self) -> impl Iterator<Item = (&str, String)> {
        self.messages().iter().map(|m| (m.get("role").and_then(Value::as_str).unwrap_or(""), content_text(m.get("content"))))
    }

    /// The text of the last user message (what a router routes on).
    pub fn last_user_text(&self) -> Option<String> {
        self.messages().iter().rev().find(|m| m.get("role").and_then(Value::as_str) == Some("user")).map(|m| content_text(m.get("content")))
    }

    /// The text of the first user message (an agent session's task).
    pub fn first_user_text(&self) -> Option<String> {
        self.messages().iter().find(|m| m.get("role").and_then(Value::as_str) == Some("user")).map(|m| content_text(m.get("content")))
    }

    fn messages(&self) -> &[Value] {
        self.body.get("messages").and_then(Value::as_array).map_or(&[], Vec::as_slice)
    }

    /// The body for an OpenAI-protocol endpoint serving `model`: the caller's fields, with the
    /// model replaced and, when streaming, a usage chunk requested (to learn the real cost).
    /// `default_max_tokens` applies when the caller set no cap.
    pub fn to_openai(&self, model: &str, default_max_tokens: u64) -> Value {
        let mut body = self.body.clone();
        body.insert("model".into(), model.into());
        if self.max_tokens().is_none() {
            body.insert("max_tokens".into(), default_max_tokens.into());
        }
        if self.stream() {
            let opts = body.entry("stream_options").or_insert_with(|| json!({}));
            if let Value::Object(o) = opts {
                o.insert("include_usage".into(), true.into());
            }
        }
        Value::Object(body)
    }

    /// The body for Anthropic's messages API serving `model`. System and developer messages go to
    /// `system`; text parts, function `tools` and `tool_choice`, assistant `tool_calls` (as
    /// `tool_use` blocks), `tool` messages (as `tool_result` blocks), `stop`, `temperature`,
    /// `top_p`, `max_tokens` and `stream` are translated, and consecutive turns of one role merged.
    /// Images, `response_format`, `n` and `logprobs` are not translated yet: such a request is an
    /// [`Error::InvalidRequest`] naming what it holds, never silently changed.
    pub fn to_anthropic(&self, model: &str, default_max_tokens: u64) -> Result<Value> {
        for key in ["functions", "response_format", "n", "logprobs"] {
            if self.body.get(key).is_some_and(|v| !v.is_null()) {
                return Err(invalid(format!(
                    "field `{key}` is not translated to Anthropic endpoints (yet); name an OpenAI-protocol model instead"
                )));
            }
        }
        let mut system = Vec::new();
        // Each message as content blocks, so text, tool calls and tool results can share a turn.
        let mut messages: Vec<Value> = Vec::new();
        for (i, m) in self.messages().iter().enumerate() {
            let role = m.get("role").and_then(Value::as_str).unwrap_or("");
            if let Some(Value::Array(parts)) = m.get("content") {
                if let Some(p) = parts.iter().find(|p| p.get("type").and_then(Value::as_str) != Some("text")) {
                    return Err(invalid(format!(
                        "messages[{i}]: content part of type {} is not translated to Anthropic endpoints (yet)",
                        p.get("type").unwrap_or(&Value::Null)
                    )));
                }
            }
            let text = content_text(m.get("content"));
            let (turn, mut blocks) = match role {
                "system" | "developer" => {
                    system.push(text);
                    continue;
                }
                "user" | "assistant" => {
                    let mut blocks = Vec::new();
                    if !text.is_empty() {
                        blocks.push(json!({"type": "text", "text": text}));
                    }
                    if role == "assistant" {
                        for (j, call) in m.get("tool_calls").and_then(Value::as_array).into_iter().flatten().enumerate() {
                            blocks.push(tool_use_block(call).map_err(|e| invalid(format!("messages[{i}].tool_calls[{j}]: {e}")))?);
                        }
                    }
                    (role, blocks)
                }
                "tool" => {
                    let id = m
                        .get("tool_call_id")
                        .and_then(Value::as_str)
                        .ok_or_else(|| invalid(format!("messages[{i}]: a tool message needs `tool_call_id`")))?;
                    ("user", vec![json!({"type": "tool_result", "tool_use_id": id, "content": text})])
                }
                _ => unreachable!("roles are checked in from_json"),
            };
            // Anthropic wants alternating turns: merge consecutive turns of one role.
            match messages.last_mut() {
                Some(last) if last["role"] == turn => {
                    if let Some(content) = last["content"].as_array_mut() {
                        content.append(&mut blocks);
                    }
                }
                _ => messages.push(json!({"role": turn, "content": blocks})),
            }
        }
        if let Some(empty) = messages.iter().position(|m| m["content"].as_array().is_some_and(Vec::is_empty)) {
            return Err(invalid(format!("a {} turn has no content (Anthropic endpoints need some)", messages[empty]["role"])));
        }
        // A turn that is one text block is sent as a plain string, the API's simplest form.
        for m in &mut messages {
            let single = m["content"].as_array().filter(|c| c.len() == 1 && c[0]["type"] == "text").map(|c| c[0]["text"].clone());
            if let Some(text) = single {
                m["content"] = text;
            }
        }
        if messages.first().is_some_and(|m| m["role"] != "user") {
            return Err(invalid("the first non-system message must be from the user for Anthropic endpoints"));
        }
        if messages.is_empty() {
            return Err(invalid("the request holds no user message"));
        }
        let mut body = Map::new();
        body.insert("model".into(), model.into());
        body.insert("max_tokens".into(), self.max_tokens().unwrap_or(default_max_tokens).into());
        body.insert("messages".into(), messages.into());
        if !system.is_empty() {
            body.insert("system".into(), system.join("\n\n").into());
        }
        for key in ["temperature", "top_p"] {
            if let Some(v) = self.body.get(key).filter(|v| !v.is_null()) {
                body.insert(key.into(), v.clone());
            }
        }
        match self.body.get("stop") {
            Some(Value::String(s)) => {
                body.insert("stop_sequences".into(), json!([s]));
            }
            Some(Value::Array(a)) => {
                body.insert("stop_sequences".into(), a.clone().into());
            }
            _ => {}
        }
        if let Some(tools) = self.body.get("tools").filter(|t| !t.is_null()) {
            let tools = tools.as_array().ok_or_else(|| invalid("field `tools` must be an array"))?;
            let mut out = Vec::with_capacity(tools.len());
            for (i, t) in tools.iter().enumerate() {
                let f = t
                    .get("function")
                    .filter(|_| t.get("type").and_then(Value::as_str) == Some("function"))
                    .ok_or_else(|| invalid(format!("tools[{i}]: only `function` tools are translated")))?;
                let name =
                    f.get("name").and_then(Value::as_str).ok_or_else(|| invalid(format!("tools[{i}].function: `name` is missing")))?;
                let mut tool =
                    json!({"name": name, "input_schema": f.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object"}))});
                if let Some(d) = f.get("description").filter(|d| d.is_string()) {
                    tool["description"] = d.clone();
                }
                out.push(tool);
            }
            body.insert("tools".into(), out.into());
        }
        if let Some(choice) = self.body.get("tool_choice").filter(|c| !c.is_null()) {
            let translated = match choice {
                Value::String(s) if s == "auto" => json!({"type": "auto"}),
                Value::String(s) if s == "none" => json!({"type": "none"}),
                Value::String(s) if s == "required" => json!({"type": "any"}),
                Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
                    let name = o.get("function").and_then(|f| f.get("name")).and_then(Value::as_str);
                    json!({"type": "tool", "name": name.ok_or_else(|| invalid("tool_choice.function.name is missing"))?})
                }
                other => return Err(invalid(format!("field `tool_choice`: {other} is not understood"))),
            };
            body.insert("tool_choice".into(), translated);
        }
        if self.stream() {
            body.insert("stream".into(), true.into());
        }
        Ok(Value::Object(body))
    }
}

/// An OpenAI `tool_calls` entry as an Anthropic `tool_use` block.
fn tool_use_block(call: &Value) -> std::result::Result<Value, String> {
    let id = call.get("id").and_then(Value::as_str).ok_or("`id` is missing")?;
    let f = call.get("function").ok_or("`function` is missing")?;
    let name = f.get("name").and_then(Value::as_str).ok_or("`function.name` is missing")?;
    let args = f.get("arguments").and_then(Value::as_str).unwrap_or("{}");
    let input: Value = serde_json::from_str(if args.trim().is_empty() { "{}" } else { args })
        .map_err(|e| format!("`function.arguments` is not JSON: {e}"))?;
    Ok(json!({"type": "tool_use", "id": id, "name": name, "input": input}))
}

/// The text of a message's `content`: the string, or its text parts joined.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Anthropic's `stop_reason` as OpenAI's `finish_reason`.
fn finish_reason(stop_reason: Option<&str>) -> Value {
    match stop_reason {
        None => Value::Null,
        Some("max_tokens") => "length".into(),
        Some("tool_use") => "tool_calls".into(),
        Some("refusal") => "content_filter".into(),
        Some(_) => "stop".into(),
    }
}

/// Marks an Anthropic messages body (as [`ChatRequest::to_anthropic`] builds it) for Anthropic's
/// prompt cache: a `cache_control` breakpoint on the system prompt and one on the last block of
/// the last message, so the whole conversation so far is cached and the next turn of an agent
/// loop reads it at the cached price (writes cost 1.25 times the input price; reads 0.1 times).
///
/// ```
/// use semroute::chat::{mark_anthropic_cache, ChatRequest};
/// use serde_json::json;
///
/// let req = ChatRequest::from_json(json!({"messages": [
///     {"role": "system", "content": "You are a coding agent. <tools ...>"},
///     {"role": "user", "content": "Fix the failing test."}]}))?;
/// let mut body = req.to_anthropic("claude-sonnet-5-5", 1024)?;
/// mark_anthropic_cache(&mut body);
/// assert_eq!(body["system"][0]["cache_control"]["type"], "ephemeral");
/// assert_eq!(body["messages"][0]["content"][0]["cache_control"]["type"], "ephemeral");
/// # Ok::<(), semroute::Error>(())
/// ```
pub fn mark_anthropic_cache(body: &mut Value) {
    let mark = json!({"type": "ephemeral"});
    if let Some(Value::String(text)) = body.get("system") {
        body["system"] = json!([{"type": "text", "text": text, "cache_control": mark}]);
    }
    let Some(last) = body.get_mut("messages").and_then(Value::as_array_mut).and_then(|m| m.last_mut()) else { return };
    if let Some(Value::String(text)) = last.get("content") {
        last["content"] = json!([{"type": "text", "text": text}]);
    }
    if let Some(block) = last.get_mut("content").and_then(Value::as_array_mut).and_then(|c| c.last_mut()) {
        block["cache_control"] = mark;
    }
}

/// Why an answer could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

/// An Anthropic messages answer as an OpenAI `chat.completion`.
pub fn anthropic_to_openai(v: &Value) -> std::result::Result<Value, Malformed> {
    if v.get("type").and_then(Value::as_str) == Some("error") {
        return Err(Malformed(format!("error object in a 2xx answer: {}", v.get("error").unwrap_or(&Value::Null))));
    }
    let blocks = v.get("content").and_then(Value::as_array).ok_or_else(|| Malformed("no `content` array".into()))?;
    let text: String = blocks
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect();
    let calls: Vec<Value> = blocks
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_use"))
        .map(|b| {
            json!({"id": b.get("id").cloned().unwrap_or(Value::Null), "type": "function",
                   "function": {"name": b.get("name").cloned().unwrap_or(Value::Null),
                                "arguments": b.get("input").map_or_else(|| "{}".to_string(), Value::to_string)}})
        })
        .collect();
    let mut out = json!({
        "id": v.get("id").cloned().unwrap_or_else(|| "msg".into()),
        "object": "chat.completion",
        "created": now_secs(),
        "model": v.get("model").cloned().unwrap_or(Value::Null),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": finish_reason(v.get("stop_reason").and_then(Value::as_str))}],
    });
    if !calls.is_empty() {
        let message = &mut out["choices"][0]["message"];
        if text.is_empty() {
            message["content"] = Value::Null;
        }
        message["tool_calls"] = calls.into();
    }
    if let Some(u) = v.get("usage").filter(|u| u.get("input_tokens").and_then(Value::as_u64).is_some()) {
        if u.get("output_tokens").and_then(Value::as_u64).is_some() {
            out["usage"] = Usage::of_anthropic(u).to_openai();
        }
    }
    Ok(out)
}

/// Checks that an OpenAI-protocol answer has the shape clients rely on.
pub fn check_openai(v: &Value) -> std::result::Result<(), Malformed> {
    let choice = v.get("choices").and_then(|c| c.get(0)).ok_or_else(|| Malformed("no `choices[0]` in the answer".into()))?;
    let message = choice.get("message").ok_or_else(|| Malformed("no `choices[0].message`".into()))?;
    match message.get("content") {
        Some(Value::String(_) | Value::Null) | None => Ok(()),
        Some(other) => Err(Malformed(format!("`content` is not a string: {other}"))),
    }
}

/// Turns Anthropic's streaming events into OpenAI `chat.completion.chunk` objects, one event at
/// a time, keeping what later chunks need (id, model, input tokens).
///
/// ```
/// use semroute::chat::{AnthropicStream, Usage};
/// use serde_json::json;
///
/// let mut s = AnthropicStream::default();
/// let mut chunks = Vec::new();
/// for (event, data) in [
///     ("message_start", json!({"type":"message_start","message":{"id":"m1","model":"claude","usage":{"input_tokens":9,"output_tokens":1}}})),
///     ("content_block_delta", json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}})),
///     ("message_delta", json!({"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":3}})),
///     ("message_stop", json!({"type":"message_stop"})),
/// ] {
///     chunks.extend(s.event(event, &data)?);
/// }
/// assert!(s.finished());
/// assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "Hi");
/// assert_eq!(chunks[2]["choices"][0]["finish_reason"], "stop");
/// assert_eq!(Usage::of(chunks.last().unwrap()), Some(Usage::new(9, 3)));
/// # Ok::<(), semroute::chat::Malformed>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct AnthropicStream {
    id: String,
    model: Value,
    created: u64,
    usage: Usage,
    finished: bool,
    /// Anthropic content-block index to OpenAI tool-call index.
    tools: Vec<(u64, usize)>,
}

impl AnthropicStream {
    /// Whether `message_stop` has been seen.
    pub fn finished(&self) -> bool {
        self.finished
    }

    fn chunk(&self, delta: Value, finish: Value) -> Value {
        json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    }

    /// The chunks for one event (`event` is the SSE event name; Anthropic repeats it as `type`).
    /// An `error` event is an error carrying its message.
    pub fn event(&mut self, event: &str, data: &Value) -> std::result::Result<Vec<Value>, Malformed> {
        let kind = data.get("type").and_then(Value::as_str).unwrap_or(event);
        Ok(match kind {
            "message_start" => {
                let m = data.get("message").ok_or_else(|| Malformed("message_start without `message`".into()))?;
                self.id = m.get("id").and_then(Value::as_str).unwrap_or("msg").to_string();
                self.model = m.get("model").cloned().unwrap_or(Value::Null);
                self.created = now_secs();
                self.usage = m.get("usage").map(Usage::of_anthropic).unwrap_or_default();
                vec![self.chunk(json!({"role": "assistant", "content": ""}), Value::Null)]
            }
            "content_block_start" => match data.get("content_block") {
                Some(b) if b.get("type").and_then(Value::as_str) == Some("tool_use") => {
                    let block = data.get("index").and_then(Value::as_u64).unwrap_or(0);
                    let index = self.tools.len();
                    self.tools.push((block, index));
                    let call = json!({"index": index, "id": b.get("id").cloned().unwrap_or(Value::Null), "type": "function",
                                      "function": {"name": b.get("name").cloned().unwrap_or(Value::Null), "arguments": ""}});
                    vec![self.chunk(json!({"tool_calls": [call]}), Value::Null)]
                }
                _ => Vec::new(),
            },
            "content_block_delta" => match data.get("delta") {
                Some(d) if d.get("type").and_then(Value::as_str) == Some("text_delta") => {
                    let text = d.get("text").and_then(Value::as_str).unwrap_or("");
                    vec![self.chunk(json!({"content": text}), Value::Null)]
                }
                Some(d) if d.get("type").and_then(Value::as_str) == Some("input_json_delta") => {
                    let block = data.get("index").and_then(Value::as_u64).unwrap_or(0);
                    let Some(&(_, index)) = self.tools.iter().find(|(b, _)| *b == block) else {
                        return Err(Malformed(format!("input_json_delta for block {block}, which is not a tool_use block")));
                    };
                    let part = d.get("partial_json").and_then(Value::as_str).unwrap_or("");
                    vec![self.chunk(json!({"tool_calls": [{"index": index, "function": {"arguments": part}}]}), Value::Null)]
                }
                _ => Vec::new(),
            },
            "message_delta" => {
                if let Some(o) = data.get("usage").and_then(|u| u.get("output_tokens")).and_then(Value::as_u64) {
                    self.usage.output_tokens = o;
                }
                let stop = data.get("delta").and_then(|d| d.get("stop_reason")).and_then(Value::as_str);
                vec![self.chunk(json!({}), finish_reason(stop))]
            }
            "message_stop" => {
                self.finished = true;
                vec![json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                            "choices": [], "usage": self.usage.to_openai()})]
            }
            "error" => {
                return Err(Malformed(format!("the provider reported an error mid-stream: {}", data.get("error").unwrap_or(data))));
            }
            // ping, content_block_stop and future event kinds carry nothing to pass on.
            _ => Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_tokens_from_every_dialect_and_held_to_the_prompt() {
        let of = |u: Value| Usage::of(&json!({ "usage": u })).unwrap();
        let deepseek =
            of(json!({"prompt_tokens": 100, "completion_tokens": 5, "prompt_cache_hit_tokens": 64, "prompt_cache_miss_tokens": 36}));
        assert_eq!((deepseek.input_tokens, deepseek.cached_input_tokens), (100, 64));
        let liar = of(json!({"prompt_tokens": 10, "completion_tokens": 1,
                             "prompt_tokens_details": {"cached_tokens": 1_000_000, "cache_write_tokens": 5}}));
        assert_eq!((liar.cached_input_tokens, liar.cache_write_tokens), (10, 0));
        let anthropic = anthropic_to_openai(&json!({"content": [{"type": "text", "text": "ok"}], "usage": {
            "input_tokens": 3, "output_tokens": 2, "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 200}}))
        .unwrap();
        assert_eq!(
            Usage::of(&anthropic),
            Some(Usage { input_tokens: 1203, output_tokens: 2, cached_input_tokens: 1000, cache_write_tokens: 200 })
        );
        let mut s = AnthropicStream::default();
        let start = json!({"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 3, "output_tokens": 1,
                           "cache_read_input_tokens": 50, "cache_creation_input_tokens": 7}}});
        s.event("message_start", &start).unwrap();
        s.event("message_delta", &json!({"type": "message_delta", "delta": {}, "usage": {"output_tokens": 9}})).unwrap();
        let last = s.event("message_stop", &json!({"type": "message_stop"})).unwrap();
        assert_eq!(Usage::of(&last[0]), Some(Usage { input_tokens: 60, output_tokens: 9, cached_input_tokens: 50, cache_write_tokens: 7 }));
    }

    #[test]
    fn rejects_bad_requests_with_the_field() {
        for (body, want) in [
            (json!([1]), "must be a JSON object"),
            (json!({}), "`messages` is missing"),
            (json!({"messages": []}), "`messages` is empty"),
            (json!({"messages": [{"role": "wizard", "content": "x"}]}), "messages[0]: unknown role"),
            (json!({"messages": [{"role": "user"}]}), "messages[0]: field `content`"),
            (json!({"messages": [{"role": "user", "content": [{"text": "x"}]}]}), "messages[0].content[0]"),
            (json!({"model": 3, "messages": [{"role": "user", "content": "x"}]}), "`model` must be a string"),
        ] {
            let e = ChatRequest::from_json(body).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn anthropic_translation_merges_turns_and_refuses_tools() {
        let req = ChatRequest::from_json(json!({"messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "a"},
            {"role": "user", "content": [{"type": "text", "text": "b"}]},
            {"role": "assistant", "content": "c"},
            {"role": "user", "content": "d"}],
            "stop": "END", "temperature": 0.2, "stream": true, "max_completion_tokens": 77}))
        .unwrap();
        let b = req.to_anthropic("m", 1024).unwrap();
        assert_eq!(b["messages"].as_array().unwrap().len(), 3);
        assert_eq!(b["messages"][0]["content"], json!([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]));
        assert_eq!(b["stop_sequences"], json!(["END"]));
        assert_eq!(b["max_tokens"], 77);
        assert_eq!(b["stream"], true);
        let o = req.to_openai("real-id", 1024);
        assert_eq!(o["model"], "real-id");
        assert_eq!(o["stream_options"]["include_usage"], true);
        assert_eq!(o["max_completion_tokens"], 77);
        assert!(o.get("max_tokens").is_none());

        let bad = ChatRequest::from_json(json!({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]})).unwrap();
        assert!(bad.to_anthropic("m", 10).unwrap_err().to_string().contains("tools[0]"));
        let images =
            ChatRequest::from_json(json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}))
                .unwrap();
        assert!(images.to_anthropic("m", 10).unwrap_err().to_string().contains("image_url"));
    }

    #[test]
    fn tool_calls_translate_both_ways() {
        let req = ChatRequest::from_json(json!({
            "tools": [{"type": "function", "function": {"name": "weather", "description": "d",
                       "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": {"type": "function", "function": {"name": "weather"}},
            "messages": [
                {"role": "user", "content": "Weather in Oslo?"},
                {"role": "assistant", "content": null,
                 "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "-3 C, snow"}]}))
        .unwrap();
        let b = req.to_anthropic("m", 100).unwrap();
        assert_eq!(b["tools"][0]["input_schema"]["properties"]["city"]["type"], "string");
        assert_eq!(b["tool_choice"], json!({"type": "tool", "name": "weather"}));
        assert_eq!(
            b["messages"][1]["content"][0],
            json!({"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Oslo"}})
        );
        assert_eq!(
            b["messages"][2],
            json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "-3 C, snow"}]})
        );

        let answer = anthropic_to_openai(&json!({"id": "m1", "model": "c", "stop_reason": "tool_use",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Bergen"}}]}))
        .unwrap();
        let m = &answer["choices"][0]["message"];
        assert_eq!(m["content"], Value::Null);
        assert_eq!(m["tool_calls"][0]["function"]["arguments"], "{\"city\":\"Bergen\"}");
        assert_eq!(answer["choices"][0]["finish_reason"], "tool_calls");

        let mut s = AnthropicStream::default();
        s.event("message_start", &json!({"type": "message_start", "message": {"id": "m", "model": "c", "usage": {"input_tokens": 3}}}))
            .unwrap();
        let start = s
            .event(
                "content_block_start",
                &json!({"type": "content_block_start", "index": 1,
                   "content_block": {"type": "tool_use", "id": "toolu_9", "name": "weather", "input": {}}}),
            )
            .unwrap();
        assert_eq!(start[0]["choices"][0]["delta"]["tool_calls"][0]["id"], "toolu_9");
        let part = s
            .event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": 1,
                   "delta": {"type": "input_json_delta", "partial_json": "{\"ci"}}),
            )
            .unwrap();
        assert_eq!(part[0]["choices"][0]["delta"]["tool_calls"][0], json!({"index": 0, "function": {"arguments": "{\"ci"}}));
    }

    #[test]
    fn stream_error_event_is_an_error() {
        let mut s = AnthropicStream::default();
        let e = s.event("error", &json!({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})).unwrap_err();
        assert!(e.0.contains("overloaded_error"));
        assert!(!s.finished());
    }
}
