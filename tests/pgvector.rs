//! The shared PostgreSQL + pgvector exemplar store (`--features pgvector`), against a real
//! server on loopback: `.ci/run` starts one and sets `SEMROUTE_PG_URL`; without it, the first
//! test starts one with `src/setup/pgvector.sh` (which stops it when this test binary ends).
#![cfg(feature = "pgvector")]

mod common;
#[path = "common/fake_llm.rs"]
mod fake_llm;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use semroute::exemplar::{Exemplar, Grade, ModelResult};
use semroute::feedback::Feedback;
use semroute::index::{ExactIndex, HnswIndex, NeighbourIndex};
use semroute::predict::{Predictor, RidgeSettings};
use semroute::session::SessionStore;
use semroute::store::{ExemplarStore, PgStore};
use semroute::{ExemplarSet, Router};

fn url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("SEMROUTE_PG_URL") {
            return url;
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/src/setup/pgvector.sh");
        let out = std::process::Command::new("bash")
            .args([script, "start", "--until-exit", &std::process::id().to_string()])
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("run bash");
        assert!(out.status.success(), "{script} start failed (its message is above)");
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim().strip_prefix("export SEMROUTE_PG_URL=").unwrap_or_else(|| panic!("unexpected output from {script}: {text}")).to_string()
    })
    .clone()
}

/// A store on a table of its own, dropped at the end of the test.
struct Table(Arc<PgStore>);

impl Table {
    fn new(name: &str) -> Table {
        let table = format!("t{}_{name}", std::process::id());
        let store = PgStore::builder(url()).table(&table).pool_size(4).build().unwrap_or_else(|e| panic!("{e}"));
        store.drop_table().unwrap();
        Table(Arc::new(store))
    }
    /// Another connection pool on the same table: what a second router process would open.
    fn reopen(&self) -> Arc<PgStore> {
        Arc::new(PgStore::builder(url()).table(self.0.table()).pool_size(4).build().unwrap())
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        let _ = self.0.drop_table();
    }
}

fn measured(id: &str, prompt: &str, cheap_quality: f64) -> Exemplar {
    let results =
        [("kimi-k2.6".to_string(), ModelResult::new(cheap_quality, 200)), ("claude-sonnet-5-5".to_string(), ModelResult::new(1.0, 200))];
    Exemplar::new(id, prompt, Grade::Measured { results: results.into() }).with_category("test").with_source("written for this test")
}

#[test]
fn routers_on_one_store_see_each_others_exemplars_and_agree_with_the_in_process_index() {
    let table = Table::new("share");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("feedback.jsonl");
    let a =
        Router::builder().embedder(common::embedder()).store(table.0.clone()).feedback_log(&log).build().unwrap_or_else(|e| panic!("{e}"));
    let builtin = ExemplarSet::builtin().unwrap();
    assert_eq!(table.0.count().unwrap(), builtin.len(), "the first router writes the built-in exemplars");
    // A second "process": its own pool, finds them there (nothing written twice).
    let b = Router::builder().embedder(common::embedder()).store(table.reopen()).build().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(table.0.count().unwrap(), builtin.len());
    assert_eq!(b.exemplars().len(), builtin.len());

    // The same decisions as the in-process index, on the built-in exemplars' own prompts (each
    // finds itself first) and on new prompts. A store router predicts from the neighbours, so the
    // in-process one here does too.
    let local =
        Router::builder().embedder(common::embedder()).predictor(Predictor::Neighbours).cache_dir(common::vector_cache()).build().unwrap();
    let mut prompts: Vec<String> = builtin.iter().map(|e| e.prompt.clone()).collect();
    prompts.extend(
        [
            "Reformat this JSON so it is indented: {\"a\":1}",
            "把这句话翻译成英文：我们下周一开会讨论预算。",
            "Prove rigorously that the square root of 2 is irrational.",
            "Design a globally replicated rate limiter for 10M requests per second.",
            "Classify this review as positive or negative: 'the battery died in a day'",
        ]
        .map(String::from),
    );
    let mut same_model = 0;
    for p in &prompts {
        let (d_local, d_shared) = (local.route(p).unwrap(), b.route(p).unwrap());
        let ids = |d: &semroute::RouteDecision| d.neighbours.iter().map(|n| n.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&d_shared)[0], ids(&d_local)[0], "nearest exemplar for {p:?}");
        assert!((d_shared.neighbours[0].similarity - d_local.neighbours[0].similarity).abs() < 1e-4);
        same_model += usize::from(d_local.model == d_shared.model);
    }
    assert!(same_model * 100 >= prompts.len() * 95, "only {same_model}/{} decisions agree", prompts.len());

    // What one router adds, the other uses at its next decision.
    let prompt = "Zorblat the quenching frimble of the seventh vantablack octahedron, step by step.";
    a.add_exemplars(vec![measured("added-by-a", prompt, 0.0)]).unwrap();
    let d = b.route(prompt).unwrap();
    assert_eq!(d.neighbours[0].id, "added-by-a");
    assert!(d.neighbours[0].similarity > 0.99);
    // An id the store holds is refused, whichever router tries.
    let err = b.add_exemplars(vec![measured("added-by-a", "something else", 1.0)]).unwrap_err().to_string();
    assert!(err.contains("added-by-a"), "{err}");

    // Feedback learned by one router steers the other.
    let formatting = "Reformat this YAML list as a JSON array: [apples, pears, plums]";
    let before = b.route(formatting).unwrap();
    for i in 0..3 {
        a.learn(&Feedback::new(format!("bad-{i}"), formatting, &before.model, 0.0, 60)).unwrap();
    }
    let after = b.route(formatting).unwrap();
    assert!(after.neighbours.iter().any(|n| n.id.starts_with("feedback:bad-")), "{:?}", after.neighbours);
    assert_ne!(after.model, before.model, "three bad answers from {} learned by another router", before.model);

    // Another process (this test binary, run again as `another_process_adds_an_exemplar`)
    // adds an exemplar; this process's routers use it at their next decision.
    let other = "Frobnicate the eleventh quaternion lattice of the Vogon poetry corpus, in haiku form.";
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "another_process_adds_an_exemplar", "--ignored", "--nocapture", "--test-threads", "1"])
        .env("SEMROUTE_PG_URL", url())
        .env("SEMROUTE_TEST_CHILD_TABLE", table.0.table())
        .env("SEMROUTE_TEST_CHILD_PROMPT", other)
        .status()
        .expect("run this test binary again");
    assert!(status.success());
    for router in [&a, &b] {
        let d = router.route(other).unwrap();
        assert_eq!(d.neighbours[0].id, "added-by-another-process");
        assert!(d.neighbours[0].similarity > 0.99);
    }

    // A restart replays the feedback log into a store that has it already: nothing doubles.
    let n = table.0.count().unwrap();
    let c =
        Router::builder().embedder(common::embedder()).store(table.reopen()).feedback_log(&log).build().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(table.0.count().unwrap(), n);
    assert_eq!(c.route(formatting).unwrap().model, after.model);
}

/// The other process of the test above, which runs it (it needs the table and prompt it is given).
#[test]
#[ignore = "the second process of routers_on_one_store_see_each_others_exemplars_and_agree_with_the_in_process_index, which runs it"]
fn another_process_adds_an_exemplar() {
    let given = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run the test that starts this one"));
    let (table, prompt) = (given("SEMROUTE_TEST_CHILD_TABLE"), given("SEMROUTE_TEST_CHILD_PROMPT"));
    let store = PgStore::builder(url()).table(table).pool_size(1).build().unwrap_or_else(|e| panic!("{e}"));
    let router = Router::builder().embedder(common::embedder()).store(Arc::new(store)).build().unwrap_or_else(|e| panic!("{e}"));
    router.add_exemplars(vec![measured("added-by-another-process", &prompt, 0.0)]).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_store_refuses_other_models_bad_settings_and_different_exemplars() {
    let table = Table::new("refuse");
    table.0.attach("model-a", 8).unwrap();
    let other = table.reopen();
    let err = other.attach("model-b", 8).unwrap_err().to_string();
    assert!(err.contains("model-a") && err.contains("model-b"), "{err}");
    let err = table.reopen().attach("model-a", 16).unwrap_err().to_string();
    assert!(err.contains("8 dimensions") && err.contains("16"), "{err}");
    let err = table.0.nearest(&[0.5; 4], 3).unwrap_err().to_string();
    assert!(err.contains("4 dimensions"), "{err}");
    let unattached = table.reopen().count().unwrap_err().to_string();
    assert!(unattached.contains("attach"), "{unattached}");

    // Inserts are all or nothing.
    let unit = |i: usize| {
        let mut v = vec![0.0f32; 8];
        v[i % 8] = 1.0;
        v
    };
    table.0.insert(&[measured("x1", "one", 1.0)], &[unit(0)]).unwrap();
    let err = table.0.insert(&[measured("x2", "two", 1.0), measured("x1", "again", 1.0)], &[unit(1), unit(2)]).unwrap_err().to_string();
    assert!(err.contains("`x1`") && err.contains("nothing was added"), "{err}");
    assert_eq!(table.0.count().unwrap(), 1);
    let err = table.0.insert(&[measured("x3", "three", 1.0)], &[vec![f32::NAN; 8]]).unwrap_err().to_string();
    assert!(err.contains("x3") && err.contains("non-finite"), "{err}");
    let hits = table.0.nearest(&unit(0), 5).unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].exemplar.prompt, "one");
    assert!((hits[0].similarity - 1.0).abs() < 1e-6);

    // The kernel-ridge predictors need every vector in process: refused with a store.
    for p in [Predictor::KernelRidge(RidgeSettings::default()), Predictor::Blend(RidgeSettings::default())] {
        let err = Router::builder().embedder(common::embedder()).store(table.reopen()).predictor(p).build().unwrap_err();
        assert!(matches!(err, semroute::Error::Config(_)) && err.to_string().contains("in-process index"), "{err}");
    }

    // Bad settings are refused at build, naming the setting; a dead server within the timeout.
    let e = PgStore::builder(url()).table("Bad-Name").build().unwrap_err().to_string();
    assert!(e.contains("invalid table name"), "{e}");
    let e = PgStore::builder(url()).pool_size(0).build().unwrap_err().to_string();
    assert!(e.contains("pool_size"), "{e}");
    let e = PgStore::connect("postgresql://u:hunter2@127.0.0.1:notaport/db").unwrap_err().to_string();
    assert!(e.contains("invalid connection URL") && !e.contains("hunter2"), "{e}");
    let started = Instant::now();
    let e = PgStore::builder("postgresql://u:hunter2@127.0.0.1:1/db").connect_timeout(Duration::from_secs(2)).build().unwrap_err();
    let e = e.to_string();
    assert!(e.contains("could not connect") && e.contains("127.0.0.1:1") && !e.contains("hunter2"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!format!("{:?}", PgStore::connect(&url()).unwrap()).contains("password"));

    // A router whose exemplar differs from the store's copy under the same id is refused.
    let table = Table::new("differ");
    let embedder = common::embedder();
    let set = |q: f64| ExemplarSet::from_exemplars(vec![measured("same-id", "Sort these numbers: 3 1 2", q)]).unwrap();
    Router::builder().embedder(embedder.clone()).exemplars(set(1.0)).store(table.0.clone()).build().unwrap();
    let err = Router::builder().embedder(embedder).exemplars(set(0.5)).store(table.reopen()).build().unwrap_err().to_string();
    assert!(err.contains("different exemplar under id `same-id`"), "{err}");
}

/// Unit vectors shaped like prompt embeddings: topics (clusters) in a low-dimensional latent
/// space, spread into `dim` dimensions by a fixed random projection, plus a little noise.
fn clustered(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    const LATENT: usize = 24;
    let mut fixed = rand::rngs::StdRng::seed_from_u64(1);
    let projection: Vec<Vec<f32>> = (0..dim).map(|_| (0..LATENT).map(|_| fixed.random_range(-1.0..1.0)).collect()).collect();
    let centres: Vec<Vec<f32>> = (0..40).map(|_| (0..LATENT).map(|_| fixed.random_range(-1.0..1.0)).collect()).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let c = &centres[rng.random_range(0..centres.len())];
            let z: Vec<f32> = c.iter().map(|x| x + rng.random_range(-0.5..0.5)).collect();
            let mut v: Vec<f32> =
                projection.iter().map(|row| row.iter().zip(&z).map(|(a, b)| a * b).sum::<f32>() + rng.random_range(-0.05..0.05)).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= norm);
            v
        })
        .collect()
}

#[test]
fn both_indexes_find_the_exact_nearest_ten() {
    let (n, dim, k) = (3000, 384, 10);
    let vectors = clustered(n, dim, 7);
    let queries = clustered(100, dim, 8);
    let table = Table::new("recall");
    table.0.attach("synthetic", dim).unwrap();
    let items: Vec<Exemplar> = (0..n).map(|i| measured(&format!("v{i}"), &format!("prompt {i}"), 1.0)).collect();
    table.0.insert(&items, &vectors).unwrap();
    let exact = ExactIndex::build(vectors.clone()).unwrap();
    let hnsw = HnswIndex::build(&vectors).unwrap();
    let (mut pg_found, mut hnsw_found) = (0, 0);
    for q in &queries {
        let truth: std::collections::HashSet<String> = exact.search(q, k).iter().map(|h| format!("v{}", h.position)).collect();
        pg_found += table.0.nearest(q, k).unwrap().iter().filter(|h| truth.contains(&h.exemplar.id)).count();
        hnsw_found += hnsw.search(q, k).iter().filter(|h| truth.contains(&format!("v{}", h.position))).count();
    }
    let total = (queries.len() * k) as f64;
    let (pg_recall, hnsw_recall) = (pg_found as f64 / total, hnsw_found as f64 / total);
    eprintln!("recall@10 on {n} clustered vectors: pgvector {pg_recall:.3}, in-process {hnsw_recall:.3}");
    assert!(pg_recall >= 0.95, "pgvector recall@10 {pg_recall:.3}");
    assert!(hnsw_recall >= 0.95, "in-process recall@10 {hnsw_recall:.3}");
}

/// `semroute serve --store-url`: the store used from the server's async code (routing and
/// learning run on tokio's blocking pool, where the blocking client must not start its runtime),
/// and two replicas on one table sharing what one of them learned.
#[test]
fn two_serve_replicas_share_one_store() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let table = Table::new("serve");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fake = rt.block_on(fake_llm::FakeLlm::start());
    let dir = tempfile::tempdir().unwrap();
    let mut providers = String::new();
    for (name, id) in [("fake-cheap", "cheap-1"), ("fake-mid", "mid-1"), ("fake-strong", "strong-1")] {
        providers.push_str(&format!(
            "[models.\"{name}\"]\nprotocol = \"openai\"\nbase_url = \"{}\"\nmodel = \"{id}\"\napi_key_env = \"FAKE_PROVIDER_KEY\"\n\n",
            fake.base_url()
        ));
    }
    std::fs::write(dir.path().join("providers.toml"), providers).unwrap();
    std::fs::write(dir.path().join("prices.toml"), fake_llm::FAKE_PRICES).unwrap();
    let start = |name: &str| {
        let mut child = common::semroute("serve")
            .arg("--providers")
            .arg(dir.path().join("providers.toml"))
            .arg("--prices")
            .arg(dir.path().join("prices.toml"))
            .args(["--no-auth", "--listen", "127.0.0.1:0", "--store-url", &url(), "--store-table", table.0.table()])
            .arg("--usage-log")
            .arg(dir.path().join(format!("usage-{name}.jsonl")))
            .env("FAKE_PROVIDER_KEY", fake_llm::PROVIDER_KEY)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut said = String::new();
        let addr = loop {
            match lines.next() {
                Some(Ok(l)) if l.contains("listening on http://") => {
                    break l.split("listening on http://").nth(1).unwrap().split_whitespace().next().unwrap().to_string()
                }
                Some(Ok(l)) => said.push_str(&(l + "\n")),
                _ => {
                    let _ = child.kill();
                    panic!("serve {name} did not start:\n{said}")
                }
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        (child, addr)
    };
    /// Killed however the test ends (a serve left running would hold database connections).
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let (a, addr_a) = start("a");
    let _a = Killed(a);
    let (b, addr_b) = start("b");
    let _b = Killed(b);
    let http = reqwest::Client::new();
    let prompt = "Quelle est la capitale administrative du Burkina Faso, et depuis quand ?";
    let ask = |addr: &str| -> (u16, serde_json::Value) {
        let body = serde_json::json!({"model": "auto", "messages": [{"role": "user", "content": prompt}]});
        rt.block_on(async {
            let r = http.post(format!("http://{addr}/v1/chat/completions")).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.json().await.unwrap())
        })
    };
    let (status, answer) = ask(&addr_a);
    assert_eq!(status, 200, "{answer}");
    let id = answer["semroute"]["request_id"].as_str().unwrap_or_else(|| panic!("{answer}")).to_string();
    let fb = serde_json::json!({"request_id": id, "quality": 1.0});
    let learned: serde_json::Value =
        rt.block_on(async { http.post(format!("http://{addr_a}/v1/feedback")).json(&fb).send().await.unwrap().json().await.unwrap() });
    assert_eq!(learned["learned"], true, "{learned}");
    // Replica b never saw the request; its nearest exemplar for the same prompt is the one a learned.
    let (status, _) = ask(&addr_b);
    assert_eq!(status, 200);
    // The usage log is written by serve's writer thread: wait for the line.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let usage = loop {
        let text = std::fs::read_to_string(dir.path().join("usage-b.jsonl")).unwrap_or_default();
        if text.ends_with('\n') || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let record: serde_json::Value = serde_json::from_str(usage.lines().next().expect("b wrote its usage record")).unwrap();
    let nearest = &record["neighbours"][0];
    assert_eq!(nearest["id"], format!("feedback:{id}"), "{record}");
    assert!(nearest["similarity"].as_f64().unwrap() > 0.99, "{record}");

    // An agent session: step 1 on replica a, step 2 on replica b, which finds it in the store.
    let step = |addr: &str, messages: serde_json::Value| -> serde_json::Value {
        let body = serde_json::json!({"model": "auto", "messages": messages});
        rt.block_on(async {
            let r = http
                .post(format!("http://{addr}/v1/chat/completions"))
                .header("x-semroute-session", "agent-7")
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json().await.unwrap()
        })
    };
    let mut messages = serde_json::json!([{"role": "system", "content": "You are a coding agent."}, {"role": "user", "content": prompt}]);
    let first = step(&addr_a, messages.clone());
    assert_eq!(first["semroute"]["session"]["step"], 1, "{first}");
    messages.as_array_mut().unwrap().push(serde_json::json!({"role": "assistant", "content": "Looking it up."}));
    messages.as_array_mut().unwrap().push(serde_json::json!({"role": "tool", "tool_call_id": "c1", "content": "Ouagadougou"}));
    let second = step(&addr_b, messages);
    assert_eq!(second["semroute"]["session"]["step"], 2, "{second}");
    assert_eq!(second["semroute"]["session"]["previous_model"], first["model"], "{second}");
}

/// Two routers (two processes' pools) on one store share agent sessions.
#[test]
fn routers_on_one_store_take_each_others_session_steps() {
    let table = Table::new("sessions");
    let build = |store: Arc<PgStore>| {
        Router::builder().embedder(common::embedder()).cache_dir(common::vector_cache()).session_store(store).build().unwrap()
    };
    let (a, b) = (build(table.0.clone()), build(table.reopen()));
    let c = semroute::Constraints::default();
    let chat = |m: &serde_json::Value| semroute::chat::ChatRequest::from_json(serde_json::json!({ "messages": m })).unwrap();
    let mut m =
        serde_json::json!([{"role": "user", "content": "Summarise this changelog for the release notes: fixed a crash on start-up."}]);
    let first = a.route_session(&chat(&m), Some("shared"), &c).unwrap();
    m.as_array_mut().unwrap().push(serde_json::json!({"role": "assistant", "content": "Done."}));
    m.as_array_mut().unwrap().push(serde_json::json!({"role": "user", "content": "Thanks."}));
    let second = b.route_session(&chat(&m), Some("shared"), &c).unwrap().session.unwrap();
    assert_eq!((second.step, second.previous_model.as_deref()), (2, Some(first.model.as_str())));
    assert!(!second.task_reused, "another router re-assesses the task (its data may differ)");
    assert_eq!(table.0.len(), 1);
    // A state this version cannot read is a clear error, not a panic.
    let e = {
        let key = semroute::session::SessionKey::parse(&second.id).unwrap();
        let mut client = postgres::Client::connect(&url(), postgres::NoTls).unwrap();
        client.execute(&format!("update {}_sessions set state = '{{\"model\": 3}}'::jsonb", table.0.table()), &[]).unwrap();
        semroute::session::SessionStore::load(table.0.as_ref(), &key).unwrap_err()
    };
    assert!(e.to_string().contains("is not a session state"), "{e}");
}

/// Called straight from async code (on a runtime's worker thread, where the blocking client may
/// not start its own runtime), a store connects, answers and closes.
#[tokio::test(flavor = "multi_thread")]
async fn the_store_answers_when_called_from_async_code() {
    let table = Table::new("async");
    let store = table.reopen();
    store.attach("all-minilm-l6-v2", 384).unwrap();
    assert_eq!(store.count().unwrap(), 0);
    assert!(store.nearest(&[0.05; 384], 3).unwrap().is_empty());
    drop(store);
}
