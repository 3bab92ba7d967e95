//! Quality targets: "keep X% of the best model's quality", turned into the router's knob by
//! cross-fitting on measured exemplars.
//!
//! A quality bar (or a USD value of quality) is a knob on *predicted* quality; what a caller
//! wants is a quality *measured* against something they know: "as good as GPT-4o, give or take
//! five percent". With exemplars that say how well every model answered them (measured, not hand
//! labels), [`RouterBuilder::quality_target`](crate::RouterBuilder::quality_target) turns the
//! second into the first when the router is built:
//!
//! 1. The **reference** is the model with the best mean quality on the exemplars, or the one the
//!    target names ([`QualityTarget::of`]: "95% of GPT-4o's quality").
//! 2. The exemplars are cut into folds. On each, the router of every **candidate configuration**
//!    ([`RouterConfig::defaults`]: the default router and nine others, from each model's mean
//!    alone to the ensemble of three predictors; or the router's own settings alone, where any was
//!    set) is built on the other folds and decides every prompt of the held-out fold under each
//!    knob of a grid (the bar from 0 to 1, and USD per quality point on a log scale around the
//!    exemplars' typical cost). Every exemplar is thus decided by routers that never saw its
//!    grades.
//! 3. One candidate (configuration × knob) is chosen by the one-standard-error rule: among those
//!    whose out-of-fold AIQ (the area under their cost–quality curve) is within one standard
//!    error of the largest, the one whose quality predictions have the lowest out-of-fold Brier
//!    score over the models some price makes the best single choice. The choice does not look at
//!    the target: every target is met on the same candidate.
//! 4. The **operating point** is the cheapest of its knobs, out of fold, whose quality exceeds X × the
//!    reference's by `confidence_z` standard errors of the paired difference (one-sided: 1.645
//!    by default, 95%). Every single model is an operating point too, held to the same test: where
//!    calling one model meets the target for less than any knob, the router sends every prompt to
//!    it and says so (on a set where one cheap model is nearly as good as the best, routing costs
//!    more than it saves).
//!
//! The router then routes with that configuration and knob (or that model), and
//! [`Router::tuned`](crate::Router::tuned) reports what was found. With a cache folder (the
//! default), what was found is kept there under a hash of everything the tuning reads, and the
//! next build on the same exemplars, prices and settings reads it back instead of tuning again. The savings benchmark
//! ([`eval`](crate::eval)) reports its targets through this same code, on the train split: a
//! router built there with `--keep X` routes the test split as the benchmark reports.
//!
//! ```
//! use std::sync::Arc;
//! use semroute::target::{OperatingPoint, QualityTarget};
//! use semroute::{Embedder, ExemplarSet, PriceTable, Router};
//! # struct Kinds;
//! # impl Embedder for Kinds {
//! #     fn model_id(&self) -> &str { "kinds" }
//! #     fn dim(&self) -> usize { 2 }
//! #     fn embed_batch(&self, t: &[&str]) -> semroute::Result<Vec<Vec<f32>>> {
//! #         Ok(t.iter().map(|s| if s.starts_with("easy") { vec![1.0, 0.0] } else { vec![0.0, 1.0] }).collect())
//! #     }
//! # }
//! // "small" answers the easy prompts as well as "big" and the hard ones badly; "big" costs ten times more.
//! let lines: Vec<String> = (0..80)
//!     .map(|i| {
//!         let (kind, small) = if i % 2 == 0 { ("easy", 1) } else { ("hard", 0) };
//!         format!(r#"{{"id":"e{i}","prompt":"{kind} {i}","category":"c","language":"en","results":{{"small":{{"quality":{small},"output_tokens":100}},"big":{{"quality":1,"output_tokens":100}}}}}}"#)
//!     })
//!     .collect();
//! let exemplars = ExemplarSet::from_jsonl_str(&lines.join("\n"), "measured.jsonl")?;
//! let prices = PriceTable::from_toml_str(
//!     "[models.small]\nprovider = \"p\"\ninput_per_mtok = 1.0\noutput_per_mtok = 1.0\nsource = \"s\"\nas_of = \"2025\"\n\
//!      [models.big]\nprovider = \"p\"\ninput_per_mtok = 10.0\noutput_per_mtok = 10.0\nsource = \"s\"\nas_of = \"2025\"\n",
//!     "prices.toml",
//! )?;
//! let router = Router::builder()
//!     .embedder(Arc::new(Kinds))
//!     .exemplars(exemplars)
//!     .prices(prices)
//!     .no_cache()
//!     .quality_target(QualityTarget::keep(0.95))
//!     .build()?;
//! let tuned = router.tuned().expect("a target was asked for");
//! assert_eq!(tuned.reference_model, "big");
//! assert!(matches!(tuned.point, OperatingPoint::Knob(_)));
//! assert!(tuned.quality >= 0.95 * tuned.reference_quality);
//! assert!(tuned.cost_usd < 0.6 * tuned.reference_cost_usd); // half the prompts go to "small"
//! assert_eq!(router.route("easy one")?.model, "small");
//! assert_eq!(router.route("hard one")?.model, "big");
//! # Ok::<(), semroute::Error>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::embed::{Embedder, Memo};
use crate::error::{Error, Result};
use crate::eval::{aiq, par_map};
use crate::exemplar::{ExemplarSet, Grade};
use crate::policy::{Constraints, Objective};
use crate::predict::{FeatureSettings, FitCache, LowRankSettings, Predictor, RidgeSettings};
use crate::pricing::{PriceTable, TokenCounter};
use crate::router::{Assessment, Router, RouterBuilder};

/// "Keep this share of the best model's quality": see the [module documentation](self).
///
/// ```
/// use semroute::target::QualityTarget;
///
/// let t = QualityTarget::keep(0.95).folds(10);
/// assert_eq!((t.share(), t.fold_count()), (0.95, 10));
/// assert!(QualityTarget::keep(1.5).check().is_err());
/// assert!(QualityTarget::keep(0.9).folds(1).check().is_err());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct QualityTarget {
    keep: f64,
    folds: usize,
    confidence_z: f64,
    seed: u64,
    candidates: Option<Vec<RouterConfig>>,
    policies: Option<Vec<Policy>>,
    reference: Option<String>,
}

impl QualityTarget {
    /// Keep `share` (in (0, 1]) of the reference model's quality; 5 folds, 1.645 standard errors.
    pub fn keep(share: f64) -> Self {
        QualityTarget { keep: share, folds: 5, confidence_z: 1.645, seed: 1, candidates: None, policies: None, reference: None }
    }

    /// Keep the share of this model's quality ("95% of GPT-4o's") instead of the best model's.
    /// The model must be priced and measured by the exemplars; it is the router's safe model
    /// too, unless a [fallback model](crate::RouterBuilder::fallback_model) is set.
    ///
    /// ```
    /// use semroute::target::QualityTarget;
    ///
    /// let t = QualityTarget::keep(0.95).of("gpt-4o");
    /// assert_eq!(t.reference(), Some("gpt-4o"));
    /// assert!(QualityTarget::keep(0.95).of(" ").check().is_err());
    /// ```
    pub fn of(mut self, model: impl Into<String>) -> Self {
        self.reference = Some(model.into());
        self
    }

    /// The model named by [`of`](Self::of), if any (else the best the exemplars measure).
    pub fn reference(&self) -> Option<&str> {
        self.reference.as_deref()
    }

    /// The configurations the cross-fitting chooses among (default: [`RouterConfig::defaults`]
    /// where the router's own prediction settings are its defaults; the router's own settings
    /// alone where any of them is set otherwise).
    ///
    /// ```
    /// use semroute::target::{Policy, QualityTarget, RouterConfig};
    /// # struct Two;
    /// # impl semroute::Embedder for Two {
    /// #     fn model_id(&self) -> &str { "two" }
    /// #     fn dim(&self) -> usize { 2 }
    /// #     fn embed_batch(&self, t: &[&str]) -> semroute::Result<Vec<Vec<f32>>> { Ok(t.iter().map(|_| vec![1.0, 0.0]).collect()) }
    /// # }
    /// # let embedder = Two;
    /// let only_default: Vec<RouterConfig> =
    ///     RouterConfig::defaults(&embedder).into_iter().filter(|c| c.name == "default").collect();
    /// let t = QualityTarget::keep(0.95).candidates(only_default).policies([Policy::QualityBar]);
    /// assert!(t.check().is_ok());
    /// assert!(QualityTarget::keep(0.95).candidates(Vec::new()).check().is_err());
    /// ```
    pub fn candidates(mut self, configs: Vec<RouterConfig>) -> Self {
        self.candidates = Some(configs);
        self
    }

    /// The knobs the cross-fitting turns (default: both, the bar and USD per quality point, where
    /// the router's own prediction settings are its defaults; else the bar, or USD per quality
    /// point where [`RouterBuilder::usd_per_quality`] was set).
    pub fn policies(mut self, policies: impl IntoIterator<Item = Policy>) -> Self {
        self.policies = Some(policies.into_iter().collect());
        self
    }

    /// Seed of the hash that deals the exemplars into folds (by id; default 1). The savings
    /// benchmark folds a train split of seed `s` with seed `s + 1`.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Folds of the cross-fitting (at least 2; default 5).
    pub fn folds(mut self, folds: usize) -> Self {
        self.folds = folds;
        self
    }

    /// Standard errors by which an operating point's quality must exceed the target, out of fold
    /// (default 1.645: one-sided 95%; 0 takes the point estimate).
    pub fn confidence_z(mut self, z: f64) -> Self {
        self.confidence_z = z;
        self
    }

    /// The share of the reference's quality to keep.
    pub fn share(&self) -> f64 {
        self.keep
    }

    /// Folds of the cross-fitting.
    pub fn fold_count(&self) -> usize {
        self.folds
    }

    /// Whether the settings are in range (a share in (0, 1], at least 2 folds, a finite,
    /// non-negative `confidence_z`).
    pub fn check(&self) -> Result<()> {
        if !(self.keep > 0.0 && self.keep <= 1.0) {
            return Err(Error::Config(format!("a quality target is a share in (0, 1], got {}", self.keep)));
        }
        if self.folds < 2 {
            return Err(Error::Config(format!("a quality target's cross-fitting needs at least 2 folds, got {}", self.folds)));
        }
        if !(self.confidence_z.is_finite() && self.confidence_z >= 0.0) {
            return Err(Error::Config(format!("confidence_z must be a finite, non-negative number, got {}", self.confidence_z)));
        }
        if self.candidates.as_ref().is_some_and(Vec::is_empty) {
            return Err(Error::Config("a quality target needs at least one candidate configuration".into()));
        }
        if self.policies.as_ref().is_some_and(Vec::is_empty) {
            return Err(Error::Config("a quality target needs at least one policy".into()));
        }
        if self.reference.as_ref().is_some_and(|m| m.trim().is_empty()) {
            return Err(Error::Config("a quality target's reference model is named by an empty string".into()));
        }
        Ok(())
    }

    /// The candidates asked for, if any.
    pub(crate) fn asked_candidates(&self) -> Option<&[RouterConfig]> {
        self.candidates.as_deref()
    }

    /// The policies asked for, if any.
    pub(crate) fn asked_policies(&self) -> Option<&[Policy]> {
        self.policies.as_deref()
    }
}

/// One way to configure a router's predictions: a candidate among which a quality target's
/// cross-fitting (and the savings benchmark's) chooses.
///
/// ```
/// use semroute::target::RouterConfig;
/// # struct Two;
/// # impl semroute::Embedder for Two {
/// #     fn model_id(&self) -> &str { "two" }
/// #     fn dim(&self) -> usize { 2 }
/// #     fn embed_batch(&self, t: &[&str]) -> semroute::Result<Vec<Vec<f32>>> { Ok(t.iter().map(|_| vec![1.0, 0.0]).collect()) }
/// # }
/// # let embedder = Two;
/// let names: Vec<String> = RouterConfig::defaults(&embedder).into_iter().map(|c| c.name).collect();
/// assert_eq!(names[0], "default");
/// assert!(names.iter().any(|n| n == "ensemble"));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouterConfig {
    /// A short name for reports (`knn-8`, `kernel-ridge`, ...).
    pub name: String,
    /// How quality is predicted.
    #[serde(skip)]
    pub predictor: Predictor,
    /// Neighbours consulted.
    pub k: usize,
    /// Softmax temperature of neighbour weights.
    pub temperature: f64,
    /// Pseudo-neighbours given to each model's overall mean.
    pub prior_strength: f64,
    /// The router's fallback threshold; `None` keeps the router's default (the embedder's).
    pub min_similarity: Option<f32>,
}

impl RouterConfig {
    /// The candidates tried by default, for `embedder`: the router exactly as built by default
    /// (`default`: [`Predictor::Auto`], which cross-validates the predictor on the measured
    /// exemplars it is given, with its fallback to the reference model for unfamiliar prompts),
    /// then without the fallback (with measured exemplars an unfamiliar prompt's smoothed
    /// predictions revert to each model's mean, and the objective decides): each model's mean
    /// alone (neighbours outweighed by the prior: no per-prompt routing, the candidate that wins
    /// where nothing about a prompt predicts its outcome), the nearest neighbours (k 8, sharp
    /// weights), smoothed neighbours (k 32 and 128, flat weights, shrunk towards each model's
    /// mean), the kernel-ridge model alone, its blend with the neighbours, the low-rank model
    /// (l2 1e-4), the ensemble of the last three with the neighbours ([`Predictor::Ensemble`]),
    /// and the feature model ([`Predictor::Features`]: few parameters, for small sets).
    pub fn defaults(embedder: &dyn Embedder) -> Vec<RouterConfig> {
        let ridge = RidgeSettings::for_embedder(embedder);
        let c = |name: &str, predictor, k, temperature, prior_strength| RouterConfig {
            name: name.into(),
            predictor,
            k,
            temperature,
            prior_strength,
            min_similarity: Some(-1.0),
        };
        vec![
            RouterConfig { min_similarity: None, ..c("default", Predictor::Auto, 8, 0.05, 0.0) },
            c("model-means", Predictor::Neighbours, 8, 0.05, 1e9),
            c("knn-8", Predictor::Neighbours, 8, 0.05, 0.0),
            c("knn-32-smoothed", Predictor::Neighbours, 32, 1.0, 4.0),
            c("knn-128-smoothed", Predictor::Neighbours, 128, 1.0, 8.0),
            c("kernel-ridge", Predictor::KernelRidge(ridge), 8, 0.05, 0.0),
            c("blend", Predictor::Blend(ridge), 8, 0.05, 0.0),
            c("low-rank", Predictor::LowRank(LowRankSettings::for_router()), 8, 0.05, 0.0),
            c("ensemble", Predictor::Ensemble(ridge, LowRankSettings::for_router()), 8, 0.05, 0.0),
            c("features", Predictor::Features(FeatureSettings::default()), 8, 0.05, 0.0),
        ]
    }

    /// A router that fits nothing: built first on a fold's exemplars, it saves their graph for
    /// the candidates' routers to read.
    pub(crate) fn graph_only() -> RouterConfig {
        RouterConfig {
            name: "graph".into(),
            predictor: Predictor::Neighbours,
            k: 1,
            temperature: 1.0,
            prior_strength: 0.0,
            min_similarity: Some(-1.0),
        }
    }

    /// `b` with this configuration's settings.
    pub(crate) fn apply(&self, mut b: RouterBuilder) -> RouterBuilder {
        if let Some(s) = self.min_similarity {
            b = b.min_similarity(s);
        }
        b.k(self.k).temperature(self.temperature).prior_strength(self.prior_strength).predictor(self.predictor)
    }

    /// Whether `other` configures the same router (the name aside).
    pub(crate) fn same_settings(&self, other: &RouterConfig) -> bool {
        RouterConfig { name: String::new(), ..self.clone() } == RouterConfig { name: String::new(), ..other.clone() }
    }
}

/// How a tuned router meets its target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OperatingPoint {
    /// Routing, with this objective (the bar or the USD per quality point found).
    Knob(Objective),
    /// Calling this model for every prompt: it meets the target for less than any knob.
    Model(String),
}

/// What [`QualityTarget`] tuning found (see [`Router::tuned`](crate::Router::tuned)). Qualities
/// are means per exemplar; costs are mean USD per exemplar; out of fold where they are the
/// router's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Tuned {
    /// The share of the reference's quality asked for.
    pub keep: f64,
    /// The knob (or the one model) that meets it.
    pub point: OperatingPoint,
    /// The name of the configuration chosen ([`RouterConfig::name`]; `configured` for the
    /// router's own settings) whose knob it is.
    pub candidate: String,
    /// Candidates (configuration × policy) the cross-fitting chose among.
    pub candidates: usize,
    /// The reference: the model the target named ([`QualityTarget::of`]), else the one with the
    /// best mean quality on the exemplars.
    pub reference_model: String,
    /// Its mean quality.
    pub reference_quality: f64,
    /// Its mean cost.
    pub reference_cost_usd: f64,
    /// The operating point's mean quality, out of fold.
    pub quality: f64,
    /// The operating point's mean cost, out of fold.
    pub cost_usd: f64,
    /// Exemplars the target was tuned on.
    pub exemplars: usize,
    /// Exemplars set aside from the tuning because some model compared has no result on them
    /// (at most [`MAX_SET_ASIDE`] of them; the router still learns from what they measure).
    #[serde(default)]
    pub exemplars_set_aside: usize,
    /// Folds of the cross-fitting.
    pub folds: usize,
    /// Priced models left out because too many exemplars do not measure them (more than
    /// [`MAX_SET_ASIDE`] would have to be set aside; see [`exemplars_set_aside`](Self::exemplars_set_aside)):
    /// the router routes among the others.
    pub models_left_out: Vec<String>,
    /// Whether this was read back from the cache folder, found by an earlier build on the same
    /// exemplars, prices and settings, rather than tuned now.
    #[serde(skip)]
    pub reused: bool,
}

impl fmt::Display for Tuned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kept = if self.reference_quality > 0.0 { self.quality / self.reference_quality } else { 1.0 };
        let how = match &self.point {
            OperatingPoint::Knob(Objective::QualityBar(b)) => format!("{} router, quality bar {b:.2}", self.candidate),
            OperatingPoint::Knob(Objective::UsdPerQuality(u)) => format!("{} router, ${u:.6} per quality point", self.candidate),
            OperatingPoint::Model(m) => format!("{m} for every prompt (cheaper than any knob that meets the target)"),
        };
        write!(
            f,
            "keep {:.0}% of {}'s quality: {how}; out of fold on {} exemplars ({} folds, {} candidates) it kept {:.1}% for ${:.6} a prompt against ${:.6}",
            100.0 * self.keep,
            self.reference_model,
            self.exemplars,
            self.folds,
            self.candidates,
            100.0 * kept,
            self.cost_usd,
            self.reference_cost_usd
        )?;
        if self.exemplars_set_aside > 0 {
            write!(f, " ({} exemplars set aside: some model compared has no result on them)", self.exemplars_set_aside)?;
        }
        if self.reused {
            write!(f, " (kept from an earlier start on the same exemplars, prices and settings)")?;
        }
        Ok(())
    }
}

/// The knob a policy turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Policy {
    /// [`Objective::QualityBar`], swept from 0 to 1.
    QualityBar,
    /// [`Objective::UsdPerQuality`], swept over a log scale around the prompts' typical cost.
    UsdPerQuality,
}

impl Policy {
    pub(crate) fn constraints(self, knob: f64) -> Constraints {
        match self {
            Policy::QualityBar => Constraints::default().quality_bar(knob),
            Policy::UsdPerQuality => Constraints::default().usd_per_quality(knob),
        }
    }

    fn objective(self, knob: f64) -> Objective {
        match self {
            Policy::QualityBar => Objective::QualityBar(knob),
            Policy::UsdPerQuality => Objective::UsdPerQuality(knob),
        }
    }
}

/// The knobs swept for `policy`; `typical_cost` is a prompt's median cost over the models.
pub(crate) fn knobs(policy: Policy, typical_cost: f64) -> Vec<f64> {
    match policy {
        Policy::QualityBar => (0..=100).map(|i| f64::from(i) / 100.0).collect(),
        Policy::UsdPerQuality => {
            let base = if typical_cost > 0.0 { typical_cost } else { 1e-4 };
            std::iter::once(0.0).chain((0..=80).map(|j| base * 10f64.powf(-2.0 + f64::from(j) / 10.0))).collect()
        }
    }
}

/// A model's index among the models compared. Out-of-fold picks of every prompt under every knob
/// are a cross-fitting's largest table (a benchmark's: 10 candidates × 183 knobs × 9,829 prompts
/// on a 14,000-prompt set, 144 MB as `usize`).
pub(crate) type Pick = u16;

/// The model index each assessment picks under every knob: `[knob][prompt]`.
pub(crate) fn picks(assessments: &[Assessment], policy: Policy, knobs: &[f64], index: &HashMap<&str, usize>) -> Result<Vec<Vec<Pick>>> {
    let constraints: Vec<Constraints> = knobs.iter().map(|&k| policy.constraints(k)).collect();
    picks_under(assessments, &constraints, index)
}

/// The model index each assessment picks under each of `constraints`: `[constraints][prompt]`.
pub(crate) fn picks_under(assessments: &[Assessment], constraints: &[Constraints], index: &HashMap<&str, usize>) -> Result<Vec<Vec<Pick>>> {
    let per_prompt: Vec<Vec<Pick>> = crate::eval::par_map(assessments, 8, |a| {
        a.chosen_models(constraints)?
            .iter()
            .map(|name| {
                index
                    .get(name.as_str())
                    .filter(|&&m| m <= usize::from(Pick::MAX))
                    .map(|&m| m as Pick)
                    .ok_or_else(|| Error::Config(format!("the router chose {name}, which is not among the models compared")))
            })
            .collect()
    })?;
    Ok((0..constraints.len()).map(|k| per_prompt.iter().map(|row| row[k]).collect()).collect())
}

/// The prompts at `positions` assessed by `router` ([`Router::assess_embedded_batch`], in
/// batches of at most 64 spread over the cores); `item` gives a position's prompt, vector and
/// token count.
pub(crate) fn assess_all<'a>(
    router: &Router,
    positions: &[usize],
    item: impl Fn(usize) -> Result<(&'a str, Vec<f32>, Option<u64>)> + Sync,
) -> Result<Vec<Assessment>> {
    // At most 64 a batch, and a multiple of the cores' count of them, of even size, so that no
    // core waits on another's extra batch (185 prompts on 2 cores: four of 47, not 64, 64, 57).
    let count = positions.len().div_ceil(64).next_multiple_of(crate::eval::cores()).max(1);
    let batches: Vec<&[usize]> = positions.chunks(positions.len().div_ceil(count).max(1)).collect();
    let assessed = crate::eval::par_map(&batches, 1, |batch| {
        let items = batch.iter().map(|&i| item(i)).collect::<Result<Vec<_>>>()?;
        let refs: Vec<(&str, &[f32], Option<u64>)> = items.iter().map(|(p, v, t)| (*p, v.as_slice(), *t)).collect();
        router.assess_embedded_batch(&refs)
    })?;
    Ok(assessed.into_iter().flatten().collect())
}

/// An operating point among cross-fitted candidates: knob `k` of candidate `s`, or one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operating {
    Routed(usize, usize),
    Single(usize),
}

/// The cheapest operating point whose out-of-fold quality exceeds `keep` × the reference's by
/// `z` standard errors of the paired difference (see the [module documentation](self)).
/// `quality[i][m]` and `cost[i][m]` are prompt `i`'s measured quality and cost with model `m`;
/// `routed` lists each candidate's out-of-fold picks (`[knob][prompt]`), and on equal cost the
/// `preferred` candidate's knob is kept; a single model must be strictly cheaper than every knob
/// that clears. `None` when nothing clears (the reference itself need not: it clears only
/// `keep` < 1 with enough prompts).
pub(crate) fn operating_point(
    quality: &[Vec<f64>],
    cost: &[Vec<f64>],
    reference: usize,
    keep: f64,
    z: f64,
    routed: &[(usize, &[Vec<Pick>])],
    preferred: usize,
) -> Option<Operating> {
    let n = quality.len() as f64;
    if quality.len() < 2 {
        return None;
    }
    let clears = |pick: &dyn Fn(usize) -> usize| {
        let d: Vec<f64> = (0..quality.len()).map(|i| quality[i][pick(i)] - keep * quality[i][reference]).collect();
        let mean = d.iter().sum::<f64>() / n;
        let var = d.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        mean >= z * (var / n).sqrt()
    };
    let mut best: Option<(f64, Operating)> = None;
    for &(s, per_knob) in routed {
        for (k, pick) in per_knob.iter().enumerate() {
            if !clears(&|i| usize::from(pick[i])) {
                continue;
            }
            let total = (0..quality.len()).map(|i| cost[i][usize::from(pick[i])]).sum::<f64>();
            let better = match best {
                None => true,
                Some((b, Operating::Routed(bs, _))) => {
                    total < b * (1.0 - 1e-9) || (total <= b * (1.0 + 1e-9) && s == preferred && bs != preferred)
                }
                Some((b, Operating::Single(_))) => total < b * (1.0 - 1e-9),
            };
            if better {
                best = Some((total, Operating::Routed(s, k)));
            }
        }
    }
    let models = quality.first().map_or(0, Vec::len);
    for m in 0..models {
        let total = cost.iter().map(|c| c[m]).sum::<f64>();
        if best.is_some_and(|(b, _)| total >= b * (1.0 - 1e-9)) || !clears(&|_| m) {
            continue;
        }
        best = Some((total, Operating::Single(m)));
    }
    best.map(|(_, o)| o)
}

/// `exemplars` without their results for `models` (those a quality target leaves out).
pub(crate) fn without_models(exemplars: &ExemplarSet, models: &[String]) -> Result<ExemplarSet> {
    let items = exemplars
        .iter()
        .map(|e| {
            let mut e = e.clone();
            if let Grade::Measured { results } = &mut e.grade {
                results.retain(|m, _| !models.contains(m));
            }
            e
        })
        .collect();
    ExemplarSet::from_exemplars(items)
}

/// The largest share of the prompts (exemplars, or a data set's records) a comparison of models
/// sets aside because some model compared has no result on them (a failed call in a graded
/// workload, say): 5%, as a data set keeps a model measured on 95% of its prompts or more.
///
/// A quality target, and the savings benchmark, compare every model on the same prompts. Where
/// the prompts some model lacks are at most this share, those prompts are set aside and every
/// model is compared; where they are more, the model lacking the most is left out, and so on
/// (see [`Tuned::exemplars_set_aside`] and [`Tuned::models_left_out`]).
pub const MAX_SET_ASIDE: f64 = 0.05;

/// Which of the `models` a comparison keeps, and which of its `items` items it sets aside, where
/// `has(i, m)` says whether item `i` has a result for model `m`. A model with no result at all is
/// left out; then, while the items lacking some kept model's result are more than
/// [`MAX_SET_ASIDE`] of them, the kept model lacking the most (the later on ties) is left out
/// too.
pub(crate) fn coverage(models: &[String], items: usize, has: &dyn Fn(usize, &str) -> bool) -> Coverage {
    let missing: Vec<Vec<usize>> = models.iter().map(|m| (0..items).filter(|&i| !has(i, m)).collect()).collect();
    let mut kept: Vec<usize> = (0..models.len()).filter(|&m| missing[m].len() < items).collect();
    let budget = (MAX_SET_ASIDE * items as f64 + 1e-9).floor() as usize;
    let aside = loop {
        let mut aside = vec![false; items];
        for &m in &kept {
            for &i in &missing[m] {
                aside[i] = true;
            }
        }
        if aside.iter().filter(|&&a| a).count() <= budget {
            break aside;
        }
        let worst = kept.iter().copied().max_by_key(|&m| (missing[m].len(), m)).expect("a model lacks some item");
        kept.retain(|&m| m != worst);
    };
    Coverage {
        models: kept.iter().map(|&m| models[m].clone()).collect(),
        left_out: (0..models.len()).filter(|m| !kept.contains(m)).map(|m| models[m].clone()).collect(),
        set_aside: (0..items).filter(|&i| aside[i]).collect(),
    }
}

/// What [`coverage`] keeps: the models compared and those left out (each in the given order),
/// and the positions of the items set aside (in order).
#[derive(Debug, PartialEq)]
pub(crate) struct Coverage {
    pub(crate) models: Vec<String>,
    pub(crate) left_out: Vec<String>,
    pub(crate) set_aside: Vec<usize>,
}

impl Coverage {
    /// Whether item `i` is compared (not set aside).
    pub(crate) fn compares(&self, i: usize) -> bool {
        self.set_aside.binary_search(&i).is_err()
    }
}

/// What the exemplars measure of the priced models they measure (see [`coverage`] for those left
/// out, and the exemplars set aside): each model's quality and cost on each exemplar compared
/// (the measured cost where the exemplar keeps one, else answer tokens × list price), and the
/// reference: the best mean quality, the cheaper on ties.
pub(crate) struct Measured {
    models: Vec<String>,
    /// Priced models left out ([`coverage`]), in the price table's order.
    pub(crate) left_out: Vec<String>,
    /// The positions of the exemplars set aside ([`coverage`]), in order.
    pub(crate) set_aside: Vec<usize>,
    quality: Vec<Vec<f64>>,
    cost: Vec<Vec<f64>>,
    input_tokens: Vec<u64>,
    reference: usize,
}

impl Measured {
    /// An error for a hand-labelled exemplar, fewer than two models compared, or a `named`
    /// reference that is not one of them.
    pub(crate) fn new(exemplars: &ExemplarSet, prices: &PriceTable, tokens: &TokenCounter, named: Option<&str>) -> Result<Self> {
        let mut results = Vec::with_capacity(exemplars.len());
        for e in exemplars.iter() {
            let Grade::Measured { results: r } = &e.grade else {
                return Err(Error::Config(format!(
                    "a quality target needs measured exemplars (every model's quality on each), but exemplar `{}` is hand-labelled",
                    e.id
                )));
            };
            results.push((e, r));
        }
        let names: Vec<String> = prices.names().map(str::to_string).collect();
        let cover = coverage(&names, results.len(), &|i, m| results[i].1.contains_key(m));
        let results: Vec<_> = results.iter().enumerate().filter(|(i, _)| cover.compares(*i)).map(|(_, r)| *r).collect();
        let Coverage { models, left_out, set_aside } = cover;
        if models.len() < 2 || results.is_empty() {
            return Err(Error::Config(format!(
                "a quality target compares the models on the same exemplars, and fewer than two priced models are measured on all \
                 but {:.0}% of the {} exemplars ({models:?}; left out: {left_out:?})",
                100.0 * MAX_SET_ASIDE,
                exemplars.len()
            )));
        }
        if models.len() > usize::from(Pick::MAX) + 1 {
            return Err(Error::Config(format!(
                "a quality target compares at most {} models, got {}",
                usize::from(Pick::MAX) + 1,
                models.len()
            )));
        }
        let (mut quality, mut cost, mut input_tokens) = (Vec::new(), Vec::new(), Vec::new());
        for (e, r) in results {
            let input = tokens.count(&e.prompt);
            let mut q = Vec::with_capacity(models.len());
            let mut c = Vec::with_capacity(models.len());
            for (m, r) in models.iter().map(|m| (m, &r[m])) {
                q.push(r.quality);
                c.push(match r.cost_usd {
                    Some(usd) => usd,
                    None => prices.require(m, "a quality target")?.cost_usd(input, u64::from(r.output_tokens)),
                });
            }
            quality.push(q);
            cost.push(c);
            input_tokens.push(input);
        }
        let measured = Measured { models, left_out, set_aside, quality, cost, input_tokens, reference: 0 };
        let (q, c) = (|m| measured.mean(m, &measured.quality), |m| measured.mean(m, &measured.cost));
        let reference = match named {
            Some(name) => measured.models.iter().position(|m| m == name).ok_or_else(|| {
                let why = if prices.get(name).is_none() {
                    "the price table does not price it"
                } else if measured.left_out.iter().any(|m| m == name) {
                    "too few exemplars measure it (it is left out)"
                } else {
                    "no exemplar measures it"
                };
                Error::Config(format!("the quality target's reference model `{name}` cannot be compared: {why}"))
            })?,
            None => (0..measured.models.len()).max_by(|&a, &b| q(a).total_cmp(&q(b)).then(c(b).total_cmp(&c(a)))).unwrap_or(0),
        };
        Ok(Measured { reference, ..measured })
    }

    /// The models compared, in the price table's order.
    pub(crate) fn models(&self) -> &[String] {
        &self.models
    }

    fn mean(&self, m: usize, of: &[Vec<f64>]) -> f64 {
        of.iter().map(|row| row[m]).sum::<f64>() / of.len() as f64
    }

    /// The model with the best mean quality (the cheaper on ties).
    pub(crate) fn reference_model(&self) -> &str {
        &self.models[self.reference]
    }
}

/// Each item's fold, dealt in turn along the order of a hash of `seed` and its id (the savings
/// benchmark's train folds, and a target's).
pub(crate) fn folds_of<'a>(ids: impl IntoIterator<Item = &'a str>, folds: usize, seed: u64) -> Vec<usize> {
    let (order, _) = crate::eval::split_indices(ids, 1.0, seed);
    let mut fold_of = vec![0usize; order.len()];
    for (rank, &i) in order.iter().enumerate() {
        fold_of[i] = rank % folds;
    }
    fold_of
}

/// A tuning kept between starts ([`TunedCache`]): the key it was found for, the index of the
/// configuration chosen among the candidates, and what was found.
#[derive(Serialize, Deserialize)]
struct KeptTuning {
    key: String,
    config: usize,
    tuned: Tuned,
}

/// Tunings kept between starts, one file per key in a folder (`<vector cache>/tuned/<key>.json`):
/// the key hashes everything the tuning reads (semroute's version, the embedding model, every
/// exemplar with its grade, every price, the target and its candidates, the router's settings),
/// so a file is only ever read for the very tuning it holds. A file that cannot be read, or holds
/// another key, is ignored (and replaced once tuned again): a cache never fails a build. The
/// files count towards the vector cache's bounds, and go least recently used first.
pub(crate) struct TunedCache {
    cache: crate::index::VectorCache,
}

impl TunedCache {
    pub(crate) fn new(cache: &crate::index::VectorCache) -> Self {
        TunedCache { cache: cache.clone() }
    }

    /// The key of a tuning that reads these parts, in order.
    pub(crate) fn key<'a>(parts: impl IntoIterator<Item = &'a str>) -> String {
        crate::embed::texts_hash(parts)
    }

    fn path(&self, key: &str) -> std::path::PathBuf {
        self.cache.dir().join(crate::index::TUNED_DIR).join(format!("{key}.json"))
    }

    /// The configuration's index and what was found, kept for `key`, if a readable file holds it.
    pub(crate) fn get(&self, key: &str, configs: usize) -> Option<(usize, Tuned)> {
        let path = self.path(key);
        let text = std::fs::read(&path).ok()?;
        match serde_json::from_slice::<KeptTuning>(&text) {
            Ok(k) if k.key == key && k.config < configs => {
                crate::index::touch(&path);
                Some((k.config, Tuned { reused: true, ..k.tuned }))
            }
            Ok(_) => {
                tracing::warn!("{}: holds another tuning; tuning again", path.display());
                None
            }
            Err(e) => {
                tracing::warn!("{}: unreadable ({e}); tuning again", path.display());
                None
            }
        }
    }

    /// Keeps what was found for `key` (a failure to write is a warning: the router is built).
    pub(crate) fn put(&self, key: &str, config: usize, tuned: &Tuned) {
        let kept = KeptTuning { key: key.to_string(), config, tuned: tuned.clone() };
        let written = serde_json::to_vec_pretty(&kept)
            .map_err(|e| Error::Config(e.to_string()))
            .and_then(|bytes| crate::index::write_atomically(&self.path(key), &bytes));
        match written {
            Ok(()) => self.cache.trim(&[&self.path(key)]),
            Err(e) => tracing::warn!("the tuning was not kept for the next start: {e}"),
        }
    }
}

/// One candidate's out-of-fold picks, `[policy][knob][item]`.
pub(crate) type CandidatePicks = Vec<Vec<Vec<Pick>>>;

/// The mean quality and the total cost of the model `pick(i)` chosen for each item `i` (added
/// item by item, as the savings benchmark's points are).
pub(crate) fn point_of(quality: &[Vec<f64>], cost: &[Vec<f64>], pick: &dyn Fn(usize) -> usize) -> (f64, f64) {
    let n = quality.len().max(1) as f64;
    let (mut q, mut c) = (0.0, 0.0);
    for i in 0..quality.len() {
        let m = pick(i);
        q += 1.0 * quality[i][m] / n;
        c += 1.0 * cost[i][m];
    }
    (q, c)
}

/// Squared errors of quality predictions against measured qualities, with the baseline's (each
/// model's mean), and a reliability table.
#[derive(Debug, Clone)]
pub(crate) struct CalibrationAcc {
    sq: f64,
    base_sq: f64,
    n: usize,
    bins: [(f64, f64, usize); 10],
    /// Per model: squared error, pairs.
    per_model: Vec<(f64, usize)>,
}

impl CalibrationAcc {
    pub(crate) fn new(models: usize) -> Self {
        CalibrationAcc { sq: 0.0, base_sq: 0.0, n: 0, bins: [(0.0, 0.0, 0); 10], per_model: vec![(0.0, 0); models] }
    }

    /// The assessment's predicted quality of each of `models` (`None` where it has none).
    pub(crate) fn predicted(a: &Assessment, models: &[String]) -> Vec<Option<f64>> {
        models.iter().map(|name| a.predictions().per_model.get(name).map(|p| p.quality)).collect()
    }

    /// One item: the predicted and the measured quality of each model, and each model's mean.
    pub(crate) fn add(&mut self, predicted: &[Option<f64>], q: &[f64], means: &[f64]) {
        for (m, p) in predicted.iter().enumerate() {
            let Some(p) = p else { continue };
            let p = p.clamp(0.0, 1.0);
            self.sq += (p - q[m]).powi(2);
            self.per_model[m].0 += (p - q[m]).powi(2);
            self.per_model[m].1 += 1;
            self.base_sq += (means[m] - q[m]).powi(2);
            self.n += 1;
            let b = ((p * 10.0) as usize).min(9);
            self.bins[b].0 += p;
            self.bins[b].1 += q[m];
            self.bins[b].2 += 1;
        }
    }

    pub(crate) fn brier(&self) -> f64 {
        self.sq / self.n.max(1) as f64
    }

    pub(crate) fn baseline_brier(&self) -> f64 {
        self.base_sq / self.n.max(1) as f64
    }

    /// Ten bins of predicted quality: (predicted mean, measured mean, pairs), the empty left out.
    pub(crate) fn reliability(&self) -> Vec<(f64, f64, usize)> {
        self.bins.iter().filter(|b| b.2 > 0).map(|&(p, q, n)| (p / n as f64, q / n as f64, n)).collect()
    }

    /// The Brier score over `models` alone.
    pub(crate) fn brier_of(&self, models: &[usize]) -> f64 {
        let (sq, n) = models.iter().filter_map(|&m| self.per_model.get(m)).fold((0.0, 0), |(s, n), p| (s + p.0, n + p.1));
        sq / n.max(1) as f64
    }
}

/// A candidate × policy's out-of-fold figures.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OofScore {
    /// AIQ of its out-of-fold curve over the single models' cost range.
    pub aiq: f64,
    /// Brier score of its out-of-fold quality predictions, every model.
    pub brier: f64,
    /// The same over the models on the cost–quality frontier only.
    pub frontier_brier: f64,
}

/// Item `i`'s prompt, vector and input tokens.
pub(crate) type ItemOf<'a> = dyn Fn(usize) -> Result<(&'a str, Vec<f32>, Option<u64>)> + Sync + 'a;
/// The router of a configuration over the items `part`, its exemplar graph read from (or saved
/// in) the folder `graphs`, its fitted models shared through `fits`.
pub(crate) type RouterOf<'a> = dyn Fn(&RouterConfig, &[usize], &Path, &FitCache) -> Result<Router> + Sync + 'a;
/// A router of a configuration, with the other settings of the one being built, on these
/// exemplars and this embedder, its graph read from (or saved in) a folder, its fits shared.
pub(crate) type BuildWith<'a> = dyn Fn(&RouterConfig, ExemplarSet, Arc<dyn Embedder>, &Path, &FitCache) -> Result<Router> + Sync + 'a;

/// What [`cross_fit`] needs: the items (exemplars, or a benchmark's train prompts) with every
/// model's measured quality and cost, their folds, the candidates and how to build their routers.
pub(crate) struct CrossFit<'a> {
    pub configs: &'a [RouterConfig],
    pub policies: &'a [Policy],
    /// Each item's fold, `0..folds`.
    pub fold_of: &'a [usize],
    pub folds: usize,
    pub models: &'a [String],
    /// `quality[i][m]`, `cost[i][m]`: item `i`'s measured quality and cost with model `m`.
    pub quality: &'a [Vec<f64>],
    pub cost: &'a [Vec<f64>],
    /// A prompt's median cost over the models: where the USD-per-quality knobs are swept.
    pub typical_cost: f64,
    pub item: &'a ItemOf<'a>,
    pub router: &'a RouterOf<'a>,
    /// Seed of the bootstrap that the choice among candidates draws.
    pub seed: u64,
}

/// What [`cross_fit`] found.
pub(crate) struct CrossFitted {
    /// Each configuration's out-of-fold picks.
    pub picks: Vec<CandidatePicks>,
    /// Each configuration × policy's figures, at `config * policies + policy`.
    pub scores: Vec<OofScore>,
    /// The candidate chosen ([`choose_candidate`]), indexed as `scores`.
    pub chosen: usize,
}

/// Cross-fits every configuration on the items: on each fold, the configuration's router on the
/// other folds decides the fold's items under every knob of every policy, so every item is
/// decided by routers that never saw its grades. Then scores each candidate (configuration ×
/// policy) and chooses one ([`choose_candidate`]).
///
/// The candidates' routers on a fold share their exemplar graph (built once, on every core, by
/// a router that fits nothing) and the models they fit (the same kernel-ridge model in four of
/// the default candidates, the same low-rank model in three), and are built and assess side by
/// side, one per free core; a lone configuration's folds run side by side instead.
pub(crate) fn cross_fit(x: &CrossFit<'_>) -> Result<CrossFitted> {
    let n = x.quality.len();
    let models = x.models.len();
    let index: HashMap<&str, usize> = x.models.iter().enumerate().map(|(i, m)| (m.as_str(), i)).collect();
    let single: Vec<(f64, f64)> = (0..models).map(|m| point_of(x.quality, x.cost, &|_| m)).collect();
    let means: Vec<f64> = single.iter().map(|p| p.0).collect();
    // The models on the cost–quality frontier: each better than every cheaper one.
    let frontier: Vec<usize> = {
        let mut by_cost: Vec<usize> = (0..models).collect();
        by_cost.sort_by(|&a, &b| single[a].1.total_cmp(&single[b].1).then(means[b].total_cmp(&means[a])));
        let mut best = f64::NEG_INFINITY;
        by_cost
            .into_iter()
            .filter(|&m| {
                let better = means[m] > best;
                best = best.max(means[m]);
                better
            })
            .collect()
    };
    let range = (single.iter().map(|p| p.1).fold(f64::INFINITY, f64::min), single.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max));
    let grids: Vec<Vec<f64>> = x.policies.iter().map(|&p| knobs(p, x.typical_cost)).collect();
    // Every configuration's router on a fold indexes the same exemplars: the first saves the
    // graph (and the vectors) in this private folder, the others read it (milliseconds, against
    // seconds to build one over thousands of exemplars). The router's own cache, not a copy.
    let graphs = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let mut picks: Vec<CandidatePicks> = x.configs.iter().map(|_| grids.iter().map(|g| vec![vec![0; n]; g.len()]).collect()).collect();
    let mut calibrations: Vec<CalibrationAcc> = x.configs.iter().map(|_| CalibrationAcc::new(models)).collect();
    let part_of = |fold: usize| -> Vec<usize> { (0..n).filter(|&i| x.fold_of[i] != fold).collect() };
    // One wave per fold, its configurations side by side; a lone configuration's folds in one wave.
    let waves: Vec<Vec<(usize, usize)>> = if x.configs.len() == 1 {
        vec![(0..x.folds).map(|f| (f, 0)).collect()]
    } else {
        (0..x.folds).map(|f| (0..x.configs.len()).map(|c| (f, c)).collect()).collect()
    };
    for wave in waves {
        let fits: HashMap<usize, FitCache> = wave.iter().map(|&(f, _)| (f, FitCache::new())).collect();
        if x.configs.len() > 1 {
            // Builds the fold's exemplar graph once, on every core, and saves it for the
            // candidates' routers to read (two built side by side would each build it).
            (x.router)(&RouterConfig::graph_only(), &part_of(wave[0].0), graphs.path(), &FitCache::new())?;
        }
        // Each job's figures are merged as its router finishes, so that one job's assessments at
        // most per core are held at once; a configuration's calibration is then added fold by
        // fold, in order.
        let merged = std::sync::Mutex::new((&mut picks, Vec::new()));
        let job = |&(fold, c): &(usize, usize)| -> Result<()> {
            let part = part_of(fold);
            let held: Vec<usize> = (0..n).filter(|&i| x.fold_of[i] == fold).collect();
            let router = (x.router)(&x.configs[c], &part, graphs.path(), &fits[&fold])?;
            let assessments = assess_all(&router, &held, x.item)?;
            drop(router);
            let predicted: Vec<Vec<Option<f64>>> = assessments.iter().map(|a| CalibrationAcc::predicted(a, x.models)).collect();
            let fold_picks: Vec<Vec<Vec<Pick>>> = x
                .policies
                .iter()
                .zip(&grids)
                .map(|(&policy, grid)| crate::target::picks(&assessments, policy, grid, &index))
                .collect::<Result<_>>()?;
            let mut guard = merged.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let (picks, predictions) = &mut *guard;
            for (p, policy_picks) in fold_picks.into_iter().enumerate() {
                for (k, row) in policy_picks.into_iter().enumerate() {
                    for (j, &i) in held.iter().enumerate() {
                        picks[c][p][k][i] = row[j];
                    }
                }
            }
            predictions.push((fold, c, held, predicted));
            Ok(())
        };
        let done: Vec<Result<()>> = {
            use rayon::prelude::*;
            wave.par_iter().with_max_len(1).map(job).collect()
        };
        done.into_iter().collect::<Result<Vec<()>>>()?;
        let (_, mut predictions) = merged.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
        predictions.sort_by_key(|p| (p.0, p.1));
        for (_, c, held, predicted) in predictions {
            for (&i, p) in held.iter().zip(&predicted) {
                calibrations[c].add(p, &x.quality[i], &means);
            }
        }
    }
    let mut scores = Vec::with_capacity(x.configs.len() * x.policies.len());
    for (per_policy, calibration) in picks.iter().zip(&calibrations) {
        for per_knob in per_policy {
            let curve: Vec<(f64, f64)> = per_knob
                .iter()
                .map(|pick| {
                    let (q, c) = point_of(x.quality, x.cost, &|i| usize::from(pick[i]));
                    (c, q)
                })
                .collect();
            scores.push(OofScore {
                aiq: aiq(&curve, range.0, range.1),
                brier: calibration.brier(),
                frontier_brier: calibration.brier_of(&frontier),
            });
        }
    }
    let chosen = choose_candidate(&scores, &picks, x.policies.len(), x.quality, x.cost, range, x.seed)?;
    Ok(CrossFitted { picks, scores, chosen })
}

/// Replicates of the train items drawn by [`choose_candidate`].
const CHOICE_REPLICATES: usize = 200;

/// The candidate (configuration × policy, as indexed in `scores`) chosen: among those whose
/// out-of-fold AIQ is within one standard error of the largest (the standard error of the
/// paired difference, over bootstrap replicates of the items), the one whose predictions have
/// the lowest out-of-fold Brier score over the models on the cost–quality frontier; the larger
/// AIQ, then the earlier candidate, on ties. This is the one-standard-error rule of model
/// selection (Breiman et al., 1984) with the Brier score as the tie-breaker: AIQ is what a curve
/// is judged by, but it turns on the few prompts near each knob's threshold, so on a small set
/// it cannot tell candidates apart (on 56 MT-Bench prompts the AIQs of ten configurations lay
/// within 0.02, and the largest picked a lucky one); the Brier score, a proper score over every
/// prompt × model, varies far less. Where AIQ does tell them apart (large sets), it decides.
fn choose_candidate(
    scores: &[OofScore],
    picks: &[CandidatePicks],
    policies: usize,
    quality: &[Vec<f64>],
    cost: &[Vec<f64>],
    range: (f64, f64),
    seed: u64,
) -> Result<usize> {
    let best = (0..scores.len()).fold(0, |b, i| if scores[i].aiq > scores[b].aiq + 1e-12 { i } else { b });
    let n = quality.len();
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5EED);
    // The replicates' weights drawn one after the other (the same draws as ever), then the
    // candidates' AIQs on them computed side by side.
    let replicates: Vec<Vec<u32>> = (0..CHOICE_REPLICATES)
        .map(|_| {
            let mut weights = vec![0u32; n];
            for _ in 0..n {
                weights[rng.random_range(0..n)] += 1;
            }
            weights
        })
        .collect();
    // Each candidate's AIQ on every replicate. Per candidate, each prompt's quality and cost
    // under every knob's pick are laid out prompt by prompt, so that all the knobs' sums advance
    // together: each still adds its prompts in order (the same numbers to the bit as one knob
    // after the other), but the knobs' sums, independent, run side by side (a 14,000-prompt set
    // spent seconds here, each sum waiting on the one addition before it).
    let all: Vec<usize> = (0..scores.len()).collect();
    let aiqs: Vec<Vec<f64>> = par_map(&all, 1, |&s| {
        let per_knob = &picks[s / policies][s % policies];
        let k = per_knob.len();
        if k == 0 {
            return Ok(vec![aiq(&[], range.0, range.1); replicates.len()]);
        }
        let (mut xq, mut xc) = (vec![0.0; n * k], vec![0.0; n * k]);
        for (j, pick) in per_knob.iter().enumerate() {
            for (i, &m) in pick.iter().enumerate() {
                xq[i * k + j] = quality[i][usize::from(m)];
                xc[i * k + j] = cost[i][usize::from(m)];
            }
        }
        let (mut q, mut c) = (vec![0.0f64; k], vec![0.0f64; k]);
        Ok(replicates
            .iter()
            .map(|weights| {
                q.fill(0.0);
                c.fill(0.0);
                for ((&w, rq), rc) in weights.iter().zip(xq.chunks_exact(k)).zip(xc.chunks_exact(k)) {
                    let w = f64::from(w);
                    for (((q, c), &x), &y) in q.iter_mut().zip(c.iter_mut()).zip(rq).zip(rc) {
                        *q += w * x;
                        *c += w * y;
                    }
                }
                let curve: Vec<(f64, f64)> = q.iter().zip(&c).map(|(&q, &c)| (c, q / n as f64)).collect();
                aiq(&curve, range.0, range.1)
            })
            .collect())
    })?;
    let diffs: Vec<Vec<f64>> = (0..scores.len())
        .map(|s| (0..replicates.len()).map(|r| if s == best { 0.0 } else { aiqs[best][r] - aiqs[s][r] }).collect())
        .collect();
    let se = |d: &[f64]| {
        let mean = d.iter().sum::<f64>() / d.len() as f64;
        (d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (d.len() - 1) as f64).sqrt()
    };
    Ok((0..scores.len()).filter(|&s| scores[best].aiq - scores[s].aiq <= se(&diffs[s])).fold(best, |b, s| {
        let (x, y) = (&scores[s], &scores[b]);
        if x.frontier_brier < y.frontier_brier - 1e-12 || (x.frontier_brier <= y.frontier_brier + 1e-12 && x.aiq > y.aiq + 1e-12) {
            s
        } else {
            b
        }
    }))
}

/// What [`tune`] needs from the router being built.
pub(crate) struct Tuning<'a> {
    pub target: QualityTarget,
    /// The exemplars (every one measuring every compared model) and their vectors, in order.
    pub exemplars: &'a ExemplarSet,
    pub vectors: Vec<Vec<f32>>,
    /// What the exemplars measure of each model the router compares.
    pub measured: Measured,
    pub embedder: Arc<dyn Embedder>,
    /// The configurations chosen among, and the knobs turned.
    pub configs: Vec<RouterConfig>,
    pub policies: Vec<Policy>,
    pub build: &'a BuildWith<'a>,
}

/// Cross-fits the candidate routers on the exemplars, chooses one and finds the operating point
/// of `t.target` on it (see the [module documentation](self)); with the index of the
/// configuration chosen.
pub(crate) fn tune(t: Tuning<'_>) -> Result<(Tuned, usize)> {
    let n = t.exemplars.len();
    let folds = t.target.folds;
    if n < 2 * folds {
        return Err(Error::Config(format!("a quality target over {folds} folds needs at least {} exemplars, got {n}", 2 * folds)));
    }
    let m = &t.measured;
    if m.quality.len() != n || t.vectors.len() != n {
        return Err(Error::Config("a quality target's exemplars, vectors and measurements differ in number".into()));
    }
    if t.configs.is_empty() || t.policies.is_empty() {
        return Err(Error::Config("a quality target needs at least one candidate configuration and one policy".into()));
    }
    let typical_cost = {
        let mut per_prompt: Vec<f64> = m.cost.iter().map(|c| c.iter().sum::<f64>() / c.len() as f64).collect();
        per_prompt.sort_by(f64::total_cmp);
        per_prompt[per_prompt.len() / 2]
    };
    let fold_of = folds_of(t.exemplars.iter().map(|e| e.id.as_str()), folds, t.target.seed);
    // The fold routers embed nothing: every exemplar's vector is known.
    let memo = Arc::new(Memo::with_vectors(t.embedder.clone(), t.exemplars.iter().map(|e| e.prompt.as_str()).zip(&t.vectors)));
    let embedder: Arc<dyn Embedder> = memo;
    let item = |i: usize| Ok((t.exemplars.get(i).prompt.as_str(), t.vectors[i].clone(), Some(m.input_tokens[i])));
    let router = |config: &RouterConfig, part: &[usize], graphs: &Path, fits: &FitCache| {
        let exemplars = ExemplarSet::from_exemplars(part.iter().map(|&i| t.exemplars.get(i).clone()).collect())?;
        (t.build)(config, exemplars, embedder.clone(), graphs, fits)
    };
    let fitted = cross_fit(&CrossFit {
        configs: &t.configs,
        policies: &t.policies,
        fold_of: &fold_of,
        folds,
        models: &m.models,
        quality: &m.quality,
        cost: &m.cost,
        typical_cost,
        item: &item,
        router: &router,
        // The savings benchmark folds a train split of seed s with seed s + 1, and draws its
        // choice's replicates with seed s.
        seed: t.target.seed.wrapping_sub(1),
    })?;
    let chosen = fitted.chosen;
    let (c, p) = (chosen / t.policies.len(), chosen % t.policies.len());
    let (policy, oof) = (t.policies[p], &fitted.picks[c][p]);
    let grid = knobs(policy, typical_cost);
    let reference = m.reference;
    let point = operating_point(&m.quality, &m.cost, reference, t.target.keep, t.target.confidence_z, &[(chosen, oof)], chosen);
    let at = |pick: &dyn Fn(usize) -> usize| {
        let q = (0..n).map(|i| m.quality[i][pick(i)]).sum::<f64>() / n as f64;
        let c = (0..n).map(|i| m.cost[i][pick(i)]).sum::<f64>() / n as f64;
        (q, c)
    };
    let (point, (quality, cost_usd)) = match point {
        Some(Operating::Routed(_, k)) => (OperatingPoint::Knob(policy.objective(grid[k])), at(&|i| usize::from(oof[k][i]))),
        Some(Operating::Single(s)) => (OperatingPoint::Model(m.models[s].clone()), at(&|_| s)),
        // Nothing clears with the margin asked for (a target of 1, or too few exemplars to be
        // sure): the reference alone is the best the exemplars know.
        None => (OperatingPoint::Model(m.models[reference].clone()), at(&|_| reference)),
    };
    let (reference_quality, reference_cost_usd) = at(&|_| reference);
    let tuned = Tuned {
        keep: t.target.keep,
        point,
        candidate: t.configs[c].name.clone(),
        candidates: t.configs.len() * t.policies.len(),
        reference_model: m.models[reference].clone(),
        reference_quality,
        reference_cost_usd,
        quality,
        cost_usd,
        exemplars: n,
        exemplars_set_aside: m.set_aside.len(),
        folds,
        models_left_out: m.left_out.clone(),
        reused: false,
    };
    Ok((tuned, c))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mix of two models over 40 prompts (0: cost 1, right on the even prompts; 1: cost 10,
    /// right on all) that sends the cheap one exactly where it is right, except on `wrong` (odd
    /// prompts sent cheap) and `wasted` (even prompts sent to the reference).
    fn mix(wrong: &[usize], wasted: &[usize]) -> Vec<Pick> {
        (0..40).map(|i| Pick::from((i % 2 == 1 && !wrong.contains(&i)) || wasted.contains(&i))).collect()
    }

    /// Each mix as a candidate whose curve is: all cheap, the mix, all reference; with its Brier.
    type Case = (Vec<OofScore>, Vec<CandidatePicks>, Vec<Vec<f64>>, Vec<Vec<f64>>);

    fn candidates(mixes: &[Vec<Pick>], briers: &[f64]) -> Case {
        let n = 40;
        let quality: Vec<Vec<f64>> = (0..n).map(|i| vec![f64::from(u8::from(i % 2 == 0)), 1.0]).collect();
        let cost = vec![vec![1.0, 10.0]; n];
        let (mut scores, mut picks) = (Vec::new(), Vec::new());
        for (mix, &brier) in mixes.iter().zip(briers) {
            let curve = vec![vec![0; n], mix.clone(), vec![1; n]];
            let points: Vec<(f64, f64)> = curve
                .iter()
                .map(|p| {
                    let (q, c) = point_of(&quality, &cost, &|i| usize::from(p[i]));
                    (c, q)
                })
                .collect();
            scores.push(OofScore { aiq: aiq(&points, 40.0, 400.0), brier, frontier_brier: brier });
            picks.push(vec![curve]);
        }
        (scores, picks, quality, cost)
    }

    #[test]
    fn prompts_a_model_lacks_are_set_aside_up_to_five_percent_then_the_model_is_left_out() {
        // 40 items, so at most 2 set aside (5%): model 0 has every item, 1 lacks item 5, 2 lacks
        // items 5 and 9.
        let lacks = |gaps: &[&[usize]]| {
            let names: Vec<String> = (0..gaps.len()).map(|m| m.to_string()).collect();
            let c = coverage(&names, 40, &|i, m| !gaps[m.parse::<usize>().unwrap()].contains(&i));
            let index = |v: Vec<String>| v.iter().map(|m| m.parse::<usize>().unwrap()).collect::<Vec<usize>>();
            (index(c.models), index(c.left_out), c.set_aside)
        };
        assert_eq!(lacks(&[&[], &[5], &[5, 9]]), (vec![0, 1, 2], vec![], vec![5, 9]));
        // Three items lacked: the model lacking the most is left out.
        assert_eq!(lacks(&[&[], &[5, 9], &[12]]), (vec![0, 2], vec![1], vec![12]));
        // On a tie, the later.
        assert_eq!(lacks(&[&[1, 2], &[], &[3, 4]]), (vec![0, 1], vec![2], vec![1, 2]));
        // A model with no result at all is left out first; with nothing lacked, nothing set aside.
        let none: Vec<usize> = (0..40).collect();
        assert_eq!(lacks(&[&[], &none, &[]]), (vec![0, 2], vec![1], vec![]));
    }

    #[test]
    fn the_choice_goes_to_the_better_brier_score_among_candidates_aiq_cannot_tell_apart() {
        // c0 and c1 disagree on twelve prompts and differ by one of them: noise. c2 routes half
        // the prompts the wrong way round: clearly worse, however good its Brier score.
        let a = mix(&[1, 5, 9, 13, 17], &[0, 4, 8, 12, 16, 20]);
        let b = mix(&[21, 25, 29, 33, 37, 3], &[24, 28, 32, 36, 2, 6]);
        let c = (0..40).map(|i| Pick::from(i < 20)).collect();
        let (scores, picks, q, c) = candidates(&[a, b, c], &[0.20, 0.10, 0.05]);
        assert!(scores[0].aiq > scores[1].aiq && scores[1].aiq > scores[2].aiq + 0.04, "{scores:?}");
        let range = (40.0, 400.0);
        assert_eq!(choose_candidate(&scores, &picks, 1, &q, &c, range, 42).unwrap(), 1);
        // Where AIQ tells them apart, it decides: the same but c1 now wrong on ten more prompts.
        let b = mix(&[21, 25, 29, 33, 37, 3, 7, 11, 15, 19, 23, 27, 31, 35, 39, 1], &[24, 28, 32, 36, 2, 6]);
        let (scores, picks, q, c) = candidates(&[mix(&[1, 5, 9, 13, 17], &[0, 4, 8, 12, 16, 20]), b], &[0.20, 0.10]);
        assert_eq!(choose_candidate(&scores, &picks, 1, &q, &c, range, 42).unwrap(), 0);
        // And a candidate alone is chosen.
        assert_eq!(choose_candidate(&scores[..1], &picks[..1], 1, &q, &c, range, 42).unwrap(), 0);
    }

    #[test]
    fn the_operating_point_is_the_cheapest_that_clears_the_target_with_its_margin() {
        // Four prompts, models 0 (cheap: right on the first two) and 1 (the reference: right on all).
        let quality = vec![vec![1.0, 1.0], vec![1.0, 1.0], vec![0.0, 1.0], vec![0.0, 1.0]];
        let cost = vec![vec![1.0, 10.0]; 4];
        // Knob 0 sends everything to the cheap model, knob 1 the last two to the reference,
        // knob 2 everything to the reference.
        let knobs: Vec<Vec<Pick>> = vec![vec![0, 0, 0, 0], vec![0, 0, 1, 1], vec![1, 1, 1, 1]];
        let routed = [(0, knobs.as_slice())];
        // Keeping 100% with no margin: knob 1 (cost 22) beats the reference alone (40).
        assert_eq!(operating_point(&quality, &cost, 1, 1.0, 0.0, &routed, 0), Some(Operating::Routed(0, 1)));
        // Keeping half: knob 0 has a mean difference of 0 (clears with no margin) and costs 4.
        assert_eq!(operating_point(&quality, &cost, 1, 0.5, 0.0, &routed, 0), Some(Operating::Routed(0, 0)));
        // With a margin, knob 0's difference (+0.5, +0.5, −0.5, −0.5: mean 0) no longer clears.
        assert_eq!(operating_point(&quality, &cost, 1, 0.5, 1.0, &routed, 0), Some(Operating::Routed(0, 1)));
        // A single model strictly cheaper than every clearing knob wins: make model 0 right everywhere.
        let all_right = vec![vec![1.0, 1.0]; 4];
        assert_eq!(operating_point(&all_right, &cost, 1, 1.0, 0.0, &routed, 0), Some(Operating::Routed(0, 0)));
        let without_knob_0 = [(0, &knobs[1..])];
        assert_eq!(operating_point(&all_right, &cost, 1, 1.0, 0.0, &without_knob_0, 0), Some(Operating::Single(0)));
        // Without knobs the reference clears 100% (its difference is 0 on every prompt).
        assert_eq!(operating_point(&quality, &cost, 1, 1.0, 0.0, &[], 0), Some(Operating::Single(1)));
        // On equal cost the preferred candidate's knob is kept.
        let twice = [(3, knobs.as_slice()), (7, knobs.as_slice())];
        assert_eq!(operating_point(&quality, &cost, 1, 1.0, 0.0, &twice, 7), Some(Operating::Routed(7, 1)));
        assert_eq!(operating_point(&quality, &cost, 1, 1.0, 0.0, &twice, 3), Some(Operating::Routed(3, 1)));
        // One prompt says nothing about a spread.
        assert_eq!(operating_point(&quality[..1], &cost[..1], 1, 1.0, 0.0, &routed, 0), None);
    }
}
