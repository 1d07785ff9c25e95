//! Declines and outages: the deterministic triggers and the decline and transient-failure
//! rates.

use paystream_psp_simulator::{ConfigPatch, RecordStatus, SimulatorSettings};
use reqwest::StatusCode;

use crate::helpers::{charge_body, new_key, spawn_app, spawn_app_with};

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
