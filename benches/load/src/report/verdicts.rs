//! The verdicts: each target met or not, each stage as a share of a ceiling, and for a missed
//! target where the time or the CPU went.

use super::{f0, f2, Fraction, Report, TargetCheck};
use super::{E2E_TARGET_P99_MS, E2E_TARGET_RATE, GATEWAY_HALF_RATE_P99_MS};
use super::{GATEWAY_TARGET_PER_S, PROCESSOR_TARGET_PER_S};
use crate::probes::ProbeResult;
use crate::processor::ProcessorResult;
use crate::run::RunResult;

impl Report {
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
}
