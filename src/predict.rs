//! Per-model quality and answer length, predicted from the nearest exemplars.
//!
//! Each neighbour gets a weight from its similarity (a softmax with a temperature, so the nearest
//! exemplars count most and near-ties count alike); a model's predicted quality is the weighted
//! mean of what the neighbours say about it:
//! - a measured exemplar gives the model's measured quality (if it was measured on that model);
//! - a hand-labelled exemplar gives 1 to models at or above its tier and 0 below.
//!
//! ```
//! use semroute::exemplar::ExemplarSet;
//! use semroute::index::Hit;
//! use semroute::predict::predict;
//! use semroute::pricing::PriceTable;
//!
//! let set = ExemplarSet::from_jsonl_str(r#"{"id":"a","prompt":"p","category":"c","language":"en","results":{"big":{"quality":1.0,"output_tokens":100},"small":{"quality":0.5,"output_tokens":80}}}"#, "x.jsonl")?;
//! let prices = PriceTable::from_toml_str(r#"
//! [models.big]
//! provider = "a"
//! input_per_mtok = 3.0
//! output_per_mtok = 15.0
//! cached_input_per_mtok = 0.3
//! context_window = 200000
//! tier = "strong"
//! source = "example"
//! as_of = "2025-01-01"
//! [models.small]
//! provider = "b"
//! input_per_mtok = 0.3
//! output_per_mtok = 1.2
//! cached_input_per_mtok = 0.03
//! context_window = 128000
//! tier = "cheap"
//! source = "example"
//! as_of = "2025-01-01"
//! "#, "p.toml")?;
//! let p = predict(&set, &[Hit { position: 0, similarity: 0.9 }], &prices, 0.1);
//! assert_eq!(p.per_model["small"].quality, 0.5);
//! assert_eq!(p.per_model["big"].output_tokens, 100.0);
//! # Ok::<(), semroute::Error>(())
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use sha2::{Digest, Sha256};

pub mod features;
pub mod lowrank;
mod ridge;
pub mod select;

pub use features::{FeatureModel, FeatureSettings};
pub use lowrank::{LowRankModel, LowRankSettings};

pub(crate) use ridge::evenly_spread;
pub use ridge::{prompt_features, QualityModel, RidgeSettings, FEATURES, KERNEL_RIDGE_MAX_EXEMPLARS, KERNEL_RIDGE_MIN_EXEMPLARS};

use crate::embed::Embedder;
use crate::error::{Error, Result};
use crate::exemplar::{Exemplar, ExemplarSet, Grade};
use crate::index::{Beams, Hit, HnswIndex, LiveIndex};
use crate::pricing::PriceTable;

/// How a router predicts each model's quality (its answer length always comes from the
/// neighbours).
///
/// ```no_run
/// use semroute::predict::{Predictor, RidgeSettings};
/// use semroute::Router;
///
/// let knn = Router::builder().predictor(Predictor::Neighbours).build()?;
/// let ridge_alone = Predictor::KernelRidge(RidgeSettings { lambda: 0.5, ..RidgeSettings::default() });
/// # Ok::<(), semroute::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub enum Predictor {
    /// While the router holds at least [`KERNEL_RIDGE_MIN_EXEMPLARS`] exemplars in process and
    /// every one is measured: the predictor that cross-validation on the exemplars finds most
    /// accurate ([`select`]: blend, neighbours, kernel ridge, low rank, their ensemble, the
    /// feature model or their [stack](Predictor::Stacked), by Brier score; chosen once at build,
    /// 1.15 s at 560 exemplars × 49 models; above [`KERNEL_RIDGE_MAX_EXEMPLARS`], chosen on that
    /// many evenly spread). Otherwise (hand labels), up to [`KERNEL_RIDGE_MAX_EXEMPLARS`],
    /// [`KernelRidge`](Predictor::KernelRidge) with [`RidgeSettings::for_embedder`].
    /// [`Neighbours`](Predictor::Neighbours) outside those ranges and with a shared store.
    #[default]
    Auto,
    /// The similarity-weighted mean of the k nearest exemplars' grades ([`predict_from`]).
    Neighbours,
    /// A [`QualityModel`] alone: kernel ridge over every exemplar, calibrated, with its own
    /// standard error ([`QualityModel::predict_with_error`]), updated by the near-copies of the
    /// prompt among the neighbours ([`with_copies`]: feedback on the very prompt counts at once,
    /// before any refit). It reads difficulty across the whole set, where a handful of
    /// neighbours reads one region's labels. Needs the in-process index (the exemplars' vectors).
    KernelRidge(RidgeSettings),
    /// The mean of the kernel-ridge model (as [`KernelRidge`](Predictor::KernelRidge)) and the
    /// neighbours. Its standard error is that of a mean of two estimates:
    /// `½·√(se_neighbours² + se_model²)`.
    Blend(RidgeSettings),
    /// A [`LowRankModel`] alone: a logistic factorisation of prompt × model shared by every
    /// model (RouteLLM's matrix factorisation, an IRT model), fitted on every exemplar. Needs
    /// the in-process index.
    LowRank(LowRankSettings),
    /// The mean of three: the neighbours, the [`QualityModel`] and the [`LowRankModel`], each
    /// with a third of the weight. Predictors that err in different ways average to a steadier
    /// one; cross-validation ([`select`]) keeps it only where it predicts better out of fold.
    /// Needs the in-process index.
    Ensemble(RidgeSettings, LowRankSettings),
    /// A [`FeatureModel`] alone: per model, a logistic regression on the prompt's features
    /// (length, script, code and maths cues, digits, difficulty words), ten numbers per model,
    /// so it generalises from a few dozen measured exemplars where the embedding-based models
    /// have too little to fit. It reads no topic.
    Features(FeatureSettings),
    /// A weighted mean of the neighbours, the [`QualityModel`], the [`LowRankModel`] and the
    /// [`FeatureModel`] (stacking: Wolpert, 1992; Breiman, 1996), the weights chosen by
    /// cross-validation on the exemplars ([`select`]): what [`Auto`](Predictor::Auto) uses for
    /// measured exemplars. Where no one predictor is best everywhere, the mix errs less than any
    /// of them; where one is, it takes (nearly) all the weight. A model part a model is missing
    /// from leaves its weight to the others. The standard error is the neighbours'. Needs the
    /// in-process index.
    Stacked(RidgeSettings, LowRankSettings, StackWeights),
}

/// The weights of [`Predictor::Stacked`]'s four predictors: non-negative, summing to 1.
///
/// ```
/// use semroute::predict::StackWeights;
///
/// let w = StackWeights { neighbours: 0.2, kernel_ridge: 0.5, low_rank: 0.3, features: 0.0 };
/// assert!(w.check().is_ok());
/// assert!(StackWeights { neighbours: 0.9, ..w }.check().is_err()); // sums to 1.7
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StackWeights {
    /// The neighbours' weight.
    pub neighbours: f64,
    /// The kernel-ridge model's.
    pub kernel_ridge: f64,
    /// The low-rank model's.
    pub low_rank: f64,
    /// The feature model's.
    pub features: f64,
}

impl StackWeights {
    /// An error unless every weight is within [0, 1] and they sum to 1 (within 1e-6).
    pub fn check(&self) -> Result<()> {
        let w = [self.neighbours, self.kernel_ridge, self.low_rank, self.features];
        if w.iter().any(|x| !(0.0..=1.0).contains(x)) || (w.iter().sum::<f64>() - 1.0).abs() > 1e-6 {
            return Err(Error::Config(format!("stacking weights must be within [0, 1] and sum to 1, got {self:?}")));
        }
        Ok(())
    }
}

/// The models a [`Fitted::Stacked`] holds, each only where its weight is not 0.
#[derive(Debug, Clone)]
pub struct Stack {
    /// Kernel ridge.
    pub ridge: Option<Arc<QualityModel>>,
    /// Low rank (a [`Fitted::LowRank`]).
    pub low_rank: Option<Fitted>,
    /// The feature model.
    pub features: Option<FeatureModel>,
    /// The weights.
    pub weights: StackWeights,
}

impl Stack {
    /// The model parts' weighted mean per model, each part's weight shared among the parts that
    /// predict the model; `ridge` is the kernel-ridge part's prediction (with or without copies).
    fn mix(&self, ridge: Option<BTreeMap<String, f64>>, prompt: &str, vector: &[f32]) -> BTreeMap<String, f64> {
        let w = &self.weights;
        let mut sums: BTreeMap<String, (f64, f64)> = BTreeMap::new();
        let mut add = |parts: BTreeMap<String, f64>, weight: f64| {
            for (name, q) in parts {
                let e = sums.entry(name).or_default();
                e.0 += weight * q;
                e.1 += weight;
            }
        };
        if let Some(r) = ridge {
            add(r, w.kernel_ridge);
        }
        if let Some(m) = &self.low_rank {
            add(m.predict(prompt, vector), w.low_rank);
        }
        if let Some(m) = &self.features {
            add(m.predict(prompt), w.features);
        }
        sums.into_iter().filter(|(_, (_, weight))| *weight > 0.0).map(|(name, (sum, weight))| (name, sum / weight)).collect()
    }
}

impl Predictor {
    /// The kernel-ridge settings this predictor uses for `exemplars` in-process exemplars
    /// embedded by `embedder`, or `None` when the neighbours alone predict.
    pub fn ridge_for(&self, exemplars: usize, embedder: &dyn Embedder) -> Option<RidgeSettings> {
        match self {
            Predictor::Auto if (KERNEL_RIDGE_MIN_EXEMPLARS..=KERNEL_RIDGE_MAX_EXEMPLARS).contains(&exemplars) => {
                Some(RidgeSettings::for_embedder(embedder))
            }
            Predictor::Auto | Predictor::Neighbours | Predictor::LowRank(_) | Predictor::Features(_) => None,
            Predictor::KernelRidge(s) | Predictor::Blend(s) | Predictor::Ensemble(s, _) | Predictor::Stacked(s, ..) => Some(*s),
        }
    }

    /// Fits the model this predictor uses for `exemplars` (with their unit `vectors`, in order)
    /// embedded by `embedder`, if it uses one.
    pub fn fit(
        &self,
        exemplars: &ExemplarSet,
        vectors: Vec<Vec<f32>>,
        prices: &PriceTable,
        embedder: &dyn Embedder,
    ) -> Result<Option<Fitted>> {
        self.fit_cached(exemplars, &vectors, prices, embedder, None)
    }

    /// [`fit`](Predictor::fit), taking each part (kernel ridge, low rank, the feature model)
    /// from `cache` where a fit on the same inputs left it there, and leaving there the parts it
    /// fits (see [`FitCache`]). The model is the same either way.
    pub fn fit_cached(
        &self,
        exemplars: &ExemplarSet,
        vectors: &[Vec<f32>],
        prices: &PriceTable,
        embedder: &dyn Embedder,
        cache: Option<&FitCache>,
    ) -> Result<Option<Fitted>> {
        let parts = Parts { exemplars, vectors, prices, cache, digest: std::cell::OnceCell::new() };
        if let Predictor::LowRank(settings) = self {
            return parts.low_rank(*settings).map(Some);
        }
        if let Predictor::Features(settings) = self {
            return Ok(Some(Fitted::Features(parts.features(*settings)?)));
        }
        if let Predictor::Stacked(ridge, low_rank, w) = self {
            w.check()?;
            let low_rank = if w.low_rank > 0.0 { Some(parts.low_rank(*low_rank)?) } else { None };
            let features = if w.features > 0.0 { Some(parts.features(FeatureSettings::default())?) } else { None };
            let ridge = if w.kernel_ridge > 0.0 { Some(parts.ridge(*ridge)?) } else { None };
            return Ok(Some(Fitted::Stacked(Box::new(Stack { ridge, low_rank, features, weights: *w }))));
        }
        if let Predictor::Ensemble(ridge, low_rank) = self {
            let low_rank = parts.low_rank(*low_rank)?;
            let ridge = parts.ridge(*ridge)?;
            return Ok(Some(Fitted::Ensemble(Box::new((ridge, low_rank)))));
        }
        match self.ridge_for(exemplars.len(), embedder) {
            Some(ridge) => Ok(Some(Fitted::Ridge(parts.ridge(ridge)?))),
            None => Ok(None),
        }
    }

    /// Each model's quality from the neighbours' (`neighbours`) and the model's (`model`)
    /// predictions, by this predictor's rule.
    ///
    /// ```
    /// use semroute::predict::{Predictor, RidgeSettings};
    ///
    /// assert_eq!(Predictor::Blend(RidgeSettings::default()).combine(1.0, 0.5), 0.75);
    /// assert_eq!(Predictor::KernelRidge(RidgeSettings::default()).combine(1.0, 0.5), 0.5);
    /// assert_eq!(Predictor::Neighbours.combine(1.0, 0.5), 1.0);
    /// // The ensemble's model is the mean of its two: each of the three counts a third.
    /// let ensemble = Predictor::Ensemble(RidgeSettings::default(), Default::default());
    /// assert!((ensemble.combine(1.0, 0.25) - 0.5).abs() < 1e-12);
    /// ```
    pub fn combine(&self, neighbours: f64, model: f64) -> f64 {
        match self {
            Predictor::KernelRidge(_) | Predictor::LowRank(_) | Predictor::Features(_) => model,
            Predictor::Neighbours => neighbours,
            Predictor::Auto | Predictor::Blend(_) => 0.5 * (neighbours + model),
            Predictor::Ensemble(..) => (neighbours + 2.0 * model) / 3.0,
            Predictor::Stacked(_, _, w) => w.neighbours * neighbours + (1.0 - w.neighbours) * model,
        }
    }

    /// Sets each model's quality in `predictions` (the neighbours') from `model`'s prediction for
    /// `prompt` and its `vector`, by [`combine`](Predictor::combine), and its standard error
    /// ([`ModelPrediction::quality_se`]) where the model gives one (kernel ridge): for
    /// [`KernelRidge`](Predictor::KernelRidge) the model's own, for the blend that of a mean of
    /// two estimates, `½·√(se_neighbours² + se_model²)`. A kernel model's prediction is first
    /// updated by the near-copies of the prompt among its `neighbours` (graded exemplars with
    /// their similarity, priced by `prices`; see [`with_copies`]): a model fitted on every
    /// exemplar smooths over a single one, but an answer graded on the very prompt, such as
    /// feedback, is the best evidence there is. Answer lengths stay the neighbours'; a model the
    /// neighbours say nothing about stays absent.
    pub fn apply(
        &self,
        model: &Fitted,
        prompt: &str,
        vector: &[f32],
        neighbours: &[(&Grade, f32)],
        prices: &PriceTable,
        predictions: &mut Predictions,
    ) {
        if let Fitted::Stacked(stack) = model {
            // Near-copies update the kernel-ridge part alone, as in the cross-validation that
            // weighed the parts.
            // The stack's error is the neighbours', so the kernel model's own (a triangular solve
            // per route) is not computed.
            let ridge = stack.ridge.as_ref().map(|m| {
                let copies = copies(neighbours, prices, COPY_WIDTH * m.settings().bandwidth);
                m.predict(prompt, vector)
                    .into_iter()
                    .map(|(name, q)| {
                        let q = with_copies(q, None, copies.get(name.as_str()).copied().unwrap_or_default()).0;
                        (name, q)
                    })
                    .collect()
            });
            for (name, q) in stack.mix(ridge, prompt, vector) {
                if let Some(p) = predictions.per_model.get_mut(&name) {
                    p.quality_se = None;
                    p.quality = self.combine(p.quality, q);
                }
            }
            return;
        }
        self.apply_scores(model, model.predict_with_error(prompt, vector), neighbours, prices, predictions);
    }

    /// [`apply`](Predictor::apply) for many prompts at once (`items`: prompt and vector, each with
    /// its `neighbours` and its `predictions`, in the same order), the same numbers to the bit:
    /// the model scores the batch together ([`Fitted::predict_with_error_batch`]).
    pub(crate) fn apply_batch(
        &self,
        model: &Fitted,
        items: &[(&str, &[f32])],
        neighbours: &[Vec<(&Grade, f32)>],
        prices: &PriceTable,
        predictions: &mut [Predictions],
    ) {
        if let Fitted::Stacked(_) = model {
            for ((&(prompt, vector), n), p) in items.iter().zip(neighbours).zip(predictions) {
                self.apply(model, prompt, vector, n, prices, p);
            }
            return;
        }
        for ((scores, n), p) in model.predict_with_error_batch(items).into_iter().zip(neighbours).zip(predictions) {
            self.apply_scores(model, scores, n, prices, p);
        }
    }

    /// [`apply`](Predictor::apply) with `model`'s scores for the prompt already computed (each
    /// model's quality and, where known, its standard error), so that a caller that needs them
    /// for several predictors, or without the errors (cross-validation), computes them once.
    /// Not for a stack, which mixes its parts itself.
    pub(crate) fn apply_scores(
        &self,
        model: &Fitted,
        scores: BTreeMap<String, (f64, Option<f64>)>,
        neighbours: &[(&Grade, f32)],
        prices: &PriceTable,
        predictions: &mut Predictions,
    ) {
        let copies = model.copy_width().map(|w| copies(neighbours, prices, w)).unwrap_or_default();
        for (name, (q, se)) in scores {
            let (q, se) = with_copies(q, se, copies.get(name.as_str()).copied().unwrap_or_default());
            if let Some(p) = predictions.per_model.get_mut(&name) {
                p.quality_se = match (self, se) {
                    (Predictor::KernelRidge(_), Some(se)) => Some(se),
                    (Predictor::Auto | Predictor::Blend(_), Some(se)) => Some(0.5 * (p.neighbours_error().powi(2) + se.powi(2)).sqrt()),
                    _ => None,
                };
                p.quality = self.combine(p.quality, q);
            }
        }
    }

    /// What [`RouteDecision::quality_from`](crate::RouteDecision::quality_from) says about this
    /// predictor when it has a fitted model (`fitted`).
    pub fn describe(&self, fitted: bool) -> &'static str {
        match (self, fitted) {
            (_, false) | (Predictor::Neighbours, _) => "neighbours",
            (Predictor::KernelRidge(_), true) => "kernel-ridge",
            (Predictor::LowRank(_), true) => "low-rank",
            (Predictor::Features(_), true) => "features",
            (Predictor::Auto | Predictor::Blend(_), true) => "kernel-ridge+neighbours",
            (Predictor::Ensemble(..), true) => "kernel-ridge+low-rank+neighbours",
            (Predictor::Stacked(..), true) => "stacked",
        }
    }
}

/// A quality model fitted on every exemplar: kernel ridge ([`QualityModel`]) or a low-rank
/// factorisation ([`LowRankModel`]).
#[derive(Debug, Clone)]
pub enum Fitted {
    /// Kernel ridge.
    Ridge(Arc<QualityModel>),
    /// Low-rank, with the model name of each of its columns.
    LowRank {
        /// The fitted model.
        model: Arc<LowRankModel>,
        /// Column names.
        names: Vec<String>,
    },
    /// Both, for [`Predictor::Ensemble`]: kernel ridge and a [`Fitted::LowRank`].
    Ensemble(Box<(Arc<QualityModel>, Fitted)>),
    /// The prompt-feature model, for [`Predictor::Features`].
    Features(FeatureModel),
    /// The models of [`Predictor::Stacked`] with its weights.
    Stacked(Box<Stack>),
}

impl Fitted {
    /// Fits a [`LowRankModel`] on `exemplars`: a measured exemplar gives its priced models'
    /// qualities, a hand label 1 to the models at or above its tier and 0 below; models no
    /// exemplar speaks about are left out (the neighbours keep them).
    pub fn low_rank(exemplars: &ExemplarSet, vectors: &[Vec<f32>], prices: &PriceTable, settings: LowRankSettings) -> Result<Self> {
        let names: Vec<&str> = prices.names().collect();
        let mut targets: Vec<Vec<Option<f64>>> = Vec::with_capacity(exemplars.len());
        for e in exemplars.iter() {
            let mut row = vec![None; names.len()];
            for (model, q, _, _) in evidence(&e.grade, prices) {
                if let Ok(i) = names.binary_search(&model) {
                    row[i] = Some(q.clamp(0.0, 1.0));
                }
            }
            targets.push(row);
        }
        let keep: Vec<usize> = (0..names.len()).filter(|&m| targets.iter().any(|r| r[m].is_some())).collect();
        let targets: Vec<Vec<Option<f64>>> = targets.into_iter().map(|r| keep.iter().map(|&m| r[m]).collect()).collect();
        let model =
            LowRankModel::fit(vectors, &targets, settings).map_err(|e| Error::Config(format!("the low-rank quality model: {e}")))?;
        Ok(Fitted::LowRank { model: Arc::new(model), names: keep.iter().map(|&m| names[m].to_string()).collect() })
    }

    /// The width, in units of `1 − cosine`, within which a neighbour counts as a copy of the
    /// prompt ([`COPY_WIDTH`] of the kernel's): `None` for a model without a kernel (low rank).
    fn copy_width(&self) -> Option<f64> {
        match self {
            Fitted::Ridge(m) => Some(COPY_WIDTH * m.settings().bandwidth),
            Fitted::Ensemble(both) => Some(COPY_WIDTH * both.0.settings().bandwidth),
            // A stack applies copies to its kernel-ridge part itself (`Predictor::apply`).
            Fitted::LowRank { .. } | Fitted::Features(_) | Fitted::Stacked(_) => None,
        }
    }

    /// Each model's predicted quality for `prompt` with its `vector`, and its standard error
    /// where the model knows it (kernel ridge, see [`QualityModel::predict_with_error`]).
    pub fn predict_with_error(&self, prompt: &str, vector: &[f32]) -> BTreeMap<String, (f64, Option<f64>)> {
        match self {
            Fitted::Ridge(m) => m.predict_with_error(prompt, vector),
            _ => self.predict(prompt, vector).into_iter().map(|(m, q)| (m, (q, None))).collect(),
        }
    }

    /// The ensemble's prediction from its kernel-ridge and low-rank parts' predictions: the mean
    /// of the two where both predict, either alone elsewhere.
    pub(crate) fn ensemble_mean(ridge: BTreeMap<String, f64>, low_rank: BTreeMap<String, f64>) -> BTreeMap<String, f64> {
        let mut out = ridge;
        for (name, q) in low_rank {
            out.entry(name).and_modify(|r| *r = 0.5 * (*r + q)).or_insert(q);
        }
        out
    }

    /// [`predict_with_error`](Fitted::predict_with_error) for many prompts (prompt and vector
    /// each), in order: the kernel-ridge model solves the batch's standard errors together
    /// ([`QualityModel::predict_with_error_batch`]), the others score one prompt at a time.
    pub fn predict_with_error_batch(&self, items: &[(&str, &[f32])]) -> Vec<BTreeMap<String, (f64, Option<f64>)>> {
        match self {
            Fitted::Ridge(m) => m.predict_with_error_batch(items),
            _ => items.iter().map(|&(prompt, vector)| self.predict_with_error(prompt, vector)).collect(),
        }
    }

    /// Each model's predicted quality for `prompt` with its `vector`.
    pub fn predict(&self, prompt: &str, vector: &[f32]) -> BTreeMap<String, f64> {
        match self {
            Fitted::Ridge(m) => m.predict(prompt, vector),
            Fitted::LowRank { model, names } => names.iter().cloned().zip(model.predict(vector)).collect(),
            Fitted::Features(model) => model.predict(prompt),
            Fitted::Stacked(stack) => stack.mix(stack.ridge.as_ref().map(|m| m.predict(prompt, vector)), prompt, vector),
            // The mean of the two where both predict; either alone elsewhere.
            Fitted::Ensemble(both) => Fitted::ensemble_mean(both.0.predict(prompt, vector), both.1.predict(prompt, vector)),
        }
    }
}

/// Fitted models shared by routers built on the same exemplars: a kernel-ridge, low-rank or
/// feature model that one of them fitted is the others', not fitted again (give each
/// [`RouterBuilder::fit_cache`](crate::router::RouterBuilder::fit_cache) a clone of one cache).
/// A fitted part is keyed by everything its fit reads: the exemplars (prompts and grades), their
/// vectors, the price table and the part's settings; so a router over other exemplars, or with
/// other settings, fits its own, and a shared part is the very model the router would have
/// fitted. Routers fitting the same part at once wait for the first rather than fit it twice.
/// Routers built with one cache also share their exemplar graph, and what they compute again
/// and again for the same prompts: the graph's neighbours of each prompt they assess, and the
/// kernel-ridge model's scores of it ([`RouterBuilder::fit_cache`](crate::RouterBuilder::fit_cache)).
/// Parts stay until the last clone of the cache is dropped: give one to routers built together
/// (the candidates a benchmark compares on one fold, say) and drop it after.
///
/// ```
/// use semroute::predict::{FitCache, LowRankSettings, Predictor, RidgeSettings};
/// # use semroute::exemplar::ExemplarSet;
/// # use semroute::pricing::PriceTable;
/// # use semroute::embed::Embedder;
/// # struct Two;
/// # impl Embedder for Two {
/// #     fn model_id(&self) -> &str { "two" }
/// #     fn dim(&self) -> usize { 2 }
/// #     fn embed_batch(&self, t: &[&str]) -> semroute::Result<Vec<Vec<f32>>> { Ok(t.iter().map(|_| vec![1.0, 0.0]).collect()) }
/// # }
/// let lines: Vec<String> = (0..60)
///     .map(|i| format!(r#"{{"id":"e{i}","prompt":"p{i}","category":"c","language":"en","results":{{"a":{{"quality":{},"output_tokens":5}},"b":{{"quality":1,"output_tokens":5}}}}}}"#, (i % 2 == 0) as u8))
///     .collect();
/// let set = ExemplarSet::from_jsonl_str(&lines.join("\n"), "x.jsonl")?;
/// let vectors: Vec<Vec<f32>> = (0..60).map(|i| if i % 2 == 0 { vec![1.0, 0.0] } else { vec![0.0, 1.0] }).collect();
/// let prices = PriceTable::from_toml_str("[models.a]\nprovider = \"p\"\ninput_per_mtok = 1.0\noutput_per_mtok = 1.0\nsource = \"s\"\nas_of = \"2025\"\n[models.b]\nprovider = \"p\"\ninput_per_mtok = 2.0\noutput_per_mtok = 2.0\nsource = \"s\"\nas_of = \"2025\"\n", "p.toml")?;
///
/// let fits = FitCache::new();
/// let (ridge, low_rank) = (RidgeSettings::default(), LowRankSettings::default());
/// Predictor::KernelRidge(ridge).fit_cached(&set, &vectors, &prices, &Two, Some(&fits))?;
/// assert_eq!(fits.len(), 1);
/// // The ensemble takes that kernel-ridge model and fits only its low-rank part.
/// Predictor::Ensemble(ridge, low_rank).fit_cached(&set, &vectors, &prices, &Two, Some(&fits))?;
/// assert_eq!(fits.len(), 2);
/// // Other exemplars are other inputs: their models are fitted apart.
/// let other = ExemplarSet::from_jsonl_str(&lines[..59].join("\n"), "y.jsonl")?;
/// Predictor::KernelRidge(ridge).fit_cached(&other, &vectors[..59], &prices, &Two, Some(&fits))?;
/// assert_eq!(fits.len(), 3);
/// # Ok::<(), semroute::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct FitCache {
    kinds: Arc<Kinds>,
}

/// A [`FitCache`]'s parts, one map per kind of model, each part under the key of its inputs.
#[derive(Default)]
struct Kinds {
    ridge: Slots<Arc<QualityModel>>,
    low_rank: Slots<Fitted>,
    features: Slots<FeatureModel>,
    /// Exemplar graphs (not fitted parts: [`FitCache::len`] does not count them), each with
    /// the beams its routers' assessments found, under the embedding model and exemplars.
    graphs: Slots<(Arc<HnswIndex>, Arc<Beams>)>,
}

/// Parts of one kind by key; each slot empty until its part is fitted (cheap to clone: a
/// fitted part is shared, not copied).
type Slots<T> = Mutex<HashMap<[u8; 32], Arc<Mutex<Option<T>>>>>;

/// The part under `key` in `slots`, fitted by `fit` if no one has yet; a caller asking for a
/// part being fitted waits for it. A failed fit leaves nothing, so the next caller tries again.
fn get_or_fit<T: Clone>(slots: &Slots<T>, key: [u8; 32], fit: impl FnOnce() -> Result<T>) -> Result<T> {
    let slot = slots.lock().unwrap_or_else(PoisonError::into_inner).entry(key).or_default().clone();
    let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(part) = slot.as_ref() {
        return Ok(part.clone());
    }
    let part = fit()?;
    *slot = Some(part.clone());
    Ok(part)
}

/// How many of `slots` hold a part (one being fitted is not held yet: this does not wait).
fn held<T>(slots: &Slots<T>) -> usize {
    let slots: Vec<_> = slots.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
    slots
        .iter()
        .filter(|s| match s.try_lock() {
            Ok(part) => part.is_some(),
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().is_some(),
            Err(std::sync::TryLockError::WouldBlock) => false,
        })
        .count()
}

impl FitCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many fitted parts it holds (a part being fitted is not held yet; this does not wait
    /// for it).
    pub fn len(&self) -> usize {
        let k = &*self.kinds;
        held(&k.ridge) + held(&k.low_rank) + held(&k.features)
    }

    /// Whether it holds no fitted part.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The exemplar graph of the exemplars whose content hash is `content` embedded by
    /// `model_id`, from `build` when no router sharing this cache has it yet, as an index that
    /// shares the graph (one copy in memory) and the beams its searches find with the other
    /// routers' ([`LiveIndex::search_remembered`]): routers compared on the same prompts search
    /// each prompt once.
    pub(crate) fn graph(&self, model_id: &str, content: &str, build: impl FnOnce() -> Result<HnswIndex>) -> Result<LiveIndex> {
        let mut h = Sha256::new();
        for text in [model_id, content] {
            h.update((text.len() as u64).to_le_bytes());
            h.update(text.as_bytes());
        }
        let (graph, beams) = get_or_fit(&self.kinds.graphs, h.finalize().into(), || Ok((Arc::new(build()?), Arc::default())))?;
        Ok(LiveIndex::sharing(graph, beams))
    }
}

impl std::fmt::Debug for FitCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FitCache").field("parts", &self.len()).finish()
    }
}

/// What a predictor's parts are fitted on, with the cache they may come from.
struct Parts<'a> {
    exemplars: &'a ExemplarSet,
    vectors: &'a [Vec<f32>],
    prices: &'a PriceTable,
    cache: Option<&'a FitCache>,
    /// A digest of the inputs every part reads, computed once when a cache asks for it.
    digest: std::cell::OnceCell<[u8; 32]>,
}

impl Parts<'_> {
    /// The key of a part with `settings` (their `Debug` text, which tells every value apart:
    /// floats print to the shortest text that reads back the same) among its kind's.
    fn key(&self, settings: &dyn std::fmt::Debug) -> [u8; 32] {
        let inputs = self.digest.get_or_init(|| {
            let mut h = Sha256::new();
            for e in self.exemplars.iter() {
                let grade = serde_json::to_string(&e.grade).unwrap_or_default();
                for text in [e.prompt.as_str(), grade.as_str()] {
                    h.update((text.len() as u64).to_le_bytes());
                    h.update(text.as_bytes());
                }
            }
            for v in self.vectors {
                h.update((v.len() as u64).to_le_bytes());
                for x in v {
                    h.update(x.to_le_bytes());
                }
            }
            h.update(format!("{:?}", self.prices).as_bytes());
            h.finalize().into()
        });
        let mut h = Sha256::new();
        h.update(inputs);
        h.update(format!("{settings:?}").as_bytes());
        h.finalize().into()
    }

    /// The part `fit` fits, from `slots` of the cache (`kind` picks them) when there is one.
    fn cached<T: Clone>(
        &self,
        kind: fn(&Kinds) -> &Slots<T>,
        settings: &dyn std::fmt::Debug,
        fit: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        match self.cache {
            Some(cache) => get_or_fit(kind(&cache.kinds), self.key(settings), fit),
            None => fit(),
        }
    }

    fn ridge(&self, settings: RidgeSettings) -> Result<Arc<QualityModel>> {
        // A model in a cache is shared by routers that assess the same prompts: it remembers
        // their scores.
        let shared = self.cache.is_some();
        self.cached(
            |k| &k.ridge,
            &settings,
            || {
                QualityModel::fit(self.exemplars, self.vectors.to_vec(), self.prices, settings)
                    .map(|m| Arc::new(if shared { m.remembering() } else { m }))
            },
        )
    }

    fn low_rank(&self, settings: LowRankSettings) -> Result<Fitted> {
        self.cached(|k| &k.low_rank, &settings, || Fitted::low_rank(self.exemplars, self.vectors, self.prices, settings))
    }

    fn features(&self, settings: FeatureSettings) -> Result<FeatureModel> {
        self.cached(|k| &k.features, &settings, || FeatureModel::fit(self.exemplars, self.prices, settings))
    }
}

/// What the neighbours predict for one model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelPrediction {
    /// Predicted quality in `[0, 1]`.
    pub quality: f64,
    /// Predicted answer length in tokens.
    pub output_tokens: f64,
    /// Total neighbour weight behind the prediction (in `(0, 1]`; lower means thinner evidence).
    pub support: f64,
    /// How many neighbours' worth of evidence the prediction rests on: `(Σw)² / Σw²` over the
    /// neighbours that speak about this model (1 when one neighbour dominates, k when all weigh
    /// alike). See [`ModelPrediction::standard_error`].
    pub effective_neighbours: f64,
    /// Predicted USD of the call, from the neighbours' measured costs (weighted mean over those
    /// that carry one); `None` when none does, and the cost is answer tokens × price.
    pub cost_usd: Option<f64>,
    /// The standard error of `quality` when a fitted model's own uncertainty went into it
    /// (see [`Predictor::apply`]); `None`: the neighbours' alone, see
    /// [`standard_error`](ModelPrediction::standard_error).
    pub quality_se: Option<f64>,
    /// The standard error of `output_tokens`: the posterior's, where the length is shrunk towards
    /// the model's mean (see [`shrunk_with_error`]), else that of the neighbours' weighted mean.
    /// The policy reads it as the cost's uncertainty ([`Candidate::cost_se_usd`](crate::decision::Candidate::cost_se_usd)).
    pub output_tokens_se: f64,
    /// The standard error of `cost_usd`, where the neighbours measured costs (as for
    /// `output_tokens_se`).
    pub cost_se_usd: Option<f64>,
}

impl ModelPrediction {
    /// The standard error of the predicted quality: [`quality_se`](ModelPrediction::quality_se)
    /// where a fitted model set it, otherwise the neighbours' own, as if the quality were the mean of
    /// [`effective_neighbours`](ModelPrediction::effective_neighbours) graded answers: the
    /// standard deviation of a Beta posterior with Jeffreys' prior (½, ½) after `n` answers
    /// averaging `q`, so one neighbour alone is unsure (0.25 at q = 1) and eight agreeing ones
    /// much less (0.07), and neighbours that disagree (q near ½) widen it.
    ///
    /// ```
    /// use semroute::predict::ModelPrediction;
    ///
    /// let p = |q, n| ModelPrediction { quality: q, output_tokens: 100.0, support: 1.0, effective_neighbours: n, cost_usd: None, quality_se: None, output_tokens_se: 0.0, cost_se_usd: None };
    /// assert!((p(1.0, 1.0).standard_error() - 0.25).abs() < 1e-12);
    /// assert!(p(1.0, 8.0).standard_error() < 0.08);
    /// assert!(p(0.6, 8.0).standard_error() > p(0.9, 8.0).standard_error());
    /// ```
    pub fn standard_error(&self) -> f64 {
        if let Some(se) = self.quality_se {
            return se;
        }
        self.neighbours_error()
    }

    /// The neighbours' own standard error (the Beta posterior that
    /// [`standard_error`](ModelPrediction::standard_error) describes), whatever `quality_se` says.
    pub fn neighbours_error(&self) -> f64 {
        let q = self.quality.clamp(0.0, 1.0);
        let n = self.effective_neighbours.max(0.0);
        let (a, b) = (0.5 + n * q, 0.5 + n * (1.0 - q));
        (a * b / ((a + b).powi(2) * (a + b + 1.0))).sqrt()
    }
}

/// Predictions for every model some neighbour speaks about, plus the neighbour weights used.
#[derive(Debug, Clone, PartialEq)]
pub struct Predictions {
    /// Model name to prediction. Models absent here have no evidence.
    pub per_model: BTreeMap<String, ModelPrediction>,
    /// Weight of each hit, in the order given (sums to 1 when there are hits).
    pub weights: Vec<f64>,
}

/// Softmax weights of similarities at `temperature` (> 0).
pub fn neighbour_weights(hits: &[Hit], temperature: f64) -> Vec<f64> {
    softmax(hits.iter().map(|h| h.similarity), temperature)
}

fn softmax(similarities: impl Iterator<Item = f32> + Clone, temperature: f64) -> Vec<f64> {
    let best = similarities.clone().map(f64::from).fold(f64::NEG_INFINITY, f64::max);
    let raw: Vec<f64> = similarities.map(|s| ((f64::from(s) - best) / temperature).exp()).collect();
    let sum: f64 = raw.iter().sum();
    raw.into_iter().map(|w| if sum > 0.0 { w / sum } else { 0.0 }).collect()
}

/// What each model scores across a whole exemplar set, and how many neighbours' worth of weight
/// that overall mean gets against the neighbours ("pseudo-neighbours").
///
/// With many models, a handful of neighbours makes some cheap model look perfect by chance, and
/// "the cheapest model that clears the bar" then picks exactly that model. Shrinking each
/// model's neighbour mean towards its overall mean by `strength` pseudo-neighbours damps this:
/// `q = (n·q_neighbours + strength·q_overall) / (n + strength)`, where `n` is the effective number
/// of neighbours behind the model's prediction (`(Σw)² / Σw²`).
///
/// The prior also knows each model's answer lengths (and measured costs) across the set: their
/// mean and variance. A predicted length or cost is shrunk towards that mean by empirical Bayes
/// whatever `strength` is (see [`shrunk_towards`]): the choice of the cheapest model takes the
/// lowest of many noisy predictions, and a prediction from a few neighbours that happened to
/// answer briefly would otherwise draw it to a model that is not cheaper at all.
///
/// ```
/// use semroute::exemplar::ExemplarSet;
/// use semroute::pricing::PriceTable;
/// use semroute::predict::Prior;
///
/// let set = ExemplarSet::from_jsonl_str(r#"{"id":"a","prompt":"p","category":"c","language":"en","results":{"m":{"quality":1.0,"output_tokens":10}}}
/// {"id":"b","prompt":"q","category":"c","language":"en","results":{"m":{"quality":0.0,"output_tokens":10}}}"#, "x.jsonl")?;
/// let prices = PriceTable::from_toml_str("[models.m]\nprovider = \"p\"\ninput_per_mtok = 1.0\noutput_per_mtok = 1.0\ntier = \"cheap\"\nsource = \"s\"\nas_of = \"2025\"\n", "p.toml")?;
/// let prior = Prior::from_exemplars(&set, &prices, 2.0);
/// assert_eq!(prior.mean("m"), Some(0.5));
/// # Ok::<(), semroute::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Prior {
    /// Per model, what the exemplars that speak about it say (see [`ModelStats`]).
    models: BTreeMap<String, ModelStats>,
    strength: f64,
}

/// One model's running figures over an exemplar set: the sum of its qualities, then Welford's
/// running count, mean and sum of squared deviations of its answer lengths and of its measured
/// costs (over the exemplars that carry one). Running, so that exemplars added later extend them
/// ([`Prior::extended`]) to the very values a pass over the whole set gives.
#[derive(Debug, Clone, PartialEq, Default)]
struct ModelStats {
    quality: f64,
    tokens: Moments,
    cost: Moments,
}

impl ModelStats {
    /// (mean, variance) of the measured costs, if any exemplar carries one.
    fn cost(&self) -> Option<(f64, f64)> {
        (self.cost.n > 0.0).then(|| self.cost.mean_variance())
    }
}

impl Prior {
    /// No shrinkage: predictions are the neighbours' weighted means alone.
    pub fn none() -> Self {
        Prior::default()
    }

    /// Each priced model's mean quality over `set` (a hand label counts 1 for models at or above
    /// its tier, 0 below), weighted by `strength` pseudo-neighbours (0 turns shrinkage off).
    /// Answer lengths' and measured costs' means and variances are kept whatever `strength` is.
    pub fn from_exemplars(set: &ExemplarSet, prices: &PriceTable, strength: f64) -> Self {
        Prior { models: BTreeMap::new(), strength: strength.max(0.0) }.extended(set.iter(), prices)
    }

    /// This prior with `added` exemplars counted too: the same as [`Prior::from_exemplars`] over
    /// the set they were appended to, without a pass over the exemplars already counted.
    pub fn extended<'a>(&self, added: impl IntoIterator<Item = &'a Exemplar>, prices: &PriceTable) -> Self {
        let mut prior = self.clone();
        for e in added {
            for (model, q, t, c) in evidence(&e.grade, prices) {
                let a = match prior.models.get_mut(model) {
                    Some(a) => a,
                    None => prior.models.entry(model.to_string()).or_default(),
                };
                a.quality += q;
                a.tokens.push(t);
                if let Some(c) = c {
                    a.cost.push(c);
                }
            }
        }
        prior
    }

    /// The overall mean quality of `model`, if any exemplar speaks about it.
    pub fn mean(&self, model: &str) -> Option<f64> {
        self.models.get(model).map(|a| a.quality / a.tokens.n)
    }

    /// The overall mean answer length of `model`, if any exemplar speaks about it.
    pub fn mean_tokens(&self, model: &str) -> Option<f64> {
        self.models.get(model).map(|a| a.tokens.mean)
    }

    /// How many pseudo-neighbours the overall mean counts for.
    pub fn strength(&self) -> f64 {
        self.strength
    }
}

/// Welford's running count, mean and sum of squared deviations.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Moments {
    n: f64,
    mean: f64,
    m2: f64,
}

impl Moments {
    fn push(&mut self, x: f64) {
        self.n += 1.0;
        let d = x - self.mean;
        self.mean += d / self.n;
        self.m2 += d * (x - self.mean);
    }

    /// (mean, population variance).
    fn mean_variance(&self) -> (f64, f64) {
        (self.mean, if self.n > 0.0 { self.m2 / self.n } else { 0.0 })
    }
}

/// Weighted sums of one quantity over the neighbours: Σw, Σw², Σw·x, Σw·x².
#[derive(Default, Clone, Copy)]
struct Weighted {
    w: f64,
    w2: f64,
    wx: f64,
    wx2: f64,
}

impl Weighted {
    fn push(&mut self, w: f64, x: f64) {
        self.w += w;
        self.w2 += w * w;
        self.wx += w * x;
        self.wx2 += w * x * x;
    }

    /// The weighted mean, shrunk towards the overall `(mean, variance)` if there is one, and its
    /// standard error (see [`shrunk_with_error`]).
    fn estimate(&self, overall: Option<(f64, f64)>, strength: f64) -> (f64, f64) {
        let local = self.wx / self.w;
        let spread = (self.wx2 / self.w - local * local).max(0.0);
        let n = self.w * self.w / self.w2;
        match overall {
            Some(overall) => shrunk_with_error(local, spread, n, overall, strength),
            None => (local, (spread / n).sqrt()),
        }
    }
}

/// The neighbours' estimate of a quantity shrunk towards a model's overall `(mean, variance)` by empirical Bayes:
/// the posterior mean when this prompt's true value varies from prompt to prompt with variance
/// τ² around the overall mean, and the neighbours' weighted mean `local` is that value plus noise
/// of variance σ²/n (`n` effective neighbours whose values spread with weighted variance `spread`).
/// σ² is the neighbours' spread with the overall variance counted as one more neighbour's worth
/// (so one neighbour alone, or a few that happen to agree, are not taken as certain), and
/// τ² = overall variance − σ² (the part of the variance the neighbourhood explains). The weight on
/// the neighbours is then `n / (n + σ²/τ²)`: near 1 where close neighbours agree on a value far
/// from the mean, 0 where they spread as widely as the whole set. At least `strength`
/// pseudo-neighbours of shrinkage are applied (a [`Prior`]'s configured strength).
///
/// ```
/// use semroute::predict::shrunk_towards;
///
/// // Eight neighbours agreeing (spread 0) on 100 where the set averages 300 ± 200: kept nearly.
/// assert!((shrunk_towards(100.0, 0.0, 8.0, (300.0, 40_000.0), 0.0) - 100.0).abs() < 30.0);
/// // Neighbours that spread as widely as the whole set say nothing: the mean.
/// assert_eq!(shrunk_towards(100.0, 40_000.0, 8.0, (300.0, 40_000.0), 0.0), 300.0);
/// // One neighbour alone is pulled halfway.
/// assert_eq!(shrunk_towards(100.0, 0.0, 1.0, (300.0, 40_000.0), 0.0), 200.0);
/// ```
pub fn shrunk_towards(local: f64, spread: f64, n: f64, overall: (f64, f64), strength: f64) -> f64 {
    shrunk_with_error(local, spread, n, overall, strength).0
}

/// [`shrunk_towards`]'s estimate and its posterior standard error: `sqrt(σ² / (n + σ²/τ²))`, the
/// pseudo-neighbours counted as evidence like the neighbours (at least `strength` of them); the
/// overall spread `sqrt(variance)` where the neighbours say nothing, 0 where every exemplar is
/// alike.
///
/// ```
/// use semroute::predict::shrunk_with_error;
///
/// // Eight agreeing neighbours: close to their mean, and sure of it.
/// let (x, se) = shrunk_with_error(100.0, 0.0, 8.0, (300.0, 40_000.0), 0.0);
/// assert!((x - 100.0).abs() < 30.0 && se < 100.0);
/// // One neighbour: halfway, and less sure.
/// let (x, se1) = shrunk_with_error(100.0, 0.0, 1.0, (300.0, 40_000.0), 0.0);
/// assert_eq!(x, 200.0);
/// assert!(se1 > se);
/// // Neighbours that say nothing: the mean, as unsure as the whole set.
/// assert_eq!(shrunk_with_error(100.0, 40_000.0, 8.0, (300.0, 40_000.0), 0.0), (300.0, 200.0));
/// ```
pub fn shrunk_with_error(local: f64, spread: f64, n: f64, (mean, variance): (f64, f64), strength: f64) -> (f64, f64) {
    // NaN counts as no evidence, as zero does.
    if n.is_nan() || n <= 0.0 {
        return (mean, variance.max(0.0).sqrt());
    }
    if variance.is_nan() || variance <= 0.0 {
        // Every exemplar alike: only the configured strength applies.
        return ((n * local + strength * mean) / (n + strength), 0.0);
    }
    let noise = (n * spread.max(0.0) + variance) / (n + 1.0);
    let signal = variance - noise;
    let pseudo = (noise / signal).max(strength);
    if !(signal > 0.0 && pseudo.is_finite()) {
        // The neighbours spread as widely as the whole set: they say nothing.
        return (mean, variance.sqrt());
    }
    ((n * local + pseudo * mean) / (n + pseudo), (noise / (n + pseudo)).sqrt())
}

/// What an exemplar's grade says about each priced model: (model, quality, output tokens,
/// measured cost). An iterator, not a collection: it runs for every neighbour of every routed
/// prompt.
fn evidence<'a>(grade: &'a Grade, prices: &'a PriceTable) -> impl Iterator<Item = (&'a str, f64, f64, Option<f64>)> + 'a {
    let (measured, labelled) = match grade {
        Grade::Measured { results } => (Some(results), None),
        Grade::Labelled(label) => (None, Some(label)),
    };
    let measured = measured.into_iter().flat_map(move |results| {
        results.iter().filter(|(m, _)| prices.get(m).is_some()).map(|(m, r)| (m.as_str(), r.quality, r.output_tokens as f64, r.cost_usd))
    });
    let labelled = labelled.into_iter().flat_map(move |label| {
        prices.iter().filter_map(move |(m, p)| {
            // A model without a tier is not spoken for by a label (the set is checked at build).
            p.tier.map(|t| (m, if t >= label.tier { 1.0 } else { 0.0 }, label.output_tokens as f64, None))
        })
    });
    measured.chain(labelled)
}

/// How much narrower than the kernel's width "a copy of the prompt" is. A neighbour at
/// similarity `s` counts as `exp((s − 1) / w)` of a copy, with `w` this share of the kernel's
/// width ([`RidgeSettings::bandwidth`]): the very prompt counts 1, one at the kernel's own width
/// counts e⁻⁵ (0.7%). With multilingual-e5-small (width 0.1) the same instruction over other
/// data ("Reformat this JSON …" with another object, similarity 0.93) counts 4%, so only a
/// prompt close to verbatim moves a kernel model's prediction much.
pub const COPY_WIDTH: f64 = 0.2;

/// Below this a neighbour's share of a copy is not counted.
const MIN_COPY: f64 = 1e-3;

/// Per model, what the near-copies among `neighbours` say about it: (Σκ, Σκ·q, Σκ²), where κ is
/// each neighbour's share of a copy at `width` (see [`COPY_WIDTH`]).
fn copies<'a>(neighbours: &[(&'a Grade, f32)], prices: &'a PriceTable, width: f64) -> BTreeMap<&'a str, (f64, f64, f64)> {
    let mut out: BTreeMap<&str, (f64, f64, f64)> = BTreeMap::new();
    for &(grade, s) in neighbours {
        let kappa = ((f64::from(s).min(1.0) - 1.0) / width).exp();
        if kappa.is_nan() || kappa < MIN_COPY {
            continue;
        }
        for (model, q, _, _) in evidence(grade, prices) {
            let e = out.entry(model).or_default();
            e.0 += kappa;
            e.1 += kappa * q;
            e.2 += kappa * kappa;
        }
    }
    out
}

/// A model's predicted quality `q` (standard error `se`) for a prompt, updated by its near-copies
/// `(Σκ, Σκ·q, Σκ²)`, κ each one's share of a copy ([`COPY_WIDTH`]): the model's estimate counts
/// as one copy, so `q' = (q + Σκ·qᵢ) / (1 + Σκ)`. Two copies graded 0 bring a prediction of 0.8
/// to 0.27, and one graded 1 lifts 0.5 to 0.75. The error is that of this weighted mean, the
/// copies' grades varying as Bernoulli outcomes around their mean ȳ (with half a success and half
/// a failure added, so agreeing copies are not taken as certain):
/// `√((se / (1 + Σκ))² + Σκ²·ȳ(1−ȳ) / (1 + Σκ)²)`. Without an error from the model (`se` None)
/// there is none after either.
///
/// ```
/// use semroute::predict::with_copies;
///
/// assert_eq!(with_copies(0.8, Some(0.1), (0.0, 0.0, 0.0)), (0.8, Some(0.1)));
/// let (q, se) = with_copies(0.8, Some(0.1), (2.0, 0.0, 2.0));
/// assert!((q - 0.8 / 3.0).abs() < 1e-12 && se.unwrap() > 0.1 / 3.0);
/// ```
pub fn with_copies(q: f64, se: Option<f64>, (n, sum, sum2): (f64, f64, f64)) -> (f64, Option<f64>) {
    if n <= 0.0 {
        return (q, se);
    }
    let total = 1.0 + n;
    let mean = (sum + 0.5) / (n + 1.0);
    let se = se.map(|se| ((se / total).powi(2) + sum2 * mean * (1.0 - mean) / (total * total)).sqrt());
    ((q + sum) / total, se)
}

/// Predicts each priced model's quality and answer length from `hits` into `exemplars`.
pub fn predict(exemplars: &ExemplarSet, hits: &[Hit], prices: &PriceTable, temperature: f64) -> Predictions {
    predict_with_prior(exemplars, hits, prices, temperature, &Prior::none())
}

/// [`predict`], with each model's quality shrunk towards its overall mean (see [`Prior`]).
pub fn predict_with_prior(exemplars: &ExemplarSet, hits: &[Hit], prices: &PriceTable, temperature: f64, prior: &Prior) -> Predictions {
    let neighbours: Vec<(&Grade, f32)> = hits.iter().map(|h| (&exemplars.get(h.position).grade, h.similarity)).collect();
    predict_from(&neighbours, prices, temperature, prior)
}

/// Predicts from neighbours given as (grade, cosine similarity), wherever they were found (an
/// in-process index or a shared [`store`](crate::store)).
pub fn predict_from(neighbours: &[(&Grade, f32)], prices: &PriceTable, temperature: f64, prior: &Prior) -> Predictions {
    let weights = softmax(neighbours.iter().map(|n| n.1), temperature);
    // Per model: Σw·q, then the answer lengths' weighted sums (whose Σw and Σw² are every
    // neighbour's that speaks about the model) and the measured costs'.
    #[derive(Default)]
    struct Acc {
        q: f64,
        tokens: Weighted,
        cost: Weighted,
    }
    let mut acc: BTreeMap<&str, Acc> = BTreeMap::new();
    for (&(grade, _), &w) in neighbours.iter().zip(&weights) {
        for (model, q, tokens, cost) in evidence(grade, prices) {
            let e = acc.entry(model).or_default();
            e.q += w * q;
            e.tokens.push(w, tokens);
            if let Some(c) = cost {
                e.cost.push(w, c);
            }
        }
    }
    let per_model = acc
        .into_iter()
        .filter(|(_, a)| a.tokens.w > 0.0)
        .map(|(m, a)| {
            let (s, n) = (a.tokens.w, a.tokens.w * a.tokens.w / a.tokens.w2);
            let mut quality = a.q / s;
            let overall = prior.models.get(m);
            if let (true, Some(o)) = (prior.strength > 0.0, overall) {
                let mean = o.quality / o.tokens.n;
                quality = (n * quality + prior.strength * mean) / (n + prior.strength);
            }
            // Lengths and costs shrunk by empirical Bayes where the prior knows the model's spread.
            let (tokens, output_tokens_se) = a.tokens.estimate(overall.map(|o| o.tokens.mean_variance()), prior.strength);
            let cost = (a.cost.w > 0.0).then(|| a.cost.estimate(overall.and_then(ModelStats::cost), prior.strength));
            let prediction = ModelPrediction {
                quality,
                output_tokens: tokens,
                support: s,
                effective_neighbours: n,
                cost_usd: cost.map(|c| c.0),
                quality_se: None,
                output_tokens_se,
                cost_se_usd: cost.map(|c| c.1),
            };
            (m.to_string(), prediction)
        })
        .collect();
    Predictions { per_model, weights }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 60 measured exemplars of two kinds (model "a" right on the first kind only, "b" on
    /// both), on two directions, and their prices.
    fn two_kinds() -> (ExemplarSet, Vec<Vec<f32>>, PriceTable) {
        let lines: Vec<String> = (0..60)
            .map(|i| format!(r#"{{"id":"e{i}","prompt":"p{i}","category":"c","language":"en","results":{{"a":{{"quality":{},"output_tokens":5}},"b":{{"quality":1,"output_tokens":5}}}}}}"#, (i % 2 == 0) as u8))
            .collect();
        let set = ExemplarSet::from_jsonl_str(&lines.join("\n"), "x.jsonl").unwrap();
        let vectors = (0..60).map(|i| if i % 2 == 0 { vec![1.0, 0.0] } else { vec![0.0, 1.0] }).collect();
        let prices = PriceTable::from_toml_str(
            "[models.a]\nprovider = \"p\"\ninput_per_mtok = 1.0\noutput_per_mtok = 1.0\nsource = \"s\"\nas_of = \"2025\"\n[models.b]\nprovider = \"p\"\ninput_per_mtok = 2.0\noutput_per_mtok = 2.0\nsource = \"s\"\nas_of = \"2025\"\n",
            "p.toml",
        )
        .unwrap();
        (set, vectors, prices)
    }

    #[test]
    fn answer_lengths_and_costs_are_shrunk_towards_each_models_mean_as_far_as_the_neighbours_disagree() {
        // Model "a" answers half the prompts in 100 tokens (measured cost $1) and half in 500
        // ($5): mean 300 ± 200, $3 ± 2.
        let lines: Vec<String> = (0..40)
            .map(|i| {
                let (t, c) = if i % 2 == 0 { (100, 1.0) } else { (500, 5.0) };
                format!(r#"{{"id":"e{i}","prompt":"p{i}","category":"c","language":"en","results":{{"a":{{"quality":1,"output_tokens":{t},"cost_usd":{c}}}}}}}"#)
            })
            .collect();
        let set = ExemplarSet::from_jsonl_str(&lines.join("\n"), "x.jsonl").unwrap();
        let prices = PriceTable::from_toml_str(
            "[models.a]\nprovider = \"p\"\ninput_per_mtok = 1.0\noutput_per_mtok = 1.0\nsource = \"s\"\nas_of = \"2025\"\n",
            "p.toml",
        )
        .unwrap();
        let prior = Prior::from_exemplars(&set, &prices, 0.0);
        assert_eq!(prior.mean_tokens("a"), Some(300.0));
        // Exemplars added later extend the prior to what a pass over the whole set gives.
        let first = ExemplarSet::from_exemplars(set.iter().take(25).cloned().collect()).unwrap();
        assert_eq!(Prior::from_exemplars(&first, &prices, 0.0).extended(set.iter().skip(25), &prices), prior);
        assert_ne!(Prior::from_exemplars(&first, &prices, 0.0), prior);
        let short: Vec<(&Grade, f32)> = (0..8).map(|i| (&set.get(2 * i).grade, 0.9)).collect();
        let mixed: Vec<(&Grade, f32)> = (0..8).map(|i| (&set.get(i).grade, 0.9)).collect();
        let one = [(&set.get(0).grade, 0.9f32)];
        let predict = |n: &[(&Grade, f32)], prior: &Prior| {
            let p = predict_from(n, &prices, 0.05, prior).per_model["a"];
            (p.output_tokens, p.cost_usd.unwrap())
        };
        // Eight agreeing short neighbours: close to their 100 tokens, not exactly (they are eight
        // answers, not certainty): σ² = 200²/9, τ² = 200²·8/9, so 8/(8 + 1/8) of the way.
        let (t, c) = predict(&short, &prior);
        assert!((t - (100.0 + 200.0 / 65.0)).abs() < 1e-9, "{t}");
        assert!((c - (1.0 + 2.0 / 65.0)).abs() < 1e-9, "{c}");
        // Their standard errors: sqrt(σ² / (n + σ²/τ²)), for the lengths and the costs alike.
        let p = predict_from(&short, &prices, 0.05, &prior).per_model["a"];
        let se = (200.0f64 * 200.0 / 9.0 / (8.0 + 1.0 / 8.0)).sqrt();
        assert!((p.output_tokens_se - se).abs() < 1e-9, "{}", p.output_tokens_se);
        assert!((p.cost_se_usd.unwrap() - se / 100.0).abs() < 1e-9, "{:?}", p.cost_se_usd);
        // Neighbours that spread as widely as the whole set say nothing: the mean.
        assert!((predict(&mixed, &prior).0 - 300.0).abs() < 1e-9);
        // One neighbour alone: halfway.
        assert!((predict(&one, &prior).0 - 200.0).abs() < 1e-9);
        // Without a prior, the neighbours' mean as it is.
        assert_eq!(predict(&one, &Prior::none()), (100.0, 1.0));
        // A configured strength shrinks at least that much: 8 neighbours against 8 pseudo-ones.
        assert!((predict(&short, &Prior::from_exemplars(&set, &prices, 8.0)).0 - 200.0).abs() < 1e-9);
    }

    #[test]
    fn the_blend_carries_both_errors_and_kernel_ridge_its_own() {
        let (set, vectors, prices) = two_kinds();
        let ridge = RidgeSettings::default();
        let fitted = Fitted::Ridge(Arc::new(QualityModel::fit(&set, vectors, &prices, ridge).unwrap()));
        let v = [0.6f32, 0.8];
        let (q, se) = fitted.predict_with_error("p", &v)["a"];
        let se = se.expect("a fitted target has an error");
        let neighbours = || {
            let p = ModelPrediction {
                quality: 0.9,
                output_tokens: 5.0,
                support: 1.0,
                effective_neighbours: 4.0,
                cost_usd: None,
                quality_se: None,
                output_tokens_se: 0.0,
                cost_se_usd: None,
            };
            Predictions { per_model: [("a".to_string(), p)].into_iter().collect(), weights: vec![1.0] }
        };
        let nb_se = neighbours().per_model["a"].standard_error();
        let mut blend = neighbours();
        Predictor::Blend(ridge).apply(&fitted, "p", &v, &[], &prices, &mut blend);
        let a = blend.per_model["a"];
        assert!((a.quality - 0.5 * (0.9 + q)).abs() < 1e-12);
        assert!((a.standard_error() - 0.5 * (nb_se * nb_se + se * se).sqrt()).abs() < 1e-12, "{a:?}");
        assert_eq!(a.neighbours_error(), ModelPrediction { quality_se: None, ..a }.standard_error());
        let mut alone = neighbours();
        Predictor::KernelRidge(ridge).apply(&fitted, "p", &v, &[], &prices, &mut alone);
        assert_eq!((alone.per_model["a"].quality, alone.per_model["a"].standard_error()), (q, se));
        // The neighbours alone keep their Beta-posterior error.
        let mut none = neighbours();
        Predictor::Neighbours.apply(&fitted, "p", &v, &[], &prices, &mut none);
        assert_eq!(none.per_model["a"].standard_error(), nb_se);
    }

    #[test]
    fn a_copy_of_the_prompt_moves_the_model_and_a_mere_neighbour_does_not() {
        let (set, vectors, prices) = two_kinds();
        let ridge = RidgeSettings::default();
        let fitted = Fitted::Ridge(Arc::new(QualityModel::fit(&set, vectors, &prices, ridge).unwrap()));
        let v = [1.0f32, 0.0];
        let (q, se) = fitted.predict_with_error("p", &v)["a"];
        assert!(q > 0.8, "{q}");
        let bad = ExemplarSet::from_jsonl_str(
            r#"{"id":"f","prompt":"p","category":"c","language":"en","results":{"a":{"quality":0.0,"output_tokens":5}}}"#,
            "f.jsonl",
        )
        .unwrap();
        let grade = &bad.get(0).grade;
        let run = |neighbours: &[(&Grade, f32)]| {
            // The neighbours' own prediction (the copy speaks about "a"), then the model's.
            let mut p = predict_from(neighbours, &prices, 0.05, &Prior::none());
            Predictor::KernelRidge(ridge).apply(&fitted, "p", &v, neighbours, &prices, &mut p);
            p.per_model["a"]
        };
        // Two copies graded 0: the model's estimate counts as one of three.
        let two = run(&[(grade, 1.0), (grade, 1.0)]);
        assert!((two.quality - q / 3.0).abs() < 1e-9, "{two:?}");
        let expected = with_copies(q, se, (2.0, 0.0, 2.0)).1.unwrap();
        assert!((two.standard_error() - expected).abs() < 1e-12);
        // A neighbour at the kernel's width (0.5 for these settings) counts e⁻⁵ of a copy.
        let far = run(&[(grade, 0.5)]);
        assert!((far.quality - q / (1.0 + (-5.0f64).exp())).abs() < 1e-9, "{far:?}");
        // A model without a kernel (low rank) is not updated.
        assert_eq!(Fitted::low_rank(&set, &two_kinds().1, &prices, LowRankSettings::default()).unwrap().copy_width(), None);
    }

    #[test]
    fn the_ensemble_is_the_mean_of_its_models_and_the_neighbours() {
        let (set, vectors, prices) = two_kinds();
        let (ridge, low) = (RidgeSettings::default(), LowRankSettings::default());
        let both = Fitted::Ensemble(Box::new((
            Arc::new(QualityModel::fit(&set, vectors.clone(), &prices, ridge).unwrap()),
            Fitted::low_rank(&set, &vectors, &prices, low).unwrap(),
        )));
        let alone_ridge = Fitted::Ridge(Arc::new(QualityModel::fit(&set, vectors.clone(), &prices, ridge).unwrap()));
        let alone_low = Fitted::low_rank(&set, &vectors, &prices, low).unwrap();
        for v in [[1.0f32, 0.0], [0.0, 1.0], [0.6, 0.8]] {
            let (e, r, l) = (both.predict("p", &v), alone_ridge.predict("p", &v), alone_low.predict("p", &v));
            for m in ["a", "b"] {
                assert!((e[m] - 0.5 * (r[m] + l[m])).abs() < 1e-9, "{m} at {v:?}: {} against {} and {}", e[m], r[m], l[m]);
            }
            // It tells the kinds apart: "a" is good on the first direction only.
            if v == [1.0, 0.0] {
                assert!(e["a"] > 0.8, "{e:?}");
            }
            if v == [0.0, 1.0] {
                assert!(e["a"] < 0.2, "{e:?}");
            }
        }
        // Fitted through the predictor, the same; with the neighbours, a third each.
        let p = Predictor::Ensemble(ridge, low);
        struct Two;
        impl Embedder for Two {
            fn model_id(&self) -> &str {
                "two"
            }
            fn dim(&self) -> usize {
                2
            }
            fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
                Ok(texts.iter().map(|_| vec![1.0, 0.0]).collect())
            }
        }
        let fitted = p.fit(&set, vectors.clone(), &prices, &Two).unwrap().unwrap();
        assert!(matches!(fitted, Fitted::Ensemble(_)));
        assert_eq!(p.describe(true), "kernel-ridge+low-rank+neighbours");
        assert!((p.combine(0.9, 0.3) - 0.5).abs() < 1e-12);

        // The stack: its models' weighted mean, the neighbours weighed in by `combine`; a model
        // of weight 0 is not fitted at all.
        let w = StackWeights { neighbours: 0.2, kernel_ridge: 0.3, low_rank: 0.5, features: 0.0 };
        let p = Predictor::Stacked(ridge, low, w);
        let Some(Fitted::Stacked(stack)) = p.fit(&set, vectors.clone(), &prices, &Two).unwrap() else { panic!("a stack") };
        assert!(stack.ridge.is_some() && stack.low_rank.is_some() && stack.features.is_none());
        let stacked = Fitted::Stacked(stack);
        for v in [[1.0f32, 0.0], [0.0, 1.0], [0.6, 0.8]] {
            let (s, r, l) = (stacked.predict("p", &v), alone_ridge.predict("p", &v), alone_low.predict("p", &v));
            for m in ["a", "b"] {
                assert!((s[m] - (0.3 * r[m] + 0.5 * l[m]) / 0.8).abs() < 1e-9, "{m} at {v:?}");
            }
        }
        assert!((p.combine(0.9, 0.3) - (0.2 * 0.9 + 0.8 * 0.3)).abs() < 1e-12);
        assert_eq!(p.describe(true), "stacked");
        // Weights that do not sum to 1 are refused.
        let bad = Predictor::Stacked(ridge, low, StackWeights { neighbours: 0.5, ..w });
        assert!(bad.fit(&set, vectors, &prices, &Two).is_err());
    }
}
