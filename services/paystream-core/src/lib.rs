//! Shared runtime for the paystream services.
//!
//! Every service binary is thin: it loads its settings, builds its application from the
//! pieces here and runs until a shutdown signal. Layout:
//!
//! - [`config`]: layered settings (defaults → file → `PAYSTREAM_*` env), shared sections.
//! - [`telemetry`]: `tracing` subscriber (JSON or human logs) and the OTLP trace exporter.
//! - [`shutdown`]: the shutdown token every run loop selects on, and the OS signal hook.
//! - [`db`]: the Postgres pool (optionally pinned to one schema) and the sqlx migrator.
//! - [`currency`]: the ISO 4217 table (codes, minor-unit exponents) and amounts for people.
//! - [`events`]: the event contracts (Rust mirrors of `schemas/*.avsc`) and deterministic ids.
//! - [`avro`]: Confluent wire-format Avro encoding/decoding against a Schema Registry.
//! - [`kafka`]: librdkafka client construction, topic admin and error classification.
//! - [`headers`]: record header names and W3C trace-context propagation through Kafka.
//! - [`metrics`]: the process-wide Prometheus recorder and the shared HTTP metric names.
//! - [`record`]: the consumed [`record::Record`] and the produced [`record::Output`].
//! - [`processing`]: the transactional consume-transform-produce loop with an idempotent
//!   consumer (applied event ids recorded in Postgres alongside the effects).
//! - [`retry`]: the retry-topic chain and dead-letter routing, with their headers.
//! - [`retention`]: pruning of the tables that grow with traffic, and the start-up check that
//!   the idempotent-consumer ledger outlives every topic its events can come back from.
//! - [`dlq`]: reading and replaying dead letters (the operator tool's library).
//! - [`service`]: a consumer group's loop next to its health endpoints; instance naming.

pub mod avro;
pub mod config;
pub mod currency;
pub mod db;
pub mod dlq;
pub mod events;
pub mod headers;
pub mod kafka;
pub mod metrics;
pub mod processing;
pub mod record;
pub mod retention;
pub mod retry;
pub mod secrets;
pub mod service;
pub mod shutdown;
pub mod telemetry;
