//! The shared processing runtime on the real broker, driven by a scripted handler: the retry
//! chain, dead letters and their replay, and the abort/rewind path.
//!
//! Each test has its own topics, group, transactional id and Postgres schema. The handler
//! applies an effect per event (`effects.applied` counts applications, so a double application
//! shows as 2) and records every call, so tests judge what the runtime did, not only what the
//! broker delivered.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use paystream_core::avro::AvroCodec;
use paystream_core::config::DatabaseSettings;
use paystream_core::dlq::{self, DeadLetter, DlqFilter};
use paystream_core::events::{PaymentRequested, PAYMENT_REQUESTED_SCHEMA};
use paystream_core::headers::{self, RecordHeaders};
use paystream_core::kafka::{self, TopicSpec};
use paystream_core::processing::{
    Faults, Handled, Handler, HandlerContext, HandlerError, LoopSettings, LoopStats, Output,
    ProcessingLoop,
};
use paystream_core::record::position_event_id;
use paystream_core::shutdown::Shutdown;
use paystream_e2e_tests::{
    database_url, kafka_settings, registry_url, third_party, workspace_binary,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);
const RETRY_DELAYS_MS: [u64; 2] = [300, 600];
/// How long a `slow` customer's call takes: long enough for calls of other keys to overlap it
/// when they run concurrently.
const SLOW_CALL: Duration = Duration::from_millis(200);

/// One handler call, as the handler saw it.
#[derive(Debug, Clone)]
struct Call {
    customer: String,
    event_id: Uuid,
    attempt: u32,
    attempt_header: Option<String>,
    at_ms: i64,
    ended_ms: i64,
}

/// Behaviour by customer id prefix: `fail-twice` fails transiently on its first two attempts,
/// `always` fails transiently every time, `permanent` fails permanently until healed, `slow`
/// takes [`SLOW_CALL`] and succeeds; anything else succeeds.
struct ScriptedHandler {
    calls: Arc<Mutex<Vec<Call>>>,
    healed: Arc<AtomicBool>,
    output_topic: String,
}

#[async_trait]
impl Handler for ScriptedHandler {
    type Event = PaymentRequested;
    /// The effect row to count: event id and customer.
    type Effect = (Uuid, String);

    async fn handle(
        &self,
        event: PaymentRequested,
        ctx: &HandlerContext<'_>,
    ) -> Result<Handled<Self::Effect>, HandlerError> {
        let at_ms = chrono::Utc::now().timestamp_millis();
        if event.customer_id.starts_with("slow") {
            tokio::time::sleep(SLOW_CALL).await;
        }
        self.calls.lock().unwrap().push(Call {
            customer: event.customer_id.clone(),
            event_id: ctx.event_id,
            attempt: ctx.attempt,
            attempt_header: ctx.record.headers.get(headers::ATTEMPT).map(str::to_string),
            at_ms,
            ended_ms: chrono::Utc::now().timestamp_millis(),
        });
        let c = event.customer_id.as_str();
        if (c.starts_with("fail-twice") && ctx.attempt < 2) || c.starts_with("always") {
            return Err(HandlerError::Transient(anyhow::anyhow!(
                "dependency unavailable (attempt {})",
                ctx.attempt
            )));
        }
        if c.starts_with("permanent") && !self.healed.load(Ordering::SeqCst) {
            return Err(HandlerError::Permanent(anyhow::anyhow!("rule says no")));
        }
        let mut handled = Handled::effect((ctx.event_id, c.to_string()));
        handled.outputs.push(Output::event(
            &self.output_topic,
            &event.payment_id,
            event.payment_id.as_bytes().to_vec(),
            Uuid::new_v5(&ctx.event_id, b"output"),
            "test.Output",
        ));
        Ok(handled)
    }

    /// Counts each application: exactly once means every row ends at 1.
    async fn commit(
        &self,
        effects: Vec<Self::Effect>,
        db: &mut sqlx::PgConnection,
    ) -> Result<(), HandlerError> {
        let (ids, customers): (Vec<Uuid>, Vec<String>) = effects.into_iter().unzip();
        sqlx::query(
            "INSERT INTO effects (event_id, customer, applied)
             SELECT id, customer, 1 FROM UNNEST($1::uuid[], $2::text[]) AS e(id, customer)
             ON CONFLICT (event_id) DO UPDATE SET applied = effects.applied + 1",
        )
        .bind(&ids)
        .bind(&customers)
        .execute(db)
        .await?;
        Ok(())
    }
}

struct Harness {
    input: String,
    output: String,
    settings: LoopSettings,
    pool: PgPool,
    schema: String,
    codec: Arc<AvroCodec>,
    producer: FutureProducer,
    calls: Arc<Mutex<Vec<Call>>>,
    healed: Arc<AtomicBool>,
    shutdown: Shutdown,
}

impl Harness {
    async fn new() -> anyhow::Result<Self> {
        let id = Uuid::new_v4().simple().to_string()[..12].to_string();
        let input = format!("test-{id}.input");
        let output = format!("test-{id}.output");
        let group = format!("test-{id}.runtime");
        // The DLQ too, although the loop creates it when it starts: the test may read it
        // before the loop got that far.
        kafka::ensure_topics(
            &kafka_settings(),
            &[
                TopicSpec::new(&input, 1),
                TopicSpec::new(&output, 1),
                TopicSpec::new(format!("{group}.dlq"), 1),
            ],
        )
        .await
        .context("creating test topics (is the stack up? `make up`)")?;
        let schema = format!("test_{id}");
        let pool = paystream_core::db::connect(&DatabaseSettings {
            url: database_url().into(),
            max_connections: 5,
            schema: Some(schema.clone()),
        })
        .await?;
        paystream_core::db::migrate(&pool).await?;
        sqlx::query(
            "CREATE TABLE effects (event_id uuid PRIMARY KEY, customer text NOT NULL,
             applied int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())",
        )
        .execute(&pool)
        .await?;
        let settings = LoopSettings {
            group_id: group.clone(),
            transactional_id: format!("{group}-0"),
            retry_delays_ms: RETRY_DELAYS_MS.to_vec(),
            retry_topic_partitions: 1,
            ..Default::default()
        };
        Ok(Self {
            input,
            output,
            settings,
            pool,
            schema,
            codec: Arc::new(AvroCodec::new(&registry_url())),
            producer: kafka::client_config(&kafka_settings(), kafka::IDEMPOTENT_PRODUCER)?
                .create()?,
            calls: Arc::default(),
            healed: Arc::default(),
            shutdown: Shutdown::new(),
        })
    }

    /// Starts the loop; `arm` may set up faults before it consumes anything.
    async fn start(&self, arm: impl FnOnce(&Faults)) -> anyhow::Result<Arc<LoopStats>> {
        let processing = ProcessingLoop::new(
            &kafka_settings(),
            self.settings.clone(),
            vec![self.input.clone()],
            self.pool.clone(),
            self.codec.clone(),
            ScriptedHandler {
                calls: self.calls.clone(),
                healed: self.healed.clone(),
                output_topic: self.output.clone(),
            },
        )?;
        arm(&processing.faults());
        let stats = processing.stats();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = processing.run(shutdown).await {
                eprintln!("processing loop stopped with an error: {e:#}");
            }
        });
        Ok(stats)
    }

    fn dlq_topic(&self) -> String {
        self.settings.dlq_topic()
    }

    /// Produces a valid `PaymentRequested` for `customer`; returns its event id.
    async fn send(&self, customer: &str) -> anyhow::Result<Uuid> {
        self.send_event(customer, true).await
    }

    /// Like [`Self::send`], from a producer that sets no `event_id` header (the consumer then
    /// knows the record by its position).
    async fn send_without_event_id(&self, customer: &str) -> anyhow::Result<()> {
        self.send_event(customer, false).await.map(drop)
    }

    async fn send_event(&self, customer: &str, event_id_header: bool) -> anyhow::Result<Uuid> {
        self.send_keyed(customer, &Uuid::new_v4().to_string(), event_id_header)
            .await
    }

    /// A `PaymentRequested` for payment `payment_id`, the record's key.
    async fn send_keyed(
        &self,
        customer: &str,
        payment_id: &str,
        event_id_header: bool,
    ) -> anyhow::Result<Uuid> {
        let event_id = Uuid::new_v4();
        let event = PaymentRequested {
            event_id: event_id.to_string(),
            payment_id: payment_id.to_string(),
            client_id: "test".into(),
            merchant_id: "m_runtime".into(),
            customer_id: customer.into(),
            amount_minor: 100,
            currency: "EUR".into(),
            payment_method: "card".into(),
            requested_at: chrono::Utc::now().timestamp_millis(),
            customer_email: None,
        };
        let bytes = self
            .codec
            .encode(&self.input, &PAYMENT_REQUESTED_SCHEMA, &event)
            .await?;
        let mut h = RecordHeaders::default();
        if event_id_header {
            h.set(headers::EVENT_ID, event_id.to_string());
        }
        self.send_raw(payment_id, &bytes, h).await?;
        Ok(event_id)
    }

    async fn send_raw(&self, key: &str, value: &[u8], h: RecordHeaders) -> anyhow::Result<()> {
        let delivery = kafka::enqueue(
            &self.producer,
            &self.input,
            Some(key.as_bytes()),
            Some(value),
            h.to_kafka(),
        )
        .await?;
        kafka::delivered(delivery).await?;
        Ok(())
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn calls_for(&self, event_id: Uuid) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.event_id == event_id)
            .collect()
    }

    /// `applied` per event id.
    async fn effects(&self) -> anyhow::Result<HashMap<Uuid, i32>> {
        let rows: Vec<(Uuid, i32)> = sqlx::query_as("SELECT event_id, applied FROM effects")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().collect())
    }

    async fn wait_effects(&self, n: usize) -> anyhow::Result<HashMap<Uuid, i32>> {
        wait_for(&format!("{n} effects"), || async {
            let e = self.effects().await?;
            Ok((e.len() >= n).then_some(e))
        })
        .await
    }

    async fn dead_letters(&self, n: usize) -> anyhow::Result<Vec<DeadLetter>> {
        wait_for(&format!("{n} dead letters"), || async {
            let letters = dlq::read(
                &kafka_settings(),
                &self.dlq_topic(),
                &DlqFilter::default(),
                Duration::from_secs(1),
            )
            .await?;
            Ok((letters.len() >= n).then_some(letters))
        })
        .await
    }

    /// The group's committed offset on the input's partition 0.
    fn committed_input_offset(&self) -> anyhow::Result<Option<i64>> {
        let consumer: BaseConsumer =
            kafka::client_config(&kafka_settings(), &[("group.id", &self.settings.group_id)])?
                .create()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.input, 0);
        let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
        Ok(committed.elements().first().and_then(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        }))
    }

    /// The end (high watermark) of the input's partition 0: records and transaction markers.
    fn input_end(&self) -> anyhow::Result<i64> {
        let consumer: BaseConsumer = kafka::client_config(&kafka_settings(), &[])?.create()?;
        let (_, high) = consumer.fetch_watermarks(&self.input, 0, Duration::from_secs(10))?;
        Ok(high)
    }

    /// `paystream dlq …` against this test's dead-letter topic; returns (success, stdout+stderr).
    async fn dlq_cli(&self, args: &[&str]) -> anyhow::Result<(bool, String)> {
        let out = tokio::process::Command::new(workspace_binary("paystream")?)
            .arg("dlq")
            .args(args)
            .args(["--topic", &self.dlq_topic()])
            .env(
                "PAYSTREAM_KAFKA__BOOTSTRAP_SERVERS",
                kafka_settings().bootstrap_servers,
            )
            .env("PAYSTREAM_SCHEMA_REGISTRY__URL", registry_url())
            // The harness's schema, where the replays are counted.
            .env("PAYSTREAM_DATABASE__URL", database_url())
            .env("PAYSTREAM_DATABASE__SCHEMA", &self.schema)
            .output()
            .await?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text))
    }

    async fn teardown(self) {
        self.shutdown.cancel();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
            .execute(&self.pool)
            .await;
    }
}

/// Polls `probe` until it yields a value, for at most [`WAIT`].
async fn wait_for<T, F, Fut>(what: &str, probe: F) -> anyhow::Result<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = probe().await? {
            return Ok(v);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_through_the_chain_with_their_delays() -> anyhow::Result<()>
{
    let h = Harness::new().await?;
    let stats = h.start(|_| {}).await?;
    let event = h.send("fail-twice").await?;

    let effects = h.wait_effects(1).await?;
    assert_eq!(effects[&event], 1, "applied exactly once");
    let calls = h.calls_for(event);
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert_eq!(
        calls.iter().map(|c| c.attempt).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    // The attempt that succeeded was read from `<group>.retry.2` with attempt header 2.
    assert_eq!(calls[2].attempt_header.as_deref(), Some("2"));
    for (i, delay) in RETRY_DELAYS_MS.iter().enumerate() {
        let waited = calls[i + 1].at_ms - calls[i].at_ms;
        assert!(
            waited >= *delay as i64,
            "attempt {} ran {waited} ms after the previous one, before its {delay} ms delay",
            i + 1
        );
    }
    // One output, and no dead letter.
    assert_eq!(stats.records_retried.load(Ordering::Relaxed), 2);
    assert_eq!(stats.records_applied.load(Ordering::Relaxed), 1);
    assert_eq!(stats.records_dead_lettered.load(Ordering::Relaxed), 0);
    h.teardown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_failing_records_reach_the_dlq_while_the_partition_keeps_flowing(
) -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let stats = h.start(|_| {}).await?;
    let failing = h.send("always").await?;
    let mut later = Vec::new();
    for i in 0..10 {
        later.push(h.send(&format!("ok-{i}")).await?);
    }

    let letters = h.dead_letters(1).await?;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    let hd = &letter.headers;
    assert_eq!(letter.event_id(), failing);
    assert_eq!(hd.get(headers::ATTEMPT), Some("3"), "1 try + 2 retries");
    assert_eq!(hd.get(headers::ERROR_CLASS), Some("transient"));
    assert!(hd
        .get(headers::ERROR_MESSAGE)
        .is_some_and(|m| m.contains("dependency unavailable")));
    assert_eq!(hd.get(headers::ORIGINAL_TOPIC), Some(h.input.as_str()));
    assert_eq!(hd.get(headers::ORIGINAL_PARTITION), Some("0"));
    assert_eq!(hd.get(headers::ORIGINAL_OFFSET), Some("0"));
    assert!(hd.get_i64(headers::ORIGINAL_TIMESTAMP_MS).is_some());
    assert_eq!(
        hd.get(headers::CONSUMER_GROUP),
        Some(h.settings.group_id.as_str())
    );
    assert_eq!(hd.get(headers::DUE_AT_MS), None);
    assert!(hd.get(headers::PRODUCER_TXN).is_some());

    // The records behind the failing one were all processed before its last attempt.
    let effects = h.wait_effects(10).await?;
    assert!(later.iter().all(|e| effects.get(e) == Some(&1)));
    assert!(!effects.contains_key(&failing));
    let calls = h.calls();
    let last_failing = calls
        .iter()
        .filter(|c| c.event_id == failing)
        .map(|c| c.at_ms)
        .max()
        .unwrap();
    let last_later = calls
        .iter()
        .filter(|c| c.customer.starts_with("ok-"))
        .map(|c| c.at_ms)
        .max()
        .unwrap();
    assert!(
        last_later < last_failing,
        "the input partition was blocked by the failing record"
    );
    assert_eq!(h.calls_for(failing).len(), 3);
    assert_eq!(stats.records_dead_lettered.load(Ordering::Relaxed), 1);
    h.teardown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_are_dead_lettered_without_calling_the_handler() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    h.start(|_| {}).await?;
    // Not the Confluent framing at all; then a well-framed record naming a schema id the
    // registry never issued; then a good record, which must still be processed.
    h.send_raw("no-magic", b"plain text", RecordHeaders::default())
        .await?;
    h.send_raw(
        "unknown-schema",
        &[0, 0x7f, 0xff, 0xff, 0x00, 2, 4, 6],
        RecordHeaders::default(),
    )
    .await?;
    let good = h.send("ok").await?;

    let letters = h.dead_letters(2).await?;
    assert_eq!(letters.len(), 2);
    for (letter, key) in letters.iter().zip(["no-magic", "unknown-schema"]) {
        assert_eq!(letter.key_str(), key);
        assert_eq!(letter.error_class(), Some("poison"), "{letter:?}");
        assert_eq!(letter.attempt(), 1);
    }
    assert_eq!(letters[0].payload.as_deref(), Some(&b"plain text"[..]));
    h.wait_effects(1).await?;
    let calls = h.calls();
    assert_eq!(calls.len(), 1, "only the good record reached the handler");
    assert_eq!(calls[0].event_id, good);
    h.teardown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_replay_through_the_cli_and_apply_once() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let stats = h.start(|_| {}).await?;
    let event = h.send("permanent").await?;
    let first = h.dead_letters(1).await?;
    assert_eq!(first[0].error_class(), Some("permanent"));
    assert_eq!(first[0].replay_count(), 0);

    let (ok, listing) = h.dlq_cli(&["list"]).await?;
    assert!(ok, "{listing}");
    assert!(
        listing.contains("permanent") && listing.contains("1 dead letter(s)"),
        "{listing}"
    );

    // Still broken: the replayed record fails again and comes back with replay count 1.
    let (ok, out) = h.dlq_cli(&["replay", "0/0"]).await?;
    assert!(ok, "{out}");
    assert!(out.contains("1 replayed, 0 refused"), "{out}");
    let second = h.dead_letters(2).await?;
    let again = second.iter().find(|l| l.offset != first[0].offset).unwrap();
    assert_eq!(again.replay_count(), 1);
    assert_eq!(again.attempt(), 1, "a replay starts a fresh chain");
    assert_eq!(again.event_id(), event);
    let again_position = format!("0/{}", again.offset);

    // The replay limit is enforced, with a clear refusal and a non-zero exit.
    let (ok, out) = h
        .dlq_cli(&["replay", &again_position, "--max-replays", "1"])
        .await?;
    assert!(!ok, "{out}");
    assert!(out.contains("limit 1"), "{out}");

    // Fixed: the replay is applied, once.
    h.healed.store(true, Ordering::SeqCst);
    let (ok, out) = h
        .dlq_cli(&["replay", &again_position, "--max-replays", "2"])
        .await?;
    assert!(ok, "{out}");
    let effects = h.wait_effects(1).await?;
    assert_eq!(effects[&event], 1);

    // Replaying the first dead letter as well changes nothing: the event is already applied.
    let calls_before = h.calls_for(event).len();
    let (ok, out) = h.dlq_cli(&["replay", "0/0"]).await?;
    assert!(ok, "{out}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(h.effects().await?[&event], 1, "processed once");
    assert_eq!(
        h.calls_for(event).len(),
        calls_before,
        "handler not called again"
    );
    assert_eq!(stats.records_deduplicated.load(Ordering::Relaxed), 1);

    // Bad input to the operator tool is an error, not a guess.
    let (ok, out) = h.dlq_cli(&["replay"]).await?;
    assert!(!ok && out.contains("--all"), "{out}");
    let (ok, out) = h.dlq_cli(&["show", "zero"]).await?;
    assert!(!ok && out.contains("<partition>/<offset>"), "{out}");
    h.teardown().await;
    Ok(())
}

/// A record that came without an event id is known by its first position all the way: the
/// retry chain keeps that identity, the dead letter carries it, and replaying the same dead
/// letter again and again applies it once, with the replays counted durably (Postgres), so the
/// limit holds even though the dead letter itself never changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_without_an_event_id_keeps_one_identity_through_retries_and_replays(
) -> anyhow::Result<()> {
    let h = Harness::new().await?;
    h.start(|_| {}).await?;
    // Offset 0: fails twice (two retry stages), then succeeds on the second retry topic.
    h.send_without_event_id("fail-twice-anonymous").await?;
    let first_position = position_event_id(&h.input, 0, 0);
    let effects = h.wait_effects(1).await?;
    assert_eq!(
        effects.keys().collect::<Vec<_>>(),
        vec![&first_position],
        "applied under the id of its first position, not of the retry topic's"
    );
    let calls = h.calls();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(
        calls.iter().all(|c| c.event_id == first_position),
        "{calls:?}"
    );

    // Offset 1: fails permanently; the dead letter carries the id.
    h.send_without_event_id("permanent-anonymous").await?;
    let letters = h.dead_letters(1).await?;
    let identity = position_event_id(&h.input, 0, 1);
    let stamped = letters[0]
        .headers
        .get(headers::EVENT_ID)
        .map(str::to_string);
    assert_eq!(stamped, Some(identity.to_string()));

    // Healed, the same dead letter replayed twice: applied once, counted twice.
    h.healed.store(true, Ordering::SeqCst);
    for round in 1..=2 {
        let (ok, out) = h.dlq_cli(&["replay", "0/0", "--max-replays", "2"]).await?;
        assert!(
            ok && out.contains("1 replayed, 0 refused"),
            "replay {round}: {out}"
        );
    }
    // The third replay of the unchanged dead letter is refused by the durable count.
    let (ok, out) = h.dlq_cli(&["replay", "0/0", "--max-replays", "2"]).await?;
    assert!(
        !ok && out.contains("already replayed 2 times (limit 2)"),
        "{out}"
    );
    let (ok, listing) = h.dlq_cli(&["list", "--json"]).await?;
    assert!(ok && listing.contains(r#""replay_count":2"#), "{listing}");

    // The input holds 2 records + 2 replays, each replay a transaction ending with its commit
    // marker; once the group's offset is past the last replayed record (the end but for that
    // marker), the effects are final.
    let end = h.input_end()?;
    wait_for("the committed offset to cover both replays", || async {
        let committed = h.committed_input_offset()?;
        Ok((committed >= Some(end - 1)).then_some(()))
    })
    .await?;
    let effects = h.effects().await?;
    eprintln!("effects after two replays of one dead letter: {effects:?}");
    assert_eq!(effects.len(), 2, "{effects:?}");
    assert_eq!(
        effects.get(&identity),
        Some(&1),
        "applied once: {effects:?}"
    );
    let durable: i32 = sqlx::query_scalar("SELECT replays FROM dlq_replays WHERE event_id = $1")
        .bind(identity)
        .fetch_one(&h.pool)
        .await?;
    assert_eq!(durable, 2);
    h.teardown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_mid_batch_rewinds_and_applies_every_input_exactly_once() -> anyhow::Result<()> {
    const N: usize = 60;
    let h = Harness::new().await?;
    let mut sent = Vec::new();
    for i in 0..N {
        sent.push(h.send(&format!("ok-{i}")).await?);
    }
    // Armed before the loop consumes: the first batch fails after 25 applied records.
    let stats = h.start(|faults| faults.abort_after_records(25)).await?;

    // The group's committed offset covers the whole input: every batch has ended, the
    // aborted one included (its database commit comes before its Kafka transaction's abort).
    let committed = wait_for("the committed offset to reach the end", || async {
        let c = h.committed_input_offset()?;
        Ok((c == Some(N as i64)).then_some(c))
    })
    .await?;
    assert_eq!(committed, Some(N as i64));
    let effects = h.wait_effects(N).await?;
    assert_eq!(effects.len(), N);
    assert!(
        sent.iter().all(|e| effects.get(e) == Some(&1)),
        "every input applied exactly once: {effects:?}"
    );
    assert!(stats.batches_aborted.load(Ordering::Relaxed) >= 1);
    // The rewind redelivered records whose effects had committed; the idempotent consumer
    // recognised them instead of applying them again.
    assert!(stats.records_replayed.load(Ordering::Relaxed) >= 1);
    assert_eq!(stats.records_applied.load(Ordering::Relaxed), N as u64);
    let calls = h.calls();
    assert_eq!(calls.len(), N, "the handler ran once per event");

    // The output topic, read by a stock Confluent client under read_committed: the aborted
    // batch's outputs are invisible and the redone batch's are there once, so N records, one
    // per payment (records, not distinct keys).
    let bootstrap = kafka_settings().bootstrap_servers;
    let outputs =
        third_party::confluent_read_committed_at_least(&bootstrap, &h.output, N, WAIT).await?;
    eprintln!(
        "after the abort: {} output records read_committed for {N} inputs, {} keys",
        outputs.records,
        outputs.per_key.len()
    );
    assert_eq!(outputs.records, N, "one committed output per input");
    assert!(outputs.not_once().is_empty(), "{:?}", outputs.not_once());
    h.teardown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_s_records_apply_in_offset_order_while_other_keys_run_concurrently(
) -> anyhow::Result<()> {
    const ORDERED: usize = 5;
    const OTHERS: usize = 20;
    let h = Harness::new().await?;
    let payment = Uuid::new_v4().to_string();
    let mut ordered = Vec::new();
    for i in 0..ORDERED {
        ordered.push(
            h.send_keyed(&format!("slow-same-key-{i}"), &payment, true)
                .await?,
        );
    }
    for i in 0..OTHERS {
        h.send(&format!("slow-other-{i}")).await?;
    }
    let stats = h.start(|_| {}).await?;
    let effects = h.wait_effects(ORDERED + OTHERS).await?;
    assert!(effects.values().all(|n| *n == 1), "{effects:?}");

    let calls = h.calls();
    // One key: its records' calls in offset (= send) order, each ending before the next begins.
    let same_key: Vec<&Call> = ordered
        .iter()
        .map(|id| {
            let mut c: Vec<&Call> = calls.iter().filter(|c| c.event_id == *id).collect();
            assert_eq!(c.len(), 1, "one call per event");
            c.remove(0)
        })
        .collect();
    for pair in same_key.windows(2) {
        assert!(
            pair[0].ended_ms <= pair[1].at_ms,
            "{} ran from {} to {} but {} started at {}",
            pair[0].customer,
            pair[0].at_ms,
            pair[0].ended_ms,
            pair[1].customer,
            pair[1].at_ms
        );
    }
    // Other keys: calls overlapped (each takes SLOW_CALL; run one at a time, none would).
    let most_at_once = calls
        .iter()
        .map(|c| {
            calls
                .iter()
                .filter(|o| o.at_ms < c.ended_ms && c.at_ms < o.ended_ms)
                .count()
        })
        .max()
        .unwrap_or(0);
    eprintln!(
        "{} calls: {ORDERED} of one key in offset order, at most {most_at_once} at once; {} batch(es)",
        calls.len(),
        stats.batches_committed.load(Ordering::Relaxed)
    );
    assert!(most_at_once > 1, "no two calls overlapped: {calls:?}");
    h.teardown().await;
    Ok(())
}
