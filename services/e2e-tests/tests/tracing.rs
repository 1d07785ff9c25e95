//! One trace per payment across every hop, as the stack's Jaeger stores it: the gateway, the
//! PSP simulator, the payment processor and the notifier run as real processes exporting OTLP
//! to Jaeger (`make up` starts it; `PAYSTREAM_JAEGER_URL`), each under a service name unique to
//! the test. A payment whose first PSP call fails goes through the retry chain and is then
//! notified (webhook and e-mail); all of it, the PSP's own `charge` spans included, must be one
//! trace with the right structure and the OpenTelemetry messaging attributes, read back through
//! Jaeger's query API. `paystream trace` must print that tree with the retry attempt.

use std::collections::HashMap;
use std::time::Duration;

use paystream_e2e_tests::jaeger::{otel_env, Jaeger};
use paystream_e2e_tests::otlp::ReceivedSpan;
use paystream_e2e_tests::{free_port, payment_body, workspace_binary, ServiceProcess, TestStack};
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

/// A PSP simulator child process exporting its spans as `service`, on a free port; its URL.
async fn spawn_psp(stack: &TestStack, service: &str) -> anyhow::Result<(ServiceProcess, String)> {
    let port = free_port()?;
    let mut env = vec![
        ("PAYSTREAM_HTTP__HOST".to_string(), "127.0.0.1".to_string()),
        ("PAYSTREAM_HTTP__PORT".into(), port.to_string()),
    ];
    env.extend(otel_env(service));
    let psp = ServiceProcess::start("psp-simulator", env, &format!("{}-psp", stack.group_id))?;
    let url = format!("http://127.0.0.1:{port}");
    wait_live(&url).await?;
    Ok((psp, url))
}

async fn wait_live(base_url: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while http
        .get(format!("{base_url}/health/live"))
        .send()
        .await
        .is_err()
    {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{base_url} did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The PSP simulator's `charge` SERVER span under the processor's `psp charge` CLIENT span.
fn psp_server_span<'a>(
    spans: &'a [ReceivedSpan],
    client: &ReceivedSpan,
    psp_service: &str,
) -> &'a ReceivedSpan {
    let charge = child_of(spans, client, "charge");
    assert_eq!(charge.service, psp_service);
    assert_eq!(charge.kind, "server");
    assert_eq!(charge.attr("payment.id"), client.attr("payment.id"));
    charge
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_payment_is_one_trace_across_every_hop() -> anyhow::Result<()> {
    let jaeger = Jaeger::connect().await?;
    let stack = TestStack::spawn().await?;
    // Service names of this test only: parallel tests never see each other's services.
    let service = |name: &str| format!("{name}.test-{}", stack.id);
    let (mut psp, psp_url) = spawn_psp(&stack, &service("psp-simulator")).await?;
    let port = free_port()?;
    let mut gateway_env = stack.gateway_env(port);
    gateway_env.extend(otel_env(&service("gateway")));
    let mut gateway = ServiceProcess::start(
        "gateway",
        gateway_env,
        &format!("{}-gateway", stack.group_id),
    )?;
    let mut processor_env = otel_env(&service("payment-processor"));
    processor_env.push(("PAYSTREAM_PSP__URL".into(), psp_url));
    let mut processor = ServiceProcess::spawn_with(
        &stack,
        &format!("{}-traced", stack.group_id),
        "traced",
        processor_env,
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
    notifier_env.extend(otel_env(&service("notifier")));
    let mut notifier = ServiceProcess::spawn_binary(
        "notifier",
        notifier_env,
        &stack.group_id,
        &notifier_tid,
        "traced-notifier",
    )?;
    let gateway_url = format!("http://127.0.0.1:{port}");
    wait_live(&gateway_url).await?;

    // The client's own trace context: the gateway must continue it.
    let trace_id = Uuid::new_v4().simple().to_string();
    let client_span = &Uuid::new_v4().simple().to_string()[..16];
    let response = reqwest::Client::new()
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
    let payment_id = response.json::<serde_json::Value>().await?["id"]
        .as_str()
        .expect("the payment's id")
        .to_string();
    stack.wait_terminal(1, WAIT).await?;

    let retry_topic = format!("{}.retry.1", stack.group_id);
    let outcome_send = format!("send {}", stack.topics.payments_outcomes);
    // Every span the assertions below look for, with how many of each: each service exports in
    // batches, and a parent (a CONSUMER span) ends, and so is exported, after its children.
    let expected = [
        ("POST /v1/payments".to_string(), 1),
        (format!("process {}", stack.topics.payments_requested), 1),
        (format!("process {retry_topic}"), 1),
        ("psp charge".to_string(), 2),
        ("charge".to_string(), 2),
        (format!("process {}", stack.topics.payments_outcomes), 1),
        ("webhook send".to_string(), 1),
        ("smtp send".to_string(), 1),
    ];
    let trace = jaeger
        .eventually(
            WAIT,
            || jaeger.trace(&trace_id),
            |spans: &Vec<ReceivedSpan>| {
                expected
                    .iter()
                    .all(|(name, n)| spans.iter().filter(|s| s.name == *name).count() >= *n)
            },
        )
        .await?;
    eprintln!("trace {trace_id} (Jaeger):\n{}", render_tree(&trace));
    assert!(trace.iter().all(|s| s.trace_id == trace_id));

    // gateway: the server span continues the client's span, and the send is its child.
    let server = only(&trace, "POST /v1/payments");
    assert_eq!(server.service, service("gateway"));
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
    assert_eq!(first.service, service("payment-processor"));
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
        ("payment.id", payment_id.as_str()),
    ] {
        assert_eq!(first.attr(key), Some(value), "{key} on {first:#?}");
    }
    for key in [
        "messaging.destination.partition.id",
        "messaging.kafka.offset",
        "messaging.kafka.message.key",
    ] {
        assert!(first.attr(key).is_some(), "{key} on {first:#?}");
    }
    let psp_first = child_of(&trace, first, "psp charge");
    assert_eq!(psp_first.kind, "client");
    // The PSP continued the processor's trace context: its `charge` is in the payment's trace.
    psp_server_span(&trace, psp_first, &service("psp-simulator"));
    let retry_send = child_of(&trace, first, &format!("send {retry_topic}"));

    // attempt 2, from the retry topic: a child of the forward, succeeds, sends the outcome.
    let second = child_of(&trace, retry_send, &format!("process {retry_topic}"));
    assert_eq!(second.attr("retry.attempt"), Some("1"));
    assert_eq!(second.attr("error.type"), None);
    let psp_second = child_of(&trace, second, "psp charge");
    psp_server_span(&trace, psp_second, &service("psp-simulator"));
    let outcome = child_of(&trace, second, &outcome_send);
    assert_eq!(outcome.kind, "producer");

    // notifier: consumes the outcome as a child of its send, then delivers both channels.
    let notified = child_of(
        &trace,
        outcome,
        &format!("process {}", stack.topics.payments_outcomes),
    );
    assert_eq!(notified.service, service("notifier"));
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

    // One trace per payment: searched by its id, every service finds this one trace only.
    for name in ["payment-processor", "psp-simulator", "notifier"] {
        let found = jaeger
            .find(&service(name), "payment.id", &payment_id)
            .await?;
        let ids: Vec<&str> = found
            .iter()
            .filter_map(|t| t.first().map(|s| s.trace_id.as_str()))
            .collect();
        assert_eq!(ids, [trace_id.as_str()], "traces of {name} for the payment");
    }

    // Shutdown flushes the exporters; all exit cleanly.
    assert!(notifier.terminate(WAIT).await?.success());
    assert!(processor.terminate(WAIT).await?.success());
    assert!(gateway.terminate(WAIT).await?.success());
    assert!(psp.terminate(WAIT).await?.success());
    stack.teardown().await;
    Ok(())
}

/// `paystream trace <payment id>` finds a retried payment's trace in Jaeger and prints its tree:
/// indentation per depth, service, duration, the failed attempt, the retry hop and the retry
/// attempt. An unknown payment and an unreachable Jaeger fail with a message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paystream_trace_prints_a_retried_payment_with_its_retry_attempt() -> anyhow::Result<()> {
    let jaeger = Jaeger::connect().await?;
    let stack = TestStack::spawn().await?;
    let service = |name: &str| format!("{name}.test-{}", stack.id);
    let (mut psp, psp_url) = spawn_psp(&stack, &service("psp-simulator")).await?;
    let mut processor_env = otel_env(&service("payment-processor"));
    processor_env.push(("PAYSTREAM_PSP__URL".into(), psp_url));
    let mut processor = ServiceProcess::spawn_with(
        &stack,
        &format!("{}-cli-trace", stack.group_id),
        "cli-trace",
        processor_env,
    )?;

    let payment_id = stack
        .accept_payment(&payment_body("m_cli_trace", "cus_flaky_cli_trace", 1234))
        .await?
        .to_string();
    stack.wait_terminal(1, WAIT).await?;

    // The oracle: Jaeger holds the payment's trace with both attempts, each with the PSP's
    // `charge` under the processor's `psp charge`, and the outcome sent.
    let retry_topic = format!("{}.retry.1", stack.group_id);
    let outcome_send = format!("send {}", stack.topics.payments_outcomes);
    let processor_service = service("payment-processor");
    let traces = jaeger
        .eventually(
            WAIT,
            || jaeger.find(&processor_service, "payment.id", &payment_id),
            |traces: &Vec<Vec<ReceivedSpan>>| {
                traces.iter().any(|t| {
                    let count = |name: &str| t.iter().filter(|s| s.name == name).count();
                    count(&format!("process {retry_topic}")) == 1
                        && count("psp charge") == 2
                        && count("charge") == 2
                        && count(&outcome_send) == 1
                })
            },
        )
        .await?;
    assert_eq!(traces.len(), 1, "one trace for the payment: {traces:#?}");
    let trace_id = traces[0][0].trace_id.clone();

    let paystream = |args: Vec<String>| {
        let mut command = tokio::process::Command::new(workspace_binary("paystream")?);
        command
            .arg("trace")
            .args(args)
            .env("PAYSTREAM_JAEGER_URL", &jaeger.url)
            .kill_on_drop(true);
        anyhow::Ok(command)
    };
    let out = paystream(vec![payment_id.clone()])?.output().await?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!(
        "$ paystream trace {payment_id}\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "paystream trace failed");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with(&format!("trace {trace_id} · payment {payment_id} · "))
            && lines[0].contains(" spans, 2 services, "),
        "{stdout}"
    );
    let depth = |line: &str| line.len() - line.trim_start().len();
    let line_of = |op: &str| -> (usize, &str) {
        let found: Vec<(usize, &str)> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.trim_start().starts_with(&format!("{op}  ")))
            .map(|(i, l)| (i, *l))
            .collect();
        assert_eq!(found.len(), 1, "one line `{op}` in:\n{stdout}");
        found[0]
    };
    let (first_at, first) = line_of(&format!("process {}", stack.topics.payments_requested));
    let (hop_at, hop) = line_of(&format!("send {retry_topic}"));
    let (retry_at, retry) = line_of(&format!("process {retry_topic}"));
    let (outcome_at, outcome) = line_of(&outcome_send);
    // The processing of the requested event is the root (the in-process gateway exports no
    // spans); the hop is its child, the retried processing the hop's child.
    assert_eq!(depth(first), 0, "{stdout}");
    assert!(first.contains(&service("payment-processor")), "{stdout}");
    assert!(first.ends_with("error.type=transient"), "{stdout}");
    assert!(
        first_at < hop_at && hop_at < retry_at && retry_at < outcome_at,
        "{stdout}"
    );
    assert_eq!(depth(hop), 2, "{stdout}");
    assert!(
        hop.ends_with(&format!("retry hop → {retry_topic}")),
        "{stdout}"
    );
    assert_eq!(depth(retry), 4, "{stdout}");
    assert!(retry.ends_with("retry.attempt=1"), "{stdout}");
    assert_eq!(depth(outcome), 6, "{stdout}");
    // Both PSP calls, each with the simulator's own span one level below.
    let charges: Vec<&&str> = lines
        .iter()
        .filter(|l| l.trim_start().starts_with("charge  "))
        .collect();
    assert_eq!(charges.len(), 2, "{stdout}");
    for charge in charges {
        assert!(charge.contains(&service("psp-simulator")), "{stdout}");
        assert!(depth(charge) == 4 || depth(charge) == 8, "{stdout}");
    }
    // Every span line shows a duration.
    assert!(
        lines[1..]
            .iter()
            .all(|l| [" µs", " ms", " s"].iter().any(|u| l.contains(u))),
        "{stdout}"
    );

    // A payment Jaeger has no trace of, and a Jaeger that does not answer: a message, exit 1.
    let unknown = Uuid::new_v4().to_string();
    let out = paystream(vec![unknown.clone()])?.output().await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("no trace of payment {unknown}")),
        "{stderr}"
    );
    let nowhere = format!("http://127.0.0.1:{}", free_port()?);
    let out = paystream(vec![
        payment_id.clone(),
        "--jaeger-url".into(),
        nowhere.clone(),
    ])?
    .output()
    .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("Jaeger is unreachable at"), "{stderr}");
    assert!(stderr.contains(&nowhere), "{stderr}");

    assert!(processor.terminate(WAIT).await?.success());
    assert!(psp.terminate(WAIT).await?.success());
    stack.teardown().await;
    Ok(())
}
