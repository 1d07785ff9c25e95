//! What each request looks like: merchant and currency mix, amount, idempotency key.
//!
//! Keys are `<run id>-<sequence number>`, so every request of a run is a new payment and two
//! runs never collide. Declines and transient PSP failures are the simulator's business
//! (see [`crate::psp`]); the customer ids here never hit its deterministic triggers.

use std::str::FromStr;

use rand::Rng;
use serde::Serialize;

/// Currencies with relative weights, e.g. `EUR:60,USD:30,GBP:10`.
#[derive(Debug, Clone, PartialEq)]
pub struct CurrencyMix(Vec<(String, u32)>);

impl CurrencyMix {
    fn total(&self) -> u32 {
        self.0.iter().map(|(_, w)| w).sum()
    }

    /// The currency for a uniform draw `x` in `0..total`.
    fn pick(&self, mut x: u32) -> &str {
        for (code, weight) in &self.0 {
            if x < *weight {
                return code;
            }
            x -= weight;
        }
        &self.0[self.0.len() - 1].0
    }
}

impl FromStr for CurrencyMix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut mix = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (code, weight) = part.split_once(':').unwrap_or((part, "1"));
            let weight: u32 = weight
                .parse()
                .map_err(|_| format!("weight of {code} is not a whole number: `{weight}`"))?;
            if code.len() != 3 || !code.chars().all(|c| c.is_ascii_uppercase()) {
                return Err(format!("`{code}` is not an ISO 4217 code like EUR"));
            }
            if weight > 0 {
                mix.push((code.to_string(), weight));
            }
        }
        if mix.is_empty() {
            return Err("the currency mix needs at least one currency with a weight > 0".into());
        }
        Ok(Self(mix))
    }
}

/// The JSON body of `POST /v1/payments`.
#[derive(Debug, Clone, Serialize)]
pub struct PaymentBody<'a> {
    pub merchant_id: String,
    pub amount_minor: i64,
    pub currency: &'a str,
    pub customer_id: String,
    pub payment_method: &'static str,
}

/// Generates the requests of one run.
#[derive(Debug, Clone)]
pub struct Workload {
    run_id: String,
    merchants: u32,
    currencies: CurrencyMix,
}

impl Workload {
    pub fn new(run_id: impl Into<String>, merchants: u32, currencies: CurrencyMix) -> Self {
        Self {
            run_id: run_id.into(),
            merchants: merchants.max(1),
            currencies,
        }
    }

    pub fn idempotency_key(&self, seq: u64) -> String {
        format!("{}-{seq}", self.run_id)
    }

    /// The body of request `seq`: random merchant, currency by weight, amount 1.00–1,000.00.
    pub fn body(&self, seq: u64) -> Vec<u8> {
        let mut rng = rand::rng();
        let body = PaymentBody {
            merchant_id: format!("m_{}", rng.random_range(0..self.merchants)),
            amount_minor: rng.random_range(100..=100_000),
            currency: self
                .currencies
                .pick(rng.random_range(0..self.currencies.total())),
            customer_id: format!("c_{}_{seq}", self.run_id),
            payment_method: "card",
        };
        serde_json::to_vec(&body).expect("a plain struct always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currency_mix_parses_weights_and_defaults_to_one() {
        let mix: CurrencyMix = "EUR:3, USD".parse().unwrap();
        assert_eq!(mix, CurrencyMix(vec![("EUR".into(), 3), ("USD".into(), 1)]));
        assert!("eur:1".parse::<CurrencyMix>().is_err());
        assert!("EUR:x".parse::<CurrencyMix>().is_err());
        assert!("EUR:0".parse::<CurrencyMix>().is_err());
    }

    #[test]
    fn picks_follow_the_weights() {
        let mix: CurrencyMix = "EUR:2,USD:1".parse().unwrap();
        let picks: Vec<_> = (0..mix.total()).map(|x| mix.pick(x)).collect();
        assert_eq!(picks, ["EUR", "EUR", "USD"]);
    }

    #[test]
    fn bodies_are_valid_payment_requests() {
        let w = Workload::new("r1", 5, "GBP".parse().unwrap());
        let body: serde_json::Value = serde_json::from_slice(&w.body(7)).unwrap();
        assert_eq!(body["currency"], "GBP");
        assert_eq!(body["customer_id"], "c_r1_7");
        assert!(body["merchant_id"].as_str().unwrap().starts_with("m_"));
        let amount = body["amount_minor"].as_i64().unwrap();
        assert!((100..=100_000).contains(&amount));
        assert_ne!(w.idempotency_key(1), w.idempotency_key(2));
    }
}
