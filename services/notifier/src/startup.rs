//! Settings and wiring of the notifier.

use std::time::Duration;

use anyhow::Context;
use paystream_core::avro::AvroCodec;
use paystream_core::events::NOTIFICATION_SENT_SCHEMA;
use paystream_core::kafka::{self, TopicSpec};
use paystream_core::retention::Rule;
use paystream_core::service::{ConsumerService, ServiceHandler, ServiceSettings};
use serde::Deserialize;
use sqlx::PgPool;

use crate::email::Mailer;
use crate::guard::TargetPolicy;
use crate::handler::NotifierHandler;
use crate::limits::HostLimits;
use crate::webhook::WebhookClient;

/// The notifier's settings: the shared sections plus `[notifier]`.
pub type Settings = ServiceSettings<NotifierSection>;

/// A notifier instance: [`Application::build`], then [`Application::run_until_stopped`],
/// which processes until shutdown or a fatal error (returned: the process exits non-zero).
pub type Application = ConsumerService<NotifierHandler>;

/// The notifier's own settings sections.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NotifierSection {
    #[serde(default)]
    pub notifier: NotifierSettings,
    /// `[secrets]`: the key opening merchants' sealed webhook secrets (required).
    #[serde(default)]
    pub secrets: paystream_core::secrets::SecretsSettings,
}

const DEFAULTS: &str = r#"
[http]
host = "127.0.0.1"
port = 8084

[consumer]
group_id = "notifier"
# Side effects (webhooks, e-mails): a new group starts from the end of the outcomes topic, so
# enabling the notifier does not notify every retained outcome. Backfill on purpose with
# PAYSTREAM_CONSUMER__START_FROM=earliest on the new group's first start.
start_from = "latest"
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
    /// Partitions of `notifications.sent.v1` when the service creates it; -1:
    /// `kafka.provisioning.partitions`.
    pub receipts_topic_partitions: i32,
    /// How long a delivery claim is its sender's alone: another instance finding it under a
    /// live lease does not resend. Unset: the longer send timeout + 1 s. Longer than either
    /// send timeout (checked at start-up), so a send in flight keeps its claim; a claim whose
    /// sender died is resent once it lapses.
    pub claim_lease_ms: Option<u64>,
    /// Sends in flight at once toward one host (a merchant's webhook host, the SMTP relay),
    /// however many records the loop handles concurrently.
    pub max_concurrent_per_host: usize,
}

impl NotifierSettings {
    /// The delivery claims' lease; refuses one that could lapse while its send still runs.
    pub fn claim_lease(&self) -> anyhow::Result<Duration> {
        let longest = self.webhook_timeout_ms.max(self.smtp_timeout_ms);
        let Some(ms) = self.claim_lease_ms else {
            return Ok(Duration::from_millis(longest + 1_000));
        };
        anyhow::ensure!(
            ms > longest,
            "notifier.claim_lease_ms ({ms}) must be longer than notifier.webhook_timeout_ms ({}) \
             and notifier.smtp_timeout_ms ({})",
            self.webhook_timeout_ms,
            self.smtp_timeout_ms
        );
        Ok(Duration::from_millis(ms))
    }
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
            receipts_topic_partitions: -1,
            claim_lease_ms: None,
            max_concurrent_per_host: 8,
        }
    }
}

impl ServiceHandler for NotifierHandler {
    type Own = NotifierSection;
    const NAME: &'static str = "notifier";
    const DEFAULTS: &'static str = DEFAULTS;

    fn input_topics(settings: &Settings) -> Vec<String> {
        vec![settings.topics.payments_outcomes.clone()]
    }

    async fn build(settings: &Settings, pool: &PgPool, codec: &AvroCodec) -> anyhow::Result<Self> {
        let n = &settings.notifier;
        let lease = n.claim_lease()?;
        let secrets = paystream_core::secrets::SecretBox::from_settings(&settings.secrets)?;
        kafka::ensure_topics(
            &settings.kafka,
            &[TopicSpec::new(
                &settings.topics.notifications_sent,
                n.receipts_topic_partitions,
            )],
        )
        .await
        .context("creating the notifications topic")?;
        codec
            .register(
                &settings.topics.notifications_sent,
                &NOTIFICATION_SENT_SCHEMA,
            )
            .await
            .context("registering the NotificationSent schema")?;
        Ok(NotifierHandler {
            pool: pool.clone(),
            secrets,
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
            retry: settings.consumer.retry_policy(),
            lease,
            hosts: HostLimits::new(n.max_concurrent_per_host),
            smtp_host: n.smtp_host.clone(),
        })
    }

    fn retention_rules(settings: &Settings) -> Vec<Rule> {
        vec![crate::deliveries::retention_rule(&settings.retention)]
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
        assert_eq!(s.notifier.claim_lease().unwrap(), Duration::from_secs(11));
    }

    #[test]
    fn a_lease_shorter_than_a_send_is_refused_naming_the_settings() {
        let short = NotifierSettings {
            claim_lease_ms: Some(8_000),
            ..NotifierSettings::default()
        };
        let message = short.claim_lease().unwrap_err().to_string();
        for name in ["notifier.claim_lease_ms", "notifier.smtp_timeout_ms"] {
            assert!(message.contains(name), "{name} missing from: {message}");
        }
    }
}
