//! Keys, versions, leases, compare-and-swap and watch types shared by every backend.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Stream, StreamExt};

use crate::error::{Result, StoreError};

/// A global, store-wide revision: every successful write bumps it by one (etcd semantics).
/// Revision 0 means "nothing was ever written".
pub type Revision = u64;

/// Identifies a lease granted by [`Store::grant_lease`](crate::Store::grant_lease).
pub type LeaseId = u64;

/// Longest key accepted. Keys are paths such as `/stator/services/x`; 1 KiB is far above any
/// path stator builds and keeps index pages small.
pub const MAX_KEY_BYTES: usize = 1024;

/// Largest value accepted: etcd's default request limit (1.5 MiB), so a spec that fits the
/// embedded store also fits etcd.
pub const MAX_VALUE_BYTES: usize = 1536 * 1024;

/// Shortest lease TTL. Anything shorter expires before a keep-alive round trip can renew it.
pub const MIN_LEASE_TTL_MS: u64 = 50;

/// Longest lease TTL: a day. Longer-lived keys should simply not carry a lease.
pub const MAX_LEASE_TTL_MS: u64 = 24 * 60 * 60 * 1000;

/// A stored value with the revisions that describe its history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The bytes stored under the key.
    pub value: Bytes,
    /// Revision of the write that created the key (since it last did not exist).
    pub create_revision: Revision,
    /// Revision of the last write to the key.
    pub mod_revision: Revision,
    /// The lease the key is attached to, if any; the key vanishes when the lease ends.
    pub lease: Option<LeaseId>,
}

/// The condition a [`compare_and_swap`](crate::Store::compare_and_swap) checks atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// The key must not exist.
    Absent,
    /// The key must exist with exactly this mod revision.
    ModRevision(Revision),
    /// The key must exist and hold exactly these bytes.
    Value(Bytes),
    /// The key must exist and have been created (since it last did not exist) at exactly
    /// this revision: true from the write that created it until it is deleted.
    CreateRevision(Revision),
}

impl Expected {
    /// Whether the condition holds for `current` (what the key holds, `None` if missing).
    pub fn holds(&self, current: Option<&Versioned>) -> bool {
        match (self, current) {
            (Expected::Absent, current) => current.is_none(),
            (Expected::ModRevision(want), Some(current)) => current.mod_revision == *want,
            (Expected::Value(want), Some(current)) => current.value == *want,
            (Expected::CreateRevision(want), Some(current)) => current.create_revision == *want,
            (_, None) => false,
        }
    }
}

/// Most operations in one [`write_batch`](crate::Store::write_batch): etcd's default
/// `--max-txn-ops`, so a batch the embedded store takes is one etcd also takes.
pub const MAX_BATCH_OPS: usize = 128;

/// Most value bytes in one batch, summed over its puts: etcd refuses requests above its
/// `--max-request-bytes` (1.5 MiB by default), so a batch is held to one value's limit.
pub const MAX_BATCH_BYTES: usize = MAX_VALUE_BYTES;

/// One write of a [`write_batch`](crate::Store::write_batch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Write `value` under `key`, detached from any lease (like [`Store::put`]).
    ///
    /// [`Store::put`]: crate::Store::put
    Put {
        /// The key to write.
        key: String,
        /// The bytes to store.
        value: Bytes,
    },
    /// Delete `key` if it exists.
    Delete {
        /// The key to delete.
        key: String,
    },
}

impl WriteOp {
    /// The key the operation writes.
    pub fn key(&self) -> &str {
        match self {
            WriteOp::Put { key, .. } | WriteOp::Delete { key } => key,
        }
    }
}

/// The condition a guarded [`write_batch`](crate::Store::write_batch) checks on another key
/// in the same atomic step: a writer that won a leader key passes what it won with, and its
/// writes are refused with [`StoreError::Fenced`] once the key changed hands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    /// The key checked, e.g. a leader key.
    pub key: String,
    /// What the key must still hold. [`Expected::CreateRevision`] is the election idiom:
    /// a key re-created by another winner has a new create revision even if its value is
    /// the same.
    pub expected: Expected,
}

/// What a compare-and-swap did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasOutcome {
    /// The condition held and the write happened at `revision`.
    Swapped {
        /// The revision of the write (for a delete of a missing key, the current revision).
        revision: Revision,
    },
    /// The condition did not hold; nothing was written.
    Mismatch {
        /// What the key held when the condition was checked.
        current: Option<Versioned>,
    },
}

impl CasOutcome {
    /// True when the write happened.
    pub fn swapped(&self) -> bool {
        matches!(self, CasOutcome::Swapped { .. })
    }
}

/// One change seen by a watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The key was created or overwritten; `value.mod_revision` is the revision of the write.
    Put {
        /// The key written.
        key: String,
        /// The new value with its revisions.
        value: Versioned,
    },
    /// The key was deleted (explicitly, by a compare-and-swap, or because its lease ended).
    Delete {
        /// The key deleted.
        key: String,
        /// The revision of the delete.
        revision: Revision,
    },
}

impl WatchEvent {
    /// The key the event is about.
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put { key, .. } | WatchEvent::Delete { key, .. } => key,
        }
    }

    /// The revision at which the change happened.
    pub fn revision(&self) -> Revision {
        match self {
            WatchEvent::Put { value, .. } => value.mod_revision,
            WatchEvent::Delete { revision, .. } => *revision,
        }
    }
}

/// A stream of changes under a prefix, in revision order.
///
/// It delivers every change with a revision greater than [`Watch::start_revision`]. If the
/// watcher falls too far behind, it yields one [`StoreError::WatchLagged`] and then ends:
/// the caller must list the prefix again and start a new watch (there is no silent loss).
/// It also ends (with `None`) when the store is closed.
pub struct Watch {
    start_revision: Revision,
    events: Pin<Box<dyn Stream<Item = Result<WatchEvent>> + Send>>,
}

impl Watch {
    /// Wraps a backend's event stream. `start_revision` is the store revision the watch
    /// begins after.
    pub fn new(
        start_revision: Revision,
        events: impl Stream<Item = Result<WatchEvent>> + Send + 'static,
    ) -> Self {
        Watch {
            start_revision,
            events: Box::pin(events),
        }
    }

    /// The watch delivers exactly the changes with a revision above this one.
    pub fn start_revision(&self) -> Revision {
        self.start_revision
    }

    /// The next change, an error that ends the watch, or `None` when it has ended.
    pub async fn next(&mut self) -> Option<Result<WatchEvent>> {
        self.events.next().await
    }
}

impl Stream for Watch {
    type Item = Result<WatchEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.as_mut().poll_next(cx)
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("start_revision", &self.start_revision)
            .finish_non_exhaustive()
    }
}

/// Checks a key against the limits every backend enforces.
pub fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        // Cap the echoed key so a huge key does not flood the logs.
        let shown: String = key.chars().take(64).collect();
        return Err(StoreError::InvalidKey { key: shown });
    }
    Ok(())
}

/// Checks a value against [`MAX_VALUE_BYTES`].
pub fn validate_value(key: &str, value: &[u8]) -> Result<()> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(StoreError::ValueTooLarge {
            key: key.to_string(),
            size_bytes: value.len(),
        });
    }
    Ok(())
}

/// Checks a batch against [`MAX_BATCH_OPS`], [`MAX_BATCH_BYTES`], the key and value limits,
/// and that no key appears twice (etcd refuses that in one transaction, and the order of two
/// writes to one key at one revision would be ambiguous).
pub fn validate_batch(guard: Option<&Guard>, ops: &[WriteOp]) -> Result<()> {
    if let Some(guard) = guard {
        validate_key(&guard.key)?;
    }
    if ops.len() > MAX_BATCH_OPS {
        return Err(StoreError::InvalidBatch {
            reason: format!(
                "{} operations, more than the limit of {MAX_BATCH_OPS}; split it into smaller \
                 batches",
                ops.len()
            ),
        });
    }
    let mut keys = std::collections::BTreeSet::new();
    let mut size_bytes = 0usize;
    for op in ops {
        validate_key(op.key())?;
        if let WriteOp::Put { key, value } = op {
            validate_value(key, value)?;
            size_bytes += value.len();
        }
        if !keys.insert(op.key()) {
            return Err(StoreError::InvalidBatch {
                reason: format!(
                    "key {:?} is written twice; merge the two writes into one",
                    op.key()
                ),
            });
        }
    }
    if size_bytes > MAX_BATCH_BYTES {
        return Err(StoreError::InvalidBatch {
            reason: format!(
                "{size_bytes} value bytes, more than the limit of {MAX_BATCH_BYTES}; split it \
                 into smaller batches"
            ),
        });
    }
    Ok(())
}

/// Checks a lease TTL against `MIN_LEASE_TTL_MS..=MAX_LEASE_TTL_MS`.
pub fn validate_ttl(ttl_ms: u64) -> Result<()> {
    if !(MIN_LEASE_TTL_MS..=MAX_LEASE_TTL_MS).contains(&ttl_ms) {
        return Err(StoreError::InvalidTtl { ttl_ms });
    }
    Ok(())
}
