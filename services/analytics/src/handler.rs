//! `PaymentRequested` / `PaymentOutcome` → payment facts → recomputed windows → `PaymentStats`.
//!
//! Exactly-once counting: the fact upsert and the window upserts run in the handler's
//! transaction (`ctx.db`), which the runtime commits together with the event's
//! `processed_events` row; a redelivered event is skipped (or has its stored outputs
//! re-produced) and never reaches this code twice. The upserts are idempotent anyway: they
//! set facts and recompute full window state, they never add.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use paystream_core::avro::AvroCodec;
use paystream_core::events::{
    OutcomeStatus, PaymentOutcome, PaymentRequested, PAYMENT_STATS_SCHEMA,
};
use paystream_core::headers;
use paystream_core::processing::{
    event_output, Handled, Handler, HandlerContext, HandlerError, Output,
};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::windows::{self, Granularity};

pub struct AnalyticsHandler {
    pub requested_topic: String,
    pub outcomes_topic: String,
    pub stats_topic: String,
    /// Events whose window closed longer ago than this are logged as late; they still update
    /// their window (upserts of full state make that safe).
    pub allowed_lateness: chrono::Duration,
    /// How long payment facts are kept (`retention.analytics_payments_days`): an event for a
    /// day sealed by it is not applied ([`windows::sealed_before`]).
    pub facts_kept: Option<std::time::Duration>,
}

/// What one event says about its payment.
pub struct Fact {
    payment_id: Uuid,
    merchant_id: String,
    currency: String,
    amount_minor: i64,
    requested_at: DateTime<Utc>,
    outcome: Option<Decision>,
}

struct Decision {
    status: OutcomeStatus,
    failure_reason: Option<String>,
    decided_at: DateTime<Utc>,
}

fn permanent(message: String) -> HandlerError {
    HandlerError::Permanent(anyhow::anyhow!(message))
}

fn parse<T: DeserializeOwned>(value: serde_json::Value, what: &str) -> Result<T, HandlerError> {
    serde_json::from_value(value).map_err(|e| permanent(format!("not a {what}: {e}")))
}

fn payment_uuid(id: &str) -> Result<Uuid, HandlerError> {
    Uuid::parse_str(id).map_err(|e| permanent(format!("payment_id is not a UUID: {e}")))
}

fn time(ms: i64, field: &str) -> Result<DateTime<Utc>, HandlerError> {
    windows::from_millis(ms).ok_or_else(|| permanent(format!("{field} out of range: {ms}")))
}

impl AnalyticsHandler {
    /// The input topic the record came from; retry records carry it in a header.
    fn source_topic<'a>(ctx: &'a HandlerContext<'_>) -> &'a str {
        ctx.record
            .headers
            .get(headers::ORIGINAL_TOPIC)
            .unwrap_or(&ctx.record.topic)
    }

    fn fact(&self, event: serde_json::Value, source: &str) -> Result<Fact, HandlerError> {
        if source == self.requested_topic {
            let e: PaymentRequested = parse(event, "PaymentRequested")?;
            Ok(Fact {
                payment_id: payment_uuid(&e.payment_id)?,
                merchant_id: e.merchant_id,
                currency: e.currency,
                amount_minor: e.amount_minor,
                requested_at: time(e.requested_at, "requested_at")?,
                outcome: None,
            })
        } else if source == self.outcomes_topic {
            let e: PaymentOutcome = parse(event, "PaymentOutcome")?;
            Ok(Fact {
                payment_id: payment_uuid(&e.payment_id)?,
                merchant_id: e.merchant_id,
                currency: e.currency,
                amount_minor: e.amount_minor,
                requested_at: time(e.requested_at, "requested_at")?,
                outcome: Some(Decision {
                    status: e.status,
                    failure_reason: e.failure_reason,
                    decided_at: time(e.decided_at, "decided_at")?,
                }),
            })
        } else {
            Err(permanent(format!("record from unexpected topic {source}")))
        }
    }
}

async fn upsert_fact(db: &mut sqlx::PgConnection, fact: &Fact) -> sqlx::Result<()> {
    // A requested event marks the payment seen; an outcome records the decision. Either may
    // come first (different topics), so both insert the payment's common fields.
    let (status, failure_reason, decided_at) = match &fact.outcome {
        Some(d) => (
            Some(d.status.as_str()),
            d.failure_reason.as_deref(),
            Some(d.decided_at),
        ),
        None => (None, None, None),
    };
    sqlx::query(
        "INSERT INTO analytics_payments
             (payment_id, merchant_id, currency, amount_minor, requested_at, requested_seen,
              status, failure_reason, decided_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (payment_id) DO UPDATE SET
             requested_seen = analytics_payments.requested_seen OR excluded.requested_seen,
             status = coalesce(excluded.status, analytics_payments.status),
             failure_reason = CASE WHEN excluded.status IS NULL
                 THEN analytics_payments.failure_reason ELSE excluded.failure_reason END,
             decided_at = coalesce(excluded.decided_at, analytics_payments.decided_at),
             updated_at = now()",
    )
    .bind(fact.payment_id)
    .bind(&fact.merchant_id)
    .bind(&fact.currency)
    .bind(fact.amount_minor)
    .bind(fact.requested_at)
    .bind(fact.outcome.is_none())
    .bind(status)
    .bind(failure_reason)
    .bind(decided_at)
    .execute(db)
    .await?;
    Ok(())
}

#[async_trait]
impl Handler for AnalyticsHandler {
    type Event = serde_json::Value;
    type Effect = Fact;

    async fn handle(
        &self,
        event: serde_json::Value,
        ctx: &HandlerContext<'_>,
    ) -> Result<Handled<Fact>, HandlerError> {
        let fact = self.fact(event, Self::source_topic(ctx))?;
        if windows::sealed_before(self.facts_kept, Utc::now())
            .is_some_and(|s| fact.requested_at < s)
        {
            // Its window's facts are pruned or about to be: recomputing would lose them.
            tracing::warn!(payment_id = %fact.payment_id, requested_at = %fact.requested_at,
                "event for a sealed analytics day (retention.analytics_payments_days): not counted");
            return Ok(Handled::outputs(Vec::new()));
        }
        let keys = Granularity::ALL
            .iter()
            .map(|g| {
                let (start, _) = g.bounds(fact.requested_at);
                windows::window_key(&fact.merchant_id, &fact.currency, *g, start)
            })
            .collect();
        Ok(Handled::effect(fact).with_state_keys(keys))
    }

    async fn commit(
        &self,
        mut facts: Vec<Fact>,
        db: &mut sqlx::PgConnection,
    ) -> Result<(), HandlerError> {
        // Day locks in one order, so two batches never wait on each other in a cycle.
        facts.sort_by(|a, b| {
            (&a.merchant_id, &a.currency, a.requested_at).cmp(&(
                &b.merchant_id,
                &b.currency,
                b.requested_at,
            ))
        });
        for fact in &facts {
            windows::lock_day(
                &mut *db,
                &fact.merchant_id,
                &fact.currency,
                fact.requested_at,
            )
            .await?;
            upsert_fact(&mut *db, fact).await?;
        }
        Ok(())
    }

    async fn state_outputs(
        &self,
        keys: &[String],
        db: &mut sqlx::PgConnection,
        codec: &AvroCodec,
    ) -> Result<Vec<Output>, HandlerError> {
        let mut outputs = Vec::with_capacity(keys.len());
        for key in keys {
            let (merchant_id, currency, granularity, start) = windows::parse_window_key(key)
                .ok_or_else(|| permanent(format!("not a window key: {key}")))?;
            let (start, end) = granularity.bounds(start);
            let state =
                windows::recompute(&mut *db, &merchant_id, &currency, granularity, start, end)
                    .await?;
            if granularity == Granularity::Minute && Utc::now() - end > self.allowed_lateness {
                tracing::info!(window_start = %start, "late event: updating a closed window");
            }
            let event_id = windows::state_event_id(key, &state);
            outputs.push(
                event_output(
                    codec,
                    &self.stats_topic,
                    &PAYMENT_STATS_SCHEMA,
                    key,
                    event_id,
                    &state.to_event(event_id),
                )
                .await?,
            );
        }
        Ok(outputs)
    }
}
