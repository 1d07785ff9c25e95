//! The verdicts: each target judged on this run's numbers ([`super::targets`]), each stage as
//! a share of a ceiling, and for a missed target where the time or the CPU went.

use super::targets::{Ceiling, Measurement, Target, E2E_TARGET_DURATION_S, E2E_TARGET_RATE, SPECS};
use super::{f0, f2, Fraction, Report};
use crate::machine::ProcessCpu;
use crate::probes::ProbeResult;
use crate::run::RunResult;
use crate::stages::{self, DrainResult};

impl Report {
    fn run(&self, name: &str) -> Option<&RunResult> {
        self.runs.iter().find(|r| r.name == name)
    }

    fn probe(&self, name: &str) -> Option<&ProbeResult> {
        self.probes.iter().find(|p| p.name == name)
    }

    fn drain(&self, stage: &str) -> Option<&DrainResult> {
        self.drains.iter().find(|d| d.stage == stage)
    }

    /// Fills in the ceilings, the target verdicts, the fractions of the ceilings and the
    /// bottleneck notes.
    pub fn evaluate(&mut self) {
        self.ceilings = self
            .probes
            .iter()
            .map(|p| Ceiling {
                name: p.name.clone(),
                value: p.rate_per_s,
                unit: p.unit.clone(),
            })
            .collect();
        let profile = self
            .profile
            .as_ref()
            .map_or("unknown".to_string(), |p| p.services.clone());
        self.targets = SPECS
            .iter()
            .map(|spec| {
                Target::judge(
                    spec,
                    self.measure(spec.name),
                    &profile,
                    self.ceilings.clone(),
                )
            })
            .collect();

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
        if let Some(r) = self.run(stages::GATEWAY_MAX) {
            let stage = "gateway, max accepted/s".to_string();
            add(stage.clone(), r.accepted_per_s, self.probe("bare HTTP"));
            add(stage, r.accepted_per_s, self.probe("Postgres commit"));
        }
        for d in &self.drains {
            add(
                d.stage.clone(),
                d.records_per_s,
                self.probe("Postgres commit"),
            );
            add(
                d.stage.clone(),
                d.records_per_s,
                self.probe("Kafka produce"),
            );
        }
        self.fractions = fractions;
        self.bottlenecks = self
            .targets
            .iter()
            .filter_map(|t| t.reason.as_ref().map(|r| format!("{}: {r}", t.name)))
            .collect();
    }

    /// What this run measured for target `name`.
    fn measure(&self, name: &str) -> Measurement {
        let failed = |stage: &str| Measurement {
            measured: self
                .stage_errors
                .get(stage)
                .map_or("stage not run".into(), |e| format!("stage failed: {e}")),
            ..Default::default()
        };
        match name {
            "gateway_rps" => match self.run(stages::GATEWAY_MAX) {
                Some(r) => Measurement {
                    value: Some(r.accepted_per_s),
                    problem: None,
                    measured: format!(
                        "closed model, {} clients, {:.0} s, {} accepted, errors: {}; HTTP p50 {} / \
                         p99 {} ms",
                        r.concurrency,
                        r.duration_s,
                        r.accepted,
                        r.errors,
                        f2(r.http.p50_ms),
                        f2(r.http.p99_ms)
                    ),
                    why: self.gateway_why(r),
                },
                None => failed(stages::GATEWAY_MAX),
            },
            "e2e_p99_ms_at_1000" => match self.run(stages::E2E) {
                Some(r) => self.e2e(r),
                None => failed(stages::E2E),
            },
            stage => match self.drain(stage) {
                Some(d) => Measurement {
                    value: Some(d.records_per_s),
                    // A time-out still measured a rate; a crash or an interruption did not.
                    problem: (!d.completed && !d.note.starts_with("time-out"))
                        .then(|| d.note.clone()),
                    measured: format!(
                        "{} committed of {} pre-filled in {:.1} s after {:.1} s start-up, {} \
                         instance(s) of {}{}{}",
                        d.committed,
                        d.records,
                        d.drain_s,
                        d.startup_s,
                        d.instances,
                        d.service,
                        if d.settings.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", d.settings.join(", "))
                        },
                        if d.note.is_empty() {
                            String::new()
                        } else {
                            format!("; {}", d.note)
                        }
                    ),
                    why: format!(
                        "CPU during the drain: {}{}",
                        self.cpu_note(&d.cpu),
                        profile_note(&d.profile)
                    ),
                },
                None => failed(stage),
            },
        }
    }

    fn gateway_why(&self, r: &RunResult) -> String {
        let nearest = self
            .fractions_of(r.accepted_per_s, &["bare HTTP", "Postgres commit"])
            .into_iter()
            .max_by(|a, b| a.1.total_cmp(&b.1));
        format!(
            "{}CPU during the run: {}{}",
            nearest.map_or(String::new(), |(name, share, rate)| format!(
                "{:.0}% of the nearest ceiling ({name} at {} /s); ",
                share * 100.0,
                f0(rate)
            )),
            self.cpu_note(&r.cpu),
            profile_note(&r.profile)
        )
    }

    /// `(probe, rate / probe rate, probe rate)` for each named probe that ran.
    fn fractions_of(&self, rate: f64, probes: &[&str]) -> Vec<(String, f64, f64)> {
        probes
            .iter()
            .filter_map(|n| self.probe(n))
            .filter(|p| p.rate_per_s > 0.0)
            .map(|p| (p.name.clone(), rate / p.rate_per_s, p.rate_per_s))
            .collect()
    }

    fn e2e(&self, r: &RunResult) -> Measurement {
        let stage = |name: &str| r.e2e.iter().find(|s| s.name == name);
        let Some(outcome) = stage("outcome") else {
            return Measurement {
                measured: "the run tracked no outcome topic".into(),
                ..Default::default()
            };
        };
        let offered = r.target_rate.unwrap_or_default();
        let mut problems = Vec::new();
        if offered < E2E_TARGET_RATE {
            problems.push(format!(
                "offered {} /s, below the target's rate",
                f0(offered)
            ));
        }
        if r.duration_s + 0.5 < E2E_TARGET_DURATION_S as f64 {
            problems.push(format!(
                "{:.0} s of load, shorter than the target's {E2E_TARGET_DURATION_S} s",
                r.duration_s
            ));
        }
        if outcome.missing > 0 {
            problems.push(format!(
                "{} of {} outcomes not seen within the grace period",
                outcome.missing, r.accepted
            ));
        }
        let mut why = Vec::new();
        if outcome.matched == 0 {
            why.push("no outcome appeared at all — did the payment processor start?".into());
        } else if let Some(relay) = stage("relay") {
            why.push(format!(
                "of the median {} ms, {} ms pass until the request event is readable (gateway + \
                 outbox relay) and {} ms in the payment processor (fetch, batch wait, PSP call, \
                 Postgres, transaction commit, read_committed visibility); p99 {} ms vs relay \
                 p99 {} ms",
                f2(outcome.latency.p50_ms),
                f2(relay.latency.p50_ms),
                f2(outcome.latency.p50_ms - relay.latency.p50_ms),
                f2(outcome.latency.p99_ms),
                f2(relay.latency.p99_ms),
            ));
        }
        why.push(format!(
            "CPU during the run: {}{}",
            self.cpu_note(&r.cpu),
            profile_note(&r.profile)
        ));
        Measurement {
            value: (outcome.matched > 0).then_some(outcome.latency.p99_ms),
            problem: (!problems.is_empty()).then(|| problems.join("; ")),
            measured: format!(
                "open model {} /s for {:.0} s, {} accepted, {} outcomes seen; p50 {} / p99 {} / \
                 max {} ms",
                f0(offered),
                r.duration_s,
                r.accepted,
                outcome.matched,
                f2(outcome.latency.p50_ms),
                f2(outcome.latency.p99_ms),
                f2(outcome.latency.max_ms)
            ),
            why: why.join("; "),
        }
    }

    /// Busy share of the machine and the top processes during a measurement.
    fn cpu_note(&self, cpu: &[ProcessCpu]) -> String {
        let total: f64 = cpu.iter().map(|p| p.cores).sum();
        let top: Vec<String> = cpu
            .iter()
            .take(5)
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
}

/// `; perf: …` with the hottest symbols, or nothing when no profile was recorded.
fn profile_note(profile: &[crate::perf::Hotspot]) -> String {
    match profile.is_empty() {
        true => String::new(),
        false => format!("; perf, hottest symbols: {}", crate::perf::summary(profile)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::Machine;

    fn drain(stage: &str, rate: f64, completed: bool, note: &str) -> DrainResult {
        DrainResult {
            stage: stage.into(),
            service: "analytics".into(),
            instances: 1,
            settings: Vec::new(),
            records: 1_000,
            committed: if completed { 1_000 } else { 500 },
            records_per_s: rate,
            startup_s: 1.0,
            drain_s: 1.0,
            completed,
            note: note.into(),
            load_avg_before: [0.0; 3],
            load_avg_after: [0.0; 3],
            cpu: vec![ProcessCpu {
                process: "analytics".into(),
                cores: 1.5,
            }],
            profile: Vec::new(),
        }
    }

    #[test]
    fn every_target_is_judged_and_unmeasured_ones_say_why() {
        let mut report = Report::new(Machine::describe(), false);
        report
            .drains
            .push(drain(stages::ANALYTICS, 6_000.0, true, ""));
        report.drains.push(drain(
            stages::NOTIFIER,
            2_000.0,
            false,
            "notifier-0 exited; log: x",
        ));
        report
            .stage_errors
            .insert(stages::GATEWAY_MAX.into(), "no gateway".into());
        report.evaluate();
        assert_eq!(report.targets.len(), 6);
        let t = |n: &str| report.targets.iter().find(|t| t.name == n).unwrap();
        assert!(t("analytics_rps").met);
        // Fast enough, but a crashed instance is not a measurement of the target.
        assert!(!t("notifier_rps_webhook20").met);
        assert!(t("notifier_rps_webhook20")
            .reason
            .as_ref()
            .unwrap()
            .contains("exited"));
        let gateway = t("gateway_rps");
        assert!(!gateway.met && gateway.value.is_none());
        assert!(gateway.reason.as_ref().unwrap().contains("no gateway"));
        // Missed targets carry the reason into the bottleneck notes.
        assert_eq!(report.bottlenecks.len(), 5);

        let json = serde_json::to_value(&report).unwrap();
        let targets = json["targets"].as_array().unwrap();
        assert_eq!(targets.len(), 6);
        for t in targets {
            for key in ["name", "value", "unit", "target", "met"] {
                assert!(t.get(key).is_some(), "{key} missing in {t}");
            }
        }
    }

    #[test]
    fn a_timed_out_drain_still_counts_its_rate() {
        let mut report = Report::new(Machine::describe(), false);
        report.drains.push(drain(
            stages::PROCESSOR_PSP50,
            2_500.0,
            false,
            "time-out after 60 s: 500 of 1000 committed",
        ));
        report.evaluate();
        let t = &report.targets[1];
        assert_eq!(t.name, "processor_rps_psp50");
        assert!(t.met);
    }
}
