//! The lean library: with `default-features = false` semroute pulls no HTTP server, HTTP client,
//! command-line, plotting or progress-bar crate. Read from `cargo tree` on this package (offline,
//! from the lock file); `.ci/run` also builds the lean library.

use std::collections::BTreeSet;
use std::process::Command;

/// The crates `cargo tree` lists for the library's normal dependencies with these arguments.
fn crates(features: &[&str]) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["tree", "--offline", "--locked", "-e", "normal", "--prefix", "none", "--format", "{p}"])
        .args(features)
        .output()
        .expect("run cargo tree");
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect()
}

/// The server's crates (hyper and tower are not here: the HTTP client uses them too).
const SERVER: [&str; 3] = ["axum", "matchit", "prometheus-client"];
/// HTTP: client and server share hyper, tower and rustls.
const CLIENT: [&str; 5] = ["reqwest", "hyper", "tower", "rustls", "eventsource-stream"];
const CLI: [&str; 5] = ["clap", "plotters", "indicatif", "tracing-subscriber", "dejavu"];

#[test]
fn the_lean_library_pulls_no_server_client_or_cli_crate() {
    let lean = crates(&["--no-default-features"]);
    for c in SERVER.iter().chain(&CLIENT).chain(&CLI) {
        assert!(!lean.contains(*c), "the lean library pulls {c}");
    }
    // The core is there: embedding, the index, the linear algebra.
    for c in ["ort", "tokenizers", "fst", "hnsw_rs", "nalgebra", "tiktoken-rs"] {
        assert!(lean.contains(c), "the lean library lacks {c}");
    }

    // The gateway adds the HTTP client and nothing of the server or the command line.
    let gateway = crates(&["--no-default-features", "--features", "gateway"]);
    assert!(gateway.contains("reqwest"));
    for c in SERVER.iter().chain(&CLI) {
        assert!(!gateway.contains(*c), "the gateway pulls {c}");
    }

    // The default build has it all, and is much bigger.
    let full = crates(&[]);
    for c in SERVER.iter().chain(&CLIENT).chain(&CLI) {
        assert!(full.contains(*c), "the default build lacks {c}");
    }
    eprintln!("crates: lean {}, gateway {}, default {}", lean.len(), gateway.len(), full.len());
    assert!(lean.len() + 50 < full.len(), "lean {} vs default {}", lean.len(), full.len());
}
