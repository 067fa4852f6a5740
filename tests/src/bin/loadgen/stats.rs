//! Latency summaries from every sample, not a histogram.
//!
//! A bounded run keeps at most a few tens of thousands of samples, so sorting them
//! once gives exact nearest-rank percentiles at no measurable cost, with no bucket
//! resolution to explain.

use std::time::Duration;

use serde_json::{Value, json};

/// Percentiles and extremes of one run's latencies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub mean: Duration,
}

impl Summary {
    /// Summarises `samples` (reordered in place); `None` when there are none.
    pub fn of(samples: &mut [Duration]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let total: Duration = samples.iter().sum();
        Some(Self {
            count: samples.len(),
            p50: nearest_rank(samples, 50),
            p90: nearest_rank(samples, 90),
            p99: nearest_rank(samples, 99),
            max: samples[samples.len() - 1],
            mean: total / samples.len() as u32,
        })
    }

    /// The summary as JSON fields in milliseconds, three decimals.
    pub fn to_json(self) -> Value {
        json!({
            "p50_ms": millis(self.p50),
            "p90_ms": millis(self.p90),
            "p99_ms": millis(self.p99),
            "max_ms": millis(self.max),
            "mean_ms": millis(self.mean),
        })
    }
}

/// The smallest sample with at least `percent`% of the samples at or below it.
/// `sorted` must be sorted and non-empty.
fn nearest_rank(sorted: &[Duration], percent: usize) -> Duration {
    let rank = (percent * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// Milliseconds rounded to microseconds, for reports.
pub fn millis(duration: Duration) -> f64 {
    (duration.as_micros() as f64) / 1000.0
}

/// The median of `values` (the lower middle one for an even count); `None` when empty.
pub fn median(values: &[Duration]) -> Option<Duration> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.get((sorted.len().max(1) - 1) / 2).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|&v| Duration::from_millis(v)).collect()
    }

    #[test]
    fn percentiles_use_nearest_rank_on_unsorted_input() {
        // 1..=100 shuffled by a fixed stride, so sorting matters.
        let mut samples: Vec<Duration> = (0..100u64)
            .map(|i| Duration::from_millis((i * 37) % 100 + 1))
            .collect();
        let summary = Summary::of(&mut samples).unwrap();
        assert_eq!(summary.count, 100);
        assert_eq!(summary.p50, Duration::from_millis(50));
        assert_eq!(summary.p90, Duration::from_millis(90));
        assert_eq!(summary.p99, Duration::from_millis(99));
        assert_eq!(summary.max, Duration::from_millis(100));
        assert_eq!(summary.mean, Duration::from_micros(50_500));
    }

    #[test]
    fn small_samples_round_ranks_up() {
        let summary = Summary::of(&mut ms(&[30, 10, 20])).unwrap();
        assert_eq!(summary.p50, Duration::from_millis(20));
        assert_eq!(summary.p90, Duration::from_millis(30));
        assert_eq!(summary.p99, Duration::from_millis(30));
        let one = Summary::of(&mut ms(&[7])).unwrap();
        assert_eq!(
            (one.p50, one.max),
            (Duration::from_millis(7), Duration::from_millis(7))
        );
    }

    #[test]
    fn no_samples_no_summary() {
        assert_eq!(Summary::of(&mut []), None);
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn median_takes_the_lower_middle() {
        assert_eq!(median(&ms(&[5, 1, 3])), Some(Duration::from_millis(3)));
        assert_eq!(median(&ms(&[4, 1, 3, 2])), Some(Duration::from_millis(2)));
    }

    #[test]
    fn json_reports_milliseconds() {
        let summary = Summary::of(&mut [Duration::from_micros(1500)]).unwrap();
        assert_eq!(summary.to_json()["p50_ms"], json!(1.5));
    }
}
