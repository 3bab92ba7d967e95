//! `semroute serve`: the routing server (`semroute::serve`) behind a command line.
//!
//! ```text
//! semroute serve --providers providers.toml [--listen 127.0.0.1:8080] \
//!     [--exemplars DIR] [--prices FILE] [--client-keys FILE | --no-auth]
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use semroute::provider::Providers;
use semroute::serve::{ClientKeys, ServeOptions, Server};
use semroute::{Error, ExemplarSet, PriceTable, Router};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Providers file: per model its protocol, base URL, model id and key variable.
    #[arg(long)]
    providers: PathBuf,
    /// Address to listen on (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
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
    /// File of client keys, one per line (`#` starts a comment).
    #[arg(long, value_name = "FILE")]
    client_keys: Option<PathBuf>,
    /// Serve without client keys (only sensible on loopback).
    #[arg(long, conflicts_with = "client_keys")]
    no_auth: bool,
    /// Where each answer's real tokens and cost are appended (JSONL).
    #[arg(long, default_value = "semroute-usage.jsonl")]
    usage_log: PathBuf,
    /// Log prompt text (off by default) and put it in the usage log.
    #[arg(long)]
    log_prompts: bool,
    /// Serve `/metrics` without a client key (by default it needs one, like every endpoint).
    #[arg(long)]
    public_metrics: bool,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    max_body_bytes: usize,
    /// The router's durable learning log (JSONL): feedback posted to `/v1/feedback` is synced
    /// here before it is acknowledged, and replayed at start. It keeps the prompt text (the last
    /// user message) of each request given feedback, since replay embeds it again. Without it,
    /// feedback is learned in memory only and lost at restart.
    #[arg(long, value_name = "FILE")]
    learn_log: Option<PathBuf>,
    /// Answered requests remembered (in memory only) so feedback can name them by request id.
    #[arg(long, default_value_t = 10_000)]
    remember: usize,
    /// Attempts per model for 429 / 5xx before failing over to the next model.
    #[arg(long, default_value_t = 1)]
    max_attempts: u32,
    /// Seconds a client has to send a request's head (line and headers); a connection that
    /// sends less is closed. Also how long an idle kept-alive connection stays open.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    header_timeout_secs: f64,
    /// On SIGTERM or SIGINT: seconds requests in flight get to finish before the server exits anyway.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    shutdown_secs: f64,
}

fn build_router(args: &Args) -> Result<Router, Error> {
    let mut b = Router::builder();
    if let Some(name) = &args.embedding_model {
        b = b.embedder(Arc::new(semroute::FastEmbedder::load_installed(name)?));
    }
    if let Some(dir) = &args.exemplars {
        b = b.exemplars(if dir.is_file() { ExemplarSet::load_file(dir)? } else { ExemplarSet::load_dir(dir)? });
    }
    if let Some(file) = &args.prices {
        b = b.prices(PriceTable::from_file(file)?);
    }
    if let Some(x) = args.quality_bar {
        b = b.quality_bar(x);
    }
    if let Some(log) = &args.learn_log {
        b = b.feedback_log(log);
    }
    b.build()
}

/// A flag's seconds as a duration (finite, not negative).
fn secs(flag: &str, s: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(s).map_err(|_| format!("{flag}: {s} is not a number of seconds"))
}

pub fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    tune_allocator();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("SEMROUTE_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    let header_timeout = secs("--header-timeout-secs", args.header_timeout_secs)?;
    if header_timeout.is_zero() {
        return Err("--header-timeout-secs must be more than 0".into());
    }
    let client_keys = match (&args.client_keys, args.no_auth) {
        (Some(path), _) => Some(ClientKeys::from_file(path)?),
        (None, true) => None,
        (None, false) => return Err("give --client-keys FILE (one key per line), or --no-auth to serve without client keys".into()),
    };
    let mut options = ServeOptions::new(Providers::from_file(&args.providers)?);
    options.client_keys = client_keys;
    options.public_metrics = args.public_metrics;
    options.usage_log = args.usage_log.clone();
    options.log_prompts = args.log_prompts;
    options.max_body_bytes = args.max_body_bytes;
    options.remember = args.remember;
    options.max_attempts = args.max_attempts;
    options.header_timeout = header_timeout;
    options.shutdown_deadline = secs("--shutdown-secs", args.shutdown_secs)?;
    options.reload_exemplars = args.exemplars.clone();
    options.reload_prices = args.prices.clone();

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = rt.block_on(async {
        let router = build_router(&args)?;
        let server = Server::new(router, options)?;
        let listener = tokio::net::TcpListener::bind(args.listen).await.map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
        let addr = listener.local_addr()?;
        match &args.learn_log {
            Some(log) => tracing::info!(
                "feedback is learned and synced to {}; that log keeps the prompt text (last user message) of every request \
                 given feedback, because a restart embeds it again to replay what was learned",
                log.display()
            ),
            None => {
                tracing::info!("no --learn-log: feedback is learned in memory only (lost at restart), and no prompt text is written for it")
            }
        }
        eprintln!(
            "semroute serve: listening on http://{addr} ({} models: {}; client keys: {})",
            server.served().len(),
            server.served().join(", "),
            match &args.client_keys {
                Some(_) if server.needs_client_keys() => "required".to_string(),
                _ => "none, --no-auth".to_string(),
            }
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
