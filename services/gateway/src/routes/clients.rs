//! Client ↔ merchant bindings (admin bearer token), the merchants an authenticated API client
//! may act for ([`crate::bindings`]): `PUT /v1/clients/{client_id}/merchants/{merchant_id}`
//! binds (`201`, or `200` when already bound), `DELETE` on the same path unbinds (`204`, bound
//! or not), `GET /v1/clients/{client_id}/merchants` lists the client's merchants in id order,
//! a page at a time (`limit`, `after`).
//!
//! Ids are validated as the rest of the API does (client ids as API-key client ids, merchant
//! ids as in payment requests; `422` naming the field). A client id need not have a key
//! configured yet: bindings can be made before the key is rolled out, on every replica at
//! once. The anonymous client (authentication off) cannot be bound: it is checked against no
//! binding.

use axum::extract::path::ErrorKind;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{authorize_admin, is_valid_client_id, ANONYMOUS_CLIENT, MAX_CLIENT_ID_LEN};
use crate::bindings;
use crate::domain::check_id;
use crate::problem::{ApiError, FieldError, Problem};
use crate::state::AppState;

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

/// The path of one binding.
#[derive(Debug, Deserialize)]
pub struct BindingPath {
    pub client_id: String,
    pub merchant_id: String,
}

/// The path of a client's list.
#[derive(Debug, Deserialize)]
pub struct ClientPath {
    pub client_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Page size, 1-1000 (default 100).
    pub limit: Option<u32>,
    /// The last merchant id of the previous page (its `next_after`).
    pub after: Option<String>,
}

fn check_client_id(id: &str, errors: &mut Vec<FieldError>) {
    if !is_valid_client_id(id) {
        let message = if id == ANONYMOUS_CLIENT {
            format!(
                "`{ANONYMOUS_CLIENT}` is the client of unauthenticated requests, which no \
                 binding limits; it cannot be bound"
            )
        } else {
            format!("must be 1-{MAX_CLIENT_ID_LEN} characters of [A-Za-z0-9_.-]")
        };
        errors.push(FieldError {
            field: "client_id".into(),
            message,
        });
    }
}

/// Validates the ids of a path: `client_id` always, `merchant_id` when given.
fn validate(client_id: &str, merchant_id: Option<&str>) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    check_client_id(client_id, &mut errors);
    if let Some(merchant_id) = merchant_id {
        check_id("merchant_id", merchant_id, &mut errors);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// The admin check and the validated ids of a bind or unbind request, in that order (an
/// unauthorised caller learns nothing about the ids).
fn admin_binding_path(
    state: &AppState,
    path: Result<Path<BindingPath>, PathRejection>,
    headers: &HeaderMap,
) -> Result<BindingPath, ApiError> {
    authorize_admin(state.settings.admin_token.as_ref(), headers)?;
    let binding = path_params(path)?;
    validate(&binding.client_id, Some(&binding.merchant_id))?;
    Ok(binding)
}

/// The path's parameters, or `422` naming the one that is not even UTF-8 once
/// percent-decoded (an id of neither kind).
fn path_params<T>(path: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    path.map(|Path(params)| params).map_err(|rejection| {
        let field = match &rejection {
            PathRejection::FailedToDeserializePathParams(e) => match e.kind() {
                ErrorKind::InvalidUtf8InPathParam { key } => key.clone(),
                _ => "path".to_string(),
            },
            _ => "path".to_string(),
        };
        ApiError::Validation(vec![FieldError {
            field,
            message: "must be an id of ASCII letters, digits and _-. (not UTF-8 here)".into(),
        }])
    })
}

#[utoipa::path(
    put,
    path = "/v1/clients/{client_id}/merchants/{merchant_id}",
    tag = "clients",
    params(
        ("client_id" = String, Path, description = "API client id (as configured with its key): 1-64 of `[A-Za-z0-9_.-]`"),
        ("merchant_id" = String, Path, description = "Merchant id: 1-64 of `[A-Za-z0-9_-]`"),
    ),
    responses(
        (status = 201, description = "Bound: `{client_id, merchant_id, bound_at}`", body = Object),
        (status = 200, description = "Already bound (idempotent); `bound_at` is the first binding's time", body = Object),
        (status = 401, description = "Missing or wrong admin bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid client or merchant id (the anonymous client cannot be bound)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = []))
)]
#[tracing::instrument(name = "bind_client_merchant", skip_all)]
pub async fn bind(
    State(state): State<AppState>,
    path: Result<Path<BindingPath>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let BindingPath {
        client_id,
        merchant_id,
    } = admin_binding_path(&state, path, &headers)?;
    let (binding, created) = bindings::bind(&state.pool, &client_id, &merchant_id)
        .await
        .map_err(ApiError::internal)?;
    if created {
        tracing::info!(%client_id, %merchant_id, "client bound to merchant");
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(binding)).into_response())
}

#[utoipa::path(
    delete,
    path = "/v1/clients/{client_id}/merchants/{merchant_id}",
    tag = "clients",
    params(
        ("client_id" = String, Path, description = "API client id"),
        ("merchant_id" = String, Path, description = "Merchant id"),
    ),
    responses(
        (status = 204, description = "Not bound (any more): also when it was not (idempotent). Requests checked after this are `403`"),
        (status = 401, description = "Missing or wrong admin bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid client or merchant id", body = Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = []))
)]
#[tracing::instrument(name = "unbind_client_merchant", skip_all)]
pub async fn unbind(
    State(state): State<AppState>,
    path: Result<Path<BindingPath>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let BindingPath {
        client_id,
        merchant_id,
    } = admin_binding_path(&state, path, &headers)?;
    let removed = bindings::unbind(&state.pool, &client_id, &merchant_id)
        .await
        .map_err(ApiError::internal)?;
    if removed {
        tracing::info!(%client_id, %merchant_id, "client unbound from merchant");
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(
    get,
    path = "/v1/clients/{client_id}/merchants",
    tag = "clients",
    params(
        ("client_id" = String, Path, description = "API client id"),
        ("limit" = Option<u32>, Query, description = "Page size, 1-1000 (default 100)"),
        ("after" = Option<String>, Query, description = "The previous page's `next_after`"),
    ),
    responses(
        (status = 200, description = "`{client_id, merchants: [{client_id, merchant_id, bound_at}], next_after?}` in merchant id order; `next_after` is there when more may follow. A client without bindings has an empty list", body = Object),
        (status = 400, description = "Invalid query", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong admin bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid client id", body = Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = []))
)]
#[tracing::instrument(name = "list_client_merchants", skip_all)]
pub async fn list(
    State(state): State<AppState>,
    path: Result<Path<ClientPath>, PathRejection>,
    query: Result<Query<ListQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize_admin(state.settings.admin_token.as_ref(), &headers)?;
    let ClientPath { client_id } = path_params(path)?;
    validate(&client_id, None)?;
    let Query(query) = query.map_err(|e| ApiError::InvalidQuery(e.body_text()))?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::InvalidQuery(format!(
            "`limit` must be between 1 and {MAX_PAGE}"
        )));
    }
    if let Some(after) = &query.after {
        let mut errors = Vec::new();
        check_id("after", after, &mut errors);
        if !errors.is_empty() {
            return Err(ApiError::InvalidQuery(
                "`after` must be a merchant id (a page's `next_after`)".into(),
            ));
        }
    }
    let merchants = bindings::list(
        &state.pool,
        &client_id,
        query.after.as_deref(),
        i64::from(limit),
    )
    .await
    .map_err(ApiError::internal)?;
    let mut body = json!({ "client_id": client_id, "merchants": merchants });
    // A full page may have a successor (one more query tells); a short one is the last.
    if merchants.len() == limit as usize {
        if let Some(last) = merchants.last() {
            body["next_after"] = json!(last.merchant_id);
        }
    }
    Ok(axum::Json(body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(result: Result<(), ApiError>) -> Vec<String> {
        match result {
            Ok(()) => vec![],
            Err(ApiError::Validation(errors)) => errors.into_iter().map(|e| e.field).collect(),
            Err(other) => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn ids_are_validated_like_the_rest_of_the_api() {
        assert!(fields(validate("acme", Some("m_1"))).is_empty());
        assert!(
            fields(validate("acme.eu", None)).is_empty(),
            "dots in client ids"
        );
        assert_eq!(fields(validate("a b", Some("m_1"))), ["client_id"]);
        assert_eq!(fields(validate("acme", Some("m.1"))), ["merchant_id"]);
        assert_eq!(
            fields(validate("", Some(""))),
            ["client_id", "merchant_id"],
            "every invalid id is named"
        );
        assert_eq!(fields(validate(&"c".repeat(65), None)), ["client_id"]);
    }

    #[test]
    fn the_anonymous_client_cannot_be_bound() {
        let Err(ApiError::Validation(errors)) = validate(ANONYMOUS_CLIENT, Some("m_1")) else {
            panic!("anonymous must be refused");
        };
        assert_eq!(errors[0].field, "client_id");
        assert!(errors[0].message.contains("unauthenticated"), "{errors:?}");
    }
}
