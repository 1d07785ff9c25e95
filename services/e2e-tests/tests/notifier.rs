//! The notifier group against a real HTTP receiver (verifying every signature) and a real SMTP
//! server: one signed webhook and one e-mail per outcome; a 503 receiver is retried through the
//! chain and then served once; a 400 receiver, or a target the SSRF guard refuses, dead-letters
//! the outcome. Also: the merchant admin API, and the `customer_email` schema change staying
//! compatible under FULL_TRANSITIVE.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::{stream, StreamExt, TryStreamExt};
use paystream_core::events::{self, Step};
use paystream_core::headers;
use paystream_e2e_tests::{registry_url, TestStack, TEST_ADMIN_TOKEN};
use paystream_psp_simulator::ConfigPatch;
use serde_json::{json, Value};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(240);

fn body(merchant: &str, i: usize) -> Value {
    json!({
        "merchant_id": merchant,
        "amount_minor": 100 + i as i64,
        "currency": "EUR",
        "customer_id": if i.is_multiple_of(5) { format!("cus_decline_{i}") } else { format!("c_{i}") },
        "payment_method": "card",
        "customer_email": format!("customer{i}@example.com"),
    })
}

async fn accept(stack: &TestStack, merchants: &[&str], n: usize) -> anyhow::Result<Vec<Uuid>> {
    stream::iter(0..n)
        .map(|i| {
            let body = body(merchants[i % merchants.len()], i);
            async move { stack.accept_payment(&body).await }
        })
        .buffer_unordered(16)
        .try_collect()
        .await
}

fn counts<'a>(ids: impl Iterator<Item = &'a str>) -> (usize, usize) {
    let all: Vec<&str> = ids.collect();
    let distinct: HashSet<&str> = all.iter().copied().collect();
    (all.len(), distinct.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_outcome_gets_one_signed_webhook_and_one_email() -> anyhow::Result<()> {
    const PAYMENTS: usize = 1_000;
    let stack = TestStack::spawn().await?;
    stack
        .psp
        .set_config(&ConfigPatch {
            decline_rate: Some(0.1),
            ..Default::default()
        })
        .await?;
    let (receiver, sink) = stack.receivers().await?;
    let merchants = ["m_nt_1", "m_nt_2"];
    for m in merchants {
        let secret = stack
            .merchant_with_webhook(m, &receiver.url)
            .await?
            .expect("a new merchant gets its secret");
        receiver.set_secret(m, &secret);
    }
    stack.spawn_processor().await?;
    let stats = stack
        .spawn_notifier(stack.notifier_settings(sink.port))
        .await?;
    let ids = accept(&stack, &merchants, PAYMENTS).await?;
    let terminal = stack.wait_terminal(PAYMENTS, WAIT).await?;

    stack
        .eventually(WAIT, "a webhook and an e-mail per outcome", || async {
            let hooks = counts(receiver.accepted().iter().map(|d| d.event_id.as_str())).1;
            let mails = counts(sink.messages().iter().map(|m| m.message_id.as_str())).1;
            Ok((hooks >= PAYMENTS && mails >= PAYMENTS).then_some(()))
        })
        .await?;
    // Leave time for any duplicate to show up before counting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let hooks = receiver.accepted();
    let mails = sink.messages();
    let (hooks_raw, hooks_distinct) = counts(hooks.iter().map(|d| d.event_id.as_str()));
    let (mails_raw, mails_distinct) = counts(mails.iter().map(|m| m.message_id.as_str()));
    println!(
        "notifier: {PAYMENTS} outcomes; webhooks raw {hooks_raw} distinct {hooks_distinct}; \
         e-mails raw {mails_raw} distinct {mails_distinct}; bad signatures {}; loop {:?}",
        receiver.bad_signatures(),
        stats.snapshot()
    );
    assert_eq!((hooks_raw, hooks_distinct), (PAYMENTS, PAYMENTS));
    assert_eq!((mails_raw, mails_distinct), (PAYMENTS, PAYMENTS));
    assert_eq!(receiver.bad_signatures(), 0);

    // Every delivery is the right one: event id header = body id = the outcome's event id,
    // type from the payment's status, the e-mail to the customer's address.
    let by_event: HashMap<String, Uuid> = ids
        .iter()
        .map(|p| (events::event_id(*p, Step::Outcome).to_string(), *p))
        .collect();
    for hook in &hooks {
        let payment = by_event[&hook.event_id];
        assert_eq!(hook.body["id"], hook.event_id.as_str());
        let expected = match terminal[&payment].as_str() {
            "SUCCEEDED" => "payment.succeeded",
            _ => "payment.failed",
        };
        assert_eq!(hook.body["type"], expected);
        assert_eq!(
            hook.body["data"]["payment_id"],
            payment.to_string().as_str()
        );
    }
    let emails: HashMap<Uuid, String> =
        sqlx::query_as::<_, (Uuid, String)>("SELECT id, customer_email FROM payments")
            .fetch_all(&stack.pool)
            .await?
            .into_iter()
            .collect();
    for mail in &mails {
        let event_id = mail
            .message_id
            .trim_start_matches('<')
            .split('.')
            .next()
            .unwrap();
        let payment = by_event[event_id];
        assert_eq!(mail.recipients, vec![emails[&payment].clone()]);
    }
    let failed = terminal.values().filter(|s| *s == "FAILED").count();
    assert!(
        failed > 0 && failed < PAYMENTS,
        "mixed outcomes: {failed} failed"
    );

    // One receipt per outcome and channel.
    let receipts = stack
        .read_all(&stack.topics.notifications_sent, Duration::from_secs(5))
        .await?;
    let distinct: HashSet<&str> = receipts
        .iter()
        .filter_map(|r| r.headers.get(headers::EVENT_ID))
        .collect();
    assert_eq!(distinct.len(), 2 * PAYMENTS);
    // Records, not just distinct ids: read_committed on Apache Kafka shows no aborted copies.
    assert_eq!(receipts.len(), 2 * PAYMENTS);
    stack.teardown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_receiver_is_retried_through_the_chain_then_served_once() -> anyhow::Result<()> {
    const PAYMENTS: usize = 20;
    let stack = TestStack::spawn().await?;
    let (receiver, sink) = stack.receivers().await?;
    let secret = stack
        .merchant_with_webhook("m_503", &receiver.url)
        .await?
        .unwrap();
    receiver.set_secret("m_503", &secret);
    receiver.answer(503);
    stack.spawn_processor().await?;
    let mut settings = stack.notifier_settings(sink.port);
    // Long enough a chain (1 + 2 + 4 s) that the receiver recovers before it ends.
    settings.consumer.retry_delays_ms = vec![1_000, 2_000, 4_000];
    let stats = stack.spawn_notifier(settings).await?;
    accept(&stack, &["m_503"], PAYMENTS).await?;
    stack
        .eventually(WAIT, "every first attempt refused", || async {
            Ok((receiver.refused() >= PAYMENTS as u64).then_some(()))
        })
        .await?;
    receiver.answer(200);
    stack
        .eventually(WAIT, "every webhook delivered", || async {
            Ok((receiver.accepted().len() >= PAYMENTS).then_some(()))
        })
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (raw, distinct) = counts(receiver.accepted().iter().map(|d| d.event_id.as_str()));
    let (mails_raw, mails_distinct) = counts(sink.messages().iter().map(|m| m.message_id.as_str()));
    let retried = stats
        .records_retried
        .load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "503 then 200: refused {}, delivered raw {raw} distinct {distinct}, e-mails raw {mails_raw} distinct {mails_distinct}, records retried {retried}",
        receiver.refused()
    );
    assert_eq!((raw, distinct), (PAYMENTS, PAYMENTS));
    assert_eq!(
        (mails_raw, mails_distinct),
        (PAYMENTS, PAYMENTS),
        "e-mails are not resent by webhook retries"
    );
    assert!(retried >= PAYMENTS as u64, "went through the retry chain");
    let attempts: Vec<i32> = sqlx::query_scalar(
        "SELECT attempts FROM notification_deliveries WHERE channel = 'webhook' AND status = 'delivered'",
    )
    .fetch_all(&stack.pool)
    .await?;
    assert_eq!(attempts.len(), PAYMENTS);
    assert!(attempts.iter().all(|a| *a >= 2), "{attempts:?}");
    let dead = stack
        .read_raw(
            &format!("{}.dlq", stack.notifier_group()),
            Duration::from_secs(2),
            1,
        )
        .await?;
    assert!(dead.is_empty(), "nothing dead-lettered");
    stack.teardown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejecting_receiver_or_a_refused_target_dead_letters_the_outcome() -> anyhow::Result<()> {
    const EACH: usize = 5;
    let stack = TestStack::spawn().await?;
    let (receiver, sink) = stack.receivers().await?;
    let secret = stack
        .merchant_with_webhook("m_400", &receiver.url)
        .await?
        .unwrap();
    receiver.set_secret("m_400", &secret);
    receiver.answer(400);
    // The cloud metadata address: link-local, refused by the guard whatever the config says.
    stack
        .merchant_with_webhook("m_ssrf", "http://169.254.169.254/latest/meta-data")
        .await?;
    stack.spawn_processor().await?;
    stack
        .spawn_notifier(stack.notifier_settings(sink.port))
        .await?;
    accept(&stack, &["m_400", "m_ssrf"], 2 * EACH).await?;

    let dlq = format!("{}.dlq", stack.notifier_group());
    let dead = stack.read_raw(&dlq, WAIT, 2 * EACH).await?;
    assert_eq!(dead.len(), 2 * EACH, "every outcome dead-lettered");
    let mut messages = Vec::new();
    for (_, _, h) in &dead {
        assert_eq!(h.get(headers::ERROR_CLASS), Some("permanent"));
        assert_eq!(
            h.get(headers::ATTEMPT),
            Some("1"),
            "no retries for a permanent failure"
        );
        messages.push(
            h.get(headers::ERROR_MESSAGE)
                .unwrap_or_default()
                .to_string(),
        );
    }
    let rejected = messages.iter().filter(|m| m.contains("HTTP 400")).count();
    let refused = messages
        .iter()
        .filter(|m| m.contains("not allowed"))
        .count();
    assert_eq!((rejected, refused), (EACH, EACH), "{messages:?}");
    assert_eq!(
        receiver.refused(),
        EACH as u64,
        "one attempt each, no retry"
    );
    assert!(receiver.accepted().is_empty());
    // The e-mail channel is independent: delivered once each, and recorded so a DLQ replay
    // would not send it again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(sink.messages().len(), 2 * EACH);
    stack.teardown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merchants_are_admin_only_and_show_their_secret_once() -> anyhow::Result<()> {
    let stack = TestStack::spawn().await?;
    let url = format!("{}/v1/merchants/m_admin", stack.gateway_url);
    let settings = json!({"webhook_url": "https://hooks.example.com/p", "notification_email": "ops@example.com"});

    let anonymous = stack.http.put(&url).json(&settings).send().await?;
    assert_eq!(anonymous.status(), 401);
    assert_eq!(
        anonymous.headers()["content-type"],
        "application/problem+json"
    );
    let wrong = stack
        .http
        .put(&url)
        .bearer_auth("not-the-token")
        .json(&settings)
        .send()
        .await?;
    assert_eq!(wrong.status(), 401);

    let (status, created) = stack.put_merchant("m_admin", &settings).await?;
    assert_eq!(status, 201);
    let secret = created["webhook_secret"].as_str().unwrap().to_string();
    assert!(
        secret.starts_with("whsec_") && secret.len() > 40,
        "{secret}"
    );
    assert_eq!(created["webhook_url"], "https://hooks.example.com/p");

    let (status, updated) = stack
        .put_merchant(
            "m_admin",
            &json!({"webhook_url": "https://hooks.example.com/q"}),
        )
        .await?;
    assert_eq!(status, 200);
    assert!(updated.get("webhook_secret").is_none(), "{updated}");
    assert_eq!(updated["notification_email"], Value::Null);

    let read: Value = stack
        .http
        .get(&url)
        .bearer_auth(TEST_ADMIN_TOKEN)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(read["webhook_url"], "https://hooks.example.com/q");
    assert!(read.get("webhook_secret").is_none(), "{read}");

    let rotated: Value = stack
        .http
        .post(format!("{url}/rotate-secret"))
        .bearer_auth(TEST_ADMIN_TOKEN)
        .send()
        .await?
        .json()
        .await?;
    let new_secret = rotated["webhook_secret"].as_str().unwrap();
    assert!(new_secret.starts_with("whsec_") && new_secret != secret);
    let stored: String =
        sqlx::query_scalar("SELECT webhook_secret FROM merchants WHERE merchant_id = 'm_admin'")
            .fetch_one(&stack.pool)
            .await?;
    assert_eq!(stored, new_secret);

    for bad in [
        json!({"webhook_url": "ftp://example.com/x"}),
        json!({"webhook_url": "not a url"}),
        json!({"notification_email": "nobody"}),
        json!({"webhook_secret": "whsec_mine"}),
    ] {
        let (status, problem) = stack.put_merchant("m_admin", &bad).await?;
        assert_eq!(status, 422, "{bad} → {problem}");
    }
    let missing = stack
        .http
        .post(format!(
            "{}/v1/merchants/m_nobody/rotate-secret",
            stack.gateway_url
        ))
        .bearer_auth(TEST_ADMIN_TOKEN)
        .send()
        .await?;
    assert_eq!(missing.status(), 404);
    let bad_email = stack
        .post_payment(
            Some("bad-email"),
            &json!({"merchant_id": "m_1", "amount_minor": 100, "currency": "EUR",
                    "customer_id": "c_1", "payment_method": "card", "customer_email": "a b@c"}),
        )
        .await?;
    assert_eq!(bad_email.status(), 422);
    stack.teardown().await;
    Ok(())
}

/// The schema registry judges `customer_email` (optional, default null) compatible with the
/// previous `PaymentRequested` under FULL_TRANSITIVE, and the same field without a default
/// incompatible, so the check can tell the difference.
#[tokio::test]
async fn customer_email_keeps_payment_requested_full_transitive() -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let registry = registry_url();
    let current: Value = serde_json::from_str(events::PAYMENT_REQUESTED_SCHEMA.avsc)?;
    let mut previous = current.clone();
    previous["fields"]
        .as_array_mut()
        .unwrap()
        .retain(|f| f["name"] != "customer_email");
    let mut no_default = current.clone();
    for f in no_default["fields"].as_array_mut().unwrap() {
        if f["name"] == "customer_email" {
            f.as_object_mut().unwrap().remove("default");
        }
    }
    let subject = format!(
        "test-{}-payments.requested.v1-value",
        Uuid::new_v4().simple()
    );
    let content_type = "application/vnd.schemaregistry.v1+json";
    let level = http
        .put(format!("{registry}/config/{subject}"))
        .header("content-type", content_type)
        .body(json!({"compatibility": "FULL_TRANSITIVE"}).to_string())
        .send()
        .await?;
    assert!(level.status().is_success(), "{}", level.text().await?);
    let register = |schema: &Value| {
        http.post(format!("{registry}/subjects/{subject}/versions"))
            .header("content-type", content_type)
            .body(json!({"schema": schema.to_string()}).to_string())
            .send()
    };
    assert!(register(&previous).await?.status().is_success());
    assert_eq!(
        register(&no_default).await?.status(),
        409,
        "a field without default is refused"
    );
    let accepted = register(&current).await?;
    assert!(accepted.status().is_success(), "{}", accepted.text().await?);
    Ok(())
}
