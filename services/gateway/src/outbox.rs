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

/// Adds the event to the outbox inside the caller's transaction.
pub async fn enqueue_payment_requested(
    conn: &mut sqlx::PgConnection,
    topic: &str,
    event: &PaymentRequested,
    headers: &RecordHeaders,
) -> anyhow::Result<()> {
    let event_id = Uuid::parse_str(&event.event_id)?;
    sqlx::query(
        "INSERT INTO outbox (event_id, topic, message_key, event_type, payload, headers)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(event_id)
    .bind(topic)
    .bind(&event.payment_id)
    .bind(PAYMENT_REQUESTED_SCHEMA.full_name)
    .bind(serde_json::to_value(event)?)
    .bind(serde_json::to_value(headers)?)
    .execute(conn)
    .await?;
    Ok(())
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
    wakeup: Arc<Notify>,
    poll_interval: Duration,
    batch_size: i64,
}

impl OutboxRelay {
    pub fn new(
        pool: PgPool,
        producer: FutureProducer,
        codec: Arc<AvroCodec>,
        wakeup: Arc<Notify>,
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

    /// Publishes until `shutdown`. Shutdown is honoured between batches, also while working
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
                        _ = self.wakeup.notified() => {}
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
