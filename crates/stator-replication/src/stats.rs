//! Per-replica request statistics: operations per second and p99 latency over a window.

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

#[cfg(test)]
mod tests {
    use super::*;

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
