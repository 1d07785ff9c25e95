//! Interoperability with the `schema_registry_converter` crate, the client Rust producers and
//! consumers (paystream-core's Avro codec included) use.

use crate::helpers::{
    assert_error, spawn_app, PAYMENT_V1, PAYMENT_V1_REFORMATTED, PAYMENT_V2, PAYMENT_V3,
};
use apache_avro::types::Value as AvroValue;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::avro_common::get_supplied_schema;
use schema_registry_converter::schema_registry_common::SubjectNameStrategy;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Payment {
    id: String,
    amount_minor: i64,
}

#[tokio::test]
async fn schema_registry_converter_round_trip() {
    let app = spawn_app().await;
    let topic = "payments.requested.v1";
    let id = app.register_ok(&format!("{topic}-value"), PAYMENT_V1).await;

    let encoder = AvroEncoder::new(SrSettings::new(app.address.clone()));
    let payment = Payment {
        id: "pay_123".into(),
        amount_minor: 4200,
    };
    let strategy = SubjectNameStrategy::TopicNameStrategy(topic.to_string(), false);
    let bytes = encoder
        .encode_struct(payment.clone(), &strategy)
        .await
        .expect("encoding");
    assert_eq!(bytes[0], 0, "magic byte");
    assert_eq!(bytes[1..5], (id as u32).to_be_bytes(), "schema id");

    let decoder = AvroDecoder::new(SrSettings::new(app.address.clone()));
    let decoded = decoder.decode(Some(&bytes)).await.expect("decoding");
    assert!(matches!(decoded.value, AvroValue::Record(_)));
    let back: Payment = apache_avro::from_value(&decoded.value).expect("into Payment");
    assert_eq!(back, payment);

    // An encoder that registers its schema itself (POST with schemaType) gets the same id.
    let schema = apache_avro::Schema::parse_str(PAYMENT_V1_REFORMATTED).unwrap();
    let with_schema = SubjectNameStrategy::TopicNameStrategyWithSchema(
        topic.to_string(),
        false,
        get_supplied_schema(&schema),
    );
    let encoder = AvroEncoder::new(SrSettings::new(app.address.clone()));
    let again = encoder
        .encode_struct(payment, &with_schema)
        .await
        .expect("encoding with a supplied schema");
    assert_eq!(again, bytes);
    assert_eq!(app.versions(&format!("{topic}-value")).await, json!([1]));

    app.cleanup().await;
}

/// The registry calls schema_registry_converter offers, with their results and errors.
#[tokio::test]
async fn schema_registry_converter_calls() {
    use schema_registry_converter::async_impl::schema_registry::{
        get_all_subjects, get_all_versions, get_schema_by_id, get_schema_by_subject_and_version,
        is_compatible_schema, post_schema,
    };
    use schema_registry_converter::error::SRCError;
    use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};

    let app = spawn_app().await;
    let settings = SrSettings::new(app.address.clone());
    let supplied = |text: &str| SuppliedSchema::new(None, SchemaType::Avro, text.to_string());
    let subject = "converter-value".to_string();
    let error_text = |e: SRCError| {
        assert!(!e.retriable, "{e}");
        e.to_string()
    };

    let v1 = post_schema(&settings, subject.clone(), supplied(PAYMENT_V1))
        .await
        .expect("post_schema");
    let by_id = get_schema_by_id(v1.id, &settings).await.expect("by id");
    assert_eq!(
        (by_id.schema.as_str(), by_id.schema_type),
        (PAYMENT_V1, SchemaType::Avro)
    );

    assert!(
        is_compatible_schema(&settings, subject.clone(), supplied(PAYMENT_V2))
            .await
            .expect("compatibility of v2")
    );
    let v2 = post_schema(&settings, subject.clone(), supplied(PAYMENT_V2))
        .await
        .expect("post_schema v2");
    let latest = get_schema_by_subject_and_version(&settings, &subject, None)
        .await
        .expect("latest");
    assert_eq!((latest.id, latest.version), (v2.id, Some(2)));
    let first = get_schema_by_subject_and_version(&settings, &subject, Some(1))
        .await
        .expect("version 1");
    assert_eq!((first.id, first.schema.as_str()), (v1.id, PAYMENT_V1));
    assert_eq!(
        get_all_versions(&settings, subject.clone())
            .await
            .expect("versions"),
        vec![1, 2]
    );
    assert_eq!(
        get_all_subjects(&settings).await.expect("subjects"),
        vec![subject.clone()]
    );

    // A field without a default: BACKWARD refuses it, and says so to this client.
    let incompatible = PAYMENT_V3.replace(r#","default":null"#, "");
    assert!(
        !is_compatible_schema(&settings, subject.clone(), supplied(&incompatible))
            .await
            .expect("compatibility of an incompatible schema")
    );
    let refused = post_schema(&settings, subject.clone(), supplied(&incompatible))
        .await
        .expect_err("an incompatible schema registered");
    assert!(error_text(refused).contains("error_code: 409"));

    let missing = get_schema_by_id(999_999, &settings).await.unwrap_err();
    assert!(error_text(missing).contains("error_code: 40403"));
    let missing = get_schema_by_subject_and_version(&settings, &subject, Some(7))
        .await
        .unwrap_err();
    assert!(error_text(missing).contains("error_code: 40402"));
    let missing = get_all_versions(&settings, "nope-value".into())
        .await
        .unwrap_err();
    assert!(error_text(missing).contains("error_code: 40401"));
    let invalid = post_schema(&settings, subject.clone(), supplied(r#"{"type":"nope"}"#))
        .await
        .unwrap_err();
    assert!(error_text(invalid).contains("error_code: 42201"));
    app.cleanup().await;
}

/// The governance path: a consumer built against v1 of `PaymentRequested` (paystream-core's
/// struct and codec) decodes events a producer wrote with a v2 that adds an optional field,
/// and a v2 that removes a required field is refused with 409, also to the producer's
/// client, which therefore never sends such a record.
#[tokio::test]
async fn payment_requested_evolves_under_the_project_level() {
    use paystream_core::avro::{AvroCodec, AvroError};
    use paystream_core::events::{PaymentRequested, SchemaFile, PAYMENT_REQUESTED_SCHEMA};

    let app = spawn_app().await;
    let topic = "payments.requested.v1";
    let subject = format!("{topic}-value");
    // What `paystream schemas register` sets for the project's subjects.
    app.set_level(&format!("/config/{subject}"), "FULL_TRANSITIVE")
        .await;
    let codec = AvroCodec::new(&app.address);
    let v1_id = codec
        .register(topic, &PAYMENT_REQUESTED_SCHEMA)
        .await
        .expect("registering v1");

    let mut v2: Value = serde_json::from_str(PAYMENT_REQUESTED_SCHEMA.avsc).unwrap();
    v2["fields"].as_array_mut().unwrap().push(json!({
        "name": "risk_score", "type": ["null", "int"], "default": null,
        "doc": "Fraud score, when one was computed."
    }));
    let v2_id = app.register_ok(&subject, &v2.to_string()).await;
    assert_ne!(i64::from(v1_id), v2_id);

    // A v2 producer: encodes with the subject's latest schema, v2.
    let event = PaymentRequested {
        event_id: "evt_1".into(),
        payment_id: "pay_1".into(),
        client_id: "client_1".into(),
        merchant_id: "m_1".into(),
        customer_id: "c_1".into(),
        amount_minor: 1999,
        currency: "EUR".into(),
        payment_method: "card".into(),
        requested_at: 1_700_000_000_000,
        customer_email: None,
    };
    let encoder = AvroEncoder::new(SrSettings::new(app.address.clone()));
    let bytes = encoder
        .encode(
            vec![
                ("event_id", AvroValue::String(event.event_id.clone())),
                ("payment_id", AvroValue::String(event.payment_id.clone())),
                ("client_id", AvroValue::String(event.client_id.clone())),
                ("merchant_id", AvroValue::String(event.merchant_id.clone())),
                ("customer_id", AvroValue::String(event.customer_id.clone())),
                ("amount_minor", AvroValue::Long(event.amount_minor)),
                ("currency", AvroValue::String(event.currency.clone())),
                (
                    "payment_method",
                    AvroValue::String(event.payment_method.clone()),
                ),
                (
                    "requested_at",
                    AvroValue::TimestampMillis(event.requested_at),
                ),
                (
                    "customer_email",
                    AvroValue::Union(0, Box::new(AvroValue::Null)),
                ),
                (
                    "risk_score",
                    AvroValue::Union(1, Box::new(AvroValue::Int(17))),
                ),
            ],
            SubjectNameStrategy::TopicNameStrategy(topic.to_string(), false),
        )
        .await
        .expect("encoding a v2 event");
    assert_eq!(bytes[1..5], (v2_id as u32).to_be_bytes(), "written with v2");

    // The v1 consumer.
    let decoded: PaymentRequested = codec.decode(Some(&bytes)).await.expect("v1 decodes v2");
    assert_eq!(decoded, event);

    // v2 without the required customer_id: old consumers could not fill it in.
    let mut removed: Value = serde_json::from_str(PAYMENT_REQUESTED_SCHEMA.avsc).unwrap();
    removed["fields"]
        .as_array_mut()
        .unwrap()
        .retain(|f| f["name"] != "customer_id");
    let refused = assert_error(app.register(&subject, &removed.to_string()).await, 409, 409).await;
    let message = refused["message"].as_str().unwrap();
    assert!(
        message.contains("READER_FIELD_MISSING_DEFAULT_VALUE") && message.contains("customer_id"),
        "{message}"
    );
    let file = SchemaFile {
        name: "payments.requested.v1",
        full_name: "io.paystream.payments.v1.PaymentRequested",
        avsc: Box::leak(removed.to_string().into_boxed_str()),
    };
    let producer_side = codec.register(topic, &file).await;
    assert!(
        matches!(&producer_side, Err(e @ AvroError::Encode(_)) if !e.is_transient()),
        "{producer_side:?}"
    );
    assert_eq!(app.versions(&subject).await, json!([1, 2]));
    app.cleanup().await;
}
