//! Times `Router::route` per decision over a file of prompts (start-up excluded), for the
//! side-by-side benchmark with aurelio's semantic-router (`benches/aurelio.sh`).
//!
//! ```text
//! cargo run --release --example decision_timing -- --prompts FILE [--embedding-model NAME]... [--limit 200] [--rounds 1] [--compare-spinning]
//! ```
//! FILE is JSONL with a `prompt` field per line. Prints one JSON object per model: the model, the
//! number of decisions, and the mean, p50 and p99 per decision in milliseconds. With several
//! models, each routes the whole file in turn, `rounds` times, so a noisy machine slows them
//! alike and their ratio holds. (Not prompt by prompt: each model would then evict the other's
//! weights from the processor's cache, and every one would look three times slower.)

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use semroute::embed::EmbedderOptions;
use semroute::Router;

#[derive(Parser)]
struct Args {
    /// JSONL with a `prompt` field per line.
    #[arg(long)]
    prompts: PathBuf,
    /// The installed embedding model (default: the default model); repeat to time several side by side.
    #[arg(long)]
    embedding_model: Vec<String>,
    /// Passes over the prompts.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// At most this many prompts.
    #[arg(long, default_value_t = 200)]
    limit: usize,
    /// Time each model twice side by side: with ONNX Runtime's threads spinning while they wait
    /// (the default) and without (`EmbedderOptions::spinning`).
    #[arg(long)]
    compare_spinning: bool,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.prompts)?;
    let prompts: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<serde_json::Value>(l).map(|v| v["prompt"].as_str().unwrap_or_default().to_string()))
        .take(args.limit)
        .collect::<Result<_, _>>()?;
    let names =
        if args.embedding_model.is_empty() { vec![semroute::embed::DEFAULT_MODEL.to_string()] } else { args.embedding_model.clone() };
    let spins: &[bool] = if args.compare_spinning { &[true, false] } else { &[true] };
    let variants: Vec<(String, bool)> = names.iter().flat_map(|n| spins.iter().map(move |&s| (n.clone(), s))).collect();
    let routers = variants
        .iter()
        .map(|(name, spinning)| {
            let options = EmbedderOptions { spinning: *spinning, ..EmbedderOptions::default() };
            Ok(Router::builder().embedder(semroute::embed::load_installed_with(name, &options)?).build()?)
        })
        .collect::<Result<Vec<_>, Box<dyn std::error::Error>>>()?;
    for router in &routers {
        for p in prompts.iter().take(5) {
            router.route(p)?;
        }
    }
    let mut ms = vec![Vec::with_capacity(prompts.len() * args.rounds); routers.len()];
    for _ in 0..args.rounds {
        for (router, ms) in routers.iter().zip(&mut ms) {
            for p in &prompts {
                let t = Instant::now();
                router.route(p)?;
                ms.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    for ((name, spinning), mut ms) in variants.iter().zip(ms) {
        let mean = ms.iter().sum::<f64>() / ms.len().max(1) as f64;
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms.get(((ms.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0.0);
        println!(
            "{}",
            serde_json::json!({"router": "semroute", "model": name, "spinning": spinning, "decisions": ms.len(), "mean_ms": mean, "p50_ms": at(0.5), "p99_ms": at(0.99)})
        );
    }
    Ok(())
}
