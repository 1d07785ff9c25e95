//! HTTP handlers, grouped by resource, and the OpenAPI document generated from them.
//!
//! Every route (wired into the router by `startup`):
//! - client API (API key when authentication is on, rate-limited, time-limited; with
//!   authentication on, only for merchants the client is bound to):
//!   [`payments`]: `POST /v1/payments`, `GET /v1/payments/{id}`;
//!   [`analytics`]: `GET /v1/analytics/merchants/{id}/stats`.
//! - admin API (admin bearer token, time-limited): [`merchants`]: `PUT /v1/merchants/{id}`,
//!   `GET /v1/merchants/{id}`, `POST /v1/merchants/{id}/rotate-secret`; [`clients`]:
//!   `PUT`/`DELETE /v1/clients/{client_id}/merchants/{merchant_id}`,
//!   `GET /v1/clients/{client_id}/merchants`.
//! - operations (no authentication, rate limit or time limit): [`health`]: `GET /health/live`,
//!   `GET /health/ready`; [`metrics`]: `GET /metrics`; this module: `GET /openapi.json`.
//! - any other path: `404` ([`not_found`]); a known path with another method: `405`
//!   ([`method_not_allowed`]).
//!
//! [`request`] holds the body helpers the handlers share. Every handler answers errors with
//! [`ApiError`] (problem+json).

pub mod analytics;
pub mod clients;
pub mod health;
pub mod merchants;
pub mod metrics;
pub mod payments;
pub mod request;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::Modify;

use crate::problem::ApiError;
use crate::state::AppState;

pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::RouteNotFound(uri.path().chars().take(256).collect())
}

pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::MethodNotAllowed(method.to_string(), uri.path().chars().take(256).collect())
}

/// The document's static parts; paths and schemas are added by the router as routes register.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "paystream gateway",
        description = "Payments over REST, executed asynchronously on Kafka.\n\n\
            **Idempotency.** `POST /v1/payments` requires an `Idempotency-Key` (IETF httpapi \
            Idempotency-Key draft, Stripe semantics). Keys are scoped per client. The same key \
            with the same request (compared by a fingerprint of the canonical body: field order \
            and whitespace do not matter) replays the first response, errors included, with \
            `Idempotent-Replayed: true`; with a different request it is `422`; while the first \
            request is still executing it is `409` and nothing is stored for the second. \
            Requests refused before executing (invalid key or body, `401`, `403`, `429`) \
            store nothing.\n\n\
            **Merchants.** With authentication enabled a client creates payments and reads \
            statistics only for the merchants an administrator bound it to \
            (`PUT /v1/clients/{client_id}/merchants/{merchant_id}`); any other merchant is `403` \
            `merchant-forbidden`, whether or not it exists. Without authentication every \
            merchant is open (development only).\n\n\
            **Errors** are `application/problem+json` (RFC 9457) with a stable `type` under \
            `https://paystream.dev/problems/`."
    ),
    tags(
        (name = "payments", description = "Accept payments and read their state"),
        (name = "merchants", description = "Merchant settings: webhook URL, notification e-mail, signing secret (admin token)"),
        (name = "clients", description = "Which merchants each API client may act for (admin token)"),
        (name = "analytics", description = "Per-merchant payment statistics by minute or day"),
        (name = "operations", description = "Health, metrics and this document"),
    ),
    modifiers(&ApiKeyScheme)
)]
pub struct ApiDoc;

struct ApiKeyScheme;

impl Modify for ApiKeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`Authorization: Bearer <API key>` on `/v1` routes when the gateway \
                         runs with authentication enabled; optional otherwise.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`Authorization: Bearer <admin token>` (`PAYSTREAM_ADMIN_TOKEN`) on the \
                         merchant and client-binding administration routes.",
                    ))
                    .build(),
            ),
        );
    }
}

/// This OpenAPI document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1 document", body = Object)))]
pub async fn openapi(State(state): State<AppState>) -> impl IntoResponse {
    // Rendered once at start-up; Bytes clones share the buffer.
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.openapi.clone(),
    )
}
