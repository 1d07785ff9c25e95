//! [`Settings`] and the compiled-in defaults they start from.

use paystream_core::config::{DatabaseSettings, HttpSettings};
use serde::Deserialize;

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
