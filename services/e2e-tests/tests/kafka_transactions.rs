//! Apache Kafka's transaction guarantees as the payment processor uses them, judged by the
//! broker: a zombie instance is fenced by its successor and its open transaction never becomes
//! visible; a transaction left open by a SIGKILLed process is aborted by the broker once its
//! `transaction.timeout.ms` has passed, and stops holding back read_committed consumers.

use std::time::{Duration, Instant};

use paystream_e2e_tests::{payment_body, third_party, ServiceProcess, TestStack};
use paystream_psp_simulator::ConfigPatch;

async fn accept(stack: &TestStack, n: usize, merchant: &str) -> anyhow::Result<()> {
    for i in 0..n {
        stack
            .accept_payment(&payment_body(merchant, &format!("c_{i}"), 100 + i as i64))
            .await?;
    }
    Ok(())
}

/// What a processor needs for its transactions to stay open long enough to be caught open:
/// they otherwise open after the PSP calls and commit within milliseconds.
fn hold_open(ms: u64) -> (String, String) {
    (
        "PAYSTREAM_CONSUMER__HOLD_TRANSACTION_OPEN_MS".to_string(),
        ms.to_string(),
    )
}

/// Waits until `topic` holds records of an open transaction (see `unstable_records`).
async fn wait_open_transaction(stack: &TestStack, topic: &str) -> anyhow::Result<i64> {
    stack
        .eventually(
            Duration::from_secs(60),
            "a transaction open on the outcomes",
            || async {
                let open = stack.unstable_records(topic).await?;
                Ok((open > 0).then_some(open))
            },
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_is_fenced_and_its_open_transaction_never_becomes_visible() -> anyhow::Result<()> {
    const PAYMENTS: usize = 60;
    let stack = TestStack::spawn().await?;
    stack
        .psp
        .set_config(&ConfigPatch {
            latency_ms: Some(150),
            ..Default::default()
        })
        .await?;
    accept(&stack, PAYMENTS, "m_zombie").await?;
    let outcomes = stack.topics.payments_outcomes.clone();
    let tid = format!("{}-0", stack.group_id);

    // Each transaction stays open 5 s: the zombie is frozen inside one.
    let mut zombie = ServiceProcess::spawn_with(&stack, &tid, "zombie", vec![hold_open(5_000)])?;
    let open = wait_open_transaction(&stack, &outcomes).await?;
    // Frozen mid-transaction (a long GC pause, a partitioned host): alive, but silent.
    zombie.signal("STOP").await?;
    eprintln!("zombie frozen with {open} outcome records in its open transaction");

    // Its replacement takes the same transactional id: InitProducerId bumps the epoch, which
    // fences the zombie and aborts its open transaction.
    let mut successor = ServiceProcess::spawn(&stack, &tid, "successor")?;
    stack
        .wait_terminal(PAYMENTS, Duration::from_secs(120))
        .await?;

    // The zombie wakes up: its next produce or commit is refused as fenced, a fatal error,
    // and it exits for its supervisor instead of writing anything.
    zombie.signal("CONT").await?;
    let exit = zombie.wait_exit(Duration::from_secs(60)).await?;
    eprintln!("zombie exited with {exit} after waking up");
    assert!(!exit.success(), "a fenced instance must stop, got {exit}");

    let committed = third_party::confluent_read_committed_at_least(
        &stack.kafka.bootstrap_servers,
        &outcomes,
        PAYMENTS,
        Duration::from_secs(30),
    )
    .await?;
    let written = stack.read_uncommitted_count(&outcomes).await?;
    eprintln!(
        "fencing: {} outcome records read_committed for {PAYMENTS} payments; {written} in the \
         log, {} of them from the zombie's aborted transaction",
        committed.records,
        written - committed.records
    );
    assert_eq!(committed.records, PAYMENTS);
    assert!(
        committed.not_once().is_empty(),
        "{:?}",
        committed.not_once()
    );
    assert!(
        written > committed.records,
        "the zombie's records are in the log, hidden"
    );
    let charges = stack.charges().await?;
    assert_eq!(charges.len(), PAYMENTS, "one charge per payment at the PSP");
    assert!(charges.iter().all(|c| c.has_charge()));

    successor.terminate(Duration::from_secs(30)).await?;
    stack.teardown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_transaction_of_a_killed_process_is_aborted_after_its_timeout() -> anyhow::Result<()>
{
    const PAYMENTS: usize = 40;
    // The start-up check wants deadline + PSP budget + 5 s + the hold below the timeout.
    const TIMEOUT_MS: u64 = 12_000;
    let stack = TestStack::spawn().await?;
    stack
        .psp
        .set_config(&ConfigPatch {
            latency_ms: Some(300),
            ..Default::default()
        })
        .await?;
    accept(&stack, PAYMENTS, "m_timeout").await?;
    let outcomes = stack.topics.payments_outcomes.clone();
    let timeout_env = vec![
        (
            "PAYSTREAM_CONSUMER__TRANSACTION_TIMEOUT_MS".to_string(),
            TIMEOUT_MS.to_string(),
        ),
        (
            "PAYSTREAM_CONSUMER__BATCH_DEADLINE_MS".to_string(),
            "500".to_string(),
        ),
        ("PAYSTREAM_PSP__TIMEOUT_MS".to_string(), "1000".to_string()),
        hold_open(5_000),
    ];

    let mut killed = ServiceProcess::spawn_with(
        &stack,
        &format!("{}-killed", stack.group_id),
        "killed",
        timeout_env,
    )?;
    wait_open_transaction(&stack, &outcomes).await?;
    killed.kill().await?;
    let killed_at = Instant::now();
    // Nobody reuses its transactional id, so only the broker's timeout can end the
    // transaction; until then it holds back every read_committed consumer of those partitions.
    let held = stack.unstable_records(&outcomes).await?;
    assert!(held > 0, "the killed process's transaction is open");
    let visible_while_open =
        third_party::confluent_read_committed(&stack.kafka.bootstrap_servers, &outcomes).await?;

    let released = stack
        .eventually(
            Duration::from_millis(TIMEOUT_MS + 15_000).saturating_sub(killed_at.elapsed()),
            "the broker aborting the killed process's transaction",
            || async {
                let open = stack.unstable_records(&outcomes).await?;
                Ok((open == 0).then(|| killed_at.elapsed()))
            },
        )
        .await?;
    let after_abort =
        third_party::confluent_read_committed(&stack.kafka.bootstrap_servers, &outcomes).await?;
    eprintln!(
        "transaction timeout: SIGKILL left {held} outcome records in an open transaction; \
         read_committed saw {} records meanwhile; the broker aborted it {:.1} s after the kill \
         (transaction.timeout.ms = {TIMEOUT_MS}); read_committed then saw {} records",
        visible_while_open.records,
        released.as_secs_f64(),
        after_abort.records
    );
    assert_eq!(
        after_abort.records, visible_while_open.records,
        "the aborted records never become visible"
    );
    assert!(after_abort.not_once().is_empty());

    // A new instance (another transactional id, the default timeout: at 300 ms a payment its
    // first batch outlasts 6 s) finishes the work: exactly once in the end.
    let mut next = ServiceProcess::spawn(&stack, &format!("{}-next", stack.group_id), "next")?;
    stack
        .wait_terminal(PAYMENTS, Duration::from_secs(120))
        .await?;
    let finished = third_party::confluent_read_committed_at_least(
        &stack.kafka.bootstrap_servers,
        &outcomes,
        PAYMENTS,
        Duration::from_secs(30),
    )
    .await?;
    assert_eq!(finished.records, PAYMENTS);
    assert!(finished.not_once().is_empty(), "{:?}", finished.not_once());
    assert_eq!(stack.charges().await?.len(), PAYMENTS);
    next.terminate(Duration::from_secs(30)).await?;
    stack.teardown().await;
    Ok(())
}
