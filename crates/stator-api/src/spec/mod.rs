//! Service and node-pool specs as users write them (TOML, YAML or JSON), with validation
//! whose errors name the field and the fix.
//!
//! A spec goes through two steps: [`parse_spec`] turns text into a [`ServiceSpec`]
//! (rejecting unknown fields and wrong types), then [`ServiceSpec::validate`] checks the
//! values against the limits below. Both steps return a [`SpecError`] whose message starts
//! with the field's path, e.g. `replicas: must be 1, 3, 5 or 7 (an odd number keeps a
//! majority), got 0`.
//!
//! # Layout
//! - [`parse`]: text formats, [`parse_spec`], [`parse_node_pool`], [`SpecError`].
//! - [`service`]: [`ServiceSpec`], [`ServiceKind`], [`Durability`] and validation.
//! - [`program`]: what runs: [`AppSpec`], [`ProcessSpec`] (containers in
//!   [`crate::container`]).
//! - [`expose`]: [`ExposeSpec`], RESP TLS, `expose.auth` ([`AuthSpec`]).
//! - [`resources`]: [`ResourceSpec`] and Kubernetes quantities ([`parse_cpu_millis`],
//!   [`parse_memory_mib`]).
//! - [`placement`]: [`PlacementSpec`], [`QosSpec`].
//! - [`probe`]: readiness [`Probe`]s.
//! - [`node_pool`]: node pools ([`NodePoolSpec`]).
//!
//! Every type is re-exported here: callers write `stator_api::spec::ServiceSpec`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use crate::container::ContainerSpec;

pub mod expose;
pub mod node_pool;
pub mod parse;
pub mod placement;
pub mod probe;
pub mod program;
pub mod resources;
pub mod service;
#[cfg(test)]
mod tests;

pub use expose::*;
pub use node_pool::*;
pub use parse::*;
pub use placement::*;
pub use probe::*;
pub use program::*;
pub use resources::*;
pub use service::*;

/// Most partitions one service may declare: each partition is a Raft group with its own
/// heartbeats, so more than this per service costs more than it shards.
pub const MAX_PARTITIONS: u32 = 1024;
/// Replica counts a partition may have: odd, so a majority survives the loss of
/// `(replicas - 1) / 2` members; 7 already tolerates three failures.
pub const ALLOWED_REPLICAS: [u32; 4] = [1, 3, 5, 7];
/// Most instances of a stateless service, and most completions of a job: a bound on what
/// one spec can ask the scheduler for.
pub const MAX_INSTANCES: u32 = 1024;
/// Most retries of a failed job run before the job is marked failed.
pub const MAX_JOB_RETRIES: u32 = 100;
/// Shortest back-off between job retries: below this a crash loop spins the node.
pub const MIN_JOB_BACKOFF_MS: u64 = 10;
/// Longest back-off between job retries (one hour).
pub const MAX_JOB_BACKOFF_MS: u64 = 3_600_000;
/// Shortest Raft election timeout: below this a busy LAN triggers spurious elections.
pub const MIN_ELECTION_TIMEOUT_MS: u64 = 50;
/// Longest Raft election timeout: beyond a minute failover is slower than a StatefulSet's.
pub const MAX_ELECTION_TIMEOUT_MS: u64 = 60_000;
/// Longest service or pool name: a DNS label, so names can become host names.
pub const MAX_NAME_LEN: usize = 63;
/// Most CPU one replica or instance may request (1000 cores).
pub const MAX_CPU_MILLIS: u64 = 1_000_000;
/// Most memory one replica or instance may request (4 TiB).
pub const MAX_MEMORY_MIB: u64 = 4 * 1024 * 1024;
/// Most arguments in a process command line.
pub const MAX_COMMAND_ARGS: usize = 256;
/// Most environment variables in a process spec.
pub const MAX_ENV_VARS: usize = 256;
/// Most nodes one pool may hold.
pub const MAX_POOL_NODES: u32 = 100_000;
/// Shortest fsync interval of `durability = "periodic"`: below this, `disk` (fsync per
/// batch, with group commit) costs about the same and promises more.
pub const MIN_FSYNC_INTERVAL_MS: u64 = 10;
/// Longest fsync interval of `durability = "periodic"` (one minute of writes at risk).
pub const MAX_FSYNC_INTERVAL_MS: u64 = 60_000;
/// Fsync interval of `durability = "periodic"` when the spec does not say: Redis'
/// `appendfsync everysec`.
pub const DEFAULT_FSYNC_INTERVAL_MS: u64 = 1_000;

/// Partitions of a replicated service when the spec does not say.
pub const DEFAULT_PARTITIONS: u32 = 1;
/// Replicas per partition when the spec does not say: tolerates one node loss.
pub const DEFAULT_REPLICAS: u32 = 3;
/// Raft election timeout when the spec does not say: tuned for a LAN, where heartbeats
/// take well under a millisecond, so failover stays far below a second. openraft waits
/// one leader lease (the timeout's upper bound, 1.25x this) plus the timeout before a
/// follower that knew a leader runs for election: about 2.3-2.5x this in all.
pub const DEFAULT_ELECTION_TIMEOUT_MS: u64 = 100;
/// CPU requested when the spec does not say.
pub const DEFAULT_CPU_MILLIS: u64 = 100;
/// Memory requested when the spec does not say.
pub const DEFAULT_MEMORY_MIB: u64 = 64;
/// Retries of a job when the spec does not say.
pub const DEFAULT_JOB_RETRIES: u32 = 3;
/// Back-off before the first retry of a job when the spec does not say; it doubles per
/// retry up to [`MAX_JOB_BACKOFF_MS`].
pub const DEFAULT_JOB_BACKOFF_MS: u64 = 1_000;
