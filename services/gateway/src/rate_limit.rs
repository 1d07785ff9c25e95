//! Per-client rate limiting with token buckets.
//!
//! Each client has a bucket of `burst` tokens refilled at `requests_per_second`; a request
//! takes one token or gets `429` with `Retry-After` (when the next token will be there). The
//! buckets live in each replica's memory, so N replicas admit up to N times the rate. Their
//! number is bounded by the configured clients (plus the anonymous one).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use serde::Deserialize;
use tokio::time::Instant;

use crate::auth::ClientId;
use crate::problem::ApiError;

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RateLimitSettings {
    /// Sustained requests per second per client; 0 turns rate limiting off.
    pub requests_per_second: f64,
    /// Requests a client may make at once after being idle.
    pub burst: u32,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            requests_per_second: 200.0,
            burst: 400,
        }
    }
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
}

pub struct RateLimiter {
    rate: f64,
    burst: f64,
    // A std mutex: held for a few arithmetic operations, never across an await.
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    pub fn new(settings: &RateLimitSettings) -> anyhow::Result<Self> {
        anyhow::ensure!(
            settings.requests_per_second >= 0.0 && settings.requests_per_second.is_finite(),
            "gateway.rate_limit.requests_per_second must be a non-negative number"
        );
        anyhow::ensure!(
            settings.requests_per_second == 0.0 || settings.burst >= 1,
            "gateway.rate_limit.burst must be at least 1"
        );
        Ok(Self {
            rate: settings.requests_per_second,
            burst: f64::from(settings.burst),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a token for `client`, or says how long until one is available.
    pub fn check(&self, client: &str) -> Result<(), Duration> {
        if self.rate == 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = buckets.entry(client.to_string()).or_insert(Bucket {
            tokens: self.burst,
            refilled: now,
        });
        let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }
}

/// Middleware on the client `/v1` routes, after [`crate::auth::authenticate`].
pub async fn limit(
    State(limiter): State<Arc<RateLimiter>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(client) = request.extensions().get::<ClientId>() {
        limiter.check(client.as_str()).map_err(|wait| {
            crate::metrics::rate_limited(client.as_str());
            ApiError::RateLimited(wait)
        })?;
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
            burst: 1
        })
        .is_err());
        assert!(RateLimiter::new(&RateLimitSettings {
            requests_per_second: 1.0,
            burst: 0
        })
        .is_err());
    }
}
