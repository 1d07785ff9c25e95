//! Windows: boundaries, keys, and the recomputation of a window's full state from the
//! payment facts (`analytics_payments`), upserted into `analytics_windows`.
//!
//! A window is recomputed rather than incremented, so applying an event twice, late, or out of
//! order always lands on the same state; percentiles come for free from the facts.
//!
//! Retention: recomputing needs every fact of the window, so facts can only go once their
//! window can no longer change. Windows are sealed by UTC day: a day's windows are sealed once
//! the day began more than `retention.analytics_payments_days` ago ([`sealed_before`]), and an
//! event for a sealed day is not applied (it would recompute the window from the facts left).
//! The facts of a sealed day are pruned a day later ([`retention_rule`]): no instance, whatever
//! its clock, is still recomputing that day's windows when they go. `analytics_windows` keeps
//! the sealed windows' state; it is small (one row per merchant, currency and window) and kept.

use std::collections::HashMap;

use chrono::{DateTime, Duration, DurationRound, TimeZone, Utc};
use paystream_core::events::PaymentStats;
use paystream_core::retention::{RetentionSettings, Rule};
use uuid::Uuid;

/// Window sizes kept for every merchant × currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    /// 1-minute tumbling windows.
    Minute,
    /// UTC-day rollup.
    Day,
}

impl Granularity {
    pub const ALL: [Granularity; 2] = [Granularity::Minute, Granularity::Day];

    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Minute => "minute",
            Granularity::Day => "day",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "minute" => Some(Granularity::Minute),
            "day" => Some(Granularity::Day),
            _ => None,
        }
    }

    fn length(self) -> Duration {
        match self {
            Granularity::Minute => Duration::minutes(1),
            Granularity::Day => Duration::days(1),
        }
    }

    /// `[start, end)` of the window holding `at`.
    pub fn bounds(self, at: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
        let start = at
            .duration_trunc(self.length())
            .expect("minute and day truncation of a valid timestamp cannot overflow");
        (start, start + self.length())
    }
}

/// The start of the oldest UTC day whose windows can still change at `now`, when facts are
/// kept `facts_kept`: an event requested before it belongs to a sealed window. `None`: no
/// window is ever sealed (facts are kept forever).
pub fn sealed_before(
    facts_kept: Option<std::time::Duration>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let kept = Duration::from_std(facts_kept?).ok()?;
    Some(Granularity::Day.bounds(now.checked_sub_signed(kept)?).0)
}

/// Facts of the days sealed a day ago or earlier: the cutoff is one day further back than
/// [`sealed_before`]'s, and `$1` is truncated to its UTC day the same way.
pub fn retention_rule(settings: &RetentionSettings) -> Rule {
    Rule {
        table: "analytics_payments",
        setting: "retention.analytics_payments_days",
        keep: RetentionSettings::keep(settings.analytics_payments_days)
            .map(|kept| kept + std::time::Duration::from_secs(86_400)),
        condition: "requested_at < date_trunc('day', $1, 'UTC')",
        scope: None,
        dedupe: false,
    }
}

/// Epoch milliseconds to a UTC time; out-of-range values are refused.
pub fn from_millis(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

/// The record key of a window on the compacted topic: `<merchant>|<currency>|<granularity>/<start>`.
pub fn window_key(
    merchant_id: &str,
    currency: &str,
    granularity: Granularity,
    start: DateTime<Utc>,
) -> String {
    format!(
        "{merchant_id}|{currency}|{}/{}",
        granularity.as_str(),
        start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

/// The window a key names: merchant, currency, granularity and start. Merchant ids may hold
/// `|`; currencies and granularities never do.
pub fn parse_window_key(key: &str) -> Option<(String, String, Granularity, DateTime<Utc>)> {
    let mut parts = key.rsplitn(3, '|');
    let (window, currency, merchant) = (parts.next()?, parts.next()?, parts.next()?);
    let (granularity, start) = window.split_once('/')?;
    let start = DateTime::parse_from_rfc3339(start)
        .ok()?
        .with_timezone(&Utc);
    Some((
        merchant.to_string(),
        currency.to_string(),
        Granularity::parse(granularity)?,
        start,
    ))
}

/// The id of a window state record: the same state of the same window, the same id.
pub fn state_event_id(key: &str, state: &WindowState) -> Uuid {
    Uuid::new_v5(
        &paystream_core::events::EVENT_ID_NAMESPACE,
        format!("payment-stats/{key}/{state:?}").as_bytes(),
    )
}

/// The id of the window update `trigger` caused: the same trigger always yields the same id.
pub fn update_event_id(key: &str, trigger: Uuid) -> Uuid {
    Uuid::new_v5(
        &paystream_core::events::EVENT_ID_NAMESPACE,
        format!("payment-stats/{key}/{trigger}").as_bytes(),
    )
}

/// A window's full state, as stored in `analytics_windows`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WindowState {
    pub merchant_id: String,
    pub currency: String,
    pub granularity: String,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub requested_count: i64,
    pub requested_amount_minor: i64,
    pub succeeded_count: i64,
    pub succeeded_amount_minor: i64,
    pub failed_count: i64,
    pub failed_by_reason: sqlx::types::Json<HashMap<String, i64>>,
    pub success_rate: Option<f64>,
    pub latency_p50_ms: Option<i64>,
    pub latency_p95_ms: Option<i64>,
    pub latency_p99_ms: Option<i64>,
}

impl WindowState {
    pub fn to_event(&self, event_id: Uuid) -> PaymentStats {
        PaymentStats {
            event_id: event_id.to_string(),
            merchant_id: self.merchant_id.clone(),
            currency: self.currency.clone(),
            granularity: self.granularity.clone(),
            window_start: self.window_start.timestamp_millis(),
            window_end: self.window_end.timestamp_millis(),
            requested_count: self.requested_count,
            requested_amount_minor: self.requested_amount_minor,
            succeeded_count: self.succeeded_count,
            succeeded_amount_minor: self.succeeded_amount_minor,
            failed_count: self.failed_count,
            failed_by_reason: self.failed_by_reason.0.clone(),
            success_rate: self.success_rate,
            latency_p50_ms: self.latency_p50_ms,
            latency_p95_ms: self.latency_p95_ms,
            latency_p99_ms: self.latency_p99_ms,
        }
    }
}

/// Serialises every writer of one merchant × currency × day (and so of its minute windows)
/// until the transaction ends. Without it two instances could each recompute a window from a
/// snapshot missing the other's payment, and the later upsert would drop one of them.
pub async fn lock_day(
    db: &mut sqlx::PgConnection,
    merchant_id: &str,
    currency: &str,
    requested_at: DateTime<Utc>,
) -> sqlx::Result<()> {
    let (day, _) = Granularity::Day.bounds(requested_at);
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!(
            "analytics|{}",
            window_key(merchant_id, currency, Granularity::Day, day)
        ))
        .execute(db)
        .await?;
    Ok(())
}

/// Recomputes one window from the payment facts and upserts it; returns the new state.
pub async fn recompute(
    db: &mut sqlx::PgConnection,
    merchant_id: &str,
    currency: &str,
    granularity: Granularity,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> sqlx::Result<WindowState> {
    sqlx::query_as(
        r#"
        WITH facts AS (
            SELECT * FROM analytics_payments
            WHERE merchant_id = $1 AND currency = $2 AND requested_at >= $4 AND requested_at < $5
        ), agg AS (
            SELECT
                count(*) FILTER (WHERE requested_seen) AS requested_count,
                coalesce(sum(amount_minor) FILTER (WHERE requested_seen), 0)::bigint AS requested_amount_minor,
                count(*) FILTER (WHERE status = 'SUCCEEDED') AS succeeded_count,
                coalesce(sum(amount_minor) FILTER (WHERE status = 'SUCCEEDED'), 0)::bigint AS succeeded_amount_minor,
                count(*) FILTER (WHERE status = 'FAILED') AS failed_count,
                percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (
                    ORDER BY extract(epoch FROM decided_at - requested_at) * 1000
                ) FILTER (WHERE decided_at IS NOT NULL) AS latency
            FROM facts
        ), reasons AS (
            SELECT coalesce(jsonb_object_agg(reason, n), '{}'::jsonb) AS failed_by_reason
            FROM (
                SELECT coalesce(failure_reason, 'unknown') AS reason, count(*) AS n
                FROM facts WHERE status = 'FAILED' GROUP BY 1
            ) r
        )
        INSERT INTO analytics_windows AS w (
            merchant_id, currency, granularity, window_start, window_end,
            requested_count, requested_amount_minor, succeeded_count, succeeded_amount_minor,
            failed_count, failed_by_reason, success_rate,
            latency_p50_ms, latency_p95_ms, latency_p99_ms, updated_at
        )
        SELECT $1, $2, $3, $4, $5,
            requested_count, requested_amount_minor, succeeded_count, succeeded_amount_minor,
            failed_count, failed_by_reason,
            CASE WHEN succeeded_count + failed_count > 0
                 THEN succeeded_count::float8 / (succeeded_count + failed_count) END,
            round(latency[1])::bigint, round(latency[2])::bigint, round(latency[3])::bigint,
            now()
        FROM agg, reasons
        ON CONFLICT (merchant_id, granularity, window_start, currency) DO UPDATE SET
            window_end = excluded.window_end,
            requested_count = excluded.requested_count,
            requested_amount_minor = excluded.requested_amount_minor,
            succeeded_count = excluded.succeeded_count,
            succeeded_amount_minor = excluded.succeeded_amount_minor,
            failed_count = excluded.failed_count,
            failed_by_reason = excluded.failed_by_reason,
            success_rate = excluded.success_rate,
            latency_p50_ms = excluded.latency_p50_ms,
            latency_p95_ms = excluded.latency_p95_ms,
            latency_p99_ms = excluded.latency_p99_ms,
            updated_at = excluded.updated_at
        RETURNING merchant_id, currency, granularity, window_start, window_end,
            requested_count, requested_amount_minor, succeeded_count, succeeded_amount_minor,
            failed_count, failed_by_reason, success_rate,
            latency_p50_ms, latency_p95_ms, latency_p99_ms
        "#,
    )
    .bind(merchant_id)
    .bind(currency)
    .bind(granularity.as_str())
    .bind(start)
    .bind(end)
    .fetch_one(db)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_tumbling_and_aligned() {
        let at = from_millis(1_795_000_123_456).unwrap();
        let (start, end) = Granularity::Minute.bounds(at);
        assert!(start <= at && at < end);
        assert_eq!(start.timestamp() % 60, 0);
        assert_eq!(end - start, Duration::minutes(1));
        let (day, day_end) = Granularity::Day.bounds(at);
        assert_eq!(day.timestamp() % 86_400, 0);
        assert!(day <= start && end <= day_end);
        // The window's start belongs to it, its end to the next one.
        assert_eq!(Granularity::Minute.bounds(start).0, start);
        assert_eq!(Granularity::Minute.bounds(end).0, end);
    }

    #[test]
    fn days_are_sealed_after_the_retention_and_pruned_a_day_later() {
        let now = from_millis(1_795_000_123_456).unwrap(); // 2026-11-18T11:08:43Z
        let kept = RetentionSettings::keep(35);
        let sealed = sealed_before(kept, now).unwrap();
        assert_eq!(sealed, Granularity::Day.bounds(now - Duration::days(35)).0);
        assert_eq!(sealed.to_rfc3339(), "2026-10-14T00:00:00+00:00");
        assert_eq!(sealed_before(None, now), None);
        let rule = retention_rule(&RetentionSettings {
            analytics_payments_days: 35,
            ..Default::default()
        });
        let cutoff = now - Duration::from_std(rule.keep.unwrap()).unwrap();
        // The pruner's cutoff, truncated to its day, is the day before the first sealed one.
        assert_eq!(
            Granularity::Day.bounds(cutoff).0,
            sealed - Duration::days(1)
        );
    }

    #[test]
    fn keys_and_update_ids_are_stable() {
        let start = from_millis(1_795_000_080_000).unwrap();
        let key = window_key("m_1", "EUR", Granularity::Minute, start);
        assert_eq!(key, "m_1|EUR|minute/2026-11-18T11:08:00Z");
        let trigger = Uuid::new_v4();
        assert_eq!(
            update_event_id(&key, trigger),
            update_event_id(&key, trigger)
        );
        assert_ne!(
            update_event_id(&key, trigger),
            update_event_id(&key, Uuid::new_v4())
        );
        assert_eq!(Granularity::parse("day"), Some(Granularity::Day));
        assert_eq!(Granularity::parse("hour"), None);
    }
}
