//! The paystream gateway: takes payments over REST and hands them to Kafka durably.
//!
//! A payment is validated, recorded (payment row + idempotency record + outbox row, in one
//! Postgres transaction) and answered `202 Accepted`; the [`outbox`] relay then produces its
//! `PaymentRequested` event to Kafka. Everything with side effects happens downstream.
//!
//! Modules (each imports only modules listed after it, except [`startup`], which wires them all;
//! no two modules import each other):
//! - [`startup`]: [`Application::build`] / [`Application::run_until_stopped`]: the router and
//!   its layers, the background tasks, graceful shutdown.
//! - [`routes`]: HTTP handlers grouped by resource (payments, analytics, merchants, health,
//!   metrics), the request-body helpers and the OpenAPI document generated from their
//!   annotations; its module documentation lists every route.
//! - [`state`]: the handlers' shared [`state::AppState`]; [`settings`]: [`Settings`].
//! - [`idempotency`]: Idempotency-Key parsing and the protocol of a keyed request
//!   ([`idempotency::execute`] → [`idempotency::Answer`], one database round trip for a new
//!   payment): the per-key lock, stored responses, replay, and the purge of expired keys.
//! - [`domain`]: the request body and its validation; [`currencies`]: ISO 4217.
//! - [`bindings`]: which merchants an authenticated client may act for (`client_merchants`).
//! - [`rate_limit`]: token buckets per address (before authentication) and per client; [`auth`]: bearer tokens: optional API-key
//!   authentication with the client id of a request, and the admin token.
//! - [`outbox`]: the relay that publishes committed outbox rows to Kafka, parking rows that can
//!   never be published, and the wake-ups that spare it waiting for its next poll (in process,
//!   and across replicas through Postgres `LISTEN`/`NOTIFY`).
//! - [`problem`]: [`problem::ApiError`], every error of every route as
//!   `application/problem+json`.
//! - [`metrics`]: Prometheus metrics (the `/metrics` route is in [`routes`]).

pub mod auth;
pub mod bindings;
pub mod currencies;
pub mod domain;
pub mod idempotency;
pub mod metrics;
pub mod outbox;
pub mod problem;
pub mod rate_limit;
pub mod routes;
pub mod settings;
pub mod startup;
pub mod state;

pub use rate_limit::RateLimitSettings;
pub use settings::{GatewaySettings, Settings};
pub use startup::Application;
