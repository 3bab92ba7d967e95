//! The static embedder (issue 17): distilled from the installed MiniLM by the set-up, loaded and
//! used through the `Embedder` trait and the Router; damaged files are clear errors.

mod common;

use std::sync::Arc;

use semroute::embed::{Embedder, StaticEmbedder};
use semroute::{Error, Router};

const NAME: &str = "static-all-minilm-l6-v2";

/// Loaded once per test binary, installing it first when it is missing.
fn embedder() -> Arc<dyn Embedder> {
    static E: std::sync::OnceLock<Arc<dyn Embedder>> = std::sync::OnceLock::new();
    E.get_or_init(load).clone()
}

fn load() -> Arc<dyn Embedder> {
    match semroute::embed::load_installed(NAME) {
        Err(Error::ModelMissing { .. }) => {
            semroute::setup::install_model(NAME, false).unwrap_or_else(|e| panic!("{e}"));
            semroute::embed::load_installed(NAME).unwrap_or_else(|e| panic!("{e}"))
        }
        other => other.unwrap_or_else(|e| panic!("{e}")),
    }
}

fn cos(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn vectors_are_unit_length_deterministic_and_follow_meaning() {
    let e = embedder();
    assert_eq!(e.dim(), 256);
    let texts = [
        "Reformat this JSON so it is indented",
        "Please pretty-print this JSON with indentation",
        "Prove that there are infinitely many prime numbers",
        "𓀀𓀁𓀂 𓀃𓀄",
    ];
    let v = e.embed_batch(&texts).unwrap();
    for x in &v[..3] {
        assert!((cos(x, x) - 1.0).abs() < 1e-4);
    }
    assert_eq!(v[0], e.embed(texts[0]).unwrap());
    assert!(cos(&v[0], &v[1]) > cos(&v[0], &v[2]) + 0.2, "{} vs {}", cos(&v[0], &v[1]), cos(&v[0], &v[2]));
    // No known token: the zero vector, similar to nothing.
    assert!(v[3].iter().all(|x| *x == 0.0));
    // A prompt of a million characters costs no more than its first few thousand.
    let huge = "word ".repeat(200_000);
    let t = std::time::Instant::now();
    e.embed(&huge).unwrap();
    assert!(t.elapsed() < std::time::Duration::from_millis(500), "{:?}", t.elapsed());
}

#[test]
fn a_router_on_the_static_model_routes_and_an_unknown_prompt_falls_back() {
    let router = Router::builder().embedder(embedder()).build().unwrap();
    let ex = router.exemplars();
    let first = ex.get(0).clone();
    let d = router.route(&first.prompt).unwrap();
    assert_eq!(d.neighbours[0].id, first.id);
    assert!(d.neighbours[0].similarity > 0.999);
    let d = router.route("𓀀𓀁𓀂 𓀃𓀄").unwrap();
    assert!(d.fallback, "{}", d.reason);

    // A server may route a short request on its async tasks; a long one, or any request with
    // a transformer, goes to a blocking thread.
    assert!(embedder().is_quick());
    let chat = |bytes: usize| semroute::chat::ChatRequest::user(&"a".repeat(bytes));
    assert!(router.is_quick(&chat(200)) && router.is_quick(&chat(semroute::router::QUICK_BYTES)));
    assert!(!router.is_quick(&chat(semroute::router::QUICK_BYTES + 1)));
    let transformer = Router::builder().embedder(semroute::embed::load_installed("all-minilm-l6-v2").unwrap()).build().unwrap();
    assert!(!transformer.is_quick(&chat(200)));
}

#[test]
fn damaged_or_missing_files_are_clear_errors() {
    embedder();
    let home = semroute::embed::Home::from_env();
    let src = home.model_dir(NAME);
    let dir = tempfile::tempdir().unwrap();
    for f in ["embeddings.f16", "tokenizer.json", "static.json", "READY", "SHA256SUMS"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    StaticEmbedder::load(dir.path()).unwrap();
    let table = dir.path().join("embeddings.f16");
    let bytes = std::fs::read(&table).unwrap();
    std::fs::write(&table, &bytes[..bytes.len() - 2]).unwrap();
    let e = StaticEmbedder::load(dir.path()).unwrap_err();
    assert!(matches!(e, Error::ModelCorrupt { .. }) && e.to_string().contains("embeddings.f16"), "{e}");
    std::fs::write(&table, &bytes).unwrap();
    std::fs::write(dir.path().join("static.json"), "{}").unwrap();
    let e = StaticEmbedder::load(dir.path()).unwrap_err();
    assert!(e.to_string().contains("static.json does not match its checksum"), "{e}");
    std::fs::remove_file(dir.path().join("READY")).unwrap();
    assert!(matches!(StaticEmbedder::load(dir.path()), Err(Error::ModelMissing { .. })));
}
