//! Measures what routing saves on a data set with real per-model scores, through a real `Router`
//! built from the train split (see `semroute::eval::run` for the protocol).
//!
//! ```text
//! semroute savings --dataset ../shared/data/zeroeval-crux.jsonl \
//!     --prices ../shared/data/prices-2024.toml [--seed 42] [--seeds 5] [--json] [--plot out.png] \
//!     [--configs features,kernel-ridge]
//! ```
//! Argument parsing and printing only: the split, the cross-fitting, the router and the metrics
//! are the library's.

use crate::plot;

use std::path::PathBuf;
use std::sync::Arc;

use semroute::embed::{Embedder, Home, Memo};
use semroute::eval::{BenchSettings, Dataset, Report, RouterConfig, TargetResult};
use semroute::index::VectorCache;
use semroute::PriceTable;

#[derive(clap::Args)]
pub struct Args {
    /// Data set JSONL (id, task, prompt, scores; optional responses, output_tokens, cost_usd).
    #[arg(long)]
    dataset: PathBuf,
    /// Price table naming the models to route between.
    #[arg(long)]
    prices: PathBuf,
    #[arg(long, default_value_t = 0.7)]
    train_fraction: f64,
    /// Seed of the train/test split.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Run this many seeds (the given one, then 1, 2, ...) and print their mean as well.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Folds of the cross-fitting on the train split.
    #[arg(long, default_value_t = 5)]
    folds: usize,
    /// Search each quality target's operating point among every candidate configuration, not
    /// only the one chosen for the curve (cheaper on train; misses targets more often on test).
    #[arg(long)]
    targets_from_every_candidate: bool,
    /// Answer length assumed where the data set keeps no answers or lengths (else such a data
    /// set is refused: a missing cost is never priced as zero).
    #[arg(long)]
    assume_output_tokens: Option<u32>,
    /// Print one JSON object per seed (and one with the means) instead of the table.
    #[arg(long)]
    json: bool,
    /// Write the first seed's cost–quality curves to this PNG file.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Installed embedding model.
    #[arg(long, default_value = semroute::embed::DEFAULT_MODEL)]
    embedding_model: String,
    /// Cross-fit only these candidate configurations (comma-separated names, as the report lists
    /// them: default, model-means, knn-8, ..., features); default: all of them.
    #[arg(long, value_delimiter = ',')]
    configs: Vec<String>,
    /// Embed every prompt again instead of reading the vectors an earlier run of this data set
    /// with this model stored in the cache folder (`<home>/embeddings`).
    #[arg(long)]
    no_vector_cache: bool,
}

pub fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let data = Dataset::load(&args.dataset)?;
    let prices = PriceTable::from_file(&args.prices)?;
    // The model's session opens only if a prompt's vector is not in the cache.
    let options = semroute::embed::EmbedderOptions { lazy: true, ..Default::default() };
    let model: Arc<dyn Embedder> = semroute::embed::load_installed_with(&args.embedding_model, &options)?;
    // One memory of vectors across seeds: each prompt is embedded once, and once across runs
    // through the cache on disk.
    let memo = Arc::new(Memo::new(model));
    let prompts: Vec<&str> = data.records.iter().map(|r| r.prompt.as_str()).collect();
    if args.no_vector_cache {
        memo.remember(&prompts)?;
    } else {
        let cache = VectorCache::new(Home::from_env().cache_dir());
        let started = std::time::Instant::now();
        // A large set takes minutes to embed the first time: show how far it is (on a terminal).
        let mut bar: Option<indicatif::ProgressBar> = None;
        let cached = memo.remember_cached_with_progress(&prompts, &cache, |done, of| {
            let bar = bar.get_or_insert_with(|| {
                // Made at the first batch's end, so its clock starts with the run's.
                indicatif::ProgressBar::new(of as u64)
                    .with_style(
                        indicatif::ProgressStyle::with_template("embedding the prompts: {bar:30} {pos}/{len}, {elapsed} so far, eta {eta}")
                            .expect("a valid template"),
                    )
                    .with_elapsed(started.elapsed())
            });
            bar.set_position(done as u64);
        })?;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        eprintln!(
            "{} prompts' vectors {} in {:.1} s",
            prompts.len(),
            if cached { "read from the cache" } else { "embedded (and cached)" },
            started.elapsed().as_secs_f64()
        );
    }
    // Every prompt is known now: the model's hundreds of megabytes go (they would sit beside
    // every router the run builds).
    let detached = memo.detached();
    drop(memo);
    let memo: Arc<dyn Embedder> = Arc::new(detached);
    let configs = if args.configs.is_empty() {
        None
    } else {
        let all = RouterConfig::defaults(memo.as_ref());
        let mut chosen = Vec::new();
        for name in &args.configs {
            let Some(c) = all.iter().find(|c| &c.name == name) else {
                let names: Vec<&str> = all.iter().map(|c| c.name.as_str()).collect();
                return Err(format!("--configs: no candidate configuration named {name:?} (there are: {})", names.join(", ")).into());
            };
            chosen.push(c.clone());
        }
        Some(chosen)
    };
    let mut reports = Vec::new();
    for s in 0..args.seeds {
        let seed = if s == 0 { args.seed } else { s };
        let settings = BenchSettings {
            train_fraction: args.train_fraction,
            seed,
            folds: args.folds,
            assume_output_tokens: args.assume_output_tokens,
            targets_from_every_candidate: args.targets_from_every_candidate,
            configs: configs.clone(),
            ..BenchSettings::default()
        };
        let report = semroute::eval::run(&data, &prices, memo.clone(), &settings)?;
        if args.json {
            let mut v = serde_json::to_value(&report)?;
            v["dataset"] = args.dataset.display().to_string().into();
            v["schema_version"] = 2.into();
            println!("{v}");
        } else {
            print_report(&args, &report);
        }
        if s == 0 {
            if let Some(path) = &args.plot {
                draw(&args, &report, path)?;
            }
        }
        reports.push(report);
    }
    if reports.len() > 1 {
        print_mean(&args, &reports)?;
    }
    Ok(())
}

fn draw(args: &Args, r: &Report, path: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let at95 = r.targets.iter().find(|t| (t.target - 0.95).abs() < 1e-9).or(r.targets.first());
    let title = format!(
        "{} — test split ({} prompts, seed {}), {} models",
        args.dataset.file_name().unwrap_or_default().to_string_lossy(),
        r.test,
        r.seed,
        r.models.len()
    );
    plot::draw(
        path,
        &plot::Figure {
            title,
            router: r.curve.iter().map(|p| (p.cost_usd, p.quality)).collect(),
            oracle: r.oracle_curve.iter().map(|p| (p.cost_usd, p.quality)).collect(),
            single: r.single_models.iter().map(|s| (s.model.clone(), s.cost_usd, s.quality)).collect(),
            strong: r.reference_model.clone(),
            cheap: r.cheap_model.clone(),
            operating_point: at95.map_or((0.0, 0.0), |t| (t.cost_usd, t.quality)),
        },
    )
    .map_err(|e| format!("cannot write the plot {}: {e}", path.display()))?;
    if !args.json {
        println!("plot written to {}", path.display());
    }
    Ok(())
}

fn print_report(args: &Args, r: &Report) {
    println!("{} — {} train / {} test prompts (seed {}); figures on the test split", args.dataset.display(), r.train, r.test, r.seed);
    println!("{} models; reference (best on train) {}, cheapest {}", r.models.len(), r.reference_model, r.cheap_model);
    if let Some(a) = &r.assumption {
        println!("assumption: {a}");
    }
    if !r.models_left_out.is_empty() {
        println!("left out (not scored on enough of the prompts): {}", r.models_left_out.join(", "));
    }
    if !r.prompts_set_aside.is_empty() {
        // The first ten ids; --json lists them all.
        let more = r.prompts_set_aside.len().saturating_sub(10);
        println!(
            "{} prompts set aside (some model routed between has no score on them): {}{}",
            r.prompts_set_aside.len(),
            r.prompts_set_aside[..r.prompts_set_aside.len().min(10)].join(", "),
            if more > 0 { format!(" and {more} more (--json lists them)") } else { String::new() }
        );
    }
    if !r.models_unpriced.is_empty() {
        println!("left out (no price in the price table): {}", r.models_unpriced.join(", "));
    }
    println!("out-of-fold choice on train ({} candidates):", r.candidates.len());
    for c in &r.candidates {
        let mark = if c.config == r.chosen.config && c.policy == r.chosen.policy { "  <- chosen" } else { "" };
        println!("  {:<18} {:<16} AIQ {:.4}  Brier {:.4}{mark}", c.config.name, format!("{:?}", c.policy), c.oof_aiq, c.oof_brier);
    }
    println!(
        "AIQ {:.4} (single models' hull {:.4}, oracle {:.4})   APGR {:.3}   CPT(50%) {}   CPT(80%) {}",
        r.aiq,
        r.zero_router_aiq,
        r.oracle_aiq,
        r.apgr,
        share(r.cpt50),
        share(r.cpt80)
    );
    println!(
        "{:<8} {:<34} {:>10} {:>9} {:>8} {:>12} {:>12} {:>12}",
        "target", "chosen on train", "knob", "quality", "kept", "cost USD", "single@X", "oracle@X"
    );
    for t in &r.targets {
        println!(
            "{:<8} {:<34} {:>10} {:>9.4} {:>7.1}% {:>12.4} {:>12} {:>12}",
            format!("{:.0}%", 100.0 * t.target),
            format!("{} / {:?}", t.config, t.policy),
            t.knob.map_or("-".into(), |k| format!("{k:.4}")),
            t.quality,
            100.0 * t.kept,
            t.cost_usd,
            t.cheapest_single.as_ref().map_or("none".into(), |s| format!("{:.4}", s.1)),
            t.oracle_cost_usd.map_or("none".into(), |c| format!("{c:.4}")),
        );
    }
    let ti = &r.test_intervals;
    println!(
        "90% intervals over {} bootstrap replicates of the test prompts (the same picks): AIQ − hull {:+.4} to {:+.4} (at least the hull on {:.0}%), APGR {:.3} to {:.3}",
        ti.replicates,
        ti.aiq_minus_hull[0],
        ti.aiq_minus_hull[1],
        100.0 * ti.aiq_at_least_hull,
        ti.apgr[0],
        ti.apgr[1]
    );
    for t in &ti.targets {
        println!(
            "  {:.0}%: kept {:.1}% to {:.1}% (at least X − 1 on {:.0}%), cost over the cheapest single model there {}",
            100.0 * t.target,
            100.0 * t.kept[0],
            100.0 * t.kept[1],
            100.0 * t.kept_at_least_target_less_one_point,
            t.cost_over_cheapest_single.map_or("- (none reaches it)".into(), |c| format!("{:.2}× to {:.2}×", c[0], c[1]))
        );
    }
    if let Some(x) = &r.random_at_95 {
        println!(
            "random at the 95% target's reference share ({:.1}%): quality {:.4}, cost {:.4}",
            100.0 * x.reference_share,
            x.quality,
            x.cost_usd
        );
    }
    let c = &r.calibration;
    println!("calibration (test): Brier {:.4} (each model's train mean {:.4})", c.brier, c.baseline_brier);
    for (p, q, n) in &c.reliability {
        println!("  predicted {p:.2}  measured {q:.2}  ({n} pairs)");
    }
    if let Some((m, b)) = r.output_tokens_mae {
        println!("answer tokens, mean absolute error (test): {m:.1} (each model's train mean {b:.1})");
    }
    println!("single models, cheapest first:");
    for s in &r.single_models {
        println!("  {:<40} quality {:.4}  cost {:.4}", s.model, s.quality, s.cost_usd);
    }
    println!("({:.1} s)", r.seconds);
}

fn print_mean(args: &Args, reports: &[Report]) -> Result<(), Box<dyn std::error::Error>> {
    let n = reports.len() as f64;
    let mean = |f: &dyn Fn(&Report) -> f64| reports.iter().map(f).sum::<f64>() / n;
    // Per target: the mean share kept, the runs meeting X − 1, the mean cost over the cheapest
    // single model there.
    let summary = |of: &dyn Fn(&Report) -> &[TargetResult]| -> Vec<serde_json::Value> {
        (0..of(&reports[0]).len())
            .map(|i| {
                serde_json::json!({
                    "target": of(&reports[0])[i].target,
                    "kept": mean(&|r| of(r)[i].kept),
                    "met": reports.iter().filter(|r| of(r)[i].kept >= of(r)[i].target - 0.01 - 1e-12).count(),
                    "cost_vs_cheapest_single": mean(&|r| {
                        let t = &of(r)[i];
                        t.cheapest_single.as_ref().map_or(f64::NAN, |s| t.cost_usd / s.1)
                    }),
                })
            })
            .collect()
    };
    let v = serde_json::json!({
        "dataset": args.dataset.display().to_string(),
        "seeds": reports.iter().map(|r| r.seed).collect::<Vec<_>>(),
        "aiq": mean(&|r| r.aiq),
        "zero_router_aiq": mean(&|r| r.zero_router_aiq),
        "oracle_aiq": mean(&|r| r.oracle_aiq),
        "apgr": mean(&|r| r.apgr),
        "above_hull": reports.iter().filter(|r| r.aiq >= r.zero_router_aiq).count(),
        "targets": summary(&|r| &r.targets),
        "chosen": reports.iter().map(|r| format!("{} / {:?}", r.chosen.config.name, r.chosen.policy)).collect::<Vec<_>>(),
    });
    if args.json {
        println!("{}", serde_json::json!({"mean": v}));
    } else {
        println!("mean over {} seeds: {}", reports.len(), serde_json::to_string_pretty(&v)?);
    }
    Ok(())
}

fn share(s: Option<f64>) -> String {
    s.map_or("not reached".into(), |s| format!("{:.1}%", 100.0 * s))
}
