//! One trace per payment across every hop: the gateway, the payment processor and the notifier
//! run as real processes exporting OTLP to a test receiver; a payment whose first PSP call fails
//! goes through the retry chain and is then notified (webhook and e-mail), and all of it must be
//! one trace with the right structure and the OpenTelemetry messaging attributes.

use std::collections::HashMap;
use std::time::Duration;

use paystream_e2e_tests::otlp::{OtlpReceiver, ReceivedSpan};
use paystream_e2e_tests::{free_port, payment_body, ServiceProcess, TestStack};
use serde_json::json;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

/// Renders the spans of a trace as an indented tree (children in start order).
fn render_tree(spans: &[ReceivedSpan]) -> String {
    let mut children: HashMap<&str, Vec<&ReceivedSpan>> = HashMap::new();
    for s in spans {
        children
            .entry(s.parent_span_id.as_str())
            .or_default()
            .push(s);
    }
    for list in children.values_mut() {
        list.sort_by_key(|s| s.start_unix_nanos);
    }
    let ids: std::collections::HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut out = String::new();
    fn walk(
        out: &mut String,
        span: &ReceivedSpan,
        depth: usize,
        children: &HashMap<&str, Vec<&ReceivedSpan>>,
    ) {
        out.push_str(&format!(
            "{}{} [{} {}]\n",
            "  ".repeat(depth),
            span.name,
            span.service,
            span.kind
        ));
        for child in children.get(span.span_id.as_str()).into_iter().flatten() {
            walk(out, child, depth + 1, children);
        }
    }
    // Roots: spans whose parent was not exported (the client's span, or none).
    let mut roots: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| !ids.contains(s.parent_span_id.as_str()))
        .collect();
    roots.sort_by_key(|s| s.start_unix_nanos);
    for root in roots {
        walk(&mut out, root, 0, &children);
    }
    out
}

fn only<'a>(spans: &'a [ReceivedSpan], name: &str) -> &'a ReceivedSpan {
    let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "exactly one span `{name}`: {found:#?}");
    found[0]
}

fn child_of<'a>(spans: &'a [ReceivedSpan], parent: &ReceivedSpan, name: &str) -> &'a ReceivedSpan {
    spans
        .iter()
        .find(|s| s.parent_span_id == parent.span_id && s.name == name)
        .unwrap_or_else(|| panic!("no `{name}` under `{}`", parent.name))
}

/// A span named `name` somewhere under `ancestor` (handler spans may sit in between).
fn descendant_of<'a>(
    spans: &'a [ReceivedSpan],
    ancestor: &ReceivedSpan,
    name: &str,
) -> &'a ReceivedSpan {
    let by_id: HashMap<&str, &ReceivedSpan> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    spans
        .iter()
        .filter(|s| s.name == name)
        .find(|s| {
            let mut cursor = by_id.get(s.parent_span_id.as_str());
            while let Some(p) = cursor {
                if p.span_id == ancestor.span_id {
                    return true;
                }
                cursor = by_id.get(p.parent_span_id.as_str());
            }
            false
        })
        .unwrap_or_else(|| panic!("no `{name}` under `{}`", ancestor.name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_payment_is_one_trace_across_every_hop() -> anyhow::Result<()> {
    let receiver = OtlpReceiver::start().await?;
    let stack = TestStack::spawn().await?;
    let otel = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
            receiver.endpoint.clone(),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
    ];
    let port = free_port()?;
    let mut gateway_env = stack.gateway_env(port);
    gateway_env.extend(otel.clone());
    let mut gateway = ServiceProcess::start(
        "gateway",
        gateway_env,
        &format!("{}-gateway", stack.group_id),
    )?;
    let mut processor = ServiceProcess::spawn_with(
        &stack,
        &format!("{}-traced", stack.group_id),
        "traced",
        otel.clone(),
    )?;
    // The notifier, with a merchant whose webhook goes to a real receiver.
    let (webhooks, smtp) = stack.receivers().await?;
    let secret = stack
        .merchant_with_webhook("m_trace", &webhooks.url)
        .await?
        .expect("a new merchant shows its secret");
    webhooks.set_secret("m_trace", &secret);
    let notifier_tid = format!("{}-traced", stack.notifier_group());
    let mut notifier_env = stack.notifier_env(smtp.port, &notifier_tid);
    notifier_env.extend(otel);
    let mut notifier = ServiceProcess::spawn_binary(
        "notifier",
        notifier_env,
        &stack.group_id,
        &notifier_tid,
        "traced-notifier",
    )?;
    let gateway_url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while http
        .get(format!("{gateway_url}/health/live"))
        .send()
        .await
        .is_err()
    {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "gateway did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The client's own trace context: the gateway must continue it.
    let trace_id = Uuid::new_v4().simple().to_string();
    let client_span = &Uuid::new_v4().simple().to_string()[..16];
    let response = http
        .post(format!("{gateway_url}/v1/payments"))
        .header("content-type", "application/json")
        .header("Idempotency-Key", Uuid::new_v4().to_string())
        .header("traceparent", format!("00-{trace_id}-{client_span}-01"))
        // `cus_flaky…`: the PSP fails the first call, so the payment goes through retry.1.
        .body({
            let mut body = payment_body("m_trace", "cus_flaky_trace", 4200);
            body["customer_email"] = json!("buyer@example.com");
            body.to_string()
        })
        .send()
        .await?;
    assert_eq!(response.status(), 202);
    stack.wait_terminal(1, WAIT).await?;

    let retry_topic = format!("{}.retry.1", stack.group_id);
    let outcome_send = format!("send {}", stack.topics.payments_outcomes);
    // Every span the assertions below look for: each service exports in batches, and a parent
    // (a CONSUMER span) ends, and so is exported, after its children.
    let expected = [
        "POST /v1/payments".to_string(),
        format!("process {}", stack.topics.payments_requested),
        format!("process {retry_topic}"),
        format!("process {}", stack.topics.payments_outcomes),
        "webhook send".to_string(),
        "smtp send".to_string(),
    ];
    let spans = receiver
        .wait_for(WAIT, |spans| {
            expected.iter().all(|name| {
                spans
                    .iter()
                    .any(|s| s.trace_id == trace_id && s.name == *name)
            })
        })
        .await;
    let trace: Vec<ReceivedSpan> = spans
        .iter()
        .filter(|s| s.trace_id == trace_id)
        .cloned()
        .collect();
    eprintln!("trace {trace_id}:\n{}", render_tree(&trace));

    // gateway: the server span continues the client's span, and the send is its child.
    let server = only(&trace, "POST /v1/payments");
    assert_eq!(server.service, "gateway");
    assert_eq!(server.kind, "server");
    assert_eq!(server.parent_span_id, client_span);
    let requested_send = descendant_of(
        &trace,
        server,
        &format!("send {}", stack.topics.payments_requested),
    );
    assert_eq!(requested_send.kind, "producer");

    // payment-processor, attempt 1: consumes the requested event, fails at the PSP, forwards.
    let first = child_of(
        &trace,
        requested_send,
        &format!("process {}", stack.topics.payments_requested),
    );
    assert_eq!(first.service, "payment-processor");
    assert_eq!(first.kind, "consumer");
    for (key, value) in [
        ("messaging.system", "kafka"),
        ("messaging.operation.type", "process"),
        (
            "messaging.destination.name",
            stack.topics.payments_requested.as_str(),
        ),
        ("messaging.consumer.group.name", stack.group_id.as_str()),
        ("error.type", "transient"),
        ("retry.attempt", "0"),
    ] {
        assert_eq!(first.attr(key), Some(value), "{key} on {first:#?}");
    }
    for key in [
        "messaging.destination.partition.id",
        "messaging.kafka.offset",
        "messaging.kafka.message.key",
        "payment.id",
    ] {
        assert!(first.attr(key).is_some(), "{key} on {first:#?}");
    }
    let psp_first = child_of(&trace, first, "psp charge");
    assert_eq!(psp_first.kind, "client");
    let retry_send = child_of(&trace, first, &format!("send {retry_topic}"));

    // attempt 2, from the retry topic: a child of the forward, succeeds, sends the outcome.
    let second = child_of(&trace, retry_send, &format!("process {retry_topic}"));
    assert_eq!(second.attr("retry.attempt"), Some("1"));
    assert_eq!(second.attr("error.type"), None);
    child_of(&trace, second, "psp charge");
    let outcome = child_of(&trace, second, &outcome_send);
    assert_eq!(outcome.kind, "producer");

    // notifier: consumes the outcome as a child of its send, then delivers both channels.
    let notified = child_of(
        &trace,
        outcome,
        &format!("process {}", stack.topics.payments_outcomes),
    );
    assert_eq!(notified.service, "notifier");
    assert_eq!(notified.kind, "consumer");
    assert_eq!(
        notified.attr("messaging.consumer.group.name"),
        Some(stack.notifier_group().as_str())
    );
    let webhook = descendant_of(&trace, notified, "webhook send");
    assert_eq!(webhook.kind, "client");
    assert_eq!(webhook.attr("http.response.status_code"), Some("200"));
    assert_eq!(descendant_of(&trace, notified, "smtp send").kind, "client");
    assert_eq!(webhooks.accepted().len(), 1);

    // Shutdown flushes the exporters; all exit cleanly.
    assert!(notifier.terminate(WAIT).await?.success());
    assert!(processor.terminate(WAIT).await?.success());
    assert!(gateway.terminate(WAIT).await?.success());
    stack.teardown().await;
    Ok(())
}
