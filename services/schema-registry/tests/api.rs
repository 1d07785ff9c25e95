//! Black-box tests of the registry's REST API against Postgres. Each test runs the application
//! on an ephemeral port in its own database schema, dropped when the test passes (a failing
//! test leaves it behind for inspection).

use paystream_core::config::{DatabaseSettings, HttpSettings};
use paystream_core::shutdown::Shutdown;
use paystream_schema_registry::{Application, Settings};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

const PAYMENT_V1: &str = r#"{"type":"record","name":"Payment","namespace":"paystream.test",
  "fields":[{"name":"id","type":"string"},{"name":"amount_minor","type":"long"}]}"#;

/// PAYMENT_V1 with other whitespace, attribute order and name spelling: the same schema.
const PAYMENT_V1_REFORMATTED: &str = r#"{
    "fields": [
        { "type": "string", "name": "id" },
        { "name": "amount_minor", "type": "long" }
    ],
    "name": "paystream.test.Payment",
    "type": "record"
}"#;

const PAYMENT_V2: &str = r#"{"type":"record","name":"Payment","namespace":"paystream.test",
  "fields":[{"name":"id","type":"string"},{"name":"amount_minor","type":"long"},
            {"name":"currency","type":"string","default":"EUR"}]}"#;

/// PAYMENT_V2 plus an optional field: compatible with both under every level.
const PAYMENT_V3: &str = r#"{"type":"record","name":"Payment","namespace":"paystream.test",
  "fields":[{"name":"id","type":"string"},{"name":"amount_minor","type":"long"},
            {"name":"currency","type":"string","default":"EUR"},
            {"name":"note","type":["null","string"],"default":null}]}"#;

fn record_schema(name: &str) -> String {
    json!({
        "type": "record",
        "name": name,
        "namespace": "paystream.test",
        "fields": [{"name": "value", "type": "long"}]
    })
    .to_string()
}

fn new_db_schema() -> String {
    format!("sr_test_{}", uuid::Uuid::new_v4().simple())
}

struct TestApp {
    address: String,
    db_schema: String,
    client: reqwest::Client,
    shutdown: Shutdown,
    server: JoinHandle<anyhow::Result<()>>,
}

async fn spawn_app() -> TestApp {
    spawn_app_in(new_db_schema()).await
}

/// Starts the registry on port 0 in database schema `db_schema` (created if missing).
async fn spawn_app_in(db_schema: String) -> TestApp {
    let settings = Settings {
        http: HttpSettings {
            host: "127.0.0.1".into(),
            port: 0,
        },
        database: DatabaseSettings {
            schema: Some(db_schema.clone()),
            ..Default::default()
        },
    };
    let app = Application::build(settings)
        .await
        .expect("building the application");
    let address = format!("http://127.0.0.1:{}", app.port());
    let shutdown = Shutdown::new();
    let server = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestApp {
        address,
        db_schema,
        client: reqwest::Client::new(),
        shutdown,
        server,
    }
}

impl TestApp {
    fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("GET failed")
    }

    async fn delete(&self, path: &str) -> reqwest::Response {
        self.client
            .delete(self.url(path))
            .send()
            .await
            .expect("DELETE failed")
    }

    async fn post_raw(
        &self,
        path: &str,
        content_type: Option<&str>,
        body: &str,
    ) -> reqwest::Response {
        let mut request = self.client.post(self.url(path)).body(body.to_string());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.send().await.expect("POST failed")
    }

    async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.post_raw(path, Some(CONTENT_TYPE), &body.to_string())
            .await
    }

    /// `POST /subjects/{subject}/versions`; `subject` must already be URL-safe.
    async fn register(&self, subject: &str, schema: &str) -> reqwest::Response {
        self.post_json(
            &format!("/subjects/{subject}/versions"),
            &json!({ "schema": schema }),
        )
        .await
    }

    async fn register_ok(&self, subject: &str, schema: &str) -> i64 {
        let response = self.register(subject, schema).await;
        let body = json_ok(response).await;
        body["id"].as_i64().expect("an id")
    }

    async fn get_json(&self, path: &str) -> Value {
        json_ok(self.get(path).await).await
    }

    async fn put_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .put(self.url(path))
            .header("content-type", CONTENT_TYPE)
            .body(body.to_string())
            .send()
            .await
            .expect("PUT failed")
    }

    /// `PUT /config[/{subject}]` with `level`, asserting Confluent's echo.
    async fn set_level(&self, path: &str, level: &str) {
        let body = json_ok(
            self.put_json(path, &json!({ "compatibility": level }))
                .await,
        )
        .await;
        assert_eq!(body, json!({ "compatibility": level }));
    }

    /// `POST /compatibility/subjects/{subject}/versions/{version}?verbose=true`.
    async fn test_compatibility(&self, subject: &str, version: &str, schema: &str) -> Value {
        json_ok(
            self.post_json(
                &format!("/compatibility/subjects/{subject}/versions/{version}?verbose=true"),
                &json!({ "schema": schema }),
            )
            .await,
        )
        .await
    }

    async fn versions(&self, subject: &str) -> Value {
        json_ok(self.get(&format!("/subjects/{subject}/versions")).await).await
    }

    async fn stop(self) -> String {
        self.shutdown.cancel();
        self.server
            .await
            .expect("server task panicked")
            .expect("server failed");
        self.db_schema
    }

    /// Stops the server and drops the test's database schema.
    async fn cleanup(self) {
        let db_schema = self.stop().await;
        drop_db_schema(&db_schema).await;
    }
}

async fn drop_db_schema(db_schema: &str) {
    let pool = paystream_core::db::connect(&DatabaseSettings::default())
        .await
        .expect("connecting for cleanup");
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {db_schema} CASCADE"))
        .execute(&pool)
        .await
        .expect("dropping the test schema");
    pool.close().await;
}

async fn json_ok(response: reqwest::Response) -> Value {
    let status = response.status();
    let text = response.text().await.expect("reading body");
    assert_eq!(status, StatusCode::OK, "unexpected status, body: {text}");
    serde_json::from_str(&text).expect("a JSON body")
}

/// Asserts a Confluent-style error: HTTP status, `error_code` and a message.
async fn assert_error(response: reqwest::Response, status: u16, error_code: i64) -> Value {
    let actual = response.status().as_u16();
    let text = response.text().await.expect("reading body");
    assert_eq!(actual, status, "unexpected status, body: {text}");
    let body: Value = serde_json::from_str(&text).expect("a JSON error body");
    assert_eq!(body["error_code"], error_code, "body: {text}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "no message: {text}"
    );
    body
}

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
async fn config_types_root_and_health() {
    let app = spawn_app().await;

    let config = app.get("/config").await;
    assert_eq!(
        config.headers()["content-type"].to_str().unwrap(),
        CONTENT_TYPE
    );
    assert_eq!(
        json_ok(config).await,
        json!({"compatibilityLevel": "BACKWARD"})
    );
    assert_eq!(
        json_ok(
            app.get("/config/payments.requested.v1-value?defaultToGlobal=true")
                .await
        )
        .await,
        json!({"compatibilityLevel": "BACKWARD"})
    );
    assert_eq!(
        json_ok(app.get("/schemas/types").await).await,
        json!(["AVRO"])
    );
    assert_eq!(json_ok(app.get("/").await).await, json!({}));
    assert_eq!(app.get("/health/live").await.status(), StatusCode::OK);
    let ready = json_ok(app.get("/health/ready").await).await;
    assert_eq!(ready["status"], "ready");

    app.cleanup().await;
}

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

/// A record `Evo` with `fields`.
fn evo(fields: &str) -> String {
    format!(r#"{{"type":"record","name":"Evo","namespace":"paystream.test","fields":[{fields}]}}"#)
}

/// The evolutions the issue names: (name, old, new, registrable per level in LEVELS order).
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

#[tokio::test]
async fn config_is_stored_globally_and_per_subject() {
    let app = spawn_app().await;
    let level = |body: Value| body["compatibilityLevel"].as_str().unwrap().to_string();

    assert_eq!(level(json_ok(app.get("/config").await).await), "BACKWARD");
    app.set_level("/config", "FULL").await;
    assert_eq!(level(json_ok(app.get("/config").await).await), "FULL");

    // A subject without its own level: 40408, or the global one on request.
    assert_error(app.get("/config/s-value").await, 404, 40408).await;
    assert_eq!(
        level(json_ok(app.get("/config/s-value?defaultToGlobal=true").await).await),
        "FULL"
    );
    // Set before the subject exists, as Confluent allows; lower case accepted.
    let echoed = json_ok(
        app.put_json(
            "/config/s-value",
            &json!({ "compatibilityLevel": "forward" }),
        )
        .await,
    )
    .await;
    assert_eq!(echoed, json!({ "compatibility": "FORWARD" }));
    assert_eq!(
        level(json_ok(app.get("/config/s-value").await).await),
        "FORWARD"
    );
    // The subject's level wins over the global one: FORWARD lets a field without default in.
    app.register_ok("s-value", &evo(r#"{"name":"id","type":"string"}"#))
        .await;
    app.register_ok(
        "s-value",
        &evo(r#"{"name":"id","type":"string"},{"name":"n","type":"long"}"#),
    )
    .await;

    assert_eq!(
        level(json_ok(app.delete("/config/s-value").await).await),
        "FORWARD"
    );
    assert_error(app.delete("/config/s-value").await, 404, 40408).await;
    assert_error(app.delete("/config/never-value").await, 404, 40401).await;
    assert_eq!(
        level(json_ok(app.get("/config/s-value?defaultToGlobal=true").await).await),
        "FULL"
    );

    for bad in [json!({ "compatibility": "SIDEWAYS" }), json!({})] {
        assert_error(app.put_json("/config", &bad).await, 422, 42203).await;
        assert_error(app.put_json("/config/s-value", &bad).await, 422, 42203).await;
    }
    let malformed = app
        .client
        .put(app.url("/config"))
        .header("content-type", CONTENT_TYPE)
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_error(malformed, 400, 400).await;

    assert_eq!(level(json_ok(app.delete("/config").await).await), "FULL");
    assert_eq!(level(json_ok(app.get("/config").await).await), "BACKWARD");

    // A permanently deleted subject takes its level with it.
    app.set_level("/config/s-value", "NONE").await;
    json_ok(app.delete("/subjects/s-value").await).await;
    json_ok(app.delete("/subjects/s-value?permanent=true").await).await;
    assert_error(app.get("/config/s-value").await, 404, 40408).await;
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

mod converter {
    use super::*;
    use apache_avro::types::Value as AvroValue;
    use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
    use schema_registry_converter::async_impl::schema_registry::SrSettings;
    use schema_registry_converter::avro_common::get_supplied_schema;
    use schema_registry_converter::schema_registry_common::SubjectNameStrategy;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Payment {
        id: String,
        amount_minor: i64,
    }

    #[tokio::test]
    async fn schema_registry_converter_round_trip() {
        let app = spawn_app().await;
        let topic = "payments.requested.v1";
        let id = app.register_ok(&format!("{topic}-value"), PAYMENT_V1).await;

        let encoder = AvroEncoder::new(SrSettings::new(app.address.clone()));
        let payment = Payment {
            id: "pay_123".into(),
            amount_minor: 4200,
        };
        let strategy = SubjectNameStrategy::TopicNameStrategy(topic.to_string(), false);
        let bytes = encoder
            .encode_struct(payment.clone(), &strategy)
            .await
            .expect("encoding");
        assert_eq!(bytes[0], 0, "magic byte");
        assert_eq!(bytes[1..5], (id as u32).to_be_bytes(), "schema id");

        let decoder = AvroDecoder::new(SrSettings::new(app.address.clone()));
        let decoded = decoder.decode(Some(&bytes)).await.expect("decoding");
        assert!(matches!(decoded.value, AvroValue::Record(_)));
        let back: Payment = apache_avro::from_value(&decoded.value).expect("into Payment");
        assert_eq!(back, payment);

        // An encoder that registers its schema itself (POST with schemaType) gets the same id.
        let schema = apache_avro::Schema::parse_str(PAYMENT_V1_REFORMATTED).unwrap();
        let with_schema = SubjectNameStrategy::TopicNameStrategyWithSchema(
            topic.to_string(),
            false,
            get_supplied_schema(&schema),
        );
        let encoder = AvroEncoder::new(SrSettings::new(app.address.clone()));
        let again = encoder
            .encode_struct(payment, &with_schema)
            .await
            .expect("encoding with a supplied schema");
        assert_eq!(again, bytes);
        assert_eq!(app.versions(&format!("{topic}-value")).await, json!([1]));

        app.cleanup().await;
    }

    /// The registry calls schema_registry_converter offers, with their results and errors.
    #[tokio::test]
    async fn schema_registry_converter_calls() {
        use schema_registry_converter::async_impl::schema_registry::{
            get_all_subjects, get_all_versions, get_schema_by_id,
            get_schema_by_subject_and_version, is_compatible_schema, post_schema,
        };
        use schema_registry_converter::error::SRCError;
        use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};

        let app = spawn_app().await;
        let settings = SrSettings::new(app.address.clone());
        let supplied = |text: &str| SuppliedSchema::new(None, SchemaType::Avro, text.to_string());
        let subject = "converter-value".to_string();
        let error_text = |e: SRCError| {
            assert!(!e.retriable, "{e}");
            e.to_string()
        };

        let v1 = post_schema(&settings, subject.clone(), supplied(PAYMENT_V1))
            .await
            .expect("post_schema");
        let by_id = get_schema_by_id(v1.id, &settings).await.expect("by id");
        assert_eq!(
            (by_id.schema.as_str(), by_id.schema_type),
            (PAYMENT_V1, SchemaType::Avro)
        );

        assert!(
            is_compatible_schema(&settings, subject.clone(), supplied(PAYMENT_V2))
                .await
                .expect("compatibility of v2")
        );
        let v2 = post_schema(&settings, subject.clone(), supplied(PAYMENT_V2))
            .await
            .expect("post_schema v2");
        let latest = get_schema_by_subject_and_version(&settings, &subject, None)
            .await
            .expect("latest");
        assert_eq!((latest.id, latest.version), (v2.id, Some(2)));
        let first = get_schema_by_subject_and_version(&settings, &subject, Some(1))
            .await
            .expect("version 1");
        assert_eq!((first.id, first.schema.as_str()), (v1.id, PAYMENT_V1));
        assert_eq!(
            get_all_versions(&settings, subject.clone())
                .await
                .expect("versions"),
            vec![1, 2]
        );
        assert_eq!(
            get_all_subjects(&settings).await.expect("subjects"),
            vec![subject.clone()]
        );

        // A field without a default: BACKWARD refuses it, and says so to this client.
        let incompatible = PAYMENT_V3.replace(r#","default":null"#, "");
        assert!(
            !is_compatible_schema(&settings, subject.clone(), supplied(&incompatible))
                .await
                .expect("compatibility of an incompatible schema")
        );
        let refused = post_schema(&settings, subject.clone(), supplied(&incompatible))
            .await
            .expect_err("an incompatible schema registered");
        assert!(error_text(refused).contains("error_code: 409"));

        let missing = get_schema_by_id(999_999, &settings).await.unwrap_err();
        assert!(error_text(missing).contains("error_code: 40403"));
        let missing = get_schema_by_subject_and_version(&settings, &subject, Some(7))
            .await
            .unwrap_err();
        assert!(error_text(missing).contains("error_code: 40402"));
        let missing = get_all_versions(&settings, "nope-value".into())
            .await
            .unwrap_err();
        assert!(error_text(missing).contains("error_code: 40401"));
        let invalid = post_schema(&settings, subject.clone(), supplied(r#"{"type":"nope"}"#))
            .await
            .unwrap_err();
        assert!(error_text(invalid).contains("error_code: 42201"));
        app.cleanup().await;
    }

    /// The governance path: a consumer built against v1 of `PaymentRequested` (paystream-core's
    /// struct and codec) decodes events a producer wrote with a v2 that adds an optional field,
    /// and a v2 that removes a required field is refused with 409, also to the producer's
    /// client, which therefore never sends such a record.
    #[tokio::test]
    async fn payment_requested_evolves_under_the_project_level() {
        use paystream_core::avro::{AvroCodec, AvroError};
        use paystream_core::events::{PaymentRequested, SchemaFile, PAYMENT_REQUESTED_SCHEMA};

        let app = spawn_app().await;
        let topic = "payments.requested.v1";
        let subject = format!("{topic}-value");
        // What `paystream schemas register` sets for the project's subjects.
        app.set_level(&format!("/config/{subject}"), "FULL_TRANSITIVE")
            .await;
        let codec = AvroCodec::new(&app.address);
        let v1_id = codec
            .register(topic, &PAYMENT_REQUESTED_SCHEMA)
            .await
            .expect("registering v1");

        let mut v2: Value = serde_json::from_str(PAYMENT_REQUESTED_SCHEMA.avsc).unwrap();
        v2["fields"].as_array_mut().unwrap().push(json!({
            "name": "risk_score", "type": ["null", "int"], "default": null,
            "doc": "Fraud score, when one was computed."
        }));
        let v2_id = app.register_ok(&subject, &v2.to_string()).await;
        assert_ne!(i64::from(v1_id), v2_id);

        // A v2 producer: encodes with the subject's latest schema, v2.
        let event = PaymentRequested {
            event_id: "evt_1".into(),
            payment_id: "pay_1".into(),
            client_id: "client_1".into(),
            merchant_id: "m_1".into(),
            customer_id: "c_1".into(),
            amount_minor: 1999,
            currency: "EUR".into(),
            payment_method: "card".into(),
            requested_at: 1_700_000_000_000,
            customer_email: None,
        };
        let encoder = AvroEncoder::new(SrSettings::new(app.address.clone()));
        let bytes = encoder
            .encode(
                vec![
                    ("event_id", AvroValue::String(event.event_id.clone())),
                    ("payment_id", AvroValue::String(event.payment_id.clone())),
                    ("client_id", AvroValue::String(event.client_id.clone())),
                    ("merchant_id", AvroValue::String(event.merchant_id.clone())),
                    ("customer_id", AvroValue::String(event.customer_id.clone())),
                    ("amount_minor", AvroValue::Long(event.amount_minor)),
                    ("currency", AvroValue::String(event.currency.clone())),
                    (
                        "payment_method",
                        AvroValue::String(event.payment_method.clone()),
                    ),
                    (
                        "requested_at",
                        AvroValue::TimestampMillis(event.requested_at),
                    ),
                    (
                        "customer_email",
                        AvroValue::Union(0, Box::new(AvroValue::Null)),
                    ),
                    (
                        "risk_score",
                        AvroValue::Union(1, Box::new(AvroValue::Int(17))),
                    ),
                ],
                SubjectNameStrategy::TopicNameStrategy(topic.to_string(), false),
            )
            .await
            .expect("encoding a v2 event");
        assert_eq!(bytes[1..5], (v2_id as u32).to_be_bytes(), "written with v2");

        // The v1 consumer.
        let decoded: PaymentRequested = codec.decode(Some(&bytes)).await.expect("v1 decodes v2");
        assert_eq!(decoded, event);

        // v2 without the required customer_id: old consumers could not fill it in.
        let mut removed: Value = serde_json::from_str(PAYMENT_REQUESTED_SCHEMA.avsc).unwrap();
        removed["fields"]
            .as_array_mut()
            .unwrap()
            .retain(|f| f["name"] != "customer_id");
        let refused =
            assert_error(app.register(&subject, &removed.to_string()).await, 409, 409).await;
        let message = refused["message"].as_str().unwrap();
        assert!(
            message.contains("READER_FIELD_MISSING_DEFAULT_VALUE")
                && message.contains("customer_id"),
            "{message}"
        );
        let file = SchemaFile {
            name: "payments.requested.v1",
            full_name: "io.paystream.payments.v1.PaymentRequested",
            avsc: Box::leak(removed.to_string().into_boxed_str()),
        };
        let producer_side = codec.register(topic, &file).await;
        assert!(
            matches!(&producer_side, Err(e @ AvroError::Encode(_)) if !e.is_transient()),
            "{producer_side:?}"
        );
        assert_eq!(app.versions(&subject).await, json!([1, 2]));
        app.cleanup().await;
    }
}
