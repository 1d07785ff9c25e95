//! The gateway's metrics: named events that each count one thing with stable labels, the
//! outbox backlog gauges, the HTTP middleware that records every request by route template and
//! status, and the exposition document. The `/metrics` route itself (`routes::metrics`)
//! samples the backlog and answers with [`exposition`]. This module imports no other module of
//! the gateway, so every module can record into it without an import cycle.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use paystream_core::metrics as core_metrics;

pub const IDEMPOTENT_REPLAYS: &str = "gateway_idempotent_replays_total";
pub const IDEMPOTENCY_CONFLICTS: &str = "gateway_idempotency_in_flight_conflicts_total";
pub const IDEMPOTENCY_KEYS_PURGED: &str = "gateway_idempotency_keys_purged_total";
pub const PAYMENTS_ACCEPTED: &str = "gateway_payments_accepted_total";
pub const AUTH_FAILURES: &str = "gateway_auth_failures_total";
pub const RATE_LIMITED: &str = "gateway_rate_limited_total";
pub const MERCHANT_FORBIDDEN: &str = "gateway_merchant_forbidden_total";
pub const OUTBOX_PUBLISHED: &str = "gateway_outbox_published_total";
pub const OUTBOX_PARKED: &str = "gateway_outbox_parked_total";
pub const OUTBOX_RELAY_FAILURES: &str = "gateway_outbox_relay_failures_total";
pub const OUTBOX_BACKLOG: &str = "gateway_outbox_backlog_rows";
pub const OUTBOX_OLDEST_AGE: &str = "gateway_outbox_oldest_unpublished_age_seconds";
pub const OUTBOX_PARKED_ROWS: &str = "gateway_outbox_parked_rows";

/// Installs the process recorder and describes the gateway's metrics.
pub fn install() -> anyhow::Result<()> {
    core_metrics::install()?;
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        IDEMPOTENT_REPLAYS,
        "Responses replayed for a repeated Idempotency-Key"
    );
    describe_counter!(
        IDEMPOTENCY_CONFLICTS,
        "Requests refused with 409 because their Idempotency-Key was in flight"
    );
    describe_counter!(IDEMPOTENCY_KEYS_PURGED, "Expired idempotency keys deleted");
    describe_counter!(PAYMENTS_ACCEPTED, "Payments accepted (202, not replays)");
    describe_counter!(AUTH_FAILURES, "Requests refused with 401");
    describe_counter!(RATE_LIMITED, "Requests refused with 429, by client");
    describe_counter!(
        MERCHANT_FORBIDDEN,
        "Requests refused with 403 for a merchant the client is not bound to, by client"
    );
    describe_counter!(
        OUTBOX_PUBLISHED,
        "Outbox rows published to Kafka and acknowledged"
    );
    describe_counter!(
        OUTBOX_PARKED,
        "Outbox rows parked because they can never be published"
    );
    describe_counter!(
        OUTBOX_RELAY_FAILURES,
        "Relay passes that failed (broker or registry unavailable); rows are retried"
    );
    describe_gauge!(
        OUTBOX_BACKLOG,
        "Unpublished, unparked outbox rows (sampled at scrape time)"
    );
    describe_gauge!(
        OUTBOX_OLDEST_AGE,
        metrics::Unit::Seconds,
        "Age of the oldest unpublished, unparked outbox row; 0 when none (sampled at scrape)"
    );
    describe_gauge!(
        OUTBOX_PARKED_ROWS,
        "Parked outbox rows waiting for an operator (sampled at scrape time)"
    );
    // Counters without labels exist from the start at 0, so dashboards and alerts (rates,
    // increases) see the series before the first event instead of "no data".
    for counter in [
        IDEMPOTENT_REPLAYS,
        IDEMPOTENCY_CONFLICTS,
        IDEMPOTENCY_KEYS_PURGED,
        PAYMENTS_ACCEPTED,
        AUTH_FAILURES,
        OUTBOX_PUBLISHED,
        OUTBOX_PARKED,
        OUTBOX_RELAY_FAILURES,
    ] {
        metrics::counter!(counter).increment(0);
    }
    Ok(())
}

pub fn idempotent_replay() {
    metrics::counter!(IDEMPOTENT_REPLAYS).increment(1);
}

pub fn idempotency_in_flight_conflict() {
    metrics::counter!(IDEMPOTENCY_CONFLICTS).increment(1);
}

pub fn idempotency_keys_purged(n: u64) {
    metrics::counter!(IDEMPOTENCY_KEYS_PURGED).increment(n);
}

pub fn payment_accepted() {
    metrics::counter!(PAYMENTS_ACCEPTED).increment(1);
}

pub fn auth_failure() {
    metrics::counter!(AUTH_FAILURES).increment(1);
}

/// `client` is a configured client id or the anonymous one: a bounded label.
pub fn rate_limited(client: &str) {
    metrics::counter!(RATE_LIMITED, "client" => client.to_string()).increment(1);
}

/// `client` is a configured (authenticated) client id: a bounded label.
pub fn merchant_forbidden(client: &str) {
    metrics::counter!(MERCHANT_FORBIDDEN, "client" => client.to_string()).increment(1);
}

pub fn outbox_published(n: usize) {
    metrics::counter!(OUTBOX_PUBLISHED).increment(n as u64);
}

pub fn outbox_parked() {
    metrics::counter!(OUTBOX_PARKED).increment(1);
}

pub fn outbox_relay_failure() {
    metrics::counter!(OUTBOX_RELAY_FAILURES).increment(1);
}

/// Records every request by method, route template and final status (including answers of
/// the auth, rate-limit and timeout layers, which run inside this one).
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let response = next.run(request).await;
    core_metrics::record_http_request(
        method.as_str(),
        route.as_deref().unwrap_or(core_metrics::UNMATCHED_ROUTE),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Sets the outbox gauges, sampled from Postgres at scrape time.
pub fn outbox_backlog(pending: i64, oldest_age_seconds: f64, parked: i64) {
    metrics::gauge!(OUTBOX_BACKLOG).set(pending as f64);
    metrics::gauge!(OUTBOX_OLDEST_AGE).set(oldest_age_seconds);
    metrics::gauge!(OUTBOX_PARKED_ROWS).set(parked as f64);
}

/// The process's metrics in the Prometheus text exposition format.
pub fn exposition() -> Response {
    let mut response = core_metrics::render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(core_metrics::CONTENT_TYPE),
    );
    response
}
