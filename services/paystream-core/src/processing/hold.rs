//! Holding retry partitions until their head record is due.
//!
//! A retry record must not be processed before its due time, but sleeping would stall every
//! other partition of the consumer. Instead the loop takes the first not-yet-due record of a
//! retry partition out of the batch (with everything after it on that partition), pauses the
//! partition, seeks it back to that record and resumes it when the record is due. Records of
//! one retry partition are appended in failure order with the same delay, so their due times
//! rise along the partition and holding its head holds no record that is already due for long.

use std::collections::BTreeMap;

use crate::record::Record;
use crate::retry;

/// A partition held back at `offset` until `due_at_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub due_at_ms: i64,
}

/// Splits `batch` into the records to process now and the partitions to hold: a retry
/// partition is held from its first record that is not due at `now_ms`.
pub fn split_not_due(
    batch: Vec<Record>,
    is_retry_topic: impl Fn(&str) -> bool,
    now_ms: i64,
) -> (Vec<Record>, Vec<HeldRecord>) {
    let mut held: Vec<HeldRecord> = Vec::new();
    let mut ready = Vec::with_capacity(batch.len());
    for record in batch {
        let already_held = held
            .iter()
            .any(|h| h.topic == record.topic && h.partition == record.partition);
        if already_held {
            continue;
        }
        if is_retry_topic(&record.topic) {
            if let Some(due) = retry::due_at_ms(&record.headers).filter(|due| *due > now_ms) {
                held.push(HeldRecord {
                    topic: record.topic.clone(),
                    partition: record.partition,
                    offset: record.offset,
                    due_at_ms: due,
                });
                continue;
            }
        }
        ready.push(record);
    }
    (ready, held)
}

/// The partitions currently paused, with the time each may resume.
#[derive(Debug, Default)]
pub struct HeldPartitions {
    due: BTreeMap<(String, i32), i64>,
}

impl HeldPartitions {
    pub fn hold(&mut self, record: &HeldRecord) {
        self.due
            .insert((record.topic.clone(), record.partition), record.due_at_ms);
    }

    /// The earliest due time of a held partition.
    pub fn next_due_ms(&self) -> Option<i64> {
        self.due.values().copied().min()
    }

    /// Removes and returns the partitions due at `now_ms`.
    pub fn take_due(&mut self, now_ms: i64) -> Vec<(String, i32)> {
        let due: Vec<_> = self
            .due
            .iter()
            .filter(|(_, d)| **d <= now_ms)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &due {
            self.due.remove(k);
        }
        due
    }

    /// Removes and returns every held partition.
    pub fn take_all(&mut self) -> Vec<(String, i32)> {
        std::mem::take(&mut self.due).into_keys().collect()
    }

    pub fn len(&self) -> usize {
        self.due.len()
    }

    pub fn is_empty(&self) -> bool {
        self.due.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers;

    fn record(topic: &str, partition: i32, offset: i64, due: Option<i64>) -> Record {
        let mut r = Record::at(topic, partition, offset);
        if let Some(d) = due {
            r.headers.set(headers::DUE_AT_MS, d.to_string());
        }
        r
    }

    fn is_retry(t: &str) -> bool {
        t.starts_with("g.retry.")
    }

    #[test]
    fn holds_a_retry_partition_from_its_first_record_not_due() {
        let batch = vec![
            record("g.retry.1", 0, 10, Some(900)),
            record("g.retry.1", 0, 11, Some(1_500)),
            record("in", 0, 5, None),
            record("g.retry.1", 0, 12, Some(1_000)),
            record("g.retry.1", 1, 3, Some(1_000)),
            record("in", 0, 6, Some(99_999)),
        ];
        let (ready, held) = split_not_due(batch, is_retry, 1_000);
        let ready: Vec<_> = ready
            .iter()
            .map(|r| (r.topic.as_str(), r.partition, r.offset))
            .collect();
        // Offset 12 is due, but it sits behind the held offset 11 and must wait with it. A due
        // header on an input topic means nothing.
        assert_eq!(
            ready,
            vec![
                ("g.retry.1", 0, 10),
                ("in", 0, 5),
                ("g.retry.1", 1, 3),
                ("in", 0, 6)
            ]
        );
        assert_eq!(
            held,
            vec![HeldRecord {
                topic: "g.retry.1".into(),
                partition: 0,
                offset: 11,
                due_at_ms: 1_500
            }]
        );
    }

    #[test]
    fn resumes_partitions_when_due() {
        let mut h = HeldPartitions::default();
        for (p, due) in [(0, 2_000), (1, 1_000)] {
            h.hold(&HeldRecord {
                topic: "t".into(),
                partition: p,
                offset: 0,
                due_at_ms: due,
            });
        }
        assert_eq!(h.next_due_ms(), Some(1_000));
        assert!(h.take_due(999).is_empty());
        assert_eq!(h.take_due(1_000), vec![("t".to_string(), 1)]);
        assert_eq!(h.next_due_ms(), Some(2_000));
        assert_eq!(h.take_all(), vec![("t".to_string(), 0)]);
        assert!(h.is_empty());
    }
}
