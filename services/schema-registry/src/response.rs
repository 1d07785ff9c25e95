//! Confluent's response format: JSON bodies with the registry's content type. Shared by the
//! handlers in `routes` and the error bodies in `error`.

use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Confluent's response content type; its clients also send it as the request content type.
pub const REGISTRY_CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// `value` as JSON with the registry's content type.
pub fn registry_json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => raw_registry_body(status, body),
        Err(e) => {
            tracing::error!(error = %e, "cannot serialize a response body");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// A body that is already JSON (a stored schema), with the registry's content type.
pub fn raw_registry_body(status: StatusCode, body: impl Into<axum::body::Body>) -> Response {
    let mut response = (status, body.into()).into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(REGISTRY_CONTENT_TYPE),
    );
    response
}
