//! Rate limiting with token buckets, at two points of a request:
//!
//! - [`limit_address`], per peer IP address, BEFORE authentication (on the client and admin
//!   APIs and unknown paths): failed logins count, so a caller guessing keys is slowed down.
//!   IPv4 addresses (also IPv4-mapped IPv6 ones) have a bucket each; IPv6 addresses share the
//!   bucket of their /64 prefix, which one subscriber usually holds whole. The address is the
//!   TCP peer's (`ConnectInfo`); `X-Forwarded-For` is NOT honoured, as any caller can send it:
//!   behind a proxy or load balancer every request shares the proxy's bucket, so raise
//!   `rate_limit.per_ip` accordingly or turn it off (`0`) and limit at the proxy.
//! - [`limit_client`], per client, after [`crate::auth::authenticate`]: the authenticated
//!   client's bucket; with authentication off (the anonymous client) the caller's address's, so
//!   one noisy caller does not throttle every other.
//!
//! Each bucket holds `burst` tokens refilled at `requests_per_second`; a request takes one
//! token or gets `429` with `Retry-After` (when the next token will be there). The buckets live
//! in each replica's memory, so N replicas admit up to N times the rate. Full buckets (idle
//! long enough to have refilled) are dropped now and then, so memory is bounded by the callers
//! active within about `burst / requests_per_second` seconds.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use serde::Deserialize;
use tokio::time::Instant;

use crate::auth::{ClientId, ANONYMOUS_CLIENT};
use crate::problem::ApiError;

/// The `client` label of `gateway_rate_limited_total` for refusals of the per-address limit
/// (the client is not known yet); not a valid client id, so it names no client.
pub const PER_IP_METRIC_LABEL: &str = "(per-ip)";

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RateLimitSettings {
    /// Sustained requests per second per client; 0 turns rate limiting off (both limits).
    pub requests_per_second: f64,
    /// Requests a client may make at once after being idle.
    pub burst: u32,
    /// The limit per IP address, applied before authentication.
    pub per_ip: PerIpLimitSettings,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            requests_per_second: 200.0,
            burst: 400,
            per_ip: PerIpLimitSettings::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct PerIpLimitSettings {
    /// Sustained requests per second per IP address (IPv6: per /64); 0 turns this limit off.
    pub requests_per_second: f64,
    /// Requests an address may make at once after being idle.
    pub burst: u32,
}

impl Default for PerIpLimitSettings {
    /// Above the per-client default, so a client calling from one address meets its own
    /// limit first.
    fn default() -> Self {
        Self {
            requests_per_second: 400.0,
            burst: 800,
        }
    }
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
}

/// Bucket count below which no sweep for full buckets runs.
const MIN_SWEEP_AT: usize = 1024;

struct Buckets {
    map: HashMap<String, Bucket>,
    /// The size at which the next sweep runs: twice what the last one kept, so sweeping costs
    /// O(1) per request amortized.
    sweep_at: usize,
}

pub struct RateLimiter {
    rate: f64,
    burst: f64,
    // A std mutex: held for a few arithmetic operations, never across an await.
    buckets: Mutex<Buckets>,
}

impl RateLimiter {
    /// The per-client limiter.
    pub fn new(settings: &RateLimitSettings) -> anyhow::Result<Self> {
        Self::with_rate(
            settings.requests_per_second,
            settings.burst,
            "gateway.rate_limit",
        )
    }

    /// The per-address limiter; off when either limit's rate is 0.
    pub fn per_ip(settings: &RateLimitSettings) -> anyhow::Result<Self> {
        let per_ip = Self::with_rate(
            settings.per_ip.requests_per_second,
            settings.per_ip.burst,
            "gateway.rate_limit.per_ip",
        )?;
        if settings.requests_per_second == 0.0 {
            return Self::with_rate(0.0, 0, "gateway.rate_limit.per_ip");
        }
        Ok(per_ip)
    }

    fn with_rate(rate: f64, burst: u32, name: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(
            rate >= 0.0 && rate.is_finite(),
            "{name}.requests_per_second must be a non-negative number"
        );
        anyhow::ensure!(rate == 0.0 || burst >= 1, "{name}.burst must be at least 1");
        Ok(Self {
            rate,
            burst: f64::from(burst),
            buckets: Mutex::new(Buckets {
                map: HashMap::new(),
                sweep_at: MIN_SWEEP_AT,
            }),
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.rate != 0.0
    }

    /// Takes a token from the bucket `key`, or says how long until one is available.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        if !self.is_enabled() {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = buckets.map.entry(key.to_string()).or_insert(Bucket {
            tokens: self.burst,
            refilled: now,
        });
        let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.refilled = now;
        let taken = if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        };
        if buckets.map.len() >= buckets.sweep_at {
            // A full bucket is the same as none. The one just used is not full.
            let (rate, burst) = (self.rate, self.burst);
            buckets.map.retain(|_, b| {
                b.tokens + now.duration_since(b.refilled).as_secs_f64() * rate < burst
            });
            buckets.sweep_at = (buckets.map.len() * 2).max(MIN_SWEEP_AT);
        }
        taken
    }

    #[cfg(test)]
    fn buckets(&self) -> usize {
        self.buckets.lock().unwrap().map.len()
    }
}

/// The bucket of a peer address: IPv4 (also IPv4-mapped IPv6) per address, IPv6 per /64.
/// Client ids contain no `:`, so these keys never name a client.
pub fn address_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("ip:{v4}"),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("ip:{v4}"),
            None => {
                let prefix = Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX));
                format!("ip:{prefix}/64")
            }
        },
    }
}

/// The per-client bucket: the authenticated client's; with authentication off (the anonymous
/// client), the caller's address's.
pub fn client_key(client: &ClientId, peer: IpAddr) -> String {
    if client.as_str() == ANONYMOUS_CLIENT {
        address_key(peer)
    } else {
        client.as_str().to_string()
    }
}

/// The TCP peer's address; present when the router is served with
/// `into_make_service_with_connect_info::<SocketAddr>()` (refused otherwise: no silent
/// shared bucket).
fn peer_ip(request: &Request) -> Result<IpAddr, ApiError> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
        .ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!(
                "no peer address: serve the router with into_make_service_with_connect_info"
            ))
        })
}

/// Middleware before authentication: the per-address limit.
pub async fn limit_address(
    State(limiter): State<Arc<RateLimiter>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if limiter.is_enabled() {
        let key = address_key(peer_ip(&request)?);
        limiter.check(&key).map_err(|wait| {
            crate::metrics::rate_limited(PER_IP_METRIC_LABEL);
            ApiError::RateLimited(wait)
        })?;
    }
    Ok(next.run(request).await)
}

/// Middleware on the client `/v1` routes, after [`crate::auth::authenticate`]: the per-client
/// limit (see [`client_key`]).
pub async fn limit_client(
    State(limiter): State<Arc<RateLimiter>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if limiter.is_enabled() {
        if let Some(client) = request.extensions().get::<ClientId>() {
            let key = client_key(client, peer_ip(&request)?);
            limiter.check(&key).map_err(|wait| {
                // A bounded label: a configured client id or the anonymous one.
                crate::metrics::rate_limited(client.as_str());
                ApiError::RateLimited(wait)
            })?;
        }
    }
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rate: f64, burst: u32) -> RateLimiter {
        RateLimiter::new(&RateLimitSettings {
            requests_per_second: rate,
            burst,
            ..Default::default()
        })
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_refill_per_client() {
        let limiter = limiter(2.0, 3);
        for _ in 0..3 {
            assert!(limiter.check("a").is_ok());
        }
        let wait = limiter.check("a").unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(limiter.check("b").is_ok(), "buckets are per client");
        tokio::time::advance(Duration::from_millis(499)).await;
        assert!(limiter.check("a").is_err());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(limiter.check("a").is_ok());
        // Idle time refills up to the burst, no further.
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..3 {
            assert!(limiter.check("a").is_ok());
        }
        assert!(limiter.check("a").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn zero_rate_disables_limiting() {
        let limiter = limiter(0.0, 0);
        for _ in 0..10_000 {
            assert!(limiter.check("a").is_ok());
        }
    }

    #[test]
    fn refuses_nonsense_settings() {
        assert!(RateLimiter::new(&RateLimitSettings {
            requests_per_second: -1.0,
            burst: 1,
            ..Default::default()
        })
        .is_err());
        assert!(RateLimiter::new(&RateLimitSettings {
            requests_per_second: 1.0,
            burst: 0,
            ..Default::default()
        })
        .is_err());
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_are_keyed_per_ipv4_and_per_ipv6_64() {
        assert_eq!(address_key(ip("127.0.0.1")), "ip:127.0.0.1");
        assert_ne!(address_key(ip("127.0.0.1")), address_key(ip("127.0.0.2")));
        assert_eq!(
            address_key(ip("::ffff:10.1.2.3")),
            address_key(ip("10.1.2.3")),
            "IPv4-mapped IPv6 is its IPv4 address"
        );
        assert_eq!(
            address_key(ip("2001:db8:1:2:aaaa::1")),
            "ip:2001:db8:1:2::/64"
        );
        assert_eq!(
            address_key(ip("2001:db8:1:2:aaaa::1")),
            address_key(ip("2001:db8:1:2:ffff:1:2:3")),
            "one /64, one bucket"
        );
        assert_ne!(
            address_key(ip("2001:db8:1:2::1")),
            address_key(ip("2001:db8:1:3::1"))
        );
    }

    #[test]
    fn anonymous_callers_are_keyed_by_address_clients_by_id() {
        let anonymous = ClientId(ANONYMOUS_CLIENT.to_string());
        assert_eq!(
            client_key(&anonymous, ip("127.0.0.1")),
            "ip:127.0.0.1",
            "not one bucket shared by every anonymous caller"
        );
        assert_ne!(
            client_key(&anonymous, ip("127.0.0.1")),
            client_key(&anonymous, ip("127.0.0.2"))
        );
        let acme = ClientId("acme".to_string());
        assert_eq!(client_key(&acme, ip("127.0.0.1")), "acme");
        assert_eq!(
            client_key(&acme, ip("127.0.0.1")),
            client_key(&acme, ip("10.0.0.1")),
            "a client's bucket follows it across addresses"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn per_ip_limit_has_its_own_settings_and_the_global_switch() {
        let mut settings = RateLimitSettings {
            requests_per_second: 100.0,
            burst: 100,
            per_ip: PerIpLimitSettings {
                requests_per_second: 1.0,
                burst: 2,
            },
        };
        let per_ip = RateLimiter::per_ip(&settings).unwrap();
        assert!(per_ip.check("ip:127.0.0.1").is_ok());
        assert!(per_ip.check("ip:127.0.0.1").is_ok());
        assert_eq!(
            per_ip.check("ip:127.0.0.1").unwrap_err(),
            Duration::from_secs(1)
        );
        settings.per_ip.requests_per_second = 0.0;
        assert!(!RateLimiter::per_ip(&settings).unwrap().is_enabled());
        settings.per_ip.requests_per_second = 1.0;
        settings.requests_per_second = 0.0;
        assert!(
            !RateLimiter::per_ip(&settings).unwrap().is_enabled(),
            "requests_per_second = 0 turns every limit off"
        );
        settings.per_ip.burst = 0;
        assert!(RateLimiter::per_ip(&settings).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn full_buckets_are_dropped() {
        let limiter = limiter(1.0, 2);
        for i in 0..MIN_SWEEP_AT - 1 {
            limiter.check(&format!("ip:{i}")).unwrap();
        }
        // Long enough for those to refill; the next one is fresh.
        tokio::time::advance(Duration::from_secs(2)).await;
        limiter.check("busy").unwrap();
        assert_eq!(limiter.buckets(), 1, "only the bucket not full is kept");
        // Dropping a full bucket loses nothing: it starts full again.
        for _ in 0..2 {
            assert!(limiter.check("ip:0").is_ok());
        }
        assert!(limiter.check("ip:0").is_err());
        assert!(limiter.check("busy").is_ok());
        assert!(
            limiter.check("busy").is_err(),
            "kept: its tokens were spent"
        );
    }
}
