//! Latency recording and the JSON record of one benchmark run.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::time::Duration;

/// One system measured under one load, as DESIGN section 8 names the fields.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// `stator`, `etcd` or `redis-wait`.
    pub system: String,
    /// Replicas (members) of the measured group.
    pub replicas: usize,
    /// Concurrent clients, each with one request in flight.
    pub clients: usize,
    /// Bytes per written value.
    pub value_bytes: usize,
    /// Median latency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_us: Option<u64>,
    /// 99th percentile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_us: Option<u64>,
    /// 99.9th percentile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p999_us: Option<u64>,
    /// Acknowledged writes per second over the measured window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ops_per_sec: Option<f64>,
    /// Requests that failed during the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<u64>,
    /// Why the system was not measured (not installed, failed to start).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// stator only: the replicas' durability (`memory`, `periodic`, `disk`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub durability: Option<String>,
    /// CPU time (user + system) per acknowledged request over the measured window, in
    /// microseconds: the benchmark process (its clients, and stator's in-process hosts)
    /// plus the baseline's server processes. Steadier than `ops_per_sec` on a loaded
    /// machine. `None` where not measured (etcd).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_op: Option<f64>,
}

impl Run {
    /// A run that could not be measured, and why.
    pub fn skipped(
        system: &str,
        replicas: usize,
        clients: usize,
        value_bytes: usize,
        why: String,
    ) -> Run {
        Run {
            system: system.into(),
            replicas,
            clients,
            value_bytes,
            p50_us: None,
            p99_us: None,
            p999_us: None,
            ops_per_sec: None,
            errors: None,
            skipped: Some(why),
            durability: None,
            cpu_us_per_op: None,
        }
    }

    /// A measured run.
    pub fn measured(
        system: &str,
        replicas: usize,
        clients: usize,
        value_bytes: usize,
        recorder: &Recorder,
        window: Duration,
    ) -> Run {
        let h = &recorder.histogram;
        Run {
            system: system.into(),
            replicas,
            clients,
            value_bytes,
            p50_us: Some(h.value_at_quantile(0.5)),
            p99_us: Some(h.value_at_quantile(0.99)),
            p999_us: Some(h.value_at_quantile(0.999)),
            ops_per_sec: Some(crate::figures::round1(
                h.len() as f64 / window.as_secs_f64(),
            )),
            errors: Some(recorder.errors),
            skipped: None,
            durability: None,
            cpu_us_per_op: None,
        }
    }
}

/// Latencies of one client (merged at the end).
pub struct Recorder {
    /// Microsecond latencies, 1 us to 60 s at 3 significant digits.
    pub histogram: Histogram<u64>,
    /// Failed requests.
    pub errors: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            histogram: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            errors: 0,
        }
    }
}

impl Recorder {
    /// Records one acknowledged request.
    pub fn record(&mut self, latency: Duration) {
        let _ = self
            .histogram
            .record((latency.as_micros() as u64).clamp(1, 60_000_000));
    }

    /// Adds another client's record.
    pub fn merge(&mut self, other: &Recorder) {
        self.histogram.add(&other.histogram).expect("same bounds");
        self.errors += other.errors;
    }
}
