//! The payment-processor sweep: throughput over instances × `batch_max_records`, and latency
//! at a steady rate over the consumer's `fetch.wait.max.ms` and `batch_max_wait_ms`.
//!
//! Each configuration gets its own scratch world ([`crate::scratch`]) and PSP simulator at
//! zero latency, and runs `payment-processor` processes of the measured build profile,
//! configured through their environment. Throughput is a drain ([`crate::stages::Drain`]):
//! `records` payments pre-filled (rows `PENDING`, requests on the topic, as the gateway and
//! its relay leave them), measured by the group's committed offsets.
//!
//! The latency run feeds a fresh processor at a steady rate instead and tracks each record
//! from its scheduled produce time until its outcome is readable. Apache Kafka answers a
//! fetch as soon as data arrives (`fetch.wait.max.ms` is only an upper bound); the sweep
//! shows it when a broker holds every fetch for the whole wait instead, as Nisshi, the
//! stack's former broker, did.

use std::time::Duration;

use anyhow::Context;
use paystream_core::kafka;
use paystream_core::shutdown::Shutdown;
use serde::Serialize;
use tokio::time::Instant;

use crate::cli::{ProcessorArgs, Targets};
use crate::e2e::{E2eTracker, Stage};
use crate::machine::load_average;
use crate::recorder::{PercentilePoint, Summary};
use crate::schedule;
use crate::scratch::{payment_requests, World};
use crate::services::{stop_all, Binaries};
use crate::stages::{self, DrainResult};

fn env(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (format!("PAYSTREAM_CONSUMER__{k}"), v.clone()))
        .collect()
}

/// Every throughput configuration of `args`, one after the other.
pub async fn run(
    targets: &Targets,
    bins: &Binaries,
    args: &ProcessorArgs,
    shutdown: &Shutdown,
) -> Vec<DrainResult> {
    let mut results = Vec::new();
    let configs = args
        .instances
        .iter()
        .flat_map(|i| args.batch_sizes.iter().map(move |b| (*i, *b)));
    for (instances, batch) in configs {
        if shutdown.is_cancelled() {
            break;
        }
        let name = format!("processor {instances}×{batch}");
        eprintln!(
            "{name}: {} records, batch_max_records={batch}, batch_max_wait_ms={}",
            args.records, args.batch_wait_ms
        );
        let extra = env(&[
            ("BATCH_MAX_RECORDS", batch.to_string()),
            ("BATCH_MAX_WAIT_MS", args.batch_wait_ms.to_string()),
        ]);
        let measured = stages::in_world(&name, targets, bins, shutdown, async |w: &World| {
            stages::processor(w, &name, args.records, 0, instances, extra, args.timeout).await
        })
        .await;
        if let Ok(r) = measured {
            eprintln!(
                "  {:.0} records/s (start-up {:.1} s{})",
                r.records_per_s,
                r.startup_s,
                if r.completed { "" } else { ", incomplete" }
            );
            results.push(r);
        }
    }
    results
}

/// The processor's latency at a steady rate, once per `fetch.wait.max.ms` of `args`.
pub async fn latency(
    targets: &Targets,
    bins: &Binaries,
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
        let name = format!("processor latency {fetch_wait}:{batch_wait}");
        let measured = stages::in_world(&name, targets, bins, shutdown, async |w: &World| {
            steady(w, args, fetch_wait, batch_wait, shutdown).await
        })
        .await;
        if let Ok(r) = measured {
            eprintln!(
                "  p50 {:.1} ms, p99 {:.1} ms ({} of {} seen)",
                r.latency.p50_ms, r.latency.p99_ms, r.matched, r.records
            );
            results.push(r);
        }
    }
    results
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
    world: &World<'_>,
    args: &ProcessorArgs,
    fetch_wait_ms: u32,
    batch_wait_ms: u64,
    shutdown: &Shutdown,
) -> anyhow::Result<LatencyResult> {
    let batch = args.batch_sizes.first().copied().unwrap_or(100);
    let requests = payment_requests(args.latency_records + 1);
    world.insert_payments(&requests).await?;
    let psp = world.start_psp(0).await?;
    let mut extra = env(&[
        ("BATCH_MAX_RECORDS", batch.to_string()),
        ("BATCH_MAX_WAIT_MS", batch_wait_ms.to_string()),
        ("FETCH_WAIT_MAX_MS", fetch_wait_ms.to_string()),
    ]);
    extra.push(("PAYSTREAM_PSP__URL".into(), psp.url()));
    let services = world.start_group("payment-processor", 1, &extra).await?;
    let measured = async {
        kafka::delivered(world.produce_request(&requests[0]).await?).await?;
        let progress = world.progress("payment-processor", &world.scratch.requested)?;
        let warm = Instant::now() + Duration::from_secs(30);
        while progress.committed().await? < 1 {
            anyhow::ensure!(
                Instant::now() < warm,
                "the warm-up record was not processed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let stage = Stage {
            name: "processor".into(),
            topic: world.scratch.outcomes.clone(),
        };
        let tracker = E2eTracker::start(
            &world.targets.kafka_settings(),
            vec![stage],
            &world.scratch.id,
            world.targets.e2e_fetch_wait_ms,
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
            deliveries.push(world.produce_request(r).await?);
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
    .await;
    stop_all(services).await;
    psp.stop().await;
    measured
}
