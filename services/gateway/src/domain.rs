//! The payment request and its validation into domain values.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::currencies::is_iso_4217;
use crate::problem::FieldError;

/// The body of `POST /v1/payments`, as sent. Unknown fields are rejected.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentRequestBody {
    /// Merchant receiving the funds: 1-64 characters of `[A-Za-z0-9_-]`.
    #[schema(example = "m_1", pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub merchant_id: String,
    /// Amount in the currency's minor unit (cents for EUR): a positive integer, at most the
    /// configured maximum (`gateway.max_amount_minor`, 100000000 by default).
    #[schema(example = 1999, minimum = 1)]
    pub amount_minor: i64,
    /// ISO 4217 alphabetic code, upper case.
    #[schema(example = "EUR", pattern = "^[A-Z]{3}$")]
    pub currency: String,
    /// Customer paying: 1-64 characters of `[A-Za-z0-9_-]`.
    #[schema(example = "c_1", pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub customer_id: String,
    /// One of `card`, `sepa_debit`, `ach_debit`, `bank_transfer`, `wallet`.
    #[schema(example = "card")]
    pub payment_method: String,
    /// Where the outcome e-mail goes; none is sent without it.
    #[serde(default)]
    pub customer_email: Option<String>,
}

/// A validated payment request. Field order here is the canonical order for fingerprints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PaymentRequest {
    pub merchant_id: String,
    pub customer_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub payment_method: String,
    /// Absent from the fingerprint when not given, so fingerprints of requests without it
    /// stay what they were before the field existed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_email: Option<String>,
}

const MAX_ID_LEN: usize = 64;
const PAYMENT_METHODS: &[&str] = &["card", "sepa_debit", "ach_debit", "bank_transfer", "wallet"];

pub fn check_id(field: &str, value: &str, errors: &mut Vec<FieldError>) {
    let ok = !value.is_empty()
        && value.len() <= MAX_ID_LEN
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !ok {
        errors.push(FieldError {
            field: field.into(),
            message: format!("must be 1-{MAX_ID_LEN} characters of [A-Za-z0-9_-]"),
        });
    }
}

/// A plain `local@domain` address: no display name, comments, spaces or quoting.
pub fn is_plain_email(value: &str) -> bool {
    let Some((local, domain)) = value.split_once('@') else {
        return false;
    };
    value.len() <= 254
        && !local.is_empty()
        && local.len() <= 64
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && value
            .chars()
            .all(|c| c.is_ascii_graphic() && !"<>()[],;:\\\"".contains(c))
        && !domain.contains('@')
}

impl PaymentRequestBody {
    /// Validates every field and reports all problems at once.
    pub fn validate(self, max_amount_minor: i64) -> Result<PaymentRequest, Vec<FieldError>> {
        let mut errors = Vec::new();
        check_id("merchant_id", &self.merchant_id, &mut errors);
        check_id("customer_id", &self.customer_id, &mut errors);
        if self.amount_minor <= 0 || self.amount_minor > max_amount_minor {
            errors.push(FieldError {
                field: "amount_minor".into(),
                message: format!(
                    "must be a positive integer in minor units, at most {max_amount_minor}"
                ),
            });
        }
        if !is_iso_4217(&self.currency) {
            errors.push(FieldError {
                field: "currency".into(),
                message: "must be an ISO 4217 alphabetic code in upper case, e.g. EUR".into(),
            });
        }
        if !PAYMENT_METHODS.contains(&self.payment_method.as_str()) {
            errors.push(FieldError {
                field: "payment_method".into(),
                message: format!("must be one of {}", PAYMENT_METHODS.join(", ")),
            });
        }
        if let Some(email) = &self.customer_email {
            if !is_plain_email(email) {
                errors.push(FieldError {
                    field: "customer_email".into(),
                    message: "must be a plain e-mail address such as jane@example.com".into(),
                });
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(PaymentRequest {
            merchant_id: self.merchant_id,
            customer_id: self.customer_id,
            amount_minor: self.amount_minor,
            currency: self.currency,
            payment_method: self.payment_method,
            customer_email: self.customer_email,
        })
    }
}

impl PaymentRequest {
    /// SHA-256 over the canonical serialisation: field order and whitespace of the original
    /// body do not change it, any value does.
    pub fn fingerprint(&self) -> String {
        let canonical = serde_json::to_vec(self).expect("a plain struct always serialises");
        hex::encode(Sha256::digest(canonical))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> PaymentRequestBody {
        serde_json::from_str(json).unwrap()
    }

    const VALID: &str = r#"{"merchant_id":"m_1","amount_minor":1999,"currency":"EUR","customer_id":"c_1","payment_method":"card"}"#;

    #[test]
    fn fingerprint_ignores_field_order_and_whitespace() {
        let a = body(VALID).validate(1_000_000).unwrap();
        let b = body(
            r#"{ "payment_method":"card", "customer_id":"c_1",
            "currency":"EUR","amount_minor":1999, "merchant_id":"m_1" }"#,
        )
        .validate(1_000_000)
        .unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        let c = body(&VALID.replace("1999", "2000"))
            .validate(1_000_000)
            .unwrap();
        assert_ne!(a.fingerprint(), c.fingerprint());
    }

    #[test]
    fn reports_every_invalid_field() {
        let errors = body(r#"{"merchant_id":"m 1","amount_minor":0,"currency":"eur","customer_id":"","payment_method":"cash"}"#)
            .validate(1_000_000)
            .unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "merchant_id",
                "customer_id",
                "amount_minor",
                "currency",
                "payment_method"
            ]
        );
    }

    #[test]
    fn amount_is_bounded_above() {
        assert!(body(VALID).validate(1999).is_ok());
        assert!(body(VALID).validate(1998).is_err());
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert!(
            serde_json::from_str::<PaymentRequestBody>(&VALID.replace("}", r#","extra":1}"#))
                .is_err()
        );
    }
}
