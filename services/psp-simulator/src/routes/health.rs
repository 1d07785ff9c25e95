use axum::Json;
use serde_json::{json, Value};

pub(super) async fn live() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The simulator has no dependencies: serving means ready.
pub(super) async fn ready() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}
