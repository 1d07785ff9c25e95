//! Wiring shared by the consumer-group services (payment-processor, analytics, notifier):
//! the per-instance transactional id, and running a [`ProcessingLoop`] next to its operations
//! endpoints (`/health/live`, `/health/ready` with the loop's counters, Prometheus `/metrics`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;

use crate::config::HttpSettings;
use crate::processing::{Faults, Handler, LoopSettings, LoopStats, ProcessingLoop};
use crate::shutdown::Shutdown;

/// A name stable per instance: in Kubernetes the pod name (a StatefulSet ordinal keeps it
/// across restarts), elsewhere the host name. Shells do not always export `HOSTNAME`, so the
/// kernel's is the fallback.
pub fn instance_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".into())
}

/// Gives an unset transactional id its default, `<group>-<instance name>`: stable across
/// restarts of the same instance, so a restart fences its predecessor.
pub fn default_transactional_id(consumer: &mut LoopSettings) {
    if consumer.transactional_id.is_empty() {
        consumer.transactional_id = format!("{}-{}", consumer.group_id, instance_name());
    }
}

/// A consumer group instance: its processing loop and its bound health listener.
pub struct ConsumerService<H: Handler> {
    name: &'static str,
    processing: ProcessingLoop<H>,
    listener: TcpListener,
    port: u16,
}

impl<H: Handler> ConsumerService<H> {
    /// Binds the health listener (port 0 binds an ephemeral port).
    pub async fn bind(
        name: &'static str,
        http: &HttpSettings,
        processing: ProcessingLoop<H>,
    ) -> anyhow::Result<Self> {
        crate::metrics::install()?;
        let listener = TcpListener::bind(http.address())
            .await
            .with_context(|| format!("binding {}", http.address()))?;
        let port = listener.local_addr()?.port();
        Ok(Self {
            name,
            processing,
            listener,
            port,
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
        let ready = Arc::new(AtomicBool::new(false));
        let stats = self.processing.stats();
        let router = Router::new()
            .route(
                "/health/live",
                get(|| async { Json(json!({"status": "live"})) }),
            )
            .route("/health/ready", get(health_ready))
            .route("/metrics", get(metrics))
            .with_state((ready.clone(), stats));
        let http_shutdown = shutdown.clone();
        let listener = self.listener;
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(http_shutdown.cancelled_owned())
                .await
        });
        ready.store(true, Ordering::Relaxed);
        tracing::info!(
            port = self.port,
            service = self.name,
            "consumer service started"
        );
        let result = self.processing.run(shutdown.clone()).await;
        ready.store(false, Ordering::Relaxed);
        shutdown.cancel();
        server.await.context("health server panicked")??;
        result.map_err(Into::into)
    }
}

async fn metrics() -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE,
        )],
        crate::metrics::render(),
    )
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
