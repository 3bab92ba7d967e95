//! The savings benchmark: dataset handling, metrics, and the `savings` example on a real
//! two-model dataset from ../shared/data (MT-Bench, 80 prompts).

mod common;

use std::path::PathBuf;
use std::process::Command;

use semroute::eval::{apgr, cpt, CurvePoint, Dataset};

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
fn savings_example_reports_the_metrics_on_the_test_split() {
    let bin = common::example_bin("savings");
    let run = || {
        let out = Command::new(&bin)
            .args(["--dataset", shared("routellm-mtbench.jsonl").to_str().unwrap()])
            .args(["--prices", concat!(env!("CARGO_MANIFEST_DIR"), "/exemplars/benchmarks/prices-routellm.toml")])
            .args(["--train-fraction", "0.7", "--seed", "42", "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        serde_json::from_str::<serde_json::Value>(text.lines().last().unwrap()).unwrap()
    };
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
