//! Webhook signatures: `Paystream-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>` where the
//! MAC is keyed with the merchant's whole secret (`whsec_…`) over `"<t>.<raw body>"`.
//!
//! A receiver recomputes the MAC over the raw body it received, compares in constant time and
//! rejects a `t` older than its tolerance (5 minutes recommended), which bounds replays.
//!
//! The header may carry several `v1` (`t=…,v1=<current>,v1=<previous>`): during the overlap
//! window after a secret rotation, one per valid secret. A receiver accepts when any `v1`
//! matches its secret, so it keeps accepting with the old secret until it switches.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header carrying timestamp and signature.
pub const SIGNATURE_HEADER: &str = "Paystream-Signature";
/// The header carrying the event id, stable across resends: receivers dedupe on it.
pub const EVENT_ID_HEADER: &str = "Paystream-Event-Id";
/// How old a signed timestamp may be before a receiver should reject it.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut mac =
        HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `Paystream-Signature` value for `body` signed at `timestamp` (unix seconds).
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    sign_all(&[secret], timestamp, body)
}

/// The `Paystream-Signature` value with one `v1` per secret, in order (current first).
pub fn sign_all(secrets: &[&str], timestamp: i64, body: &[u8]) -> String {
    let mut header = format!("t={timestamp}");
    for secret in secrets {
        let digest = mac(secret, timestamp, body).finalize().into_bytes();
        header.push_str(",v1=");
        header.push_str(&hex::encode(digest));
    }
    header
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("malformed signature header")]
    Malformed,
    #[error("signature does not match the body")]
    Mismatch,
    #[error("signed {age_secs} s ago, beyond the tolerance")]
    TooOld { age_secs: i64 },
}

/// Verifies a `Paystream-Signature` header value against the raw `body`, at time `now`
/// (unix seconds), accepting timestamps at most `tolerance_secs` old (or as far ahead).
pub fn verify(
    secret: &str,
    header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", s)) => signatures.push(hex::decode(s).map_err(|_| VerifyError::Malformed)?),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(VerifyError::Malformed)?;
    if signatures.is_empty() {
        return Err(VerifyError::Malformed);
    }
    let age = now - timestamp;
    if age.abs() > tolerance_secs {
        return Err(VerifyError::TooOld { age_secs: age });
    }
    signatures
        .iter()
        .any(|s| mac(secret, timestamp, body).verify_slice(s).is_ok())
        .then_some(())
        .ok_or(VerifyError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test";

    #[test]
    fn a_signature_verifies_only_for_its_body_secret_and_time() {
        let body = br#"{"id":"e1"}"#;
        let header = sign(SECRET, 1_700_000_000, body);
        assert!(header.starts_with("t=1700000000,v1="));
        assert_eq!(verify(SECRET, &header, body, 1_700_000_100, 300), Ok(()));
        assert_eq!(
            verify(SECRET, &header, br#"{"id":"e2"}"#, 1_700_000_100, 300),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify("whsec_other", &header, body, 1_700_000_100, 300),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(SECRET, &header, body, 1_700_000_301, 300),
            Err(VerifyError::TooOld { age_secs: 301 })
        );
        assert_eq!(
            verify(SECRET, "v1=abcd", body, 0, 300),
            Err(VerifyError::Malformed)
        );
    }

    #[test]
    fn during_a_rotation_both_secrets_verify() {
        let body = br#"{"id":"e1"}"#;
        let header = sign_all(&["whsec_new", "whsec_old"], 1_700_000_000, body);
        assert_eq!(header.matches(",v1=").count(), 2, "{header}");
        assert!(header.starts_with(&sign("whsec_new", 1_700_000_000, body)));
        for secret in ["whsec_new", "whsec_old"] {
            assert_eq!(verify(secret, &header, body, 1_700_000_000, 300), Ok(()));
        }
        assert_eq!(
            verify("whsec_other", &header, body, 1_700_000_000, 300),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn matches_an_independent_hmac_computation() {
        // HMAC-SHA256(key="key", "The quick brown fox jumps over the lazy dog") from RFC 4231's
        // well-known example, with the message split as "<t>.<body>".
        let header = sign("key", 0, b"The quick brown fox jumps over the lazy dog");
        let expected = {
            let mut m = HmacSha256::new_from_slice(b"key").unwrap();
            m.update(b"0.The quick brown fox jumps over the lazy dog");
            hex::encode(m.finalize().into_bytes())
        };
        assert_eq!(header, format!("t=0,v1={expected}"));
    }
}
