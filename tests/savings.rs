//! The savings benchmark (`semroute::eval::run`): data set handling, metrics on hand-computed
//! cases, and the harness on a small committed fixture (200 CRUXEval prompts, 6 models; see
//! tests/fixtures/routing/make.py), routed through a real `Router` with the real model. Nothing
//! here needs ../shared.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use semroute::embed::Embedder;
use semroute::eval::{aiq, apgr, cpt, nondecreasing_hull, run, BenchSettings, CurvePoint, Dataset, Report};
use semroute::PriceTable;

fn fixture(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/routing").join(file)
}

fn prices() -> PriceTable {
    PriceTable::from_file(fixture("prices-crux-small.toml")).unwrap()
}

/// Fewer folds than the default, so the suite stays quick; the protocol is the same.
fn quick() -> BenchSettings {
    BenchSettings { folds: 3, ..BenchSettings::default() }
}

#[test]
fn split_is_deterministic_disjoint_and_complete() {
    let data = Dataset::load(fixture("crux-small.jsonl")).unwrap();
    let (a_train, a_test) = data.split(0.7, 42);
    let (b_train, b_test) = data.split(0.7, 42);
    assert_eq!(a_train.iter().map(|r| &r.id).collect::<Vec<_>>(), b_train.iter().map(|r| &r.id).collect::<Vec<_>>());
    assert_eq!(a_test.len(), b_test.len());
    assert_eq!(a_train.len() + a_test.len(), data.records.len());
    assert_eq!(a_train.len(), 140);
    assert!(a_test.iter().all(|t| a_train.iter().all(|r| r.id != t.id)));
    let (c_train, _) = data.split(0.7, 43);
    assert_ne!(a_train.iter().map(|r| &r.id).collect::<Vec<_>>(), c_train.iter().map(|r| &r.id).collect::<Vec<_>>());
}

#[test]
fn bad_dataset_line_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.jsonl");
    std::fs::write(&path, "{\"id\":\"a\",\"prompt\":\"p\",\"scores\":{\"m\":0.5}}\n{\"id\":\"b\",\"prompt\":\"p\",\"scores\":{\"m\":3}}\n")
        .unwrap();
    let msg = Dataset::load(&path).unwrap_err().to_string();
    assert!(msg.contains("d.jsonl:2") && msg.contains("outside [0, 1]"), "{msg}");
}

#[test]
fn a_repeated_id_or_an_empty_prompt_names_the_line_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.jsonl");
    let good = |id: &str| format!("{{\"id\":\"{id}\",\"prompt\":\"p {id}\",\"scores\":{{\"m\":0.5}}}}\n");
    std::fs::write(&path, good("a") + &good("b") + "\n" + &good("a")).unwrap();
    let msg = Dataset::load(&path).unwrap_err().to_string();
    assert!(msg.contains("d.jsonl:4") && msg.contains("`id`") && msg.contains("duplicate id \"a\" (first at line 1)"), "{msg}");
    std::fs::write(&path, good("a") + "{\"id\":\"b\",\"prompt\":\"  \",\"scores\":{\"m\":0.5}}\n").unwrap();
    let msg = Dataset::load(&path).unwrap_err().to_string();
    assert!(msg.contains("d.jsonl:2") && msg.contains("`prompt`") && msg.contains("empty"), "{msg}");
}

#[test]
fn metrics_of_perfect_and_useless_routers() {
    let (weak, strong) = (0.6, 0.9);
    // Recovers the whole gap with 20% strong calls, then stays there.
    let perfect =
        [CurvePoint { strong_share: 0.2, quality: 0.9, cost_usd: 2.0 }, CurvePoint { strong_share: 1.0, quality: 0.9, cost_usd: 10.0 }];
    assert!((apgr(&perfect, weak, strong) - 0.9).abs() < 1e-9);
    assert!((cpt(&perfect, weak, strong, 0.5).unwrap() - 0.1).abs() < 1e-9);
    // A router never better than the weak model until all calls are strong.
    let useless = [CurvePoint { strong_share: 0.99, quality: 0.6, cost_usd: 9.9 }];
    assert!(apgr(&useless, weak, strong) < 0.01);
    assert!(cpt(&useless, weak, strong, 0.8).unwrap() > 0.99);
}

#[test]
fn hull_and_aiq() {
    // (2, 0.4) is dominated by the cheaper (1, 0.5); (2.5, 0.6) lies under the chord (1,0.5)-(3,0.9).
    let pts = [(3.0, 0.9), (1.0, 0.5), (2.0, 0.4), (2.5, 0.6), (4.0, 0.8)];
    assert_eq!(nondecreasing_hull(&pts), vec![(1.0, 0.5), (3.0, 0.9)]);
    // Flat at 0.9 beyond $3: mean over [1, 4] = (2 * 0.7 + 1 * 0.9) / 3.
    assert!((aiq(&pts, 1.0, 4.0) - (2.0 * 0.7 + 0.9) / 3.0).abs() < 1e-12);
    // Below the cheapest point nothing is reachable: [0, 1] counts 0.
    assert!((aiq(&pts, 0.0, 3.0) - (2.0 * 0.7) / 3.0).abs() < 1e-12);
    // A better router has a larger AIQ over the same range.
    assert!(aiq(&[(1.0, 0.5), (1.5, 0.9)], 1.0, 4.0) > aiq(&pts, 1.0, 4.0));
}

/// Replaces every test-split score of the fixture by 1 - score.
fn flipped_fixture(dir: &std::path::Path) -> Dataset {
    let data = Dataset::load(fixture("crux-small.jsonl")).unwrap();
    let (_, test) = data.split(0.7, 42);
    let test_ids: Vec<&str> = test.iter().map(|r| r.id.as_str()).collect();
    let text = std::fs::read_to_string(fixture("crux-small.jsonl")).unwrap();
    let mut lines = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        if test_ids.contains(&v["id"].as_str().unwrap()) {
            for q in v["scores"].as_object_mut().unwrap().values_mut() {
                *q = serde_json::json!(1.0 - q.as_f64().unwrap());
            }
        }
        lines.push(v.to_string());
    }
    let path = dir.join("flipped.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    Dataset::load(&path).unwrap()
}

fn report(data: &Dataset) -> Report {
    run(data, &prices(), common::embedder() as Arc<dyn Embedder>, &quick()).unwrap()
}

#[test]
fn models_the_price_table_does_not_price_are_named_not_dropped_silently() {
    let data = Dataset::load(fixture("crux-small.jsonl")).unwrap();
    let all = prices();
    let kept = ["gemma-2-2b-it", "gpt-4o-mini-2024-07-18", "o1-preview-2024-09-12"];
    let three = PriceTable::from_models(kept.iter().map(|m| (m.to_string(), all.get(m).unwrap().clone()))).unwrap();
    let r = run(&data, &three, common::embedder() as Arc<dyn Embedder>, &quick()).unwrap();
    assert_eq!(r.models, kept);
    assert_eq!(r.models_unpriced, ["claude-3-5-sonnet-20240620", "gpt-4o-2024-08-06", "qwen2.5-7b-instruct"]);
    assert!(r.models_left_out.is_empty());
    assert!(r.prompts_set_aside.is_empty());

    // A model without a score on a few prompts (a failed call) is still routed between: those
    // prompts are set aside, at most 5% of them; a model lacking more is left out instead.
    let lacking = |n: usize| {
        let mut d = data.clone();
        let step = d.records.len() / n;
        for r in d.records.iter_mut().step_by(step).take(n) {
            r.scores.remove("o1-preview-2024-09-12");
        }
        run(&d, &three, common::embedder() as Arc<dyn Embedder>, &quick()).unwrap()
    };
    assert_eq!(data.records.len(), 200);
    let r = lacking(2);
    assert_eq!(r.models, kept);
    assert_eq!(r.prompts_set_aside, [data.records[0].id.clone(), data.records[100].id.clone()]);
    assert_eq!(r.train + r.test, 198);
    let r = lacking(11);
    assert_eq!(r.models, kept[..2]);
    assert_eq!(r.models_left_out, ["o1-preview-2024-09-12"]);
    assert!(r.prompts_set_aside.is_empty());
    assert_eq!(r.train + r.test, 200);
}

#[test]
fn harness_routes_the_test_split_through_a_router_built_on_train() {
    let data = Dataset::load(fixture("crux-small.jsonl")).unwrap();
    let r = report(&data);
    assert_eq!((r.train, r.test), (140, 60));
    assert_eq!(r.models.len(), 6);
    // The reference is the best model on the train split.
    assert_eq!(r.reference_model, "o1-preview-2024-09-12");
    assert_eq!(r.cheap_model, "gemma-2-2b-it");
    // Every candidate was scored out of fold. The chosen one has the lowest frontier Brier score
    // of those whose AIQ is near the largest (within a bootstrap standard error: checked in
    // bench.rs's unit test).
    assert_eq!(r.candidates.len(), 10 * 2);
    let best_aiq = r.candidates.iter().map(|c| c.oof_aiq).fold(f64::NEG_INFINITY, f64::max);
    assert!(r.chosen.oof_aiq > best_aiq - 0.05, "{} against {best_aiq}", r.chosen.oof_aiq);
    assert!(r.candidates.iter().all(|c| c.oof_frontier_brier > 0.0 && c.oof_brier > 0.0));
    // One target per asked share, each with its test figures and the reference's.
    assert_eq!(r.targets.iter().map(|t| t.target).collect::<Vec<_>>(), vec![0.90, 0.95, 0.98]);
    for t in &r.targets {
        assert!((t.kept - t.quality / t.reference_quality).abs() < 1e-12);
        assert!(t.cost_usd > 0.0 && t.reference_cost_usd > 0.0);
    }
    // The oracle bounds everything, and AIQs are means of qualities.
    for a in [r.aiq, r.zero_router_aiq] {
        assert!((0.0..=1.0).contains(&a) && a <= r.oracle_aiq + 1e-12, "{a} {}", r.oracle_aiq);
    }
    // A curve point per knob, and the single models cheapest first.
    assert!(r.curve.len() > 50 && r.curve.iter().all(|p| p.knob.is_some()));
    assert!(r.single_models.windows(2).all(|w| w[0].cost_usd <= w[1].cost_usd));
    // Calibration and answer-length errors are reported against their baselines.
    assert!(r.calibration.brier > 0.0 && r.calibration.baseline_brier > 0.0);
    assert_eq!(r.calibration.reliability.iter().map(|b| b.2).sum::<usize>(), 60 * 6);
    let (mae, baseline) = r.output_tokens_mae.unwrap();
    assert!(mae > 0.0 && baseline > 0.0);
    // Same seed, same figures.
    assert_eq!(serde_json::to_string(&report(&data).targets).unwrap(), serde_json::to_string(&r.targets).unwrap());
}

#[test]
fn router_never_sees_test_scores() {
    // Invert every test prompt's scores: what the router chose (the knobs, the configuration,
    // the costs and reference shares along its whole curve) must not change; only the qualities
    // those choices earn may.
    let dir = tempfile::tempdir().unwrap();
    let a = report(&Dataset::load(fixture("crux-small.jsonl")).unwrap());
    let b = report(&flipped_fixture(dir.path()));
    assert_eq!(a.chosen.config, b.chosen.config);
    let shape =
        |r: &Report| r.curve.iter().map(|p| (format!("{:.12}", p.cost_usd), format!("{:.6}", p.reference_share))).collect::<Vec<_>>();
    assert_eq!(shape(&a), shape(&b));
    assert_eq!(a.targets.iter().map(|t| t.knob).collect::<Vec<_>>(), b.targets.iter().map(|t| t.knob).collect::<Vec<_>>());
    assert_ne!(a.curve[50].quality, b.curve[50].quality);
}

/// A toy embedder (two letters' counts), for data tests that need no model.
struct Letters;

impl Embedder for Letters {
    fn model_id(&self) -> &str {
        "letters-test"
    }
    fn dim(&self) -> usize {
        2
    }
    fn embed_batch(&self, texts: &[&str]) -> semroute::Result<Vec<Vec<f32>>> {
        Ok(letter_counts(texts, &['a', 'b']))
    }
}

/// Each text's counts of `letters` (plus 0.1), scaled to unit length.
fn letter_counts(texts: &[&str], letters: &[char]) -> Vec<Vec<f32>> {
    texts
        .iter()
        .map(|t| {
            let v: Vec<f32> = letters.iter().map(|&c| t.matches(c).count() as f32 + 0.1).collect();
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.into_iter().map(|x| x / n).collect()
        })
        .collect()
}

/// [`common::TWO_MODELS`] and `twin`, between them in price (5 and 10 USD per million tokens).
fn three_models() -> String {
    common::TWO_MODELS.to_string()
        + "[models.twin]\nprovider = \"c\"\ninput_per_mtok = 5.0\noutput_per_mtok = 10.0\ntier = \"mid\"\nsource = \"test\"\nas_of = \"2025\"\n"
}

fn toy_dataset(dir: &std::path::Path, extra: impl Fn(usize) -> String) -> Dataset {
    let lines: Vec<String> = (0..40)
        .map(|i| {
            let prompt = if i % 2 == 0 { format!("aaa a {i}") } else { format!("bbb b {i}") };
            // The small model is right on the a-prompts only; the big one everywhere.
            let small = if i % 2 == 0 { 1.0 } else { 0.0 };
            format!(r#"{{"id":"r{i}","prompt":"{prompt}","scores":{{"small":{small},"big":1.0}}{}}}"#, extra(i))
        })
        .collect();
    let path = dir.join("toy.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    Dataset::load(&path).unwrap()
}

#[test]
fn missing_cost_data_is_an_error_or_a_stated_assumption() {
    let dir = tempfile::tempdir().unwrap();
    let data = toy_dataset(dir.path(), |_| String::new());
    let prices = PriceTable::from_toml_str(common::TWO_MODELS, "two.toml").unwrap();
    let msg = run(&data, &prices, Arc::new(Letters), &quick()).unwrap_err().to_string();
    assert!(msg.contains("keeps neither the answer, its length nor the cost"), "{msg}");
    let settings = BenchSettings { assume_output_tokens: Some(100), ..quick() };
    let r = run(&data, &prices, Arc::new(Letters), &settings).unwrap();
    assert!(r.assumption.as_deref().unwrap().contains("100 tokens"));
    // Priced with the assumption: each prompt's input at list price plus 100 output tokens.
    let big = r.single_models.iter().find(|s| s.model == "big").unwrap();
    assert!(big.cost_usd > 12.0 * 100.0 * 20.0 / 1e6);
}

#[test]
fn measured_cost_is_used_where_given() {
    let dir = tempfile::tempdir().unwrap();
    // Every call's real cost is recorded: $0.72 a task for the big model, $0.01 for the small.
    let data = toy_dataset(dir.path(), |_| r#","cost_usd":{"small":0.01,"big":0.72}"#.to_string());
    let prices = PriceTable::from_toml_str(common::TWO_MODELS, "two.toml").unwrap();
    let r = run(&data, &prices, Arc::new(Letters), &quick()).unwrap();
    assert_eq!(r.assumption, None);
    let cost = |m: &str| r.single_models.iter().find(|s| s.model == m).unwrap().cost_usd;
    assert!((cost("big") - 0.72 * r.test as f64).abs() < 1e-9, "{}", cost("big"));
    assert!((cost("small") - 0.01 * r.test as f64).abs() < 1e-9);
    // The two kinds of prompt are told apart: at 98% of the big model's quality the router keeps
    // it, for much less than always calling it.
    let t = r.targets.iter().find(|t| t.target == 0.98).unwrap();
    assert!(t.kept >= 0.97 && t.cost_usd < 0.75 * t.reference_cost_usd, "{t:?}");
}

#[test]
fn a_negative_measured_cost_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.jsonl");
    std::fs::write(&path, "{\"id\":\"a\",\"prompt\":\"p\",\"scores\":{\"m\":0.5},\"cost_usd\":{\"m\":-1}}\n").unwrap();
    let msg = Dataset::load(&path).unwrap_err().to_string();
    assert!(msg.contains("d.jsonl:1") && msg.contains("cost_usd"), "{msg}");
}

#[test]
fn savings_configs_restricts_the_candidates_and_names_an_unknown_one() {
    let run = |configs: &str| {
        common::semroute("eval savings")
            .args(["--dataset", fixture("crux-small.jsonl").to_str().unwrap()])
            .args(["--prices", fixture("prices-crux-small.toml").to_str().unwrap()])
            .args(["--folds", "3", "--json", "--configs", configs])
            .output()
            .unwrap()
    };
    let out = run("knn-8,features");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(String::from_utf8(out.stdout).unwrap().trim()).unwrap();
    let names: Vec<&str> = v["candidates"].as_array().unwrap().iter().map(|c| c["config"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["knn-8", "knn-8", "features", "features"], "one per policy");
    let out = run("knn-8,no-such");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"no-such\"") && err.contains("knn-128-smoothed"), "{err}");
}

#[test]
fn savings_example_prints_one_json_object_per_seed_and_a_plot() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("crux.png");
    let out = common::semroute("eval savings")
        .args(["--dataset", fixture("crux-small.jsonl").to_str().unwrap()])
        .args(["--prices", fixture("prices-crux-small.toml").to_str().unwrap()])
        .args(["--folds", "3", "--json", "--plot", png.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["schema_version"], 2);
    assert!(v.get("keep_targets").is_none(), "`targets` are what `--keep` gives: one list");
    let t = &v["targets"][1];
    for key in ["target", "knob", "quality", "cost_usd", "reference_model", "reference_quality", "reference_cost_usd"] {
        assert!(t.get(key).is_some(), "targets[1] lacks {key}: {t}");
    }
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 20_000, "{} bytes", bytes.len());
}

/// `n` measured exemplars alternating between two kinds of prompt (ids `{id}{i}`): the small
/// model is right on the first kind only, the big one on both.
fn two_kinds(n: usize, id: &str, first: impl Fn(usize) -> String, second: impl Fn(usize) -> String) -> semroute::exemplar::ExemplarSet {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            let (prompt, small) = if i % 2 == 0 { (first(i), 1) } else { (second(i), 0) };
            format!(
                r#"{{"id":"{id}{i}","prompt":"{prompt}","category":"c","language":"en","results":{{"small":{{"quality":{small},"output_tokens":9}},"big":{{"quality":1,"output_tokens":9}}}}}}"#
            )
        })
        .collect();
    semroute::exemplar::ExemplarSet::from_jsonl_str(&lines.join("\n"), "m.jsonl").unwrap()
}

/// The candidates a router's `Predictor::Auto` cross-validates, with the router's settings.
fn router_candidates() -> semroute::predict::select::Candidates {
    use semroute::predict::{LowRankSettings, Prior, RidgeSettings};
    semroute::predict::select::Candidates {
        k: 8,
        temperature: 0.05,
        prior: Prior::none(),
        ridge: RidgeSettings::for_embedder(&Letters),
        low_rank: LowRankSettings::for_router(),
    }
}

#[test]
fn auto_cross_validates_the_predictor_on_measured_exemplars() {
    use semroute::predict::{select, Predictor};
    // 80 measured exemplars of two kinds: the small model is right on the a-prompts only.
    let set = two_kinds(80, "r", |i| format!("aaa a {i}"), |i| format!("bbb b {i}"));
    let prices = PriceTable::from_toml_str(common::TWO_MODELS, "two.toml").unwrap();
    let router =
        semroute::Router::builder().embedder(Arc::new(Letters)).exemplars(set.clone()).prices(prices.clone()).no_cache().build().unwrap();
    // What the router chose is what cross-validation on its exemplars finds most accurate.
    let vectors = Letters.embed_batch(&set.iter().map(|e| e.prompt.as_str()).collect::<Vec<_>>()).unwrap();
    let scores = select::cross_validate(&set, &vectors, &prices, &router_candidates(), 5).unwrap();
    // Six predictors and their stack.
    assert_eq!(scores.scores.len(), 7);
    let d = router.route("aaaa a").unwrap();
    assert_eq!(d.quality_from, scores.best().0.describe(true), "{:?}", scores.scores);
    assert_eq!(d.model, "small", "{}", d.reason);
    assert_eq!(router.route("bbbb b").unwrap().model, "big");
    // An explicit predictor is not second-guessed.
    let knn =
        semroute::Router::builder().embedder(Arc::new(Letters)).exemplars(set).prices(prices).predictor(Predictor::Neighbours).no_cache();
    assert_eq!(knn.build().unwrap().route("aaaa a").unwrap().quality_from, "neighbours");
}

#[test]
fn above_2000_measured_exemplars_auto_chooses_on_2000_evenly_spread() {
    use semroute::exemplar::ExemplarSet;
    use semroute::predict::{select, KERNEL_RIDGE_MAX_EXEMPLARS};
    // 2,100 exemplars (Auto used to leave so many to the neighbours alone): the small model
    // answers short prompts and fails long ones full of numbers, which the test embedder's
    // letter counts (one a and one b in each) cannot tell apart at all.
    let n = KERNEL_RIDGE_MAX_EXEMPLARS + 100;
    let set = two_kinds(
        n,
        "r",
        |i| format!("ab {i}"),
        |i| format!("ab {i}: 31 47 52 68 73 89 94 15 26 37 48 59 60 71 82 93 + 4.5 * 6.25 / 17.75 - 3 = ?"),
    );
    let prices = PriceTable::from_toml_str(common::TWO_MODELS, "two.toml").unwrap();
    let router =
        semroute::Router::builder().embedder(Arc::new(Letters)).exemplars(set.clone()).prices(prices.clone()).no_cache().build().unwrap();
    // The choice is cross-validation's on exemplars i · n / 2000.
    let spread: Vec<_> =
        (0..KERNEL_RIDGE_MAX_EXEMPLARS).map(|i| set.iter().nth(i * n / KERNEL_RIDGE_MAX_EXEMPLARS).unwrap().clone()).collect();
    let spread = ExemplarSet::from_exemplars(spread).unwrap();
    let vectors = Letters.embed_batch(&spread.iter().map(|e| e.prompt.as_str()).collect::<Vec<_>>()).unwrap();
    let best = select::cross_validate(&spread, &vectors, &prices, &router_candidates(), 5).unwrap().best().0.describe(true);
    assert_ne!(best, "neighbours", "the check tells the old rule from the new");
    let d = router.route("ab 5000").unwrap();
    assert_eq!(d.quality_from, best);
    assert_eq!(d.model, "small", "{}", d.reason);
    let hard = router.route("ab 5001: 13 74 25 86 37 98 49 51 62 73 84 95 16 27 38 + 5.5 * 2.25 / 71.75 - 9 = ?").unwrap();
    assert_eq!(hard.model, "big", "{}", hard.reason);
}

#[test]
fn the_feature_model_reads_difficulty_the_embedding_does_not_show() {
    use semroute::predict::{FeatureSettings, Predictor};
    // The small model answers short questions and fails long ones full of numbers; the test
    // embedder's vectors (letter counts) do not tell the two kinds apart by topic.
    let set = two_kinds(
        60,
        "f",
        |i| format!("name a colour please {i}"),
        |i| format!("a shop sells {i} pens at 3.25 each and 17 boxes of 12 at 41.50; after a 15% discount and 8% tax, what is paid?"),
    );
    let prices = PriceTable::from_toml_str(common::TWO_MODELS, "two.toml").unwrap();
    let router = semroute::Router::builder()
        .embedder(Arc::new(Letters))
        .exemplars(set)
        .prices(prices)
        .predictor(Predictor::Features(FeatureSettings::default()))
        .no_cache()
        .build()
        .unwrap();
    let easy = router.route("name a fruit").unwrap();
    assert_eq!((easy.model.as_str(), easy.quality_from.as_str()), ("small", "features"), "{}", easy.reason);
    let hard =
        router.route("a farm has 240 hens laying 0.8 eggs a day; 35% are sold at 2.40 a dozen over 30 days, 12 break; how much?").unwrap();
    assert_eq!(hard.model, "big", "{}", hard.reason);
    // A penalty that is not a number is refused at build, naming the setting.
    let bad = semroute::Router::builder()
        .embedder(Arc::new(Letters))
        .predictor(Predictor::Features(FeatureSettings::with_l2(f64::NAN)))
        .no_cache()
        .build()
        .unwrap_err();
    assert!(bad.to_string().contains("l2"), "{bad}");
}

#[test]
fn a_target_routing_cannot_meet_on_train_goes_to_the_cheapest_single_model_that_does() {
    use semroute::eval::RouterConfig;
    use semroute::predict::Predictor;
    let dir = tempfile::tempdir().unwrap();
    // Every prompt looks the same to the embedder; `small` is right on a pattern its prompts do
    // not show ($0.01 a call), `twin` on all but three ($0.05), `big` on all ($0.72: the
    // reference).
    let lines: Vec<String> = (0..200)
        .map(|i| {
            let small = if (i * 7) % 3 == 0 { 1.0 } else { 0.0 };
            let twin = if [3, 50, 97].contains(&i) { 0.0 } else { 1.0 };
            format!(
                r#"{{"id":"r{i}","prompt":"aaa bbb {i}","scores":{{"small":{small},"twin":{twin},"big":1.0}},"cost_usd":{{"small":0.01,"twin":0.05,"big":0.72}}}}"#
            )
        })
        .collect();
    let path = dir.path().join("same.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    let data = Dataset::load(&path).unwrap();
    let prices = PriceTable::from_toml_str(&three_models(), "three.toml").unwrap();
    // One nearest neighbour: its grade of `small` is a coin the prompt does not show, so no knob
    // that ever picks it keeps 90% on train; one model does, for far less than `big`.
    let config = RouterConfig {
        name: "knn-1".into(),
        predictor: Predictor::Neighbours,
        k: 1,
        temperature: 0.05,
        prior_strength: 0.0,
        min_similarity: Some(-1.0),
    };
    let settings = BenchSettings { configs: Some(vec![config]), ..quick() };
    let r = run(&data, &prices, Arc::new(Letters), &settings).unwrap();
    let t = r.targets.iter().find(|t| t.target == 0.90).unwrap();
    assert_eq!(t.config, "single model twin", "{t:?}");
    let twin = r.single_models.iter().find(|s| s.model == "twin").unwrap();
    assert_eq!((t.quality, t.cost_usd, t.knob), (twin.quality, twin.cost_usd, None));
    assert_eq!(r.reference_model, "big");
    assert!(t.cost_usd < 0.1 * t.reference_cost_usd && t.kept >= 0.9);
}

/// A toy embedder of four dimensions (counts of four letters), for a kernel model with room to
/// vary.
struct FourLetters;

impl Embedder for FourLetters {
    fn model_id(&self) -> &str {
        "four-letters-test"
    }
    fn dim(&self) -> usize {
        4
    }
    fn embed_batch(&self, texts: &[&str]) -> semroute::Result<Vec<Vec<f32>>> {
        Ok(letter_counts(texts, &['a', 'b', 'c', 'd']))
    }
}

/// The `i`th prompt of the four-letter toy sets: runs of letters that [`FourLetters`] counts.
fn four_letter_prompt(i: usize) -> String {
    let letters = ["a", "b", "c", "d"];
    format!("{}{} {}", letters[i % 4].repeat(1 + i % 3), letters[(i / 4) % 4].repeat(1 + i % 5), i)
}

/// 80 measured exemplars (JSONL lines) over [`four_letter_prompt`]: "small" is right on about
/// half of the letter mixes, "big" on all.
fn four_letter_lines() -> Vec<String> {
    (0..80)
        .map(|i| {
            let small = u8::from(i % 4 < 2 && i % 7 != 0);
            format!(
                r#"{{"id":"e{i}","prompt":"{}","category":"c","language":"en","results":{{"small":{{"quality":{small},"output_tokens":{}}},"big":{{"quality":1,"output_tokens":20}}}}}}"#,
                four_letter_prompt(i),
                10 + i % 9
            )
        })
        .collect()
}

#[test]
fn a_batch_is_assessed_as_each_prompt_alone() {
    use semroute::exemplar::ExemplarSet;
    use semroute::predict::{Predictor, RidgeSettings};
    use semroute::Router;
    let lines = four_letter_lines();
    let exemplars = ExemplarSet::from_jsonl_str(&lines.join("\n"), "toy.jsonl").unwrap();
    let embedder: Arc<dyn Embedder> = Arc::new(FourLetters);
    for predictor in [Predictor::KernelRidge(RidgeSettings::default()), Predictor::Blend(RidgeSettings::default()), Predictor::Auto] {
        let router = Router::builder()
            .embedder(embedder.clone())
            .exemplars(exemplars.clone())
            .prices(PriceTable::from_toml_str(common::TWO_MODELS, "two.toml").unwrap())
            .predictor(predictor)
            .no_cache()
            .build()
            .unwrap();
        let prompts: Vec<String> = (0..70).map(|i| four_letter_prompt(1000 + 3 * i)).collect();
        let vectors = embedder.embed_batch(&prompts.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
        let items: Vec<(&str, &[f32], Option<u64>)> = prompts.iter().zip(&vectors).map(|(p, v)| (p.as_str(), v.as_slice(), None)).collect();
        let batch = router.assess_embedded_batch(&items).unwrap();
        assert_eq!(batch.len(), items.len());
        let mut with_error = 0;
        for ((p, v, _), b) in items.iter().zip(&batch) {
            let alone = router.assess_embedded(p, v, None).unwrap();
            assert_eq!(b.input_tokens(), alone.input_tokens());
            for (model, q) in &alone.predictions().per_model {
                let got = &b.predictions().per_model[model];
                assert_eq!(got.quality.to_bits(), q.quality.to_bits(), "{predictor:?} {p:?} {model}");
                assert_eq!(got.quality_se.map(f64::to_bits), q.quality_se.map(f64::to_bits), "{predictor:?} {p:?} {model}");
                with_error += usize::from(q.quality_se.is_some());
            }
        }
        if matches!(predictor, Predictor::KernelRidge(_)) {
            assert!(with_error > 0, "the kernel model gave no standard error to compare");
        }
    }
    // A bad item fails the batch, naming it.
    let router = Router::builder()
        .embedder(embedder.clone())
        .exemplars(exemplars)
        .prices(PriceTable::from_toml_str(common::TWO_MODELS, "two.toml").unwrap())
        .no_cache()
        .build()
        .unwrap();
    let v = embedder.embed("abc").unwrap();
    let err = router.assess_embedded_batch(&[("abc", &v, None), ("abc", &[1.0, 0.0], None)]).unwrap_err().to_string();
    assert!(err.contains("item 1") && err.contains("length 2"), "{err}");
}

#[test]
fn routers_sharing_fitted_models_predict_as_routers_that_fit_their_own() {
    use semroute::exemplar::ExemplarSet;
    use semroute::predict::{FeatureSettings, FitCache, LowRankSettings, Predictor, RidgeSettings};
    use semroute::Router;
    let lines = four_letter_lines();
    let exemplars = ExemplarSet::from_jsonl_str(&lines.join("\n"), "toy.jsonl").unwrap();
    let embedder: Arc<dyn Embedder> = Arc::new(FourLetters);
    let build = |predictor: Predictor, exemplars: &ExemplarSet, fits: Option<&FitCache>| {
        let b = Router::builder()
            .embedder(embedder.clone())
            .exemplars(exemplars.clone())
            .prices(PriceTable::from_toml_str(common::TWO_MODELS, "two.toml").unwrap())
            .predictor(predictor)
            .no_cache();
        match fits {
            Some(f) => b.fit_cache(f.clone()),
            None => b,
        }
        .build()
        .unwrap()
    };
    let (ridge, low_rank) = (RidgeSettings::default(), LowRankSettings::default());
    let fits = FitCache::new();
    let prompts: Vec<String> = (0..30).map(|i| four_letter_prompt(1000 + 3 * i)).collect();
    // (predictor, fitted parts held after its build): the kernel-ridge model is fitted once for
    // the first two and taken by the ensemble, the low-rank model fitted once for the last two.
    let cases = [
        (Predictor::KernelRidge(ridge), 1),
        (Predictor::Blend(ridge), 1),
        (Predictor::LowRank(low_rank), 2),
        (Predictor::Ensemble(ridge, low_rank), 2),
        (Predictor::Features(FeatureSettings::default()), 3),
    ];
    for (predictor, parts) in cases {
        let shared = build(predictor, &exemplars, Some(&fits));
        assert_eq!(fits.len(), parts, "{predictor:?}");
        let own = build(predictor, &exemplars, None);
        for p in &prompts {
            let (a, b) = (shared.assess(p).unwrap(), own.assess(p).unwrap());
            for (model, q) in &b.predictions().per_model {
                let got = &a.predictions().per_model[model];
                assert_eq!(got.quality.to_bits(), q.quality.to_bits(), "{predictor:?} {p:?} {model}");
                assert_eq!(got.quality_se.map(f64::to_bits), q.quality_se.map(f64::to_bits), "{predictor:?} {p:?} {model}");
            }
        }
    }
    // Other exemplars are other inputs: a router over them fits its own model.
    let fewer = ExemplarSet::from_jsonl_str(&lines[..70].join("\n"), "fewer.jsonl").unwrap();
    let shared = build(Predictor::KernelRidge(ridge), &fewer, Some(&fits));
    assert_eq!(fits.len(), 4);
    let own = build(Predictor::KernelRidge(ridge), &fewer, None);
    let (a, b) = (shared.assess(&prompts[0]).unwrap(), own.assess(&prompts[0]).unwrap());
    assert_eq!(a.predictions().per_model["small"].quality.to_bits(), b.predictions().per_model["small"].quality.to_bits());
}

/// A router a user builds on the train split, asking to keep X% of the best model's quality
/// among the same candidates, chooses the candidate and takes the operating point the benchmark
/// reports for X (the same code on the same cross-fitting: a train split of seed 42 is folded
/// with seed 43), and routing the test prompts with it gives the quality the benchmark reports.
/// Through `Router` both times.
#[test]
fn a_router_tuned_to_a_quality_target_routes_as_the_benchmark_reports() {
    use semroute::eval::{to_exemplars, Policy, RouterConfig};
    use semroute::pricing::TokenCounter;
    use semroute::target::{OperatingPoint, QualityTarget};
    use semroute::{ExemplarSet, Objective, Router};

    let data = Dataset::load(fixture("crux-small.jsonl")).unwrap();
    let embedder = common::embedder();
    // The default router and two other candidates, under both policies.
    let configs: Vec<RouterConfig> = RouterConfig::defaults(embedder.as_ref())
        .into_iter()
        .filter(|c| ["default", "knn-8", "knn-32-smoothed"].contains(&c.name.as_str()))
        .collect();
    assert_eq!(configs.len(), 3);
    let policies = vec![Policy::QualityBar, Policy::UsdPerQuality];
    let settings = BenchSettings { configs: Some(configs.clone()), policies: policies.clone(), ..BenchSettings::default() };
    let report = run(&data, &prices(), embedder.clone() as Arc<dyn Embedder>, &settings).unwrap();
    assert_eq!(report.targets.len(), 3);
    let (train, test) = data.split(settings.train_fraction, settings.seed);
    let models: Vec<&str> = report.models.iter().map(String::as_str).collect();
    let exemplars = ExemplarSet::from_exemplars(to_exemplars(&train, &models, &TokenCounter::cl100k().unwrap(), 0)).unwrap();
    let mut knobs = 0;
    // A cache folder of its own: every build tunes (none reads a tuning an earlier run kept).
    let cache = tempfile::tempdir().unwrap();
    for t in &report.targets {
        let router = Router::builder()
            .embedder(embedder.clone())
            .exemplars(exemplars.clone())
            .prices(prices())
            .cache_dir(cache.path())
            .quality_target(QualityTarget::keep(t.target).seed(settings.seed + 1).candidates(configs.clone()).policies(policies.clone()))
            .build()
            .unwrap();
        let tuned = router.tuned().expect("tuned");
        assert!(!tuned.reused);
        assert_eq!(tuned.reference_model, report.reference_model);
        assert_eq!(router.settings().fallback_model, report.reference_model, "the safe model is the best measured one");
        assert_eq!((tuned.exemplars, tuned.folds, tuned.candidates), (train.len(), 5, 6));
        assert_eq!(tuned.candidate, report.chosen.config.name, "{tuned}; the benchmark chose {:?}", report.chosen);
        let chosen = &report.chosen.config;
        assert_eq!((router.settings().k, router.settings().prior_strength), (chosen.k, chosen.prior_strength));
        match &tuned.point {
            OperatingPoint::Knob(objective) => {
                let (knob, policy) = match objective {
                    Objective::QualityBar(bar) => {
                        assert_eq!(router.settings().quality_bar, *bar);
                        (*bar, Policy::QualityBar)
                    }
                    Objective::UsdPerQuality(usd) => {
                        assert_eq!(router.settings().usd_per_quality, Some(*usd));
                        (*usd, Policy::UsdPerQuality)
                    }
                    other => panic!("{other:?}"),
                };
                assert_eq!(
                    (Some(knob), policy, t.config.as_str()),
                    (t.knob, t.policy, chosen.name.as_str()),
                    "{tuned}; the benchmark: {t:?}"
                );
                knobs += 1;
            }
            OperatingPoint::Model(m) => assert_eq!(t.config, format!("single model {m}"), "{tuned}"),
            other => panic!("{other:?}"),
        }
        // Out of fold, the point keeps what was asked (with its margin).
        assert!(tuned.quality >= t.target * tuned.reference_quality, "{tuned}");
        // Routed as a user routes them, the test prompts get the quality the benchmark reports.
        let quality = test.iter().map(|r| r.scores[&router.route(&r.prompt).unwrap().model]).sum::<f64>() / test.len() as f64;
        assert!((quality - t.quality).abs() < 1e-9, "routed {quality}, reported {}", t.quality);
    }
    assert!(knobs > 0, "no target was routed: the test compares nothing of the knob");
}

/// A tuning is kept in the cache folder and read back by the next build on the same exemplars,
/// prices and settings; other grades are another key (tuned again), and a damaged file is tuned
/// again and replaced, never an error.
#[test]
fn a_quality_target_is_tuned_once_for_the_same_inputs_and_again_when_they_change() {
    use semroute::exemplar::ExemplarSet;
    use semroute::target::QualityTarget;
    use semroute::Router;
    let dir = tempfile::tempdir().unwrap();
    let lines = four_letter_lines();
    let build = |lines: &[String]| {
        Router::builder()
            .embedder(Arc::new(FourLetters))
            .exemplars(ExemplarSet::from_jsonl_str(&lines.join("\n"), "toy.jsonl").unwrap())
            .prices(PriceTable::from_toml_str(common::TWO_MODELS, "two.toml").unwrap())
            .cache_dir(dir.path())
            .quality_target(QualityTarget::keep(0.9))
            .build()
            .unwrap()
    };
    let first = build(&lines).tuned().unwrap().clone();
    let files: Vec<std::path::PathBuf> = std::fs::read_dir(dir.path().join("tuned")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    // The next build reads the file: a figure changed in it shows up.
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let mut kept: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(kept["tuned"]["cost_usd"].as_f64(), Some(first.cost_usd));
    kept["tuned"]["cost_usd"] = 123.0.into();
    std::fs::write(&files[0], kept.to_string()).unwrap();
    let again = build(&lines);
    assert!(!first.reused && again.tuned().unwrap().reused);
    assert!(again.tuned().unwrap().to_string().ends_with("(kept from an earlier start on the same exemplars, prices and settings)"));
    assert_eq!(again.tuned().unwrap().cost_usd, 123.0, "the kept tuning was not read");
    assert_eq!(again.tuned().unwrap().point, first.point);
    // Another grade is another key: tuned afresh, beside the first file.
    let mut regraded = lines.clone();
    regraded[1] = regraded[1].replacen(r#""small":{"quality":1"#, r#""small":{"quality":0"#, 1);
    assert_ne!(regraded[1], lines[1]);
    assert_ne!(build(&regraded).tuned().unwrap().cost_usd, 123.0);
    assert_eq!(std::fs::read_dir(dir.path().join("tuned")).unwrap().count(), 2);
    // A reload tunes again on its data, reading a tuning back the same way: the same data's
    // (the changed figure), then the regraded data's (found by the build above).
    let prices = (*again.prices()).clone();
    again.reload(again.exemplars(), prices.clone()).unwrap();
    assert!(again.tuned().unwrap().reused && again.tuned().unwrap().cost_usd == 123.0);
    again.reload(ExemplarSet::from_jsonl_str(&regraded.join("\n"), "toy.jsonl").unwrap(), prices).unwrap();
    let t = again.tuned().unwrap();
    assert!(t.reused && t.cost_usd != 123.0, "{t}");
    assert_eq!(std::fs::read_dir(dir.path().join("tuned")).unwrap().count(), 2);
    // A damaged file is tuned again and replaced.
    std::fs::write(&files[0], b"{not json").unwrap();
    assert_eq!(build(&lines).tuned().unwrap(), first);
    assert!(serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&files[0]).unwrap()).is_ok());
}

/// A target's router routes every prompt to the one model that meets it alone, and says why; a
/// request naming models of its own is not overruled. A bar and a target together, hand labels
/// or a target out of range are refused.
#[test]
fn a_target_one_model_meets_alone_pins_the_router_to_it_and_bad_targets_are_refused() {
    use semroute::exemplar::ExemplarSet;
    use semroute::predict::Predictor;
    use semroute::target::{OperatingPoint, QualityTarget};
    use semroute::{Constraints, Router};
    // As in the benchmark's test above: every prompt looks alike to the embedder; `small` is
    // right on a pattern the prompts do not show ($0.01 a call), `twin` on all but three
    // ($0.05), `big` on all ($0.72). No knob of a one-neighbour router keeps 90%; `twin` does.
    let lines: Vec<String> = (0..200)
        .map(|i| {
            let small = if (i * 7) % 3 == 0 { 1.0 } else { 0.0 };
            let twin = if [3, 50, 97].contains(&i) { 0.0 } else { 1.0 };
            let r = |q: f64, usd: f64| format!(r#"{{"quality":{q},"output_tokens":9,"cost_usd":{usd}}}"#);
            format!(
                r#"{{"id":"s{i}","prompt":"aaa bbb {i}","category":"c","language":"en","results":{{"small":{},"twin":{},"big":{}}}}}"#,
                r(small, 0.01),
                r(twin, 0.05),
                r(1.0, 0.72)
            )
        })
        .collect();
    let set = ExemplarSet::from_jsonl_str(&lines.join("\n"), "s.jsonl").unwrap();
    let three = three_models();
    let prices = PriceTable::from_toml_str(&three, "three.toml").unwrap();
    let builder = || {
        Router::builder()
            .embedder(Arc::new(Letters))
            .exemplars(set.clone())
            .prices(prices.clone())
            .predictor(Predictor::Neighbours)
            .k(1)
            .min_similarity(-1.0)
            .no_cache()
    };
    let router = builder().quality_target(QualityTarget::keep(0.9)).build().unwrap();
    let tuned = router.tuned().unwrap();
    assert_eq!(tuned.point, OperatingPoint::Model("twin".into()), "{tuned}");
    // Its own prediction settings were set: only its bar was tuned.
    assert_eq!((tuned.candidates, tuned.candidate.as_str()), (1, "configured"), "{tuned}");
    assert_eq!(tuned.reference_model, "big");
    assert!((tuned.cost_usd - 0.05).abs() < 1e-12 && (tuned.quality - 197.0 / 200.0).abs() < 1e-12, "{tuned}");
    for prompt in ["aaa bbb 7", "bbb aaa"] {
        let d = router.route(prompt).unwrap();
        assert_eq!(d.model, "twin");
        assert!(d.reason.contains("twin alone keeps 90% of big's quality"), "{}", d.reason);
    }
    let d = router.route_with("aaa bbb", &Constraints::default().allow_models(["big"])).unwrap();
    assert_eq!(d.model, "big");
    assert!(!d.reason.contains("quality target"), "{}", d.reason);

    // A reload whose price table no longer has the pinned model routes by the bar instead of
    // refusing every request.
    let without_twin: Vec<String> = lines
        .iter()
        .map(|l| {
            l.replace(r#","twin":{"quality":1,"output_tokens":9,"cost_usd":0.05}"#, "")
                .replace(r#","twin":{"quality":0,"output_tokens":9,"cost_usd":0.05}"#, "")
        })
        .collect();
    assert!(without_twin.iter().all(|l| !l.contains("twin")));
    let two = ExemplarSet::from_jsonl_str(&without_twin.join("\n"), "two.jsonl").unwrap();
    router.reload(two.clone(), PriceTable::from_toml_str(common::TWO_MODELS, "two.toml").unwrap()).unwrap();
    let d = router.route("aaa bbb").unwrap();
    assert_eq!(d.model, "big");
    assert!(!d.reason.contains("quality target: twin"), "{}", d.reason);
    // The reload tuned the target again, on the new data: what it reports and what the
    // decisions say are the two models'.
    let retuned = router.tuned().unwrap();
    assert_eq!((retuned.reference_model.as_str(), retuned.exemplars), ("big", 200), "{retuned}");
    assert_ne!(retuned.point, OperatingPoint::Model("twin".into()), "{retuned}");
    assert!(retuned.quality >= 0.9 * retuned.reference_quality, "{retuned}");
    assert!(d.reason.contains("keep 90% of big's quality") || d.reason.contains("keeps 90% of big's quality"), "{}", d.reason);
    // Three models again, and a fourth priced that no exemplar measures: tuned as at build
    // (twin alone), the fourth left out and never routed to.
    let four = PriceTable::from_toml_str(
        &(three.clone()
            + "[models.cheapo]\nprovider = \"c\"\ninput_per_mtok = 0.01\noutput_per_mtok = 0.01\nsource = \"test\"\nas_of = \"2025\"\n"),
        "four.toml",
    )
    .unwrap();
    router.reload(set.clone(), four).unwrap();
    let back = router.tuned().unwrap();
    assert_eq!((&back.point, &back.models_left_out), (&tuned.point, &vec!["cheapo".to_string()]), "{back}");
    assert!(router.prices().get("cheapo").is_none());
    assert_eq!(router.route("aaa bbb 7").unwrap().model, "twin");

    // An exemplar that does not measure some model (a failed call in a graded workload) is set
    // aside from the tuning, which compares every model on the rest; the router still learns
    // from it.
    let mut partly: Vec<String> = lines.clone();
    partly[0] = without_twin[0].clone();
    let partly = ExemplarSet::from_jsonl_str(&partly.join("\n"), "partly.jsonl").unwrap();
    let router = Router::builder()
        .embedder(Arc::new(Letters))
        .exemplars(partly)
        .prices(prices.clone())
        .no_cache()
        .quality_target(QualityTarget::keep(0.9))
        .build()
        .unwrap();
    let tuned = router.tuned().unwrap();
    assert!(tuned.models_left_out.is_empty(), "{tuned}");
    assert_eq!((tuned.exemplars, tuned.exemplars_set_aside), (199, 1), "{tuned}");
    assert!(tuned.to_string().contains("1 exemplars set aside"), "{tuned}");
    // With the default settings, the benchmark's ten configurations under both knobs.
    assert_eq!(tuned.candidates, 20);
    assert!(router.prices().get("twin").is_some());
    assert_eq!(router.exemplars().len(), 200);
    // A model more than 5% of the exemplars do not measure is left out of a target's routing
    // instead, and said to be: 11 of 200.
    let mut sparse: Vec<String> = lines.clone();
    for i in (0..200).step_by(19) {
        sparse[i] = without_twin[i].clone();
    }
    let sparse = ExemplarSet::from_jsonl_str(&sparse.join("\n"), "sparse.jsonl").unwrap();
    let router = builder().exemplars(sparse).quality_target(QualityTarget::keep(0.9)).build().unwrap();
    let tuned = router.tuned().unwrap();
    assert_eq!(tuned.models_left_out, vec!["twin".to_string()], "{tuned}");
    assert_eq!((tuned.exemplars, tuned.exemplars_set_aside), (200, 0), "{tuned}");
    assert!(router.prices().get("twin").is_none());
    assert_ne!(router.route("aaa bbb").unwrap().model, "twin");

    // 90% of a named model's quality: twin's (197 of 200), for no more than twin costs (big
    // keeps it only at $0.72); twin is the safe model too.
    let router = builder().quality_target(QualityTarget::keep(0.9).of("twin")).build().unwrap();
    let tuned = router.tuned().unwrap();
    assert_eq!(tuned.reference_model, "twin", "{tuned}");
    assert!(tuned.quality >= 0.9 * tuned.reference_quality && tuned.cost_usd <= 0.05 + 1e-12, "{tuned}");
    assert!(tuned.to_string().starts_with("keep 90% of twin's quality"), "{tuned}");
    assert_eq!(router.settings().fallback_model, "twin");
    // A reload whose data the target cannot be tuned on (its reference gone) is refused, and the
    // router keeps its data and tuning.
    let msg = router.reload(two, PriceTable::from_toml_str(common::TWO_MODELS, "two.toml").unwrap()).unwrap_err().to_string();
    assert!(msg.contains("`twin` cannot be compared: the price table does not price it"), "{msg}");
    assert_eq!(router.tuned().unwrap(), tuned);
    assert_eq!((router.prices().len(), router.settings().fallback_model.as_str()), (3, "twin"));

    let err = |b: semroute::RouterBuilder| b.build().unwrap_err().to_string();
    let msg = err(builder().quality_target(QualityTarget::keep(0.9).of("nope")));
    assert!(msg.contains("`nope` cannot be compared: the price table does not price it"), "{msg}");
    let msg = err(builder().quality_bar(0.8).quality_target(QualityTarget::keep(0.9)));
    assert!(msg.contains("not both"), "{msg}");
    let msg = err(builder().quality_target(QualityTarget::keep(0.0)));
    assert!(msg.contains("(0, 1]"), "{msg}");
    let labelled = ExemplarSet::from_jsonl_str(
        r#"{"id":"l1","prompt":"aaa","category":"c","language":"en","label":{"tier":"cheap","reason":"r","output_tokens":9}}"#,
        "l.jsonl",
    )
    .unwrap();
    let msg = err(Router::builder().embedder(Arc::new(Letters)).exemplars(labelled).no_cache().quality_target(QualityTarget::keep(0.9)));
    assert!(msg.contains("measured") && msg.contains("`l1`"), "{msg}");
    let msg = err(builder().quality_target(QualityTarget::keep(0.9).folds(150)));
    assert!(msg.contains("at least 300 exemplars"), "{msg}");
}
