//! Webhook delivery: a signed JSON POST to the merchant's URL.
//!
//! 2xx: delivered. 5xx, 408, 429, timeouts and connection failures: transient (the retry
//! chain). Any other answer (4xx, and 3xx: redirects are not followed, so a target cannot
//! bounce the request to an internal address): permanent (the dead-letter topic).

use std::time::Duration;

use chrono::Utc;
use paystream_core::events::{OutcomeStatus, PaymentOutcome};
use serde::Serialize;
use url::Url;

use crate::guard::{GuardedResolver, TargetPolicy};
use crate::signature::{self, EVENT_ID_HEADER, SIGNATURE_HEADER};

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{0}")]
    Transient(String),
    #[error("{0}")]
    Permanent(String),
}

/// The webhook body. Built from the outcome event alone, so every resend is byte-identical.
#[derive(Debug, Serialize)]
pub struct WebhookBody<'a> {
    /// The outcome's event id (also the `Paystream-Event-Id` header).
    pub id: &'a str,
    /// `payment.succeeded` or `payment.failed`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// When the outcome was decided, unix seconds.
    pub created: i64,
    pub data: PaymentData<'a>,
}

#[derive(Debug, Serialize)]
pub struct PaymentData<'a> {
    pub payment_id: &'a str,
    pub merchant_id: &'a str,
    pub customer_id: &'a str,
    pub amount_minor: i64,
    pub currency: &'a str,
    pub status: &'static str,
    pub failure_reason: Option<&'a str>,
    pub psp_charge_id: Option<&'a str>,
    /// RFC 3339.
    pub requested_at: String,
    /// RFC 3339.
    pub decided_at: String,
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

pub fn event_type(status: OutcomeStatus) -> &'static str {
    match status {
        OutcomeStatus::Succeeded => "payment.succeeded",
        OutcomeStatus::Failed => "payment.failed",
    }
}

/// The raw JSON body of the webhook for `outcome`.
pub fn body(outcome: &PaymentOutcome) -> Vec<u8> {
    let body = WebhookBody {
        id: &outcome.event_id,
        kind: event_type(outcome.status),
        created: outcome.decided_at.div_euclid(1000),
        data: PaymentData {
            payment_id: &outcome.payment_id,
            merchant_id: &outcome.merchant_id,
            customer_id: &outcome.customer_id,
            amount_minor: outcome.amount_minor,
            currency: &outcome.currency,
            status: outcome.status.as_str(),
            failure_reason: outcome.failure_reason.as_deref(),
            psp_charge_id: outcome.psp_charge_id.as_deref(),
            requested_at: rfc3339(outcome.requested_at),
            decided_at: rfc3339(outcome.decided_at),
        },
    };
    serde_json::to_vec(&body).expect("a plain struct always serialises")
}

pub struct WebhookClient {
    http: reqwest::Client,
    policy: TargetPolicy,
}

impl WebhookClient {
    pub fn new(policy: TargetPolicy, timeout: Duration) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(GuardedResolver { policy })
            .build()?;
        Ok(Self { http, policy })
    }

    /// POSTs `body` to `url`, signed with each of `secrets` (current first; the previous one
    /// too during a rotation's overlap window) at the current time. The request carries
    /// the payment's trace context, so a traced receiver continues the same trace.
    #[tracing::instrument(name = "webhook send", skip_all, fields(
        otel.kind = "client", http.request.method = "POST", event.id = %event_id,
        http.response.status_code = tracing::field::Empty, error.type = tracing::field::Empty))]
    pub async fn send(
        &self,
        url: &str,
        secrets: &[&str],
        event_id: &str,
        body: Vec<u8>,
    ) -> Result<(), SendError> {
        let url = Url::parse(url)
            .map_err(|e| SendError::Permanent(format!("invalid webhook URL: {e}")))?;
        self.policy
            .check_url(&url)
            .map_err(|e| SendError::Permanent(e.to_string()))?;
        let signature = signature::sign_all(secrets, Utc::now().timestamp(), &body);
        let mut trace = paystream_core::headers::RecordHeaders::default();
        trace.inject_current_context();
        let mut request = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(EVENT_ID_HEADER, event_id)
            .header(SIGNATURE_HEADER, signature);
        for (name, value) in &trace.0 {
            request = request.header(name.as_str(), value.as_str());
        }
        let span = tracing::Span::current();
        let response = request.body(body).send().await.map_err(|e| {
            span.record("error.type", "transport");
            classify_request_error(e)
        })?;
        let status = response.status();
        span.record("http.response.status_code", status.as_u16());
        if status.is_success() {
            return Ok(());
        }
        span.record("error.type", status.as_str());
        let detail = format!("webhook answered HTTP {status}");
        if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
            Err(SendError::Transient(detail))
        } else {
            Err(SendError::Permanent(detail))
        }
    }
}

fn classify_request_error(e: reqwest::Error) -> SendError {
    // A target refused by the guard surfaces as a connect error whose source is our GuardError.
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if s.is::<crate::guard::GuardError>() {
            return SendError::Permanent(format!("webhook target refused: {s}"));
        }
        source = s.source();
    }
    SendError::Transient(format!("webhook request failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot HTTP server on 127.0.0.1 answering `status`; returns its port.
    async fn answer_once(status: u16) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 16 * 1024];
            let _ = socket.read(&mut buf).await;
            let response = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
            socket.write_all(response.as_bytes()).await.unwrap();
        });
        port
    }

    fn client(allow_loopback: bool) -> WebhookClient {
        let policy = TargetPolicy {
            allow_loopback,
            allow_private: false,
        };
        WebhookClient::new(policy, Duration::from_secs(5)).unwrap()
    }

    #[tokio::test]
    async fn names_are_checked_where_they_resolve() {
        // `localhost` resolves to loopback: refused by a strict guard, before any connection.
        let port = answer_once(200).await;
        let refused = client(false)
            .send(
                &format!("http://localhost:{port}/h"),
                &["whsec_x"],
                "e1",
                b"{}".to_vec(),
            )
            .await;
        match refused {
            Err(SendError::Permanent(m)) => assert!(m.contains("not allowed"), "{m}"),
            other => panic!("expected a permanent refusal, got {other:?}"),
        }
        // Allowed when loopback targets are: the same name now reaches the server.
        let ok = client(true)
            .send(
                &format!("http://localhost:{port}/h"),
                &["whsec_x"],
                "e1",
                b"{}".to_vec(),
            )
            .await;
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[tokio::test]
    async fn answers_are_classified() {
        for (status, transient) in [
            (503, true),
            (429, true),
            (408, true),
            (400, false),
            (301, false),
        ] {
            let port = answer_once(status).await;
            let result = client(true)
                .send(
                    &format!("http://127.0.0.1:{port}/h"),
                    &["whsec_x"],
                    "e1",
                    b"{}".to_vec(),
                )
                .await;
            match (result, transient) {
                (Err(SendError::Transient(_)), true) | (Err(SendError::Permanent(_)), false) => {}
                (other, _) => panic!("{status}: {other:?}"),
            }
        }
        // https is spoken (rustls): a closed port is a transport failure, worth a retry.
        let https = client(true)
            .send("https://127.0.0.1:1/h", &["whsec_x"], "e1", b"{}".to_vec())
            .await;
        assert!(matches!(https, Err(SendError::Transient(_))), "{https:?}");
    }

    #[test]
    fn the_body_is_stable_and_shaped_for_receivers() {
        let outcome = PaymentOutcome {
            event_id: "e-1".into(),
            payment_id: "p-1".into(),
            merchant_id: "m_1".into(),
            customer_id: "c_1".into(),
            amount_minor: 1999,
            currency: "EUR".into(),
            status: OutcomeStatus::Failed,
            failure_reason: Some("card_declined".into()),
            psp_charge_id: None,
            requested_at: 1_700_000_000_000,
            decided_at: 1_700_000_001_500,
        };
        assert_eq!(body(&outcome), body(&outcome));
        let json: serde_json::Value = serde_json::from_slice(&body(&outcome)).unwrap();
        assert_eq!(json["id"], "e-1");
        assert_eq!(json["type"], "payment.failed");
        assert_eq!(json["created"], 1_700_000_001);
        assert_eq!(json["data"]["failure_reason"], "card_declined");
        assert_eq!(json["data"]["decided_at"], "2023-11-14T22:13:21.500Z");
    }
}
