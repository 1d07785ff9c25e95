//! Hostile input and operational limits: problem details for every refusal, authentication,
//! rate limits, request timeouts and graceful shutdown.

use std::time::Duration;

use paystream_e2e_tests::{
    count, expect_problem, gateway_settings, json_post, payment_body, require_api_keys,
    GatewayHandle, PaymentsLock, TestStack,
};
use paystream_gateway::rate_limit::PerIpLimitSettings;
use serde_json::{json, Value};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_a_problem_with_a_stable_type() -> anyhow::Result<()> {
    let stack = TestStack::spawn().await?;
    let url = format!("{}/v1/payments", stack.gateway_url);
    let valid = payment_body("m_1", "c_1", 100);
    let with = |field: &str, value: Value| {
        let mut body = valid.clone();
        body[field] = value;
        body
    };
    let post = |body: &Value| json_post(&stack.http, &url, Some("hostile"), None, body);
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        (
            "body over 64 KiB",
            post(&valid).body("x".repeat(64 * 1024 + 1)),
            413,
            "payload-too-large",
        ),
        (
            "text/plain",
            stack
                .http
                .post(&url)
                .header("Idempotency-Key", "k")
                .header("content-type", "text/plain")
                .body(valid.to_string()),
            415,
            "unsupported-media-type",
        ),
        (
            "no content type",
            stack
                .http
                .post(&url)
                .header("Idempotency-Key", "k")
                .body(valid.to_string()),
            415,
            "unsupported-media-type",
        ),
        (
            "truncated JSON",
            post(&valid).body("{\"merchant_id\": \"m_1\",\n \"amount_minor\": 1"),
            400,
            "malformed-json",
        ),
        (
            "not JSON",
            post(&valid).body("merchant_id=m_1"),
            400,
            "malformed-json",
        ),
        (
            "unknown field",
            post(&with("surprise", json!(1))),
            422,
            "validation-error",
        ),
        (
            "missing field",
            post(&json!({"merchant_id": "m_1"})),
            422,
            "validation-error",
        ),
        (
            "zero amount",
            post(&with("amount_minor", json!(0))),
            422,
            "validation-error",
        ),
        (
            "negative amount",
            post(&with("amount_minor", json!(-5))),
            422,
            "validation-error",
        ),
        (
            "fractional amount",
            post(&with("amount_minor", json!(10.5))),
            422,
            "validation-error",
        ),
        (
            "amount as string",
            post(&with("amount_minor", json!("100"))),
            422,
            "validation-error",
        ),
        (
            "amount above maximum",
            post(&with("amount_minor", json!(100_000_001))),
            422,
            "validation-error",
        ),
        (
            "amount beyond i64",
            post(&with("amount_minor", json!(u64::MAX))),
            422,
            "validation-error",
        ),
        (
            "lower-case currency",
            post(&with("currency", json!("eur"))),
            422,
            "validation-error",
        ),
        (
            "unknown currency",
            post(&with("currency", json!("XYZ"))),
            422,
            "validation-error",
        ),
        (
            "id too long",
            post(&with("merchant_id", json!("m".repeat(65)))),
            422,
            "validation-error",
        ),
        (
            "id with bad characters",
            post(&with("customer_id", json!("c 1;DROP"))),
            422,
            "validation-error",
        ),
        (
            "unknown payment method",
            post(&with("payment_method", json!("cash"))),
            422,
            "validation-error",
        ),
        (
            "unknown route",
            stack.http.get(format!("{}/v1/nothing", stack.gateway_url)),
            404,
            "not-found",
        ),
        (
            "wrong method",
            stack.http.delete(&url),
            405,
            "method-not-allowed",
        ),
        (
            "unknown payment",
            stack.http.get(format!("{url}/{}", Uuid::new_v4())),
            404,
            "payment-not-found",
        ),
        (
            "payment id not a uuid",
            stack.http.get(format!("{url}/{}", "x".repeat(300))),
            404,
            "payment-not-found",
        ),
    ];
    for (name, request, status, slug) in cases {
        let problem = expect_problem(request.send().await?, status, slug)
            .await
            .map_err(|e| e.context(name))?;
        assert!(
            problem["title"].is_string() && problem["detail"].is_string(),
            "{name}"
        );
        if slug == "validation-error" {
            assert!(
                problem["errors"].as_array().is_some_and(|e| !e.is_empty()),
                "{name}"
            );
        }
    }

    // The parse position of malformed JSON.
    let truncated = post(&valid)
        .body("{\"merchant_id\": \"m_1\",\n \"amount_minor\": }")
        .send()
        .await?;
    let problem = expect_problem(truncated, 400, "malformed-json").await?;
    assert_eq!(
        problem["position"],
        json!({"line": 2, "column": 18}),
        "{problem}"
    );
    // Every invalid field is named.
    let invalid = post(
        &json!({"merchant_id": "", "amount_minor": 0, "currency": "EURO",
                               "customer_id": "c_1", "payment_method": "card"}),
    )
    .send()
    .await?;
    let problem = expect_problem(invalid, 422, "validation-error").await?;
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["merchant_id", "amount_minor", "currency"]);

    // Refused requests stored nothing: the key still works for a valid request.
    assert_eq!(post(&valid).send().await?.status(), 202);
    stack.teardown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_required_when_authentication_is_on() -> anyhow::Result<()> {
    // Two keys for one client: rotation.
    let stack = TestStack::spawn_with(|s| {
        require_api_keys(s, &[("acme", "old-secret"), ("acme", "new-secret")])
    })
    .await?;
    stack.bind_client("acme", &["m_auth"]).await?;
    let url = format!("{}/v1/payments", stack.gateway_url);
    let body = payment_body("m_auth", "c_1", 100);

    let missing = json_post(&stack.http, &url, Some("a1"), None, &body)
        .send()
        .await?;
    assert_eq!(
        missing.headers()["www-authenticate"],
        "Bearer realm=\"paystream\""
    );
    expect_problem(missing, 401, "unauthorized").await?;
    for wrong in ["wrong", "old-secret2", "OLD-SECRET"] {
        let r = json_post(&stack.http, &url, Some("a1"), Some(wrong), &body)
            .send()
            .await?;
        expect_problem(r, 401, "unauthorized").await?;
    }
    let basic = stack
        .http
        .get(format!("{url}/{}", Uuid::new_v4()))
        .basic_auth("acme", Some("new-secret"))
        .send()
        .await?;
    expect_problem(basic, 401, "unauthorized").await?;

    for (key, secret) in [("a1", "old-secret"), ("a2", "new-secret")] {
        let r = json_post(&stack.http, &url, Some(key), Some(secret), &body)
            .send()
            .await?;
        assert_eq!(r.status(), 202);
    }
    let owners: Vec<String> = sqlx::query_scalar("SELECT DISTINCT client_id FROM payments")
        .fetch_all(&stack.pool)
        .await?;
    assert_eq!(
        owners,
        ["acme"],
        "payments carry the matched key's client id"
    );

    // Operations endpoints stay open.
    for path in ["/health/live", "/metrics", "/openapi.json"] {
        let r = stack
            .http
            .get(format!("{}{path}", stack.gateway_url))
            .send()
            .await?;
        assert_eq!(r.status(), 200, "{path}");
    }
    stack.teardown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_has_its_own_token_bucket() -> anyhow::Result<()> {
    let stack = TestStack::spawn_with(|s| {
        s.gateway.rate_limit.requests_per_second = 0.5;
        s.gateway.rate_limit.burst = 3;
        require_api_keys(s, &[("acme", "acme-secret"), ("globex", "globex-secret")]);
    })
    .await?;
    let get = |secret: &str| {
        stack
            .http
            .get(format!(
                "{}/v1/payments/{}",
                stack.gateway_url,
                Uuid::new_v4()
            ))
            .bearer_auth(secret)
            .send()
    };
    for _ in 0..3 {
        assert_eq!(get("acme-secret").await?.status(), 404, "within the burst");
    }
    let limited = get("acme-secret").await?;
    let retry_after: u64 = limited.headers()["retry-after"].to_str()?.parse()?;
    assert!(
        (1..=2).contains(&retry_after),
        "next token in about 2 s: {retry_after}"
    );
    expect_problem(limited, 429, "rate-limited").await?;
    // POSTs draw from the same bucket and are refused before anything runs.
    let post = json_post(
        &stack.http,
        &format!("{}/v1/payments", stack.gateway_url),
        Some("rl"),
        Some("acme-secret"),
        &payment_body("m_rl", "c_1", 100),
    )
    .send()
    .await?;
    expect_problem(post, 429, "rate-limited").await?;
    // Another client is not affected.
    assert_eq!(get("globex-secret").await?.status(), 404);

    let metrics = stack
        .http
        .get(format!("{}/metrics", stack.gateway_url))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains(r#"gateway_rate_limited_total{client="acme"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"route="/v1/payments/{id}",status="429""#),
        "{metrics}"
    );
    stack.teardown().await;
    Ok(())
}

/// A client whose connections come from `ip` (any 127.0.0.0/8 address works on Linux).
fn client_from(ip: [u8; 4]) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(ip))
        .build()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_api_keys_from_one_address_gets_429() -> anyhow::Result<()> {
    // A low limit refilled slowly, so the counts below do not depend on timing.
    let stack = TestStack::spawn_with(|s| {
        // The per-client limit is out of the way: wrong keys never reach it.
        s.gateway.rate_limit.requests_per_second = 100.0;
        s.gateway.rate_limit.burst = 100;
        s.gateway.rate_limit.per_ip = PerIpLimitSettings {
            requests_per_second: 0.1,
            burst: 3,
        };
        require_api_keys(s, &[("acme", "acme-secret")]);
    })
    .await?;
    let guesser = client_from([127, 0, 0, 1])?;
    let get = |http: &reqwest::Client, secret: &str| {
        http.get(format!(
            "{}/v1/payments/{}",
            stack.gateway_url,
            Uuid::new_v4()
        ))
        .bearer_auth(secret)
        .send()
    };
    let mut statuses = Vec::new();
    for i in 0..10 {
        let r = get(&guesser, &format!("guess-{i}")).await?;
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            let retry_after: u64 = r.headers()["retry-after"].to_str()?.parse()?;
            assert!(retry_after >= 1, "Retry-After {retry_after}");
            expect_problem(r, 429, "rate-limited").await?;
            break;
        }
        expect_problem(r, 401, "unauthorized").await?;
    }
    assert_eq!(
        statuses,
        [401, 401, 401, 429],
        "wrong keys draw from the address's bucket"
    );
    // The address stays limited whatever key it presents; another address is not affected.
    assert_eq!(get(&guesser, "acme-secret").await?.status(), 429);
    let other = client_from([127, 0, 0, 2])?;
    assert_eq!(get(&other, "acme-secret").await?.status(), 404);

    let metrics = other
        .get(format!("{}/metrics", stack.gateway_url))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("gateway_auth_failures_total 3\n"),
        "refused before authentication: {metrics}"
    );
    assert!(
        metrics.contains(r#"gateway_rate_limited_total{client="(per-ip)"} 2"#),
        "{metrics}"
    );
    stack.teardown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_authentication_each_address_has_its_own_bucket() -> anyhow::Result<()> {
    // The per-client limit alone (the per-address one off), as the anonymous client.
    let stack = TestStack::spawn_with(|s| {
        s.gateway.rate_limit.requests_per_second = 0.1;
        s.gateway.rate_limit.burst = 3;
        s.gateway.rate_limit.per_ip.requests_per_second = 0.0;
    })
    .await?;
    let get = |http: &reqwest::Client| {
        http.get(format!(
            "{}/v1/payments/{}",
            stack.gateway_url,
            Uuid::new_v4()
        ))
        .send()
    };
    let noisy = client_from([127, 0, 0, 1])?;
    let quiet = client_from([127, 0, 0, 2])?;
    for _ in 0..3 {
        assert_eq!(get(&noisy).await?.status(), 404, "within the burst");
    }
    expect_problem(get(&noisy).await?, 429, "rate-limited").await?;
    for _ in 0..3 {
        assert_eq!(
            get(&quiet).await?.status(),
            404,
            "another address has its own bucket"
        );
    }
    expect_problem(get(&quiet).await?, 429, "rate-limited").await?;
    stack.teardown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_times_out_with_503_and_stores_nothing() -> anyhow::Result<()> {
    let stack = TestStack::spawn_with(|s| s.gateway.request_timeout_ms = 1000).await?;
    let url = format!("{}/v1/payments", stack.gateway_url);
    let body = payment_body("m_slow", "c_1", 100);
    let lock = PaymentsLock::take(&stack.pool).await?;
    let slow = json_post(&stack.http, &url, Some("slow-key"), None, &body)
        .send()
        .await?;
    assert_eq!(slow.headers()["retry-after"], "1");
    expect_problem(slow, 503, "request-timeout").await?;
    lock.release().await?;

    // The abandoned transaction rolls back once its statement ends; until then the key is
    // still held (409), then the retry executes afresh.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let retry = loop {
        let r = json_post(&stack.http, &url, Some("slow-key"), None, &body)
            .send()
            .await?;
        if r.status() != 409 {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "key never released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(retry.status(), 202);
    assert!(
        retry.headers().get("idempotent-replayed").is_none(),
        "nothing was stored"
    );
    assert_eq!(
        count(&stack.pool, "SELECT count(*) FROM payments").await?,
        1
    );
    stack.teardown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_finishes_in_flight_requests_and_publishes_them(
) -> anyhow::Result<()> {
    // The stack's own gateway does not relay, so only the gateway under test can publish.
    let stack = TestStack::spawn_with(|s| s.gateway.outbox_relay_enabled = false).await?;
    let gateway = GatewayHandle::spawn(gateway_settings(&stack.database, &stack.topics)).await?;
    let url = format!("{}/v1/payments", gateway.url);
    let body = payment_body("m_stop", "c_1", 4321);

    let lock = PaymentsLock::take(&stack.pool).await?;
    let in_flight =
        tokio::spawn(json_post(&stack.http, &url, Some("stop-key"), None, &body).send());
    lock.wait_for_waiters(&stack.pool, 1, Duration::from_secs(10))
        .await?;
    gateway.shutdown.cancel();

    // New connections are refused while the request is still in flight.
    gateway.wait_refusing(Duration::from_secs(5)).await?;
    assert!(!in_flight.is_finished());

    lock.release().await?;
    let response = in_flight.await??;
    assert_eq!(response.status(), 202, "the in-flight request completed");
    let id = response.json::<Value>().await?["id"]
        .as_str()
        .unwrap()
        .to_string();
    tokio::time::timeout(Duration::from_secs(20), gateway.task).await???;

    // The relay's last pass, after the request committed, published its event.
    let published: bool =
        sqlx::query_scalar("SELECT published_at IS NOT NULL FROM outbox WHERE message_key = $1")
            .bind(&id)
            .fetch_one(&stack.pool)
            .await?;
    assert!(
        published,
        "the accepted payment's event was published before exit"
    );
    let records = stack
        .read_topic(
            &stack.topics.payments_requested,
            Duration::from_secs(30),
            |r| !r.is_empty(),
        )
        .await?;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].key, id);
    stack.teardown().await;
    Ok(())
}
