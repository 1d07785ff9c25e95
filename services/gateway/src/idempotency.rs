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
//! A handler follows the protocol with one call: [`execute`] takes the key, checks the
//! client's merchant binding and either commits the request's effects with its answer or
//! returns the answer stored before ([`Answer`]). All of it is one call of the database
//! function `idempotent_payment`, so a new payment costs one round trip (docs/performance.md).

use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use paystream_core::shutdown::Shutdown;
use sqlx::PgPool;
use uuid::Uuid;

use crate::problem::{problem_response, ApiError, Deadline};

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

/// A request under its key, as [`execute`] presents it to the database.
pub struct KeyedRequest<'a> {
    pub client: &'a str,
    pub key: &'a str,
    /// SHA-256 of the canonical request: the same key with another fingerprint is `422`.
    pub fingerprint: &'a str,
    /// The merchant the client must be bound to (authentication on); `None` checks nothing.
    pub acting_for: Option<&'a str>,
}

/// What a request writes when it is the first under its key: its `202` answer and the rows.
pub struct Effects {
    pub payment_id: Uuid,
    /// The `202` body, stored under the key and replayed.
    pub answer: serde_json::Value,
    /// The `payments` row, as JSON with the table's column names.
    pub payment: serde_json::Value,
    /// The `outbox` row, as JSON with the table's column names.
    pub outbox: serde_json::Value,
}

/// How [`execute`] answered a request.
pub enum Answer {
    /// This request executed: the response now stored under its key (the `202` with its
    /// effects committed, or the `500` of a deterministic failure). Render it with
    /// [`StoredResponse::render`].
    Executed(StoredResponse),
    /// The key was answered before, for this request: the replayed response.
    Replayed(Response),
}

/// Runs the Idempotency-Key protocol for `request` and, when it is the first request under its
/// key, commits `effects` with its answer: `403` when `request.acting_for` is set and the
/// client is not bound to that merchant, `409` while another request holds the key, the stored
/// response again when the same request was answered under it, `422` when another request was,
/// otherwise [`Answer::Executed`].
///
/// A new payment costs one round trip: one call of the database function `idempotent_payment`
/// (migration `20261202000100_payment_in_one_round_trip`) in autocommit does all of it (binding
/// check, key lock, key lookup, payment, outbox row, stored answer) as one transaction; a replay
/// costs the same single call. The binding check comes before the key is even looked at: like a
/// `401` or `429`, a `403` stores nothing, so the key is free for the same request once the
/// client is bound (Stripe stores no result for a request refused before executing), and a
/// client unbound since it used a key gets `403` rather than the replay.
///
/// A deterministic database refusal of the effects (a constraint or data error, which every
/// retry would meet again) rolls the whole call back; a second call then stores its `500`
/// problem under the key without effects (Stripe stores the result of every request that
/// started executing, errors included). Transient (or unknown) failures store nothing and are
/// returned: a retry with the key may succeed.
///
/// The call cannot be taken back once sent (it commits whether or not the gateway still waits),
/// so it stops by itself: its lock waits end [`DEADLINE_MARGIN`] before the request's
/// `deadline`, and the request is then answered `503` (timeout), nothing stored, before the
/// timeout layer would answer it while the call might still commit.
pub async fn execute(
    pool: &PgPool,
    request: &KeyedRequest<'_>,
    effects: Effects,
    deadline: &Deadline,
    retention_hours: i64,
) -> Result<Answer, ApiError> {
    let accepted = StoredResponse {
        request_fingerprint: request.fingerprint.to_string(),
        response_status: StatusCode::ACCEPTED.as_u16() as i16,
        response_body: effects.answer,
        payment_id: Some(effects.payment_id),
    };
    let rows = Some((&effects.payment, &effects.outbox));
    let call = Call {
        pool,
        request,
        deadline,
        retention_hours,
    };
    match call.run(&accepted, rows).await {
        Ok(outcome) => outcome.answer(request, accepted),
        Err(e) if is_deterministic_failure(&e) => {
            tracing::error!(error = %e, "payment failed while executing; the error is stored under its key");
            let failed = StoredResponse::failed(request.fingerprint.to_string(), e.into());
            match call.run(&failed, None).await {
                Ok(outcome) => outcome.answer(request, failed),
                Err(e) => Err(call.error(e)),
            }
        }
        Err(e) => Err(call.error(e)),
    }
}

/// How long before the request's deadline the database call stops waiting for locks: enough
/// for its rollback to reach the handler before the timeout layer answers on its own.
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(100);

/// One call of `idempotent_payment` for a request.
struct Call<'a> {
    pool: &'a PgPool,
    request: &'a KeyedRequest<'a>,
    deadline: &'a Deadline,
    retention_hours: i64,
}

impl Call<'_> {
    /// Stores `response` under the key if it is free, with the rows when given. A call whose
    /// connection was lost (the pool pings only connections idle for a while, so one killed by a
    /// database restart is found out here) is made again on another: safe whether or not the
    /// lost call committed, since the key then answers it (replayed) or is still free. At most
    /// once per pooled connection, and each lost one leaves the pool.
    async fn run(
        &self,
        response: &StoredResponse,
        rows: Option<(&serde_json::Value, &serde_json::Value)>,
    ) -> Result<Outcome, sqlx::Error> {
        let mut attempts = self.pool.options().get_max_connections() + 1;
        loop {
            attempts -= 1;
            match self.once(response, rows).await {
                Err(e) if attempts > 0 && is_connection_lost(&e) => {
                    tracing::info!(error = %e, "connection lost under a payment's call; calling again");
                }
                result => return result,
            }
        }
    }

    async fn once(
        &self,
        response: &StoredResponse,
        rows: Option<(&serde_json::Value, &serde_json::Value)>,
    ) -> Result<Outcome, sqlx::Error> {
        let r = self.request;
        let budget = self.deadline.remaining().saturating_sub(DEADLINE_MARGIN);
        let budget_ms = i32::try_from(budget.as_millis()).unwrap_or(i32::MAX);
        let retention = i32::try_from(self.retention_hours).unwrap_or(i32::MAX);
        sqlx::query_as(
            "SELECT outcome, stored_fingerprint, stored_status, stored_body, stored_payment_id
             FROM idempotent_payment($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(r.client)
        .bind(r.key)
        .bind(r.fingerprint)
        .bind(r.acting_for)
        .bind(budget_ms)
        .bind(retention)
        .bind(response.response_status)
        .bind(&response.response_body)
        .bind(response.payment_id)
        .bind(rows.map(|(payment, _)| payment))
        .bind(rows.map(|(_, outbox)| outbox))
        .fetch_one(self.pool)
        .await
    }

    /// The answer to a failed call: a lock wait that ran out of the request's time is its
    /// timeout (`55P03`, lock_not_available: `lock_timeout` set by the function).
    fn error(&self, e: sqlx::Error) -> ApiError {
        let code = e.as_database_error().and_then(|db| db.code());
        if code.as_deref() == Some("55P03") {
            self.deadline.exceeded()
        } else {
            e.into()
        }
    }
}

/// The row `idempotent_payment` returns.
#[derive(Debug, sqlx::FromRow)]
struct Outcome {
    outcome: Option<String>,
    stored_fingerprint: Option<String>,
    stored_status: Option<i16>,
    stored_body: Option<serde_json::Value>,
    stored_payment_id: Option<Uuid>,
}

impl Outcome {
    /// The answer to `request`, whose call offered `offered` for storage.
    fn answer(
        self,
        request: &KeyedRequest<'_>,
        offered: StoredResponse,
    ) -> Result<Answer, ApiError> {
        match self.outcome.as_deref() {
            Some("stored") => Ok(Answer::Executed(offered)),
            Some("answered") => {
                let stored = StoredResponse {
                    request_fingerprint: self.stored_fingerprint.unwrap_or_default(),
                    response_status: self.stored_status.unwrap_or_default(),
                    response_body: self.stored_body.unwrap_or_default(),
                    payment_id: self.stored_payment_id,
                };
                stored
                    .replay(request.key, request.fingerprint)
                    .map(Answer::Replayed)
            }
            Some("in_flight") => {
                crate::metrics::idempotency_in_flight_conflict();
                Err(ApiError::IdempotencyKeyInFlight(request.key.to_string()))
            }
            Some("forbidden") => {
                crate::metrics::merchant_forbidden(request.client);
                Err(ApiError::MerchantForbidden(
                    request.acting_for.unwrap_or_default().to_string(),
                ))
            }
            other => Err(ApiError::Internal(anyhow::anyhow!(
                "idempotent_payment returned the unknown outcome {other:?}"
            ))),
        }
    }
}

/// The connection broke, or the server ended the session (class 08, or 57P01/57P02: shut down
/// by an administrator or a crash), before the call answered.
fn is_connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code == "57P01" || code == "57P02"),
        _ => false,
    }
}

/// A database refusal that the same request would meet again (constraint or data error).
fn is_deterministic_failure(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| code.starts_with("22") || code.starts_with("23"))
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

    fn outcome(outcome: &str, fingerprint: Option<&str>) -> Outcome {
        Outcome {
            outcome: Some(outcome.into()),
            stored_fingerprint: fingerprint.map(str::to_string),
            stored_status: fingerprint.map(|_| 202),
            stored_body: fingerprint.map(|_| serde_json::json!({"id": "stored"})),
            stored_payment_id: None,
        }
    }

    #[test]
    fn the_database_outcome_decides_the_answer() {
        let request = KeyedRequest {
            client: "c",
            key: "k",
            fingerprint: "fp",
            acting_for: Some("m_1"),
        };
        let offered = || StoredResponse::failed("fp".into(), anyhow::anyhow!("offered"));
        let answer = |o: Outcome| o.answer(&request, offered());
        assert!(matches!(
            answer(outcome("stored", None)),
            Ok(Answer::Executed(stored)) if stored.response_status == 500
        ));
        match answer(outcome("answered", Some("fp"))) {
            Ok(Answer::Replayed(r)) => assert_eq!(r.headers()[REPLAYED_HEADER], "true"),
            _ => panic!("the same request is replayed"),
        }
        assert!(matches!(
            answer(outcome("answered", Some("other"))),
            Err(ApiError::IdempotencyKeyReused(k)) if k == "k"
        ));
        assert!(matches!(
            answer(outcome("in_flight", None)),
            Err(ApiError::IdempotencyKeyInFlight(k)) if k == "k"
        ));
        assert!(matches!(
            answer(outcome("forbidden", None)),
            Err(ApiError::MerchantForbidden(m)) if m == "m_1"
        ));
        assert!(matches!(
            answer(Outcome {
                outcome: None,
                ..outcome("stored", None)
            }),
            Err(ApiError::Internal(_))
        ));
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

    fn db_error(code: &'static str) -> sqlx::Error {
        sqlx::Error::Database(Box::new(DbError(code)))
    }

    #[test]
    fn only_data_and_constraint_errors_are_stored() {
        for stored in ["22001", "22P02", "23505", "23514"] {
            assert!(is_deterministic_failure(&db_error(stored)), "{stored}");
        }
        for retried in ["08006", "40001", "40P01", "53300", "57P01", "XX000"] {
            assert!(!is_deterministic_failure(&db_error(retried)), "{retried}");
        }
        assert!(!is_deterministic_failure(&sqlx::Error::PoolTimedOut));
        assert!(!is_deterministic_failure(&sqlx::Error::RowNotFound));
    }

    #[test]
    fn only_a_lost_connection_is_called_again() {
        for lost in ["08006", "08003", "57P01", "57P02"] {
            assert!(is_connection_lost(&db_error(lost)), "{lost}");
        }
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(is_connection_lost(&sqlx::Error::Io(reset)));
        for kept in ["23505", "55P03", "57014", "40001"] {
            assert!(!is_connection_lost(&db_error(kept)), "{kept}");
        }
        assert!(!is_connection_lost(&sqlx::Error::PoolTimedOut));
    }

    #[test]
    fn a_failed_execution_is_stored_as_an_internal_error() {
        let stored = StoredResponse::failed("fp".into(), db_error("23505").into());
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
