//! `/schemas`: schemas by global id, as decoders fetch them, and the supported types.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;

use super::{non_avro, query_flag, ApiPath};
use crate::error::ApiError;
use crate::response::{raw_registry_body, registry_json};
use crate::schema::{parse_schema_id, SchemaType};
use crate::state::AppState;
use crate::store::StoredSchema;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SchemaBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    schema_type: Option<&'a str>,
    schema: &'a str,
}

#[derive(Serialize)]
struct SubjectVersionRef<'a> {
    subject: &'a str,
    version: i32,
}

/// `GET /schemas/types`.
pub async fn types() -> Response {
    let types: Vec<&str> = SchemaType::ALL.iter().map(|t| t.as_str()).collect();
    registry_json(StatusCode::OK, &types)
}

/// `GET /schemas/ids/{id}`. Query parameters clients add (`subject`, `fetchMaxId`, `format`,
/// `deleted`) are ignored: ids are global and a schema stays resolvable after its subject is
/// deleted, so records written with it can still be decoded.
#[tracing::instrument(skip_all, fields(schema.id = %id))]
pub async fn by_id(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let schema = find(&state, &id).await?;
    Ok(registry_json(
        StatusCode::OK,
        &SchemaBody {
            schema_type: non_avro(&schema.schema_type),
            schema: &schema.schema,
        },
    ))
}

/// `GET /schemas/ids/{id}/schema`: the schema text alone.
pub async fn raw_by_id(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let schema = find(&state, &id).await?;
    Ok(raw_registry_body(StatusCode::OK, schema.schema))
}

/// `GET /schemas/ids/{id}/versions[?deleted=true]`: the subject versions using the schema.
pub async fn versions_by_id(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let schema = find(&state, &id).await?;
    let pairs = state
        .store
        .versions_of_schema(schema.id, query_flag(query.as_deref(), "deleted"))
        .await?;
    let body: Vec<_> = pairs
        .iter()
        .map(|(subject, version)| SubjectVersionRef {
            subject,
            version: *version,
        })
        .collect();
    Ok(registry_json(StatusCode::OK, &body))
}

/// `GET /schemas/ids/{id}/subjects[?deleted=true]`: the subjects using the schema.
pub async fn subjects_by_id(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let schema = find(&state, &id).await?;
    let pairs = state
        .store
        .versions_of_schema(schema.id, query_flag(query.as_deref(), "deleted"))
        .await?;
    let mut subjects: Vec<&str> = pairs.iter().map(|(s, _)| s.as_str()).collect();
    subjects.dedup();
    Ok(registry_json(StatusCode::OK, &subjects))
}

async fn find(state: &AppState, raw_id: &str) -> Result<StoredSchema, ApiError> {
    // Ids are positive int4s; anything else cannot name a schema.
    let Some(id) = parse_schema_id(raw_id) else {
        return Err(ApiError::SchemaNotFound);
    };
    state
        .store
        .schema_by_id(id)
        .await?
        .ok_or(ApiError::SchemaIdNotFound(id))
}
