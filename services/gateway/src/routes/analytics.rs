//! `GET /v1/analytics/merchants/{merchant_id}/stats?from=&to=&granularity=minute|day`: the
//! analytics group's windows (`analytics_windows`) of one merchant, per currency.
//! Defaults: the last 24 hours, minute granularity. Windows are selected by their start.
//! With authentication on, only for a merchant the client is bound to (`403` otherwise).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::ClientId;
use crate::bindings;
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

/// Longest range one query may span, per granularity (bounds the answer's size).
fn max_range(granularity: &str) -> Duration {
    match granularity {
        "minute" => Duration::days(7),
        _ => Duration::days(366),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    pub from: Option<String>,
    pub to: Option<String>,
    pub granularity: Option<String>,
}

#[derive(Debug, sqlx::FromRow)]
struct Bucket {
    window_start: DateTime<Utc>,
    currency: String,
    requested_count: i64,
    requested_amount_minor: i64,
    succeeded_count: i64,
    succeeded_amount_minor: i64,
    failed_count: i64,
    failed_by_reason: sqlx::types::Json<HashMap<String, i64>>,
    success_rate: Option<f64>,
    latency_p50_ms: Option<i64>,
    latency_p95_ms: Option<i64>,
    latency_p99_ms: Option<i64>,
}

#[derive(Debug, Serialize)]
struct BucketView {
    window_start: String,
    currency: String,
    requested_count: i64,
    requested_amount_minor: i64,
    succeeded_count: i64,
    succeeded_amount_minor: i64,
    failed_count: i64,
    failed_by_reason: HashMap<String, i64>,
    success_rate: Option<f64>,
    latency_ms: serde_json::Value,
}

fn parse_time(field: &str, value: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    value
        .map(|v| {
            DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| ApiError::InvalidQuery(format!("`{field}` must be RFC 3339: {e}")))
        })
        .transpose()
}

#[utoipa::path(
    get,
    path = "/v1/analytics/merchants/{id}/stats",
    tag = "analytics",
    params(
        ("id" = String, Path, description = "Merchant id"),
        ("from" = Option<String>, Query, description = "RFC 3339 start (default: `to` − 24 h)"),
        ("to" = Option<String>, Query, description = "RFC 3339 end (default: now)"),
        ("granularity" = Option<String>, Query, description = "`minute` (default) or `day`"),
    ),
    responses(
        (status = 200, description = "`{merchant_id, granularity, buckets: [{window_start, currency, requested_count, requested_amount_minor, succeeded_count, succeeded_amount_minor, failed_count, failed_by_reason, success_rate, latency_ms: {p50, p95, p99}}]}`", body = Object),
        (status = 400, description = "Invalid query", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid API key (authentication enabled)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The client is not bound to this merchant (authentication enabled; `merchant-forbidden`, whether or not the merchant exists)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limit exceeded (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
    security((), ("api_key" = []))
)]
#[tracing::instrument(name = "merchant_stats", skip_all, fields(merchant.id = %merchant_id))]
pub async fn merchant_stats(
    State(state): State<AppState>,
    Extension(client): Extension<ClientId>,
    Path(merchant_id): Path<String>,
    query: Result<Query<StatsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::InvalidQuery(e.body_text()))?;
    let granularity = query.granularity.as_deref().unwrap_or("minute");
    if !matches!(granularity, "minute" | "day") {
        return Err(ApiError::InvalidQuery(
            "`granularity` must be minute or day".into(),
        ));
    }
    let to = parse_time("to", query.to.as_deref())?.unwrap_or_else(Utc::now);
    let from = parse_time("from", query.from.as_deref())?.unwrap_or(to - Duration::hours(24));
    if from >= to {
        return Err(ApiError::InvalidQuery("`from` must be before `to`".into()));
    }
    if to - from > max_range(granularity) {
        return Err(ApiError::InvalidQuery(format!(
            "a {granularity} query spans at most {} days",
            max_range(granularity).num_days()
        )));
    }
    // With authentication on, only a client bound to the merchant reads its figures. A read
    // route, not the payment path: one primary-key lookup of its own, after the query is
    // known to be valid (`crate::bindings` says why no cache).
    if let Some(merchant) = client.merchant_to_check(&merchant_id) {
        let bound = bindings::is_bound(&state.pool, client.as_str(), merchant)
            .await
            .map_err(ApiError::internal)?;
        if !bound {
            crate::metrics::merchant_forbidden(client.as_str());
            // Echoed in the problem: bounded like every id the API names.
            return Err(ApiError::MerchantForbidden(
                merchant_id.chars().take(64).collect(),
            ));
        }
    }
    let buckets: Vec<Bucket> = sqlx::query_as(
        "SELECT window_start, currency, requested_count, requested_amount_minor,
                succeeded_count, succeeded_amount_minor, failed_count, failed_by_reason,
                success_rate, latency_p50_ms, latency_p95_ms, latency_p99_ms
         FROM analytics_windows
         WHERE merchant_id = $1 AND granularity = $2 AND window_start >= $3 AND window_start < $4
         ORDER BY window_start, currency",
    )
    .bind(&merchant_id)
    .bind(granularity)
    .bind(from)
    .bind(to)
    .fetch_all(&state.pool)
    .await
    .map_err(ApiError::internal)?;
    let buckets: Vec<BucketView> = buckets
        .into_iter()
        .map(|b| BucketView {
            window_start: b
                .window_start
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            currency: b.currency,
            requested_count: b.requested_count,
            requested_amount_minor: b.requested_amount_minor,
            succeeded_count: b.succeeded_count,
            succeeded_amount_minor: b.succeeded_amount_minor,
            failed_count: b.failed_count,
            failed_by_reason: b.failed_by_reason.0,
            success_rate: b.success_rate,
            latency_ms: json!({
                "p50": b.latency_p50_ms, "p95": b.latency_p95_ms, "p99": b.latency_p99_ms
            }),
        })
        .collect();
    Ok(axum::Json(json!({
        "merchant_id": merchant_id,
        "granularity": granularity,
        "from": from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "to": to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "buckets": buckets,
    }))
    .into_response())
}
