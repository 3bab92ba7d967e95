//! The savings benchmark: routes a data set's test split with a real [`Router`] built from its
//! train split, and measures what the decisions cost and earn against every single model, random
//! routing and the oracle.
//!
//! Everything a router could tune is chosen on the train split alone, by cross-fitting: the train
//! part is cut into folds; for each candidate [`RouterConfig`], a router built on all folds but
//! one assesses the prompts of that fold ([`Router::assess_embedded_batch`]), so every train prompt gets
//! an out-of-fold assessment (the candidates' routers on a fold share the models they fit,
//! through a [`FitCache`]: the very models each would fit, each fitted once). Those assessments, decided under every knob of both [`Policy`]s,
//! give out-of-fold cost–quality curves: among the configurations and policies whose AIQ is
//! within one bootstrap standard error of the largest, the one whose predictions of the models on
//! the train split's cost–quality frontier have the lowest out-of-fold Brier score draws the
//! report's curve (the one-standard-error rule), and each quality target ("keep X% of the best
//! model's quality") becomes that candidate's cheapest knob that clears X out of fold with
//! one-sided 95% confidence (1.645 standard errors of the paired difference with the reference).
//! Then one router is built on the whole train split with that configuration, and the test split
//! is routed through it. No test score is read before the routing is done.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::par_map;
use super::{aiq, apgr, cpt, output_tokens, to_exemplars, CurvePoint, Dataset, Record};
use crate::embed::{Embedder, Memo};
use crate::error::{Error, Result};
use crate::exemplar::ExemplarSet;
use crate::policy::Constraints;
use crate::predict::FitCache;
use crate::pricing::{PriceTable, TokenCounter};
use crate::router::{Assessment, Router};
pub use crate::target::Policy;
pub use crate::target::RouterConfig;
use crate::target::{
    self, assess_all, cross_fit, folds_of, knobs, operating_point, picks, picks_under, CalibrationAcc, CrossFit, Operating, Pick,
};

/// `config`'s router over `exemplars`, its index read from `graphs` when a router over the same
/// exemplars (another configuration, same fold) saved it there, and its fitted models taken
/// from `fits` where such a router fitted them.
fn config_router(
    config: &RouterConfig,
    embedder: &Arc<dyn Embedder>,
    exemplars: ExemplarSet,
    prices: &PriceTable,
    fallback: &str,
    graphs: &std::path::Path,
    fits: &FitCache,
) -> Result<Router> {
    config
        .apply(Router::builder())
        .embedder(embedder.clone())
        .exemplars(exemplars)
        .prices(prices.clone())
        .fallback_model(fallback)
        .cache_dir(graphs)
        .fit_cache(fits.clone())
        .build()
}

/// What [`run`] needs besides the data.
#[derive(Debug, Clone)]
pub struct BenchSettings {
    /// Share of the prompts in the train split (default 0.7).
    pub train_fraction: f64,
    /// Seed of the split (default 42).
    pub seed: u64,
    /// Folds of the cross-fitting on the train split (default 5).
    pub folds: usize,
    /// Quality targets, as shares of the best train model's quality (default 0.90, 0.95, 0.98).
    pub targets: Vec<f64>,
    /// Candidate configurations (default [`RouterConfig::defaults`]).
    pub configs: Option<Vec<RouterConfig>>,
    /// Policies tried (default both).
    pub policies: Vec<Policy>,
    /// How sure the train split must be that a target is met: an operating point qualifies when
    /// its out-of-fold quality minus the target exceeds this many standard errors (default
    /// 1.645, one-sided 95%).
    pub confidence_z: f64,
    /// Where a target's operating point is searched: `false` (default), among the knobs of the
    /// candidate chosen for the curve; `true`, among every candidate's knobs (cheaper on train,
    /// but the wider search picks lucky points: on the shared sets it missed targets more often).
    pub targets_from_every_candidate: bool,
    /// Answer length assumed where a record keeps neither the answer, its length nor its cost:
    /// `None` makes such a record an error (a missing cost is never priced as zero).
    pub assume_output_tokens: Option<u32>,
}

impl Default for BenchSettings {
    fn default() -> Self {
        BenchSettings {
            train_fraction: 0.7,
            seed: 42,
            folds: 5,
            targets: vec![0.90, 0.95, 0.98],
            configs: None,
            policies: vec![Policy::QualityBar, Policy::UsdPerQuality],
            confidence_z: 1.645,
            targets_from_every_candidate: false,
            assume_output_tokens: None,
        }
    }
}

/// A point of a cost–quality curve in a report.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[non_exhaustive]
pub struct CurvePointReport {
    /// The knob (bar or USD per quality point); `None` for a point that is not a router's.
    pub knob: Option<f64>,
    /// Mean measured quality.
    pub quality: f64,
    /// Total USD.
    pub cost_usd: f64,
    /// Share of prompts sent to the reference model.
    pub reference_share: f64,
}

/// One candidate configuration's out-of-fold figures on the train split.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ConfigScore {
    /// The configuration.
    pub config: RouterConfig,
    /// The policy.
    pub policy: Policy,
    /// AIQ of its out-of-fold curve over the train single models' cost range.
    pub oof_aiq: f64,
    /// Brier score of its out-of-fold quality predictions (every model, every train prompt).
    pub oof_brier: f64,
    /// The same over the models on the train split's cost–quality frontier only (each better on
    /// train than every cheaper one: those that some price makes the best single choice), which
    /// the choice among candidates reads: predicting well that a dear, weak model answers badly
    /// is easy, and on a set of 50 models it would outweigh the few the decisions turn on.
    pub oof_frontier_brier: f64,
}

/// A quality target met (or not) on the test split.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct TargetResult {
    /// The share of the reference model's quality asked for.
    pub target: f64,
    /// The knob chosen on the train split; `None` when no knob met the target out of fold, and the
    /// reference model alone is used.
    pub knob: Option<f64>,
    /// The policy whose knob it is.
    pub policy: Policy,
    /// The candidate configuration whose router met it out of fold for the least cost.
    pub config: String,
    /// Mean quality of the routed test prompts.
    pub quality: f64,
    /// Total USD of the routed test prompts.
    pub cost_usd: f64,
    /// The reference model (best on train).
    pub reference_model: String,
    /// Its mean quality on the test prompts.
    pub reference_quality: f64,
    /// Its total USD on the test prompts.
    pub reference_cost_usd: f64,
    /// `quality / reference_quality`.
    pub kept: f64,
    /// Share of the test prompts sent to the reference model.
    pub reference_share: f64,
    /// The cheapest single model reaching `target` of the reference's test quality, chosen with
    /// hindsight on the test split (name, cost), if any.
    pub cheapest_single: Option<(String, f64)>,
    /// The oracle's cost to reach the same quality as the target asks, on the test split.
    pub oracle_cost_usd: Option<f64>,
}

/// A single model on the test split.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct SingleModel {
    /// Name.
    pub model: String,
    /// Mean quality.
    pub quality: f64,
    /// Total USD.
    pub cost_usd: f64,
}

/// Calibration of quality predictions: Brier score and a reliability table.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Calibration {
    /// Mean squared difference between predicted and measured quality.
    pub brier: f64,
    /// The same for predicting each model's train mean (the baseline).
    pub baseline_brier: f64,
    /// Ten bins of predicted quality: (predicted mean, measured mean, pairs).
    pub reliability: Vec<(f64, f64, usize)>,
}

/// Everything [`run`] measured. Figures on the test split unless a field says otherwise.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Report {
    /// Prompts in the train split.
    pub train: usize,
    /// Prompts in the test split.
    pub test: usize,
    /// Seed of the split.
    pub seed: u64,
    /// The models routed between (the priced models the data set scores, on every prompt compared).
    pub models: Vec<String>,
    /// Priced models left out for lacking scores on more than
    /// [`MAX_SET_ASIDE`](crate::target::MAX_SET_ASIDE) of the prompts (see
    /// [`prompts_set_aside`](Report::prompts_set_aside)).
    pub models_left_out: Vec<String>,
    /// Ids of the prompts set aside (before the split) because a model routed between has no
    /// score on them: at most [`MAX_SET_ASIDE`](crate::target::MAX_SET_ASIDE) of the data set.
    pub prompts_set_aside: Vec<String>,
    /// Models the data set scores that the price table does not price (so not routed to).
    pub models_unpriced: Vec<String>,
    /// The assumption made about missing answer lengths, if any was needed.
    pub assumption: Option<String>,
    /// The best model on the train split (mean quality; the cheaper on ties).
    pub reference_model: String,
    /// The cheapest model on the train split.
    pub cheap_model: String,
    /// Every candidate's out-of-fold score.
    pub candidates: Vec<ConfigScore>,
    /// The configuration chosen for the curve (the one-standard-error rule on out-of-fold AIQ, then
    /// the lowest frontier Brier score; see the module docs).
    pub chosen: ConfigScore,
    /// The router's test curve under the chosen configuration and policy, one point per knob.
    pub curve: Vec<CurvePointReport>,
    /// AIQ of the router's test curve over the single models' test cost range.
    pub aiq: f64,
    /// AIQ of the single models' hull ("zero router").
    pub zero_router_aiq: f64,
    /// AIQ of the oracle.
    pub oracle_aiq: f64,
    /// APGR between the cheap and the reference model.
    pub apgr: f64,
    /// Share of reference calls needed to recover 50% of the gap (CPT(50%)).
    pub cpt50: Option<f64>,
    /// The same for 80%.
    pub cpt80: Option<f64>,
    /// The quality targets, each met by the chosen candidate's knob (or one model).
    pub targets: Vec<TargetResult>,
    /// Random routing between cheap and reference at the 95% target's reference share.
    pub random_at_95: Option<CurvePointReport>,
    /// The oracle's curve.
    pub oracle_curve: Vec<CurvePointReport>,
    /// Every model, cheapest first.
    pub single_models: Vec<SingleModel>,
    /// Calibration of the chosen configuration's predictions on the test split.
    pub calibration: Calibration,
    /// Mean absolute error of predicted answer tokens on the test split, and of each model's
    /// train mean (the baseline); `None` when the data set has no answer lengths.
    pub output_tokens_mae: Option<(f64, f64)>,
    /// How much the test figures owe to the draw of the test split (90% bootstrap intervals).
    pub test_intervals: TestIntervals,
    /// Seconds for the whole run (embedding included).
    pub seconds: f64,
}

/// 90% intervals of test figures over bootstrap replicates of the test split (the 5th and 95th
/// percentiles; see [`run`]'s report): how far a figure could move had other prompts of the same
/// kind fallen into the test split, with the router's decisions unchanged.
#[derive(Debug, Clone, Serialize)]
pub struct TestIntervals {
    /// Replicates drawn.
    pub replicates: usize,
    /// The router's AIQ less the single models' hull's.
    pub aiq_minus_hull: [f64; 2],
    /// Share of replicates where the router's AIQ is at least the hull's.
    pub aiq_at_least_hull: f64,
    /// APGR between the cheap and the reference model.
    pub apgr: [f64; 2],
    /// Per quality target.
    pub targets: Vec<TargetInterval>,
}

/// A quality target's spread over the replicates (see [`TestIntervals`]).
#[derive(Debug, Clone, Serialize)]
pub struct TargetInterval {
    /// The share of the reference's quality asked for.
    pub target: f64,
    /// The share kept.
    pub kept: [f64; 2],
    /// Share of replicates keeping at least the target less one point.
    pub kept_at_least_target_less_one_point: f64,
    /// The router's cost over the cheapest single model's that reaches the target on the same
    /// replicate (`None` when on no replicate one does).
    pub cost_over_cheapest_single: Option<[f64; 2]>,
}

/// Measured quality and cost of every model on every prompt of a split.
struct Outcomes {
    q: Vec<Vec<f64>>,
    c: Vec<Vec<f64>>,
    input_tokens: Vec<u64>,
    /// Known answer lengths, per prompt and model.
    out_tokens: Vec<Vec<Option<u32>>>,
}

impl Outcomes {
    fn new(records: &[&Record], models: &[String], prices: &PriceTable, counter: &TokenCounter, assumed: Option<u32>) -> Result<Self> {
        let mut o = Outcomes { q: Vec::new(), c: Vec::new(), input_tokens: Vec::new(), out_tokens: Vec::new() };
        for r in records {
            let input = counter.count(&r.prompt);
            let mut cs = Vec::with_capacity(models.len());
            let mut outs = Vec::with_capacity(models.len());
            for m in models {
                let out = output_tokens(r, m, counter);
                outs.push(out);
                let cost = match (r.cost_usd.get(m), out.or(assumed)) {
                    (Some(&c), _) => c,
                    (None, Some(t)) => prices.require(m, "the benchmark")?.cost_usd(input, u64::from(t)),
                    (None, None) => {
                        return Err(Error::Config(format!(
                            "record `{}` keeps neither the answer, its length nor the cost of `{m}`: its cost is unknown \
                             (state an assumed answer length to price it anyway)",
                            r.id
                        )))
                    }
                };
                cs.push(cost);
            }
            o.q.push(models.iter().map(|m| r.scores[m]).collect());
            o.c.push(cs);
            o.input_tokens.push(input);
            o.out_tokens.push(outs);
        }
        Ok(o)
    }

    fn point<M: Copy + Into<usize>>(&self, pick: &[M], reference: usize, knob: Option<f64>) -> CurvePointReport {
        self.weighted_point(&|i| pick[i].into(), None, reference, knob)
    }

    /// The point of the model `pick(i)` chosen for each prompt `i`, each prompt counted as many
    /// times as `weights` says (a bootstrap replicate; once each without), so its cost is the
    /// replicate's total and its quality and reference share means over as many prompts as the
    /// split has.
    fn weighted_point(
        &self,
        pick: &dyn Fn(usize) -> usize,
        weights: Option<&[u32]>,
        reference: usize,
        knob: Option<f64>,
    ) -> CurvePointReport {
        let n = self.q.len().max(1) as f64;
        let mut p = CurvePointReport { knob, quality: 0.0, cost_usd: 0.0, reference_share: 0.0 };
        for i in 0..self.q.len() {
            let w = weights.map_or(1.0, |w| f64::from(w[i]));
            if w == 0.0 {
                continue;
            }
            let m = pick(i);
            p.quality += w * self.q[i][m] / n;
            p.cost_usd += w * self.c[i][m];
            p.reference_share += w * f64::from(u8::from(m == reference)) / n;
        }
        p
    }

    fn single(&self, m: usize, reference: usize) -> CurvePointReport {
        self.weighted_point(&|_| m, None, reference, None)
    }

    /// Per prompt, the model maximising `quality - lambda * cost`, the cheapest among ties.
    fn oracle(&self, lambda: f64) -> Vec<usize> {
        (0..self.q.len())
            .map(|i| {
                let (q, c) = (&self.q[i], &self.c[i]);
                (0..q.len())
                    .max_by(|&a, &b| (q[a] - lambda * c[a]).total_cmp(&(q[b] - lambda * c[b])).then(c[b].total_cmp(&c[a])))
                    .unwrap_or(0)
            })
            .collect()
    }
}

fn cq(c: &[CurvePointReport]) -> Vec<(f64, f64)> {
    c.iter().map(|p| (p.cost_usd, p.quality)).collect()
}

fn to_curve(c: &[CurvePointReport]) -> Vec<CurvePoint> {
    c.iter().map(|p| CurvePoint { strong_share: p.reference_share, quality: p.quality, cost_usd: p.cost_usd }).collect()
}

fn cost_range(single: &[CurvePointReport]) -> (f64, f64) {
    let lo = single.iter().map(|p| p.cost_usd).fold(f64::INFINITY, f64::min);
    let hi = single.iter().map(|p| p.cost_usd).fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

/// Runs the benchmark (see the module docs). `embedder` embeds every prompt once.
///
/// ```no_run
/// use std::sync::Arc;
/// use semroute::eval::{run, BenchSettings, Dataset};
/// use semroute::{FastEmbedder, PriceTable};
///
/// let data = Dataset::load("../shared/data/zeroeval-crux.jsonl")?;
/// let prices = PriceTable::from_file("../shared/data/prices-2024.toml")?;
/// let report = run(&data, &prices, Arc::new(FastEmbedder::load_default()?), &BenchSettings::default())?;
/// for t in &report.targets {
///     println!("keep {:.0}%: kept {:.1}% for ${:.2} (reference ${:.2})", 100.0 * t.target, 100.0 * t.kept, t.cost_usd, t.reference_cost_usd);
/// }
/// # Ok::<(), semroute::Error>(())
/// ```
pub fn run(data: &Dataset, prices: &PriceTable, embedder: Arc<dyn Embedder>, settings: &BenchSettings) -> Result<Report> {
    let started = Instant::now();
    if settings.folds < 2 {
        return Err(Error::Config(format!("the cross-fitting needs at least 2 folds, got {}", settings.folds)));
    }
    if let Some(t) = settings.targets.iter().find(|t| !(**t > 0.0 && **t <= 1.0)) {
        return Err(Error::Config(format!("a quality target is a share in (0, 1], got {t}")));
    }
    if !(settings.confidence_z.is_finite() && settings.confidence_z >= 0.0) {
        return Err(Error::Config(format!("confidence_z must be a non-negative number, got {}", settings.confidence_z)));
    }
    if settings.policies.is_empty() {
        return Err(Error::Config("no policy to try".into()));
    }
    // Every model is compared on the same prompts: those some kept model has no score on are
    // set aside, at most target::MAX_SET_ASIDE of them (else the model lacking the most is left
    // out), as a quality target's exemplars are.
    let names: Vec<String> = prices.names().map(str::to_string).collect();
    let cover = target::coverage(&names, data.records.len(), &|i, m| data.records[i].scores.contains_key(m));
    let models = cover.models.clone();
    let left_out: Vec<String> = cover.left_out.iter().filter(|m| data.records.iter().any(|r| r.scores.contains_key(*m))).cloned().collect();
    let prompts_set_aside: Vec<String> = cover.set_aside.iter().map(|&i| data.records[i].id.clone()).collect();
    let unpriced: Vec<String> = data
        .records
        .iter()
        .flat_map(|r| r.scores.keys())
        .filter(|m| prices.get(m).is_none())
        .cloned()
        .collect::<std::collections::BTreeSet<String>>()
        .into_iter()
        .collect();
    if models.len() < 2 {
        return Err(Error::Config(format!(
            "the price table and the data set share fewer than two models scored on all but {:.0}% of the prompts ({models:?}; \
             priced but left out: {left_out:?}; scored but not priced: {unpriced:?})",
            100.0 * target::MAX_SET_ASIDE
        )));
    }
    let compared;
    let data = if cover.set_aside.is_empty() {
        data
    } else {
        compared =
            Dataset { records: data.records.iter().enumerate().filter(|(i, _)| cover.compares(*i)).map(|(_, r)| r.clone()).collect() };
        &compared
    };
    let prices = PriceTable::from_models(models.iter().map(|m| (m.clone(), prices.get(m).expect("listed").clone())))?;
    if models.len() > usize::from(Pick::MAX) + 1 {
        return Err(Error::Config(format!(
            "{} models to route among: the benchmark handles at most {}",
            models.len(),
            usize::from(Pick::MAX) + 1
        )));
    }
    let index: HashMap<&str, usize> = models.iter().enumerate().map(|(i, m)| (m.as_str(), i)).collect();
    let counter = TokenCounter::cl100k()?;
    let (train, test) = data.split(settings.train_fraction, settings.seed);
    if train.len() < settings.folds * 2 || test.is_empty() {
        return Err(Error::Config(format!(
            "a train split of {} and a test split of {} prompts are too small for {} folds",
            train.len(),
            test.len(),
            settings.folds
        )));
    }
    let missing_lengths =
        train.iter().chain(&test).any(|r| models.iter().any(|m| !r.cost_usd.contains_key(m) && output_tokens(r, m, &counter).is_none()));
    let assumption = match (missing_lengths, settings.assume_output_tokens) {
        (false, _) => None,
        (true, Some(t)) => Some(format!("answer lengths are not in the data set: every answer is assumed to be {t} tokens long")),
        (true, None) => None, // Outcomes::new names the record.
    };
    let assumed = settings.assume_output_tokens.unwrap_or(0);
    let train_out = Outcomes::new(&train, &models, &prices, &counter, settings.assume_output_tokens)?;
    let test_out = Outcomes::new(&test, &models, &prices, &counter, settings.assume_output_tokens)?;

    // Reference (best on train) and cheap model, from the train split only.
    let train_single: Vec<CurvePointReport> = (0..models.len()).map(|m| train_out.single(m, usize::MAX)).collect();
    let reference = (0..models.len())
        .max_by(|&a, &b| {
            train_single[a].quality.total_cmp(&train_single[b].quality).then(train_single[b].cost_usd.total_cmp(&train_single[a].cost_usd))
        })
        .expect("two models");
    let cheap = (0..models.len()).min_by(|&a, &b| train_single[a].cost_usd.total_cmp(&train_single[b].cost_usd)).expect("two models");
    let train_means: Vec<f64> = train_single.iter().map(|p| p.quality).collect();
    let typical_cost = {
        let mut per_prompt: Vec<f64> = train_out.c.iter().map(|c| c.iter().sum::<f64>() / c.len() as f64).collect();
        per_prompt.sort_by(f64::total_cmp);
        per_prompt[per_prompt.len() / 2]
    };

    let memo = Arc::new(Memo::new(embedder));
    let texts: Vec<&str> = train.iter().chain(&test).map(|r| r.prompt.as_str()).collect();
    memo.remember(&texts)?;
    let embedder: Arc<dyn Embedder> = memo.clone();
    let configs = settings.configs.clone().unwrap_or_else(|| RouterConfig::defaults(embedder.as_ref()));
    if configs.is_empty() {
        return Err(Error::Config("no router configuration to try".into()));
    }
    // Every configuration's router on a fold indexes the same exemplars: the first saves the
    // graph (and the vectors) in this private folder, the others read it (milliseconds, against
    // seconds to build one over thousands of exemplars). The router's own cache, not a copy.
    let graphs = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let exemplars_of = |records: &[&Record]| ExemplarSet::from_exemplars(to_exemplars(records, &model_refs(&models), &counter, assumed));
    let vector_of = |r: &Record| memo.embed(&r.prompt);
    // Builds these records' exemplar graph once, on every core, by a router that fits nothing,
    // and saves it for the routers to read (two built side by side would each build it).
    let warm_graph = |records: &[&Record]| -> Result<()> {
        config_router(
            &RouterConfig::graph_only(),
            &embedder,
            exemplars_of(records)?,
            &prices,
            &models[reference],
            graphs.path(),
            &FitCache::new(),
        )?;
        Ok(())
    };

    // Every candidate cross-fitted on the train split, folded by a hash of the seed and the id,
    // and one chosen: the code a router tuned to a quality target runs on its exemplars.
    let fold_of = folds_of(train.iter().map(|r| r.id.as_str()), settings.folds, settings.seed.wrapping_add(1));
    let item = |i: usize| Ok((train[i].prompt.as_str(), vector_of(train[i])?, Some(train_out.input_tokens[i])));
    let fold_router = |config: &RouterConfig, part: &[usize], fold_graphs: &std::path::Path, fits: &FitCache| {
        let records: Vec<&Record> = part.iter().map(|&i| train[i]).collect();
        config_router(config, &embedder, exemplars_of(&records)?, &prices, &models[reference], fold_graphs, fits)
    };
    let fitted = cross_fit(&CrossFit {
        configs: &configs,
        policies: &settings.policies,
        fold_of: &fold_of,
        folds: settings.folds,
        models: &models,
        quality: &train_out.q,
        cost: &train_out.c,
        typical_cost,
        item: &item,
        router: &fold_router,
        seed: settings.seed,
    })?;
    let oof_picks = &fitted.picks;
    let scores: Vec<ConfigScore> = fitted
        .scores
        .iter()
        .enumerate()
        .map(|(s, score)| ConfigScore {
            config: configs[s / settings.policies.len()].clone(),
            policy: settings.policies[s % settings.policies.len()],
            oof_aiq: score.aiq,
            oof_brier: score.brier,
            oof_frontier_brier: score.frontier_brier,
        })
        .collect();
    let best_index = fitted.chosen;
    let chosen = scores[best_index].clone();
    let ci = best_index / settings.policies.len();
    let policy = chosen.policy;
    let policy_knobs = knobs(policy, typical_cost);

    // Each target's operating point: among the chosen candidate's knobs (or every candidate's),
    // the cheapest out of fold whose quality clears the target by `confidence_z` standard errors
    // of the paired difference with the reference (the chosen candidate on ties). Every single
    // model is a candidate too, held to the same test: routing is used for a target only where
    // it is cheaper on train than calling one model that also clears it (on a set where one cheap
    // model is nearly as good as the best, the margin routing needs costs more than it saves).
    // The candidates searched (each score's knobs, as `operating_point` indexes them).
    let knob_picks = |s: usize| (s, oof_picks[s / settings.policies.len()][s % settings.policies.len()].as_slice());
    let searched: Vec<(usize, &[Vec<Pick>])> =
        (0..scores.len()).filter(|&s| settings.targets_from_every_candidate || s == best_index).map(knob_picks).collect();
    let target_points: Vec<Option<Operating>> = settings
        .targets
        .iter()
        .map(|&x| operating_point(&train_out.q, &train_out.c, reference, x, settings.confidence_z, &searched, best_index))
        .collect();
    // The routers users would run: a candidate's configuration on the whole train split, each
    // built once and assessing every test prompt once.
    let fits = FitCache::new();
    let routed_configs = target_points.iter().flatten().filter_map(|o| match o {
        Operating::Routed(s, _) => Some(s / settings.policies.len()),
        Operating::Single(_) => None,
    });
    let mut wanted: Vec<usize> = Vec::new();
    for c in std::iter::once(ci).chain(routed_configs) {
        if !wanted.contains(&c) {
            wanted.push(c);
        }
    }
    // As on each fold: the graph built once on every core (by a router that fits nothing) for
    // the routers to read, which are then built and assess side by side, one per free core
    // (building one is mostly one core's work: its cross-validation, its fits).
    if wanted.len() > 1 {
        warm_graph(&train)?;
    }
    let positions: Vec<usize> = (0..test.len()).collect();
    let tested: HashMap<usize, Vec<Assessment>> = par_map(&wanted, 1, |&c| {
        let router = config_router(&configs[c], &embedder, exemplars_of(&train)?, &prices, &models[reference], graphs.path(), &fits)?;
        let assessed =
            assess_all(&router, &positions, |i| Ok((test[i].prompt.as_str(), vector_of(test[i])?, Some(test_out.input_tokens[i]))))?;
        Ok((c, assessed))
    })?
    .into_iter()
    .collect();
    let assessments = &tested[&ci];
    let test_picks = picks(assessments, policy, &policy_knobs, &index)?;
    let curve: Vec<CurvePointReport> =
        test_picks.iter().zip(&policy_knobs).map(|(pick, &k)| test_out.point(pick, reference, Some(k))).collect();
    // A target met by one model: the chosen candidate's router, allowed that model alone.
    type TargetTest<'s> = Option<(CurvePointReport, Option<(&'s ConfigScore, f64)>, Option<usize>, Vec<Pick>)>;
    let tests_of = |points: &[Option<Operating>]| -> Result<Vec<TargetTest<'_>>> {
        points
            .iter()
            .map(|tp| {
                tp.map(|o| match o {
                    Operating::Routed(s, k) => {
                        let score = &scores[s];
                        let knob = knobs(score.policy, typical_cost)[k];
                        let pick = picks(&tested[&(s / settings.policies.len())], score.policy, &[knob], &index)?.remove(0);
                        Ok((test_out.point(&pick, reference, Some(knob)), Some((score, knob)), None, pick))
                    }
                    Operating::Single(m) => {
                        let only = Constraints::default().allow_models([models[m].clone()]);
                        let pick = picks_under(&tested[&ci], &[only], &index)?.remove(0);
                        Ok((test_out.point(&pick, reference, None), None, Some(m), pick))
                    }
                })
                .transpose()
            })
            .collect::<Result<_>>()
    };
    let target_tests = tests_of(&target_points)?;

    // Test-split figures. Nothing above read a test score.
    let mut calibration = CalibrationAcc::new(models.len());
    let mut mae = (0.0, 0.0, 0usize);
    let train_mean_tokens: Vec<Option<f64>> = (0..models.len())
        .map(|m| {
            let known: Vec<f64> = train_out.out_tokens.iter().filter_map(|o| o[m].map(f64::from)).collect();
            (!known.is_empty()).then(|| known.iter().sum::<f64>() / known.len() as f64)
        })
        .collect();
    for (i, a) in assessments.iter().enumerate() {
        calibration.add(&CalibrationAcc::predicted(a, &models), &test_out.q[i], &train_means);
        for (m, name) in models.iter().enumerate() {
            if let (Some(t), Some(p), Some(base)) = (test_out.out_tokens[i][m], a.predictions().per_model.get(name), train_mean_tokens[m]) {
                mae.0 += (p.output_tokens - f64::from(t)).abs();
                mae.1 += (base - f64::from(t)).abs();
                mae.2 += 1;
            }
        }
    }
    let single: Vec<CurvePointReport> = (0..models.len()).map(|m| test_out.single(m, reference)).collect();
    let range = cost_range(&single);
    let oracle_curve: Vec<CurvePointReport> = std::iter::once(0.0)
        .chain((0..=220).map(|i| 10f64.powf(-2.0 + f64::from(i) / 20.0)))
        .map(|l| test_out.point(&test_out.oracle(l), reference, Some(l)))
        .collect();
    let (qw, qs) = (single[cheap].quality, single[reference].quality);
    let mut by_cost: Vec<usize> = (0..models.len()).collect();
    by_cost.sort_by(|&a, &b| single[a].cost_usd.total_cmp(&single[b].cost_usd));
    let results_of = |tests: &[TargetTest<'_>]| -> Vec<TargetResult> {
        settings
            .targets
            .iter()
            .zip(tests)
            .map(|(&x, t)| {
                let point = t.as_ref().map_or(single[reference], |t| t.0);
                let want = x * qs;
                let routed = t.as_ref().and_then(|t| t.1);
                let single_model = t.as_ref().and_then(|t| t.2);
                TargetResult {
                    target: x,
                    knob: routed.map(|r| r.1),
                    policy: routed.map_or(policy, |r| r.0.policy),
                    config: match (routed, single_model) {
                        (Some(r), _) => r.0.config.name.clone(),
                        (None, Some(m)) => format!("single model {}", models[m]),
                        (None, None) => "reference model alone".to_string(),
                    },
                    quality: point.quality,
                    cost_usd: point.cost_usd,
                    reference_model: models[reference].clone(),
                    reference_quality: qs,
                    reference_cost_usd: single[reference].cost_usd,
                    kept: if qs > 0.0 { point.quality / qs } else { 1.0 },
                    reference_share: point.reference_share,
                    cheapest_single: by_cost
                        .iter()
                        .find(|&&m| single[m].quality >= want - 1e-12)
                        .map(|&m| (models[m].clone(), single[m].cost_usd)),
                    oracle_cost_usd: oracle_curve.iter().filter(|p| p.quality >= want - 1e-12).map(|p| p.cost_usd).min_by(f64::total_cmp),
                }
            })
            .collect()
    };
    let targets = results_of(&target_tests);
    let random_at_95 = targets.iter().find(|t| (t.target - 0.95).abs() < 1e-9).map(|t| {
        let s = t.reference_share;
        CurvePointReport {
            knob: None,
            quality: qw + s * (qs - qw),
            cost_usd: single[cheap].cost_usd + s * (single[reference].cost_usd - single[cheap].cost_usd),
            reference_share: s,
        }
    });
    let router_curve = to_curve(&curve);
    let target_picks: Vec<Option<&[Pick]>> = target_tests.iter().map(|t| t.as_ref().map(|t| t.3.as_slice())).collect();
    let test_intervals = intervals(&test_out, &test_picks, &target_picks, &settings.targets, (reference, cheap), settings.seed)?;
    Ok(Report {
        train: train.len(),
        test: test.len(),
        seed: settings.seed,
        models: models.clone(),
        models_left_out: left_out,
        prompts_set_aside,
        models_unpriced: unpriced,
        assumption,
        reference_model: models[reference].clone(),
        cheap_model: models[cheap].clone(),
        candidates: scores,
        chosen,
        aiq: aiq(&cq(&curve), range.0, range.1),
        zero_router_aiq: aiq(&cq(&single), range.0, range.1),
        oracle_aiq: aiq(&cq(&oracle_curve), range.0, range.1),
        apgr: apgr(&router_curve, qw, qs),
        cpt50: cpt(&router_curve, qw, qs, 0.5),
        cpt80: cpt(&router_curve, qw, qs, 0.8),
        curve,
        targets,
        random_at_95,
        oracle_curve,
        single_models: by_cost
            .iter()
            .map(|&m| SingleModel { model: models[m].clone(), quality: single[m].quality, cost_usd: single[m].cost_usd })
            .collect(),
        calibration: Calibration {
            brier: calibration.brier(),
            baseline_brier: calibration.baseline_brier(),
            reliability: calibration.reliability(),
        },
        output_tokens_mae: (mae.2 > 0).then(|| (mae.0 / mae.2 as f64, mae.1 / mae.2 as f64)),
        test_intervals,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Replicates of the test split drawn for [`TestIntervals`].
const INTERVAL_REPLICATES: usize = 1000;

/// The test figures' sampling spread: the same picks scored on [`INTERVAL_REPLICATES`] bootstrap
/// replicates of the test prompts (each drawn with replacement, as many as there are), the
/// single models' hull, the reference's quality and the cheapest single model at each target
/// recomputed on each. Nothing is routed again: the question is only how much the figures owe to
/// which prompts happened to fall into the test split.
fn intervals(
    out: &Outcomes,
    curve_picks: &[Vec<Pick>],
    target_picks: &[Option<&[Pick]>],
    targets: &[f64],
    (reference, cheap): (usize, usize),
    seed: u64,
) -> Result<TestIntervals> {
    let n = out.q.len();
    let models = out.q.first().map_or(0, Vec::len);
    let replicates: Vec<u64> = (0..INTERVAL_REPLICATES as u64).collect();
    // Per replicate: AIQ − hull's, APGR, then per target the share kept and the cost over the
    // cheapest single model's at that target (NaN where no single model reaches it).
    type Replicate = (f64, f64, Vec<(f64, f64)>);
    let per: Vec<Replicate> = par_map(&replicates, 8, |&r| {
        let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ r.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut weights = vec![0u32; n];
        for _ in 0..n {
            weights[rng.random_range(0..n)] += 1;
        }
        let point = |pick: &dyn Fn(usize) -> usize| out.weighted_point(pick, Some(&weights), reference, None);
        let single: Vec<CurvePointReport> = (0..models).map(|m| point(&|_| m)).collect();
        let range = cost_range(&single);
        let curve: Vec<CurvePointReport> = curve_picks.iter().map(|pick| point(&|i| usize::from(pick[i]))).collect();
        let (qw, qs) = (single[cheap].quality, single[reference].quality);
        let kept = targets
            .iter()
            .zip(target_picks)
            .map(|(&x, pick)| {
                let p = pick.map_or(single[reference], |pick| point(&|i| usize::from(pick[i])));
                let cheapest =
                    single.iter().filter(|s| s.quality >= x * qs - 1e-12).map(|s| s.cost_usd).min_by(f64::total_cmp).unwrap_or(f64::NAN);
                (if qs > 0.0 { p.quality / qs } else { 1.0 }, p.cost_usd / cheapest)
            })
            .collect();
        Ok((aiq(&cq(&curve), range.0, range.1) - aiq(&cq(&single), range.0, range.1), apgr(&to_curve(&curve), qw, qs), kept))
    })?;
    let interval = |mut v: Vec<f64>| -> Option<[f64; 2]> {
        v.retain(|x| x.is_finite());
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let at = |p: f64| v[((p * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)];
        Some([at(0.05), at(0.95)])
    };
    let aiq_gap: Vec<f64> = per.iter().map(|p| p.0).collect();
    Ok(TestIntervals {
        replicates: INTERVAL_REPLICATES,
        aiq_at_least_hull: aiq_gap.iter().filter(|&&d| d >= 0.0).count() as f64 / aiq_gap.len() as f64,
        aiq_minus_hull: interval(aiq_gap).unwrap_or([f64::NAN; 2]),
        apgr: interval(per.iter().map(|p| p.1).collect()).unwrap_or([f64::NAN; 2]),
        targets: targets
            .iter()
            .enumerate()
            .map(|(t, &x)| TargetInterval {
                target: x,
                kept: interval(per.iter().map(|p| p.2[t].0).collect()).unwrap_or([f64::NAN; 2]),
                kept_at_least_target_less_one_point: per.iter().filter(|p| p.2[t].0 >= x - 0.01 - 1e-12).count() as f64 / per.len() as f64,
                cost_over_cheapest_single: interval(per.iter().map(|p| p.2[t].1).collect()),
            })
            .collect(),
    })
}

fn model_refs(models: &[String]) -> Vec<&str> {
    models.iter().map(String::as_str).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two models on 40 prompts: the cheap one (0, cost 1) is right on the even prompts only, the
    /// reference (1, cost 10) on all. The router's curve: all cheap, `mix`, all reference.
    fn case(mix: Vec<Pick>) -> (Vec<Vec<Pick>>, Outcomes) {
        let n = 40;
        let out = Outcomes {
            q: (0..n).map(|i| vec![f64::from(u8::from(i % 2 == 0)), 1.0]).collect(),
            c: vec![vec![1.0, 10.0]; n],
            input_tokens: vec![0; n],
            out_tokens: vec![vec![None, None]; n],
        };
        (vec![vec![0; n], mix, vec![1; n]], out)
    }

    /// The mix that sends the cheap model exactly where it is right, except on `wrong` (odd
    /// prompts sent cheap) and `wasted` (even prompts sent to the reference).
    fn mix(wrong: &[usize], wasted: &[usize]) -> Vec<Pick> {
        (0..40).map(|i| Pick::from((i % 2 == 1 && !wrong.contains(&i)) || wasted.contains(&i))).collect()
    }

    #[test]
    fn test_intervals_rescore_the_same_picks_on_replicates_of_the_test_split() {
        // The two-model case above; the router's curve: all cheap, the perfect mix (cheap exactly
        // where it is right), all reference.
        let (curve, out) = case(mix(&[], &[]));
        let curve = &curve;
        let (perfect, cheap_only) = (curve[1].as_slice(), curve[0].as_slice());
        let t = intervals(&out, curve, &[Some(perfect), Some(cheap_only), None], &[0.95, 0.95, 0.95], (1, 0), 42).unwrap();
        assert_eq!(t.replicates, INTERVAL_REPLICATES);
        // The perfect mix beats the straight line between the two models on every replicate.
        assert_eq!(t.aiq_at_least_hull, 1.0);
        assert!(t.aiq_minus_hull[0] > 0.0 && t.aiq_minus_hull[0] < t.aiq_minus_hull[1], "{t:?}");
        // It keeps all of the reference's quality on every replicate, at about 0.55 of its cost
        // (half the prompts at 1 of 10), which moves with how many even prompts were drawn.
        assert_eq!((t.targets[0].kept, t.targets[0].kept_at_least_target_less_one_point), ([1.0, 1.0], 1.0));
        let c = t.targets[0].cost_over_cheapest_single.unwrap();
        // By count: 0.1 + 0.0225 × the odd prompts drawn (20 ± 3.2), so 0.43–0.67.
        assert!(0.4 < c[0] && c[0] < 0.47 && 0.63 < c[1] && c[1] < 0.7, "{c:?}");
        // The cheap model alone keeps about half, never 94%.
        let k = t.targets[1].kept;
        assert!(0.33 < k[0] && k[0] < 0.4 && 0.6 < k[1] && k[1] < 0.67, "{k:?}");
        assert_eq!(t.targets[1].kept_at_least_target_less_one_point, 0.0);
        // No routed point: the reference alone, at the cost of the cheapest single model there.
        assert_eq!(t.targets[2].kept, [1.0, 1.0]);
        assert_eq!(t.targets[2].cost_over_cheapest_single, Some([1.0, 1.0]));
        // APGR: the mix recovers the whole gap at its share s of reference calls, so 1 − s/2,
        // about 0.75 ± 0.04.
        assert!(t.apgr[0] > 0.66 && t.apgr[0] < 0.72 && t.apgr[1] > 0.78 && t.apgr[1] < 0.84, "{:?}", t.apgr);
        // The same seed draws the same replicates.
        let again = intervals(&out, curve, &[Some(perfect), Some(cheap_only), None], &[0.95, 0.95, 0.95], (1, 0), 42).unwrap();
        assert_eq!(format!("{t:?}"), format!("{again:?}"));
    }
}
