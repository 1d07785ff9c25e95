//! The registry's domain: schema types, schema identity, versions and subject names.
//!
//! Pure logic, no I/O: everything here is unit tested.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

use apache_avro::Schema;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The schema types this registry stores. Confluent also knows `PROTOBUF` and `JSON`; they are
/// refused at registration with a clear message rather than stored unvalidated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaType {
    Avro,
}

impl SchemaType {
    /// `None` (the field absent) means AVRO, as in Confluent's API.
    pub fn parse(raw: Option<&str>) -> Result<Self, SchemaError> {
        match raw {
            None => Ok(Self::Avro),
            Some(s) if s.eq_ignore_ascii_case("AVRO") => Ok(Self::Avro),
            Some(other) => Err(SchemaError::UnsupportedType(other.to_string())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Avro => "AVRO",
        }
    }

    /// Every supported type, for `GET /schemas/types`.
    pub const ALL: [SchemaType; 1] = [SchemaType::Avro];
}

impl fmt::Display for SchemaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SchemaError {
    #[error("Schema type {0} is not supported; this registry supports AVRO only")]
    UnsupportedType(String),
    #[error("Schema references are not supported by this registry")]
    ReferencesUnsupported,
    #[error("Invalid schema: the schema is empty")]
    Empty,
    #[error("Invalid schema: {0}")]
    InvalidAvro(String),
}

/// A validated schema with the identity the store deduplicates on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedSchema {
    pub schema_type: SchemaType,
    /// The text as the client sent it; what the registry hands back.
    pub text: String,
    /// The normalized form that [`ParsedSchema::fingerprint`] is computed over.
    pub canonical_form: String,
    /// sha256 (hex) of the type and the normalized form: the global identity of a schema.
    pub fingerprint: String,
}

impl ParsedSchema {
    /// Validates `text` as a schema of `schema_type` and computes its identity.
    ///
    /// The normalized form is the parsed Avro schema written back as JSON with object keys
    /// sorted: whitespace, attribute order and name spelling (`"name": "a.B"` versus
    /// `"namespace": "a", "name": "B"`) do not change it. It deliberately keeps what Avro's
    /// Parsing Canonical Form strips (`default`, `doc`, `aliases`, `logicalType`, custom
    /// properties): under PCF `{"type":"long","logicalType":"timestamp-millis"}` and a plain
    /// `long`, or a field with and without a default, would share an id, and the second
    /// registration would silently get the first one's text — which readers decode with.
    pub fn parse(schema_type: SchemaType, text: &str) -> Result<Self, SchemaError> {
        if text.trim().is_empty() {
            return Err(SchemaError::Empty);
        }
        // Postgres text cannot hold NUL; a valid Avro schema never contains a raw one.
        if text.contains('\0') {
            return Err(SchemaError::InvalidAvro(
                "schema contains a NUL character".into(),
            ));
        }
        let canonical_form = match schema_type {
            SchemaType::Avro => normalize_avro(text)?,
        };
        let fingerprint = fingerprint(schema_type, &canonical_form);
        Ok(Self {
            schema_type,
            text: text.to_string(),
            canonical_form,
            fingerprint,
        })
    }
}

fn normalize_avro(text: &str) -> Result<String, SchemaError> {
    // The parser is third-party code fed untrusted input: a panic in it must become a 422,
    // not a dropped connection.
    let parsed = catch_unwind(AssertUnwindSafe(|| Schema::parse_str(text)))
        .map_err(|_| SchemaError::InvalidAvro("the Avro parser rejected the schema".into()))?
        .map_err(|e| SchemaError::InvalidAvro(error_chain(&e)))?;
    let json = serde_json::to_value(&parsed)
        .map_err(|e| SchemaError::InvalidAvro(format!("cannot normalize schema: {e}")))?;
    let mut out = String::with_capacity(text.len());
    write_sorted(&json, &mut out);
    Ok(out)
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    paystream_core::telemetry::error_chain(error)
}

/// Writes `value` as compact JSON with object keys sorted, whatever map type serde_json was
/// built with (another crate enabling `preserve_order` must not change stored fingerprints).
fn write_sorted(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_sorted(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_sorted(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn fingerprint(schema_type: SchemaType, canonical_form: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(schema_type.as_str().as_bytes());
    hasher.update(b"\n");
    hasher.update(canonical_form.as_bytes());
    hex::encode(hasher.finalize())
}

/// A version selector from a URL: a number in `1..=i32::MAX`, or `latest` (also spelled `-1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSpec {
    Latest,
    Number(i32),
}

impl VersionSpec {
    pub fn parse(raw: &str) -> Option<Self> {
        if raw.eq_ignore_ascii_case("latest") || raw == "-1" {
            return Some(Self::Latest);
        }
        match raw.parse::<i32>() {
            Ok(n) if n > 0 => Some(Self::Number(n)),
            _ => None,
        }
    }
}

/// Parses a schema id from a URL: ids are positive 32-bit integers (the wire format's 4 bytes).
pub fn parse_schema_id(raw: &str) -> Option<i32> {
    raw.parse::<i32>().ok().filter(|id| *id > 0)
}

/// Whether `subject` can be stored. Confluent accepts nearly any name; control characters are
/// refused because they break logs and Postgres `text` (NUL).
pub fn is_valid_subject(subject: &str) -> bool {
    !subject.is_empty() && !subject.chars().any(char::is_control)
}

/// A 64-bit key for `pg_advisory_xact_lock`, serializing version allocation per subject across
/// every replica sharing the database. Derived from sha256 so it is stable across builds and
/// processes (std's hashers are not). A collision only makes two subjects queue on one lock.
pub fn subject_lock_key(subject: &str) -> i64 {
    let digest = Sha256::digest(format!("schema-registry/subject/{subject}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAYMENT: &str = r#"{"type":"record","name":"Payment","namespace":"paystream",
        "fields":[{"name":"id","type":"string"},{"name":"amount","type":"long"}]}"#;

    fn avro(text: &str) -> Result<ParsedSchema, SchemaError> {
        ParsedSchema::parse(SchemaType::Avro, text)
    }

    #[test]
    fn schema_type_defaults_to_avro_and_refuses_others() {
        assert_eq!(SchemaType::parse(None), Ok(SchemaType::Avro));
        assert_eq!(SchemaType::parse(Some("AVRO")), Ok(SchemaType::Avro));
        assert_eq!(
            SchemaType::parse(Some("PROTOBUF")),
            Err(SchemaError::UnsupportedType("PROTOBUF".into()))
        );
    }

    #[test]
    fn whitespace_attribute_order_and_name_spelling_do_not_change_identity() {
        let a = avro(PAYMENT).unwrap();
        let b = avro(
            r#"{ "fields" : [ {"type":"string", "name":"id"},
                              {"type":"long","name":"amount"} ],
                 "name" : "paystream.Payment", "type" : "record" }"#,
        )
        .unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.canonical_form, b.canonical_form);
        // The text is kept as sent, only the identity is shared.
        assert_ne!(a.text, b.text);
    }

    #[test]
    fn field_order_defaults_and_logical_types_change_identity() {
        let base = avro(PAYMENT).unwrap();
        let variants = [
            // Field order is part of the Avro binary encoding.
            r#"{"type":"record","name":"Payment","namespace":"paystream",
                "fields":[{"name":"amount","type":"long"},{"name":"id","type":"string"}]}"#,
            // Parsing Canonical Form strips these; readers do not ignore them.
            r#"{"type":"record","name":"Payment","namespace":"paystream",
                "fields":[{"name":"id","type":"string"},{"name":"amount","type":"long","default":0}]}"#,
            r#"{"type":"record","name":"Payment","namespace":"paystream",
                "fields":[{"name":"id","type":"string"},
                          {"name":"amount","type":{"type":"long","logicalType":"timestamp-millis"}}]}"#,
            r#"{"type":"record","name":"Payment","namespace":"other",
                "fields":[{"name":"id","type":"string"},{"name":"amount","type":"long"}]}"#,
        ];
        for v in variants {
            let other = avro(v).unwrap();
            assert_ne!(base.fingerprint, other.fingerprint, "{v}");
        }
    }

    #[test]
    fn primitive_schemas_are_valid() {
        let a = avro(r#""string""#).unwrap();
        let b = avro(r#"{"type": "string"}"#).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_ne!(a.fingerprint, avro(r#""long""#).unwrap().fingerprint);
    }

    #[test]
    fn invalid_schemas_are_refused() {
        for bad in [
            "",
            "   ",
            "not json",
            r#"{"type":"record","name":"A"}"#,
            r#"{"type":"record","name":"A","fields":[{"name":"x","type":"nope"}]}"#,
            r#"{"type":"enum","name":"E","symbols":["A","A"]}"#,
            r#"{"type":"fixed","name":"F","size":"x"}"#,
            "\"string\"\u{0}",
            "42",
        ] {
            assert!(avro(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn sorted_writer_sorts_nested_keys_and_escapes() {
        let v: Value = serde_json::from_str(r#"{"b":[{"z":1,"a":"\"q\""}],"a":null}"#).unwrap();
        let mut out = String::new();
        write_sorted(&v, &mut out);
        assert_eq!(out, r#"{"a":null,"b":[{"a":"\"q\"","z":1}]}"#);
    }

    #[test]
    fn versions_parse_like_confluent() {
        assert_eq!(VersionSpec::parse("latest"), Some(VersionSpec::Latest));
        assert_eq!(VersionSpec::parse("-1"), Some(VersionSpec::Latest));
        assert_eq!(VersionSpec::parse("1"), Some(VersionSpec::Number(1)));
        assert_eq!(
            VersionSpec::parse("2147483647"),
            Some(VersionSpec::Number(i32::MAX))
        );
        for bad in ["0", "-2", "2147483648", "abc", "", "1.0"] {
            assert_eq!(VersionSpec::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn schema_ids_are_positive_int32() {
        assert_eq!(parse_schema_id("7"), Some(7));
        for bad in ["0", "-1", "4294967295", "x"] {
            assert_eq!(parse_schema_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn subjects_with_control_characters_are_invalid() {
        assert!(is_valid_subject("payments.requested.v1-value"));
        assert!(is_valid_subject("a/b c"));
        assert!(!is_valid_subject(""));
        assert!(!is_valid_subject("a\0b"));
        assert!(!is_valid_subject("a\nb"));
    }

    #[test]
    fn subject_lock_keys_are_stable_and_distinct() {
        assert_eq!(subject_lock_key("a-value"), subject_lock_key("a-value"));
        assert_ne!(subject_lock_key("a-value"), subject_lock_key("b-value"));
    }
}
