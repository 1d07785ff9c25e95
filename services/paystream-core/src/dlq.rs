//! Dead letters, for operators: read a group's dead-letter topic, filter it, and replay chosen
//! records to the topic they first came from.
//!
//! A replay is one Kafka transaction: all chosen records reach their topics, or none do. The
//! replayed record keeps its key, value, event id and origin headers, loses its failure
//! headers (it starts a fresh retry chain) and carries `paystream.replay.count` one higher, so a
//! record that keeps failing cannot be replayed forever. Consumers dedupe by event id, so
//! replaying a record that was meanwhile applied has no second effect.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;
use uuid::Uuid;

use crate::config::KafkaSettings;
use crate::headers;
use crate::kafka;
use crate::record::{position_event_id, Record};
use crate::retry;

/// One record of a dead-letter topic: the record itself (derefs to [`Record`]) and what the
/// retry chain's headers say about it.
#[derive(Debug, Clone)]
pub struct DeadLetter(pub Record);

impl std::ops::Deref for DeadLetter {
    type Target = Record;

    fn deref(&self) -> &Record {
        &self.0
    }
}

impl std::ops::DerefMut for DeadLetter {
    fn deref_mut(&mut self) -> &mut Record {
        &mut self.0
    }
}

impl DeadLetter {
    /// `topic/partition/offset`, the handle operators pass to `show` and `replay`.
    pub fn position(&self) -> String {
        format!("{}/{}/{}", self.topic, self.partition, self.offset)
    }
    pub fn consumer_group(&self) -> Option<&str> {
        self.headers.get(headers::CONSUMER_GROUP)
    }
    pub fn error_class(&self) -> Option<&str> {
        self.headers.get(headers::ERROR_CLASS)
    }
    pub fn error_message(&self) -> Option<&str> {
        self.headers.get(headers::ERROR_MESSAGE)
    }
    pub fn original_topic(&self) -> Option<&str> {
        self.headers.get(headers::ORIGINAL_TOPIC)
    }
    /// The event this dead letter is: its `event_id` header, else (a dead letter written
    /// before the chain stamped ids) the id its first position gave it, which is the id the
    /// consumer deduplicated it by.
    pub fn event_id(&self) -> Uuid {
        if let Some(id) = self
            .headers
            .get(headers::EVENT_ID)
            .and_then(|v| Uuid::parse_str(v).ok())
        {
            return id;
        }
        let origin = (
            self.original_topic(),
            self.headers.get_i64(headers::ORIGINAL_PARTITION),
            self.headers.get_i64(headers::ORIGINAL_OFFSET),
        );
        match origin {
            (Some(topic), Some(partition), Some(offset)) => {
                position_event_id(topic, partition as i32, offset)
            }
            _ => self.0.event_id(),
        }
    }
    pub fn attempt(&self) -> u32 {
        retry::attempt_of(&self.headers)
    }
    /// Replays recorded on the record itself; [`replay_counts`] has the durable figure.
    pub fn replay_count(&self) -> u32 {
        retry::replay_count(&self.headers)
    }
    pub fn key_str(&self) -> String {
        self.key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default()
    }
}

/// Which dead letters to list or replay; empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct DlqFilter {
    pub group: Option<String>,
    pub error_class: Option<String>,
    /// Record timestamps (epoch ms), inclusive bounds.
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Only these `(partition, offset)` positions.
    pub positions: Vec<(i32, i64)>,
}

impl DlqFilter {
    pub fn matches(&self, d: &DeadLetter) -> bool {
        let ts = d.timestamp_ms.unwrap_or(0);
        self.group
            .as_deref()
            .is_none_or(|g| d.consumer_group() == Some(g))
            && self
                .error_class
                .as_deref()
                .is_none_or(|c| d.error_class() == Some(c))
            && self.since_ms.is_none_or(|s| ts >= s)
            && self.until_ms.is_none_or(|u| ts <= u)
            && (self.positions.is_empty() || self.positions.contains(&(d.partition, d.offset)))
    }
}

/// Reads `topic` from the beginning to its current end (read_committed) and returns the records
/// that match `filter`. Stops early when nothing arrives for `idle`.
pub async fn read(
    settings: &KafkaSettings,
    topic: &str,
    filter: &DlqFilter,
    idle: Duration,
) -> anyhow::Result<Vec<DeadLetter>> {
    let settings = settings.clone();
    let topic = topic.to_string();
    let filter = filter.clone();
    tokio::task::spawn_blocking(move || read_blocking(&settings, &topic, &filter, idle))
        .await
        .context("dead-letter reader panicked")?
}

fn read_blocking(
    settings: &KafkaSettings,
    topic: &str,
    filter: &DlqFilter,
    idle: Duration,
) -> anyhow::Result<Vec<DeadLetter>> {
    let group = format!("paystream-dlq-reader-{}", uuid::Uuid::new_v4());
    let consumer: BaseConsumer = kafka::client_config(
        settings,
        &[
            ("group.id", &group),
            ("enable.auto.commit", "false"),
            ("isolation.level", "read_committed"),
        ],
    )?
    .create()?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("reading metadata of {topic}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    anyhow::ensure!(!partitions.is_empty(), "topic {topic} does not exist");

    // The end of each partition now; records written later are not this listing's business.
    let mut ends = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for p in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, *p, timeout)?;
        if high > low {
            ends.insert(*p, high);
            assignment.add_partition_offset(topic, *p, Offset::Beginning)?;
        }
    }
    consumer.assign(&assignment)?;

    let mut letters = Vec::new();
    let mut last_seen = Instant::now();
    while !ends.is_empty() && last_seen.elapsed() < idle {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = message?;
        last_seen = Instant::now();
        let letter = DeadLetter(Record::from_message(&m));
        if ends
            .get(&letter.partition)
            .is_some_and(|end| letter.offset + 1 >= *end)
        {
            ends.remove(&letter.partition);
        }
        if filter.matches(&letter) {
            letters.push(letter);
        }
    }
    letters.sort_by_key(|l| (l.partition, l.offset));
    Ok(letters)
}

/// What a replay did.
#[derive(Debug, Default)]
pub struct ReplayReport {
    /// Positions replayed, with the topic each went to.
    pub replayed: Vec<(String, String)>,
    /// Positions refused, with the reason.
    pub refused: Vec<(String, String)>,
}

/// Why a dead letter may not be replayed, if it may not, given the replays already recorded
/// for its event.
pub fn refusal(letter: &DeadLetter, replays: u32, max_replays: u32) -> Option<String> {
    if letter.original_topic().is_none() {
        return Some(format!("no {} header", headers::ORIGINAL_TOPIC));
    }
    // Too large to forward whole: replaying the copy would send a different record.
    if let Some(dropped) = letter.headers.get(headers::DROPPED) {
        return Some(format!(
            "the dead letter lacks part of the original ({dropped}); the original is at {}/{}/{} \
             while that topic retains it",
            letter.original_topic().unwrap_or_default(),
            letter
                .headers
                .get(headers::ORIGINAL_PARTITION)
                .unwrap_or_default(),
            letter
                .headers
                .get(headers::ORIGINAL_OFFSET)
                .unwrap_or_default(),
        ));
    }
    if replays >= max_replays {
        return Some(format!(
            "already replayed {replays} times (limit {max_replays})"
        ));
    }
    None
}

/// The replays recorded for each letter's event: the durable count in `dlq_replays`, or the
/// record's own header if that is higher (replays made before the count was kept). One query
/// for the whole listing.
pub async fn replay_counts(
    pool: &PgPool,
    dlq_topic: &str,
    letters: &[DeadLetter],
) -> anyhow::Result<Vec<u32>> {
    let ids: Vec<Uuid> = letters.iter().map(DeadLetter::event_id).collect();
    let rows: Vec<(Uuid, i32)> = sqlx::query_as(
        "SELECT event_id, replays FROM dlq_replays WHERE dlq_topic = $1 AND event_id = ANY($2)",
    )
    .bind(dlq_topic)
    .bind(&ids)
    .fetch_all(pool)
    .await
    .context("reading the recorded replays (dlq_replays)")?;
    let durable: HashMap<Uuid, i32> = rows.into_iter().collect();
    Ok(letters
        .iter()
        .map(|l| replays_of(l, durable.get(&l.event_id()).copied()))
        .collect())
}

/// The higher of the durable count and the record's own header.
fn replays_of(letter: &DeadLetter, durable: Option<i32>) -> u32 {
    letter
        .replay_count()
        .max(durable.map_or(0, |d| d.max(0) as u32))
}

/// Sends `letters` back to their original topics in one Kafka transaction, counting each
/// replay in `dlq_replays` (Postgres) and refusing events replayed `max_replays` times already.
///
/// The counts are written in a database transaction that holds the events' rows locked until
/// the Kafka transaction has committed: two operators replaying the same dead letter are
/// serialised, and a failed replay counts nothing. A crash between the two commits loses one
/// count, never a record; the replayed record carries its event id, so consumers that applied
/// it once ignore it.
pub async fn replay(
    settings: &KafkaSettings,
    pool: &PgPool,
    dlq_topic: &str,
    letters: &[DeadLetter],
    max_replays: u32,
    transactional_id: &str,
) -> anyhow::Result<ReplayReport> {
    let mut report = ReplayReport::default();
    let mut counting = pool.begin().await.context("starting the replay count")?;
    let mut chosen = Vec::new();
    for letter in letters {
        // Creates the event's row or, with a no-op update, locks the existing one, and reads
        // its count, in one statement: concurrent replays of one event queue up here.
        let durable: i32 = sqlx::query_scalar(
            "INSERT INTO dlq_replays (dlq_topic, event_id, replays) VALUES ($1, $2, 0)
             ON CONFLICT (dlq_topic, event_id) DO UPDATE SET replays = dlq_replays.replays
             RETURNING replays",
        )
        .bind(dlq_topic)
        .bind(letter.event_id())
        .fetch_one(&mut *counting)
        .await
        .context("recording the replay (dlq_replays)")?;
        let replays = replays_of(letter, Some(durable));
        if let Some(reason) = refusal(letter, replays, max_replays) {
            report.refused.push((letter.position(), reason));
            continue;
        }
        sqlx::query(
            "UPDATE dlq_replays SET replays = $3, last_replayed_at = now()
             WHERE dlq_topic = $1 AND event_id = $2",
        )
        .bind(dlq_topic)
        .bind(letter.event_id())
        .bind((replays + 1) as i32)
        .execute(&mut *counting)
        .await
        .context("recording the replay (dlq_replays)")?;
        chosen.push((letter, replays + 1));
    }
    if chosen.is_empty() {
        return Ok(report);
    }

    let mut props = kafka::IDEMPOTENT_PRODUCER.to_vec();
    props.push(("transactional.id", transactional_id));
    let producer: FutureProducer = kafka::client_config(settings, &props)?.create()?;
    let timeout = Duration::from_secs(30);
    let p = producer.clone();
    tokio::task::spawn_blocking(move || {
        p.init_transactions(timeout)?;
        p.begin_transaction()
    })
    .await?
    .context("starting the replay transaction")?;

    let mut deliveries = Vec::new();
    for (letter, replays) in &chosen {
        let target = letter.original_topic().unwrap_or_default().to_string();
        let headers = retry::replay_headers(&letter.headers, letter.event_id(), *replays);
        let delivery = kafka::enqueue(
            &producer,
            &target,
            letter.key.as_deref(),
            letter.payload.as_deref(),
            headers.to_kafka(),
        )
        .await?;
        deliveries.push(delivery);
        report.replayed.push((letter.position(), target));
    }
    let mut failed = None;
    for delivery in deliveries {
        if let Err(e) = kafka::delivered(delivery).await {
            failed = Some(e);
        }
    }
    let p = producer.clone();
    match failed {
        None => tokio::task::spawn_blocking(move || p.commit_transaction(timeout))
            .await?
            .context("committing the replay")?,
        Some(e) => {
            tokio::task::spawn_blocking(move || p.abort_transaction(timeout)).await??;
            return Err(anyhow::Error::new(e).context("replay aborted: a record was not delivered"));
        }
    }
    counting
        .commit()
        .await
        .context("the replay committed to Kafka, but its count was not recorded")?;
    for (position, target) in &report.replayed {
        tracing::info!(%position, to = %target, "dead letter replayed");
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::RecordHeaders;

    fn letter(group: &str, class: &str, ts: i64, replays: u32) -> DeadLetter {
        let mut h = RecordHeaders::default();
        h.set(headers::CONSUMER_GROUP, group);
        h.set(headers::ERROR_CLASS, class);
        h.set(headers::ORIGINAL_TOPIC, "in");
        if replays > 0 {
            h.set(headers::REPLAY_COUNT, replays.to_string());
        }
        DeadLetter(Record {
            topic: "g.dlq".into(),
            partition: 0,
            offset: ts,
            timestamp_ms: Some(ts),
            key: None,
            payload: None,
            headers: h,
        })
    }

    #[test]
    fn filters_by_group_class_time_and_position() {
        let d = letter("g", "poison", 100, 0);
        assert!(DlqFilter::default().matches(&d));
        let by = |f: DlqFilter| f.matches(&d);
        assert!(by(DlqFilter {
            group: Some("g".into()),
            ..Default::default()
        }));
        assert!(!by(DlqFilter {
            group: Some("h".into()),
            ..Default::default()
        }));
        assert!(!by(DlqFilter {
            error_class: Some("transient".into()),
            ..Default::default()
        }));
        assert!(by(DlqFilter {
            since_ms: Some(100),
            until_ms: Some(100),
            ..Default::default()
        }));
        assert!(!by(DlqFilter {
            since_ms: Some(101),
            ..Default::default()
        }));
        assert!(by(DlqFilter {
            positions: vec![(0, 100)],
            ..Default::default()
        }));
        assert!(!by(DlqFilter {
            positions: vec![(0, 99)],
            ..Default::default()
        }));
    }

    #[test]
    fn refuses_records_replayed_too_often_or_without_origin() {
        let d = letter("g", "poison", 0, 0);
        assert_eq!(refusal(&d, 2, 3), None);
        assert!(refusal(&d, 3, 3).unwrap().contains("limit 3"));
        let mut orphan = letter("g", "poison", 0, 0);
        orphan.headers.remove(headers::ORIGINAL_TOPIC);
        assert!(refusal(&orphan, 0, 3).is_some());
        let mut trimmed = letter("g", "poison", 0, 0);
        trimmed
            .headers
            .set(headers::DROPPED, "value (1040000 bytes)");
        assert!(refusal(&trimmed, 0, 3)
            .unwrap()
            .contains("value (1040000 bytes)"));
    }

    #[test]
    fn a_dead_letter_without_an_event_id_is_the_event_of_its_first_position() {
        let mut d = letter("g", "poison", 5, 0);
        d.headers.set(headers::ORIGINAL_PARTITION, "2");
        d.headers.set(headers::ORIGINAL_OFFSET, "40");
        assert_eq!(d.event_id(), position_event_id("in", 2, 40));
        // Not the id of its own position in the dead-letter topic.
        assert_ne!(d.event_id(), d.0.event_id());
        let stamped = Uuid::new_v4();
        d.headers.set(headers::EVENT_ID, stamped.to_string());
        assert_eq!(d.event_id(), stamped);
    }
}
