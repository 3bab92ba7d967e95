//! Leave-one-out check of an exemplar set: route each hand-labelled exemplar with all the others
//! and compare the tier the router predicts with the exemplar's label.
//!
//! ```text
//! cargo run --release --example loo                     # built-in exemplars, default model
//! cargo run --release --example loo -- --model multilingual-e5-small -k 8 --quality-bar 0.7
//! cargo run --release --example loo -- --predictor neighbours   # the nearest exemplars alone
//! ```
//! With the kernel-ridge predictor (the router's default), the model is refitted without the
//! held-out exemplar every time, so nothing it learned comes from the exemplar it is asked about.
//! The predicted tier is the lowest tier whose best model's predicted quality clears the bar
//! (prices do not enter, so the figure is about the exemplars and the embedding alone).
//! "under" counts exemplars sent to a weaker tier than their label (a quality risk), "over"
//! those sent to a stronger one (a cost).

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Parser;
use semroute::embed::{Embedder, FastEmbedder};
use semroute::exemplar::Grade;
use semroute::index::{ExactIndex, NeighbourIndex};
use semroute::predict::{predict_with_prior, Predictor, Prior, QualityModel, RidgeSettings};
use semroute::{ExemplarSet, PriceTable, Tier};

#[derive(Parser)]
struct Args {
    /// Installed embedding model (a folder under <home>/models).
    #[arg(long, default_value = semroute::embed::DEFAULT_MODEL)]
    model: String,
    /// Exemplar folder (default: the built-in exemplars).
    #[arg(long)]
    exemplars: Option<PathBuf>,
    /// Price table (default: the built-in one); only its tiers are used.
    #[arg(long)]
    prices: Option<PathBuf>,
    #[arg(short = 'k', default_value_t = 8)]
    k: usize,
    #[arg(long, default_value_t = 0.7)]
    quality_bar: f64,
    #[arg(long, default_value_t = 0.05)]
    temperature: f64,
    /// Pseudo-neighbours for each model's overall mean (`semroute::predict::Prior`; 0 = off).
    /// The mean is taken over the other exemplars only.
    #[arg(long, default_value_t = 0.0)]
    prior_strength: f64,
    /// `blend` (the mean of the other two: the router's default for sets this size),
    /// `kernel-ridge` or `neighbours`.
    #[arg(long, default_value = "blend", value_parser = ["blend", "kernel-ridge", "neighbours"])]
    predictor: String,
    /// Kernel ridge: kernel width in units of 1 - cosine (0.5 suits MiniLM, about 0.1 e5).
    #[arg(long, default_value_t = RidgeSettings::default().bandwidth)]
    bandwidth: f64,
    /// Kernel ridge: weight of the prompt features.
    #[arg(long, default_value_t = RidgeSettings::default().feature_weight)]
    feature_weight: f64,
    /// Kernel ridge: ridge penalty.
    #[arg(long, default_value_t = RidgeSettings::default().lambda)]
    lambda: f64,
    /// Print the tables in Markdown (for the README).
    #[arg(long)]
    markdown: bool,
}

#[derive(Default)]
struct Tally {
    n: usize,
    agree: usize,
    under: usize,
    over: usize,
}

impl Tally {
    fn add(&mut self, label: Tier, got: Tier) {
        self.n += 1;
        match got.cmp(&label) {
            std::cmp::Ordering::Equal => self.agree += 1,
            std::cmp::Ordering::Less => self.under += 1,
            std::cmp::Ordering::Greater => self.over += 1,
        }
    }
    fn row(&self, name: &str, markdown: bool) -> String {
        let share = 100.0 * self.agree as f64 / self.n.max(1) as f64;
        if markdown {
            format!("| {name} | {} | {share:.1}% | {} | {} |", self.n, self.under, self.over)
        } else {
            format!("{name:<22} {:>4} {share:>7.1}% {:>6} {:>6}", self.n, self.under, self.over)
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let set = match &args.exemplars {
        Some(d) => ExemplarSet::load_dir(d)?,
        None => ExemplarSet::builtin()?,
    };
    let prices = match &args.prices {
        Some(f) => PriceTable::from_file(f)?,
        None => PriceTable::builtin()?,
    };
    let embedder = FastEmbedder::load_installed(&args.model)?;
    let started = std::time::Instant::now();
    let prompts: Vec<&str> = set.iter().map(|e| e.prompt.as_str()).collect();
    let vectors = embedder.embed_batch(&prompts)?;
    eprintln!("embedded {} exemplars with {} in {:.2}s", set.len(), embedder.model_id(), started.elapsed().as_secs_f64());
    let index = ExactIndex::build(vectors.clone())?;
    let tiers = [Tier::Cheap, Tier::Mid, Tier::Strong];
    let ridge = RidgeSettings { bandwidth: args.bandwidth, feature_weight: args.feature_weight, lambda: args.lambda };
    let predictor = match args.predictor.as_str() {
        "blend" => Some(Predictor::Blend(ridge)),
        "kernel-ridge" => Some(Predictor::KernelRidge(ridge)),
        _ => None,
    };

    let mut overall = Tally::default();
    let mut by_category: BTreeMap<String, Tally> = BTreeMap::new();
    let mut by_language: BTreeMap<String, Tally> = BTreeMap::new();
    let mut by_label: BTreeMap<Tier, Tally> = BTreeMap::new();
    let mut pairs: BTreeMap<String, Vec<(String, Tier)>> = BTreeMap::new();
    for (i, ex) in set.iter().enumerate() {
        let Grade::Labelled(label) = &ex.grade else { continue };
        // The prediction for exemplar i uses every exemplar but i (its pair twin included).
        let hits: Vec<_> = index.search(&vectors[i], args.k + 1).into_iter().filter(|h| h.position != i).take(args.k).collect();
        let others = ExemplarSet::from_exemplars(set.iter().filter(|e| e.id != ex.id).cloned().collect())?;
        let prior = Prior::from_exemplars(&others, &prices, args.prior_strength);
        let mut p = predict_with_prior(&set, &hits, &prices, args.temperature, &prior);
        if let Some(predictor) = predictor {
            let others_vectors = vectors.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, v)| v.clone()).collect();
            let model = QualityModel::fit(&others, others_vectors, &prices, ridge)?;
            predictor.apply(&model, &ex.prompt, &vectors[i], &mut p);
        }
        let tier_quality = |t: Tier| {
            prices
                .iter()
                .filter(|(_, price)| price.tier == t)
                .filter_map(|(m, _)| p.per_model.get(m).map(|x| x.quality))
                .fold(f64::NEG_INFINITY, f64::max)
        };
        let got = tiers.into_iter().find(|&t| tier_quality(t) + 1e-9 >= args.quality_bar).unwrap_or(Tier::Strong);
        overall.add(label.tier, got);
        by_category.entry(ex.category.clone()).or_default().add(label.tier, got);
        by_language.entry(ex.language.clone()).or_default().add(label.tier, got);
        by_label.entry(label.tier).or_default().add(label.tier, got);
        if let Some(p) = &ex.pair {
            pairs.entry(p.clone()).or_default().push((ex.language.clone(), got));
        }
    }
    // Same task, different language: do the English and the Chinese version land on one tier?
    let (mut same, mut compared) = (0, 0);
    for members in pairs.values() {
        for (la, ta) in members.iter().filter(|m| m.0 == "en") {
            for (_, tb) in members.iter().filter(|m| m.0 != *la && m.0.starts_with("zh")) {
                compared += 1;
                same += (ta == tb) as usize;
            }
        }
    }

    let md = args.markdown;
    println!(
        "leave-one-out over {} exemplars, model {}, k {}, bar {}, temperature {}, prior strength {}, predictor {}{} ({:.1}s)",
        overall.n,
        args.model,
        args.k,
        args.quality_bar,
        args.temperature,
        args.prior_strength,
        args.predictor,
        if predictor.is_some() { format!(" {ridge:?}") } else { String::new() },
        started.elapsed().as_secs_f64()
    );
    let header = |what: &str| {
        if md {
            println!("\n| {what} | n | tier agreement | under | over |\n| --- | --- | --- | --- | --- |");
        } else {
            println!("-- {what}\n{:<22} {:>4} {:>8} {:>6} {:>6}", "", "n", "agree", "under", "over");
        }
    };
    header("overall");
    println!("{}", overall.row("all", md));
    header("language");
    for (k, t) in &by_language {
        println!("{}", t.row(k, md));
    }
    header("label tier");
    for (k, t) in &by_label {
        println!("{}", t.row(&k.to_string(), md));
    }
    header("category");
    for (k, t) in &by_category {
        println!("{}", t.row(k, md));
    }
    println!(
        "\nsame task in English and Chinese ({} pairs compared): same predicted tier {same} times ({:.1}%)",
        compared,
        100.0 * same as f64 / compared.max(1) as f64
    );
    Ok(())
}
