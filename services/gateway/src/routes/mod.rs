//! HTTP handlers, grouped by resource.

pub mod analytics;
pub mod health;
pub mod merchants;
pub mod payments;

use crate::problem::ApiError;

pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::RouteNotFound(uri.path().to_string())
}
