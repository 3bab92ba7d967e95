//! How [`Predictor::Auto`] chooses for a set of measured exemplars: by
//! cross-validation on the exemplars themselves.
//!
//! The set is cut into folds; each candidate predictor is fitted on all folds but one and
//! predicts every model's quality on the exemplars of the remaining fold, which it has not seen.
//! The candidate whose out-of-fold predictions are closest to the measured qualities (Brier
//! score: the mean squared difference over every measured exemplar × model pair) wins; on a tie
//! the earlier of blend, neighbours, kernel ridge, low rank, ensemble, features, and last their
//! stack ([`Predictor::Stacked`]): the mix of the neighbours', kernel ridge's, low rank's and the
//! feature model's out-of-fold predictions with the lowest Brier score, its weights found on a
//! grid of twentieths. Each single predictor is a corner of that grid, so the stack scores at
//! least as well as each of them on these predictions (its weights are fitted on them: a small
//! optimism, three numbers fitted on every pair). Nothing but the exemplars is read,
//! so a benchmark that builds a router on its train split chooses on the train split alone.
//!
//! ```
//! use semroute::predict::select::{cross_validate, Candidates};
//! # use semroute::exemplar::ExemplarSet;
//! # use semroute::pricing::PriceTable;
//! # use semroute::predict::Prior;
//! // Two kinds of prompt: model "a" is right on the first kind only, "b" on both.
//! let lines: Vec<String> = (0..60)
//!     .map(|i| format!(r#"{{"id":"e{i}","prompt":"p{i}","category":"c","language":"en","results":{{"a":{{"quality":{},"output_tokens":5}},"b":{{"quality":1,"output_tokens":5}}}}}}"#, (i % 2 == 0) as u8))
//!     .collect();
//! let set = ExemplarSet::from_jsonl_str(&lines.join("\n"), "x.jsonl")?;
//! let vectors: Vec<Vec<f32>> = (0..60).map(|i| if i % 2 == 0 { vec![1.0, 0.0] } else { vec![0.0, 1.0] }).collect();
//! let prices = PriceTable::from_toml_str("[models.a]\nprovider = \"p\"\ninput_per_mtok = 1.0\noutput_per_mtok = 1.0\nsource = \"s\"\nas_of = \"2025\"\n[models.b]\nprovider = \"p\"\ninput_per_mtok = 2.0\noutput_per_mtok = 2.0\nsource = \"s\"\nas_of = \"2025\"\n", "p.toml")?;
//! let scores = cross_validate(&set, &vectors, &prices, &Candidates { k: 8, temperature: 0.05, prior: Prior::none(), ridge: Default::default(), low_rank: Default::default() }, 5)?;
//! assert!(scores.best().1 < 0.05); // the kinds are told apart out of fold
//! # Ok::<(), semroute::Error>(())
//! ```

use super::{
    predict_from, FeatureModel, FeatureSettings, Fitted, LowRankSettings, Predictor, Prior, QualityModel, RidgeSettings, StackWeights,
};
use crate::error::{Error, Result};
use crate::exemplar::{ExemplarSet, Grade};
use crate::index::{ExactIndex, NeighbourIndex};
use crate::pricing::PriceTable;
use std::collections::BTreeMap;

/// What the candidates share: the router's neighbour settings and each model's settings.
#[derive(Debug, Clone)]
pub struct Candidates {
    /// Neighbours consulted.
    pub k: usize,
    /// Softmax temperature of neighbour weights.
    pub temperature: f64,
    /// Shrinkage towards each model's mean (recomputed on each fold's exemplars).
    pub prior: Prior,
    /// Kernel-ridge settings (for the kernel-ridge and blend candidates).
    pub ridge: RidgeSettings,
    /// Low-rank settings.
    pub low_rank: LowRankSettings,
}

/// Each candidate's out-of-fold Brier score, in the order tried.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Scores {
    /// (candidate, Brier score).
    pub scores: Vec<(Predictor, f64)>,
}

impl Scores {
    /// The candidate with the lowest Brier score (the earlier on ties).
    pub fn best(&self) -> (Predictor, f64) {
        self.scores.iter().copied().fold((self.scores[0].0, f64::INFINITY), |b, s| if s.1 < b.1 - 1e-12 { s } else { b })
    }
}

/// Cross-validates blend, neighbours, kernel ridge, low rank, their ensemble, the feature model and
/// their stack on `exemplars` (every one measured) with their unit `vectors`, over `folds` folds (position modulo `folds`).
pub fn cross_validate(exemplars: &ExemplarSet, vectors: &[Vec<f32>], prices: &PriceTable, c: &Candidates, folds: usize) -> Result<Scores> {
    let n = exemplars.len();
    if vectors.len() != n || folds < 2 || n < 2 * folds {
        return Err(Error::Config(format!("cross-validation needs at least {} exemplars with a vector each, got {n}", 2 * folds)));
    }
    let ridge = Predictor::Blend(c.ridge);
    let candidates = [
        ridge,
        Predictor::Neighbours,
        Predictor::KernelRidge(c.ridge),
        Predictor::LowRank(c.low_rank),
        Predictor::Ensemble(c.ridge, c.low_rank),
        Predictor::Features(FeatureSettings::default()),
    ];
    // (sum of squared errors, pairs) per candidate.
    let mut acc = [(0.0f64, 0usize); 6];
    // For the stack, each pair's out-of-fold prediction by the neighbours, kernel ridge, low rank
    // and the feature model (candidates 1, 2, 3 and 5), and its measured quality.
    const STACKED: [usize; 4] = [1, 2, 3, 5];
    let mut pairs: Vec<([f64; 4], f64)> = Vec::new();
    for fold in 0..folds {
        let (inside, held): (Vec<usize>, Vec<usize>) = (0..n).partition(|i| i % folds != fold);
        let part = ExemplarSet::from_exemplars(inside.iter().map(|&i| exemplars.get(i).clone()).collect())?;
        let part_vectors: Vec<Vec<f32>> = inside.iter().map(|&i| vectors[i].clone()).collect();
        let index = ExactIndex::build(part_vectors.clone())?;
        let prior = if c.prior.strength() > 0.0 { Prior::from_exemplars(&part, prices, c.prior.strength()) } else { Prior::none() };
        // A model that cannot be fitted on a fold (too few exemplars speak about it, say) leaves
        // that candidate to the neighbours there, as the router does.
        let ridge_model = QualityModel::fit(&part, part_vectors.clone(), prices, c.ridge).ok().map(std::sync::Arc::new);
        let fitted_low = Fitted::low_rank(&part, &part_vectors, prices, c.low_rank).ok();
        let fitted_both = ridge_model.clone().zip(fitted_low.clone()).map(|b| Fitted::Ensemble(Box::new(b)));
        let fitted_ridge = ridge_model.map(Fitted::Ridge);
        let fitted_features = FeatureModel::fit(&part, prices, FeatureSettings::default()).ok().map(Fitted::Features);
        for &i in &held {
            let ex = exemplars.get(i);
            let Grade::Measured { results } = &ex.grade else {
                return Err(Error::Config("cross-validation of predictors needs measured exemplars".into()));
            };
            let hits = index.search(&vectors[i], c.k);
            let grades: Vec<(&Grade, f32)> = hits.iter().map(|h| (&part.get(h.position).grade, h.similarity)).collect();
            let neighbours = predict_from(&grades, prices, c.temperature, &prior);
            // Each fitted model scores the prompt once, for every candidate that uses it, and
            // without the kernel model's standard error (a triangular solve per prompt that the
            // Brier score never reads; the qualities are the same either way).
            let ridge_q = fitted_ridge.as_ref().map(|m| m.predict(&ex.prompt, &vectors[i]));
            let low_q = fitted_low.as_ref().map(|m| m.predict(&ex.prompt, &vectors[i]));
            let plain = |q: BTreeMap<String, f64>| q.into_iter().map(|(m, q)| (m, (q, None))).collect();
            let mut by_slot = Vec::with_capacity(candidates.len());
            for (slot, p) in candidates.iter().enumerate() {
                let mut pred = neighbours.clone();
                let scored = match p {
                    Predictor::Neighbours => None,
                    Predictor::LowRank(_) => fitted_low.as_ref().zip(low_q.clone()),
                    Predictor::Ensemble(..) => {
                        fitted_both.as_ref().zip(ridge_q.clone().zip(low_q.clone()).map(|(r, l)| Fitted::ensemble_mean(r, l)))
                    }
                    Predictor::Features(_) => fitted_features.as_ref().map(|m| (m, m.predict(&ex.prompt, &vectors[i]))),
                    _ => fitted_ridge.as_ref().zip(ridge_q.clone()),
                };
                if let Some((m, q)) = scored {
                    p.apply_scores(m, plain(q), &grades, prices, &mut pred);
                }
                for (model, r) in results.iter().filter(|(m, _)| prices.get(m).is_some()) {
                    if let Some(q) = pred.per_model.get(model) {
                        acc[slot].0 += (q.quality.clamp(0.0, 1.0) - r.quality).powi(2);
                        acc[slot].1 += 1;
                    }
                }
                by_slot.push(pred);
            }
            for (model, r) in results.iter().filter(|(m, _)| prices.get(m).is_some()) {
                let q: Option<Vec<f64>> =
                    STACKED.iter().map(|&slot| by_slot[slot].per_model.get(model).map(|p| p.quality.clamp(0.0, 1.0))).collect();
                if let Some(q) = q {
                    pairs.push(([q[0], q[1], q[2], q[3]], r.quality));
                }
            }
        }
    }
    let mut scores: Vec<(Predictor, f64)> =
        candidates.iter().zip(acc).map(|(&p, (sq, k))| (p, if k > 0 { sq / k as f64 } else { f64::INFINITY })).collect();
    if let Some((w, brier)) = stack_weights(&pairs) {
        scores.push((Predictor::Stacked(c.ridge, c.low_rank, w), brier));
    }
    Ok(Scores { scores })
}

/// Steps of the grid of stacking weights: every mix in twentieths.
const STACK_STEPS: usize = 20;

/// The mix of the four predictions (weights in twentieths, summing to 1) with the lowest Brier
/// score over `pairs` (each pair's four out-of-fold predictions and its measured quality), and
/// that score; `None` without pairs. A grid, not an optimiser: 1,771 mixes over the pairs'
/// sufficient statistics (the 4×4 cross-products), so it costs nothing next to the fits; ties
/// go to the first mix tried, from the neighbours alone down.
fn stack_weights(pairs: &[([f64; 4], f64)]) -> Option<(StackWeights, f64)> {
    if pairs.is_empty() {
        return None;
    }
    // Σ(w·q − y)² = wᵀ(ΣqqT)w − 2wᵀ(Σqy) + Σy².
    let (mut qq, mut qy, mut yy) = ([[0.0f64; 4]; 4], [0.0f64; 4], 0.0);
    for (q, y) in pairs {
        for a in 0..4 {
            qy[a] += q[a] * y;
            for b in 0..4 {
                qq[a][b] += q[a] * q[b];
            }
        }
        yy += y * y;
    }
    let n = pairs.len() as f64;
    let mut best: Option<([f64; 4], f64)> = None;
    // From the neighbours alone down, so that ties keep the simpler mix.
    for i in (0..=STACK_STEPS).rev() {
        for j in (0..=STACK_STEPS - i).rev() {
            for k in (0..=STACK_STEPS - i - j).rev() {
                let l = STACK_STEPS - i - j - k;
                let w = [i, j, k, l].map(|x| x as f64 / STACK_STEPS as f64);
                let mut sse = yy;
                for a in 0..4 {
                    sse -= 2.0 * w[a] * qy[a];
                    for b in 0..4 {
                        sse += w[a] * w[b] * qq[a][b];
                    }
                }
                if best.as_ref().is_none_or(|(_, b)| sse < *b - 1e-12) {
                    best = Some((w, sse));
                }
            }
        }
    }
    best.map(|(w, sse)| (StackWeights { neighbours: w[0], kernel_ridge: w[1], low_rank: w[2], features: w[3] }, (sse / n).max(0.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stack_weighs_predictions_whose_errors_cancel_equally() {
        // The kernel model errs 0.2 high, the low-rank one 0.2 low, the neighbours and the
        // feature model say 0.5 whatever the truth: half and half of the first two is exact.
        let pairs: Vec<([f64; 4], f64)> =
            (0..40).map(|i| if i % 2 == 0 { 0.3 } else { 0.7 }).map(|y| ([0.5, y + 0.2, y - 0.2, 0.5], y)).collect();
        let (w, brier) = stack_weights(&pairs).unwrap();
        assert_eq!(w, StackWeights { neighbours: 0.0, kernel_ridge: 0.5, low_rank: 0.5, features: 0.0 });
        assert!(brier < 1e-12, "{brier}");
        // One exact predictor takes all the weight; its Brier score is the stack's.
        let pairs: Vec<([f64; 4], f64)> = (0..40).map(|i| f64::from(i % 2)).map(|y| ([0.5, 0.5, 0.5, y], y)).collect();
        let (w, brier) = stack_weights(&pairs).unwrap();
        assert_eq!((w.features, brier), (1.0, 0.0));
        // Constant predictions 0.5 against outcomes 0 and 1: every mix scores 0.25, and the
        // first (the neighbours alone) is kept.
        let pairs: Vec<([f64; 4], f64)> = (0..40).map(|i| ([0.5; 4], f64::from(i % 2))).collect();
        let (w, brier) = stack_weights(&pairs).unwrap();
        assert_eq!(w.neighbours, 1.0);
        assert!((brier - 0.25).abs() < 1e-12);
        assert!(stack_weights(&[]).is_none());
    }
}
