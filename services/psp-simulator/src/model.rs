//! Wire types, shared by the server and [`crate::SimulatorClient`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Body of `POST /v1/charges`. Unknown fields are accepted and ignored; they take no part in
/// deciding whether a repeated key carries the same request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeRequest {
    pub payment_id: String,
    pub merchant_id: String,
    pub customer_id: String,
    /// In the currency's minor unit; always positive.
    pub amount_minor: i64,
    /// ISO 4217 alphabetic code, upper case.
    pub currency: String,
    pub payment_method: String,
}

impl ChargeRequest {
    /// Checks what the types cannot: non-empty ids, a positive amount, a currency code shape.
    pub fn validate(&self) -> Result<(), String> {
        for (field, value) in [
            ("payment_id", &self.payment_id),
            ("merchant_id", &self.merchant_id),
            ("customer_id", &self.customer_id),
            ("payment_method", &self.payment_method),
        ] {
            if value.trim().is_empty() {
                return Err(format!("{field} must not be empty"));
            }
        }
        if self.amount_minor <= 0 {
            return Err(format!(
                "amount_minor must be positive, got {}",
                self.amount_minor
            ));
        }
        if !(self.currency.len() == 3 && self.currency.bytes().all(|b| b.is_ascii_uppercase())) {
            return Err(format!(
                "currency must be an upper-case ISO 4217 code, got {:?}",
                self.currency
            ));
        }
        Ok(())
    }
}

/// The PSP's answer to a charge (and, verbatim, to every replay of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChargeStatus {
    Succeeded,
    Declined,
}

impl ChargeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ChargeStatus::Succeeded => "succeeded",
            ChargeStatus::Declined => "declined",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeResponse {
    /// `ch_` followed by 32 hex digits.
    pub charge_id: String,
    pub payment_id: String,
    pub status: ChargeStatus,
    /// Set exactly when `status` is `declined`.
    pub decline_code: Option<String>,
    pub amount_minor: i64,
    pub currency: String,
    pub created_at: DateTime<Utc>,
}

/// The state of one idempotency key in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordStatus {
    Succeeded,
    Declined,
    /// Every call with this key failed transiently (503); nothing was charged.
    FailedTransient,
}

impl From<ChargeStatus> for RecordStatus {
    fn from(status: ChargeStatus) -> Self {
        match status {
            ChargeStatus::Succeeded => RecordStatus::Succeeded,
            ChargeStatus::Declined => RecordStatus::Declined,
        }
    }
}

/// One entry of `GET /charges`: an idempotency key, its request, its charge if any, and how
/// many calls it received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeRecord {
    pub idempotency_key: String,
    pub payment_id: String,
    pub merchant_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub status: RecordStatus,
    pub decline_code: Option<String>,
    pub charge_id: Option<String>,
    /// Every POST with this key past validation: the charge, replays, 503s and 422s.
    pub calls: u64,
    /// When the charge was created; for a key without a charge, its first call.
    pub created_at: DateTime<Utc>,
}

impl ChargeRecord {
    /// Whether the PSP created a charge for this key (succeeded or declined), as opposed to a
    /// key whose calls all failed transiently.
    pub fn has_charge(&self) -> bool {
        self.charge_id.is_some()
    }
}

/// Query of `GET /charges`; absent fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeFilter {
    pub merchant_id: Option<String>,
    pub payment_id: Option<String>,
}

impl ChargeFilter {
    pub fn all() -> Self {
        Self::default()
    }

    pub fn merchant(merchant_id: impl Into<String>) -> Self {
        Self {
            merchant_id: Some(merchant_id.into()),
            payment_id: None,
        }
    }

    pub fn payment(payment_id: impl Into<String>) -> Self {
        Self {
            merchant_id: None,
            payment_id: Some(payment_id.into()),
        }
    }

    pub fn matches(&self, request: &ChargeRequest) -> bool {
        self.merchant_id
            .as_deref()
            .is_none_or(|m| m == request.merchant_id)
            && self
                .payment_id
                .as_deref()
                .is_none_or(|p| p == request.payment_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> ChargeRequest {
        ChargeRequest {
            payment_id: "pay_1".into(),
            merchant_id: "mer_1".into(),
            customer_id: "cus_1".into(),
            amount_minor: 1299,
            currency: "EUR".into(),
            payment_method: "card".into(),
        }
    }

    #[test]
    fn valid_request_passes() {
        assert_eq!(request().validate(), Ok(()));
    }

    #[test]
    fn invalid_requests_are_refused() {
        let cases: [fn(&mut ChargeRequest); 5] = [
            |r| r.amount_minor = 0,
            |r| r.amount_minor = -5,
            |r| r.currency = "eur".into(),
            |r| r.currency = "EURO".into(),
            |r| r.payment_id = " ".into(),
        ];
        for (i, break_it) in cases.iter().enumerate() {
            let mut r = request();
            break_it(&mut r);
            assert!(r.validate().is_err(), "case {i} accepted: {r:?}");
        }
    }

    #[test]
    fn unknown_fields_do_not_change_the_request() {
        let plain: ChargeRequest = serde_json::from_value(serde_json::json!({
            "payment_id": "pay_1", "merchant_id": "mer_1", "customer_id": "cus_1",
            "amount_minor": 1299, "currency": "EUR", "payment_method": "card"
        }))
        .unwrap();
        let extra: ChargeRequest = serde_json::from_value(serde_json::json!({
            "currency": "EUR", "payment_method": "card", "description": "ignored",
            "payment_id": "pay_1", "merchant_id": "mer_1", "customer_id": "cus_1",
            "amount_minor": 1299
        }))
        .unwrap();
        assert_eq!(plain, extra);
    }

    #[test]
    fn filter_matches_on_given_fields_only() {
        let r = request();
        assert!(ChargeFilter::all().matches(&r));
        assert!(ChargeFilter::merchant("mer_1").matches(&r));
        assert!(!ChargeFilter::merchant("mer_2").matches(&r));
        assert!(ChargeFilter::payment("pay_1").matches(&r));
        let both = ChargeFilter {
            merchant_id: Some("mer_1".into()),
            payment_id: Some("pay_2".into()),
        };
        assert!(!both.matches(&r));
    }

    #[test]
    fn statuses_use_snake_case() {
        assert_eq!(
            serde_json::to_value(RecordStatus::FailedTransient).unwrap(),
            "failed_transient"
        );
        assert_eq!(
            serde_json::to_value(ChargeStatus::Succeeded).unwrap(),
            "succeeded"
        );
    }
}
