//! `analytics` and `notifier` as real processes, each SIGKILLed repeatedly at random points
//! while 1,000 payments flow: the analytics totals still equal the PSP simulator's ledger
//! exactly, every outcome reaches the webhook receiver and the SMTP sink, and every repeated
//! send is one the delivery ledger recorded as an in-doubt resend (a kill between a send and
//! its record), which receivers drop by event id / Message-ID.

use std::collections::HashSet;
use std::time::Duration;

use futures::{stream, StreamExt, TryStreamExt};
use paystream_e2e_tests::chaos::Rng;
use paystream_e2e_tests::{third_party, ServiceProcess, TestStack};
use paystream_psp_simulator::ConfigPatch;
use serde_json::json;

const PAYMENTS: usize = 1_000;
const KILLS: usize = 5;
/// The notifier's default `consumer.batch_max_records`: at most this many outcomes in flight.
const NOTIFIER_BATCH: usize = 10;
const WAIT: Duration = Duration::from_secs(300);

/// Runs `spawn()` instances one after another, SIGKILLing each after a random 1–4 s, `KILLS`
/// times; returns the last instance, left running.
async fn kill_repeatedly(
    name: &str,
    mut rng: Rng,
    spawn: impl Fn(usize) -> anyhow::Result<ServiceProcess>,
) -> anyhow::Result<ServiceProcess> {
    for generation in 0..KILLS {
        let mut process = spawn(generation)?;
        let after = rng.between(1_000, 4_000);
        tokio::time::sleep(Duration::from_millis(after)).await;
        process.kill().await?;
        println!("{name}: generation {generation} SIGKILLed after {after} ms");
    }
    spawn(KILLS)
}

fn distinct(ids: &[String]) -> usize {
    ids.iter().collect::<HashSet<_>>().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkilled_analytics_and_notifier_count_exactly_and_notify_once() -> anyhow::Result<()> {
    let stack = TestStack::spawn().await?;
    stack
        .psp
        .set_config(&ConfigPatch {
            decline_rate: Some(0.15),
            ..Default::default()
        })
        .await?;
    let (receiver, sink) = stack.receivers().await?;
    let merchants = ["m_kill_1", "m_kill_2"];
    for m in merchants {
        let secret = stack
            .merchant_with_webhook(m, &receiver.url)
            .await?
            .unwrap();
        receiver.set_secret(m, &secret);
    }
    stack.spawn_processor().await?;

    let seed = Rng::clock_seed();
    println!("seed {seed}");
    let analytics_txid = format!("{}-0", stack.analytics_group());
    let notifier_txid = format!("{}-0", stack.notifier_group());
    let analytics = kill_repeatedly("analytics", Rng::new(seed), |g| {
        ServiceProcess::spawn_binary(
            "analytics",
            stack.consumer_env(&stack.analytics_group(), &analytics_txid),
            &stack.analytics_group(),
            &analytics_txid,
            &format!("run{g}"),
        )
    });
    let notifier = kill_repeatedly("notifier", Rng::new(seed.rotate_left(17)), |g| {
        ServiceProcess::spawn_binary(
            "notifier",
            stack.notifier_env(sink.port, &notifier_txid),
            &stack.notifier_group(),
            &notifier_txid,
            &format!("run{g}"),
        )
    });
    let payments = stream::iter(0..PAYMENTS)
        .map(|i| {
            let stack = &stack;
            let body = json!({
                "merchant_id": merchants[i % merchants.len()],
                "amount_minor": 100 + (i as i64 * 13) % 5_000,
                "currency": if i % 3 == 0 { "USD" } else { "EUR" },
                "customer_id": format!("c_{i}"),
                "payment_method": "card",
                "customer_email": format!("k{i}@example.com"),
            });
            async move { stack.accept_payment(&body).await }
        })
        .buffer_unordered(8)
        .try_collect::<Vec<_>>();
    let (analytics, notifier, payments) = tokio::join!(analytics, notifier, payments);
    let (_analytics, _notifier) = (analytics?, notifier?);
    payments?;
    stack.wait_terminal(PAYMENTS, WAIT).await?;

    let expected = stack.psp_totals().await?;
    stack
        .eventually(WAIT, "analytics and notifications complete", || async {
            let day = stack.analytics_totals("day").await?;
            let decided: i64 = day
                .values()
                .map(|t| t.succeeded_count + t.failed_count)
                .sum();
            let requested: i64 = day.values().map(|t| t.requested_count).sum();
            let hooks = receiver
                .accepted()
                .iter()
                .map(|d| d.event_id.clone())
                .collect::<HashSet<_>>()
                .len();
            let mails = sink
                .messages()
                .iter()
                .map(|m| m.message_id.clone())
                .collect::<HashSet<_>>()
                .len();
            Ok((decided >= PAYMENTS as i64
                && requested >= PAYMENTS as i64
                && hooks >= PAYMENTS
                && mails >= PAYMENTS)
                .then_some(()))
        })
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;

    assert_eq!(
        stack.analytics_totals("day").await?,
        expected,
        "day totals exact"
    );
    assert_eq!(
        stack.analytics_totals("minute").await?,
        expected,
        "minute totals exact"
    );

    let hooks: Vec<String> = receiver
        .accepted()
        .into_iter()
        .map(|d| d.event_id)
        .collect();
    let mails: Vec<String> = sink.messages().into_iter().map(|m| m.message_id).collect();
    let in_doubt: Vec<(String, i64)> = sqlx::query_as(
        "SELECT channel, sum(in_doubt_resends)::bigint FROM notification_deliveries GROUP BY channel ORDER BY channel",
    )
    .fetch_all(&stack.pool)
    .await?;
    let resends = |channel: &str| {
        in_doubt
            .iter()
            .find(|(c, _)| c == channel)
            .map_or(0, |(_, n)| *n as usize)
    };
    println!(
        "after {KILLS} SIGKILLs of each: webhooks raw {} distinct {}, e-mails raw {} distinct {}, \
         in-doubt resends recorded: webhook {}, email {}; bad signatures {}",
        hooks.len(),
        distinct(&hooks),
        mails.len(),
        distinct(&mails),
        resends("webhook"),
        resends("email"),
        receiver.bad_signatures()
    );
    assert_eq!(
        distinct(&hooks),
        PAYMENTS,
        "every outcome's webhook arrived"
    );
    assert_eq!(distinct(&mails), PAYMENTS, "every outcome's e-mail arrived");
    assert_eq!(receiver.bad_signatures(), 0);
    // A repeated send only ever comes from a send left unresolved by a kill, which the ledger
    // records; a kill leaves at most the sends of the records in flight: a batch's records
    // (the notifier's `consumer.batch_max_records`), two channels each.
    assert!(hooks.len() - distinct(&hooks) <= resends("webhook"));
    assert!(mails.len() - distinct(&mails) <= resends("email"));
    assert!(resends("webhook") + resends("email") <= KILLS * 2 * NOTIFIER_BATCH);
    let undelivered: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM notification_deliveries WHERE status <> 'delivered'",
    )
    .fetch_one(&stack.pool)
    .await?;
    assert_eq!(undelivered, 0);
    // The broker's view, by a stock Confluent client under read_committed: exactly one receipt
    // record per outcome and channel, though the notifier was killed mid-transaction 5 times.
    let receipts = third_party::confluent_read_committed_at_least(
        &stack.kafka.bootstrap_servers,
        &stack.topics.notifications_sent,
        2 * PAYMENTS,
        Duration::from_secs(30),
    )
    .await?;
    println!(
        "receipts read_committed: {} records for {PAYMENTS} outcomes × 2 channels",
        receipts.records
    );
    assert_eq!(
        receipts.records,
        2 * PAYMENTS,
        "one receipt record per outcome and channel"
    );
    stack.teardown().await;
    Ok(())
}
