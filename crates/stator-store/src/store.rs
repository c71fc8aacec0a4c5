//! The `Store` trait: the contract every control-plane backend keeps.

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::Result;
use crate::types::{CasOutcome, Expected, Guard, LeaseId, Revision, Versioned, Watch, WriteOp};

/// A small, strongly consistent key-value store with revisions, watches and leases, modelled
/// on the etcd v3 API. Keys are strings (paths such as `/stator/services/x`), values bytes.
///
/// # To ensure correctness
/// Every implementation must keep these rules; the `conformance` suite (cargo feature `testing`) checks them.
/// - **One global revision.** Every write that changes something (put, delete of an
///   existing key, successful compare-and-swap, lease-driven deletes) gets a revision
///   greater than every earlier one. Reads and failed conditions do not bump it. Deletes
///   caused by one lease ending may share one revision.
/// - **Linearizable.** Once a write returns, every later read sees it.
/// - **Watches are gap-free and ordered.** A watch delivers every change under its prefix
///   with a revision above [`Watch::start_revision`], in revision order, and nothing at or
///   below it. A watcher that cannot keep up gets an explicit
///   [`StoreError::WatchLagged`](crate::StoreError::WatchLagged) and the watch ends;
///   events are never dropped silently.
/// - **Prefixes are byte prefixes.** `list("/a/b")` includes `/a/b` and `/a/bc`; callers
///   that mean a directory pass a trailing `/`.
/// - **Batches are atomic and fenced.** [`Store::write_batch`] checks its guard and
///   applies every operation in one step at one revision, or applies nothing; a guard that
///   does not hold is [`StoreError::Fenced`](crate::StoreError::Fenced), never a partial
///   write and never a silent success.
/// - **Leases.** A key put with a lease is deleted (with a delete event) when the lease
///   expires or is revoked. A later put without that lease detaches the key from it.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The value under `key`, or `None` if it does not exist.
    async fn get(&self, key: &str) -> Result<Option<Versioned>>;

    /// Writes `value` under `key` (detaching it from any lease); returns the new revision.
    async fn put(&self, key: &str, value: Bytes) -> Result<Revision>;

    /// Writes `value` under `key`, attached to `lease`; returns the new revision.
    /// Fails with `LeaseNotFound` if the lease has ended.
    async fn put_with_lease(&self, key: &str, value: Bytes, lease: LeaseId) -> Result<Revision>;

    /// Deletes `key`; true if it existed.
    async fn delete(&self, key: &str) -> Result<bool>;

    /// Atomically: if `expected` holds for `key`, write `new` (`None` deletes) attached to
    /// `lease` (`None`: no lease). Leader election is `Expected::Absent` with a lease.
    async fn compare_and_swap_with_lease(
        &self,
        key: &str,
        expected: Expected,
        new: Option<Bytes>,
        lease: Option<LeaseId>,
    ) -> Result<CasOutcome>;

    /// Atomically: if `expected` holds for `key`, write `new` (`None` deletes).
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Expected,
        new: Option<Bytes>,
    ) -> Result<CasOutcome> {
        self.compare_and_swap_with_lease(key, expected, new, None)
            .await
    }

    /// Atomically: if `guard` holds (or there is none), apply every operation of `ops` in
    /// order, all at one new revision, and return it (the current revision if nothing
    /// changed, e.g. only deletes of missing keys). If the guard does not hold, apply
    /// nothing and fail with `Fenced`. Keys must be distinct and the batch within
    /// [`MAX_BATCH_OPS`](crate::types::MAX_BATCH_OPS) and
    /// [`MAX_BATCH_BYTES`](crate::types::MAX_BATCH_BYTES), else `InvalidBatch`.
    ///
    /// This is how a leader fences its writes: the guard is the leader key with the create
    /// revision it won it at, so a holder that was paused past its lease cannot write once
    /// another holder exists (etcd: one Txn comparing the leader key, then the writes).
    async fn write_batch(&self, guard: Option<&Guard>, ops: Vec<WriteOp>) -> Result<Revision>;

    /// Every key starting with `prefix` (byte prefix), in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>>;

    /// The current store revision (the revision of the last write).
    async fn revision(&self) -> Result<Revision>;

    /// Changes to keys starting with `prefix`, from just after the current revision.
    async fn watch(&self, prefix: &str) -> Result<Watch>;

    /// A new lease that expires `ttl_ms` after now unless kept alive.
    async fn grant_lease(&self, ttl_ms: u64) -> Result<LeaseId>;

    /// Pushes the lease's expiry to a full TTL from now. `LeaseNotFound` if it has ended.
    async fn keep_alive(&self, lease: LeaseId) -> Result<()>;

    /// Ends the lease now, deleting its keys. `LeaseNotFound` if it had already ended.
    async fn revoke(&self, lease: LeaseId) -> Result<()>;
}
