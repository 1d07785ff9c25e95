//! Settings and wiring of the analytics service.

use anyhow::Context;
use paystream_core::avro::AvroCodec;
use paystream_core::events::PAYMENT_STATS_SCHEMA;
use paystream_core::kafka::{self, TopicSpec};
use paystream_core::retention::{RetentionSettings, Rule};
use paystream_core::service::{ConsumerService, ServiceHandler, ServiceSettings};
use serde::Deserialize;
use sqlx::PgPool;

use crate::handler::AnalyticsHandler;

/// The analytics service's settings: the shared sections plus `[analytics]`.
pub type Settings = ServiceSettings<AnalyticsSection>;

/// An analytics instance: [`Application::build`], then [`Application::run_until_stopped`],
/// which processes until shutdown or a fatal error (returned: the process exits non-zero).
pub type Application = ConsumerService<AnalyticsHandler>;

/// The analytics service's own settings sections.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AnalyticsSection {
    #[serde(default)]
    pub analytics: AnalyticsSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AnalyticsSettings {
    /// A window that closed longer ago than this is "late" when an event updates it: logged,
    /// and still applied.
    pub allowed_lateness_ms: i64,
    /// Partitions of `analytics.payment-stats.v1` when the service creates it; -1:
    /// `kafka.provisioning.partitions`.
    pub stats_topic_partitions: i32,
}

impl Default for AnalyticsSettings {
    fn default() -> Self {
        Self {
            allowed_lateness_ms: 60_000,
            stats_topic_partitions: -1,
        }
    }
}

impl ServiceHandler for AnalyticsHandler {
    type Own = AnalyticsSection;
    const NAME: &'static str = "analytics";
    const DEFAULTS: &'static str = r#"
[http]
host = "127.0.0.1"
port = 8083

[consumer]
group_id = "analytics"
# A new group backfills the statistics from every retained record.
start_from = "earliest"
"#;

    fn input_topics(settings: &Settings) -> Vec<String> {
        vec![
            settings.topics.payments_requested.clone(),
            settings.topics.payments_outcomes.clone(),
        ]
    }

    async fn build(settings: &Settings, _pool: &PgPool, codec: &AvroCodec) -> anyhow::Result<Self> {
        kafka::ensure_topics(
            &settings.kafka,
            // Compacted: the latest record of a window key is the window's current state.
            &[TopicSpec::new(
                &settings.topics.analytics_payment_stats,
                settings.analytics.stats_topic_partitions,
            )
            .compacted()],
        )
        .await
        .context("creating the payment-stats topic")?;
        codec
            .register(
                &settings.topics.analytics_payment_stats,
                &PAYMENT_STATS_SCHEMA,
            )
            .await
            .context("registering the PaymentStats schema")?;
        Ok(AnalyticsHandler {
            requested_topic: settings.topics.payments_requested.clone(),
            outcomes_topic: settings.topics.payments_outcomes.clone(),
            stats_topic: settings.topics.analytics_payment_stats.clone(),
            allowed_lateness: chrono::Duration::milliseconds(
                settings.analytics.allowed_lateness_ms,
            ),
            facts_kept: RetentionSettings::keep(settings.retention.analytics_payments_days),
        })
    }

    fn retention_rules(settings: &Settings) -> Vec<Rule> {
        vec![crate::windows::retention_rule(&settings.retention)]
    }
}
