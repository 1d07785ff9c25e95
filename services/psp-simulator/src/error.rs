//! Errors at the HTTP boundary, rendered as `application/problem+json` (RFC 9457).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::configuration::InvalidSettings;
use crate::decision::TransientCause;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the Idempotency-Key header is required")]
    MissingIdempotencyKey,
    #[error("invalid Idempotency-Key header: {0}")]
    InvalidIdempotencyKey(&'static str),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("this Idempotency-Key was already used with a different request")]
    KeyReused,
    #[error("{}", .0.describe())]
    Unavailable(TransientCause),
    #[error(transparent)]
    InvalidConfig(#[from] InvalidSettings),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::MissingIdempotencyKey
            | ApiError::InvalidIdempotencyKey(_)
            | ApiError::InvalidRequest(_)
            | ApiError::InvalidConfig(_) => StatusCode::BAD_REQUEST,
            ApiError::KeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Stable, machine-readable name of the problem (the `code` member).
    fn code(&self) -> &'static str {
        match self {
            ApiError::MissingIdempotencyKey => "idempotency_key_missing",
            ApiError::InvalidIdempotencyKey(_) => "idempotency_key_invalid",
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::KeyReused => "idempotency_key_reused",
            ApiError::Unavailable(_) => "psp_unavailable",
            ApiError::InvalidConfig(_) => "invalid_config",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(code = self.code(), "{self}");
        } else {
            tracing::info!(code = self.code(), "{self}");
        }
        let body = json!({
            "type": "about:blank",
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
            "detail": self.to_string(),
            "code": self.code(),
        });
        (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response()
    }
}
