//! Prometheus metrics through the `metrics` facade.
//!
//! One recorder per process ([`install`]), rendered by the service's own `/metrics` route
//! ([`render`]); no exporter listener of its own, so metrics share the service's port, and
//! several applications in one process (tests) share one registry. Names common to every HTTP
//! service live here so dashboards work across services.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// `Content-Type` of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Counter: HTTP requests answered, by `method`, `route` (the route template) and `status`.
pub const HTTP_REQUESTS_TOTAL: &str = "http_server_requests_total";
/// Histogram: time from request to response head, same labels as [`HTTP_REQUESTS_TOTAL`].
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "http_server_request_duration_seconds";
/// `route` label of requests no route matched (keeps the label set bounded).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Latency buckets (seconds) of every `*_seconds` histogram: 1 ms to 10 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// Installs the process-wide Prometheus recorder on first call; later calls return the same
/// handle. Fails only if another `metrics` recorder was installed by someone else.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    // A std mutex: nothing awaits while it is held.
    let mut slot = HANDLE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(handle) = slot.as_ref() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .context("configuring histogram buckets")?
        .install_recorder()
        .context("installing the Prometheus recorder")?;
    describe_http();
    // Without the exporter's listener nobody drains histogram samples between scrapes.
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(5));
            upkeep.run_upkeep();
        })
        .context("starting the metrics upkeep thread")?;
    *slot = Some(handle.clone());
    Ok(handle)
}

fn describe_http() {
    metrics::describe_counter!(
        HTTP_REQUESTS_TOTAL,
        "HTTP requests answered, by method, route template and status"
    );
    metrics::describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "HTTP request latency until the response head, by method, route template and status"
    );
}

/// The current metrics in the Prometheus text format (empty before [`install`]).
pub fn render() -> String {
    HANDLE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(PrometheusHandle::render)
        .unwrap_or_default()
}

/// Records one answered HTTP request. `route` must be a route template (bounded cardinality),
/// never a raw path.
pub fn record_http_request(method: &str, route: &str, status: u16, elapsed: Duration) {
    let labels = [
        ("method", method.to_string()),
        ("route", route.to_string()),
        ("status", status.to_string()),
    ];
    metrics::counter!(HTTP_REQUESTS_TOTAL, &labels).increment(1);
    metrics::histogram!(HTTP_REQUEST_DURATION_SECONDS, &labels).record(elapsed.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_is_idempotent_and_renders_http_metrics() {
        install().unwrap();
        install().unwrap();
        record_http_request("GET", "/things/{id}", 200, Duration::from_millis(3));
        let text = render();
        assert!(
            text.contains(
                r#"http_server_requests_total{method="GET",route="/things/{id}",status="200"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"http_server_request_duration_seconds_bucket{method="GET",route="/things/{id}",status="200",le="0.005"} 1"#),
            "{text}"
        );
    }
}
