//! The payment processor's claims: no database transaction across the PSP call, a decided
//! payment never charged again, a PSP rejection decided as FAILED, and slow PSP calls run side
//! by side within one batch's transaction.
//!
//! Oracles: the PSP simulator's ledger (charges and calls), the database, and the broker under
//! read_committed (the outcome and dead-letter topics).

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::{stream, StreamExt, TryStreamExt};
use paystream_e2e_tests::{payment_body, TestStack};
use paystream_payment_processor::handler::PaymentHandler;
use paystream_payment_processor::psp::PspClient;
use paystream_psp_simulator::ConfigPatch;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_succeeded_payment_is_not_charged_again_when_its_request_is_redelivered(
) -> anyhow::Result<()> {
    let stack = TestStack::spawn().await?;
    stack.spawn_processor().await?;
    let paid = stack
        .accept_payment(&payment_body("m_again", "c_1", 4200))
        .await?;
    stack.wait_terminal(1, WAIT).await?;
    let first = stack
        .read_topic(&stack.topics.payments_outcomes, WAIT, |r| !r.is_empty())
        .await?;

    // A second group with no record of the request (as after an operator resets or replays
    // the topic): the request reaches a handler again, past every processed-events ledger.
    let mut again = stack.processor_settings();
    again.consumer.group_id = format!("{}-again", stack.group_id);
    again.consumer.transactional_id = format!("{}-again-0", stack.group_id);
    let stats = stack.spawn_consumer::<PaymentHandler>(again).await?.0;
    let outcomes = stack
        .read_topic(&stack.topics.payments_outcomes, WAIT, |r| r.len() >= 2)
        .await?;

    assert_eq!(outcomes.len(), 2, "the outcome is produced again");
    assert_eq!(
        outcomes[1].value, first[0].value,
        "the same outcome, field for field (event id, charge id, decided_at)"
    );
    assert_eq!(outcomes[1].value["status"], "SUCCEEDED");
    let charges = stack.charges().await?;
    assert_eq!(charges.len(), 1, "{charges:?}");
    assert_eq!(charges[0].payment_id, paid.to_string());
    assert_eq!(charges[0].calls, 1, "the PSP was not called again");
    let (status, attempts): (String, i32) =
        sqlx::query_as("SELECT status, attempts FROM payments WHERE id = $1")
            .bind(paid)
            .fetch_one(&stack.pool)
            .await?;
    assert_eq!((status.as_str(), attempts), ("SUCCEEDED", 1));
    assert_eq!(stats.records_dead_lettered.load(Ordering::Relaxed), 0);
    eprintln!(
        "redelivered request: {} outcome records, PSP calls {}, claims {attempts}",
        outcomes.len(),
        charges[0].calls
    );
    stack.teardown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_psp_rejection_ends_failed_with_an_outcome_and_no_dead_letter() -> anyhow::Result<()> {
    let stack = TestStack::spawn().await?;
    let body = payment_body("m_reject", "c_1", 900);
    let rejected = stack.accept_payment(&body).await?;
    // The payment's idempotency key already bound to another request at the PSP: it answers
    // the processor's charge with 422, a refusal of the request itself (a 4xx).
    let conflict = reqwest::Client::new()
        .post(format!("{}/v1/charges", stack.psp.base_url()))
        .header(
            "Idempotency-Key",
            PspClient::idempotency_key(&rejected.to_string()),
        )
        .json(&serde_json::json!({
            "payment_id": rejected.to_string(),
            "merchant_id": body["merchant_id"],
            "customer_id": body["customer_id"],
            "amount_minor": 901,
            "currency": body["currency"],
            "payment_method": body["payment_method"],
        }))
        .send()
        .await?;
    assert!(conflict.status().is_success(), "{}", conflict.status());
    let stats = stack.spawn_processor().await?;

    let terminal = stack.wait_terminal(1, WAIT).await?;
    assert_eq!(terminal[&rejected], "FAILED");
    let view = stack.get_payment(rejected).await?;
    let reason = view["failure_reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("psp_rejected: HTTP 422"), "{view}");
    let outcomes = stack
        .read_all(&stack.topics.payments_outcomes, Duration::from_secs(3))
        .await?;
    assert_eq!(outcomes.len(), 1, "one outcome record");
    assert_eq!(outcomes[0].value["status"], "FAILED");
    assert_eq!(outcomes[0].value["failure_reason"], reason);
    let dead = stack
        .read_raw(
            &format!("{}.dlq", stack.group_id),
            Duration::from_secs(3),
            1,
        )
        .await?;
    assert!(dead.is_empty(), "nothing dead-lettered: {dead:?}");
    assert_eq!(stats.records_dead_lettered.load(Ordering::Relaxed), 0);
    eprintln!("PSP 4xx: payment FAILED ({reason}), 1 outcome, 0 dead letters");
    stack.teardown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_second_psp_with_500_record_batches_commits_without_a_transaction_timeout(
) -> anyhow::Result<()> {
    const PAYMENTS: usize = 500;
    let stack = TestStack::spawn().await?;
    stack
        .psp
        .set_config(&ConfigPatch {
            latency_ms: Some(2_000),
            ..Default::default()
        })
        .await?;
    let ids: HashSet<Uuid> = stream::iter(0..PAYMENTS)
        .map(|i| {
            let stack = &stack;
            async move {
                stack
                    .accept_payment(&payment_body("m_slow", &format!("c_{i}"), 100 + i as i64))
                    .await
            }
        })
        .buffer_unordered(16)
        .try_collect()
        .await?;

    // Handled one after another, a batch of 500 would take 1,000 s inside a 15 s transaction;
    // the start-up check accepts these settings only because calls run side by side and the
    // deadline stops new records early enough: 3 s + 4 s PSP budget + 5 s commit < 15 s.
    let mut settings = stack.processor_settings();
    settings.consumer.batch_max_records = PAYMENTS;
    settings.consumer.max_in_flight = PAYMENTS;
    settings.consumer.batch_max_wait_ms = 1_000;
    settings.consumer.transaction_timeout_ms = 15_000;
    settings.consumer.batch_deadline_ms = 3_000;
    settings.own.psp.timeout_ms = 4_000;
    let started = Instant::now();
    let stats = stack.spawn_consumer::<PaymentHandler>(settings).await?.0;
    let terminal = stack
        .wait_terminal(PAYMENTS, Duration::from_secs(180))
        .await?;
    let elapsed = started.elapsed();
    assert!(terminal.values().all(|s| s == "SUCCEEDED"), "{terminal:?}");

    let outcomes = stack
        .read_topic(&stack.topics.payments_outcomes, WAIT, |r| {
            r.len() >= PAYMENTS
        })
        .await?;
    let rest = stack
        .read_all(&stack.topics.payments_outcomes, Duration::from_secs(2))
        .await?;
    assert_eq!(
        rest.len(),
        PAYMENTS,
        "exactly one outcome record per payment"
    );
    let keys: HashSet<Uuid> = outcomes
        .iter()
        .map(|r| Uuid::parse_str(&r.key))
        .collect::<Result<_, _>>()?;
    assert_eq!(keys, ids);
    let charges = stack.charges().await?;
    assert_eq!(charges.len(), PAYMENTS);
    assert!(
        charges.iter().all(|c| c.calls == 1),
        "a payment was charged twice"
    );
    let batches = stats.batches_committed.load(Ordering::Relaxed);
    let aborted = stats.batches_aborted.load(Ordering::Relaxed);
    let cut = stats.batches_cut_short.load(Ordering::Relaxed);
    eprintln!(
        "{PAYMENTS} payments at 2 s per PSP call: {batches} batches committed ({cut} cut short by \
         the deadline, {aborted} aborted) in {:.1} s",
        elapsed.as_secs_f64()
    );
    assert_eq!(aborted, 0, "no batch outlived its transaction");
    stack.teardown().await;
    Ok(())
}
