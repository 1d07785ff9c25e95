//! `PaymentRequested` → PSP charge → PENDING to SUCCEEDED | FAILED → `PaymentOutcome`.

use async_trait::async_trait;
use chrono::Utc;
use paystream_core::events::{
    self, OutcomeStatus, PaymentOutcome, PaymentRequested, Step, PAYMENT_OUTCOME_SCHEMA,
};
use paystream_core::processing::{event_output, Handled, Handler, HandlerContext, HandlerError};
use uuid::Uuid;

use crate::psp::{PspClient, PspError};

pub struct PaymentHandler {
    pub psp: PspClient,
    pub outcomes_topic: String,
}

#[derive(sqlx::FromRow)]
struct Decided {
    status: String,
    failure_reason: Option<String>,
    psp_charge_id: Option<String>,
}

#[async_trait]
impl Handler for PaymentHandler {
    type Event = PaymentRequested;
    type Effect = ();

    async fn handle(
        &self,
        event: PaymentRequested,
        ctx: &HandlerContext<'_>,
    ) -> Result<Handled<()>, HandlerError> {
        let payment_id = Uuid::parse_str(&event.payment_id).map_err(|e| {
            HandlerError::Permanent(anyhow::anyhow!("payment_id is not a UUID: {e}"))
        })?;
        // A payment the gateway never recorded is refused before the PSP sees it: an event for
        // it (a foreign or broken producer) must not move money. Found by the Kafka fuzz run.
        let known: Option<String> = sqlx::query_scalar("SELECT status FROM payments WHERE id = $1")
            .bind(payment_id)
            .fetch_optional(ctx.pool)
            .await?;
        if known.is_none() {
            return Err(HandlerError::Permanent(anyhow::anyhow!(
                "payment {payment_id} is unknown"
            )));
        }
        let charge = self.psp.charge(&event).await.map_err(|e| match e {
            PspError::Transient(_) => HandlerError::Transient(e.into()),
            PspError::Rejected(_) => HandlerError::Permanent(e.into()),
        })?;
        let (status, reason) = if charge.succeeded() {
            (OutcomeStatus::Succeeded, None)
        } else {
            (
                OutcomeStatus::Failed,
                Some(
                    charge
                        .decline_code
                        .clone()
                        .unwrap_or_else(|| charge.status.clone()),
                ),
            )
        };

        // Conditional transition: only a PENDING payment moves. If it already moved (an
        // operator, or an older processing), the outcome reports the recorded state.
        let moved: Option<Decided> = sqlx::query_as(
            "UPDATE payments SET status = $2, failure_reason = $3, psp_charge_id = $4, updated_at = now()
             WHERE id = $1 AND status = 'PENDING'
             RETURNING status, failure_reason, psp_charge_id",
        )
        .bind(payment_id)
        .bind(status.as_str())
        .bind(&reason)
        .bind(&charge.charge_id)
        .fetch_optional(ctx.pool)
        .await?;
        let decided = match moved {
            Some(d) => d,
            None => sqlx::query_as(
                "SELECT status, failure_reason, psp_charge_id FROM payments WHERE id = $1",
            )
            .bind(payment_id)
            .fetch_optional(ctx.pool)
            .await?
            .ok_or_else(|| {
                HandlerError::Permanent(anyhow::anyhow!("payment {payment_id} is unknown"))
            })?,
        };
        let status = match decided.status.as_str() {
            "SUCCEEDED" => OutcomeStatus::Succeeded,
            "FAILED" => OutcomeStatus::Failed,
            other => {
                return Err(HandlerError::Transient(anyhow::anyhow!(
                    "payment {payment_id} is still {other}"
                )))
            }
        };
        tracing::info!(%payment_id, status = status.as_str(), "payment decided");

        let event_id = events::event_id(payment_id, Step::Outcome);
        let outcome = PaymentOutcome {
            event_id: event_id.to_string(),
            payment_id: event.payment_id.clone(),
            merchant_id: event.merchant_id,
            customer_id: event.customer_id,
            amount_minor: event.amount_minor,
            currency: event.currency,
            status,
            failure_reason: decided.failure_reason,
            psp_charge_id: decided.psp_charge_id,
            requested_at: event.requested_at,
            decided_at: Utc::now().timestamp_millis(),
        };
        let output = event_output(
            ctx.codec,
            &self.outcomes_topic,
            &PAYMENT_OUTCOME_SCHEMA,
            &event.payment_id,
            event_id,
            &outcome,
        )
        .await?;
        Ok(Handled::outputs(vec![output]))
    }
}
