//! The `analytics` consumer group: payment statistics per merchant × currency × time window
//! (1-minute tumbling windows by event time and a UTC-day rollup), kept in Postgres and
//! published as full window state, with a monotonic revision, to the compacted
//! `analytics.payment-stats.v1`.
//!
//! Business logic only: the transactional loop, dedupe, retries and dead-lettering come from
//! [`paystream_core::processing`].
//!
//! - [`startup`]: settings, [`Application::build`] / [`Application::run_until_stopped`].
//! - [`handler`]: `PaymentRequested` / `PaymentOutcome` → facts → window deltas → records.
//! - [`facts`]: the payment facts, and which of a batch's facts are new (counted once).
//! - [`windows`]: window boundaries and keys, the deltas applied in SQL, the stored state.
//! - [`sketch`]: the mergeable latency histogram the percentiles are read from.

pub mod facts;
pub mod handler;
pub mod sketch;
pub mod startup;
pub mod windows;

pub use startup::{AnalyticsSection, AnalyticsSettings, Application, Settings};
