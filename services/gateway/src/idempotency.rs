//! Idempotency-Key handling (IETF httpapi Idempotency-Key draft, Stripe semantics).
//!
//! Keys are scoped per client. A request holds its key for the length of its Postgres
//! transaction through a transaction-scoped advisory lock: a second request with the same key
//! that arrives meanwhile gets `409` at once (it neither waits nor stores anything). The
//! response of a request that started executing is stored with the request's fingerprint, in
//! the same transaction as its effects: the same key and request get it replayed with
//! `Idempotent-Replayed: true` (error responses included), the same key with another request
//! gets `422`. Requests refused before executing (bad key, bad body, a merchant the client is
//! not bound to) store nothing. Keys expire after the configured retention, are then treated
//! as never seen, and are deleted by the [`Purger`].
//!
//! A handler follows the protocol with two calls: [`begin`] takes the key and says what to do
//! next ([`NextAction`]): replay a stored response, or execute the request through
//! [`Processing::execute`], which runs its effects, stores the response under the key and
//! commits.

use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use paystream_core::shutdown::Shutdown;
use serde::Serialize;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::problem::{problem_response, ApiError};

pub const HEADER: &str = "idempotency-key";
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
pub const MAX_KEY_LEN: usize = 255;

/// Reads the key. Accepts the structured-field string the draft specifies (`"abc"`, with `\"`
/// and `\\` escapes) and, like Stripe, the bare value (`abc`). 1–255 characters, printable ASCII.
pub fn parse_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let raw = headers
        .get(HEADER)
        .ok_or(ApiError::MissingIdempotencyKey)?
        .to_str()
        .map_err(|_| ApiError::InvalidIdempotencyKey("must be printable ASCII"))?
        .trim();
    let key = match raw.strip_prefix('"') {
        Some(quoted) => parse_sf_string(quoted)?,
        None => raw.to_string(),
    };
    if key.is_empty() {
        return Err(ApiError::InvalidIdempotencyKey("must not be empty"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(ApiError::InvalidIdempotencyKey(
            "must be at most 255 characters",
        ));
    }
    if !key.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(ApiError::InvalidIdempotencyKey("must be printable ASCII"));
    }
    Ok(key)
}

/// An RFC 8941 sf-string after its opening quote.
fn parse_sf_string(rest: &str) -> Result<String, ApiError> {
    let invalid = || ApiError::InvalidIdempotencyKey("malformed quoted string");
    let mut key = String::with_capacity(rest.len());
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('"' | '\\')) => key.push(e),
                _ => return Err(invalid()),
            },
            // The closing quote must end the value.
            '"' => return chars.next().is_none().then_some(key).ok_or_else(invalid),
            c => key.push(c),
        }
    }
    Err(invalid())
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
    /// The `500` problem stored for a request whose execution failed deterministically.
    fn failed(request_fingerprint: String, error: anyhow::Error) -> Self {
        let (status, body) = ApiError::Internal(error).status_and_body();
        StoredResponse {
            request_fingerprint,
            response_status: status.as_u16() as i16,
            response_body: body,
            payment_id: None,
        }
    }

    /// The HTTP response: JSON for a success (with `Location` of the payment), problem+json
    /// otherwise. The first answer and every replay are rendered by this one function.
    pub fn render(self) -> Result<Response, ApiError> {
        let status = StatusCode::from_u16(self.response_status as u16)
            .map_err(|e| ApiError::Internal(e.into()))?;
        if !status.is_success() {
            return Ok(problem_response(status, &self.response_body));
        }
        let mut response = (status, axum::Json(self.response_body)).into_response();
        if let Some(id) = self.payment_id {
            let location = HeaderValue::from_str(&format!("/v1/payments/{id}"))
                .map_err(|e| ApiError::Internal(e.into()))?;
            response.headers_mut().insert(header::LOCATION, location);
        }
        Ok(response)
    }

    /// The stored response again, or 422 when the key was used for a different request.
    pub fn replay(self, key: &str, fingerprint: &str) -> Result<Response, ApiError> {
        if self.request_fingerprint != fingerprint {
            return Err(ApiError::IdempotencyKeyReused(key.to_string()));
        }
        let mut response = self.render()?;
        response
            .headers_mut()
            .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
        crate::metrics::idempotent_replay();
        Ok(response)
    }
}

/// What the handler does next with a request whose key [`begin`] took.
pub enum NextAction {
    /// No unexpired response is stored under the key: execute the request with
    /// [`Processing::execute`].
    StartProcessing(Processing),
    /// The same request was answered under this key before: send this (replayed) response.
    ReturnSavedResponse(Response),
}

/// A request that holds its key: the transaction that owns the key's advisory lock, until
/// [`Processing::execute`] commits it (or dropping it rolls it back, storing nothing).
pub struct Processing {
    tx: Transaction<'static, Postgres>,
    client: String,
    key: String,
    fingerprint: String,
}

/// Takes `key` of `client` for the request with `fingerprint` and decides what happens next:
/// `403` when `client` must be bound to the merchant `acting_for` and is not (see below),
/// `409` while another request holds the key, the stored response again when the same request
/// was answered under it, `422` when another request was, otherwise
/// [`NextAction::StartProcessing`].
///
/// `acting_for` is the merchant of the request when the client's merchant bindings apply
/// (authentication on; `None` checks nothing). The binding is looked up in the statement that
/// takes the key's lock, so the check costs no round trip of its own (`crate::bindings`). It
/// comes before the key is even looked at: like a `401` or `429`, a `403` stores nothing, so
/// the key is free for the same request once the client is bound (Stripe stores no result for
/// a request refused before executing), and a client unbound since it used a key gets `403`
/// rather than the replay.
pub async fn begin(
    pool: &PgPool,
    client: &str,
    key: &str,
    fingerprint: &str,
    acting_for: Option<&str>,
) -> Result<NextAction, ApiError> {
    // Held until commit or rollback: a concurrent request with this key gets 409 meanwhile.
    let mut tx = pool.begin().await?;
    match try_lock(&mut tx, client, key, acting_for).await? {
        Lock::Taken => {}
        // Dropping the transaction stores nothing; it holds no lock to release.
        Lock::NotBound => {
            crate::metrics::merchant_forbidden(client);
            return Err(ApiError::MerchantForbidden(
                acting_for.unwrap_or_default().to_string(),
            ));
        }
        Lock::Held => {
            crate::metrics::idempotency_in_flight_conflict();
            return Err(ApiError::IdempotencyKeyInFlight(key.to_string()));
        }
    }
    if let Some(stored) = lookup(&mut tx, client, key).await? {
        // End the transaction here, releasing the key's lock. A dropped sqlx transaction rolls
        // back only when its connection is next used, so the lock would outlive the response
        // and the client's next retry (on another connection) would get a spurious 409.
        tx.rollback().await?;
        return stored
            .replay(key, fingerprint)
            .map(NextAction::ReturnSavedResponse);
    }
    Ok(NextAction::StartProcessing(Processing {
        tx,
        client: client.to_string(),
        key: key.to_string(),
        fingerprint: fingerprint.to_string(),
    }))
}

impl Processing {
    /// Executes the request and finishes the protocol; returns the response stored under the
    /// key (render it with [`StoredResponse::render`]).
    ///
    /// `effects` run in a savepoint of the key's transaction, so a failure that would happen
    /// again on every retry can be rolled back while its error response is still stored under
    /// the key (Stripe stores the result of every request that started executing, errors
    /// included). Success is stored as `202 Accepted` with `effects`' answer, pointing at
    /// `payment_id`; a deterministic database refusal as a `500` problem. Transient (or
    /// unknown) failures store nothing and are returned: a retry with the key may succeed.
    pub async fn execute<T: Serialize>(
        mut self,
        payment_id: Uuid,
        retention_hours: i64,
        effects: impl AsyncFnOnce(&mut PgConnection) -> anyhow::Result<T>,
    ) -> Result<StoredResponse, ApiError> {
        let mut execution = sqlx::Acquire::begin(&mut *self.tx).await?;
        let stored = match effects(&mut execution).await {
            Ok(accepted) => {
                execution.commit().await?;
                StoredResponse {
                    request_fingerprint: self.fingerprint,
                    response_status: StatusCode::ACCEPTED.as_u16() as i16,
                    response_body: serde_json::to_value(accepted).map_err(anyhow::Error::from)?,
                    payment_id: Some(payment_id),
                }
            }
            Err(e) if is_deterministic_failure(&e) => {
                execution.rollback().await?;
                tracing::error!(error = %format!("{e:#}"), "payment failed while executing; the error is stored under its key");
                StoredResponse::failed(self.fingerprint, e)
            }
            Err(e) => {
                // As in `begin`: release the key now. A failed rollback leaves a broken
                // connection that the pool discards; the error that matters is `e`.
                let _ = execution.rollback().await;
                let _ = self.tx.rollback().await;
                return Err(match e.downcast::<sqlx::Error>() {
                    Ok(db) => db.into(),
                    Err(other) => ApiError::Internal(other),
                });
            }
        };
        store(
            &mut self.tx,
            &self.client,
            &self.key,
            &stored,
            retention_hours,
        )
        .await?;
        self.tx.commit().await?;
        Ok(stored)
    }
}

/// A database refusal that the same request would meet again (constraint or data error).
fn is_deterministic_failure(e: &anyhow::Error) -> bool {
    e.downcast_ref::<sqlx::Error>()
        .and_then(|e| e.as_database_error())
        .and_then(|db| db.code())
        .is_some_and(|code| code.starts_with("22") || code.starts_with("23"))
}

/// What [`try_lock`] found.
#[derive(Debug, PartialEq)]
enum Lock {
    /// The key's lock is this request's now.
    Taken,
    /// Another request holds the key.
    Held,
    /// The client is not bound to the merchant it acts for; the lock was not tried.
    NotBound,
}

impl Lock {
    /// The statement's answer: NULL when not bound, else whether the lock was taken.
    fn from_row(locked: Option<bool>) -> Self {
        match locked {
            None => Lock::NotBound,
            Some(true) => Lock::Taken,
            Some(false) => Lock::Held,
        }
    }
}

/// Takes the key's transaction-scoped advisory lock without waiting, if `client` may act for
/// the merchant `acting_for` (`client_merchants`; `None`: no check). The lock id hashes
/// schema, client and key (length-prefixed, so no two pairs collide by concatenation); a
/// 64-bit hash collision would only cost a spurious 409. CASE evaluates the lock only for a
/// bound client, so a refused request never holds the key against one that may go ahead.
async fn try_lock(
    conn: &mut sqlx::PgConnection,
    client: &str,
    key: &str,
    acting_for: Option<&str>,
) -> Result<Lock, sqlx::Error> {
    let locked: Option<bool> = sqlx::query_scalar(
        "SELECT CASE WHEN $3::text IS NULL OR EXISTS (
                     SELECT 1 FROM client_merchants WHERE client_id = $1 AND merchant_id = $3)
                 THEN pg_try_advisory_xact_lock(hashtextextended(
                     format('idempotency:%s:%s:%s:%s', current_schema(), length($1), $1, $2), 0))
                 END",
    )
    .bind(client)
    .bind(key)
    .bind(acting_for)
    .fetch_one(conn)
    .await?;
    Ok(Lock::from_row(locked))
}

/// The unexpired response stored under `key`, if any.
async fn lookup(
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

/// Stores the response under `key` inside the caller's transaction, which holds the key's lock
/// ([`try_lock`]) and found no unexpired entry ([`lookup`]); an expired one is overwritten.
async fn store(
    conn: &mut sqlx::PgConnection,
    client: &str,
    key: &str,
    response: &StoredResponse,
    retention_hours: i64,
) -> anyhow::Result<()> {
    let written = sqlx::query(
        "INSERT INTO idempotency_keys
            (client_id, idempotency_key, request_fingerprint, response_status, response_body,
             payment_id, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, now(), now() + make_interval(hours => $7))
         ON CONFLICT (client_id, idempotency_key) DO UPDATE
            SET request_fingerprint = excluded.request_fingerprint,
                response_status = excluded.response_status,
                response_body = excluded.response_body,
                payment_id = excluded.payment_id,
                created_at = excluded.created_at,
                expires_at = excluded.expires_at
            WHERE idempotency_keys.expires_at <= now()",
    )
    .bind(client)
    .bind(key)
    .bind(&response.request_fingerprint)
    .bind(response.response_status)
    .bind(&response.response_body)
    .bind(response.payment_id)
    .bind(i32::try_from(retention_hours)?)
    .execute(conn)
    .await?
    .rows_affected();
    anyhow::ensure!(
        written == 1,
        "idempotency key is held by an unexpired entry although its lock was free"
    );
    Ok(())
}

/// Deletes expired keys in batches until none is left; returns how many it deleted.
/// `SKIP LOCKED` lets several replicas purge side by side.
pub async fn purge_expired(pool: &PgPool, batch: i64) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let deleted = sqlx::query(
            "DELETE FROM idempotency_keys WHERE (client_id, idempotency_key) IN (
                 SELECT client_id, idempotency_key FROM idempotency_keys
                 WHERE expires_at <= now() LIMIT $1 FOR UPDATE SKIP LOCKED)",
        )
        .bind(batch)
        .execute(pool)
        .await?
        .rows_affected();
        total += deleted;
        if deleted < batch as u64 {
            return Ok(total);
        }
    }
}

/// The background task that deletes expired keys (lookups already ignore them; this keeps the
/// table from growing forever).
pub struct Purger {
    pub pool: PgPool,
    pub interval: Duration,
}

impl Purger {
    const BATCH: i64 = 1000;

    pub async fn run(self, shutdown: Shutdown) {
        loop {
            match purge_expired(&self.pool, Self::BATCH).await {
                Ok(0) => {}
                Ok(n) => {
                    crate::metrics::idempotency_keys_purged(n);
                    tracing::info!(keys = n, "expired idempotency keys purged");
                }
                Err(e) => tracing::warn!(error = %e, "purging expired idempotency keys failed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
    }
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
    fn accepts_plain_and_structured_field_keys() {
        assert_eq!(parse_key(&headers("abc")).unwrap(), "abc");
        assert_eq!(parse_key(&headers(" abc ")).unwrap(), "abc");
        assert_eq!(parse_key(&headers("\"abc\"")).unwrap(), "abc");
        assert_eq!(parse_key(&headers(r#""a\"b\\c""#)).unwrap(), r#"a"b\c"#);
        assert_eq!(parse_key(&headers("\"a b\"")).unwrap(), "a b");
    }

    #[test]
    fn rejects_malformed_quoted_keys() {
        for bad in [r#""abc"#, r#""a"b""#, r#""a\x""#, r#""abc"x"#, "\"\\\""] {
            assert!(
                matches!(
                    parse_key(&headers(bad)),
                    Err(ApiError::InvalidIdempotencyKey(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn rejects_missing_empty_long_and_non_ascii_keys() {
        assert!(matches!(
            parse_key(&HeaderMap::new()),
            Err(ApiError::MissingIdempotencyKey)
        ));
        assert!(parse_key(&headers("\"\"")).is_err());
        assert!(parse_key(&headers("")).is_err());
        assert!(parse_key(&headers(&"k".repeat(256))).is_err());
        assert!(parse_key(&headers(&format!("\"{}\"", "k".repeat(256)))).is_err());
        assert_eq!(parse_key(&headers(&"k".repeat(255))).unwrap().len(), 255);
        assert_eq!(
            parse_key(&headers(&format!("\"{}\"", "k".repeat(255))))
                .unwrap()
                .len(),
            255
        );
        let mut h = HeaderMap::new();
        h.insert(HEADER, HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap());
        assert!(parse_key(&h).is_err());
    }

    #[test]
    fn the_lock_statement_tells_refusal_from_conflict() {
        assert_eq!(Lock::from_row(None), Lock::NotBound);
        assert_eq!(Lock::from_row(Some(true)), Lock::Taken);
        assert_eq!(Lock::from_row(Some(false)), Lock::Held);
    }

    #[test]
    fn replay_refuses_a_different_request_and_marks_replays() {
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

    #[test]
    fn stored_errors_replay_as_problems() {
        let stored = StoredResponse {
            request_fingerprint: "a".into(),
            response_status: 500,
            response_body: serde_json::json!({"type": "t"}),
            payment_id: None,
        };
        let r = stored.replay("k", "a").unwrap();
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        assert_eq!(r.headers()[REPLAYED_HEADER], "true");
    }

    /// A database error with an SQLSTATE code, as Postgres reports it.
    #[derive(Debug)]
    struct DbError(&'static str);

    impl std::fmt::Display for DbError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "SQLSTATE {}", self.0)
        }
    }

    impl std::error::Error for DbError {}

    impl sqlx::error::DatabaseError for DbError {
        fn message(&self) -> &str {
            self.0
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn db_error(code: &'static str) -> anyhow::Error {
        sqlx::Error::Database(Box::new(DbError(code))).into()
    }

    #[test]
    fn only_data_and_constraint_errors_are_stored() {
        for stored in ["22001", "22P02", "23505", "23514"] {
            assert!(is_deterministic_failure(&db_error(stored)), "{stored}");
        }
        for retried in ["08006", "40001", "40P01", "53300", "57P01", "XX000"] {
            assert!(!is_deterministic_failure(&db_error(retried)), "{retried}");
        }
        assert!(!is_deterministic_failure(&sqlx::Error::PoolTimedOut.into()));
        assert!(!is_deterministic_failure(&anyhow::anyhow!(
            "not a database error"
        )));
    }

    #[test]
    fn a_failed_execution_is_stored_as_an_internal_error() {
        let stored = StoredResponse::failed("fp".into(), db_error("23505"));
        assert_eq!(stored.request_fingerprint, "fp");
        assert_eq!(stored.response_status, 500);
        assert_eq!(stored.payment_id, None);
        assert_eq!(
            stored.response_body,
            serde_json::json!({
                "type": "https://paystream.dev/problems/internal-error",
                "title": "Internal server error",
                "status": 500,
                "detail": "internal error",
            })
        );
    }
}
