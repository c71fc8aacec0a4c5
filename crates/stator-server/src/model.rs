//! The control plane's picture of the cluster: persisted records and observed status.
//!
//! Records (nodes, services, their designed placement) are persisted in the store under
//! [`KEY_PREFIX`]; observed status (heartbeats) lives in memory and is rebuilt from the
//! next heartbeats after a restart. The [`Cluster`] value is owned by the controller task
//! alone; everything else reads it through that task.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

use stator_api::agent::{
    InstanceKind, InstanceStatus, RegisterRequest, ReplicaRole, ReplicaStatus,
};
use stator_api::ids::{GroupId, NodeId};
use stator_api::spec::{ServiceKind, ServiceSpec};
pub(crate) use stator_api::views::{JobPhase, NodeState};

/// Root of every key the server writes.
pub const KEY_PREFIX: &str = "/stator/";
/// Node records: `/stator/nodes/<id, zero-padded>`.
pub const NODES_PREFIX: &str = "/stator/nodes/";
/// Service records: `/stator/services/<name>`.
pub const SERVICES_PREFIX: &str = "/stator/services/";
/// Designed placement per service: `/stator/placements/<name>`.
pub const PLACEMENTS_PREFIX: &str = "/stator/placements/";
/// Counters and secrets that must survive a restart.
pub const META_PREFIX: &str = "/stator/meta/";

/// A registered node, as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Fresh id given at registration.
    pub id: NodeId,
    /// What the agent said about itself.
    pub info: RegisterRequest,
    /// Lifecycle state.
    pub state: NodeState,
    /// Wall-clock time of registration, ms since the Unix epoch.
    pub registered_at_ms: u64,
    /// The per-node secret an agent restarted on the same data dir proves to keep this
    /// id (stored like the cluster secret; empty for records that predate identities).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_secret: String,
    /// Whether a drain was asked for: kept while the node is lost, so a node lost while
    /// draining rejoins `draining` (its drain goes on) instead of `ready`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drain_requested: bool,
}

/// A service, as persisted: the spec plus the id its partition groups derive from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// Never reused, so a re-created service never meets the old one's groups.
    pub id: u64,
    /// The spec as last applied.
    pub spec: ServiceSpec,
    /// Bumped by every apply that changed the spec.
    pub generation: u64,
}

/// The designed state of one partition group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionDesign {
    /// The designed voters; empty until the partition is first placed.
    pub members: Vec<NodeId>,
    /// The members the group was created with (they alone may bootstrap it).
    pub initial_members: Vec<NodeId>,
    /// Whether any replica ever reported a leader: from then on the group exists and
    /// members change only through the leader, one at a time.
    pub has_had_leader: bool,
    /// CPU request per member in millicores where the autoscaler resized it; members
    /// absent here request the spec's `resources.cpu`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cpu_millis: BTreeMap<NodeId, u64>,
}

impl PartitionDesign {
    /// The CPU request of the member on `node`, in millicores.
    pub fn member_cpu_millis(&self, node: NodeId, spec_cpu_millis: u64) -> u64 {
        self.cpu_millis
            .get(&node)
            .copied()
            .unwrap_or(spec_cpu_millis)
    }
}

/// Where a stateless or job instance stands, as the server tracks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum InstancePhase {
    /// Assigned to its node.
    Assigned,
    /// Job attempt exited 0.
    Succeeded,
    /// Job attempt failed; a retry is placed at `retry_at_ms` if any are left.
    Failed {
        /// When the next attempt may start, ms since the Unix epoch.
        retry_at_ms: u64,
    },
}

/// One stateless instance, or one attempt of one job completion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceDesign {
    /// Unique id, as sent to the agent.
    pub id: String,
    /// The node it is assigned to.
    pub node: NodeId,
    /// Stateless: 0. Job: which completion this attempt works on.
    pub slot: u32,
    /// Job: attempt number, from 1. Stateless: 1.
    pub attempt: u32,
    /// Where it stands.
    pub phase: InstancePhase,
}

/// The designed placement of a service, as persisted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Replicated: one design per partition.
    pub partitions: Vec<PartitionDesign>,
    /// Stateless and job: live instances and finished job attempts (latest per slot).
    pub instances: Vec<InstanceDesign>,
    /// Next number for an instance id (ids are never reused).
    pub next_instance: u64,
    /// Job only.
    pub job_phase: Option<JobPhase>,
}

/// The last heartbeat of a node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeObserved {
    /// When it arrived, ms since the Unix epoch.
    pub last_heartbeat_ms: u64,
    /// Replicas it reported.
    pub replicas: Vec<ReplicaStatus>,
    /// Instances it reported.
    pub instances: Vec<InstanceStatus>,
    /// The agent's number for `replicas` (`Heartbeat::replicas_view`): its next
    /// heartbeat may carry only the changes since it. `None` after a registration or a
    /// server restart, and for agents that send no numbered views.
    pub replicas_view: Option<u64>,
}

/// A partition group as its live leader reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupObserved {
    /// The leader that reported.
    pub leader: NodeId,
    /// Its term.
    pub term: u64,
    /// Voters of the effective membership.
    pub voters: BTreeSet<NodeId>,
    /// Learners of the effective membership.
    pub learners: BTreeSet<NodeId>,
}

/// A service with its designed placement.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// The persisted record.
    pub record: ServiceRecord,
    /// The designed placement.
    pub placement: Placement,
}

impl Service {
    /// The group of partition `partition`.
    pub fn group(&self, partition: u32) -> GroupId {
        GroupId::new(self.record.id, partition)
    }

    /// The spec.
    pub fn spec(&self) -> &ServiceSpec {
        &self.record.spec
    }

    /// The kind of instance this service runs, if it runs instances.
    pub fn instance_kind(&self) -> Option<InstanceKind> {
        match self.record.spec.kind {
            ServiceKind::Replicated => None,
            ServiceKind::Stateless => Some(InstanceKind::Stateless),
            ServiceKind::Job => Some(InstanceKind::Job),
        }
    }
}

/// Everything the controllers decide from. Owned by the controller task.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    /// Registered nodes by id (lost ones included until pruned).
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    /// Last heartbeat per node.
    pub observed: BTreeMap<NodeId, NodeObserved>,
    /// Services by name.
    pub services: BTreeMap<String, Service>,
    /// Per node, kv service -> the `host:port` where the node serves the Redis Cluster
    /// protocol for it, as its last heartbeat reported.
    pub resp_addrs: BTreeMap<NodeId, BTreeMap<String, String>>,
    /// Per draining node, why its drain cannot go on (one line per blocked partition),
    /// as the last reconcile pass found. In memory: the next pass finds it again.
    pub drain_waits: BTreeMap<NodeId, Vec<String>>,
}

impl Cluster {
    /// The node's state, `Lost` for an unknown id.
    pub fn node_state(&self, id: NodeId) -> NodeState {
        self.nodes.get(&id).map_or(NodeState::Lost, |n| n.state)
    }

    /// Whether some partition's design names `node` as a member.
    pub fn designs_member(&self, node: NodeId) -> bool {
        self.services.values().any(|service| {
            service
                .placement
                .partitions
                .iter()
                .any(|design| design.members.contains(&node))
        })
    }

    /// Whether some partition of a durable service (`disk` or `periodic`) names `node` as
    /// a member: its store on that node may hold acknowledged writes.
    pub fn designs_durable_member(&self, node: NodeId) -> bool {
        self.services.values().any(|service| {
            service.record.spec.durability.is_durable()
                && service
                    .placement
                    .partitions
                    .iter()
                    .any(|design| design.members.contains(&node))
        })
    }

    /// Whether `id` is a registered node that is not lost.
    pub fn is_alive(&self, id: NodeId) -> bool {
        self.node_state(id).is_alive()
    }

    /// The node's name, or `node-<id>` when unknown.
    pub fn node_name(&self, id: NodeId) -> String {
        self.nodes
            .get(&id)
            .map_or_else(|| format!("node-{id}"), |n| n.info.name.clone())
    }

    /// The node's transport address, empty when unknown.
    pub fn node_addr(&self, id: NodeId) -> String {
        self.nodes
            .get(&id)
            .map(|n| n.info.transport_addr.clone())
            .unwrap_or_default()
    }

    /// Where the live node `id` serves RESP for `service`, if it reported that.
    pub fn node_resp_addr(&self, id: NodeId, service: &str) -> Option<String> {
        if !self.is_alive(id) {
            return None;
        }
        self.resp_addrs.get(&id)?.get(service).cloned()
    }

    /// What `node` last reported about its replica of `group`.
    pub fn replica_report(&self, node: NodeId, group: GroupId) -> Option<&ReplicaStatus> {
        self.observed
            .get(&node)?
            .replicas
            .iter()
            .find(|r| r.group == group)
    }

    /// The group as reported by its leader: among live nodes' reports of a leader role,
    /// the one with the highest term.
    pub fn group_observed(&self, group: GroupId) -> Option<GroupObserved> {
        self.observed
            .iter()
            .filter(|(node, _)| self.is_alive(**node))
            .flat_map(|(node, observed)| {
                observed
                    .replicas
                    .iter()
                    .filter(move |r| r.group == group && r.role == ReplicaRole::Leader)
                    .map(move |r| (*node, r))
            })
            .max_by_key(|(_, r)| r.term)
            .map(|(node, r)| GroupObserved {
                leader: node,
                term: r.term,
                voters: r.voters.iter().copied().collect(),
                learners: r.learners.iter().copied().collect(),
            })
    }

    /// The role `node` reports for `group`, if it reports the group at all.
    pub fn replica_role(&self, node: NodeId, group: GroupId) -> Option<ReplicaRole> {
        self.observed
            .get(&node)?
            .replicas
            .iter()
            .find(|r| r.group == group)
            .map(|r| r.role)
    }

    /// Whether `node` reports it lost the state of its replica of `group` (see
    /// [`stator_api::agent::ReplicaStatus::forgotten`]).
    pub fn reports_forgotten(&self, node: NodeId, group: GroupId) -> bool {
        self.observed
            .get(&node)
            .is_some_and(|o| o.replicas.iter().any(|r| r.group == group && r.forgotten))
    }

    /// Whether a live replica of `group` reports a leader.
    pub fn any_leader_reported(&self, group: GroupId) -> bool {
        self.observed.iter().any(|(node, observed)| {
            self.is_alive(*node)
                && observed
                    .replicas
                    .iter()
                    .any(|r| r.group == group && r.leader.is_some())
        })
    }

    /// Whether the partition's group runs exactly its designed voters, all on live nodes,
    /// and the design is complete.
    pub fn replication_factor_met(&self, service: &Service, partition: u32) -> bool {
        let design = &service.placement.partitions[partition as usize];
        let designed: BTreeSet<NodeId> = design.members.iter().copied().collect();
        designed.len() == service.spec().replicas as usize
            && designed.iter().all(|n| self.is_alive(*n))
            && self
                .group_observed(service.group(partition))
                .is_some_and(|o| o.voters == designed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_state_names_match_json() {
        for state in NodeState::ALL {
            assert_eq!(
                serde_json::to_string(&state).unwrap(),
                format!("\"{}\"", state.as_str())
            );
        }
    }
}
