//! Criterion micro-benchmarks of the CPU work per payment (no network, no disk):
//!
//! - `avro/*`: Confluent-framed Avro encode and decode of each event;
//! - `gateway/*`: request body parsing + validation, the request fingerprint, the
//!   Idempotency-Key header parse;
//! - `headers/*`: record headers to and from librdkafka's form, deterministic event ids;
//! - `processing/per_record_cpu`: what the processing loop does per record apart from I/O —
//!   copy the consumed record, read its event id, decode the request, build and encode the
//!   outcome, wrap it as an output, serialise the outputs for the `processed_events` ledger,
//!   and build the produce headers. (The PSP call, the Postgres transaction and the Kafka
//!   produce are I/O and are measured by the load generator's processor stage instead.)
//!
//! Run: `cargo bench -p paystream-benches` (or `make bench`, which also runs the load suite).

use std::hint::black_box;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use paystream_benches::{payment_outcome, payment_requested, succeeded, AvroFixture, PAYMENT_BODY};
use paystream_core::events::{
    self, PaymentOutcome, PaymentRequested, Step, PAYMENT_OUTCOME_SCHEMA, PAYMENT_REQUESTED_SCHEMA,
};
use paystream_core::headers::{self, RecordHeaders};
use paystream_core::processing::{Output, Record};
use paystream_gateway::domain::PaymentRequestBody;
use paystream_gateway::idempotency;
use rdkafka::message::{Headers, OwnedHeaders};
use uuid::Uuid;

const MAX_AMOUNT: i64 = 100_000_000;

fn avro(c: &mut Criterion) {
    let requested = AvroFixture::new(&PAYMENT_REQUESTED_SCHEMA, 1);
    let outcome = AvroFixture::new(&PAYMENT_OUTCOME_SCHEMA, 2);
    let req = payment_requested();
    let out = payment_outcome();
    let req_bytes = requested.encode(&req);
    let out_bytes = outcome.encode(&out);

    let mut g = c.benchmark_group("avro");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode/PaymentRequested", |b| {
        b.iter(|| requested.encode(black_box(&req)))
    });
    g.bench_function("decode/PaymentRequested", |b| {
        b.iter(|| requested.decode::<PaymentRequested>(black_box(&req_bytes)))
    });
    g.bench_function("encode/PaymentOutcome", |b| {
        b.iter(|| outcome.encode(black_box(&out)))
    });
    g.bench_function("decode/PaymentOutcome", |b| {
        b.iter(|| outcome.decode::<PaymentOutcome>(black_box(&out_bytes)))
    });
    g.finish();
}

fn gateway(c: &mut Criterion) {
    let mut g = c.benchmark_group("gateway");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_and_validate_body", |b| {
        b.iter(|| {
            serde_json::from_str::<PaymentRequestBody>(black_box(PAYMENT_BODY))
                .expect("valid JSON")
                .validate(MAX_AMOUNT)
        })
    });
    let request = serde_json::from_str::<PaymentRequestBody>(PAYMENT_BODY)
        .expect("valid JSON")
        .validate(MAX_AMOUNT)
        .expect("a valid request");
    g.bench_function("fingerprint", |b| {
        b.iter(|| black_box(&request).fingerprint())
    });
    let mut headers = HeaderMap::new();
    headers.insert(
        idempotency::HEADER,
        HeaderValue::from_static("\"3f2b8c1e-load-000042\""),
    );
    g.bench_function("parse_idempotency_key", |b| {
        b.iter(|| idempotency::parse_key(black_box(&headers)))
    });
    g.finish();
}

fn sample_headers() -> RecordHeaders {
    let req = payment_requested();
    let mut h = RecordHeaders::default();
    h.set(headers::EVENT_ID, req.event_id);
    h.set(headers::EVENT_TYPE, PAYMENT_REQUESTED_SCHEMA.full_name);
    h.set(
        headers::TRACEPARENT,
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    );
    h
}

fn header_codec(c: &mut Criterion) {
    let h = sample_headers();
    let kafka = h.to_kafka();
    let payment_id = Uuid::parse_str(&payment_requested().payment_id).expect("a uuid");
    let mut g = c.benchmark_group("headers");
    g.throughput(Throughput::Elements(1));
    g.bench_function("to_kafka", |b| b.iter(|| black_box(&h).to_kafka()));
    g.bench_function("from_kafka", |b| {
        b.iter(|| RecordHeaders::from_kafka(Some(black_box(kafka.as_borrowed()))))
    });
    g.bench_function("event_id_v5", |b| {
        b.iter(|| events::event_id(black_box(payment_id), Step::Outcome))
    });
    g.finish();
}

/// A consumed record as librdkafka hands it over: borrowed bytes and headers.
struct Consumed {
    key: Vec<u8>,
    payload: Vec<u8>,
    headers: OwnedHeaders,
}

fn processing(c: &mut Criterion) {
    let requested = AvroFixture::new(&PAYMENT_REQUESTED_SCHEMA, 1);
    let outcome_codec = AvroFixture::new(&PAYMENT_OUTCOME_SCHEMA, 2);
    let req = payment_requested();
    let consumed = Consumed {
        key: req.payment_id.clone().into_bytes(),
        payload: requested.encode(&req),
        headers: sample_headers().to_kafka(),
    };
    assert_eq!(consumed.headers.count(), 3);
    let topic = "payments.outcomes.v1";

    let mut g = c.benchmark_group("processing");
    g.throughput(Throughput::Elements(1));
    g.bench_function("per_record_cpu", |b| {
        b.iter(|| {
            let m = black_box(&consumed);
            let record = Record {
                topic: "payments.requested.v1".into(),
                partition: 3,
                offset: 12_345,
                timestamp_ms: Some(1_795_000_000_000),
                key: Some(m.key.clone()),
                payload: Some(m.payload.clone()),
                headers: RecordHeaders::from_kafka(Some(m.headers.as_borrowed())),
            };
            let _event_id = record.event_id();
            let event: PaymentRequested = requested
                .decode(record.payload.as_deref().unwrap_or_default())
                .expect("decodable");
            let outcome = succeeded(event);
            let outcome_id = Uuid::parse_str(&outcome.event_id).expect("a uuid");
            let value = outcome_codec.encode(&outcome);
            let outputs = vec![Output::event(
                topic,
                &outcome.payment_id,
                value,
                outcome_id,
                PAYMENT_OUTCOME_SCHEMA.full_name,
            )];
            let stored = serde_json::to_value(&outputs).expect("serialisable");
            let kafka_headers: Vec<OwnedHeaders> =
                outputs.iter().map(|o| o.headers.to_kafka()).collect();
            (stored, kafka_headers)
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    // Short but stable runs: the whole set finishes in about a minute.
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = avro, gateway, header_codec, processing
}
criterion_main!(benches);
