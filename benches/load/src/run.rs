//! One load run: schedule + HTTP driver + recorder + end-to-end tracker, with a live progress
//! bar (rate and p99 of the last full second).

use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use paystream_core::shutdown::Shutdown;
use serde::Serialize;
use tokio::time::Instant;

use crate::cli::{MixArgs, ModelKind, Targets};
use crate::driver::{Answer, HttpDriver};
use crate::e2e::{E2eTracker, Stage, StageResult};
use crate::machine::{load_average, CpuTimes, ProcessCpu};
use crate::recorder::{PercentilePoint, Recorder, SecondPoint, Summary};
use crate::schedule::{self, Model, ScheduleStats};
use crate::workload::Workload;

/// What to run.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Short name, used in the report and for plot file names.
    pub name: String,
    pub base_url: String,
    pub model: Model,
    pub duration: Duration,
    /// Stages to track end to end; empty for HTTP only.
    pub stages: Vec<Stage>,
    pub e2e_grace: Duration,
    pub mix: MixArgs,
}

impl RunSpec {
    /// A run against the gateway of `targets`, tracking its end-to-end stages unless `no_e2e`.
    pub fn gateway(
        name: &str,
        targets: &Targets,
        model: Model,
        duration: Duration,
        mix: &MixArgs,
        e2e_grace: Option<Duration>,
    ) -> Self {
        Self {
            name: name.to_string(),
            base_url: targets.gateway_url.clone(),
            model,
            duration,
            stages: match e2e_grace {
                Some(_) => targets
                    .stages()
                    .into_iter()
                    .map(|(name, topic)| Stage { name, topic })
                    .collect(),
                None => Vec::new(),
            },
            e2e_grace: e2e_grace.unwrap_or_default(),
            mix: mix.clone(),
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub name: String,
    pub model: ModelKind,
    /// Open model: the scheduled rate.
    pub target_rate: Option<f64>,
    /// Closed model: workers; open model: bound on requests in flight.
    pub concurrency: usize,
    pub duration_s: f64,
    pub sent: u64,
    pub accepted: u64,
    pub accepted_per_s: f64,
    pub errors: u64,
    pub by_status: std::collections::BTreeMap<String, u64>,
    pub http: Summary,
    pub schedule: ScheduleStats,
    pub e2e: Vec<StageResult>,
    pub load_avg_before: [f64; 3],
    pub load_avg_after: [f64; 3],
    /// Cores each process kept busy during the load (the stack, Postgres, the broker, and this
    /// generator itself): where the machine's CPU went.
    pub cpu: Vec<ProcessCpu>,
    pub http_per_second: Vec<SecondPoint>,
    pub http_percentiles: Vec<PercentilePoint>,
    pub accepted_per_second: Vec<u64>,
    /// Hottest symbols of the services under test during the run, when a stage recorded them.
    pub profile: Vec<crate::perf::Hotspot>,
}

/// Executes `spec`. A run that could not reach the target at all is an error; errors of
/// individual requests are counted in the result.
pub async fn execute(
    targets: &Targets,
    spec: &RunSpec,
    shutdown: &Shutdown,
) -> anyhow::Result<RunResult> {
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let concurrency = match spec.model {
        Model::Open { max_in_flight, .. } => max_in_flight,
        Model::Closed { concurrency } => concurrency,
    };
    let workload = Workload::new(
        format!("load-{run_id}"),
        spec.mix.merchants,
        spec.mix.currencies.clone(),
    );
    let driver = Arc::new(HttpDriver::new(&spec.base_url, workload, concurrency)?);
    let tracker = match spec.stages.is_empty() {
        true => None,
        false => Some(Arc::new(
            E2eTracker::start(
                &targets.kafka_settings(),
                spec.stages.clone(),
                &run_id,
                targets.e2e_fetch_wait_ms,
            )
            .await?,
        )),
    };

    let load_avg_before = load_average();
    let cpu_before = CpuTimes::now();
    let start = Instant::now();
    let recorder = Arc::new(Recorder::new(start));
    let sink = {
        let (recorder, tracker) = (recorder.clone(), tracker.clone());
        move |c: schedule::Completion| {
            recorder.record(&c);
            if let (Some(t), Answer::Accepted { payment_id }) = (&tracker, &c.answer) {
                t.accepted(
                    payment_id.clone(),
                    c.intended,
                    recorder.second_of(c.intended),
                );
            }
        }
    };
    let progress = Progress::start(spec, recorder.clone(), tracker.clone(), start);
    let schedule = schedule::drive(
        spec.model,
        start,
        spec.duration,
        driver,
        Arc::new(sink),
        shutdown.clone(),
    )
    .await;
    let cpu = CpuTimes::now().since(&cpu_before);
    let elapsed = start
        .elapsed()
        .min(spec.duration)
        .max(Duration::from_millis(1));
    if let Some(t) = &tracker {
        progress.settling();
        t.settle(spec.e2e_grace, shutdown).await;
    }
    progress.finish();
    let load_avg_after = load_average();

    let http = recorder.finish();
    let e2e = match &tracker {
        Some(t) => t.finish().await,
        None => Vec::new(),
    };
    anyhow::ensure!(
        http.accepted > 0 || !http.by_status.contains_key("connect"),
        "{}: no request reached {} (is the stack up?)",
        spec.name,
        spec.base_url
    );
    Ok(RunResult {
        name: spec.name.clone(),
        model: match spec.model {
            Model::Open { .. } => ModelKind::Open,
            Model::Closed { .. } => ModelKind::Closed,
        },
        target_rate: match spec.model {
            Model::Open { rate, .. } => Some(rate),
            Model::Closed { .. } => None,
        },
        concurrency,
        duration_s: elapsed.as_secs_f64(),
        sent: schedule.sent,
        accepted: http.accepted,
        accepted_per_s: http.accepted as f64 / elapsed.as_secs_f64(),
        errors: http.errors,
        http: http.latency.summary(),
        http_per_second: http.latency.per_second(),
        http_percentiles: http.latency.percentiles(),
        by_status: http.by_status,
        accepted_per_second: http.accepted_per_second,
        schedule,
        e2e,
        load_avg_before,
        load_avg_after,
        cpu,
        profile: Vec::new(),
    })
}

/// The live progress bar: elapsed seconds, accepted/s and p99 of the last full second, and
/// end-to-end records still awaited. Hidden when stderr is not a terminal.
struct Progress {
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Progress {
    fn start(
        spec: &RunSpec,
        recorder: Arc<Recorder>,
        tracker: Option<Arc<E2eTracker>>,
        start: Instant,
    ) -> Self {
        let bar = ProgressBar::new(spec.duration.as_secs().max(1));
        bar.set_style(
            ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos:>3}/{len}s {msg}")
                .expect("static template")
                .progress_chars("=> "),
        );
        bar.set_prefix(spec.name.clone());
        let ticker = tokio::spawn({
            let bar = bar.clone();
            async move {
                let mut tick = tokio::time::interval(Duration::from_millis(500));
                loop {
                    tick.tick().await;
                    let second = recorder.second_of(Instant::now());
                    let last = second.saturating_sub(1);
                    let (rate, p99) = recorder.live(last);
                    let mut msg = format!("{rate:>6} accepted/s  p99 {p99:>8.2} ms");
                    if let Some(t) = &tracker {
                        let (outstanding, e2e_p99) = t.live(last);
                        msg.push_str(&format!(
                            "  e2e p99 {e2e_p99:>8.2} ms  awaiting {outstanding}"
                        ));
                    }
                    bar.set_position(start.elapsed().as_secs());
                    bar.set_message(msg);
                }
            }
        });
        Self { bar, ticker }
    }

    fn settling(&self) {
        self.bar.set_prefix("(e2e settling)");
    }

    fn finish(self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}
