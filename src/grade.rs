//! Grading: send each exemplar to every candidate model, score the answers, and record quality,
//! real token usage and cost as measured exemplars the router loads directly.
//!
//! - [`load_tasks`] reads the prompts to grade (any exemplar JSONL; an optional `reference`
//!   answer lets [`match_reference`] score without a judge).
//! - [`Grader::run`] calls every (exemplar, model) pair not already in the [`Journal`], bounded
//!   per provider, scores each answer (reference match, else a judge model with
//!   [`JUDGE_RUBRIC`]), and appends one [`CallRecord`] per pair, durably, as it completes.
//!   Killed at any point and run again, it finishes the remaining pairs: nothing already
//!   recorded is lost or repeated, and a torn last line is detected and redone.
//! - [`write_results`] turns the journal into exemplar JSONL with per-model quality, measured cost and output
//!   tokens, plus each call's answer, latency, tokens, cost and error under `calls`.
//!
//! ```
//! use semroute::grade::{match_reference, parse_judge_score};
//!
//! assert_eq!(match_reference("6 × 7 = 42, so the answer is 42.", "42"), 1.0);
//! assert_eq!(match_reference("The answer is 41", "42"), 0.0);
//! assert_eq!(parse_judge_score("Clear and correct. Rating: [[8]]"), Some(7.0 / 9.0));
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Location, Result};
use crate::pricing::{PriceTable, TokenCounter};
use crate::provider::{ApiKey, CallError, Client, Endpoint, Providers};

/// One prompt to grade.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Task {
    /// Unique id.
    pub id: String,
    /// The prompt sent to every model.
    pub prompt: String,
    /// Kind of work (default `uncategorised`).
    #[serde(default = "crate::exemplar::uncategorised")]
    pub category: String,
    /// Language (default `und`, undetermined).
    #[serde(default = "crate::exemplar::und")]
    pub language: String,
    /// A known right answer: when present, answers are scored by [`match_reference`], no judge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// Reads tasks from a JSONL file or every `*.jsonl` in a folder (sorted). Lines may be full
/// exemplars (their grades are ignored); `id` and `prompt` are required, ids must be unique.
pub fn load_tasks(path: impl AsRef<Path>) -> Result<Vec<Task>> {
    let path = path.as_ref();
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| Error::io(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    };
    let mut tasks = Vec::new();
    let mut seen: HashMap<String, Location> = HashMap::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = Location::line(&file, i + 1);
            let bad = |field: Option<&str>, message: String| Error::Exemplar { at: at.clone(), field: field.map(Into::into), message };
            let t: Task = serde_json::from_str(line).map_err(|e| bad(None, e.to_string()))?;
            if t.id.trim().is_empty() {
                return Err(bad(Some("id"), "must not be empty".into()));
            }
            if t.prompt.trim().is_empty() {
                return Err(bad(Some("prompt"), "must not be empty".into()));
            }
            if let Some(first) = seen.insert(t.id.clone(), at.clone()) {
                return Err(bad(Some("id"), format!("duplicate id {:?}, first at {first}", t.id)));
            }
            tasks.push(t);
        }
    }
    if tasks.is_empty() {
        return Err(Error::NoExemplars(path.to_path_buf()));
    }
    Ok(tasks)
}

/// Scores `answer` against a known `reference`: 1.0 or 0.0.
///
/// A numeric reference matches the last number in the answer (commas, `$` and `%` ignored;
/// equal within 1e-6 relative). Any other reference matches when the answer, or its last
/// non-empty line, equals it after case folding, whitespace collapsing and trimming
/// punctuation at the ends.
pub fn match_reference(answer: &str, reference: &str) -> f64 {
    if let Some(want) = parse_number(reference.trim()) {
        let got = numbers(answer).last().copied();
        return match got {
            Some(g) if (g - want).abs() <= 1e-6 * want.abs().max(1.0) => 1.0,
            _ => 0.0,
        };
    }
    let norm = |s: &str| {
        s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase().trim_matches(|c: char| c.is_ascii_punctuation()).to_string()
    };
    let want = norm(reference);
    let last = answer.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
    (norm(answer) == want || norm(last) == want) as u8 as f64
}

fn parse_number(s: &str) -> Option<f64> {
    let cleaned: String = s.chars().filter(|c| !matches!(c, ',' | '$' | '%')).collect();
    cleaned.trim().parse::<f64>().ok().filter(|x| x.is_finite())
}

fn numbers(text: &str) -> Vec<f64> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let flush = |cur: &mut String, out: &mut Vec<f64>| {
        let t = cur.trim_end_matches(['.', ',']);
        if let Some(x) = parse_number(t) {
            out.push(x);
        }
        cur.clear();
    };
    for c in text.chars() {
        let starts_negative = c == '-' && cur.is_empty();
        if c.is_ascii_digit() || starts_negative || (!cur.is_empty() && matches!(c, '.' | ',')) {
            cur.push(c);
        } else {
            flush(&mut cur, &mut out);
        }
    }
    flush(&mut cur, &mut out);
    out
}

/// The judge's instructions: a 1–10 rating in `[[N]]`, mapped to `(N - 1) / 9`.
pub const JUDGE_RUBRIC: &str = "You are grading one answer to a user's request. Judge it as a demanding expert would: \
is it correct, complete for what was asked, and clear? Ignore style that does not affect usefulness, and do not \
reward length. Scale: 10 = fully correct and complete; 7-9 = correct with minor gaps; 4-6 = partly correct or \
missing important parts; 2-3 = mostly wrong or unhelpful; 1 = wrong, harmful or a refusal of a reasonable request. \
Reply with one short sentence of justification, then the rating exactly in the form: Rating: [[N]]";

/// The judge's prompt for one answer.
pub fn judge_prompt(task_prompt: &str, answer: &str) -> String {
    format!("{JUDGE_RUBRIC}\n\n[User request]\n{task_prompt}\n\n[Answer to grade]\n{answer}\n[End of answer]")
}

/// The judge's score in `[0, 1]` from its reply (the last `[[N]]`, N in 1..=10).
pub fn parse_judge_score(reply: &str) -> Option<f64> {
    reply
        .rmatch_indices("[[")
        .find_map(|(i, _)| {
            let rest = &reply[i + 2..];
            let end = rest.find("]]")?;
            rest[..end].trim().parse::<f64>().ok()
        })
        .filter(|n| (1.0..=10.0).contains(n))
        .map(|n| (n - 1.0) / 9.0)
}

/// The outcome of one (exemplar, model) call: one line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct CallRecord {
    /// [`journal::SCHEMA_VERSION`](crate::journal::SCHEMA_VERSION) when written (0: before versions).
    #[serde(default)]
    pub schema_version: u32,
    /// The exemplar's id.
    pub exemplar: String,
    /// The model's name (price table and providers file).
    pub model: String,
    /// Quality in `[0, 1]`; `None` when the call or its grading failed.
    pub quality: Option<f64>,
    /// How it was scored: `reference`, or `judge:<model>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scored_by: Option<String>,
    /// The answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    /// Prompt tokens billed.
    pub input_tokens: u64,
    /// Answer tokens billed.
    pub output_tokens: u64,
    /// `provider` (the usage fields) or `tiktoken` (counted, the provider gave none).
    pub tokens_from: String,
    /// USD of the model's call at the price table's rates.
    pub cost_usd: f64,
    /// USD of the judge's call, if one was made.
    #[serde(default)]
    pub judge_cost_usd: f64,
    /// Milliseconds of the successful attempt (0 on failure).
    pub latency_ms: u64,
    /// Attempts made.
    pub attempts: u32,
    /// What failed (`timeout`, `auth`, `rate_limited`, `server_error`, `truncated`,
    /// `malformed`, `refusal`, `empty`, `judge_*`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    /// The failure, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The append-only record of finished calls: one JSON line per call, written whole and synced
/// to disk before the next; reopening it recovers from a torn last line (see [`crate::journal`]).
pub type Journal = crate::journal::Journal<CallRecord>;

/// What [`Journal::open`] found.
pub type Recovered = crate::journal::Recovered<CallRecord>;

/// The journal beside an output file: `<out>.calls.jsonl`.
pub fn journal_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".calls.jsonl");
    out.with_file_name(name)
}

/// What a run will cost, before spending anything.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Estimate {
    /// Model calls.
    pub calls: u64,
    /// Judge calls (one per call on an exemplar without a reference).
    pub judge_calls: u64,
    /// Prompt tokens, all calls (tiktoken cl100k).
    pub input_tokens: u64,
    /// Answer tokens, all calls, at each endpoint's `max_tokens` (an upper bound).
    pub max_output_tokens: u64,
    /// USD at those token counts: an upper bound.
    pub max_usd: f64,
    /// Pairs already in the journal, not counted above.
    pub already_done: u64,
}

/// Sends tasks to models and records graded results.
#[derive(Debug, Clone)]
pub struct Grader {
    /// The models and where they are served.
    pub providers: Providers,
    /// Their prices (every provider model must be priced).
    pub prices: PriceTable,
    /// The models to grade (default: every model of `providers`).
    pub models: Vec<String>,
    /// The judge model (a name in `providers`), for tasks without a reference.
    pub judge: Option<String>,
    /// Calls in flight per provider group.
    pub concurrency: usize,
    /// The HTTP client.
    pub client: Client,
}

impl Grader {
    /// Checks that every model and the judge have an endpoint and a price, and that the judge
    /// is given when some task has no reference.
    pub fn check(&self, tasks: &[Task]) -> Result<()> {
        self.providers.check_prices(&self.prices)?;
        for m in self.models.iter().chain(&self.judge) {
            if self.providers.get(m).is_none() {
                return Err(Error::Config(format!(
                    "model `{m}` has no endpoint in the providers file (known: {})",
                    self.providers.names().collect::<Vec<_>>().join(", ")
                )));
            }
        }
        if self.judge.is_none() {
            if let Some(t) = tasks.iter().find(|t| t.reference.is_none()) {
                return Err(Error::Config(format!(
                    "exemplar {:?} has no `reference` answer, so a judge is needed: pass --judge <model>",
                    t.id
                )));
            }
        }
        if self.concurrency == 0 {
            return Err(Error::Config("concurrency must be at least 1".into()));
        }
        Ok(())
    }

    /// The pairs still to do, in task order.
    fn pending<'a>(&'a self, tasks: &'a [Task], done: &HashSet<(String, String)>) -> Vec<(&'a Task, &'a str)> {
        tasks
            .iter()
            .flat_map(|t| self.models.iter().map(move |m| (t, m.as_str())))
            .filter(|(t, m)| !done.contains(&(t.id.clone(), m.to_string())))
            .collect()
    }

    /// Calls, tokens and an upper bound of USD for the pairs not in `done`.
    pub fn estimate(&self, tasks: &[Task], done: &[CallRecord]) -> Result<Estimate> {
        let counter = TokenCounter::cl100k()?;
        let done_set: HashSet<(String, String)> = done.iter().map(|r| (r.exemplar.clone(), r.model.clone())).collect();
        let mut e = Estimate { calls: 0, judge_calls: 0, input_tokens: 0, max_output_tokens: 0, max_usd: 0.0, already_done: 0 };
        for (t, m) in self.pending(tasks, &done_set) {
            let ep = self.endpoint(m)?;
            let input = counter.count(&t.prompt);
            let out = ep.max_tokens() as u64;
            e.calls += 1;
            e.input_tokens += input;
            e.max_output_tokens += out;
            e.max_usd += self.prices.require(m, "the grading models")?.cost_usd(input, out);
            if t.reference.is_none() {
                if let Some(j) = &self.judge {
                    let jep = self.endpoint(j)?;
                    let jin = input + out + counter.count(JUDGE_RUBRIC) + 20;
                    e.judge_calls += 1;
                    e.input_tokens += jin;
                    e.max_output_tokens += jep.max_tokens() as u64;
                    e.max_usd += self.prices.require(j, "the judge")?.cost_usd(jin, jep.max_tokens() as u64);
                }
            }
        }
        e.already_done = done_set.len() as u64;
        Ok(e)
    }

    fn endpoint(&self, model: &str) -> Result<&Endpoint> {
        self.providers.get(model).ok_or_else(|| Error::Config(format!("model `{model}` has no endpoint")))
    }

    /// Grades every pair not already in `journal`, appending each record as it completes and
    /// handing it to `progress`. Keys are read from the environment first: a missing one stops
    /// the run before any call.
    pub async fn run(
        &self,
        tasks: &[Task],
        journal: &mut Journal,
        done: &[CallRecord],
        mut progress: impl FnMut(&CallRecord),
    ) -> Result<()> {
        self.check(tasks)?;
        let mut keys: HashMap<String, ApiKey> = HashMap::new();
        for m in self.models.iter().chain(&self.judge) {
            let ep = self.endpoint(m)?;
            if !keys.contains_key(&ep.api_key_env) {
                keys.insert(ep.api_key_env.clone(), ApiKey::from_env(&ep.api_key_env)?);
            }
        }
        let done_set: HashSet<(String, String)> = done.iter().map(|r| (r.exemplar.clone(), r.model.clone())).collect();
        let pending: Vec<(Task, String)> = self.pending(tasks, &done_set).into_iter().map(|(t, m)| (t.clone(), m.to_string())).collect();
        let mut limits: HashMap<String, Arc<tokio::sync::Semaphore>> = HashMap::new();
        for m in self.models.iter().chain(&self.judge) {
            let g = self.endpoint(m)?.group().to_string();
            limits.entry(g).or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.concurrency)));
        }
        let this = Arc::new(self.clone());
        let keys = Arc::new(keys);
        let limits = Arc::new(limits);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<CallRecord>(64);
        for (task, model) in pending {
            let (this, keys, limits, tx) = (this.clone(), keys.clone(), limits.clone(), tx.clone());
            tokio::spawn(async move {
                let record = this.grade_one(&task, &model, &keys, &limits).await;
                let _ = tx.send(record).await;
            });
        }
        drop(tx);
        while let Some(record) = rx.recv().await {
            journal.append(&record)?;
            progress(&record);
        }
        Ok(())
    }

    async fn grade_one(
        &self,
        task: &Task,
        model: &str,
        keys: &HashMap<String, ApiKey>,
        limits: &HashMap<String, Arc<tokio::sync::Semaphore>>,
    ) -> CallRecord {
        let ep = self.providers.get(model).expect("checked before the run");
        let price = self.prices.get(model).expect("checked before the run");
        let mut rec = CallRecord {
            schema_version: crate::journal::SCHEMA_VERSION,
            exemplar: task.id.clone(),
            model: model.to_string(),
            quality: None,
            scored_by: None,
            response: None,
            input_tokens: 0,
            output_tokens: 0,
            tokens_from: "provider".into(),
            cost_usd: 0.0,
            judge_cost_usd: 0.0,
            latency_ms: 0,
            attempts: 0,
            error_kind: None,
            error: None,
        };
        let (answer, waited) = {
            let _permit = limits[ep.group()].acquire().await.expect("semaphores are never closed");
            let started = std::time::Instant::now();
            let answer = self.client.complete(ep, &keys[&ep.api_key_env], &task.prompt).await;
            (answer, started.elapsed())
        };
        let c = match answer {
            Ok(c) => c,
            Err(e) => {
                // A failed call still took time (a timeout its whole length): record it.
                rec.latency_ms = waited.as_millis() as u64;
                rec.attempts = attempts_of(&e);
                rec.error_kind = Some(e.kind().into());
                rec.error = Some(e.to_string());
                return rec;
            }
        };
        rec.input_tokens = c.input_tokens;
        rec.output_tokens = c.output_tokens;
        rec.tokens_from = if c.usage_reported { "provider" } else { "tiktoken" }.into();
        rec.cost_usd = price.cost_usd(c.input_tokens, c.output_tokens);
        rec.latency_ms = c.latency.as_millis() as u64;
        rec.attempts = c.attempts;
        if let Some(reference) = &task.reference {
            rec.quality = Some(match_reference(&c.text, reference));
            rec.scored_by = Some("reference".into());
        } else if let Some(judge) = &self.judge {
            let jep = self.providers.get(judge).expect("checked before the run");
            let verdict = {
                let _permit = limits[jep.group()].acquire().await.expect("semaphores are never closed");
                self.client.complete(jep, &keys[&jep.api_key_env], &judge_prompt(&task.prompt, &c.text)).await
            };
            match verdict {
                Ok(j) => {
                    rec.judge_cost_usd = self.prices.get(judge).expect("checked").cost_usd(j.input_tokens, j.output_tokens);
                    match parse_judge_score(&j.text) {
                        Some(q) => {
                            rec.quality = Some(q);
                            rec.scored_by = Some(format!("judge:{judge}"));
                        }
                        None => {
                            rec.error_kind = Some("judge_unparsable".into());
                            rec.error =
                                Some(format!("the judge gave no [[1-10]] rating: {:?}", j.text.chars().take(200).collect::<String>()));
                        }
                    }
                }
                Err(e) => {
                    rec.error_kind = Some(format!("judge_{}", e.kind()));
                    rec.error = Some(format!("judge {judge}: {e}"));
                }
            }
        }
        rec.response = Some(c.text);
        rec
    }
}

fn attempts_of(e: &CallError) -> u32 {
    match e {
        CallError::Exhausted { attempts, .. } => *attempts,
        _ => 1,
    }
}

/// Writes the graded results as exemplar JSONL (atomically: a temporary file renamed over
/// `out`), one line per task with at least one scored model, in task order. Returns
/// (exemplars written, tasks left out because no model was scored).
pub fn write_results(tasks: &[Task], records: &[CallRecord], out: &Path, source: &str) -> Result<(usize, usize)> {
    let mut by_task: BTreeMap<&str, Vec<&CallRecord>> = BTreeMap::new();
    for r in records {
        by_task.entry(r.exemplar.as_str()).or_default().push(r);
    }
    let mut text = String::new();
    let (mut written, mut left_out) = (0, 0);
    for t in tasks {
        let recs = by_task.get(t.id.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        let mut results = serde_json::Map::new();
        let mut calls = serde_json::Map::new();
        for r in recs {
            if let Some(q) = r.quality {
                results
                    .insert(r.model.clone(), serde_json::json!({"quality": q, "output_tokens": r.output_tokens, "cost_usd": r.cost_usd}));
            }
            let mut call = serde_json::to_value(r).expect("serialisable");
            let obj = call.as_object_mut().expect("an object");
            obj.remove("exemplar");
            obj.remove("model");
            calls.insert(r.model.clone(), call);
        }
        if results.is_empty() {
            left_out += 1;
            continue;
        }
        let mut line = serde_json::json!({
            "id": t.id, "prompt": t.prompt, "category": t.category, "language": t.language,
            "source": source, "results": Value::Object(results), "calls": Value::Object(calls),
        });
        if let Some(r) = &t.reference {
            line["reference"] = Value::String(r.clone());
        }
        text.push_str(&line.to_string());
        text.push('\n');
        written += 1;
    }
    let tmp = out.with_extension("jsonl.tmp");
    std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
    File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    Ok((written, left_out))
}
