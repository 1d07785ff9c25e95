//! `POST /v1/charges` and the ledger views `GET`/`DELETE /charges`.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tracing::{Instrument as _, Span};

use crate::decision::Rolls;
use crate::error::ApiError;
use crate::ledger::Answer;
use crate::model::{ChargeFilter, ChargeRecord, ChargeRequest};
use crate::state::SharedState;

const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// Keys longer than this are refused rather than stored.
const MAX_KEY_LEN: usize = 255;

/// `POST /v1/charges`, in a SERVER span `charge` that continues the caller's W3C trace
/// context (`traceparent`): the payment processor's `psp charge` span is its parent.
pub(super) async fn create(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let span = tracing::info_span!(
        "charge",
        otel.kind = "server",
        http.request.method = "POST",
        url.path = "/v1/charges",
        idempotency_key = tracing::field::Empty,
        payment.id = tracing::field::Empty,
    );
    // Before the span is entered: its parent is fixed when it starts.
    paystream_core::telemetry::continue_http_trace(&span, &headers);
    charge(state, headers, body).instrument(span).await
}

async fn charge(state: SharedState, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    Span::current().record("idempotency_key", key);
    // Parsed by hand rather than with `Json<_>` so every malformed body is a 400 and 422
    // keeps its one meaning here: a reused key.
    let request: ChargeRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    request.validate().map_err(ApiError::InvalidRequest)?;
    Span::current().record("payment.id", request.payment_id.as_str());

    let knobs = state.knobs();
    // Slept outside the ledger lock: concurrent calls wait in parallel, then decide in turn.
    tokio::time::sleep(knobs.draw_latency()).await;
    let answer = state.ledger().handle(key, request, &knobs, Rolls::draw());

    match answer {
        Answer::Charged(charge) => {
            tracing::info!(
                charge.id = %charge.charge_id,
                status = charge.status.as_str(),
                decline_code = charge.decline_code.as_deref(),
                "charge created"
            );
            Ok(Json(charge).into_response())
        }
        Answer::Replayed(charge) => {
            tracing::info!(charge.id = %charge.charge_id, "charge replayed");
            Ok((
                StatusCode::OK,
                [(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"))],
                Json(charge),
            )
                .into_response())
        }
        Answer::KeyReused => Err(ApiError::KeyReused),
        Answer::Unavailable(cause) => Err(ApiError::Unavailable(cause)),
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(IDEMPOTENCY_KEY)
        .ok_or(ApiError::MissingIdempotencyKey)?;
    let key = value
        .to_str()
        .map_err(|_| ApiError::InvalidIdempotencyKey("must be visible ASCII"))?
        .trim();
    if key.is_empty() {
        return Err(ApiError::MissingIdempotencyKey);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(ApiError::InvalidIdempotencyKey(
            "longer than 255 characters",
        ));
    }
    Ok(key)
}

pub(super) async fn list(
    State(state): State<SharedState>,
    Query(filter): Query<ChargeFilter>,
) -> Json<Vec<ChargeRecord>> {
    Json(state.ledger().records(&filter))
}

pub(super) async fn clear(State(state): State<SharedState>) -> StatusCode {
    state.ledger().clear();
    tracing::info!("ledger cleared");
    StatusCode::NO_CONTENT
}
