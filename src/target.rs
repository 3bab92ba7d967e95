//! Quality targets: "keep X% of the best model's quality", turned into the router's knob by
//! cross-fitting on measured exemplars.
//!
//! A quality bar (or a USD value of quality) is a knob on *predicted* quality; what a caller
//! wants is a quality *measured* against something they know: "as good as GPT-4o, give or take
//! five percent". With exemplars that say how well every model answered them (measured, not hand
//! labels), [`RouterBuilder::quality_target`](crate::RouterBuilder::quality_target) turns the
//! second into the first when the router is built:
//!
//! 1. The **reference** is the model with the best mean quality on the exemplars.
//! 2. The exemplars are cut into folds. On each, a router with the same settings is built on the
//!    other folds and decides every prompt of the held-out fold under each knob of a grid (the bar
//!    from 0 to 1, or USD per quality point on a log scale around the exemplars' typical cost).
//!    Every exemplar is thus decided by a router that never saw its grades.
//! 3. The **operating point** is the cheapest, out of fold, whose quality exceeds X × the
//!    reference's by `confidence_z` standard errors of the paired difference (one-sided: 1.645
//!    by default, 95%). Every single model is an operating point too, held to the same test: where
//!    calling one model meets the target for less than any knob, the router sends every prompt to
//!    it and says so (on a set where one cheap model is nearly as good as the best, routing costs
//!    more than it saves).
//!
//! The router then routes with that knob (or that model) and [`Router::tuned`](crate::Router::tuned)
//! reports what was found. The savings benchmark ([`eval`](crate::eval)) chooses its targets'
//! operating points with this same rule, on its own cross-fitting of the train split.
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
use std::sync::Arc;

use serde::Serialize;

use crate::embed::{Embedder, Memo};
use crate::error::{Error, Result};
use crate::exemplar::{ExemplarSet, Grade};
use crate::policy::{Constraints, Objective};
use crate::pricing::{PriceTable, TokenCounter};
use crate::router::{Assessment, Router};

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
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QualityTarget {
    keep: f64,
    folds: usize,
    confidence_z: f64,
    seed: u64,
}

impl QualityTarget {
    /// Keep `share` (in (0, 1]) of the reference model's quality; 5 folds, 1.645 standard errors.
    pub fn keep(share: f64) -> Self {
        QualityTarget { keep: share, folds: 5, confidence_z: 1.645, seed: 1 }
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
        Ok(())
    }
}

/// How a tuned router meets its target.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Tuned {
    /// The share of the reference's quality asked for.
    pub keep: f64,
    /// The knob (or the one model) that meets it.
    pub point: OperatingPoint,
    /// The model with the best mean quality on the exemplars.
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
    /// Folds of the cross-fitting.
    pub folds: usize,
    /// Priced models left out because some exemplar does not measure them (a target compares
    /// every model on every exemplar; the router routes among the others).
    pub models_left_out: Vec<String>,
}

impl fmt::Display for Tuned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kept = if self.reference_quality > 0.0 { self.quality / self.reference_quality } else { 1.0 };
        let how = match &self.point {
            OperatingPoint::Knob(Objective::QualityBar(b)) => format!("quality bar {b:.2}"),
            OperatingPoint::Knob(Objective::UsdPerQuality(u)) => format!("${u:.6} per quality point"),
            OperatingPoint::Model(m) => format!("{m} for every prompt (cheaper than any knob that meets the target)"),
        };
        write!(
            f,
            "keep {:.0}% of {}'s quality: {how}; out of fold on {} exemplars ({} folds) it kept {:.1}% for ${:.6} a prompt against ${:.6}",
            100.0 * self.keep,
            self.reference_model,
            self.exemplars,
            self.folds,
            100.0 * kept,
            self.cost_usd,
            self.reference_cost_usd
        )
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

/// What the exemplars measure of the priced models every one of them measures (the others are
/// left out): each model's quality and cost on each exemplar (the measured cost where the
/// exemplar keeps one, else answer tokens × list price), and the reference: the best mean
/// quality, the cheaper on ties.
pub(crate) struct Measured {
    models: Vec<String>,
    /// Priced models some exemplar does not measure, in the price table's order.
    pub(crate) left_out: Vec<String>,
    quality: Vec<Vec<f64>>,
    cost: Vec<Vec<f64>>,
    input_tokens: Vec<u64>,
    reference: usize,
}

impl Measured {
    /// An error for a hand-labelled exemplar, or fewer than two models measured on every one.
    pub(crate) fn new(exemplars: &ExemplarSet, prices: &PriceTable, tokens: &TokenCounter) -> Result<Self> {
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
        let (models, left_out): (Vec<String>, Vec<String>) =
            prices.names().map(str::to_string).partition(|m| results.iter().all(|(_, r)| r.contains_key(m)));
        if models.len() < 2 || results.is_empty() {
            return Err(Error::Config(format!(
                "a quality target compares the models on every exemplar, and fewer than two priced models are measured on all {} \
                 ({models:?})",
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
        let measured = Measured { models, left_out, quality, cost, input_tokens, reference: 0 };
        let (q, c) = (|m| measured.mean(m, &measured.quality), |m| measured.mean(m, &measured.cost));
        let reference = (0..measured.models.len()).max_by(|&a, &b| q(a).total_cmp(&q(b)).then(c(b).total_cmp(&c(a)))).unwrap_or(0);
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

/// What [`tune`] needs from the router being built.
pub(crate) struct Tuning<'a> {
    pub target: QualityTarget,
    /// The exemplars (every one measuring every compared model) and their vectors, in order.
    pub exemplars: &'a ExemplarSet,
    pub vectors: Vec<Vec<f32>>,
    /// What the exemplars measure of each model the router compares.
    pub measured: Measured,
    pub embedder: Arc<dyn Embedder>,
    /// Which knob the router turns.
    pub policy: Policy,
    /// A router with the settings of the one being built, on these exemplars and this embedder.
    pub build: &'a (dyn Fn(ExemplarSet, Arc<dyn Embedder>) -> Result<Router> + Sync),
}

/// Cross-fits the router on its exemplars and finds the operating point of `t.target` (see the
/// [module documentation](self)).
pub(crate) fn tune(t: Tuning<'_>) -> Result<Tuned> {
    let n = t.exemplars.len();
    let folds = t.target.folds;
    if n < 2 * folds {
        return Err(Error::Config(format!("a quality target over {folds} folds needs at least {} exemplars, got {n}", 2 * folds)));
    }
    let m = &t.measured;
    if m.quality.len() != n || t.vectors.len() != n {
        return Err(Error::Config("a quality target's exemplars, vectors and measurements differ in number".into()));
    }
    let index: HashMap<&str, usize> = m.models.iter().enumerate().map(|(i, name)| (name.as_str(), i)).collect();
    let typical_cost = {
        let mut per_prompt: Vec<f64> = m.cost.iter().map(|c| c.iter().sum::<f64>() / c.len() as f64).collect();
        per_prompt.sort_by(f64::total_cmp);
        per_prompt[per_prompt.len() / 2]
    };
    let grid = knobs(t.policy, typical_cost);

    let fold_of = folds_of(t.exemplars.iter().map(|e| e.id.as_str()), folds, t.target.seed);
    // The fold routers embed nothing: every exemplar's vector is known.
    let memo = Arc::new(Memo::with_vectors(t.embedder.clone(), t.exemplars.iter().map(|e| e.prompt.as_str()).zip(&t.vectors)));
    let embedder: Arc<dyn Embedder> = memo;
    // The folds side by side: building a router is mostly one core's work (its predictor's
    // cross-validation, its fits), and each fold's is independent of the others'.
    let fold_ids: Vec<usize> = (0..folds).collect();
    let per_fold = crate::eval::par_map(&fold_ids, 1, |&fold| {
        let part: Vec<_> = (0..n).filter(|&i| fold_of[i] != fold).map(|i| t.exemplars.get(i).clone()).collect();
        let held: Vec<usize> = (0..n).filter(|&i| fold_of[i] == fold).collect();
        let router = (t.build)(ExemplarSet::from_exemplars(part)?, embedder.clone())?;
        let assessed =
            assess_all(&router, &held, |i| Ok((t.exemplars.get(i).prompt.as_str(), t.vectors[i].clone(), Some(m.input_tokens[i]))))?;
        Ok((held, picks(&assessed, t.policy, &grid, &index)?))
    })?;
    let mut oof: Vec<Vec<Pick>> = vec![vec![0; n]; grid.len()];
    for (held, rows) in per_fold {
        for (k, row) in rows.into_iter().enumerate() {
            for (j, &i) in held.iter().enumerate() {
                oof[k][i] = row[j];
            }
        }
    }
    let reference = m.reference;
    let point = operating_point(&m.quality, &m.cost, reference, t.target.keep, t.target.confidence_z, &[(0, &oof)], 0);
    let at = |pick: &dyn Fn(usize) -> usize| {
        let q = (0..n).map(|i| m.quality[i][pick(i)]).sum::<f64>() / n as f64;
        let c = (0..n).map(|i| m.cost[i][pick(i)]).sum::<f64>() / n as f64;
        (q, c)
    };
    let (point, (q, c)) = match point {
        Some(Operating::Routed(_, k)) => (OperatingPoint::Knob(t.policy.objective(grid[k])), at(&|i| usize::from(oof[k][i]))),
        Some(Operating::Single(s)) => (OperatingPoint::Model(m.models[s].clone()), at(&|_| s)),
        // Nothing clears with the margin asked for (a target of 1, or too few exemplars to be
        // sure): the reference alone is the best the exemplars know.
        None => (OperatingPoint::Model(m.models[reference].clone()), at(&|_| reference)),
    };
    let (reference_quality, reference_cost_usd) = at(&|_| reference);
    Ok(Tuned {
        keep: t.target.keep,
        point,
        reference_model: m.models[reference].clone(),
        reference_quality,
        reference_cost_usd,
        quality: q,
        cost_usd: c,
        exemplars: n,
        folds,
        models_left_out: m.left_out.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
