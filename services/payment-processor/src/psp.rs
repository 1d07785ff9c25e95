//! HTTP adapter toward the payment service provider.
//!
//! Every charge carries an idempotency key derived from the payment id, so a charge repeated
//! after a crash or an aborted batch returns the PSP's first answer instead of charging twice,
//! and the W3C trace context of its `psp charge` span, so the PSP's spans join the payment's
//! trace.

use std::time::Duration;

use paystream_core::events::PaymentRequested;
use paystream_core::processing::CallBudget;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct PspSettings {
    pub url: String,
    pub timeout_ms: u64,
    /// Attempts within one processing of a record before the failure is handed to the loop.
    /// 1 by default: a transient failure goes through the group's retry chain, whose delays
    /// give the PSP time to recover without holding the input partition.
    pub attempts: u32,
    pub retry_backoff_ms: u64,
}

impl Default for PspSettings {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8090".into(),
            timeout_ms: 5_000,
            attempts: 1,
            retry_backoff_ms: 100,
        }
    }
}

impl PspSettings {
    /// The longest one charge can take: every attempt timing out, plus the back-offs between
    /// them (`retry_backoff_ms × k` before attempt k + 1).
    pub fn call_budget(&self) -> CallBudget {
        let attempts = u64::from(self.attempts.max(1));
        let backoffs = self.retry_backoff_ms * (attempts - 1) * attempts / 2;
        CallBudget {
            what: format!(
                "psp.timeout_ms ({}) × psp.attempts ({}) + psp.retry_backoff_ms ({}) back-offs",
                self.timeout_ms, self.attempts, self.retry_backoff_ms
            ),
            duration: Duration::from_millis(self.timeout_ms * attempts + backoffs),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PspError {
    /// Timeouts, connection failures, 5xx, 408 and 429: the same request may succeed later.
    #[error("PSP unavailable: {0}")]
    Transient(String),
    /// The PSP refused the request itself (4xx): retrying cannot help.
    #[error("PSP rejected the request: {0}")]
    Rejected(String),
}

#[derive(Debug, Serialize)]
struct ChargeRequest<'a> {
    payment_id: &'a str,
    merchant_id: &'a str,
    customer_id: &'a str,
    amount_minor: i64,
    currency: &'a str,
    payment_method: &'a str,
}

/// The PSP's answer. A decline is an answer, not an error.
#[derive(Debug, Clone, Deserialize)]
pub struct Charge {
    pub charge_id: String,
    pub status: String,
    pub decline_code: Option<String>,
}

impl Charge {
    pub fn succeeded(&self) -> bool {
        self.status == "succeeded"
    }
}

pub struct PspClient {
    http: reqwest::Client,
    settings: PspSettings,
}

impl PspClient {
    pub fn new(settings: PspSettings) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.timeout_ms))
            .build()?;
        Ok(Self { http, settings })
    }

    pub fn settings(&self) -> &PspSettings {
        &self.settings
    }

    /// The idempotency key of a payment's charge: one charge per payment, ever.
    pub fn idempotency_key(payment_id: &str) -> String {
        format!("{payment_id}:charge")
    }

    /// Charges the payment, retrying transient failures `attempts - 1` times with the same key.
    #[tracing::instrument(name = "psp charge", skip_all, fields(otel.kind = "client", payment.id = %payment.payment_id))]
    pub async fn charge(&self, payment: &PaymentRequested) -> Result<Charge, PspError> {
        let mut attempt = 1;
        loop {
            match self.charge_once(payment).await {
                Err(PspError::Transient(e)) if attempt < self.settings.attempts => {
                    tracing::warn!(error = %e, attempt, "PSP call failed; retrying with the same key");
                    tokio::time::sleep(Duration::from_millis(
                        self.settings.retry_backoff_ms * u64::from(attempt),
                    ))
                    .await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn charge_once(&self, payment: &PaymentRequested) -> Result<Charge, PspError> {
        let url = format!("{}/v1/charges", self.settings.url.trim_end_matches('/'));
        // W3C `traceparent` of this `psp charge` span: the PSP's own span joins the payment's
        // trace as its child.
        let mut trace_context = reqwest::header::HeaderMap::new();
        paystream_core::telemetry::inject_http_context(&mut trace_context);
        let response = self
            .http
            .post(url)
            .headers(trace_context)
            .header(
                "Idempotency-Key",
                Self::idempotency_key(&payment.payment_id),
            )
            .json(&ChargeRequest {
                payment_id: &payment.payment_id,
                merchant_id: &payment.merchant_id,
                customer_id: &payment.customer_id,
                amount_minor: payment.amount_minor,
                currency: &payment.currency,
                payment_method: &payment.payment_method,
            })
            .send()
            .await
            .map_err(|e| PspError::Transient(e.to_string()))?;
        let status = response.status();
        if status.is_success() {
            return response
                .json::<Charge>()
                .await
                .map_err(|e| PspError::Transient(format!("unreadable PSP answer: {e}")));
        }
        let body = response.text().await.unwrap_or_default();
        let detail = format!(
            "HTTP {status}: {}",
            body.chars().take(200).collect::<String>()
        );
        if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
            Err(PspError::Transient(detail))
        } else {
            Err(PspError::Rejected(detail))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_call_budget_counts_every_attempt_and_back_off() {
        let one = PspSettings::default().call_budget();
        assert_eq!(one.duration, Duration::from_millis(5_000));
        assert!(one.what.contains("psp.timeout_ms (5000)"), "{}", one.what);
        let three = PspSettings {
            timeout_ms: 2_000,
            attempts: 3,
            retry_backoff_ms: 100,
            ..PspSettings::default()
        }
        .call_budget();
        // 3 × 2000 + 100 (before the 2nd) + 200 (before the 3rd).
        assert_eq!(three.duration, Duration::from_millis(6_300));
        assert!(three.what.contains("psp.attempts (3)"), "{}", three.what);
    }
}
