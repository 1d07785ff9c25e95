//! librdkafka client construction, topic administration and error classification.
//!
//! Typed settings become librdkafka properties in one place ([`client_config`]), which refuses a
//! raw override of a property paystream sets itself: an override could otherwise silently turn
//! off idempotence, `acks=all` or `read_committed`.

use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::config::KafkaSettings;

/// Builds a client config from the shared settings plus the properties this client sets.
/// Fails when `settings.properties` tries to override one of `ours`.
pub fn client_config(
    settings: &KafkaSettings,
    ours: &[(&str, &str)],
) -> anyhow::Result<ClientConfig> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &settings.bootstrap_servers);
    for (key, value) in &settings.properties {
        anyhow::ensure!(
            key != "bootstrap.servers" && !ours.iter().any(|(k, _)| k == key),
            "kafka property `{key}` is managed by paystream and cannot be overridden"
        );
        config.set(key, value);
    }
    for (key, value) in ours {
        config.set(*key, *value);
    }
    Ok(config)
}

/// Properties of an idempotent producer (`acks=all`, no reordering or duplicates on retry).
pub const IDEMPOTENT_PRODUCER: &[(&str, &str)] = &[
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("compression.type", "lz4"),
    ("linger.ms", "5"),
];

/// Properties of a consumer in a transactional consume-transform-produce loop.
pub const TRANSACTIONAL_CONSUMER: &[(&str, &str)] = &[
    ("isolation.level", "read_committed"),
    ("enable.auto.commit", "false"),
    // Positions are committed through the producer's transaction, never by the consumer.
    ("enable.auto.offset.store", "false"),
    ("auto.offset.reset", "earliest"),
    ("enable.partition.eof", "false"),
    // Incremental rebalancing: a joining or leaving instance only moves the partitions that
    // change owner, the others keep flowing (KIP-429).
    ("partition.assignment.strategy", "cooperative-sticky"),
];

/// A topic paystream needs, with its partition count.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication: i32,
    pub config: Vec<(String, String)>,
}

impl TopicSpec {
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        Self {
            name: name.into(),
            partitions,
            replication: 1,
            config: Vec::new(),
        }
    }

    /// A log-compacted topic: the latest record of each key is kept.
    pub fn compacted(mut self) -> Self {
        self.config
            .push(("cleanup.policy".to_string(), "compact".to_string()));
        self
    }
}

/// Creates the topics that do not exist yet; existing topics are left alone.
pub async fn ensure_topics(settings: &KafkaSettings, topics: &[TopicSpec]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(settings, &[])?
        .create()
        .context("creating the Kafka admin client")?;
    let new_topics: Vec<NewTopic> = topics
        .iter()
        .map(|t| {
            t.config.iter().fold(
                NewTopic::new(
                    &t.name,
                    t.partitions,
                    TopicReplication::Fixed(t.replication),
                ),
                |nt, (k, v)| nt.set(k, v),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(new_topics.iter(), &options)
        .await
        .context("creating topics")?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("creating topic {topic}: {code}"),
        }
    }
    Ok(())
}

/// Queues a record without blocking the reactor. When librdkafka's local queue is full the
/// caller waits for it to drain (backpressure) instead of piling up more work.
pub async fn enqueue(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: OwnedHeaders,
) -> Result<DeliveryFuture, KafkaError> {
    loop {
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(topic).headers(headers.clone());
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(v) = value {
            record = record.payload(v);
        }
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Waits for a queued record's acknowledgement.
pub async fn delivered(delivery: DeliveryFuture) -> Result<(), KafkaError> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(e),
        Err(_) => Err(KafkaError::Canceled),
    }
}

/// How to react to a Kafka error, following librdkafka's own classification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Try the same call again (timeouts, transport hiccups).
    Retriable,
    /// The open transaction is doomed: abort it, rewind to committed offsets, continue.
    Abortable,
    /// This instance can't go on (fenced by a newer instance, misconfiguration): stop it.
    Fatal,
}

pub fn classify(error: &KafkaError) -> ErrorClass {
    if let KafkaError::Transaction(e) = error {
        if e.is_fatal() {
            return ErrorClass::Fatal;
        }
        if e.txn_requires_abort() {
            return ErrorClass::Abortable;
        }
        if e.is_retriable() {
            return ErrorClass::Retriable;
        }
        return classify_code(e.code());
    }
    match error.rdkafka_error_code() {
        Some(code) => classify_code(code),
        None => ErrorClass::Abortable,
    }
}

fn classify_code(code: RDKafkaErrorCode) -> ErrorClass {
    use RDKafkaErrorCode as C;
    match code {
        C::Fatal
        | C::ProducerFenced
        | C::InvalidProducerEpoch
        | C::TransactionalIdAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::UnsupportedVersion
        | C::InvalidTransactionTimeout => ErrorClass::Fatal,
        C::OperationTimedOut
        | C::RequestTimedOut
        | C::AllBrokersDown
        | C::BrokerTransportFailure
        | C::CoordinatorLoadInProgress
        | C::CoordinatorNotAvailable
        | C::NotCoordinator
        | C::ConcurrentTransactions
        | C::NetworkException
        | C::QueueFull => ErrorClass::Retriable,
        _ => ErrorClass::Abortable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_overrides_of_managed_properties() {
        let mut s = KafkaSettings::default();
        s.properties.insert("acks".into(), "1".into());
        assert!(client_config(&s, IDEMPOTENT_PRODUCER).is_err());
        s.properties.clear();
        s.properties.insert("client.rack".into(), "a".into());
        let c = client_config(&s, IDEMPOTENT_PRODUCER).unwrap();
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("client.rack"), Some("a"));
    }

    #[test]
    fn classifies_like_librdkafka() {
        let fenced = KafkaError::MessageProduction(RDKafkaErrorCode::ProducerFenced);
        assert_eq!(classify(&fenced), ErrorClass::Fatal);
        assert_eq!(
            classify(&KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)),
            ErrorClass::Retriable
        );
        assert_eq!(
            classify(&KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageSizeTooLarge
            )),
            ErrorClass::Abortable
        );
    }
}
