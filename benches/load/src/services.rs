//! The services a stage measures, started by the bench as child processes from the build
//! profile `make bench` compiled (release), never the shared stack's debug binaries. They are
//! configured only through their `PAYSTREAM_*` environment and observed only through their
//! public interfaces (HTTP, Kafka topics and committed offsets), so a rewrite of their insides
//! does not break the bench.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tokio::time::Instant;

/// Where the service binaries come from, and which cargo profile built them.
#[derive(Debug, Clone, Serialize)]
pub struct Binaries {
    pub dir: PathBuf,
    /// `release`, `dev` (cargo's `debug` folder) or a custom profile's name.
    pub profile: String,
    /// `RUST_LOG` of every service started (default `warn`: per-record info logs would be
    /// measured as well).
    pub log_filter: String,
    /// Where the services' logs go (one file per instance).
    #[serde(skip)]
    pub log_dir: PathBuf,
    /// Record a `perf` profile of the services during each stage ([`crate::perf`]).
    pub perf: bool,
}

impl Binaries {
    /// `dir`, or else the folder of this executable (`make bench` builds the load generator
    /// and the services into the same profile folder; a test binary sits one deeper, in
    /// `deps`).
    pub fn locate(dir: Option<&Path>, log_filter: &str, perf: bool) -> anyhow::Result<Self> {
        let dir = match dir {
            Some(d) => d.to_path_buf(),
            None => {
                let exe = std::env::current_exe()?;
                let dir = exe.parent().context("the load generator has no folder")?;
                match dir.ends_with("deps") {
                    true => dir.parent().context("no target folder")?.to_path_buf(),
                    false => dir.to_path_buf(),
                }
            }
        };
        let log_dir = std::env::temp_dir().join(format!("paystream-bench-{}", std::process::id()));
        Ok(Self {
            profile: profile_of(&dir),
            dir,
            log_filter: log_filter.to_string(),
            log_dir,
            perf,
        })
    }

    fn path(&self, binary: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(binary);
        anyhow::ensure!(
            path.exists(),
            "{} not built: `cargo build --release --workspace --bins` (make bench does)",
            path.display()
        );
        Ok(path)
    }
}

/// The cargo profile a target folder belongs to: its last component, `debug` being `dev`.
pub fn profile_of(dir: &Path) -> String {
    match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".into(),
        Some(name) => name.into(),
        None => "unknown".into(),
    }
}

/// `n` distinct ports nothing listens on right now; the listeners are held until all are
/// chosen, so the OS cannot hand out one port twice.
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// One service process, its HTTP port (health, metrics, or the API) and its log file.
pub struct Service {
    pub name: String,
    pub port: u16,
    pub log: PathBuf,
    child: tokio::process::Child,
}

impl Service {
    /// Starts `binary` as `name` with `env` on a free HTTP port. It is killed if dropped.
    pub fn start(
        bins: &Binaries,
        binary: &str,
        name: &str,
        env: &[(String, String)],
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&bins.log_dir)?;
        let log = bins.log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let port = free_ports(1)?[0];
        let child = tokio::process::Command::new(bins.path(binary)?)
            .env("RUST_LOG", &bins.log_filter)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("PAYSTREAM_HTTP__HOST", "127.0.0.1")
            .env("PAYSTREAM_HTTP__PORT", port.to_string())
            .stdout(std::process::Stdio::from(file.try_clone()?))
            .stderr(std::process::Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {binary}"))?;
        Ok(Self {
            name: name.to_string(),
            port,
            log,
            child,
        })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Waits until `GET /health/ready` answers 200; fails when the process exits first or
    /// after `timeout` (a bound against hanging, not a measurement).
    pub async fn ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let url = format!("{}/health/ready", self.url());
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!(
                    "{} exited ({status}) before it was ready; log: {}",
                    self.name,
                    self.log.display()
                );
            }
            let answer = client
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            if answer.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} not ready after {timeout:?}; log: {}",
                self.name,
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Whether the process has exited (a crashed instance stops a drain early).
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    /// SIGTERM (a graceful drain), then SIGKILL after 10 s.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = tokio::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            eprintln!("{} did not stop within 10 s; killing it", self.name);
            let _ = self.child.kill().await;
        }
    }
}

/// A `perf` recording of `services` for at most `window` (see [`crate::perf`]), when enabled.
pub fn record_cpu(
    bins: &Binaries,
    services: &[&Service],
    window: Duration,
) -> Option<crate::perf::Recording> {
    if !bins.perf {
        return None;
    }
    let pids: Vec<u32> = services.iter().filter_map(|s| s.pid()).collect();
    let name = services.first().map_or("none", |s| s.name.as_str());
    std::fs::create_dir_all(&bins.log_dir).ok()?;
    crate::perf::Recording::start(
        &pids,
        window,
        bins.log_dir.join(format!("{name}.perf.data")),
    )
}

/// Stops every service of a stage, last started first (consumers before the gateway).
pub async fn stop_all(services: Vec<Service>) {
    for s in services.into_iter().rev() {
        s.stop().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_named_after_their_folder() {
        assert_eq!(profile_of(Path::new("/t/release")), "release");
        assert_eq!(profile_of(Path::new("/t/debug")), "dev");
        assert_eq!(profile_of(Path::new("/t/bench")), "bench");
    }

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_ports(3).unwrap();
        assert_eq!(ports.len(), 3);
        assert!(ports[0] != ports[1] && ports[1] != ports[2] && ports[0] != ports[2]);
    }
}
