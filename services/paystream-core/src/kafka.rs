//! librdkafka client construction, topic administration and error classification.
//!
//! Typed settings become librdkafka properties in one place ([`client_config`]), which refuses a
//! raw override of a property paystream sets itself: an override could otherwise silently turn
//! off idempotence, `acks=all` or `read_committed`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseProducer, DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;

use crate::config::{KafkaSettings, TopicProvisioning};

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
    // A partition with nothing committed is read from its start; a group configured to start
    // from the end commits its input partitions' ends before it joins (`consumer.start_from`).
    ("auto.offset.reset", "earliest"),
    ("enable.partition.eof", "false"),
    // Incremental rebalancing: a joining or leaving instance only moves the partitions that
    // change owner, the others keep flowing (KIP-429).
    ("partition.assignment.strategy", "cooperative-sticky"),
];

/// A topic paystream needs: its partition count and the configs it cannot do without.
/// Replication and the operator's topic configs come from [`TopicProvisioning`].
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    /// -1: `kafka.provisioning.partitions` (whose -1 is the broker's `num.partitions`).
    pub partitions: i32,
    pub config: Vec<(String, String)>,
}

impl TopicSpec {
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        Self {
            name: name.into(),
            partitions,
            config: Vec::new(),
        }
    }

    /// A log-compacted topic: the latest record of each key is kept.
    pub fn compacted(mut self) -> Self {
        self.config
            .push(("cleanup.policy".to_string(), "compact".to_string()));
        self
    }

    /// The topic to create: partitions, replication and configs resolved against `provisioning`
    /// (the spec's own configs win: a compacted topic stays compacted).
    fn resolve(&self, provisioning: &TopicProvisioning) -> ResolvedTopic {
        let partitions = if self.partitions > 0 {
            self.partitions
        } else {
            provisioning.partitions
        };
        let mut configs: BTreeMap<String, String> = provisioning.configs.clone();
        configs.extend(self.config.iter().cloned());
        (
            partitions,
            provisioning.replication_factor,
            configs.into_iter().collect(),
        )
    }
}

/// Partitions, replication factor and configs of a topic about to be created.
type ResolvedTopic = (i32, i32, Vec<(String, String)>);

/// Makes sure `topics` exist. Missing ones are created with `settings.provisioning` or, when
/// creation is off (one owner creates topics in production), named in the error.
pub async fn ensure_topics(settings: &KafkaSettings, topics: &[TopicSpec]) -> anyhow::Result<()> {
    let names: Vec<String> = topics.iter().map(|t| t.name.clone()).collect();
    let missing = missing_topics(settings, &names).await?;
    if missing.is_empty() {
        return Ok(());
    }
    anyhow::ensure!(
        settings.provisioning.create_topics,
        "{} (kafka.provisioning.create_topics is off: create missing topics with `paystream \
         topics create` or the Helm chart's topics job)",
        describe_missing(&missing)
    );
    let resolved: Vec<(&str, ResolvedTopic)> = topics
        .iter()
        .filter(|t| missing.contains(&t.name))
        .map(|t| (t.name.as_str(), t.resolve(&settings.provisioning)))
        .collect();
    let new_topics: Vec<NewTopic> = resolved
        .iter()
        .map(|(name, (partitions, replication, configs))| {
            configs.iter().fold(
                NewTopic::new(name, *partitions, TopicReplication::Fixed(*replication)),
                |topic, (k, v)| topic.set(k, v),
            )
        })
        .collect();
    let admin: AdminClient<DefaultClientContext> = client_config(settings, &[])?
        .create()
        .context("creating the Kafka admin client")?;
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

/// Fails, naming them, when any of `topics` does not exist (topics a service reads or writes
/// but never creates itself, such as the payment topics).
pub async fn require_topics(settings: &KafkaSettings, topics: &[String]) -> anyhow::Result<()> {
    let missing = missing_topics(settings, topics).await?;
    anyhow::ensure!(
        missing.is_empty(),
        "{} (create missing topics with `paystream topics create` or the Helm chart's topics \
         job)",
        describe_missing(&missing)
    );
    Ok(())
}

/// Connects to the cluster and reads its metadata, so a wrong certificate or password stops a
/// service at start-up with librdkafka's reason, not minutes later. An unreachable cluster is
/// only a warning: the clients keep reconnecting, as they do after any broker outage.
pub async fn verify_connection(settings: &KafkaSettings) -> anyhow::Result<()> {
    match missing_topics(settings, &[]).await {
        Ok(_) => Ok(()),
        Err(e) if e.is::<SecurityFailure>() => Err(e),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "Kafka is not reachable yet; going on");
            Ok(())
        }
    }
}

fn describe_missing(missing: &[String]) -> String {
    match missing {
        [one] => format!("topic `{one}` does not exist"),
        many => format!("topics `{}` do not exist", many.join("`, `")),
    }
}

/// Credentials or TLS refused: retrying cannot help, unlike an unreachable broker.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SecurityFailure(String);

/// Which of `names` the cluster lacks, read through a throwaway client. Metadata is fetched
/// off the reactor (it blocks), in short attempts between which the client's events are
/// served: an authentication or TLS failure ends the wait at once with librdkafka's reason.
async fn missing_topics(settings: &KafkaSettings, names: &[String]) -> anyhow::Result<Vec<String>> {
    let probe: BaseProducer<ErrorCapture> = client_config(settings, &[])?
        .create_with_context(ErrorCapture::default())
        .context("creating the Kafka client")?;
    let names = names.to_vec();
    let described = format!(
        "cannot connect to Kafka at {} (security.protocol {})",
        settings.bootstrap_servers,
        settings
            .properties
            .get("security.protocol")
            .map_or("PLAINTEXT", String::as_str)
    );
    tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            match probe.client().fetch_metadata(None, Duration::from_secs(2)) {
                Ok(metadata) => {
                    let existing: std::collections::HashSet<&str> = metadata
                        .topics()
                        .iter()
                        .filter(|t| t.error().is_none())
                        .map(|t| t.name())
                        .collect();
                    return Ok(names
                        .into_iter()
                        .filter(|n| !existing.contains(n.as_str()))
                        .collect());
                }
                Err(e) => {
                    // Serves the error events that say why (they arrive through the poll).
                    probe.poll(Duration::from_millis(100));
                    let context = probe.context();
                    if context.is_security_failure() {
                        let reason = context.last().unwrap_or_else(|| e.to_string());
                        return Err(SecurityFailure(format!("{described}: {reason}")).into());
                    }
                    if std::time::Instant::now() >= deadline {
                        let reason = context.last().unwrap_or_else(|| e.to_string());
                        anyhow::bail!("{described}: {reason}");
                    }
                }
            }
        }
    })
    .await
    .context("fetching cluster metadata")?
}

/// A client context remembering librdkafka's client-level errors (the only place an
/// authentication or TLS failure is reported: requests just time out). A security failure is
/// kept over the "all brokers down" that follows it.
#[derive(Default)]
pub struct ErrorCapture {
    last: std::sync::Mutex<Option<String>>,
    security: std::sync::Mutex<Option<String>>,
}

impl ErrorCapture {
    fn last(&self) -> Option<String> {
        let security = self.security.lock().unwrap().clone();
        security.or_else(|| self.last.lock().unwrap().clone())
    }

    /// Retrying cannot fix these: wrong credentials, an untrusted certificate, a TLS mismatch.
    fn is_security_failure(&self) -> bool {
        self.security.lock().unwrap().is_some()
    }
}

impl rdkafka::producer::ProducerContext for ErrorCapture {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

impl ClientContext for ErrorCapture {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "Kafka client error");
        let security = matches!(
            error.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::Authentication
                    | RDKafkaErrorCode::SaslAuthenticationFailed
                    | RDKafkaErrorCode::SSL
            )
        );
        let slot = if security { &self.security } else { &self.last };
        *slot.lock().unwrap() = Some(reason.to_string());
    }
}

/// Seeks `positions` and fails unless every partition moved. librdkafka answers a seek with
/// `Ok` and reports each partition's failure (e.g. one revoked meanwhile) inside the returned
/// list; a caller that only checks the `Result` consumes on from a position never moved, and
/// its next commit skips what it meant to re-read. Blocking: call it off the reactor.
pub fn seek_exactly<C: rdkafka::consumer::Consumer<X>, X: rdkafka::consumer::ConsumerContext>(
    consumer: &C,
    positions: rdkafka::TopicPartitionList,
    timeout: Duration,
) -> Result<(), KafkaError> {
    let sought = consumer.seek_partitions(positions, timeout)?;
    partition_errors(&sought, "seeking")
}

/// The first per-partition error of a list librdkafka returned, as the call's error.
pub fn partition_errors(list: &rdkafka::TopicPartitionList, what: &str) -> Result<(), KafkaError> {
    for elem in list.elements() {
        if let Err(e) = elem.error() {
            return Err(KafkaError::Seek(format!(
                "{what} {} [{}]: {e}",
                elem.topic(),
                elem.partition()
            )));
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
    fn a_topic_keeps_its_own_partitions_and_configs_over_the_defaults() {
        let provisioning = TopicProvisioning {
            create_topics: true,
            partitions: 4,
            replication_factor: 3,
            configs: BTreeMap::from([
                ("cleanup.policy".to_string(), "delete".to_string()),
                ("min.insync.replicas".to_string(), "2".to_string()),
            ]),
        };
        let (partitions, replication, configs) = TopicSpec::new("stats", 6)
            .compacted()
            .resolve(&provisioning);
        assert_eq!((partitions, replication), (6, 3));
        assert_eq!(
            configs,
            vec![
                ("cleanup.policy".to_string(), "compact".to_string()),
                ("min.insync.replicas".to_string(), "2".to_string()),
            ]
        );
        // Unset (-1) partitions take the default, which may itself be the broker's (-1).
        assert_eq!(TopicSpec::new("retry", -1).resolve(&provisioning).0, 4);
        let broker = TopicProvisioning::default();
        assert_eq!(TopicSpec::new("retry", -1).resolve(&broker).0, -1);
        assert_eq!(TopicSpec::new("retry", -1).resolve(&broker).1, -1);
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
