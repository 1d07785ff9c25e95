//! [`WebhookReceiver`]: merchants' webhook endpoint.

use std::collections::HashMap;
use std::sync::Arc;

use paystream_core::shutdown::Shutdown;
use serde_json::Value;

/// One request the [`WebhookReceiver`] accepted.
#[derive(Debug, Clone)]
pub struct WebhookDelivery {
    pub event_id: String,
    pub body: Value,
}

#[derive(Default)]
struct ReceiverState {
    /// Signing secret per merchant id (the body's `data.merchant_id`).
    secrets: std::sync::Mutex<HashMap<String, String>>,
    answer: std::sync::atomic::AtomicU16,
    accepted: std::sync::Mutex<Vec<WebhookDelivery>>,
    refused: std::sync::atomic::AtomicU64,
    bad_signatures: std::sync::atomic::AtomicU64,
}

/// A real HTTP webhook receiver: verifies every signature (as documented in the README) and
/// answers with a configurable status; counts what it accepted.
#[derive(Clone)]
pub struct WebhookReceiver {
    state: Arc<ReceiverState>,
    pub url: String,
}

impl WebhookReceiver {
    pub async fn start(shutdown: Shutdown) -> anyhow::Result<Self> {
        use axum::body::Bytes;
        use axum::extract::State;
        use axum::http::{HeaderMap, StatusCode};
        use std::sync::atomic::Ordering::SeqCst;

        async fn receive(
            State(state): State<Arc<ReceiverState>>,
            headers: HeaderMap,
            body: Bytes,
        ) -> StatusCode {
            let header = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string()
            };
            let merchant = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|b| b["data"]["merchant_id"].as_str().map(str::to_string))
                .unwrap_or_default();
            let secret = state
                .secrets
                .lock()
                .unwrap()
                .get(&merchant)
                .cloned()
                .unwrap_or_default();
            let verified = paystream_notifier::signature::verify(
                &secret,
                &header(paystream_notifier::signature::SIGNATURE_HEADER),
                &body,
                chrono::Utc::now().timestamp(),
                paystream_notifier::signature::DEFAULT_TOLERANCE_SECS,
            );
            if verified.is_err() || header("content-type") != "application/json" {
                state.bad_signatures.fetch_add(1, SeqCst);
                return StatusCode::UNAUTHORIZED;
            }
            let answer = StatusCode::from_u16(state.answer.load(SeqCst)).unwrap_or(StatusCode::OK);
            if !answer.is_success() {
                state.refused.fetch_add(1, SeqCst);
                return answer;
            }
            let Ok(body) = serde_json::from_slice::<Value>(&body) else {
                return StatusCode::BAD_REQUEST;
            };
            state.accepted.lock().unwrap().push(WebhookDelivery {
                event_id: header(paystream_notifier::signature::EVENT_ID_HEADER),
                body,
            });
            StatusCode::OK
        }

        let state = Arc::new(ReceiverState::default());
        state.answer.store(200, SeqCst);
        let router = axum::Router::new()
            .route("/hooks", axum::routing::post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://127.0.0.1:{}/hooks", listener.local_addr()?.port());
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        });
        Ok(Self { state, url })
    }

    /// The signing secret the receiver verifies `merchant_id`'s webhooks against.
    pub fn set_secret(&self, merchant_id: &str, secret: &str) {
        self.state
            .secrets
            .lock()
            .unwrap()
            .insert(merchant_id.to_string(), secret.to_string());
    }

    /// The status answered to correctly signed requests from now on.
    pub fn answer(&self, status: u16) {
        self.state
            .answer
            .store(status, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn accepted(&self) -> Vec<WebhookDelivery> {
        self.state.accepted.lock().unwrap().clone()
    }

    /// Correctly signed requests answered with a non-2xx status.
    pub fn refused(&self) -> u64 {
        self.state.refused.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn bad_signatures(&self) -> u64 {
        self.state
            .bad_signatures
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}
