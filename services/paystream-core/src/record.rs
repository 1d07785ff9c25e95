//! The records the runtime moves: [`Record`], one consumed from Kafka (owned), and [`Output`],
//! one a handler wants produced in the same transaction as its input's offset. Shared by the
//! processing loop, the retry chain and the dead-letter tools, which import them from here
//! rather than from each other.

use rdkafka::message::{BorrowedHeaders, Message};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::events::EVENT_ID_NAMESPACE;
use crate::headers::{self, RecordHeaders};

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
    pub fn from_message<M: Message<Headers = BorrowedHeaders>>(m: &M) -> Self {
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
            .unwrap_or_else(|| position_event_id(&self.topic, self.partition, self.offset))
    }
}

/// The event id of a record that came without one: derived from where it was first read, so
/// every redelivery of it (and, through the retry chain's origin headers, every forward and
/// replay of it) has the same id.
pub fn position_event_id(topic: &str, partition: i32, offset: i64) -> Uuid {
    let position = format!("{topic}/{partition}/{offset}");
    Uuid::new_v5(&EVENT_ID_NAMESPACE, position.as_bytes())
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

#[cfg(test)]
impl Record {
    /// An empty record at a position, for tests.
    pub(crate) fn at(topic: &str, partition: i32, offset: i64) -> Self {
        Self {
            topic: topic.into(),
            partition,
            offset,
            timestamp_ms: None,
            key: None,
            payload: None,
            headers: RecordHeaders::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_id_falls_back_to_a_stable_position_id() {
        let r = Record::at("t", 2, 40);
        assert_eq!(r.event_id(), Record::at("t", 2, 40).event_id());
        assert_ne!(r.event_id(), Record::at("t", 2, 41).event_id());
        let mut with_header = Record::at("t", 2, 40);
        let id = Uuid::new_v4();
        with_header.headers.set(headers::EVENT_ID, id.to_string());
        assert_eq!(with_header.event_id(), id);
    }
}
