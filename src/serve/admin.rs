//! The other endpoints: feedback, reload, the model list, metrics.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};
use tracing::{info, warn};

use super::api::ApiError;
use super::auth::Caller;
use super::App;
use crate::error::Error;
use crate::exemplar::ExemplarSet;
use crate::feedback::Feedback;
use crate::pricing::PriceTable;

/// `POST /v1/feedback` `{"request_id": "...", "quality": 0.0..1.0}` (or `"good": true|false`):
/// the router learns how well the model that answered did there.
pub(crate) async fn feedback(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let bad = |msg: String| ApiError::invalid("invalid_request", msg);
    let bytes = body.map_err(|rej| ApiError::body(&rej))?;
    let v: Value =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid("invalid_json", format!("the body is not valid JSON: {e}")))?;
    let Some(id) = v.get("request_id").and_then(Value::as_str) else {
        return Err(bad("field `request_id` is missing or not a string".into()));
    };
    let quality = match (v.get("quality"), v.get("good")) {
        (Some(q), None) => q.as_f64().ok_or_else(|| bad("field `quality` must be a number in [0, 1]".into()))?,
        (None, Some(Value::Bool(g))) => f64::from(u8::from(*g)),
        _ => return Err(bad("give exactly one of `quality` (0..1) and `good` (true/false)".into())),
    };
    // Another client's request is answered as if it were unknown: nothing says it exists.
    let remembered = app.recent.lock().unwrap_or_else(|p| p.into_inner()).peek(id).filter(|a| a.caller == caller).cloned();
    let Some(answered) = remembered else {
        return Err(
            ApiError::invalid("unknown_request", format!("no answered request {id:?} is remembered")).with_status(StatusCode::NOT_FOUND)
        );
    };
    let fb = Feedback::new(id, answered.prompt, answered.model.clone(), quality, u32::try_from(answered.output_tokens).unwrap_or(u32::MAX))
        .with_cost_usd(answered.cost_usd);
    match app.router.learn_async(fb).await {
        Ok(()) => {
            info!(request_id = id, model = %answered.model, quality, "learned");
            Ok(Json(json!({"learned": true, "request_id": id, "model": answered.model, "quality": quality})))
        }
        Err(e @ Error::DuplicateId { .. }) => Err(ApiError::invalid("already_learned", e.to_string()).with_status(StatusCode::CONFLICT)),
        Err(e @ (Error::InvalidRequest(_) | Error::Exemplar { .. })) => Err(bad(e.to_string())),
        Err(e) => Err(ApiError::server("learn_failed", e.to_string())),
    }
}

/// What a reload put in force.
pub(crate) struct Reloaded {
    /// Exemplars read.
    pub exemplars: usize,
    /// Models routed among now (a quality target routes among those the exemplars measure).
    pub models: usize,
    /// What the quality target was tuned to on the new data, if the router has one.
    pub tuned: Option<crate::target::Tuned>,
}

impl Reloaded {
    /// The `POST /admin/reload` answer.
    fn to_json(&self) -> Value {
        let mut v = json!({"reloaded": true, "exemplars": self.exemplars, "models": self.models});
        if let Some(t) = &self.tuned {
            v["tuned"] = json!({"summary": t.to_string(), "figures": t});
        }
        v
    }

    /// Logs it.
    pub(crate) fn log(&self, how: &str) {
        match &self.tuned {
            Some(t) => info!(exemplars = self.exemplars, models = self.models, tuned = %t, "{how}"),
            None => info!(exemplars = self.exemplars, models = self.models, "{how}"),
        }
    }
}

/// Re-reads exemplars and prices (the files given, else the built-in ones) and swaps them in
/// while requests keep being served (a quality target is tuned again on them first); on any
/// error the old ones stay.
pub(crate) fn reload_data(app: &App) -> crate::Result<Reloaded> {
    let exemplars = match &app.reload_exemplars {
        Some(p) if p.is_file() => ExemplarSet::load_file(p),
        Some(p) => ExemplarSet::load_dir(p),
        None => ExemplarSet::builtin(),
    }?;
    let prices = match &app.reload_prices {
        Some(p) => PriceTable::from_file(p),
        None => PriceTable::builtin(),
    }?;
    for model in &app.served {
        prices.require(model, "the providers file (a served model)")?;
    }
    let read = exemplars.len();
    app.router.reload(exemplars, prices)?;
    Ok(Reloaded { exemplars: read, models: app.router.prices().len(), tuned: app.router.tuned() })
}

/// `POST /admin/reload`.
pub(crate) async fn reload(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    let a = app.clone();
    match tokio::task::spawn_blocking(move || reload_data(&a)).await {
        Ok(Ok(done)) => {
            done.log("reloaded");
            Ok(Json(done.to_json()))
        }
        Ok(Err(e)) => {
            warn!("reload refused, the old exemplars and prices stay: {e}");
            Err(ApiError::invalid("reload_failed", format!("{e} (the old exemplars and prices stay in force)"))
                .with_status(StatusCode::UNPROCESSABLE_ENTITY))
        }
        Err(e) => Err(ApiError::server("reload_failed", e.to_string())),
    }
}

/// `GET /v1/models`: `auto` and the models served.
pub(crate) async fn list_models(State(app): State<Arc<App>>) -> Json<Value> {
    let mut data = vec![json!({"id": "auto", "object": "model", "created": 0, "owned_by": "semroute"})];
    let prices = app.router.prices();
    for name in &app.served {
        let Some(p) = prices.get(name) else { continue };
        data.push(json!({"id": name, "object": "model", "created": 0, "owned_by": p.provider,
            "semroute": {"tier": p.tier, "input_per_mtok": p.input_per_mtok, "output_per_mtok": p.output_per_mtok,
                         "context_window": p.context_window, "jurisdiction": p.jurisdiction}}));
    }
    Json(json!({"object": "list", "data": data}))
}

/// `GET /metrics`: Prometheus text.
pub(crate) async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], app.metrics.render()).into_response()
}
