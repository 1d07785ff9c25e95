//! `paystream`: the operator CLI.
//!
//! - `paystream tail <topic>`: print records as JSON lines (partition, offset, key, headers and
//!   the Avro value decoded through the schema registry), like Confluent's
//!   `kafka-avro-console-consumer`.
//! - `paystream topics create`: create paystream's topics (the production owner of topic
//!   creation: the services can run with `kafka.provisioning.create_topics = false`).
//! - `paystream schemas check | register`: check the Avro contracts against the registry
//!   (documentation, compatibility level, compatibility) and register them under
//!   `<topic>-value` (see `schemas`).
//! - `paystream migrate`: apply the database migrations.
//! - `paystream dlq list|show|replay`: inspect a consumer group's dead letters and replay them
//!   to their original topic ([`dlq`]).
//!
//! Configuration takes the services' road: the same file (`PAYSTREAM_CONFIG_FILE`) and
//! `PAYSTREAM_*` variables through `config::load`, so `[kafka.properties]` (TLS, SASL) and
//! the topic names reach every command; flags override them.

mod dlq;

mod schemas;

mod trace;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use paystream_core::avro::AvroCodec;
use paystream_core::config::{
    DatabaseSettings, KafkaSettings, SchemaRegistrySettings, TopicSettings,
};
use paystream_core::headers::RecordHeaders;
use paystream_core::kafka::{self, TopicSpec};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;
use serde_json::json;

#[derive(Parser)]
#[command(name = "paystream", version, about = "paystream operator tool")]
struct Cli {
    /// Kafka bootstrap servers [default: kafka.bootstrap_servers, 127.0.0.1:9092].
    #[arg(long, global = true)]
    bootstrap_servers: Option<String>,
    /// Schema Registry URL [default: schema_registry.url, http://127.0.0.1:8081].
    #[arg(long, global = true)]
    registry_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a topic's records as JSON lines with Avro values decoded.
    Tail {
        topic: String,
        /// Start at the earliest offset instead of the end.
        #[arg(long)]
        from_beginning: bool,
        /// Only records with this key.
        #[arg(long)]
        key: Option<String>,
        /// Stop after printing this many records.
        #[arg(long)]
        max: Option<u64>,
        /// Stop when no record arrived for this many seconds.
        #[arg(long)]
        idle_timeout: Option<u64>,
        /// Also show records of open and aborted transactions.
        #[arg(long)]
        read_uncommitted: bool,
    },
    /// Manage topics.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Manage schemas.
    Schemas {
        #[command(subcommand)]
        command: SchemasCommand,
    },
    /// Inspect and replay a consumer group's dead letters.
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
    /// Print a payment's trace from Jaeger as a span tree (retry and DLQ hops marked).
    Trace(trace::TraceArgs),
    /// Apply database migrations.
    Migrate {
        /// [default: database.url]
        #[arg(long)]
        database_url: Option<String>,
    },
}

/// The part of the services' configuration the CLI reads (other keys are other services').
#[derive(Deserialize, Default)]
#[serde(default)]
struct CliSettings {
    kafka: KafkaSettings,
    schema_registry: SchemaRegistrySettings,
    topics: TopicSettings,
    database: DatabaseSettings,
}

impl CliSettings {
    /// The services' configuration road, then the global flags on top.
    fn load(cli: &Cli) -> anyhow::Result<Self> {
        let mut settings: Self = paystream_core::config::load_checked("")?.settings;
        if let Some(servers) = &cli.bootstrap_servers {
            settings.kafka.bootstrap_servers = servers.clone();
        }
        if let Some(url) = &cli.registry_url {
            settings.schema_registry.url = url.clone();
        }
        Ok(settings)
    }
}

/// Topic names [default: the `topics` section, e.g. `PAYSTREAM_TOPICS__PAYMENTS_REQUESTED`].
#[derive(clap::Args)]
struct TopicNames {
    #[arg(long)]
    requested_topic: Option<String>,
    #[arg(long)]
    outcomes_topic: Option<String>,
    /// Compacted analytics window state.
    #[arg(long)]
    stats_topic: Option<String>,
    #[arg(long)]
    notifications_topic: Option<String>,
}

impl TopicNames {
    /// The configured names with these flags applied.
    fn over(self, configured: &TopicSettings) -> TopicSettings {
        TopicSettings {
            payments_requested: self
                .requested_topic
                .unwrap_or_else(|| configured.payments_requested.clone()),
            payments_outcomes: self
                .outcomes_topic
                .unwrap_or_else(|| configured.payments_outcomes.clone()),
            analytics_payment_stats: self
                .stats_topic
                .unwrap_or_else(|| configured.analytics_payment_stats.clone()),
            notifications_sent: self
                .notifications_topic
                .unwrap_or_else(|| configured.notifications_sent.clone()),
        }
    }
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Create paystream's topics (existing ones are left alone).
    Create {
        /// Partitions of the payment topics.
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        /// [default: kafka.provisioning.replication_factor; -1: the broker's default]
        #[arg(long)]
        replication_factor: Option<i32>,
        #[command(flatten)]
        topics: TopicNames,
        /// The payment processor's dead-letter topic.
        #[arg(
            long,
            env = "PAYSTREAM_CONSUMER__DLQ_TOPIC",
            default_value = "payment-processor.dlq"
        )]
        dlq_topic: String,
        /// The payment processor's group: its retry topics are `<group>.retry.1..N`.
        #[arg(
            long,
            env = "PAYSTREAM_CONSUMER__GROUP_ID",
            default_value = "payment-processor"
        )]
        group: String,
        /// N, the number of retry topics (stages) of the group.
        #[arg(long, default_value_t = 3)]
        retry_stages: usize,
        /// Partitions of each retry topic [default: kafka.provisioning.partitions; -1: the
        /// broker's default]. Dead-letter topics always take that default.
        #[arg(long)]
        retry_partitions: Option<i32>,
        /// The other consumer groups: their retry and dead-letter topics too.
        #[arg(long, value_delimiter = ',', default_value = "analytics,notifier")]
        other_groups: Vec<String>,
    },
}

#[derive(Subcommand)]
enum SchemasCommand {
    /// Check every schema against the registry without changing it: docs, the subject's
    /// level, compatibility with the registered versions. Fails on any problem.
    Check {
        #[command(flatten)]
        contracts: ContractOptions,
    },
    /// Set each subject's level, check every schema, then register them all (none if any
    /// check fails).
    Register {
        #[command(flatten)]
        contracts: ContractOptions,
    },
}

/// Which contracts, and the level their subjects are kept at.
#[derive(clap::Args)]
struct ContractOptions {
    /// Directory of `<topic>.avsc` files (default: the ones built into this binary).
    #[arg(long, env = "PAYSTREAM_SCHEMAS__DIR")]
    dir: Option<PathBuf>,
    /// Compatibility level of paystream's subjects.
    #[arg(
        long,
        env = "PAYSTREAM_SCHEMAS__COMPATIBILITY",
        default_value = schemas::DEFAULT_LEVEL,
        value_parser = clap::builder::PossibleValuesParser::new(schemas::LEVELS),
        ignore_case = true,
    )]
    compatibility: String,
    #[command(flatten)]
    topics: TopicNames,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match CliSettings::load(&cli) {
        Ok(settings) => run(cli.command, settings).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("paystream: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, settings: CliSettings) -> anyhow::Result<()> {
    let kafka_settings = settings.kafka;
    let registry_url = settings.schema_registry.url;
    match command {
        Command::Tail {
            topic,
            from_beginning,
            key,
            max,
            idle_timeout,
            read_uncommitted,
        } => {
            let options = TailOptions {
                from_beginning,
                key,
                max,
                idle_timeout: idle_timeout.map(Duration::from_secs),
                read_uncommitted,
            };
            tail(&kafka_settings, &registry_url, &topic, options).await
        }
        Command::Topics {
            command:
                TopicsCommand::Create {
                    partitions,
                    replication_factor,
                    topics,
                    dlq_topic,
                    group,
                    retry_stages,
                    retry_partitions,
                    other_groups,
                },
        } => {
            let topics = topics.over(&settings.topics);
            let mut kafka_settings = kafka_settings;
            if let Some(replication) = replication_factor {
                kafka_settings.provisioning.replication_factor = replication;
            }
            // Creating them is this command's whole purpose, whatever the services are told.
            kafka_settings.provisioning.create_topics = true;
            let retry_partitions = retry_partitions.unwrap_or(-1);
            let mut specs = vec![
                TopicSpec::new(topics.payments_requested, partitions),
                TopicSpec::new(topics.payments_outcomes, partitions),
                TopicSpec::new(topics.analytics_payment_stats, partitions).compacted(),
                TopicSpec::new(topics.notifications_sent, partitions),
                TopicSpec::new(dlq_topic, -1),
            ];
            specs.extend(
                (1..=retry_stages)
                    .map(|s| TopicSpec::new(format!("{group}.retry.{s}"), retry_partitions)),
            );
            // `--other-groups ''` names none.
            for other in other_groups.into_iter().filter(|g| !g.is_empty()) {
                specs.push(TopicSpec::new(format!("{other}.dlq"), -1));
                specs.extend(
                    (1..=retry_stages)
                        .map(|s| TopicSpec::new(format!("{other}.retry.{s}"), retry_partitions)),
                );
            }
            create_topics(&kafka_settings, specs).await
        }
        Command::Schemas { command } => {
            let (contracts, register) = match command {
                SchemasCommand::Check { contracts } => (contracts, false),
                SchemasCommand::Register { contracts } => (contracts, true),
            };
            let topics = contracts.topics.over(&settings.topics);
            let overrides = [
                ("payments.requested.v1", topics.payments_requested.as_str()),
                ("payments.outcomes.v1", topics.payments_outcomes.as_str()),
                (
                    "analytics.payment-stats.v1",
                    topics.analytics_payment_stats.as_str(),
                ),
                ("notifications.sent.v1", topics.notifications_sent.as_str()),
            ];
            let level = contracts.compatibility.to_uppercase();
            let options = schemas::Options {
                registry_url: &registry_url,
                dir: contracts.dir.as_deref(),
                level: &level,
                topic_overrides: &overrides,
            };
            if register {
                schemas::register(&options).await
            } else {
                schemas::check(&options).await
            }
        }
        Command::Migrate { database_url } => {
            let mut database = settings.database;
            if let Some(url) = database_url {
                database.url = url.into();
            }
            migrate(database).await
        }
        Command::Dlq { command } => {
            dlq::run(command, &kafka_settings, &registry_url, &settings.database).await
        }
        Command::Trace(args) => trace::run(args).await,
    }
}

struct TailOptions {
    from_beginning: bool,
    key: Option<String>,
    max: Option<u64>,
    idle_timeout: Option<Duration>,
    read_uncommitted: bool,
}

async fn tail(
    settings: &KafkaSettings,
    registry_url: &str,
    topic: &str,
    options: TailOptions,
) -> anyhow::Result<()> {
    let group = format!("paystream-tail-{}", uuid::Uuid::new_v4());
    let isolation = if options.read_uncommitted {
        "read_uncommitted"
    } else {
        "read_committed"
    };
    let consumer: StreamConsumer = kafka::client_config(
        settings,
        &[
            ("group.id", &group),
            ("enable.auto.commit", "false"),
            ("isolation.level", isolation),
            ("enable.partition.eof", "false"),
        ],
    )?
    .create()
    .context("creating the consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .context("fetching topic metadata")?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len())
        .filter(|n| *n > 0)
        .with_context(|| format!("topic `{topic}` does not exist"))?;
    // Assigned, not subscribed: a tail must not join a group or wait for a rebalance.
    let start = if options.from_beginning {
        Offset::Beginning
    } else {
        Offset::End
    };
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        assignment.add_partition_offset(topic, p, start)?;
    }
    consumer.assign(&assignment)?;

    let codec = AvroCodec::new(registry_url);
    let mut printed = 0u64;
    loop {
        if options.max.is_some_and(|m| printed >= m) {
            return Ok(());
        }
        let message = match options.idle_timeout {
            Some(t) => match tokio::time::timeout(t, consumer.recv()).await {
                Ok(m) => m?,
                Err(_) => return Ok(()),
            },
            None => tokio::select! {
                m = consumer.recv() => m?,
                _ = tokio::signal::ctrl_c() => return Ok(()),
            },
        };
        let key = message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned());
        if options.key.is_some() && options.key != key {
            continue;
        }
        let headers = RecordHeaders::from_kafka(message.headers());
        let headers: serde_json::Map<_, _> =
            headers.0.into_iter().map(|(k, v)| (k, json!(v))).collect();
        let value = match codec.decode_json(message.payload()).await {
            Ok(v) => v,
            Err(e) => json!({
                "undecodable": e.to_string(),
                "base64": message.payload().map(encode_base64),
            }),
        };
        let line = json!({
            "topic": message.topic(),
            "partition": message.partition(),
            "offset": message.offset(),
            "timestamp": message.timestamp().to_millis(),
            "key": key,
            "headers": headers,
            "value": value,
        });
        println!("{line}");
        printed += 1;
    }
}

/// Bytes the CLI cannot decode, printed as standard base64.
fn encode_base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn create_topics(settings: &KafkaSettings, specs: Vec<TopicSpec>) -> anyhow::Result<()> {
    // -1 asks for the broker's default; 0 or less than -1 is a mistake, not a default.
    let valid = |n: i32| n > 0 || n == -1;
    anyhow::ensure!(
        specs.iter().all(|s| valid(s.partitions)) && valid(settings.provisioning.partitions),
        "partitions must be positive, or -1 for the broker's default"
    );
    anyhow::ensure!(
        valid(settings.provisioning.replication_factor),
        "the replication factor must be positive, or -1 for the broker's default"
    );
    kafka::ensure_topics(settings, &specs).await?;
    let count = |n: i32| match n {
        -1 => "the broker's default".to_string(),
        n => n.to_string(),
    };
    for s in &specs {
        let partitions = if s.partitions > 0 {
            s.partitions
        } else {
            settings.provisioning.partitions
        };
        println!(
            "topic {} ({} partitions, replication factor {})",
            s.name,
            count(partitions),
            count(settings.provisioning.replication_factor)
        );
    }
    Ok(())
}

async fn migrate(mut settings: DatabaseSettings) -> anyhow::Result<()> {
    settings.max_connections = 1;
    let pool = paystream_core::db::connect(&settings).await?;
    paystream_core::db::migrate(&pool).await?;
    println!("migrations applied");
    Ok(())
}
