//! `paystream dlq`: list, show and replay a consumer group's dead letters.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use paystream_core::avro::AvroCodec;
use paystream_core::config::{DatabaseSettings, KafkaSettings};
use paystream_core::dlq::{self, DeadLetter, DlqFilter};
use serde_json::json;

#[derive(Subcommand)]
pub enum DlqCommand {
    /// List dead letters (oldest first).
    List {
        #[command(flatten)]
        select: Selection,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show dead letters in full: headers and the value decoded through the registry.
    Show {
        #[command(flatten)]
        source: Source,
        /// Positions as `<partition>/<offset>`.
        #[arg(required = true)]
        positions: Vec<String>,
    },
    /// Send dead letters back to their original topic, in one transaction.
    Replay {
        #[command(flatten)]
        select: Selection,
        /// Replay every dead letter the filters select (required when no position is given).
        #[arg(long)]
        all: bool,
        /// Refuse records already replayed this many times.
        #[arg(long, default_value_t = 3)]
        max_replays: u32,
        /// Print what would be replayed without producing anything.
        #[arg(long)]
        dry_run: bool,
        /// Transactional id of the replay producer.
        #[arg(long, default_value = "paystream-dlq-replay")]
        transactional_id: String,
    },
}

/// Which dead-letter topic.
#[derive(Args)]
pub struct Source {
    /// The consumer group whose `<group>.dlq` to read.
    #[arg(long, default_value = "payment-processor")]
    group: String,
    /// The dead-letter topic itself (overrides `--group`).
    #[arg(long)]
    topic: Option<String>,
}

impl Source {
    fn topic(&self) -> String {
        self.topic
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", self.group))
    }
}

#[derive(Args)]
pub struct Selection {
    #[command(flatten)]
    source: Source,
    /// Only this error class: transient, permanent or poison.
    #[arg(long)]
    error_class: Option<String>,
    /// Only records written at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<DateTime<Utc>>,
    /// Only records written at or before this time (RFC 3339).
    #[arg(long)]
    until: Option<DateTime<Utc>>,
    /// Only records whose failure header names this consumer group.
    #[arg(long)]
    failed_in: Option<String>,
    /// Only these positions, as `<partition>/<offset>`.
    positions: Vec<String>,
}

impl Selection {
    fn filter(&self) -> anyhow::Result<DlqFilter> {
        if let Some(c) = &self.error_class {
            anyhow::ensure!(
                paystream_core::retry::FailureClass::parse(c).is_some(),
                "--error-class must be transient, permanent or poison, not `{c}`"
            );
        }
        Ok(DlqFilter {
            group: self.failed_in.clone(),
            error_class: self.error_class.clone(),
            since_ms: self.since.map(|t| t.timestamp_millis()),
            until_ms: self.until.map(|t| t.timestamp_millis()),
            positions: parse_positions(&self.positions)?,
        })
    }
}

fn parse_positions(raw: &[String]) -> anyhow::Result<Vec<(i32, i64)>> {
    raw.iter()
        .map(|p| {
            let (partition, offset) = p
                .split_once('/')
                .with_context(|| format!("position `{p}` is not <partition>/<offset>"))?;
            Ok((
                partition
                    .parse()
                    .with_context(|| format!("bad partition in `{p}`"))?,
                offset
                    .parse()
                    .with_context(|| format!("bad offset in `{p}`"))?,
            ))
        })
        .collect()
}

const READ_IDLE: Duration = Duration::from_secs(2);

pub async fn run(
    command: DlqCommand,
    settings: &KafkaSettings,
    registry_url: &str,
    database: &DatabaseSettings,
) -> anyhow::Result<()> {
    // Replays are counted in Postgres (`dlq_replays`), so every subcommand shows the durable
    // count and `replay` enforces it.
    let pool = paystream_core::db::connect(database)
        .await
        .context("connecting to the database that records dead-letter replays")?;
    match command {
        DlqCommand::List { select, json } => {
            let letters = dlq::read(
                settings,
                &select.source.topic(),
                &select.filter()?,
                READ_IDLE,
            )
            .await?;
            let topic = select.source.topic();
            let replays = dlq::replay_counts(&pool, &topic, &letters).await?;
            if json {
                for (l, r) in letters.iter().zip(&replays) {
                    println!("{}", summary(l, *r));
                }
            } else {
                print_table(&letters, &replays);
            }
            Ok(())
        }
        DlqCommand::Show { source, positions } => {
            let filter = DlqFilter {
                positions: parse_positions(&positions)?,
                ..Default::default()
            };
            let letters = dlq::read(settings, &source.topic(), &filter, READ_IDLE).await?;
            anyhow::ensure!(
                letters.len() == filter.positions.len(),
                "found {} of the {} positions in {}",
                letters.len(),
                filter.positions.len(),
                source.topic()
            );
            let codec = AvroCodec::new(registry_url);
            let replays = dlq::replay_counts(&pool, &source.topic(), &letters).await?;
            for (l, r) in letters.iter().zip(replays) {
                let value = match codec.decode_json(l.payload.as_deref()).await {
                    Ok(v) => v,
                    Err(e) => json!({
                        "undecodable": e.to_string(),
                        "base64": l.payload.as_deref().map(crate::encode_base64),
                    }),
                };
                let mut out = summary(l, r);
                out["headers"] = l
                    .headers
                    .0
                    .iter()
                    .map(|(k, v)| (k.clone(), json!(v)))
                    .collect::<serde_json::Map<_, _>>()
                    .into();
                out["value"] = value;
                println!("{}", serde_json::to_string_pretty(&out)?);
            }
            Ok(())
        }
        DlqCommand::Replay {
            select,
            all,
            max_replays,
            dry_run,
            transactional_id,
        } => {
            anyhow::ensure!(
                all || !select.positions.is_empty(),
                "name the positions to replay, or pass --all to replay every selected record"
            );
            let filter = select.filter()?;
            let letters = dlq::read(settings, &select.source.topic(), &filter, READ_IDLE).await?;
            if !filter.positions.is_empty() {
                anyhow::ensure!(
                    letters.len() == filter.positions.len(),
                    "found {} of the {} positions in {}",
                    letters.len(),
                    filter.positions.len(),
                    select.source.topic()
                );
            }
            let topic = select.source.topic();
            if dry_run {
                let replays = dlq::replay_counts(&pool, &topic, &letters).await?;
                for (l, r) in letters.iter().zip(replays) {
                    match dlq::refusal(l, r, max_replays) {
                        None => println!(
                            "would replay {} → {}",
                            l.position(),
                            l.original_topic().unwrap_or_default()
                        ),
                        Some(reason) => println!("would refuse {}: {reason}", l.position()),
                    }
                }
                return Ok(());
            }
            let report = dlq::replay(
                settings,
                &pool,
                &topic,
                &letters,
                max_replays,
                &transactional_id,
            )
            .await?;
            for (position, target) in &report.replayed {
                println!("replayed {position} → {target}");
            }
            for (position, reason) in &report.refused {
                println!("refused {position}: {reason}");
            }
            println!(
                "{} replayed, {} refused",
                report.replayed.len(),
                report.refused.len()
            );
            anyhow::ensure!(
                report.refused.is_empty(),
                "{} record(s) refused",
                report.refused.len()
            );
            Ok(())
        }
    }
}

fn summary(l: &DeadLetter, replays: u32) -> serde_json::Value {
    json!({
        "position": format!("{}/{}", l.partition, l.offset),
        "topic": l.topic,
        "timestamp": l.timestamp_ms.and_then(DateTime::<Utc>::from_timestamp_millis).map(|t| t.to_rfc3339()),
        "key": l.key_str(),
        "event_id": l.event_id(),
        "consumer_group": l.consumer_group(),
        "error_class": l.error_class(),
        "error_message": l.error_message(),
        "attempt": l.attempt(),
        "replay_count": replays,
        "original_topic": l.original_topic(),
    })
}

fn print_table(letters: &[DeadLetter], replays: &[u32]) {
    println!(
        "{:<12} {:<25} {:<10} {:>7} {:>7} {:<30} {:<38} ERROR",
        "POSITION", "TIME", "CLASS", "ATTEMPT", "REPLAYS", "ORIGINAL TOPIC", "KEY"
    );
    for (l, replays) in letters.iter().zip(replays) {
        let time = l
            .timestamp_ms
            .and_then(DateTime::<Utc>::from_timestamp_millis)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
            .unwrap_or_default();
        let mut error = l.error_message().unwrap_or_default().replace('\n', " ");
        if error.len() > 80 {
            let mut end = 80;
            while !error.is_char_boundary(end) {
                end -= 1;
            }
            error.truncate(end);
            error.push('…');
        }
        println!(
            "{:<12} {:<25} {:<10} {:>7} {:>7} {:<30} {:<38} {}",
            format!("{}/{}", l.partition, l.offset),
            time,
            l.error_class().unwrap_or("-"),
            l.attempt(),
            replays,
            l.original_topic().unwrap_or("-"),
            l.key_str(),
            error
        );
    }
    println!("{} dead letter(s)", letters.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_or_explain() {
        assert_eq!(
            parse_positions(&["0/12".into(), "2/0".into()]).unwrap(),
            vec![(0, 12), (2, 0)]
        );
        assert!(parse_positions(&["12".into()]).is_err());
        assert!(parse_positions(&["a/1".into()]).is_err());
    }
}
