//! `/config`: compatibility levels, global and per subject, stored in Postgres. A subject
//! without its own level uses the global one; without a global one, `BACKWARD`.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::{query_flag, ApiPath, RegistryJson};
use crate::compatibility::Level;
use crate::error::ApiError;
use crate::response::registry_json;
use crate::schema::is_valid_subject;
use crate::state::AppState;

/// What `GET` and `DELETE` answer.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConfigBody {
    compatibility_level: &'static str,
}

/// What `PUT` answers: Confluent echoes the request's field name.
#[derive(Serialize)]
struct UpdatedBody {
    compatibility: &'static str,
}

/// The body of `PUT /config[/{subject}]`. Confluent's clients send `compatibility`; its docs
/// also show `compatibilityLevel`. Other fields (`normalize`, metadata, rule sets) are ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigRequest {
    compatibility: Option<String>,
    compatibility_level: Option<String>,
}

impl ConfigRequest {
    fn level(&self) -> Result<Level, ApiError> {
        let raw = self
            .compatibility
            .as_deref()
            .or(self.compatibility_level.as_deref())
            .unwrap_or_default();
        Level::parse(raw).ok_or_else(|| ApiError::InvalidCompatibilityLevel(raw.to_string()))
    }
}

fn level_body(level: Level) -> Response {
    registry_json(
        StatusCode::OK,
        &ConfigBody {
            compatibility_level: level.as_str(),
        },
    )
}

fn updated_body(level: Level) -> Response {
    registry_json(
        StatusCode::OK,
        &UpdatedBody {
            compatibility: level.as_str(),
        },
    )
}

/// `GET /config`.
pub async fn global(State(state): State<AppState>) -> Result<Response, ApiError> {
    let level = state.store.global_level().await?.unwrap_or_default();
    Ok(level_body(level))
}

/// `PUT /config`.
pub async fn set_global(
    State(state): State<AppState>,
    RegistryJson(request): RegistryJson<ConfigRequest>,
) -> Result<Response, ApiError> {
    let level = request.level()?;
    state.store.set_global_level(level).await?;
    tracing::info!(compatibility = %level, "global compatibility set");
    Ok(updated_body(level))
}

/// `DELETE /config`: back to the default; answers the level that was set.
pub async fn delete_global(State(state): State<AppState>) -> Result<Response, ApiError> {
    let previous = state.store.delete_global_level().await?.unwrap_or_default();
    tracing::info!(previous = %previous, "global compatibility reset");
    Ok(level_body(previous))
}

/// `GET /config/{subject}[?defaultToGlobal=true]`: the subject's own level; without one,
/// 40408 unless `defaultToGlobal` asks for the level that applies.
pub async fn subject(
    State(state): State<AppState>,
    ApiPath(subject): ApiPath<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    if let Some(level) = state.store.subject_level(&subject).await? {
        return Ok(level_body(level));
    }
    if query_flag(query.as_deref(), "defaultToGlobal") {
        return Ok(level_body(state.store.effective_level(&subject).await?));
    }
    Err(ApiError::SubjectLevelNotConfigured(subject))
}

/// `PUT /config/{subject}`; the subject need not exist yet.
#[tracing::instrument(skip_all, fields(subject = %subject))]
pub async fn set_subject(
    State(state): State<AppState>,
    ApiPath(subject): ApiPath<String>,
    RegistryJson(request): RegistryJson<ConfigRequest>,
) -> Result<Response, ApiError> {
    if !is_valid_subject(&subject) {
        return Err(ApiError::InvalidSubject);
    }
    let level = request.level()?;
    state.store.set_subject_level(&subject, level).await?;
    tracing::info!(compatibility = %level, "subject compatibility set");
    Ok(updated_body(level))
}

/// `DELETE /config/{subject}`: the subject falls back to the global level; answers the level
/// it had.
#[tracing::instrument(skip_all, fields(subject = %subject))]
pub async fn delete_subject(
    State(state): State<AppState>,
    ApiPath(subject): ApiPath<String>,
) -> Result<Response, ApiError> {
    if let Some(previous) = state.store.delete_subject_level(&subject).await? {
        tracing::info!(previous = %previous, "subject compatibility removed");
        return Ok(level_body(previous));
    }
    if state.store.subject_exists(&subject, true).await? {
        Err(ApiError::SubjectLevelNotConfigured(subject))
    } else {
        Err(ApiError::SubjectNotFound(subject))
    }
}
