//! Retention of the tables that grow with traffic: one background [`Pruner`] per service
//! deletes, in bounded batches, the rows of the tables the service owns once they are older
//! than their table's retention ([`Rule`]), and the start-up check that a deduplication ledger
//! outlives every way its events can come back ([`guard_replays`]).
//!
//! Which rows may go is each table's owner's decision, written as its rule: published outbox
//! rows (the gateway), a group's `processed_events` (every consumer service, here), settled
//! notification deliveries (the notifier), payment facts of sealed analytics windows
//! (analytics). docs/operations.md ("Retention") explains each retention and its margin.
//!
//! The margin: a `processed_events` row is what makes a redelivered event a no-op. An event can
//! come back as long as a record carrying it is retained on a topic the group reads: its input
//! topic (a redelivery, or an offset reset to earliest), a retry topic, or the group's
//! dead-letter topic (an operator replays a dead letter at any time while it is retained). So
//! the row must be kept longer than the longest `retention.ms` among those topics, plus
//! `retention.replay_margin_days` for the time between the row and the record (a record is
//! written before it is processed; a retry chain takes its delays). A consumer service refuses
//! to start otherwise, naming the setting and the topic.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use serde::Deserialize;
use sqlx::PgPool;

use crate::config::KafkaSettings;
use crate::shutdown::Shutdown;

/// Counter: rows deleted by the pruners, by `table`.
pub const ROWS_PRUNED_TOTAL: &str = "paystream_retention_rows_pruned_total";

const DAY: Duration = Duration::from_secs(86_400);
/// Bound on each broker request of the start-up check: as long as the processing loop gives
/// `init_transactions`, so the check is no stricter about a broker that is still starting.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);
/// A century: longer is "forever", which is 0.
const MAX_DAYS: u64 = 36_500;

fn in_days(days: u64) -> Duration {
    Duration::from_secs(days.min(MAX_DAYS) * DAY.as_secs())
}

/// `[retention]`: how long each growing table keeps a row, and how the pruner works. A
/// retention of 0 days keeps the table's rows forever (its pruning is off).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RetentionSettings {
    /// Seconds between two pruning passes (each pass deletes until nothing old is left).
    pub interval_secs: u64,
    /// Rows per `DELETE`: bounds each statement's locks and WAL burst.
    pub batch_size: i64,
    /// A consumer group's `processed_events` rows (its idempotent-consumer ledger).
    pub processed_events_days: u64,
    /// What a deduplication ledger (`processed_events`, the notifier's deliveries) must keep
    /// beyond the longest retention of the topics its group reads.
    pub replay_margin_days: u64,
    /// Published outbox rows, counted from their publication. Unpublished and parked rows are
    /// never pruned.
    pub outbox_days: u64,
    /// Settled notification deliveries (delivered or failed), counted from when they settled.
    /// A claim in flight (`sending`) is never pruned.
    pub notification_deliveries_days: u64,
    /// Analytics payment facts, by the UTC day of their `requested_at`. Windows of days older
    /// than this are sealed: a late event for them is not counted.
    pub analytics_payments_days: u64,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            interval_secs: 300,
            batch_size: 1_000,
            processed_events_days: 14,
            replay_margin_days: 1,
            outbox_days: 7,
            notification_deliveries_days: 30,
            analytics_payments_days: 35,
        }
    }
}

impl RetentionSettings {
    /// `days` as a retention: `None` (kept forever) for 0.
    pub fn keep(days: u64) -> Option<Duration> {
        (days > 0).then(|| in_days(days))
    }

    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.interval_secs > 0 && self.batch_size > 0,
            "retention.interval_secs and retention.batch_size must be positive"
        );
        let days = [
            self.processed_events_days,
            self.replay_margin_days,
            self.outbox_days,
            self.notification_deliveries_days,
            self.analytics_payments_days,
        ];
        anyhow::ensure!(
            days.iter().all(|d| *d <= MAX_DAYS),
            "retention.*_days must be at most {MAX_DAYS} (0 keeps rows forever)"
        );
        Ok(())
    }
}

/// Which rows of one table a pruner deletes.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The table, also the `table` label of [`ROWS_PRUNED_TOTAL`].
    pub table: &'static str,
    /// The setting the retention comes from, named in logs and errors.
    pub setting: &'static str,
    /// How long a row is kept; `None`: forever (the rule prunes nothing).
    pub keep: Option<Duration>,
    /// SQL condition of a prunable row: `$1` is the cutoff (now − `keep`), `$3` the
    /// [`Rule::scope`] when there is one. Rows that must never go are excluded here.
    pub condition: &'static str,
    /// Bound to `$3`: the one part of a shared table this service owns (a consumer group).
    pub scope: Option<String>,
    /// A deduplication ledger: its retention must outlive the group's topics
    /// ([`guard_replays`]).
    pub dedupe: bool,
}

impl Rule {
    /// `group`'s rows of the idempotent-consumer ledger ([`crate::processing`]).
    pub fn processed_events(settings: &RetentionSettings, group: &str) -> Self {
        Self {
            table: "processed_events",
            setting: "retention.processed_events_days",
            keep: RetentionSettings::keep(settings.processed_events_days),
            condition: "consumer_group = $3 AND processed_at < $1",
            scope: Some(group.to_string()),
            dedupe: true,
        }
    }

    fn statement(&self) -> String {
        // By ctid: one index scan for the batch, then a TID scan; SKIP LOCKED leaves rows
        // another transaction holds (a replica's pruner, a concurrent update) for later. A row
        // updated since the scan has a new ctid and is simply not deleted this time.
        format!(
            "DELETE FROM {table} WHERE ctid = ANY(ARRAY(
                 SELECT ctid FROM {table} WHERE {condition} LIMIT $2 FOR UPDATE SKIP LOCKED))",
            table = self.table,
            condition = self.condition,
        )
    }
}

/// The background task deleting what its [`Rule`]s allow, every `interval`, in batches.
pub struct Pruner {
    pool: PgPool,
    rules: Vec<Rule>,
    interval: Duration,
    batch_size: i64,
}

impl Pruner {
    pub fn new(
        pool: PgPool,
        settings: &RetentionSettings,
        rules: Vec<Rule>,
    ) -> anyhow::Result<Self> {
        settings.check()?;
        metrics::describe_counter!(ROWS_PRUNED_TOTAL, "Rows deleted by retention, by table");
        Ok(Self {
            pool,
            rules,
            interval: Duration::from_secs(settings.interval_secs),
            batch_size: settings.batch_size,
        })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Prunes at once, then every interval, until `shutdown` (a statement in flight is
    /// abandoned: its transaction rolls back, nothing half-done remains).
    pub async fn run(self, shutdown: Shutdown) {
        if self.rules.iter().all(|r| r.keep.is_none()) {
            return;
        }
        loop {
            for rule in &self.rules {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    pruned = self.prune(rule) => match pruned {
                        Ok(0) => {}
                        Ok(rows) => tracing::info!(table = rule.table, rows,
                            "rows past their retention pruned"),
                        Err(e) => tracing::warn!(table = rule.table, error = %format!("{e:#}"),
                            "pruning failed; trying again next interval"),
                    },
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    /// Deletes `rule`'s rows older than its retention, batch by batch, until a batch comes
    /// back short; returns how many went (none when the rule keeps rows forever).
    async fn prune(&self, rule: &Rule) -> anyhow::Result<u64> {
        let Some(keep) = rule.keep else {
            return Ok(0);
        };
        let cutoff = Utc::now() - chrono::Duration::from_std(keep)?;
        let statement = rule.statement();
        let mut total = 0;
        loop {
            let mut query = sqlx::query(&statement).bind(cutoff).bind(self.batch_size);
            if let Some(scope) = &rule.scope {
                query = query.bind(scope);
            }
            let deleted = query
                .execute(&self.pool)
                .await
                .with_context(|| format!("pruning {}", rule.table))?
                .rows_affected();
            metrics::counter!(ROWS_PRUNED_TOTAL, "table" => rule.table).increment(deleted);
            total += deleted;
            if deleted < self.batch_size as u64 {
                return Ok(total);
            }
        }
    }
}

/// How long a topic keeps a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicRetention {
    Finite(Duration),
    /// `retention.ms=-1`, or compaction without deletion: a record may stay forever.
    Forever,
}

/// A ledger whose retention is not longer than a topic's retention plus the margin.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{setting} ({}) must be longer than the retention of topic `{topic}` ({}) plus \
     retention.replay_margin_days ({}): while the topic holds a record, its event can be \
     redelivered, replayed from the dead-letter topic or re-read after an offset reset, and \
     {table} must still know it was processed{}",
    days(*.kept), .topic_keeps.describe(), days(*.margin), .topic_keeps.hint()
)]
pub struct ReplayMarginError {
    pub setting: &'static str,
    pub table: &'static str,
    pub topic: String,
    kept: Duration,
    topic_keeps: TopicRetention,
    margin: Duration,
}

impl TopicRetention {
    fn describe(&self) -> String {
        match self {
            TopicRetention::Finite(t) => days(*t),
            TopicRetention::Forever => "forever".to_string(),
        }
    }

    fn hint(&self) -> &'static str {
        match self {
            TopicRetention::Finite(_) => "",
            TopicRetention::Forever => {
                "; the topic keeps records forever (retention.ms=-1 or compacted): set the \
                 retention to 0 to never prune, or give the topic a finite retention.ms"
            }
        }
    }
}

fn days(d: Duration) -> String {
    let days = d.as_secs_f64() / 86_400.0;
    if days == 1.0 {
        "1 day".to_string()
    } else if days.fract() == 0.0 {
        format!("{days} days")
    } else {
        format!("{days:.3} days")
    }
}

/// The pure check behind [`guard_replays`]: every deduplication rule that prunes must keep
/// its rows longer than each topic's retention plus `margin`; a topic keeping records forever
/// allows no pruning at all.
pub fn check_replay_margin(
    rules: &[Rule],
    margin: Duration,
    topics: &[(String, TopicRetention)],
) -> Result<(), ReplayMarginError> {
    for rule in rules.iter().filter(|r| r.dedupe) {
        let Some(kept) = rule.keep else { continue };
        for (topic, retention) in topics {
            let too_short = match retention {
                TopicRetention::Finite(t) => kept <= *t + margin,
                TopicRetention::Forever => true,
            };
            if too_short {
                return Err(ReplayMarginError {
                    setting: rule.setting,
                    table: rule.table,
                    topic: topic.clone(),
                    kept,
                    topic_keeps: *retention,
                    margin,
                });
            }
        }
    }
    Ok(())
}

/// Refuses start-up ([`check_replay_margin`]) when a deduplication ledger among `rules` would be
/// pruned while one of `topics` (the group's inputs, retry chain and dead-letter topic) can
/// still hand its events back. Retentions are read from the broker; a topic that does not
/// exist yet gets what it will be created with (`kafka.provisioning.configs`, else the
/// broker's default).
pub async fn guard_replays(
    kafka: &KafkaSettings,
    settings: &RetentionSettings,
    topics: &[String],
    rules: &[Rule],
) -> anyhow::Result<()> {
    if !rules.iter().any(|r| r.dedupe && r.keep.is_some()) {
        return Ok(());
    }
    let retentions = topic_retentions(kafka, topics).await?;
    check_replay_margin(rules, in_days(settings.replay_margin_days), &retentions)?;
    Ok(())
}

/// Each topic's retention as the broker reports it.
async fn topic_retentions(
    kafka: &KafkaSettings,
    topics: &[String],
) -> anyhow::Result<Vec<(String, TopicRetention)>> {
    let admin: Arc<AdminClient<DefaultClientContext>> = Arc::new(
        crate::kafka::client_config(kafka, &[])?
            .create()
            .context("creating the Kafka admin client")?,
    );
    let options = AdminOptions::new().request_timeout(Some(KAFKA_TIMEOUT));
    let specifiers: Vec<ResourceSpecifier> = topics
        .iter()
        .map(|t| ResourceSpecifier::Topic(t.as_str()))
        .collect();
    let described = admin
        .describe_configs(specifiers.iter(), &options)
        .await
        .context("reading the topics' retention.ms")?;
    let mut retentions = Vec::with_capacity(topics.len());
    let mut broker_default = None;
    for (topic, result) in topics.iter().zip(described) {
        let retention = match result {
            // Kafka describes a topic that does not exist as one without configs.
            Ok(resource) if !resource.entries.is_empty() => {
                let value = |name: &str| resource.get(name).and_then(|e| e.value.clone());
                topic_retention(value("retention.ms"), value("cleanup.policy"))
                    .with_context(|| format!("topic `{topic}`"))?
            }
            Ok(_) | Err(RDKafkaErrorCode::UnknownTopicOrPartition) => {
                match kafka.provisioning.configs.get("retention.ms") {
                    Some(ms) => topic_retention(Some(ms.clone()), None)
                        .context("kafka.provisioning.configs")?,
                    None => match broker_default {
                        Some(retention) => retention,
                        None => *broker_default.insert(default_retention(&admin).await?),
                    },
                }
            }
            Err(code) => anyhow::bail!("reading the configuration of topic `{topic}`: {code}"),
        };
        retentions.push((topic.clone(), retention));
    }
    Ok(retentions)
}

/// A topic's retention from its `retention.ms` and `cleanup.policy`.
fn topic_retention(
    retention_ms: Option<String>,
    cleanup_policy: Option<String>,
) -> anyhow::Result<TopicRetention> {
    let compacted_only =
        cleanup_policy.is_some_and(|p| p.contains("compact") && !p.contains("delete"));
    let ms: i64 = retention_ms
        .context("no retention.ms")?
        .parse()
        .context("retention.ms is not a number")?;
    Ok(match u64::try_from(ms) {
        Ok(ms) if !compacted_only => TopicRetention::Finite(Duration::from_millis(ms)),
        _ => TopicRetention::Forever,
    })
}

/// The retention a topic created without `retention.ms` gets: the broker's `log.retention.ms`,
/// else `.minutes`, else `.hours` (Kafka's own precedence).
async fn default_retention(
    admin: &Arc<AdminClient<DefaultClientContext>>,
) -> anyhow::Result<TopicRetention> {
    // Metadata is fetched off the reactor: it blocks.
    let client = admin.clone();
    let broker = tokio::task::spawn_blocking(move || {
        client
            .inner()
            .fetch_metadata(None, KAFKA_TIMEOUT)
            .map(|m| m.brokers().first().map(|b| b.id()))
    })
    .await?
    .context("reading the cluster metadata")?
    .context("the cluster metadata lists no broker")?;
    let options = AdminOptions::new().request_timeout(Some(KAFKA_TIMEOUT));
    let resource = admin
        .describe_configs(&[ResourceSpecifier::Broker(broker)], &options)
        .await
        .context("reading the broker's log.retention")?
        .pop()
        .context("no answer for the broker's configuration")?
        .map_err(|code| anyhow::anyhow!("reading the broker's configuration: {code}"))?;
    let value = |name: &str| -> anyhow::Result<Option<i64>> {
        resource
            .get(name)
            .and_then(|e| e.value.as_deref())
            .map(|v| v.parse().with_context(|| format!("broker {name} `{v}`")))
            .transpose()
    };
    let ms = match (
        value("log.retention.ms")?,
        value("log.retention.minutes")?,
        value("log.retention.hours")?,
    ) {
        (Some(ms), _, _) => ms,
        (None, Some(minutes), _) => minutes.saturating_mul(60_000),
        (None, None, Some(hours)) => hours.saturating_mul(3_600_000),
        (None, None, None) => anyhow::bail!("the broker reports no log.retention"),
    };
    topic_retention(Some(ms.to_string()), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(days: u64) -> Rule {
        Rule::processed_events(
            &RetentionSettings {
                processed_events_days: days,
                ..Default::default()
            },
            "g",
        )
    }

    fn finite(days: u32) -> TopicRetention {
        TopicRetention::Finite(DAY * days)
    }

    #[test]
    fn a_ledger_must_outlive_every_topic_plus_the_margin() {
        let topics = vec![
            ("payments.requested.v1".to_string(), finite(7)),
            ("g.dlq".to_string(), finite(10)),
        ];
        // The dead-letter topic keeps longest: 10 days + 1 day of margin.
        let e = check_replay_margin(&[ledger(11)], DAY, &topics).unwrap_err();
        assert_eq!(e.topic, "g.dlq");
        assert_eq!(e.setting, "retention.processed_events_days");
        let message = e.to_string();
        assert!(
            message.contains("retention.processed_events_days (11 days)")
                && message.contains("topic `g.dlq` (10 days)")
                && message.contains("retention.replay_margin_days (1 day)"),
            "{message}"
        );
        assert_eq!(check_replay_margin(&[ledger(12)], DAY, &topics), Ok(()));
        assert!(check_replay_margin(&[ledger(11)], Duration::ZERO, &topics).is_ok());
    }

    #[test]
    fn a_topic_keeping_records_forever_allows_no_pruning() {
        let topics = vec![("g.dlq".to_string(), TopicRetention::Forever)];
        let e = check_replay_margin(&[ledger(10_000)], DAY, &topics).unwrap_err();
        assert!(e.to_string().contains("set the retention to 0"), "{e}");
        // 0: the ledger is never pruned, nothing to protect.
        assert_eq!(check_replay_margin(&[ledger(0)], DAY, &topics), Ok(()));
    }

    #[test]
    fn tables_that_are_no_ledger_are_not_held_to_the_topics() {
        let facts = Rule {
            dedupe: false,
            ..ledger(1)
        };
        assert!(check_replay_margin(&[facts], DAY, &[("t".into(), finite(30))]).is_ok());
    }

    #[test]
    fn topic_configs_become_retentions() {
        let r =
            |ms: &str, policy: &str| topic_retention(Some(ms.into()), Some(policy.into())).unwrap();
        assert_eq!(r("604800000", "delete"), finite(7));
        assert_eq!(r("-1", "delete"), TopicRetention::Forever);
        assert_eq!(r("604800000", "compact"), TopicRetention::Forever);
        assert_eq!(r("86400000", "compact,delete"), finite(1));
        assert!(topic_retention(None, None).is_err());
    }

    #[test]
    fn defaults_satisfy_the_broker_default_of_seven_days() {
        let settings = RetentionSettings::default();
        settings.check().unwrap();
        let topics = vec![("t".to_string(), finite(7))];
        let margin = in_days(settings.replay_margin_days);
        assert!(
            check_replay_margin(&[ledger(settings.processed_events_days)], margin, &topics).is_ok()
        );
        assert_eq!(RetentionSettings::keep(0), None);
        assert_eq!(RetentionSettings::keep(2), Some(DAY * 2));
    }

    #[test]
    fn statements_delete_bounded_batches() {
        let sql = ledger(14).statement();
        assert!(
            sql.contains("DELETE FROM processed_events WHERE ctid = ANY"),
            "{sql}"
        );
        assert!(
            sql.contains("consumer_group = $3 AND processed_at < $1 LIMIT $2"),
            "{sql}"
        );
    }
}
