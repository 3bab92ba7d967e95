//! The savings benchmark: dataset handling, metrics, and the `savings` example on a real
//! two-model dataset from ../shared/data (MT-Bench, 80 prompts).

mod common;

use std::path::PathBuf;
use std::process::Command;

use semroute::eval::{aiq, apgr, cpt, nondecreasing_hull, CurvePoint, Dataset};

/// The shared datasets: `$SEMROUTE_DATA`, else `../shared/data` beside the checkout (where CI
/// and the developers' machines have them).
fn shared(file: &str) -> PathBuf {
    let dir = std::env::var_os("SEMROUTE_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    let path = dir.join(file);
    assert!(path.is_file(), "{} is missing: set SEMROUTE_DATA to the folder of the shared datasets", path.display());
    path
}

#[test]
fn split_is_deterministic_disjoint_and_complete() {
    let data = Dataset::load(shared("routellm-mtbench.jsonl")).unwrap();
    let (a_train, a_test) = data.split(0.7, 42);
    let (b_train, b_test) = data.split(0.7, 42);
    assert_eq!(a_train.iter().map(|r| &r.id).collect::<Vec<_>>(), b_train.iter().map(|r| &r.id).collect::<Vec<_>>());
    assert_eq!(a_test.len(), b_test.len());
    assert_eq!(a_train.len() + a_test.len(), data.records.len());
    assert_eq!(a_train.len(), 56);
    assert!(a_test.iter().all(|t| a_train.iter().all(|r| r.id != t.id)));
    let (c_train, _) = data.split(0.7, 43);
    assert_ne!(a_train.iter().map(|r| &r.id).collect::<Vec<_>>(), c_train.iter().map(|r| &r.id).collect::<Vec<_>>());
}

#[test]
fn bad_dataset_line_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.jsonl");
    std::fs::write(&path, "{\"id\":\"a\",\"prompt\":\"p\",\"scores\":{\"m\":0.5}}\n{\"id\":\"b\",\"prompt\":\"p\",\"scores\":{\"m\":3}}\n").unwrap();
    let msg = Dataset::load(&path).unwrap_err().to_string();
    assert!(msg.contains("d.jsonl:2") && msg.contains("outside [0, 1]"), "{msg}");
}

#[test]
fn metrics_of_perfect_and_useless_routers() {
    let (weak, strong) = (0.6, 0.9);
    // Recovers the whole gap with 20% strong calls, then stays there.
    let perfect = [
        CurvePoint { strong_share: 0.2, quality: 0.9, cost_usd: 2.0 },
        CurvePoint { strong_share: 1.0, quality: 0.9, cost_usd: 10.0 },
    ];
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

fn savings(dataset: &std::path::Path, prices: &str, extra: &[&str]) -> serde_json::Value {
    let out = Command::new(common::example_bin("savings"))
        .args(["--dataset", dataset.to_str().unwrap()])
        .args(["--prices", &format!("{}/exemplars/benchmarks/{prices}", env!("CARGO_MANIFEST_DIR"))])
        .args(["--train-fraction", "0.7", "--seed", "42", "--json"])
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str::<serde_json::Value>(text.lines().last().unwrap()).unwrap()
}

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn savings_example_reports_the_metrics_on_the_test_split() {
    let mtbench = shared("routellm-mtbench.jsonl");
    let run = || savings(&mtbench, "prices-routellm.toml", &[]);
    let r = run();
    for key in ["apgr", "cpt50", "cpt80", "cost_usd", "quality", "strong_share", "always_strong", "always_cheap", "random", "oracle"] {
        assert!(r.get(key).is_some(), "missing {key}");
    }
    assert_eq!(r["split"]["test"], 24);
    let apgr = r["apgr"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&apgr), "{apgr}");
    let strong = &r["always_strong"];
    assert!(r["quality"].as_f64().unwrap() >= 0.95 * strong["quality"].as_f64().unwrap() - 1e-9);
    assert!(r["cost_usd"].as_f64().unwrap() <= strong["cost_usd"].as_f64().unwrap());
    assert!(r["oracle"]["quality"].as_f64().unwrap() >= strong["quality"].as_f64().unwrap());
    // Same seed, same figures.
    assert_eq!(run()["apgr"], r["apgr"]);
}

#[test]
fn router_never_sees_test_scores() {
    // Invert every test prompt's scores: the router's choices (so its costs and strong-call
    // shares along the whole curve) must not change; only the qualities they earn may.
    let data = Dataset::load(shared("routellm-mtbench.jsonl")).unwrap();
    let (_, test) = data.split(0.7, 42);
    let test_ids: Vec<&str> = test.iter().map(|r| r.id.as_str()).collect();
    let text = std::fs::read_to_string(shared("routellm-mtbench.jsonl")).unwrap();
    let mut lines = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        if test_ids.contains(&v["id"].as_str().unwrap()) {
            for q in v["scores"].as_object_mut().unwrap().values_mut() {
                *q = serde_json::json!(1.0 - f(q));
            }
        }
        lines.push(v.to_string());
    }
    let dir = tempfile::tempdir().unwrap();
    let flipped = dir.path().join("flipped.jsonl");
    std::fs::write(&flipped, lines.join("\n")).unwrap();
    let a = savings(&shared("routellm-mtbench.jsonl"), "prices-routellm.toml", &[]);
    let b = savings(&flipped, "prices-routellm.toml", &[]);
    let shape = |r: &serde_json::Value| -> Vec<(String, String)> {
        r["curve"].as_array().unwrap().iter().map(|p| (format!("{:.9}", f(&p[0])), format!("{:.6}", f(&p[2])))).collect()
    };
    assert_eq!(shape(&a), shape(&b));
    assert_ne!(a["quality"], b["quality"]);
}

#[test]
fn many_model_metrics_and_plot() {
    // 800 prompts, 49 models, routed between those not dominated on the train split.
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("crux.png");
    let r = savings(&shared("zeroeval-crux.jsonl"), "prices-2024.toml", &["--plot", png.to_str().unwrap()]);
    for key in ["aiq", "best_model", "best_quality", "cost_at_95", "best_model_cost", "saving_at_95"] {
        assert!(r.get(key).is_some(), "router: missing {key}");
        assert!(r["oracle"].get(key).is_some(), "oracle: missing {key}");
    }
    assert_eq!(r["models"].as_array().unwrap().len(), 49);
    assert!(r["routed_between"].as_array().unwrap().len() < 49);
    assert_eq!(r["best_model"], r["strong_model"]);
    let (router, oracle, zero) = (f(&r["aiq"]), f(&r["oracle"]["aiq"]), f(&r["zero_router_aiq"]));
    assert!(oracle >= router && oracle >= zero && (0.0..=1.0).contains(&router), "{router} {oracle} {zero}");
    // The oracle reaches 95% of the best model far cheaper than the model itself.
    assert!(f(&r["oracle"]["saving_at_95"]) > 0.5);
    // Each single model's figures are there, cheapest first.
    let single = r["single_models"].as_array().unwrap();
    assert_eq!(single.len(), 49);
    assert!(single.windows(2).all(|w| f(&w[0]["cost_usd"]) <= f(&w[1]["cost_usd"])));
    // A real PNG.
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 20_000, "{} bytes", bytes.len());
}
