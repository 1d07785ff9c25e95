//! HDR histograms and per-second series of a run.
//!
//! Latencies are recorded in microseconds (1 µs to 10 min, 3 significant digits overall, 2
//! per second). Samples land in the second of their *scheduled* time, so a stall shows up
//! where it was caused.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::driver::Answer;
use crate::schedule::Completion;

const MAX_MICROS: u64 = 600_000_000;

fn histogram(sigfig: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, sigfig).expect("static bounds are valid")
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, MAX_MICROS)
}

/// Percentiles of a latency distribution, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |v: u64| v as f64 / 1e3;
        Self {
            count: h.len(),
            mean_ms: h.mean() / 1e3,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// One point of the percentile-distribution plot.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PercentilePoint {
    pub percentile: f64,
    pub latency_ms: f64,
}

/// A latency distribution overall and per second.
#[derive(Debug, Clone)]
pub struct LatencySeries {
    overall: Histogram<u64>,
    seconds: Vec<Histogram<u64>>,
}

impl Default for LatencySeries {
    fn default() -> Self {
        Self {
            overall: histogram(3),
            seconds: Vec::new(),
        }
    }
}

impl LatencySeries {
    pub fn record(&mut self, second: usize, latency: Duration) {
        let v = micros(latency);
        self.overall.saturating_record(v);
        while self.seconds.len() <= second {
            self.seconds.push(histogram(2));
        }
        self.seconds[second].saturating_record(v);
    }

    pub fn summary(&self) -> Summary {
        Summary::of(&self.overall)
    }

    pub fn per_second(&self) -> Vec<SecondPoint> {
        self.seconds
            .iter()
            .enumerate()
            .map(|(second, h)| {
                let s = Summary::of(h);
                SecondPoint {
                    second,
                    count: s.count,
                    p50_ms: s.p50_ms,
                    p99_ms: s.p99_ms,
                    max_ms: s.max_ms,
                }
            })
            .collect()
    }

    pub fn second(&self, second: usize) -> Option<Summary> {
        self.seconds.get(second).map(Summary::of)
    }

    /// The distribution as (percentile, latency) points, up to 99.999 %.
    pub fn percentiles(&self) -> Vec<PercentilePoint> {
        if self.overall.is_empty() {
            return Vec::new();
        }
        // Evenly spaced in "number of nines", the axis the plot uses.
        (0..=50)
            .map(|i| {
                let nines = i as f64 / 10.0;
                let q = 1.0 - 10f64.powf(-nines);
                PercentilePoint {
                    percentile: q * 100.0,
                    latency_ms: self.overall.value_at_quantile(q) as f64 / 1e3,
                }
            })
            .collect()
    }
}

/// Latency of one second of a run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SecondPoint {
    pub second: usize,
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Everything the HTTP side of a run measured.
#[derive(Debug, Default)]
pub struct HttpRecord {
    pub latency: LatencySeries,
    /// Accepted payments per second of scheduled time.
    pub accepted_per_second: Vec<u64>,
    pub by_status: BTreeMap<String, u64>,
    pub accepted: u64,
    pub errors: u64,
}

/// Collects completions from many tasks. A std mutex is right here: the critical section is a
/// few histogram increments and never awaits.
pub struct Recorder {
    start: tokio::time::Instant,
    inner: Mutex<HttpRecord>,
}

impl Recorder {
    pub fn new(start: tokio::time::Instant) -> Self {
        Self {
            start,
            inner: Mutex::default(),
        }
    }

    /// The second of the run `at` falls into.
    pub fn second_of(&self, at: tokio::time::Instant) -> usize {
        at.saturating_duration_since(self.start).as_secs() as usize
    }

    pub fn record(&self, c: &Completion) {
        let second = self.second_of(c.intended);
        let mut inner = self.inner.lock().expect("recorder lock poisoned");
        inner.latency.record(second, c.latency());
        *inner.by_status.entry(c.answer.label()).or_default() += 1;
        if matches!(c.answer, Answer::Accepted { .. }) {
            inner.accepted += 1;
            while inner.accepted_per_second.len() <= second {
                inner.accepted_per_second.push(0);
            }
            inner.accepted_per_second[second] += 1;
        } else {
            inner.errors += 1;
        }
    }

    /// Accepted payments and p99 of `second`, for the progress bar.
    pub fn live(&self, second: usize) -> (u64, f64) {
        let inner = self.inner.lock().expect("recorder lock poisoned");
        let accepted = inner.accepted_per_second.get(second).copied().unwrap_or(0);
        let p99 = inner.latency.second(second).map_or(0.0, |s| s.p99_ms);
        (accepted, p99)
    }

    /// Everything recorded so far; the recorder starts empty again.
    pub fn finish(&self) -> HttpRecord {
        std::mem::take(&mut *self.inner.lock().expect("recorder lock poisoned"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_reads_percentiles_in_milliseconds() {
        let mut s = LatencySeries::default();
        for ms in 1..=100u64 {
            s.record(0, Duration::from_millis(ms));
        }
        let sum = s.summary();
        assert_eq!(sum.count, 100);
        assert!((sum.p50_ms - 50.0).abs() < 0.1, "{sum:?}");
        assert!((sum.p99_ms - 99.0).abs() < 0.1, "{sum:?}");
        assert!((sum.max_ms - 100.0).abs() < 0.1, "{sum:?}");
    }

    #[test]
    fn samples_land_in_their_second() {
        let mut s = LatencySeries::default();
        s.record(2, Duration::from_millis(5));
        let points = s.per_second();
        assert_eq!(points.len(), 3);
        assert_eq!(points[0].count, 0);
        assert_eq!(points[2].count, 1);
    }

    #[test]
    fn percentile_points_rise_monotonically() {
        let mut s = LatencySeries::default();
        for us in 1..10_000u64 {
            s.record(0, Duration::from_micros(us));
        }
        let points = s.percentiles();
        assert!(points
            .windows(2)
            .all(|w| w[0].latency_ms <= w[1].latency_ms));
        assert!(points.last().unwrap().percentile > 99.99);
    }

    #[test]
    fn counts_accepted_and_errors_by_status() {
        let start = tokio::time::Instant::now();
        let r = Recorder::new(start);
        let done = |answer| Completion {
            seq: 0,
            intended: start,
            finished: start + Duration::from_millis(3),
            answer,
        };
        r.record(&done(Answer::Accepted {
            payment_id: "p".into(),
        }));
        r.record(&done(Answer::Status(503)));
        r.record(&done(Answer::Failed("timeout")));
        let rec = r.finish();
        assert_eq!((rec.accepted, rec.errors), (1, 2));
        assert_eq!(rec.by_status["503"], 1);
        assert_eq!(rec.by_status["timeout"], 1);
        assert_eq!(rec.accepted_per_second, vec![1]);
    }
}
