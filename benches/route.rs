//! Latency benchmarks: `cargo bench --bench route`.
//!
//! - `route/*`: the whole `Router::route` on short and long prompts, English and Chinese, with the
//!   real model and the built-in exemplars and prices;
//! - `route_neighbours/*`: short prompts with the neighbours alone predicting quality (what the
//!   default's kernel-ridge model adds is the difference to `route/*`);
//! - `quality_model/predict_*`: the kernel-ridge model's prediction alone (`predict_with_error_*`:
//!   with each standard error, as caution uses it), over the built-in
//!   exemplars (its fit time is printed once);
//! - `route_e5/*`, `route_minilm_int8/*`, `route_e5_int8/*`: the same with multilingual-e5-small
//!   and with the int8 copies of both models, when installed;
//! - `route_static/*`, `route_static_e5/*`: the static models distilled from MiniLM and from e5
//!   (`semroute setup static-all-minilm-l6-v2`, `... static-multilingual-e5-small`), when installed;
//! - `embed/short_en`: the embedding alone, to see its share;
//! - `route_batch/{1,8,64}`: `Router::route_batch` over the first 64 built-in exemplar prompts
//!   (English and Chinese, short and long) in batches of 1, 8 or 64, as prompts per second;
//! - `index_search/{1000,10000,100000}`: HNSW search alone over synthetic clustered 384-d unit
//!   vectors (build time and recall@8 against exact search are printed once per size);
//! - `exact_search/{1000,10000}`: the brute-force scan, for comparison.

#[path = "common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use semroute::embed::{normalise, Embedder, FastEmbedder, Home};
use semroute::index::{ExactIndex, HnswIndex, NeighbourIndex, VectorCache};
use semroute::predict::{Predictor, QualityModel, RidgeSettings};
use semroute::{Constraints, ExemplarSet, PriceTable, Router};

const SHORT_EN: &str = "Reformat this JSON so it is indented: {\"a\":1}";
const SHORT_ZH: &str = "把这句话翻译成英文：我们下周一开会讨论预算。";

fn bench_route(c: &mut Criterion) {
    let router = Router::builder().build().expect("router (run `semroute setup` first)");
    let long_en = "Summarise this incident report for the on-call channel. ".repeat(60);
    let long_zh = "请总结下面这份事故报告，列出根因、影响范围和后续改进措施。".repeat(40);
    let mut g = c.benchmark_group("route");
    g.measurement_time(Duration::from_secs(5)).sample_size(50);
    for (name, prompt) in [("short_en", SHORT_EN), ("short_zh", SHORT_ZH), ("long_en", long_en.as_str()), ("long_zh", long_zh.as_str())] {
        g.bench_function(name, |b| b.iter(|| router.route(black_box(prompt)).unwrap()));
    }
    g.finish();

    // The decision rules before the derived fallback and caution (a fixed similarity threshold,
    // point predictions), side by side with the defaults above: what those rules add per route.
    let previous = Router::builder().min_similarity(0.3).caution(0.0).build().expect("router");
    let mut g = c.benchmark_group("route_previous_rules");
    g.measurement_time(Duration::from_secs(5)).sample_size(50);
    for (name, prompt) in [("short_en", SHORT_EN), ("short_zh", SHORT_ZH)] {
        g.bench_function(name, |b| b.iter(|| previous.route(black_box(prompt)).unwrap()));
    }
    g.finish();

    // The same without the kernel-ridge quality model.
    let neighbours = Router::builder().predictor(Predictor::Neighbours).build().expect("router");
    let mut g = c.benchmark_group("route_neighbours");
    g.measurement_time(Duration::from_secs(5)).sample_size(50);
    for (name, prompt) in [("short_en", SHORT_EN), ("short_zh", SHORT_ZH)] {
        g.bench_function(name, |b| b.iter(|| neighbours.route(black_box(prompt)).unwrap()));
    }
    g.finish();

    // The other transformers, when installed: the multilingual model, and the int8 copies of both
    // (`semroute setup all-minilm-l6-v2-int8`, `... multilingual-e5-small-int8`).
    for (group, name) in [
        ("route_e5", "multilingual-e5-small"),
        ("route_minilm_int8", "all-minilm-l6-v2-int8"),
        ("route_e5_int8", "multilingual-e5-small-int8"),
    ] {
        if let Ok(e) = semroute::embed::load_installed(name) {
            let router = Router::builder().embedder(e.clone()).build().expect("router");
            let mut g = c.benchmark_group(group);
            g.measurement_time(Duration::from_secs(5)).sample_size(30);
            for (name, prompt) in [("short_en", SHORT_EN), ("short_zh", SHORT_ZH)] {
                g.bench_function(name, |b| b.iter(|| router.route(black_box(prompt)).unwrap()));
            }
            g.bench_function("embed_short_en", |b| b.iter(|| e.embed(black_box(SHORT_EN)).unwrap()));
            g.finish();
        }
    }

    // The static models (issue 17), when installed: `route_static/*` (from MiniLM) and
    // `route_static_e5/*` (from multilingual-e5-small), with their embedding alone beside.
    for (group, name) in [("route_static", "static-all-minilm-l6-v2"), ("route_static_e5", "static-multilingual-e5-small")] {
        if let Ok(e) = semroute::embed::load_installed(name) {
            let router = Router::builder().embedder(e.clone()).build().expect("static router");
            let mut g = c.benchmark_group(group);
            g.measurement_time(Duration::from_secs(5)).sample_size(100);
            for (name, prompt) in [("short_en", SHORT_EN), ("short_zh", SHORT_ZH), ("long_en", long_en.as_str())] {
                g.bench_function(name, |b| b.iter(|| router.route(black_box(prompt)).unwrap()));
            }
            g.bench_function("embed_short_en", |b| b.iter(|| e.embed(black_box(SHORT_EN)).unwrap()));
            g.finish();
        }
    }

    let mut g = c.benchmark_group("embed");
    g.measurement_time(Duration::from_secs(5)).sample_size(50);
    let embedder = router.embedder().clone();
    g.bench_function("short_en", |b| b.iter(|| embedder.embed(black_box(SHORT_EN)).unwrap()));
    g.finish();
}

fn bench_quality_model(c: &mut Criterion) {
    let embedder = FastEmbedder::load_default().expect("the default model (run `semroute setup` first)");
    let set = ExemplarSet::builtin().expect("built-in exemplars");
    let prices = PriceTable::builtin().expect("built-in prices");
    let cache = VectorCache::new(Home::from_env().cache_dir());
    let vectors = match cache.load(embedder.model_id(), &set.content_hash(), set.len(), embedder.dim()) {
        Some(v) => v,
        None => embedder.embed_batch(&set.iter().map(|e| e.prompt.as_str()).collect::<Vec<_>>()).expect("embedding"),
    };
    let started = std::time::Instant::now();
    let model = QualityModel::fit(&set, vectors, &prices, RidgeSettings::default()).expect("fit");
    eprintln!("quality model fitted on {} exemplars in {:.1} ms", model.len(), started.elapsed().as_secs_f64() * 1e3);
    let mut g = c.benchmark_group("quality_model");
    for (name, prompt) in [("predict_short_en", SHORT_EN), ("predict_short_zh", SHORT_ZH)] {
        let v = embedder.embed(prompt).expect("embedding");
        g.bench_function(name, |b| b.iter(|| model.predict(black_box(prompt), black_box(&v))));
        // With each quality's standard error (what caution needs): one triangular solve more.
        let with_error = name.replace("predict", "predict_with_error");
        g.bench_function(with_error, |b| b.iter(|| model.predict_with_error(black_box(prompt), black_box(&v))));
    }
    g.finish();
}

fn bench_batch(c: &mut Criterion) {
    let router = Router::builder().build().expect("router (run `semroute setup` first)");
    let set = ExemplarSet::builtin().expect("built-in exemplars");
    let prompts: Vec<&str> = set.iter().map(|e| e.prompt.as_str()).take(64).collect();
    let mut g = c.benchmark_group("route_batch");
    g.measurement_time(Duration::from_secs(10)).sample_size(10);
    // The same 64 prompts each time, routed in batches of n.
    g.throughput(Throughput::Elements(prompts.len() as u64));
    for n in [1usize, 8, 64] {
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter(|| {
                for batch in prompts.chunks(n) {
                    black_box(router.route_batch(black_box(batch), &Constraints::default()));
                }
            })
        });
    }
    g.finish();
}

fn gauss(rng: &mut StdRng) -> f32 {
    // Box-Muller: enough for test data, and no extra dependency.
    let u1: f32 = rng.random::<f32>().max(1e-7);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
}

/// `n` unit vectors of 384 dimensions drawn from a 24-dimensional latent space plus a little
/// noise: like sentence embeddings, whose intrinsic dimension is far below their width (uniform
/// random vectors would make every neighbour equally far and every index look bad).
fn synthetic(n: usize, seed: u64) -> Vec<Vec<f32>> {
    let (dim, latent) = (384, 24);
    let mut fixed = StdRng::seed_from_u64(1);
    let projection: Vec<Vec<f32>> = (0..dim).map(|_| (0..latent).map(|_| gauss(&mut fixed)).collect()).collect();
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let z: Vec<f32> = (0..latent).map(|_| gauss(&mut rng)).collect();
            let mut v: Vec<f32> =
                projection.iter().map(|row| row.iter().zip(&z).map(|(a, b)| a * b).sum::<f32>() + 0.5 * gauss(&mut rng)).collect();
            normalise(&mut v);
            v
        })
        .collect()
}

fn bench_index(c: &mut Criterion) {
    let mut g = c.benchmark_group("index_search");
    g.measurement_time(Duration::from_secs(5)).sample_size(50);
    for n in [1_000usize, 10_000, 100_000] {
        let vectors = synthetic(n, n as u64);
        let queries = synthetic(200, 7 + n as u64);
        let started = std::time::Instant::now();
        // The graph, even where a search would scan (`HnswIndex::with_scan_up_to`).
        let hnsw = HnswIndex::build(&vectors).unwrap().with_scan_up_to(0);
        let built = started.elapsed();
        let exact = ExactIndex::build(vectors).unwrap();
        let mut found = 0;
        for q in &queries {
            let truth: Vec<usize> = exact.search(q, 8).iter().map(|h| h.position).collect();
            found += hnsw.search(q, 8).iter().filter(|h| truth.contains(&h.position)).count();
        }
        eprintln!(
            "index_search/{n}: built in {:.2}s, recall@8 against exact search {:.4}",
            built.as_secs_f64(),
            found as f64 / (8 * queries.len()) as f64
        );
        let mut i = 0;
        g.bench_with_input(BenchmarkId::new("hnsw", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) % queries.len();
                hnsw.search(black_box(&queries[i]), 8)
            })
        });
        if n <= 10_000 {
            g.bench_with_input(BenchmarkId::new("exact", n), &n, |b, _| {
                b.iter(|| {
                    i = (i + 1) % queries.len();
                    exact.search(black_box(&queries[i]), 8)
                })
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = bench_route, bench_quality_model, bench_batch, bench_index
}
criterion_main!(benches);
