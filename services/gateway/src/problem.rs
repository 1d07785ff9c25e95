//! API errors as RFC 9457 problem details (`application/problem+json`), each with a stable `type`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Base of every problem `type` URI; the slug after it is stable and documented.
pub const PROBLEM_TYPE_BASE: &str = "https://paystream.dev/problems/";

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// Everything the gateway can answer with besides success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the Idempotency-Key header is required")]
    MissingIdempotencyKey,
    #[error("the Idempotency-Key header is invalid: {0}")]
    InvalidIdempotencyKey(&'static str),
    #[error("request body must be application/json")]
    UnsupportedMediaType,
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("the request is invalid")]
    Validation(Vec<FieldError>),
    #[error("Idempotency-Key `{0}` was already used with a different request")]
    IdempotencyKeyReused(String),
    #[error("payment `{0}` not found")]
    PaymentNotFound(String),
    #[error("no resource at `{0}`")]
    RouteNotFound(String),
    #[error("request body exceeds {0} bytes")]
    PayloadTooLarge(usize),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

#[derive(Serialize)]
struct ProblemBody<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<&'a [FieldError]>,
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use ApiError::*;
        match self {
            MissingIdempotencyKey => (
                StatusCode::BAD_REQUEST,
                "missing-idempotency-key",
                "Idempotency-Key required",
            ),
            InvalidIdempotencyKey(_) => (
                StatusCode::BAD_REQUEST,
                "invalid-idempotency-key",
                "Invalid Idempotency-Key",
            ),
            UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed-json", "Malformed JSON"),
            Validation(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation-error",
                "Invalid payment request",
            ),
            IdempotencyKeyReused(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency-Key reused with a different request",
            ),
            PaymentNotFound(_) => (
                StatusCode::NOT_FOUND,
                "payment-not-found",
                "Payment not found",
            ),
            RouteNotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            PayloadTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
            ),
            Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal-error",
                "Internal server error",
            ),
        }
    }

    /// The response status and problem body, also used to store replayable responses.
    pub fn status_and_body(&self) -> (StatusCode, serde_json::Value) {
        let (status, slug, title) = self.parts();
        let errors = match self {
            ApiError::Validation(errors) => Some(errors.as_slice()),
            _ => None,
        };
        let body = ProblemBody {
            kind: format!("{PROBLEM_TYPE_BASE}{slug}"),
            title,
            status: status.as_u16(),
            detail: self.to_string(),
            errors,
        };
        (status, serde_json::to_value(body).unwrap_or_default())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(e) = &self {
            // The cause chain goes to the log, never to the client.
            tracing::error!(error = %format!("{e:#}"), "request failed");
        }
        let (status, body) = self.status_and_body();
        problem_response(status, &body)
    }
}

/// A problem+json response from a stored or freshly built body.
pub fn problem_response(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}
