//! HTTP helpers for calls beyond [`crate::TestStack`]'s own: JSON requests, problem+json
//! assertions, the content type.

use serde_json::Value;

/// A request to `{base}{path}` with a JSON body, an optional Idempotency-Key and optional
/// bearer API key.
pub fn json_post(
    http: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    api_key: Option<&str>,
    body: &Value,
) -> reqwest::RequestBuilder {
    let mut request = http
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(k) = key {
        request = request.header("Idempotency-Key", k);
    }
    if let Some(k) = api_key {
        request = request.bearer_auth(k);
    }
    request
}

/// Asserts a problem+json response with `status` and problem type `slug`; returns the body.
pub async fn expect_problem(
    response: reqwest::Response,
    status: u16,
    slug: &str,
) -> anyhow::Result<Value> {
    anyhow::ensure!(
        response.status().as_u16() == status,
        "expected {status} {slug}, got {}: {}",
        response.status(),
        response.text().await.unwrap_or_default()
    );
    let content_type = content_type(&response);
    anyhow::ensure!(
        content_type == "application/problem+json",
        "content type {content_type}"
    );
    let body: Value = response.json().await?;
    anyhow::ensure!(
        body["type"] == format!("https://paystream.dev/problems/{slug}")
            && body["status"] == status,
        "unexpected problem {body}"
    );
    Ok(body)
}

/// The response's `Content-Type`, or "" without one.
pub fn content_type(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}
