//! Grades exemplars on every provider: the measured exemplars the router learns from.
//!
//! ```text
//! semroute grade --providers providers.toml --exemplars FILE_OR_DIR \
//!     --out results.jsonl [--judge NAME] [--concurrency N] [--estimate] [--prices FILE]
//! ```
//! Each exemplar goes to every model of the providers file (or `--models a,b`). An exemplar with
//! a `reference` answer is scored by matching it; any other by the judge model. Every finished
//! call is appended to `<out>.calls.jsonl` and synced before the next, so a killed run, started
//! again with the same command, only does the pairs still missing. At the end `<out>` is
//! (re)written atomically as exemplar JSONL: per-model quality and output tokens, plus each call's
//! answer, latency, tokens, cost and error under `calls`. Keys come from the environment
//! variables the providers file names and are never printed.

use std::path::PathBuf;
use std::time::Instant;

use semroute::grade::{journal_path, load_tasks, write_results, CallRecord, Grader, Journal};
use semroute::provider::{Client, Providers, RetryPolicy};
use semroute::PriceTable;

#[derive(clap::Args)]
pub struct Args {
    /// Providers file: per model its protocol, base URL, model id and key variable.
    #[arg(long)]
    providers: PathBuf,
    /// Exemplars to grade: a JSONL file or a folder of them.
    #[arg(long)]
    exemplars: PathBuf,
    /// Where the graded exemplars go (the journal is `<out>.calls.jsonl`).
    #[arg(long)]
    out: PathBuf,
    /// The judge model (a name in the providers file), for exemplars without a reference.
    #[arg(long)]
    judge: Option<String>,
    /// Calls in flight per provider.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Print the calls, tokens and USD the run would spend, and stop.
    #[arg(long)]
    estimate: bool,
    /// Price table (default: the built-in one).
    #[arg(long)]
    prices: Option<PathBuf>,
    /// Grade only these models (comma-separated; default: every model of the providers file).
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// Attempts per call for 429 / 5xx answers.
    #[arg(long, default_value_t = 5)]
    max_attempts: u32,
    /// First retry delay in milliseconds (doubled each attempt; Retry-After wins).
    #[arg(long, default_value_t = 500)]
    retry_base_ms: u64,
}

pub fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let tasks = load_tasks(&args.exemplars)?;
    let providers = Providers::from_file(&args.providers)?;
    let prices = match &args.prices {
        Some(p) => PriceTable::from_file(p)?,
        None => PriceTable::builtin()?,
    };
    let models = if args.models.is_empty() { providers.names().map(str::to_string).collect() } else { args.models.clone() };
    let retry = RetryPolicy {
        max_attempts: args.max_attempts,
        base_delay: std::time::Duration::from_millis(args.retry_base_ms),
        ..RetryPolicy::default()
    };
    let grader =
        Grader { providers, prices, models, judge: args.judge.clone(), concurrency: args.concurrency, client: Client::new(retry)? };
    grader.check(&tasks)?;
    let jpath = journal_path(&args.out);
    let (mut journal, recovered) = Journal::open(&jpath)?;
    if !recovered.records.is_empty() || recovered.torn_bytes > 0 {
        eprintln!(
            "resuming from {}: {} calls already recorded{}",
            jpath.display(),
            recovered.records.len(),
            if recovered.torn_bytes > 0 {
                format!("; cut a torn last line of {} bytes (that call is redone)", recovered.torn_bytes)
            } else {
                String::new()
            }
        );
    }
    let estimate = grader.estimate(&tasks, &recovered.records)?;
    if args.estimate {
        println!(
            "{} exemplars x {} models: {} calls to make ({} already done), {} judge calls",
            tasks.len(),
            grader.models.len(),
            estimate.calls,
            estimate.already_done,
            estimate.judge_calls
        );
        println!(
            "tokens: {} in, at most {} out; cost at most ${:.4} (answers at each endpoint's max_tokens)",
            estimate.input_tokens, estimate.max_output_tokens, estimate.max_usd
        );
        println!("{}", serde_json::to_string(&estimate)?);
        return Ok(());
    }

    let bar = indicatif::ProgressBar::new(estimate.calls).with_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} calls, {msg}, {per_sec}, eta {eta}").expect("a valid template"),
    );
    let (mut failures, mut tokens, mut usd) = (0u64, 0u64, 0.0f64);
    let started = Instant::now();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(grader.run(&tasks, &mut journal, &recovered.records, |r: &CallRecord| {
        failures += r.quality.is_none() as u64;
        tokens += r.input_tokens + r.output_tokens;
        usd += r.cost_usd + r.judge_cost_usd;
        bar.set_message(format!("{failures} failed, {tokens} tokens, ${usd:.4}"));
        bar.inc(1);
    }))?;
    bar.finish();
    let elapsed = started.elapsed().as_secs_f64();

    // Everything recorded, this run's and earlier runs', becomes the output.
    drop(journal);
    let (_, all) = Journal::open(&jpath)?;
    let source = format!(
        "measured: semroute grade ({})",
        args.judge.as_deref().map_or("reference match".to_string(), |j| format!("reference match, else judge {j}"))
    );
    let (written, left_out) = write_results(&tasks, &all.records, &args.out, &source)?;
    let mut kinds: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for r in &all.records {
        *kinds.entry(r.error_kind.as_deref().unwrap_or("ok")).or_default() += 1;
    }
    println!(
        "this run: {} calls in {elapsed:.2} s ({:.1} calls/s), {failures} failed, {tokens} tokens, ${usd:.4}",
        estimate.calls,
        estimate.calls as f64 / elapsed.max(1e-9)
    );
    println!("all recorded calls by outcome: {kinds:?}");
    println!(
        "wrote {} graded exemplars to {}{}",
        written,
        args.out.display(),
        if left_out > 0 { format!(" ({left_out} left out: no model was scored on them)") } else { String::new() }
    );
    // A run in which every call failed graded nothing: that is a failure, whatever was written.
    if estimate.calls > 0 && failures == estimate.calls {
        return Err(format!("every one of this run's {failures} calls failed (outcomes above); nothing was graded").into());
    }
    Ok(())
}
