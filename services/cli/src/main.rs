//! `paystream`: the operator CLI.
//!
//! - `paystream tail <topic>`: print records as JSON lines (partition, offset, key, headers and
//!   the Avro value decoded through the schema registry), like Confluent's
//!   `kafka-avro-console-consumer`.
//! - `paystream topics create`: create paystream's topics with explicit partition counts.
//! - `paystream schemas check | register`: check the Avro contracts against the registry
//!   (documentation, compatibility level, compatibility) and register them under
//!   `<topic>-value` (see `schemas`).
//! - `paystream migrate`: apply the database migrations.
//! - `paystream dlq list|show|replay`: inspect a consumer group's dead letters and replay them
//!   to their original topic ([`dlq`]).

mod dlq;

mod schemas;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use paystream_core::avro::AvroCodec;
use paystream_core::config::{DatabaseSettings, KafkaSettings};
use paystream_core::headers::RecordHeaders;
use paystream_core::kafka::{self, TopicSpec};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;

#[derive(Parser)]
#[command(name = "paystream", version, about = "paystream operator tool")]
struct Cli {
    /// Kafka bootstrap servers.
    #[arg(
        long,
        global = true,
        env = "PAYSTREAM_KAFKA__BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092"
    )]
    bootstrap_servers: String,
    /// Schema Registry URL.
    #[arg(
        long,
        global = true,
        env = "PAYSTREAM_SCHEMA_REGISTRY__URL",
        default_value = "http://127.0.0.1:8081"
    )]
    registry_url: String,
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
    /// Apply database migrations.
    Migrate {
        #[arg(
            long,
            env = "PAYSTREAM_DATABASE__URL",
            default_value = "postgres://postgres@127.0.0.1:5432/postgres"
        )]
        database_url: String,
    },
}

/// Topic names, overridable like the services' own (`PAYSTREAM_TOPICS__*`).
#[derive(clap::Args)]
struct TopicNames {
    #[arg(
        long,
        env = "PAYSTREAM_TOPICS__PAYMENTS_REQUESTED",
        default_value = "payments.requested.v1"
    )]
    requested_topic: String,
    #[arg(
        long,
        env = "PAYSTREAM_TOPICS__PAYMENTS_OUTCOMES",
        default_value = "payments.outcomes.v1"
    )]
    outcomes_topic: String,
    /// Compacted analytics window state.
    #[arg(
        long,
        env = "PAYSTREAM_TOPICS__ANALYTICS_PAYMENT_STATS",
        default_value = "analytics.payment-stats.v1"
    )]
    stats_topic: String,
    #[arg(
        long,
        env = "PAYSTREAM_TOPICS__NOTIFICATIONS_SENT",
        default_value = "notifications.sent.v1"
    )]
    notifications_topic: String,
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Create paystream's topics (existing ones are left alone).
    Create {
        /// Partitions of the payment topics.
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        #[arg(long, default_value_t = 1)]
        replication_factor: i32,
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
        /// Partitions of each retry topic.
        #[arg(long, default_value_t = 3)]
        retry_partitions: i32,
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
    let kafka_settings = KafkaSettings {
        bootstrap_servers: cli.bootstrap_servers.clone(),
        ..Default::default()
    };
    let result = match cli.command {
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
            tail(&kafka_settings, &cli.registry_url, &topic, options).await
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
            let mut specs = vec![
                TopicSpec::new(topics.requested_topic, partitions),
                TopicSpec::new(topics.outcomes_topic, partitions),
                TopicSpec::new(topics.stats_topic, partitions).compacted(),
                TopicSpec::new(topics.notifications_topic, partitions),
                TopicSpec::new(dlq_topic, 1),
            ];
            specs.extend(
                (1..=retry_stages)
                    .map(|s| TopicSpec::new(format!("{group}.retry.{s}"), retry_partitions)),
            );
            for other in other_groups {
                specs.push(TopicSpec::new(format!("{other}.dlq"), 1));
                specs.extend(
                    (1..=retry_stages)
                        .map(|s| TopicSpec::new(format!("{other}.retry.{s}"), retry_partitions)),
                );
            }
            create_topics(&kafka_settings, specs, replication_factor).await
        }
        Command::Schemas { command } => {
            let (contracts, register) = match command {
                SchemasCommand::Check { contracts } => (contracts, false),
                SchemasCommand::Register { contracts } => (contracts, true),
            };
            let overrides = [
                (
                    "payments.requested.v1",
                    contracts.topics.requested_topic.as_str(),
                ),
                (
                    "payments.outcomes.v1",
                    contracts.topics.outcomes_topic.as_str(),
                ),
                (
                    "analytics.payment-stats.v1",
                    contracts.topics.stats_topic.as_str(),
                ),
                (
                    "notifications.sent.v1",
                    contracts.topics.notifications_topic.as_str(),
                ),
            ];
            let level = contracts.compatibility.to_uppercase();
            let options = schemas::Options {
                registry_url: &cli.registry_url,
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
        Command::Migrate { database_url } => migrate(database_url).await,
        Command::Dlq { command } => dlq::run(command, &kafka_settings, &cli.registry_url).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("paystream: {e:#}");
            ExitCode::FAILURE
        }
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
                "base64": message.payload().map(paystream_core::processing::encode_base64),
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

async fn create_topics(
    settings: &KafkaSettings,
    specs: Vec<TopicSpec>,
    replication: i32,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        specs.iter().all(|s| s.partitions > 0),
        "--partitions must be positive"
    );
    anyhow::ensure!(replication > 0, "--replication-factor must be positive");
    let specs: Vec<TopicSpec> = specs
        .into_iter()
        .map(|s| TopicSpec { replication, ..s })
        .collect();
    kafka::ensure_topics(settings, &specs).await?;
    for s in &specs {
        println!("topic {} ({} partitions)", s.name, s.partitions);
    }
    Ok(())
}

async fn migrate(database_url: String) -> anyhow::Result<()> {
    let settings = DatabaseSettings {
        url: database_url.into(),
        max_connections: 1,
        schema: None,
    };
    let pool = paystream_core::db::connect(&settings).await?;
    paystream_core::db::migrate(&pool).await?;
    println!("migrations applied");
    Ok(())
}
