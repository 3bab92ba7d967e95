//! A learned quality model: kernel ridge regression over every exemplar, calibrated.
//!
//! The nearest neighbours find a prompt's topic; whether it is hard often shows only against the
//! whole set (a proof request next to a routine Chinese question can share many characters). So
//! each model's quality is regressed on all exemplars at once, with a kernel that compares both
//! the embeddings and a few features the embedding blurs (length, script, code and maths cues,
//! difficulty words; see [`prompt_features`]):
//!
//! `k(a, b) = exp((cos(a, b) − 1) / bandwidth) + feature_weight · (z_a · z_b) / 8`
//!
//! where `z` are the features standardised over the exemplars. The fit is centred kernel ridge
//! with an unpenalised intercept; its raw scores are shrunk towards the mean, so each model's
//! scores are mapped to probabilities by Platt scaling fitted on the exact leave-one-out scores
//! of the training exemplars (no held-out data needed). A predicted quality is therefore a
//! calibrated chance of a good answer, which is what the quality bar is compared with.
//!
//! Fitting computes the n×n kernel once and factorises it once per set of exemplars that speak
//! about a group of models (one for a hand-labelled set; feedback on a model gives that model its
//! own set): 40 ms for the 427 built-in exemplars. The cost grows with the cube of the count,
//! which is why [`Predictor::Auto`](super::Predictor::Auto) uses the model only up to
//! [`KERNEL_RIDGE_MAX_EXEMPLARS`] on hand labels, and why a model on more is fitted on that many
//! of them, evenly spread (the rest still count for the neighbours). Predicting scans the fitted
//! exemplars once, like the exact index; its standard error
//! ([`QualityModel::predict_with_error`]) adds one triangular solve against the factor kept from
//! the fit.
//!
//! ```
//! use semroute::exemplar::ExemplarSet;
//! use semroute::predict::{QualityModel, RidgeSettings};
//! use semroute::pricing::PriceTable;
//!
//! // Twelve exemplars: sums are cheap, proofs strong. Their vectors would come from the
//! // embedder; two directions stand in for them here.
//! let mut lines = Vec::new();
//! let mut vectors = Vec::new();
//! for i in 0..12 {
//!     let (prompt, tier, v) = if i % 2 == 0 { (format!("add {i} and {i}"), "cheap", vec![1.0, 0.0]) }
//!                             else { (format!("prove lemma {i}"), "strong", vec![0.0, 1.0]) };
//!     lines.push(format!(r#"{{"id":"e{i}","prompt":"{prompt}","category":"c","language":"en","label":{{"tier":"{tier}","reason":"r","output_tokens":5}}}}"#));
//!     vectors.push(v);
//! }
//! let set = ExemplarSet::from_jsonl_str(&lines.join("\n"), "x.jsonl")?;
//! let prices = PriceTable::from_toml_str("[models.small]\nprovider = \"p\"\ninput_per_mtok = 0.1\noutput_per_mtok = 0.4\ntier = \"cheap\"\nsource = \"s\"\nas_of = \"2025\"\n[models.big]\nprovider = \"q\"\ninput_per_mtok = 3.0\noutput_per_mtok = 15.0\ntier = \"strong\"\nsource = \"s\"\nas_of = \"2025\"\n", "p.toml")?;
//! let model = QualityModel::fit(&set, vectors, &prices, RidgeSettings::default())?;
//! let q = model.predict("add 4 and 5", &[0.999, 0.045]);
//! assert_eq!(q["big"], 1.0); // every exemplar says the strong model answers well
//! assert!(q["small"] > 0.8, "{q:?}");
//! assert!(model.predict("prove lemma 99", &[0.0, 1.0])["small"] < 0.2);
//!
//! // With its standard error: a Gaussian-process posterior's, so larger where no exemplar is.
//! let (_, near) = model.predict_with_error("add 4 and 5", &[0.999, 0.045])["small"];
//! let (_, far) = model.predict_with_error("add 4 and 5", &[-0.8, -0.6])["small"];
//! assert!(near.unwrap() < far.unwrap());
//! assert_eq!(model.predict_with_error("add 4 and 5", &[1.0, 0.0])["big"].1, None); // a constant
//! # Ok::<(), semroute::Error>(())
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use nalgebra::{DMatrix, DVector};
use regex::Regex;

use crate::embed::Embedder;
use crate::error::{Error, Result};
use crate::exemplar::ExemplarSet;
use crate::pricing::PriceTable;

use super::evidence;

/// Up to this many in-process exemplars, [`Predictor::Auto`](super::Predictor::Auto) fits the
/// kernel-ridge model; above, the neighbours alone predict. (Fitting grows with the cube of the
/// count: 40 ms measured at 427, so some seconds estimated at this size.)
pub const KERNEL_RIDGE_MAX_EXEMPLARS: usize = 2_000;

/// Below this many exemplars, [`Predictor::Auto`](super::Predictor::Auto) does not fit the model:
/// a regression over a handful of points (and its calibration) says little that the neighbours
/// do not.
pub const KERNEL_RIDGE_MIN_EXEMPLARS: usize = 50;

/// Where all-MiniLM-L6-v2's unrelated text begins (the router's default fallback threshold), the
/// scale [`RidgeSettings::default`]'s bandwidth was chosen on.
const MINILM_UNRELATED: f32 = 0.3;

/// A model fewer exemplars than this speak about is left to the neighbours.
const MIN_ROWS: usize = 10;

/// How many prompt features [`prompt_features`] returns.
pub const FEATURES: usize = 8;

/// The kernel-ridge model's settings. The defaults were chosen on the built-in hand-labelled set
/// by leave-one-out (see the README), for all-MiniLM-L6-v2's similarity scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RidgeSettings {
    /// Width of the similarity kernel, in units of `1 − cosine` (default 0.5). Embedders whose
    /// similarities are compressed (multilingual-e5-small: unrelated text near 0.8) want less,
    /// about 0.1.
    pub bandwidth: f64,
    /// Weight of the prompt features against the embedding (default 0.5; 0 ignores them).
    pub feature_weight: f64,
    /// Ridge penalty (default 1.0; larger is smoother).
    pub lambda: f64,
}

impl Default for RidgeSettings {
    fn default() -> Self {
        RidgeSettings { bandwidth: 0.5, feature_weight: 0.5, lambda: 1.0 }
    }
}

impl RidgeSettings {
    /// The defaults, with the kernel's width scaled to `embedder`'s similarity scale: by
    /// `(1 − s) / 0.7`, where `s` is the similarity below which it calls text unrelated
    /// ([`suggested_min_similarity`](Embedder::suggested_min_similarity); MiniLM's 0.3 when it
    /// does not say). For multilingual-e5-small (0.86) that gives 0.1, the width the
    /// leave-one-out study found best for it.
    pub fn for_embedder(embedder: &dyn Embedder) -> Self {
        let unrelated = f64::from(embedder.suggested_min_similarity().unwrap_or(MINILM_UNRELATED)).clamp(-1.0, 0.99);
        let d = RidgeSettings::default();
        RidgeSettings { bandwidth: d.bandwidth * (1.0 - unrelated) / (1.0 - f64::from(MINILM_UNRELATED)), ..d }
    }

    pub(crate) fn check(&self) -> Result<()> {
        let ok = |x: f64| x.is_finite() && x > 0.0;
        if !(ok(self.bandwidth) && ok(self.lambda) && self.feature_weight.is_finite() && self.feature_weight >= 0.0) {
            return Err(Error::Config(format!(
                "kernel ridge settings must be positive (bandwidth, lambda) and non-negative (feature_weight), got {self:?}"
            )));
        }
        Ok(())
    }
}

/// Each priced model's quality, regressed on every exemplar by kernel ridge and calibrated (the
/// README's "How quality is predicted" describes the kernel, the features and the calibration).
#[derive(Debug, Clone)]
pub struct QualityModel {
    settings: RidgeSettings,
    dim: usize,
    /// Exemplar vectors, row after row (`n × dim`), and their standardised prompt features.
    vectors: Vec<f32>,
    features: Vec<[f64; FEATURES]>,
    /// Feature standardisation, fitted on the exemplars.
    mean: [f64; FEATURES],
    scale: [f64; FEATURES],
    /// One fit per set of exemplars that speak about a group of models.
    fits: Vec<Fit>,
    /// Model name to (fit, target) in `fits`.
    models: BTreeMap<String, (usize, usize)>,
    /// The exemplars some fit holds, in order.
    used: Vec<usize>,
    /// Prompts already scored, where routers share this model ([`remembering`]).
    ///
    /// [`remembering`]: QualityModel::remembering
    remembered: Option<Arc<Remembered>>,
}

/// Each prompt's scores with their standard errors, under the prompt and its vector's bits, for
/// a model that routers share: the candidates a benchmark compares on one fold score the same
/// prompts with it (see [`FitCache`](super::FitCache)). At most
/// [`REMEMBERED_QUERIES`](crate::index::REMEMBERED_QUERIES) of them.
#[derive(Default)]
struct Remembered {
    by_item: Mutex<HashMap<ItemKey, Scores>>,
}

/// Each model's quality and its standard error, where known.
type Scores = BTreeMap<String, (f64, Option<f64>)>;
/// A remembered prompt: its text and its vector's bits.
type ItemKey = (Box<str>, Box<[u32]>);

impl std::fmt::Debug for Remembered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.by_item.lock().map(|m| m.len()).unwrap_or_default();
        f.debug_struct("Remembered").field("prompts", &held).finish()
    }
}

/// Centred kernel ridge over the exemplars at `rows`.
#[derive(Debug, Clone)]
struct Fit {
    rows: Vec<usize>,
    /// Mean of each training column of the kernel, and of the whole kernel (for centring).
    column_mean: Vec<f64>,
    grand_mean: f64,
    /// The lower Cholesky factor of `K_c + λI`, column after column from the diagonal down
    /// (`n(n+1)/2` values: 0.9 MB at 475 exemplars, 16 MB at 2,000), kept for the posterior
    /// variance of a prediction (a fit holds at most [`KERNEL_RIDGE_MAX_EXEMPLARS`] rows).
    factor: Option<Vec<f64>>,
    /// `diag((K_c + λI)⁻¹)`: each row's leave-one-out score and posterior variance come from it
    /// (empty when every target is constant).
    inverse_diag: Vec<f64>,
    targets: Vec<Target>,
}

#[derive(Debug, Clone)]
enum Target {
    /// Every exemplar gives the same quality: that is the prediction.
    Constant(f64),
    Fitted {
        intercept: f64,
        dual: Vec<f64>,
        /// Platt scaling of the raw score: `1 / (1 + exp(−(a·s + b)))`.
        platt: (f64, f64),
        /// Mean squared leave-one-out residual of the raw score: the noise variance σ².
        noise: f64,
        /// Each row's exact leave-one-out raw score.
        loo: Vec<f64>,
    },
}

impl QualityModel {
    /// Fits the model on `exemplars` with their `vectors` (unit length, as the embedder gives
    /// them), for the models of `prices`.
    pub fn fit(exemplars: &ExemplarSet, vectors: Vec<Vec<f32>>, prices: &PriceTable, settings: RidgeSettings) -> Result<Self> {
        settings.check()?;
        let n = exemplars.len();
        if vectors.len() != n {
            return Err(Error::Config(format!("{} exemplars but {} vectors", n, vectors.len())));
        }
        let dim = vectors.first().map_or(0, Vec::len);
        if let Some(i) = vectors.iter().position(|v| v.len() != dim) {
            return Err(Error::Config(format!("vector {i} has {} dimensions, the first has {dim}", vectors[i].len())));
        }
        if let Some(i) = vectors.iter().position(|v| v.iter().any(|x| !x.is_finite())) {
            return Err(Error::Config(format!("vector {i} holds a non-finite value")));
        }
        let raw: Vec<[f64; FEATURES]> = exemplars.iter().map(|e| prompt_features(&e.prompt)).collect();
        let (mean, scale) = standardisation(&raw);
        let flat: Vec<f32> = vectors.into_iter().flatten().collect();
        let mut model = QualityModel {
            settings,
            dim,
            vectors: flat,
            features: Vec::new(),
            mean,
            scale,
            fits: Vec::new(),
            models: BTreeMap::new(),
            used: Vec::new(),
            remembered: None,
        };
        model.features = raw.iter().map(|f| model.standardise(f)).collect();

        // What each exemplar says about each model, and which exemplars speak about which model.
        let mut by_model: BTreeMap<&str, Vec<(usize, f64)>> = BTreeMap::new();
        for (i, e) in exemplars.iter().enumerate() {
            for (m, q, _, _) in evidence(&e.grade, prices) {
                by_model.entry(m).or_default().push((i, q));
            }
        }
        // Models spoken about by the same exemplars share one factorisation; models with the same
        // targets (a hand label gives every model of a tier the same) share one fit of them. A
        // model too few exemplars speak about is left to the neighbours.
        let mut groups: BTreeMap<Vec<usize>, Vec<(&str, Vec<f64>)>> = BTreeMap::new();
        for (m, items) in by_model.into_iter().filter(|(_, items)| items.len() >= MIN_ROWS) {
            let rows: Vec<usize> = items.iter().map(|x| x.0).collect();
            groups.entry(rows).or_default().push((m, items.into_iter().map(|x| x.1).collect()));
        }
        // Each group solves on the kernel over its own exemplars (built per group, so a fit
        // holds one block, not the kernel over every exemplar: groups of feedback on different
        // models share most rows, and the whole would be as costly to fill and far larger).
        for (rows, members) in groups {
            // Above KERNEL_RIDGE_MAX_EXEMPLARS rows, the group is fitted on that many of them,
            // evenly spread over the set's order (the "subset of data" approximation of a
            // Gaussian process: Rasmussen and Williams, 2006, §8.3.1): the fit's time grows with
            // the cube of its rows and its memory with their square (at 10,000 rows, minutes and
            // 1.6 GB; at 2,000, seconds and 64 MB), and the rest say little more to a kernel
            // already holding 2,000 exemplars.
            let (rows, members) = thin(rows, members);
            let mut distinct: Vec<Vec<f64>> = Vec::new();
            let mut index_of = Vec::with_capacity(members.len());
            for (_, y) in &members {
                let at = distinct.iter().position(|d| d == y).unwrap_or_else(|| {
                    distinct.push(y.clone());
                    distinct.len() - 1
                });
                index_of.push(at);
            }
            let fit = model.fit_rows(&rows, &distinct)?;
            let f = model.fits.len();
            model.fits.push(fit);
            for ((m, _), t) in members.into_iter().zip(index_of) {
                model.models.insert(m.to_string(), (f, t));
            }
        }
        let mut used: Vec<usize> = model.fits.iter().flat_map(|fit| fit.rows.iter().copied()).collect();
        used.sort_unstable();
        used.dedup();
        model.used = used;
        Ok(model)
    }

    /// How many exemplars the model was given (a group of more than
    /// [`KERNEL_RIDGE_MAX_EXEMPLARS`] is fitted on that many of them).
    pub fn len(&self) -> usize {
        self.features.len()
    }

    /// Whether the model was fitted on no exemplar.
    pub fn is_empty(&self) -> bool {
        self.features.is_empty()
    }

    /// The settings it was fitted with.
    pub fn settings(&self) -> RidgeSettings {
        self.settings
    }

    /// Each model's predicted quality in `[0, 1]` for a prompt and its vector. Models fewer than
    /// ten exemplars speak about are absent (the neighbours judge them); so is every model when
    /// the vector does not have the fitted dimension or holds a non-finite value.
    pub fn predict(&self, prompt: &str, vector: &[f32]) -> BTreeMap<String, f64> {
        self.scores(prompt, vector, false).into_iter().map(|(m, (q, _))| (m, q)).collect()
    }

    /// [`predict`](QualityModel::predict), with each quality's standard error where the model
    /// knows it: the Gaussian-process posterior standard deviation of the raw score (kernel
    /// ridge is that posterior's mean, with noise σ² the mean squared leave-one-out residual
    /// and prior scale σ²/λ), carried through the Platt sigmoid. Near many exemplars that agree
    /// it is small; far from every exemplar it approaches the prior's.
    pub fn predict_with_error(&self, prompt: &str, vector: &[f32]) -> BTreeMap<String, (f64, Option<f64>)> {
        self.scores(prompt, vector, true)
    }

    /// [`predict_with_error`](QualityModel::predict_with_error) for the `i`-th exemplar the model
    /// was fitted on, as if it had been left out of the fit: its exact leave-one-out score (the
    /// one the Platt scaling was fitted on) and the posterior variance of a point the fit never
    /// saw, `1 / [(K_c + λI)⁻¹]ᵢᵢ − λ` (the kernel's centring and the Platt scaling stay those of
    /// the whole fit). Models whose fit does not hold the exemplar are absent.
    pub fn left_out(&self, i: usize) -> BTreeMap<String, (f64, Option<f64>)> {
        let lambda = self.settings.lambda;
        self.models
            .iter()
            .filter_map(|(m, &(f, t))| {
                let fit = &self.fits[f];
                // (A fit's rows are in the set's order.)
                let p = fit.rows.binary_search(&i).ok()?;
                let out = match &fit.targets[t] {
                    Target::Constant(q) => (*q, None),
                    Target::Fitted { platt, noise, loo, .. } => {
                        let q = sigmoid(platt.0 * loo[p] + platt.1);
                        let variance = (1.0 / fit.inverse_diag[p] - lambda).max(0.0);
                        (q, Some(quality_error(q, platt.0, noise / lambda * variance)))
                    }
                };
                (out.0.is_finite()).then(|| (m.clone(), (out.0.clamp(0.0, 1.0), out.1.filter(|e| e.is_finite()))))
            })
            .collect()
    }

    /// [`predict_with_error`](QualityModel::predict_with_error) for many prompts at once, the
    /// same numbers to the bit: the standard errors' triangular solves (one per prompt over up
    /// to 2,000 rows, the most of a prediction's cost) read each column of the factor once for
    /// the whole batch rather than once per prompt.
    pub fn predict_with_error_batch(&self, items: &[(&str, &[f32])]) -> Vec<BTreeMap<String, (f64, Option<f64>)>> {
        self.scores_batch(items, true)
    }

    fn scores(&self, prompt: &str, vector: &[f32], with_error: bool) -> BTreeMap<String, (f64, Option<f64>)> {
        self.scores_batch(&[(prompt, vector)], with_error).pop().unwrap_or_default()
    }

    /// This model, remembering the scores (with their standard errors) of the prompts it scores,
    /// for routers that share it and assess the same prompts: each is then scored once. The
    /// scores are the same either way (a prompt's scores do not depend on the others scored with
    /// it, and its qualities not on whether its errors are computed).
    pub(crate) fn remembering(mut self) -> Self {
        self.remembered = Some(Arc::default());
        self
    }

    fn scores_batch(&self, items: &[(&str, &[f32])], with_error: bool) -> Vec<Scores> {
        let Some(memo) = &self.remembered else {
            return self.score_items(items, with_error);
        };
        let keys: Vec<ItemKey> = items.iter().map(|&(p, v)| (p.into(), v.iter().map(|x| x.to_bits()).collect())).collect();
        let mut out: Vec<Option<Scores>> = {
            let known = memo.by_item.lock().unwrap_or_else(PoisonError::into_inner);
            keys.iter().map(|k| known.get(k).cloned()).collect()
        };
        let missing: Vec<usize> = (0..items.len()).filter(|&i| out[i].is_none()).collect();
        if !missing.is_empty() {
            let fresh = self.score_items(&missing.iter().map(|&i| items[i]).collect::<Vec<_>>(), with_error);
            let mut known = memo.by_item.lock().unwrap_or_else(PoisonError::into_inner);
            for (&i, scores) in missing.iter().zip(fresh) {
                // Only scores with their errors serve every caller.
                if with_error && known.len() < crate::index::REMEMBERED_QUERIES {
                    known.insert(keys[i].clone(), scores.clone());
                }
                out[i] = Some(scores);
            }
        }
        out.into_iter()
            .map(|s| {
                let s = s.unwrap_or_default();
                if with_error {
                    s
                } else {
                    s.into_iter().map(|(m, (q, _))| (m, (q, None))).collect()
                }
            })
            .collect()
    }

    fn score_items(&self, items: &[(&str, &[f32])], with_error: bool) -> Vec<Scores> {
        let usable: Vec<bool> = items.iter().map(|(_, v)| v.len() == self.dim && v.iter().all(|x| x.is_finite())).collect();
        // Per usable item: its kernel against every exemplar some fit holds (the others, beyond
        // a thinned group's subset, are never read), and its kernel with itself.
        let rows: Vec<Option<(Vec<f64>, Option<f64>)>> = items
            .iter()
            .zip(&usable)
            .map(|(&(prompt, vector), &ok)| {
                ok.then(|| {
                    let z = self.standardise(&prompt_features(prompt));
                    let self_kernel = with_error.then(|| self.kernel(vector, vector, &z, &z));
                    let mut row = vec![0.0; self.len()];
                    for &j in &self.used {
                        row[j] = self.kernel(vector, self.vector(j), &z, &self.features[j]);
                    }
                    (row, self_kernel)
                })
            })
            .collect();
        // [fit][item] -> each target's (quality, standard error); `None` for an unusable item.
        type ItemScores = Option<Vec<(f64, Option<f64>)>>;
        let scores: Vec<Vec<ItemScores>> = self
            .fits
            .iter()
            .map(|fit| {
                // Per usable item: its centred kernel row over the fit's rows, and the prior
                // variance of its score.
                let centred: Vec<Option<(Vec<f64>, f64)>> = rows
                    .iter()
                    .map(|r| {
                        r.as_ref().map(|(row, self_kernel)| {
                            let k: Vec<f64> = fit.rows.iter().map(|&j| row[j]).collect();
                            let k_mean = k.iter().sum::<f64>() / k.len() as f64;
                            let centred: Vec<f64> = k.iter().zip(&fit.column_mean).map(|(x, c)| x - k_mean - c + fit.grand_mean).collect();
                            (centred, self_kernel.map_or(0.0, |s| s - 2.0 * k_mean + fit.grand_mean))
                        })
                    })
                    .collect();
                let variances: Vec<Option<f64>> = match (&fit.factor, with_error) {
                    (Some(l), true) => {
                        let mut solved: Vec<Vec<f64>> = centred.iter().flatten().map(|(c, _)| c.clone()).collect();
                        let norms = forward_norm2_batch(l, &mut solved);
                        let mut norms = norms.into_iter();
                        centred
                            .iter()
                            .map(|c| c.as_ref().map(|(_, prior)| (prior - norms.next().expect("one per usable item")).max(0.0)))
                            .collect()
                    }
                    _ => vec![None; centred.len()],
                };
                centred
                    .iter()
                    .zip(variances)
                    .map(|(c, variance)| {
                        c.as_ref().map(|(centred, _)| {
                            fit.targets
                                .iter()
                                .map(|t| match t {
                                    Target::Constant(q) => (*q, None),
                                    Target::Fitted { intercept, dual, platt, noise, .. } => {
                                        let s = intercept + centred.iter().zip(dual).map(|(a, b)| a * b).sum::<f64>();
                                        let q = sigmoid(platt.0 * s + platt.1);
                                        let se = variance.map(|v| quality_error(q, platt.0, noise / self.settings.lambda * v));
                                        (q, se)
                                    }
                                })
                                .collect()
                        })
                    })
                    .collect()
            })
            .collect();
        (0..items.len())
            .map(|i| {
                if !usable[i] {
                    return BTreeMap::new();
                }
                let at = |f: usize, t: usize| scores[f][i].as_ref().expect("a usable item")[t];
                self.models
                    .iter()
                    .filter(|(_, &(f, t))| at(f, t).0.is_finite())
                    .map(|(m, &(f, t))| (m.clone(), (at(f, t).0.clamp(0.0, 1.0), at(f, t).1.filter(|e| e.is_finite()))))
                    .collect()
            })
            .collect()
    }

    fn vector(&self, j: usize) -> &[f32] {
        &self.vectors[j * self.dim..(j + 1) * self.dim]
    }

    fn kernel(&self, a: &[f32], b: &[f32], za: &[f64; FEATURES], zb: &[f64; FEATURES]) -> f64 {
        let cos = f64::from(crate::index::dot(a, b));
        let feat: f64 = za.iter().zip(zb).map(|(x, y)| x * y).sum::<f64>() / FEATURES as f64;
        ((cos - 1.0) / self.settings.bandwidth).exp() + self.settings.feature_weight * feat
    }

    fn standardise(&self, f: &[f64; FEATURES]) -> [f64; FEATURES] {
        std::array::from_fn(|i| (f[i] - self.mean[i]) / self.scale[i])
    }

    /// Kernel ridge on the exemplars at `rows` (a block of `kernel`), for each target column (one
    /// value per row).
    fn fit_rows(&self, rows: &[usize], targets: &[Vec<f64>]) -> Result<Fit> {
        let n = rows.len();
        let mut k = DMatrix::<f64>::zeros(n, n);
        for i in 0..n {
            for j in i..n {
                let (a, b) = (rows[i], rows[j]);
                let v = self.kernel(self.vector(a), self.vector(b), &self.features[a], &self.features[b]);
                k[(i, j)] = v;
                k[(j, i)] = v;
            }
        }
        let column_mean: Vec<f64> = (0..n).map(|c| k.column(c).sum() / n as f64).collect();
        let grand_mean = column_mean.iter().sum::<f64>() / n as f64;
        // Centring the kernel is fitting an unpenalised intercept.
        let lambda = self.settings.lambda;
        let mut a = k;
        for i in 0..n {
            for j in 0..n {
                a[(i, j)] += grand_mean - column_mean[i] - column_mean[j];
            }
            a[(i, i)] += lambda;
        }
        let constant = |y: &[f64]| y.iter().all(|v| (v - y[0]).abs() < 1e-12);
        if targets.iter().all(|y| constant(y)) {
            let out = targets.iter().map(|y| Target::Constant(y[0])).collect();
            return Ok(Fit { rows: rows.to_vec(), column_mean, grand_mean, factor: None, inverse_diag: Vec::new(), targets: out });
        }
        let chol = a.cholesky().ok_or_else(|| Error::Config("the kernel ridge system is not positive definite".into()))?;
        // diag((K_c + λI)⁻¹) gives every training exemplar's exact leave-one-out score; with
        // K_c + λI = L·Lᵀ it is the squared column norms of L⁻¹, found one column at a time by
        // forward substitution (no n × n inverse held).
        let l = chol.l_dirty().as_slice();
        let mut x = vec![0.0; n];
        let mut inverse_diag: Vec<f64> = Vec::with_capacity(n);
        for c in 0..n {
            x[c..].fill(0.0);
            x[c] = 1.0;
            if !forward_substitute(&mut x, c, |j| &l[j * n + j..(j + 1) * n]) {
                return Err(Error::Config("the kernel ridge system is singular".into()));
            }
            inverse_diag.push(x[c..].iter().map(|v| v * v).sum::<f64>());
        }
        let mut out = Vec::with_capacity(targets.len());
        for y in targets {
            let mean = y.iter().sum::<f64>() / n as f64;
            if constant(y) {
                out.push(Target::Constant(mean));
                continue;
            }
            let dual = chol.solve(&DVector::from_iterator(n, y.iter().map(|v| v - mean)));
            // Fitted value i is y_i − λ·dual_i; its leverage is 1/n + 1 − λ·inv_ii.
            let loo: Vec<f64> = (0..n)
                .map(|i| {
                    let leverage = 1.0 / n as f64 + 1.0 - lambda * inverse_diag[i];
                    y[i] - lambda * dual[i] / (1.0 - leverage).max(1e-9)
                })
                .collect();
            // Scores that do not rank the targets (the kernel told nothing) give the mean.
            let noise = loo.iter().zip(y).map(|(s, t)| (t - s).powi(2)).sum::<f64>() / n as f64;
            out.push(match platt(&loo, y) {
                Some(p) => Target::Fitted { intercept: mean, dual: dual.iter().copied().collect(), platt: p, noise, loo },
                None => Target::Constant(mean),
            });
        }
        let l = chol.l_dirty();
        let factor = Some((0..n).flat_map(|c| (c..n).map(move |r| (c, r))).map(|(c, r)| l[(r, c)]).collect());
        Ok(Fit { rows: rows.to_vec(), column_mean, grand_mean, factor, inverse_diag, targets: out })
    }
}

/// A group's rows and each member's targets, cut to [`KERNEL_RIDGE_MAX_EXEMPLARS`] rows evenly
/// spread over them (row `i · n / max` for `i` below `max`) when there are more; as they are
/// otherwise.
fn thin(rows: Vec<usize>, members: Vec<(&str, Vec<f64>)>) -> (Vec<usize>, Vec<(&str, Vec<f64>)>) {
    let n = rows.len();
    if n <= KERNEL_RIDGE_MAX_EXEMPLARS {
        return (rows, members);
    }
    let keep = evenly_spread(n, KERNEL_RIDGE_MAX_EXEMPLARS);
    let rows = keep.iter().map(|&p| rows[p]).collect();
    let members = members.into_iter().map(|(m, y)| (m, keep.iter().map(|&p| y[p]).collect())).collect();
    (rows, members)
}

/// `at_most` positions of `0..n` evenly spread over it (`i · n / at_most` for `i` below
/// `at_most`), or all of them when there are no more.
pub(crate) fn evenly_spread(n: usize, at_most: usize) -> Vec<usize> {
    if n <= at_most {
        return (0..n).collect();
    }
    (0..at_most).map(|i| i * n / at_most).collect()
}

/// `‖L⁻¹b‖²` for a lower-triangular `L` packed as [`Fit::factor`] is (NaN if `L` is singular);
/// one right-hand side at a time, the yardstick of [`forward_norm2_batch`].
#[cfg(test)]
fn forward_norm2(packed: &[f64], b: &[f64]) -> f64 {
    let n = b.len();
    let mut x = b.to_vec();
    // Column j starts after the n + (n − 1) + … + (n − j + 1) entries of the columns before it.
    if !forward_substitute(&mut x, 0, |j| {
        let at = j * n - j * j.saturating_sub(1) / 2;
        &packed[at..at + n - j]
    }) {
        return f64::NAN;
    }
    x.iter().map(|v| v * v).sum()
}

/// [`forward_norm2`] for each of `bs` (solved in place): `‖L⁻¹b‖²` per right-hand side, NaN
/// for all when `L` is singular. Column by column, each column applied to every right-hand side
/// while it is in cache; per right-hand side the same operations in the same order as
/// [`forward_norm2`], so the same numbers to the bit. AVX2 when the CPU has it, as
/// [`forward_substitute`].
fn forward_norm2_batch(packed: &[f64], bs: &mut [Vec<f64>]) -> Vec<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports the feature `forward_norm2_batch_avx2` is compiled for.
            return unsafe { forward_norm2_batch_avx2(packed, bs) };
        }
    }
    forward_norm2_batch_portable(packed, bs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn forward_norm2_batch_avx2(packed: &[f64], bs: &mut [Vec<f64>]) -> Vec<f64> {
    forward_norm2_batch_portable(packed, bs)
}

#[inline(always)]
fn forward_norm2_batch_portable(packed: &[f64], bs: &mut [Vec<f64>]) -> Vec<f64> {
    let Some(n) = bs.first().map(Vec::len) else {
        return Vec::new();
    };
    for j in 0..n {
        // Column j starts after the n + (n − 1) + … + (n − j + 1) entries of the columns before it.
        let at = j * n - j * j.saturating_sub(1) / 2;
        let column = &packed[at..at + n - j];
        let d = column[0];
        if d == 0.0 || !d.is_finite() {
            return vec![f64::NAN; bs.len()];
        }
        for x in bs.iter_mut() {
            x[j] /= d;
            let xj = x[j];
            if xj != 0.0 {
                for (r, l) in x[j + 1..].iter_mut().zip(&column[1..]) {
                    *r -= l * xj;
                }
            }
        }
    }
    bs.iter().map(|x| x.iter().map(|v| v * v).sum()).collect()
}

/// Solves `L·y = x` in place for a lower-triangular `L`, `x` being zero before row `from`;
/// `column(j)` is column `j` of `L` from its diagonal down. Column-oriented, so that the inner
/// loop walks down one column in memory. `false` when a diagonal entry is zero or not finite.
/// Compiled a second time for AVX2 and taken when the CPU has it (checked at run time): the
/// inner loop is element-wise, so the result is the same to the bit, in twice the lanes.
fn forward_substitute<'a, F: Fn(usize) -> &'a [f64]>(x: &mut [f64], from: usize, column: F) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports the feature `forward_substitute_avx2` is compiled for.
            return unsafe { forward_substitute_avx2(x, from, column) };
        }
    }
    forward_substitute_portable(x, from, column)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn forward_substitute_avx2<'a, F: Fn(usize) -> &'a [f64]>(x: &mut [f64], from: usize, column: F) -> bool {
    forward_substitute_portable(x, from, column)
}

#[inline(always)]
fn forward_substitute_portable<'a, F: Fn(usize) -> &'a [f64]>(x: &mut [f64], from: usize, column: F) -> bool {
    for j in from..x.len() {
        let column = column(j);
        let d = column[0];
        if d == 0.0 || !d.is_finite() {
            return false;
        }
        x[j] /= d;
        let xj = x[j];
        if xj != 0.0 {
            for (r, l) in x[j + 1..].iter_mut().zip(&column[1..]) {
                *r -= l * xj;
            }
        }
    }
    true
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The standard error of a quality `q = sigmoid(slope · s + b)` whose raw score `s` has this
/// posterior variance (the delta method through the Platt scaling).
fn quality_error(q: f64, slope: f64, score_variance: f64) -> f64 {
    q * (1.0 - q) * slope * score_variance.sqrt()
}

/// Platt scaling: `(a, b)` minimising the cross-entropy of `sigmoid(a·s + b)` against the
/// targets, with Platt's correction (each target pulled `1/(n+2)` towards ½, so that perfectly
/// separated scores do not give certainties), by Newton's method with step halving. `None` when
/// the scores do not rank the targets (slope not positive).
fn platt(scores: &[f64], targets: &[f64]) -> Option<(f64, f64)> {
    let n = scores.len() as f64;
    let eps = 1.0 / (n + 2.0);
    let t: Vec<f64> = targets.iter().map(|t| eps + (1.0 - 2.0 * eps) * t).collect();
    let loss = |a: f64, b: f64| -> f64 {
        scores
            .iter()
            .zip(&t)
            .map(|(s, t)| {
                let z = a * s + b;
                // log(1 + e^z) − t·z, written to stay finite for large |z|.
                z.max(0.0) + (-z.abs()).exp().ln_1p() - t * z
            })
            .sum()
    };
    let mean = t.iter().sum::<f64>() / n;
    let (mut a, mut b) = (0.0, (mean / (1.0 - mean)).ln());
    let mut current = loss(a, b);
    for _ in 0..100 {
        let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (0.0, 0.0, 1e-9, 0.0, 1e-9);
        for (s, t) in scores.iter().zip(&t) {
            let p = sigmoid(a * s + b);
            let w = p * (1.0 - p);
            ga += (p - t) * s;
            gb += p - t;
            haa += w * s * s;
            hab += w * s;
            hbb += w;
        }
        let det = haa * hbb - hab * hab;
        if !(det.is_finite() && det > 0.0) {
            break;
        }
        let (da, db) = ((hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det);
        let mut step = 1.0;
        let mut improved = false;
        while step > 1e-6 {
            let next = loss(a - step * da, b - step * db);
            if next <= current {
                a -= step * da;
                b -= step * db;
                improved = current - next > 1e-12;
                current = next;
                break;
            }
            step /= 2.0;
        }
        if !improved {
            break;
        }
    }
    (a.is_finite() && b.is_finite() && a > 0.0).then_some((a, b))
}

fn standardisation(features: &[[f64; FEATURES]]) -> ([f64; FEATURES], [f64; FEATURES]) {
    let n = features.len().max(1) as f64;
    let mean: [f64; FEATURES] = std::array::from_fn(|i| features.iter().map(|f| f[i]).sum::<f64>() / n);
    // A feature constant over the exemplars keeps scale 1, so that a prompt that differs in it
    // gets a moderate value, not one blown up by a near-zero deviation.
    let scale = std::array::from_fn(|i| {
        let sd = (features.iter().map(|f| (f[i] - mean[i]).powi(2)).sum::<f64>() / n).sqrt();
        if sd > 1e-6 {
            sd + 1e-9
        } else {
            1.0
        }
    });
    (mean, scale)
}

struct Patterns {
    cjk: Regex,
    word: Regex,
    other: Regex,
    latin_word: Regex,
    digit: Regex,
    code: Regex,
    maths: Regex,
    hard: Regex,
}

fn patterns() -> &'static Patterns {
    static P: OnceLock<Patterns> = OnceLock::new();
    P.get_or_init(|| {
        let re = |s: &str| Regex::new(s).expect("a fixed pattern");
        Patterns {
            cjk: re(r"[\x{3400}-\x{9fff}\x{f900}-\x{faff}]"),
            word: re(r"[A-Za-z0-9_]+"),
            other: re(r"[^\sA-Za-z0-9_\x{3400}-\x{9fff}\x{f900}-\x{faff}]"),
            latin_word: re(r"[A-Za-z]{4,}"),
            digit: re(r"\d"),
            code: re(r"(?mi)```|\bdef |\bclass |\bfunction\b|=>|\breturn\b|;\s*$|\{|\}|\bSELECT\b|\bimport\b|#include|\bfn "),
            maths: re(r"[=≤≥≠∑∫√πε∈⊆∩∪→^≡±×÷<>]|\\frac|\bmod\b"),
            // Fixed before any leave-one-out result was seen: generic cues that a task needs care.
            hard: re(r"(?i)prove|proof|rigorous|证明|證明|严格|嚴格|optimi[sz]e|trade-?off|architecture|design|legal|contract|合同|合約|法律|edge case|边界|concurren|race condition|并发|併發"),
        }
    })
}

/// The prompt features the kernel compares besides the embedding, in this order:
/// 1. `ln(1 + tokens)`, with a tokenizer-free estimate that treats languages alike (one per CJK
///    character, 1.3 per Latin word, 0.5 per other symbol);
/// 2. the share of CJK characters;
/// 3. mixed script (more than 5% CJK and a Latin word of four letters or more): 1 or 0;
/// 4. code cues (fences, `def`, `return`, braces, `SELECT`, …), capped at 10, over 10;
/// 5. digits per character, times 10;
/// 6. maths symbols, capped at 20, over 20;
/// 7. a difficulty word (prove, rigorous, trade-off, contract, 证明, 并发, …): 1 or 0;
/// 8. `ln(1 + newlines)` (pasted material).
///
/// ```
/// let f = semroute::predict::prompt_features("证明：对任意 n, n^2 ≥ n");
/// assert!(f[1] > 0.2);   // CJK share
/// assert_eq!(f[6], 1.0); // 证明 ("prove")
/// ```
pub fn prompt_features(prompt: &str) -> [f64; FEATURES] {
    let p = patterns();
    let chars = prompt.chars().count().max(1) as f64;
    let cjk = p.cjk.find_iter(prompt).count() as f64;
    let tokens = cjk + 1.3 * p.word.find_iter(prompt).count() as f64 + 0.5 * p.other.find_iter(prompt).count() as f64;
    let cjk_share = cjk / chars;
    [
        tokens.ln_1p(),
        cjk_share,
        f64::from(u8::from(cjk_share > 0.05 && p.latin_word.is_match(prompt))),
        p.code.find_iter(prompt).count().min(10) as f64 / 10.0,
        p.digit.find_iter(prompt).count() as f64 / chars * 10.0,
        p.maths.find_iter(prompt).count().min(20) as f64 / 20.0,
        f64::from(u8::from(p.hard.is_match(prompt))),
        (prompt.matches('\n').count() as f64).ln_1p(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batched_norms_are_the_one_at_a_time_ones_to_the_bit() {
        let n = 29;
        let value = |r: usize, c: usize| if r == c { 1.5 + (r % 7) as f64 / 5.0 } else { ((r * 7 + c * 11) % 17) as f64 / 41.0 - 0.2 };
        let packed: Vec<f64> = (0..n).flat_map(|c| (c..n).map(move |r| value(r, c))).collect();
        let bs: Vec<Vec<f64>> =
            (0..5).map(|k| (0..n).map(|i| ((i * (k + 2)) as f64 * 0.31).cos() * if k == 3 { 0.0 } else { 1.0 }).collect()).collect();
        let one_at_a_time: Vec<u64> = bs.iter().map(|b| forward_norm2(&packed, b).to_bits()).collect();
        let batched: Vec<u64> = forward_norm2_batch(&packed, &mut bs.clone()).into_iter().map(f64::to_bits).collect();
        assert_eq!(batched, one_at_a_time);
        assert!(forward_norm2_batch(&packed, &mut []).is_empty());
        // A zero on the diagonal: NaN for every right-hand side, as one at a time.
        let mut singular = packed.clone();
        singular[0] = 0.0;
        assert!(forward_norm2_batch(&singular, &mut bs.clone()).iter().all(|v| v.is_nan()));
        assert!(forward_norm2(&singular, &bs[0]).is_nan());
    }

    #[test]
    fn the_dispatched_forward_substitution_is_the_portable_one_to_the_bit() {
        // A well-conditioned lower-triangular matrix, column-major, and a right-hand side.
        let n = 37;
        let value = |r: usize, c: usize| if r == c { 2.0 + (r % 5) as f64 / 7.0 } else { ((r * 31 + c * 17) % 13) as f64 / 29.0 - 0.2 };
        let l: Vec<f64> = (0..n).flat_map(|c| (0..n).map(move |r| if r >= c { value(r, c) } else { 0.0 })).collect();
        let b: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
        let (mut fast, mut portable) = (b.clone(), b.clone());
        assert!(forward_substitute(&mut fast, 3, |j| &l[j * n + j..(j + 1) * n]));
        assert!(forward_substitute_portable(&mut portable, 3, |j| &l[j * n + j..(j + 1) * n]));
        assert_eq!(fast.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), portable.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    }

    const PRICES: &str = "[models.small]\nprovider = \"p\"\ninput_per_mtok = 0.1\noutput_per_mtok = 0.4\ntier = \"cheap\"\nsource = \"s\"\nas_of = \"2025\"\n\
        [models.big]\nprovider = \"q\"\ninput_per_mtok = 3.0\noutput_per_mtok = 15.0\ntier = \"strong\"\nsource = \"s\"\nas_of = \"2025\"\n";

    fn unit(angle: f64) -> Vec<f32> {
        vec![angle.cos() as f32, angle.sin() as f32]
    }

    /// Two clusters of directions: near angle 0 cheap, near angle 1.2 strong.
    fn clusters() -> (ExemplarSet, Vec<Vec<f32>>) {
        let mut lines = Vec::new();
        let mut vectors = Vec::new();
        for i in 0..20 {
            let (tier, angle) = if i % 2 == 0 { ("cheap", 0.0) } else { ("strong", 1.2) };
            let jitter = (i as f64 * 0.37).sin() * 0.1;
            lines.push(format!(
                r#"{{"id":"e{i}","prompt":"prompt {i}","category":"c","language":"en","label":{{"tier":"{tier}","reason":"r","output_tokens":10}}}}"#
            ));
            vectors.push(unit(angle + jitter));
        }
        (ExemplarSet::from_jsonl_str(&lines.join("\n"), "x.jsonl").unwrap(), vectors)
    }

    #[test]
    fn the_packed_factor_solves_like_the_full_one() {
        let a = DMatrix::from_fn(5, 5, |r, c| if r == c { 3.0 + r as f64 } else { 1.0 / (1.0 + (r + c) as f64) });
        let l = a.clone().cholesky().unwrap().l();
        let packed: Vec<f64> = (0..5).flat_map(|c| (c..5).map(move |r| (c, r))).map(|(c, r)| l[(r, c)]).collect();
        let b = [0.3, -1.0, 0.7, 2.0, 0.1];
        let exact = l.solve_lower_triangular(&DVector::from_column_slice(&b)).unwrap().norm_squared();
        assert!((forward_norm2(&packed, &b) - exact).abs() < 1e-12 * exact, "{} against {exact}", forward_norm2(&packed, &b));
    }

    #[test]
    fn a_shared_model_scores_each_prompt_once_and_gives_the_same_scores() {
        let (set, vectors) = clusters();
        let prices = PriceTable::from_toml_str(PRICES, "p.toml").unwrap();
        let plain = QualityModel::fit(&set, vectors.clone(), &prices, RidgeSettings::default()).unwrap();
        let shared = QualityModel::fit(&set, vectors, &prices, RidgeSettings::default()).unwrap().remembering();
        let vs: Vec<Vec<f32>> = (0..6).map(|i| unit(0.3 * i as f64)).collect();
        let items: Vec<(&str, &[f32])> = vs.iter().enumerate().map(|(i, v)| (["a", "b b", "c"][i % 3], v.as_slice())).collect();
        let expected = plain.predict_with_error_batch(&items);
        let held = |m: &QualityModel| m.remembered.as_ref().unwrap().by_item.lock().unwrap().len();
        // Half the prompts first, then all of them (half remembered), then all again, then without
        // the errors: the same scores to the bit each time, each prompt scored once.
        assert_eq!(shared.predict_with_error_batch(&items[..3]), expected[..3]);
        assert_eq!(held(&shared), 3);
        assert_eq!(shared.predict_with_error_batch(&items), expected);
        assert_eq!(shared.predict_with_error_batch(&items), expected);
        assert_eq!(held(&shared), 6);
        for (&(p, v), e) in items.iter().zip(&expected) {
            assert_eq!(shared.predict(p, v), plain.predict(p, v));
            assert_eq!(shared.predict(p, v), e.iter().map(|(m, &(q, _))| (m.clone(), q)).collect());
        }
        // The same vector with another prompt is another item (its features differ).
        assert_eq!(shared.predict_with_error("another prompt", &vs[0]), plain.predict_with_error("another prompt", &vs[0]));
        assert_eq!(held(&shared), 7);
        assert!(plain.remembered.is_none());
    }

    #[test]
    fn the_standard_error_grows_away_from_the_exemplars() {
        let (set, vectors) = clusters();
        let prices = PriceTable::from_toml_str(PRICES, "p.toml").unwrap();
        let model = QualityModel::fit(&set, vectors, &prices, RidgeSettings::default()).unwrap();
        let se = |angle: f64| {
            let p = model.predict_with_error("prompt x", &unit(angle));
            assert_eq!(p["small"].0, model.predict("prompt x", &unit(angle))["small"], "the same quality as predict");
            // A constant (every exemplar agrees) has no model error: the neighbours judge it.
            assert_eq!(p["big"].1, None);
            p["small"].1.unwrap()
        };
        let (inside, between, opposite) = (se(0.0), se(0.6), se(std::f64::consts::PI));
        assert!(inside > 0.0 && inside < 0.1, "{inside}");
        assert!(between > 2.0 * inside, "half-way between the clusters: {between} against {inside}");
        assert!(opposite > 2.0 * inside, "where no exemplar is: {opposite} against {inside}");
    }

    #[test]
    fn a_group_of_more_than_the_limit_is_fitted_on_an_evenly_spread_subset() {
        // 2,300 exemplars: the two clusters, alternating.
        let n = KERNEL_RIDGE_MAX_EXEMPLARS + 300;
        let mut lines = Vec::new();
        let mut vectors = Vec::new();
        for i in 0..n {
            let (tier, angle) = if i % 2 == 0 { ("cheap", 0.0) } else { ("strong", 1.2) };
            lines.push(format!(
                r#"{{"id":"e{i}","prompt":"prompt {i}","category":"c","language":"en","label":{{"tier":"{tier}","reason":"r","output_tokens":10}}}}"#
            ));
            vectors.push(unit(angle + (i as f64 * 0.37).sin() * 0.1));
        }
        let set = ExemplarSet::from_jsonl_str(&lines.join("\n"), "x.jsonl").unwrap();
        let prices = PriceTable::from_toml_str(PRICES, "p.toml").unwrap();
        let model = QualityModel::fit(&set, vectors, &prices, RidgeSettings::default()).unwrap();
        assert_eq!(model.len(), n, "every exemplar is held");
        assert_eq!(model.fits.len(), 1);
        let rows = &model.fits[0].rows;
        assert_eq!(rows.len(), KERNEL_RIDGE_MAX_EXEMPLARS, "the fit holds the limit");
        assert_eq!((rows[0], *rows.last().unwrap()), (0, (KERNEL_RIDGE_MAX_EXEMPLARS - 1) * n / KERNEL_RIDGE_MAX_EXEMPLARS));
        assert!(rows.windows(2).all(|w| w[0] < w[1] && w[1] - w[0] <= 2), "evenly spread: {:?}", &rows[..10]);
        assert_eq!(model.used, *rows);
        // Both clusters are in the subset, and the model still tells them apart.
        assert!(model.predict("prompt x", &unit(0.0))["small"] > 0.9);
        assert!(model.predict("prompt x", &unit(1.2))["small"] < 0.1);
        // An exemplar left out of the subset has no leave-one-out prediction; one in it has.
        let dropped = (0..n).find(|i| rows.binary_search(i).is_err()).unwrap();
        assert!(model.left_out(dropped).is_empty());
        assert!(model.left_out(rows[1]).contains_key("small"));
    }

    #[test]
    fn left_out_predicts_like_a_fit_without_the_exemplar() {
        let (set, vectors) = clusters();
        let prices = PriceTable::from_toml_str(PRICES, "p.toml").unwrap();
        let model = QualityModel::fit(&set, vectors.clone(), &prices, RidgeSettings::default()).unwrap();
        for i in [0, 3, 10, 19] {
            let out = model.left_out(i);
            let others =
                ExemplarSet::from_exemplars(set.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, e)| e.clone()).collect()).unwrap();
            let vs: Vec<Vec<f32>> = vectors.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, v)| v.clone()).collect();
            let refit = QualityModel::fit(&others, vs, &prices, RidgeSettings::default()).unwrap();
            let prompt = &set.get(i).prompt;
            let (q, se) = out["small"];
            let (rq, rse) = refit.predict_with_error(prompt, &vectors[i])["small"];
            let inside = model.predict_with_error(prompt, &vectors[i])["small"].1.unwrap();
            assert!((q - rq).abs() < 0.01, "exemplar {i}: left out {q}, refitted without it {rq}");
            let (se, rse) = (se.unwrap(), rse.unwrap());
            eprintln!("exemplar {i}: left out {q:.4} ± {se:.4}, refitted {rq:.4} ± {rse:.4}, held {inside:.4}");
            assert!(se > inside, "exemplar {i}: a point the fit never saw is less sure ({se}) than one it holds ({inside})");
            assert!(se > 0.8 * rse && se < 1.25 * rse, "exemplar {i}: {se} against the refit's {rse}");
            assert_eq!(out["big"], (1.0, None), "a constant stays one");
        }
        assert!(model.left_out(20).is_empty(), "no such exemplar");
    }

    #[test]
    fn separates_two_clusters_and_calibrates() {
        let (set, vectors) = clusters();
        let prices = PriceTable::from_toml_str(PRICES, "p.toml").unwrap();
        let model = QualityModel::fit(&set, vectors, &prices, RidgeSettings::default()).unwrap();
        let near_cheap = model.predict("prompt x", &unit(0.02));
        let near_strong = model.predict("prompt y", &unit(1.18));
        assert!(near_cheap["small"] > 0.8, "{near_cheap:?}");
        assert!(near_strong["small"] < 0.2, "{near_strong:?}");
        // Every exemplar says the strong model answers well: a constant, not a fit.
        assert_eq!((near_cheap["big"], near_strong["big"]), (1.0, 1.0));
        // Half-way between the clusters the model is unsure.
        let middle = model.predict("prompt z", &unit(0.6))["small"];
        assert!(middle > 0.2 && middle < 0.8, "{middle}");
    }

    #[test]
    fn measured_models_are_fitted_on_the_exemplars_that_measured_them() {
        let text = (0..14)
            .map(|i| {
                let q = if i < 7 { 1.0 } else { 0.0 };
                // `big` was measured on the first ten only.
                let big = if i < 10 { r#","big":{"quality":1.0,"output_tokens":5}"# } else { "" };
                format!(
                    r#"{{"id":"m{i}","prompt":"p{i}","category":"c","language":"en","results":{{"small":{{"quality":{q},"output_tokens":5}}{big}}}}}"#
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        let set = ExemplarSet::from_jsonl_str(&text, "m.jsonl").unwrap();
        let vectors: Vec<Vec<f32>> = (0..14).map(|i| unit(if i < 7 { 0.0 } else { 1.3 } + i as f64 * 0.01)).collect();
        let prices = PriceTable::from_toml_str(PRICES, "p.toml").unwrap();
        let model = QualityModel::fit(&set, vectors, &prices, RidgeSettings::default()).unwrap();
        assert_eq!(model.fits.len(), 2, "two sets of rows: all fourteen, and the ten that measured `big`");
        let q = model.predict("p", &unit(0.01));
        assert!(q["small"] > 0.7, "{q:?}");
        assert_eq!(q["big"], 1.0);
        // Measured on fewer than ten exemplars, a model is left to the neighbours.
        let few: Vec<_> = set.iter().skip(5).cloned().collect();
        let vectors: Vec<Vec<f32>> = (5..14).map(|i| unit(if i < 7 { 0.0 } else { 1.3 } + i as f64 * 0.01)).collect();
        let model = QualityModel::fit(&ExemplarSet::from_exemplars(few).unwrap(), vectors, &prices, RidgeSettings::default()).unwrap();
        assert!(model.predict("p", &unit(0.0)).is_empty());
    }

    #[test]
    fn a_vector_of_another_size_or_not_finite_predicts_nothing() {
        let (set, vectors) = clusters();
        let prices = PriceTable::from_toml_str(PRICES, "p.toml").unwrap();
        let model = QualityModel::fit(&set, vectors.clone(), &prices, RidgeSettings::default()).unwrap();
        assert!(model.predict("p", &[1.0, 0.0, 0.0]).is_empty());
        assert!(model.predict("p", &[f32::NAN, 0.0]).is_empty());
        let mut bad = vectors;
        bad[3][1] = f32::INFINITY;
        let err = QualityModel::fit(&set, bad, &prices, RidgeSettings::default()).unwrap_err();
        assert!(err.to_string().contains("vector 3 holds a non-finite value"), "{err}");
    }

    #[test]
    fn refuses_bad_settings_and_mismatched_vectors() {
        let (set, vectors) = clusters();
        let prices = PriceTable::from_toml_str(PRICES, "p.toml").unwrap();
        for s in [
            RidgeSettings { bandwidth: 0.0, ..RidgeSettings::default() },
            RidgeSettings { lambda: f64::NAN, ..RidgeSettings::default() },
            RidgeSettings { feature_weight: -1.0, ..RidgeSettings::default() },
        ] {
            let err = QualityModel::fit(&set, vectors.clone(), &prices, s).unwrap_err();
            assert!(err.to_string().contains("kernel ridge settings"), "{err}");
        }
        let err = QualityModel::fit(&set, vectors[..3].to_vec(), &prices, RidgeSettings::default()).unwrap_err();
        assert!(err.to_string().contains("20 exemplars but 3 vectors"), "{err}");
        let mut ragged = vectors;
        ragged[4].push(0.0);
        let err = QualityModel::fit(&set, ragged, &prices, RidgeSettings::default()).unwrap_err();
        assert!(err.to_string().contains("vector 4 has 3 dimensions"), "{err}");
    }

    #[test]
    fn platt_maps_shrunk_scores_to_probabilities() {
        // Scores squeezed into [0.4, 0.6] that still order the targets: the fit spreads them out.
        let scores: Vec<f64> = (0..100).map(|i| 0.4 + 0.002 * i as f64).collect();
        let targets: Vec<f64> = (0..100).map(|i| f64::from(u8::from(i >= 50 && i % 7 != 0 || i < 50 && i % 9 == 0))).collect();
        let (a, b) = platt(&scores, &targets).unwrap();
        assert!(a > 10.0, "slope {a}");
        assert!(sigmoid(a * 0.41 + b) < 0.25 && sigmoid(a * 0.59 + b) > 0.75);
        // Perfectly separated scores: a confident fit, but not certainty.
        let (a, b) = platt(&[0.0, 0.1, 0.9, 1.0], &[0.0, 0.0, 1.0, 1.0]).unwrap();
        assert!(sigmoid(a + b) < 0.99 && sigmoid(b) > 0.01, "({a}, {b})");
        // Leave-one-out scores of a kernel that knows nothing are (Σy − y_i)/(n − 1): they rank
        // the targets backwards, and Platt refuses them rather than invert them.
        let y = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0];
        let sum: f64 = y.iter().sum();
        let uninformed: Vec<f64> = y.iter().map(|v| (sum - v) / 9.0).collect();
        assert_eq!(platt(&uninformed, &y), None);
        // Widely spread scores (a small ridge penalty) converge instead of running away.
        let spread: Vec<f64> = (0..40).map(|i| (i as f64 - 20.0) * 3.0).collect();
        let t: Vec<f64> = (0..40).map(|i| f64::from(u8::from(i >= 20 && i != 25 || i == 3))).collect();
        let (a, b) = platt(&spread, &t).unwrap();
        assert!(a.is_finite() && a < 10.0 && b.is_finite(), "({a}, {b})");
    }

    #[test]
    fn features_read_script_code_maths_and_difficulty() {
        let en = prompt_features("Reformat this JSON: {\"a\":1}");
        assert_eq!(en[1], 0.0);
        assert!(en[3] > 0.0, "braces are code cues");
        let zh = prompt_features("证明：对任意正整数 n，n^2 ≥ n。");
        assert!(zh[1] > 0.3 && zh[6] == 1.0 && zh[5] > 0.0, "{zh:?}");
        let mixed = prompt_features("帮我 review 一下这段 code 的并发问题");
        assert_eq!(mixed[2], 1.0);
        let lines = prompt_features("a\nb\nc");
        assert!((lines[7] - 3f64.ln()).abs() < 1e-12);
        assert_eq!(prompt_features("2024年3月").iter().filter(|x| x.is_finite()).count(), FEATURES);
        assert!(prompt_features("").iter().all(|x| x.is_finite()));
    }
}
