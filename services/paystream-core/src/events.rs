//! Event contracts: Rust mirrors of the Avro schemas in `schemas/`, and deterministic ids.
//!
//! Every event carries an `event_id` derived from its cause (UUIDv5 of payment id + step), so
//! reprocessing the same cause yields the same id and consumers can dedupe on it.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Namespace for paystream's UUIDv5 event ids. Never change it: ids would stop matching.
pub const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6a0b_5f3e_8c1d_4e27_9b52_3d7f_1e04_a9c6);

/// A step in a payment's life that produces exactly one event.
#[derive(Debug, Clone, Copy)]
pub enum Step {
    Requested,
    Outcome,
}

impl Step {
    fn as_str(self) -> &'static str {
        match self {
            Step::Requested => "requested",
            Step::Outcome => "outcome",
        }
    }
}

/// The deterministic id of the event `step` emits for `payment_id`.
pub fn event_id(payment_id: Uuid, step: Step) -> Uuid {
    Uuid::new_v5(
        &EVENT_ID_NAMESPACE,
        format!("{payment_id}/{}", step.as_str()).as_bytes(),
    )
}

/// A schema file shipped with the services, registered under `<topic>-value`.
pub struct SchemaFile {
    pub name: &'static str,
    /// The record's full name, sent as the `event_type` header.
    pub full_name: &'static str,
    pub avsc: &'static str,
}

pub const PAYMENT_REQUESTED_SCHEMA: SchemaFile = SchemaFile {
    name: "payments.requested.v1",
    full_name: "io.paystream.payments.v1.PaymentRequested",
    avsc: include_str!("../../../schemas/payments.requested.v1.avsc"),
};

pub const PAYMENT_OUTCOME_SCHEMA: SchemaFile = SchemaFile {
    name: "payments.outcomes.v1",
    full_name: "io.paystream.payments.v1.PaymentOutcome",
    avsc: include_str!("../../../schemas/payments.outcomes.v1.avsc"),
};

pub const PAYMENT_STATS_SCHEMA: SchemaFile = SchemaFile {
    name: "analytics.payment-stats.v1",
    full_name: "io.paystream.analytics.v1.PaymentStats",
    avsc: include_str!("../../../schemas/analytics.payment-stats.v1.avsc"),
};

pub const NOTIFICATION_SENT_SCHEMA: SchemaFile = SchemaFile {
    name: "notifications.sent.v1",
    full_name: "io.paystream.notifications.v1.NotificationSent",
    avsc: include_str!("../../../schemas/notifications.sent.v1.avsc"),
};

/// Value of `payments.requested.v1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentRequested {
    pub event_id: String,
    pub payment_id: String,
    pub client_id: String,
    pub merchant_id: String,
    pub customer_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub payment_method: String,
    /// Epoch milliseconds (Avro `timestamp-millis`).
    pub requested_at: i64,
    /// Where the outcome e-mail goes; absent in records written before the field existed.
    #[serde(default)]
    pub customer_email: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutcomeStatus {
    Succeeded,
    Failed,
}

impl OutcomeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeStatus::Succeeded => "SUCCEEDED",
            OutcomeStatus::Failed => "FAILED",
        }
    }
}

/// Value of `payments.outcomes.v1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentOutcome {
    pub event_id: String,
    pub payment_id: String,
    pub merchant_id: String,
    pub customer_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub status: OutcomeStatus,
    pub failure_reason: Option<String>,
    pub psp_charge_id: Option<String>,
    pub requested_at: i64,
    pub decided_at: i64,
}

/// Value of `analytics.payment-stats.v1`: the full state of one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentStats {
    pub event_id: String,
    pub merchant_id: String,
    pub currency: String,
    /// `minute` or `day`.
    pub granularity: String,
    pub window_start: i64,
    pub window_end: i64,
    pub requested_count: i64,
    pub requested_amount_minor: i64,
    pub succeeded_count: i64,
    pub succeeded_amount_minor: i64,
    pub failed_count: i64,
    pub failed_by_reason: std::collections::HashMap<String, i64>,
    pub success_rate: Option<f64>,
    pub latency_p50_ms: Option<i64>,
    pub latency_p95_ms: Option<i64>,
    pub latency_p99_ms: Option<i64>,
    /// Bumped by every update of the window; 0 in records written before revisions existed.
    #[serde(default)]
    pub revision: i64,
}

/// Value of `notifications.sent.v1`: one delivered notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotificationSent {
    pub event_id: String,
    pub source_event_id: String,
    pub payment_id: String,
    pub merchant_id: String,
    /// `webhook` or `email`.
    pub channel: String,
    pub target: String,
    pub attempts: i32,
    pub in_doubt_resends: i32,
    pub delivered_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_deterministic_and_distinct_per_step() {
        let p = Uuid::parse_str("0192f0c4-7a3e-7c4d-9a31-6c1f2e3d4b5a").unwrap();
        assert_eq!(event_id(p, Step::Outcome), event_id(p, Step::Outcome));
        assert_ne!(event_id(p, Step::Outcome), event_id(p, Step::Requested));
        assert_eq!(event_id(p, Step::Outcome).get_version_num(), 5);
    }

    #[test]
    fn shipped_schemas_parse() {
        for s in [
            PAYMENT_REQUESTED_SCHEMA,
            PAYMENT_OUTCOME_SCHEMA,
            PAYMENT_STATS_SCHEMA,
            NOTIFICATION_SENT_SCHEMA,
        ] {
            let parsed = apache_avro::Schema::parse_str(s.avsc)
                .unwrap_or_else(|e| panic!("{}: {e}", s.name));
            let apache_avro::Schema::Record(record) = parsed else {
                panic!("{} is not a record", s.name)
            };
            assert_eq!(record.name.fullname(None), s.full_name);
        }
    }
}
