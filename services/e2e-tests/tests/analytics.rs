//! The analytics group: every event counted exactly once (with aborted batches in between),
//! totals equal to the PSP simulator's own ledger, the compacted topic carrying each window's
//! latest full state, and late events still updating their window.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{stream, StreamExt, TryStreamExt};
use paystream_core::avro::AvroCodec;
use paystream_core::events::{
    self, OutcomeStatus, PaymentOutcome, PaymentRequested, Step, PAYMENT_OUTCOME_SCHEMA,
    PAYMENT_REQUESTED_SCHEMA,
};
use paystream_e2e_tests::{registry_url, DecodedRecord, TestStack};
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
    let requested = PaymentRequested {
        event_id: events::event_id(payment_id, Step::Requested).to_string(),
        payment_id: payment_id.to_string(),
        client_id: "anonymous".into(),
        merchant_id: "m_late".into(),
        customer_id: "c_1".into(),
        amount_minor: 1234,
        currency: "EUR".into(),
        payment_method: "card".into(),
        requested_at,
        customer_email: None,
    };
    let outcome = PaymentOutcome {
        event_id: events::event_id(payment_id, Step::Outcome).to_string(),
        payment_id: payment_id.to_string(),
        merchant_id: "m_late".into(),
        customer_id: "c_1".into(),
        amount_minor: 1234,
        currency: "EUR".into(),
        status: OutcomeStatus::Failed,
        failure_reason: Some("insufficient_funds".into()),
        psp_charge_id: None,
        requested_at,
        decided_at: requested_at + 1_500,
    };
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
