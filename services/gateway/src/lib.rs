//! The paystream gateway: takes payments over REST and hands them to Kafka durably.
//!
//! A payment is validated, recorded (payment row + idempotency record + outbox row, in one
//! Postgres transaction) and answered `202 Accepted`; the [`outbox`] relay then produces its
//! `PaymentRequested` event to Kafka. Everything with side effects happens downstream.
//!
//! Modules:
//! - [`startup`]: settings, [`Application::build`] / [`Application::run_until_stopped`].
//! - [`routes`]: HTTP handlers grouped by resource (payments, health).
//! - [`domain`]: the request body and its validation; [`currencies`]: ISO 4217.
//! - [`idempotency`]: Idempotency-Key parsing, stored responses and replay.
//! - [`outbox`]: the relay that publishes committed outbox rows to Kafka.
//! - [`problem`]: errors as `application/problem+json`.

pub mod currencies;
pub mod domain;
pub mod idempotency;
pub mod outbox;
pub mod problem;
pub mod routes;
pub mod startup;

pub use startup::{Application, GatewaySettings, Settings};
