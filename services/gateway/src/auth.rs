//! Bearer-token authentication: optional API keys and the client identity every client `/v1`
//! request carries, and the admin token of the merchant administration routes.
//!
//! API keys are configured as SHA-256 hashes (hex) per client id, so the configuration holds
//! no usable secret. A presented key (`Authorization: Bearer <key>`) is hashed and compared
//! with every configured hash in constant time; the matched entry's client id scopes
//! idempotency keys, rate limits and payments. With authentication off every request is the
//! anonymous client.
//!
//! With authentication on, a client acts only for the merchants an administrator bound it to
//! (`client_merchants`, [`crate::bindings`]); [`ClientId::merchant_to_check`] says whether a
//! request's merchant must be checked.
//!
//! The admin token ([`authorize_admin`]) is read from the same `Authorization: Bearer` header
//! (the scheme in any case) and compared in constant time as well.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::Response;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::problem::ApiError;

/// The client of requests when authentication is off; every idempotency key, rate limit and
/// payment lives in its client's namespace.
pub const ANONYMOUS_CLIENT: &str = "anonymous";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct AuthSettings {
    /// Require an API key on `/v1` routes.
    pub enabled: bool,
    /// Client id → SHA-256 (hex) of its API key; several keys (rotation) comma-separated.
    /// `printf %s "$KEY" | sha256sum` produces a hash.
    pub api_keys: BTreeMap<String, String>,
}

/// The authenticated (or anonymous) client of a request, set by [`authenticate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientId(pub String);

impl ClientId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the anonymous client of a gateway with authentication off. No API key
    /// can carry its id (reserved, see [`ApiKeys::from_settings`]), so an authenticated client
    /// never is.
    pub fn is_anonymous(&self) -> bool {
        self.0 == ANONYMOUS_CLIENT
    }

    /// The merchant whose binding to this client a request for `merchant` must find: the
    /// merchant itself for an authenticated client, `None` for the anonymous one. With
    /// authentication off every request is anonymous, so there is nobody to bind and every
    /// merchant is open (development mode); with it on a client acts only for the merchants an
    /// administrator bound it to (`client_merchants`).
    pub fn merchant_to_check<'a>(&self, merchant: &'a str) -> Option<&'a str> {
        (!self.is_anonymous()).then_some(merchant)
    }
}

pub const MAX_CLIENT_ID_LEN: usize = 64;

/// An id an API client may have: 1-64 characters of `[A-Za-z0-9_.-]`, not the reserved
/// [`ANONYMOUS_CLIENT`]. Configured keys and merchant bindings are checked with it.
pub fn is_valid_client_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_CLIENT_ID_LEN
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        && id != ANONYMOUS_CLIENT
}

/// The configured keys, checked at start-up.
pub struct ApiKeys {
    enabled: bool,
    entries: Vec<([u8; 32], String)>,
}

impl ApiKeys {
    pub fn from_settings(settings: &AuthSettings) -> anyhow::Result<Self> {
        let mut entries = Vec::new();
        for (client, hashes) in &settings.api_keys {
            anyhow::ensure!(
                client != ANONYMOUS_CLIENT,
                "API client id `{ANONYMOUS_CLIENT}` is reserved for unauthenticated requests"
            );
            anyhow::ensure!(
                is_valid_client_id(client),
                "API client id `{client}` must be 1-{MAX_CLIENT_ID_LEN} characters of [A-Za-z0-9_.-]"
            );
            for hash in hashes.split(',').map(str::trim) {
                let bytes = hex::decode(hash)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .with_context(|| {
                        format!(
                            "API key of client `{client}` must be a SHA-256 hash as 64 hex digits"
                        )
                    })?;
                entries.push((bytes, client.clone()));
            }
        }
        anyhow::ensure!(
            !settings.enabled || !entries.is_empty(),
            "authentication is enabled but no API key is configured (gateway.auth.api_keys)"
        );
        Ok(Self {
            enabled: settings.enabled,
            entries,
        })
    }

    /// The client a request belongs to, or 401.
    pub fn client_of(&self, headers: &HeaderMap) -> Result<ClientId, ApiError> {
        if !self.enabled {
            return Ok(ClientId(ANONYMOUS_CLIENT.to_string()));
        }
        let key = bearer_token(headers).ok_or(ApiError::Unauthorized)?;
        self.find(key)
            .map(|client| ClientId(client.to_string()))
            .ok_or(ApiError::Unauthorized)
    }

    /// Compares the key's hash with every entry without an early exit, so the time taken does
    /// not tell which (or whether a) hash matched.
    fn find(&self, key: &str) -> Option<&str> {
        let digest = sha256(key);
        let mut matched = 0u32; // entry index + 1; 0 = none
        for (i, (hash, _)) in self.entries.iter().enumerate() {
            let candidate = u32::try_from(i + 1).unwrap_or(u32::MAX);
            matched.conditional_assign(&candidate, digest.ct_eq(hash));
        }
        let index = usize::try_from(matched).ok()?.checked_sub(1)?;
        self.entries.get(index).map(|(_, client)| client.as_str())
    }
}

fn sha256(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The token of `Authorization: Bearer <token>`: the scheme in any case (RFC 9110 §11.1),
/// surrounding whitespace ignored; `None` when absent, empty or another scheme.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Middleware on the client `/v1` routes: attaches the [`ClientId`] or answers 401.
pub async fn authenticate(
    State(keys): State<Arc<ApiKeys>>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let client = keys.client_of(request.headers()).inspect_err(|_| {
        crate::metrics::auth_failure();
    })?;
    request.extensions_mut().insert(client);
    Ok(next.run(request).await)
}

/// Checks `Authorization: Bearer <admin token>` on the merchant administration routes; 401
/// (`ApiError::AdminUnauthorized`) otherwise. Without a configured token every admin call is
/// refused. Digests are compared in constant time, so the comparison leaks neither the
/// token's length nor a matching prefix through timing.
pub fn authorize_admin(
    expected: Option<&SecretString>,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let expected = expected.ok_or(ApiError::AdminUnauthorized)?;
    let given = bearer_token(headers).ok_or(ApiError::AdminUnauthorized)?;
    let same: bool = sha256(given)
        .ct_eq(&sha256(expected.expose_secret()))
        .into();
    same.then_some(()).ok_or(ApiError::AdminUnauthorized)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn sha256_hex(key: &str) -> String {
        hex::encode(Sha256::digest(key.as_bytes()))
    }

    fn keys(enabled: bool, entries: &[(&str, String)]) -> anyhow::Result<ApiKeys> {
        ApiKeys::from_settings(&AuthSettings {
            enabled,
            api_keys: entries
                .iter()
                .map(|(c, h)| (c.to_string(), h.clone()))
                .collect(),
        })
    }

    fn bearer(key: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
        );
        h
    }

    #[test]
    fn matches_the_client_of_the_key() {
        let rotated = format!("{},{}", sha256_hex("old"), sha256_hex("new"));
        let keys = keys(true, &[("acme", sha256_hex("k1")), ("globex", rotated)]).unwrap();
        assert_eq!(keys.client_of(&bearer("k1")).unwrap().as_str(), "acme");
        assert_eq!(keys.client_of(&bearer("old")).unwrap().as_str(), "globex");
        assert_eq!(keys.client_of(&bearer("new")).unwrap().as_str(), "globex");
        let mut lower = HeaderMap::new();
        lower.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer k1"));
        assert_eq!(keys.client_of(&lower).unwrap().as_str(), "acme");
        for bad in [bearer("k2"), bearer(""), HeaderMap::new()] {
            assert!(matches!(keys.client_of(&bad), Err(ApiError::Unauthorized)));
        }
        let mut basic = HeaderMap::new();
        basic.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic k1"));
        assert!(keys.client_of(&basic).is_err());
    }

    fn authorization(value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_token_trimmed() {
        for value in ["Bearer k1", "bearer k1", "BEARER k1", "BeArEr   k1  "] {
            assert_eq!(bearer_token(&authorization(value)), Some("k1"), "{value}");
        }
        for value in ["Basic k1", "Bearer", "Bearer   ", "Bearerk1", "k1"] {
            assert_eq!(bearer_token(&authorization(value)), None, "{value}");
        }
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    #[test]
    fn admin_token_must_match_exactly() {
        let token = SecretString::from("s3cret-admin");
        let admin = |value| authorize_admin(Some(&token), &authorization(value));
        assert!(admin("Bearer s3cret-admin").is_ok());
        assert!(admin("bearer s3cret-admin").is_ok(), "scheme in any case");
        for wrong in [
            "Bearer s3cret",
            "Bearer s3cret-admin2",
            "Bearer S3CRET-ADMIN",
            "Basic s3cret-admin",
            "s3cret-admin",
        ] {
            assert!(
                matches!(admin(wrong), Err(ApiError::AdminUnauthorized)),
                "{wrong}"
            );
        }
        assert!(matches!(
            authorize_admin(Some(&token), &HeaderMap::new()),
            Err(ApiError::AdminUnauthorized)
        ));
        assert!(
            authorize_admin(None, &authorization("Bearer s3cret-admin")).is_err(),
            "no configured token refuses every call"
        );
    }

    #[test]
    fn disabled_means_anonymous() {
        let keys = keys(false, &[]).unwrap();
        assert_eq!(
            keys.client_of(&HeaderMap::new()).unwrap().as_str(),
            ANONYMOUS_CLIENT
        );
    }

    #[test]
    fn client_ids_are_those_an_api_key_may_carry() {
        for good in ["acme", "acme.eu", "a-b_c.9", &"x".repeat(MAX_CLIENT_ID_LEN)] {
            assert!(is_valid_client_id(good), "{good}");
        }
        let too_long = "x".repeat(MAX_CLIENT_ID_LEN + 1);
        for bad in [
            "",
            "a b",
            "a/b",
            "a*b",
            "café",
            too_long.as_str(),
            ANONYMOUS_CLIENT,
        ] {
            assert!(!is_valid_client_id(bad), "{bad}");
        }
    }

    #[test]
    fn only_authenticated_clients_are_checked_against_their_merchants() {
        let anonymous = ClientId(ANONYMOUS_CLIENT.to_string());
        assert!(anonymous.is_anonymous());
        assert_eq!(anonymous.merchant_to_check("m_1"), None);
        let acme = ClientId("acme".to_string());
        assert!(!acme.is_anonymous());
        assert_eq!(acme.merchant_to_check("m_1"), Some("m_1"));
    }

    #[test]
    fn refuses_bad_configuration() {
        assert!(keys(true, &[]).is_err(), "enabled without keys");
        assert!(keys(true, &[("acme", "abc".into())]).is_err(), "not a hash");
        assert!(keys(true, &[("a b", sha256_hex("k"))]).is_err(), "bad id");
        assert!(keys(true, &[(ANONYMOUS_CLIENT, sha256_hex("k"))]).is_err());
    }
}
