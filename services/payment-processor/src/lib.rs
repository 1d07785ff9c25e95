//! The `payment-processor` consumer group: executes each requested payment at the PSP and
//! emits its outcome, effectively once.
//!
//! Business logic only: the transactional loop, dedupe and dead-lettering come from
//! [`paystream_core::processing`].
//!
//! - [`startup`]: settings, [`Application::build`] / [`Application::run_until_stopped`].
//! - [`handler`]: `PaymentRequested` → PSP charge → state transition → `PaymentOutcome`.
//! - [`psp`]: the HTTP adapter toward the payment service provider.

pub mod handler;
pub mod psp;
pub mod startup;

pub use startup::{Application, ProcessorSection, Settings};
