//! The walking skeleton end to end: REST → outbox → Kafka → payment processor → outcome.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use paystream_core::events::{self, Step};
use paystream_e2e_tests::{payment_body, TestStack};
use paystream_psp_simulator::ConfigPatch;
use serde_json::{json, Value};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_flows_from_rest_to_outcome() -> anyhow::Result<()> {
    let stack = TestStack::spawn().await?;
    stack.spawn_processor().await?;

    let response = stack
        .post_payment(Some("flow-1"), &payment_body("m_1", "c_1", 1999))
        .await?;
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str()?.to_string();
    let accepted: Value = response.json().await?;
    assert_eq!(accepted["status"], "PENDING");
    let paid = Uuid::parse_str(accepted["id"].as_str().unwrap())?;
    assert_eq!(location, format!("/v1/payments/{paid}"));

    let declined = stack
        .accept_payment(&payment_body("m_1", "cus_decline_1", 500))
        .await?;

    stack.wait_terminal(2, WAIT).await?;
    let paid_view = stack.get_payment(paid).await?;
    assert_eq!(paid_view["status"], "SUCCEEDED");
    assert_eq!(paid_view["amount_minor"], 1999);
    let declined_view = stack.get_payment(declined).await?;
    assert_eq!(declined_view["status"], "FAILED");
    assert_eq!(declined_view["failure_reason"], "card_declined");

    let outcomes = stack
        .read_topic(&stack.topics.payments_outcomes, WAIT, |r| {
            r.iter().map(|r| &r.key).collect::<HashSet<_>>().len() >= 2
        })
        .await?;
    let by_key: HashMap<_, _> = outcomes.iter().map(|r| (r.key.clone(), r)).collect();
    let paid_outcome = by_key[&paid.to_string()];
    assert_eq!(paid_outcome.value["status"], "SUCCEEDED");
    assert_eq!(paid_outcome.value["amount_minor"], 1999);
    let outcome_id = events::event_id(paid, Step::Outcome).to_string();
    assert_eq!(paid_outcome.value["event_id"], outcome_id.as_str());
    assert_eq!(
        paid_outcome.headers.get("event_id"),
        Some(outcome_id.as_str())
    );
    assert_eq!(by_key[&declined.to_string()].value["status"], "FAILED");
    assert_eq!(
        by_key[&declined.to_string()].value["failure_reason"],
        "card_declined"
    );

    let charges = stack.charges().await?;
    assert_eq!(charges.len(), 2, "one charge per payment: {charges:?}");
    stack.teardown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_an_idempotency_key_creates_no_second_event_or_charge() -> anyhow::Result<()> {
    let stack = TestStack::spawn().await?;
    stack.spawn_processor().await?;
    let body = payment_body("m_replay", "c_1", 4200);

    let first = stack.post_payment(Some("replay-key"), &body).await?;
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first_location = first.headers()["location"].clone();
    let first_body: Value = first.json().await?;

    // Same request with its fields in another order: the same payment, replayed.
    let reordered = json!({"payment_method": "card", "customer_id": "c_1", "currency": "EUR",
                           "amount_minor": 4200, "merchant_id": "m_replay"});
    let second = stack.post_payment(Some("replay-key"), &reordered).await?;
    assert_eq!(second.status(), 202);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    assert_eq!(second.headers()["location"], first_location);
    assert_eq!(second.json::<Value>().await?, first_body);

    // Same key, different request: refused.
    let other = stack
        .post_payment(Some("replay-key"), &payment_body("m_replay", "c_1", 4201))
        .await?;
    assert_eq!(other.status(), 422);
    assert_eq!(other.headers()["content-type"], "application/problem+json");
    let problem: Value = other.json().await?;
    assert!(
        problem["detail"].as_str().unwrap().contains("replay-key"),
        "{problem}"
    );

    let payment_id = first_body["id"].as_str().unwrap().to_string();
    stack.wait_terminal(1, WAIT).await?;
    // Give a (wrong) second event time to show up before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let requested = stack
        .read_topic(
            &stack.topics.payments_requested,
            Duration::from_secs(3),
            |_| false,
        )
        .await?;
    let events: Vec<_> = requested.iter().filter(|r| r.key == payment_id).collect();
    assert_eq!(
        events.len(),
        1,
        "exactly one PaymentRequested: {requested:?}"
    );
    assert_eq!(requested.len(), 1);
    let charges = stack.charges().await?;
    assert_eq!(charges.len(), 1, "{charges:?}");
    assert_eq!(charges[0].calls, 1);
    let payments: i64 = sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(&stack.pool)
        .await?;
    assert_eq!(payments, 1);
    stack.teardown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_problem_details_and_store_nothing() -> anyhow::Result<()> {
    let stack = TestStack::spawn().await?;
    let url = format!("{}/v1/payments", stack.gateway_url);
    let valid = payment_body("m_1", "c_1", 100).to_string();

    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        ("missing key", stack.http.post(&url).header("content-type", "application/json").body(valid.clone()), 400, "missing-idempotency-key"),
        ("empty key", stack.http.post(&url).header("Idempotency-Key", "\"\"").header("content-type", "application/json").body(valid.clone()), 400, "invalid-idempotency-key"),
        ("wrong content type", stack.http.post(&url).header("Idempotency-Key", "k").header("content-type", "text/plain").body(valid.clone()), 415, "unsupported-media-type"),
        ("malformed json", stack.http.post(&url).header("Idempotency-Key", "k").header("content-type", "application/json").body("{\"merchant_id\": "), 400, "malformed-json"),
        ("unknown field", stack.http.post(&url).header("Idempotency-Key", "k").header("content-type", "application/json").body(valid.replace("}", ",\"x\":1}")), 422, "validation-error"),
        ("invalid values", stack.http.post(&url).header("Idempotency-Key", "k").header("content-type", "application/json")
            .body(json!({"merchant_id":"m 1","amount_minor":-5,"currency":"XYZ","customer_id":"c","payment_method":"card"}).to_string()), 422, "validation-error"),
        ("too large", stack.http.post(&url).header("Idempotency-Key", "k").header("content-type", "application/json").body("x".repeat(70 * 1024)), 413, "payload-too-large"),
        ("unknown payment", stack.http.get(format!("{url}/{}", Uuid::new_v4())), 404, "payment-not-found"),
    ];
    for (name, request, status, slug) in cases {
        let response = request.send().await?;
        assert_eq!(response.status().as_u16(), status, "{name}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{name}"
        );
        let problem: Value = response.json().await?;
        assert_eq!(
            problem["type"],
            format!("https://paystream.dev/problems/{slug}"),
            "{name}"
        );
        assert_eq!(problem["status"], status, "{name}");
    }

    // Validation failures are not stored: the corrected request with the same key works.
    let fixed = stack
        .post_payment(Some("k"), &payment_body("m_1", "c_1", 100))
        .await?;
    assert_eq!(fixed.status(), 202);
    stack.teardown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psp_outage_goes_through_the_retry_chain_without_loss() -> anyhow::Result<()> {
    let stack = TestStack::spawn().await?;
    // Every PSP call fails until the outage ends: the processor forwards each payment to its
    // retry chain (the input partitions move on), and the retries succeed once the PSP is back,
    // neither skipping nor double-charging anything.
    stack
        .psp
        .set_config(&ConfigPatch {
            transient_failure_rate: Some(1.0),
            ..Default::default()
        })
        .await?;
    let stats = stack.spawn_processor().await?;
    let mut ids = HashSet::new();
    for i in 0..5 {
        ids.insert(
            stack
                .accept_payment(&payment_body("m_outage", &format!("c_{i}"), 700))
                .await?,
        );
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while stats.records_retried.load(Ordering::Relaxed) < 5 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no payment forwarded to the retry chain during the outage"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        stack.terminal_payments().await?.is_empty(),
        "nothing decided during the outage"
    );
    assert_eq!(stats.batches_aborted.load(Ordering::Relaxed), 0);

    stack
        .psp
        .set_config(&ConfigPatch {
            transient_failure_rate: Some(0.0),
            ..Default::default()
        })
        .await?;
    let terminal = stack.wait_terminal(5, WAIT).await?;
    assert!(terminal.values().all(|s| s == "SUCCEEDED"), "{terminal:?}");
    assert_eq!(stats.records_dead_lettered.load(Ordering::Relaxed), 0);
    let charges = stack.charges().await?;
    assert_eq!(
        charges.iter().filter(|c| c.has_charge()).count(),
        5,
        "{charges:?}"
    );
    let outcomes = stack
        .read_topic(&stack.topics.payments_outcomes, WAIT, |r| {
            r.iter().map(|r| &r.key).collect::<HashSet<_>>().len() >= 5
        })
        .await?;
    let keys: HashSet<Uuid> = outcomes
        .iter()
        .map(|r| Uuid::parse_str(&r.key).unwrap())
        .collect();
    assert_eq!(keys, ids);
    // Exactly one outcome record per payment, though each went through the retry chain.
    let all = stack
        .read_all(&stack.topics.payments_outcomes, Duration::from_secs(2))
        .await?;
    assert_eq!(all.len(), ids.len(), "one outcome record per payment");
    stack.teardown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_go_to_the_dead_letter_topic_and_the_stream_moves_on() -> anyhow::Result<()>
{
    let stack = TestStack::spawn().await?;
    stack.spawn_processor().await?;
    let poison = b"\x00\x00\x00\x00\x07not avro at all".to_vec();
    stack
        .produce_raw(&stack.topics.payments_requested, "poison-key", &poison)
        .await?;
    let paid = stack
        .accept_payment(&payment_body("m_dlq", "c_1", 300))
        .await?;
    stack.wait_terminal(1, WAIT).await?;
    assert_eq!(stack.get_payment(paid).await?["status"], "SUCCEEDED");

    let dlq = stack
        .read_raw(&format!("{}.dlq", stack.group_id), WAIT, 1)
        .await?;
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    let (key, value, headers) = &dlq[0];
    assert_eq!(key.as_deref(), Some(b"poison-key".as_slice()));
    assert_eq!(
        value.as_deref(),
        Some(poison.as_slice()),
        "original bytes, unchanged"
    );
    assert_eq!(headers.get("paystream.error.class"), Some("poison"));
    assert_eq!(
        headers.get("paystream.original.topic"),
        Some(stack.topics.payments_requested.as_str())
    );
    assert_eq!(
        headers.get("paystream.consumer.group"),
        Some(stack.group_id.as_str())
    );
    assert!(headers.get("paystream.original.offset").is_some());
    assert!(headers
        .get("paystream.error.message")
        .is_some_and(|m| !m.is_empty()));
    stack.teardown().await;
    Ok(())
}
