//! A typed client for the simulator's ledger and admin endpoints, so other crates' tests
//! can count charges and steer behaviour without hand-written HTTP.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use paystream_psp_simulator::{ChargeFilter, ConfigPatch, SimulatorClient};
//!
//! let psp = SimulatorClient::new("http://127.0.0.1:8090");
//! psp.set_config(&ConfigPatch { decline_rate: Some(0.0), ..Default::default() }).await?;
//! // ... run the payment ...
//! let charges = psp.charges(&ChargeFilter::payment("pay_123")).await?;
//! assert_eq!(charges.iter().filter(|c| c.has_charge()).count(), 1);
//! # Ok(())
//! # }
//! ```

use anyhow::Context;
use reqwest::{Response, Url};
use serde::de::DeserializeOwned;

use crate::configuration::{ConfigPatch, SimulatorSettings};
use crate::model::{ChargeFilter, ChargeRecord};

#[derive(Debug, Clone)]
pub struct SimulatorClient {
    base_url: String,
    http: reqwest::Client,
}

impl SimulatorClient {
    /// `base_url` is the simulator's root, e.g. `http://127.0.0.1:8090`.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self::with_client(base_url, reqwest::Client::new())
    }

    pub fn with_client(base_url: impl Into<String>, http: reqwest::Client) -> Self {
        let base_url = base_url.into().trim_end_matches('/').to_owned();
        Self { base_url, http }
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The ledger, one record per idempotency key, filtered by `filter`.
    pub async fn charges(&self, filter: &ChargeFilter) -> anyhow::Result<Vec<ChargeRecord>> {
        let mut url = self.url("/charges")?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(m) = &filter.merchant_id {
                query.append_pair("merchant_id", m);
            }
            if let Some(p) = &filter.payment_id {
                query.append_pair("payment_id", p);
            }
        }
        let response = self.http.get(url).send().await.context("GET /charges")?;
        json(response).await
    }

    /// Forgets every charge and call.
    pub async fn clear(&self) -> anyhow::Result<()> {
        let response = self
            .http
            .delete(self.url("/charges")?)
            .send()
            .await
            .context("DELETE /charges")?;
        success(response).await.map(drop)
    }

    pub async fn config(&self) -> anyhow::Result<SimulatorSettings> {
        let response = self
            .http
            .get(self.url("/admin/config")?)
            .send()
            .await
            .context("GET /admin/config")?;
        json(response).await
    }

    /// Changes the knobs set in `patch`; returns the knobs now in force.
    pub async fn set_config(&self, patch: &ConfigPatch) -> anyhow::Result<SimulatorSettings> {
        let response = self
            .http
            .put(self.url("/admin/config")?)
            .json(patch)
            .send()
            .await
            .context("PUT /admin/config")?;
        json(response).await
    }

    fn url(&self, path: &str) -> anyhow::Result<Url> {
        let raw = format!("{}{path}", self.base_url);
        Url::parse(&raw).with_context(|| format!("invalid simulator URL {raw:?}"))
    }
}

/// Fails on a non-2xx status, keeping the (problem+json) body in the error.
async fn success(response: Response) -> anyhow::Result<Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let url = response.url().clone();
    let body = response.text().await.unwrap_or_default();
    anyhow::bail!("{url} answered {status}: {body}")
}

async fn json<T: DeserializeOwned>(response: Response) -> anyhow::Result<T> {
    let response = success(response).await?;
    let url = response.url().clone();
    response
        .json()
        .await
        .with_context(|| format!("decoding the answer of {url}"))
}
