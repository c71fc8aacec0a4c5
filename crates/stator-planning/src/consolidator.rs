//! Scale-in by consolidation (Karpenter/HTAS-like): release empty nodes, then empty
//! the least-used nodes by live-migrating their replicas to nodes with room.
//!
//! Rules kept on every move: the target has the capacity; it hosts no other member of
//! the partition; it puts the replica in no zone another member uses (unless the
//! replica already shared one); members are moved, never dropped, so a partition keeps
//! its size (and quorum) throughout. At most `disruption_budget` moves are in flight.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

use crate::actions::Action;
use crate::autoscaler::keeps_zone_spread;
use crate::pools::PoolSpec;
use crate::scheduler::{place_replacement, PlacementRequest, Policy, SpreadDomain};
use crate::view::{ClusterView, Resources, WorkloadKind};
use stator_api::ids::NodeId;

/// Tunables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsolidatorConfig {
    /// Most concurrent migrations (including those already running).
    pub disruption_budget: usize,
    /// A node must stay empty this long before it is released (anti-flap).
    pub empty_for_s: u64,
    /// Only nodes whose requested CPU and memory are both under this fraction are
    /// candidates for emptying.
    pub underutilized_below: f64,
    /// Most candidate nodes examined per round (bounds the work per round).
    pub max_candidates: usize,
    /// Fill a target node to at most this fraction of its CPU with moved replicas,
    /// leaving headroom for vertical scaling.
    pub max_target_fill: f64,
    /// Scheduling policy for the targets.
    pub policy: Policy,
}

impl Default for ConsolidatorConfig {
    fn default() -> Self {
        ConsolidatorConfig {
            disruption_budget: 32,
            empty_for_s: 120,
            underutilized_below: 0.5,
            max_candidates: 16,
            max_target_fill: 0.9,
            policy: Policy::Cost,
        }
    }
}

/// What the consolidator remembers: since when each node has been empty.
#[derive(Debug, Clone, Default)]
pub struct ConsolidatorState {
    empty_since: HashMap<NodeId, u64>,
}

/// One consolidation round. `in_flight_moves` are migrations still running;
/// `busy_nodes` are nodes with a migration running to or from them (not released).
/// Applies its actions to `view`.
pub fn consolidate(
    view: &mut ClusterView,
    pools: &[PoolSpec],
    in_flight_moves: usize,
    busy_nodes: &[NodeId],
    state: &mut ConsolidatorState,
    cfg: &ConsolidatorConfig,
    now_s: u64,
) -> Vec<Action> {
    consolidate_with_headroom(
        view,
        pools,
        in_flight_moves,
        busy_nodes,
        state,
        cfg,
        now_s,
        &[],
    )
}

/// [`consolidate`] that keeps a warm spare: an empty node is not released while the
/// other nodes (schedulable, not busy) would hold fewer copies of a `headroom` shape
/// than the shape is listed times, so a short task of a shape seen lately starts at
/// once instead of waiting for a node to boot (and ending before one is ready).
#[allow(clippy::too_many_arguments)] // reason: `consolidate`'s arguments plus the headroom
pub fn consolidate_with_headroom(
    view: &mut ClusterView,
    pools: &[PoolSpec],
    in_flight_moves: usize,
    busy_nodes: &[NodeId],
    state: &mut ConsolidatorState,
    cfg: &ConsolidatorConfig,
    now_s: u64,
    headroom: &[Resources],
) -> Vec<Action> {
    let mut actions = release_empty_nodes(view, pools, busy_nodes, state, cfg, now_s, headroom);
    actions.extend(empty_underused_nodes(
        view,
        in_flight_moves,
        busy_nodes,
        cfg,
        now_s,
    ));
    actions
}

/// Phase 1: releases nodes empty for `cfg.empty_for_s` (the most expensive first),
/// keeping each pool's minimum and the last room for a `headroom` shape.
fn release_empty_nodes(
    view: &mut ClusterView,
    pools: &[PoolSpec],
    busy_nodes: &[NodeId],
    state: &mut ConsolidatorState,
    cfg: &ConsolidatorConfig,
    now_s: u64,
    headroom: &[Resources],
) -> Vec<Action> {
    let mut actions = Vec::new();
    let min_nodes: HashMap<&str, u32> = pools
        .iter()
        .map(|p| (p.name.as_str(), p.min_nodes))
        .collect();
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for n in view.nodes() {
        *counts.entry(n.pool.clone()).or_insert(0) += 1;
    }
    let mut empty: Vec<NodeId> = Vec::new();
    let mut seen_empty: Vec<NodeId> = Vec::new();
    for n in view.nodes() {
        if view.replicas_on(n.id).is_empty()
            && view.allocated(n.id).is_some_and(|a| a == n.reserved)
        {
            seen_empty.push(n.id);
            let since = *state.empty_since.entry(n.id).or_insert(now_s);
            if now_s >= since + cfg.empty_for_s && !busy_nodes.contains(&n.id) {
                empty.push(n.id);
            }
        }
    }
    let seen_empty: std::collections::HashSet<NodeId> = seen_empty.into_iter().collect();
    state.empty_since.retain(|id, _| seen_empty.contains(id));
    // Most expensive first.
    empty.sort_by(|a, b| {
        let pa = view.node(*a).expect("listed").price_per_hour;
        let pb = view.node(*b).expect("listed").price_per_hour;
        pb.total_cmp(&pa).then(a.cmp(b))
    });
    for id in empty {
        let pool = view.node(id).expect("listed").pool.clone();
        let count = counts.get(&pool).copied().unwrap_or(0);
        if count <= min_nodes.get(pool.as_str()).copied().unwrap_or(0) {
            continue;
        }
        if !headroom.is_empty() && is_last_room(view, id, busy_nodes, headroom) {
            continue;
        }
        *counts.get_mut(&pool).expect("counted") -= 1;
        view.remove_node(id);
        state.empty_since.remove(&id);
        actions.push(Action::RemoveNode { node: id });
    }
    actions
}

/// Phase 2: empties under-used nodes (CPU and memory under
/// `cfg.underutilized_below`, the emptiest first) whose replicas all fit elsewhere, by
/// live migration within the disruption budget; the node is cordoned.
fn empty_underused_nodes(
    view: &mut ClusterView,
    in_flight_moves: usize,
    busy_nodes: &[NodeId],
    cfg: &ConsolidatorConfig,
    now_s: u64,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut budget = cfg.disruption_budget.saturating_sub(in_flight_moves);
    if budget == 0 {
        return actions;
    }
    let mut candidates: Vec<(f64, f64, NodeId)> = view
        .nodes()
        .filter(|n| n.schedulable && !busy_nodes.contains(&n.id))
        .filter(|n| !view.replicas_on(n.id).is_empty())
        .filter_map(|n| {
            let a = view.allocated(n.id)?;
            let cpu = a.cpu_millis as f64 / n.capacity.cpu_millis.max(1) as f64;
            let mem = a.memory_mib as f64 / n.capacity.memory_mib.max(1) as f64;
            (cpu < cfg.underutilized_below && mem < cfg.underutilized_below).then_some((
                cpu.max(mem),
                n.price_per_unit(),
                n.id,
            ))
        })
        .collect();
    // Emptiest first; among equals the dearest per unit.
    candidates.sort_by(|a, b| {
        a.0.total_cmp(&b.0)
            .then(b.1.total_cmp(&a.1))
            .then(a.2.cmp(&b.2))
    });
    for &(_, _, node) in candidates.iter().take(cfg.max_candidates) {
        let slots = view.replicas_on(node).to_vec();
        if slots.len() > budget {
            continue;
        }
        view.set_schedulable(node, false);
        let mut moved: Vec<(usize, NodeId)> = Vec::new();
        let mut ok = true;
        for &slot in &slots {
            let r = view.replica(slot).expect("on node").clone();
            let survivors: Vec<NodeId> = view
                .partition_nodes(&r.service, r.partition)
                .into_iter()
                .filter(|&n| n != node)
                .collect();
            let mut req = match r.kind {
                WorkloadKind::LongRunning => {
                    PlacementRequest::long_running(&r.service, r.partition, 1, r.resources)
                }
                WorkloadKind::Job {
                    expected_duration_s,
                } => PlacementRequest {
                    kind: WorkloadKind::Job {
                        expected_duration_s,
                    },
                    now_s: r
                        .expected_end_s
                        .unwrap_or(now_s)
                        .saturating_sub(expected_duration_s),
                    ..PlacementRequest::job(&r.service, r.resources, now_s, expected_duration_s)
                },
            };
            req.spread = SpreadDomain::Zone;
            let target = place_replacement(view, &req, &survivors, cfg.policy)
                .ok()
                .filter(|&to| keeps_zone_spread(view, &survivors, node, to))
                .filter(|&to| {
                    let n = view.node(to).expect("placed");
                    let after =
                        view.allocated(to).expect("placed").cpu_millis + r.resources.cpu_millis;
                    after as f64 <= cfg.max_target_fill * n.capacity.cpu_millis as f64
                });
            match target {
                Some(to) => {
                    view.move_replica(slot, to);
                    moved.push((slot, to));
                }
                None => {
                    ok = false;
                    break;
                }
            }
        }
        if !ok {
            for &(slot, _) in moved.iter().rev() {
                view.move_replica(slot, node);
            }
            view.set_schedulable(node, true);
            continue;
        }
        actions.push(Action::Cordon { node });
        for (slot, to) in moved {
            let r = view.replica(slot).expect("moved");
            actions.push(Action::Migrate {
                service: r.service.clone(),
                partition: r.partition,
                from: node,
                to,
                resources: r.resources,
                state_bytes: r.state_bytes,
            });
        }
        budget -= slots.len();
        if budget == 0 {
            break;
        }
    }
    actions
}

/// Whether removing `id` would leave fewer slots (copies that fit, over schedulable,
/// non-busy nodes) for some `headroom` shape than the shape is listed times.
fn is_last_room(
    view: &ClusterView,
    id: NodeId,
    busy_nodes: &[NodeId],
    headroom: &[Resources],
) -> bool {
    headroom.iter().enumerate().any(|(i, shape)| {
        if headroom[..i].contains(shape) {
            return false;
        }
        let wanted = headroom.iter().filter(|s| *s == shape).count() as u64;
        let in_id = view.copies_fitting(id, shape);
        if in_id == 0 {
            return false;
        }
        let elsewhere: u64 = view
            .nodes()
            .filter(|n| n.id != id && n.schedulable && !busy_nodes.contains(&n.id))
            .map(|n| view.copies_fitting(n.id, shape))
            .sum();
        elsewhere < wanted
    })
}

/// How many copies of `shape` fit in `free` (0 for an all-zero shape: it needs no room).
pub fn slots(shape: &Resources, free: &Resources) -> u64 {
    let per = |need: u64, have: u64| have.checked_div(need).unwrap_or(u64::MAX);
    let n = per(shape.cpu_millis, free.cpu_millis)
        .min(per(shape.memory_mib, free.memory_mib))
        .min(per(shape.gpu_milli, free.gpu_milli));
    if n == u64::MAX {
        0
    } else {
        n
    }
}

/// A replacement planned by [`plan_replacements`]: `new_nodes` new nodes of `pool` in
/// `zone` take every replica of `nodes` (all in that zone, more of them than
/// `new_nodes`, or one node swapped for one node of a cheaper pool),
/// which are then released.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Merge {
    /// Pool of the new nodes.
    pub pool: String,
    /// Zone of the new nodes and of every node they replace.
    pub zone: String,
    /// The nodes replaced.
    pub nodes: Vec<NodeId>,
    /// How many new nodes (1 for a pair merged into one node).
    #[serde(default = "one")]
    pub new_nodes: u32,
    /// The room each new node offers the replicas: its capacity within the fill limits
    /// the plan was made with. The replicas are carried out packed into exactly this
    /// room ([`Merge::bins`]), so they land where the plan found room for them; first
    /// fit decreasing into larger bins can fail where the plan's bins succeeded.
    pub room: Resources,
}

impl Merge {
    /// The bins to pack the replaced nodes' replicas into, given the free room of each
    /// new node: that room within [`Merge::room`].
    pub fn bins(&self, free: &[Resources]) -> Vec<Resources> {
        free.iter().map(|f| f.min(&self.room)).collect()
    }
}

fn one() -> u32 {
    1
}

/// A group replacement fills its new nodes' CPU to at most this by default
/// ([`MergeConfig::group_cpu_fill`]): they are packed at the trough and must hold
/// the morning's growth in place. At [`MERGE_MAX_CPU_FILL`], without swaps, the
/// ramp-up after the trough found the packed nodes full (seeds 1-10 of
/// mmo-diurnal: SLO violations up to 57,000 partition-seconds). The simulator's
/// stator fills to 0.75 and turns swaps on, which take the packed general-purpose
/// nodes back to compute nodes as the load rises (docs/PLANNING.md).
pub const MERGE_GROUP_MAX_CPU_FILL: f64 = 0.5;

/// Most nodes one replacement takes (bounds the packing work per zone and the moves
/// one replacement starts).
pub const MERGE_MAX_GROUP: usize = 6;

/// First-fit decreasing (by memory, then CPU) of `items` into `bins` (free room of
/// each); an item never shares a bin with another of its partition. Returns the bin
/// of each item, or `None` when one does not fit.
pub fn pack_first_fit(
    items: &[(Resources, (&str, u32))],
    bins: &[Resources],
) -> Option<Vec<usize>> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (&items[a].0, &items[b].0);
        y.memory_mib
            .cmp(&x.memory_mib)
            .then(y.cpu_millis.cmp(&x.cpu_millis))
            .then(a.cmp(&b))
    });
    let mut free = bins.to_vec();
    let mut held: Vec<Vec<(&str, u32)>> = vec![Vec::new(); bins.len()];
    let mut at = vec![0; items.len()];
    for i in order {
        let (need, part) = items[i];
        let b = (0..free.len()).find(|&b| need.fits_in(&free[b]) && !held[b].contains(&part))?;
        free[b] = free[b].saturating_sub(&need);
        held[b].push(part);
        at[i] = b;
    }
    Some(at)
}

/// The replicas of `nodes` as packing items.
fn items_of<'v>(view: &'v ClusterView, nodes: &[NodeId]) -> Vec<(Resources, (&'v str, u32))> {
    nodes
        .iter()
        .flat_map(|&n| view.replicas_on(n).iter())
        .filter_map(|&s| view.replica(s))
        .map(|r| (r.resources, (r.service.as_str(), r.partition)))
        .collect()
}

/// The cheapest replacement of `group` by fewer nodes of one pool (with room, in
/// `zone`, CPU-only, unlabelled) that hold all its replicas within the fill limits and
/// cost at most [`MERGE_MAX_PRICE_SHARE`] of the group: `(pool, new nodes, room of
/// each, price)`.
fn replace_group<'p>(
    view: &ClusterView,
    pools: &'p [PoolSpec],
    counts: &BTreeMap<String, u32>,
    zone: &str,
    group: &[NodeId],
    cpu_fill: f64,
) -> Option<(&'p PoolSpec, u32, Resources, f64)> {
    let price: f64 = group
        .iter()
        .filter_map(|&n| view.node(n))
        .map(|n| n.price_per_hour)
        .sum();
    let items = items_of(view, group);
    let mut best: Option<(&PoolSpec, u32, Resources, f64)> = None;
    for p in pools.iter().filter(|p| {
        p.labels.is_empty() && p.capacity.gpu_milli == 0 && p.zones.iter().any(|z| z == zone)
    }) {
        let room = p
            .max_nodes
            .saturating_sub(counts.get(&p.name).copied().unwrap_or(0));
        let bin = Resources::new(
            (p.capacity.cpu_millis as f64 * cpu_fill) as u64,
            (p.capacity.memory_mib as f64 * MERGE_MAX_MEMORY_FILL) as u64,
        );
        for k in 1..group.len() as u32 {
            let cost = p.price_per_hour * k as f64;
            if k > room || cost > price * MERGE_MAX_PRICE_SHARE {
                break;
            }
            if pack_first_fit(&items, &vec![bin; k as usize]).is_some() {
                if best.is_none_or(|(_, _, _, c)| cost < c) {
                    best = Some((p, k, bin, cost));
                }
                break;
            }
        }
    }
    best
}

/// A merge is planned only when the new node costs at most this share of the nodes it
/// replaces (a boot and the migrations must pay for themselves).
pub const MERGE_MAX_PRICE_SHARE: f64 = 0.75;
/// The merged replicas fill the new node's CPU to at most this (room to grow in place
/// as the load rises before anything must move again).
pub const MERGE_MAX_CPU_FILL: f64 = 0.75;
/// ... and its memory to at most this (memory requests do not follow the load).
pub const MERGE_MAX_MEMORY_FILL: f64 = 0.95;
/// Nodes per zone examined for pairs (the least CPU-requested): bounds a call to
/// `MERGE_MAX_CANDIDATES_PER_ZONE^2 / 2` pair checks per zone at any cluster size.
pub const MERGE_MAX_CANDIDATES_PER_ZONE: usize = 48;

/// Consolidation by replacement, for what emptying one node at a time cannot reach:
/// nodes bound by memory (at night, CPU requests shrink, memory does not) whose pool
/// is the wrong shape for what they now hold. Pairs of nodes of one zone whose
/// replicas fit together on one node of a cheaper-for-the-pair pool (at most
/// [`MERGE_MAX_PRICE_SHARE`] of their price, within the fill limits) are replaced by
/// it. Groups of three to [`MERGE_MAX_GROUP`] nodes of a zone (the least
/// CPU-requested first) are replaced by fewer nodes of one pool when their replicas
/// pack (first fit decreasing, [`pack_first_fit`]) within the same limits and price
/// share: four full 32 GiB nodes and a half-full 64 GiB one become three 64 GiB
/// nodes. Replacements stay in one zone, so zone spread is kept; two members of a
/// partition never share a node. CPU-only, long-running nodes only; at most `max_merges` per call. Pure: the
/// caller provisions the nodes and, once they are ready, moves the replicas (live).
/// The defaults of [`MergeConfig`] with `max_merges`; see [`plan_replacements`].
pub fn plan_merges(
    view: &ClusterView,
    pools: &[PoolSpec],
    pool_counts: &BTreeMap<String, u32>,
    busy_nodes: &[NodeId],
    max_merges: usize,
) -> Vec<Merge> {
    plan_replacements(
        view,
        pools,
        pool_counts,
        busy_nodes,
        &MergeConfig {
            max_merges,
            ..MergeConfig::default()
        },
    )
}

/// What [`plan_replacements`] may plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergeConfig {
    /// Most replacements per call.
    pub max_merges: usize,
    /// Whether groups of three or more nodes may be replaced by fewer (the caller
    /// allows it while the load is not rising: the new nodes are packed tight).
    pub groups: bool,
    /// Whether pairs of nodes may be replaced by one node (filled to
    /// [`MERGE_MAX_CPU_FILL`]).
    pub pairs: bool,
    /// A group replacement fills its new nodes' CPU to at most this
    /// ([`MERGE_GROUP_MAX_CPU_FILL`] by default).
    pub group_cpu_fill: f64,
    /// Whether single nodes may be swapped for a cheaper node of another pool with
    /// at least their CPU ([`SWAP_MAX_PRICE_SHARE`]).
    pub swaps: bool,
}

impl Default for MergeConfig {
    fn default() -> Self {
        MergeConfig {
            max_merges: 2,
            groups: true,
            pairs: true,
            group_cpu_fill: MERGE_GROUP_MAX_CPU_FILL,
            swaps: false,
        }
    }
}

/// A node is swapped for one node of another pool only when that costs at most this
/// share of its price (gp-16 -> c-16 on mmo-diurnal: 0.885): a boot and the moves
/// must pay for themselves within the hour.
pub const SWAP_MAX_PRICE_SHARE: f64 = 0.9;

/// [`plan_merges`] with its limits in `cfg`, and swaps: after the groups and pairs,
/// a node whose replicas fit (memory within [`MERGE_MAX_MEMORY_FILL`]) one node of a
/// pool with at least its CPU capacity, costing at most [`SWAP_MAX_PRICE_SHARE`] of
/// it, is replaced by that node (Karpenter's replacement): a 64 GiB general-purpose
/// node left CPU-bound by the day's load becomes a compute-optimised one with the
/// same cores. A swap never leaves less CPU room than the node had, so it is safe
/// while the load rises.
pub fn plan_replacements(
    view: &ClusterView,
    pools: &[PoolSpec],
    pool_counts: &BTreeMap<String, u32>,
    busy_nodes: &[NodeId],
    cfg: &MergeConfig,
) -> Vec<Merge> {
    let mut counts = pool_counts.clone();
    let mut by_zone: BTreeMap<&str, Vec<NodeId>> = BTreeMap::new();
    for n in view.nodes() {
        let slots = view.replicas_on(n.id);
        if !n.schedulable
            || busy_nodes.contains(&n.id)
            || slots.is_empty()
            || n.capacity.gpu_milli > 0
            || slots.iter().any(|&s| {
                view.replica(s)
                    .is_some_and(|r| !matches!(r.kind, WorkloadKind::LongRunning))
            })
        {
            continue;
        }
        by_zone.entry(n.zone.as_str()).or_default().push(n.id);
    }
    let partitions_of = |id: NodeId| -> Vec<(&str, u32)> {
        view.replicas_on(id)
            .iter()
            .filter_map(|&s| view.replica(s))
            .map(|r| (r.service.as_str(), r.partition))
            .collect()
    };
    let mut merges = Vec::new();
    for (zone, mut nodes) in by_zone {
        // Least CPU requested first: the nodes whose shape fits them worst.
        nodes.sort_by_key(|&id| (view.allocated(id).map(|a| a.cpu_millis).unwrap_or(0), id));
        nodes.truncate(MERGE_MAX_CANDIDATES_PER_ZONE);
        let parts: Vec<Vec<(&str, u32)>> = nodes.iter().map(|&id| partitions_of(id)).collect();
        let mut used = vec![false; nodes.len()];
        // Groups of three or more (the least CPU-requested first) replaced by fewer
        // nodes: what a pair cannot reach when each node of the pair is full of memory
        // (three 32 GiB nodes into two of 64 GiB). The largest saving wins.
        if cfg.groups && nodes.len() >= 3 && merges.len() < cfg.max_merges {
            let best = (3..=nodes.len().min(MERGE_MAX_GROUP))
                .filter_map(|m| {
                    replace_group(view, pools, &counts, zone, &nodes[..m], cfg.group_cpu_fill).map(
                        |(p, k, room, cost)| {
                            let price: f64 = nodes[..m]
                                .iter()
                                .filter_map(|&n| view.node(n))
                                .map(|n| n.price_per_hour)
                                .sum();
                            (m, p, k, room, price - cost)
                        },
                    )
                })
                .max_by(|a, b| a.4.total_cmp(&b.4));
            if let Some((m, pool, k, room, _)) = best {
                *counts.entry(pool.name.clone()).or_insert(0) += k;
                used[..m].iter_mut().for_each(|u| *u = true);
                merges.push(Merge {
                    pool: pool.name.clone(),
                    zone: zone.to_string(),
                    nodes: nodes[..m].to_vec(),
                    new_nodes: k,
                    room,
                });
            }
        }
        for i in 0..nodes.len() {
            if !cfg.pairs {
                break;
            }
            if merges.len() >= cfg.max_merges {
                return merges;
            }
            if used[i] {
                continue;
            }
            for j in i + 1..nodes.len() {
                if used[j] {
                    continue;
                }
                let (a, b) = (nodes[i], nodes[j]);
                let total =
                    view.allocated(a).unwrap_or_default() + view.allocated(b).unwrap_or_default();
                let price = view.node(a).map(|n| n.price_per_hour).unwrap_or(0.0)
                    + view.node(b).map(|n| n.price_per_hour).unwrap_or(0.0);
                if parts[j].iter().any(|p| parts[i].contains(p)) {
                    continue;
                }
                let pool = pools
                    .iter()
                    .filter(|p| {
                        p.labels.is_empty()
                            && p.capacity.gpu_milli == 0
                            && p.zones.iter().any(|z| z == zone)
                            && counts.get(&p.name).copied().unwrap_or(0) < p.max_nodes
                            && total.cpu_millis as f64
                                <= p.capacity.cpu_millis as f64 * MERGE_MAX_CPU_FILL
                            && total.memory_mib as f64
                                <= p.capacity.memory_mib as f64 * MERGE_MAX_MEMORY_FILL
                            && p.price_per_hour <= price * MERGE_MAX_PRICE_SHARE
                    })
                    .min_by(|x, y| {
                        x.price_per_hour
                            .total_cmp(&y.price_per_hour)
                            .then(x.name.cmp(&y.name))
                    });
                if let Some(pool) = pool {
                    *counts.entry(pool.name.clone()).or_insert(0) += 1;
                    used[i] = true;
                    used[j] = true;
                    merges.push(Merge {
                        pool: pool.name.clone(),
                        zone: zone.to_string(),
                        nodes: vec![a, b],
                        new_nodes: 1,
                        room: Resources::new(
                            (pool.capacity.cpu_millis as f64 * MERGE_MAX_CPU_FILL) as u64,
                            (pool.capacity.memory_mib as f64 * MERGE_MAX_MEMORY_FILL) as u64,
                        ),
                    });
                    break;
                }
            }
        }
        if cfg.swaps {
            for i in 0..nodes.len() {
                if merges.len() >= cfg.max_merges {
                    return merges;
                }
                if used[i] {
                    continue;
                }
                if let Some(pool) = swap_pool(view, pools, &counts, zone, nodes[i]) {
                    *counts.entry(pool.name.clone()).or_insert(0) += 1;
                    used[i] = true;
                    merges.push(Merge {
                        pool: pool.name.clone(),
                        zone: zone.to_string(),
                        nodes: vec![nodes[i]],
                        new_nodes: 1,
                        room: Resources::new(
                            pool.capacity.cpu_millis,
                            (pool.capacity.memory_mib as f64 * MERGE_MAX_MEMORY_FILL) as u64,
                        ),
                    });
                }
            }
        }
    }
    merges
}

/// The cheapest pool (CPU-only, unlabelled, with room, in `zone`) whose node holds
/// everything on `id` within [`MERGE_MAX_MEMORY_FILL`] of its memory, has at least
/// `id`'s CPU capacity and costs at most [`SWAP_MAX_PRICE_SHARE`] of it.
fn swap_pool<'p>(
    view: &ClusterView,
    pools: &'p [PoolSpec],
    counts: &BTreeMap<String, u32>,
    zone: &str,
    id: NodeId,
) -> Option<&'p PoolSpec> {
    let node = view.node(id)?;
    let alloc = view.allocated(id)?;
    pools
        .iter()
        .filter(|p| {
            p.name != node.pool
                && p.labels.is_empty()
                && p.capacity.gpu_milli == 0
                && p.zones.iter().any(|z| z == zone)
                && counts.get(&p.name).copied().unwrap_or(0) < p.max_nodes
                && p.capacity.cpu_millis >= node.capacity.cpu_millis
                && alloc.cpu_millis <= p.capacity.cpu_millis
                && alloc.memory_mib as f64 <= p.capacity.memory_mib as f64 * MERGE_MAX_MEMORY_FILL
                && p.price_per_hour <= node.price_per_hour * SWAP_MAX_PRICE_SHARE
        })
        .min_by(|x, y| {
            x.price_per_hour
                .total_cmp(&y.price_per_hour)
                .then(x.name.cmp(&y.name))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{Node, Replica};

    fn lr(p: u32, node: NodeId, cpu: u64) -> Replica {
        Replica {
            service: "s".into(),
            partition: p,
            node,
            resources: Resources::new(cpu, 512),
            kind: WorkloadKind::LongRunning,
            expected_end_s: None,
            state_bytes: 100,
        }
    }

    #[test]
    fn removes_empty_after_window_and_respects_min() {
        let pools = vec![PoolSpec {
            name: "p".into(),
            capacity: Resources::new(4000, 8192),
            price_per_hour: 1.0,
            boot_delay_s: 0,
            min_nodes: 1,
            max_nodes: 10,
            zones: vec!["a".into()],
            labels: Default::default(),
        }];
        let mut view = ClusterView::from_parts(
            (1..=3)
                .map(|i| Node::new(i, "a", "p", Resources::new(4000, 8192), 1.0))
                .collect(),
            vec![],
        );
        let mut st = ConsolidatorState::default();
        let cfg = ConsolidatorConfig::default();
        assert!(consolidate(&mut view, &pools, 0, &[], &mut st, &cfg, 0).is_empty());
        let acts = consolidate(&mut view, &pools, 0, &[], &mut st, &cfg, 200);
        assert_eq!(acts.len(), 2, "{acts:?}");
        assert_eq!(view.node_count(), 1);
    }

    #[test]
    fn empties_an_underused_node_keeping_zones() {
        // Zones a, b, c each with a big node; zone c also has a small, lightly used
        // node holding the c-member of partition 0.
        let nodes = vec![
            Node::new(1, "a", "p", Resources::new(8000, 16384), 1.0),
            Node::new(2, "b", "p", Resources::new(8000, 16384), 1.0),
            Node::new(3, "c", "p", Resources::new(8000, 16384), 1.0),
            Node::new(4, "c", "p", Resources::new(8000, 16384), 1.0),
        ];
        let replicas = vec![
            lr(0, 1, 2000),
            lr(0, 2, 2000),
            lr(0, 4, 1000),
            lr(1, 1, 2000),
            lr(1, 2, 2000),
            lr(1, 3, 3000),
        ];
        let mut view = ClusterView::from_parts(nodes, replicas);
        let mut st = ConsolidatorState::default();
        let acts = consolidate(
            &mut view,
            &[],
            0,
            &[],
            &mut st,
            &ConsolidatorConfig::default(),
            0,
        );
        assert!(acts.contains(&Action::Cordon { node: 4 }), "{acts:?}");
        assert!(
            acts.iter()
                .any(|a| matches!(a, Action::Migrate { from: 4, to: 3, .. })),
            "{acts:?}"
        );
        assert_eq!(view.partition_nodes("s", 0).len(), 3);
        assert!(view.replicas_on(4).is_empty());
    }

    #[test]
    fn headroom_keeps_the_last_node_with_room_for_a_recent_shape() {
        let view = ClusterView::from_parts(
            vec![
                Node::new(1, "a", "p", Resources::new(4000, 8192), 1.0),
                Node::new(2, "a", "p", Resources::new(16000, 32768), 2.0),
                Node::new(3, "a", "p", Resources::new(16000, 32768), 2.0),
            ],
            vec![],
        );
        let cfg = ConsolidatorConfig::default();
        let shape = [Resources::new(8000, 4096)];
        let run = |headroom: &[Resources]| {
            let (mut view, mut st) = (view.clone(), ConsolidatorState::default());
            consolidate_with_headroom(&mut view, &[], 0, &[], &mut st, &cfg, 0, headroom);
            consolidate_with_headroom(&mut view, &[], 0, &[], &mut st, &cfg, 200, headroom);
            view.nodes().map(|n| n.id).collect::<Vec<_>>()
        };
        // The small node and one big node go; the other big one stays as room for
        // an 8-core task.
        assert_eq!(run(&shape), vec![3]);
        // Without headroom every empty node goes.
        assert!(run(&[]).is_empty());
    }

    #[test]
    fn merges_memory_bound_pairs_onto_a_cheaper_shape() {
        // Two compute nodes (16 cores, 32 GiB, 0.68/h) in one zone, each holding
        // 3 cores and 28 GiB: memory-bound. One 16-core 64 GiB node (0.768/h) holds both.
        let pools = vec![
            PoolSpec {
                name: "c-16".into(),
                capacity: Resources::new(16000, 32768),
                price_per_hour: 0.68,
                boot_delay_s: 0,
                min_nodes: 0,
                max_nodes: 10,
                zones: vec!["a".into(), "b".into()],
                labels: Default::default(),
            },
            PoolSpec {
                name: "gp-16".into(),
                capacity: Resources::new(16000, 65536),
                price_per_hour: 0.768,
                boot_delay_s: 0,
                min_nodes: 0,
                max_nodes: 10,
                zones: vec!["a".into(), "b".into()],
                labels: Default::default(),
            },
        ];
        let mem = |p: u32, node: NodeId| Replica {
            resources: Resources::new(1000, 9500),
            ..lr(p, node, 0)
        };
        let view = ClusterView::from_parts(
            vec![
                Node::new(1, "a", "c-16", Resources::new(16000, 32768), 0.68),
                Node::new(2, "a", "c-16", Resources::new(16000, 32768), 0.68),
                Node::new(3, "b", "c-16", Resources::new(16000, 32768), 0.68),
            ],
            vec![
                mem(0, 1),
                mem(1, 1),
                mem(2, 1),
                mem(3, 2),
                mem(4, 2),
                mem(5, 2),
                mem(0, 3),
            ],
        );
        let counts = BTreeMap::from([("c-16".to_string(), 3)]);
        let merges = plan_merges(&view, &pools, &counts, &[], 4);
        assert_eq!(
            merges,
            vec![Merge {
                pool: "gp-16".into(),
                zone: "a".into(),
                nodes: vec![1, 2],
                new_nodes: 1,
                // 75 % of 16 cores, 95 % of 64 GiB.
                room: Resources::new(12000, 62259),
            }]
        );
        // A pair sharing a partition is never merged.
        let view = ClusterView::from_parts(
            vec![
                Node::new(1, "a", "c-16", Resources::new(16000, 32768), 0.68),
                Node::new(2, "a", "c-16", Resources::new(16000, 32768), 0.68),
            ],
            vec![mem(0, 1), mem(1, 1), mem(0, 2)],
        );
        assert!(plan_merges(&view, &pools, &counts, &[], 4).is_empty());
        // Busy nodes are left alone.
        assert!(plan_merges(&view, &pools, &counts, &[1], 4).is_empty());
    }

    #[test]
    fn a_cpu_bound_general_purpose_node_is_swapped_for_a_compute_node() {
        let pool = |name: &str, mem: u64, price: f64| PoolSpec {
            name: name.into(),
            capacity: Resources::new(16000, mem),
            price_per_hour: price,
            boot_delay_s: 0,
            min_nodes: 0,
            max_nodes: 10,
            zones: vec!["a".into()],
            labels: Default::default(),
        };
        let pools = vec![pool("c-16", 32768, 0.68), pool("gp-16", 65536, 0.768)];
        let cpu = |p: u32, node: NodeId, mem: u64| Replica {
            resources: Resources::new(3800, mem),
            ..lr(p, node, 0)
        };
        // Node 1: 15.2 cores and 16 GiB on a 64 GiB node: a c-16 holds it for 0.885
        // of the price. Node 2: 40 GiB, which no c-16 holds.
        let view = ClusterView::from_parts(
            vec![
                Node::new(1, "a", "gp-16", Resources::new(16000, 65536), 0.768),
                Node::new(2, "a", "gp-16", Resources::new(16000, 65536), 0.768),
            ],
            vec![
                cpu(0, 1, 4096),
                cpu(1, 1, 4096),
                cpu(2, 1, 4096),
                cpu(3, 1, 4096),
                cpu(4, 2, 10240),
                cpu(5, 2, 10240),
                cpu(6, 2, 10240),
                cpu(7, 2, 10240),
            ],
        );
        let counts = BTreeMap::from([("gp-16".to_string(), 2)]);
        let cfg = MergeConfig {
            max_merges: 4,
            groups: false,
            pairs: false,
            swaps: true,
            ..MergeConfig::default()
        };
        let merges = plan_replacements(&view, &pools, &counts, &[], &cfg);
        assert_eq!(
            merges,
            vec![Merge {
                pool: "c-16".into(),
                zone: "a".into(),
                nodes: vec![1],
                new_nodes: 1,
                // Every core (a swap never leaves less CPU room), 95 % of 32 GiB.
                room: Resources::new(16000, 31129),
            }]
        );
        // Off by default (plan_merges), and never to a pool with fewer cores.
        assert!(plan_merges(&view, &pools, &counts, &[], 4).is_empty());
        let small = vec![PoolSpec {
            capacity: Resources::new(8000, 65536),
            price_per_hour: 0.3,
            ..pool("small", 65536, 0.3)
        }];
        assert!(plan_replacements(&view, &small, &counts, &[], &cfg).is_empty());
    }

    #[test]
    fn a_group_of_memory_full_nodes_becomes_fewer_larger_nodes() {
        let pools = vec![PoolSpec {
            name: "gp-16".into(),
            capacity: Resources::new(16000, 65536),
            price_per_hour: 0.768,
            boot_delay_s: 0,
            min_nodes: 0,
            max_nodes: 10,
            zones: vec!["a".into()],
            labels: Default::default(),
        }];
        // Four 32 GiB nodes full of memory (4 x 7.5 GiB, little CPU) and one half
        // full: no pair fits one 64 GiB node within 95 %. The least CPU-requested
        // first: the half-full node and three full ones (14 replicas) fit two gp-16
        // (1.536 of 2.72 an hour, the largest saving); all five would need three.
        let mut nodes = Vec::new();
        let mut replicas = Vec::new();
        for n in 1..=5u64 {
            nodes.push(Node::new(
                n,
                "a",
                "c-16",
                Resources::new(16000, 32768),
                0.68,
            ));
            let count = if n == 5 { 2 } else { 4 };
            for i in 0..count {
                replicas.push(Replica {
                    resources: Resources::new(1000, 7680),
                    ..lr((n * 10 + i) as u32, n, 0)
                });
            }
        }
        let view = ClusterView::from_parts(nodes, replicas);
        let counts = BTreeMap::from([("c-16".to_string(), 5)]);
        let merges = plan_merges(&view, &pools, &counts, &[], 4);
        assert_eq!(merges.len(), 1, "{merges:?}");
        assert_eq!(merges[0].new_nodes, 2);
        assert_eq!(merges[0].nodes, vec![5, 1, 2, 3]);
        // The packing it relies on: 18 replicas of 7.5 GiB into three 62 GiB bins.
        let items: Vec<(Resources, (&str, u32))> = (0..18)
            .map(|i| (Resources::new(1000, 7680), ("s", i)))
            .collect();
        assert!(pack_first_fit(&items, &[Resources::new(8000, 62259); 3]).is_some());
        assert!(pack_first_fit(&items, &[Resources::new(8000, 62259); 2]).is_none());
        // Two members of one partition never share a bin.
        let twins = [
            (Resources::new(1, 1), ("s", 0)),
            (Resources::new(1, 1), ("s", 0)),
        ];
        assert!(pack_first_fit(&twins, &[Resources::new(10, 10)]).is_none());
    }
}
