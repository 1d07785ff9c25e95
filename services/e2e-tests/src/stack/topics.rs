//! Reading and writing the stack's topics as a test's oracle: decoded or raw records from the
//! beginning, read_committed or read_uncommitted counts, committed offsets, open transactions,
//! and records produced the way a service (or a broken producer) would.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Context;
use paystream_core::avro::AvroCodec;
use paystream_core::headers::RecordHeaders;
use paystream_core::kafka;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedHeaders, Message};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use uuid::Uuid;

use super::{TestStack, PARTITIONS};
use crate::env::registry_url;

async fn decoded<M: Message<Headers = BorrowedHeaders>>(
    codec: &AvroCodec,
    message: &M,
) -> anyhow::Result<DecodedRecord> {
    Ok(DecodedRecord {
        partition: message.partition(),
        offset: message.offset(),
        key: message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default(),
        headers: RecordHeaders::from_kafka(message.headers()),
        value: codec.decode_json(message.payload()).await?,
    })
}

/// Key, value and headers of a record, as bytes.
pub type RawRecord = (Option<Vec<u8>>, Option<Vec<u8>>, RecordHeaders);

/// A consumed record with its value decoded to JSON.
#[derive(Debug, Clone)]
pub struct DecodedRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub headers: RecordHeaders,
    pub value: Value,
}

impl TestStack {
    /// A read_committed consumer assigned to the first `partitions` partitions of `topic`,
    /// from the beginning; it joins no group and commits nothing.
    fn reader(&self, topic: &str, partitions: i32) -> anyhow::Result<StreamConsumer> {
        self.reader_with(topic, partitions, &[("isolation.level", "read_committed")])
    }

    /// [`TestStack::reader`] with other consumer properties (`extra`).
    fn reader_with(
        &self,
        topic: &str,
        partitions: i32,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<StreamConsumer> {
        let group = format!("test-{}-reader-{}", self.id, Uuid::new_v4());
        let mut properties = vec![
            ("group.id", group.as_str()),
            ("enable.auto.commit", "false"),
        ];
        properties.extend_from_slice(extra);
        let consumer: StreamConsumer = kafka::client_config(&self.kafka, &properties)?.create()?;
        let mut assignment = TopicPartitionList::new();
        for p in 0..partitions {
            assignment.add_partition_offset(topic, p, Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        Ok(consumer)
    }

    /// Reads `topic` from the beginning (read_committed) until `until` holds for what was read,
    /// or `timeout` passes; returns everything read.
    pub async fn read_topic(
        &self,
        topic: &str,
        timeout: Duration,
        until: impl Fn(&[DecodedRecord]) -> bool,
    ) -> anyhow::Result<Vec<DecodedRecord>> {
        let consumer = self.reader(topic, PARTITIONS)?;
        let codec = AvroCodec::new(&registry_url());
        let deadline = tokio::time::Instant::now() + timeout;
        let mut records = Vec::new();
        while !until(&records) {
            let message = match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(m) => m?,
                Err(_) => break,
            };
            records.push(decoded(&codec, &message).await?);
        }
        Ok(records)
    }

    /// Reads all of `topic` (read_committed): stops once nothing new arrived for `idle`.
    pub async fn read_all(
        &self,
        topic: &str,
        idle: Duration,
    ) -> anyhow::Result<Vec<DecodedRecord>> {
        let consumer = self.reader(topic, PARTITIONS)?;
        let codec = AvroCodec::new(&registry_url());
        let mut records = Vec::new();
        while let Ok(message) = tokio::time::timeout(idle, consumer.recv()).await {
            let message = message?;
            records.push(decoded(&codec, &message).await?);
        }
        Ok(records)
    }

    /// How many records `topic` holds under read_uncommitted: those of committed and of
    /// aborted transactions alike (not the transaction markers).
    pub async fn read_uncommitted_count(&self, topic: &str) -> anyhow::Result<usize> {
        let consumer = self.reader_with(
            topic,
            PARTITIONS,
            &[
                ("isolation.level", "read_uncommitted"),
                ("enable.partition.eof", "true"),
            ],
        )?;
        let (mut records, mut at_end) = (0, HashSet::new());
        while at_end.len() < PARTITIONS as usize {
            match tokio::time::timeout(Duration::from_secs(30), consumer.recv())
                .await
                .context("reading read_uncommitted")?
            {
                Ok(m) => {
                    at_end.remove(&m.partition());
                    records += 1;
                }
                Err(rdkafka::error::KafkaError::PartitionEOF(p)) => {
                    at_end.insert(p);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(records)
    }

    /// The offsets `group` has committed on `topic`, summed over its partitions: the broker's
    /// record of how far the group got (0 for a partition without a committed offset).
    pub async fn committed_offsets(&self, group: &str, topic: &str) -> anyhow::Result<i64> {
        let consumer: StreamConsumer =
            kafka::client_config(&self.kafka, &[("group.id", group)])?.create()?;
        let mut partitions = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            partitions.add_partition(topic, p);
        }
        let committed = tokio::task::spawn_blocking(move || {
            consumer.committed_offsets(partitions, Duration::from_secs(10))
        })
        .await??;
        Ok(committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            })
            .sum())
    }

    /// Records of `topic` that read_committed consumers cannot see yet: per partition, the
    /// high watermark minus the last stable offset, summed. Above zero while a transaction that
    /// wrote to the topic is open; an aborted or committed transaction no longer counts.
    pub async fn unstable_records(&self, topic: &str) -> anyhow::Result<i64> {
        let (kafka, group, topic) = (
            self.kafka.clone(),
            format!("test-{}-watermarks", self.id),
            topic.to_string(),
        );
        // fetch_watermarks blocks: off the async reactor.
        tokio::task::spawn_blocking(move || {
            let watermarks = |isolation: &str| -> anyhow::Result<Vec<i64>> {
                // librdkafka asks ListOffsets with the client's isolation level: under
                // read_committed the "high" offset it returns is the last stable offset.
                let consumer: rdkafka::consumer::BaseConsumer = kafka::client_config(
                    &kafka,
                    &[("group.id", &group), ("isolation.level", isolation)],
                )?
                .create()?;
                (0..PARTITIONS)
                    .map(|p| {
                        Ok(consumer
                            .fetch_watermarks(&topic, p, Duration::from_secs(10))?
                            .1)
                    })
                    .collect()
            };
            let high = watermarks("read_uncommitted")?;
            let stable = watermarks("read_committed")?;
            Ok(high.iter().zip(&stable).map(|(h, s)| h - s).sum())
        })
        .await?
    }

    /// Produces raw bytes, as a foreign or broken producer would.
    pub async fn produce_raw(&self, topic: &str, key: &str, value: &[u8]) -> anyhow::Result<()> {
        let producer: FutureProducer =
            kafka::client_config(&self.kafka, kafka::IDEMPOTENT_PRODUCER)?.create()?;
        let delivery = kafka::enqueue(
            &producer,
            topic,
            Some(key.as_bytes()),
            Some(value),
            RecordHeaders::default().to_kafka(),
        )
        .await?;
        kafka::delivered(delivery).await?;
        Ok(())
    }

    /// Reads up to `n` records of a single-partition topic without decoding them.
    pub async fn read_raw(
        &self,
        topic: &str,
        timeout: Duration,
        n: usize,
    ) -> anyhow::Result<Vec<RawRecord>> {
        let consumer = self.reader(topic, 1)?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut records = Vec::new();
        while records.len() < n {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(m) => {
                    let m = m?;
                    records.push((
                        m.key().map(<[u8]>::to_vec),
                        m.payload().map(<[u8]>::to_vec),
                        RecordHeaders::from_kafka(m.headers()),
                    ));
                }
                Err(_) => break,
            }
        }
        Ok(records)
    }

    /// Produces an already encoded event with its `event_id` header, as a service would.
    pub async fn produce_event(
        &self,
        topic: &str,
        key: &str,
        value: &[u8],
        event_id: Uuid,
    ) -> anyhow::Result<()> {
        self.produce_events(topic, &[(key.to_string(), value.to_vec(), event_id)])
            .await
    }

    /// [`Self::produce_event`] for many events (key, value, event id), through one producer,
    /// in order per partition.
    pub async fn produce_events(
        &self,
        topic: &str,
        events: &[(String, Vec<u8>, Uuid)],
    ) -> anyhow::Result<()> {
        let producer: FutureProducer =
            kafka::client_config(&self.kafka, kafka::IDEMPOTENT_PRODUCER)?.create()?;
        let mut deliveries = Vec::with_capacity(events.len());
        for (key, value, event_id) in events {
            let mut headers = RecordHeaders::default();
            headers.set(paystream_core::headers::EVENT_ID, event_id.to_string());
            deliveries.push(
                kafka::enqueue(
                    &producer,
                    topic,
                    Some(key.as_bytes()),
                    Some(value),
                    headers.to_kafka(),
                )
                .await?,
            );
        }
        for delivery in deliveries {
            kafka::delivered(delivery).await?;
        }
        Ok(())
    }
}
