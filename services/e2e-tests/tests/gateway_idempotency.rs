//! Idempotency-Key semantics of `POST /v1/payments` against the real stack: concurrency,
//! in-flight conflicts, stored errors, the accepted key forms, client scoping, retention, and
//! what a payment costs in database round trips.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use paystream_e2e_tests::{
    count, expect_problem, gateway_settings, json_post, payment_body, require_api_keys,
    GatewayHandle, PaymentsLock, TestStack,
};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::ConnectOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(60);

fn payments_url(base: &str) -> String {
    format!("{base}/v1/payments")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_identical_requests_make_one_payment_one_event_one_charge(
) -> anyhow::Result<()> {
    let stack = TestStack::spawn().await?;
    stack.spawn_processor().await?;
    let body = payment_body("m_race", "c_race", 5000);
    let url = payments_url(&stack.gateway_url);
    let responses = join_all(
        (0..50).map(|_| json_post(&stack.http, &url, Some("race-key"), None, &body).send()),
    )
    .await;

    let mut fresh = 0;
    let mut replayed = 0;
    let mut in_flight = 0;
    let mut ids = HashSet::new();
    for response in responses {
        let response = response?;
        match response.status().as_u16() {
            202 => {
                if response.headers().get("idempotent-replayed").is_some() {
                    replayed += 1;
                } else {
                    fresh += 1;
                }
                let json: Value = response.json().await?;
                ids.insert(json["id"].as_str().unwrap_or_default().to_string());
            }
            409 => {
                let problem = expect_problem(response, 409, "idempotency-key-in-flight").await?;
                assert!(problem["detail"].as_str().unwrap().contains("race-key"));
                in_flight += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    eprintln!("50 concurrent requests: {fresh} accepted, {replayed} replayed, {in_flight} got 409");
    assert_eq!(fresh, 1, "exactly one request executed");
    assert_eq!(fresh + replayed + in_flight, 50);
    assert_eq!(ids.len(), 1, "every 202 names the same payment: {ids:?}");
    let payment_id = ids.into_iter().next().unwrap();

    stack.wait_terminal(1, WAIT).await?;
    assert_eq!(
        count(&stack.pool, "SELECT count(*) FROM payments").await?,
        1
    );
    assert_eq!(count(&stack.pool, "SELECT count(*) FROM outbox").await?, 1);
    assert_eq!(
        count(&stack.pool, "SELECT count(*) FROM idempotency_keys").await?,
        1
    );
    let events = stack
        .read_topic(
            &stack.topics.payments_requested,
            Duration::from_secs(3),
            |_| false,
        )
        .await?;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].key, payment_id);
    let charges = stack.charges().await?;
    assert_eq!(charges.len(), 1, "{charges:?}");
    assert_eq!(charges[0].calls, 1);
    stack.teardown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_in_flight_gets_409_and_nothing_is_stored_for_the_loser() -> anyhow::Result<()> {
    let stack = TestStack::spawn().await?;
    let url = payments_url(&stack.gateway_url);
    let body = payment_body("m_409", "c_1", 700);

    // The first request blocks inside its transaction, holding the key.
    let lock = PaymentsLock::take(&stack.pool).await?;
    let first = tokio::spawn(json_post(&stack.http, &url, Some("busy-key"), None, &body).send());
    lock.wait_for_waiters(&stack.pool, 1, Duration::from_secs(10))
        .await?;

    let same = json_post(&stack.http, &url, Some("busy-key"), None, &body)
        .send()
        .await?;
    assert!(same.headers().get("idempotent-replayed").is_none());
    let problem = expect_problem(same, 409, "idempotency-key-in-flight").await?;
    assert!(
        problem["detail"].as_str().unwrap().contains("busy-key"),
        "{problem}"
    );
    // While in flight the request cannot be compared yet: a different body gets 409 too.
    let other = json_post(
        &stack.http,
        &url,
        Some("busy-key"),
        None,
        &payment_body("m_409", "c_1", 701),
    )
    .send()
    .await?;
    expect_problem(other, 409, "idempotency-key-in-flight").await?;

    lock.release().await?;
    let first = first.await??;
    assert_eq!(first.status(), 202);
    let first_body: Value = first.json().await?;

    // Nothing was stored for the losers: their retry gets the winner's response.
    let retry = json_post(&stack.http, &url, Some("busy-key"), None, &body)
        .send()
        .await?;
    assert_eq!(retry.status(), 202);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.json::<Value>().await?, first_body);
    assert_eq!(
        count(&stack.pool, "SELECT count(*) FROM payments").await?,
        1
    );
    assert_eq!(
        count(&stack.pool, "SELECT count(*) FROM idempotency_keys").await?,
        1
    );
    stack.teardown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_that_happened_while_executing_is_stored_and_replayed() -> anyhow::Result<()> {
    let stack = TestStack::spawn().await?;
    // A rule only the database knows: the request passes validation and fails while executing.
    sqlx::query(
        "ALTER TABLE payments ADD CONSTRAINT test_blocked CHECK (merchant_id <> 'm_blocked')",
    )
    .execute(&stack.pool)
    .await?;
    let url = payments_url(&stack.gateway_url);
    let body = payment_body("m_blocked", "c_1", 900);

    let first = json_post(&stack.http, &url, Some("err-key"), None, &body)
        .send()
        .await?;
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first_problem = expect_problem(first, 500, "internal-error").await?;

    let again = json_post(&stack.http, &url, Some("err-key"), None, &body)
        .send()
        .await?;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again_problem = expect_problem(again, 500, "internal-error").await?;
    assert_eq!(again_problem, first_problem, "the exact stored body");

    // The stored entry still guards the key against a different request.
    let different = json_post(
        &stack.http,
        &url,
        Some("err-key"),
        None,
        &payment_body("m_blocked", "c_1", 901),
    )
    .send()
    .await?;
    expect_problem(different, 422, "idempotency-key-reused").await?;
    // The failed execution left no payment and no event behind.
    assert_eq!(
        count(&stack.pool, "SELECT count(*) FROM payments").await?,
        0
    );
    assert_eq!(count(&stack.pool, "SELECT count(*) FROM outbox").await?, 0);
    stack.teardown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quoted_and_bare_keys_are_one_key_and_the_length_is_bounded() -> anyhow::Result<()> {
    let stack = TestStack::spawn().await?;
    let url = payments_url(&stack.gateway_url);
    let body = payment_body("m_keys", "c_1", 100);

    let quoted = json_post(&stack.http, &url, Some("\"sf-key-1\""), None, &body)
        .send()
        .await?;
    assert_eq!(quoted.status(), 202);
    let quoted_id = quoted.json::<Value>().await?["id"].clone();
    let bare = json_post(&stack.http, &url, Some("sf-key-1"), None, &body)
        .send()
        .await?;
    assert_eq!(bare.status(), 202);
    assert_eq!(bare.headers()["idempotent-replayed"], "true");
    assert_eq!(bare.json::<Value>().await?["id"], quoted_id);

    let longest = "k".repeat(255);
    for key in [longest.clone(), format!("\"{longest}\"")] {
        let response = json_post(&stack.http, &url, Some(&key), None, &body)
            .send()
            .await?;
        assert_eq!(response.status(), 202, "255 characters are accepted");
    }
    let too_long = "k".repeat(256);
    for key in [
        too_long.clone(),
        format!("\"{too_long}\""),
        String::new(),
        "\"\"".into(),
    ] {
        let response = json_post(&stack.http, &url, Some(&key), None, &body)
            .send()
            .await?;
        expect_problem(response, 400, "invalid-idempotency-key").await?;
    }
    let missing = json_post(&stack.http, &url, None, None, &body)
        .send()
        .await?;
    expect_problem(missing, 400, "missing-idempotency-key").await?;
    stack.teardown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_scoped_per_client() -> anyhow::Result<()> {
    let stack = TestStack::spawn_with(|s| {
        require_api_keys(s, &[("acme", "acme-secret"), ("globex", "globex-secret")])
    })
    .await?;
    stack.bind_client("acme", &["m_acme"]).await?;
    stack.bind_client("globex", &["m_globex"]).await?;
    let url = payments_url(&stack.gateway_url);
    let acme = json_post(
        &stack.http,
        &url,
        Some("shared-key"),
        Some("acme-secret"),
        &payment_body("m_acme", "c_1", 100),
    )
    .send()
    .await?;
    assert_eq!(acme.status(), 202);
    let acme_id = acme.json::<Value>().await?["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Another client, the same key, another request: its own key, not a 422.
    let globex = json_post(
        &stack.http,
        &url,
        Some("shared-key"),
        Some("globex-secret"),
        &payment_body("m_globex", "c_2", 200),
    )
    .send()
    .await?;
    assert_eq!(globex.status(), 202);
    assert!(globex.headers().get("idempotent-replayed").is_none());
    let globex_id = globex.json::<Value>().await?["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(acme_id, globex_id);

    let clients: Vec<(String, String)> =
        sqlx::query_as("SELECT client_id, idempotency_key FROM idempotency_keys ORDER BY 1")
            .fetch_all(&stack.pool)
            .await?;
    assert_eq!(
        clients,
        [
            ("acme".to_string(), "shared-key".to_string()),
            ("globex".to_string(), "shared-key".to_string())
        ]
    );
    // A client sees its own payments only.
    let own = stack
        .http
        .get(format!("{url}/{acme_id}"))
        .bearer_auth("acme-secret")
        .send()
        .await?;
    assert_eq!(own.status(), 200);
    let foreign = stack
        .http
        .get(format!("{url}/{acme_id}"))
        .bearer_auth("globex-secret")
        .send()
        .await?;
    expect_problem(foreign, 404, "payment-not-found").await?;
    stack.teardown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_expire_after_the_retention_and_are_purged() -> anyhow::Result<()> {
    // This gateway's purger runs once at start-up, then not for an hour.
    let stack = TestStack::spawn_with(|s| s.gateway.idempotency_purge_interval_secs = 3600).await?;
    let url = payments_url(&stack.gateway_url);
    let body = payment_body("m_ttl", "c_1", 100);
    for key in ["ttl-a", "ttl-b"] {
        let r = json_post(&stack.http, &url, Some(key), None, &body)
            .send()
            .await?;
        assert_eq!(r.status(), 202);
    }
    let retention: f64 = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM expires_at - created_at)::float8 FROM idempotency_keys
         WHERE idempotency_key = 'ttl-a'",
    )
    .fetch_one(&stack.pool)
    .await?;
    assert_eq!(retention, 24.0 * 3600.0, "default retention: 24 h");

    // Both keys reach the end of their retention.
    sqlx::query("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'")
        .execute(&stack.pool)
        .await?;
    // An expired key is a new key, even before the purge: another request is accepted.
    let reused = json_post(
        &stack.http,
        &url,
        Some("ttl-b"),
        None,
        &payment_body("m_ttl", "c_1", 101),
    )
    .send()
    .await?;
    assert_eq!(reused.status(), 202);
    assert!(reused.headers().get("idempotent-replayed").is_none());

    // A replica with a short purge interval deletes the expired key (and only it).
    let mut settings = gateway_settings(&stack.database, &stack.topics);
    settings.gateway.idempotency_purge_interval_secs = 1;
    let replica = GatewayHandle::spawn(settings).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while count(
        &stack.pool,
        "SELECT count(*) FROM idempotency_keys WHERE idempotency_key = 'ttl-a'",
    )
    .await?
        > 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "expired key not purged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left: Vec<String> = sqlx::query_scalar("SELECT idempotency_key FROM idempotency_keys")
        .fetch_all(&stack.pool)
        .await?;
    assert_eq!(left, ["ttl-b"], "the unexpired (re-used) key stays");
    let metrics = stack
        .http
        .get(format!("{}/metrics", replica.url))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("gateway_idempotency_keys_purged_total 1"),
        "{metrics}"
    );
    replica.stop(Duration::from_secs(15)).await?;

    let fresh = json_post(&stack.http, &url, Some("ttl-a"), None, &body)
        .send()
        .await?;
    assert_eq!(fresh.status(), 202);
    assert!(fresh.headers().get("idempotent-replayed").is_none());
    assert_eq!(
        count(&stack.pool, "SELECT count(*) FROM payments").await?,
        4
    );
    stack.teardown().await;
    Ok(())
}

/// A replay must release the key when it answers: a client retrying one after another never
/// meets its own earlier request "in flight" (409), whichever pooled connection serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_retries_are_replayed_never_refused_as_in_flight() -> anyhow::Result<()> {
    let stack = TestStack::spawn().await?;
    let url = payments_url(&stack.gateway_url);
    let body = payment_body("m_retry", "c_1", 100);
    let mut ids = HashSet::new();
    for attempt in 0..40 {
        let response = json_post(&stack.http, &url, Some("retry-key"), None, &body)
            .send()
            .await?;
        assert_eq!(response.status(), 202, "attempt {attempt}");
        if attempt > 0 {
            assert_eq!(response.headers()["idempotent-replayed"], "true");
        }
        ids.insert(response.json::<Value>().await?["id"].to_string());
    }
    assert_eq!(ids.len(), 1, "one payment");
    stack.teardown().await;
    Ok(())
}

/// A new payment costs one database round trip, and so does its replay: counted on the wire,
/// through a proxy between the gateway and Postgres that records what the gateway sends in each
/// round trip (everything up to a `Sync`, or one simple `Query`). Counted are the round trips
/// that execute a statement: liveness pings (empty `Sync`s: sqlx's as a connection returns to the
/// pool, after the answer, and the gateway's for a connection idle over 1 s) and the one-time
/// preparation of the statement on a fresh connection execute nothing. The
/// gateway's background work is left out by its SQL: the announcer's `pg_notify` (after the
/// commit, off the request path) and the idempotency purger; its relay and pruner are off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_payment_and_its_replay_cost_one_database_round_trip_each() -> anyhow::Result<()> {
    let stack = TestStack::spawn().await?;
    let direct = PgConnectOptions::from_str(&paystream_e2e_tests::database_url())?;
    let wire = WireLog::proxy(format!("{}:{}", direct.get_host(), direct.get_port())).await?;
    let mut settings = gateway_settings(&stack.database, &stack.topics);
    settings.database.url = direct
        .host("127.0.0.1")
        .port(wire.port)
        .ssl_mode(PgSslMode::Disable)
        .to_url_lossy()
        .to_string()
        .into();
    settings.gateway.outbox_relay_enabled = false;
    settings.retention.outbox_days = 0;
    let gateway = GatewayHandle::spawn(settings).await?;
    let url = payments_url(&gateway.url);
    let body = payment_body("m_trips", "c_1", 1234);

    // Warms a connection up (its first statement is prepared in a round trip of its own).
    json_post(&stack.http, &url, Some("warm-up"), None, &body)
        .send()
        .await?;
    let executing = |trips: Vec<Vec<String>>| -> Vec<Vec<String>> {
        trips
            .into_iter()
            .filter(|sql| {
                !sql.is_empty()
                    && !sql.iter().any(|s| {
                        s.contains("pg_notify") || s.contains("DELETE FROM idempotency_keys")
                    })
            })
            .collect()
    };
    for (what, status) in [("new payment", 202), ("replay", 202)] {
        let before = wire.count();
        let response = json_post(&stack.http, &url, Some("trips-key"), None, &body)
            .send()
            .await?;
        assert_eq!(response.status(), status, "{what}");
        let trips = executing(wire.since(before));
        assert_eq!(trips.len(), 1, "{what}: {trips:#?}");
        assert!(
            trips[0].iter().any(|s| s.contains("idempotent_payment")),
            "{what}: {trips:#?}"
        );
    }
    gateway.stop(Duration::from_secs(30)).await?;
    stack.teardown().await;
    Ok(())
}

/// What went through a Postgres proxy: per round trip, the SQL of the statements it executed.
struct WireLog {
    port: u16,
    trips: Arc<Mutex<Vec<Vec<String>>>>,
}

impl WireLog {
    /// Starts a proxy to `upstream` on a free port of 127.0.0.1 (plain TCP: the client must
    /// not ask for TLS).
    async fn proxy(upstream: String) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let trips = Arc::new(Mutex::new(Vec::new()));
        let log = trips.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (client_read, mut client_write) = client.into_split();
                    let (mut server_read, server_write) = server.into_split();
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                    });
                    let _ = Self::relay_frontend(client_read, server_write, log).await;
                });
            }
        });
        Ok(Self { port, trips })
    }

    /// Forwards the client's messages, recording each round trip's executed statements.
    async fn relay_frontend(
        mut from: OwnedReadHalf,
        mut to: OwnedWriteHalf,
        log: Arc<Mutex<Vec<Vec<String>>>>,
    ) -> std::io::Result<()> {
        // Untyped start-up messages: an SSLRequest (refused by the server) and the start-up.
        loop {
            let len = from.read_u32().await?;
            let mut body = vec![0; len as usize - 4];
            from.read_exact(&mut body).await?;
            to.write_u32(len).await?;
            to.write_all(&body).await?;
            if body[..4] != 80877103u32.to_be_bytes() {
                break;
            }
        }
        let mut prepared: HashMap<String, String> = HashMap::new();
        let mut trip = Vec::new();
        loop {
            let tag = from.read_u8().await?;
            let len = from.read_u32().await?;
            let mut body = vec![0; len as usize - 4];
            from.read_exact(&mut body).await?;
            to.write_u8(tag).await?;
            to.write_u32(len).await?;
            to.write_all(&body).await?;
            let mut strings = body
                .split(|b| *b == 0)
                .map(|s| String::from_utf8_lossy(s).into_owned());
            match tag {
                b'P' => {
                    let name = strings.next().unwrap_or_default();
                    prepared.insert(name, strings.next().unwrap_or_default());
                }
                b'B' => {
                    let _portal = strings.next();
                    let statement = strings.next().unwrap_or_default();
                    trip.push(prepared.get(&statement).cloned().unwrap_or(statement));
                }
                b'S' => log.lock().unwrap().push(std::mem::take(&mut trip)),
                b'Q' => log
                    .lock()
                    .unwrap()
                    .push(vec![strings.next().unwrap_or_default()]),
                _ => {}
            }
        }
    }

    fn count(&self) -> usize {
        self.trips.lock().unwrap().len()
    }

    fn since(&self, start: usize) -> Vec<Vec<String>> {
        self.trips.lock().unwrap()[start..].to_vec()
    }
}
