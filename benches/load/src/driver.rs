//! Sends one `POST /v1/payments` and classifies the answer.
//!
//! The same driver hits the real gateway and the bare-handler probe, so the probe's ceiling
//! includes exactly the client cost the real runs pay.

use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use crate::workload::Workload;

/// How one request ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// `202 Accepted` with the new payment's id.
    Accepted { payment_id: String },
    /// Any other HTTP status.
    Status(u16),
    /// No HTTP answer: timeout, refused or reset connection, unreadable body.
    Failed(&'static str),
}

impl Answer {
    /// The label errors are counted under (`"202"`, `"503"`, `"timeout"`...).
    pub fn label(&self) -> String {
        match self {
            Answer::Accepted { .. } => "202".into(),
            Answer::Status(code) => code.to_string(),
            Answer::Failed(kind) => (*kind).to_string(),
        }
    }
}

#[derive(Deserialize)]
struct Accepted {
    id: String,
}

pub struct HttpDriver {
    client: reqwest::Client,
    url: String,
    workload: Workload,
}

impl HttpDriver {
    /// A driver for `base_url`'s `/v1/payments`, keeping up to `connections` idle connections.
    pub fn new(base_url: &str, workload: Workload, connections: usize) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(connections)
            .timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .no_proxy()
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            client,
            url: format!("{}/v1/payments", base_url.trim_end_matches('/')),
            workload,
        })
    }

    pub async fn send(&self, seq: u64) -> Answer {
        let response = self
            .client
            .post(&self.url)
            .header("idempotency-key", self.workload.idempotency_key(seq))
            .header("content-type", "application/json")
            .body(self.workload.body(seq))
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return Answer::Failed("timeout"),
            Err(e) if e.is_connect() => return Answer::Failed("connect"),
            Err(_) => return Answer::Failed("transport"),
        };
        let status = response.status().as_u16();
        // Read every body, so the connection goes back to the pool.
        let body = response.bytes().await;
        match (status, body) {
            (202, Ok(bytes)) => match serde_json::from_slice::<Accepted>(&bytes) {
                Ok(a) => Answer::Accepted { payment_id: a.id },
                Err(_) => Answer::Failed("bad-body"),
            },
            (_, Ok(_)) => Answer::Status(status),
            (_, Err(_)) => Answer::Failed("transport"),
        }
    }
}
