//! What each node must run: the answer to its heartbeat, derived from the design.

use stator_api::agent::{
    Assignments, ClusterMember, ClusterPartition, ClusterService, InstanceAssignment, Member,
    ReplicaAssignment,
};
use stator_api::ids::NodeId;
use stator_api::slot::partition_ranges;
use stator_api::spec::{AppSpec, ServiceKind};

use crate::model::{Cluster, InstancePhase, NodeState};

/// The full desired state of `node`.
///
/// A node hosts a partition replica while the design includes it, and also while the
/// group still counts it as a member (a move under way): stopping it before the leader
/// has removed it from the membership would take a voter away early. When no live leader
/// is reported, the node's own view of the membership decides, for the same reason.
pub fn assignments_for(cluster: &Cluster, node: NodeId) -> Assignments {
    let mut assignments = Assignments {
        draining: cluster.node_state(node) == NodeState::Draining,
        ..Assignments::default()
    };
    let own_report = cluster.observed.get(&node);
    let leader_moves = crate::leaders::leader_moves(cluster);
    for service in cluster.services.values() {
        let spec = service.spec();
        match spec.kind {
            ServiceKind::Replicated => {
                for (index, design) in service.placement.partitions.iter().enumerate() {
                    if design.members.is_empty() {
                        continue;
                    }
                    let partition = index as u32;
                    let group = service.group(partition);
                    let designed = design.members.contains(&node);
                    let still_member = match cluster.group_observed(group) {
                        Some(observed) => {
                            observed.voters.contains(&node) || observed.learners.contains(&node)
                        }
                        None => own_report.is_some_and(|o| {
                            o.replicas.iter().any(|r| {
                                r.group == group
                                    && (r.voters.contains(&node) || r.learners.contains(&node))
                            })
                        }),
                    };
                    if !designed && !still_member {
                        continue;
                    }
                    assignments.replicas.push(ReplicaAssignment {
                        group,
                        service: spec.name.clone(),
                        partition,
                        app: spec.app.clone(),
                        members: design
                            .members
                            .iter()
                            .map(|&node_id| Member {
                                node_id,
                                addr: cluster.node_addr(node_id),
                            })
                            .collect(),
                        bootstrap: !design.has_had_leader && design.initial_members.contains(&node),
                        election_timeout_ms: spec.election_timeout_ms(),
                        cpu_millis: design.member_cpu_millis(node, spec.resources.cpu_millis()),
                        durability: spec.durability,
                        fsync_interval_ms: spec.fsync_interval_ms(),
                        memory_mib: spec.resources.memory_mib(),
                        kv_maxmemory_bytes: spec.kv_maxmemory_bytes(),
                        transfer_leader_to: leader_moves
                            .get(&group)
                            .filter(|m| m.from == node)
                            .map(|m| m.to),
                    });
                }
            }
            ServiceKind::Stateless | ServiceKind::Job => {
                let Some(kind) = service.instance_kind() else {
                    continue;
                };
                let (command, env, working_dir, container) = match &spec.app {
                    AppSpec::Process(process) => (
                        process.command.clone(),
                        process.env.clone(),
                        process.working_dir.clone(),
                        None,
                    ),
                    AppSpec::Container(container) => (
                        container.command.clone(),
                        container.env.clone(),
                        None,
                        Some(container.clone()),
                    ),
                    // Validation rejects builtin apps for instances.
                    AppSpec::Builtin(_) => continue,
                };
                for instance in &service.placement.instances {
                    if instance.node != node || instance.phase != InstancePhase::Assigned {
                        continue;
                    }
                    assignments.instances.push(InstanceAssignment {
                        id: instance.id.clone(),
                        service: spec.name.clone(),
                        kind,
                        command: command.clone(),
                        env: env.clone(),
                        working_dir: working_dir.clone(),
                        port: instance_port(spec.port, &instance.id),
                        readiness: spec.readiness.clone(),
                        cpu_millis: spec.resources.cpu_millis(),
                        memory_mib: spec.resources.memory_mib(),
                        cpu_limit_millis: spec.resources.cpu_limit_millis(),
                        container: container.clone(),
                    });
                }
            }
        }
    }
    assignments.cluster = cluster_services(cluster, &assignments.replicas);
    assignments
}

/// The slot maps of the cluster-mode kv services among `replicas` (the services a node
/// serves RESP for).
fn cluster_services(cluster: &Cluster, replicas: &[ReplicaAssignment]) -> Vec<ClusterService> {
    let names: std::collections::BTreeSet<&str> =
        replicas.iter().map(|r| r.service.as_str()).collect();
    let mut out = Vec::new();
    for name in names {
        let Some(service) = cluster.services.get(name) else {
            continue;
        };
        let spec = service.spec();
        if !spec.app.is_builtin_kv() || !spec.expose.cluster_enabled() {
            continue;
        }
        let ranges = partition_ranges(spec.partitions);
        let partitions = service
            .placement
            .partitions
            .iter()
            .enumerate()
            .map(|(index, design)| {
                let partition = index as u32;
                let group = service.group(partition);
                let observed = cluster.group_observed(group);
                let mut nodes: Vec<NodeId> = design.members.clone();
                if let Some(observed) = &observed {
                    for node in observed.voters.iter().chain(&observed.learners) {
                        if !nodes.contains(node) {
                            nodes.push(*node);
                        }
                    }
                }
                ClusterPartition {
                    partition,
                    group,
                    slots: ranges[index],
                    leader: observed.as_ref().map(|o| o.leader),
                    members: nodes
                        .into_iter()
                        .filter(|&node| cluster.is_alive(node))
                        .map(|node_id| ClusterMember {
                            node_id,
                            addr: cluster.node_addr(node_id),
                            resp_addr: cluster.node_resp_addr(node_id, name),
                        })
                        .collect(),
                }
            })
            .collect();
        out.push(ClusterService {
            service: name.to_string(),
            partitions,
            auth: spec.expose.auth.clone(),
            protected_mode: spec.expose.protected_mode,
            tls: spec.expose.tls.clone(),
        });
    }
    out
}

/// Ports spread instance ports over this many values past the spec's `port`.
pub const INSTANCE_PORT_SPREAD: u16 = 1_000;

/// The port instance `id` (`<service>-<n>`) serves on: the spec's port plus `n` modulo
/// [`INSTANCE_PORT_SPREAD`], so instances sharing a machine (every node of `stator up`
/// is 127.0.0.1) never collide.
pub fn instance_port(base: Option<u16>, id: &str) -> Option<u16> {
    let base = base?;
    let n: u16 = id
        .rsplit('-')
        .next()
        .and_then(|n| n.parse::<u64>().ok())
        .map_or(0, |n| (n % INSTANCE_PORT_SPREAD as u64) as u16);
    Some(base.saturating_add(n))
}
