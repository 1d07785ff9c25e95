//! The transactional consume-transform-produce loop every consumer group runs.
//!
//! Per batch: begin → for each record: decode, apply the handler's effects in Postgres together
//! with the record's event id (the idempotent consumer), collect its outputs → produce outputs →
//! `send_offsets_to_transaction` with the group metadata (KIP-447) → commit.
//!
//! Failure handling:
//! - transient failure (handler, Postgres, registry, abortable Kafka error): abort, rewind every
//!   assigned partition to its committed offset, back off, go on;
//! - poison record (undecodable) or permanent handler error: the original record goes to the
//!   group's dead-letter topic inside the same transaction that commits its offset;
//! - fatal Kafka error (fenced by a newer instance): stop and return the error, so the
//!   supervisor restarts the process.
//!
//! Effects outside Kafka are exactly-once because every applied event id is recorded in
//! `processed_events` in the same database transaction as the handler's writes, together with
//! the outputs it produced. A redelivered event (after an abort, a crash, or a broker that shows
//! records of aborted transactions) skips the handler and re-produces the stored outputs, which
//! carry the same deterministic event ids, so downstream consumers dedupe them in turn.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use rdkafka::consumer::{Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use crate::avro::AvroCodec;
use crate::config::KafkaSettings;
use crate::events::EVENT_ID_NAMESPACE;
use crate::headers::{self, RecordHeaders};
use crate::kafka::{self, ErrorClass};
use crate::shutdown::Shutdown;

/// Settings of one consumer group's loop.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LoopSettings {
    pub group_id: String,
    /// Stable per instance (e.g. the pod name): a restarted instance fences its predecessor's
    /// open transaction instead of leaving it hanging until the transaction timeout.
    pub transactional_id: String,
    pub batch_max_records: usize,
    pub batch_max_wait_ms: u64,
    pub transaction_timeout_ms: u64,
    pub session_timeout_ms: u64,
    /// First back-off after an aborted batch; doubles up to `abort_backoff_max_ms`.
    pub abort_backoff_ms: u64,
    pub abort_backoff_max_ms: u64,
    /// Dead-letter topic; defaults to `<group_id>.dlq`.
    pub dlq_topic: Option<String>,
}

impl Default for LoopSettings {
    fn default() -> Self {
        Self {
            group_id: String::new(),
            transactional_id: String::new(),
            batch_max_records: 100,
            batch_max_wait_ms: 50,
            transaction_timeout_ms: 60_000,
            session_timeout_ms: 10_000,
            abort_backoff_ms: 200,
            abort_backoff_max_ms: 10_000,
            dlq_topic: None,
        }
    }
}

impl LoopSettings {
    pub fn dlq_topic(&self) -> String {
        self.dlq_topic
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", self.group_id))
    }
}

/// A consumed record, owned.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: RecordHeaders,
}

impl Record {
    fn from_message<M: Message>(m: &M) -> Self {
        Self {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers: RecordHeaders::from_kafka(m.headers()),
        }
    }

    pub fn key_str(&self) -> String {
        self.key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default()
    }

    /// The event id from the `event_id` header; records without one (foreign producers) get
    /// an id derived from their position, which is just as stable across redeliveries.
    pub fn event_id(&self) -> Uuid {
        self.headers
            .get(headers::EVENT_ID)
            .and_then(|v| Uuid::parse_str(v).ok())
            .unwrap_or_else(|| {
                let position = format!("{}/{}/{}", self.topic, self.partition, self.offset);
                Uuid::new_v5(&EVENT_ID_NAMESPACE, position.as_bytes())
            })
    }
}

/// A record a handler wants produced in the same transaction as its input's offset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Output {
    pub topic: String,
    #[serde(with = "base64_bytes")]
    pub key: Option<Vec<u8>>,
    #[serde(with = "base64_bytes")]
    pub value: Option<Vec<u8>>,
    pub headers: RecordHeaders,
}

impl Output {
    /// An event output: UTF-8 key, Avro value, and the event id header.
    pub fn event(topic: &str, key: &str, value: Vec<u8>, event_id: Uuid, event_type: &str) -> Self {
        let mut headers = RecordHeaders::default();
        headers.set(headers::EVENT_ID, event_id.to_string());
        headers.set(headers::EVENT_TYPE, event_type);
        Self {
            topic: topic.to_string(),
            key: Some(key.as_bytes().to_vec()),
            value: Some(value),
            headers,
        }
    }
}

mod base64_bytes {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&STANDARD.encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| STANDARD.decode(s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// How a handler failed; decides between retrying and dead-lettering.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth trying again later: timeouts, 5xx, a dependency down.
    #[error("transient failure: {0:#}")]
    Transient(anyhow::Error),
    /// Will fail the same way every time: invalid data, a business rule.
    #[error("permanent failure: {0:#}")]
    Permanent(anyhow::Error),
}

impl From<sqlx::Error> for HandlerError {
    fn from(e: sqlx::Error) -> Self {
        HandlerError::Transient(e.into())
    }
}

/// What a handler sees besides its decoded event.
pub struct HandlerContext<'a> {
    /// The database transaction the runtime commits together with the applied event id.
    pub db: &'a mut sqlx::PgConnection,
    pub record: &'a Record,
    pub event_id: Uuid,
    pub codec: &'a AvroCodec,
}

/// The business logic of one consumer group.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    type Event: DeserializeOwned + Send + 'static;

    /// Applies `event`'s effects (database writes through `ctx.db`; outside calls made
    /// idempotent at the target) and returns the records to produce.
    async fn handle(
        &self,
        event: Self::Event,
        ctx: &mut HandlerContext<'_>,
    ) -> Result<Vec<Output>, HandlerError>;
}

/// Counters of what the loop did, for logs, metrics and tests.
#[derive(Debug, Default)]
pub struct LoopStats {
    pub batches_committed: AtomicU64,
    pub batches_aborted: AtomicU64,
    pub records_applied: AtomicU64,
    pub records_replayed: AtomicU64,
    pub records_dead_lettered: AtomicU64,
}

impl LoopStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        BTreeMap::from([
            (
                "batches_committed",
                self.batches_committed.load(Ordering::Relaxed),
            ),
            (
                "batches_aborted",
                self.batches_aborted.load(Ordering::Relaxed),
            ),
            (
                "records_applied",
                self.records_applied.load(Ordering::Relaxed),
            ),
            (
                "records_replayed",
                self.records_replayed.load(Ordering::Relaxed),
            ),
            (
                "records_dead_lettered",
                self.records_dead_lettered.load(Ordering::Relaxed),
            ),
        ])
    }
}

/// Why the loop stopped.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("fatal Kafka error, this instance must restart: {0}")]
    Fatal(KafkaError),
    #[error("loop set-up failed: {0:#}")]
    Setup(anyhow::Error),
}

/// Recovering from a failed batch did not complete.
enum Recovery {
    Fatal(KafkaError),
    ShutDown,
}

/// A batch failed: how to go on.
#[derive(Debug, thiserror::Error)]
enum BatchError {
    #[error("kafka: {0}")]
    Kafka(KafkaError),
    #[error("{0:#}")]
    Transient(anyhow::Error),
}

impl From<KafkaError> for BatchError {
    fn from(e: KafkaError) -> Self {
        BatchError::Kafka(e)
    }
}

/// Logs rebalances. The loop never has a transaction open while librdkafka serves a
/// rebalance: callbacks run inside `recv`, and `recv` is only called between transactions.
pub struct LoopContext {
    group_id: String,
}

impl ClientContext for LoopContext {}

impl ConsumerContext for LoopContext {
    fn pre_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        tracing::info!(group = %self.group_id, rebalance = ?rebalance, "rebalance starting");
    }
    fn post_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        tracing::info!(group = %self.group_id, rebalance = ?rebalance, "rebalance done");
    }
}

/// Runs a blocking librdkafka call on the blocking pool, off the async reactor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KafkaError> + Send + 'static,
) -> Result<T, KafkaError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    }
}

/// One consumer group instance.
pub struct ProcessingLoop<H: Handler> {
    settings: LoopSettings,
    topics: Vec<String>,
    consumer: Arc<StreamConsumer<LoopContext>>,
    producer: FutureProducer,
    pool: PgPool,
    codec: Arc<AvroCodec>,
    handler: Arc<H>,
    stats: Arc<LoopStats>,
}

impl<H: Handler> ProcessingLoop<H> {
    pub fn new(
        kafka_settings: &KafkaSettings,
        settings: LoopSettings,
        topics: Vec<String>,
        pool: PgPool,
        codec: Arc<AvroCodec>,
        handler: H,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !settings.group_id.is_empty(),
            "processing loop needs a group id"
        );
        anyhow::ensure!(
            !settings.transactional_id.is_empty(),
            "processing loop needs a transactional id"
        );
        let session_timeout = settings.session_timeout_ms.to_string();
        let mut consumer_props = kafka::TRANSACTIONAL_CONSUMER.to_vec();
        consumer_props.push(("group.id", &settings.group_id));
        consumer_props.push(("session.timeout.ms", &session_timeout));
        let consumer: StreamConsumer<LoopContext> =
            kafka::client_config(kafka_settings, &consumer_props)?.create_with_context(
                LoopContext {
                    group_id: settings.group_id.clone(),
                },
            )?;

        let txn_timeout = settings.transaction_timeout_ms.to_string();
        let mut producer_props = kafka::IDEMPOTENT_PRODUCER.to_vec();
        producer_props.push(("transactional.id", &settings.transactional_id));
        producer_props.push(("transaction.timeout.ms", &txn_timeout));
        let producer: FutureProducer =
            kafka::client_config(kafka_settings, &producer_props)?.create()?;
        Ok(Self {
            settings,
            topics,
            consumer: Arc::new(consumer),
            producer,
            pool,
            codec,
            handler: Arc::new(handler),
            stats: Arc::default(),
        })
    }

    pub fn stats(&self) -> Arc<LoopStats> {
        self.stats.clone()
    }

    fn call_timeout(&self) -> Duration {
        Duration::from_secs(30)
    }

    /// Consumes until `shutdown` fires, then finishes the current batch, commits and leaves.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), LoopError> {
        let producer = self.producer.clone();
        let timeout = self.call_timeout();
        blocking(move || producer.init_transactions(timeout))
            .await
            .map_err(|e| match kafka::classify(&e) {
                ErrorClass::Fatal => LoopError::Fatal(e),
                _ => LoopError::Setup(anyhow::Error::new(e).context("init_transactions")),
            })?;
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        self.consumer
            .subscribe(&topics)
            .map_err(|e| LoopError::Setup(anyhow::Error::new(e).context("subscribe")))?;
        tracing::info!(group = %self.settings.group_id, topics = ?self.topics,
            transactional_id = %self.settings.transactional_id, "processing loop started");

        let base_backoff = Duration::from_millis(self.settings.abort_backoff_ms);
        let mut backoff = base_backoff;
        let result = loop {
            let batch = match self.next_batch(&shutdown).await {
                Ok(batch) => batch,
                Err(e) if kafka::classify(&e) == ErrorClass::Fatal => {
                    break Err(LoopError::Fatal(e))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "consumer error");
                    tokio::time::sleep(base_backoff).await;
                    continue;
                }
            };
            if batch.is_empty() {
                if shutdown.is_cancelled() {
                    break Ok(());
                }
                continue;
            }
            match self.process_batch(&batch).await {
                Ok(()) => {
                    LoopStats::bump(&self.stats.batches_committed);
                    backoff = base_backoff;
                }
                Err(BatchError::Kafka(e)) if kafka::classify(&e) == ErrorClass::Fatal => {
                    tracing::error!(error = %e, "fatal Kafka error; stopping this instance");
                    break Err(LoopError::Fatal(e));
                }
                Err(e) => {
                    tracing::warn!(error = %e, records = batch.len(), "batch failed; aborting and rewinding");
                    LoopStats::bump(&self.stats.batches_aborted);
                    match self.recover(&batch, &shutdown).await {
                        Ok(()) => {}
                        Err(Recovery::Fatal(e)) => break Err(LoopError::Fatal(e)),
                        // Committed offsets are still behind the failed batch: nothing lost.
                        Err(Recovery::ShutDown) => break Ok(()),
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break Ok(()),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2)
                        .min(Duration::from_millis(self.settings.abort_backoff_max_ms));
                }
            }
        };
        self.consumer.unsubscribe();
        tracing::info!(group = %self.settings.group_id, stats = ?self.stats.snapshot(), "processing loop stopped");
        result
    }

    /// Up to `batch_max_records` records, waiting at most `batch_max_wait_ms` after the first.
    /// Returns an empty batch when shutdown fires while idle.
    async fn next_batch(&self, shutdown: &Shutdown) -> Result<Vec<Record>, KafkaError> {
        let mut batch = Vec::new();
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(batch),
            m = self.consumer.recv() => m?,
        };
        batch.push(Record::from_message(&first));
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.settings.batch_max_wait_ms);
        while batch.len() < self.settings.batch_max_records {
            tokio::select! {
                biased;
                _ = tokio::time::sleep_until(deadline) => break,
                m = self.consumer.recv() => match m {
                    Ok(m) => batch.push(Record::from_message(&m)),
                    // The records already taken are past the consumer's position: process
                    // them now rather than drop them; the error surfaces on the next poll.
                    Err(e) => {
                        tracing::warn!(error = %e, "consumer error while filling a batch");
                        break;
                    }
                },
            }
        }
        Ok(batch)
    }

    async fn process_batch(&self, batch: &[Record]) -> Result<(), BatchError> {
        let producer = self.producer.clone();
        blocking(move || producer.begin_transaction()).await?;

        let mut deliveries = Vec::new();
        for record in batch {
            for output in self.apply(record).await? {
                let delivery = kafka::enqueue(
                    &self.producer,
                    &output.topic,
                    output.key.as_deref(),
                    output.value.as_deref(),
                    output.headers.to_kafka(),
                )
                .await?;
                deliveries.push(delivery);
            }
        }
        for delivery in deliveries {
            kafka::delivered(delivery).await?;
        }

        let offsets = next_offsets(batch)?;
        let metadata = self
            .consumer
            .group_metadata()
            .ok_or_else(|| BatchError::Transient(anyhow::anyhow!("no consumer group metadata")))?;
        let timeout = self.call_timeout();
        self.retrying("send_offsets_to_transaction", {
            let producer = self.producer.clone();
            let metadata = Arc::new(metadata);
            move || {
                let (p, o, m) = (producer.clone(), offsets.clone(), metadata.clone());
                move || p.send_offsets_to_transaction(&o, &m, timeout)
            }
        })
        .await?;
        self.retrying("commit_transaction", {
            let producer = self.producer.clone();
            move || {
                let p = producer.clone();
                move || p.commit_transaction(timeout)
            }
        })
        .await?;
        tracing::debug!(records = batch.len(), "batch committed");
        Ok(())
    }

    /// Runs a transaction call, repeating it while librdkafka says the error is retriable.
    async fn retrying<F, C>(&self, what: &'static str, make_call: F) -> Result<(), KafkaError>
    where
        F: Fn() -> C,
        C: FnOnce() -> Result<(), KafkaError> + Send + 'static,
    {
        let mut attempt = 0;
        loop {
            match blocking(make_call()).await {
                Ok(()) => return Ok(()),
                Err(e) if kafka::classify(&e) == ErrorClass::Retriable && attempt < 5 => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, call = what, "retriable transaction error");
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Applies one record exactly once and returns the outputs to produce for it.
    async fn apply(&self, record: &Record) -> Result<Vec<Output>, BatchError> {
        let event_id = record.event_id();
        let span = tracing::info_span!(
            "process",
            otel.name = %format!("process {}", record.topic),
            otel.kind = "consumer",
            messaging.system = "kafka",
            messaging.operation.type = "process",
            messaging.operation.name = "process",
            messaging.destination.name = %record.topic,
            messaging.destination.partition.id = record.partition,
            messaging.kafka.offset = record.offset,
            messaging.kafka.message.key = %record.key_str(),
            messaging.consumer.group.name = %self.settings.group_id,
            event.id = %event_id,
            payment.id = %record.key_str(),
        );
        let _ = span.set_parent(record.headers.extract_context());
        self.apply_in_span(record, event_id).instrument(span).await
    }

    async fn apply_in_span(
        &self,
        record: &Record,
        event_id: Uuid,
    ) -> Result<Vec<Output>, BatchError> {
        let transient =
            |e: sqlx::Error| BatchError::Transient(anyhow::Error::new(e).context("database"));
        let group = &self.settings.group_id;
        let mut tx = self.pool.begin().await.map_err(transient)?;
        if let Some(stored) = stored_outputs(&mut tx, group, event_id)
            .await
            .map_err(transient)?
        {
            tx.rollback().await.map_err(transient)?;
            LoopStats::bump(&self.stats.records_replayed);
            tracing::info!(%event_id, "event already applied; re-producing its recorded outputs");
            return Ok(stored);
        }

        let mut outputs = match self
            .codec
            .decode::<H::Event>(record.payload.as_deref())
            .await
        {
            Err(e) if e.is_transient() => return Err(BatchError::Transient(e.into())),
            Err(e) => Err(("poison", e.to_string())),
            Ok(event) => {
                // The handler runs inside the transaction that records the event, so its writes
                // and the dedupe row commit together. Its outside calls (the PSP) hold this one
                // pooled connection meanwhile; a loop applies one record at a time.
                let mut ctx = HandlerContext {
                    db: &mut tx,
                    record,
                    event_id,
                    codec: &self.codec,
                };
                match self.handler.handle(event, &mut ctx).await {
                    Ok(outputs) => Ok(outputs),
                    Err(HandlerError::Transient(e)) => return Err(BatchError::Transient(e)),
                    Err(HandlerError::Permanent(e)) => Err(("permanent", format!("{e:#}"))),
                }
            }
        };
        if let Err((class, message)) = &outputs {
            // The handler's partial effects are discarded with its transaction; the record
            // itself is kept, unchanged, on the dead-letter topic.
            tx.rollback().await.map_err(transient)?;
            tx = self.pool.begin().await.map_err(transient)?;
            tracing::warn!(error.type = class, error = %message, "dead-lettering record");
            outputs = Ok(vec![self.dead_letter(record, class, message)]);
        }
        let mut outputs = outputs.unwrap_or_default();
        for output in &mut outputs {
            output.headers.inject_current_context();
        }

        let stored = serde_json::to_value(&outputs).map_err(|e| {
            BatchError::Transient(anyhow::Error::new(e).context("serializing outputs"))
        })?;
        let inserted = sqlx::query(
            "INSERT INTO processed_events (consumer_group, event_id, topic, partition, \"offset\", outputs)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(group)
        .bind(event_id)
        .bind(&record.topic)
        .bind(record.partition)
        .bind(record.offset)
        .bind(stored)
        .execute(&mut *tx)
        .await
        .map_err(transient)?
        .rows_affected();
        if inserted == 0 {
            // A concurrent instance (a zombie before it was fenced) applied it first: keep its
            // effects and outputs, drop ours.
            tx.rollback().await.map_err(transient)?;
            LoopStats::bump(&self.stats.records_replayed);
            let mut conn = self.pool.acquire().await.map_err(transient)?;
            return Ok(stored_outputs(&mut conn, group, event_id)
                .await
                .map_err(transient)?
                .unwrap_or_default());
        }
        tx.commit().await.map_err(transient)?;
        if outputs.iter().any(|o| o.topic == self.settings.dlq_topic()) {
            LoopStats::bump(&self.stats.records_dead_lettered);
        } else {
            LoopStats::bump(&self.stats.records_applied);
        }
        Ok(outputs)
    }

    /// The original record, unchanged, with headers saying where it came from and why.
    fn dead_letter(&self, record: &Record, class: &str, message: &str) -> Output {
        let mut headers = record.headers.clone();
        headers.set(headers::DLQ_ORIGINAL_TOPIC, record.topic.clone());
        headers.set(
            headers::DLQ_ORIGINAL_PARTITION,
            record.partition.to_string(),
        );
        headers.set(headers::DLQ_ORIGINAL_OFFSET, record.offset.to_string());
        headers.set(headers::DLQ_CONSUMER_GROUP, self.settings.group_id.clone());
        headers.set(headers::DLQ_ERROR_CLASS, class);
        headers.set(
            headers::DLQ_ERROR_MESSAGE,
            headers::bounded_error_message(message),
        );
        Output {
            topic: self.settings.dlq_topic(),
            key: record.key.clone(),
            value: record.payload.clone(),
            headers,
        }
    }

    /// Aborts the open transaction and rewinds. The rewind is retried until it succeeds:
    /// consuming on past a failed batch would let a later commit skip its records.
    async fn recover(&self, batch: &[Record], shutdown: &Shutdown) -> Result<(), Recovery> {
        let producer = self.producer.clone();
        let timeout = self.call_timeout();
        if let Err(e) = blocking(move || producer.abort_transaction(timeout)).await {
            // Not fatal: there may be no open transaction (begin failed). A transaction still
            // open makes the next begin fail, which brings the loop back here.
            if kafka::classify(&e) == ErrorClass::Fatal {
                return Err(Recovery::Fatal(e));
            }
            tracing::warn!(error = %e, "abort_transaction failed");
        }
        let mut backoff = Duration::from_millis(self.settings.abort_backoff_ms);
        loop {
            match self.rewind(batch).await {
                Ok(()) => return Ok(()),
                Err(e) if kafka::classify(&e) == ErrorClass::Fatal => {
                    return Err(Recovery::Fatal(e))
                }
                Err(e) => tracing::warn!(error = %e, "rewind failed; retrying"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Err(Recovery::ShutDown),
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_millis(self.settings.abort_backoff_max_ms));
        }
    }

    /// Seeks every assigned partition back to its committed offset, so the records of the
    /// aborted batch are consumed again.
    async fn rewind(&self, batch: &[Record]) -> Result<(), KafkaError> {
        let timeout = self.call_timeout();
        let first_offsets: BTreeMap<(String, i32), i64> =
            batch.iter().fold(BTreeMap::new(), |mut m, r| {
                m.entry((r.topic.clone(), r.partition)).or_insert(r.offset);
                m
            });
        let consumer = self.consumer.clone();
        blocking(move || {
            let assignment = consumer.assignment()?;
            let committed = consumer.committed_offsets(assignment, timeout)?;
            let mut seek = TopicPartitionList::new();
            for elem in committed.elements() {
                let key = (elem.topic().to_string(), elem.partition());
                let offset = match elem.offset() {
                    Offset::Offset(o) => Offset::Offset(o),
                    // Nothing committed yet: back to where this batch started, else the start.
                    _ => first_offsets
                        .get(&key)
                        .map_or(Offset::Beginning, |o| Offset::Offset(*o)),
                };
                seek.add_partition_offset(&key.0, key.1, offset)?;
            }
            if seek.count() > 0 {
                consumer.seek_partitions(seek, timeout)?;
            }
            Ok(())
        })
        .await
    }
}

/// The offsets to commit after `batch`: last processed offset + 1 per partition.
fn next_offsets(batch: &[Record]) -> Result<TopicPartitionList, KafkaError> {
    let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for r in batch {
        let slot = next.entry((r.topic.as_str(), r.partition)).or_insert(0);
        *slot = (*slot).max(r.offset + 1);
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in next {
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    }
    Ok(tpl)
}

async fn stored_outputs(
    conn: &mut sqlx::PgConnection,
    group: &str,
    event_id: Uuid,
) -> Result<Option<Vec<Output>>, sqlx::Error> {
    let row: Option<(serde_json::Value,)> = sqlx::query_as(
        "SELECT outputs FROM processed_events WHERE consumer_group = $1 AND event_id = $2",
    )
    .bind(group)
    .bind(event_id)
    .fetch_optional(conn)
    .await?;
    row.map(|(v,)| serde_json::from_value(v).map_err(|e| sqlx::Error::Decode(Box::new(e))))
        .transpose()
}

/// Encodes `value` and wraps it as an event [`Output`]; a convenience for handlers.
pub async fn event_output<T: Serialize>(
    codec: &AvroCodec,
    topic: &str,
    schema: &crate::events::SchemaFile,
    key: &str,
    event_id: Uuid,
    value: &T,
) -> Result<Output, HandlerError> {
    let bytes = codec.encode(topic, schema, value).await.map_err(|e| {
        if e.is_transient() {
            HandlerError::Transient(e.into())
        } else {
            HandlerError::Permanent(e.into())
        }
    })?;
    Ok(Output::event(topic, key, bytes, event_id, schema.full_name))
}

/// Base64 helper re-exported for tools that print stored outputs.
pub fn encode_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(topic: &str, partition: i32, offset: i64) -> Record {
        Record {
            topic: topic.into(),
            partition,
            offset,
            timestamp_ms: None,
            key: None,
            payload: None,
            headers: RecordHeaders::default(),
        }
    }

    #[test]
    fn commits_last_offset_plus_one_per_partition() {
        let batch = [
            record("a", 0, 5),
            record("a", 1, 9),
            record("a", 0, 6),
            record("b", 0, 1),
        ];
        let tpl = next_offsets(&batch).unwrap();
        let got: Vec<_> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition(), e.offset()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a".into(), 0, Offset::Offset(7)),
                ("a".into(), 1, Offset::Offset(10)),
                ("b".into(), 0, Offset::Offset(2)),
            ]
        );
    }

    #[test]
    fn event_id_falls_back_to_a_stable_position_id() {
        let r = record("t", 2, 40);
        assert_eq!(r.event_id(), record("t", 2, 40).event_id());
        assert_ne!(r.event_id(), record("t", 2, 41).event_id());
        let mut with_header = record("t", 2, 40);
        let id = Uuid::new_v4();
        with_header.headers.set(headers::EVENT_ID, id.to_string());
        assert_eq!(with_header.event_id(), id);
    }

    #[test]
    fn outputs_survive_the_processed_events_round_trip() {
        let out = Output::event("t", "k", vec![0, 1, 2, 255], Uuid::nil(), "x.Y");
        let json = serde_json::to_value(vec![out.clone()]).unwrap();
        let back: Vec<Output> = serde_json::from_value(json).unwrap();
        assert_eq!(back, vec![out]);
    }
}
