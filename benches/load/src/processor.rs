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
//!
//! The latency run feeds a fresh processor at a steady rate instead and tracks each record
//! from its scheduled produce time until its outcome is readable, once per consumer
//! `fetch.wait.max.ms`. Apache Kafka answers a fetch as soon as data arrives (the setting is
//! only an upper bound); the sweep shows it when a broker holds every fetch for the whole wait
//! instead, as Nisshi, the stack's former broker, did.

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
use rdkafka::producer::{DeliveryFuture, FutureProducer};
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

use crate::cli::{ProcessorArgs, Targets};
use crate::e2e::{E2eTracker, Stage};
use crate::machine::{load_average, CpuTimes, ProcessCpu};
use crate::probes::delete_topic;
use crate::recorder::{PercentilePoint, Summary};
use crate::schedule;

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

/// Every throughput configuration of `args`, one after the other.
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
        let measured = Env::with(targets, shutdown, async |env: &Env| {
            throughput(env, args, instances, batch).await
        })
        .await;
        match measured {
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

/// The processor's latency at a steady rate, once per `fetch.wait.max.ms` of `args`.
pub async fn latency(
    targets: &Targets,
    args: &ProcessorArgs,
    shutdown: &Shutdown,
) -> Vec<LatencyResult> {
    let mut results = Vec::new();
    if args.latency_rate <= 0.0 {
        return results;
    }
    for &(fetch_wait, batch_wait) in &args.latency_configs {
        if shutdown.is_cancelled() {
            break;
        }
        eprintln!(
            "processor latency: {} records at {}/s, fetch.wait.max.ms={fetch_wait}, \
             batch_max_wait_ms={batch_wait}",
            args.latency_records, args.latency_rate
        );
        let measured = Env::with(targets, shutdown, async |env: &Env| {
            steady(env, args, fetch_wait, batch_wait, shutdown).await
        })
        .await;
        match measured {
            Ok(r) => {
                eprintln!(
                    "  p50 {:.1} ms, p99 {:.1} ms ({} of {} seen)",
                    r.latency.p50_ms, r.latency.p99_ms, r.matched, r.records
                );
                results.push(r)
            }
            Err(e) => eprintln!("processor latency ({fetch_wait}:{batch_wait}) failed: {e:#}"),
        }
    }
    results
}

/// Scratch names of one configuration.
struct Scratch {
    id: String,
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
            id,
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

/// One configuration's scratch world: topics, a migrated schema, a PSP simulator, and the
/// means to fill the topic the way the gateway's relay does.
struct Env<'a> {
    targets: &'a Targets,
    scratch: Scratch,
    pool: PgPool,
    psp_url: String,
    codec: AvroCodec,
    producer: FutureProducer,
    stop: Shutdown,
}

impl Env<'_> {
    /// Sets the scratch world up, runs `f` in it, and removes it again whatever `f` returned.
    async fn with<T>(
        targets: &Targets,
        shutdown: &Shutdown,
        f: impl AsyncFnOnce(&Env) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let scratch = Scratch::new();
        let kafka_settings = targets.kafka_settings();
        let database = DatabaseSettings {
            url: targets.database_url.clone().into(),
            max_connections: 10,
            schema: Some(scratch.schema.clone()),
        };
        let stop = shutdown.child_token();
        let setup = async {
            kafka::ensure_topics(&kafka_settings, &scratch.topics()).await?;
            let pool = paystream_core::db::connect(&database).await?;
            paystream_core::db::migrate(&pool).await?;
            let psp_url = spawn_psp(&stop).await?;
            let producer: FutureProducer =
                kafka::client_config(&kafka_settings, kafka::IDEMPOTENT_PRODUCER)?.create()?;
            anyhow::Ok((pool, psp_url, producer))
        }
        .await;
        let result = match setup {
            Ok((pool, psp_url, producer)) => {
                let env = Env {
                    targets,
                    scratch,
                    pool,
                    psp_url,
                    codec: AvroCodec::new(&targets.registry_url),
                    producer,
                    stop: stop.clone(),
                };
                let result = f(&env).await;
                env.pool.close().await;
                (result, env.scratch)
            }
            Err(e) => (Err(e), scratch),
        };
        stop.cancel();
        cleanup(&kafka_settings, &database, &result.1).await;
        result.0
    }

    /// Payments as the gateway leaves them in Postgres: `PENDING` rows.
    async fn insert_payments(&self, events: &[PaymentRequested]) -> anyhow::Result<()> {
        for chunk in events.chunks(2_000) {
            let column =
                |f: fn(&PaymentRequested) -> String| chunk.iter().map(f).collect::<Vec<_>>();
            let ids: Vec<Uuid> = chunk
                .iter()
                .map(|e| Uuid::parse_str(&e.payment_id))
                .collect::<Result<_, _>>()?;
            sqlx::query(
                "INSERT INTO payments (id, client_id, merchant_id, customer_id, amount_minor,
                                       currency, payment_method, status)
                 SELECT id, 'anonymous', m, c, a, cur, 'card', 'PENDING'
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::text[])
                      AS t(id, m, c, a, cur)",
            )
            .bind(ids)
            .bind(column(|e| e.merchant_id.clone()))
            .bind(column(|e| e.customer_id.clone()))
            .bind(chunk.iter().map(|e| e.amount_minor).collect::<Vec<_>>())
            .bind(column(|e| e.currency.clone()))
            .execute(&self.pool)
            .await
            .context("inserting the payments")?;
        }
        Ok(())
    }

    /// Queues `event` on the requested topic as the relay would (Avro, event id headers).
    async fn produce(&self, event: &PaymentRequested) -> anyhow::Result<DeliveryFuture> {
        let topic = &self.scratch.requested;
        let value = self
            .codec
            .encode(topic, &PAYMENT_REQUESTED_SCHEMA, event)
            .await?;
        let event_id = Uuid::parse_str(&event.event_id)?;
        let out = Output::event(
            topic,
            &event.payment_id,
            value,
            event_id,
            PAYMENT_REQUESTED_SCHEMA.full_name,
        );
        Ok(kafka::enqueue(
            &self.producer,
            &out.topic,
            out.key.as_deref(),
            out.value.as_deref(),
            out.headers.to_kafka(),
        )
        .await?)
    }

    /// `instances` payment processors in one group on the scratch topics.
    async fn start_processors(
        &self,
        instances: usize,
        batch: usize,
        batch_wait_ms: u64,
        fetch_wait_ms: Option<u32>,
    ) -> anyhow::Result<Processors> {
        let scratch = &self.scratch;
        let mut processors = Processors::default();
        for instance in 0..instances.max(1) {
            // Through serde, so fields added to the settings later keep their defaults here.
            let settings: paystream_payment_processor::Settings = serde_json::from_value(json!({
                "http": {"host": "127.0.0.1", "port": 0},
                "consumer": {
                    "group_id": scratch.group,
                    "transactional_id": format!("{}-{instance}", scratch.group),
                    "batch_max_records": batch,
                    "batch_max_wait_ms": batch_wait_ms,
                    "fetch_wait_max_ms": fetch_wait_ms.map_or(500, u64::from),
                },
                "psp": {"url": self.psp_url},
                "database": {"url": self.targets.database_url, "schema": scratch.schema},
                "kafka": {"bootstrap_servers": self.targets.bootstrap_servers},
                "schema_registry": {"url": self.targets.registry_url},
                "topics": {
                    "payments_requested": scratch.requested,
                    "payments_outcomes": scratch.outcomes,
                },
            }))
            .context("processor settings")?;
            let app = paystream_payment_processor::Application::build(settings).await?;
            processors.stats.push(app.stats());
            processors
                .tasks
                .push(tokio::spawn(app.run_until_stopped(self.stop.clone())));
        }
        Ok(processors)
    }
}

/// `n` payment requests, as the gateway would have accepted them.
fn payment_requests(n: usize) -> Vec<PaymentRequested> {
    let now = chrono::Utc::now().timestamp_millis();
    (0..n)
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
                customer_email: None,
                requested_at: now,
            }
        })
        .collect()
}

/// Running processors and their counters.
#[derive(Default)]
struct Processors {
    stats: Vec<Arc<LoopStats>>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Processors {
    fn sum(&self, counter: fn(&LoopStats) -> &AtomicU64) -> u64 {
        self.stats
            .iter()
            .map(|s| counter(s).load(Ordering::Relaxed))
            .sum()
    }

    /// Records applied, replayed or dead-lettered so far.
    fn processed(&self) -> u64 {
        self.sum(|s| &s.records_applied)
            + self.sum(|s| &s.records_replayed)
            + self.sum(|s| &s.records_dead_lettered)
    }

    fn any_stopped(&self) -> bool {
        self.tasks.iter().any(|t| t.is_finished())
    }

    /// Waits (bounded) until `n` records are processed; false on time-out or a stopped loop.
    async fn wait_for(&self, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.processed() < n {
            if Instant::now() >= deadline || self.any_stopped() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// Stops every instance (after `stop` was cancelled) and surfaces the first failure.
    async fn join(&mut self) -> anyhow::Result<()> {
        for task in self.tasks.drain(..) {
            match tokio::time::timeout(Duration::from_secs(30), task).await {
                Ok(Ok(Err(e))) => {
                    return Err(e).context("a payment processor stopped with an error")
                }
                Ok(Err(e)) => return Err(e).context("a payment processor panicked"),
                Err(_) => eprintln!("a payment processor did not stop within 30 s"),
                Ok(Ok(Ok(()))) => {}
            }
        }
        Ok(())
    }
}

/// Pre-fills `args.records` payments, then processes them and samples the counters.
async fn throughput(
    env: &Env<'_>,
    args: &ProcessorArgs,
    instances: usize,
    batch: usize,
) -> anyhow::Result<ProcessorResult> {
    let requests = payment_requests(args.records);
    env.insert_payments(&requests).await?;
    let mut deliveries = Vec::with_capacity(requests.len());
    for r in &requests {
        deliveries.push(env.produce(r).await?);
    }
    for d in deliveries {
        kafka::delivered(d).await.context("pre-filling the topic")?;
    }

    let load_avg_before = load_average();
    let cpu_before = CpuTimes::now();
    let start = Instant::now();
    let mut processors = env
        .start_processors(instances, batch, args.batch_wait_ms, None)
        .await?;
    let target = args.records as u64;
    let deadline = start + args.timeout;
    let mut first: Option<(Instant, u64)> = None;
    let mut last = (start, 0u64);
    while Instant::now() < deadline && !env.stop.is_cancelled() && !processors.any_stopped() {
        let done = processors.processed();
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
    env.stop.cancel();
    processors.join().await?;

    let (first_at, first_done) = first.context("the processor processed no record")?;
    let processing = last.0.saturating_duration_since(first_at);
    let committed = processors.sum(|s| &s.batches_committed);
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
        batches_aborted: processors.sum(|s| &s.batches_aborted),
        mean_batch: last.1 as f64 / committed.max(1) as f64,
        applied: processors.sum(|s| &s.records_applied),
        replayed: processors.sum(|s| &s.records_replayed),
        dead_lettered: processors.sum(|s| &s.records_dead_lettered),
        load_avg_before,
        load_avg_after,
        cpu,
    })
}

/// What the processor's latency run measured.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyResult {
    /// The processor consumer's `fetch.wait.max.ms` (librdkafka's default is 500).
    pub fetch_wait_ms: u32,
    pub batch_max_records: usize,
    pub batch_max_wait_ms: u64,
    pub rate: f64,
    pub records: usize,
    /// Produced to the requested topic → outcome readable (read_committed).
    pub latency: Summary,
    pub matched: u64,
    pub missing: u64,
    pub percentiles: Vec<PercentilePoint>,
    pub load_avg_after: [f64; 3],
}

/// One warm-up record (so the group has joined), then `args.latency_records` records produced
/// at `args.latency_rate`, each tracked from its scheduled produce time to its outcome.
async fn steady(
    env: &Env<'_>,
    args: &ProcessorArgs,
    fetch_wait_ms: u32,
    batch_wait_ms: u64,
    shutdown: &Shutdown,
) -> anyhow::Result<LatencyResult> {
    let batch = args.batch_sizes.first().copied().unwrap_or(100);
    let requests = payment_requests(args.latency_records + 1);
    env.insert_payments(&requests).await?;
    let mut processors = env
        .start_processors(1, batch, batch_wait_ms, Some(fetch_wait_ms))
        .await?;
    kafka::delivered(env.produce(&requests[0]).await?).await?;
    anyhow::ensure!(
        processors.wait_for(1, Duration::from_secs(30)).await,
        "the warm-up record was not processed"
    );

    let stage = Stage {
        name: "processor".into(),
        topic: env.scratch.outcomes.clone(),
    };
    let tracker = E2eTracker::start(
        &env.targets.kafka_settings(),
        vec![stage],
        &env.scratch.id,
        env.targets.e2e_fetch_wait_ms,
    )
    .await?;
    let start = Instant::now();
    let mut deliveries = Vec::with_capacity(args.latency_records);
    for (seq, r) in requests[1..].iter().enumerate() {
        let intended = schedule::due(start, args.latency_rate, seq as u64);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(intended) => {}
        }
        deliveries.push(env.produce(r).await?);
        let second = intended.saturating_duration_since(start).as_secs() as usize;
        tracker.accepted(r.payment_id.clone(), intended, second);
    }
    for d in deliveries {
        kafka::delivered(d).await?;
    }
    tracker.settle(Duration::from_secs(15), shutdown).await;
    let load_avg_after = load_average();
    let stage = tracker
        .finish()
        .await
        .pop()
        .context("the tracker has one stage")?;
    env.stop.cancel();
    processors.join().await?;
    Ok(LatencyResult {
        fetch_wait_ms,
        batch_max_records: batch,
        batch_max_wait_ms: batch_wait_ms,
        rate: args.latency_rate,
        records: args.latency_records,
        latency: stage.latency,
        matched: stage.matched,
        missing: stage.missing,
        percentiles: stage.percentiles,
        load_avg_after,
    })
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
