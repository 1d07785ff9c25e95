//! `/subjects`: registering versions, looking schemas up, reading, listing and deleting
//! subjects and versions.

use crate::helpers::{
    assert_error, evo, json_ok, record_schema, spawn_app, PAYMENT_V1, PAYMENT_V1_REFORMATTED,
    PAYMENT_V2,
};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn changed_schema_gets_a_new_version_and_id() {
    let app = spawn_app().await;

    let v1 = app.register_ok("payments-value", PAYMENT_V1).await;
    let v2 = app.register_ok("payments-value", PAYMENT_V2).await;
    assert_ne!(v1, v2);
    assert_eq!(app.versions("payments-value").await, json!([1, 2]));

    for latest in ["latest", "-1", "2"] {
        let body = json_ok(
            app.get(&format!("/subjects/payments-value/versions/{latest}"))
                .await,
        )
        .await;
        assert_eq!(
            body,
            json!({"subject": "payments-value", "version": 2, "id": v2, "schema": PAYMENT_V2}),
            "version {latest}"
        );
    }
    let first = json_ok(app.get("/subjects/payments-value/versions/1").await).await;
    assert_eq!(first["id"], v1);

    let raw = app
        .get("/subjects/payments-value/versions/latest/schema")
        .await;
    assert_eq!(raw.status(), StatusCode::OK);
    assert_eq!(raw.text().await.unwrap(), PAYMENT_V2);
    let raw = app.get(&format!("/schemas/ids/{v1}/schema")).await;
    assert_eq!(raw.text().await.unwrap(), PAYMENT_V1);

    app.cleanup().await;
}

#[tokio::test]
async fn lookup_finds_a_registered_schema_under_its_subject() {
    let app = spawn_app().await;
    let v1 = app.register_ok("payments-value", PAYMENT_V1).await;
    app.register_ok("payments-value", PAYMENT_V2).await;

    let found = json_ok(
        app.post_json(
            "/subjects/payments-value?normalize=false&deleted=false",
            &json!({ "schema": PAYMENT_V1_REFORMATTED, "schemaType": "AVRO" }),
        )
        .await,
    )
    .await;
    assert_eq!(
        found,
        json!({"subject": "payments-value", "version": 1, "id": v1, "schema": PAYMENT_V1})
    );

    let unknown_subject = app
        .post_json("/subjects/nope-value", &json!({ "schema": PAYMENT_V1 }))
        .await;
    assert_error(unknown_subject, 404, 40401).await;

    let other = record_schema("NotRegistered");
    let unknown_schema = app
        .post_json("/subjects/payments-value", &json!({ "schema": other }))
        .await;
    assert_error(unknown_schema, 404, 40403).await;

    app.cleanup().await;
}

#[tokio::test]
async fn subject_names_are_percent_decoded() {
    let app = spawn_app().await;

    let a = app
        .register_ok("payments.requested.v1-value", PAYMENT_V1)
        .await;
    let b = app.register_ok("team%2Fpayments%20v1", PAYMENT_V2).await;
    let subjects = json_ok(app.get("/subjects").await).await;
    assert_eq!(
        subjects,
        json!(["payments.requested.v1-value", "team/payments v1"])
    );
    let latest = json_ok(
        app.get("/subjects/payments.requested.v1-value/versions/latest")
            .await,
    )
    .await;
    assert_eq!(latest["id"], a);
    assert_eq!(latest["subject"], "payments.requested.v1-value");
    let latest = json_ok(app.get("/subjects/team%2Fpayments%20v1/versions/1").await).await;
    assert_eq!(latest["id"], b);
    assert_eq!(latest["subject"], "team/payments v1");

    app.cleanup().await;
}

#[tokio::test]
async fn deleting_a_subject_keeps_ids_resolvable() {
    let app = spawn_app().await;
    let v1 = app.register_ok("payments-value", PAYMENT_V1).await;
    app.register_ok("payments-value", PAYMENT_V2).await;
    app.register_ok("kept-value", PAYMENT_V1).await;

    assert_error(
        app.delete("/subjects/payments-value?permanent=true").await,
        404,
        40405,
    )
    .await;
    let deleted = json_ok(app.delete("/subjects/payments-value").await).await;
    assert_eq!(deleted, json!([1, 2]));
    assert_error(app.delete("/subjects/payments-value").await, 404, 40404).await;
    assert_error(
        app.get("/subjects/payments-value/versions").await,
        404,
        40401,
    )
    .await;
    assert_eq!(
        json_ok(app.get("/subjects").await).await,
        json!(["kept-value"])
    );
    assert_eq!(
        json_ok(app.get("/subjects?deleted=true").await).await,
        json!(["kept-value", "payments-value"])
    );
    // Decoders of old records still resolve the id (the converter asks with deleted=true).
    let body = json_ok(app.get(&format!("/schemas/ids/{v1}?deleted=true")).await).await;
    assert_eq!(body["schema"], PAYMENT_V1);

    // Re-registering starts a new version; the id is the schema's.
    assert_eq!(app.register_ok("payments-value", PAYMENT_V1).await, v1);
    assert_eq!(app.versions("payments-value").await, json!([3]));

    app.cleanup().await;
}

#[tokio::test]
async fn versions_are_soft_then_permanently_deleted() {
    let app = spawn_app().await;
    let subject = "versions-value";
    let v1 = evo(r#"{"name":"id","type":"string"}"#);
    let v2 = evo(r#"{"name":"id","type":"string"},{"name":"n","type":"long","default":0}"#);
    // Incompatible with v2 (n: long read as string), compatible with v1.
    let v3 = evo(r#"{"name":"id","type":"string"},{"name":"n","type":"string","default":""}"#);
    let v1_id = app.register_ok(subject, &v1).await;
    app.register_ok(subject, &v2).await;
    assert_error(app.register(subject, &v3).await, 409, 409).await;

    let path = |version: &str| format!("/subjects/{subject}/versions/{version}");
    assert_eq!(json_ok(app.delete(&path("2")).await).await, json!(2));
    assert_error(app.delete(&path("2")).await, 404, 40406).await;
    assert_eq!(app.versions(subject).await, json!([1]));
    assert_eq!(
        json_ok(
            app.get(&format!("/subjects/{subject}/versions?deleted=true"))
                .await
        )
        .await,
        json!([1, 2])
    );
    assert_error(app.get(&path("2")).await, 404, 40402).await;
    assert_eq!(
        json_ok(app.get(&format!("{}?deleted=true", path("2"))).await).await["version"],
        2
    );

    // v2 no longer counts: v3 is checked against v1 only.
    app.register_ok(subject, &v3).await;
    assert_eq!(app.versions(subject).await, json!([1, 3]));

    assert_error(
        app.delete(&format!("{}?permanent=true", path("1"))).await,
        404,
        40407,
    )
    .await;
    assert_eq!(
        json_ok(app.delete(&format!("{}?permanent=true", path("2"))).await).await,
        json!(2)
    );
    assert_eq!(
        json_ok(
            app.get(&format!("/subjects/{subject}/versions?deleted=true"))
                .await
        )
        .await,
        json!([1, 3])
    );
    assert_eq!(json_ok(app.delete(&path("latest")).await).await, json!(3));
    assert_error(app.delete(&path("9")).await, 404, 40402).await;
    assert_error(app.delete(&path("abc")).await, 422, 42202).await;
    assert_error(app.delete("/subjects/nope/versions/1").await, 404, 40401).await;
    // The schema id stays resolvable for records written with it.
    let body = json_ok(app.get(&format!("/schemas/ids/{v1_id}")).await).await;
    assert_eq!(body["schema"], v1);
    app.cleanup().await;
}

#[tokio::test]
async fn listings_filter_and_page_like_confluent() {
    let app = spawn_app().await;
    for subject in ["team-a-1", "team-a-2", "team-b-1"] {
        app.register_ok(subject, PAYMENT_V1).await;
    }
    app.register_ok("team-a-1", PAYMENT_V2).await;
    json_ok(app.delete("/subjects/team-a-2").await).await;
    json_ok(app.delete("/subjects/team-a-1/versions/1").await).await;

    assert_eq!(
        app.get_json("/subjects").await,
        json!(["team-a-1", "team-b-1"])
    );
    assert_eq!(
        app.get_json("/subjects?subjectPrefix=team-a").await,
        json!(["team-a-1"])
    );
    assert_eq!(
        app.get_json("/subjects?subjectPrefix=team-a&deleted=true")
            .await,
        json!(["team-a-1", "team-a-2"])
    );
    // Python confluent-kafka spells it deleted_only (and sends True).
    assert_eq!(
        app.get_json("/subjects?deleted=True&deleted_only=True")
            .await,
        json!(["team-a-2"])
    );
    assert_eq!(
        app.get_json("/subjects?offset=1&limit=1").await,
        json!(["team-b-1"])
    );
    assert_eq!(
        app.get_json("/subjects/team-a-1/versions").await,
        json!([2])
    );
    assert_eq!(
        app.get_json("/subjects/team-a-1/versions?deletedOnly=true")
            .await,
        json!([1])
    );
    assert_eq!(
        app.get_json("/subjects/team-b-1/versions?deletedOnly=true")
            .await,
        json!([])
    );
    assert_eq!(
        app.get_json("/subjects/team-a-1/versions?deleted=true&offset=1")
            .await,
        json!([2])
    );
    assert_error(
        app.get("/subjects/nope/versions?deletedOnly=true").await,
        404,
        40401,
    )
    .await;
    app.cleanup().await;
}
