//! Fake counterparts the services talk to: a webhook receiver that verifies signatures and an
//! SMTP server that keeps what it received. Both are real servers on 127.0.0.1.

mod smtp;
mod webhook;

pub use smtp::{SmtpMessage, SmtpSink};
pub use webhook::{WebhookDelivery, WebhookReceiver};
