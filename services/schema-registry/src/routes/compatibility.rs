//! `/compatibility`: test a schema against a subject's versions without registering it, and
//! the check registration itself runs.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;

use super::{query_flag, ApiPath, RegistryJson, SchemaRequest};
use crate::compatibility::{self, Level, Previous};
use crate::error::ApiError;
use crate::response::registry_json;
use crate::schema::{is_valid_subject, parse_avro, ParsedSchema, VersionSpec};
use crate::state::AppState;
use crate::store::SubjectVersion;

#[derive(Serialize)]
struct CompatibilityBody {
    is_compatible: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<Vec<String>>,
}

/// Checks `new` against `versions` (oldest first) under `level`; Confluent's messages, empty
/// when compatible.
pub fn check(level: Level, new: &ParsedSchema, versions: &[SubjectVersion]) -> Vec<String> {
    if level == Level::None || versions.is_empty() {
        return Vec::new();
    }
    let mut parsed = Vec::with_capacity(versions.len());
    for v in versions {
        match parse_avro(&v.schema) {
            Ok(schema) => parsed.push((v, schema)),
            // Stored schemas were valid when registered; one the parser now refuses cannot be
            // checked against, so nothing may be registered over it silently.
            Err(e) => {
                return vec![format!(
                    "{{oldSchemaVersion: {}}} cannot be parsed for the check: {e}",
                    v.version
                )]
            }
        }
    }
    let previous: Vec<Previous<'_>> = parsed
        .iter()
        .map(|(v, schema)| Previous {
            version: v.version,
            text: &v.schema,
            schema,
        })
        .collect();
    compatibility::check(level, &new.avro, &previous)
}

/// `POST /compatibility/subjects/{subject}/versions/{version}[?verbose=true]`: against one
/// version (`latest`: the newest live one; none yet is compatible).
#[tracing::instrument(skip_all, fields(subject = %subject))]
pub async fn against_version(
    State(state): State<AppState>,
    ApiPath((subject, version)): ApiPath<(String, String)>,
    RawQuery(query): RawQuery,
    RegistryJson(request): RegistryJson<SchemaRequest>,
) -> Result<Response, ApiError> {
    let spec =
        VersionSpec::parse(&version).ok_or_else(|| ApiError::InvalidVersion(version.clone()))?;
    if !is_valid_subject(&subject) {
        return Err(ApiError::SubjectNotFound(subject));
    }
    let schema = request.parse()?;
    let against = match state.store.version(&subject, spec, false).await? {
        Some(found) => vec![found],
        None => match spec {
            VersionSpec::Latest => Vec::new(),
            VersionSpec::Number(n) if state.store.subject_exists(&subject, false).await? => {
                return Err(ApiError::VersionNotFound(n))
            }
            VersionSpec::Number(_) => return Err(ApiError::SubjectNotFound(subject)),
        },
    };
    let level = state.store.effective_level(&subject).await?;
    Ok(respond(
        check(level, &schema, &against),
        query_flag(query.as_deref(), "verbose"),
    ))
}

/// `POST /compatibility/subjects/{subject}/versions[?verbose=true]`: against every version the
/// subject's level asks for, exactly the check registration runs.
#[tracing::instrument(skip_all, fields(subject = %subject))]
pub async fn against_level(
    State(state): State<AppState>,
    ApiPath(subject): ApiPath<String>,
    RawQuery(query): RawQuery,
    RegistryJson(request): RegistryJson<SchemaRequest>,
) -> Result<Response, ApiError> {
    let schema = request.parse()?;
    let versions = if is_valid_subject(&subject) {
        state.store.live_versions(&subject).await?
    } else {
        Vec::new()
    };
    let level = state.store.effective_level(&subject).await?;
    Ok(respond(
        check(level, &schema, &versions),
        query_flag(query.as_deref(), "verbose"),
    ))
}

fn respond(messages: Vec<String>, verbose: bool) -> Response {
    registry_json(
        StatusCode::OK,
        &CompatibilityBody {
            is_compatible: messages.is_empty(),
            messages: verbose.then_some(messages),
        },
    )
}
