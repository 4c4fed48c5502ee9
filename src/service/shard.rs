//! Counters the proxy's threads write without sharing a cache line: one padded shard
//! per proxy thread, summed when read. A counter every thread increments is one cache
//! line passed from core to core on every request (nginx's workers share nothing for
//! the same reason; what it saved here is in BENCHMARKS.md). A thread that is not a
//! proxy thread writes shard 0, which is still correct (the shards are atomics), only
//! not contention-free.
//!
//! The metric types here are what the proxy's `/metrics` families hold; they encode as
//! prometheus-client's own counter, gauge and histogram do.

use crossbeam_utils::CachePadded;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(0) };
}

/// How many shards a counter has: one per proxy thread.
pub fn shards() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get))
}

/// Makes the calling thread write shard `n` (each proxy thread, once, at its start).
pub fn enter(n: usize) {
    SHARD.set(n % shards());
}

/// One `T` per proxy thread, each on cache lines of its own.
pub struct Sharded<T>(Box<[CachePadded<T>]>);

impl<T: Default> Default for Sharded<T> {
    fn default() -> Self {
        Sharded(
            (0..shards())
                .map(|_| CachePadded::new(T::default()))
                .collect(),
        )
    }
}

impl<T> Sharded<T> {
    /// The calling thread's shard.
    pub fn local(&self) -> &T {
        &self.0[SHARD.get() % self.0.len()]
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.0.iter().map(|s| &**s)
    }
}

impl Sharded<AtomicU64> {
    pub fn add(&self, n: u64) {
        self.local().fetch_add(n, Ordering::Relaxed);
    }

    pub fn sum(&self) -> u64 {
        self.iter().map(|s| s.load(Ordering::Relaxed)).sum()
    }
}

/// A count of things in progress; a thread may end what another began, so a shard can
/// go below zero, never the sum.
#[derive(Default)]
pub struct InProgress(Sharded<AtomicI64>);

impl InProgress {
    /// One more. Sequentially consistent, so a reader that loads the sum after a write
    /// this thread then reads (see `Services::retire`) cannot miss it.
    pub fn enter(&self) {
        self.0.local().fetch_add(1, Ordering::SeqCst);
    }

    pub fn leave(&self) {
        self.0.local().fetch_sub(1, Ordering::SeqCst);
    }

    pub fn get(&self) -> u64 {
        let sum: i64 = self.0.iter().map(|s| s.load(Ordering::SeqCst)).sum();
        u64::try_from(sum).unwrap_or(0)
    }
}

/// A monotonic counter (a Prometheus counter).
#[derive(Clone, Default)]
pub struct Counter(Arc<Sharded<AtomicU64>>);

impl Counter {
    pub fn inc(&self) {
        self.0.add(1);
    }

    pub fn get(&self) -> u64 {
        self.0.sum()
    }
}

impl std::fmt::Debug for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Counter({})", self.get())
    }
}

impl TypedMetric for Counter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for Counter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A value that goes up and down (a Prometheus gauge).
#[derive(Clone, Default)]
pub struct Gauge(Arc<InProgress>);

impl Gauge {
    pub fn inc(&self) {
        self.0.enter();
    }

    pub fn dec(&self) {
        self.0.leave();
    }

    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

impl std::fmt::Debug for Gauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gauge({})", self.get())
    }
}

impl TypedMetric for Gauge {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for Gauge {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&i64::try_from(self.get()).unwrap_or(i64::MAX))
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Upper bounds of [`Histogram`]'s buckets, in seconds (then +Inf).
pub const BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
struct HistogramShard {
    /// Sum of the observations, in nanoseconds.
    sum: AtomicU64,
    buckets: [AtomicU64; BOUNDS.len() + 1],
}

/// Durations in [`BOUNDS`]' buckets (a Prometheus histogram, in seconds).
#[derive(Clone, Default)]
pub struct Histogram(Arc<Sharded<HistogramShard>>);

impl Histogram {
    pub fn observe(&self, took: Duration) {
        let shard = self.0.local();
        let seconds = took.as_secs_f64();
        let i = BOUNDS
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(BOUNDS.len());
        shard.buckets[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        shard.sum.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The sum in seconds, the count, and each bucket's own count (not cumulative).
    pub fn get(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut sum = 0u64;
        let mut buckets: Vec<(f64, u64)> = BOUNDS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .map(|b| (b, 0))
            .collect();
        for shard in self.0.iter() {
            sum = sum.wrapping_add(shard.sum.load(Ordering::Relaxed));
            for (total, n) in buckets.iter_mut().zip(&shard.buckets) {
                total.1 += n.load(Ordering::Relaxed);
            }
        }
        let count = buckets.iter().map(|b| b.1).sum();
        (sum as f64 / 1e9, count, buckets)
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (sum, count, _) = self.get();
        write!(f, "Histogram(count {count}, sum {sum})")
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.get();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_written_by_many_threads_add_up() {
        let (counter, gauge, histogram) =
            (Counter::default(), Gauge::default(), Histogram::default());
        std::thread::scope(|s| {
            for n in 0..4 {
                let (counter, gauge, histogram) = (&counter, &gauge, &histogram);
                s.spawn(move || {
                    enter(n);
                    for _ in 0..1000 {
                        counter.inc();
                        gauge.inc();
                        histogram.observe(Duration::from_millis(2));
                    }
                    // This thread ends work another thread began: the sum stays right.
                    enter(n + 1);
                    for _ in 0..400 {
                        gauge.dec();
                    }
                });
            }
        });
        assert_eq!(counter.get(), 4000);
        assert_eq!(gauge.get(), 2400);
        let (sum, count, buckets) = histogram.get();
        assert_eq!(count, 4000);
        assert!((sum - 8.0).abs() < 1e-6, "{sum}");
        assert_eq!(buckets[2], (0.0025, 4000));
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, 0)));
    }
}
