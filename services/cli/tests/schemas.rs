//! `paystream schemas check | register` against an in-process schema registry (own Postgres
//! schema, port 0): an incompatible edit to a contract fails the command, and nothing is
//! registered.

use std::path::{Path, PathBuf};
use std::process::Output;

use paystream_core::config::{DatabaseSettings, HttpSettings};
use paystream_core::shutdown::Shutdown;
use paystream_schema_registry::{Application, Settings};
use serde_json::{json, Value};

const V1: &str = r#"{"type":"record","name":"Order","namespace":"paystream.test",
  "doc":"An order.","fields":[
    {"name":"id","type":"string","doc":"Order id."},
    {"name":"amount_minor","type":"long","doc":"Amount in minor units."}]}"#;

/// V1 plus an optional field: compatible under FULL_TRANSITIVE.
const V2_OPTIONAL: &str = r#"{"type":"record","name":"Order","namespace":"paystream.test",
  "doc":"An order.","fields":[
    {"name":"id","type":"string","doc":"Order id."},
    {"name":"amount_minor","type":"long","doc":"Amount in minor units."},
    {"name":"note","type":["null","string"],"default":null,"doc":"Free text."}]}"#;

/// V1 without the required `amount_minor`: v1 consumers could not read it.
const V2_REMOVED: &str = r#"{"type":"record","name":"Order","namespace":"paystream.test",
  "doc":"An order.","fields":[{"name":"id","type":"string","doc":"Order id."}]}"#;

struct Registry {
    url: String,
    db_schema: String,
    shutdown: Shutdown,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn spawn_registry() -> Registry {
    let db_schema = format!("cli_test_{}", uuid::Uuid::new_v4().simple());
    let app = Application::build(Settings {
        http: HttpSettings {
            host: "127.0.0.1".into(),
            port: 0,
        },
        database: DatabaseSettings {
            schema: Some(db_schema.clone()),
            ..Default::default()
        },
    })
    .await
    .expect("building the registry");
    let url = format!("http://127.0.0.1:{}", app.port());
    let shutdown = Shutdown::new();
    let server = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    Registry {
        url,
        db_schema,
        shutdown,
        server,
    }
}

impl Registry {
    async fn get(&self, path: &str) -> Value {
        reqwest::get(format!("{}{path}", self.url))
            .await
            .expect("GET failed")
            .json()
            .await
            .expect("a JSON body")
    }

    async fn cleanup(self) {
        self.shutdown.cancel();
        self.server.await.unwrap().unwrap();
        let pool = paystream_core::db::connect(&DatabaseSettings::default())
            .await
            .unwrap();
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.db_schema))
            .execute(&pool)
            .await
            .unwrap();
    }
}

/// A fresh directory holding `files` (name, content).
fn contracts_dir(files: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("paystream-schemas-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    dir
}

async fn paystream(registry: &Registry, args: &[&str], dir: Option<&Path>) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_paystream"));
    command
        .args(["--registry-url", &registry.url])
        .args(args)
        .env_remove("PAYSTREAM_SCHEMAS__COMPATIBILITY")
        .env_remove("PAYSTREAM_SCHEMAS__DIR")
        .env_remove("PAYSTREAM_TOPICS__PAYMENTS_REQUESTED")
        .env_remove("PAYSTREAM_TOPICS__PAYMENTS_OUTCOMES");
    if let Some(dir) = dir {
        command.arg("--dir").arg(dir);
    }
    command.output().await.expect("running paystream")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn an_incompatible_edit_fails_check_and_register() {
    let registry = spawn_registry().await;
    let subject = "orders.v1-value";

    let dir = contracts_dir(&[("orders.v1.avsc", V1)]);
    let out = paystream(&registry, &["schemas", "register"], Some(&dir)).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        registry.get(&format!("/config/{subject}")).await,
        json!({"compatibilityLevel": "FULL_TRANSITIVE"})
    );
    let out = paystream(&registry, &["schemas", "check"], Some(&dir)).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("registered as version 1"),
        "{}",
        text(&out)
    );

    // A compatible edit checks and registers as version 2.
    std::fs::write(dir.join("orders.v1.avsc"), V2_OPTIONAL).unwrap();
    let out = paystream(&registry, &["schemas", "check"], Some(&dir)).await;
    assert!(out.status.success(), "{}", text(&out));
    let out = paystream(&registry, &["schemas", "register"], Some(&dir)).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        registry.get(&format!("/subjects/{subject}/versions")).await,
        json!([1, 2])
    );

    // An incompatible edit fails both, naming the field, and registers nothing.
    std::fs::write(dir.join("orders.v1.avsc"), V2_REMOVED).unwrap();
    for command in ["check", "register"] {
        let out = paystream(&registry, &["schemas", command], Some(&dir)).await;
        assert!(!out.status.success(), "{command}: {}", text(&out));
        let output = text(&out);
        assert!(
            output.contains("FAIL") && output.contains("amount_minor"),
            "{command}: {output}"
        );
    }
    assert_eq!(
        registry.get(&format!("/subjects/{subject}/versions")).await,
        json!([1, 2])
    );

    // `check` is read-only: a subject kept at another level fails it; `register` resets it.
    std::fs::write(dir.join("orders.v1.avsc"), V2_OPTIONAL).unwrap();
    reqwest::Client::new()
        .put(format!("{}/config/{subject}", registry.url))
        .json(&json!({"compatibility": "NONE"}))
        .send()
        .await
        .unwrap();
    let out = paystream(&registry, &["schemas", "check"], Some(&dir)).await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("NONE"), "{}", text(&out));
    let out = paystream(&registry, &["schemas", "register"], Some(&dir)).await;
    assert!(out.status.success(), "{}", text(&out));
    let out = paystream(&registry, &["schemas", "check"], Some(&dir)).await;
    assert!(out.status.success(), "{}", text(&out));

    std::fs::remove_dir_all(dir).unwrap();
    registry.cleanup().await;
}

#[tokio::test]
async fn undocumented_or_invalid_contracts_fail_the_check() {
    let registry = spawn_registry().await;
    let undocumented = V1.replace(r#""doc":"Order id.""#, r#""order":"ascending""#);
    let dir = contracts_dir(&[("a.v1.avsc", &undocumented), ("b.v1.avsc", V1)]);
    let out = paystream(&registry, &["schemas", "register"], Some(&dir)).await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("field Order.id has no doc"),
        "{}",
        text(&out)
    );
    // All or nothing: the valid one was not registered either.
    assert_eq!(registry.get("/subjects").await, json!([]));

    let dir_invalid = contracts_dir(&[("c.v1.avsc", r#"{"type":"record","name":"C","doc":"c"}"#)]);
    let out = paystream(&registry, &["schemas", "check"], Some(&dir_invalid)).await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("42201"), "{}", text(&out));

    let empty = contracts_dir(&[]);
    let out = paystream(&registry, &["schemas", "check"], Some(&empty)).await;
    assert!(!out.status.success(), "{}", text(&out));

    for d in [dir, dir_invalid, empty] {
        std::fs::remove_dir_all(d).unwrap();
    }
    registry.cleanup().await;
}

#[tokio::test]
async fn the_shipped_contracts_register_and_check_clean() {
    let registry = spawn_registry().await;
    // At run time: a test binary reused from a shared target dir may come from another checkout.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let shipped = Path::new(&manifest_dir).join("../../schemas");
    // The built-in copy (no --dir), then the source tree: the same schemas, nothing new.
    let out = paystream(&registry, &["schemas", "register"], None).await;
    assert!(out.status.success(), "{}", text(&out));
    let out = paystream(&registry, &["schemas", "check"], Some(&shipped)).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("new version"), "{}", text(&out));
    let subjects = registry.get("/subjects").await;
    assert_eq!(
        subjects,
        json!([
            "analytics.payment-stats.v1-value",
            "notifications.sent.v1-value",
            "payments.outcomes.v1-value",
            "payments.requested.v1-value"
        ])
    );
    registry.cleanup().await;
}
