//! `/health`: liveness (the process answers) and readiness (the database answers).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::state::AppState;

/// `GET /health/live`.
pub async fn live() -> Response {
    Json(json!({ "status": "live" })).into_response()
}

/// `GET /health/ready`: 503 while Postgres is unreachable, so no traffic is routed here.
pub async fn ready(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(json!({ "status": "ready" })).into_response(),
        Err(e) => {
            tracing::warn!(error = %paystream_core::telemetry::error_chain(&e), "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "unavailable", "reason": "database unreachable" })),
            )
                .into_response()
        }
    }
}
