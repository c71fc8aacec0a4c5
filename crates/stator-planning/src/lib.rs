//! Planning: pure functions from a [`ClusterView`] to placements and actions.
//!
//! No IO, no clock reads, no async: time arrives as an argument (`now_s`), and the
//! control plane and the simulator (`stator-sim`) call the very same functions.
//!
//! # Layout
//! - [`view`]: [`ClusterView`] — nodes, their capacity and allocation, the replicas on
//!   them, with indexes kept up to date as replicas are added, moved and removed.
//! - [`scheduler`]: filter (capacity, schedulable, selectors, anti-affinity) then score
//!   under a [`Policy`]: `Spread` (Kubernetes default scoring) or `Cost`
//!   (best-fit on price per unit of resource, jobs packed apart and binned by end time).
//! - [`error`]: [`PlacementError`].

pub mod error;
pub mod scheduler;
pub mod view;

pub use error::PlacementError;
pub use scheduler::{
    place_batch, place_partition, place_replacement, score_node, Policy, PlacementRequest,
    SpreadDomain,
};
pub use view::{ClusterView, LabelRequirement, Node, Replica, ReplicaSlot, Resources, WorkloadKind};
pub use stator_api::ids::NodeId;
