//! Types shared by every stator layer.
//!
//! # Layout
//! - [`app`]: the contract between a replica and the state machine it runs
//!   (built-in `kv`, an external `stator-sm/1` process, ...).
//! - [`container`]: the `app = { container = {...} }` spec and image references
//!   (`oci:`, `oci-archive:`, `docker-archive:`).
//! - [`ids`]: node, group and replica identifiers.
//! - [`slot`]: Redis-Cluster key slots (`CRC16(hash-tag(key)) mod 16384`) and slot ranges.
//! - [`agent`]: the agent <-> server protocol: registration, heartbeats, assignments.
//! - [`pubsub`]: the pub/sub bus registry (peers, subscriber summaries, keyspace
//!   notification flags) that gateways and agents share through the server.
//! - [`spec`]: service, node-pool and node specs as users write them, with validation
//!   whose errors name the field.
//! - [`views`]: what the server's `/v1` API returns (nodes, services, partitions,
//!   events, cluster facts), declared once for the server and every reader.
//! - `testing` (cargo feature `testing`, for tests only): builders such as
//!   `testing::replica_status`, so every crate's tests build a `ReplicaStatus` one way.

pub mod agent;
pub mod app;
pub mod container;
pub mod ids;
pub mod pubsub;
pub mod slot;
pub mod spec;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod views;
