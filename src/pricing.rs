//! Prices per model, and the token counts they multiply.
//!
//! A [`PriceTable`] is loaded from TOML: one `[models."<name>"]` table per model with its provider,
//! USD per million input / output / cached-input tokens, context window, [`Tier`], jurisdiction,
//! and the dated source of the price.
//!
//! ```
//! use semroute::pricing::{PriceTable, Tier};
//!
//! let table = PriceTable::from_toml_str(r#"
//! [models."deepseek-chat"]
//! provider = "deepseek"
//! input_per_mtok = 0.28
//! output_per_mtok = 0.42
//! cached_input_per_mtok = 0.028
//! context_window = 128000
//! tier = "cheap"
//! jurisdiction = "CN"
//! source = "https://api-docs.deepseek.com/quick_start/pricing"
//! as_of = "2025-09-29"
//! "#, "prices.toml")?;
//! let price = table.get("deepseek-chat").unwrap();
//! assert_eq!(price.tier, Some(Tier::Cheap));
//! // 1,000 input tokens and 500 output tokens:
//! assert!((price.cost_usd(1_000, 500) - 0.00049).abs() < 1e-12);
//! # Ok::<(), semroute::Error>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How capable a model is, coarsely: hand-labelled exemplars name the weakest tier that answers
/// them well, and every model in a [`PriceTable`] has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Tier {
    /// Low-cost models for routine work (Kimi, DeepSeek, Qwen, MiniMax, GLM, Flash, mini, Haiku).
    Cheap,
    /// Mid-priced models for solid but not frontier-hard work.
    Mid,
    /// Frontier models for proofs, hard design and high-stakes reasoning.
    Strong,
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tier::Cheap => "cheap",
            Tier::Mid => "mid",
            Tier::Strong => "strong",
        })
    }
}

/// One model's prices and facts, as written in the price table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ModelPrice {
    /// Who serves the model (`anthropic`, `openai`, `deepseek`, ...).
    pub provider: String,
    /// USD per million input tokens (0 to [`MAX_USD_PER_MTOK`] in a loaded table, like every price).
    pub input_per_mtok: f64,
    /// USD per million output tokens.
    pub output_per_mtok: f64,
    /// USD per million cached input tokens (a prompt-cache hit); `None` where the provider has no
    /// cache price or it is not known.
    #[serde(default)]
    pub cached_input_per_mtok: Option<f64>,
    /// USD per million input tokens written into the prompt cache, where the provider bills a
    /// cache write (Anthropic: 1.25 times the input price for its five-minute cache); `None`:
    /// an uncached token costs the input price whether or not it is cached for later.
    #[serde(default)]
    pub cache_write_per_mtok: Option<f64>,
    /// How long a cached prompt prefix lives after its last use, in seconds; `None`:
    /// [`DEFAULT_CACHE_TTL_SECS`]. Sessions forget a model's cache after it.
    #[serde(default)]
    pub cache_ttl_secs: Option<u64>,
    /// The shortest prompt prefix the provider caches, in tokens; `None`:
    /// [`DEFAULT_CACHE_MIN_TOKENS`].
    #[serde(default)]
    pub cache_min_tokens: Option<u64>,
    /// Largest prompt + answer the model accepts, in tokens; `None` where it is not known (then
    /// no context-fit check applies to the model).
    #[serde(default)]
    pub context_window: Option<u64>,
    /// Capability tier, when known. Only hand-labelled exemplars need it (a label names the
    /// weakest tier that answers well); measured exemplars and benchmarks do without.
    #[serde(default)]
    pub tier: Option<Tier>,
    /// The provider's legal home (ISO code such as `US`, `CN`, `FR`), for data-residency rules.
    #[serde(default)]
    pub jurisdiction: Option<String>,
    /// Where the price was read.
    pub source: String,
    /// When the price was read or published: a calendar date `YYYY-MM-DD` (a day that exists), or
    /// `YYYY-MM` or `YYYY` when only that is known.
    pub as_of: String,
    /// Whether the price was checked against a page; `false` marks an unconfirmed figure.
    #[serde(default = "yes")]
    pub confirmed: bool,
}

fn yes() -> bool {
    true
}

impl ModelPrice {
    /// Expected USD for `input_tokens` in and `output_tokens` out, at list (uncached) prices.
    pub fn cost_usd(&self, input_tokens: u64, output_tokens: u64) -> f64 {
        self.cost_of(&crate::chat::Usage::new(input_tokens, output_tokens))
    }

    /// USD for the tokens of `usage`: cache hits at the cached-input price (the input price where
    /// the table has none), cache writes at the write price (likewise), the rest of the prompt at
    /// the input price and the answer at the output price.
    ///
    /// ```
    /// use semroute::chat::Usage;
    /// use semroute::PriceTable;
    ///
    /// let prices = PriceTable::builtin()?;
    /// let kimi = prices.get("kimi-k2.6").unwrap(); // $0.95 in, $0.16 cached, $4 out
    /// let usage = Usage { cached_input_tokens: 900_000, ..Usage::new(1_000_000, 0) };
    /// assert!((kimi.cost_of(&usage) - (0.095 + 0.144)).abs() < 1e-9);
    /// # Ok::<(), semroute::Error>(())
    /// ```
    pub fn cost_of(&self, usage: &crate::chat::Usage) -> f64 {
        // (Held to the prompt: a provider's counts are not trusted to add up.)
        let cached = usage.cached_input_tokens.min(usage.input_tokens);
        let written = usage.cache_write_tokens.min(usage.input_tokens - cached);
        (usage.uncached_input_tokens() as f64 * self.input_per_mtok
            + cached as f64 * self.cached_input_per_mtok.unwrap_or(self.input_per_mtok)
            + written as f64 * self.cache_write_per_mtok.unwrap_or(self.input_per_mtok)
            + usage.output_tokens as f64 * self.output_per_mtok)
            / 1_000_000.0
    }

    /// The shortest prefix this model's provider caches.
    pub fn cache_min_tokens(&self) -> u64 {
        self.cache_min_tokens.unwrap_or(DEFAULT_CACHE_MIN_TOKENS)
    }

    /// How long this model's provider keeps a cached prefix after its last use.
    pub fn cache_ttl(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.cache_ttl_secs.unwrap_or(DEFAULT_CACHE_TTL_SECS))
    }
}

/// The shortest cached prefix assumed where the price table gives none: 1,024 tokens, OpenAI's
/// and Anthropic's minimum for their larger models (shorter prompts are not cached at all).
pub const DEFAULT_CACHE_MIN_TOKENS: u64 = 1024;

/// The cache lifetime assumed where the price table gives none: five minutes, the shortest
/// that OpenAI and Anthropic document for their automatic and default prompt caches.
pub const DEFAULT_CACHE_TTL_SECS: u64 = 300;

/// The most a price in a table may be, in USD per million tokens: over a hundred times the dearest
/// price in the tables we ship ($75), and far enough inside `f64`'s range that no cost, saving or
/// percentage computed from it overflows (a price of 1e308 once printed `$inf` and `NaN%`).
pub const MAX_USD_PER_MTOK: f64 = 10_000.0;

/// The longest cache lifetime a price table may state: seven days.
pub const MAX_CACHE_TTL_SECS: u64 = 7 * 24 * 3600;

/// Per-model prices, keyed by model name. Cheap to clone (shared).
#[derive(Debug, Clone, PartialEq)]
pub struct PriceTable {
    models: Arc<BTreeMap<String, ModelPrice>>,
}

impl PriceTable {
    /// The default price table compiled into the crate (`exemplars/prices.toml`).
    pub fn builtin() -> Result<Self> {
        Self::from_toml_str(include_str!("../exemplars/prices.toml"), "<builtin:exemplars/prices.toml>")
    }

    /// Loads and validates a price table from a TOML file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml_str(&text, path)
    }

    /// Parses and validates a price table; `origin` names the source in errors.
    pub fn from_toml_str(text: &str, origin: impl AsRef<Path>) -> Result<Self> {
        let origin = origin.as_ref();
        let entries = crate::models_toml::parse::<ModelPrice>(text, origin).map_err(|e| Error::Pricing {
            at: e.at,
            model: e.model,
            message: e.message,
        })?;
        let mut models = BTreeMap::new();
        for (name, price, at) in entries {
            let bad = |message: String| Error::Pricing { at: at.clone(), model: Some(name.clone()), message };
            for (field, v) in [
                ("input_per_mtok", Some(price.input_per_mtok)),
                ("output_per_mtok", Some(price.output_per_mtok)),
                ("cached_input_per_mtok", price.cached_input_per_mtok),
                ("cache_write_per_mtok", price.cache_write_per_mtok),
            ] {
                let Some(v) = v else { continue };
                // (NaN and infinities are outside the range too.)
                if !(0.0..=MAX_USD_PER_MTOK).contains(&v) {
                    return Err(bad(format!(
                        "field `{field}` must be a USD amount from 0 to 10,000 per million tokens (the most any price may be), got {v}"
                    )));
                }
            }
            if let Some(ttl) = price.cache_ttl_secs.filter(|t| !(1..=MAX_CACHE_TTL_SECS).contains(t)) {
                return Err(bad(format!("field `cache_ttl_secs` must be from 1 second to 7 days ({MAX_CACHE_TTL_SECS}), got {ttl}")));
            }
            if price.context_window == Some(0) {
                return Err(bad("field `context_window` must be positive".into()));
            }
            if price.provider.trim().is_empty() {
                return Err(bad("field `provider` is empty".into()));
            }
            if price.source.trim().is_empty() {
                return Err(bad("field `source` is empty: say where the price came from".into()));
            }
            if !is_date(&price.as_of) {
                return Err(bad(format!(
                    "field `as_of` must be a calendar date YYYY-MM-DD (or YYYY-MM, YYYY when only that is known), got {:?}",
                    price.as_of
                )));
            }
            models.insert(name, price);
        }
        Ok(PriceTable { models: Arc::new(models) })
    }

    /// Builds a table from already-validated entries (for tests and programmatic use).
    pub fn from_models(models: impl IntoIterator<Item = (String, ModelPrice)>) -> Result<Self> {
        let models: BTreeMap<_, _> = models.into_iter().collect();
        if models.is_empty() {
            return Err(Error::Config("a price table needs at least one model".into()));
        }
        Ok(PriceTable { models: Arc::new(models) })
    }

    /// The entry for `model`, if the table lists it.
    pub fn get(&self, model: &str) -> Option<&ModelPrice> {
        self.models.get(model)
    }

    /// The entry for `model`, or an [`Error::UnknownModel`] that says where the name came from.
    pub fn require(&self, model: &str, context: &str) -> Result<&ModelPrice> {
        self.get(model).ok_or_else(|| Error::UnknownModel {
            model: model.to_string(),
            context: context.to_string(),
            known: self.names().collect::<Vec<_>>().join(", "),
        })
    }

    /// Model names, in sorted order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }

    /// `(name, price)` pairs, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ModelPrice)> {
        self.models.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of models.
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// Whether the table is empty (never true for a loaded table).
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// The model an "always use the strongest" user would pick: highest tier, then highest output
    /// price, then name. Savings are reported against it.
    pub fn strongest(&self) -> &str {
        self.iter()
            .max_by(|a, b| {
                (a.1.tier, a.1.output_per_mtok)
                    .partial_cmp(&(b.1.tier, b.1.output_per_mtok))
                    .unwrap_or(std::cmp::Ordering::Equal)
                    .then_with(|| b.0.cmp(a.0))
            })
            .map(|(name, _)| name)
            .expect("a PriceTable is never empty")
    }
}

/// `YYYY-MM-DD` naming a day that exists (leap years counted), or a coarser `YYYY-MM` / `YYYY` for
/// prices only dated that precisely.
fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    let shaped = b.iter().enumerate().all(|(i, c)| if i == 4 || i == 7 { *c == b'-' } else { c.is_ascii_digit() });
    if !(shaped && matches!(b.len(), 4 | 7 | 10)) {
        return false;
    }
    // (`get`: `None` past the end, for the coarser forms.)
    let number = |r: std::ops::Range<usize>| s.get(r).and_then(|t| t.parse::<u32>().ok());
    let (Some(year), month, day) = (number(0..4), number(5..7), number(8..10)) else {
        return false;
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    match (month, day) {
        (None, _) => true,
        (Some(m), None) => (1..=12).contains(&m),
        (Some(m), Some(d)) => {
            let days = match m {
                1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
                4 | 6 | 9 | 11 => 30,
                2 if leap => 29,
                2 => 28,
                _ => return false,
            };
            (1..=days).contains(&d)
        }
    }
}

/// Counts prompt tokens with OpenAI's `cl100k_base` BPE (via `tiktoken-rs`).
///
/// Other providers tokenise differently; cl100k is a consistent yardstick, within roughly ±20% of
/// most modern tokenizers on English, and the counts the shared datasets were measured with.
#[derive(Clone)]
pub struct TokenCounter {
    bpe: Arc<tiktoken_rs::CoreBPE>,
}

impl fmt::Debug for TokenCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenCounter(cl100k_base)")
    }
}

impl TokenCounter {
    /// The cl100k_base counter (its tables load once per process, in tens of milliseconds).
    pub fn cl100k() -> Result<Self> {
        // Built once per process and shared: routers built by the hundred (leave-one-out,
        // cross-fitting) would otherwise each load the tables.
        static BPE: std::sync::OnceLock<Arc<tiktoken_rs::CoreBPE>> = std::sync::OnceLock::new();
        if let Some(bpe) = BPE.get() {
            return Ok(TokenCounter { bpe: bpe.clone() });
        }
        let bpe = Arc::new(tiktoken_rs::cl100k_base().map_err(|e| Error::Config(format!("tiktoken: {e}")))?);
        Ok(TokenCounter { bpe: BPE.get_or_init(|| bpe).clone() })
    }

    /// Number of tokens in `text`.
    pub fn count(&self, text: &str) -> u64 {
        self.bpe.encode_ordinary(text).len() as u64
    }
}
