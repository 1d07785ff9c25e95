//! `GET /metrics`: the Prometheus metrics of this process, with the outbox backlog sampled
//! from Postgres at scrape time.

use axum::extract::State;
use axum::response::Response;

use crate::outbox;
use crate::state::AppState;

/// Prometheus metrics of this process.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain", body = String))
)]
pub async fn render(State(state): State<AppState>) -> Response {
    // A scrape must not fail because Postgres does: the gauges then keep their last value.
    match outbox::backlog(&state.pool).await {
        Ok(backlog) => crate::metrics::outbox_backlog(
            backlog.pending,
            backlog.oldest_age_seconds,
            backlog.parked,
        ),
        Err(e) => tracing::warn!(error = %e, "sampling the outbox backlog failed"),
    }
    crate::metrics::exposition()
}
