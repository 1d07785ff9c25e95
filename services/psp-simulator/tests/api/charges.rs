//! `POST /v1/charges`: charging, idempotent replays, key reuse and request validation.

use paystream_psp_simulator::{RecordStatus, SimulatorSettings};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{charge_body, new_key, spawn_app, spawn_app_with};

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
