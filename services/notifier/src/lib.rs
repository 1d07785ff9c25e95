//! The `notifier` consumer group: for each payment outcome, a signed webhook to the merchant
//! and an e-mail to the customer, each at most once per outcome event and channel, with a
//! `notifications.sent.v1` receipt produced in the loop's transaction.
//!
//! Business logic only: the transactional loop, dedupe, retries and dead-lettering come from
//! [`paystream_core::processing`].
//!
//! - [`startup`]: settings, [`Application::build`] / [`Application::run_until_stopped`].
//! - [`handler`]: outcome → channels → receipts.
//! - [`deliveries`]: the (event, channel) claim ledger, leased per instance, that keeps sends
//!   at most once.
//! - [`limits`]: concurrent sends per target host.
//! - [`webhook`]: the webhook body and its HTTP delivery; [`signature`]: its HMAC scheme.
//! - [`guard`]: the SSRF guard on webhook targets.
//! - [`email`]: the e-mail template and SMTP delivery.

pub mod deliveries;
pub mod email;
pub mod guard;
pub mod handler;
pub mod limits;
pub mod signature;
pub mod startup;
pub mod webhook;

pub use startup::{Application, NotifierSection, NotifierSettings, Settings};
