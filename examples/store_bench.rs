//! The shared PostgreSQL + pgvector store next to the in-process index, on the same real
//! vectors: recall@10 of each against exact search, and search and routing latency.
//!
//! ```text
//! eval "$(bash src/setup/pgvector.sh start)"
//! cargo run --release --features pgvector --example store_bench -- --exemplars 10000 [--cache DIR]
//! ```
//! The exemplars are the `startup` example's (shared dataset prompts; the same `--exemplars` and
//! `--cache` reuse its cached vectors). The queries are the prompts of the built-in exemplar
//! set under `exemplars/` (hand-written, none of them in the datasets), embedded with
//! the same model. The store is the table `bench_<n>` at `$SEMROUTE_PG_URL`, filled once and
//! kept for later runs (`--refill` empties it first).

use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use semroute::embed::FastEmbedder;
use semroute::index::{ExactIndex, HnswIndex, NeighbourIndex, VectorCache};
use semroute::store::{ExemplarStore, PgStore};
use semroute::{Embedder, ExemplarSet, Router};

#[path = "common/timing.rs"]
mod timing;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    set: timing::SetArgs,
    /// Vector cache folder (default: the router's, `<semroute home>/embeddings`).
    #[arg(long)]
    cache: Option<std::path::PathBuf>,
    /// Neighbours per query.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Empty the store's table and fill it again.
    #[arg(long)]
    refill: bool,
}

fn percentiles(mut ms: Vec<f64>) -> String {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    format!("p50 {:>7.3} ms   p90 {:>7.3} ms   p99 {:>7.3} ms", at(0.5), at(0.9), at(0.99))
}

fn run(args: Args) -> Result<(), String> {
    let url = std::env::var("SEMROUTE_PG_URL")
        .map_err(|_| "set SEMROUTE_PG_URL (eval \"$(bash src/setup/pgvector.sh start)\" starts a server and prints it)")?;
    let n = args.set.exemplars;
    let (set, distinct) = args.set.load()?;
    let embedder = Arc::new(FastEmbedder::load_default().map_err(|e| e.to_string())?);
    let cache = VectorCache::new(args.cache.unwrap_or_else(|| semroute::embed::Home::from_env().cache_dir()));
    let hash = set.content_hash();
    let vectors = match cache.load(embedder.model_id(), &hash, n, embedder.dim()) {
        Some(v) => v,
        None => {
            println!("embedding {n} exemplars (cached for the next run) ...");
            let prompts: Vec<&str> = set.iter().map(|e| e.prompt.as_str()).collect();
            let mut v = Vec::with_capacity(n);
            for chunk in prompts.chunks(256) {
                v.extend(embedder.embed_batch(chunk).map_err(|e| e.to_string())?);
            }
            cache.store(embedder.model_id(), &hash, &v).map_err(|e| e.to_string())?;
            v
        }
    };
    let queries_set = ExemplarSet::load_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/exemplars")).map_err(|e| e.to_string())?;
    let query_texts: Vec<&str> = queries_set.iter().map(|e| e.prompt.as_str()).collect();
    let queries = embedder.embed_batch(&query_texts).map_err(|e| e.to_string())?;
    println!("{n} exemplars ({distinct} distinct dataset prompts), {} queries, k = {}", queries.len(), args.k);

    let exact = ExactIndex::build(vectors.clone()).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let hnsw = HnswIndex::build(&vectors).map_err(|e| e.to_string())?;
    println!("in-process HNSW built in {:.1} s", started.elapsed().as_secs_f64());

    let store = Arc::new(PgStore::builder(&url).table(format!("bench_{n}")).build().map_err(|e| e.to_string())?);
    if args.refill {
        store.drop_table().map_err(|e| e.to_string())?;
    }
    store.attach(embedder.model_id(), embedder.dim()).map_err(|e| e.to_string())?;
    let held = store.count().map_err(|e| e.to_string())?;
    if held != n {
        if held != 0 {
            return Err(format!("{} holds {held} exemplars, not {n}: run with --refill", store.describe()));
        }
        let started = Instant::now();
        let items: Vec<_> = set.iter().cloned().collect();
        for (chunk, vs) in items.chunks(1000).zip(vectors.chunks(1000)) {
            store.insert(chunk, vs).map_err(|e| e.to_string())?;
        }
        println!("pgvector: {n} rows inserted, HNSW index maintained as they went, in {:.1} s", started.elapsed().as_secs_f64());
    }

    let id_of = |i: usize| set.get(i).id.clone();
    let truth: Vec<std::collections::HashSet<String>> =
        queries.iter().map(|q| exact.search(q, args.k).iter().map(|h| id_of(h.position)).collect()).collect();
    let mut exact_ms = Vec::new();
    for q in &queries {
        let t = Instant::now();
        std::hint::black_box(exact.search(q, args.k));
        exact_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!("search, {} queries one at a time; recall@{} against exact search:", queries.len(), args.k);
    println!("  exact scan (in-process)            recall 1.0000   {}", percentiles(exact_ms));
    let mut hnsw = Some(hnsw);
    for ef in [64, 128, 256] {
        let index = hnsw.take().expect("the index").with_ef_search(ef);
        let (mut ms, mut found) = (Vec::new(), 0usize);
        for (q, truth) in queries.iter().zip(&truth) {
            let t = Instant::now();
            let hits = index.search(q, args.k);
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            found += hits.iter().filter(|h| truth.contains(&id_of(h.position))).count();
        }
        println!(
            "  in-process HNSW, ef_search {ef:>3}    recall {:.4}   {}",
            found as f64 / (queries.len() * args.k) as f64,
            percentiles(ms)
        );
        hnsw = Some(index);
    }
    for ef in [64, 128, 256] {
        let pg = PgStore::builder(&url).table(store.table()).ef_search(ef).pool_size(1).build().map_err(|e| e.to_string())?;
        pg.attach(embedder.model_id(), embedder.dim()).map_err(|e| e.to_string())?;
        let (mut ms, mut found) = (Vec::new(), 0usize);
        for (q, truth) in queries.iter().zip(&truth) {
            let t = Instant::now();
            let hits = pg.nearest(q, args.k).map_err(|e| e.to_string())?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            found += hits.iter().filter(|h| truth.contains(&h.exemplar.id)).count();
        }
        println!(
            "  pgvector HNSW, ef_search {ef:>3}      recall {:.4}   {}",
            found as f64 / (queries.len() * args.k) as f64,
            percentiles(ms)
        );
    }

    // Whole decisions (embedding included) on the first 100 queries, both ways.
    let local =
        Router::builder().embedder(embedder.clone()).exemplars(set.clone()).cache_dir(cache.dir()).build().map_err(|e| e.to_string())?;
    let shared =
        Router::builder().embedder(embedder.clone()).exemplars(set.clone()).store(store.clone()).build().map_err(|e| e.to_string())?;
    let (mut local_ms, mut shared_ms, mut same_model) = (Vec::new(), Vec::new(), 0usize);
    for p in query_texts.iter().take(100) {
        let t = Instant::now();
        let a = local.route(p).map_err(|e| e.to_string())?;
        local_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let b = shared.route(p).map_err(|e| e.to_string())?;
        shared_ms.push(t.elapsed().as_secs_f64() * 1e3);
        same_model += usize::from(a.model == b.model);
    }
    println!("route(), 100 queries (embedding included):");
    println!("  in-process index          {}", percentiles(local_ms));
    println!("  pgvector store            {}", percentiles(shared_ms));
    println!("  same model chosen: {same_model}/100");
    Ok(())
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("store_bench: {e}");
        std::process::exit(1);
    }
}
