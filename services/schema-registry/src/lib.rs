//! A Confluent-compatible Schema Registry (Avro) stored in Postgres: the embedded default
//! where no Confluent Schema Registry runs. It speaks Confluent's REST API for subjects,
//! schemas, compatibility and config as `schema_registry_converter`, Python `confluent-kafka`
//! and operators use it, and enforces Confluent's compatibility levels on registration.
//! docs/schema-registry.md lists the endpoints against Confluent's.
//!
//! # HTTP API
//!
//! Bodies are JSON with content type `application/vnd.schemaregistry.v1+json`; errors are
//! Confluent's `{"error_code": N, "message": "..."}`.
//!
//! | Method and path                                        | What it does                          |
//! |--------------------------------------------------------|---------------------------------------|
//! | `GET /`                                                | `{}`, as Confluent answers it.        |
//! | `GET /subjects`                                        | Subject names; `?subjectPrefix=`, `?deleted=`, `?deletedOnly=`, `?offset=`, `?limit=`. |
//! | `POST /subjects/{subject}`                             | Look a schema up under the subject.   |
//! | `DELETE /subjects/{subject}`                           | Soft-delete the subject (`?permanent=true`: remove it). |
//! | `GET /subjects/{subject}/versions`                     | The subject's version numbers.        |
//! | `POST /subjects/{subject}/versions`                    | Register a schema (compatibility checked); answers its id. |
//! | `GET /subjects/{subject}/versions/{version}`           | One version (`latest`, `-1` or a number). |
//! | `DELETE /subjects/{subject}/versions/{version}`        | Soft-delete a version (`?permanent=true`: remove it). |
//! | `GET /subjects/{subject}/versions/{version}/schema`    | That version's schema text alone.     |
//! | `GET /schemas/types`                                   | `["AVRO"]`.                           |
//! | `GET /schemas/ids/{id}`                                | The schema with a global id.          |
//! | `GET /schemas/ids/{id}/schema`                         | Its schema text alone.                |
//! | `GET /schemas/ids/{id}/versions`                       | The subject versions using it.        |
//! | `GET /schemas/ids/{id}/subjects`                       | The subjects using it.                |
//! | `POST /compatibility/subjects/{subject}/versions`      | Test a schema against the subject's level. |
//! | `POST /compatibility/subjects/{subject}/versions/{version}` | Test a schema against one version. |
//! | `GET`, `PUT`, `DELETE /config`                         | The global compatibility level.       |
//! | `GET`, `PUT`, `DELETE /config/{subject}`               | A subject's own level (`?defaultToGlobal=true` on `GET`). |
//! | `GET /health/live`                                     | `200` while the process serves.       |
//! | `GET /health/ready`                                    | `200` while Postgres answers, else `503`. |
//!
//! Any other path is a `404`, any other method on a known path a `405`, both Confluent-style.
//!
//! # Layout
//!
//! - `configuration`: [`Settings`] and the compiled-in [`DEFAULTS_TOML`].
//! - `startup`: [`Application`]: database pool and migrations, listener, the HTTP server and its
//!   graceful shutdown.
//! - `state`: `AppState`, what every handler shares (the store).
//! - `routes`: the router and the REST API grouped by resource (`subjects`, `schemas`,
//!   `compatibility`, `config`, `health`), with the extractors that turn bad input into
//!   Confluent-style errors.
//! - `response`: Confluent's content type and JSON bodies, for handlers and errors alike.
//! - `error`: `ApiError`, mapped to Confluent's `error_code`s and HTTP statuses.
//! - `schema`: the domain — schema types, schema identity (Parsing Canonical Form plus what
//!   resolution reads, and its fingerprint), version selectors, subject names. Pure, unit
//!   tested.
//! - `compatibility`: the levels and the Avro reader/writer check. Pure, unit tested.
//! - `store`: Postgres persistence; global ids, per-subject versions and levels, safe with
//!   several replicas sharing the database.

pub mod compatibility;
mod configuration;
mod error;
mod response;
mod routes;
pub mod schema;
mod startup;
mod state;
mod store;

pub use configuration::{Settings, DEFAULTS_TOML};
pub use startup::Application;
