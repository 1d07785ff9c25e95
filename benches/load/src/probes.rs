//! Ceiling probes: the machine's own limits, measured in the same run as the stages, so each
//! stage can be shown as a fraction of what the hardware and dependencies allow.
//!
//! - **bare HTTP**: an axum handler in this process that parses the JSON body and answers
//!   `202` — no database, no Kafka — driven by the same client as the real runs;
//! - **Postgres commit**: single-row `INSERT` + `COMMIT` transactions through a pool of the
//!   gateway's size, into a scratch schema that is dropped afterwards;
//! - **Kafka produce**: the idempotent producer the services use (`acks=all`, lz4, linger
//!   5 ms) writing to a scratch 6-partition topic, deleted afterwards.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use futures::stream::{FuturesUnordered, StreamExt};
use paystream_core::config::{DatabaseSettings, KafkaSettings};
use paystream_core::kafka::{self, TopicSpec};
use paystream_core::shutdown::Shutdown;
use rand::RngCore;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::FutureProducer;
use serde::Serialize;
use tokio::time::Instant;

use crate::cli::{MixArgs, ProbeArgs, Targets};
use crate::machine::load_average;
use crate::recorder::{LatencySeries, Summary};
use crate::run::{self, RunSpec};
use crate::schedule::Model;

/// What one probe measured.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    pub name: String,
    pub what: String,
    pub rate_per_s: f64,
    pub unit: String,
    pub latency: Summary,
    pub note: String,
    pub duration_s: f64,
    pub load_avg_before: [f64; 3],
    pub load_avg_after: [f64; 3],
}

fn scratch_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// Runs every probe; a probe that fails is reported and skipped, the others still run.
pub async fn all(
    targets: &Targets,
    args: &ProbeArgs,
    mix: &MixArgs,
    shutdown: &Shutdown,
) -> Vec<ProbeResult> {
    let mut results = Vec::new();
    let probes: [(&str, ProbeFuture<'_>); 3] = [
        (
            "bare HTTP",
            Box::pin(bare_http(targets, args, mix, shutdown)),
        ),
        (
            "Postgres commit",
            Box::pin(postgres_commit(&targets.database_url, args, shutdown)),
        ),
        (
            "Kafka produce",
            Box::pin(kafka_produce(
                &targets.bootstrap_servers,
                args.duration,
                shutdown,
            )),
        ),
    ];
    for (name, probe) in probes {
        match probe.await {
            Ok(r) => results.push(r),
            Err(e) => eprintln!("probe `{name}` failed: {e:#}"),
        }
    }
    results
}

type ProbeFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<ProbeResult>> + 'a>>;

/// The bare axum handler, driven with the closed model at `args.concurrency`.
pub async fn bare_http(
    targets: &Targets,
    args: &ProbeArgs,
    mix: &MixArgs,
    shutdown: &Shutdown,
) -> anyhow::Result<ProbeResult> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let router = Router::new().route("/v1/payments", post(accept));
    let stop = shutdown.child_token();
    let server = tokio::spawn({
        let stop = stop.clone();
        async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        }
    });
    let spec = RunSpec {
        name: "probe: bare HTTP".into(),
        base_url: url,
        model: Model::Closed {
            concurrency: args.concurrency,
        },
        duration: args.duration,
        stages: Vec::new(),
        e2e_grace: Duration::ZERO,
        mix: mix.clone(),
    };
    let result = run::execute(targets, &spec, shutdown).await;
    stop.cancel();
    let _ = server.await;
    let r = result?;
    Ok(ProbeResult {
        name: "bare HTTP".into(),
        what: format!(
            "axum handler parsing the JSON body and answering 202, no DB, no Kafka; {} clients",
            args.concurrency
        ),
        rate_per_s: r.accepted_per_s,
        unit: "requests/s".into(),
        latency: r.http,
        note: format!("{} errors", r.errors),
        duration_s: r.duration_s,
        load_avg_before: r.load_avg_before,
        load_avg_after: r.load_avg_after,
    })
}

async fn accept(Json(body): Json<serde_json::Value>) -> (StatusCode, Json<serde_json::Value>) {
    let answer = serde_json::json!({
        "id": uuid::Uuid::now_v7(),
        "status": "PENDING",
        "merchant_id": body.get("merchant_id"),
    });
    (StatusCode::ACCEPTED, Json(answer))
}

/// Single-row insert + commit transactions through a pool of `args.pool_size` connections,
/// with twice as many workers so the pool is never idle.
pub async fn postgres_commit(
    database_url: &str,
    args: &ProbeArgs,
    shutdown: &Shutdown,
) -> anyhow::Result<ProbeResult> {
    let schema = format!("paystream_bench_probe_{}", scratch_id());
    let settings = DatabaseSettings {
        url: database_url.to_string().into(),
        max_connections: args.pool_size,
        schema: Some(schema.clone()),
    };
    let pool = paystream_core::db::connect(&settings).await?;
    sqlx::query(
        "CREATE TABLE probe (id uuid PRIMARY KEY, payload jsonb NOT NULL,
                             created_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&pool)
    .await
    .context("creating the probe table")?;

    let load_avg_before = load_average();
    let latency = Arc::new(Mutex::new(LatencySeries::default()));
    let start = Instant::now();
    let end = start + args.duration;
    let workers: Vec<_> = (0..args.pool_size * 2)
        .map(|_| {
            let (pool, latency, shutdown) = (pool.clone(), latency.clone(), shutdown.clone());
            tokio::spawn(async move {
                let payload = serde_json::json!({"merchant_id": "m_1", "amount_minor": 1999,
                    "currency": "EUR", "customer_id": "c_1", "payment_method": "card"});
                let mut committed = 0u64;
                while Instant::now() < end && !shutdown.is_cancelled() {
                    let t0 = Instant::now();
                    let mut tx = pool.begin().await?;
                    sqlx::query("INSERT INTO probe (id, payload) VALUES ($1, $2)")
                        .bind(uuid::Uuid::now_v7())
                        .bind(&payload)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    committed += 1;
                    let second = t0.saturating_duration_since(start).as_secs() as usize;
                    latency
                        .lock()
                        .expect("latency lock poisoned")
                        .record(second, t0.elapsed());
                }
                Ok::<_, sqlx::Error>(committed)
            })
        })
        .collect();
    let mut committed = 0;
    let mut failure = None;
    for w in workers {
        match w.await.context("probe worker panicked")? {
            Ok(n) => committed += n,
            Err(e) => failure = Some(e),
        }
    }
    let elapsed = start.elapsed();
    let load_avg_after = load_average();
    let dropped = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&pool)
        .await;
    pool.close().await;
    if let Err(e) = dropped {
        eprintln!("could not drop the probe schema {schema}: {e}");
    }
    if let Some(e) = failure {
        return Err(e).context("Postgres probe");
    }
    let latency = latency.lock().expect("latency lock poisoned").summary();
    Ok(ProbeResult {
        name: "Postgres commit".into(),
        what: format!(
            "single-row INSERT + COMMIT, pool of {} connections, {} workers",
            args.pool_size,
            args.pool_size * 2
        ),
        rate_per_s: committed as f64 / elapsed.as_secs_f64(),
        unit: "commits/s".into(),
        latency,
        note: String::new(),
        duration_s: elapsed.as_secs_f64(),
        load_avg_before,
        load_avg_after,
    })
}

/// Records of `VALUE_BYTES` random bytes (about a `PaymentRequested` in Avro), as fast as the
/// producer takes them, with at most `MAX_IN_FLIGHT` unacknowledged.
pub async fn kafka_produce(
    bootstrap_servers: &str,
    duration: Duration,
    shutdown: &Shutdown,
) -> anyhow::Result<ProbeResult> {
    const VALUE_BYTES: usize = 256;
    const MAX_IN_FLIGHT: usize = 20_000;
    let settings = KafkaSettings {
        bootstrap_servers: bootstrap_servers.to_string(),
        ..Default::default()
    };
    let topic = format!("paystream-bench.probe.{}", scratch_id());
    kafka::ensure_topics(&settings, &[TopicSpec::new(&topic, 6)]).await?;
    let producer: FutureProducer = kafka::client_config(&settings, kafka::IDEMPOTENT_PRODUCER)?
        .create()
        .context("creating the probe producer")?;

    let mut value = vec![0u8; VALUE_BYTES];
    rand::rng().fill_bytes(&mut value);
    let load_avg_before = load_average();
    let mut latency = LatencySeries::default();
    let mut in_flight = FuturesUnordered::new();
    let mut acked = 0u64;
    let start = Instant::now();
    let end = start + duration;
    let mut seq = 0u64;
    let mut failure = None;
    let mut on_ack = |sent_at: Instant, r: Result<(), rdkafka::error::KafkaError>| match r {
        Ok(()) => {
            acked += 1;
            let second = sent_at.saturating_duration_since(start).as_secs() as usize;
            latency.record(second, sent_at.elapsed());
        }
        Err(e) => failure = Some(e),
    };
    while Instant::now() < end && !shutdown.is_cancelled() {
        if in_flight.len() >= MAX_IN_FLIGHT {
            if let Some((sent_at, r)) = in_flight.next().await {
                on_ack(sent_at, r);
            }
        }
        let key = seq.to_string();
        seq += 1;
        let sent_at = Instant::now();
        let delivery = kafka::enqueue(
            &producer,
            &topic,
            Some(key.as_bytes()),
            Some(&value),
            OwnedHeaders::new(),
        )
        .await?;
        in_flight.push(async move { (sent_at, kafka::delivered(delivery).await) });
    }
    while let Some((sent_at, r)) = in_flight.next().await {
        on_ack(sent_at, r);
    }
    let elapsed = start.elapsed();
    let load_avg_after = load_average();
    delete_topic(&settings, &topic).await;
    if let Some(e) = failure {
        return Err(e).context("Kafka probe");
    }
    let rate = acked as f64 / elapsed.as_secs_f64();
    Ok(ProbeResult {
        name: "Kafka produce".into(),
        what: format!(
            "idempotent producer, acks=all, lz4, linger.ms=5, {VALUE_BYTES}-byte values, 6 partitions"
        ),
        rate_per_s: rate,
        unit: "records/s".into(),
        latency: latency.summary(),
        note: format!(
            "{:.1} MB/s of values; latency = enqueue to acknowledgement",
            rate * VALUE_BYTES as f64 / 1e6
        ),
        duration_s: elapsed.as_secs_f64(),
        load_avg_before,
        load_avg_after,
    })
}

/// Deletes a scratch topic; a failure only leaves a small topic behind, so it is reported.
pub async fn delete_topic(settings: &KafkaSettings, topic: &str) {
    let deleted = async {
        let admin: AdminClient<DefaultClientContext> =
            kafka::client_config(settings, &[])?.create()?;
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for r in admin.delete_topics(&[topic], &options).await? {
            r.map_err(|(t, code)| anyhow::anyhow!("{t}: {code}"))?;
        }
        anyhow::Ok(())
    };
    if let Err(e) = deleted.await {
        eprintln!("could not delete scratch topic {topic}: {e:#}");
    }
}
