//! Retention: every service prunes the growing tables it owns once their rows are past their
//! retention, and only those rows (aged here by moving their timestamps into the past; the
//! database is the oracle); a consumer service refuses to start when its `processed_events`
//! would be pruned while a topic it reads can still hand an event back.

use std::time::Duration;

use paystream_analytics::handler::AnalyticsHandler;
use paystream_core::avro::AvroCodec;
use paystream_core::events::{self, PaymentRequested, Step, PAYMENT_REQUESTED_SCHEMA};
use paystream_core::kafka::{self, TopicSpec};
use paystream_core::service::ConsumerService;
use paystream_e2e_tests::{
    gateway_settings, payment_body, registry_url, GatewayHandle, ServiceProcess, TestStack,
};
use sqlx::PgPool;
use uuid::Uuid;

/// Bound on waiting for a pruner pass (they run every second here), not a measurement.
const PRUNED_WITHIN: Duration = Duration::from_secs(30);

async fn count(pool: &PgPool, sql: &str, bind: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql).bind(bind).fetch_one(pool).await?)
}

/// A `processed_events` row of `group`, processed `days_ago`.
async fn processed_event(pool: &PgPool, group: &str, days_ago: i32) -> anyhow::Result<Uuid> {
    let event_id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO processed_events (consumer_group, event_id, topic, partition, \"offset\",
             outputs, processed_at)
         VALUES ($1, $2, 't', 0, 0, '[]', now() - make_interval(days => $3))",
    )
    .bind(group)
    .bind(event_id)
    .bind(days_ago)
    .execute(pool)
    .await?;
    Ok(event_id)
}

async fn processed_event_ids(pool: &PgPool, group: &str) -> anyhow::Result<Vec<Uuid>> {
    Ok(sqlx::query_scalar(
        "SELECT event_id FROM processed_events WHERE consumer_group = $1 ORDER BY event_id",
    )
    .bind(group)
    .fetch_all(pool)
    .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_prunes_published_outbox_rows_never_unpublished_or_parked_ones(
) -> anyhow::Result<()> {
    // No relay anywhere: the rows' publication state is set by the test.
    let stack = TestStack::spawn_with(|s| s.gateway.outbox_relay_enabled = false).await?;
    let mut ids = Vec::new();
    for amount in 1..=4 {
        ids.push(
            stack
                .accept_payment(&payment_body("m_retention", "c_1", amount))
                .await?,
        );
    }
    let [old_published, recent_published, old_unpublished, old_parked] = ids[..] else {
        unreachable!()
    };
    // Default retention.outbox_days: 7, counted from the publication.
    for (payment, set) in [
        (
            old_published,
            "created_at = now() - interval '30 days', published_at = now() - interval '8 days'",
        ),
        (
            recent_published,
            "created_at = now() - interval '30 days', published_at = now() - interval '6 days'",
        ),
        (old_unpublished, "created_at = now() - interval '30 days'"),
        (
            old_parked,
            "created_at = now() - interval '30 days', parked_at = now() - interval '30 days', \
             last_error = 'unpublishable'",
        ),
    ] {
        let updated = sqlx::query(&format!("UPDATE outbox SET {set} WHERE message_key = $1"))
            .bind(payment.to_string())
            .execute(&stack.pool)
            .await?
            .rows_affected();
        assert_eq!(updated, 1);
    }

    // A replica pruning every second.
    let mut settings = gateway_settings(&stack.database, &stack.topics);
    settings.gateway.outbox_relay_enabled = false;
    settings.retention.interval_secs = 1;
    let replica = GatewayHandle::spawn(settings).await?;
    let pool = &stack.pool;
    let gone = old_published.to_string();
    stack
        .eventually(PRUNED_WITHIN, "old published outbox row pruned", || async {
            let left = count(
                pool,
                "SELECT count(*) FROM outbox WHERE message_key = $1",
                &gone,
            )
            .await?;
            Ok((left == 0).then_some(()))
        })
        .await?;
    let mut left: Vec<String> = sqlx::query_scalar("SELECT message_key FROM outbox")
        .fetch_all(pool)
        .await?;
    left.sort();
    let mut kept: Vec<String> = [recent_published, old_unpublished, old_parked]
        .iter()
        .map(Uuid::to_string)
        .collect();
    kept.sort();
    assert_eq!(
        left, kept,
        "the recent, the unpublished and the parked rows stay"
    );
    let metrics = stack
        .http
        .get(format!("{}/metrics", replica.url))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains(r#"paystream_retention_rows_pruned_total{table="outbox"} 1"#),
        "{metrics}"
    );
    println!("outbox: 1 of 4 rows pruned, kept {left:?}");
    replica.stop(Duration::from_secs(30)).await?;
    stack.teardown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_prunes_its_groups_processed_events_and_the_facts_of_sealed_days(
) -> anyhow::Result<()> {
    let stack = TestStack::spawn().await?;
    let group = stack.analytics_group();
    let mut settings = stack.analytics_settings();
    settings.retention.interval_secs = 1;
    stack.spawn_consumer::<AnalyticsHandler>(settings).await?;
    let old = stack
        .accept_payment(&payment_body("m_retention", "c_1", 100))
        .await?;
    let recent = stack
        .accept_payment(&payment_body("m_retention", "c_1", 200))
        .await?;
    let pool = &stack.pool;
    // Both PaymentRequested events applied: one ledger row and one fact each.
    stack
        .eventually(Duration::from_secs(60), "both payments counted", || async {
            let facts: i64 = sqlx::query_scalar("SELECT count(*) FROM analytics_payments")
                .fetch_one(pool)
                .await?;
            let applied = processed_event_ids(pool, &group).await?.len();
            Ok((facts == 2 && applied == 2).then_some(()))
        })
        .await?;
    let event_of = |payment: Uuid| async move {
        sqlx::query_scalar::<_, Uuid>("SELECT event_id FROM outbox WHERE message_key = $1")
            .bind(payment.to_string())
            .fetch_one(pool)
            .await
    };
    let (old_event, recent_event) = (event_of(old).await?, event_of(recent).await?);
    // Another group's ledger shares the table; this service never touches it.
    let foreign = processed_event(pool, "test-another-group", 60).await?;

    // Defaults: processed_events 14 days; facts 35 days, pruned a day after their day sealed.
    sqlx::query(
        "UPDATE processed_events SET processed_at = now() - interval '15 days'
         WHERE consumer_group = $1 AND event_id = $2",
    )
    .bind(&group)
    .bind(old_event)
    .execute(pool)
    .await?;
    sqlx::query(
        "UPDATE processed_events SET processed_at = now() - interval '13 days'
         WHERE consumer_group = $1 AND event_id = $2",
    )
    .bind(&group)
    .bind(recent_event)
    .execute(pool)
    .await?;
    for (payment, days) in [(old, 40), (recent, 30)] {
        sqlx::query(
            "UPDATE analytics_payments SET requested_at = now() - make_interval(days => $2)
             WHERE payment_id = $1",
        )
        .bind(payment)
        .bind(days)
        .execute(pool)
        .await?;
    }

    let old_text = old.to_string();
    stack
        .eventually(
            PRUNED_WITHIN,
            "old ledger row and old fact pruned",
            || async {
                let ledger = processed_event_ids(pool, &group).await?;
                let fact = count(
                    pool,
                    "SELECT count(*) FROM analytics_payments WHERE payment_id = $1::uuid",
                    &old_text,
                )
                .await?;
                Ok((!ledger.contains(&old_event) && fact == 0).then_some(()))
            },
        )
        .await?;
    assert_eq!(processed_event_ids(pool, &group).await?, vec![recent_event]);
    assert_eq!(
        processed_event_ids(pool, "test-another-group").await?,
        vec![foreign],
        "another group's ledger is not this service's to prune"
    );
    let facts: Vec<Uuid> = sqlx::query_scalar("SELECT payment_id FROM analytics_payments")
        .fetch_all(pool)
        .await?;
    assert_eq!(facts, vec![recent], "a fact of an unsealed day stays");

    // A payment requested 40 days ago arrives now: its day is sealed (its facts may be gone),
    // so the event is recorded as processed and changes no window.
    let late = Uuid::now_v7();
    let requested_at = chrono::Utc::now() - chrono::Duration::days(40);
    let event_id = events::event_id(late, Step::Requested);
    let event = PaymentRequested {
        event_id: event_id.to_string(),
        payment_id: late.to_string(),
        client_id: "anonymous".into(),
        merchant_id: "m_retention".into(),
        customer_id: "c_1".into(),
        amount_minor: 300,
        currency: "EUR".into(),
        payment_method: "card".into(),
        requested_at: requested_at.timestamp_millis(),
        customer_email: None,
    };
    let bytes = AvroCodec::new(&registry_url())
        .encode(
            &stack.topics.payments_requested,
            &PAYMENT_REQUESTED_SCHEMA,
            &event,
        )
        .await?;
    stack
        .produce_event(
            &stack.topics.payments_requested,
            &late.to_string(),
            &bytes,
            event_id,
        )
        .await?;
    stack
        .eventually(
            Duration::from_secs(60),
            "the late event processed",
            || async {
                Ok(processed_event_ids(pool, &group)
                    .await?
                    .contains(&event_id)
                    .then_some(()))
            },
        )
        .await?;
    let late_windows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM analytics_windows WHERE window_start <= $1 AND window_end > $1",
    )
    .bind(requested_at)
    .fetch_one(pool)
    .await?;
    let late_facts = count(
        pool,
        "SELECT count(*) FROM analytics_payments WHERE payment_id = $1::uuid",
        &late.to_string(),
    )
    .await?;
    assert_eq!(
        (late_windows, late_facts),
        (0, 0),
        "an event for a sealed day is not applied"
    );
    println!(
        "analytics: kept ledger row {recent_event} and fact {recent}; \
         sealed-day event {event_id} not applied"
    );
    stack.teardown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notifier_prunes_settled_deliveries_never_a_claim_in_flight() -> anyhow::Result<()> {
    let stack = TestStack::spawn().await?;
    let pool = &stack.pool;
    let (_webhooks, smtp) = stack.receivers().await?;
    let mut settings = stack.notifier_settings(smtp.port);
    settings.retention.interval_secs = 1;
    let group = settings.consumer.group_id.clone();

    // Default retention.notification_deliveries_days: 30, from when the delivery settled.
    let rows = [
        ("delivered 31 days ago", "delivered", 40, Some(31), true),
        ("failed 31 days ago", "failed", 31, None, true),
        (
            "claimed 31 days ago, still sending",
            "sending",
            31,
            None,
            false,
        ),
        (
            "claimed 40 days ago, delivered 29 days ago",
            "delivered",
            40,
            Some(29),
            false,
        ),
    ];
    let mut events = Vec::new();
    for (what, status, claimed_days_ago, delivered_days_ago, _) in &rows {
        let event_id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO notification_deliveries
                 (event_id, channel, payment_id, target, status, claimed_at, delivered_at)
             VALUES ($1, 'webhook', $2, $3, $4, now() - make_interval(days => $5),
                     now() - make_interval(days => $6))",
        )
        .bind(event_id)
        .bind(Uuid::new_v4())
        .bind(*what)
        .bind(*status)
        .bind(*claimed_days_ago)
        .bind(*delivered_days_ago)
        .execute(pool)
        .await?;
        events.push(event_id);
    }
    let old_ledger = processed_event(pool, &group, 15).await?;
    let recent_ledger = processed_event(pool, &group, 1).await?;

    stack.spawn_notifier(settings).await?;
    let pruned: Vec<Uuid> = rows
        .iter()
        .zip(&events)
        .filter(|(row, _)| row.4)
        .map(|(_, id)| *id)
        .collect();
    stack
        .eventually(PRUNED_WITHIN, "settled deliveries pruned", || async {
            let left: Vec<Uuid> =
                sqlx::query_scalar("SELECT event_id FROM notification_deliveries")
                    .fetch_all(pool)
                    .await?;
            let ledger = processed_event_ids(pool, &group).await?;
            Ok(
                (!left.iter().any(|id| pruned.contains(id)) && !ledger.contains(&old_ledger))
                    .then_some(()),
            )
        })
        .await?;
    let left: Vec<String> =
        sqlx::query_scalar("SELECT target FROM notification_deliveries ORDER BY target")
            .fetch_all(pool)
            .await?;
    assert_eq!(
        left,
        [
            "claimed 31 days ago, still sending",
            "claimed 40 days ago, delivered 29 days ago"
        ]
    );
    assert_eq!(
        processed_event_ids(pool, &group).await?,
        vec![recent_ledger]
    );
    println!("notifier: kept {left:?}");
    stack.teardown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_refuses_to_start_when_its_ledger_would_forget_a_replayable_event(
) -> anyhow::Result<()> {
    let stack = TestStack::spawn().await?;
    // The stack's topics keep the broker's default, 7 days; 8 days of ledger is not longer
    // than 7 days plus the default margin of 1 day.
    let mut env = stack.consumer_env(&stack.analytics_group(), "retention-refused-0");
    env.push((
        "PAYSTREAM_RETENTION__PROCESSED_EVENTS_DAYS".into(),
        "8".into(),
    ));
    let mut refused = ServiceProcess::start(
        "analytics",
        env,
        &format!("test-{}-retention-refused", stack.id),
    )?;
    let status = refused.wait_exit(Duration::from_secs(60)).await?;
    let log = std::fs::read_to_string(&refused.log_path)?;
    assert!(!status.success(), "{status}: {log}");
    assert!(
        log.contains(
            "retention.processed_events_days (8 days) must be longer than the retention of topic `"
        ) && log.contains("retention.replay_margin_days (1 day)"),
        "{log}"
    );
    println!("refused: {}", log.lines().last().unwrap_or_default());

    // A dead-letter topic keeping records forever: any pruning of the ledger is refused…
    let forever = format!("test-{}.forever.dlq", stack.id);
    kafka::ensure_topics(
        &stack.kafka,
        &[TopicSpec {
            config: vec![("retention.ms".into(), "-1".into())],
            ..TopicSpec::new(&forever, 1)
        }],
    )
    .await?;
    let mut settings = stack.analytics_settings();
    settings.consumer.dlq_topic = Some(forever.clone());
    settings.retention.processed_events_days = 36_500;
    let error = match ConsumerService::<AnalyticsHandler>::build(settings.clone()).await {
        Ok(_) => anyhow::bail!("started although {forever} keeps records forever"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        error.contains(&format!(
            "retention.processed_events_days (36500 days) must be longer than the retention \
             of topic `{forever}` (forever)"
        )),
        "{error}"
    );
    // …unless pruning it is off.
    settings.retention.processed_events_days = 0;
    ConsumerService::<AnalyticsHandler>::build(settings).await?;
    stack.teardown().await;
    Ok(())
}
