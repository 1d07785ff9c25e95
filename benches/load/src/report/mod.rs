//! The report: what was measured, on what, and how it compares with the targets and with the
//! machine's own ceilings. Written as `report.json`, `report.md` and PNG plots into the run's
//! folder, and printed as tables on the terminal.
//!
//! `verdicts` judges the targets and names bottlenecks, `sections` lays out the tables
//! ([`table`] renders them), [`plots`] draws the PNGs, [`read_criterion`] collects the
//! micro-benchmarks.

mod criterion;
pub mod plots;
mod sections;
pub mod table;
pub mod targets;
mod verdicts;

use std::path::{Path, PathBuf};

use anyhow::Context;
use paystream_psp_simulator::SimulatorSettings;
use serde::Serialize;

use crate::machine::Machine;
use crate::probes::ProbeResult;
use crate::processor::LatencyResult;
use crate::run::RunResult;
use crate::services::Binaries;
use crate::stages::DrainResult;
pub use criterion::read_criterion;
use plots::Line;
pub use targets::{Ceiling, Target};

/// One criterion benchmark's mean time.
#[derive(Debug, Clone, Serialize)]
pub struct MicroResult {
    pub id: String,
    pub mean_ns: f64,
}

/// Which build profile ran: the services the stages started, and this generator.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    /// Cargo profile of the service binaries the stages started (`release` in `make bench`).
    pub services: String,
    pub services_dir: String,
    /// `RUST_LOG` of those services.
    pub services_log: String,
    /// How this load generator was compiled.
    pub generator: &'static str,
}

impl Profile {
    pub fn new(bins: &Binaries, machine: &Machine) -> Self {
        Self {
            services: bins.profile.clone(),
            services_dir: bins.dir.display().to_string(),
            services_log: bins.log_filter.clone(),
            generator: machine.generator_build,
        }
    }
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
    /// Build profiles of what was measured.
    pub profile: Option<Profile>,
    /// The shared stack's PSP simulator during a `run` (the suite's stages start their own).
    pub psp: Option<SimulatorSettings>,
    pub probes: Vec<ProbeResult>,
    /// The ceilings beside every target: the probes' rates.
    pub ceilings: Vec<Ceiling>,
    pub runs: Vec<RunResult>,
    /// The drain stages of the targets (processor, analytics, notifier).
    pub drains: Vec<DrainResult>,
    /// The processor sweep (instances × batch size), when run.
    pub processor: Vec<DrainResult>,
    pub processor_latency: Vec<LatencyResult>,
    pub micro: Vec<MicroResult>,
    /// One object per target: `name`, `value`, `unit`, `target`, `met` (and more).
    pub targets: Vec<Target>,
    /// Stages that failed, and why (their targets are then not measured).
    pub stage_errors: std::collections::BTreeMap<String, String>,
    pub fractions: Vec<Fraction>,
    pub elapsed_s: f64,
    pub plots: Vec<String>,
    /// For each missed target: where the time or the CPU went, from this run's numbers.
    pub bottlenecks: Vec<String>,
}

pub(crate) fn f0(v: f64) -> String {
    format!("{v:.0}")
}

pub(crate) fn f2(v: f64) -> String {
    format!("{v:.2}")
}

pub(crate) fn load(l: [f64; 3]) -> String {
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
            profile: None,
            psp: None,
            probes: Vec::new(),
            ceilings: Vec::new(),
            runs: Vec::new(),
            drains: Vec::new(),
            stage_errors: Default::default(),
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

    fn machine_line(&self) -> String {
        let m = &self.machine;
        let services = self.profile.as_ref().map_or(String::new(), |p| {
            format!(
                "; services: {} build from {} (RUST_LOG={})",
                p.services, p.services_dir, p.services_log
            )
        });
        let psp = self.psp.as_ref().map_or(String::new(), |p| {
            format!(
                "; shared PSP simulator: latency {} ms, decline rate {}, transient failure rate {}",
                p.latency_ms, p.decline_rate, p.transient_failure_rate
            )
        });
        format!(
            "{} — {} cores, {} GiB, Linux {}; commit {}; generator build: {}{services}{psp}",
            m.cpu_model, m.cores, m.memory_gib, m.kernel, m.commit, m.generator_build,
        )
    }

    /// The lines `make bench` prints at the end: one per target.
    pub fn target_lines(&self) -> String {
        self.targets
            .iter()
            .map(|t| format!("{}\n", t.line()))
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_file_name_safe() {
        assert_eq!(slug("gateway: max rate"), "gateway-max-rate");
        assert_eq!(slug("e2e @ 1000/s"), "e2e-1000-s");
    }
}
