//! Schema identity and `/schemas/ids/{id}`: one id per schema, whatever the subject, the
//! formatting or the restart; schemas stored under older identity rules keep theirs.

use crate::helpers::{
    json_ok, new_db_schema, spawn_app, spawn_app_in, PAYMENT_V1, PAYMENT_V1_REFORMATTED,
    PAYMENT_V2, PAYMENT_V3,
};
use paystream_core::config::DatabaseSettings;
use serde_json::json;

#[tokio::test]
async fn identical_schema_keeps_its_id_without_a_new_version() {
    let app = spawn_app().await;

    let id = app.register_ok("payments-value", PAYMENT_V1).await;
    assert_eq!(id, 1, "ids start at 1");
    assert_eq!(app.register_ok("payments-value", PAYMENT_V1).await, id);
    assert_eq!(
        app.register_ok("payments-value", PAYMENT_V1_REFORMATTED)
            .await,
        id
    );
    assert_eq!(app.versions("payments-value").await, json!([1]));

    // The text is returned as first registered.
    let body = json_ok(app.get(&format!("/schemas/ids/{id}")).await).await;
    assert_eq!(body, json!({ "schema": PAYMENT_V1 }));

    app.cleanup().await;
}

#[tokio::test]
async fn same_schema_under_two_subjects_shares_one_id() {
    let app = spawn_app().await;

    let a = app.register_ok("a-value", PAYMENT_V1).await;
    let b = app.register_ok("b-value", PAYMENT_V1_REFORMATTED).await;
    assert_eq!(a, b);
    assert_eq!(app.versions("b-value").await, json!([1]));
    let subjects = json_ok(app.get("/subjects").await).await;
    assert_eq!(subjects, json!(["a-value", "b-value"]));
    let versions = json_ok(app.get(&format!("/schemas/ids/{a}/versions")).await).await;
    assert_eq!(
        versions,
        json!([{"subject": "a-value", "version": 1}, {"subject": "b-value", "version": 1}])
    );

    app.cleanup().await;
}

#[tokio::test]
async fn ids_are_stable_across_restarts() {
    let db_schema = new_db_schema();
    let app = spawn_app_in(db_schema.clone()).await;
    let v1 = app.register_ok("payments-value", PAYMENT_V1).await;
    let v2 = app.register_ok("payments-value", PAYMENT_V2).await;
    app.stop().await;

    let app = spawn_app_in(db_schema).await;
    assert_eq!(app.register_ok("other-value", PAYMENT_V1).await, v1);
    assert_eq!(app.register_ok("payments-value", PAYMENT_V2).await, v2);
    let body = json_ok(app.get(&format!("/schemas/ids/{v2}")).await).await;
    assert_eq!(body["schema"], PAYMENT_V2);
    let next = app.register_ok("payments-value", PAYMENT_V3).await;
    assert_eq!(next, v2 + 1);
    assert_eq!(app.versions("payments-value").await, json!([1, 2, 3]));

    app.cleanup().await;
}

#[tokio::test]
async fn identity_is_canonical_form_plus_defaults() {
    let app = spawn_app().await;
    let id = app.register_ok("payments-value", PAYMENT_V2).await;

    // Documentation only: same id, no new version, the first text is what is served.
    let documented = r#"{"type":"record","name":"Payment","namespace":"paystream.test",
      "doc":"A payment.","fields":[{"name":"id","type":"string","doc":"Payment id."},
        {"name":"amount_minor","type":"long"},
        {"name":"currency","type":"string","default":"EUR"}]}"#;
    assert_eq!(app.register_ok("payments-value", documented).await, id);
    assert_eq!(app.versions("payments-value").await, json!([1]));
    let found = json_ok(
        app.post_json("/subjects/payments-value", &json!({ "schema": documented }))
            .await,
    )
    .await;
    assert_eq!(found["schema"], PAYMENT_V2);

    // Another default is another schema: a reader of it fills in other values.
    let other_default = PAYMENT_V2.replace(r#""default":"EUR""#, r#""default":"USD""#);
    let other = app.register_ok("payments-value", &other_default).await;
    assert_ne!(other, id);
    assert_eq!(app.versions("payments-value").await, json!([1, 2]));
    app.cleanup().await;
}

#[tokio::test]
async fn schemas_stored_under_the_old_identity_keep_their_ids() {
    let db_schema = new_db_schema();
    let app = spawn_app_in(db_schema.clone()).await;
    app.stop().await;

    // Rows as the previous registry wrote them (identity scheme 1, other fingerprints): the
    // schema, a doc-only variant registered later, and a subject version of the first.
    let pool = paystream_core::db::connect(&DatabaseSettings {
        schema: Some(db_schema.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    let documented = PAYMENT_V1.replace(r#""fields""#, r#""doc":"A payment.","fields""#);
    let mut legacy_ids = Vec::new();
    for (text, fingerprint) in [(PAYMENT_V1, "legacy-1"), (documented.as_str(), "legacy-2")] {
        let id: i32 = sqlx::query_scalar(
            "INSERT INTO schema_registry_schemas (schema_type, schema, canonical_form, fingerprint) \
             VALUES ('AVRO', $1, 'legacy', $2) RETURNING id",
        )
        .bind(text)
        .bind(fingerprint)
        .fetch_one(&pool)
        .await
        .unwrap();
        legacy_ids.push(id);
    }
    sqlx::query(
        "INSERT INTO schema_registry_subject_versions (subject, version, schema_id) \
         VALUES ('legacy-value', 1, $1)",
    )
    .bind(legacy_ids[0])
    .execute(&pool)
    .await
    .unwrap();

    let app = spawn_app_in(db_schema).await;
    let schemes: Vec<i16> =
        sqlx::query_scalar("SELECT identity_scheme FROM schema_registry_schemas ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    // The older row holds the identity; the doc-only duplicate keeps its id but not the key.
    assert_eq!(schemes, vec![2, 1]);
    assert_eq!(
        app.register_ok("legacy-value", PAYMENT_V1_REFORMATTED)
            .await,
        i64::from(legacy_ids[0])
    );
    assert_eq!(app.versions("legacy-value").await, json!([1]));
    assert_eq!(
        app.register_ok("other-value", &documented).await,
        i64::from(legacy_ids[0])
    );
    let duplicate = json_ok(app.get(&format!("/schemas/ids/{}", legacy_ids[1])).await).await;
    assert_eq!(duplicate["schema"], documented);
    app.cleanup().await;
}
