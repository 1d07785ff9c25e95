//! `POST /v1/payments` and `GET /v1/payments/{id}`.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use paystream_core::events::{self, PaymentRequested, Step};
use paystream_core::headers::RecordHeaders;
use serde::Serialize;
use uuid::Uuid;

use crate::domain::{PaymentRequest, PaymentRequestBody};
use crate::idempotency::{self, StoredResponse, ANONYMOUS_CLIENT};
use crate::outbox;
use crate::problem::{ApiError, FieldError};
use crate::startup::AppState;

/// A payment as the API shows it.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct PaymentView {
    pub id: Uuid,
    pub status: String,
    pub merchant_id: String,
    pub customer_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub payment_method: String,
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        });
    is_json.then_some(()).ok_or(ApiError::UnsupportedMediaType)
}

/// Reads and parses a JSON body within the configured size limit.
pub(crate) async fn read_request<T: serde::de::DeserializeOwned>(
    body: Body,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::PayloadTooLarge(limit))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        if e.is_data() {
            // Well-formed JSON of the wrong shape: unknown, missing or mistyped fields.
            ApiError::Validation(vec![FieldError {
                field: "body".into(),
                message: e.to_string(),
            }])
        } else {
            ApiError::MalformedJson(e.to_string())
        }
    })
}

#[tracing::instrument(name = "create_payment", skip_all, fields(idempotency.key, payment.id))]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = idempotency::parse_key(&headers)?;
    tracing::Span::current().record("idempotency.key", key.as_str());
    require_json(&headers)?;
    let request = read_request::<PaymentRequestBody>(body, state.settings.gateway.max_body_bytes)
        .await?
        .validate(state.settings.gateway.max_amount_minor)
        .map_err(ApiError::Validation)?;
    let fingerprint = request.fingerprint();

    let mut tx = state.pool.begin().await.map_err(internal)?;
    if let Some(stored) = idempotency::lookup(&mut tx, ANONYMOUS_CLIENT, &key)
        .await
        .map_err(internal)?
    {
        return stored.replay(&key, &fingerprint);
    }

    let payment_id = Uuid::now_v7();
    tracing::Span::current().record("payment.id", tracing::field::display(payment_id));
    let now = Utc::now();
    let accepted = serde_json::json!({
        "id": payment_id,
        "status": "PENDING",
        "merchant_id": request.merchant_id,
        "customer_id": request.customer_id,
        "amount_minor": request.amount_minor,
        "currency": request.currency,
        "payment_method": request.payment_method,
        "created_at": now,
    });
    let stored = StoredResponse {
        request_fingerprint: fingerprint.clone(),
        response_status: StatusCode::ACCEPTED.as_u16() as i16,
        response_body: accepted.clone(),
        payment_id: Some(payment_id),
    };
    // The key is claimed first: a concurrent request with the same key blocks here until this
    // transaction ends, then sees the stored response instead of creating a second payment.
    let retention = state.settings.gateway.idempotency_retention_hours;
    if !idempotency::claim(&mut tx, ANONYMOUS_CLIENT, &key, &stored, retention)
        .await
        .map_err(internal)?
    {
        tx.rollback().await.map_err(internal)?;
        let mut conn = state.pool.acquire().await.map_err(internal)?;
        let winner = idempotency::lookup(&mut conn, ANONYMOUS_CLIENT, &key)
            .await
            .map_err(internal)?
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("idempotency key vanished")))?;
        return winner.replay(&key, &fingerprint);
    }

    insert_payment(&mut tx, payment_id, &request, now)
        .await
        .map_err(internal)?;
    let event = PaymentRequested {
        event_id: events::event_id(payment_id, Step::Requested).to_string(),
        payment_id: payment_id.to_string(),
        client_id: ANONYMOUS_CLIENT.to_string(),
        merchant_id: request.merchant_id.clone(),
        customer_id: request.customer_id.clone(),
        amount_minor: request.amount_minor,
        currency: request.currency.clone(),
        payment_method: request.payment_method.clone(),
        requested_at: now.timestamp_millis(),
        customer_email: request.customer_email.clone(),
    };
    let mut record_headers = RecordHeaders::default();
    record_headers.inject_current_context();
    outbox::enqueue_payment_requested(
        &mut tx,
        &state.settings.topics.payments_requested,
        &event,
        &record_headers,
    )
    .await
    .map_err(internal)?;
    tx.commit().await.map_err(internal)?;
    state.outbox_wakeup.notify_one();
    tracing::info!(%payment_id, merchant_id = %request.merchant_id, "payment accepted");

    let mut response = (StatusCode::ACCEPTED, axum::Json(accepted)).into_response();
    response.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&format!("/v1/payments/{payment_id}")).map_err(internal)?,
    );
    Ok(response)
}

async fn insert_payment(
    conn: &mut sqlx::PgConnection,
    id: Uuid,
    request: &PaymentRequest,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO payments (id, client_id, merchant_id, customer_id, amount_minor, currency,
                               payment_method, status, created_at, updated_at, customer_email)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'PENDING', $8, $8, $9)",
    )
    .bind(id)
    .bind(ANONYMOUS_CLIENT)
    .bind(&request.merchant_id)
    .bind(&request.customer_id)
    .bind(request.amount_minor)
    .bind(&request.currency)
    .bind(&request.payment_method)
    .bind(now)
    .bind(&request.customer_email)
    .execute(conn)
    .await
    .map(|_| ())
}

#[tracing::instrument(name = "get_payment", skip_all, fields(payment.id = %id))]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let payment_id = Uuid::parse_str(&id).map_err(|_| ApiError::PaymentNotFound(id.clone()))?;
    let payment: Option<PaymentView> = sqlx::query_as(
        "SELECT id, status, merchant_id, customer_id, amount_minor, currency::text AS currency,
                payment_method, failure_reason, created_at, updated_at
         FROM payments WHERE id = $1",
    )
    .bind(payment_id)
    .fetch_optional(&state.pool)
    .await
    .map_err(internal)?;
    match payment {
        Some(p) => Ok(axum::Json(p).into_response()),
        None => Err(ApiError::PaymentNotFound(id)),
    }
}

fn internal(e: impl Into<anyhow::Error>) -> ApiError {
    ApiError::Internal(e.into())
}
