//! Measures what routing saves on a dataset with real per-model scores.
//!
//! ```text
//! cargo run --release --example savings -- --dataset ../shared/data/routellm-gsm8k.jsonl \
//!     --prices exemplars/benchmarks/prices-routellm.toml --train-fraction 0.7 --seed 42 [--json]
//! ```
//! The dataset is split deterministically by seed; exemplars are built from the train part only
//! (measured scores; output tokens from the responses, counted with tiktoken); every test prompt is
//! routed with the router's predictions while its quality bar is swept from 0 to 1, tracing the
//! cost–quality curve. Reported on the test split: APGR, CPT(50%), CPT(80%) (RouteLLM's metrics),
//! and the cheapest operating point reaching 95% of the strong model's quality, next to
//! always-strong, always-cheap, random (at matched strong-call rates) and oracle routing.
//! The fallback is off here (every prompt is routed by its neighbours).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use semroute::embed::{Embedder, FastEmbedder};
use semroute::eval::{apgr, cpt, output_tokens, to_exemplars, CurvePoint, Dataset, Record};
use semroute::index::{HnswIndex, NeighbourIndex};
use semroute::policy::{choose, ChoiceInput, Constraints};
use semroute::predict::{predict, Predictions};
use semroute::pricing::TokenCounter;
use semroute::{ExemplarSet, PriceTable};

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
    #[arg(short = 'k', default_value_t = 8)]
    k: usize,
    #[arg(long, default_value_t = 0.05)]
    temperature: f64,
    /// Installed embedding model.
    #[arg(long, default_value = semroute::embed::DEFAULT_MODEL)]
    embedding_model: String,
}

struct TestItem<'a> {
    record: &'a Record,
    input_tokens: u64,
    predictions: Predictions,
}

fn embed_all(embedder: &dyn Embedder, texts: &[&str], what: &str) -> semroute::Result<Vec<Vec<f32>>> {
    let bar = indicatif::ProgressBar::new(texts.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("embedding {msg} {bar:40} {pos}/{len} prompts, {per_sec}, eta {eta}")
            .expect("a valid template"),
    );
    bar.set_message(what.to_string());
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(64) {
        out.extend(embedder.embed_batch(chunk)?);
        bar.inc(chunk.len() as u64);
    }
    bar.finish();
    Ok(out)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let started = std::time::Instant::now();
    let data = Dataset::load(&args.dataset)?;
    let prices = PriceTable::from_file(&args.prices)?;
    let models: Vec<&str> = prices.names().filter(|m| data.records.iter().all(|r| r.scores.contains_key(*m))).collect();
    if models.len() < 2 {
        return Err(format!("the price table and the dataset share fewer than two models scored on every prompt: {models:?}").into());
    }
    let prices = PriceTable::from_models(models.iter().map(|m| (m.to_string(), prices.get(m).unwrap().clone())))?;
    let strong = prices.strongest().to_string();
    let cheap = prices
        .iter()
        .min_by(|a, b| a.1.output_per_mtok.total_cmp(&b.1.output_per_mtok))
        .map(|(m, _)| m.to_string())
        .unwrap();
    let counter = TokenCounter::cl100k()?;
    let (train, test) = data.split(args.train_fraction, args.seed);
    let exemplars = ExemplarSet::from_exemplars(to_exemplars(&train, &models, &counter))?;
    let embedder: Arc<dyn Embedder> = Arc::new(FastEmbedder::load_installed(&args.embedding_model)?);
    let train_prompts: Vec<&str> = exemplars.iter().map(|e| e.prompt.as_str()).collect();
    let index = HnswIndex::build(&embed_all(embedder.as_ref(), &train_prompts, "train")?)?;
    let test_prompts: Vec<&str> = test.iter().map(|r| r.prompt.as_str()).collect();
    let test_vectors = embed_all(embedder.as_ref(), &test_prompts, "test")?;
    let items: Vec<TestItem> = test
        .iter()
        .zip(&test_vectors)
        .map(|(r, v)| TestItem {
            record: r,
            input_tokens: counter.count(&r.prompt),
            predictions: predict(&exemplars, &index.search(v, args.k), &prices, args.temperature),
        })
        .collect();

    // Actual cost and quality of sending `item` to `model`.
    let outcome = |item: &TestItem, model: &str| {
        let price = prices.get(model).unwrap();
        let out = output_tokens(item.record, model, &counter) as u64;
        (item.record.scores[model], price.cost_usd(item.input_tokens, out))
    };
    let n = items.len() as f64;
    let run = |pick: &dyn Fn(&TestItem) -> String| {
        let (mut q, mut c, mut s) = (0.0, 0.0, 0.0);
        for it in &items {
            let m = pick(it);
            let (qq, cc) = outcome(it, &m);
            q += qq;
            c += cc;
            s += (m == strong) as u8 as f64;
        }
        CurvePoint { strong_share: s / n, quality: q / n, cost_usd: c }
    };

    let always_strong = run(&|_| strong.clone());
    let always_cheap = run(&|_| cheap.clone());
    let oracle = run(&|it| {
        let best = models.iter().map(|m| it.record.scores[*m]).fold(f64::NEG_INFINITY, f64::max);
        models
            .iter()
            .filter(|m| it.record.scores[**m] >= best)
            .min_by(|a, b| outcome(it, a).1.total_cmp(&outcome(it, b).1))
            .unwrap()
            .to_string()
    });
    let curve: Vec<CurvePoint> = (0..=100)
        .map(|i| {
            let bar = i as f64 / 100.0;
            run(&|it| {
                let choice = choose(
                    ChoiceInput {
                        predictions: &it.predictions,
                        prices: &prices,
                        input_tokens: it.input_tokens,
                        top_similarity: Some(1.0),
                        min_similarity: -1.0,
                        quality_bar: bar,
                        fallback_model: &strong,
                        default_output_tokens: 500,
                    },
                    &Constraints::default(),
                );
                choice.candidates[choice.chosen.unwrap()].model.clone()
            })
        })
        .collect();

    let (qw, qs) = (always_cheap.quality, always_strong.quality);
    let target = 0.95 * qs;
    let at95 = curve.iter().filter(|p| p.quality >= target).min_by(|a, b| a.cost_usd.total_cmp(&b.cost_usd)).copied();
    let random_apgr = 0.5; // random routing recovers the gap in proportion to its strong calls
    let summary = |p: &CurvePoint| {
        serde_json::json!({
            "quality": p.quality, "cost_usd": p.cost_usd, "strong_share": p.strong_share,
            "saving_vs_strong": 1.0 - p.cost_usd / always_strong.cost_usd,
        })
    };
    let mut report = BTreeMap::new();
    report.insert("dataset", serde_json::json!(args.dataset.display().to_string()));
    report.insert("split", serde_json::json!({"train": train.len(), "test": test.len(), "seed": args.seed, "train_fraction": args.train_fraction, "reported_on": "test"}));
    report.insert("strong_model", serde_json::json!(strong));
    report.insert("cheap_model", serde_json::json!(cheap));
    report.insert("apgr", serde_json::json!(apgr(&curve, qw, qs)));
    report.insert("cpt50", serde_json::json!(cpt(&curve, qw, qs, 0.5)));
    report.insert("cpt80", serde_json::json!(cpt(&curve, qw, qs, 0.8)));
    let op = at95.unwrap_or(always_strong);
    report.insert("quality", serde_json::json!(op.quality));
    report.insert("cost_usd", serde_json::json!(op.cost_usd));
    report.insert("strong_share", serde_json::json!(op.strong_share));
    report.insert("operating_point", serde_json::json!("cheapest point of the curve with quality >= 95% of the strong model's"));
    report.insert("always_strong", serde_json::json!(summary(&always_strong)));
    report.insert("always_cheap", serde_json::json!(summary(&always_cheap)));
    report.insert("oracle", serde_json::json!(summary(&oracle)));
    let random_cost = always_cheap.cost_usd + op.strong_share * (always_strong.cost_usd - always_cheap.cost_usd);
    let random_quality = qw + op.strong_share * (qs - qw);
    report.insert(
        "random",
        serde_json::json!({"apgr": random_apgr, "cpt50": 0.5, "cpt80": 0.8, "strong_share": op.strong_share,
            "quality": random_quality, "cost_usd": random_cost}),
    );
    report.insert("seconds", serde_json::json!(started.elapsed().as_secs_f64()));

    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{} — {} train / {} test prompts (seed {}), figures on the test split", args.dataset.display(), train.len(), test.len(), args.seed);
        println!("strong model {strong}, cheap model {cheap}");
        println!("APGR {:.3}   CPT(50%) {}   CPT(80%) {}", report["apgr"].as_f64().unwrap(), fmt_share(cpt(&curve, qw, qs, 0.5)), fmt_share(cpt(&curve, qw, qs, 0.8)));
        println!("{:<34} {:>8} {:>12} {:>8} {:>9}", "", "quality", "cost USD", "strong", "saving");
        let row = |name: &str, p: &CurvePoint| {
            println!(
                "{name:<34} {:>8.4} {:>12.4} {:>7.1}% {:>8.1}%",
                p.quality,
                p.cost_usd,
                100.0 * p.strong_share,
                100.0 * (1.0 - p.cost_usd / always_strong.cost_usd)
            )
        };
        row("router at 95% of strong quality", &op);
        row("random at the same strong share", &CurvePoint { strong_share: op.strong_share, quality: random_quality, cost_usd: random_cost });
        row("always strong", &always_strong);
        row("always cheap", &always_cheap);
        row("oracle", &oracle);
        println!("({:.1} s)", started.elapsed().as_secs_f64());
    }
    Ok(())
}

fn fmt_share(s: Option<f64>) -> String {
    s.map_or("not reached".into(), |s| format!("{:.1}%", 100.0 * s))
}
