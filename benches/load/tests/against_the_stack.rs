//! The measuring parts that need the real broker and Postgres (`make up`): the end-to-end
//! tracker and the processor stage (its own `payment-processor` processes, measured by the
//! group's committed offsets). They check what is counted, never how fast.

use std::time::Duration;

use clap::Parser;
use paystream_core::kafka::{self, TopicSpec};
use paystream_core::shutdown::Shutdown;
use paystream_load::cli::{Cli, ProcessorArgs, Targets};
use paystream_load::e2e::{E2eTracker, Stage};
use paystream_load::services::Binaries;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::FutureProducer;
use tokio::time::Instant;

fn targets() -> Targets {
    Cli::parse_from(["paystream-load", "probes"]).targets
}

#[tokio::test]
async fn tracker_matches_records_to_requests_by_key() {
    let targets = targets();
    let settings = targets.kafka_settings();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let topic = format!("test-{id}.tracked");
    kafka::ensure_topics(&settings, &[TopicSpec::new(&topic, 3)])
        .await
        .expect("creating the topic (is the stack up? `make up`)");
    // Records already on the topic are before the tracker's start offsets: not counted.
    let producer: FutureProducer = kafka::client_config(&settings, kafka::IDEMPOTENT_PRODUCER)
        .unwrap()
        .create()
        .unwrap();
    let send = |key: String| {
        let producer = producer.clone();
        let topic = topic.clone();
        async move {
            let d = kafka::enqueue(
                &producer,
                &topic,
                Some(key.as_bytes()),
                Some(b"v"),
                OwnedHeaders::new(),
            )
            .await
            .unwrap();
            kafka::delivered(d).await.unwrap();
        }
    };
    send("old".into()).await;

    let stage = Stage {
        name: "t".into(),
        topic: topic.clone(),
    };
    let tracker = E2eTracker::start(&settings, vec![stage], &id, 10)
        .await
        .unwrap();
    let start = Instant::now();
    // Half reported before their record exists, half after it was produced; one duplicate.
    for i in 0..5 {
        tracker.accepted(format!("p{i}"), start, 0);
        send(format!("p{i}")).await;
    }
    for i in 5..10 {
        send(format!("p{i}")).await;
    }
    send("p0".into()).await;
    send("not-ours".into()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 5..10 {
        tracker.accepted(format!("p{i}"), start, 0);
    }
    tracker
        .settle(Duration::from_secs(20), &Shutdown::new())
        .await;
    let result = tracker.finish().await;
    paystream_load::probes::delete_topic(&settings, &topic).await;

    assert_eq!(result.len(), 1);
    let r = &result[0];
    assert_eq!((r.matched, r.missing, r.duplicates), (10, 0, 1), "{r:?}");
    assert_eq!(r.latency.count, 10);
}

#[tokio::test]
async fn processor_stage_processes_every_prefilled_record() {
    let args = ProcessorArgs {
        records: 60,
        instances: vec![1],
        batch_sizes: vec![20],
        batch_wait_ms: 10,
        timeout: Duration::from_secs(90),
        latency_rate: 20.0,
        latency_records: 20,
        latency_configs: vec![(10, 5)],
    };
    let shutdown = Shutdown::new();
    let targets = targets();
    // The services the test suite built (`PAYSTREAM_BIN_DIR`), else this test's own profile.
    let dir = std::env::var_os("PAYSTREAM_BIN_DIR").map(std::path::PathBuf::from);
    let bins = Binaries::locate(dir.as_deref(), "warn", false).unwrap();
    let results = paystream_load::processor::run(&targets, &bins, &args, &shutdown).await;
    assert_eq!(results.len(), 1, "the stage failed (see stderr)");
    let r = &results[0];
    assert!(r.completed, "{r:?}");
    assert_eq!((r.records, r.committed), (60, 60), "{r:?}");

    let latency = paystream_load::processor::latency(&targets, &bins, &args, &shutdown).await;
    assert_eq!(latency.len(), 1, "the latency run failed (see stderr)");
    assert_eq!(
        (latency[0].matched, latency[0].missing),
        (20, 0),
        "{:?}",
        latency[0]
    );
}
