//! Live learning, hot reload and the feedback log, with the real embedding model.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use semroute::exemplar::{Exemplar, Grade, ModelResult};
use semroute::feedback::Feedback;
use semroute::{Constraints, ExemplarSet, PriceTable, Router};

fn router_with(dir: &std::path::Path, log: Option<&std::path::Path>) -> Router {
    let mut b = Router::builder().embedder(common::embedder()).cache_dir(dir.join("cache"));
    if let Some(log) = log {
        b = b.feedback_log(log);
    }
    b.build().unwrap_or_else(|e| panic!("{e}"))
}

/// The built-in table with every price multiplied by `factor`.
fn scaled_prices(factor: f64) -> PriceTable {
    let base = PriceTable::builtin().unwrap();
    PriceTable::from_models(base.iter().map(|(name, p)| {
        let mut p = p.clone();
        p.input_per_mtok *= factor;
        p.output_per_mtok *= factor;
        p.cached_input_per_mtok = p.cached_input_per_mtok.map(|c| c * factor);
        (name.to_string(), p)
    }))
    .unwrap()
}

#[test]
fn reloads_under_load_drop_no_route_and_never_mix_generations() {
    let dir = tempfile::tempdir().unwrap();
    let router = router_with(dir.path(), None);
    let exemplars = router.exemplars();
    let (cheap, dear) = (scaled_prices(1.0), scaled_prices(3.0));
    let prompts = [
        "Reformat this JSON so it is indented: {\"a\":1,\"b\":[1,2]}",
        "把这句话翻译成英文：我们下周一开会讨论预算。",
        "Prove that there are infinitely many primes, rigorously.",
        "Design a multi-region active-active payments ledger with exactly-once semantics.",
        "Write a SQL query that counts orders per customer in 2024.",
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for t in 0..3 {
        let (router, stop, served, failed) = (router.clone(), stop.clone(), served.clone(), failed.clone());
        let (cheap, dear) = (cheap.clone(), dear.clone());
        workers.push(std::thread::spawn(move || {
            let mut i = t;
            while !stop.load(Ordering::SeqCst) {
                let prompt = prompts[i % prompts.len()];
                i += 1;
                match router.route_with(prompt, &Constraints::default()) {
                    Ok(d) => {
                        // Every candidate's cost must come from one table: one generation per decision.
                        let from = |table: &PriceTable| {
                            d.candidates.iter().all(|c| {
                                let want = table.get(&c.model).unwrap().cost_usd(d.input_tokens, c.predicted_output_tokens);
                                (want - c.expected_cost_usd).abs() <= 1e-12 * want.max(1.0)
                            })
                        };
                        if !(from(&cheap) || from(&dear)) {
                            failed.lock().unwrap().push(format!("mixed generations in {d:?}"));
                        }
                        served.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => failed.lock().unwrap().push(e.to_string()),
                }
            }
        }));
    }
    let started = Instant::now();
    let (mut reloads, mut refused) = (0, 0);
    let mut served_during = Vec::new();
    for i in 0..60 {
        let before = served.load(Ordering::SeqCst);
        let prices = if i % 2 == 0 { dear.clone() } else { cheap.clone() };
        router.reload(exemplars.clone(), prices).unwrap_or_else(|e| panic!("reload {i}: {e}"));
        reloads += 1;
        if i % 10 == 5 {
            // A bad reload: measured results for a model the table lacks. Refused, old state kept.
            let mut results = std::collections::BTreeMap::new();
            results.insert("no-such-model".to_string(), ModelResult::new(1.0, 5));
            let bad = exemplars
                .with_added(vec![Exemplar::new("bad-1", "x", Grade::Measured { results }).with_category("c")], "bad.jsonl")
                .unwrap();
            let e = router.reload(bad, cheap.clone()).unwrap_err().to_string();
            assert!(e.contains("no-such-model") && e.contains("bad.jsonl"), "{e}");
            refused += 1;
            let e = router.reload(ExemplarSet::from_exemplars(Vec::new()).unwrap(), dear.clone()).unwrap_err().to_string();
            assert!(e.contains("empty"), "{e}");
            refused += 1;
        }
        std::thread::sleep(Duration::from_millis(30));
        served_during.push(served.load(Ordering::SeqCst) - before);
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }
    let failed = failed.lock().unwrap();
    let total = served.load(Ordering::SeqCst);
    println!(
        "{reloads} reloads and {refused} refused reloads in {:.1} s; {total} routes served, {} failed",
        started.elapsed().as_secs_f64(),
        failed.len()
    );
    assert!(failed.is_empty(), "{} failed routes, first: {}", failed.len(), failed[0]);
    assert!(reloads >= 50);
    assert!(total >= 60, "routing must go on during the reloads: {total} routes");
    assert!(served_during.iter().filter(|&&n| n > 0).count() >= 30, "routes served between reloads: {served_during:?}");
    // The last reload (i = 59, odd) put the cheap table in force.
    let s = cheap.strongest();
    assert_eq!(router.prices().get(s).unwrap().output_per_mtok, cheap.get(s).unwrap().output_per_mtok);
}

#[test]
fn learned_feedback_steers_later_decisions_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("feedback.jsonl");
    let router = router_with(dir.path(), Some(&log));
    let prompt = "Compute the quarterly VAT return for our Lisbon bakery from these 412 receipts, applying the reduced rates correctly.";
    let before = router.route(prompt).unwrap();
    assert!(!before.neighbours.iter().any(|n| n.id.starts_with("feedback:")));
    let n0 = router.exemplars().len();

    // The cheapest model got it wrong, twice; the strongest got it right.
    let prices = router.prices();
    let cheapest = prices.iter().min_by(|a, b| a.1.output_per_mtok.total_cmp(&b.1.output_per_mtok)).unwrap().0.to_string();
    let strongest = prices.strongest().to_string();
    router.learn(&Feedback::new("r1", prompt, &cheapest, 0.0, 300)).unwrap();
    router.learn(&Feedback::new("r2", prompt, &cheapest, 0.0, 310)).unwrap();
    router.learn(&Feedback::new("r3", prompt, &strongest, 1.0, 280)).unwrap();
    // The neighbours see it at once; the quality model is refitted in the background.
    let at_once = router.route(prompt).unwrap();
    let top: Vec<&str> = at_once.neighbours.iter().take(3).map(|n| n.id.as_str()).collect();
    assert!(top.iter().all(|id| id.starts_with("feedback:")), "{top:?}");
    // And the quality model's prediction is updated by these copies of the prompt before any refit.
    let c = at_once.candidates.iter().find(|c| c.model == cheapest).unwrap();
    assert!(c.predicted_quality.unwrap() < 0.5 && !c.clears_bar, "{c:?}");
    assert_ne!(at_once.model, cheapest);
    router.refit();
    let after = router.route(prompt).unwrap();
    assert_eq!(router.exemplars().len(), n0 + 3);
    assert!(after.neighbours[0].similarity > 0.99);
    // Once refitted, the router decides exactly as one built with the feedback from the start.
    let fresh = router_with(dir.path(), Some(&log));
    let replayed = fresh.route(prompt).unwrap();
    assert_eq!(replayed.model, after.model);
    for (a, b) in after.candidates.iter().zip(&replayed.candidates) {
        assert!((a.predicted_quality.unwrap_or(-1.0) - b.predicted_quality.unwrap_or(-1.0)).abs() < 1e-9, "{a:?} vs {b:?}");
    }
    let c = after.candidates.iter().find(|c| c.model == cheapest).unwrap();
    assert!(c.predicted_quality.unwrap() < 0.3 && !c.clears_bar, "{c:?}");
    assert_ne!(after.model, cheapest);

    // Bad feedback is refused, and nothing reaches the log.
    for (fb, want) in [
        (Feedback::new("r1", prompt, &cheapest, 1.0, 5), "duplicate id"),
        (Feedback::new("r4", prompt, "no-such-model", 1.0, 5), "no-such-model"),
        (Feedback::new("r5", prompt, &cheapest, 1.5, 5), "quality"),
        (Feedback::new("r6", " ", &cheapest, 1.0, 5), "prompt"),
    ] {
        let e = router.learn(&fb).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 3);

    // A reload keeps what was learned.
    router.reload(ExemplarSet::builtin().unwrap(), PriceTable::builtin().unwrap()).unwrap();
    assert_eq!(router.exemplars().len(), n0 + 3);

    // A crash mid-write leaves a torn line; a new router replays the rest and cuts it.
    drop(router);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"id\":\"r9\",\"pro"))
        .unwrap();
    let again = router_with(dir.path(), Some(&log));
    assert_eq!(again.exemplars().len(), n0 + 3);
    assert_eq!(again.route(prompt).unwrap().model, after.model);
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 3);

    // A damaged line before the end stops the start, naming the file and line.
    let text = std::fs::read_to_string(&log).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[1] = "{not json";
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    // A start that must fail: the log's error, as text.
    let start_error = || {
        Router::builder()
            .embedder(common::embedder())
            .cache_dir(dir.path().join("cache"))
            .feedback_log(&log)
            .build()
            .unwrap_err()
            .to_string()
    };
    let e = start_error();
    assert!(e.contains("feedback.jsonl:2"), "{e}");

    // So does a damaged last line that is complete: it ends in its newline, so it was written
    // whole (and maybe acknowledged), not torn by a crash. Nothing is cut.
    let good: Vec<&str> = text.lines().collect();
    let damaged = format!("{}\n{}\n{}\n", good[0], good[1], &good[2][..good[2].len() / 2]);
    std::fs::write(&log, &damaged).unwrap();
    let e = start_error();
    assert!(e.contains("feedback.jsonl:3"), "{e}");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), damaged);
}

#[test]
fn many_added_exemplars_are_found_before_and_after_the_graph_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let router = router_with(dir.path(), None);
    let n0 = router.exemplars().len();
    let model = router.prices().strongest().to_string();
    let make = |i: usize| {
        let mut results = std::collections::BTreeMap::new();
        results.insert(model.clone(), ModelResult::new(1.0, 50));
        Exemplar::new(
            format!("added-{i}"),
            format!("Inventory note {i}: reorder part number ZX-{} for warehouse {}", i * 7919 % 10007, i % 13),
            Grade::Measured { results },
        )
        .with_category("inventory")
    };
    // Enough to pass the rebuild threshold (256 scanned vectors) in a few batches.
    for batch in 0..3 {
        let items: Vec<Exemplar> = (batch * 100..batch * 100 + 100).map(make).collect();
        router.add_exemplars(items).unwrap();
        let probe = make(batch * 100 + 42);
        let d = router.route(&probe.prompt).unwrap();
        assert_eq!(d.neighbours[0].id, probe.id, "batch {batch}");
    }
    assert_eq!(router.exemplars().len(), n0 + 300);
    // Adding an id twice is refused whole.
    let e = router.add_exemplars(vec![make(300), make(5)]).unwrap_err().to_string();
    assert!(e.contains("added-5"), "{e}");
    assert_eq!(router.exemplars().len(), n0 + 300);
}

/// Counts of four letters: a toy embedder whose calls of more than one text wait at `gate` while
/// it is shut, saying so on `waiting`.
struct Gated {
    gate: Arc<(Mutex<bool>, std::sync::Condvar)>,
    waiting: Mutex<std::sync::mpsc::Sender<()>>,
}

impl semroute::Embedder for Gated {
    fn model_id(&self) -> &str {
        "gated-letters-test"
    }
    fn dim(&self) -> usize {
        4
    }
    fn embed_batch(&self, texts: &[&str]) -> semroute::Result<Vec<Vec<f32>>> {
        if texts.len() > 1 {
            let (shut, opened) = &*self.gate;
            let mut shut = shut.lock().unwrap();
            if *shut {
                let _ = self.waiting.lock().unwrap().send(());
            }
            while *shut {
                shut = opened.wait(shut).unwrap();
            }
        }
        Ok(texts
            .iter()
            .map(|t| {
                let v: Vec<f32> = ['a', 'b', 'c', 'd'].iter().map(|l| 1.0 + t.matches(*l).count() as f32).collect();
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.into_iter().map(|x| x / norm).collect()
            })
            .collect())
    }
}

/// Feedback given while a reload is building its data (embedding them, here held up) is learned
/// at once, not after the reload, and the reload keeps it.
#[test]
fn learning_goes_on_while_a_reload_builds_and_the_reload_keeps_it() {
    let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let (tx, waiting) = std::sync::mpsc::channel();
    let embedder = Arc::new(Gated { gate: gate.clone(), waiting: Mutex::new(tx) });
    let set = |tag: &str| {
        let lines: Vec<String> = (0..40)
            .map(|i| {
                format!(
                    r#"{{"id":"{tag}{i}","prompt":"{} {tag}","results":{{"small":{{"quality":{},"output_tokens":9}},"big":{{"quality":1,"output_tokens":9}}}}}}"#,
                    ["aa", "bb", "cc", "dd"][i % 4].repeat(1 + i % 5),
                    i % 2
                )
            })
            .collect();
        ExemplarSet::from_jsonl_str(&lines.join("\n"), "toy.jsonl").unwrap()
    };
    let prices = PriceTable::from_toml_str(common::TWO_MODELS, "two.toml").unwrap();
    let router = Router::builder().embedder(embedder).exemplars(set("a")).prices(prices.clone()).no_cache().build().unwrap();
    *gate.0.lock().unwrap() = true;
    let reloading = {
        let router = router.clone();
        std::thread::spawn(move || router.reload(set("b"), prices))
    };
    waiting.recv_timeout(Duration::from_secs(30)).expect("the reload reached the embedder");
    let (done, learned) = std::sync::mpsc::channel();
    {
        let router = router.clone();
        std::thread::spawn(move || {
            let _ = done.send(router.learn(&Feedback::new("fb-during", "dddd during", "small", 1.0, 9)));
        });
    }
    let result = learned.recv_timeout(Duration::from_secs(30));
    // Open the gate whatever happened, so that nothing is left waiting.
    *gate.0.lock().unwrap() = false;
    gate.1.notify_all();
    result.expect("learning waited for the reload").unwrap();
    reloading.join().unwrap().unwrap();
    let ids: Vec<String> = router.exemplars().iter().map(|e| e.id.clone()).collect();
    assert!(
        ids.contains(&"feedback:fb-during".to_string()) && ids.contains(&"b0".to_string()) && !ids.contains(&"a0".to_string()),
        "{ids:?}"
    );
}

/// A router that reloads ever new exemplars keeps its vector cache to its budget: the files of
/// the exemplars it routes on stay, the older sets' go, and files that are not the cache's own
/// stay whatever the budget.
#[test]
fn reloads_keep_the_vector_cache_to_its_budget() {
    let set = |tag: &str| {
        let lines: Vec<String> = (0..40)
            .map(|i| {
                format!(
                    r#"{{"id":"{tag}{i}","prompt":"Question {i} about {tag}","results":{{"small":{{"quality":{},"output_tokens":9}},"big":{{"quality":1,"output_tokens":9}}}}}}"#,
                    i % 2
                )
            })
            .collect();
        ExemplarSet::from_jsonl_str(&lines.join("\n"), "toy.jsonl").unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::write(cache.join("notes.txt"), "mine").unwrap();
    let own = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&cache)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".vec") || n.ends_with(".hnsw"))
            .collect();
        names.sort();
        names
    };
    let prices = PriceTable::from_toml_str(common::TWO_MODELS, "two.toml").unwrap();
    let router = Router::builder()
        .embedder(common::embedder())
        .exemplars(set("apples"))
        .prices(prices.clone())
        .cache_dir(&cache)
        .cache_budget(1)
        .build()
        .unwrap();
    let first = own();
    assert!(!first.is_empty(), "the vectors were cached");
    for tag in ["pears", "plums"] {
        router.reload(set(tag), prices.clone()).unwrap();
        let now = own();
        assert!(!now.is_empty() && now.iter().all(|n| !first.contains(n)), "{first:?} then {now:?}");
        assert_eq!(now.len(), first.len(), "one set's files at a time: {now:?}");
    }
    assert!(cache.join("notes.txt").exists());
    // With room for them, the sets' files accumulate (the default budget is 1 GiB): plums',
    // then apples' and pears' again.
    let roomy =
        Router::builder().embedder(common::embedder()).exemplars(set("apples")).prices(prices.clone()).cache_dir(&cache).build().unwrap();
    roomy.reload(set("pears"), prices).unwrap();
    assert_eq!(own().len(), 3 * first.len(), "{:?}", own());
}
