//! Whether the exemplars know anything like a prompt: the router's fallback rule.
//!
//! A fixed similarity threshold means different things on different embedders (all-MiniLM-L6-v2
//! puts unrelated sentences near 0.1, multilingual-e5-small near 0.8) and different things in
//! dense and sparse parts of one exemplar set. So by default the rule is derived from the set
//! itself, as a local density ratio (the idea of the local outlier factor): a prompt's
//! *unfamiliarity* is its mean distance (1 − cosine) to its [`NEIGHBOURS`] nearest exemplars,
//! divided by those exemplars' own mean distance to theirs (or by the set's median such distance,
//! where the neighbourhood is denser than the median: a clump of near-duplicates, such as
//! feedback on one recurring prompt, does not make its surroundings look unknown). About 1 means
//! "as close to the set as the set's own prompts are to each other"; the limit is the value that
//! only a small share of the exemplars themselves exceed ([`Familiarity::derive`]). An exemplar's translations
//! (exemplars sharing its `pair`) do not count as its neighbours, since a new prompt has no twin.
//!
//! ```
//! use semroute::exemplar::ExemplarSet;
//! use semroute::familiar::Familiarity;
//! use semroute::index::{Hit, HnswIndex, LiveIndex, NeighbourIndex};
//!
//! // 60 exemplars evenly spread on a circle.
//! let lines: Vec<String> = (0..60)
//!     .map(|i| format!(r#"{{"id":"e{i}","prompt":"p{i}","category":"c","language":"en","label":{{"tier":"cheap","reason":"r","output_tokens":5}}}}"#))
//!     .collect();
//! let set = ExemplarSet::from_jsonl_str(&lines.join("\n"), "x.jsonl")?;
//! let at = |deg: f32| { let a = deg.to_radians(); vec![a.cos(), a.sin(), 0.0] };
//! let vectors: Vec<Vec<f32>> = (0..60).map(|i| at(i as f32 * 6.0)).collect();
//! let index = LiveIndex::new(HnswIndex::build(&vectors)?);
//! let f = Familiarity::derive(&index, &set, 0.02).expect("enough exemplars");
//!
//! // A prompt between two exemplars is familiar; one off the circle, far from all, is not.
//! let judge = |v: &[f32]| f.judge(&index.search(v, 8).iter().map(|h: &Hit| (Some(h.position), h.similarity)).collect::<Vec<_>>());
//! assert!(judge(&at(9.0)).unfamiliar.is_none());
//! let off = [0.6f32, 0.0, 0.8];
//! assert!(judge(&off).unfamiliar.is_some());
//! # Ok::<(), semroute::Error>(())
//! ```

use std::sync::Arc;

use crate::exemplar::ExemplarSet;
use crate::index::{LiveIndex, NeighbourIndex};

/// How many nearest exemplars the density ratio averages over.
pub const NEIGHBOURS: usize = 5;

/// Exemplar sets larger than this use the similarity rule (a threshold derived from a sample),
/// since the density rule searches once per exemplar at build.
pub const DENSITY_MAX_EXEMPLARS: usize = 20_000;

/// Sets smaller than this cannot derive a rule (the embedder's suggestion, else 0.3, is used).
pub const MIN_EXEMPLARS: usize = 20;

/// The fallback rule in force.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Familiarity {
    /// A prompt whose nearest exemplar is less similar than this is unfamiliar (set by hand, or
    /// derived from a sample of a very large set, or with a shared store).
    Similarity(f32),
    /// A prompt whose unfamiliarity (see the module docs) is above `limit` is unfamiliar.
    Density {
        /// The largest unfamiliarity still trusted.
        limit: f64,
        /// Each exemplar's mean distance to its nearest others, by position (exemplars added
        /// later are appended as they come).
        spread: Arc<Vec<f32>>,
        /// The median of the exemplars' spreads: a neighbourhood denser than this counts as this
        /// dense, so that a prompt near a clump of near-duplicates is not called unfamiliar for
        /// being a little farther from them than they are from each other.
        typical: f32,
    },
}

/// What [`Familiarity::judge`] found for one prompt.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Judgement {
    /// The prompt's unfamiliarity under the density rule (`None` under the similarity rule).
    pub unfamiliarity: Option<f64>,
    /// Why the exemplars are not trusted for this prompt, if they are not.
    pub unfamiliar: Option<String>,
}

impl Familiarity {
    /// The density rule for `exemplars` indexed (in the same order) by `index`: every
    /// exemplar's spread, and the unfamiliarity that only `share` of the exemplars exceed (at
    /// least 1). For
    /// sets over [`DENSITY_MAX_EXEMPLARS`], the similarity below which `share` of a sample's
    /// nearest-other similarities fall. `None` below [`MIN_EXEMPLARS`].
    pub fn derive(index: &LiveIndex, exemplars: &ExemplarSet, share: f64) -> Option<Familiarity> {
        let n = exemplars.len().min(index.len());
        if n < MIN_EXEMPLARS {
            return None;
        }
        let vectors: Vec<&[f32]> = index.vectors().collect();
        let share = share.clamp(0.0, 1.0);
        if n > DENSITY_MAX_EXEMPLARS {
            let step = n.div_ceil(2000);
            let mut nearest: Vec<f32> =
                (0..n).step_by(step).filter_map(|i| others(index, exemplars, i, vectors[i], 1).first().map(|h| h.1)).collect();
            nearest.sort_by(f32::total_cmp);
            return (!nearest.is_empty()).then(|| Familiarity::Similarity(quantile(&nearest, share)));
        }
        let near: Vec<Vec<(usize, f32)>> = (0..n).map(|i| others(index, exemplars, i, vectors[i], NEIGHBOURS)).collect();
        let spread: Vec<f32> = near.iter().map(|h| mean_distance(h) as f32).collect();
        let typical = {
            let mut s: Vec<f32> = near.iter().zip(&spread).filter(|(h, _)| !h.is_empty()).map(|(_, &s)| s).collect();
            s.sort_by(f32::total_cmp);
            if s.is_empty() {
                return None;
            }
            quantile(&s, 0.5)
        };
        let mut ratios: Vec<f32> = near
            .iter()
            .enumerate()
            .filter(|(_, h)| !h.is_empty())
            .map(|(i, h)| ratio(f64::from(spread[i]), h.iter().map(|&(p, _)| spread[p]), typical) as f32)
            .collect();
        if ratios.len() < MIN_EXEMPLARS {
            return None;
        }
        ratios.sort_by(f32::total_cmp);
        // Never below 1: a prompt as close to its neighbours as they are to theirs is familiar
        // (a set of near-duplicates would otherwise put the limit at 0).
        let limit = f64::from(quantile(&ratios, 1.0 - share)).max(1.0);
        Some(Familiarity::Density { limit, spread: Arc::new(spread), typical })
    }

    /// This rule after exemplars were added at positions `from..` of `index` (their spreads are
    /// computed; the others' and the limit stay until the next build or reload).
    pub fn extended(&self, index: &LiveIndex, exemplars: &ExemplarSet, from: usize) -> Familiarity {
        match self {
            Familiarity::Similarity(_) => self.clone(),
            Familiarity::Density { limit, spread, typical } => {
                let vectors: Vec<&[f32]> = index.vectors().collect();
                let mut all = Vec::clone(spread);
                all.truncate(from);
                for i in all.len()..exemplars.len().min(vectors.len()) {
                    all.push(mean_distance(&others(index, exemplars, i, vectors[i], NEIGHBOURS)) as f32);
                }
                Familiarity::Density { limit: *limit, spread: Arc::new(all), typical: *typical }
            }
        }
    }

    /// Judges a prompt from its nearest exemplars, most similar first: (position in the
    /// in-process index, if any; similarity).
    pub fn judge(&self, hits: &[(Option<usize>, f32)]) -> Judgement {
        let Some(&(_, top)) = hits.first() else {
            return Judgement { unfamiliarity: None, unfamiliar: Some("there are no exemplars to compare with".into()) };
        };
        match self {
            Familiarity::Similarity(min) => Judgement {
                unfamiliarity: None,
                unfamiliar: (top < *min).then(|| format!("the nearest exemplar is only {top:.3} similar (below {min:.3})")),
            },
            Familiarity::Density { limit, spread, typical } => {
                let used: Vec<(usize, f32)> = hits.iter().take(NEIGHBOURS).filter_map(|&(p, s)| p.map(|p| (p, s))).collect();
                let known: Vec<f32> = used.iter().filter_map(|&(p, _)| spread.get(p).copied()).collect();
                if known.is_empty() {
                    return Judgement { unfamiliarity: None, unfamiliar: None };
                }
                let r = ratio(mean_distance(&used), known.into_iter(), *typical);
                Judgement {
                    unfamiliarity: Some(r),
                    unfamiliar: (r > *limit).then(|| {
                        format!(
                            "nothing like it is known: it is {r:.2} times as far from its {} nearest exemplars as they are from theirs (the set's own limit is {limit:.2}; nearest similarity {top:.3})",
                            used.len()
                        )
                    }),
                }
            }
        }
    }

    /// The limit of the density rule, if it is the one in force.
    pub fn limit(&self) -> Option<f64> {
        match self {
            Familiarity::Density { limit, .. } => Some(*limit),
            Familiarity::Similarity(_) => None,
        }
    }

    /// The threshold of the similarity rule, if it is the one in force.
    pub fn min_similarity(&self) -> Option<f32> {
        match self {
            Familiarity::Similarity(s) => Some(*s),
            Familiarity::Density { .. } => None,
        }
    }
}

/// Up to `k` nearest exemplars of exemplar `i` (vector `v`), skipping itself and its `pair`.
fn others(index: &LiveIndex, exemplars: &ExemplarSet, i: usize, v: &[f32], k: usize) -> Vec<(usize, f32)> {
    let me = exemplars.get(i);
    index
        .search(v, k + 8)
        .into_iter()
        .filter(|h| h.position != i && (me.pair.is_none() || exemplars.get(h.position).pair != me.pair))
        .take(k)
        .map(|h| (h.position, h.similarity))
        .collect()
}

fn mean_distance(hits: &[(usize, f32)]) -> f64 {
    if hits.is_empty() {
        return 0.0;
    }
    hits.iter().map(|&(_, s)| 1.0 - f64::from(s)).sum::<f64>() / hits.len() as f64
}

/// `distance` over the mean of `spreads`, or over `typical` where the neighbourhood is denser
/// than that (and kept off zero).
fn ratio(distance: f64, spreads: impl Iterator<Item = f32>, typical: f32) -> f64 {
    let (sum, n) = spreads.fold((0.0, 0usize), |(s, n), x| (s + f64::from(x), n + 1));
    distance.max(0.0) / (sum / n.max(1) as f64).max(f64::from(typical)).max(1e-3)
}

fn quantile(sorted: &[f32], q: f64) -> f32 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}
