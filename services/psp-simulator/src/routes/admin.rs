//! `/admin/config`: read and change the behaviour knobs at runtime.

use axum::body::Bytes;
use axum::extract::State;
use axum::Json;

use crate::configuration::{ConfigPatch, SimulatorSettings};
use crate::error::ApiError;
use crate::state::SharedState;

pub(super) async fn get_config(State(state): State<SharedState>) -> Json<SimulatorSettings> {
    Json(state.knobs())
}

/// Applies a partial update; answers the knobs now in force.
pub(super) async fn put_config(
    State(state): State<SharedState>,
    body: Bytes,
) -> Result<Json<SimulatorSettings>, ApiError> {
    let patch: ConfigPatch =
        serde_json::from_slice(&body).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    let knobs = state.update_knobs(&patch)?;
    tracing::info!(?knobs, "configuration changed");
    Ok(Json(knobs))
}
