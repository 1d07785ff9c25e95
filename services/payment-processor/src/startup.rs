//! Settings and wiring of the payment processor.

use std::sync::Arc;

use anyhow::Context;
use paystream_core::avro::AvroCodec;
use paystream_core::config::{
    DatabaseSettings, HttpSettings, KafkaSettings, SchemaRegistrySettings, TopicSettings,
};
use paystream_core::events::PAYMENT_OUTCOME_SCHEMA;
use paystream_core::processing::{Faults, LoopSettings, LoopStats, ProcessingLoop};
use paystream_core::service::ConsumerService;
use paystream_core::shutdown::Shutdown;
use serde::Deserialize;

use crate::handler::PaymentHandler;
use crate::psp::{PspClient, PspSettings};

const DEFAULTS: &str = r#"
[http]
host = "127.0.0.1"
port = 8082

[consumer]
group_id = "payment-processor"
"#;

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// Health endpoints.
    pub http: HttpSettings,
    #[serde(default)]
    pub consumer: LoopSettings,
    #[serde(default)]
    pub psp: PspSettings,
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
    service: ConsumerService<PaymentHandler>,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = paystream_core::db::connect(&settings.database).await?;
        let codec = Arc::new(AvroCodec::new(&settings.schema_registry.url));
        codec
            .register(&settings.topics.payments_outcomes, &PAYMENT_OUTCOME_SCHEMA)
            .await
            .context("registering the PaymentOutcome schema")?;
        let handler = PaymentHandler {
            psp: PspClient::new(settings.psp.clone())?,
            outcomes_topic: settings.topics.payments_outcomes.clone(),
        };
        let processing = ProcessingLoop::new(
            &settings.kafka,
            settings.consumer.clone(),
            vec![settings.topics.payments_requested.clone()],
            pool,
            codec,
            handler,
        )?;
        let service =
            ConsumerService::bind("payment-processor", &settings.http, processing).await?;
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

    /// Processes until `shutdown` (the current batch is finished and committed) or a fatal
    /// error, which is returned so the process exits non-zero and its supervisor restarts it.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<()> {
        self.service.run_until_stopped(shutdown).await
    }
}
