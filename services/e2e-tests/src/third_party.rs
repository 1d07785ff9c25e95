//! Oracles outside our code: what a stock Confluent client (Python confluent-kafka) and
//! Apache Kafka's own console consumer see under `read_committed`.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use serde::Deserialize;

use crate::process::repo_root;

/// Records of a topic as counted by a third-party reader.
#[derive(Debug, Deserialize)]
pub struct CommittedCounts {
    pub records: usize,
    pub per_key: HashMap<String, usize>,
    /// With [`confluent_read_committed_last_values`]: the value of each key's last record.
    #[serde(default, deserialize_with = "hex_values")]
    pub last_values: HashMap<String, Vec<u8>>,
}

fn hex_values<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<HashMap<String, Vec<u8>>, D::Error> {
    HashMap::<String, String>::deserialize(d)?
        .into_iter()
        .map(|(k, v)| Ok((k, hex::decode(v).map_err(serde::de::Error::custom)?)))
        .collect()
}

impl CommittedCounts {
    /// Keys read more (or less) than once.
    pub fn not_once(&self) -> Vec<(&str, usize)> {
        self.per_key
            .iter()
            .filter(|(_, n)| **n != 1)
            .map(|(k, n)| (k.as_str(), *n))
            .collect()
    }
}

/// The virtualenv's python (`scripts/python-env.sh`), where confluent-kafka is installed.
fn python() -> PathBuf {
    std::env::var("PAYSTREAM_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            let cache = std::env::var("PAYSTREAM_CACHE_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| {
                    PathBuf::from(std::env::var("HOME").unwrap_or_default())
                        .join(".cache/paystream")
                });
            cache.join("venv/bin/python")
        })
}

/// Every record of `topic` on `bootstrap`, read to the end under read_committed by Python
/// confluent-kafka.
pub async fn confluent_read_committed(
    bootstrap: &str,
    topic: &str,
) -> anyhow::Result<CommittedCounts> {
    count_committed(bootstrap, topic, &[]).await
}

/// [`confluent_read_committed`], with the value of each key's last record: what a compacted
/// topic keeps of the key, as a stock client sees it.
pub async fn confluent_read_committed_last_values(
    bootstrap: &str,
    topic: &str,
) -> anyhow::Result<CommittedCounts> {
    count_committed(bootstrap, topic, &["--last-values"]).await
}

async fn count_committed(
    bootstrap: &str,
    topic: &str,
    extra: &[&str],
) -> anyhow::Result<CommittedCounts> {
    let script = repo_root().join("services/e2e-tests/python/count_committed.py");
    let output = tokio::process::Command::new(python())
        .arg(script)
        .args(["--bootstrap", bootstrap, "--topic", topic])
        .args(extra)
        .output()
        .await
        .context("running python confluent-kafka (scripts/python-env.sh installs it)")?;
    anyhow::ensure!(
        output.status.success(),
        "count_committed.py failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// Every record of `topic` on `bootstrap` as Apache Kafka's console consumer prints it with
/// `--isolation-level read_committed` (keys only), through `scripts/kafka-tool`.
pub async fn console_read_committed(
    bootstrap: &str,
    topic: &str,
) -> anyhow::Result<CommittedCounts> {
    let output = tokio::process::Command::new(repo_root().join("scripts/kafka-tool"))
        .args([
            "console-consumer",
            "--bootstrap-server",
            bootstrap,
            "--topic",
            topic,
        ])
        .args(["--from-beginning", "--isolation-level", "read_committed"])
        .args([
            "--property",
            "print.key=true",
            "--property",
            "print.value=false",
        ])
        .args(["--timeout-ms", "10000"])
        .output()
        .await
        .context("running scripts/kafka-tool console-consumer")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The consumer ends on its --timeout-ms with a TimeoutException and "Processed a total of N".
    let total: usize = stderr
        .lines()
        .find_map(|l| l.strip_prefix("Processed a total of "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("console consumer printed no total: {stderr}"))?;
    let mut per_key = HashMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        *per_key.entry(line.trim().to_string()).or_insert(0) += 1;
    }
    let records = per_key.values().sum();
    anyhow::ensure!(
        records == total,
        "console consumer printed {records} keys but reports {total} records"
    );
    Ok(CommittedCounts {
        records,
        per_key,
        last_values: HashMap::new(),
    })
}

/// [`confluent_read_committed`], repeated until it counts at least `expected` records or
/// `timeout` passes: the database shows a batch's effects just before its Kafka transaction
/// commits. Returns the last count, to be judged by the caller.
pub async fn confluent_read_committed_at_least(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    timeout: std::time::Duration,
) -> anyhow::Result<CommittedCounts> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let counts = confluent_read_committed(bootstrap, topic).await?;
        if counts.records >= expected || tokio::time::Instant::now() >= deadline {
            return Ok(counts);
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
