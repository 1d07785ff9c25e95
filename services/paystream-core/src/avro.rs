//! Avro in the Confluent wire format (magic byte 0, 4-byte big-endian schema id, Avro binary),
//! through `schema_registry_converter` against a Confluent-compatible Schema Registry.
//!
//! Subjects follow TopicNameStrategy (`<topic>-value`). Encoding registers the shipped schema
//! under the subject on first use (like Confluent's `auto.register.schemas`), so a producer
//! never sends a record whose schema the registry rejected: a rejection is an encode error.

use std::time::Duration;

use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::{post_schema, SrSettings};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::events::SchemaFile;

#[derive(Debug, thiserror::Error)]
pub enum AvroError {
    /// The registry could not be reached or answered 5xx: worth retrying.
    #[error("schema registry unavailable: {0}")]
    RegistryUnavailable(SRCError),
    /// The bytes are not a Confluent-framed Avro record of a known schema (poison).
    #[error("undecodable record: {0}")]
    Undecodable(String),
    /// The value does not fit the schema, or the registry rejected the schema.
    #[error("avro encoding failed: {0}")]
    Encode(SRCError),
}

impl AvroError {
    pub fn is_transient(&self) -> bool {
        matches!(self, AvroError::RegistryUnavailable(_))
    }
}

fn sr_settings(registry_url: &str) -> SrSettings {
    SrSettings::new_builder(registry_url.to_string())
        .set_timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .unwrap_or_else(|_| SrSettings::new(registry_url.to_string()))
}

fn supplied(schema: &SchemaFile) -> SuppliedSchema {
    SuppliedSchema::new(None, SchemaType::Avro, schema.avsc.to_string())
}

/// The subject a topic's values are registered under (TopicNameStrategy).
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}

/// Encodes and decodes record values; caches schemas by subject and id.
pub struct AvroCodec {
    encoder: AvroEncoder,
    decoder: AvroDecoder,
    registry_url: String,
}

impl AvroCodec {
    pub fn new(registry_url: &str) -> Self {
        Self {
            encoder: AvroEncoder::new(sr_settings(registry_url)),
            decoder: AvroDecoder::new(sr_settings(registry_url)),
            registry_url: registry_url.to_string(),
        }
    }

    pub fn registry_url(&self) -> &str {
        &self.registry_url
    }

    /// Registers `schema` under `<topic>-value` (idempotent) and returns its global id.
    pub async fn register(&self, topic: &str, schema: &SchemaFile) -> Result<u32, AvroError> {
        post_schema(
            &sr_settings(&self.registry_url),
            value_subject(topic),
            supplied(schema),
        )
        .await
        .map(|registered| registered.id)
        .map_err(classify_src)
    }

    /// Encodes `value` for `topic` with the shipped `schema`.
    pub async fn encode<T: Serialize>(
        &self,
        topic: &str,
        schema: &SchemaFile,
        value: &T,
    ) -> Result<Vec<u8>, AvroError> {
        let strategy =
            SubjectNameStrategy::TopicNameStrategyWithSchema(topic.into(), false, supplied(schema));
        self.encoder
            .encode_struct(value, &strategy)
            .await
            .map_err(|e| {
                if e.retriable {
                    self.encoder.remove_errors_from_cache();
                }
                classify_src(e)
            })
    }

    /// Decodes a Confluent-framed value into `T`.
    pub async fn decode<T: DeserializeOwned>(&self, bytes: Option<&[u8]>) -> Result<T, AvroError> {
        let value = self.decode_value(bytes).await?;
        apache_avro::from_value::<T>(&value)
            .map_err(|e| AvroError::Undecodable(format!("value does not match the event: {e}")))
    }

    /// Decodes a Confluent-framed value into JSON (for operator tools).
    pub async fn decode_json(&self, bytes: Option<&[u8]>) -> Result<serde_json::Value, AvroError> {
        let value = self.decode_value(bytes).await?;
        serde_json::Value::try_from(value)
            .map_err(|e| AvroError::Undecodable(format!("value has no JSON form: {e}")))
    }

    async fn decode_value(
        &self,
        bytes: Option<&[u8]>,
    ) -> Result<apache_avro::types::Value, AvroError> {
        match bytes {
            None => Err(AvroError::Undecodable("record has no value".into())),
            Some(b) if b.len() < 5 || b[0] != 0 => Err(AvroError::Undecodable(
                "not in the Confluent wire format (magic byte 0 + 4-byte schema id)".into(),
            )),
            Some(b) => self
                .decoder
                .decode(Some(b))
                .await
                .map(|r| r.value)
                .map_err(|e| {
                    if e.retriable {
                        self.decoder.remove_errors_from_cache();
                        AvroError::RegistryUnavailable(e)
                    } else {
                        AvroError::Undecodable(e.to_string())
                    }
                }),
        }
    }
}

fn classify_src(e: SRCError) -> AvroError {
    if e.retriable {
        AvroError::RegistryUnavailable(e)
    } else {
        AvroError::Encode(e)
    }
}

/// The schema id of a Confluent-framed value, if it is framed.
pub fn schema_id(bytes: &[u8]) -> Option<u32> {
    (bytes.len() >= 5 && bytes[0] == 0)
        .then(|| u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_schema_id_of_framed_values_only() {
        assert_eq!(schema_id(&[0, 0, 0, 1, 2, 42]), Some(258));
        assert_eq!(schema_id(&[1, 0, 0, 1, 2, 42]), None);
        assert_eq!(schema_id(&[0, 0, 0]), None);
    }
}
