//! Settings and wiring of the notifier.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use paystream_core::avro::AvroCodec;
use paystream_core::config::{
    DatabaseSettings, HttpSettings, KafkaSettings, SchemaRegistrySettings, TopicSettings,
};
use paystream_core::events::NOTIFICATION_SENT_SCHEMA;
use paystream_core::kafka::{self, TopicSpec};
use paystream_core::processing::{Faults, LoopSettings, LoopStats, ProcessingLoop};
use paystream_core::service::ConsumerService;
use paystream_core::shutdown::Shutdown;
use serde::Deserialize;

use crate::email::Mailer;
use crate::guard::TargetPolicy;
use crate::handler::NotifierHandler;
use crate::webhook::WebhookClient;

const DEFAULTS: &str = r#"
[http]
host = "127.0.0.1"
port = 8084

[consumer]
group_id = "notifier"
# A record may wait up to webhook_timeout_ms + smtp_timeout_ms (15 s) on slow receivers; ten
# of them fit well inside the transaction timeout, so a batch is never timed out by the broker.
batch_max_records = 10
transaction_timeout_ms = 180000
"#;

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct NotifierSettings {
    pub webhook_timeout_ms: u64,
    /// SSRF guard: webhook targets on loopback / private addresses are refused unless allowed.
    pub allow_loopback_targets: bool,
    pub allow_private_targets: bool,
    pub smtp_host: String,
    pub smtp_port: u16,
    pub smtp_timeout_ms: u64,
    /// Sender of the customer e-mails (`Name <address>` or a bare address).
    pub email_from: String,
    /// Partitions of `notifications.sent.v1` when the service creates it.
    pub receipts_topic_partitions: i32,
}

impl Default for NotifierSettings {
    fn default() -> Self {
        Self {
            webhook_timeout_ms: 5_000,
            allow_loopback_targets: false,
            allow_private_targets: false,
            smtp_host: "127.0.0.1".into(),
            smtp_port: 2525,
            smtp_timeout_ms: 10_000,
            email_from: "Paystream <notifications@paystream.invalid>".into(),
            receipts_topic_partitions: 3,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// Health endpoints.
    pub http: HttpSettings,
    #[serde(default)]
    pub consumer: LoopSettings,
    #[serde(default)]
    pub notifier: NotifierSettings,
    #[serde(default)]
    pub database: DatabaseSettings,
    #[serde(default)]
    pub kafka: KafkaSettings,
    #[serde(default)]
    pub schema_registry: SchemaRegistrySettings,
    #[serde(default)]
    pub topics: TopicSettings,
}

impl Settings {
    pub fn load() -> anyhow::Result<Self> {
        let mut settings: Settings = paystream_core::config::load(DEFAULTS)?;
        paystream_core::service::default_transactional_id(&mut settings.consumer);
        Ok(settings)
    }
}

pub struct Application {
    service: ConsumerService<NotifierHandler>,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = paystream_core::db::connect(&settings.database).await?;
        let n = &settings.notifier;
        kafka::ensure_topics(
            &settings.kafka,
            &[TopicSpec::new(
                &settings.topics.notifications_sent,
                n.receipts_topic_partitions,
            )],
        )
        .await
        .context("creating the notifications topic")?;
        let codec = Arc::new(AvroCodec::new(&settings.schema_registry.url));
        codec
            .register(
                &settings.topics.notifications_sent,
                &NOTIFICATION_SENT_SCHEMA,
            )
            .await
            .context("registering the NotificationSent schema")?;
        let handler = NotifierHandler {
            pool: pool.clone(),
            webhooks: WebhookClient::new(
                TargetPolicy {
                    allow_loopback: n.allow_loopback_targets,
                    allow_private: n.allow_private_targets,
                },
                Duration::from_millis(n.webhook_timeout_ms),
            )?,
            mailer: Mailer::new(
                &n.smtp_host,
                n.smtp_port,
                Duration::from_millis(n.smtp_timeout_ms),
                &n.email_from,
            )?,
            receipts_topic: settings.topics.notifications_sent.clone(),
        };
        let processing = ProcessingLoop::new(
            &settings.kafka,
            settings.consumer.clone(),
            vec![settings.topics.payments_outcomes.clone()],
            pool,
            codec,
            handler,
        )?;
        let service = ConsumerService::bind("notifier", &settings.http, processing).await?;
        Ok(Self { service })
    }

    /// Port of the health endpoints.
    pub fn port(&self) -> u16 {
        self.service.port()
    }

    pub fn stats(&self) -> Arc<LoopStats> {
        self.service.stats()
    }

    /// The loop's chaos hooks (abort injection), for tests and game days.
    pub fn faults(&self) -> Arc<Faults> {
        self.service.faults()
    }

    /// Processes until `shutdown` or a fatal error (returned: the process exits non-zero).
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<()> {
        self.service.run_until_stopped(shutdown).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_bound_a_slow_batch_by_the_transaction_timeout() {
        let s: Settings = paystream_core::config::load(DEFAULTS).unwrap();
        assert_eq!(s.consumer.group_id, "notifier");
        assert_eq!(s.http.port, 8084);
        let worst_record_ms = s.notifier.webhook_timeout_ms + s.notifier.smtp_timeout_ms;
        assert!(
            s.consumer.batch_max_records as u64 * worst_record_ms
                < s.consumer.transaction_timeout_ms
        );
        assert!(!s.notifier.allow_loopback_targets && !s.notifier.allow_private_targets);
    }
}
