//! The payment processor as a real process: SIGKILLed at random points with two instances in
//! the group, and stopped with SIGTERM under load.
//!
//! Every record the processing loop produces carries a `paystream.txn` header naming its
//! transaction, and the loop logs each transaction it commits. That lets the crash test account
//! for every record on the outcome topic, including the records of aborted transactions that
//! the local broker delivers even to read_committed consumers (see docs/operations.md).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::{stream, StreamExt, TryStreamExt};
use paystream_core::headers;
use paystream_e2e_tests::{payment_body, DecodedRecord, ProcessorProcess, TestStack};
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

/// A tiny deterministic PRNG (xorshift), seeded and printed so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
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
            latency_ms: Some(8),
            transient_failure_rate: Some(0.02),
            ..Default::default()
        })
        .await?;
    let ids = accept_payments(&stack, PAYMENTS, "m_crash").await?;

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64
        | 1;
    eprintln!("chaos seed {seed}");
    let mut rng = Rng(seed);
    let names = ["a", "b"];
    let mut runs: Vec<ProcessorProcess> = Vec::new();
    let mut live: [usize; 2] = [0, 0];
    for (slot, name) in names.iter().enumerate() {
        live[slot] = runs.len();
        runs.push(ProcessorProcess::spawn(
            &stack,
            &format!("{}-{name}", stack.group_id),
            &format!("{name}0"),
        )?);
    }
    // The in-doubt transaction of a killed run: it may have committed just before the kill,
    // after its last "committed" log line could be written.
    let mut killed_runs: Vec<usize> = Vec::new();
    let started = Instant::now();
    while killed_runs.len() < MIN_KILLS {
        tokio::time::sleep(Duration::from_millis(400 + rng.below(1_100))).await;
        let done = stack.terminal_payments().await?.len();
        anyhow::ensure!(
            done < PAYMENTS,
            "all payments finished after {} kills; the chaos came too late",
            killed_runs.len()
        );
        anyhow::ensure!(started.elapsed() < Duration::from_secs(300), "no progress");
        let slot = rng.below(2) as usize;
        runs[live[slot]].kill().await?;
        killed_runs.push(live[slot]);
        eprintln!(
            "SIGKILL instance {} (run {}) with {done}/{PAYMENTS} payments terminal",
            names[slot], live[slot]
        );
        live[slot] = runs.len();
        // Restarted at once with the same transactional id: it fences its predecessor's
        // transaction, which the coordinator aborts.
        runs.push(ProcessorProcess::spawn(
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

    // Every payment id on the outcome topic; every record accounted for by its transaction.
    let outcomes = stack
        .read_all(&stack.topics.payments_outcomes, Duration::from_secs(5))
        .await?;
    let wanted: HashSet<String> = ids.iter().map(|id| id.to_string()).collect();
    let keys: HashSet<String> = outcomes.iter().map(|r| r.key.clone()).collect();
    assert_eq!(keys, wanted, "every payment id on the outcome topic");
    let mut committed = HashSet::new();
    for run in &runs {
        committed.extend(run.committed_transactions()?);
    }
    let mut in_doubt = HashSet::new();
    for r in &killed_runs {
        in_doubt.extend(runs[*r].in_doubt_transaction()?);
    }
    let accounting = account(&outcomes, &committed, &in_doubt);
    eprintln!(
        "{} kills; outcome records: {} raw for {PAYMENTS} payments = {} from committed \
         transactions + {} from {} transactions that never committed ({} of them in doubt at a \
         kill); repeated PSP calls answered idempotently: {repeated_calls}",
        killed_runs.len(),
        outcomes.len(),
        accounting.committed_records,
        accounting.uncommitted_records,
        accounting.uncommitted_transactions,
        accounting.in_doubt_records,
    );
    assert_eq!(
        accounting.committed_records + accounting.uncommitted_records,
        outcomes.len()
    );

    for run in runs.iter_mut() {
        let _ = run.kill().await;
    }
    stack.teardown().await;
    Ok(())
}

struct Accounting {
    committed_records: usize,
    uncommitted_records: usize,
    uncommitted_transactions: usize,
    in_doubt_records: usize,
}

/// Splits the outcome records by whether their transaction committed, and checks that each
/// payment has exactly one outcome from a committed transaction. The one exception is a
/// payment whose committed outcome sits in the in-doubt transaction of a killed run (it may have
/// committed without living to log it): such a payment must then have no other committed
/// outcome.
fn account(
    outcomes: &[DecodedRecord],
    committed: &HashSet<String>,
    in_doubt: &HashSet<String>,
) -> Accounting {
    let mut per_payment: HashMap<&str, (usize, usize)> = HashMap::new();
    let mut uncommitted_txns = HashSet::new();
    let (mut committed_records, mut uncommitted_records, mut in_doubt_records) = (0, 0, 0);
    for r in outcomes {
        // Duplicates, if any, are the same event: same deterministic id.
        assert_eq!(
            r.headers.get(headers::EVENT_ID),
            r.value["event_id"].as_str()
        );
        let txn = r
            .headers
            .get(headers::PRODUCER_TXN)
            .unwrap_or_else(|| panic!("outcome without a transaction tag: {r:?}"));
        let entry = per_payment.entry(r.key.as_str()).or_default();
        if committed.contains(txn) {
            committed_records += 1;
            entry.0 += 1;
        } else {
            uncommitted_records += 1;
            uncommitted_txns.insert(txn.to_string());
            if in_doubt.contains(txn) {
                in_doubt_records += 1;
                entry.1 += 1;
            }
        }
    }
    for (payment, (committed, in_doubt)) in &per_payment {
        assert!(
            *committed == 1 || (*committed == 0 && *in_doubt >= 1),
            "payment {payment}: {committed} outcomes from committed transactions, \
             {in_doubt} in doubt"
        );
    }
    Accounting {
        committed_records,
        uncommitted_records,
        uncommitted_transactions: uncommitted_txns.len(),
        in_doubt_records,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_commits_and_the_next_instance_reprocesses_nothing() -> anyhow::Result<()>
{
    const PAYMENTS: usize = 300;
    let stack = TestStack::spawn().await?;
    stack
        .psp
        .set_config(&ConfigPatch {
            latency_ms: Some(10),
            ..Default::default()
        })
        .await?;
    let ids = accept_payments(&stack, PAYMENTS, "m_term").await?;

    let tid = format!("{}-0", stack.group_id);
    let mut first = ProcessorProcess::spawn(&stack, &tid, "first")?;
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
    assert_eq!(first.count_logged("processing loop stopped")?, 1);
    assert_eq!(first.count_logged("transaction aborted")?, 0);

    // No transaction left open or aborted: every outcome so far comes from a committed one.
    let committed = first.committed_transactions()?;
    let so_far = stack
        .read_all(&stack.topics.payments_outcomes, Duration::from_secs(3))
        .await?;
    assert_eq!(
        so_far
            .iter()
            .map(|r| r.key.as_str())
            .collect::<HashSet<_>>()
            .len(),
        so_far.len(),
        "one outcome per payment"
    );
    assert!(so_far.iter().all(|r| r
        .headers
        .get(headers::PRODUCER_TXN)
        .is_some_and(|t| committed.contains(t))));

    // The next instance picks up exactly where the first committed: nothing already applied
    // comes back to it.
    let mut second = ProcessorProcess::spawn(&stack, &tid, "second")?;
    let terminal = stack
        .wait_terminal(PAYMENTS, Duration::from_secs(120))
        .await?;
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(terminal[id], expected_status(i), "payment {i}");
    }
    let exit = second.terminate(Duration::from_secs(30)).await?;
    assert!(exit.success());
    assert_eq!(
        second.count_logged("event already applied; re-producing its recorded outputs")?,
        0,
        "the second instance reprocessed records the first had committed"
    );
    let outcomes = stack
        .read_all(&stack.topics.payments_outcomes, Duration::from_secs(3))
        .await?;
    assert_eq!(outcomes.len(), PAYMENTS, "exactly one outcome per payment");
    assert_eq!(stack.charges().await?.len(), PAYMENTS);
    stack.teardown().await;
    Ok(())
}
