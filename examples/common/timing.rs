//! The exemplar sets the timing examples (`startup`, `store_bench`) share: prompts of the shared
//! datasets, cycled with a numbered suffix when more are asked for than there are, each
//! hand-labelled `cheap` with a reason saying it is for timing only. The same `n` gives the same
//! set (and so the same cached vectors) in every example.

use std::path::PathBuf;

use semroute::exemplar::{Exemplar, Grade, TierLabel};
use semroute::{ExemplarSet, Tier};

/// The distinct non-empty prompts of `dir/*.jsonl`, in file order.
pub fn prompts(dir: &std::path::Path) -> Result<Vec<String>, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e} (give --data or set SEMROUTE_DATA)", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        for (i, line) in text.lines().enumerate() {
            let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("{}:{}: {e}", f.display(), i + 1))?;
            if let Some(p) = v.get("prompt").and_then(|p| p.as_str()).filter(|p| !p.trim().is_empty()) {
                out.push(p.to_string());
            }
        }
    }
    if out.is_empty() {
        return Err(format!("no prompts in {}", dir.display()));
    }
    Ok(out)
}

/// The command-line arguments that choose a timing set.
#[derive(clap::Args)]
pub struct SetArgs {
    /// Number of exemplars.
    #[arg(long, default_value_t = 10_000)]
    pub exemplars: usize,
    /// Folder of the shared datasets (default: `$SEMROUTE_DATA`, else `../shared/data`).
    #[arg(long)]
    pub data: Option<PathBuf>,
}

impl SetArgs {
    /// The set these arguments choose, and how many distinct prompts it cycles through.
    pub fn load(&self) -> Result<(ExemplarSet, usize), String> {
        timing_set(self.exemplars, self.data.clone())
    }
}

/// `n` timing exemplars from the datasets in `data` (default `$SEMROUTE_DATA`, else
/// `../shared/data`), and how many distinct prompts they cycle through.
fn timing_set(n: usize, data: Option<PathBuf>) -> Result<(ExemplarSet, usize), String> {
    let data = data
        .or_else(|| std::env::var_os("SEMROUTE_DATA").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data")));
    let base = prompts(&data)?;
    let items: Vec<Exemplar> = (0..n)
        .map(|i| {
            let p = &base[i % base.len()];
            let round = i / base.len();
            Exemplar::new(
                format!("startup-{i}"),
                if round == 0 { p.clone() } else { format!("{p}\n(variant {round})") },
                Grade::Labelled(TierLabel::new(Tier::Cheap, "timing only, not a real label", 100)),
            )
            .with_category("startup-timing")
            .with_source("startup example: shared dataset prompt, synthetic label for timing only")
        })
        .collect();
    Ok((ExemplarSet::from_exemplars(items).map_err(|e| e.to_string())?, base.len()))
}
