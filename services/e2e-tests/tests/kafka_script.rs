//! `scripts/kafka.sh preflight`, which `make up` runs before it starts the broker: a missing
//! Java, jars that cannot be resolved, a port already taken and a corrupt log directory each
//! stop it at once, non-zero, with one line naming the problem and the fix; never a hang.

use std::time::Duration;

use paystream_e2e_tests::repo_root;

/// Runs `scripts/kafka.sh preflight` with `env`; returns its exit success and last stderr line.
async fn preflight(env: &[(&str, String)]) -> anyhow::Result<(bool, String)> {
    let mut command = tokio::process::Command::new(repo_root().join("scripts/kafka.sh"));
    command.arg("preflight").kill_on_drop(true);
    // The stack's broker holds the TLS listeners' ports; these brokers are never started.
    command
        .env("PAYSTREAM_BROKER_SASL_SSL_ADDR", "")
        .env("PAYSTREAM_BROKER_SSL_ADDR", "");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .map_err(|_| anyhow::anyhow!("preflight hung"))??;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap_or_default().to_string();
    Ok((output.status.success(), last))
}

fn temp_dir(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Free addresses for a broker that is never started.
fn free_addrs() -> anyhow::Result<[(&'static str, String); 2]> {
    Ok([
        (
            "PAYSTREAM_BROKER_ADDR",
            format!("127.0.0.1:{}", paystream_e2e_tests::free_port()?),
        ),
        (
            "PAYSTREAM_CONTROLLER_ADDR",
            format!("127.0.0.1:{}", paystream_e2e_tests::free_port()?),
        ),
    ])
}

#[tokio::test]
async fn a_sound_setup_passes() -> anyhow::Result<()> {
    let logs = temp_dir("kafka-logs")?;
    let mut env = free_addrs()?.to_vec();
    env.push(("KAFKA_LOG_DIR", logs.display().to_string()));
    let (ok, last) = preflight(&env).await?;
    assert!(ok, "{last}");
    Ok(())
}

#[tokio::test]
async fn a_missing_java_is_named() -> anyhow::Result<()> {
    let mut env = free_addrs()?.to_vec();
    env.push(("JAVA", "/nonexistent/bin/java".into()));
    let (ok, last) = preflight(&env).await?;
    assert!(!ok);
    assert!(last.starts_with("kafka: no Java found"), "{last}");
    assert!(last.contains("openjdk-17"), "names the fix: {last}");
    Ok(())
}

#[tokio::test]
async fn jars_that_cannot_be_resolved_are_named() -> anyhow::Result<()> {
    // An empty cache and an empty local Maven repository, offline: nothing to resolve from.
    let mut env = free_addrs()?.to_vec();
    env.push((
        "PAYSTREAM_CACHE_DIR",
        temp_dir("kafka-cache")?.display().to_string(),
    ));
    env.push((
        "PAYSTREAM_MAVEN_ARGS",
        format!("-o -Dmaven.repo.local={}", temp_dir("m2")?.display()),
    ));
    let (ok, last) = preflight(&env).await?;
    assert!(!ok);
    assert!(
        last.starts_with("kafka: could not resolve Apache Kafka"),
        "{last}"
    );
    Ok(())
}

#[tokio::test]
async fn a_taken_port_is_named() -> anyhow::Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?.to_string();
    let logs = temp_dir("kafka-logs")?;
    let env = [
        ("PAYSTREAM_BROKER_ADDR", addr.clone()),
        (
            "PAYSTREAM_CONTROLLER_ADDR",
            format!("127.0.0.1:{}", paystream_e2e_tests::free_port()?),
        ),
        ("KAFKA_LOG_DIR", logs.display().to_string()),
    ];
    let (ok, last) = preflight(&env).await?;
    assert!(!ok);
    assert!(
        last.starts_with(&format!("kafka: {addr} is already taken")),
        "{last}"
    );
    Ok(())
}

#[tokio::test]
async fn a_corrupt_log_directory_is_named() -> anyhow::Result<()> {
    let logs = temp_dir("kafka-logs")?;
    std::fs::write(logs.join("garbage"), b"not a kafka log")?;
    let mut env = free_addrs()?.to_vec();
    env.push(("KAFKA_LOG_DIR", logs.display().to_string()));
    let (ok, last) = preflight(&env).await?;
    assert!(!ok);
    assert!(
        last.contains("holds files but no meta.properties"),
        "{last}"
    );
    assert!(
        last.contains(&format!("rm -rf {}", logs.display())),
        "names the fix: {last}"
    );
    Ok(())
}
