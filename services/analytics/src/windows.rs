//! Windows: boundaries and keys, and the window state in `analytics_windows`, incremented by
//! the facts a batch newly recorded ([`crate::facts`]) and read back for the compacted topic.
//!
//! A batch adds its deltas — counts, sums, failure reasons, latency sketch buckets
//! ([`crate::sketch`]) — to every window it touches in one statement, and bumps each window's
//! `revision`. Rows are written in primary-key order (after the facts, also locked in order),
//! so two instances updating the same windows never deadlock; the row lock serialises their
//! increments, so the revisions of a window follow its commits. Exactly-once comes from the
//! facts: a fact already recorded adds nothing.
//!
//! Retention: the facts are what makes a repeated fact add nothing, so they can only go once
//! their window can no longer change. Windows are sealed by UTC day: a day's windows are sealed
//! once the day began more than `retention.analytics_payments_days` ago ([`sealed_before`]),
//! and an event for a sealed day is not applied (its facts may be gone, so it could be counted
//! twice). The facts of a sealed day are pruned a day later ([`retention_rule`]): no instance,
//! whatever its clock, is still counting into that day's windows when they go.
//! `analytics_windows` keeps the sealed windows' state; it is small (one row per merchant,
//! currency and window) and kept.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, DurationRound, TimeZone, Utc};
use paystream_core::events::PaymentStats;
use paystream_core::retention::{RetentionSettings, Rule};
use uuid::Uuid;

use crate::facts::{Counted, Newly};
use crate::sketch::{Sketch, PUBLISHED};

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

/// The id of a window's record at `revision`: the same revision of a window, re-produced, has
/// the same id.
pub fn state_event_id(key: &str, revision: i64) -> Uuid {
    Uuid::new_v5(
        &paystream_core::events::EVENT_ID_NAMESPACE,
        format!("payment-stats/{key}/{revision}").as_bytes(),
    )
}

/// A window, in `analytics_windows` primary-key order: merchant, granularity, start, currency.
pub type WindowId = (String, &'static str, DateTime<Utc>, String);

/// What a batch adds to one window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delta {
    pub requested_count: i64,
    pub requested_amount_minor: i64,
    pub succeeded_count: i64,
    pub succeeded_amount_minor: i64,
    pub failed_count: i64,
    pub failed_by_reason: BTreeMap<String, i64>,
    pub latencies: Sketch,
}

impl Delta {
    fn add(&mut self, counted: &Counted) {
        match &counted.what {
            Newly::Requested => {
                self.requested_count += 1;
                self.requested_amount_minor += counted.amount_minor;
            }
            Newly::Decided {
                succeeded,
                failure_reason,
                latency_ms,
            } => {
                if *succeeded {
                    self.succeeded_count += 1;
                    self.succeeded_amount_minor += counted.amount_minor;
                } else {
                    self.failed_count += 1;
                    *self
                        .failed_by_reason
                        .entry(failure_reason.clone())
                        .or_default() += 1;
                }
                self.latencies.add(*latency_ms);
            }
        }
    }
}

/// The deltas of every window the newly counted facts fall in (each counts in its minute and
/// its day), in primary-key order.
pub fn deltas(counted: &[Counted]) -> BTreeMap<WindowId, Delta> {
    let mut deltas: BTreeMap<WindowId, Delta> = BTreeMap::new();
    for c in counted {
        for g in Granularity::ALL {
            let id = (
                c.merchant_id.clone(),
                g.as_str(),
                g.bounds(c.requested_at).0,
                c.currency.clone(),
            );
            deltas.entry(id).or_default().add(c);
        }
    }
    deltas
}

/// Adds `deltas` to their windows (created at revision 1, else revision + 1), then refreshes
/// their success rate and percentiles from the merged counts and sketch: two statements,
/// whatever the number of windows.
pub async fn apply(
    db: &mut sqlx::PgConnection,
    deltas: &BTreeMap<WindowId, Delta>,
) -> sqlx::Result<()> {
    if deltas.is_empty() {
        return Ok(());
    }
    let column = |f: &dyn Fn(&WindowId, &Delta) -> i64| -> Vec<i64> {
        deltas.iter().map(|(id, d)| f(id, d)).collect()
    };
    #[derive(sqlx::FromRow)]
    struct Merged {
        merchant_id: String,
        granularity: String,
        window_start: DateTime<Utc>,
        currency: String,
        latency_sketch: serde_json::Value,
        latency_min_ms: Option<i64>,
        latency_max_ms: Option<i64>,
    }
    let merged: Vec<Merged> = sqlx::query_as(
        "INSERT INTO analytics_windows AS w (
             merchant_id, granularity, window_start, currency, window_end,
             requested_count, requested_amount_minor, succeeded_count, succeeded_amount_minor,
             failed_count, failed_by_reason, latency_sketch, latency_min_ms, latency_max_ms,
             revision, updated_at)
         SELECT d.*, 1, now()
         FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::timestamptz[],
                     $6::int8[], $7::int8[], $8::int8[], $9::int8[], $10::int8[],
                     $11::jsonb[], $12::jsonb[], $13::int8[], $14::int8[]) AS d
         ORDER BY 1, 2, 3, 4
         ON CONFLICT (merchant_id, granularity, window_start, currency) DO UPDATE SET
             requested_count = w.requested_count + excluded.requested_count,
             requested_amount_minor = w.requested_amount_minor + excluded.requested_amount_minor,
             succeeded_count = w.succeeded_count + excluded.succeeded_count,
             succeeded_amount_minor = w.succeeded_amount_minor + excluded.succeeded_amount_minor,
             failed_count = w.failed_count + excluded.failed_count,
             failed_by_reason = analytics_jsonb_add(w.failed_by_reason, excluded.failed_by_reason),
             latency_sketch = analytics_jsonb_add(w.latency_sketch, excluded.latency_sketch),
             latency_min_ms = least(w.latency_min_ms, excluded.latency_min_ms),
             latency_max_ms = greatest(w.latency_max_ms, excluded.latency_max_ms),
             revision = w.revision + 1,
             updated_at = excluded.updated_at
         RETURNING merchant_id, granularity, window_start, currency,
             latency_sketch, latency_min_ms, latency_max_ms",
    )
    .bind(deltas.keys().map(|id| id.0.clone()).collect::<Vec<_>>())
    .bind(deltas.keys().map(|id| id.1).collect::<Vec<_>>())
    .bind(deltas.keys().map(|id| id.2).collect::<Vec<_>>())
    .bind(deltas.keys().map(|id| id.3.clone()).collect::<Vec<_>>())
    .bind(
        deltas
            .keys()
            .map(|id| {
                let granularity = Granularity::parse(id.1).expect("ids hold known granularities");
                granularity.bounds(id.2).1
            })
            .collect::<Vec<_>>(),
    )
    .bind(column(&|_, d| d.requested_count))
    .bind(column(&|_, d| d.requested_amount_minor))
    .bind(column(&|_, d| d.succeeded_count))
    .bind(column(&|_, d| d.succeeded_amount_minor))
    .bind(column(&|_, d| d.failed_count))
    .bind(
        deltas
            .values()
            .map(|d| serde_json::json!(d.failed_by_reason))
            .collect::<Vec<_>>(),
    )
    .bind(
        deltas
            .values()
            .map(|d| d.latencies.buckets_json())
            .collect::<Vec<_>>(),
    )
    .bind(deltas.values().map(|d| d.latencies.min).collect::<Vec<_>>())
    .bind(deltas.values().map(|d| d.latencies.max).collect::<Vec<_>>())
    .fetch_all(&mut *db)
    .await?;

    // Percentiles of the merged sketch; the rows are locked by the upsert until commit.
    let quantiles: Vec<[Option<i64>; 3]> = merged
        .iter()
        .map(|m| {
            let sketch = Sketch::from_stored(&m.latency_sketch, m.latency_min_ms, m.latency_max_ms)
                .unwrap_or_default();
            PUBLISHED.map(|q| sketch.quantile(q))
        })
        .collect();
    sqlx::query(
        "UPDATE analytics_windows w SET
             success_rate = CASE WHEN w.succeeded_count + w.failed_count > 0
                 THEN w.succeeded_count::float8 / (w.succeeded_count + w.failed_count) END,
             latency_p50_ms = u.p50, latency_p95_ms = u.p95, latency_p99_ms = u.p99
         FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[],
                     $5::int8[], $6::int8[], $7::int8[])
             AS u(merchant_id, granularity, window_start, currency, p50, p95, p99)
         WHERE (w.merchant_id, w.granularity, w.window_start, w.currency)
             = (u.merchant_id, u.granularity, u.window_start, u.currency)",
    )
    .bind(
        merged
            .iter()
            .map(|m| m.merchant_id.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        merged
            .iter()
            .map(|m| m.granularity.clone())
            .collect::<Vec<_>>(),
    )
    .bind(merged.iter().map(|m| m.window_start).collect::<Vec<_>>())
    .bind(
        merged
            .iter()
            .map(|m| m.currency.clone())
            .collect::<Vec<_>>(),
    )
    .bind(quantiles.iter().map(|q| q[0]).collect::<Vec<_>>())
    .bind(quantiles.iter().map(|q| q[1]).collect::<Vec<_>>())
    .bind(quantiles.iter().map(|q| q[2]).collect::<Vec<_>>())
    .execute(&mut *db)
    .await?;
    Ok(())
}

/// A window's state, as stored in `analytics_windows`.
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
    pub revision: i64,
}

impl WindowState {
    /// Its key on the compacted topic.
    pub fn key(&self) -> Option<String> {
        let granularity = Granularity::parse(&self.granularity)?;
        Some(window_key(
            &self.merchant_id,
            &self.currency,
            granularity,
            self.window_start,
        ))
    }

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
            revision: self.revision,
        }
    }
}

/// The current state of the windows `keys` name, in one query; keys of windows not stored
/// (nothing counted in them) and keys that name no window are left out.
pub async fn read(db: &mut sqlx::PgConnection, keys: &[String]) -> sqlx::Result<Vec<WindowState>> {
    let ids: Vec<_> = keys.iter().filter_map(|k| parse_window_key(k)).collect();
    sqlx::query_as(
        "SELECT w.merchant_id, w.currency, w.granularity, w.window_start, w.window_end,
                requested_count, requested_amount_minor, succeeded_count, succeeded_amount_minor,
                failed_count, failed_by_reason, success_rate,
                latency_p50_ms, latency_p95_ms, latency_p99_ms, revision
         FROM analytics_windows w
         JOIN unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])
             AS k(merchant_id, currency, granularity, window_start)
             USING (merchant_id, currency, granularity, window_start)
         ORDER BY w.merchant_id, w.granularity, w.window_start, w.currency",
    )
    .bind(ids.iter().map(|i| i.0.clone()).collect::<Vec<_>>())
    .bind(ids.iter().map(|i| i.1.clone()).collect::<Vec<_>>())
    .bind(ids.iter().map(|i| i.2.as_str()).collect::<Vec<_>>())
    .bind(ids.iter().map(|i| i.3).collect::<Vec<_>>())
    .fetch_all(db)
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
    fn keys_and_state_ids_are_stable() {
        let start = from_millis(1_795_000_080_000).unwrap();
        let key = window_key("m_1", "EUR", Granularity::Minute, start);
        assert_eq!(key, "m_1|EUR|minute/2026-11-18T11:08:00Z");
        assert_eq!(
            parse_window_key("m|1|EUR|minute/2026-11-18T11:08:00Z"),
            Some(("m|1".into(), "EUR".into(), Granularity::Minute, start))
        );
        assert_eq!(state_event_id(&key, 3), state_event_id(&key, 3));
        assert_ne!(state_event_id(&key, 3), state_event_id(&key, 4));
        assert_eq!(Granularity::parse("day"), Some(Granularity::Day));
        assert_eq!(Granularity::parse("hour"), None);
    }

    #[test]
    fn deltas_add_each_counted_fact_to_its_minute_and_its_day() {
        let at = from_millis(1_795_000_123_456).unwrap();
        let counted = |what: Newly, at| Counted {
            merchant_id: "m".into(),
            currency: "EUR".into(),
            amount_minor: 100,
            requested_at: at,
            what,
        };
        let failed = |latency_ms| Newly::Decided {
            succeeded: false,
            failure_reason: "declined".into(),
            latency_ms,
        };
        let deltas = deltas(&[
            counted(Newly::Requested, at),
            counted(failed(40), at),
            counted(failed(60), at + Duration::minutes(1)),
            counted(
                Newly::Decided {
                    succeeded: true,
                    failure_reason: "unknown".into(),
                    latency_ms: 50,
                },
                at,
            ),
        ]);
        assert_eq!(deltas.len(), 3, "two minutes and their day");
        let day_id: WindowId = (
            "m".into(),
            "day",
            Granularity::Day.bounds(at).0,
            "EUR".into(),
        );
        let day = &deltas[&day_id];
        assert_eq!(
            (
                day.succeeded_count,
                day.succeeded_amount_minor,
                day.failed_count
            ),
            (1, 100, 2)
        );
        assert_eq!(
            day.failed_by_reason,
            BTreeMap::from([("declined".into(), 2)])
        );
        assert_eq!(day.latencies.count(), 3);
        assert_eq!((day.latencies.min, day.latencies.max), (Some(40), Some(60)));
        let minutes: i64 = deltas
            .iter()
            .filter(|(id, _)| id.1 == "minute")
            .map(|(_, d)| d.failed_count)
            .sum();
        assert_eq!(minutes, 2);
    }
}
