//! Choosing a model: the cheapest one whose predicted quality clears the bar, within the
//! request's [`Constraints`], with a safe fallback when the exemplars know nothing close. Where
//! models priced alike that clear the bar differ in predicted cost by less than the costs'
//! uncertainty (see [`Candidate::cost_se_usd`]), quality decides among them.
//!
//! ```
//! use semroute::policy::Constraints;
//!
//! // Only US or EU providers, never more than a cent per prompt, and no Opus.
//! let c = Constraints::default()
//!     .allow_jurisdictions(["US", "EU"])
//!     .block_models(["claude-opus-4-1"])
//!     .max_cost_usd(0.01);
//! assert_eq!(c.max_cost_usd, Some(0.01));
//! ```

use serde::{Deserialize, Serialize};

use crate::chat::Usage;
use crate::decision::Candidate;
use crate::predict::{ModelPrediction, Predictions};
use crate::pricing::{ModelPrice, PriceTable};
use crate::session::CacheView;

/// Per-request limits on which models may be chosen. Empty lists mean "no limit".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Constraints {
    /// If not empty, only these providers.
    pub allow_providers: Vec<String>,
    /// Never these providers.
    pub block_providers: Vec<String>,
    /// If not empty, only these models.
    pub allow_models: Vec<String>,
    /// Never these models.
    pub block_models: Vec<String>,
    /// If not empty, only providers whose jurisdiction is listed (models without one are excluded).
    pub allow_jurisdictions: Vec<String>,
    /// Never providers of these jurisdictions.
    pub block_jurisdictions: Vec<String>,
    /// Upper bound on the expected USD of one prompt.
    pub max_cost_usd: Option<f64>,
    /// Overrides the router's quality bar for this request.
    pub quality_bar: Option<f64>,
    /// Chooses by utility instead of a bar: the model maximising predicted quality × this many
    /// USD minus its expected cost (CARROT's rule; the USD one full point of quality, 0 → 1, is
    /// worth to the caller on this prompt). Cannot be combined with `quality_bar`.
    pub usd_per_quality: Option<f64>,
}

fn strings<I: IntoIterator<Item = S>, S: Into<String>>(items: I) -> Vec<String> {
    items.into_iter().map(Into::into).collect()
}

impl Constraints {
    /// Only these providers.
    pub fn allow_providers<I: IntoIterator<Item = S>, S: Into<String>>(mut self, p: I) -> Self {
        self.allow_providers = strings(p);
        self
    }
    /// Never these providers.
    pub fn block_providers<I: IntoIterator<Item = S>, S: Into<String>>(mut self, p: I) -> Self {
        self.block_providers = strings(p);
        self
    }
    /// Only these models.
    pub fn allow_models<I: IntoIterator<Item = S>, S: Into<String>>(mut self, m: I) -> Self {
        self.allow_models = strings(m);
        self
    }
    /// Never these models.
    pub fn block_models<I: IntoIterator<Item = S>, S: Into<String>>(mut self, m: I) -> Self {
        self.block_models = strings(m);
        self
    }
    /// Only these jurisdictions.
    pub fn allow_jurisdictions<I: IntoIterator<Item = S>, S: Into<String>>(mut self, j: I) -> Self {
        self.allow_jurisdictions = strings(j);
        self
    }
    /// Never these jurisdictions.
    pub fn block_jurisdictions<I: IntoIterator<Item = S>, S: Into<String>>(mut self, j: I) -> Self {
        self.block_jurisdictions = strings(j);
        self
    }
    /// At most this many USD per prompt.
    pub fn max_cost_usd(mut self, usd: f64) -> Self {
        self.max_cost_usd = Some(usd);
        self
    }
    /// A quality bar for this request.
    pub fn quality_bar(mut self, bar: f64) -> Self {
        self.quality_bar = Some(bar);
        self
    }
    /// Choose by utility for this request: maximise predicted quality × `usd` − expected cost.
    pub fn usd_per_quality(mut self, usd: f64) -> Self {
        self.usd_per_quality = Some(usd);
        self
    }

    /// The objective of this request, given the router's own.
    pub fn objective(&self, default: Objective) -> Objective {
        match (self.usd_per_quality, self.quality_bar) {
            (Some(usd), _) => Objective::UsdPerQuality(usd),
            (None, Some(bar)) => Objective::QualityBar(bar),
            (None, None) => default,
        }
    }

    /// Why `model` is excluded by the provider / model / jurisdiction rules, if it is.
    fn rule_out(&self, model: &str, price: &ModelPrice) -> Option<String> {
        let eq = |a: &String, b: &str| a.eq_ignore_ascii_case(b);
        if !self.allow_models.is_empty() && !self.allow_models.iter().any(|m| eq(m, model)) {
            return Some("not in the allowed models".into());
        }
        if self.block_models.iter().any(|m| eq(m, model)) {
            return Some("model is blocked".into());
        }
        if !self.allow_providers.is_empty() && !self.allow_providers.iter().any(|p| eq(p, &price.provider)) {
            return Some(format!("provider {} is not allowed", price.provider));
        }
        if self.block_providers.iter().any(|p| eq(p, &price.provider)) {
            return Some(format!("provider {} is blocked", price.provider));
        }
        let j = price.jurisdiction.as_deref();
        if !self.allow_jurisdictions.is_empty() && !j.is_some_and(|j| self.allow_jurisdictions.iter().any(|a| eq(a, j))) {
            return Some(format!("jurisdiction {} is not allowed", j.unwrap_or("unknown")));
        }
        if let Some(j) = j.filter(|j| self.block_jurisdictions.iter().any(|b| eq(b, j))) {
            return Some(format!("jurisdiction {j} is blocked"));
        }
        None
    }
}

/// What the policy optimises among the models that pass the constraints.
///
/// ```
/// use semroute::policy::Objective;
///
/// assert_eq!(Objective::QualityBar(0.8).check(), Ok(()));
/// assert!(Objective::UsdPerQuality(-1.0).check().is_err());
/// assert_eq!(serde_json::to_string(&Objective::UsdPerQuality(0.01)).unwrap(), r#"{"usd_per_quality":0.01}"#);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Objective {
    /// The cheapest model whose predicted quality reaches this bar, in `[0, 1]` (among models
    /// priced alike whose costs cannot be told apart, the best; see [`Candidate::cost_se_usd`]);
    /// when none does,
    /// the highest predicted quality, where the safe (fallback) model gives way only to a model
    /// whose lower bound is above the safe model's prediction.
    QualityBar(f64),
    /// The model maximising `predicted quality × usd − expected cost`, where `usd` (≥ 0) is what
    /// one full point of quality is worth: 0 picks the cheapest model, larger values buy quality.
    /// A model predicted better than the fallback (safe) model is credited with that gain only
    /// as far as its lower bound (predicted quality less caution × standard error) reaches, so a
    /// lucky-looking prediction among many does not draw the choice away from the safe model.
    /// Among models priced alike with the winner whose costs cannot be told from its, the one
    /// with the best quality.
    UsdPerQuality(f64),
}

impl Objective {
    /// Whether the knob is in range (a bar in `[0, 1]`, a finite non-negative USD amount).
    pub fn check(&self) -> std::result::Result<(), String> {
        match *self {
            Objective::QualityBar(b) if !(0.0..=1.0).contains(&b) => Err(format!("quality_bar must be within [0, 1], got {b}")),
            Objective::UsdPerQuality(u) if !(u.is_finite() && u >= 0.0) => {
                Err(format!("usd_per_quality must be a finite, non-negative amount, got {u}"))
            }
            _ => Ok(()),
        }
    }

    /// The knob's value (the bar, or the USD per quality point).
    pub fn knob(&self) -> f64 {
        match *self {
            Objective::QualityBar(v) | Objective::UsdPerQuality(v) => v,
        }
    }
}

/// The outcome of [`choose`]: the candidates (cheapest first) and which one won.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// Every priced model, cheapest expected cost first.
    pub candidates: Vec<Candidate>,
    /// Index into `candidates` of the chosen model, or `None` when every model is excluded.
    pub chosen: Option<usize>,
    /// Whether the fallback model was used.
    pub fallback: bool,
    /// Why.
    pub reason: String,
    /// Indices into `candidates` of every eligible model in the order this same rule picks them
    /// when the ones before are taken away: the chosen model first, then what to fail over to.
    pub order: Vec<usize>,
}

/// The inputs of one choice.
#[derive(Debug, Clone, Copy)]
pub struct ChoiceInput<'a> {
    /// Predictions from the neighbours.
    pub predictions: &'a Predictions,
    /// Prices of every model.
    pub prices: &'a PriceTable,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Why the exemplars are not trusted for this prompt, if they are not (see
    /// [`familiar`](crate::familiar)): then the fallback model is used.
    pub unfamiliar: Option<&'a str>,
    /// What the choice optimises.
    pub objective: Objective,
    /// Standard errors by which a predicted quality must clear the bar (0: the point
    /// prediction alone).
    pub caution: f64,
    /// The safe model used when the exemplars are not trusted.
    pub fallback_model: &'a str,
    /// Answer length assumed for models without a prediction.
    pub default_output_tokens: u64,
    /// In an agent session, the prompt cache one model holds: costs then count it, and spread
    /// the price of building a cache elsewhere over the session's horizon (see
    /// [`session`](crate::session)).
    pub cache: Option<&'a CacheView>,
}

/// Chooses a model (see the module docs).
pub fn choose(input: ChoiceInput<'_>, constraints: &Constraints) -> Choice {
    let (mut candidates, priced_by) = priced(&input);
    let bar = restrict(&mut candidates, &priced_by, &input, constraints);
    let mut skip = vec![false; candidates.len()];
    let Some((chosen, fallback, why)) = pick(&candidates, &priced_by, &input, bar, &skip) else {
        return Choice { candidates, chosen: None, fallback: false, reason: "every model is excluded".into(), order: Vec::new() };
    };
    let mut reason = why.text(&candidates[chosen], input.fallback_model);
    if let Some(why) = input.cache.and_then(|cache| session_reason(&candidates, chosen, cache, bar, input.caution)) {
        reason.push_str("; ");
        reason.push_str(&why);
    }
    // The failover order: the same rule again, each time without the models already taken.
    let mut order = vec![chosen];
    skip[chosen] = true;
    while let Some((next, _, _)) = pick(&candidates, &priced_by, &input, bar, &skip) {
        order.push(next);
        skip[next] = true;
    }
    Choice { candidates, chosen: Some(chosen), fallback, reason, order }
}

/// [`choose`] for one prompt under each of `each` (an objective with its constraints): the
/// candidates, priced once (their costs and predictions do not depend on the constraints), and
/// the index among them of the model each choice takes, the same as [`choose`]'s (`None` where
/// every model is excluded). For a benchmark that decides every prompt under many knobs and reads
/// only which model won: the candidates' exclusions and bar are set anew for each, and no reason
/// or failover order is written out.
pub(crate) fn choose_each(input: ChoiceInput<'_>, each: &[(Objective, &Constraints)]) -> (Vec<Candidate>, Vec<Option<usize>>) {
    let (mut candidates, priced_by) = priced(&input);
    let skip = vec![false; candidates.len()];
    let chosen = each
        .iter()
        .map(|&(objective, constraints)| {
            let input = ChoiceInput { objective, ..input };
            let bar = restrict(&mut candidates, &priced_by, &input, constraints);
            pick(&candidates, &priced_by, &input, bar, &skip).map(|(i, _, _)| i)
        })
        .collect();
    (candidates, chosen)
}

/// Every priced model as a candidate for `input`'s prompt, cheapest first (by the cost over the
/// session's horizon in a session, else this call's; by name on ties), before any constraint:
/// none excluded, none clearing a bar ([`restrict`] sets both); with each one's price entry.
fn priced<'a>(input: &ChoiceInput<'a>) -> (Vec<Candidate>, Vec<&'a ModelPrice>) {
    let ChoiceInput { predictions, prices, input_tokens, .. } = *input;
    let mut candidates: Vec<(Candidate, &ModelPrice)> = prices
        .iter()
        .map(|(model, price)| {
            let p = predictions.per_model.get(model);
            let out = p.map_or(input.default_output_tokens, |p| p.output_tokens.round().max(0.0) as u64);
            let (cost, cached, session_cost) = match input.cache {
                // A measured cost knows nothing of this session's cache: tokens × price.
                Some(cache) => {
                    let (now, per_step, cached) = session_costs(price, model, cache, input_tokens, out);
                    (now, Some(cached), Some(per_step))
                }
                // A measured cost (the neighbours') where known, else answer tokens × list price.
                None => (p.and_then(|p| p.cost_usd).unwrap_or_else(|| price.cost_usd(input_tokens, out)), None, None),
            };
            // The cost's uncertainty: the measured cost's where it is priced by one, else the
            // answer length's at the output price.
            let cost_se = match p {
                Some(p) if input.cache.is_none() && p.cost_usd.is_some() => p.cost_se_usd.unwrap_or(0.0),
                Some(p) => p.output_tokens_se * price.output_per_mtok / 1_000_000.0,
                None => 0.0,
            };
            let candidate = Candidate {
                model: model.to_string(),
                provider: price.provider.clone(),
                tier: price.tier,
                predicted_quality: p.map(|p| p.quality),
                quality_se: p.map(ModelPrediction::standard_error),
                predicted_output_tokens: out,
                expected_cost_usd: cost,
                cost_se_usd: cost_se.max(0.0),
                cached_tokens: cached,
                session_cost_usd: session_cost,
                clears_bar: false,
                excluded: None,
            };
            (candidate, price)
        })
        .collect();
    let rank = |c: &Candidate| c.session_cost_usd.unwrap_or(c.expected_cost_usd);
    candidates.sort_by(|(a, _), (b, _)| rank(a).total_cmp(&rank(b)).then_with(|| a.model.cmp(&b.model)));
    candidates.into_iter().unzip()
}

/// Among the eligible candidates (those `ok` allows) priced alike with `i` (the same list
/// prices for prompt and answer, so that their costs differ only by their predicted answer
/// lengths) and whose cost is not told apart from `i`'s (their intervals of `caution` standard
/// errors overlap), the one with the highest lower bound on quality; `i` itself on ties. The
/// shortest of many alike-priced models' noisy length predictions is short partly by luck:
/// where their costs cannot be told apart, quality decides. (Models priced apart differ in
/// cost mostly by their prices, which are known; and their lengths' errors, largely the
/// prompt's own, move together, so their separate errors would overstate how uncertain the
/// difference is.)
fn best_of_tied(candidates: &[Candidate], prices: &[&ModelPrice], i: usize, caution: f64, ok: &dyn Fn(usize) -> bool) -> usize {
    let cost = |c: &Candidate| c.session_cost_usd.unwrap_or(c.expected_cost_usd);
    let lower = |c: &Candidate| c.predicted_quality.map_or(f64::NEG_INFINITY, |q| q - caution * c.quality_se.unwrap_or(0.0));
    let list = |j: usize| (prices[j].input_per_mtok, prices[j].output_per_mtok);
    let (ci, si) = (cost(&candidates[i]), candidates[i].cost_se_usd);
    let mut best = i;
    for (j, c) in candidates.iter().enumerate() {
        let tied = (cost(c) - ci).abs() <= caution * (si + c.cost_se_usd) && list(j) == list(i);
        if j != best && tied && ok(j) && lower(c) > lower(&candidates[best]) {
            best = j;
        }
    }
    best
}

/// Sets which of `candidates` `constraints` exclude (the provider, model and jurisdiction rules,
/// then the context window, then the cost limit: the first that applies says why) and which
/// clear the bar of `input`'s objective with its caution; returns that bar (infinite under the
/// utility objective, which holds no model to one).
fn restrict(candidates: &mut [Candidate], prices: &[&ModelPrice], input: &ChoiceInput<'_>, constraints: &Constraints) -> f64 {
    let bar = match input.objective {
        Objective::QualityBar(b) => b,
        Objective::UsdPerQuality(_) => f64::INFINITY,
    };
    let input_tokens = input.input_tokens;
    for (c, price) in candidates.iter_mut().zip(prices) {
        let (out, cost) = (c.predicted_output_tokens, c.expected_cost_usd);
        let mut excluded = constraints.rule_out(&c.model, price).or_else(|| {
            price
                .context_window
                .filter(|w| input_tokens.saturating_add(out) > *w)
                .map(|window| format!("prompt ({input_tokens} tokens) + answer ({out}) exceed its context window of {window}"))
        });
        if excluded.is_none() {
            if let Some(max) = constraints.max_cost_usd.filter(|max| cost > *max) {
                excluded = Some(format!("expected cost ${cost:.6} is over the limit ${max:.6}"));
            }
        }
        c.excluded = excluded;
        c.clears_bar = c.predicted_quality.is_some_and(|q| q - input.caution * c.quality_se.unwrap_or(0.0) + 1e-9 >= bar);
    }
    bar
}

/// The policy's rule: which of the candidates not `skip`ped and not excluded to take, whether
/// that is the fallback, and why (as numbers: only the chosen model's reason is ever written out,
/// and writing one for every step of the failover order was most of what a benchmark spent
/// choosing). `None` when none is left. `prices`: each candidate's price entry.
fn pick<'a>(
    candidates: &[Candidate],
    prices: &[&ModelPrice],
    input: &ChoiceInput<'a>,
    bar: f64,
    skip: &[bool],
) -> Option<(usize, bool, Why<'a>)> {
    let eligible = |i: usize| candidates[i].excluded.is_none() && !skip[i];
    let best = |score: &dyn Fn(&Candidate) -> f64| best_by(candidates, skip, score);
    if !(0..candidates.len()).any(eligible) {
        return None;
    }
    // The safe (fallback) model, if it is allowed: what an unfamiliar prompt gets, and what a
    // noisy prediction must surely beat to draw the choice away.
    let safe = (0..candidates.len()).find(|&i| eligible(i) && candidates[i].model == input.fallback_model);
    let safe_quality = safe.and_then(|i| candidates[i].predicted_quality);

    if let Some(why) = input.unfamiliar {
        return Some(match safe {
            Some(i) => (i, true, Why::Fallback { why, excluded: false }),
            // The fallback itself is excluded: take the highest tier allowed, cheapest within it.
            None => (best(&|c| c.tier.map_or(-1.0, |t| f64::from(t as u8)))?, true, Why::Fallback { why, excluded: true }),
        });
    }

    if let Objective::UsdPerQuality(usd) = input.objective {
        if (0..candidates.len()).any(|i| eligible(i) && candidates[i].predicted_quality.is_some()) {
            // A model predicted better than the safe model is credited with that gain only as far
            // as its lower bound (predicted quality less `caution` standard errors) reaches: the
            // largest of many noisy predictions is high partly by luck (the optimiser's curse),
            // so a gain that may be noise does not draw the choice away from the safe model.
            // Predictions at or below the safe model's count as they are. With no caution (or no
            // safe model allowed) this is plain utility.
            let utility = |c: &Candidate, cautious: bool| {
                let cost = c.session_cost_usd.unwrap_or(c.expected_cost_usd);
                c.predicted_quality.map_or(f64::NEG_INFINITY, |q| {
                    let q = match safe_quality {
                        Some(s) if cautious && q > s => s.max(q - input.caution * c.quality_se.unwrap_or(0.0)),
                        _ => q,
                    };
                    q * usd - cost
                })
            };
            let first = best(&|c| utility(c, true))?;
            // Among models priced alike whose cost cannot be told from the winner's, quality
            // decides; the safe model, once its guard has kept it, stays.
            let i = match safe {
                Some(s) if s == first => first,
                _ => best_of_tied(candidates, prices, first, input.caution, &|j| eligible(j) && candidates[j].predicted_quality.is_some()),
            };
            let tied = i != first;
            // Whether plain utility would have left the safe model (asked only when it is kept).
            let kept_safe = !tied && candidates[i].model == input.fallback_model && best(&|c| utility(c, false)) != Some(i);
            return Some((i, false, Why::Utility { usd, utility: utility(&candidates[i], false), kept_safe, tied }));
        }
    } else if let Some(i) = (0..candidates.len()).find(|&i| eligible(i) && candidates[i].clears_bar) {
        // Among the models priced alike that clear the bar at a cost that cannot be told from the
        // cheapest's, quality decides.
        let first = i;
        let i = best_of_tied(candidates, prices, first, input.caution, &|j| eligible(j) && candidates[j].clears_bar);
        return Some((i, false, Why::Clears { bar, caution: input.caution, tied: i != first }));
    }
    // Nothing clears the bar (or nothing is predicted): the best predicted quality, cheapest
    // among equals; with caution, the best lower bound (a model whose high prediction rests on
    // one lucky neighbour is not the safe choice). The safe model keeps the choice unless
    // another's lower bound is above the safe model's own prediction: the guard of the utility
    // objective at its highest price, and for the same reason (the best of many noisy lower
    // bounds is high partly by luck, and the safe model is best on average).
    let lower = |c: &Candidate| c.predicted_quality.map_or(-1.0, |q| q - input.caution * c.quality_se.unwrap_or(0.0));
    let i = best(&lower)?;
    let (i, kept_safe) = match (safe, safe_quality) {
        (Some(s), Some(q)) if s != i && lower(&candidates[i]) <= q => (s, true),
        _ => (i, false),
    };
    Some((i, false, Why::NoneClears { objective: input.objective, bar, caution: input.caution, kept_safe }))
}

/// Why [`pick`] took a model, written out only for the chosen one. `kept_safe`: the safe model
/// was kept because no other model's gain survives its uncertainty; `tied`: the model was taken
/// over the rule's first pick, whose cost could not be told from its own, for its quality
/// ([`best_of_tied`]).
#[derive(Debug, Clone, Copy)]
enum Why<'a> {
    Fallback { why: &'a str, excluded: bool },
    Utility { usd: f64, utility: f64, kept_safe: bool, tied: bool },
    Clears { bar: f64, caution: f64, tied: bool },
    NoneClears { objective: Objective, bar: f64, caution: f64, kept_safe: bool },
}

impl Why<'_> {
    fn text(&self, c: &Candidate, fallback_model: &str) -> String {
        let mut text = self.main_text(c, fallback_model);
        if let Why::Utility { tied: true, .. } | Why::Clears { tied: true, .. } = self {
            text.push_str(&format!(
                "; taken over a model predicted cheaper by less than their costs' uncertainty (this one ${:.6} ± {:.6}), for its higher quality",
                c.expected_cost_usd, c.cost_se_usd
            ));
        }
        text
    }

    fn main_text(&self, c: &Candidate, fallback_model: &str) -> String {
        let q = c.predicted_quality.unwrap_or_default();
        let se = c.quality_se.unwrap_or_default();
        match *self {
            Why::Fallback { why, excluded: false } => format!("fallback to the safe model {fallback_model}: {why}"),
            Why::Fallback { why, excluded: true } => {
                format!("fallback: {why}; the safe model {fallback_model} is excluded, so the strongest allowed tier")
            }
            Why::Utility { usd, utility, kept_safe: false, .. } => format!(
                "highest utility at ${usd} per quality point: predicted quality {q:.2} for ${:.6} (utility ${utility:.6})",
                c.expected_cost_usd
            ),
            Why::Utility { usd, utility, kept_safe: true, .. } => format!(
                "the safe model at ${usd} per quality point: predicted quality {q:.2} for ${:.6} (utility ${utility:.6}); \
                 no other model's higher utility survives its quality's uncertainty",
                c.expected_cost_usd
            ),
            Why::Clears { bar, caution, .. } if caution > 0.0 => format!(
                "cheapest model whose predicted quality {q:.2} ± {se:.2} clears the bar {bar:.2}{} ({:.2})",
                by_errors(caution),
                q - caution * se
            ),
            Why::Clears { bar, .. } => format!("cheapest model whose predicted quality {q:.2} clears the bar {bar:.2}"),
            Why::NoneClears { objective: Objective::QualityBar(_), bar, kept_safe: true, .. } => format!(
                "no model is predicted to clear the bar {bar:.2}; the safe model (predicted quality {q:.2} ± {se:.2}): \
                 no other model's lower bound rises above its prediction"
            ),
            Why::NoneClears { objective: Objective::QualityBar(_), bar, caution, .. } if caution > 0.0 => format!(
                "no model is predicted to clear the bar {bar:.2}{}; the highest lower bound: predicted quality {q:.2} ± {se:.2}",
                by_errors(caution)
            ),
            Why::NoneClears { objective: Objective::QualityBar(_), bar, .. } => {
                format!("no model is predicted to clear the bar {bar:.2}; highest predicted quality {q:.2}")
            }
            Why::NoneClears { .. } => format!("no model has a prediction; highest predicted quality {q:.2}"),
        }
    }
}

/// One model's cost in a session: this step's (its cached prefix at the cached price, a write
/// premium on the rest where the provider bills one), the cost per step over the horizon (this
/// step, then steps that find the prompt cached and add only what the conversation grows by), and
/// the tokens it has cached.
fn session_costs(price: &ModelPrice, model: &str, cache: &CacheView, input: u64, out: u64) -> (f64, f64, u64) {
    // A prefix under the provider's minimum is not cached (nor written) at all.
    let cacheable = input >= price.cache_min_tokens();
    let write = |uncached: u64| if cacheable && price.cache_write_per_mtok.is_some() { uncached } else { 0 };
    let cached = match &cache.held {
        Some((m, held)) if m == model && cacheable && *held >= price.cache_min_tokens() => (*held).min(input),
        _ => 0,
    };
    let now = price.cost_of(&Usage { cached_input_tokens: cached, cache_write_tokens: write(input - cached), ..Usage::new(input, out) });
    let new = if cacheable { cache.new_tokens.min(input) } else { input };
    let steady = price.cost_of(&Usage { cached_input_tokens: input - new, cache_write_tokens: write(new), ..Usage::new(input, out) });
    let h = cache.horizon.max(1.0);
    (now, (now + (h - 1.0) * steady) / h, cached)
}

/// Why a session step stays or switches; `None` when nothing is cached (the router says why).
fn session_reason(candidates: &[Candidate], chosen: usize, cache: &CacheView, bar: f64, caution: f64) -> Option<String> {
    let c = &candidates[chosen];
    let per_step = c.session_cost_usd.unwrap_or(c.expected_cost_usd);
    let (previous, _) = cache.held.as_ref()?;
    let Some(before) = candidates.iter().find(|x| x.model == *previous) else {
        return Some(format!("the session's previous model {previous} is not priced now"));
    };
    let h = cache.horizon;
    if c.model == *previous {
        return Some(match c.cached_tokens.unwrap_or(0) {
            0 => format!("stays on {}, the cheapest eligible model (nothing cached: the prompt is under its provider's minimum)", c.model),
            n => format!(
                "stays on {}: {n} cached tokens make this step ${:.6}; ${per_step:.6} a step over the expected {}",
                c.model,
                c.expected_cost_usd,
                steps(h)
            ),
        });
    }
    if let Some(why) = &before.excluded {
        return Some(format!("switches from {previous}: {why}"));
    }
    if bar.is_finite() && !before.clears_bar {
        let q = before.predicted_quality.map_or(String::from("none"), |q| format!("{q:.2}"));
        return Some(format!("switches from {previous}: its predicted quality {q} does not clear the bar {bar:.2}{}", by_errors(caution)));
    }
    let stay = before.session_cost_usd.unwrap_or(before.expected_cost_usd);
    Some(if per_step < stay {
        format!(
            "switches from {} to {}: ${per_step:.6} a step against ${stay:.6} over the expected {}, \
             building a new cache (this step ${:.6}) and giving up {} cached tokens",
            previous,
            c.model,
            steps(h),
            c.expected_cost_usd,
            before.cached_tokens.unwrap_or(0)
        )
    } else {
        format!(
            "switches from {} to {}: worth ${:.6} a step more than the ${stay:.6} of staying, for its predicted quality",
            previous,
            c.model,
            per_step - stay
        )
    })
}

/// " by 1 standard error", " by 1.5 standard errors"; nothing for 0.
fn by_errors(z: f64) -> String {
    match z {
        0.0 => String::new(),
        1.0 => " by 1 standard error".into(),
        z => format!(" by {z} standard errors"),
    }
}

/// "1 step", "4 steps".
fn steps(h: f64) -> String {
    if h == 1.0 {
        "1 step".into()
    } else {
        format!("{h:.0} steps")
    }
}

fn best_by(candidates: &[Candidate], skip: &[bool], score: &dyn Fn(&Candidate) -> f64) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, c) in candidates.iter().enumerate().filter(|(i, c)| c.excluded.is_none() && !skip[*i]) {
        let s = score(c);
        if best.is_none_or(|(_, b)| s > b + 1e-12) {
            best = Some((i, s));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prices() -> PriceTable {
        let m = |name: &str, out: f64, tier: &str| {
            format!("[models.{name}]\nprovider = \"p{name}\"\ninput_per_mtok = 0.0\noutput_per_mtok = {out}\ntier = \"{tier}\"\nsource = \"test\"\nas_of = \"2025\"\n")
        };
        PriceTable::from_toml_str(&(m("a", 1.0, "cheap") + &m("b", 10.0, "mid") + &m("c", 100.0, "strong")), "t.toml").unwrap()
    }

    /// a: quality 0.5, $0.001; b: 0.8, $0.01; c: 0.9, $0.1 (1,000 answer tokens each).
    fn predictions() -> Predictions {
        let p = |q| ModelPrediction {
            quality: q,
            output_tokens: 1000.0,
            support: 1.0,
            effective_neighbours: 8.0,
            cost_usd: None,
            quality_se: None,
            output_tokens_se: 0.0,
            cost_se_usd: None,
        };
        Predictions {
            per_model: [("a", p(0.5)), ("b", p(0.8)), ("c", p(0.9))].into_iter().map(|(m, p)| (m.to_string(), p)).collect(),
            weights: vec![1.0],
        }
    }

    /// The input of a choice for `p` priced by `t`: no prompt tokens, a close neighbour known, no
    /// session.
    fn input<'a>(p: &'a Predictions, t: &'a PriceTable, objective: Objective, caution: f64, fallback_model: &'a str) -> ChoiceInput<'a> {
        ChoiceInput {
            predictions: p,
            prices: t,
            input_tokens: 0,
            unfamiliar: None,
            objective,
            caution,
            fallback_model,
            default_output_tokens: 500,
            cache: None,
        }
    }

    /// The choice for `p` under `objective`, a close neighbour known.
    fn choice(p: &Predictions, objective: Objective) -> Choice {
        let t = prices();
        choose(input(p, &t, objective, 0.0, "c"), &Constraints::default())
    }

    fn pick(objective: Objective) -> (String, String) {
        let c = choice(&predictions(), objective);
        let i = c.chosen.unwrap();
        (c.candidates[i].model.clone(), c.reason)
    }

    #[test]
    fn where_costs_cannot_be_told_apart_quality_decides() {
        // x and y are priced alike ($1 per million answer tokens), w a little more ($1.05), z ten
        // times more; the safe model is z. x is predicted cheaper ($0.0010 against $0.0011) by
        // less than the two costs' uncertainty ($0.0002 each), and worse (0.5 against 0.7). w's
        // cost ($0.00105) is as uncertain and its quality better still (0.8), but it is priced
        // apart: its lower price is known, not predicted.
        let m = |name: &str, out: f64| {
            format!(
                "[models.{name}]\nprovider = \"p\"\ninput_per_mtok = 0.0\noutput_per_mtok = {out}\nsource = \"test\"\nas_of = \"2025\"\n"
            )
        };
        let t = PriceTable::from_toml_str(&(m("x", 1.0) + &m("y", 1.0) + &m("w", 1.05) + &m("z", 10.0)), "t.toml").unwrap();
        let p = |quality, output_tokens, output_tokens_se| ModelPrediction {
            quality,
            output_tokens,
            support: 1.0,
            effective_neighbours: 8.0,
            cost_usd: None,
            quality_se: Some(0.05),
            output_tokens_se,
            cost_se_usd: None,
        };
        let predictions = |se: f64| Predictions {
            per_model: [("x", p(0.5, 1000.0, se)), ("y", p(0.7, 1100.0, se)), ("w", p(0.8, 1000.0, se)), ("z", p(0.9, 1000.0, 10.0))]
                .into_iter()
                .map(|(m, p)| (m.to_string(), p))
                .collect(),
            weights: vec![1.0],
        };
        let at = |p: &Predictions, objective: Objective, caution: f64| {
            let c = choose(input(p, &t, objective, caution, "z"), &Constraints::default());
            let chosen = &c.candidates[c.chosen.unwrap()];
            (chosen.model.clone(), chosen.cost_se_usd, c.reason)
        };
        let loose = predictions(200.0);
        // With caution 1 the intervals overlap (0.0001 apart, 0.0004 of uncertainty): y.
        let (m, se, reason) = at(&loose, Objective::QualityBar(0.4), 1.0);
        assert_eq!(m, "y");
        assert!((se - 0.0002).abs() < 1e-12, "{se}");
        assert!(reason.contains("predicted cheaper by less than their costs' uncertainty"), "{reason}");
        // The same at no quality price at all: the cheapest is not told apart, so quality decides.
        assert_eq!(at(&loose, Objective::UsdPerQuality(0.0), 1.0).0, "y");
        // Without caution, or with costs known to ten tokens, x is the cheaper: x.
        assert_eq!(at(&loose, Objective::QualityBar(0.4), 0.0).0, "x");
        let (m, _, reason) = at(&predictions(10.0), Objective::QualityBar(0.4), 1.0);
        assert_eq!(m, "x");
        assert!(!reason.contains("uncertainty"), "{reason}");
        assert_eq!(at(&predictions(10.0), Objective::UsdPerQuality(0.0), 1.0).0, "x");
        // Only models that clear the bar are weighed: at 0.85 (z alone clears it, by its lower
        // bound), z.
        assert_eq!(at(&loose, Objective::QualityBar(0.85), 1.0).0, "z");
    }

    #[test]
    fn utility_trades_quality_for_cost_as_priced() {
        // Utility q·u − cost: at u = 0 the cheapest; at u = $0.1 per point b (0.08 − 0.01 = 0.07)
        // beats a (0.05 − 0.001) and c (0.09 − 0.1); at u = $10 the best, c.
        assert_eq!(pick(Objective::UsdPerQuality(0.0)).0, "a");
        assert_eq!(pick(Objective::UsdPerQuality(0.1)).0, "b");
        let (m, reason) = pick(Objective::UsdPerQuality(10.0));
        assert_eq!(m, "c");
        assert!(reason.contains("utility"), "{reason}");
        // The bar: the cheapest that clears it; none does at 0.95, so the best.
        assert_eq!(pick(Objective::QualityBar(0.7)).0, "b");
        assert_eq!(pick(Objective::QualityBar(0.95)).0, "c");
    }

    #[test]
    fn under_a_utility_the_safe_model_gives_way_only_to_a_sure_gain() {
        // The safe model is b (0.80 ± 0.01). c is predicted better (0.88) but loosely (± 0.10):
        // at $10 per point plain utility takes c; with caution 1 the gain c is credited with stops
        // at its lower bound (0.78, so none), b stays, and the reason says why.
        let mut p = predictions();
        p.per_model.get_mut("b").unwrap().quality_se = Some(0.01);
        p.per_model.get_mut("c").unwrap().quality = 0.88;
        p.per_model.get_mut("c").unwrap().quality_se = Some(0.10);
        let t = prices();
        let at = |p: &Predictions, usd: f64, caution: f64| {
            let c = choose(input(p, &t, Objective::UsdPerQuality(usd), caution, "b"), &Constraints::default());
            (c.candidates[c.chosen.unwrap()].model.clone(), c.reason)
        };
        assert_eq!(at(&p, 10.0, 0.0).0, "c");
        let (m, reason) = at(&p, 10.0, 1.0);
        assert_eq!(m, "b");
        assert!(reason.contains("safe model") && reason.contains("uncertainty"), "{reason}");
        // Predictions below the safe model's count as they are: where cost decides, the cheaper a.
        assert_eq!(at(&p, 0.01, 1.0).0, "a");
        // A gain surer than its uncertainty is taken.
        p.per_model.get_mut("c").unwrap().quality_se = Some(0.01);
        assert_eq!(at(&p, 10.0, 1.0).0, "c");
    }

    #[test]
    fn when_no_model_clears_the_bar_the_safe_model_gives_way_only_to_a_sure_gain() {
        // The safe model is b (0.80 ± 0.01); nothing clears the bar 0.95. c is predicted 0.90
        // ± 0.10: its lower bound (0.80, with caution 1) is above b's (0.79) but not above b's
        // prediction, so b keeps the choice, and the reason says why.
        let mut p = predictions();
        p.per_model.get_mut("b").unwrap().quality_se = Some(0.01);
        p.per_model.get_mut("c").unwrap().quality_se = Some(0.10);
        let t = prices();
        let at = |p: &Predictions, fallback_model: &str| {
            let c = choose(input(p, &t, Objective::QualityBar(0.95), 1.0, fallback_model), &Constraints::default());
            (c.candidates[c.chosen.unwrap()].model.clone(), c.reason)
        };
        let (m, reason) = at(&p, "b");
        assert_eq!(m, "b");
        assert!(reason.contains("safe model") && reason.contains("lower bound"), "{reason}");
        // Without a safe model among the predictions, the highest lower bound, as before.
        assert_eq!(at(&p, "none").0, "c");
        // A gain surer than its uncertainty (0.90 ± 0.05: lower bound 0.85) is taken.
        p.per_model.get_mut("c").unwrap().quality_se = Some(0.05);
        let (m, reason) = at(&p, "b");
        assert_eq!(m, "c");
        assert!(reason.contains("highest lower bound"), "{reason}");
    }

    #[test]
    fn the_failover_order_is_the_same_rule_without_the_models_before() {
        let names = |c: &Choice| c.order.iter().map(|&i| c.candidates[i].model.clone()).collect::<Vec<_>>();
        // Bar 0.7: b is the cheapest to clear it, then c; without both nothing clears it, so a.
        let c = choice(&predictions(), Objective::QualityBar(0.7));
        assert_eq!(names(&c), ["b", "c", "a"]);
        assert_eq!(c.order[0], c.chosen.unwrap());
        // A utility: the next-best utility each time.
        let c = choice(&predictions(), Objective::UsdPerQuality(0.1));
        assert_eq!(names(&c), ["b", "a", "c"]);
        // An excluded model is never in the order.
        let t = prices();
        let p = predictions();
        let input = ChoiceInput {
            predictions: &p,
            prices: &t,
            input_tokens: 0,
            unfamiliar: Some("nothing is close"),
            objective: Objective::QualityBar(0.7),
            caution: 0.0,
            fallback_model: "c",
            default_output_tokens: 500,
            cache: None,
        };
        let c = choose(input, &Constraints::default().block_models(["b"]));
        assert!(c.fallback);
        // The fallback first, then the strongest tier left (the fallback rule again).
        assert_eq!(names(&c), ["c", "a"]);
    }

    /// x: $1 in, $0.10 cached; y: $0.50 in, $0.25 cached; both clear 0.7. A 100,000-token
    /// conversation that grew by 2,000 tokens, with `held` cached at `model`.
    fn session_choice(model: &str, held: u64, horizon: f64, y_quality: f64) -> Choice {
        let cache = CacheView { held: (!model.is_empty()).then(|| (model.to_string(), held)), new_tokens: 2_000, horizon };
        let m = |name: &str, input: f64, cached: f64| {
            format!("[models.{name}]\nprovider = \"p\"\ninput_per_mtok = {input}\noutput_per_mtok = 0.0\ncached_input_per_mtok = {cached}\nsource = \"test\"\nas_of = \"2026\"\n")
        };
        let t = PriceTable::from_toml_str(&(m("x", 1.0, 0.1) + &m("y", 0.5, 0.25)), "t.toml").unwrap();
        let p = |q| ModelPrediction {
            quality: q,
            output_tokens: 0.0,
            support: 1.0,
            effective_neighbours: 8.0,
            cost_usd: None,
            quality_se: None,
            output_tokens_se: 0.0,
            cost_se_usd: None,
        };
        let p = Predictions {
            per_model: [("x", p(0.9)), ("y", p(y_quality))].into_iter().map(|(m, p)| (m.to_string(), p)).collect(),
            weights: vec![],
        };
        let input = ChoiceInput {
            predictions: &p,
            prices: &t,
            input_tokens: 100_000,
            unfamiliar: None,
            objective: Objective::QualityBar(0.7),
            caution: 0.0,
            fallback_model: "x",
            default_output_tokens: 0,
            cache: Some(&cache),
        };
        choose(input, &Constraints::default())
    }

    #[test]
    fn a_session_switches_only_when_it_pays_for_the_cache_it_gives_up() {
        let chosen = |c: &Choice| c.candidates[c.chosen.unwrap()].clone();
        // No cache anywhere: this step alone, y is cheaper ($0.05 against $0.10).
        let c = session_choice("", 0, 1.0, 0.9);
        assert_eq!(chosen(&c).model, "y");
        // x holds 98,000 cached tokens: this step on x costs $0.0118, on y $0.05. Over one step, stay.
        let c = session_choice("x", 98_000, 1.0, 0.9);
        let x = chosen(&c);
        assert_eq!(x.model, "x", "{}", c.reason);
        assert!((x.expected_cost_usd - (98_000.0 * 0.1 + 2_000.0 * 1.0) / 1e6).abs() < 1e-12);
        assert_eq!(x.cached_tokens, Some(98_000));
        assert!(c.reason.contains("stays on x: 98000 cached tokens") && c.reason.ends_with("over the expected 1 step"), "{}", c.reason);
        // Over 10 steps, y's cached steps ($0.0255 each after the first $0.05) still lose to x's
        // ($0.0118): stay. The cheaper cached price decides, not the list price.
        assert_eq!(chosen(&session_choice("x", 98_000, 10.0, 0.9)).model, "x");
        // Held at y instead, nothing would move it to x either.
        assert_eq!(chosen(&session_choice("y", 98_000, 10.0, 0.9)).model, "x", "x's cached steps are cheaper than y's, and pay back");
        let c = session_choice("y", 98_000, 1.0, 0.9);
        assert_eq!(chosen(&c).model, "y", "over one step the cache is worth more: {}", c.reason);
        // y no longer clears the bar: switch for quality, whatever the cache.
        let c = session_choice("y", 98_000, 1.0, 0.5);
        assert_eq!(chosen(&c).model, "x");
        assert!(c.reason.contains("switches from y: its predicted quality 0.50 does not clear the bar 0.70"), "{}", c.reason);
        // A switch that pays says so.
        let c = session_choice("y", 98_000, 10.0, 0.9);
        assert!(c.reason.contains("switches from y to x") && c.reason.contains("over the expected 10 steps, building"), "{}", c.reason);
        assert!(c.reason.contains("giving up 98000 cached tokens"), "{}", c.reason);
        // A prompt under the provider's minimum caches nothing.
        let m = |name: &str| {
            format!("[models.{name}]\nprovider = \"p\"\ninput_per_mtok = 1.0\noutput_per_mtok = 0.0\ncached_input_per_mtok = 0.1\nsource = \"t\"\nas_of = \"2026\"\n")
        };
        let t = PriceTable::from_toml_str(&m("x"), "t.toml").unwrap();
        let (now, _, cached) =
            session_costs(t.get("x").unwrap(), "x", &CacheView { held: Some(("x".into(), 900)), new_tokens: 100, horizon: 1.0 }, 1000, 0);
        assert_eq!((cached, now), (0, 1000.0 / 1e6));
    }

    #[test]
    fn a_measured_cost_replaces_tokens_times_price() {
        // a's neighbours measured $0.50 a call (say, a long tool loop): a is now the dearest.
        let mut p = predictions();
        p.per_model.get_mut("a").unwrap().cost_usd = Some(0.5);
        let c = choice(&p, Objective::UsdPerQuality(0.0));
        assert_eq!(c.candidates.last().unwrap().model, "a");
        assert_eq!(c.candidates.last().unwrap().expected_cost_usd, 0.5);
        assert_eq!(c.candidates[c.chosen.unwrap()].model, "b");
    }

    #[test]
    fn a_requests_objective_wins_and_both_knobs_are_checked() {
        let c = Constraints::default().usd_per_quality(1.0);
        assert_eq!(c.objective(Objective::QualityBar(0.7)), Objective::UsdPerQuality(1.0));
        assert_eq!(Constraints::default().objective(Objective::QualityBar(0.7)), Objective::QualityBar(0.7));
        assert!(Objective::QualityBar(1.5).check().is_err());
        assert!(Objective::UsdPerQuality(f64::NAN).check().is_err());
        assert!(Objective::UsdPerQuality(f64::INFINITY).check().is_err());
    }

    #[test]
    fn choosing_under_many_constraints_at_once_takes_each_choice_alone() {
        let t = prices();
        let mut p = predictions();
        for (m, se) in [("a", 0.2), ("b", 0.05), ("c", 0.01)] {
            p.per_model.get_mut(m).unwrap().quality_se = Some(se);
        }
        let mut each: Vec<(Objective, Constraints)> = Vec::new();
        for bar in [0.0, 0.3, 0.5, 0.79, 0.85, 0.95, 1.0] {
            each.push((Objective::QualityBar(bar), Constraints::default()));
        }
        for usd in [0.0, 0.001, 0.01, 0.05, 0.2, 10.0] {
            each.push((Objective::UsdPerQuality(usd), Constraints::default()));
        }
        // Constraints that exclude, between others that do not: exclusions are set anew each time.
        each.push((Objective::QualityBar(0.5), Constraints::default().allow_models(["c"])));
        each.push((Objective::QualityBar(0.5), Constraints::default().max_cost_usd(0.005)));
        each.push((Objective::UsdPerQuality(10.0), Constraints::default().max_cost_usd(0.05)));
        each.push((Objective::QualityBar(0.5), Constraints::default().allow_models(["nothing"])));
        each.push((Objective::QualityBar(0.5), Constraints::default()));
        for caution in [0.0, 1.0] {
            for unfamiliar in [None, Some("far from every exemplar")] {
                let input = ChoiceInput {
                    predictions: &p,
                    prices: &t,
                    input_tokens: 100,
                    unfamiliar,
                    objective: Objective::QualityBar(0.0),
                    caution,
                    fallback_model: "b",
                    default_output_tokens: 500,
                    cache: None,
                };
                let refs: Vec<(Objective, &Constraints)> = each.iter().map(|(o, c)| (*o, c)).collect();
                let (candidates, chosen) = choose_each(input, &refs);
                let mut models = std::collections::BTreeSet::new();
                for ((objective, constraints), got) in each.iter().zip(&chosen) {
                    let alone = choose(ChoiceInput { objective: *objective, ..input }, constraints);
                    let want = alone.chosen.map(|i| alone.candidates[i].model.clone());
                    assert_eq!(got.map(|i| candidates[i].model.clone()), want, "{objective:?} {constraints:?} caution {caution}");
                    models.insert(want);
                }
                if unfamiliar.is_none() {
                    // The cases tell the models apart (and one excludes every model).
                    assert_eq!(models.len(), 4, "{models:?}");
                }
            }
        }
    }
}
