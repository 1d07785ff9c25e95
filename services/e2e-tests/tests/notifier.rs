//! The notifier group against a real HTTP receiver (verifying every signature) and a real SMTP
//! server: one signed webhook and one e-mail per outcome; a 503 receiver is retried through the
//! chain and then served once; a 400 receiver, or a target the SSRF guard refuses, dead-letters
//! the outcome. When one channel is delivered and the other refused for good, each is judged on
//! its own: the delivered one keeps its receipt, only the refused one is dead-lettered (and a
//! replay delivers just that one). Also: the merchant admin API, and the `customer_email` schema
//! change staying compatible under FULL_TRANSITIVE.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::{stream, StreamExt, TryStreamExt};
use paystream_core::dlq::{self, DlqFilter};
use paystream_core::events::{self, Step};
use paystream_core::headers;
use paystream_core::processing::StartFrom;
use paystream_e2e_tests::{registry_url, third_party, TestStack, TEST_ADMIN_TOKEN};
use paystream_notifier::deliveries::Channel;
use paystream_notifier::handler::receipt_id;
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
    // The webhook went through the chain on its own, split off from the delivered e-mail (whose
    // receipt did not wait for it): one first-retry record per outcome, for the webhook alone.
    let first_retries = stack
        .read_all(
            &format!("{}.retry.1", stack.notifier_group()),
            Duration::from_secs(3),
        )
        .await?;
    let retried_payments: HashSet<&str> = first_retries.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(
        (first_retries.len(), retried_payments.len()),
        (PAYMENTS, PAYMENTS),
        "went through the retry chain"
    );
    for r in &first_retries {
        assert_eq!(
            r.headers.get(CHANNEL_HEADER),
            Some("webhook"),
            "{:?}",
            r.headers
        );
        assert_eq!(r.headers.get(headers::ERROR_CLASS), Some("transient"));
    }
    let attempts: Vec<i32> = sqlx::query_scalar(
        "SELECT attempts FROM notification_deliveries WHERE channel = 'webhook' AND status = 'delivered'",
    )
    .fetch_all(&stack.pool)
    .await?;
    assert_eq!(attempts.len(), PAYMENTS);
    assert!(attempts.iter().all(|a| *a >= 2), "{attempts:?}");
    assert_nothing_dead_lettered(&stack).await?;
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

/// Payment ids of the outcomes `receiver` and `sink` were notified of: (webhooks, e-mails).
fn notified(
    receiver: &paystream_e2e_tests::WebhookReceiver,
    sink: &paystream_e2e_tests::SmtpSink,
    by_event: &HashMap<String, Uuid>,
) -> (HashSet<Uuid>, HashSet<Uuid>) {
    let hooks = receiver
        .accepted()
        .iter()
        .filter_map(|d| by_event.get(&d.event_id).copied())
        .collect();
    let mails = sink
        .messages()
        .iter()
        .filter_map(|m| {
            let event_id = m.message_id.trim_start_matches('<').split('.').next()?;
            by_event.get(event_id).copied()
        })
        .collect();
    (hooks, mails)
}

/// A notifier group that does not exist yet starts at the end of the outcomes topic (its service
/// default): enabling it on a running system does not mail customers and call webhooks for every
/// outcome still retained. An outcome produced after it joined is notified, on every partition
/// that holds old ones, which also shows the group is past them. `consumer.start_from =
/// "earliest"` on a fresh group backfills them on purpose.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_notifier_group_skips_retained_outcomes_unless_told_to_backfill() -> anyhow::Result<()>
{
    new_notifier_group_starts_at_the_end(false).await
}

/// The same when the new group's first batch is aborted: the rewind leaves the partitions it
/// has read nothing of where the group started, instead of sending them to the log's start.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_notifier_group_whose_first_batch_aborts_still_skips_retained_outcomes(
) -> anyhow::Result<()> {
    new_notifier_group_starts_at_the_end(true).await
}

async fn new_notifier_group_starts_at_the_end(abort_first_batch: bool) -> anyhow::Result<()> {
    const OLD: usize = 12;
    const MERCHANT: &str = "m_new_group";
    let stack = TestStack::spawn().await?;
    let (receiver, sink) = stack.receivers().await?;
    let secret = stack
        .merchant_with_webhook(MERCHANT, &receiver.url)
        .await?
        .unwrap();
    receiver.set_secret(MERCHANT, &secret);
    stack.spawn_processor().await?;

    // Outcomes on the topic (committed) before any notifier group exists.
    let old: HashSet<Uuid> = accept(&stack, &[MERCHANT], OLD)
        .await?
        .into_iter()
        .collect();
    let outcomes_topic = stack.topics.payments_outcomes.clone();
    let payment_of = |r: &paystream_e2e_tests::DecodedRecord| {
        r.value["payment_id"]
            .as_str()
            .and_then(|p| p.parse::<Uuid>().ok())
    };
    let retained = stack
        .read_topic(&outcomes_topic, WAIT, |records| {
            records
                .iter()
                .filter_map(payment_of)
                .filter(|p| old.contains(p))
                .count()
                >= OLD
        })
        .await?;
    let old_partitions: HashSet<i32> = retained
        .iter()
        .filter(|r| payment_of(r).is_some_and(|p| old.contains(&p)))
        .map(|r| r.partition)
        .collect();
    assert_eq!(
        retained
            .iter()
            .filter_map(payment_of)
            .filter(|p| old.contains(p))
            .count(),
        OLD,
        "every old outcome is on the topic"
    );

    // A new notifier instance with the service's own settings (the harness pins `earliest`).
    let mut settings = stack.notifier_settings(sink.port);
    let service_default = paystream_notifier::Application::load_settings()?
        .consumer
        .start_from;
    assert_eq!(service_default, StartFrom::Latest);
    settings.consumer.start_from = service_default;
    let (stats, faults) = stack
        .spawn_consumer::<paystream_notifier::handler::NotifierHandler>(settings)
        .await?;
    if abort_first_batch {
        faults.abort_after_records(0);
    }

    // Outcomes produced after it joined: a new payment per round until, on every partition
    // holding old outcomes, a later one was notified (a round produced before the group had its
    // partitions is skipped like the old ones, so rounds go on until one is served).
    let mut by_event: HashMap<String, Uuid> = old
        .iter()
        .map(|p| (events::event_id(*p, Step::Outcome).to_string(), *p))
        .collect();
    let mut probes: HashSet<Uuid> = HashSet::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    for round in 0.. {
        // One at a time: a batch then holds one partition, the others have nothing read yet.
        for p in accept(&stack, &[MERCHANT], 1).await? {
            by_event.insert(events::event_id(p, Step::Outcome).to_string(), p);
            probes.insert(p);
        }
        // Paces the rounds; not an assertion (an unserved round is followed by another).
        let round_end = tokio::time::Instant::now() + Duration::from_secs(10);
        let served: HashSet<Uuid> = loop {
            let (hooks, mails) = notified(&receiver, &sink, &by_event);
            let served: HashSet<Uuid> = hooks
                .intersection(&mails)
                .filter(|p| probes.contains(p))
                .copied()
                .collect();
            if !served.is_empty() || tokio::time::Instant::now() >= round_end {
                break served;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let covered: HashSet<i32> = stack
            .read_all(&outcomes_topic, Duration::from_secs(1))
            .await?
            .iter()
            .filter(|r| payment_of(r).is_some_and(|p| served.contains(&p)))
            .map(|r| r.partition)
            .collect();
        if old_partitions.is_subset(&covered) {
            println!("new group: served after {} rounds of probes", round + 1);
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no outcome produced after the notifier joined was notified on every partition \
             holding old ones ({old_partitions:?}, served on {covered:?})"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    if abort_first_batch {
        let aborted = stats
            .batches_aborted
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(aborted >= 1, "the first batch was aborted and rewound");
    }
    let (hooks, mails) = notified(&receiver, &sink, &by_event);
    let hooked_old: Vec<&Uuid> = hooks.intersection(&old).collect();
    let mailed_old: Vec<&Uuid> = mails.intersection(&old).collect();
    println!(
        "new group: old outcomes {OLD}, webhooks for them {}, e-mails for them {}; probes {}, \
         webhooks {} e-mails {}",
        hooked_old.len(),
        mailed_old.len(),
        probes.len(),
        hooks.intersection(&probes).count(),
        mails.intersection(&probes).count()
    );
    assert!(
        hooked_old.is_empty(),
        "webhooks for outcomes retained before the group existed: {hooked_old:?}"
    );
    assert!(
        mailed_old.is_empty(),
        "e-mails for outcomes retained before the group existed: {mailed_old:?}"
    );
    // Receipts (read_committed): one for a served probe, none for an old outcome.
    let served_probe = hooks.intersection(&probes).next().copied().unwrap();
    stack
        .read_topic(&stack.topics.notifications_sent, WAIT, |records| {
            records
                .iter()
                .any(|r| r.value["payment_id"] == served_probe.to_string().as_str())
        })
        .await?;
    let receipts = stack
        .read_all(&stack.topics.notifications_sent, Duration::from_secs(3))
        .await?;
    let receipted_old: Vec<&Value> = receipts
        .iter()
        .map(|r| &r.value["payment_id"])
        .filter(|p| {
            p.as_str()
                .and_then(|p| p.parse().ok())
                .is_some_and(|p| old.contains(&p))
        })
        .collect();
    assert!(
        receipted_old.is_empty(),
        "receipts for old outcomes: {receipted_old:?}"
    );

    // Backfill on purpose: a fresh group told to start from the earliest retained outcome.
    let mut backfill = stack.notifier_settings(sink.port);
    backfill.consumer.group_id = format!("{}-backfill", stack.notifier_group());
    backfill.consumer.transactional_id = format!("{}-0", backfill.consumer.group_id);
    backfill.consumer.start_from = StartFrom::Earliest;
    stack.spawn_notifier(backfill).await?;
    stack
        .eventually(
            WAIT,
            "the backfilling group notifies the old outcomes",
            || async {
                let (hooks, mails) = notified(&receiver, &sink, &by_event);
                Ok((old.is_subset(&hooks) && old.is_subset(&mails)).then_some(()))
            },
        )
        .await?;
    stack.teardown().await;
    Ok(())
}

/// The header naming the one channel a dead-lettered notifier record is for (the notifier's
/// `handler::CHANNEL_HEADER`), spelled out so the test reads as the wire contract.
const CHANNEL_HEADER: &str = "paystream.notifier.channel";

/// `failing` is refused for good by its receiver (webhook: HTTP 400; e-mail: SMTP 550 at
/// `RCPT`) while the outcome's other channel is delivered. Each channel is judged on its own:
/// the delivered one's receipt commits with the outcome's offset (exactly one per outcome, as a
/// stock Confluent client counts them under read_committed), the refused one alone goes to the
/// dead-letter topic with the standard failure headers, and replaying those dead letters once
/// the receiver accepts delivers the refused channel without resending the other.
async fn one_channel_refused_for_good(failing: Channel) -> anyhow::Result<()> {
    const PAYMENTS: usize = 5;
    let delivered = match failing {
        Channel::Webhook => Channel::Email,
        Channel::Email => Channel::Webhook,
    };
    let stack = TestStack::spawn().await?;
    let (receiver, sink) = stack.receivers().await?;
    let merchant = format!("m_mixed_{}", failing.as_str());
    let secret = stack
        .merchant_with_webhook(&merchant, &receiver.url)
        .await?
        .unwrap();
    receiver.set_secret(&merchant, &secret);
    match failing {
        Channel::Webhook => receiver.answer(400),
        Channel::Email => sink.answer_rcpt(550),
    }
    stack.spawn_processor().await?;
    stack
        .spawn_notifier(stack.notifier_settings(sink.port))
        .await?;
    let ids = accept(&stack, &[merchant.as_str()], PAYMENTS).await?;
    let sources: HashMap<String, Uuid> = ids
        .iter()
        .map(|p| (p.to_string(), events::event_id(*p, Step::Outcome)))
        .collect();
    let payments: HashSet<String> = sources.keys().cloned().collect();

    let group = stack.notifier_group();
    let dlq_topic = format!("{group}.dlq");
    let dead = stack.read_raw(&dlq_topic, WAIT, PAYMENTS).await?;
    assert_eq!(
        dead.len(),
        PAYMENTS,
        "every outcome's refused channel dead-lettered"
    );

    // The delivered channel's receipts, as a third-party client sees them under read_committed.
    let committed = third_party::confluent_read_committed_at_least(
        &stack.kafka.bootstrap_servers,
        &stack.topics.notifications_sent,
        PAYMENTS,
        Duration::from_secs(30),
    )
    .await?;
    println!(
        "{} refused, {} delivered: {} receipts read_committed for {PAYMENTS} outcomes",
        failing.as_str(),
        delivered.as_str(),
        committed.records
    );
    assert_eq!(
        committed.records,
        PAYMENTS,
        "exactly one {} receipt per outcome under read_committed",
        delivered.as_str()
    );
    assert!(
        committed.not_once().is_empty(),
        "{:?}",
        committed.not_once()
    );
    assert_eq!(
        committed.per_key.keys().cloned().collect::<HashSet<_>>(),
        payments
    );
    let receipts = stack
        .read_all(&stack.topics.notifications_sent, Duration::from_secs(3))
        .await?;
    assert_eq!(receipts.len(), PAYMENTS);
    for r in &receipts {
        assert_eq!(r.value["channel"], delivered.as_str(), "{:?}", r.value);
        let id = receipt_id(sources[&r.key], delivered).to_string();
        assert_eq!(r.headers.get(headers::EVENT_ID), Some(id.as_str()));
    }

    // The dead letters: the refused channel only, with the standard failure headers.
    let outcomes_topic = stack.topics.payments_outcomes.as_str();
    for (key, _, h) in &dead {
        let key = String::from_utf8_lossy(key.as_deref().unwrap_or_default()).into_owned();
        assert!(payments.contains(&key), "{key}");
        assert_eq!(h.get(CHANNEL_HEADER), Some(failing.as_str()), "{h:?}");
        assert_eq!(h.get(headers::ERROR_CLASS), Some("permanent"));
        assert_eq!(h.get(headers::ATTEMPT), Some("1"), "no retries");
        assert_eq!(h.get(headers::ORIGINAL_TOPIC), Some(outcomes_topic));
        assert_eq!(h.get(headers::CONSUMER_GROUP), Some(group.as_str()));
        let message = h.get(headers::ERROR_MESSAGE).unwrap_or_default();
        let expected = match failing {
            Channel::Webhook => "HTTP 400",
            Channel::Email => "550",
        };
        assert!(
            message.starts_with(failing.as_str()) && message.contains(expected),
            "{message}"
        );
    }
    // One attempt at the refused channel, one delivery on the other.
    let hooks = || counts(receiver.accepted().iter().map(|d| d.event_id.as_str()));
    let mails = || counts(sink.messages().iter().map(|m| m.message_id.as_str()));
    match failing {
        Channel::Webhook => {
            assert_eq!(receiver.refused(), PAYMENTS as u64);
            assert_eq!(mails(), (PAYMENTS, PAYMENTS));
        }
        Channel::Email => {
            assert_eq!(sink.refused(), PAYMENTS as u64);
            assert_eq!(hooks(), (PAYMENTS, PAYMENTS));
        }
    }

    // The receiver accepts again; an operator replays the dead letters: the refused channel is
    // delivered, the other is not sent again, and its receipt joins the first one.
    match failing {
        Channel::Webhook => receiver.answer(200),
        Channel::Email => sink.answer_rcpt(250),
    }
    let letters = dlq::read(
        &stack.kafka,
        &dlq_topic,
        &DlqFilter::default(),
        Duration::from_secs(2),
    )
    .await?;
    assert_eq!(letters.len(), PAYMENTS);
    let report = dlq::replay(
        &stack.kafka,
        &stack.pool,
        &dlq_topic,
        &letters,
        3,
        &format!("{group}-replay"),
    )
    .await?;
    assert_eq!(report.replayed.len(), PAYMENTS, "{:?}", report.refused);
    stack
        .eventually(
            WAIT,
            "the refused channel delivered after the replay",
            || async {
                let (_, distinct) = match failing {
                    Channel::Webhook => hooks(),
                    Channel::Email => mails(),
                };
                Ok((distinct >= PAYMENTS).then_some(()))
            },
        )
        .await?;
    let committed = third_party::confluent_read_committed_at_least(
        &stack.kafka.bootstrap_servers,
        &stack.topics.notifications_sent,
        2 * PAYMENTS,
        Duration::from_secs(30),
    )
    .await?;
    // Leave time for any duplicate to show up before counting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(hooks(), (PAYMENTS, PAYMENTS), "one webhook per outcome");
    assert_eq!(mails(), (PAYMENTS, PAYMENTS), "one e-mail per outcome");
    assert_eq!(committed.records, 2 * PAYMENTS, "{:?}", committed.per_key);
    assert!(
        committed.per_key.values().all(|n| *n == 2),
        "{:?}",
        committed.per_key
    );
    let receipts = stack
        .read_all(&stack.topics.notifications_sent, Duration::from_secs(3))
        .await?;
    let ids: HashSet<&str> = receipts
        .iter()
        .filter_map(|r| r.headers.get(headers::EVENT_ID))
        .collect();
    assert_eq!((receipts.len(), ids.len()), (2 * PAYMENTS, 2 * PAYMENTS));
    for channel in [Channel::Webhook, Channel::Email] {
        let n = receipts
            .iter()
            .filter(|r| r.value["channel"] == channel.as_str())
            .count();
        assert_eq!(n, PAYMENTS, "{} receipts", channel.as_str());
    }
    stack.teardown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_webhook_dead_letters_only_the_webhook_and_the_email_keeps_its_receipt(
) -> anyhow::Result<()> {
    one_channel_refused_for_good(Channel::Webhook).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_email_dead_letters_only_the_email_and_the_webhook_keeps_its_receipt(
) -> anyhow::Result<()> {
    one_channel_refused_for_good(Channel::Email).await
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
    // Oracle: the database. The secret is stored sealed, never in clear, and opens (with the
    // services' key, for this merchant) to the secret shown.
    let stored = stored_secrets(&stack, "m_admin").await?;
    assert_sealed(&stored.0, &secret, "m_admin");
    assert_eq!(stored.1, None, "no previous secret before a rotation");
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
    // Both the new secret and the one it replaced (kept for the overlap window) are sealed.
    let (current, previous) = stored_secrets(&stack, "m_admin").await?;
    assert_sealed(&current, new_secret, "m_admin");
    assert_sealed(
        &previous.expect("the replaced secret is kept"),
        &secret,
        "m_admin",
    );

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

/// The merchant's stored `(webhook_secret, previous_webhook_secret)` columns, as Postgres holds
/// them.
async fn stored_secrets(
    stack: &TestStack,
    merchant_id: &str,
) -> anyhow::Result<(String, Option<String>)> {
    // to_jsonb(m): every column whatever the schema version, so this reads the old one too.
    let row: Value =
        sqlx::query_scalar("SELECT to_jsonb(m) FROM merchants m WHERE merchant_id = $1")
            .bind(merchant_id)
            .fetch_one(&stack.pool)
            .await?;
    Ok((
        row["webhook_secret"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        row["previous_webhook_secret"].as_str().map(str::to_string),
    ))
}

/// `stored` is `secret` sealed for `merchant_id` with the test key: neither the secret nor its
/// random part appear in it.
fn assert_sealed(stored: &str, secret: &str, merchant_id: &str) {
    let random = secret.trim_start_matches("whsec_");
    assert!(
        !stored.contains(random) && !stored.contains(secret),
        "the secret is stored in clear: {stored}"
    );
    let key =
        paystream_core::secrets::SecretBox::from_base64(paystream_e2e_tests::TEST_ENCRYPTION_KEY)
            .unwrap();
    assert_eq!(
        key.open(stored, merchant_id).as_deref(),
        Ok(secret),
        "{stored} does not open to the secret shown"
    );
}

/// After a rotation, within the overlap window, the notifier signs with both secrets: a receiver
/// still verifying with the OLD secret accepts every webhook (one `v1` matches), and so does one
/// verifying with the new secret. Once the window is over, only the new secret signs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_keeps_signing_through_the_overlap_window() -> anyhow::Result<()> {
    const EACH: usize = 5;
    const MERCHANT: &str = "m_rotate";
    let stack = TestStack::spawn().await?;
    let (receiver, sink) = stack.receivers().await?;
    let old = stack
        .merchant_with_webhook(MERCHANT, &receiver.url)
        .await?
        .unwrap();
    let rotated: Value = stack
        .http
        .post(format!(
            "{}/v1/merchants/{MERCHANT}/rotate-secret",
            stack.gateway_url
        ))
        .bearer_auth(TEST_ADMIN_TOKEN)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let new = rotated["webhook_secret"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    stack.spawn_processor().await?;
    stack
        .spawn_notifier(stack.notifier_settings(sink.port))
        .await?;

    // A receiver that has not switched yet: it still verifies with the old secret.
    receiver.set_secret(MERCHANT, &old);
    accept(&stack, &[MERCHANT], EACH).await?;
    stack
        .eventually(WAIT, "webhooks accepted with the old secret", || async {
            anyhow::ensure!(
                receiver.bad_signatures() == 0,
                "the old secret no longer verifies right after the rotation: {} refused",
                receiver.bad_signatures()
            );
            Ok((receiver.accepted().len() >= EACH).then_some(()))
        })
        .await?;
    // The receiver switches to the new secret: accepted too.
    receiver.set_secret(MERCHANT, &new);
    accept(&stack, &[MERCHANT], EACH).await?;
    stack
        .eventually(WAIT, "webhooks accepted with the new secret", || async {
            anyhow::ensure!(
                receiver.bad_signatures() == 0,
                "the new secret does not verify"
            );
            Ok((receiver.accepted().len() >= 2 * EACH).then_some(()))
        })
        .await?;

    // The window ends: the old secret no longer signs, the new one does.
    sqlx::query(
        "UPDATE merchants SET previous_secret_expires_at = now() - interval '1 second'
         WHERE merchant_id = $1",
    )
    .bind(MERCHANT)
    .execute(&stack.pool)
    .await?;
    receiver.set_secret(MERCHANT, &old);
    accept(&stack, &[MERCHANT], 1).await?;
    stack
        .eventually(WAIT, "the old secret refused after the window", || async {
            Ok((receiver.bad_signatures() >= 1).then_some(()))
        })
        .await?;
    assert_eq!(receiver.accepted().len(), 2 * EACH);
    stack.teardown().await;
    Ok(())
}

/// Secrets stored in clear before they were sealed (rows of an older version) are sealed by the
/// gateway at start-up, and the notifier signs with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stored_in_clear_are_sealed_at_gateway_start_up() -> anyhow::Result<()> {
    const MERCHANT: &str = "m_legacy";
    let stack = TestStack::spawn().await?;
    let (receiver, sink) = stack.receivers().await?;
    let legacy = format!("whsec_{}", Uuid::new_v4().simple());
    sqlx::query(
        "INSERT INTO merchants (merchant_id, webhook_url, webhook_secret) VALUES ($1, $2, $3)",
    )
    .bind(MERCHANT)
    .bind(&receiver.url)
    .bind(&legacy)
    .execute(&stack.pool)
    .await?;
    let gateway = paystream_e2e_tests::GatewayHandle::spawn(paystream_e2e_tests::gateway_settings(
        &stack.database,
        &stack.topics,
    ))
    .await?;
    assert_sealed(
        &stored_secrets(&stack, MERCHANT).await?.0,
        &legacy,
        MERCHANT,
    );
    gateway.stop(Duration::from_secs(30)).await?;

    receiver.set_secret(MERCHANT, &legacy);
    stack.spawn_processor().await?;
    stack
        .spawn_notifier(stack.notifier_settings(sink.port))
        .await?;
    accept(&stack, &[MERCHANT], 1).await?;
    stack
        .eventually(
            WAIT,
            "a webhook signed with the sealed legacy secret",
            || async { Ok((!receiver.accepted().is_empty()).then_some(())) },
        )
        .await?;
    assert_eq!(receiver.bad_signatures(), 0);
    stack.teardown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_held_by_a_live_sender_is_not_resent_until_its_lease_lapses() -> anyhow::Result<()>
{
    const OTHER: &str = "another-notifier-0";
    let stack = TestStack::spawn().await?;
    let (receiver, sink) = stack.receivers().await?;
    let secret = stack
        .merchant_with_webhook("m_held", &receiver.url)
        .await?
        .unwrap();
    receiver.set_secret("m_held", &secret);
    stack.spawn_processor().await?;
    // No customer e-mail: the webhook is the only channel.
    let paid = stack
        .accept_payment(&paystream_e2e_tests::payment_body("m_held", "c_1", 700))
        .await?;
    stack.wait_terminal(1, WAIT).await?;
    let outcome = events::event_id(paid, Step::Outcome);
    // Another instance claimed the webhook and is sending it: its lease is live.
    sqlx::query(
        "INSERT INTO notification_deliveries
             (event_id, channel, payment_id, target, status, claimed_by, lease_until)
         VALUES ($1, 'webhook', $2, $3, 'sending', $4, now() + interval '1 hour')",
    )
    .bind(outcome)
    .bind(paid)
    .bind(&receiver.url)
    .bind(OTHER)
    .execute(&stack.pool)
    .await?;

    let mut settings = stack.notifier_settings(sink.port);
    // Time to see the record on the first retry topic and let the lease lapse before the
    // chain ends.
    settings.consumer.retry_delays_ms = vec![2_000, 5_000, 30_000];
    stack.spawn_notifier(settings).await?;
    let first_retry = stack
        .read_topic(&format!("{}.retry.1", stack.notifier_group()), WAIT, |r| {
            !r.is_empty()
        })
        .await?;
    let h = &first_retry[0].headers;
    assert_eq!(h.get(headers::ERROR_CLASS), Some("transient"), "{h:?}");
    let message = h.get(headers::ERROR_MESSAGE).unwrap_or_default();
    assert!(message.contains(OTHER), "{message}");
    assert!(
        receiver.accepted().is_empty(),
        "nothing sent under the other sender's live lease"
    );
    let (status, attempts): (String, i32) =
        sqlx::query_as("SELECT status, attempts FROM notification_deliveries WHERE event_id = $1")
            .bind(outcome)
            .fetch_one(&stack.pool)
            .await?;
    assert_eq!(
        (status.as_str(), attempts),
        ("sending", 1),
        "the claim untouched"
    );

    // The sender died: its lease lapses, and the retry resends once, in doubt, with the same id.
    sqlx::query("UPDATE notification_deliveries SET lease_until = now() WHERE event_id = $1")
        .bind(outcome)
        .execute(&stack.pool)
        .await?;
    let receipts = stack
        .read_topic(&stack.topics.notifications_sent, WAIT, |r| !r.is_empty())
        .await?;
    assert_eq!(receipts[0].value["channel"], "webhook");
    assert_eq!(receipts[0].value["in_doubt_resends"], 1);
    let accepted = receiver.accepted();
    assert_eq!(accepted.len(), 1, "sent once after the lease lapsed");
    assert_eq!(accepted[0].event_id, outcome.to_string());
    assert_nothing_dead_lettered(&stack).await?;
    println!(
        "held claim: 0 webhooks under the live lease (record on {}.retry.1), {} after it lapsed, \
         in-doubt resends {}",
        stack.notifier_group(),
        accepted.len(),
        receipts[0].value["in_doubt_resends"]
    );
    stack.teardown().await;
    Ok(())
}

/// The notifier's dead-letter topic is empty (read for 2 s).
async fn assert_nothing_dead_lettered(stack: &TestStack) -> anyhow::Result<()> {
    let dead = stack
        .read_raw(
            &format!("{}.dlq", stack.notifier_group()),
            Duration::from_secs(2),
            1,
        )
        .await?;
    assert!(dead.is_empty(), "nothing dead-lettered");
    Ok(())
}
