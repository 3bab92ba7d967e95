//! [`Router`]: composes embedder, index, predictions, prices and policy into one decision.
//!
//! ```no_run
//! use semroute::{Constraints, Router};
//!
//! // Default model, built-in exemplars and price table.
//! let router = Router::builder().quality_bar(0.8).build()?;
//! let d = router.route("Reformat this JSON so it is indented: {\"a\":1}")?;
//! println!("{} (${:.6}): {}", d.model, d.expected_cost_usd, d.reason);
//!
//! // Per-request limits.
//! let d = router.route_with("证明存在无穷多个素数", &Constraints::default().block_jurisdictions(["CN"]))?;
//! assert_ne!(d.provider, "deepseek");
//! # Ok::<(), semroute::Error>(())
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::chat::ChatRequest;
use crate::decision::{Neighbour, RouteDecision};
use crate::embed::{Embedder, FastEmbedder, Home, Memo};
use crate::error::{Error, Result};
use crate::exemplar::{Exemplar, ExemplarSet, Grade};
use crate::familiar::{Familiarity, Judgement, NEIGHBOURS};
use crate::feedback::Feedback;
use crate::index::{HnswIndex, LiveIndex, VectorCache};
use crate::journal::Journal;
use crate::policy::{choose, choose_each, Choice, ChoiceInput, Constraints, Objective};
use crate::predict::{
    predict_from, select, FitCache, Fitted, LowRankSettings, ModelPrediction, Predictions, Predictor, Prior, RidgeSettings,
    KERNEL_RIDGE_MAX_EXEMPLARS, KERNEL_RIDGE_MIN_EXEMPLARS,
};
use crate::pricing::{PriceTable, Tier, TokenCounter};
use crate::session::{self, CacheView, MemorySessions, SessionInfo, SessionKey, SessionSettings, SessionState, SessionStore};
use crate::store::ExemplarStore;
use crate::target::{self, OperatingPoint, Policy, QualityTarget, RouterConfig, Tuned};

/// Routes prompts. Cheap to clone and share across threads and tokio tasks (`Send + Sync`; the
/// state is behind an `Arc`).
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

struct Inner {
    embedder: Arc<dyn Embedder>,
    tokens: TokenCounter,
    /// What the builder was given, which each generation (the build's, each reload's) is
    /// built under.
    configured: Configured,
    cache: Option<VectorCache>,
    /// The shared exemplar store, when neighbours come from one instead of an in-process index.
    store: Option<Arc<dyn ExemplarStore>>,
    /// What routing reads: one consistent snapshot per decision, swapped whole by writers.
    state: ArcSwap<State>,
    /// Serialises writers (reload, add, learn), so that none is lost; routing never takes it.
    writer: Mutex<Writer>,
    /// Serialises reloads, which build their data (embedding, indexing, a target's tuning)
    /// before they take `writer`, so that learning and additions go on meanwhile.
    reloading: Mutex<()>,
    /// Whether a background refit of the quality model is running (see [`Router::learn`]).
    refitting: AtomicBool,
    /// Agent sessions ([`Router::route_session`]).
    sessions: Arc<dyn SessionStore>,
    /// Whether the sessions are kept in process (not in a shared store).
    sessions_in_process: bool,
    session_settings: SessionSettings,
}

/// What the builder was given that every generation of data is built under.
struct Configured {
    /// The settings before a quality target tunes any (the fallback model is the state's).
    settings: Settings,
    /// The fallback model; `None`: the target's reference, else each price table's default.
    fallback: Option<String>,
    /// The similarity threshold; `None`: derived from each generation's exemplars.
    min_similarity: Option<f32>,
    /// The caution; `None`: derived from each state's hand labels where it can be
    /// ([`caution_for`]).
    caution: Option<f64>,
    /// The quality target, if one was asked for: tuned on each generation's exemplars.
    target: Option<TargetPlan>,
}

/// A quality target and what its tuning chooses among.
struct TargetPlan {
    target: QualityTarget,
    /// The router's own prediction settings, as a configuration.
    own: RouterConfig,
    /// The configurations the cross-fitting compares.
    configs: Vec<RouterConfig>,
    /// The knobs it turns.
    policies: Vec<Policy>,
}

/// What writers keep between generations.
struct Writer {
    /// Exemplars added or learned since start, with their vectors: a reload keeps them.
    added: Vec<Exemplar>,
    added_vectors: Vec<Vec<f32>>,
    /// The durable feedback log, if the router has one.
    log: Option<Journal<Feedback>>,
}

impl Writer {
    /// Keeps what was just added or learned, so that a reload keeps it too (a shared store keeps
    /// it by itself).
    fn keep(&mut self, search: &Search, items: Vec<Exemplar>, vectors: Vec<Vec<f32>>) {
        if let Search::Local(_) = search {
            self.added.extend(items);
            self.added_vectors.extend(vectors);
        }
    }
}

/// Exemplars, their index, prices: everything a reload or an addition replaces.
#[derive(Clone)]
struct State {
    /// Every exemplar (with a shared store: as it was at the last build or reload, plus this
    /// router's own additions).
    exemplars: ExemplarSet,
    search: Search,
    prices: Arc<PriceTable>,
    prior: Prior,
    /// The fitted quality model, when the predictor uses one for this many exemplars.
    quality: Option<Arc<Fitted>>,
    /// The predictor in force: the configured one, or what [`Predictor::Auto`] resolved to.
    predictor: Predictor,
    /// What cross-validation chose, when `Auto` ran it (kept across additions: it is not rerun).
    selected: Option<Predictor>,
    fallback_model: String,
    /// When the exemplars are not trusted for a prompt: the configured similarity threshold,
    /// else a rule derived from these exemplars ([`Familiarity::derive`]).
    familiarity: Familiarity,
    /// Which build or reload this state descends from (additions keep it).
    generation: u64,
    /// How many of `exemplars` (the first ones) the quality model was fitted on.
    fitted_on: usize,
    /// The caution in force, and whether it was derived from the exemplars ([`caution_for`]).
    caution: (f64, bool),
    /// The settings in force: the builder's, or those a quality target tuned on these data (the
    /// fallback model, similarity rule and caution in force are the fields above:
    /// [`Router::settings`] puts them together).
    settings: Settings,
    /// What a [quality target](RouterBuilder::quality_target) was tuned to on these data.
    tuned: Option<Arc<Tuned>>,
}

impl State {
    /// The model a [quality target](RouterBuilder::quality_target) found meets it alone on these
    /// data (and prices: they are tuned together), if it did: a request that names no models of
    /// its own goes to it ([`pinned`]).
    fn pin(&self) -> Option<&str> {
        match self.tuned.as_deref() {
            Some(Tuned { point: OperatingPoint::Model(m), .. }) => Some(m),
            _ => None,
        }
    }

    /// The policy's `reason`, with what the quality target set where it set the request's knob
    /// or model.
    fn tuned_reason(&self, reason: &str, constraints: &Constraints) -> String {
        let Some(t) = &self.tuned else { return reason.to_string() };
        let keep = format!("{:.0}% of {}'s quality", 100.0 * t.keep, t.reference_model);
        match (&t.point, self.pin()) {
            (_, Some(m)) if constraints.allow_models.is_empty() => {
                format!("{reason}; the quality target: {m} alone keeps {keep}, for less than routing")
            }
            (OperatingPoint::Knob(_), _) if constraints.quality_bar.is_none() && constraints.usd_per_quality.is_none() => {
                format!("{reason}; the knob is the quality target's: keep {keep}")
            }
            _ => reason.to_string(),
        }
    }
}

/// Numbers each build or reload, so a background refit of older data is never stored.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Where neighbours are found.
#[derive(Clone)]
enum Search {
    /// In this process: positions into the state's exemplars.
    Local(LiveIndex),
    /// In a store shared with other routers, which may hold exemplars this one has not seen.
    Shared(Arc<dyn ExemplarStore>),
}

/// The router's tunable settings (see [`RouterBuilder`] for what each means and its default).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Settings {
    /// Number of neighbours consulted.
    pub k: usize,
    /// Default quality bar.
    pub quality_bar: f64,
    /// Default utility objective (USD per quality point), used instead of the bar when set.
    pub usd_per_quality: Option<f64>,
    /// Below this similarity of the nearest exemplar the fallback model is used, when that rule
    /// is in force (set with [`RouterBuilder::min_similarity`], or with a shared store or a very
    /// large set); `None` under the density rule.
    pub min_similarity: Option<f32>,
    /// The density rule's limit in force (see [`familiar`](crate::familiar)): above this
    /// unfamiliarity the fallback model is used; `None` under the similarity rule.
    pub unfamiliar_limit: Option<f64>,
    /// The share of the exemplars themselves the derived rule would call unfamiliar.
    pub unfamiliar_share: f64,
    /// Whether the density rule measures distances with the set's mean direction removed (it
    /// does where that direction dominates the vectors: see [`familiar`](crate::familiar)).
    pub unfamiliar_centred: bool,
    /// How many standard errors a model's predicted quality must clear the bar by (0: the
    /// point prediction alone; under the utility objective, by how many a gain over the safe
    /// model is discounted): the one set with [`RouterBuilder::caution`], else the one derived
    /// from the hand-labelled exemplars in force, else [`DEFAULT_CAUTION`].
    pub caution: f64,
    /// Whether `caution` was derived from the exemplars (see [`RouterBuilder::caution`]).
    pub caution_derived: bool,
    /// The safe model.
    pub fallback_model: String,
    /// Softmax temperature of neighbour weights.
    pub temperature: f64,
    /// Pseudo-neighbours given to each model's overall mean quality (0 = off).
    pub prior_strength: f64,
    /// How each model's quality is predicted.
    pub predictor: Predictor,
}

impl Settings {
    /// The router's default objective: utility when `usd_per_quality` is set, else the bar.
    pub fn objective(&self) -> Objective {
        self.usd_per_quality.map_or(Objective::QualityBar(self.quality_bar), Objective::UsdPerQuality)
    }
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.state.load();
        f.debug_struct("Router")
            .field("embedder", &self.inner.embedder.model_id())
            .field("exemplars", &state.exemplars.len())
            .field("models", &state.prices.len())
            .field("settings", &self.settings())
            .finish()
    }
}

impl Router {
    /// A builder with the defaults: the installed MiniLM model, the built-in exemplars and
    /// price table, k = 8, quality bar 0.7.
    pub fn builder() -> RouterBuilder {
        RouterBuilder::default()
    }

    /// Routes one prompt under the router's default settings.
    pub fn route(&self, prompt: &str) -> Result<RouteDecision> {
        self.route_with(prompt, &Constraints::default())
    }

    /// Routes one prompt under per-request `constraints`.
    pub fn route_with(&self, prompt: &str, constraints: &Constraints) -> Result<RouteDecision> {
        check_prompt(prompt)?;
        check_constraints(constraints)?;
        let vector = self.inner.embedder.embed(prompt)?;
        self.decide(prompt, &vector, constraints, None)
    }

    /// Routes a chat conversation (OpenAI-shaped): the decision is made on its last user message,
    /// and the input-token count, hence the cost, covers the whole conversation (every message's
    /// text plus [`CHAT_TOKENS_PER_MESSAGE`] for the chat format).
    ///
    /// ```no_run
    /// use semroute::chat::ChatRequest;
    /// use semroute::{Constraints, Router};
    ///
    /// let router = Router::builder().build()?;
    /// let chat = ChatRequest::from_json(serde_json::json!({"messages": [
    ///     {"role": "system", "content": "You are a careful assistant."},
    ///     {"role": "user", "content": "Translate to French: good morning"}
    /// ]}))?;
    /// let d = router.route_chat(&chat, &Constraints::default())?;
    /// println!("{} for {} input tokens", d.model, d.input_tokens);
    /// # Ok::<(), semroute::Error>(())
    /// ```
    pub fn route_chat(&self, chat: &ChatRequest, constraints: &Constraints) -> Result<RouteDecision> {
        let prompt =
            chat.last_user_text().ok_or_else(|| Error::InvalidRequest("the conversation holds no user message to route on".into()))?;
        check_prompt(&prompt)?;
        check_constraints(constraints)?;
        let tokens: u64 = chat.texts().map(|(_, text)| self.inner.tokens.count(&text) + CHAT_TOKENS_PER_MESSAGE).sum();
        let vector = self.inner.embedder.embed(&prompt)?;
        self.decide(&prompt, &vector, constraints, Some(tokens))
    }

    /// Routes many prompts with one batched embedding call; one result per prompt, in order, so
    /// one bad prompt does not fail the others.
    pub fn route_batch(&self, prompts: &[&str], constraints: &Constraints) -> Vec<Result<RouteDecision>> {
        if let Err(e) = check_constraints(constraints) {
            let msg = e.to_string();
            return prompts.iter().map(|_| Err(Error::Config(msg.clone()))).collect();
        }
        let texts: Vec<&str> = prompts.iter().copied().filter(|p| check_prompt(p).is_ok()).collect();
        let vectors = match self.inner.embedder.embed_batch(&texts) {
            Ok(v) => v,
            Err(e) => {
                let msg = e.to_string();
                return prompts.iter().map(|p| check_prompt(p).and(Err(Error::Embedding(msg.clone())))).collect();
            }
        };
        // Valid prompts were embedded in order, so their vectors come out in the same order.
        let mut vectors = vectors.into_iter();
        prompts
            .iter()
            .map(|prompt| {
                check_prompt(prompt)?;
                let vector = vectors.next().ok_or_else(|| Error::Embedding("the embedder returned too few vectors".into()))?;
                self.decide(prompt, &vector, constraints, None)
            })
            .collect()
    }

    /// Routes one prompt on tokio's blocking pool, so the async caller's runtime keeps running
    /// while the model embeds. Needs a tokio runtime.
    pub async fn route_async(&self, prompt: impl Into<String>, constraints: Constraints) -> Result<RouteDecision> {
        let router = self.clone();
        let prompt = prompt.into();
        tokio::task::spawn_blocking(move || router.route_with(&prompt, &constraints))
            .await
            .map_err(|source| Error::Task { what: "routing", source })?
    }

    /// [`learn`](Self::learn) on tokio's blocking pool (it embeds the prompt and syncs the
    /// feedback log). Needs a tokio runtime.
    ///
    /// ```no_run
    /// # async fn f(router: semroute::Router) -> semroute::Result<()> {
    /// use semroute::feedback::Feedback;
    /// router.learn_async(Feedback::new("req-1", "Summarise this memo ...", "kimi-k2.6", 0.0, 180)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn learn_async(&self, feedback: Feedback) -> Result<()> {
        let router = self.clone();
        tokio::task::spawn_blocking(move || router.learn(&feedback)).await.map_err(|source| Error::Task { what: "learning", source })?
    }

    /// [`reload`](Self::reload) on tokio's blocking pool (it embeds what is new and refits).
    /// Needs a tokio runtime.
    pub async fn reload_async(&self, exemplars: ExemplarSet, prices: PriceTable) -> Result<()> {
        let router = self.clone();
        tokio::task::spawn_blocking(move || router.reload(exemplars, prices))
            .await
            .map_err(|source| Error::Task { what: "reload", source })?
    }

    /// The exemplars the router consults now (a snapshot: later additions are not in it). With a
    /// shared [store](RouterBuilder::store), the store's exemplars as of the last build or reload
    /// plus this router's own additions; other routers' later additions are searched but not
    /// listed here.
    pub fn exemplars(&self) -> ExemplarSet {
        self.inner.state.load().exemplars.clone()
    }

    /// The price table in force now.
    pub fn prices(&self) -> Arc<PriceTable> {
        self.inner.state.load().prices.clone()
    }

    /// The settings in force (the fallback model is that of the current price table).
    pub fn settings(&self) -> Settings {
        let state = self.inner.state.load();
        Settings {
            fallback_model: state.fallback_model.clone(),
            min_similarity: state.familiarity.min_similarity(),
            unfamiliar_limit: state.familiarity.limit(),
            unfamiliar_centred: state.familiarity.centre().is_some(),
            caution: state.caution.0,
            caution_derived: state.caution.1,
            ..state.settings.clone()
        }
    }

    /// What the [quality target](RouterBuilder::quality_target) was tuned to on the data in
    /// force (at build, or at the last [reload](Router::reload)): the knob (or the one model),
    /// the reference model, and the quality kept and cost out of fold; `None` without a target.
    pub fn tuned(&self) -> Option<Tuned> {
        self.inner.state.load().tuned.as_deref().cloned()
    }

    /// Replaces the exemplars and the price table at once, while routing goes on: decisions
    /// already under way finish on the old ones, later ones use the new. Everything is validated,
    /// embedded (or read from the vector cache) and indexed first; on any error the router keeps
    /// what it had and the error says why. Exemplars added or learned since start are kept,
    /// also those added while the reload was under way: learning goes on meanwhile, and reloads
    /// run one at a time. A router with a [quality target](RouterBuilder::quality_target) is
    /// tuned again on the new data, as at build (a tuning found before for the same data is
    /// read back from the vector cache): the models compared, the reference, the configuration
    /// and the knob all follow the new exemplars and prices, and [`tuned`](Router::tuned)
    /// reports them. What was added or learned since start is routed on, not tuned on.
    ///
    /// ```no_run
    /// use semroute::{ExemplarSet, PriceTable, Router};
    ///
    /// let router = Router::builder().build()?;
    /// match router.reload(ExemplarSet::load_dir("exemplars")?, PriceTable::from_file("exemplars/prices.toml")?) {
    ///     Ok(()) => println!("now {} exemplars", router.exemplars().len()),
    ///     Err(e) => eprintln!("reload refused, still serving the old data: {e}"),
    /// }
    /// # Ok::<(), semroute::Error>(())
    /// ```
    pub fn reload(&self, exemplars: ExemplarSet, prices: PriceTable) -> Result<()> {
        let inner = &*self.inner;
        // One reload at a time. The new data are built (embedded, indexed, a target tuned: it
        // may take a while) while learning and additions go on; what they added is carried over
        // under the writers' lock.
        let _reloading = inner.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let base = generation(
            &inner.embedder,
            &inner.tokens,
            &inner.configured,
            exemplars,
            prices,
            inner.cache.as_ref(),
            inner.store.as_ref(),
            None,
        )?;
        // What was added or learned since start stays (feedback whose model the new table lacks
        // cannot be used with it: the reload is refused and says so).
        let writer = inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        let state = self.extended(&base, writer.added.clone(), writer.added_vectors.clone(), "<added or learned exemplars>")?;
        inner.state.store(Arc::new(state));
        Ok(())
    }

    /// Learns from one piece of feedback: it is checked, appended to the feedback log (if the
    /// router has one) and synced to disk, then added as a measured exemplar for its model; later
    /// decisions use it. When this returns `Ok`, a crash cannot lose it.
    ///
    /// ```no_run
    /// use semroute::feedback::Feedback;
    /// use semroute::Router;
    ///
    /// let router = Router::builder().feedback_log("feedback.jsonl").build()?; // replays the log
    /// let d = router.route("Summarise this contract clause in one line: ...")?;
    /// // ... the chosen model answered; a check (or a user) found the answer wrong:
    /// router.learn(&Feedback::new("req-17", "Summarise this contract clause in one line: ...", &d.model, 0.0, 40))?;
    /// # Ok::<(), semroute::Error>(())
    /// ```
    pub fn learn(&self, feedback: &Feedback) -> Result<()> {
        let inner = &*self.inner;
        let mut writer = inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        let current = inner.state.load_full();
        feedback.check(&current.prices)?;
        let exemplar = feedback.to_exemplar();
        // A repeated id is refused before anything reaches the log.
        let exemplars = validated(&current, vec![exemplar.clone()], "<feedback>")?;
        if let Search::Shared(store) = &current.search {
            if let Some(old) = store.existing(&[exemplar.id.as_str()])?.first() {
                return Err(Error::Store {
                    source: None,
                    store: store.describe(),
                    message: format!("already holds exemplar id `{}`", old.id),
                });
            }
        }
        let vectors = inner.embedder.embed_batch(&[exemplar.prompt.as_str()])?;
        if let Some(log) = writer.log.as_mut() {
            // Written in this version's layout, whatever the caller's record said.
            let record = Feedback { schema_version: crate::journal::SCHEMA_VERSION, ..feedback.clone() };
            log.append(&record)?;
        }
        let state = self.grown(&current, exemplars, vectors.clone(), Refit::Later)?;
        inner.state.store(Arc::new(state));
        writer.keep(&current.search, vec![exemplar], vectors);
        drop(writer);
        self.refit_soon();
        Ok(())
    }

    /// Brings the quality model up to date with everything learned, and returns when it is.
    /// [`learn`](Router::learn) makes a new piece of feedback visible to the neighbours at once
    /// but refits the model fitted on every exemplar (kernel ridge, low rank) in the background,
    /// one refit at a time covering everything learned meanwhile, because a refit grows with the
    /// cube of the exemplars (40 ms at 427, so by the cube about 2 s at 1,600: extrapolated, not measured) and must not hold up the caller. Call this
    /// when a decision must reflect every piece of feedback given so far (tests, batch jobs).
    ///
    /// ```no_run
    /// # use semroute::{feedback::Feedback, Router};
    /// let router = Router::builder().build()?;
    /// router.learn(&Feedback::new("req-1", "Translate: good morning", "claude-haiku-5-5", 1.0, 5))?;
    /// router.refit();
    /// # Ok::<(), semroute::Error>(())
    /// ```
    pub fn refit(&self) {
        // Wait out a background refit (it may have started before the last feedback) ...
        while self.inner.refitting.load(Ordering::Acquire) {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        // ... then cover whatever it did not.
        self.refit_once();
    }

    /// Starts a background refit unless one is running (which then covers this one too).
    fn refit_soon(&self) {
        if self.inner.refitting.swap(true, Ordering::AcqRel) {
            return;
        }
        let router = self.clone();
        let spawned = std::thread::Builder::new().name("semroute-refit".into()).spawn(move || loop {
            router.refit_once();
            router.inner.refitting.store(false, Ordering::Release);
            // Feedback that arrived while refitting, and found the flag set, is covered now.
            let s = router.inner.state.load();
            if s.fitted_on == s.exemplars.len() || router.inner.refitting.swap(true, Ordering::AcqRel) {
                return;
            }
        });
        if let Err(e) = spawned {
            tracing::warn!("could not start a background refit ({e}); refitting on the caller's thread");
            self.inner.refitting.store(false, Ordering::Release);
            self.refit_once();
        }
    }

    /// Fits the quality model on the exemplars in force and stores it, unless a reload replaced
    /// them meanwhile.
    fn refit_once(&self) {
        let inner = &*self.inner;
        let snapshot = inner.state.load_full();
        if snapshot.fitted_on == snapshot.exemplars.len() {
            return;
        }
        let (predictor, selected, quality, caution) = quality_model(
            &snapshot.search,
            &snapshot.exemplars,
            &snapshot.prices,
            &snapshot.settings,
            snapshot.selected,
            inner.embedder.as_ref(),
            inner.configured.caution,
            &snapshot.fallback_model,
            None,
        );
        let _writer = inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        let current = inner.state.load_full();
        if current.generation != snapshot.generation || current.fitted_on >= snapshot.exemplars.len() {
            return;
        }
        inner.state.store(Arc::new(State {
            predictor,
            selected,
            quality,
            caution,
            fitted_on: snapshot.exemplars.len(),
            ..State::clone(&current)
        }));
    }

    /// `state` plus `items` (with their `vectors`), validated.
    fn extended(&self, state: &State, items: Vec<Exemplar>, vectors: Vec<Vec<f32>>, origin: &str) -> Result<State> {
        if items.is_empty() {
            return Ok(state.clone());
        }
        let exemplars = validated(state, items, origin)?;
        self.grown(state, exemplars, vectors, Refit::Now)
    }

    /// `state` with `exemplars` (its own followed by new ones, validated) and the new ones'
    /// `vectors`: added to the in-process index (whose graph is rebuilt when the scanned part has
    /// grown enough), or written to the shared store.
    fn grown(&self, state: &State, exemplars: ExemplarSet, vectors: Vec<Vec<f32>>, refit: Refit) -> Result<State> {
        let mut familiarity = state.familiarity.clone();
        let search = match &state.search {
            Search::Local(index) => {
                let mut index = index.with_added(vectors)?;
                if index.needs_rebuild() {
                    index = index.rebuilt()?;
                }
                familiarity = familiarity.extended(&index, &exemplars, state.exemplars.len());
                Search::Local(index)
            }
            Search::Shared(store) => {
                let new: Vec<Exemplar> = exemplars.iter().skip(state.exemplars.len()).cloned().collect();
                store.insert(&new, &vectors)?;
                Search::Shared(store.clone())
            }
        };
        // The quality model is refitted on everything (40 ms at 427 exemplars, cubic in their
        // number), now or in the background.
        let (predictor, selected, quality, fitted_on, caution) = match refit {
            Refit::Now => {
                let inner = &*self.inner;
                let (p, s, q, caution) = quality_model(
                    &search,
                    &exemplars,
                    &state.prices,
                    &state.settings,
                    state.selected,
                    inner.embedder.as_ref(),
                    inner.configured.caution,
                    &state.fallback_model,
                    None,
                );
                (p, s, q, exemplars.len(), caution)
            }
            // (A shared store has no model to refit: nothing is owed.)
            Refit::Later if matches!(search, Search::Shared(_)) => (state.predictor, state.selected, None, exemplars.len(), state.caution),
            Refit::Later => (state.predictor, state.selected, state.quality.clone(), state.fitted_on, state.caution),
        };
        // The new exemplars counted into the prior (no pass over those already counted).
        let prior = state.prior.extended(exemplars.iter().skip(state.exemplars.len()), &state.prices);
        Ok(State {
            generation: state.generation,
            fitted_on,
            exemplars,
            search,
            prices: state.prices.clone(),
            prior,
            quality,
            predictor,
            selected,
            fallback_model: state.fallback_model.clone(),
            familiarity,
            caution,
            settings: state.settings.clone(),
            tuned: state.tuned.clone(),
        })
    }

    /// Adds graded exemplars while routing goes on; decisions made after this returns use them.
    /// They are validated (unique ids, priced models) and embedded first; on error nothing is
    /// added. New vectors are searched exactly until they are an eighth of the index, then the
    /// graph is rebuilt over everything (here, on the caller's thread; routing is not blocked).
    pub fn add_exemplars(&self, items: Vec<Exemplar>) -> Result<()> {
        self.add_exemplars_from(items, "<added>")
    }

    /// [`add_exemplars`](Router::add_exemplars), naming where they came from in errors.
    pub fn add_exemplars_from(&self, items: Vec<Exemplar>, origin: impl AsRef<std::path::Path>) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let inner = &*self.inner;
        let mut writer = inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        let current = inner.state.load_full();
        // Validate before the (slow) embedding.
        let exemplars = validated(&current, items.clone(), &origin.as_ref().to_string_lossy())?;
        let prompts: Vec<&str> = items.iter().map(|e| e.prompt.as_str()).collect();
        let vectors = inner.embedder.embed_batch(&prompts)?;
        let state = self.grown(&current, exemplars, vectors.clone(), Refit::Now)?;
        inner.state.store(Arc::new(state));
        writer.keep(&current.search, items, vectors);
        Ok(())
    }

    /// The embedder.
    pub fn embedder(&self) -> &Arc<dyn Embedder> {
        &self.inner.embedder
    }

    /// Whether routing `chat` ([`route_session`](Router::route_session)) takes about a
    /// millisecond at most, so that a server may route on its async tasks instead of handing the
    /// work to a blocking thread (a hop that costs more than a short prompt's decision): the
    /// embedder is quick ([`Embedder::is_quick`]), the exemplars and sessions are kept in process
    /// (not in a shared store, which is a network call), and the conversation's texts total at
    /// most [`QUICK_BYTES`] (counted only that far).
    ///
    /// ```no_run
    /// use semroute::chat::ChatRequest;
    ///
    /// let router = semroute::Router::builder().build()?;
    /// // The default embedder runs a transformer: never quick.
    /// assert!(!router.is_quick(&ChatRequest::user("hi")));
    /// # Ok::<(), semroute::Error>(())
    /// ```
    pub fn is_quick(&self, chat: &ChatRequest) -> bool {
        let inner = &*self.inner;
        inner.sessions_in_process
            && inner.embedder.is_quick()
            && matches!(inner.state.load().search, Search::Local(_))
            && chat.texts().try_fold(0usize, |n, (_, t)| Some(n + t.len()).filter(|&n| n <= QUICK_BYTES)).is_some()
    }

    /// `input_tokens`: the prompt's own count when `None`.
    fn decide(&self, prompt: &str, vector: &[f32], constraints: &Constraints, input_tokens: Option<u64>) -> Result<RouteDecision> {
        self.assess_embedded(prompt, vector, input_tokens)?.decide(constraints)
    }

    /// What the router knows about `prompt` before any policy chooses: its neighbours, each
    /// model's predicted quality and answer length, its token count. [`Assessment::decide`] then
    /// chooses under any constraints and objective, as [`route_with`](Router::route_with) does
    /// (which is exactly `assess` then `decide`); deciding one assessment under many objectives
    /// is how benchmarks sweep the quality knob without predicting again.
    ///
    /// ```no_run
    /// use semroute::{Constraints, Router};
    ///
    /// let router = Router::builder().build()?;
    /// let a = router.assess("Summarise this paragraph in one sentence: ...")?;
    /// for bar in [0.5, 0.7, 0.9] {
    ///     let d = a.decide(&Constraints::default().quality_bar(bar))?;
    ///     println!("bar {bar}: {} for ${:.6}", d.model, d.expected_cost_usd);
    /// }
    /// let d = a.decide(&Constraints::default().usd_per_quality(0.05))?; // utility: quality × $0.05 − cost
    /// # Ok::<(), semroute::Error>(())
    /// ```
    pub fn assess(&self, prompt: &str) -> Result<Assessment> {
        check_prompt(prompt)?;
        let vector = self.inner.embedder.embed(prompt)?;
        self.assess_embedded(prompt, &vector, None)
    }

    /// [`assess`](Router::assess) with the prompt's vector already computed by this router's
    /// embedder (a benchmark embeds each prompt once), and optionally its token count.
    pub fn assess_embedded(&self, prompt: &str, vector: &[f32], input_tokens: Option<u64>) -> Result<Assessment> {
        self.assess_embedded_batch(&[(prompt, vector, input_tokens)])?.pop().ok_or_else(|| Error::Config("no assessment".into()))
    }

    /// [`assess_embedded`](Router::assess_embedded) for many prompts, with one snapshot of the
    /// router's data for all of them: the same assessments, in order, in less time where the
    /// kernel-ridge model gives standard errors (their triangular solves read the fitted factor
    /// once for the batch, not once per prompt). Each item: prompt, its vector, optionally its
    /// token count. An error in any item (an empty prompt, a vector of the wrong length) fails
    /// the batch, naming the item.
    ///
    /// ```no_run
    /// use semroute::{Embedder, FastEmbedder, Router};
    /// use std::sync::Arc;
    ///
    /// let embedder = Arc::new(FastEmbedder::load_default()?);
    /// let router = Router::builder().embedder(embedder.clone()).build()?;
    /// let prompts = ["Fix the typo in this sentence: teh cat", "Prove that there are infinitely many primes"];
    /// let vectors = embedder.embed_batch(&prompts)?;
    /// let items: Vec<(&str, &[f32], Option<u64>)> = prompts.iter().zip(&vectors).map(|(p, v)| (*p, v.as_slice(), None)).collect();
    /// for a in router.assess_embedded_batch(&items)? {
    ///     println!("{:?}", a.decide(&Default::default())?.model);
    /// }
    /// # Ok::<(), semroute::Error>(())
    /// ```
    pub fn assess_embedded_batch(&self, items: &[(&str, &[f32], Option<u64>)]) -> Result<Vec<Assessment>> {
        let inner = &*self.inner;
        for (i, (prompt, vector, _)) in items.iter().enumerate() {
            let at = |e: Error| if items.len() > 1 { Error::Config(format!("item {i} of the batch: {e}")) } else { e };
            check_prompt(prompt).map_err(at)?;
            if vector.len() != inner.embedder.dim() {
                return Err(at(Error::Embedding(format!(
                    "a vector of length {} for an embedder of dimension {}",
                    vector.len(),
                    inner.embedder.dim()
                ))));
            }
        }
        // One snapshot for the whole batch, so a reload mid-way cannot mix old and new data.
        let state = inner.state.load_full();
        let s = &state.settings;
        let (mut found, mut judgements, mut predictions) = (Vec::new(), Vec::new(), Vec::new());
        for &(_, vector, _) in items {
            // (position in the in-process index, if any; exemplar; similarity), most similar first.
            let hits: Vec<(Option<usize>, Arc<Exemplar>, f32)> = match &state.search {
                Search::Local(index) => index
                    .search_remembered(vector, s.k.max(NEIGHBOURS))
                    .into_iter()
                    .map(|h| (Some(h.position), state.exemplars.shared(h.position), h.similarity))
                    .collect(),
                Search::Shared(store) => store.nearest(vector, s.k)?.into_iter().map(|h| (None, h.exemplar, h.similarity)).collect(),
            };
            judgements.push(state.familiarity.judge(&hits.iter().map(|h| (h.0, h.2)).collect::<Vec<_>>(), vector));
            found.push(hits.into_iter().take(s.k).map(|h| (h.1, h.2)).collect::<Vec<(Arc<Exemplar>, f32)>>());
        }
        {
            let grades: Vec<Vec<(&Grade, f32)>> = found.iter().map(|f| f.iter().map(|(e, sim)| (&e.grade, *sim)).collect()).collect();
            for g in &grades {
                predictions.push(predict_from(g, &state.prices, s.temperature, &state.prior));
            }
            if let Some(model) = &state.quality {
                // Quality from the model fitted on every exemplar (with the neighbours', when
                // blended); answer lengths from the neighbours.
                let texts: Vec<(&str, &[f32])> = items.iter().map(|&(p, v, _)| (p, v)).collect();
                state.predictor.apply_batch(model, &texts, &grades, &state.prices, &mut predictions);
            }
        }
        Ok(items
            .iter()
            .zip(found)
            .zip(judgements)
            .zip(predictions)
            .map(|(((&(prompt, _, input_tokens), found), judgement), predictions)| {
                let input_tokens = input_tokens.unwrap_or_else(|| inner.tokens.count(prompt));
                Assessment { state: state.clone(), found, judgement, predictions, input_tokens, cache: None }
            })
            .collect())
    }

    /// Routes one step of an agent session (see [`session`]): the session named
    /// `session`, or else the one the conversation's leading messages identify. The task (its
    /// first user turn) is assessed once and its predictions reused at later steps; each model's
    /// cost counts the prompt cache the session holds with it; a switch of model happens only
    /// when it pays for the cache it gives up within the session's horizon, or when the model in
    /// use no longer clears the bar. The decision's [`session`](RouteDecision::session) says
    /// which step this is and what happened; report what a step really cost with
    /// [`session_served`](Router::session_served) when another model served it (a failover).
    ///
    /// ```no_run
    /// use semroute::chat::ChatRequest;
    /// use semroute::{Constraints, Router};
    ///
    /// let router = Router::builder().build()?;
    /// let chat = ChatRequest::from_json(serde_json::json!({"messages": [
    ///     {"role": "system", "content": "You are a coding agent."},
    ///     {"role": "user", "content": "Add retries to the HTTP client."}
    /// ]}))?;
    /// let d = router.route_session(&chat, None, &Constraints::default())?;
    /// assert_eq!(d.session.as_ref().map(|s| s.step), Some(1));
    /// # Ok::<(), semroute::Error>(())
    /// ```
    pub fn route_session(&self, chat: &ChatRequest, session: Option<&str>, constraints: &Constraints) -> Result<RouteDecision> {
        self.route_session_at(chat, session, constraints, SystemTime::now())
    }

    /// [`route_session`](Router::route_session) as if the time were `now` (replays of recorded
    /// sessions, and tests of cache lifetimes, run on their own clock).
    pub fn route_session_at(
        &self,
        chat: &ChatRequest,
        session: Option<&str>,
        constraints: &Constraints,
        now: SystemTime,
    ) -> Result<RouteDecision> {
        check_constraints(constraints)?;
        let key = SessionKey::of(chat, session)?;
        let inner = &*self.inner;
        let settings = &inner.session_settings;
        let now = session::unix_ms(now);
        let idle = settings.idle_secs.saturating_mul(1000);
        let before = inner.sessions.load(&key)?.filter(|s| now.saturating_sub(s.last_used_ms) <= idle);
        let texts: Vec<(&str, String)> = chat.texts().collect();
        let users: Vec<usize> = (0..texts.len()).filter(|&i| texts[i].0 == "user" && !texts[i].1.trim().is_empty()).collect();
        let Some(&first) = users.first() else {
            return Err(Error::InvalidRequest("the conversation holds no user message to route on".into()));
        };

        // The conversation's tokens: only the messages added since the last step are counted.
        let per_message = |(_, text): &(&str, String)| inner.tokens.count(text) + CHAT_TOKENS_PER_MESSAGE;
        let reuse = before.as_ref().filter(|s| {
            let n = s.counted_messages as usize;
            n > 0 && n <= texts.len() && session::message_check(texts[n - 1].0, &texts[n - 1].1) == s.counted_check
        });
        let input_tokens = match reuse {
            Some(s) => s.counted_tokens + texts[s.counted_messages as usize..].iter().map(per_message).sum::<u64>(),
            None => texts.iter().map(per_message).sum(),
        };

        // The task's predictions: reused while the router's data is unchanged; a new user turn
        // the exemplars recognise can only raise the difficulty.
        let state = inner.state.load_full();
        let tag = state_tag(&state);
        let task_check = session::message_check("user", &texts[first].1);
        let known = before
            .as_ref()
            .filter(|s| s.tag == tag && s.task_check == task_check)
            .and_then(|s| s.predictions(state.prices.names()).map(|p| (s, p)));
        let (mut assessment, task_reused, covered) = match known {
            Some((s, predictions)) => {
                let judgement = Judgement { unfamiliarity: s.unfamiliarity.map(f64::from), unfamiliar: s.unfamiliar.clone() };
                let a = Assessment { state: state.clone(), found: Vec::new(), judgement, predictions, input_tokens, cache: None };
                (a, true, s.user_turns as usize)
            }
            None => {
                let task = &texts[first].1;
                let vector = inner.embedder.embed(task)?;
                (self.assess_embedded(task, &vector, Some(input_tokens))?, false, 1)
            }
        };
        if settings.follow_ups && users.len() > covered && users.len() > 1 {
            let last = &texts[*users.last().expect("not empty")].1;
            let vector = inner.embedder.embed(last)?;
            let turn = self.assess_embedded(last, &vector, Some(input_tokens))?;
            if turn.judgement.unfamiliar.is_none() {
                session::raise(&mut assessment.predictions, &turn.predictions);
            }
        }

        // What the previous model's provider still holds cached. Without a live cache (the
        // first step, or the cache expired) every model is priced alike: nothing cached, a
        // horizon of one step.
        let held = before
            .as_ref()
            .filter(|s| s.cache_until_ms >= now && state.prices.get(&s.model).is_some())
            .map(|s| (s.model.clone(), s.cached_tokens.min(input_tokens)));
        let alive = held.is_some();
        let horizon = before.as_ref().filter(|_| alive).map_or(1.0, |s| f64::from(s.steps).clamp(1.0, settings.max_horizon));
        let new_tokens = before.as_ref().map_or(input_tokens, |s| input_tokens.saturating_sub(s.last_input_tokens));
        assessment.cache = Some(CacheView { held, new_tokens, horizon });
        let mut decision = assessment.decide(constraints)?;
        let step = before.as_ref().map_or(1, |s| s.steps.saturating_add(1));
        match &before {
            None => decision.reason.push_str("; first step of the session"),
            Some(s) if !alive => decision.reason.push_str(&format!("; no cache is alive with the session's previous model {}", s.model)),
            Some(_) => {}
        }
        let previous = before.as_ref().map(|s| s.model.clone());
        decision.session = Some(SessionInfo {
            id: key.to_string(),
            step,
            switched: previous.as_ref().is_some_and(|m| *m != decision.model),
            previous_model: previous,
            cached_tokens: decision.candidates.iter().find(|c| c.model == decision.model).and_then(|c| c.cached_tokens).unwrap_or(0),
            horizon,
            task_reused,
        });

        // Remember the step, as if the chosen model serves it (session_served corrects that).
        let price = state.prices.get(&decision.model).expect("the chosen model is priced");
        let last = texts.len() - 1;
        let next = SessionState {
            model: decision.model.clone(),
            cached_tokens: input_tokens,
            cache_until_ms: now.saturating_add(session::ms(price.cache_ttl())),
            last_input_tokens: input_tokens,
            last_used_ms: now,
            steps: step,
            user_turns: users.len() as u32,
            tag,
            task: SessionState::compact(&assessment.predictions, state.prices.names()),
            task_check,
            unfamiliar: assessment.judgement.unfamiliar.clone(),
            unfamiliarity: assessment.judgement.unfamiliarity.map(|u| u as f32),
            counted_messages: texts.len() as u32,
            counted_tokens: input_tokens,
            counted_check: session::message_check(texts[last].0, &texts[last].1),
        };
        inner.sessions.save(&key, &next)?;
        Ok(decision)
    }

    /// Tells the session `id` (a [`SessionInfo::id`]) which model really served its last step,
    /// when it was not the one routed to (a failover): the session then holds that model's
    /// cache. (Token counts stay the router's own: a provider's tokenizer counts differently.)
    /// Unknown or expired sessions are ignored.
    pub fn session_served(&self, id: &str, model: &str) -> Result<()> {
        self.session_served_at(id, model, SystemTime::now())
    }

    /// [`session_served`](Router::session_served) as if the time were `now` (see
    /// [`route_session_at`](Router::route_session_at)).
    pub fn session_served_at(&self, id: &str, model: &str, now: SystemTime) -> Result<()> {
        let key = SessionKey::parse(id)?;
        let inner = &*self.inner;
        let Some(mut s) = inner.sessions.load(&key)? else { return Ok(()) };
        let state = inner.state.load();
        let Some(price) = state.prices.get(model) else { return Ok(()) };
        if s.model == model {
            return Ok(());
        }
        let now = session::unix_ms(now);
        s.model = model.to_string();
        s.cached_tokens = s.last_input_tokens;
        s.cache_until_ms = now.saturating_add(session::ms(price.cache_ttl()));
        s.last_used_ms = now;
        inner.sessions.save(&key, &s)
    }

    /// Sessions kept now.
    pub fn sessions(&self) -> usize {
        self.inner.sessions.len()
    }
}

/// Identifies the data predictions came from, per process: a session's stored predictions are
/// reused only under the same.
fn state_tag(state: &State) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    static SALT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let salt = *SALT.get_or_init(|| std::collections::hash_map::RandomState::new().hash_one(0u8));
    let mut h = std::hash::DefaultHasher::new();
    (salt, state.generation, state.exemplars.len(), state.fitted_on).hash(&mut h);
    h.finish()
}

/// One prompt as the router sees it before choosing: see [`Router::assess`].
pub struct Assessment {
    state: Arc<State>,
    found: Vec<(Arc<Exemplar>, f32)>,
    judgement: Judgement,
    predictions: Predictions,
    input_tokens: u64,
    /// In a session, the cache the session holds.
    cache: Option<CacheView>,
}

impl fmt::Debug for Assessment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Assessment")
            .field("neighbours", &self.found.len())
            .field("predictions", &self.predictions.per_model)
            .field("input_tokens", &self.input_tokens)
            .finish()
    }
}

impl Assessment {
    /// Each model's predicted quality and answer length.
    pub fn predictions(&self) -> &Predictions {
        &self.predictions
    }

    /// Prompt (or conversation) tokens.
    pub fn input_tokens(&self) -> u64 {
        self.input_tokens
    }

    /// The policy's choice under `constraints` (every priced model as a candidate, cheapest
    /// first), without the decision's explanation: what [`decide`](Assessment::decide) builds on.
    pub fn choose(&self, constraints: &Constraints) -> Result<Choice> {
        check_constraints(constraints)?;
        let pinned = self.state.pin().map(|m| pinned(constraints, m));
        let constraints = pinned.as_ref().unwrap_or(constraints);
        let objective = constraints.objective(self.state.settings.objective());
        let choice = choose(self.choice_input(objective), constraints);
        if choice.chosen.is_none() {
            let why: Vec<String> =
                choice.candidates.iter().map(|c| format!("{}: {}", c.model, c.excluded.as_deref().unwrap_or("eligible"))).collect();
            return Err(Error::NoEligibleModel(why.join("; ")));
        }
        Ok(choice)
    }

    /// The model [`choose`](Assessment::choose) takes under each of `constraints`: the same
    /// choices, with the candidates priced once and no reason or failover order written out,
    /// for a benchmark that decides each prompt under many knobs and reads only which model won.
    pub(crate) fn chosen_models(&self, constraints: &[Constraints]) -> Result<Vec<String>> {
        let default = self.state.settings.objective();
        // Copied only where a target pins the router to one model.
        let pinned: Option<Vec<Constraints>> = self.state.pin().map(|m| constraints.iter().map(|c| pinned(c, m)).collect());
        let constraints = pinned.as_deref().unwrap_or(constraints);
        let mut each = Vec::with_capacity(constraints.len());
        for c in constraints {
            check_constraints(c)?;
            each.push((c.objective(default), c));
        }
        let (candidates, chosen) = choose_each(self.choice_input(default), &each);
        chosen
            .into_iter()
            .zip(constraints)
            .map(|(i, c)| match i {
                Some(i) => Ok(candidates[i].model.clone()),
                // Every model excluded: the error `choose` gives, which says why for each.
                None => Err(self.choose(c).err().unwrap_or_else(|| Error::Config("the policy chose no model".into()))),
            })
            .collect()
    }

    /// The inputs of this prompt's choice under `objective`.
    fn choice_input(&self, objective: Objective) -> ChoiceInput<'_> {
        ChoiceInput {
            predictions: &self.predictions,
            prices: &self.state.prices,
            input_tokens: self.input_tokens,
            unfamiliar: self.judgement.unfamiliar.as_deref(),
            caution: self.state.caution.0,
            objective,
            fallback_model: &self.state.fallback_model,
            default_output_tokens: DEFAULT_OUTPUT_TOKENS,
            cache: self.cache.as_ref(),
        }
    }

    /// The decision under `constraints`, with the whole why.
    pub fn decide(&self, constraints: &Constraints) -> Result<RouteDecision> {
        let choice = self.choose(constraints)?;
        let chosen = choice.chosen.expect("choose refuses a choice without a model");
        let state = &self.state;
        let s = &state.settings;
        let c = &choice.candidates[chosen];
        let strongest = state.prices.strongest();
        let strongest_cost = choice.candidates.iter().find(|c| c.model == strongest).map_or(0.0, |c| c.expected_cost_usd);
        let saving = strongest_cost - c.expected_cost_usd;
        let neighbours = self
            .found
            .iter()
            .zip(&self.predictions.weights)
            .map(|((ex, similarity), &weight)| Neighbour {
                id: ex.id.clone(),
                similarity: *similarity,
                weight,
                category: ex.category.clone(),
                language: ex.language.clone(),
                grade: match &ex.grade {
                    Grade::Labelled(l) => format!("labelled:{}", l.tier),
                    Grade::Measured { results } => format!("measured:{} models", results.len()),
                },
                prompt_preview: ex.prompt.chars().take(80).collect(),
            })
            .collect();
        let objective = constraints.objective(s.objective());
        Ok(RouteDecision {
            schema_version: crate::decision::SCHEMA_VERSION,
            model: c.model.clone(),
            provider: c.provider.clone(),
            tier: c.tier,
            expected_cost_usd: c.expected_cost_usd,
            predicted_quality: c.predicted_quality.unwrap_or(0.0),
            predicted_output_tokens: c.predicted_output_tokens,
            input_tokens: self.input_tokens,
            quality_bar: constraints.quality_bar.unwrap_or(s.quality_bar),
            objective,
            fallback: choice.fallback,
            unfamiliarity: self.judgement.unfamiliarity,
            reason: state.tuned_reason(&choice.reason, constraints),
            quality_from: state.predictor.describe(state.quality.is_some()).to_string(),
            neighbours,
            strongest_model: strongest.to_string(),
            strongest_cost_usd: strongest_cost,
            saving_usd: saving,
            saving_fraction: if strongest_cost > 0.0 { saving / strongest_cost } else { 0.0 },
            failover: choice.order.iter().skip(1).map(|&i| choice.candidates[i].model.clone()).collect(),
            candidates: choice.candidates,
            session: None,
        })
    }
}

/// Tokens each chat message adds for its role and delimiters (OpenAI's published estimate is 3-4).
pub const CHAT_TOKENS_PER_MESSAGE: u64 = 4;

/// Answer length assumed for a model no neighbour speaks about (only used for its cost).
const DEFAULT_OUTPUT_TOKENS: u64 = 500;

/// The longest request text [`Router::is_quick`] calls quick: 4 KB (about a thousand tokens).
/// A route of that length with a static embedder took 0.8 to 1.4 ms at the median (English and
/// Chinese, both static models; `decision_timing`), a short prompt about 0.1 ms, on the 2-core
/// machine the README measures on.
pub const QUICK_BYTES: usize = 4096;

fn check_prompt(prompt: &str) -> Result<()> {
    if prompt.trim().is_empty() {
        return Err(Error::InvalidPrompt(if prompt.is_empty() {
            "the prompt is empty".into()
        } else {
            "the prompt is only whitespace".into()
        }));
    }
    Ok(())
}

/// `constraints` sent to `model` alone, unless they name models of their own (see
/// [`Router::pin`]).
fn pinned(constraints: &Constraints, model: &str) -> Constraints {
    if constraints.allow_models.is_empty() {
        constraints.clone().allow_models([model])
    } else {
        constraints.clone()
    }
}

fn check_constraints(c: &Constraints) -> Result<()> {
    if c.quality_bar.is_some() && c.usd_per_quality.is_some() {
        return Err(Error::Config("set quality_bar or usd_per_quality, not both: they are two objectives".into()));
    }
    if let Some(bar) = c.quality_bar {
        Objective::QualityBar(bar).check().map_err(Error::Config)?;
    }
    if let Some(usd) = c.usd_per_quality {
        Objective::UsdPerQuality(usd).check().map_err(Error::Config)?;
    }
    if let Some(max) = c.max_cost_usd.filter(|m| !m.is_finite() || *m < 0.0) {
        return Err(Error::Config(format!("max_cost_usd must be a non-negative amount, got {max}")));
    }
    Ok(())
}

/// Builds a [`Router`], validating everything at [`build`](RouterBuilder::build).
#[derive(Default)]
pub struct RouterBuilder {
    embedder: Option<Arc<dyn Embedder>>,
    exemplars: Option<ExemplarSet>,
    prices: Option<PriceTable>,
    k: Option<usize>,
    quality_bar: Option<f64>,
    usd_per_quality: Option<f64>,
    min_similarity: Option<f32>,
    unfamiliar_share: Option<f64>,
    caution: Option<f64>,
    fallback_model: Option<String>,
    temperature: Option<f64>,
    prior_strength: Option<f64>,
    predictor: Option<Predictor>,
    cache: Option<Option<PathBuf>>,
    cache_budget: Option<u64>,
    fits: Option<FitCache>,
    feedback_log: Option<PathBuf>,
    store: Option<Arc<dyn ExemplarStore>>,
    sessions: Option<SessionSettings>,
    session_store: Option<Arc<dyn SessionStore>>,
    target: Option<QualityTarget>,
}

impl RouterBuilder {
    /// How agent sessions are kept ([`Router::route_session`]; default
    /// [`SessionSettings::default`], in memory).
    pub fn sessions(mut self, settings: SessionSettings) -> Self {
        self.sessions = Some(settings);
        self
    }

    /// Where sessions live (default: [`MemorySessions`] of
    /// [`SessionSettings::max_sessions`]); a shared store lets replicas take each other's
    /// sessions.
    pub fn session_store(mut self, store: Arc<dyn SessionStore>) -> Self {
        self.session_store = Some(store);
        self
    }

    /// The embedder (default: [`FastEmbedder::load_default`]).
    pub fn embedder(mut self, embedder: Arc<dyn Embedder>) -> Self {
        self.embedder = Some(embedder);
        self
    }

    /// The exemplars (default: [`ExemplarSet::builtin`]).
    pub fn exemplars(mut self, exemplars: ExemplarSet) -> Self {
        self.exemplars = Some(exemplars);
        self
    }

    /// The price table (default: [`PriceTable::builtin`]).
    pub fn prices(mut self, prices: PriceTable) -> Self {
        self.prices = Some(prices);
        self
    }

    /// Number of neighbours to consult (default 8; at least 1).
    pub fn k(mut self, k: usize) -> Self {
        self.k = Some(k);
        self
    }

    /// The predicted quality a model must reach to be chosen, in `[0, 1]` (default 0.7).
    pub fn quality_bar(mut self, bar: f64) -> Self {
        self.quality_bar = Some(bar);
        self
    }

    /// Chooses by utility by default instead of the bar: the model maximising predicted quality
    /// × `usd` − expected cost (see [`Objective::UsdPerQuality`]). A request's own
    /// [`Constraints`] objective still wins.
    pub fn usd_per_quality(mut self, usd: f64) -> Self {
        self.usd_per_quality = Some(usd);
        self
    }

    /// Below this cosine similarity of the nearest exemplar, the fallback model is used. By
    /// default it is derived from the exemplars (see
    /// [`unfamiliar_share`](RouterBuilder::unfamiliar_share)); this fixes it instead.
    pub fn min_similarity(mut self, s: f32) -> Self {
        self.min_similarity = Some(s);
        self
    }

    /// How often the derived fallback rule would fire on the exemplars themselves (default
    /// 0.02). By default the router falls back when a prompt is unfamiliar by a rule derived from
    /// the exemplars, so that it means "nothing like this is known" on any embedder (see
    /// [`familiar`](crate::familiar)): a prompt falls back when it is farther from its nearest
    /// exemplars, relative to how close those are to their own, than all but this share of the
    /// exemplars are. Derived at build and reload (one search per exemplar: about 30 ms at 427
    /// exemplars); over 20,000 exemplars, a similarity threshold from a sample of 2,000; with a
    /// shared store, or fewer than 20 exemplars, the embedder's
    /// [`suggested_min_similarity`](Embedder::suggested_min_similarity) (else 0.3).
    ///
    /// ```no_run
    /// let router = semroute::Router::builder().unfamiliar_share(0.05).build()?;
    /// println!("falls back above unfamiliarity {:?}", router.settings().unfamiliar_limit);
    /// # Ok::<(), semroute::Error>(())
    /// ```
    pub fn unfamiliar_share(mut self, share: f64) -> Self {
        self.unfamiliar_share = Some(share);
        self
    }

    /// How cautious the quality bar is: a model clears the bar only when its predicted quality
    /// minus this many standard errors does. Unset, it is derived from the hand-labelled
    /// exemplars in force (again at every reload or refit): the least caution, in steps of 0.05,
    /// at which at most [`DERIVED_CAUTION_UNDER`] (2%) of them would go to a weaker tier than
    /// their label, each decided by the policy on the kernel-ridge model's leave-one-out
    /// prediction for it (0.75 for the built-in exemplars with the default embedder, 1 with
    /// MiniLM, whose predictions on Chinese are surer than they should be). Without hand labels
    /// or a kernel-ridge model it is [`DEFAULT_CAUTION`]. [`Router::settings`] says which
    /// caution is in force and whether it was derived. The standard error
    /// is the prediction's own: the kernel-ridge model's posterior error where the model
    /// predicts, else that of a quality estimated from the neighbours actually behind it (few,
    /// far-apart or disagreeing neighbours give a wide one; see
    /// [`Candidate::quality_se`](crate::decision::Candidate::quality_se)), so an unsure
    /// prediction escalates to a stronger model instead of gambling on a cheap one. 0 uses the
    /// point prediction alone. Under the utility objective the same caution discounts a model's
    /// predicted gain over the safe model (see
    /// [`Objective::UsdPerQuality`]).
    ///
    /// ```no_run
    /// let router = semroute::Router::builder().caution(2.0).build()?;
    /// # Ok::<(), semroute::Error>(())
    /// ```
    pub fn caution(mut self, z: f64) -> Self {
        self.caution = Some(z);
        self
    }

    /// The safe model used when no exemplar is close enough (default: the cheapest model of the
    /// price table's highest tier).
    pub fn fallback_model(mut self, model: impl Into<String>) -> Self {
        self.fallback_model = Some(model.into());
        self
    }

    /// Softmax temperature of neighbour weights (default 0.05; smaller trusts the nearest more).
    pub fn temperature(mut self, t: f64) -> Self {
        self.temperature = Some(t);
        self
    }

    /// Shrinks each model's predicted quality towards its mean over all exemplars, counted as
    /// this many neighbours (default 0: off). See [`Prior`]. Worth turning on with measured
    /// exemplars over many models, where a few lucky neighbours can make a weak cheap model look
    /// perfect: on the shared zeroeval-gsm set (41 models) it raised AIQ from 0.913 to 0.955 on a
    /// validation split of the train part. On the hand-labelled starter set it lowers tier
    /// agreement, so it is off by default.
    pub fn prior_strength(mut self, pseudo_neighbours: f64) -> Self {
        self.prior_strength = Some(pseudo_neighbours);
        self
    }

    /// How each model's quality is predicted (default [`Predictor::Auto`]: on hand labels, a
    /// kernel-ridge model fitted on every exemplar, for 50 to 2,000 in-process exemplars; on
    /// measured exemplars, from 50, whichever predictor cross-validation on them finds best; the
    /// neighbours alone otherwise and with a shared store). The README has each predictor's
    /// leave-one-out tier agreement on the built-in set.
    pub fn predictor(mut self, predictor: Predictor) -> Self {
        self.predictor = Some(predictor);
        self
    }

    /// Takes the quality model's fitted parts (kernel ridge, low rank, the feature model) from
    /// `fits` where a router built on the same exemplars with the same settings left them, and
    /// leaves there the parts this build fits: routers that differ only in how they combine the
    /// parts fit each once (see [`FitCache`]). Used at build only; refits after
    /// [`Router::learn`] or a reload fit their own. The models are the same either way.
    ///
    /// The routers also share one copy of their exemplar graph, the neighbours their
    /// assessments search for, and the shared kernel-ridge model's scores: a prompt the routers
    /// all assess is searched and scored once (for at most 16,384 prompts each, so that a
    /// router kept to serve does not grow without bound; searches only until exemplars are
    /// added). The neighbours and scores are the same either way.
    ///
    /// ```no_run
    /// use semroute::predict::{FitCache, LowRankSettings, Predictor, RidgeSettings};
    /// use semroute::Router;
    ///
    /// let fits = FitCache::new();
    /// let ridge = RidgeSettings::default();
    /// let alone = Router::builder().predictor(Predictor::KernelRidge(ridge)).fit_cache(fits.clone()).build()?;
    /// // The same kernel-ridge model, not fitted again; only the low-rank part is new.
    /// let ensemble =
    ///     Router::builder().predictor(Predictor::Ensemble(ridge, LowRankSettings::default())).fit_cache(fits.clone()).build()?;
    /// assert_eq!(fits.len(), 2);
    /// # Ok::<(), semroute::Error>(())
    /// ```
    pub fn fit_cache(mut self, fits: FitCache) -> Self {
        self.fits = Some(fits);
        self
    }

    /// Folder for cached exemplar vectors (default: `<Home>/embeddings`).
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache = Some(Some(dir.into()));
        self
    }

    /// The most bytes the cache folder's files may hold (default
    /// [`DEFAULT_CACHE_BYTES`](crate::index::DEFAULT_CACHE_BYTES), 1 GiB); the least recently
    /// used go first, never those of the exemplars in hand (see [`VectorCache`]).
    ///
    /// ```
    /// let builder = semroute::Router::builder().cache_budget(200 << 20); // 200 MiB
    /// ```
    pub fn cache_budget(mut self, bytes: u64) -> Self {
        self.cache_budget = Some(bytes);
        self
    }

    /// Keeps a durable feedback log at `path` (JSONL): [`Router::learn`] appends to it, and
    /// `build` replays it, so what was learned survives restarts. A torn last line (one without
    /// its newline: a crash mid-write, never acknowledged) is cut with a warning; a complete line
    /// that does not parse, the last one included, is an error naming it, and nothing is cut.
    /// Feedback for a model the price table no longer lists is skipped with a warning (it stays
    /// in the log).
    pub fn feedback_log(mut self, path: impl Into<PathBuf>) -> Self {
        self.feedback_log = Some(path.into());
        self
    }

    /// Finds neighbours in a shared [`ExemplarStore`] (such as [`PgStore`](crate::store) with
    /// the `pgvector` feature) instead of an in-process index, so that many routers share one
    /// collection: what any of them adds or learns, all of them use from their next decision.
    /// At `build`, the router's exemplars (default: the built-in ones) are written to the store
    /// if it lacks them; an exemplar it holds under the same id must be identical. The store must
    /// hold vectors of the router's embedding model (checked). [`Router::reload`] writes new
    /// exemplars to the store and swaps prices; it never deletes from the store.
    pub fn store(mut self, store: Arc<dyn ExemplarStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Do not read or write cached exemplar vectors.
    pub fn no_cache(mut self) -> Self {
        self.cache = Some(None);
        self
    }

    /// Keeps a share of the best model's quality, measured, instead of a fixed bar: at build the
    /// router cross-fits candidate configurations on its exemplars (which must be measured),
    /// chooses one, and routes with its cheapest knob (or the one model) that kept the share out
    /// of fold with the target's margin; [`Router::tuned`] reports what was found. The
    /// candidates are [`RouterConfig::defaults`](crate::target::RouterConfig::defaults) under
    /// both objectives (the bar and USD per quality point) while the router's prediction
    /// settings (predictor, k, temperature, prior strength, similarity threshold, caution) are
    /// its defaults; set any of them otherwise and only this router is tuned, under the bar, or under USD
    /// per quality point when [`usd_per_quality`](RouterBuilder::usd_per_quality) is set (its
    /// value is then replaced). [`QualityTarget::candidates`] and [`QualityTarget::policies`]
    /// choose otherwise. Every model is compared on the same exemplars: those some model has no
    /// result on are set aside from the tuning (at most
    /// [`MAX_SET_ASIDE`](crate::target::MAX_SET_ASIDE) of them,
    /// [`Tuned::exemplars_set_aside`]; the router still learns from them), and a model lacking
    /// more is not routed to (listed in [`Tuned::models_left_out`]; what some exemplars measure
    /// of it is set aside); unless a
    /// [fallback model](RouterBuilder::fallback_model) is set, the safe model is the reference,
    /// the best the exemplars measure. Where one model meets the target alone, every request
    /// that names no models of its own goes to it.
    /// Tuned at build and again at each [reload](Router::reload), on its data; what is added
    /// or learned between keeps the configuration and the knob. See [`crate::target`] for the rule and an example; the
    /// savings benchmark's targets run the same code.
    ///
    /// ```no_run
    /// use semroute::target::QualityTarget;
    /// use semroute::{ExemplarSet, PriceTable, Router};
    ///
    /// let router = Router::builder()
    ///     .exemplars(ExemplarSet::load_file("graded.jsonl")?)
    ///     .prices(PriceTable::from_file("prices.toml")?)
    ///     .quality_target(QualityTarget::keep(0.95))
    ///     .build()?;
    /// println!("{}", router.tuned().expect("tuned"));
    /// # Ok::<(), semroute::Error>(())
    /// ```
    pub fn quality_target(mut self, target: QualityTarget) -> Self {
        self.target = Some(target);
        self
    }

    /// Validates the settings and data, embeds the exemplars (or reads their cached vectors), and
    /// builds the index.
    pub fn build(self) -> Result<Router> {
        let k = self.k.unwrap_or(8);
        if k == 0 {
            return Err(Error::Config("k must be at least 1".into()));
        }
        let session_settings = self.sessions.clone().unwrap_or_default();
        session_settings.check()?;
        let quality_bar = self.quality_bar.unwrap_or(0.7);
        if !(0.0..=1.0).contains(&quality_bar) {
            return Err(Error::Config(format!("quality_bar must be within [0, 1], got {quality_bar}")));
        }
        if let Some(usd) = self.usd_per_quality {
            Objective::UsdPerQuality(usd).check().map_err(Error::Config)?;
        }
        if let Some(s) = self.min_similarity.filter(|s| !(-1.0..=1.0).contains(s)) {
            return Err(Error::Config(format!("min_similarity must be within [-1, 1], got {s}")));
        }
        let unfamiliar_share = self.unfamiliar_share.unwrap_or(DEFAULT_UNFAMILIAR_SHARE);
        if !(0.0..=1.0).contains(&unfamiliar_share) {
            return Err(Error::Config(format!("unfamiliar_share must be within [0, 1], got {unfamiliar_share}")));
        }
        if let Some(caution) = self.caution.filter(|z| !(z.is_finite() && *z >= 0.0)) {
            return Err(Error::Config(format!("caution must be a finite, non-negative number of standard errors, got {caution}")));
        }
        let temperature = self.temperature.unwrap_or(0.05);
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(Error::Config(format!("temperature must be positive, got {temperature}")));
        }
        let prior_strength = self.prior_strength.unwrap_or(0.0);
        if !(prior_strength.is_finite() && prior_strength >= 0.0) {
            return Err(Error::Config(format!("prior_strength must be a non-negative number, got {prior_strength}")));
        }
        let predictor = self.predictor.unwrap_or_default();
        if let Predictor::KernelRidge(r) | Predictor::Blend(r) | Predictor::Ensemble(r, _) | Predictor::Stacked(r, ..) = &predictor {
            r.check()?;
        }
        if let Predictor::LowRank(l) | Predictor::Ensemble(_, l) | Predictor::Stacked(_, l, _) = &predictor {
            l.check().map_err(|e| Error::Config(format!("low-rank settings: {e}")))?;
        }
        if let Predictor::Stacked(_, _, w) = &predictor {
            w.check()?;
        }
        if let Predictor::Features(f) = &predictor {
            if !(f.l2.is_finite() && f.l2 >= 0.0) {
                return Err(Error::Config(format!("the feature model's l2 must be a non-negative number, got {}", f.l2)));
            }
        }
        if self.store.is_some() && !matches!(predictor, Predictor::Auto | Predictor::Neighbours) {
            return Err(Error::Config(
                "the kernel-ridge and low-rank predictors need the in-process index; with a shared store use Predictor::Neighbours or Auto"
                    .into(),
            ));
        }
        // The tokenizer's tables load (about 0.1 s) while the exemplars are indexed.
        let tokens = std::thread::spawn(TokenCounter::cl100k);
        let prices = match self.prices {
            Some(p) => p,
            None => PriceTable::builtin()?,
        };
        let exemplars = match self.exemplars {
            Some(e) => e,
            None => ExemplarSet::builtin()?,
        };
        let embedder = match self.embedder {
            Some(e) => e,
            None => Arc::new(FastEmbedder::load_default()?),
        };
        let tokens = tokens.join().map_err(|_| Error::Config("loading the tokenizer failed".into()))??;
        if let Some(target) = &self.target {
            target.check()?;
            if self.quality_bar.is_some() {
                return Err(Error::Config("a quality target tunes the bar: set a quality bar or a quality target, not both".into()));
            }
            if self.store.is_some() {
                return Err(Error::Config(
                    "a quality target is tuned on the router's own exemplars; it cannot be combined with a shared store".into(),
                ));
            }
        }
        // The fallback model, the similarity threshold and the caution come with the state.
        let settings = Settings {
            k,
            quality_bar,
            usd_per_quality: self.usd_per_quality,
            min_similarity: None,
            unfamiliar_limit: None,
            unfamiliar_share,
            unfamiliar_centred: false,
            caution: DEFAULT_CAUTION,
            caution_derived: false,
            fallback_model: String::new(),
            temperature,
            prior_strength,
            predictor,
        };
        let cache = match self.cache {
            Some(dir) => dir.map(VectorCache::new),
            None => Some(VectorCache::new(Home::from_env().cache_dir())),
        }
        .map(|c| match self.cache_budget {
            Some(bytes) => c.with_budget(bytes),
            None => c,
        });
        // A target's candidates: the configurations its cross-fitting chooses among, and the
        // knobs it turns.
        let target = self.target.map(|target| {
            let own =
                RouterConfig { name: "configured".into(), predictor, k, temperature, prior_strength, min_similarity: self.min_similarity };
            // The router's own prediction settings alone where any differs from its default;
            // else the candidates the savings benchmark compares, the default router first.
            let defaults = RouterConfig::defaults(embedder.as_ref());
            let configured = !defaults.first().is_some_and(|d| d.same_settings(&own)) || self.caution.is_some();
            let configs = match target.asked_candidates() {
                Some(c) => c.to_vec(),
                None if configured => vec![own.clone()],
                None => defaults,
            };
            let policies = match target.asked_policies() {
                Some(p) => p.to_vec(),
                None if self.usd_per_quality.is_some() => vec![Policy::UsdPerQuality],
                None if configured => vec![Policy::QualityBar],
                None => vec![Policy::QualityBar, Policy::UsdPerQuality],
            };
            TargetPlan { target, own, configs, policies }
        });
        let configured = Configured {
            settings,
            fallback: self.fallback_model.clone(),
            min_similarity: self.min_similarity,
            caution: self.caution,
            target,
        };
        let mut state =
            generation(&embedder, &tokens, &configured, exemplars, prices, cache.as_ref(), self.store.as_ref(), self.fits.as_ref())?;
        let mut writer = Writer { added: Vec::new(), added_vectors: Vec::new(), log: None };
        if let Some(path) = &self.feedback_log {
            let (log, found) = Journal::<Feedback>::open(path)?;
            // The last word on an id wins; the log keeps every word.
            let mut by_id: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
            let mut learned: Vec<Exemplar> = Vec::new();
            for fb in found.records {
                if let Err(e) = fb.check(&state.prices) {
                    tracing::warn!("{}: skipped: {e}", path.display());
                    continue;
                }
                let ex = fb.to_exemplar();
                // (A shared store holds what earlier runs learned: `seed` below compares those.)
                if self.store.is_none() && state.exemplars.iter().any(|e| e.id == ex.id) {
                    tracing::warn!("{}: skipped feedback {:?}: its id is taken by an exemplar", path.display(), fb.id);
                    continue;
                }
                match by_id.get(&ex.id) {
                    Some(&i) => learned[i] = ex,
                    None => {
                        by_id.insert(ex.id.clone(), learned.len());
                        learned.push(ex);
                    }
                }
            }
            if let (Some(store), false) = (&self.store, learned.is_empty()) {
                // The shared store keeps what was learned; it may have it already.
                seed(embedder.as_ref(), store.as_ref(), learned, true)?;
                state.exemplars = ExemplarSet::from_exemplars(store.all()?)?;
                state.prior = Prior::from_exemplars(&state.exemplars, &state.prices, prior_strength);
            } else if !learned.is_empty() {
                let set = ExemplarSet::from_exemplars(learned.clone())?;
                writer.added_vectors = exemplar_vectors(embedder.as_ref(), &set, cache.as_ref())?;
                writer.added = learned;
            }
            writer.log = Some(log);
        }
        let router = Router {
            inner: Arc::new(Inner {
                embedder,
                tokens,
                configured,
                cache,
                store: self.store,
                state: ArcSwap::from_pointee(state),
                writer: Mutex::new(Writer { added: Vec::new(), added_vectors: Vec::new(), log: None }),
                reloading: Mutex::new(()),
                refitting: AtomicBool::new(false),
                sessions_in_process: self.session_store.is_none(),
                sessions: self.session_store.unwrap_or_else(|| Arc::new(MemorySessions::new(session_settings.max_sessions))),
                session_settings,
            }),
        };
        if !writer.added.is_empty() {
            let current = router.inner.state.load_full();
            let state = router.extended(&current, writer.added.clone(), writer.added_vectors.clone(), "<feedback log>")?;
            router.inner.state.store(Arc::new(state));
        }
        *router.inner.writer.lock().unwrap_or_else(|p| p.into_inner()) = writer;
        Ok(router)
    }
}

/// `state`'s exemplars followed by `items`: unique ids, every measured model priced. (A shared
/// store may hold exemplars for models this router does not price; only the new ones must be.)
fn validated(state: &State, items: Vec<Exemplar>, origin: &str) -> Result<ExemplarSet> {
    let start = match state.search {
        Search::Local(_) => 0,
        Search::Shared(_) => state.exemplars.len(),
    };
    let exemplars = state.exemplars.with_added(items, origin)?;
    exemplars.check_models_from(start, &state.prices)?;
    Ok(exemplars)
}

/// One generation of data (the build's, or a reload's) under what the builder was given: as it
/// is, or, under a quality target, with the models compared on the same exemplars
/// ([`target::coverage`]), the tuning found (or read back from the vector cache) and the state
/// of the configuration it chose, its knob in the state's settings.
// The builder's and the reload's parts, passed as they are: two private callers.
#[allow(clippy::too_many_arguments)]
fn generation(
    embedder: &Arc<dyn Embedder>,
    tokens: &TokenCounter,
    configured: &Configured,
    exemplars: ExemplarSet,
    prices: PriceTable,
    cache: Option<&VectorCache>,
    store: Option<&Arc<dyn ExemplarStore>>,
    fits: Option<&FitCache>,
) -> Result<State> {
    let Some(plan) = &configured.target else {
        return build_state(
            embedder.as_ref(),
            exemplars,
            prices,
            configured.fallback.as_deref(),
            configured.min_similarity,
            configured.caution,
            &configured.settings,
            cache,
            store,
            fits,
        );
    };
    let TargetPlan { target, own, configs, policies } = plan;
    let measured = target::Measured::new(&exemplars, &prices, tokens, target.reference())?;
    let kept = measured.models().iter().filter_map(|m| prices.get(m).cloned().map(|p| (m.clone(), p)));
    let prices = PriceTable::from_models(kept)?;
    // What some exemplars measure of a model left out is not routed on either.
    let exemplars = if measured.left_out.is_empty() { exemplars } else { target::without_models(&exemplars, &measured.left_out)? };
    // The safe model is the target's reference (named, or the best the exemplars measure),
    // unless one is set.
    let fallback = configured.fallback.clone().unwrap_or_else(|| measured.reference_model().to_string());
    let mut settings = configured.settings.clone();
    let (caution, unfamiliar_share) = (configured.caution, settings.unfamiliar_share);
    // The fits and the graph are kept for the router of the configuration the target chooses.
    let own_fits;
    let fits = match fits {
        Some(f) => f,
        None => {
            own_fits = FitCache::new();
            &own_fits
        }
    };
    // Where a target chooses among several, the first state (its exemplars' vectors and graph,
    // which the cross-fitting reads) fits nothing: the chosen configuration's router is built
    // after.
    let placeholder = !(configs.len() == 1 && configs[0].same_settings(own));
    let first_settings = Settings { predictor: Predictor::Neighbours, ..settings.clone() };
    let mut state = build_state(
        embedder.as_ref(),
        exemplars,
        prices,
        Some(&fallback),
        configured.min_similarity,
        caution,
        if placeholder { &first_settings } else { &settings },
        cache,
        None,
        Some(fits),
    )?;
    let Search::Local(index) = &state.search else {
        return Err(Error::Config("a quality target needs the in-process index".into()));
    };
    let fold_prices: PriceTable = (*state.prices).clone();
    // The folds' routers fall back to the whole set's safe model, as this one does.
    let fallback = state.fallback_model.clone();
    // Each fold's router: a configuration and these settings on that fold's exemplars,
    // embedding nothing.
    let build = move |config: &RouterConfig, exemplars: ExemplarSet, embedder: Arc<dyn Embedder>, graphs: &Path, fits: &FitCache| {
        let mut b = config
            .apply(Router::builder())
            .embedder(embedder)
            .exemplars(exemplars)
            .prices(fold_prices.clone())
            .unfamiliar_share(unfamiliar_share)
            .cache_dir(graphs)
            .fit_cache(fits.clone());
        if let Some(z) = caution {
            b = b.caution(z);
        }
        b.fallback_model(fallback.clone()).build()
    };
    let vectors: Vec<Vec<f32>> = index.vectors().map(<[f32]>::to_vec).collect();
    // A tuning found before for the very same inputs is read back, not redone.
    let kept = cache.map(target::TunedCache::new);
    let key = tuning_key(embedder.model_id(), plan, caution, unfamiliar_share, &state);
    let found = kept.as_ref().and_then(|k| k.get(&key, configs.len()));
    let (tuned, chosen) = match found {
        Some((i, tuned)) => (tuned, &configs[i]),
        None => {
            // The tuning compares the models on the exemplars that measure them all (see
            // target::coverage); the router learns from every exemplar.
            let aside = &measured.set_aside;
            let compared_set;
            let (compared, compared_vectors) = if aside.is_empty() {
                (&state.exemplars, vectors.clone())
            } else {
                let kept = |i: &usize| aside.binary_search(i).is_err();
                compared_set =
                    ExemplarSet::from_exemplars((0..state.exemplars.len()).filter(kept).map(|i| state.exemplars.get(i).clone()).collect())?;
                (&compared_set, (0..vectors.len()).filter(kept).map(|i| vectors[i].clone()).collect())
            };
            let (tuned, i) = target::tune(target::Tuning {
                target: target.clone(),
                exemplars: compared,
                vectors: compared_vectors,
                measured,
                embedder: embedder.clone(),
                configs: configs.clone(),
                policies: policies.clone(),
                build: &build,
            })?;
            if let Some(k) = &kept {
                k.put(&key, i, &tuned);
            }
            (tuned, &configs[i])
        }
    };
    if placeholder || !chosen.same_settings(own) {
        // The chosen configuration's router, over the same exemplars (their vectors and graph
        // known).
        settings.k = chosen.k;
        settings.temperature = chosen.temperature;
        settings.prior_strength = chosen.prior_strength;
        settings.predictor = chosen.predictor;
        let known = Memo::with_vectors(embedder.clone(), state.exemplars.iter().map(|e| e.prompt.as_str()).zip(&vectors));
        let fallback_model = state.fallback_model.clone();
        state = build_state(
            &known,
            state.exemplars.clone(),
            (*state.prices).clone(),
            Some(&fallback_model),
            chosen.min_similarity,
            caution,
            &settings,
            None,
            None,
            Some(fits),
        )?;
    }
    match tuned.point {
        OperatingPoint::Knob(Objective::QualityBar(b)) => {
            settings.quality_bar = b;
            settings.usd_per_quality = None;
        }
        OperatingPoint::Knob(Objective::UsdPerQuality(u)) => settings.usd_per_quality = Some(u),
        OperatingPoint::Model(_) => {}
    }
    tracing::info!("{tuned}");
    state.settings = settings;
    state.tuned = Some(Arc::new(tuned));
    Ok(state)
}

/// The key a target's tuning is kept under in the cache folder: everything the tuning reads
/// (semroute's version, the embedding model, the target, its candidates and knobs, the caution,
/// the unfamiliarity share, the safe model, the prices and the exemplars with their grades).
fn tuning_key(model_id: &str, plan: &TargetPlan, caution: Option<f64>, unfamiliar_share: f64, state: &State) -> String {
    let TargetPlan { target, configs, policies, .. } = plan;
    let mut parts: Vec<String> = vec![
        format!("semroute {}", env!("CARGO_PKG_VERSION")),
        model_id.to_string(),
        format!("{target:?}"),
        format!("{configs:?}"),
        format!("{policies:?}"),
        format!("caution {caution:?}, unfamiliar share {unfamiliar_share:?}, fallback {}", state.fallback_model),
    ];
    for name in state.prices.names() {
        parts.push(name.to_string());
        parts.push(state.prices.get(name).map(|p| serde_json::to_string(p).unwrap_or_default()).unwrap_or_default());
    }
    for e in state.exemplars.iter() {
        parts.extend([e.id.clone(), e.prompt.clone(), serde_json::to_string(&e.grade).unwrap_or_default()]);
    }
    target::TunedCache::key(parts.iter().map(String::as_str))
}

/// Validates, embeds and indexes one generation of data.
// The builder's and the reload's parts, passed as they are: two private callers.
#[allow(clippy::too_many_arguments)]
fn build_state(
    embedder: &dyn Embedder,
    exemplars: ExemplarSet,
    prices: PriceTable,
    fallback: Option<&str>,
    min_similarity: Option<f32>,
    caution: Option<f64>,
    settings: &Settings,
    cache: Option<&VectorCache>,
    store: Option<&Arc<dyn ExemplarStore>>,
    fits: Option<&FitCache>,
) -> Result<State> {
    if exemplars.is_empty() {
        return Err(Error::Config("the exemplar set is empty".into()));
    }
    exemplars.check_models(&prices)?;
    let fallback_model = match fallback {
        Some(m) => {
            prices.require(m, "the router's fallback model")?;
            m.to_string()
        }
        None => default_fallback(&prices),
    };
    let (exemplars, search) = match store {
        None => {
            let index = match fits {
                Some(fits) => fits.graph(embedder.model_id(), &exemplars.content_hash(), || exemplar_graph(embedder, &exemplars, cache))?,
                None => LiveIndex::new(exemplar_graph(embedder, &exemplars, cache)?),
            };
            (exemplars, Search::Local(index))
        }
        Some(store) => {
            seed(embedder, store.as_ref(), exemplars.iter().cloned().collect(), false)?;
            (ExemplarSet::from_exemplars(store.all()?)?, Search::Shared(store.clone()))
        }
    };
    let (predictor, selected, quality, caution) =
        quality_model(&search, &exemplars, &prices, settings, None, embedder, caution, &fallback_model, fits);
    let prior = Prior::from_exemplars(&exemplars, &prices, settings.prior_strength);
    let familiarity = match (min_similarity, &search) {
        (Some(s), _) => Some(Familiarity::Similarity(s)),
        (None, Search::Local(index)) => Familiarity::derive(index, &exemplars, settings.unfamiliar_share),
        (None, Search::Shared(_)) => None,
    }
    .unwrap_or_else(|| Familiarity::Similarity(embedder.suggested_min_similarity().unwrap_or(0.3)));
    let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
    let fitted_on = exemplars.len();
    Ok(State {
        exemplars,
        search,
        prices: Arc::new(prices),
        prior,
        quality,
        predictor,
        selected,
        fallback_model,
        familiarity,
        generation,
        fitted_on,
        caution,
        settings: settings.clone(),
        tuned: None,
    })
}

/// When [`Router::grown`] refits the quality model.
#[derive(Clone, Copy)]
enum Refit {
    /// On the caller's thread (build, reload, bulk additions).
    Now,
    /// In the background ([`Router::learn`]).
    Later,
}

/// Default of [`RouterBuilder::unfamiliar_share`].
pub const DEFAULT_UNFAMILIAR_SHARE: f64 = 0.02;

/// [`RouterBuilder::caution`] where it cannot be derived from hand labels (measured exemplars, a
/// shared store, a predictor other than kernel ridge): what the derived rule gives the built-in
/// exemplars with the default embedder.
pub const DEFAULT_CAUTION: f64 = 0.75;

/// The share of the hand-labelled exemplars that a derived caution lets go to a weaker tier than
/// their label, each decided on its own leave-one-out predictions (see [`RouterBuilder::caution`]).
pub const DERIVED_CAUTION_UNDER: f64 = 0.02;

/// The caution in force for a state, and whether it was derived: the one configured; else the
/// least caution, in steps of 0.05 up to 3, at which at most [`DERIVED_CAUTION_UNDER`] of the
/// hand-labelled exemplars (or, where no step gets there, as few as at 3) go to a weaker tier
/// than their label when the policy decides each on the predictions it would get were it not an
/// exemplar: the kernel-ridge model's exact leave-one-out quality and error
/// ([`QualityModel::left_out`](crate::predict::QualityModel::left_out)), at the router's default
/// bar, priced at the label's answer length and about four bytes a token; else (no kernel-ridge
/// model in force, or fewer than [`KERNEL_RIDGE_MIN_EXEMPLARS`] labels) [`DEFAULT_CAUTION`]. More
/// caution never sends an exemplar lower, so the steps are bisected: about eight passes over the
/// labels.
fn caution_for(
    configured: Option<f64>,
    exemplars: &ExemplarSet,
    predictor: Predictor,
    quality: Option<&Fitted>,
    prices: &PriceTable,
    settings: &Settings,
    fallback_model: &str,
) -> (f64, bool) {
    if let Some(z) = configured {
        return (z, false);
    }
    let (Predictor::KernelRidge(_), Some(Fitted::Ridge(model))) = (predictor, quality) else {
        return (DEFAULT_CAUTION, false);
    };
    let cases: Vec<(Tier, Predictions, u64)> = exemplars
        .iter()
        .enumerate()
        .filter_map(|(i, e)| {
            let Grade::Labelled(label) = &e.grade else { return None };
            let per_model = model
                .left_out(i)
                .into_iter()
                .map(|(m, (quality, quality_se))| {
                    let p = ModelPrediction {
                        quality,
                        output_tokens: f64::from(label.output_tokens),
                        support: 1.0,
                        effective_neighbours: 1.0,
                        cost_usd: None,
                        quality_se,
                        output_tokens_se: 0.0,
                        cost_se_usd: None,
                    };
                    (m, p)
                })
                .collect();
            Some((label.tier, Predictions { per_model, weights: Vec::new() }, e.prompt.len() as u64 / 4))
        })
        .collect();
    if cases.len() < KERNEL_RIDGE_MIN_EXEMPLARS {
        return (DEFAULT_CAUTION, false);
    }
    // Conformal risk control's finite-sample rule (Angelopoulos et al., 2022): with the prompt
    // to come counted as one more case that goes lower, k of n may go lower where
    // (k + 1) / (n + 1) stays within the share, so that the share holds in expectation for a
    // new prompt exchangeable with the exemplars (here on leave-one-out predictions, the
    // jackknife's, not a held-out split's: an approximation).
    let allowed = (DERIVED_CAUTION_UNDER * (cases.len() + 1) as f64 - 1.0).floor().max(0.0) as usize;
    let step = |k: usize| k as f64 / 20.0;
    let under = |k: usize| {
        cases
            .iter()
            .filter(|(label, predictions, input_tokens)| {
                let input = ChoiceInput {
                    predictions,
                    prices,
                    input_tokens: *input_tokens,
                    unfamiliar: None,
                    objective: Objective::QualityBar(settings.quality_bar),
                    caution: step(k),
                    fallback_model,
                    default_output_tokens: DEFAULT_OUTPUT_TOKENS,
                    cache: None,
                };
                let choice = choose(input, &Constraints::default());
                choice.chosen.and_then(|c| choice.candidates[c].tier).is_some_and(|t| t < *label)
            })
            .count()
    };
    // Where no caution keeps the share (labels the predictions are sure of and wrong about),
    // the least caution that sends as few lower as the most does: more would only cost.
    let (mut low, mut high) = (0, 60);
    let allowed = allowed.max(under(high));
    if under(low) <= allowed {
        return (0.0, true);
    }
    while high - low > 1 {
        let mid = (low + high) / 2;
        if under(mid) <= allowed {
            high = mid;
        } else {
            low = mid;
        }
    }
    (step(high), true)
}

/// The predictor in force for these exemplars, the model it fits, if any (only over the
/// in-process index, which holds every exemplar's vector), and the caution in force with it
/// ([`caution_for`]: derived from the model where it can be, so the two are fitted together).
/// With [`Predictor::Auto`] and a set of measured exemplars only (at least 50), cross-validation
/// on the exemplars (on 2,000 evenly spread above that many) chooses among blend, neighbours,
/// kernel ridge, low rank, their ensemble, the feature model and their stack ([`select`]); once
/// chosen (`selected`), the choice is kept as exemplars are added. A fit that fails leaves the
/// neighbours to predict, with a warning: refusing would make an exemplar or a piece of
/// feedback, already kept, stop the router from starting.
// A state's parts, passed as they are: three private callers.
#[allow(clippy::too_many_arguments)]
fn quality_model(
    search: &Search,
    exemplars: &ExemplarSet,
    prices: &PriceTable,
    settings: &Settings,
    selected: Option<Predictor>,
    embedder: &dyn Embedder,
    configured_caution: Option<f64>,
    fallback_model: &str,
    fits: Option<&FitCache>,
) -> (Predictor, Option<Predictor>, Option<Arc<Fitted>>, (f64, bool)) {
    let (predictor, selected, quality) = 'fit: {
        let Search::Local(index) = search else {
            break 'fit (settings.predictor, selected, None);
        };
        let n = exemplars.len();
        let in_range = (KERNEL_RIDGE_MIN_EXEMPLARS..=KERNEL_RIDGE_MAX_EXEMPLARS).contains(&n);
        let mut selected = selected;
        let predictor = match (settings.predictor, selected) {
            (Predictor::Auto, Some(p)) => p,
            (Predictor::Auto, None)
                if n >= KERNEL_RIDGE_MIN_EXEMPLARS && exemplars.iter().all(|e| matches!(e.grade, Grade::Measured { .. })) =>
            {
                let vectors: Vec<Vec<f32>> = index.vectors().map(<[f32]>::to_vec).collect();
                let candidates = select::Candidates {
                    k: settings.k,
                    temperature: settings.temperature,
                    prior: Prior::from_exemplars(exemplars, prices, settings.prior_strength),
                    ridge: RidgeSettings::for_embedder(embedder),
                    low_rank: LowRankSettings::for_router(),
                };
                // Above KERNEL_RIDGE_MAX_EXEMPLARS, the choice is made on that many evenly
                // spread (as the kernel model is fitted), so that building a router on a large
                // graded workload costs what it does at that size; the choice is then fitted on
                // every exemplar.
                let scores = if n > KERNEL_RIDGE_MAX_EXEMPLARS {
                    let keep = crate::predict::evenly_spread(n, KERNEL_RIDGE_MAX_EXEMPLARS);
                    let spread = keep.iter().map(|&i| vectors[i].clone()).collect::<Vec<_>>();
                    ExemplarSet::from_exemplars(keep.iter().map(|&i| exemplars.get(i).clone()).collect())
                        .and_then(|set| select::cross_validate(&set, &spread, prices, &candidates, 5))
                } else {
                    select::cross_validate(exemplars, &vectors, prices, &candidates, 5)
                };
                match scores {
                    Ok(scores) => {
                        let best = scores.best().0;
                        tracing::info!("Predictor::Auto chose {} by cross-validation: {:?}", best.describe(true), scores.scores);
                        selected = Some(best);
                        best
                    }
                    Err(e) => {
                        tracing::warn!("Predictor::Auto could not cross-validate, so it blends: {e}");
                        Predictor::Blend(RidgeSettings::for_embedder(embedder))
                    }
                }
            }
            (Predictor::Auto, None) if in_range => Predictor::KernelRidge(RidgeSettings::for_embedder(embedder)),
            (Predictor::Auto, None) => Predictor::Neighbours,
            (explicit, _) => explicit,
        };
        if matches!(predictor, Predictor::Neighbours | Predictor::Auto) {
            break 'fit (predictor, selected, None);
        }
        let vectors: Vec<Vec<f32>> = index.vectors().map(<[f32]>::to_vec).collect();
        match predictor.fit_cached(exemplars, &vectors, prices, embedder, fits) {
            Ok(model) => (predictor, selected, model.map(Arc::new)),
            Err(e) => {
                tracing::warn!("the neighbours alone predict quality: {e}");
                (predictor, selected, None)
            }
        }
    };
    let caution = caution_for(configured_caution, exemplars, predictor, quality.as_deref(), prices, settings, fallback_model);
    (predictor, selected, quality, caution)
}

/// Writes to a shared store those of `items` it lacks (embedding only them). One it holds under
/// the same id must be identical, else this fails naming it; with `keep_stored`, the stored one
/// is kept with a warning instead (for replayed feedback, which the store may have seen).
fn seed(embedder: &dyn Embedder, store: &dyn ExemplarStore, items: Vec<Exemplar>, keep_stored: bool) -> Result<()> {
    store.attach(embedder.model_id(), embedder.dim())?;
    let missing = |items: Vec<Exemplar>| -> Result<Vec<Exemplar>> {
        let ids: Vec<&str> = items.iter().map(|e| e.id.as_str()).collect();
        let stored: std::collections::HashMap<String, Exemplar> = store.existing(&ids)?.into_iter().map(|e| (e.id.clone(), e)).collect();
        let mut out = Vec::new();
        for ex in items {
            match stored.get(&ex.id) {
                None => out.push(ex),
                Some(old) if *old == ex => {}
                Some(_) if keep_stored => tracing::warn!("{}: keeps its own exemplar `{}`", store.describe(), ex.id),
                Some(_) => {
                    return Err(Error::Store {
                        source: None,
                        store: store.describe(),
                        message: format!("holds a different exemplar under id `{}` (change the id, or the store's copy)", ex.id),
                    })
                }
            }
        }
        Ok(out)
    };
    let todo = missing(items)?;
    if todo.is_empty() {
        return Ok(());
    }
    let prompts: Vec<&str> = todo.iter().map(|e| e.prompt.as_str()).collect();
    let mut vectors = Vec::with_capacity(prompts.len());
    for chunk in prompts.chunks(256) {
        vectors.extend(embedder.embed_batch(chunk)?);
    }
    match store.insert(&todo, &vectors) {
        Ok(()) => Ok(()),
        // Another router seeding the same store at the same moment: fine if it wrote the same.
        Err(e) => match missing(todo) {
            Ok(still) if still.is_empty() => Ok(()),
            _ => Err(e),
        },
    }
}

/// The cheapest model (by output price) of the table's highest tier; without any tier, the model
/// with the highest output price.
fn default_fallback(prices: &PriceTable) -> String {
    let top = prices.iter().map(|(_, p)| p.tier).max().expect("a PriceTable is never empty");
    if top.is_none() {
        return prices.strongest().to_string();
    }
    prices
        .iter()
        .filter(|(_, p)| p.tier == top)
        .min_by(|a, b| a.1.output_per_mtok.total_cmp(&b.1.output_per_mtok).then_with(|| a.0.cmp(b.0)))
        .map(|(name, _)| name.to_string())
        .expect("the top tier has a model")
}

/// The exemplars' index graph: the saved one when the cache holds a valid one for this model and
/// these exemplars (no embedding, no graph building), else built and saved. A saved graph that
/// does not match or is damaged is rebuilt, with a warning, never used.
fn exemplar_graph(embedder: &dyn Embedder, set: &ExemplarSet, cache: Option<&VectorCache>) -> Result<HnswIndex> {
    let hash = set.content_hash();
    if let Some(c) = cache {
        match c.load_graph(embedder.model_id(), &hash, set.len(), embedder.dim()) {
            Ok(Some(graph)) => return Ok(graph),
            Ok(None) => {}
            Err(e) => tracing::warn!("rebuilding the exemplar index: {e}"),
        }
    }
    let vectors = exemplar_vectors(embedder, set, cache)?;
    let graph = HnswIndex::build(&vectors)?;
    if let Some(c) = cache {
        // A graph that cannot be saved only costs the next start its speed.
        if let Err(e) = c.save_graph(&graph, embedder.model_id(), &hash) {
            tracing::warn!("could not save the exemplar index: {e}");
        }
    }
    Ok(graph)
}

/// The exemplars' vectors, from the cache when it holds them, else embedded (and cached).
fn exemplar_vectors(embedder: &dyn Embedder, set: &ExemplarSet, cache: Option<&VectorCache>) -> Result<Vec<Vec<f32>>> {
    let hash = set.content_hash();
    if let Some(v) = cache.and_then(|c| c.load(embedder.model_id(), &hash, set.len(), embedder.dim())) {
        return Ok(v);
    }
    let prompts: Vec<&str> = set.iter().map(|e| e.prompt.as_str()).collect();
    let mut vectors = Vec::with_capacity(prompts.len());
    for chunk in prompts.chunks(256) {
        vectors.extend(embedder.embed_batch(chunk)?);
    }
    if let Some(c) = cache {
        // A cache that cannot be written only costs the next start its speed.
        if let Err(e) = c.store(embedder.model_id(), &hash, &vectors) {
            tracing::warn!("could not cache exemplar vectors: {e}");
        }
    }
    Ok(vectors)
}
