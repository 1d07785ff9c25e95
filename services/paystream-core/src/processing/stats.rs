//! What the loop counts about itself ([`LoopStats`], read by logs and tests) and the faults it
//! can be told to inject ([`Faults`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Counters of what the loop did, for logs, metrics and tests.
#[derive(Debug, Default)]
pub struct LoopStats {
    pub batches_committed: AtomicU64,
    pub batches_aborted: AtomicU64,
    /// Batches closed by their deadline with records left to read again.
    pub batches_cut_short: AtomicU64,
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
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        [
            ("batches_committed", &self.batches_committed),
            ("batches_aborted", &self.batches_aborted),
            ("batches_cut_short", &self.batches_cut_short),
            ("records_applied", &self.records_applied),
            ("records_replayed", &self.records_replayed),
            ("records_deduplicated", &self.records_deduplicated),
            ("records_retried", &self.records_retried),
            ("partitions_held", &self.partitions_held),
            ("records_dead_lettered", &self.records_dead_lettered),
        ]
        .into_iter()
        .map(|(name, counter)| (name, counter.load(Ordering::Relaxed)))
        .collect()
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
    /// Aborts the Kafka transaction of the batch that takes the count past `n` more records:
    /// after its database commit and its produce, before its commit, as a broker-side abort
    /// would. One-shot.
    pub fn abort_after_records(&self, n: u32) {
        self.abort_after_records
            .store(i64::from(n), Ordering::SeqCst);
    }

    /// Whether the armed abort fires for a batch of `records`; counts them otherwise.
    pub(crate) fn fire_within(&self, records: usize) -> bool {
        let records = i64::try_from(records).unwrap_or(i64::MAX);
        let mut current = self.abort_after_records.load(Ordering::SeqCst);
        loop {
            if current < 0 || records == 0 {
                return false;
            }
            let fires = current < records;
            let next = if fires { -1 } else { current - records };
            match self.abort_after_records.compare_exchange(
                current,
                next,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return fires,
                Err(actual) => current = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_armed_abort_fires_once_for_the_batch_that_crosses_its_count() {
        let faults = Faults::default();
        assert!(!faults.fire_within(10), "not armed");
        faults.abort_after_records(25);
        assert!(!faults.fire_within(10));
        assert!(!faults.fire_within(15));
        assert!(faults.fire_within(1), "the 26th record's batch");
        assert!(!faults.fire_within(100), "one-shot");
        faults.abort_after_records(0);
        assert!(!faults.fire_within(0));
        assert!(faults.fire_within(1));
    }
}
