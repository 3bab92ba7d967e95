//! The shape shared by the price table and the providers file: one `[models."<name>"]` table per
//! model. Parsing it in one place keeps their errors alike (file, line of the entry, model).

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::Location;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelsFile {
    models: BTreeMap<String, toml::Value>,
}

/// What is wrong, where, and (when one entry is to blame) with which model.
pub(crate) struct ModelsError {
    pub at: Location,
    pub model: Option<String>,
    pub message: String,
}

/// Each model's entry, typed, with the location of its header line. At least one entry.
pub(crate) fn parse<T: DeserializeOwned>(text: &str, origin: &Path) -> Result<Vec<(String, T, Location)>, ModelsError> {
    let file: ModelsFile = toml::from_str(text).map_err(|e| ModelsError {
        at: Location { file: origin.into(), line: e.span().map(|s| line_of(text, s.start)) },
        model: None,
        message: e.message().to_string(),
    })?;
    if file.models.is_empty() {
        return Err(ModelsError { at: Location::file(origin), model: None, message: "no [models.\"<name>\"] tables".into() });
    }
    file.models
        .into_iter()
        .map(|(name, value)| {
            let at = Location { file: origin.into(), line: header_line(text, &name) };
            if name.trim().is_empty() {
                return Err(ModelsError { at, model: None, message: format!("the model name {name:?} is empty: name the model") });
            }
            match value.try_into::<T>() {
                Ok(entry) => Ok((name, entry, at)),
                Err(e) => Err(ModelsError { at, model: Some(name), message: e.message().to_string() }),
            }
        })
        .collect()
}

/// The 1-based line of a byte offset (a TOML error's span).
pub(crate) fn line_of(text: &str, byte: usize) -> usize {
    text[..byte.min(text.len())].matches('\n').count() + 1
}

/// The line of `[models."name"]` (or `[models.name]`), so errors point at the entry.
fn header_line(text: &str, name: &str) -> Option<usize> {
    let quoted = format!("[models.\"{name}\"]");
    let bare = format!("[models.{name}]");
    text.lines()
        .position(|l| {
            let l = l.trim();
            l.starts_with(&quoted) || l.starts_with(&bare)
        })
        .map(|i| i + 1)
}
