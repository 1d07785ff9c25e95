//! Compatibility levels, enforced on registration and answered by `/compatibility`.

use crate::helpers::{assert_error, evo, json_ok, spawn_app, CONTENT_TYPE, PAYMENT_V1, PAYMENT_V2};
use serde_json::json;

/// Confluent's levels, in the order of the expectation tables below.
const LEVELS: [&str; 7] = [
    "NONE",
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
];

/// The common Avro evolutions, with Confluent's verdict on each at every level: (name, old,
/// new, registrable per level in LEVELS order).
fn evolutions() -> Vec<(&'static str, String, String, [bool; 7])> {
    let id = r#"{"name":"id","type":"string"}"#;
    let status = |symbols: &str| {
        evo(&format!(
            r#"{id},{{"name":"s","type":{{"type":"enum","name":"Status","symbols":[{symbols}]}}}}"#
        ))
    };
    vec![
        (
            "add field with default",
            evo(id),
            evo(&format!(r#"{id},{{"name":"n","type":"long","default":0}}"#)),
            [true; 7],
        ),
        (
            "add field without default",
            evo(id),
            evo(&format!(r#"{id},{{"name":"n","type":"long"}}"#)),
            [true, false, false, true, true, false, false],
        ),
        (
            "remove required field",
            evo(&format!(r#"{id},{{"name":"n","type":"long"}}"#)),
            evo(id),
            [true, true, true, false, false, false, false],
        ),
        (
            "promote int to long",
            evo(r#"{"name":"n","type":"int"}"#),
            evo(r#"{"name":"n","type":"long"}"#),
            [true, true, true, false, false, false, false],
        ),
        (
            "enum symbol added",
            status(r#""A","B""#),
            status(r#""A","B","C""#),
            [true, true, true, false, false, false, false],
        ),
        (
            "enum symbol removed",
            status(r#""A","B","C""#),
            status(r#""A","B""#),
            [true, false, false, true, true, false, false],
        ),
        (
            "union widened",
            evo(r#"{"name":"x","type":["null","string"],"default":null}"#),
            evo(r#"{"name":"x","type":["null","string","long"],"default":null}"#),
            [true, true, true, false, false, false, false],
        ),
    ]
}

#[tokio::test]
async fn every_level_is_enforced_on_register_and_by_the_compatibility_endpoint() {
    let app = spawn_app().await;
    for (case, (name, old, new, expected)) in evolutions().into_iter().enumerate() {
        for (level, compatible) in LEVELS.into_iter().zip(expected) {
            let subject = format!("evo-{case}-{level}");
            app.set_level(&format!("/config/{subject}"), level).await;
            app.register_ok(&subject, &old).await;

            let verdict = app.test_compatibility(&subject, "latest", &new).await;
            assert_eq!(
                verdict["is_compatible"], compatible,
                "{name} under {level}: {verdict}"
            );
            assert_eq!(
                verdict["messages"].as_array().map(Vec::is_empty),
                Some(compatible),
                "{name} under {level}: {verdict}"
            );

            let response = app.register(&subject, &new).await;
            if compatible {
                json_ok(response).await;
                assert_eq!(
                    app.versions(&subject).await,
                    json!([1, 2]),
                    "{name} {level}"
                );
            } else {
                let body = assert_error(response, 409, 409).await;
                let message = body["message"].as_str().unwrap();
                assert!(
                    message.contains("incompatible") && message.contains(level),
                    "{name} under {level}: {message}"
                );
                assert_eq!(app.versions(&subject).await, json!([1]), "{name} {level}");
            }
        }
    }
    app.cleanup().await;
}

#[tokio::test]
async fn transitive_levels_check_every_live_version() {
    let app = spawn_app().await;
    let subject = "transitive-value";
    let v1 = evo(r#"{"name":"id","type":"string"},{"name":"n","type":"long"}"#);
    let v2 = evo(r#"{"name":"id","type":"string"}"#);
    // Reads v2's data (the default fills `n` in) but not v1's long `n`.
    let v3 = evo(r#"{"name":"id","type":"string"},{"name":"n","type":"string","default":""}"#);
    app.set_level(&format!("/config/{subject}"), "BACKWARD_TRANSITIVE")
        .await;
    app.register_ok(subject, &v1).await;
    app.register_ok(subject, &v2).await;

    let refused = assert_error(app.register(subject, &v3).await, 409, 409).await;
    let message = refused["message"].as_str().unwrap();
    assert!(message.contains("{oldSchemaVersion: 1}"), "{message}");
    assert!(message.contains("TYPE_MISMATCH"), "{message}");
    // Against version 2 alone it is fine; against the level (all versions) it is not.
    assert_eq!(
        app.test_compatibility(subject, "2", &v3).await["is_compatible"],
        true
    );
    let all = json_ok(
        app.post_json(
            &format!("/compatibility/subjects/{subject}/versions?verbose=true"),
            &json!({ "schema": v3 }),
        )
        .await,
    )
    .await;
    assert_eq!(all["is_compatible"], false, "{all}");

    // Soft-deleting v1 takes it out of the check.
    json_ok(app.delete(&format!("/subjects/{subject}/versions/1")).await).await;
    app.register_ok(subject, &v3).await;
    assert_eq!(app.versions(subject).await, json!([2, 3]));
    app.cleanup().await;
}

#[tokio::test]
async fn compatibility_endpoint_answers_like_confluent() {
    let app = spawn_app().await;
    app.register_ok("payments-value", PAYMENT_V1).await;

    // Nothing registered under the subject: anything is compatible with "latest".
    assert_eq!(
        app.test_compatibility("fresh-value", "latest", PAYMENT_V1)
            .await,
        json!({ "is_compatible": true, "messages": [] })
    );
    // Without verbose, no messages.
    let quiet = json_ok(
        app.post_json(
            "/compatibility/subjects/payments-value/versions/latest",
            &json!({ "schema": PAYMENT_V2 }),
        )
        .await,
    )
    .await;
    assert_eq!(quiet, json!({ "is_compatible": true }));
    let without_default = r#"{"type":"record","name":"Payment","namespace":"paystream.test",
      "fields":[{"name":"id","type":"string"},{"name":"amount_minor","type":"long"},
                {"name":"currency","type":"string"}]}"#;
    let verdict = app
        .test_compatibility("payments-value", "1", without_default)
        .await;
    assert_eq!(verdict["is_compatible"], false);
    let first = verdict["messages"][0].as_str().unwrap();
    assert!(
        first.contains("READER_FIELD_MISSING_DEFAULT_VALUE") && first.contains("currency"),
        "{verdict}"
    );

    let path = |subject: &str, version: &str| {
        format!("/compatibility/subjects/{subject}/versions/{version}")
    };
    let body = json!({ "schema": PAYMENT_V2 });
    assert_error(app.post_json(&path("nope", "1"), &body).await, 404, 40401).await;
    assert_error(
        app.post_json(&path("payments-value", "9"), &body).await,
        404,
        40402,
    )
    .await;
    assert_error(
        app.post_json(&path("payments-value", "abc"), &body).await,
        422,
        42202,
    )
    .await;
    assert_error(
        app.post_json(&path("payments-value", "latest"), &json!({ "schema": "{" }))
            .await,
        422,
        42201,
    )
    .await;
    assert_error(
        app.post_json(
            &path("payments-value", "latest"),
            &json!({ "schema": "syntax = \"proto3\";", "schemaType": "PROTOBUF" }),
        )
        .await,
        422,
        42201,
    )
    .await;
    assert_error(
        app.post_raw(
            &path("payments-value", "latest"),
            Some(CONTENT_TYPE),
            "{nope",
        )
        .await,
        400,
        400,
    )
    .await;
    app.cleanup().await;
}
