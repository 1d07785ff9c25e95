//! `PaymentRequested` → claim → PSP charge → SUCCEEDED | FAILED → `PaymentOutcome`.
//!
//! No database transaction is open across the PSP call:
//! 1. **claim**, one autocommitted statement: `PENDING → PROCESSING` with `attempts + 1`, a
//!    lease and this instance as `claimed_by`. A claim of this same instance (a redelivery after
//!    its own aborted or cut-short batch) or one whose lease has passed (its holder died) is
//!    taken over.
//! 2. **charge** at the PSP, the payment id as idempotency key: a takeover or a repeat gets the
//!    first call's charge, never a second one.
//! 3. **record** the answer, one autocommitted statement right after the call: the terminal
//!    state, the reason, the charge id, `decided_at` and the outcome's event id.
//!
//! A payment that is not claimable is never charged again ([`after_refused_claim`]): decided,
//! its stored outcome is re-produced field for field (same event id, same `decided_at`);
//! claimed under another instance's live lease, the record is retried later; unknown, it is
//! refused for good.
//!
//! Why the result is recorded per record and not in [`Handler::commit`] with the batch: the
//! answer is durable the moment it is known, so nothing that fails after the charge (encoding
//! the outcome, the batch's abort or deadline, a crash, a takeover) needs the PSP again or can
//! leave a charged payment looking unclaimed; a retry finds it decided and only re-produces its
//! outcome. The cost is one short statement per record, run concurrently with the other keys'
//! records and dwarfed by the PSP call it follows; the batch's one transaction stays as short as
//! its ledger rows.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use paystream_core::events::{
    self, OutcomeStatus, PaymentOutcome, PaymentRequested, Step, PAYMENT_OUTCOME_SCHEMA,
};
use paystream_core::processing::{
    event_output, CallBudget, Handled, Handler, HandlerContext, HandlerError,
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::psp::{Charge, PspClient, PspError};

pub struct PaymentHandler {
    pub psp: PspClient,
    pub outcomes_topic: String,
    /// How long a claim keeps other instances off the payment ([`ClaimSettings::lease`]).
    pub lease: Duration,
}

/// `[processor]`: the claim taken before each PSP call.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct ClaimSettings {
    /// How long a claim is its holder's alone; unset: the PSP call budget + [`LEASE_MARGIN`].
    /// Longer than the call budget (checked at start-up), so a live call's claim does not
    /// lapse; short, because a payment whose holder died waits this long (its record walking
    /// the retry chain) before another instance takes it over. The default lapses before the
    /// dead holder's partitions move (`consumer.session_timeout_ms`, 10 s).
    pub lease_ms: Option<u64>,
}

/// What a default lease adds to the PSP call budget: the claim and record statements around
/// the call.
pub const LEASE_MARGIN: Duration = Duration::from_secs(1);

impl ClaimSettings {
    /// The lease for a PSP call budget of `budget`; refuses one that could lapse while its
    /// holder's call is still running.
    pub fn lease(&self, budget: &CallBudget) -> anyhow::Result<Duration> {
        let Some(ms) = self.lease_ms else {
            return Ok(budget.duration + LEASE_MARGIN);
        };
        anyhow::ensure!(
            Duration::from_millis(ms) > budget.duration,
            "processor.lease_ms ({ms}) must be longer than the PSP call budget ({}: {} ms)",
            budget.what,
            budget.duration.as_millis()
        );
        Ok(Duration::from_millis(ms))
    }
}

/// A payment's recorded decision: what its outcome says.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Decided {
    pub status: String,
    pub failure_reason: Option<String>,
    pub psp_charge_id: Option<String>,
    pub decided_at: Option<DateTime<Utc>>,
}

/// A payment as the claim statement found it when it refused to claim.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Stored {
    #[sqlx(flatten)]
    pub decided: Decided,
    pub claimed_by: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
}

/// What to do with a payment this instance could not claim (`stored`: its row, if any).
pub fn after_refused_claim(
    payment_id: Uuid,
    stored: Option<Stored>,
) -> Result<Decided, HandlerError> {
    // A payment the gateway never recorded is refused before the PSP sees it: an event for it
    // (a foreign or broken producer) must not move money. Found by the Kafka fuzz run.
    let Some(stored) = stored else {
        return Err(HandlerError::Permanent(anyhow::anyhow!(
            "payment {payment_id} is unknown"
        )));
    };
    match stored.decided.status.as_str() {
        "SUCCEEDED" | "FAILED" => Ok(stored.decided),
        // Claimed by another live instance (or released between the claim and this read):
        // the holder decides it; this record comes back through the retry chain and then
        // finds it decided, or the lease lapsed.
        other => Err(HandlerError::Transient(anyhow::anyhow!(
            "payment {payment_id} is {other}, claimed by {} until {}",
            stored.claimed_by.as_deref().unwrap_or("nobody"),
            stored
                .lease_until
                .map_or_else(|| "-".to_string(), |t| t.to_rfc3339())
        ))),
    }
}

/// The terminal state, and its reason, that the PSP's answer makes. `None`: nothing was
/// decided (the PSP was unavailable), the claim is released and the record retried.
pub fn verdict(answer: &Result<Charge, PspError>) -> Option<(OutcomeStatus, Option<String>)> {
    match answer {
        Ok(charge) if charge.succeeded() => Some((OutcomeStatus::Succeeded, None)),
        Ok(charge) => Some((
            OutcomeStatus::Failed,
            Some(
                charge
                    .decline_code
                    .clone()
                    .unwrap_or_else(|| charge.status.clone()),
            ),
        )),
        // The PSP refused the request itself: retrying cannot help, and the payment gets an
        // outcome like any other failure instead of a dead letter.
        Err(PspError::Rejected(detail)) => Some((
            OutcomeStatus::Failed,
            Some(format!("psp_rejected: {detail}")),
        )),
        Err(PspError::Transient(_)) => None,
    }
}

fn outcome_status(payment_id: Uuid, status: &str) -> Result<OutcomeStatus, HandlerError> {
    match status {
        "SUCCEEDED" => Ok(OutcomeStatus::Succeeded),
        "FAILED" => Ok(OutcomeStatus::Failed),
        other => Err(HandlerError::Transient(anyhow::anyhow!(
            "payment {payment_id} is still {other}"
        ))),
    }
}

/// A payment decided before `decided_at` existed was decided when it was last updated: the
/// same instant each time its outcome is produced again.
const DECIDED_COLUMNS: &str =
    "status, failure_reason, psp_charge_id, coalesce(decided_at, updated_at) AS decided_at";

impl PaymentHandler {
    /// Claims the payment for `instance`; `false` if it is not claimable.
    async fn claim(&self, pool: &PgPool, payment_id: Uuid, instance: &str) -> sqlx::Result<bool> {
        let claimed = sqlx::query(
            "UPDATE payments
             SET status = 'PROCESSING', attempts = attempts + 1, claimed_by = $2,
                 lease_until = now() + make_interval(secs => $3), updated_at = now()
             WHERE id = $1 AND (status = 'PENDING' OR (status = 'PROCESSING'
                 AND (lease_until < now() OR claimed_by = $2)))",
        )
        .bind(payment_id)
        .bind(instance)
        .bind(self.lease.as_secs_f64())
        .execute(pool)
        .await?
        .rows_affected();
        Ok(claimed == 1)
    }

    async fn stored(pool: &PgPool, payment_id: Uuid) -> sqlx::Result<Option<Stored>> {
        sqlx::query_as(&format!(
            "SELECT {DECIDED_COLUMNS}, claimed_by, lease_until FROM payments WHERE id = $1"
        ))
        .bind(payment_id)
        .fetch_optional(pool)
        .await
    }

    /// Gives the claim back after a PSP outage, so the retry (on any instance) claims at once
    /// instead of waiting for the lease.
    async fn release(pool: &PgPool, payment_id: Uuid, instance: &str) -> sqlx::Result<()> {
        sqlx::query(
            "UPDATE payments SET status = 'PENDING', lease_until = NULL, claimed_by = NULL,
                 updated_at = now()
             WHERE id = $1 AND status = 'PROCESSING' AND claimed_by = $2",
        )
        .bind(payment_id)
        .bind(instance)
        .execute(pool)
        .await?;
        Ok(())
    }

    /// Records the decision while the claim is still this instance's; returns the payment's
    /// decision as stored (another instance's, the same charge, if the lease lapsed and it
    /// recorded first).
    async fn record(
        pool: &PgPool,
        payment_id: Uuid,
        instance: &str,
        status: OutcomeStatus,
        reason: Option<String>,
        charge_id: Option<String>,
    ) -> Result<Decided, HandlerError> {
        let moved: Option<Decided> = sqlx::query_as(&format!(
            "UPDATE payments SET status = $3, failure_reason = $4, psp_charge_id = $5,
                 outcome_event_id = $6, decided_at = now(), lease_until = NULL, updated_at = now()
             WHERE id = $1 AND status = 'PROCESSING' AND claimed_by = $2
             RETURNING {DECIDED_COLUMNS}"
        ))
        .bind(payment_id)
        .bind(instance)
        .bind(status.as_str())
        .bind(reason)
        .bind(charge_id)
        .bind(events::event_id(payment_id, Step::Outcome))
        .fetch_optional(pool)
        .await?;
        match moved {
            Some(d) => Ok(d),
            None => after_refused_claim(payment_id, Self::stored(pool, payment_id).await?),
        }
    }
}

#[async_trait]
impl Handler for PaymentHandler {
    type Event = PaymentRequested;
    type Effect = ();

    fn call_budget(&self) -> Option<CallBudget> {
        Some(self.psp.settings().call_budget())
    }

    async fn handle(
        &self,
        event: PaymentRequested,
        ctx: &HandlerContext<'_>,
    ) -> Result<Handled<()>, HandlerError> {
        let payment_id = Uuid::parse_str(&event.payment_id).map_err(|e| {
            HandlerError::Permanent(anyhow::anyhow!("payment_id is not a UUID: {e}"))
        })?;
        let decided = if self.claim(ctx.pool, payment_id, ctx.instance).await? {
            let answer = self.psp.charge(&event).await;
            let Some((status, reason)) = verdict(&answer) else {
                Self::release(ctx.pool, payment_id, ctx.instance).await?;
                let e = answer.err().map(anyhow::Error::from);
                return Err(HandlerError::Transient(
                    e.unwrap_or_else(|| anyhow::anyhow!("PSP unavailable")),
                ));
            };
            let charge_id = answer.ok().map(|c| c.charge_id);
            Self::record(
                ctx.pool,
                payment_id,
                ctx.instance,
                status,
                reason,
                charge_id,
            )
            .await?
        } else {
            let decided =
                after_refused_claim(payment_id, Self::stored(ctx.pool, payment_id).await?)?;
            tracing::info!(%payment_id, status = %decided.status,
                "payment already decided; its outcome is produced again without a charge");
            decided
        };
        let status = outcome_status(payment_id, &decided.status)?;
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
            decided_at: decided
                .decided_at
                .map_or_else(|| Utc::now().timestamp_millis(), |t| t.timestamp_millis()),
        };
        // The payment is decided (and maybe charged) by now: whatever fails here is transient,
        // never a dead letter of a charged payment. The retry finds it decided and re-produces
        // this outcome.
        let output = event_output(
            ctx.codec,
            &self.outcomes_topic,
            &PAYMENT_OUTCOME_SCHEMA,
            &event.payment_id,
            event_id,
            &outcome,
        )
        .await
        .map_err(|e| match e {
            HandlerError::Permanent(e) => HandlerError::Transient(e),
            other => other,
        })?;
        Ok(Handled::outputs(vec![output]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(status: &str) -> Stored {
        Stored {
            decided: Decided {
                status: status.into(),
                failure_reason: (status == "FAILED").then(|| "card_declined".into()),
                psp_charge_id: Some("ch_1".into()),
                decided_at: Some(Utc::now()),
            },
            claimed_by: Some("processor-a".into()),
            lease_until: Some(Utc::now()),
        }
    }

    #[test]
    fn an_unknown_payment_is_refused_for_good() {
        let id = Uuid::new_v4();
        let err = after_refused_claim(id, None).unwrap_err();
        assert!(matches!(err, HandlerError::Permanent(_)));
        assert!(err.to_string().contains("is unknown"), "{err}");
    }

    #[test]
    fn a_decided_payment_gives_its_stored_decision_without_a_charge() {
        for status in ["SUCCEEDED", "FAILED"] {
            let s = stored(status);
            assert_eq!(
                after_refused_claim(Uuid::new_v4(), Some(s.clone())).unwrap(),
                s.decided
            );
        }
    }

    #[test]
    fn a_payment_claimed_elsewhere_is_retried_later() {
        for status in ["PROCESSING", "PENDING"] {
            let err = after_refused_claim(Uuid::new_v4(), Some(stored(status))).unwrap_err();
            assert!(matches!(err, HandlerError::Transient(_)), "{status}");
            assert!(err.to_string().contains("processor-a"), "{err}");
        }
    }

    fn charge(status: &str, decline_code: Option<&str>) -> Result<Charge, PspError> {
        Ok(Charge {
            charge_id: "ch_1".into(),
            status: status.into(),
            decline_code: decline_code.map(Into::into),
        })
    }

    #[test]
    fn the_psp_answer_decides_and_an_outage_decides_nothing() {
        assert_eq!(
            verdict(&charge("succeeded", None)),
            Some((OutcomeStatus::Succeeded, None))
        );
        assert_eq!(
            verdict(&charge("declined", Some("insufficient_funds"))),
            Some((OutcomeStatus::Failed, Some("insufficient_funds".into())))
        );
        let rejected = verdict(&Err(PspError::Rejected("HTTP 422: reused".into())));
        assert_eq!(
            rejected,
            Some((
                OutcomeStatus::Failed,
                Some("psp_rejected: HTTP 422: reused".into())
            ))
        );
        assert_eq!(verdict(&Err(PspError::Transient("timeout".into()))), None);
    }

    #[test]
    fn the_lease_must_outlast_the_psp_call_budget() {
        let budget = crate::psp::PspSettings::default().call_budget();
        assert_eq!(
            ClaimSettings::default().lease(&budget).unwrap(),
            Duration::from_millis(6_000)
        );
        let set = ClaimSettings {
            lease_ms: Some(20_000),
        };
        assert_eq!(set.lease(&budget).unwrap(), Duration::from_secs(20));
        let short = ClaimSettings {
            lease_ms: Some(5_000),
        }
        .lease(&budget)
        .unwrap_err();
        let message = short.to_string();
        assert!(
            message.contains("processor.lease_ms") && message.contains("psp.timeout_ms"),
            "{message}"
        );
    }
}
