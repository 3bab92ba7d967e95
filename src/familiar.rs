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
//! Some embedders put every text in one narrow cone: with multilingual-e5-small two unrelated
//! built-in exemplars are 0.82 similar on average, and the set's mean vector has a squared length
//! of 0.82 (all-MiniLM-L6-v2: 0.17). Distances then measure little but that shared direction. Where
//! the set's mean vector holds more than half of an average vector's squared length
//! ([`CENTRE_ABOVE`]), the rule measures distances after removing it ([`Centre`]): the cosine
//! of `v − mean` and `e − mean`, computed from the index's own similarities, with the nearest
//! exemplars re-ranked by it.
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
//! let judge = |v: &[f32]| f.judge(&index.search(v, 8).iter().map(|h: &Hit| (Some(h.position), h.similarity)).collect::<Vec<_>>(), v);
//! assert!(judge(&at(9.0)).unfamiliar.is_none());
//! let off = [0.6f32, 0.0, 0.8];
//! assert!(judge(&off).unfamiliar.is_some());
//! # Ok::<(), semroute::Error>(())
//! ```

use std::sync::Arc;

use crate::exemplar::ExemplarSet;
use crate::index::{dot, LiveIndex, NeighbourIndex};

/// How many nearest exemplars the density ratio averages over.
pub const NEIGHBOURS: usize = 5;

/// Exemplar sets larger than this use the similarity rule (a threshold derived from a sample),
/// since the density rule searches once per exemplar at build.
pub const DENSITY_MAX_EXEMPLARS: usize = 20_000;

/// Sets smaller than this cannot derive a rule (the embedder's suggestion, else 0.3, is used).
pub const MIN_EXEMPLARS: usize = 20;

/// The density rule removes the set's mean direction ([`Centre`]) when the mean vector's squared
/// length is above this: when more than half of an average vector is the direction every text
/// shares.
pub const CENTRE_ABOVE: f32 = 0.5;

/// The exemplar set's mean vector, and each exemplar's projection on it and squared length: what
/// turns a similarity from the index into the similarity of the two vectors with the mean removed.
#[derive(Debug, Clone)]
pub struct Centre {
    mean: Arc<Vec<f32>>,
    norm2: f32,
    /// (projection on the mean, squared length) per exemplar, by position.
    exemplars: Arc<Vec<(f32, f32)>>,
}

impl Centre {
    /// The centre of `vectors`, if their mean's squared length is above [`CENTRE_ABOVE`].
    fn of(vectors: &[&[f32]]) -> Option<Centre> {
        let (n, dim) = (vectors.len(), vectors.first()?.len());
        let mut mean = vec![0.0f32; dim];
        for v in vectors {
            for (m, x) in mean.iter_mut().zip(v.iter()) {
                *m += x / n as f32;
            }
        }
        let norm2 = dot(&mean, &mean);
        if norm2.is_nan() || norm2 <= CENTRE_ABOVE {
            return None;
        }
        let exemplars = vectors.iter().map(|v| (dot(v, &mean), dot(v, v))).collect();
        Some(Centre { mean: Arc::new(mean), norm2, exemplars: Arc::new(exemplars) })
    }

    /// The squared length of the mean vector removed.
    pub fn norm2(&self) -> f32 {
        self.norm2
    }

    /// (projection on the mean, squared length) of a vector.
    fn project(&self, v: &[f32]) -> (f32, f32) {
        (dot(v, &self.mean), dot(v, v))
    }

    /// The similarity, with the mean removed, of a vector projected as `q` and the exemplar at
    /// `position`, whose similarity (dot product) to it is `s`.
    fn similarity(&self, s: f32, q: (f32, f32), position: usize) -> Option<f32> {
        let &(b, ee) = self.exemplars.get(position)?;
        let (a, qq, m) = (f64::from(q.0), f64::from(q.1), f64::from(self.norm2));
        let (b, ee) = (f64::from(b), f64::from(ee));
        let den = ((qq - 2.0 * a + m).max(1e-9) * (ee - 2.0 * b + m).max(1e-9)).sqrt();
        Some(((f64::from(s) - a - b + m) / den).clamp(-1.0, 1.0) as f32)
    }

    /// `hits` (position, similarity) with their similarities centred, most similar first.
    fn rerank(&self, q: (f32, f32), hits: impl IntoIterator<Item = (usize, f32)>) -> Vec<(usize, f32)> {
        let mut out: Vec<(usize, f32)> = hits.into_iter().filter_map(|(p, s)| Some((p, self.similarity(s, q, p)?))).collect();
        out.sort_by(|x, y| y.1.total_cmp(&x.1));
        out
    }

    /// This centre with the exemplars at positions `from..` of `vectors` projected (the mean
    /// stays that of the set it was derived from).
    fn extended(&self, vectors: &[&[f32]], from: usize) -> Centre {
        let mut all = Vec::clone(&self.exemplars);
        all.truncate(from);
        for v in vectors.iter().skip(all.len()) {
            all.push(self.project(v));
        }
        Centre { mean: self.mean.clone(), norm2: self.norm2, exemplars: Arc::new(all) }
    }
}

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
        /// The set's mean direction, removed before distances are measured, where it dominates.
        centre: Option<Centre>,
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
        Self::derive_centred(index, exemplars, share, true)
    }

    /// [`derive`](Familiarity::derive), with the mean direction removed only if `centre` allows
    /// it (the tests compare the two rules).
    fn derive_centred(index: &LiveIndex, exemplars: &ExemplarSet, share: f64, centre: bool) -> Option<Familiarity> {
        let n = exemplars.len().min(index.len());
        if n < MIN_EXEMPLARS {
            return None;
        }
        let vectors: Vec<&[f32]> = index.vectors().collect();
        let share = share.clamp(0.0, 1.0);
        if n > DENSITY_MAX_EXEMPLARS {
            let step = n.div_ceil(2000);
            let mut nearest: Vec<f32> =
                (0..n).step_by(step).filter_map(|i| others(index, exemplars, i, vectors[i], 1, None).first().map(|h| h.1)).collect();
            nearest.sort_by(f32::total_cmp);
            return (!nearest.is_empty()).then(|| Familiarity::Similarity(quantile(&nearest, share)));
        }
        let centre = if centre { Centre::of(&vectors[..n]) } else { None };
        let near: Vec<Vec<(usize, f32)>> = (0..n).map(|i| others(index, exemplars, i, vectors[i], NEIGHBOURS, centre.as_ref())).collect();
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
        Some(Familiarity::Density { limit, spread: Arc::new(spread), typical, centre })
    }

    /// This rule after exemplars were added at positions `from..` of `index` (their spreads are
    /// computed; the others' and the limit stay until the next build or reload).
    pub fn extended(&self, index: &LiveIndex, exemplars: &ExemplarSet, from: usize) -> Familiarity {
        match self {
            Familiarity::Similarity(_) => self.clone(),
            Familiarity::Density { limit, spread, typical, centre } => {
                let vectors: Vec<&[f32]> = index.vectors().collect();
                let centre = centre.as_ref().map(|c| c.extended(&vectors, from));
                let mut all = Vec::clone(spread);
                all.truncate(from);
                let end = exemplars.len().min(vectors.len());
                for (i, &v) in vectors.iter().enumerate().take(end).skip(all.len()) {
                    all.push(mean_distance(&others(index, exemplars, i, v, NEIGHBOURS, centre.as_ref())) as f32);
                }
                Familiarity::Density { limit: *limit, spread: Arc::new(all), typical: *typical, centre }
            }
        }
    }

    /// Judges a prompt (its vector `query`) from its nearest exemplars, most similar first:
    /// (position in the in-process index, if any; similarity).
    pub fn judge(&self, hits: &[(Option<usize>, f32)], query: &[f32]) -> Judgement {
        let Some(&(_, top)) = hits.first() else {
            return Judgement { unfamiliarity: None, unfamiliar: Some("there are no exemplars to compare with".into()) };
        };
        match self {
            Familiarity::Similarity(min) => Judgement {
                unfamiliarity: None,
                unfamiliar: (top < *min).then(|| format!("the nearest exemplar is only {top:.3} similar (below {min:.3})")),
            },
            Familiarity::Density { limit, spread, typical, centre } => {
                let local = hits.iter().filter_map(|&(p, s)| p.map(|p| (p, s)));
                let used = nearest(centre.as_ref(), query, local, NEIGHBOURS);
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

    /// The mean direction the density rule removes, if it does (see [`Centre`]).
    pub fn centre(&self) -> Option<&Centre> {
        match self {
            Familiarity::Density { centre, .. } => centre.as_ref(),
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

/// Up to `k` nearest exemplars of exemplar `i` (vector `v`), skipping itself and its `pair`;
/// with a centre, re-ranked by the centred similarity.
fn others(index: &LiveIndex, exemplars: &ExemplarSet, i: usize, v: &[f32], k: usize, centre: Option<&Centre>) -> Vec<(usize, f32)> {
    let me = exemplars.get(i);
    let hits = index
        .search(v, k + if centre.is_some() { 16 } else { 8 })
        .into_iter()
        .filter(|h| h.position != i && (me.pair.is_none() || exemplars.get(h.position).pair != me.pair))
        .map(|h| (h.position, h.similarity));
    nearest(centre, v, hits, k)
}

/// The first `k` of `hits` (position, similarity; most similar first) of the vector `v`; with a
/// centre, the `k` most similar by the centred similarity, which they then carry.
fn nearest(centre: Option<&Centre>, v: &[f32], hits: impl Iterator<Item = (usize, f32)>, k: usize) -> Vec<(usize, f32)> {
    match centre {
        Some(c) => c.rerank(c.project(v), hits).into_iter().take(k).collect(),
        None => hits.take(k).collect(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{HnswIndex, NeighbourIndex};

    fn set(n: usize) -> ExemplarSet {
        let lines: Vec<String> = (0..n)
            .map(|i| format!(r#"{{"id":"e{i}","prompt":"p{i}","category":"c","language":"en","label":{{"tier":"cheap","reason":"r","output_tokens":5}}}}"#))
            .collect();
        ExemplarSet::from_jsonl_str(&lines.join("\n"), "x.jsonl").unwrap()
    }

    fn unit(v: [f32; 4]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    /// The point `deg` degrees round a circle in the (e1, e2) plane, leaning `lean` along e0.
    fn on_circle(lean: f32, deg: f32) -> Vec<f32> {
        let a = deg.to_radians();
        unit([lean, a.cos(), a.sin(), 0.0])
    }

    /// 60 exemplars every 6 degrees round that circle, and their index.
    fn circle(lean: f32) -> (Vec<Vec<f32>>, LiveIndex) {
        let vectors: Vec<Vec<f32>> = (0..60).map(|i| on_circle(lean, i as f32 * 6.0)).collect();
        let index = LiveIndex::new(HnswIndex::build(&vectors).unwrap());
        (vectors, index)
    }

    fn judge(f: &Familiarity, index: &LiveIndex, v: &[f32]) -> Judgement {
        f.judge(&index.search(v, 8).iter().map(|h| (Some(h.position), h.similarity)).collect::<Vec<_>>(), v)
    }

    #[test]
    fn a_shared_direction_is_removed_before_distances_are_measured() {
        // 60 exemplars on a circle in the (e1, e2) plane, all leaning far along e0 (as an
        // anisotropic embedder puts every text in one narrow cone): every pair is 0.8 similar or
        // more. The rule is centred; a prompt between two exemplars stays familiar and one off
        // the circle is not (here the plain rule would agree: the next test is where they part).
        let at = |deg: f32| on_circle(3.0, deg);
        let (vectors, index) = circle(3.0);
        let f = Familiarity::derive(&index, &set(60), 0.02).unwrap();
        let c = f.centre().expect("the mean direction dominates");
        assert!(c.norm2() > CENTRE_ABOVE, "{}", c.norm2());
        assert!(judge(&f, &index, &at(9.0)).unfamiliar.is_none(), "between two exemplars");
        let off = unit([3.0, 0.0, 0.0, 1.0]);
        let j = judge(&f, &index, &off);
        assert!(j.unfamiliar.is_some(), "{j:?}");

        // Centred similarities are those of the vectors with the mean removed.
        let mean: Vec<f32> = (0..4).map(|d| vectors.iter().map(|v| v[d]).sum::<f32>() / 60.0).collect();
        let minus = |v: &[f32]| -> Vec<f32> { v.iter().zip(&mean).map(|(x, m)| x - m).collect() };
        let cos = |a: &[f32], b: &[f32]| dot(a, b) / (dot(a, a) * dot(b, b)).sqrt();
        let q = at(9.0);
        let got = c.similarity(dot(&q, &vectors[3]), c.project(&q), 3).unwrap();
        assert!((got - cos(&minus(&q), &minus(&vectors[3]))).abs() < 1e-4, "{got}");
    }

    #[test]
    fn the_plain_rule_calls_familiar_what_only_shares_the_common_direction() {
        // 60 exemplars leaning along e0 with residuals spread over e1..e20 (pseudo-random, fixed);
        // the prompt leans the same way, with a small residual along e21, where no exemplar
        // goes. It is as close to its nearest exemplars as they are to theirs, because most of
        // every vector is e0; with e0's share removed it is like none of them.
        let mut state = 12345u64;
        let mut rnd = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) as f64 / 2f64.powi(31) * 2.0 - 1.0) as f32
        };
        let normalise = |v: Vec<f32>| {
            let n = dot(&v, &v).sqrt();
            v.into_iter().map(|x| x / n).collect::<Vec<f32>>()
        };
        let vectors: Vec<Vec<f32>> = (0..60)
            .map(|_| {
                let r = normalise((0..20).map(|_| rnd()).collect());
                normalise(std::iter::once(2.0).chain(r).chain(std::iter::once(0.0)).collect())
            })
            .collect();
        let mut q = vec![0.0f32; 22];
        (q[0], q[21]) = (2.0, 0.2);
        let q = normalise(q);
        let index = LiveIndex::new(HnswIndex::build(&vectors).unwrap());
        let plain = Familiarity::derive_centred(&index, &set(60), 0.02, false).unwrap();
        let centred = Familiarity::derive(&index, &set(60), 0.02).unwrap();
        assert!(plain.centre().is_none() && centred.centre().is_some());
        let (p, c) = (judge(&plain, &index, &q), judge(&centred, &index, &q));
        assert!(p.unfamiliar.is_none(), "the plain rule: {p:?}");
        assert!(c.unfamiliar.is_some(), "the centred rule: {c:?}");
    }

    #[test]
    fn a_set_without_a_dominant_direction_is_not_centred() {
        let (_, index) = circle(0.0);
        let f = Familiarity::derive(&index, &set(60), 0.02).unwrap();
        assert!(f.centre().is_none());
    }
}
