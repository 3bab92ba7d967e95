//! The server's Prometheus metrics (text exposition at `GET /metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// A chat request's outcome label (`ok`, `client_error`, `unauthorized`, `upstream_error`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Outcome {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Served {
    pub model: String,
    pub routed: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Failure {
    pub model: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Tokens {
    pub model: String,
    /// `uncached`, `cache_read` or `cache_write` for prompt tokens; `output` for answers.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Mode {
    pub stream: &'static str,
}

/// Every metric the server keeps, registered once.
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) requests: Family<Outcome, Counter>,
    pub(crate) decisions: Family<Served, Counter>,
    pub(crate) upstream_failures: Family<Failure, Counter>,
    pub(crate) failovers: Counter,
    pub(crate) request_seconds: Family<Mode, Histogram>,
    pub(crate) routing_seconds: Histogram,
    pub(crate) spent_usd: Counter<f64, AtomicU64>,
    pub(crate) strongest_usd: Counter<f64, AtomicU64>,
    pub(crate) tokens: Family<Tokens, Counter>,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("semroute");
        let requests = Family::<Outcome, Counter>::default();
        registry.register("requests", "Chat requests by outcome", requests.clone());
        let decisions = Family::<Served, Counter>::default();
        registry.register("decisions", "Answers by the model that served them, routed or named by the client", decisions.clone());
        let upstream_failures = Family::<Failure, Counter>::default();
        registry.register("upstream_failures", "Provider calls that failed, by model and kind", upstream_failures.clone());
        let failovers = Counter::default();
        registry.register("failovers", "Requests moved to another model after a provider failed", failovers.clone());
        // 1 ms to ~33 s.
        let request_seconds = Family::<Mode, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 16)));
        registry.register("request_duration_seconds", "Whole request time, streams until their last byte", request_seconds.clone());
        // 0.25 ms to ~1 s.
        let routing_seconds = Histogram::new(exponential_buckets(0.00025, 2.0, 13));
        registry.register("routing_duration_seconds", "Time to route a request (embedding, search, policy)", routing_seconds.clone());
        let spent_usd = Counter::<f64, AtomicU64>::default();
        registry.register("spent_usd", "USD spent on answers, from the tokens the providers reported", spent_usd.clone());
        let strongest_usd = Counter::<f64, AtomicU64>::default();
        registry.register(
            "strongest_usd",
            "USD the same tokens would have cost on the strongest priced model (always-strongest baseline)",
            strongest_usd.clone(),
        );
        let tokens = Family::<Tokens, Counter>::default();
        registry.register(
            "tokens",
            "Tokens billed, by model and kind (prompt tokens uncached, read from or written to the provider's cache; output)",
            tokens.clone(),
        );
        Metrics {
            registry,
            requests,
            decisions,
            upstream_failures,
            failovers,
            request_seconds,
            routing_seconds,
            spent_usd,
            strongest_usd,
            tokens,
        }
    }

    /// Counts the tokens of one answer by kind.
    pub(crate) fn tokens(&self, model: &str, u: crate::chat::Usage) {
        for (kind, n) in [
            ("uncached", u.uncached_input_tokens()),
            ("cache_read", u.cached_input_tokens),
            ("cache_write", u.cache_write_tokens),
            ("output", u.output_tokens),
        ] {
            if n > 0 {
                self.tokens.get_or_create(&Tokens { model: model.to_string(), kind }).inc_by(n);
            }
        }
    }

    /// Counts one chat request by its outcome.
    pub(crate) fn outcome(&self, outcome: &'static str) {
        self.requests.get_or_create(&Outcome { outcome }).inc();
    }

    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
