//! A PostgreSQL server of a test's own: Debian's binaries (installed by `scripts/stack.sh`), a
//! fresh cluster in a temporary directory, on a free port, so a test can restart the database
//! without touching the one every other test shares.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::process::free_port;

pub struct OwnPostgres {
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
}

impl OwnPostgres {
    /// `initdb` and start a new cluster (trust authentication, user `postgres`).
    pub async fn start() -> anyhow::Result<Self> {
        let bin = pg_bin_dir()?;
        let base =
            std::env::temp_dir().join(format!("own-postgres-{}", uuid::Uuid::new_v4().simple()));
        let data = base.join("data");
        std::fs::create_dir_all(&base)?;
        // initdb and postgres refuse to run as root: as root, the cluster belongs to `postgres`.
        if is_root() {
            let mut chown = std::process::Command::new("chown");
            chown.arg("-R").arg("postgres:").arg(&base);
            run(chown).await?;
        }
        let postgres = Self {
            port: free_port()?,
            bin,
            data,
        };
        postgres
            .pg(
                "initdb",
                &[
                    "-D",
                    &postgres.data_str(),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                ],
            )
            .await?;
        postgres.launch().await?;
        Ok(postgres)
    }

    /// The URL clients use.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server on its port and data (again, after [`OwnPostgres::stop`]); returns
    /// once it accepts connections.
    pub async fn launch(&self) -> anyhow::Result<()> {
        // The stack's settings (scripts/stack.sh), durability included.
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=400 -c shared_buffers=256MB",
            self.port,
            self.data_str()
        );
        let log = self.data.with_file_name("server.log");
        self.pg(
            "pg_ctl",
            &[
                "-D",
                &self.data_str(),
                "-l",
                &log.to_string_lossy(),
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
        .await
    }

    /// A fast shutdown (`pg_ctl stop -m fast`): open transactions are rolled back and every
    /// client's connection is cut, as in a real database restart.
    pub async fn stop(&self) -> anyhow::Result<()> {
        self.pg(
            "pg_ctl",
            &[
                "-D",
                &self.data_str(),
                "-m",
                "fast",
                "-w",
                "-t",
                "60",
                "stop",
            ],
        )
        .await
    }

    fn data_str(&self) -> String {
        self.data.to_string_lossy().into_owned()
    }

    async fn pg(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        run(self.pg_command(tool, args)).await
    }

    /// The cluster's `tool` with `args`; as user `postgres` when this process is root.
    fn pg_command(&self, tool: &str, args: &[&str]) -> std::process::Command {
        let tool = self.bin.join(tool);
        let mut command = if is_root() {
            let mut runuser = std::process::Command::new("runuser");
            runuser.args(["-u", "postgres", "--"]).arg(tool);
            runuser
        } else {
            std::process::Command::new(tool)
        };
        command.args(args);
        command
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        // Immediate shutdown, synchronously: the test is over.
        let data = self.data_str();
        let _ = self
            .pg_command("pg_ctl", &["-D", &data, "-m", "immediate", "stop"])
            .output();
        if let Some(base) = self.data.parent() {
            let _ = std::fs::remove_dir_all(base);
        }
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin`, as `scripts/stack.sh` picks it.
fn pg_bin_dir() -> anyhow::Result<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no /usr/lib/postgresql: run `make up`, which installs PostgreSQL")?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop()
        .map(|(_, bin)| bin)
        .context("no initdb under /usr/lib/postgresql/*/bin")
}

/// Whether this process runs as root (`/proc/self` belongs to the process's user).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

async fn run(command: std::process::Command) -> anyhow::Result<()> {
    let what = format!("{command:?}");
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::from(command).output(),
    )
    .await
    .with_context(|| format!("{what} took over 120 s"))?
    .with_context(|| format!("running {what}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
