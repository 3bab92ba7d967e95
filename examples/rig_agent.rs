//! An agent framework using semroute: a [rig](https://docs.rs/rig-core) agent whose completion
//! model is `auto` on `semroute serve`, so each prompt goes to the cheapest model that answers it
//! well enough, in its own protocol (OpenAI or Anthropic), and comes back OpenAI-shaped.
//!
//! ```text
//! semroute serve --config semroute.toml            # in one shell (see examples/semroute.toml)
//! SEMROUTE_URL=http://127.0.0.1:8080/v1 SEMROUTE_KEY=<a client key> \
//!     cargo run --release --example rig_agent -- "Prove that there are infinitely many primes."
//! ```
//! The agent only changes its base URL and model name; `"auto:0.9"` would ask for a higher
//! quality bar. rig talks plain HTTP to the local server here (no TLS features); semroute calls
//! the providers over TLS.

use rig_agent::AgentBuilder;
use rig_core::providers::openai::OpenAIConfig;

/// Asks a rig agent with this `preamble` one `prompt`, through semroute at `base_url` (ending in
/// `/v1`) with the client key `key`, and returns its answer.
pub async fn ask(base_url: &str, key: &str, preamble: &str, prompt: &str) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    // `.chat(...)`: the Chat Completions API (`/chat/completions`), which semroute serves.
    let model = OpenAIConfig::new(key).with_base_url(base_url).client().chat("auto");
    let agent = AgentBuilder::new(model).preamble(preamble).build();
    Ok(agent.prompt(prompt).await?.output().to_string())
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let base_url = std::env::var("SEMROUTE_URL").unwrap_or_else(|_| "http://127.0.0.1:8080/v1".into());
    let key = std::env::var("SEMROUTE_KEY").map_err(|_| "set SEMROUTE_KEY to one of the server's client keys")?;
    let prompt = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    if prompt.trim().is_empty() {
        return Err("give a prompt: cargo run --release --example rig_agent -- \"...\"".into());
    }
    println!("{}", ask(&base_url, &key, "You are a careful, concise assistant.", &prompt).await?);
    Ok(())
}
