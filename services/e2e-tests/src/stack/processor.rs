//! The payment processor against a [`TestStack`]: its settings and environment, an in-process
//! instance, and the payments' outcomes (terminal statuses, the PSP simulator's charges).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use paystream_core::config::SchemaRegistrySettings;
use paystream_core::processing::LoopStats;
use paystream_core::service::ServiceSettings;
use paystream_psp_simulator::{ChargeFilter, ChargeRecord};
use uuid::Uuid;

use super::consumer::test_loop_settings;
use super::TestStack;
use crate::env::{ephemeral_http, registry_url};

impl TestStack {
    /// Settings for a payment processor wired to this stack.
    pub fn processor_settings(&self) -> paystream_payment_processor::Settings {
        ServiceSettings {
            http: ephemeral_http(),
            consumer: test_loop_settings::<paystream_payment_processor::handler::PaymentHandler>(
                self.group_id.clone(),
            ),
            database: self.database.clone(),
            kafka: self.kafka.clone(),
            schema_registry: SchemaRegistrySettings {
                url: registry_url(),
            },
            topics: self.topics.clone(),
            retention: Default::default(),
            own: paystream_payment_processor::ProcessorSection {
                psp: paystream_payment_processor::psp::PspSettings {
                    url: self.psp.base_url().to_string(),
                    ..Default::default()
                },
                processor: Default::default(),
            },
        }
    }

    /// Runs a payment processor in this process until teardown; returns its loop counters.
    pub async fn spawn_processor(&self) -> anyhow::Result<Arc<LoopStats>> {
        let (stats, _) = self
            .spawn_consumer::<paystream_payment_processor::handler::PaymentHandler>(
                self.processor_settings(),
            )
            .await?;
        Ok(stats)
    }

    /// The environment that points the `payment-processor` binary at this stack.
    pub fn processor_env(&self) -> Vec<(String, String)> {
        let s = self.processor_settings();
        let mut env = self.consumer_env(&s.consumer.group_id, &s.consumer.transactional_id);
        env.push(("PAYSTREAM_PSP__URL".into(), s.own.psp.url));
        env
    }

    /// Statuses of the payments that are decided (SUCCEEDED or FAILED; a PROCESSING payment
    /// is claimed, its PSP call maybe in flight).
    pub async fn terminal_payments(&self) -> anyhow::Result<HashMap<Uuid, String>> {
        let rows: Vec<(Uuid, String)> = sqlx::query_as(
            "SELECT id, status FROM payments WHERE status IN ('SUCCEEDED', 'FAILED')",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }

    /// Waits until at least `n` payments are terminal.
    pub async fn wait_terminal(
        &self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<HashMap<Uuid, String>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let done = self.terminal_payments().await?;
            if done.len() >= n {
                return Ok(done);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "only {} of {n} payments terminal after {timeout:?}",
                done.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn charges(&self) -> anyhow::Result<Vec<ChargeRecord>> {
        self.psp.charges(&ChargeFilter::all()).await
    }
}
