//! The in-memory Raft log and vote of one replica (`durability = "memory"`).
//!
//! Replication is the durability: a replica that loses its process loses its log, so it
//! must never vote again under the member id it had (see docs/ARCHITECTURE.md,
//! "Identities"). Log compaction (openraft purges entries covered by a snapshot) keeps
//! memory bounded. [`ReplicaLog`] picks this or [`crate::disk_store::DiskLogStore`].

use crate::types::{Entry, NodeId, StorageError, TypeConfig};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogId, LogState, RaftLogReader, Vote};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct LogInner {
    last_purged: Option<LogId<NodeId>>,
    entries: BTreeMap<u64, Entry>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
}

/// In-memory log storage; clones share the same log (the clone is the log reader).
#[derive(Clone, Default)]
pub struct MemLogStore {
    // A std mutex: no await happens while it is held, and every critical section is short.
    inner: Arc<Mutex<LogInner>>,
}

impl MemLogStore {
    /// Number of entries currently held (after compaction).
    pub fn len(&self) -> usize {
        self.inner.lock().expect("log mutex poisoned").entries.len()
    }

    /// Whether the log holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl RaftLogReader<TypeConfig> for MemLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let inner = self.inner.lock().expect("log mutex poisoned");
        Ok(inner.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for MemLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let inner = self.inner.lock().expect("log mutex poisoned");
        let last = inner.entries.values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: last.or(inner.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.inner.lock().expect("log mutex poisoned").vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        Ok(self.inner.lock().expect("log mutex poisoned").vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError> {
        self.inner.lock().expect("log mutex poisoned").committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError> {
        Ok(self.inner.lock().expect("log mutex poisoned").committed)
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
        {
            let mut inner = self.inner.lock().expect("log mutex poisoned");
            for entry in entries {
                inner.entries.insert(entry.log_id.index, entry);
            }
        }
        // Memory is the medium: the entries are "flushed" once they are in the map.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        let mut inner = self.inner.lock().expect("log mutex poisoned");
        inner.entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        let mut inner = self.inner.lock().expect("log mutex poisoned");
        assert!(
            inner.last_purged.is_none_or(|p| p <= log_id),
            "purge must move forward: {:?} then {log_id}",
            inner.last_purged
        );
        inner.last_purged = Some(log_id);
        let keep = inner.entries.split_off(&(log_id.index + 1));
        inner.entries = keep;
        Ok(())
    }
}

/// A replica's log, in memory or on disk (its service's durability).
#[derive(Clone)]
pub enum ReplicaLog {
    /// `durability = "memory"`.
    Memory(MemLogStore),
    /// `durability = "disk"` or `"periodic"`.
    Disk(crate::disk_store::DiskLogStore),
}

impl ReplicaLog {
    /// Entries currently held (after compaction).
    pub fn len(&self) -> usize {
        match self {
            ReplicaLog::Memory(log) => log.len(),
            ReplicaLog::Disk(log) => log.len(),
        }
    }

    /// Whether the log holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes on disk (0 in memory).
    pub fn disk_bytes(&self) -> u64 {
        match self {
            ReplicaLog::Memory(_) => 0,
            ReplicaLog::Disk(log) => log.disk_bytes(),
        }
    }
}
