//! Settings and wiring of the analytics service.

use std::sync::Arc;

use anyhow::Context;
use paystream_core::avro::AvroCodec;
use paystream_core::config::{
    DatabaseSettings, HttpSettings, KafkaSettings, SchemaRegistrySettings, TopicSettings,
};
use paystream_core::events::PAYMENT_STATS_SCHEMA;
use paystream_core::kafka::{self, TopicSpec};
use paystream_core::processing::{Faults, LoopSettings, LoopStats, ProcessingLoop};
use paystream_core::service::ConsumerService;
use paystream_core::shutdown::Shutdown;
use serde::Deserialize;

use crate::handler::AnalyticsHandler;

const DEFAULTS: &str = r#"
[http]
host = "127.0.0.1"
port = 8083

[consumer]
group_id = "analytics"
"#;

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AnalyticsSettings {
    /// A window that closed longer ago than this is "late" when an event updates it: logged,
    /// and still applied.
    pub allowed_lateness_ms: i64,
    /// Partitions of `analytics.payment-stats.v1` when the service creates it.
    pub stats_topic_partitions: i32,
}

impl Default for AnalyticsSettings {
    fn default() -> Self {
        Self {
            allowed_lateness_ms: 60_000,
            stats_topic_partitions: 3,
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
    pub analytics: AnalyticsSettings,
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
    service: ConsumerService<AnalyticsHandler>,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = paystream_core::db::connect(&settings.database).await?;
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
        let codec = Arc::new(AvroCodec::new(&settings.schema_registry.url));
        codec
            .register(
                &settings.topics.analytics_payment_stats,
                &PAYMENT_STATS_SCHEMA,
            )
            .await
            .context("registering the PaymentStats schema")?;
        let handler = AnalyticsHandler {
            requested_topic: settings.topics.payments_requested.clone(),
            outcomes_topic: settings.topics.payments_outcomes.clone(),
            stats_topic: settings.topics.analytics_payment_stats.clone(),
            allowed_lateness: chrono::Duration::milliseconds(
                settings.analytics.allowed_lateness_ms,
            ),
        };
        let processing = ProcessingLoop::new(
            &settings.kafka,
            settings.consumer.clone(),
            vec![
                settings.topics.payments_requested.clone(),
                settings.topics.payments_outcomes.clone(),
            ],
            pool,
            codec,
            handler,
        )?;
        let service = ConsumerService::bind("analytics", &settings.http, processing).await?;
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
