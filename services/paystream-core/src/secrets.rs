//! Secrets at rest (merchants' webhook signing secrets): AES-256-GCM with a key from the
//! configuration (`secrets.encryption_key`, `PAYSTREAM_SECRETS__ENCRYPTION_KEY`: 32 bytes,
//! base64). The gateway seals a secret when it creates or rotates it; the notifier opens it to
//! sign. One implementation for both, here.
//!
//! A sealed value is `v1:<key id>:<base64(nonce || ciphertext || tag)>`: `v1` the format, the
//! key id the first 8 hex digits of SHA-256 over the key (names the key without revealing it,
//! so a later key rotation can keep the old key for reading and re-seal), a random 96-bit
//! nonce per value. The caller's `context` (the merchant id) is bound as associated data: a
//! sealed value copied to another merchant's row does not open.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::Digest;

/// The format prefix of a sealed value.
pub const SEALED_PREFIX: &str = "v1:";
const NONCE_LEN: usize = 12;

/// `[secrets]`: read by the gateway (seals) and the notifier (opens).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SecretsSettings {
    /// 32 random bytes, base64 (`openssl rand -base64 32`). Required: a service that needs it
    /// refuses to start without it ([`SecretBox::from_settings`]).
    pub encryption_key: Option<SecretString>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("not a sealed secret (no `v1:` prefix): stored in clear?")]
    NotSealed,
    #[error("malformed sealed secret")]
    Malformed,
    #[error("sealed with key {found}, this service holds key {expected}")]
    WrongKey { found: String, expected: String },
    #[error("sealed secret does not authenticate (tampered, or another record's)")]
    Tampered,
}

/// Seals and opens secrets with one AES-256-GCM key.
#[derive(Clone)]
pub struct SecretBox {
    cipher: Aes256Gcm,
    key_id: String,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretBox")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl SecretBox {
    /// The box of `secrets.encryption_key`; an error naming the setting when it is unset or
    /// not 32 bytes of base64.
    pub fn from_settings(settings: &SecretsSettings) -> anyhow::Result<Self> {
        let key = settings.encryption_key.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "secrets.encryption_key (PAYSTREAM_SECRETS__ENCRYPTION_KEY) is required: \
                 32 random bytes, base64 (`openssl rand -base64 32`); it encrypts merchants' \
                 webhook secrets at rest"
            )
        })?;
        Self::from_base64(key.expose_secret())
            .map_err(|e| anyhow::anyhow!("secrets.encryption_key: {e}"))
    }

    /// The box of a base64 key of 32 bytes.
    pub fn from_base64(key: &str) -> anyhow::Result<Self> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .map_err(|_| anyhow::anyhow!("not valid base64"))?;
        anyhow::ensure!(
            bytes.len() == 32,
            "must decode to 32 bytes (AES-256), got {}",
            bytes.len()
        );
        let cipher = Aes256Gcm::new_from_slice(&bytes).expect("32 bytes is an AES-256 key");
        let key_id = hex::encode(&sha2::Sha256::digest(&bytes)[..4]);
        Ok(Self { cipher, key_id })
    }

    /// The id of this box's key, as it appears in what it seals.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Whether `stored` is a sealed value (rather than a secret kept in clear).
    pub fn is_sealed(stored: &str) -> bool {
        stored.starts_with(SEALED_PREFIX)
    }

    /// Seals `plaintext` for the record `context` (e.g. the merchant id), with a fresh nonce.
    pub fn seal(&self, plaintext: &str, context: &str) -> String {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: context.as_bytes(),
                },
            )
            .expect("AES-GCM encryption of a short secret cannot fail");
        let mut raw = nonce.to_vec();
        raw.extend_from_slice(&ciphertext);
        format!(
            "{SEALED_PREFIX}{}:{}",
            self.key_id,
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }

    /// Opens a value [`Self::seal`] produced for the same `context`.
    pub fn open(&self, stored: &str, context: &str) -> Result<String, OpenError> {
        let rest = stored
            .strip_prefix(SEALED_PREFIX)
            .ok_or(OpenError::NotSealed)?;
        let (key_id, data) = rest.split_once(':').ok_or(OpenError::Malformed)?;
        if key_id != self.key_id {
            return Err(OpenError::WrongKey {
                found: key_id.to_string(),
                expected: self.key_id.clone(),
            });
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|_| OpenError::Malformed)?;
        if raw.len() < NONCE_LEN + 16 {
            return Err(OpenError::Malformed);
        }
        let (nonce, ciphertext) = raw.split_at(NONCE_LEN);
        let plaintext = self
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| OpenError::Tampered)?;
        String::from_utf8(plaintext).map_err(|_| OpenError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const OTHER: &str = "Hx4dHBsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA=";

    #[test]
    fn a_sealed_secret_opens_to_itself_and_hides_it() {
        let b = SecretBox::from_base64(KEY).unwrap();
        let sealed = b.seal("whsec_abc", "m_1");
        assert!(
            sealed.starts_with(&format!("v1:{}:", b.key_id())),
            "{sealed}"
        );
        assert!(!sealed.contains("whsec_abc"));
        assert!(SecretBox::is_sealed(&sealed) && !SecretBox::is_sealed("whsec_abc"));
        assert_eq!(b.open(&sealed, "m_1").unwrap(), "whsec_abc");
    }

    #[test]
    fn nonces_differ_per_value() {
        let b = SecretBox::from_base64(KEY).unwrap();
        let (x, y) = (b.seal("whsec_abc", "m_1"), b.seal("whsec_abc", "m_1"));
        assert_ne!(x, y);
        let raw = |s: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(s.rsplit(':').next().unwrap())
                .unwrap()
        };
        assert_ne!(raw(&x)[..NONCE_LEN], raw(&y)[..NONCE_LEN]);
    }

    #[test]
    fn a_wrong_key_does_not_open() {
        let sealed = SecretBox::from_base64(KEY)
            .unwrap()
            .seal("whsec_abc", "m_1");
        let other = SecretBox::from_base64(OTHER).unwrap();
        assert!(matches!(
            other.open(&sealed, "m_1"),
            Err(OpenError::WrongKey { .. })
        ));
        // Even when the key id is forged to match, authentication fails.
        let forged = sealed.replacen(
            SecretBox::from_base64(KEY).unwrap().key_id(),
            other.key_id(),
            1,
        );
        assert_eq!(other.open(&forged, "m_1"), Err(OpenError::Tampered));
    }

    #[test]
    fn tampering_or_another_records_context_does_not_open() {
        let b = SecretBox::from_base64(KEY).unwrap();
        let sealed = b.seal("whsec_abc", "m_1");
        assert_eq!(b.open(&sealed, "m_2"), Err(OpenError::Tampered));
        let (head, data) = sealed.rsplit_once(':').unwrap();
        let mut raw = base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap();
        for i in [0, NONCE_LEN, raw.len() - 1] {
            raw[i] ^= 1;
            let bad = format!(
                "{head}:{}",
                base64::engine::general_purpose::STANDARD.encode(&raw)
            );
            assert_eq!(b.open(&bad, "m_1"), Err(OpenError::Tampered), "byte {i}");
            raw[i] ^= 1;
        }
        assert_eq!(b.open("whsec_abc", "m_1"), Err(OpenError::NotSealed));
        assert_eq!(b.open("v1:zz", "m_1"), Err(OpenError::Malformed));
    }

    #[test]
    fn the_key_is_required_and_checked() {
        let missing = SecretBox::from_settings(&SecretsSettings::default()).unwrap_err();
        assert!(
            missing
                .to_string()
                .contains("PAYSTREAM_SECRETS__ENCRYPTION_KEY"),
            "{missing}"
        );
        let short = SecretsSettings {
            encryption_key: Some(SecretString::from("AAEC")),
        };
        assert!(SecretBox::from_settings(&short).is_err());
        let ok = SecretsSettings {
            encryption_key: Some(SecretString::from(KEY)),
        };
        assert!(SecretBox::from_settings(&ok).is_ok());
    }
}
