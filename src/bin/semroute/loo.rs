//! Leave-one-out check of an exemplar set through the router: each hand-labelled exemplar is
//! routed by a router built on all the others (`semroute::eval::leave_one_out`), and the tier of
//! the model chosen is compared with the exemplar's label.
//!
//! ```text
//! cargo run --release --example loo                     # built-in exemplars, router defaults
//! semroute loo --model multilingual-e5-small -k 8 --quality-bar 0.7
//! semroute loo --predictor neighbours   # the nearest exemplars alone
//! ```
//! "under" counts exemplars sent to a weaker tier than their label (a quality risk), "over"
//! those sent to a stronger one (a cost). Argument parsing and printing only.

use std::path::PathBuf;

use crate::fallback_args::FallbackArgs;
use semroute::config::PredictorName;
use semroute::eval::{leave_one_out, LooReport};
use semroute::predict::RidgeSettings;
use semroute::{ExemplarSet, PriceTable};

#[derive(clap::Args)]
pub struct Args {
    /// Installed embedding model (a folder under <home>/models).
    #[arg(long, default_value = semroute::embed::DEFAULT_MODEL)]
    model: String,
    /// Exemplar folder (default: the built-in exemplars).
    #[arg(long)]
    exemplars: Option<PathBuf>,
    /// Price table (default: the built-in one).
    #[arg(long)]
    prices: Option<PathBuf>,
    #[arg(short = 'k', default_value_t = 8)]
    k: usize,
    #[arg(long, default_value_t = 0.7)]
    quality_bar: f64,
    #[arg(long, default_value_t = 0.05)]
    temperature: f64,
    /// Pseudo-neighbours for each model's overall mean (`semroute::predict::Prior`; 0 = off).
    #[arg(long, default_value_t = 0.0)]
    prior_strength: f64,
    #[command(flatten)]
    fallback: FallbackArgs,
    /// `auto` (the router's default), `blend`, `kernel-ridge`, `neighbours`, `low-rank`,
    /// `ensemble` or `features`.
    #[arg(long, default_value = "auto")]
    predictor: PredictorName,
    /// Kernel ridge: kernel width in units of 1 - cosine (default: the embedder's).
    #[arg(long)]
    bandwidth: Option<f64>,
    /// Kernel ridge: weight of the prompt features.
    #[arg(long, default_value_t = RidgeSettings::default().feature_weight)]
    feature_weight: f64,
    /// Kernel ridge: ridge penalty.
    #[arg(long, default_value_t = RidgeSettings::default().lambda)]
    lambda: f64,
    /// Print the tables in Markdown (for the README).
    #[arg(long)]
    markdown: bool,
    /// Print each held-out exemplar's outcome as one JSON object per line instead of the tables.
    #[arg(long, conflicts_with = "markdown")]
    json: bool,
}

pub fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let set = match &args.exemplars {
        Some(d) => ExemplarSet::load_dir(d)?,
        None => ExemplarSet::builtin()?,
    };
    let prices = match &args.prices {
        Some(f) => PriceTable::from_file(f)?,
        None => PriceTable::builtin()?,
    };
    let embedder = semroute::embed::load_installed(&args.model)?;
    let ridge = RidgeSettings {
        bandwidth: args.bandwidth.unwrap_or(RidgeSettings::for_embedder(embedder.as_ref()).bandwidth),
        feature_weight: args.feature_weight,
        lambda: args.lambda,
    };
    let predictor = args.predictor.predictor(ridge);
    let started = std::time::Instant::now();
    let report = leave_one_out(&set, &prices, embedder, |b| {
        args.fallback.apply(
            b.k(args.k)
                .quality_bar(args.quality_bar)
                .temperature(args.temperature)
                .prior_strength(args.prior_strength)
                .predictor(predictor),
        )
    })?;
    if args.json {
        for o in &report.outcomes {
            println!("{}", serde_json::to_string(o)?);
        }
        return Ok(());
    }
    println!(
        "leave-one-out over {} exemplars, model {}, k {}, bar {}, caution {}, temperature {}, prior strength {}, predictor {} ({:.1}s)",
        report.outcomes.len(),
        args.model,
        args.k,
        args.quality_bar,
        args.fallback.caution.map_or("derived by each router".to_string(), |z| z.to_string()),
        args.temperature,
        args.prior_strength,
        args.predictor.name(),
        started.elapsed().as_secs_f64()
    );
    print_tables(&report, args.markdown);
    Ok(())
}

fn print_tables(report: &LooReport, md: bool) {
    let header = |what: &str| {
        if md {
            println!("\n| {what} | n | tier agreement | under | over |\n| --- | --- | --- | --- | --- |");
        } else {
            println!("-- {what}\n{:<22} {:>4} {:>8} {:>6} {:>6}", "", "n", "agree", "under", "over");
        }
    };
    let row = |name: &str, t: &semroute::eval::Tally| {
        let share = 100.0 * t.agreement();
        if md {
            println!("| {name} | {} | {share:.1}% | {} | {} |", t.n, t.under, t.over);
        } else {
            println!("{name:<22} {:>4} {share:>7.1}% {:>6} {:>6}", t.n, t.under, t.over);
        }
    };
    header("overall");
    row("all", &report.overall());
    for (what, groups) in [
        ("language", report.by(|o| o.language.clone())),
        ("label tier", report.by(|o| o.label.to_string())),
        ("category", report.by(|o| o.category.clone())),
    ] {
        header(what);
        for (k, t) in &groups {
            row(k, t);
        }
    }
    // The ceiling of any bar or caution on these predictions: 2% of the exemplars sent lower.
    let cap = report.outcomes.len() * 2 / 100;
    if let Some(f) = report.best_thresholds(cap) {
        println!(
            "\nbest thresholds in hindsight with at most {cap} under (2%): {:.1}% agree, {} under (cheap tier at predicted quality ≥ {:.2}, mid ≥ {:.2})",
            100.0 * f.agreement,
            f.under,
            f.cheap_threshold,
            f.mid_threshold
        );
    }
    let fallbacks = report.outcomes.iter().filter(|o| o.fallback).count();
    let (same, compared) = report.pairs_on_same_tier();
    println!(
        "\nfell back: {fallbacks}; same task in English and Chinese ({compared} pairs compared): same routed tier {same} times ({:.1}%)",
        100.0 * same as f64 / compared.max(1) as f64
    );
}
