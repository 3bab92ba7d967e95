//! Measures what routing saves on a dataset with real per-model scores.
//!
//! ```text
//! cargo run --release --example savings -- --dataset ../shared/data/routellm-gsm8k.jsonl \
//!     --prices exemplars/benchmarks/prices-routellm.toml --train-fraction 0.7 --seed 42 \
//!     [--json] [--plot out.png]
//! ```
//! The models are those the price file lists that the dataset scored on every prompt. The dataset
//! is split deterministically by seed; exemplars are built from the train part only (measured
//! scores; output tokens given by the dataset or counted with tiktoken from its responses); every
//! test prompt is routed from its neighbours among them while the router's quality bar is swept
//! from 0 to 1, tracing the cost–quality curve. All figures are on the test split.
//!
//! - The reference ("strong") model is the best single model, the cheap one the cheapest, both
//!   chosen on the *train* split (mean quality; total cost) so nothing is picked on test data.
//! - RouteLLM's metrics (arXiv 2406.18665): APGR, CPT(50%), CPT(80%), with the share of calls
//!   sent to the strong model on the x axis; and the cheapest operating point reaching 95% of the
//!   strong model's quality, next to always-strong, always-cheap, random at the same strong-call
//!   share and the oracle.
//! - RouterBench's metrics (arXiv 2403.12031), meaningful with more than two models: AIQ over the
//!   cost range of the single models, for the router, the oracle and the single models' own hull
//!   (the "zero router"), and the router's and oracle's cost to reach 95% of the best model's
//!   quality next to that model's cost.
//!
//! The oracle knows every test score and cost: it sends each prompt to the model maximising
//! `quality - λ·cost`; λ = 0 gives the cheapest of the best-scoring models (the oracle's point in
//! the tables), and sweeping λ its whole curve. The router's fallback is off here: every prompt
//! is routed by its neighbours.

mod plot;

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use semroute::embed::{Embedder, FastEmbedder};
use semroute::eval::{aiq, apgr, cpt, output_tokens, split_indices, to_exemplars, CurvePoint, Dataset, Record};
use semroute::index::{HnswIndex, NeighbourIndex};
use semroute::policy::{choose, ChoiceInput, Constraints};
use semroute::predict::{predict_with_prior, Predictions, Prior};
use semroute::pricing::TokenCounter;
use semroute::{ExemplarSet, PriceTable};
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
    /// Dataset JSONL (id, task, prompt, scores, optional responses / output_tokens).
    #[arg(long)]
    dataset: PathBuf,
    /// Price table naming the models to route between.
    #[arg(long)]
    prices: PathBuf,
    #[arg(long, default_value_t = 0.7)]
    train_fraction: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Print one JSON object (on the last line) instead of the table.
    #[arg(long)]
    json: bool,
    /// Write the cost–quality curves to this PNG file.
    #[arg(long)]
    plot: Option<PathBuf>,
    #[arg(short = 'k', default_value_t = 8)]
    k: usize,
    #[arg(long, default_value_t = 0.05)]
    temperature: f64,
    /// Pseudo-neighbours for each model's overall mean (see `semroute::predict::Prior`): a
    /// number, or `auto` to pick it by AIQ on a split of the train part (never the test part).
    #[arg(long, default_value = "auto")]
    prior_strength: String,
    /// The models the router may choose: `pareto` (default) keeps those that no other model beats
    /// on the train split in both quality and cost; `all` keeps every model.
    #[arg(long, value_enum, default_value_t = Candidates::Pareto)]
    candidates: Candidates,
    /// Installed embedding model.
    #[arg(long, default_value = semroute::embed::DEFAULT_MODEL)]
    embedding_model: String,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Candidates {
    Pareto,
    All,
}

/// Quality and cost of every model on every prompt of a split: `q[i][m]`, `c[i][m]`.
struct Outcomes {
    /// Prompt tokens of each record, counted once.
    input_tokens: Vec<u64>,
    q: Vec<Vec<f64>>,
    c: Vec<Vec<f64>>,
}

impl Outcomes {
    fn new(records: &[&Record], models: &[&str], prices: &PriceTable, counter: &TokenCounter) -> Self {
        let mut q = Vec::with_capacity(records.len());
        let mut c = Vec::with_capacity(records.len());
        let mut input_tokens = Vec::with_capacity(records.len());
        for r in records {
            let input = counter.count(&r.prompt);
            input_tokens.push(input);
            q.push(models.iter().map(|m| r.scores[*m]).collect());
            c.push(
                models
                    .iter()
                    .map(|m| prices.get(m).expect("models come from the table").cost_usd(input, output_tokens(r, m, counter) as u64))
                    .collect(),
            );
        }
        Outcomes { input_tokens, q, c }
    }

    /// The operating point of sending prompt `i` to model `pick[i]`, for every `i`.
    fn point(&self, pick: &[usize], strong: usize) -> CurvePoint {
        let n = pick.len() as f64;
        let mut p = CurvePoint { strong_share: 0.0, quality: 0.0, cost_usd: 0.0 };
        for (i, &m) in pick.iter().enumerate() {
            p.quality += self.q[i][m] / n;
            p.cost_usd += self.c[i][m];
            p.strong_share += (m == strong) as u8 as f64 / n;
        }
        p
    }

    fn single(&self, m: usize, strong: usize) -> CurvePoint {
        self.point(&vec![m; self.q.len()], strong)
    }

    /// Oracle at price `lambda` (quality per USD): per prompt, the model maximising
    /// `quality - lambda * cost`, the cheapest among ties. `lambda = 0` is the cheapest of the
    /// best-scoring models; sweeping it traces the best cost–quality trade-off any router could
    /// reach on these prompts.
    fn oracle(&self, lambda: f64) -> Vec<usize> {
        (0..self.q.len())
            .map(|i| {
                let (q, c) = (&self.q[i], &self.c[i]);
                let value = |m: usize| q[m] - lambda * c[m];
                (0..q.len())
                    .max_by(|&a, &b| value(a).total_cmp(&value(b)).then(c[b].total_cmp(&c[a])))
                    .expect("at least one model")
            })
            .collect()
    }
}

/// The oracle's prices of quality: 0, then log-spaced from 0.01 to 10^9 quality per USD.
fn lambdas() -> impl Iterator<Item = f64> {
    std::iter::once(0.0).chain((0..=220).map(|i| 10f64.powf(-2.0 + i as f64 / 20.0)))
}

fn embed_all(embedder: &dyn Embedder, texts: &[&str], what: &str) -> semroute::Result<Vec<Vec<f32>>> {
    let bar = indicatif::ProgressBar::new(texts.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("embedding {msg} {bar:40} {pos}/{len} prompts, {per_sec}, eta {eta}")
            .expect("a valid template"),
    );
    bar.set_message(what.to_string());
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(16) {
        out.extend(embedder.embed_batch(chunk)?);
        bar.inc(chunk.len() as u64);
    }
    bar.finish();
    Ok(out)
}

/// What routing a split needs besides the split itself.
struct Ctx<'a> {
    /// Every model (the columns of [`Outcomes`]).
    all: &'a [&'a str],
    /// The models the router may choose, and their prices.
    models: &'a [&'a str],
    prices: &'a PriceTable,
    counter: &'a TokenCounter,
    k: usize,
    temperature: f64,
    strong: usize,
}

impl Ctx<'_> {
    /// Predictions for each of `queries` from exemplars built of `train` (and its vectors).
    fn predictions(
        &self,
        train: &[&Record],
        train_vectors: &[Vec<f32>],
        queries: &[Vec<f32>],
        prior_strength: f64,
    ) -> semroute::Result<Vec<Predictions>> {
        let exemplars = ExemplarSet::from_exemplars(to_exemplars(train, self.models, self.counter))?;
        // Every record has a score for every model, so none was dropped: vectors stay aligned.
        assert_eq!(exemplars.len(), train_vectors.len());
        let index = HnswIndex::build(train_vectors)?;
        let prior = Prior::from_exemplars(&exemplars, self.prices, prior_strength);
        Ok(queries
            .iter()
            .map(|v| predict_with_prior(&exemplars, &index.search(v, self.k), self.prices, self.temperature, &prior))
            .collect())
    }

    /// The model index the router picks for each prompt of `out` at quality bar `bar`.
    fn route(&self, out: &Outcomes, predictions: &[Predictions], bar: f64) -> Vec<usize> {
        out.input_tokens
            .iter()
            .zip(predictions)
            .map(|(&input_tokens, p)| {
                let choice = choose(
                    ChoiceInput {
                        predictions: p,
                        prices: self.prices,
                        input_tokens,
                        top_similarity: Some(1.0),
                        min_similarity: -1.0,
                        quality_bar: bar,
                        fallback_model: self.all[self.strong],
                        default_output_tokens: 500,
                    },
                    &Constraints::default(),
                );
                let name = &choice.candidates[choice.chosen.expect("no constraint rules a model out")].model;
                self.all.iter().position(|m| m == name).expect("a priced model")
            })
            .collect()
    }
}

/// Splits records and their vectors alike, as [`Dataset::split`] does.
#[allow(clippy::type_complexity)]
fn split_pairs<'a>(
    records: &[&'a Record],
    vectors: &[Vec<f32>],
    fraction: f64,
    seed: u64,
) -> ((Vec<&'a Record>, Vec<Vec<f32>>), (Vec<&'a Record>, Vec<Vec<f32>>)) {
    let (a, b) = split_indices(records.iter().map(|r| r.id.as_str()), fraction, seed);
    let pick = |part: Vec<usize>| (part.iter().map(|&i| records[i]).collect(), part.iter().map(|&i| vectors[i].clone()).collect());
    (pick(a), pick(b))
}

fn cost_range(single: &[CurvePoint]) -> (f64, f64) {
    (
        single.iter().map(|p| p.cost_usd).fold(f64::INFINITY, f64::min),
        single.iter().map(|p| p.cost_usd).fold(f64::NEG_INFINITY, f64::max),
    )
}

fn cq(c: &[CurvePoint]) -> Vec<(f64, f64)> {
    c.iter().map(|p| (p.cost_usd, p.quality)).collect()
}

/// The quality bars swept, for the router and the oracle alike.
fn bars() -> impl Iterator<Item = f64> {
    (0..=100).map(|i| i as f64 / 100.0)
}

/// Cheapest point of `curve` with quality at least `target`.
fn cheapest_reaching(curve: &[CurvePoint], target: f64) -> Option<CurvePoint> {
    curve.iter().filter(|p| p.quality >= target).min_by(|a, b| a.cost_usd.total_cmp(&b.cost_usd)).copied()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let started = std::time::Instant::now();
    let data = Dataset::load(&args.dataset)?;
    let all_prices = PriceTable::from_file(&args.prices)?;
    let (models, left_out): (Vec<&str>, Vec<&str>) =
        all_prices.names().partition(|m| data.records.iter().all(|r| r.scores.contains_key(*m)));
    let left_out: Vec<&str> = left_out.into_iter().filter(|m| data.records.iter().any(|r| r.scores.contains_key(*m))).collect();
    if models.len() < 2 {
        return Err(format!(
            "{} and {} share fewer than two models scored on every prompt (shared: {models:?})",
            args.prices.display(),
            args.dataset.display()
        )
        .into());
    }
    let prices = PriceTable::from_models(models.iter().map(|m| (m.to_string(), all_prices.get(m).unwrap().clone())))?;
    let counter = TokenCounter::cl100k()?;
    let (train, test) = data.split(args.train_fraction, args.seed);
    if train.is_empty() || test.is_empty() {
        return Err(format!("--train-fraction {} leaves an empty train or test split", args.train_fraction).into());
    }

    // Reference models, chosen on the train split only.
    let train_out = Outcomes::new(&train, &models, &prices, &counter);
    let train_single: Vec<CurvePoint> = (0..models.len()).map(|m| train_out.single(m, usize::MAX)).collect();
    let strong = (0..models.len())
        .max_by(|&a, &b| {
            train_single[a].quality.total_cmp(&train_single[b].quality).then(train_single[b].cost_usd.total_cmp(&train_single[a].cost_usd))
        })
        .unwrap();
    let cheap = (0..models.len()).min_by(|&a, &b| train_single[a].cost_usd.total_cmp(&train_single[b].cost_usd)).unwrap();

    let embedder: Arc<dyn Embedder> = Arc::new(FastEmbedder::load_installed(&args.embedding_model)?);
    let train_vectors = embed_all(embedder.as_ref(), &train.iter().map(|r| r.prompt.as_str()).collect::<Vec<_>>(), "train")?;
    let test_vectors = embed_all(embedder.as_ref(), &test.iter().map(|r| r.prompt.as_str()).collect::<Vec<_>>(), "test")?;
    // The models the router chooses from: all, or those no other model beats on the train split
    // in both quality and cost (a dominated model can only be picked by a lucky neighbour).
    let routable: Vec<&str> = match args.candidates {
        Candidates::All => models.clone(),
        Candidates::Pareto => (0..models.len())
            .filter(|&m| {
                let (a, b) = (&train_single, m);
                !(0..models.len()).any(|o| {
                    o != b
                        && a[o].quality >= a[b].quality
                        && a[o].cost_usd <= a[b].cost_usd
                        && (a[o].quality > a[b].quality || a[o].cost_usd < a[b].cost_usd)
                })
            })
            .map(|m| models[m])
            .collect(),
    };
    let routable_prices = PriceTable::from_models(routable.iter().map(|m| (m.to_string(), prices.get(m).unwrap().clone())))?;
    let ctx = Ctx {
        all: &models,
        models: &routable,
        prices: &routable_prices,
        counter: &counter,
        k: args.k,
        temperature: args.temperature,
        strong,
    };

    // The prior's strength: given, or the best by AIQ on an inner split of the train part.
    let candidates = [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0];
    let (prior_strength, tuning) = match args.prior_strength.as_str() {
        "auto" => {
            let (inner_train, inner_val) = split_pairs(&train, &train_vectors, 0.7, args.seed.wrapping_add(1));
            let val_out = Outcomes::new(&inner_val.0, &models, &prices, &counter);
            let val_single: Vec<CurvePoint> = (0..models.len()).map(|m| val_out.single(m, strong)).collect();
            let range = cost_range(&val_single);
            let mut scored = Vec::new();
            for &a in &candidates {
                let preds = ctx.predictions(&inner_train.0, &inner_train.1, &inner_val.1, a)?;
                let curve: Vec<CurvePoint> = bars().map(|b| val_out.point(&ctx.route(&val_out, &preds, b), strong)).collect();
                scored.push((a, aiq(&cq(&curve), range.0, range.1)));
            }
            let best = scored.iter().copied().max_by(|x, y| x.1.total_cmp(&y.1).then(y.0.total_cmp(&x.0))).unwrap();
            (best.0, json!({"chosen_on": "inner split of the train part (70/30, seed + 1)", "aiq_by_strength": scored}))
        }
        given => (
            given.parse::<f64>().ok().filter(|a| a.is_finite() && *a >= 0.0).ok_or_else(|| {
                format!("--prior-strength must be `auto` or a non-negative number, got {given:?}")
            })?,
            json!({"chosen_on": "given on the command line"}),
        ),
    };
    let predictions = ctx.predictions(&train, &train_vectors, &test_vectors, prior_strength)?;
    let out = Outcomes::new(&test, &models, &prices, &counter);

    let curve: Vec<CurvePoint> = bars().map(|b| out.point(&ctx.route(&out, &predictions, b), strong)).collect();
    let oracle_curve: Vec<CurvePoint> = lambdas().map(|l| out.point(&out.oracle(l), strong)).collect();
    let single: Vec<CurvePoint> = (0..models.len()).map(|m| out.single(m, strong)).collect();
    let (always_strong, always_cheap) = (single[strong], single[cheap]);
    let oracle = oracle_curve[0];

    // RouteLLM: the gap between the cheap and the strong model.
    let (qw, qs) = (always_cheap.quality, always_strong.quality);
    let op = cheapest_reaching(&curve, 0.95 * qs);
    let op_point = op.unwrap_or_else(|| *curve.iter().max_by(|a, b| a.quality.total_cmp(&b.quality)).unwrap());
    let random = CurvePoint {
        strong_share: op_point.strong_share,
        quality: qw + op_point.strong_share * (qs - qw),
        cost_usd: always_cheap.cost_usd + op_point.strong_share * (always_strong.cost_usd - always_cheap.cost_usd),
    };

    // RouterBench: AIQ over the single models' cost range; 95% of the best single model.
    let cost_range = cost_range(&single);
    let router_aiq = aiq(&cq(&curve), cost_range.0, cost_range.1);
    let oracle_aiq = aiq(&cq(&oracle_curve), cost_range.0, cost_range.1);
    let zero_aiq = aiq(&cq(&single), cost_range.0, cost_range.1);

    let router_metrics = |c: &[CurvePoint]| {
        json!({"apgr": apgr(c, qw, qs), "cpt50": cpt(c, qw, qs, 0.5), "cpt80": cpt(c, qw, qs, 0.8)})
    };
    let summary = |p: &CurvePoint, metrics: Value| {
        let mut v = json!({
            "quality": p.quality, "cost_usd": p.cost_usd, "strong_share": p.strong_share,
            "saving_vs_strong": 1.0 - p.cost_usd / always_strong.cost_usd,
        });
        v.as_object_mut().unwrap().extend(metrics.as_object().unwrap().clone());
        v
    };
    let at95 = |c: &[CurvePoint], aiq: f64| {
        let hit = cheapest_reaching(c, 0.95 * qs);
        json!({
            "aiq": aiq, "best_model": models[strong], "best_quality": qs, "best_model_cost": always_strong.cost_usd,
            "cost_at_95": hit.map(|p| p.cost_usd), "quality_at_95": hit.map(|p| p.quality),
            "saving_at_95": hit.map(|p| 1.0 - p.cost_usd / always_strong.cost_usd),
        })
    };

    let mut report = serde_json::Map::new();
    report.insert("dataset".into(), json!(args.dataset.display().to_string()));
    report.insert("prices".into(), json!(args.prices.display().to_string()));
    report.insert(
        "split".into(),
        json!({"train": train.len(), "test": test.len(), "seed": args.seed, "train_fraction": args.train_fraction, "reported_on": "test"}),
    );
    report.insert("models".into(), json!(models));
    report.insert("models_left_out".into(), json!(left_out));
    report.insert("routed_between".into(), json!(routable));
    report.insert("prior_strength".into(), json!(prior_strength));
    report.insert("prior_strength_tuning".into(), tuning);
    report.insert("k".into(), json!(args.k));
    report.insert("temperature".into(), json!(args.temperature));
    report.insert("strong_model".into(), json!(models[strong]));
    report.insert("cheap_model".into(), json!(models[cheap]));
    report.extend(router_metrics(&curve).as_object().unwrap().clone());
    report.insert("quality".into(), json!(op_point.quality));
    report.insert("cost_usd".into(), json!(op_point.cost_usd));
    report.insert("strong_share".into(), json!(op_point.strong_share));
    report.insert("saving_vs_strong".into(), json!(1.0 - op_point.cost_usd / always_strong.cost_usd));
    report.insert(
        "operating_point".into(),
        json!(if op.is_some() {
            "cheapest point of the router's curve with quality >= 95% of the strong model's"
        } else {
            "95% of the strong model's quality not reached: the router's best-quality point"
        }),
    );
    report.extend(at95(&curve, router_aiq).as_object().unwrap().clone());
    report.insert("aiq_cost_range".into(), json!([cost_range.0, cost_range.1]));
    report.insert("zero_router_aiq".into(), json!(zero_aiq));
    let mut oracle_json = summary(&oracle, router_metrics(&oracle_curve));
    oracle_json.as_object_mut().unwrap().extend(at95(&oracle_curve, oracle_aiq).as_object().unwrap().clone());
    report.insert("oracle".into(), oracle_json);
    report.insert("always_strong".into(), summary(&always_strong, router_metrics(&[always_strong])));
    report.insert("always_cheap".into(), summary(&always_cheap, router_metrics(&[always_cheap])));
    // Random routing at a strong-call share s recovers the gap in proportion: PGR(s) = s.
    report.insert("random".into(), summary(&random, json!({"apgr": 0.5, "cpt50": 0.5, "cpt80": 0.8})));
    let mut by_cost: Vec<usize> = (0..models.len()).collect();
    by_cost.sort_by(|&a, &b| single[a].cost_usd.total_cmp(&single[b].cost_usd));
    report.insert(
        "single_models".into(),
        json!(by_cost
            .iter()
            .map(|&m| {
                let p = &single[m];
                json!({"model": models[m], "quality": p.quality, "cost_usd": p.cost_usd,
                    // A single model is a router with one operating point.
                    "aiq": aiq(&[(p.cost_usd, p.quality)], cost_range.0, cost_range.1),
                    "saving_at_95": (p.quality >= 0.95 * qs).then(|| 1.0 - p.cost_usd / always_strong.cost_usd)})
            })
            .collect::<Vec<_>>()),
    );
    // The simplest alternative to routing: the cheapest single model that reaches 95% by itself.
    let single_at_95 = by_cost.iter().copied().find(|&m| single[m].quality >= 0.95 * qs);
    report.insert(
        "cheapest_single_at_95".into(),
        json!(single_at_95.map(|m| json!({"model": models[m], "quality": single[m].quality, "cost_usd": single[m].cost_usd,
            "saving_at_95": 1.0 - single[m].cost_usd / always_strong.cost_usd}))),
    );
    report.insert("curve".into(), json!(curve.iter().map(|p| [p.cost_usd, p.quality, p.strong_share]).collect::<Vec<_>>()));
    report.insert("seconds".into(), json!(started.elapsed().as_secs_f64()));

    if let Some(path) = &args.plot {
        let title = format!(
            "{} — test split ({} prompts, seed {}), {} models",
            args.dataset.file_name().unwrap_or_default().to_string_lossy(),
            test.len(),
            args.seed,
            models.len()
        );
        plot::draw(
            path,
            &plot::Figure {
                title,
                router: cq(&curve),
                oracle: cq(&oracle_curve),
                single: by_cost.iter().map(|&m| (models[m].to_string(), single[m].cost_usd, single[m].quality)).collect(),
                strong: models[strong].to_string(),
                cheap: models[cheap].to_string(),
                operating_point: (op_point.cost_usd, op_point.quality),
            },
        )
        .map_err(|e| format!("cannot write the plot {}: {e}", path.display()))?;
    }

    if args.json {
        println!("{}", serde_json::to_string(&Value::Object(report))?);
        return Ok(());
    }
    let f = |k: &str| report[k].as_f64();
    println!(
        "{} — {} train / {} test prompts (seed {}); all figures on the test split",
        args.dataset.display(),
        train.len(),
        test.len(),
        args.seed
    );
    println!(
        "{} models; strong (best on train) {}, cheap {}; prior strength {prior_strength} ({})",
        models.len(),
        models[strong],
        models[cheap],
        report["prior_strength_tuning"]["chosen_on"].as_str().unwrap_or_default()
    );
    if routable.len() < models.len() {
        println!("routed between the {} not dominated on train: {}", routable.len(), routable.join(", "));
    }
    if !left_out.is_empty() {
        println!("left out (not scored on every prompt): {}", left_out.join(", "));
    }
    println!(
        "APGR {:.3}   CPT(50%) {}   CPT(80%) {}   AIQ {:.4} (oracle {:.4}, single models' hull {:.4})",
        f("apgr").unwrap(),
        fmt_share(f("cpt50")),
        fmt_share(f("cpt80")),
        router_aiq,
        oracle_aiq,
        zero_aiq
    );
    println!("{:<46} {:>8} {:>12} {:>8} {:>9}", "", "quality", "cost USD", "strong", "saving");
    let row = |name: &str, p: &CurvePoint| {
        println!(
            "{name:<46} {:>8.4} {:>12.4} {:>7.1}% {:>8.1}%",
            p.quality,
            p.cost_usd,
            100.0 * p.strong_share,
            100.0 * (1.0 - p.cost_usd / always_strong.cost_usd)
        )
    };
    row(if op.is_some() { "router at 95% of strong quality" } else { "router, best point (95% not reached)" }, &op_point);
    row("random at the same strong share", &random);
    row("oracle", &oracle);
    if let Some(p) = cheapest_reaching(&oracle_curve, 0.95 * qs) {
        row("oracle at 95% of strong quality", &p);
    }
    if let Some(m) = single_at_95.filter(|&m| m != strong) {
        row(&format!("cheapest single model at 95% ({})", models[m]), &single[m]);
    }
    row(&format!("always strong ({})", models[strong]), &always_strong);
    row(&format!("always cheap ({})", models[cheap]), &always_cheap);
    if models.len() > 2 {
        println!("single models, by test cost:");
        for &m in &by_cost {
            row(&format!("  {}", models[m]), &single[m]);
        }
    }
    if let Some(path) = &args.plot {
        println!("plot written to {}", path.display());
    }
    println!("({:.1} s)", started.elapsed().as_secs_f64());
    Ok(())
}

fn fmt_share(s: Option<f64>) -> String {
    s.map_or("not reached".into(), |s| format!("{:.1}%", 100.0 * s))
}
