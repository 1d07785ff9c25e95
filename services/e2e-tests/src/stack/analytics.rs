//! Analytics against a [`TestStack`]: its settings, an in-process instance, and the window
//! totals it stored next to the same totals as the PSP simulator's ledger sees them.

use std::collections::HashMap;
use std::sync::Arc;

use paystream_core::config::SchemaRegistrySettings;
use paystream_core::processing::{Faults, LoopStats};
use paystream_core::service::ServiceSettings;

use super::consumer::test_loop_settings;
use super::TestStack;
use crate::env::{ephemeral_http, registry_url};

/// Totals of one merchant × currency summed over windows of one granularity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WindowTotals {
    pub requested_count: i64,
    pub requested_amount_minor: i64,
    pub succeeded_count: i64,
    pub succeeded_amount_minor: i64,
    pub failed_count: i64,
    pub failed_by_reason: std::collections::BTreeMap<String, i64>,
}

impl TestStack {
    /// The analytics consumer group of this stack.
    pub fn analytics_group(&self) -> String {
        format!("test-{}.analytics", self.id)
    }

    /// Settings for an analytics instance wired to this stack.
    pub fn analytics_settings(&self) -> paystream_analytics::Settings {
        ServiceSettings {
            http: ephemeral_http(),
            consumer: test_loop_settings::<paystream_analytics::handler::AnalyticsHandler>(
                self.analytics_group(),
            ),
            database: self.database.clone(),
            kafka: self.kafka.clone(),
            schema_registry: SchemaRegistrySettings {
                url: registry_url(),
            },
            topics: self.topics.clone(),
            retention: Default::default(),
            own: Default::default(),
        }
    }

    /// Runs an analytics instance in this process until teardown; returns its loop counters
    /// and chaos hooks.
    pub async fn spawn_analytics(&self) -> anyhow::Result<(Arc<LoopStats>, Arc<Faults>)> {
        self.spawn_consumer::<paystream_analytics::handler::AnalyticsHandler>(
            self.analytics_settings(),
        )
        .await
    }

    /// Analytics windows of `granularity` summed per (merchant, currency).
    pub async fn analytics_totals(
        &self,
        granularity: &str,
    ) -> anyhow::Result<HashMap<(String, String), WindowTotals>> {
        #[derive(sqlx::FromRow)]
        struct Row {
            merchant_id: String,
            currency: String,
            requested_count: i64,
            requested_amount_minor: i64,
            succeeded_count: i64,
            succeeded_amount_minor: i64,
            failed_count: i64,
            failed_by_reason: sqlx::types::Json<HashMap<String, i64>>,
        }
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT merchant_id, currency, requested_count, requested_amount_minor,
                    succeeded_count, succeeded_amount_minor, failed_count, failed_by_reason
             FROM analytics_windows WHERE granularity = $1",
        )
        .bind(granularity)
        .fetch_all(&self.pool)
        .await?;
        let mut totals: HashMap<(String, String), WindowTotals> = HashMap::new();
        for row in rows {
            let t = totals.entry((row.merchant_id, row.currency)).or_default();
            t.requested_count += row.requested_count;
            t.requested_amount_minor += row.requested_amount_minor;
            t.succeeded_count += row.succeeded_count;
            t.succeeded_amount_minor += row.succeeded_amount_minor;
            t.failed_count += row.failed_count;
            for (reason, n) in row.failed_by_reason.0 {
                *t.failed_by_reason.entry(reason).or_default() += n;
            }
        }
        Ok(totals)
    }

    /// The same totals as the PSP simulator's ledger sees them (its own count of charges).
    pub async fn psp_totals(&self) -> anyhow::Result<HashMap<(String, String), WindowTotals>> {
        let mut totals: HashMap<(String, String), WindowTotals> = HashMap::new();
        for charge in self.charges().await?.into_iter().filter(|c| c.has_charge()) {
            let t = totals
                .entry((charge.merchant_id.clone(), charge.currency.clone()))
                .or_default();
            t.requested_count += 1;
            t.requested_amount_minor += charge.amount_minor;
            match charge.decline_code {
                None => {
                    t.succeeded_count += 1;
                    t.succeeded_amount_minor += charge.amount_minor;
                }
                Some(code) => {
                    t.failed_count += 1;
                    *t.failed_by_reason.entry(code).or_default() += 1;
                }
            }
        }
        Ok(totals)
    }
}
