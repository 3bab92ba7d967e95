//! [`PgStore`]: exemplars in PostgreSQL with pgvector, shared by every router that connects.
//!
//! One table per store (default `semroute_exemplars`): the exemplar as its JSONL line (`jsonb`),
//! its vector (`vector(dim)`) with an HNSW index under cosine distance (`vector_cosine_ops`), and
//! an insertion sequence. A small `semroute_stores` table records which embedding model and
//! dimension each store's vectors come from, so that a router with another model is refused
//! instead of searching vectors it cannot compare with.

use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pgvector::Vector;
use postgres::NoTls;
use r2d2_postgres::PostgresConnectionManager;

use super::{ExemplarStore, StoreHit};
use crate::error::{Error, Location, Result};
use crate::exemplar::Exemplar;
use crate::session::{SessionKey, SessionState, SessionStore, MAX_IDLE_SECS};

type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

/// Serialises schema changes across processes (any fixed number; pg_advisory_xact_lock's key).
const SCHEMA_LOCK: i64 = 0x5e3_2007;

/// An [`ExemplarStore`] on PostgreSQL with the pgvector extension. Connections are pooled
/// (`r2d2`), so one store serves many routing threads at once. Its client is blocking; a call
/// made on a thread inside a tokio runtime (an async handler, a `spawn_blocking` task) runs on a
/// short-lived thread of its own, where that client may drive its own runtime, so a router with
/// this store works inside `semroute serve` and any async server. From async code, still route
/// on a blocking thread (as [`Router::route_async`](crate::Router::route_async) does): a
/// database round trip should not hold up the runtime's workers.
///
/// ```no_run
/// use semroute::store::{ExemplarStore, PgStore};
///
/// let store = PgStore::builder("postgresql://semroute@127.0.0.1:5432/routing")
///     .table("team_exemplars")
///     .pool_size(8)
///     .build()?;
/// store.attach("all-minilm-l6-v2", 384)?;
/// println!("{} holds {} exemplars", store.describe(), store.count()?);
/// # Ok::<(), semroute::Error>(())
/// ```
pub struct PgStore {
    /// `None` only while being dropped.
    pool: Option<Pool>,
    table: String,
    place: String,
    /// The search, written once (it runs on every routed prompt).
    nearest_sql: String,
    /// A session's load and save, written once (they run on every session step).
    session_sql: (String, String),
    /// The model id and dimension once attached.
    attached: OnceLock<(String, usize)>,
    /// Set once the sessions table is known to exist.
    sessions_ready: OnceLock<()>,
    /// Sessions saved by this store, to prune idle ones now and then.
    sessions_saved: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `place` never holds the password; the pool's config (which does) is not shown.
        f.debug_struct("PgStore").field("at", &self.place).field("attached", &self.attached.get()).finish()
    }
}

/// Builds a [`PgStore`], validating everything at [`build`](PgStoreBuilder::build).
#[derive(Clone)]
pub struct PgStoreBuilder {
    url: String,
    table: String,
    pool_size: u32,
    ef_search: u32,
    connect_timeout: Duration,
}

impl std::fmt::Debug for PgStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStoreBuilder")
            .field("table", &self.table)
            .field("pool_size", &self.pool_size)
            .field("ef_search", &self.ef_search)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to `url` (`postgresql://user[:password]@host[:port]/dbname`, or the
    /// `host=... dbname=...` form) with the defaults: table `semroute_exemplars`, 8 pooled
    /// connections, `hnsw.ef_search` 64, a 10 s connection timeout.
    pub fn connect(url: &str) -> Result<Self> {
        Self::builder(url).build()
    }

    /// A builder for a store at `url`.
    pub fn builder(url: impl Into<String>) -> PgStoreBuilder {
        PgStoreBuilder {
            url: url.into(),
            table: "semroute_exemplars".into(),
            pool_size: 8,
            ef_search: 64,
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// The table this store uses.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Removes the store's table and its record (every exemplar in it, for every router that
    /// shares it). Meant for tests and for starting over.
    pub fn drop_table(&self) -> Result<()> {
        off_runtime(|| self.drop_table_now())
    }

    fn drop_table_now(&self) -> Result<()> {
        let mut client = self.client()?;
        client
            .batch_execute(&format!(
                "drop table if exists {t}; drop table if exists {t}_sessions; do $$ begin if to_regclass('semroute_stores') is not null then \
                 delete from semroute_stores where name = '{t}'; end if; end $$;",
                t = self.table
            ))
            .map_err(|e| self.error("could not drop the table", e))
    }

    fn client(&self) -> Result<r2d2::PooledConnection<PostgresConnectionManager<NoTls>>> {
        self.pool.as_ref().expect("the pool lives until drop").get().map_err(|e| Error::Store {
            source: None,
            store: self.place.clone(),
            message: format!("no database connection: {e}"),
        })
    }

    fn error(&self, what: &str, e: postgres::Error) -> Error {
        // The server's words in the message (postgres::Error's display is often just "db error"),
        // the client's error kept as the source.
        let message = format!("{what}: {}", describe_pg_error(&e));
        Error::Store { source: Some(Box::new(e)), store: self.place.clone(), message }
    }

    fn dim(&self) -> Result<usize> {
        self.attached.get().map(|(_, dim)| *dim).ok_or_else(|| Error::Store {
            source: None,
            store: self.place.clone(),
            message: "not attached to an embedding model yet (call `attach`, or give the store to a router)".into(),
        })
    }

    fn parse(&self, id: &str, line: &str) -> Result<Exemplar> {
        Exemplar::from_line(line, &Location::file(format!("<{} id {id}>", self.place)))
    }
}

impl PgStoreBuilder {
    /// The table (default `semroute_exemplars`): lower-case letters, digits and `_`, starting
    /// with a letter or `_`, at most 48 characters. Routers on the same table share exemplars.
    pub fn table(mut self, name: impl Into<String>) -> Self {
        self.table = name.into();
        self
    }

    /// Pooled connections (default 8; 1..=256): how many searches run at once.
    pub fn pool_size(mut self, n: u32) -> Self {
        self.pool_size = n;
        self
    }

    /// pgvector's `hnsw.ef_search` for this store's searches (default 64; 1..=1000): higher
    /// finds the true nearest neighbours more often, at some speed. A search returns at most this
    /// many exemplars, so keep it at or above the router's `k`.
    pub fn ef_search(mut self, ef: u32) -> Self {
        self.ef_search = ef;
        self
    }

    /// How long to wait for a connection (default 10 s).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Checks the settings and connects (the server must be reachable now). Callable from
    /// async code too (see [`PgStore`]'s note on tokio).
    pub fn build(self) -> Result<PgStore> {
        off_runtime(move || self.build_now())
    }

    fn build_now(self) -> Result<PgStore> {
        let mut config = postgres::Config::from_str(&self.url).map_err(|e| Error::Store {
            source: None,
            store: "<postgres>".into(),
            // The parser's message names the bad part, not the password.
            message: format!("invalid connection URL: {e}"),
        })?;
        let place = format!("{} table {}", place(&config), self.table);
        let bad = |message: String| Err(Error::Store { source: None, store: place.clone(), message });
        let valid_name = self.table.len() <= 48
            && self.table.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && self.table.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid_name {
            return bad(format!(
                "invalid table name {:?} (lower-case letters, digits and `_`, starting with a letter or `_`, at most 48 characters)",
                self.table
            ));
        }
        if !(1..=256).contains(&self.pool_size) {
            return bad(format!("pool_size must be within 1..=256, got {}", self.pool_size));
        }
        if !(1..=1000).contains(&self.ef_search) {
            return bad(format!("ef_search must be within 1..=1000, got {}", self.ef_search));
        }
        config.connect_timeout(self.connect_timeout);
        let manager = PostgresConnectionManager::new(config.clone(), NoTls);
        let pool = r2d2::Pool::builder()
            .max_size(self.pool_size)
            .min_idle(Some(1))
            .connection_timeout(self.connect_timeout)
            .connection_customizer(Box::new(EfSearch(self.ef_search)))
            // r2d2 logs failed connection attempts itself; its errors reach the caller below.
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build(manager)
            .map_err(|e| {
                // The pool only says it timed out; one direct attempt says why.
                let why = match config.connect(NoTls) {
                    Err(e) => describe_pg_error(&e),
                    Ok(_) => e.to_string(),
                };
                Error::Store { source: None, store: place.clone(), message: format!("could not connect: {why}") }
            })?;
        let nearest_sql =
            format!("select id, exemplar::text, (embedding <=> $1)::float4 from {t} order by embedding <=> $1 limit $2", t = self.table);
        let session_sql = (
            format!("select state::text from {t}_sessions where key = $1", t = self.table),
            format!(
                "insert into {t}_sessions (key, state, last_used) values ($1, $2::text::jsonb, now()) \
                 on conflict (key) do update set state = excluded.state, last_used = now()",
                t = self.table
            ),
        );
        Ok(PgStore {
            pool: Some(pool),
            table: self.table,
            place,
            nearest_sql,
            session_sql,
            attached: OnceLock::new(),
            sessions_ready: OnceLock::new(),
            sessions_saved: std::sync::atomic::AtomicU64::new(0),
        })
    }
}

/// Sets the session's `hnsw.ef_search` on every new connection.
#[derive(Debug)]
struct EfSearch(u32);

impl r2d2::CustomizeConnection<postgres::Client, postgres::Error> for EfSearch {
    fn on_acquire(&self, conn: &mut postgres::Client) -> std::result::Result<(), postgres::Error> {
        conn.batch_execute(&format!("set hnsw.ef_search = {}", self.0))
    }
}

/// `host:port/dbname` from a config, for messages: no user, no password.
fn place(config: &postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("postgres://{host}:{port}/{}", config.get_dbname().unwrap_or(""))
}

/// The server's own words when it sent some (`postgres::Error`'s display is often just "db error").
fn describe_pg_error(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} ({})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                s.push_str(&format!("; {detail}"));
            }
            s
        }
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}

impl PgStore {
    fn attach_now(&self, model_id: &str, dim: usize) -> Result<()> {
        if let Some((m, d)) = self.attached.get() {
            if m == model_id && *d == dim {
                return Ok(());
            }
            return Err(Error::Store {
                source: None,
                store: self.place.clone(),
                message: format!("already attached to {m} ({d} dimensions), not {model_id} ({dim})"),
            });
        }
        if !(1..=16_000).contains(&dim) {
            return Err(Error::Store {
                source: None,
                store: self.place.clone(),
                message: format!("pgvector stores 1..=16000 dimensions, not {dim}"),
            });
        }
        let mut client = self.client()?;
        let mut tx = self.schema_transaction(&mut client)?;
        tx.batch_execute("create extension if not exists vector")
            .map_err(|e| self.error("the server lacks the pgvector extension (`create extension vector` failed)", e))?;
        tx.batch_execute(
            "create table if not exists semroute_stores (name text primary key, model_id text not null, dim integer not null)",
        )
        .map_err(|e| self.error("could not create semroute_stores", e))?;
        tx.execute(
            "insert into semroute_stores (name, model_id, dim) values ($1, $2, $3) on conflict (name) do nothing",
            &[&self.table, &model_id, &(dim as i32)],
        )
        .map_err(|e| self.error("could not record the store", e))?;
        let row = tx
            .query_one("select model_id, dim from semroute_stores where name = $1", &[&self.table])
            .map_err(|e| self.error("could not read the store's record", e))?;
        let (their_model, their_dim): (String, i32) = (row.get(0), row.get(1));
        if their_model != model_id || their_dim as usize != dim {
            return Err(Error::Store {
                source: None,
                store: self.place.clone(),
                message: format!(
                    "holds vectors of {their_model} ({their_dim} dimensions); this router embeds with {model_id} ({dim}): \
                     use another table, or the same embedding model"
                ),
            });
        }
        tx.batch_execute(&format!(
            "create table if not exists {t} (seq bigserial, id text primary key, exemplar jsonb not null, \
             embedding vector({dim}) not null, added_at timestamptz not null default now());
             create index if not exists {t}_embedding_hnsw on {t} using hnsw (embedding vector_cosine_ops) \
             with (m = 16, ef_construction = 100);",
            t = self.table
        ))
        .map_err(|e| self.error("could not create the table", e))?;
        tx.commit().map_err(|e| self.error("could not commit the schema", e))?;
        let _ = self.attached.set((model_id.to_string(), dim));
        Ok(())
    }

    fn nearest_now(&self, query: &[f32], k: usize) -> Result<Vec<StoreHit>> {
        let dim = self.dim()?;
        if query.len() != dim {
            return Err(Error::Store {
                source: None,
                store: self.place.clone(),
                message: format!("a query of {} dimensions, the store holds {dim}", query.len()),
            });
        }
        if k == 0 {
            return Ok(Vec::new());
        }
        let mut client = self.client()?;
        let rows =
            client.query(&self.nearest_sql, &[&Vector::from(query.to_vec()), &(k as i64)]).map_err(|e| self.error("search failed", e))?;
        rows.iter()
            .map(|row| {
                let (id, line, distance): (String, String, f32) = (row.get(0), row.get(1), row.get(2));
                Ok(StoreHit { exemplar: Arc::new(self.parse(&id, &line)?), similarity: 1.0 - distance })
            })
            .collect()
    }

    fn insert_now(&self, items: &[Exemplar], vectors: &[Vec<f32>]) -> Result<()> {
        let dim = self.dim()?;
        let bad = |message: String| Err(Error::Store { source: None, store: self.place.clone(), message });
        if items.len() != vectors.len() {
            return bad(format!("{} exemplars but {} vectors", items.len(), vectors.len()));
        }
        if let Some((ex, v)) = items.iter().zip(vectors).find(|(_, v)| v.len() != dim || v.iter().any(|x| !x.is_finite())) {
            return bad(format!(
                "exemplar `{}` has a vector of {} dimensions or a non-finite value (the store holds {dim})",
                ex.id,
                v.len()
            ));
        }
        if items.is_empty() {
            return Ok(());
        }
        let mut client = self.client()?;
        let mut tx = client.transaction().map_err(|e| self.error("could not begin", e))?;
        let ids: Vec<&str> = items.iter().map(|e| e.id.as_str()).collect();
        let taken = tx
            .query(&format!("select id from {} where id = any($1) order by id limit 5", self.table), &[&ids])
            .map_err(|e| self.error("could not check ids", e))?;
        if !taken.is_empty() {
            let names: Vec<String> = taken.iter().map(|r| format!("`{}`", r.get::<_, String>(0))).collect();
            return bad(format!("already holds exemplar id {} (nothing was added)", names.join(", ")));
        }
        let stmt = tx
            .prepare(&format!("insert into {} (id, exemplar, embedding) values ($1, $2::text::jsonb, $3)", self.table))
            .map_err(|e| self.error("could not prepare the insert", e))?;
        for (ex, v) in items.iter().zip(vectors) {
            tx.execute(&stmt, &[&ex.id, &ex.to_json_line(), &Vector::from(v.clone())]).map_err(|e| {
                if e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION) {
                    Error::Store {
                        source: None,
                        store: self.place.clone(),
                        message: format!("already holds exemplar id `{}` (nothing was added)", ex.id),
                    }
                } else {
                    self.error(&format!("could not add exemplar `{}`", ex.id), e)
                }
            })?;
        }
        tx.commit().map_err(|e| self.error("could not commit the new exemplars", e))
    }

    fn existing_now(&self, ids: &[&str]) -> Result<Vec<Exemplar>> {
        self.dim()?;
        let mut client = self.client()?;
        let rows = client
            .query(&format!("select id, exemplar::text from {} where id = any($1)", self.table), &[&ids])
            .map_err(|e| self.error("could not look up ids", e))?;
        rows.iter().map(|r| self.parse(&r.get::<_, String>(0), &r.get::<_, String>(1))).collect()
    }

    fn all_now(&self) -> Result<Vec<Exemplar>> {
        self.dim()?;
        let mut client = self.client()?;
        let rows = client
            .query(&format!("select id, exemplar::text from {} order by seq", self.table), &[])
            .map_err(|e| self.error("could not read the exemplars", e))?;
        rows.iter().map(|r| self.parse(&r.get::<_, String>(0), &r.get::<_, String>(1))).collect()
    }

    fn count_now(&self) -> Result<usize> {
        self.dim()?;
        let mut client = self.client()?;
        let row = client.query_one(&format!("select count(*) from {}", self.table), &[]).map_err(|e| self.error("could not count", e))?;
        Ok(row.get::<_, i64>(0) as usize)
    }
}

impl PgStore {
    /// A transaction holding the schema lock: two routers starting at once must not both create
    /// the schema.
    fn schema_transaction<'c>(&self, client: &'c mut postgres::Client) -> Result<postgres::Transaction<'c>> {
        let mut tx = client.transaction().map_err(|e| self.error("could not begin", e))?;
        tx.execute("select pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK]).map_err(|e| self.error("could not lock the schema", e))?;
        Ok(tx)
    }

    /// Creates the sessions table `<table>_sessions` once per store (under the schema lock).
    fn sessions_table(&self, client: &mut postgres::Client) -> Result<()> {
        if self.sessions_ready.get().is_some() {
            return Ok(());
        }
        let mut tx = self.schema_transaction(client)?;
        tx.batch_execute(&format!(
            "create table if not exists {t}_sessions (key bytea primary key, state jsonb not null, \
             last_used timestamptz not null default now())",
            t = self.table
        ))
        .map_err(|e| self.error("could not create the sessions table", e))?;
        tx.commit().map_err(|e| self.error("could not commit the schema", e))?;
        let _ = self.sessions_ready.set(());
        Ok(())
    }

    fn load_session_now(&self, key: &SessionKey) -> Result<Option<SessionState>> {
        let mut client = self.client()?;
        self.sessions_table(&mut client)?;
        let row =
            client.query_opt(&self.session_sql.0, &[&key.bytes().as_slice()]).map_err(|e| self.error("could not read a session", e))?;
        row.map(|r| {
            let text: String = r.get(0);
            serde_json::from_str(&text).map_err(|e| Error::Store {
                source: None,
                store: self.place.clone(),
                message: format!("session {key} is not a session state this version reads: {e}"),
            })
        })
        .transpose()
    }

    fn save_session_now(&self, key: &SessionKey, state: &SessionState) -> Result<()> {
        let mut client = self.client()?;
        self.sessions_table(&mut client)?;
        let text =
            serde_json::to_string(state).map_err(|e| Error::Store { source: None, store: self.place.clone(), message: e.to_string() })?;
        client.execute(&self.session_sql.1, &[&key.bytes().as_slice(), &text]).map_err(|e| self.error("could not save a session", e))?;
        if self.sessions_saved.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 1000 == 999 {
            client
                // Rows unused longer than any router keeps a session.
                .execute(&format!("delete from {}_sessions where last_used < now() - interval '{MAX_IDLE_SECS} seconds'", self.table), &[])
                .map_err(|e| self.error("could not prune idle sessions", e))?;
        }
        Ok(())
    }

    fn count_sessions_now(&self) -> Result<usize> {
        let mut client = self.client()?;
        self.sessions_table(&mut client)?;
        let row = client
            .query_one(&format!("select count(*) from {}_sessions", self.table), &[])
            .map_err(|e| self.error("could not count sessions", e))?;
        Ok(row.get::<_, i64>(0) as usize)
    }
}

/// Agent sessions in `<table>_sessions` (the state as `jsonb`), so that every replica on the
/// store can take a session's next step.
impl SessionStore for PgStore {
    fn load(&self, key: &SessionKey) -> Result<Option<SessionState>> {
        off_runtime(|| self.load_session_now(key))
    }

    fn save(&self, key: &SessionKey, state: &SessionState) -> Result<()> {
        off_runtime(|| self.save_session_now(key, state))
    }

    fn len(&self) -> usize {
        off_runtime(|| self.count_sessions_now()).unwrap_or(0)
    }
}

/// Runs `f` where the blocking `postgres` client may run. That client drives a runtime of its
/// own, which tokio forbids on a thread inside a runtime (a `spawn_blocking` task, an async
/// handler): there `f` runs on a scoped thread of its own (tens of microseconds, beside a
/// database round trip); anywhere else, right here.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| s.spawn(f).join()).unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

impl ExemplarStore for PgStore {
    fn describe(&self) -> String {
        self.place.clone()
    }

    fn attach(&self, model_id: &str, dim: usize) -> Result<()> {
        off_runtime(|| self.attach_now(model_id, dim))
    }

    fn nearest(&self, query: &[f32], k: usize) -> Result<Vec<StoreHit>> {
        off_runtime(|| self.nearest_now(query, k))
    }

    fn insert(&self, items: &[Exemplar], vectors: &[Vec<f32>]) -> Result<()> {
        off_runtime(|| self.insert_now(items, vectors))
    }

    fn existing(&self, ids: &[&str]) -> Result<Vec<Exemplar>> {
        off_runtime(|| self.existing_now(ids))
    }

    fn all(&self) -> Result<Vec<Exemplar>> {
        off_runtime(|| self.all_now())
    }

    fn count(&self) -> Result<usize> {
        off_runtime(|| self.count_now())
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Closing the pooled clients runs their runtimes too.
        if let Some(pool) = self.pool.take() {
            off_runtime(move || drop(pool));
        }
    }
}
