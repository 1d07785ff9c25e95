//! Command-line flags. Addresses default to the local stack's and also come from the same
//! `PAYSTREAM_*` variables the services read, so one environment points everything at a stack.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use paystream_core::config::KafkaSettings;

use crate::workload::CurrencyMix;

#[derive(Debug, Parser)]
#[command(
    name = "paystream-load",
    about = "Load generator and benchmark suite for paystream"
)]
pub struct Cli {
    #[command(flatten)]
    pub targets: Targets,
    /// Folder the report goes to; each invocation writes a new timestamped sub-folder.
    #[arg(
        long,
        env = "PAYSTREAM_BENCH_OUT",
        default_value = ".bench",
        global = true
    )]
    pub out: PathBuf,
    /// Folder of the service binaries the stages start (default: this executable's folder,
    /// where `make bench` builds the release profile of the whole workspace).
    #[arg(long, env = "PAYSTREAM_BENCH_BIN_DIR", global = true)]
    pub service_bin_dir: Option<PathBuf>,
    /// `RUST_LOG` of the services the stages start.
    #[arg(
        long,
        env = "PAYSTREAM_BENCH_SERVICE_LOG",
        default_value = "warn",
        global = true
    )]
    pub service_log: String,
    /// Do not record `perf` profiles of the services during the stages (they name the
    /// hottest symbols in a missed target's reason).
    #[arg(long, env = "BENCH_NO_PERF", global = true)]
    pub no_perf: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// One load run against the gateway (open or closed model), with end-to-end tracking.
    Run(RunArgs),
    /// The ceiling probes only: bare HTTP handler, Postgres commit, Kafka produce.
    Probes(ProbeArgs),
    /// The payment-processor sweep only (its own processes on scratch topics).
    Processor(ProcessorArgs),
    /// Everything `make bench` runs: probes, then the target stages on the bench's own
    /// service processes (processor at PSP 0 and 50 ms, analytics, notifier, gateway, end to
    /// end), plus the micro-benchmark results criterion left in `--criterion-dir`.
    Suite(SuiteArgs),
}

/// Where the stack under test listens.
#[derive(Debug, Clone, Args)]
pub struct Targets {
    #[arg(
        long,
        env = "PAYSTREAM_LOAD_GATEWAY_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub gateway_url: String,
    #[arg(
        long,
        env = "PAYSTREAM_LOAD_PSP_URL",
        default_value = "http://127.0.0.1:8090",
        global = true
    )]
    pub psp_url: String,
    #[arg(
        long,
        env = "PAYSTREAM_KAFKA__BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092",
        global = true
    )]
    pub bootstrap_servers: String,
    #[arg(
        long,
        env = "PAYSTREAM_SCHEMA_REGISTRY__URL",
        default_value = "http://127.0.0.1:8081",
        global = true
    )]
    pub registry_url: String,
    #[arg(
        long,
        env = "PAYSTREAM_DATABASE__URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        global = true,
        hide_env_values = true
    )]
    pub database_url: String,
    /// The topic whose records mark a payment as decided (key = payment id).
    #[arg(
        long,
        env = "PAYSTREAM_TOPICS__PAYMENTS_OUTCOMES",
        default_value = "payments.outcomes.v1",
        global = true
    )]
    pub outcomes_topic: String,
    /// The gateway's topic: when its record is readable, the outbox relay has done its part.
    #[arg(
        long,
        env = "PAYSTREAM_TOPICS__PAYMENTS_REQUESTED",
        default_value = "payments.requested.v1",
        global = true
    )]
    pub requested_topic: String,
    /// `fetch.wait.max.ms` of the end-to-end consumer: the longest a record can sit on the
    /// broker unread when the broker answers fetches only at this deadline.
    #[arg(long, default_value_t = 10, global = true)]
    pub e2e_fetch_wait_ms: u32,
    /// Further end-to-end stages, `NAME=TOPIC`, whose records are keyed by payment id
    /// (e.g. `notification=notifications.v1` once the notifier runs). Repeatable.
    #[arg(long = "track", value_parser = parse_stage, global = true)]
    pub extra_stages: Vec<(String, String)>,
}

impl Targets {
    /// Client settings for the broker under test (every Kafka client goes through
    /// `paystream_core::kafka::client_config` with them).
    pub fn kafka_settings(&self) -> KafkaSettings {
        KafkaSettings {
            bootstrap_servers: self.bootstrap_servers.clone(),
            ..Default::default()
        }
    }

    /// Every end-to-end stage tracked: the outcome topic first (the target is judged on it),
    /// the requested topic (outbox relay done), then the extra ones.
    pub fn stages(&self) -> Vec<(String, String)> {
        [
            ("outcome".to_string(), self.outcomes_topic.clone()),
            ("relay".to_string(), self.requested_topic.clone()),
        ]
        .into_iter()
        .chain(self.extra_stages.iter().cloned())
        .collect()
    }
}

fn parse_stage(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, topic)) if !name.is_empty() && !topic.is_empty() => {
            Ok((name.to_string(), topic.to_string()))
        }
        _ => Err(format!("expected NAME=TOPIC, got `{s}`")),
    }
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let trimmed = s.trim_end_matches('s');
    trimmed
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("expected seconds, e.g. 30 or 2.5s, got `{s}`"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Requests scheduled by the clock at `--rate`; latency counts from the scheduled time.
    Open,
    /// `--concurrency` workers, each sending its next request when the last one is answered.
    Closed,
}

/// What the requests look like.
#[derive(Debug, Clone, Args)]
pub struct MixArgs {
    /// Number of distinct merchants, chosen uniformly.
    #[arg(long, default_value_t = 50)]
    pub merchants: u32,
    /// Currencies with weights, e.g. `EUR:60,USD:30,GBP:10`.
    #[arg(long, default_value = "EUR:60,USD:30,GBP:10")]
    pub currencies: CurrencyMix,
}

/// The PSP simulator's behaviour during a run (`PUT /admin/config`; restored afterwards).
/// Unset flags leave the simulator as it is.
#[derive(Debug, Clone, Default, Args)]
pub struct PspArgs {
    #[arg(long)]
    pub psp_latency_ms: Option<u64>,
    #[arg(long)]
    pub psp_decline_rate: Option<f64>,
    #[arg(long)]
    pub psp_transient_failure_rate: Option<f64>,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[arg(long, value_enum, default_value_t = ModelKind::Open)]
    pub model: ModelKind,
    /// Open model: requests per second.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Closed model: workers. Open model: bound on requests in flight (a request waiting for
    /// a slot still counts its latency from its scheduled time).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Seconds of load, e.g. `30` or `2.5s`.
    #[arg(long, value_parser = parse_secs, default_value = "10")]
    pub duration: Duration,
    /// Seconds to wait after the load for outstanding end-to-end records.
    #[arg(long, value_parser = parse_secs, default_value = "15")]
    pub e2e_grace: Duration,
    /// Do not subscribe to the outcome topic (HTTP only).
    #[arg(long)]
    pub no_e2e: bool,
    #[command(flatten)]
    pub mix: MixArgs,
    #[command(flatten)]
    pub psp: PspArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    /// Seconds each probe runs.
    #[arg(long, value_parser = parse_secs, default_value = "8")]
    pub duration: Duration,
    /// Concurrent HTTP clients of the bare-handler probe.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Pool size of the Postgres probe (the gateway's default `max_connections`).
    #[arg(long, default_value_t = 10)]
    pub pool_size: u32,
}

#[derive(Debug, Clone, Args)]
pub struct ProcessorArgs {
    /// Records pre-filled per configuration.
    #[arg(long, default_value_t = 10_000)]
    pub records: usize,
    /// Processor instances in the group to try (the topic has 6 partitions).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub instances: Vec<usize>,
    /// `batch_max_records` values to try.
    #[arg(long, value_delimiter = ',', default_value = "100,500")]
    pub batch_sizes: Vec<usize>,
    /// `batch_max_wait_ms` (how long a batch may wait to fill: the transaction cadence).
    #[arg(long, default_value_t = 50)]
    pub batch_wait_ms: u64,
    /// Give up on a configuration after this long.
    #[arg(long, value_parser = parse_secs, default_value = "120")]
    pub timeout: Duration,
    /// Latency run: records per second produced to a fresh processor (0: no latency run).
    #[arg(long, default_value_t = 50.0)]
    pub latency_rate: f64,
    /// Latency run: records produced.
    #[arg(long, default_value_t = 500)]
    pub latency_records: usize,
    /// Latency run: configurations to try, `FETCH_WAIT_MS:BATCH_WAIT_MS` — the processor
    /// consumer's `fetch.wait.max.ms` (librdkafka's default is 500) and `batch_max_wait_ms`.
    #[arg(long, value_delimiter = ',', value_parser = parse_latency_config,
          default_value = "500:50,10:50,10:5")]
    pub latency_configs: Vec<(u32, u64)>,
}

fn parse_latency_config(s: &str) -> Result<(u32, u64), String> {
    s.split_once(':')
        .and_then(|(f, b)| Some((f.parse().ok()?, b.parse().ok()?)))
        .ok_or_else(|| format!("expected FETCH_WAIT_MS:BATCH_WAIT_MS, e.g. 10:5, got `{s}`"))
}

#[derive(Debug, Clone, Args)]
pub struct SuiteArgs {
    /// Short runs at low rates and small sizes, for development (a few minutes in all).
    #[arg(long)]
    pub quick: bool,
    /// Seconds of each gateway load run (default: 30, quick: 5).
    #[arg(long, env = "BENCH_GATEWAY_DURATION", value_parser = parse_secs)]
    pub duration: Option<Duration>,
    /// Closed-model workers of the maximum-rate run.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Rate of the end-to-end run (the target is judged at 1,000/s; quick: 200).
    #[arg(long, env = "BENCH_E2E_RATE")]
    pub e2e_rate: Option<f64>,
    /// Seconds of the end-to-end run (the target is judged over 60; quick: 10).
    #[arg(long, env = "BENCH_E2E_DURATION", value_parser = parse_secs)]
    pub e2e_duration: Option<Duration>,
    /// Requests pre-filled for the processor at PSP 0 ms (default 20,000; quick 2,000).
    #[arg(long, env = "BENCH_PROCESSOR_RECORDS")]
    pub processor_records: Option<usize>,
    /// Requests pre-filled for the processor at PSP 50 ms (default 10,000; quick 1,000).
    #[arg(long, env = "BENCH_PSP50_RECORDS")]
    pub psp50_records: Option<usize>,
    /// Outcomes pre-filled for analytics (default 20,000; quick 2,000).
    #[arg(long, env = "BENCH_ANALYTICS_RECORDS")]
    pub analytics_records: Option<usize>,
    /// Outcomes pre-filled for the notifier (default 5,000; quick 500).
    #[arg(long, env = "BENCH_NOTIFIER_RECORDS")]
    pub notifier_records: Option<usize>,
    /// Longest a drain stage may take; a slower one reports the rate it reached (default
    /// 60 s, quick 20 s).
    #[arg(long, env = "BENCH_DRAIN_TIMEOUT", value_parser = parse_secs)]
    pub drain_timeout: Option<Duration>,
    /// Instances of each consumer group (processor, analytics, notifier) in the stages.
    #[arg(long, env = "BENCH_INSTANCES", default_value_t = 1)]
    pub instances: usize,
    /// Also run the processor sweep (instances 1 and 3 × batch 100 and 500) and its latency
    /// runs: a few more minutes.
    #[arg(long, env = "BENCH_SWEEP")]
    pub sweep: bool,
    /// Where criterion wrote the micro-benchmarks (`CRITERION_HOME`), to include them.
    #[arg(long)]
    pub criterion_dir: Option<PathBuf>,
    /// Skip these stages: probes, processor, psp50, analytics, notifier, gateway, e2e.
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<String>,
    #[command(flatten)]
    pub mix: MixArgs,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_parse_as_name_and_topic() {
        assert_eq!(
            parse_stage("notification=notifications.v1").unwrap(),
            ("notification".into(), "notifications.v1".into())
        );
        assert!(parse_stage("=x").is_err());
        assert!(parse_stage("nothing").is_err());
    }

    #[test]
    fn latency_configs_parse_as_two_waits() {
        assert_eq!(parse_latency_config("500:50").unwrap(), (500, 50));
        assert!(parse_latency_config("500").is_err());
        assert!(parse_latency_config("a:1").is_err());
    }

    #[test]
    fn durations_accept_plain_and_suffixed_seconds() {
        assert_eq!(parse_secs("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_secs("2.5s").unwrap(), Duration::from_millis(2500));
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("soon").is_err());
    }

    #[test]
    fn the_cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
