//! An OpenAI-compatible routing server: point any agent framework's base URL here (the
//! `server` feature; `semroute serve` is this module behind a command line).
//!
//! - `POST /v1/chat/completions` with `"model": "auto"` (or `"auto:0.8"`, a quality bar) routes the
//!   last user message, counting the whole conversation's tokens, and forwards the request to the
//!   chosen model in its own protocol (OpenAI-compatible or Anthropic messages, translated both
//!   ways). The answer is OpenAI-shaped, whole or streamed (`"stream": true`, passed through chunk
//!   by chunk as server-sent events). A model name from the providers file is served as asked.
//! - Each answer says why: `x-semroute-*` headers (chosen model, predicted quality, expected and
//!   actual cost, failover) and a `semroute` object in the body (in the usage chunk of a stream
//!   that asked for `stream_options.include_usage`).
//! - If the chosen provider times out, rate-limits or fails (5xx, connection) before the first
//!   byte, the request goes to the next model of the decision's
//!   [`failover`](crate::RouteDecision::failover) order: the policy's own rule, applied again
//!   without the models already tried.
//! - `GET /v1/models` lists `auto` and the models served; `GET /metrics` is Prometheus text.
//! - Every endpoint but `/health` needs a client key ([`ClientKeys`]), checked by one middleware
//!   (`/metrics` may be made public). Provider keys stay in the server's environment and are
//!   never logged; prompts are logged only when asked ([`ServeOptions::log_prompts`]).
//! - Every answer's real tokens and cost are appended to the usage log as a [`UsageRecord`].
//! - `POST /v1/feedback {"request_id": ..., "quality": 0..1}` teaches the router how well the
//!   model that answered did; only the client key that made a request can give feedback on it.
//!   `POST /admin/reload` or SIGHUP re-reads exemplars and prices without dropping a request
//!   (a quality target, `--keep`, is tuned again on them; the answer says what it found).
//! - A request head must arrive within [`ServeOptions::header_timeout`]; when the `stop` future
//!   given to [`Server::run`] resolves, the server stops accepting and returns when its requests
//!   are done or [`ServeOptions::shutdown_deadline`] has passed.
//!
//! ```no_run
//! use semroute::provider::Providers;
//! use semroute::serve::{ClientKeys, ServeOptions, Server};
//!
//! # async fn run() -> semroute::Result<()> {
//! let router = semroute::Router::builder().build()?;
//! let mut options = ServeOptions::new(Providers::from_file("providers.toml")?);
//! options.client_keys = Some(ClientKeys::from_file("client-keys.txt")?);
//! let server = Server::new(router, options)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await.map_err(|e| semroute::Error::Config(e.to_string()))?;
//! server.run(listener, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```

mod admin;
mod api;
mod auth;
mod chat;
mod metrics;
mod record;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tracing::{debug, info, warn};

pub use auth::ClientKeys;
pub use record::{Failover, NeighbourRef, SessionRef, UsageRecord, USAGE_SCHEMA_VERSION};

use crate::chat::Usage;
use crate::error::{Error, Result};
use crate::pricing::TokenCounter;
use crate::provider::{ApiKey, Client, Providers, RetryPolicy};
use crate::Router;
use metrics::Metrics;
use record::UsageLog;

/// How a [`Server`] runs. [`ServeOptions::new`] gives the defaults; change the fields you need.
///
/// ```
/// use semroute::serve::ServeOptions;
///
/// let toml = "[models.m]\nprotocol = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"m\"\napi_key_env = \"M_KEY\"\n";
/// let providers = semroute::provider::Providers::from_toml_str(toml, "providers.toml")?;
/// let mut o = ServeOptions::new(providers);
/// o.log_prompts = false;
/// assert_eq!(o.max_body_bytes, 4 << 20);
/// # Ok::<(), semroute::Error>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServeOptions {
    /// Per model its protocol, base URL, model id and key variable.
    pub providers: Providers,
    /// The keys clients must send; `None` serves without client keys (only sensible on loopback).
    pub client_keys: Option<ClientKeys>,
    /// Serve `/metrics` without a client key.
    pub public_metrics: bool,
    /// Where each answer's real tokens and cost are appended (JSONL of [`UsageRecord`]).
    pub usage_log: PathBuf,
    /// Log prompt text and put it in the usage log (off by default).
    pub log_prompts: bool,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Answered requests remembered (in memory only) so feedback can name them by request id.
    pub remember: usize,
    /// Attempts per model for 429 / 5xx before failing over to the next model.
    pub max_attempts: u32,
    /// How long a client has to send a request's head; also how long an idle kept-alive
    /// connection stays open. More than zero.
    pub header_timeout: Duration,
    /// After `stop`: how long requests in flight get to finish before [`Server::run`] returns.
    pub shutdown_deadline: Duration,
    /// Where `/admin/reload` and SIGHUP re-read exemplars from (a JSONL file or a folder; `None`:
    /// the built-in exemplars).
    pub reload_exemplars: Option<PathBuf>,
    /// Where they re-read prices from (`None`: the built-in price table).
    pub reload_prices: Option<PathBuf>,
}

impl ServeOptions {
    /// The defaults for these providers: client keys required (set [`client_keys`](Self::client_keys)),
    /// usage log `semroute-usage.jsonl`, 4 MiB bodies, 10,000 requests remembered, one attempt per
    /// model, 10 s for a request head and 10 s to shut down.
    pub fn new(providers: Providers) -> Self {
        ServeOptions {
            providers,
            client_keys: None,
            public_metrics: false,
            usage_log: PathBuf::from("semroute-usage.jsonl"),
            log_prompts: false,
            max_body_bytes: 4 << 20,
            remember: 10_000,
            max_attempts: 1,
            header_timeout: Duration::from_secs(10),
            shutdown_deadline: Duration::from_secs(10),
            reload_exemplars: None,
            reload_prices: None,
        }
    }
}

/// The routing server: a [`Router`] behind the OpenAI chat-completions API.
pub struct Server {
    app: Arc<App>,
    writer: std::thread::JoinHandle<()>,
    header_timeout: Duration,
    shutdown_deadline: Duration,
    max_body_bytes: usize,
}

/// What the handlers share.
pub(crate) struct App {
    router: Router,
    providers: Providers,
    /// Provider key per served model.
    keys: HashMap<String, ApiKey>,
    /// Models with an endpoint, a price and a key, sorted.
    served: Vec<String>,
    client: Client,
    client_keys: Option<ClientKeys>,
    public_metrics: bool,
    metrics: Metrics,
    usage_log: UsageLog,
    log_prompts: bool,
    tokens: TokenCounter,
    /// Recent answers by request id: what feedback on them teaches (prompts stay in memory).
    recent: std::sync::Mutex<lru::LruCache<String, Answered>>,
    reload_exemplars: Option<PathBuf>,
    reload_prices: Option<PathBuf>,
}

/// One answered request, kept so that feedback on it can be learned.
#[derive(Clone)]
pub(crate) struct Answered {
    /// Only this client may give feedback on it.
    caller: auth::Caller,
    prompt: String,
    model: String,
    output_tokens: u64,
    cost_usd: f64,
}

impl App {
    fn cost(&self, model: &str, usage: Usage) -> f64 {
        self.router.prices().get(model).map_or(0.0, |p| p.cost_of(&usage))
    }

    fn strongest_cost(&self, usage: Usage) -> f64 {
        self.cost(self.router.prices().strongest(), usage)
    }
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// A request id no client can guess: 128 bits from the operating system's CSPRNG.
fn new_request_id() -> std::result::Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(format!("sr-{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

impl Server {
    /// Checks the options against the router and the environment, and opens the usage log.
    /// Models whose key variable is not set are not served (a warning says so).
    ///
    /// # Errors
    /// [`Error::Config`] for a zero header timeout, [`Error::NothingToServe`] when no provider's key
    /// variable is set, [`Error::UnknownModel`] for a provider model the price table lacks, and
    /// [`Error::Io`] when the usage log cannot be opened.
    pub fn new(router: Router, options: ServeOptions) -> Result<Self> {
        if options.header_timeout.is_zero() {
            return Err(Error::Config("the header timeout must be more than 0".into()));
        }
        let providers = options.providers;
        providers.check_prices(&router.prices())?;
        let mut keys = HashMap::new();
        for name in providers.names() {
            let ep = providers.get(name).expect("listed");
            match ApiKey::from_env(&ep.api_key_env) {
                Ok(k) => {
                    keys.insert(name.to_string(), k);
                }
                Err(_) => warn!("model `{name}` is not served: its key variable {} is not set", ep.api_key_env),
            }
        }
        if keys.is_empty() {
            let vars: Vec<&str> = providers.names().filter_map(|n| providers.get(n)).map(|e| e.api_key_env.as_str()).collect();
            return Err(Error::NothingToServe(format!("none of the providers' key variables is set ({})", vars.join(", "))));
        }
        let mut served: Vec<String> = keys.keys().cloned().collect();
        served.sort();
        let client = Client::new(RetryPolicy { max_attempts: options.max_attempts.max(1), ..RetryPolicy::default() })?;
        let (usage_log, writer) = UsageLog::open(&options.usage_log)?;
        let remember = std::num::NonZeroUsize::new(options.remember.max(1)).expect("at least 1");
        let app = Arc::new(App {
            router,
            providers,
            keys,
            served,
            client,
            client_keys: options.client_keys,
            public_metrics: options.public_metrics,
            metrics: Metrics::new(),
            usage_log,
            log_prompts: options.log_prompts,
            tokens: TokenCounter::cl100k()?,
            recent: std::sync::Mutex::new(lru::LruCache::new(remember)),
            reload_exemplars: options.reload_exemplars,
            reload_prices: options.reload_prices,
        });
        Ok(Server {
            app,
            writer,
            header_timeout: options.header_timeout,
            shutdown_deadline: options.shutdown_deadline,
            max_body_bytes: options.max_body_bytes,
        })
    }

    /// The models served (an endpoint, a price and a key each), sorted.
    pub fn served(&self) -> &[String] {
        &self.app.served
    }

    /// Whether clients need a key.
    pub fn needs_client_keys(&self) -> bool {
        self.app.client_keys.is_some()
    }

    /// The routes, with their middleware: what [`run`](Self::run) serves.
    fn routes(&self) -> axum::Router {
        let app = self.app.clone();
        let keyed = axum::Router::new()
            .route("/v1/chat/completions", post(chat::completions))
            .route("/v1/models", get(admin::list_models))
            .route("/v1/feedback", post(admin::feedback))
            .route("/admin/reload", post(admin::reload));
        let metrics = axum::Router::new().route("/metrics", get(admin::metrics_text));
        let (keyed, metrics) = {
            let auth = axum::middleware::from_fn_with_state(app.clone(), auth::require_key);
            if app.public_metrics {
                (keyed.layer(auth), metrics)
            } else {
                (keyed.layer(auth.clone()), metrics.layer(auth))
            }
        };
        keyed.merge(metrics).route("/health", get(|| async { "ok" })).layer(DefaultBodyLimit::max(self.max_body_bytes)).with_state(app)
    }

    /// Serves HTTP/1 connections from `listener` until `stop` resolves; SIGHUP reloads exemplars
    /// and prices (on Unix). Then stops accepting and waits at most the shutdown deadline for the
    /// requests in flight, and for the usage log to be written. Needs a multi-threaded tokio
    /// runtime (routing runs on its blocking pool).
    ///
    /// # Errors
    /// [`Error::Io`] when the listener's address cannot be read.
    pub async fn run(self, listener: tokio::net::TcpListener, stop: impl std::future::Future<Output = ()>) -> Result<()> {
        let routes = self.routes();
        let Server { app, writer, header_timeout, shutdown_deadline, .. } = self;
        let hup_task = tokio::spawn(reload_on_sighup(app.clone()));
        let finished = serve_until(listener, routes, header_timeout, stop, shutdown_deadline).await;
        hup_task.abort();
        let _ = hup_task.await;
        // Close the channel (the last sender is in `app`) and let the writer drain, when every
        // connection has ended and nothing else holds the state (a connection's task lets go of
        // it just after the connection ends).
        for _ in 0..100 {
            if !finished || Arc::strong_count(&app) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if finished && Arc::strong_count(&app) == 1 {
            drop(app);
            let _ = writer.join();
        }
        Ok(())
    }
}

/// SIGHUP reloads exemplars and prices, like `POST /admin/reload`.
async fn reload_on_sighup(app: Arc<App>) {
    #[cfg(unix)]
    {
        let Ok(mut signal) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            return;
        };
        while signal.recv().await.is_some() {
            let a = app.clone();
            match tokio::task::spawn_blocking(move || admin::reload_data(&a)).await {
                Ok(Ok(done)) => done.log("reloaded on SIGHUP"),
                Ok(Err(e)) => warn!("reload on SIGHUP refused, the old exemplars and prices stay: {e}"),
                Err(e) => warn!("reload on SIGHUP failed: {e}"),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = app;
}

/// Serves HTTP/1 connections until `stop`, each given `header_timeout` to send a request head
/// (and that long idle between requests); then stops accepting and waits at most `deadline` for
/// the requests in flight. Whether every connection ended in time.
async fn serve_until(
    listener: tokio::net::TcpListener,
    routes: axum::Router,
    header_timeout: Duration,
    stop: impl std::future::Future<Output = ()>,
    deadline: Duration,
) -> bool {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(header_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(routes.clone())));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                // Slow or broken clients (a header that took too long, a reset): not the server's fault.
                debug!("connection ended: {e}");
            }
        });
    }
    drop(listener);
    drop(routes);
    info!("shutting down: no new connections; waiting up to {deadline:?} for requests in flight");
    match tokio::time::timeout(deadline, graceful.shutdown()).await {
        Ok(()) => true,
        Err(_) => {
            warn!("requests still in flight after {deadline:?} (the shutdown deadline): exiting anyway");
            false
        }
    }
}
