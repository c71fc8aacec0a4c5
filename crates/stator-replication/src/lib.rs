//! Replicated partitions: each partition of a service is one openraft group whose
//! members live on different hosts; only the leader answers.
//!
//! # Layout
//! - [`types`]: the openraft type configuration, logged commands (a batch of client
//!   writes per entry) and client messages.
//! - [`byte_string`]: byte vectors encoded as one byte string (snapshots, logged
//!   writes), the same bytes as serde's per-byte sequence.
//! - [`log_store`]: the in-memory Raft log and vote (`durability = "memory"`).
//! - [`disk_store`]: the on-disk log, vote and snapshot of a durable replica
//!   (checksummed records, group commit, fsync per batch or periodic; the vote in a
//!   two-slot file; a store written in redb before session 10 is migrated).
//! - [`log_file`]: a durable replica's Raft log as preallocated, zero-filled segment
//!   files: records with a CRC-32 appended with `pwrite`, one `fdatasync` per batch; a
//!   torn tail cut at open, any other damage refused.
//! - [`snapshot_file`]: a durable replica's snapshot as a file of its own (written
//!   whole, fsynced and renamed, never in place; mapped at open, its checksum checked
//!   on a thread of its own while the log is read).
//! - [`state_machine`]: applies committed entries to the hosted app, with snapshots.
//! - [`session`]: exactly-once client sessions, replicated with the state.
//! - [`transport`]: one multiplexed, authenticated, batched TCP connection per peer.
//! - [`tls`]: optional mutual TLS 1.3 under the transport (PEM files, rustls).
//! - [`network`]: openraft's network traits over the transport.
//! - [`pacing`]: learner catch-up pacing: a token bucket per host over the bytes leaders
//!   feed learners far behind, so a move's catch-up does not starve the voters.
//! - [`host`]: many replicas in one process; membership reconcile steps; leadership
//!   transfer (writes held at the old leader's gate go to the successor once it was told
//!   to run, and wait there for its election); client serving, with the writes waiting at a leader proposed as one entry;
//!   a fast election when a leader's host drops its connections.
//! - [`quiesce`]: quiet idle groups: no heartbeats or election timers once idle, one
//!   liveness ping per peer node instead; woken by a request or a busy Raft message, and
//!   a lost node's quiet groups elect new leaders at once, after a pre-vote (a majority
//!   no longer hears a leader); a new group's replicas start quiet, so the member that
//!   bootstraps it is its only candidate. A quiet replica's openraft tick task is parked
//!   (the workspace patches openraft: `vendor/openraft`).
//! - [`read_index`]: linearizable reads under a leader lease, or batched behind one
//!   leadership confirmation when the lease is unsure.
//! - [`client`]: calling a group from outside, following leader hints, with retries;
//!   calls waiting for the same host share one frame.
//! - [`stats`]: per-replica throughput and latency windows; the node's cumulative
//!   commit-latency histogram.
//! - [`traffic`]: transport bytes sent and received per peer node.
//! - [`timeline`]: one write's path timestamped stage by stage (client, leader, follower,
//!   commit, reply), off unless a benchmark turns it on (`stator bench replication
//!   --timeline`).
//! - `testing` (cargo feature `testing`, for tests only; a crate's dev-dependency turns it
//!   on): an in-process cluster with faults (kill, cut, drop, delay) and a register app.

pub mod byte_string;
pub mod client;
pub mod disk_store;
pub mod host;
pub mod log_file;
pub mod log_store;
pub mod network;
pub mod pacing;
pub mod quiesce;
pub mod read_index;
pub mod session;
pub mod snapshot_file;
pub mod state_machine;
pub mod stats;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod timeline;
pub mod tls;
pub mod traffic;
pub mod transport;
pub mod types;

pub use client::{ClientError, ReplicaClient};
pub use host::{
    GroupOptions, GroupStatus, Host, HostConfig, HostError, MembershipStep, ReplicaRole,
    TransferOutcome, SNAPSHOT_CHUNK_BYTES,
};
pub use tls::{TlsConfig, TlsError};
pub use types::{ClientReply, ClientRequest, GroupId, NodeId, RequestKind};
