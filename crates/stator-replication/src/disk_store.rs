//! The on-disk Raft log, vote and snapshot of one durable replica.
//!
//! One redb file per replica (`<dir>/raft.redb`) holds the log, the vote and the commit
//! index; the snapshot is a file of its own beside it (`<dir>/snapshot.bin`, see
//! [`crate::snapshot_file`]). Every record carries a CRC-32 of its key and bytes, checked
//! when the store opens: a replica never serves a record it cannot prove. The log after
//! the last purge (bounded by the snapshot policy, as in
//! [`crate::log_store::MemLogStore`]) is also kept in memory, so reads never touch the
//! disk; the disk is only written, by one writer thread per replica that applies
//! operations in arrival order.
//!
//! # Opening
//! Opening maps the snapshot file (the state machine decodes straight from it, no copy)
//! and checks its checksum on a thread of its own while it reads the log records redb
//! still holds (the ones after the last purge); a snapshot that fails its checksum fails
//! the open as before.
//!
//! # Group commit
//! The writer takes every operation queued since its last commit into one redb
//! transaction: one fsync covers every entry of every `append` call in the batch, and
//! each call's [`LogFlushed`] callback fires once that fsync returns.
//!
//! # To ensure correctness
//! - [`SyncPolicy::EveryAppend`] (`durability = "disk"`): an append is acknowledged to
//!   openraft only after the transaction holding it is fsynced, so a replica never
//!   claims an entry it could forget.
//! - [`SyncPolicy::Periodic`]: appends are acknowledged once queued; the writer fsyncs at
//!   least every interval. The vote and snapshots are always fsynced before
//!   [`DiskLogStore::save_vote`] / [`DiskLogStore::save_snapshot`] return: a forgotten
//!   vote could elect two leaders in one term, a forgotten snapshot would leave a hole
//!   behind a purged log. A snapshot is written to a temporary file, fsynced, renamed
//!   into place and its directory fsynced: a crash leaves the old snapshot or the new.
//! - A leader's own append may still be in flight when it sends the entries to its
//!   followers (the workspace's openraft patch, `RaftCore::leader_append_to_log`): its
//!   fsync runs in parallel with theirs, and an entry counts towards the leader's own
//!   progress only once its callback fired. A follower answers only after its fsync, and
//!   a leader that steps down waits for its last append's flush before it answers
//!   anyone as a follower (it could otherwise report as matching an entry its disk
//!   does not hold yet).
//! - Purge and truncate are written without their own fsync: losing one in a crash
//!   brings back a state the replica had before, which openraft repairs.
//! - A write that fails (disk full, IO error) fails its callback and every later one:
//!   openraft stops the replica, and nothing after the failure is acknowledged.

use crate::snapshot_file;
use crate::types::{Entry, NodeId, StorageError, TypeConfig};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogId, LogState, RaftLogReader, SnapshotMeta, StorageIOError, Vote};
use redb::{ReadableTable, TableDefinition};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The store's file inside a replica's directory.
pub const STORE_FILE_NAME: &str = "raft.redb";
/// Most queued operations one transaction takes: bounds a commit's size (and the time
/// the first callback of a batch waits) under a flood of small appends.
pub const MAX_OPS_PER_COMMIT: usize = 4_096;
/// How long opening waits for a previous incarnation of the same replica in this process
/// to release the file (its writer thread finishing its last commit).
pub const OPEN_RETRY_FOR: Duration = Duration::from_secs(5);

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged";
const KEY_SNAPSHOT: &str = "snapshot";

/// When the writer fsyncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Before acknowledging any append (`durability = "disk"`).
    EveryAppend,
    /// At most this long after an acknowledged append (`durability = "periodic"`).
    Periodic {
        /// Longest time between fsyncs.
        interval_ms: u64,
    },
}

/// Why a store could not open or write.
#[derive(Debug, thiserror::Error)]
pub enum DiskStoreError {
    /// The file could not be created or opened (permissions, another process holds it).
    #[error("replica store {path}: cannot open ({reason}); check the agent's --data-dir is writable and no other agent uses it")]
    Open {
        /// The store file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A record fails its checksum or cannot be decoded: the replica must not serve it.
    /// The agent moves the directory aside and the replica rebuilds from its peers.
    #[error("replica store {path}: {what} is corrupt ({reason}); this replica will not serve it and must be rebuilt from its peers")]
    Corrupt {
        /// The store file.
        path: PathBuf,
        /// Which record.
        what: String,
        /// What check failed.
        reason: String,
    },
    /// A write failed; nothing after it is acknowledged.
    #[error("replica store {path}: write failed: {reason}")]
    Write {
        /// The store file.
        path: PathBuf,
        /// Why (a full disk says so).
        reason: String,
    },
}

/// A snapshot as stored: openraft's metadata and the state machine's bytes (mapped from
/// the snapshot file at open, see [`crate::snapshot_file`]).
pub type StoredSnapshot = (
    SnapshotMeta<NodeId, openraft::BasicNode>,
    Arc<snapshot_file::StateBytes>,
);

/// Fault injection for tests: make every following write fail as a full disk would.
#[derive(Debug, Default)]
pub struct DiskFaults {
    disk_full: AtomicBool,
}

impl DiskFaults {
    /// From now on every commit fails with "no space left on device".
    pub fn fill_disk(&self) {
        self.disk_full.store(true, Ordering::SeqCst);
    }
}

#[derive(Default)]
struct Cached {
    last_purged: Option<LogId<NodeId>>,
    entries: BTreeMap<u64, Entry>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
}

type Done = std::sync::mpsc::SyncSender<Result<(), String>>;

enum Op {
    Append {
        records: Vec<(u64, Vec<u8>)>,
        callback: Option<LogFlushed<TypeConfig>>,
    },
    Truncate {
        from_index: u64,
    },
    Purge {
        up_to_index: u64,
        record: Vec<u8>,
    },
    Meta {
        key: &'static str,
        record: Vec<u8>,
        /// Fsync before answering.
        sync: bool,
        done: Option<tokio::sync::oneshot::Sender<Result<(), String>>>,
    },
    /// Removes a meta record (not fsynced).
    DeleteMeta {
        key: &'static str,
    },
    /// Answer once everything queued before is fsynced.
    Sync {
        done: Done,
    },
}

struct Shared {
    path: PathBuf,
    dir: PathBuf,
    cached: Mutex<Cached>,
    writer: Mutex<mpsc::Sender<Op>>,
    /// The first write failure; every later write fails with it.
    failed: Mutex<Option<String>>,
    snapshot_at_open: Mutex<Option<StoredSnapshot>>,
    /// One snapshot file write at a time.
    snapshot_write: Mutex<()>,
    /// The store still holds a snapshot record from before snapshots were files: removed
    /// once a snapshot file is written.
    legacy_snapshot: AtomicBool,
    faults: Arc<DiskFaults>,
}

/// A replica's durable log storage; clones share it (a clone is the log reader).
#[derive(Clone)]
pub struct DiskLogStore {
    shared: Arc<Shared>,
}

fn checksum(key: &[u8], bytes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(key);
    hasher.update(bytes);
    hasher.finalize()
}

/// `crc32(key ++ bytes)` little-endian, then the bytes.
#[cfg(test)]
fn seal(key: &[u8], bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + bytes.len());
    out.extend_from_slice(&checksum(key, bytes).to_le_bytes());
    out.extend_from_slice(bytes);
    out
}

/// A record of `value`: `crc32(key ++ bytes)` little-endian, then its postcard bytes,
/// encoded straight behind the checksum: the
/// record is the only copy (a snapshot is the whole state, copied once less).
fn seal_value<T: serde::Serialize>(key: &[u8], value: &T) -> Vec<u8> {
    let mut out = postcard::to_extend(value, vec![0u8; 4]).expect("log records always serialize");
    let sum = checksum(key, &out[4..]);
    out[..4].copy_from_slice(&sum.to_le_bytes());
    out
}

fn unseal<'a>(key: &[u8], record: &'a [u8]) -> Result<&'a [u8], String> {
    if record.len() < 4 {
        return Err(format!("{} bytes, shorter than its checksum", record.len()));
    }
    let (sum, bytes) = record.split_at(4);
    let stored = u32::from_le_bytes(sum.try_into().expect("4 bytes"));
    let actual = checksum(key, bytes);
    if stored != actual {
        return Err(format!(
            "checksum mismatch: stored {stored:08x}, computed {actual:08x}"
        ));
    }
    Ok(bytes)
}

fn io_error(message: impl Into<String>) -> std::io::Error {
    std::io::Error::other(message.into())
}

fn write_error(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_logs(&io_error(e.to_string())).into()
}

/// Says "disk full" where the OS said ENOSPC, so the operator knows what to do.
fn explain(path: &Path, e: impl std::fmt::Display) -> String {
    let text = e.to_string();
    if text.contains("No space left") || text.contains("os error 28") {
        format!(
            "disk full under {}: {text}; free space there, then restart the agent (nothing after this was acknowledged)",
            path.display()
        )
    } else {
        text
    }
}

impl DiskLogStore {
    /// Opens (or creates) the store in `dir`, checking every record's checksum.
    pub fn open(dir: &Path, policy: SyncPolicy) -> Result<DiskLogStore, DiskStoreError> {
        let path = dir.join(STORE_FILE_NAME);
        let open_error = |reason: String| DiskStoreError::Open {
            path: dir.join(STORE_FILE_NAME),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_error(e.to_string()))?;
        let started = Instant::now();
        let db = loop {
            match redb::Database::create(&path) {
                Ok(db) => break db,
                // Our own previous incarnation is still closing its writer thread.
                Err(redb::DatabaseError::DatabaseAlreadyOpen)
                    if started.elapsed() < OPEN_RETRY_FOR =>
                {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(reason))) => {
                    return Err(DiskStoreError::Corrupt {
                        path,
                        what: "the file".into(),
                        reason,
                    })
                }
                Err(e) => return Err(open_error(e.to_string())),
            }
        };
        let (cached, snapshot, legacy_snapshot) = load(&db, &path, dir)?;
        tracing::info!(
            path = %path.display(),
            entries = cached.entries.len(),
            snapshot_bytes = snapshot.as_ref().map_or(0, |s| s.1.len()),
            open_ms = started.elapsed().as_secs_f64() * 1e3,
            "replica store opened"
        );
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            path: path.clone(),
            dir: dir.to_path_buf(),
            cached: Mutex::new(cached),
            writer: Mutex::new(tx),
            failed: Mutex::new(None),
            snapshot_at_open: Mutex::new(snapshot),
            snapshot_write: Mutex::new(()),
            legacy_snapshot: AtomicBool::new(legacy_snapshot),
            faults: Arc::default(),
        });
        let faults = shared.faults.clone();
        let writer_shared = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("raft-store".into())
            .spawn(move || write_loop(db, rx, policy, faults, writer_shared, path))
            .map_err(|e| open_error(e.to_string()))?;
        Ok(DiskLogStore { shared })
    }

    /// Number of entries currently held (after compaction).
    pub fn len(&self) -> usize {
        self.cached().entries.len()
    }

    /// Whether the log holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the store takes on disk (the log store and the snapshot file).
    pub fn disk_bytes(&self) -> u64 {
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        size(&self.shared.path) + size(&snapshot_file::path(&self.shared.dir))
    }

    /// The fault hook of this store (tests make its disk "full").
    pub fn faults(&self) -> &DiskFaults {
        &self.shared.faults
    }

    /// The replica's directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The snapshot found when the store opened (taken once, by the state machine).
    pub fn take_snapshot_at_open(&self) -> Option<StoredSnapshot> {
        self.shared
            .snapshot_at_open
            .lock()
            .expect("snapshot mutex poisoned")
            .take()
    }

    /// Stores a snapshot (its own file, see [`crate::snapshot_file`]) and fsyncs it
    /// before returning. The write runs on a blocking-pool thread.
    pub async fn save_snapshot(
        &self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        data: Arc<snapshot_file::StateBytes>,
    ) -> Result<(), StorageError> {
        let fail = |why: String| -> StorageError {
            StorageIOError::write_snapshot(Some(meta.signature()), &io_error(why)).into()
        };
        if let Some(why) = self.shared.failed.lock().expect("failed mutex").clone() {
            return Err(fail(why));
        }
        let meta_bytes = postcard::to_allocvec(meta).map_err(|e| fail(e.to_string()))?;
        let shared = self.shared.clone();
        let result = tokio::task::spawn_blocking(move || {
            let _one_at_a_time = shared.snapshot_write.lock().expect("snapshot mutex");
            if shared.faults.disk_full.load(Ordering::SeqCst) {
                return Err(explain(
                    &shared.path,
                    "No space left on device (os error 28) [injected]",
                ));
            }
            snapshot_file::write(&shared.dir, &meta_bytes, &data)
                .map_err(|e| explain(&shared.path, e))
        })
        .await
        .map_err(|e| format!("writing the snapshot panicked: {e}"))
        .and_then(|r| r);
        if let Err(why) = result {
            tracing::error!(path = %self.shared.path.display(), "replica snapshot write failed: {why}");
            *self.shared.failed.lock().expect("failed mutex") = Some(why.clone());
            return Err(fail(why));
        }
        if self.shared.legacy_snapshot.swap(false, Ordering::SeqCst) {
            // The file supersedes it; losing this removal in a crash is harmless (the
            // file is read first).
            self.send(Op::DeleteMeta { key: KEY_SNAPSHOT })
                .map_err(fail)?;
        }
        Ok(())
    }

    /// Returns once everything written so far is on disk (tests, clean shutdown).
    pub fn sync(&self) -> Result<(), String> {
        let (done, wait) = mpsc::sync_channel(1);
        self.send(Op::Sync { done })?;
        wait.recv()
            .map_err(|_| "the store's writer stopped".to_string())?
    }

    fn cached(&self) -> std::sync::MutexGuard<'_, Cached> {
        self.shared.cached.lock().expect("log cache mutex poisoned")
    }

    fn send(&self, op: Op) -> Result<(), String> {
        if let Some(why) = self.shared.failed.lock().expect("failed mutex").clone() {
            return Err(why);
        }
        self.shared
            .writer
            .lock()
            .expect("writer mutex poisoned")
            .send(op)
            .map_err(|_| "the store's writer stopped".to_string())
    }

    async fn meta(&self, key: &'static str, record: Vec<u8>, sync: bool) -> Result<(), String> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.send(Op::Meta {
            key,
            record,
            sync,
            done: Some(done),
        })?;
        wait.await
            .map_err(|_| "the store's writer stopped".to_string())?
    }
}

/// Reads and checks every record, and the snapshot; says whether the snapshot came from a
/// record of the redb file (stores written before snapshots were files).
fn load(
    db: &redb::Database,
    path: &Path,
    dir: &Path,
) -> Result<(Cached, Option<StoredSnapshot>, bool), DiskStoreError> {
    let corrupt = |what: String, reason: String| DiskStoreError::Corrupt {
        path: path.to_path_buf(),
        what,
        reason,
    };
    let redb_corrupt = |e: &dyn std::fmt::Display| corrupt("the file".into(), e.to_string());
    // Creating the tables in an empty file first lets the read below find them.
    let txn = db.begin_write().map_err(|e| redb_corrupt(&e))?;
    txn.open_table(LOG).map_err(|e| redb_corrupt(&e))?;
    txn.open_table(META).map_err(|e| redb_corrupt(&e))?;
    txn.commit().map_err(|e| redb_corrupt(&e))?;

    let txn = db.begin_read().map_err(|e| redb_corrupt(&e))?;
    let meta = txn.open_table(META).map_err(|e| redb_corrupt(&e))?;
    let mut cached = Cached::default();
    let read_meta = |key: &str| -> Result<Option<Vec<u8>>, DiskStoreError> {
        let Some(record) = meta.get(key).map_err(|e| redb_corrupt(&e))? else {
            return Ok(None);
        };
        let bytes = unseal(key.as_bytes(), record.value()).map_err(|r| corrupt(key.into(), r))?;
        Ok(Some(bytes.to_vec()))
    };
    fn decode<'a, T: serde::Deserialize<'a>>(
        bytes: &'a [u8],
        what: &str,
        corrupt: &dyn Fn(String, String) -> DiskStoreError,
    ) -> Result<T, DiskStoreError> {
        postcard::from_bytes(bytes).map_err(|e| corrupt(what.into(), e.to_string()))
    }
    if let Some(bytes) = read_meta(KEY_VOTE)? {
        let vote: Vote<NodeId> = decode(&bytes, KEY_VOTE, &corrupt)?;
        cached.vote = Some(reopened_vote(vote));
    }
    if let Some(bytes) = read_meta(KEY_COMMITTED)? {
        cached.committed = decode(&bytes, KEY_COMMITTED, &corrupt)?;
    }
    if let Some(bytes) = read_meta(KEY_PURGED)? {
        cached.last_purged = decode(&bytes, KEY_PURGED, &corrupt)?;
    }
    // The snapshot holds the whole state (a GiB at most sizes): mapped, not copied, and
    // its checksum checked on a thread of its own while the log is read below.
    let snapshot_started = Instant::now();
    let snapshot_corrupt = |reason: String| DiskStoreError::Corrupt {
        path: snapshot_file::path(dir),
        what: "the snapshot".into(),
        reason,
    };
    let file = snapshot_file::open(dir).map_err(snapshot_corrupt)?;
    let snapshot_check = file.as_ref().map(|f| f.spawn_verify());
    let file = file.map(|f| (f.meta, f.body));
    let legacy = meta.get(KEY_SNAPSHOT).map_err(|e| redb_corrupt(&e))?;
    let has_legacy = legacy.is_some();
    let snapshot: Option<StoredSnapshot> = if let Some((meta_bytes, body)) = file {
        let meta = decode(&meta_bytes, "the snapshot's metadata", &corrupt)?;
        Some((meta, body))
    } else {
        match legacy {
            Some(record) => {
                let bytes = unseal(KEY_SNAPSHOT.as_bytes(), record.value())
                    .map_err(|r| corrupt(KEY_SNAPSHOT.into(), r))?;
                let (meta, data): (SnapshotMeta<NodeId, openraft::BasicNode>, &[u8]) =
                    decode(bytes, KEY_SNAPSHOT, &corrupt)?;
                Some((meta, Arc::new(data.to_vec().into())))
            }
            None => None,
        }
    };
    let log_started = Instant::now();
    let log = txn.open_table(LOG).map_err(|e| redb_corrupt(&e))?;
    let mut expected: Option<u64> = None;
    for row in log.iter().map_err(|e| redb_corrupt(&e))? {
        let (key, record) = row.map_err(|e| redb_corrupt(&e))?;
        let index = key.value();
        let what = format!("log entry {index}");
        let bytes =
            unseal(&index.to_le_bytes(), record.value()).map_err(|r| corrupt(what.clone(), r))?;
        let entry: Entry = decode(bytes, &what, &corrupt)?;
        if entry.log_id.index != index {
            return Err(corrupt(
                what,
                format!("holds the entry of index {}", entry.log_id.index),
            ));
        }
        if let Some(want) = expected {
            if index != want {
                return Err(corrupt(what, format!("gap: expected index {want} next")));
            }
        }
        expected = Some(index + 1);
        cached.entries.insert(index, entry);
    }
    // Entries a purge removed in memory but whose deletion was lost in a crash.
    if let Some(purged) = cached.last_purged {
        cached.entries = cached.entries.split_off(&(purged.index + 1));
    }
    let log_read = Instant::now();
    if let Some(check) = snapshot_check {
        check
            .join()
            .map_err(|_| snapshot_corrupt("checking its checksum panicked".into()))?
            .map_err(snapshot_corrupt)?;
    }
    // The restart profile's spans (docs/BENCHMARKS.md, "Session 10: the member restart").
    tracing::info!(
        path = %path.display(),
        snapshot_map_ms = (log_started - snapshot_started).as_secs_f64() * 1e3,
        log_read_ms = (log_read - log_started).as_secs_f64() * 1e3,
        checksum_wait_ms = log_read.elapsed().as_secs_f64() * 1e3,
        entries = cached.entries.len(),
        "replica store read"
    );
    Ok((cached, snapshot, has_legacy))
}

/// The vote a reopened replica starts with: the stored one, never as a committed
/// (leader-granted) vote.
///
/// openraft 0.9 restores a replica whose stored vote is committed *for itself* as leader at
/// once, in the same term, without a new election and so without the blank entry a new
/// leader commits first. Such a leader does not know its commit index (the stored one is
/// not fsynced): it would serve reads from a state missing writes acknowledged before the
/// crash, and if its own last append was lost (acknowledged by a quorum of followers while
/// its own fsync was pending, or `periodic` durability) it would reuse a log id the
/// followers hold with other contents. Reopened uncommitted, the vote keeps its leader id
/// (openraft orders votes by leader id first, so what the replica grants to others does not
/// change), and leadership comes back through an election in a later term, whose blank
/// entry commits everything acknowledged before.
fn reopened_vote(vote: Vote<NodeId>) -> Vote<NodeId> {
    Vote {
        committed: false,
        ..vote
    }
}

fn write_loop(
    db: redb::Database,
    rx: mpsc::Receiver<Op>,
    policy: SyncPolicy,
    faults: Arc<DiskFaults>,
    shared: std::sync::Weak<Shared>,
    path: PathBuf,
) {
    let interval = match policy {
        SyncPolicy::EveryAppend => None,
        SyncPolicy::Periodic { interval_ms } => Some(Duration::from_millis(interval_ms.max(1))),
    };
    let mut last_sync = Instant::now();
    let mut dirty = false;
    loop {
        let first = match interval {
            None => match rx.recv() {
                Ok(op) => Some(op),
                Err(_) => return,
            },
            Some(interval) => {
                // Idle and clean: nothing to fsync, so wait a whole interval (no spinning).
                let wait = if dirty {
                    interval.saturating_sub(last_sync.elapsed())
                } else {
                    interval
                };
                match rx.recv_timeout(wait) {
                    Ok(op) => Some(op),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        if dirty {
                            let _ = commit(&db, Vec::new(), true, &faults);
                        }
                        return;
                    }
                }
            }
        };
        let mut batch: Vec<Op> = first.into_iter().collect();
        while batch.len() < MAX_OPS_PER_COMMIT {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let wants_sync = batch.iter().any(|op| match op {
            Op::Append { .. } => interval.is_none(),
            Op::Meta { sync, .. } => *sync,
            Op::Sync { .. } => true,
            Op::Truncate { .. } | Op::Purge { .. } | Op::DeleteMeta { .. } => false,
        });
        let due = interval.is_some_and(|i| dirty && last_sync.elapsed() >= i);
        if batch.is_empty() && !due {
            continue;
        }
        let sync = wants_sync || due || (batch.is_empty() && dirty);
        let (ops, replies) = split(batch);
        let result = commit(&db, ops, sync, &faults).map_err(|e| explain(&path, e));
        if sync {
            last_sync = Instant::now();
            dirty = false;
        } else {
            dirty = true;
        }
        if let Err(why) = &result {
            tracing::error!(path = %path.display(), "replica store write failed: {why}");
            if let Some(shared) = shared.upgrade() {
                *shared.failed.lock().expect("failed mutex") = Some(why.clone());
            }
        }
        for reply in replies {
            reply.send(result.clone());
        }
        if result.is_err() {
            // Fail everything queued after the failure too, then stop: the replica's Raft
            // core stops on the first storage error.
            while let Ok(op) = rx.recv() {
                for reply in split(vec![op]).1 {
                    reply.send(result.clone());
                }
            }
            return;
        }
    }
}

/// What to tell whoever waits on an operation.
enum Reply {
    Flushed(LogFlushed<TypeConfig>),
    Meta(tokio::sync::oneshot::Sender<Result<(), String>>),
    Sync(Done),
}

impl Reply {
    fn send(self, result: Result<(), String>) {
        match self {
            Reply::Flushed(callback) => callback.log_io_completed(result.map_err(io_error)),
            Reply::Meta(done) => {
                let _ = done.send(result);
            }
            Reply::Sync(done) => {
                let _ = done.send(result);
            }
        }
    }
}

enum Write {
    Log(u64, Vec<u8>),
    Truncate(u64),
    Purge(u64, Vec<u8>),
    Meta(&'static str, Vec<u8>),
    DeleteMeta(&'static str),
}

fn split(batch: Vec<Op>) -> (Vec<Write>, Vec<Reply>) {
    let mut writes = Vec::new();
    let mut replies = Vec::new();
    for op in batch {
        match op {
            Op::Append { records, callback } => {
                writes.extend(records.into_iter().map(|(i, r)| Write::Log(i, r)));
                replies.extend(callback.map(Reply::Flushed));
            }
            Op::Truncate { from_index } => writes.push(Write::Truncate(from_index)),
            Op::Purge {
                up_to_index,
                record,
            } => writes.push(Write::Purge(up_to_index, record)),
            Op::Meta {
                key, record, done, ..
            } => {
                writes.push(Write::Meta(key, record));
                replies.extend(done.map(Reply::Meta));
            }
            Op::DeleteMeta { key } => writes.push(Write::DeleteMeta(key)),
            Op::Sync { done } => replies.push(Reply::Sync(done)),
        }
    }
    (writes, replies)
}

fn commit(
    db: &redb::Database,
    writes: Vec<Write>,
    sync: bool,
    faults: &DiskFaults,
) -> Result<(), String> {
    if faults.disk_full.load(Ordering::SeqCst) {
        return Err("No space left on device (os error 28) [injected]".into());
    }
    let mut txn = db.begin_write().map_err(|e| e.to_string())?;
    txn.set_durability(if sync {
        redb::Durability::Immediate
    } else {
        redb::Durability::None
    });
    {
        let mut log = txn.open_table(LOG).map_err(|e| e.to_string())?;
        let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
        for write in writes {
            match write {
                Write::Log(index, record) => {
                    log.insert(index, record.as_slice())
                        .map_err(|e| e.to_string())?;
                }
                Write::Truncate(from) => {
                    log.retain_in(from.., |_, _| false)
                        .map_err(|e| e.to_string())?;
                }
                Write::Purge(up_to, record) => {
                    meta.insert(KEY_PURGED, record.as_slice())
                        .map_err(|e| e.to_string())?;
                    log.retain_in(..=up_to, |_, _| false)
                        .map_err(|e| e.to_string())?;
                }
                Write::Meta(key, record) => {
                    meta.insert(key, record.as_slice())
                        .map_err(|e| e.to_string())?;
                }
                Write::DeleteMeta(key) => {
                    meta.remove(key).map_err(|e| e.to_string())?;
                }
            }
        }
    }
    txn.commit().map_err(|e| e.to_string())
}

impl RaftLogReader<TypeConfig> for DiskLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(self
            .cached()
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for DiskLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let cached = self.cached();
        let last = cached.entries.values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: cached.last_purged,
            last_log_id: last.or(cached.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let record = seal_value(KEY_VOTE.as_bytes(), vote);
        // Always fsynced: a vote forgotten in a crash could elect two leaders in one term.
        self.meta(KEY_VOTE, record, true)
            .await
            .map_err(|e| StorageError::from(StorageIOError::write_vote(&io_error(e))))?;
        self.cached().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        Ok(self.cached().vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError> {
        self.cached().committed = committed;
        // Not fsynced: a stale commit index only means re-applying fewer entries at start;
        // the leader tells the rest.
        let record = seal_value(KEY_COMMITTED.as_bytes(), &committed);
        self.send(Op::Meta {
            key: KEY_COMMITTED,
            record,
            sync: false,
            done: None,
        })
        .map_err(write_error)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError> {
        Ok(self.cached().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut records = Vec::new();
        {
            let mut cached = self.cached();
            for entry in entries {
                let index = entry.log_id.index;
                records.push((index, seal_value(&index.to_le_bytes(), &entry)));
                cached.entries.insert(index, entry);
            }
        }
        // The callback fires from the writer thread once the batch is on disk.
        self.send(Op::Append {
            records,
            callback: Some(callback),
        })
        .map_err(write_error)
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        self.cached().entries.split_off(&log_id.index);
        self.send(Op::Truncate {
            from_index: log_id.index,
        })
        .map_err(write_error)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        {
            let mut cached = self.cached();
            assert!(
                cached.last_purged.is_none_or(|p| p <= log_id),
                "purge must move forward: {:?} then {log_id}",
                cached.last_purged
            );
            cached.last_purged = Some(log_id);
            let keep = cached.entries.split_off(&(log_id.index + 1));
            cached.entries = keep;
        }
        let record = seal_value(KEY_PURGED.as_bytes(), &Some(log_id));
        self.send(Op::Purge {
            up_to_index: log_id.index,
            record,
        })
        .map_err(write_error)
    }
}

/// Moves a replica's directory aside (`<dir>.corrupt-<unix ms>`) so a fresh replica can
/// start in its place; the old files stay for inspection.
pub fn quarantine(dir: &Path) -> std::io::Result<PathBuf> {
    let mut name = dir.as_os_str().to_owned();
    name.push(format!(".corrupt-{}", crate::host::now_ms()));
    let to = PathBuf::from(name);
    std::fs::rename(dir, &to)?;
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_record_detects_a_flipped_bit_and_a_moved_key() {
        let record = seal(b"k1", b"hello");
        assert_eq!(unseal(b"k1", &record).unwrap(), b"hello");
        let mut flipped = record.clone();
        flipped[6] ^= 0x01;
        assert!(unseal(b"k1", &flipped).unwrap_err().contains("checksum"));
        assert!(unseal(b"k2", &record).is_err());
        assert!(unseal(b"k1", &record[..3]).is_err());
        // Sealing a value in place is sealing its encoding.
        let value = (7u64, b"state".to_vec());
        assert_eq!(
            seal_value(b"k1", &value),
            seal(b"k1", &postcard::to_allocvec(&value).unwrap())
        );
    }

    #[tokio::test]
    async fn a_snapshot_reopens_from_its_file_and_a_torn_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let meta = SnapshotMeta {
            last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(2, 1), 40)),
            last_membership: Default::default(),
            snapshot_id: "2-1-40-1".into(),
        };
        {
            let store = DiskLogStore::open(dir.path(), SyncPolicy::EveryAppend).unwrap();
            store
                .save_snapshot(&meta, Arc::new(b"the state".to_vec().into()))
                .await
                .unwrap();
            assert!(
                store.disk_bytes() > 9,
                "the snapshot file counts as disk use"
            );
        }
        let store = DiskLogStore::open(dir.path(), SyncPolicy::EveryAppend).unwrap();
        let (read_meta, data) = store.take_snapshot_at_open().expect("the snapshot");
        assert_eq!((read_meta, &data[..]), (meta, &b"the state"[..]));
        drop((store, data));

        let file = snapshot_file::path(dir.path());
        let bytes = std::fs::read(&file).unwrap();
        std::fs::write(&file, &bytes[..bytes.len() - 3]).unwrap();
        // The store's writer releases the file a moment after the last handle drops.
        match DiskLogStore::open(dir.path(), SyncPolicy::EveryAppend) {
            Err(DiskStoreError::Corrupt { what, reason, .. }) => {
                assert_eq!(what, "the snapshot");
                assert!(reason.contains("torn"), "{reason}");
            }
            Err(other) => panic!("expected a corrupt snapshot, got {other}"),
            Ok(_) => panic!("a torn snapshot was served"),
        }
    }

    #[tokio::test]
    async fn a_reopened_leader_vote_comes_back_uncommitted_for_the_same_candidate() {
        let dir = tempfile::tempdir().unwrap();
        let leader_vote = Vote::new_committed(4, 7);
        {
            let mut store = DiskLogStore::open(dir.path(), SyncPolicy::EveryAppend).unwrap();
            store.save_vote(&leader_vote).await.unwrap();
            // Before a restart the vote stays what openraft saved.
            assert_eq!(store.read_vote().await.unwrap(), Some(leader_vote));
        }
        let mut reopened = DiskLogStore::open(dir.path(), SyncPolicy::EveryAppend).unwrap();
        let vote = reopened
            .read_vote()
            .await
            .unwrap()
            .expect("the vote is on disk");
        assert!(
            !vote.committed,
            "a restored leader must win a new election first"
        );
        assert_eq!(vote.leader_id, leader_vote.leader_id);
    }
}
