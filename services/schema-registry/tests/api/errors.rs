//! Confluent's error codes for missing things, invalid schemas and malformed requests: client
//! errors, never a 500.

use crate::helpers::{assert_error, json_ok, spawn_app, CONTENT_TYPE, PAYMENT_V1};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn missing_things_get_confluent_error_codes() {
    let app = spawn_app().await;
    app.register_ok("payments-value", PAYMENT_V1).await;

    assert_error(app.get("/subjects/nope/versions").await, 404, 40401).await;
    assert_error(app.get("/subjects/nope/versions/latest").await, 404, 40401).await;
    assert_error(app.get("/subjects/nope/versions/1").await, 404, 40401).await;
    assert_error(
        app.get("/subjects/payments-value/versions/9").await,
        404,
        40402,
    )
    .await;
    assert_error(app.get("/schemas/ids/999").await, 404, 40403).await;
    assert_error(app.get("/schemas/ids/999/schema").await, 404, 40403).await;
    assert_error(app.get("/schemas/ids/abc").await, 404, 40403).await;
    for bad in ["0", "-2", "abc", "99999999999"] {
        assert_error(
            app.get(&format!("/subjects/payments-value/versions/{bad}"))
                .await,
            422,
            42202,
        )
        .await;
    }
    assert_error(app.get("/no/such/route").await, 404, 404).await;
    assert_error(app.delete("/schemas/types").await, 405, 405).await;
    // Soft delete with nothing to delete.
    assert_error(app.delete("/subjects/nope").await, 404, 40401).await;

    app.cleanup().await;
}

#[tokio::test]
async fn invalid_schemas_are_42201() {
    let app = spawn_app().await;

    for bad in [
        "not json",
        r#"{"type":"record","name":"A"}"#,
        r#"{"type":"record","name":"A","fields":[{"name":"x","type":"nope"}]}"#,
        "",
    ] {
        assert_error(app.register("s-value", bad).await, 422, 42201).await;
    }
    let protobuf = app
        .post_json(
            "/subjects/s-value/versions",
            &json!({ "schema": "syntax = \"proto3\";", "schemaType": "PROTOBUF" }),
        )
        .await;
    let body = assert_error(protobuf, 422, 42201).await;
    assert!(body["message"].as_str().unwrap().contains("AVRO"), "{body}");
    let references = app
        .post_json(
            "/subjects/s-value/versions",
            &json!({
                "schema": PAYMENT_V1,
                "references": [{"name": "x", "subject": "y", "version": 1}]
            }),
        )
        .await;
    assert_error(references, 422, 42201).await;
    // Nothing was stored on the way.
    assert_error(app.get("/subjects/s-value/versions").await, 404, 40401).await;
    assert_eq!(json_ok(app.get("/subjects").await).await, json!([]));

    app.cleanup().await;
}

#[tokio::test]
async fn malformed_bodies_are_client_errors_never_500() {
    let app = spawn_app().await;
    let path = "/subjects/s-value/versions";

    assert_error(
        app.post_raw(path, Some(CONTENT_TYPE), "{not json").await,
        400,
        400,
    )
    .await;
    assert_error(app.post_raw(path, Some(CONTENT_TYPE), "").await, 400, 400).await;
    assert_error(
        app.post_raw(path, Some(CONTENT_TYPE), r#"{"schema": 5}"#)
            .await,
        422,
        422,
    )
    .await;
    assert_error(app.post_raw(path, Some(CONTENT_TYPE), "{}").await, 422, 422).await;
    assert_error(
        app.post_raw(path, Some(CONTENT_TYPE), "[1,2]").await,
        422,
        422,
    )
    .await;
    assert_error(
        app.post_raw("/subjects/s-value", Some(CONTENT_TYPE), "nope")
            .await,
        400,
        400,
    )
    .await;
    assert_error(
        app.post_raw(
            path,
            Some("text/plain"),
            &json!({"schema": PAYMENT_V1}).to_string(),
        )
        .await,
        415,
        415,
    )
    .await;
    // Subject names with control characters cannot be stored (Postgres refuses NUL).
    assert_error(
        app.post_json("/subjects/a%00b/versions", &json!({ "schema": PAYMENT_V1 }))
            .await,
        422,
        42208,
    )
    .await;
    assert_error(app.get("/subjects/a%00b/versions/latest").await, 404, 40401).await;
    // Undecodable percent-encoding in a path.
    let bad_utf8 = app.get("/subjects/%FF/versions").await;
    assert_eq!(bad_utf8.status(), StatusCode::BAD_REQUEST);

    // Every accepted content type, and none at all, works.
    let body = json!({ "schema": PAYMENT_V1 }).to_string();
    for content_type in [
        Some(CONTENT_TYPE),
        Some("application/vnd.schemaregistry+json"),
        Some("application/json"),
        Some("application/json; charset=utf-8"),
        None,
    ] {
        let response = app.post_raw(path, content_type, &body).await;
        assert_eq!(
            json_ok(response).await,
            json!({"id": 1}),
            "{content_type:?}"
        );
    }

    app.cleanup().await;
}
