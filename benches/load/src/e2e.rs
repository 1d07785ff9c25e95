//! End-to-end latency: from a request's scheduled time until its payment's record appears on
//! each tracked topic (the outcome topic, and later notification/analytics topics).
//!
//! Before the load starts, one `read_committed` consumer is assigned every partition of every
//! tracked topic at its current end offset (no group membership, nothing committed), so only
//! records produced during the run are read. Records are matched to requests by key (the
//! payment id). A record can arrive before the `202` has been read; it is parked until the
//! request reports its id. Records of payments this run did not send (other traffic) are
//! parked and never matched. A second record for the same payment on a stage is counted as a
//! duplicate (aborted transactions stay hidden under read_committed, but the outbox relay is
//! at-least-once and can publish a request twice); only the first one counts for latency.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use paystream_core::config::KafkaSettings;
use paystream_core::kafka;
use paystream_core::shutdown::Shutdown;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::recorder::{LatencySeries, PercentilePoint, SecondPoint, Summary};

/// Parked records of unknown payments are bounded, so foreign traffic can't grow memory.
const MAX_PARKED: usize = 1_000_000;

#[derive(Debug, Clone)]
pub struct Stage {
    pub name: String,
    pub topic: String,
}

struct Pending {
    intended: Instant,
    second: usize,
    /// Bit `i` set once stage `i` has seen the payment.
    seen: u64,
}

struct State {
    stages: Vec<Stage>,
    sent: HashMap<String, Pending>,
    parked: HashMap<(usize, String), Instant>,
    series: Vec<LatencySeries>,
    matched: Vec<u64>,
    duplicates: Vec<u64>,
    accepted: u64,
}

impl State {
    fn new(stages: Vec<Stage>) -> Self {
        let n = stages.len();
        Self {
            stages,
            sent: HashMap::new(),
            parked: HashMap::new(),
            series: (0..n).map(|_| LatencySeries::default()).collect(),
            matched: vec![0; n],
            duplicates: vec![0; n],
            accepted: 0,
        }
    }

    fn accepted(&mut self, payment_id: String, intended: Instant, second: usize) {
        self.accepted += 1;
        let pending = Pending {
            intended,
            second,
            seen: 0,
        };
        self.sent.insert(payment_id.clone(), pending);
        for stage in 0..self.stages.len() {
            if let Some(at) = self.parked.remove(&(stage, payment_id.clone())) {
                self.seen(stage, payment_id.clone(), at);
            }
        }
    }

    fn seen(&mut self, stage: usize, payment_id: String, at: Instant) {
        match self.sent.get_mut(&payment_id) {
            Some(pending) if pending.seen & (1 << stage) != 0 => self.duplicates[stage] += 1,
            // Disjoint field borrows: `pending` lives in `sent`, the counters elsewhere.
            Some(pending) => {
                pending.seen |= 1 << stage;
                self.matched[stage] += 1;
                self.series[stage].record(
                    pending.second,
                    at.saturating_duration_since(pending.intended),
                );
            }
            None if self.parked.len() < MAX_PARKED => {
                self.parked.entry((stage, payment_id)).or_insert(at);
            }
            None => {}
        }
    }

    fn outstanding(&self) -> u64 {
        self.accepted * self.stages.len() as u64 - self.matched.iter().sum::<u64>()
    }
}

/// What one stage measured.
#[derive(Debug, Clone, Serialize)]
pub struct StageResult {
    pub name: String,
    pub topic: String,
    pub latency: Summary,
    /// Accepted payments whose record appeared on this stage's topic.
    pub matched: u64,
    /// Accepted payments whose record did not appear within the grace period.
    pub missing: u64,
    /// Further records for payments already seen on this stage.
    pub duplicates: u64,
    pub per_second: Vec<SecondPoint>,
    pub percentiles: Vec<PercentilePoint>,
}

/// Tracks end-to-end latency for one run.
pub struct E2eTracker {
    state: Arc<Mutex<State>>,
    stop: Shutdown,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl E2eTracker {
    /// Subscribes to every stage's topic at its end offsets. Returns once the assignment is in
    /// place, so the run can start.
    pub async fn start(
        kafka: &KafkaSettings,
        stages: Vec<Stage>,
        run_id: &str,
        fetch_wait_ms: u32,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !stages.is_empty() && stages.len() <= 64,
            "1 to 64 stages can be tracked"
        );
        let (group, fetch_wait_ms) = (
            format!("paystream-load-{run_id}"),
            fetch_wait_ms.to_string(),
        );
        let consumer: StreamConsumer = kafka::client_config(
            kafka,
            &[
                ("group.id", group.as_str()),
                ("isolation.level", "read_committed"),
                ("enable.auto.commit", "false"),
                ("enable.partition.eof", "false"),
                // Small fetch waits: the time a record takes to reach us is part of the
                // measurement.
                ("fetch.wait.max.ms", fetch_wait_ms.as_str()),
            ],
        )?
        .create()
        .context("creating the end-to-end consumer")?;
        let consumer = Arc::new(consumer);
        let topics: Vec<String> = stages.iter().map(|s| s.topic.clone()).collect();
        let c = consumer.clone();
        let assignment = tokio::task::spawn_blocking(move || end_offsets(&c, &topics))
            .await
            .context("assigning the end-to-end consumer")??;
        consumer
            .assign(&assignment)
            .context("assigning the end-to-end consumer")?;

        let topic_index: HashMap<String, usize> = stages
            .iter()
            .enumerate()
            .map(|(i, s)| (s.topic.clone(), i))
            .collect();
        let state = Arc::new(Mutex::new(State::new(stages)));
        let stop = Shutdown::new();
        let task = tokio::spawn({
            let (state, stop) = (state.clone(), stop.clone());
            async move {
                loop {
                    let message = tokio::select! {
                        biased;
                        _ = stop.cancelled() => break,
                        m = consumer.recv() => m,
                    };
                    let at = Instant::now();
                    match message {
                        Ok(m) => {
                            let (Some(stage), Some(key)) =
                                (topic_index.get(m.topic()).copied(), m.key())
                            else {
                                continue;
                            };
                            let id = String::from_utf8_lossy(key).into_owned();
                            state
                                .lock()
                                .expect("tracker lock poisoned")
                                .seen(stage, id, at);
                        }
                        Err(e) => tracing::warn!(error = %e, "end-to-end consumer error"),
                    }
                }
            }
        });
        Ok(Self {
            state,
            stop,
            task: Mutex::new(Some(task)),
        })
    }

    /// A `202` arrived for `payment_id`, scheduled at `intended` in second `second` of the run.
    pub fn accepted(&self, payment_id: String, intended: Instant, second: usize) {
        self.state
            .lock()
            .expect("tracker lock poisoned")
            .accepted(payment_id, intended, second);
    }

    /// Payment/stage pairs not seen yet, and the p99 (ms) of `second` on the first stage.
    pub fn live(&self, second: usize) -> (u64, f64) {
        let state = self.state.lock().expect("tracker lock poisoned");
        let p99 = state.series[0].second(second).map_or(0.0, |s| s.p99_ms);
        (state.outstanding(), p99)
    }

    /// Waits until every accepted payment was seen on every stage, or `grace` has passed.
    pub async fn settle(&self, grace: Duration, shutdown: &Shutdown) {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && !shutdown.is_cancelled() {
            if self.live(0).0 == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the consumer and returns what each stage measured.
    pub async fn finish(&self) -> Vec<StageResult> {
        self.stop.cancel();
        let task = self.task.lock().expect("tracker lock poisoned").take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let mut state = self.state.lock().expect("tracker lock poisoned");
        let accepted = state.accepted;
        let stages = std::mem::take(&mut state.stages);
        let series = std::mem::take(&mut state.series);
        stages
            .into_iter()
            .zip(series)
            .enumerate()
            .map(|(i, (stage, series))| StageResult {
                name: stage.name,
                topic: stage.topic,
                latency: series.summary(),
                matched: state.matched[i],
                missing: accepted - state.matched[i],
                duplicates: state.duplicates[i],
                per_second: series.per_second(),
                percentiles: series.percentiles(),
            })
            .collect()
    }
}

/// Every partition of `topics` at its high watermark.
fn end_offsets(consumer: &StreamConsumer, topics: &[String]) -> anyhow::Result<TopicPartitionList> {
    let timeout = Duration::from_secs(10);
    let mut tpl = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .with_context(|| format!("reading metadata of {topic}"))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        anyhow::ensure!(!partitions.is_empty(), "topic {topic} has no partitions");
        for p in partitions {
            let (_, high) = consumer
                .fetch_watermarks(topic, p, timeout)
                .with_context(|| format!("reading the end offset of {topic}/{p}"))?;
            tpl.add_partition_offset(topic, p, Offset::Offset(high))?;
        }
    }
    Ok(tpl)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stages(n: usize) -> Vec<Stage> {
        (0..n)
            .map(|i| Stage {
                name: format!("s{i}"),
                topic: format!("t{i}"),
            })
            .collect()
    }

    #[test]
    fn matches_records_to_requests_in_either_order() {
        let start = Instant::now();
        let mut s = State::new(stages(2));
        s.accepted("a".into(), start, 0);
        s.seen(0, "a".into(), start + Duration::from_millis(30));
        // Seen before its 202 was read.
        s.seen(0, "b".into(), start + Duration::from_millis(50));
        s.accepted("b".into(), start + Duration::from_millis(10), 0);
        assert_eq!(s.matched, vec![2, 0]);
        assert_eq!(s.outstanding(), 2);
        s.seen(1, "a".into(), start + Duration::from_millis(70));
        s.seen(1, "b".into(), start + Duration::from_millis(70));
        assert_eq!(s.outstanding(), 0);
        let sum = s.series[0].summary();
        assert_eq!(sum.count, 2);
        assert!((sum.max_ms - 40.0).abs() < 0.1, "{sum:?}");
    }

    #[test]
    fn duplicates_and_foreign_records_do_not_count() {
        let start = Instant::now();
        let mut s = State::new(stages(1));
        s.accepted("a".into(), start, 0);
        s.seen(0, "a".into(), start + Duration::from_millis(5));
        s.seen(0, "a".into(), start + Duration::from_millis(9));
        s.seen(0, "someone-else".into(), start);
        assert_eq!(s.matched, vec![1]);
        assert_eq!(s.duplicates, vec![1]);
        assert_eq!(s.series[0].summary().count, 1);
        assert_eq!(s.outstanding(), 0);
    }
}
