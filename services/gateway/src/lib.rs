//! The paystream gateway: takes payments over REST and hands them to Kafka durably.
//!
//! A payment is validated, recorded (payment row + idempotency record + outbox row, in one
//! Postgres transaction) and answered `202 Accepted`; the [`outbox`] relay then produces its
//! `PaymentRequested` event to Kafka. Everything with side effects happens downstream.
//!
//! Modules:
//! - [`startup`]: settings, [`Application::build`] / [`Application::run_until_stopped`].
//! - [`routes`]: HTTP handlers grouped by resource (payments, health) and the OpenAPI
//!   document generated from their annotations.
//! - [`domain`]: the request body and its validation; [`currencies`]: ISO 4217.
//! - [`idempotency`]: Idempotency-Key parsing, the per-key lock, stored responses, replay and
//!   the purge of expired keys.
//! - [`auth`]: optional API-key authentication and the client id of a request;
//!   [`rate_limit`]: per-client token buckets.
//! - [`outbox`]: the relay that publishes committed outbox rows to Kafka, parking rows that can
//!   never be published.
//! - [`metrics`]: Prometheus metrics and the `/metrics` route.
//! - [`problem`]: errors as `application/problem+json`.

pub mod auth;
pub mod currencies;
pub mod domain;
pub mod idempotency;
pub mod metrics;
pub mod outbox;
pub mod problem;
pub mod rate_limit;
pub mod routes;
pub mod startup;

pub use rate_limit::RateLimitSettings;
pub use startup::{Application, GatewaySettings, Settings};
