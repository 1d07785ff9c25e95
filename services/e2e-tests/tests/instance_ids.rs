//! Two instances of one consumer group on one host, neither with a transactional id
//! configured (two processes on a laptop, a scaled compose service): each claims an id of its
//! own, so neither fences the other, and a restarted instance takes back the id its
//! predecessor held, so it still fences that predecessor's zombie producer.
//!
//! Oracles: Kafka's own `kafka-transactions --list`, the database and the PSP's ledger.

use std::time::Duration;

use paystream_core::shutdown::Shutdown;
use paystream_e2e_tests::{kafka_tool, payment_body, TestStack};
use paystream_payment_processor::Application;

const WAIT: Duration = Duration::from_secs(60);

/// Transactional ids the broker knows, as Kafka's `kafka-transactions --list` prints them.
async fn broker_transactional_ids(prefix: &str) -> anyhow::Result<Vec<String>> {
    let mut ids: Vec<String> = kafka_tool(&["transactions", "list"])
        .await?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|id| id.starts_with(prefix))
        .map(str::to_string)
        .collect();
    ids.sort();
    Ok(ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_on_one_host_claim_distinct_transactional_ids() -> anyhow::Result<()> {
    let stack = TestStack::spawn().await?;
    let mut settings = stack.processor_settings();
    settings.consumer.transactional_id = String::new();
    let group = settings.consumer.group_id.clone();

    let first = Application::build(settings.clone()).await?;
    let second = Application::build(settings.clone()).await?;
    let (first_id, second_id) = (
        first.transactional_id().to_string(),
        second.transactional_id().to_string(),
    );
    println!("claimed: {first_id} and {second_id}");
    assert_ne!(first_id, second_id);
    assert!(first_id.starts_with(&format!("{group}-")), "{first_id}");

    // Both run side by side: with one id between them, each start would fence the other and
    // the loser would stop with a fatal error.
    let shutdown = Shutdown::new();
    let first_run = tokio::spawn(first.run_until_stopped(shutdown.clone()));
    let second_run = tokio::spawn(second.run_until_stopped(shutdown.clone()));
    for i in 0..20 {
        stack
            .accept_payment(&payment_body("m_ids", &format!("c_{i}"), 100 + i))
            .await?;
    }
    stack.wait_terminal(20, WAIT).await?;
    assert_eq!(stack.charges().await?.len(), 20, "one charge per payment");
    assert!(
        !first_run.is_finished() && !second_run.is_finished(),
        "an instance stopped: fenced by the other?"
    );
    let listed = broker_transactional_ids(&group).await?;
    println!("kafka-transactions --list: {listed:?}");
    assert!(
        listed.contains(&first_id) && listed.contains(&second_id),
        "{listed:?}"
    );

    // The first instance goes away; a new one takes back its id (the claim dies with it).
    first_run.abort();
    let _ = first_run.await;
    let third = stack
        .eventually(WAIT, "the first instance's id to be free again", || {
            let settings = settings.clone();
            let first_id = first_id.clone();
            async move {
                let third = Application::build(settings).await?;
                Ok((third.transactional_id() == first_id).then_some(third))
            }
        })
        .await?;
    println!(
        "after the first stopped, a new instance claimed {}",
        third.transactional_id()
    );
    drop(third);
    shutdown.cancel();
    let _ = second_run.await;
    stack.teardown().await;
    Ok(())
}
