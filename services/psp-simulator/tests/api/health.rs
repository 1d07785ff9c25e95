//! `/health/live` and `/health/ready`.

use reqwest::StatusCode;

use crate::helpers::spawn_app;

#[tokio::test]
async fn health_endpoints_answer_ok() {
    let app = spawn_app().await;
    for path in ["/health/live", "/health/ready"] {
        let response = app
            .http
            .get(format!("{}{path}", app.base_url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
}
