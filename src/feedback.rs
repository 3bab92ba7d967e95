//! Feedback on answered prompts: how good the chosen model's answer was, what it really cost. The
//! router learns from it while it serves ([`Router::learn`](crate::Router::learn)).
//!
//! One piece of [`Feedback`] becomes a measured exemplar with a result for that one model, so
//! later prompts near it see what that model did there. With a feedback log
//! ([`RouterBuilder::feedback_log`](crate::RouterBuilder::feedback_log)) each piece is synced to
//! disk before `learn` returns, and the log is replayed when a router starts: a crash loses nothing
//! that was acknowledged.
//!
//! ```
//! use semroute::feedback::Feedback;
//! use semroute::exemplar::Grade;
//!
//! let fb = Feedback::new("req-42", "Indent this JSON: {\"a\":1}", "deepseek-flash", 1.0, 18);
//! let ex = fb.to_exemplar();
//! assert_eq!(ex.id, "feedback:req-42");
//! let Grade::Measured { results } = &ex.grade else { unreachable!() };
//! assert_eq!(results["deepseek-flash"].quality, 1.0);
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::exemplar::{Exemplar, Grade, ModelResult};
use crate::pricing::PriceTable;

/// What happened when one prompt was answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Feedback {
    /// [`journal::SCHEMA_VERSION`](crate::journal::SCHEMA_VERSION) as written to the feedback
    /// log (0: written before versions).
    #[serde(default)]
    pub schema_version: u32,
    /// Unique id (a request or decision id); the exemplar's id is `feedback:<id>`.
    pub id: String,
    /// The prompt that was routed.
    pub prompt: String,
    /// The model that answered (a price-table name).
    pub model: String,
    /// How good the answer was, in `[0, 1]` (1 = good, 0 = bad).
    pub quality: f64,
    /// Answer tokens the provider billed.
    pub output_tokens: u32,
    /// USD the answer cost, when known (kept in the log, not used for routing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// Kind of work, if known (default `feedback`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Language of the prompt, if known (default `unknown`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
}

impl Feedback {
    /// Feedback with the required fields.
    pub fn new(id: impl Into<String>, prompt: impl Into<String>, model: impl Into<String>, quality: f64, output_tokens: u32) -> Self {
        Feedback {
            schema_version: crate::journal::SCHEMA_VERSION,
            id: id.into(),
            prompt: prompt.into(),
            model: model.into(),
            quality,
            output_tokens,
            cost_usd: None,
            category: None,
            language: None,
        }
    }

    /// With what the answer cost.
    pub fn with_cost_usd(mut self, usd: f64) -> Self {
        self.cost_usd = Some(usd);
        self
    }

    /// With the kind of work.
    pub fn with_category(mut self, category: impl Into<String>) -> Self {
        self.category = Some(category.into());
        self
    }

    /// With the prompt's language.
    pub fn with_language(mut self, language: impl Into<String>) -> Self {
        self.language = Some(language.into());
        self
    }

    /// Checks the fields against `prices`; the error names the feedback and the field.
    pub fn check(&self, prices: &PriceTable) -> Result<()> {
        let bad = |field: &str, msg: String| Error::InvalidRequest(format!("feedback {:?}: field `{field}`: {msg}", self.id));
        if self.id.trim().is_empty() {
            return Err(bad("id", "is empty".into()));
        }
        if self.prompt.trim().is_empty() {
            return Err(bad("prompt", "is empty".into()));
        }
        if !(self.quality.is_finite() && (0.0..=1.0).contains(&self.quality)) {
            return Err(bad("quality", format!("must be within [0, 1], got {}", self.quality)));
        }
        if let Some(c) = self.cost_usd.filter(|c| !(c.is_finite() && *c >= 0.0)) {
            return Err(bad("cost_usd", format!("must be a non-negative amount, got {c}")));
        }
        prices.require(&self.model, &format!("feedback {:?}", self.id))?;
        Ok(())
    }

    /// The measured exemplar this feedback teaches: the prompt, with a result for one model.
    pub fn to_exemplar(&self) -> Exemplar {
        let mut results = BTreeMap::new();
        results.insert(self.model.clone(), ModelResult { quality: self.quality, output_tokens: self.output_tokens, cost_usd: None });
        Exemplar {
            id: format!("feedback:{}", self.id),
            prompt: self.prompt.clone(),
            category: self.category.clone().unwrap_or_else(|| "feedback".into()),
            language: self.language.clone().unwrap_or_else(|| "unknown".into()),
            source: Some("feedback".into()),
            pair: None,
            grade: Grade::Measured { results },
        }
    }
}
