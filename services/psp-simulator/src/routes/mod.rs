//! HTTP handlers, one module per resource. Every route [`router`] serves:
//!
//! - [`charges`]: `POST /v1/charges`; `GET /charges` (`?merchant_id=`, `?payment_id=`) and
//!   `DELETE /charges`.
//! - [`admin`]: `GET /admin/config` and `PUT /admin/config`.
//! - [`health`]: `GET /health/live` and `GET /health/ready`.

mod admin;
mod charges;
mod health;

use axum::routing::{get, post};
use axum::Router;

use crate::state::SharedState;

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
