//! `paystream trace <payment id>`: the payment's trace from Jaeger, printed as a span tree.
//!
//! Every span that handles a payment records its id as the attribute `payment.id` (the
//! gateway's `create_payment`, each consumer's `process <topic>`, the processor's `psp charge`,
//! the PSP simulator's `charge`). Jaeger's HTTP query API (`GET /api/traces`, the one that
//! filters on tags; it requires a service) is asked for traces with that tag, service by
//! service (those given with `--service`, else every service it knows, the payment processor's
//! and the gateway's first) until one has some: a trace holds every service's spans, so one
//! service's answer is the whole trace. The payment's trace is the largest found; a later
//! `GET /v1/payments/{id}` is a trace of its own, listed after the tree.
//!
//! Each line: indentation per depth, operation, service, duration, and what the retry chain
//! recorded: `retry.attempt=N` on a consumer span processing a retried record, `error.type` on
//! one whose processing failed, and `retry hop` / `DLQ hop` on a PRODUCER span sending the record
//! to a retry topic (`<group>.retry.N`) or the dead-letter topic (`<group>.dlq`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Deserialize;

/// The span attribute (Jaeger tag) that carries the payment id.
pub const PAYMENT_ID_TAG: &str = "payment.id";

#[derive(Args)]
pub struct TraceArgs {
    /// The payment id (as returned by `POST /v1/payments`).
    payment_id: String,
    /// Jaeger's query service (its HTTP API).
    #[arg(
        long,
        env = "PAYSTREAM_JAEGER_URL",
        default_value = "http://127.0.0.1:16686"
    )]
    jaeger_url: String,
    /// Search only these services (repeatable; default: every service Jaeger knows).
    #[arg(long = "service")]
    services: Vec<String>,
    /// Print the trace as Jaeger returned it (JSON) instead of the tree.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: TraceArgs) -> anyhow::Result<()> {
    let jaeger = Jaeger::new(&args.jaeger_url)?;
    let services = if args.services.is_empty() {
        search_order(jaeger.services().await?)
    } else {
        args.services.clone()
    };
    let mut traces: Vec<Trace> = Vec::new();
    for service in &services {
        traces = jaeger.find(service, &args.payment_id).await?;
        if !traces.is_empty() {
            break;
        }
    }
    // Largest first, then the earliest: the payment's own trace leads.
    traces.sort_by_key(|t| (std::cmp::Reverse(t.spans.len()), t.start()));
    let Some(trace) = traces.first() else {
        anyhow::bail!(
            "no trace of payment {} in Jaeger at {} (searched {} service(s): {}); spans \
             arrive within seconds of the work, and Jaeger keeps them in memory only until it \
             restarts",
            args.payment_id,
            args.jaeger_url,
            services.len(),
            match services.len() {
                0 => "none known yet".to_string(),
                n if n <= 6 => services.join(", "),
                n => format!("{}, and {} more", services[..5].join(", "), n - 5),
            }
        );
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&trace.raw)?);
        return Ok(());
    }
    print!("{}", render(trace, &args.payment_id));
    if traces.len() > 1 {
        println!();
        println!("other traces mentioning payment {}:", args.payment_id);
        for other in &traces[1..] {
            let root = other.roots().first().map(|s| s.label()).unwrap_or_default();
            println!(
                "  {}  {} span(s)  {root}",
                other.trace_id,
                other.spans.len()
            );
        }
    }
    Ok(())
}

/// Services in the order to search: every consumer span of the payment processor carries the
/// payment id (and belongs to the payment's own trace), then the gateway, then the rest.
fn search_order(mut services: Vec<String>) -> Vec<String> {
    let rank = |s: &str| {
        if s.contains("payment-processor") {
            0
        } else if s.contains("gateway") {
            1
        } else {
            2
        }
    };
    services.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
    services
}

struct Jaeger {
    http: reqwest::Client,
    base: reqwest::Url,
}

impl Jaeger {
    fn new(url: &str) -> anyhow::Result<Self> {
        let base = reqwest::Url::parse(url)
            .with_context(|| format!("--jaeger-url `{url}` is not a URL"))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self { http, base })
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> anyhow::Result<serde_json::Value> {
        let mut url = self.base.join(path)?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let response = self.http.get(url.clone()).send().await.map_err(|e| {
            anyhow::anyhow!(
                "Jaeger is unreachable at {} ({}); is the stack up (`make up`), or set \
                 --jaeger-url / PAYSTREAM_JAEGER_URL",
                self.base,
                paystream_core::telemetry::error_chain(&e)
            )
        })?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        anyhow::ensure!(
            status.is_success(),
            "Jaeger answered {status} to GET {url}: {}",
            body.chars().take(300).collect::<String>()
        );
        serde_json::from_str(&body).with_context(|| {
            format!(
                "Jaeger's answer to GET {url} is not JSON; is {} Jaeger's query service?",
                self.base
            )
        })
    }

    /// The services Jaeger has spans of (its own excluded).
    async fn services(&self) -> anyhow::Result<Vec<String>> {
        let answer = self.get("api/services", &[]).await?;
        let services: Vec<String> = answer["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .filter(|s| s != "jaeger")
            .collect();
        Ok(services)
    }

    /// Traces of `service` with a span tagged `payment.id = payment_id`.
    async fn find(&self, service: &str, payment_id: &str) -> anyhow::Result<Vec<Trace>> {
        let tags = serde_json::json!({ PAYMENT_ID_TAG: payment_id }).to_string();
        let answer = self
            .get(
                "api/traces",
                &[("service", service), ("tags", &tags), ("limit", "20")],
            )
            .await?;
        let mut traces = Vec::new();
        for raw in answer["data"].as_array().into_iter().flatten() {
            let parsed: JaegerTrace = serde_json::from_value(raw.clone())
                .context("reading a trace from Jaeger's answer")?;
            traces.push(Trace::new(parsed, raw.clone()));
        }
        Ok(traces)
    }
}

/// A trace in Jaeger's JSON (the UI's model, `/api/traces`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JaegerTrace {
    #[serde(rename = "traceID")]
    trace_id: String,
    spans: Vec<JaegerSpan>,
    #[serde(default)]
    processes: HashMap<String, JaegerProcess>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JaegerSpan {
    #[serde(rename = "spanID")]
    span_id: String,
    operation_name: String,
    #[serde(default)]
    references: Vec<JaegerReference>,
    /// Microseconds since the Unix epoch.
    start_time: i64,
    /// Microseconds.
    duration: i64,
    #[serde(default)]
    tags: Vec<JaegerTag>,
    #[serde(rename = "processID")]
    process_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JaegerReference {
    ref_type: String,
    #[serde(rename = "spanID")]
    span_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JaegerProcess {
    service_name: String,
}

#[derive(Deserialize)]
struct JaegerTag {
    key: String,
    value: serde_json::Value,
}

/// One span, flattened for rendering.
#[derive(Debug, Clone)]
pub struct Span {
    pub span_id: String,
    pub parent_id: Option<String>,
    pub service: String,
    pub operation: String,
    pub start_us: i64,
    pub duration_us: i64,
    pub tags: BTreeMap<String, String>,
}

impl Span {
    fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }

    fn label(&self) -> String {
        format!("{} [{}]", self.operation, self.service)
    }

    /// What the retry chain recorded on this span: the attempt a consumer processed, why its
    /// processing failed, and a record's hop to a retry or dead-letter topic.
    pub fn annotations(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if let Some(attempt) = self.tag("retry.attempt").filter(|a| *a != "0") {
            notes.push(format!("retry.attempt={attempt}"));
        }
        if let Some(class) = self.tag("error.type") {
            notes.push(format!("error.type={class}"));
        }
        if self.tag("messaging.operation.type") == Some("send") {
            let destination = self.tag("messaging.destination.name").unwrap_or_default();
            if destination.ends_with(".dlq") {
                notes.push(format!("DLQ hop → {destination}"));
            } else if retry_stage(destination).is_some() {
                notes.push(format!("retry hop → {destination}"));
            }
        }
        if self.tag("error") == Some("true") && self.tag("error.type").is_none() {
            notes.push("error".into());
        }
        notes
    }
}

/// N of a retry topic `<group>.retry.N`.
fn retry_stage(topic: &str) -> Option<u32> {
    let (_, n) = topic.rsplit_once(".retry.")?;
    n.parse().ok()
}

pub struct Trace {
    pub trace_id: String,
    pub spans: Vec<Span>,
    raw: serde_json::Value,
}

impl Trace {
    fn new(trace: JaegerTrace, raw: serde_json::Value) -> Self {
        let spans = trace
            .spans
            .into_iter()
            .map(|s| Span {
                parent_id: s
                    .references
                    .iter()
                    .find(|r| r.ref_type == "CHILD_OF")
                    .or_else(|| s.references.first())
                    .map(|r| r.span_id.clone()),
                service: trace
                    .processes
                    .get(&s.process_id)
                    .map(|p| p.service_name.clone())
                    .unwrap_or_else(|| s.process_id.clone()),
                span_id: s.span_id,
                operation: s.operation_name,
                start_us: s.start_time,
                duration_us: s.duration,
                tags: s
                    .tags
                    .into_iter()
                    .map(|t| {
                        let value = match t.value {
                            serde_json::Value::String(s) => s,
                            other => other.to_string(),
                        };
                        (t.key, value)
                    })
                    .collect(),
            })
            .collect();
        Self {
            trace_id: trace.trace_id,
            spans,
            raw,
        }
    }

    fn start(&self) -> i64 {
        self.spans.iter().map(|s| s.start_us).min().unwrap_or(0)
    }

    /// Spans whose parent is not in the trace (the client's span, or none), by start time.
    fn roots(&self) -> Vec<&Span> {
        let ids: HashSet<&str> = self.spans.iter().map(|s| s.span_id.as_str()).collect();
        let mut roots: Vec<&Span> = self
            .spans
            .iter()
            .filter(|s| s.parent_id.as_deref().is_none_or(|p| !ids.contains(p)))
            .collect();
        roots.sort_by_key(|s| s.start_us);
        roots
    }

    /// Depth-first, children in start order: (depth, span).
    fn walk(&self) -> Vec<(usize, &Span)> {
        let mut children: HashMap<&str, Vec<&Span>> = HashMap::new();
        for s in &self.spans {
            if let Some(p) = &s.parent_id {
                children.entry(p.as_str()).or_default().push(s);
            }
        }
        for list in children.values_mut() {
            list.sort_by_key(|s| s.start_us);
        }
        let mut out = Vec::new();
        let mut stack: Vec<(usize, &Span)> =
            self.roots().into_iter().rev().map(|s| (0, s)).collect();
        let mut visited = HashSet::new();
        while let Some((depth, span)) = stack.pop() {
            if !visited.insert(span.span_id.as_str()) {
                continue;
            }
            out.push((depth, span));
            for child in children
                .get(span.span_id.as_str())
                .into_iter()
                .flatten()
                .rev()
            {
                stack.push((depth + 1, child));
            }
        }
        out
    }
}

fn format_duration(us: i64) -> String {
    match us {
        us if us < 1_000 => format!("{us} µs"),
        us if us < 1_000_000 => format!("{:.1} ms", us as f64 / 1_000.0),
        us => format!("{:.2} s", us as f64 / 1_000_000.0),
    }
}

/// The tree: a header line, then one line per span.
pub fn render(trace: &Trace, payment_id: &str) -> String {
    let lines = trace.walk();
    let services: HashSet<&str> = trace.spans.iter().map(|s| s.service.as_str()).collect();
    let end = trace
        .spans
        .iter()
        .map(|s| s.start_us + s.duration_us)
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "trace {} · payment {payment_id} · {} spans, {} services, {}",
        trace.trace_id,
        trace.spans.len(),
        services.len(),
        format_duration(end - trace.start())
    );
    let width_op = lines
        .iter()
        .map(|(d, s)| 2 * d + s.operation.chars().count())
        .max()
        .unwrap_or(0);
    let width_service = lines
        .iter()
        .map(|(_, s)| s.service.chars().count())
        .max()
        .unwrap_or(0);
    for (depth, span) in lines {
        let name = format!("{}{}", "  ".repeat(depth), span.operation);
        let mut line = format!(
            "{name:<width_op$}  {:<width_service$}  {:>9}",
            span.service,
            format_duration(span.duration_us)
        );
        let notes = span.annotations();
        if !notes.is_empty() {
            line.push_str("  ");
            line.push_str(&notes.join("  "));
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: &str, parent: Option<&str>, op: &str, start: i64, tags: &[(&str, &str)]) -> Span {
        Span {
            span_id: id.into(),
            parent_id: parent.map(Into::into),
            service: "svc".into(),
            operation: op.into(),
            start_us: start,
            duration_us: 1_500,
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn the_tree_is_indented_in_start_order_with_retry_and_dlq_hops() {
        let trace = Trace {
            trace_id: "t1".into(),
            raw: serde_json::Value::Null,
            spans: vec![
                span(
                    "c",
                    Some("b"),
                    "send g.retry.1",
                    30,
                    &[
                        ("messaging.operation.type", "send"),
                        ("messaging.destination.name", "g.retry.1"),
                    ],
                ),
                span("a", Some("client"), "POST /v1/payments", 0, &[]),
                span(
                    "b",
                    Some("a"),
                    "process in",
                    10,
                    &[("retry.attempt", "0"), ("error.type", "transient")],
                ),
                span("p", Some("b"), "psp charge", 20, &[]),
                span(
                    "d",
                    Some("c"),
                    "process g.retry.1",
                    40,
                    &[("retry.attempt", "1")],
                ),
                span(
                    "e",
                    Some("d"),
                    "send g.dlq",
                    50,
                    &[
                        ("messaging.operation.type", "send"),
                        ("messaging.destination.name", "g.dlq"),
                    ],
                ),
            ],
        };
        let text = render(&trace, "pay_1");
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("trace t1 · payment pay_1 · 6 spans, 1 services"),
            "{text}"
        );
        let ops: Vec<String> = lines[1..]
            .iter()
            .map(|l| l.split("  svc").next().unwrap().trim_end().to_string())
            .collect();
        assert_eq!(
            ops,
            [
                "POST /v1/payments",
                "  process in",
                "    psp charge",
                "    send g.retry.1",
                "      process g.retry.1",
                "        send g.dlq",
            ],
            "{text}"
        );
        assert!(lines[2].ends_with("1.5 ms  error.type=transient"), "{text}");
        assert!(lines[4].ends_with("retry hop → g.retry.1"), "{text}");
        assert!(lines[5].ends_with("retry.attempt=1"), "{text}");
        assert!(lines[6].ends_with("DLQ hop → g.dlq"), "{text}");
    }

    #[test]
    fn the_processor_and_the_gateway_are_searched_first() {
        let order = search_order(
            [
                "analytics",
                "gateway",
                "psp-simulator",
                "payment-processor.t1",
                "jaeger-x",
            ]
            .map(String::from)
            .to_vec(),
        );
        assert_eq!(
            order,
            [
                "payment-processor.t1",
                "gateway",
                "analytics",
                "jaeger-x",
                "psp-simulator"
            ]
        );
    }

    #[test]
    fn jaeger_json_becomes_spans_with_services_and_parents() {
        let raw = serde_json::json!({
            "traceID": "abc",
            "spans": [
                {"traceID": "abc", "spanID": "s1", "operationName": "charge",
                 "references": [{"refType": "CHILD_OF", "traceID": "abc", "spanID": "s0"}],
                 "startTime": 5, "duration": 2, "processID": "p2",
                 "tags": [{"key": "retry.attempt", "type": "int64", "value": 2}]},
            ],
            "processes": {"p2": {"serviceName": "psp-simulator", "tags": []}},
        });
        let trace = Trace::new(serde_json::from_value(raw.clone()).unwrap(), raw);
        let s = &trace.spans[0];
        assert_eq!(s.service, "psp-simulator");
        assert_eq!(s.parent_id.as_deref(), Some("s0"));
        assert_eq!(s.annotations(), ["retry.attempt=2"]);
        assert_eq!(trace.roots().len(), 1);
    }
}
