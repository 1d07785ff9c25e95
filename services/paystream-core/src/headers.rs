//! Kafka record headers: names, and W3C trace context carried through them.
//!
//! Header values are UTF-8. `traceparent`/`tracestate` follow W3C Trace Context so any
//! OpenTelemetry-instrumented consumer (Java, Python, Go) continues the same trace.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector};
use rdkafka::message::{BorrowedHeaders, Header, Headers, OwnedHeaders};
use rdkafka::types::RDKafkaHeaders;

/// The event's deterministic id (UUID); consumers dedupe on it.
pub const EVENT_ID: &str = "event_id";
/// The Avro record's full name, for tools that route without decoding.
pub const EVENT_TYPE: &str = "event_type";
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

// Failure headers, set on every retry-topic and dead-letter record (the original key, value
// and headers are forwarded unchanged next to them). Values are UTF-8 decimal or text.
/// Failed attempts so far: 1 on `<group>.retry.1`, N+1 on the DLQ after N retries.
pub const ATTEMPT: &str = "paystream.attempt";
/// Epoch milliseconds before which a retry consumer must not process the record.
pub const DUE_AT_MS: &str = "paystream.due.ms";
/// Where the record was first consumed from; kept unchanged through the whole chain.
pub const ORIGINAL_TOPIC: &str = "paystream.original.topic";
pub const ORIGINAL_PARTITION: &str = "paystream.original.partition";
pub const ORIGINAL_OFFSET: &str = "paystream.original.offset";
/// The original record's timestamp (epoch ms), when it had one.
pub const ORIGINAL_TIMESTAMP_MS: &str = "paystream.original.timestamp";
pub const CONSUMER_GROUP: &str = "paystream.consumer.group";
/// `transient`, `permanent` or `poison`.
pub const ERROR_CLASS: &str = "paystream.error.class";
/// The last error, truncated to [`MAX_ERROR_MESSAGE_LEN`] bytes.
pub const ERROR_MESSAGE: &str = "paystream.error.message";
/// How many times an operator replayed the record from a dead-letter topic.
pub const REPLAY_COUNT: &str = "paystream.replay.count";
/// The transaction that produced the record: `<transactional.id>/<run>/<sequence>`. Lets an
/// operator tell which records came from a transaction that never committed.
pub const PRODUCER_TXN: &str = "paystream.txn";

/// On a forwarded (retry or dead-letter) record that could not carry all of its original under
/// the producer's record size limit: what was left out, e.g. `2 headers (999010 bytes)` or
/// `value (1040000 bytes)`. The original stays at its position on the input topic.
pub const DROPPED: &str = "paystream.dropped";

/// Bound on error text copied into a header, so a huge error can't bloat a record.
pub const MAX_ERROR_MESSAGE_LEN: usize = 1024;

/// An ordered, owned header list that converts to and from librdkafka's.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RecordHeaders(pub Vec<(String, String)>);

impl RecordHeaders {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `name`, replacing an existing value.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self.0.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name.to_string(), value)),
        }
    }

    /// Reads a consumed record's headers. Keys and values that are not UTF-8 are kept lossily,
    /// a null value as empty.
    ///
    /// Read through librdkafka's C API rather than rdkafka's `Headers::iter`, which unwraps each
    /// key as UTF-8 (rdkafka 0.39 `BorrowedHeaders::try_get`): a producer in another language
    /// can send any bytes as a key, and the panic stopped the consumer on that record again at
    /// every restart, its partitions stuck behind it.
    pub fn from_kafka(headers: Option<&BorrowedHeaders>) -> Self {
        let Some(h) = headers else {
            return Self::default();
        };
        // `BorrowedHeaders` is rdkafka's view of the `rd_kafka_headers_t` itself (the cast its
        // own accessors make).
        let native = h as *const BorrowedHeaders as *const RDKafkaHeaders;
        let mut out = Vec::with_capacity(h.count());
        for idx in 0..h.count() {
            let (mut name, mut value, mut size) = (std::ptr::null(), std::ptr::null(), 0);
            // SAFETY: `native` lives as long as `h`; on success librdkafka points `name` at a
            // NUL-terminated key and `value` at `size` bytes (or null), both owned by `h`.
            let (key, value) = unsafe {
                let err = rdkafka::bindings::rd_kafka_header_get_all(
                    native, idx, &mut name, &mut value, &mut size,
                );
                if err != rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
                    break;
                }
                let key = std::ffi::CStr::from_ptr(name)
                    .to_string_lossy()
                    .into_owned();
                let value = (!value.is_null())
                    .then(|| {
                        String::from_utf8_lossy(std::slice::from_raw_parts(value.cast(), size))
                    })
                    .map(|v| v.into_owned());
                (key, value)
            };
            out.push((key, value.unwrap_or_default()));
        }
        Self(out)
    }

    pub fn to_kafka(&self) -> OwnedHeaders {
        self.0.iter().fold(
            OwnedHeaders::new_with_capacity(self.0.len()),
            |h, (k, v)| {
                h.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                })
            },
        )
    }

    /// Writes the current span's trace context (`traceparent`, `tracestate`).
    pub fn inject_current_context(&mut self) {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let cx = tracing::Span::current().context();
        let mut carrier = HashMap::new();
        opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut carrier));
        let mut keys: Vec<_> = carrier.into_iter().collect();
        keys.sort();
        for (k, v) in keys.into_iter().filter(|(_, v)| !v.is_empty()) {
            self.set(&k, v);
        }
    }

    /// Removes `name`; returns whether it was there.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.0.len();
        self.0.retain(|(k, _)| k != name);
        self.0.len() != before
    }

    /// Parses a numeric header; `None` when absent or not a number.
    pub fn get_i64(&self, name: &str) -> Option<i64> {
        self.get(name).and_then(|v| v.trim().parse().ok())
    }

    /// Opens a PRODUCER span `send <topic>` (OpenTelemetry messaging conventions) under the
    /// current span and writes its context: the record's consumer becomes its child, so one
    /// trace follows a payment through every hop.
    pub fn inject_send_context(&mut self, topic: &str, key: &str) {
        let span = tracing::info_span!(
            "send",
            otel.name = %format!("send {topic}"),
            otel.kind = "producer",
            messaging.system = "kafka",
            messaging.operation.type = "send",
            messaging.operation.name = "send",
            messaging.destination.name = %topic,
            messaging.kafka.message.key = %key,
        );
        let _entered = span.enter();
        self.inject_current_context();
    }

    /// The trace id of the W3C `traceparent` header (`00-<trace id>-<span id>-<flags>`).
    pub fn trace_id(&self) -> Option<&str> {
        let mut parts = self.get(TRACEPARENT)?.split('-');
        let (_version, trace_id) = (parts.next()?, parts.next()?);
        (trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit()))
            .then_some(trace_id)
    }

    /// The trace context carried by these headers (empty when there is none).
    pub fn extract_context(&self) -> opentelemetry::Context {
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(self)))
    }
}

struct HeaderExtractor<'a>(&'a RecordHeaders);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)
    }
    fn keys(&self) -> Vec<&str> {
        self.0 .0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

impl Injector for RecordHeaders {
    fn set(&mut self, key: &str, value: String) {
        RecordHeaders::set(self, key, value)
    }
}

/// Truncates `message` to at most [`MAX_ERROR_MESSAGE_LEN`] bytes on a char boundary.
pub fn bounded_error_message(message: &str) -> String {
    if message.len() <= MAX_ERROR_MESSAGE_LEN {
        return message.to_string();
    }
    let mut end = MAX_ERROR_MESSAGE_LEN;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_replaces_and_get_reads() {
        let mut h = RecordHeaders::default();
        h.set(EVENT_ID, "a");
        h.set(EVENT_ID, "b");
        assert_eq!(h.get(EVENT_ID), Some("b"));
        assert_eq!(h.0.len(), 1);
    }

    #[test]
    fn kafka_round_trip_keeps_order() {
        let h = RecordHeaders(vec![("x".into(), "1".into()), ("y".into(), "2".into())]);
        let k = h.to_kafka();
        assert_eq!(RecordHeaders::from_kafka(Some(k.as_borrowed())), h);
    }

    #[test]
    fn keys_and_values_that_are_not_utf8_are_read_lossily_without_a_panic() {
        let k = OwnedHeaders::new();
        let native = k.as_borrowed() as *const BorrowedHeaders as *mut RDKafkaHeaders;
        // rdkafka's `Header` key is a `&str`: a foreign producer's key goes in through the C API.
        for (key, value) in [(&b"\xff\xfek"[..], Some(&b"\xe9"[..])), (&b"n"[..], None)] {
            let (value_ptr, value_len) = value.map_or((std::ptr::null(), 0), |v| (v.as_ptr(), 1));
            // SAFETY: `native` lives as long as `k`; librdkafka copies key and value.
            unsafe {
                rdkafka::bindings::rd_kafka_header_add(
                    native,
                    key.as_ptr().cast(),
                    key.len() as isize,
                    value_ptr.cast(),
                    value_len,
                );
            }
        }
        assert_eq!(
            RecordHeaders::from_kafka(Some(k.as_borrowed())).0,
            vec![
                ("\u{fffd}\u{fffd}k".into(), "\u{fffd}".into()),
                ("n".into(), String::new())
            ]
        );
    }

    #[test]
    fn trace_id_comes_from_a_valid_traceparent_only() {
        let mut h = RecordHeaders::default();
        assert_eq!(h.trace_id(), None);
        h.set(
            TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        assert_eq!(h.trace_id(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        h.set(TRACEPARENT, "00-nothex-00f067aa0ba902b7-01");
        assert_eq!(h.trace_id(), None);
    }

    #[test]
    fn error_messages_are_bounded_on_char_boundaries() {
        let long = "é".repeat(MAX_ERROR_MESSAGE_LEN);
        let b = bounded_error_message(&long);
        assert!(b.len() <= MAX_ERROR_MESSAGE_LEN + '…'.len_utf8());
        assert_eq!(bounded_error_message("short"), "short");
    }
}
