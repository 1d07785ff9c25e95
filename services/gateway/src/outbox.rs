//! The transactional outbox: rows written with the payment, published to Kafka by a relay.
//!
//! The relay takes unpublished rows in id order with `FOR UPDATE SKIP LOCKED` (so several
//! gateway replicas share the work without publishing a row twice concurrently), produces them
//! with the idempotent producer, waits for every acknowledgement and only then marks the rows
//! published, in the same database transaction that locked them. A crash between the broker's
//! acknowledgement and that commit republishes the row: a duplicate with the same event id,
//! which consumers dedupe. So every accepted payment reaches Kafka at least once, and its
//! effects happen exactly once.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use paystream_core::avro::AvroCodec;
use paystream_core::events::{PaymentRequested, PAYMENT_REQUESTED_SCHEMA};
use paystream_core::headers::RecordHeaders;
use paystream_core::kafka;
use paystream_core::shutdown::Shutdown;
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

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

    /// Publishes until `shutdown`, then makes one last pass so committed rows go out now
    /// rather than at the next start.
    pub async fn run(self, shutdown: Shutdown) {
        let mut backoff = self.poll_interval;
        loop {
            match self.publish_batch().await {
                Ok(n) if n as i64 == self.batch_size => continue,
                Ok(_) => {
                    backoff = self.poll_interval;
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = self.wakeup.notified() => {}
                        _ = tokio::time::sleep(self.poll_interval) => {}
                    }
                }
                Err(e) => {
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

    /// Publishes one batch; returns how many rows it published.
    pub async fn publish_batch(&self) -> anyhow::Result<usize> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "SELECT id, event_id, topic, message_key, event_type, payload, headers
             FROM outbox WHERE published_at IS NULL
             ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(self.batch_size)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut deliveries = Vec::with_capacity(rows.len());
        for row in &rows {
            let value = self.encode(row).await?;
            let mut headers: RecordHeaders = serde_json::from_value(row.headers.clone())
                .with_context(|| format!("outbox row {} has invalid headers", row.id))?;
            headers.set(paystream_core::headers::EVENT_ID, row.event_id.to_string());
            headers.set(paystream_core::headers::EVENT_TYPE, row.event_type.clone());
            let delivery = kafka::enqueue(
                &self.producer,
                &row.topic,
                Some(row.message_key.as_bytes()),
                Some(&value),
                headers.to_kafka(),
            )
            .await?;
            deliveries.push(delivery);
        }
        for delivery in deliveries {
            kafka::delivered(delivery)
                .await
                .context("broker did not acknowledge")?;
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::debug!(rows = rows.len(), "outbox rows published");
        Ok(rows.len())
    }

    async fn encode(&self, row: &OutboxRow) -> anyhow::Result<Vec<u8>> {
        match row.event_type.as_str() {
            t if t == PAYMENT_REQUESTED_SCHEMA.full_name => {
                let event: PaymentRequested = serde_json::from_value(row.payload.clone())
                    .with_context(|| format!("outbox row {} is not a PaymentRequested", row.id))?;
                Ok(self
                    .codec
                    .encode(&row.topic, &PAYMENT_REQUESTED_SCHEMA, &event)
                    .await?)
            }
            other => anyhow::bail!("outbox row {} has unknown event type {other}", row.id),
        }
    }
}
