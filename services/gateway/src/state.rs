//! The state every HTTP handler shares.

use std::sync::Arc;

use crate::outbox::Wakeup;
use crate::settings::Settings;
use axum::body::Bytes;
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;

/// Shared state of the HTTP handlers. The authentication and rate-limit middleware carry their
/// own state (`ApiKeys`, `RateLimiter`), so neither module depends on this one.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub settings: Arc<Settings>,
    pub producer: FutureProducer,
    /// Signalled after a commit that wrote outbox rows, so the relays publish them at once.
    pub outbox_wakeup: Arc<Wakeup>,
    pub http: reqwest::Client,
    /// Seals merchants' webhook secrets before they are stored.
    pub secrets: paystream_core::secrets::SecretBox,
    /// The OpenAPI document, serialised once.
    pub openapi: Bytes,
}
