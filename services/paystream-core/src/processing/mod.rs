//! The transactional consume-transform-produce loop every consumer group runs.
//!
//! Per batch:
//! 1. decode the records and look their event ids up in the processed-events ledger (one query);
//! 2. run the handler on each new event, outside any database transaction: records of
//!    different keys concurrently (up to `max_in_flight`), one key's records in offset order,
//!    and no record started after the batch deadline ([`apply`]);
//! 3. one database transaction records the applied event ids with their outputs and writes the
//!    handler's effects ([`ledger`], [`Handler::commit`]);
//! 4. one Kafka transaction produces the outputs and the current state of the state keys the
//!    batch changed ([`state`]), sends the offsets with the group metadata (KIP-447) and commits
//!    ([`transaction`]).
//!
//! Failure handling:
//! - a handler's transient failure: the record is forwarded to the group's next retry topic
//!   ([`crate::retry`]) inside the transaction that commits its offset, so the input partition
//!   keeps flowing; after the last retry it goes to the dead-letter topic;
//! - a poison record (undecodable) or a permanent handler failure: the original record goes to
//!   the dead-letter topic inside the transaction that commits its offset;
//! - an infrastructure failure (Postgres, the registry, an abortable Kafka error): abort, rewind
//!   every assigned partition to its committed offset, back off, go on ([`recovery`]);
//! - the batch deadline: what is done commits, per partition up to its first record not done,
//!   and the consumer is rewound to the new committed offsets;
//! - a fatal Kafka error (fenced by a newer instance): stop and return the error, so the
//!   supervisor restarts the process.
//!
//! The same consumer reads the group's retry topics. A retry partition whose head record is not
//! due yet is paused and resumed when it is due ([`hold`]); the other partitions keep flowing.
//!
//! Effects outside Kafka are exactly-once because every applied event id is recorded in
//! `processed_events` in the same database transaction as the handler's effects, together with
//! the outputs it produced. A redelivered record (after an abort or a crash) skips the handler
//! and re-produces the stored outputs, which carry the same deterministic event ids, so
//! downstream consumers dedupe them in turn; a second copy of the event in another record (the
//! outbox relay publishing twice, a DLQ replay) produces nothing.
//!
//! Rebalances need no transaction handling of their own: librdkafka serves them inside `recv`,
//! and the loop only calls `recv` between batches, so no transaction is open when partitions
//! are revoked or lost. Records of partitions no longer assigned when a batch closes are
//! dropped from it; their new owner reads them from the committed offsets.

mod apply;
pub mod handler;
pub mod hold;
pub mod instruments;
mod ledger;
mod recovery;
pub mod settings;
mod state;
mod stats;
mod transaction;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;
use uuid::Uuid;

use crate::avro::AvroCodec;
use crate::config::KafkaSettings;
use crate::kafka::{self, ErrorClass, TopicSpec};
use crate::retry::RetryPolicy;
use crate::shutdown::Shutdown;
use apply::Applier;
use hold::{HeldPartitions, HeldRecord};
use instruments::LoopContext;
use state::StateLock;
use transaction::{blocking, Transactions};

pub use handler::{event_output, CallBudget, Handled, Handler, HandlerContext, HandlerError};
// Handlers name them through this module: what they receive and what they return.
pub use crate::record::{Output, Record};
pub use settings::{LoopSettings, StartFrom};
pub use stats::{Faults, LoopStats};

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

/// How a batch ended.
enum BatchEnd {
    /// Every record committed.
    Whole,
    /// The deadline left records to read again.
    CutShort,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
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
    /// Refuses settings under which a batch could outlive its transaction
    /// ([`LoopSettings::check_fits`], with the handler's call budget).
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
        settings.check_fits(handler.call_budget().as_ref())?;
        let consumer_props = settings.consumer_properties();
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

    fn transactions(&self) -> Transactions {
        Transactions {
            producer: self.producer.clone(),
            timeout: self.call_timeout(),
        }
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
        let transactions = self.transactions();
        transactions
            .init()
            .await
            .map_err(|e| match kafka::classify(&e) {
                ErrorClass::Fatal => self.fatal(e),
                _ => LoopError::Setup(anyhow::Error::new(e).context("init_transactions")),
            })?;
        self.ensure_chain_topics().await.map_err(|e| {
            LoopError::Setup(e.context("creating the retry and dead-letter topics"))
        })?;
        if self.settings.start_from == StartFrom::Latest {
            recovery::anchor_at_end(&self.consumer, &self.topics, self.call_timeout())
                .await
                .map_err(|e| {
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
            max_in_flight = self.settings.max_in_flight,
            batch_deadline_ms = self.settings.batch_deadline_ms,
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
                match self.recover(&batch, &mut held, &shutdown, true).await {
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
                Ok(end) => {
                    LoopStats::bump(&self.stats.batches_committed);
                    instruments::transaction(&self.settings.group_id, true, batch.len());
                    backoff = base_backoff;
                    if let BatchEnd::CutShort = end {
                        // The consumer is past records that did not commit: back to the
                        // committed offsets, which now stop at the first of them.
                        LoopStats::bump(&self.stats.batches_cut_short);
                        match self.recover(&batch, &mut held, &shutdown, false).await {
                            Ok(()) => {}
                            Err(Recovery::Fatal(e)) => break Err(self.fatal(e)),
                            Err(Recovery::ShutDown) => break Ok(()),
                        }
                    }
                }
                Err(BatchError::Kafka(e)) if kafka::classify(&e) == ErrorClass::Fatal => {
                    tracing::warn!(%txn, "the batch hit a fatal Kafka error");
                    break Err(self.fatal(e));
                }
                Err(BatchError::DrainTimeout) => {
                    tracing::warn!(%txn, records = batch.len(), "drain deadline passed; aborting the open batch and stopping");
                    LoopStats::bump(&self.stats.batches_aborted);
                    if let Err(e) = transactions.abort().await {
                        tracing::warn!(error = %e, "abort_transaction failed");
                    }
                    break Ok(());
                }
                Err(e) => {
                    tracing::warn!(error = %e, %txn, records = batch.len(), "batch failed; aborting and rewinding");
                    LoopStats::bump(&self.stats.batches_aborted);
                    match self.recover(&batch, &mut held, &shutdown, true).await {
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

    /// The first record, then up to `batch_max_records` in all: whatever the consumer already
    /// holds, and with `batch_max_wait_ms` > 0 what arrives within that long. Returns an empty
    /// batch when shutdown fires while idle, or when a held partition is due (`wake_at_ms`) so
    /// the caller can resume it.
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
            // What librdkafka already fetched is taken without waiting (`recv` is cancel-safe:
            // a message is only taken by the poll that returns it).
            let next = match self.consumer.recv().now_or_never() {
                Some(m) => m,
                None if tokio::time::Instant::now() >= deadline => break,
                None => tokio::select! {
                    biased;
                    _ = tokio::time::sleep_until(deadline) => break,
                    m = self.consumer.recv() => m,
                },
            };
            match next {
                Ok(m) => batch.push(Record::from_message(&m)),
                // The records already taken are past the consumer's position: process them now
                // rather than drop them; the error surfaces on the next poll.
                Err(e) => {
                    tracing::warn!(error = %e, "consumer error while filling a batch");
                    break;
                }
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

    /// Applies `batch` (database side committed), then produces and commits its Kafka
    /// transaction, holding the state keys' locks until that transaction has ended.
    async fn process_batch(&self, batch: &[Record], txn: &str) -> Result<BatchEnd, BatchError> {
        let deadline = Instant::now() + Duration::from_millis(self.settings.batch_deadline_ms);
        let applier = Applier {
            handler: &*self.handler,
            codec: &self.codec,
            pool: &self.pool,
            policy: &self.policy,
            group: &self.settings.group_id,
            instance: &self.settings.transactional_id,
            stats: &self.stats,
            max_in_flight: self.settings.max_in_flight,
        };
        let committed = applier
            .apply(batch, deadline)
            .await
            .map_err(BatchError::Transient)?;
        let mut outputs = committed.outputs;
        let lock = if committed.state_keys.is_empty() {
            None
        } else {
            let keys: Vec<String> = committed.state_keys.iter().cloned().collect();
            let mut lock = StateLock::acquire(&self.pool, &committed.state_keys)
                .await
                .map_err(|e| BatchError::Transient(anyhow::Error::new(e).context("state locks")))?;
            outputs.extend(
                self.handler
                    .state_outputs(&keys, lock.conn(), &self.codec)
                    .await
                    .map_err(|e| BatchError::Transient(anyhow::anyhow!("state outputs: {e}")))?,
            );
            Some(lock)
        };
        let metadata = self
            .consumer
            .group_metadata()
            .ok_or_else(|| BatchError::Transient(anyhow::anyhow!("no consumer group metadata")))?;
        let produced = if committed.records.is_empty() {
            Ok(())
        } else {
            let transactions = self.transactions();
            match transactions
                .produce_batch(outputs, &committed.records, metadata, txn)
                .await
            {
                Ok(()) if self.faults.fire_within(committed.records.len()) => Err(
                    BatchError::Transient(anyhow::anyhow!("injected abortable fault")),
                ),
                Ok(()) => {
                    let hold = self.settings.hold_transaction_open_ms;
                    if hold > 0 {
                        tokio::time::sleep(Duration::from_millis(hold)).await;
                    }
                    transactions.commit().await.map_err(BatchError::from)
                }
                Err(e) => Err(e.into()),
            }
        };
        // Released once the transaction has ended either way; an abort is followed by a
        // rewind, and the redelivered records produce the then current state again.
        if let Some(lock) = lock {
            lock.release().await;
        }
        produced?;
        tracing::info!(%txn, records = committed.records.len(), "transaction committed");
        Ok(if committed.cut_short {
            BatchEnd::CutShort
        } else {
            BatchEnd::Whole
        })
    }

    /// Aborts the open transaction (when `abort`) and rewinds. The rewind is retried until it
    /// succeeds: consuming on past uncommitted records would let a later commit skip them.
    async fn recover(
        &self,
        batch: &[Record],
        held: &mut HeldPartitions,
        shutdown: &Shutdown,
        abort: bool,
    ) -> Result<(), Recovery> {
        if abort {
            if let Err(e) = self.transactions().abort().await {
                // Not fatal: there may be no open transaction (it never began). A transaction
                // still open makes the next begin fail, which brings the loop back here.
                if kafka::classify(&e) == ErrorClass::Fatal {
                    return Err(Recovery::Fatal(e));
                }
                tracing::warn!(error = %e, "abort_transaction failed");
            }
        }
        // The rewind moves held partitions too; they are re-held when their records come back.
        self.resume(held.take_all());
        let mut backoff = Duration::from_millis(self.settings.abort_backoff_ms);
        loop {
            match recovery::rewind(&self.consumer, batch, self.call_timeout()).await {
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
}
