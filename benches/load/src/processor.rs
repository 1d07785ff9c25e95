//! The payment-processor stage on its own: how many records per second the transactional
//! loop (exactly-once: Kafka transactions + the idempotent-consumer ledger) gets through.
//!
//! Each configuration gets scratch topics, a scratch Postgres schema (migrated), an
//! in-process PSP simulator at zero latency, and `records` payments pre-filled (rows
//! `PENDING` in Postgres, `PaymentRequested` events on the topic, as the gateway and its relay
//! would leave them). Then an in-process payment processor with the configuration's batch
//! size and batch wait starts on a fresh group, and its counters are sampled until every
//! record is processed. The rate is taken from the first processed record to the last, so the
//! group join is reported separately. Everything scratch is deleted afterwards.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use paystream_core::avro::AvroCodec;
use paystream_core::config::{DatabaseSettings, KafkaSettings};
use paystream_core::events::{self, PaymentRequested, Step, PAYMENT_REQUESTED_SCHEMA};
use paystream_core::kafka::{self, TopicSpec};
use paystream_core::processing::{LoopStats, Output};
use paystream_core::shutdown::Shutdown;
use rdkafka::producer::FutureProducer;
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use tokio::time::Instant;
use uuid::Uuid;

use crate::cli::{ProcessorArgs, Targets};
use crate::machine::{load_average, CpuTimes, ProcessCpu};
use crate::probes::delete_topic;

/// What one configuration measured.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessorResult {
    /// Processor instances in the group (each its own loop, transactional id and pool).
    pub instances: usize,
    pub batch_max_records: usize,
    pub batch_max_wait_ms: u64,
    pub records: usize,
    /// Records processed per second, first processed record to last.
    pub records_per_s: f64,
    /// From start-up to the first processed record (group join, first fetch).
    pub startup_s: f64,
    pub processing_s: f64,
    pub completed: bool,
    pub batches_committed: u64,
    pub batches_aborted: u64,
    pub mean_batch: f64,
    pub applied: u64,
    pub replayed: u64,
    pub dead_lettered: u64,
    pub load_avg_before: [f64; 3],
    pub load_avg_after: [f64; 3],
    /// Cores each process kept busy while the processors ran.
    pub cpu: Vec<ProcessCpu>,
}

/// Every configuration of `args`, one after the other.
pub async fn run(
    targets: &Targets,
    args: &ProcessorArgs,
    shutdown: &Shutdown,
) -> Vec<ProcessorResult> {
    let mut results = Vec::new();
    let configs = args
        .instances
        .iter()
        .flat_map(|i| args.batch_sizes.iter().map(move |b| (*i, *b)));
    for (instances, batch) in configs {
        if shutdown.is_cancelled() {
            break;
        }
        eprintln!(
            "processor stage: {} records, {instances} instance(s), batch_max_records={batch}, \
             batch_max_wait_ms={}",
            args.records, args.batch_wait_ms
        );
        match one(targets, args, instances, batch, shutdown).await {
            Ok(r) => {
                eprintln!(
                    "  {:.0} records/s ({} committed batches, start-up {:.1} s)",
                    r.records_per_s, r.batches_committed, r.startup_s
                );
                results.push(r)
            }
            Err(e) => eprintln!("processor stage ({instances} × batch {batch}) failed: {e:#}"),
        }
    }
    results
}

/// Scratch names of one configuration.
struct Scratch {
    requested: String,
    outcomes: String,
    group: String,
    schema: String,
}

impl Scratch {
    fn new() -> Self {
        let id = Uuid::new_v4().simple().to_string()[..12].to_string();
        Self {
            requested: format!("paystream-bench-{id}.payments.requested.v1"),
            outcomes: format!("paystream-bench-{id}.payments.outcomes.v1"),
            group: format!("paystream-bench-{id}.payment-processor"),
            schema: format!("paystream_bench_{id}"),
        }
    }

    fn topics(&self) -> Vec<TopicSpec> {
        vec![
            TopicSpec::new(&self.requested, 6),
            TopicSpec::new(&self.outcomes, 6),
            TopicSpec::new(format!("{}.dlq", self.group), 1),
        ]
    }
}

async fn one(
    targets: &Targets,
    args: &ProcessorArgs,
    instances: usize,
    batch: usize,
    shutdown: &Shutdown,
) -> anyhow::Result<ProcessorResult> {
    let scratch = Scratch::new();
    let kafka_settings = KafkaSettings {
        bootstrap_servers: targets.bootstrap_servers.clone(),
        ..Default::default()
    };
    let database = DatabaseSettings {
        url: targets.database_url.clone().into(),
        max_connections: 10,
        schema: Some(scratch.schema.clone()),
    };
    let stop = shutdown.child_token();
    let result = async {
        kafka::ensure_topics(&kafka_settings, &scratch.topics()).await?;
        let pool = paystream_core::db::connect(&database).await?;
        paystream_core::db::migrate(&pool).await?;
        prefill(targets, &kafka_settings, &pool, &scratch, args.records).await?;
        let psp_url = spawn_psp(&stop).await?;
        measure(targets, args, instances, batch, &scratch, &psp_url, &stop).await
    }
    .await;
    stop.cancel();
    cleanup(&kafka_settings, &database, &scratch).await;
    result
}

/// Payments as the gateway leaves them: `PENDING` rows, and their events on the topic.
async fn prefill(
    targets: &Targets,
    kafka_settings: &KafkaSettings,
    pool: &PgPool,
    scratch: &Scratch,
    records: usize,
) -> anyhow::Result<()> {
    let now = chrono::Utc::now().timestamp_millis();
    let events: Vec<PaymentRequested> = (0..records)
        .map(|i| {
            let id = Uuid::now_v7();
            PaymentRequested {
                event_id: events::event_id(id, Step::Requested).to_string(),
                payment_id: id.to_string(),
                client_id: "anonymous".into(),
                merchant_id: format!("m_{}", i % 50),
                customer_id: format!("c_{i}"),
                amount_minor: 100 + (i as i64 % 100_000),
                currency: "EUR".into(),
                payment_method: "card".into(),
                requested_at: now,
            }
        })
        .collect();
    for chunk in events.chunks(2_000) {
        let column = |f: fn(&PaymentRequested) -> String| chunk.iter().map(f).collect::<Vec<_>>();
        let ids: Vec<Uuid> = chunk
            .iter()
            .map(|e| Uuid::parse_str(&e.payment_id))
            .collect::<Result<_, _>>()?;
        sqlx::query(
            "INSERT INTO payments (id, client_id, merchant_id, customer_id, amount_minor, currency,
                                   payment_method, status)
             SELECT id, 'anonymous', m, c, a, cur, 'card', 'PENDING'
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::text[])
                  AS t(id, m, c, a, cur)",
        )
        .bind(ids)
        .bind(column(|e| e.merchant_id.clone()))
        .bind(column(|e| e.customer_id.clone()))
        .bind(chunk.iter().map(|e| e.amount_minor).collect::<Vec<_>>())
        .bind(column(|e| e.currency.clone()))
        .execute(pool)
        .await
        .context("inserting the pre-filled payments")?;
    }

    let codec = AvroCodec::new(&targets.registry_url);
    let producer: FutureProducer =
        kafka::client_config(kafka_settings, kafka::IDEMPOTENT_PRODUCER)?.create()?;
    let mut deliveries = Vec::with_capacity(records);
    for event in &events {
        let value = codec
            .encode(&scratch.requested, &PAYMENT_REQUESTED_SCHEMA, event)
            .await?;
        let event_id = Uuid::parse_str(&event.event_id)?;
        let out = Output::event(
            &scratch.requested,
            &event.payment_id,
            value,
            event_id,
            PAYMENT_REQUESTED_SCHEMA.full_name,
        );
        deliveries.push(
            kafka::enqueue(
                &producer,
                &out.topic,
                out.key.as_deref(),
                out.value.as_deref(),
                out.headers.to_kafka(),
            )
            .await?,
        );
    }
    for d in deliveries {
        kafka::delivered(d).await.context("pre-filling the topic")?;
    }
    Ok(())
}

/// A PSP simulator in this process, at zero latency and no faults; returns its URL.
async fn spawn_psp(stop: &Shutdown) -> anyhow::Result<String> {
    let settings: paystream_psp_simulator::Settings =
        serde_json::from_value(json!({"http": {"host": "127.0.0.1", "port": 0}}))?;
    let app = paystream_psp_simulator::Application::build(settings).await?;
    let url = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped(stop.clone()));
    Ok(url)
}

async fn measure(
    targets: &Targets,
    args: &ProcessorArgs,
    instances: usize,
    batch: usize,
    scratch: &Scratch,
    psp_url: &str,
    stop: &Shutdown,
) -> anyhow::Result<ProcessorResult> {
    let mut stats = Vec::new();
    let mut tasks = Vec::new();
    let load_avg_before = load_average();
    let cpu_before = CpuTimes::now();
    let start = Instant::now();
    for instance in 0..instances.max(1) {
        // Through serde, so fields added to the settings later keep their defaults here.
        let settings: paystream_payment_processor::Settings = serde_json::from_value(json!({
            "http": {"host": "127.0.0.1", "port": 0},
            "consumer": {
                "group_id": scratch.group,
                "transactional_id": format!("{}-{instance}", scratch.group),
                "batch_max_records": batch,
                "batch_max_wait_ms": args.batch_wait_ms,
            },
            "psp": {"url": psp_url},
            "database": {"url": targets.database_url, "schema": scratch.schema},
            "kafka": {"bootstrap_servers": targets.bootstrap_servers},
            "schema_registry": {"url": targets.registry_url},
            "topics": {
                "payments_requested": scratch.requested,
                "payments_outcomes": scratch.outcomes,
            },
        }))
        .context("processor settings")?;
        let app = paystream_payment_processor::Application::build(settings).await?;
        stats.push(app.stats());
        tasks.push(tokio::spawn(app.run_until_stopped(stop.clone())));
    }

    let target = args.records as u64;
    let deadline = start + args.timeout;
    let mut first: Option<(Instant, u64)> = None;
    let mut last = (start, 0u64);
    while Instant::now() < deadline
        && !stop.is_cancelled()
        && !tasks.iter().any(|t| t.is_finished())
    {
        let done = processed(&stats);
        let now = Instant::now();
        if done > 0 && first.is_none() {
            first = Some((now, done));
        }
        if done != last.1 {
            last = (now, done);
        }
        if done >= target {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let load_avg_after = load_average();
    let cpu = CpuTimes::now().since(&cpu_before);
    stop.cancel();
    for task in tasks {
        match tokio::time::timeout(Duration::from_secs(30), task).await {
            Ok(Ok(Err(e))) => return Err(e).context("a payment processor stopped with an error"),
            Ok(Err(e)) => return Err(e).context("a payment processor panicked"),
            Err(_) => eprintln!("a payment processor did not stop within 30 s"),
            Ok(Ok(Ok(()))) => {}
        }
    }

    let (first_at, first_done) = first.context("the processor processed no record")?;
    let processing = last.0.saturating_duration_since(first_at);
    let sum = |f: fn(&LoopStats) -> &AtomicU64| {
        stats
            .iter()
            .map(|s| f(s).load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let committed = sum(|s| &s.batches_committed);
    Ok(ProcessorResult {
        instances: instances.max(1),
        batch_max_records: batch,
        batch_max_wait_ms: args.batch_wait_ms,
        records: args.records,
        records_per_s: (last.1 - first_done) as f64 / processing.as_secs_f64().max(1e-3),
        startup_s: first_at.saturating_duration_since(start).as_secs_f64(),
        processing_s: processing.as_secs_f64(),
        completed: last.1 >= target,
        batches_committed: committed,
        batches_aborted: sum(|s| &s.batches_aborted),
        mean_batch: last.1 as f64 / committed.max(1) as f64,
        applied: sum(|s| &s.records_applied),
        replayed: sum(|s| &s.records_replayed),
        dead_lettered: sum(|s| &s.records_dead_lettered),
        load_avg_before,
        load_avg_after,
        cpu,
    })
}

fn processed(stats: &[Arc<LoopStats>]) -> u64 {
    stats
        .iter()
        .map(|s| {
            s.records_applied.load(Ordering::Relaxed)
                + s.records_replayed.load(Ordering::Relaxed)
                + s.records_dead_lettered.load(Ordering::Relaxed)
        })
        .sum()
}

async fn cleanup(kafka_settings: &KafkaSettings, database: &DatabaseSettings, scratch: &Scratch) {
    for t in scratch.topics() {
        delete_topic(kafka_settings, &t.name).await;
    }
    let dropped = async {
        let pool = paystream_core::db::connect(&DatabaseSettings {
            schema: None,
            max_connections: 1,
            ..database.clone()
        })
        .await?;
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {} CASCADE", scratch.schema))
            .execute(&pool)
            .await?;
        pool.close().await;
        anyhow::Ok(())
    };
    if let Err(e) = dropped.await {
        eprintln!("could not drop scratch schema {}: {e:#}", scratch.schema);
    }
}
