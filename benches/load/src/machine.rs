//! What the numbers were measured on. Read from /proc (Linux); unknown fields stay empty.

use std::collections::HashMap;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub commit: String,
    /// How this load generator was compiled (`debug` numbers understate the generator's rate).
    pub generator_build: &'static str,
}

impl Machine {
    pub fn describe() -> Self {
        let cpuinfo = read("/proc/cpuinfo");
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        let memory_gib = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| (kb / 1024.0 / 1024.0 * 10.0).round() / 10.0);
        Self {
            cpu_model,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_gib,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            commit: git_commit(),
            generator_build: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
        }
    }
}

/// The 1-, 5- and 15-minute load averages: how busy the machine was around a measurement.
pub fn load_average() -> [f64; 3] {
    let text = read("/proc/loadavg");
    let mut fields = text
        .split_whitespace()
        .map(|f| f.parse::<f64>().unwrap_or(0.0));
    [(); 3].map(|_| fields.next().unwrap_or(0.0))
}

/// CPU time used so far by every process on the machine.
pub struct CpuTimes {
    at: std::time::Instant,
    /// pid → (name, ticks).
    ticks: HashMap<u32, (String, u64)>,
}

/// Cores a process name kept busy between two [`CpuTimes`] (1.0 = one core all the time).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProcessCpu {
    pub process: String,
    pub cores: f64,
}

/// Linux reports process times in USER_HZ ticks, 100 per second on every mainstream build.
const TICKS_PER_SECOND: f64 = 100.0;

impl CpuTimes {
    /// Reads `/proc/<pid>/stat` of every process (user + system time, all threads).
    pub fn now() -> Self {
        let mut ticks = HashMap::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Some(stat) = parse_stat(&read(&format!("/proc/{pid}/stat"))) {
                ticks.insert(pid, stat);
            }
        }
        Self {
            at: std::time::Instant::now(),
            ticks,
        }
    }

    /// The busiest process names since `earlier`, most first; names below 0.02 cores dropped.
    /// Differences are taken per pid (a kernel worker renames itself with its current job),
    /// then summed by name; a process started in between counts with all its time.
    pub fn since(&self, earlier: &CpuTimes) -> Vec<ProcessCpu> {
        let secs = self.at.duration_since(earlier.at).as_secs_f64().max(1e-3);
        let mut by_name: HashMap<String, u64> = HashMap::new();
        for (pid, (name, t)) in &self.ticks {
            let before = earlier.ticks.get(pid).map_or(0, |(_, t)| *t);
            *by_name.entry(display_name(name)).or_default() += t.saturating_sub(before);
        }
        let mut used: Vec<ProcessCpu> = by_name
            .into_iter()
            .map(|(process, t)| ProcessCpu {
                process,
                cores: t as f64 / TICKS_PER_SECOND / secs,
            })
            .filter(|p| p.cores >= 0.02)
            .collect();
        used.sort_by(|a, b| b.cores.total_cmp(&a.cores));
        used
    }
}

/// Kernel workers are named after their current job; they are one "kernel" entry here.
fn display_name(comm: &str) -> String {
    if comm.starts_with("kworker") || comm.starts_with("ksoftirqd") {
        "kernel workers".into()
    } else {
        comm.to_string()
    }
}

/// `(comm, utime + stime)` from a `/proc/<pid>/stat` line. The name is in parentheses and
/// may itself contain spaces or parentheses, so fields are counted from the last `)`.
fn parse_stat(line: &str) -> Option<(String, u64)> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let comm = line.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = line.get(close + 1..)?.split_whitespace().collect();
    // After the name: state is field 3 of the line, utime 14 and stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn git_commit() -> String {
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(commit) = run(&["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown".into();
    };
    let dirty =
        run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{commit}+dirty")
    } else {
        commit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_lines_with_awkward_names() {
        let line = "1234 (tokio (rt) 1) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 75 0 0 20 0 9 0";
        assert_eq!(parse_stat(line), Some(("tokio (rt) 1".into(), 325)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn measures_this_process_cpu() {
        let before = CpuTimes::now();
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < std::time::Duration::from_millis(300) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        let used = CpuTimes::now().since(&before);
        let (me, _) = parse_stat(&read("/proc/self/stat")).expect("our own stat line");
        let mine = used.iter().find(|p| p.process == me);
        // 300 ms of spinning in 300 ms: far more than the 0.02-core floor even on a busy box.
        assert!(mine.is_some_and(|p| p.cores > 0.1), "{me}: {used:?}");
    }

    #[test]
    fn describes_this_machine() {
        let m = Machine::describe();
        assert!(m.cores >= 1);
        if std::path::Path::new("/proc/meminfo").exists() {
            assert!(m.memory_gib > 0.0);
        }
        assert!(load_average().iter().all(|l| *l >= 0.0));
    }
}
