//! Planning: pure functions from a [`ClusterView`] to placements and actions.
//!
//! No IO, no clock reads, no async: time arrives as an argument (`now_s`), and the
//! control plane and the simulator (`stator-sim`) call the very same functions.
//!
//! # Layout
//! - [`view`]: [`ClusterView`] — nodes, their capacity and allocation, the replicas on
//!   them, with indexes kept up to date as replicas are added, moved and removed
//!   (among them the largest free room per block of 64 nodes, which lets a placement
//!   scan skip the blocks that cannot hold a request). Zones are interned as numbers
//!   (`ClusterView::zone_index_of`): the planner's zone filters compare numbers and
//!   copy no names; the indexes are Fx-hashed (`rustc_hash`), as they are looked up
//!   several times per partition and round. Partitions are numbered densely when
//!   their first replica is added (`ClusterView::partition_index`, stable for the
//!   view's life and its clones): a caller resolves a partition once and reads its
//!   members by index (`ClusterView::members_at`); the partition scaler's state and
//!   the forecaster number their series the same way (`Forecaster::series_index`).
//!   GPUs are devices ([`GpuDevices`], one per 1000 milli-GPUs of a node): a request
//!   asks for `gpu_count` devices with its per-device share free on each, never the
//!   leftovers of two devices for one share; each replica remembers the devices it
//!   took (best fit, gpushare's binpack), so its removal or move frees the same ones.
//! - [`scheduler`]: filter (capacity, GPU devices, schedulable, selectors,
//!   anti-affinity) then score under a [`Policy`]: `Spread` (Kubernetes default
//!   scoring) or `Cost` (best-fit on price per unit of resource, jobs packed apart and
//!   binned by end time, GPU requests by the fragmentation they leave on devices).
//! - [`actions`]: [`Action`] — place, migrate, resize, add/cordon/remove node.
//! - [`pools`]: node pools ([`PoolSpec`]) and nodes still booting.
//! - [`autoscaler`]: the partition scaler ([`PartitionScalerConfig`]; not Kubernetes'
//!   Cluster Autoscaler, which is in [`baseline`]), QoS first — repair, vertical
//!   resize, then migrate (within the member's own zone when the others hold the
//!   rest) or add a node from the cheapest fitting pool; stabilisation window
//!   against flapping.
//! - [`forecast`]: Holt's linear-trend forecast per partition with a safety margin
//!   from its measured errors, for predictive (ahead-of-the-ramp) sizing.
//! - [`consolidator`]: release empty nodes, empty under-used ones by live migration
//!   under a disruption budget, never below quorum or against anti-affinity; replace
//!   nodes of the wrong shape ([`plan_replacements`], [`MergeConfig`]): pairs and
//!   groups of memory-bound nodes by fewer nodes of a cheaper-for-memory pool (the
//!   night), and single nodes by a cheaper node of another pool with the same cores
//!   (swaps: the day's CPU-bound general-purpose nodes back to compute-optimised).
//! - [`baseline`]: the Kubernetes baselines for side-by-side comparison: `k8s-default`
//!   (HPA v2 replica calculator and behaviour, Cluster Autoscaler, node lifecycle
//!   timings) and `k8s-tuned`'s parts (VPA-style requests, Karpenter-like
//!   consolidation).
//! - [`error`]: the placement error type, `PlacementError`.

pub mod actions;
pub mod autoscaler;
pub mod baseline;
pub mod consolidator;
pub mod error;
pub mod forecast;
pub mod pools;
pub mod scheduler;
pub mod view;

pub use actions::Action;
pub use autoscaler::{
    autoscale, per_member_used_millis, plan_new_nodes, PartitionDemand, PartitionScalerConfig,
    PartitionScalerState, PoolChoice, UnmetNeed,
};
pub use consolidator::{
    consolidate, consolidate_with_headroom, plan_merges, plan_replacements, ConsolidatorConfig,
    ConsolidatorState, Merge, MergeConfig,
};
pub use forecast::{ForecastConfig, Forecaster};
pub use pools::{BootingNode, PoolSpec};

pub use error::PlacementError;
pub use scheduler::{
    place_batch, place_partition, place_replacement, score_node, PlacementRequest, Policy,
    SpreadDomain,
};
pub use stator_api::ids::NodeId;
pub use view::{
    ClusterView, GpuDevices, LabelRequirement, Node, Replica, ReplicaSlot, Resources, WorkloadKind,
    MAX_GPUS_PER_NODE, MILLI_PER_GPU,
};
