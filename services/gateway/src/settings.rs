//! The gateway's settings: defaults, `PAYSTREAM_*` environment variables and their checks.

use paystream_core::config::{
    DatabaseSettings, HttpSettings, KafkaSettings, SchemaRegistrySettings, TopicSettings,
};
use serde::Deserialize;

use crate::auth::AuthSettings;
use crate::rate_limit::RateLimitSettings;

const DEFAULTS: &str = r#"
[http]
host = "127.0.0.1"
port = 8080
"#;

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub http: HttpSettings,
    #[serde(default)]
    pub gateway: GatewaySettings,
    #[serde(default)]
    pub database: DatabaseSettings,
    #[serde(default)]
    pub kafka: KafkaSettings,
    #[serde(default)]
    pub schema_registry: SchemaRegistrySettings,
    #[serde(default)]
    pub topics: TopicSettings,
    /// Bearer token of the admin endpoints (`PAYSTREAM_ADMIN_TOKEN`); unset: they refuse all.
    #[serde(default)]
    pub admin_token: Option<secrecy::SecretString>,
    /// `[secrets]`: the key sealing merchants' webhook secrets at rest (required).
    #[serde(default)]
    pub secrets: paystream_core::secrets::SecretsSettings,
    /// `[retention]`: the gateway prunes published outbox rows (`retention.outbox_days`).
    #[serde(default)]
    pub retention: paystream_core::retention::RetentionSettings,
}

impl Settings {
    pub fn load() -> anyhow::Result<Self> {
        paystream_core::config::load(DEFAULTS)
    }

    /// Checks the settings start-up depends on.
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        self.gateway.check()?;
        let reserved = self.gateway.pool_connections_reserved();
        anyhow::ensure!(
            self.database.max_connections > reserved,
            "database.max_connections must exceed the {reserved} connection(s) the gateway's \
             background tasks hold (docs/performance.md, sizing the pool)"
        );
        Ok(())
    }

    /// [`Self::load`] with the keys no setting reads (`--check-config`).
    pub fn load_checked() -> anyhow::Result<paystream_core::config::Loaded<Self>> {
        paystream_core::config::load_checked(DEFAULTS)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct GatewaySettings {
    /// How long an Idempotency-Key is remembered (the published retention).
    pub idempotency_retention_hours: i64,
    /// How often expired idempotency keys are deleted.
    pub idempotency_purge_interval_secs: u64,
    pub max_amount_minor: i64,
    pub max_body_bytes: usize,
    /// A request not answered within this time gets 503 and stores nothing.
    pub request_timeout_ms: u64,
    /// Run the outbox relay in this process (replicas may leave it to others).
    pub outbox_relay_enabled: bool,
    /// The relay also polls, so rows committed by another replica (or before a crash) go out.
    pub outbox_poll_interval_ms: u64,
    pub outbox_batch_size: i64,
    /// Bound on how long the broker may take to acknowledge a produced record.
    pub produce_timeout_ms: u64,
    /// How long shutdown waits for the producer to deliver what it still holds.
    pub shutdown_flush_timeout_ms: u64,
    /// Run the migrations at start-up (the local stack migrates with `paystream migrate`).
    pub migrate_on_start: bool,
    /// After `POST /v1/merchants/{id}/rotate-secret`, how long the replaced webhook secret
    /// still signs next to the new one (`v1=<new>,v1=<previous>`); 0: replaced at once.
    pub webhook_secret_overlap_secs: i64,
    pub auth: AuthSettings,
    pub rate_limit: RateLimitSettings,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            idempotency_retention_hours: 24,
            idempotency_purge_interval_secs: 300,
            max_amount_minor: 100_000_000,
            max_body_bytes: 64 * 1024,
            request_timeout_ms: 10_000,
            outbox_relay_enabled: true,
            outbox_poll_interval_ms: 250,
            outbox_batch_size: 200,
            produce_timeout_ms: 10_000,
            shutdown_flush_timeout_ms: 5_000,
            migrate_on_start: false,
            webhook_secret_overlap_secs: 24 * 3600,
            auth: AuthSettings::default(),
            rate_limit: RateLimitSettings::default(),
        }
    }
}

impl GatewaySettings {
    /// Pool connections the background tasks may hold at once, besides the requests': the
    /// outbox announcer (`NOTIFY`, briefly) and, with the relay on, the relay's pass and its
    /// `LISTEN` connection (held for good). The purger and pruner take one now and then.
    pub fn pool_connections_reserved(&self) -> u32 {
        if self.outbox_relay_enabled {
            3
        } else {
            1
        }
    }

    pub(crate) fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=i64::from(i32::MAX)).contains(&self.idempotency_retention_hours),
            "gateway.idempotency_retention_hours must be positive"
        );
        anyhow::ensure!(
            self.max_amount_minor > 0,
            "gateway.max_amount_minor must be positive"
        );
        anyhow::ensure!(
            self.outbox_batch_size > 0,
            "gateway.outbox_batch_size must be positive"
        );
        anyhow::ensure!(
            self.request_timeout_ms > 0 && self.idempotency_purge_interval_secs > 0,
            "gateway.request_timeout_ms and idempotency_purge_interval_secs must be positive"
        );
        anyhow::ensure!(
            (0..=30 * 24 * 3600).contains(&self.webhook_secret_overlap_secs),
            "gateway.webhook_secret_overlap_secs must be between 0 and 30 days"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ApiKeys;

    #[test]
    fn the_pool_must_leave_requests_a_connection_besides_the_background_tasks() {
        let mut settings: Settings = serde_json::from_value(serde_json::json!({
            "http": {"host": "127.0.0.1", "port": 0},
        }))
        .unwrap();
        for (relay, connections, ok) in [(true, 3, false), (true, 4, true), (false, 1, false)] {
            settings.gateway.outbox_relay_enabled = relay;
            settings.database.max_connections = connections;
            assert_eq!(
                settings.check().is_ok(),
                ok,
                "relay {relay}, pool {connections}"
            );
        }
        settings.database.max_connections = 2;
        settings.check().unwrap();
    }

    #[test]
    fn gateway_settings_come_from_the_environment() {
        // Env is process-global: only this test of the crate sets PAYSTREAM_* variables.
        let hash = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8";
        let vars = [
            ("PAYSTREAM_GATEWAY__AUTH__ENABLED", "true"),
            ("PAYSTREAM_GATEWAY__AUTH__API_KEYS__ACME", hash),
            ("PAYSTREAM_GATEWAY__RATE_LIMIT__REQUESTS_PER_SECOND", "50"),
            ("PAYSTREAM_GATEWAY__RATE_LIMIT__BURST", "7"),
            (
                "PAYSTREAM_GATEWAY__RATE_LIMIT__PER_IP__REQUESTS_PER_SECOND",
                "20",
            ),
            ("PAYSTREAM_GATEWAY__REQUEST_TIMEOUT_MS", "1500"),
            (
                "PAYSTREAM_SECRETS__ENCRYPTION_KEY",
                "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
            ),
        ];
        for (k, v) in vars {
            std::env::set_var(k, v);
        }
        let settings = Settings::load();
        for (k, _) in vars {
            std::env::remove_var(k);
        }
        let settings = settings.unwrap();
        assert!(paystream_core::secrets::SecretBox::from_settings(&settings.secrets).is_ok());
        let gateway = settings.gateway;
        assert!(gateway.auth.enabled);
        assert_eq!(gateway.auth.api_keys["acme"], hash);
        assert_eq!(gateway.rate_limit.requests_per_second, 50.0);
        assert_eq!(gateway.rate_limit.burst, 7);
        assert_eq!(gateway.rate_limit.per_ip.requests_per_second, 20.0);
        assert_eq!(gateway.rate_limit.per_ip.burst, 800, "the default");
        assert_eq!(gateway.request_timeout_ms, 1500);
        assert_eq!(gateway.idempotency_retention_hours, 24);
        assert_eq!(
            gateway.webhook_secret_overlap_secs,
            24 * 3600,
            "the default"
        );
        assert!(ApiKeys::from_settings(&gateway.auth).is_ok());
        gateway.check().unwrap();
    }
}
