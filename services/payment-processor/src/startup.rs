//! Settings and wiring of the payment processor.

use anyhow::Context;
use paystream_core::avro::AvroCodec;
use paystream_core::events::PAYMENT_OUTCOME_SCHEMA;
use paystream_core::service::{ConsumerService, ServiceHandler, ServiceSettings};
use serde::Deserialize;
use sqlx::PgPool;

use crate::handler::{ClaimSettings, PaymentHandler};
use crate::psp::{PspClient, PspSettings};

/// The payment processor's settings: the shared sections plus `[psp]`.
pub type Settings = ServiceSettings<ProcessorSection>;

/// A payment processor instance: [`Application::build`], then
/// [`Application::run_until_stopped`], which processes until shutdown (the current batch is
/// finished and committed) or a fatal error (returned, so the process exits non-zero and its
/// supervisor restarts it).
pub type Application = ConsumerService<PaymentHandler>;

/// The processor's own settings sections.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ProcessorSection {
    #[serde(default)]
    pub psp: PspSettings,
    #[serde(default)]
    pub processor: ClaimSettings,
}

impl ServiceHandler for PaymentHandler {
    type Own = ProcessorSection;
    const NAME: &'static str = "payment-processor";
    const DEFAULTS: &'static str = r#"
[http]
host = "127.0.0.1"
port = 8082

[consumer]
group_id = "payment-processor"
# A new group reads every retained request: a payment is never skipped.
start_from = "earliest"
"#;

    fn input_topics(settings: &Settings) -> Vec<String> {
        vec![settings.topics.payments_requested.clone()]
    }

    async fn build(settings: &Settings, _pool: &PgPool, codec: &AvroCodec) -> anyhow::Result<Self> {
        codec
            .register(&settings.topics.payments_outcomes, &PAYMENT_OUTCOME_SCHEMA)
            .await
            .context("registering the PaymentOutcome schema")?;
        let lease = settings.processor.lease(&settings.psp.call_budget())?;
        Ok(PaymentHandler {
            psp: PspClient::new(settings.psp.clone())?,
            outcomes_topic: settings.topics.payments_outcomes.clone(),
            lease,
        })
    }
}
