//! The HTTP API, grouped by resource as in Confluent's REST reference, plus the extractors
//! that turn malformed input into Confluent-style errors (never axum's plain-text rejections).
//!
//! Every route [`router`] serves, by handler module:
//!
//! - `GET /` (here): `{}`, as Confluent answers it.
//! - [`subjects`]: `GET /subjects`; `POST`, `DELETE /subjects/{subject}`; `GET`, `POST
//!   /subjects/{subject}/versions`; `GET`, `DELETE /subjects/{subject}/versions/{version}`;
//!   `GET /subjects/{subject}/versions/{version}/schema`.
//! - [`schemas`]: `GET /schemas/types`; `GET /schemas/ids/{id}`, `/schemas/ids/{id}/schema`,
//!   `/schemas/ids/{id}/versions`, `/schemas/ids/{id}/subjects`.
//! - [`compatibility`]: `POST /compatibility/subjects/{subject}/versions` and
//!   `POST /compatibility/subjects/{subject}/versions/{version}`.
//! - [`config`]: `GET`, `PUT`, `DELETE /config` and `/config/{subject}`.
//! - [`health`]: `GET /health/live`, `GET /health/ready`.
//!
//! Anything else is answered Confluent-style: `404` for an unknown path, `405` for an unknown
//! method on a known one.

mod compatibility;
mod config;
mod health;
mod schemas;
mod subjects;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::error::ApiError;
use crate::response::{registry_json, REGISTRY_CONTENT_TYPE};
use crate::schema::{ParsedSchema, SchemaError, SchemaType};
use crate::state::AppState;
use crate::store::Listing;

/// Request content types Confluent's resources consume.
const ACCEPTED_CONTENT_TYPES: [&str; 4] = [
    REGISTRY_CONTENT_TYPE,
    "application/vnd.schemaregistry+json",
    "application/json",
    "application/octet-stream",
];

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/subjects", get(subjects::list))
        .route(
            "/subjects/{subject}",
            post(subjects::lookup).delete(subjects::delete),
        )
        .route(
            "/subjects/{subject}/versions",
            get(subjects::versions).post(subjects::register),
        )
        .route(
            "/subjects/{subject}/versions/{version}",
            get(subjects::version).delete(subjects::delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(subjects::version_schema),
        )
        .route("/schemas/types", get(schemas::types))
        .route("/schemas/ids/{id}", get(schemas::by_id))
        .route("/schemas/ids/{id}/schema", get(schemas::raw_by_id))
        .route("/schemas/ids/{id}/versions", get(schemas::versions_by_id))
        .route("/schemas/ids/{id}/subjects", get(schemas::subjects_by_id))
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(compatibility::against_level),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(compatibility::against_version),
        )
        .route(
            "/config",
            get(config::global)
                .put(config::set_global)
                .delete(config::delete_global),
        )
        .route(
            "/config/{subject}",
            get(config::subject)
                .put(config::set_subject)
                .delete(config::delete_subject),
        )
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .with_state(state)
}

/// Confluent answers `{}` at the root; some tools use it as a liveness probe.
async fn root() -> Response {
    registry_json(StatusCode::OK, &serde_json::json!({}))
}

async fn no_route() -> ApiError {
    ApiError::NoRoute
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Path parameters, percent-decoded, with undecodable input reported Confluent-style.
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| Self(value))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

/// A JSON request body. Any of Confluent's accepted content types (or none) is fine;
/// unparseable JSON is a 400, well-formed JSON of the wrong shape a 422.
pub struct RegistryJson<T>(pub T);

impl<S, T> FromRequest<S> for RegistryJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(value) = req.headers().get(CONTENT_TYPE) {
            check_content_type(value)?;
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        parse_json(&bytes).map(Self)
    }
}

/// The body of `POST /subjects/{subject}/versions` and `POST /subjects/{subject}`. Fields
/// this registry does not use (`metadata`, `ruleSet`, `id`, `version`) are ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SchemaRequest {
    schema: String,
    schema_type: Option<String>,
    references: Option<Vec<serde_json::Value>>,
}

impl SchemaRequest {
    pub fn parse(&self) -> Result<ParsedSchema, SchemaError> {
        let schema_type = SchemaType::parse(self.schema_type.as_deref())?;
        if self.references.as_ref().is_some_and(|r| !r.is_empty()) {
            return Err(SchemaError::ReferencesUnsupported);
        }
        ParsedSchema::parse(schema_type, &self.schema)
    }
}

fn check_content_type(value: &HeaderValue) -> Result<(), ApiError> {
    let raw = value.to_str().unwrap_or_default();
    let essence = raw.split(';').next().unwrap_or_default().trim();
    if ACCEPTED_CONTENT_TYPES
        .iter()
        .any(|accepted| essence.eq_ignore_ascii_case(accepted))
    {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(raw.to_string()))
    }
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::Unprocessable(e.to_string()),
        _ => ApiError::BadRequest(format!("malformed JSON: {e}")),
    })
}

/// The `schemaType` to report: Confluent omits it for AVRO, the default.
pub fn non_avro(schema_type: &str) -> Option<&str> {
    (schema_type != SchemaType::Avro.as_str()).then_some(schema_type)
}

/// Whether a boolean query flag such as `deleted=true` is set. Parsed by hand so unknown or
/// odd parameters (`?normalize=false&fetchMaxId=...&format=`) are ignored, never rejected.
pub fn query_flag(query: Option<&str>, name: &str) -> bool {
    query_value(query, name).is_some_and(|value| value.eq_ignore_ascii_case("true"))
}

/// The first value of query parameter `name`, percent-decoded (`+` is a space).
pub fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    query
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| percent_decode(value))
}

fn percent_decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The listing a request asks for: `deletedOnly=true` (Confluent's clients also send
/// `deleted_only`), else `deleted=true`, else live only.
pub fn listing(query: Option<&str>) -> Listing {
    if query_flag(query, "deletedOnly") || query_flag(query, "deleted_only") {
        Listing::DeletedOnly
    } else if query_flag(query, "deleted") {
        Listing::WithDeleted
    } else {
        Listing::Live
    }
}

/// `offset` and `limit` paging of a list, as Confluent's listings take them (a negative or
/// absent limit means all).
pub fn page<T>(items: Vec<T>, query: Option<&str>) -> Vec<T> {
    let number = |name| query_value(query, name).and_then(|v| v.parse::<i64>().ok());
    let offset = number("offset").unwrap_or(0).max(0) as usize;
    let limit = number("limit").filter(|l| *l >= 0).map(|l| l as usize);
    let rest = items.into_iter().skip(offset);
    match limit {
        Some(limit) => rest.take(limit).collect(),
        None => rest.collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_flags() {
        assert!(query_flag(Some("deleted=true"), "deleted"));
        assert!(query_flag(Some("normalize=false&deleted=TRUE"), "deleted"));
        assert!(!query_flag(Some("deleted=false"), "deleted"));
        assert!(!query_flag(Some("deleted"), "deleted"));
        assert!(!query_flag(Some("undeleted=true"), "deleted"));
        assert!(!query_flag(None, "deleted"));
    }

    #[test]
    fn query_values_listings_and_pages() {
        assert_eq!(
            query_value(Some("subjectPrefix=team%2Fa+b&x=1"), "subjectPrefix").as_deref(),
            Some("team/a b")
        );
        assert_eq!(query_value(Some("p=%zz%4"), "p").as_deref(), Some("%zz%4"));
        assert_eq!(query_value(None, "p"), None);
        assert_eq!(listing(Some("deleted=true")), Listing::WithDeleted);
        assert_eq!(
            listing(Some("deleted=True&deleted_only=True")),
            Listing::DeletedOnly
        );
        assert_eq!(listing(Some("deletedOnly=true")), Listing::DeletedOnly);
        assert_eq!(listing(None), Listing::Live);
        let items = vec![1, 2, 3, 4];
        assert_eq!(page(items.clone(), Some("offset=1&limit=2")), vec![2, 3]);
        assert_eq!(page(items.clone(), Some("offset=0&limit=-1")), items);
        assert_eq!(page(items.clone(), Some("offset=9")), Vec::<i32>::new());
        assert_eq!(page(items.clone(), Some("offset=x")), items);
    }

    #[test]
    fn content_types() {
        for ok in [
            "application/vnd.schemaregistry.v1+json",
            "application/vnd.schemaregistry+json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/octet-stream",
        ] {
            assert!(
                check_content_type(&HeaderValue::from_static(ok)).is_ok(),
                "{ok}"
            );
        }
        for bad in ["text/plain", "application/x-www-form-urlencoded", ""] {
            assert!(
                check_content_type(&HeaderValue::from_static(bad)).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn json_errors_are_400_or_422() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Body {
            schema: String,
        }
        let syntax = parse_json::<Body>(b"{not json").unwrap_err();
        assert_eq!(syntax.codes().1, 400);
        let empty = parse_json::<Body>(b"").unwrap_err();
        assert_eq!(empty.codes().1, 400);
        let shape = parse_json::<Body>(br#"{"schema": 5}"#).unwrap_err();
        assert_eq!(shape.codes().1, 422);
        let missing = parse_json::<Body>(br#"{}"#).unwrap_err();
        assert_eq!(missing.codes().1, 422);
    }
}
