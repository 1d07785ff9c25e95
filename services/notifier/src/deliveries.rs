//! The delivery ledger: a claim per (outcome event, channel) committed before sending, and its
//! result committed right after, each in its own transaction on the pool. A claim is leased to
//! the instance that took it ([`claim`]): another instance does not resend under a live lease.
//!
//! Why not in the handler's transaction: a handler sends on two channels; if the second fails,
//! the handler's transaction rolls back, and a "delivered" mark made in it would vanish with it,
//! so the next attempt would send the first channel again. Committing the result on its own
//! makes every accepted send permanent the moment it is known.
//!
//! Settled rows (delivered or failed) are pruned `retention.notification_deliveries_days` after
//! they settled ([`retention_rule`]); a claim in flight is never pruned.

use std::time::Duration;

use chrono::{DateTime, Utc};
use paystream_core::retention::{RetentionSettings, Rule};
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Webhook,
    Email,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Webhook => "webhook",
            Channel::Email => "email",
        }
    }

    /// The channel named `s` ([`Channel::as_str`]).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "webhook" => Some(Channel::Webhook),
            "email" => Some(Channel::Email),
            _ => None,
        }
    }
}

/// What the ledger says to do for one (event, channel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Send now. `in_doubt`: an earlier send was claimed and never resolved (its sender died,
    /// or this instance's own batch was aborted), so the receiver may already have it; the
    /// resend carries the same event id / Message-ID.
    Send { attempts: i32, in_doubt: bool },
    /// Already accepted by the receiver: do not send again.
    Delivered(Delivered),
    /// Another live instance is sending it now: do not send; try again later.
    Held { by: String, until: DateTime<Utc> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub target: String,
    pub attempts: i32,
    pub in_doubt_resends: i32,
    pub delivered_at: DateTime<Utc>,
}

/// Settled deliveries, counted from when they settled (a failed one from its last claim). A
/// delivered row is what stops a second send when its event comes back without a
/// `processed_events` row (a dead letter replayed after its other channel failed), so it is a
/// deduplication ledger, held to the group's topics like `processed_events`. A `sending` row
/// is a claim whose result is not known yet: never pruned.
pub fn retention_rule(settings: &RetentionSettings) -> Rule {
    Rule {
        table: "notification_deliveries",
        setting: "retention.notification_deliveries_days",
        keep: RetentionSettings::keep(settings.notification_deliveries_days),
        // Written as migration 20261201000900's partial index is, so the purge can use it.
        condition: "status <> 'sending' AND coalesce(delivered_at, claimed_at) < $1",
        scope: None,
        dedupe: true,
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct Row {
    status: String,
    target: String,
    attempts: i32,
    in_doubt_resends: i32,
    delivered_at: Option<DateTime<Utc>>,
}

impl Row {
    fn delivered(self) -> Delivered {
        Delivered {
            target: self.target,
            attempts: self.attempts,
            in_doubt_resends: self.in_doubt_resends,
            delivered_at: self.delivered_at.unwrap_or_else(Utc::now),
        }
    }
}

/// An existing row, as the claim finds it.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Existing {
    #[sqlx(flatten)]
    row: Row,
    claimed_by: Option<String>,
    lease_until: Option<DateTime<Utc>>,
    /// `lease_until > now()` by the database's clock, the one every instance's leases use.
    lease_live: bool,
}

/// What a claim does with an existing row: `Ok(in_doubt)` to (re)claim and send, `Err` not to.
fn decide(existing: Existing, instance: &str) -> Result<bool, Claim> {
    match existing.row.status.as_str() {
        "delivered" => Err(Claim::Delivered(existing.row.delivered())),
        "sending" => match existing.claimed_by {
            // Another instance's live claim: it may be mid-send. Sending too would deliver
            // twice; waiting for it here would hold the batch.
            Some(by) if existing.lease_live && by != instance => Err(Claim::Held {
                until: existing.lease_until.unwrap_or_else(Utc::now),
                by,
            }),
            // A lapsed lease (its sender died) or this instance's own claim (its batch was
            // aborted or it restarted): the send's result is unknown.
            _ => Ok(true),
        },
        // 'failed': the receiver refused or could not be reached; a plain retry.
        _ => Ok(false),
    }
}

/// Claims (event, channel) for a send to `target` by `instance` for `lease`, committed before
/// this returns.
pub async fn claim(
    pool: &PgPool,
    event_id: Uuid,
    channel: Channel,
    payment_id: Uuid,
    target: &str,
    instance: &str,
    lease: Duration,
) -> sqlx::Result<Claim> {
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO notification_deliveries
             (event_id, channel, payment_id, target, status, claimed_by, lease_until)
         VALUES ($1, $2, $3, $4, 'sending', $5, now() + make_interval(secs => $6))
         ON CONFLICT (event_id, channel) DO NOTHING",
    )
    .bind(event_id)
    .bind(channel.as_str())
    .bind(payment_id)
    .bind(target)
    .bind(instance)
    .bind(lease.as_secs_f64())
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if inserted {
        tx.commit().await?;
        return Ok(Claim::Send {
            attempts: 1,
            in_doubt: false,
        });
    }
    let existing: Existing = sqlx::query_as(
        "SELECT status, target, attempts, in_doubt_resends, delivered_at, claimed_by,
             lease_until, coalesce(lease_until > now(), false) AS lease_live
         FROM notification_deliveries WHERE event_id = $1 AND channel = $2 FOR UPDATE",
    )
    .bind(event_id)
    .bind(channel.as_str())
    .fetch_one(&mut *tx)
    .await?;
    let in_doubt = match decide(existing, instance) {
        Ok(in_doubt) => in_doubt,
        Err(claim) => {
            tx.commit().await?;
            return Ok(claim);
        }
    };
    let attempts: i32 = sqlx::query_scalar(
        "UPDATE notification_deliveries
         SET status = 'sending', attempts = attempts + 1, target = $3, claimed_at = now(),
             in_doubt_resends = in_doubt_resends + $4, claimed_by = $5,
             lease_until = now() + make_interval(secs => $6)
         WHERE event_id = $1 AND channel = $2 RETURNING attempts",
    )
    .bind(event_id)
    .bind(channel.as_str())
    .bind(target)
    .bind(i32::from(in_doubt))
    .bind(instance)
    .bind(lease.as_secs_f64())
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Claim::Send { attempts, in_doubt })
}

/// Records that the receiver accepted the send; returns the delivery as recorded.
pub async fn delivered(pool: &PgPool, event_id: Uuid, channel: Channel) -> sqlx::Result<Delivered> {
    let row: Row = sqlx::query_as(
        "UPDATE notification_deliveries
         SET status = 'delivered', delivered_at = now(), last_error = NULL, lease_until = NULL
         WHERE event_id = $1 AND channel = $2
         RETURNING status, target, attempts, in_doubt_resends, delivered_at",
    )
    .bind(event_id)
    .bind(channel.as_str())
    .fetch_one(pool)
    .await?;
    Ok(row.delivered())
}

/// Records that the receiver refused or could not be reached: the next attempt is a retry,
/// not an in-doubt resend.
pub async fn failed(
    pool: &PgPool,
    event_id: Uuid,
    channel: Channel,
    error: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        // Only over a claim: a takeover's delivery (same id) must not be marked failed.
        "UPDATE notification_deliveries SET status = 'failed', last_error = $3, lease_until = NULL
         WHERE event_id = $1 AND channel = $2 AND status = 'sending'",
    )
    .bind(event_id)
    .bind(channel.as_str())
    .bind(paystream_core::headers::bounded_error_message(error))
    .execute(pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn existing(status: &str, by: &str, live: bool) -> Existing {
        Existing {
            row: Row {
                status: status.into(),
                target: "https://m.example/hook".into(),
                attempts: 1,
                in_doubt_resends: 0,
                delivered_at: (status == "delivered").then(Utc::now),
            },
            claimed_by: Some(by.into()),
            lease_until: Some(Utc::now()),
            lease_live: live,
        }
    }

    #[test]
    fn a_live_claim_of_another_instance_is_not_resent() {
        let held = decide(existing("sending", "notifier-b", true), "notifier-a").unwrap_err();
        assert!(matches!(held, Claim::Held { by, .. } if by == "notifier-b"));
    }

    #[test]
    fn a_lapsed_or_own_claim_is_resent_in_doubt() {
        assert_eq!(
            decide(existing("sending", "notifier-b", false), "notifier-a"),
            Ok(true)
        );
        assert_eq!(
            decide(existing("sending", "notifier-a", true), "notifier-a"),
            Ok(true)
        );
    }

    #[test]
    fn a_failed_send_is_retried_and_a_delivered_one_never_resent() {
        assert_eq!(
            decide(existing("failed", "notifier-b", true), "notifier-a"),
            Ok(false)
        );
        assert!(matches!(
            decide(existing("delivered", "notifier-b", false), "notifier-a"),
            Err(Claim::Delivered(_))
        ));
    }
}
