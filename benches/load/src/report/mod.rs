//! The report: what was measured, on what, and how it compares with the targets and with the
//! machine's own ceilings. Written as `report.json`, `report.md` and PNG plots into the run's
//! folder, and printed as tables on the terminal.

pub mod plots;
pub mod table;

use std::path::{Path, PathBuf};

use anyhow::Context;
use paystream_psp_simulator::SimulatorSettings;
use serde::{Deserialize, Serialize};

use crate::machine::Machine;
use crate::probes::ProbeResult;
use crate::processor::{LatencyResult, ProcessorResult};
use crate::run::RunResult;
use plots::Line;
use table::Table;

/// The issue's targets, recorded (never asserted).
pub const GATEWAY_TARGET_PER_S: f64 = 5_000.0;
pub const GATEWAY_HALF_RATE_P99_MS: f64 = 20.0;
pub const E2E_TARGET_RATE: f64 = 1_000.0;
pub const E2E_TARGET_P99_MS: f64 = 100.0;
pub const PROCESSOR_TARGET_PER_S: f64 = 5_000.0;

/// One criterion benchmark's mean time.
#[derive(Debug, Clone, Serialize)]
pub struct MicroResult {
    pub id: String,
    pub mean_ns: f64,
}

/// A target and whether this run met it.
#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    pub target: String,
    pub measured: String,
    /// `None`: not measured in this run.
    pub met: Option<bool>,
}

/// A stage's rate as a share of a ceiling measured in the same run.
#[derive(Debug, Clone, Serialize)]
pub struct Fraction {
    pub stage: String,
    pub rate_per_s: f64,
    pub ceiling: String,
    pub ceiling_per_s: f64,
    pub share: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub generated_at: String,
    pub quick: bool,
    pub machine: Machine,
    pub psp: Option<SimulatorSettings>,
    pub probes: Vec<ProbeResult>,
    pub runs: Vec<RunResult>,
    pub processor: Vec<ProcessorResult>,
    pub processor_latency: Vec<LatencyResult>,
    pub micro: Vec<MicroResult>,
    pub targets: Vec<TargetCheck>,
    pub fractions: Vec<Fraction>,
    pub elapsed_s: f64,
    pub plots: Vec<String>,
    /// For each missed target: where the time or the CPU went, from this run's numbers.
    pub bottlenecks: Vec<String>,
}

fn f0(v: f64) -> String {
    format!("{v:.0}")
}

fn f2(v: f64) -> String {
    format!("{v:.2}")
}

fn load(l: [f64; 3]) -> String {
    format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2])
}

impl Report {
    pub fn new(machine: Machine, quick: bool) -> Self {
        Self {
            generated_at: chrono::Utc::now()
                .format("%Y-%m-%d %H:%M:%S UTC")
                .to_string(),
            quick,
            machine,
            psp: None,
            probes: Vec::new(),
            runs: Vec::new(),
            processor: Vec::new(),
            processor_latency: Vec::new(),
            micro: Vec::new(),
            targets: Vec::new(),
            fractions: Vec::new(),
            elapsed_s: 0.0,
            plots: Vec::new(),
            bottlenecks: Vec::new(),
        }
    }

    fn run(&self, name: &str) -> Option<&RunResult> {
        self.runs.iter().find(|r| r.name == name)
    }

    fn probe(&self, name: &str) -> Option<&ProbeResult> {
        self.probes.iter().find(|p| p.name == name)
    }

    fn best_processor(&self) -> Option<&ProcessorResult> {
        self.processor
            .iter()
            .max_by(|a, b| a.records_per_s.total_cmp(&b.records_per_s))
    }

    /// Fills in the target verdicts and the fractions of the ceilings.
    pub fn evaluate(&mut self) {
        let mut targets = Vec::new();
        let max = self.run(crate::suite::GATEWAY_MAX);
        targets.push(TargetCheck {
            target: format!(
                "gateway ≥ {} accepted payments/s (idempotency + durable outbox)",
                f0(GATEWAY_TARGET_PER_S)
            ),
            measured: max.map_or("not run".into(), |r| {
                format!(
                    "{} /s (closed model, {} clients)",
                    f0(r.accepted_per_s),
                    r.concurrency
                )
            }),
            met: max.map(|r| r.accepted_per_s >= GATEWAY_TARGET_PER_S),
        });
        let half = self.run(crate::suite::GATEWAY_HALF);
        let half_rate = GATEWAY_TARGET_PER_S / 2.0;
        targets.push(TargetCheck {
            target: format!(
                "HTTP p99 < {} ms at {} payments/s",
                f0(GATEWAY_HALF_RATE_P99_MS),
                f0(half_rate)
            ),
            measured: half.map_or("not run".into(), |r| {
                format!(
                    "p99 {} ms at {} /s offered ({} accepted/s)",
                    f2(r.http.p99_ms),
                    f0(r.target_rate.unwrap_or_default()),
                    f0(r.accepted_per_s)
                )
            }),
            // Judged only at the target's rate; at a lower rate it is not met either.
            met: half.map(|r| {
                r.target_rate.unwrap_or_default() >= half_rate
                    && r.http.p99_ms < GATEWAY_HALF_RATE_P99_MS
            }),
        });
        let e2e = self.run(crate::suite::E2E);
        let outcome = e2e.and_then(|r| r.e2e.first());
        targets.push(TargetCheck {
            target: format!(
                "end-to-end (request → committed outcome) p99 < {} ms at {} payments/s",
                f0(E2E_TARGET_P99_MS),
                f0(E2E_TARGET_RATE)
            ),
            measured: match (e2e, outcome) {
                (Some(r), Some(o)) => format!(
                    "p99 {} ms at {} /s offered; {} of {} outcomes seen",
                    f2(o.latency.p99_ms),
                    f0(r.target_rate.unwrap_or_default()),
                    o.matched,
                    r.accepted
                ),
                _ => "not run".into(),
            },
            met: match (e2e, outcome) {
                (Some(r), Some(o)) => Some(
                    r.target_rate.unwrap_or_default() >= E2E_TARGET_RATE
                        && o.latency.p99_ms < E2E_TARGET_P99_MS
                        && o.missing == 0,
                ),
                _ => None,
            },
        });
        let best = self.best_processor();
        targets.push(TargetCheck {
            target: format!(
                "payment processor ≥ {} records/s, exactly-once, PSP at zero latency",
                f0(PROCESSOR_TARGET_PER_S)
            ),
            measured: best.map_or("not run".into(), |p| {
                format!(
                    "{} records/s ({} instance(s), batch_max_records {}, batch_max_wait_ms {})",
                    f0(p.records_per_s),
                    p.instances,
                    p.batch_max_records,
                    p.batch_max_wait_ms
                )
            }),
            met: best.map(|p| p.completed && p.records_per_s >= PROCESSOR_TARGET_PER_S),
        });

        let mut fractions = Vec::new();
        let mut add = |stage: String, rate: f64, probe: Option<&ProbeResult>| {
            if let Some(p) = probe.filter(|p| p.rate_per_s > 0.0) {
                fractions.push(Fraction {
                    stage,
                    rate_per_s: rate,
                    ceiling: format!("{} ({})", p.name, p.unit),
                    ceiling_per_s: p.rate_per_s,
                    share: rate / p.rate_per_s,
                });
            }
        };
        if let Some(r) = max {
            let stage = "gateway, max accepted/s".to_string();
            add(stage.clone(), r.accepted_per_s, self.probe("bare HTTP"));
            add(stage, r.accepted_per_s, self.probe("Postgres commit"));
        }
        if let Some(p) = best {
            let stage = "processor records/s".to_string();
            add(
                stage.clone(),
                p.records_per_s,
                self.probe("Postgres commit"),
            );
            add(stage, p.records_per_s, self.probe("Kafka produce"));
        }
        self.targets = targets;
        self.fractions = fractions;
        self.bottlenecks = self.find_bottlenecks();
    }

    /// Busy share of the machine and the top processes during a measurement.
    fn cpu_note(&self, cpu: &[crate::machine::ProcessCpu]) -> String {
        let total: f64 = cpu.iter().map(|p| p.cores).sum();
        let top: Vec<String> = cpu
            .iter()
            .take(4)
            .map(|p| format!("{} {:.2}", p.process, p.cores))
            .collect();
        format!(
            "{:.1} of {} cores busy ({}{})",
            total,
            self.machine.cores,
            top.join(", "),
            if total >= 0.85 * self.machine.cores as f64 {
                "; the machine's CPU is saturated"
            } else {
                ""
            }
        )
    }

    fn find_bottlenecks(&self) -> Vec<String> {
        let mut notes = Vec::new();
        let missed = |i: usize| self.targets.get(i).and_then(|t| t.met) == Some(false);
        if let (true, Some(r)) = (missed(0) || missed(1), self.run(crate::suite::GATEWAY_MAX)) {
            let nearest = self
                .fractions
                .iter()
                .filter(|f| f.stage.starts_with("gateway"))
                .max_by(|a, b| a.share.total_cmp(&b.share));
            notes.push(format!(
                "gateway: {} accepted/s{}; CPU during the run: {}.",
                f0(r.accepted_per_s),
                nearest.map_or(String::new(), |f| format!(
                    ", {:.0}% of the nearest ceiling ({} at {} /s)",
                    f.share * 100.0,
                    f.ceiling,
                    f0(f.ceiling_per_s)
                )),
                self.cpu_note(&r.cpu)
            ));
        }
        if let (true, Some(r)) = (missed(2), self.run(crate::suite::E2E)) {
            let stage = |name: &str| r.e2e.iter().find(|s| s.name == name);
            if stage("outcome").is_some_and(|o| o.matched == 0) {
                notes.push(
                    "end to end: no outcome appeared at all — is the payment processor running?"
                        .into(),
                );
            } else if let (Some(outcome), Some(relay)) = (stage("outcome"), stage("relay")) {
                notes.push(format!(
                    "end to end: of the median {} ms, {} ms pass until the request event is \
                     readable (gateway + outbox relay) and {} ms in the payment processor \
                     (fetch, batch wait, PSP call, Postgres, transaction commit, read_committed \
                     visibility); p99 {} ms vs relay p99 {} ms. CPU: {}.",
                    f2(outcome.latency.p50_ms),
                    f2(relay.latency.p50_ms),
                    f2(outcome.latency.p50_ms - relay.latency.p50_ms),
                    f2(outcome.latency.p99_ms),
                    f2(relay.latency.p99_ms),
                    self.cpu_note(&r.cpu)
                ));
            }
            let latencies: Vec<String> = self
                .processor_latency
                .iter()
                .map(|l| {
                    format!(
                        "fetch.wait.max.ms={} and batch_max_wait_ms={}: p50 {} / p99 {} ms",
                        l.fetch_wait_ms,
                        l.batch_max_wait_ms,
                        f2(l.latency.p50_ms),
                        f2(l.latency.p99_ms)
                    )
                })
                .collect();
            if !latencies.is_empty() {
                notes.push(format!(
                    "processor latency alone at {} /s (record produced → outcome readable): {}.",
                    f0(self.processor_latency[0].rate),
                    latencies.join("; ")
                ));
            }
        }
        if let (true, Some(best)) = (missed(3), self.best_processor()) {
            let tried: Vec<String> = self
                .processor
                .iter()
                .map(|p| {
                    format!(
                        "{}×batch {}: {}/s",
                        p.instances,
                        p.batch_max_records,
                        f0(p.records_per_s)
                    )
                })
                .collect();
            notes.push(format!(
                "processor: best {} records/s with {} instance(s) and batch_max_records {} \
                 (tried {}). Each record is one Postgres transaction and one PSP call, applied \
                 one after another within an instance, so an instance is bound by round-trip \
                 latency; CPU with the best configuration: {}.",
                f0(best.records_per_s),
                best.instances,
                best.batch_max_records,
                tried.join(", "),
                self.cpu_note(&best.cpu)
            ));
        }
        notes
    }

    fn tables(&self) -> Vec<(&'static str, Table)> {
        let mut out = Vec::new();

        let mut t = Table::new(["target", "measured", "met"]);
        for c in &self.targets {
            let met = match c.met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "—",
            };
            t.row([c.target.as_str(), c.measured.as_str(), met]);
        }
        out.push(("Targets", t));

        let mut t = Table::new([
            "probe", "rate/s", "unit", "p50 ms", "p99 ms", "load avg", "what",
        ]);
        for p in &self.probes {
            t.row([
                p.name.clone(),
                f0(p.rate_per_s),
                p.unit.clone(),
                f2(p.latency.p50_ms),
                f2(p.latency.p99_ms),
                load(p.load_avg_after),
                format!(
                    "{}{}",
                    p.what,
                    if p.note.is_empty() {
                        String::new()
                    } else {
                        format!("; {}", p.note)
                    }
                ),
            ]);
        }
        out.push(("Ceiling probes (same machine, same run)", t));

        let mut t = Table::new([
            "run",
            "model",
            "offered/s",
            "concurrency",
            "s",
            "accepted",
            "accepted/s",
            "errors",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "load avg",
        ]);
        for r in &self.runs {
            t.row([
                r.name.clone(),
                format!("{:?}", r.model).to_lowercase(),
                r.target_rate.map_or("max".into(), f0),
                r.concurrency.to_string(),
                format!("{:.1}", r.duration_s),
                r.accepted.to_string(),
                f0(r.accepted_per_s),
                errors(r),
                f2(r.http.p50_ms),
                f2(r.http.p90_ms),
                f2(r.http.p99_ms),
                f2(r.http.p999_ms),
                f2(r.http.max_ms),
                load(r.load_avg_after),
            ]);
        }
        out.push(("Gateway: HTTP latency of POST /v1/payments", t));

        let mut t = Table::new([
            "run", "stage", "topic", "seen", "missing", "dupes", "p50 ms", "p90 ms", "p99 ms",
            "p99.9 ms", "max ms",
        ]);
        for r in &self.runs {
            for s in &r.e2e {
                t.row([
                    r.name.clone(),
                    s.name.clone(),
                    s.topic.clone(),
                    s.matched.to_string(),
                    s.missing.to_string(),
                    s.duplicates.to_string(),
                    f2(s.latency.p50_ms),
                    f2(s.latency.p90_ms),
                    f2(s.latency.p99_ms),
                    f2(s.latency.p999_ms),
                    f2(s.latency.max_ms),
                ]);
            }
        }
        out.push((
            "End to end: scheduled send → record on the topic (read_committed)",
            t,
        ));

        let mut t = Table::new([
            "instances",
            "batch_max_records",
            "batch_max_wait_ms",
            "records",
            "records/s",
            "start-up s",
            "batches",
            "mean batch",
            "aborted",
            "completed",
            "load avg",
        ]);
        for p in &self.processor {
            t.row([
                p.instances.to_string(),
                p.batch_max_records.to_string(),
                p.batch_max_wait_ms.to_string(),
                p.records.to_string(),
                f0(p.records_per_s),
                format!("{:.1}", p.startup_s),
                p.batches_committed.to_string(),
                format!("{:.1}", p.mean_batch),
                p.batches_aborted.to_string(),
                (if p.completed { "yes" } else { "NO" }).to_string(),
                load(p.load_avg_after),
            ]);
        }
        out.push((
            "Payment processor (exactly-once loop, PSP at zero latency)",
            t,
        ));

        let mut t = Table::new([
            "fetch.wait.max.ms",
            "batch_max_records",
            "batch_max_wait_ms",
            "rate/s",
            "seen",
            "missing",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "load avg",
        ]);
        for l in &self.processor_latency {
            t.row([
                l.fetch_wait_ms.to_string(),
                l.batch_max_records.to_string(),
                l.batch_max_wait_ms.to_string(),
                f0(l.rate),
                l.matched.to_string(),
                l.missing.to_string(),
                f2(l.latency.p50_ms),
                f2(l.latency.p90_ms),
                f2(l.latency.p99_ms),
                f2(l.latency.max_ms),
                load(l.load_avg_after),
            ]);
        }
        out.push((
            "Payment processor latency at a steady rate (record produced → outcome readable)",
            t,
        ));

        let mut t = Table::new(["measured during", "cores used by process (2 cores = 100 %)"]);
        let cpu = |procs: &[crate::machine::ProcessCpu]| {
            procs
                .iter()
                .take(8)
                .map(|p| format!("{} {:.2}", p.process, p.cores))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for r in &self.runs {
            t.row([r.name.clone(), cpu(&r.cpu)]);
        }
        for p in &self.processor {
            t.row([
                format!("processor {}×{}", p.instances, p.batch_max_records),
                cpu(&p.cpu),
            ]);
        }
        out.push(("Where the CPU went (from /proc, per process name)", t));

        let mut t = Table::new(["stage", "rate/s", "ceiling", "ceiling/s", "share"]);
        for f in &self.fractions {
            t.row([
                f.stage.clone(),
                f0(f.rate_per_s),
                f.ceiling.clone(),
                f0(f.ceiling_per_s),
                format!("{:.0}%", f.share * 100.0),
            ]);
        }
        out.push(("Stages as a share of the machine's ceilings", t));

        let mut t = Table::new(["micro-benchmark", "mean", "per second"]);
        for m in &self.micro {
            t.row([m.id.clone(), duration_ns(m.mean_ns), f0(1e9 / m.mean_ns)]);
        }
        out.push(("Micro-benchmarks (criterion, CPU only)", t));
        out
    }

    fn machine_line(&self) -> String {
        let m = &self.machine;
        format!(
            "{} — {} cores, {} GiB, Linux {}; commit {}; generator build: {}; {}",
            m.cpu_model,
            m.cores,
            m.memory_gib,
            m.kernel,
            m.commit,
            m.generator_build,
            self.psp
                .as_ref()
                .map_or("PSP simulator settings unknown".into(), |p| format!(
                    "PSP simulator: latency {} ms, decline rate {}, transient failure rate {}",
                    p.latency_ms, p.decline_rate, p.transient_failure_rate
                ))
        )
    }

    pub fn terminal(&self) -> String {
        let mut out = format!(
            "paystream benchmark — {}{}\n{}\n",
            self.generated_at,
            if self.quick { " (quick mode)" } else { "" },
            self.machine_line()
        );
        for (title, table) in self.tables() {
            if !table.is_empty() {
                out.push_str(&format!("\n{title}\n{}\n", table.terminal()));
            }
        }
        if !self.bottlenecks.is_empty() {
            out.push_str("\nBottlenecks\n");
            for n in &self.bottlenecks {
                out.push_str(&format!("- {n}\n"));
            }
        }
        out
    }

    pub fn markdown(&self) -> String {
        let mut out = format!(
            "# paystream benchmark report\n\n{}{}, suite took {:.0} s.\n\n**Machine:** {}\n",
            self.generated_at,
            if self.quick { " (quick mode)" } else { "" },
            self.elapsed_s,
            self.machine_line()
        );
        for (title, table) in self.tables() {
            if !table.is_empty() {
                out.push_str(&format!("\n## {title}\n\n{}\n", table.markdown()));
            }
        }
        if !self.bottlenecks.is_empty() {
            out.push_str("\n## Bottlenecks\n\n");
            for n in &self.bottlenecks {
                out.push_str(&format!("- {n}\n"));
            }
        }
        if !self.plots.is_empty() {
            out.push_str("\n## Plots\n\n");
            for p in &self.plots {
                out.push_str(&format!("![{p}]({p})\n\n"));
            }
        }
        out
    }

    /// Writes `report.json`, `report.md` and the plots into `dir`.
    pub fn write(&mut self, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        self.plots = self.draw_plots(dir);
        let json = dir.join("report.json");
        std::fs::write(&json, serde_json::to_vec_pretty(self)?)?;
        let md = dir.join("report.md");
        std::fs::write(&md, self.markdown())?;
        Ok([json, md]
            .into_iter()
            .chain(self.plots.iter().map(|p| dir.join(p)))
            .collect())
    }

    /// Two plots per load run, one for the processor latency runs; a plot that fails is
    /// reported and left out.
    fn draw_plots(&self, dir: &Path) -> Vec<String> {
        let mut written = Vec::new();
        if !self.processor_latency.is_empty() {
            let series: Vec<(String, _)> = self
                .processor_latency
                .iter()
                .map(|l| {
                    let name = format!(
                        "fetch.wait.max.ms={} batch_max_wait_ms={}",
                        l.fetch_wait_ms, l.batch_max_wait_ms
                    );
                    (name, l.percentiles.clone())
                })
                .collect();
            let file = "processor-latency-percentiles.png".to_string();
            let title = format!(
                "payment processor: record produced → outcome readable, {} /s",
                f0(self.processor_latency[0].rate)
            );
            match plots::percentile_distribution(&dir.join(&file), &title, &series) {
                Ok(()) => written.push(file),
                Err(e) => eprintln!("{file}: {e:#}"),
            }
        }
        for r in &self.runs {
            let slug = slug(&r.name);
            let mut over_time = vec![
                Line {
                    name: "HTTP p50".into(),
                    points: r
                        .http_per_second
                        .iter()
                        .map(|p| (p.second as f64, p.p50_ms))
                        .collect(),
                },
                Line {
                    name: "HTTP p99".into(),
                    points: r
                        .http_per_second
                        .iter()
                        .map(|p| (p.second as f64, p.p99_ms))
                        .collect(),
                },
            ];
            let mut distribution = vec![("HTTP".to_string(), r.http_percentiles.clone())];
            for s in &r.e2e {
                over_time.push(Line {
                    name: format!("{} p99 (end to end)", s.name),
                    points: s
                        .per_second
                        .iter()
                        .map(|p| (p.second as f64, p.p99_ms))
                        .collect(),
                });
                distribution.push((format!("{} (end to end)", s.name), s.percentiles.clone()));
            }
            let title = format!("{}: {}", r.name, describe_load(r));
            let file = format!("{slug}-latency-over-time.png");
            match plots::latency_over_time(&dir.join(&file), &title, &over_time) {
                Ok(()) => written.push(file),
                Err(e) => eprintln!("{file}: {e:#}"),
            }
            let file = format!("{slug}-latency-percentiles.png");
            match plots::percentile_distribution(&dir.join(&file), &title, &distribution) {
                Ok(()) => written.push(file),
                Err(e) => eprintln!("{file}: {e:#}"),
            }
        }
        written
    }
}

fn describe_load(r: &RunResult) -> String {
    match r.target_rate {
        Some(rate) => format!("open model, {} /s offered", f0(rate)),
        None => format!("closed model, {} clients", r.concurrency),
    }
}

fn errors(r: &RunResult) -> String {
    let others: Vec<String> = r
        .by_status
        .iter()
        .filter(|(k, _)| k.as_str() != "202")
        .map(|(k, v)| format!("{v}×{k}"))
        .collect();
    if others.is_empty() {
        "0".into()
    } else {
        others.join(" ")
    }
}

fn duration_ns(ns: f64) -> String {
    match ns {
        n if n >= 1e6 => format!("{:.2} ms", n / 1e6),
        n if n >= 1e3 => format!("{:.2} µs", n / 1e3),
        n => format!("{n:.0} ns"),
    }
}

fn slug(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect::<String>()
        .split('-')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

#[derive(Deserialize)]
struct CriterionBenchmark {
    full_id: String,
}

#[derive(Deserialize)]
struct CriterionEstimate {
    point_estimate: f64,
}

#[derive(Deserialize)]
struct CriterionEstimates {
    mean: CriterionEstimate,
}

/// The latest result of every benchmark criterion left under `dir` (`CRITERION_HOME`).
pub fn read_criterion(dir: &Path) -> Vec<MicroResult> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n == "new") {
                    if let Some(r) = read_one(&path) {
                        found.push(r);
                    }
                } else {
                    stack.push(path);
                }
            }
        }
    }
    found.sort_by(|a, b| a.id.cmp(&b.id));
    found
}

fn read_one(new_dir: &Path) -> Option<MicroResult> {
    let bench: CriterionBenchmark =
        serde_json::from_slice(&std::fs::read(new_dir.join("benchmark.json")).ok()?).ok()?;
    let est: CriterionEstimates =
        serde_json::from_slice(&std::fs::read(new_dir.join("estimates.json")).ok()?).ok()?;
    Some(MicroResult {
        id: bench.full_id,
        mean_ns: est.mean.point_estimate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_file_name_safe() {
        assert_eq!(slug("gateway: max rate"), "gateway-max-rate");
        assert_eq!(slug("e2e @ 1000/s"), "e2e-1000-s");
    }

    #[test]
    fn reads_criterion_estimates() {
        let dir = std::env::temp_dir().join(format!("paystream-crit-{}", std::process::id()));
        let new = dir.join("avro").join("encode").join("new");
        std::fs::create_dir_all(&new).unwrap();
        std::fs::write(
            new.join("benchmark.json"),
            r#"{"full_id":"avro/encode","x":1}"#,
        )
        .unwrap();
        std::fs::write(
            new.join("estimates.json"),
            r#"{"mean":{"point_estimate":1234.5,"standard_error":1.0}}"#,
        )
        .unwrap();
        let results = read_criterion(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].id, "avro/encode");
        assert_eq!(results[0].mean_ns, 1234.5);
        assert_eq!(duration_ns(1234.5), "1.23 µs");
    }
}
