//! The server's error responses: OpenAI-shaped JSON, one type for every handler.

use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answered to a client: `{"error": {"message", "type", "param", "code"}}` with a status.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) kind: &'static str,
    pub(crate) code: String,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, kind: &'static str, code: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError { status, kind, code: code.into(), message: message.into() }
    }

    /// A request the client got wrong (400 unless said otherwise).
    pub(crate) fn invalid(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", code, message)
    }

    pub(crate) fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid_api_key",
            "missing or invalid client key (send `Authorization: Bearer <key>`)",
        )
    }

    pub(crate) fn server(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", code, message)
    }

    pub(crate) fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// The error for a request body that could not be read: 413 past the body limit.
    pub(crate) fn body(rej: &BytesRejection) -> Self {
        let status = rej.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE { "request_too_large" } else { "bad_body" };
        Self::new(status, "invalid_request_error", code, rej.body_text())
    }

    /// The `error` object, as also sent inside a stream that broke off.
    pub(crate) fn json(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": null, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, [("content-type", "application/json")], self.json().to_string()).into_response()
    }
}
