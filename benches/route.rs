//! Latency benchmarks: `cargo bench --bench route`.
//!
//! - `route/*`: the whole `Router::route` on short and long prompts, English and Chinese, with the
//!   real model and the built-in exemplars and prices;
//! - `embed/short_en`: the embedding alone, to see its share;
//! - `index_search/{1000,10000,100000}`: HNSW search alone over synthetic clustered 384-d unit
//!   vectors (recall@8 against exact search is printed once per size).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use semroute::embed::normalise;
use semroute::index::{ExactIndex, HnswIndex, NeighbourIndex};
use semroute::{Embedder, Router};

const SHORT_EN: &str = "Reformat this JSON so it is indented: {\"a\":1}";
const SHORT_ZH: &str = "把这句话翻译成英文：我们下周一开会讨论预算。";

fn bench_route(c: &mut Criterion) {
    let router = Router::builder().build().expect("router (run examples/setup/setup-model.sh first)");
    let long_en = "Summarise this incident report for the on-call channel. ".repeat(60);
    let long_zh = "请总结下面这份事故报告，列出根因、影响范围和后续改进措施。".repeat(40);
    let mut g = c.benchmark_group("route");
    g.measurement_time(Duration::from_secs(5)).sample_size(50);
    for (name, prompt) in [("short_en", SHORT_EN), ("short_zh", SHORT_ZH), ("long_en", long_en.as_str()), ("long_zh", long_zh.as_str())] {
        g.bench_function(name, |b| b.iter(|| router.route(black_box(prompt)).unwrap()));
    }
    g.finish();

    let mut g = c.benchmark_group("embed");
    g.measurement_time(Duration::from_secs(5)).sample_size(50);
    let embedder = router.embedder().clone();
    g.bench_function("short_en", |b| b.iter(|| embedder.embed(black_box(SHORT_EN)).unwrap()));
    g.finish();
}

/// `n` unit vectors around `n / 100` cluster centres, like embeddings of related prompts.
fn clustered(n: usize, dim: usize, rng: &mut StdRng) -> Vec<Vec<f32>> {
    let centres: Vec<Vec<f32>> = (0..(n / 100).max(1))
        .map(|_| {
            let mut v: Vec<f32> = (0..dim).map(|_| rng.random::<f32>() - 0.5).collect();
            normalise(&mut v);
            v
        })
        .collect();
    (0..n)
        .map(|i| {
            let c = &centres[i % centres.len()];
            let mut v: Vec<f32> = c.iter().map(|x| x + 0.08 * (rng.random::<f32>() - 0.5)).collect();
            normalise(&mut v);
            v
        })
        .collect()
}

fn bench_index(c: &mut Criterion) {
    let mut g = c.benchmark_group("index_search");
    g.measurement_time(Duration::from_secs(5)).sample_size(50);
    let dim = 384;
    for n in [1_000usize, 10_000, 100_000] {
        let mut rng = StdRng::seed_from_u64(n as u64);
        let vectors = clustered(n, dim, &mut rng);
        let queries = clustered(200, dim, &mut StdRng::seed_from_u64(7 + n as u64));
        let started = std::time::Instant::now();
        let hnsw = HnswIndex::build(&vectors).unwrap();
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
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) % queries.len();
                hnsw.search(black_box(&queries[i]), 8)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_route, bench_index);
criterion_main!(benches);
