//! Benchmarking a router on datasets with measured per-model scores.
//!
//! A [`Dataset`] is the JSONL format of the shared routing datasets: `id`, `task`, `prompt`,
//! `scores` (model → quality in [0, 1]) and optionally `responses` (model → answer text) or
//! `output_tokens` (model → answer length). [`Dataset::split`] splits it deterministically by seed;
//! [`to_exemplars`] turns the train part into measured exemplars; [`apgr`] and [`cpt`] compute the
//! RouteLLM metrics from the [`CurvePoint`]s of a router swept over its quality bar.
//!
//! ```
//! use semroute::eval::{apgr, cpt, CurvePoint};
//!
//! // A router that recovers the gap linearly with its strong-model calls, like random routing.
//! let points: Vec<CurvePoint> = (0..=10)
//!     .map(|i| CurvePoint { strong_share: i as f64 / 10.0, quality: 0.5 + 0.05 * i as f64, cost_usd: i as f64 })
//!     .collect();
//! let (weak, strong) = (0.5, 1.0);
//! assert!((apgr(&points, weak, strong) - 0.5).abs() < 1e-9);
//! assert!((cpt(&points, weak, strong, 0.5).unwrap() - 0.5).abs() < 1e-9);
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Location, Result};
use crate::exemplar::{Exemplar, Grade, ModelResult};
use crate::pricing::TokenCounter;

mod bench;
mod loo;
mod sessions;
mod sides;

pub use bench::{
    run, BenchSettings, Calibration, ConfigScore, CurvePointReport, Policy, Report, RouterConfig, SingleModel, TargetInterval,
    TargetResult, TestIntervals,
};
pub use loo::{leave_one_out, Frontier, LooOutcome, LooReport, Tally};
pub use sessions::{replay, ReplayReport, ReplaySettings, StrategyReport};
pub use sides::{check_sides, Side, SideCase, SideOutcome, SideReport, SideTally};

/// One dataset record.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawRecord")]
#[non_exhaustive]
pub struct Record {
    /// Unique id.
    pub id: String,
    /// Task name.
    pub task: String,
    /// The exact prompt sent to every model.
    pub prompt: String,
    /// Measured quality per model, in [0, 1].
    pub scores: BTreeMap<String, f64>,
    /// Each model's answer, when kept.
    pub responses: BTreeMap<String, String>,
    /// Each model's answer length in tokens, when given instead of the answers.
    pub output_tokens: BTreeMap<String, u32>,
    /// What each model's call really cost in USD, when measured (reasoning tokens, tool loops
    /// and cache discounts included); used instead of tokens × price.
    pub cost_usd: BTreeMap<String, f64>,
}

/// A line as written: the shared datasets' fields, or a measured exemplar's (`category`,
/// `results`), as the grading tool writes them.
#[derive(Deserialize)]
struct RawRecord {
    id: String,
    #[serde(default)]
    task: Option<String>,
    #[serde(default)]
    category: Option<String>,
    prompt: String,
    #[serde(default)]
    scores: Option<BTreeMap<String, f64>>,
    #[serde(default)]
    results: Option<BTreeMap<String, ModelResult>>,
    #[serde(default)]
    responses: BTreeMap<String, String>,
    #[serde(default)]
    output_tokens: BTreeMap<String, u32>,
    #[serde(default)]
    cost_usd: BTreeMap<String, f64>,
}

impl TryFrom<RawRecord> for Record {
    type Error = String;

    fn try_from(r: RawRecord) -> std::result::Result<Self, String> {
        let mut cost_usd = r.cost_usd;
        let (scores, mut output_tokens) = match (r.scores, r.results) {
            (Some(s), None) => (s, r.output_tokens),
            (None, Some(results)) => {
                cost_usd.extend(results.iter().filter_map(|(m, x)| x.cost_usd.map(|c| (m.clone(), c))));
                (
                    results.iter().map(|(m, x)| (m.clone(), x.quality)).collect(),
                    results.iter().map(|(m, x)| (m.clone(), x.output_tokens)).collect(),
                )
            }
            (Some(_), Some(_)) => return Err("has both `scores` and `results`; keep one".into()),
            (None, None) => return Err("missing field `scores` (or a measured exemplar's `results`)".into()),
        };
        output_tokens.retain(|m, _| scores.contains_key(m));
        if let Some((m, c)) = cost_usd.iter().find(|(_, c)| !(c.is_finite() && **c >= 0.0)) {
            return Err(format!("cost_usd of {m} is {c}: a measured cost is a finite, non-negative USD amount"));
        }
        Ok(Record {
            id: r.id,
            task: r.task.or(r.category).unwrap_or_default(),
            prompt: r.prompt,
            scores,
            responses: r.responses,
            output_tokens,
            cost_usd,
        })
    }
}

/// A routing dataset.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Dataset {
    /// The records, in file order.
    pub records: Vec<Record>,
}

impl Dataset {
    /// Loads a JSONL dataset; a bad line is an error naming file and line.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut records = Vec::new();
        // Each id's line, so that a repeated one names both.
        let mut lines_of: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = |field: Option<&str>, message: String| Error::Exemplar {
                at: Location::line(path, i + 1),
                field: field.map(str::to_string),
                message,
            };
            let r: Record = serde_json::from_str(line).map_err(|e| at(None, e.to_string()))?;
            if let Some((m, q)) = r.scores.iter().find(|(_, q)| !(0.0..=1.0).contains(*q)) {
                return Err(at(Some("scores"), format!("score of {m} is {q}, outside [0, 1]")));
            }
            if r.id.trim().is_empty() {
                return Err(at(Some("id"), "the id is empty".into()));
            }
            if r.prompt.trim().is_empty() {
                return Err(at(Some("prompt"), "the prompt is empty or only whitespace: nothing to route".into()));
            }
            if let Some(first) = lines_of.insert(r.id.clone(), i + 1) {
                return Err(at(Some("id"), format!("duplicate id {:?} (first at line {first})", r.id)));
            }
            records.push(r);
        }
        if records.is_empty() {
            return Err(Error::NoExemplars(path.to_path_buf()));
        }
        Ok(Dataset { records })
    }

    /// Splits into (train, test) deterministically: records are ordered by a hash of the seed and
    /// their id, and the first `train_fraction` of that order is the train part.
    pub fn split(&self, train_fraction: f64, seed: u64) -> (Vec<&Record>, Vec<&Record>) {
        let (train, test) = split_indices(self.records.iter().map(|r| r.id.as_str()), train_fraction, seed);
        (train.into_iter().map(|i| &self.records[i]).collect(), test.into_iter().map(|i| &self.records[i]).collect())
    }
}

/// [`Dataset::split`] on any items named by `ids`: the positions of the (train, test) parts.
pub fn split_indices<'a>(ids: impl IntoIterator<Item = &'a str>, train_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut keyed: Vec<([u8; 32], usize)> = ids
        .into_iter()
        .enumerate()
        .map(|(i, id)| {
            let mut h = Sha256::new();
            h.update(seed.to_le_bytes());
            h.update(id.as_bytes());
            (h.finalize().into(), i)
        })
        .collect();
    keyed.sort_by_key(|k| k.0);
    let n_train = ((keyed.len() as f64) * train_fraction.clamp(0.0, 1.0)).round() as usize;
    let test = keyed.split_off(n_train);
    (keyed.into_iter().map(|k| k.1).collect(), test.into_iter().map(|k| k.1).collect())
}

/// A model's answer length on a record: given, else counted from its response; `None` when the
/// record keeps neither (the caller must say what it assumes instead, never price it at zero).
pub fn output_tokens(record: &Record, model: &str, counter: &TokenCounter) -> Option<u32> {
    if let Some(&t) = record.output_tokens.get(model) {
        return Some(t);
    }
    record.responses.get(model).map(|r| counter.count(r) as u32)
}

/// Measured exemplars from records, restricted to `models` (the priced ones). A model's answer
/// length is the record's, else `assumed_output_tokens`.
pub fn to_exemplars(records: &[&Record], models: &[&str], counter: &TokenCounter, assumed_output_tokens: u32) -> Vec<Exemplar> {
    records
        .iter()
        .map(|r| Exemplar {
            id: r.id.clone(),
            prompt: r.prompt.clone(),
            category: r.task.clone(),
            // The datasets do not record a language; "und" is BCP 47's "undetermined".
            language: "und".into(),
            source: Some("measured: dataset train split".into()),
            pair: None,
            grade: Grade::Measured {
                results: r
                    .scores
                    .iter()
                    .filter(|(m, _)| models.contains(&m.as_str()))
                    .map(|(m, &q)| {
                        let tokens = output_tokens(r, m, counter).unwrap_or(assumed_output_tokens);
                        (m.clone(), ModelResult { quality: q, output_tokens: tokens, cost_usd: r.cost_usd.get(m).copied() })
                    })
                    .collect(),
            },
        })
        .filter(|e| matches!(&e.grade, Grade::Measured { results } if !results.is_empty()))
        .collect()
}

/// One operating point of a router: the share of prompts sent to the strong model, the mean
/// quality obtained and the total cost.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct CurvePoint {
    /// Share of prompts routed to the strong (reference) model, in [0, 1].
    pub strong_share: f64,
    /// Mean measured quality of the routed answers.
    pub quality: f64,
    /// Total USD of the routed calls.
    pub cost_usd: f64,
}

/// Performance gap recovered: where `quality` sits between the weak and the strong model.
pub fn pgr(quality: f64, weak: f64, strong: f64) -> f64 {
    if (strong - weak).abs() < 1e-12 {
        return 1.0;
    }
    (quality - weak) / (strong - weak)
}

/// The curve's PGR as a function of strong-model share: its upper envelope, anchored at
/// (0, all-weak) and (1, all-strong), sorted by share.
fn pgr_curve(points: &[CurvePoint], weak: f64, strong: f64) -> Vec<(f64, f64)> {
    let mut pts: Vec<(f64, f64)> = points.iter().map(|p| (p.strong_share, pgr(p.quality, weak, strong))).collect();
    pts.push((0.0, 0.0));
    pts.push((1.0, 1.0));
    pts.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)));
    pts.dedup_by(|b, a| (a.0 - b.0).abs() < 1e-12);
    pts
}

/// Average performance gap recovered (RouteLLM, arXiv 2406.18665): the area under PGR as a
/// function of the share of strong-model calls, by the trapezoid rule.
pub fn apgr(points: &[CurvePoint], weak: f64, strong: f64) -> f64 {
    let pts = pgr_curve(points, weak, strong);
    pts.windows(2).map(|w| (w[1].0 - w[0].0) * (w[0].1 + w[1].1) / 2.0).sum()
}

/// Call-performance threshold: the smallest share of strong-model calls at which the curve
/// recovers `target` (e.g. 0.5 for CPT(50%)) of the gap, interpolating linearly between points.
pub fn cpt(points: &[CurvePoint], weak: f64, strong: f64, target: f64) -> Option<f64> {
    let pts = pgr_curve(points, weak, strong);
    if pts.first().is_some_and(|p| p.1 >= target) {
        return Some(pts[0].0);
    }
    pts.windows(2).find(|w| w[1].1 >= target).map(|w| {
        let (a, b) = (w[0], w[1]);
        if b.1 - a.1 <= 1e-12 {
            b.0
        } else {
            a.0 + (b.0 - a.0) * (target - a.1) / (b.1 - a.1)
        }
    })
}

/// The non-decreasing convex hull of `(cost, quality)` operating points (RouterBench, arXiv
/// 2403.12031): the upper concave envelope of the points after dropping every point that a
/// cheaper point matches or beats in quality. Any point on it is reachable by mixing the two
/// operating points at its ends at random. Sorted by cost.
pub fn nondecreasing_hull(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut pts: Vec<(f64, f64)> = points.iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)));
    // Keep only points that improve on every cheaper one.
    let mut rising: Vec<(f64, f64)> = Vec::new();
    for p in pts {
        if rising.last().is_none_or(|l| p.1 > l.1) {
            rising.push(p);
        }
    }
    // Upper hull (monotone chain): drop a point that lies on or below the chord of its neighbours.
    let mut hull: Vec<(f64, f64)> = Vec::new();
    for p in rising {
        while hull.len() >= 2 {
            let (a, b) = (hull[hull.len() - 2], hull[hull.len() - 1]);
            let cross = (b.0 - a.0) * (p.1 - a.1) - (b.1 - a.1) * (p.0 - a.0);
            if cross >= 0.0 {
                hull.pop();
            } else {
                break;
            }
        }
        hull.push(p);
    }
    hull
}

/// Average improvement in quality (AIQ, RouterBench): the mean quality of the non-decreasing
/// convex hull of `points` over the cost range `[c_min, c_max]`, i.e. the area under it divided by
/// the range's width. Beyond the hull's most expensive point the quality stays at its maximum
/// (spending more is never forced); below its cheapest point nothing is reachable and counts as 0.
/// Give every router compared the same range.
///
/// ```
/// use semroute::eval::aiq;
///
/// // Two single models, $1 at quality 0.5 and $3 at 0.9; mixing them traces the line between.
/// let points = [(1.0, 0.5), (3.0, 0.9)];
/// assert!((aiq(&points, 1.0, 3.0) - 0.7).abs() < 1e-12);
/// // A router that reaches 0.9 for $2 is better over the same range.
/// assert!(aiq(&[(1.0, 0.5), (2.0, 0.9)], 1.0, 3.0) > 0.7);
/// ```
pub fn aiq(points: &[(f64, f64)], c_min: f64, c_max: f64) -> f64 {
    let hull = nondecreasing_hull(points);
    if hull.is_empty() || c_max <= c_min {
        return hull.iter().map(|p| p.1).fold(0.0, f64::max);
    }
    // Quality of the hull at cost c.
    let at = |c: f64| -> f64 {
        if c < hull[0].0 {
            return 0.0;
        }
        match hull.windows(2).find(|w| c <= w[1].0) {
            Some(w) if w[1].0 > w[0].0 => w[0].1 + (w[1].1 - w[0].1) * (c - w[0].0) / (w[1].0 - w[0].0),
            Some(w) => w[1].1,
            None => hull[hull.len() - 1].1,
        }
    };
    // Integrate piecewise-linearly between the range's ends and every hull vertex inside it.
    let mut xs: Vec<f64> =
        std::iter::once(c_min).chain(hull.iter().map(|p| p.0).filter(|&c| c > c_min && c < c_max)).chain(std::iter::once(c_max)).collect();
    xs.dedup();
    let mut area = 0.0;
    for w in xs.windows(2) {
        // The hull's first vertex is one of the ends when inside the range, so no interval
        // straddles it: one that starts below it lies wholly where nothing is reachable.
        if w[0] < hull[0].0 {
            continue;
        }
        area += (w[1] - w[0]) * (at(w[0]) + at(w[1])) / 2.0;
    }
    area / (c_max - c_min)
}

/// `f` applied to each of `items`, in order, spread over the machine's cores (each call an
/// independent read of data that nothing changes meanwhile, a router or its assessments, so the
/// result is the same as one after the other). The first error, in order, is returned.
pub(crate) fn par_map<T: Sync, R: Send>(items: &[T], min_per_thread: usize, f: impl Fn(&T) -> Result<R> + Sync) -> Result<Vec<R>> {
    let threads = cores().min(items.len() / min_per_thread.max(1)).max(1);
    if threads == 1 {
        return items.iter().map(&f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    // On rayon's pool, whose threads live as long as the process: a thread spawned per call
    // would take a fresh malloc arena each time, and glibc keeps what each arena freed (on a
    // 14,000-prompt benchmark, 100-170 MiB more resident at the peak). A panic in a worker is a
    // bug, not bad input: rayon carries it on as the panic it was.
    use rayon::prelude::*;
    let parts: Vec<Result<Vec<R>>> = items.par_chunks(chunk).map(|part| part.iter().map(&f).collect()).collect();
    let mut out = Vec::with_capacity(items.len());
    for part in parts {
        out.extend(part?);
    }
    Ok(out)
}

/// How many threads [`par_map`] spreads over: the machine's cores (1 when unknown).
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}
