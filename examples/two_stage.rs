//! Would a two-stage router pay: the static embedder decides where its neighbours are close, the
//! transformer everywhere else? Routes the fresh prompts (tests/fixtures/fresh) with both
//! routers, then, for thresholds at deciles of the static router's unfamiliarity, prints how many
//! prompts the static router would decide, how often it picks the transformer's tier there, and
//! how many prompts the combination puts on their side (see the README's "Static embedders").
//!
//! ```text
//! cargo run --release --example two_stage -- [--fast static-all-minilm-l6-v2] [--slow multilingual-e5-small-int8]
//! ```

use clap::Parser;
use semroute::eval::{check_sides, SideCase, SideOutcome};
use semroute::Router;

#[derive(Parser)]
struct Args {
    /// The fast (static) model.
    #[arg(long, default_value = "static-all-minilm-l6-v2")]
    fast: String,
    /// The transformer.
    #[arg(long, default_value = semroute::embed::DEFAULT_MODEL)]
    slow: String,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("two_stage: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> semroute::Result<()> {
    let mut cases = SideCase::load("tests/fixtures/fresh/prompts.jsonl")?;
    cases.extend(SideCase::load("tests/fixtures/fresh/nonsense.jsonl")?);
    let router = |name: &str| Router::builder().embedder(semroute::embed::load_installed(name)?).build();
    let fast = check_sides(&router(&args.fast)?, &cases)?.outcomes;
    let slow = check_sides(&router(&args.slow)?, &cases)?.outcomes;
    let n = cases.len();
    let share = |o: &[&SideOutcome]| 100.0 * o.iter().filter(|o| o.agree).count() as f64 / n as f64;
    println!(
        "{} prompts on their side: {} alone {:.1}%, {} alone {:.1}%",
        n,
        args.fast,
        share(&fast.iter().collect::<Vec<_>>()),
        args.slow,
        share(&slow.iter().collect::<Vec<_>>())
    );
    let unfamiliarity = |o: &SideOutcome| o.unfamiliarity.unwrap_or(f64::INFINITY);
    let mut sorted: Vec<f64> = fast.iter().map(unfamiliarity).collect();
    sorted.sort_by(f64::total_cmp);
    println!("{:>22} {:>16} {:>22} {:>14}", "static decides below", "prompts", "same tier as the other", "on their side");
    for decile in 1..=8 {
        let limit = sorted[(decile * n / 10).min(n - 1)];
        let decides = |o: &SideOutcome| unfamiliarity(o) <= limit && !o.fallback;
        let chosen: Vec<&SideOutcome> = fast.iter().zip(&slow).map(|(f, s)| if decides(f) { f } else { s }).collect();
        let used: Vec<(&SideOutcome, &SideOutcome)> = fast.iter().zip(&slow).filter(|(f, _)| decides(f)).collect();
        let same = used.iter().filter(|(f, s)| f.tier == s.tier && f.fallback == s.fallback).count();
        println!(
            "{:>22.3} {:>9} ({:>3}%) {:>15} of {:>4} {:>13.1}%",
            limit,
            used.len(),
            100 * used.len() / n,
            same,
            used.len(),
            share(&chosen)
        );
    }
    Ok(())
}
