//! Applying a batch's records exactly once: decoding, the dedupe decision (one ledger query per
//! batch), the handler calls (concurrent across keys up to `max_in_flight`, in offset order
//! within a key, no new record started past the batch deadline), the routing of failures to
//! the retry chain or the dead-letter topic, and the batch's one database transaction that
//! records the applied event ids with the handler's effects.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use opentelemetry::trace::TraceContextExt as _;
use sqlx::PgPool;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use super::handler::{Handled, Handler, HandlerContext, HandlerError};
use super::instruments::{self, Outcome};
use super::ledger::{self, AppliedEvent, Entry};
use super::stats::LoopStats;
use crate::avro::AvroCodec;
use crate::record::{Output, Record};
use crate::retry::{self, Destination, Failure, FailureClass, RetryPolicy};

/// How one record was applied, before the batch's database commit.
enum Applied<E> {
    /// The handler ran; recorded in the ledger with its effect when the batch commits.
    Fresh { event_id: Uuid, handled: Handled<E> },
    /// Its event was applied before: the outputs to produce again (none unless this is the
    /// record that applied it) and the state keys it changed.
    Known {
        outputs: Vec<Output>,
        state_keys: Vec<String>,
        outcome: Outcome,
    },
    /// Forwarded to the retry chain or the dead-letter topic.
    Forwarded { output: Output, outcome: Outcome },
}

/// A record that was applied, with the time it took.
struct Done<E> {
    applied: Applied<E>,
    took: Duration,
}

/// A chain's records, by index in the batch, with how each went.
type ChainResults<E> = Vec<(usize, anyhow::Result<Done<E>>)>;

/// What a record is, once the batch was decoded and looked up in the ledger.
enum Prepared<Ev> {
    Poison(String),
    Known(AppliedEvent),
    /// Another record of this batch carries the same event and comes first.
    Duplicate,
    Event(Ev),
}

/// What the batch's database commit leaves to produce.
pub struct Committed {
    /// In batch order: the records to produce with the committed offsets.
    pub outputs: Vec<Output>,
    /// State keys changed or replayed by the committed records.
    pub state_keys: BTreeSet<String>,
    /// The records whose offsets commit: per partition, those before its first record left
    /// undone by the deadline.
    pub records: Vec<Record>,
    /// Whether records were left to read again.
    pub cut_short: bool,
}

/// Applies batches for one loop.
pub struct Applier<'a, H: Handler> {
    pub handler: &'a H,
    pub codec: &'a AvroCodec,
    pub pool: &'a PgPool,
    pub policy: &'a RetryPolicy,
    pub group: &'a str,
    pub instance: &'a str,
    pub stats: &'a LoopStats,
    pub max_in_flight: usize,
}

impl<H: Handler> Applier<'_, H> {
    /// Applies `batch` and commits its database side; an error leaves nothing committed.
    pub async fn apply(&self, batch: &[Record], deadline: Instant) -> anyhow::Result<Committed> {
        let prepared = self.prepare(batch).await?;
        let done = self.run_chains(batch, prepared, deadline).await?;
        self.commit(batch, done).await
    }

    /// Decodes every record and looks their event ids up in the ledger, in one query.
    async fn prepare(&self, batch: &[Record]) -> anyhow::Result<Vec<Prepared<H::Event>>> {
        let mut decoded = Vec::with_capacity(batch.len());
        // Decoded before the dedupe lookup: bytes that are not an event are dead-lettered even
        // when their `event_id` header names an event already applied (a reused or stolen id),
        // rather than skipped as its duplicate without a trace.
        for record in batch {
            match self
                .codec
                .decode::<H::Event>(record.payload.as_deref())
                .await
            {
                Err(e) if e.is_transient() => return Err(anyhow::Error::new(e).context("decoding")),
                Err(e) => decoded.push(Err(e.to_string())),
                Ok(event) => decoded.push(Ok(event)),
            }
        }
        let ids: Vec<Uuid> = batch
            .iter()
            .zip(&decoded)
            .filter(|(_, d)| d.is_ok())
            .map(|(r, _)| r.event_id())
            .collect();
        let mut conn = self.pool.acquire().await?;
        let applied = ledger::applied(&mut conn, self.group, &ids).await?;
        drop(conn);
        let mut seen = HashSet::new();
        Ok(batch
            .iter()
            .zip(decoded)
            .map(|(record, decoded)| match decoded {
                Err(message) => Prepared::Poison(message),
                Ok(event) => {
                    let id = record.event_id();
                    if let Some(known) = applied.get(&id) {
                        // Kept for a second copy in the batch, which is then deduplicated.
                        if seen.insert(id) {
                            Prepared::Known(known.clone())
                        } else {
                            Prepared::Duplicate
                        }
                    } else if seen.insert(id) {
                        Prepared::Event(event)
                    } else {
                        Prepared::Duplicate
                    }
                }
            })
            .collect())
    }

    /// Runs one chain per key (per partition and key: one payment's records), chains
    /// concurrently, each in offset order. A chain starts no record past `deadline`, nor once
    /// a record found a dependency unavailable, which fails the batch.
    /// Index-aligned with `batch`; `None`: not run.
    async fn run_chains(
        &self,
        batch: &[Record],
        prepared: Vec<Prepared<H::Event>>,
        deadline: Instant,
    ) -> anyhow::Result<Vec<Option<Done<H::Effect>>>> {
        let mut chains: Vec<Vec<(usize, Prepared<H::Event>)>> = Vec::new();
        let mut chain_of: HashMap<(&str, i32, Option<&[u8]>), usize> = HashMap::new();
        for (i, p) in prepared.into_iter().enumerate() {
            let r = &batch[i];
            let chain = *chain_of
                .entry((r.topic.as_str(), r.partition, r.key.as_deref()))
                .or_insert_with(|| {
                    chains.push(Vec::new());
                    chains.len() - 1
                });
            chains[chain].push((i, p));
        }
        let stop = AtomicBool::new(false);
        let results: Vec<ChainResults<H::Effect>> = stream::iter(chains)
            .map(|chain| self.run_chain(batch, chain, deadline, &stop))
            .buffer_unordered(self.max_in_flight)
            .collect()
            .await;
        let mut done: Vec<Option<Done<H::Effect>>> = (0..batch.len()).map(|_| None).collect();
        for (i, d) in results.into_iter().flatten() {
            done[i] = Some(d?);
        }
        Ok(done)
    }

    async fn run_chain(
        &self,
        batch: &[Record],
        chain: Vec<(usize, Prepared<H::Event>)>,
        deadline: Instant,
        stop: &AtomicBool,
    ) -> ChainResults<H::Effect> {
        let mut results = Vec::with_capacity(chain.len());
        for (i, prepared) in chain {
            if stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
                break;
            }
            let started = Instant::now();
            let applied = self.apply_one(&batch[i], prepared).await;
            if applied.is_err() {
                stop.store(true, Ordering::SeqCst);
            }
            results.push((
                i,
                applied.map(|applied| Done {
                    applied,
                    took: started.elapsed(),
                }),
            ));
        }
        results
    }

    /// One record, in its `process` span (continuing the producer's trace).
    async fn apply_one(
        &self,
        record: &Record,
        prepared: Prepared<H::Event>,
    ) -> anyhow::Result<Applied<H::Effect>> {
        let event_id = record.event_id();
        let span = tracing::info_span!(
            "process",
            otel.name = %format!("process {}", record.topic),
            otel.kind = "consumer",
            messaging.system = "kafka",
            messaging.operation.type = "process",
            messaging.operation.name = "process",
            messaging.destination.name = %record.topic,
            messaging.destination.partition.id = record.partition,
            messaging.kafka.offset = record.offset,
            messaging.kafka.message.key = %record.key_str(),
            messaging.consumer.group.name = %self.group,
            event.id = %event_id,
            payment.id = %record.key_str(),
            retry.attempt = retry::attempt_of(&record.headers),
            error.type = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        let _ = span.set_parent(record.headers.extract_context());
        // Logs carry the trace id (the JSON log line shows the span's fields), from the tracer
        // when traces are exported, else from the record's own `traceparent`.
        let traced = span.context().span().span_context().trace_id();
        if traced != opentelemetry::trace::TraceId::INVALID {
            span.record("trace_id", tracing::field::display(traced));
        } else if let Some(id) = record.headers.trace_id() {
            span.record("trace_id", id);
        }
        self.apply_in_span(record, event_id, prepared)
            .instrument(span)
            .await
    }

    async fn apply_in_span(
        &self,
        record: &Record,
        event_id: Uuid,
        prepared: Prepared<H::Event>,
    ) -> anyhow::Result<Applied<H::Effect>> {
        let event = match prepared {
            Prepared::Poison(message) => {
                return Ok(self.forward(
                    record,
                    Failure {
                        class: FailureClass::Poison,
                        message,
                    },
                ))
            }
            Prepared::Known(applied) => return Ok(already_applied(record, applied)),
            Prepared::Duplicate => {
                tracing::info!(%event_id, "a record earlier in the batch carries the same event; skipping");
                return Ok(Applied::Known {
                    outputs: Vec::new(),
                    state_keys: Vec::new(),
                    outcome: Outcome::Deduplicated,
                });
            }
            Prepared::Event(event) => event,
        };
        let ctx = HandlerContext {
            pool: self.pool,
            record,
            event_id,
            attempt: retry::attempt_of(&record.headers),
            codec: self.codec,
            instance: self.instance,
        };
        Ok(match self.handler.handle(event, &ctx).await {
            Ok(mut handled) => {
                handled.outputs.iter_mut().for_each(stamp_send);
                Applied::Fresh { event_id, handled }
            }
            Err(HandlerError::Unavailable(e)) => {
                return Err(e.context(format!("handling {}", record_position(record))))
            }
            // Nothing is recorded as applied, so a later attempt (or an operator's replay)
            // runs the handler again; the record goes on, unchanged, to the chain's next stage.
            Err(HandlerError::Transient(e)) => self.forward(
                record,
                Failure {
                    class: FailureClass::Transient,
                    message: format!("{e:#}"),
                },
            ),
            Err(HandlerError::Permanent(e)) => self.forward(
                record,
                Failure {
                    class: FailureClass::Permanent,
                    message: format!("{e:#}"),
                },
            ),
        })
    }

    /// Routes a failed record to the next retry topic or the dead-letter topic, and logs it.
    fn forward(&self, record: &Record, failure: Failure) -> Applied<H::Effect> {
        let mut forward = self.policy.route(record, &failure, now_ms());
        let span = tracing::Span::current();
        span.record("error.type", failure.class.as_str());
        let outcome = match forward.destination {
            Destination::Retry { attempt, due_at_ms } => {
                tracing::warn!(error.type = failure.class.as_str(), error = %failure.message,
                    attempt, due_in_ms = due_at_ms - now_ms(), to = %forward.output.topic,
                    "processing failed; forwarding to the retry chain");
                Outcome::Retried
            }
            Destination::DeadLetter { attempt } => {
                tracing::error!(error.type = failure.class.as_str(), error = %failure.message,
                    attempt, to = %forward.output.topic, "processing failed; dead-lettering the record");
                Outcome::DeadLettered
            }
        };
        stamp_send(&mut forward.output);
        Applied::Forwarded {
            output: forward.output,
            outcome,
        }
    }

    /// Commits the database side of the batch's done records in one transaction: their ledger
    /// rows (one statement) and the handler's effects. Counts every committed record.
    async fn commit(
        &self,
        batch: &[Record],
        done: Vec<Option<Done<H::Effect>>>,
    ) -> anyhow::Result<Committed> {
        let (mut included, cut_short) = committed_prefix(batch, done);
        let entries: Vec<Entry<'_>> = included
            .iter()
            .filter_map(|(r, d)| match &d.applied {
                Applied::Fresh { event_id, handled } => Some(Entry {
                    event_id: *event_id,
                    record: r,
                    outputs: &handled.outputs,
                    state_keys: &handled.state_keys,
                }),
                _ => None,
            })
            .collect();
        if !entries.is_empty() {
            let mut tx = self.pool.begin().await?;
            let inserted = ledger::record(&mut tx, self.group, &entries).await?;
            let lost: Vec<Uuid> = entries
                .iter()
                .map(|e| e.event_id)
                .filter(|id| !inserted.contains(id))
                .collect();
            drop(entries);
            let mut winners = ledger::applied(&mut tx, self.group, &lost).await?;
            let mut effects = Vec::new();
            for (record, d) in &mut included {
                let Applied::Fresh { event_id, handled } = &mut d.applied else {
                    continue;
                };
                if inserted.contains(event_id) {
                    effects.extend(handled.effect.take());
                } else {
                    // A concurrent instance (a zombie before it was fenced) applied it first:
                    // its effects and outputs stand, ours are dropped.
                    d.applied = match winners.remove(event_id) {
                        Some(winner) => already_applied(record, winner),
                        None => Applied::Known {
                            outputs: Vec::new(),
                            state_keys: Vec::new(),
                            outcome: Outcome::Deduplicated,
                        },
                    };
                }
            }
            if !effects.is_empty() {
                self.handler
                    .commit(effects, &mut tx)
                    .await
                    .map_err(|e| anyhow::anyhow!("writing the batch's effects: {e}"))?;
            }
            tx.commit().await?;
        }

        let mut committed = Committed {
            outputs: Vec::new(),
            state_keys: BTreeSet::new(),
            records: Vec::with_capacity(included.len()),
            cut_short,
        };
        for (record, d) in included {
            let outcome = match d.applied {
                Applied::Fresh { handled, .. } => {
                    committed.outputs.extend(handled.outputs);
                    committed.state_keys.extend(handled.state_keys);
                    Outcome::Applied
                }
                Applied::Known {
                    outputs,
                    state_keys,
                    outcome,
                } => {
                    committed.outputs.extend(outputs);
                    committed.state_keys.extend(state_keys);
                    outcome
                }
                Applied::Forwarded { output, outcome } => {
                    committed.outputs.push(output);
                    outcome
                }
            };
            self.observe(record, outcome, d.took);
            committed.records.push(record.clone());
        }
        Ok(committed)
    }

    /// Counts a committed record in the loop's stats and metrics.
    fn observe(&self, record: &Record, outcome: Outcome, took: Duration) {
        let counter = match outcome {
            Outcome::Applied => &self.stats.records_applied,
            Outcome::Replayed => &self.stats.records_replayed,
            Outcome::Deduplicated => &self.stats.records_deduplicated,
            Outcome::Retried => &self.stats.records_retried,
            Outcome::DeadLettered => &self.stats.records_dead_lettered,
        };
        LoopStats::bump(counter);
        instruments::record(
            self.group,
            &record.topic,
            outcome,
            took,
            record.timestamp_ms,
        );
    }
}

/// The records whose offsets can commit: per partition, every record before the first one
/// left undone. A done record after an undone one of its partition is dropped with its
/// results (its offset cannot commit past the undone one); it is read and handled again.
fn committed_prefix<E>(
    batch: &[Record],
    done: Vec<Option<Done<E>>>,
) -> (Vec<(&Record, Done<E>)>, bool) {
    let mut cut: HashSet<(&str, i32)> = HashSet::new();
    let mut included = Vec::with_capacity(batch.len());
    for (record, d) in batch.iter().zip(done) {
        let partition = (record.topic.as_str(), record.partition);
        match d {
            Some(d) if !cut.contains(&partition) => included.push((record, d)),
            _ => {
                cut.insert(partition);
            }
        }
    }
    (included, !cut.is_empty())
}

/// What to produce for a record whose event was already applied.
///
/// The record that applied the event is the one whose transaction must carry the outputs:
/// redelivered (its transaction aborted after the database commit), it re-produces them.
/// Any other record with the same event id (the outbox relay publishing twice, a DLQ
/// replay, a producer outside our transactions sending it again) produces nothing: the
/// outputs are already committed, or will be with the original record.
fn already_applied<E>(record: &Record, applied: AppliedEvent) -> Applied<E> {
    let event_id = record.event_id();
    if applied.applied_by(record) {
        tracing::info!(%event_id, "event already applied; re-producing its recorded outputs");
        Applied::Known {
            outputs: applied.outputs,
            state_keys: applied.state_keys,
            outcome: Outcome::Replayed,
        }
    } else {
        let (topic, partition, offset) = &applied.position;
        tracing::info!(%event_id, applied_from = %format!("{topic}/{partition}/{offset}"),
            "event already applied from another record; skipping");
        Applied::Known {
            outputs: Vec::new(),
            state_keys: Vec::new(),
            outcome: Outcome::Deduplicated,
        }
    }
}

/// Stamps `output` with a PRODUCER span's trace context, so its consumer continues the trace.
fn stamp_send(output: &mut Output) {
    let key = output
        .key
        .as_deref()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .unwrap_or_default();
    output.headers.inject_send_context(&output.topic, &key);
}

fn record_position(record: &Record) -> String {
    format!("{}/{}/{}", record.topic, record.partition, record.offset)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done() -> Option<Done<()>> {
        Some(Done {
            applied: Applied::Known {
                outputs: Vec::new(),
                state_keys: Vec::new(),
                outcome: Outcome::Deduplicated,
            },
            took: Duration::ZERO,
        })
    }

    #[test]
    fn a_partition_commits_up_to_its_first_undone_record_and_others_are_untouched() {
        let batch = [
            Record::at("a", 0, 5),
            Record::at("a", 1, 9),
            Record::at("a", 0, 6),
            Record::at("a", 0, 7),
            Record::at("a", 1, 10),
        ];
        let (included, cut_short) =
            committed_prefix(&batch, vec![done(), done(), None, done(), done()]);
        let positions: Vec<(i32, i64)> = included
            .iter()
            .map(|(r, _)| (r.partition, r.offset))
            .collect();
        // a/0 stops before offset 6, so the done offset 7 is dropped too; a/1 commits whole.
        assert_eq!(positions, vec![(0, 5), (1, 9), (1, 10)]);
        assert!(cut_short);
        let (all, cut_short) = committed_prefix(&batch, (0..5).map(|_| done()).collect());
        assert_eq!(all.len(), 5);
        assert!(!cut_short);
    }

    #[test]
    fn only_the_record_that_applied_an_event_re_produces_its_outputs() {
        let out = Output::event("t", "k", vec![1], Uuid::nil(), "x.Y");
        let applied = AppliedEvent {
            position: ("a".into(), 0, 5),
            outputs: vec![out.clone()],
            state_keys: vec!["w".into()],
        };
        match already_applied::<()>(&Record::at("a", 0, 5), applied.clone()) {
            Applied::Known {
                outputs,
                state_keys,
                outcome,
            } => assert_eq!(
                (outputs, state_keys, outcome),
                (vec![out], vec!["w".to_string()], Outcome::Replayed)
            ),
            _ => panic!("not known"),
        }
        match already_applied::<()>(&Record::at("a", 0, 6), applied) {
            Applied::Known {
                outputs, outcome, ..
            } => assert_eq!((outputs.len(), outcome), (0, Outcome::Deduplicated)),
            _ => panic!("not known"),
        }
    }
}
