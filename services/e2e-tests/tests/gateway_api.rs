//! The API surface: the OpenAPI document generated from the code, `GET /v1/payments/{id}`, and
//! the Prometheus metrics.

use std::time::Duration;

use chrono::{DateTime, Utc};
use paystream_e2e_tests::{expect_problem, json_post, payment_body, TestStack};
use serde_json::Value;
use uuid::Uuid;

/// Every route the gateway serves, by method.
const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/payments"),
    ("get", "/v1/payments/{id}"),
    ("put", "/v1/merchants/{id}"),
    ("get", "/v1/merchants/{id}"),
    ("post", "/v1/merchants/{id}/rotate-secret"),
    ("put", "/v1/clients/{client_id}/merchants/{merchant_id}"),
    ("delete", "/v1/clients/{client_id}/merchants/{merchant_id}"),
    ("get", "/v1/clients/{client_id}/merchants"),
    ("get", "/v1/analytics/merchants/{id}/stats"),
    ("get", "/health/live"),
    ("get", "/health/ready"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_route() -> anyhow::Result<()> {
    let stack = TestStack::spawn().await?;
    let response = stack
        .http
        .get(format!("{}/openapi.json", stack.gateway_url))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let doc: Value = response.json().await?;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");

    let paths = doc["paths"].as_object().unwrap();
    let mut documented: Vec<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|m| ["get", "post", "put", "patch", "delete"].contains(&m.as_str()))
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    documented.sort();
    let mut expected: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    expected.sort();
    assert_eq!(documented, expected);

    // Every documented operation is served (no route-not-found or method-not-allowed).
    for (method, path) in &documented {
        let url = format!(
            "{}{}",
            stack.gateway_url,
            path.replace("{id}", &Uuid::new_v4().to_string())
                .replace("{client_id}", "acme")
                .replace("{merchant_id}", "m_1")
        );
        let request = match method.as_str() {
            "post" => stack.http.post(&url),
            "put" => stack.http.put(&url),
            "delete" => stack.http.delete(&url),
            _ => stack.http.get(&url),
        };
        let response = request.send().await?;
        let status = response.status().as_u16();
        let body = response.text().await?;
        assert!(
            !body.contains("/problems/not-found") && !body.contains("/problems/method-not-allowed"),
            "{method} {path}: {status} {body}"
        );
    }

    let create = &doc["paths"]["/v1/payments"]["post"];
    let params: Vec<&str> = create["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(params, ["Idempotency-Key"]);
    for status in [
        "202", "400", "401", "403", "409", "413", "415", "422", "429",
    ] {
        assert!(
            create["responses"][status].is_object(),
            "{status} documented"
        );
    }
    assert_eq!(
        create["responses"]["409"]["content"]["application/problem+json"]["schema"]["$ref"],
        "#/components/schemas/Problem"
    );
    for schema in ["PaymentRequestBody", "PaymentView", "Problem"] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
    }
    let description = doc["info"]["description"].as_str().unwrap();
    assert!(
        description.contains("for 24 hours"),
        "retention published: {description}"
    );
    assert!(doc["components"]["securitySchemes"]["api_key"].is_object());
    stack.teardown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_shows_status_amounts_timestamps_and_failure_reason() -> anyhow::Result<()> {
    let stack = TestStack::spawn().await?;
    stack.spawn_processor().await?;
    let declined = stack
        .accept_payment(&payment_body("m_view", "cus_decline_7", 2500))
        .await?;
    let pending = stack.get_payment(declined).await?;
    assert!(["PENDING", "PROCESSING", "FAILED"].contains(&pending["status"].as_str().unwrap()));
    stack.wait_terminal(1, Duration::from_secs(60)).await?;

    let view = stack.get_payment(declined).await?;
    assert_eq!(view["id"], declined.to_string());
    assert_eq!(view["status"], "FAILED");
    assert_eq!(view["failure_reason"], "card_declined");
    assert_eq!(view["amount_minor"], 2500);
    assert_eq!(view["currency"], "EUR");
    assert_eq!(view["merchant_id"], "m_view");
    assert_eq!(view["customer_id"], "cus_decline_7");
    assert_eq!(view["payment_method"], "card");
    let created: DateTime<Utc> = view["created_at"].as_str().unwrap().parse()?;
    let updated: DateTime<Utc> = view["updated_at"].as_str().unwrap().parse()?;
    assert!(updated >= created);

    let unknown = stack
        .http
        .get(format!(
            "{}/v1/payments/{}",
            stack.gateway_url,
            Uuid::new_v4()
        ))
        .send()
        .await?;
    expect_problem(unknown, 404, "payment-not-found").await?;
    stack.teardown().await;
    Ok(())
}

fn metric(text: &str, line_prefix: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_route_and_status_replays_and_the_outbox() -> anyhow::Result<()> {
    let stack = TestStack::spawn().await?;
    let url = format!("{}/v1/payments", stack.gateway_url);
    let body = payment_body("m_metrics", "c_1", 100);
    for _ in 0..3 {
        let r = json_post(&stack.http, &url, Some("metrics-key"), None, &body)
            .send()
            .await?;
        assert_eq!(r.status(), 202);
    }
    let r = json_post(&stack.http, &url, None, None, &body)
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    let r = stack
        .http
        .get(format!("{url}/{}", Uuid::new_v4()))
        .send()
        .await?;
    assert_eq!(r.status(), 404);
    let r = stack
        .http
        .get(format!("{}/no/such/{}", stack.gateway_url, Uuid::new_v4()))
        .send()
        .await?;
    assert_eq!(r.status(), 404);

    let response = stack
        .http
        .get(format!("{}/metrics", stack.gateway_url))
        .send()
        .await?;
    assert!(response.headers()["content-type"]
        .to_str()?
        .starts_with("text/plain"));
    let text = response.text().await?;
    let requests = "http_server_requests_total";
    for (labels, n) in [
        (r#"{method="POST",route="/v1/payments",status="202"}"#, 3.0),
        (r#"{method="POST",route="/v1/payments",status="400"}"#, 1.0),
        (
            r#"{method="GET",route="/v1/payments/{id}",status="404"}"#,
            1.0,
        ),
        (r#"{method="GET",route="unmatched",status="404"}"#, 1.0),
    ] {
        assert_eq!(
            metric(&text, &format!("{requests}{labels} ")),
            Some(n),
            "{labels} in\n{text}"
        );
    }
    assert_eq!(
        metric(
            &text,
            r#"http_server_request_duration_seconds_count{method="POST",route="/v1/payments",status="202"} "#
        ),
        Some(3.0)
    );
    assert!(text.contains(
        r#"http_server_request_duration_seconds_bucket{method="POST",route="/v1/payments",status="202",le="10"} 3"#
    ));
    assert_eq!(
        metric(&text, "gateway_idempotent_replays_total "),
        Some(2.0)
    );
    assert_eq!(metric(&text, "gateway_payments_accepted_total "), Some(1.0));
    assert!(metric(&text, "gateway_outbox_backlog_rows ").is_some());
    assert!(metric(&text, "gateway_outbox_oldest_unpublished_age_seconds ").is_some());
    assert!(metric(&text, "gateway_outbox_parked_rows ").is_some());
    stack.teardown().await;
    Ok(())
}
