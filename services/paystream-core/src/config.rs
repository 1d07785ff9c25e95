//! Typed configuration, layered: compiled-in defaults → optional TOML file → environment.
//!
//! Environment variables are `PAYSTREAM_<SECTION>__<KEY>`, e.g. `PAYSTREAM_DATABASE__URL`
//! or `PAYSTREAM_KAFKA__BOOTSTRAP_SERVERS`. The file is named by `PAYSTREAM_CONFIG_FILE`.
//! Secrets are held in [`SecretString`] so they never reach a log line.

use std::collections::BTreeMap;

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// Loads settings of type `T` for one service.
///
/// `defaults` is a TOML document with the service's defaults; every shared section has its
/// own `Default` too, so a service only lists what differs.
pub fn load<T: DeserializeOwned>(defaults: &str) -> anyhow::Result<T> {
    let mut builder = config::Config::builder()
        .add_source(config::File::from_str(defaults, config::FileFormat::Toml));
    if let Ok(path) = std::env::var("PAYSTREAM_CONFIG_FILE") {
        builder = builder.add_source(config::File::with_name(&path).required(true));
    }
    builder
        .add_source(
            config::Environment::with_prefix("PAYSTREAM")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true),
        )
        .build()
        .context("reading configuration")?
        .try_deserialize()
        .context("invalid configuration")
}

/// Postgres connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DatabaseSettings {
    /// A `postgres://` URL; may carry a password, hence secret.
    pub url: SecretString,
    pub max_connections: u32,
    /// Pin every connection to this schema (created on demand). Used to isolate tests;
    /// production leaves it empty and uses the URL's default search path.
    pub schema: Option<String>,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: SecretString::from("postgres://postgres@127.0.0.1:5432/postgres"),
            max_connections: 10,
            schema: None,
        }
    }
}

impl DatabaseSettings {
    pub fn url(&self) -> &str {
        self.url.expose_secret()
    }
}

/// Kafka client settings shared by producers, consumers and admin clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct KafkaSettings {
    pub bootstrap_servers: String,
    /// Extra librdkafka properties. Keys paystream sets itself are refused (see
    /// [`crate::kafka::client_config`]) so an override can never silently weaken a guarantee.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".into(),
            properties: BTreeMap::new(),
        }
    }
}

/// Where the Confluent-compatible Schema Registry lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SchemaRegistrySettings {
    pub url: String,
}

impl Default for SchemaRegistrySettings {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8081".into(),
        }
    }
}

/// Topic names. Configurable so tests (and multi-tenant deployments) can isolate them.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TopicSettings {
    pub payments_requested: String,
    pub payments_outcomes: String,
    /// Compacted; window state keyed by merchant|currency|window.
    pub analytics_payment_stats: String,
    pub notifications_sent: String,
}

impl Default for TopicSettings {
    fn default() -> Self {
        Self {
            payments_requested: "payments.requested.v1".into(),
            payments_outcomes: "payments.outcomes.v1".into(),
            analytics_payment_stats: "analytics.payment-stats.v1".into(),
            notifications_sent: "notifications.sent.v1".into(),
        }
    }
}

/// An HTTP listener.
#[derive(Debug, Clone, Deserialize)]
pub struct HttpSettings {
    pub host: String,
    /// 0 binds an ephemeral port (tests); the bound port is exposed by each application.
    pub port: u16,
}

impl HttpSettings {
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Sample {
        #[serde(default)]
        database: DatabaseSettings,
        http: HttpSettings,
    }

    #[test]
    fn defaults_then_environment() {
        // Env is process-global: use a key no other test touches.
        std::env::set_var("PAYSTREAM_HTTP__PORT", "9999");
        let s: Sample = load("[http]\nhost = \"127.0.0.1\"\nport = 8080\n").unwrap();
        std::env::remove_var("PAYSTREAM_HTTP__PORT");
        assert_eq!(s.http.port, 9999);
        assert_eq!(s.database.max_connections, 10);
    }

    #[test]
    fn secrets_do_not_print() {
        let db = DatabaseSettings {
            url: SecretString::from("postgres://u:hunter2@h/db"),
            ..Default::default()
        };
        assert!(!format!("{db:?}").contains("hunter2"));
    }
}

/// Deserializes a list given either as a sequence (TOML file) or as a comma-separated string
/// (an environment variable such as `PAYSTREAM_CONSUMER__RETRY_DELAYS_MS=1000,10000,60000`).
pub fn list_or_csv<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr + Deserialize<'de>,
    T::Err: std::fmt::Display,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw<T> {
        List(Vec<T>),
        One(T),
        Text(String),
    }
    match Raw::<T>::deserialize(deserializer)? {
        Raw::List(v) => Ok(v),
        Raw::One(v) => Ok(vec![v]),
        Raw::Text(s) => s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.parse()
                    .map_err(|e| serde::de::Error::custom(format!("`{p}`: {e}")))
            })
            .collect(),
    }
}

#[cfg(test)]
mod list_tests {
    use super::*;

    #[derive(Deserialize)]
    struct S {
        #[serde(deserialize_with = "list_or_csv")]
        v: Vec<u64>,
    }

    #[test]
    fn lists_come_as_sequences_numbers_or_comma_separated_text() {
        let s: S = serde_json::from_str(r#"{"v":[1,2]}"#).unwrap();
        assert_eq!(s.v, vec![1, 2]);
        let s: S = serde_json::from_str(r#"{"v":"10, 20,30"}"#).unwrap();
        assert_eq!(s.v, vec![10, 20, 30]);
        let s: S = serde_json::from_str(r#"{"v":7}"#).unwrap();
        assert_eq!(s.v, vec![7]);
        let s: S = serde_json::from_str(r#"{"v":""}"#).unwrap();
        assert!(s.v.is_empty());
        assert!(serde_json::from_str::<S>(r#"{"v":"1,x"}"#).is_err());
    }
}
