//! Prometheus metrics as an SRE scrapes them: every service's `/metrics` serves the series the
//! dashboard and the alert rules use, and they move under load.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use paystream_e2e_tests::{free_port, payment_body, ServiceProcess, TestStack};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

/// `name{labels}` → value, from the Prometheus text format.
fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Sum of every series of `name` whose labels contain all of `labels` (`key="value"` pairs).
fn sum(metrics: &BTreeMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    metrics
        .iter()
        .filter(|(series, _)| {
            let (n, rest) = series.split_once('{').unwrap_or((series.as_str(), ""));
            n == name && labels.iter().all(|l| rest.contains(l))
        })
        .map(|(_, v)| v)
        .sum()
}

fn names(metrics: &BTreeMap<String, f64>) -> BTreeSet<String> {
    metrics
        .keys()
        .map(|s| s.split('{').next().unwrap_or_default().to_string())
        .collect()
}

/// The metric names a PromQL text refers to: identifiers followed by `{`, `[` or `)` that look
/// like ours.
fn referenced(promql: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut word = String::new();
    for c in promql.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
            continue;
        }
        if (word.starts_with("paystream_")
            || word.starts_with("gateway_")
            || word.starts_with("http_server_"))
            && matches!(c, '{' | '[' | ')' | ' ')
        {
            out.insert(word.clone());
        }
        word.clear();
    }
    out
}

async fn scrape(http: &reqwest::Client, url: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let response = http.get(format!("{url}/metrics")).send().await?;
    anyhow::ensure!(
        response.status() == 200,
        "{url}/metrics: {}",
        response.status()
    );
    let content_type = response.headers()["content-type"].to_str()?.to_string();
    anyhow::ensure!(content_type.starts_with("text/plain"), "{content_type}");
    Ok(parse(&response.text().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_exposes_the_dashboard_series_and_they_move_under_load() -> anyhow::Result<()>
{
    const PAYMENTS: usize = 30;
    let stack = TestStack::spawn().await?;
    let (gateway_port, processor_port) = (free_port()?, free_port()?);
    let _gateway = ServiceProcess::start(
        "gateway",
        stack.gateway_env(gateway_port),
        &format!("{}-gateway-metrics", stack.group_id),
    )?;
    let _processor = ServiceProcess::spawn_with(
        &stack,
        &format!("{}-metrics", stack.group_id),
        "metrics",
        vec![("PAYSTREAM_HTTP__PORT".into(), processor_port.to_string())],
    )?;
    let gateway = format!("http://127.0.0.1:{gateway_port}");
    let processor = format!("http://127.0.0.1:{processor_port}");
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    for url in [&gateway, &processor] {
        while http.get(format!("{url}/health/live")).send().await.is_err() {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{url} did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let before_gateway = scrape(&http, &gateway).await?;
    let before_processor = scrape(&http, &processor).await?;

    for i in 0..PAYMENTS {
        // Every 3rd payment's first PSP call fails: the retry chain moves too.
        let customer = if i.is_multiple_of(3) {
            format!("cus_flaky_{i}")
        } else {
            format!("c_{i}")
        };
        let response = http
            .post(format!("{gateway}/v1/payments"))
            .header("content-type", "application/json")
            .header("Idempotency-Key", Uuid::new_v4().to_string())
            .body(payment_body("m_metrics", &customer, 100).to_string())
            .send()
            .await?;
        assert_eq!(response.status(), 202);
    }
    stack.wait_terminal(PAYMENTS, WAIT).await?;
    // Lag comes from librdkafka's statistics, emitted every 5 s.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after_gateway = scrape(&http, &gateway).await?;
    let after_processor = scrape(&http, &processor).await?;

    let moved =
        |after: &BTreeMap<String, f64>,
         before: &BTreeMap<String, f64>,
         name: &str,
         labels: &[&str]| sum(after, name, labels) - sum(before, name, labels);
    let n = PAYMENTS as f64;
    assert_eq!(
        moved(
            &after_gateway,
            &before_gateway,
            "http_server_requests_total",
            &["route=\"/v1/payments\"", "status=\"202\""]
        ),
        n
    );
    assert!(
        moved(
            &after_gateway,
            &before_gateway,
            "http_server_request_duration_seconds_count",
            &["route=\"/v1/payments\""]
        ) >= n
    );
    assert_eq!(
        moved(
            &after_gateway,
            &before_gateway,
            "gateway_payments_accepted_total",
            &[]
        ),
        n
    );
    let group = format!("group=\"{}\"", stack.group_id);
    assert_eq!(
        moved(
            &after_processor,
            &before_processor,
            "paystream_consumer_records_total",
            &[&group, "outcome=\"applied\""]
        ),
        n
    );
    assert_eq!(
        moved(
            &after_processor,
            &before_processor,
            "paystream_consumer_records_total",
            &[&group, "outcome=\"retried\""]
        ),
        (PAYMENTS / 3) as f64
    );
    assert!(
        moved(
            &after_processor,
            &before_processor,
            "paystream_consumer_transactions_total",
            &[&group, "result=\"committed\""]
        ) >= 1.0
    );
    for histogram in [
        "paystream_consumer_record_duration_seconds_count",
        "paystream_consumer_end_to_end_seconds_count",
        "paystream_consumer_batch_size_count",
    ] {
        assert!(
            moved(&after_processor, &before_processor, histogram, &[&group]) >= 1.0,
            "{histogram}"
        );
    }
    assert!(
        sum(
            &after_processor,
            "paystream_consumer_rebalances_total",
            &[&group]
        ) >= 1.0,
        "the join was counted"
    );
    let lag_series = after_processor
        .keys()
        .filter(|s| s.starts_with("paystream_consumer_lag_records{") && s.contains(&group))
        .count();
    assert!(lag_series >= 1, "per-partition lag is published");
    assert_eq!(
        sum(
            &after_processor,
            "paystream_consumer_lag_records",
            &[&group]
        ),
        0.0,
        "everything consumed"
    );

    // Every series the dashboard and the alert rules query exists on some service.
    let mut served = names(&after_gateway);
    served.extend(names(&after_processor));
    let root = paystream_e2e_tests::repo_root().join("deploy/helm/paystream/files");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        root.join("grafana-dashboard.json"),
    )?)?;
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queried.extend(referenced(target["expr"].as_str().unwrap_or_default()));
        }
    }
    let alerts = std::fs::read_to_string(root.join("alerts.yaml"))?;
    queried.extend(
        alerts
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .flat_map(referenced),
    );
    assert!(queried.len() >= 10, "{queried:?}");
    let missing: Vec<_> = queried.difference(&served).collect();
    assert!(missing.is_empty(), "queried but not served: {missing:?}");
    stack.teardown().await;
    Ok(())
}
