//! The stages behind the targets, each in its own scratch world ([`crate::scratch`]) with its
//! own service processes from the measured build profile ([`crate::services`]):
//!
//! - **drain** stages (payment processor at PSP 0 and 50 ms, analytics, notifier with a 20 ms
//!   webhook): the input topic is pre-filled, then a fresh consumer group starts and its
//!   committed offsets are read every 100 ms until they reach the topic's end. Offsets are
//!   committed in each batch's transaction, so the rate counts exactly-once-committed records.
//!   It is taken from the first commit to the last (group join and start-up are reported on
//!   their own); a stage that does not drain within its time-out reports the rate it reached.
//! - **gateway**: its own gateway (scratch schema and topics, outbox relay running), closed
//!   model at maximum rate, then an open-model run at half of it (HTTP p99).
//! - **end to end**: gateway, payment processor (PSP at 10 ms), analytics and notifier (a
//!   webhook receiver answering at once) on one scratch world, 1,000 payments/s in the open
//!   model, each tracked to its committed outcome.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::cli::{MixArgs, Targets};
use crate::e2e::Stage;
use crate::machine::{load_average, CpuTimes, ProcessCpu};
use crate::perf::Hotspot;
use crate::run::{self, RunResult, RunSpec};
use crate::schedule::Model;
use crate::scratch::World;
use crate::services::{record_cpu, stop_all, Binaries, Service};
use crate::webhook::WebhookSink;
use paystream_core::shutdown::Shutdown;

/// What one drain measured.
#[derive(Debug, Clone, Serialize)]
pub struct DrainResult {
    /// The stage (a target's name, or a sweep configuration).
    pub stage: String,
    /// The binary measured.
    pub service: String,
    pub instances: usize,
    /// What the stage set beyond the defaults (environment, PSP and webhook latency).
    pub settings: Vec<String>,
    /// Records pre-filled on the input topic.
    pub records: i64,
    /// Records committed by the group when the stage ended.
    pub committed: i64,
    /// Committed records per second, first commit to last.
    pub records_per_s: f64,
    /// From starting the processes to the first commit (start-up, group join, first batch).
    pub startup_s: f64,
    /// From the first commit to the last.
    pub drain_s: f64,
    /// Every pre-filled record committed within the time-out.
    pub completed: bool,
    /// Why the drain ended early, if it did (time-out, a process exited).
    pub note: String,
    pub load_avg_before: [f64; 3],
    pub load_avg_after: [f64; 3],
    /// Cores each process kept busy during the drain.
    pub cpu: Vec<ProcessCpu>,
    /// Hottest symbols of the drained service during (up to) the first [`PERF_WINDOW`].
    pub profile: Vec<Hotspot>,
}

/// How long a stage's services are profiled with `perf` (from when they are ready).
pub const PERF_WINDOW: Duration = Duration::from_secs(10);
/// Symbols kept of a profile.
pub const PERF_TOP: usize = 8;

/// Samples of committed offsets: `(seconds since the processes started, committed)`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DrainSamples {
    pub first: Option<(f64, i64)>,
    pub last: (f64, i64),
}

impl DrainSamples {
    /// Records a sample; only progress moves `last`, so a tail of idle polls does not count.
    pub fn record(&mut self, at_s: f64, committed: i64) {
        if committed > 0 && self.first.is_none() {
            self.first = Some((at_s, committed));
        }
        if committed > self.last.1 {
            self.last = (at_s, committed);
        }
    }

    /// Committed records per second from the first commit to the last. When everything came
    /// in one commit there is no interval to measure: then from the start, start-up included.
    pub fn rate(&self) -> f64 {
        match self.first {
            None => 0.0,
            Some((t0, c0)) if self.last.0 > t0 => (self.last.1 - c0) as f64 / (self.last.0 - t0),
            Some(_) => self.last.1 as f64 / self.last.0.max(1e-3),
        }
    }
}

/// One drain: `instances` of `binary` with `extra` settings on the world's group for it,
/// reading `topic` (pre-filled by the caller), until its committed offsets reach the end.
pub struct Drain<'s> {
    pub stage: &'s str,
    pub binary: &'s str,
    pub topic: &'s str,
    pub instances: usize,
    pub extra: Vec<(String, String)>,
    /// Shown in the report beside the environment (e.g. `PSP latency 50 ms`).
    pub notes: Vec<String>,
    pub timeout: Duration,
}

impl Drain<'_> {
    pub async fn run(self, world: &World<'_>) -> anyhow::Result<DrainResult> {
        let progress = world.progress(self.binary, self.topic)?;
        let end = progress.end().await?;
        let load_avg_before = load_average();
        let cpu_before = CpuTimes::now();
        let start = Instant::now();
        let mut services = world
            .start_group(self.binary, self.instances, &self.extra)
            .await?;
        let recording = record_cpu(
            world.bins,
            &services.iter().collect::<Vec<_>>(),
            PERF_WINDOW,
        );
        let deadline = Instant::now() + self.timeout;
        let mut samples = DrainSamples::default();
        let note = loop {
            let committed = progress.committed().await?;
            samples.record(start.elapsed().as_secs_f64(), committed);
            if committed >= end {
                break String::new();
            }
            if world.stop.is_cancelled() {
                break "interrupted".into();
            }
            if let Some(i) = services.iter_mut().position(|s| s.exited()) {
                let s = &services[i];
                break format!("{} exited; log: {}", s.name, s.log.display());
            }
            if Instant::now() >= deadline {
                break format!(
                    "time-out after {:.0} s: {committed} of {end} committed",
                    self.timeout.as_secs_f64()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let cpu = CpuTimes::now().since(&cpu_before);
        let load_avg_after = load_average();
        let profile = match recording {
            Some(r) => r.finish(PERF_TOP).await,
            None => Vec::new(),
        };
        stop_all(services).await;
        let first = samples.first.map_or(samples.last.0, |f| f.0);
        let mut settings: Vec<String> = self
            .extra
            .iter()
            .filter(|(k, _)| k.starts_with("PAYSTREAM_CONSUMER__"))
            .map(|(k, v)| format!("{}={v}", k.trim_start_matches("PAYSTREAM_")))
            .collect();
        settings.extend(self.notes);
        Ok(DrainResult {
            stage: self.stage.to_string(),
            service: self.binary.to_string(),
            instances: self.instances.max(1),
            settings,
            records: end,
            committed: samples.last.1,
            records_per_s: samples.rate(),
            startup_s: first,
            drain_s: samples.last.0 - first,
            completed: samples.last.1 >= end,
            note,
            load_avg_before,
            load_avg_after,
            cpu,
            profile,
        })
    }
}

/// Sizes and settings of the target stages.
#[derive(Debug, Clone)]
pub struct StagePlan {
    pub processor_records: usize,
    pub psp50_records: usize,
    pub analytics_records: usize,
    pub notifier_records: usize,
    /// Instances of each consumer group.
    pub instances: usize,
    pub drain_timeout: Duration,
    pub gateway_duration: Duration,
    pub gateway_concurrency: usize,
    pub e2e_rate: f64,
    pub e2e_duration: Duration,
    pub e2e_grace: Duration,
    pub mix: MixArgs,
}

/// Names of the drain stages (also the targets they are judged by).
pub const PROCESSOR_PSP0: &str = "processor_rps_psp0";
pub const PROCESSOR_PSP50: &str = "processor_rps_psp50";
pub const ANALYTICS: &str = "analytics_rps";
pub const NOTIFIER: &str = "notifier_rps_webhook20";

/// The payment processor draining `records` requests with every PSP call taking `psp_ms`.
pub async fn processor(
    world: &World<'_>,
    stage: &str,
    records: usize,
    psp_ms: u64,
    instances: usize,
    extra: Vec<(String, String)>,
    timeout: Duration,
) -> anyhow::Result<DrainResult> {
    let psp = world.start_psp(psp_ms).await?;
    world.prefill_requests(records).await?;
    let mut extra = extra;
    extra.push(("PAYSTREAM_PSP__URL".into(), psp.url()));
    let drained = Drain {
        stage,
        binary: "payment-processor",
        topic: &world.scratch.requested,
        instances,
        extra,
        notes: vec![format!("PSP latency {psp_ms} ms, 5 % declines")],
        timeout,
    }
    .run(world)
    .await;
    psp.stop().await;
    drained
}

/// A fresh analytics group draining `records` outcomes.
pub async fn analytics(world: &World<'_>, plan: &StagePlan) -> anyhow::Result<DrainResult> {
    world.prefill_outcomes(plan.analytics_records).await?;
    Drain {
        stage: ANALYTICS,
        binary: "analytics",
        topic: &world.scratch.outcomes,
        instances: plan.instances,
        extra: Vec::new(),
        notes: Vec::new(),
        timeout: plan.drain_timeout,
    }
    .run(world)
    .await
}

/// Delay of the webhook receiver in the notifier stage.
pub const WEBHOOK_MS: u64 = 20;

/// A fresh notifier group draining `records` outcomes, each a webhook to a receiver that
/// answers after [`WEBHOOK_MS`] (merchants registered through a gateway's admin API).
pub async fn notifier(world: &World<'_>, plan: &StagePlan) -> anyhow::Result<DrainResult> {
    let sink = WebhookSink::start(Duration::from_millis(WEBHOOK_MS), world.stop.clone()).await?;
    let gateway = world.start_gateway().await?;
    let registered = world
        .register_webhooks(&gateway, plan.mix.merchants.max(50), &sink.url)
        .await;
    gateway.stop().await;
    registered?;
    world.prefill_outcomes(plan.notifier_records).await?;
    let mut drained = Drain {
        stage: NOTIFIER,
        binary: "notifier",
        topic: &world.scratch.outcomes,
        instances: plan.instances,
        extra: notifier_env(),
        notes: vec![format!("webhook receiver answers after {WEBHOOK_MS} ms")],
        timeout: plan.drain_timeout,
    }
    .run(world)
    .await?;
    drained
        .settings
        .push(format!("{} webhooks received", sink.received()));
    Ok(drained)
}

/// The notifier may call the bench's receiver on 127.0.0.1; customers have no e-mail address
/// in the bench, so no mail is sent.
fn notifier_env() -> Vec<(String, String)> {
    vec![(
        "PAYSTREAM_NOTIFIER__ALLOW_LOOPBACK_TARGETS".into(),
        "true".into(),
    )]
}

/// Run names of the gateway and end-to-end stages.
pub const GATEWAY_MAX: &str = "gateway-max";
pub const GATEWAY_HALF: &str = "gateway-half";
pub const E2E: &str = "e2e";

/// The bench's own gateway at maximum rate, then at half of `half_of` or of its maximum,
/// whichever is lower. Returns the runs made.
pub async fn gateway(
    world: &World<'_>,
    plan: &StagePlan,
    half_of: f64,
    shutdown: &Shutdown,
) -> anyhow::Result<Vec<RunResult>> {
    let gateway = world.start_gateway().await?;
    let spec = |name: &str, model| RunSpec {
        name: name.to_string(),
        base_url: gateway.url(),
        model,
        duration: plan.gateway_duration,
        stages: Vec::new(),
        e2e_grace: Duration::ZERO,
        mix: plan.mix.clone(),
    };
    let mut runs = Vec::new();
    let closed = Model::Closed {
        concurrency: plan.gateway_concurrency,
    };
    eprintln!("== {GATEWAY_MAX}: {closed:?}");
    let recording = record_cpu(world.bins, &[&gateway], PERF_WINDOW);
    let mut max = run::execute(world.targets, &spec(GATEWAY_MAX, closed), shutdown).await;
    if let (Some(r), Ok(m)) = (recording, max.as_mut()) {
        m.profile = r.finish(PERF_TOP).await;
    }
    let half = match &max {
        Ok(m) => (half_of / 2.0).min(m.accepted_per_s / 2.0).round(),
        Err(_) => 0.0,
    };
    match max {
        Ok(m) => runs.push(m),
        Err(e) => {
            gateway.stop().await;
            return Err(e);
        }
    }
    if half >= 1.0 && !shutdown.is_cancelled() {
        let open = Model::Open {
            rate: half,
            max_in_flight: OPEN_MAX_IN_FLIGHT,
        };
        eprintln!("== {GATEWAY_HALF}: {open:?}");
        match run::execute(world.targets, &spec(GATEWAY_HALF, open), shutdown).await {
            Ok(r) => runs.push(r),
            Err(e) => eprintln!("{GATEWAY_HALF} failed: {e:#}"),
        }
    }
    gateway.stop().await;
    Ok(runs)
}

/// Bound on requests in flight in the open model: far above what the gateway's pool can
/// serve at once, so the bound only matters when the server has stalled anyway.
pub const OPEN_MAX_IN_FLIGHT: usize = 1024;

/// PSP latency of the end-to-end stage.
pub const E2E_PSP_MS: u64 = 10;

/// The whole pipeline on one world: gateway, processor, analytics, notifier; `plan.e2e_rate`
/// payments/s for `plan.e2e_duration`, each tracked to its outcome, the request event (relay)
/// and the notifier's receipt.
pub async fn end_to_end(
    world: &World<'_>,
    plan: &StagePlan,
    shutdown: &Shutdown,
) -> anyhow::Result<RunResult> {
    let sink = WebhookSink::start(Duration::ZERO, world.stop.clone()).await?;
    let psp = world.start_psp(E2E_PSP_MS).await?;
    let mut services: Vec<Service> = vec![world.start_gateway().await?];
    let gateway_url = services[0].url();
    let started = async {
        world
            .register_webhooks(&services[0], plan.mix.merchants, &sink.url)
            .await?;
        let processor_env = vec![("PAYSTREAM_PSP__URL".to_string(), psp.url())];
        for (binary, extra) in [
            ("payment-processor", processor_env),
            ("analytics", Vec::new()),
            ("notifier", notifier_env()),
        ] {
            services.extend(world.start_group(binary, plan.instances, &extra).await?);
        }
        anyhow::Ok(())
    }
    .await;
    let result = match started {
        Ok(()) => {
            let s = &world.scratch;
            let spec = RunSpec {
                name: E2E.into(),
                base_url: gateway_url,
                model: Model::Open {
                    rate: plan.e2e_rate,
                    max_in_flight: OPEN_MAX_IN_FLIGHT,
                },
                duration: plan.e2e_duration,
                stages: [
                    ("outcome", &s.outcomes),
                    ("relay", &s.requested),
                    ("notification", &s.notifications),
                ]
                .map(|(name, topic)| Stage {
                    name: name.into(),
                    topic: topic.clone(),
                })
                .to_vec(),
                e2e_grace: plan.e2e_grace,
                mix: plan.mix.clone(),
            };
            eprintln!(
                "== {E2E}: {} payments/s for {} s, PSP {E2E_PSP_MS} ms, {} instance(s) per group",
                plan.e2e_rate,
                plan.e2e_duration.as_secs(),
                plan.instances
            );
            // The window ends before the run does: what the services do under steady load.
            let all: Vec<&Service> = services.iter().collect();
            let recording = record_cpu(world.bins, &all, PERF_WINDOW);
            let mut result = run::execute(world.targets, &spec, shutdown).await;
            if let (Some(r), Ok(run)) = (recording, result.as_mut()) {
                run.profile = r.finish(PERF_TOP).await;
            }
            result
        }
        Err(e) => Err(e),
    };
    stop_all(services).await;
    psp.stop().await;
    result
}

/// Runs `f` in a fresh world; a failure is reported and yields `None`, so one stage's failure
/// does not stop the suite.
pub async fn in_world<T>(
    name: &str,
    targets: &Targets,
    bins: &Binaries,
    shutdown: &Shutdown,
    f: impl AsyncFnOnce(&World) -> anyhow::Result<T>,
) -> Result<T, String> {
    World::with(targets, bins, shutdown, f).await.map_err(|e| {
        let message = format!("{e:#}");
        eprintln!("{name} failed: {message}");
        message
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_runs_from_the_first_commit_to_the_last() {
        let mut s = DrainSamples::default();
        s.record(0.5, 0);
        s.record(1.0, 500);
        s.record(2.0, 1_500);
        s.record(3.0, 2_500);
        // Idle polls after the end do not stretch the interval.
        s.record(3.1, 2_500);
        assert_eq!(s.first, Some((1.0, 500)));
        assert_eq!(s.last, (3.0, 2_500));
        assert!((s.rate() - 1_000.0).abs() < 1e-9);
    }

    #[test]
    fn one_commit_of_everything_counts_from_the_start() {
        let mut s = DrainSamples::default();
        s.record(0.1, 0);
        s.record(2.0, 1_000);
        assert!((s.rate() - 500.0).abs() < 1e-9);
        assert_eq!(DrainSamples::default().rate(), 0.0);
    }
}
