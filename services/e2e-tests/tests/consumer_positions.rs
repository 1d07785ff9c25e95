//! Seeks whose failure librdkafka reports per partition, inside an `Ok`: the processing loop's
//! hold and rewind go through `kafka::seek_exactly`, which makes such a failure the call's
//! error (the loop then retries the rewind) instead of consuming on from a position that was
//! never moved, after which the next commit would skip the aborted batch's records.
//!
//! Oracle: librdkafka's own answer for the same seek, and the broker.

use std::time::Duration;

use paystream_core::kafka::{self, TopicSpec};
use paystream_e2e_tests::kafka_settings;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

const TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seek_that_fails_for_one_partition_is_an_error() -> anyhow::Result<()> {
    let settings = kafka_settings();
    let topic = format!(
        "test-{}.positions",
        &Uuid::new_v4().simple().to_string()[..12]
    );
    kafka::ensure_topics(&settings, &[TopicSpec::new(&topic, 2)]).await?;
    let group = format!("test-{}", Uuid::new_v4().simple());
    let consumer: BaseConsumer = kafka::client_config(
        &settings,
        &[("group.id", &group), ("enable.auto.commit", "false")],
    )?
    .create()?;

    // Partition 0 is this consumer's; partition 1 is not (as after a revocation).
    let mut assigned = TopicPartitionList::new();
    assigned.add_partition_offset(&topic, 0, Offset::Beginning)?;
    consumer.assign(&assigned)?;
    let mut both = TopicPartitionList::new();
    both.add_partition_offset(&topic, 0, Offset::Offset(0))?;
    both.add_partition_offset(&topic, 1, Offset::Offset(0))?;

    let outcome = tokio::task::spawn_blocking(move || {
        // What librdkafka answers: Ok, with partition 1's failure inside the list.
        let raw = consumer.seek_partitions(both.clone(), TIMEOUT);
        let raw_errors: Vec<String> = raw
            .as_ref()
            .map(|list| {
                list.elements()
                    .iter()
                    .filter_map(|e| {
                        e.error()
                            .err()
                            .map(|err| format!("[{}] {err}", e.partition()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let checked = kafka::seek_exactly(&consumer, both, TIMEOUT);
        let mut only_assigned = TopicPartitionList::new();
        only_assigned
            .add_partition_offset(&topic, 0, Offset::Offset(0))
            .unwrap();
        let assigned_only = kafka::seek_exactly(&consumer, only_assigned, TIMEOUT);
        (raw.is_ok(), raw_errors, checked, assigned_only)
    })
    .await?;
    let (raw_ok, raw_errors, checked, assigned_only) = outcome;
    println!("librdkafka: Ok={raw_ok}, per-partition errors {raw_errors:?}");
    println!("seek_exactly: {checked:?}; assigned partition only: {assigned_only:?}");
    assert!(
        raw_ok && raw_errors.iter().any(|e| e.starts_with("[1]")),
        "librdkafka reports the failure inside an Ok: {raw_errors:?}"
    );
    let error = checked.expect_err("a partition that did not move fails the seek");
    assert!(error.to_string().contains(" [1]: "), "{error}");
    assigned_only?;
    Ok(())
}
