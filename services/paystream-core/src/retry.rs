//! The retry chain and dead-letter routing of a consumer group.
//!
//! A record whose processing failed is forwarded, unchanged (key, value and headers), to the
//! next stage of its group's chain with failure headers added:
//!
//! ```text
//! <input topic> ──transient──▶ <group>.retry.1 ──▶ … ──▶ <group>.retry.N ──▶ <group>.dlq
//!        └──────permanent / poison──────────────────────────────────────────▶ <group>.dlq
//! ```
//!
//! Forwarding happens inside the transaction that commits the failed record's offset, so the
//! input partition moves on at once and nothing is lost or doubled. Each retry record carries
//! its due time; the retry consumer holds the partition (pause/resume) until then. This module
//! is pure: it decides where a record goes and with which headers; the processing loop
//! produces it.
//!
//! A forwarded record must also be producible, whatever its input was: failure headers on a
//! record read from an input topic are not trusted (anyone may have written them), and a
//! forward that would exceed the producer's record size limit leaves out what it must, saying
//! so in [`headers::DROPPED`].

use std::time::Duration;

use uuid::Uuid;

use crate::headers::{self, RecordHeaders};
use crate::record::{Output, Record};

/// How a record's processing failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// Might work later (a dependency timed out or answered 5xx): goes through the retry chain.
    Transient,
    /// Will fail the same way every time (invalid data, a business rule): straight to the DLQ.
    Permanent,
    /// The bytes are not an event we can read (not Avro, wrong magic byte, unknown schema id):
    /// straight to the DLQ, and the handler never sees it.
    Poison,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Transient => "transient",
            FailureClass::Permanent => "permanent",
            FailureClass::Poison => "poison",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "transient" => Some(FailureClass::Transient),
            "permanent" => Some(FailureClass::Permanent),
            "poison" => Some(FailureClass::Poison),
            _ => None,
        }
    }
}

/// A failed processing attempt.
#[derive(Debug, Clone)]
pub struct Failure {
    pub class: FailureClass,
    pub message: String,
}

/// Where a failed record was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// `<group>.retry.<attempt>`, not to be processed before `due_at_ms`.
    Retry { attempt: u32, due_at_ms: i64 },
    /// `<group>.dlq`, after `attempt` failed attempts.
    DeadLetter { attempt: u32 },
}

/// A failed record, readdressed.
#[derive(Debug, Clone)]
pub struct Forward {
    pub destination: Destination,
    pub output: Output,
}

/// librdkafka's default `message.max.bytes`, which the loop's producer keeps: the largest
/// record it will send. An input record can be larger (the broker's own default limit is
/// 1,048,588 bytes per batch, and a compressed batch holds more), and forwarding adds headers.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1_000_000;

/// Room kept under the limit for the record's framing and the headers the loop adds after
/// routing (trace context, the producing transaction, [`headers::DROPPED`]).
const RECORD_OVERHEAD_BYTES: usize = 1_024;

/// The headers [`RetryPolicy::route`] writes: bounded, and what makes a forward replayable (the
/// event id is its identity: dropping it would make a replay a new event), so they are never
/// left out to make room.
const ROUTING_HEADERS: [&str; 10] = [
    headers::EVENT_ID,
    headers::ORIGINAL_TOPIC,
    headers::ORIGINAL_PARTITION,
    headers::ORIGINAL_OFFSET,
    headers::ORIGINAL_TIMESTAMP_MS,
    headers::CONSUMER_GROUP,
    headers::ERROR_CLASS,
    headers::ERROR_MESSAGE,
    headers::ATTEMPT,
    headers::DUE_AT_MS,
];

/// One consumer group's chain: its retry topics with their delays, and its dead-letter topic.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    group: String,
    delays: Vec<Duration>,
    dlq_topic: String,
    max_record_bytes: usize,
}

impl RetryPolicy {
    pub fn new(
        group: impl Into<String>,
        delays: Vec<Duration>,
        dlq_topic: impl Into<String>,
    ) -> Self {
        Self {
            group: group.into(),
            delays,
            dlq_topic: dlq_topic.into(),
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
        }
    }

    /// Forwards larger than `max` bytes leave out the original's headers, then its value,
    /// then its key ([`DEFAULT_MAX_RECORD_BYTES`] unless set).
    pub fn with_max_record_bytes(mut self, max: usize) -> Self {
        self.max_record_bytes = max;
        self
    }

    /// `<group>.retry.<stage>`, stages counted from 1.
    pub fn retry_topic(&self, stage: usize) -> String {
        format!("{}.retry.{stage}", self.group)
    }

    pub fn retry_topics(&self) -> Vec<String> {
        (1..=self.delays.len())
            .map(|s| self.retry_topic(s))
            .collect()
    }

    pub fn dlq_topic(&self) -> &str {
        &self.dlq_topic
    }

    pub fn is_retry_topic(&self, topic: &str) -> bool {
        topic
            .strip_prefix(&self.group)
            .and_then(|rest| rest.strip_prefix(".retry."))
            .and_then(|stage| stage.parse::<usize>().ok())
            .is_some_and(|stage| (1..=self.delays.len()).contains(&stage))
    }

    /// Where `record`, which just failed with `failure` at `now_ms`, goes next.
    pub fn route(&self, record: &Record, failure: &Failure, now_ms: i64) -> Forward {
        // Failure headers are this chain's own only on its retry topics. On an input topic
        // they are whatever the producer wrote (an operator's replay, a foreign or hostile
        // producer), so a failure there is the first: a forged attempt count must not skip the
        // retries (nor overflow), and a forged origin must not send a replay elsewhere.
        let first = !self.is_retry_topic(&record.topic);
        let attempt = if first {
            1
        } else {
            attempt_of(&record.headers).saturating_add(1)
        };
        let stage = attempt as usize;
        let mut headers = record.headers.clone();
        // The origin is the input the record was read from; later stages keep it.
        if first {
            headers.set(headers::ORIGINAL_TOPIC, record.topic.clone());
            headers.set(headers::ORIGINAL_PARTITION, record.partition.to_string());
            headers.set(headers::ORIGINAL_OFFSET, record.offset.to_string());
            match record.timestamp_ms {
                Some(ts) => headers.set(headers::ORIGINAL_TIMESTAMP_MS, ts.to_string()),
                None => {
                    headers.remove(headers::ORIGINAL_TIMESTAMP_MS);
                }
            }
        }
        // A record that came without an event id is known by the id of its first position;
        // stamping it here keeps that identity on every later stage and in the dead letter,
        // where the record's own position (and so a derived id) is different.
        headers.set(headers::EVENT_ID, record.event_id().to_string());
        headers.set(headers::CONSUMER_GROUP, self.group.clone());
        headers.set(headers::ERROR_CLASS, failure.class.as_str());
        headers.set(
            headers::ERROR_MESSAGE,
            headers::bounded_error_message(&failure.message),
        );
        headers.set(headers::ATTEMPT, attempt.to_string());
        headers.remove(headers::PRODUCER_TXN);

        let retry = failure.class == FailureClass::Transient && stage <= self.delays.len();
        let (topic, destination) = if retry {
            let delay = i64::try_from(self.delays[stage - 1].as_millis()).unwrap_or(i64::MAX);
            let due_at_ms = now_ms.saturating_add(delay);
            headers.set(headers::DUE_AT_MS, due_at_ms.to_string());
            (
                self.retry_topic(stage),
                Destination::Retry { attempt, due_at_ms },
            )
        } else {
            headers.remove(headers::DUE_AT_MS);
            (self.dlq_topic.clone(), Destination::DeadLetter { attempt })
        };
        let mut output = Output {
            topic,
            key: record.key.clone(),
            value: record.payload.clone(),
            headers,
        };
        fit(&mut output, self.max_record_bytes);
        Forward {
            destination,
            output,
        }
    }
}

/// What librdkafka counts against `message.max.bytes` for a header, near enough: key and
/// value with their varint length prefixes.
fn header_bytes(key: &str, value: &str) -> usize {
    key.len() + value.len() + 10
}

/// Makes `output` fit under `max` bytes by leaving out, in this order, the original's own
/// headers (largest first), its value, its key, and says what went in [`headers::DROPPED`].
/// Without this, a forward the producer refuses aborts its batch every time, and the input
/// partition never gets past the record.
fn fit(output: &mut Output, max: usize) {
    let budget = max.saturating_sub(RECORD_OVERHEAD_BYTES);
    let sizes: Vec<usize> = output
        .headers
        .0
        .iter()
        .map(|(k, v)| header_bytes(k, v))
        .collect();
    let len = |b: &Option<Vec<u8>>| b.as_ref().map_or(0, Vec::len);
    let mut size = len(&output.key) + len(&output.value) + sizes.iter().sum::<usize>();
    if size <= budget {
        return;
    }
    let mut droppable: Vec<usize> = (0..sizes.len())
        .filter(|i| !ROUTING_HEADERS.contains(&output.headers.0[*i].0.as_str()))
        .collect();
    droppable.sort_by_key(|i| std::cmp::Reverse(sizes[*i]));
    let mut dropped = vec![false; sizes.len()];
    let (mut count, mut bytes) = (0, 0);
    for i in droppable {
        if size <= budget {
            break;
        }
        dropped[i] = true;
        size -= sizes[i];
        count += 1;
        bytes += sizes[i];
    }
    let mut index = 0;
    output.headers.0.retain(|_| {
        index += 1;
        !dropped[index - 1]
    });
    let mut what = Vec::new();
    if count > 0 {
        what.push(format!("{count} headers ({bytes} bytes)"));
    }
    for (name, part) in [("value", &mut output.value), ("key", &mut output.key)] {
        if size > budget {
            if let Some(b) = part.take() {
                size -= b.len();
                what.push(format!("{name} ({} bytes)", b.len()));
            }
        }
    }
    output.headers.set(headers::DROPPED, what.join(", "));
}

/// Failed attempts recorded on a record (0 for a record that never failed).
pub fn attempt_of(headers: &RecordHeaders) -> u32 {
    headers
        .get_i64(headers::ATTEMPT)
        .and_then(|a| u32::try_from(a).ok())
        .unwrap_or(0)
}

/// The epoch-ms time before which a retry record must not be processed.
pub fn due_at_ms(headers: &RecordHeaders) -> Option<i64> {
    headers.get_i64(headers::DUE_AT_MS)
}

/// Times an operator replayed the record.
pub fn replay_count(headers: &RecordHeaders) -> u32 {
    headers
        .get_i64(headers::REPLAY_COUNT)
        .and_then(|a| u32::try_from(a).ok())
        .unwrap_or(0)
}

/// The headers of a dead letter sent back to its original topic by an operator: the attempt
/// count, due time and last error are cleared (the record starts a fresh chain), the origin is
/// kept, the event id is `event_id` (the dead letter's, see [`crate::dlq::DeadLetter::event_id`])
/// and the replay count is `replays`, this replay included.
pub fn replay_headers(dead_letter: &RecordHeaders, event_id: Uuid, replays: u32) -> RecordHeaders {
    let mut headers = dead_letter.clone();
    for name in [
        headers::ATTEMPT,
        headers::DUE_AT_MS,
        headers::ERROR_CLASS,
        headers::ERROR_MESSAGE,
        headers::PRODUCER_TXN,
    ] {
        headers.remove(name);
    }
    headers.set(headers::EVENT_ID, event_id.to_string());
    headers.set(headers::REPLAY_COUNT, replays.to_string());
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::new(
            "g",
            vec![Duration::from_secs(1), Duration::from_secs(10)],
            "g.dlq",
        )
    }

    fn record(topic: &str, headers: RecordHeaders) -> Record {
        Record {
            topic: topic.into(),
            partition: 2,
            offset: 40,
            timestamp_ms: Some(1_000),
            key: Some(b"k".to_vec()),
            payload: Some(vec![0, 0, 0, 0, 1, 2]),
            headers,
        }
    }

    fn failure(class: FailureClass) -> Failure {
        Failure {
            class,
            message: "boom".into(),
        }
    }

    #[test]
    fn transient_failures_walk_the_chain_then_dead_letter() {
        let p = policy();
        let first = p.route(
            &record("in", RecordHeaders::default()),
            &failure(FailureClass::Transient),
            5_000,
        );
        assert_eq!(first.output.topic, "g.retry.1");
        assert_eq!(
            first.destination,
            Destination::Retry {
                attempt: 1,
                due_at_ms: 6_000
            }
        );
        let h = &first.output.headers;
        assert_eq!(h.get(headers::ORIGINAL_TOPIC), Some("in"));
        assert_eq!(h.get(headers::ORIGINAL_PARTITION), Some("2"));
        assert_eq!(h.get(headers::ORIGINAL_OFFSET), Some("40"));
        assert_eq!(h.get(headers::ORIGINAL_TIMESTAMP_MS), Some("1000"));
        assert_eq!(h.get(headers::CONSUMER_GROUP), Some("g"));
        assert_eq!(h.get(headers::ERROR_CLASS), Some("transient"));
        assert_eq!(h.get(headers::ERROR_MESSAGE), Some("boom"));
        assert_eq!(first.output.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(first.output.value.as_deref(), Some(&[0, 0, 0, 0, 1, 2][..]));

        let mut second_in = record("g.retry.1", first.output.headers.clone());
        second_in.offset = 7;
        let second = p.route(&second_in, &failure(FailureClass::Transient), 7_000);
        assert_eq!(second.output.topic, "g.retry.2");
        assert_eq!(
            second.destination,
            Destination::Retry {
                attempt: 2,
                due_at_ms: 17_000
            }
        );
        // The origin stays the first input, not the retry topic.
        assert_eq!(
            second.output.headers.get(headers::ORIGINAL_TOPIC),
            Some("in")
        );
        assert_eq!(
            second.output.headers.get(headers::ORIGINAL_OFFSET),
            Some("40")
        );

        let third = p.route(
            &record("g.retry.2", second.output.headers.clone()),
            &failure(FailureClass::Transient),
            20_000,
        );
        assert_eq!(third.output.topic, "g.dlq");
        assert_eq!(third.destination, Destination::DeadLetter { attempt: 3 });
        assert_eq!(third.output.headers.get(headers::DUE_AT_MS), None);
        assert_eq!(third.output.headers.get(headers::ATTEMPT), Some("3"));
    }

    #[test]
    fn permanent_and_poison_skip_the_chain() {
        for class in [FailureClass::Permanent, FailureClass::Poison] {
            let f = policy().route(&record("in", RecordHeaders::default()), &failure(class), 0);
            assert_eq!(f.output.topic, "g.dlq");
            assert_eq!(f.destination, Destination::DeadLetter { attempt: 1 });
            assert_eq!(
                f.output.headers.get(headers::ERROR_CLASS),
                Some(class.as_str())
            );
        }
    }

    #[test]
    fn no_retry_topics_means_straight_to_the_dlq() {
        let p = RetryPolicy::new("g", vec![], "g.dlq");
        let f = p.route(
            &record("in", RecordHeaders::default()),
            &failure(FailureClass::Transient),
            0,
        );
        assert_eq!(f.output.topic, "g.dlq");
    }

    #[test]
    fn recognises_only_its_own_retry_topics() {
        let p = policy();
        assert!(p.is_retry_topic("g.retry.1"));
        assert!(p.is_retry_topic("g.retry.2"));
        assert!(!p.is_retry_topic("g.retry.3"));
        assert!(!p.is_retry_topic("g.retry.x"));
        assert!(!p.is_retry_topic("h.retry.1"));
        assert!(!p.is_retry_topic("g.dlq"));
        assert_eq!(p.retry_topics(), vec!["g.retry.1", "g.retry.2"]);
    }

    #[test]
    fn error_messages_are_bounded() {
        let long = Failure {
            class: FailureClass::Permanent,
            message: "x".repeat(10_000),
        };
        let f = policy().route(&record("in", RecordHeaders::default()), &long, 0);
        assert!(f.output.headers.get(headers::ERROR_MESSAGE).unwrap().len() < 1_100);
    }

    #[test]
    fn replay_starts_a_fresh_chain_and_counts_replays() {
        let p = policy();
        let id = Uuid::new_v4();
        let mut h = RecordHeaders::default();
        h.set(headers::EVENT_ID, id.to_string());
        let dead = p.route(&record("in", h), &failure(FailureClass::Permanent), 0);
        let replayed = replay_headers(&dead.output.headers, id, 1);
        assert_eq!(
            replayed.get(headers::EVENT_ID),
            Some(id.to_string().as_str())
        );
        assert_eq!(replayed.get(headers::ATTEMPT), None);
        assert_eq!(replayed.get(headers::ERROR_CLASS), None);
        assert_eq!(replayed.get(headers::ORIGINAL_TOPIC), Some("in"));
        assert_eq!(replay_count(&replayed), 1);
        assert_eq!(replay_count(&replay_headers(&replayed, id, 2)), 2);
        assert_eq!(attempt_of(&replayed), 0);
    }

    #[test]
    fn a_record_without_an_event_id_keeps_its_first_position_s_id_through_the_chain() {
        let p = policy();
        let first = record("in", RecordHeaders::default());
        let identity = first.event_id();
        let retry = p.route(&first, &failure(FailureClass::Transient), 0);
        // Read back from the retry topic: another position, the same event.
        let on_retry = Record {
            topic: retry.output.topic.clone(),
            offset: 7,
            headers: retry.output.headers.clone(),
            ..first.clone()
        };
        assert_eq!(on_retry.event_id(), identity);
        let dead = p.route(&on_retry, &failure(FailureClass::Permanent), 0);
        assert_eq!(
            dead.output.headers.get(headers::EVENT_ID),
            Some(identity.to_string().as_str())
        );
    }

    #[test]
    fn failure_headers_written_by_the_producer_of_an_input_record_are_not_trusted() {
        let mut forged = RecordHeaders::default();
        forged.set(headers::ATTEMPT, u32::MAX.to_string());
        forged.set(headers::ORIGINAL_TOPIC, "elsewhere");
        forged.set(headers::ORIGINAL_OFFSET, "-7");
        let f = policy().route(
            &record("in", forged.clone()),
            &failure(FailureClass::Transient),
            0,
        );
        assert_eq!(f.output.topic, "g.retry.1");
        let h = &f.output.headers;
        assert_eq!(h.get(headers::ATTEMPT), Some("1"));
        assert_eq!(h.get(headers::ORIGINAL_TOPIC), Some("in"));
        assert_eq!(h.get(headers::ORIGINAL_OFFSET), Some("40"));
        // On the group's own retry topic the count goes on, and cannot overflow.
        let f = policy().route(
            &record("g.retry.1", forged),
            &failure(FailureClass::Transient),
            0,
        );
        assert_eq!(f.destination, Destination::DeadLetter { attempt: u32::MAX });
    }

    #[test]
    fn a_forward_over_the_size_limit_leaves_out_headers_then_the_value_and_says_so() {
        let p = policy().with_max_record_bytes(10_000);
        let mut big = RecordHeaders::default();
        big.set("small", "s");
        big.set("large", "x".repeat(6_000));
        big.set("larger", "y".repeat(7_000));
        let f = p.route(&record("in", big), &failure(FailureClass::Poison), 0);
        let h = &f.output.headers;
        assert_eq!(h.get("small"), Some("s"));
        assert_eq!(h.get("larger"), None);
        assert!(h.get("large").is_some());
        assert_eq!(h.get(headers::DROPPED), Some("1 headers (7016 bytes)"));
        assert_eq!(f.output.value.as_deref(), Some(&[0, 0, 0, 0, 1, 2][..]));
        assert_eq!(h.get(headers::ERROR_CLASS), Some("poison"));

        let mut huge_value = record("in", RecordHeaders::default());
        huge_value.payload = Some(vec![7; 20_000]);
        let f = p.route(&huge_value, &failure(FailureClass::Poison), 0);
        assert_eq!(f.output.value, None);
        assert_eq!(f.output.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(
            f.output.headers.get(headers::DROPPED),
            Some("value (20000 bytes)")
        );
        assert_eq!(f.output.headers.get(headers::ORIGINAL_OFFSET), Some("40"));
        // The identity stays: a replay of the copy must still be the same event.
        assert_eq!(
            f.output.headers.get(headers::EVENT_ID),
            Some(huge_value.event_id().to_string().as_str())
        );

        // Under the limit nothing changes.
        let f = policy().route(&huge_value, &failure(FailureClass::Poison), 0);
        assert_eq!(f.output.value.as_deref().map(<[u8]>::len), Some(20_000));
        assert_eq!(f.output.headers.get(headers::DROPPED), None);
    }

    #[test]
    fn failure_classes_round_trip() {
        for c in [
            FailureClass::Transient,
            FailureClass::Permanent,
            FailureClass::Poison,
        ] {
            assert_eq!(FailureClass::parse(c.as_str()), Some(c));
        }
        assert_eq!(FailureClass::parse("other"), None);
    }
}
