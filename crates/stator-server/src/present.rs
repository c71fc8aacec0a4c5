//! Presents the cluster model as what the REST API returns: one builder per view. The
//! view types are declared once, in [`stator_api::views`]; this module only builds them.

use std::collections::BTreeSet;

use stator_api::agent::{InstanceState, ReplicaRole};
use stator_api::ids::{GroupId, NodeId};
use stator_api::slot::partition_ranges;
use stator_api::spec::ServiceKind;
use stator_api::views::{
    InstanceView, LeaderView, MemberView, NodeView, PartitionLoad, PartitionView, ServiceStatus,
    ServiceView,
};

use crate::model::{Cluster, InstancePhase, Service};

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

/// The load of a partition as its leader reported it, with the report's age.
fn partition_load(
    cluster: &Cluster,
    leader: NodeId,
    group: GroupId,
    members: &[MemberView],
    now_ms: u64,
) -> Option<PartitionLoad> {
    let report = cluster.replica_report(leader, group)?;
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
                    applied_index: cluster
                        .replica_report(node_id, group)
                        .map(|r| r.applied_index),
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
