//! An agent framework calling semroute: a rig agent (examples/rig_agent.rs) whose model is `auto`
//! on a `semroute::serve::Server` started in this process, in front of loopback fake providers.

mod common;
#[path = "common/fake_llm.rs"]
mod fake_llm;
#[path = "../examples/rig_agent.rs"]
#[allow(dead_code)]
mod rig_agent;

use fake_llm::{FakeLlm, FAKE_PRICES, PROVIDER_KEY};
use semroute::provider::Providers;
use semroute::serve::{ClientKeys, ServeOptions, Server};
use semroute::{PriceTable, Router};

const CLIENT_KEY: &str = "rig-agent-client-key-0123456789";

#[tokio::test(flavor = "multi_thread")]
async fn a_rig_agent_is_routed_per_prompt() {
    let fake = FakeLlm::start().await;
    // SAFETY (edition 2021: safe): set before the server reads it, in a binary with this one test.
    std::env::set_var("RIG_TEST_PROVIDER_KEY", PROVIDER_KEY);
    let mut providers = String::new();
    for (name, protocol, id) in
        [("fake-cheap", "openai", "cheap-1"), ("fake-mid", "openai", "mid-1"), ("fake-strong", "anthropic", "strong-1")]
    {
        providers.push_str(&format!(
            "[models.\"{name}\"]\nprotocol = \"{protocol}\"\nbase_url = \"{}\"\nmodel = \"{id}\"\napi_key_env = \"RIG_TEST_PROVIDER_KEY\"\n\n",
            fake.base_url()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let router = tokio::task::spawn_blocking(|| {
        Router::builder()
            .embedder(common::embedder())
            .cache_dir(common::vector_cache())
            .prices(PriceTable::from_toml_str(FAKE_PRICES, "fake-prices.toml").unwrap())
            .build()
            .unwrap()
    })
    .await
    .unwrap();
    let mut options = ServeOptions::new(Providers::from_toml_str(&providers, "providers.toml").unwrap());
    options.client_keys = Some(ClientKeys::parse(CLIENT_KEY, "keys").unwrap());
    options.usage_log = dir.path().join("usage.jsonl");
    let server = Server::new(router, options).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(listener, async move {
        let _ = stopped.await;
    }));

    let preamble = "You are a careful, concise assistant.";
    let easy = "Reformat this JSON so it is indented: {\"id\": 7, \"tags\": [\"a\", \"b\"]}";
    let hard = "Prove rigorously that the lock-free queue below is linearizable under the C11 memory model, \
                and derive a tight bound on the number of CAS retries under contention.";
    let answer = rig_agent::ask(&base_url, CLIENT_KEY, preamble, easy).await.unwrap();
    assert!(answer.starts_with("echo:") && answer.contains("Reformat this JSON"), "{answer}");
    let answer = rig_agent::ask(&base_url, CLIENT_KEY, preamble, hard).await.unwrap();
    assert!(answer.contains("linearizable"), "{answer}");

    // semroute chose per prompt: the routine one cheap, the proof strong (an Anthropic model,
    // translated both ways), and rig's system message reached the providers.
    let seen = fake.seen.requests.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!((seen[0].0.as_str(), seen[0].1.as_str()), ("openai", "cheap-1"));
    assert_eq!((seen[1].0.as_str(), seen[1].1.as_str()), ("anthropic", "strong-1"));
    assert!(seen[0].2.to_string().contains(preamble) && seen[1].2["system"].to_string().contains(preamble));

    // A wrong key is refused before anything is routed.
    assert!(rig_agent::ask(&base_url, "not-a-client-key-0000000000", preamble, easy).await.is_err());
    assert_eq!(fake.seen.requests.lock().unwrap().len(), 2);

    let _ = stop.send(());
    serving.await.unwrap().unwrap();
    let usage = std::fs::read_to_string(dir.path().join("usage.jsonl")).unwrap();
    let records: Vec<semroute::serve::UsageRecord> = usage.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.iter().map(|r| (r.routed, r.model.as_str())).collect::<Vec<_>>(), [(true, "fake-cheap"), (true, "fake-strong")]);
    assert!(records.iter().all(|r| r.schema_version == semroute::serve::USAGE_SCHEMA_VERSION));
}
