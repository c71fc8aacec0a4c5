//! Identifiers.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A node (one `stator agent`), numbered by the control plane at registration.
/// Within a partition group each node hosts at most one replica, so the node id is also
/// the replica's Raft member id.
pub type NodeId = u64;

/// One partition's Raft group. The control plane derives it from the service's id and
/// the partition index: `service_id << 16 | partition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupId(pub u64);

/// Most partitions one service may have (the low 16 bits of a [`GroupId`]).
pub const MAX_PARTITIONS_PER_SERVICE: u32 = 1 << 16;

impl GroupId {
    /// The group of partition `partition` of service `service_id`.
    pub fn new(service_id: u64, partition: u32) -> Self {
        assert!(
            partition < MAX_PARTITIONS_PER_SERVICE,
            "partition {partition} out of range"
        );
        GroupId(service_id << 16 | partition as u64)
    }
    /// The service id part.
    pub fn service_id(self) -> u64 {
        self.0 >> 16
    }
    /// The partition index part.
    pub fn partition(self) -> u32 {
        (self.0 & 0xffff) as u32
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.service_id(), self.partition())
    }
}
