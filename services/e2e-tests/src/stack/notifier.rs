//! The notifier against a [`TestStack`]: its settings and environment, an in-process instance,
//! and the fake receivers ([`WebhookReceiver`], [`SmtpSink`]) it delivers to.

use std::sync::Arc;

use paystream_core::config::SchemaRegistrySettings;
use paystream_core::processing::{LoopSettings, LoopStats, StartFrom};
use paystream_core::service::ServiceSettings;

use super::consumer::test_loop_settings;
use super::TestStack;
use crate::env::{ephemeral_http, registry_url};
use crate::fakes::{SmtpSink, WebhookReceiver};

impl TestStack {
    /// The notifier consumer group of this stack.
    pub fn notifier_group(&self) -> String {
        format!("test-{}.notifier", self.id)
    }

    /// Settings for a notifier wired to this stack, mailing through `smtp_port`; loopback
    /// webhook targets are allowed (the receivers run on 127.0.0.1). The group starts from the
    /// earliest outcome, not the service's `latest`: tests may start it after producing.
    pub fn notifier_settings(&self, smtp_port: u16) -> paystream_notifier::Settings {
        ServiceSettings {
            http: ephemeral_http(),
            consumer: LoopSettings {
                start_from: StartFrom::Earliest,
                ..test_loop_settings::<paystream_notifier::handler::NotifierHandler>(
                    self.notifier_group(),
                )
            },
            database: self.database.clone(),
            kafka: self.kafka.clone(),
            schema_registry: SchemaRegistrySettings {
                url: registry_url(),
            },
            topics: self.topics.clone(),
            retention: Default::default(),
            own: paystream_notifier::NotifierSection {
                notifier: paystream_notifier::NotifierSettings {
                    allow_loopback_targets: true,
                    smtp_port,
                    webhook_timeout_ms: 2_000,
                    smtp_timeout_ms: 5_000,
                    ..Default::default()
                },
                secrets: super::gateway::test_secrets_settings(),
            },
        }
    }

    /// Runs a notifier in this process until teardown; returns its loop counters.
    pub async fn spawn_notifier(
        &self,
        settings: paystream_notifier::Settings,
    ) -> anyhow::Result<Arc<LoopStats>> {
        let (stats, _) = self
            .spawn_consumer::<paystream_notifier::handler::NotifierHandler>(settings)
            .await?;
        Ok(stats)
    }

    /// A webhook receiver and an SMTP sink living until teardown.
    pub async fn receivers(&self) -> anyhow::Result<(WebhookReceiver, SmtpSink)> {
        Ok((
            WebhookReceiver::start(self.shutdown.clone()).await?,
            SmtpSink::start(self.shutdown.clone()).await?,
        ))
    }

    /// The environment of a `notifier` binary mailing through `smtp_port`; its group starts
    /// from the earliest outcome, as with [`Self::notifier_settings`].
    pub fn notifier_env(&self, smtp_port: u16, transactional_id: &str) -> Vec<(String, String)> {
        let mut env = self.consumer_env(&self.notifier_group(), transactional_id);
        env.extend([
            ("PAYSTREAM_CONSUMER__START_FROM".into(), "earliest".into()),
            (
                "PAYSTREAM_NOTIFIER__SMTP_PORT".into(),
                smtp_port.to_string(),
            ),
            (
                "PAYSTREAM_NOTIFIER__ALLOW_LOOPBACK_TARGETS".into(),
                "true".into(),
            ),
            (
                "PAYSTREAM_NOTIFIER__WEBHOOK_TIMEOUT_MS".into(),
                "2000".into(),
            ),
            // As in `notifier_settings`: with it, a delivery claim's lease (the longer timeout
            // + 1 s) lapses before a killed instance's partitions move to another.
            ("PAYSTREAM_NOTIFIER__SMTP_TIMEOUT_MS".into(), "5000".into()),
            (
                "PAYSTREAM_SECRETS__ENCRYPTION_KEY".into(),
                super::gateway::TEST_ENCRYPTION_KEY.into(),
            ),
        ]);
        env
    }
}
