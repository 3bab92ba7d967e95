//! How fast a router starts with many exemplars: cold (embed everything, build and save the
//! graph), warm (load the saved graph: no embedding, no building), with only the vectors cached,
//! and with a damaged graph file (refused, rebuilt).
//!
//! ```text
//! cargo run --release --example startup -- --exemplars 10000 [--cache DIR] [--data ../shared/data]
//! ```
//! The exemplars are the prompts of the shared datasets (`../shared/data/*.jsonl`, or
//! `$SEMROUTE_DATA`), cycled with a numbered suffix when more are asked for than there are, each
//! hand-labelled `cheap` with a reason saying it is for timing only: they measure start-up, not
//! routing quality. `--cache DIR` keeps the cache between runs (so a second run's "cold" phase
//! reads cached vectors); by default a fresh temporary folder is used.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use semroute::index::VectorCache;
use semroute::{ExemplarSet, Router};

#[path = "common/timing.rs"]
mod timing;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    set: timing::SetArgs,
    /// Cache folder (default: a new temporary one).
    #[arg(long)]
    cache: Option<PathBuf>,
}

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn timed(what: &str, set: &ExemplarSet, cache: &std::path::Path) -> Result<(Router, f64), String> {
    let started = Instant::now();
    let router = Router::builder().exemplars(set.clone()).cache_dir(cache).build().map_err(|e| e.to_string())?;
    let s = started.elapsed().as_secs_f64();
    println!("  {what:<58} {s:>8.2} s   RSS {:>6.0} MB", rss_mb());
    Ok((router, s))
}

fn run(args: Args) -> Result<(), String> {
    let (set, base) = args.set.load()?;
    let n = args.set.exemplars;
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let cache = args.cache.unwrap_or_else(|| tmp.path().to_path_buf());
    println!("{n} exemplars ({base} distinct dataset prompts), cache {}", cache.display());
    let (router, _) = timed("cold: embed, build the graph, save vectors and graph", &set, &cache)?;
    let probe = set.get(n / 2).prompt.clone();
    let d = router.route(&probe).map_err(|e| e.to_string())?;
    if d.neighbours[0].id != set.get(n / 2).id {
        return Err(format!("the cold router did not find the probe: {:?}", d.neighbours[0]));
    }
    let router_model = router.embedder().model_id().to_string();
    let router_model = router_model.as_str();
    drop(router);
    let (router, _) = timed("warm: load the saved graph", &set, &cache)?;
    let d2 = router.route(&probe).map_err(|e| e.to_string())?;
    if d2.neighbours != d.neighbours {
        return Err("the warm router answers differently from the cold one".into());
    }
    drop(router);
    // This set's graph file (the cache may hold others).
    let graph = &VectorCache::new(&cache).graph_path(router_model, &set.content_hash());
    if !graph.exists() {
        return Err(format!("no graph file was saved at {}", graph.display()));
    }
    let mut bytes = std::fs::read(graph).map_err(|e| e.to_string())?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(graph, &bytes).map_err(|e| e.to_string())?;
    let (router, _) = timed("damaged graph file: refused, rebuilt from cached vectors", &set, &cache)?;
    if router.route(&probe).map_err(|e| e.to_string())?.neighbours[0].id != set.get(n / 2).id {
        return Err("the rebuilt router did not find the probe".into());
    }
    drop(router);
    timed("warm again: load the re-saved graph", &set, &cache)?;
    println!("graph file {}: {:.1} MB", graph.display(), std::fs::metadata(graph).map_err(|e| e.to_string())?.len() as f64 / 1e6);
    Ok(())
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("startup: {e}");
        std::process::exit(1);
    }
}
