//! A consumer group loop's settings (`[consumer]`), the consumer properties they make, and the
//! start-up check that a batch fits inside its Kafka transaction and its poll interval.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::kafka;
use crate::retry::RetryPolicy;

/// What the loop allows for producing a batch's outputs and committing its transaction after
/// the batch closed: produce, `send_offsets_to_transaction`, `commit_transaction`.
pub const COMMIT_ALLOWANCE: Duration = Duration::from_secs(5);

/// Settings of one consumer group's loop.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LoopSettings {
    pub group_id: String,
    /// Stable per instance (e.g. the pod name): a restarted instance fences its predecessor's
    /// open transaction instead of leaving it hanging until the transaction timeout.
    pub transactional_id: String,
    pub batch_max_records: usize,
    /// How long a batch waits for more records after its first. 0 (the default): a batch is
    /// the first record plus whatever the consumer already fetched, so a lone record never
    /// waits for company.
    pub batch_max_wait_ms: u64,
    /// Records of different keys handled at once within a batch; one key's records are always
    /// handled one after the other, in offset order.
    pub max_in_flight: usize,
    /// A batch starts no record after this long; what is done by then commits and the rest is
    /// read again. With the handler's longest call and [`COMMIT_ALLOWANCE`] it must fit inside
    /// `transaction_timeout_ms` and `max_poll_interval_ms` ([`LoopSettings::check_fits`]).
    pub batch_deadline_ms: u64,
    /// librdkafka's `fetch.wait.max.ms`: the longest the broker may hold a fetch while no data
    /// arrives. Apache Kafka answers as soon as data does, so this is an upper bound, not a
    /// delay (librdkafka's default is 500 ms).
    pub fetch_wait_max_ms: u64,
    pub transaction_timeout_ms: u64,
    /// librdkafka's `max.poll.interval.ms`: a consumer not polling for longer leaves the group.
    pub max_poll_interval_ms: u64,
    pub session_timeout_ms: u64,
    /// First back-off after an aborted batch; doubles up to `abort_backoff_max_ms`.
    pub abort_backoff_ms: u64,
    pub abort_backoff_max_ms: u64,
    /// Dead-letter topic; defaults to `<group_id>.dlq`.
    pub dlq_topic: Option<String>,
    /// Delay of each retry topic `<group_id>.retry.1 … .retry.N`; N is the list's length
    /// (0: transient failures go straight to the dead-letter topic).
    #[serde(deserialize_with = "crate::config::list_or_csv")]
    pub retry_delays_ms: Vec<u64>,
    /// Partitions of the retry and dead-letter topics the loop creates when they are missing;
    /// -1: `kafka.provisioning.partitions`.
    pub retry_topic_partitions: i32,
    pub dlq_topic_partitions: i32,
    /// After a shutdown signal, how long the batch in flight may take to commit before it is
    /// aborted (its records are then redelivered to the next owner).
    pub drain_timeout_ms: u64,
    /// Game-day hook, 0 in production: keeps each Kafka transaction open this long after its
    /// produce, before its commit, so that fencing and the broker's transaction timeout can be
    /// watched on a transaction that is really open (the transaction otherwise lives only
    /// milliseconds). Counted in [`LoopSettings::check_fits`].
    pub hold_transaction_open_ms: u64,
    /// Where a group with no committed offset starts reading its input topics; a group that
    /// committed goes on from its offsets whatever this says.
    /// Each service sets its own default: a side-effecting group (the notifier) starts from the
    /// end, so enabling it does not act on every retained record.
    pub start_from: StartFrom,
}

/// Where a new consumer group starts: `consumer.start_from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    /// The oldest retained record: nothing on the topic is skipped (a processor must never
    /// skip a payment), and a new group backfills.
    #[default]
    Earliest,
    /// The end of each input partition when the instance starts: only records produced after
    /// that. Done by committing those ends before joining (`ProcessingLoop::run`), not with
    /// `auto.offset.reset=latest`, which would also apply to the group's retry topics and skip
    /// a retry written before a restart or a rebalance.
    Latest,
}

impl Default for LoopSettings {
    fn default() -> Self {
        Self {
            group_id: String::new(),
            transactional_id: String::new(),
            batch_max_records: 500,
            batch_max_wait_ms: 0,
            max_in_flight: 256,
            batch_deadline_ms: 30_000,
            fetch_wait_max_ms: 100,
            transaction_timeout_ms: 60_000,
            max_poll_interval_ms: 300_000,
            session_timeout_ms: 10_000,
            abort_backoff_ms: 200,
            abort_backoff_max_ms: 10_000,
            dlq_topic: None,
            retry_delays_ms: vec![1_000, 10_000, 60_000],
            retry_topic_partitions: -1,
            dlq_topic_partitions: -1,
            drain_timeout_ms: 20_000,
            hold_transaction_open_ms: 0,
            start_from: StartFrom::Earliest,
        }
    }
}

/// The longest one record's outside calls can take (every attempt of every call), and the
/// settings that make it, named for the start-up check's message.
#[derive(Debug, Clone)]
pub struct CallBudget {
    /// E.g. `psp.timeout_ms (5000) × psp.attempts (3)`.
    pub what: String,
    pub duration: Duration,
}

impl LoopSettings {
    pub fn dlq_topic(&self) -> String {
        self.dlq_topic
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", self.group_id))
    }

    /// The group's retry chain and dead-letter topic.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::new(
            self.group_id.clone(),
            self.retry_delays_ms
                .iter()
                .map(|ms| Duration::from_millis(*ms))
                .collect(),
            self.dlq_topic(),
        )
    }

    /// Refuses settings under which a batch could outlive its transaction or its consumer's
    /// poll interval: the deadline stops new records, but the records in flight run to the end
    /// of their calls, and the commit comes after them. Names every setting involved.
    pub fn check_fits(&self, budget: Option<&CallBudget>) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.batch_max_records > 0,
            "consumer.batch_max_records must be at least 1"
        );
        anyhow::ensure!(
            self.max_in_flight > 0,
            "consumer.max_in_flight must be at least 1"
        );
        let calls = budget.map_or(Duration::ZERO, |b| b.duration);
        let commit = COMMIT_ALLOWANCE + Duration::from_millis(self.hold_transaction_open_ms);
        let needed = Duration::from_millis(self.batch_deadline_ms) + calls + commit;
        for (name, limit_ms) in [
            (
                "consumer.transaction_timeout_ms",
                self.transaction_timeout_ms,
            ),
            ("consumer.max_poll_interval_ms", self.max_poll_interval_ms),
        ] {
            if needed >= Duration::from_millis(limit_ms) {
                anyhow::bail!(
                    "a batch may take longer than {name} ({limit_ms} ms): consumer.batch_deadline_ms ({}) \
                     + the longest record's calls ({}: {} ms) + {} ms to produce and commit \
                     (consumer.hold_transaction_open_ms included) = {} ms; \
                     lower the deadline or the call timeouts, or raise {name}",
                    self.batch_deadline_ms,
                    budget.map_or("none declared", |b| b.what.as_str()),
                    calls.as_millis(),
                    commit.as_millis(),
                    needed.as_millis(),
                );
            }
        }
        Ok(())
    }

    /// The loop consumer's librdkafka properties: [`kafka::TRANSACTIONAL_CONSUMER`] plus the
    /// group's own, all managed (`kafka.properties` cannot override them).
    pub fn consumer_properties(&self) -> Vec<(&'static str, String)> {
        let mut props: Vec<(&'static str, String)> = kafka::TRANSACTIONAL_CONSUMER
            .iter()
            .map(|(k, v)| (*k, (*v).to_string()))
            .collect();
        props.extend([
            ("group.id", self.group_id.clone()),
            ("session.timeout.ms", self.session_timeout_ms.to_string()),
            (
                "max.poll.interval.ms",
                self.max_poll_interval_ms.to_string(),
            ),
            ("fetch.wait.max.ms", self.fetch_wait_max_ms.to_string()),
            // Per-partition consumer lag for the metrics, from librdkafka's own bookkeeping.
            ("statistics.interval.ms", "5000".to_string()),
        ]);
        props
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KafkaSettings;

    #[test]
    fn the_consumer_resets_to_earliest_whatever_start_from_says_and_properties_cannot_change_it() {
        // `start_from = latest` is done by committing the input partitions' ends before joining:
        // the consumer's reset stays `earliest`, so a retry partition is never skipped.
        for start_from in [StartFrom::Earliest, StartFrom::Latest] {
            let settings = LoopSettings {
                group_id: "g".into(),
                start_from,
                ..LoopSettings::default()
            };
            let props = settings.consumer_properties();
            let resets: Vec<&str> = props
                .iter()
                .filter(|(k, _)| *k == "auto.offset.reset")
                .map(|(_, v)| v.as_str())
                .collect();
            assert_eq!(resets, vec!["earliest"]);
            let refs: Vec<(&str, &str)> = props.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let mut kafka_settings = KafkaSettings::default();
            kafka_settings
                .properties
                .insert("auto.offset.reset".into(), "latest".into());
            let refused = kafka::client_config(&kafka_settings, &refs).unwrap_err();
            assert!(
                refused.to_string().contains("auto.offset.reset"),
                "{refused}"
            );
        }
    }

    #[test]
    fn start_from_is_read_and_a_typo_is_an_error_naming_it() {
        #[derive(Deserialize)]
        struct Wrapper {
            consumer: LoopSettings,
        }
        let read = |toml: &str| crate::config::load::<Wrapper>(toml).map(|w| w.consumer);
        assert_eq!(
            read("[consumer]\n").unwrap().start_from,
            StartFrom::Earliest
        );
        let latest = read("[consumer]\nstart_from = \"latest\"\n").unwrap();
        assert_eq!(latest.start_from, StartFrom::Latest);
        let typo = read("[consumer]\nstart_from = \"lastest\"\n").unwrap_err();
        let message = format!("{typo:#}");
        assert!(
            message.contains("start_from") && message.contains("lastest"),
            "{message}"
        );
    }

    fn psp(ms: u64) -> CallBudget {
        CallBudget {
            what: "psp.timeout_ms (5000) × psp.attempts (3)".into(),
            duration: Duration::from_millis(ms),
        }
    }

    #[test]
    fn the_defaults_fit_a_psp_budget_of_fifteen_seconds() {
        LoopSettings::default()
            .check_fits(Some(&psp(15_000)))
            .unwrap();
        LoopSettings::default().check_fits(None).unwrap();
    }

    #[test]
    fn a_batch_that_cannot_fit_its_transaction_is_refused_naming_the_settings() {
        let settings = LoopSettings {
            batch_deadline_ms: 50_000,
            ..LoopSettings::default()
        };
        let message = settings
            .check_fits(Some(&psp(15_000)))
            .unwrap_err()
            .to_string();
        for name in [
            "consumer.transaction_timeout_ms",
            "consumer.batch_deadline_ms",
            "psp.timeout_ms",
            "psp.attempts",
        ] {
            assert!(message.contains(name), "{name} missing from: {message}");
        }
        let poll = LoopSettings {
            max_poll_interval_ms: 20_000,
            ..LoopSettings::default()
        };
        let message = poll.check_fits(None).unwrap_err().to_string();
        assert!(
            message.contains("consumer.max_poll_interval_ms"),
            "{message}"
        );
        let none = LoopSettings {
            max_in_flight: 0,
            ..LoopSettings::default()
        };
        assert!(none
            .check_fits(None)
            .unwrap_err()
            .to_string()
            .contains("max_in_flight"));
    }
}
