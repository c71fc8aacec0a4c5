//! The embedded backend: one redb file, in-process watches, in-memory leases.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use redb::{Database, ReadableTable, Table, TableDefinition};
use tokio::sync::broadcast;

use crate::error::{Result, StoreError};
use crate::store::Store;
use crate::types::{
    validate_batch, validate_key, validate_ttl, validate_value, CasOutcome, Expected, Guard,
    LeaseId, Revision, Versioned, Watch, WatchEvent, WriteOp,
};

/// Name of the database file inside the data directory.
pub const STORE_FILE_NAME: &str = "store.redb";

/// Events buffered per watcher before it counts as lagging. Controllers drain watches in
/// a loop; 4096 covers a burst such as a whole node's replicas changing at once.
pub const WATCH_BUFFER_EVENTS: usize = 4096;

/// Tunables of [`EmbeddedStore::open_with`].
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Events buffered per watcher before it gets [`StoreError::WatchLagged`].
    pub watch_buffer_events: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            watch_buffer_events: WATCH_BUFFER_EVENTS,
        }
    }
}

/// How often expired leases are reaped: a key outlives its lease by at most about this.
pub const LEASE_EXPIRY_CHECK_INTERVAL_MS: u64 = 20;

/// Keys and their records: `[create_revision u64 LE][mod_revision u64 LE][lease u64 LE,
/// 0 = none][value bytes]`.
const KV_TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// Store-wide metadata; holds the revision counter so it survives restarts.
const META_TABLE: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION_META_KEY: &str = "revision";
/// Size of the fixed record header before the value bytes.
const RECORD_HEADER_BYTES: usize = 24;

/// A [`Store`] in a single redb file, for single-machine clusters (`stator up`, `stator
/// server --store embedded:DIR`).
///
/// - **Durable**: every write is a redb commit (fsync) before it returns.
/// - **Watches** are in-process, through a broadcast channel of
///   [`WATCH_BUFFER_EVENTS`] per watcher.
/// - **Leases do not survive a restart.** They live in memory; [`EmbeddedStore::open`]
///   deletes every key that carried a lease, as if all leases had expired while the store
///   was down. Holders must grant a new lease and put their keys again.
/// - Only one process (and one `EmbeddedStore`) can open a directory at a time.
pub struct EmbeddedStore {
    inner: Arc<Inner>,
    expiry: Option<ExpiryThread>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    /// The single writer lock. Held across a commit and the broadcast of its events, so
    /// watchers see events in revision order and `watch` can start exactly after a revision.
    /// A std mutex because it is only taken inside `spawn_blocking`, never across an await.
    writer: Mutex<WriterState>,
    events: broadcast::Sender<WatchEvent>,
}

struct WriterState {
    revision: Revision,
    leases: HashMap<LeaseId, Lease>,
    next_lease_id: LeaseId,
}

struct Lease {
    ttl: Duration,
    deadline: Instant,
    /// Keys put with this lease. May hold keys since detached or deleted: expiry checks
    /// each key's record before deleting it.
    keys: BTreeSet<String>,
}

/// What a write did, applied to memory only after the commit succeeded.
#[derive(Default)]
struct Change {
    events: Vec<WatchEvent>,
    attach: Option<(LeaseId, String)>,
    end_leases: Vec<LeaseId>,
}

struct ExpiryThread {
    stop: mpsc::Sender<()>,
    handle: JoinHandle<()>,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir/store.redb`, deleting keys that carried leases.
    ///
    /// This does blocking file IO; call it at startup or from `spawn_blocking`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(dir, EmbeddedOptions::default())
    }

    /// [`EmbeddedStore::open`] with explicit options.
    pub fn open_with(dir: impl AsRef<Path>, options: EmbeddedOptions) -> Result<Self> {
        assert!(
            options.watch_buffer_events > 0,
            "watch_buffer_events must be at least 1"
        );
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::backend("open", format!("{}: {e}", dir.display())))?;
        let path = dir.join(STORE_FILE_NAME);
        let db = Database::create(&path)
            .map_err(|e| StoreError::backend("open", format!("{}: {e}", path.display())))?;
        let revision = recover(&db)?;
        let (events, _) = broadcast::channel(options.watch_buffer_events);
        let inner = Arc::new(Inner {
            db,
            path,
            writer: Mutex::new(WriterState {
                revision,
                leases: HashMap::new(),
                // Random start so a lease id from before a restart is not handed out again
                // to a different holder; the shift leaves room to count up without overflow.
                next_lease_id: (rand::random::<u64>() >> 1) | 1,
            }),
            events,
        });
        let expiry = ExpiryThread::start(Arc::clone(&inner))?;
        Ok(EmbeddedStore {
            inner,
            expiry: Some(expiry),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `work` on the blocking pool: redb calls and the writer lock may block on disk.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = Arc::clone(&self.inner);
        match tokio::task::spawn_blocking(move || work(&inner)).await {
            Ok(result) => result,
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            // Only happens when the runtime is shutting down.
            Err(_) => Err(StoreError::Closed),
        }
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        if let Some(expiry) = self.expiry.take() {
            expiry.stop();
        }
    }
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>> {
        validate_key(key)?;
        let key = key.to_string();
        self.blocking(move |inner| inner.get(&key)).await
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<Revision> {
        validate_key(key)?;
        validate_value(key, &value)?;
        let key = key.to_string();
        self.blocking(move |inner| inner.put(&key, value, None))
            .await
    }

    async fn put_with_lease(&self, key: &str, value: Bytes, lease: LeaseId) -> Result<Revision> {
        validate_key(key)?;
        validate_value(key, &value)?;
        let key = key.to_string();
        self.blocking(move |inner| inner.put(&key, value, Some(lease)))
            .await
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        validate_key(key)?;
        let key = key.to_string();
        self.blocking(move |inner| inner.delete(&key)).await
    }

    async fn compare_and_swap_with_lease(
        &self,
        key: &str,
        expected: Expected,
        new: Option<Bytes>,
        lease: Option<LeaseId>,
    ) -> Result<CasOutcome> {
        validate_key(key)?;
        if let Some(value) = &new {
            validate_value(key, value)?;
        }
        let key = key.to_string();
        self.blocking(move |inner| inner.compare_and_swap(&key, expected, new, lease))
            .await
    }

    async fn write_batch(&self, guard: Option<&Guard>, ops: Vec<WriteOp>) -> Result<Revision> {
        validate_batch(guard, &ops)?;
        let guard = guard.cloned();
        self.blocking(move |inner| inner.write_batch(guard.as_ref(), ops))
            .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>> {
        let prefix = prefix.to_string();
        self.blocking(move |inner| inner.list(&prefix)).await
    }

    async fn revision(&self) -> Result<Revision> {
        self.blocking(|inner| Ok(inner.lock_writer().revision))
            .await
    }

    async fn watch(&self, prefix: &str) -> Result<Watch> {
        let prefix = prefix.to_string();
        self.blocking(move |inner| Ok(inner.watch(prefix))).await
    }

    async fn grant_lease(&self, ttl_ms: u64) -> Result<LeaseId> {
        validate_ttl(ttl_ms)?;
        self.blocking(move |inner| Ok(inner.grant_lease(ttl_ms)))
            .await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        self.blocking(move |inner| inner.keep_alive(lease)).await
    }

    async fn revoke(&self, lease: LeaseId) -> Result<()> {
        self.blocking(move |inner| inner.revoke(lease)).await
    }
}

impl Inner {
    fn lock_writer(&self) -> MutexGuard<'_, WriterState> {
        self.writer
            .lock()
            .expect("store writer lock poisoned: a write panicked half-way; restart the store")
    }

    fn get(&self, key: &str) -> Result<Option<Versioned>> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| StoreError::backend("get", e))?;
        let table = txn
            .open_table(KV_TABLE)
            .map_err(|e| StoreError::backend("get", e))?;
        let record = table.get(key).map_err(|e| StoreError::backend("get", e))?;
        Ok(record.map(|guard| decode_record(guard.value())))
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| StoreError::backend("list", e))?;
        let table = txn
            .open_table(KV_TABLE)
            .map_err(|e| StoreError::backend("list", e))?;
        let mut entries = Vec::new();
        for item in table
            .range(prefix..)
            .map_err(|e| StoreError::backend("list", e))?
        {
            let (key, record) = item.map_err(|e| StoreError::backend("list", e))?;
            let key = key.value();
            // Keys are sorted, so the first key without the prefix ends the range.
            if !key.starts_with(prefix) {
                break;
            }
            entries.push((key.to_string(), decode_record(record.value())));
        }
        Ok(entries)
    }

    fn put(&self, key: &str, value: Bytes, lease: Option<LeaseId>) -> Result<Revision> {
        self.write("put", |state, table, revision| {
            if let Some(lease) = lease {
                state.check_lease_alive(lease, Instant::now())?;
            }
            let versioned = put_record(table, key, value, lease, revision)?;
            Ok((
                revision,
                Change {
                    events: vec![WatchEvent::Put {
                        key: key.to_string(),
                        value: versioned,
                    }],
                    attach: lease.map(|lease| (lease, key.to_string())),
                    end_leases: Vec::new(),
                },
            ))
        })
    }

    fn delete(&self, key: &str) -> Result<bool> {
        self.write("delete", |_, table, revision| {
            let existed = table
                .remove(key)
                .map_err(|e| StoreError::backend("delete", e))?
                .is_some();
            let mut change = Change::default();
            if existed {
                change.events.push(WatchEvent::Delete {
                    key: key.to_string(),
                    revision,
                });
            }
            Ok((existed, change))
        })
    }

    fn compare_and_swap(
        &self,
        key: &str,
        expected: Expected,
        new: Option<Bytes>,
        lease: Option<LeaseId>,
    ) -> Result<CasOutcome> {
        self.write("compare_and_swap", |state, table, revision| {
            let current = table
                .get(key)
                .map_err(|e| StoreError::backend("compare_and_swap", e))?
                .map(|guard| decode_record(guard.value()));
            if !expected.holds(current.as_ref()) {
                return Ok((CasOutcome::Mismatch { current }, Change::default()));
            }
            let mut change = Change::default();
            match new {
                Some(value) => {
                    if let Some(lease) = lease {
                        state.check_lease_alive(lease, Instant::now())?;
                        change.attach = Some((lease, key.to_string()));
                    }
                    let versioned = put_record(table, key, value, lease, revision)?;
                    change.events.push(WatchEvent::Put {
                        key: key.to_string(),
                        value: versioned,
                    });
                }
                None => {
                    if current.is_some() {
                        table
                            .remove(key)
                            .map_err(|e| StoreError::backend("compare_and_swap", e))?;
                        change.events.push(WatchEvent::Delete {
                            key: key.to_string(),
                            revision,
                        });
                    }
                }
            }
            // A swap that changed nothing (deleting a missing key) does not bump the revision.
            let revision = if change.events.is_empty() {
                revision - 1
            } else {
                revision
            };
            Ok((CasOutcome::Swapped { revision }, change))
        })
    }

    /// The guard is read inside the same write transaction, under the writer lock, as the
    /// batch is applied: no other write can come between the check and the batch.
    fn write_batch(&self, guard: Option<&Guard>, ops: Vec<WriteOp>) -> Result<Revision> {
        self.write("write_batch", |_, table, revision| {
            if let Some(guard) = guard {
                let current = table
                    .get(guard.key.as_str())
                    .map_err(|e| StoreError::backend("write_batch", e))?
                    .map(|record| decode_record(record.value()));
                if !guard.expected.holds(current.as_ref()) {
                    // Returning an error drops the transaction uncommitted.
                    return Err(StoreError::Fenced {
                        key: guard.key.clone(),
                    });
                }
            }
            let mut change = Change::default();
            for op in ops {
                match op {
                    WriteOp::Put { key, value } => {
                        let value = put_record(table, &key, value, None, revision)?;
                        change.events.push(WatchEvent::Put { key, value });
                    }
                    WriteOp::Delete { key } => {
                        let existed = table
                            .remove(key.as_str())
                            .map_err(|e| StoreError::backend("write_batch", e))?
                            .is_some();
                        if existed {
                            change.events.push(WatchEvent::Delete { key, revision });
                        }
                    }
                }
            }
            // A batch that changed nothing does not bump the revision.
            let revision = if change.events.is_empty() {
                revision - 1
            } else {
                revision
            };
            Ok((revision, change))
        })
    }

    fn watch(&self, prefix: String) -> Watch {
        // Subscribing under the writer lock pins the start: every later commit is
        // broadcast after this, every earlier one before.
        let state = self.lock_writer();
        let receiver = self.events.subscribe();
        let start_revision = state.revision;
        drop(state);
        let events = futures::stream::unfold(Some(receiver), move |receiver| {
            let prefix = prefix.clone();
            async move {
                let mut receiver = receiver?;
                loop {
                    match receiver.recv().await {
                        Ok(event) if event.key().starts_with(&prefix) => {
                            return Some((Ok(event), Some(receiver)));
                        }
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            // End the watch: carrying on would hide the gap.
                            return Some((Err(StoreError::WatchLagged { prefix, missed }), None));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        });
        Watch::new(start_revision, events)
    }

    fn grant_lease(&self, ttl_ms: u64) -> LeaseId {
        let mut state = self.lock_writer();
        let id = state.next_lease_id;
        state.next_lease_id += 1;
        let ttl = Duration::from_millis(ttl_ms);
        state.leases.insert(
            id,
            Lease {
                ttl,
                deadline: Instant::now() + ttl,
                keys: BTreeSet::new(),
            },
        );
        id
    }

    fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        let mut state = self.lock_writer();
        let now = Instant::now();
        state.check_lease_alive(lease, now)?;
        let entry = state
            .leases
            .get_mut(&lease)
            .expect("lease checked alive under the same lock");
        entry.deadline = now + entry.ttl;
        Ok(())
    }

    fn revoke(&self, lease: LeaseId) -> Result<()> {
        self.write("revoke", |state, table, revision| {
            state.check_lease_alive(lease, Instant::now())?;
            let mut change = end_leases(state, table, &[lease], revision)?;
            change.end_leases.push(lease);
            Ok(((), change))
        })
    }

    /// Deletes the keys of every lease whose deadline is before `now`, in one revision.
    fn expire_due(&self, now: Instant) -> Result<()> {
        self.write("lease expiry", |state, table, revision| {
            let due: Vec<LeaseId> = state
                .leases
                .iter()
                .filter(|(_, lease)| lease.deadline <= now)
                .map(|(id, _)| *id)
                .collect();
            let mut change = end_leases(state, table, &due, revision)?;
            change.end_leases.extend(due);
            Ok(((), change))
        })
    }

    /// One write transaction under the writer lock. `work` gets the next revision; if it
    /// returns no events the transaction is dropped and the revision stays. Otherwise the
    /// revision is stored with the data, committed, and the events broadcast in order.
    fn write<T>(
        &self,
        operation: &'static str,
        work: impl FnOnce(&mut WriterState, &mut Table<&str, &[u8]>, Revision) -> Result<(T, Change)>,
    ) -> Result<T> {
        let mut state = self.lock_writer();
        let next_revision = state.revision + 1;
        let txn = self
            .db
            .begin_write()
            .map_err(|e| StoreError::backend(operation, e))?;
        let (output, change) = {
            let mut table = txn
                .open_table(KV_TABLE)
                .map_err(|e| StoreError::backend(operation, e))?;
            work(&mut state, &mut table, next_revision)?
        };
        if !change.events.is_empty() {
            {
                let mut meta = txn
                    .open_table(META_TABLE)
                    .map_err(|e| StoreError::backend(operation, e))?;
                meta.insert(REVISION_META_KEY, next_revision)
                    .map_err(|e| StoreError::backend(operation, e))?;
            }
            txn.commit()
                .map_err(|e| StoreError::backend(operation, e))?;
            state.revision = next_revision;
        } else {
            txn.abort().map_err(|e| StoreError::backend(operation, e))?;
        }
        if let Some((lease, key)) = change.attach {
            if let Some(lease) = state.leases.get_mut(&lease) {
                lease.keys.insert(key);
            }
        }
        for lease in change.end_leases {
            state.leases.remove(&lease);
        }
        for event in change.events {
            // An error only means nobody is watching right now.
            let _ = self.events.send(event);
        }
        Ok(output)
    }
}

impl WriterState {
    /// A lease past its deadline counts as ended even before the reaper has run.
    fn check_lease_alive(&self, lease: LeaseId, now: Instant) -> Result<()> {
        match self.leases.get(&lease) {
            Some(entry) if entry.deadline > now => Ok(()),
            _ => Err(StoreError::LeaseNotFound { lease }),
        }
    }
}

impl ExpiryThread {
    /// A plain thread rather than a tokio task so it can be joined on drop: once the store
    /// is dropped nothing holds the database open, and the directory can be reopened.
    fn start(inner: Arc<Inner>) -> Result<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let handle = std::thread::Builder::new()
            .name("stator-store-leases".to_string())
            .spawn(move || loop {
                match stopped.recv_timeout(Duration::from_millis(LEASE_EXPIRY_CHECK_INTERVAL_MS)) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if let Err(error) = inner.expire_due(Instant::now()) {
                            tracing::warn!(%error, "expiring leases failed; retrying");
                        }
                    }
                    // Stop requested or the store is gone.
                    _ => return,
                }
            })
            .map_err(|e| StoreError::backend("open", format!("lease expiry thread: {e}")))?;
        Ok(ExpiryThread { stop, handle })
    }

    fn stop(self) {
        drop(self.stop);
        if self.handle.join().is_err() {
            tracing::error!("lease expiry thread panicked");
        }
    }
}

/// Deletes the live keys of `leases` (keys still attached to them) at `revision`.
fn end_leases(
    state: &WriterState,
    table: &mut Table<&str, &[u8]>,
    leases: &[LeaseId],
    revision: Revision,
) -> Result<Change> {
    let mut change = Change::default();
    for id in leases {
        let Some(lease) = state.leases.get(id) else {
            continue;
        };
        for key in &lease.keys {
            let attached = table
                .get(key.as_str())
                .map_err(|e| StoreError::backend("lease expiry", e))?
                .map(|guard| decode_record(guard.value()).lease == Some(*id))
                .unwrap_or(false);
            if attached {
                table
                    .remove(key.as_str())
                    .map_err(|e| StoreError::backend("lease expiry", e))?;
                change.events.push(WatchEvent::Delete {
                    key: key.clone(),
                    revision,
                });
            }
        }
    }
    Ok(change)
}

/// Writes a record, keeping the create revision if the key already existed.
fn put_record(
    table: &mut Table<&str, &[u8]>,
    key: &str,
    value: Bytes,
    lease: Option<LeaseId>,
    revision: Revision,
) -> Result<Versioned> {
    let create_revision = table
        .get(key)
        .map_err(|e| StoreError::backend("put", e))?
        .map(|guard| decode_record(guard.value()).create_revision)
        .unwrap_or(revision);
    let versioned = Versioned {
        value,
        create_revision,
        mod_revision: revision,
        lease,
    };
    table
        .insert(key, encode_record(&versioned).as_slice())
        .map_err(|e| StoreError::backend("put", e))?;
    Ok(versioned)
}

/// Creates the tables, reads the revision counter and deletes keys that carried leases
/// (leases are in memory only, so they all ended with the previous process).
fn recover(db: &Database) -> Result<Revision> {
    let txn = db
        .begin_write()
        .map_err(|e| StoreError::backend("open", e))?;
    let revision = {
        let mut kv = txn
            .open_table(KV_TABLE)
            .map_err(|e| StoreError::backend("open", e))?;
        let mut meta = txn
            .open_table(META_TABLE)
            .map_err(|e| StoreError::backend("open", e))?;
        let mut revision = meta
            .get(REVISION_META_KEY)
            .map_err(|e| StoreError::backend("open", e))?
            .map(|guard| guard.value())
            .unwrap_or(0);
        let mut leased = Vec::new();
        for item in kv.iter().map_err(|e| StoreError::backend("open", e))? {
            let (key, record) = item.map_err(|e| StoreError::backend("open", e))?;
            if decode_record(record.value()).lease.is_some() {
                leased.push(key.value().to_string());
            }
        }
        if !leased.is_empty() {
            revision += 1;
            for key in &leased {
                kv.remove(key.as_str())
                    .map_err(|e| StoreError::backend("open", e))?;
            }
            meta.insert(REVISION_META_KEY, revision)
                .map_err(|e| StoreError::backend("open", e))?;
            tracing::info!(
                keys = leased.len(),
                "deleted keys whose leases ended with the previous run"
            );
        }
        revision
    };
    txn.commit().map_err(|e| StoreError::backend("open", e))?;
    Ok(revision)
}

fn encode_record(versioned: &Versioned) -> Vec<u8> {
    let mut record = Vec::with_capacity(RECORD_HEADER_BYTES + versioned.value.len());
    record.extend_from_slice(&versioned.create_revision.to_le_bytes());
    record.extend_from_slice(&versioned.mod_revision.to_le_bytes());
    record.extend_from_slice(&versioned.lease.unwrap_or(0).to_le_bytes());
    record.extend_from_slice(&versioned.value);
    record
}

fn decode_record(record: &[u8]) -> Versioned {
    assert!(
        record.len() >= RECORD_HEADER_BYTES,
        "corrupt store record of {} bytes (header is {RECORD_HEADER_BYTES}): the store file is \
         damaged; restore it from a backup",
        record.len()
    );
    let word = |at: usize| {
        u64::from_le_bytes(
            record[at..at + 8]
                .try_into()
                .expect("slice of exactly 8 bytes"),
        )
    };
    let lease = word(16);
    Versioned {
        value: Bytes::copy_from_slice(&record[RECORD_HEADER_BYTES..]),
        create_revision: word(0),
        mod_revision: word(8),
        lease: (lease != 0).then_some(lease),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let versioned = Versioned {
            value: Bytes::from_static(b"hello"),
            create_revision: 3,
            mod_revision: 7,
            lease: Some(42),
        };
        assert_eq!(decode_record(&encode_record(&versioned)), versioned);
        let unleased = Versioned {
            lease: None,
            value: Bytes::new(),
            ..versioned
        };
        assert_eq!(decode_record(&encode_record(&unleased)), unleased);
    }
}
