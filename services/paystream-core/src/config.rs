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

/// Loads settings of type `T` for one service, warning about keys no setting reads (a typo in
/// a variable name would otherwise silently leave its default in place).
///
/// `defaults` is a TOML document with the service's defaults; every shared section has its
/// own `Default` too, so a service only lists what differs.
pub fn load<T: DeserializeOwned>(defaults: &str) -> anyhow::Result<T> {
    Ok(load_checked::<T>(defaults)?.warn_unknown())
}

/// Settings as loaded, with the keys of the file and the environment that no setting read.
#[derive(Debug)]
pub struct Loaded<T> {
    pub settings: T,
    /// Dotted lower-case paths (`PAYSTREAM_NOTIFIER__SMTP_HOST` is `notifier.smtp_host`).
    pub unknown: Vec<String>,
}

impl<T> Loaded<T> {
    /// The settings, after one warning naming the unknown keys, if any.
    pub fn warn_unknown(self) -> T {
        if !self.unknown.is_empty() {
            tracing::warn!(keys = ?self.unknown,
                "configuration keys that no setting of this service reads (misspelt?)");
        }
        self.settings
    }
}

/// [`load`] without the warning: the caller decides what unknown keys mean.
pub fn load_checked<T: DeserializeOwned>(defaults: &str) -> anyhow::Result<Loaded<T>> {
    let raw = read_sources(defaults)?;
    let (settings, ignored) = deserialize_tracking::<T>(&raw)?;
    let unknown = unknown_keys(&raw, &[ignored]);
    Ok(Loaded { settings, unknown })
}

/// Defaults → optional file (`PAYSTREAM_CONFIG_FILE`) → `PAYSTREAM_*` environment, merged.
pub fn read_sources(defaults: &str) -> anyhow::Result<config::Config> {
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
        .context("reading configuration")
}

/// Deserializes `T` from the merged sources, returning the paths it ignored.
pub fn deserialize_tracking<T: DeserializeOwned>(
    raw: &config::Config,
) -> anyhow::Result<(T, Vec<String>)> {
    let mut ignored = Vec::new();
    let value = serde_ignored::deserialize(raw.clone(), |path| {
        // `?` segments mark `Option`/newtype layers, not keys.
        let key: Vec<String> = path
            .to_string()
            .split('.')
            .filter(|part| !part.is_empty() && *part != "?")
            .map(str::to_string)
            .collect();
        ignored.push(key.join("."));
    })
    .context("invalid configuration")?;
    Ok((value, ignored))
}

/// The leaf keys of `raw` that every one of `ignored_by` ignored (a key or one of its parent
/// sections in each list). Several lists serve settings read in parts, e.g. shared sections
/// plus a service's own: a key is unknown only when no part reads it.
pub fn unknown_keys(raw: &config::Config, ignored_by: &[Vec<String>]) -> Vec<String> {
    fn leaves(prefix: &str, value: &config::Value, out: &mut Vec<String>) {
        match &value.kind {
            config::ValueKind::Table(table) if !table.is_empty() => {
                for (key, child) in table {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    leaves(&path, child, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }
    let covered = |path: &str, ignored: &[String]| {
        ignored.iter().any(|i| {
            path == i || (path.starts_with(i.as_str()) && path[i.len()..].starts_with('.'))
        })
    };
    let mut all = Vec::new();
    if let Ok(table) = raw
        .clone()
        .try_deserialize::<config::Map<String, config::Value>>()
    {
        for (key, value) in &table {
            leaves(key, value, &mut all);
        }
    }
    let mut unknown: Vec<String> = all
        .into_iter()
        // A name without a section (`PAYSTREAM_STATE_DIR`, `PAYSTREAM_CONFIG_FILE`,
        // `PAYSTREAM_LOG_FORMAT`) is the scripts' or read before the settings: not checked.
        .filter(|path| path.contains('.'))
        .filter(|path| ignored_by.iter().all(|ignored| covered(path, ignored)))
        .collect();
    unknown.sort();
    unknown
}

/// `--check-config` on a service's command line: load the configuration exactly as at
/// start-up, print one JSON line (`ok`, `unknown` keys, `error`) and exit, 0 only when it
/// loaded and every key is read by some setting. Lets a deployment (compose file, Helm
/// rendering) be checked against the binary that will read it.
pub fn check_requested() -> bool {
    std::env::args().skip(1).any(|arg| arg == "--check-config")
}

/// Prints the `--check-config` verdict and returns the process's exit code.
pub fn report_check<T>(loaded: anyhow::Result<Loaded<T>>) -> i32 {
    let (ok, unknown, error) = match loaded {
        Ok(loaded) => (loaded.unknown.is_empty(), loaded.unknown, None),
        Err(e) => (false, Vec::new(), Some(format!("{e:#}"))),
    };
    println!(
        "{}",
        serde_json::json!({ "ok": ok, "unknown": unknown, "error": error })
    );
    i32::from(!ok)
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
    /// Security (`security.protocol`, `sasl.*`, `ssl.*`) goes here.
    pub properties: BTreeMap<String, String>,
    /// How the topics a service owns (retry, dead-letter, stats, receipts) are created.
    pub provisioning: TopicProvisioning,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".into(),
            properties: BTreeMap::new(),
            provisioning: TopicProvisioning::default(),
        }
    }
}

/// Creation of paystream's topics. In production one owner creates them all
/// (`paystream topics create`, the chart's topics job) and the services run with
/// `create_topics = false`, checking at start-up that what they need exists.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TopicProvisioning {
    /// Create missing topics at start-up; `false`: only check they exist, and stop if not.
    pub create_topics: bool,
    /// Partitions of a created topic whose own setting is unset; -1: the broker's
    /// `num.partitions`.
    pub partitions: i32,
    /// -1: the broker's `default.replication.factor`.
    pub replication_factor: i32,
    /// Topic configs for every created topic, e.g. `"min.insync.replicas" = "2"`.
    pub configs: BTreeMap<String, String>,
}

impl Default for TopicProvisioning {
    fn default() -> Self {
        Self {
            create_topics: true,
            partitions: -1,
            replication_factor: -1,
            configs: BTreeMap::new(),
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
        #[serde(default)]
        #[allow(dead_code)]
        kafka: KafkaSettings,
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

    /// Keys of `toml` no part of `parts` reads, through the same steps as [`load_checked`].
    fn unknown_in(
        toml: &str,
        ignored_by: impl Fn(&config::Config) -> Vec<Vec<String>>,
    ) -> Vec<String> {
        let raw = config::Config::builder()
            .add_source(config::File::from_str(toml, config::FileFormat::Toml))
            .build()
            .unwrap();
        unknown_keys(&raw, &ignored_by(&raw))
    }

    #[test]
    fn keys_no_setting_reads_are_named() {
        let toml = "config_file = \"x\"\n[http]\nhost = \"h\"\nport = 1\nprot = 2\n\
                    [database]\nurl = \"postgres://x\"\n[kafka.properties]\n\"security.protocol\" = \"SSL\"\n\
                    [notifier]\nsmtp_host = \"mail\"\n";
        let unknown = unknown_in(toml, |raw| {
            vec![deserialize_tracking::<Sample>(raw).unwrap().1]
        });
        // Free-form maps (librdkafka properties) are read whole; a misspelt key and another
        // service's section are not; PAYSTREAM_CONFIG_FILE is not a setting.
        assert_eq!(unknown, vec!["http.prot", "notifier.smtp_host"]);
    }

    #[test]
    fn a_key_is_unknown_only_when_no_part_reads_it() {
        #[derive(Deserialize)]
        struct Notifier {
            #[serde(default)]
            #[allow(dead_code)]
            notifier: BTreeMap<String, String>,
        }
        let toml =
            "[http]\nhost = \"h\"\nport = 1\n[notifier]\nsmtp_host = \"mail\"\n[nobody]\nx = 1\n";
        let unknown = unknown_in(toml, |raw| {
            vec![
                deserialize_tracking::<Sample>(raw).unwrap().1,
                deserialize_tracking::<Notifier>(raw).unwrap().1,
            ]
        });
        assert_eq!(unknown, vec!["nobody.x"]);
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
