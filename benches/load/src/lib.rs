//! `paystream-load`: the load generator and benchmark suite.
//!
//! It measures the targets of `make bench` on service processes it starts itself from the
//! measured build profile (release), against the running broker, Postgres and schema registry:
//! the payment processor, analytics and the notifier draining pre-filled topics (committed
//! offsets), the gateway under load, and the whole pipeline end to end (each payment's time
//! until its outcome is committed). It measures the machine's own ceilings in the same run
//! (bare HTTP handler, Postgres commit, Kafka produce with `acks=all`) and writes a report
//! (terminal tables, JSON with a `targets` array, Markdown, PNG plots). `run` drives a
//! running gateway (the shared stack's) on its own.
//!
//! Layout:
//! - [`cli`]: command-line flags (every address also from the `PAYSTREAM_*` environment).
//! - [`workload`]: what a request looks like: merchant/currency mix, amounts, idempotency keys.
//! - [`schedule`]: when requests are sent: open model (by the clock, no coordinated omission)
//!   or closed model (fixed concurrency, as fast as answers come back).
//! - [`driver`]: the HTTP client that sends one request and classifies its answer.
//! - [`recorder`]: HDR histograms, per-second series and status counts of a run.
//! - [`e2e`]: subscribes to outcome topics and matches records to send times by payment id.
//! - [`run`]: one load run: schedule + driver + recorder + e2e tracker + progress bar.
//! - [`probes`]: the ceiling probes.
//! - [`services`]: the service processes a stage starts, from the measured build profile.
//! - [`scratch`]: a stage's scratch world (topics, schema, pre-fill, committed offsets).
//! - [`stages`]: the stages behind the targets (drains, gateway, end to end).
//! - [`webhook`]: the merchants' webhook endpoint of the notifier stages.
//! - [`processor`]: the payment-processor sweep (instances × batch size, latency).
//! - [`psp`]: sets the PSP simulator's fault mix for a run and restores it afterwards.
//! - [`perf`]: `perf` profiles of the services during a stage, for a missed target's reason.
//! - [`machine`]: what the numbers were measured on (CPU, memory, load average, commit).
//! - [`report`]: the report model, tables (terminal, Markdown), JSON, plots, and the verdicts
//!   against the targets; [`suite`]: the whole `make bench` sequence.

pub mod cli;
pub mod driver;
pub mod e2e;
pub mod machine;
pub mod perf;
pub mod probes;
pub mod processor;
pub mod psp;
pub mod recorder;
pub mod report;
pub mod run;
pub mod schedule;
pub mod scratch;
pub mod services;
pub mod stages;
pub mod suite;
pub mod webhook;
pub mod workload;
