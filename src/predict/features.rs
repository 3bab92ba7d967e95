//! A quality model with few parameters: per model, a logistic regression on the prompt's
//! features alone (its length, script, code and maths cues, digits, difficulty words, lines).
//!
//! The other predictors read a prompt through its embedding, which places it by topic; with a
//! few dozen measured exemplars they have hundreds of directions to fit and little to fit them
//! on. This one has ten numbers per model, so it generalises from few exemplars, and the features
//! carry what the embedding blurs: how long a question is and how many numbers it holds say much
//! of how hard it is. It shares nothing across models and reads no topic, so on a large set the
//! embedding-based predictors do better; cross-validation on the exemplars
//! ([`select`](super::select)) decides which to keep.
//!
//! For each model `m`: `P(good answer) = σ(a_m + w_m · z)`, with `z` the standardised
//! [`prompt_features`] plus the logarithm of the number of digits, fitted by Newton's method on the
//! measured qualities (a quality in (0, 1) counts as that share of a good answer) with an L2
//! penalty on `w_m` ([`FeatureSettings::l2`]).
//!
//! ```
//! use semroute::exemplar::ExemplarSet;
//! use semroute::predict::features::{FeatureModel, FeatureSettings};
//! use semroute::pricing::PriceTable;
//!
//! // "small" gets short questions right and long ones with numbers wrong; "big" gets both.
//! let lines: Vec<String> = (0..40)
//!     .map(|i| {
//!         let (prompt, small) = if i % 2 == 0 {
//!             (format!("Say hello number {i}"), 1)
//!         } else {
//!             (format!("A train leaves at 3:15 with 240 people, {i} get off at each of 17 stops and 12 get on; how many arrive at 9:40?"), 0)
//!         };
//!         format!(r#"{{"id":"e{i}","prompt":"{prompt}","category":"c","language":"en","results":{{"small":{{"quality":{small},"output_tokens":5}},"big":{{"quality":1,"output_tokens":9}}}}}}"#)
//!     })
//!     .collect();
//! let set = ExemplarSet::from_jsonl_str(&lines.join("\n"), "x.jsonl")?;
//! let prices = PriceTable::from_toml_str("[models.small]\nprovider = \"p\"\ninput_per_mtok = 1.0\noutput_per_mtok = 1.0\nsource = \"s\"\nas_of = \"2025\"\n[models.big]\nprovider = \"p\"\ninput_per_mtok = 9.0\noutput_per_mtok = 9.0\nsource = \"s\"\nas_of = \"2025\"\n", "p.toml")?;
//! let model = FeatureModel::fit(&set, &prices, FeatureSettings::default())?;
//! let easy = model.predict("Say hello again");
//! let hard = model.predict("A train leaves at 4:20 with 310 people, 9 get off at each of 13 stops and 25 get on; how many arrive at 10:05?");
//! assert!(easy["small"] > 0.8 && hard["small"] < 0.2, "{easy:?} {hard:?}");
//! assert!(hard["big"] > 0.8);
//! # Ok::<(), semroute::Error>(())
//! ```

use std::collections::BTreeMap;

use nalgebra::{DMatrix, DVector};

use super::{evidence, prompt_features, FEATURES};
use crate::error::{Error, Result};
use crate::exemplar::ExemplarSet;
use crate::pricing::PriceTable;

/// Inputs of the model: the [`prompt_features`] and the logarithm of the number of digits.
const INPUTS: usize = FEATURES + 1;

/// Settings of a [`FeatureModel`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct FeatureSettings {
    /// L2 penalty on each model's feature weights (the features are standardised; default 1).
    pub l2: f64,
}

impl Default for FeatureSettings {
    fn default() -> Self {
        FeatureSettings { l2: 1.0 }
    }
}

impl FeatureSettings {
    /// Settings with this L2 penalty (finite and non-negative; checked at fit).
    pub fn with_l2(l2: f64) -> Self {
        FeatureSettings { l2 }
    }
}

/// A fitted feature model (see the [module documentation](self)).
#[derive(Debug, Clone)]
pub struct FeatureModel {
    mean: [f64; INPUTS],
    scale: [f64; INPUTS],
    /// Per model: intercept, then one weight per input.
    weights: BTreeMap<String, [f64; INPUTS + 1]>,
}

/// The model's inputs for `prompt`, before standardisation.
fn inputs(prompt: &str) -> [f64; INPUTS] {
    let f = prompt_features(prompt);
    let mut x = [0.0; INPUTS];
    x[..FEATURES].copy_from_slice(&f);
    x[FEATURES] = (prompt.chars().filter(char::is_ascii_digit).count() as f64).ln_1p();
    x
}

impl FeatureModel {
    /// Fits one logistic regression per priced model on the exemplars that speak about it (a
    /// measured quality, or a hand label: 1 at or above its tier, 0 below).
    ///
    /// Errors on an invalid penalty, or when no priced model has an exemplar to fit on.
    pub fn fit(exemplars: &ExemplarSet, prices: &PriceTable, settings: FeatureSettings) -> Result<Self> {
        if !(settings.l2.is_finite() && settings.l2 >= 0.0) {
            return Err(Error::Config(format!("the feature model's l2 must be a non-negative number, got {}", settings.l2)));
        }
        let x: Vec<[f64; INPUTS]> = exemplars.iter().map(|e| inputs(&e.prompt)).collect();
        let n = x.len().max(1) as f64;
        let mut mean = [0.0; INPUTS];
        let mut scale = [1.0; INPUTS];
        for j in 0..INPUTS {
            mean[j] = x.iter().map(|r| r[j]).sum::<f64>() / n;
            let var = x.iter().map(|r| (r[j] - mean[j]).powi(2)).sum::<f64>() / n;
            // A constant input (no code in any exemplar, say) gets weight 0 from the penalty.
            scale[j] = if var > 1e-12 { var.sqrt() } else { 1.0 };
        }
        let z: Vec<[f64; INPUTS]> = x.iter().map(|r| std::array::from_fn(|j| (r[j] - mean[j]) / scale[j])).collect();
        let mut rows: BTreeMap<&str, Vec<(usize, f64)>> = BTreeMap::new();
        for (i, e) in exemplars.iter().enumerate() {
            for (model, q, _, _) in evidence(&e.grade, prices) {
                rows.entry(model).or_default().push((i, q.clamp(0.0, 1.0)));
            }
        }
        if rows.is_empty() {
            return Err(Error::Config("the feature model has no exemplar that speaks about a priced model".into()));
        }
        let weights = rows.into_iter().map(|(m, obs)| (m.to_string(), logistic(&z, &obs, settings.l2))).collect();
        Ok(FeatureModel { mean, scale, weights })
    }

    /// Each model's chance of a good answer to `prompt`.
    pub fn predict(&self, prompt: &str) -> BTreeMap<String, f64> {
        let x = inputs(prompt);
        let z: [f64; INPUTS] = std::array::from_fn(|j| (x[j] - self.mean[j]) / self.scale[j]);
        self.weights.iter().map(|(m, w)| (m.clone(), sigmoid(w[0] + w[1..].iter().zip(&z).map(|(a, b)| a * b).sum::<f64>()))).collect()
    }
}

fn sigmoid(t: f64) -> f64 {
    1.0 / (1.0 + (-t).exp())
}

/// Penalised logistic regression of the targets `obs` (row, target in [0, 1]) on the rows of `z`
/// by Newton's method: the intercept unpenalised, the weights with `l2`.
fn logistic(z: &[[f64; INPUTS]], obs: &[(usize, f64)], l2: f64) -> [f64; INPUTS + 1] {
    const D: usize = INPUTS + 1;
    let mean = obs.iter().map(|o| o.1).sum::<f64>() / obs.len() as f64;
    let clipped = mean.clamp(1e-3, 1.0 - 1e-3);
    let mut w = [0.0; D];
    w[0] = (clipped / (1.0 - clipped)).ln();
    let row = |i: usize| -> [f64; D] {
        let mut r = [1.0; D];
        r[1..].copy_from_slice(&z[i]);
        r
    };
    for _ in 0..50 {
        let mut g = DVector::<f64>::zeros(D);
        let mut h = DMatrix::<f64>::zeros(D, D);
        for &(i, y) in obs {
            let r = row(i);
            let p = sigmoid(r.iter().zip(&w).map(|(a, b)| a * b).sum());
            let s = (p * (1.0 - p)).max(1e-9);
            for a in 0..D {
                g[a] += (p - y) * r[a];
                for b in 0..D {
                    h[(a, b)] += s * r[a] * r[b];
                }
            }
        }
        // The penalty (and a touch on the intercept, so a model right or wrong on every
        // exemplar stays finite).
        for a in 0..D {
            let pen = if a == 0 { 1e-3 } else { l2.max(1e-6) };
            g[a] += pen * w[a];
            h[(a, a)] += pen;
        }
        let Some(chol) = h.cholesky() else { break };
        let step = chol.solve(&g);
        let mut largest: f64 = 0.0;
        for a in 0..D {
            w[a] -= step[a];
            largest = largest.max(step[a].abs());
        }
        if !w.iter().all(|v| v.is_finite()) {
            // Back to the intercept alone: each model's mean.
            w = [0.0; D];
            w[0] = (clipped / (1.0 - clipped)).ln();
            break;
        }
        if largest < 1e-8 {
            break;
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(rows: &[(&str, f64)]) -> ExemplarSet {
        let lines: Vec<String> = rows
            .iter()
            .enumerate()
            .map(|(i, (p, q))| {
                format!(
                    r#"{{"id":"e{i}","prompt":"{p}","category":"c","language":"en","results":{{"m":{{"quality":{q},"output_tokens":5}}}}}}"#
                )
            })
            .collect();
        ExemplarSet::from_jsonl_str(&lines.join("\n"), "t.jsonl").unwrap()
    }

    fn prices() -> PriceTable {
        PriceTable::from_toml_str(
            "[models.m]\nprovider = \"p\"\ninput_per_mtok = 1.0\noutput_per_mtok = 1.0\nsource = \"s\"\nas_of = \"2025\"\n",
            "p.toml",
        )
        .unwrap()
    }

    #[test]
    fn a_model_right_everywhere_stays_finite_and_sure() {
        let s = set(&[("a", 1.0), ("b b", 1.0), ("c 12", 1.0), ("d", 1.0)]);
        let m = FeatureModel::fit(&s, &prices(), FeatureSettings::default()).unwrap();
        let p = m.predict("anything 7");
        assert!(p["m"] > 0.9 && p["m"] <= 1.0, "{p:?}");
    }

    #[test]
    fn with_a_large_penalty_it_predicts_the_mean() {
        let s = set(&[("a", 1.0), ("b b b b b b", 0.0), ("c", 1.0), ("d d d d d d d", 0.0)]);
        let m = FeatureModel::fit(&s, &prices(), FeatureSettings::with_l2(1e9)).unwrap();
        for prompt in ["x", "y y y y y y y y y"] {
            assert!((m.predict(prompt)["m"] - 0.5).abs() < 1e-3);
        }
        let sharp = FeatureModel::fit(&s, &prices(), FeatureSettings::with_l2(0.1)).unwrap();
        assert!(sharp.predict("x")["m"] > 0.7 && sharp.predict("y y y y y y y y")["m"] < 0.3);
    }

    #[test]
    fn refuses_a_bad_penalty_and_an_empty_set() {
        let s = set(&[("a", 1.0)]);
        assert!(FeatureModel::fit(&s, &prices(), FeatureSettings::with_l2(-1.0)).is_err());
        assert!(FeatureModel::fit(&s, &prices(), FeatureSettings::with_l2(f64::NAN)).is_err());
        let other = PriceTable::from_toml_str(
            "[models.z]\nprovider = \"p\"\ninput_per_mtok = 1.0\noutput_per_mtok = 1.0\nsource = \"s\"\nas_of = \"2025\"\n",
            "p.toml",
        )
        .unwrap();
        assert!(FeatureModel::fit(&s, &other, FeatureSettings::default()).is_err());
    }
}
