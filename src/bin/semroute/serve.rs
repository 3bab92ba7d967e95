//! `semroute serve`: the routing server (`semroute::serve`) behind a command line.
//!
//! ```text
//! semroute serve --config semroute.toml
//! semroute serve --providers providers.toml [--listen 127.0.0.1:8080] \
//!     [--exemplars DIR] [--prices FILE] [--client-keys FILE | --no-auth]
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use semroute::config::Config;
use semroute::serve::Server;
use semroute::Error;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A settings file (`semroute.toml`: `[router]` and `[serve]`); the flags below override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Providers file: per model its protocol, base URL, model id and key variable.
    #[arg(long, value_name = "FILE")]
    providers: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:8080; port 0: any free port, printed at start).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// An exemplar JSONL file, or a folder of them (default: the built-in exemplars).
    #[arg(long, value_name = "DIR")]
    exemplars: Option<PathBuf>,
    /// Price table TOML (default: the built-in price table).
    #[arg(long, value_name = "FILE")]
    prices: Option<PathBuf>,
    /// The installed embedding model to use (a folder under <home>/models).
    #[arg(long, value_name = "NAME")]
    embedding_model: Option<String>,
    /// Default quality bar for `auto` (a request's `auto:<bar>` overrides it).
    #[arg(long, value_name = "X")]
    quality_bar: Option<f64>,
    /// Instead of a bar: keep this share of the best model's measured quality (0.95 or 95%),
    /// tuned at start and at each reload on the exemplars, which must be measured (as
    /// `semroute route --keep`).
    #[arg(long, value_name = "SHARE", value_parser = crate::route::share)]
    keep: Option<f64>,
    /// With --keep: keep that share of this model's quality instead of the best model's.
    #[arg(long, value_name = "MODEL", requires = "keep")]
    of: Option<String>,
    /// A shared exemplar store (`postgresql://...`; the `pgvector` feature): replicas that
    /// name the same store route from, and learn into, the same exemplars.
    #[arg(long, value_name = "URL")]
    store_url: Option<String>,
    /// The store's table (default `semroute_exemplars`).
    #[arg(long, value_name = "NAME")]
    store_table: Option<String>,
    /// File of client keys, one per line (`#` starts a comment).
    #[arg(long, value_name = "FILE")]
    client_keys: Option<PathBuf>,
    /// Serve without client keys (only sensible on loopback).
    #[arg(long, conflicts_with = "client_keys")]
    no_auth: bool,
    /// Where each answer's real tokens and cost are appended (JSONL; default semroute-usage.jsonl).
    #[arg(long, value_name = "FILE")]
    usage_log: Option<PathBuf>,
    /// Log prompt text (off by default) and put it in the usage log.
    #[arg(long)]
    log_prompts: bool,
    /// Serve `/metrics` without a client key (by default it needs one, like every endpoint).
    #[arg(long)]
    public_metrics: bool,
    /// Largest request body accepted, in bytes (default 4 MiB).
    #[arg(long, value_name = "BYTES")]
    max_body_bytes: Option<usize>,
    /// The router's durable learning log (JSONL): feedback posted to `/v1/feedback` is synced
    /// here before it is acknowledged, and replayed at start. It keeps the prompt text (the last
    /// user message) of each request given feedback, since replay embeds it again. Without it,
    /// feedback is learned in memory only and lost at restart.
    #[arg(long, value_name = "FILE")]
    learn_log: Option<PathBuf>,
    /// Answered requests remembered (in memory only) so feedback can name them by request id
    /// (default 10,000).
    #[arg(long, value_name = "N")]
    remember: Option<usize>,
    /// Attempts per model for 429 / 5xx before failing over to the next model (default 1).
    #[arg(long, value_name = "N")]
    max_attempts: Option<u32>,
    /// Seconds a client has to send a request's head (line and headers); a connection that
    /// sends less is closed. Also how long an idle kept-alive connection stays open (default 10).
    #[arg(long, value_name = "SECS")]
    header_timeout_secs: Option<f64>,
    /// On SIGTERM or SIGINT: seconds requests in flight get to finish before the server exits
    /// anyway (default 10).
    #[arg(long, value_name = "SECS")]
    shutdown_secs: Option<f64>,
}

/// The settings file with the flags laid over it.
fn settings(args: Args) -> Result<Config, Error> {
    let mut c = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    let (r, s) = (&mut c.router, &mut c.serve);
    r.exemplars = args.exemplars.or(r.exemplars.take());
    r.prices = args.prices.or(r.prices.take());
    r.embedding_model = args.embedding_model.or(r.embedding_model.take());
    r.quality_bar = args.quality_bar.or(r.quality_bar);
    r.keep_quality = args.keep.or(r.keep_quality);
    r.keep_quality_of = args.of.or(r.keep_quality_of.take());
    r.learn_log = args.learn_log.or(r.learn_log.take());
    r.store_url = args.store_url.or(r.store_url.take());
    r.store_table = args.store_table.or(r.store_table.take());
    s.providers = args.providers.or(s.providers.take());
    s.listen = args.listen.or(s.listen);
    if args.client_keys.is_some() || args.no_auth {
        s.client_keys = args.client_keys;
        s.no_auth = Some(args.no_auth);
    }
    s.usage_log = args.usage_log.or(s.usage_log.take());
    if args.log_prompts {
        s.log_prompts = Some(true);
    }
    if args.public_metrics {
        s.public_metrics = Some(true);
    }
    s.max_body_bytes = args.max_body_bytes.or(s.max_body_bytes);
    s.remember = args.remember.or(s.remember);
    s.max_attempts = args.max_attempts.or(s.max_attempts);
    s.header_timeout_secs = args.header_timeout_secs.or(s.header_timeout_secs);
    s.shutdown_secs = args.shutdown_secs.or(s.shutdown_secs);
    Ok(c)
}

pub fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    tune_allocator();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("SEMROUTE_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    let config = settings(args)?;
    config.check_values()?;
    // Options first: a missing providers or keys file is reported before the model loads.
    let options = config.serve.options(&config.router)?;
    let listen = config.serve.listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
    let learn_log = config.router.learn_log.clone();
    let router = config.router.builder()?.build()?;
    let server = Server::new(router, options)?;

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        let addr = listener.local_addr()?;
        match &learn_log {
            Some(log) => tracing::info!(
                "feedback is learned and synced to {}; that log keeps the prompt text (last user message) of every request \
                 given feedback, because a restart embeds it again to replay what was learned",
                log.display()
            ),
            None => tracing::info!(
                "no learning log: feedback is learned in memory only (lost at restart), and no prompt text is written for it"
            ),
        }
        eprintln!(
            "semroute serve: listening on http://{addr} ({} models: {}; client keys: {})",
            server.served().len(),
            server.served().join(", "),
            if server.needs_client_keys() { "required" } else { "none, --no-auth" }
        );
        server.run(listener, stop_signal()?).await?;
        Ok::<(), Box<dyn std::error::Error>>(())
    });
    // Connections still open after the shutdown deadline are dropped here, not waited for.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Resolves on the first SIGTERM or SIGINT.
fn stop_signal() -> Result<impl std::future::Future<Output = ()>, String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("cannot handle SIGINT: {e}"))?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// glibc's allocator raises its mmap threshold each time a large block is freed, so later
/// multi-megabyte answer buffers come from its per-thread heaps and stay there after use: under
/// a soak with 40 MiB provider answers, resident memory grew about 90 MB a minute (to 1,065 MB in
/// 10 minutes), and stayed under 300 MB with the threshold fixed at 1 MiB and two arenas. The
/// environment (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_ARENA_MAX`) still wins when set.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets allocator parameters; it is called before any thread starts.
        unsafe {
            if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
            }
            if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
                libc::mallopt(libc::M_ARENA_MAX, 2);
            }
        }
    }
}
