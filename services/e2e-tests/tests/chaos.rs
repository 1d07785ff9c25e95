//! The chaos soak's `make test` size: 5,000 payments through the same [`chaos::run`] as
//! `make chaos` (which runs 100,000), judged by the same checks.

use paystream_e2e_tests::chaos::{self, ChaosPlan};

const PAYMENTS: usize = 5_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_thousand_payments_through_kills_and_restarts_are_charged_and_told_once(
) -> anyhow::Result<()> {
    let plan = ChaosPlan::from_env(PAYMENTS)?;
    let verdict = chaos::run(&plan).await?;
    let table = verdict.table();
    println!("{table}");
    assert!(verdict.passed(), "the chaos soak missed:\n{table}");
    Ok(())
}
