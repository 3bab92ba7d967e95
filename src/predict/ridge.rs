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
//! Fitting costs one n×n Cholesky factorisation and inverse (54 ms for 427 exemplars), which is
//! why [`Predictor::Auto`](super::Predictor::Auto) uses it only up to
//! [`KERNEL_RIDGE_MAX_EXEMPLARS`]. Predicting scans the exemplars once, like the exact index.
//!
//! ```
//! use semroute::exemplar::ExemplarSet;
//! use semroute::predict::{QualityModel, RidgeSettings};
//! use semroute::pricing::PriceTable;
//!
//! let set = ExemplarSet::from_jsonl_str(r#"{"id":"a","prompt":"add 2 and 2","category":"c","language":"en","label":{"tier":"cheap","reason":"r","output_tokens":5}}
//! {"id":"b","prompt":"prove the Riemann hypothesis","category":"c","language":"en","label":{"tier":"strong","reason":"r","output_tokens":900}}
//! {"id":"c","prompt":"add 3 and 5","category":"c","language":"en","label":{"tier":"cheap","reason":"r","output_tokens":5}}"#, "x.jsonl")?;
//! let prices = PriceTable::from_toml_str("[models.small]\nprovider = \"p\"\ninput_per_mtok = 0.1\noutput_per_mtok = 0.4\ntier = \"cheap\"\nsource = \"s\"\nas_of = \"2025\"\n[models.big]\nprovider = \"q\"\ninput_per_mtok = 3.0\noutput_per_mtok = 15.0\ntier = \"strong\"\nsource = \"s\"\nas_of = \"2025\"\n", "p.toml")?;
//! // Vectors would come from the embedder; three unit vectors stand in here.
//! let vectors = vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![0.995, 0.0998]];
//! let model = QualityModel::fit(&set, vectors, &prices, RidgeSettings::default())?;
//! let q = model.predict("add 4 and 4", &[0.999, 0.045]);
//! assert_eq!(q["big"], 1.0); // every exemplar says the strong model answers well
//! assert!(q["small"] > 0.0 && q["small"] < 1.0);
//! # Ok::<(), semroute::Error>(())
//! ```

use std::collections::BTreeMap;
use std::sync::OnceLock;

use nalgebra::{DMatrix, DVector};
use regex::Regex;

use crate::embed::Embedder;
use crate::error::{Error, Result};
use crate::exemplar::ExemplarSet;
use crate::pricing::PriceTable;

use super::evidence;

/// Up to this many in-process exemplars, [`Predictor::Auto`](super::Predictor::Auto) fits the
/// kernel-ridge model; above, fitting takes seconds (it grows with the cube of the count), and
/// the neighbours alone predict.
pub const KERNEL_RIDGE_MAX_EXEMPLARS: usize = 2_000;

/// Below this many exemplars, [`Predictor::Auto`](super::Predictor::Auto) does not fit the model:
/// a regression over a handful of points (and its calibration) says little that the neighbours
/// do not.
pub const KERNEL_RIDGE_MIN_EXEMPLARS: usize = 50;

/// Where all-MiniLM-L6-v2's unrelated text begins (the router's default fallback threshold), the
/// scale [`RidgeSettings::default`]'s bandwidth was chosen on.
const MINILM_UNRELATED: f32 = 0.3;

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

/// Each priced model's quality, regressed on every exemplar; see the [module docs](self).
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
}

/// Centred kernel ridge over the exemplars at `rows`.
#[derive(Debug, Clone)]
struct Fit {
    rows: Vec<usize>,
    /// Mean of each training column of the kernel, and of the whole kernel (for centring).
    column_mean: Vec<f64>,
    grand_mean: f64,
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
        let raw: Vec<[f64; FEATURES]> = exemplars.iter().map(|e| prompt_features(&e.prompt)).collect();
        let (mean, scale) = standardisation(&raw);
        let flat: Vec<f32> = vectors.into_iter().flatten().collect();
        let mut model =
            QualityModel { settings, dim, vectors: flat, features: Vec::new(), mean, scale, fits: Vec::new(), models: BTreeMap::new() };
        model.features = raw.iter().map(|f| model.standardise(f)).collect();

        // What each exemplar says about each model, and which exemplars speak about which model.
        let mut by_model: BTreeMap<&str, Vec<(usize, f64)>> = BTreeMap::new();
        for (i, e) in exemplars.iter().enumerate() {
            for (m, q, _) in evidence(&e.grade, prices) {
                by_model.entry(m).or_default().push((i, q));
            }
        }
        // Models spoken about by the same exemplars share one kernel solve; models with the same
        // targets (a hand label gives every model of a tier the same) share one fit of them.
        let mut groups: BTreeMap<Vec<usize>, Vec<(&str, Vec<f64>)>> = BTreeMap::new();
        for (m, items) in by_model {
            let rows: Vec<usize> = items.iter().map(|x| x.0).collect();
            groups.entry(rows).or_default().push((m, items.into_iter().map(|x| x.1).collect()));
        }
        for (rows, members) in groups {
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
        Ok(model)
    }

    /// How many exemplars the model was fitted on.
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

    /// Each model's predicted quality in `[0, 1]` for a prompt and its vector. Models no exemplar
    /// speaks about are absent.
    pub fn predict(&self, prompt: &str, vector: &[f32]) -> BTreeMap<String, f64> {
        let z = self.standardise(&prompt_features(prompt));
        let row: Vec<f64> = (0..self.len()).map(|j| self.kernel(vector, self.vector(j), &z, &self.features[j])).collect();
        let scores: Vec<Vec<f64>> = self
            .fits
            .iter()
            .map(|fit| {
                let k: Vec<f64> = fit.rows.iter().map(|&j| row[j]).collect();
                let k_mean = k.iter().sum::<f64>() / k.len() as f64;
                let centred: Vec<f64> = k.iter().zip(&fit.column_mean).map(|(x, c)| x - k_mean - c + fit.grand_mean).collect();
                fit.targets
                    .iter()
                    .map(|t| match t {
                        Target::Constant(q) => *q,
                        Target::Fitted { intercept, dual, platt } => {
                            let s = intercept + centred.iter().zip(dual).map(|(a, b)| a * b).sum::<f64>();
                            sigmoid(platt.0 * s + platt.1)
                        }
                    })
                    .collect()
            })
            .collect();
        self.models.iter().map(|(m, &(f, t))| (m.clone(), scores[f][t].clamp(0.0, 1.0))).collect()
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

    /// Kernel ridge on the exemplars at `rows`, for each target column (one value per row).
    fn fit_rows(&self, rows: &[usize], targets: &[Vec<f64>]) -> Result<Fit> {
        let n = rows.len();
        let mut k = DMatrix::<f64>::zeros(n, n);
        for a in 0..n {
            for b in a..n {
                let v = self.kernel(self.vector(rows[a]), self.vector(rows[b]), &self.features[rows[a]], &self.features[rows[b]]);
                k[(a, b)] = v;
                k[(b, a)] = v;
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
        let chol = a.cholesky().ok_or_else(|| Error::Config("the kernel ridge system is not positive definite".into()))?;
        // diag((K_c + λI)⁻¹) gives every training exemplar's exact leave-one-out score.
        let inverse_diag: Vec<f64> = chol.inverse().diagonal().iter().copied().collect();
        let mut out = Vec::with_capacity(targets.len());
        for y in targets {
            let mean = y.iter().sum::<f64>() / n as f64;
            if y.iter().all(|v| (v - y[0]).abs() < 1e-12) || n < 3 {
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
            out.push(Target::Fitted { intercept: mean, dual: dual.iter().copied().collect(), platt: platt(&loo, y) });
        }
        Ok(Fit { rows: rows.to_vec(), column_mean, grand_mean, targets: out })
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Platt scaling: `(a, b)` minimising the cross-entropy of `sigmoid(a·s + b)` against targets in
/// `[0, 1]`, by Newton's method (two parameters; a tiny ridge keeps it defined when the scores
/// separate the targets perfectly).
fn platt(scores: &[f64], targets: &[f64]) -> (f64, f64) {
    let (mut a, mut b) = (1.0, 0.0);
    for _ in 0..100 {
        let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (0.0, 0.0, 1e-6, 0.0, 1e-6);
        for (s, t) in scores.iter().zip(targets) {
            let p = sigmoid(a * s + b);
            let w = p * (1.0 - p);
            ga += (p - t) * s;
            gb += p - t;
            haa += w * s * s;
            hab += w * s;
            hbb += w;
        }
        ga += 1e-6 * a;
        gb += 1e-6 * b;
        let det = haa * hbb - hab * hab;
        if !(det.is_finite() && det > 0.0) {
            break;
        }
        let (da, db) = ((hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det);
        a -= da;
        b -= db;
        if da.abs() + db.abs() < 1e-10 {
            break;
        }
    }
    (a, b)
}

fn standardisation(features: &[[f64; FEATURES]]) -> ([f64; FEATURES], [f64; FEATURES]) {
    let n = features.len().max(1) as f64;
    let mean: [f64; FEATURES] = std::array::from_fn(|i| features.iter().map(|f| f[i]).sum::<f64>() / n);
    let scale = std::array::from_fn(|i| (features.iter().map(|f| (f[i] - mean[i]).powi(2)).sum::<f64>() / n).sqrt() + 1e-9);
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
        let text = (0..12)
            .map(|i| {
                let q = if i < 6 { 1.0 } else { 0.0 };
                // `big` was measured on the first eight only.
                let big = if i < 8 { r#","big":{"quality":1.0,"output_tokens":5}"# } else { "" };
                format!(
                    r#"{{"id":"m{i}","prompt":"p{i}","category":"c","language":"en","results":{{"small":{{"quality":{q},"output_tokens":5}}{big}}}}}"#
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        let set = ExemplarSet::from_jsonl_str(&text, "m.jsonl").unwrap();
        let vectors: Vec<Vec<f32>> = (0..12).map(|i| unit(if i < 6 { 0.0 } else { 1.3 } + i as f64 * 0.01)).collect();
        let prices = PriceTable::from_toml_str(PRICES, "p.toml").unwrap();
        let model = QualityModel::fit(&set, vectors, &prices, RidgeSettings::default()).unwrap();
        assert_eq!(model.fits.len(), 2, "two sets of rows: all twelve, and the eight that measured `big`");
        let q = model.predict("p", &unit(0.01));
        assert!(q["small"] > 0.7, "{q:?}");
        assert_eq!(q["big"], 1.0);
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
        let (a, b) = platt(&scores, &targets);
        assert!(a > 10.0, "slope {a}");
        assert!(sigmoid(a * 0.41 + b) < 0.25 && sigmoid(a * 0.59 + b) > 0.75);
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
