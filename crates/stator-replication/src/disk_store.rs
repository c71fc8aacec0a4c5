//! The on-disk Raft log, vote and snapshot of one durable replica.
//!
//! A replica's directory holds three things: its log as preallocated segment files
//! (`<dir>/log/`, see [`crate::log_file`]), its vote, commit index and purge point in a
//! small file of two slots (`<dir>/meta.bin`, see [`MetaFile`]), and its snapshot
//! (`<dir>/snapshot.bin`, see [`crate::snapshot_file`]). Every record carries a CRC-32,
//! checked when the store opens: a replica never serves a record it cannot prove. The log
//! after the last purge (bounded by the snapshot policy, as in
//! [`crate::log_store::MemLogStore`]) is also kept in memory, so reads never touch the
//! disk; the disk is only written, by one writer thread per replica that applies
//! operations in arrival order.
//!
//! Until session 10 the log, vote and metadata lived in one redb file (`raft.redb`); a
//! durable batch was a redb commit, which writes several pages where a log writes one
//! block (docs/BENCHMARKS.md "Session 10"). A directory still holding `raft.redb` is
//! migrated when it opens: its records are checked as before, written to the new files
//! and fsynced, and only then is the redb file removed.
//!
//! # Opening
//! Opening takes the directory's lock (`meta.bin`, an exclusive `flock`: a second agent on
//! the same data dir is refused, and a previous incarnation of the replica in this process
//! is waited for, up to [`OPEN_RETRY_FOR`]), maps the snapshot file (the state machine
//! decodes straight from it, no copy) and checks its checksum on a thread of its own
//! while it reads every log segment once, checking each record: records at or below the
//! purge point (covered by the snapshot) are checked but not decoded or kept. A torn tail
//! (a batch a crash cut before its `fdatasync` returned: never acknowledged) is cut off; a
//! bad record anywhere else, or a snapshot that fails its checksum, fails the open with
//! [`DiskStoreError::Corrupt`].
//!
//! # Group commit
//! The writer takes every operation queued since its last write as one batch: the batch's
//! records go to the log's tail in one `pwrite`, then one `fdatasync` covers every entry of
//! every `append` call in the batch, and each call's [`LogFlushed`] callback fires once
//! that `fdatasync` returns.
//!
//! # To ensure correctness
//! - [`SyncPolicy::EveryAppend`] (`durability = "disk"`): an append is acknowledged to
//!   openraft only after the `fdatasync` covering it returned, so a replica never claims
//!   an entry it could forget.
//! - [`SyncPolicy::Periodic`]: appends are acknowledged once written to the file (the page
//!   cache); the writer fsyncs at least every interval. The vote and snapshots are always
//!   fsynced before [`DiskLogStore::save_vote`] / [`DiskLogStore::save_snapshot`] return: a
//!   forgotten vote could elect two leaders in one term, a forgotten snapshot would leave
//!   a hole behind a purged log. A snapshot is written to a temporary file, fsynced,
//!   renamed into place and its directory fsynced: a crash leaves the old snapshot or the
//!   new.
//! - A leader's own append may still be in flight when it sends the entries to its
//!   followers (the workspace's openraft patch, `RaftCore::leader_append_to_log`): its
//!   fsync runs in parallel with theirs, and an entry counts towards the leader's own
//!   progress only once its callback fired. A follower answers only after its fsync, and
//!   a leader that steps down waits for its last append's flush before it answers
//!   anyone as a follower (it could otherwise report as matching an entry its disk
//!   does not hold yet).
//! - A truncate is a marker record in the log, written in order with the appends, without
//!   an fsync of its own: losing it in a crash brings back a state the replica had before,
//!   which openraft repairs. A purge first fsyncs the log written before it, then the new
//!   purge point (fsynced), and only then deletes whole segments below it: the files never
//!   say a purge happened that the log before it does not show.
//! - The vote and purge point are written to the slot of `meta.bin` that does not hold the
//!   last fsynced state, so a write torn by a crash leaves the previous state readable;
//!   the commit index rides along unsynced (a stale one only means re-applying fewer
//!   entries at start) and is clamped at open to an entry the log still holds.
//! - A write that fails (disk full, IO error) fails its callback and every later one:
//!   openraft stops the replica, and nothing after the failure is acknowledged. Segments
//!   are preallocated, so a full disk shows when the next segment cannot be created, before
//!   any record of a batch depends on it.

use crate::log_file::{self, LogFile};
use crate::snapshot_file;
use crate::types::{Entry, NodeId, StorageError, TypeConfig};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogId, LogState, RaftLogReader, SnapshotMeta, StorageIOError, Vote};
use redb::{ReadableTable, TableDefinition};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The vote, commit index and purge point inside a replica's directory (also its lock).
pub const META_FILE_NAME: &str = "meta.bin";
/// Bytes of each of `meta.bin`'s two slots (one disk page: a slot is written whole).
pub const META_SLOT_BYTES: u64 = 4096;
/// The redb store of replicas written before session 10, migrated when found.
pub const LEGACY_STORE_FILE_NAME: &str = "raft.redb";
/// Most queued operations one batch takes: bounds a batch's size (and the time the first
/// callback of a batch waits) under a flood of small appends.
pub const MAX_OPS_PER_COMMIT: usize = 4_096;
/// How long opening waits for a previous incarnation of the same replica in this process
/// to release the directory (its writer thread finishing its last batch).
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
    /// A file could not be created or opened (permissions, another process holds it).
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

/// What `meta.bin` holds.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct MetaState {
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    last_purged: Option<LogId<NodeId>>,
}

/// `meta.bin`: two slots of [`META_SLOT_BYTES`], each a [`log_file`] record whose index is
/// a sequence number and whose payload is the [`MetaState`]; the valid slot with the
/// higher sequence is the state. Every write goes to the slot that does not hold the last
/// fsynced state, so a torn write (or an unsynced one a power loss drops) leaves that
/// state readable: one unreadable slot beside a readable one is such a write, both
/// unreadable is corruption. The file is the directory's lock too (an exclusive `flock`).
struct MetaFile {
    file: File,
    seq: u64,
    /// The slot holding the last fsynced state.
    durable_slot: u64,
    state: MetaState,
}

impl MetaFile {
    /// Opens and locks `<dir>/meta.bin`, creating it if missing.
    fn open(dir: &Path) -> Result<MetaFile, DiskStoreError> {
        let path = dir.join(META_FILE_NAME);
        let open_error = |reason: String| DiskStoreError::Open {
            path: path.clone(),
            reason,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| open_error(e.to_string()))?;
        let started = Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => break,
                // Our own previous incarnation is still closing its writer thread.
                Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < OPEN_RETRY_FOR => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(open_error("another store holds its lock".into()))
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(open_error(e.to_string())),
            }
        }
        let mut bytes = vec![0u8; 2 * META_SLOT_BYTES as usize];
        let len = file
            .metadata()
            .map_err(|e| open_error(e.to_string()))?
            .len();
        if len < 2 * META_SLOT_BYTES {
            // New (or cut short before its first write finished): two slots of zeros.
            file.write_all_at(&bytes, 0)
                .and_then(|_| file.sync_all())
                .and_then(|_| File::open(dir)?.sync_all())
                .map_err(|e| open_error(e.to_string()))?;
        } else {
            file.read_exact_at(&mut bytes, 0)
                .map_err(|e| open_error(e.to_string()))?;
        }
        let mut best: Option<(u64, u64, MetaState)> = None;
        let mut bad: Option<String> = None;
        for slot in 0..2u64 {
            let at = (slot * META_SLOT_BYTES) as usize;
            let slot_bytes = &bytes[at..at + META_SLOT_BYTES as usize];
            match log_file::decode(slot_bytes) {
                Ok(None) => {}
                Ok(Some((seq, payload, _))) => {
                    let state: MetaState =
                        postcard::from_bytes(payload).map_err(|e| DiskStoreError::Corrupt {
                            path: path.clone(),
                            what: format!("the vote record (slot {slot})"),
                            reason: e.to_string(),
                        })?;
                    if best.as_ref().is_none_or(|(s, _, _)| seq > *s) {
                        best = Some((seq, slot, state));
                    }
                }
                Err(reason) => bad = Some(format!("slot {slot}: {reason}")),
            }
        }
        match (&best, bad) {
            (None, Some(reason)) => {
                return Err(DiskStoreError::Corrupt {
                    path,
                    what: "the vote record".into(),
                    reason,
                })
            }
            // A write a crash tore: the other slot holds the last fsynced state.
            (Some(_), Some(reason)) => tracing::warn!(
                path = %path.display(),
                "ignored a torn write of the vote record: {reason}"
            ),
            _ => {}
        }
        // Whatever was read is made durable before the next write may overwrite the
        // other slot (an unsynced write a crashed process left in the page cache).
        file.sync_all().map_err(|e| open_error(e.to_string()))?;
        let (seq, durable_slot, state) = best.unwrap_or((0, 1, MetaState::default()));
        Ok(MetaFile {
            file,
            seq,
            durable_slot,
            state,
        })
    }

    /// Writes the state to the slot not holding the last fsynced one; `sync` fsyncs it
    /// (it then becomes the durable slot).
    fn write(&mut self, sync: bool) -> std::io::Result<()> {
        let slot = 1 - self.durable_slot;
        self.seq += 1;
        let record = log_file::encode(self.seq, &self.state);
        assert!(
            record.len() as u64 <= META_SLOT_BYTES,
            "a vote record fits its slot"
        );
        self.file.write_all_at(&record, slot * META_SLOT_BYTES)?;
        if sync {
            self.file.sync_data()?;
            self.durable_slot = slot;
        }
        Ok(())
    }
}

type Done = std::sync::mpsc::SyncSender<Result<(), String>>;

enum Op {
    /// Log records (entries, or a truncate marker without a callback).
    Append {
        records: Vec<(u64, Vec<u8>)>,
        callback: Option<LogFlushed<TypeConfig>>,
    },
    Purge {
        log_id: LogId<NodeId>,
    },
    /// Fsynced before answering.
    Vote {
        vote: Vote<NodeId>,
        done: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
    /// Not fsynced.
    Committed {
        committed: Option<LogId<NodeId>>,
    },
    /// Answer once everything queued before is fsynced.
    Sync {
        done: Done,
    },
}

struct Shared {
    dir: PathBuf,
    cached: Mutex<Cached>,
    writer: Mutex<mpsc::Sender<Op>>,
    /// The first write failure; every later write fails with it.
    failed: Mutex<Option<String>>,
    snapshot_at_open: Mutex<Option<StoredSnapshot>>,
    /// One snapshot file write at a time; holds the last log id of the newest snapshot
    /// on disk, so a build that finished late does not replace a newer one
    /// ([`DiskLogStore::save_snapshot_unless_older`]).
    snapshot_write: Mutex<Option<LogId<NodeId>>>,
    faults: Arc<DiskFaults>,
    /// Bytes of the log's segments, as the writer last saw them.
    log_bytes: Arc<AtomicU64>,
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

/// `crc32(key ++ bytes)` little-endian, then the bytes: a record of the legacy redb store.
#[cfg(test)]
fn seal(key: &[u8], bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + bytes.len());
    out.extend_from_slice(&checksum(key, bytes).to_le_bytes());
    out.extend_from_slice(bytes);
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

fn decode<'a, T: serde::Deserialize<'a>>(
    bytes: &'a [u8],
    what: &str,
    corrupt: &dyn Fn(String, String) -> DiskStoreError,
) -> Result<T, DiskStoreError> {
    postcard::from_bytes(bytes).map_err(|e| corrupt(what.into(), e.to_string()))
}

impl DiskLogStore {
    /// Opens (or creates) the store in `dir`, checking every record's checksum (and
    /// migrating a store written before session 10).
    pub fn open(dir: &Path, policy: SyncPolicy) -> Result<DiskLogStore, DiskStoreError> {
        let open_error = |reason: String| DiskStoreError::Open {
            path: dir.to_path_buf(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_error(e.to_string()))?;
        let started = Instant::now();
        let mut meta = MetaFile::open(dir)?;
        if dir.join(LEGACY_STORE_FILE_NAME).exists() {
            migrate(dir, &mut meta)?;
        }
        // The snapshot holds the whole state (a GiB at most sizes): mapped, not copied, and
        // its checksum checked on a thread of its own while the log is read below; nothing
        // is served before that check has passed.
        let snapshot_path = snapshot_file::path(dir);
        let corrupt_snapshot = |what: String, reason: String| DiskStoreError::Corrupt {
            path: snapshot_path.clone(),
            what,
            reason,
        };
        let file =
            snapshot_file::open(dir).map_err(|r| corrupt_snapshot("the snapshot".into(), r))?;
        let snapshot_check = file.as_ref().map(|f| f.spawn_verify());
        let snapshot: Option<StoredSnapshot> = match file {
            Some(file) => Some((
                decode(&file.meta, "the snapshot's metadata", &corrupt_snapshot)?,
                file.body,
            )),
            None => None,
        };
        let log_started = Instant::now();
        let purged = meta.state.last_purged.map(|p| p.index);
        let mut entries: BTreeMap<u64, Entry> = BTreeMap::new();
        let (log, opened) = LogFile::open(dir, |index, payload| {
            // A record replaces every one of its index and above written before it.
            entries.split_off(&index);
            // A truncate marker, or an entry the snapshot covers: checked, not kept.
            if payload.is_empty() || purged.is_some_and(|p| index <= p) {
                return Ok(());
            }
            let what = || format!("log entry {index}");
            let entry: Entry =
                postcard::from_bytes(payload).map_err(|e| (what(), e.to_string()))?;
            if entry.log_id.index != index {
                return Err((
                    what(),
                    format!("holds the entry of index {}", entry.log_id.index),
                ));
            }
            entries.insert(index, entry);
            Ok(())
        })
        .map_err(|e| match e {
            log_file::OpenError::Io(reason) => open_error(reason),
            log_file::OpenError::Corrupt { what, reason } => DiskStoreError::Corrupt {
                path: log_file::log_dir(dir),
                what,
                reason,
            },
        })?;
        let log_read = Instant::now();
        if let Some(check) = snapshot_check {
            check
                .join()
                .map_err(|_| {
                    corrupt_snapshot(
                        "the snapshot".into(),
                        "checking its checksum panicked".into(),
                    )
                })?
                .map_err(|r| corrupt_snapshot("the snapshot".into(), r))?;
        }
        let checksum_wait = log_read.elapsed();
        let corrupt_log = |what: String, reason: String| DiskStoreError::Corrupt {
            path: log_file::log_dir(dir),
            what,
            reason,
        };
        let mut expected = purged.map(|p| p + 1);
        for index in entries.keys() {
            if expected.is_some_and(|want| *index != want) {
                return Err(corrupt_log(
                    format!("log entry {index}"),
                    format!("gap: expected index {} next", expected.unwrap_or_default()),
                ));
            }
            expected = Some(index + 1);
        }
        let state = meta.state.clone();
        // Unsynced, the commit index may have reached the disk ahead of the log (a power
        // loss under `periodic`): keep it only if the log holds that very entry.
        let committed = state.committed.filter(|c| {
            state.last_purged == Some(*c) || entries.get(&c.index).is_some_and(|e| e.log_id == *c)
        });
        let cached = Cached {
            last_purged: state.last_purged,
            entries,
            vote: state.vote.map(reopened_vote),
            committed: committed.or(state.last_purged),
        };
        tracing::info!(
            path = %dir.display(),
            entries = cached.entries.len(),
            records = opened.records,
            segments = opened.segments,
            torn_bytes = opened.torn_bytes,
            snapshot_bytes = snapshot.as_ref().map_or(0, |s| s.1.len()),
            log_read_ms = (log_read - log_started).as_secs_f64() * 1e3,
            checksum_wait_ms = checksum_wait.as_secs_f64() * 1e3,
            open_ms = started.elapsed().as_secs_f64() * 1e3,
            "replica store opened"
        );
        let (tx, rx) = mpsc::channel();
        let newest_snapshot = snapshot.as_ref().and_then(|(meta, _)| meta.last_log_id);
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            cached: Mutex::new(cached),
            writer: Mutex::new(tx),
            failed: Mutex::new(None),
            snapshot_at_open: Mutex::new(snapshot),
            snapshot_write: Mutex::new(newest_snapshot),
            faults: Arc::default(),
            log_bytes: Arc::new(AtomicU64::new(log.disk_bytes())),
        });
        let faults = shared.faults.clone();
        let log_bytes = shared.log_bytes.clone();
        let writer_shared = Arc::downgrade(&shared);
        let path = dir.to_path_buf();
        std::thread::Builder::new()
            .name("raft-store".into())
            .spawn(move || {
                let writer = Writer {
                    policy,
                    faults,
                    shared: writer_shared,
                    log_bytes,
                    path,
                };
                write_loop(log, meta, rx, writer)
            })
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

    /// Bytes the store takes on disk: the log's segments (preallocated, so whole), the
    /// vote file and the snapshot file.
    pub fn disk_bytes(&self) -> u64 {
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        self.shared.log_bytes.load(Ordering::Relaxed)
            + size(&self.shared.dir.join(META_FILE_NAME))
            + size(&snapshot_file::path(&self.shared.dir))
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
    /// before returning. The write runs on a blocking-pool thread. Returns the state's
    /// bytes mapped back from the file just written, checked against its checksum as at
    /// open: the replica keeps that (page cache) instead of `data` (its own memory).
    pub async fn save_snapshot(
        &self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        data: Arc<snapshot_file::StateBytes>,
    ) -> Result<Arc<snapshot_file::StateBytes>, StorageError> {
        let saved = self.write_snapshot(meta, data, false).await?;
        Ok(saved.expect("an unconditional write writes"))
    }

    /// [`Self::save_snapshot`] unless a snapshot past `meta`'s last log id is on disk
    /// already (`None`; one at the same index is the same state, written again): a
    /// replica's own build, saved without holding its state machine, must not replace a
    /// newer snapshot installed meanwhile.
    pub async fn save_snapshot_unless_older(
        &self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        data: Arc<snapshot_file::StateBytes>,
    ) -> Result<Option<Arc<snapshot_file::StateBytes>>, StorageError> {
        self.write_snapshot(meta, data, true).await
    }

    async fn write_snapshot(
        &self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        data: Arc<snapshot_file::StateBytes>,
        unless_older: bool,
    ) -> Result<Option<Arc<snapshot_file::StateBytes>>, StorageError> {
        let fail = |why: String| -> StorageError {
            StorageIOError::write_snapshot(Some(meta.signature()), &io_error(why)).into()
        };
        if let Some(why) = self.shared.failed.lock().expect("failed mutex").clone() {
            return Err(fail(why));
        }
        let meta_bytes = postcard::to_allocvec(meta).map_err(|e| fail(e.to_string()))?;
        let shared = self.shared.clone();
        let last_log_id = meta.last_log_id;
        let result = tokio::task::spawn_blocking(move || {
            let mut newest = shared.snapshot_write.lock().expect("snapshot mutex");
            if unless_older && *newest > last_log_id {
                return Ok(None);
            }
            if shared.faults.disk_full.load(Ordering::SeqCst) {
                return Err(explain(
                    &shared.dir,
                    "No space left on device (os error 28) [injected]",
                ));
            }
            snapshot_file::write(&shared.dir, &meta_bytes, &data)
                .map_err(|e| explain(&shared.dir, e))?;
            drop(data);
            let reread = |why: String| {
                format!(
                    "the snapshot just written to {} {why}",
                    shared.dir.display()
                )
            };
            let file = snapshot_file::open(&shared.dir)
                .map_err(reread)?
                .ok_or_else(|| reread("is gone".into()))?;
            file.verify().map_err(reread)?;
            *newest = last_log_id;
            Ok(Some(file.body))
        })
        .await
        .map_err(|e| format!("writing the snapshot panicked: {e}"))
        .and_then(|r| r);
        match result {
            Ok(saved) => Ok(saved),
            Err(why) => {
                tracing::error!(path = %self.shared.dir.display(), "replica snapshot write failed: {why}");
                *self.shared.failed.lock().expect("failed mutex") = Some(why.clone());
                Err(fail(why))
            }
        }
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
}

/// Moves a store written before session 10 (`raft.redb`: log, vote and metadata in redb)
/// to the log files and `meta.bin`: every record checked as the old store did, written
/// and fsynced, and only then the redb file removed. A crash in between leaves the redb
/// file, and the next open migrates again from scratch.
fn migrate(dir: &Path, meta: &mut MetaFile) -> Result<(), DiskStoreError> {
    let path = dir.join(LEGACY_STORE_FILE_NAME);
    let fail = |reason: String| DiskStoreError::Open {
        path: path.clone(),
        reason: format!("migrating to the log files: {reason}"),
    };
    let db = match redb::Database::create(&path) {
        Ok(db) => db,
        Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(reason))) => {
            return Err(DiskStoreError::Corrupt {
                path,
                what: "the file".into(),
                reason,
            })
        }
        Err(e) => return Err(fail(e.to_string())),
    };
    let (cached, legacy_snapshot) = load_legacy(&db, &path)?;
    if let Some((snapshot_meta, body)) = legacy_snapshot {
        if !snapshot_file::path(dir).exists() {
            let meta_bytes =
                postcard::to_allocvec(&snapshot_meta).map_err(|e| fail(e.to_string()))?;
            snapshot_file::write(dir, &meta_bytes, &body).map_err(|e| fail(e.to_string()))?;
        }
    }
    let log_dir = log_file::log_dir(dir);
    if log_dir.exists() {
        // A migration a crash interrupted: start it over.
        std::fs::remove_dir_all(&log_dir).map_err(|e| fail(e.to_string()))?;
    }
    let (mut log, _) = LogFile::open(dir, |_, _| Ok(())).map_err(|e| fail(format!("{e:?}")))?;
    let records: Vec<(u64, Vec<u8>)> = cached
        .entries
        .iter()
        .map(|(index, entry)| (*index, log_file::encode(*index, entry)))
        .collect();
    log.append(&records, true)
        .map_err(|e| fail(e.to_string()))?;
    drop(log);
    meta.state = MetaState {
        vote: cached.vote,
        committed: cached.committed,
        last_purged: cached.last_purged,
    };
    meta.write(true).map_err(|e| fail(e.to_string()))?;
    drop(db);
    std::fs::remove_file(&path)
        .and_then(|_| File::open(dir)?.sync_all())
        .map_err(|e| fail(e.to_string()))?;
    tracing::info!(
        path = %dir.display(),
        entries = records.len(),
        "migrated a replica store from redb to the log files"
    );
    Ok(())
}

/// Reads and checks every record of a legacy redb store, and the snapshot record it may
/// hold (stores written before snapshots were files).
fn load_legacy(
    db: &redb::Database,
    path: &Path,
) -> Result<(Cached, Option<StoredSnapshot>), DiskStoreError> {
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
    if let Some(bytes) = read_meta(KEY_VOTE)? {
        cached.vote = Some(decode(&bytes, KEY_VOTE, &corrupt)?);
    }
    if let Some(bytes) = read_meta(KEY_COMMITTED)? {
        cached.committed = decode(&bytes, KEY_COMMITTED, &corrupt)?;
    }
    if let Some(bytes) = read_meta(KEY_PURGED)? {
        cached.last_purged = decode(&bytes, KEY_PURGED, &corrupt)?;
    }
    let snapshot = match read_meta(KEY_SNAPSHOT)? {
        Some(bytes) => {
            let (meta, data): (SnapshotMeta<NodeId, openraft::BasicNode>, &[u8]) =
                decode(&bytes, KEY_SNAPSHOT, &corrupt)?;
            Some((meta, Arc::new(data.to_vec().into())))
        }
        None => None,
    };
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
    Ok((cached, snapshot))
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

/// What the writer thread needs besides its files.
struct Writer {
    policy: SyncPolicy,
    faults: Arc<DiskFaults>,
    shared: std::sync::Weak<Shared>,
    log_bytes: Arc<AtomicU64>,
    path: PathBuf,
}

fn write_loop(mut log: LogFile, mut meta: MetaFile, rx: mpsc::Receiver<Op>, writer: Writer) {
    run_writer(&mut log, &mut meta, rx, &writer);
    // The log (and a segment still being created) first, the lock last: a reopened
    // store never races this one's files.
    drop(log);
    drop(meta);
}

fn run_writer(log: &mut LogFile, meta: &mut MetaFile, rx: mpsc::Receiver<Op>, writer: &Writer) {
    let Writer {
        policy,
        faults,
        shared,
        log_bytes,
        path,
    } = writer;
    let interval = match *policy {
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
                            let _ = commit(log, meta, Vec::new(), true, faults);
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
            Op::Append { callback, .. } => callback.is_some() && interval.is_none(),
            Op::Vote { .. } | Op::Sync { .. } => true,
            Op::Purge { .. } | Op::Committed { .. } => false,
        });
        let due = interval.is_some_and(|i| dirty && last_sync.elapsed() >= i);
        if batch.is_empty() && !due {
            continue;
        }
        let sync = wants_sync || due || (batch.is_empty() && dirty);
        let (ops, replies) = split(batch);
        let result = commit(log, meta, ops, sync, faults).map_err(|e| explain(path, e));
        log_bytes.store(log.disk_bytes(), Ordering::Relaxed);
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
    Vote(tokio::sync::oneshot::Sender<Result<(), String>>),
    Sync(Done),
}

impl Reply {
    fn send(self, result: Result<(), String>) {
        match self {
            Reply::Flushed(callback) => callback.log_io_completed(result.map_err(io_error)),
            Reply::Vote(done) => {
                let _ = done.send(result);
            }
            Reply::Sync(done) => {
                let _ = done.send(result);
            }
        }
    }
}

enum Write {
    Log(Vec<(u64, Vec<u8>)>),
    Purge(LogId<NodeId>),
    Vote(Vote<NodeId>),
    Committed(Option<LogId<NodeId>>),
}

fn split(batch: Vec<Op>) -> (Vec<Write>, Vec<Reply>) {
    let mut writes = Vec::new();
    let mut replies = Vec::new();
    for op in batch {
        match op {
            Op::Append { records, callback } => {
                writes.push(Write::Log(records));
                replies.extend(callback.map(Reply::Flushed));
            }
            Op::Purge { log_id } => writes.push(Write::Purge(log_id)),
            Op::Vote { vote, done } => {
                writes.push(Write::Vote(vote));
                replies.push(Reply::Vote(done));
            }
            Op::Committed { committed } => writes.push(Write::Committed(committed)),
            Op::Sync { done } => replies.push(Reply::Sync(done)),
        }
    }
    (writes, replies)
}

/// Writes one batch in order: its log records in one `pwrite` (one per segment they
/// span), then `meta.bin` if the vote or commit index changed; `sync` fsyncs the log, a
/// vote fsyncs `meta.bin`. A purge inside the batch first makes everything before it
/// durable, then its purge point, then deletes the segments below it.
fn commit(
    log: &mut LogFile,
    meta: &mut MetaFile,
    writes: Vec<Write>,
    sync: bool,
    faults: &DiskFaults,
) -> Result<(), String> {
    if faults.disk_full.load(Ordering::SeqCst) {
        return Err("No space left on device (os error 28) [injected]".into());
    }
    let text = |e: std::io::Error| e.to_string();
    let mut records: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut meta_dirty = false;
    let mut meta_sync = false;
    for write in writes {
        match write {
            Write::Log(mut more) => records.append(&mut more),
            Write::Purge(log_id) => {
                log.append(&records, true).map_err(text)?;
                records.clear();
                meta.state.last_purged = Some(log_id);
                meta.write(true).map_err(text)?;
                (meta_dirty, meta_sync) = (false, false);
                log.purge(log_id.index).map_err(text)?;
            }
            Write::Vote(vote) => {
                meta.state.vote = Some(vote);
                (meta_dirty, meta_sync) = (true, true);
            }
            Write::Committed(committed) => {
                meta.state.committed = committed;
                meta_dirty = true;
            }
        }
    }
    log.append(&records, sync).map_err(text)?;
    if meta_dirty {
        meta.write(meta_sync).map_err(text)?;
    }
    Ok(())
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
        // Always fsynced: a vote forgotten in a crash could elect two leaders in one term.
        let (done, wait) = tokio::sync::oneshot::channel();
        let result = match self.send(Op::Vote { vote: *vote, done }) {
            Ok(()) => wait
                .await
                .unwrap_or_else(|_| Err("the store's writer stopped".to_string())),
            Err(e) => Err(e),
        };
        result.map_err(|e| StorageError::from(StorageIOError::write_vote(&io_error(e))))?;
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
        self.send(Op::Committed { committed }).map_err(write_error)
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
                records.push((index, log_file::encode(index, &entry)));
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
        self.send(Op::Append {
            records: vec![(log_id.index, log_file::truncate_marker(log_id.index))],
            callback: None,
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
        self.send(Op::Purge { log_id }).map_err(write_error)
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
            let saved = store
                .save_snapshot(&meta, Arc::new(b"the state".to_vec().into()))
                .await
                .unwrap();
            // Handed back mapped from the file just written.
            assert!(matches!(*saved, snapshot_file::StateBytes::Mapped(_)));
            assert_eq!(&saved[..], b"the state");
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
    async fn a_build_that_finished_late_does_not_replace_a_newer_snapshot_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let meta = |index: u64| SnapshotMeta {
            last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(2, 1), index)),
            last_membership: Default::default(),
            snapshot_id: format!("2-1-{index}-1"),
        };
        {
            let store = DiskLogStore::open(dir.path(), SyncPolicy::EveryAppend).unwrap();
            // Installed from a leader: index 40.
            store
                .save_snapshot(&meta(40), Arc::new(b"installed".to_vec().into()))
                .await
                .unwrap();
            // The replica's own build of index 30 ends afterwards: not written.
            let late = store
                .save_snapshot_unless_older(&meta(30), Arc::new(b"older".to_vec().into()))
                .await
                .unwrap();
            assert!(late.is_none(), "an older build replaced a newer snapshot");
        }
        let store = DiskLogStore::open(dir.path(), SyncPolicy::EveryAppend).unwrap();
        let (read_meta, data) = store.take_snapshot_at_open().expect("the snapshot");
        assert_eq!((read_meta, &data[..]), (meta(40), &b"installed"[..]));
        drop(data);
        // The newest on disk at open counts too; a newer build is written.
        let older = store
            .save_snapshot_unless_older(&meta(35), Arc::new(b"older".to_vec().into()))
            .await
            .unwrap();
        assert!(older.is_none());
        let newer = store
            .save_snapshot_unless_older(&meta(50), Arc::new(b"built".to_vec().into()))
            .await
            .unwrap()
            .expect("a newer build is written");
        assert_eq!(&newer[..], b"built");
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
    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(term, 1), index),
            payload: openraft::EntryPayload::Blank,
        }
    }

    #[tokio::test]
    async fn a_legacy_redb_store_is_migrated_and_its_file_removed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = redb::Database::create(dir.path().join(LEGACY_STORE_FILE_NAME)).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut log = txn.open_table(LOG).unwrap();
                for index in 1..=5u64 {
                    let bytes = postcard::to_allocvec(&entry(2, index)).unwrap();
                    log.insert(index, seal(&index.to_le_bytes(), &bytes).as_slice())
                        .unwrap();
                }
                let mut meta = txn.open_table(META).unwrap();
                let vote = postcard::to_allocvec(&Vote::<NodeId>::new_committed(2, 1)).unwrap();
                meta.insert(KEY_VOTE, seal(KEY_VOTE.as_bytes(), &vote).as_slice())
                    .unwrap();
                let purged = postcard::to_allocvec(&Some(entry(2, 2).log_id)).unwrap();
                meta.insert(KEY_PURGED, seal(KEY_PURGED.as_bytes(), &purged).as_slice())
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        for _ in 0..2 {
            let mut store = DiskLogStore::open(dir.path(), SyncPolicy::EveryAppend).unwrap();
            assert!(!dir.path().join(LEGACY_STORE_FILE_NAME).exists());
            let state = store.get_log_state().await.unwrap();
            assert_eq!(state.last_purged_log_id, Some(entry(2, 2).log_id));
            assert_eq!(state.last_log_id, Some(entry(2, 5).log_id));
            assert_eq!(store.len(), 3);
            let vote = store.read_vote().await.unwrap().unwrap();
            assert_eq!(
                vote.leader_id,
                Vote::<NodeId>::new_committed(2, 1).leader_id
            );
        }
    }

    #[tokio::test]
    async fn a_torn_vote_write_leaves_the_last_fsynced_vote() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = DiskLogStore::open(dir.path(), SyncPolicy::EveryAppend).unwrap();
            store.save_vote(&Vote::new(3, 2)).await.unwrap();
            store.save_committed(None).await.unwrap();
            store.sync().unwrap();
        }
        // The vote went to slot 0 (fsynced), the commit index to slot 1 (not): tear slot
        // 1's record (its payload's sector never written).
        let path = dir.path().join(META_FILE_NAME);
        let slot = |bytes: &[u8], slot: usize| {
            let at = slot * META_SLOT_BYTES as usize;
            log_file::decode(&bytes[at..at + META_SLOT_BYTES as usize])
                .unwrap()
                .map(|(seq, _, len)| (seq, at, len))
        };
        let mut bytes = std::fs::read(&path).unwrap();
        let (vote_seq, vote_at, _) = slot(&bytes, 0).expect("the vote's slot");
        let (committed_seq, at, len) = slot(&bytes, 1).expect("the commit index's slot");
        assert!(committed_seq > vote_seq);
        bytes[at + log_file::RECORD_HEADER_BYTES..at + len].fill(0);
        std::fs::write(&path, &bytes).unwrap();
        let mut store = DiskLogStore::open(dir.path(), SyncPolicy::EveryAppend).unwrap();
        assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
        drop(store);
        // A flipped bit in a whole record is corruption, not a torn write.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[vote_at + log_file::RECORD_HEADER_BYTES] ^= 0x04;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            DiskLogStore::open(dir.path(), SyncPolicy::EveryAppend),
            Err(DiskStoreError::Corrupt { .. })
        ));
    }
}
