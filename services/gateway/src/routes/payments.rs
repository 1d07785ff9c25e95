//! `POST /v1/payments` and `GET /v1/payments/{id}`.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use chrono::{DateTime, SubsecRound, Utc};
use paystream_core::events::{self, PaymentRequested, Step};
use paystream_core::headers::RecordHeaders;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::ClientId;
use crate::domain::{PaymentRequest, PaymentRequestBody};
use crate::idempotency::{self, Answer, Effects};
use crate::outbox;
use crate::problem::{ApiError, Deadline, Problem};
use crate::routes::request::{read_request, require_json};
use crate::state::AppState;

/// A payment as the API shows it: the `202` answer (stored and replayed under its
/// Idempotency-Key) and `GET /v1/payments/{id}`.
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct PaymentView {
    pub id: Uuid,
    /// `PENDING`, `PROCESSING` while the processor holds its claim (PSP call in flight), then
    /// `SUCCEEDED` or `FAILED`.
    #[schema(example = "SUCCEEDED")]
    pub status: String,
    pub merchant_id: String,
    pub customer_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub payment_method: String,
    /// Why a `FAILED` payment failed, e.g. `card_declined`.
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Accept a payment for asynchronous execution.
///
/// The payment, its idempotency record and its outbox event are committed in one Postgres
/// transaction before the `202`; the event then reaches Kafka through the outbox relay. With
/// authentication on, the client must be bound to `merchant_id` (admin API,
/// `PUT /v1/clients/{client_id}/merchants/{merchant_id}`), else `403` and nothing is written.
#[utoipa::path(
    post,
    path = "/v1/payments",
    tag = "payments",
    params(
        ("Idempotency-Key" = String, Header,
         description = "Required. 1-255 printable ASCII characters, bare or as a quoted structured-field string. Scoped per client; remembered for the retention period (see the API description)."),
    ),
    request_body(content = PaymentRequestBody, content_type = "application/json"),
    responses(
        (status = 202, description = "Accepted, status `PENDING` (or replayed: `Idempotent-Replayed: true`)", body = PaymentView,
         headers(("Location" = String, description = "/v1/payments/{id}"),
                 ("Idempotent-Replayed" = String, description = "`true` on a replayed response"))),
        (status = 400, description = "Missing or invalid Idempotency-Key, malformed JSON (with its position)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid API key (authentication enabled)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The client is not bound to this merchant (authentication enabled; `merchant-forbidden`, whether or not the merchant exists); nothing was stored, so the key is free for the same request once an administrator binds the client", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A request with this Idempotency-Key is still in flight; nothing was stored, retry later", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body larger than the limit", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, or Idempotency-Key reused with a different request", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limit exceeded (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "Internal error (stored and replayed when it happened while executing)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Timed out or dependencies unavailable; nothing stored, retry with the same key", body = Problem, content_type = "application/problem+json"),
    ),
    security((), ("api_key" = []))
)]
#[tracing::instrument(name = "create_payment", skip_all, fields(client.id = %client.as_str(), idempotency.key, payment.id))]
pub async fn create(
    State(state): State<AppState>,
    Extension(client): Extension<ClientId>,
    Extension(deadline): Extension<Deadline>,
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

    let payment_id = Uuid::now_v7();
    let effects = effects(&state, &client, payment_id, &request)?;
    // With authentication on, the client must be bound to the merchant: checked in the same
    // database call, before the key is looked at and before anything is stored.
    let keyed = idempotency::KeyedRequest {
        client: client.as_str(),
        key: &key,
        fingerprint: &fingerprint,
        acting_for: client.merchant_to_check(&request.merchant_id),
    };
    let retention = state.settings.gateway.idempotency_retention_hours;
    let answer = idempotency::execute(&state.pool, &keyed, effects, &deadline, retention)
        .await
        .inspect_err(|e| {
            if let ApiError::MerchantForbidden(merchant_id) = e {
                tracing::info!(%merchant_id, "payment refused: client not bound to the merchant");
            }
        })?;
    let stored = match answer {
        Answer::Replayed(replayed) => return Ok(replayed),
        Answer::Executed(stored) => stored,
    };
    if stored.payment_id.is_some() {
        tracing::Span::current().record("payment.id", tracing::field::display(payment_id));
        state.outbox_wakeup.committed();
        crate::metrics::payment_accepted();
        tracing::info!(%payment_id, merchant_id = %request.merchant_id, "payment accepted");
    }
    stored.render()
}

/// What accepting the payment writes: the payment row, its outbox event and the `202` answer,
/// all prepared here so the database needs one round trip for them ([`idempotency::execute`]).
fn effects(
    state: &AppState,
    client: &ClientId,
    payment_id: Uuid,
    request: &PaymentRequest,
) -> Result<Effects, ApiError> {
    // Microseconds, as Postgres keeps them: the stored answer and the row show the same instant.
    let now = Utc::now().trunc_subsecs(6);
    let view = PaymentView {
        id: payment_id,
        status: "PENDING".into(),
        merchant_id: request.merchant_id.clone(),
        customer_id: request.customer_id.clone(),
        amount_minor: request.amount_minor,
        currency: request.currency.clone(),
        payment_method: request.payment_method.clone(),
        failure_reason: None,
        created_at: now,
        updated_at: now,
    };
    let event = PaymentRequested {
        event_id: events::event_id(payment_id, Step::Requested).to_string(),
        payment_id: payment_id.to_string(),
        client_id: client.as_str().to_string(),
        merchant_id: request.merchant_id.clone(),
        customer_id: request.customer_id.clone(),
        amount_minor: request.amount_minor,
        currency: request.currency.clone(),
        payment_method: request.payment_method.clone(),
        requested_at: now.timestamp_millis(),
        customer_email: request.customer_email.clone(),
    };
    // The record is produced later by the outbox relay, but the send belongs to this request's
    // trace: its PRODUCER span is opened here and travels in the outbox row's headers. Opened
    // before the database says whether the request is new (a replay's span is never followed by
    // a record): the price of deciding and writing in one round trip.
    let mut record_headers = RecordHeaders::default();
    record_headers
        .inject_send_context(&state.settings.topics.payments_requested, &event.payment_id);
    let outbox = outbox::payment_requested_row(
        &state.settings.topics.payments_requested,
        &event,
        &record_headers,
    )?;
    // The `payments` row: the answer's fields plus the ones the API does not show.
    let mut payment = serde_json::to_value(&view).map_err(anyhow::Error::from)?;
    payment["client_id"] = client.as_str().into();
    payment["customer_email"] = request.customer_email.clone().into();
    Ok(Effects {
        payment_id,
        answer: serde_json::to_value(&view).map_err(anyhow::Error::from)?,
        payment,
        outbox,
    })
}

/// The current state of a payment of the requesting client.
///
/// Scoped by the client that created the payment, not by merchant bindings: another client's
/// payment is `404` whatever its bindings, and a payment stays readable by the client that made
/// it after that client is unbound from its merchant.
#[utoipa::path(
    get,
    path = "/v1/payments/{id}",
    tag = "payments",
    params(("id" = Uuid, Path, description = "Payment id from the `202` answer")),
    responses(
        (status = 200, description = "The payment", body = PaymentView),
        (status = 401, description = "Missing or invalid API key (authentication enabled)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such payment for this client", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limit exceeded (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
    security((), ("api_key" = []))
)]
#[tracing::instrument(name = "get_payment", skip_all, fields(payment.id))]
pub async fn get(
    State(state): State<AppState>,
    Extension(client): Extension<ClientId>,
    // An id that is not even UTF-8 after percent-decoding names no payment either.
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = id.map(|Path(id)| id).unwrap_or_default();
    tracing::Span::current().record("payment.id", id.as_str());
    let not_found = || ApiError::PaymentNotFound(id.chars().take(64).collect());
    let payment_id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    // Payments of other clients do not exist for this one.
    let payment: Option<PaymentView> = sqlx::query_as(
        "SELECT id, status, merchant_id, customer_id, amount_minor, currency::text AS currency,
                payment_method, failure_reason, created_at, updated_at
         FROM payments WHERE id = $1 AND client_id = $2",
    )
    .bind(payment_id)
    .bind(client.as_str())
    .fetch_optional(&state.pool)
    .await?;
    match payment {
        Some(p) => Ok(axum::Json(p).into_response()),
        None => Err(not_found()),
    }
}
