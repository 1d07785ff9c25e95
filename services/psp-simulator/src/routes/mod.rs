//! HTTP handlers, one module per resource.

mod admin;
mod charges;
mod health;

use axum::routing::{get, post};
use axum::Router;

use crate::startup::SharedState;

pub(crate) fn router(state: SharedState) -> Router {
    Router::new()
        .route("/v1/charges", post(charges::create))
        .route("/charges", get(charges::list).delete(charges::clear))
        .route(
            "/admin/config",
            get(admin::get_config).put(admin::put_config),
        )
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .with_state(state)
}
