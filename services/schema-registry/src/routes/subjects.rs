//! `/subjects`: registration, lookup, versions and deletion of subjects.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;

use super::{listing, page, query_flag, query_value, ApiPath, RegistryJson, SchemaRequest};
use crate::error::ApiError;
use crate::response::{raw_registry_body, registry_json};
use crate::schema::{is_valid_subject, VersionSpec};
use crate::state::AppState;
use crate::store::{DeleteOutcome, Listing, RegisterOutcome, SubjectVersion, VersionDeleteOutcome};

/// A subject version as Confluent returns it; `schemaType` only when not AVRO.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct VersionBody<'a> {
    subject: &'a str,
    version: i32,
    id: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    schema_type: Option<&'a str>,
    schema: &'a str,
}

fn version_body(v: &SubjectVersion) -> Response {
    registry_json(
        StatusCode::OK,
        &VersionBody {
            subject: &v.subject,
            version: v.version,
            id: v.id,
            schema_type: super::non_avro(&v.schema_type),
            schema: &v.schema,
        },
    )
}

#[derive(Serialize)]
struct RegisterBody {
    id: i32,
}

/// `POST /subjects/{subject}/versions`: the schema's global id; an identical schema already
/// under the subject returns its id without a new version. A new one must pass the subject's
/// compatibility level (409 otherwise, nothing written).
#[tracing::instrument(skip_all, fields(subject = %subject))]
pub async fn register(
    State(state): State<AppState>,
    ApiPath(subject): ApiPath<String>,
    RegistryJson(request): RegistryJson<SchemaRequest>,
) -> Result<Response, ApiError> {
    if !is_valid_subject(&subject) {
        return Err(ApiError::InvalidSubject);
    }
    let schema = request.parse()?;
    let outcome = state
        .store
        .register(&subject, &schema, |level, live| {
            super::compatibility::check(level, &schema, live)
        })
        .await?;
    let registered = match outcome {
        RegisterOutcome::Registered(registered) => registered,
        RegisterOutcome::Incompatible(messages) => {
            tracing::info!(?messages, "incompatible schema refused");
            return Err(ApiError::Incompatible { subject, messages });
        }
    };
    tracing::info!(
        schema.id = registered.id,
        version = registered.version,
        new_version = registered.new_version,
        "schema registered"
    );
    Ok(registry_json(
        StatusCode::OK,
        &RegisterBody { id: registered.id },
    ))
}

/// `POST /subjects/{subject}`: is this schema registered under the subject, and as which
/// version?
#[tracing::instrument(skip_all, fields(subject = %subject))]
pub async fn lookup(
    State(state): State<AppState>,
    ApiPath(subject): ApiPath<String>,
    RawQuery(query): RawQuery,
    RegistryJson(request): RegistryJson<SchemaRequest>,
) -> Result<Response, ApiError> {
    let deleted = query_flag(query.as_deref(), "deleted");
    // As in Confluent, an unknown subject wins over an invalid schema.
    if !is_valid_subject(&subject) || !state.store.subject_exists(&subject, deleted).await? {
        return Err(ApiError::SubjectNotFound(subject));
    }
    let schema = request.parse()?;
    match state.store.lookup(&subject, &schema, deleted).await? {
        Some(version) => Ok(version_body(&version)),
        None => Err(ApiError::SchemaNotFound),
    }
}

/// `DELETE /subjects/{subject}[?permanent=true]`: the versions deleted.
#[tracing::instrument(skip_all, fields(subject = %subject))]
pub async fn delete(
    State(state): State<AppState>,
    ApiPath(subject): ApiPath<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    if !is_valid_subject(&subject) {
        return Err(ApiError::SubjectNotFound(subject));
    }
    let outcome = if query_flag(query.as_deref(), "permanent") {
        state.store.hard_delete_subject(&subject).await?
    } else {
        state.store.soft_delete_subject(&subject).await?
    };
    match outcome {
        DeleteOutcome::Versions(versions) => {
            tracing::info!(?versions, "subject deleted");
            Ok(registry_json(StatusCode::OK, &versions))
        }
        DeleteOutcome::SubjectNotFound => Err(ApiError::SubjectNotFound(subject)),
        DeleteOutcome::AlreadySoftDeleted => Err(ApiError::SubjectSoftDeleted(subject)),
        DeleteOutcome::NotSoftDeleted => Err(ApiError::SubjectNotSoftDeleted(subject)),
    }
}

/// `DELETE /subjects/{subject}/versions/{version}[?permanent=true]`: the version deleted.
/// Soft first; `permanent=true` then removes it.
#[tracing::instrument(skip_all, fields(subject = %subject))]
pub async fn delete_version(
    State(state): State<AppState>,
    ApiPath((subject, version)): ApiPath<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let spec =
        VersionSpec::parse(&version).ok_or_else(|| ApiError::InvalidVersion(version.clone()))?;
    if !is_valid_subject(&subject) {
        return Err(ApiError::SubjectNotFound(subject));
    }
    let outcome = if query_flag(query.as_deref(), "permanent") {
        state.store.hard_delete_version(&subject, spec).await?
    } else {
        state.store.soft_delete_version(&subject, spec).await?
    };
    match outcome {
        VersionDeleteOutcome::Deleted(number) => {
            tracing::info!(version = number, "version deleted");
            Ok(registry_json(StatusCode::OK, &number))
        }
        VersionDeleteOutcome::SubjectNotFound => Err(ApiError::SubjectNotFound(subject)),
        VersionDeleteOutcome::VersionNotFound(n) => Err(ApiError::VersionNotFound(n)),
        VersionDeleteOutcome::AlreadySoftDeleted(n) => {
            Err(ApiError::VersionSoftDeleted(subject, n))
        }
        VersionDeleteOutcome::NotSoftDeleted(n) => Err(ApiError::VersionNotSoftDeleted(subject, n)),
    }
}

/// `GET /subjects[?deleted=true|deletedOnly=true][&subjectPrefix=..][&offset=..&limit=..]`.
pub async fn list(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query = query.as_deref();
    let prefix = query_value(query, "subjectPrefix").unwrap_or_default();
    let subjects = state.store.subjects(listing(query), &prefix).await?;
    Ok(registry_json(StatusCode::OK, &page(subjects, query)))
}

/// `GET /subjects/{subject}/versions[?deleted=true|deletedOnly=true][&offset=..&limit=..]`.
pub async fn versions(
    State(state): State<AppState>,
    ApiPath(subject): ApiPath<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query = query.as_deref();
    if !is_valid_subject(&subject) {
        return Err(ApiError::SubjectNotFound(subject));
    }
    let listing = listing(query);
    let versions = state.store.versions(&subject, listing).await?;
    // A subject with only live versions has no deleted ones to list; that is not "not found".
    let known = !versions.is_empty()
        || (listing == Listing::DeletedOnly && state.store.subject_exists(&subject, true).await?);
    if !known {
        return Err(ApiError::SubjectNotFound(subject));
    }
    Ok(registry_json(StatusCode::OK, &page(versions, query)))
}

/// `GET /subjects/{subject}/versions/{version}`, version a number, `latest` or `-1`.
pub async fn version(
    State(state): State<AppState>,
    ApiPath((subject, version)): ApiPath<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let found = find_version(&state, subject, &version, query.as_deref()).await?;
    Ok(version_body(&found))
}

/// `GET /subjects/{subject}/versions/{version}/schema`: the schema text alone.
pub async fn version_schema(
    State(state): State<AppState>,
    ApiPath((subject, version)): ApiPath<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let found = find_version(&state, subject, &version, query.as_deref()).await?;
    Ok(raw_registry_body(StatusCode::OK, found.schema))
}

async fn find_version(
    state: &AppState,
    subject: String,
    version: &str,
    query: Option<&str>,
) -> Result<SubjectVersion, ApiError> {
    let spec =
        VersionSpec::parse(version).ok_or_else(|| ApiError::InvalidVersion(version.to_string()))?;
    if !is_valid_subject(&subject) {
        return Err(ApiError::SubjectNotFound(subject));
    }
    let deleted = query_flag(query, "deleted");
    if let Some(found) = state.store.version(&subject, spec, deleted).await? {
        return Ok(found);
    }
    match spec {
        VersionSpec::Number(n) if state.store.subject_exists(&subject, deleted).await? => {
            Err(ApiError::VersionNotFound(n))
        }
        _ => Err(ApiError::SubjectNotFound(subject)),
    }
}
