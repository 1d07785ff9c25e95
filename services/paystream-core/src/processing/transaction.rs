//! The Kafka side of a batch: one producer transaction carrying the batch's outputs and its
//! consumer offsets (KIP-447). librdkafka's transaction calls block, so they run on the blocking
//! pool, off the async reactor.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::headers;
use crate::kafka::{self, ErrorClass};
use crate::record::{Output, Record};

/// Runs a blocking librdkafka call on the blocking pool, off the async reactor.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KafkaError> + Send + 'static,
) -> Result<T, KafkaError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    }
}

/// The loop's transactional producer.
#[derive(Clone)]
pub struct Transactions {
    pub producer: FutureProducer,
    pub timeout: Duration,
}

impl Transactions {
    pub async fn init(&self) -> Result<(), KafkaError> {
        let (p, t) = (self.producer.clone(), self.timeout);
        blocking(move || p.init_transactions(t)).await
    }

    pub async fn abort(&self) -> Result<(), KafkaError> {
        let (p, t) = (self.producer.clone(), self.timeout);
        blocking(move || p.abort_transaction(t)).await
    }

    /// Opens a transaction with `outputs` (each tagged with `txn`) and the offsets after
    /// `records`; [`Transactions::commit`] or [`Transactions::abort`] ends it. It opens only
    /// now, after the batch's handlers ran, so the broker's transaction timeout covers
    /// producing and committing, not the handlers' calls.
    pub async fn produce_batch(
        &self,
        outputs: Vec<Output>,
        records: &[Record],
        metadata: ConsumerGroupMetadata,
        txn: &str,
    ) -> Result<(), KafkaError> {
        let producer = self.producer.clone();
        blocking(move || producer.begin_transaction()).await?;
        let mut deliveries = Vec::with_capacity(outputs.len());
        for output in outputs {
            let mut headers = output.headers;
            headers.set(headers::PRODUCER_TXN, txn);
            deliveries.push(
                kafka::enqueue(
                    &self.producer,
                    &output.topic,
                    output.key.as_deref(),
                    output.value.as_deref(),
                    headers.to_kafka(),
                )
                .await?,
            );
        }
        for delivery in deliveries {
            kafka::delivered(delivery).await?;
        }
        let offsets = next_offsets(records)?;
        let timeout = self.timeout;
        let metadata = Arc::new(metadata);
        self.retrying("send_offsets_to_transaction", || {
            let (p, o, m) = (self.producer.clone(), offsets.clone(), metadata.clone());
            move || p.send_offsets_to_transaction(&o, &m, timeout)
        })
        .await
    }

    pub async fn commit(&self) -> Result<(), KafkaError> {
        let timeout = self.timeout;
        self.retrying("commit_transaction", || {
            let p = self.producer.clone();
            move || p.commit_transaction(timeout)
        })
        .await
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
}

/// The offsets to commit after `records`: last offset + 1 per partition.
pub fn next_offsets(records: &[Record]) -> Result<TopicPartitionList, KafkaError> {
    let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for r in records {
        let slot = next.entry((r.topic.as_str(), r.partition)).or_insert(0);
        *slot = (*slot).max(r.offset + 1);
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in next {
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    }
    Ok(tpl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_last_offset_plus_one_per_partition() {
        let batch = [
            Record::at("a", 0, 5),
            Record::at("a", 1, 9),
            Record::at("a", 0, 6),
            Record::at("b", 0, 1),
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
}
