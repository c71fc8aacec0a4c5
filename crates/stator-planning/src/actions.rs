//! What a planner asks the runtime (control plane or simulator) to do.

use serde::{Deserialize, Serialize};

use crate::view::Resources;
use stator_api::ids::NodeId;

/// One step of a plan. A replica is named by (service, partition, node): anti-affinity
/// guarantees a node hosts at most one replica of a partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Action {
    /// Start a new replica of a partition on a node.
    Place {
        /// Service name.
        service: String,
        /// Partition index.
        partition: u32,
        /// Target node.
        node: NodeId,
        /// Requested resources.
        resources: Resources,
    },
    /// Move a replica by live migration: add a learner on `to`, let it catch up, swap
    /// it in, then remove the member on `from` (leadership moved first if it had it).
    /// Membership never drops below its size during the move.
    Migrate {
        /// Service name.
        service: String,
        /// Partition index.
        partition: u32,
        /// Current node.
        from: NodeId,
        /// New node.
        to: NodeId,
        /// Resources requested on `to` (may differ from the old request: a resize
        /// that did not fit in place).
        resources: Resources,
        /// State to copy.
        state_bytes: u64,
    },
    /// Change a replica's requested resources in place (vertical scaling: cgroup CPU
    /// share on the live path).
    Resize {
        /// Service name.
        service: String,
        /// Partition index.
        partition: u32,
        /// Node hosting the replica.
        node: NodeId,
        /// Old request.
        from: Resources,
        /// New request.
        to: Resources,
    },
    /// Provision one node from a pool in a zone.
    AddNode {
        /// Pool name.
        pool: String,
        /// Zone for the node.
        zone: String,
    },
    /// Stop scheduling onto a node (the first step of draining it).
    Cordon {
        /// The node.
        node: NodeId,
    },
    /// Release an empty node.
    RemoveNode {
        /// The node.
        node: NodeId,
    },
}
