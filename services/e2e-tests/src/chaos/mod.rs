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

mod fleet;
mod verdict;

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
use crate::stack::TestStack;
use fleet::Fleet;
use verdict::{distinct, in_doubt_resends, judge};

pub use verdict::{ChaosLog, Check, Verdict};

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

const CURRENCIES: [&str; 3] = ["EUR", "USD", "JPY"];

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
            fleet.kill_random(&mut rng).await?;
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
