//! Logs as an operator reads them: one JSON object per line that joins up with traces, and
//! never a secret or card data, even at debug level.

use std::time::Duration;

use paystream_e2e_tests::otlp::OtlpReceiver;
use paystream_e2e_tests::{database_url, free_port, payment_body, ServiceProcess, TestStack};
use serde_json::{json, Value};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_join_up_and_never_show_secrets_or_card_data() -> anyhow::Result<()> {
    let stack = TestStack::spawn().await?;
    // Traces on: log lines then carry the trace and span ids (without an OTLP endpoint no
    // tracer runs at all, and only the ids of incoming `traceparent` headers are logged).
    let receiver = OtlpReceiver::start().await?;
    // Postgres here trusts local connections, so any password works: a distinctive one shows
    // whether the database URL ever reaches a log line.
    let password = format!("pw-{}", Uuid::new_v4().simple());
    let secret_url = database_url().replacen("postgres@", &format!("postgres:{password}@"), 1);
    assert_ne!(
        secret_url,
        database_url(),
        "the test URL must carry the password"
    );
    let secret_env = |mut envs: Vec<(String, String)>| {
        envs.retain(|(k, _)| k != "PAYSTREAM_DATABASE__URL");
        envs.push(("PAYSTREAM_DATABASE__URL".into(), secret_url.clone()));
        envs.push(("RUST_LOG".into(), "debug".into()));
        envs.push((
            "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
            receiver.endpoint.clone(),
        ));
        envs
    };
    let port = free_port()?;
    let mut gateway = ServiceProcess::start(
        "gateway",
        secret_env(stack.gateway_env(port)),
        &format!("{}-gateway-logs", stack.group_id),
    )?;
    let mut processor = ServiceProcess::spawn_with(
        &stack,
        &format!("{}-logs", stack.group_id),
        "logs",
        secret_env(Vec::new()),
    )?;
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while http.get(format!("{url}/health/live")).send().await.is_err() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "gateway did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A card number and a bearer token in a rejected request must not be echoed into the logs.
    let pan = "4111111111111111";
    let token = format!("tok-{}", Uuid::new_v4().simple());
    let mut with_card = payment_body("m_logs", "c_1", 100);
    with_card["card_number"] = json!(pan);
    let rejected = http
        .post(format!("{url}/v1/payments"))
        .header("content-type", "application/json")
        .header("Idempotency-Key", Uuid::new_v4().to_string())
        .header("authorization", format!("Bearer {token}"))
        .body(with_card.to_string())
        .send()
        .await?;
    assert!(rejected.status().is_client_error());
    let accepted = http
        .post(format!("{url}/v1/payments"))
        .header("content-type", "application/json")
        .header("Idempotency-Key", Uuid::new_v4().to_string())
        .body(payment_body("m_logs", "c_2", 200).to_string())
        .send()
        .await?;
    assert_eq!(accepted.status(), 202);
    let payment_id = accepted.json::<Value>().await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    stack.wait_terminal(1, WAIT).await?;
    assert!(processor.terminate(WAIT).await?.success());
    assert!(gateway.terminate(WAIT).await?.success());

    for (service, process) in [("gateway", &gateway), ("payment-processor", &processor)] {
        let text = std::fs::read_to_string(&process.log_path)?;
        for (what, secret) in [
            ("database password", password.as_str()),
            ("card number", pan),
            ("bearer token", token.as_str()),
        ] {
            assert!(!text.contains(secret), "{service} logged the {what}");
        }
        let lines = process.log_lines()?;
        assert_eq!(
            lines.len(),
            text.lines().count(),
            "{service}: every log line is one JSON object"
        );
        assert!(lines.iter().all(|l| l["service"] == service
            && l["timestamp"].is_string()
            && l["level"].is_string()));
        // The payment's own lines carry its id and the position of its record or request.
        let about_payment: Vec<&Value> = lines
            .iter()
            .filter(|l| l.to_string().contains(&payment_id))
            .collect();
        assert!(
            !about_payment.is_empty(),
            "{service} logged nothing about the payment"
        );
        assert!(
            about_payment
                .iter()
                .all(|l| l["trace_id"].as_str().is_some_and(|t| t.len() == 32)
                    && l["span_id"].as_str().is_some_and(|t| t.len() == 16)),
            "{service}: {about_payment:#?}"
        );
        if service == "payment-processor" {
            let decided = lines
                .iter()
                .find(|l| l["message"] == "payment decided")
                .expect("a decision line");
            let record = &decided["spans"][0];
            assert_eq!(record["payment.id"], payment_id.as_str());
            assert!(record["messaging.destination.name"].is_string());
            assert!(record["messaging.destination.partition.id"].is_number());
            assert!(record["messaging.kafka.offset"].is_number());
            assert!(record["trace_id"].as_str().is_some_and(|t| t.len() == 32));
        }
    }
    stack.teardown().await;
    Ok(())
}
