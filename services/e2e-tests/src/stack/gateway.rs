//! The gateway against a [`TestStack`]: its settings and environment, the stack's HTTP calls
//! (payments, merchants), a gateway a test runs on its own ([`GatewayHandle`]), API keys and a
//! valid payment body.

use std::time::Duration;

use anyhow::Context;
use paystream_core::config::{DatabaseSettings, SchemaRegistrySettings, TopicSettings};
use paystream_core::shutdown::Shutdown;
use serde_json::Value;
use uuid::Uuid;

use super::TestStack;
use crate::env::{ephemeral_http, kafka_settings, registry_url};

/// The gateway's admin bearer token in tests.
pub const TEST_ADMIN_TOKEN: &str = "test-admin-token";

/// `secrets.encryption_key` of the gateway and the notifier in tests (a fixed dev key, the
/// local stack's: `dev-only-paystream-secrets-key!!`).
pub const TEST_ENCRYPTION_KEY: &str = "ZGV2LW9ubHktcGF5c3RyZWFtLXNlY3JldHMta2V5ISE=";

/// The `[secrets]` section of the gateway and the notifier in tests.
pub fn test_secrets_settings() -> paystream_core::secrets::SecretsSettings {
    paystream_core::secrets::SecretsSettings {
        encryption_key: Some(TEST_ENCRYPTION_KEY.to_string().into()),
    }
}

impl TestStack {
    /// The environment that points the `gateway` binary at this stack, listening on `port`.
    pub fn gateway_env(&self, port: u16) -> Vec<(String, String)> {
        let mut env = self.stack_env();
        env.extend([
            ("PAYSTREAM_HTTP__PORT".into(), port.to_string()),
            (
                "PAYSTREAM_GATEWAY__OUTBOX_POLL_INTERVAL_MS".into(),
                "100".into(),
            ),
            (
                "PAYSTREAM_GATEWAY__RATE_LIMIT__REQUESTS_PER_SECOND".into(),
                "0".into(),
            ),
            (
                "PAYSTREAM_SECRETS__ENCRYPTION_KEY".into(),
                TEST_ENCRYPTION_KEY.into(),
            ),
        ]);
        env
    }

    /// `POST /v1/payments` with a JSON body.
    pub async fn post_payment(
        &self,
        key: Option<&str>,
        body: &Value,
    ) -> anyhow::Result<reqwest::Response> {
        let mut request = self
            .http
            .post(format!("{}/v1/payments", self.gateway_url))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(k) = key {
            request = request.header("Idempotency-Key", k);
        }
        Ok(request.send().await?)
    }

    /// Accepts a payment and returns its id.
    pub async fn accept_payment(&self, body: &Value) -> anyhow::Result<Uuid> {
        let response = self
            .post_payment(Some(&Uuid::new_v4().to_string()), body)
            .await?;
        anyhow::ensure!(
            response.status() == 202,
            "expected 202, got {}",
            response.status()
        );
        let json: Value = response.json().await?;
        Ok(Uuid::parse_str(json["id"].as_str().context("no id")?)?)
    }

    pub async fn get_payment(&self, id: Uuid) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(format!("{}/v1/payments/{id}", self.gateway_url))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// `PUT /v1/merchants/{id}` with the admin token; returns status and JSON body.
    pub async fn put_merchant(
        &self,
        merchant_id: &str,
        body: &Value,
    ) -> anyhow::Result<(u16, Value)> {
        let response = self
            .http
            .put(format!("{}/v1/merchants/{merchant_id}", self.gateway_url))
            .bearer_auth(TEST_ADMIN_TOKEN)
            .json(body)
            .send()
            .await?;
        Ok((response.status().as_u16(), response.json().await?))
    }

    /// Creates (or updates) a merchant notifying `webhook_url`; returns its signing secret
    /// when the call created it.
    pub async fn merchant_with_webhook(
        &self,
        merchant_id: &str,
        webhook_url: &str,
    ) -> anyhow::Result<Option<String>> {
        let (status, body) = self
            .put_merchant(
                merchant_id,
                &serde_json::json!({
                    "webhook_url": webhook_url,
                    "notification_email": format!("ops@{merchant_id}.example"),
                }),
            )
            .await?;
        anyhow::ensure!(
            status == 200 || status == 201,
            "PUT merchant: {status} {body}"
        );
        Ok(body["webhook_secret"].as_str().map(str::to_string))
    }

    /// Binds API client `client_id` to each of `merchants` through the admin API
    /// (`PUT /v1/clients/{client_id}/merchants/{merchant_id}`), as an operator does: with
    /// authentication on, a client creates payments and reads statistics only for the merchants
    /// it is bound to. Every test that runs an authenticated gateway binds the clients it uses.
    pub async fn bind_client(&self, client_id: &str, merchants: &[&str]) -> anyhow::Result<()> {
        for merchant in merchants {
            let response = self
                .http
                .put(format!(
                    "{}/v1/clients/{client_id}/merchants/{merchant}",
                    self.gateway_url
                ))
                .bearer_auth(TEST_ADMIN_TOKEN)
                .send()
                .await?;
            let status = response.status().as_u16();
            anyhow::ensure!(
                status == 200 || status == 201,
                "binding client {client_id} to merchant {merchant}: {status} {}",
                response.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }
}

/// A valid payment body for `merchant`.
pub fn payment_body(merchant: &str, customer: &str, amount_minor: i64) -> Value {
    serde_json::json!({
        "merchant_id": merchant,
        "amount_minor": amount_minor,
        "currency": "EUR",
        "customer_id": customer,
        "payment_method": "card",
    })
}

/// Gateway settings for a test's schema and topics, on an ephemeral port, against the shared
/// broker and registry.
pub fn gateway_settings(
    database: &DatabaseSettings,
    topics: &TopicSettings,
) -> paystream_gateway::Settings {
    paystream_gateway::Settings {
        http: ephemeral_http(),
        gateway: paystream_gateway::GatewaySettings {
            outbox_poll_interval_ms: 100,
            // Tests drive thousands of anonymous requests; the limiter has its own tests.
            rate_limit: paystream_gateway::RateLimitSettings {
                requests_per_second: 0.0,
                ..Default::default()
            },
            ..Default::default()
        },
        database: database.clone(),
        kafka: kafka_settings(),
        schema_registry: SchemaRegistrySettings {
            url: registry_url(),
        },
        topics: topics.clone(),
        admin_token: Some(TEST_ADMIN_TOKEN.to_string().into()),
        secrets: test_secrets_settings(),
        retention: Default::default(),
    }
}

/// A gateway the test runs and stops on its own: a second replica on a stack's schema, or one
/// whose graceful shutdown is under test.
pub struct GatewayHandle {
    pub url: String,
    pub shutdown: Shutdown,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl GatewayHandle {
    /// Waits until the gateway refuses new connections (its listener closes when serving
    /// stops); fails after `timeout`, a bound against hanging, not a measurement.
    pub async fn wait_refusing(&self, timeout: Duration) -> anyhow::Result<()> {
        let fresh = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while fresh
            .get(format!("{}/health/live", self.url))
            .send()
            .await
            .is_ok()
        {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "still accepting after shutdown"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    pub async fn spawn(settings: paystream_gateway::Settings) -> anyhow::Result<Self> {
        let app = paystream_gateway::Application::build(settings).await?;
        let url = format!("http://127.0.0.1:{}", app.port());
        let shutdown = Shutdown::new();
        let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        Ok(Self {
            url,
            shutdown,
            task,
        })
    }

    /// Signals shutdown and waits (bounded) until the gateway has drained and stopped.
    pub async fn stop(self, timeout: Duration) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(timeout, self.task)
            .await
            .context("gateway did not stop in time")??
    }
}

/// Turns API-key authentication on with one key per client: `(client id, secret key)`.
/// The gateway is configured with the SHA-256 of each key, as in production.
pub fn require_api_keys(settings: &mut paystream_gateway::Settings, keys: &[(&str, &str)]) {
    use sha2::Digest;
    settings.gateway.auth.enabled = true;
    for (client, key) in keys {
        let hash = hex::encode(sha2::Sha256::digest(key.as_bytes()));
        settings
            .gateway
            .auth
            .api_keys
            .entry(client.to_string())
            .and_modify(|hashes| *hashes = format!("{hashes},{hash}"))
            .or_insert(hash);
    }
}
