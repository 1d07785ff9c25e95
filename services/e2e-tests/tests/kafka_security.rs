//! Kafka with TLS and SASL, as a real cluster (Confluent Cloud, MSK, Strimzi) asks for it: the
//! local broker's SASL_SSL listener (SCRAM users created here with Kafka's own `kafka-configs`,
//! a certificate from the stack's dev CA) and its SSL listener (`scripts/kafka.sh`).
//!
//! Oracles: the database and the PSP's ledger, and Python confluent-kafka reading the outcome
//! topic under read_committed through the broker's PLAINTEXT listener.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use paystream_core::config::KafkaSettings;
use paystream_core::kafka::{self, TopicSpec};
use paystream_e2e_tests::third_party::confluent_read_committed;
use paystream_e2e_tests::{
    kafka_settings, kafka_tool, payment_body, repo_root, workspace_binary, TestStack,
};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

/// The CA clients trust: made by `scripts/kafka.sh` for the stack's broker.
fn ca_location() -> PathBuf {
    std::env::var_os("PAYSTREAM_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".stack"))
        .join("tls/ca.pem")
}

/// Settings for the broker's listener at `addr` with `security.protocol` and `extra`.
fn secured(addr: &str, protocol: &str, extra: &[(&str, &str)]) -> KafkaSettings {
    let mut properties = BTreeMap::from([
        ("security.protocol".to_string(), protocol.to_string()),
        (
            "ssl.ca.location".to_string(),
            ca_location().display().to_string(),
        ),
    ]);
    properties.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    KafkaSettings {
        bootstrap_servers: addr.to_string(),
        properties,
        ..Default::default()
    }
}

fn sasl_ssl(mechanism: &str, user: &str, password: &str) -> KafkaSettings {
    secured(
        &env_or("PAYSTREAM_BROKER_SASL_SSL_ADDR", "127.0.0.1:9094"),
        "SASL_SSL",
        &[
            ("sasl.mechanisms", mechanism),
            ("sasl.username", user),
            ("sasl.password", password),
        ],
    )
}

/// A SCRAM user with a fresh password, created through Kafka's `kafka-configs` on the
/// PLAINTEXT listener, as an operator would.
async fn scram_user(mechanism: &str) -> anyhow::Result<(String, String)> {
    let user = format!(
        "paystream-test-{}",
        &Uuid::new_v4().simple().to_string()[..12]
    );
    let password = Uuid::new_v4().simple().to_string();
    kafka_tool(&[
        "configs",
        "--alter",
        "--entity-type",
        "users",
        "--entity-name",
        &user,
        "--add-config",
        &format!("{mechanism}=[iterations=8192,password={password}]"),
    ])
    .await?;
    Ok((user, password))
}

/// Waits until `settings` can read the cluster's metadata: a new SCRAM credential reaches the
/// broker through the metadata log a moment after `kafka-configs` returns.
async fn wait_authenticated(settings: &KafkaSettings) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match kafka::require_topics(settings, &[]).await {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_flows_end_to_end_over_sasl_ssl_with_scram() -> anyhow::Result<()> {
    let (user, password) = scram_user("SCRAM-SHA-512").await?;
    let settings = sasl_ssl("SCRAM-SHA-512", &user, &password);
    wait_authenticated(&settings).await?;

    // Gateway, outbox relay, processor and every topic operation on the SASL_SSL listener.
    let stack = TestStack::spawn_on(settings, |_| {}).await?;
    stack.spawn_processor().await?;
    let id = stack
        .accept_payment(&payment_body("m_tls", "c_tls", 4321))
        .await?;
    stack.wait_terminal(1, WAIT).await?;
    let view = stack.get_payment(id).await?;
    assert_eq!(view["status"], "SUCCEEDED", "{view}");
    let charges = stack.charges().await?;
    assert_eq!(
        charges.len(),
        1,
        "one charge in the PSP's ledger: {charges:?}"
    );

    let seen = stack
        .eventually(WAIT, "the outcome under read_committed", || async {
            let counts = confluent_read_committed(
                &kafka_settings().bootstrap_servers,
                &stack.topics.payments_outcomes,
            )
            .await?;
            Ok((counts.records == 1).then_some(counts))
        })
        .await?;
    assert_eq!(seen.per_key.get(&id.to_string()), Some(&1), "{seen:?}");
    println!(
        "SASL_SSL SCRAM-SHA-512 as {user}: payment {id} SUCCEEDED, {} charge, {} outcome record \
         read by confluent-kafka",
        charges.len(),
        seen.records
    );
    stack.teardown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_stops_a_service_and_the_cli_with_the_reason() -> anyhow::Result<()> {
    let (user, password) = scram_user("SCRAM-SHA-512").await?;
    wait_authenticated(&sasl_ssl("SCRAM-SHA-512", &user, &password)).await?;

    // Security properties have dots, so they come from the configuration file, for the
    // service and the CLI alike.
    let dir = std::env::temp_dir().join(format!("paystream-sasl-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("paystream.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbootstrap_servers = \"{}\"\n[kafka.properties]\n\
             \"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanisms\" = \"SCRAM-SHA-512\"\n\
             \"sasl.username\" = \"{user}\"\n\"sasl.password\" = \"not-{password}\"\n\
             \"ssl.ca.location\" = \"{}\"\n[http]\nport = 0\n",
            env_or("PAYSTREAM_BROKER_SASL_SSL_ADDR", "127.0.0.1:9094"),
            ca_location().display()
        ),
    )?;

    for (binary, args) in [
        ("payment-processor", &[][..]),
        ("paystream", &["topics", "create"][..]),
    ] {
        let output = tokio::time::timeout(
            WAIT,
            tokio::process::Command::new(workspace_binary(binary)?)
                .args(args)
                .env("PAYSTREAM_CONFIG_FILE", &config)
                .env("PAYSTREAM_CONSUMER__GROUP_ID", format!("sasl-{user}"))
                .env_remove("PAYSTREAM_KAFKA__BOOTSTRAP_SERVERS")
                .env("RUST_LOG", "error")
                .kill_on_drop(true)
                .output(),
        )
        .await
        .map_err(|_| anyhow::anyhow!("{binary} did not stop on a wrong password"))??;
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reason = stderr
            .lines()
            .find(|l| l.contains("cannot connect to Kafka"))
            .unwrap_or_default()
            .to_string();
        assert!(!output.status.success(), "{binary} went on: {stderr}");
        assert!(
            reason.contains("(security.protocol SASL_SSL)")
                && reason.contains("Authentication failed")
                && reason.contains("SCRAM-SHA-512"),
            "{binary}: {stderr}"
        );
        assert!(!stderr.contains(&password), "{binary} logged the password");
        println!("{binary}: exit {:?}: {reason}", output.status.code());
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_sha_256_plain_and_ssl_listeners_serve_paystream_clients() -> anyhow::Result<()> {
    let (user, password) = scram_user("SCRAM-SHA-256").await?;
    let cases = [
        (
            "SASL_SSL SCRAM-SHA-256",
            sasl_ssl("SCRAM-SHA-256", &user, &password),
        ),
        (
            "SASL_SSL PLAIN",
            // The broker's one static PLAIN user (scripts/kafka.sh).
            sasl_ssl("PLAIN", "paystream-plain", "paystream-plain-secret"),
        ),
        (
            "SSL",
            secured(
                &env_or("PAYSTREAM_BROKER_SSL_ADDR", "127.0.0.1:9095"),
                "SSL",
                &[],
            ),
        ),
    ];
    for (name, settings) in cases {
        wait_authenticated(&settings).await?;
        let topic = format!(
            "test-{}.tls-probe",
            &Uuid::new_v4().simple().to_string()[..12]
        );
        kafka::ensure_topics(&settings, &[TopicSpec::new(&topic, 1)]).await?;
        // Seen through the PLAINTEXT listener: the topic was really created over TLS.
        kafka::require_topics(&kafka_settings(), std::slice::from_ref(&topic)).await?;
        println!("{name}: created {topic}");
    }
    Ok(())
}
