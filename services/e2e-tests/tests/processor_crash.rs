//! The payment processor as a real process: SIGKILLed at random points with two instances in
//! the group, and stopped with SIGTERM under load.
//!
//! The oracle is what third parties see: the broker under read_committed (Python
//! confluent-kafka and Kafka's console consumer count exactly one outcome *record* per payment),
//! the group's committed offsets, the PSP simulator's ledger and the database; never the
//! service's own log lines.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::{stream, StreamExt, TryStreamExt};
use paystream_core::headers;
use paystream_e2e_tests::chaos::Rng;
use paystream_e2e_tests::{payment_body, third_party, ServiceProcess, TestStack};
use paystream_psp_simulator::ConfigPatch;
use uuid::Uuid;

/// Accepts `n` payments through the gateway (every 10th declined) and returns their ids.
async fn accept_payments(stack: &TestStack, n: usize, merchant: &str) -> anyhow::Result<Vec<Uuid>> {
    stream::iter(0..n)
        .map(|i| async move {
            let customer = if declined(i) {
                format!("cus_decline_{i}")
            } else {
                format!("c_{i}")
            };
            stack
                .accept_payment(&payment_body(merchant, &customer, 100 + i as i64))
                .await
        })
        .buffered(8)
        .try_collect()
        .await
}

/// A processor with small batches and few calls at once: the payments take seconds, so the
/// kills and the SIGTERM land while batches are still coming (at the default concurrency the
/// whole backlog is done in one or two batches).
fn spawn_paced(
    stack: &TestStack,
    transactional_id: &str,
    run: &str,
) -> anyhow::Result<ServiceProcess> {
    let paced = vec![
        (
            "PAYSTREAM_CONSUMER__BATCH_MAX_RECORDS".to_string(),
            "20".to_string(),
        ),
        (
            "PAYSTREAM_CONSUMER__MAX_IN_FLIGHT".to_string(),
            "2".to_string(),
        ),
    ];
    ServiceProcess::spawn_with(stack, transactional_id, run, paced)
}

/// Every 10th payment is made with a card the PSP simulator declines.
fn declined(i: usize) -> bool {
    i.is_multiple_of(10)
}

fn expected_status(i: usize) -> &'static str {
    if declined(i) {
        "FAILED"
    } else {
        "SUCCEEDED"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_killed_at_random_lose_and_repeat_nothing() -> anyhow::Result<()> {
    const PAYMENTS: usize = 2_000;
    const MIN_KILLS: usize = 5;
    let stack = TestStack::spawn().await?;
    // Some PSP latency keeps batches in flight when a kill lands; a few PSP outages send
    // payments through the retry chain meanwhile.
    stack
        .psp
        .set_config(&ConfigPatch {
            latency_ms: Some(16),
            transient_failure_rate: Some(0.02),
            ..Default::default()
        })
        .await?;
    let ids = accept_payments(&stack, PAYMENTS, "m_crash").await?;

    let seed = Rng::clock_seed();
    eprintln!("chaos seed {seed}");
    let mut rng = Rng::new(seed);
    let names = ["a", "b"];
    let mut runs: Vec<ServiceProcess> = Vec::new();
    let mut live: [usize; 2] = [0, 0];
    for (slot, name) in names.iter().enumerate() {
        live[slot] = runs.len();
        runs.push(spawn_paced(
            &stack,
            &format!("{}-{name}", stack.group_id),
            &format!("{name}0"),
        )?);
    }
    let mut killed_runs: Vec<usize> = Vec::new();
    let started = Instant::now();
    while killed_runs.len() < MIN_KILLS {
        tokio::time::sleep(Duration::from_millis(400 + rng.between(0, 1_100))).await;
        let done = stack.terminal_payments().await?.len();
        anyhow::ensure!(
            done < PAYMENTS,
            "all payments finished after {} kills; the chaos came too late",
            killed_runs.len()
        );
        anyhow::ensure!(started.elapsed() < Duration::from_secs(300), "no progress");
        let slot = rng.between(0, 2) as usize;
        runs[live[slot]].kill().await?;
        killed_runs.push(live[slot]);
        eprintln!(
            "SIGKILL instance {} (run {}) with {done}/{PAYMENTS} payments terminal",
            names[slot], live[slot]
        );
        live[slot] = runs.len();
        // Restarted at once with the same transactional id: it fences its predecessor's
        // transaction, which the coordinator aborts.
        runs.push(spawn_paced(
            &stack,
            &format!("{}-{}", stack.group_id, names[slot]),
            &format!("{}{}", names[slot], runs.len()),
        )?);
    }

    let terminal = stack
        .wait_terminal(PAYMENTS, Duration::from_secs(240))
        .await?;
    assert_eq!(terminal.len(), PAYMENTS);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(terminal[id], expected_status(i), "payment {i}");
    }

    // Exactly one charge per payment at the PSP, whatever was retried or redelivered.
    let charges = stack.charges().await?;
    assert!(charges.iter().all(|c| c.has_charge()), "{charges:?}");
    let charged: HashSet<_> = charges.iter().map(|c| c.payment_id.clone()).collect();
    assert_eq!(charges.len(), PAYMENTS, "one charge per payment");
    assert_eq!(charged, ids.iter().map(|id| id.to_string()).collect());
    let repeated_calls: u64 = charges.iter().map(|c| c.calls - 1).sum();

    // The broker is the oracle for "committed": under read_committed a stock Confluent client
    // and Kafka's own console consumer each see exactly one outcome record per payment, though
    // the killed runs left aborted records in the log (counted by a read_uncommitted reader).
    let wanted: HashSet<String> = ids.iter().map(|id| id.to_string()).collect();
    let confluent = third_party::confluent_read_committed_at_least(
        &stack.kafka.bootstrap_servers,
        &stack.topics.payments_outcomes,
        PAYMENTS,
        Duration::from_secs(30),
    )
    .await?;
    // Counted once the last transaction has committed, so the figure is the whole log.
    let written = stack
        .read_uncommitted_count(&stack.topics.payments_outcomes)
        .await?;
    let console = third_party::console_read_committed(
        &stack.kafka.bootstrap_servers,
        &stack.topics.payments_outcomes,
    )
    .await?;
    eprintln!(
        "{} kills; outcome records for {PAYMENTS} payments: {} read_committed by confluent-kafka, \
         {} read_committed by kafka-console-consumer, {written} in the log including aborted \
         transactions; repeated PSP calls answered idempotently: {repeated_calls}",
        killed_runs.len(),
        confluent.records,
        console.records,
    );
    for counts in [&confluent, &console] {
        assert_eq!(
            counts.records, PAYMENTS,
            "one committed outcome record per payment"
        );
        assert!(counts.not_once().is_empty(), "{:?}", counts.not_once());
        assert_eq!(
            counts.per_key.keys().cloned().collect::<HashSet<_>>(),
            wanted
        );
    }
    // Our own reader (the runtime's read_committed settings) agrees, and duplicates, if any
    // reached it, would be the same event: same deterministic id in header and body.
    let outcomes = stack
        .read_all(&stack.topics.payments_outcomes, Duration::from_secs(3))
        .await?;
    assert_eq!(outcomes.len(), PAYMENTS);
    for r in &outcomes {
        assert_eq!(
            r.headers.get(headers::EVENT_ID),
            r.value["event_id"].as_str()
        );
    }

    for run in runs.iter_mut() {
        let _ = run.kill().await;
    }
    stack.teardown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_commits_and_the_next_instance_reprocesses_nothing() -> anyhow::Result<()>
{
    const PAYMENTS: usize = 300;
    let stack = TestStack::spawn().await?;
    stack
        .psp
        .set_config(&ConfigPatch {
            latency_ms: Some(50),
            ..Default::default()
        })
        .await?;
    let ids = accept_payments(&stack, PAYMENTS, "m_term").await?;

    let tid = format!("{}-0", stack.group_id);
    // Small batches, few calls at once: the 300 payments take seconds, so the SIGTERM lands
    // while batches are still coming.
    let paced = vec![
        (
            "PAYSTREAM_CONSUMER__BATCH_MAX_RECORDS".to_string(),
            "20".to_string(),
        ),
        (
            "PAYSTREAM_CONSUMER__MAX_IN_FLIGHT".to_string(),
            "4".to_string(),
        ),
    ];
    let mut first = ServiceProcess::spawn_with(&stack, &tid, "first", paced)?;
    let deadline = Instant::now() + Duration::from_secs(90);
    while stack.terminal_payments().await?.len() < 50 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "first processor made no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let exit = first.terminate(Duration::from_secs(30)).await?;
    let done_at_stop = stack.terminal_payments().await?.len();
    eprintln!("SIGTERM with {done_at_stop}/{PAYMENTS} payments terminal");
    assert!(exit.success(), "graceful shutdown exits 0, got {exit}");
    assert!(done_at_stop < PAYMENTS, "the stop must land mid-stream");

    // Nothing left open or aborted: under read_committed every outcome so far is there once,
    // and the log holds no record of an aborted transaction either.
    let so_far = third_party::confluent_read_committed(
        &stack.kafka.bootstrap_servers,
        &stack.topics.payments_outcomes,
    )
    .await?;
    assert!(so_far.not_once().is_empty(), "{:?}", so_far.not_once());
    assert_eq!(
        stack
            .read_uncommitted_count(&stack.topics.payments_outcomes)
            .await?,
        so_far.records,
        "a drained shutdown aborts nothing"
    );
    // The group's committed offsets (the broker's record) cover exactly what was applied.
    let committed = stack
        .committed_offsets(&stack.group_id, &stack.topics.payments_requested)
        .await?;
    eprintln!(
        "after SIGTERM: {} outcomes committed, group offsets cover {committed} requests",
        so_far.records
    );
    assert_eq!(committed as usize, so_far.records);

    // The next instance picks up exactly where the first committed: nothing already applied
    // comes back to it.
    let mut second = ServiceProcess::spawn(&stack, &tid, "second")?;
    let terminal = stack
        .wait_terminal(PAYMENTS, Duration::from_secs(120))
        .await?;
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(terminal[id], expected_status(i), "payment {i}");
    }
    let exit = second.terminate(Duration::from_secs(30)).await?;
    assert!(exit.success());
    // The PSP's ledger: one charge per payment, each called once: the second instance
    // re-ran nothing the first had committed.
    let charges = stack.charges().await?;
    assert_eq!(charges.len(), PAYMENTS);
    assert!(
        charges.iter().all(|c| c.calls == 1),
        "a payment was charged again"
    );
    let outcomes = third_party::confluent_read_committed_at_least(
        &stack.kafka.bootstrap_servers,
        &stack.topics.payments_outcomes,
        PAYMENTS,
        Duration::from_secs(30),
    )
    .await?;
    assert_eq!(
        outcomes.records, PAYMENTS,
        "exactly one outcome record per payment"
    );
    assert!(outcomes.not_once().is_empty());
    stack.teardown().await;
    Ok(())
}
