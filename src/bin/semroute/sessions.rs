//! The agent-session replay (`semroute::eval::replay`): generated agent sessions routed per
//! request, sticky and cache-aware, with cost, switches and predicted quality for each.
//!
//! ```text
//! semroute eval sessions                                   # 60 sessions over the fresh prompts
//! semroute eval sessions --sessions 200 --seed 7 --plot benches/figures/sessions.png --markdown
//! ```
//! Argument parsing and printing only.

use std::path::PathBuf;

use semroute::eval::{replay, ReplaySettings};
use semroute::Router;

#[derive(clap::Args)]
pub struct Args {
    /// Installed embedding model (a folder under <home>/models).
    #[arg(long, default_value = semroute::embed::DEFAULT_MODEL)]
    model: String,
    /// Tasks: a JSONL file with a `prompt` on each line, such as an exemplar file (default: the
    /// committed fresh prompts, routine and hard, English and Chinese, none of them an exemplar).
    #[arg(long)]
    tasks: Option<PathBuf>,
    /// Sessions to generate.
    #[arg(long, default_value_t = 60)]
    sessions: usize,
    /// Seed of the generator.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Most steps in a session (the fewest is 2).
    #[arg(long, default_value_t = 250)]
    max_steps: u32,
    /// Share of sessions sending tool results as user messages (ReAct).
    #[arg(long, default_value_t = 0.5)]
    react_share: f64,
    #[arg(long, default_value_t = 0.7)]
    quality_bar: f64,
    /// Draw the cumulative cost of each strategy to this PNG.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Print the report as JSON (the cumulative costs left out).
    #[arg(long)]
    json: bool,
    /// Print the table in Markdown (for the README).
    #[arg(long)]
    markdown: bool,
}

pub fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let file = args.tasks.clone().unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fresh/prompts.jsonl"));
    let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut tasks = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("{}:{}: {e}", file.display(), i + 1))?;
        match v.get("prompt").and_then(|p| p.as_str()) {
            Some(p) => tasks.push(p.to_string()),
            None => return Err(format!("{}:{}: no string field `prompt`", file.display(), i + 1).into()),
        }
    }
    let router = Router::builder().embedder(semroute::embed::load_installed(&args.model)?).quality_bar(args.quality_bar).build()?;
    let mut settings = ReplaySettings::default();
    settings.sessions = args.sessions;
    settings.seed = args.seed;
    settings.max_steps = args.max_steps;
    settings.react_share = args.react_share;
    let mut report = replay(&router, &tasks, &settings)?;
    if let Some(path) = &args.plot {
        let lines: Vec<(String, Vec<f64>)> = report.strategies.iter().map(|s| (s.strategy.clone(), s.cumulative_usd.clone())).collect();
        crate::plot::draw_cumulative(
            path,
            &format!("{} agent sessions, {} steps: cumulative cost", report.sessions, report.steps),
            &lines,
        )?;
    }
    if args.json {
        for s in &mut report.strategies {
            s.cumulative_usd.clear();
        }
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{} sessions, {} steps (longest {}, largest prompt {} tokens), model {}, bar {}, {:.1} s",
        report.sessions, report.steps, report.longest, report.largest_prompt_tokens, args.model, args.quality_bar, report.seconds
    );
    let base = report.strategies[0].cost_usd;
    let base_switches = report.strategies[0].switches.max(1) as f64;
    let (sep, open, close) = if args.markdown { (" | ", "| ", " |") } else { ("  ", "", "") };
    println!(
        "{open}{:<12}{sep}{:>10}{sep}{:>9}{sep}{:>9}{sep}{:>10}{sep}{:>8}{sep}{:>8}{sep}{:>11}{close}",
        "strategy", "cost USD", "vs per-req", "switches", "vs per-req", "quality", "cached", "routing ms"
    );
    if args.markdown {
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    }
    for s in &report.strategies {
        println!(
            "{open}{:<12}{sep}{:>10.2}{sep}{:>9.1}%{sep}{:>9}{sep}{:>9.1}%{sep}{:>8.3}{sep}{:>7.1}%{sep}{:>11.3}{close}",
            s.strategy,
            s.cost_usd,
            100.0 * (s.cost_usd / base - 1.0),
            s.switches,
            100.0 * (s.switches as f64 / base_switches - 1.0),
            s.predicted_quality,
            100.0 * s.cached_share,
            s.routing_ms
        );
    }
    Ok(())
}
