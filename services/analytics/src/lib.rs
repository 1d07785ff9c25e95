//! The `analytics` consumer group: payment statistics per merchant × currency × time window
//! (1-minute tumbling windows by event time and a UTC-day rollup), kept in Postgres and
//! published as full window state to the compacted `analytics.payment-stats.v1`.
//!
//! Business logic only: the transactional loop, dedupe, retries and dead-lettering come from
//! [`paystream_core::processing`].
//!
//! - [`startup`]: settings, [`Application::build`] / [`Application::run_until_stopped`].
//! - [`handler`]: `PaymentRequested` / `PaymentOutcome` → payment facts → window upserts.
//! - [`windows`]: window boundaries and keys, and the window recomputation in SQL.

pub mod handler;
pub mod startup;
pub mod windows;

pub use startup::{AnalyticsSection, AnalyticsSettings, Application, Settings};
