//! The side check (`semroute::eval::check_sides`): hand-labelled prompts the router has never
//! seen, routed with the built-in exemplars and prices, compared with the side a careful person
//! would pick (cheap or mid, strong, or unknown for nonsense).
//!
//! ```text
//! cargo run --release --example fresh                      # the default embedder and settings
//! semroute fresh --model multilingual-e5-small --markdown
//! semroute fresh --cases my-prompts.jsonl --caution 0
//! ```
//! Argument parsing and printing only.

use std::path::PathBuf;

use crate::fallback_args::FallbackArgs;
use semroute::config::PredictorName;
use semroute::eval::{check_sides, Side, SideCase, SideReport};
use semroute::predict::RidgeSettings;
use semroute::{ExemplarSet, Router};

#[derive(clap::Args)]
pub struct Args {
    /// Installed embedding model (a folder under <home>/models).
    #[arg(long, default_value = semroute::embed::DEFAULT_MODEL)]
    model: String,
    /// Case files (JSONL: id, prompt, language, category, side, why); default: the committed
    /// fresh prompts and nonsense prompts.
    #[arg(long)]
    cases: Vec<PathBuf>,
    /// Exemplar folder (default: the built-in exemplars).
    #[arg(long)]
    exemplars: Option<PathBuf>,
    #[command(flatten)]
    fallback: FallbackArgs,
    #[arg(long, default_value_t = 0.7)]
    quality_bar: f64,
    /// `auto` (the router's default), `blend`, `kernel-ridge`, `neighbours`, `low-rank`,
    /// `ensemble` or `features`.
    #[arg(long, default_value = "auto")]
    predictor: PredictorName,
    /// Kernel ridge: ridge penalty (default: the embedder's, `RidgeSettings::for_embedder`).
    #[arg(long)]
    lambda: Option<f64>,
    /// List every case the router did not send to its side.
    #[arg(long)]
    misses: bool,
    /// Print the tables in Markdown (for the README).
    #[arg(long)]
    markdown: bool,
}

pub fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let files = if args.cases.is_empty() {
        let here = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fresh");
        vec![here.join("prompts.jsonl"), here.join("nonsense.jsonl")]
    } else {
        args.cases.clone()
    };
    let mut cases = Vec::new();
    for f in &files {
        cases.extend(SideCase::load(f)?);
    }
    let embedder = semroute::embed::load_installed(&args.model)?;
    let ridge = RidgeSettings::for_embedder(embedder.as_ref());
    let predictor = args.predictor.predictor(RidgeSettings { lambda: args.lambda.unwrap_or(ridge.lambda), ..ridge });
    let mut b = Router::builder().embedder(embedder).quality_bar(args.quality_bar).predictor(predictor);
    if let Some(dir) = &args.exemplars {
        b = b.exemplars(ExemplarSet::load_dir(dir)?);
    }
    let router = args.fallback.apply(b).build()?;
    let started = std::time::Instant::now();
    let report = check_sides(&router, &cases)?;
    println!(
        "{} prompts, model {}, predictor {}, bar {}, caution {}, fallback {} ({:.1} s)",
        cases.len(),
        args.model,
        args.predictor.name(),
        args.quality_bar,
        match router.settings() {
            s if s.caution_derived => format!("{} (derived)", s.caution),
            s => s.caution.to_string(),
        },
        match (router.settings().unfamiliar_limit, router.settings().min_similarity) {
            (Some(l), _) => format!("above unfamiliarity {l:.2}"),
            (None, Some(s)) => format!("below similarity {s:.3}"),
            (None, None) => "never".into(),
        },
        started.elapsed().as_secs_f64()
    );
    print_tables(&report, args.markdown);
    if args.misses {
        println!();
        for (o, c) in report.outcomes.iter().zip(&cases).filter(|(o, _)| !o.agree) {
            let preview: String = c.prompt.chars().take(70).collect::<String>().replace('\n', " ");
            println!(
                "{:<16} {:?} -> {} ({}){} sim {:.3} unfamiliarity {:.2}: {preview}",
                o.id,
                o.side,
                o.model,
                o.tier,
                if o.fallback { " fallback" } else { "" },
                o.top_similarity.unwrap_or(f32::NAN),
                o.unfamiliarity.unwrap_or(f64::NAN)
            );
        }
    }
    Ok(())
}

fn print_tables(report: &SideReport, md: bool) {
    let header = |what: &str| {
        if md {
            println!("\n| {what} | n | on its side | hard → cheap | hard → mid | routine → strong | fell back |\n| --- | --- | --- | --- | --- | --- | --- |");
        } else {
            println!("-- {what}\n{:<22} {:>4} {:>8} {:>8} {:>8} {:>8} {:>8}", "", "n", "agree", "hard>ch", "hard>mid", "rout>st", "fallbk");
        }
    };
    let row = |name: &str, t: &semroute::eval::SideTally| {
        let share = 100.0 * t.agreement();
        if md {
            println!(
                "| {name} | {} | {share:.1}% | {} | {} | {} | {} |",
                t.n, t.strong_to_cheap, t.strong_to_mid, t.cheap_to_strong, t.fallbacks
            );
        } else {
            println!(
                "{name:<22} {:>4} {share:>7.1}% {:>8} {:>8} {:>8} {:>8}",
                t.n, t.strong_to_cheap, t.strong_to_mid, t.cheap_to_strong, t.fallbacks
            );
        }
    };
    let side = |s: Side| format!("{s:?}").to_lowercase();
    header("overall");
    row("all", &report.overall());
    for (what, groups) in [
        ("language", report.by(|o| o.language.clone())),
        ("language × side", report.by(|o| format!("{} {}", o.language, side(o.side)))),
        ("category", report.by(|o| o.category.clone())),
    ] {
        header(what);
        for (k, t) in &groups {
            row(k, t);
        }
    }
}
