//! What the server's `/v1` API returns: nodes, services, partitions, events and the
//! cluster facts, as JSON types that the server builds and the CLI, the gateway, chaos
//! and the benchmarks read. Declared once here, so no reader mirrors them.
//!
//! Fields added after a type first shipped carry `#[serde(default)]`, so a reader
//! accepts what an older server sends; what a server sends never changes shape.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::agent::ReplicaRole;
use crate::ids::{GroupId, NodeId};
use crate::slot::SlotRange;
use crate::spec::{ServiceKind, ServiceSpec};

/// Lifecycle of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Heartbeating and schedulable.
    Ready,
    /// Being emptied: hosts what it has until each piece has moved away.
    Draining,
    /// Emptied after a drain; heartbeats but receives nothing.
    Drained,
    /// No heartbeat within the grace: its replicas count as gone (the group replaces
    /// them where it can). An agent that comes back on the same data dir and proves the
    /// node's secret is `ready` again under the same id (its durable replicas reload from
    /// its disk); one without that proof registers under a fresh id.
    Lost,
}

impl NodeState {
    /// Every state, for metrics that report zero counts too.
    pub const ALL: [NodeState; 4] = [
        NodeState::Ready,
        NodeState::Draining,
        NodeState::Drained,
        NodeState::Lost,
    ];

    /// Lower-case name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Ready => "ready",
            NodeState::Draining => "draining",
            NodeState::Drained => "drained",
            NodeState::Lost => "lost",
        }
    }

    /// Whether the node still runs what it hosts.
    pub fn is_alive(self) -> bool {
        self != NodeState::Lost
    }
}

/// Overall state of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobPhase {
    /// Completions still outstanding.
    Running,
    /// Every completion succeeded.
    Succeeded,
    /// A completion ran out of retries.
    Failed,
}

/// One node, as `GET /v1/nodes` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    /// Node id (also its Raft member id in every group).
    pub id: NodeId,
    /// Name the agent registered with.
    pub name: String,
    /// Lifecycle state.
    pub state: NodeState,
    /// Failure domain.
    pub zone: String,
    /// Node pool.
    pub pool: String,
    /// Allocatable CPU, millicores.
    pub cpu_millis: u64,
    /// Allocatable memory, MiB.
    pub memory_mib: u64,
    /// USD per hour.
    pub price_per_hour: f64,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Where its replica transport and client calls listen.
    pub transport_addr: String,
    /// Time since its last heartbeat (None for a lost node).
    pub last_heartbeat_age_ms: Option<u64>,
    /// Partition replicas designed onto it.
    pub replicas: usize,
    /// Replicas on it that report themselves leader.
    pub leaders: usize,
    /// Stateless instances and running job attempts assigned to it.
    pub instances: usize,
    /// CPU requested by what is designed onto it, millicores (its use of `cpu_millis`).
    #[serde(default)]
    pub cpu_requested_millis: u64,
    /// Memory requested by what is designed onto it, MiB.
    #[serde(default)]
    pub memory_requested_mib: u64,
    /// Client operations per second its leader replicas answer (from its heartbeat).
    #[serde(default)]
    pub ops_per_sec: f64,
    /// While draining: why the drain cannot finish yet, one line per blocked
    /// partition (empty when it is moving along or not draining).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drain_waits: Vec<String>,
}

/// One member of a partition group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    /// Node id.
    pub node_id: NodeId,
    /// Node name.
    pub name: String,
    /// The node's transport address.
    pub addr: String,
    /// Role its own replica reports (None when it reports none yet).
    pub role: Option<ReplicaRole>,
    /// Whether the design includes it (false: being moved away).
    pub designed: bool,
    /// Whether the node is alive.
    #[serde(default = "default_true")]
    pub alive: bool,
    /// Where the node serves the Redis Cluster protocol for this service (kv services in
    /// cluster mode, once the agent reported it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resp_addr: Option<String>,
    /// Last log index its replica applied, as its last heartbeat said.
    #[serde(default)]
    pub applied_index: Option<u64>,
}

/// What the leader of a partition said about it in its last heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionLoad {
    /// Client operations answered per second.
    pub ops_per_sec: f64,
    /// p99 latency of client operations, microseconds.
    pub p99_us: u64,
    /// The leader's last applied log index.
    pub applied_index: u64,
    /// Approximate bytes of state the leader holds (what a snapshot carries).
    pub state_bytes: u64,
    /// Largest gap between the leader's applied index and a live member's.
    pub apply_lag_entries: u64,
    /// Age of this report: time since the leader's node last heartbeated, ms.
    pub observed_age_ms: u64,
}

/// The leader of a partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderView {
    /// Node id (0 from servers that predate cluster mode).
    #[serde(default)]
    pub node_id: NodeId,
    /// Node name.
    pub name: String,
    /// Where to send the partition's client calls.
    pub addr: String,
    /// The leader's term.
    pub term: u64,
    /// Where the leader serves the Redis Cluster protocol for this service, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resp_addr: Option<String>,
}

/// One partition, as `GET /v1/partitions` lists it (what the gateway routes by).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionView {
    /// Service name.
    pub service: String,
    /// Partition index.
    pub partition: u32,
    /// The partition's Raft group.
    pub group: GroupId,
    /// Key slots it owns.
    pub slots: SlotRange,
    /// The live leader, if one is reported.
    pub leader: Option<LeaderView>,
    /// Designed members plus any member still leaving.
    #[serde(default)]
    pub members: Vec<MemberView>,
    /// Transport addresses of every live member (for leader discovery by the gateway).
    #[serde(default)]
    pub member_addrs: Vec<String>,
    /// Replicas the spec asks for.
    pub replicas: u32,
    /// Observed voters equal the designed members, all alive.
    pub replication_factor_met: bool,
    /// Load and age of the leader's report (None while no leader is reported).
    #[serde(default)]
    pub load: Option<PartitionLoad>,
}

/// Status of a service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceStatus {
    /// Replicated: partitions with a live leader.
    pub partitions_with_leader: u32,
    /// Replicated: partitions whose replication factor is met.
    pub partitions_replicated: u32,
    /// Replicated: partitions not placed yet (not enough nodes).
    pub partitions_unplaced: u32,
    /// Stateless: instances assigned.
    pub instances_assigned: u32,
    /// Stateless: instances reporting ready.
    pub instances_ready: u32,
    /// Job: completions succeeded.
    pub completions_succeeded: u32,
    /// Job: overall phase.
    pub job_phase: Option<JobPhase>,
}

/// A service, as `GET /v1/services` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceView {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: ServiceKind,
    /// Id its partition groups derive from.
    pub id: u64,
    /// Bumped by every apply that changed the spec.
    pub generation: u64,
    /// The spec as applied.
    pub spec: ServiceSpec,
    /// What is running.
    #[serde(default)]
    pub status: ServiceStatus,
    /// Stateless: where each assigned instance serves (the gateway proxies to them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceView>,
}

/// One assigned instance of a stateless service or job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceView {
    /// Instance id.
    pub id: String,
    /// Node name.
    pub node: String,
    /// `host:port` when the service has a port.
    pub addr: Option<String>,
    /// Whether its readiness probe passes (unready instances get no traffic).
    #[serde(default = "default_true")]
    pub ready: bool,
    /// Times its agent restarted it.
    #[serde(default)]
    pub restarts: u32,
    /// Why its last run ended (`OOMKilled`, `Error`, `Completed`), as its agent reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Runs the kernel OOM-killed.
    #[serde(default)]
    pub oom_kills: u32,
    /// Its agent's last word on it (exit, probe failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A service with its partitions, as `GET /v1/services/{name}` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceDetail {
    /// The service.
    #[serde(flatten)]
    pub service: ServiceView,
    /// Its partitions.
    pub partitions: Vec<PartitionView>,
}

/// What `GET /v1/cluster` answers: what a gateway or client needs to reach replicas
/// directly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// The secret the replica transport authenticates with.
    pub cluster_secret: String,
}

/// What `PUT /v1/services/{name}` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyResult {
    /// `created`, `updated` or `unchanged`.
    pub result: String,
    /// The service after the apply.
    pub service: ServiceView,
}

/// One event of `GET /v1/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Increasing per server process.
    pub seq: u64,
    /// Wall-clock time, ms since the Unix epoch.
    pub time_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// The kernel killed an instance for passing its memory limit; its agent restarts
    /// it (stateless) or the job retries.
    InstanceOomKilled {
        /// Service name.
        service: String,
        /// Instance id.
        id: String,
        /// The node it ran on.
        node_id: NodeId,
        /// Its OOM kills so far.
        oom_kills: u32,
    },
    /// An agent registered.
    NodeJoined {
        /// Node id.
        node_id: NodeId,
        /// Node name.
        name: String,
    },
    /// An agent restarted on its data dir and kept its node id.
    NodeRejoined {
        /// Node id.
        node_id: NodeId,
        /// Node name.
        name: String,
    },
    /// Every member of a `memory` partition lost its state (a whole-cluster restart):
    /// the partition is placed again and starts empty.
    PartitionReset {
        /// Service name.
        service: String,
        /// Partition index.
        partition: u32,
        /// Why, for people.
        reason: String,
    },
    /// A node missed its heartbeat grace.
    NodeLost {
        /// Node id.
        node_id: NodeId,
        /// Node name.
        name: String,
    },
    /// A drain started.
    NodeDraining {
        /// Node id.
        node_id: NodeId,
        /// Node name.
        name: String,
    },
    /// A drain finished.
    NodeDrained {
        /// Node id.
        node_id: NodeId,
        /// Node name.
        name: String,
    },
    /// A partition got its initial members.
    ReplicaPlaced {
        /// Service name.
        service: String,
        /// Partition index.
        partition: u32,
        /// The members.
        members: Vec<NodeId>,
    },
    /// A member was replaced in the design.
    ReplicaMoved {
        /// Service name.
        service: String,
        /// Partition index.
        partition: u32,
        /// Leaving node.
        from: NodeId,
        /// Joining node.
        to: NodeId,
        /// `node_lost`, `node_draining` or `autoscale`.
        reason: String,
    },
    /// The autoscaler changed a member's CPU request.
    ReplicaResized {
        /// Service name.
        service: String,
        /// Partition index.
        partition: u32,
        /// The member's node.
        node_id: NodeId,
        /// The new request, millicores.
        cpu_millis: u64,
    },
    /// The autoscaler asked the node provider for a node.
    NodeRequested {
        /// Pool.
        pool: String,
        /// Zone.
        zone: String,
    },
    /// An empty node was handed back to the node provider.
    NodeReleased {
        /// Node id.
        node_id: NodeId,
        /// Node name.
        name: String,
    },
    /// A partition's reported leader changed.
    LeaderChanged {
        /// Service name.
        service: String,
        /// Partition index.
        partition: u32,
        /// The new leader (None: none reported).
        leader: Option<NodeId>,
        /// Its term.
        term: u64,
    },
    /// A spec was applied.
    ServiceApplied {
        /// Service name.
        service: String,
        /// Its generation.
        generation: u64,
    },
    /// A service was deleted.
    ServiceDeleted {
        /// Service name.
        service: String,
    },
    /// An instance or job attempt was assigned.
    InstancePlaced {
        /// Service name.
        service: String,
        /// Instance id.
        id: String,
        /// Node.
        node_id: NodeId,
    },
    /// An instance was removed.
    InstanceRemoved {
        /// Service name.
        service: String,
        /// Instance id.
        id: String,
    },
    /// A job attempt ended.
    InstanceFinished {
        /// Service name.
        service: String,
        /// Instance id.
        id: String,
        /// Whether it exited 0.
        succeeded: bool,
    },
    /// A job ended.
    JobFinished {
        /// Service name.
        service: String,
        /// `succeeded` or `failed`.
        phase: JobPhase,
    },
    /// A drain cannot go on: published once when the reasons change, not per pass.
    DrainBlocked {
        /// Node id.
        node_id: NodeId,
        /// Node name.
        name: String,
        /// One line per blocked partition.
        reasons: Vec<String>,
    },
    /// This subscriber fell behind and missed events; re-read the lists.
    Lagged {
        /// Events missed.
        missed: u64,
    },
}

impl EventKind {
    /// The `type` tag, used as the SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::NodeJoined { .. } => "node_joined",
            EventKind::NodeRejoined { .. } => "node_rejoined",
            EventKind::PartitionReset { .. } => "partition_reset",
            EventKind::NodeLost { .. } => "node_lost",
            EventKind::NodeDraining { .. } => "node_draining",
            EventKind::NodeDrained { .. } => "node_drained",
            EventKind::ReplicaPlaced { .. } => "replica_placed",
            EventKind::ReplicaMoved { .. } => "replica_moved",
            EventKind::LeaderChanged { .. } => "leader_changed",
            EventKind::ReplicaResized { .. } => "replica_resized",
            EventKind::NodeRequested { .. } => "node_requested",
            EventKind::NodeReleased { .. } => "node_released",
            EventKind::ServiceApplied { .. } => "service_applied",
            EventKind::ServiceDeleted { .. } => "service_deleted",
            EventKind::InstancePlaced { .. } => "instance_placed",
            EventKind::InstanceRemoved { .. } => "instance_removed",
            EventKind::InstanceFinished { .. } => "instance_finished",
            EventKind::InstanceOomKilled { .. } => "instance_oom_killed",
            EventKind::JobFinished { .. } => "job_finished",
            EventKind::DrainBlocked { .. } => "drain_blocked",
            EventKind::Lagged { .. } => "lagged",
        }
    }

    /// The service the event is about, if it is about one.
    pub fn service(&self) -> Option<&str> {
        match self {
            EventKind::ReplicaPlaced { service, .. }
            | EventKind::ReplicaMoved { service, .. }
            | EventKind::ReplicaResized { service, .. }
            | EventKind::LeaderChanged { service, .. }
            | EventKind::ServiceApplied { service, .. }
            | EventKind::ServiceDeleted { service }
            | EventKind::InstancePlaced { service, .. }
            | EventKind::InstanceRemoved { service, .. }
            | EventKind::InstanceFinished { service, .. }
            | EventKind::JobFinished { service, .. } => Some(service),
            _ => None,
        }
    }

    /// The node the event is about, if it is about one.
    pub fn node(&self) -> Option<NodeId> {
        match self {
            EventKind::NodeJoined { node_id, .. }
            | EventKind::NodeLost { node_id, .. }
            | EventKind::NodeDraining { node_id, .. }
            | EventKind::NodeDrained { node_id, .. }
            | EventKind::NodeReleased { node_id, .. }
            | EventKind::DrainBlocked { node_id, .. }
            | EventKind::ReplicaResized { node_id, .. }
            | EventKind::InstancePlaced { node_id, .. } => Some(*node_id),
            EventKind::LeaderChanged { leader, .. } => *leader,
            _ => None,
        }
    }
}

fn default_true() -> bool {
    true
}

#[cfg(test)]
mod tests {
    //! The JSON on the wire: these views moved here from the server unchanged, and the
    //! literals below are what servers sent before the move. A change here breaks every
    //! CLI, gateway and agent of another version.

    use super::*;
    use serde_json::json;

    fn round_trip<T>(view: &T, wire: serde_json::Value)
    where
        T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        assert_eq!(
            serde_json::to_value(view).unwrap(),
            wire,
            "serialized shape"
        );
        let back: T = serde_json::from_value(wire).unwrap();
        assert_eq!(&back, view, "read back");
    }

    #[test]
    fn node_view_wire_shape() {
        let view = NodeView {
            id: 3,
            name: "n3".into(),
            state: NodeState::Draining,
            zone: "z1".into(),
            pool: "default".into(),
            cpu_millis: 4000,
            memory_mib: 8192,
            price_per_hour: 0.5,
            labels: BTreeMap::from([("disk".to_string(), "ssd".to_string())]),
            transport_addr: "127.0.0.1:7001".into(),
            last_heartbeat_age_ms: Some(120),
            replicas: 2,
            leaders: 1,
            instances: 0,
            cpu_requested_millis: 500,
            memory_requested_mib: 256,
            ops_per_sec: 10.0,
            drain_waits: vec!["sessions/0: no target".into()],
        };
        round_trip(
            &view,
            json!({
                "id": 3, "name": "n3", "state": "draining", "zone": "z1", "pool": "default",
                "cpu_millis": 4000, "memory_mib": 8192, "price_per_hour": 0.5,
                "labels": {"disk": "ssd"}, "transport_addr": "127.0.0.1:7001",
                "last_heartbeat_age_ms": 120, "replicas": 2, "leaders": 1, "instances": 0,
                "cpu_requested_millis": 500, "memory_requested_mib": 256, "ops_per_sec": 10.0,
                "drain_waits": ["sessions/0: no target"]
            }),
        );
    }

    #[test]
    fn partition_view_wire_shape() {
        let view = PartitionView {
            service: "sessions".into(),
            partition: 1,
            group: GroupId(7 << 16 | 1),
            slots: SlotRange {
                start: 8192,
                end_inclusive: 16383,
            },
            leader: Some(LeaderView {
                node_id: 1,
                name: "n1".into(),
                addr: "a:1".into(),
                term: 4,
                resp_addr: Some("a:6379".into()),
            }),
            members: vec![MemberView {
                node_id: 1,
                name: "n1".into(),
                addr: "a:1".into(),
                role: Some(ReplicaRole::Leader),
                designed: true,
                alive: true,
                resp_addr: None,
                applied_index: Some(9),
            }],
            member_addrs: vec!["a:1".into()],
            replicas: 1,
            replication_factor_met: true,
            load: Some(PartitionLoad {
                ops_per_sec: 2.5,
                p99_us: 800,
                applied_index: 9,
                state_bytes: 1024,
                apply_lag_entries: 0,
                observed_age_ms: 50,
            }),
        };
        round_trip(
            &view,
            json!({
                "service": "sessions", "partition": 1, "group": 7 << 16 | 1,
                "slots": {"start": 8192, "end_inclusive": 16383},
                "leader": {"node_id": 1, "name": "n1", "addr": "a:1", "term": 4,
                           "resp_addr": "a:6379"},
                "members": [{"node_id": 1, "name": "n1", "addr": "a:1", "role": "leader",
                             "designed": true, "alive": true, "applied_index": 9}],
                "member_addrs": ["a:1"], "replicas": 1, "replication_factor_met": true,
                "load": {"ops_per_sec": 2.5, "p99_us": 800, "applied_index": 9,
                         "state_bytes": 1024, "apply_lag_entries": 0, "observed_age_ms": 50}
            }),
        );
    }

    #[test]
    fn event_and_cluster_info_wire_shape() {
        let event = Event {
            seq: 5,
            time_ms: 1_700_000_000_000,
            kind: EventKind::JobFinished {
                service: "batch".into(),
                phase: JobPhase::Succeeded,
            },
        };
        round_trip(
            &event,
            json!({"seq": 5, "time_ms": 1_700_000_000_000u64, "type": "job_finished",
                   "service": "batch", "phase": "succeeded"}),
        );
        round_trip(
            &ClusterInfo {
                cluster_secret: "s".into(),
            },
            json!({"cluster_secret": "s"}),
        );
    }

    #[test]
    fn service_detail_flattens_the_service() {
        let wire = json!({
            "name": "web", "kind": "stateless", "id": 8, "generation": 2,
            "spec": {"name": "web", "kind": "stateless", "instances": 1,
                     "app": {"process": {"command": ["web"]}}},
            "status": {"partitions_with_leader": 0, "partitions_replicated": 0,
                       "partitions_unplaced": 0, "instances_assigned": 1, "instances_ready": 1,
                       "completions_succeeded": 0, "job_phase": null},
            "instances": [{"id": "web-0", "node": "n1", "addr": "127.0.0.1:9001",
                           "ready": true, "restarts": 0, "oom_kills": 0}],
            "partitions": []
        });
        let detail: ServiceDetail = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(
            detail.service.instances[0].addr.as_deref(),
            Some("127.0.0.1:9001")
        );
        let again = serde_json::to_value(&detail).unwrap();
        assert_eq!(again["instances"], wire["instances"]);
        assert_eq!(again["status"], wire["status"]);
        assert_eq!(again["partitions"], wire["partitions"]);
    }
}
