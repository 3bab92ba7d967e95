//! Leave-one-out over a hand-labelled exemplar set, through the [`Router`]: each labelled
//! exemplar is routed by a router built on all the others, and the tier of the model it chose is
//! compared with the exemplar's label.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::embed::{Embedder, Memo};
use crate::error::Result;
use crate::exemplar::{ExemplarSet, Grade};
use crate::pricing::{PriceTable, Tier};
use crate::router::{Router, RouterBuilder};

/// One held-out exemplar and what the router did with it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct LooOutcome {
    /// Exemplar id.
    pub id: String,
    /// Its category.
    pub category: String,
    /// Its language.
    pub language: String,
    /// Its pair (the same task in another language), if any.
    pub pair: Option<String>,
    /// Its hand label.
    pub label: Tier,
    /// The tier of the model the router chose.
    pub routed: Tier,
    /// The model chosen.
    pub model: String,
    /// Whether the router fell back (nothing similar enough).
    pub fallback: bool,
}

/// Counts of agreement with the labels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Tally {
    /// Exemplars counted.
    pub n: usize,
    /// Routed to the label's tier.
    pub agree: usize,
    /// Routed to a weaker tier than the label (a quality risk).
    pub under: usize,
    /// Routed to a stronger tier (a cost).
    pub over: usize,
}

impl Tally {
    fn add(&mut self, o: &LooOutcome) {
        self.n += 1;
        match o.routed.cmp(&o.label) {
            std::cmp::Ordering::Equal => self.agree += 1,
            std::cmp::Ordering::Less => self.under += 1,
            std::cmp::Ordering::Greater => self.over += 1,
        }
    }

    /// `agree / n`.
    pub fn agreement(&self) -> f64 {
        self.agree as f64 / self.n.max(1) as f64
    }
}

/// Every held-out exemplar's outcome.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct LooReport {
    /// One per labelled exemplar, in the set's order.
    pub outcomes: Vec<LooOutcome>,
}

impl LooReport {
    /// The tally over every outcome.
    pub fn overall(&self) -> Tally {
        self.by(|_| String::new()).remove("").unwrap_or_default()
    }

    /// Tallies grouped by `key`.
    pub fn by(&self, key: impl Fn(&LooOutcome) -> String) -> BTreeMap<String, Tally> {
        let mut out: BTreeMap<String, Tally> = BTreeMap::new();
        for o in &self.outcomes {
            out.entry(key(o)).or_default().add(o);
        }
        out
    }

    /// Pairs of an English exemplar and its Chinese twin: (routed to the same tier, compared).
    pub fn pairs_on_same_tier(&self) -> (usize, usize) {
        let mut groups: BTreeMap<&str, Vec<&LooOutcome>> = BTreeMap::new();
        for o in &self.outcomes {
            if let Some(p) = &o.pair {
                groups.entry(p).or_default().push(o);
            }
        }
        let (mut same, mut compared) = (0, 0);
        for members in groups.values() {
            for a in members.iter().filter(|m| m.language == "en") {
                for b in members.iter().filter(|m| m.language.starts_with("zh")) {
                    compared += 1;
                    same += usize::from(a.routed == b.routed);
                }
            }
        }
        (same, compared)
    }
}

/// Routes each hand-labelled exemplar of `set` with a router built (by `configure`, from a
/// builder already given the embedder, the other exemplars and `prices`) on all the others. The
/// exemplars are embedded once.
///
/// ```no_run
/// use std::sync::Arc;
/// use semroute::eval::leave_one_out;
/// use semroute::{ExemplarSet, FastEmbedder, PriceTable};
///
/// let report = leave_one_out(&ExemplarSet::builtin()?, &PriceTable::builtin()?, Arc::new(FastEmbedder::load_default()?), |b| b.k(8))?;
/// let t = report.overall();
/// println!("{:.1}% on the label's tier, {} sent lower", 100.0 * t.agreement(), t.under);
/// # Ok::<(), semroute::Error>(())
/// ```
pub fn leave_one_out(
    set: &ExemplarSet,
    prices: &PriceTable,
    embedder: Arc<dyn Embedder>,
    configure: impl Fn(RouterBuilder) -> RouterBuilder,
) -> Result<LooReport> {
    let memo = Arc::new(Memo::new(embedder));
    memo.remember(&set.iter().map(|e| e.prompt.as_str()).collect::<Vec<_>>())?;
    let embedder: Arc<dyn Embedder> = memo;
    let mut outcomes = Vec::new();
    for ex in set.iter() {
        let Grade::Labelled(label) = &ex.grade else { continue };
        let others = ExemplarSet::from_exemplars(set.iter().filter(|e| e.id != ex.id).cloned().collect())?;
        let router = configure(Router::builder().embedder(embedder.clone()).exemplars(others).prices(prices.clone()).no_cache()).build()?;
        let d = router.route(&ex.prompt)?;
        outcomes.push(LooOutcome {
            id: ex.id.clone(),
            category: ex.category.clone(),
            language: ex.language.clone(),
            pair: ex.pair.clone(),
            label: label.tier,
            routed: d
                .tier
                .ok_or_else(|| crate::error::Error::Config(format!("model `{}` has no tier to compare with the label", d.model)))?,
            model: d.model,
            fallback: d.fallback,
        });
    }
    Ok(LooReport { outcomes })
}
