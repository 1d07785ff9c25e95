//! The in-memory ledger: one entry per idempotency key with its bound request, its charge
//! and its call count. It applies [`decide`] and records the result in one synchronous step,
//! which is what makes a key charge at most once (see `startup::AppState` for the lock).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::configuration::SimulatorSettings;
use crate::decision::{decide, Decision, Rolls, Seen, TransientCause};
use crate::model::{ChargeFilter, ChargeRecord, ChargeRequest, ChargeResponse, RecordStatus};

#[derive(Debug, Default)]
pub struct Ledger {
    entries: HashMap<String, Entry>,
    /// Orders `records()` by first sight of each key.
    next_seq: u64,
}

#[derive(Debug)]
struct Entry {
    seq: u64,
    request: ChargeRequest,
    calls: u64,
    first_seen_at: DateTime<Utc>,
    charge: Option<ChargeResponse>,
}

/// The ledger's answer to one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A new charge was created.
    Charged(ChargeResponse),
    /// The key's existing charge, unchanged.
    Replayed(ChargeResponse),
    /// The key is bound to a different request.
    KeyReused,
    /// Nothing charged; try again.
    Unavailable(TransientCause),
}

impl Ledger {
    /// Handles one validated call with `key`: counts it, decides, records any new charge.
    pub fn handle(
        &mut self,
        key: &str,
        request: ChargeRequest,
        knobs: &SimulatorSettings,
        rolls: Rolls,
    ) -> Answer {
        let seen = self.entries.get(key).map(|e| Seen {
            request: &e.request,
            charged: e.charge.is_some(),
        });
        let decision = decide(seen, &request, knobs, rolls);

        let now = Utc::now();
        let next_seq = &mut self.next_seq;
        let entry = self.entries.entry(key.to_owned()).or_insert_with(|| {
            let seq = *next_seq;
            *next_seq += 1;
            Entry {
                seq,
                request,
                calls: 0,
                first_seen_at: now,
                charge: None,
            }
        });
        entry.calls += 1;

        match decision {
            Decision::KeyReused => Answer::KeyReused,
            Decision::TransientFailure(cause) => Answer::Unavailable(cause),
            Decision::Replay => match &entry.charge {
                Some(charge) => Answer::Replayed(charge.clone()),
                None => unreachable!("decide() replays only keys with a charge"),
            },
            Decision::Charge {
                status,
                decline_code,
            } => {
                let charge = ChargeResponse {
                    charge_id: format!("ch_{}", Uuid::new_v4().simple()),
                    payment_id: entry.request.payment_id.clone(),
                    status,
                    decline_code: decline_code.map(str::to_owned),
                    amount_minor: entry.request.amount_minor,
                    currency: entry.request.currency.clone(),
                    created_at: now,
                };
                entry.charge = Some(charge.clone());
                Answer::Charged(charge)
            }
        }
    }

    /// Entries matching `filter`, in the order their keys were first seen.
    pub fn records(&self, filter: &ChargeFilter) -> Vec<ChargeRecord> {
        let mut entries: Vec<(&String, &Entry)> = self
            .entries
            .iter()
            .filter(|(_, e)| filter.matches(&e.request))
            .collect();
        entries.sort_by_key(|(_, e)| e.seq);
        entries
            .into_iter()
            .map(|(key, e)| ChargeRecord {
                idempotency_key: key.clone(),
                payment_id: e.request.payment_id.clone(),
                merchant_id: e.request.merchant_id.clone(),
                amount_minor: e.request.amount_minor,
                currency: e.request.currency.clone(),
                status: e
                    .charge
                    .as_ref()
                    .map_or(RecordStatus::FailedTransient, |c| c.status.into()),
                decline_code: e.charge.as_ref().and_then(|c| c.decline_code.clone()),
                charge_id: e.charge.as_ref().map(|c| c.charge_id.clone()),
                calls: e.calls,
                created_at: e.charge.as_ref().map_or(e.first_seen_at, |c| c.created_at),
            })
            .collect()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ChargeStatus;

    fn request(payment_id: &str, merchant_id: &str, customer_id: &str) -> ChargeRequest {
        ChargeRequest {
            payment_id: payment_id.into(),
            merchant_id: merchant_id.into(),
            customer_id: customer_id.into(),
            amount_minor: 700,
            currency: "USD".into(),
            payment_method: "card".into(),
        }
    }

    fn quiet() -> SimulatorSettings {
        SimulatorSettings::default()
    }

    #[test]
    fn replay_returns_the_first_charge_and_counts_calls() {
        let mut ledger = Ledger::default();
        let r = request("pay_1", "mer_1", "cus_1");
        let Answer::Charged(first) = ledger.handle("k1", r.clone(), &quiet(), Rolls::quiet())
        else {
            panic!("first call did not charge")
        };
        let again = ledger.handle("k1", r, &quiet(), Rolls::quiet());
        assert_eq!(again, Answer::Replayed(first.clone()));

        let records = ledger.records(&ChargeFilter::all());
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].calls, 2);
        assert_eq!(
            records[0].charge_id.as_deref(),
            Some(first.charge_id.as_str())
        );
        assert_eq!(records[0].status, RecordStatus::Succeeded);
        assert!(first.charge_id.starts_with("ch_"));
    }

    #[test]
    fn transient_only_key_is_listed_without_a_charge() {
        let mut ledger = Ledger::default();
        let r = request("pay_1", "mer_1", "cus_flaky_1");
        assert_eq!(
            ledger.handle("k1", r, &quiet(), Rolls::quiet()),
            Answer::Unavailable(TransientCause::FlakyTrigger)
        );
        let records = ledger.records(&ChargeFilter::all());
        assert_eq!(records[0].status, RecordStatus::FailedTransient);
        assert!(!records[0].has_charge());
        assert_eq!(records[0].calls, 1);
    }

    #[test]
    fn conflicts_are_counted_but_do_not_rebind_the_key() {
        let mut ledger = Ledger::default();
        let r = request("pay_1", "mer_1", "cus_1");
        ledger.handle("k1", r.clone(), &quiet(), Rolls::quiet());
        let other = request("pay_2", "mer_1", "cus_1");
        assert_eq!(
            ledger.handle("k1", other, &quiet(), Rolls::quiet()),
            Answer::KeyReused
        );
        let records = ledger.records(&ChargeFilter::all());
        assert_eq!(records[0].payment_id, "pay_1");
        assert_eq!(records[0].calls, 2);
    }

    #[test]
    fn declined_charge_is_replayed_as_declined() {
        let mut ledger = Ledger::default();
        let r = request("pay_1", "mer_1", "cus_decline_1");
        let Answer::Charged(first) = ledger.handle("k1", r.clone(), &quiet(), Rolls::quiet())
        else {
            panic!("first call did not charge")
        };
        assert_eq!(first.status, ChargeStatus::Declined);
        assert_eq!(
            ledger.handle("k1", r, &quiet(), Rolls::quiet()),
            Answer::Replayed(first)
        );
    }

    #[test]
    fn records_filter_and_keep_first_seen_order() {
        let mut ledger = Ledger::default();
        for (key, pay, mer) in [("k3", "p3", "m1"), ("k1", "p1", "m2"), ("k2", "p2", "m1")] {
            ledger.handle(key, request(pay, mer, "cus_1"), &quiet(), Rolls::quiet());
        }
        let keys = |f: &ChargeFilter| -> Vec<String> {
            ledger
                .records(f)
                .into_iter()
                .map(|r| r.idempotency_key)
                .collect()
        };
        assert_eq!(keys(&ChargeFilter::all()), ["k3", "k1", "k2"]);
        assert_eq!(keys(&ChargeFilter::merchant("m1")), ["k3", "k2"]);
        assert_eq!(keys(&ChargeFilter::payment("p1")), ["k1"]);

        ledger.clear();
        assert!(ledger.records(&ChargeFilter::all()).is_empty());
    }
}
