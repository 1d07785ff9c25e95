//! Service binaries as child processes ([`ServiceProcess`]), signals, and where the workspace's
//! binaries, scripts and free ports are.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use crate::stack::TestStack;

/// A port nothing listens on right now, for a child process to bind.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(free_ports(1)?[0])
}

/// `n` distinct ports nothing listens on right now. The listeners are held until all are
/// chosen: released one by one, the OS may hand out the same port twice.
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// Path of a workspace binary built by `cargo build --workspace --bins` (`make up` does).
pub fn workspace_binary(name: &str) -> anyhow::Result<PathBuf> {
    let dir = match std::env::var("PAYSTREAM_BIN_DIR") {
        Ok(d) => PathBuf::from(d),
        // Test binaries live in <target>/debug/deps, service binaries (and the chaos binary)
        // in <target>/debug.
        Err(_) => {
            let exe = std::env::current_exe()?;
            let dir = exe.parent().context("no target dir")?;
            if dir.ends_with("deps") {
                dir.parent().context("no target dir")?.to_path_buf()
            } else {
                dir.to_path_buf()
            }
        }
    };
    let path = dir.join(name);
    anyhow::ensure!(
        path.exists(),
        "{} not built: run `cargo build --workspace --bins`",
        path.display()
    );
    Ok(path)
}

/// Sends `signal` (a `kill` name: `TERM`, `KILL`, `STOP`, `CONT`) to process `pid`.
pub async fn send_signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let sent = tokio::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .await?;
    anyhow::ensure!(sent.success(), "kill -{signal} {pid} failed");
    Ok(())
}

/// The repository's root (scripts, README and the broker's configuration live there).
///
/// Read from the environment cargo and nextest give the test process, not baked in with
/// `env!`: a test binary reused from a shared target dir may have been built in another
/// checkout.
pub fn repo_root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir.join("../..")
}

/// A service binary run as a child process, logging JSON to its own file.
pub struct ServiceProcess {
    child: tokio::process::Child,
    pub log_path: PathBuf,
}

impl ServiceProcess {
    /// Starts `binary` with `envs`; its output goes to `<temp>/<log_name>.log`.
    pub fn start(
        binary: &str,
        envs: Vec<(String, String)>,
        log_name: &str,
    ) -> anyhow::Result<Self> {
        let log_path = std::env::temp_dir().join(format!("{log_name}.log"));
        let log = std::fs::File::create(&log_path)?;
        let mut command = tokio::process::Command::new(workspace_binary(binary)?);
        if !envs.iter().any(|(k, _)| k == "RUST_LOG") {
            command.env("RUST_LOG", "info");
        }
        let child = command
            .envs(envs)
            .stdout(std::process::Stdio::from(log.try_clone()?))
            .stderr(std::process::Stdio::from(log))
            .kill_on_drop(true)
            .spawn()?;
        Ok(Self { child, log_path })
    }

    /// A payment processor with `transactional_id`; `run` names its log file.
    pub fn spawn(stack: &TestStack, transactional_id: &str, run: &str) -> anyhow::Result<Self> {
        Self::spawn_with(stack, transactional_id, run, Vec::new())
    }

    /// Like [`ServiceProcess::spawn`], with extra environment (e.g. `OTEL_*`).
    pub fn spawn_with(
        stack: &TestStack,
        transactional_id: &str,
        run: &str,
        extra: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        let mut envs = stack.processor_env();
        envs.extend(extra);
        Self::spawn_binary(
            "payment-processor",
            envs,
            &stack.group_id,
            transactional_id,
            run,
        )
    }

    /// Starts the consumer-group binary `binary` with `env` and `transactional_id`; `group` and
    /// `run` name its log file.
    pub fn spawn_binary(
        binary: &str,
        mut env: Vec<(String, String)>,
        group: &str,
        transactional_id: &str,
        run: &str,
    ) -> anyhow::Result<Self> {
        env.push((
            "PAYSTREAM_CONSUMER__TRANSACTIONAL_ID".into(),
            transactional_id.into(),
        ));
        Self::start(binary, env, &format!("{group}-{run}"))
    }

    /// SIGKILL: no chance to finish anything.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }

    /// SIGTERM, then waits up to `deadline` for the exit.
    pub async fn terminate(
        &mut self,
        deadline: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        self.signal("TERM").await?;
        self.wait_exit(deadline).await
    }

    /// Sends `signal` (a `kill` name such as `STOP` or `CONT`) to the process.
    pub async fn signal(&self, signal: &str) -> anyhow::Result<()> {
        send_signal(self.child.id().context("already exited")?, signal).await
    }

    /// Waits up to `deadline` for the process to exit on its own.
    pub async fn wait_exit(
        &mut self,
        deadline: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        Ok(tokio::time::timeout(deadline, self.child.wait())
            .await
            .context("no exit before the deadline")??)
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// The JSON log lines this run wrote.
    pub fn log_lines(&self) -> anyhow::Result<Vec<Value>> {
        Ok(std::fs::read_to_string(&self.log_path)?
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }
}

/// Runs one of Apache Kafka's own tools against the stack's broker (`scripts/kafka-tool NAME
/// ARGS...`, e.g. `topics --describe`, `configs --alter`, `transactions list`) and returns
/// what it printed; a non-zero exit is an error carrying its stderr.
pub async fn kafka_tool(args: &[&str]) -> anyhow::Result<String> {
    let output = tokio::process::Command::new(repo_root().join("scripts/kafka-tool"))
        .args(args)
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "kafka-tool {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}
