//! The fresh-prompt check (issue 19): 226 everyday prompts written by hand for this check, half
//! in Chinese, each with the side a careful person would send it to, plus 24 nonsense prompts,
//! routed with the built-in exemplars, prices and the default embedder. It reports agreement and
//! the hard prompts sent cheap, and holds the default to the aims it meets (see the README's
//! built-in exemplars section): no hard prompt on the cheap tier, 90% on their side overall;
//! each language is held to 88% (the aim is 90%, met with 92.4% and 91.5%), leaving a few
//! prompts' room for the rounding of another processor's int8 kernels, which moves knife-edge
//! prompts.

mod common;

use std::collections::HashSet;

use semroute::eval::{check_sides, Side, SideCase};
use semroute::ExemplarSet;

fn cases() -> Vec<SideCase> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/fresh");
    let mut cases = SideCase::load(format!("{dir}/prompts.jsonl")).unwrap();
    cases.extend(SideCase::load(format!("{dir}/nonsense.jsonl")).unwrap());
    cases
}

#[test]
fn the_fresh_prompts_are_not_exemplars() {
    let known: HashSet<String> = ExemplarSet::builtin().unwrap().iter().map(|e| e.prompt.trim().to_lowercase()).collect();
    let cases = cases();
    assert!(cases.len() >= 200 + 24);
    assert!(cases.iter().filter(|c| c.side != Side::Unknown && c.language == "zh").count() * 2 >= 200);
    for c in &cases {
        assert!(!known.contains(&c.prompt.trim().to_lowercase()), "{} is a built-in exemplar", c.id);
    }
}

#[test]
fn fresh_prompts_go_to_their_side() {
    let report = check_sides(&common::router(), &cases()).unwrap();
    let all = report.overall();
    let by = report.by(|o| format!("{} {:?}", o.language, o.side));
    for (k, t) in &by {
        eprintln!(
            "{k:<14} n {:>3}  on its side {:>5.1}%  hard→cheap {}  hard→mid {}  routine→strong {}  fell back {}",
            t.n,
            100.0 * t.agreement(),
            t.strong_to_cheap,
            t.strong_to_mid,
            t.cheap_to_strong,
            t.fallbacks
        );
    }
    let hard_cheap: Vec<&str> =
        report.outcomes.iter().filter(|o| o.side == Side::Strong && o.tier == semroute::Tier::Cheap).map(|o| o.id.as_str()).collect();
    eprintln!("overall {:.1}% on its side; hard prompts sent to the cheap tier: {hard_cheap:?}", 100.0 * all.agreement());
    // The default (multilingual-e5-small in int8, kernel ridge updated by near-copies, the
    // caution derived from the labels, 0.75, with the model's own error, the centred fallback
    // rule) measured 92.4% (English 92.4%, Chinese
    // 92.4%), 90.2% of the Chinese hard prompts on the strong tier, 21 of 24 nonsense prompts
    // fell back and 5 routine ones did (caution 1 before: 92.0%, 92.4%, 91.5%, 90.2%, 21, 5).
    assert!(hard_cheap.is_empty(), "{hard_cheap:?}");
    assert!(all.agreement() >= 0.90, "{:.3}", all.agreement());
    let by_language = report.by(|o| o.language.clone());
    for language in ["en", "zh"] {
        let t = &by_language[language];
        assert!(t.agreement() >= 0.88, "{language}: {:.3} on their side", t.agreement());
    }
    let zh_hard = &by["zh Strong"];
    assert!(zh_hard.agreement() >= 0.85, "{:.3} of the Chinese hard prompts on the strong tier", zh_hard.agreement());
    let unknown = by.iter().filter(|(k, _)| k.ends_with("Unknown")).map(|(_, t)| t.agree).sum::<usize>();
    assert!(unknown >= 19, "only {unknown} of 24 nonsense prompts fell back");
    let routine_fallbacks = report.outcomes.iter().filter(|o| o.side == Side::Cheap && o.fallback).count();
    assert!(routine_fallbacks <= 7, "{routine_fallbacks} routine prompts fell back");
}

/// The int8 copy of MiniLM (`semroute setup all-minilm-l6-v2-int8`) against MiniLM itself, case
/// by case: quantisation may move a knife-edge prompt, not the router's behaviour.
#[test]
fn the_int8_copy_of_minilm_decides_like_minilm() {
    let minilm =
        semroute::Router::builder().embedder(common::installed("all-minilm-l6-v2")).cache_dir(common::vector_cache()).build().unwrap();
    let full = check_sides(&minilm, &cases()).unwrap();
    let int8 =
        semroute::Router::builder().embedder(common::installed("all-minilm-l6-v2-int8")).cache_dir(common::vector_cache()).build().unwrap();
    let small = check_sides(&int8, &cases()).unwrap();
    let n = full.outcomes.len();
    let same_tier = full.outcomes.iter().zip(&small.outcomes).filter(|(a, b)| a.tier == b.tier && a.fallback == b.fallback).count();
    let same_side = full.outcomes.iter().zip(&small.outcomes).filter(|(a, b)| a.agree == b.agree).count();
    eprintln!(
        "int8 against float32: same tier {same_tier} of {n}, same side {same_side}; on its side {:.1}% against {:.1}%",
        100.0 * small.overall().agreement(),
        100.0 * full.overall().agreement()
    );
    // Measured when the copy was added: see the README's "int8 copies".
    assert!(same_tier * 100 >= n * 85, "{same_tier} of {n}");
    assert!(same_side * 100 >= n * 92, "{same_side} of {n}");
    assert!((small.overall().agreement() - full.overall().agreement()).abs() <= 0.04);
}
