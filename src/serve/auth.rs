//! Client keys, checked once for every endpoint by one axum middleware.

use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::api::ApiError;
use super::App;
use crate::error::{Error, Location, Result};

/// The client keys a server accepts: kept only as SHA-256 digests, compared in constant time.
///
/// ```
/// use semroute::serve::ClientKeys;
///
/// let keys = ClientKeys::parse("# team A\nsk-team-a-0123456789abcdef\n", "keys.txt")?;
/// assert_eq!(keys.len(), 1);
/// assert!(ClientKeys::parse("short\n", "keys.txt").is_err()); // at least 16 characters
/// # Ok::<(), semroute::Error>(())
/// ```
#[derive(Clone)]
pub struct ClientKeys(Vec<[u8; 32]>);

impl std::fmt::Debug for ClientKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientKeys({} keys)", self.0.len())
    }
}

impl ClientKeys {
    /// Reads a keys file: one key per line, `#` starts a comment, blank lines are skipped.
    ///
    /// # Errors
    /// [`Error::Io`] when it cannot be read; [`Error::ClientKeys`] naming file and line for a key
    /// shorter than 16 characters or with spaces, and for a file with no key.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, path)
    }

    /// Parses a keys file's text; `origin` names it in errors.
    ///
    /// # Errors
    /// As [`from_file`](Self::from_file).
    pub fn parse(text: &str, origin: impl AsRef<Path>) -> Result<Self> {
        let origin = origin.as_ref();
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let key = line.split('#').next().unwrap_or("").trim();
            if key.is_empty() {
                continue;
            }
            if key.chars().any(char::is_whitespace) || key.len() < 16 {
                return Err(Error::ClientKeys {
                    at: Location::line(origin, i + 1),
                    message: "a client key must be one word of at least 16 characters".into(),
                });
            }
            keys.push(Sha256::digest(key.as_bytes()).into());
        }
        if keys.is_empty() {
            return Err(Error::ClientKeys { at: Location::file(origin), message: "holds no client key".into() });
        }
        Ok(ClientKeys(keys))
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is none (never, for keys that parsed).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The caller a key identifies, if it is one of these keys.
    fn check(&self, key: &str) -> Option<Caller> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        // Every key is compared, whatever matched, so the time says nothing about which.
        let mut ok = subtle::Choice::from(0);
        for k in &self.0 {
            ok |= k.ct_eq(&digest);
        }
        bool::from(ok).then_some(Caller(Some(digest)))
    }
}

/// Who made a request: the SHA-256 digest of its client key (the key itself is never kept);
/// `None` on a server without client keys. Put in each request's extensions by the middleware.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Caller(pub(crate) Option<[u8; 32]>);

/// The client key a request carries: `Authorization: <scheme> <key>` with the scheme `Bearer` in
/// any case (RFC 7235), else `x-api-key`.
fn given_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| {
        let (scheme, key) = v.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then_some(key)
    });
    bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok())).map(str::trim)
}

/// The middleware: a request without a valid key gets 401 and goes no further; one with a key
/// carries its [`Caller`].
pub(crate) async fn require_key(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let caller = match &app.client_keys {
        None => Some(Caller(None)),
        Some(keys) => given_key(req.headers()).and_then(|k| keys.check(k)),
    };
    let Some(caller) = caller else {
        if req.uri().path() == "/v1/chat/completions" {
            app.metrics.outcome("unauthorized");
        }
        return ApiError::unauthorized().into_response();
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}
