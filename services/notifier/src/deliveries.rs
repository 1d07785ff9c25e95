//! The delivery ledger: a claim per (outcome event, channel) committed before sending, and its
//! result committed right after, each in its own transaction on the pool.
//!
//! Why not in the handler's transaction: a handler sends on two channels; if the second fails,
//! the handler's transaction rolls back, and a "delivered" mark made in it would vanish with it,
//! so the next attempt would send the first channel again. Committing the result on its own
//! makes every accepted send permanent the moment it is known.
//!
//! Settled rows (delivered or failed) are pruned `retention.notification_deliveries_days` after
//! they settled ([`retention_rule`]); a claim in flight is never pruned.

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
    /// Send now. `in_doubt`: an earlier send was claimed and never resolved (a crash), so the
    /// receiver may already have it; the resend carries the same event id / Message-ID.
    Send { attempts: i32, in_doubt: bool },
    /// Already accepted by the receiver: do not send again.
    Delivered(Delivered),
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

#[derive(sqlx::FromRow)]
struct Row {
    status: String,
    target: String,
    attempts: i32,
    in_doubt_resends: i32,
    delivered_at: Option<DateTime<Utc>>,
}

/// Claims (event, channel) for a send to `target`, committed before this returns.
pub async fn claim(
    pool: &PgPool,
    event_id: Uuid,
    channel: Channel,
    payment_id: Uuid,
    target: &str,
) -> sqlx::Result<Claim> {
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO notification_deliveries (event_id, channel, payment_id, target, status)
         VALUES ($1, $2, $3, $4, 'sending') ON CONFLICT (event_id, channel) DO NOTHING",
    )
    .bind(event_id)
    .bind(channel.as_str())
    .bind(payment_id)
    .bind(target)
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
    let row: Row = sqlx::query_as(
        "SELECT status, target, attempts, in_doubt_resends, delivered_at
         FROM notification_deliveries WHERE event_id = $1 AND channel = $2 FOR UPDATE",
    )
    .bind(event_id)
    .bind(channel.as_str())
    .fetch_one(&mut *tx)
    .await?;
    if row.status == "delivered" {
        tx.commit().await?;
        return Ok(Claim::Delivered(Delivered {
            target: row.target,
            attempts: row.attempts,
            in_doubt_resends: row.in_doubt_resends,
            delivered_at: row.delivered_at.unwrap_or_else(Utc::now),
        }));
    }
    let in_doubt = row.status == "sending";
    let attempts: i32 = sqlx::query_scalar(
        "UPDATE notification_deliveries
         SET status = 'sending', attempts = attempts + 1, target = $3, claimed_at = now(),
             in_doubt_resends = in_doubt_resends + $4
         WHERE event_id = $1 AND channel = $2 RETURNING attempts",
    )
    .bind(event_id)
    .bind(channel.as_str())
    .bind(target)
    .bind(i32::from(in_doubt))
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Claim::Send { attempts, in_doubt })
}

/// Records that the receiver accepted the send; returns the delivery as recorded.
pub async fn delivered(pool: &PgPool, event_id: Uuid, channel: Channel) -> sqlx::Result<Delivered> {
    let row: Row = sqlx::query_as(
        "UPDATE notification_deliveries
         SET status = 'delivered', delivered_at = now(), last_error = NULL
         WHERE event_id = $1 AND channel = $2
         RETURNING status, target, attempts, in_doubt_resends, delivered_at",
    )
    .bind(event_id)
    .bind(channel.as_str())
    .fetch_one(pool)
    .await?;
    Ok(Delivered {
        target: row.target,
        attempts: row.attempts,
        in_doubt_resends: row.in_doubt_resends,
        delivered_at: row.delivered_at.unwrap_or_else(Utc::now),
    })
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
        "UPDATE notification_deliveries SET status = 'failed', last_error = $3
         WHERE event_id = $1 AND channel = $2",
    )
    .bind(event_id)
    .bind(channel.as_str())
    .bind(paystream_core::headers::bounded_error_message(error))
    .execute(pool)
    .await?;
    Ok(())
}
