//! A CPU profile of the services a stage started, for the reason of a missed target: `perf
//! record` on their pids for a window of the stage, summarised as the hottest symbols. Skipped
//! (with a note) where `perf` is missing or not permitted; the stage's numbers do not depend on
//! it.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// One line of the summary: share of the samples, binary or library, symbol.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hotspot {
    pub percent: f64,
    pub dso: String,
    pub symbol: String,
}

/// A `perf record` running on some processes.
pub struct Recording {
    child: tokio::process::Child,
    data: PathBuf,
}

/// Sampling frequency: enough for a summary, little overhead on a busy 2-core machine (no
/// call graphs either: the summary is by symbol, and `-g` cost half a core in a trial run).
const FREQUENCY: &str = "99";

impl Recording {
    /// Starts recording `pids` for `window`; `None` when perf cannot be started.
    pub fn start(pids: &[u32], window: Duration, data: PathBuf) -> Option<Self> {
        if pids.is_empty() {
            return None;
        }
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        let child = tokio::process::Command::new("perf")
            .args(["record", "-F", FREQUENCY, "-p", &pids.join(","), "-o"])
            .arg(&data)
            .args(["--", "sleep", &format!("{:.1}", window.as_secs_f64())])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .ok()?;
        Some(Self { child, data })
    }

    /// Ends the recording (SIGINT: perf writes what it has) and summarises its `top` hottest
    /// symbols.
    pub async fn finish(mut self, top: usize) -> Vec<Hotspot> {
        if let (Ok(None), Some(pid)) = (self.child.try_wait(), self.child.id()) {
            let _ = tokio::process::Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status()
                .await;
        }
        // Interrupted, perf exits non-zero but has written its data: the report decides.
        if tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        let report = tokio::process::Command::new("perf")
            .args(["report", "--stdio", "--no-children", "--sort", "dso,symbol"])
            .args(["--field-separator", "|", "--percent-limit", "1", "-i"])
            .arg(&self.data)
            .output()
            .await;
        let _ = std::fs::remove_file(&self.data);
        match report {
            Ok(out) if out.status.success() => {
                let mut spots = parse_report(&String::from_utf8_lossy(&out.stdout));
                spots.truncate(top);
                spots
            }
            _ => Vec::new(),
        }
    }
}

/// The `percent|dso|symbol` lines of `perf report --field-separator '|'`, hottest first;
/// comments and call-graph lines are skipped.
pub fn parse_report(text: &str) -> Vec<Hotspot> {
    let mut spots: Vec<Hotspot> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut fields = l.split('|');
            let percent = fields.next()?.trim().strip_suffix('%')?.parse().ok()?;
            let dso = fields.next()?.trim().to_string();
            let symbol = fields.next()?.trim();
            let symbol = symbol
                .strip_prefix("[.] ")
                .or_else(|| symbol.strip_prefix("[k] "))
                .unwrap_or(symbol)
                .trim()
                .to_string();
            Some(Hotspot {
                percent,
                dso,
                symbol,
            })
        })
        .collect();
    spots.sort_by(|a, b| b.percent.total_cmp(&a.percent));
    spots
}

/// `12.3% symbol (dso)`, comma-separated: the profile as a reason's clause.
pub fn summary(spots: &[Hotspot]) -> String {
    spots
        .iter()
        .map(|s| format!("{:.1}% {} ({})", s.percent, s.symbol, s.dso))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_perf_report_lines() {
        let text = "# Samples: 89\n#\n\
                    8.99%|libc.so.6|[.] __GI_____strtoll_l_internal\n\
                    19.10%|payment-processor|[.] apache_avro::decode::decode_internal\n\
                    |\n---foo\n\
                    2.00%|[kernel.kallsyms]|[k] do_syscall_64\n";
        let spots = parse_report(text);
        assert_eq!(spots.len(), 3);
        assert_eq!(spots[0].dso, "payment-processor");
        assert_eq!(spots[0].symbol, "apache_avro::decode::decode_internal");
        assert_eq!(spots[2].symbol, "do_syscall_64");
        assert_eq!(
            summary(&spots[..1]),
            "19.1% apache_avro::decode::decode_internal (payment-processor)"
        );
    }
}
