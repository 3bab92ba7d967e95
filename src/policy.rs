//! Choosing a model: the cheapest one whose predicted quality clears the bar, within the
//! request's [`Constraints`], with a safe fallback when the exemplars know nothing close.
//!
//! ```
//! use semroute::policy::Constraints;
//!
//! // Only US or EU providers, never more than a cent per prompt, and no Opus.
//! let c = Constraints::default()
//!     .allow_jurisdictions(["US", "EU"])
//!     .block_models(["claude-opus-4-1"])
//!     .max_cost_usd(0.01);
//! assert_eq!(c.max_cost_usd, Some(0.01));
//! ```

use serde::{Deserialize, Serialize};

use crate::decision::Candidate;
use crate::predict::Predictions;
use crate::pricing::{ModelPrice, PriceTable};

/// Per-request limits on which models may be chosen. Empty lists mean "no limit".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Constraints {
    /// If not empty, only these providers.
    pub allow_providers: Vec<String>,
    /// Never these providers.
    pub block_providers: Vec<String>,
    /// If not empty, only these models.
    pub allow_models: Vec<String>,
    /// Never these models.
    pub block_models: Vec<String>,
    /// If not empty, only providers whose jurisdiction is listed (models without one are excluded).
    pub allow_jurisdictions: Vec<String>,
    /// Never providers of these jurisdictions.
    pub block_jurisdictions: Vec<String>,
    /// Upper bound on the expected USD of one prompt.
    pub max_cost_usd: Option<f64>,
    /// Overrides the router's quality bar for this request.
    pub quality_bar: Option<f64>,
}

fn strings<I: IntoIterator<Item = S>, S: Into<String>>(items: I) -> Vec<String> {
    items.into_iter().map(Into::into).collect()
}

impl Constraints {
    /// Only these providers.
    pub fn allow_providers<I: IntoIterator<Item = S>, S: Into<String>>(mut self, p: I) -> Self {
        self.allow_providers = strings(p);
        self
    }
    /// Never these providers.
    pub fn block_providers<I: IntoIterator<Item = S>, S: Into<String>>(mut self, p: I) -> Self {
        self.block_providers = strings(p);
        self
    }
    /// Only these models.
    pub fn allow_models<I: IntoIterator<Item = S>, S: Into<String>>(mut self, m: I) -> Self {
        self.allow_models = strings(m);
        self
    }
    /// Never these models.
    pub fn block_models<I: IntoIterator<Item = S>, S: Into<String>>(mut self, m: I) -> Self {
        self.block_models = strings(m);
        self
    }
    /// Only these jurisdictions.
    pub fn allow_jurisdictions<I: IntoIterator<Item = S>, S: Into<String>>(mut self, j: I) -> Self {
        self.allow_jurisdictions = strings(j);
        self
    }
    /// Never these jurisdictions.
    pub fn block_jurisdictions<I: IntoIterator<Item = S>, S: Into<String>>(mut self, j: I) -> Self {
        self.block_jurisdictions = strings(j);
        self
    }
    /// At most this many USD per prompt.
    pub fn max_cost_usd(mut self, usd: f64) -> Self {
        self.max_cost_usd = Some(usd);
        self
    }
    /// A quality bar for this request.
    pub fn quality_bar(mut self, bar: f64) -> Self {
        self.quality_bar = Some(bar);
        self
    }

    /// Why `model` is excluded by the provider / model / jurisdiction rules, if it is.
    fn rule_out(&self, model: &str, price: &ModelPrice) -> Option<String> {
        let eq = |a: &String, b: &str| a.eq_ignore_ascii_case(b);
        if !self.allow_models.is_empty() && !self.allow_models.iter().any(|m| eq(m, model)) {
            return Some("not in the allowed models".into());
        }
        if self.block_models.iter().any(|m| eq(m, model)) {
            return Some("model is blocked".into());
        }
        if !self.allow_providers.is_empty() && !self.allow_providers.iter().any(|p| eq(p, &price.provider)) {
            return Some(format!("provider {} is not allowed", price.provider));
        }
        if self.block_providers.iter().any(|p| eq(p, &price.provider)) {
            return Some(format!("provider {} is blocked", price.provider));
        }
        let j = price.jurisdiction.as_deref();
        if !self.allow_jurisdictions.is_empty() && !j.is_some_and(|j| self.allow_jurisdictions.iter().any(|a| eq(a, j))) {
            return Some(format!("jurisdiction {} is not allowed", j.unwrap_or("unknown")));
        }
        if let Some(j) = j.filter(|j| self.block_jurisdictions.iter().any(|b| eq(b, j))) {
            return Some(format!("jurisdiction {j} is blocked"));
        }
        None
    }
}

/// The outcome of [`choose`]: the candidates (cheapest first) and which one won.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// Every priced model, cheapest expected cost first.
    pub candidates: Vec<Candidate>,
    /// Index into `candidates` of the chosen model, or `None` when every model is excluded.
    pub chosen: Option<usize>,
    /// Whether the fallback model was used.
    pub fallback: bool,
    /// Why.
    pub reason: String,
}

/// The inputs of one choice.
#[derive(Debug, Clone, Copy)]
pub struct ChoiceInput<'a> {
    /// Predictions from the neighbours.
    pub predictions: &'a Predictions,
    /// Prices of every model.
    pub prices: &'a PriceTable,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Similarity of the nearest exemplar (`None` without neighbours).
    pub top_similarity: Option<f32>,
    /// Below this similarity the exemplars are not trusted and the fallback is used.
    pub min_similarity: f32,
    /// The quality the chosen model must reach.
    pub quality_bar: f64,
    /// The safe model used when the exemplars are not trusted.
    pub fallback_model: &'a str,
    /// Answer length assumed for models without a prediction.
    pub default_output_tokens: u64,
}

/// Chooses a model (see the module docs).
pub fn choose(input: ChoiceInput<'_>, constraints: &Constraints) -> Choice {
    let ChoiceInput { predictions, prices, input_tokens, quality_bar, .. } = input;
    let mut candidates: Vec<Candidate> = prices
        .iter()
        .map(|(model, price)| {
            let p = predictions.per_model.get(model);
            let out = p.map_or(input.default_output_tokens, |p| p.output_tokens.round().max(0.0) as u64);
            let cost = price.cost_usd(input_tokens, out);
            let mut excluded = constraints.rule_out(model, price);
            if let Some(window) = price.context_window.filter(|w| excluded.is_none() && input_tokens.saturating_add(out) > *w) {
                excluded = Some(format!("prompt ({input_tokens} tokens) + answer ({out}) exceed its context window of {window}"));
            }
            if excluded.is_none() {
                if let Some(max) = constraints.max_cost_usd.filter(|max| cost > *max) {
                    excluded = Some(format!("expected cost ${cost:.6} is over the limit ${max:.6}"));
                }
            }
            Candidate {
                model: model.to_string(),
                provider: price.provider.clone(),
                tier: price.tier,
                predicted_quality: p.map(|p| p.quality),
                predicted_output_tokens: out,
                expected_cost_usd: cost,
                clears_bar: p.is_some_and(|p| p.quality + 1e-9 >= quality_bar),
                excluded,
            }
        })
        .collect();
    candidates.sort_by(|a, b| a.expected_cost_usd.total_cmp(&b.expected_cost_usd).then_with(|| a.model.cmp(&b.model)));

    let eligible = |c: &Candidate| c.excluded.is_none();
    if !candidates.iter().any(eligible) {
        return Choice { candidates, chosen: None, fallback: false, reason: "every model is excluded".into() };
    }

    let trusted = input.top_similarity.is_some_and(|s| s >= input.min_similarity);
    if !trusted {
        let why = match input.top_similarity {
            Some(s) => format!("the nearest exemplar is only {s:.3} similar (below {:.3})", input.min_similarity),
            None => "there are no exemplars to compare with".into(),
        };
        let fallback = candidates.iter().position(|c| c.model == input.fallback_model && eligible(c));
        let (chosen, reason) = match fallback {
            Some(i) => (i, format!("fallback to the safe model {}: {why}", input.fallback_model)),
            None => {
                // The fallback itself is excluded: take the highest tier allowed, cheapest within it.
                let i = best_by(&candidates, |c| (c.tier as u8) as f64).expect("some candidate is eligible");
                (i, format!("fallback: {why}; the safe model {} is excluded, so the strongest allowed tier", input.fallback_model))
            }
        };
        return Choice { candidates, chosen: Some(chosen), fallback: true, reason };
    }

    if let Some(i) = candidates.iter().position(|c| eligible(c) && c.clears_bar) {
        let q = candidates[i].predicted_quality.unwrap_or_default();
        let reason = format!("cheapest model whose predicted quality {q:.2} clears the bar {quality_bar:.2}");
        return Choice { candidates, chosen: Some(i), fallback: false, reason };
    }
    // Nothing clears the bar: the best predicted quality, cheapest among equals.
    let i = best_by(&candidates, |c| c.predicted_quality.unwrap_or(-1.0)).expect("some candidate is eligible");
    let q = candidates[i].predicted_quality.unwrap_or_default();
    let reason = format!("no model is predicted to clear the bar {quality_bar:.2}; highest predicted quality {q:.2}");
    Choice { candidates, chosen: Some(i), fallback: false, reason }
}

/// Index of the eligible candidate with the highest `score`; candidates are sorted cheapest
/// first, so the first of equal scores is the cheapest.
fn best_by(candidates: &[Candidate], score: impl Fn(&Candidate) -> f64) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, c) in candidates.iter().enumerate().filter(|(_, c)| c.excluded.is_none()) {
        let s = score(c);
        if best.is_none_or(|(_, b)| s > b + 1e-12) {
            best = Some((i, s));
        }
    }
    best.map(|(i, _)| i)
}
