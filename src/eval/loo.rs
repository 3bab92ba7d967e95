//! Leave-one-out over a hand-labelled exemplar set, through the [`Router`]: each labelled
//! exemplar is routed by a router built on all the others, and the tier of the model it chose is
//! compared with the exemplar's label.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::embed::{Embedder, Memo};
use crate::error::Result;
use crate::exemplar::{Exemplar, ExemplarSet, Grade, TierLabel};
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
    /// Per tier, the highest predicted chance of a good answer among its models, before caution
    /// (what [`LooReport::best_thresholds`] reads).
    pub tier_quality: BTreeMap<Tier, f64>,
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

/// What the best per-tier thresholds on the predicted quality do, chosen with hindsight on the
/// very outcomes they are scored on ([`LooReport::best_thresholds`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Frontier {
    /// Share routed to the label's tier.
    pub agreement: f64,
    /// Exemplars routed to a weaker tier than their label.
    pub under: usize,
    /// The predicted quality the cheap tier needed.
    pub cheap_threshold: f64,
    /// The predicted quality the mid tier needed.
    pub mid_threshold: f64,
}

/// Every held-out exemplar's outcome.
#[derive(Debug, Clone, Default, Serialize)]
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

    /// The most agreement any rule of the form "the cheap tier where its predicted quality is at
    /// least `a`, else the mid tier where its own is at least `b`, else the strong tier" reaches
    /// with at most `max_under` exemplars sent to a weaker tier than their label, the thresholds
    /// chosen in hindsight (a grid of hundredths) on these very outcomes; fallbacks keep the tier
    /// they were routed to. Every quality bar and caution is such a rule or close to one (caution
    /// subtracts each prediction's own error), so this is the ceiling the policy can reach on
    /// these predictions: to go past it, the predictions must get better. `None` when no rule
    /// keeps `under` that low.
    ///
    /// ```
    /// use semroute::eval::LooReport;
    ///
    /// let report = LooReport::default();
    /// assert!(report.best_thresholds(0).is_some_and(|f| f.under == 0));
    /// ```
    pub fn best_thresholds(&self, max_under: usize) -> Option<Frontier> {
        let grid: Vec<f64> = (0..=101).map(|i| f64::from(i) / 100.0).collect();
        let quality = |o: &LooOutcome, t: Tier| o.tier_quality.get(&t).copied().unwrap_or(-1.0);
        let mut best: Option<(usize, Frontier)> = None;
        for &a in &grid {
            for &b in &grid {
                let (mut agree, mut under) = (0, 0);
                for o in &self.outcomes {
                    let routed = if o.fallback {
                        o.routed
                    } else if quality(o, Tier::Cheap) >= a {
                        Tier::Cheap
                    } else if quality(o, Tier::Mid) >= b {
                        Tier::Mid
                    } else {
                        Tier::Strong
                    };
                    agree += usize::from(routed == o.label);
                    under += usize::from(routed < o.label);
                }
                if under <= max_under && best.as_ref().is_none_or(|(n, f)| agree > *n || (agree == *n && under < f.under)) {
                    let agreement = agree as f64 / self.outcomes.len().max(1) as f64;
                    best = Some((agree, Frontier { agreement, under, cheap_threshold: a, mid_threshold: b }));
                }
            }
        }
        best.map(|(_, f)| f)
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
    configure: impl Fn(RouterBuilder) -> RouterBuilder + Sync,
) -> Result<LooReport> {
    let memo = Arc::new(Memo::new(embedder));
    memo.remember(&set.iter().map(|e| e.prompt.as_str()).collect::<Vec<_>>())?;
    let embedder: Arc<dyn Embedder> = memo;
    let labelled: Vec<(&Exemplar, &TierLabel)> =
        set.iter().filter_map(|e| if let Grade::Labelled(label) = &e.grade { Some((e, label)) } else { None }).collect();
    // One router per exemplar, built and asked on every core.
    let outcomes = super::par_map(&labelled, 1, |&(ex, label)| {
        let others = ExemplarSet::from_exemplars(set.iter().filter(|e| e.id != ex.id).cloned().collect())?;
        let router = configure(Router::builder().embedder(embedder.clone()).exemplars(others).prices(prices.clone()).no_cache()).build()?;
        let d = router.route(&ex.prompt)?;
        Ok(LooOutcome {
            id: ex.id.clone(),
            category: ex.category.clone(),
            language: ex.language.clone(),
            pair: ex.pair.clone(),
            label: label.tier,
            routed: d
                .tier
                .ok_or_else(|| crate::error::Error::Config(format!("model `{}` has no tier to compare with the label", d.model)))?,
            tier_quality: tier_quality(&d.candidates),
            model: d.model,
            fallback: d.fallback,
        })
    })?;
    Ok(LooReport { outcomes })
}

/// Per tier, the highest predicted quality among the candidates of that tier.
fn tier_quality(candidates: &[crate::decision::Candidate]) -> BTreeMap<Tier, f64> {
    let mut out: BTreeMap<Tier, f64> = BTreeMap::new();
    for c in candidates {
        if let (Some(t), Some(q)) = (c.tier, c.predicted_quality) {
            let e = out.entry(t).or_insert(q);
            *e = e.max(q);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(label: Tier, cheap: f64, mid: f64) -> LooOutcome {
        LooOutcome {
            id: String::new(),
            category: String::new(),
            language: "en".into(),
            pair: None,
            label,
            routed: Tier::Strong,
            model: String::new(),
            fallback: false,
            tier_quality: [(Tier::Cheap, cheap), (Tier::Mid, mid), (Tier::Strong, 1.0)].into_iter().collect(),
        }
    }

    #[test]
    fn best_thresholds_trade_agreement_for_under_as_counted_by_hand() {
        // A cheap exemplar predicted 0.9 for cheap, a mid one 0.8 for cheap (so "cheap ≥ 0.8"
        // sends it under), a strong one 0.6 for mid.
        let report =
            LooReport { outcomes: vec![outcome(Tier::Cheap, 0.9, 1.0), outcome(Tier::Mid, 0.8, 0.9), outcome(Tier::Strong, 0.3, 0.6)] };
        // Allowed no under: cheap needs more than 0.8, mid more than 0.6; all three agree.
        let f = report.best_thresholds(0).unwrap();
        assert_eq!((f.under, f.agreement), (0, 1.0));
        assert!(f.cheap_threshold > 0.8 && f.cheap_threshold <= 0.9, "{f:?}");
        assert!(f.mid_threshold > 0.6 && f.mid_threshold <= 0.9, "{f:?}");
        // Make the mid exemplar look cheaper than the cheap one: agreeing on both needs an under.
        let report =
            LooReport { outcomes: vec![outcome(Tier::Cheap, 0.7, 1.0), outcome(Tier::Mid, 0.8, 0.9), outcome(Tier::Strong, 0.3, 0.6)] };
        let strict = report.best_thresholds(0).unwrap();
        assert_eq!((strict.under, strict.agreement), (0, 2.0 / 3.0));
        // Allowing an under buys nothing here (cheap ≤ 0.7 agrees on the cheap one but sends the
        // mid one under), and among equal agreements the fewer unders win.
        let loose = report.best_thresholds(1).unwrap();
        assert_eq!((loose.under, loose.agreement), (0, 2.0 / 3.0), "{loose:?}");
        // A fallback keeps its tier whatever the thresholds.
        let mut fell = outcome(Tier::Cheap, 1.0, 1.0);
        fell.fallback = true;
        let report = LooReport { outcomes: vec![fell] };
        assert_eq!(report.best_thresholds(0).unwrap().agreement, 0.0);
    }
}
