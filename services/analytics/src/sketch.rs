//! The mergeable latency sketch of a window: a DDSketch-like histogram of fixed logarithmic
//! buckets, from which p50/p95/p99 are read with a bounded relative error.
//!
//! A latency of `v` ms (`v ≥ 1`) falls in bucket `ceil(log_γ v) + 1` with
//! `γ = (1 + α) / (1 − α)`; latencies of 0 ms or less (clock skew) share bucket 0. Every value
//! of a bucket is within `α` of the bucket's representative value, so a quantile read from the
//! counts is within `α` of the exact value at that rank. Merging two sketches adds their
//! bucket counts, which is what lets a window be updated by delta in SQL
//! (`analytics_jsonb_add` over `analytics_windows.latency_sketch`) instead of recomputed from
//! every payment. The exact minimum and maximum ride along (merged by `LEAST`/`GREATEST`) and
//! clamp the quantiles, so a window of one payment reports its latency exactly.
//!
//! The migration `20261202000200_analytics_incremental.sql` backfills existing windows with the
//! same bucket formula: change [`ALPHA`] only together with a migration rebuilding the sketches.

use std::collections::BTreeMap;

/// Relative accuracy of the quantiles.
pub const ALPHA: f64 = 0.01;

/// The quantiles a window publishes: p50, p95, p99.
pub const PUBLISHED: [f64; 3] = [0.5, 0.95, 0.99];

fn gamma() -> f64 {
    (1.0 + ALPHA) / (1.0 - ALPHA)
}

/// The bucket of a latency of `ms` milliseconds.
pub fn bucket(ms: i64) -> u32 {
    if ms <= 0 {
        return 0;
    }
    // ln(1) = 0 puts 1 ms in bucket 1; the largest i64 lands near bucket 2,200.
    ((ms as f64).ln() / gamma().ln()).ceil() as u32 + 1
}

/// The value a bucket stands for: the point of `(γ^(i−2), γ^(i−1)]` within `α` of both ends.
fn representative(bucket: u32) -> f64 {
    if bucket == 0 {
        return 0.0;
    }
    let g = gamma();
    2.0 * g.powi(bucket as i32 - 1) / (g + 1.0)
}

/// Bucket counts with the exact extremes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sketch {
    pub buckets: BTreeMap<u32, i64>,
    pub min: Option<i64>,
    pub max: Option<i64>,
}

impl Sketch {
    pub fn add(&mut self, ms: i64) {
        *self.buckets.entry(bucket(ms)).or_default() += 1;
        self.min = Some(self.min.map_or(ms, |m| m.min(ms)));
        self.max = Some(self.max.map_or(ms, |m| m.max(ms)));
    }

    /// The sketch of both sketches' values: bucket counts added, extremes combined.
    pub fn merge(&mut self, other: &Sketch) {
        for (b, n) in &other.buckets {
            *self.buckets.entry(*b).or_default() += n;
        }
        self.min = [self.min, other.min].into_iter().flatten().min();
        self.max = [self.max, other.max].into_iter().flatten().max();
    }

    pub fn count(&self) -> i64 {
        self.buckets.values().sum()
    }

    /// The value at rank `floor(q · (n − 1))` (0-based) within the relative accuracy, rounded
    /// to a millisecond; `None` for an empty sketch.
    pub fn quantile(&self, q: f64) -> Option<i64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * (n - 1) as f64).floor() as i64;
        let mut seen = 0;
        let bucket = self.buckets.iter().find_map(|(b, c)| {
            seen += c;
            (seen > rank).then_some(*b)
        })?;
        let value = representative(bucket).round() as i64;
        let (lo, hi) = (self.min.unwrap_or(i64::MIN), self.max.unwrap_or(i64::MAX));
        Some(value.clamp(lo, hi.max(lo)))
    }

    /// The bucket counts as stored (`{"<bucket>": count}`).
    pub fn buckets_json(&self) -> serde_json::Value {
        self.buckets
            .iter()
            .map(|(b, n)| (b.to_string(), serde_json::Value::from(*n)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }

    /// A stored sketch; keys that are not bucket numbers are refused.
    pub fn from_stored(
        buckets: &serde_json::Value,
        min: Option<i64>,
        max: Option<i64>,
    ) -> Option<Self> {
        let buckets = buckets
            .as_object()?
            .iter()
            .map(|(b, n)| Some((b.parse().ok()?, n.as_i64()?)))
            .collect::<Option<_>>()?;
        Some(Self { buckets, min, max })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: reproducible test data without a dependency.
    fn latencies(seed: u64, n: usize) -> Vec<i64> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
                // Long-tailed, like payment latencies: mostly 20–2,000 ms, some up to 60 s.
                let base = 20 + (r % 2_000) as i64;
                if r.is_multiple_of(50) {
                    base * 30
                } else {
                    base
                }
            })
            .collect()
    }

    fn exact(sorted: &[i64], q: f64) -> i64 {
        sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
    }

    fn within_accuracy(estimate: i64, exact: i64) -> bool {
        // α relative, plus the rounding to whole milliseconds.
        (estimate - exact).abs() as f64 <= ALPHA * exact as f64 + 1.0
    }

    #[test]
    fn quantiles_are_within_the_relative_accuracy() {
        for (seed, n) in [(1, 1), (7, 10), (42, 1_000), (2026, 50_000)] {
            let values = latencies(seed, n);
            let mut sketch = Sketch::default();
            values.iter().for_each(|v| sketch.add(*v));
            let mut sorted = values.clone();
            sorted.sort_unstable();
            for q in [0.0, 0.25, 0.5, 0.9, 0.95, 0.99, 1.0] {
                let (estimate, exact) = (sketch.quantile(q).unwrap(), exact(&sorted, q));
                assert!(
                    within_accuracy(estimate, exact),
                    "n={n} q={q}: {estimate} vs exact {exact}"
                );
            }
        }
    }

    #[test]
    fn merging_adds_the_buckets_and_equals_the_sketch_of_all_values() {
        let (a, b) = (latencies(3, 700), latencies(5, 300));
        let sketch_of = |values: &[i64]| {
            let mut s = Sketch::default();
            values.iter().for_each(|v| s.add(*v));
            s
        };
        let mut merged = sketch_of(&a);
        merged.merge(&sketch_of(&b));
        assert_eq!(merged, sketch_of(&[a.clone(), b.clone()].concat()));
        assert_eq!(merged.count(), 1_000);
        for (bucket, n) in &merged.buckets {
            let parts = [sketch_of(&a), sketch_of(&b)]
                .iter()
                .map(|s| s.buckets.get(bucket).copied().unwrap_or(0))
                .sum::<i64>();
            assert_eq!(*n, parts);
        }
    }

    #[test]
    fn extremes_clamp_and_edge_values_have_buckets() {
        let mut one = Sketch::default();
        one.add(1_500);
        assert_eq!(one.quantile(0.5), Some(1_500), "a single value is exact");
        assert_eq!(Sketch::default().quantile(0.5), None);
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(-40), 0);
        assert_eq!(bucket(1), 1);
        assert!(bucket(i64::MAX) > bucket(60_000));
        let mut skewed = Sketch::default();
        skewed.add(-3);
        assert_eq!(skewed.quantile(0.99), Some(-3));
        // Buckets never shrink as the latency grows.
        assert!((1..5_000).all(|v| bucket(v) <= bucket(v + 1)));
    }

    #[test]
    fn stored_form_round_trips() {
        let mut sketch = Sketch::default();
        latencies(9, 100).iter().for_each(|v| sketch.add(*v));
        let stored = sketch.buckets_json();
        assert_eq!(
            Sketch::from_stored(&stored, sketch.min, sketch.max),
            Some(sketch)
        );
        assert_eq!(
            Sketch::from_stored(&serde_json::json!({"x": 1}), None, None),
            None
        );
    }
}
