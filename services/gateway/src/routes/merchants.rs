//! Merchant administration (admin bearer token): `PUT /v1/merchants/{id}` sets the webhook URL
//! and notification address, `POST /v1/merchants/{id}/rotate-secret` replaces the webhook
//! signing secret, `GET /v1/merchants/{id}` reads the settings. The secret (`whsec_…`) is
//! returned once, by the creation and by each rotation, and never by a read.
//!
//! The secret is stored sealed (AES-256-GCM, [`paystream_core::secrets`]), never in clear. A
//! rotation keeps the replaced secret signing next to the new one for
//! `gateway.webhook_secret_overlap_secs`, so a receiver still verifying with the old one keeps
//! accepting until it switches.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::auth::authorize_admin;
use crate::domain::{check_id, is_plain_email};
use crate::problem::{ApiError, FieldError, Problem};
use crate::routes::request::read_request;
use crate::state::AppState;
use paystream_core::secrets::SecretBox;
use sqlx::PgPool;

const MAX_URL_LEN: usize = 2048;

/// A fresh webhook signing secret: `whsec_` and 32 random bytes in hex.
fn new_secret() -> String {
    format!("whsec_{}", hex::encode(rand::random::<[u8; 32]>()))
}

/// Seals the secrets rows written before they were encrypted still hold in clear (`whsec_…`),
/// at start-up. Each row is replaced only if unchanged since it was read, so replicas starting
/// together, or a rotation racing this, never lose a secret.
pub async fn seal_plaintext_secrets(pool: &PgPool, secrets: &SecretBox) -> anyhow::Result<()> {
    use anyhow::Context;
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT merchant_id, webhook_secret FROM merchants WHERE webhook_secret NOT LIKE 'v1:%'",
    )
    .fetch_all(pool)
    .await
    .context("reading webhook secrets stored in clear")?;
    let mut sealed = 0u64;
    for (merchant_id, secret) in &rows {
        sealed += sqlx::query(
            "UPDATE merchants SET webhook_secret = $3 WHERE merchant_id = $1 AND webhook_secret = $2",
        )
        .bind(merchant_id)
        .bind(secret)
        .bind(secrets.seal(secret, merchant_id))
        .execute(pool)
        .await
        .context("sealing a webhook secret stored in clear")?
        .rows_affected();
    }
    if sealed > 0 {
        tracing::info!(sealed, "webhook secrets stored in clear are now sealed");
    }
    Ok(())
}

/// Body of `PUT /v1/merchants/{id}`: the whole notification settings (absent fields clear).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MerchantBody {
    #[serde(default)]
    pub webhook_url: Option<String>,
    #[serde(default)]
    pub notification_email: Option<String>,
}

fn validate(id: &str, body: &MerchantBody) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    check_id("merchant_id", id, &mut errors);
    if let Some(url) = &body.webhook_url {
        let ok = url.len() <= MAX_URL_LEN
            && url::Url::parse(url)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        if !ok {
            errors.push(FieldError {
                field: "webhook_url".into(),
                message: format!(
                    "must be an absolute http(s) URL of at most {MAX_URL_LEN} characters"
                ),
            });
        }
    }
    if let Some(email) = &body.notification_email {
        if !is_plain_email(email) {
            errors.push(FieldError {
                field: "notification_email".into(),
                message: "must be a plain e-mail address such as ops@example.com".into(),
            });
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// A merchant as the API shows it; `webhook_secret` only right after creation or rotation.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct MerchantView {
    pub merchant_id: String,
    pub webhook_url: Option<String>,
    pub notification_email: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
}

const COLUMNS: &str = "merchant_id, webhook_url, notification_email, created_at, updated_at";

#[utoipa::path(
    put,
    path = "/v1/merchants/{id}",
    tag = "merchants",
    params(("id" = String, Path, description = "Merchant id")),
    request_body(content = Object, content_type = "application/json",
        description = "`{\"webhook_url\": \"https://…\", \"notification_email\": \"…\"}`"),
    responses(
        (status = 201, description = "Created; `webhook_secret` (`whsec_…`) is shown this once", body = Object),
        (status = 200, description = "Updated; the secret is not shown again", body = Object),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong admin bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid id, webhook URL or e-mail address", body = Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = []))
)]
#[tracing::instrument(name = "put_merchant", skip_all, fields(merchant.id = %id))]
pub async fn put(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize_admin(state.settings.admin_token.as_ref(), &headers)?;
    let body: MerchantBody = read_request(body, state.settings.gateway.max_body_bytes).await?;
    validate(&id, &body)?;
    #[derive(sqlx::FromRow)]
    struct Saved {
        #[sqlx(flatten)]
        view: MerchantView,
        created: bool,
    }
    let secret = new_secret();
    // xmax = 0 only on a freshly inserted row: tells creation from update in one statement.
    let Saved { mut view, created } = sqlx::query_as(&format!(
        "INSERT INTO merchants (merchant_id, webhook_url, notification_email, webhook_secret)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (merchant_id) DO UPDATE SET webhook_url = excluded.webhook_url,
             notification_email = excluded.notification_email, updated_at = now()
         RETURNING {COLUMNS}, NULL::text AS webhook_secret, (xmax = 0) AS created"
    ))
    .bind(&id)
    .bind(&body.webhook_url)
    .bind(&body.notification_email)
    .bind(state.secrets.seal(&secret, &id))
    .fetch_one(&state.pool)
    .await
    .map_err(ApiError::internal)?;
    // The secret is shown once: on creation (and rotation), not on later updates.
    if created {
        view.webhook_secret = Some(secret);
    }
    tracing::info!(merchant_id = %id, created, "merchant settings saved");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(view)).into_response())
}

#[utoipa::path(
    post,
    path = "/v1/merchants/{id}/rotate-secret",
    tag = "merchants",
    params(("id" = String, Path, description = "Merchant id")),
    responses(
        (status = 200, description = "The merchant with its new `webhook_secret`, shown this once; the replaced secret keeps signing next to it for `gateway.webhook_secret_overlap_secs`", body = Object),
        (status = 401, description = "Missing or wrong admin bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such merchant", body = Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = []))
)]
#[tracing::instrument(name = "rotate_merchant_secret", skip_all, fields(merchant.id = %id))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize_admin(state.settings.admin_token.as_ref(), &headers)?;
    let secret = new_secret();
    let overlap_secs = state.settings.gateway.webhook_secret_overlap_secs;
    // The replaced secret keeps signing (next to the new one) until the window ends; a second
    // rotation within the window drops the oldest. No window: the previous one is dropped.
    let view: Option<MerchantView> = sqlx::query_as(&format!(
        "UPDATE merchants SET webhook_secret = $2,
             previous_webhook_secret = CASE WHEN $3 > 0 THEN webhook_secret END,
             previous_secret_expires_at = CASE WHEN $3 > 0
                 THEN now() + make_interval(secs => $3::double precision) END,
             updated_at = now()
         WHERE merchant_id = $1
         RETURNING {COLUMNS}, NULL::text AS webhook_secret"
    ))
    .bind(&id)
    .bind(state.secrets.seal(&secret, &id))
    .bind(overlap_secs)
    .fetch_optional(&state.pool)
    .await
    .map_err(ApiError::internal)?;
    let mut view = view.ok_or(ApiError::MerchantNotFound(id.clone()))?;
    view.webhook_secret = Some(secret);
    tracing::info!(merchant_id = %id, overlap_secs, "webhook secret rotated");
    Ok(axum::Json(view).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/merchants/{id}",
    tag = "merchants",
    params(("id" = String, Path, description = "Merchant id")),
    responses(
        (status = 200, description = "The merchant's settings, never the secret", body = Object),
        (status = 401, description = "Missing or wrong admin bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such merchant", body = Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = []))
)]
#[tracing::instrument(name = "get_merchant", skip_all, fields(merchant.id = %id))]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize_admin(state.settings.admin_token.as_ref(), &headers)?;
    let view: Option<MerchantView> = sqlx::query_as(&format!(
        "SELECT {COLUMNS}, NULL::text AS webhook_secret FROM merchants WHERE merchant_id = $1"
    ))
    .bind(&id)
    .fetch_optional(&state.pool)
    .await
    .map_err(ApiError::internal)?;
    let view = view.ok_or(ApiError::MerchantNotFound(id))?;
    Ok(axum::Json(view).into_response())
}
