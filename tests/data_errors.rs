//! Bad exemplar files and price tables give errors that name file, line and field.

use semroute::exemplar::ExemplarSet;
use semroute::pricing::PriceTable;
use semroute::Error;

const GOOD: &str = r#"{"id":"a","prompt":"Indent this","category":"formatting","language":"en","label":{"tier":"cheap","reason":"mechanical","output_tokens":40}}"#;

fn price(name: &str, body: &str) -> String {
    format!("[models.\"{name}\"]\n{body}\n")
}

const BODY: &str = r#"provider = "p"
input_per_mtok = 1.0
output_per_mtok = 2.0
cached_input_per_mtok = 0.1
context_window = 1000
tier = "cheap"
source = "example"
as_of = "2025-01-01""#;

#[test]
fn builtin_data_loads_and_is_consistent() {
    let prices = PriceTable::builtin().unwrap();
    let set = ExemplarSet::builtin().unwrap();
    assert!(set.len() >= 60, "{}", set.len());
    assert!(prices.len() >= 8, "{}", prices.len());
    set.check_models(&prices).unwrap();
    let zh = set.iter().filter(|e| e.language == "zh").count();
    let en = set.iter().filter(|e| e.language == "en").count();
    assert!(zh >= 20 && en >= 20, "zh {zh}, en {en}");
    for (name, p) in prices.iter() {
        // The default table is complete: every model's date, context window and cache price.
        assert!(!p.source.is_empty() && p.as_of.len() == 10, "{name}");
        assert!(p.context_window.is_some() && p.cached_input_per_mtok.is_some(), "{name}");
    }
    let benchmark = PriceTable::from_file(concat!(env!("CARGO_MANIFEST_DIR"), "/exemplars/benchmarks/prices-routellm.toml")).unwrap();
    assert_eq!(benchmark.names().collect::<Vec<_>>(), ["gpt-4-1106-preview", "mixtral-8x7b-instruct"]);
}

#[test]
fn malformed_exemplar_line_names_file_line_and_field() {
    let text = format!(
        "{GOOD}\n\n{}\n",
        r#"{"id":"b","category":"formatting","language":"en","label":{"tier":"cheap","reason":"r","output_tokens":1}}"#
    );
    let err = ExemplarSet::from_jsonl_str(&text, "ex/starter.jsonl").unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("ex/starter.jsonl:3:"), "{msg}");
    assert!(msg.contains("`prompt`"), "{msg}");
    match err {
        Error::Exemplar { field, at, .. } => {
            assert_eq!(field.as_deref(), Some("prompt"));
            assert_eq!(at.line, Some(3));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_line_without_category_or_language_reads_as_uncategorised_and_undetermined() {
    // As a grading run's tasks do: a workload's own prompts seldom come with either.
    let set =
        ExemplarSet::from_jsonl_str(r#"{"id":"w1","prompt":"p","results":{"m":{"quality":1,"output_tokens":3}}}"#, "w.jsonl").unwrap();
    let e = set.get(0);
    assert_eq!((e.category.as_str(), e.language.as_str()), ("uncategorised", "und"));
    // Named but empty is still an error.
    let err = ExemplarSet::from_jsonl_str(
        r#"{"id":"w1","prompt":"p","language":" ","results":{"m":{"quality":1,"output_tokens":3}}}"#,
        "w.jsonl",
    )
    .unwrap_err();
    assert!(err.to_string().contains("`language`") && err.to_string().contains("w.jsonl:1"), "{err}");
}

#[test]
fn broken_json_unknown_tier_and_bad_quality_are_errors() {
    let cases = [
        (r#"{"id":"x","prompt":"p""#, "x.jsonl:1"),
        (r#"{"id":"x","prompt":"p","category":"c","language":"en","label":{"tier":"medium","reason":"r","output_tokens":1}}"#, "medium"),
        (
            r#"{"id":"x","prompt":"p","category":"c","language":"en","results":{"m":{"quality":1.5,"output_tokens":3}}}"#,
            "results.m.quality",
        ),
        (
            r#"{"id":"x","prompt":"p","category":"c","language":"en","results":{"m":{"quality":1,"output_tokens":3,"cost_usd":-0.5}}}"#,
            "results.m.cost_usd",
        ),
        (r#"{"id":"x","prompt":"p","category":"c","language":"en"}"#, "neither"),
        (r#"{"id":"x","prompt":"  ","category":"c","language":"en","label":{"tier":"cheap","reason":"r","output_tokens":1}}"#, "`prompt`"),
        (
            r#"{"id":"x","prompt":"p","category":"c","language":"en","label":{"tier":"cheap","reason":"r","output_tokens":1},"extra":1}"#,
            "extra",
        ),
    ];
    for (line, needle) in cases {
        let err = ExemplarSet::from_jsonl_str(line, "x.jsonl").unwrap_err();
        assert!(err.to_string().contains(needle), "{line}: {err}");
        assert!(err.to_string().contains("x.jsonl:1"), "{err}");
    }
}

#[test]
fn duplicate_ids_name_both_places() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.jsonl"), format!("{GOOD}\n")).unwrap();
    std::fs::write(dir.path().join("b.jsonl"), format!("\n{GOOD}\n")).unwrap();
    let msg = ExemplarSet::load_dir(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("b.jsonl:2") && msg.contains("a.jsonl:1") && msg.contains("duplicate id"), "{msg}");
}

#[test]
fn exemplar_dir_without_files_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not exemplars").unwrap();
    let err = ExemplarSet::load_dir(dir.path()).unwrap_err();
    assert!(matches!(err, Error::NoExemplars(_)), "{err:?}");
    std::fs::write(dir.path().join("empty.jsonl"), "\n\n").unwrap();
    assert!(matches!(ExemplarSet::load_dir(dir.path()).unwrap_err(), Error::NoExemplars(_)));
    let missing = dir.path().join("nope");
    assert!(matches!(ExemplarSet::load_dir(&missing).unwrap_err(), Error::Io { .. }));
}

#[test]
fn exemplar_naming_an_unpriced_model_is_an_error() {
    let set = ExemplarSet::from_jsonl_str(
        r#"{"id":"m","prompt":"p","category":"c","language":"en","results":{"known":{"quality":1,"output_tokens":3},"ghost-model":{"quality":0,"output_tokens":3}}}"#,
        "m.jsonl",
    )
    .unwrap();
    let prices = PriceTable::from_toml_str(&price("known", BODY), "p.toml").unwrap();
    let msg = set.check_models(&prices).unwrap_err().to_string();
    assert!(msg.contains("m.jsonl:1") && msg.contains("ghost-model") && msg.contains("results.ghost-model"), "{msg}");
}

#[test]
fn bad_price_tables_name_line_model_and_field() {
    let negative =
        format!("# header\n{}{}", price("ok", BODY), price("bad", &BODY.replace("output_per_mtok = 2.0", "output_per_mtok = -2.0")));
    let msg = PriceTable::from_toml_str(&negative, "prices.toml").unwrap_err().to_string();
    assert!(msg.contains("prices.toml:11") && msg.contains("`bad`") && msg.contains("output_per_mtok"), "{msg}");

    let missing = price("m", &BODY.replace("output_per_mtok = 2.0\n", ""));
    let msg = PriceTable::from_toml_str(&missing, "prices.toml").unwrap_err().to_string();
    assert!(msg.contains("prices.toml:1") && msg.contains("output_per_mtok") && msg.contains("`m`"), "{msg}");

    // Context window and cache price may be unknown, but never zero or negative.
    let unknown = price("u", &BODY.replace("context_window = 1000\n", "").replace("cached_input_per_mtok = 0.1\n", ""));
    let table = PriceTable::from_toml_str(&unknown, "prices.toml").unwrap();
    assert_eq!(table.get("u").unwrap().context_window, None);
    let zero = price("z", &BODY.replace("context_window = 1000", "context_window = 0"));
    assert!(PriceTable::from_toml_str(&zero, "p.toml").unwrap_err().to_string().contains("context_window"));

    // A tier is optional; only hand labels need one for every model.
    let untiered = price("n", &BODY.replace("tier = \"cheap\"\n", ""));
    let table = PriceTable::from_toml_str(&untiered, "prices.toml").unwrap();
    assert_eq!(table.get("n").unwrap().tier, None);
    let labelled = ExemplarSet::from_jsonl_str(GOOD, "x.jsonl").unwrap();
    let msg = labelled.check_models(&table).unwrap_err().to_string();
    assert!(msg.contains("x.jsonl:1") && msg.contains("label.tier") && msg.contains("`n`"), "{msg}");
    let measured = r#"{"id":"m","prompt":"p","category":"c","language":"en","results":{"n":{"quality":1,"output_tokens":3}}}"#;
    ExemplarSet::from_jsonl_str(measured, "m.jsonl").unwrap().check_models(&table).unwrap();

    let tier = price("t", &BODY.replace("\"cheap\"", "\"premium\""));
    let msg = PriceTable::from_toml_str(&tier, "prices.toml").unwrap_err().to_string();
    assert!(msg.contains("premium"), "{msg}");

    let date = price("d", &BODY.replace("2025-01-01", "last week"));
    assert!(PriceTable::from_toml_str(&date, "p.toml").unwrap_err().to_string().contains("as_of"));

    let syntax = "[models.\"x\"\nprovider = 1";
    let msg = PriceTable::from_toml_str(syntax, "p.toml").unwrap_err().to_string();
    assert!(msg.contains("p.toml:1"), "{msg}");

    assert!(PriceTable::from_toml_str("", "p.toml").is_err());
    assert!(matches!(PriceTable::from_file("/no/such/prices.toml").unwrap_err(), Error::Io { .. }));
}

#[test]
fn unknown_fallback_model_is_refused_at_build() {
    let prices = PriceTable::from_toml_str(&price("only", BODY), "p.toml").unwrap();
    let set = ExemplarSet::from_jsonl_str(GOOD, "x.jsonl").unwrap();
    // No embedder is loaded: validation fails before it would be needed.
    let err = semroute::Router::builder().prices(prices).exemplars(set).fallback_model("gpt-99").build().unwrap_err();
    assert!(matches!(err, Error::UnknownModel { .. }), "{err:?}");
    assert!(err.to_string().contains("gpt-99") && err.to_string().contains("only"), "{err}");
}

#[test]
fn exemplar_round_trips_through_its_json_line() {
    let set = ExemplarSet::builtin().unwrap();
    for ex in set.iter() {
        let again = ExemplarSet::from_jsonl_str(&ex.to_json_line(), "rt.jsonl").unwrap();
        assert_eq!(again.get(0), ex);
    }
}

#[test]
fn builtin_exemplar_set_is_the_folder_and_broad_bilingual_and_consistent() {
    use std::collections::{BTreeMap, BTreeSet};
    let set = ExemplarSet::builtin().unwrap();
    // The compiled-in list names every file of the folder (a file added there but not to it fails).
    let folder = ExemplarSet::load_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/exemplars")).unwrap();
    assert_eq!((set.len(), set.content_hash()), (folder.len(), folder.content_hash()));
    set.check_models(&PriceTable::builtin().unwrap()).unwrap();
    assert!(set.len() >= 400, "{}", set.len());
    let zh = set.iter().filter(|e| e.language.starts_with("zh")).count();
    assert!(zh * 10 >= set.len() * 3, "{zh} Chinese of {}", set.len());
    assert!(set.iter().any(|e| e.language == "zh-Hant") && set.iter().any(|e| e.language == "mixed"));
    let mut tiers: BTreeMap<&str, BTreeSet<semroute::Tier>> = BTreeMap::new();
    let mut pairs: BTreeMap<&str, Vec<(&str, semroute::Tier)>> = BTreeMap::new();
    for e in set.iter() {
        let semroute::exemplar::Grade::Labelled(l) = &e.grade else { panic!("{} is not hand-labelled", e.id) };
        tiers.entry(&e.category).or_default().insert(l.tier);
        if let Some(p) = &e.pair {
            pairs.entry(p).or_default().push((&e.language, l.tier));
        }
    }
    assert!(tiers.len() >= 14, "{} categories", tiers.len());
    // Difficulty varies inside every category.
    for (c, t) in &tiers {
        assert_eq!(t.len(), 3, "{c} has only tiers {t:?}");
    }
    // A task posed in two languages has one tier.
    assert!(pairs.len() >= 50, "{} pairs", pairs.len());
    for (p, members) in &pairs {
        assert!(members.len() >= 2 && members.iter().all(|m| m.1 == members[0].1), "{p}: {members:?}");
    }
}

#[test]
fn prices_that_overflow_impossible_dates_and_empty_model_names_are_refused() {
    // A price is at most 10,000 USD per million tokens: 1e308 would make every cost `inf`.
    for field in ["input_per_mtok = 1.0", "output_per_mtok = 2.0", "cached_input_per_mtok = 0.1"] {
        let name = field.split(' ').next().unwrap();
        for huge in ["1e308", "10000.01", "1.7976931348623157e308"] {
            let body = BODY.replace(field, &format!("{name} = {huge}"));
            let msg = PriceTable::from_toml_str(&format!("# header\n{}", price("big", &body)), "prices.toml").unwrap_err().to_string();
            assert!(msg.contains("prices.toml:2") && msg.contains("`big`") && msg.contains(name) && msg.contains("10,000"), "{msg}");
        }
        let body = BODY.replace(field, &format!("{name} = 10000.0"));
        PriceTable::from_toml_str(&price("dear", &body), "prices.toml").unwrap();
    }

    // Dates are real calendar days; a month or a year alone stays allowed.
    for good in ["2024-02-29", "2000-02-29", "2026-01-31", "2026-04-30", "2026-12-31", "2026-02", "2026-12", "2026"] {
        PriceTable::from_toml_str(&price("d", &BODY.replace("2025-01-01", good)), "p.toml").unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    let impossible = ["2026-02-31", "2025-02-29", "1900-02-29", "2026-04-31", "2026-13-01", "2026-00-10", "2026-01-00"];
    let malformed = ["2026-13", "2026-00", "2026-1-01", "26-01-01", "２０２６-01-01"];
    for bad in impossible.into_iter().chain(malformed) {
        let text = format!("\n{}", price("d", &BODY.replace("2025-01-01", bad)));
        let msg = PriceTable::from_toml_str(&text, "p.toml").unwrap_err().to_string();
        assert!(msg.contains("p.toml:2") && msg.contains("as_of") && msg.contains(bad), "{bad}: {msg}");
    }

    // A model needs a name: empty or blank is refused, naming file and line.
    for name in ["", "   ", "\t"] {
        let text = format!("{}\n{}", price("ok", BODY), price(name, BODY));
        let msg = PriceTable::from_toml_str(&text, "prices.toml").unwrap_err().to_string();
        assert!(msg.contains("prices.toml:11") && msg.contains("model name"), "{name:?}: {msg}");
    }
}

#[test]
fn a_binary_file_names_its_line_and_a_byte_order_mark_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("b.jsonl");
    std::fs::write(&bin, [GOOD.as_bytes(), b"\n\xff\xfe\x00binary"].concat()).unwrap();
    let msg = ExemplarSet::load_file(&bin).unwrap_err().to_string();
    assert!(msg.contains("b.jsonl:2") && msg.contains("not UTF-8") && msg.contains("0xff"), "{msg}");
    let bom = dir.path().join("bom.jsonl");
    std::fs::write(&bom, ["\u{feff}", GOOD, "\n"].concat()).unwrap();
    assert_eq!(ExemplarSet::load_file(&bom).unwrap().len(), 1);
    assert_eq!(ExemplarSet::load_dir(dir.path()).unwrap_err().to_string(), msg);
}
