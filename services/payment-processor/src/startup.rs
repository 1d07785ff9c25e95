//! Settings and wiring of the payment processor.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use paystream_core::avro::AvroCodec;
use paystream_core::config::{
    DatabaseSettings, HttpSettings, KafkaSettings, SchemaRegistrySettings, TopicSettings,
};
use paystream_core::events::PAYMENT_OUTCOME_SCHEMA;
use paystream_core::processing::{Faults, LoopSettings, LoopStats, ProcessingLoop};
use paystream_core::shutdown::Shutdown;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;

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
        if settings.consumer.transactional_id.is_empty() {
            settings.consumer.transactional_id =
                format!("{}-{}", settings.consumer.group_id, instance_name());
        }
        Ok(settings)
    }
}

/// A name stable per instance: in Kubernetes the pod name (a StatefulSet ordinal keeps it
/// across restarts), elsewhere the host name. Shells do not always export `HOSTNAME`, so the
/// kernel's is the fallback.
fn instance_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".into())
}

pub struct Application {
    processing: ProcessingLoop<PaymentHandler>,
    listener: TcpListener,
    port: u16,
    ready: Arc<AtomicBool>,
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
        let listener = TcpListener::bind(settings.http.address())
            .await
            .with_context(|| format!("binding {}", settings.http.address()))?;
        let port = listener.local_addr()?.port();
        Ok(Self {
            processing,
            listener,
            port,
            ready: Arc::default(),
        })
    }

    /// Port of the health endpoints.
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn stats(&self) -> Arc<LoopStats> {
        self.processing.stats()
    }

    /// The loop's chaos hooks (abort injection), for tests and game days.
    pub fn faults(&self) -> Arc<Faults> {
        self.processing.faults()
    }

    /// Processes until `shutdown` (the current batch is finished and committed) or a fatal
    /// error, which is returned so the process exits non-zero and its supervisor restarts it.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let ready = self.ready.clone();
        let stats = self.processing.stats();
        let router = Router::new()
            .route(
                "/health/live",
                get(|| async { Json(json!({"status": "live"})) }),
            )
            .route("/health/ready", get(health_ready))
            .with_state((ready.clone(), stats));
        let http_shutdown = shutdown.clone();
        let listener = self.listener;
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(http_shutdown.cancelled_owned())
                .await
        });
        ready.store(true, Ordering::Relaxed);
        tracing::info!(port = self.port, "payment processor started");
        let result = self.processing.run(shutdown.clone()).await;
        ready.store(false, Ordering::Relaxed);
        shutdown.cancel();
        server.await.context("health server panicked")??;
        result.map_err(Into::into)
    }
}

async fn health_ready(
    State((ready, stats)): State<(Arc<AtomicBool>, Arc<LoopStats>)>,
) -> (StatusCode, Json<serde_json::Value>) {
    let is_ready = ready.load(Ordering::Relaxed);
    let status = if is_ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(
            json!({"status": if is_ready { "ready" } else { "not ready" }, "stats": stats.snapshot()}),
        ),
    )
}
