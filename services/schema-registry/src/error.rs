//! Errors as Confluent's REST API reports them: `{"error_code": N, "message": "..."}` with
//! Confluent's codes and HTTP statuses, so its clients (Java, Python `confluent-kafka`, Rust
//! `schema_registry_converter`) raise the errors they know.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::response::registry_json;
use crate::schema::SchemaError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    #[error("Version {0} not found.")]
    VersionNotFound(i32),
    #[error("Schema {0} not found")]
    SchemaIdNotFound(i32),
    #[error("Schema not found")]
    SchemaNotFound,
    #[error("Subject '{0}' was soft deleted. Set permanent=true to delete permanently")]
    SubjectSoftDeleted(String),
    #[error("Subject '{0}' was not deleted first before being permanently deleted")]
    SubjectNotSoftDeleted(String),
    #[error(
        "Subject '{0}' Version {1} was soft deleted. Set permanent=true to delete permanently"
    )]
    VersionSoftDeleted(String, i32),
    #[error("Subject '{0}' Version {1} was not deleted first before being permanently deleted")]
    VersionNotSoftDeleted(String, i32),
    #[error("Subject '{0}' does not have subject-level compatibility configured")]
    SubjectLevelNotConfigured(String),
    /// The compatibility check's messages, Confluent's wording around them.
    #[error(
        "Schema being registered is incompatible with an earlier schema for subject \"{subject}\", \
         details: [{}]",
        messages.join(", ")
    )]
    Incompatible {
        subject: String,
        messages: Vec<String>,
    },
    #[error("{0}")]
    InvalidSchema(#[from] SchemaError),
    #[error(
        "Invalid compatibility level '{0}'. Valid values are none, backward, forward, full, \
         backward_transitive, forward_transitive, and full_transitive"
    )]
    InvalidCompatibilityLevel(String),
    #[error(
        "The specified version '{0}' is not a valid version id. Allowed values are between \
         [1, 2^31-1] and the string \"latest\""
    )]
    InvalidVersion(String),
    #[error(
        "The specified subject is not valid: it must be non-empty, without control characters"
    )]
    InvalidSubject,
    /// Well-formed JSON of the wrong shape (Confluent answers 422 with code 422).
    #[error("Unprocessable entity: {0}")]
    Unprocessable(String),
    /// A body or URL that cannot be read at all.
    #[error("Bad request: {0}")]
    BadRequest(String),
    #[error("Unsupported media type {0}")]
    UnsupportedMediaType(String),
    #[error("HTTP 404 Not Found")]
    NoRoute,
    #[error("HTTP 405 Method Not Allowed")]
    MethodNotAllowed,
    /// The details are logged, never sent: they may describe the database.
    #[error("Error in the backend data store")]
    Store(#[source] sqlx::Error),
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e)
    }
}

impl ApiError {
    /// Confluent's `error_code` and the HTTP status that goes with it.
    pub fn codes(&self) -> (StatusCode, u32) {
        match self {
            Self::SubjectNotFound(_) => (StatusCode::NOT_FOUND, 40401),
            Self::VersionNotFound(_) => (StatusCode::NOT_FOUND, 40402),
            Self::SchemaIdNotFound(_) | Self::SchemaNotFound => (StatusCode::NOT_FOUND, 40403),
            Self::SubjectSoftDeleted(_) => (StatusCode::NOT_FOUND, 40404),
            Self::SubjectNotSoftDeleted(_) => (StatusCode::NOT_FOUND, 40405),
            Self::VersionSoftDeleted(..) => (StatusCode::NOT_FOUND, 40406),
            Self::VersionNotSoftDeleted(..) => (StatusCode::NOT_FOUND, 40407),
            Self::SubjectLevelNotConfigured(_) => (StatusCode::NOT_FOUND, 40408),
            Self::Incompatible { .. } => (StatusCode::CONFLICT, 409),
            Self::InvalidSchema(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42201),
            Self::InvalidCompatibilityLevel(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42203),
            Self::InvalidVersion(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42202),
            Self::InvalidSubject => (StatusCode::UNPROCESSABLE_ENTITY, 42208),
            Self::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, 422),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, 400),
            Self::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, 415),
            Self::NoRoute => (StatusCode::NOT_FOUND, 404),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, 405),
            Self::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, 50001),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody {
    error_code: u32,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error_code) = self.codes();
        if let Self::Store(e) = &self {
            tracing::error!(
                error = %paystream_core::telemetry::error_chain(e),
                "schema registry store error"
            );
        }
        let body = ErrorBody {
            error_code,
            message: self.to_string(),
        };
        registry_json(status, &body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_confluent() {
        assert_eq!(
            ApiError::SubjectNotFound("s".into()).codes(),
            (StatusCode::NOT_FOUND, 40401)
        );
        assert_eq!(
            ApiError::VersionNotFound(3).codes(),
            (StatusCode::NOT_FOUND, 40402)
        );
        assert_eq!(
            ApiError::SchemaIdNotFound(3).codes(),
            (StatusCode::NOT_FOUND, 40403)
        );
        assert_eq!(
            ApiError::InvalidSchema(SchemaError::Empty).codes(),
            (StatusCode::UNPROCESSABLE_ENTITY, 42201)
        );
        assert_eq!(
            ApiError::InvalidVersion("0".into()).codes(),
            (StatusCode::UNPROCESSABLE_ENTITY, 42202)
        );
        assert_eq!(
            ApiError::Incompatible {
                subject: "s".into(),
                messages: vec![],
            }
            .codes(),
            (StatusCode::CONFLICT, 409)
        );
        assert_eq!(
            ApiError::InvalidCompatibilityLevel("x".into()).codes(),
            (StatusCode::UNPROCESSABLE_ENTITY, 42203)
        );
        assert_eq!(
            ApiError::Store(sqlx::Error::PoolTimedOut).codes(),
            (StatusCode::INTERNAL_SERVER_ERROR, 50001)
        );
    }

    #[test]
    fn store_errors_do_not_leak_details() {
        let e = ApiError::Store(sqlx::Error::Protocol("secret detail".into()));
        assert_eq!(e.to_string(), "Error in the backend data store");
    }
}
