//! The commands, and the whole suite `make bench` runs.
//!
//! Suite order: ceiling probes first (bare HTTP, Postgres commit, Kafka produce: the machine's
//! own limits in this run), then the target stages ([`crate::stages`]), each in its own scratch
//! world with its own service processes of the measured build profile: the payment processor
//! at PSP 0 ms and at 50 ms, analytics, the notifier with a 20 ms webhook, the gateway at its
//! maximum rate and at half of it, and the whole pipeline end to end at 1,000/s. The shared
//! stack only lends its broker, Postgres and schema registry; its services are not measured
//! and its PSP simulator is left as it is. Optionally (`--sweep`) the processor sweep.

use std::path::{Path, PathBuf};
use std::time::Duration;

use paystream_core::shutdown::Shutdown;
use tokio::time::Instant;

use crate::cli::{
    Cli, Command, MixArgs, ModelKind, ProbeArgs, ProcessorArgs, RunArgs, SuiteArgs, Targets,
};
use crate::machine::Machine;
use crate::psp::PspOverride;
use crate::report::targets::{E2E_TARGET_DURATION_S, E2E_TARGET_RATE, GATEWAY_TARGET_PER_S};
use crate::report::{self, Profile, Report};
use crate::run::{self, RunSpec};
use crate::schedule::Model;
use crate::scratch::World;
use crate::services::Binaries;
use crate::stages::{self, StagePlan};
use crate::{probes, processor};

/// Runs one command and writes its report.
pub async fn execute(cli: Cli) -> anyhow::Result<()> {
    let shutdown = paystream_core::shutdown::on_signal();
    let started = Instant::now();
    let bins = Binaries::locate(
        cli.service_bin_dir.as_deref(),
        &cli.service_log,
        !cli.no_perf,
    )?;
    let machine = Machine::describe();
    let mut report = Report::new(
        machine.clone(),
        matches!(&cli.command, Command::Suite(a) if a.quick),
    );
    report.profile = Some(Profile::new(&bins, &machine));
    // Only a single run drives the shared stack, so only it sets the shared PSP simulator.
    let psp = match &cli.command {
        Command::Run(args) => match PspOverride::apply(&cli.targets.psp_url, &args.psp).await {
            Ok(p) => {
                report.psp = p.during.clone();
                Some(p)
            }
            Err(e) => {
                eprintln!("PSP simulator not configured ({e:#}); its current mix applies");
                None
            }
        },
        _ => None,
    };
    let outcome = match &cli.command {
        Command::Suite(args) => suite(&cli.targets, &bins, args, &mut report, &shutdown).await,
        Command::Run(args) => single_run(&cli.targets, args, &mut report, &shutdown).await,
        Command::Probes(args) => {
            report.probes = probes::all(&cli.targets, args, &default_mix(), &shutdown).await;
            Ok(())
        }
        Command::Processor(args) => {
            report.processor = processor::run(&cli.targets, &bins, args, &shutdown).await;
            report.processor_latency =
                processor::latency(&cli.targets, &bins, args, &shutdown).await;
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
    if matches!(cli.command, Command::Suite(_)) {
        println!("\ntargets ({} build):", bins.profile);
        print!("{}", report.target_lines());
    }
    outcome
}

fn default_mix() -> MixArgs {
    MixArgs {
        merchants: 50,
        currencies: "EUR:60,USD:30,GBP:10".parse().expect("a valid mix"),
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

/// Durations and sizes of the suite, full or quick; the flags (and their `BENCH_*`
/// variables) override each.
struct Plan {
    probe: Duration,
    stages: StagePlan,
    processor: ProcessorArgs,
}

impl Plan {
    fn new(args: &SuiteArgs) -> Self {
        let quick = args.quick;
        let pick = |set: Option<usize>, full: usize, short: usize| {
            set.unwrap_or(if quick { short } else { full })
        };
        let secs = |set: Option<Duration>, full: u64, short: u64| {
            set.unwrap_or(Duration::from_secs(if quick { short } else { full }))
        };
        Self {
            probe: Duration::from_secs(if quick { 3 } else { 10 }),
            stages: StagePlan {
                processor_records: pick(args.processor_records, 20_000, 2_000),
                psp50_records: pick(args.psp50_records, 10_000, 1_000),
                analytics_records: pick(args.analytics_records, 20_000, 2_000),
                notifier_records: pick(args.notifier_records, 5_000, 500),
                instances: args.instances.max(1),
                drain_timeout: secs(args.drain_timeout, 60, 20),
                gateway_duration: secs(args.duration, 30, 5),
                gateway_concurrency: args.concurrency,
                e2e_rate: args
                    .e2e_rate
                    .unwrap_or(if quick { 200.0 } else { E2E_TARGET_RATE }),
                e2e_duration: secs(args.e2e_duration, E2E_TARGET_DURATION_S, 10),
                e2e_grace: Duration::from_secs(if quick { 10 } else { 20 }),
                mix: args.mix.clone(),
            },
            processor: ProcessorArgs {
                records: if quick { 2_000 } else { 8_000 },
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
    bins: &Binaries,
    args: &SuiteArgs,
    report: &mut Report,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let plan = Plan::new(args);
    let p = &plan.stages;
    let wanted = |stage: &str| !args.skip.iter().any(|s| s == stage) && !shutdown.is_cancelled();
    eprintln!(
        "services: {} build from {} (RUST_LOG={}); {} instance(s) per consumer group",
        bins.profile,
        bins.dir.display(),
        bins.log_filter,
        p.instances
    );
    if wanted("probes") {
        eprintln!("== ceiling probes");
        let probe_args = ProbeArgs {
            duration: plan.probe,
            concurrency: args.concurrency,
            pool_size: 10,
        };
        report.probes = probes::all(targets, &probe_args, &args.mix, shutdown).await;
    }
    // The drain stages, each in a fresh world; a failed one is recorded and the suite goes on.
    let drains: [(&str, &str); 4] = [
        ("processor", stages::PROCESSOR_PSP0),
        ("psp50", stages::PROCESSOR_PSP50),
        ("analytics", stages::ANALYTICS),
        ("notifier", stages::NOTIFIER),
    ];
    for (skip_name, stage) in drains {
        if !wanted(skip_name) {
            continue;
        }
        eprintln!("== {stage}");
        let measured =
            stages::in_world(
                stage,
                targets,
                bins,
                shutdown,
                async |w: &World| match stage {
                    stages::PROCESSOR_PSP0 => {
                        stages::processor(
                            w,
                            stage,
                            p.processor_records,
                            0,
                            p.instances,
                            Vec::new(),
                            p.drain_timeout,
                        )
                        .await
                    }
                    stages::PROCESSOR_PSP50 => {
                        stages::processor(
                            w,
                            stage,
                            p.psp50_records,
                            50,
                            p.instances,
                            Vec::new(),
                            p.drain_timeout,
                        )
                        .await
                    }
                    stages::ANALYTICS => stages::analytics(w, p).await,
                    _ => stages::notifier(w, p).await,
                },
            )
            .await;
        match measured {
            Ok(d) => {
                eprintln!(
                    "   {:.0} records/s ({} of {} committed{})",
                    d.records_per_s,
                    d.committed,
                    d.records,
                    if d.note.is_empty() {
                        String::new()
                    } else {
                        format!("; {}", d.note)
                    }
                );
                report.drains.push(d);
            }
            Err(e) => {
                report.stage_errors.insert(stage.to_string(), e);
            }
        }
    }
    if wanted("gateway") {
        let measured = stages::in_world("gateway", targets, bins, shutdown, async |w: &World| {
            stages::gateway(w, p, GATEWAY_TARGET_PER_S, shutdown).await
        })
        .await;
        match measured {
            Ok(runs) => report.runs.extend(runs),
            Err(e) => {
                report.stage_errors.insert(stages::GATEWAY_MAX.into(), e);
            }
        }
    }
    if wanted("e2e") {
        let measured = stages::in_world(stages::E2E, targets, bins, shutdown, async |w: &World| {
            stages::end_to_end(w, p, shutdown).await
        })
        .await;
        match measured {
            Ok(r) => report.runs.push(r),
            Err(e) => {
                report.stage_errors.insert(stages::E2E.into(), e);
            }
        }
    }
    if args.sweep && wanted("sweep") {
        eprintln!("== payment processor sweep");
        report.processor = processor::run(targets, bins, &plan.processor, shutdown).await;
        report.processor_latency =
            processor::latency(targets, bins, &plan.processor, shutdown).await;
    }
    if let Some(dir) = &args.criterion_dir {
        report.micro = report::read_criterion(dir);
        if report.micro.is_empty() {
            eprintln!("no criterion results under {}", dir.display());
        }
    }
    Ok(())
}
