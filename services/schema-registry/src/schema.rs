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

/// Version of the identity rules below; stored with each schema row so rows written under
/// older rules are re-keyed at start-up (see `Store::upgrade_identities`).
pub const IDENTITY_SCHEME: i16 = 2;

/// A validated schema with the identity the store deduplicates on.
#[derive(Debug, Clone)]
pub struct ParsedSchema {
    pub schema_type: SchemaType,
    /// The text as the client sent it; what the registry hands back.
    pub text: String,
    /// The parsed schema, for compatibility checks.
    pub avro: Schema,
    /// The form [`ParsedSchema::fingerprint`] is computed over: see [`identity_form`].
    pub canonical_form: String,
    /// sha256 (hex) of the type, the identity scheme and the canonical form: the global
    /// identity of a schema.
    pub fingerprint: String,
}

impl ParsedSchema {
    /// Validates `text` as a schema of `schema_type` and computes its identity.
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
        let avro = match schema_type {
            SchemaType::Avro => parse_avro(text)?,
        };
        let canonical_form = identity_form(&avro, Keep::Resolution)?;
        let fingerprint = fingerprint(schema_type, &canonical_form);
        Ok(Self {
            schema_type,
            text: text.to_string(),
            avro,
            canonical_form,
            fingerprint,
        })
    }
}

/// Parses Avro text. The parser is third-party code fed untrusted input: a panic in it must
/// become a 422, not a dropped connection.
pub fn parse_avro(text: &str) -> Result<Schema, SchemaError> {
    catch_unwind(AssertUnwindSafe(|| Schema::parse_str(text)))
        .map_err(|_| SchemaError::InvalidAvro("the Avro parser rejected the schema".into()))?
        .map_err(|e| SchemaError::InvalidAvro(error_chain(&e)))
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    paystream_core::telemetry::error_chain(error)
}

/// What [`identity_form`] keeps besides Avro's Parsing Canonical Form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Plain Parsing Canonical Form (used in tests against apache-avro's).
    CanonicalOnly,
    /// PCF plus what schema resolution and decoding read.
    Resolution,
}

/// Attributes of Avro's Parsing Canonical Form, in its order.
const PCF_KEYS: [&str; 7] = [
    "name", "type", "fields", "symbols", "items", "values", "size",
];

/// Attributes PCF strips that a reader does not ignore, so identity keeps them:
/// - `default`: two schemas differing only in a field default resolve differently (a field
///   whose default was just added may be removed later under FORWARD). Under plain PCF the
///   second registration would be "already registered" and the default lost from the subject.
/// - `logicalType`, `precision`, `scale`: a `timestamp-millis` and a plain `long` decode to
///   different values.
/// - `aliases`: they make renames resolvable.
///
/// `doc`, `order` and custom properties are dropped: a documentation-only edit keeps its id.
const RESOLUTION_KEYS: [&str; 5] = ["logicalType", "precision", "scale", "default", "aliases"];

/// The schema's identity text: Avro's Parsing Canonical Form ([FULLNAMES], [STRIP], [ORDER],
/// [STRINGS], [INTEGERS], [WHITESPACE], [PRIMITIVES]), with `keep`'s extra attributes after
/// the canonical ones, defaults written with sorted keys and aliases sorted.
pub fn identity_form(schema: &Schema, keep: Keep) -> Result<String, SchemaError> {
    // apache-avro writes the parsed schema with explicit namespaces, references as full names
    // and primitives as plain strings: the walk below only has to select and order.
    let json = serde_json::to_value(schema)
        .map_err(|e| SchemaError::InvalidAvro(format!("cannot normalize schema: {e}")))?;
    let mut out = String::new();
    write_identity(&json, keep, &mut out);
    Ok(out)
}

fn write_identity(value: &Value, keep: Keep, out: &mut String) {
    match value {
        Value::Array(items) => write_list(items, out, |v, out| write_identity(v, keep, out)),
        Value::Object(map) => {
            let kept = |key: &&str| {
                map.contains_key(*key)
                    && (PCF_KEYS.contains(key)
                        || (keep == Keep::Resolution && RESOLUTION_KEYS.contains(key)))
            };
            let keys: Vec<&str> = PCF_KEYS
                .iter()
                .chain(RESOLUTION_KEYS.iter())
                .copied()
                .filter(kept)
                .collect();
            if let (["type"], Some(Value::String(primitive))) = (keys.as_slice(), map.get("type")) {
                out.push_str(&Value::String(primitive.clone()).to_string());
                return;
            }
            let named = matches!(
                map.get("type").and_then(Value::as_str),
                Some("record" | "enum" | "fixed")
            );
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.to_string()).to_string());
                out.push(':');
                let v = &map[key];
                match key {
                    "name" if named => {
                        let name = v.as_str().unwrap_or_default();
                        let full = match map.get("namespace").and_then(Value::as_str) {
                            Some(ns) if !ns.is_empty() && !name.contains('.') => {
                                format!("{ns}.{name}")
                            }
                            _ => name.to_string(),
                        };
                        out.push_str(&Value::String(full).to_string());
                    }
                    "type" | "items" | "values" | "fields" => write_identity(v, keep, out),
                    "size" | "precision" | "scale" => match v {
                        // [INTEGERS]: "8" and 8 are the same size.
                        Value::String(s) => out.push_str(s.trim()),
                        other => out.push_str(&other.to_string()),
                    },
                    "aliases" => {
                        let mut aliases: Vec<String> = v
                            .as_array()
                            .map(|a| a.iter().map(|x| x.to_string()).collect())
                            .unwrap_or_default();
                        aliases.sort();
                        write_list(&aliases, out, |a, out| out.push_str(a));
                    }
                    _ => write_sorted(v, out),
                }
            }
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn write_list<T>(items: &[T], out: &mut String, write: impl FnMut(&T, &mut String)) {
    write_delimited(('[', ']'), items, out, write);
}

fn write_delimited<T>(
    (open, close): (char, char),
    items: &[T],
    out: &mut String,
    mut write: impl FnMut(&T, &mut String),
) {
    out.push(open);
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write(item, out);
    }
    out.push(close);
}

/// Writes `value` as compact JSON with object keys sorted, whatever map type serde_json was
/// built with (another crate enabling `preserve_order` must not change stored fingerprints).
fn write_sorted(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            write_delimited(('{', '}'), &entries, out, |(key, v), out| {
                out.push_str(&Value::String((*key).clone()).to_string());
                out.push(':');
                write_sorted(v, out);
            });
        }
        Value::Array(items) => write_list(items, out, write_sorted),
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn fingerprint(schema_type: SchemaType, canonical_form: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(schema_type.as_str().as_bytes());
    // The scheme is hashed too, so a fingerprint of the old rules never equals a new one.
    hasher.update(format!("\nidentity-v{IDENTITY_SCHEME}\n").as_bytes());
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
    fn field_order_defaults_logical_types_and_names_change_identity() {
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
    fn documentation_and_custom_properties_do_not_change_identity() {
        let base = avro(PAYMENT).unwrap();
        let documented = avro(
            r#"{"type":"record","name":"Payment","namespace":"paystream","doc":"A payment.",
                "x-owner":"payments-team",
                "fields":[{"name":"id","type":"string","doc":"The id.","order":"descending"},
                          {"name":"amount","type":"long"}]}"#,
        )
        .unwrap();
        assert_eq!(base.fingerprint, documented.fingerprint);
        assert_ne!(base.text, documented.text);
    }

    #[test]
    fn canonical_only_matches_apache_avro_parsing_canonical_form() {
        for text in [
            PAYMENT,
            r#""string""#,
            r#"{"type":"record","name":"R","namespace":"a.b","doc":"d","fields":[
                {"name":"e","type":{"type":"enum","name":"E","symbols":["X","Y"],"default":"X"}},
                {"name":"f","type":{"type":"fixed","name":"c.F","size":16}},
                {"name":"again","type":"E"},
                {"name":"m","type":{"type":"map","values":{"type":"array","items":"c.F"}}},
                {"name":"u","type":["null","long"],"default":null},
                {"name":"n","type":{"type":"record","name":"Nested","fields":[{"name":"x","type":"int","default":1}]}}]}"#,
        ] {
            let parsed = Schema::parse_str(text).unwrap();
            assert_eq!(
                identity_form(&parsed, Keep::CanonicalOnly).unwrap(),
                parsed.canonical_form(),
                "{text}"
            );
        }
        // [PRIMITIVES] applies after [STRIP]: a logical type is its plain primitive, as in Java
        // Avro (apache-avro 0.22 leaves `{"type":"long"}` here).
        let logical =
            Schema::parse_str(r#"{"type":"long","logicalType":"timestamp-millis"}"#).unwrap();
        assert_eq!(
            identity_form(&logical, Keep::CanonicalOnly).unwrap(),
            r#""long""#
        );
    }

    #[test]
    fn identity_form_keeps_what_resolution_reads() {
        let parsed = Schema::parse_str(
            r#"{"type":"record","name":"R","namespace":"a","doc":"ignored","fields":[
                {"name":"t","type":{"type":"long","logicalType":"timestamp-millis"},"doc":"x"},
                {"name":"n","aliases":["old_n","m"],"type":"int","default":7},
                {"name":"o","type":{"type":"map","values":"int"},"default":{"z":1,"a":2}}]}"#,
        )
        .unwrap();
        assert_eq!(
            identity_form(&parsed, Keep::Resolution).unwrap(),
            r#"{"name":"a.R","type":"record","fields":[{"name":"t","type":{"type":"long","logicalType":"timestamp-millis"}},{"name":"n","type":"int","default":7,"aliases":["m","old_n"]},{"name":"o","type":{"type":"map","values":"int"},"default":{"a":2,"z":1}}]}"#
        );
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
