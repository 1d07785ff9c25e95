//! API clients act only for the merchants they are bound to (issue 16, item 1): with
//! authentication on, `POST /v1/payments` and `GET /v1/analytics/merchants/{id}/stats` for a
//! merchant the client is not bound to are `403` and write nothing (no payment, outbox row,
//! idempotency record or Kafka record, so no webhook can fire); the admin API binds and
//! unbinds (`PUT`/`DELETE /v1/clients/{client_id}/merchants/{merchant_id}`) and lists
//! (`GET /v1/clients/{client_id}/merchants`). With authentication off nothing is checked.

use std::time::Duration;

use paystream_e2e_tests::{
    count, expect_problem, json_post, payment_body, require_api_keys, TestStack, TEST_ADMIN_TOKEN,
};
use serde_json::{json, Value};

const ACME_KEY: &str = "acme-secret";
const GLOBEX_KEY: &str = "globex-secret";

async fn authenticated_stack() -> anyhow::Result<TestStack> {
    let stack = TestStack::spawn_with(|s| {
        require_api_keys(s, &[("acme", ACME_KEY), ("globex", GLOBEX_KEY)])
    })
    .await?;
    stack.bind_client("acme", &["m_acme"]).await?;
    stack.bind_client("globex", &["m_globex"]).await?;
    Ok(stack)
}

/// `POST /v1/payments` as the client of `api_key`.
async fn pay(
    stack: &TestStack,
    api_key: &str,
    idempotency_key: &str,
    merchant: &str,
) -> anyhow::Result<reqwest::Response> {
    Ok(json_post(
        &stack.http,
        &format!("{}/v1/payments", stack.gateway_url),
        Some(idempotency_key),
        Some(api_key),
        &payment_body(merchant, "c_1", 1999),
    )
    .send()
    .await?)
}

async fn stats(
    stack: &TestStack,
    api_key: Option<&str>,
    merchant: &str,
) -> anyhow::Result<reqwest::Response> {
    let mut request = stack.http.get(format!(
        "{}/v1/analytics/merchants/{merchant}/stats?granularity=day",
        stack.gateway_url
    ));
    if let Some(key) = api_key {
        request = request.bearer_auth(key);
    }
    Ok(request.send().await?)
}

/// A call of the binding admin API: `method` on `/v1/clients/{path}`, with `token` as bearer.
async fn admin(
    stack: &TestStack,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<reqwest::Response> {
    let mut request = stack
        .http
        .request(method, format!("{}/v1/clients/{path}", stack.gateway_url));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    Ok(request.send().await?)
}

async fn expect_forbidden(response: reqwest::Response, merchant: &str) -> anyhow::Result<Value> {
    let problem = expect_problem(response, 403, "merchant-forbidden").await?;
    let detail = problem["detail"].as_str().unwrap_or_default();
    anyhow::ensure!(
        detail.contains(&format!("`{merchant}`")),
        "the detail names the merchant: {problem}"
    );
    Ok(problem)
}

async fn count_where(stack: &TestStack, table: &str, condition: &str) -> anyhow::Result<i64> {
    count(
        &stack.pool,
        &format!("SELECT count(*) FROM {table} WHERE {condition}"),
    )
    .await
}

async fn accepted_id(response: reqwest::Response) -> anyhow::Result<String> {
    anyhow::ensure!(
        response.status() == 202,
        "expected 202, got {}: {}",
        response.status(),
        response.text().await.unwrap_or_default()
    );
    let body: Value = response.json().await?;
    Ok(body["id"].as_str().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_acts_only_for_the_merchants_it_is_bound_to() -> anyhow::Result<()> {
    let stack = authenticated_stack().await?;
    // m_globex has notification settings (a webhook URL), m_nowhere has nothing: the refusal
    // must not tell them apart.
    stack
        .merchant_with_webhook("m_globex", "https://hooks.globex.example/paystream")
        .await?;
    sqlx::query(
        "INSERT INTO analytics_windows (merchant_id, currency, granularity, window_start,
             window_end, requested_count, requested_amount_minor, succeeded_count,
             succeeded_amount_minor, failed_count)
         VALUES ('m_globex', 'EUR', 'day', date_trunc('day', now()),
                 date_trunc('day', now()) + interval '1 day', 7, 12345, 7, 12345, 0)",
    )
    .execute(&stack.pool)
    .await?;

    // acme is bound to m_acme only: it can neither pay for m_globex nor read its figures.
    let refused = expect_forbidden(
        pay(&stack, ACME_KEY, "k-globex", "m_globex").await?,
        "m_globex",
    )
    .await?;
    let unknown = expect_forbidden(
        pay(&stack, ACME_KEY, "k-nowhere", "m_nowhere").await?,
        "m_nowhere",
    )
    .await?;
    assert_eq!(
        refused.to_string().replace("m_globex", "M"),
        unknown.to_string().replace("m_nowhere", "M"),
        "an existing and an unknown merchant get the same refusal"
    );
    expect_forbidden(stats(&stack, Some(ACME_KEY), "m_globex").await?, "m_globex").await?;
    expect_forbidden(
        stats(&stack, Some(ACME_KEY), "m_nowhere").await?,
        "m_nowhere",
    )
    .await?;

    // Nothing was written for the refused requests: no payment, no outbox row, no key.
    for (table, condition) in [
        ("payments", "merchant_id IN ('m_globex', 'm_nowhere')"),
        ("outbox", "true"),
        ("idempotency_keys", "true"),
    ] {
        assert_eq!(count_where(&stack, table, condition).await?, 0, "{table}");
    }

    // acme's payments for its own merchant and its own statistics work.
    let own = accepted_id(pay(&stack, ACME_KEY, "k-own-1", "m_acme").await?).await?;
    assert_eq!(stats(&stack, Some(ACME_KEY), "m_acme").await?.status(), 200);
    // globex, bound to m_globex, pays for it and sees its figures.
    accepted_id(pay(&stack, GLOBEX_KEY, "g-1", "m_globex").await?).await?;
    let figures: Value = stats(&stack, Some(GLOBEX_KEY), "m_globex")
        .await?
        .json()
        .await?;
    assert_eq!(
        figures["buckets"][0]["requested_amount_minor"], 12345,
        "{figures}"
    );

    // Kafka carries acme's own payment and globex's, never one of acme's for m_globex: the
    // relay publishes in commit order, so once both are there nothing refused is behind them.
    let records = stack
        .read_topic(
            &stack.topics.payments_requested,
            Duration::from_secs(30),
            |records| records.len() >= 2,
        )
        .await?;
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(records
        .iter()
        .any(|r| r.value["payment_id"] == own.as_str()));
    assert!(
        records.iter().all(|r| r.value["merchant_id"] != "m_nowhere"
            && (r.value["merchant_id"] != "m_globex" || r.value["client_id"] == "globex")),
        "{records:?}"
    );

    // The admin binds acme to m_globex (PUT is idempotent: 201, then 200).
    let path = "acme/merchants/m_globex";
    let created = admin(&stack, reqwest::Method::PUT, path, Some(TEST_ADMIN_TOKEN)).await?;
    assert_eq!(created.status(), 201);
    let binding: Value = created.json().await?;
    assert_eq!(
        (&binding["client_id"], &binding["merchant_id"]),
        (&json!("acme"), &json!("m_globex"))
    );
    let again = admin(&stack, reqwest::Method::PUT, path, Some(TEST_ADMIN_TOKEN)).await?;
    assert_eq!(again.status(), 200);
    assert_eq!(
        again.json::<Value>().await?["bound_at"],
        binding["bound_at"]
    );

    // The refused request's key stored nothing: the same key and request now execute, once.
    let first = pay(&stack, ACME_KEY, "k-globex", "m_globex").await?;
    assert!(first.headers().get("idempotent-replayed").is_none());
    let for_globex = accepted_id(first).await?;
    let replay = pay(&stack, ACME_KEY, "k-globex", "m_globex").await?;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(accepted_id(replay).await?, for_globex);
    let figures: Value = stats(&stack, Some(ACME_KEY), "m_globex")
        .await?
        .json()
        .await?;
    assert_eq!(figures["buckets"][0]["requested_count"], 7, "{figures}");

    let listed: Value = admin(
        &stack,
        reqwest::Method::GET,
        "acme/merchants",
        Some(TEST_ADMIN_TOKEN),
    )
    .await?
    .json()
    .await?;
    let merchants: Vec<&str> = listed["merchants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["merchant_id"].as_str().unwrap())
        .collect();
    assert_eq!(merchants, ["m_acme", "m_globex"], "{listed}");

    // Unbinding (DELETE is idempotent: 204 both times) takes the permission away again, also
    // from the replay of a key used while bound: authorization comes before the replay.
    for _ in 0..2 {
        let deleted = admin(
            &stack,
            reqwest::Method::DELETE,
            path,
            Some(TEST_ADMIN_TOKEN),
        )
        .await?;
        assert_eq!(deleted.status(), 204);
    }
    expect_forbidden(
        pay(&stack, ACME_KEY, "k-globex-2", "m_globex").await?,
        "m_globex",
    )
    .await?;
    expect_forbidden(
        pay(&stack, ACME_KEY, "k-globex", "m_globex").await?,
        "m_globex",
    )
    .await?;
    expect_forbidden(stats(&stack, Some(ACME_KEY), "m_globex").await?, "m_globex").await?;
    assert_eq!(
        count_where(
            &stack,
            "payments",
            "client_id = 'acme' AND merchant_id = 'm_globex'"
        )
        .await?,
        1,
        "only the payment made while bound"
    );
    // The payment acme made while bound is still its own to read.
    let read = stack
        .http
        .get(format!("{}/v1/payments/{for_globex}", stack.gateway_url))
        .bearer_auth(ACME_KEY)
        .send()
        .await?;
    assert_eq!(read.status(), 200);
    // …and another client's payments stay invisible to it, whatever the bindings.
    let foreign = stack
        .http
        .get(format!("{}/v1/payments/{for_globex}", stack.gateway_url))
        .bearer_auth(GLOBEX_KEY)
        .send()
        .await?;
    expect_problem(foreign, 404, "payment-not-found").await?;

    // acme's own merchant worked throughout.
    accepted_id(pay(&stack, ACME_KEY, "k-own-2", "m_acme").await?).await?;

    let metrics = stack
        .http
        .get(format!("{}/metrics", stack.gateway_url))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains(r#"gateway_merchant_forbidden_total{client="acme"} 7"#),
        "{metrics}"
    );
    stack.teardown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binding_admin_api_needs_the_admin_token_and_valid_ids() -> anyhow::Result<()> {
    let stack = authenticated_stack().await?;
    use reqwest::Method;

    // Without the admin token (none, a wrong one, a client's API key) nothing changes.
    for token in [None, Some("wrong-token"), Some(ACME_KEY)] {
        for (method, path) in [
            (Method::PUT, "acme/merchants/m_globex"),
            (Method::DELETE, "acme/merchants/m_acme"),
            (Method::GET, "acme/merchants"),
        ] {
            let response = admin(&stack, method.clone(), path, token).await?;
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
            expect_problem(response, 401, "unauthorized").await?;
        }
    }
    // Still bound as before: acme to m_acme, globex to m_globex only. (acme's refusals are
    // counted by the other test, in the same process under `cargo test`.)
    accepted_id(pay(&stack, ACME_KEY, "k-1", "m_acme").await?).await?;
    expect_forbidden(pay(&stack, GLOBEX_KEY, "k-2", "m_acme").await?, "m_acme").await?;
    assert_eq!(
        count(&stack.pool, "SELECT count(*) FROM client_merchants").await?,
        2
    );

    // Invalid ids: 422 naming the field; the reserved anonymous client cannot be bound.
    let long = "x".repeat(65);
    for (method, path, field) in [
        (Method::PUT, "a%20b/merchants/m_1".to_string(), "client_id"),
        (Method::PUT, "anonymous/merchants/m_1".into(), "client_id"),
        (Method::PUT, format!("{long}/merchants/m_1"), "client_id"),
        (Method::PUT, "acme/merchants/m.1".into(), "merchant_id"),
        (Method::PUT, format!("acme/merchants/{long}"), "merchant_id"),
        (Method::PUT, "acme/merchants/%FF".into(), "merchant_id"),
        (Method::DELETE, "acme/merchants/m%20x".into(), "merchant_id"),
        (Method::DELETE, "a*b/merchants/m_1".into(), "client_id"),
        (Method::GET, "a%2Fb/merchants".into(), "client_id"),
    ] {
        let response = admin(&stack, method.clone(), &path, Some(TEST_ADMIN_TOKEN)).await?;
        let problem = expect_problem(response, 422, "validation-error").await?;
        assert_eq!(
            problem["errors"][0]["field"], field,
            "{method} {path}: {problem}"
        );
    }
    for query in [
        "?limit=0",
        "?limit=1001",
        "?limit=x",
        "?after=a%20b",
        "?other=1",
    ] {
        let response = admin(
            &stack,
            Method::GET,
            &format!("acme/merchants{query}"),
            Some(TEST_ADMIN_TOKEN),
        )
        .await?;
        expect_problem(response, 400, "invalid-query").await?;
    }
    assert_eq!(
        count(&stack.pool, "SELECT count(*) FROM client_merchants").await?,
        2
    );

    // Client ids may hold dots (as API client ids do); a client without bindings lists none;
    // deleting a binding that does not exist is a 204 like any other DELETE.
    let response = admin(
        &stack,
        Method::PUT,
        "acme.eu/merchants/m_1",
        Some(TEST_ADMIN_TOKEN),
    )
    .await?;
    assert_eq!(response.status(), 201);
    let empty: Value = admin(
        &stack,
        Method::GET,
        "initech/merchants",
        Some(TEST_ADMIN_TOKEN),
    )
    .await?
    .json()
    .await?;
    assert_eq!(empty, json!({"client_id": "initech", "merchants": []}));
    let response = admin(
        &stack,
        Method::DELETE,
        "initech/merchants/m_1",
        Some(TEST_ADMIN_TOKEN),
    )
    .await?;
    assert_eq!(response.status(), 204);

    // The list pages by merchant id: `limit`, then `after` = the page's `next_after`.
    stack.bind_client("acme", &["m_b", "m_c", "m_d"]).await?;
    let page: Value = admin(
        &stack,
        Method::GET,
        "acme/merchants?limit=3",
        Some(TEST_ADMIN_TOKEN),
    )
    .await?
    .json()
    .await?;
    let ids = |page: &Value| -> Vec<String> {
        page["merchants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["merchant_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&page), ["m_acme", "m_b", "m_c"], "{page}");
    assert_eq!(page["next_after"], "m_c");
    let rest: Value = admin(
        &stack,
        Method::GET,
        "acme/merchants?limit=3&after=m_c",
        Some(TEST_ADMIN_TOKEN),
    )
    .await?
    .json()
    .await?;
    assert_eq!(ids(&rest), ["m_d"], "{rest}");
    assert!(rest.get("next_after").is_none(), "{rest}");

    // The routes are documented.
    let doc: Value = stack
        .http
        .get(format!("{}/openapi.json", stack.gateway_url))
        .send()
        .await?
        .json()
        .await?;
    let paths = &doc["paths"];
    for (path, method) in [
        ("/v1/clients/{client_id}/merchants/{merchant_id}", "put"),
        ("/v1/clients/{client_id}/merchants/{merchant_id}", "delete"),
        ("/v1/clients/{client_id}/merchants", "get"),
    ] {
        assert!(
            paths[path][method].is_object(),
            "{method} {path} undocumented"
        );
    }
    assert!(paths["/v1/payments"]["post"]["responses"]["403"].is_object());
    stack.teardown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_authentication_off_every_merchant_is_open() -> anyhow::Result<()> {
    // Development mode: every request is the anonymous client, which no binding limits.
    let stack = TestStack::spawn().await?;
    for merchant in ["m_dev_1", "m_dev_2"] {
        stack
            .accept_payment(&payment_body(merchant, "c_1", 100))
            .await?;
        assert_eq!(stats(&stack, None, merchant).await?.status(), 200);
    }
    // There is no anonymous client to bind: with authentication on it does not exist.
    let response = admin(
        &stack,
        reqwest::Method::PUT,
        "anonymous/merchants/m_dev_1",
        Some(TEST_ADMIN_TOKEN),
    )
    .await?;
    expect_problem(response, 422, "validation-error").await?;
    stack.teardown().await;
    Ok(())
}
