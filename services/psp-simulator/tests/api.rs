//! Black-box tests of the simulator's HTTP API: one server per test on an ephemeral port.

use paystream_core::config::HttpSettings;
use paystream_core::shutdown::Shutdown;
use paystream_psp_simulator::{
    Application, ChargeFilter, ChargeRecord, ConfigPatch, RecordStatus, Settings, SimulatorClient,
    SimulatorSettings,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

struct TestApp {
    base_url: String,
    http: reqwest::Client,
    psp: SimulatorClient,
    shutdown: Shutdown,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn spawn_app() -> TestApp {
    spawn_app_with(SimulatorSettings::default()).await
}

async fn spawn_app_with(psp: SimulatorSettings) -> TestApp {
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
struct Reply {
    status: StatusCode,
    replayed: bool,
    content_type: String,
    body: Value,
}

impl TestApp {
    async fn post_charge(&self, key: Option<&str>, body: &Value) -> Reply {
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

    async fn records(&self) -> Vec<ChargeRecord> {
        self.psp.charges(&ChargeFilter::all()).await.unwrap()
    }
}

fn charge_body(merchant_id: &str, customer_id: &str) -> Value {
    json!({
        "payment_id": format!("pay_{}", Uuid::new_v4().simple()),
        "merchant_id": merchant_id,
        "customer_id": customer_id,
        "amount_minor": 2599,
        "currency": "EUR",
        "payment_method": "card",
    })
}

fn new_key() -> String {
    Uuid::new_v4().to_string()
}

#[tokio::test]
async fn health_endpoints_answer_ok() {
    let app = spawn_app().await;
    for path in ["/health/live", "/health/ready"] {
        let response = app
            .http
            .get(format!("{}{path}", app.base_url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn a_charge_succeeds_and_is_recorded() {
    let app = spawn_app().await;
    let key = new_key();
    let body = charge_body("mer_1", "cus_1");

    let reply = app.post_charge(Some(&key), &body).await;

    assert_eq!(reply.status, StatusCode::OK);
    assert!(!reply.replayed);
    assert_eq!(reply.body["status"], "succeeded");
    assert_eq!(reply.body["decline_code"], Value::Null);
    assert_eq!(reply.body["payment_id"], body["payment_id"]);
    assert_eq!(reply.body["amount_minor"], 2599);
    assert_eq!(reply.body["currency"], "EUR");
    assert!(reply.body["charge_id"].as_str().unwrap().starts_with("ch_"));
    assert!(reply.body["created_at"].is_string());

    let records = app.records().await;
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.idempotency_key, key);
    assert_eq!(record.status, RecordStatus::Succeeded);
    assert_eq!(record.calls, 1);
    assert_eq!(
        record.charge_id.as_deref(),
        reply.body["charge_id"].as_str()
    );
}

#[tokio::test]
async fn replay_charges_once_and_returns_the_identical_body() {
    let app = spawn_app().await;
    let key = new_key();
    let body = charge_body("mer_1", "cus_1");

    let first = app.post_charge(Some(&key), &body).await;
    let second = app.post_charge(Some(&key), &body).await;

    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(second.status, StatusCode::OK);
    assert!(!first.replayed);
    assert!(second.replayed, "replay lacks Idempotent-Replayed: true");
    assert_eq!(first.body, second.body);

    let records = app.records().await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].calls, 2);
}

#[tokio::test]
async fn a_declined_charge_replays_as_declined() {
    let app = spawn_app().await;
    let key = new_key();
    let body = charge_body("mer_1", "cus_decline_1");

    let first = app.post_charge(Some(&key), &body).await;
    let second = app.post_charge(Some(&key), &body).await;

    assert_eq!(first.body["status"], "declined");
    assert!(second.replayed);
    assert_eq!(first.body, second.body);
}

#[tokio::test]
async fn concurrent_identical_requests_charge_once() {
    // Latency keeps all 50 calls in flight together.
    let app = spawn_app_with(SimulatorSettings {
        latency_ms: 50,
        latency_jitter_ms: 20,
        ..Default::default()
    })
    .await;
    let key = new_key();
    let body = charge_body("mer_1", "cus_1");

    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (http, url, key, body) = (
            app.http.clone(),
            format!("{}/v1/charges", app.base_url),
            key.clone(),
            body.clone(),
        );
        calls.spawn(async move {
            let response = http
                .post(url)
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = response.status();
            let replayed = response.headers().contains_key("idempotent-replayed");
            let body: Value = response.json().await.unwrap();
            (status, replayed, body)
        });
    }
    let replies = calls.join_all().await;

    assert!(replies.iter().all(|(status, ..)| *status == StatusCode::OK));
    assert_eq!(
        replies.iter().filter(|(_, replayed, _)| !replayed).count(),
        1
    );
    assert!(replies.iter().all(|(.., b)| *b == replies[0].2));

    let records = app.records().await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].calls, 50);
    assert!(records[0].has_charge());
}

#[tokio::test]
async fn same_key_with_a_different_body_is_422() {
    let app = spawn_app().await;
    let key = new_key();
    let body = charge_body("mer_1", "cus_1");
    let mut other = body.clone();
    other["amount_minor"] = json!(1);

    let first = app.post_charge(Some(&key), &body).await;
    let reused = app.post_charge(Some(&key), &other).await;

    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reused.content_type, "application/problem+json");
    assert_eq!(reused.body["code"], "idempotency_key_reused");
    let records = app.records().await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].amount_minor, 2599);
}

#[tokio::test]
async fn missing_idempotency_key_is_400_and_charges_nothing() {
    let app = spawn_app().await;

    let reply = app.post_charge(None, &charge_body("mer_1", "cus_1")).await;

    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.content_type, "application/problem+json");
    assert_eq!(reply.body["status"], 400);
    assert_eq!(reply.body["code"], "idempotency_key_missing");
    assert!(app.records().await.is_empty());
}

#[tokio::test]
async fn invalid_bodies_are_400() {
    let app = spawn_app().await;
    let mut zero = charge_body("mer_1", "cus_1");
    zero["amount_minor"] = json!(0);
    let mut missing_field = charge_body("mer_1", "cus_1");
    missing_field.as_object_mut().unwrap().remove("currency");

    for body in [zero, missing_field, json!("not an object")] {
        let reply = app.post_charge(Some(&new_key()), &body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(reply.body["code"], "invalid_request");
    }
    assert!(app.records().await.is_empty());
}

#[tokio::test]
async fn decline_trigger_declines_with_card_declined() {
    let app = spawn_app().await;

    let reply = app
        .post_charge(Some(&new_key()), &charge_body("mer_1", "cus_decline_abc"))
        .await;

    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["status"], "declined");
    assert_eq!(reply.body["decline_code"], "card_declined");
    let records = app.records().await;
    assert_eq!(records[0].status, RecordStatus::Declined);
    assert_eq!(records[0].decline_code.as_deref(), Some("card_declined"));
}

#[tokio::test]
async fn flaky_trigger_fails_the_first_call_then_succeeds() {
    let app = spawn_app().await;
    let key = new_key();
    let body = charge_body("mer_1", "cus_flaky_1");

    let first = app.post_charge(Some(&key), &body).await;
    assert_eq!(first.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(first.body["code"], "psp_unavailable");
    let records = app.records().await;
    assert_eq!(records[0].status, RecordStatus::FailedTransient);
    assert!(!records[0].has_charge());

    let second = app.post_charge(Some(&key), &body).await;
    assert_eq!(second.status, StatusCode::OK);
    assert!(
        !second.replayed,
        "the first successful answer is not a replay"
    );
    assert_eq!(second.body["status"], "succeeded");

    let third = app.post_charge(Some(&key), &body).await;
    assert!(third.replayed);

    let records = app.records().await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].status, RecordStatus::Succeeded);
    assert_eq!(records[0].calls, 3);
}

#[tokio::test]
async fn transient_failure_rate_one_fails_every_call_without_charging() {
    let app = spawn_app_with(SimulatorSettings {
        transient_failure_rate: 1.0,
        ..Default::default()
    })
    .await;
    let key = new_key();
    let body = charge_body("mer_1", "cus_1");

    for _ in 0..3 {
        let reply = app.post_charge(Some(&key), &body).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    let records = app.records().await;
    assert_eq!(records[0].calls, 3);
    assert_eq!(records[0].status, RecordStatus::FailedTransient);

    // Once the outage ends, a retry with the same key charges.
    app.psp
        .set_config(&ConfigPatch {
            transient_failure_rate: Some(0.0),
            ..Default::default()
        })
        .await
        .unwrap();
    let reply = app.post_charge(Some(&key), &body).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(app.records().await[0].calls, 4);
}

#[tokio::test]
async fn decline_rate_one_declines_every_charge() {
    let app = spawn_app().await;
    let knobs = app
        .psp
        .set_config(&ConfigPatch {
            decline_rate: Some(1.0),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(knobs.decline_rate, 1.0);

    for i in 0..10 {
        let reply = app
            .post_charge(Some(&new_key()), &charge_body("mer_1", &format!("cus_{i}")))
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body["status"], "declined");
        assert!(reply.body["decline_code"].is_string());
    }
    let records = app.records().await;
    assert_eq!(records.len(), 10);
    assert!(records.iter().all(|r| r.status == RecordStatus::Declined));
}

#[tokio::test]
async fn charges_filter_by_merchant_and_payment() {
    let app = spawn_app().await;
    let a1 = charge_body("mer_a", "cus_1");
    let b1 = charge_body("mer_b", "cus_1");
    let a2 = charge_body("mer_a", "cus_2");
    for body in [&a1, &b1, &a2] {
        let reply = app.post_charge(Some(&new_key()), body).await;
        assert_eq!(reply.status, StatusCode::OK);
    }

    let for_a = app
        .psp
        .charges(&ChargeFilter::merchant("mer_a"))
        .await
        .unwrap();
    let payments: Vec<&str> = for_a.iter().map(|r| r.payment_id.as_str()).collect();
    assert_eq!(
        payments,
        [
            a1["payment_id"].as_str().unwrap(),
            a2["payment_id"].as_str().unwrap()
        ]
    );

    let b_payment = b1["payment_id"].as_str().unwrap();
    let for_payment = app
        .psp
        .charges(&ChargeFilter::payment(b_payment))
        .await
        .unwrap();
    assert_eq!(for_payment.len(), 1);
    assert_eq!(for_payment[0].merchant_id, "mer_b");

    // The raw query string works too.
    let raw: Vec<Value> = app
        .http
        .get(format!("{}/charges?merchant_id=mer_b", app.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(raw.len(), 1);
    assert_eq!(raw[0]["payment_id"], b1["payment_id"]);

    assert!(app
        .psp
        .charges(&ChargeFilter::merchant("mer_none"))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn delete_charges_clears_the_ledger() {
    let app = spawn_app().await;
    app.post_charge(Some(&new_key()), &charge_body("mer_1", "cus_1"))
        .await;
    assert_eq!(app.records().await.len(), 1);

    app.psp.clear().await.unwrap();

    assert!(app.records().await.is_empty());
}

#[tokio::test]
async fn admin_config_round_trips_and_refuses_bad_values() {
    let app = spawn_app().await;
    assert_eq!(
        app.psp.config().await.unwrap(),
        SimulatorSettings::default()
    );

    let patched = app
        .psp
        .set_config(&ConfigPatch {
            latency_ms: Some(3),
            transient_failure_rate: Some(0.25),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(patched.latency_ms, 3);
    assert_eq!(patched.transient_failure_rate, 0.25);
    assert_eq!(patched.decline_rate, 0.0);
    assert_eq!(app.psp.config().await.unwrap(), patched);

    let refused = app
        .http
        .put(format!("{}/admin/config", app.base_url))
        .json(&json!({ "decline_rate": 1.5 }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let misspelt = app
        .http
        .put(format!("{}/admin/config", app.base_url))
        .json(&json!({ "decline_rte": 0.5 }))
        .send()
        .await
        .unwrap();
    assert_eq!(misspelt.status(), StatusCode::BAD_REQUEST);
    assert_eq!(app.psp.config().await.unwrap(), patched);
}

#[tokio::test]
async fn build_refuses_invalid_knobs() {
    let settings = Settings {
        http: HttpSettings {
            host: "127.0.0.1".into(),
            port: 0,
        },
        psp: SimulatorSettings {
            decline_rate: 2.0,
            ..Default::default()
        },
    };
    assert!(Application::build(settings).await.is_err());
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let settings = Settings {
        http: HttpSettings {
            host: "127.0.0.1".into(),
            port: 0,
        },
        psp: SimulatorSettings::default(),
    };
    let app = Application::build(settings).await.unwrap();
    let shutdown = Shutdown::new();
    let server = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    shutdown.cancel();
    let result = tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .expect("server did not stop")
        .unwrap();
    assert!(result.is_ok());
}
