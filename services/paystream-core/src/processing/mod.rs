//! The transactional consume-transform-produce loop every consumer group runs.
//!
//! Per batch: begin → for each record: decode, apply the handler's effects in Postgres together
//! with the record's event id (the idempotent consumer), collect its outputs → produce outputs →
//! `send_offsets_to_transaction` with the group metadata (KIP-447) → commit.
//!
//! Failure handling:
//! - a handler's transient failure: the record is forwarded to the group's next retry topic
//!   ([`crate::retry`]) inside the transaction that commits its offset, so the input partition
//!   keeps flowing; after the last retry it goes to the dead-letter topic;
//! - a poison record (undecodable) or a permanent handler failure: the original record goes to
//!   the dead-letter topic inside the transaction that commits its offset;
//! - an infrastructure failure (Postgres, the registry, an abortable Kafka error): abort, rewind
//!   every assigned partition to its committed offset, back off, go on;
//! - a fatal Kafka error (fenced by a newer instance): stop and return the error, so the
//!   supervisor restarts the process.
//!
//! The same consumer reads the group's retry topics. A retry partition whose head record is not
//! due yet is paused and resumed when it is due ([`hold`]); the other partitions keep flowing.
//!
//! Effects outside Kafka are exactly-once because every applied event id is recorded in
//! `processed_events` in the same database transaction as the handler's writes, together with
//! the outputs it produced. A redelivered record (after an abort or a crash) skips the handler
//! and re-produces the stored outputs, which carry the same deterministic event ids, so
//! downstream consumers dedupe them in turn; a second copy of the event in another record (the
//! outbox relay publishing twice, a DLQ replay) produces nothing.
//!
//! Rebalances need no transaction handling of their own: librdkafka serves them inside `recv`,
//! and the loop only calls `recv` between transactions, so no transaction is open when
//! partitions are revoked or lost. Records of partitions no longer assigned when a batch closes
//! are dropped from it; their new owner reads them from the committed offsets.

pub mod hold;
pub mod instruments;

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use opentelemetry::trace::TraceContextExt as _;
use rdkafka::consumer::{Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
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
use crate::headers;
use crate::kafka::{self, ErrorClass, TopicSpec};
use crate::retry::{self, Destination, Failure, FailureClass, RetryPolicy};
use crate::shutdown::Shutdown;
// Handlers name them through this module: what they receive and what they return.
pub use crate::record::{Output, Record};
use hold::{HeldPartitions, HeldRecord};
use instruments::Outcome;

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
    /// librdkafka's `fetch.wait.max.ms`: the longest the broker may hold a fetch while no data
    /// arrives. Apache Kafka answers as soon as data does, so this is an upper bound, not a
    /// delay (librdkafka's default is 500 ms).
    pub fetch_wait_max_ms: u64,
    pub transaction_timeout_ms: u64,
    pub session_timeout_ms: u64,
    /// First back-off after an aborted batch; doubles up to `abort_backoff_max_ms`.
    pub abort_backoff_ms: u64,
    pub abort_backoff_max_ms: u64,
    /// Dead-letter topic; defaults to `<group_id>.dlq`.
    pub dlq_topic: Option<String>,
    /// Delay of each retry topic `<group_id>.retry.1 … .retry.N`; N is the list's length
    /// (0: transient failures go straight to the dead-letter topic).
    #[serde(deserialize_with = "crate::config::list_or_csv")]
    pub retry_delays_ms: Vec<u64>,
    /// Partitions of the retry and dead-letter topics the loop creates when they are missing;
    /// -1: `kafka.provisioning.partitions`.
    pub retry_topic_partitions: i32,
    pub dlq_topic_partitions: i32,
    /// After a shutdown signal, how long the batch in flight may take to commit before it is
    /// aborted (its records are then redelivered to the next owner).
    pub drain_timeout_ms: u64,
    /// Where a group with no committed offset starts reading its input topics; a group that
    /// committed goes on from its offsets whatever this says.
    /// Each service sets its own default: a side-effecting group (the notifier) starts from the
    /// end, so enabling it does not act on every retained record.
    pub start_from: StartFrom,
}

/// Where a new consumer group starts: `consumer.start_from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    /// The oldest retained record: nothing on the topic is skipped (a processor must never
    /// skip a payment), and a new group backfills.
    #[default]
    Earliest,
    /// The end of each input partition when the instance starts: only records produced after
    /// that. Done by committing those ends before joining ([`ProcessingLoop::run`]), not with
    /// `auto.offset.reset=latest`, which would also apply to the group's retry topics and skip
    /// a retry written before a restart or a rebalance.
    Latest,
}

impl Default for LoopSettings {
    fn default() -> Self {
        Self {
            group_id: String::new(),
            transactional_id: String::new(),
            batch_max_records: 100,
            batch_max_wait_ms: 50,
            fetch_wait_max_ms: 100,
            transaction_timeout_ms: 60_000,
            session_timeout_ms: 10_000,
            abort_backoff_ms: 200,
            abort_backoff_max_ms: 10_000,
            dlq_topic: None,
            retry_delays_ms: vec![1_000, 10_000, 60_000],
            retry_topic_partitions: -1,
            dlq_topic_partitions: -1,
            drain_timeout_ms: 20_000,
            start_from: StartFrom::Earliest,
        }
    }
}

impl LoopSettings {
    pub fn dlq_topic(&self) -> String {
        self.dlq_topic
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", self.group_id))
    }

    /// The group's retry chain and dead-letter topic.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::new(
            self.group_id.clone(),
            self.retry_delays_ms
                .iter()
                .map(|ms| Duration::from_millis(*ms))
                .collect(),
            self.dlq_topic(),
        )
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
    /// Failed attempts before this one (0 on the input topic, k on `<group>.retry.k`).
    pub attempt: u32,
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
    /// Redeliveries of the record that applied an event: its outputs are produced again.
    pub records_replayed: AtomicU64,
    /// Other records carrying an already applied event id: skipped, nothing produced.
    pub records_deduplicated: AtomicU64,
    pub records_retried: AtomicU64,
    pub records_dead_lettered: AtomicU64,
    pub partitions_held: AtomicU64,
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
                "records_deduplicated",
                self.records_deduplicated.load(Ordering::Relaxed),
            ),
            (
                "records_retried",
                self.records_retried.load(Ordering::Relaxed),
            ),
            (
                "partitions_held",
                self.partitions_held.load(Ordering::Relaxed),
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
    /// `reason` is librdkafka's own account of the fatal error (e.g. a fencing by a newer
    /// instance, or an idempotent producer's sequence error), which the returned error code hides.
    #[error("fatal Kafka error, this instance must restart: {error}{}", reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default())]
    Fatal {
        error: KafkaError,
        reason: Option<String>,
    },
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
    #[error("shutdown drain deadline passed with the batch still open")]
    DrainTimeout,
}

impl From<KafkaError> for BatchError {
    fn from(e: KafkaError) -> Self {
        BatchError::Kafka(e)
    }
}

/// Logs rebalances. The loop never has a transaction open while librdkafka serves a
/// rebalance: callbacks run inside `recv`, and `recv` is only called between transactions.
/// The default handling (incremental for cooperative-sticky) is kept.
pub struct LoopContext {
    group_id: String,
}

impl ClientContext for LoopContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        instruments::lag(&self.group_id, &statistics);
    }
}

impl ConsumerContext for LoopContext {
    fn pre_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        tracing::info!(group = %self.group_id, rebalance = ?rebalance, "rebalance starting");
    }
    fn post_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let kind = match rebalance {
            Rebalance::Assign(_) => "assign",
            Rebalance::Revoke(_) => "revoke",
            Rebalance::Error(_) => "error",
        };
        instruments::rebalance(&self.group_id, kind);
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

/// Chaos hooks for tests and game days: make the loop fail the way production can.
#[derive(Debug)]
pub struct Faults {
    abort_after_records: AtomicI64,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            abort_after_records: AtomicI64::new(-1),
        }
    }
}

impl Faults {
    /// Fails the open transaction with an abortable error once `n` more records have been
    /// applied (before the next record), as a broker-side abort would. One-shot.
    pub fn abort_after_records(&self, n: u32) {
        self.abort_after_records
            .store(i64::from(n), Ordering::SeqCst);
    }

    /// Whether the armed abort fires now; counts one applied record otherwise.
    fn fire_before_record(&self) -> bool {
        let mut current = self.abort_after_records.load(Ordering::SeqCst);
        loop {
            let next = match current {
                c if c < 0 => return false,
                0 => -1,
                c => c - 1,
            };
            match self.abort_after_records.compare_exchange(
                current,
                next,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return current == 0,
                Err(actual) => current = actual,
            }
        }
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The loop consumer's librdkafka properties: [`kafka::TRANSACTIONAL_CONSUMER`] plus the
/// group's own, all managed (`kafka.properties` cannot override them).
fn consumer_properties(settings: &LoopSettings) -> Vec<(&'static str, String)> {
    let mut props: Vec<(&'static str, String)> = kafka::TRANSACTIONAL_CONSUMER
        .iter()
        .map(|(k, v)| (*k, (*v).to_string()))
        .collect();
    props.extend([
        ("group.id", settings.group_id.clone()),
        (
            "session.timeout.ms",
            settings.session_timeout_ms.to_string(),
        ),
        ("fetch.wait.max.ms", settings.fetch_wait_max_ms.to_string()),
        // Per-partition consumer lag for the metrics, from librdkafka's own bookkeeping.
        ("statistics.interval.ms", "5000".to_string()),
    ]);
    props
}

/// One consumer group instance.
pub struct ProcessingLoop<H: Handler> {
    settings: LoopSettings,
    kafka_settings: KafkaSettings,
    topics: Vec<String>,
    policy: RetryPolicy,
    consumer: Arc<StreamConsumer<LoopContext>>,
    producer: FutureProducer,
    pool: PgPool,
    codec: Arc<AvroCodec>,
    handler: Arc<H>,
    stats: Arc<LoopStats>,
    faults: Arc<Faults>,
    /// Distinguishes this process's transactions from an earlier run's with the same
    /// transactional id, in the `paystream.txn` header.
    run_id: String,
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
        let consumer_props = consumer_properties(&settings);
        let consumer_props: Vec<(&str, &str)> = consumer_props
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
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
        instruments::describe();
        Ok(Self {
            policy: settings.retry_policy(),
            settings,
            kafka_settings: kafka_settings.clone(),
            topics,
            consumer: Arc::new(consumer),
            producer,
            pool,
            codec,
            handler: Arc::new(handler),
            stats: Arc::default(),
            faults: Arc::default(),
            run_id: Uuid::new_v4().simple().to_string()[..8].to_string(),
        })
    }

    /// Counts into `stats` and obeys `faults` instead of its own: an instance restarted in the
    /// same process by a supervisor (the test harness) continues its predecessor's counters.
    pub fn continue_from(&mut self, stats: Arc<LoopStats>, faults: Arc<Faults>) {
        self.stats = stats;
        self.faults = faults;
    }

    pub fn stats(&self) -> Arc<LoopStats> {
        self.stats.clone()
    }

    pub fn faults(&self) -> Arc<Faults> {
        self.faults.clone()
    }

    fn call_timeout(&self) -> Duration {
        Duration::from_secs(30)
    }

    /// The retry and dead-letter topics, created when missing (or, with topic creation off,
    /// checked like the input topics).
    async fn ensure_chain_topics(&self) -> anyhow::Result<()> {
        if !self.kafka_settings.provisioning.create_topics {
            kafka::require_topics(&self.kafka_settings, &self.topics).await?;
        }
        let mut specs: Vec<TopicSpec> = self
            .policy
            .retry_topics()
            .into_iter()
            .map(|t| TopicSpec::new(t, self.settings.retry_topic_partitions))
            .collect();
        specs.push(TopicSpec::new(
            self.policy.dlq_topic(),
            self.settings.dlq_topic_partitions,
        ));
        kafka::ensure_topics(&self.kafka_settings, &specs).await
    }

    /// A fatal error, with librdkafka's reason for it, logged once here.
    fn fatal(&self, error: KafkaError) -> LoopError {
        let reason = self
            .producer
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("{code:?}: {reason}"));
        tracing::error!(%error, reason = reason.as_deref().unwrap_or("-"),
            transactional_id = %self.settings.transactional_id,
            "fatal Kafka error; stopping this instance");
        LoopError::Fatal { error, reason }
    }

    /// Consumes until `shutdown` fires, then finishes the current batch, commits and leaves.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), LoopError> {
        let producer = self.producer.clone();
        let timeout = self.call_timeout();
        blocking(move || producer.init_transactions(timeout))
            .await
            .map_err(|e| match kafka::classify(&e) {
                ErrorClass::Fatal => self.fatal(e),
                _ => LoopError::Setup(anyhow::Error::new(e).context("init_transactions")),
            })?;
        self.ensure_chain_topics().await.map_err(|e| {
            LoopError::Setup(e.context("creating the retry and dead-letter topics"))
        })?;
        if self.settings.start_from == StartFrom::Latest {
            self.anchor_at_end().await.map_err(|e| {
                LoopError::Setup(anyhow::Error::new(e).context("starting the group at the end"))
            })?;
        }
        let mut subscription = self.topics.clone();
        subscription.extend(self.policy.retry_topics());
        let topics: Vec<&str> = subscription.iter().map(String::as_str).collect();
        self.consumer
            .subscribe(&topics)
            .map_err(|e| LoopError::Setup(anyhow::Error::new(e).context("subscribe")))?;
        tracing::info!(group = %self.settings.group_id, topics = ?subscription,
            transactional_id = %self.settings.transactional_id, run = %self.run_id,
            "processing loop started");
        // Served from the start (0), so dashboards and alerts see the series before any hold.
        instruments::held_partitions(&self.settings.group_id, 0);

        let drain_deadline = {
            let shutdown = shutdown.clone();
            let grace = Duration::from_millis(self.settings.drain_timeout_ms);
            async move {
                shutdown.cancelled().await;
                tokio::time::sleep(grace).await;
            }
        };
        tokio::pin!(drain_deadline);
        let base_backoff = Duration::from_millis(self.settings.abort_backoff_ms);
        let mut backoff = base_backoff;
        let mut held = HeldPartitions::default();
        let mut txn_seq: u64 = 0;
        let result = loop {
            self.resume_due(&mut held);
            let batch = match self.next_batch(&shutdown, held.next_due_ms()).await {
                Ok(batch) => batch,
                Err(e) if kafka::classify(&e) == ErrorClass::Fatal => break Err(self.fatal(e)),
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
            let batch = self.still_assigned(batch);
            let (batch, not_due) =
                hold::split_not_due(batch, |t| self.policy.is_retry_topic(t), now_ms());
            if let Err(e) = self.hold(&not_due, &mut held).await {
                // The held record might now sit behind the consumer's position: rewind to the
                // committed offsets rather than risk skipping it.
                tracing::warn!(error = %e, "holding a retry partition failed; rewinding");
                match self.recover(&batch, &mut held, &shutdown).await {
                    Ok(()) => continue,
                    Err(Recovery::Fatal(e)) => break Err(self.fatal(e)),
                    Err(Recovery::ShutDown) => break Ok(()),
                }
            }
            if batch.is_empty() {
                continue;
            }

            txn_seq += 1;
            let txn = format!(
                "{}/{}/{txn_seq}",
                self.settings.transactional_id, self.run_id
            );
            let outcome = tokio::select! {
                r = self.process_batch(&batch, &txn) => r,
                _ = &mut drain_deadline => Err(BatchError::DrainTimeout),
            };
            match outcome {
                Ok(()) => {
                    LoopStats::bump(&self.stats.batches_committed);
                    instruments::transaction(&self.settings.group_id, true, batch.len());
                    backoff = base_backoff;
                }
                Err(BatchError::Kafka(e)) if kafka::classify(&e) == ErrorClass::Fatal => {
                    tracing::warn!(%txn, "the batch hit a fatal Kafka error");
                    break Err(self.fatal(e));
                }
                Err(BatchError::DrainTimeout) => {
                    tracing::warn!(%txn, records = batch.len(), "drain deadline passed; aborting the open batch and stopping");
                    LoopStats::bump(&self.stats.batches_aborted);
                    let producer = self.producer.clone();
                    if let Err(e) = blocking(move || producer.abort_transaction(timeout)).await {
                        tracing::warn!(error = %e, "abort_transaction failed");
                    }
                    break Ok(());
                }
                Err(e) => {
                    tracing::warn!(error = %e, %txn, records = batch.len(), "batch failed; aborting and rewinding");
                    LoopStats::bump(&self.stats.batches_aborted);
                    match self.recover(&batch, &mut held, &shutdown).await {
                        Ok(()) => {}
                        Err(Recovery::Fatal(e)) => break Err(self.fatal(e)),
                        // Committed offsets are still behind the failed batch: nothing lost.
                        Err(Recovery::ShutDown) => break Ok(()),
                    }
                    tracing::info!(%txn, "transaction aborted");
                    instruments::transaction(&self.settings.group_id, false, batch.len());
                    tokio::select! {
                        _ = shutdown.cancelled() => break Ok(()),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2)
                        .min(Duration::from_millis(self.settings.abort_backoff_max_ms));
                }
            }
        };
        // Leaving the group now hands the partitions over at once instead of after the session
        // timeout; the consumer is closed when the loop is dropped.
        self.consumer.unsubscribe();
        tracing::info!(group = %self.settings.group_id, stats = ?self.stats.snapshot(), "processing loop stopped");
        result
    }

    /// Up to `batch_max_records` records, waiting at most `batch_max_wait_ms` after the first.
    /// Returns an empty batch when shutdown fires while idle, or when a held partition is due
    /// (`wake_at_ms`) so the caller can resume it.
    async fn next_batch(
        &self,
        shutdown: &Shutdown,
        wake_at_ms: Option<i64>,
    ) -> Result<Vec<Record>, KafkaError> {
        let mut batch = Vec::new();
        let wake = async {
            match wake_at_ms {
                Some(at) => {
                    let wait = u64::try_from(at - now_ms()).unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                None => std::future::pending().await,
            }
        };
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(batch),
            _ = wake => return Ok(batch),
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

    /// Drops records of partitions this instance no longer owns (revoked or lost while the batch
    /// filled): offsets sent for them would be refused, and their new owner reads them anyway.
    fn still_assigned(&self, mut batch: Vec<Record>) -> Vec<Record> {
        let Ok(assignment) = self.consumer.assignment() else {
            return batch;
        };
        let owned: HashSet<(String, i32)> = assignment
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        let before = batch.len();
        batch.retain(|r| owned.contains(&(r.topic.clone(), r.partition)));
        if batch.len() != before {
            tracing::info!(
                dropped = before - batch.len(),
                "dropped records of partitions no longer assigned"
            );
        }
        batch
    }

    /// Pauses each partition in `not_due` and seeks it back to its held record, so nothing past
    /// it is consumed until it is resumed.
    async fn hold(
        &self,
        not_due: &[HeldRecord],
        held: &mut HeldPartitions,
    ) -> Result<(), KafkaError> {
        if not_due.is_empty() {
            return Ok(());
        }
        let mut positions = TopicPartitionList::new();
        for h in not_due {
            positions.add_partition_offset(&h.topic, h.partition, Offset::Offset(h.offset))?;
        }
        self.consumer.pause(&positions)?;
        let consumer = self.consumer.clone();
        let timeout = self.call_timeout();
        let seek = positions.clone();
        // Seeking also discards what librdkafka already fetched past the held record.
        if let Err(e) = blocking(move || kafka::seek_exactly(&*consumer, seek, timeout)).await {
            // Not held after all: the caller rewinds these partitions with the others, and a
            // partition left paused here would never be resumed.
            if let Err(resume) = self.consumer.resume(&positions) {
                tracing::warn!(error = %resume, "resuming partitions after a failed seek failed");
            }
            return Err(e);
        }
        for h in not_due {
            tracing::debug!(topic = %h.topic, partition = h.partition, offset = h.offset,
                due_in_ms = h.due_at_ms - now_ms(), "holding retry partition until due");
            held.hold(h);
            LoopStats::bump(&self.stats.partitions_held);
        }
        instruments::held_partitions(&self.settings.group_id, held.len());
        Ok(())
    }

    /// Resumes the held partitions that are due.
    fn resume_due(&self, held: &mut HeldPartitions) {
        let due = held.take_due(now_ms());
        if !due.is_empty() {
            self.resume(due);
            instruments::held_partitions(&self.settings.group_id, held.len());
        }
    }

    fn resume(&self, partitions: Vec<(String, i32)>) {
        if partitions.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in &partitions {
            tpl.add_partition(topic, *partition);
        }
        // A partition revoked meanwhile is simply not resumed: its new owner starts unpaused.
        if let Err(e) = self.consumer.resume(&tpl) {
            tracing::warn!(error = %e, ?partitions, "resuming held partitions failed");
        }
    }

    async fn process_batch(&self, batch: &[Record], txn: &str) -> Result<(), BatchError> {
        let producer = self.producer.clone();
        blocking(move || producer.begin_transaction()).await?;

        let mut deliveries = Vec::new();
        for record in batch {
            if self.faults.fire_before_record() {
                return Err(BatchError::Transient(anyhow::anyhow!(
                    "injected abortable fault"
                )));
            }
            for output in self.apply(record).await? {
                let mut headers = output.headers;
                headers.set(headers::PRODUCER_TXN, txn);
                let delivery = kafka::enqueue(
                    &self.producer,
                    &output.topic,
                    output.key.as_deref(),
                    output.value.as_deref(),
                    headers.to_kafka(),
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
        tracing::info!(%txn, records = batch.len(), "transaction committed");
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

    /// Applies one record exactly once and returns the outputs to produce for it: the handler's
    /// (stored with the event id), or the record itself forwarded to the retry chain or DLQ.
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
            retry.attempt = retry::attempt_of(&record.headers),
            error.type = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        let _ = span.set_parent(record.headers.extract_context());
        // Logs carry the trace id (the JSON log line shows the span's fields), from the tracer
        // when traces are exported, else from the record's own `traceparent`.
        let traced = span.context().span().span_context().trace_id();
        if traced != opentelemetry::trace::TraceId::INVALID {
            span.record("trace_id", tracing::field::display(traced));
        } else if let Some(id) = record.headers.trace_id() {
            span.record("trace_id", id);
        }
        let started = std::time::Instant::now();
        let (outputs, outcome) = self
            .apply_in_span(record, event_id)
            .instrument(span)
            .await?;
        self.observe(record, outcome, started.elapsed());
        Ok(outputs)
    }

    /// Counts a handled record in the loop's stats and metrics.
    fn observe(&self, record: &Record, outcome: Outcome, took: Duration) {
        let counter = match outcome {
            Outcome::Applied => &self.stats.records_applied,
            Outcome::Replayed => &self.stats.records_replayed,
            Outcome::Deduplicated => &self.stats.records_deduplicated,
            Outcome::Retried => &self.stats.records_retried,
            Outcome::DeadLettered => &self.stats.records_dead_lettered,
        };
        LoopStats::bump(counter);
        instruments::record(
            &self.settings.group_id,
            &record.topic,
            outcome,
            took,
            record.timestamp_ms,
        );
    }

    async fn apply_in_span(
        &self,
        record: &Record,
        event_id: Uuid,
    ) -> Result<(Vec<Output>, Outcome), BatchError> {
        let transient =
            |e: sqlx::Error| BatchError::Transient(anyhow::Error::new(e).context("database"));
        let group = &self.settings.group_id;
        // Decoded before the dedupe lookup: bytes that are not an event are dead-lettered even
        // when their `event_id` header names an event already applied (a reused or stolen id),
        // rather than skipped as its duplicate without a trace.
        let decoded = match self
            .codec
            .decode::<H::Event>(record.payload.as_deref())
            .await
        {
            Err(e) if e.is_transient() => return Err(BatchError::Transient(e.into())),
            decoded => decoded,
        };
        let mut tx = self.pool.begin().await.map_err(transient)?;
        if decoded.is_ok() {
            if let Some(applied) = applied_event(&mut tx, group, event_id)
                .await
                .map_err(transient)?
            {
                tx.rollback().await.map_err(transient)?;
                return Ok(self.already_applied(record, applied));
            }
        }

        let handled = match decoded {
            Err(e) => Err(Failure {
                class: FailureClass::Poison,
                message: e.to_string(),
            }),
            Ok(event) => {
                // The handler runs inside the transaction that records the event, so its writes
                // and the dedupe row commit together. Its outside calls (the PSP) hold this one
                // pooled connection meanwhile; a loop applies one record at a time.
                let mut ctx = HandlerContext {
                    db: &mut tx,
                    record,
                    event_id,
                    attempt: retry::attempt_of(&record.headers),
                    codec: &self.codec,
                };
                match self.handler.handle(event, &mut ctx).await {
                    Ok(outputs) => Ok(outputs),
                    Err(HandlerError::Transient(e)) => Err(Failure {
                        class: FailureClass::Transient,
                        message: format!("{e:#}"),
                    }),
                    Err(HandlerError::Permanent(e)) => Err(Failure {
                        class: FailureClass::Permanent,
                        message: format!("{e:#}"),
                    }),
                }
            }
        };
        let mut outputs = match handled {
            Ok(outputs) => outputs,
            Err(failure) => {
                // The handler's partial effects are discarded with its transaction; the record
                // goes on, unchanged, to the next stage of the chain. Nothing is recorded as
                // applied, so a later attempt (or an operator's replay) runs the handler again.
                tx.rollback().await.map_err(transient)?;
                let mut forward = self.policy.route(record, &failure, now_ms());
                let outcome =
                    self.log_forward(&forward.destination, &forward.output.topic, &failure);
                stamp_send(&mut forward.output);
                return Ok((vec![forward.output], outcome));
            }
        };
        outputs.iter_mut().for_each(stamp_send);

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
            let mut conn = self.pool.acquire().await.map_err(transient)?;
            return Ok(applied_event(&mut conn, group, event_id)
                .await
                .map_err(transient)?
                .map(|applied| self.already_applied(record, applied))
                .unwrap_or((Vec::new(), Outcome::Deduplicated)));
        }
        tx.commit().await.map_err(transient)?;
        Ok((outputs, Outcome::Applied))
    }

    /// The outputs to produce for a record whose event was already applied.
    ///
    /// The record that applied the event is the one whose transaction must carry the outputs:
    /// redelivered (its transaction aborted after the database commit), it re-produces them.
    /// Any other record with the same event id (the outbox relay publishing twice, a DLQ
    /// replay, a producer outside our transactions sending it again) produces nothing: the
    /// outputs are already committed, or will be with the original record.
    fn already_applied(&self, record: &Record, applied: AppliedEvent) -> (Vec<Output>, Outcome) {
        let event_id = record.event_id();
        if applied.position == (record.topic.clone(), record.partition, record.offset) {
            tracing::info!(%event_id, "event already applied; re-producing its recorded outputs");
            (applied.outputs, Outcome::Replayed)
        } else {
            let (topic, partition, offset) = &applied.position;
            tracing::info!(%event_id, applied_from = %format!("{topic}/{partition}/{offset}"),
                "event already applied from another record; skipping");
            (Vec::new(), Outcome::Deduplicated)
        }
    }

    /// Logs a record leaving for the retry chain or the dead-letter topic.
    fn log_forward(&self, destination: &Destination, topic: &str, failure: &Failure) -> Outcome {
        let span = tracing::Span::current();
        span.record("error.type", failure.class.as_str());
        match destination {
            Destination::Retry { attempt, due_at_ms } => {
                tracing::warn!(error.type = failure.class.as_str(), error = %failure.message,
                    attempt, due_in_ms = due_at_ms - now_ms(), to = topic,
                    "processing failed; forwarding to the retry chain");
                Outcome::Retried
            }
            Destination::DeadLetter { attempt } => {
                tracing::error!(error.type = failure.class.as_str(), error = %failure.message,
                    attempt, to = topic, "processing failed; dead-lettering the record");
                Outcome::DeadLettered
            }
        }
    }

    /// Aborts the open transaction and rewinds. The rewind is retried until it succeeds:
    /// consuming on past a failed batch would let a later commit skip its records.
    async fn recover(
        &self,
        batch: &[Record],
        held: &mut HeldPartitions,
        shutdown: &Shutdown,
    ) -> Result<(), Recovery> {
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
        // The rewind moves held partitions too; they are re-held when their records come back.
        self.resume(held.take_all());
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

    /// A group that starts from the end is anchored there: each input partition it has no
    /// committed offset for gets the partition's current end committed before the instance
    /// joins. Retry partitions are left alone: with nothing committed they are read from the
    /// start (they hold only the group's own retries), so none is skipped after a restart.
    async fn anchor_at_end(&self) -> Result<(), KafkaError> {
        let consumer = self.consumer.clone();
        let topics = self.topics.clone();
        let timeout = self.call_timeout();
        blocking(move || {
            let mut inputs = TopicPartitionList::new();
            for topic in &topics {
                let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
                for t in metadata.topics().iter().filter(|t| t.name() == topic) {
                    for p in t.partitions() {
                        inputs.add_partition(topic, p.id());
                    }
                }
            }
            if inputs.count() == 0 {
                return Ok(());
            }
            let committed = consumer.committed_offsets(inputs, timeout)?;
            kafka::partition_errors(&committed, "reading the committed offset of")?;
            let mut anchor = TopicPartitionList::new();
            for elem in committed.elements() {
                if matches!(elem.offset(), Offset::Offset(_)) {
                    continue;
                }
                let (_, end) =
                    consumer.fetch_watermarks(elem.topic(), elem.partition(), timeout)?;
                anchor.add_partition_offset(elem.topic(), elem.partition(), Offset::Offset(end))?;
            }
            if anchor.count() > 0 {
                tracing::info!(
                    partitions = anchor.count(),
                    "new group starting from the end: committing the input partitions' ends"
                );
                // Refused only when members are already active; they anchored the group.
                if let Err(e) = consumer.commit(&anchor, rdkafka::consumer::CommitMode::Sync) {
                    tracing::warn!(error = %e, "anchoring the group at the end failed");
                }
            }
            Ok(())
        })
        .await
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
            // A partition whose committed offset could not be read must not fall back to the
            // batch's start or the log's beginning as if nothing were committed.
            kafka::partition_errors(&committed, "reading the committed offset of")?;
            let mut seek = TopicPartitionList::new();
            for elem in committed.elements() {
                let key = (elem.topic().to_string(), elem.partition());
                let offset = match (elem.offset(), first_offsets.get(&key)) {
                    (Offset::Offset(o), _) => Offset::Offset(o),
                    // Nothing committed yet: back to where this batch started, else the start.
                    (_, Some(o)) => Offset::Offset(*o),
                    (_, None) => Offset::Beginning,
                };
                seek.add_partition_offset(&key.0, key.1, offset)?;
            }
            if seek.count() > 0 {
                kafka::seek_exactly(&*consumer, seek, timeout)?;
            }
            Ok(())
        })
        .await
    }
}

/// Stamps `output` with a PRODUCER span's trace context, so its consumer continues the trace.
fn stamp_send(output: &mut Output) {
    let key = output
        .key
        .as_deref()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .unwrap_or_default();
    output.headers.inject_send_context(&output.topic, &key);
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

/// An event the group already applied: where from, and what it produced.
struct AppliedEvent {
    position: (String, i32, i64),
    outputs: Vec<Output>,
}

async fn applied_event(
    conn: &mut sqlx::PgConnection,
    group: &str,
    event_id: Uuid,
) -> Result<Option<AppliedEvent>, sqlx::Error> {
    let row: Option<(String, i32, i64, serde_json::Value)> = sqlx::query_as(
        "SELECT topic, partition, \"offset\", outputs FROM processed_events
         WHERE consumer_group = $1 AND event_id = $2",
    )
    .bind(group)
    .bind(event_id)
    .fetch_optional(conn)
    .await?;
    row.map(|(topic, partition, offset, outputs)| {
        Ok(AppliedEvent {
            position: (topic, partition, offset),
            outputs: serde_json::from_value(outputs)
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        })
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::RecordHeaders;

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
    fn the_consumer_resets_to_earliest_whatever_start_from_says_and_properties_cannot_change_it() {
        // `start_from = latest` is done by committing the input partitions' ends before joining:
        // the consumer's reset stays `earliest`, so a retry partition is never skipped.
        for start_from in [StartFrom::Earliest, StartFrom::Latest] {
            let settings = LoopSettings {
                group_id: "g".into(),
                start_from,
                ..LoopSettings::default()
            };
            let props = consumer_properties(&settings);
            let resets: Vec<&str> = props
                .iter()
                .filter(|(k, _)| *k == "auto.offset.reset")
                .map(|(_, v)| v.as_str())
                .collect();
            assert_eq!(resets, vec!["earliest"]);
            let refs: Vec<(&str, &str)> = props.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let mut kafka_settings = KafkaSettings::default();
            kafka_settings
                .properties
                .insert("auto.offset.reset".into(), "latest".into());
            let refused = kafka::client_config(&kafka_settings, &refs).unwrap_err();
            assert!(
                refused.to_string().contains("auto.offset.reset"),
                "{refused}"
            );
        }
    }

    #[test]
    fn start_from_is_read_and_a_typo_is_an_error_naming_it() {
        #[derive(Deserialize)]
        struct Wrapper {
            consumer: LoopSettings,
        }
        let read = |toml: &str| crate::config::load::<Wrapper>(toml).map(|w| w.consumer);
        assert_eq!(
            read("[consumer]\n").unwrap().start_from,
            StartFrom::Earliest
        );
        let latest = read("[consumer]\nstart_from = \"latest\"\n").unwrap();
        assert_eq!(latest.start_from, StartFrom::Latest);
        let typo = read("[consumer]\nstart_from = \"lastest\"\n").unwrap_err();
        let message = format!("{typo:#}");
        assert!(
            message.contains("start_from") && message.contains("lastest"),
            "{message}"
        );
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
