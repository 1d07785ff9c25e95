//! `PaymentRequested` / `PaymentOutcome` → payment facts → window deltas → `PaymentStats`.
//!
//! `handle` only decodes the event into its [`Fact`] and names the two windows it falls in (the
//! state keys). `commit` runs in the batch's transaction, which also records the events in
//! `processed_events`: the batch's facts are recorded and the ones new to their payment added
//! to their windows ([`facts::record`], [`windows::apply`]) in five statements, whatever the
//! batch size. `state_outputs` runs after the commit, under the runtime's lock per window key,
//! and produces each window's current row with its revision, so the compacted topic's last
//! record of a window is its newest revision even when a Kafka transaction aborts after its
//! database commit.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use paystream_core::avro::AvroCodec;
use paystream_core::events::{PaymentOutcome, PaymentRequested, PAYMENT_STATS_SCHEMA};
use paystream_core::headers;
use paystream_core::processing::{
    event_output, Handled, Handler, HandlerContext, HandlerError, Output,
};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::facts::{self, Decision, Fact};
use crate::windows::{self, Granularity};

pub struct AnalyticsHandler {
    pub requested_topic: String,
    pub outcomes_topic: String,
    pub stats_topic: String,
    /// Events whose window closed longer ago than this are logged as late; they still update
    /// their window (the facts make a late or repeated event count once).
    pub allowed_lateness: chrono::Duration,
    /// How long payment facts are kept (`retention.analytics_payments_days`): an event for a
    /// day sealed by it is not applied ([`windows::sealed_before`]).
    pub facts_kept: Option<std::time::Duration>,
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
            // Its window's facts are pruned or about to be: a repeated fact could count twice.
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
        facts: Vec<Fact>,
        db: &mut sqlx::PgConnection,
    ) -> Result<(), HandlerError> {
        let counted = facts::record(&mut *db, facts).await?;
        windows::apply(db, &windows::deltas(&counted)).await?;
        Ok(())
    }

    async fn state_outputs(
        &self,
        keys: &[String],
        db: &mut sqlx::PgConnection,
        codec: &AvroCodec,
    ) -> Result<Vec<Output>, HandlerError> {
        let states = windows::read(db, keys).await?;
        let mut outputs = Vec::with_capacity(states.len());
        for state in &states {
            let key = state.key().ok_or_else(|| {
                permanent(format!(
                    "stored window of granularity {}",
                    state.granularity
                ))
            })?;
            if state.granularity == Granularity::Minute.as_str()
                && Utc::now() - state.window_end > self.allowed_lateness
            {
                tracing::info!(window_start = %state.window_start, "late event: updated a closed window");
            }
            let event_id = windows::state_event_id(&key, state.revision);
            outputs.push(
                event_output(
                    codec,
                    &self.stats_topic,
                    &PAYMENT_STATS_SCHEMA,
                    &key,
                    event_id,
                    &state.to_event(event_id),
                )
                .await?,
            );
        }
        Ok(outputs)
    }
}
