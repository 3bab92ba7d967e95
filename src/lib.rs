//! # semroute
//!
//! Sends each LLM prompt to the cheapest model that will answer it well enough, and says why.
//!
//! ## The flow of one prompt
//! ```text
//! prompt ──► tokens (pricing::TokenCounter, tiktoken cl100k)
//!        └─► vector (embed::Embedder: multilingual-e5-small in int8 on ONNX Runtime, local)
//!               └─► neighbours (index: k nearest graded exemplars, HNSW)
//!                      └─► predictions (predict: per-model quality from a model fitted on
//!                          every exemplar, updated by near-copies among the neighbours; answer
//!                          length and measured cost from the neighbours)
//!                             └─► priced candidates (pricing::PriceTable: expected USD)
//!                                    └─► choice (policy: a quality bar or a utility, constraints,
//!                                        fallback)
//!                                           └─► decision::RouteDecision (model + the whole why)
//! ```
//! One module per concept; [`Router`] only composes them.
//!
//! ## Routing
//! The model files are installed once with `semroute setup` (or
//! [`setup::install_model`] from code; `semroute route` runs it for you on first use). Then:
//! ```no_run
//! use semroute::Router;
//!
//! let router = Router::builder().build()?; // built-in exemplars and prices
//! let decision = router.route("Reformat this JSON so it is indented: {\"a\":1}")?;
//! println!("{} via {}: {}", decision.model, decision.provider, decision.reason);
//! println!("expected ${:.6}, saving {:.0}% against {}", decision.expected_cost_usd,
//!          100.0 * decision.saving_fraction, decision.strongest_model);
//! # Ok::<(), semroute::Error>(())
//! ```
//!
//! ## Your own exemplars and prices
//! Exemplars are JSONL (see [`exemplar`]), prices are TOML (see [`pricing`]); both are validated
//! on load and errors name the file, line and field.
//! ```no_run
//! use semroute::{ExemplarSet, PriceTable, Router};
//!
//! let router = Router::builder()
//!     .exemplars(ExemplarSet::load_dir("my-exemplars/")?)
//!     .prices(PriceTable::from_file("my-prices.toml")?)
//!     .k(12)
//!     .quality_bar(0.8)
//!     .build()?;
//! # Ok::<(), semroute::Error>(())
//! ```
//! With measured exemplars (every model's quality on each), a bar can be asked for as what it
//! buys: [`RouterBuilder::quality_target`] keeps a share of the best model's quality, the knob
//! tuned at build by cross-fitting the router on its exemplars ([`target`]; `semroute route
//! --keep 95%`).
//!
//! ## Serving, learning, reloading
//! - [`Router::route_chat`] routes an OpenAI-shaped conversation ([`chat::ChatRequest`]); the
//!   `provider::Client` (the `gateway` feature) then sends it to the chosen model in its own
//!   protocol (OpenAI or Anthropic), whole or streamed. `serve::Server` (the `server` feature,
//!   `semroute serve`) is an OpenAI-compatible server built on them, failing over in the order of
//!   [`RouteDecision::failover`].
//! - [`Router::route_session`] routes a step of an agent session ([`session`]): the task is
//!   assessed once, each model's cost counts the prompt cache the session holds with it, and the
//!   model changes only when that pays; serve routes every `auto` request this way.
//! - [`Router::learn`] takes [`feedback::Feedback`] on an answer (durably, with
//!   [`RouterBuilder::feedback_log`]); [`Router::reload`] swaps exemplars and prices while routing
//!   goes on; both keep the router's previous state on any error.
//! - [`RouterBuilder::store`] shares one exemplar collection among many routers through an
//!   [`store::ExemplarStore`]; the `pgvector` feature provides one on PostgreSQL
//!   (`store::PgStore`).
//!
//! ## Measuring decisions
//! [`Router::assess`] stops before the policy; [`Assessment::decide`] then chooses under any
//! [`Constraints`] and [`Objective`] (a quality bar, or quality × USD − cost), which is how a
//! knob is swept without predicting again. [`eval::run`] benchmarks a data set with per-model
//! results through routers built on its train split (cross-fitting chooses the predictor, the
//! policy on train alone, and each quality target's knob by [`target`]'s rule), and [`eval::leave_one_out`] checks a
//! hand-labelled set; both only drive [`Router`]s.
//!
//! ## Features
//! - `gateway`: provider clients (`provider`) and grading against them (`grade`); pulls an HTTP
//!   client (reqwest, rustls).
//! - `server`: the routing server (`serve`), with the gateway; pulls axum and hyper.
//! - `cli` (default): the `semroute` command, with the server.
//! - `pgvector`: the shared exemplar store on PostgreSQL.
//!
//! With `default-features = false` the library routes, learns, reloads and evaluates with no HTTP
//! client, server or command-line crate.
//!
//! ## Without the model
//! Everything past the embedding is plain data and functions, usable with any [`Embedder`]:
//! ```
//! use std::sync::Arc;
//! use semroute::{Embedder, ExemplarSet, PriceTable, Result, Router};
//!
//! /// A toy embedder: two letters' frequencies (a real one is `embed::FastEmbedder`).
//! struct Letters;
//! impl Embedder for Letters {
//!     fn model_id(&self) -> &str { "letters-v1" }
//!     fn dim(&self) -> usize { 2 }
//!     fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
//!         Ok(texts.iter().map(|t| {
//!             let a = t.matches('a').count() as f32 + 0.1;
//!             let b = t.matches('b').count() as f32 + 0.1;
//!             let n = (a * a + b * b).sqrt();
//!             vec![a / n, b / n]
//!         }).collect())
//!     }
//! }
//!
//! let exemplars = ExemplarSet::from_jsonl_str(concat!(
//!     r#"{"id":"easy","prompt":"aaaa","category":"c","language":"en","label":{"tier":"cheap","reason":"easy","output_tokens":50}}"#, "\n",
//!     r#"{"id":"hard","prompt":"bbbb","category":"c","language":"en","label":{"tier":"strong","reason":"hard","output_tokens":900}}"#,
//! ), "toy.jsonl")?;
//! let prices = PriceTable::from_toml_str(r#"
//! [models.small]
//! provider = "p1"
//! input_per_mtok = 0.3
//! output_per_mtok = 1.2
//! cached_input_per_mtok = 0.03
//! context_window = 128000
//! tier = "cheap"
//! source = "example"
//! as_of = "2025-01-01"
//! [models.big]
//! provider = "p2"
//! input_per_mtok = 3.0
//! output_per_mtok = 15.0
//! cached_input_per_mtok = 0.3
//! context_window = 200000
//! tier = "strong"
//! source = "example"
//! as_of = "2025-01-01"
//! "#, "prices.toml")?;
//! let router = Router::builder()
//!     .embedder(Arc::new(Letters))
//!     .exemplars(exemplars)
//!     .prices(prices)
//!     .k(1)
//!     .no_cache()
//!     .build()?;
//! assert_eq!(router.route("aaa a")?.model, "small");
//! assert_eq!(router.route("bb bbb")?.model, "big");
//! # Ok::<(), semroute::Error>(())
//! ```

#![warn(missing_docs)]

pub mod chat;
pub mod config;
pub mod decision;
pub mod embed;
pub mod error;
pub mod eval;
pub mod exemplar;
pub mod familiar;
pub mod feedback;
#[cfg(feature = "gateway")]
pub mod grade;
pub mod index;
pub mod journal;
mod models_toml;
pub mod policy;
pub mod predict;
pub mod pricing;
#[cfg(feature = "gateway")]
pub mod provider;
pub mod router;
#[cfg(feature = "server")]
pub mod serve;
pub mod session;
pub mod setup;
pub mod store;
pub mod target;

pub use decision::{Candidate, Neighbour, RouteDecision};
pub use embed::{Embedder, FastEmbedder};
pub use error::{Error, Result};
pub use exemplar::{Exemplar, ExemplarSet};
pub use policy::{Constraints, Objective};
pub use pricing::{PriceTable, Tier};
pub use router::{Assessment, Router, RouterBuilder};
