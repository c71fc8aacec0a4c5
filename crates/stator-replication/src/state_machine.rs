//! The openraft state machine of one replica: sessions + the hosted app.
//!
//! A durable replica's snapshots are also written to its [`DiskLogStore`] (fsynced before
//! openraft may purge the log behind them), and a replica that opens a store holding one
//! starts from it: openraft then re-applies the committed log after it.

use crate::disk_store::DiskLogStore;
use crate::session::{SessionCheck, Sessions};
use crate::snapshot_file::StateBytes;
use crate::types::{BatchReply, CommandReply, Entry, NodeId, StorageError, TypeConfig};
use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};
use stator_api::app::{AppError, StateMachine};
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Mutex;

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

/// Encodes a snapshot body on a blocking-pool thread.
async fn encode_body(sessions: Sessions, app: Vec<u8>) -> Result<Vec<u8>, postcard::Error> {
    let encode = move || {
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
            inner.app.restore(body.app).await?;
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

    /// The app's full snapshot bytes (for tests comparing replicas).
    pub async fn app_snapshot(&self) -> Result<Vec<u8>, AppError> {
        self.inner.lock().await.app.snapshot().await
    }
}

impl RaftSnapshotBuilder<TypeConfig> for ReplicaStateMachine {
    /// The app's state is taken under the lock (the app must not change while it
    /// serialises); the encoding and the copy for openraft run with the lock released,
    /// so writes keep applying meanwhile (a durable replica's disk write takes the lock
    /// again, as before). A snapshot installed in between (a newer one, from a leader)
    /// is neither replaced nor overwritten on disk by this older one.
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let started = Instant::now();
        let mut inner = self.inner.lock().await;
        let locked = Instant::now();
        let app = inner.app.snapshot().await.map_err(app_error)?;
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
        let mut inner = self.inner.lock().await;
        let newer_held = inner
            .snapshot
            .as_ref()
            .is_some_and(|s| s.meta.last_log_id > meta.last_log_id);
        let data = Arc::new(StateBytes::from(data));
        if !newer_held {
            if let Some(store) = &self.store {
                // On disk before openraft purges the log it covers; under the lock, so
                // an older snapshot never lands on disk after a newer one.
                store.save_snapshot(&meta, data.clone()).await?;
            }
            inner.snapshot = Some(StoredSnapshot {
                meta: meta.clone(),
                data: data.clone(),
            });
        }
        drop(inner);
        // openraft 0.9 keeps only the meta of a built snapshot (core/sm/worker.rs); the
        // bytes are still handed over whole, as the trait promises.
        let bytes = copy_off_runtime(data).await;
        tracing::info!(
            snapshot = %meta.snapshot_id,
            bytes = bytes.len(),
            lock_wait_ms = ms(locked - started),
            app_ms = ms(app_done - locked),
            encode_ms = ms(encoded - app_done),
            total_ms = ms(started.elapsed()),
            "snapshot built"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
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
                    // In order, each with its own session check: a batch applies exactly
                    // as the same writes would one entry each (they share the index).
                    for (position, write) in cmd.writes.iter().enumerate() {
                        let reply = match inner.sessions.check(write.client_id, write.seq) {
                            SessionCheck::Duplicate(reply) => reply,
                            SessionCheck::Apply => {
                                let out = inner
                                    .app
                                    .apply(index, cmd.time_ms, &write.payload)
                                    .await
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
        let data = Arc::new(StateBytes::from(snapshot.into_inner()));
        let body: SnapshotBodyRef<'_> = postcard::from_bytes(&data).map_err(|e| {
            StorageIOError::read_snapshot(
                Some(meta.signature()),
                &std::io::Error::other(e.to_string()),
            )
        })?;
        let decoded = Instant::now();
        if let Some(store) = &self.store {
            store.save_snapshot(meta, data.clone()).await?;
        }
        let saved = Instant::now();
        let mut inner = self.inner.lock().await;
        inner.app.restore(body.app).await.map_err(app_error)?;
        let restored = Instant::now();
        inner.sessions = body.sessions;
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.snapshot = Some(StoredSnapshot {
            meta: meta.clone(),
            data,
        });
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
