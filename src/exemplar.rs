//! Graded exemplars: prompts whose right model is known, the router's memory.
//!
//! Each line of an exemplar file (JSONL) is one [`Exemplar`]. Its [`Grade`] is one of two honest
//! kinds:
//! - **measured**: `"results": {"<model>": {"quality": 0.9, "output_tokens": 312}, ...}` from real
//!   responses (the shared datasets, or the grading tool);
//! - **labelled**: `"label": {"tier": "cheap", "reason": "...", "output_tokens": 150}`, the weakest
//!   model tier that answers it well, assigned by hand (output tokens are then a hand estimate).
//!
//! ```
//! use semroute::exemplar::{ExemplarSet, Grade};
//!
//! let jsonl = r#"{"id":"fmt-1","prompt":"Indent this JSON: {\"a\":1}","category":"formatting","language":"en","label":{"tier":"cheap","reason":"mechanical","output_tokens":40}}
//! {"id":"gsm-7","prompt":"Tom has 3 apples...","category":"math-word-problem","language":"en","results":{"gpt-4o":{"quality":1.0,"output_tokens":120},"mixtral":{"quality":0.0,"output_tokens":95}}}"#;
//! let set = ExemplarSet::from_jsonl_str(jsonl, "inline.jsonl")?;
//! assert_eq!(set.len(), 2);
//! assert!(matches!(set.get(1).grade, Grade::Measured { .. }));
//! # Ok::<(), semroute::Error>(())
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Location, Result};
use crate::pricing::{PriceTable, Tier};

/// One model's measured result on an exemplar.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ModelResult {
    /// Quality in `[0, 1]` (1 = as good as it gets).
    pub quality: f64,
    /// Length of the model's answer in tokens.
    pub output_tokens: u32,
    /// What the call really cost in USD, when measured (reasoning tokens, tool loops and cache
    /// discounts included). Where neighbours carry it, the router predicts a model's cost from
    /// it instead of from answer tokens × list price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
}

/// A hand-assigned label: the weakest tier that answers the prompt well.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TierLabel {
    /// The weakest tier whose models answer well.
    pub tier: Tier,
    /// One line on why.
    pub reason: String,
    /// A hand estimate of a good answer's length in tokens.
    pub output_tokens: u32,
}

/// How an exemplar's right model is known.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Grade {
    /// Per-model results from real responses.
    Measured {
        /// Model name to result.
        results: BTreeMap<String, ModelResult>,
    },
    /// Labelled by hand.
    Labelled(TierLabel),
}

/// A graded prompt.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Exemplar {
    /// Unique id within its set.
    pub id: String,
    /// The prompt text.
    pub prompt: String,
    /// The kind of work (`formatting`, `proof`, ...; `uncategorised` where a line names none).
    pub category: String,
    /// Language of the prompt (`en`, `zh`, `mixed`, ...; `und`, undetermined, where a line names
    /// none).
    pub language: String,
    /// Free-text note on where it came from.
    pub source: Option<String>,
    /// Exemplars posing the same task in different languages share this value (for checking
    /// that a task lands on the same tier whatever its language).
    pub pair: Option<String>,
    /// What is known about which model answers it well.
    pub grade: Grade,
}

/// The category of a line (an exemplar, a grading task) that names none.
pub(crate) fn uncategorised() -> String {
    "uncategorised".into()
}

/// The language of a line that names none: BCP 47's "undetermined".
pub(crate) fn und() -> String {
    "und".into()
}

/// The on-disk shape of one JSONL line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExemplarLine {
    id: String,
    prompt: String,
    /// Optional on reading, as in a grading run's tasks (`uncategorised`, and `und`: BCP 47's
    /// "undetermined"): a workload's own prompts seldom come with either.
    #[serde(default = "uncategorised")]
    category: String,
    #[serde(default = "und")]
    language: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pair: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    results: Option<BTreeMap<String, ModelResult>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    label: Option<TierLabel>,
    /// A known right answer (read by the grading tool; the router does not use it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reference: Option<String>,
    /// The grading tool's per-call details (answers, latency, tokens, cost, errors): kept in the
    /// file for people and tools, not used for routing.
    #[serde(default, skip_serializing)]
    #[allow(dead_code)]
    calls: Option<serde_json::Value>,
}

impl ModelResult {
    /// A measured result: quality in `[0, 1]` and answer length, no measured cost.
    pub fn new(quality: f64, output_tokens: u32) -> Self {
        ModelResult { quality, output_tokens, cost_usd: None }
    }

    /// With what the call really cost.
    pub fn with_cost_usd(mut self, usd: f64) -> Self {
        self.cost_usd = Some(usd);
        self
    }
}

impl TierLabel {
    /// A hand label: the weakest tier that answers well, why, and an estimated answer length.
    pub fn new(tier: Tier, reason: impl Into<String>, output_tokens: u32) -> Self {
        TierLabel { tier, reason: reason.into(), output_tokens }
    }
}

impl Exemplar {
    /// An exemplar in category `general`, language `en`, with no source or pair; the `with_*`
    /// methods set those. Checked when it joins a set (see [`ExemplarSet::from_exemplars`]).
    ///
    /// ```
    /// use semroute::exemplar::{Exemplar, Grade, ModelResult, TierLabel};
    /// use semroute::Tier;
    ///
    /// let labelled = Exemplar::new("sql-1", "Select all users older than 30",
    ///     Grade::Labelled(TierLabel::new(Tier::Cheap, "single-table filter", 40)))
    ///     .with_category("sql");
    /// let measured = Exemplar::new("gsm-17", "A baker has ...", Grade::Measured {
    ///     results: [("gpt-4".to_string(), ModelResult::new(1.0, 212))].into(),
    /// });
    /// assert_eq!((labelled.category.as_str(), measured.language.as_str()), ("sql", "en"));
    /// ```
    pub fn new(id: impl Into<String>, prompt: impl Into<String>, grade: Grade) -> Self {
        Exemplar {
            id: id.into(),
            prompt: prompt.into(),
            category: "general".into(),
            language: "en".into(),
            source: None,
            pair: None,
            grade,
        }
    }

    /// With this category.
    pub fn with_category(mut self, category: impl Into<String>) -> Self {
        self.category = category.into();
        self
    }

    /// With this language.
    pub fn with_language(mut self, language: impl Into<String>) -> Self {
        self.language = language.into();
        self
    }

    /// With a note on where it came from.
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The exemplar as one JSONL line (the format [`ExemplarSet::from_jsonl_str`] reads).
    pub fn to_json_line(&self) -> String {
        let (results, label) = match &self.grade {
            Grade::Measured { results } => (Some(results.clone()), None),
            Grade::Labelled(l) => (None, Some(l.clone())),
        };
        let line = ExemplarLine {
            id: self.id.clone(),
            prompt: self.prompt.clone(),
            category: self.category.clone(),
            language: self.language.clone(),
            source: self.source.clone(),
            pair: self.pair.clone(),
            results,
            label,
            reference: None,
            calls: None,
        };
        serde_json::to_string(&line).expect("an exemplar always serialises")
    }

    pub(crate) fn from_line(text: &str, at: &Location) -> Result<Self> {
        let err = |field: Option<&str>, message: String| Error::Exemplar { at: at.clone(), field: field.map(str::to_string), message };
        let raw: ExemplarLine = serde_json::from_str(text).map_err(|e| {
            // serde names the field in its message ("missing field `prompt`"); pull it out too.
            let msg = e.to_string();
            let names_field = ["missing field", "unknown field", "duplicate field"].iter().any(|p| msg.starts_with(p));
            let field = names_field.then(|| msg.split('`').nth(1).map(str::to_string)).flatten();
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
            Error::Exemplar { at: at.clone(), field, message: msg }
        })?;
        for (field, value) in [("id", &raw.id), ("prompt", &raw.prompt), ("category", &raw.category), ("language", &raw.language)] {
            if value.trim().is_empty() {
                return Err(err(Some(field), "must not be empty".into()));
            }
        }
        let grade = match (raw.results, raw.label) {
            (Some(_), Some(_)) => return Err(err(None, "has both `results` (measured) and `label` (hand-labelled); keep one".into())),
            (None, None) => return Err(err(None, "has neither `results` (measured) nor `label` (hand-labelled)".into())),
            (Some(results), None) => {
                if results.is_empty() {
                    return Err(err(Some("results"), "lists no model".into()));
                }
                for (model, r) in &results {
                    if !(r.quality.is_finite() && (0.0..=1.0).contains(&r.quality)) {
                        return Err(err(Some(&format!("results.{model}.quality")), format!("must be within [0, 1], got {}", r.quality)));
                    }
                    if let Some(c) = r.cost_usd.filter(|c| !(c.is_finite() && *c >= 0.0)) {
                        return Err(err(
                            Some(&format!("results.{model}.cost_usd")),
                            format!("must be a finite, non-negative USD amount, got {c}"),
                        ));
                    }
                }
                Grade::Measured { results }
            }
            (None, Some(label)) => {
                if label.reason.trim().is_empty() {
                    return Err(err(Some("label.reason"), "must say why the tier was chosen".into()));
                }
                Grade::Labelled(label)
            }
        };
        Ok(Exemplar {
            id: raw.id,
            prompt: raw.prompt,
            category: raw.category,
            language: raw.language,
            source: raw.source,
            pair: raw.pair,
            grade,
        })
    }
}

/// A validated collection of exemplars with unique ids. Cheap to clone (shared), and cheap to
/// extend ([`with_added`](ExemplarSet::with_added) shares the exemplars it already holds).
#[derive(Debug, Clone)]
pub struct ExemplarSet {
    items: Arc<Vec<Arc<Exemplar>>>,
    origins: Arc<Vec<Arc<Location>>>,
}

/// The default exemplar files, compiled in: every `*.jsonl` under `exemplars/`, in name order (the
/// order [`ExemplarSet::load_dir`] reads the folder in, so both give the same set).
const BUILTIN: &[(&str, &str)] = &[
    ("starter.jsonl", include_str!("../exemplars/starter.jsonl")),
    ("work-code.jsonl", include_str!("../exemplars/work-code.jsonl")),
    ("work-domain.jsonl", include_str!("../exemplars/work-domain.jsonl")),
    ("work-everyday.jsonl", include_str!("../exemplars/work-everyday.jsonl")),
    ("work-extract.jsonl", include_str!("../exemplars/work-extract.jsonl")),
    ("work-reasoning.jsonl", include_str!("../exemplars/work-reasoning.jsonl")),
    ("work-text.jsonl", include_str!("../exemplars/work-text.jsonl")),
];

impl ExemplarSet {
    /// The default exemplars compiled into the crate (the files under `exemplars/`).
    pub fn builtin() -> Result<Self> {
        let mut parts = Vec::new();
        for (name, text) in BUILTIN {
            parts.push(parse_jsonl(text, Path::new(&format!("<builtin:exemplars/{name}>")))?);
        }
        Self::merge(parts)
    }

    /// Loads every `*.jsonl` file directly inside `dir` (sorted by name).
    ///
    /// Fails with [`Error::NoExemplars`] when there is none, and with [`Error::Exemplar`] naming the
    /// file, line and field of the first bad line: nothing is skipped silently.
    pub fn load_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        let mut files: Vec<PathBuf> = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| Error::io(dir, e))?.path();
            if path.is_file() && path.extension().is_some_and(|x| x == "jsonl") {
                files.push(path);
            }
        }
        files.sort();
        let mut parts = Vec::new();
        for file in &files {
            let text = read_text(file)?;
            parts.push(parse_jsonl(&text, file)?);
        }
        let set = Self::merge(parts)?;
        if set.is_empty() {
            return Err(Error::NoExemplars(dir.to_path_buf()));
        }
        Ok(set)
    }

    /// Loads one JSONL file.
    pub fn load_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = read_text(path)?;
        let set = Self::merge(vec![parse_jsonl(&text, path)?])?;
        if set.is_empty() {
            return Err(Error::NoExemplars(path.to_path_buf()));
        }
        Ok(set)
    }

    /// Parses JSONL text; `origin` names it in errors. Blank lines are allowed.
    pub fn from_jsonl_str(text: &str, origin: impl AsRef<Path>) -> Result<Self> {
        Self::merge(vec![parse_jsonl(text, origin.as_ref())?])
    }

    /// Builds a set from exemplars made in code (ids must be unique).
    pub fn from_exemplars(items: Vec<Exemplar>) -> Result<Self> {
        let origins = (0..items.len()).map(|i| Location::line("<memory>", i + 1)).collect();
        Self::merge(vec![(items, origins)])
    }

    fn merge(parts: Vec<(Vec<Exemplar>, Vec<Location>)>) -> Result<Self> {
        let mut items = Vec::new();
        let mut origins = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (exemplars, locations) in parts {
            for (ex, at) in exemplars.into_iter().zip(locations) {
                if let Some(&first) = seen.get(&ex.id) {
                    return Err(Error::DuplicateId { at, id: ex.id.clone(), first: format!("first at {}", origins[first]) });
                }
                seen.insert(ex.id.clone(), items.len());
                items.push(Arc::new(ex));
                origins.push(Arc::new(at));
            }
        }
        Ok(ExemplarSet { items: Arc::new(items), origins: Arc::new(origins) })
    }

    /// This set followed by `more` (new positions follow the old ones, which do not move); `origin`
    /// names where they came from in errors. An id already present, or repeated in `more`, is an
    /// error and nothing is added.
    ///
    /// ```
    /// use semroute::exemplar::ExemplarSet;
    ///
    /// let line = |id: &str| format!(r#"{{"id":"{id}","prompt":"p {id}","category":"c","language":"en","label":{{"tier":"cheap","reason":"r","output_tokens":9}}}}"#);
    /// let set = ExemplarSet::from_jsonl_str(&line("a"), "a.jsonl")?;
    /// let more = ExemplarSet::from_jsonl_str(&line("b"), "b.jsonl")?;
    /// let both = set.with_added(more.iter().cloned().collect(), "feedback")?;
    /// assert_eq!(both.len(), 2);
    /// assert!(both.with_added(vec![both.get(0).clone()], "again").is_err());
    /// # Ok::<(), semroute::Error>(())
    /// ```
    pub fn with_added(&self, more: Vec<Exemplar>, origin: impl AsRef<Path>) -> Result<Self> {
        let origin = origin.as_ref();
        let mut new_ids: HashMap<&str, usize> = HashMap::new();
        for (i, ex) in more.iter().enumerate() {
            if let Some(first) = new_ids.insert(ex.id.as_str(), i) {
                return Err(Error::DuplicateId {
                    at: Location::line(origin, i + 1),
                    id: ex.id.clone(),
                    first: format!("first at item {}", first + 1),
                });
            }
        }
        if let Some((old, at)) = self.items.iter().zip(self.origins.iter()).find(|(e, _)| new_ids.contains_key(e.id.as_str())) {
            let i = new_ids[old.id.as_str()];
            return Err(Error::DuplicateId { at: Location::line(origin, i + 1), id: old.id.clone(), first: format!("already at {at}") });
        }
        let mut items = Vec::with_capacity(self.items.len() + more.len());
        items.extend(self.items.iter().cloned());
        let mut origins = Vec::with_capacity(items.capacity());
        origins.extend(self.origins.iter().cloned());
        for (i, ex) in more.into_iter().enumerate() {
            items.push(Arc::new(ex));
            origins.push(Arc::new(Location::line(origin, i + 1)));
        }
        Ok(ExemplarSet { items: Arc::new(items), origins: Arc::new(origins) })
    }

    /// Checks that every measured result names a model the price table lists, and that every
    /// priced model has a tier when a hand label needs one.
    pub fn check_models(&self, prices: &PriceTable) -> Result<()> {
        self.check_models_from(0, prices)
    }

    /// [`check_models`](ExemplarSet::check_models) for the exemplars from position `start` on.
    pub(crate) fn check_models_from(&self, start: usize, prices: &PriceTable) -> Result<()> {
        let untiered = prices.iter().find(|(_, p)| p.tier.is_none()).map(|(m, _)| m);
        for (ex, at) in self.items.iter().zip(self.origins.iter()).skip(start) {
            if let (Grade::Labelled(_), Some(model)) = (&ex.grade, untiered) {
                return Err(Error::Exemplar {
                    at: (**at).clone(),
                    field: Some("label.tier".into()),
                    message: format!(
                        "a hand label names a tier, but the price table gives model `{model}` none: give every priced model a `tier`, or grade this exemplar by measurement"
                    ),
                });
            }
            if let Grade::Measured { results } = &ex.grade {
                if let Some(model) = results.keys().find(|m| prices.get(m).is_none()) {
                    return Err(Error::Exemplar {
                        at: (**at).clone(),
                        field: Some(format!("results.{model}")),
                        message: format!(
                            "model `{model}` is not in the price table (it lists: {})",
                            prices.names().collect::<Vec<_>>().join(", ")
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Number of exemplars.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The exemplar at position `i` (positions are what the index returns).
    pub fn get(&self, i: usize) -> &Exemplar {
        &self.items[i]
    }

    /// The exemplar at position `i`, shared (panics if out of range).
    pub fn shared(&self, i: usize) -> Arc<Exemplar> {
        self.items[i].clone()
    }

    /// Where exemplar `i` was read from.
    pub fn origin(&self, i: usize) -> &Location {
        &self.origins[i]
    }

    /// All exemplars in order.
    pub fn iter(&self) -> impl Iterator<Item = &Exemplar> {
        self.items.iter().map(|e| &**e)
    }

    /// A SHA-256 over ids and prompts: the key of cached embeddings (grades do not affect them).
    /// Each id and prompt in turn, preceded by its length in bytes (`u64` little-endian).
    ///
    /// ```
    /// use semroute::exemplar::ExemplarSet;
    ///
    /// let line = |id: &str, prompt: &str| format!(r#"{{"id":"{id}","prompt":"{prompt}","category":"c","language":"en","results":{{"a":{{"quality":1,"output_tokens":5}}}}}}"#);
    /// let set = ExemplarSet::from_jsonl_str(&[line("e1", "hello"), line("e2", "你好")].join("\n"), "x.jsonl")?;
    /// // sha256(le64(2) "e1" le64(5) "hello" le64(2) "e2" le64(6) "你好"), computed apart (Python's hashlib).
    /// assert_eq!(set.content_hash(), "7f5995eb9a89ebfb633ade2f817205e0c83352fc0065d654dfe17c4a33e8e4ee");
    /// # Ok::<(), semroute::Error>(())
    /// ```
    pub fn content_hash(&self) -> String {
        crate::embed::texts_hash(self.items.iter().flat_map(|ex| [ex.id.as_str(), ex.prompt.as_str()]))
    }
}

/// A JSONL file's text: a leading byte-order mark is dropped; bytes that are not UTF-8 are an
/// error naming the line and the byte where they start.
fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    match std::str::from_utf8(body) {
        Ok(text) => Ok(text.to_string()),
        Err(e) => {
            let at = e.valid_up_to();
            let line = body[..at].iter().filter(|&&b| b == b'\n').count() + 1;
            Err(Error::Exemplar {
                at: Location::line(path, line),
                field: None,
                message: format!("not UTF-8 text: byte {:#04x} at offset {at} (is this a binary file?)", body[at]),
            })
        }
    }
}

fn parse_jsonl(text: &str, origin: &Path) -> Result<(Vec<Exemplar>, Vec<Location>)> {
    let mut items = Vec::new();
    let mut origins = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = Location::line(origin, i + 1);
        items.push(Exemplar::from_line(line, &at)?);
        origins.push(at);
    }
    Ok((items, origins))
}
