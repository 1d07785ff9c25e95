//! The transactional outbox: rows written with the payment, published to Kafka by a relay.
//!
//! The relay takes unpublished rows in id order with `FOR UPDATE SKIP LOCKED` (so several
//! gateway replicas share the work without publishing a row twice concurrently), produces them
//! with the idempotent producer, waits for every acknowledgement and only then marks the rows
//! published, in the same database transaction that locked them. A crash between the broker's
//! acknowledgement and that commit republishes the row: a duplicate with the same event id,
//! which consumers dedupe. So every accepted payment reaches Kafka at least once, and its
//! effects happen exactly once.
//!
//! A row that can never be published (undecodable payload or headers, unknown event type, a
//! value the registered schema refuses) is *parked*: `parked_at` and `last_error` are set, it is
//! logged and counted, and the relay goes on with the rows after it. Parked rows are never
//! deleted; an operator releases one by clearing `parked_at`. Failures that are not about one
//! row (broker or registry unreachable, schema rejected) stop the pass and are retried with
//! back-off. Rows acknowledged before such a failure are still marked published, so a partial
//! failure does not publish them again.
//!
//! A relay does not wait for its next poll to publish a committed row: the commit wakes it
//! ([`Wakeup`]): the relay of the same process at once, the relays of other replicas through
//! Postgres `LISTEN`/`NOTIFY` ([`Announcer`], [`Listener`]). Polling
//! (`gateway.outbox_poll_interval_ms`) remains as the fallback bound for rows no wake-up
//! announced (a replica that crashed after its commit, a listener that was reconnecting).
//!
//! Published rows are pruned `retention.outbox_days` after their publication
//! ([`retention_rule`]).

use std::sync::Arc;
use std::time::Duration;

use paystream_core::avro::AvroCodec;
use paystream_core::events::{PaymentRequested, PAYMENT_REQUESTED_SCHEMA};
use paystream_core::headers::RecordHeaders;
use paystream_core::kafka;
use paystream_core::retention::{RetentionSettings, Rule};
use paystream_core::shutdown::Shutdown;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{DeliveryFuture, FutureProducer};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

/// Published rows, `retention.outbox_days` after the broker acknowledged them: the record is
/// on the topic then, and nothing reads the row again (consumers dedupe by event id in their
/// own ledger). Unpublished rows, parked ones among them, have no `published_at` and never
/// match.
pub fn retention_rule(settings: &RetentionSettings) -> Rule {
    Rule {
        table: "outbox",
        setting: "retention.outbox_days",
        keep: RetentionSettings::keep(settings.outbox_days),
        condition: "published_at < $1",
        scope: None,
        dedupe: false,
    }
}

/// The outbox row of `event`, as JSON with the table's column names: written with the payment
/// by the database function `idempotent_payment` (`crate::idempotency::execute`).
pub fn payment_requested_row(
    topic: &str,
    event: &PaymentRequested,
    headers: &RecordHeaders,
) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::json!({
        "event_id": Uuid::parse_str(&event.event_id)?,
        "topic": topic,
        "message_key": event.payment_id,
        "event_type": PAYMENT_REQUESTED_SCHEMA.full_name,
        "payload": event,
        "headers": headers,
    }))
}

/// How a commit that wrote outbox rows wakes the relays without waiting for their next poll:
/// this process's relay at once (in process), the other replicas' through the [`Announcer`]'s
/// `NOTIFY` after the commit, which their [`Listener`]s turn into the same wake-up. Polling
/// (`gateway.outbox_poll_interval_ms`) stays as the bound for whatever a wake-up misses: rows of
/// a replica that crashed before announcing, notifications lost while a listener reconnected.
#[derive(Debug, Default)]
pub struct Wakeup {
    relay: Notify,
    announce: Notify,
}

impl Wakeup {
    /// Called after a commit that wrote outbox rows. Cheap and never blocks: a `Notify` keeps
    /// one permit, so a burst of commits costs one relay pass and one `NOTIFY`.
    pub fn committed(&self) {
        self.relay.notify_one();
        self.announce.notify_one();
    }
}

/// The Postgres channel of the outbox in this database and schema (replicas on other schemas,
/// tests among them, do not wake each other). At most 63 bytes, Postgres's identifier limit.
pub async fn channel(pool: &PgPool) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT left('paystream_outbox.' || current_schema(), 63)")
        .fetch_one(pool)
        .await
}

/// Tells the other replicas' relays that this one committed outbox rows: `NOTIFY` on the
/// outbox [`channel`] with this process's id as payload, in a transaction of its own after the
/// commit. Not in the payment's transaction on purpose: Postgres serialises the commits of all
/// transactions that notify (a database-wide lock held until the commit is flushed), which
/// would cap payments at one commit flush each; here at most one `NOTIFY` per replica is in
/// flight, and the commits that came meanwhile share the next one.
pub struct Announcer {
    pub pool: PgPool,
    pub channel: String,
    pub instance: String,
    pub wakeup: Arc<Wakeup>,
}

impl Announcer {
    pub async fn run(self, shutdown: Shutdown) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wakeup.announce.notified() => {}
            }
            if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(&self.channel)
                .bind(&self.instance)
                .execute(&self.pool)
                .await
            {
                tracing::warn!(error = %e, "announcing outbox rows failed; other replicas poll for them");
            }
        }
    }
}

/// Wakes this process's relay when another replica announces outbox rows (`LISTEN` on the
/// outbox [`channel`]; its own announcements are skipped, the relay was woken in process). It
/// holds one pool connection. A lost connection is re-established and followed by one relay
/// pass, since announcements made meanwhile were lost.
pub struct Listener {
    pub pool: PgPool,
    pub channel: String,
    pub instance: String,
    pub wakeup: Arc<Wakeup>,
}

impl Listener {
    /// Pause before listening again after a failure (the relay still polls meanwhile).
    const RETRY: Duration = Duration::from_secs(2);

    pub async fn run(self, shutdown: Shutdown) {
        let mut reconnecting = false;
        loop {
            let failed = tokio::select! {
                _ = shutdown.cancelled() => return,
                failed = self.listen(reconnecting) => failed,
            };
            tracing::warn!(error = %failed, "listening for outbox announcements failed; retrying");
            reconnecting = true;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Self::RETRY) => {}
            }
        }
    }

    /// Forwards announcements to the relay until the connection fails for good.
    async fn listen(&self, reconnecting: bool) -> sqlx::Error {
        let mut listener = match PgListener::connect_with(&self.pool).await {
            Ok(listener) => listener,
            Err(e) => return e,
        };
        if let Err(e) = listener.listen(&self.channel).await {
            return e;
        }
        if reconnecting {
            self.wakeup.relay.notify_one();
        }
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) if n.payload() == self.instance => {}
                // Another replica's rows, or (`None`) a connection lost and re-established,
                // with whatever was announced meanwhile.
                Ok(_) => self.wakeup.relay.notify_one(),
                Err(e) => return e,
            }
        }
    }
}

#[derive(sqlx::FromRow)]
struct OutboxRow {
    id: i64,
    event_id: Uuid,
    topic: String,
    message_key: String,
    event_type: String,
    payload: serde_json::Value,
    headers: serde_json::Value,
}

/// Why a row could not be handed to the producer.
#[derive(Debug, thiserror::Error)]
enum RowError {
    /// Nothing about this row will ever change by retrying: park it.
    #[error("{0}")]
    Unpublishable(String),
    /// Not the row's fault (registry down, schema rejected): stop the pass and retry later.
    #[error(transparent)]
    Pass(#[from] anyhow::Error),
}

/// Unpublished rows, sampled for the metrics.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub struct Backlog {
    pub pending: i64,
    pub oldest_age_seconds: f64,
    pub parked: i64,
}

/// The backlog in two index-only-sized queries (the partial indexes of pending and parked rows).
pub async fn backlog(pool: &PgPool) -> Result<Backlog, sqlx::Error> {
    sqlx::query_as(
        "SELECT pending.n AS pending, pending.age AS oldest_age_seconds, parked.n AS parked
         FROM (SELECT count(*) AS n,
                      COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8 AS age
               FROM outbox WHERE published_at IS NULL AND parked_at IS NULL) pending,
              (SELECT count(*) AS n FROM outbox
               WHERE published_at IS NULL AND parked_at IS NOT NULL) parked",
    )
    .fetch_one(pool)
    .await
}

pub struct OutboxRelay {
    pool: PgPool,
    producer: FutureProducer,
    codec: Arc<AvroCodec>,
    wakeup: Arc<Wakeup>,
    poll_interval: Duration,
    batch_size: i64,
}

impl OutboxRelay {
    pub fn new(
        pool: PgPool,
        producer: FutureProducer,
        codec: Arc<AvroCodec>,
        wakeup: Arc<Wakeup>,
        poll_interval: Duration,
        batch_size: i64,
    ) -> Self {
        Self {
            pool,
            producer,
            codec,
            wakeup,
            poll_interval,
            batch_size,
        }
    }

    /// Publishes until `shutdown`, waiting between passes until a commit wakes it ([`Wakeup`])
    /// or the poll interval passes. Shutdown is honoured between batches, also while working
    /// through a backlog: the batch in flight is settled (acknowledged and marked in its own
    /// transaction) and the rest of the backlog stays in the table for another replica or the
    /// next start. Otherwise (idle, or backing off after a failure) it makes one last pass so
    /// rows committed during shutdown go out now rather than at the next start.
    pub async fn run(self, shutdown: Shutdown) {
        let mut backoff = self.poll_interval;
        loop {
            match self.publish_batch().await {
                Ok(n) if n as i64 == self.batch_size => {
                    if shutdown.is_cancelled() {
                        tracing::info!(
                            "outbox relay stopping with a backlog; the remaining rows stay for the next start"
                        );
                        return;
                    }
                }
                Ok(_) => {
                    backoff = self.poll_interval;
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = self.wakeup.relay.notified() => {}
                        _ = tokio::time::sleep(self.poll_interval) => {}
                    }
                }
                Err(e) => {
                    crate::metrics::outbox_relay_failure();
                    tracing::warn!(error = %format!("{e:#}"), "outbox relay failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        if let Err(e) = self.publish_batch().await {
            tracing::warn!(error = %format!("{e:#}"), "final outbox pass failed; rows stay for the next start");
        }
    }

    /// Publishes one batch; returns how many rows it settled (published or parked). Rows
    /// acknowledged before a failure are marked published before the failure is returned.
    pub async fn publish_batch(&self) -> anyhow::Result<usize> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "SELECT id, event_id, topic, message_key, event_type, payload, headers
             FROM outbox WHERE published_at IS NULL AND parked_at IS NULL
             ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(self.batch_size)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut failure = None;
        let mut parked = Vec::new();
        let mut deliveries = Vec::with_capacity(rows.len());
        for row in &rows {
            match self.enqueue(row).await {
                Ok(delivery) => deliveries.push((row.id, delivery)),
                Err(RowError::Unpublishable(reason)) => parked.push((row, reason)),
                Err(RowError::Pass(e)) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let mut published = Vec::with_capacity(deliveries.len());
        for (id, delivery) in deliveries {
            match kafka::delivered(delivery).await {
                Ok(()) => published.push(id),
                Err(e) => {
                    failure.get_or_insert_with(|| {
                        anyhow::Error::new(e)
                            .context(format!("broker did not acknowledge row {id}"))
                    });
                }
            }
        }
        sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
            .bind(&published)
            .execute(&mut *tx)
            .await?;
        for (row, reason) in &parked {
            sqlx::query("UPDATE outbox SET parked_at = now(), last_error = $2 WHERE id = $1")
                .bind(row.id)
                .bind(reason)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        for (row, reason) in &parked {
            crate::metrics::outbox_parked();
            tracing::error!(
                outbox.id = row.id,
                event.id = %row.event_id,
                payment.id = %row.message_key,
                error = %reason,
                "outbox row can never be published; parked (set parked_at = NULL to retry it)"
            );
        }
        crate::metrics::outbox_published(published.len());
        tracing::debug!(
            published = published.len(),
            parked = parked.len(),
            "outbox pass done"
        );
        match failure {
            Some(e) => Err(e),
            None => Ok(published.len() + parked.len()),
        }
    }

    /// Encodes a row and queues it on the producer.
    async fn enqueue(&self, row: &OutboxRow) -> Result<DeliveryFuture, RowError> {
        let value = self.encode(row).await?;
        let mut headers: RecordHeaders = serde_json::from_value(row.headers.clone())
            .map_err(|e| RowError::Unpublishable(format!("invalid headers: {e}")))?;
        headers.set(paystream_core::headers::EVENT_ID, row.event_id.to_string());
        headers.set(paystream_core::headers::EVENT_TYPE, row.event_type.clone());
        kafka::enqueue(
            &self.producer,
            &row.topic,
            Some(row.message_key.as_bytes()),
            Some(&value),
            headers.to_kafka(),
        )
        .await
        .map_err(|e| match e.rdkafka_error_code() {
            // Refused by the client itself, for this record only.
            Some(RDKafkaErrorCode::MessageSizeTooLarge) => {
                RowError::Unpublishable(format!("record too large: {e}"))
            }
            _ => RowError::Pass(anyhow::Error::new(e).context("queueing the record")),
        })
    }

    async fn encode(&self, row: &OutboxRow) -> Result<Vec<u8>, RowError> {
        let schema = match row.event_type.as_str() {
            t if t == PAYMENT_REQUESTED_SCHEMA.full_name => &PAYMENT_REQUESTED_SCHEMA,
            other => {
                return Err(RowError::Unpublishable(format!(
                    "unknown event type `{other}`"
                )))
            }
        };
        let event: PaymentRequested = serde_json::from_value(row.payload.clone()).map_err(|e| {
            RowError::Unpublishable(format!("payload is not a {}: {e}", schema.full_name))
        })?;
        match self.codec.encode(&row.topic, schema, &event).await {
            Ok(value) => Ok(value),
            Err(e) if e.is_transient() => Err(RowError::Pass(e.into())),
            // The registry accepting the schema again means the value was at fault.
            Err(e) => match self.codec.register(&row.topic, schema).await {
                Ok(_) => Err(RowError::Unpublishable(format!("value refused: {e}"))),
                Err(_) => Err(RowError::Pass(
                    anyhow::Error::new(e).context("encoding with the registered schema"),
                )),
            },
        }
    }
}
