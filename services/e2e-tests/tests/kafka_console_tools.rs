//! The README's Apache Kafka console-tool commands, run as a user would (verbatim, against the
//! local stack that `make up` started) after a payment went through; checks what they print.

use std::time::{Duration, Instant};

use paystream_e2e_tests::{payment_body, repo_root};
use serde_json::Value;

/// The `$ …` commands (with `\` continuations) of the README block between
/// `<!-- console-tools:begin -->` and `<!-- console-tools:end -->`.
fn readme_commands() -> anyhow::Result<Vec<String>> {
    let readme = std::fs::read_to_string(repo_root().join("README.md"))?;
    let block = readme
        .split("<!-- console-tools:begin -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- console-tools:end -->").next())
        .ok_or_else(|| anyhow::anyhow!("README has no console-tools block"))?;
    let mut commands = Vec::new();
    let mut lines = block.lines();
    while let Some(line) = lines.next() {
        let Some(first) = line.strip_prefix("$ ") else {
            continue;
        };
        let mut command = first.to_string();
        while command.ends_with('\\') {
            command.pop();
            command.push(' ');
            command.push_str(lines.next().unwrap_or_default().trim());
        }
        commands.push(command);
    }
    Ok(commands)
}

async fn run(command: &str) -> anyhow::Result<String> {
    let output = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new("bash")
            .args(["-c", command])
            .current_dir(repo_root())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| anyhow::anyhow!("`{command}` did not finish within 90 s"))??;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    anyhow::ensure!(
        output.status.success(),
        "`{command}` failed ({}): {}{stdout}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("$ {command}\n{stdout}");
    Ok(stdout)
}

/// Sends a payment through the stack's gateway and waits until it is processed.
async fn one_payment_through_the_stack() -> anyhow::Result<String> {
    let gateway = format!(
        "http://{}",
        std::env::var("PAYSTREAM_GATEWAY_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".into())
    );
    let http = reqwest::Client::new();
    let response = http
        .post(format!("{gateway}/v1/payments"))
        .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
        .header("content-type", "application/json")
        .body(payment_body("m_console", "c_console", 4200).to_string())
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == 202,
        "gateway answered {}",
        response.status()
    );
    let id = response.json::<Value>().await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let payment: Value = http
            .get(format!("{gateway}/v1/payments/{id}"))
            .send()
            .await?
            .json()
            .await?;
        if !["PENDING", "PROCESSING"].contains(&payment["status"].as_str().unwrap_or_default()) {
            return Ok(id);
        }
        anyhow::ensure!(Instant::now() < deadline, "payment {id} still pending");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_readme_console_tool_commands_print_what_it_shows() -> anyhow::Result<()> {
    // As many outcomes as the README's console consumer asks for, even on a fresh stack.
    for _ in 0..3 {
        one_payment_through_the_stack().await?;
    }
    let commands = readme_commands()?;
    let tool = |name: &str| {
        commands
            .iter()
            .find(|c| c.starts_with(&format!("scripts/kafka-tool {name} ")))
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("README shows no `{name}` command"))
    };

    // Outcomes under read_committed: key, headers (the event id among them), and no value.
    let consumed = run(&tool("console-consumer")?).await?;
    let records: Vec<&str> = consumed.lines().filter(|l| !l.is_empty()).collect();
    assert!(!records.is_empty(), "no outcome records printed");
    for record in &records {
        // print.partition, print.offset, print.headers and print.key, tab-separated.
        let fields: Vec<&str> = record.split('\t').collect();
        assert_eq!(fields.len(), 4, "{record}");
        assert!(fields[0].starts_with("Partition:"), "{record}");
        assert!(fields[1].starts_with("Offset:"), "{record}");
        assert!(fields[2].contains("event_id:"), "{record}");
        assert!(fields[2].contains("event_type:io.paystream."), "{record}");
        uuid::Uuid::parse_str(fields[3]).map_err(|e| anyhow::anyhow!("{record}: {e}"))?;
    }

    // The processor group's lag per partition of the requests topic.
    let groups = run(&tool("consumer-groups")?).await?;
    let header = groups
        .lines()
        .find(|l| l.starts_with("GROUP"))
        .ok_or_else(|| anyhow::anyhow!("no table header: {groups}"))?;
    for column in [
        "TOPIC",
        "PARTITION",
        "CURRENT-OFFSET",
        "LOG-END-OFFSET",
        "LAG",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let rows: Vec<Vec<&str>> = groups
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() >= 6 && f[0] == "payment-processor" && f[1] == "payments.requested.v1")
        .collect();
    assert!(!rows.is_empty(), "no requests-topic rows: {groups}");
    // A partition the group never committed on shows `-`; the payment above was committed.
    let committed: Vec<&Vec<&str>> = rows.iter().filter(|r| r[3] != "-").collect();
    assert!(!committed.is_empty(), "no committed offset shown: {groups}");
    for row in committed {
        let (current, end) = (row[3].parse::<i64>()?, row[4].parse::<i64>()?);
        assert!(current <= end, "{row:?}");
        assert_eq!(row[5].parse::<i64>()?, end - current, "{row:?}");
    }

    // Transactions: the processor's transactional id, known to the coordinator.
    let transactions = run(&tool("transactions")?).await?;
    let mut lines = transactions.lines();
    let header = lines.next().unwrap_or_default();
    for column in [
        "TransactionalId",
        "Coordinator",
        "ProducerId",
        "TransactionState",
    ] {
        assert!(header.contains(column), "{header}");
    }
    assert!(
        lines.any(|l| l.starts_with("payment-processor-")),
        "the processor's transactional id is not listed: {transactions}"
    );
    Ok(())
}
