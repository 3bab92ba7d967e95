//! The crate's error type: every fallible function in semroute returns [`Result`].
//!
//! Errors about input name what was wrong and where (file, line, field), so that a user can fix
//! the data without reading our code.

use std::fmt;
use std::path::PathBuf;

/// `Result` with semroute's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The command that installs (or repairs) the embedding model, named in errors that it fixes
/// (`cargo install semroute` gives it; from code, [`setup::install_model`](crate::setup::install_model)).
pub const SETUP_COMMAND: &str = "semroute setup";

/// Where in a file a problem was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file (or a label such as `<builtin:starter.jsonl>` for data compiled into the crate).
    pub file: PathBuf,
    /// 1-based line number, when the problem is on one line.
    pub line: Option<usize>,
}

impl Location {
    /// A location at `line` (1-based) of `file`.
    pub fn line(file: impl Into<PathBuf>, line: usize) -> Self {
        Location { file: file.into(), line: Some(line) }
    }

    /// A whole-file location.
    pub fn file(file: impl Into<PathBuf>) -> Self {
        Location { file: file.into(), line: None }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}", self.file.display(), line),
            None => write!(f, "{}", self.file.display()),
        }
    }
}

/// Everything that can go wrong in semroute.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The embedding model (or ONNX Runtime) is not installed where semroute looks for it.
    #[error("embedding model not set up: {what} is missing in {dir}; run `{SETUP_COMMAND}` (or set SEMROUTE_HOME to where it was set up)")]
    ModelMissing {
        /// The folder searched.
        dir: PathBuf,
        /// The file or marker that is missing.
        what: String,
    },

    /// The model files are there but do not load or do not match their checksums.
    #[error("embedding model in {dir} is damaged ({reason}); run `{SETUP_COMMAND} --force` to reinstall it")]
    ModelCorrupt {
        /// The model folder.
        dir: PathBuf,
        /// What was found wrong.
        reason: String,
    },

    /// The embedding model failed while embedding.
    #[error("embedding failed: {0}")]
    Embedding(String),

    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// An exemplar file holds a line that is not a valid exemplar.
    #[error("{at}: invalid exemplar{}: {message}", field.as_ref().map(|f| format!(" (field `{f}`)")).unwrap_or_default())]
    Exemplar {
        /// File and line of the bad exemplar.
        at: Location,
        /// The offending field, when one is to blame.
        field: Option<String>,
        /// What is wrong with it.
        message: String,
    },

    /// An exemplar's id is already taken (in the files loaded, or by an exemplar learned or added
    /// before): nothing was added.
    #[error("{at}: invalid exemplar (field `id`): duplicate id {id:?} ({first})")]
    DuplicateId {
        /// Where the second one is.
        at: Location,
        /// The id.
        id: String,
        /// Where the first one is (`first at <file:line>` or `already at <file:line>`).
        first: String,
    },

    /// A journal (grading calls, feedback) holds a complete line that does not parse (a torn last
    /// line, one without its newline, is recovered instead).
    #[error("{at}: damaged journal line: {message}")]
    Journal {
        /// File and line.
        at: Location,
        /// What is wrong with it.
        message: String,
    },

    /// An exemplar folder holds no exemplar file, or the files hold no exemplar.
    #[error("no exemplars found in {0} (expected one or more *.jsonl files with at least one exemplar)")]
    NoExemplars(PathBuf),

    /// A price table is malformed or inconsistent.
    #[error("{at}: invalid price table{}: {message}", model.as_ref().map(|m| format!(" (model `{m}`)")).unwrap_or_default())]
    Pricing {
        /// File (and line, when known) of the problem.
        at: Location,
        /// The model entry at fault, when one is.
        model: Option<String>,
        /// What is wrong.
        message: String,
    },

    /// A model was named that the price table does not list.
    #[error("unknown model `{model}` ({context}); the price table lists: {known}")]
    UnknownModel {
        /// The name that was not found.
        model: String,
        /// Where the name came from.
        context: String,
        /// The names the table does list, comma-separated.
        known: String,
    },

    /// The prompt cannot be routed as given (for example, it is empty).
    #[error("invalid prompt: {0}")]
    InvalidPrompt(String),

    /// A chat request is not a valid OpenAI chat-completions body, or asks for something the
    /// chosen endpoint's protocol cannot express.
    #[error("invalid request: {0}")]
    InvalidRequest(String),

    /// A router setting is out of range or inconsistent.
    #[error("invalid router configuration: {0}")]
    Config(String),

    /// The nearest-neighbour index failed.
    #[error("index: {0}")]
    Index(String),

    /// A shared exemplar store (see [`store`](crate::store)) refused or failed an operation.
    #[error("exemplar store {store}: {message}")]
    Store {
        /// Which store (never with a password).
        store: String,
        /// What went wrong.
        message: String,
        /// The database client's own error, when one is behind it.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },

    /// The embedding engine (ONNX Runtime) failed to load or to run.
    #[error("embedding engine: {what}: {source}")]
    Engine {
        /// What it was doing.
        what: String,
        /// Its own error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A settings file (`semroute.toml`, see [`config`](crate::config)) holds an unknown key or a
    /// bad value.
    #[error("{at}: invalid setting{}: {message}", key.as_ref().map(|k| format!(" (key `{k}`)")).unwrap_or_default())]
    Settings {
        /// File and line.
        at: Location,
        /// The key (`section.key`), when one is to blame.
        key: Option<String>,
        /// What is wrong.
        message: String,
    },

    /// A client-keys file (`serve::ClientKeys`, the `server` feature) holds a bad key or none.
    #[error("{at}: {message}")]
    ClientKeys {
        /// File (and line) of the problem.
        at: Location,
        /// What is wrong.
        message: String,
    },

    /// A server has nothing to serve: no provider model has its key variable set.
    #[error("no model can be served: {0}")]
    NothingToServe(String),

    /// Installing a model (see [`setup`](crate::setup)) failed.
    #[error("set-up: {0}")]
    Setup(String),

    /// Work handed to tokio's blocking pool (the `*_async` methods) did not finish: it panicked or
    /// the runtime shut down.
    #[error("the {what} task did not finish: {source}")]
    Task {
        /// Which task (`routing`, `learning`, `reload`).
        what: &'static str,
        /// Why, from tokio.
        #[source]
        source: tokio::task::JoinError,
    },

    /// A provider call failed (the `gateway` feature); the [`CallError`](crate::provider::CallError)
    /// says how (`timeout`, `rate_limited`, `malformed`, ...).
    #[cfg(feature = "gateway")]
    #[error("provider call failed: {0}")]
    Provider(#[from] crate::provider::CallError),

    /// No model satisfies the request's constraints.
    #[error("no model satisfies the request: {0}")]
    NoEligibleModel(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
