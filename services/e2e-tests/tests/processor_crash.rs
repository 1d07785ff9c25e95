//! SIGKILL the payment processor in the middle of a stream of payments; the restarted
//! instance must finish the job with every payment charged once and every outcome on Kafka.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::Duration;

use paystream_e2e_tests::{payment_body, workspace_binary, TestStack};
use paystream_psp_simulator::ConfigPatch;
use tokio::process::{Child, Command};

const PAYMENTS: usize = 200;

fn spawn_processor(stack: &TestStack, log_name: &str) -> anyhow::Result<Child> {
    let log = std::fs::File::create(
        std::env::temp_dir().join(format!("{}-{log_name}.log", stack.group_id)),
    )?;
    Ok(Command::new(workspace_binary("payment-processor")?)
        .envs(stack.processor_env())
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_processor_restarts_without_losing_or_repeating_effects() -> anyhow::Result<()> {
    let stack = TestStack::spawn().await?;
    // Slow the PSP a little so the kill lands while batches are in flight.
    stack
        .psp
        .set_config(&ConfigPatch {
            latency_ms: Some(5),
            ..Default::default()
        })
        .await?;

    let mut ids = Vec::with_capacity(PAYMENTS);
    for i in 0..PAYMENTS {
        let customer = if i % 10 == 0 {
            format!("cus_decline_{i}")
        } else {
            format!("c_{i}")
        };
        ids.push(
            stack
                .accept_payment(&payment_body("m_crash", &customer, 100 + i as i64))
                .await?,
        );
    }

    let mut first = spawn_processor(&stack, "first")?;
    // Kill once a good part, but not all, of the work is done.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let done = stack.terminal_payments().await?.len();
        if done >= 40 {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "first processor made no progress ({done})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.start_kill()?; // SIGKILL
    first.wait().await?;
    let done_at_kill = stack.terminal_payments().await?.len();
    eprintln!("processor SIGKILLed with {done_at_kill}/{PAYMENTS} payments terminal");
    assert!(done_at_kill < PAYMENTS, "the kill must land mid-stream");

    let mut second = spawn_processor(&stack, "second")?;
    let terminal = stack
        .wait_terminal(PAYMENTS, Duration::from_secs(120))
        .await?;
    assert_eq!(terminal.len(), PAYMENTS);
    for (i, id) in ids.iter().enumerate() {
        let expected = if i % 10 == 0 { "FAILED" } else { "SUCCEEDED" };
        assert_eq!(terminal[id], expected, "payment {i}");
    }

    // Exactly one charge per payment at the PSP, whatever was retried.
    let charges = stack.charges().await?;
    assert!(charges.iter().all(|c| c.has_charge()), "{charges:?}");
    let charged: HashSet<_> = charges.iter().map(|c| c.payment_id.clone()).collect();
    assert_eq!(charges.len(), PAYMENTS, "one charge per payment");
    assert_eq!(charged, ids.iter().map(|id| id.to_string()).collect());
    let repeated_calls: u64 = charges.iter().map(|c| c.calls - 1).sum();

    // Every payment's outcome is on the topic (read_committed).
    let wanted: HashSet<String> = ids.iter().map(|id| id.to_string()).collect();
    let outcomes = stack
        .read_topic(
            &stack.topics.payments_outcomes,
            Duration::from_secs(60),
            |r| r.iter().map(|r| &r.key).collect::<HashSet<_>>().len() >= PAYMENTS,
        )
        .await?;
    let mut per_key: HashMap<&str, usize> = HashMap::new();
    for r in &outcomes {
        *per_key.entry(r.key.as_str()).or_default() += 1;
        // Duplicates, if any, are the same event: same deterministic id.
        assert_eq!(r.headers.get("event_id"), r.value["event_id"].as_str());
    }
    let keys: HashSet<String> = per_key.keys().map(|k| k.to_string()).collect();
    assert_eq!(keys, wanted, "every payment id on payments.outcomes.v1");
    let duplicates = outcomes.len() - PAYMENTS;
    eprintln!(
        "outcome records: {} for {PAYMENTS} payments ({duplicates} raw duplicates visible under \
         read_committed; repeated PSP calls answered idempotently: {repeated_calls})",
        outcomes.len()
    );

    // SIGTERM: the processor finishes its batch, commits, leaves the group and exits 0.
    let pid = second.id().expect("running").to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().await?;
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(20), second.wait()).await??;
    assert!(exit.success(), "graceful shutdown exits 0, got {exit}");
    stack.teardown().await;
    Ok(())
}
