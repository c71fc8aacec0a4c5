//! openraft type configuration and the messages a group logs and answers.

use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::sync::Arc;

pub use stator_api::ids::{GroupId, NodeId};

/// One client write inside a logged [`Command`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write {
    /// Who sent it; 0 means "no session" (no retry deduplication).
    pub client_id: u64,
    /// The client's sequence number for exactly-once retries (increasing per client).
    pub seq: u64,
    /// Opaque to the replication layer: what the app's `apply` receives. One byte
    /// string on the wire and on disk (see [`crate::byte_string`]).
    #[serde(with = "crate::byte_string")]
    pub payload: Vec<u8>,
}

/// One log entry's worth of client writes: every write that waited at the leader when
/// the entry was proposed (see `host`'s write batching), applied in order, each with its
/// own session check and its own reply. The leader stamps `time_ms` when it proposes the
/// entry, so expiry and other time-dependent logic is the same on every replica.
///
/// The writes are shared: openraft clones an entry each time it reads it from the log
/// (once per follower it replicates to, once more to apply it), and a clone is then one
/// reference count instead of a copy of every write's payload. On the wire and on disk
/// they are the same sequence a `Vec<Write>` writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The leader's wall clock when it proposed the entry, in ms since the Unix epoch.
    pub time_ms: u64,
    /// The writes, in the order they are applied; never empty. (serde's `rc` feature
    /// writes an `Arc<[Write]>` as the sequence it holds.)
    pub writes: Arc<[Write]>,
}

/// The reply to one applied [`Write`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandReply {
    /// What the app answered.
    Applied(Vec<u8>),
    /// The client reused a sequence number older than its last one; nothing was applied.
    StaleSequence {
        /// The newest sequence number this group has seen from the client.
        last_seq: u64,
    },
    /// The app failed; the message says why.
    AppFailed(String),
}

openraft::declare_raft_types!(
    /// The openraft type configuration of every stator partition group.
    pub TypeConfig:
        D = Command,
        R = BatchReply,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The replies to one entry's writes, in order (empty for Raft's own entries).
pub type BatchReply = Vec<CommandReply>;

/// A partition group's Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// Storage errors, as openraft wants them.
pub type StorageError = openraft::StorageError<NodeId>;

/// How a client request is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestKind {
    /// Logged, committed on a majority, applied everywhere; the leader answers.
    Write,
    /// Linearizable read: the leader confirms it still leads (read index), waits until
    /// it has applied that far, then queries its state machine.
    Read,
    /// Read whatever this replica has applied, leader or not. May be stale.
    StaleRead,
}

/// A client's request to a partition group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRequest {
    /// The client's id for exactly-once writes (0: no deduplication).
    pub client_id: u64,
    /// The client's sequence number; a retry reuses it.
    pub seq: u64,
    /// Write, linearizable read or stale read.
    pub kind: RequestKind,
    /// What the app receives (one byte string on the wire, see [`crate::byte_string`]).
    #[serde(with = "crate::byte_string")]
    pub payload: Vec<u8>,
}

/// A group's answer to a [`ClientRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientReply {
    /// Served; the app's reply.
    Ok(Vec<u8>),
    /// This replica does not lead; retry at the hinted leader if any.
    NotLeader {
        /// The leader this replica knows of.
        leader_id: Option<NodeId>,
        /// Its transport address.
        leader_addr: Option<String>,
    },
    /// This host has no replica of the group.
    NoGroup,
    /// The sequence number was older than the client's last one: nothing applied.
    StaleSequence {
        /// The newest sequence number the group saw from this client.
        last_seq: u64,
    },
    /// The group could not serve it now (no quorum, shutting down, app failed); retry
    /// later. A write answered this way may or may not have been applied.
    Unavailable(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The encoding before the writes were shared: logs written by older versions and
    /// peers running them read the same bytes.
    #[derive(Serialize)]
    struct CommandWithOwnedWrites {
        time_ms: u64,
        writes: Vec<Write>,
    }

    #[test]
    fn shared_writes_encode_as_the_owned_vector_did_and_read_back() {
        let writes: Vec<Write> = (0..3u64)
            .map(|i| Write {
                client_id: i + 1,
                seq: i * 7,
                payload: vec![i as u8; 100 + i as usize],
            })
            .collect();
        let owned = postcard::to_allocvec(&CommandWithOwnedWrites {
            time_ms: 1_234,
            writes: writes.clone(),
        })
        .unwrap();
        let command = Command {
            time_ms: 1_234,
            writes: writes.into(),
        };
        assert_eq!(postcard::to_allocvec(&command).unwrap(), owned);
        let back: Command = postcard::from_bytes(&owned).unwrap();
        assert_eq!(back, command);
        // A clone (openraft's, each time it reads the entry) shares the writes.
        assert!(Arc::ptr_eq(&command.clone().writes, &command.writes));
    }
}
