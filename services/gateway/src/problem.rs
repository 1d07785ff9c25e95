//! API errors as RFC 9457 problem details (`application/problem+json`), each with a stable `type`.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// Base of every problem `type` URI; the slug after it is stable and documented.
pub const PROBLEM_TYPE_BASE: &str = "https://paystream.dev/problems/";
pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct FieldError {
    /// The offending field (`body` when the JSON shape itself is wrong).
    pub field: String,
    pub message: String,
}

/// Where in the body a JSON syntax error was found (1-based).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, ToSchema)]
pub struct ParsePosition {
    pub line: usize,
    pub column: usize,
}

/// Everything the gateway can answer with besides success, on every route.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the Idempotency-Key header is required")]
    MissingIdempotencyKey,
    #[error("the Idempotency-Key header is invalid: {0}")]
    InvalidIdempotencyKey(&'static str),
    #[error("request body must be application/json")]
    UnsupportedMediaType,
    #[error("malformed JSON: {message}")]
    MalformedJson {
        message: String,
        position: ParsePosition,
    },
    #[error("the request is invalid")]
    Validation(Vec<FieldError>),
    #[error("Idempotency-Key `{0}` was already used with a different request")]
    IdempotencyKeyReused(String),
    #[error("a request with Idempotency-Key `{0}` is still being processed; retry later")]
    IdempotencyKeyInFlight(String),
    /// A client route without a valid API key (authentication enabled).
    #[error("a valid API key is required (Authorization: Bearer <key>)")]
    Unauthorized,
    /// A merchant administration route without the admin token.
    #[error("a valid admin bearer token is required")]
    AdminUnauthorized,
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    #[error("too many requests; retry after {} s", retry_after_secs(*.0))]
    RateLimited(Duration),
    #[error("payment `{0}` not found")]
    PaymentNotFound(String),
    #[error("merchant `{0}` not found")]
    MerchantNotFound(String),
    /// An authenticated client acting for a merchant it is not bound to. The same answer
    /// whether or not the merchant exists anywhere.
    #[error(
        "this API client may not act for merchant `{0}`; an administrator binds clients to \
         merchants (PUT /v1/clients/{{client_id}}/merchants/{{merchant_id}})"
    )]
    MerchantForbidden(String),
    #[error("no resource at `{0}`")]
    RouteNotFound(String),
    #[error("method {0} is not allowed on `{1}`")]
    MethodNotAllowed(String, String),
    #[error("request body exceeds {0} bytes")]
    PayloadTooLarge(usize),
    #[error("the request took longer than {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("the service is temporarily unavailable; retry later")]
    Unavailable(#[source] anyhow::Error),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

/// An RFC 9457 problem document, as every error response carries it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// Stable URI naming the kind of problem, `https://paystream.dev/problems/<slug>`.
    #[serde(rename = "type")]
    #[schema(example = "https://paystream.dev/problems/validation-error")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Every invalid field (validation errors only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
    /// Where the JSON syntax error is (malformed JSON only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<ParsePosition>,
}

fn retry_after_secs(wait: Duration) -> u64 {
    // Whole seconds, rounded up, so a client retrying on time finds a token.
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

impl ApiError {
    /// Status, stable slug and title of each kind of problem.
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
            MalformedJson { .. } => (StatusCode::BAD_REQUEST, "malformed-json", "Malformed JSON"),
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
            IdempotencyKeyInFlight(_) => (
                StatusCode::CONFLICT,
                "idempotency-key-in-flight",
                "Request with this Idempotency-Key in progress",
            ),
            Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Authentication required",
            ),
            AdminUnauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            InvalidQuery(_) => (StatusCode::BAD_REQUEST, "invalid-query", "Invalid query"),
            RateLimited(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
            ),
            PaymentNotFound(_) => (
                StatusCode::NOT_FOUND,
                "payment-not-found",
                "Payment not found",
            ),
            MerchantNotFound(_) => (
                StatusCode::NOT_FOUND,
                "merchant-not-found",
                "Merchant not found",
            ),
            MerchantForbidden(_) => (
                StatusCode::FORBIDDEN,
                "merchant-forbidden",
                "Not permitted for this merchant",
            ),
            RouteNotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            MethodNotAllowed(..) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            PayloadTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
            ),
            Timeout(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "request-timeout",
                "Request timed out",
            ),
            Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "service-unavailable",
                "Service unavailable",
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
        let problem = Problem {
            kind: format!("{PROBLEM_TYPE_BASE}{slug}"),
            title: title.to_string(),
            status: status.as_u16(),
            detail: self.to_string(),
            errors: match self {
                ApiError::Validation(errors) => Some(errors.clone()),
                _ => None,
            },
            position: match self {
                ApiError::MalformedJson { position, .. } => Some(*position),
                _ => None,
            },
        };
        (status, serde_json::to_value(problem).unwrap_or_default())
    }
}

/// When a request's time is up: `gateway.request_timeout_ms` after it arrived. Set by the
/// timeout layer on every request it limits (the layer answers [`ApiError::Timeout`] then);
/// a handler that waits on something able to stop by itself hands it [`Deadline::remaining`].
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: tokio::time::Instant,
    limit: Duration,
}

impl Deadline {
    /// `limit` from now.
    pub fn after(limit: Duration) -> Self {
        Self {
            at: tokio::time::Instant::now() + limit,
            limit,
        }
    }

    pub fn at(&self) -> tokio::time::Instant {
        self.at
    }

    /// The time left (zero once passed).
    pub fn remaining(&self) -> Duration {
        self.at
            .saturating_duration_since(tokio::time::Instant::now())
    }

    /// The answer of a request whose time ran out.
    pub fn exceeded(&self) -> ApiError {
        ApiError::Timeout(self.limit)
    }
}

impl ApiError {
    /// A failure answered with 500 whatever its cause, also a transient database error (which
    /// `?` on an `sqlx::Error` answers with 503): the merchant and analytics routes answer so.
    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        ApiError::Internal(e.into())
    }
}

impl From<sqlx::Error> for ApiError {
    /// A database that cannot be reached (pool exhausted, connection lost, server shutting
    /// down, serialization conflict) is worth a retry: 503. Anything else is a bug: 500.
    fn from(e: sqlx::Error) -> Self {
        if is_transient_db_error(&e) {
            ApiError::Unavailable(e.into())
        } else {
            ApiError::Internal(e.into())
        }
    }
}

pub fn is_transient_db_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception, 40001/40P01: serialization failure/deadlock,
            // 57P0x: operator intervention (shutdown), 53: insufficient resources.
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P")
                || code == "40001"
                || code == "40P01"
        }),
        _ => false,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(e) | ApiError::Unavailable(e) = &self {
            // The cause chain goes to the log, never to the client.
            tracing::error!(error = %format!("{e:#}"), "request failed");
        }
        let (status, body) = self.status_and_body();
        let mut response = problem_response(status, &body);
        let retry_after = match &self {
            ApiError::RateLimited(wait) => Some(retry_after_secs(*wait)),
            ApiError::Timeout(_) | ApiError::Unavailable(_) => Some(1),
            _ => None,
        };
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        let challenge = match &self {
            ApiError::Unauthorized => Some("Bearer realm=\"paystream\""),
            ApiError::AdminUnauthorized => Some("Bearer"),
            _ => None,
        };
        if let Some(challenge) = challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}

/// A problem+json response from a stored or freshly built body.
pub fn problem_response(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
        let response = ApiError::RateLimited(Duration::from_millis(1500)).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
    }

    #[test]
    fn malformed_json_carries_its_position() {
        let (status, body) = ApiError::MalformedJson {
            message: "x".into(),
            position: ParsePosition { line: 2, column: 7 },
        }
        .status_and_body();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["position"]["line"], 2);
        assert_eq!(body["position"]["column"], 7);
        assert_eq!(
            body["type"],
            "https://paystream.dev/problems/malformed-json"
        );
    }

    #[test]
    fn merchant_and_analytics_problems_keep_their_bodies() {
        let cases = [
            (
                ApiError::AdminUnauthorized,
                401,
                serde_json::json!({
                    "type": "https://paystream.dev/problems/unauthorized",
                    "title": "Unauthorized",
                    "status": 401,
                    "detail": "a valid admin bearer token is required",
                }),
            ),
            (
                ApiError::MerchantNotFound("m_1".into()),
                404,
                serde_json::json!({
                    "type": "https://paystream.dev/problems/merchant-not-found",
                    "title": "Merchant not found",
                    "status": 404,
                    "detail": "merchant `m_1` not found",
                }),
            ),
            (
                ApiError::MerchantForbidden("m_2".into()),
                403,
                serde_json::json!({
                    "type": "https://paystream.dev/problems/merchant-forbidden",
                    "title": "Not permitted for this merchant",
                    "status": 403,
                    "detail": "this API client may not act for merchant `m_2`; an administrator \
                               binds clients to merchants \
                               (PUT /v1/clients/{client_id}/merchants/{merchant_id})",
                }),
            ),
            (
                ApiError::InvalidQuery("`granularity` must be minute or day".into()),
                400,
                serde_json::json!({
                    "type": "https://paystream.dev/problems/invalid-query",
                    "title": "Invalid query",
                    "status": 400,
                    "detail": "invalid query: `granularity` must be minute or day",
                }),
            ),
        ];
        for (error, status, expected) in cases {
            let (s, body) = error.status_and_body();
            assert_eq!((s.as_u16(), &body), (status, &expected));
        }
    }

    #[test]
    fn each_unauthorized_names_its_challenge() {
        let client = ApiError::Unauthorized.into_response();
        assert_eq!(
            client.headers()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"paystream\""
        );
        let admin = ApiError::AdminUnauthorized.into_response();
        assert_eq!(admin.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(admin.headers()[header::WWW_AUTHENTICATE], "Bearer");
        assert_eq!(admin.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        assert!(admin.headers().get(header::RETRY_AFTER).is_none());
    }
}
