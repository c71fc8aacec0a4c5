//! Errors of the planning crate.

use thiserror::Error;

/// Why a placement could not be made.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PlacementError {
    /// Fewer feasible nodes than replicas wanted: add capacity (a node pool) or lower
    /// the request.
    #[error(
        "service {service} partition {partition}: {wanted} replica(s) wanted but only {feasible} node(s) have room and host no other replica of the partition; add nodes or lower the request"
    )]
    InsufficientNodes {
        /// The service asked for.
        service: String,
        /// The partition asked for.
        partition: u32,
        /// Replicas wanted.
        wanted: u32,
        /// Nodes that passed every filter.
        feasible: u32,
    },
    /// A request asked for zero replicas or zero resources where they are required.
    #[error("invalid placement request: {0}")]
    InvalidRequest(String),
}
