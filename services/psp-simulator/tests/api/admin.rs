//! `/admin/config`: the behaviour knobs at runtime.

use paystream_psp_simulator::{ConfigPatch, SimulatorSettings};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn admin_config_round_trips_and_refuses_bad_values() {
    let app = spawn_app().await;
    assert_eq!(
        app.psp.config().await.unwrap(),
        SimulatorSettings::default()
    );

    let patched = app
        .psp
        .set_config(&ConfigPatch {
            latency_ms: Some(3),
            transient_failure_rate: Some(0.25),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(patched.latency_ms, 3);
    assert_eq!(patched.transient_failure_rate, 0.25);
    assert_eq!(patched.decline_rate, 0.0);
    assert_eq!(app.psp.config().await.unwrap(), patched);

    let refused = app
        .http
        .put(format!("{}/admin/config", app.base_url))
        .json(&json!({ "decline_rate": 1.5 }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let misspelt = app
        .http
        .put(format!("{}/admin/config", app.base_url))
        .json(&json!({ "decline_rte": 0.5 }))
        .send()
        .await
        .unwrap();
    assert_eq!(misspelt.status(), StatusCode::BAD_REQUEST);
    assert_eq!(app.psp.config().await.unwrap(), patched);
}
