//! `/config`: compatibility levels. Compatibility is not enforced yet, so every subject reports
//! Confluent's default, `BACKWARD`; clients read it before registering.

use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;

use super::registry_json;

const DEFAULT_COMPATIBILITY: &str = "BACKWARD";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConfigBody {
    compatibility_level: &'static str,
}

/// `GET /config`.
pub async fn global() -> Response {
    registry_json(
        StatusCode::OK,
        &ConfigBody {
            compatibility_level: DEFAULT_COMPATIBILITY,
        },
    )
}

/// `GET /config/{subject}`: no subject has its own level, so every subject falls back to the
/// global one (what Confluent answers with `defaultToGlobal=true`).
pub async fn subject() -> Response {
    global().await
}
