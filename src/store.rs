//! Shared exemplar stores: one collection of graded exemplars that many router processes search
//! and add to, so that what one instance learns, the others use.
//!
//! [`ExemplarStore`] is the seam: the router asks it for the nearest exemplars (instead of its
//! in-process index) and writes added or learned exemplars to it. With the `pgvector` Cargo
//! feature, [`PgStore`] keeps them in PostgreSQL with the pgvector extension (an HNSW index on the
//! vector column, cosine distance).
//!
//! ```no_run
//! # #[cfg(feature = "pgvector")] {
//! use std::sync::Arc;
//! use semroute::store::PgStore;
//! use semroute::Router;
//!
//! let store = PgStore::connect("postgresql://semroute@127.0.0.1:5432/routing")?;
//! // The built-in exemplars are written to the store if it lacks them; every router on the same
//! // table then sees what any of them adds or learns.
//! let router = Router::builder().store(Arc::new(store)).build()?;
//! let d = router.route("Translate to German: good night")?;
//! println!("{}", d.model);
//! # }
//! # Ok::<(), semroute::Error>(())
//! ```

use std::sync::Arc;

use crate::error::Result;
use crate::exemplar::Exemplar;

#[cfg(feature = "pgvector")]
mod pg;
#[cfg(feature = "pgvector")]
pub use pg::{PgStore, PgStoreBuilder};

/// One exemplar found near a query, with its cosine similarity.
#[derive(Debug, Clone)]
pub struct StoreHit {
    /// The exemplar.
    pub exemplar: Arc<Exemplar>,
    /// Cosine similarity in `[-1, 1]` to the query.
    pub similarity: f32,
}

/// A collection of graded exemplars with their vectors, searched by cosine similarity and shared
/// by many routers. Every method may do I/O and so returns a `Result`.
///
/// A store holds the vectors of one embedding model: the router [`attach`](ExemplarStore::attach)es
/// it with its embedder's model id and dimension first, and the store refuses a mismatch.
pub trait ExemplarStore: Send + Sync {
    /// Where the store is, for messages (never with a password).
    fn describe(&self) -> String;

    /// Prepares the store for vectors of `model_id` with `dim` dimensions (creating what is
    /// missing), or fails if it already holds another model's or dimension's vectors.
    fn attach(&self, model_id: &str, dim: usize) -> Result<()>;

    /// The `k` exemplars nearest to `query`, most similar first.
    fn nearest(&self, query: &[f32], k: usize) -> Result<Vec<StoreHit>>;

    /// Adds `items` with their `vectors` (same order), all or none: an id the store already
    /// holds is an error naming it.
    fn insert(&self, items: &[Exemplar], vectors: &[Vec<f32>]) -> Result<()>;

    /// The exemplars among `ids` that the store holds (in no particular order).
    fn existing(&self, ids: &[&str]) -> Result<Vec<Exemplar>>;

    /// Every exemplar in the store, oldest first.
    fn all(&self) -> Result<Vec<Exemplar>>;

    /// Number of exemplars in the store.
    fn count(&self) -> Result<usize>;
}
