//! The openraft state machine of one replica: sessions + the hosted app.
//!
//! A durable replica's snapshots are also written to its [`DiskLogStore`] (fsynced before
//! openraft may purge the log behind them), and a replica that opens a store holding one
//! starts from it: openraft then re-applies the committed log after it.

use crate::disk_store::DiskLogStore;
use crate::session::{SessionCheck, Sessions};
use crate::snapshot_file::{self, StateBytes};
use crate::types::{BatchReply, CommandReply, Entry, NodeId, StorageError, TypeConfig};
use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};
use stator_api::app::{AppError, SnapshotFinish, StateMachine};
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Most bytes of app values one release pass copies out of an older snapshot file (see
/// [`ReplicaStateMachine::release_shared_in_background`]) while it holds the state
/// machine's lock: about 3 ms of copying and page faults at 4 MiB.
const RELEASE_BYTES_PER_PASS: u64 = 4 << 20;
/// Pause between two release passes, so applies and queries get the lock and the
/// runtime in between.
const RELEASE_PASS_PAUSE: Duration = Duration::from_millis(1);

/// Least log a replica holds (bytes of writes applied since its last snapshot) before its size
/// alone calls for a snapshot: below this, snapshots come from the entry policy only.
pub const LOG_BYTES_BEFORE_SNAPSHOT_MIN: u64 = 16 << 20;
/// What one write costs the in-memory log beyond its payload bytes (its `Write` record
/// and the payload's allocation), counted in the log bytes of [`snapshot_due_by_bytes`].
pub const LOG_BYTES_PER_WRITE: u64 = 64;

/// Whether a replica whose log holds `log_bytes` since its last snapshot, for an app
/// state of `state_bytes`, should take a snapshot now: once the log is as large as the
/// state it would replace (Redis's `auto-aof-rewrite-percentage 100`), and at least
/// [`LOG_BYTES_BEFORE_SNAPSHOT_MIN`]. The entry policy (`snapshot_every_entries`) still
/// applies too; this one bounds the log's memory when entries are large, where 20,000
/// entries of 8 KiB batches would be 160 MiB per replica.
pub fn snapshot_due_by_bytes(log_bytes: u64, state_bytes: u64) -> bool {
    log_bytes >= state_bytes.max(LOG_BYTES_BEFORE_SNAPSHOT_MIN)
}

/// What a snapshot carries besides openraft's metadata. The app's bytes are written as
/// one byte string (see [`crate::byte_string`]): 64 MiB of state encode as one copy.
#[derive(Serialize)]
struct SnapshotBody<'a> {
    sessions: &'a Sessions,
    #[serde(serialize_with = "crate::byte_string::serialize")]
    app: &'a [u8],
}

/// [`SnapshotBody`] decoded without copying the app's bytes (the same postcard encoding:
/// a byte vector and a byte slice are both a length and the bytes): a restore then hands
/// the app a slice of the snapshot it already holds instead of a second copy of the
/// whole state.
#[derive(Deserialize)]
struct SnapshotBodyRef<'a> {
    sessions: Sessions,
    #[serde(borrow)]
    app: &'a [u8],
}

struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    /// Shared, so that handing a copy to openraft can happen off the lock and off the
    /// runtime (see [`copy_off_runtime`]); mapped from its file when the replica reopened
    /// its store (page cache, not a second copy of the state in this process).
    data: Arc<StateBytes>,
}

/// Copies `data` into a vector openraft can own, on a blocking-pool thread: a 64 MiB
/// memcpy would otherwise hold the replica's runtime (a single thread in an agent's
/// benchmark host, and every Raft task of the host shares it) for tens of milliseconds.
async fn copy_off_runtime(data: Arc<StateBytes>) -> Vec<u8> {
    tokio::task::spawn_blocking(move || data.to_vec())
        .await
        .expect("copying a snapshot panicked")
}

/// A received snapshot's body, borrowing its app bytes; the error is openraft's
/// snapshot read error (boxed: it is large).
fn decode_snapshot_body<'a>(
    data: &'a [u8],
    meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
) -> Result<SnapshotBodyRef<'a>, Box<StorageError>> {
    postcard::from_bytes(data).map_err(|e| {
        Box::new(
            StorageIOError::read_snapshot(
                Some(meta.signature()),
                &std::io::Error::other(e.to_string()),
            )
            .into(),
        )
    })
}

/// Finishes the app's snapshot and encodes the body, on a blocking-pool thread.
async fn encode_body(sessions: Sessions, app: SnapshotFinish) -> Result<Vec<u8>, postcard::Error> {
    let encode = move || {
        let app = app();
        postcard::to_allocvec(&SnapshotBody {
            sessions: &sessions,
            app: &app,
        })
    };
    tokio::task::spawn_blocking(encode)
        .await
        .expect("encoding a snapshot panicked")
}

pub(crate) struct SmInner {
    app: Box<dyn StateMachine>,
    sessions: Sessions,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    snapshot: Option<StoredSnapshot>,
}

/// Shared handle: openraft owns one clone (applies entries), the host another (queries).
#[derive(Clone)]
pub struct ReplicaStateMachine {
    inner: Arc<Mutex<SmInner>>,
    snapshot_counter: Arc<AtomicU64>,
    state_bytes: Arc<AtomicU64>,
    /// Bytes of writes applied since the app's state was last taken for a snapshot or
    /// replaced by one (payload plus [`LOG_BYTES_PER_WRITE`] each): what the log holds
    /// that a snapshot would let go of (see [`snapshot_due_by_bytes`]).
    log_bytes: Arc<AtomicU64>,
    /// Snapshot builds under way (see [`ReplicaStateMachine::building_snapshot`]).
    building: Arc<AtomicU64>,
    /// Time spent applying entries, in microseconds (the restart profile reads it around
    /// openraft's start, which re-applies the committed log).
    apply_us: Arc<AtomicU64>,
    /// When the snapshot being received began (the install's log reports the transfer).
    receiving_since: Arc<std::sync::Mutex<Option<Instant>>>,
    /// Where snapshots are persisted (durable replicas).
    store: Option<DiskLogStore>,
}

/// A duration in milliseconds, for the snapshot logs.
fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn app_error(e: AppError) -> StorageError {
    StorageIOError::write_state_machine(&std::io::Error::other(e.to_string())).into()
}

impl ReplicaStateMachine {
    /// Wraps an empty app.
    pub fn new(app: Box<dyn StateMachine>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(SmInner {
                app,
                sessions: Sessions::default(),
                last_applied: None,
                membership: StoredMembership::default(),
                snapshot: None,
            })),
            snapshot_counter: Arc::new(AtomicU64::new(0)),
            state_bytes: Arc::new(AtomicU64::new(0)),
            log_bytes: Arc::new(AtomicU64::new(0)),
            building: Arc::new(AtomicU64::new(0)),
            apply_us: Arc::new(AtomicU64::new(0)),
            receiving_since: Arc::default(),
            store: None,
        }
    }

    /// Wraps `app` for a durable replica: snapshots go to `store`, and the snapshot the
    /// store holds (if any) is restored into `app` first.
    pub async fn durable(
        app: Box<dyn StateMachine>,
        store: DiskLogStore,
    ) -> Result<Self, AppError> {
        let mut machine = Self::new(app);
        if let Some((meta, data)) = store.take_snapshot_at_open() {
            let started = Instant::now();
            let body: SnapshotBodyRef<'_> = postcard::from_bytes(&data).map_err(|e| {
                AppError::BadSnapshot(format!(
                    "snapshot {} in {} does not decode: {e}",
                    meta.snapshot_id,
                    store.dir().display()
                ))
            })?;
            let decoded = Instant::now();
            let mut inner = machine.inner.lock().await;
            // The app may keep slices of the mapped file (checked by the store's open).
            inner
                .app
                .restore_shared(snapshot_file::share(&data, body.app))
                .await?;
            let restored = Instant::now();
            inner.sessions = body.sessions;
            inner.last_applied = meta.last_log_id;
            inner.membership = meta.last_membership.clone();
            machine
                .state_bytes
                .store(inner.app.state_bytes(), Ordering::Relaxed);
            tracing::info!(
                snapshot = %meta.snapshot_id,
                bytes = data.len(),
                decode_ms = ms(decoded - started),
                restore_ms = ms(restored - decoded),
                "snapshot restored at open"
            );
            inner.snapshot = Some(StoredSnapshot { meta, data });
        }
        machine.store = Some(store);
        Ok(machine)
    }

    /// Answers a read-only request against the applied state.
    pub async fn query(&self, time_ms: u64, request: &[u8]) -> Result<Vec<u8>, AppError> {
        let mut inner = self.inner.lock().await;
        inner.app.query(time_ms, request).await
    }

    /// Index of the last applied entry.
    pub async fn last_applied_index(&self) -> u64 {
        self.inner.lock().await.last_applied.map_or(0, |l| l.index)
    }

    /// Time spent applying entries so far, microseconds.
    pub fn apply_us(&self) -> u64 {
        self.apply_us.load(Ordering::Relaxed)
    }

    /// Bytes of app state, as last reported by the app.
    pub fn state_bytes(&self) -> u64 {
        self.state_bytes.load(Ordering::Relaxed)
    }

    /// Bytes of writes applied since the last snapshot, payload plus
    /// [`LOG_BYTES_PER_WRITE`] each.
    pub fn log_bytes(&self) -> u64 {
        self.log_bytes.load(Ordering::Relaxed)
    }

    /// Whether a snapshot is being built (openraft runs the build as a task of its own,
    /// which holds a durable replica's store until it ends).
    pub fn building_snapshot(&self) -> bool {
        self.building.load(Ordering::Relaxed) > 0
    }

    /// Whether the log behind the last snapshot has grown large enough to take another
    /// ([`snapshot_due_by_bytes`]).
    pub fn snapshot_due(&self) -> bool {
        snapshot_due_by_bytes(self.log_bytes(), self.state_bytes())
    }

    /// Has the app copy, in bounded passes on a task of its own, whatever it still holds
    /// as slices of an older snapshot file (`StateMachine::release_shared`), so a newer
    /// snapshot's save frees the older file's disk space (renamed over, it lives on while
    /// mapped) within seconds instead of whenever its values happen to change.
    fn release_shared_in_background(&self) {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut passes = 0u64;
            loop {
                passes += 1;
                if inner
                    .lock()
                    .await
                    .app
                    .release_shared(RELEASE_BYTES_PER_PASS)
                {
                    break;
                }
                tokio::time::sleep(RELEASE_PASS_PAUSE).await;
            }
            if passes > 1 {
                tracing::info!(
                    passes,
                    total_ms = ms(started.elapsed()),
                    "values of an older snapshot file copied; its disk space is freed"
                );
            }
        });
    }

    /// The app's full snapshot bytes (for tests comparing replicas).
    pub async fn app_snapshot(&self) -> Result<Vec<u8>, AppError> {
        self.inner.lock().await.app.snapshot().await
    }
}

impl RaftSnapshotBuilder<TypeConfig> for ReplicaStateMachine {
    /// The app's state is taken under the lock (the app must not change while it
    /// serialises; `StateMachine::snapshot_in_parts` keeps that part short); the rest of
    /// the app's snapshot, the encoding and a durable replica's disk write run with the
    /// lock released, so writes keep applying meanwhile. A snapshot installed in between
    /// (a newer one, from a leader) is neither replaced nor overwritten on disk by this
    /// older one (the store checks the file's log id under its own write mutex).
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        self.building.fetch_add(1, Ordering::Relaxed);
        let built = self.build().await;
        self.building.fetch_sub(1, Ordering::Relaxed);
        built
    }
}

impl ReplicaStateMachine {
    /// [`RaftSnapshotBuilder::build_snapshot`], counted in [`Self::building`].
    async fn build(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let started = Instant::now();
        let mut inner = self.inner.lock().await;
        let locked = Instant::now();
        // Only the part of the app's snapshot that needs the app runs under the lock.
        let app = inner.app.snapshot_in_parts().await.map_err(app_error)?;
        // Under the lock: every write applied from here on is one this snapshot lacks.
        self.log_bytes.store(0, Ordering::Relaxed);
        let app_done = Instant::now();
        let sessions = inner.sessions.clone();
        let n = self.snapshot_counter.fetch_add(1, Ordering::Relaxed) + 1;
        let snapshot_id = match inner.last_applied {
            Some(l) => format!("{}-{}-{n}", l.leader_id, l.index),
            None => format!("none-{n}"),
        };
        let meta = SnapshotMeta {
            last_log_id: inner.last_applied,
            last_membership: inner.membership.clone(),
            snapshot_id,
        };
        // The lock is released while the body is encoded (tens of MiB at a migration).
        drop(inner);
        let data = encode_body(sessions, app).await.map_err(|e| {
            StorageIOError::read_state_machine(&std::io::Error::other(e.to_string()))
        })?;
        let encoded = Instant::now();
        let data = Arc::new(StateBytes::from(data));
        // A durable replica's file is written without the state machine's lock (a large
        // state's write and fsync held every write of the partition for its length); the
        // store refuses to replace a newer snapshot on disk (one installed meanwhile).
        let held = match &self.store {
            Some(store) => {
                store
                    .save_snapshot_unless_older(&meta, data.clone())
                    .await?
            }
            None => Some(data.clone()),
        };
        let saved = Instant::now();
        let mut inner = self.inner.lock().await;
        let newer_held = inner
            .snapshot
            .as_ref()
            .is_some_and(|s| s.meta.last_log_id > meta.last_log_id);
        if let (false, Some(held)) = (newer_held, held) {
            if self.store.is_some() {
                // Kept as the file's mapping; the app lets go of the older file's.
                self.release_shared_in_background();
            }
            inner.snapshot = Some(StoredSnapshot {
                meta: meta.clone(),
                data: held,
            });
        }
        drop(inner);
        // The vendored openraft reads only the meta of a built snapshot (its two callers:
        // `core/sm/worker.rs` and `storage/helper.rs`, both `.meta`), and asks
        // `get_current_snapshot` for the bytes when a follower needs them. Handing them
        // over here cost a memory replica a copy of its whole state per build (its own
        // copy is held for followers), so openraft gets an empty body; revisit on an
        // openraft upgrade.
        let bytes = data.len();
        drop(data);
        tracing::info!(
            snapshot = %meta.snapshot_id,
            bytes,
            lock_wait_ms = ms(locked - started),
            app_ms = ms(app_done - locked),
            encode_ms = ms(encoded - app_done),
            save_ms = ms(saved - encoded),
            total_ms = ms(started.elapsed()),
            "snapshot built"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(Vec::new())),
        })
    }
}

impl RaftStateMachine<TypeConfig> for ReplicaStateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<
        (
            Option<LogId<NodeId>>,
            StoredMembership<NodeId, openraft::BasicNode>,
        ),
        StorageError,
    > {
        let inner = self.inner.lock().await;
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchReply>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let started = Instant::now();
        let mut guard = self.inner.lock().await;
        let inner = &mut *guard;
        let mut replies = Vec::new();
        let mut log_bytes = 0u64;
        for entry in entries {
            inner.last_applied = Some(entry.log_id);
            let reply = match entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Membership(m) => {
                    inner.membership = StoredMembership::new(Some(entry.log_id), m);
                    Vec::new()
                }
                EntryPayload::Normal(cmd) => {
                    let index = entry.log_id.index;
                    let mut batch = Vec::with_capacity(cmd.writes.len());
                    log_bytes += cmd
                        .writes
                        .iter()
                        .map(|w| w.payload.len() as u64 + LOG_BYTES_PER_WRITE)
                        .sum::<u64>();
                    // In order, each with its own session check: a batch applies exactly
                    // as the same writes would one entry each (they share the index).
                    for (position, write) in cmd.writes.iter().enumerate() {
                        let reply = match inner.sessions.check(write.client_id, write.seq) {
                            SessionCheck::Duplicate(reply) => reply,
                            SessionCheck::Apply => {
                                // A machine that need not wait answers at once (no
                                // boxed future per write); others are awaited.
                                let now = inner.app.apply_now(index, cmd.time_ms, &write.payload);
                                let out = match now {
                                    Some(out) => out,
                                    None => {
                                        inner.app.apply(index, cmd.time_ms, &write.payload).await
                                    }
                                }
                                .map_err(app_error)?;
                                let reply = CommandReply::Applied(out);
                                inner.sessions.record(
                                    write.client_id,
                                    write.seq,
                                    (index, position as u32),
                                    &reply,
                                );
                                reply
                            }
                        };
                        batch.push(reply);
                    }
                    batch
                }
            };
            replies.push(reply);
        }
        self.state_bytes
            .store(inner.app.state_bytes(), Ordering::Relaxed);
        self.log_bytes.fetch_add(log_bytes, Ordering::Relaxed);
        self.apply_us
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        *self.receiving_since.lock().expect("receiving mutex") = Some(Instant::now());
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let started = Instant::now();
        let receive_ms = self
            .receiving_since
            .lock()
            .expect("receiving mutex")
            .take()
            .map_or(0.0, |since| ms(started - since));
        let received = Arc::new(StateBytes::from(snapshot.into_inner()));
        // Checked before it is saved; a durable replica then decodes (and restores from)
        // the file it saved, mapped and checked: the same code as at open, and the
        // received buffer is freed.
        decode_snapshot_body(&received, meta).map_err(|e| *e)?;
        let decoded = Instant::now();
        let data = match &self.store {
            Some(store) => store.save_snapshot(meta, received).await?,
            None => received,
        };
        let saved = Instant::now();
        let body = decode_snapshot_body(&data, meta).map_err(|e| *e)?;
        let mut inner = self.inner.lock().await;
        let restored = match self.store {
            Some(_) => {
                inner
                    .app
                    .restore_shared(snapshot_file::share(&data, body.app))
                    .await
            }
            // A memory replica's app owns its values (no file to map).
            None => inner.app.restore(body.app).await,
        };
        restored.map_err(app_error)?;
        let restored = Instant::now();
        inner.sessions = body.sessions;
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.snapshot = Some(StoredSnapshot {
            meta: meta.clone(),
            data,
        });
        self.log_bytes.store(0, Ordering::Relaxed);
        self.state_bytes
            .store(inner.app.state_bytes(), Ordering::Relaxed);
        tracing::info!(
            snapshot = %meta.snapshot_id,
            bytes = inner.snapshot.as_ref().map_or(0, |s| s.data.len()),
            receive_ms,
            decode_ms = ms(decoded - started),
            save_ms = ms(saved - decoded),
            restore_ms = ms(restored - saved),
            install_ms = ms(started.elapsed()),
            "snapshot installed"
        );
        Ok(())
    }

    /// The held snapshot's metadata, without copying its bytes: openraft's start asks for
    /// nothing else (the workspace's openraft patch), and a durable replica reopened at
    /// 1 GiB of state would otherwise copy its whole snapshot to answer.
    async fn get_current_snapshot_meta(
        &mut self,
    ) -> Result<Option<SnapshotMeta<NodeId, openraft::BasicNode>>, StorageError> {
        let inner = self.inner.lock().await;
        Ok(inner.snapshot.as_ref().map(|s| s.meta.clone()))
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let started = Instant::now();
        let stored = {
            let inner = self.inner.lock().await;
            inner
                .snapshot
                .as_ref()
                .map(|s| (s.meta.clone(), s.data.clone()))
        };
        let Some((meta, data)) = stored else {
            return Ok(None);
        };
        // The copy is made after the lock is released and off the runtime.
        let bytes = copy_off_runtime(data).await;
        tracing::info!(
            snapshot = %meta.snapshot_id,
            bytes = bytes.len(),
            copy_ms = ms(started.elapsed()),
            "snapshot handed out"
        );
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk_store::SyncPolicy;
    use async_trait::async_trait;
    use std::path::Path;
    use std::sync::atomic::AtomicBool;

    /// What the test app saw, shared with the test.
    #[derive(Default)]
    struct Seen {
        restored_shared: AtomicBool,
        released: AtomicBool,
    }

    /// Holds its state as the shared bytes it was restored from, and lets go of them
    /// after a few release passes.
    struct SharingApp {
        state: Vec<u8>,
        shared: Option<bytes::Bytes>,
        passes: u32,
        seen: Arc<Seen>,
    }

    impl SharingApp {
        fn new(seen: Arc<Seen>) -> SharingApp {
            SharingApp {
                state: Vec::new(),
                shared: None,
                passes: 0,
                seen,
            }
        }
    }

    #[async_trait]
    impl StateMachine for SharingApp {
        async fn apply(&mut self, _: u64, _: u64, _: &[u8]) -> Result<Vec<u8>, AppError> {
            Ok(Vec::new())
        }
        async fn query(&mut self, _: u64, _: &[u8]) -> Result<Vec<u8>, AppError> {
            Ok(Vec::new())
        }
        async fn snapshot(&mut self) -> Result<Vec<u8>, AppError> {
            Ok(match &self.shared {
                Some(shared) => shared.to_vec(),
                None => self.state.clone(),
            })
        }
        async fn restore(&mut self, snapshot: &[u8]) -> Result<(), AppError> {
            (self.state, self.shared) = (snapshot.to_vec(), None);
            Ok(())
        }
        async fn restore_shared(&mut self, snapshot: bytes::Bytes) -> Result<(), AppError> {
            self.seen.restored_shared.store(true, Ordering::SeqCst);
            self.shared = Some(snapshot);
            Ok(())
        }
        fn release_shared(&mut self, _max_bytes: u64) -> bool {
            let Some(shared) = &self.shared else {
                return true;
            };
            self.passes += 1;
            if self.passes < 3 {
                return false;
            }
            self.state = shared.to_vec();
            self.shared = None;
            self.seen.released.store(true, Ordering::SeqCst);
            true
        }
        fn state_bytes(&self) -> u64 {
            0
        }
    }

    fn meta(index: u64, id: &str) -> SnapshotMeta<NodeId, openraft::BasicNode> {
        SnapshotMeta {
            last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), index)),
            last_membership: StoredMembership::default(),
            snapshot_id: id.into(),
        }
    }

    fn body(app: &[u8]) -> Vec<u8> {
        postcard::to_allocvec(&SnapshotBody {
            sessions: &Sessions::default(),
            app,
        })
        .unwrap()
    }

    /// Mappings of this process of `dir`'s snapshot file: (live, deleted).
    fn mappings(dir: &Path) -> (usize, usize) {
        let file = snapshot_file::path(dir).display().to_string();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let lines: Vec<&str> = maps.lines().filter(|l| l.contains(&file)).collect();
        let deleted = lines.iter().filter(|l| l.ends_with("(deleted)")).count();
        (lines.len() - deleted, deleted)
    }

    #[tokio::test]
    async fn the_app_restores_from_the_mapped_file_and_lets_an_older_file_go() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = DiskLogStore::open(dir.path(), SyncPolicy::EveryAppend).unwrap();
            let saved = store
                .save_snapshot(&meta(10, "first"), Arc::new(body(b"state one").into()))
                .await
                .unwrap();
            assert!(matches!(*saved, StateBytes::Mapped(_)), "kept mapped");
        }
        let seen = Arc::new(Seen::default());
        let app = SharingApp::new(seen.clone());
        let store = DiskLogStore::open(dir.path(), SyncPolicy::EveryAppend).unwrap();
        let mut machine = ReplicaStateMachine::durable(Box::new(app), store)
            .await
            .unwrap();
        assert!(seen.restored_shared.load(Ordering::SeqCst));
        assert_eq!(machine.app_snapshot().await.unwrap(), b"state one");
        assert_eq!(mappings(dir.path()), (1, 0), "the file is mapped once");

        // A newer snapshot replaces the file; the app copies what it held of the old one
        // in the background, and the old file (renamed over) is unmapped.
        machine.build_snapshot().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !seen.released.load(Ordering::SeqCst) || mappings(dir.path()).1 > 0 {
            assert!(
                Instant::now() < deadline,
                "the older file is still mapped: {:?}",
                mappings(dir.path())
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(machine.app_snapshot().await.unwrap(), b"state one");
        assert_eq!(mappings(dir.path()), (1, 0), "only the new file is mapped");

        // A snapshot received from a leader is saved and the app restored from the file.
        seen.restored_shared.store(false, Ordering::SeqCst);
        machine
            .install_snapshot(&meta(20, "received"), Box::new(Cursor::new(body(b"two"))))
            .await
            .unwrap();
        assert!(seen.restored_shared.load(Ordering::SeqCst));
        assert_eq!(machine.app_snapshot().await.unwrap(), b"two");
        let inner = machine.inner.lock().await;
        let held = &inner.snapshot.as_ref().unwrap().data;
        assert!(matches!(**held, StateBytes::Mapped(_)));
    }

    #[tokio::test]
    async fn a_memory_replica_restores_owned_bytes() {
        let seen = Arc::new(Seen::default());
        let app = SharingApp::new(seen.clone());
        let mut machine = ReplicaStateMachine::new(Box::new(app));
        machine
            .install_snapshot(&meta(5, "received"), Box::new(Cursor::new(body(b"mem"))))
            .await
            .unwrap();
        assert!(!seen.restored_shared.load(Ordering::SeqCst));
        assert_eq!(machine.app_snapshot().await.unwrap(), b"mem");
    }

    #[test]
    fn a_snapshot_is_due_once_the_log_outgrows_the_state_and_the_floor() {
        let min = LOG_BYTES_BEFORE_SNAPSHOT_MIN;
        assert!(!snapshot_due_by_bytes(0, 0));
        assert!(!snapshot_due_by_bytes(min - 1, 0), "below the floor");
        assert!(snapshot_due_by_bytes(min, 0));
        assert!(
            snapshot_due_by_bytes(min, min / 2),
            "a small state: the floor"
        );
        assert!(
            !snapshot_due_by_bytes(2 * min, 3 * min),
            "a large state: its size"
        );
        assert!(snapshot_due_by_bytes(3 * min, 3 * min));
    }

    fn entry(index: u64, payloads: &[usize]) -> Entry {
        let writes: Vec<crate::types::Write> = payloads
            .iter()
            .enumerate()
            .map(|(i, len)| crate::types::Write {
                client_id: 0,
                seq: i as u64,
                payload: vec![7; *len],
            })
            .collect();
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(crate::types::Command {
                time_ms: 0,
                writes: writes.into(),
            }),
        }
    }

    #[tokio::test]
    async fn applied_writes_count_toward_the_log_until_a_snapshot_takes_them() {
        let app = SharingApp::new(Arc::new(Seen::default()));
        let mut machine = ReplicaStateMachine::new(Box::new(app));
        machine
            .apply([entry(1, &[100, 28]), entry(2, &[0])])
            .await
            .unwrap();
        let per = LOG_BYTES_PER_WRITE;
        assert_eq!(machine.log_bytes(), 128 + 3 * per);
        assert!(!machine.snapshot_due());
        let big = LOG_BYTES_BEFORE_SNAPSHOT_MIN as usize;
        machine.apply([entry(3, &[big])]).await.unwrap();
        assert!(machine.snapshot_due(), "past the floor, state 0");
        machine.build_snapshot().await.unwrap();
        assert_eq!(machine.log_bytes(), 0, "a snapshot takes what was applied");
        machine.apply([entry(4, &[10])]).await.unwrap();
        assert_eq!(machine.log_bytes(), 10 + per);
        machine
            .install_snapshot(&meta(9, "received"), Box::new(Cursor::new(body(b"s"))))
            .await
            .unwrap();
        assert_eq!(
            machine.log_bytes(),
            0,
            "an installed snapshot replaces the log"
        );
    }
}
