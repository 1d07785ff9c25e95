//! The soak's verdict: each check from a party outside the services, what the chaos did, and
//! the Markdown table `make chaos` prints.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use uuid::Uuid;

use super::ChaosPlan;
use crate::fakes::{SmtpSink, WebhookReceiver};
use crate::stack::TestStack;
use crate::third_party;

/// One line of the verdict: a figure and what it must be.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub expected: String,
    pub observed: String,
    pub ok: bool,
}

impl Check {
    pub(super) fn equal(name: &str, expected: usize, observed: usize) -> Self {
        Self {
            name: name.into(),
            expected: expected.to_string(),
            observed: observed.to_string(),
            ok: expected == observed,
        }
    }

    fn at_most(name: &str, bound: usize, observed: usize, bound_says: &str) -> Self {
        Self {
            name: name.into(),
            expected: format!("≤ {bound} ({bound_says})"),
            observed: observed.to_string(),
            ok: observed <= bound,
        }
    }
}

/// What the chaos did.
#[derive(Debug, Default, Clone)]
pub struct ChaosLog {
    pub kills: HashMap<&'static str, usize>,
    /// Exits nobody asked for (e.g. a service giving up on a fatal Kafka error while the broker
    /// was away), restarted as a supervisor would.
    pub unplanned_exits: HashMap<&'static str, usize>,
    pub events: Vec<String>,
}

/// The soak's result: the checks, the chaos, and the in-doubt resends with their reasons.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub plan: ChaosPlan,
    pub checks: Vec<Check>,
    pub chaos: ChaosLog,
    pub in_doubt_resends: Vec<String>,
    pub load_seconds: f64,
    /// From the load's end until every effect was visible (or the drain gave up).
    pub drain_seconds: f64,
    pub total_seconds: f64,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    /// The verdict as Markdown: the checks, then what the chaos did.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "| check | expected | observed | verdict |");
        let _ = writeln!(out, "|---|---|---|---|");
        for c in &self.checks {
            let mark = if c.ok { "ok" } else { "**MISS**" };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {mark} |",
                c.name, c.expected, c.observed
            );
        }
        let _ = writeln!(out);
        let per = |m: &HashMap<&'static str, usize>| {
            let mut v: Vec<_> = m.iter().map(|(k, n)| format!("{k} {n}")).collect();
            v.sort();
            v.join(", ")
        };
        let p = &self.plan;
        let _ = writeln!(
            out,
            "- load: {} payments offered at {}/s (open model) in {:.0} s; effects complete {:.0} s \
             later; whole run {:.0} s; seed {}",
            p.payments,
            p.rate_per_sec,
            self.load_seconds,
            self.drain_seconds,
            self.total_seconds,
            p.seed
        );
        let _ = writeln!(
            out,
            "- fleet: {} partitions, {} payment-processor, {} analytics, {} notifier instances; \
             PSP 50 ms latency, 2 % transient failures",
            p.partitions, p.partitions, p.analytics_instances, p.notifier_instances
        );
        let _ = writeln!(out, "- SIGKILLs: {}", per(&self.chaos.kills));
        let _ = writeln!(
            out,
            "- unplanned exits (restarted): {}",
            if self.chaos.unplanned_exits.is_empty() {
                "none".to_string()
            } else {
                per(&self.chaos.unplanned_exits)
            }
        );
        for e in &self.chaos.events {
            let _ = writeln!(out, "- {e}");
        }
        if self.in_doubt_resends.is_empty() {
            let _ = writeln!(out, "- in-doubt resends: none");
        } else {
            let _ = writeln!(
                out,
                "- in-doubt resends (a kill between a send and its record; receivers drop them by \
                 event id / Message-ID):"
            );
            for r in &self.in_doubt_resends {
                let _ = writeln!(out, "  - {r}");
            }
        }
        out
    }
}

pub(super) fn distinct(items: impl Iterator<Item = String>) -> usize {
    items.collect::<HashSet<_>>().len()
}

/// The checks, each from a party outside the services.
pub(super) async fn judge(
    stack: &TestStack,
    receiver: &WebhookReceiver,
    sink: &SmtpSink,
    accepted: &[Uuid],
) -> anyhow::Result<Vec<Check>> {
    let n = accepted.len();
    let accepted_ids: HashSet<String> = accepted.iter().map(Uuid::to_string).collect();
    let mut checks = vec![Check::equal(
        "accepted (202), distinct ids",
        n,
        accepted_ids.len(),
    )];

    // The PSP's ledger.
    let charges = stack.charges().await?;
    let mut per_payment: HashMap<&str, usize> = HashMap::new();
    for c in charges.iter().filter(|c| c.has_charge()) {
        *per_payment.entry(c.payment_id.as_str()).or_default() += 1;
    }
    checks.push(Check::equal(
        "PSP ledger: payments charged",
        n,
        per_payment.len(),
    ));
    checks.push(Check::equal(
        "PSP ledger: payments charged more than once",
        0,
        per_payment.values().filter(|k| **k > 1).count(),
    ));
    checks.push(Check::equal(
        "PSP ledger: charges for payments never accepted",
        0,
        per_payment
            .keys()
            .filter(|p| !accepted_ids.contains(**p))
            .count(),
    ));

    // Postgres.
    let terminal = stack.terminal_payments().await?;
    checks.push(Check::equal(
        "Postgres: payments SUCCEEDED or FAILED",
        n,
        terminal.len(),
    ));

    // The broker, under read_committed, by a stock Confluent client.
    let outcomes = third_party::confluent_read_committed(
        &stack.kafka.bootstrap_servers,
        &stack.topics.payments_outcomes,
    )
    .await?;
    checks.push(Check::equal(
        "outcome records under read_committed (confluent-kafka)",
        n,
        outcomes.records,
    ));
    checks.push(Check::equal(
        "payments whose outcome records ≠ 1",
        0,
        outcomes.not_once().len()
            + accepted_ids
                .iter()
                .filter(|p| !outcomes.per_key.contains_key(*p))
                .count(),
    ));

    // The receivers.
    let (hooks, resent_hooks) = delivered(receiver.accepted().into_iter().map(|d| d.event_id));
    let (mails, resent_mails) = delivered(sink.messages().into_iter().map(|m| m.message_id));
    let recorded_webhook = recorded_resends(stack, "webhook").await?;
    let recorded_email = recorded_resends(stack, "email").await?;
    checks.push(Check::equal(
        "webhooks delivered (distinct outcome events)",
        n,
        hooks,
    ));
    checks.push(Check::at_most(
        "webhooks delivered twice",
        recorded_webhook,
        resent_hooks,
        "in-doubt resends the ledger recorded",
    ));
    checks.push(Check::equal(
        "bad webhook signatures",
        0,
        receiver.bad_signatures() as usize,
    ));
    checks.push(Check::equal(
        "e-mails delivered (distinct Message-IDs)",
        n,
        mails,
    ));
    checks.push(Check::at_most(
        "e-mails delivered twice",
        recorded_email,
        resent_mails,
        "in-doubt resends the ledger recorded",
    ));

    // Analytics against the PSP's ledger, per merchant and currency.
    let expected = stack.psp_totals().await?;
    for granularity in ["day", "minute"] {
        let got = stack.analytics_totals(granularity).await?;
        let keys: HashSet<_> = expected.keys().chain(got.keys()).collect();
        let differing: Vec<_> = keys
            .iter()
            .filter(|k| expected.get(**k) != got.get(**k))
            .collect();
        // A few examples, so a miss says what differs (counts, amounts, reasons).
        for k in differing.iter().take(3) {
            println!(
                "chaos: analytics {granularity} {k:?}: PSP ledger {:?}, analytics {:?}",
                expected.get(**k),
                got.get(**k)
            );
        }
        let differing = differing.len();
        checks.push(Check::equal(
            &format!("analytics {granularity} totals ≠ PSP ledger (merchant × currency)"),
            0,
            differing,
        ));
    }

    // Accepted but lost: no charge, no terminal state or no committed outcome.
    let lost = accepted
        .iter()
        .filter(|id| {
            let s = id.to_string();
            !per_payment.contains_key(s.as_str())
                || !terminal.contains_key(*id)
                || !outcomes.per_key.contains_key(&s)
        })
        .count();
    checks.push(Check::equal("accepted but lost", 0, lost));
    Ok(checks)
}

/// In-doubt resends the notifier's delivery ledger recorded on `channel`.
async fn recorded_resends(stack: &TestStack, channel: &str) -> anyhow::Result<usize> {
    let n: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(in_doubt_resends), 0)::bigint FROM notification_deliveries
         WHERE channel = $1",
    )
    .bind(channel)
    .fetch_one(&stack.pool)
    .await?;
    Ok(n as usize)
}

/// Distinct ids delivered, and how many deliveries repeated one.
fn delivered(ids: impl Iterator<Item = String>) -> (usize, usize) {
    let all: Vec<String> = ids.collect();
    let distinct = distinct(all.iter().cloned());
    (distinct, all.len() - distinct)
}

/// Every in-doubt resend the notifier's ledger recorded, with its reason.
pub(super) async fn in_doubt_resends(stack: &TestStack) -> anyhow::Result<Vec<String>> {
    let rows: Vec<(Uuid, String, i32)> = sqlx::query_as(
        "SELECT event_id, channel, in_doubt_resends FROM notification_deliveries
         WHERE in_doubt_resends > 0 ORDER BY event_id, channel",
    )
    .fetch_all(&stack.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(event, channel, n)| {
            format!(
                "{channel} of outcome event {event}: resent {n}× (its claim was found `sending` \
                 after a kill: sent or not is unknown, so it is sent again with the same id)"
            )
        })
        .collect())
}
