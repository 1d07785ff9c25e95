//! The stack's Jaeger, read through its HTTP query API: tests export spans there (services
//! started with [`otel_env`]) and assert on what Jaeger stored, like an operator would.
//!
//! `make up` starts Jaeger (scripts/jaeger.sh); its query API is `PAYSTREAM_JAEGER_URL`
//! (default `http://127.0.0.1:16686`) and its OTLP/HTTP receiver `PAYSTREAM_JAEGER_OTLP_URL`
//! (default `http://127.0.0.1:4318`).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use crate::otlp::ReceivedSpan;

/// Jaeger's query API.
pub fn jaeger_url() -> String {
    std::env::var("PAYSTREAM_JAEGER_URL").unwrap_or_else(|_| "http://127.0.0.1:16686".into())
}

/// Jaeger's OTLP/HTTP receiver, as an `OTEL_EXPORTER_OTLP_ENDPOINT`.
pub fn jaeger_otlp_url() -> String {
    std::env::var("PAYSTREAM_JAEGER_OTLP_URL").unwrap_or_else(|_| "http://127.0.0.1:4318".into())
}

/// The environment that makes a service binary export its spans to Jaeger as `service_name`
/// (unique per test, so parallel tests never see each other's services), flushing quickly.
pub fn otel_env(service_name: &str) -> Vec<(String, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), jaeger_otlp_url()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "http/protobuf".into()),
        ("OTEL_SERVICE_NAME".into(), service_name.into()),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
    ]
}

pub struct Jaeger {
    pub url: String,
    http: reqwest::Client,
}

impl Jaeger {
    /// The stack's Jaeger, checked to answer.
    pub async fn connect() -> anyhow::Result<Self> {
        let jaeger = Self {
            url: jaeger_url().trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
        };
        jaeger.get("/api/services").await.with_context(|| {
            format!(
                "Jaeger's query API does not answer at {} (is the stack up? `make up`)",
                jaeger.url
            )
        })?;
        Ok(jaeger)
    }

    async fn get(&self, path: &str) -> anyhow::Result<Option<Value>> {
        self.get_url(reqwest::Url::parse(&format!("{}{path}", self.url))?)
            .await
    }

    async fn get_url(&self, url: reqwest::Url) -> anyhow::Result<Option<Value>> {
        let response = self.http.get(url.clone()).send().await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let status = response.status();
        let body = response.text().await?;
        anyhow::ensure!(status.is_success(), "GET {url}: {status}: {body}");
        Ok(Some(serde_json::from_str(&body)?))
    }

    /// The spans of trace `trace_id` stored so far (empty when Jaeger has none).
    pub async fn trace(&self, trace_id: &str) -> anyhow::Result<Vec<ReceivedSpan>> {
        let Some(answer) = self.get(&format!("/api/traces/{trace_id}")).await? else {
            return Ok(Vec::new());
        };
        Ok(answer["data"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(spans_of)
            .collect())
    }

    /// Traces with a span of `service` tagged `key = value`, each as its spans.
    pub async fn find(
        &self,
        service: &str,
        key: &str,
        value: &str,
    ) -> anyhow::Result<Vec<Vec<ReceivedSpan>>> {
        let tags = serde_json::json!({ key: value }).to_string();
        let mut url = reqwest::Url::parse(&format!("{}/api/traces", self.url))?;
        url.query_pairs_mut()
            .append_pair("service", service)
            .append_pair("tags", &tags);
        let Some(answer) = self.get_url(url).await? else {
            return Ok(Vec::new());
        };
        Ok(answer["data"]
            .as_array()
            .into_iter()
            .flatten()
            .map(spans_of)
            .collect())
    }

    /// Polls `fetch` until `done` holds for what it returns, or fails after `wait` with the
    /// last answer (spans arrive in batches, each service on its own schedule).
    pub async fn eventually<T, F, Fut>(
        &self,
        wait: Duration,
        mut fetch: F,
        done: impl Fn(&T) -> bool,
    ) -> anyhow::Result<T>
    where
        T: std::fmt::Debug,
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<T>>,
    {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let value = fetch().await?;
            if done(&value) {
                return Ok(value);
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("Jaeger at {} never showed the expected spans within {wait:?}; last answer: {value:#?}", self.url);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The spans of one trace of Jaeger's JSON (`{traceID, spans, processes}`).
fn spans_of(trace: &Value) -> Vec<ReceivedSpan> {
    let service_of = |process_id: &str| {
        trace["processes"][process_id]["serviceName"]
            .as_str()
            .unwrap_or(process_id)
            .to_string()
    };
    trace["spans"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|span| {
            let attributes: BTreeMap<String, String> = span["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| {
                    let value = match &t["value"] {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    Some((t["key"].as_str()?.to_string(), value))
                })
                .collect();
            let references: Vec<&Value> = span["references"]
                .as_array()
                .into_iter()
                .flatten()
                .collect();
            let parent = references
                .iter()
                .find(|r| r["refType"] == "CHILD_OF")
                .and_then(|r| r["spanID"].as_str())
                .unwrap_or_default()
                .to_string();
            let links = references
                .iter()
                .filter(|r| r["refType"] == "FOLLOWS_FROM")
                .map(|r| {
                    (
                        r["traceID"].as_str().unwrap_or_default().to_string(),
                        r["spanID"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect();
            ReceivedSpan {
                service: service_of(span["processID"].as_str().unwrap_or_default()),
                trace_id: span["traceID"].as_str().unwrap_or_default().to_string(),
                span_id: span["spanID"].as_str().unwrap_or_default().to_string(),
                parent_span_id: parent,
                name: span["operationName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                kind: match attributes.get("span.kind").map(String::as_str) {
                    Some("server") => "server",
                    Some("client") => "client",
                    Some("producer") => "producer",
                    Some("consumer") => "consumer",
                    _ => "internal",
                },
                links,
                // Jaeger keeps microseconds.
                start_unix_nanos: span["startTime"].as_u64().unwrap_or_default() * 1_000,
                attributes,
            }
        })
        .collect()
}
