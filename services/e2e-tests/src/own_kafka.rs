//! An Apache Kafka broker of a test's own: the same jars and configuration as the stack's
//! (`scripts/kafka.sh run`), on free ports with its own log directory, so a test can stop,
//! kill and restart it without touching the broker every other test shares.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use paystream_core::config::KafkaSettings;
use paystream_core::kafka;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::process::{free_ports, repo_root, send_signal};

pub struct OwnKafka {
    pub addr: String,
    controller_addr: String,
    log_dir: PathBuf,
    log_path: PathBuf,
    child: Option<tokio::process::Child>,
}

impl OwnKafka {
    /// A broker with its own free ports and an empty log directory, not started yet: clients
    /// can be pointed at [`OwnKafka::settings`] before it is there.
    pub fn new() -> anyhow::Result<Self> {
        let name = format!("own-kafka-{}", uuid::Uuid::new_v4().simple());
        let base = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&base)?;
        // Distinct: Kafka refuses to format a node whose listeners share a port.
        let ports = free_ports(2)?;
        Ok(Self {
            addr: format!("127.0.0.1:{}", ports[0]),
            controller_addr: format!("127.0.0.1:{}", ports[1]),
            log_dir: base.join("kafka-logs"),
            log_path: base.join("broker.log"),
            child: None,
        })
    }

    /// A new broker, started (see [`OwnKafka::launch`]).
    pub async fn start() -> anyhow::Result<Self> {
        let mut broker = Self::new()?;
        broker.launch().await?;
        Ok(broker)
    }

    /// Starts the broker (formatting its log directory the first time), or starts it again
    /// on the same ports and data after a stop or a kill; returns once it serves metadata.
    pub async fn launch(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "broker already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let child = tokio::process::Command::new(repo_root().join("scripts/kafka.sh"))
            .arg("run")
            .env("PAYSTREAM_BROKER_ADDR", &self.addr)
            .env("PAYSTREAM_CONTROLLER_ADDR", &self.controller_addr)
            .env("KAFKA_LOG_DIR", &self.log_dir)
            // PLAINTEXT only: the stack's broker holds the TLS listeners' ports.
            .env("PAYSTREAM_BROKER_SASL_SSL_ADDR", "")
            .env("PAYSTREAM_BROKER_SSL_ADDR", "")
            .env("KAFKA_HEAP_OPTS", "-Xms128m -Xmx512m")
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .context("starting scripts/kafka.sh run")?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(90)).await
    }

    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                anyhow::bail!("own broker exited with {status}; log: {}", self.log_tail());
            }
            let probe = KafkaSettings {
                bootstrap_servers: self.addr.clone(),
                ..Default::default()
            };
            let ready = tokio::task::spawn_blocking(move || {
                let consumer: BaseConsumer =
                    kafka::client_config(&probe, &[]).ok()?.create().ok()?;
                let metadata = consumer.fetch_metadata(None, Duration::from_secs(2)).ok()?;
                (!metadata.brokers().is_empty()).then_some(())
            })
            .await?;
            if ready.is_some() {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "own broker not ready after {timeout:?}; log: {}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGTERM: a controlled shutdown; waits until the JVM has exited.
    pub async fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.child.as_ref().and_then(|c| c.id());
        send_signal(pid.context("broker not running")?, "TERM").await?;
        let mut child = self.child.take().context("broker not running")?;
        tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .context("broker did not stop within 60 s of SIGTERM")?
            .map_err(Into::into)
    }

    /// SIGKILL: no chance to flush or close anything.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("broker not running")?;
        child.start_kill()?;
        child.wait().await?;
        Ok(())
    }

    /// Client settings for this broker; reconnects quickly once it is back (librdkafka backs
    /// off up to 10 s by default).
    pub fn settings(&self) -> KafkaSettings {
        let mut settings = KafkaSettings {
            bootstrap_servers: self.addr.clone(),
            provisioning: crate::env::test_provisioning(),
            ..Default::default()
        };
        settings
            .properties
            .insert("reconnect.backoff.max.ms".into(), "500".into());
        settings
    }

    /// The last lines of the broker's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for OwnKafka {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        if let Some(base) = self.log_dir.parent() {
            let _ = std::fs::remove_dir_all(base);
        }
    }
}
