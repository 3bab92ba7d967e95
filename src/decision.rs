//! [`RouteDecision`]: the chosen model and the whole why, as plain serde data.
//!
//! ```
//! # use semroute::decision::RouteDecision;
//! # fn show(d: &RouteDecision) {
//! println!("{} ({}) for ${:.6}, predicted quality {:.2}", d.model, d.provider, d.expected_cost_usd, d.predicted_quality);
//! for n in &d.neighbours {
//!     println!("  {:.3} {} [{}]", n.similarity, n.id, n.grade);
//! }
//! # }
//! ```

use serde::{Deserialize, Serialize};

use crate::policy::Objective;
use crate::pricing::Tier;

/// The layout version of a serialised [`RouteDecision`] (the `route --json` lines): fields are
/// only added; a reader of this version reads every earlier one.
pub const SCHEMA_VERSION: u32 = 1;

/// The router's answer for one prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RouteDecision {
    /// [`SCHEMA_VERSION`] (0 when read from a decision written before versions).
    #[serde(default)]
    pub schema_version: u32,
    /// The chosen model (a price-table name).
    pub model: String,
    /// Its provider.
    pub provider: String,
    /// Its tier (`None` when the price table gives none).
    pub tier: Option<Tier>,
    /// Expected USD for this prompt on the chosen model.
    pub expected_cost_usd: f64,
    /// Predicted quality in `[0, 1]` of the chosen model on this prompt.
    pub predicted_quality: f64,
    /// Predicted answer length in tokens on the chosen model.
    pub predicted_output_tokens: u64,
    /// Prompt length in tokens (cl100k_base).
    pub input_tokens: u64,
    /// The quality bar in force (the request's, else the router's); it binds only when
    /// `objective` is a bar.
    pub quality_bar: f64,
    /// What the policy optimised: `{"quality_bar": b}` or `{"usd_per_quality": u}`.
    pub objective: Objective,
    /// `true` when nothing like the prompt is known and the safe fallback model was used.
    pub fallback: bool,
    /// How much farther the prompt is from its nearest exemplars than they are from theirs (1:
    /// as close as the set's own prompts; see [`familiar`](crate::familiar)); the router falls
    /// back above its limit. `None` under a fixed similarity threshold.
    #[serde(default)]
    pub unfamiliarity: Option<f64>,
    /// One sentence on why this model was chosen.
    pub reason: String,
    /// What predicted the models' quality: `"neighbours"` (the nearest exemplars' weighted
    /// grades), `"kernel-ridge"` (a model fitted on every exemplar, see
    /// [`QualityModel`](crate::predict::QualityModel), updated by near-copies of the prompt: the
    /// default on hand labels), `"kernel-ridge+neighbours"` (the mean of the two), `"low-rank"`
    /// or `"kernel-ridge+low-rank+neighbours"` ([`Predictor`](crate::predict::Predictor)).
    #[serde(default)]
    pub quality_from: String,
    /// The nearest exemplars, most similar first.
    pub neighbours: Vec<Neighbour>,
    /// Every priced model with its prediction, cost and eligibility, cheapest first.
    pub candidates: Vec<Candidate>,
    /// Where to go if the chosen model cannot answer (it times out, is rate-limited or fails):
    /// the other eligible models, in the order the same policy picks them once the ones before
    /// are taken away. `serve` fails over in this order.
    #[serde(default)]
    pub failover: Vec<String>,
    /// The model an always-strongest policy would use (highest tier, highest price).
    pub strongest_model: String,
    /// Expected USD for this prompt on the strongest model.
    pub strongest_cost_usd: f64,
    /// `strongest_cost_usd - expected_cost_usd`.
    pub saving_usd: f64,
    /// `saving_usd / strongest_cost_usd` (0 when that cost is 0).
    pub saving_fraction: f64,
    /// For a step of an agent session ([`Router::route_session`](crate::Router::route_session)):
    /// which step, the model before, the cache it held and whether this step switched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<crate::session::SessionInfo>,
}

/// A nearest exemplar and what it says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Neighbour {
    /// Exemplar id.
    pub id: String,
    /// Cosine similarity to the prompt.
    pub similarity: f32,
    /// Weight of this neighbour in the predictions (weights sum to 1).
    pub weight: f64,
    /// Exemplar category.
    pub category: String,
    /// Exemplar language.
    pub language: String,
    /// How it is graded: `labelled:<tier>` or `measured:<n> models`.
    pub grade: String,
    /// The first 80 characters of the exemplar's prompt.
    pub prompt_preview: String,
}

/// One priced model as the policy saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Candidate {
    /// Model name.
    pub model: String,
    /// Provider.
    pub provider: String,
    /// Tier (`None` when the price table gives none).
    pub tier: Option<Tier>,
    /// Predicted quality, or `None` when no neighbour says anything about this model.
    pub predicted_quality: Option<f64>,
    /// Standard error of the predicted quality, from how much the neighbours behind it know
    /// (how many carry weight, and how far they agree: see
    /// [`ModelPrediction::standard_error`](crate::predict::ModelPrediction::standard_error)).
    #[serde(default)]
    pub quality_se: Option<f64>,
    /// Predicted answer length in tokens.
    pub predicted_output_tokens: u64,
    /// Expected USD on this model (in a session: this step, its cached prefix at the cached price).
    pub expected_cost_usd: f64,
    /// Standard error of the expected cost: the predicted answer length's (at the output price)
    /// or the neighbours' measured costs'. Where the policy's choice and another eligible model
    /// priced alike (the same list prices) differ in cost by less than this uncertainty (their
    /// intervals of the router's [`caution`](crate::RouterBuilder::caution) times it overlap),
    /// it takes the one with the higher quality: the shortest of many noisy length predictions
    /// is short partly by luck, as the highest of many quality predictions is high partly by
    /// luck.
    #[serde(default)]
    pub cost_se_usd: f64,
    /// In a session: prompt tokens this model's provider holds cached for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_tokens: Option<u64>,
    /// In a session: the USD per step the policy ranks by, this step's cost and the cheaper,
    /// cached steps after it spread over the session's horizon (a model without the cache pays
    /// once to build it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_cost_usd: Option<f64>,
    /// Whether the predicted quality clears the bar (by the router's
    /// [`caution`](crate::RouterBuilder::caution) in standard errors).
    pub clears_bar: bool,
    /// Why the model could not be chosen (a constraint, the context window, no data), if so.
    pub excluded: Option<String>,
}
