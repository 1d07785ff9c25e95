//! The PSP simulator's fault mix for a run: set through `PUT /admin/config`, and put back as
//! it was afterwards (the stack is shared; the next user should find it unchanged).

use paystream_psp_simulator::{ConfigPatch, SimulatorClient, SimulatorSettings};

use crate::cli::PspArgs;

/// The simulator's settings before a run, to restore.
pub struct PspOverride {
    client: SimulatorClient,
    before: Option<SimulatorSettings>,
    /// What the run ran with (for the report).
    pub during: Option<SimulatorSettings>,
}

impl PspOverride {
    /// Applies `args` (nothing when every flag is unset). When the simulator can't be reached
    /// the run goes on and the report says the mix is unknown.
    pub async fn apply(psp_url: &str, args: &PspArgs) -> anyhow::Result<Self> {
        let client = SimulatorClient::new(psp_url);
        let patch = ConfigPatch {
            latency_ms: args.psp_latency_ms,
            latency_jitter_ms: None,
            decline_rate: args.psp_decline_rate,
            transient_failure_rate: args.psp_transient_failure_rate,
        };
        let current = client.config().await;
        if patch == ConfigPatch::default() {
            return Ok(Self {
                client,
                before: None,
                during: current.ok(),
            });
        }
        let before = current?;
        let during = client.set_config(&patch).await?;
        Ok(Self {
            client,
            before: Some(before),
            during: Some(during),
        })
    }

    pub async fn restore(self) {
        let Some(before) = self.before else { return };
        let patch = ConfigPatch {
            latency_ms: Some(before.latency_ms),
            latency_jitter_ms: Some(before.latency_jitter_ms),
            decline_rate: Some(before.decline_rate),
            transient_failure_rate: Some(before.transient_failure_rate),
        };
        if let Err(e) = self.client.set_config(&patch).await {
            tracing::warn!(error = %e, "could not restore the PSP simulator's settings");
        }
    }
}
