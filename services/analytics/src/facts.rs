//! Payment facts (`analytics_payments`): what is known of each payment, and which facts of a
//! batch are new — exactly the ones its windows are incremented by.
//!
//! A payment is counted as requested once and as decided once, whatever the order of its two
//! events (they come from different topics) and however often a fact repeats (two distinct
//! events can say the same thing). The batch's payments are locked in id order and read before
//! anything is counted, so two instances recording the same payment never both count it.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use paystream_core::events::OutcomeStatus;
use uuid::Uuid;

/// What one event says about its payment.
#[derive(Debug, Clone)]
pub struct Fact {
    pub payment_id: Uuid,
    pub merchant_id: String,
    pub currency: String,
    pub amount_minor: i64,
    pub requested_at: DateTime<Utc>,
    /// `None`: a `PaymentRequested`.
    pub outcome: Option<Decision>,
}

#[derive(Debug, Clone)]
pub struct Decision {
    pub status: OutcomeStatus,
    pub failure_reason: Option<String>,
    pub decided_at: DateTime<Utc>,
}

/// A fact recorded for the first time, with the payment's fields as first stored (both events
/// of a payment count in the same windows even if they disagreed).
#[derive(Debug, Clone, PartialEq)]
pub struct Counted {
    pub merchant_id: String,
    pub currency: String,
    pub amount_minor: i64,
    pub requested_at: DateTime<Utc>,
    pub what: Newly,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Newly {
    Requested,
    Decided {
        succeeded: bool,
        failure_reason: String,
        latency_ms: i64,
    },
}

/// A payment's row as locked for the batch, updated as its facts are applied.
#[derive(sqlx::FromRow)]
struct Stored {
    payment_id: Uuid,
    merchant_id: String,
    currency: String,
    amount_minor: i64,
    requested_at: DateTime<Utc>,
    requested_seen: bool,
    status: Option<String>,
}

/// What a batch changes in one payment's row.
#[derive(Default)]
struct Update {
    requested: bool,
    decision: Option<Decision>,
}

/// The new facts among `facts` (in batch order) given the payments' stored rows; fills
/// `updates` with what to write back.
fn newly_counted(
    facts: Vec<Fact>,
    stored: &mut HashMap<Uuid, Stored>,
    updates: &mut BTreeMap<Uuid, Update>,
) -> Vec<Counted> {
    let mut counted = Vec::new();
    for fact in facts {
        let Some(row) = stored.get_mut(&fact.payment_id) else {
            continue;
        };
        let what = match fact.outcome {
            None if !row.requested_seen => {
                row.requested_seen = true;
                updates.entry(row.payment_id).or_default().requested = true;
                Newly::Requested
            }
            Some(decision) if row.status.is_none() => {
                row.status = Some(decision.status.as_str().to_string());
                let what = Newly::Decided {
                    succeeded: decision.status == OutcomeStatus::Succeeded,
                    failure_reason: decision
                        .failure_reason
                        .clone()
                        .unwrap_or_else(|| "unknown".into()),
                    latency_ms: (decision.decided_at - row.requested_at).num_milliseconds(),
                };
                updates.entry(row.payment_id).or_default().decision = Some(decision);
                what
            }
            // Already counted: a payment has one request and one outcome.
            _ => continue,
        };
        counted.push(Counted {
            merchant_id: row.merchant_id.clone(),
            currency: row.currency.clone(),
            amount_minor: row.amount_minor,
            requested_at: row.requested_at,
            what,
        });
    }
    counted
}

/// Records a batch's facts and returns those recorded for the first time. Three statements:
/// a row for every payment (its first fact's fields), the rows locked and read in id order
/// (the order every batch locks them in, so two batches never wait on each other in a cycle),
/// and the changed rows written back.
pub async fn record(db: &mut sqlx::PgConnection, facts: Vec<Fact>) -> sqlx::Result<Vec<Counted>> {
    if facts.is_empty() {
        return Ok(Vec::new());
    }
    let mut first: BTreeMap<Uuid, &Fact> = BTreeMap::new();
    for fact in &facts {
        first.entry(fact.payment_id).or_insert(fact);
    }
    let ids: Vec<Uuid> = first.keys().copied().collect();
    sqlx::query(
        "INSERT INTO analytics_payments (payment_id, merchant_id, currency, amount_minor, requested_at)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int8[], $5::timestamptz[])
         ORDER BY 1
         ON CONFLICT (payment_id) DO NOTHING",
    )
    .bind(&ids)
    .bind(first.values().map(|f| f.merchant_id.clone()).collect::<Vec<_>>())
    .bind(first.values().map(|f| f.currency.clone()).collect::<Vec<_>>())
    .bind(first.values().map(|f| f.amount_minor).collect::<Vec<_>>())
    .bind(first.values().map(|f| f.requested_at).collect::<Vec<_>>())
    .execute(&mut *db)
    .await?;
    let mut stored: HashMap<Uuid, Stored> = sqlx::query_as::<_, Stored>(
        "SELECT payment_id, merchant_id, currency, amount_minor, requested_at, requested_seen, status
         FROM analytics_payments WHERE payment_id = ANY($1) ORDER BY payment_id FOR UPDATE",
    )
    .bind(&ids)
    .fetch_all(&mut *db)
    .await?
    .into_iter()
    .map(|row| (row.payment_id, row))
    .collect();

    let mut updates = BTreeMap::new();
    let counted = newly_counted(facts, &mut stored, &mut updates);
    if !updates.is_empty() {
        let decisions: Vec<Option<&Decision>> =
            updates.values().map(|u| u.decision.as_ref()).collect();
        sqlx::query(
            "UPDATE analytics_payments p SET
                 requested_seen = p.requested_seen OR u.requested,
                 status = coalesce(p.status, u.status),
                 failure_reason = CASE WHEN p.status IS NULL THEN u.failure_reason
                     ELSE p.failure_reason END,
                 decided_at = coalesce(p.decided_at, u.decided_at),
                 updated_at = now()
             FROM unnest($1::uuid[], $2::bool[], $3::text[], $4::text[], $5::timestamptz[])
                 AS u(payment_id, requested, status, failure_reason, decided_at)
             WHERE p.payment_id = u.payment_id",
        )
        .bind(updates.keys().copied().collect::<Vec<_>>())
        .bind(updates.values().map(|u| u.requested).collect::<Vec<_>>())
        .bind(
            decisions
                .iter()
                .map(|d| d.map(|d| d.status.as_str()))
                .collect::<Vec<_>>(),
        )
        .bind(
            decisions
                .iter()
                .map(|d| d.and_then(|d| d.failure_reason.as_deref()))
                .collect::<Vec<_>>(),
        )
        .bind(
            decisions
                .iter()
                .map(|d| d.map(|d| d.decided_at))
                .collect::<Vec<_>>(),
        )
        .execute(&mut *db)
        .await?;
    }
    Ok(counted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(ms).unwrap()
    }

    fn fact(id: Uuid, outcome: Option<(OutcomeStatus, i64)>) -> Fact {
        Fact {
            payment_id: id,
            // An outcome disagreeing with the stored row must not move the payment's windows.
            merchant_id: if outcome.is_some() { "other" } else { "m" }.into(),
            currency: "EUR".into(),
            amount_minor: 500,
            requested_at: at(1_000),
            outcome: outcome.map(|(status, decided)| Decision {
                status,
                failure_reason: (status == OutcomeStatus::Failed).then(|| "declined".into()),
                decided_at: at(decided),
            }),
        }
    }

    fn stored(id: Uuid, requested_seen: bool, status: Option<&str>) -> Stored {
        Stored {
            payment_id: id,
            merchant_id: "m".into(),
            currency: "EUR".into(),
            amount_minor: 500,
            requested_at: at(1_000),
            requested_seen,
            status: status.map(Into::into),
        }
    }

    #[test]
    fn each_fact_counts_once_in_any_order() {
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let mut rows: HashMap<Uuid, Stored> = [
            (a, stored(a, false, None)),
            (b, stored(b, true, None)),
            (c, stored(c, true, Some("SUCCEEDED"))),
        ]
        .into_iter()
        .collect();
        let mut updates = BTreeMap::new();
        let counted = newly_counted(
            vec![
                fact(a, Some((OutcomeStatus::Failed, 1_250))), // outcome before request
                fact(a, None),
                fact(a, None),                                    // repeated
                fact(a, Some((OutcomeStatus::Succeeded, 9_000))), // a second outcome
                fact(b, None),                                    // already counted
                fact(b, Some((OutcomeStatus::Succeeded, 1_100))),
                fact(c, Some((OutcomeStatus::Failed, 2_000))), // already decided
            ],
            &mut rows,
            &mut updates,
        );
        let whats: Vec<&Newly> = counted.iter().map(|c| &c.what).collect();
        assert_eq!(
            whats,
            vec![
                &Newly::Decided {
                    succeeded: false,
                    failure_reason: "declined".into(),
                    latency_ms: 250
                },
                &Newly::Requested,
                &Newly::Decided {
                    succeeded: true,
                    failure_reason: "unknown".into(),
                    latency_ms: 100
                },
            ]
        );
        assert!(counted.iter().all(|c| c.merchant_id == "m"));
        assert_eq!(updates.len(), 2);
        assert!(updates[&a].requested && updates[&a].decision.is_some());
        assert!(!updates[&b].requested && updates[&b].decision.is_some());
    }
}
