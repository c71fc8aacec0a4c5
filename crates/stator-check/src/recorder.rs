//! Records a history while concurrent clients run.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::history::{HistoryEntry, Op, Status};

/// A shared, cheaply cloned log of operations. Each client task takes a [`PendingOp`] when
/// it sends a request and finishes it when the answer comes; an operation dropped without
/// an answer (timeout, cancelled task) is recorded as `unknown`.
///
/// Times are nanoseconds since the recorder was created, on one monotonic clock. Appending
/// is a short critical section on a std mutex (nothing awaits while it is held).
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<RecorderInner>,
}

struct RecorderInner {
    start: Instant,
    entries: Mutex<Vec<HistoryEntry>>,
}

/// An operation that was sent and has not been answered yet.
#[must_use = "finish it with ok / ok_read / fail / unknown; dropping it records unknown"]
pub struct PendingOp {
    recorder: Recorder,
    entry: Option<HistoryEntry>,
}

impl Recorder {
    /// An empty recorder whose clock starts now.
    pub fn new() -> Self {
        Recorder {
            inner: Arc::new(RecorderInner {
                start: Instant::now(),
                entries: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Nanoseconds since the recorder started.
    pub fn now_ns(&self) -> u64 {
        // u64 nanoseconds last 584 years; a run is never that long.
        self.inner.start.elapsed().as_nanos() as u64
    }

    /// Client `client` is about to write `value` to `key`.
    pub fn set(&self, client: u64, key: impl Into<String>, value: impl Into<String>) -> PendingOp {
        self.invoke(client, Op::Set, key.into(), Some(value.into()))
    }

    /// Client `client` is about to read `key`.
    pub fn get(&self, client: u64, key: impl Into<String>) -> PendingOp {
        self.invoke(client, Op::Get, key.into(), None)
    }

    fn invoke(&self, client: u64, op: Op, key: String, value: Option<String>) -> PendingOp {
        PendingOp {
            recorder: self.clone(),
            entry: Some(HistoryEntry {
                client,
                op,
                key,
                value,
                call_ns: self.now_ns(),
                return_ns: None,
                status: Status::Unknown,
            }),
        }
    }

    /// A copy of everything recorded so far, ordered by call time.
    pub fn entries(&self) -> Vec<HistoryEntry> {
        let mut entries = self.lock().clone();
        entries.sort_by_key(|entry| (entry.call_ns, entry.client));
        entries
    }

    fn push(&self, entry: HistoryEntry) {
        self.lock().push(entry);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<HistoryEntry>> {
        // A panic while pushing cannot leave the Vec half-written, so a poisoned lock is
        // still safe to use: keep recording.
        self.inner
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("entries", &self.lock().len())
            .finish()
    }
}

impl PendingOp {
    /// The set was acknowledged.
    ///
    /// # Panics
    /// On a get: use [`PendingOp::ok_read`], which records what was read.
    pub fn ok(mut self) {
        let entry = self.entry.take().expect("a pending op is finished once");
        assert_eq!(entry.op, Op::Set, "a get must be finished with ok_read");
        self.finish(entry, Status::Ok, None);
    }

    /// The get answered `value` (`None`: the key was missing).
    ///
    /// # Panics
    /// On a set: use [`PendingOp::ok`].
    pub fn ok_read(mut self, value: Option<String>) {
        let entry = self.entry.take().expect("a pending op is finished once");
        assert_eq!(entry.op, Op::Get, "a set must be finished with ok");
        self.finish(entry, Status::Ok, value);
    }

    /// The operation was definitely not applied.
    pub fn fail(mut self) {
        let entry = self.entry.take().expect("a pending op is finished once");
        let value = entry.value.clone().filter(|_| entry.op == Op::Set);
        self.finish(entry, Status::Fail, value);
    }

    /// The outcome is unknown (timeout, connection lost).
    pub fn unknown(mut self) {
        let entry = self.entry.take().expect("a pending op is finished once");
        self.record_unknown(entry);
    }

    fn finish(&self, mut entry: HistoryEntry, status: Status, value: Option<String>) {
        if entry.op == Op::Get {
            entry.value = value;
        }
        entry.return_ns = Some(self.recorder.now_ns());
        entry.status = status;
        self.recorder.push(entry);
    }

    fn record_unknown(&self, mut entry: HistoryEntry) {
        if entry.op == Op::Get {
            entry.value = None;
        }
        entry.return_ns = None;
        entry.status = Status::Unknown;
        self.recorder.push(entry);
    }
}

impl Drop for PendingOp {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            self.record_unknown(entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_each_outcome() {
        let recorder = Recorder::new();
        recorder.set(1, "k", "v1").ok();
        recorder.get(2, "k").ok_read(Some("v1".into()));
        recorder.set(1, "k", "v2").fail();
        drop(recorder.set(3, "k", "v3"));
        let entries = recorder.entries();
        assert_eq!(entries.len(), 4);
        for entry in &entries {
            entry.validate(0).unwrap();
        }
        assert_eq!(entries[1].value.as_deref(), Some("v1"));
        assert_eq!(entries[2].status, Status::Fail);
        assert_eq!(entries[3].status, Status::Unknown);
        assert_eq!(entries[3].return_ns, None);
        assert_eq!(entries[3].value.as_deref(), Some("v3"));
    }

    #[test]
    fn concurrent_threads_all_land() {
        let recorder = Recorder::new();
        std::thread::scope(|scope| {
            for client in 0..4 {
                let recorder = recorder.clone();
                scope.spawn(move || {
                    for index in 0..100 {
                        recorder.set(client, "k", format!("{client}-{index}")).ok();
                    }
                });
            }
        });
        assert_eq!(recorder.entries().len(), 400);
    }
}
