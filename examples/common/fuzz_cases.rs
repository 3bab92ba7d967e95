//! Generated hostile inputs for every parser of outside input (issue #16), shared by
//! `tests/properties.rs` (a few thousand cases per parser) and `examples/fuzz.rs` (a million).
//!
//! Each parser has a generator that mostly produces *almost-valid* inputs — a valid document
//! (from the project's own files, or written by the library's own save/store) with random
//! mutations: bit flips, truncation, duplicated/deleted/swapped lines, huge numbers, NaN/inf,
//! deep nesting, unicode, empty strings — plus some pure random bytes. Every case runs under
//! `catch_unwind` with a quiet panic hook; a panic is counted and the first one's input is kept
//! (escaped, truncated) with its seed and case number, so it can be reproduced.
//!
//! Case `i` of a run with seed `s` uses its own generator seeded from `(s, i)`: a single case
//! replays without running the ones before it (`fuzz --seed S --only PARSER --from I --cases 1`).
#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

// ------------------------------------------------------------------------------------------ rng

/// A small seeded generator (splitmix64): fast, reproducible, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn for_case(seed: u64, case: u64) -> Self {
        let mut r = Rng::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ case.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        r.next();
        r
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    /// True with probability `p` in percent.
    pub fn pct(&mut self, p: u32) -> bool {
        self.below(100) < p as usize
    }
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    pub fn f64(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

// ------------------------------------------------------------------------------ the runner

/// What one parser's run found.
#[derive(Debug, Clone)]
pub struct Stats {
    pub name: &'static str,
    pub cases: u64,
    pub ok: u64,
    pub errors: u64,
    pub panics: u64,
    pub time: Duration,
    /// The first panic: case number, panic message with its location, the input (escaped, cut).
    pub first_panic: Option<(u64, String, String)>,
    /// Known library panics skipped (see `KNOWN`), with a note.
    pub skipped_known: u64,
    pub note: &'static str,
}

impl Stats {
    pub fn line(&self) -> String {
        format!(
            "{:<34} cases {:>9}  ok {:>9}  errors {:>9}  panics {:>3}  skipped(known) {:>6}  time {:>8.2} s{}",
            self.name,
            self.cases,
            self.ok,
            self.errors,
            self.panics,
            self.skipped_known,
            self.time.as_secs_f64(),
            if self.note.is_empty() { String::new() } else { format!("  ({})", self.note) }
        )
    }
    pub fn panic_report(&self, seed: u64) -> Option<String> {
        self.first_panic.as_ref().map(|(case, msg, input)| {
            format!("{}: {} panic(s); first at case {case} (seed {seed}): {msg}\n  input: {input}", self.name, self.panics)
        })
    }
}

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// A panic hook that records (instead of printing) panics on threads running cases, and keeps
/// the default behaviour everywhere else.
pub fn install_quiet_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) {
                let loc = info.location().map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column())).unwrap_or_default();
                let msg = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "<non-string payload>".into());
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(format!("panicked at {loc}: {msg}")));
            } else {
                default(info);
            }
        }));
    });
}

/// Escaped, at most `max` bytes shown.
pub fn escape(bytes: &[u8], max: usize) -> String {
    let shown: String = bytes[..bytes.len().min(max)].escape_ascii().to_string();
    if bytes.len() > max {
        format!("\"{shown}\" … ({} bytes in all)", bytes.len())
    } else {
        format!("\"{shown}\"")
    }
}

/// What a case returns: `Ok(true)` parsed, `Ok(false)` refused with an error, `Err(why)` a known
/// library panic that the case skipped on purpose (see [`KNOWN`]).
pub type Outcome = Result<bool, &'static str>;

/// Runs `cases` cases from `from` on: `case(rng, input)` fills `input` with what it feeds the
/// parser (for the report) and returns its outcome.
pub fn run(
    name: &'static str,
    note: &'static str,
    seed: u64,
    from: u64,
    cases: u64,
    mut case: impl FnMut(&mut Rng, &mut Vec<u8>) -> Outcome,
) -> Stats {
    install_quiet_hook();
    let mut st = Stats { name, cases, ok: 0, errors: 0, panics: 0, time: Duration::ZERO, first_panic: None, skipped_known: 0, note };
    let mut input = Vec::new();
    let started = Instant::now();
    QUIET.with(|q| q.set(true));
    for i in from..from + cases {
        let mut rng = Rng::for_case(seed, i);
        input.clear();
        match catch_unwind(AssertUnwindSafe(|| case(&mut rng, &mut input))) {
            Ok(Ok(true)) => st.ok += 1,
            Ok(Ok(false)) => st.errors += 1,
            Ok(Err(_)) => st.skipped_known += 1,
            Err(_) => {
                st.panics += 1;
                if st.first_panic.is_none() {
                    let msg = LAST_PANIC.with(|p| p.borrow_mut().take()).unwrap_or_default();
                    st.first_panic = Some((i, msg, escape(&input, 600)));
                }
            }
        }
    }
    QUIET.with(|q| q.set(false));
    st.time = started.elapsed();
    st
}

// ------------------------------------------------------------------------------ mutations

const TOKENS: &[&str] = &[
    "NaN",
    "nan",
    "inf",
    "-inf",
    "+inf",
    "Infinity",
    "-Infinity",
    "1e309",
    "-1e309",
    "1e-400",
    "-0",
    "0",
    "-1",
    "0.0",
    "4294967295",
    "4294967296",
    "-4294967297",
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775807",
    "-9223372036854775808",
    "99999999999999999999999999999999",
    "1.7976931348623157e308",
    "1e300",
    "5e-324",
    "\"\"",
    "null",
    "true",
    "false",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "\\",
    "\\u0000",
    "\\ud800",
    "\\udfff\\ud800",
    "\u{FEFF}",
    "é",
    "💥",
    "\u{202E}",
    "\u{0}",
    "\n",
    "\r\n",
    "\r",
    "\t",
    " ",
    "=",
    "[[",
    "]]",
    "#",
    "'''",
    "\"\"\"",
    "[models.x]",
    "[models]",
    "models = 1",
    "{}",
    "[]",
    "{\"\":{}}",
    "0x10",
    "1_000",
    "2026-02-30",
    "2026-13-01",
    "0000-00-00",
    "\u{10FFFF}",
    "\u{FFFD}",
    "日本語",
    "\\n",
    "\\\"",
];

fn interesting(rng: &mut Rng) -> Vec<u8> {
    match rng.below(12) {
        0 => "[".repeat(1 + rng.below(400)).into_bytes(),
        1 => "{\"a\":".repeat(1 + rng.below(300)).into_bytes(),
        2 => vec![b'a'; rng.below(20_000)],
        3 => {
            let n = rng.below(6);
            rng.bytes(n)
        }
        4 => format!("{}", rng.next() as i64).into_bytes(),
        5 => format!("{:e}", f64::from_bits(rng.next())).into_bytes(),
        _ => rng.pick(TOKENS).as_bytes().to_vec(),
    }
}

fn line_spans(b: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        if c == b'\n' {
            spans.push((start, i + 1));
            start = i + 1;
        }
    }
    if start < b.len() {
        spans.push((start, b.len()));
    }
    spans
}

/// One random mutation of `b`.
pub fn mutate_once(rng: &mut Rng, b: &mut Vec<u8>) {
    let len = b.len();
    let at = rng.below(len + 1);
    match rng.below(14) {
        0 if len > 0 => b[at.min(len - 1)] ^= 1 << rng.below(8),
        1 if len > 0 => b[at.min(len - 1)] = rng.next() as u8,
        2 | 3 => {
            let t = interesting(rng);
            b.splice(at..at, t);
        }
        4 if len > 0 => {
            let end = (at + 1 + rng.below(32)).min(len);
            b.drain(at.min(len)..end);
        }
        5 => b.truncate(at),
        6..=8 => {
            let spans = line_spans(b);
            if spans.is_empty() {
                return;
            }
            let (s, e) = *rng.pick(&spans);
            match rng.below(3) {
                0 => {
                    let line = b[s..e].to_vec();
                    let (_, at2) = *rng.pick(&spans);
                    b.splice(at2..at2, line);
                }
                1 => {
                    b.drain(s..e);
                }
                _ => {
                    let (s2, e2) = *rng.pick(&spans);
                    if s2 > e {
                        let second = b[s2..e2].to_vec();
                        let first = b[s..e].to_vec();
                        b.splice(s2..e2, first);
                        b.splice(s..e, second);
                    }
                }
            }
        }
        9 | 10 => {
            // Replace a run of digits (a number) with an interesting value.
            if let Some(start) = (at..len).chain(0..at).find(|&i| b[i].is_ascii_digit()) {
                let mut end = start;
                while end < len && (b[end].is_ascii_digit() || b[end] == b'.') {
                    end += 1;
                }
                let t = interesting(rng);
                b.splice(start..end, t);
            }
        }
        11 => {
            // Replace the inside of a quoted string.
            if let Some(q) = (at..len).find(|&i| b[i] == b'"') {
                if let Some(q2) = (q + 1..len).find(|&i| b[i] == b'"') {
                    let t = if rng.pct(30) { Vec::new() } else { interesting(rng) };
                    b.splice(q + 1..q2, t);
                }
            }
        }
        12 if len > 0 => {
            let s = at.min(len - 1);
            let e = (s + 1 + rng.below(64)).min(len);
            let dup = b[s..e].to_vec();
            b.splice(e..e, dup);
        }
        _ => {
            let n = 1 + rng.below(8);
            let r = rng.bytes(n);
            b.splice(at..at, r);
        }
    }
}

/// 1 to 4 mutations (more, rarely).
pub fn mutate(rng: &mut Rng, b: &mut Vec<u8>) {
    let n = if rng.pct(10) { 5 + rng.below(20) } else { 1 + rng.below(4) };
    for _ in 0..n {
        mutate_once(rng, b);
    }
}

/// Mostly mutated `valid`, sometimes left valid, sometimes pure random bytes.
pub fn almost(rng: &mut Rng, valid: Vec<u8>) -> Vec<u8> {
    match rng.below(100) {
        0..=9 => valid,
        10..=17 => {
            let n = rng.below(300);
            rng.bytes(n)
        }
        _ => {
            let mut b = valid;
            mutate(rng, &mut b);
            b
        }
    }
}

/// `FUZZ_SHOW_ERRORS=1`: print each error a parser returns (to see which checks the cases reach).
fn show_error(e: &dyn std::fmt::Display) {
    static SHOW: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *SHOW.get_or_init(|| std::env::var_os("FUZZ_SHOW_ERRORS").is_some()) {
        eprintln!("error: {}", e.to_string().chars().take(200).collect::<String>());
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn lines_of(s: &'static str) -> Vec<&'static str> {
    s.lines().filter(|l| !l.trim().is_empty()).collect()
}

fn random_string(rng: &mut Rng) -> String {
    match rng.below(8) {
        0 => String::new(),
        1 => "x".repeat(rng.below(5000)),
        2 => rng.pick(TOKENS).to_string(),
        3 => (0..rng.below(20)).map(|_| char::from_u32(rng.below(0x11_0000) as u32).unwrap_or('\u{FFFD}')).collect(),
        _ => rng.pick(&["a", "user", "gpt-x", "claude", "tool", "text", "hello world", "日本", "💥", " "]).to_string(),
    }
}

fn random_number(rng: &mut Rng) -> Value {
    match rng.below(6) {
        0 => json!(rng.next()),
        1 => json!(rng.next() as i64),
        2 => json!(rng.f64()),
        3 => json!(f64::MAX),
        4 => json!(-1),
        _ => json!(rng.below(10)),
    }
}

/// A random JSON value, nested at most `depth` deep.
pub fn random_value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth == 0 { 4 } else { 7 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.pct(50)),
        2 => random_number(rng),
        3 => Value::String(random_string(rng)),
        4 => Value::Array((0..rng.below(4)).map(|_| random_value(rng, depth - 1)).collect()),
        5 => {
            let keys = ["type", "text", "content", "role", "id", "name", "index", "delta", "usage", "x"];
            Value::Object((0..rng.below(4)).map(|_| (rng.pick(&keys).to_string(), random_value(rng, depth - 1))).collect())
        }
        _ => {
            // Deep but bounded nesting (the library is not asked to survive a stack overflow).
            let mut v = Value::String("deep".into());
            for _ in 0..rng.below(48) {
                v = if rng.pct(50) { json!([v]) } else { json!({"content": v}) };
            }
            v
        }
    }
}

/// Replaces, deletes or adds one node somewhere in `v`.
pub fn mutate_value(rng: &mut Rng, v: &mut Value) {
    mutate_at(rng, v, 0)
}

fn mutate_at(rng: &mut Rng, v: &mut Value, depth: usize) {
    // The root is replaced rarely (most cases should get past the first check).
    let descend = if depth == 0 { rng.pct(97) } else { rng.pct(80) };
    match v {
        Value::Object(m) if descend && !m.is_empty() => {
            let k = m.keys().nth(rng.below(m.len())).cloned().unwrap();
            match rng.below(if depth == 0 { 30 } else { 10 }) {
                0 => {
                    m.remove(&k);
                }
                1 => {
                    let k2 = random_string(rng);
                    let val = random_value(rng, 3);
                    m.insert(k2, val);
                }
                _ => mutate_at(rng, m.get_mut(&k).unwrap(), depth + 1),
            }
        }
        Value::Array(a) if descend && !a.is_empty() => {
            let i = rng.below(a.len());
            match rng.below(10) {
                0 => {
                    a.remove(i);
                }
                1 => {
                    let dup = a[i].clone();
                    a.insert(i, dup);
                }
                _ => mutate_at(rng, &mut a[i], depth + 1),
            }
        }
        _ => *v = random_value(rng, 3),
    }
}

// ------------------------------------------------------------------------- 1. exemplar JSONL

const EXEMPLAR_FILES: &[&str] = &[
    include_str!("../../exemplars/starter.jsonl"),
    include_str!("../../exemplars/work-code.jsonl"),
    include_str!("../../exemplars/work-domain.jsonl"),
    include_str!("../../exemplars/work-extract.jsonl"),
    include_str!("../../exemplars/work-reasoning.jsonl"),
    include_str!("../../exemplars/work-text.jsonl"),
];

fn measured_line(rng: &mut Rng, i: usize) -> String {
    let mut results = serde_json::Map::new();
    for m in 0..1 + rng.below(4) {
        let mut r = json!({"quality": rng.f64(), "output_tokens": rng.below(2000)});
        if rng.pct(50) {
            r["cost_usd"] = json!(rng.f64() / 100.0);
        }
        results.insert(format!("model-{m}"), r);
    }
    json!({"id": format!("m-{i}"), "prompt": format!("prompt number {i}"), "category": "x", "language": "en", "results": results})
        .to_string()
}

pub fn exemplar_jsonl(rng: &mut Rng, input: &mut Vec<u8>) -> Outcome {
    let lines: Vec<&str> = lines_of(rng.pick::<&str>(EXEMPLAR_FILES));
    let mut doc = String::new();
    for i in 0..1 + rng.below(6) {
        if rng.pct(30) {
            doc.push_str(&measured_line(rng, i));
        } else {
            doc.push_str(rng.pick::<&str>(&lines));
        }
        doc.push('\n');
    }
    *input = almost(rng, doc.into_bytes());
    let t = text(input);
    Ok(match semroute::ExemplarSet::from_jsonl_str(&t, "fuzz.jsonl") {
        Ok(set) => {
            let _ = set.content_hash();
            true
        }
        Err(e) => {
            show_error(&e);
            false
        }
    })
}

// ------------------------------------------------------------------------------ 2. price TOML

const PRICES: &str = include_str!("../../exemplars/prices.toml");
const PRICES_2024: &str = include_str!("../../exemplars/benchmarks/prices-2024.toml");

/// The `[models.…]` sections of a TOML file, each with its lines.
fn sections(toml: &'static str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in toml.lines() {
        if line.starts_with("[models") {
            out.push(String::new());
        }
        if let Some(s) = out.last_mut() {
            s.push_str(line);
            s.push('\n');
        }
    }
    out
}

fn number_literal(rng: &mut Rng) -> String {
    rng.pick(&[
        "nan",
        "-nan",
        "inf",
        "-inf",
        "1e300",
        "-1",
        "0",
        "0.0",
        "1e-320",
        "10000",
        "10000.0001",
        "9223372036854775807",
        "3.5",
        "1_000",
    ])
    .to_string()
}

pub struct TomlSeeds {
    prices: Vec<String>,
    providers: Vec<String>,
}

pub fn toml_seeds() -> TomlSeeds {
    let mut prices = sections(PRICES);
    prices.extend(sections(PRICES_2024));
    TomlSeeds { prices, providers: sections(PROVIDERS) }
}

fn toml_doc(rng: &mut Rng, secs: &[String], fields: &[&str]) -> Vec<u8> {
    let mut chosen: Vec<usize> = Vec::new();
    for _ in 0..1 + rng.below(4) {
        let i = rng.below(secs.len());
        // (A repeated section is a duplicate key: rarely.)
        if !chosen.contains(&i) || rng.pct(5) {
            chosen.push(i);
        }
    }
    let mut lines: Vec<String> = chosen.iter().flat_map(|&i| secs[i].lines().map(String::from).collect::<Vec<_>>()).collect();
    // Field-level changes: extreme numbers (TOML has nan and inf literals), wrong types, empty
    // strings, impossible dates, unknown fields, a deleted or a doubled field.
    for _ in 0..rng.below(4) {
        let values: &[&str] = &[
            "\"\"",
            "\" \"",
            "\"2026-02-29\"",
            "\"2024-02-29\"",
            "\"2026-13\"",
            "\"2026-1-1\"",
            "\"cheap\"",
            "\"ultra\"",
            "\"openai\"",
            "\"anthropic\"",
            "\"ftp://x\"",
            "\"http://\"",
            "true",
            "[]",
            "{}",
            "\"日本\"",
            "\"\\u0000\"",
            "1",
            "0",
            "-0.0",
        ];
        let candidates: Vec<usize> = (0..lines.len()).filter(|&j| lines[j].contains(" = ")).collect();
        if candidates.is_empty() {
            break;
        }
        let numeric: Vec<usize> =
            candidates.iter().copied().filter(|&j| fields.iter().any(|f| lines[j].starts_with(&format!("{f} ")))).collect();
        let j = if !numeric.is_empty() && rng.pct(50) { *rng.pick(&numeric) } else { *rng.pick(&candidates) };
        let key = lines[j].split(" = ").next().unwrap().trim().to_string();
        match rng.below(10) {
            0 => {
                lines.remove(j);
            }
            1 => {
                let d = lines[j].clone();
                lines.insert(j, d);
            }
            2 => lines.insert(j, format!("{} = 1", random_string(rng).replace(['\n', '\r', '=', '"'], "_"))),
            3..=5 => lines[j] = format!("{key} = {}", number_literal(rng)),
            _ => lines[j] = format!("{key} = {}", rng.pick(values)),
        }
    }
    let mut doc = lines.join("\n");
    doc.push('\n');
    if rng.pct(50) {
        almost(rng, doc.into_bytes())
    } else {
        doc.into_bytes()
    }
}

pub fn price_toml(seeds: &TomlSeeds, rng: &mut Rng, input: &mut Vec<u8>) -> Outcome {
    *input = toml_doc(rng, &seeds.prices, &["input_per_mtok", "output_per_mtok", "cached_input_per_mtok", "context_window"]);
    let t = text(input);
    Ok(match semroute::PriceTable::from_toml_str(&t, "fuzz.toml") {
        Ok(table) => {
            if !table.is_empty() {
                let _ = table.strongest();
            }
            for (_, p) in table.iter() {
                let _ = p.cost_usd(u64::MAX, u64::MAX);
                let _ = p.cost_usd(rng.next(), rng.next());
            }
            true
        }
        Err(e) => {
            show_error(&e);
            false
        }
    })
}

// -------------------------------------------------------------------------- 3. providers TOML

const PROVIDERS: &str = include_str!("../providers.example.toml");

pub fn providers_toml(seeds: &TomlSeeds, rng: &mut Rng, input: &mut Vec<u8>) -> Outcome {
    let mut secs = seeds.providers.clone();
    // Sections with the optional fields too.
    for _ in 0..2 {
        secs.push(format!(
            "[models.\"opt-{}\"]\nprotocol = \"{}\"\nbase_url = \"http://127.0.0.1:{}/v1\"\nmodel = \"m\"\napi_key_env = \"K\"\nmax_tokens = {}\ntimeout_secs = {}\nprovider = \"p\"\nmax_body_bytes = {}\nmax_stream_bytes = {}\nmax_stream_secs = {}\n",
            rng.below(5),
            rng.pick(&["openai", "anthropic"]),
            rng.below(65536),
            1 + rng.below(4096),
            1 + rng.below(120),
            1 + rng.below(1 << 20),
            1 + rng.below(1 << 26),
            1 + rng.below(600)
        ));
    }
    *input = toml_doc(rng, &secs, &["max_tokens", "timeout_secs", "max_body_bytes", "max_stream_bytes", "max_stream_secs"]);
    let t = text(input);
    Ok(match semroute::provider::Providers::from_toml_str(&t, "providers.toml") {
        Ok(p) => {
            let names: Vec<String> = p.names().map(String::from).collect();
            for n in names {
                let ep = p.get(&n).expect("a listed name");
                let _ = (ep.group(), ep.max_tokens(), ep.max_body_bytes(), ep.max_stream_bytes());
                let _ = (ep.timeout(), ep.max_stream_duration());
            }
            true
        }
        Err(e) => {
            show_error(&e);
            false
        }
    })
}

// ------------------------------------------------------------- 4. graph and vector files

/// A temp folder (on tmpfs when there is one: the cases write a file each) with a valid graph
/// file and a valid vector cache file written by the library.
pub struct Files {
    pub dir: tempfile::TempDir,
    pub graph: Vec<u8>,
    pub graph_path: PathBuf,
    pub vec_valid: Vec<u8>,
    pub cache: semroute::index::VectorCache,
    pub vec_path: PathBuf,
    pub count: usize,
    pub dim: usize,
}

pub const MODEL: &str = "fuzz-model";
pub const HASH: &str = "0123456789abcdef0123456789abcdef";

pub fn temp_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().expect("a temp dir")
}

fn unit_vectors(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let v: Vec<f32> = (0..dim).map(|_| rng.f64() as f32 - 0.5).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.into_iter().map(|x| x / norm).collect()
        })
        .collect()
}

pub fn files() -> Files {
    let dir = temp_dir();
    let (count, dim) = (40, 8);
    let vectors = unit_vectors(count, dim, 7);
    let index = semroute::index::HnswIndex::build_with(&vectors, 4, 20, 10).expect("a graph builds");
    let graph_path = dir.path().join("graph.hnsw");
    index.save(&graph_path, MODEL, HASH).expect("a graph saves");
    semroute::index::HnswIndex::load(&graph_path, MODEL, HASH, count, dim).expect("a saved graph loads");
    let graph = std::fs::read(&graph_path).unwrap();
    let cache = semroute::index::VectorCache::new(dir.path());
    cache.store(MODEL, HASH, &vectors).expect("vectors store");
    let vec_path = cache.graph_path(MODEL, HASH).with_extension("vec");
    let vec_valid = std::fs::read(&vec_path).expect("the cache file is where graph_path says, .vec");
    assert!(cache.load(MODEL, HASH, count, dim).is_some());
    Files { dir, graph, graph_path, vec_valid, cache, vec_path, count, dim }
}

fn fix_crc(b: &mut [u8]) {
    if b.len() >= 4 {
        let n = b.len() - 4;
        let crc = crc32fast::hash(&b[..n]);
        b[n..].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Splits a saved graph into (header JSON, the numbers after it, without the CRC).
fn graph_parts(b: &[u8]) -> (Value, Vec<u8>) {
    let hlen = u64::from_le_bytes(b[8..16].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&b[16..16 + hlen]).unwrap();
    let start = (16 + hlen).next_multiple_of(8);
    (header, b[start..b.len() - 4].to_vec())
}

fn graph_from_parts(header: &Value, numbers: &[u8]) -> Vec<u8> {
    let h = header.to_string().into_bytes();
    let mut out = b"SRHNSW2\n".to_vec();
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    out.resize(out.len().next_multiple_of(8), 0);
    out.extend_from_slice(numbers);
    out.extend_from_slice(&[0; 4]);
    fix_crc(&mut out);
    out
}

fn mutate_words(rng: &mut Rng, numbers: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        let words = numbers.len() / 4;
        if words == 0 {
            return;
        }
        let w = rng.below(words) * 4;
        let v: u32 = match rng.below(8) {
            0 => 0,
            1 => u32::MAX,
            2 => rng.below(64) as u32,
            3 => f32::NAN.to_bits(),
            4 => f32::INFINITY.to_bits(),
            5 => 1.0f32.to_bits(),
            6 => u32::from_le_bytes(numbers[w..w + 4].try_into().unwrap()).wrapping_add(1),
            _ => rng.next() as u32,
        };
        match rng.below(6) {
            0 => numbers.truncate(w),
            1 => numbers.splice(w..w, v.to_le_bytes()).for_each(drop),
            _ => numbers[w..w + 4].copy_from_slice(&v.to_le_bytes()),
        }
    }
}

/// The load arguments: usually the right ones, sometimes what a mutated header says.
fn load_args(rng: &mut Rng, f: &Files, header: Option<&Value>) -> (String, String, usize, usize) {
    let (mut model, mut hash, mut count, mut dim) = (MODEL.to_string(), HASH.to_string(), f.count, f.dim);
    if let Some(h) = header {
        if rng.pct(80) {
            model = h["model_id"].as_str().unwrap_or(MODEL).into();
            hash = h["content_hash"].as_str().unwrap_or(HASH).into();
            count = h["count"].as_u64().map_or(count, |c| c.min(1 << 40) as usize);
            dim = h["dim"].as_u64().map_or(dim, |d| d.min(1 << 40) as usize);
        }
    }
    if rng.pct(5) {
        count = rng.below(100);
    }
    if rng.pct(5) {
        dim = rng.below(20);
    }
    (model, hash, count, dim)
}

pub fn graph_file(f: &Files, rng: &mut Rng, input: &mut Vec<u8>) -> Outcome {
    let mut header = None;
    let bytes = match rng.below(10) {
        // Raw byte mutations: refused by the checksum (or the magic).
        0..=2 => almost(rng, f.graph.clone()),
        // Byte mutations with the CRC recomputed: the structure checks behind it.
        3..=4 => {
            let mut b = f.graph.clone();
            mutate(rng, &mut b);
            fix_crc(&mut b);
            b
        }
        // A rewritten header and/or numbers, CRC recomputed.
        _ => {
            let (mut h, mut numbers) = graph_parts(&f.graph);
            match rng.below(8) {
                0 => h["count"] = json!(rng.pick(&[0, 1, 39, 41, 1u64 << 40, u64::MAX])),
                1 => h["dim"] = json!(rng.pick(&[0, 1, 7, 9, 1u64 << 62, u64::MAX])),
                2 => h["entry"] = json!(rng.pick(&[0u64, 39, 40, u32::MAX as u64])),
                3 => h["ef_search"] = json!(rng.below(3)),
                4 => {
                    let mut ll: Vec<Value> = h["layer_links"].as_array().cloned().unwrap_or_default();
                    match rng.below(4) {
                        0 => ll.clear(),
                        1 => ll.extend((0..rng.below(20)).map(|_| json!(0))),
                        2 if !ll.is_empty() => {
                            let i = rng.below(ll.len());
                            ll[i] = json!(rng.pick(&[0u64, 1, u32::MAX as u64, u64::MAX]));
                        }
                        _ => {
                            ll.pop();
                        }
                    }
                    h["layer_links"] = Value::Array(ll);
                }
                5 => mutate_value(rng, &mut h),
                _ => {}
            }
            if rng.pct(60) {
                mutate_words(rng, &mut numbers);
            }
            let b = graph_from_parts(&h, &numbers);
            header = Some(h);
            b
        }
    };
    *input = bytes;
    let (model, hash, count, dim) = load_args(rng, f, header.as_ref());
    std::fs::write(&f.graph_path, &*input).expect("write the case");
    Ok(match semroute::index::HnswIndex::load(&f.graph_path, &model, &hash, count, dim) {
        Ok(index) => {
            // A graph that loaded must answer a search without panicking.
            use semroute::index::NeighbourIndex;
            let q = unit_vectors(1, dim, rng.next()).pop().unwrap_or_default();
            if q.len() == dim && dim > 0 {
                let _ = index.search(&q, 1 + rng.below(10));
            }
            true
        }
        Err(e) => {
            show_error(&e);
            false
        }
    })
}

pub fn vector_file(f: &Files, rng: &mut Rng, input: &mut Vec<u8>) -> Outcome {
    let mut bytes = match rng.below(10) {
        0..=3 => almost(rng, f.vec_valid.clone()),
        _ => {
            let mut b = f.vec_valid.clone();
            if rng.pct(40) {
                // Count and dimension fields.
                let at = if rng.pct(50) { 8 } else { 16 };
                let v: u64 = *rng.pick(&[0, 1, 39, 41, 7, 9, u64::MAX, 1 << 62, u32::MAX as u64 + 1]);
                b[at..at + 8].copy_from_slice(&v.to_le_bytes());
            }
            let mut body = b[24..b.len() - 4].to_vec();
            if rng.pct(70) {
                mutate_words(rng, &mut body);
            }
            b.truncate(24);
            b.extend_from_slice(&body);
            b.extend_from_slice(&[0; 4]);
            fix_crc(&mut b);
            b
        }
    };
    if rng.pct(3) {
        bytes.clear();
    }
    *input = bytes;
    let header = |at: usize| input.get(at..at + 8).map(|s| u64::from_le_bytes(s.try_into().unwrap()));
    let (mut count, mut dim) = (f.count, f.dim);
    if rng.pct(50) {
        count = header(8).map_or(count, |c| c.min(1 << 40) as usize);
        dim = header(16).map_or(dim, |d| d.min(1 << 40) as usize);
    }
    std::fs::write(&f.vec_path, &*input).expect("write the case");
    Ok(f.cache.load(MODEL, HASH, count, dim).is_some())
}

// ---------------------------------------------------------------------------------- 5. journal

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Rec {
    pub id: String,
    pub n: u64,
    pub score: f64,
    pub tags: Vec<String>,
}

pub fn journal(dir: &Path, rng: &mut Rng, input: &mut Vec<u8>) -> Outcome {
    let mut doc = String::new();
    for i in 0..rng.below(8) {
        let r = Rec { id: format!("r{i}"), n: rng.next(), score: rng.f64(), tags: vec![random_string(rng)] };
        doc.push_str(&serde_json::to_string(&r).unwrap());
        doc.push('\n');
    }
    *input = almost(rng, doc.into_bytes());
    let path = dir.join("journal.jsonl");
    std::fs::write(&path, &*input).expect("write the case");
    let ok = if rng.pct(50) {
        semroute::journal::Journal::<Rec>::open(&path).map(|(_, rec)| rec.records.len()).is_ok()
    } else {
        semroute::journal::Journal::<Value>::open(&path).map(|(_, rec)| rec.records.len()).is_ok()
    };
    Ok(ok)
}

// ----------------------------------------------------------------------------- 6. chat

fn valid_request(rng: &mut Rng) -> Value {
    let mut messages = Vec::new();
    if rng.pct(40) {
        messages.push(json!({"role": rng.pick(&["system", "developer"]), "content": "Be brief."}));
    }
    for i in 0..1 + rng.below(4) {
        messages.push(match rng.below(6) {
            0 => json!({"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "part two"}]}),
            1 => json!({"role": "assistant", "content": null, "tool_calls": [{"id": format!("call_{i}"), "type": "function",
                        "function": {"name": "lookup", "arguments": "{\"q\":\"x\"}"}}]}),
            2 => json!({"role": "tool", "tool_call_id": format!("call_{i}"), "content": "42"}),
            3 => json!({"role": "assistant", "content": "an answer"}),
            4 => json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}),
            _ => json!({"role": "user", "content": "What is 2 + 2?"}),
        });
    }
    let mut body = json!({"messages": messages});
    let extras: &[(&str, Value)] = &[
        ("model", json!("auto")),
        ("stream", json!(true)),
        ("stream_options", json!({"include_usage": true})),
        ("max_tokens", json!(256)),
        ("max_completion_tokens", json!(128)),
        ("temperature", json!(0.2)),
        ("top_p", json!(0.9)),
        ("stop", json!(["\n\n"])),
        ("n", json!(1)),
        ("tools", json!([{"type": "function", "function": {"name": "lookup", "description": "d", "parameters": {"type": "object"}}}])),
        ("tool_choice", json!(rng.pick(&["auto", "none", "required"]))),
        ("tool_choice", json!({"type": "function", "function": {"name": "lookup"}})),
        ("response_format", json!({"type": "json_object"})),
        ("user", json!("u")),
    ];
    for _ in 0..rng.below(6) {
        let (k, v) = rng.pick(extras);
        body[*k] = v.clone();
    }
    body
}

fn json_case(rng: &mut Rng, valid: Value, input: &mut Vec<u8>) -> Option<Value> {
    match rng.below(10) {
        0..=5 => {
            let mut v = valid;
            for _ in 0..1 + rng.below(3) {
                mutate_value(rng, &mut v);
            }
            *input = v.to_string().into_bytes();
            Some(v)
        }
        6 => {
            *input = valid.to_string().into_bytes();
            Some(valid)
        }
        _ => {
            *input = almost(rng, valid.to_string().into_bytes());
            serde_json::from_slice(input).ok()
        }
    }
}

pub fn chat_request(rng: &mut Rng, input: &mut Vec<u8>) -> Outcome {
    let valid = valid_request(rng);
    let Some(v) = json_case(rng, valid, input) else { return Ok(false) };
    Ok(match semroute::chat::ChatRequest::from_json(v) {
        Ok(req) => {
            let _ = (req.model(), req.stream(), req.include_usage(), req.max_tokens(), req.last_user_text());
            let _ = req.texts().count();
            let max = *rng.pick(&[1u64, 1024, u64::MAX]);
            let _ = req.to_openai("gpt-x", max);
            req.to_anthropic("claude-x", max).is_ok()
        }
        Err(e) => {
            show_error(&e);
            false
        }
    })
}

fn valid_anthropic_response(rng: &mut Rng) -> Value {
    let mut content = Vec::new();
    for i in 0..rng.below(4) {
        content.push(if rng.pct(50) {
            json!({"type": "text", "text": "hello"})
        } else {
            json!({"type": "tool_use", "id": format!("toolu_{i}"), "name": "lookup", "input": {"q": "x"}})
        });
    }
    json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": content,
           "stop_reason": rng.pick(&["end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal"]), "stop_sequence": null,
           "usage": {"input_tokens": rng.below(1000), "output_tokens": rng.below(1000)}})
}

fn valid_openai_response(rng: &mut Rng) -> Value {
    json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-x",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": rng.pick(&["stop", "length", "tool_calls"])}],
           "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})
}

pub fn chat_response(rng: &mut Rng, input: &mut Vec<u8>) -> Outcome {
    let anthropic = rng.pct(50);
    let valid = if anthropic { valid_anthropic_response(rng) } else { valid_openai_response(rng) };
    let Some(v) = json_case(rng, valid, input) else { return Ok(false) };
    let r = if anthropic {
        semroute::chat::anthropic_to_openai(&v).map(|o| {
            let _ = semroute::chat::Usage::of(&o);
        })
    } else {
        let _ = semroute::chat::Usage::of(&v);
        semroute::chat::check_openai(&v)
    };
    Ok(r.is_ok())
}

/// A valid Anthropic event sequence: (event name, data).
fn anthropic_events(rng: &mut Rng) -> Vec<(String, Value)> {
    let mut ev = vec![(
        "message_start".to_string(),
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
               "content": [], "usage": {"input_tokens": 10, "output_tokens": 1}}}),
    )];
    for b in 0..rng.below(3) {
        if rng.pct(50) {
            ev.push((
                "content_block_start".into(),
                json!({"type": "content_block_start", "index": b, "content_block": {"type": "text", "text": ""}}),
            ));
            for _ in 0..rng.below(3) {
                ev.push((
                    "content_block_delta".into(),
                    json!({"type": "content_block_delta", "index": b, "delta": {"type": "text_delta", "text": "Hi"}}),
                ));
            }
        } else {
            ev.push((
                "content_block_start".into(),
                json!({"type": "content_block_start", "index": b, "content_block": {"type": "tool_use", "id": format!("toolu_{b}"), "name": "lookup", "input": {}}}),
            ));
            ev.push((
                "content_block_delta".into(),
                json!({"type": "content_block_delta", "index": b, "delta": {"type": "input_json_delta", "partial_json": "{\"q\":"}}),
            ));
        }
        ev.push(("content_block_stop".into(), json!({"type": "content_block_stop", "index": b})));
        if rng.pct(20) {
            ev.push(("ping".into(), json!({"type": "ping"})));
        }
    }
    ev.push((
        "message_delta".into(),
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 15}}),
    ));
    ev.push(("message_stop".into(), json!({"type": "message_stop"})));
    ev
}

fn mutate_events(rng: &mut Rng, ev: &mut Vec<(String, Value)>) {
    for _ in 0..rng.below(4) {
        if ev.is_empty() {
            return;
        }
        let i = rng.below(ev.len());
        match rng.below(8) {
            0 => {
                ev.remove(i);
            }
            1 => {
                let d = ev[i].clone();
                ev.insert(i, d);
            }
            2 => {
                let j = rng.below(ev.len());
                ev.swap(i, j);
            }
            3 => ev[i].0 = random_string(rng),
            4 => ev.insert(i, ("error".into(), json!({"type": "error", "error": {"type": "overloaded_error", "message": "x"}}))),
            _ => mutate_value(rng, &mut ev[i].1),
        }
    }
}

pub fn anthropic_stream(rng: &mut Rng, input: &mut Vec<u8>) -> Outcome {
    let mut ev = anthropic_events(rng);
    if rng.pct(85) {
        mutate_events(rng, &mut ev);
    }
    for (name, data) in &ev {
        input.extend_from_slice(format!("event: {name}\ndata: {data}\n\n").as_bytes());
    }
    let mut st = semroute::chat::AnthropicStream::default();
    for (name, data) in &ev {
        if st.event(name, data).is_err() {
            return Ok(false);
        }
        let _ = st.finished();
    }
    Ok(true)
}

// --------------------------------------------------------------------------- 7. SSE over HTTP

/// One loopback server answering every call with the body set before it (split into chunks
/// where the case says), and a client with endpoints of both protocols pointed at it.
pub struct Sse {
    pub rt: tokio::runtime::Runtime,
    body: Arc<Mutex<Vec<Vec<u8>>>>,
    client: semroute::provider::Client,
    providers: semroute::provider::Providers,
    key: semroute::provider::ApiKey,
    request: semroute::chat::ChatRequest,
}

pub fn sse_server() -> Sse {
    use axum::body::{Body, Bytes};
    use axum::response::Response;
    use axum::routing::post;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let body: Arc<Mutex<Vec<Vec<u8>>>> = Arc::new(Mutex::new(Vec::new()));
    let shared = body.clone();
    let handler = move || {
        let chunks = shared.lock().unwrap().clone();
        async move {
            let stream = futures_util::stream::iter(chunks.into_iter().map(|c| Ok::<Bytes, std::convert::Infallible>(Bytes::from(c))));
            let mut r = Response::new(Body::from_stream(stream));
            r.headers_mut().insert("content-type", "text/event-stream".parse().unwrap());
            r
        }
    };
    let app = axum::Router::new().route("/o/v1/chat/completions", post(handler.clone())).route("/a/v1/messages", post(handler));
    let base = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    });
    let toml = format!(
        "[models.o]\nprotocol = \"openai\"\nbase_url = \"{base}/o/v1\"\nmodel = \"m\"\napi_key_env = \"K\"\ntimeout_secs = 5\nmax_stream_bytes = 65536\n\n\
         [models.a]\nprotocol = \"anthropic\"\nbase_url = \"{base}/a/v1\"\nmodel = \"m\"\napi_key_env = \"K\"\ntimeout_secs = 5\nmax_stream_bytes = 65536\n"
    );
    let providers = semroute::provider::Providers::from_toml_str(&toml, "providers.toml").unwrap();
    let client = semroute::provider::Client::new(semroute::provider::RetryPolicy { max_attempts: 1, ..Default::default() }).unwrap();
    let request = semroute::chat::ChatRequest::from_json(json!({"messages": [{"role": "user", "content": "hello"}]})).unwrap();
    Sse { rt, body, client, providers, key: semroute::provider::ApiKey::new("k"), request }
}

fn openai_sse(rng: &mut Rng) -> Vec<u8> {
    let mut s = String::new();
    for i in 0..rng.below(5) {
        let chunk = json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                           "choices": [{"index": 0, "delta": {"content": format!("tok{i}")}, "finish_reason": null}]});
        s.push_str(&format!("data: {chunk}\n\n"));
        if rng.pct(15) {
            s.push_str(": keep-alive\n\n");
        }
    }
    s.push_str("data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}\n\n");
    if rng.pct(10) {
        s.push_str("data: {\"error\":{\"message\":\"overloaded\"}}\n\n");
    }
    s.push_str("data: [DONE]\n\n");
    s.into_bytes()
}

pub fn sse_case(sse: &Sse, rng: &mut Rng, input: &mut Vec<u8>) -> Outcome {
    use futures_util::StreamExt;
    let anthropic = rng.pct(50);
    let mut body = if anthropic {
        let mut ev = anthropic_events(rng);
        if rng.pct(30) {
            mutate_events(rng, &mut ev);
        }
        ev.iter().map(|(n, d)| format!("event: {n}\ndata: {d}\n\n")).collect::<String>().into_bytes()
    } else {
        openai_sse(rng)
    };
    if rng.pct(15) {
        body = String::from_utf8_lossy(&body).replace('\n', "\r\n").into_bytes();
    }
    let body = almost(rng, body);
    // Chunk boundaries anywhere, even inside a UTF-8 character or a line ending.
    let mut chunks = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let most = if rng.pct(50) { 8 } else { 512 };
        let n = 1 + rng.below(most);
        let end = (at + n).min(body.len());
        chunks.push(body[at..end].to_vec());
        at = end;
    }
    *input = body;
    // A leading byte-order mark once panicked `eventsource-stream` 0.2.3 under `ChatStream`
    // (`&string[1..]` inside the 3-byte character); semroute now drops the mark before parsing.
    // Make sure the cases have some.
    if rng.pct(2) {
        input.splice(0..0, *b"\xEF\xBB\xBF");
        chunks.insert(0, b"\xEF".to_vec());
        chunks.insert(1, b"\xBB\xBF".to_vec());
    }
    *sse.body.lock().unwrap() = chunks;
    let ep = sse.providers.get(if anthropic { "a" } else { "o" }).unwrap();
    sse.rt.block_on(async {
        let mut stream = match sse.client.chat_stream(ep, &sse.key, &sse.request).await {
            Ok(s) => s,
            Err(_) => return Ok(false),
        };
        let mut ok = true;
        while let Some(item) = stream.next().await {
            if item.is_err() {
                ok = false;
            }
        }
        Ok(ok)
    })
}

// ------------------------------------------------------------------------------- 8. data sets

const CRUX: &str = include_str!("../../tests/fixtures/routing/crux-small.jsonl");

pub fn dataset(dir: &Path, rng: &mut Rng, input: &mut Vec<u8>) -> Outcome {
    let lines = lines_of(CRUX);
    let mut doc = String::new();
    for i in 0..1 + rng.below(5) {
        if rng.pct(30) {
            doc.push_str(&measured_line(rng, i));
        } else {
            doc.push_str(rng.pick::<&str>(&lines));
        }
        doc.push('\n');
    }
    *input = almost(rng, doc.into_bytes());
    let path = dir.join("data.jsonl");
    std::fs::write(&path, &*input).expect("write the case");
    Ok(semroute::eval::Dataset::load(&path).map(|d| d.records.len()).is_ok())
}

// ------------------------------------------------------------------------------- all parsers

pub const PARSERS: &[&str] = &[
    "exemplar_jsonl",
    "price_toml",
    "providers_toml",
    "graph_file",
    "vector_file",
    "journal",
    "chat_request",
    "chat_response",
    "anthropic_stream",
    "sse_http",
    "dataset",
];

/// Runs parser `name` for `cases` cases from case `from`.
pub fn run_parser(name: &str, seed: u64, from: u64, cases: u64) -> Stats {
    match name {
        "exemplar_jsonl" => run("exemplar JSONL", "", seed, from, cases, exemplar_jsonl),
        "price_toml" => {
            let s = toml_seeds();
            run("price TOML", "", seed, from, cases, |r, i| price_toml(&s, r, i))
        }
        "providers_toml" => {
            let s = toml_seeds();
            run("providers TOML", "", seed, from, cases, |r, i| providers_toml(&s, r, i))
        }
        "graph_file" => {
            let f = files();
            run("graph file (HnswIndex::load)", "", seed, from, cases, |r, i| graph_file(&f, r, i))
        }
        "vector_file" => {
            let f = files();
            run("vector file (VectorCache::load)", "", seed, from, cases, |r, i| vector_file(&f, r, i))
        }
        "journal" => {
            let d = temp_dir();
            run("journal (Journal::open)", "", seed, from, cases, |r, i| journal(d.path(), r, i))
        }
        "chat_request" => run("chat request + translation", "", seed, from, cases, chat_request),
        "chat_response" => run("chat response (anthropic/openai)", "", seed, from, cases, chat_response),
        "anthropic_stream" => run("AnthropicStream::event", "", seed, from, cases, anthropic_stream),
        "sse_http" => {
            let s = sse_server();
            run("SSE over loopback HTTP", "fewer cases: one HTTP call each", seed, from, cases, |r, i| sse_case(&s, r, i))
        }
        "dataset" => {
            let d = temp_dir();
            run("data set (Dataset::load)", "", seed, from, cases, |r, i| dataset(d.path(), r, i))
        }
        other => panic!("unknown parser {other:?}; known: {PARSERS:?}"),
    }
}
