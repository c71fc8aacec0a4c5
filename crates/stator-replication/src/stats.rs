//! Request statistics: per replica, operations per second and p99 latency over a
//! window (for placement and `get partitions`); per node, a cumulative commit-latency
//! histogram (for Prometheus, through the heartbeat).

use stator_api::agent::{LatencyHistogram, COMMIT_LATENCY_BOUNDS_US};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Latency buckets: bucket `i` holds samples below `2^(i+1)` microseconds, so 32 buckets
/// reach past an hour and the p99 is known to within a factor of two.
const BUCKETS: usize = 32;
/// How long a window lasts before it starts over.
pub const WINDOW: Duration = Duration::from_secs(10);

struct Window {
    started: Instant,
    counts: [u64; BUCKETS],
    total: u64,
    /// The previous full window, reported while the current one fills.
    last: Option<(f64, u64)>,
}

/// A cheap, bounded latency histogram.
pub struct LatencyWindow {
    // A std mutex: recording is a few additions, never held across an await.
    window: Mutex<Window>,
}

impl Default for LatencyWindow {
    fn default() -> Self {
        Self {
            window: Mutex::new(Window {
                started: Instant::now(),
                counts: [0; BUCKETS],
                total: 0,
                last: None,
            }),
        }
    }
}

fn summarise(w: &Window, elapsed: Duration) -> (f64, u64) {
    let ops = w.total as f64 / elapsed.as_secs_f64().max(0.001);
    let target = (w.total as f64 * 0.99).ceil() as u64;
    let mut seen = 0;
    for (i, c) in w.counts.iter().enumerate() {
        seen += c;
        if seen >= target && w.total > 0 {
            return (ops, 1u64 << (i + 1));
        }
    }
    (ops, 0)
}

impl LatencyWindow {
    /// Records one served request.
    pub fn record(&self, latency: Duration) {
        let us = latency.as_micros().max(1) as u64;
        let bucket = (63 - us.leading_zeros() as usize).min(BUCKETS - 1);
        let mut w = self.window.lock().expect("latency mutex poisoned");
        let elapsed = w.started.elapsed();
        if elapsed >= WINDOW {
            let summary = summarise(&w, elapsed);
            *w = Window {
                started: Instant::now(),
                counts: [0; BUCKETS],
                total: 0,
                last: Some(summary),
            };
        }
        w.counts[bucket] += 1;
        w.total += 1;
    }

    /// (operations per second, p99 in microseconds, as a power-of-two upper bound).
    pub fn summary(&self) -> (f64, u64) {
        let w = self.window.lock().expect("latency mutex poisoned");
        let elapsed = w.started.elapsed();
        match w.last {
            Some(last) if elapsed < WINDOW => last,
            _ => summarise(&w, elapsed),
        }
    }
}

/// Buckets of [`CommitLatency`]: one per bound and one above the last.
const COMMIT_BUCKETS: usize = COMMIT_LATENCY_BOUNDS_US.len() + 1;

/// A node's cumulative histogram of write latency (committed and applied at the leader),
/// over the fixed [`COMMIT_LATENCY_BOUNDS_US`]. Lock-free: every write records once.
#[derive(Debug, Default)]
pub struct CommitLatency {
    counts: [AtomicU64; COMMIT_BUCKETS],
    sum_us: AtomicU64,
}

impl CommitLatency {
    /// Records one acknowledged write.
    pub fn record(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bucket = COMMIT_LATENCY_BOUNDS_US.partition_point(|bound| *bound < us);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// The counts so far, as a heartbeat carries them.
    pub fn snapshot(&self) -> LatencyHistogram {
        LatencyHistogram {
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum_us: self.sum_us.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_latency_lands_in_the_first_bucket_whose_bound_is_not_below_it() {
        let h = CommitLatency::default();
        h.record(Duration::from_micros(250));
        h.record(Duration::from_micros(251));
        h.record(Duration::from_secs(60));
        let snapshot = h.snapshot();
        assert_eq!(snapshot.counts.len(), COMMIT_LATENCY_BOUNDS_US.len() + 1);
        assert_eq!(snapshot.counts[0], 1, "250 us is within the 250 us bucket");
        assert_eq!(snapshot.counts[1], 1, "251 us is in the 500 us bucket");
        assert_eq!(
            *snapshot.counts.last().unwrap(),
            1,
            "a minute is above every bound"
        );
        assert_eq!(snapshot.count(), 3);
        assert_eq!(snapshot.sum_us, 250 + 251 + 60_000_000);
    }

    #[test]
    fn p99_is_the_bucket_bound_above_the_99th_sample() {
        let w = LatencyWindow::default();
        for _ in 0..990 {
            w.record(Duration::from_micros(100));
        }
        for _ in 0..10 {
            w.record(Duration::from_millis(50));
        }
        let (_, p99) = w.summary();
        assert_eq!(p99, 128, "99% of samples are at 100 us, below 128");
    }
}
