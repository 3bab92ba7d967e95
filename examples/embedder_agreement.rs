//! How far two installed embedding models agree on the built-in exemplars, and how narrow a cone
//! each puts them in: the figures behind the README's "int8 copies" and the centred fallback rule.
//!
//! ```text
//! cargo run --release --example embedder_agreement -- all-minilm-l6-v2 all-minilm-l6-v2-int8 [MORE...]
//! ```
//! For each model: the squared length of the exemplars' mean vector and their mean pairwise
//! cosine. For each model after the first, against the first: the cosine of each exemplar's two
//! vectors (median, 5th percentile, minimum) and the share of each exemplar's 8 nearest others
//! that both models find. Vectors come from `semroute::embed::load_installed`, as a router's do.

use semroute::embed::{cosine, load_installed};
use semroute::ExemplarSet;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let names: Vec<String> = std::env::args().skip(1).collect();
    if names.is_empty() {
        return Err("name at least one installed model".into());
    }
    let set = ExemplarSet::builtin()?;
    let prompts: Vec<&str> = set.iter().map(|e| e.prompt.as_str()).collect();
    let mut first: Option<Vec<Vec<f32>>> = None;
    for name in &names {
        let vectors = load_installed(name)?.embed_batch(&prompts)?;
        let n = vectors.len();
        let mean: Vec<f32> = (0..vectors[0].len()).map(|d| vectors.iter().map(|v| v[d]).sum::<f32>() / n as f32).collect();
        let pairs: f64 = (0..n).flat_map(|i| (0..i).map(move |j| (i, j))).map(|(i, j)| f64::from(cosine(&vectors[i], &vectors[j]))).sum();
        println!(
            "{name}: {n} exemplars; mean vector squared length {:.3}; mean pairwise cosine {:.3}",
            mean.iter().map(|x| x * x).sum::<f32>(),
            pairs / (n * (n - 1) / 2) as f64
        );
        match &first {
            None => first = Some(vectors),
            Some(base) => {
                let mut c: Vec<f32> = base.iter().zip(&vectors).map(|(a, b)| cosine(a, b)).collect();
                c.sort_by(f32::total_cmp);
                let at = |q: f64| c[((c.len() - 1) as f64 * q).round() as usize];
                let nearest = |vs: &[Vec<f32>], i: usize| {
                    let mut s: Vec<(f32, usize)> = (0..n).filter(|&j| j != i).map(|j| (cosine(&vs[i], &vs[j]), j)).collect();
                    s.sort_by(|a, b| b.0.total_cmp(&a.0));
                    s.into_iter().take(8).map(|x| x.1).collect::<Vec<_>>()
                };
                let overlap: usize = (0..n).map(|i| nearest(base, i).iter().filter(|j| nearest(&vectors, i).contains(j)).count()).sum();
                println!(
                    "  against {}: cosine median {:.4}, 5th percentile {:.4}, minimum {:.4}; 8 nearest shared {:.1}%",
                    names[0],
                    at(0.5),
                    at(0.05),
                    c[0],
                    100.0 * overlap as f64 / (8 * n) as f64
                );
            }
        }
    }
    Ok(())
}
