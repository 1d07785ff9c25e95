//! The local stack's supervisor (`scripts/stack.sh`): a service that dies is restarted, the
//! restart is logged and counted, and `scripts/stack.sh status` shows the count.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use paystream_e2e_tests::{repo_root, send_signal};

fn state_dir() -> PathBuf {
    std::env::var("PAYSTREAM_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join(".stack"))
}

fn read(name: &str) -> Option<String> {
    std::fs::read_to_string(state_dir().join(name))
        .ok()
        .map(|s| s.trim().to_string())
}

fn alive(pid: &str) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn a_killed_service_is_restarted_and_counted() -> anyhow::Result<()> {
    // The notifier: no other test depends on the stack's own instance.
    let service = "notifier";
    let before_pid = read(&format!("{service}.child.pid")).ok_or_else(|| {
        anyhow::anyhow!(
            "no {service}.child.pid in {:?}: is the stack up (`make up`)?",
            state_dir()
        )
    })?;
    let before: u64 = read(&format!("{service}.restarts")).map_or(Ok(0), |s| s.parse())?;
    send_signal(before_pid.parse()?, "KILL").await?;

    let deadline = Instant::now() + Duration::from_secs(30);
    let after_pid = loop {
        match read(&format!("{service}.child.pid")) {
            Some(pid) if pid != before_pid && alive(&pid) => break pid,
            _ => {}
        }
        anyhow::ensure!(Instant::now() < deadline, "{service} was not restarted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let after: u64 = read(&format!("{service}.restarts"))
        .unwrap_or_default()
        .parse()?;
    assert_eq!(after, before + 1);
    let log = std::fs::read_to_string(state_dir().join(format!("{service}.log")))?;
    assert!(
        log.contains(&format!(
            "{service} exited with status 137; restart {after}"
        )),
        "the restart is logged"
    );

    let status = tokio::process::Command::new(repo_root().join("scripts/stack.sh"))
        .arg("status")
        .output()
        .await?;
    let status = String::from_utf8_lossy(&status.stdout);
    eprintln!("{status}");
    let row: Vec<&str> = status
        .lines()
        .find(|l| l.starts_with(service))
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        row,
        [service, "running", after_pid.as_str(), &after.to_string()]
    );

    // And it serves again.
    let addr = std::env::var("PAYSTREAM_NOTIFIER_ADDR").unwrap_or_else(|_| "127.0.0.1:8084".into());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = reqwest::get(format!("http://{addr}/health/ready")).await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{service} not ready after its restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
