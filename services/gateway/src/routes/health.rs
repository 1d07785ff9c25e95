//! Liveness and readiness: `GET /health/live`, `GET /health/ready`.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use rdkafka::producer::Producer;
use serde_json::json;

use crate::state::AppState;

/// The process is up.
#[utoipa::path(get, path = "/health/live", tag = "operations",
    responses((status = 200, description = "Live", body = Object, example = json!({"status": "live"}))))]
pub async fn live() -> impl IntoResponse {
    Json(json!({"status": "live"}))
}

/// Ready when Postgres, the broker and the schema registry all answer.
#[utoipa::path(get, path = "/health/ready", tag = "operations",
    responses(
        (status = 200, description = "Every dependency answers", body = Object),
        (status = 503, description = "A dependency does not answer; `checks` names it and its error", body = Object),
    ))]
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let postgres = sqlx::query("SELECT 1")
        .execute(&state.pool)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    let producer = state.producer.clone();
    let kafka = tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(None, Duration::from_secs(2))
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    let registry_url = format!(
        "{}/subjects",
        state.settings.schema_registry.url.trim_end_matches('/')
    );
    let registry = match state.http.get(&registry_url).send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("HTTP {}", r.status())),
        Err(e) => Err(e.to_string()),
    };
    let checks = [
        ("postgres", postgres),
        ("kafka", kafka),
        ("schema_registry", registry),
    ];
    let ready = checks.iter().all(|(_, r)| r.is_ok());
    let body: serde_json::Map<_, _> = checks
        .into_iter()
        .map(|(name, r)| {
            (
                name.to_string(),
                r.map_or_else(
                    |e| json!({"ok": false, "error": e}),
                    |_| json!({"ok": true}),
                ),
            )
        })
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"status": if ready { "ready" } else { "not ready" }, "checks": body})),
    )
}
