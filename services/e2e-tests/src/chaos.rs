//! The chaos soak: a steady open-model load of payments through the gateway while every
//! consumer service is SIGKILLed at random every few seconds, the broker is restarted twice
//! (once SIGTERM, once SIGKILL), Postgres is restarted once, and the PSP fails 2 % of calls
//! transiently with 50 ms of latency. The verdict is judged by effects, from outside the
//! services: the PSP's ledger, Postgres, the broker under read_committed (Python
//! confluent-kafka), the webhook receiver and the SMTP sink.
//!
//! `make chaos` runs [`run`] with `CHAOS_PAYMENTS` payments (default 100,000) through the
//! `chaos` binary; `make test` runs a 5,000-payment version (`tests/chaos.rs`). Both use their
//! own broker ([`OwnKafka`]) and database ([`OwnPostgres`]), so restarting them touches no other
//! test.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use paystream_psp_simulator::ConfigPatch;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::fakes::{SmtpSink, WebhookReceiver};
use crate::own_kafka::OwnKafka;
use crate::own_postgres::OwnPostgres;
use crate::process::ServiceProcess;
use crate::stack::TestStack;
use crate::third_party;

/// What to run.
#[derive(Debug, Clone)]
pub struct ChaosPlan {
    pub payments: usize,
    /// Arrivals per second (open model: requests start on schedule, whatever the answers).
    pub rate_per_sec: f64,
    /// Partitions of every topic, and payment-processor instances (one per partition).
    pub partitions: i32,
    pub analytics_instances: usize,
    pub notifier_instances: usize,
    /// A consumer instance is SIGKILLed every this-many milliseconds, at random in the range.
    pub kill_every_ms: (u64, u64),
    pub merchants: usize,
    pub seed: u64,
}

impl ChaosPlan {
    /// The plan for `payments` payments, with the rest from `CHAOS_*` variables (`CHAOS_RATE`,
    /// `CHAOS_SEED`) or their defaults.
    pub fn from_env(payments: usize) -> anyhow::Result<Self> {
        let seed = match std::env::var("CHAOS_SEED") {
            Ok(s) => s
                .parse()
                .with_context(|| format!("CHAOS_SEED must be a number, not `{s}`"))?,
            Err(_) => Rng::clock_seed(),
        };
        let rate_per_sec = match std::env::var("CHAOS_RATE") {
            Ok(s) => s
                .parse::<f64>()
                .ok()
                .filter(|r| *r >= 1.0 && *r <= 5_000.0)
                .with_context(|| format!("CHAOS_RATE must be 1–5000 payments/s, not `{s}`"))?,
            Err(_) => 60.0,
        };
        anyhow::ensure!(payments >= 100, "at least 100 payments, not {payments}");
        Ok(Self {
            payments,
            rate_per_sec,
            partitions: 6,
            // The notifier makes the most round trips per record (two channels, each claimed
            // and recorded in its own transaction), so it gets one instance per partition too.
            analytics_instances: 3,
            notifier_instances: 6,
            kill_every_ms: (2_000, 6_000),
            merchants: 100,
            seed,
        })
    }
}

/// The deterministic PRNG of the chaos tests (xorshift), seeded and printed so a run's
/// schedule can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // xorshift never leaves 0.
        Self(seed | 1)
    }

    /// A seed from the clock, for a run that is not a replay.
    pub fn clock_seed() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1
    }

    /// A number in `low..high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        low + self.0 % (high - low).max(1)
    }
}

/// One line of the verdict: a figure and what it must be.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub expected: String,
    pub observed: String,
    pub ok: bool,
}

impl Check {
    fn equal(name: &str, expected: usize, observed: usize) -> Self {
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

const CURRENCIES: [&str; 3] = ["EUR", "USD", "JPY"];

const SERVICES: [&str; 3] = ["payment-processor", "analytics", "notifier"];

/// One consumer instance of the fleet and how many times it has been started.
struct Member {
    service: &'static str,
    transactional_id: String,
    generation: usize,
    process: ServiceProcess,
}

/// Every consumer instance, as a supervisor (Kubernetes) would run them: an instance that
/// exits, killed or not, is started again with the same transactional id.
struct Fleet {
    members: Vec<Member>,
    envs: HashMap<&'static str, Vec<(String, String)>>,
    groups: HashMap<&'static str, String>,
    log: ChaosLog,
}

impl Fleet {
    fn start(stack: &TestStack, plan: &ChaosPlan, smtp_port: u16) -> anyhow::Result<Self> {
        let quiet = |mut env: Vec<(String, String)>| {
            // Per-record info lines from a dozen debug-build processes would cost the run
            // more CPU than the work itself.
            env.push(("RUST_LOG".into(), "warn".into()));
            env
        };
        let groups = HashMap::from([
            ("payment-processor", stack.group_id.clone()),
            ("analytics", stack.analytics_group()),
            ("notifier", stack.notifier_group()),
        ]);
        let envs = HashMap::from([
            ("payment-processor", quiet(stack.processor_env())),
            (
                "analytics",
                quiet(stack.consumer_env(&groups["analytics"], "")),
            ),
            ("notifier", quiet(stack.notifier_env(smtp_port, ""))),
        ]);
        let mut fleet = Self {
            members: Vec::new(),
            envs,
            groups,
            log: ChaosLog::default(),
        };
        let counts = [
            plan.partitions as usize,
            plan.analytics_instances,
            plan.notifier_instances,
        ];
        for (service, count) in SERVICES.into_iter().zip(counts) {
            for i in 0..count {
                let transactional_id = format!("{}-{i}", fleet.groups[service]);
                let process = fleet.spawn(service, &transactional_id, 0)?;
                fleet.members.push(Member {
                    service,
                    transactional_id,
                    generation: 0,
                    process,
                });
            }
        }
        Ok(fleet)
    }

    fn spawn(
        &self,
        service: &'static str,
        transactional_id: &str,
        generation: usize,
    ) -> anyhow::Result<ServiceProcess> {
        ServiceProcess::spawn_binary(
            service,
            self.envs[service].clone(),
            &self.groups[service],
            transactional_id,
            &format!("{transactional_id}-run{generation}"),
        )
    }

    /// SIGKILLs member `index` and starts its successor at once.
    async fn kill_and_restart(&mut self, index: usize) -> anyhow::Result<()> {
        let member = &mut self.members[index];
        member.process.kill().await?;
        *self.log.kills.entry(member.service).or_default() += 1;
        self.restart(index)
    }

    fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        let (service, id, generation) = {
            let m = &self.members[index];
            (m.service, m.transactional_id.clone(), m.generation + 1)
        };
        let process = self.spawn(service, &id, generation)?;
        let m = &mut self.members[index];
        m.process = process;
        m.generation = generation;
        Ok(())
    }

    /// Restarts every member that exited on its own.
    fn reap(&mut self) -> anyhow::Result<()> {
        for index in 0..self.members.len() {
            if self.members[index].process.exited()?.is_some() {
                let service = self.members[index].service;
                *self.log.unplanned_exits.entry(service).or_default() += 1;
                self.restart(index)?;
            }
        }
        Ok(())
    }
}

/// How the gateway answered one payment, after retrying ambiguous answers with the same
/// idempotency key.
enum Answer {
    Accepted(Uuid),
    Refused(String),
    Unresolved(String),
}

/// Posts one payment until the answer is definite: 202 (accepted) or 4xx (refused). 5xx,
/// timeouts and refused connections (Postgres restarting) are retried with the same
/// Idempotency-Key, as a real client must, so a request that committed before its answer was
/// lost is never counted as refused (nor sent twice).
async fn pay(http: &reqwest::Client, gateway: &str, body: &Value) -> Answer {
    let key = Uuid::new_v4().to_string();
    let give_up = Instant::now() + Duration::from_secs(180);
    let mut backoff = Duration::from_millis(100);
    let mut last = String::new();
    while Instant::now() < give_up {
        let sent = http
            .post(format!("{gateway}/v1/payments"))
            .header("content-type", "application/json")
            .header("Idempotency-Key", &key)
            .body(body.to_string())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().as_u16() == 202 || r.status().as_u16() == 201 => {
                let id = r
                    .json::<Value>()
                    .await
                    .ok()
                    .and_then(|v| v["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()));
                match id {
                    Some(id) => return Answer::Accepted(id),
                    None => last = "2xx without an id".into(),
                }
            }
            // 409: the same key still in flight (our own earlier attempt); 429: slow down.
            Ok(r) if r.status().as_u16() == 409 || r.status().as_u16() == 429 => {
                last = r.status().to_string();
            }
            Ok(r) if r.status().is_client_error() => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                return Answer::Refused(format!("{status}: {text}"));
            }
            Ok(r) => last = r.status().to_string(),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
    Answer::Unresolved(last)
}

/// Answers of the load, shared by its tasks.
#[derive(Default)]
struct Answers {
    accepted: Mutex<Vec<Uuid>>,
    refused: Mutex<Vec<String>>,
    unresolved: Mutex<Vec<String>>,
    started: AtomicUsize,
}

/// Runs the soak and judges it. Errors are for a soak that could not run (a broker that did not
/// come back, a tool that failed); a soak that ran returns its verdict, passed or not.
pub async fn run(plan: &ChaosPlan) -> anyhow::Result<Verdict> {
    let began = Instant::now();
    println!(
        "chaos: {} payments at {}/s, seed {}",
        plan.payments, plan.rate_per_sec, plan.seed
    );
    let mut broker = OwnKafka::new()?;
    broker.launch().await?;
    let postgres = OwnPostgres::start().await?;
    let mut kafka = broker.settings();
    kafka.provisioning.partitions = plan.partitions;
    let stack = TestStack::spawn_isolated(kafka, postgres.url(), |_| {}).await?;
    stack
        .psp
        .set_config(&ConfigPatch {
            latency_ms: Some(50),
            transient_failure_rate: Some(0.02),
            decline_rate: Some(0.05),
            ..Default::default()
        })
        .await?;
    let (receiver, sink) = stack.receivers().await?;
    let merchants: Vec<String> = (0..plan.merchants)
        .map(|i| format!("m_chaos_{i}"))
        .collect();
    for m in &merchants {
        let secret = stack
            .merchant_with_webhook(m, &receiver.url)
            .await?
            .context("no webhook secret shown")?;
        receiver.set_secret(m, &secret);
    }
    let mut fleet = Fleet::start(&stack, plan, sink.port)?;

    // The load, open model: arrival i starts at i / rate, bounded in flight.
    let answers = Arc::new(Answers::default());
    let load = {
        let answers = answers.clone();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let gateway = stack.gateway_url.clone();
        let plan = plan.clone();
        let merchants = merchants.clone();
        tokio::spawn(async move {
            let in_flight = Arc::new(Semaphore::new(512));
            let start = tokio::time::Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..plan.payments {
                let at = start + Duration::from_secs_f64(i as f64 / plan.rate_per_sec);
                tokio::time::sleep_until(at).await;
                let permit = in_flight
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("never closed");
                let body = json!({
                    "merchant_id": merchants[i % merchants.len()],
                    "amount_minor": 100 + (i as i64 * 37) % 20_000,
                    "currency": CURRENCIES[i % CURRENCIES.len()],
                    "customer_id": format!("c_{i}"),
                    "payment_method": "card",
                    "customer_email": format!("c{i}@example.com"),
                });
                let (http, gateway, answers) = (http.clone(), gateway.clone(), answers.clone());
                answers.started.fetch_add(1, Ordering::Relaxed);
                tasks.spawn(async move {
                    let answer = pay(&http, &gateway, &body).await;
                    drop(permit);
                    match answer {
                        Answer::Accepted(id) => answers.accepted.lock().unwrap().push(id),
                        Answer::Refused(why) => answers.refused.lock().unwrap().push(why),
                        Answer::Unresolved(why) => answers.unresolved.lock().unwrap().push(why),
                    }
                });
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
            start.elapsed().as_secs_f64()
        })
    };

    // The chaos, until the load is done: kills at random, and at a quarter, half and three
    // quarters of the arrivals the broker's SIGTERM restart, Postgres's restart and the
    // broker's SIGKILL restart.
    let mut rng = Rng::new(plan.seed);
    let mut next_kill = Instant::now()
        + Duration::from_millis(rng.between(plan.kill_every_ms.0, plan.kill_every_ms.1));
    let mut stage = 0;
    while !load.is_finished() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        fleet.reap()?;
        let progress = answers.started.load(Ordering::Relaxed) as f64 / plan.payments as f64;
        if stage == 0 && progress >= 0.25 {
            stage = 1;
            let t = Instant::now();
            let status = broker.terminate().await?;
            broker.launch().await?;
            fleet.log.events.push(format!(
                "broker SIGTERM at {:.0} % of arrivals ({status}); serving again after {:.1} s",
                progress * 100.0,
                t.elapsed().as_secs_f64()
            ));
        } else if stage == 1 && progress >= 0.5 {
            stage = 2;
            let t = Instant::now();
            postgres.stop().await?;
            postgres.launch().await?;
            fleet.log.events.push(format!(
                "Postgres restarted (fast shutdown: open transactions rolled back, connections \
                 cut) at {:.0} % of arrivals; accepting again after {:.1} s",
                progress * 100.0,
                t.elapsed().as_secs_f64()
            ));
        } else if stage == 2 && progress >= 0.75 {
            stage = 3;
            let t = Instant::now();
            broker.kill().await?;
            broker.launch().await?;
            fleet.log.events.push(format!(
                "broker SIGKILL at {:.0} % of arrivals; serving again after {:.1} s",
                progress * 100.0,
                t.elapsed().as_secs_f64()
            ));
        }
        if Instant::now() >= next_kill {
            // A service at random, then one of its instances: each service is killed as often,
            // however many instances it runs.
            let service = SERVICES[rng.between(0, SERVICES.len() as u64) as usize];
            let candidates: Vec<usize> = (0..fleet.members.len())
                .filter(|i| fleet.members[*i].service == service)
                .collect();
            let index = candidates[rng.between(0, candidates.len() as u64) as usize];
            fleet.kill_and_restart(index).await?;
            next_kill = Instant::now()
                + Duration::from_millis(rng.between(plan.kill_every_ms.0, plan.kill_every_ms.1));
        }
    }
    let load_seconds = load.await.context("the load task panicked")?;
    anyhow::ensure!(
        stage == 3,
        "the load ended before the chaos was complete (stage {stage})"
    );
    fleet.reap()?;
    println!("chaos: load done in {load_seconds:.0} s; draining");

    let accepted: Vec<Uuid> = answers.accepted.lock().unwrap().clone();
    let refused: Vec<String> = answers.refused.lock().unwrap().clone();
    let unresolved: Vec<String> = answers.unresolved.lock().unwrap().clone();
    let drained_at = Instant::now();
    drain(&stack, &receiver, &sink, accepted.len(), &mut fleet).await;
    let drain_seconds = drained_at.elapsed().as_secs_f64();

    let mut checks = vec![
        Check::equal(
            "payments offered",
            plan.payments,
            accepted.len() + refused.len() + unresolved.len(),
        ),
        Check::equal("refused by the gateway (4xx)", 0, refused.len()),
        Check::equal(
            "no definite answer after 180 s of retries",
            0,
            unresolved.len(),
        ),
    ];
    if let Some(why) = refused.first().or(unresolved.first()) {
        println!("chaos: first refusal or unresolved request: {why}");
    }
    checks.extend(judge(&stack, &receiver, &sink, &accepted).await?);
    let in_doubt_resends = in_doubt_resends(&stack).await?;
    let verdict = Verdict {
        plan: plan.clone(),
        checks,
        chaos: fleet.log.clone(),
        in_doubt_resends,
        load_seconds,
        drain_seconds,
        total_seconds: began.elapsed().as_secs_f64(),
    };
    drop(fleet);
    stack.teardown().await;
    Ok(verdict)
}

/// Waits, with the fleet supervised but no more chaos, until every accepted payment's effects
/// are visible (or a generous deadline passes: the verdict then shows what is missing).
async fn drain(
    stack: &TestStack,
    receiver: &WebhookReceiver,
    sink: &SmtpSink,
    accepted: usize,
    fleet: &mut Fleet,
) {
    let deadline = Instant::now() + Duration::from_secs(600.max(accepted as u64 / 10));
    let mut last_report = Instant::now();
    while Instant::now() < deadline {
        let _ = fleet.reap();
        let terminal = stack
            .terminal_payments()
            .await
            .map(|t| t.len())
            .unwrap_or(0);
        let hooks = distinct(receiver.accepted().iter().map(|d| d.event_id.clone()));
        let mails = distinct(sink.messages().iter().map(|m| m.message_id.clone()));
        let counted = stack
            .analytics_totals("day")
            .await
            .map(|d| {
                d.values()
                    .map(|t| t.succeeded_count + t.failed_count)
                    .sum::<i64>()
            })
            .unwrap_or(0) as usize;
        if terminal >= accepted && hooks >= accepted && mails >= accepted && counted >= accepted {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(30) {
            println!(
                "chaos: draining: {terminal} terminal, {hooks} webhooks, {mails} e-mails, \
                 {counted} counted of {accepted}"
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Late duplicates, if any, arrive now rather than after the count.
    tokio::time::sleep(Duration::from_secs(5)).await;
}

fn distinct(items: impl Iterator<Item = String>) -> usize {
    items.collect::<HashSet<_>>().len()
}

/// The checks, each from a party outside the services.
async fn judge(
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
        let differing = keys
            .iter()
            .filter(|k| expected.get(**k) != got.get(**k))
            .count();
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
async fn in_doubt_resends(stack: &TestStack) -> anyhow::Result<Vec<String>> {
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
