//! Routes prompts from the shell and explains each decision: `semroute route`, kept as an
//! example with the same interface for tooling that runs it from a checkout.
//!
//! ```text
//! cargo run --release --example route -- "Reformat this JSON so it is indented: {\"a\":1}"
//! cargo run --release --example route -- --json "证明存在无穷多个素数"
//! printf 'one prompt\nanother prompt\n' | cargo run --release --example route -- --json
//! ```
//! With no prompt argument, prompts are read from standard input, one per line (blank lines are
//! skipped). With `--json`, exactly one JSON object is printed per prompt, on its own line; a
//! prompt that cannot be routed gives `{"line":N,"error":"..."}` instead, and the exit status is
//! then 1. On first use the embedding model is installed (what `semroute setup` does).

use clap::Parser;

#[path = "../src/bin/semroute/route.rs"]
mod route;

#[derive(Parser)]
#[command(name = "route", about = "Route prompts to the cheapest model that answers them well enough")]
struct Cli {
    #[command(flatten)]
    args: route::Args,
}

fn main() -> std::process::ExitCode {
    route::run(Cli::parse().args)
}
