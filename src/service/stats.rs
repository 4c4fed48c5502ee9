//! What the proxy measured for one release: requests, errors and a latency histogram,
//! read by the canary analysis as the difference of two snapshots.

use super::shard::Sharded;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in milliseconds (the last one is unbounded).
const BOUNDS_MS: [u64; 14] = [
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000,
];

/// Written by every proxy thread, so kept in one shard per thread.
#[derive(Default)]
pub struct Stats(Sharded<Counts>);

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    errors: AtomicU64,
    buckets: [AtomicU64; BOUNDS_MS.len() + 1],
}

/// Counts at one moment; `later.since(&earlier)` is what happened in between.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Snapshot {
    pub requests: u64,
    /// 5xx answers from the release, and requests it could not answer (502, 504).
    pub errors: u64,
    #[serde(skip)]
    buckets: Vec<u64>,
}

impl Stats {
    /// One answered request; `error` for a 5xx or an upstream failure.
    pub fn record(&self, error: bool, took: Duration) {
        let counts = self.0.local();
        counts.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            counts.errors.fetch_add(1, Ordering::Relaxed);
        }
        let ms = took.as_millis() as u64;
        let i = BOUNDS_MS
            .iter()
            .position(|&b| ms < b)
            .unwrap_or(BOUNDS_MS.len());
        counts.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut total = Snapshot {
            buckets: vec![0; BOUNDS_MS.len() + 1],
            ..Snapshot::default()
        };
        for counts in self.0.iter() {
            total.requests += counts.requests.load(Ordering::Relaxed);
            total.errors += counts.errors.load(Ordering::Relaxed);
            for (sum, n) in total.buckets.iter_mut().zip(&counts.buckets) {
                *sum += n.load(Ordering::Relaxed);
            }
        }
        total
    }
}

/// One sample of a set's history: what happened in one sampling window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sample {
    pub at: jiff::Timestamp,
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub p95_ms: Option<u64>,
}

impl Sample {
    pub fn of(window: &Snapshot) -> Sample {
        Sample {
            at: jiff::Timestamp::now(),
            requests: window.requests,
            errors: window.errors,
            error_rate: window.error_rate(),
            p95_ms: window.p95().map(|d| d.as_millis() as u64),
        }
    }
}

impl Snapshot {
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            buckets: self
                .buckets
                .iter()
                .zip(earlier.buckets.iter().chain(std::iter::repeat(&0)))
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
        }
    }

    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// The 95th percentile, as the upper bound of the bucket it falls in.
    pub fn p95(&self) -> Option<Duration> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (total * 95).div_ceil(100);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let ms = BOUNDS_MS.get(i).copied().unwrap_or(60_000);
                return Some(Duration::from_millis(ms));
            }
        }
        None
    }

    /// `120 requests, 2 errors (1.7 %), p95 under 5 ms`.
    pub fn describe(&self) -> String {
        let p95 = self.p95().map_or("no latency yet".to_string(), |d| {
            format!("p95 under {} ms", d.as_millis())
        });
        format!(
            "{} requests, {} errors ({:.1} %), {p95}",
            self.requests,
            self.errors,
            self.error_rate() * 100.0
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_counts_what_happened_in_it() {
        let stats = Stats::default();
        for _ in 0..10 {
            stats.record(false, Duration::from_millis(3));
        }
        let before = stats.snapshot();
        for i in 0..100 {
            stats.record(i < 5, Duration::from_millis(if i < 96 { 3 } else { 400 }));
        }
        let window = stats.snapshot().since(&before);
        assert_eq!((window.requests, window.errors), (100, 5));
        assert!((window.error_rate() - 0.05).abs() < 1e-9);
        assert_eq!(window.p95(), Some(Duration::from_millis(5)));
        stats.record(false, Duration::from_millis(400));
        stats.record(false, Duration::from_millis(400));
        let window = stats.snapshot().since(&before);
        assert_eq!(window.p95(), Some(Duration::from_millis(500)));
        assert_eq!(Snapshot::default().p95(), None);
    }
}
