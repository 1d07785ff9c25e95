//! What probes and clients ask first: the root, `/schemas/types`, the default `/config` and
//! the health endpoints.

use crate::helpers::{json_ok, spawn_app, CONTENT_TYPE};
use reqwest::StatusCode;
use serde_json::json;

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
