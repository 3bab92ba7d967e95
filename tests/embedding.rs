//! The ONNX embedder against an independent implementation (candle-transformers' BERT; see
//! tests/fixtures/refvec) and the similarity sentence-transformers documents for this model.

mod common;

use semroute::embed::{cosine, Embedder, EmbedderOptions, FastEmbedder, Home};
use semroute::error::SETUP_COMMAND;
use semroute::Error;

/// The model this file checks (the default before the int8 multilingual model; still installable).
const MINILM: &str = "all-minilm-l6-v2";

fn minilm() -> std::sync::Arc<FastEmbedder> {
    common::installed(MINILM)
}

fn reference() -> common::Reference {
    common::reference(include_str!("fixtures/minilm_reference.json"))
}

#[test]
fn agrees_with_candle_reference_in_english_and_chinese() {
    let e = minilm();
    let r = reference();
    assert!(r.sentences.len() >= 10);
    let chinese = r.sentences.iter().filter(|s| s.text.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c))).count();
    assert!(chinese >= 5, "the fixture must hold Chinese sentences too");
    let texts: Vec<&str> = r.sentences.iter().map(|s| s.text.as_str()).collect();
    let got = e.embed_batch(&texts).unwrap();
    let mut worst = 1.0f32;
    for (s, v) in r.sentences.iter().zip(&got) {
        assert_eq!(v.len(), 384);
        let c = cosine(v, &s.embedding);
        worst = worst.min(c);
        assert!(c >= 0.999, "cosine {c} for {:?}", s.text);
    }
    eprintln!("worst cosine to the candle reference over {} sentences: {worst:.6}", texts.len());
}

#[test]
fn reproduces_documented_similarity() {
    let e = minilm();
    let a = e.embed("A man is eating food.").unwrap();
    let b = e.embed("A man is eating a piece of bread.").unwrap();
    let c = cosine(&a, &b);
    assert!((c - 0.7553).abs() < 0.001, "cosine {c}, documented 0.7553");
}

#[test]
fn single_and_batched_embeddings_agree_and_are_unit_length() {
    let e = minilm();
    let texts = ["short", "a much longer sentence that needs padding in a batch with a short one", "中文句子"];
    let batch = e.embed_batch(&texts).unwrap();
    for (t, v) in texts.iter().zip(&batch) {
        let one = e.embed(t).unwrap();
        assert!(cosine(&one, v) > 0.99999, "{t}");
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
    }
    assert!(e.embed_batch(&[]).unwrap().is_empty());
}

#[test]
fn very_long_text_is_truncated_not_refused() {
    let e = minilm();
    let long = "word ".repeat(20_000);
    let v = e.embed(&long).unwrap();
    assert_eq!(v.len(), 384);
    // Truncation keeps the first 256 tokens: the same as embedding a shorter prefix of it.
    let prefix = "word ".repeat(400);
    assert!(cosine(&v, &e.embed(&prefix).unwrap()) > 0.9999);
}

fn model_dir() -> std::path::PathBuf {
    Home::from_env().model_dir(MINILM)
}

#[test]
fn missing_model_names_the_setup_command() {
    let dir = tempfile::tempdir().unwrap();
    let err = FastEmbedder::load(dir.path(), &Home::from_env().ort_library(), &EmbedderOptions::default()).unwrap_err();
    assert!(matches!(err, Error::ModelMissing { .. }), "{err:?}");
    assert!(err.to_string().contains(SETUP_COMMAND), "{err}");
}

/// Copies the real model folder's small files into `dir`, with `model.onnx` replaced by `onnx`.
fn copy_model(dir: &std::path::Path, onnx: &[u8]) {
    let src = model_dir();
    for f in ["tokenizer.json", "config.json", "special_tokens_map.json", "tokenizer_config.json", "SHA256SUMS", "READY"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    std::fs::write(dir.join("model.onnx"), onnx).unwrap();
}

#[test]
fn truncated_model_is_reported_as_damaged() {
    let _ = minilm(); // make sure the real model is installed
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path(), b"not an onnx graph");
    let err = FastEmbedder::load(dir.path(), &Home::from_env().ort_library(), &EmbedderOptions::default()).unwrap_err();
    assert!(matches!(err, Error::ModelCorrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("--force"), "{err}");
}

#[test]
fn tampered_tokenizer_is_reported_as_damaged() {
    let _ = minilm();
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path(), b"x");
    let mut tok = std::fs::read(dir.path().join("tokenizer.json")).unwrap();
    tok[10] ^= 1;
    std::fs::write(dir.path().join("tokenizer.json"), tok).unwrap();
    let err = FastEmbedder::load(dir.path(), &Home::from_env().ort_library(), &EmbedderOptions::default()).unwrap_err();
    assert!(err.to_string().contains("tokenizer.json does not match its checksum"), "{err}");
}

#[test]
fn a_lazy_embedder_opens_the_model_at_its_first_text_and_embeds_the_same() {
    let eager = minilm();
    let lazy =
        FastEmbedder::load(&model_dir(), &Home::from_env().ort_library(), &EmbedderOptions { lazy: true, ..Default::default() }).unwrap();
    assert_eq!((lazy.model_id(), lazy.dim()), (eager.model_id(), eager.dim()), "a cache key known before the model opens");
    let texts = ["Reformat this JSON", "证明根号二是无理数"];
    let (a, b) = (lazy.embed_batch(&texts).unwrap(), eager.embed_batch(&texts).unwrap());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), y.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    }
    // A graph ONNX Runtime cannot read is found at the first text, and named as at load.
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path(), b"not an onnx graph");
    let ready = std::fs::read_to_string(dir.path().join("READY")).unwrap();
    let kept: Vec<&str> = ready.lines().filter(|l| !l.starts_with("model.onnx.bytes=")).collect();
    std::fs::write(dir.path().join("READY"), kept.join("\n")).unwrap();
    let broken =
        FastEmbedder::load(dir.path(), &Home::from_env().ort_library(), &EmbedderOptions { lazy: true, ..Default::default() }).unwrap();
    let err = broken.embed("hello").unwrap_err();
    assert!(matches!(err, Error::ModelCorrupt { .. }), "{err:?}");
    assert!(
        FastEmbedder::load(dir.path(), &Home::from_env().ort_library(), &EmbedderOptions::default()).is_err(),
        "eager finds it at load"
    );
}
