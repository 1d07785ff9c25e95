//! The analytics group: every event counted exactly once (with aborted batches in between),
//! totals equal to the PSP simulator's own ledger, the compacted topic carrying each window's
//! latest full state, late events still updating their window, and two instances racing
//! aborted transactions never leaving an older window revision last on the compacted topic.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{stream, StreamExt, TryStreamExt};
use paystream_analytics::windows::{window_key, Granularity};
use paystream_core::avro::AvroCodec;
use paystream_core::events::{
    self, OutcomeStatus, PaymentOutcome, PaymentRequested, Step, PAYMENT_OUTCOME_SCHEMA,
    PAYMENT_REQUESTED_SCHEMA,
};
use paystream_e2e_tests::{registry_url, DecodedRecord, TestStack, WindowTotals};
use paystream_psp_simulator::ConfigPatch;
use serde_json::json;
use uuid::Uuid;

const PAYMENTS: usize = 1_000;
const MERCHANTS: [&str; 3] = ["m_an_1", "m_an_2", "m_an_3"];
const CURRENCIES: [&str; 2] = ["EUR", "USD"];
const WAIT: Duration = Duration::from_secs(240);

fn body(i: usize) -> serde_json::Value {
    json!({
        "merchant_id": MERCHANTS[i % MERCHANTS.len()],
        "amount_minor": 100 + (i as i64 * 37) % 9_900,
        "currency": CURRENCIES[(i / MERCHANTS.len()) % CURRENCIES.len()],
        // Every 7th payment uses the simulator's always-declining card; the rate-based
        // declines add a mix of other reasons.
        "customer_id": if i.is_multiple_of(7) { format!("cus_decline_{i}") } else { format!("c_{i}") },
        "payment_method": "card",
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_event_is_counted_once_and_totals_match_the_psp() -> anyhow::Result<()> {
    let stack = TestStack::spawn().await?;
    stack
        .psp
        .set_config(&ConfigPatch {
            decline_rate: Some(0.2),
            ..Default::default()
        })
        .await?;
    stack.spawn_processor().await?;
    let (stats, faults) = stack.spawn_analytics().await?;

    // Abort the analytics transaction mid-batch a few times while the payments flow.
    let aborter = {
        let faults = faults.clone();
        tokio::spawn(async move {
            for n in [40, 150, 300] {
                faults.abort_after_records(n);
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
        })
    };

    stream::iter(0..PAYMENTS)
        .map(|i| {
            let stack = &stack;
            async move { stack.accept_payment(&body(i)).await }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    stack.wait_terminal(PAYMENTS, WAIT).await?;
    aborter.await?;

    let expected = stack.psp_totals().await?;
    let charged: i64 = expected.values().map(|t| t.requested_count).sum();
    assert_eq!(charged, PAYMENTS as i64, "one PSP charge per payment");
    let day = stack
        .eventually(WAIT, "analytics day windows complete", || async {
            let totals = stack.analytics_totals("day").await?;
            let decided: i64 = totals
                .values()
                .map(|t| t.succeeded_count + t.failed_count)
                .sum();
            let requested: i64 = totals.values().map(|t| t.requested_count).sum();
            Ok((decided >= PAYMENTS as i64 && requested >= PAYMENTS as i64).then_some(totals))
        })
        .await?;
    // Give a wrongly doubled event time to show up before judging.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let day = {
        let again = stack.analytics_totals("day").await?;
        assert_eq!(again, day, "totals still moving after completion");
        again
    };
    let minute = stack.analytics_totals("minute").await?;
    assert_eq!(day, expected, "day rollup equals the PSP ledger");
    assert_eq!(minute, expected, "minute windows equal the PSP ledger");

    let applied: i64 =
        sqlx::query_scalar("SELECT count(*) FROM processed_events WHERE consumer_group = $1")
            .bind(stack.analytics_group())
            .fetch_one(&stack.pool)
            .await?;
    assert_eq!(
        applied,
        2 * PAYMENTS as i64,
        "each requested and outcome event applied once"
    );
    let snapshot = stats.snapshot();
    assert!(
        snapshot["batches_aborted"] >= 1,
        "the injected aborts happened: {snapshot:?}"
    );

    // Success rate and latency percentiles of each day window are consistent.
    type Rates = (i64, i64, Option<f64>, Option<i64>, Option<i64>, Option<i64>);
    let windows: Vec<Rates> = sqlx::query_as(
        "SELECT succeeded_count, failed_count, success_rate,
                    latency_p50_ms, latency_p95_ms, latency_p99_ms
             FROM analytics_windows WHERE granularity = 'day'",
    )
    .fetch_all(&stack.pool)
    .await?;
    for (ok, failed, rate, p50, p95, p99) in &windows {
        let rate = rate.expect("every window has outcomes");
        assert!((rate - *ok as f64 / (*ok + *failed) as f64).abs() < 1e-9);
        let (p50, p95, p99) = (p50.unwrap(), p95.unwrap(), p99.unwrap());
        assert!(0 <= p50 && p50 <= p95 && p95 <= p99, "{p50} {p95} {p99}");
    }

    // The compacted topic: the latest record of each day window equals the stored state.
    let records = stack
        .read_all(
            &stack.topics.analytics_payment_stats,
            Duration::from_secs(5),
        )
        .await?;
    let mut latest: HashMap<String, &DecodedRecord> = HashMap::new();
    for r in &records {
        let newer = latest
            .get(&r.key)
            .is_none_or(|l| (l.partition, l.offset) < (r.partition, r.offset));
        if newer {
            latest.insert(r.key.clone(), r);
        }
    }
    let mut day_keys = 0;
    for ((merchant, currency), totals) in &day {
        let on_topic: i64 = latest
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{merchant}|{currency}|day/")))
            .map(|(_, r)| {
                day_keys += 1;
                r.value["requested_count"].as_i64().unwrap_or(-1)
            })
            .sum();
        assert_eq!(on_topic, totals.requested_count, "{merchant} {currency}");
    }
    // The gateway's view: the day buckets of each merchant add up to the same totals, and
    // the minute buckets of the last 24 h (the default range) too.
    for merchant in MERCHANTS {
        let month_ago = (chrono::Utc::now() - chrono::Duration::days(30))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        for (granularity, query) in [
            ("day", format!("?granularity=day&from={month_ago}")),
            ("minute", String::new()),
        ] {
            let view: serde_json::Value = stack
                .http
                .get(format!(
                    "{}/v1/analytics/merchants/{merchant}/stats{query}",
                    stack.gateway_url
                ))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            assert_eq!(view["merchant_id"], merchant);
            assert_eq!(view["granularity"], granularity);
            for currency in CURRENCIES {
                let buckets: Vec<&serde_json::Value> = view["buckets"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|b| b["currency"] == currency)
                    .collect();
                let sum = |field: &str| -> i64 {
                    buckets.iter().map(|b| b[field].as_i64().unwrap()).sum()
                };
                let expected = &expected[&(merchant.to_string(), currency.to_string())];
                assert_eq!(sum("requested_count"), expected.requested_count);
                assert_eq!(
                    sum("succeeded_amount_minor"),
                    expected.succeeded_amount_minor
                );
                assert_eq!(sum("failed_count"), expected.failed_count);
                assert!(buckets.iter().all(|b| b["latency_ms"]["p99"].is_i64()
                    && b["window_start"].as_str().unwrap().ends_with('Z')));
            }
        }
    }
    for bad in [
        "?granularity=hour",
        "?from=yesterday",
        "?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
        "?granularity=day&from=2000-01-01T00:00:00Z",
    ] {
        let response = stack
            .http
            .get(format!(
                "{}/v1/analytics/merchants/m_an_1/stats{bad}",
                stack.gateway_url
            ))
            .send()
            .await?;
        assert_eq!(response.status(), 400, "{bad}");
    }

    println!(
        "analytics: {PAYMENTS} payments, PSP ledger {expected:?}; {} stats records on the topic, {day_keys} day keys; loop {snapshot:?}",
        records.len()
    );
    assert!(stats.records_applied.load(Ordering::Relaxed) as i64 >= applied);
    stack.teardown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_and_repeated_events_update_their_window_once() -> anyhow::Result<()> {
    let stack = TestStack::spawn().await?;
    stack.spawn_analytics().await?;
    let codec = AvroCodec::new(&registry_url());

    // A payment requested two days ago, decided a second later: far past any lateness.
    let payment_id = Uuid::now_v7();
    let requested_at = chrono::Utc::now().timestamp_millis() - 2 * 86_400_000;
    let (requested, outcome) = payment_events(
        payment_id,
        "m_late",
        "c_1".into(),
        1234,
        requested_at,
        Decision {
            status: OutcomeStatus::Failed,
            failure_reason: Some("insufficient_funds".into()),
            decided_at: requested_at + 1_500,
        },
    );
    let requested_bytes = codec
        .encode(
            &stack.topics.payments_requested,
            &PAYMENT_REQUESTED_SCHEMA,
            &requested,
        )
        .await?;
    let outcome_bytes = codec
        .encode(
            &stack.topics.payments_outcomes,
            &PAYMENT_OUTCOME_SCHEMA,
            &outcome,
        )
        .await?;
    let key = payment_id.to_string();
    // The outcome first, then the request, then both again (a republished copy).
    for _ in 0..2 {
        stack
            .produce_event(
                &stack.topics.payments_outcomes,
                &key,
                &outcome_bytes,
                events::event_id(payment_id, Step::Outcome),
            )
            .await?;
        stack
            .produce_event(
                &stack.topics.payments_requested,
                &key,
                &requested_bytes,
                events::event_id(payment_id, Step::Requested),
            )
            .await?;
    }

    let row: (i64, i64, i64, serde_json::Value, Option<i64>) = stack
        .eventually(Duration::from_secs(60), "late window", || async {
            Ok(sqlx::query_as(
                "SELECT requested_count, requested_amount_minor, failed_count,
                        failed_by_reason, latency_p50_ms
                 FROM analytics_windows
                 WHERE merchant_id = 'm_late' AND granularity = 'minute'
                   AND requested_count = 1 AND failed_count = 1",
            )
            .fetch_optional(&stack.pool)
            .await?)
        })
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT requested_count, failed_count FROM analytics_windows WHERE merchant_id = 'm_late'",
    )
    .fetch_all(&stack.pool)
    .await?;
    assert_eq!(
        rows,
        vec![(1, 1), (1, 1)],
        "one minute and one day window, counted once"
    );
    assert_eq!(row.1, 1234);
    assert_eq!(row.3, json!({"insufficient_funds": 1}));
    assert_eq!(row.4, Some(1_500), "latency requested → outcome");
    let window_start: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "SELECT window_start FROM analytics_windows WHERE merchant_id = 'm_late' AND granularity = 'minute'",
    )
    .fetch_one(&stack.pool)
    .await?;
    assert_eq!(
        window_start.timestamp_millis(),
        requested_at - requested_at % 60_000
    );
    stack.teardown().await;
    Ok(())
}

/// One synthetic payment of [`two_instances_racing_aborts_leave_the_newest_revision_last`]:
/// its two events, and a third repeating the outcome under another event id.
fn synthetic_payment(
    i: usize,
    now_ms: i64,
) -> (PaymentRequested, PaymentOutcome, Option<PaymentOutcome>) {
    let payment_id = Uuid::now_v7();
    // Five minute windows of two merchants, all in today's or yesterday's day windows.
    let requested_at = now_ms - (i % 5) as i64 * 60_000;
    let merchant = ["m_race_1", "m_race_2"][i % 2];
    let amount_minor = 100 + (i as i64 * 53) % 5_000;
    let failed = i.is_multiple_of(4);
    let (requested, outcome) = payment_events(
        payment_id,
        merchant,
        format!("c_{i}"),
        amount_minor,
        requested_at,
        Decision {
            status: if failed {
                OutcomeStatus::Failed
            } else {
                OutcomeStatus::Succeeded
            },
            failure_reason: failed
                .then(|| ["card_declined", "insufficient_funds"][i % 8 / 4].into()),
            decided_at: requested_at + 20 + (i as i64 * 131) % 3_000,
        },
    );
    let repeated = i.is_multiple_of(10).then(|| PaymentOutcome {
        event_id: Uuid::now_v7().to_string(),
        ..outcome.clone()
    });
    (requested, outcome, repeated)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_racing_aborts_leave_the_newest_revision_last() -> anyhow::Result<()> {
    const WAVE: usize = 60;
    const MAX_WAVES: usize = 40;
    let stack = TestStack::spawn().await?;
    let (stats_a, faults_a) = stack.spawn_analytics().await?;
    // The second instance in a group of its own, as a blue/green redeploy backfilling the same
    // input runs: it sees every event the first one sees, so the two race on every window (two
    // members of one group may split the partitions so that one only reads the retry topics).
    // Its events count nowhere twice: the facts are shared.
    let mut settings = stack.analytics_settings();
    settings.consumer.group_id = format!("{}-b", stack.analytics_group());
    settings.consumer.transactional_id = format!("{}-0", settings.consumer.group_id);
    let groups = [stack.analytics_group(), settings.consumer.group_id.clone()];
    let (stats_b, faults_b) = stack
        .spawn_consumer::<paystream_analytics::handler::AnalyticsHandler>(settings)
        .await?;
    let codec = AvroCodec::new(&registry_url());
    let aborted = || {
        stats_a.batches_aborted.load(Ordering::Relaxed)
            + stats_b.batches_aborted.load(Ordering::Relaxed)
    };

    // Waves of payments over the same few windows until both instances have applied records
    // and both have aborted a transaction after its database commit, the other one going on.
    let mut expected: HashMap<(String, String), WindowTotals> = HashMap::new();
    let mut events_sent = 0;
    let mut waves = 0;
    while waves < MAX_WAVES
        && (stats_a.batches_aborted.load(Ordering::Relaxed) < 2
            || stats_b.batches_aborted.load(Ordering::Relaxed) < 2)
    {
        if waves % 3 == 0 {
            faults_a.abort_after_records(7);
            faults_b.abort_after_records(11);
        }
        let (mut requested, mut outcomes) = (Vec::new(), Vec::new());
        let now_ms = chrono::Utc::now().timestamp_millis();
        for i in waves * WAVE..(waves + 1) * WAVE {
            let (r, o, repeated) = synthetic_payment(i, now_ms);
            let t = expected
                .entry((r.merchant_id.clone(), r.currency.clone()))
                .or_default();
            t.requested_count += 1;
            t.requested_amount_minor += r.amount_minor;
            match &o.failure_reason {
                None => {
                    t.succeeded_count += 1;
                    t.succeeded_amount_minor += o.amount_minor;
                }
                Some(reason) => {
                    t.failed_count += 1;
                    *t.failed_by_reason.entry(reason.clone()).or_default() += 1;
                }
            }
            for o in std::iter::once(o).chain(repeated) {
                let bytes = codec
                    .encode(&stack.topics.payments_outcomes, &PAYMENT_OUTCOME_SCHEMA, &o)
                    .await?;
                outcomes.push((o.payment_id.clone(), bytes, o.event_id.parse::<Uuid>()?));
            }
            let bytes = codec
                .encode(
                    &stack.topics.payments_requested,
                    &PAYMENT_REQUESTED_SCHEMA,
                    &r,
                )
                .await?;
            requested.push((r.payment_id.clone(), bytes, r.event_id.parse::<Uuid>()?));
        }
        events_sent += requested.len() + outcomes.len();
        // Outcomes first in odd waves: either event of a payment may arrive first.
        let order = if waves % 2 == 1 {
            [
                (&stack.topics.payments_outcomes, &outcomes),
                (&stack.topics.payments_requested, &requested),
            ]
        } else {
            [
                (&stack.topics.payments_requested, &requested),
                (&stack.topics.payments_outcomes, &outcomes),
            ]
        };
        for (topic, events) in order {
            stack.produce_events(topic, events).await?;
        }
        waves += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let payments = waves * WAVE;

    // Postgres: every payment counted once (repeated outcomes included), whichever instance.
    for granularity in ["day", "minute"] {
        stack
            .eventually(WAIT, "analytics windows complete", || async {
                let totals = stack.analytics_totals(granularity).await?;
                let counted: i64 = totals.values().map(|t| t.requested_count).sum();
                let decided: i64 = totals
                    .values()
                    .map(|t| t.succeeded_count + t.failed_count)
                    .sum();
                Ok((counted >= payments as i64 && decided >= payments as i64).then_some(()))
            })
            .await?;
    }
    for group in &groups {
        let applied = |group: &str| {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM processed_events WHERE consumer_group = $1",
            )
            .bind(group.to_string())
            .fetch_one(&stack.pool)
        };
        stack
            .eventually(WAIT, "both groups caught up", || async {
                Ok((applied(group).await? >= events_sent as i64).then_some(()))
            })
            .await?;
        assert_eq!(
            applied(group).await?,
            events_sent as i64,
            "each event applied once by {group}"
        );
    }
    assert_eq!(stack.analytics_totals("day").await?, expected);
    assert_eq!(stack.analytics_totals("minute").await?, expected);

    #[derive(sqlx::FromRow, Debug)]
    struct Stored {
        merchant_id: String,
        currency: String,
        granularity: String,
        window_start: chrono::DateTime<chrono::Utc>,
        revision: i64,
        requested_count: i64,
        succeeded_count: i64,
        failed_count: i64,
        latency_p99_ms: Option<i64>,
    }
    let stored: Vec<Stored> = sqlx::query_as(
        "SELECT merchant_id, currency, granularity, window_start, revision, requested_count,
                succeeded_count, failed_count, latency_p99_ms
         FROM analytics_windows",
    )
    .fetch_all(&stack.pool)
    .await?;
    let key = |s: &Stored| {
        let granularity = Granularity::parse(&s.granularity).expect("a stored granularity");
        window_key(&s.merchant_id, &s.currency, granularity, s.window_start)
    };

    // The compacted topic as a stock client reads it under read_committed: the last record of
    // every window is the window's stored revision and counts. Read again while the last
    // Kafka transaction may still be committing (its database commit came first).
    let mismatches = |last: &HashMap<String, serde_json::Value>| -> Vec<String> {
        stored
            .iter()
            .filter_map(|s| {
                let on_topic = last.get(&key(s));
                let field = |f: &str| on_topic.and_then(|v| v[f].as_i64());
                let ok = field("revision") == Some(s.revision)
                    && field("requested_count") == Some(s.requested_count)
                    && field("succeeded_count") == Some(s.succeeded_count)
                    && field("failed_count") == Some(s.failed_count)
                    && on_topic.map(|v| v["latency_p99_ms"].as_i64()) == Some(s.latency_p99_ms);
                (!ok).then(|| format!("{} stored {s:?}, last on the topic {on_topic:?}", key(s)))
            })
            .collect()
    };
    let mut attempts = 0;
    let (last, wrong) = loop {
        let read = paystream_e2e_tests::third_party::confluent_read_committed_last_values(
            &stack.kafka.bootstrap_servers,
            &stack.topics.analytics_payment_stats,
        )
        .await?;
        let mut last = HashMap::new();
        for (k, bytes) in &read.last_values {
            last.insert(k.clone(), codec.decode_json(Some(bytes.as_slice())).await?);
        }
        let wrong = mismatches(&last);
        attempts += 1;
        if wrong.is_empty() || attempts == 20 {
            break (last, wrong);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert!(
        wrong.is_empty(),
        "{} windows end on a stale record: {wrong:#?}",
        wrong.len()
    );
    assert_eq!(
        last.len(),
        stored.len(),
        "a record for every window, none for others"
    );

    // And in offset order (the harness's read_committed reader): a key's revisions never go
    // back, whichever instance produced them and whatever was aborted in between.
    let records = stack
        .read_all(
            &stack.topics.analytics_payment_stats,
            Duration::from_secs(5),
        )
        .await?;
    let mut by_key: HashMap<&str, Vec<(i32, i64, i64)>> = HashMap::new();
    for r in &records {
        let revision = r.value["revision"].as_i64().unwrap_or(-1);
        by_key
            .entry(r.key.as_str())
            .or_default()
            .push((r.partition, r.offset, revision));
    }
    let mut regressions = Vec::new();
    for (k, mut produced) in by_key {
        produced.sort();
        if produced.windows(2).any(|w| w[1].2 < w[0].2) {
            regressions.push(k);
        }
    }
    assert!(
        regressions.is_empty(),
        "revisions going back: {regressions:?}"
    );
    let aborts = aborted();
    assert!(
        stats_a.batches_aborted.load(Ordering::Relaxed) >= 1
            && stats_b.batches_aborted.load(Ordering::Relaxed) >= 1,
        "both instances aborted after their database commit"
    );
    let revisions: i64 = stored.iter().map(|s| s.revision).sum();
    let max_revision = stored.iter().map(|s| s.revision).max().unwrap_or(0);
    println!(
        "analytics race: {payments} payments ({events_sent} events, {waves} waves) through 2 instances \
         (loops {:?} / {:?}), {aborts} aborts; {} windows checked, revisions sum {revisions} max \
         {max_revision}; {} records on the topic, last record = stored revision for all after {attempts} read(s)",
        stats_a.snapshot(),
        stats_b.snapshot(),
        stored.len(),
        records.len(),
    );
    stack.teardown().await;
    Ok(())
}

/// How a synthetic payment was decided.
struct Decision {
    status: OutcomeStatus,
    failure_reason: Option<String>,
    decided_at: i64,
}

/// A payment's two events as the gateway and the processor would write them.
fn payment_events(
    payment_id: Uuid,
    merchant: &str,
    customer: String,
    amount_minor: i64,
    requested_at: i64,
    decision: Decision,
) -> (PaymentRequested, PaymentOutcome) {
    let requested = PaymentRequested {
        event_id: events::event_id(payment_id, Step::Requested).to_string(),
        payment_id: payment_id.to_string(),
        client_id: "anonymous".into(),
        merchant_id: merchant.into(),
        customer_id: customer.clone(),
        amount_minor,
        currency: "EUR".into(),
        payment_method: "card".into(),
        requested_at,
        customer_email: None,
    };
    let outcome = PaymentOutcome {
        event_id: events::event_id(payment_id, Step::Outcome).to_string(),
        payment_id: payment_id.to_string(),
        merchant_id: merchant.into(),
        customer_id: customer,
        amount_minor,
        currency: "EUR".into(),
        status: decision.status,
        failure_reason: decision.failure_reason,
        psp_charge_id: None,
        requested_at,
        decided_at: decision.decided_at,
    };
    (requested, outcome)
}
