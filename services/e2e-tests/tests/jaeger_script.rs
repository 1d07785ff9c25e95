//! `scripts/jaeger.sh preflight`, which `make up` runs before it starts Jaeger: a missing Go
//! toolchain (when the binary is not built yet) and a port already taken each stop it at once,
//! non-zero, with one line naming the problem and the fix; a sound setup passes.

use std::time::Duration;

use paystream_e2e_tests::{free_port, repo_root};

/// Runs `scripts/jaeger.sh preflight` with `env`; returns its exit success and last stderr line.
async fn preflight(env: &[(&str, String)]) -> anyhow::Result<(bool, String)> {
    let mut command = tokio::process::Command::new(repo_root().join("scripts/jaeger.sh"));
    command.arg("preflight").kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .map_err(|_| anyhow::anyhow!("preflight hung"))??;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap_or_default().to_string();
    Ok((output.status.success(), last))
}

/// Free addresses for a Jaeger that is never started.
fn free_addrs() -> anyhow::Result<Vec<(&'static str, String)>> {
    let free = || anyhow::Ok(format!("127.0.0.1:{}", free_port()?));
    Ok(vec![
        ("PAYSTREAM_JAEGER_OTLP_GRPC_ADDR", free()?),
        ("PAYSTREAM_JAEGER_OTLP_HTTP_ADDR", free()?),
        ("PAYSTREAM_JAEGER_QUERY_ADDR", free()?),
        ("PAYSTREAM_JAEGER_QUERY_GRPC_ADDR", free()?),
    ])
}

#[tokio::test]
async fn a_sound_setup_passes() -> anyhow::Result<()> {
    // The binary `make up` built (the cache is the stack's), free ports.
    let (ok, last) = preflight(&free_addrs()?).await?;
    assert!(ok, "{last}");
    Ok(())
}

#[tokio::test]
async fn a_missing_go_is_named_when_jaeger_must_be_built() -> anyhow::Result<()> {
    let cache =
        std::env::temp_dir().join(format!("jaeger-cache-{}", uuid::Uuid::new_v4().simple()));
    let mut env = free_addrs()?;
    env.push(("PAYSTREAM_CACHE_DIR", cache.display().to_string()));
    env.push(("GO", "/nonexistent/bin/go".into()));
    let (ok, last) = preflight(&env).await?;
    assert!(!ok);
    assert!(last.starts_with("jaeger: Go 1.24+ is needed"), "{last}");
    assert!(last.contains("set GO"), "names the fix: {last}");
    Ok(())
}

#[tokio::test]
async fn a_taken_port_is_named() -> anyhow::Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?.to_string();
    let mut env = free_addrs()?;
    env.retain(|(k, _)| *k != "PAYSTREAM_JAEGER_OTLP_HTTP_ADDR");
    env.push(("PAYSTREAM_JAEGER_OTLP_HTTP_ADDR", addr.clone()));
    let (ok, last) = preflight(&env).await?;
    assert!(!ok);
    assert_eq!(
        last,
        format!(
            "jaeger: {addr} is already taken by another process; stop it (ss -ltnp | grep :{}) \
             or set the PAYSTREAM_JAEGER_*_ADDR variables",
            taken.local_addr()?.port()
        )
    );
    Ok(())
}
