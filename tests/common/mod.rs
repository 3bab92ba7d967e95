//! Shared by the integration tests that use the real embedding model.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};

use semroute::embed::FastEmbedder;
use semroute::Router;

/// The real default model, loaded once per test binary. When it is not installed yet, the
/// project's set-up (`semroute::setup`) installs it first (as the `route` example does), so `cargo test` works
/// on a fresh clone; a failed set-up fails the test with the script's message.
pub fn embedder() -> Arc<FastEmbedder> {
    static E: OnceLock<Arc<FastEmbedder>> = OnceLock::new();
    E.get_or_init(|| installed(semroute::embed::DEFAULT_MODEL)).clone()
}

/// An installed model by name, installing it with the set-up script if it is missing.
pub fn installed(name: &str) -> Arc<FastEmbedder> {
    let model = match FastEmbedder::load_installed(name) {
        Err(semroute::Error::ModelMissing { .. }) => {
            semroute::setup::install_model(name, false).unwrap_or_else(|e| panic!("{e}"));
            FastEmbedder::load_installed(name)
        }
        other => other,
    };
    Arc::new(model.unwrap_or_else(|e| panic!("{e}")))
}

/// A router on the built-in exemplars and prices with the real model. Its vectors are cached in
/// [`vector_cache`], shared by the test binaries: the first to run embeds the 427 exemplars, the
/// others read them (the warm-start test and the embedding tests embed for themselves).
pub fn router() -> Router {
    static R: OnceLock<Router> = OnceLock::new();
    R.get_or_init(|| Router::builder().embedder(embedder()).cache_dir(vector_cache()).build().unwrap_or_else(|e| panic!("{e}"))).clone()
}

/// The exemplar-vector cache the test binaries share (under Cargo's target folder; keyed by model
/// and exemplar content, so it cannot go stale).
pub fn vector_cache() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("semroute-test-vectors")
}

/// A reference-embedding fixture (tests/fixtures/*_reference.json).
#[derive(serde::Deserialize)]
pub struct Reference {
    /// The prefix the reference added to every text (E5's "query: "), if any.
    #[serde(default)]
    pub prefix: Option<String>,
    pub sentences: Vec<Sentence>,
}

/// One fixture sentence and its reference vector.
#[derive(serde::Deserialize)]
pub struct Sentence {
    pub text: String,
    pub embedding: Vec<f32>,
}

pub fn reference(json: &str) -> Reference {
    serde_json::from_str(json).expect("a valid reference fixture")
}

/// An example binary cargo built next to the running test (`target/<profile>/examples/<name>`).
pub fn example_bin(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let bin = profile_dir.join("examples").join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(bin.exists(), "{} is missing: run through `cargo test`, which builds the examples", bin.display());
    bin
}

/// The `semroute` command, with its subcommand (`"serve"`, `"eval savings"`) as the first
/// arguments. Cargo builds the binary for the integration tests.
pub fn semroute(subcommand: &str) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_semroute"));
    c.args(subcommand.split(' '));
    c
}

/// Two priced models for toy data: `small` (cheap) and `big` (strong, ten times the price).
pub const TWO_MODELS: &str = r#"
[models.small]
provider = "a"
input_per_mtok = 1.0
output_per_mtok = 2.0
tier = "cheap"
source = "test"
as_of = "2025"
[models.big]
provider = "b"
input_per_mtok = 10.0
output_per_mtok = 20.0
tier = "strong"
source = "test"
as_of = "2025"
"#;
