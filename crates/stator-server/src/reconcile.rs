//! The controllers' decisions: a pure function from the cluster and the time to actions.
//!
//! [`reconcile`] looks at the whole [`Cluster`] (level-triggered: it never asks what
//! changed) and returns the [`ReconcileAction`]s that move it toward its specs, plus when to look
//! again. [`apply_action`] applies one action to a cluster; the controller task applies
//! them to its state, persists the result and publishes events. Neither reads a clock
//! or does IO, so both are tested here with plain values.
//!
//! Controllers, in the order they run within one pass:
//! 1. node lifecycle: a node without a heartbeat for the grace is lost (it keeps its
//!    place in every design: only the repair below replaces it, and a lost node whose
//!    agent proves its identity comes back ready, [`ReconcileAction::MarkNodeRejoined`],
//!    or draining when it was lost while draining: the drain is remembered, also for
//!    an agent of the same name that joins as a new node, [`drain_carried_over`]);
//!    a draining node that hosts nothing any more is drained;
//! 2. replica groups: place new partitions on distinct nodes (zones), mark groups started
//!    once a leader is reported, then replace one member at a time when its node is
//!    lost or draining;
//! 3. stateless services: keep `instances` instances on ready nodes;
//! 4. jobs: place each completion, retry failures with doubling back-off, finish.

use std::collections::{BTreeMap, BTreeSet};

use stator_api::agent::InstanceState;
use stator_api::ids::{GroupId, NodeId};
use stator_api::spec::{PlacementPolicy, ServiceKind, ServiceSpec, SpreadOver, MAX_JOB_BACKOFF_MS};
use stator_planning::{
    place_partition, place_replacement, ClusterView, Node, PlacementError, PlacementRequest,
    Policy, Replica, Resources, SpreadDomain, WorkloadKind,
};

use crate::model::{
    Cluster, InstanceDesign, InstancePhase, JobPhase, NodeState, PartitionDesign, Service,
};

/// Longest wait between two reconcile passes when nothing is due: bounds how late a
/// decision that depends on something the pass does not predict (a heartbeat) can be.
pub const MAX_RECONCILE_INTERVAL_MS: u64 = 500;

/// Moves of replicas off one draining node that may be in flight at once: one, so a
/// drain never takes more than one member of any group away before it has been replaced.
pub const MAX_MOVES_PER_DRAINING_NODE: usize = 1;

/// Run time the planner assumes for a job attempt when binning jobs by end time; stator
/// does not know the real one.
pub const ASSUMED_JOB_DURATION_S: u64 = 600;

/// Partition key under which stateless instances and job attempts are placed, so the
/// planner's anti-affinity spreads one service's instances over distinct nodes.
const INSTANCE_PARTITION_KEY: u32 = 0;
/// Partition key used when there are fewer nodes than instances: no anti-affinity.
const INSTANCE_OVERFLOW_PARTITION_KEY: u32 = u32::MAX;

/// One change the controllers want.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReconcileAction {
    /// The node missed its heartbeat grace.
    MarkNodeLost {
        /// The node.
        node: NodeId,
    },
    /// A lost node's agent came back and proved its identity (the per-node secret on
    /// its data dir): the node is ready again under the same id, with a fresh grace from
    /// `at_ms`. Its durable replicas still designed on it reload from its disk and catch
    /// up the tail; members replaced while it was away are no longer assigned to it (the
    /// agent deletes their stores); its `memory` replicas report themselves forgotten.
    /// Decided by the controller on registration, never by [`reconcile`].
    MarkNodeRejoined {
        /// The node.
        node: NodeId,
        /// When it registered again (ms since the Unix epoch).
        at_ms: u64,
    },
    /// The draining node hosts nothing any more.
    MarkNodeDrained {
        /// The node.
        node: NodeId,
    },
    /// First placement of a partition: its initial members.
    PlacePartition {
        /// Service name.
        service: String,
        /// Partition index.
        partition: u32,
        /// Initial members, distinct nodes (zones when asked).
        members: Vec<NodeId>,
    },
    /// Every member of a `memory` partition lost its state: place it again, empty.
    ResetPartition {
        /// Service name.
        service: String,
        /// Partition index.
        partition: u32,
    },
    /// A replica of the partition reported a leader: the group exists.
    MarkGroupStarted {
        /// Service name.
        service: String,
        /// Partition index.
        partition: u32,
    },
    /// Designed membership changes by one: `remove` leaves, `add` joins.
    ReplaceMember {
        /// Service name.
        service: String,
        /// Partition index.
        partition: u32,
        /// The member leaving the design.
        remove: NodeId,
        /// The member joining it.
        add: NodeId,
        /// Why.
        reason: ReplaceReason,
    },
    /// A new stateless instance or job attempt.
    PlaceInstance {
        /// Service name.
        service: String,
        /// The node chosen.
        node: NodeId,
        /// Job completion index (0 for stateless).
        slot: u32,
        /// Job attempt number, from 1 (1 for stateless).
        attempt: u32,
    },
    /// A stateless instance is no longer wanted (its node is lost or draining, or the
    /// service shrank).
    RemoveInstance {
        /// Service name.
        service: String,
        /// Instance id.
        id: String,
    },
    /// A job attempt ended.
    FinishInstance {
        /// Service name.
        service: String,
        /// Instance id.
        id: String,
        /// Whether it exited 0.
        succeeded: bool,
        /// When a retry may start (ignored on success).
        retry_at_ms: u64,
    },
    /// The job as a whole ended.
    SetJobPhase {
        /// Service name.
        service: String,
        /// The new phase.
        phase: JobPhase,
    },
    /// Autoscaler: a member's CPU request changes in place (vertical scaling).
    ResizeReplica {
        /// Service name.
        service: String,
        /// Partition index.
        partition: u32,
        /// The member's node.
        node: NodeId,
        /// The new request, millicores.
        cpu_millis: u64,
    },
    /// Autoscaler: a member moves by live migration to a node with room (scale-out
    /// rebalancing), with the request it gets there.
    MigrateMember {
        /// Service name.
        service: String,
        /// Partition index.
        partition: u32,
        /// The member leaving.
        from: NodeId,
        /// The member joining.
        to: NodeId,
        /// Its CPU request on `to`, millicores.
        cpu_millis: u64,
    },
    /// Consolidator: a ready node is emptied (it drains like `stator drain`) so it can
    /// be released.
    MarkNodeDraining {
        /// The node.
        node: NodeId,
    },
}

/// Why a member is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplaceReason {
    /// Its node is lost.
    NodeLost,
    /// Its node is draining: a live migration.
    NodeDraining,
    /// Its node restarted and lost the replica's state (a `memory` replica, or a store
    /// that failed its checksums): it must leave the group before it may rejoin it.
    ReplicaForgotten,
}

/// The outcome of one pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decision {
    /// What to change, in order.
    pub actions: Vec<ReconcileAction>,
    /// Things the pass could not do (e.g. not enough nodes), for logs and status.
    pub problems: Vec<String>,
    /// Per draining node, the partitions whose move off it cannot be planned, and why.
    pub drain_waits: BTreeMap<NodeId, Vec<String>>,
    /// Run again at the latest at this time (ms since the Unix epoch).
    pub next_run_ms: u64,
}

/// Decides what to change, given the cluster at `now_ms` and the heartbeat grace.
pub fn reconcile(cluster: &Cluster, now_ms: u64, node_grace_ms: u64) -> Decision {
    let mut pass = Pass {
        scratch: cluster.clone(),
        decision: Decision {
            next_run_ms: now_ms + MAX_RECONCILE_INTERVAL_MS,
            ..Decision::default()
        },
        now_ms,
        view: ClusterView::new(),
    };
    pass.node_lifecycle(node_grace_ms);
    pass.view = cluster_view(&pass.scratch);
    let names: Vec<String> = pass.scratch.services.keys().cloned().collect();
    let mut moves_in_flight = moves_in_flight_per_draining_node(&pass.scratch);
    for name in &names {
        match pass.scratch.services[name].spec().kind {
            ServiceKind::Replicated => pass.replica_groups(name, &mut moves_in_flight),
            ServiceKind::Stateless => pass.stateless(name),
            ServiceKind::Job => pass.job(name),
        }
    }
    pass.drained_nodes();
    pass.decision
}

struct Pass {
    /// The cluster with this pass's actions applied so far, so later decisions see
    /// earlier ones.
    scratch: Cluster,
    decision: Decision,
    now_ms: u64,
    /// The planner's view of `scratch`, kept in step with placements.
    view: ClusterView,
}

impl Pass {
    fn push(&mut self, action: ReconcileAction) {
        apply_action(&mut self.scratch, &action);
        self.decision.actions.push(action);
    }

    fn run_again_by(&mut self, at_ms: u64) {
        self.decision.next_run_ms = self.decision.next_run_ms.min(at_ms.max(self.now_ms));
    }

    fn node_lifecycle(&mut self, node_grace_ms: u64) {
        let nodes: Vec<(NodeId, NodeState, u64)> = self
            .scratch
            .nodes
            .values()
            .map(|n| {
                let last_ms = self
                    .scratch
                    .observed
                    .get(&n.id)
                    .map_or(n.registered_at_ms, |o| o.last_heartbeat_ms);
                (n.id, n.state, last_ms)
            })
            .collect();
        for (node, state, last_ms) in nodes {
            if !state.is_alive() {
                continue;
            }
            let deadline_ms = last_ms.saturating_add(node_grace_ms);
            if self.now_ms > deadline_ms {
                self.push(ReconcileAction::MarkNodeLost { node });
            } else {
                self.run_again_by(deadline_ms + 1);
            }
        }
    }

    fn drained_nodes(&mut self) {
        let draining: Vec<NodeId> = self
            .scratch
            .nodes
            .values()
            .filter(|n| n.state == NodeState::Draining)
            .map(|n| n.id)
            .collect();
        for node in draining {
            if !hosts_anything(&self.scratch, node) {
                self.push(ReconcileAction::MarkNodeDrained { node });
            }
        }
    }

    fn replica_groups(&mut self, name: &str, moves_in_flight: &mut BTreeMap<NodeId, usize>) {
        let partitions = self.scratch.services[name].placement.partitions.len() as u32;
        for partition in 0..partitions {
            let service = &self.scratch.services[name];
            let design = service.placement.partitions[partition as usize].clone();
            let request = replica_request(service.spec(), partition);
            let policy = policy_of(service.spec());
            if design.members.is_empty() {
                match place_partition(&self.view, &request, policy) {
                    Ok(members) => {
                        for &node in &members {
                            self.view.add_replica(replica_of(&request, node));
                        }
                        self.push(ReconcileAction::PlacePartition {
                            service: name.to_string(),
                            partition,
                            members,
                        });
                    }
                    Err(error) => self.problem(error),
                }
                continue;
            }
            let group = service.group(partition);
            if !design.has_had_leader {
                // Until a leader exists the initial members may still be bootstrapping
                // with the initial set: changing the design now could create two
                // groups with different first configurations. Wait.
                if self.scratch.any_leader_reported(group) {
                    self.push(ReconcileAction::MarkGroupStarted {
                        service: name.to_string(),
                        partition,
                    });
                }
                continue;
            }
            if all_members_forgot(&self.scratch, &design.members, group) {
                // Only a `memory` group can lose every copy (a whole-cluster restart);
                // no member hosts it any more, so a fresh group cannot meet the old one.
                self.push(ReconcileAction::ResetPartition {
                    service: name.to_string(),
                    partition,
                });
                continue;
            }
            let Some(observed) = self.scratch.group_observed(group) else {
                // No live leader: an election is running, or quorum is lost. Either way
                // only the group can change its membership; wait for a leader.
                continue;
            };
            let Some((remove, reason)) = member_to_replace(
                &self.scratch,
                group,
                &design,
                &observed.voters,
                moves_in_flight,
            ) else {
                continue;
            };
            let survivors: Vec<NodeId> = design
                .members
                .iter()
                .copied()
                .filter(|&n| n != remove)
                .collect();
            match place_replacement(&self.view, &request, &survivors, policy) {
                Ok(add) if add == remove => {
                    // A member that forgot its state may only come back once the group
                    // has removed it; until another node fits, the group runs without it.
                    self.decision.problems.push(format!(
                        "{name}/{partition}: node {remove} lost its replica's state and no other node fits a replacement"
                    ));
                }
                Ok(add) => {
                    self.view.add_replica(replica_of(&request, add));
                    if reason == ReplaceReason::NodeDraining {
                        *moves_in_flight.entry(remove).or_default() += 1;
                    }
                    self.push(ReconcileAction::ReplaceMember {
                        service: name.to_string(),
                        partition,
                        remove,
                        add,
                        reason,
                    });
                }
                Err(error) => {
                    if reason == ReplaceReason::NodeDraining {
                        self.decision
                            .drain_waits
                            .entry(remove)
                            .or_default()
                            .push(format!("partition {name}/{partition}: {error}"));
                    }
                    self.problem(error)
                }
            }
        }
    }

    fn stateless(&mut self, name: &str) {
        let service = &self.scratch.services[name];
        let wanted = service.spec().instances as usize;
        let instances = service.placement.instances.clone();
        // Instances on lost nodes are gone.
        for instance in &instances {
            if !self.scratch.is_alive(instance.node) {
                self.push(ReconcileAction::RemoveInstance {
                    service: name.to_string(),
                    id: instance.id.clone(),
                });
            }
        }
        let on_ready: Vec<&InstanceDesign> = instances
            .iter()
            .filter(|i| self.scratch.node_state(i.node) == NodeState::Ready)
            .collect();
        for _ in on_ready.len()..wanted {
            if !self.place_instance(name, 0, 1) {
                break;
            }
        }
        if on_ready.len() > wanted {
            // Shrink: drop the newest extras first, the oldest are most likely warm.
            for instance in on_ready.iter().rev().take(on_ready.len() - wanted) {
                self.push(ReconcileAction::RemoveInstance {
                    service: name.to_string(),
                    id: instance.id.clone(),
                });
            }
        }
        // Instances on draining nodes stop once enough replacements are up, so the
        // service never runs below its count during a drain.
        let service = &self.scratch.services[name];
        let serving_on_ready = service
            .placement
            .instances
            .iter()
            .filter(|i| self.scratch.node_state(i.node) == NodeState::Ready)
            .filter(|i| {
                matches!(
                    instance_report(&self.scratch, i),
                    Some(InstanceState::Ready | InstanceState::Running)
                )
            })
            .count();
        if serving_on_ready >= wanted {
            let leaving: Vec<String> = service
                .placement
                .instances
                .iter()
                .filter(|i| {
                    matches!(
                        self.scratch.node_state(i.node),
                        NodeState::Draining | NodeState::Drained
                    )
                })
                .map(|i| i.id.clone())
                .collect();
            for id in leaving {
                self.push(ReconcileAction::RemoveInstance {
                    service: name.to_string(),
                    id,
                });
            }
        }
    }

    fn job(&mut self, name: &str) {
        let service = &self.scratch.services[name];
        if service.placement.job_phase != Some(JobPhase::Running) {
            return;
        }
        let spec = service.spec().clone();
        let max_attempts = spec.retries + 1;
        let mut succeeded_slots = 0;
        let mut failed_for_good = false;
        for slot in 0..spec.completions {
            let latest = self.scratch.services[name]
                .placement
                .instances
                .iter()
                .filter(|i| i.slot == slot)
                .max_by_key(|i| i.attempt)
                .cloned();
            let Some(latest) = latest else {
                self.place_instance(name, slot, 1);
                continue;
            };
            match latest.phase {
                InstancePhase::Succeeded => succeeded_slots += 1,
                InstancePhase::Assigned => {
                    let outcome = if !self.scratch.is_alive(latest.node) {
                        Some(false)
                    } else {
                        match instance_report(&self.scratch, &latest) {
                            Some(InstanceState::Succeeded) => Some(true),
                            Some(InstanceState::Failed) => Some(false),
                            _ => None,
                        }
                    };
                    if let Some(succeeded) = outcome {
                        let retry_at_ms =
                            self.now_ms + job_backoff_ms(spec.backoff_ms, latest.attempt);
                        self.push(ReconcileAction::FinishInstance {
                            service: name.to_string(),
                            id: latest.id.clone(),
                            succeeded,
                            retry_at_ms,
                        });
                        if succeeded {
                            succeeded_slots += 1;
                        } else if latest.attempt >= max_attempts {
                            failed_for_good = true;
                        } else {
                            self.run_again_by(retry_at_ms);
                        }
                    }
                }
                InstancePhase::Failed { retry_at_ms } => {
                    if latest.attempt >= max_attempts {
                        failed_for_good = true;
                    } else if self.now_ms >= retry_at_ms {
                        self.place_instance(name, slot, latest.attempt + 1);
                    } else {
                        self.run_again_by(retry_at_ms);
                    }
                }
            }
        }
        let phase = if failed_for_good {
            Some(JobPhase::Failed)
        } else if succeeded_slots == spec.completions {
            Some(JobPhase::Succeeded)
        } else {
            None
        };
        if let Some(phase) = phase {
            self.push(ReconcileAction::SetJobPhase {
                service: name.to_string(),
                phase,
            });
        }
    }

    /// Places one instance of `name`; false when no node fits (recorded as a problem).
    fn place_instance(&mut self, name: &str, slot: u32, attempt: u32) -> bool {
        let spec = self.scratch.services[name].spec();
        let kind = match spec.kind {
            ServiceKind::Job => WorkloadKind::Job {
                expected_duration_s: ASSUMED_JOB_DURATION_S,
            },
            _ => WorkloadKind::LongRunning,
        };
        let mut request = PlacementRequest {
            service: name.to_string(),
            partition: INSTANCE_PARTITION_KEY,
            replicas: 1,
            resources: resources_of(spec),
            spread: SpreadDomain::Node,
            kind,
            now_s: self.now_ms / 1000,
            node_selector: Vec::new(),
        };
        let policy = policy_of(spec);
        let placed = place_partition(&self.view, &request, policy).or_else(|_| {
            // More instances than nodes: share nodes rather than run fewer.
            request.partition = INSTANCE_OVERFLOW_PARTITION_KEY;
            place_partition(&self.view, &request, policy)
        });
        match placed {
            Ok(nodes) => {
                let node = nodes[0];
                request.partition = INSTANCE_PARTITION_KEY;
                self.view.add_replica(replica_of(&request, node));
                self.push(ReconcileAction::PlaceInstance {
                    service: name.to_string(),
                    node,
                    slot,
                    attempt,
                });
                true
            }
            Err(error) => {
                self.problem(error);
                false
            }
        }
    }

    fn problem(&mut self, error: PlacementError) {
        self.decision.problems.push(error.to_string());
    }
}

/// Which member of a started group to replace now, if any.
///
/// One member at a time: when the observed voters equal the design (the last change is
/// done), a member on a lost node goes first, then one on a draining node (within the
/// per-node move budget). While a change is in flight, only a joining member whose node
/// was lost before it became a voter may be swapped for another.
fn member_to_replace(
    cluster: &Cluster,
    group: GroupId,
    design: &PartitionDesign,
    observed_voters: &BTreeSet<NodeId>,
    moves_in_flight: &BTreeMap<NodeId, usize>,
) -> Option<(NodeId, ReplaceReason)> {
    let designed: BTreeSet<NodeId> = design.members.iter().copied().collect();
    let stable = &designed == observed_voters;
    let lost = |n: &&NodeId| !cluster.is_alive(**n);
    let forgot = |n: &&NodeId| cluster.reports_forgotten(**n, group);
    if !stable {
        return design
            .members
            .iter()
            .filter(|n| !observed_voters.contains(n))
            .find(lost)
            .map(|&n| (n, ReplaceReason::NodeLost));
    }
    if let Some(&node) = design.members.iter().find(lost) {
        return Some((node, ReplaceReason::NodeLost));
    }
    if let Some(&node) = design.members.iter().find(forgot) {
        return Some((node, ReplaceReason::ReplicaForgotten));
    }
    design
        .members
        .iter()
        .find(|n| {
            matches!(
                cluster.node_state(**n),
                NodeState::Draining | NodeState::Drained
            ) && moves_in_flight.get(n).copied().unwrap_or(0) < MAX_MOVES_PER_DRAINING_NODE
        })
        .map(|&n| (n, ReplaceReason::NodeDraining))
}

/// Whether every designed member is alive and reports it forgot the group's state.
fn all_members_forgot(cluster: &Cluster, members: &[NodeId], group: GroupId) -> bool {
    !members.is_empty()
        && members
            .iter()
            .all(|n| cluster.is_alive(*n) && cluster.reports_forgotten(*n, group))
}

/// Per draining node: partitions that no longer design it but whose group still has it
/// as a member (a move under way).
fn moves_in_flight_per_draining_node(cluster: &Cluster) -> BTreeMap<NodeId, usize> {
    let mut moves = BTreeMap::new();
    for service in cluster.services.values() {
        for (partition, design) in service.placement.partitions.iter().enumerate() {
            let Some(observed) = cluster.group_observed(service.group(partition as u32)) else {
                continue;
            };
            for node in observed.voters.iter().chain(&observed.learners) {
                if cluster.node_state(*node) == NodeState::Draining
                    && !design.members.contains(node)
                {
                    *moves.entry(*node).or_default() += 1;
                }
            }
        }
    }
    moves
}

/// Whether an agent registering as a new node under `name` inherits a drain: the newest
/// earlier record of that name was lost while draining (its drain unfinished). A drain
/// is asked for by name, so an agent that restarted without its identity (or was
/// declared lost and joined again under a fresh id) mid-drain must not quietly take
/// work again: its drain goes on, as it does for one that rejoins as itself
/// ([`ReconcileAction::MarkNodeRejoined`]).
pub(crate) fn drain_carried_over(cluster: &Cluster, name: &str) -> bool {
    cluster
        .nodes
        .values()
        .filter(|n| n.info.name == name)
        .max_by_key(|n| n.id)
        .is_some_and(|n| n.state == NodeState::Lost && n.drain_requested)
}

/// Whether `node` is designed into anything, still a member of a group, or still runs
/// replicas or instances by its own report.
pub(crate) fn hosts_anything(cluster: &Cluster, node: NodeId) -> bool {
    let designed = cluster.services.values().any(|s| {
        s.placement
            .partitions
            .iter()
            .any(|p| p.members.contains(&node))
            || s.placement
                .instances
                .iter()
                .any(|i| i.node == node && i.phase == InstancePhase::Assigned)
    });
    let in_a_group = cluster.services.values().any(|s| {
        (0..s.placement.partitions.len() as u32).any(|p| {
            cluster
                .group_observed(s.group(p))
                .is_some_and(|o| o.voters.contains(&node) || o.learners.contains(&node))
        })
    });
    let reports_work = cluster.observed.get(&node).is_some_and(|o| {
        o.replicas
            .iter()
            .any(|r| r.role != stator_api::agent::ReplicaRole::Stopped)
            || o.instances.iter().any(|i| {
                matches!(
                    i.state,
                    InstanceState::Starting | InstanceState::Running | InstanceState::Ready
                )
            })
    });
    designed || in_a_group || reports_work
}

/// What the instance's node last reported about it.
fn instance_report(cluster: &Cluster, instance: &InstanceDesign) -> Option<InstanceState> {
    cluster
        .observed
        .get(&instance.node)?
        .instances
        .iter()
        .find(|s| s.id == instance.id)
        .map(|s| s.state)
}

/// Delay before attempt `failed_attempt + 1`: the spec's back-off doubled per failed
/// attempt, capped at [`MAX_JOB_BACKOFF_MS`].
pub fn job_backoff_ms(backoff_ms: u64, failed_attempt: u32) -> u64 {
    let doublings = failed_attempt.saturating_sub(1).min(32);
    backoff_ms
        .saturating_mul(1u64 << doublings)
        .min(MAX_JOB_BACKOFF_MS)
}

/// The planner's view of the cluster: live nodes (schedulable only when ready), every
/// designed replica and assigned instance as an allocation.
pub fn cluster_view(cluster: &Cluster) -> ClusterView {
    let nodes = cluster
        .nodes
        .values()
        .filter(|n| n.state.is_alive())
        .map(|n| Node {
            id: n.id,
            name: n.info.name.clone(),
            zone: n.info.zone.clone(),
            pool: n.info.pool.clone(),
            capacity: Resources::new(n.info.cpu_millis, n.info.memory_mib),
            reserved: Resources::default(),
            price_per_hour: n.info.price_per_hour,
            labels: n.info.labels.clone(),
            schedulable: n.state == NodeState::Ready,
        })
        .collect();
    let mut replicas = Vec::new();
    for (name, service) in &cluster.services {
        let spec = service.spec();
        for (partition, design) in service.placement.partitions.iter().enumerate() {
            let request = replica_request(spec, partition as u32);
            replicas.extend(
                design
                    .members
                    .iter()
                    .filter(|n| cluster.is_alive(**n))
                    .map(|&n| {
                        let mut replica = replica_of(&request, n);
                        replica.resources.cpu_millis =
                            design.member_cpu_millis(n, request.resources.cpu_millis);
                        replica
                    }),
            );
        }
        for instance in &service.placement.instances {
            if instance.phase == InstancePhase::Assigned && cluster.is_alive(instance.node) {
                replicas.push(Replica {
                    service: name.clone(),
                    partition: INSTANCE_PARTITION_KEY,
                    node: instance.node,
                    resources: resources_of(spec),
                    kind: WorkloadKind::LongRunning,
                    expected_end_s: None,
                    state_bytes: 0,
                });
            }
        }
    }
    ClusterView::from_parts(nodes, replicas)
}

fn replica_request(spec: &ServiceSpec, partition: u32) -> PlacementRequest {
    PlacementRequest {
        service: spec.name.clone(),
        partition,
        replicas: spec.replicas,
        resources: resources_of(spec),
        spread: match spec.placement.spread {
            SpreadOver::Node => SpreadDomain::Node,
            SpreadOver::Zone => SpreadDomain::Zone,
        },
        kind: WorkloadKind::LongRunning,
        now_s: 0,
        node_selector: Vec::new(),
    }
}

fn replica_of(request: &PlacementRequest, node: NodeId) -> Replica {
    Replica {
        service: request.service.clone(),
        partition: request.partition,
        node,
        resources: request.resources,
        kind: request.kind,
        expected_end_s: request.expected_end_s(),
        state_bytes: 0,
    }
}

fn resources_of(spec: &ServiceSpec) -> Resources {
    Resources::new(spec.resources.cpu_millis(), spec.resources.memory_mib())
}

fn policy_of(spec: &ServiceSpec) -> Policy {
    match spec.placement.policy {
        PlacementPolicy::Spread => Policy::Spread,
        PlacementPolicy::Cost => Policy::Cost,
    }
}

/// Applies one action to `cluster`. Deterministic, so the controller and a pass's
/// scratch copy agree.
///
/// # Panics
/// If the action names a service or partition the cluster does not have: actions are
/// only ever applied to the cluster they were decided from.
pub fn apply_action(cluster: &mut Cluster, action: &ReconcileAction) {
    use ReconcileAction as A;
    match action {
        A::MarkNodeLost { .. }
        | A::MarkNodeRejoined { .. }
        | A::MarkNodeDrained { .. }
        | A::MarkNodeDraining { .. } => apply_node_action(cluster, action),
        A::PlacePartition { .. }
        | A::ResetPartition { .. }
        | A::MarkGroupStarted { .. }
        | A::ReplaceMember { .. }
        | A::MigrateMember { .. }
        | A::ResizeReplica { .. } => apply_partition_action(cluster, action),
        A::PlaceInstance { .. }
        | A::RemoveInstance { .. }
        | A::FinishInstance { .. }
        | A::SetJobPhase { .. } => apply_instance_action(cluster, action),
    }
}

/// A node's lifecycle: lost, back, draining, drained.
fn apply_node_action(cluster: &mut Cluster, action: &ReconcileAction) {
    match action {
        ReconcileAction::MarkNodeLost { node } => {
            if let Some(record) = cluster.nodes.get_mut(node) {
                // A finished drain is not carried over: the node's next incarnation,
                // whatever its id, starts ready. An unfinished one is (see
                // [`drain_carried_over`]).
                if record.state == NodeState::Drained {
                    record.drain_requested = false;
                }
                record.state = NodeState::Lost;
            }
            cluster.observed.remove(node);
            cluster.resp_addrs.remove(node);
        }
        ReconcileAction::MarkNodeRejoined { node, at_ms } => {
            if let Some(record) = cluster.nodes.get_mut(node) {
                // A drain asked for before the loss goes on: the operator still wants the
                // node empty.
                record.state = if record.drain_requested {
                    NodeState::Draining
                } else {
                    NodeState::Ready
                };
            }
            // What it reported before the restart is gone with the old process.
            cluster.observed.insert(
                *node,
                crate::model::NodeObserved {
                    last_heartbeat_ms: *at_ms,
                    ..crate::model::NodeObserved::default()
                },
            );
        }
        ReconcileAction::MarkNodeDrained { node } => {
            if let Some(record) = cluster.nodes.get_mut(node) {
                record.state = NodeState::Drained;
            }
        }
        ReconcileAction::MarkNodeDraining { node } => {
            if let Some(record) = cluster.nodes.get_mut(node) {
                if record.state == NodeState::Ready {
                    record.state = NodeState::Draining;
                    record.drain_requested = true;
                }
            }
        }
        other => unreachable!("{other:?} is not handled by apply_node_action"),
    }
}

/// A partition's design: members, their requests, whether it has started.
fn apply_partition_action(cluster: &mut Cluster, action: &ReconcileAction) {
    match action {
        ReconcileAction::PlacePartition {
            service,
            partition,
            members,
        } => {
            let design = partition_mut(cluster, service, *partition);
            design.members = members.clone();
            design.initial_members = members.clone();
        }
        ReconcileAction::ResetPartition { service, partition } => {
            let design = partition_mut(cluster, service, *partition);
            design.members.clear();
            design.initial_members.clear();
            design.has_had_leader = false;
            design.cpu_millis.clear();
        }
        ReconcileAction::MarkGroupStarted { service, partition } => {
            partition_mut(cluster, service, *partition).has_had_leader = true;
        }
        ReconcileAction::ReplaceMember {
            service,
            partition,
            remove,
            add,
            ..
        } => {
            let design = partition_mut(cluster, service, *partition);
            let slot = design
                .members
                .iter_mut()
                .find(|n| **n == *remove)
                .unwrap_or_else(|| panic!("{service}/{partition}: {remove} is not a member"));
            *slot = *add;
            // The replacement keeps the request the member had.
            if let Some(cpu_millis) = design.cpu_millis.remove(remove) {
                design.cpu_millis.insert(*add, cpu_millis);
            }
        }
        ReconcileAction::MigrateMember {
            service,
            partition,
            from,
            to,
            cpu_millis,
        } => {
            let design = partition_mut(cluster, service, *partition);
            let slot = design
                .members
                .iter_mut()
                .find(|n| **n == *from)
                .unwrap_or_else(|| panic!("{service}/{partition}: {from} is not a member"));
            *slot = *to;
            design.cpu_millis.remove(from);
            design.cpu_millis.insert(*to, *cpu_millis);
        }
        ReconcileAction::ResizeReplica {
            service,
            partition,
            node,
            cpu_millis,
        } => {
            partition_mut(cluster, service, *partition)
                .cpu_millis
                .insert(*node, *cpu_millis);
        }
        other => unreachable!("{other:?} is not handled by apply_partition_action"),
    }
}

/// A stateless or job service's instances and job phase.
fn apply_instance_action(cluster: &mut Cluster, action: &ReconcileAction) {
    match action {
        ReconcileAction::PlaceInstance {
            service,
            node,
            slot,
            attempt,
        } => {
            let placement = &mut service_mut(cluster, service).placement;
            let id = format!("{service}-{}", placement.next_instance);
            placement.next_instance += 1;
            placement.instances.push(InstanceDesign {
                id,
                node: *node,
                slot: *slot,
                attempt: *attempt,
                phase: InstancePhase::Assigned,
            });
        }
        ReconcileAction::RemoveInstance { service, id } => {
            service_mut(cluster, service)
                .placement
                .instances
                .retain(|i| &i.id != id);
        }
        ReconcileAction::FinishInstance {
            service,
            id,
            succeeded,
            retry_at_ms,
        } => {
            let placement = &mut service_mut(cluster, service).placement;
            if let Some(instance) = placement.instances.iter_mut().find(|i| &i.id == id) {
                instance.phase = if *succeeded {
                    InstancePhase::Succeeded
                } else {
                    InstancePhase::Failed {
                        retry_at_ms: *retry_at_ms,
                    }
                };
                let slot = instance.slot;
                // Keep only the latest attempt per slot: history is in the events.
                let latest = instance.attempt;
                placement
                    .instances
                    .retain(|i| i.slot != slot || i.attempt >= latest);
            }
        }
        ReconcileAction::SetJobPhase { service, phase } => {
            service_mut(cluster, service).placement.job_phase = Some(*phase);
        }
        other => unreachable!("{other:?} is not handled by apply_instance_action"),
    }
}

fn service_mut<'a>(cluster: &'a mut Cluster, name: &str) -> &'a mut Service {
    cluster
        .services
        .get_mut(name)
        .unwrap_or_else(|| panic!("action for unknown service {name}"))
}

fn partition_mut<'a>(
    cluster: &'a mut Cluster,
    name: &str,
    partition: u32,
) -> &'a mut PartitionDesign {
    service_mut(cluster, name)
        .placement
        .partitions
        .get_mut(partition as usize)
        .unwrap_or_else(|| panic!("action for unknown partition {name}/{partition}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NodeObserved, NodeRecord, Placement, ServiceRecord};
    use stator_api::agent::{InstanceStatus, RegisterRequest, ReplicaRole, ReplicaStatus};
    use stator_api::spec::{parse_spec, SpecFormat};

    const GRACE_MS: u64 = 3_000;
    const NOW_MS: u64 = 1_000_000;

    fn cluster_with_nodes(zones: &[&str]) -> Cluster {
        let mut cluster = Cluster::default();
        for (index, zone) in zones.iter().enumerate() {
            let id = index as NodeId + 1;
            cluster.nodes.insert(
                id,
                NodeRecord {
                    id,
                    info: RegisterRequest {
                        name: format!("n{id}"),
                        zone: zone.to_string(),
                        pool: "default".into(),
                        cpu_millis: 4000,
                        memory_mib: 8192,
                        price_per_hour: 0.1,
                        labels: Default::default(),
                        transport_addr: format!("127.0.0.1:{}", 9000 + id),
                        rejoin: None,
                    },
                    state: NodeState::Ready,
                    registered_at_ms: NOW_MS,
                    node_secret: String::new(),
                    drain_requested: false,
                },
            );
            cluster.observed.insert(
                id,
                NodeObserved {
                    last_heartbeat_ms: NOW_MS,
                    ..NodeObserved::default()
                },
            );
        }
        cluster
    }

    fn add_service(cluster: &mut Cluster, toml_text: &str) -> String {
        let spec = parse_spec(toml_text, SpecFormat::Toml).unwrap();
        spec.validate().unwrap();
        let name = spec.name.clone();
        let placement = Placement {
            partitions: match spec.kind {
                ServiceKind::Replicated => {
                    vec![PartitionDesign::default(); spec.partitions as usize]
                }
                _ => Vec::new(),
            },
            job_phase: (spec.kind == ServiceKind::Job).then_some(JobPhase::Running),
            ..Placement::default()
        };
        let id = cluster.services.len() as u64 + 1;
        cluster.services.insert(
            name.clone(),
            Service {
                record: ServiceRecord {
                    id,
                    spec,
                    generation: 1,
                },
                placement,
            },
        );
        name
    }

    fn kv(partitions: u32, spread: &str) -> String {
        format!(
            "name = \"kv\"\npartitions = {partitions}\nreplicas = 3\napp = {{ builtin = \"kv\" }}\nplacement = {{ spread = \"{spread}\" }}"
        )
    }

    /// Applies every action of one pass and returns them.
    fn step(cluster: &mut Cluster, now_ms: u64) -> Vec<ReconcileAction> {
        let decision = reconcile(cluster, now_ms, GRACE_MS);
        for action in &decision.actions {
            apply_action(cluster, action);
        }
        decision.actions
    }

    /// Makes `leader` report leadership of every partition of `kv` with `voters`.
    fn report_leader(cluster: &mut Cluster, leader: NodeId, partition: u32, voters: &[NodeId]) {
        let group = cluster.services["kv"].group(partition);
        let observed = cluster.observed.entry(leader).or_default();
        observed.last_heartbeat_ms = NOW_MS;
        observed.replicas.retain(|r| r.group != group);
        observed.replicas.push(stator_api::testing::leader_status(
            group, "kv", partition, leader, voters,
        ));
    }

    fn started(cluster: &mut Cluster, partition: u32, members: &[NodeId]) {
        let design =
            &mut cluster.services.get_mut("kv").unwrap().placement.partitions[partition as usize];
        design.members = members.to_vec();
        design.initial_members = members.to_vec();
        design.has_had_leader = true;
    }

    fn report_forgotten(cluster: &mut Cluster, node: NodeId, partition: u32) {
        let group = cluster.services["kv"].group(partition);
        let observed = cluster.observed.entry(node).or_default();
        observed.last_heartbeat_ms = NOW_MS;
        observed.replicas.retain(|r| r.group != group);
        observed.replicas.push(ReplicaStatus {
            role: ReplicaRole::Stopped,
            term: 0,
            error: Some("forgot".into()),
            forgotten: true,
            ..stator_api::testing::replica_status(group, "kv", partition)
        });
    }

    #[test]
    fn a_member_that_forgot_its_state_is_replaced_on_another_node() {
        let mut cluster = cluster_with_nodes(&["a", "b", "c", "d"]);
        add_service(&mut cluster, &kv(1, "node"));
        started(&mut cluster, 0, &[1, 2, 3]);
        report_leader(&mut cluster, 1, 0, &[1, 2, 3]);
        report_forgotten(&mut cluster, 3, 0);
        let actions = step(&mut cluster, NOW_MS);
        assert!(
            actions.iter().any(|a| matches!(
                a,
                ReconcileAction::ReplaceMember {
                    remove: 3,
                    add: 4,
                    reason: ReplaceReason::ReplicaForgotten,
                    ..
                }
            )),
            "{actions:?}"
        );
    }

    #[test]
    fn a_memory_partition_every_member_forgot_is_placed_again_empty() {
        let mut cluster = cluster_with_nodes(&["a", "b", "c"]);
        add_service(&mut cluster, &kv(1, "node"));
        started(&mut cluster, 0, &[1, 2, 3]);
        for node in [1, 2, 3] {
            report_forgotten(&mut cluster, node, 0);
        }
        let actions = step(&mut cluster, NOW_MS);
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, ReconcileAction::ResetPartition { partition: 0, .. })),
            "{actions:?}"
        );
        let design = &cluster.services["kv"].placement.partitions[0];
        assert!(design.members.is_empty() && !design.has_had_leader);
        // The next pass places it afresh, to be bootstrapped by its new members.
        let actions = step(&mut cluster, NOW_MS);
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, ReconcileAction::PlacePartition { partition: 0, .. })),
            "{actions:?}"
        );
    }

    #[test]
    fn places_every_partition_on_distinct_zones() {
        let mut cluster = cluster_with_nodes(&["a", "a", "b", "b", "c", "c"]);
        add_service(&mut cluster, &kv(4, "zone"));
        let actions = step(&mut cluster, NOW_MS);
        assert_eq!(actions.len(), 4);
        for design in &cluster.services["kv"].placement.partitions {
            let zones: BTreeSet<&str> = design
                .members
                .iter()
                .map(|n| cluster.nodes[n].info.zone.as_str())
                .collect();
            assert_eq!(zones.len(), 3, "{design:?}");
            assert_eq!(design.members, design.initial_members);
        }
        // Level-triggered: nothing more to do for the same state.
        assert!(step(&mut cluster, NOW_MS).is_empty());
    }

    #[test]
    fn too_few_nodes_is_a_problem_not_a_partial_placement() {
        let mut cluster = cluster_with_nodes(&["a", "b"]);
        add_service(&mut cluster, &kv(1, "node"));
        let decision = reconcile(&cluster, NOW_MS, GRACE_MS);
        assert!(decision.actions.is_empty());
        assert_eq!(decision.problems.len(), 1);
    }

    #[test]
    fn a_node_is_lost_only_after_the_grace() {
        let mut cluster = cluster_with_nodes(&["a"]);
        let decision = reconcile(&cluster, NOW_MS + GRACE_MS, GRACE_MS);
        assert!(decision.actions.is_empty());
        assert_eq!(decision.next_run_ms, NOW_MS + GRACE_MS + 1);
        let actions = step(&mut cluster, NOW_MS + GRACE_MS + 1);
        assert_eq!(actions, vec![ReconcileAction::MarkNodeLost { node: 1 }]);
        assert_eq!(cluster.nodes[&1].state, NodeState::Lost);
    }

    #[test]
    fn the_group_starts_when_a_leader_is_reported() {
        let mut cluster = cluster_with_nodes(&["a", "b", "c"]);
        add_service(&mut cluster, &kv(1, "node"));
        step(&mut cluster, NOW_MS);
        assert!(!cluster.services["kv"].placement.partitions[0].has_had_leader);
        report_leader(&mut cluster, 1, 0, &[1, 2, 3]);
        let actions = step(&mut cluster, NOW_MS);
        assert!(matches!(
            actions[..],
            [ReconcileAction::MarkGroupStarted { .. }]
        ));
    }

    #[test]
    fn no_member_is_replaced_before_the_group_has_a_leader() {
        let mut cluster = cluster_with_nodes(&["a", "b", "c", "d"]);
        add_service(&mut cluster, &kv(1, "node"));
        let design = &mut cluster.services.get_mut("kv").unwrap().placement.partitions[0];
        design.members = vec![1, 2, 3];
        design.initial_members = vec![1, 2, 3];
        cluster.nodes.get_mut(&1).unwrap().state = NodeState::Lost;
        assert!(step(&mut cluster, NOW_MS).is_empty());
    }

    fn disk_kv() -> String {
        format!("{}\ndurability = \"disk\"", kv(1, "node"))
    }

    fn designed_groups(cluster: &Cluster, node: NodeId) -> Vec<GroupId> {
        crate::assign::assignments_for(cluster, node)
            .replicas
            .iter()
            .map(|r| r.group)
            .collect()
    }

    /// The 30-minute soak's failure: every member of a `disk` partition restarted later
    /// than the grace. Nothing may replace or reset them (their disks hold the only
    /// copies); once they rejoin they are its members again, and nothing moves.
    #[test]
    fn every_member_of_a_disk_partition_lost_past_the_grace_comes_back_as_itself() {
        let mut cluster = cluster_with_nodes(&["a", "b", "c", "d"]);
        add_service(&mut cluster, &disk_kv());
        started(&mut cluster, 0, &[1, 2, 3]);
        report_leader(&mut cluster, 2, 0, &[1, 2, 3]);
        let group = cluster.services["kv"].group(0);
        let late_ms = NOW_MS + GRACE_MS + 1;
        // Node 4 stays up: a spare the repair could pick, were there a leader.
        cluster.observed.get_mut(&4).unwrap().last_heartbeat_ms = late_ms;
        let actions = step(&mut cluster, late_ms);
        assert_eq!(
            actions,
            (1..=3)
                .map(|node| ReconcileAction::MarkNodeLost { node })
                .collect::<Vec<_>>()
        );
        assert!(step(&mut cluster, late_ms).is_empty());
        assert_eq!(
            cluster.services["kv"].placement.partitions[0].members,
            vec![1, 2, 3]
        );

        let back_ms = late_ms + 10_000;
        cluster.observed.get_mut(&4).unwrap().last_heartbeat_ms = back_ms;
        for node in 1..=3 {
            apply_action(
                &mut cluster,
                &ReconcileAction::MarkNodeRejoined {
                    node,
                    at_ms: back_ms,
                },
            );
            assert_eq!(cluster.node_state(node), NodeState::Ready);
            assert_eq!(designed_groups(&cluster, node), vec![group]);
        }
        assert!(step(&mut cluster, back_ms).is_empty());
        // A fresh grace from the rejoin, not from the last heartbeat before the restart.
        assert!(step(&mut cluster, back_ms + GRACE_MS).is_empty());
        report_leader(&mut cluster, 1, 0, &[1, 2, 3]);
        for node in 1..=3 {
            cluster.observed.get_mut(&node).unwrap().last_heartbeat_ms = back_ms;
        }
        assert!(step(&mut cluster, back_ms).is_empty());
        assert_eq!(
            cluster.services["kv"].placement.partitions[0].members,
            vec![1, 2, 3]
        );
    }

    /// While a lost member was away its group replaced it (the normal repair): after the
    /// rejoin it is ready but no longer assigned the partition, so its agent removes the
    /// replica and its store.
    #[test]
    fn a_member_replaced_while_its_node_was_lost_is_not_assigned_after_the_rejoin() {
        let mut cluster = cluster_with_nodes(&["a", "b", "c", "d"]);
        add_service(&mut cluster, &disk_kv());
        started(&mut cluster, 0, &[1, 2, 3]);
        report_leader(&mut cluster, 2, 0, &[1, 2, 3]);
        cluster.observed.get_mut(&1).unwrap().last_heartbeat_ms = 0;
        let actions = step(&mut cluster, NOW_MS);
        assert_eq!(actions[0], ReconcileAction::MarkNodeLost { node: 1 });
        assert!(matches!(
            actions[1],
            ReconcileAction::ReplaceMember {
                remove: 1,
                add: 4,
                ..
            }
        ));
        report_leader(&mut cluster, 2, 0, &[2, 3, 4]);
        apply_action(
            &mut cluster,
            &ReconcileAction::MarkNodeRejoined {
                node: 1,
                at_ms: NOW_MS,
            },
        );
        assert!(cluster.is_alive(1));
        assert!(designed_groups(&cluster, 1).is_empty());
        assert!(step(&mut cluster, NOW_MS).is_empty());
        assert_eq!(
            cluster.services["kv"].placement.partitions[0].members,
            vec![4, 2, 3]
        );
    }

    /// A node lost while draining (say it rebooted mid-drain) comes back with its disk:
    /// the drain it was given goes on instead of the node quietly becoming `ready`.
    #[test]
    fn a_node_lost_while_draining_rejoins_as_draining() {
        let mut cluster = cluster_with_nodes(&["a", "b", "c"]);
        add_service(&mut cluster, &disk_kv());
        started(&mut cluster, 0, &[1, 2, 3]);
        report_leader(&mut cluster, 2, 0, &[1, 2, 3]);
        apply_action(&mut cluster, &ReconcileAction::MarkNodeDraining { node: 1 });
        assert_eq!(cluster.node_state(1), NodeState::Draining);
        cluster.observed.get_mut(&1).unwrap().last_heartbeat_ms = 0;
        let actions = step(&mut cluster, NOW_MS);
        assert_eq!(actions[0], ReconcileAction::MarkNodeLost { node: 1 });
        assert_eq!(cluster.node_state(1), NodeState::Lost);
        // The record, as the server stores it, remembers the drain across the loss.
        let stored = serde_json::to_string(&cluster.nodes[&1]).unwrap();
        let reloaded: crate::model::NodeRecord = serde_json::from_str(&stored).unwrap();
        assert!(reloaded.drain_requested, "{stored}");
        cluster.nodes.insert(1, reloaded);
        apply_action(
            &mut cluster,
            &ReconcileAction::MarkNodeRejoined {
                node: 1,
                at_ms: NOW_MS,
            },
        );
        assert_eq!(cluster.node_state(1), NodeState::Draining);
        // A node that was never drained rejoins ready.
        cluster.observed.get_mut(&2).unwrap().last_heartbeat_ms = 0;
        let actions = step(&mut cluster, NOW_MS);
        assert!(actions.contains(&ReconcileAction::MarkNodeLost { node: 2 }));
        apply_action(
            &mut cluster,
            &ReconcileAction::MarkNodeRejoined {
                node: 2,
                at_ms: NOW_MS,
            },
        );
        assert_eq!(cluster.node_state(2), NodeState::Ready);
    }

    /// A drain is asked for by name: a new node of the name of a record lost mid-drain
    /// inherits it; one whose drain had finished before the loss does not.
    #[test]
    fn only_an_unfinished_drain_is_carried_over_to_a_new_node_of_the_same_name() {
        let mut cluster = cluster_with_nodes(&["a", "b"]);
        assert!(!drain_carried_over(&cluster, "n1"), "never drained");
        apply_action(&mut cluster, &ReconcileAction::MarkNodeDraining { node: 1 });
        apply_action(&mut cluster, &ReconcileAction::MarkNodeLost { node: 1 });
        assert!(drain_carried_over(&cluster, "n1"), "lost while draining");
        assert!(!drain_carried_over(&cluster, "n2"), "another name");

        apply_action(&mut cluster, &ReconcileAction::MarkNodeDraining { node: 2 });
        apply_action(&mut cluster, &ReconcileAction::MarkNodeDrained { node: 2 });
        apply_action(&mut cluster, &ReconcileAction::MarkNodeLost { node: 2 });
        assert!(!drain_carried_over(&cluster, "n2"), "lost once drained");

        // Only the newest record of the name counts: a later ready incarnation that was
        // lost does not revive an old drain.
        let mut later = cluster.nodes[&1].clone();
        later.id = 3;
        later.drain_requested = false;
        cluster.nodes.insert(3, later);
        assert!(
            !drain_carried_over(&cluster, "n1"),
            "newest record was ready"
        );
    }

    #[test]
    fn a_lost_member_is_replaced_by_a_fresh_node() {
        let mut cluster = cluster_with_nodes(&["a", "b", "c", "d"]);
        add_service(&mut cluster, &kv(1, "node"));
        started(&mut cluster, 0, &[1, 2, 3]);
        report_leader(&mut cluster, 2, 0, &[1, 2, 3]);
        cluster.observed.get_mut(&1).unwrap().last_heartbeat_ms = 0;
        let actions = step(&mut cluster, NOW_MS);
        assert_eq!(actions[0], ReconcileAction::MarkNodeLost { node: 1 });
        assert_eq!(
            actions[1],
            ReconcileAction::ReplaceMember {
                service: "kv".into(),
                partition: 0,
                remove: 1,
                add: 4,
                reason: ReplaceReason::NodeLost,
            }
        );
        assert_eq!(
            cluster.services["kv"].placement.partitions[0].members,
            vec![4, 2, 3]
        );
        // In flight (voters still 1,2,3): nothing more until the leader reports the change.
        assert!(step(&mut cluster, NOW_MS).is_empty());
        report_leader(&mut cluster, 2, 0, &[2, 3, 4]);
        assert!(cluster.replication_factor_met(&cluster.services["kv"], 0));
        assert!(step(&mut cluster, NOW_MS).is_empty());
    }

    #[test]
    fn two_lost_members_are_replaced_one_at_a_time() {
        let mut cluster = cluster_with_nodes(&["a", "b", "c", "d", "e"]);
        add_service(&mut cluster, &kv(1, "node"));
        started(&mut cluster, 0, &[1, 2, 3]);
        cluster.nodes.get_mut(&1).unwrap().state = NodeState::Lost;
        cluster.nodes.get_mut(&2).unwrap().state = NodeState::Lost;
        report_leader(&mut cluster, 3, 0, &[1, 2, 3]);
        let actions = step(&mut cluster, NOW_MS);
        assert_eq!(actions.len(), 1, "{actions:?}");
        assert!(step(&mut cluster, NOW_MS).is_empty());
    }

    #[test]
    fn a_joining_member_that_dies_is_swapped_for_another() {
        let mut cluster = cluster_with_nodes(&["a", "b", "c", "d", "e"]);
        add_service(&mut cluster, &kv(1, "node"));
        started(&mut cluster, 0, &[4, 2, 3]);
        cluster.nodes.get_mut(&1).unwrap().state = NodeState::Lost;
        cluster.nodes.get_mut(&4).unwrap().state = NodeState::Lost;
        report_leader(&mut cluster, 2, 0, &[1, 2, 3]);
        let actions = step(&mut cluster, NOW_MS);
        assert!(
            matches!(
                actions[..],
                [ReconcileAction::ReplaceMember {
                    remove: 4,
                    add: 5,
                    ..
                }]
            ),
            "{actions:?}"
        );
    }

    #[test]
    fn drain_moves_one_partition_at_a_time_then_marks_drained() {
        let mut cluster = cluster_with_nodes(&["a", "b", "c", "d"]);
        add_service(&mut cluster, &kv(2, "node"));
        started(&mut cluster, 0, &[1, 2, 3]);
        started(&mut cluster, 1, &[1, 2, 3]);
        report_leader(&mut cluster, 2, 0, &[1, 2, 3]);
        report_leader(&mut cluster, 2, 1, &[1, 2, 3]);
        cluster.nodes.get_mut(&1).unwrap().state = NodeState::Draining;
        let actions = step(&mut cluster, NOW_MS);
        assert!(
            matches!(
                actions[..],
                [ReconcileAction::ReplaceMember {
                    partition: 0,
                    remove: 1,
                    add: 4,
                    reason: ReplaceReason::NodeDraining,
                    ..
                }]
            ),
            "{actions:?}"
        );
        // Partition 0 still has node 1 as a voter: partition 1 waits.
        assert!(step(&mut cluster, NOW_MS).is_empty());
        report_leader(&mut cluster, 2, 0, &[2, 3, 4]);
        let actions = step(&mut cluster, NOW_MS);
        assert!(
            matches!(
                actions[..],
                [ReconcileAction::ReplaceMember { partition: 1, .. }]
            ),
            "{actions:?}"
        );
        report_leader(&mut cluster, 2, 1, &[2, 3, 4]);
        let actions = step(&mut cluster, NOW_MS);
        assert_eq!(actions, vec![ReconcileAction::MarkNodeDrained { node: 1 }]);
    }

    #[test]
    fn a_drain_with_nowhere_to_go_says_which_partition_waits_and_why() {
        // Three nodes, three replicas: no fourth node can take node 1's replica.
        let mut cluster = cluster_with_nodes(&["a", "b", "c"]);
        add_service(&mut cluster, &kv(1, "node"));
        started(&mut cluster, 0, &[1, 2, 3]);
        report_leader(&mut cluster, 2, 0, &[1, 2, 3]);
        cluster.nodes.get_mut(&1).unwrap().state = NodeState::Draining;
        let decision = reconcile(&cluster, NOW_MS, GRACE_MS);
        assert!(decision.actions.is_empty(), "{:?}", decision.actions);
        let waits = &decision.drain_waits[&1];
        assert_eq!(waits.len(), 1, "{waits:?}");
        assert!(
            waits[0].starts_with("partition ")
                && waits[0].contains("/0: ")
                && waits[0].contains("add nodes"),
            "{waits:?}"
        );
        // Nodes that are not draining never wait.
        assert_eq!(decision.drain_waits.len(), 1);
    }

    #[test]
    fn stateless_instances_spread_and_are_replaced_when_a_node_is_lost() {
        let mut cluster = cluster_with_nodes(&["a", "b", "c", "d"]);
        add_service(
            &mut cluster,
            "name = \"web\"\nkind = \"stateless\"\ninstances = 3\napp = { process = { command = [\"sleep\", \"100\"] } }",
        );
        step(&mut cluster, NOW_MS);
        let nodes: BTreeSet<NodeId> = cluster.services["web"]
            .placement
            .instances
            .iter()
            .map(|i| i.node)
            .collect();
        assert_eq!(nodes.len(), 3);
        let victim = *nodes.iter().next().unwrap();
        cluster.nodes.get_mut(&victim).unwrap().state = NodeState::Lost;
        let actions = step(&mut cluster, NOW_MS);
        assert!(actions
            .iter()
            .any(|a| matches!(a, ReconcileAction::RemoveInstance { .. })));
        assert!(actions
            .iter()
            .any(|a| matches!(a, ReconcileAction::PlaceInstance { node: 4, .. })));
        assert_eq!(cluster.services["web"].placement.instances.len(), 3);
    }

    #[test]
    fn more_instances_than_nodes_share_nodes() {
        let mut cluster = cluster_with_nodes(&["a", "b"]);
        add_service(
            &mut cluster,
            "name = \"web\"\nkind = \"stateless\"\ninstances = 5\napp = { process = { command = [\"x\"] } }",
        );
        step(&mut cluster, NOW_MS);
        assert_eq!(cluster.services["web"].placement.instances.len(), 5);
    }

    fn report_instance(cluster: &mut Cluster, node: NodeId, id: &str, state: InstanceState) {
        cluster.observed.get_mut(&node).unwrap().instances = vec![InstanceStatus {
            id: id.to_string(),
            service: "batch".into(),
            state,
            restarts: 0,
            exit_code: Some(1),
            message: None,
            reason: None,
            oom_kills: 0,
        }];
    }

    #[test]
    fn jobs_retry_with_back_off_then_fail() {
        let mut cluster = cluster_with_nodes(&["a"]);
        add_service(
            &mut cluster,
            "name = \"batch\"\nkind = \"job\"\nretries = 1\nbackoff_ms = 1000\napp = { process = { command = [\"false\"] } }",
        );
        step(&mut cluster, NOW_MS);
        let first = cluster.services["batch"].placement.instances[0].clone();
        assert_eq!(first.attempt, 1);
        report_instance(&mut cluster, first.node, &first.id, InstanceState::Failed);
        let actions = step(&mut cluster, NOW_MS);
        assert!(
            matches!(actions[..], [ReconcileAction::FinishInstance { succeeded: false, retry_at_ms, .. }] if retry_at_ms == NOW_MS + 1000)
        );
        // Not before the back-off.
        assert!(step(&mut cluster, NOW_MS + 999).is_empty());
        let actions = step(&mut cluster, NOW_MS + 1000);
        assert!(
            matches!(
                actions[..],
                [ReconcileAction::PlaceInstance { attempt: 2, .. }]
            ),
            "{actions:?}"
        );
        let second = cluster.services["batch"]
            .placement
            .instances
            .last()
            .unwrap()
            .clone();
        report_instance(&mut cluster, second.node, &second.id, InstanceState::Failed);
        let actions = step(&mut cluster, NOW_MS + 1000);
        assert!(
            matches!(
                actions[..],
                [
                    ReconcileAction::FinishInstance { .. },
                    ReconcileAction::SetJobPhase {
                        phase: JobPhase::Failed,
                        ..
                    }
                ]
            ),
            "{actions:?}"
        );
        assert!(step(&mut cluster, NOW_MS + 2_000).is_empty());
    }

    #[test]
    fn jobs_succeed_when_every_completion_does() {
        let mut cluster = cluster_with_nodes(&["a"]);
        add_service(
            &mut cluster,
            "name = \"batch\"\nkind = \"job\"\napp = { process = { command = [\"true\"] } }",
        );
        step(&mut cluster, NOW_MS);
        let first = cluster.services["batch"].placement.instances[0].clone();
        report_instance(
            &mut cluster,
            first.node,
            &first.id,
            InstanceState::Succeeded,
        );
        let actions = step(&mut cluster, NOW_MS);
        assert!(
            matches!(
                actions[..],
                [
                    ReconcileAction::FinishInstance {
                        succeeded: true,
                        ..
                    },
                    ReconcileAction::SetJobPhase {
                        phase: JobPhase::Succeeded,
                        ..
                    }
                ]
            ),
            "{actions:?}"
        );
    }

    #[test]
    fn back_off_doubles_and_is_capped() {
        assert_eq!(job_backoff_ms(100, 1), 100);
        assert_eq!(job_backoff_ms(100, 2), 200);
        assert_eq!(job_backoff_ms(100, 4), 800);
        assert_eq!(job_backoff_ms(1000, 100), MAX_JOB_BACKOFF_MS);
    }
}
