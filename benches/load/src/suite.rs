//! The commands, and the whole suite `make bench` runs.
//!
//! Suite order, chosen so one stage's backlog leaks as little as possible into the next one's
//! numbers: ceiling probes → processor stage (in-process, isolated, on a quiet stack) →
//! end-to-end run at 1,000/s (tracked to the outcome topic) → maximum rate (closed model) →
//! half of that rate (open model, HTTP p99). Before each gateway run the suite waits (bounded)
//! until the stack has drained the previous run's payments: outbox rows unpublished and
//! payments still `PENDING`. What is left after that wait is printed, and competes with the
//! next run for the machine.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use paystream_core::shutdown::Shutdown;
use tokio::time::Instant;

use crate::cli::{
    Cli, Command, MixArgs, ModelKind, ProbeArgs, ProcessorArgs, PspArgs, RunArgs, SuiteArgs,
    Targets,
};
use crate::machine::Machine;
use crate::psp::PspOverride;
use crate::report::{self, Report};
use crate::run::{self, RunSpec};
use crate::schedule::Model;
use crate::{probes, processor};

/// Run names the report's verdicts look for.
pub const E2E: &str = "e2e";
pub const GATEWAY_MAX: &str = "gateway-max";
pub const GATEWAY_HALF: &str = "gateway-half";

/// Bound on requests in flight in the open model: far above what the gateway's pool can
/// serve at once, so the bound only matters when the server has stalled anyway.
const OPEN_MAX_IN_FLIGHT: usize = 1024;

/// Runs one command and writes its report.
pub async fn execute(cli: Cli) -> anyhow::Result<()> {
    let shutdown = paystream_core::shutdown::on_signal();
    let started = Instant::now();
    let (mut report, psp_args, mix) = match &cli.command {
        Command::Suite(args) => (
            Report::new(Machine::describe(), args.quick),
            suite_psp(&args.psp),
            args.mix.clone(),
        ),
        Command::Run(args) => (
            Report::new(Machine::describe(), false),
            args.psp.clone(),
            args.mix.clone(),
        ),
        _ => (
            Report::new(Machine::describe(), false),
            PspArgs::default(),
            default_mix(),
        ),
    };
    let psp = PspOverride::apply(&cli.targets.psp_url, &psp_args).await;
    let psp = match psp {
        Ok(p) => {
            report.psp = p.during.clone();
            Some(p)
        }
        Err(e) => {
            eprintln!("PSP simulator not configured ({e:#}); its current mix applies");
            None
        }
    };
    let outcome = match &cli.command {
        Command::Suite(args) => suite(&cli.targets, args, &mut report, &shutdown).await,
        Command::Run(args) => single_run(&cli.targets, args, &mut report, &shutdown).await,
        Command::Probes(args) => {
            report.probes = probes::all(&cli.targets, args, &mix, &shutdown).await;
            Ok(())
        }
        Command::Processor(args) => {
            report.processor = processor::run(&cli.targets, args, &shutdown).await;
            report.processor_latency = processor::latency(&cli.targets, args, &shutdown).await;
            Ok(())
        }
    };
    if let Some(p) = psp {
        p.restore().await;
    }
    report.elapsed_s = started.elapsed().as_secs_f64();
    report.evaluate();
    let dir = report_dir(&cli.out);
    let files = report.write(&dir)?;
    println!("{}", report.terminal());
    println!("report written to {}:", dir.display());
    for f in files {
        println!("  {}", f.display());
    }
    outcome
}

fn default_mix() -> MixArgs {
    MixArgs {
        merchants: 50,
        currencies: "EUR:60,USD:30,GBP:10".parse().expect("a valid mix"),
    }
}

/// The suite's PSP mix: zero latency and 5 % declines unless the flags say otherwise.
fn suite_psp(args: &PspArgs) -> PspArgs {
    PspArgs {
        psp_latency_ms: args.psp_latency_ms.or(Some(0)),
        psp_decline_rate: args.psp_decline_rate.or(Some(0.05)),
        psp_transient_failure_rate: args.psp_transient_failure_rate.or(Some(0.0)),
    }
}

/// `<out>/<UTC timestamp>`, e.g. `.bench/20261122T071500Z`.
fn report_dir(out: &Path) -> PathBuf {
    out.join(chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string())
}

async fn single_run(
    targets: &Targets,
    args: &RunArgs,
    report: &mut Report,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let model = match args.model {
        ModelKind::Open => Model::Open {
            rate: args.rate,
            max_in_flight: args.concurrency,
        },
        ModelKind::Closed => Model::Closed {
            concurrency: args.concurrency,
        },
    };
    anyhow::ensure!(
        args.model == ModelKind::Closed || args.rate > 0.0,
        "--rate must be positive"
    );
    let name = match args.model {
        ModelKind::Open => format!("open-{}", args.rate),
        ModelKind::Closed => format!("closed-{}", args.concurrency),
    };
    let spec = RunSpec::gateway(
        &name,
        targets,
        model,
        args.duration,
        &args.mix,
        (!args.no_e2e).then_some(args.e2e_grace),
    );
    report
        .runs
        .push(run::execute(targets, &spec, shutdown).await?);
    Ok(())
}

/// Durations and sizes of the suite, full or quick.
struct Plan {
    probe: Duration,
    run: Duration,
    grace: Duration,
    drain: Duration,
    e2e_rate: f64,
    processor: ProcessorArgs,
}

impl Plan {
    fn new(args: &SuiteArgs) -> Self {
        let quick = args.quick;
        let run = args
            .duration
            .unwrap_or(Duration::from_secs(if quick { 5 } else { 30 }));
        Self {
            probe: Duration::from_secs(if quick { 3 } else { 10 }),
            run,
            grace: Duration::from_secs(if quick { 10 } else { 20 }),
            drain: Duration::from_secs(if quick { 15 } else { 30 }),
            e2e_rate: args.e2e_rate.unwrap_or(if quick {
                200.0
            } else {
                report::E2E_TARGET_RATE
            }),
            processor: ProcessorArgs {
                // Bounded so the whole suite stays under ten minutes on a busy machine.
                records: if quick { 2_000 } else { 4_000 },
                instances: vec![1, 3],
                batch_sizes: if quick { vec![100] } else { vec![100, 500] },
                batch_wait_ms: 50,
                timeout: Duration::from_secs(if quick { 30 } else { 45 }),
                latency_rate: 50.0,
                latency_records: if quick { 100 } else { 500 },
                latency_configs: vec![(500, 50), (10, 50), (10, 5)],
            },
        }
    }
}

async fn suite(
    targets: &Targets,
    args: &SuiteArgs,
    report: &mut Report,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let plan = Plan::new(args);
    let skip = |stage: &str| args.skip.iter().any(|s| s == stage);
    if !skip("probes") {
        eprintln!("== ceiling probes");
        let probe_args = ProbeArgs {
            duration: plan.probe,
            concurrency: args.concurrency,
            pool_size: 10,
        };
        report.probes = probes::all(targets, &probe_args, &args.mix, shutdown).await;
    }
    if !skip("processor") && !shutdown.is_cancelled() {
        wait_for_drain(targets, plan.drain, shutdown).await;
        eprintln!("== payment processor");
        report.processor = processor::run(targets, &plan.processor, shutdown).await;
        report.processor_latency = processor::latency(targets, &plan.processor, shutdown).await;
    }
    // One gateway run after the previous run's backlog has drained.
    let gateway_run = |name: &'static str, model: Model, grace: Option<Duration>| {
        let spec = RunSpec::gateway(name, targets, model, plan.run, &args.mix, grace);
        async move {
            wait_for_drain(targets, plan.drain, shutdown).await;
            eprintln!("== {name}: {model:?}");
            run::execute(targets, &spec, shutdown).await
        }
    };
    if !skip("e2e") && !shutdown.is_cancelled() {
        let open = Model::Open {
            rate: plan.e2e_rate,
            max_in_flight: OPEN_MAX_IN_FLIGHT,
        };
        report
            .runs
            .push(gateway_run(E2E, open, Some(plan.grace)).await?);
    }
    if !skip("gateway") && !shutdown.is_cancelled() {
        let closed = Model::Closed {
            concurrency: args.concurrency,
        };
        let max = gateway_run(GATEWAY_MAX, closed, None).await?;
        // Half the target rate, unless the gateway can't sustain that: then half its maximum.
        let half = (report::GATEWAY_TARGET_PER_S / 2.0).min(max.accepted_per_s / 2.0);
        report.runs.push(max);
        if half >= 1.0 && !shutdown.is_cancelled() {
            let open = Model::Open {
                rate: half.round(),
                max_in_flight: OPEN_MAX_IN_FLIGHT,
            };
            report
                .runs
                .push(gateway_run(GATEWAY_HALF, open, None).await?);
        }
    }
    if let Some(dir) = &args.criterion_dir {
        report.micro = report::read_criterion(dir);
        if report.micro.is_empty() {
            eprintln!("no criterion results under {}", dir.display());
        }
    }
    Ok(())
}

/// A backlog that has not shrunk for this long is not being worked on: stop waiting for it.
const STALLED: Duration = Duration::from_secs(5);

/// Waits until the stack has no recent unpublished outbox rows and no recent `PENDING`
/// payments (the previous run's backlog), at most `max_wait`. Read-only queries against the
/// gateway's database; when it can't be read the suite goes on without waiting.
async fn wait_for_drain(targets: &Targets, max_wait: Duration, shutdown: &Shutdown) {
    let backlog = async {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&targets.database_url)
            .await
            .context("connecting to Postgres")?;
        let deadline = Instant::now() + max_wait;
        let mut left = backlog(&pool).await?;
        let mut last_progress = Instant::now();
        while left > 0 && Instant::now() < deadline && !shutdown.is_cancelled() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = backlog(&pool).await?;
            if now < left {
                last_progress = Instant::now();
            } else if last_progress.elapsed() >= STALLED {
                eprintln!("   the backlog is not shrinking: is the payment processor running?");
                left = now;
                break;
            }
            left = now;
        }
        pool.close().await;
        anyhow::Ok(left)
    };
    match backlog.await {
        Ok(0) => {}
        Ok(n) => eprintln!("   {n} payments of earlier runs still in flight; going on"),
        Err(e) => eprintln!("   could not read the backlog ({e:#}); not waiting"),
    }
}

async fn backlog(pool: &sqlx::PgPool) -> anyhow::Result<i64> {
    // Only the last half hour: an old row stuck for another reason must not stall the suite.
    let (n,): (i64,) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM outbox
                  WHERE published_at IS NULL AND created_at > now() - interval '30 minutes')
              + (SELECT count(*) FROM payments
                  WHERE status = 'PENDING' AND created_at > now() - interval '30 minutes')",
    )
    .fetch_one(pool)
    .await?;
    Ok(n)
}
