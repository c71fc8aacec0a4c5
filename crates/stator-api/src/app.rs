//! The state-machine contract every replicated app implements.
//!
//! A replica applies committed log entries, in log order, to its [`StateMachine`].
//! Only the leader's answer reaches the client, but every replica must reach the same
//! state, so implementations must be deterministic:
//!
//! # To ensure correctness
//! - `apply` must depend only on the current state, `index`, `time_ms` and `command`.
//!   Never read a clock, a random source or the environment inside `apply`: the leader
//!   stamps its wall clock into every entry as `time_ms`, which is non-decreasing.
//! - `query` must not change the state that later `apply` calls observe.
//! - `restore(snapshot())` must yield a machine indistinguishable from the original.

use async_trait::async_trait;

/// An error from a state machine. The replica hosting it is stopped; the host is not.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The app broke the protocol or returned garbage; the message says how.
    #[error("app protocol error: {0}")]
    Protocol(String),
    /// The app process is gone or its socket failed.
    #[error("app unavailable: {0}")]
    Unavailable(String),
    /// A snapshot could not be decoded.
    #[error("bad snapshot: {0}")]
    BadSnapshot(String),
}

/// A deterministic state machine hosted by a replica.
#[async_trait]
pub trait StateMachine: Send + Sync + 'static {
    /// Applies one committed command and returns the reply for the client.
    async fn apply(
        &mut self,
        index: u64,
        time_ms: u64,
        command: &[u8],
    ) -> Result<Vec<u8>, AppError>;

    /// [`StateMachine::apply`] for a machine that need not wait: `Some` with what `apply`
    /// would return, or `None` (the default) to have the caller await `apply`. The
    /// replica calls this first for every write it applies, saving the boxed future an
    /// `async_trait` method costs per call.
    fn apply_now(
        &mut self,
        _index: u64,
        _time_ms: u64,
        _command: &[u8],
    ) -> Option<Result<Vec<u8>, AppError>> {
        None
    }

    /// Answers a read-only request against the current state.
    async fn query(&mut self, time_ms: u64, request: &[u8]) -> Result<Vec<u8>, AppError>;

    /// Serialises the whole state.
    async fn snapshot(&mut self) -> Result<Vec<u8>, AppError>;

    /// Takes a snapshot in two parts: what needs the machine runs here, and the closure it
    /// returns yields the very bytes [`StateMachine::snapshot`] would, doing the rest
    /// (sorting, assembling) without the machine, on another thread, while the replica goes
    /// on applying writes. The default does all of it here.
    async fn snapshot_in_parts(&mut self) -> Result<SnapshotFinish, AppError> {
        let bytes = self.snapshot().await?;
        Ok(Box::new(move || bytes))
    }

    /// Replaces the whole state with a snapshot taken by [`StateMachine::snapshot`].
    async fn restore(&mut self, snapshot: &[u8]) -> Result<(), AppError>;

    /// Like [`StateMachine::restore`], from bytes the caller shares instead of lends: a
    /// durable replica's snapshot file, mapped read-only and checked against its checksum.
    /// The machine may keep slices of `snapshot` as its values instead of copying them
    /// (saving a restart the copy and the page faults of fresh memory), as long as it
    /// lets go of them when [`StateMachine::release_shared`] asks. The default copies.
    async fn restore_shared(&mut self, snapshot: bytes::Bytes) -> Result<(), AppError> {
        self.restore(&snapshot).await
    }

    /// Copies up to about `max_bytes` of the values still kept as slices of the bytes given
    /// to [`StateMachine::restore_shared`] into the machine's own memory. Returns true once
    /// none is left (the shared bytes are then no longer referenced by the machine). Called
    /// in bounded passes when a newer snapshot replaced the file those bytes map, so the
    /// old file's disk space is freed. The default keeps nothing shared.
    fn release_shared(&mut self, max_bytes: u64) -> bool {
        let _ = max_bytes;
        true
    }

    /// Approximate bytes of state held, for metrics and placement.
    fn state_bytes(&self) -> u64;
}

/// The second part of a snapshot taken by [`StateMachine::snapshot_in_parts`].
pub type SnapshotFinish = Box<dyn FnOnce() -> Vec<u8> + Send>;

/// Builds a fresh, empty state machine for a new replica.
pub trait StateMachineFactory: Send + Sync + 'static {
    /// A new empty machine for `group`.
    fn create(&self, group: crate::ids::GroupId) -> Box<dyn StateMachine>;
}
