//! A simulated payment service provider (PSP) for the paystream dev stack and tests.
//!
//! The payment processor charges payments here through its HTTP adapter; tests count the
//! charges it made (through [`SimulatorClient`]) to prove each payment was charged exactly once.
//! State is in memory: restarting the simulator forgets every charge.
//!
//! # HTTP API
//!
//! | Method and path        | What it does                                                   |
//! |------------------------|----------------------------------------------------------------|
//! | `POST /v1/charges`     | Charge a payment. `Idempotency-Key` header required.           |
//! | `GET /charges`         | The ledger as [`ChargeRecord`]s; `?merchant_id=`, `?payment_id=` filter. |
//! | `DELETE /charges`      | Forget every charge and call (local experiments).              |
//! | `GET /admin/config`    | The current behaviour knobs ([`SimulatorSettings`]).           |
//! | `PUT /admin/config`    | Change any of the knobs at runtime ([`ConfigPatch`]).          |
//! | `GET /health/live`, `GET /health/ready` | Always `200` while the process serves.        |
//!
//! Errors are `application/problem+json` with a stable `code` member. `POST /v1/charges` runs
//! in a SERVER span `charge` that continues the caller's W3C `traceparent`, so with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` set the charge shows inside the payment's trace.
//!
//! # Charges and idempotency
//!
//! `POST /v1/charges` takes a [`ChargeRequest`] and answers `200` with a [`ChargeResponse`]
//! whose `status` is `succeeded` or `declined` (a decline is an answer, not an error).
//!
//! - Missing or empty `Idempotency-Key`, or an invalid body → `400`.
//! - The first request with a key binds the key to that body. A later request with the same
//!   key and an equal body (compared field by field after parsing, so formatting and unknown
//!   fields do not matter) gets the stored answer again — same status, same body — with
//!   `Idempotent-Replayed: true`, and charges nothing.
//! - The same key with a different body → `422`.
//! - Concurrent requests with one key are serialized on the ledger, so exactly one of them
//!   charges and the others replay.
//!
//! # Behaviour knobs
//!
//! [`SimulatorSettings`], set at start-up (`PAYSTREAM_PSP__<KNOB>`, e.g.
//! `PAYSTREAM_PSP__DECLINE_RATE=0.1`) or at runtime (`PUT /admin/config`):
//!
//! - `latency_ms` + a uniform `0..=latency_jitter_ms`: slept before every call is decided.
//! - `decline_rate` (0.0–1.0): share of new charges declined, with a random decline code
//!   (`card_declined`, `insufficient_funds`, `expired_card`, `do_not_honor`).
//! - `transient_failure_rate` (0.0–1.0): share of calls answered `503` *before* anything is
//!   charged, so a retry with the same key may succeed. It applies to every call, replays
//!   included, as a real outage would.
//!
//! # Deterministic triggers
//!
//! Independent of the rates, for tests that must not be flaky themselves:
//!
//! - `customer_id` starting with `cus_decline` → declined with `decline_code = "card_declined"`.
//! - `customer_id` starting with `cus_flaky` → the *first* call for each idempotency key is
//!   answered `503`; later calls with that key proceed normally.
//!
//! # The ledger
//!
//! `GET /charges` lists one [`ChargeRecord`] per idempotency key, in the order keys were first
//! seen. `calls` counts every `POST` with that key that got past request validation: the
//! charge, its replays, transient failures and `422` conflicts. A key whose calls all failed
//! transiently **is listed**, with status `failed_transient`, no `charge_id` and no
//! `decline_code`, so tests can see the retries; [`ChargeRecord::has_charge`] tells the two
//! apart. `created_at` is the charge's creation time, or the first call's for a key without
//! a charge.
//!
//! # Layout
//!
//! - [`configuration`]: [`Settings`], the knobs, runtime patches, compiled-in defaults.
//! - [`model`]: the wire types shared by the server and [`SimulatorClient`].
//! - [`decision`]: the pure rules — triggers, rates, replay, conflict — unit tested.
//! - [`ledger`]: the in-memory record of keys, calls and charges that applies decisions.
//! - `state`: what every handler shares — the ledger behind its lock and the knobs.
//! - `routes` and `error`: the router, the axum handlers and their problem+json errors.
//! - [`startup`]: [`Application`] — bind, serve, graceful shutdown.
//! - [`client`]: [`SimulatorClient`], a typed client for other crates' tests.

pub mod client;
pub mod configuration;
pub mod decision;
mod error;
pub mod ledger;
pub mod model;
mod routes;
pub mod startup;
mod state;

pub use client::SimulatorClient;
pub use configuration::{ConfigPatch, Settings, SimulatorSettings, DEFAULTS_TOML};
pub use model::{
    ChargeFilter, ChargeRecord, ChargeRequest, ChargeResponse, ChargeStatus, RecordStatus,
};
pub use startup::Application;
