//! What the REST API returns: nodes, services, partitions and events, as JSON types
//! that the CLI and the gateway deserialize.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

use stator_api::agent::{InstanceState, ReplicaRole, ReplicaStatus};
use stator_api::ids::{GroupId, NodeId};
use stator_api::slot::{partition_ranges, SlotRange};
use stator_api::spec::{ServiceKind, ServiceSpec};

use crate::model::{Cluster, InstancePhase, JobPhase, NodeState, Service};

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
    /// Node id.
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
    pub members: Vec<MemberView>,
    /// Transport addresses of every live member (for leader discovery by the gateway).
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Whether its readiness probe passes.
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

/// The node as the API shows it.
pub fn node_view(cluster: &Cluster, id: NodeId, now_ms: u64) -> Option<NodeView> {
    let record = cluster.nodes.get(&id)?;
    let mut replicas = 0;
    let mut instances = 0;
    let (mut cpu_requested_millis, mut memory_requested_mib) = (0, 0);
    for service in cluster.services.values() {
        let resources = &service.spec().resources;
        for design in service.placement.partitions.iter() {
            if design.members.contains(&id) {
                replicas += 1;
                cpu_requested_millis += design.member_cpu_millis(id, resources.cpu_millis());
                memory_requested_mib += resources.memory_mib();
            }
        }
        let assigned = service
            .placement
            .instances
            .iter()
            .filter(|i| i.node == id && i.phase == InstancePhase::Assigned)
            .count();
        instances += assigned;
        cpu_requested_millis += assigned as u64 * resources.cpu_millis();
        memory_requested_mib += assigned as u64 * resources.memory_mib();
    }
    let observed = cluster.observed.get(&id);
    Some(NodeView {
        id,
        name: record.info.name.clone(),
        state: record.state,
        zone: record.info.zone.clone(),
        pool: record.info.pool.clone(),
        cpu_millis: record.info.cpu_millis,
        memory_mib: record.info.memory_mib,
        price_per_hour: record.info.price_per_hour,
        labels: record.info.labels.clone(),
        transport_addr: record.info.transport_addr.clone(),
        last_heartbeat_age_ms: observed.map(|o| now_ms.saturating_sub(o.last_heartbeat_ms)),
        replicas,
        leaders: observed.map_or(0, |o| {
            o.replicas
                .iter()
                .filter(|r| r.role == ReplicaRole::Leader)
                .count()
        }),
        instances,
        cpu_requested_millis,
        memory_requested_mib,
        ops_per_sec: observed.map_or(0.0, |o| {
            o.replicas
                .iter()
                .filter(|r| r.role == ReplicaRole::Leader)
                .map(|r| r.ops_per_sec)
                // An empty float sum is -0.0; shown as "-0.0" it would puzzle.
                .fold(0.0, |total, ops| total + ops)
        }),
        drain_waits: cluster.drain_waits.get(&id).cloned().unwrap_or_default(),
    })
}

/// What `node` reports about its replica of `group`.
fn replica_status(cluster: &Cluster, node: NodeId, group: GroupId) -> Option<&ReplicaStatus> {
    cluster
        .observed
        .get(&node)?
        .replicas
        .iter()
        .find(|r| r.group == group)
}

/// The load of a partition as its leader reported it, with the report's age.
fn partition_load(
    cluster: &Cluster,
    leader: NodeId,
    group: GroupId,
    members: &[MemberView],
    now_ms: u64,
) -> Option<PartitionLoad> {
    let report = replica_status(cluster, leader, group)?;
    let last_heartbeat_ms = cluster.observed.get(&leader)?.last_heartbeat_ms;
    let apply_lag_entries = members
        .iter()
        .filter(|m| m.alive)
        .filter_map(|m| m.applied_index)
        .map(|applied| report.applied_index.saturating_sub(applied))
        .max()
        .unwrap_or(0);
    Some(PartitionLoad {
        ops_per_sec: report.ops_per_sec,
        p99_us: report.p99_us,
        applied_index: report.applied_index,
        state_bytes: report.state_bytes,
        apply_lag_entries,
        observed_age_ms: now_ms.saturating_sub(last_heartbeat_ms),
    })
}

/// Every partition of `service`, with ages measured at `now_ms`.
pub fn partition_views(cluster: &Cluster, service: &Service, now_ms: u64) -> Vec<PartitionView> {
    let spec = service.spec();
    if spec.kind != ServiceKind::Replicated {
        return Vec::new();
    }
    let ranges = partition_ranges(spec.partitions);
    service
        .placement
        .partitions
        .iter()
        .enumerate()
        .map(|(index, design)| {
            let partition = index as u32;
            let group = service.group(partition);
            let observed = cluster.group_observed(group);
            let mut nodes: BTreeSet<NodeId> = design.members.iter().copied().collect();
            if let Some(observed) = &observed {
                nodes.extend(observed.voters.iter().chain(&observed.learners));
            }
            // Designed members first, in design order, then the ones leaving.
            let mut ordered: Vec<NodeId> = design.members.clone();
            ordered.extend(nodes.iter().filter(|n| !design.members.contains(n)));
            let members: Vec<MemberView> = ordered
                .iter()
                .map(|&node_id| MemberView {
                    node_id,
                    name: cluster.node_name(node_id),
                    addr: cluster.node_addr(node_id),
                    role: cluster.replica_role(node_id, group),
                    designed: design.members.contains(&node_id),
                    alive: cluster.is_alive(node_id),
                    resp_addr: cluster.node_resp_addr(node_id, &spec.name),
                    applied_index: replica_status(cluster, node_id, group).map(|r| r.applied_index),
                })
                .collect();
            let load = observed
                .as_ref()
                .and_then(|o| partition_load(cluster, o.leader, group, &members, now_ms));
            PartitionView {
                service: spec.name.clone(),
                partition,
                group,
                slots: ranges[index],
                leader: observed.as_ref().map(|o| LeaderView {
                    node_id: o.leader,
                    name: cluster.node_name(o.leader),
                    addr: cluster.node_addr(o.leader),
                    term: o.term,
                    resp_addr: cluster.node_resp_addr(o.leader, &spec.name),
                }),
                member_addrs: members
                    .iter()
                    .filter(|m| m.alive)
                    .map(|m| m.addr.clone())
                    .collect(),
                members,
                replicas: spec.replicas,
                replication_factor_met: cluster.replication_factor_met(service, partition),
                load,
            }
        })
        .collect()
}

/// The service as the API shows it.
pub fn service_view(cluster: &Cluster, service: &Service) -> ServiceView {
    let spec = service.spec();
    let mut status = ServiceStatus {
        partitions_with_leader: 0,
        partitions_replicated: 0,
        partitions_unplaced: 0,
        instances_assigned: 0,
        instances_ready: 0,
        completions_succeeded: 0,
        job_phase: service.placement.job_phase,
    };
    for (index, design) in service.placement.partitions.iter().enumerate() {
        let partition = index as u32;
        if design.members.is_empty() {
            status.partitions_unplaced += 1;
        }
        if cluster.group_observed(service.group(partition)).is_some() {
            status.partitions_with_leader += 1;
        }
        if cluster.replication_factor_met(service, partition) {
            status.partitions_replicated += 1;
        }
    }
    let mut instances = Vec::new();
    for instance in &service.placement.instances {
        match instance.phase {
            InstancePhase::Assigned => {
                status.instances_assigned += 1;
                let observed = cluster
                    .observed
                    .get(&instance.node)
                    .and_then(|o| o.instances.iter().find(|s| s.id == instance.id));
                let ready = observed.is_some_and(|s| s.state == InstanceState::Ready);
                status.instances_ready += u32::from(ready);
                let node = cluster.nodes.get(&instance.node);
                let host = node.and_then(|n| {
                    n.info
                        .transport_addr
                        .rsplit_once(':')
                        .map(|(h, _)| h.to_string())
                });
                let port = crate::assign::instance_port(spec.port, &instance.id);
                instances.push(InstanceView {
                    id: instance.id.clone(),
                    node: node.map_or_else(|| instance.node.to_string(), |n| n.info.name.clone()),
                    addr: host.zip(port).map(|(h, p)| format!("{h}:{p}")),
                    ready,
                    restarts: observed.map_or(0, |s| s.restarts),
                    reason: observed.and_then(|s| s.reason.clone()),
                    oom_kills: observed.map_or(0, |s| s.oom_kills),
                    message: observed.and_then(|s| s.message.clone()),
                });
            }
            InstancePhase::Succeeded => status.completions_succeeded += 1,
            InstancePhase::Failed { .. } => {}
        }
    }
    ServiceView {
        name: spec.name.clone(),
        kind: spec.kind,
        id: service.record.id,
        generation: service.record.generation,
        spec: spec.clone(),
        status,
        instances,
    }
}
