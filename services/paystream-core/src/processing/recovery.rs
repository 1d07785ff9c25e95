//! Putting the consumer back where the committed offsets say: after an aborted batch, after a
//! batch cut short by its deadline, and (for a group that starts from the end) before joining.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use super::instruments::LoopContext;
use super::transaction::blocking;
use crate::kafka;
use crate::record::Record;

/// Seeks every assigned partition back to its committed offset, so the records after it (an
/// aborted batch's, or those a cut-short batch left) are consumed again.
pub async fn rewind(
    consumer: &Arc<StreamConsumer<LoopContext>>,
    batch: &[Record],
    timeout: Duration,
) -> Result<(), KafkaError> {
    let first_offsets: BTreeMap<(String, i32), i64> =
        batch.iter().fold(BTreeMap::new(), |mut m, r| {
            m.entry((r.topic.clone(), r.partition)).or_insert(r.offset);
            m
        });
    let consumer = consumer.clone();
    blocking(move || {
        let assignment = consumer.assignment()?;
        let committed = consumer.committed_offsets(assignment, timeout)?;
        // A partition whose committed offset could not be read must not fall back to the
        // batch's start or the log's beginning as if nothing were committed.
        kafka::partition_errors(&committed, "reading the committed offset of")?;
        let mut seek = TopicPartitionList::new();
        for elem in committed.elements() {
            let key = (elem.topic().to_string(), elem.partition());
            let offset = match (elem.offset(), first_offsets.get(&key)) {
                (Offset::Offset(o), _) => Offset::Offset(o),
                // Nothing committed yet: back to where this batch started, else the start.
                (_, Some(o)) => Offset::Offset(*o),
                (_, None) => Offset::Beginning,
            };
            seek.add_partition_offset(&key.0, key.1, offset)?;
        }
        if seek.count() > 0 {
            kafka::seek_exactly(&*consumer, seek, timeout)?;
        }
        Ok(())
    })
    .await
}

/// A group that starts from the end is anchored there: each input partition it has no
/// committed offset for gets the partition's current end committed before the instance
/// joins. Retry partitions are left alone: with nothing committed they are read from the
/// start (they hold only the group's own retries), so none is skipped after a restart.
pub async fn anchor_at_end(
    consumer: &Arc<StreamConsumer<LoopContext>>,
    topics: &[String],
    timeout: Duration,
) -> Result<(), KafkaError> {
    let consumer = consumer.clone();
    let topics = topics.to_vec();
    blocking(move || {
        let mut inputs = TopicPartitionList::new();
        for topic in &topics {
            let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
            for t in metadata.topics().iter().filter(|t| t.name() == topic) {
                for p in t.partitions() {
                    inputs.add_partition(topic, p.id());
                }
            }
        }
        if inputs.count() == 0 {
            return Ok(());
        }
        let committed = consumer.committed_offsets(inputs, timeout)?;
        kafka::partition_errors(&committed, "reading the committed offset of")?;
        let mut anchor = TopicPartitionList::new();
        for elem in committed.elements() {
            if matches!(elem.offset(), Offset::Offset(_)) {
                continue;
            }
            let (_, end) = consumer.fetch_watermarks(elem.topic(), elem.partition(), timeout)?;
            anchor.add_partition_offset(elem.topic(), elem.partition(), Offset::Offset(end))?;
        }
        if anchor.count() > 0 {
            tracing::info!(
                partitions = anchor.count(),
                "new group starting from the end: committing the input partitions' ends"
            );
            // Refused only when members are already active; they anchored the group.
            if let Err(e) = consumer.commit(&anchor, rdkafka::consumer::CommitMode::Sync) {
                tracing::warn!(error = %e, "anchoring the group at the end failed");
            }
        }
        Ok(())
    })
    .await
}
