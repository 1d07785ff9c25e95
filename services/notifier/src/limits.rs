//! Concurrent sends per target host: the loop handles many records at once
//! (`consumer.max_in_flight`), and one merchant's endpoint (or the SMTP relay) must not get all
//! of them at the same moment. Each host has a semaphore of `notifier.max_concurrent_per_host`
//! permits, made on first use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct HostLimits {
    per_host: usize,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl HostLimits {
    pub fn new(per_host: usize) -> Self {
        Self {
            per_host: per_host.max(1),
            hosts: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for a send slot toward `host`; the slot is held until the permit drops.
    pub async fn acquire(&self, host: &str) -> OwnedSemaphorePermit {
        let semaphore = {
            let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
            hosts
                .entry(host.to_ascii_lowercase())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_host)))
                .clone()
        };
        semaphore
            .acquire_owned()
            .await
            .expect("host semaphores are never closed")
    }
}

/// The host a webhook URL targets (the URL itself if it does not parse: the send refuses it).
pub fn url_host(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| url.to_string())
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;

    #[tokio::test]
    async fn a_host_gets_at_most_its_permits_and_other_hosts_are_not_held_up() {
        let limits = HostLimits::new(2);
        let a1 = limits.acquire("a.example").await;
        let _a2 = limits.acquire("A.example").await;
        let third = limits.acquire("a.example");
        tokio::pin!(third);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(
            third.as_mut().poll(&mut cx).is_pending(),
            "a third send to a host waits"
        );
        let _b = limits.acquire("b.example").await;
        drop(a1);
        let _a3 = third.await;
    }

    #[test]
    fn a_webhook_url_is_limited_by_its_host() {
        assert_eq!(url_host("https://m.example:8443/hooks?x=1"), "m.example");
        assert_eq!(url_host("not a url"), "not a url");
    }
}
