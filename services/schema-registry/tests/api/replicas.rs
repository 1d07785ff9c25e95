//! Two replicas sharing one database: ids, versions and compatibility checks stay exact
//! under concurrent registrations.

use crate::helpers::{evo, json_ok, new_db_schema, record_schema, spawn_app_in, CONTENT_TYPE};
use serde_json::json;

#[tokio::test]
async fn concurrent_registrations_across_two_replicas_get_distinct_ids_and_versions() {
    // Two replicas on one database: ids and versions must still be allocated exactly once.
    let db_schema = new_db_schema();
    let first = spawn_app_in(db_schema.clone()).await;
    let second = spawn_app_in(db_schema.clone()).await;
    let replicas = [first.address.clone(), second.address.clone()];
    let client = reqwest::Client::new();
    // Twenty unrelated records under one subject: only without compatibility checks.
    first.set_level("/config/concurrent-value", "NONE").await;

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let url = format!("{}/subjects/concurrent-value/versions", replicas[i % 2]);
        let client = client.clone();
        tasks.spawn(async move {
            let response = client
                .post(url)
                .header("content-type", CONTENT_TYPE)
                .body(json!({ "schema": record_schema(&format!("R{i}")) }).to_string())
                .send()
                .await
                .expect("POST failed");
            json_ok(response).await["id"].as_i64().expect("an id")
        });
    }
    let mut ids = tasks.join_all().await;
    ids.sort_unstable();
    assert_eq!(ids, (1..=20).collect::<Vec<i64>>(), "20 distinct ids");
    assert_eq!(
        first.versions("concurrent-value").await,
        json!((1..=20).collect::<Vec<i32>>())
    );

    // One new schema, raced under 20 subjects: one id.
    let shared = record_schema("Shared");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let url = format!("{}/subjects/s{i}-value/versions", replicas[i % 2]);
        let client = client.clone();
        let body = json!({ "schema": shared }).to_string();
        tasks.spawn(async move {
            let response = client
                .post(url)
                .header("content-type", CONTENT_TYPE)
                .body(body)
                .send()
                .await
                .expect("POST failed");
            json_ok(response).await["id"].as_i64().expect("an id")
        });
    }
    let ids = tasks.join_all().await;
    assert!(ids.iter().all(|id| *id == ids[0]), "one id: {ids:?}");

    second.stop().await;
    first.cleanup().await;
}

#[tokio::test]
async fn racing_incompatible_registrations_across_replicas_let_one_through() {
    // A and B are each compatible with v1 but not with each other: checked against the same
    // "latest" without the subject lock, both would get in.
    let db_schema = new_db_schema();
    let first = spawn_app_in(db_schema.clone()).await;
    let second = spawn_app_in(db_schema.clone()).await;
    let v1 = evo(r#"{"name":"id","type":"string"}"#);
    let a = evo(r#"{"name":"id","type":"string"},{"name":"n","type":"long","default":0}"#);
    let b = evo(r#"{"name":"id","type":"string"},{"name":"n","type":"string","default":""}"#);
    for round in 0..10 {
        let subject = format!("race-{round}-value");
        first.register_ok(&subject, &v1).await;
        let (ra, rb) = tokio::join!(first.register(&subject, &a), second.register(&subject, &b));
        let statuses = [ra.status().as_u16(), rb.status().as_u16()];
        let mut sorted = statuses;
        sorted.sort_unstable();
        assert_eq!(sorted, [200, 409], "round {round}: {statuses:?}");
        assert_eq!(first.versions(&subject).await, json!([1, 2]));
    }
    second.stop().await;
    first.cleanup().await;
}
