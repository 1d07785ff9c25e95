//! A stage's scratch world on the running broker and Postgres: topics and consumer groups under
//! one `paystream-bench-<id>` prefix, a migrated Postgres schema, and the means to pre-fill
//! topics the way the gateway's relay and the payment processor would (Avro through the
//! project's codec, event id headers). The services a stage starts ([`crate::services`]) are
//! pointed at it through their environment. Everything is removed afterwards, including the
//! retry and dead-letter topics the services created under the prefix.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use paystream_core::avro::AvroCodec;
use paystream_core::config::{DatabaseSettings, KafkaSettings};
use paystream_core::events::{
    self, OutcomeStatus, PaymentOutcome, PaymentRequested, SchemaFile, Step,
    PAYMENT_OUTCOME_SCHEMA, PAYMENT_REQUESTED_SCHEMA,
};
use paystream_core::headers::{self, RecordHeaders};
use paystream_core::kafka::{self, TopicSpec};
use paystream_core::shutdown::Shutdown;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{DeliveryFuture, FutureProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::cli::Targets;
use crate::probes::delete_topic;
use crate::services::{Binaries, Service};

/// Partitions of the scratch input topics (the local stack's provisioning default).
pub const PARTITIONS: i32 = 6;

/// `secrets.encryption_key` the bench gives the gateway and the notifier it starts (the local
/// stack's well-known dev key; the scratch merchants' webhook secrets are sealed with it).
const DEV_ENCRYPTION_KEY: &str = "ZGV2LW9ubHktcGF5c3RyZWFtLXNlY3JldHMta2V5ISE=";
/// The admin token of the gateways the bench starts.
pub const ADMIN_TOKEN: &str = "paystream-bench-admin";

/// Scratch names of one stage.
pub struct Scratch {
    pub id: String,
    pub prefix: String,
    pub requested: String,
    pub outcomes: String,
    pub stats: String,
    pub notifications: String,
    pub schema: String,
}

impl Scratch {
    fn new() -> Self {
        let id = Uuid::new_v4().simple().to_string()[..12].to_string();
        let prefix = format!("paystream-bench-{id}");
        Self {
            requested: format!("{prefix}.payments.requested.v1"),
            outcomes: format!("{prefix}.payments.outcomes.v1"),
            stats: format!("{prefix}.analytics.payment-stats.v1"),
            notifications: format!("{prefix}.notifications.v1"),
            schema: format!("paystream_bench_{id}"),
            prefix,
            id,
        }
    }

    /// The consumer group of `service` (its retry and dead-letter topics share the prefix).
    pub fn group(&self, service: &str) -> String {
        format!("{}.{service}", self.prefix)
    }
}

/// One stage's scratch world: see the module docs.
pub struct World<'a> {
    pub targets: &'a Targets,
    pub bins: &'a Binaries,
    pub scratch: Scratch,
    pub pool: PgPool,
    pub codec: AvroCodec,
    producer: FutureProducer,
    pub stop: Shutdown,
}

impl World<'_> {
    /// Sets the scratch world up, runs `f` in it, and removes it again whatever `f` returned.
    pub async fn with<T>(
        targets: &Targets,
        bins: &Binaries,
        shutdown: &Shutdown,
        f: impl AsyncFnOnce(&World) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let scratch = Scratch::new();
        let kafka_settings = targets.kafka_settings();
        let database = DatabaseSettings {
            url: targets.database_url.clone().into(),
            max_connections: 10,
            schema: Some(scratch.schema.clone()),
        };
        let stop = shutdown.child_token();
        let setup = async {
            let topics = [&scratch.requested, &scratch.outcomes]
                .map(|t| TopicSpec::new(t.as_str(), PARTITIONS));
            kafka::ensure_topics(&kafka_settings, &topics).await?;
            let pool = paystream_core::db::connect(&database).await?;
            paystream_core::db::migrate(&pool).await?;
            let producer: FutureProducer =
                kafka::client_config(&kafka_settings, kafka::IDEMPOTENT_PRODUCER)?.create()?;
            anyhow::Ok((pool, producer))
        }
        .await;
        let (result, scratch) = match setup {
            Ok((pool, producer)) => {
                let world = World {
                    targets,
                    bins,
                    scratch,
                    pool,
                    codec: AvroCodec::new(&targets.registry_url),
                    producer,
                    stop: stop.clone(),
                };
                let result = f(&world).await;
                world.pool.close().await;
                (result, world.scratch)
            }
            Err(e) => (Err(e), scratch),
        };
        stop.cancel();
        cleanup(&kafka_settings, &database, &scratch).await;
        result
    }

    /// What every service needs to run in this world: database schema, broker, registry,
    /// topics, the secrets key and admin token.
    pub fn env(&self) -> Vec<(String, String)> {
        let s = &self.scratch;
        [
            (
                "PAYSTREAM_DATABASE__URL",
                self.targets.database_url.as_str(),
            ),
            ("PAYSTREAM_DATABASE__SCHEMA", &s.schema),
            (
                "PAYSTREAM_KAFKA__BOOTSTRAP_SERVERS",
                &self.targets.bootstrap_servers,
            ),
            ("PAYSTREAM_KAFKA__PROVISIONING__PARTITIONS", "6"),
            ("PAYSTREAM_SCHEMA_REGISTRY__URL", &self.targets.registry_url),
            ("PAYSTREAM_TOPICS__PAYMENTS_REQUESTED", &s.requested),
            ("PAYSTREAM_TOPICS__PAYMENTS_OUTCOMES", &s.outcomes),
            ("PAYSTREAM_TOPICS__ANALYTICS_PAYMENT_STATS", &s.stats),
            ("PAYSTREAM_TOPICS__NOTIFICATIONS_SENT", &s.notifications),
            ("PAYSTREAM_SECRETS__ENCRYPTION_KEY", DEV_ENCRYPTION_KEY),
            ("PAYSTREAM_ADMIN_TOKEN", ADMIN_TOKEN),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// `instances` processes of the consumer-group service `binary` in this world's group
    /// for it, each with its own transactional id, plus `extra` settings; returns once every
    /// one is ready.
    pub async fn start_group(
        &self,
        binary: &str,
        instances: usize,
        extra: &[(String, String)],
    ) -> anyhow::Result<Vec<Service>> {
        let group = self.scratch.group(binary);
        let mut started = Vec::new();
        for i in 0..instances.max(1) {
            let mut env = self.env();
            env.extend(extra.iter().cloned());
            env.extend([
                ("PAYSTREAM_CONSUMER__GROUP_ID".into(), group.clone()),
                (
                    "PAYSTREAM_CONSUMER__TRANSACTIONAL_ID".into(),
                    format!("{group}-{i}"),
                ),
                // A group of the bench reads what was pre-filled (the notifier's default is
                // the end of the topic).
                ("PAYSTREAM_CONSUMER__START_FROM".into(), "earliest".into()),
            ]);
            let name = format!("{}-{binary}-{i}", self.scratch.id);
            started.push(Service::start(self.bins, binary, &name, &env)?);
        }
        for s in &mut started {
            s.ready(Duration::from_secs(60)).await?;
        }
        Ok(started)
    }

    /// A PSP simulator answering every charge after `latency_ms`, declining 5 %.
    pub async fn start_psp(&self, latency_ms: u64) -> anyhow::Result<Service> {
        let env = [
            ("PAYSTREAM_PSP__LATENCY_MS", latency_ms.to_string()),
            ("PAYSTREAM_PSP__DECLINE_RATE", "0.05".to_string()),
        ]
        .map(|(k, v)| (k.to_string(), v));
        let name = format!("{}-psp-simulator", self.scratch.id);
        let mut psp = Service::start(self.bins, "psp-simulator", &name, &env)?;
        psp.ready(Duration::from_secs(30)).await?;
        Ok(psp)
    }

    /// A gateway on this world (rate limit off, as on the local stack), ready to serve.
    pub async fn start_gateway(&self) -> anyhow::Result<Service> {
        let mut env = self.env();
        env.push((
            "PAYSTREAM_GATEWAY__RATE_LIMIT__REQUESTS_PER_SECOND".into(),
            "0".into(),
        ));
        let name = format!("{}-gateway", self.scratch.id);
        let mut gateway = Service::start(self.bins, "gateway", &name, &env)?;
        gateway.ready(Duration::from_secs(30)).await?;
        Ok(gateway)
    }

    /// Registers merchants `m_0 … m_{n-1}` with `webhook_url` through the gateway's admin API.
    pub async fn register_webhooks(
        &self,
        gateway: &Service,
        merchants: u32,
        webhook_url: &str,
    ) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        for m in 0..merchants {
            let body = serde_json::json!({
                "webhook_url": webhook_url,
                "notification_email": format!("ops@m{m}.example"),
            });
            let answer = client
                .put(format!("{}/v1/merchants/m_{m}", gateway.url()))
                .bearer_auth(ADMIN_TOKEN)
                .json(&body)
                .send()
                .await?;
            anyhow::ensure!(
                answer.status().is_success(),
                "registering merchant m_{m}: {}",
                answer.status()
            );
        }
        Ok(())
    }

    /// Payments as the gateway leaves them in Postgres: `PENDING` rows.
    pub async fn insert_payments(&self, events: &[PaymentRequested]) -> anyhow::Result<()> {
        for chunk in events.chunks(2_000) {
            let column =
                |f: fn(&PaymentRequested) -> String| chunk.iter().map(f).collect::<Vec<_>>();
            let ids: Vec<Uuid> = chunk
                .iter()
                .map(|e| Uuid::parse_str(&e.payment_id))
                .collect::<Result<_, _>>()?;
            sqlx::query(
                "INSERT INTO payments (id, client_id, merchant_id, customer_id, amount_minor,
                                       currency, payment_method, status)
                 SELECT id, 'anonymous', m, c, a, cur, 'card', 'PENDING'
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::text[])
                      AS t(id, m, c, a, cur)",
            )
            .bind(ids)
            .bind(column(|e| e.merchant_id.clone()))
            .bind(column(|e| e.customer_id.clone()))
            .bind(chunk.iter().map(|e| e.amount_minor).collect::<Vec<_>>())
            .bind(column(|e| e.currency.clone()))
            .execute(&self.pool)
            .await
            .context("inserting the payments")?;
        }
        Ok(())
    }

    /// Queues `event` on `topic` (Avro with `schema`, key, event id and type headers).
    pub async fn produce<T: Serialize>(
        &self,
        topic: &str,
        schema: &SchemaFile,
        key: &str,
        event_id: &str,
        event: &T,
    ) -> anyhow::Result<DeliveryFuture> {
        let value = self.codec.encode(topic, schema, event).await?;
        let mut h = RecordHeaders::default();
        h.set(headers::EVENT_ID, event_id);
        h.set(headers::EVENT_TYPE, schema.full_name);
        Ok(kafka::enqueue(
            &self.producer,
            topic,
            Some(key.as_bytes()),
            Some(value.as_slice()),
            h.to_kafka(),
        )
        .await?)
    }

    /// A payment request on the requested topic, as the relay publishes it.
    pub async fn produce_request(&self, r: &PaymentRequested) -> anyhow::Result<DeliveryFuture> {
        let topic = &self.scratch.requested;
        self.produce(
            topic,
            &PAYMENT_REQUESTED_SCHEMA,
            &r.payment_id,
            &r.event_id,
            r,
        )
        .await
    }

    /// `n` payments pending in Postgres with their requests on the topic, all acknowledged.
    pub async fn prefill_requests(&self, n: usize) -> anyhow::Result<()> {
        let requests = payment_requests(n);
        self.insert_payments(&requests).await?;
        let mut deliveries = Vec::with_capacity(n);
        for r in &requests {
            deliveries.push(self.produce_request(r).await?);
        }
        for d in deliveries {
            kafka::delivered(d).await.context("pre-filling requests")?;
        }
        Ok(())
    }

    /// `n` decided payments on the outcome topic (95 % succeeded), spread over 50 merchants,
    /// as the payment processor commits them; all acknowledged.
    pub async fn prefill_outcomes(&self, n: usize) -> anyhow::Result<()> {
        let topic = &self.scratch.outcomes;
        let mut deliveries = Vec::with_capacity(n);
        for o in payment_outcomes(n) {
            deliveries.push(
                self.produce(
                    topic,
                    &PAYMENT_OUTCOME_SCHEMA,
                    &o.payment_id,
                    &o.event_id,
                    &o,
                )
                .await?,
            );
        }
        for d in deliveries {
            kafka::delivered(d).await.context("pre-filling outcomes")?;
        }
        Ok(())
    }

    /// Reads how far `service`'s group has committed on `topic`.
    pub fn progress(&self, service: &str, topic: &str) -> anyhow::Result<GroupProgress> {
        GroupProgress::new(
            &self.targets.kafka_settings(),
            &self.scratch.group(service),
            topic,
        )
    }
}

/// `n` payment requests, as the gateway would have accepted them.
pub fn payment_requests(n: usize) -> Vec<PaymentRequested> {
    let now = chrono::Utc::now().timestamp_millis();
    (0..n)
        .map(|i| {
            let id = Uuid::now_v7();
            PaymentRequested {
                event_id: events::event_id(id, Step::Requested).to_string(),
                payment_id: id.to_string(),
                client_id: "anonymous".into(),
                merchant_id: format!("m_{}", i % 50),
                customer_id: format!("c_{i}"),
                amount_minor: 100 + (i as i64 % 100_000),
                currency: "EUR".into(),
                payment_method: "card".into(),
                customer_email: None,
                requested_at: now,
            }
        })
        .collect()
}

/// `n` outcomes of fresh payments: one in twenty declined.
pub fn payment_outcomes(n: usize) -> Vec<PaymentOutcome> {
    let now = chrono::Utc::now().timestamp_millis();
    (0..n)
        .map(|i| {
            let id = Uuid::now_v7();
            let declined = i % 20 == 19;
            PaymentOutcome {
                event_id: events::event_id(id, Step::Outcome).to_string(),
                payment_id: id.to_string(),
                merchant_id: format!("m_{}", i % 50),
                customer_id: format!("c_{i}"),
                amount_minor: 100 + (i as i64 % 100_000),
                currency: ["EUR", "USD", "GBP"][i % 3].into(),
                status: if declined {
                    OutcomeStatus::Failed
                } else {
                    OutcomeStatus::Succeeded
                },
                failure_reason: declined.then(|| "insufficient_funds".into()),
                psp_charge_id: (!declined).then(|| format!("ch_{}", id.simple())),
                requested_at: now - 20,
                decided_at: now,
            }
        })
        .collect()
}

/// A consumer group's committed offsets on one topic, read with `OffsetFetch` (no group
/// membership). Under exactly-once the offsets are committed in each batch's transaction, so
/// they count records whose effects are committed.
pub struct GroupProgress {
    consumer: Arc<BaseConsumer>,
    topic: String,
    partitions: Vec<i32>,
}

impl GroupProgress {
    pub fn new(settings: &KafkaSettings, group: &str, topic: &str) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = kafka::client_config(
            settings,
            &[("group.id", group), ("enable.auto.commit", "false")],
        )?
        .create()?;
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let partitions = metadata
            .topics()
            .first()
            .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
            .unwrap_or_default();
        anyhow::ensure!(!partitions.is_empty(), "topic {topic} has no partitions");
        Ok(Self {
            consumer: Arc::new(consumer),
            topic: topic.to_string(),
            partitions,
        })
    }

    /// Sum over partitions of the high watermarks: the end the group has to reach.
    pub async fn end(&self) -> anyhow::Result<i64> {
        let (consumer, topic, partitions) = self.parts();
        tokio::task::spawn_blocking(move || {
            partitions.iter().try_fold(0i64, |sum, p| {
                let (_, high) = consumer.fetch_watermarks(&topic, *p, Duration::from_secs(5))?;
                anyhow::Ok(sum + high)
            })
        })
        .await?
    }

    /// Sum over partitions of the committed offsets (none committed counts as 0).
    pub async fn committed(&self) -> anyhow::Result<i64> {
        let (consumer, topic, partitions) = self.parts();
        tokio::task::spawn_blocking(move || {
            let mut tpl = TopicPartitionList::new();
            for p in &partitions {
                tpl.add_partition(&topic, *p);
            }
            let committed = consumer.committed_offsets(tpl, Duration::from_secs(5))?;
            Ok(committed
                .elements()
                .iter()
                .map(|e| match e.offset() {
                    Offset::Offset(n) => n,
                    _ => 0,
                })
                .sum())
        })
        .await?
    }

    fn parts(&self) -> (Arc<BaseConsumer>, String, Vec<i32>) {
        (
            self.consumer.clone(),
            self.topic.clone(),
            self.partitions.clone(),
        )
    }
}

/// Deletes every topic under the scratch prefix (the services create their retry,
/// dead-letter and output topics there) and drops the scratch schema.
async fn cleanup(kafka_settings: &KafkaSettings, database: &DatabaseSettings, scratch: &Scratch) {
    let listed = kafka::client_config(kafka_settings, &[])
        .and_then(|c| Ok(c.create::<BaseConsumer>()?))
        .and_then(|c| Ok(c.fetch_metadata(None, Duration::from_secs(10))?));
    match listed {
        Ok(metadata) => {
            for t in metadata.topics() {
                if t.name().starts_with(&scratch.prefix) {
                    delete_topic(kafka_settings, t.name()).await;
                }
            }
        }
        Err(e) => eprintln!(
            "could not list the scratch topics {}*: {e:#}",
            scratch.prefix
        ),
    }
    let dropped = async {
        let pool = paystream_core::db::connect(&DatabaseSettings {
            schema: None,
            max_connections: 1,
            ..database.clone()
        })
        .await?;
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {} CASCADE", scratch.schema))
            .execute(&pool)
            .await?;
        pool.close().await;
        anyhow::Ok(())
    };
    if let Err(e) = dropped.await {
        eprintln!("could not drop scratch schema {}: {e:#}", scratch.schema);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_names_share_one_prefix() {
        let s = Scratch::new();
        for name in [&s.requested, &s.outcomes, &s.stats, &s.notifications] {
            assert!(name.starts_with(&s.prefix), "{name}");
        }
        assert!(s.group("notifier").starts_with(&s.prefix));
        assert!(s
            .schema
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_'));
    }

    #[test]
    fn outcomes_are_mostly_successes() {
        let o = payment_outcomes(40);
        let failed = o
            .iter()
            .filter(|o| o.status == OutcomeStatus::Failed)
            .count();
        assert_eq!(failed, 2);
        assert!(o
            .iter()
            .all(|o| (o.status == OutcomeStatus::Failed) == o.failure_reason.is_some()));
    }
}
