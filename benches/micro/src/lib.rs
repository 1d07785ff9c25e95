//! Fixtures for the criterion micro-benchmarks in `benches/micro.rs`.
//!
//! The benchmarks measure CPU, not I/O: Avro is encoded and decoded with `apache-avro`
//! directly against the shipped schemas, the way `schema_registry_converter` does it once a
//! schema is cached (resolved schema reused, serde straight to the writer), with the Confluent
//! framing (magic byte 0, 4-byte big-endian schema id) added and checked by hand. No registry
//! and no broker are involved.

use apache_avro::schema::ResolvedSchema;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::{reader::datum::GenericDatumReader, Schema};
use paystream_core::events::{
    self, OutcomeStatus, PaymentOutcome, PaymentRequested, SchemaFile, Step,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

/// A shipped schema, parsed and resolved once, with the id a registry would have given it.
pub struct AvroFixture {
    schema: &'static Schema,
    resolved: ResolvedSchema<'static>,
    id: u32,
}

impl AvroFixture {
    pub fn new(file: &SchemaFile, id: u32) -> Self {
        let schema = Schema::parse_str(file.avsc).expect("the shipped schemas parse");
        // Leaked once per fixture, like the converter's cache that lives for the process.
        let schema: &'static Schema = Box::leak(Box::new(schema));
        let resolved = ResolvedSchema::try_from(schema).expect("the shipped schemas resolve");
        Self {
            schema,
            resolved,
            id,
        }
    }

    /// `value` in the Confluent wire format.
    pub fn encode<T: Serialize>(&self, value: &T) -> Vec<u8> {
        let body = GenericDatumWriter::builder(self.schema)
            .resolved_schemata(self.resolved.clone())
            .build()
            .and_then(|w| w.write_ser_to_vec(value))
            .expect("the value fits its schema");
        let mut framed = Vec::with_capacity(5 + body.len());
        framed.push(0);
        framed.extend_from_slice(&self.id.to_be_bytes());
        framed.extend_from_slice(&body);
        framed
    }

    /// A Confluent-framed value back into `T`; `None` when the framing or body is wrong.
    pub fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Option<T> {
        if paystream_core::avro::schema_id(bytes)? != self.id {
            return None;
        }
        let value = GenericDatumReader::builder(self.schema)
            .resolved_writer_schemata(self.resolved.clone())
            .build()
            .and_then(|r| r.read_value(&mut &bytes[5..]))
            .ok()?;
        apache_avro::from_value(&value).ok()
    }
}

/// A typical `PaymentRequested`, as the gateway builds it.
pub fn payment_requested() -> PaymentRequested {
    let payment_id = Uuid::from_u128(0x0192_f0c4_7a3e_7c4d_9a31_6c1f_2e3d_4b5a);
    PaymentRequested {
        event_id: events::event_id(payment_id, Step::Requested).to_string(),
        payment_id: payment_id.to_string(),
        client_id: "anonymous".into(),
        merchant_id: "m_42".into(),
        customer_id: "c_1234567".into(),
        amount_minor: 1999,
        currency: "EUR".into(),
        payment_method: "card".into(),
        customer_email: None,
        requested_at: 1_795_000_000_000,
    }
}

/// The `PaymentOutcome` the processor emits for [`payment_requested`].
pub fn payment_outcome() -> PaymentOutcome {
    succeeded(payment_requested())
}

/// The successful outcome of `req`, built as the payment processor's handler builds it.
pub fn succeeded(req: PaymentRequested) -> PaymentOutcome {
    let payment_id = Uuid::parse_str(&req.payment_id).expect("a valid uuid");
    PaymentOutcome {
        event_id: events::event_id(payment_id, Step::Outcome).to_string(),
        payment_id: req.payment_id,
        merchant_id: req.merchant_id,
        customer_id: req.customer_id,
        amount_minor: req.amount_minor,
        currency: req.currency,
        status: OutcomeStatus::Succeeded,
        failure_reason: None,
        psp_charge_id: Some("ch_0192f0c47a3e7c4d".into()),
        requested_at: req.requested_at,
        decided_at: req.requested_at + 42,
    }
}

/// The body of a valid `POST /v1/payments`.
pub const PAYMENT_BODY: &str = r#"{"merchant_id":"m_42","amount_minor":1999,"currency":"EUR","customer_id":"c_1234567","payment_method":"card"}"#;

#[cfg(test)]
mod tests {
    use super::*;
    use paystream_core::events::{PAYMENT_OUTCOME_SCHEMA, PAYMENT_REQUESTED_SCHEMA};

    #[test]
    fn events_round_trip_through_the_wire_format() {
        let requested = AvroFixture::new(&PAYMENT_REQUESTED_SCHEMA, 7);
        let bytes = requested.encode(&payment_requested());
        assert_eq!(&bytes[..5], &[0, 0, 0, 0, 7]);
        assert_eq!(
            requested.decode::<PaymentRequested>(&bytes),
            Some(payment_requested())
        );

        let outcome = AvroFixture::new(&PAYMENT_OUTCOME_SCHEMA, 8);
        let bytes = outcome.encode(&payment_outcome());
        assert_eq!(
            outcome.decode::<PaymentOutcome>(&bytes),
            Some(payment_outcome())
        );
        // Another schema id, or no framing, is refused rather than misread.
        assert_eq!(requested.decode::<PaymentRequested>(&bytes), None);
        assert_eq!(outcome.decode::<PaymentOutcome>(&bytes[5..]), None);
    }
}
