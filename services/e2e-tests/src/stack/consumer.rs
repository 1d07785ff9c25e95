//! Consumer-group services (processor, analytics, notifier) against a [`TestStack`]: run in this
//! process under the harness's supervisor, or as binaries with the environment built here; the
//! loop settings every such service gets in a test.

use std::sync::Arc;
use std::time::Duration;

use paystream_core::processing::{Faults, LoopSettings, LoopStats};
use paystream_core::service::{ConsumerService, ServiceHandler, ServiceSettings};

use super::TestStack;

/// Short retry delays, so tests see the whole chain in about a second.
pub const TEST_RETRY_DELAYS_MS: [u64; 3] = [200, 400, 800];

impl TestStack {
    /// Runs a consumer-group service in this process until teardown; returns its loop
    /// counters and chaos hooks.
    ///
    /// The harness is the instance's supervisor: as Kubernetes would restart a pod, it
    /// restarts an instance that stopped on a fatal Kafka error (the runtime stops rather than
    /// guess after a fencing or a broken idempotent producer) and says so on stderr. The new
    /// instance counts on in the same [`LoopStats`]; the test still judges the effects.
    pub async fn spawn_consumer<H: ServiceHandler>(
        &self,
        settings: ServiceSettings<H::Own>,
    ) -> anyhow::Result<(Arc<LoopStats>, Arc<Faults>)> {
        let app = ConsumerService::<H>::build(settings.clone()).await?;
        let (stats, faults) = (app.stats(), app.faults());
        let shutdown = self.shutdown.clone();
        let (counters, hooks) = (stats.clone(), faults.clone());
        tokio::spawn(async move {
            let mut app = app;
            loop {
                let Err(e) = app.run_until_stopped(shutdown.clone()).await else {
                    return;
                };
                eprintln!("{} stopped with an error: {e:#}", H::NAME);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    match ConsumerService::<H>::build(settings.clone()).await {
                        Ok(next) => {
                            eprintln!("{} restarted by the test supervisor", H::NAME);
                            app = next.continuing(counters.clone(), hooks.clone());
                            break;
                        }
                        Err(e) => eprintln!("{} did not restart: {e:#}", H::NAME),
                    }
                }
            }
        });
        Ok((stats, faults))
    }

    /// The environment every consumer-group binary needs to run against this stack.
    pub fn consumer_env(&self, group_id: &str, transactional_id: &str) -> Vec<(String, String)> {
        let mut env = self.stack_env();
        env.extend([
            ("PAYSTREAM_HTTP__PORT".into(), "0".into()),
            ("PAYSTREAM_CONSUMER__GROUP_ID".into(), group_id.into()),
            (
                "PAYSTREAM_CONSUMER__TRANSACTIONAL_ID".into(),
                transactional_id.into(),
            ),
            (
                "PAYSTREAM_CONSUMER__RETRY_DELAYS_MS".into(),
                TEST_RETRY_DELAYS_MS.map(|d| d.to_string()).join(","),
            ),
            // Dead letters in one partition, read in order by the tests.
            (
                "PAYSTREAM_CONSUMER__DLQ_TOPIC_PARTITIONS".into(),
                "1".into(),
            ),
        ]);
        env
    }
}

/// The loop settings service `H` ships with (e.g. the notifier's small batches and long
/// transaction timeout, sized for slow receivers), on this test's group, with short retry
/// delays.
pub(crate) fn test_loop_settings<H: ServiceHandler>(group_id: String) -> LoopSettings {
    let defaults = ConsumerService::<H>::load_settings()
        .unwrap_or_else(|e| panic!("{}'s defaults: {e:#}", H::NAME));
    LoopSettings {
        transactional_id: format!("{group_id}-0"),
        group_id,
        retry_delays_ms: TEST_RETRY_DELAYS_MS.to_vec(),
        // Dead letters in one partition, read in order by the tests.
        dlq_topic_partitions: 1,
        ..defaults.consumer
    }
}
