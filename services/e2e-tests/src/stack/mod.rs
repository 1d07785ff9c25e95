//! [`TestStack`]: one isolated paystream per test, on the shared local stack. This module owns
//! the stack's core (its id, schema, topics, the in-process gateway and PSP simulator, the
//! environment every binary reads, teardown); its children add each concern's helpers as
//! further `impl TestStack` blocks:
//!
//! - [`topics`]: reading and writing the stack's topics ([`DecodedRecord`], [`RawRecord`]);
//! - [`consumer`]: consumer-group services in process (supervised) and as binaries;
//! - [`gateway`]: the gateway's settings, HTTP calls and a stand-alone [`GatewayHandle`];
//! - [`processor`], [`analytics`], [`notifier`]: each service's settings, spawning and oracles.

pub mod analytics;
pub mod consumer;
pub mod gateway;
pub mod notifier;
pub mod processor;
pub mod topics;

use std::time::Duration;

use anyhow::Context;
use paystream_core::config::{DatabaseSettings, KafkaSettings, TopicSettings};
use paystream_core::kafka::{self, TopicSpec};
use paystream_core::shutdown::Shutdown;
use paystream_psp_simulator::SimulatorClient;
use sqlx::PgPool;
use uuid::Uuid;

use crate::env::{database_url, ephemeral_http, kafka_settings, registry_url};
use gateway::gateway_settings;

pub use analytics::WindowTotals;
pub use consumer::TEST_RETRY_DELAYS_MS;
pub use gateway::{
    payment_body, require_api_keys, GatewayHandle, TEST_ADMIN_TOKEN, TEST_ENCRYPTION_KEY,
};
pub use topics::{DecodedRecord, RawRecord};

/// Partitions of every topic a test creates (the harness's readers assign that many).
pub const PARTITIONS: i32 = 3;

pub struct TestStack {
    pub id: String,
    /// The broker this stack's topics live on: the shared one, or a test's own.
    pub kafka: KafkaSettings,
    pub topics: TopicSettings,
    pub group_id: String,
    pub database: DatabaseSettings,
    pub pool: PgPool,
    pub gateway_url: String,
    pub psp: SimulatorClient,
    pub http: reqwest::Client,
    shutdown: Shutdown,
}

impl TestStack {
    /// Topics, schema, PSP simulator and gateway for one test. The processor is started
    /// separately ([`TestStack::spawn_processor`] or as a child process) so tests control it.
    pub async fn spawn() -> anyhow::Result<Self> {
        Self::spawn_with(|_| {}).await
    }

    /// [`TestStack::spawn`] with the gateway's settings adjusted by `configure`.
    pub async fn spawn_with(
        configure: impl FnOnce(&mut paystream_gateway::Settings),
    ) -> anyhow::Result<Self> {
        Self::spawn_on(kafka_settings(), configure).await
    }

    /// [`TestStack::spawn_with`] on the broker `kafka` (e.g. a test's [`own_kafka::OwnKafka`]).
    pub async fn spawn_on(
        kafka: KafkaSettings,
        configure: impl FnOnce(&mut paystream_gateway::Settings),
    ) -> anyhow::Result<Self> {
        Self::spawn_isolated(kafka, database_url(), configure).await
    }

    /// [`TestStack::spawn_on`] with the database at `database_url` as well (e.g. a test's
    /// [`crate::own_postgres::OwnPostgres`]), for tests that restart or kill both.
    pub async fn spawn_isolated(
        kafka: KafkaSettings,
        database_url: String,
        configure: impl FnOnce(&mut paystream_gateway::Settings),
    ) -> anyhow::Result<Self> {
        init_test_logs();
        let id = Uuid::new_v4().simple().to_string()[..12].to_string();
        let topics = TopicSettings {
            payments_requested: format!("test-{id}.payments.requested.v1"),
            payments_outcomes: format!("test-{id}.payments.outcomes.v1"),
            analytics_payment_stats: format!("test-{id}.analytics.payment-stats.v1"),
            notifications_sent: format!("test-{id}.notifications.sent.v1"),
        };
        let group_id = format!("test-{id}.payment-processor");
        kafka::ensure_topics(
            &kafka,
            &[
                TopicSpec::new(&topics.payments_requested, kafka.provisioning.partitions),
                TopicSpec::new(&topics.payments_outcomes, kafka.provisioning.partitions),
                TopicSpec::new(format!("{group_id}.dlq"), 1),
            ],
        )
        .await
        .context("creating test topics (is the stack up? `make up`)")?;

        let database = DatabaseSettings {
            url: database_url.into(),
            max_connections: 10,
            schema: Some(format!("test_{id}")),
        };
        let pool = paystream_core::db::connect(&database).await?;
        paystream_core::db::migrate(&pool).await?;

        let shutdown = Shutdown::new();
        let psp_app =
            paystream_psp_simulator::Application::build(paystream_psp_simulator::Settings {
                http: ephemeral_http(),
                psp: Default::default(),
            })
            .await?;
        let psp = SimulatorClient::new(format!("http://127.0.0.1:{}", psp_app.port()));
        tokio::spawn(psp_app.run_until_stopped(shutdown.clone()));

        let mut gateway_settings = gateway_settings(&database, &topics);
        gateway_settings.kafka = kafka.clone();
        configure(&mut gateway_settings);
        let gateway = paystream_gateway::Application::build(gateway_settings).await?;
        let gateway_url = format!("http://127.0.0.1:{}", gateway.port());
        tokio::spawn(gateway.run_until_stopped(shutdown.clone()));

        Ok(Self {
            id,
            kafka,
            topics,
            group_id,
            database,
            pool,
            gateway_url,
            psp,
            http: reqwest::Client::new(),
            shutdown,
        })
    }

    /// Database, broker, registry and topics of this stack, as every binary reads them.
    fn stack_env(&self) -> Vec<(String, String)> {
        let t = &self.topics;
        vec![
            (
                "PAYSTREAM_DATABASE__URL".into(),
                self.database.url().to_string(),
            ),
            (
                "PAYSTREAM_DATABASE__SCHEMA".into(),
                self.database.schema.clone().unwrap_or_default(),
            ),
            (
                "PAYSTREAM_KAFKA__BOOTSTRAP_SERVERS".into(),
                self.kafka.bootstrap_servers.clone(),
            ),
            (
                "PAYSTREAM_KAFKA__PROVISIONING__PARTITIONS".into(),
                self.kafka.provisioning.partitions.to_string(),
            ),
            ("PAYSTREAM_SCHEMA_REGISTRY__URL".into(), registry_url()),
            (
                "PAYSTREAM_TOPICS__PAYMENTS_REQUESTED".into(),
                t.payments_requested.clone(),
            ),
            (
                "PAYSTREAM_TOPICS__PAYMENTS_OUTCOMES".into(),
                t.payments_outcomes.clone(),
            ),
            (
                "PAYSTREAM_TOPICS__ANALYTICS_PAYMENT_STATS".into(),
                t.analytics_payment_stats.clone(),
            ),
            (
                "PAYSTREAM_TOPICS__NOTIFICATIONS_SENT".into(),
                t.notifications_sent.clone(),
            ),
        ]
    }

    /// Polls `probe` every 200 ms until it returns `Some`; fails after `timeout`.
    pub async fn eventually<T, F, Fut>(
        &self,
        timeout: Duration,
        what: &str,
        probe: F,
    ) -> anyhow::Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(v) = probe().await? {
                return Ok(v);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{what}: not reached after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops the in-process services and drops the test's database schema.
    pub async fn teardown(self) {
        self.shutdown.cancel();
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Some(schema) = &self.database.schema {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .execute(&self.pool)
                .await;
        }
    }
}

/// failing test shows them (e.g. the reason of a fatal Kafka error). Level from
/// `PAYSTREAM_TEST_LOG` (an `EnvFilter`), default `warn` without `rdkafka::client`, whose
/// "Global error" lines repeat librdkafka's own log lines (target `librdkafka`) every second
/// while a broker is down.
pub fn init_test_logs() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_env("PAYSTREAM_TEST_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,rdkafka::client=off"));
        // A test that installed its own subscriber keeps it.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}
