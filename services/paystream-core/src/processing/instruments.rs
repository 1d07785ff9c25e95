//! What the processing loop reports about itself: Prometheus metrics through the `metrics`
//! facade (rendered by each service's `/metrics`), next to the [`LoopStats`] counters tests read.
//!
//! Labels stay bounded: group, topic, partition, outcome, never a payment or event id.
//!
//! [`LoopStats`]: super::LoopStats

use std::time::Duration;

use rdkafka::consumer::{ConsumerContext, Rebalance};
use rdkafka::{ClientContext, Statistics};

/// Counter: records handled, by `group`, `topic` and `outcome` (see [`Outcome`]).
pub const RECORDS_TOTAL: &str = "paystream_consumer_records_total";
/// Histogram: time to apply one record (decode, handler, ledger), by `group` and `outcome`.
pub const RECORD_DURATION_SECONDS: &str = "paystream_consumer_record_duration_seconds";
/// Histogram: from the record's creation (its Kafka timestamp) to the end of its processing.
pub const END_TO_END_SECONDS: &str = "paystream_consumer_end_to_end_seconds";
/// Histogram: records per transaction.
pub const BATCH_SIZE: &str = "paystream_consumer_batch_size";
/// Counter: transactions by `result` (`committed`, `aborted`).
pub const TRANSACTIONS_TOTAL: &str = "paystream_consumer_transactions_total";
/// Counter: rebalance events by `kind` (`assign`, `revoke`, `error`).
pub const REBALANCES_TOTAL: &str = "paystream_consumer_rebalances_total";
/// Gauge: records behind the partition's end, by `topic` and `partition` (librdkafka statistics).
pub const LAG: &str = "paystream_consumer_lag_records";
/// Gauge: retry partitions currently held until their head record is due.
pub const HELD_PARTITIONS: &str = "paystream_consumer_held_partitions";

/// How a record left the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The handler ran and its effects committed.
    Applied,
    /// A redelivery of the record that applied its event: stored outputs re-produced.
    Replayed,
    /// Another copy of an applied event: skipped.
    Deduplicated,
    /// Forwarded to a retry topic.
    Retried,
    /// Forwarded to the dead-letter topic.
    DeadLettered,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Replayed => "replayed",
            Outcome::Deduplicated => "deduplicated",
            Outcome::Retried => "retried",
            Outcome::DeadLettered => "dead_lettered",
        }
    }
}

/// Registers descriptions once per process (repeat calls are harmless).
pub fn describe() {
    metrics::describe_counter!(
        RECORDS_TOTAL,
        "Records handled by the processing loop, by outcome"
    );
    metrics::describe_histogram!(
        RECORD_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Time to apply one record: decode, handler and idempotency ledger"
    );
    metrics::describe_histogram!(
        END_TO_END_SECONDS,
        metrics::Unit::Seconds,
        "From the record's Kafka timestamp to the end of its processing"
    );
    metrics::describe_histogram!(BATCH_SIZE, "Records per Kafka transaction");
    metrics::describe_counter!(TRANSACTIONS_TOTAL, "Kafka transactions, by result");
    metrics::describe_counter!(REBALANCES_TOTAL, "Consumer group rebalance events, by kind");
    metrics::describe_gauge!(LAG, "Records behind the partition's end offset");
    metrics::describe_gauge!(
        HELD_PARTITIONS,
        "Retry partitions paused until their head record is due"
    );
}

pub(super) fn record(
    group: &str,
    topic: &str,
    outcome: Outcome,
    took: Duration,
    created_ms: Option<i64>,
) {
    let labels = [
        ("group", group.to_string()),
        ("topic", topic.to_string()),
        ("outcome", outcome.as_str().to_string()),
    ];
    metrics::counter!(RECORDS_TOTAL, &labels).increment(1);
    metrics::histogram!(
        RECORD_DURATION_SECONDS,
        "group" => group.to_string(),
        "outcome" => outcome.as_str()
    )
    .record(took.as_secs_f64());
    if let (Outcome::Applied, Some(created)) = (outcome, created_ms) {
        let age_ms = chrono::Utc::now().timestamp_millis() - created;
        if age_ms >= 0 {
            metrics::histogram!(END_TO_END_SECONDS, "group" => group.to_string())
                .record(age_ms as f64 / 1_000.0);
        }
    }
}

pub(super) fn transaction(group: &str, committed: bool, records: usize) {
    let result = if committed { "committed" } else { "aborted" };
    metrics::counter!(TRANSACTIONS_TOTAL, "group" => group.to_string(), "result" => result)
        .increment(1);
    if committed {
        metrics::histogram!(BATCH_SIZE, "group" => group.to_string()).record(records as f64);
    }
}

pub(super) fn rebalance(group: &str, kind: &'static str) {
    metrics::counter!(REBALANCES_TOTAL, "group" => group.to_string(), "kind" => kind).increment(1);
}

pub(super) fn held_partitions(group: &str, held: usize) {
    metrics::gauge!(HELD_PARTITIONS, "group" => group.to_string()).set(held as f64);
}

/// Publishes per-partition consumer lag from librdkafka's periodic statistics.
///
/// librdkafka's own `consumer_lag` counts from offsets it committed itself, and this loop
/// commits through the producer's transactions, so the lag is computed here: the partition's
/// last stable offset (read_committed) minus the application's position, or minus the
/// committed offset before the first record of an assignment.
pub(super) fn lag(group: &str, statistics: &Statistics) {
    for (topic, t) in &statistics.topics {
        for (partition, p) in &t.partitions {
            // -1 is librdkafka's internal unassigned partition; `desired` marks ours.
            if *partition < 0 || !p.desired {
                continue;
            }
            let Some(lag) =
                partition_lag(p.ls_offset, p.hi_offset, p.app_offset, p.committed_offset)
            else {
                continue;
            };
            metrics::gauge!(
                LAG,
                "group" => group.to_string(),
                "topic" => topic.clone(),
                "partition" => partition.to_string()
            )
            .set(lag as f64);
        }
    }
}

/// Records between the consumable end and the consumer's position; `None` while unknown
/// (librdkafka reports missing offsets as negative numbers).
fn partition_lag(ls_offset: i64, hi_offset: i64, app_offset: i64, committed: i64) -> Option<i64> {
    let end = if ls_offset >= 0 { ls_offset } else { hi_offset };
    let position = if app_offset >= 0 {
        app_offset
    } else {
        committed
    };
    (end >= 0 && position >= 0).then(|| (end - position).max(0))
}

/// Logs rebalances. The loop never has a transaction open while librdkafka serves a
/// rebalance: callbacks run inside `recv`, and `recv` is only called between transactions.
/// The default handling (incremental for cooperative-sticky) is kept.
pub struct LoopContext {
    pub group_id: String,
}

impl ClientContext for LoopContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        lag(&self.group_id, &statistics);
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
        self::rebalance(&self.group_id, kind);
        tracing::info!(group = %self.group_id, rebalance = ?rebalance, "rebalance done");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_the_stable_end_minus_the_position() {
        assert_eq!(partition_lag(100, 120, 90, 80), Some(10));
        assert_eq!(
            partition_lag(-1, 120, 90, 80),
            Some(30),
            "no LSO: high watermark"
        );
        assert_eq!(
            partition_lag(100, 120, -1001, 80),
            Some(20),
            "nothing consumed yet"
        );
        assert_eq!(partition_lag(100, 120, -1001, -1001), None);
        assert_eq!(
            partition_lag(100, 120, 101, 80),
            Some(0),
            "a control record past the LSO"
        );
    }
}
