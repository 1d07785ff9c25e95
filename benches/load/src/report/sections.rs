//! The report's tables, one per section, each rendered for the terminal and as Markdown.

use super::table::Table;
use super::{f0, f2, load, Report};
use crate::run::RunResult;
use crate::stages::DrainResult;

impl Report {
    pub(super) fn tables(&self) -> Vec<(&'static str, Table)> {
        let mut out = Vec::new();

        let mut t = Table::new(["target", "value", "unit", "goal", "met", "measured"]);
        for c in &self.targets {
            t.row([
                c.name.clone(),
                c.value.map_or("—".into(), |v| format!("{v:.1}")),
                c.unit.clone(),
                c.target.clone(),
                (if c.met { "yes" } else { "NO" }).to_string(),
                c.measured.clone(),
            ]);
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

        out.push((
            "Drain stages (fresh group on a pre-filled topic, committed offsets)",
            drain_table(&self.drains),
        ));
        out.push((
            "Payment processor sweep (PSP at zero latency)",
            drain_table(&self.processor),
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
        for d in self.drains.iter().chain(&self.processor) {
            t.row([d.stage.clone(), cpu(&d.cpu)]);
        }
        out.push(("Where the CPU went (from /proc, per process name)", t));

        let mut t = Table::new([
            "profiled during",
            "hottest symbols (perf, share of samples)",
        ]);
        let profiled = self
            .drains
            .iter()
            .chain(&self.processor)
            .map(|d| (d.stage.clone(), &d.profile))
            .chain(self.runs.iter().map(|r| (r.name.clone(), &r.profile)));
        for (stage, profile) in profiled.filter(|(_, p)| !p.is_empty()) {
            t.row([stage, crate::perf::summary(profile)]);
        }
        out.push(("Service profiles (perf record during the stage)", t));

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
}

fn drain_table(drains: &[DrainResult]) -> Table {
    let mut t = Table::new([
        "stage",
        "service",
        "instances",
        "records",
        "committed",
        "records/s",
        "start-up s",
        "drain s",
        "load avg",
        "settings",
    ]);
    for d in drains {
        let mut notes = d.settings.clone();
        if !d.note.is_empty() {
            notes.push(d.note.clone());
        }
        t.row([
            d.stage.clone(),
            d.service.clone(),
            d.instances.to_string(),
            d.records.to_string(),
            d.committed.to_string(),
            f0(d.records_per_s),
            format!("{:.1}", d.startup_s),
            format!("{:.1}", d.drain_s),
            load(d.load_avg_after),
            notes.join("; "),
        ]);
    }
    t
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

pub(super) fn duration_ns(ns: f64) -> String {
    match ns {
        n if n >= 1e6 => format!("{:.2} ms", n / 1e6),
        n if n >= 1e3 => format!("{:.2} µs", n / 1e3),
        n => format!("{n:.0} ns"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_in_the_nearest_unit() {
        assert_eq!(duration_ns(1234.5), "1.23 µs");
        assert_eq!(duration_ns(999.0), "999 ns");
        assert_eq!(duration_ns(2.5e6), "2.50 ms");
    }
}
