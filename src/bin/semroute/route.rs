//! Routes prompts from the shell and explains each decision.
//!
//! ```text
//! semroute route "Reformat this JSON so it is indented: {\"a\":1}"
//! semroute route --json "证明存在无穷多个素数"
//! printf 'one prompt\nanother prompt\n' | semroute route --json
//! ```
//! With no prompt argument, prompts are read from standard input, one per line (blank lines are
//! skipped); the model is loaded once. With `--json`, exactly one JSON object is printed per
//! prompt, on its own line; a prompt that cannot be routed gives `{"line":N,"error":"..."}`
//! instead, and the exit status is then 1.
//!
//! On first use the embedding model is installed (what `semroute setup` does).

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use semroute::config::{Config, PredictorName, RouterConfig};
use semroute::{Error, RouteDecision, Router};

#[derive(clap::Args, Debug, Clone)]
#[command(about = "Route prompts to the cheapest model that answers them well enough")]
pub struct Args {
    /// Prompts to route; none means: read prompts from standard input, one per line.
    prompts: Vec<String>,
    /// Print one JSON object per prompt instead of the explanation.
    #[arg(long)]
    json: bool,
    /// An exemplar JSONL file, or a folder of them (default: the built-in exemplars).
    #[arg(long, value_name = "DIR")]
    exemplars: Option<PathBuf>,
    /// Price table TOML (default: the built-in price table).
    #[arg(long, value_name = "FILE")]
    prices: Option<PathBuf>,
    /// Predicted quality the chosen model must reach, in [0, 1].
    #[arg(long, value_name = "X")]
    quality_bar: Option<f64>,
    /// Instead of a bar: keep this share of the best model's measured quality (0.95 or 95%): the
    /// router and its knob chosen by cross-fitting on the exemplars, which must be measured
    /// (--exemplars); with a prediction setting of your own, only its bar is tuned.
    #[arg(long, value_name = "SHARE", value_parser = share)]
    keep: Option<f64>,
    /// With --keep: keep that share of this model's quality instead of the best model's (it must
    /// be priced and measured by the exemplars; it is also the safe model).
    #[arg(long, value_name = "MODEL", requires = "keep")]
    of: Option<String>,
    /// Number of nearest exemplars consulted.
    #[arg(short = 'k', value_name = "N")]
    k: Option<usize>,
    /// Below this similarity of the nearest exemplar, use the fallback model (default: a rule
    /// derived from the exemplars' own density).
    #[arg(long, value_name = "S")]
    min_similarity: Option<f32>,
    /// Standard errors a predicted quality must clear the bar by (default: derived from the
    /// hand labels, 0.75 for the built-in ones with the default embedder).
    #[arg(long, value_name = "Z")]
    caution: Option<f64>,
    /// The safe model used when no exemplar is close enough.
    #[arg(long, value_name = "MODEL")]
    fallback: Option<String>,
    /// The installed embedding model to use (a folder under <home>/models; `semroute setup`
    /// installs them).
    #[arg(long, value_name = "NAME")]
    embedding_model: Option<String>,
    /// How quality is predicted: `auto` (default: on hand labels a kernel-ridge model over every
    /// exemplar, updated by near-copies of the prompt; on measured exemplars whichever predictor
    /// cross-validates best), `kernel-ridge` (the same at any size), `blend` (its mean with the
    /// neighbours), `neighbours`, `low-rank`, `ensemble` (the neighbours, kernel ridge and low
    /// rank, a third each) or `features` (per model, a logistic regression on the prompt's
    /// features: length, digits, code and maths cues).
    #[arg(long, value_name = "P")]
    predictor: Option<PredictorName>,
    /// A settings file (`semroute.toml`, its `[router]` table); the flags above override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// A share given as 0.95 or 95%.
pub(crate) fn share(s: &str) -> Result<f64, String> {
    let (number, scale) = match s.trim().strip_suffix('%') {
        Some(p) => (p, 100.0),
        None => (s.trim(), 1.0),
    };
    let x = number.trim().parse::<f64>().map_err(|_| format!("`{s}` is not a share such as 0.95 or 95%"))? / scale;
    if x > 0.0 && x <= 1.0 {
        Ok(x)
    } else {
        Err(format!("`{s}` is not a share in (0, 1] (0.95, or 95%)"))
    }
}

/// The settings file (if any) with the flags laid over its `[router]` table.
fn settings(args: &Args) -> Result<RouterConfig, Error> {
    let mut r = match &args.config {
        Some(path) => Config::from_file(path)?.router,
        None => RouterConfig::default(),
    };
    let a = args.clone();
    r.exemplars = a.exemplars.or(r.exemplars.take());
    r.prices = a.prices.or(r.prices.take());
    r.quality_bar = a.quality_bar.or(r.quality_bar);
    r.keep_quality = a.keep.or(r.keep_quality);
    r.keep_quality_of = a.of.or(r.keep_quality_of.take());
    r.k = a.k.or(r.k);
    r.min_similarity = a.min_similarity.or(r.min_similarity);
    r.caution = a.caution.or(r.caution);
    r.fallback_model = a.fallback.or(r.fallback_model.take());
    r.embedding_model = a.embedding_model.or(r.embedding_model.take());
    r.predictor = a.predictor.or(r.predictor);
    Ok(r)
}

/// Builds the router, installing its model with `semroute setup`'s own code when it is missing.
fn build_with_setup(args: &Args) -> Result<Router, String> {
    let config = settings(args).map_err(|e| e.to_string())?;
    let build = || config.builder().and_then(|b| b.build());
    match build() {
        Err(Error::ModelMissing { .. }) => {
            // Only a model the set-up knows is installed, under its own name: an unknown name (or
            // a path such as ../../etc) is an error before anything runs.
            let name = config.embedding_model.as_deref().unwrap_or(semroute::embed::DEFAULT_MODEL);
            if semroute::setup::INSTALLABLE.contains(&name) {
                eprintln!("semroute: the embedding model {name} is not installed yet; installing it (semroute setup {name})");
            }
            semroute::setup::install_model(name, false).map_err(|e| e.to_string())?;
            build().map_err(|e| e.to_string())
        }
        other => other.map_err(|e| e.to_string()),
    }
}

pub fn run(args: Args) -> ExitCode {
    let router = match build_with_setup(&args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("semroute: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(t) = router.tuned() {
        eprintln!("semroute: {t}");
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut failed = false;
    let mut emit = |line: usize, prompt: Result<String, String>, out: &mut dyn Write| {
        let result = prompt.and_then(|p| router.route(&p).map_err(|e| e.to_string()));
        let written = match (&result, args.json) {
            (Ok(d), true) => writeln!(out, "{}", serde_json::to_string(d).expect("a decision serialises")),
            (Ok(d), false) => write!(out, "{}", explain(d)),
            (Err(e), true) => writeln!(out, "{}", serde_json::json!({ "line": line, "error": e })),
            (Err(e), false) => {
                eprintln!("semroute: prompt {line}: {e}");
                Ok(())
            }
        };
        failed |= result.is_err();
        written.and_then(|_| out.flush())
    };

    let io = if args.prompts.is_empty() {
        let mut stdin = std::io::stdin().lock();
        let mut buf = Vec::new();
        let mut line = 0;
        loop {
            buf.clear();
            match stdin.read_until(b'\n', &mut buf) {
                Ok(0) => break Ok(()),
                Ok(_) => {}
                Err(e) => {
                    eprintln!("semroute: reading standard input: {e}");
                    failed = true;
                    break Ok(());
                }
            }
            line += 1;
            while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                buf.pop();
            }
            let prompt = String::from_utf8(buf.clone())
                .map_err(|e| format!("line {line} of standard input is not valid UTF-8 (byte {})", e.utf8_error().valid_up_to()));
            if prompt.as_ref().is_ok_and(|p| p.trim().is_empty()) {
                continue;
            }
            if let Err(e) = emit(line, prompt, &mut out) {
                break Err(e);
            }
        }
    } else {
        args.prompts.iter().enumerate().try_for_each(|(i, p)| emit(i + 1, Ok(p.clone()), &mut out))
    };
    if let Err(e) = io {
        // A closed pipe (`| head`) is a normal way to stop.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("semroute: writing output: {e}");
            return ExitCode::from(2);
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn explain(d: &RouteDecision) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let tier = d.tier.map_or("no".to_string(), |t| t.to_string());
    let _ = writeln!(s, "→ {} ({}, {tier} tier){}", d.model, d.provider, if d.fallback { "  [fallback]" } else { "" });
    let _ = writeln!(s, "  why: {}", d.reason);
    let _ = writeln!(s, "  quality predicted by: {}", d.quality_from);
    if let Some(u) = d.unfamiliarity {
        let _ = writeln!(s, "  unfamiliarity {u:.2} (1: as close to the exemplars as they are to each other)");
    }
    let _ = writeln!(
        s,
        "  prompt {} tokens, predicted answer {} tokens, expected cost ${:.6}",
        d.input_tokens, d.predicted_output_tokens, d.expected_cost_usd
    );
    let _ = writeln!(
        s,
        "  saving against {} (${:.6}): ${:.6} ({:.1}%)",
        d.strongest_model,
        d.strongest_cost_usd,
        d.saving_usd,
        100.0 * d.saving_fraction
    );
    let _ = writeln!(s, "  nearest exemplars:");
    for n in &d.neighbours {
        let preview: String = n.prompt_preview.chars().take(50).map(|c| if c.is_control() { ' ' } else { c }).collect();
        let _ = writeln!(
            s,
            "    {:.3}  w={:.2}  {:<28} {:<20} {:<16} {}",
            n.similarity,
            n.weight,
            n.id,
            format!("{}/{}", n.category, n.language),
            n.grade,
            preview
        );
    }
    let _ = writeln!(s, "  candidates (cheapest first):");
    let _ = writeln!(s, "    {:<24} {:<7} {:>10} {:>8} {:>12}", "model", "tier", "quality", "out tok", "cost USD");
    for c in &d.candidates {
        let mark = if c.model == d.model {
            "← chosen".to_string()
        } else if let Some(why) = &c.excluded {
            format!("excluded: {why}")
        } else if c.clears_bar {
            "clears bar".to_string()
        } else {
            String::new()
        };
        let q = match (c.predicted_quality, c.quality_se) {
            (Some(q), Some(se)) => format!("{q:.2}±{se:.2}"),
            (Some(q), None) => format!("{q:.2}"),
            _ => "-".to_string(),
        };
        let _ = writeln!(
            s,
            "    {:<24} {:<7} {:>10} {:>8} {:>12.6}  {}",
            c.model,
            c.tier.map_or("-".to_string(), |t| t.to_string()),
            q,
            c.predicted_output_tokens,
            c.expected_cost_usd,
            mark
        );
    }
    s.push('\n');
    s
}
