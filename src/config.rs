//! `semroute.toml`: one file for the router's settings and data, and for the server.
//!
//! Every key is optional; a missing one keeps the default. Relative paths are relative to the
//! file's own folder. An unknown key, a value of the wrong type or out of range is an error
//! naming the file, the line and the key ([`Error::Settings`]). The command line's flags
//! override the file. A commented example ships as `examples/semroute.toml`.
//!
//! ```
//! use semroute::config::Config;
//!
//! let text = "[router]\nquality_bar = 0.8\nk = 12\n\n[serve]\nlisten = \"127.0.0.1:9000\"\n";
//! let config = Config::from_toml_str(text, "semroute.toml")?;
//! assert_eq!(config.router.quality_bar, Some(0.8));
//!
//! let err = Config::from_toml_str("[router]\nquality_bar = 1.5\n", "semroute.toml").unwrap_err();
//! assert_eq!(err.to_string(), "semroute.toml:2: invalid setting (key `router.quality_bar`): must be within [0, 1], got 1.5");
//! let err = Config::from_toml_str("[router]\nqualty_bar = 0.5\n", "semroute.toml").unwrap_err();
//! assert!(err.to_string().starts_with("semroute.toml:2: invalid setting (key `router.qualty_bar`): unknown field"));
//! # Ok::<(), semroute::Error>(())
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Location, Result};
use crate::exemplar::ExemplarSet;
use crate::models_toml::line_of;
use crate::predict::{LowRankSettings, Predictor, RidgeSettings};
use crate::pricing::PriceTable;
use crate::router::RouterBuilder;
use crate::session::{MAX_IDLE_SECS, MAX_SESSIONS};

/// The largest vector cache budget a settings file may ask for, in MiB (1 TiB).
const MAX_CACHE_MB: u64 = 1 << 20;

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// `[router]`: how prompts are routed.
    #[serde(default)]
    pub router: RouterConfig,
    /// `[serve]`: the server (used by `semroute serve`).
    #[serde(default)]
    pub serve: ServeConfig,
}

/// `[router]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RouterConfig {
    /// An exemplar JSONL file, or a folder of them (default: the built-in exemplars).
    pub exemplars: Option<PathBuf>,
    /// The price table (default: the built-in one).
    pub prices: Option<PathBuf>,
    /// The installed embedding model (default [`DEFAULT_MODEL`](crate::embed::DEFAULT_MODEL),
    /// multilingual-e5-small in int8).
    pub embedding_model: Option<String>,
    /// ONNX Runtime threads the embedding model runs on (1..=256; default: every core).
    pub embedding_threads: Option<usize>,
    /// Whether those threads spin while they wait for work (default `true`); `false` on a
    /// machine whose cores other busy processes share ([`EmbedderOptions::spinning`](crate::embed::EmbedderOptions::spinning)).
    pub embedding_spinning: Option<bool>,
    /// Predicted quality the chosen model must reach, in [0, 1].
    pub quality_bar: Option<f64>,
    /// Instead of a bar: keep this share (in (0, 1]) of the best model's measured quality, the
    /// router and its knob chosen at start (and at each reload) by cross-fitting on the exemplars,
    /// which must be measured (see
    /// [`RouterBuilder::quality_target`](crate::RouterBuilder::quality_target)).
    pub keep_quality: Option<f64>,
    /// With `keep_quality`: the model whose quality to keep a share of (priced and measured by
    /// the exemplars), instead of the best one ([`QualityTarget::of`](crate::target::QualityTarget::of)).
    pub keep_quality_of: Option<String>,
    /// Nearest exemplars consulted (1..=1000).
    pub k: Option<usize>,
    /// Standard errors a predicted quality must clear the bar by (0..=10; unset: derived from
    /// the hand labels, see [`RouterBuilder::caution`](crate::RouterBuilder::caution)).
    pub caution: Option<f64>,
    /// A fixed fallback threshold (nearest similarity, in [-1, 1]) instead of the derived rule.
    pub min_similarity: Option<f32>,
    /// Share of the exemplars the derived fallback rule would call unfamiliar (0..0.5).
    pub unfamiliar_share: Option<f64>,
    /// The safe model used when nothing similar is known.
    pub fallback_model: Option<String>,
    /// How quality is predicted: `auto`, `blend`, `kernel-ridge`, `neighbours`, `low-rank`,
    /// `ensemble` or `features`.
    pub predictor: Option<PredictorName>,
    /// The durable learning log (feedback is synced there and replayed at start).
    pub learn_log: Option<PathBuf>,
    /// Where exemplar vectors are cached (default: under the semroute home).
    pub cache_dir: Option<PathBuf>,
    /// Megabytes (MiB) the vector cache may hold (1..=1,048,576; default 1,024): the least
    /// recently used files go first, never those of the exemplars in hand.
    pub cache_max_mb: Option<u64>,
    /// A shared exemplar store, `postgresql://...` (needs the `pgvector` feature).
    pub store_url: Option<String>,
    /// The store's table (default `semroute_exemplars`): routers on the same table share
    /// exemplars.
    pub store_table: Option<String>,
    /// Agent sessions kept in memory (1..=[`MAX_SESSIONS`]; default 100,000).
    pub max_sessions: Option<usize>,
    /// Seconds after which an unused session is forgotten (1..=[`MAX_IDLE_SECS`], 30 days;
    /// default 3,600).
    pub session_idle_secs: Option<u64>,
}

/// The predictor names a config file or a flag may give.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum PredictorName {
    /// [`Predictor::Auto`].
    Auto,
    /// [`Predictor::Blend`].
    Blend,
    /// [`Predictor::KernelRidge`].
    KernelRidge,
    /// [`Predictor::Neighbours`].
    Neighbours,
    /// [`Predictor::LowRank`].
    LowRank,
    /// [`Predictor::Ensemble`].
    Ensemble,
    /// [`Predictor::Features`].
    Features,
}

impl PredictorName {
    /// The predictor this name stands for, with `ridge` as its kernel-ridge settings (usually
    /// [`RidgeSettings::for_embedder`]) and [`LowRankSettings::for_router`].
    ///
    /// ```
    /// use semroute::config::PredictorName;
    /// use semroute::predict::{Predictor, RidgeSettings};
    ///
    /// let p = "kernel-ridge".parse::<PredictorName>().unwrap().predictor(RidgeSettings::default());
    /// assert!(matches!(p, Predictor::KernelRidge(_)));
    /// ```
    pub fn predictor(self, ridge: RidgeSettings) -> Predictor {
        let low_rank = LowRankSettings::for_router();
        match self {
            PredictorName::Auto => Predictor::Auto,
            PredictorName::Blend => Predictor::Blend(ridge),
            PredictorName::KernelRidge => Predictor::KernelRidge(ridge),
            PredictorName::Neighbours => Predictor::Neighbours,
            PredictorName::LowRank => Predictor::LowRank(low_rank),
            PredictorName::Ensemble => Predictor::Ensemble(ridge, low_rank),
            PredictorName::Features => Predictor::Features(crate::predict::FeatureSettings::default()),
        }
    }

    /// The name as written in a config file or flag (`kernel-ridge`).
    pub fn name(self) -> &'static str {
        match self {
            PredictorName::Auto => "auto",
            PredictorName::Blend => "blend",
            PredictorName::KernelRidge => "kernel-ridge",
            PredictorName::Neighbours => "neighbours",
            PredictorName::LowRank => "low-rank",
            PredictorName::Ensemble => "ensemble",
            PredictorName::Features => "features",
        }
    }
}

impl std::str::FromStr for PredictorName {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(PredictorName::Auto),
            "blend" => Ok(PredictorName::Blend),
            "kernel-ridge" => Ok(PredictorName::KernelRidge),
            "neighbours" => Ok(PredictorName::Neighbours),
            "low-rank" => Ok(PredictorName::LowRank),
            "ensemble" => Ok(PredictorName::Ensemble),
            "features" => Ok(PredictorName::Features),
            _ => Err(format!("`{s}` is not a predictor (auto, blend, kernel-ridge, neighbours, low-rank, ensemble, features)")),
        }
    }
}

/// `[serve]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ServeConfig {
    /// Address to listen on (default `127.0.0.1:8080`).
    pub listen: Option<SocketAddr>,
    /// The providers file: per model its protocol, base URL, model id and key variable.
    pub providers: Option<PathBuf>,
    /// The client-keys file (one key per line).
    pub client_keys: Option<PathBuf>,
    /// Serve without client keys (only sensible on loopback).
    pub no_auth: Option<bool>,
    /// Where each answer's tokens and cost are appended (default `semroute-usage.jsonl`).
    pub usage_log: Option<PathBuf>,
    /// Log prompt text and put it in the usage log.
    pub log_prompts: Option<bool>,
    /// Serve `/metrics` without a client key.
    pub public_metrics: Option<bool>,
    /// Largest request body accepted, in bytes (at least 1).
    pub max_body_bytes: Option<usize>,
    /// Answered requests remembered for feedback (at least 1).
    pub remember: Option<usize>,
    /// Attempts per model for 429 / 5xx before failing over (1..=10).
    pub max_attempts: Option<u32>,
    /// Seconds a client has to send a request's head (more than 0).
    pub header_timeout_secs: Option<f64>,
    /// Seconds requests in flight get at shutdown (0 or more).
    pub shutdown_secs: Option<f64>,
}

impl Config {
    /// Reads and checks a config file; relative paths in it become relative to its folder.
    ///
    /// # Errors
    /// [`Error::Io`] when it cannot be read, [`Error::Settings`] naming file, line and key for
    /// anything wrong in it.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut config = Self::from_toml_str(&text, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            config.resolve(dir);
        }
        Ok(config)
    }

    /// Parses and checks a config file's text; `origin` names it in errors. Paths stay as given.
    ///
    /// # Errors
    /// As [`from_file`](Self::from_file).
    pub fn from_toml_str(text: &str, origin: impl AsRef<Path>) -> Result<Self> {
        let origin = origin.as_ref();
        let config: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            Error::Settings {
                at: Location { file: origin.into(), line },
                key: line.and_then(|l| key_at(text, l)),
                message: e.message().to_string(),
            }
        })?;
        config.check(text, origin)?;
        Ok(config)
    }

    /// Makes relative paths relative to `dir`.
    fn resolve(&mut self, dir: &Path) {
        let r = &mut self.router;
        let s = &mut self.serve;
        for p in
            [&mut r.exemplars, &mut r.prices, &mut r.learn_log, &mut r.cache_dir, &mut s.providers, &mut s.client_keys, &mut s.usage_log]
                .into_iter()
                .flatten()
        {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        }
    }

    /// Values out of range, located at their line of `text`.
    fn check(&self, text: &str, origin: &Path) -> Result<()> {
        match self.problem() {
            None => Ok(()),
            Some((section, key, message)) => Err(Error::Settings {
                at: Location { file: origin.into(), line: line_of_key(text, section, key) },
                key: Some(format!("{section}.{key}")),
                message,
            }),
        }
    }

    /// Checks the values again once flags have been laid over the file (a file's own values are
    /// checked when it is read, where the error can name its line).
    ///
    /// # Errors
    /// [`Error::Settings`] naming the key (`serve.header_timeout_secs`, ...) and not a line.
    pub fn check_values(&self) -> Result<()> {
        match self.problem() {
            None => Ok(()),
            Some((section, key, message)) => {
                Err(Error::Settings { at: Location::file("<settings and flags>"), key: Some(format!("{section}.{key}")), message })
            }
        }
    }

    /// The first value out of range: its table, key and what is wrong.
    fn problem(&self) -> Option<(&'static str, &'static str, String)> {
        let bad = |section: &'static str, key: &'static str, message: String| Some((section, key, message));
        let r = &self.router;
        if let Some(b) = r.quality_bar.filter(|b| !(0.0..=1.0).contains(b)) {
            return bad("router", "quality_bar", format!("must be within [0, 1], got {b}"));
        }
        if let Some(x) = r.keep_quality {
            if !(x > 0.0 && x <= 1.0) {
                return bad("router", "keep_quality", format!("must be more than 0 and at most 1, got {x}"));
            }
            if r.quality_bar.is_some() {
                return bad("router", "keep_quality", "is a target the bar is tuned to: set it or quality_bar, not both".into());
            }
        }
        if let Some(m) = &r.keep_quality_of {
            if r.keep_quality.is_none() {
                return bad("router", "keep_quality_of", "names the model of a quality target: set keep_quality too".into());
            }
            if m.trim().is_empty() {
                return bad("router", "keep_quality_of", "must name a model".into());
            }
        }
        if let Some(k) = r.k.filter(|k| !(1..=1000).contains(k)) {
            return bad("router", "k", format!("must be within 1..=1000, got {k}"));
        }
        if let Some(z) = r.caution.filter(|z| !(0.0..=10.0).contains(z)) {
            return bad("router", "caution", format!("must be within [0, 10], got {z}"));
        }
        if let Some(n) = r.embedding_threads.filter(|n| !(1..=256).contains(n)) {
            return bad("router", "embedding_threads", format!("must be within 1..=256, got {n}"));
        }
        if let Some(s) = r.min_similarity.filter(|s| !(-1.0..=1.0).contains(s)) {
            return bad("router", "min_similarity", format!("must be within [-1, 1], got {s}"));
        }
        if let Some(s) = r.unfamiliar_share.filter(|s| !(*s > 0.0 && *s < 0.5)) {
            return bad("router", "unfamiliar_share", format!("must be more than 0 and less than 0.5, got {s}"));
        }
        if let Some(mb) = r.cache_max_mb.filter(|mb| !(1..=MAX_CACHE_MB).contains(mb)) {
            return bad("router", "cache_max_mb", format!("must be within 1..={MAX_CACHE_MB} (1 TiB), got {mb}"));
        }
        if let Some(n) = r.max_sessions.filter(|n| !(1..=MAX_SESSIONS).contains(n)) {
            return bad("router", "max_sessions", format!("must be within 1..={MAX_SESSIONS}, got {n}"));
        }
        if let Some(t) = r.session_idle_secs.filter(|t| !(1..=MAX_IDLE_SECS).contains(t)) {
            return bad("router", "session_idle_secs", format!("must be within 1..={MAX_IDLE_SECS} (30 days), got {t}"));
        }
        if r.store_table.is_some() && r.store_url.is_none() {
            return bad("router", "store_table", "names a table, but no `store_url` says where".into());
        }
        if r.store_url.is_some() && !cfg!(feature = "pgvector") {
            return bad("router", "store_url", "this build has no shared store (build with the `pgvector` feature)".into());
        }
        let s = &self.serve;
        if s.max_body_bytes == Some(0) {
            return bad("serve", "max_body_bytes", "must be at least 1".into());
        }
        if s.remember == Some(0) {
            return bad("serve", "remember", "must be at least 1".into());
        }
        if let Some(n) = s.max_attempts.filter(|n| !(1..=10).contains(n)) {
            return bad("serve", "max_attempts", format!("must be within 1..=10, got {n}"));
        }
        if let Some(t) = s.header_timeout_secs.filter(|t| !(t.is_finite() && *t > 0.0 && *t <= 3600.0)) {
            return bad("serve", "header_timeout_secs", format!("must be more than 0 and at most 3600, got {t}"));
        }
        if let Some(t) = s.shutdown_secs.filter(|t| !(t.is_finite() && (0.0..=3600.0).contains(t))) {
            return bad("serve", "shutdown_secs", format!("must be within [0, 3600], got {t}"));
        }
        if s.no_auth == Some(true) && s.client_keys.is_some() {
            return bad("serve", "no_auth", "give either `client_keys` or `no_auth = true`, not both".into());
        }
        None
    }
}

impl RouterConfig {
    /// A router builder with these settings: the exemplars, prices, embedding model and store
    /// loaded, the knobs set. What is not set keeps the builder's default.
    ///
    /// ```no_run
    /// let config = semroute::config::Config::from_file("semroute.toml")?;
    /// let router = config.router.builder()?.build()?;
    /// # Ok::<(), semroute::Error>(())
    /// ```
    ///
    /// # Errors
    /// What loading the files, the model or the store returns (each names its file or place).
    pub fn builder(&self) -> Result<RouterBuilder> {
        let mut b = RouterBuilder::default();
        let mut ridge = RidgeSettings::default();
        if self.embedding_model.is_some() || self.embedding_threads.is_some() || self.embedding_spinning.is_some() {
            let name = self.embedding_model.as_deref().unwrap_or(crate::embed::DEFAULT_MODEL);
            let defaults = crate::embed::EmbedderOptions::default();
            let options = crate::embed::EmbedderOptions {
                threads: self.embedding_threads.or(defaults.threads),
                spinning: self.embedding_spinning.unwrap_or(defaults.spinning),
                ..defaults
            };
            let embedder = crate::embed::load_installed_with(name, &options)?;
            ridge = RidgeSettings::for_embedder(embedder.as_ref());
            b = b.embedder(embedder);
        }
        if let Some(p) = self.predictor {
            b = b.predictor(p.predictor(ridge));
        }
        if let Some(p) = &self.exemplars {
            b = b.exemplars(if p.is_file() { ExemplarSet::load_file(p)? } else { ExemplarSet::load_dir(p)? });
        }
        if let Some(p) = &self.prices {
            b = b.prices(PriceTable::from_file(p)?);
        }
        if let Some(x) = self.quality_bar {
            b = b.quality_bar(x);
        }
        if let Some(x) = self.keep_quality {
            let target = crate::target::QualityTarget::keep(x);
            b = b.quality_target(match &self.keep_quality_of {
                Some(m) => target.of(m.clone()),
                None => target,
            });
        }
        if let Some(k) = self.k {
            b = b.k(k);
        }
        if let Some(z) = self.caution {
            b = b.caution(z);
        }
        if let Some(s) = self.min_similarity {
            b = b.min_similarity(s);
        }
        if let Some(s) = self.unfamiliar_share {
            b = b.unfamiliar_share(s);
        }
        if let Some(m) = &self.fallback_model {
            b = b.fallback_model(m.clone());
        }
        if let Some(p) = &self.learn_log {
            b = b.feedback_log(p);
        }
        if let Some(p) = &self.cache_dir {
            b = b.cache_dir(p);
        }
        if let Some(mb) = self.cache_max_mb {
            b = b.cache_budget(mb.saturating_mul(1 << 20));
        }
        if self.max_sessions.is_some() || self.session_idle_secs.is_some() {
            let mut sessions = crate::session::SessionSettings::default();
            if let Some(n) = self.max_sessions {
                sessions = sessions.max_sessions(n);
            }
            if let Some(t) = self.session_idle_secs {
                sessions = sessions.idle_secs(t);
            }
            b = b.sessions(sessions);
        }
        if let Some(url) = &self.store_url {
            b = with_store(b, url, self.store_table.as_deref())?;
        }
        Ok(b)
    }
}

#[cfg(feature = "pgvector")]
fn with_store(b: RouterBuilder, url: &str, table: Option<&str>) -> Result<RouterBuilder> {
    let mut store = crate::store::PgStore::builder(url);
    if let Some(t) = table {
        store = store.table(t);
    }
    // One store for the exemplars and the agent sessions: any replica can take a session's next step.
    let store = std::sync::Arc::new(store.build()?);
    Ok(b.store(store.clone()).session_store(store))
}

#[cfg(not(feature = "pgvector"))]
fn with_store(_: RouterBuilder, _: &str, _: Option<&str>) -> Result<RouterBuilder> {
    Err(Error::Config("`store_url` needs the `pgvector` feature, which this build lacks".into()))
}

#[cfg(feature = "server")]
impl ServeConfig {
    /// The server's options: the providers file and the client keys read, the rest set; what is
    /// not set keeps [`ServeOptions::new`](crate::serve::ServeOptions::new)'s default.
    /// `exemplars` and `prices` are where reloads re-read from.
    ///
    /// # Errors
    /// [`Error::Config`] without a providers file, or with neither client keys nor `no_auth`;
    /// what reading the providers and keys files returns.
    pub fn options(&self, router: &RouterConfig) -> Result<crate::serve::ServeOptions> {
        let providers =
            self.providers.as_ref().ok_or_else(|| Error::Config("no providers file: give `providers` in [serve] or --providers".into()))?;
        let mut o = crate::serve::ServeOptions::new(crate::provider::Providers::from_file(providers)?);
        o.client_keys = match (&self.client_keys, self.no_auth.unwrap_or(false)) {
            (Some(p), false) => Some(crate::serve::ClientKeys::from_file(p)?),
            (None, true) => None,
            (Some(_), true) => return Err(Error::Config("give either client keys or no_auth, not both".into())),
            (None, false) => {
                return Err(Error::Config("give --client-keys FILE (one key per line), or --no-auth to serve without client keys".into()))
            }
        };
        let secs = |s: f64| std::time::Duration::try_from_secs_f64(s).map_err(|_| Error::Config(format!("{s} is not a number of seconds")));
        if let Some(p) = &self.usage_log {
            o.usage_log = p.clone();
        }
        o.log_prompts = self.log_prompts.unwrap_or(o.log_prompts);
        o.public_metrics = self.public_metrics.unwrap_or(o.public_metrics);
        o.max_body_bytes = self.max_body_bytes.unwrap_or(o.max_body_bytes);
        o.remember = self.remember.unwrap_or(o.remember);
        o.max_attempts = self.max_attempts.unwrap_or(o.max_attempts);
        if let Some(t) = self.header_timeout_secs {
            o.header_timeout = secs(t)?;
        }
        if let Some(t) = self.shutdown_secs {
            o.shutdown_deadline = secs(t)?;
        }
        o.reload_exemplars = router.exemplars.clone();
        o.reload_prices = router.prices.clone();
        Ok(o)
    }
}

/// The table a line sits in (`router`, `serve`), from the last `[header]` above it.
fn section_of(text: &str, line: usize) -> Option<&str> {
    text.lines().take(line).filter_map(|l| l.trim().strip_prefix('[')?.split(']').next()).last().map(str::trim)
}

/// `section.key` for the `key = value` on `line` (1-based), if the line is one.
fn key_at(text: &str, line: usize) -> Option<String> {
    let l = text.lines().nth(line.checked_sub(1)?)?;
    let (key, _) = l.split_once('=')?;
    let key = key.trim().trim_matches('"');
    if key.is_empty() || key.starts_with('[') {
        return None;
    }
    Some(match section_of(text, line) {
        Some(s) => format!("{s}.{key}"),
        None => key.to_string(),
    })
}

/// The line of `key = ...` inside `[section]`.
fn line_of_key(text: &str, section: &str, key: &str) -> Option<usize> {
    (1..=text.lines().count()).find(|&n| key_at(text, n).as_deref() == Some(&format!("{section}.{key}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::from_toml_str(text, "s.toml").unwrap_err().to_string()
    }

    #[test]
    fn errors_name_file_line_and_key() {
        assert_eq!(err("[router]\nk = 0\n"), "s.toml:2: invalid setting (key `router.k`): must be within 1..=1000, got 0");
        assert_eq!(
            err("[router]\n\nsession_idle_secs = 0\n"),
            "s.toml:3: invalid setting (key `router.session_idle_secs`): must be within 1..=2592000 (30 days), got 0"
        );
        assert!(err("[serve]\n# a comment\nlisten = \"not an address\"\n").starts_with("s.toml:3: invalid setting (key `serve.listen`)"));
        assert!(err("[serve]\nmax_attempts = \"3\"\n").starts_with("s.toml:2: invalid setting (key `serve.max_attempts`)"));
        assert!(err("[routr]\nk = 3\n").starts_with("s.toml:1: invalid setting"), "{}", err("[routr]\nk = 3\n"));
        assert!(err("[router]\npredictor = \"magic\"\n").contains("router.predictor"));
        assert!(err("[router]\nk = 3\nk = 4\n").starts_with("s.toml:3"), "{}", err("[router]\nk = 3\nk = 4\n"));
        assert!(err("[serve]\nheader_timeout_secs = 0\n").contains("more than 0"));
        assert_eq!(
            err("[router]\nembedding_threads = 0\n"),
            "s.toml:2: invalid setting (key `router.embedding_threads`): must be within 1..=256, got 0"
        );
        assert!(err("[router]\nembedding_spinning = \"no\"\n").starts_with("s.toml:2: invalid setting (key `router.embedding_spinning`)"));
        assert_eq!(
            err("[router]\nkeep_quality = 1.5\n"),
            "s.toml:2: invalid setting (key `router.keep_quality`): must be more than 0 and at most 1, got 1.5"
        );
        assert!(err("[router]\nquality_bar = 0.8\nkeep_quality = 0.9\n").contains("set it or quality_bar, not both"));
        assert!(err("[router]\nkeep_quality_of = \"gpt-4o\"\n").contains("set keep_quality too"));
        assert_eq!(
            err("[router]\ncache_max_mb = 0\n"),
            "s.toml:2: invalid setting (key `router.cache_max_mb`): must be within 1..=1048576 (1 TiB), got 0"
        );
        let c = Config::from_toml_str("[router]\ncache_max_mb = 200\n", "s.toml").unwrap();
        assert_eq!(c.router.cache_max_mb, Some(200));
    }

    #[test]
    fn relative_paths_follow_the_file() {
        let dir = std::env::temp_dir().join(format!("semroute-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("semroute.toml");
        std::fs::write(&path, "[router]\nprices = \"p.toml\"\nexemplars = \"/abs/ex\"\n[serve]\nproviders = \"sub/providers.toml\"\n")
            .unwrap();
        let c = Config::from_file(&path).unwrap();
        assert_eq!(c.router.prices, Some(dir.join("p.toml")));
        assert_eq!(c.router.exemplars, Some(PathBuf::from("/abs/ex")));
        assert_eq!(c.serve.providers, Some(dir.join("sub/providers.toml")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let text = include_str!("../examples/semroute.toml");
        let c = Config::from_toml_str(text, "examples/semroute.toml").unwrap();
        assert!(c.serve.providers.is_some() && c.router.quality_bar.is_some());
    }
}
