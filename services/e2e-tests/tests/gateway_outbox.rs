//! The transactional outbox: no accepted payment is lost while the broker is down, and a row
//! that can never be published is parked without blocking the rows after it.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use paystream_core::config::KafkaSettings;
use paystream_core::events::{self, Step};
use paystream_core::headers::RecordHeaders;
use paystream_core::kafka::{self, TopicSpec};
use paystream_core::shutdown::Shutdown;
use paystream_e2e_tests::own_kafka::OwnKafka;
use paystream_e2e_tests::third_party;
use paystream_e2e_tests::{gateway_settings, payment_body, GatewayHandle, TestStack, PARTITIONS};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

const PAYMENTS: usize = 100;

/// Every record of `topic` on the broker at `kafka` (read_committed, all partitions), read until
/// `done` holds and then for another second of quiet, or until `timeout`.
async fn read_all(
    kafka: &KafkaSettings,
    topic: &str,
    timeout: Duration,
    done: impl Fn(&[(String, RecordHeaders)]) -> bool,
) -> anyhow::Result<Vec<(String, RecordHeaders)>> {
    let consumer: StreamConsumer = kafka::client_config(
        kafka,
        &[
            ("group.id", &format!("reader-{}", Uuid::new_v4())),
            ("enable.auto.commit", "false"),
            ("isolation.level", "read_committed"),
        ],
    )?
    .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut assignment = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            assignment.add_partition_offset(topic, p.id(), Offset::Beginning)?;
        }
    }
    consumer.assign(&assignment)?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut records = Vec::new();
    loop {
        let wait = if done(&records) {
            tokio::time::Instant::now() + Duration::from_secs(1)
        } else {
            deadline
        };
        match tokio::time::timeout_at(wait.min(deadline), consumer.recv()).await {
            Ok(message) => {
                let message = message?;
                records.push((
                    String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
                    RecordHeaders::from_kafka(message.headers()),
                ));
            }
            Err(_) => return Ok(records),
        }
    }
}

async fn unpublished(stack: &TestStack) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(&stack.pool)
            .await?,
    )
}

async fn scrape(stack: &TestStack, base: &str) -> anyhow::Result<String> {
    Ok(stack
        .http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?)
}

/// Outcome of this test: the relay is at-least-once (it can publish a row again after a crash
/// between the broker's acknowledgement and its commit, or after a delivery timeout of a record
/// the broker did write), so the topic may in principle hold a row twice; effects are
/// exactly-once because the processor dedupes on the deterministic event id. The test checks
/// both: every event arrives (raw duplicates are reported), and exactly 100 charges and 100
/// outcomes result.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payments_accepted_while_the_broker_is_down_all_reach_kafka() -> anyhow::Result<()> {
    // A broker of the test's own, not started yet.
    let mut broker = OwnKafka::new()?;
    let kafka = broker.settings();
    let configure = |s: &mut paystream_gateway::Settings| {
        s.kafka = kafka.clone();
        s.gateway.produce_timeout_ms = 3000;
    };
    // Two gateway replicas, both relaying the same outbox to a broker that is not there yet.
    let stack = TestStack::spawn_with(configure).await?;
    let mut replica_settings = gateway_settings(&stack.database, &stack.topics);
    configure(&mut replica_settings);
    let replica = GatewayHandle::spawn(replica_settings).await?;

    let mut ids = HashSet::new();
    for i in 0..PAYMENTS {
        let base = if i % 2 == 0 {
            &stack.gateway_url
        } else {
            &replica.url
        };
        let response = stack
            .http
            .post(format!("{base}/v1/payments"))
            .header("Idempotency-Key", format!("down-{i}"))
            .header("content-type", "application/json")
            .body(payment_body("m_down", &format!("c_{i}"), 100 + i as i64).to_string())
            .send()
            .await?;
        assert_eq!(
            response.status(),
            202,
            "payment {i} accepted while Kafka is down"
        );
        let json: serde_json::Value = response.json().await?;
        ids.insert(json["id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), PAYMENTS);
    assert_eq!(unpublished(&stack).await?, PAYMENTS as i64);
    let metrics = scrape(&stack, &replica.url).await?;
    assert!(
        metrics.contains(&format!("gateway_outbox_backlog_rows {PAYMENTS}")),
        "{metrics}"
    );
    let age = metrics
        .lines()
        .find_map(|l| l.strip_prefix("gateway_outbox_oldest_unpublished_age_seconds "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_default();
    assert!(age > 0.0, "oldest unpublished row has an age: {metrics}");

    broker.launch().await?;
    kafka::ensure_topics(
        &kafka,
        &[
            TopicSpec::new(&stack.topics.payments_requested, PARTITIONS),
            TopicSpec::new(&stack.topics.payments_outcomes, PARTITIONS),
            TopicSpec::new(format!("{}.dlq", stack.group_id), 1),
        ],
    )
    .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while unpublished(&stack).await? > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "outbox not drained after the broker came up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let records = read_all(
        &kafka,
        &stack.topics.payments_requested,
        Duration::from_secs(60),
        |r| r.iter().map(|(k, _)| k).collect::<HashSet<_>>().len() >= PAYMENTS,
    )
    .await?;
    let mut per_key: HashMap<&str, usize> = HashMap::new();
    for (key, headers) in &records {
        *per_key.entry(key.as_str()).or_default() += 1;
        let expected = events::event_id(Uuid::parse_str(key)?, Step::Requested).to_string();
        assert_eq!(headers.get("event_id"), Some(expected.as_str()));
    }
    let keys: HashSet<String> = per_key.keys().map(|k| k.to_string()).collect();
    assert_eq!(keys, ids, "every accepted payment's event arrived");
    let duplicates = records.len() - per_key.len();
    eprintln!(
        "broker-down test: {} records for {} payments ({duplicates} raw duplicates)",
        records.len(),
        per_key.len()
    );

    // Effects: a processor on this broker charges each payment exactly once.
    let mut processor_settings = stack.processor_settings();
    processor_settings.kafka = kafka.clone();
    let processor = paystream_payment_processor::Application::build(processor_settings).await?;
    let processor_shutdown = Shutdown::new();
    let processor_task = tokio::spawn(processor.run_until_stopped(processor_shutdown.clone()));
    let terminal = stack
        .wait_terminal(PAYMENTS, Duration::from_secs(120))
        .await?;
    assert!(terminal.values().all(|s| s == "SUCCEEDED"), "{terminal:?}");
    let charges = stack.charges().await?;
    assert_eq!(charges.iter().filter(|c| c.has_charge()).count(), PAYMENTS);
    assert_eq!(charges.len(), PAYMENTS, "{charges:?}");

    processor_shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), processor_task).await;
    replica.stop(Duration::from_secs(30)).await?;
    stack.teardown().await;
    drop(broker);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_that_can_never_be_published_are_parked_and_the_rest_flows() -> anyhow::Result<()> {
    let stack = TestStack::spawn().await?;
    let topic = &stack.topics.payments_requested;
    // Three broken rows ahead of the good ones: an undecodable payload, an unknown event type
    // and headers that are not a header list.
    let bad = [
        (
            "bad-payload",
            "io.paystream.payments.v1.PaymentRequested",
            r#"{"garbage": true}"#,
            "[]",
        ),
        (
            "bad-type",
            "io.paystream.payments.v1.NoSuchEvent",
            "{}",
            "[]",
        ),
        (
            "bad-headers",
            "io.paystream.payments.v1.PaymentRequested",
            "{}",
            r#""not a list""#,
        ),
    ];
    for (key, event_type, payload, headers) in bad {
        sqlx::query(
            "INSERT INTO outbox (event_id, topic, message_key, event_type, payload, headers)
             VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb)",
        )
        .bind(Uuid::new_v4())
        .bind(topic)
        .bind(key)
        .bind(event_type)
        .bind(payload)
        .bind(headers)
        .execute(&stack.pool)
        .await?;
    }
    let mut ids = HashSet::new();
    for i in 0..3 {
        ids.insert(
            stack
                .accept_payment(&payment_body("m_park", &format!("c_{i}"), 10 + i))
                .await?
                .to_string(),
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while unpublished(&stack).await? > 3
        || sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox WHERE parked_at IS NOT NULL")
            .fetch_one(&stack.pool)
            .await?
            < 3
    {
        assert!(tokio::time::Instant::now() < deadline, "relay stuck");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let parked: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT message_key, last_error FROM outbox
         WHERE parked_at IS NOT NULL AND published_at IS NULL ORDER BY id",
    )
    .fetch_all(&stack.pool)
    .await?;
    let parked_keys: Vec<&str> = parked.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(parked_keys, ["bad-payload", "bad-type", "bad-headers"]);
    assert!(parked
        .iter()
        .all(|(_, e)| e.as_deref().is_some_and(|e| !e.is_empty())));

    let records = stack
        .read_topic(topic, Duration::from_secs(30), |r| r.len() >= 3)
        .await?;
    let keys: HashSet<String> = records.iter().map(|r| r.key.clone()).collect();
    assert_eq!(keys, ids, "the good rows were published, the bad ones not");

    let metrics = scrape(&stack, &stack.gateway_url).await?;
    for line in [
        "gateway_outbox_parked_total 3",
        "gateway_outbox_parked_rows 3",
        "gateway_outbox_backlog_rows 0",
        "gateway_outbox_published_total 3",
    ] {
        assert!(metrics.contains(line), "{line} missing in\n{metrics}");
    }
    stack.teardown().await;
    Ok(())
}

/// Shutdown with a backlog much larger than one batch: the relay settles the batch in flight
/// (published on the broker *and* marked in the table) and stops, leaving the rest of the
/// backlog in the table; a later start publishes it. Nothing is lost, nothing is doubled.
///
/// To act while a batch is in flight the test holds `LOCK TABLE outbox IN SHARE MODE`: the
/// relay's `SELECT … FOR UPDATE` passes, its records are produced and acknowledged, and its
/// `UPDATE … SET published_at` waits for the lock. Shutdown is signalled then.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_with_a_backlog_settles_the_batch_in_flight_and_leaves_the_rest(
) -> anyhow::Result<()> {
    const BACKLOG: usize = 150;
    const BATCH: i64 = 10;
    // The stack's own gateway does not relay: the backlog waits for the gateway under test.
    let stack = TestStack::spawn_with(|s| s.gateway.outbox_relay_enabled = false).await?;
    let mut ids = HashSet::new();
    for i in 0..BACKLOG {
        let body = payment_body("m_backlog", &format!("c_{i}"), 100 + i as i64);
        ids.insert(stack.accept_payment(&body).await?.to_string());
    }
    assert_eq!(unpublished(&stack).await?, BACKLOG as i64);

    let mut lock = stack.pool.begin().await?;
    sqlx::query("LOCK TABLE outbox IN SHARE MODE")
        .execute(&mut *lock)
        .await?;
    let mut settings = gateway_settings(&stack.database, &stack.topics);
    settings.gateway.outbox_batch_size = BATCH;
    let gateway = GatewayHandle::spawn(settings).await?;
    // The relay's first batch is acknowledged by the broker and waits to be marked published.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM pg_locks
         WHERE NOT granted AND relation = to_regclass(current_schema() || '.outbox')",
    )
    .fetch_one(&stack.pool)
    .await?
        < 1
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay never reached the outbox lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    gateway.shutdown.cancel();
    // The listener is closed once serving stopped, which is when the relay is told to stop.
    gateway.wait_refusing(Duration::from_secs(10)).await?;
    lock.commit().await?;
    // Only guards against hanging; how fast the gateway stops is not what is asserted.
    tokio::time::timeout(Duration::from_secs(120), gateway.task)
        .await
        .map_err(|_| anyhow::anyhow!("gateway did not stop"))???;

    let published: Vec<String> = sqlx::query_scalar(
        "SELECT message_key FROM outbox WHERE published_at IS NOT NULL ORDER BY id",
    )
    .fetch_all(&stack.pool)
    .await?;
    let left = unpublished(&stack).await?;
    eprintln!(
        "backlog shutdown: {} rows published, {left} left in the outbox",
        published.len()
    );
    assert!(
        left > 0,
        "shutdown waited for the whole backlog of {BACKLOG} rows to drain"
    );
    assert!(
        published.len() >= BATCH as usize,
        "the batch in flight was marked published"
    );
    assert_eq!(published.len() + left as usize, BACKLOG);

    // The broker holds exactly the rows marked published, each once.
    let topic = &stack.topics.payments_requested;
    let records = stack.read_all(topic, Duration::from_secs(3)).await?;
    let mut on_topic: Vec<String> = records.iter().map(|r| r.key.clone()).collect();
    on_topic.sort();
    let mut marked = published.clone();
    marked.sort();
    assert_eq!(
        on_topic, marked,
        "records on the topic = rows marked published"
    );

    // Nothing lost: the next start publishes the rest.
    let restarted = GatewayHandle::spawn(gateway_settings(&stack.database, &stack.topics)).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while unpublished(&stack).await? > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rest of the backlog was not published after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    restarted.stop(Duration::from_secs(60)).await?;
    let records = stack.read_all(topic, Duration::from_secs(3)).await?;
    let mut per_key: HashMap<String, usize> = HashMap::new();
    for record in &records {
        *per_key.entry(record.key.clone()).or_default() += 1;
    }
    assert_eq!(
        per_key.keys().cloned().collect::<HashSet<_>>(),
        ids,
        "every accepted payment reached the topic"
    );
    assert!(
        per_key.values().all(|&n| n == 1),
        "no row published twice: {per_key:?}"
    );
    stack.teardown().await;
    Ok(())
}

/// A committed payment wakes the relays instead of waiting for their next poll: the relay of
/// the gateway that accepted it (in process) and the relay of another replica (Postgres
/// `LISTEN`/`NOTIFY`). Here the relays poll every ten minutes, so a relay that only polled would
/// leave both records in the outbox for the whole test: each must reach the topic, as a stock
/// client reads it under read_committed, well before any poll. The bound below only guards
/// against hanging; how fast the records arrive is not what is asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_payment_wakes_the_relays_of_every_replica() -> anyhow::Result<()> {
    const TEN_MINUTES_MS: u64 = 600_000;
    let configure = |s: &mut paystream_gateway::Settings| {
        s.gateway.outbox_poll_interval_ms = TEN_MINUTES_MS;
    };
    // The stack's gateway accepts payments but relays none; the replica relays.
    let stack = TestStack::spawn_with(|s| {
        configure(s);
        s.gateway.outbox_relay_enabled = false;
    })
    .await?;
    let mut replica_settings = gateway_settings(&stack.database, &stack.topics);
    configure(&mut replica_settings);
    let replica = GatewayHandle::spawn(replica_settings).await?;
    // The replica listens before the first payment commits, so only an announcement can wake it
    // (its first pass, at start, found the outbox empty).
    stack
        .eventually(Duration::from_secs(30), "replica listening", || async {
            let listening: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE query = format('LISTEN %I', 'paystream_outbox.' || current_schema())",
            )
            .fetch_one(&stack.pool)
            .await?;
            Ok((listening == 1).then_some(()))
        })
        .await?;

    // Accepted by the gateway without a relay: the replica's relay is woken by its NOTIFY.
    let across = stack
        .accept_payment(&payment_body("m_wake", "c_across", 100))
        .await?
        .to_string();
    published(&stack, [across.clone()].into()).await?;
    // Accepted by the replica itself: its relay is woken in process. (Only after the first
    // record is on the topic: this wake-up would publish it too.)
    let response = stack
        .http
        .post(format!("{}/v1/payments", replica.url))
        .header("Idempotency-Key", "wake-local")
        .header("content-type", "application/json")
        .body(payment_body("m_wake", "c_local", 200).to_string())
        .send()
        .await?;
    assert_eq!(response.status(), 202);
    let local = response.json::<serde_json::Value>().await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    published(&stack, [across, local].into()).await?;
    assert_eq!(unpublished(&stack).await?, 0);

    // Shutdown does not wait for the poll interval either.
    replica.stop(Duration::from_secs(30)).await?;
    stack.teardown().await;
    Ok(())
}

/// Asserts that the payments-requested topic holds exactly `keys`, once each, as Python
/// confluent-kafka reads it under read_committed (retried for up to a minute: a bound against
/// hanging, far below the ten-minute poll of the wake-up test).
async fn published(stack: &TestStack, keys: HashSet<String>) -> anyhow::Result<()> {
    let counts = third_party::confluent_read_committed_at_least(
        &stack.kafka.bootstrap_servers,
        &stack.topics.payments_requested,
        keys.len(),
        Duration::from_secs(60),
    )
    .await?;
    assert_eq!(
        counts.per_key.keys().cloned().collect::<HashSet<_>>(),
        keys,
        "published without waiting for a poll: {counts:?}"
    );
    assert!(counts.not_once().is_empty(), "{counts:?}");
    Ok(())
}
