//! Builders for tests (cargo feature `testing`; crates turn it on from their
//! dev-dependencies, so it stays out of release builds).
//!
//! A test states only what it is about and takes the rest from here, with struct
//! update syntax:
//!
//! ```
//! # use stator_api::{agent::ReplicaStatus, ids::GroupId, testing};
//! let status = ReplicaStatus {
//!     term: 3,
//!     ..testing::leader_status(GroupId::new(1, 0), "kv", 0, 7, &[7, 8, 9])
//! };
//! assert_eq!(status.leader, Some(7));
//! ```

use crate::agent::{ReplicaRole, ReplicaStatus};
use crate::ids::{GroupId, NodeId};

/// A follower replica of `service`'s `partition` (its group `group`) that knows no
/// leader and no members yet: term 1, nothing applied, stored or served, no error.
pub fn replica_status(group: GroupId, service: &str, partition: u32) -> ReplicaStatus {
    ReplicaStatus {
        group,
        service: service.to_string(),
        partition,
        role: ReplicaRole::Follower,
        leader: None,
        term: 1,
        voters: Vec::new(),
        learners: Vec::new(),
        applied_index: 0,
        state_bytes: 0,
        ops_per_sec: 0.0,
        p99_us: 0,
        error: None,
        disk_bytes: 0,
        forgotten: false,
    }
}

/// The replica of node `leader` leading the group with `voters` (term 1, applied 1).
pub fn leader_status(
    group: GroupId,
    service: &str,
    partition: u32,
    leader: NodeId,
    voters: &[NodeId],
) -> ReplicaStatus {
    ReplicaStatus {
        role: ReplicaRole::Leader,
        leader: Some(leader),
        voters: voters.to_vec(),
        applied_index: 1,
        ..replica_status(group, service, partition)
    }
}
