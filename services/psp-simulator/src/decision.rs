//! The pure rules for one charge call: conflict, transient failure, replay or a new charge.
//!
//! Random draws are taken up front ([`Rolls`]) so [`decide`] is a plain function of its
//! inputs and every rule can be unit tested without a server or a seeded generator.

use rand::Rng;

use crate::configuration::SimulatorSettings;
use crate::model::{ChargeRequest, ChargeStatus};

/// `customer_id` prefix that always declines with [`TRIGGER_DECLINE_CODE`].
pub const DECLINE_TRIGGER_PREFIX: &str = "cus_decline";
/// `customer_id` prefix whose first call per idempotency key fails with 503.
pub const FLAKY_TRIGGER_PREFIX: &str = "cus_flaky";
/// The decline code of the [`DECLINE_TRIGGER_PREFIX`] trigger.
pub const TRIGGER_DECLINE_CODE: &str = "card_declined";
/// Codes a rate-based decline picks from.
pub const DECLINE_CODES: [&str; 4] = [
    "card_declined",
    "insufficient_funds",
    "expired_card",
    "do_not_honor",
];

/// The random draws one call may need, each uniform in `[0, 1)` (or any index for
/// `decline_code`). A rate `r` fires when the draw is below it: 0.0 never, 1.0 always.
#[derive(Debug, Clone, Copy)]
pub struct Rolls {
    pub transient: f64,
    pub decline: f64,
    pub decline_code: usize,
}

impl Rolls {
    pub fn draw() -> Self {
        let mut rng = rand::rng();
        Self {
            transient: rng.random(),
            decline: rng.random(),
            decline_code: rng.random_range(0..DECLINE_CODES.len()),
        }
    }

    /// Draws that fire no rate: for tests.
    pub fn quiet() -> Self {
        Self {
            transient: 1.0,
            decline: 1.0,
            decline_code: 0,
        }
    }
}

/// What the ledger knows about an idempotency key from earlier calls.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    /// The request the key was first used with; the key is bound to it.
    pub request: &'a ChargeRequest,
    /// Whether a charge exists for the key.
    pub charged: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The key was first used with a different request: 422, nothing charged.
    KeyReused,
    /// 503 before anything is charged; a retry with the same key may succeed.
    TransientFailure(TransientCause),
    /// The key already has a charge: answer it again.
    Replay,
    /// Create a charge with this outcome.
    Charge {
        status: ChargeStatus,
        decline_code: Option<&'static str>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransientCause {
    /// First call for a key whose customer has the [`FLAKY_TRIGGER_PREFIX`].
    FlakyTrigger,
    /// Drawn under `transient_failure_rate`.
    Rate,
}

impl TransientCause {
    pub fn describe(self) -> &'static str {
        match self {
            TransientCause::FlakyTrigger => {
                "simulated transient failure: first call for this key of a cus_flaky customer"
            }
            TransientCause::Rate => "simulated transient failure (transient_failure_rate)",
        }
    }
}

/// Decides one call. `seen` is `None` on the first call with a key.
///
/// Order matters: a conflicting body is refused before anything else so a reused key never
/// looks like an outage; transient failures come before replays because an outage does not
/// know what was charged; the triggers beat the rates so tests stay deterministic.
pub fn decide(
    seen: Option<Seen<'_>>,
    request: &ChargeRequest,
    knobs: &SimulatorSettings,
    rolls: Rolls,
) -> Decision {
    if seen.is_some_and(|s| s.request != request) {
        return Decision::KeyReused;
    }
    if seen.is_none() && request.customer_id.starts_with(FLAKY_TRIGGER_PREFIX) {
        return Decision::TransientFailure(TransientCause::FlakyTrigger);
    }
    if rolls.transient < knobs.transient_failure_rate {
        return Decision::TransientFailure(TransientCause::Rate);
    }
    if seen.is_some_and(|s| s.charged) {
        return Decision::Replay;
    }
    if request.customer_id.starts_with(DECLINE_TRIGGER_PREFIX) {
        return Decision::Charge {
            status: ChargeStatus::Declined,
            decline_code: Some(TRIGGER_DECLINE_CODE),
        };
    }
    if rolls.decline < knobs.decline_rate {
        return Decision::Charge {
            status: ChargeStatus::Declined,
            decline_code: Some(DECLINE_CODES[rolls.decline_code % DECLINE_CODES.len()]),
        };
    }
    Decision::Charge {
        status: ChargeStatus::Succeeded,
        decline_code: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(customer_id: &str) -> ChargeRequest {
        ChargeRequest {
            payment_id: "pay_1".into(),
            merchant_id: "mer_1".into(),
            customer_id: customer_id.into(),
            amount_minor: 500,
            currency: "EUR".into(),
            payment_method: "card".into(),
        }
    }

    fn knobs(decline_rate: f64, transient_failure_rate: f64) -> SimulatorSettings {
        SimulatorSettings {
            decline_rate,
            transient_failure_rate,
            ..Default::default()
        }
    }

    /// The largest draws `Rolls::draw` can produce: only a rate of 1.0 fires below them.
    fn high_draws() -> Rolls {
        Rolls {
            transient: 0.999_999,
            decline: 0.999_999,
            decline_code: 0,
        }
    }

    const SUCCEEDED: Decision = Decision::Charge {
        status: ChargeStatus::Succeeded,
        decline_code: None,
    };

    #[test]
    fn first_call_charges() {
        let r = request("cus_1");
        assert_eq!(
            decide(None, &r, &knobs(0.0, 0.0), Rolls::quiet()),
            SUCCEEDED
        );
    }

    #[test]
    fn same_request_after_a_charge_replays() {
        let r = request("cus_1");
        let seen = Seen {
            request: &r,
            charged: true,
        };
        assert_eq!(
            decide(Some(seen), &r.clone(), &knobs(0.0, 0.0), Rolls::quiet()),
            Decision::Replay
        );
    }

    #[test]
    fn same_request_after_only_transient_failures_charges() {
        let r = request("cus_1");
        let seen = Seen {
            request: &r,
            charged: false,
        };
        assert_eq!(
            decide(Some(seen), &r, &knobs(0.0, 0.0), Rolls::quiet()),
            SUCCEEDED
        );
    }

    #[test]
    fn different_request_with_a_used_key_is_a_conflict() {
        let first = request("cus_1");
        let mut second = first.clone();
        second.amount_minor += 1;
        for charged in [true, false] {
            let seen = Seen {
                request: &first,
                charged,
            };
            // Even an outage-level failure rate does not hide the conflict.
            assert_eq!(
                decide(Some(seen), &second, &knobs(0.0, 1.0), high_draws()),
                Decision::KeyReused
            );
        }
    }

    #[test]
    fn decline_trigger_declines_with_card_declined_whatever_the_rate() {
        let r = request("cus_decline_42");
        let expected = Decision::Charge {
            status: ChargeStatus::Declined,
            decline_code: Some("card_declined"),
        };
        assert_eq!(decide(None, &r, &knobs(0.0, 0.0), Rolls::quiet()), expected);
        let rolls = Rolls {
            decline_code: 2,
            ..Rolls::quiet()
        };
        assert_eq!(decide(None, &r, &knobs(1.0, 0.0), rolls), expected);
    }

    #[test]
    fn flaky_trigger_fails_only_the_first_call() {
        let r = request("cus_flaky_7");
        assert_eq!(
            decide(None, &r, &knobs(0.0, 0.0), Rolls::quiet()),
            Decision::TransientFailure(TransientCause::FlakyTrigger)
        );
        let seen = Seen {
            request: &r,
            charged: false,
        };
        assert_eq!(
            decide(Some(seen), &r, &knobs(0.0, 0.0), Rolls::quiet()),
            SUCCEEDED
        );
    }

    #[test]
    fn rates_fire_below_the_draw() {
        let r = request("cus_1");
        let rolls = Rolls {
            transient: 0.3,
            decline: 0.6,
            decline_code: 1,
        };
        assert_eq!(decide(None, &r, &knobs(0.5, 0.3), rolls), SUCCEEDED);
        assert_eq!(
            decide(None, &r, &knobs(0.5, 0.31), rolls),
            Decision::TransientFailure(TransientCause::Rate)
        );
        assert_eq!(
            decide(None, &r, &knobs(0.61, 0.0), rolls),
            Decision::Charge {
                status: ChargeStatus::Declined,
                decline_code: Some("insufficient_funds"),
            }
        );
    }

    #[test]
    fn rate_one_always_fires_and_zero_never() {
        let r = request("cus_1");
        let low = Rolls {
            transient: 0.0,
            decline: 0.0,
            decline_code: 0,
        };
        let high = high_draws();
        assert_eq!(decide(None, &r, &knobs(0.0, 0.0), low), SUCCEEDED);
        assert!(matches!(
            decide(None, &r, &knobs(1.0, 0.0), high),
            Decision::Charge {
                status: ChargeStatus::Declined,
                ..
            }
        ));
        assert!(matches!(
            decide(None, &r, &knobs(0.0, 1.0), high),
            Decision::TransientFailure(TransientCause::Rate)
        ));
    }

    #[test]
    fn outages_also_hit_replays() {
        let r = request("cus_1");
        let seen = Seen {
            request: &r,
            charged: true,
        };
        assert_eq!(
            decide(Some(seen), &r, &knobs(0.0, 1.0), high_draws()),
            Decision::TransientFailure(TransientCause::Rate)
        );
    }

    #[test]
    fn decline_code_index_wraps() {
        let r = request("cus_1");
        let rolls = Rolls {
            decline: 0.0,
            decline_code: DECLINE_CODES.len() + 3,
            ..Rolls::quiet()
        };
        assert_eq!(
            decide(None, &r, &knobs(1.0, 0.0), rolls),
            Decision::Charge {
                status: ChargeStatus::Declined,
                decline_code: Some(DECLINE_CODES[3]),
            }
        );
    }
}
