//! `semroute route`'s interface, which other tooling relies on (the `route` example is the same
//! code): run as a real process.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn run(args: &[&str], stdin: &[u8]) -> Output {
    run_with(common::semroute("route"), args, stdin)
}

fn run_with(mut cmd: Command, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object per line: {e}: {l}")))
        .collect()
}

#[test]
fn json_mode_prints_one_object_per_prompt() {
    let out = run(&["--json", "Reformat this JSON so it is indented: {\"a\":1}", "证明根号2是无理数。"], b"");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2);
    for d in &lines {
        for key in
            ["schema_version", "model", "provider", "expected_cost_usd", "predicted_quality", "neighbours", "fallback", "quality_from"]
        {
            assert!(d.get(key).is_some(), "missing {key} in {d}");
        }
    }
    assert_eq!(lines[0]["tier"], "cheap");
    assert_eq!(lines[0]["quality_from"], "kernel-ridge", "the default predictor on the built-in set");
}

#[test]
fn stdin_mode_routes_each_line_and_reports_bad_ones_in_place() {
    let mut input = b"Reformat this JSON so it is indented: {\"a\":1}\n\n".to_vec();
    input.extend_from_slice(b"bad \xff\xfe bytes\n");
    input.extend_from_slice("把这句话翻译成英文：我爱你。\r\n".as_bytes());
    let out = run(&["--json"], &input);
    assert_eq!(out.status.code(), Some(1), "a bad line makes the exit status 1");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3, "blank lines are skipped; the bad line gets an error object");
    assert_eq!(lines[0]["tier"], "cheap");
    assert_eq!(lines[1]["line"], 3);
    assert!(lines[1]["error"].as_str().unwrap().contains("not valid UTF-8"), "{}", lines[1]);
    // A routine request: a cheap model, or a mid one where the prediction is not sure enough.
    assert!(lines[2]["tier"] == "cheap" || lines[2]["tier"] == "mid", "{}", lines[2]);
}

#[test]
fn human_output_explains_and_options_apply() {
    let dir = tempfile::tempdir().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    std::fs::copy(format!("{root}/exemplars/starter.jsonl"), dir.path().join("mine.jsonl")).unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    let prices = format!("{root}/exemplars/prices.toml");
    let out = run(
        &[
            "--exemplars",
            dir_arg,
            "--prices",
            &prices,
            "-k",
            "3",
            "--quality-bar",
            "0.9",
            "Reformat this JSON so it is indented: {\"a\":1}",
        ],
        b"",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in ["why:", "nearest exemplars:", "candidates (cheapest first):", "← chosen", "saving against", "bar 0.90"] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert_eq!(text.lines().filter(|l| l.trim_start().starts_with("0.") && l.contains("w=")).count(), 3);
}

#[test]
fn bad_data_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("x.jsonl"), "{\"id\": 1}\n").unwrap();
    let out = run(&["--exemplars", dir.path().to_str().unwrap(), "hello"], b"");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("x.jsonl:1") && !err.contains("panicked"), "{err}");

    let out = run(&["--quality-bar", "7", "hello"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("quality_bar"));
}

#[test]
fn an_unknown_embedding_model_is_an_error_before_any_set_up_runs() {
    for name in ["no-such-model", "../../etc"] {
        let started = std::time::Instant::now();
        let out = run(&["--embedding-model", name, "hello"], b"");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: {err}");
        assert!(err.contains("installs only") && err.contains(name), "{name}: {err}");
        assert!(!err.contains("running"), "{name}: the set-up script ran: {err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
    }
}

#[test]
fn the_route_example_is_the_same_command() {
    let prompts = b"Reformat this JSON so it is indented: {\"a\":1}\n\xff\n";
    let example = run_with(Command::new(common::example_bin("route")), &["--json", "-k", "6"], prompts);
    let binary = run(&["--json", "-k", "6"], prompts);
    assert_eq!(example.status.code(), Some(1), "the second line is not UTF-8");
    assert_eq!(binary.status.code(), example.status.code());
    let (a, b) = (json_lines(&example), json_lines(&binary));
    assert_eq!(a.len(), 2);
    assert_eq!(a[0]["model"], b[0]["model"]);
    assert_eq!(a[0]["candidates"], b[0]["candidates"]);
    assert_eq!(a[1], b[1]);
}

#[test]
fn a_config_file_sets_the_router_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("semroute.toml");
    std::fs::write(&path, "[router]\nquality_bar = 0.9\nk = 5\n").unwrap();
    let config = path.to_str().unwrap();
    let prompt = "Reformat this JSON so it is indented: {\"a\":1}";
    let out = run(&["--json", "--config", config, prompt], b"");
    let d = &json_lines(&out)[0];
    assert_eq!(d["quality_bar"], 0.9);
    assert_eq!(d["neighbours"].as_array().unwrap().len(), 5);
    let out = run(&["--json", "--config", config, "--quality-bar", "0.6", prompt], b"");
    assert_eq!(json_lines(&out)[0]["quality_bar"], 0.6);

    // Every predictor can be named, in the file or by flag.
    std::fs::write(&path, "[router]\npredictor = \"ensemble\"\n").unwrap();
    let out = run(&["--json", "--config", config, prompt], b"");
    assert_eq!(json_lines(&out)[0]["quality_from"], "kernel-ridge+low-rank+neighbours", "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(&["--json", "--config", config, "--predictor", "low-rank", prompt], b"");
    assert_eq!(json_lines(&out)[0]["quality_from"], "low-rank");

    // The embedding model's threads and spinning change how fast, not what: the same decision
    // and the same predicted qualities as the defaults.
    std::fs::write(&path, "[router]\nembedding_threads = 1\nembedding_spinning = false\n").unwrap();
    let plain = json_lines(&run(&["--json", prompt], b""))[0].clone();
    let out = run(&["--json", "--config", config, prompt], b"");
    let quiet = &json_lines(&out)[0];
    assert_eq!(quiet["model"], plain["model"], "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(quiet["candidates"], plain["candidates"]);
    assert_eq!(quiet["neighbours"], plain["neighbours"]);

    std::fs::write(&path, "[router]\nk = 5\nquality_bar = \"high\"\n").unwrap();
    let out = run(&["--json", "--config", config, prompt], b"");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("semroute.toml:3: invalid setting (key `router.quality_bar`)"), "{err}");
}

#[test]
fn leave_one_out_prints_one_outcome_per_labelled_exemplar_in_json() {
    // Twelve built-in exemplars as a set of their own: each is routed by a router built on the
    // other eleven.
    let starter = include_str!("../exemplars/starter.jsonl");
    let lines: Vec<&str> = starter.lines().filter(|l| !l.trim().is_empty()).take(12).collect();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("set.jsonl"), lines.join("\n")).unwrap();
    let out = run_with(common::semroute("eval loo"), &["--exemplars", dir.path().to_str().unwrap(), "--json"], b"");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let outcomes = json_lines(&out);
    assert_eq!(outcomes.len(), 12);
    for (o, line) in outcomes.iter().zip(&lines) {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(o["id"], e["id"]);
        assert_eq!(o["label"], e["label"]["tier"]);
        assert!(["cheap", "mid", "strong"].contains(&o["routed"].as_str().unwrap()), "{o}");
        assert!(o["tier_quality"]["cheap"].as_f64().is_some_and(|q| (0.0..=1.0).contains(&q)), "{o}");
    }
}

/// `--keep 90%` tunes the bar on measured exemplars (the committed CRUXEval fixture, its
/// 200 prompts as exemplars) and says what it found; `--keep` with `--quality-bar`, or out of
/// range, is refused before anything is built.
#[test]
fn keep_tunes_the_bar_on_measured_exemplars_and_says_so() {
    let root = env!("CARGO_MANIFEST_DIR");
    let data = std::fs::read_to_string(format!("{root}/tests/fixtures/routing/crux-small.jsonl")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = data
        .lines()
        .map(|l| {
            let r: serde_json::Value = serde_json::from_str(l).unwrap();
            let results: serde_json::Map<String, serde_json::Value> = r["scores"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(m, q)| {
                    (m.clone(), serde_json::json!({"quality": q, "output_tokens": r["output_tokens"][m].as_u64().unwrap_or(100)}))
                })
                .collect();
            serde_json::json!({"id": r["id"], "prompt": r["prompt"], "category": "code", "language": "en", "results": results}).to_string()
        })
        .collect();
    std::fs::write(dir.path().join("measured.jsonl"), lines.join("\n")).unwrap();
    let exemplars = dir.path().join("measured.jsonl");
    let prices = format!("{root}/tests/fixtures/routing/prices-crux-small.toml");
    let base = ["--exemplars", exemplars.to_str().unwrap(), "--prices", prices.as_str()];
    let out = run(&[&base[..], &["--keep", "90%", "--json", "def f(x): return x * 2\nassert f(3) == ??"]].concat(), b"");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("keep 90% of") && stderr.contains("out of fold on 200 exemplars (5 folds, 20 candidates)"), "{stderr}");
    let d = &json_lines(&out)[0];
    assert!(d["reason"].as_str().unwrap().contains("quality target"), "{d}");

    // A share of a named model's quality: 90% of GPT-4o's (0.82 on these prompts, o1-preview's
    // 0.95), which is also the safe model.
    let out = run(&[&base[..], &["--keep", "90%", "--of", "gpt-4o-2024-08-06", "--json", "x"]].concat(), b"");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("keep 90% of gpt-4o-2024-08-06's quality"), "{stderr}");
    let out = run(&[&base[..], &["--keep", "90%", "--of", "gpt-5", "x"]].concat(), b"");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("`gpt-5` cannot be compared"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(&[&base[..], &["--of", "gpt-4o-2024-08-06", "x"]].concat(), b"");
    assert_eq!(out.status.code(), Some(2));

    let out = run(&[&base[..], &["--keep", "0.9", "--quality-bar", "0.5", "x"]].concat(), b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not both"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(&[&base[..], &["--keep", "120%", "x"]].concat(), b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a share in (0, 1]"), "{}", String::from_utf8_lossy(&out.stderr));
}
