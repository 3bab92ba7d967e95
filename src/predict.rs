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

use std::collections::BTreeMap;

use crate::exemplar::{ExemplarSet, Grade};
use crate::index::Hit;
use crate::pricing::PriceTable;

/// What the neighbours predict for one model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelPrediction {
    /// Predicted quality in `[0, 1]`.
    pub quality: f64,
    /// Predicted answer length in tokens.
    pub output_tokens: f64,
    /// Total neighbour weight behind the prediction (in `(0, 1]`; lower means thinner evidence).
    pub support: f64,
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
    let best = hits.iter().map(|h| h.similarity as f64).fold(f64::NEG_INFINITY, f64::max);
    let raw: Vec<f64> = hits.iter().map(|h| ((h.similarity as f64 - best) / temperature).exp()).collect();
    let sum: f64 = raw.iter().sum();
    raw.into_iter().map(|w| if sum > 0.0 { w / sum } else { 0.0 }).collect()
}

/// Predicts each priced model's quality and answer length from `hits` into `exemplars`.
pub fn predict(exemplars: &ExemplarSet, hits: &[Hit], prices: &PriceTable, temperature: f64) -> Predictions {
    let weights = neighbour_weights(hits, temperature);
    // model -> (sum w*q, sum w*tokens, sum w)
    let mut acc: BTreeMap<&str, (f64, f64, f64)> = BTreeMap::new();
    for (hit, &w) in hits.iter().zip(&weights) {
        match &exemplars.get(hit.position).grade {
            Grade::Measured { results } => {
                for (model, r) in results {
                    if prices.get(model).is_some() {
                        let e = acc.entry(model.as_str()).or_default();
                        e.0 += w * r.quality;
                        e.1 += w * r.output_tokens as f64;
                        e.2 += w;
                    }
                }
            }
            Grade::Labelled(label) => {
                for (name, price) in prices.iter() {
                    let q = if price.tier >= label.tier { 1.0 } else { 0.0 };
                    let e = acc.entry(name).or_default();
                    e.0 += w * q;
                    e.1 += w * label.output_tokens as f64;
                    e.2 += w;
                }
            }
        }
    }
    let per_model = acc
        .into_iter()
        .filter(|(_, (_, _, s))| *s > 0.0)
        .map(|(m, (q, t, s))| (m.to_string(), ModelPrediction { quality: q / s, output_tokens: t / s, support: s }))
        .collect();
    Predictions { per_model, weights }
}
