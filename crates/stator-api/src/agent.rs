//! The agent <-> server protocol: registration, heartbeats, assignments (JSON over HTTP).
//!
//! An agent calls [`REGISTER_PATH`] once per process start with its capacity and gets a
//! fresh [`NodeId`]; then every `heartbeat_interval_ms` it posts a [`Heartbeat`] to
//! [`heartbeat_path`] and receives its full [`Assignments`]. Both calls carry the join
//! token as `Authorization: Bearer <token>`.
//!
//! # To ensure correctness
//! - Assignments are level-triggered: each answer is the complete desired state of the
//!   node. The agent starts what is assigned and not running, and stops what is running
//!   and not assigned (a deleted service simply disappears from the list).
//! - A node keeps its id across restarts on the same data dir: the agent stores the id
//!   and the per-node secret of its [`RegisterResponse`] and registers again with a
//!   [`Rejoin`] proving both; the server answers the same id while it still has the
//!   node's record, alive or lost past the heartbeat grace (a lost node's record is kept
//!   while any partition design still names it), and a fresh one otherwise (the agent
//!   then wipes its replica stores: they belong to the old identity). A heartbeat for an
//!   id the server does not count as alive (it declared the node lost, or forgot it)
//!   answers HTTP 404 with
//!   [`UNKNOWN_NODE_ERROR`] in the error; the agent must then stop every replica and
//!   register again.
//! - A returning node reloads its durable replicas from disk under its old member id (their
//!   vote and log were fsynced). A replica whose state it lost (a `memory` replica, or a
//!   store that fails its checksums) is never hosted again under the same id while the
//!   group still counts it: the agent reports it `forgotten` and the server replaces that
//!   member (or, when every member of a `memory` group forgot it, places the partition
//!   afresh, empty).
//! - `members` of a [`ReplicaAssignment`] is the *designed* voter set. The agent hosting
//!   the current leader reconciles the group toward it (add the new member as a learner,
//!   wait for it to catch up, then change membership, one member at a time); other agents
//!   just host their replica. Only `bootstrap = true` replicas may initialise a group.
//! - A replica may be assigned to a node that is *not* in its `members`: it is being
//!   moved away (drain) and must keep serving until the group's membership no longer
//!   includes it; the assignment then disappears and the agent stops the replica.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::container::ContainerSpec;
use crate::ids::{GroupId, NodeId};
use crate::slot::SlotRange;
use crate::spec::{AppSpec, Durability, Probe};

/// Path of the registration call (POST, body [`RegisterRequest`]).
pub const REGISTER_PATH: &str = "/v1/agents/register";

/// Marker in the error of a heartbeat for a node the server does not know: register again.
pub const UNKNOWN_NODE_ERROR: &str = "unknown node";

/// Path of the heartbeat call (POST, body [`Heartbeat`], answer [`Assignments`]).
pub fn heartbeat_path(node_id: NodeId) -> String {
    format!("/v1/agents/{node_id}/heartbeat")
}

/// What an agent tells the server about itself when it starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// Human name, unique among live nodes (defaults to the host name in the agent).
    pub name: String,
    /// Failure domain.
    pub zone: String,
    /// Node pool it was provisioned from.
    pub pool: String,
    /// Allocatable CPU in millicores.
    pub cpu_millis: u64,
    /// Allocatable memory in MiB.
    pub memory_mib: u64,
    /// What the node costs per hour, in USD.
    pub price_per_hour: f64,
    /// Free-form labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `host:port` where the agent's replica transport and client calls listen; other
    /// agents and gateways dial it.
    pub transport_addr: String,
    /// Set by an agent restarted on the data dir of an earlier registration: the identity
    /// it asks to keep. Never stored by the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejoin: Option<Rejoin>,
}

/// The identity a restarted agent asks to keep: the id and per-node secret the server
/// handed out when it first registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejoin {
    /// The node id of the earlier registration.
    pub node_id: NodeId,
    /// The per-node secret of the earlier registration.
    pub node_secret: String,
}

/// The server's answer to a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// The node's id: the one a valid [`Rejoin`] asked for, or a fresh one never given
    /// out before.
    pub node_id: NodeId,
    /// Proves this identity in a later [`Rejoin`]; the agent keeps it next to its data
    /// (empty from servers that predate identities: the agent then never rejoins).
    #[serde(default)]
    pub node_secret: String,
    /// Shared secret every agent proves in the replica transport handshake.
    pub cluster_secret: String,
    /// How often to heartbeat.
    pub heartbeat_interval_ms: u64,
}

/// What an agent reports every heartbeat interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The id from [`RegisterResponse`].
    pub node_id: NodeId,
    /// Every replica the agent hosts, including ones it is stopping; or, where
    /// `replicas_since` is set, only those whose status changed since that view.
    #[serde(default)]
    pub replicas: Vec<ReplicaStatus>,
    /// `None`: `replicas` is the full view. `Some(view)`: `replicas` and `replicas_gone`
    /// are the changes since `view`, the view the server last acknowledged
    /// ([`Assignments::replicas_view`]). An idle agent of 1,000 replicas then sends a
    /// few bytes instead of every status twice a second. A server that does not hold
    /// `view` (it restarted, or missed a beat) answers 409 Conflict, and the agent sends
    /// the full view at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas_since: Option<u64>,
    /// Groups no longer hosted since `replicas_since` (a delta only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas_gone: Vec<GroupId>,
    /// The number of the view this heartbeat leaves the server with (the agent counts
    /// up from 1 per incarnation; 0: the agent sends no deltas).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub replicas_view: u64,
    /// Every stateless or job instance the agent runs or recently finished.
    #[serde(default)]
    pub instances: Vec<InstanceStatus>,
    /// Kv service name -> `host:port` where this agent serves the Redis Cluster protocol
    /// for it (its advertised address, what `MOVED` and `CLUSTER SLOTS` hand out).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resp_addrs: BTreeMap<String, String>,
    /// The [`Assignments::fingerprint`] of the assignments the agent holds (its last
    /// full answer): a server whose assignments for the node are still those answers
    /// [`Assignments::unchanged`] instead of sending them again (1,000 replica
    /// assignments and slot maps twice a second, parsed by an idle agent for nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignments_held: Option<u64>,
    /// Node-wide counters since the agent started: commit latency and transport bytes.
    #[serde(default)]
    pub metrics: NodeMetrics,
}

/// Upper bounds of the commit-latency histogram's buckets, µs (an implicit `+Inf`
/// bucket follows): 250 µs to 4 s in doublings, fine where writes land (a batch's fsync,
/// one round trip) and coarse in the tail. A fixed list keeps every node's series
/// comparable and the label cardinality bounded (15 series per node).
pub const COMMIT_LATENCY_BOUNDS_US: [u64; 14] = [
    250, 500, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 256_000, 512_000,
    1_024_000, 4_096_000,
];

/// Peers a heartbeat reports transport bytes for: a cluster's nodes, with room to spare;
/// the rest are summed under peer 0.
pub const MAX_TRAFFIC_PEERS: usize = 1_024;

/// Node-wide counters an agent reports, cumulative since it started (a restart starts
/// them at zero again, which Prometheus treats as a counter reset).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeMetrics {
    /// Latency of the writes this node's leaders committed and applied.
    #[serde(default)]
    pub commit_latency: LatencyHistogram,
    /// Bytes on the replica transport per peer node (peer 0: clients such as gateways).
    #[serde(default)]
    pub transport: Vec<PeerTraffic>,
}

/// A cumulative latency histogram over [`COMMIT_LATENCY_BOUNDS_US`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencyHistogram {
    /// Samples per bucket (not cumulative): one per bound, then one above the last.
    #[serde(default)]
    pub counts: Vec<u64>,
    /// Sum of every sample, µs.
    #[serde(default)]
    pub sum_us: u64,
}

impl LatencyHistogram {
    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Transport bytes exchanged with one peer node since the agent started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerTraffic {
    /// The peer's node id (0: clients, and peers past [`MAX_TRAFFIC_PEERS`]).
    pub peer: NodeId,
    /// Bytes written to it (frames of requests and replies).
    pub sent_bytes: u64,
    /// Bytes read from it.
    pub received_bytes: u64,
}

/// A replica's role in its group, as its Raft node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaRole {
    /// Answers clients and replicates the log.
    Leader,
    /// A voter following a leader.
    Follower,
    /// A non-voting member catching up.
    Learner,
    /// Running an election.
    Candidate,
    /// Not running (being removed, or failed: see `error`).
    Stopped,
}

/// One hosted replica, as observed by its agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// The partition's group.
    pub group: GroupId,
    /// Service name.
    pub service: String,
    /// Partition index.
    pub partition: u32,
    /// Role of this replica.
    pub role: ReplicaRole,
    /// The leader this replica knows of.
    pub leader: Option<NodeId>,
    /// Current Raft term.
    pub term: u64,
    /// Voters of the group's effective membership, as this replica sees it.
    pub voters: Vec<NodeId>,
    /// Learners of the group's effective membership.
    pub learners: Vec<NodeId>,
    /// Last log index applied to the state machine.
    pub applied_index: u64,
    /// Approximate bytes of state held.
    pub state_bytes: u64,
    /// Client operations answered per second (leader only; 0 elsewhere).
    pub ops_per_sec: f64,
    /// p99 latency of client operations, in microseconds.
    pub p99_us: u64,
    /// Why the replica is stopped or unhealthy, if it is.
    #[serde(default)]
    pub error: Option<String>,
    /// Bytes its log, vote and snapshots take on the node's disk (0 for `memory`).
    #[serde(default)]
    pub disk_bytes: u64,
    /// This node is a member of the group but lost the replica's state (a `memory`
    /// replica of a restarted agent, or a store that failed its checksums): it does not
    /// host it and must be removed from the group before it may rejoin it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forgotten: bool,
}

/// Lifecycle of a stateless or job instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    /// Assigned, process not started yet or restarting after a crash.
    Starting,
    /// Process alive, readiness not (yet) confirmed.
    Running,
    /// Process alive and its readiness probe passes (or it has none).
    Ready,
    /// Exited with status 0 (jobs).
    Succeeded,
    /// Exited non-zero, or could not start (jobs: one failed attempt).
    Failed,
}

/// One instance, as observed by its agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    /// The id from [`InstanceAssignment`].
    pub id: String,
    /// Service name.
    pub service: String,
    /// Current state.
    pub state: InstanceState,
    /// Times the agent restarted the process.
    pub restarts: u32,
    /// Last exit code, when the process exited.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Human detail (last error, probe failure).
    #[serde(default)]
    pub message: Option<String>,
    /// Why the last run ended, in one word as Kubernetes says it: [`REASON_OOM_KILLED`]
    /// (killed for passing its memory limit), `Error` (non-zero exit or a signal) or
    /// `Completed` (exit 0). None while the first run is going.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Runs of this instance the kernel OOM-killed (the server raises an event for each
    /// new one).
    #[serde(default)]
    pub oom_kills: u32,
}

/// [`InstanceStatus::reason`] of a run the kernel killed for passing its memory limit.
pub const REASON_OOM_KILLED: &str = "OOMKilled";
/// [`InstanceStatus::reason`] of a run that exited non-zero or died of a signal.
pub const REASON_ERROR: &str = "Error";
/// [`InstanceStatus::reason`] of a run that exited 0.
pub const REASON_COMPLETED: &str = "Completed";

/// A member of a partition group with the address its agent listens on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    /// The member's node (also its Raft member id).
    pub node_id: NodeId,
    /// The node's `transport_addr`.
    pub addr: String,
}

/// A replica the node must host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaAssignment {
    /// The partition's group.
    pub group: GroupId,
    /// Service name.
    pub service: String,
    /// Partition index.
    pub partition: u32,
    /// What the replica runs.
    pub app: AppSpec,
    /// The designed voter set, this node included.
    pub members: Vec<Member>,
    /// True only for the initial members of a partition that has never reported a
    /// leader: they may initialise the group with `members`. Everyone else waits to be
    /// added by the leader.
    pub bootstrap: bool,
    /// Raft election timeout.
    pub election_timeout_ms: u64,
    /// CPU share of this replica in millicores (the spec's request, or what the
    /// autoscaler resized it to); agents enforce it with cgroups where they can. 0 from
    /// servers that predate it: no share to enforce.
    #[serde(default)]
    pub cpu_millis: u64,
    /// Where the replica keeps its log, vote and snapshots (the service's spec).
    #[serde(default)]
    pub durability: Durability,
    /// Longest time between fsyncs for `periodic` durability (0 otherwise).
    #[serde(default)]
    pub fsync_interval_ms: u64,
    /// Memory limit of the replica's app process or container in MiB (the spec's
    /// `resources.memory`); 0 from servers that predate it: none.
    #[serde(default)]
    pub memory_mib: u64,
    /// Data budget of a built-in kv replica in bytes (the spec's `maxmemory`, fixed for
    /// the service's life); 0: none. See `stator_kv::budget`.
    #[serde(default)]
    pub kv_maxmemory_bytes: u64,
    /// Set on the leader's assignment when the server spreads leaders over nodes again:
    /// hand leadership to this caught-up follower (`Host::transfer_leadership`). Asked
    /// for again on each heartbeat until the move shows, so an agent paces its attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_leader_to: Option<NodeId>,
}

/// Whether an instance runs forever or to completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceKind {
    /// Kept running; restarted with capped back-off when it exits.
    Stateless,
    /// Run once; exit 0 is success, anything else a failed attempt (not restarted by the
    /// agent: the server schedules the retry, as a new instance id).
    Job,
}

/// A stateless or job instance the node must run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceAssignment {
    /// Unique id (`<service>-<n>` for stateless, `<service>-<n>-<attempt>` for jobs).
    pub id: String,
    /// Service name.
    pub service: String,
    /// Stateless or job.
    pub kind: InstanceKind,
    /// Program and arguments (empty for a container that runs its image's entrypoint).
    pub command: Vec<String>,
    /// Extra environment (the agent adds `PORT` when `port` is set).
    pub env: BTreeMap<String, String>,
    /// Directory to start in.
    pub working_dir: Option<String>,
    /// Port the instance listens on.
    pub port: Option<u16>,
    /// Readiness probe.
    pub readiness: Option<Probe>,
    /// CPU requested, in millicores (for limits).
    pub cpu_millis: u64,
    /// Memory requested, in MiB; also the limit the agent enforces (0: none).
    pub memory_mib: u64,
    /// CPU ceiling in millicores (a CFS quota); None: no ceiling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_limit_millis: Option<u64>,
    /// Run this container (its image, command and options) instead of `command` as a
    /// process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerSpec>,
}

/// Everything a node must run, answered to each heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignments {
    /// Replicas to host.
    pub replicas: Vec<ReplicaAssignment>,
    /// Instances to run.
    pub instances: Vec<InstanceAssignment>,
    /// The node is being drained: expect replicas to move away.
    pub draining: bool,
    /// The slot map of every kv service in cluster mode that this node hosts a replica
    /// of: the agent serves RESP for it, answers its slots where it leads and `MOVED`
    /// elsewhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster: Vec<ClusterService>,
    /// The heartbeat's [`Heartbeat::replicas_view`] the server now holds, which the
    /// agent's next heartbeat may send changes against; `None` when it holds no
    /// numbered view (the agent then sends the full view).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas_view: Option<u64>,
    /// A digest of `replicas`, `instances`, `draining` and `cluster` as the server
    /// computed them; the agent sends it back as [`Heartbeat::assignments_held`]. `None`:
    /// a server that does not answer [`Assignments::unchanged`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<u64>,
    /// The assignments are those the agent holds (its `assignments_held` equals
    /// `fingerprint`): `replicas`, `instances` and `cluster` are left empty, and the
    /// agent keeps what it holds.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unchanged: bool,
}

impl Assignments {
    /// The digest [`Assignments::fingerprint`] carries: of everything but the view
    /// number and the fingerprint fields. Stable within one server process (std's
    /// `DefaultHasher` with its fixed keys); an agent only ever sends it back to a
    /// server, and a server restarted on another build answers in full on a mismatch.
    pub fn digest(&self) -> u64 {
        use std::hash::Hasher;
        struct HashWriter<'a>(&'a mut std::collections::hash_map::DefaultHasher);
        impl std::io::Write for HashWriter<'_> {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.write(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        let parts = (
            &self.replicas,
            &self.instances,
            self.draining,
            &self.cluster,
        );
        serde_json::to_writer(HashWriter(&mut hasher), &parts)
            .expect("assignments serialize to JSON");
        hasher.finish()
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A kv service's partitions as a Redis Cluster client sees them (cluster mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterService {
    /// Service name.
    pub service: String,
    /// Every partition of the service, ordered by slot range.
    pub partitions: Vec<ClusterPartition>,
    /// The spec's `expose.auth`: the agent's listener asks for the same credentials as
    /// the gateway, reading the password files named here on its own machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<crate::spec::AuthSpec>,
    /// The spec's `expose.protected_mode` (on when absent, as in the spec).
    #[serde(default = "protected_by_default")]
    pub protected_mode: bool,
    /// The spec's `expose.tls`: the agent's listener presents this certificate (files
    /// read on the agent's machine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::spec::RespTlsSpec>,
}

fn protected_by_default() -> bool {
    true
}

/// One partition of a [`ClusterService`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterPartition {
    /// Partition index.
    pub partition: u32,
    /// Its group.
    pub group: GroupId,
    /// The slots it owns.
    pub slots: SlotRange,
    /// The live leader the server last saw.
    pub leader: Option<NodeId>,
    /// Its live members (designed, or still in the group while leaving).
    pub members: Vec<ClusterMember>,
}

/// A member of a [`ClusterPartition`] with both of its addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMember {
    /// The member's node.
    pub node_id: NodeId,
    /// The node's replica transport address.
    pub addr: String,
    /// Where the node serves RESP for this service, once it reported one.
    pub resp_addr: Option<String>,
}

/// The JSON body of every error answer of the API: `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What was wrong and what to do.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_round_trips_through_json() {
        let heartbeat = Heartbeat {
            node_id: 7,
            replicas: vec![ReplicaStatus {
                term: 3,
                applied_index: 10,
                state_bytes: 100,
                ops_per_sec: 1.5,
                p99_us: 900,
                ..crate::testing::leader_status(GroupId::new(1, 2), "sessions", 2, 7, &[7, 8, 9])
            }],
            instances: vec![],
            resp_addrs: BTreeMap::from([("sessions".into(), "127.0.0.1:7001".into())]),
            metrics: NodeMetrics {
                commit_latency: LatencyHistogram {
                    counts: vec![1, 2],
                    sum_us: 700,
                },
                transport: vec![PeerTraffic {
                    peer: 8,
                    sent_bytes: 10,
                    received_bytes: 20,
                }],
            },
            replicas_since: Some(3),
            assignments_held: Some(42),
            replicas_gone: vec![GroupId::new(1, 5)],
            replicas_view: 4,
        };
        let json = serde_json::to_string(&heartbeat).unwrap();
        assert!(json.contains("\"role\":\"leader\""));
        assert_eq!(serde_json::from_str::<Heartbeat>(&json).unwrap(), heartbeat);
        assert_eq!(heartbeat_path(7), "/v1/agents/7/heartbeat");
    }
}
