//! Reading request bodies, shared by the routes: the JSON content-type check and the bounded,
//! parsed body, each refused as problem+json.

use axum::body::Body;
use axum::http::{header, HeaderMap};

use crate::problem::{ApiError, FieldError, ParsePosition};

/// `415` unless `Content-Type` is `application/json` or an `application/*+json` type.
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        });
    is_json.then_some(()).ok_or(ApiError::UnsupportedMediaType)
}

/// Reads and parses a JSON body within the configured size limit: `413` beyond it, `400` with
/// the position for malformed JSON, `422` for well-formed JSON of the wrong shape.
pub async fn read_request<T: serde::de::DeserializeOwned>(
    body: Body,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::PayloadTooLarge(limit))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        if e.is_data() {
            // Well-formed JSON of the wrong shape: unknown, missing or mistyped fields.
            ApiError::Validation(vec![FieldError {
                field: "body".into(),
                message: e.to_string(),
            }])
        } else {
            ApiError::MalformedJson {
                position: ParsePosition {
                    line: e.line(),
                    column: e.column(),
                },
                message: e.to_string(),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn content_type(value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn json_and_json_suffixed_types_are_json() {
        for ok in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/merge-patch+json",
        ] {
            assert!(require_json(&content_type(ok)).is_ok(), "{ok}");
        }
        for bad in ["text/plain", "text/json", "application/jsonx"] {
            assert!(
                matches!(
                    require_json(&content_type(bad)),
                    Err(ApiError::UnsupportedMediaType)
                ),
                "{bad}"
            );
        }
        assert!(require_json(&HeaderMap::new()).is_err());
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Shape {
        a: u8,
    }

    #[tokio::test]
    async fn bodies_are_refused_by_kind() {
        assert_eq!(
            read_request::<Shape>(Body::from(r#"{"a":1}"#), 64)
                .await
                .unwrap()
                .a,
            1
        );
        assert!(matches!(
            read_request::<Shape>(Body::from(r#"{"a":1}"#), 3).await,
            Err(ApiError::PayloadTooLarge(3))
        ));
        assert!(matches!(
            read_request::<Shape>(Body::from("{\n  \"a\": }"), 64).await,
            Err(ApiError::MalformedJson {
                position: ParsePosition { line: 2, column: 8 },
                ..
            })
        ));
        assert!(matches!(
            read_request::<Shape>(Body::from(r#"{"b":1}"#), 64).await,
            Err(ApiError::Validation(errors)) if errors[0].field == "body"
        ));
    }
}
