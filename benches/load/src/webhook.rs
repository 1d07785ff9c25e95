//! A merchants' webhook endpoint for the notifier stages: answers `200` to every `POST`
//! after a fixed delay (the receiver's own processing time) and counts what it received.
//! It mirrors the e2e tests' fake receiver (`services/e2e-tests/src/fakes/webhook.rs`) without
//! checking signatures: the bench measures throughput, the tests check correctness.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use paystream_core::shutdown::Shutdown;

#[derive(Clone)]
pub struct WebhookSink {
    pub url: String,
    received: Arc<AtomicU64>,
}

impl WebhookSink {
    /// Serves on a free loopback port until `stop` is cancelled.
    pub async fn start(delay: Duration, stop: Shutdown) -> anyhow::Result<Self> {
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        let router = axum::Router::new().route(
            "/hooks",
            axum::routing::post(move || {
                let counter = counter.clone();
                async move {
                    tokio::time::sleep(delay).await;
                    counter.fetch_add(1, Ordering::Relaxed);
                    StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hooks", listener.local_addr()?);
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        });
        Ok(Self { url, received })
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_and_counts() {
        let stop = Shutdown::new();
        let sink = WebhookSink::start(Duration::from_millis(1), stop.clone())
            .await
            .unwrap();
        let answer = reqwest::Client::new()
            .post(&sink.url)
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(sink.received(), 1);
        stop.cancel();
    }
}
