//! A Confluent-compatible Schema Registry (Avro) stored in Postgres: the embedded default
//! where no Confluent Schema Registry runs. It speaks Confluent's REST API for subjects,
//! schemas, compatibility and config as `schema_registry_converter`, Python `confluent-kafka`
//! and operators use it, and enforces Confluent's compatibility levels on registration.
//! docs/schema-registry.md lists the endpoints against Confluent's.
//!
//! Layout:
//!
//! - [`Settings`] and [`Application`] (in `startup`): configuration, wiring, the HTTP server
//!   and its graceful shutdown.
//! - `routes`: the REST API grouped by resource (`subjects`, `schemas`, `compatibility`,
//!   `config`, `health`) and the extractors that turn bad input into Confluent-style errors.
//! - `error`: `ApiError`, mapped to Confluent's `error_code`s and HTTP statuses.
//! - `schema`: the domain — schema types, schema identity (Parsing Canonical Form plus what
//!   resolution reads, and its fingerprint), version selectors, subject names. Pure, unit
//!   tested.
//! - `compatibility`: the levels and the Avro reader/writer check. Pure, unit tested.
//! - `store`: Postgres persistence; global ids, per-subject versions and levels, safe with
//!   several replicas sharing the database.

pub mod compatibility;
mod error;
mod routes;
pub mod schema;
mod startup;
mod store;

use paystream_core::config::{DatabaseSettings, HttpSettings};
use serde::Deserialize;

pub use startup::Application;

/// Compiled-in defaults: listen where Confluent's registry does, on loopback.
pub const DEFAULTS_TOML: &str = r#"
[http]
host = "127.0.0.1"
port = 8081
"#;

/// Service settings; environment overrides are `PAYSTREAM_HTTP__PORT`,
/// `PAYSTREAM_DATABASE__URL`, `PAYSTREAM_DATABASE__SCHEMA`, ...
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub http: HttpSettings,
    #[serde(default)]
    pub database: DatabaseSettings,
}

impl Settings {
    /// Defaults, then `PAYSTREAM_CONFIG_FILE`, then the environment.
    pub fn load() -> anyhow::Result<Self> {
        paystream_core::config::load(DEFAULTS_TOML)
    }

    /// [`Self::load`] with the keys no setting reads (`--check-config`).
    pub fn load_checked() -> anyhow::Result<paystream_core::config::Loaded<Self>> {
        paystream_core::config::load_checked(DEFAULTS_TOML)
    }
}
