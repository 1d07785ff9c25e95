//! Topics as production needs them: replication, partitions and configs of every topic the
//! services create come from `kafka.provisioning`, and with creation off (one owner creates
//! topics: `paystream topics create`, the chart's job) a service stops naming what is missing.
//!
//! Oracle: Kafka's own `kafka-topics --describe`.

use std::collections::BTreeMap;

use paystream_core::config::TopicProvisioning;
use paystream_core::kafka::{self, TopicSpec};
use paystream_e2e_tests::{kafka_settings, kafka_tool, TestStack};
use uuid::Uuid;

fn unique(name: &str) -> String {
    format!("test-{}.{name}", &Uuid::new_v4().simple().to_string()[..12])
}

/// `kafka-topics --describe` of one topic, as Kafka prints it.
async fn describe(topic: &str) -> anyhow::Result<String> {
    kafka_tool(&["topics", "--describe", "--topic", topic]).await
}

#[tokio::test]
async fn created_topics_take_partitions_replication_and_configs_from_settings() -> anyhow::Result<()>
{
    let mut settings = kafka_settings();
    settings.provisioning = TopicProvisioning {
        create_topics: true,
        partitions: 2,
        replication_factor: 1,
        configs: BTreeMap::from([
            ("retention.ms".to_string(), "3600000".to_string()),
            ("min.insync.replicas".to_string(), "1".to_string()),
        ]),
    };
    let plain = unique("provisioned");
    let compacted = unique("provisioned-compacted");
    kafka::ensure_topics(
        &settings,
        &[
            TopicSpec::new(&plain, -1),
            TopicSpec::new(&compacted, 3).compacted(),
        ],
    )
    .await?;

    let described = describe(&plain).await?;
    let summary = described.lines().next().unwrap_or_default();
    println!("{summary}");
    assert!(summary.contains("PartitionCount: 2"), "{described}");
    assert!(summary.contains("ReplicationFactor: 1"), "{described}");
    assert!(summary.contains("retention.ms=3600000"), "{described}");
    assert!(summary.contains("min.insync.replicas=1"), "{described}");

    let described = describe(&compacted).await?;
    let summary = described.lines().next().unwrap_or_default();
    println!("{summary}");
    // The topic's own partitions and cleanup policy win over the defaults; the operator's
    // configs still apply.
    assert!(summary.contains("PartitionCount: 3"), "{described}");
    assert!(summary.contains("cleanup.policy=compact"), "{described}");
    assert!(summary.contains("retention.ms=3600000"), "{described}");
    Ok(())
}

#[tokio::test]
async fn a_replication_factor_the_cluster_cannot_meet_is_refused_by_the_broker(
) -> anyhow::Result<()> {
    // Not hard-coded to 1 any more: the broker (one node here) sees the configured 3.
    let mut settings = kafka_settings();
    settings.provisioning.replication_factor = 3;
    let topic = unique("three-replicas");
    let error = kafka::ensure_topics(&settings, &[TopicSpec::new(&topic, 1)])
        .await
        .expect_err("one broker cannot hold three replicas");
    let message = format!("{error:#}");
    println!("{message}");
    assert!(
        message.contains(&topic) && message.contains("replication factor"),
        "{message}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_topic_creation_off_services_stop_naming_the_missing_topic() -> anyhow::Result<()> {
    let stack = TestStack::spawn().await?;

    // Analytics would create its compacted stats topic; told not to, it stops instead.
    let mut analytics = stack.analytics_settings();
    analytics.kafka.provisioning.create_topics = false;
    let error = match paystream_analytics::Application::build(analytics).await {
        Ok(_) => anyhow::bail!("analytics started without its stats topic"),
        Err(e) => format!("{e:#}"),
    };
    println!("analytics: {error}");
    assert!(
        error.contains(&format!(
            "topic `{}` does not exist",
            stack.topics.analytics_payment_stats
        )) && error.contains("paystream topics create"),
        "{error}"
    );
    let missing = kafka::require_topics(
        &kafka_settings(),
        std::slice::from_ref(&stack.topics.analytics_payment_stats),
    )
    .await;
    assert!(missing.is_err(), "nothing created the topic");

    // The gateway checks the topic it produces to.
    let mut gateway = paystream_e2e_tests::gateway_settings(&stack.database, &stack.topics);
    gateway.topics.payments_requested = unique("never-created");
    gateway.kafka.provisioning.create_topics = false;
    let error = match paystream_gateway::Application::build(gateway.clone()).await {
        Ok(_) => anyhow::bail!("the gateway started without its topic"),
        Err(e) => format!("{e:#}"),
    };
    println!("gateway: {error}");
    assert!(
        error.contains(&format!(
            "topic `{}` does not exist",
            gateway.topics.payments_requested
        )),
        "{error}"
    );
    stack.teardown().await;
    Ok(())
}
