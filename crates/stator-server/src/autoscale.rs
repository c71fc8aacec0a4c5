//! The live autoscaler and consolidator: one pure round, recomputed from the current
//! cluster on every tick (level-triggered), in terms the controller carries out.
//!
//! A round builds the planner's view of the cluster (members with the CPU they request
//! now), measures each partition's CPU use from its leader's reported ops/s, and runs
//! `stator_planning::autoscale` (vertical first, then a migration to a node with room,
//! then a node from the cheapest fitting pool) and, when no node is being added,
//! `stator_planning::consolidate` (empty nodes first, then nodes whose replicas fit
//! elsewhere). The planners' actions become:
//! - `Resize` -> [`ReconcileAction::ResizeReplica`] (the agents get the new CPU share in their
//!   assignments);
//! - `Migrate` -> [`ReconcileAction::MigrateMember`], only for a partition whose last membership
//!   change is done, one per partition, within the disruption budget (live migration:
//!   learner, catch-up, then the swap; the group never has fewer voters than designed);
//! - `AddNode` -> a provision request to the node provider;
//! - `Cordon` -> [`ReconcileAction::MarkNodeDraining`]: the drain controller moves the node's
//!   replicas one partition at a time, as for `stator drain`;
//! - `RemoveNode` -> [`ReconcileAction::MarkNodeDrained`] and a release through the provider,
//!   only for a node of a configured pool that hosts nothing at all.
//!
//! Repairs (`Place`) are left to the reconcile pass, which already replaces lost members.

use std::collections::{BTreeMap, BTreeSet};

use stator_api::ids::NodeId;
use stator_api::spec::{NodePoolSpec, ServiceKind, SpreadOver};
use stator_planning::{
    autoscale, consolidate, Action as PlanAction, BootingNode, ConsolidatorConfig,
    ConsolidatorState, PartitionDemand, PartitionScalerConfig, PartitionScalerState, PoolSpec,
    Resources, SpreadDomain,
};

use crate::model::{Cluster, NodeState};
use crate::reconcile::{apply_action, cluster_view, hosts_anything, ReconcileAction};

/// Default time between two autoscaling rounds: the planners' control period.
pub const DEFAULT_INTERVAL_MS: u64 = 15_000;
/// Default scale-down stabilisation: a replica's CPU request falls only to the highest
/// recommendation of this window (HPA's default).
pub const DEFAULT_SCALE_DOWN_WINDOW_S: u64 = 300;
/// Default time a node must stay empty before it is released (anti-flap).
pub const DEFAULT_EMPTY_NODE_S: u64 = 120;
/// Default most concurrent live migrations (autoscaler and consolidator together).
pub const DEFAULT_DISRUPTION_BUDGET: usize = 4;
/// Default CPU one replica spends per client operation of its partition, in
/// microseconds. An estimate: BENCHMARKS' replication run saturates this 2-core machine
/// at about 22,600 ops/s with 3 replicas and the clients on it (~88 us of CPU per
/// operation in all), so about 30 us per replica.
pub const DEFAULT_CPU_MICROS_PER_OP: u64 = 30;
/// A requested node that has not registered within its pool's boot delay plus this is
/// given up on (the provider failed or the machine never came): it is asked for again
/// if still needed.
pub const BOOT_GRACE_MS: u64 = 60_000;
/// Utilisation target when a service states no latency objective.
pub const DEFAULT_TARGET_UTILIZATION: f64 = 0.7;
/// Margin below the utilisation at which the modelled p99 meets the objective, for
/// growth until the next round (as in the simulator).
pub const SLO_UTILIZATION_MARGIN: f64 = 0.12;

/// What the autoscaler works with: the pools and its tunables.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoscaleConfig {
    /// The pools nodes may be provisioned from and released to.
    pub pools: Vec<NodePoolSpec>,
    /// Zones new nodes may go to (every pool); empty: the zones of existing nodes.
    pub zones: Vec<String>,
    /// Time between rounds.
    pub interval_ms: u64,
    /// Scale-down stabilisation window.
    pub scale_down_window_s: u64,
    /// Time a node stays empty before it is released.
    pub empty_node_s: u64,
    /// Most concurrent live migrations.
    pub disruption_budget: usize,
    /// CPU per operation per replica, microseconds (the demand model).
    pub cpu_micros_per_op: u64,
}

impl AutoscaleConfig {
    /// The defaults for `pools`.
    pub fn new(pools: Vec<NodePoolSpec>) -> Self {
        AutoscaleConfig {
            pools,
            zones: Vec::new(),
            interval_ms: DEFAULT_INTERVAL_MS,
            scale_down_window_s: DEFAULT_SCALE_DOWN_WINDOW_S,
            empty_node_s: DEFAULT_EMPTY_NODE_S,
            disruption_budget: DEFAULT_DISRUPTION_BUDGET,
            cpu_micros_per_op: DEFAULT_CPU_MICROS_PER_OP,
        }
    }

    fn pool(&self, name: &str) -> Option<&NodePoolSpec> {
        self.pools.iter().find(|p| p.name == name)
    }
}

/// A node asked for and not registered yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Booting {
    /// Pool.
    pub pool: String,
    /// Zone.
    pub zone: String,
    /// When it was asked for, ms since the Unix epoch.
    pub requested_at_ms: u64,
    /// When to give up waiting for it.
    pub deadline_ms: u64,
}

/// What the autoscaler remembers between rounds (in memory: after a restart the
/// windows start over, which only delays a scale-down).
#[derive(Debug, Clone, Default)]
pub struct AutoscaleState {
    autoscaler: PartitionScalerState,
    consolidator: ConsolidatorState,
    /// Nodes asked for and not registered yet.
    pub booting: Vec<Booting>,
    /// Nodes that registered in answer to a request (so one node answers one request).
    claimed: BTreeSet<NodeId>,
    /// Nodes handed back to the provider; they count for nothing any more.
    pub released: BTreeSet<NodeId>,
}

/// A node to ask the provider for.
#[derive(Debug, Clone, PartialEq)]
pub struct ProvisionRequest {
    /// Pool.
    pub pool: NodePoolSpec,
    /// Zone.
    pub zone: String,
}

/// A node to hand back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseRequest {
    /// Node id.
    pub node: NodeId,
    /// Its pool.
    pub pool: String,
    /// Its name.
    pub name: String,
}

/// The outcome of one round.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Round {
    /// Changes to the design, applied and persisted by the controller.
    pub actions: Vec<ReconcileAction>,
    /// Nodes to provision.
    pub provision: Vec<ProvisionRequest>,
    /// Nodes to release (their [`ReconcileAction::MarkNodeDrained`] is in `actions`).
    pub release: Vec<ReleaseRequest>,
}

/// One autoscaling round over `cluster` at `now_ms`; see the module doc. Its phases:
/// [`settle_booting`], [`scale_services`] (the autoscaler per service: resizes,
/// migrations, new nodes), then, while no node is on its way, [`consolidate_nodes`]
/// (cordon and release of nodes the consolidator empties).
pub fn round(
    cluster: &Cluster,
    now_ms: u64,
    config: &AutoscaleConfig,
    state: &mut AutoscaleState,
) -> Round {
    settle_booting(cluster, now_ms, state);
    let mut work = RoundWork::new(cluster, config, state);
    scale_services(&mut work, cluster, now_ms, config, state);
    // Consolidation, only while no node is on its way: adding and removing at once
    // would flap.
    if state.booting.is_empty() {
        consolidate_nodes(&mut work, now_ms, config, state);
    }
    work.out
}

/// What one round works on and what it has decided so far.
struct RoundWork {
    /// The pools as the planner sees them.
    pools: Vec<PoolSpec>,
    /// Nodes asked for and not registered yet, as the planner sees them.
    booting: Vec<BootingNode>,
    /// Partitions with a membership change under way (service, partition).
    in_flight: BTreeSet<(String, u32)>,
    /// Migrations the disruption budget still allows this round.
    moves_left: usize,
    /// The cluster as this round's actions leave it.
    scratch: Cluster,
    /// The round's decisions.
    out: Round,
}

impl RoundWork {
    fn new(cluster: &Cluster, config: &AutoscaleConfig, state: &AutoscaleState) -> RoundWork {
        let in_flight = partitions_in_flight(cluster);
        RoundWork {
            pools: planning_pools(cluster, config),
            booting: state
                .booting
                .iter()
                .map(|b| BootingNode {
                    pool: b.pool.clone(),
                    zone: b.zone.clone(),
                })
                .collect(),
            moves_left: config.disruption_budget.saturating_sub(in_flight.len()),
            in_flight,
            scratch: cluster.clone(),
            out: Round::default(),
        }
    }
}

/// The autoscaler, per replicated service (each has its own utilisation target); its
/// actions are then applied to the round's scratch cluster.
fn scale_services(
    work: &mut RoundWork,
    cluster: &Cluster,
    now_ms: u64,
    config: &AutoscaleConfig,
    state: &mut AutoscaleState,
) {
    let mut view = planning_view(&work.scratch, state);
    for (name, service) in &cluster.services {
        if service.spec().kind != ServiceKind::Replicated {
            continue;
        }
        let demands = demands_of(cluster, name, config);
        if demands.is_empty() {
            continue;
        }
        let autoscaler_config = PartitionScalerConfig {
            target_utilization: target_utilization(
                service.spec().qos.and_then(|q| q.p99_latency_ms),
                config.cpu_micros_per_op,
            ),
            scale_down_window_s: config.scale_down_window_s,
            max_migrations: work.moves_left,
            ..PartitionScalerConfig::default()
        };
        let planned = autoscale(
            &mut view,
            &demands,
            &work.pools,
            &work.booting,
            &mut state.autoscaler,
            &autoscaler_config,
            now_ms / 1000,
        );
        tracing::debug!(?planned, "autoscaler round");
        let mut moved: BTreeSet<u32> = BTreeSet::new();
        for action in planned {
            take_scaling_action(work, action, &mut moved, now_ms, config, state);
        }
    }
    for action in &work.out.actions {
        apply_action(&mut work.scratch, action);
    }
}

/// One autoscaler decision: a resize as is; a migration within the disruption budget,
/// one per partition and only to a ready node; a new node asked of its pool.
fn take_scaling_action(
    work: &mut RoundWork,
    action: PlanAction,
    moved: &mut BTreeSet<u32>,
    now_ms: u64,
    config: &AutoscaleConfig,
    state: &mut AutoscaleState,
) {
    match action {
        PlanAction::Resize {
            service,
            partition,
            node,
            to,
            ..
        } => work.out.actions.push(ReconcileAction::ResizeReplica {
            service,
            partition,
            node,
            cpu_millis: to.cpu_millis,
        }),
        PlanAction::Migrate {
            service,
            partition,
            from,
            to,
            resources,
            ..
        } => {
            let settled = !work.in_flight.contains(&(service.clone(), partition));
            if settled
                && work.moves_left > 0
                && work.scratch.node_state(to) == NodeState::Ready
                && moved.insert(partition)
            {
                work.moves_left -= 1;
                work.out.actions.push(ReconcileAction::MigrateMember {
                    service,
                    partition,
                    from,
                    to,
                    cpu_millis: resources.cpu_millis,
                });
            }
        }
        PlanAction::AddNode { pool, zone } => {
            if let Some(pool) = config.pool(&pool) {
                let deadline_ms = now_ms + pool.boot_delay_s.saturating_mul(1000) + BOOT_GRACE_MS;
                state.booting.push(Booting {
                    pool: pool.name.clone(),
                    zone: zone.clone(),
                    requested_at_ms: now_ms,
                    deadline_ms,
                });
                work.out.provision.push(ProvisionRequest {
                    pool: pool.clone(),
                    zone,
                });
            }
        }
        // Repairs are the reconcile pass's; the rest is not planned here.
        PlanAction::Place { .. } | PlanAction::Cordon { .. } | PlanAction::RemoveNode { .. } => {}
    }
}

/// The consolidator over the scratch cluster: cordons nodes it wants emptied (the drain
/// controller moves their replicas) and releases pooled nodes that host nothing.
fn consolidate_nodes(
    work: &mut RoundWork,
    now_ms: u64,
    config: &AutoscaleConfig,
    state: &mut AutoscaleState,
) {
    let mut view = planning_view(&work.scratch, state);
    let busy: Vec<NodeId> = busy_nodes(&work.scratch, &work.in_flight);
    let consolidator_config = ConsolidatorConfig {
        disruption_budget: config.disruption_budget,
        empty_for_s: config.empty_node_s,
        ..ConsolidatorConfig::default()
    };
    let planned = consolidate(
        &mut view,
        &work.pools,
        config.disruption_budget - work.moves_left.min(config.disruption_budget),
        &busy,
        &mut state.consolidator,
        &consolidator_config,
        now_ms / 1000,
    );
    for action in planned {
        match action {
            PlanAction::Cordon { node } => cordon_pooled_node(work, node, config),
            PlanAction::RemoveNode { node } => release_empty_node(work, node, config, state),
            // The drain controller picks the targets of a cordoned node's replicas.
            _ => {}
        }
    }
}

/// Starts draining `node` if it is a ready node of a configured pool.
fn cordon_pooled_node(work: &mut RoundWork, node: NodeId, config: &AutoscaleConfig) {
    let pooled = work
        .scratch
        .nodes
        .get(&node)
        .is_some_and(|n| config.pool(&n.info.pool).is_some());
    if pooled && work.scratch.node_state(node) == NodeState::Ready {
        let action = ReconcileAction::MarkNodeDraining { node };
        apply_action(&mut work.scratch, &action);
        work.out.actions.push(action);
    }
}

/// Hands `node` back to its pool's provider if it is pooled, not released before, and
/// hosts nothing; it is marked drained.
fn release_empty_node(
    work: &mut RoundWork,
    node: NodeId,
    config: &AutoscaleConfig,
    state: &mut AutoscaleState,
) {
    let Some(record) = work.scratch.nodes.get(&node) else {
        return;
    };
    if config.pool(&record.info.pool).is_none()
        || state.released.contains(&node)
        || hosts_anything(&work.scratch, node)
    {
        return;
    }
    work.out.release.push(ReleaseRequest {
        node,
        pool: record.info.pool.clone(),
        name: record.info.name.clone(),
    });
    state.released.insert(node);
    let action = ReconcileAction::MarkNodeDrained { node };
    apply_action(&mut work.scratch, &action);
    work.out.actions.push(action);
}

/// The utilisation a replica is sized for: where the M/M/1 p99 `ln(100)·S/(1-rho)`
/// meets the objective, less a margin (as in the simulator), within [0.3, 0.8].
pub fn target_utilization(p99_latency_ms: Option<u64>, cpu_micros_per_op: u64) -> f64 {
    let Some(p99_ms) = p99_latency_ms.filter(|p| *p > 0) else {
        return DEFAULT_TARGET_UTILIZATION;
    };
    let service_ms = cpu_micros_per_op as f64 / 1000.0;
    let rho_slo = 1.0 - (100f64).ln() * service_ms / p99_ms as f64;
    (rho_slo - SLO_UTILIZATION_MARGIN).clamp(0.3, 0.8)
}

/// Drops booting entries whose node registered (matched by pool and zone, oldest
/// request first) or whose deadline passed.
fn settle_booting(cluster: &Cluster, now_ms: u64, state: &mut AutoscaleState) {
    state.claimed.retain(|n| cluster.is_alive(*n));
    state.released.retain(|n| cluster.is_alive(*n));
    let mut booting = std::mem::take(&mut state.booting);
    booting.sort_by_key(|b| b.requested_at_ms);
    for entry in booting {
        let arrived = cluster.nodes.values().find(|n| {
            n.state.is_alive()
                && n.info.pool == entry.pool
                && n.info.zone == entry.zone
                && n.registered_at_ms > entry.requested_at_ms
                && !state.claimed.contains(&n.id)
        });
        if let Some(node) = arrived {
            state.claimed.insert(node.id);
        } else if now_ms < entry.deadline_ms {
            state.booting.push(entry);
        } else {
            tracing::warn!(pool = %entry.pool, zone = %entry.zone, "a requested node did not register in time; it will be asked for again if still needed");
        }
    }
}

/// The pools as the planners see them, zones filled in.
fn planning_pools(cluster: &Cluster, config: &AutoscaleConfig) -> Vec<PoolSpec> {
    config
        .pools
        .iter()
        .map(|pool| {
            let zones = if config.zones.is_empty() {
                let seen: BTreeSet<String> = cluster
                    .nodes
                    .values()
                    .filter(|n| n.state.is_alive() && n.info.pool == pool.name)
                    .map(|n| n.info.zone.clone())
                    .collect();
                if seen.is_empty() {
                    vec!["default".to_string()]
                } else {
                    seen.into_iter().collect()
                }
            } else {
                config.zones.clone()
            };
            PoolSpec {
                name: pool.name.clone(),
                capacity: Resources::new(pool.cpu.0, pool.memory.0),
                price_per_hour: pool.price_per_hour,
                boot_delay_s: pool.boot_delay_s,
                min_nodes: pool.min,
                max_nodes: pool.max,
                zones,
                labels: BTreeMap::new(),
            }
        })
        .collect()
}

/// The planner's view without released nodes (they are on their way out).
fn planning_view(cluster: &Cluster, state: &AutoscaleState) -> stator_planning::ClusterView {
    let mut view = cluster_view(cluster);
    for node in &state.released {
        view.remove_node(*node);
    }
    view
}

/// Partitions with a membership change under way: the design differs from the group's
/// voters, or the group has learners, or no leader is reported.
fn partitions_in_flight(cluster: &Cluster) -> BTreeSet<(String, u32)> {
    let mut out = BTreeSet::new();
    for (name, service) in &cluster.services {
        for (index, design) in service.placement.partitions.iter().enumerate() {
            let partition = index as u32;
            if design.members.is_empty() {
                continue;
            }
            let designed: BTreeSet<NodeId> = design.members.iter().copied().collect();
            let settled = design.has_had_leader
                && cluster
                    .group_observed(service.group(partition))
                    .is_some_and(|o| o.voters == designed && o.learners.is_empty());
            if !settled {
                out.insert((name.clone(), partition));
            }
        }
    }
    out
}

/// Nodes taking part in a membership change: not to be emptied or released now.
fn busy_nodes(cluster: &Cluster, in_flight: &BTreeSet<(String, u32)>) -> Vec<NodeId> {
    let mut busy = BTreeSet::new();
    for (name, partition) in in_flight {
        let service = &cluster.services[name];
        busy.extend(&service.placement.partitions[*partition as usize].members);
        if let Some(observed) = cluster.group_observed(service.group(*partition)) {
            busy.extend(observed.voters.iter().chain(&observed.learners));
        }
    }
    busy.into_iter().collect()
}

/// Each started partition's measured demand: its leader's ops/s times the CPU one
/// replica spends per operation.
fn demands_of(cluster: &Cluster, name: &str, config: &AutoscaleConfig) -> Vec<PartitionDemand> {
    let service = &cluster.services[name];
    let spec = service.spec();
    let mut demands = Vec::new();
    for (index, design) in service.placement.partitions.iter().enumerate() {
        let partition = index as u32;
        if !design.has_had_leader || design.members.is_empty() {
            continue;
        }
        let group = service.group(partition);
        let Some(observed) = cluster.group_observed(group) else {
            continue;
        };
        let Some(report) = cluster.observed.get(&observed.leader).and_then(|o| {
            o.replicas
                .iter()
                .find(|r| r.group == group && r.term == observed.term)
        }) else {
            continue;
        };
        let ops_per_sec = if report.ops_per_sec.is_finite() {
            report.ops_per_sec.max(0.0)
        } else {
            0.0
        };
        let cpu_used_millis =
            (ops_per_sec * config.cpu_micros_per_op as f64 / 1000.0).ceil() as u64;
        demands.push(PartitionDemand {
            service: name.to_string(),
            partition,
            cpu_used_millis,
            min_replicas: spec.replicas,
            base_resources: Resources::new(
                spec.resources.cpu_millis(),
                spec.resources.memory_mib(),
            ),
            state_bytes: report.state_bytes,
            spread: match spec.placement.spread {
                SpreadOver::Node => SpreadDomain::Node,
                SpreadOver::Zone => SpreadDomain::Zone,
            },
        });
    }
    demands
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        NodeObserved, NodeRecord, PartitionDesign, Placement, Service, ServiceRecord,
    };
    use stator_api::agent::{RegisterRequest, ReplicaStatus};
    use stator_api::spec::{parse_node_pool, parse_spec, SpecFormat};

    const NOW_MS: u64 = 1_000_000_000;

    fn pool() -> NodePoolSpec {
        parse_node_pool(
            "name = \"small\"\ncpu = \"1\"\nmemory = \"2Gi\"\nprice_per_hour = 0.05\nmin = 3\nmax = 4",
            SpecFormat::Toml,
        )
        .unwrap()
    }

    fn config() -> AutoscaleConfig {
        AutoscaleConfig {
            zones: vec!["a".into(), "b".into(), "c".into()],
            interval_ms: 1_000,
            scale_down_window_s: 5,
            empty_node_s: 3,
            cpu_micros_per_op: 10_000,
            ..AutoscaleConfig::new(vec![pool()])
        }
    }

    fn add_node(cluster: &mut Cluster, id: NodeId, zone: &str, now_ms: u64) {
        cluster.nodes.insert(
            id,
            NodeRecord {
                id,
                info: RegisterRequest {
                    name: format!("small-{id}"),
                    zone: zone.into(),
                    pool: "small".into(),
                    cpu_millis: 1000,
                    memory_mib: 2048,
                    price_per_hour: 0.05,
                    labels: Default::default(),
                    transport_addr: format!("127.0.0.1:{}", 9000 + id),
                    rejoin: None,
                },
                state: NodeState::Ready,
                registered_at_ms: now_ms,
                node_secret: String::new(),
                drain_requested: false,
            },
        );
        cluster.observed.insert(
            id,
            NodeObserved {
                last_heartbeat_ms: now_ms,
                ..NodeObserved::default()
            },
        );
    }

    /// Three nodes in three zones; 4 partitions of 200m each on all three, started.
    fn loaded_cluster() -> Cluster {
        let mut cluster = Cluster::default();
        for (id, zone) in [(1, "a"), (2, "b"), (3, "c")] {
            add_node(&mut cluster, id, zone, NOW_MS);
        }
        let spec = parse_spec(
            "name = \"kv\"\npartitions = 4\nreplicas = 3\napp = { builtin = \"kv\" }\nresources = { cpu = \"200m\", memory = \"64Mi\" }",
            SpecFormat::Toml,
        )
        .unwrap();
        let design = PartitionDesign {
            members: vec![1, 2, 3],
            initial_members: vec![1, 2, 3],
            has_had_leader: true,
            ..PartitionDesign::default()
        };
        cluster.services.insert(
            "kv".into(),
            Service {
                record: ServiceRecord {
                    id: 1,
                    spec,
                    generation: 1,
                },
                placement: Placement {
                    partitions: vec![design; 4],
                    ..Placement::default()
                },
            },
        );
        cluster
    }

    /// `leader` reports every partition led, with the design's voters and `ops` ops/s.
    fn report(cluster: &mut Cluster, leader: NodeId, ops: f64) {
        let service = &cluster.services["kv"];
        let replicas: Vec<ReplicaStatus> = service
            .placement
            .partitions
            .iter()
            .enumerate()
            .map(|(p, design)| ReplicaStatus {
                state_bytes: 1000,
                ops_per_sec: ops,
                p99_us: 500,
                ..stator_api::testing::leader_status(
                    service.group(p as u32),
                    "kv",
                    p as u32,
                    leader,
                    &design.members,
                )
            })
            .collect();
        cluster.observed.get_mut(&leader).unwrap().replicas = replicas;
    }

    fn apply(cluster: &mut Cluster, round: &Round) {
        for action in &round.actions {
            apply_action(cluster, action);
        }
    }

    #[test]
    fn target_utilization_follows_the_latency_objective() {
        assert_eq!(target_utilization(None, 30), DEFAULT_TARGET_UTILIZATION);
        // S = 10 ms, p99 = 100 ms: rho_slo = 1 - 4.605 * 0.1 = 0.54; less the margin.
        let target = target_utilization(Some(100), 10_000);
        assert!((target - 0.419).abs() < 0.01, "{target}");
        // An objective the service time cannot meet: the floor.
        assert_eq!(target_utilization(Some(1), 10_000), 0.3);
    }

    #[test]
    fn load_grows_requests_then_asks_for_a_node_then_moves_onto_it() {
        let mut cluster = loaded_cluster();
        let config = config();
        let mut state = AutoscaleState::default();
        // 40 ops/s at 10 ms each: 400m used, 572m wanted per replica (at 0.7), but each
        // node has only 200m free.
        report(&mut cluster, 1, 40.0);
        let round1 = round(&cluster, NOW_MS, &config, &mut state);
        assert_eq!(round1.provision.len(), 1, "{round1:?}");
        assert_eq!(round1.provision[0].pool.name, "small");
        assert!(round1
            .actions
            .iter()
            .any(|a| matches!(a, ReconcileAction::ResizeReplica { .. })));
        apply(&mut cluster, &round1);
        // No second node while one is booting (the pool's max is 4 anyway).
        let round2 = round(&cluster, NOW_MS + 1_000, &config, &mut state);
        assert!(round2.provision.is_empty(), "{round2:?}");
        apply(&mut cluster, &round2);
        // The node registers in the zone asked for.
        let zone = round1.provision[0].zone.clone();
        add_node(&mut cluster, 4, &zone, NOW_MS + 2_000);
        let round3 = round(&cluster, NOW_MS + 3_000, &config, &mut state);
        assert!(state.booting.is_empty());
        let moves: Vec<&ReconcileAction> = round3
            .actions
            .iter()
            .filter(|a| matches!(a, ReconcileAction::MigrateMember { to: 4, .. }))
            .collect();
        assert!(!moves.is_empty(), "{round3:?}");
        assert!(round3.release.is_empty());
        // One move per partition, and never a second while it is in flight.
        apply(&mut cluster, &round3);
        let round4 = round(&cluster, NOW_MS + 4_000, &config, &mut state);
        for action in &round4.actions {
            if let ReconcileAction::MigrateMember { partition, .. } = action {
                assert!(
                    !moves.iter().any(|m| matches!(m, ReconcileAction::MigrateMember { partition: p, .. } if p == partition)),
                    "{action:?} while the partition's move is in flight"
                );
            }
        }
    }

    #[test]
    fn an_idle_cluster_drains_and_releases_one_node_but_never_goes_below_min() {
        let mut cluster = loaded_cluster();
        add_node(&mut cluster, 4, "a", NOW_MS);
        // Partitions 0 and 1 moved to node 4 (same zone as node 1) earlier.
        for p in 0..2 {
            let design = &mut cluster.services.get_mut("kv").unwrap().placement.partitions[p];
            design.members = vec![4, 2, 3];
        }
        report(&mut cluster, 2, 0.0);
        let config = config();
        let mut state = AutoscaleState::default();
        let mut drained_at = None;
        let mut released = Vec::new();
        for second in 0..60u64 {
            let now = NOW_MS + second * 1_000;
            let r = round(&cluster, now, &config, &mut state);
            assert!(r.provision.is_empty(), "{r:?}");
            apply(&mut cluster, &r);
            released.extend(r.release.iter().map(|x| x.node));
            let draining = [1, 4]
                .into_iter()
                .find(|n| cluster.node_state(*n) == NodeState::Draining);
            if let (None, Some(leaving)) = (drained_at, draining) {
                drained_at = Some(leaving);
                // The drain controller moves its members to the other node of zone a.
                let other = if leaving == 1 { 4 } else { 1 };
                for design in &mut cluster.services.get_mut("kv").unwrap().placement.partitions {
                    for member in &mut design.members {
                        if *member == leaving {
                            *member = other;
                        }
                    }
                    design.cpu_millis.clear();
                }
                report(&mut cluster, 2, 0.0);
                cluster.nodes.get_mut(&leaving).unwrap().state = NodeState::Drained;
            }
        }
        // One node of zone a (the emptiest; ties go to the lower id) is emptied and
        // released; the other three stay: the pool's min is 3.
        let leaving = drained_at.expect("no node was drained");
        assert_eq!(released, vec![leaving], "exactly one node is released");
        assert_eq!(cluster.node_state(leaving), NodeState::Drained);
        let ready = cluster
            .nodes
            .values()
            .filter(|n| n.state == NodeState::Ready)
            .count();
        assert_eq!(ready, 3);
    }
}
