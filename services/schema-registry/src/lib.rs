//! A Confluent-compatible Schema Registry (Avro only, no compatibility checks yet) stored in
//! Postgres: the embedded default where no Confluent Schema Registry runs. It speaks enough
//! of Confluent's REST API for `schema_registry_converter` and Python `confluent-kafka`.
//!
//! Layout:
//!
//! - [`Settings`] and [`Application`] (in `startup`): configuration, wiring, the HTTP server
//!   and its graceful shutdown.
//! - `routes`: the REST API grouped by resource (`subjects`, `schemas`, `config`, `health`)
//!   and the extractors that turn bad input into Confluent-style errors.
//! - `error`: `ApiError`, mapped to Confluent's `error_code`s and HTTP statuses.
//! - `schema`: the domain — schema types, schema identity (normalized form and fingerprint),
//!   version selectors, subject names. Pure, unit tested.
//! - `store`: Postgres persistence; global ids and per-subject versions, safe with several
//!   replicas sharing the database.

mod error;
mod routes;
mod schema;
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
}
