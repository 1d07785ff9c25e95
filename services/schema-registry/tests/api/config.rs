//! `/config`: the global and per-subject compatibility levels.

use crate::helpers::{assert_error, evo, json_ok, spawn_app, CONTENT_TYPE};
use serde_json::{json, Value};

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
