//! What every API test shares: the simulator on an ephemeral port ([`spawn_app`]), stopped
//! when the test's [`TestApp`] drops, a raw HTTP client and the typed [`SimulatorClient`],
//! and charge bodies to send.

use paystream_core::config::HttpSettings;
use paystream_core::shutdown::Shutdown;
use paystream_psp_simulator::{
    Application, ChargeFilter, ChargeRecord, Settings, SimulatorClient, SimulatorSettings,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

pub struct TestApp {
    pub base_url: String,
    pub http: reqwest::Client,
    pub psp: SimulatorClient,
    pub shutdown: Shutdown,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(SimulatorSettings::default()).await
}

pub async fn spawn_app_with(psp: SimulatorSettings) -> TestApp {
    let settings = Settings {
        http: HttpSettings {
            host: "127.0.0.1".into(),
            port: 0,
        },
        psp,
    };
    let app = Application::build(settings)
        .await
        .expect("building the app");
    assert_ne!(app.port(), 0);
    let base_url = app.base_url();
    let shutdown = Shutdown::new();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let http = reqwest::Client::new();
    TestApp {
        psp: SimulatorClient::with_client(&base_url, http.clone()),
        base_url,
        http,
        shutdown,
    }
}

/// A response read to the end: status, replay header, JSON body.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub replayed: bool,
    pub content_type: String,
    pub body: Value,
}

impl TestApp {
    pub async fn post_charge(&self, key: Option<&str>, body: &Value) -> Reply {
        let mut request = self
            .http
            .post(format!("{}/v1/charges", self.base_url))
            .json(body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.expect("POST /v1/charges");
        let status = response.status();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let replayed = header("idempotent-replayed") == "true";
        let content_type = header("content-type");
        let body = response.json().await.expect("a JSON body");
        Reply {
            status,
            replayed,
            content_type,
            body,
        }
    }

    pub async fn records(&self) -> Vec<ChargeRecord> {
        self.psp.charges(&ChargeFilter::all()).await.unwrap()
    }
}

pub fn charge_body(merchant_id: &str, customer_id: &str) -> Value {
    json!({
        "payment_id": format!("pay_{}", Uuid::new_v4().simple()),
        "merchant_id": merchant_id,
        "customer_id": customer_id,
        "amount_minor": 2599,
        "currency": "EUR",
        "payment_method": "card",
    })
}

pub fn new_key() -> String {
    Uuid::new_v4().to_string()
}
