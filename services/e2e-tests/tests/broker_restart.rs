//! The broker restarts while payments flow: first a clean SIGTERM, later a SIGKILL, each
//! followed by a start on the same log directory. Nothing accepted is lost and nothing is
//! doubled, judged by the PSP's ledger, a read_committed Confluent client and the database.
//!
//! The test runs a broker of its own (`OwnKafka`, the stack's jars and configuration) so the
//! broker every other test shares stays up. The gateway runs in process, the payment
//! processor as a real child process; neither is restarted by the test: they ride through a
//! broker outage on their own (librdkafka reconnects, the gateway's outbox holds what it
//! accepts meanwhile, an aborted batch is rewound and redone).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use paystream_e2e_tests::own_kafka::OwnKafka;
use paystream_e2e_tests::{payment_body, third_party, ServiceProcess, TestStack};
use paystream_psp_simulator::ConfigPatch;
use uuid::Uuid;

const PAYMENTS: usize = 400;

/// Accepts `PAYMENTS` payments at a steady pace, counting them in `accepted`; every 10th is
/// declined by the PSP simulator.
async fn steady_payments(
    stack: Arc<TestStack>,
    accepted: Arc<AtomicUsize>,
) -> anyhow::Result<Vec<(Uuid, &'static str)>> {
    let mut ids = Vec::with_capacity(PAYMENTS);
    for i in 0..PAYMENTS {
        let (customer, status) = if i % 10 == 0 {
            (format!("cus_decline_{i}"), "FAILED")
        } else {
            (format!("c_{i}"), "SUCCEEDED")
        };
        let id = stack
            .accept_payment(&payment_body("m_restart", &customer, 100 + i as i64))
            .await?;
        ids.push((id, status));
        accepted.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    Ok(ids)
}

async fn wait_accepted(accepted: &AtomicUsize, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while accepted.load(Ordering::SeqCst) < n {
        anyhow::ensure!(Instant::now() < deadline, "payments stopped being accepted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

enum Stop {
    Term,
    Kill,
}

/// Once `at` payments are accepted, stops the broker the `how` way, leaves it down for 3 s
/// (payments keep coming) and starts it again on the same log directory.
async fn outage(
    broker: &mut OwnKafka,
    how: Stop,
    accepted: &AtomicUsize,
    at: usize,
) -> anyhow::Result<()> {
    wait_accepted(accepted, at).await?;
    let stopped = match how {
        Stop::Term => format!("SIGTERM, exited with {}", broker.terminate().await?),
        Stop::Kill => broker.kill().await.map(|()| "SIGKILL".to_string())?,
    };
    eprintln!(
        "broker {stopped} at {} accepted",
        accepted.load(Ordering::SeqCst)
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.launch().await?;
    eprintln!(
        "broker started again at {} accepted",
        accepted.load(Ordering::SeqCst)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_sigterm_and_sigkill_lose_and_double_nothing() -> anyhow::Result<()> {
    let mut broker = OwnKafka::start().await?;
    let stack = Arc::new(TestStack::spawn_on(broker.settings(), |_| {}).await?);
    stack
        .psp
        .set_config(&ConfigPatch {
            latency_ms: Some(5),
            ..Default::default()
        })
        .await?;
    let mut processor = ServiceProcess::spawn(&stack, &format!("{}-0", stack.group_id), "restart")?;

    let accepted = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn(steady_payments(stack.clone(), accepted.clone()));

    outage(&mut broker, Stop::Term, &accepted, PAYMENTS / 4).await?;
    outage(&mut broker, Stop::Kill, &accepted, PAYMENTS * 5 / 8).await?;

    let ids = load.await??;
    let terminal = stack
        .wait_terminal(PAYMENTS, Duration::from_secs(240))
        .await?;
    // The processor rode through both outages: it never exited.
    assert!(
        processor.exited()?.is_none(),
        "the payment processor exited during a broker outage: {:?}",
        processor.exited()?
    );

    // The database: every accepted payment reached the status its card decides.
    assert_eq!(terminal.len(), PAYMENTS);
    for (id, status) in &ids {
        assert_eq!(terminal[id], *status, "payment {id}");
    }
    // The PSP's ledger: one charge per payment.
    let charges = stack.charges().await?;
    let charged: HashSet<String> = charges.iter().map(|c| c.payment_id.clone()).collect();
    assert_eq!(charges.len(), PAYMENTS, "one charge per payment");
    assert_eq!(
        charged,
        ids.iter()
            .map(|(id, _)| id.to_string())
            .collect::<HashSet<_>>()
    );
    // The broker, read by a stock Confluent client: one outcome record per payment.
    let outcomes = third_party::confluent_read_committed_at_least(
        &broker.addr,
        &stack.topics.payments_outcomes,
        PAYMENTS,
        Duration::from_secs(30),
    )
    .await?;
    let requests =
        third_party::confluent_read_committed(&broker.addr, &stack.topics.payments_requested)
            .await?;
    let written = stack
        .read_uncommitted_count(&stack.topics.payments_outcomes)
        .await?;
    eprintln!(
        "broker restarts: {PAYMENTS} payments accepted; {} terminal; {} PSP charges; outcome \
         records read_committed: {} ({written} in the log incl. aborted); request records: {} \
         for {} payments",
        terminal.len(),
        charges.len(),
        outcomes.records,
        requests.records,
        requests.per_key.len()
    );
    assert_eq!(outcomes.records, PAYMENTS, "one outcome record per payment");
    assert!(outcomes.not_once().is_empty(), "{:?}", outcomes.not_once());
    assert_eq!(
        requests.per_key.len(),
        PAYMENTS,
        "every request reached the broker"
    );

    processor.terminate(Duration::from_secs(30)).await?;
    if let Ok(stack) = Arc::try_unwrap(stack) {
        stack.teardown().await;
    }
    drop(broker);
    Ok(())
}
