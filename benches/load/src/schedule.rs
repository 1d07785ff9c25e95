//! When requests are sent.
//!
//! - **Open model**: request `n` is due at `start + n / rate`, whatever happened to the earlier
//!   ones. Its latency is measured from that *scheduled* time, so when the server (or this
//!   generator) falls behind, the waiting shows up in the numbers instead of silently
//!   lowering the rate — no coordinated omission. In-flight requests are bounded; a request
//!   waiting for a slot keeps its scheduled time.
//! - **Closed model**: `concurrency` workers each send their next request as soon as the last
//!   one is answered: the maximum rate the server sustains at that concurrency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use paystream_core::shutdown::Shutdown;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::driver::{Answer, HttpDriver};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Model {
    Open { rate: f64, max_in_flight: usize },
    Closed { concurrency: usize },
}

/// One finished request.
#[derive(Debug, Clone)]
pub struct Completion {
    pub seq: u64,
    /// When it was due (open model) or sent (closed model): latency counts from here.
    pub intended: Instant,
    pub finished: Instant,
    pub answer: Answer,
}

impl Completion {
    pub fn latency(&self) -> Duration {
        self.finished.saturating_duration_since(self.intended)
    }
}

/// How well the generator kept its own schedule (open model).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ScheduleStats {
    pub sent: u64,
    /// Requests that started more than 10 ms after their scheduled time (generator or
    /// in-flight bound fell behind; their latency includes the wait).
    pub started_late: u64,
    pub max_start_lag_ms: f64,
}

/// Request `seq`'s scheduled time in the open model.
pub fn due(start: Instant, rate: f64, seq: u64) -> Instant {
    start + Duration::from_secs_f64(seq as f64 / rate)
}

/// What both models share: the window, the driver, and where completions go.
struct Load<F> {
    start: Instant,
    end: Instant,
    driver: Arc<HttpDriver>,
    sink: Arc<F>,
    shutdown: Shutdown,
}

/// Runs `model` for `duration` from `start`, handing every completion to `sink`. Returns when
/// every request sent has been answered. `shutdown` stops sending early.
pub async fn drive<F>(
    model: Model,
    start: Instant,
    duration: Duration,
    driver: Arc<HttpDriver>,
    sink: Arc<F>,
    shutdown: Shutdown,
) -> ScheduleStats
where
    F: Fn(Completion) + Send + Sync + 'static,
{
    let load = Load {
        start,
        end: start + duration,
        driver,
        sink,
        shutdown,
    };
    match model {
        Model::Open {
            rate,
            max_in_flight,
        } => open(rate, max_in_flight, load).await,
        Model::Closed { concurrency } => closed(concurrency, load).await,
    }
}

/// Sends request `seq` and reports it, its latency counted from `intended`.
async fn send_one<F: Fn(Completion)>(driver: &HttpDriver, sink: &F, seq: u64, intended: Instant) {
    let answer = driver.send(seq).await;
    sink(Completion {
        seq,
        intended,
        finished: Instant::now(),
        answer,
    });
}

async fn open<F>(rate: f64, max_in_flight: usize, load: Load<F>) -> ScheduleStats
where
    F: Fn(Completion) + Send + Sync + 'static,
{
    let max_in_flight = max_in_flight.max(1);
    let slots = Arc::new(Semaphore::new(max_in_flight));
    let mut stats = ScheduleStats::default();
    for seq in 0.. {
        let intended = due(load.start, rate, seq);
        if intended >= load.end {
            break;
        }
        tokio::select! {
            biased;
            _ = load.shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(intended) => {}
        }
        let permit = tokio::select! {
            biased;
            _ = load.shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let lag = Instant::now().saturating_duration_since(intended);
        if lag > Duration::from_millis(10) {
            stats.started_late += 1;
        }
        stats.max_start_lag_ms = stats.max_start_lag_ms.max(lag.as_secs_f64() * 1e3);
        stats.sent += 1;
        let (driver, sink) = (load.driver.clone(), load.sink.clone());
        // One task per request, bounded by the permits: at most `max_in_flight` exist.
        tokio::spawn(async move {
            send_one(&driver, &*sink, seq, intended).await;
            drop(permit);
        });
    }
    // Every permit back means every request has been answered.
    let _all = slots
        .acquire_many(max_in_flight as u32)
        .await
        .expect("the semaphore is never closed");
    stats
}

async fn closed<F>(concurrency: usize, load: Load<F>) -> ScheduleStats
where
    F: Fn(Completion) + Send + Sync + 'static,
{
    let next = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (driver, sink, next, shutdown) = (
                load.driver.clone(),
                load.sink.clone(),
                next.clone(),
                load.shutdown.clone(),
            );
            let end = load.end;
            tokio::spawn(async move {
                while Instant::now() < end && !shutdown.is_cancelled() {
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    send_one(&driver, &*sink, seq, Instant::now()).await;
                }
            })
        })
        .collect();
    for worker in workers {
        if let Err(e) = worker.await {
            tracing::warn!(error = %e, "load worker panicked");
        }
    }
    ScheduleStats {
        sent: next.load(Ordering::Relaxed),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::workload::Workload;

    /// A server that takes `delay` per request, and a driver for it.
    async fn slow_server(delay: Duration) -> Arc<HttpDriver> {
        use axum::routing::post;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().route(
            "/v1/payments",
            post(move || async move {
                tokio::time::sleep(delay).await;
                (
                    axum::http::StatusCode::ACCEPTED,
                    axum::Json(serde_json::json!({"id": "p"})),
                )
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let workload = Workload::new("t", 1, "EUR".parse().unwrap());
        Arc::new(HttpDriver::new(&url, workload, 8).unwrap())
    }

    async fn latencies(model: Model, duration: Duration, driver: Arc<HttpDriver>) -> Vec<Duration> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = {
            let seen = seen.clone();
            move |c: Completion| {
                assert!(
                    matches!(c.answer, Answer::Accepted { .. }),
                    "{:?}",
                    c.answer
                );
                seen.lock().unwrap().push(c.latency());
            }
        };
        drive(
            model,
            Instant::now(),
            duration,
            driver,
            Arc::new(sink),
            Shutdown::new(),
        )
        .await;
        let mut v = seen.lock().unwrap().clone();
        v.sort();
        v
    }

    #[tokio::test]
    async fn open_model_counts_the_wait_of_a_slow_server() {
        // The server handles 2 requests per 100 ms (20/s); 50/s are scheduled for one second.
        let delay = Duration::from_millis(100);
        let driver = slow_server(delay).await;
        let open = Model::Open {
            rate: 50.0,
            max_in_flight: 2,
        };
        let open_latencies = latencies(open, Duration::from_secs(1), driver.clone()).await;
        assert_eq!(open_latencies.len(), 50, "every scheduled request is sent");
        // The last request was due at 0.98 s but could only finish at about 2.5 s: that
        // backlog is part of its latency.
        assert!(
            open_latencies[49] >= Duration::from_millis(1200),
            "{open_latencies:?}"
        );

        // The closed model at the same concurrency sends only what the server lets it, and
        // every latency is just the service time: the backlog never shows.
        let closed = Model::Closed { concurrency: 2 };
        let closed_latencies = latencies(closed, Duration::from_secs(1), driver).await;
        assert!(closed_latencies.len() < 30, "{}", closed_latencies.len());
        assert!(closed_latencies.iter().all(|l| *l >= delay));
        assert!(open_latencies[49] > closed_latencies[closed_latencies.len() - 1]);
    }

    #[test]
    fn open_model_schedule_is_evenly_spaced_by_the_clock() {
        let start = Instant::now();
        assert_eq!(due(start, 1000.0, 0), start);
        assert_eq!(
            due(start, 1000.0, 1500),
            start + Duration::from_millis(1500)
        );
        assert_eq!(due(start, 4.0, 1), start + Duration::from_millis(250));
    }
}
