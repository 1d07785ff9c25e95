//! `paystream-load`: the load generator and benchmark suite.
//!
//! It drives `POST /v1/payments` on a running stack, measures HTTP latency and the end-to-end
//! time until each payment's outcome is on `payments.outcomes.v1`, measures the machine's own
//! ceilings in the same run (bare HTTP handler, Postgres commit, Kafka produce with
//! `acks=all`), measures the payment processor's throughput on a pre-filled topic, and writes
//! a report (terminal table, JSON, Markdown, PNG plots).
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
//! - [`processor`]: the payment-processor stage on its own (in-process, isolated topics).
//! - [`psp`]: sets the PSP simulator's fault mix for a run and restores it afterwards.
//! - [`machine`]: what the numbers were measured on (CPU, memory, load average, commit).
//! - [`report`]: the report model, tables (terminal, Markdown), JSON, plots, and the verdicts
//!   against the targets; [`suite`]: the whole `make bench` sequence.

pub mod cli;
pub mod driver;
pub mod e2e;
pub mod machine;
pub mod probes;
pub mod processor;
pub mod psp;
pub mod recorder;
pub mod report;
pub mod run;
pub mod schedule;
pub mod suite;
pub mod workload;
