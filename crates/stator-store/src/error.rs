//! The one error type of the store.

use crate::types::{LeaseId, MAX_KEY_BYTES, MAX_LEASE_TTL_MS, MAX_VALUE_BYTES, MIN_LEASE_TTL_MS};

/// Everything a [`Store`](crate::Store) call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend itself failed: disk, database file, or connection to etcd.
    #[error(
        "store backend failed during {operation}: {detail}; check that the data directory is \
         writable and not used by another stator server (or that etcd is reachable)"
    )]
    Backend {
        /// The store operation that was running, e.g. `"put"`.
        operation: &'static str,
        /// What the backend reported.
        detail: String,
    },

    /// The lease does not exist: it expired, was revoked, or was granted before a restart
    /// of the embedded store (embedded leases live in memory only).
    #[error(
        "lease {lease} not found: it expired, was revoked, or the store restarted; grant a new \
         lease and put its keys again"
    )]
    LeaseNotFound {
        /// The lease that was asked for.
        lease: LeaseId,
    },

    /// A key is empty or longer than [`MAX_KEY_BYTES`].
    #[error("invalid key {key:?}: keys must be non-empty and at most {MAX_KEY_BYTES} bytes")]
    InvalidKey {
        /// The offending key, truncated for the message if it is huge.
        key: String,
    },

    /// A value is larger than [`MAX_VALUE_BYTES`].
    #[error(
        "value for key {key:?} is {size_bytes} bytes, more than the limit of {MAX_VALUE_BYTES}; \
         store large blobs elsewhere and keep a reference here"
    )]
    ValueTooLarge {
        /// The key being written.
        key: String,
        /// The size that was rejected.
        size_bytes: usize,
    },

    /// A lease TTL outside `MIN_LEASE_TTL_MS..=MAX_LEASE_TTL_MS`.
    #[error(
        "invalid lease TTL {ttl_ms} ms: it must be between {MIN_LEASE_TTL_MS} and \
         {MAX_LEASE_TTL_MS} ms"
    )]
    InvalidTtl {
        /// The TTL that was asked for.
        ttl_ms: u64,
    },

    /// A watcher fell so far behind that events were dropped for it. The watch has ended;
    /// nothing after this error is delivered.
    #[error(
        "watch on {prefix:?} fell behind and missed {missed} events; list the prefix again and \
         start a new watch"
    )]
    WatchLagged {
        /// The prefix that was watched.
        prefix: String,
        /// How many events this watcher missed.
        missed: u64,
    },

    /// A guarded [`write_batch`](crate::Store::write_batch) was refused because its guard
    /// key no longer holds what the writer won it with: another writer (a new leader) took
    /// over. Nothing of the batch was applied.
    #[error(
        "write refused: the guard key {key:?} no longer holds what this writer won it with \
         (another server took over); stop writing, the new holder owns the state now"
    )]
    Fenced {
        /// The guard key.
        key: String,
    },

    /// A batch breaks a batch limit (too many operations or bytes, or a key written twice).
    /// Nothing of it was applied.
    #[error("invalid write batch: {reason}")]
    InvalidBatch {
        /// What was wrong and what to do.
        reason: String,
    },

    /// The store was closed (dropped) while the call or watch was in flight.
    #[error("the store is closed; open it again")]
    Closed,
}

/// Shorthand used throughout the crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    /// Wraps a backend error with the operation it interrupted.
    pub fn backend(operation: &'static str, detail: impl std::fmt::Display) -> Self {
        StoreError::Backend {
            operation,
            detail: detail.to_string(),
        }
    }
}
