//! What every API test shares: the application on an ephemeral port in a database schema of
//! its own ([`spawn_app`]), a client speaking the registry's content type, schemas to register
//! and assertions on Confluent-style answers.

use paystream_core::config::{DatabaseSettings, HttpSettings};
use paystream_core::shutdown::Shutdown;
use paystream_schema_registry::{Application, Settings};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

pub const PAYMENT_V1: &str = r#"{"type":"record","name":"Payment","namespace":"paystream.test",
  "fields":[{"name":"id","type":"string"},{"name":"amount_minor","type":"long"}]}"#;

/// PAYMENT_V1 with other whitespace, attribute order and name spelling: the same schema.
pub const PAYMENT_V1_REFORMATTED: &str = r#"{
    "fields": [
        { "type": "string", "name": "id" },
        { "name": "amount_minor", "type": "long" }
    ],
    "name": "paystream.test.Payment",
    "type": "record"
}"#;

pub const PAYMENT_V2: &str = r#"{"type":"record","name":"Payment","namespace":"paystream.test",
  "fields":[{"name":"id","type":"string"},{"name":"amount_minor","type":"long"},
            {"name":"currency","type":"string","default":"EUR"}]}"#;

/// PAYMENT_V2 plus an optional field: compatible with both under every level.
pub const PAYMENT_V3: &str = r#"{"type":"record","name":"Payment","namespace":"paystream.test",
  "fields":[{"name":"id","type":"string"},{"name":"amount_minor","type":"long"},
            {"name":"currency","type":"string","default":"EUR"},
            {"name":"note","type":["null","string"],"default":null}]}"#;

pub fn record_schema(name: &str) -> String {
    json!({
        "type": "record",
        "name": name,
        "namespace": "paystream.test",
        "fields": [{"name": "value", "type": "long"}]
    })
    .to_string()
}

pub fn new_db_schema() -> String {
    format!("sr_test_{}", uuid::Uuid::new_v4().simple())
}

pub struct TestApp {
    pub address: String,
    pub db_schema: String,
    pub client: reqwest::Client,
    pub shutdown: Shutdown,
    pub server: JoinHandle<anyhow::Result<()>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_in(new_db_schema()).await
}

/// Starts the registry on port 0 in database schema `db_schema` (created if missing).
pub async fn spawn_app_in(db_schema: String) -> TestApp {
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
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("GET failed")
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.client
            .delete(self.url(path))
            .send()
            .await
            .expect("DELETE failed")
    }

    pub async fn post_raw(
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

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.post_raw(path, Some(CONTENT_TYPE), &body.to_string())
            .await
    }

    /// `POST /subjects/{subject}/versions`; `subject` must already be URL-safe.
    pub async fn register(&self, subject: &str, schema: &str) -> reqwest::Response {
        self.post_json(
            &format!("/subjects/{subject}/versions"),
            &json!({ "schema": schema }),
        )
        .await
    }

    pub async fn register_ok(&self, subject: &str, schema: &str) -> i64 {
        let response = self.register(subject, schema).await;
        let body = json_ok(response).await;
        body["id"].as_i64().expect("an id")
    }

    pub async fn get_json(&self, path: &str) -> Value {
        json_ok(self.get(path).await).await
    }

    pub async fn put_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .put(self.url(path))
            .header("content-type", CONTENT_TYPE)
            .body(body.to_string())
            .send()
            .await
            .expect("PUT failed")
    }

    /// `PUT /config[/{subject}]` with `level`, asserting Confluent's echo.
    pub async fn set_level(&self, path: &str, level: &str) {
        let body = json_ok(
            self.put_json(path, &json!({ "compatibility": level }))
                .await,
        )
        .await;
        assert_eq!(body, json!({ "compatibility": level }));
    }

    /// `POST /compatibility/subjects/{subject}/versions/{version}?verbose=true`.
    pub async fn test_compatibility(&self, subject: &str, version: &str, schema: &str) -> Value {
        json_ok(
            self.post_json(
                &format!("/compatibility/subjects/{subject}/versions/{version}?verbose=true"),
                &json!({ "schema": schema }),
            )
            .await,
        )
        .await
    }

    pub async fn versions(&self, subject: &str) -> Value {
        json_ok(self.get(&format!("/subjects/{subject}/versions")).await).await
    }

    pub async fn stop(self) -> String {
        self.shutdown.cancel();
        self.server
            .await
            .expect("server task panicked")
            .expect("server failed");
        self.db_schema
    }

    /// Stops the server and drops the test's database schema.
    pub async fn cleanup(self) {
        let db_schema = self.stop().await;
        drop_db_schema(&db_schema).await;
    }
}

pub async fn drop_db_schema(db_schema: &str) {
    let pool = paystream_core::db::connect(&DatabaseSettings::default())
        .await
        .expect("connecting for cleanup");
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {db_schema} CASCADE"))
        .execute(&pool)
        .await
        .expect("dropping the test schema");
    pool.close().await;
}

pub async fn json_ok(response: reqwest::Response) -> Value {
    let status = response.status();
    let text = response.text().await.expect("reading body");
    assert_eq!(status, StatusCode::OK, "unexpected status, body: {text}");
    serde_json::from_str(&text).expect("a JSON body")
}

/// Asserts a Confluent-style error: HTTP status, `error_code` and a message.
pub async fn assert_error(response: reqwest::Response, status: u16, error_code: i64) -> Value {
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

/// A record `Evo` with `fields`.
pub fn evo(fields: &str) -> String {
    format!(r#"{{"type":"record","name":"Evo","namespace":"paystream.test","fields":[{fields}]}}"#)
}
