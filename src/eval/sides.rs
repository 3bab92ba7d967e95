//! The side check: prompts written by hand with the side a careful person would send them to
//! (a cheap or mid model, the strongest tier, or "unknown" for nonsense), routed through a
//! [`Router`] and compared. This is how the built-in defaults are judged on prompts they have
//! never seen (`tests/fixtures/fresh/`), and how a user can judge them on their own.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Location, Result};
use crate::pricing::Tier;
use crate::router::Router;

/// Where a careful person would send a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Side {
    /// A cheap or mid-tier model answers it well.
    Cheap,
    /// Only the strongest tier should answer it.
    Strong,
    /// Nothing like it is known: the router should fall back.
    Unknown,
}

/// One hand-labelled prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SideCase {
    /// Unique id.
    pub id: String,
    /// The prompt.
    pub prompt: String,
    /// Its language (`en`, `zh`, ...).
    pub language: String,
    /// Its category.
    pub category: String,
    /// Where it should go.
    pub side: Side,
    /// Why (one sentence).
    #[serde(default)]
    pub why: String,
}

impl SideCase {
    /// Reads a JSONL file of cases; a bad line is an error naming file and line.
    ///
    /// ```
    /// let dir = std::env::temp_dir().join("semroute-sides-doc");
    /// std::fs::create_dir_all(&dir)?;
    /// let f = dir.join("cases.jsonl");
    /// std::fs::write(&f, "{\"id\":\"a\",\"prompt\":\"hi\",\"language\":\"en\",\"category\":\"chit-chat\",\"side\":\"cheap\"}\n")?;
    /// let cases = semroute::eval::SideCase::load(&f)?;
    /// assert_eq!(cases[0].side, semroute::eval::Side::Cheap);
    /// std::fs::write(&f, "{\"id\":\"a\",\"prompt\":\"hi\",\"side\":\"medium\"}\n")?;
    /// assert!(semroute::eval::SideCase::load(&f).unwrap_err().to_string().contains("cases.jsonl:1"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn load(path: impl AsRef<Path>) -> Result<Vec<SideCase>> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut cases: Vec<SideCase> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let bad = |message: String| Error::Exemplar { at: Location::line(path, i + 1), field: None, message };
            let case: SideCase = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
            if case.prompt.trim().is_empty() {
                return Err(bad("the prompt is empty".into()));
            }
            if !seen.insert(case.id.clone()) {
                return Err(bad(format!("duplicate id {:?}", case.id)));
            }
            cases.push(case);
        }
        if cases.is_empty() {
            return Err(Error::NoExemplars(path.to_path_buf()));
        }
        Ok(cases)
    }
}

/// What the router did with one case.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct SideOutcome {
    /// The case's id.
    pub id: String,
    /// Its language.
    pub language: String,
    /// Its category.
    pub category: String,
    /// Where it should go.
    pub side: Side,
    /// The model chosen.
    pub model: String,
    /// Its tier.
    pub tier: Tier,
    /// Whether the router fell back (nothing similar enough).
    pub fallback: bool,
    /// Similarity of the nearest exemplar.
    pub top_similarity: Option<f32>,
    /// The prompt's unfamiliarity (see [`familiar`](crate::familiar)), under the density rule.
    pub unfamiliarity: Option<f64>,
    /// Whether the router sent it to its side: a cheap case to a cheap or mid model (not by
    /// falling back), a strong case to the strongest tier, an unknown case to the fallback.
    pub agree: bool,
}

/// Agreement counts for a group of cases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SideTally {
    /// Cases.
    pub n: usize,
    /// Sent to their side.
    pub agree: usize,
    /// Strong cases sent to the cheap tier (the expensive mistake).
    pub strong_to_cheap: usize,
    /// Strong cases sent to a mid model.
    pub strong_to_mid: usize,
    /// Cheap cases sent to the strongest tier (a cost).
    pub cheap_to_strong: usize,
    /// Cases where the router fell back.
    pub fallbacks: usize,
}

impl SideTally {
    fn add(&mut self, o: &SideOutcome) {
        self.n += 1;
        self.agree += usize::from(o.agree);
        self.fallbacks += usize::from(o.fallback);
        match (o.side, o.tier) {
            (Side::Strong, Tier::Cheap) => self.strong_to_cheap += 1,
            (Side::Strong, Tier::Mid) => self.strong_to_mid += 1,
            (Side::Cheap, Tier::Strong) => self.cheap_to_strong += 1,
            _ => {}
        }
    }

    /// `agree / n`.
    pub fn agreement(&self) -> f64 {
        self.agree as f64 / self.n.max(1) as f64
    }
}

/// Every case's outcome.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct SideReport {
    /// One per case, in order.
    pub outcomes: Vec<SideOutcome>,
}

impl SideReport {
    /// The tally over every outcome.
    pub fn overall(&self) -> SideTally {
        self.by(|_| String::new()).remove("").unwrap_or_default()
    }

    /// Tallies grouped by `key`.
    pub fn by(&self, key: impl Fn(&SideOutcome) -> String) -> BTreeMap<String, SideTally> {
        let mut out: BTreeMap<String, SideTally> = BTreeMap::new();
        for o in &self.outcomes {
            out.entry(key(o)).or_default().add(o);
        }
        out
    }
}

/// Routes every case with `router` (its default constraints) and compares with its side. The
/// price table's models need tiers (an untiered choice is an error naming the model).
///
/// ```no_run
/// use semroute::eval::{check_sides, SideCase};
///
/// let report = check_sides(&semroute::Router::builder().build()?, &SideCase::load("tests/fixtures/fresh/prompts.jsonl")?)?;
/// let t = report.overall();
/// println!("{:.1}% on the intended side; {} hard prompts sent cheap", 100.0 * t.agreement(), t.strong_to_cheap);
/// # Ok::<(), semroute::Error>(())
/// ```
pub fn check_sides(router: &Router, cases: &[SideCase]) -> Result<SideReport> {
    let mut outcomes = Vec::with_capacity(cases.len());
    for case in cases {
        let d = router.route(&case.prompt)?;
        let tier = d.tier.ok_or_else(|| Error::Config(format!("model `{}` has no tier to compare with the side", d.model)))?;
        let agree = match case.side {
            Side::Cheap => tier < Tier::Strong && !d.fallback,
            Side::Strong => tier == Tier::Strong,
            Side::Unknown => d.fallback,
        };
        outcomes.push(SideOutcome {
            id: case.id.clone(),
            language: case.language.clone(),
            category: case.category.clone(),
            side: case.side,
            top_similarity: d.neighbours.first().map(|n| n.similarity),
            unfamiliarity: d.unfamiliarity,
            model: d.model,
            tier,
            fallback: d.fallback,
            agree,
        });
    }
    Ok(SideReport { outcomes })
}
