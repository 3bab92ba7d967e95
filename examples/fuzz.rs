//! Fuzzes every parser of outside input (issue #16) and counts panics, which must be 0.
//!
//! ```text
//! cargo run --release --example fuzz -- --cases 1000000            # every parser
//! cargo run --release --example fuzz -- --cases 20000 --only sse_http
//! cargo run --release --example fuzz -- --seed 16 --only graph_file --from 1234 --cases 1   # replay one case
//! ```
//! Prints per parser: cases, parsed, errors returned, panics, known library panics skipped, and
//! time; for a panic, the first failing input (escaped, truncated), its case number and location.
//! Exits 1 if anything panicked.
//!
//! The generators are in `examples/common/fuzz_cases.rs` (shared with `tests/properties.rs`).
//! SSE from a provider goes through a real loopback HTTP server, one call per case, so it runs
//! `--sse-cases` (default 40,000, about 2 minutes) instead of `--cases`.
//!
//! How long (measured on our 2-core machine, the other core shared): `--cases 1000000` takes
//! about 5 minutes in all: 12-21 s per million cases for each parser (data sets 38 s), and the
//! 40,000 SSE cases 110 s (about 2.8 ms a case). The default 100,000 cases take about 30 s plus
//! the SSE cases.
//!
//! Debugging: `FUZZ_SHOW_ERRORS=1` prints every error a parser returns (which checks the cases
//! reach).

#[path = "common/fuzz_cases.rs"]
mod fuzz_cases;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Property-based fuzzing of every parser of outside input")]
struct Args {
    /// Cases per parser.
    #[arg(long, default_value_t = 100_000)]
    cases: u64,
    /// Cases for SSE over loopback HTTP (one HTTP call each), unless `--only sse_http`.
    #[arg(long, default_value_t = 40_000)]
    sse_cases: u64,
    /// The seed.
    #[arg(long, default_value_t = 16)]
    seed: u64,
    /// First case number (to replay a case).
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Only these parsers (comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

fn main() {
    let args = Args::parse();
    let parsers: Vec<String> =
        if args.only.is_empty() { fuzz_cases::PARSERS.iter().map(|s| s.to_string()).collect() } else { args.only.clone() };
    println!(
        "seed {}, {} cases per parser (SSE over HTTP: {})",
        args.seed,
        args.cases,
        if args.only.is_empty() { args.sse_cases } else { args.cases }
    );
    let mut panics = 0;
    let started = std::time::Instant::now();
    for p in &parsers {
        let cases = if p == "sse_http" && args.only.is_empty() { args.sse_cases } else { args.cases };
        let st = fuzz_cases::run_parser(p, args.seed, args.from, cases);
        println!("{}", st.line());
        if let Some(r) = st.panic_report(args.seed) {
            println!("  {r}");
        }
        panics += st.panics;
    }
    println!("total time {:.1} s, panics {panics}", started.elapsed().as_secs_f64());
    if panics > 0 {
        std::process::exit(1);
    }
}
