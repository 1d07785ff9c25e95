//! Idempotency-Key handling (IETF httpapi Idempotency-Key draft, Stripe semantics).
//!
//! Keys are scoped per client. The first completed response for a key is stored with the
//! request's fingerprint; the same key and request get that response replayed with
//! `Idempotent-Replayed: true`, the same key with another request gets 422. Keys expire after
//! the configured retention and are then treated as never seen.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use crate::problem::{problem_response, ApiError};

pub const HEADER: &str = "idempotency-key";
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
const MAX_KEY_LEN: usize = 255;

/// The client a request is attributed to; every key lives in its client's namespace.
/// Authentication is not wired yet, so all requests share the anonymous client.
pub const ANONYMOUS_CLIENT: &str = "anonymous";

/// Reads the key, accepting both the plain form and the structured-field string (`"abc"`).
pub fn parse_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let raw = headers
        .get(HEADER)
        .ok_or(ApiError::MissingIdempotencyKey)?
        .to_str()
        .map_err(|_| ApiError::InvalidIdempotencyKey("must be visible ASCII"))?
        .trim();
    let key = match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(inner) => inner,
        None => raw,
    };
    if key.is_empty() {
        return Err(ApiError::InvalidIdempotencyKey("must not be empty"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(ApiError::InvalidIdempotencyKey(
            "must be at most 255 characters",
        ));
    }
    Ok(key.to_string())
}

/// A response stored under a key.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredResponse {
    pub request_fingerprint: String,
    pub response_status: i16,
    pub response_body: serde_json::Value,
    pub payment_id: Option<Uuid>,
}

impl StoredResponse {
    /// The stored response again, or 422 when the key was used for a different request.
    pub fn replay(self, key: &str, fingerprint: &str) -> Result<Response, ApiError> {
        if self.request_fingerprint != fingerprint {
            return Err(ApiError::IdempotencyKeyReused(key.to_string()));
        }
        let status = StatusCode::from_u16(self.response_status as u16)
            .map_err(|e| ApiError::Internal(e.into()))?;
        let mut response = if status.is_success() {
            let mut r = (status, axum::Json(self.response_body)).into_response();
            if let Some(id) = self.payment_id {
                if let Ok(v) = HeaderValue::from_str(&format!("/v1/payments/{id}")) {
                    r.headers_mut().insert(header::LOCATION, v);
                }
            }
            r
        } else {
            problem_response(status, &self.response_body)
        };
        response
            .headers_mut()
            .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
        Ok(response)
    }
}

/// The unexpired response stored under `key`, if any.
pub async fn lookup(
    conn: &mut sqlx::PgConnection,
    client: &str,
    key: &str,
) -> Result<Option<StoredResponse>, sqlx::Error> {
    sqlx::query_as(
        "SELECT request_fingerprint, response_status, response_body, payment_id
         FROM idempotency_keys
         WHERE client_id = $1 AND idempotency_key = $2 AND expires_at > now()",
    )
    .bind(client)
    .bind(key)
    .fetch_optional(conn)
    .await
}

/// Claims `key` with its response, inside the caller's transaction. Returns false when another
/// request holds the key: concurrent claims block on the primary key until the first commits.
pub async fn claim(
    conn: &mut sqlx::PgConnection,
    client: &str,
    key: &str,
    response: &StoredResponse,
    retention_hours: i64,
) -> Result<bool, sqlx::Error> {
    // An expired key is forgotten, so it can be claimed afresh.
    sqlx::query(
        "DELETE FROM idempotency_keys
         WHERE client_id = $1 AND idempotency_key = $2 AND expires_at <= now()",
    )
    .bind(client)
    .bind(key)
    .execute(&mut *conn)
    .await?;
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys
            (client_id, idempotency_key, request_fingerprint, response_status, response_body,
             payment_id, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(hours => $7))
         ON CONFLICT (client_id, idempotency_key) DO NOTHING",
    )
    .bind(client)
    .bind(key)
    .bind(&response.request_fingerprint)
    .bind(response.response_status)
    .bind(&response.response_body)
    .bind(response.payment_id)
    .bind(retention_hours as i32)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn accepts_plain_and_quoted_keys() {
        assert_eq!(parse_key(&headers("abc")).unwrap(), "abc");
        assert_eq!(parse_key(&headers("\"abc\"")).unwrap(), "abc");
    }

    #[test]
    fn rejects_missing_empty_and_long_keys() {
        assert!(matches!(
            parse_key(&HeaderMap::new()),
            Err(ApiError::MissingIdempotencyKey)
        ));
        assert!(parse_key(&headers("\"\"")).is_err());
        assert!(parse_key(&headers(&"k".repeat(256))).is_err());
        assert!(parse_key(&headers(&"k".repeat(255))).is_ok());
    }

    #[test]
    fn replay_refuses_a_different_request() {
        let stored = StoredResponse {
            request_fingerprint: "a".into(),
            response_status: 202,
            response_body: serde_json::json!({}),
            payment_id: None,
        };
        assert!(matches!(
            stored.clone().replay("k", "b"),
            Err(ApiError::IdempotencyKeyReused(_))
        ));
        let r = stored.replay("k", "a").unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        assert_eq!(r.headers()[REPLAYED_HEADER], "true");
    }
}
