//! The QoS-first autoscaler: repair, then vertical, then horizontal.
//!
//! Each round, per partition (`desired_request`, then `repair_partition`, then
//! `resize_or_move_members`):
//! 1. **Repair**: a partition with fewer members than `min_replicas` (a node was lost)
//!    gets replacements, on distinct nodes and fresh zones.
//! 2. **Vertical**: every replica's CPU request follows the measured demand (or, with
//!    `PartitionScalerConfig::forecast`, the forecast's upper bound) divided by the target
//!    utilisation, in `cpu_step_millis` steps. Up at once; down only to the
//!    highest recommendation of the last `scale_down_window_s` (stabilisation).
//! 3. **Horizontal**: a raise that does not fit on the replica's node moves the replica
//!    (live migration, within the disruption budget) to a node with room; where no node
//!    has room, a node is added from the cheapest pool (per unit of resource) that fits
//!    the replica, in a zone no other member uses. Once the budget is spent, a raise
//!    that needs a move takes what its node has and moves in a later round; it gets a
//!    node only when no existing node could take it.
//!
//! Scale-in is the consolidator's job. The planner applies its actions to the view it
//! is given (the projection of the cluster once they are carried out), so a caller can
//! keep planning on it; it never takes a partition below its member count and never
//! places two members in one node (or one zone, when enough zones exist).

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::actions::Action;
use crate::forecast::{ForecastConfig, Forecaster};
use crate::pools::{pools_by_unit_price, BootingNode, PoolSpec};
use crate::scheduler::{place_move, place_partition, PlacementRequest, Policy, SpreadDomain};
use crate::view::{
    ClusterView, GpuDevices, LabelRequirement, Replica, ReplicaSlot, Resources, WorkloadKind,
};
use stator_api::ids::NodeId;

/// Measured demand of one partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionDemand {
    /// Service name.
    pub service: String,
    /// Partition index.
    pub partition: u32,
    /// CPU each replica is using, in millicores.
    pub cpu_used_millis: u64,
    /// Members the partition must keep (its replication factor).
    pub min_replicas: u32,
    /// The request a new replica starts with when repairing (memory is never scaled).
    pub base_resources: Resources,
    /// State size, for migration cost.
    pub state_bytes: u64,
    /// Anti-affinity domain.
    pub spread: SpreadDomain,
}

/// CPU each member of a partition uses, in millicores (`PartitionDemand::cpu_used_millis`),
/// when the partition as a whole uses `partition_used_millis`: the load splits over
/// the members there are. A partition short of members (a node was lost and the
/// replacement waits for a node to boot) has its survivors sized for the whole load
/// meanwhile; with no member yet (the first placement) or more than `replicas`
/// (a member mid-move), it is split over `replicas`.
pub fn per_member_used_millis(partition_used_millis: f64, members: usize, replicas: u32) -> u64 {
    let replicas = replicas.max(1) as usize;
    let serving = if members == 0 {
        replicas
    } else {
        members.min(replicas)
    };
    (partition_used_millis / serving as f64).ceil() as u64
}

/// Tunables of the partition scaler: stator's QoS-first autoscaler of this module,
/// which sizes each partition's members (not Kubernetes' Cluster Autoscaler, modelled
/// in `crate::baseline`, nor a service spec's `autoscale` section in `stator-api`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionScalerConfig {
    /// Utilisation (used / requested) each replica is sized for; derived from the
    /// latency target: below it the queueing delay keeps p99 within the SLO.
    pub target_utilization: f64,
    /// Requests move in steps of this many millicores.
    pub cpu_step_millis: u64,
    /// Smallest CPU request.
    pub min_cpu_millis: u64,
    /// Largest CPU request.
    pub max_cpu_millis: u64,
    /// Scale-down stabilisation window.
    pub scale_down_window_s: u64,
    /// Ignore changes smaller than this fraction of the current request (anti-flap).
    pub tolerance: f64,
    /// Most migrations one round may start (disruption budget).
    pub max_migrations: usize,
    /// Predictive sizing: when set, each request is sized for the larger of the
    /// current demand and the forecast upper bound of the partition's demand over the
    /// forecast's horizon (`crate::forecast`), so the growth and noise margin comes
    /// from the forecast and `target_utilization` can sit closer to the SLO's limit.
    #[serde(default)]
    pub forecast: Option<ForecastConfig>,
}

impl Default for PartitionScalerConfig {
    fn default() -> Self {
        PartitionScalerConfig {
            target_utilization: 0.7,
            cpu_step_millis: 50,
            min_cpu_millis: 50,
            max_cpu_millis: 64_000,
            scale_down_window_s: 300,
            tolerance: 0.1,
            max_migrations: 64,
            forecast: None,
        }
    }
}

/// What the partition scaler remembers between rounds: recent recommendations per
/// partition, and its forecast series.
///
/// Partitions are numbered densely the first time they are seen; a round finds a
/// demand's number through `by_demand` (the number the demand at the same position
/// had last round, checked against its key) and so, with the same demands in the same
/// order every round, does no hash lookup per partition.
#[derive(Debug, Clone, Default)]
pub struct PartitionScalerState {
    /// By service, then partition -> dense number: looked up by `&str`, so a round
    /// allocates no key.
    index: FxHashMap<String, FxHashMap<u32, u32>>,
    /// `keys[n]`: the partition numbered `n`, as (its service's number in
    /// `service_names`, partition): the check of a remembered number reads one of a
    /// few service names, not a name stored per partition (a cache miss each).
    keys: Vec<(u32, u32)>,
    /// Service names in order of first sight.
    service_names: Vec<String>,
    /// `recommendations[n]`: recent (time, recommendation) of partition `n`.
    recommendations: Vec<VecDeque<(u64, u64)>>,
    /// `series[n]`: partition `n`'s index in `forecaster`.
    series: Vec<usize>,
    /// `by_demand[i]`: the number of the demand at position `i` last round.
    by_demand: Vec<u32>,
    /// `view_parts[n]`: partition `n`'s dense index in the view last seen
    /// (`ClusterView::partition_index`), checked against the key before use, so a
    /// round hashes nothing per partition while the view is the same one.
    view_parts: Vec<u32>,
    forecaster: Forecaster,
}

impl PartitionScalerState {
    /// The dense number of `d`, the `i`-th demand of this round.
    fn number(&mut self, i: usize, d: &PartitionDemand) -> usize {
        if let Some(&n) = self.by_demand.get(i) {
            let (service, partition) = self.keys[n as usize];
            if partition == d.partition && self.service_names[service as usize] == d.service {
                return n as usize;
            }
        }
        let next = self.keys.len() as u32;
        let by_partition = match self.index.get_mut(d.service.as_str()) {
            Some(m) => m,
            None => self.index.entry(d.service.clone()).or_default(),
        };
        let n = *by_partition.entry(d.partition).or_insert(next);
        if n == next {
            let service = match self.service_names.iter().position(|s| *s == d.service) {
                Some(s) => s,
                None => {
                    self.service_names.push(d.service.clone());
                    self.service_names.len() - 1
                }
            };
            self.keys.push((service as u32, d.partition));
            self.recommendations.push(VecDeque::new());
            let ix = self.forecaster.series_index(&d.service, d.partition);
            self.series.push(ix);
        }
        if self.by_demand.len() <= i {
            self.by_demand.resize(i + 1, u32::MAX);
        }
        self.by_demand[i] = n;
        n as usize
    }

    /// The view's dense index of partition number `n` (the demand `d`), None if it
    /// has no replica in the view yet.
    fn view_partition(
        &mut self,
        n: usize,
        view: &ClusterView,
        d: &PartitionDemand,
    ) -> Option<usize> {
        if let Some(&ix) = self.view_parts.get(n) {
            if view.partition_is(ix as usize, &d.service, d.partition) {
                return Some(ix as usize);
            }
        }
        let ix = view.partition_index(&d.service, d.partition)?;
        if self.view_parts.len() <= n {
            self.view_parts.resize(n + 1, u32::MAX);
        }
        self.view_parts[n] = ix as u32;
        Some(ix)
    }

    /// Records a recommendation for partition number `n` and returns the stabilised
    /// one: the maximum over the scale-down window (so requests rise at once but fall
    /// only after the window).
    fn stabilise(&mut self, n: usize, now_s: u64, rec: u64, window_s: u64) -> u64 {
        let q = &mut self.recommendations[n];
        while q.front().is_some_and(|&(t, _)| t + window_s < now_s) {
            q.pop_front();
        }
        // Keep the queue short: a newer, larger value dominates older smaller ones.
        while q.back().is_some_and(|&(_, r)| r <= rec) {
            q.pop_back();
        }
        q.push_back((now_s, rec));
        q.front().map(|&(_, r)| r).unwrap_or(rec)
    }
}

/// One autoscaling round; see the module doc. `booting` are nodes already requested.
pub fn autoscale(
    view: &mut ClusterView,
    demands: &[PartitionDemand],
    pools: &[PoolSpec],
    booting: &[BootingNode],
    state: &mut PartitionScalerState,
    cfg: &PartitionScalerConfig,
    now_s: u64,
) -> Vec<Action> {
    let mut round = Round::default();
    for (i, d) in demands.iter().enumerate() {
        let n = state.number(i, d);
        let desired = desired_request(d, n, state, cfg, now_s);
        // Resolved once per partition and round (again only after a repair, which
        // may place its first replica): the member lookups below are `Vec` indexes.
        let mut part = state.view_partition(n, view, d);
        let members = part.map_or(0, |p| view.members_at(p).len()) as u32;
        if members < d.min_replicas {
            let repaired = repair_partition(view, d, members, desired, &mut round);
            part = state.view_partition(n, view, d);
            if repaired && members > 0 {
                // The members' sizing (`desired`) was for the survivors alone; the
                // next round sizes all of them for the load split again.
                continue;
            }
        }
        if let Some(part) = part {
            resize_or_move_members(view, d, part, desired, cfg, &mut round);
        }
    }
    let mut unmet = round.unmet;
    unmet.extend(needs_without_room(view, &mut round.deferred));
    let mut actions = round.actions;
    actions.extend(plan_new_nodes(
        view,
        &unmet,
        pools,
        booting,
        PoolChoice::CheapestForShape,
    ));
    actions
}

/// What one round has decided so far.
#[derive(Default)]
struct Round {
    actions: Vec<Action>,
    unmet: Vec<UnmetNeed>,
    /// Raises that need a move when the round's migration budget is spent: they
    /// move in a later round, and get a node only if no existing one has the room
    /// ([`needs_without_room`]).
    deferred: Vec<DeferredRaise>,
    migrations: usize,
    /// Scratch buffer for a partition's member slots.
    slots: Vec<ReplicaSlot>,
    /// Scratch buffer for the nodes of a moving member's partition's other members.
    survivors: Vec<NodeId>,
}

/// A raise deferred to a later round's move ([`Round::deferred`]): the member and the
/// request it wants, nothing copied. The zones it must avoid (its partition's other
/// members') are read from the view when [`needs_without_room`] needs them, and
/// names are copied only for the few raises that get a node. At 10,000 nodes a
/// round defers thousands of raises; copying each one's service name and zone names
/// (as an [`UnmetNeed`]) was a third of the day's CPU time, in `malloc`.
struct DeferredRaise {
    slot: ReplicaSlot,
    resources: Resources,
}

/// The CPU request each member of `d` should have: the demand (or, with a forecast,
/// its upper bound over the horizon) over the target utilisation, in steps, held at
/// the window's highest recommendation on the way down.
fn desired_request(
    d: &PartitionDemand,
    n: usize,
    state: &mut PartitionScalerState,
    cfg: &PartitionScalerConfig,
    now_s: u64,
) -> u64 {
    let sizing_used = match &cfg.forecast {
        Some(fc) => (d.cpu_used_millis as f64).max(state.forecaster.observe_index(
            state.series[n],
            now_s,
            d.cpu_used_millis as f64,
            fc,
        )),
        None => d.cpu_used_millis as f64,
    };
    // The small epsilon keeps 700 / 0.7 at 1000, not 1001.
    let raw = (sizing_used / cfg.target_utilization - 1e-6)
        .ceil()
        .max(0.0) as u64;
    let rec = round_up(raw, cfg.cpu_step_millis).clamp(cfg.min_cpu_millis, cfg.max_cpu_millis);
    state.stabilise(n, now_s, rec, cfg.scale_down_window_s)
}

/// Phase 1: a partition with fewer members than `min_replicas` (a node was lost) gets
/// replacements, on distinct nodes and fresh zones, or unmet needs for new nodes.
fn repair_partition(
    view: &mut ClusterView,
    d: &PartitionDemand,
    members: u32,
    desired: u64,
    round: &mut Round,
) -> bool {
    if members < d.min_replicas {
        let missing = d.min_replicas - members;
        // `desired` sizes the survivors for the whole load; once the replacement
        // joins, the load splits over `min_replicas` members again, so it is sized
        // for that share (smaller, it finds a node sooner).
        let cpu_millis = if members > 0 {
            (desired * members as u64).div_ceil(d.min_replicas as u64)
        } else {
            desired
        };
        let resources = Resources {
            cpu_millis,
            ..d.base_resources
        };
        let req = PlacementRequest {
            spread: d.spread,
            ..PlacementRequest::long_running(&d.service, d.partition, missing, resources)
        };
        match place_partition(view, &req, Policy::Cost) {
            Ok(nodes) => {
                for node in nodes {
                    view.add_replica(new_replica(d, node, resources));
                    round.actions.push(Action::Place {
                        service: d.service.clone(),
                        partition: d.partition,
                        node,
                        resources,
                    });
                }
                return true;
            }
            Err(_) => {
                let zones_used = zones_of(view, &view.partition_nodes(&d.service, d.partition));
                for _ in 0..missing {
                    round.unmet.push(UnmetNeed {
                        partition: Some((d.service.clone(), d.partition)),
                        ..UnmetNeed::new(resources, zones_used.clone())
                    });
                }
            }
        }
    }
    false
}

/// Phases 2 and 3: each member's request follows `desired` (vertical); a raise its
/// node cannot hold moves the member live to a node with room (within the round's
/// migration budget), or takes what the node has and asks for a node for the rest.
fn resize_or_move_members(
    view: &mut ClusterView,
    d: &PartitionDemand,
    part: usize,
    desired: u64,
    cfg: &PartitionScalerConfig,
    round: &mut Round,
) {
    // The member list does not change here (moves and resizes keep the slots); a
    // buffer kept by the round spares an allocation per partition and round.
    let mut slots = std::mem::take(&mut round.slots);
    slots.clear();
    slots.extend_from_slice(view.members_at(part));
    for &slot in &slots {
        // Copy only what the round needs: cloning each member (and its service
        // name) every round is most of a round's allocations at 100k replicas.
        let r = {
            let m = view.replica(slot).expect("member");
            MemberFacts {
                node: m.node,
                resources: m.resources,
                state_bytes: m.state_bytes,
            }
        };
        let current = r.resources.cpu_millis;
        let change = desired.abs_diff(current) as f64;
        if change <= cfg.tolerance * current as f64 {
            continue;
        }
        let new_res = Resources {
            cpu_millis: desired,
            ..r.resources
        };
        // Shrinking always fits; growing fits where the node has the room.
        let free = view.free(r.node).expect("member node");
        if desired < current || desired - current <= free.cpu_millis {
            view.resize_replica(slot, new_res);
            round.actions.push(Action::Resize {
                service: d.service.clone(),
                partition: d.partition,
                node: r.node,
                from: r.resources,
                to: new_res,
            });
            continue;
        }
        if round.migrations >= cfg.max_migrations {
            // No move this round: take what the node has now, and leave the rest
            // to a later round's move (or to a new node when no node has the room).
            resize_in_part(view, d, slot, &r, free, cfg, round);
            round.deferred.push(DeferredRaise {
                slot,
                resources: new_res,
            });
            continue;
        }
        let mut survivors = std::mem::take(&mut round.survivors);
        survivors.clear();
        survivors.extend(
            view.members_at(part)
                .iter()
                .map(|&s| view.replica(s).expect("member").node)
                .filter(|&n| n != r.node),
        );
        let req = PlacementRequest {
            spread: d.spread,
            ..PlacementRequest::long_running(&d.service, d.partition, 1, new_res)
        };
        match place_move(view, &req, &survivors, r.node, Policy::Cost) {
            Ok(to) if keeps_zone_spread(view, &survivors, r.node, to) => {
                view.move_replica(slot, to);
                view.resize_replica(slot, new_res);
                round.migrations += 1;
                round.actions.push(Action::Migrate {
                    service: d.service.clone(),
                    partition: d.partition,
                    from: r.node,
                    to,
                    resources: new_res,
                    state_bytes: r.state_bytes,
                });
            }
            _ => {
                // Take what the node has now; ask for a node for the rest.
                resize_in_part(view, d, slot, &r, free, cfg, round);
                round.unmet.push(UnmetNeed {
                    partition: Some((d.service.clone(), d.partition)),
                    ..UnmetNeed::new(new_res, zones_of(view, &survivors))
                });
            }
        }
        round.survivors = survivors;
    }
    round.slots = slots;
}

/// A raise the member's node cannot hold in full: the member takes the node's free
/// CPU (in whole steps) now, so it is short by as little as the node allows until it
/// moves.
fn resize_in_part(
    view: &mut ClusterView,
    d: &PartitionDemand,
    slot: usize,
    r: &MemberFacts,
    free: Resources,
    cfg: &PartitionScalerConfig,
    round: &mut Round,
) {
    if free.cpu_millis < cfg.cpu_step_millis {
        return;
    }
    let partial = Resources {
        cpu_millis: r.resources.cpu_millis
            + free.cpu_millis / cfg.cpu_step_millis * cfg.cpu_step_millis,
        ..r.resources
    };
    view.resize_replica(slot, partial);
    round.actions.push(Action::Resize {
        service: d.service.clone(),
        partition: d.partition,
        node: r.node,
        from: r.resources,
        to: partial,
    });
}

/// The deferred raises (moves the round's budget had no room for) that no existing
/// node could take: each is simulated, largest first, onto the schedulable node with
/// the most free CPU among the zones it may use (worst fit, one heap per zone), and
/// only those that fit nowhere are returned, to be given new nodes. The others move
/// in a later round; asking nodes for them would pay for nodes the moves never use.
/// One pass over the nodes, and only when something was deferred. Zones are
/// compared by their interned numbers ([`ClusterView::zone_index_of`]); names are
/// copied only into the needs returned.
fn needs_without_room(view: &ClusterView, deferred: &mut Vec<DeferredRaise>) -> Vec<UnmetNeed> {
    use std::collections::BinaryHeap;
    if deferred.is_empty() {
        return Vec::new();
    }
    // Read from the scan records (`ClusterView::hot`: free room and zone number per
    // node, no lookup by id) and heapified per zone in one pass: this ran once per
    // service and round over every node.
    let mut per_zone: Vec<Vec<(u64, u64, NodeId)>> = vec![Vec::new(); view.zone_count()];
    for h in view.hot.iter().filter(|h| h.schedulable) {
        per_zone[h.zone_ix as usize].push((h.free_cpu, h.free_mem, h.id));
    }
    let mut heaps: Vec<BinaryHeap<(u64, u64, NodeId)>> =
        per_zone.into_iter().map(BinaryHeap::from).collect();
    deferred.sort_by_key(|b| std::cmp::Reverse(b.resources.cpu_millis));
    let mut out = Vec::new();
    // Zones of the current raise's partition's other members, one flag per zone.
    let mut taken: Vec<bool> = vec![false; heaps.len()];
    for raise in deferred.drain(..) {
        let member = view.replica(raise.slot).expect("deferred member");
        let members = view.members_at(view.partition_index_of(raise.slot).expect("member"));
        // The zones of the partition's other members: the one zone filter the move
        // path (`keeps_zone_spread`) applies too.
        taken.iter_mut().for_each(|t| *t = false);
        for &s in members {
            let n = view.replica(s).expect("member").node;
            if n != member.node {
                if let Some(z) = view.zone_index_of(n) {
                    taken[z as usize] = true;
                }
            }
        }
        let need = &raise.resources;
        let best = (0..heaps.len())
            .filter(|&z| !taken[z])
            .filter_map(|z| heaps[z].peek().map(|&top| (top, z)))
            .filter(|&((cpu, mem, _), _)| need.cpu_millis <= cpu && need.memory_mib <= mem)
            .max_by_key(|&((cpu, _, id), _)| (cpu, std::cmp::Reverse(id)));
        match best {
            Some(((cpu, mem, id), z)) => {
                heaps[z].pop();
                heaps[z].push((cpu - need.cpu_millis, mem - need.memory_mib, id));
            }
            None => {
                // The survivors' zones, as `zones_of` lists them, without the node list.
                let avoid_zones: Vec<String> = members
                    .iter()
                    .map(|&s| view.replica(s).expect("member").node)
                    .filter(|&n| n != member.node)
                    .filter_map(|n| view.zone_of(n))
                    .map(str::to_string)
                    .collect();
                out.push(UnmetNeed {
                    partition: Some((member.service.clone(), member.partition)),
                    ..UnmetNeed::new(raise.resources, avoid_zones)
                });
            }
        }
    }
    out
}

/// What the vertical/horizontal step reads of a member.
struct MemberFacts {
    node: NodeId,
    resources: Resources,
    state_bytes: u64,
}

/// Capacity that could not be found among existing nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct UnmetNeed {
    /// What one replica needs.
    pub resources: Resources,
    /// Zones it should avoid (the zones its partition's other members use).
    pub avoid_zones: Vec<String>,
    /// Whether `avoid_zones` is only preferred: true for Kubernetes pods, whose zone
    /// spread is a scheduling preference the scheduler relaxes when no zone is free
    /// (so Cluster Autoscaler's simulation must relax it too); false for stator's
    /// moves, which must land in a free zone.
    pub soft_spread: bool,
    /// The partition it belongs to: two needs of one partition never share a node
    /// (node anti-affinity is hard for both policy sets).
    pub partition: Option<(String, u32)>,
    /// Labels a node must carry (e.g. the GPU model); only pools whose labels match
    /// are considered.
    pub node_selector: Vec<LabelRequirement>,
}

impl UnmetNeed {
    /// A need whose zone avoidance is hard and that belongs to no partition.
    pub fn new(resources: Resources, avoid_zones: Vec<String>) -> Self {
        UnmetNeed {
            resources,
            avoid_zones,
            soft_spread: false,
            partition: None,
            node_selector: Vec::new(),
        }
    }

    /// Whether a node of `pool` could take this need (capacity and labels).
    fn fits_pool(&self, pool: &PoolSpec) -> bool {
        self.resources.fits_in(&pool.capacity)
            && self.resources.gpu_fits_capacity(&pool.capacity)
            && selects(&self.node_selector, &pool.labels)
    }
}

/// Whether `labels` satisfy every requirement of `selector`.
fn selects(selector: &[LabelRequirement], labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|l| match labels.get(&l.key) {
        Some(v) => l.values.is_empty() || l.values.iter().any(|a| a == v),
        None => false,
    })
}

/// How to choose the pool for a new node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolChoice {
    /// The cheapest pool per unit of resource (one core + 4 GiB, a GPU as 8 cores)
    /// that fits.
    CheapestPerUnit,
    /// stator: the pool whose node holds the need's shape most cheaply — price times
    /// the need's dominant share of the node (what one such need costs when nodes of
    /// that pool are filled with needs like it). A GPU task then goes to the pool with
    /// the cheapest GPU slot for its CPU and memory, not to the node with the cheapest
    /// average unit, and CPU-bound replicas to compute-optimised nodes.
    CheapestForShape,
    /// Cluster Autoscaler's default `random` expander: one scale-up per loop, for one
    /// node group drawn (by this value, from the caller's seeded generator) among the
    /// groups that fit at least one pending pod; the pods that group cannot hold wait
    /// for the next loop.
    Random(u64),
    /// Karpenter-like provisioning: pending pods are packed (largest first) into new
    /// node claims as long as some pool can hold the claim; each claim then launches
    /// the cheapest pool that holds everything packed on it.
    CheapestForBatch,
}

/// Cluster Autoscaler's `--max-nodes-per-scaleup` default: most nodes one scale-up
/// may add (kubernetes/autoscaler `cluster-autoscaler/FAQ.md`).
pub const MAX_NODES_PER_SCALEUP: usize = 1000;

/// A node that needs are simulated onto: booting, or planned in this call.
struct Bin<'a> {
    zone: String,
    /// `zone`'s number in the call's [`ZoneNumbers`].
    zone_ix: usize,
    free: Resources,
    /// The node's GPU devices: a need's GPU share must fit them one by one.
    gpus: GpuDevices,
    partitions: Vec<(String, u32)>,
    labels: &'a BTreeMap<String, String>,
}

impl Bin<'_> {
    fn takes(&self, need: &UnmetNeed) -> bool {
        need.resources.fits_in(&self.free)
            && self.gpus.fits(&need.resources)
            && selects(&need.node_selector, self.labels)
            && need.partition.as_ref().is_none_or(|p| {
                // The partition number first: most entries differ there, and the
                // service names then need no comparison.
                !self.partitions.iter().any(|q| q.1 == p.1 && q.0 == p.0)
            })
    }
    fn put(&mut self, need: &UnmetNeed) {
        self.free = self.free.saturating_sub(&need.resources);
        self.gpus.take(&need.resources);
        if let Some(p) = &need.partition {
            self.partitions.push(p.clone());
        }
    }
}

/// The first bin that takes `need`, in a zone it does not avoid unless its spread is
/// soft. Cluster Autoscaler's estimator runs the scheduler's filters only, so a
/// preferred spread (a score) does not keep a pod off a node there. A pure filter
/// plus first fit also makes the planning repeatable: asked again with the nodes it
/// planned booting, the same needs land on them in the same order.
fn fit_in_bins(bins: &[Bin], need: &UnmetNeed, avoid: &ZoneSet) -> Option<usize> {
    bins.iter()
        .position(|b| (need.soft_spread || !avoid.has(b.zone_ix, &b.zone)) && b.takes(need))
}

/// The zones of one scale-up, numbered in order of first sight, so a fit compares
/// numbers, not names (a scale-up for thousands of needs compared each need's zones
/// with every bin's by name).
#[derive(Default)]
struct ZoneNumbers<'a> {
    names: Vec<&'a str>,
}

impl<'a> ZoneNumbers<'a> {
    fn number(&mut self, zone: &'a str) -> usize {
        match self.names.iter().position(|z| *z == zone) {
            Some(ix) => ix,
            None => {
                self.names.push(zone);
                self.names.len() - 1
            }
        }
    }

    /// The number of a zone numbered before, `usize::MAX` for another one (which
    /// [`ZoneSet::has`] then compares by name).
    fn of(&self, zone: &str) -> usize {
        self.names
            .iter()
            .position(|z| *z == zone)
            .unwrap_or(usize::MAX)
    }

    /// The set of `zones` (by name) among the numbered ones.
    fn set_of<'n>(&self, zones: &'n [String]) -> ZoneSet<'n> {
        let mut bits = 0u64;
        for (ix, name) in self.names.iter().enumerate().take(ZoneSet::BITS) {
            if zones.iter().any(|z| z == name) {
                bits |= 1 << ix;
            }
        }
        ZoneSet { bits, names: zones }
    }
}

/// A need's avoided zones: a bit per zone number below [`ZoneSet::BITS`], names for
/// the rest (more zones than that in one scale-up is not expected, but stays right).
struct ZoneSet<'n> {
    bits: u64,
    names: &'n [String],
}

impl ZoneSet<'_> {
    const BITS: usize = 64;

    fn has(&self, zone_ix: usize, zone: &str) -> bool {
        if zone_ix < Self::BITS {
            self.bits & (1 << zone_ix) != 0
        } else {
            self.names.iter().any(|z| z == zone)
        }
    }
}

/// Adds nodes so every unmet need fits: first into nodes already booting (and those
/// planned in this call), then into new ones. Respects pool maximums. Never adds a
/// node that no need is simulated onto, so calling it again with the nodes it asked
/// for as `booting` adds nothing for the same needs.
pub fn plan_new_nodes(
    view: &ClusterView,
    unmet: &[UnmetNeed],
    pools: &[PoolSpec],
    booting: &[BootingNode],
    choice: PoolChoice,
) -> Vec<Action> {
    plan_new_nodes_with_fit(view, unmet, pools, booting, choice).actions
}

/// What [`plan_new_nodes_with_fit`] decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScaleUpPlan {
    /// One `AddNode` per new node.
    pub actions: Vec<Action>,
    /// Per unmet need (input order): `Some(i)` when it was simulated onto the `i`-th
    /// new node of `actions`, `None` when it fits a booting node or nothing.
    pub new_node_of: Vec<Option<usize>>,
    /// Per unmet need: whether it fits a node already booting.
    pub on_booting: Vec<bool>,
}

/// [`plan_new_nodes`], also returning where each need was simulated onto (for tests
/// that hold it to "no more capacity than the needs").
pub fn plan_new_nodes_with_fit(
    view: &ClusterView,
    unmet: &[UnmetNeed],
    pools: &[PoolSpec],
    booting: &[BootingNode],
    choice: PoolChoice,
) -> ScaleUpPlan {
    let mut plan = ScaleUpPlan {
        actions: Vec::new(),
        new_node_of: vec![None; unmet.len()],
        on_booting: vec![false; unmet.len()],
    };
    if unmet.is_empty() {
        return plan;
    }
    // Nodes per pool, in the view and booting (`pools::pool_counts` with borrowed names:
    // copying every node's pool name was a visible cost of a 10,000-node round).
    let mut counts: FxHashMap<&str, u32> = FxHashMap::default();
    for b in booting {
        *counts.entry(b.pool.as_str()).or_insert(0) += 1;
    }
    let by_pool: HashMap<&str, &PoolSpec> = pools.iter().map(|p| (p.name.as_str(), p)).collect();
    // Every zone a bin can have (a booting node's, a pool's, or none) is numbered
    // before the needs' avoided zones are read.
    let mut zones = ZoneNumbers::default();
    for z in booting
        .iter()
        .map(|b| b.zone.as_str())
        .chain(
            pools
                .iter()
                .flat_map(|p| p.zones.iter().map(String::as_str)),
        )
        .chain([""])
    {
        zones.number(z);
    }
    let avoid: Vec<ZoneSet> = unmet.iter().map(|u| zones.set_of(&u.avoid_zones)).collect();
    // Virtual bins: booting nodes start empty (the view does not hold them yet).
    let mut bins: Vec<Bin> = booting
        .iter()
        .filter_map(|b| {
            by_pool.get(b.pool.as_str()).map(|p| Bin {
                zone: b.zone.clone(),
                zone_ix: zones.of(&b.zone),
                free: p.capacity,
                gpus: GpuDevices::of_capacity(&p.capacity),
                partitions: Vec::new(),
                labels: &p.labels,
            })
        })
        .collect();
    let n_booting = bins.len();
    let mut order: Vec<usize> = (0..unmet.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&unmet[a].resources, &unmet[b].resources);
        b.cpu_millis
            .cmp(&a.cpu_millis)
            .then(b.memory_mib.cmp(&a.memory_mib))
            .then(b.gpu_milli.cmp(&a.gpu_milli))
    });
    // Booting nodes absorb what they can, whatever the pool choice.
    let mut rest = Vec::new();
    for i in order {
        match fit_in_bins(&bins, &unmet[i], &avoid[i]) {
            Some(b) => {
                bins[b].put(&unmet[i]);
                plan.on_booting[i] = true;
            }
            None => rest.push(i),
        }
    }
    if rest.is_empty() {
        // Nothing needs a new node: the pass over every node below is not needed.
        return plan;
    }
    let mut zone_pool_counts: FxHashMap<(&str, &str), usize> = FxHashMap::default();
    for n in view.nodes() {
        *zone_pool_counts
            .entry((n.zone.as_str(), n.pool.as_str()))
            .or_insert(0) += 1;
        *counts.entry(n.pool.as_str()).or_insert(0) += 1;
    }
    let mut s = ScaleUp {
        unmet,
        pools,
        avoid,
        zones,
        bins,
        n_booting,
        counts,
        zone_pool_counts,
    };
    match choice {
        PoolChoice::CheapestForBatch => claim_batches(&mut s, rest, &mut plan),
        PoolChoice::Random(x) => scale_up_one_group(&mut s, rest, x, &mut plan),
        PoolChoice::CheapestPerUnit | PoolChoice::CheapestForShape => {
            add_node_per_need(&mut s, rest, choice, &mut plan)
        }
    }
    plan
}

/// A scale-up once the booting nodes took what they could: the needs left, the bins
/// (booting nodes first, then the nodes planned in this call) and the node counts.
struct ScaleUp<'a> {
    unmet: &'a [UnmetNeed],
    pools: &'a [PoolSpec],
    /// Per need, the zones it avoids.
    avoid: Vec<ZoneSet<'a>>,
    zones: ZoneNumbers<'a>,
    bins: Vec<Bin<'a>>,
    /// `bins[..n_booting]` are the booting nodes.
    n_booting: usize,
    /// Nodes per pool: in the view, booting and planned.
    counts: FxHashMap<&'a str, u32>,
    /// Nodes per (zone, pool) in the view.
    zone_pool_counts: FxHashMap<(&'a str, &'a str), usize>,
}

impl<'a> ScaleUp<'a> {
    /// Plans a new node of `pool` holding `need`: picks its zone, counts the node in its
    /// pool and opens its bin. Returns the zone.
    fn open_node(&mut self, pool: &'a PoolSpec, need: &UnmetNeed) -> String {
        let zone = self.pick_zone(pool, need);
        *self.counts.entry(pool.name.as_str()).or_insert(0) += 1;
        let mut bin = Bin {
            zone_ix: self.zones.of(&zone),
            zone: zone.clone(),
            free: pool.capacity,
            gpus: GpuDevices::of_capacity(&pool.capacity),
            partitions: Vec::new(),
            labels: &pool.labels,
        };
        bin.put(need);
        self.bins.push(bin);
        zone
    }
}

impl ScaleUp<'_> {
    fn has_room(&self, p: &PoolSpec) -> bool {
        self.counts.get(p.name.as_str()).copied().unwrap_or(0) < p.max_nodes
    }

    /// Zone for a new node of `pool`: one the need does not avoid, with the fewest of
    /// this pool's nodes (existing and planned).
    fn pick_zone(&self, pool: &PoolSpec, need: &UnmetNeed) -> String {
        pool.zones
            .iter()
            .filter(|z| !need.avoid_zones.contains(z))
            .min_by_key(|z| {
                let zone_ix = self.zones.of(z);
                self.zone_pool_counts
                    .get(&(z.as_str(), pool.name.as_str()))
                    .copied()
                    .unwrap_or(0)
                    + self
                        .bins
                        .iter()
                        .filter(|b| {
                            b.zone_ix == zone_ix && (zone_ix != usize::MAX || b.zone == **z)
                        })
                        .count()
            })
            .or(pool.zones.first())
            .cloned()
            .unwrap_or_default()
    }
}

/// Whether a new node of capacity `cap` holds every GPU share of `needs` on its
/// devices, taken in order by best fit (a claim's sum may fit where its shares do not).
fn gpus_hold<'r>(cap: &Resources, needs: impl Iterator<Item = &'r Resources>) -> bool {
    let mut gpus = GpuDevices::of_capacity(cap);
    for r in needs {
        if !gpus.fits(r) {
            return false;
        }
        gpus.take(r);
    }
    true
}

/// Karpenter-like provisioning ([`PoolChoice::CheapestForBatch`]).
fn claim_batches(s: &mut ScaleUp, rest: Vec<usize>, plan: &mut ScaleUpPlan) {
    // Claims: needs packed while some pool with room could hold them all.
    struct Claim {
        zone: String,
        total: Resources,
        partitions: Vec<(String, u32)>,
        needs: Vec<usize>,
    }
    // `extra`: a need about to join `needs`.
    let holds = |total: &Resources, zone: &str, needs: &[usize], extra: &Resources| {
        s.pools.iter().any(|p| {
            total.fits_in(&p.capacity)
                && (total.gpu_milli == 0
                    || gpus_hold(
                        &p.capacity,
                        needs.iter().map(|&n| &s.unmet[n].resources).chain([extra]),
                    ))
                && s.has_room(p)
                && p.zones.iter().any(|z| z == zone)
                && needs
                    .iter()
                    .all(|&n| selects(&s.unmet[n].node_selector, &p.labels))
        })
    };
    let mut claims: Vec<Claim> = Vec::new();
    for i in rest {
        let need = &s.unmet[i];
        let selects_all = |c: &Claim, need: &UnmetNeed| {
            s.pools.iter().any(|p| {
                selects(&need.node_selector, &p.labels)
                    && c.needs
                        .iter()
                        .all(|&n| selects(&s.unmet[n].node_selector, &p.labels))
            })
        };
        let joins = |c: &Claim| {
            (need.soft_spread || !need.avoid_zones.contains(&c.zone))
                && need
                    .partition
                    .as_ref()
                    .is_none_or(|p| !c.partitions.contains(p))
                && selects_all(c, need)
                && holds(
                    &(c.total + need.resources),
                    &c.zone,
                    &c.needs,
                    &need.resources,
                )
        };
        let at = match claims.iter().position(joins) {
            Some(at) => at,
            None => {
                // The zone: the one the need does not avoid with the fewest
                // nodes planned so far.
                let zones: Vec<&String> = s
                    .pools
                    .iter()
                    .filter(|p| need.fits_pool(p) && s.has_room(p))
                    .flat_map(|p| p.zones.iter())
                    .collect();
                let Some(zone) = zones
                    .iter()
                    .filter(|z| !need.avoid_zones.contains(z))
                    .min_by_key(|z| claims.iter().filter(|c| &c.zone == **z).count())
                    .or(zones.first())
                    .map(|z| (*z).clone())
                else {
                    continue;
                };
                if claims.len() >= MAX_NODES_PER_SCALEUP {
                    continue;
                }
                claims.push(Claim {
                    zone,
                    total: Resources::default(),
                    partitions: Vec::new(),
                    needs: Vec::new(),
                });
                claims.len() - 1
            }
        };
        let c = &mut claims[at];
        c.total = c.total + need.resources;
        if let Some(p) = &need.partition {
            c.partitions.push(p.clone());
        }
        c.needs.push(i);
    }
    for c in claims {
        let Some(pool) = s
            .pools
            .iter()
            .filter(|p| {
                c.total.fits_in(&p.capacity)
                    && (c.total.gpu_milli == 0
                        || gpus_hold(&p.capacity, c.needs.iter().map(|&n| &s.unmet[n].resources)))
                    && s.has_room(p)
                    && p.zones.contains(&c.zone)
                    && c.needs
                        .iter()
                        .all(|&n| selects(&s.unmet[n].node_selector, &p.labels))
            })
            .min_by(|a, b| {
                a.price_per_hour
                    .total_cmp(&b.price_per_hour)
                    .then(a.name.cmp(&b.name))
            })
        else {
            continue;
        };
        *s.counts.entry(pool.name.as_str()).or_insert(0) += 1;
        for &i in &c.needs {
            plan.new_node_of[i] = Some(plan.actions.len());
        }
        plan.actions.push(Action::AddNode {
            pool: pool.name.clone(),
            zone: c.zone,
        });
    }
}

/// Cluster Autoscaler's `random` expander ([`PoolChoice::Random`]): one node group.
fn scale_up_one_group(s: &mut ScaleUp, rest: Vec<usize>, x: u64, plan: &mut ScaleUpPlan) {
    // One node group per loop: drawn among those that fit a pending need.
    let groups: Vec<&PoolSpec> = s
        .pools
        .iter()
        .filter(|p| s.has_room(p) && rest.iter().any(|&i| s.unmet[i].fits_pool(p)))
        .collect();
    if groups.is_empty() {
        return;
    }
    let pool = groups[(x as usize) % groups.len()];
    let mut added = 0usize;
    for i in rest {
        let need = &s.unmet[i];
        if !need.fits_pool(pool) {
            continue;
        }
        if let Some(b) = fit_in_bins(&s.bins[s.n_booting..], need, &s.avoid[i]) {
            s.bins[s.n_booting + b].put(need);
            plan.new_node_of[i] = Some(b);
            continue;
        }
        if !s.has_room(pool) || added >= MAX_NODES_PER_SCALEUP {
            continue;
        }
        let zone = s.open_node(pool, need);
        plan.new_node_of[i] = Some(added);
        added += 1;
        plan.actions.push(Action::AddNode {
            pool: pool.name.clone(),
            zone,
        });
    }
}

/// A node per need that fits no bin, from the pool `choice` picks for it.
fn add_node_per_need(
    s: &mut ScaleUp,
    rest: Vec<usize>,
    choice: PoolChoice,
    plan: &mut ScaleUpPlan,
) {
    let sorted_pools = pools_by_unit_price(s.pools);
    for i in rest {
        let need = &s.unmet[i];
        if let Some(b) = fit_in_bins(&s.bins[s.n_booting..], need, &s.avoid[i]) {
            s.bins[s.n_booting + b].put(need);
            plan.new_node_of[i] = Some(b);
            continue;
        }
        let fitting = sorted_pools
            .iter()
            .copied()
            .filter(|p| need.fits_pool(p) && s.has_room(p));
        let pool = match choice {
            PoolChoice::CheapestForShape => fitting.min_by(|a, b| {
                shape_price(a, &need.resources)
                    .total_cmp(&shape_price(b, &need.resources))
                    .then(a.name.cmp(&b.name))
            }),
            _ => fitting.into_iter().next(),
        };
        let Some(pool) = pool else { continue };
        let zone = s.open_node(pool, need);
        plan.new_node_of[i] = Some(plan.actions.len());
        plan.actions.push(Action::AddNode {
            pool: pool.name.clone(),
            zone,
        });
    }
}

/// USD per hour one `need` costs on a node of `pool` filled with needs of its shape:
/// the price times the need's largest share of any resource of the node.
pub fn shape_price(pool: &PoolSpec, need: &Resources) -> f64 {
    let share = |n: u64, c: u64| if c == 0 { 0.0 } else { n as f64 / c as f64 };
    let dominant = share(need.cpu_millis, pool.capacity.cpu_millis)
        .max(share(need.memory_mib, pool.capacity.memory_mib))
        .max(share(need.gpu_milli, pool.capacity.gpu_milli));
    pool.price_per_hour * dominant
}

fn new_replica(d: &PartitionDemand, node: NodeId, resources: Resources) -> Replica {
    Replica {
        service: d.service.clone(),
        partition: d.partition,
        node,
        resources,
        kind: WorkloadKind::LongRunning,
        expected_end_s: None,
        state_bytes: d.state_bytes,
    }
}

fn round_up(x: u64, step: u64) -> u64 {
    if step == 0 {
        x
    } else {
        x.div_ceil(step) * step
    }
}

pub(crate) fn zones_of(view: &ClusterView, nodes: &[NodeId]) -> Vec<String> {
    nodes
        .iter()
        .filter_map(|&n| view.zone_of(n))
        .map(str::to_string)
        .collect()
}

/// A move from `from` to `to` must not put a member into a zone another member uses,
/// unless `from` already shared a zone with one (then it cannot get worse).
pub(crate) fn keeps_zone_spread(
    view: &ClusterView,
    survivors: &[NodeId],
    from: NodeId,
    to: NodeId,
) -> bool {
    // Interned zone numbers: no name is copied per member and move.
    let zone = |n: NodeId| view.zone_index_of(n);
    let clash = |z: Option<u32>| survivors.iter().any(|&s| zone(s) == z);
    !clash(zone(to)) || clash(zone(from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::Node;

    fn pool(name: &str, cpu: u64, price: f64) -> PoolSpec {
        PoolSpec {
            name: name.into(),
            capacity: Resources::new(cpu, cpu * 4),
            price_per_hour: price,
            boot_delay_s: 60,
            min_nodes: 0,
            max_nodes: 100,
            zones: vec!["a".into(), "b".into(), "c".into()],
            labels: Default::default(),
        }
    }

    fn demand(p: u32, used: u64) -> PartitionDemand {
        PartitionDemand {
            service: "s".into(),
            partition: p,
            cpu_used_millis: used,
            min_replicas: 3,
            base_resources: Resources::new(500, 512),
            state_bytes: 1 << 20,
            spread: SpreadDomain::Zone,
        }
    }

    fn three_zone_view(cpu: u64) -> ClusterView {
        ClusterView::from_parts(
            ["a", "b", "c"]
                .iter()
                .enumerate()
                .map(|(i, z)| {
                    Node::new(i as u64 + 1, z, "small", Resources::new(cpu, cpu * 4), 0.1)
                })
                .collect(),
            vec![],
        )
    }

    #[test]
    fn repairs_then_resizes_in_place() {
        let mut view = three_zone_view(4000);
        let mut st = PartitionScalerState::default();
        let cfg = PartitionScalerConfig::default();
        let acts = autoscale(&mut view, &[demand(0, 700)], &[], &[], &mut st, &cfg, 0);
        // 700 / 0.7 = 1000m on each of 3 zones.
        assert_eq!(
            acts.iter()
                .filter(|a| matches!(a, Action::Place { .. }))
                .count(),
            3
        );
        for (_, r) in view.replicas() {
            assert_eq!(r.resources.cpu_millis, 1000);
        }
        // Demand doubles: resize in place.
        let acts = autoscale(&mut view, &[demand(0, 1400)], &[], &[], &mut st, &cfg, 15);
        assert_eq!(acts.len(), 3);
        assert!(acts
            .iter()
            .all(|a| matches!(a, Action::Resize { to, .. } if to.cpu_millis == 2000)));
        // Demand drops: held for the window, then released.
        let acts = autoscale(&mut view, &[demand(0, 350)], &[], &[], &mut st, &cfg, 30);
        assert!(acts.is_empty());
        let acts = autoscale(
            &mut view,
            &[demand(0, 350)],
            &[],
            &[],
            &mut st,
            &cfg,
            30 + 301,
        );
        assert!(
            acts.iter()
                .all(|a| matches!(a, Action::Resize { to, .. } if to.cpu_millis == 500)),
            "{acts:?}"
        );
    }

    #[test]
    fn a_replacement_is_sized_for_its_share_of_the_load() {
        let mut view = three_zone_view(4000);
        view.add_node(Node::new(4, "c", "small", Resources::new(4000, 16000), 0.1));
        let mut st = PartitionScalerState::default();
        let cfg = PartitionScalerConfig::default();
        autoscale(&mut view, &[demand(0, 700)], &[], &[], &mut st, &cfg, 0);
        let lost = view
            .partition_nodes("s", 0)
            .into_iter()
            .find(|&n| view.zone_of(n) == Some("c"))
            .expect("a member in zone c");
        view.remove_node(lost);
        // 2,100m over two survivors: each sized for 1,050m (1,500m at 0.7); the
        // replacement takes a third of the load once it joins: 1,000m.
        let used = per_member_used_millis(2100.0, 2, 3);
        let acts = autoscale(&mut view, &[demand(0, used)], &[], &[], &mut st, &cfg, 15);
        assert_eq!(acts.len(), 1, "{acts:?}");
        assert!(
            matches!(&acts[0], Action::Place { resources, .. } if resources.cpu_millis == 1000),
            "{acts:?}"
        );
        let zones: std::collections::BTreeSet<&str> = view
            .partition_nodes("s", 0)
            .into_iter()
            .filter_map(|n| view.zone_of(n))
            .collect();
        assert_eq!(zones.len(), 3, "the replacement goes to the lost zone");
        // The next round sizes all three from the stabilisation window, which still
        // holds the survivors' 1,500m: the replacement grows in place (and all
        // shrink once the window has passed).
        let acts = autoscale(&mut view, &[demand(0, 700)], &[], &[], &mut st, &cfg, 30);
        assert!(
            acts.iter()
                .all(|a| matches!(a, Action::Resize { to, .. } if to.cpu_millis == 1500)),
            "{acts:?}"
        );
    }

    #[test]
    fn adds_cheapest_fitting_pool_node_in_a_free_zone() {
        let mut view = three_zone_view(2000);
        let mut st = PartitionScalerState::default();
        let cfg = PartitionScalerConfig::default();
        autoscale(&mut view, &[demand(0, 700)], &[], &[], &mut st, &cfg, 0);
        // Needs 3000m: nothing fits; pools: big is cheaper per unit.
        let pools = vec![
            pool("small", 2000, 0.1),
            pool("big", 8000, 0.3),
            pool("huge", 32000, 10.0),
        ];
        let acts = autoscale(
            &mut view,
            &[demand(0, 2100)],
            &pools,
            &[],
            &mut st,
            &cfg,
            15,
        );
        let adds: Vec<_> = acts
            .iter()
            .filter(|a| matches!(a, Action::AddNode { .. }))
            .collect();
        assert_eq!(adds.len(), 3, "{acts:?}");
        assert!(adds
            .iter()
            .all(|a| matches!(a, Action::AddNode { pool, .. } if pool == "big")));
        // A node per zone, since each replica must stay in its own zone.
        let zones: std::collections::BTreeSet<_> = adds
            .iter()
            .map(|a| match a {
                Action::AddNode { zone, .. } => zone.clone(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(zones.len(), 3);
        // Booting nodes absorb the same need next round: nothing more is added.
        let booting: Vec<BootingNode> = adds
            .iter()
            .map(|a| match a {
                Action::AddNode { pool, zone } => BootingNode {
                    pool: pool.clone(),
                    zone: zone.clone(),
                },
                _ => unreachable!(),
            })
            .collect();
        let acts = autoscale(
            &mut view,
            &[demand(0, 2100)],
            &pools,
            &booting,
            &mut st,
            &cfg,
            30,
        );
        assert!(
            !acts.iter().any(|a| matches!(a, Action::AddNode { .. })),
            "{acts:?}"
        );
    }

    #[test]
    fn migrates_when_node_is_full_but_another_has_room() {
        let mut view = ClusterView::from_parts(
            vec![
                Node::new(1, "a", "p", Resources::new(2000, 8192), 0.1),
                Node::new(2, "b", "p", Resources::new(2000, 8192), 0.1),
                Node::new(3, "c", "p", Resources::new(2000, 8192), 0.1),
                Node::new(4, "c", "p", Resources::new(8000, 8192), 0.1),
            ],
            vec![],
        );
        let mut st = PartitionScalerState::default();
        let cfg = PartitionScalerConfig {
            max_migrations: 10,
            ..Default::default()
        };
        autoscale(&mut view, &[demand(0, 700)], &[], &[], &mut st, &cfg, 0);
        let acts = autoscale(&mut view, &[demand(0, 2100)], &[], &[], &mut st, &cfg, 15);
        let moves: Vec<_> = acts
            .iter()
            .filter(|a| matches!(a, Action::Migrate { .. }))
            .collect();
        assert_eq!(moves.len(), 1, "{acts:?}");
        assert!(matches!(moves[0], Action::Migrate { to: 4, .. }));
    }

    /// mmo-diurnal seed 3 (issue 11): a member whose node is full had to grow; the
    /// best-fitting node with room sat in a survivor's zone, the empty one in its own
    /// zone. The move was offered the survivor's zone, refused by the spread, and a
    /// node was added in the member's zone on every round for 90 minutes, each
    /// released empty, while the partition violated its SLO.
    #[test]
    fn a_full_members_move_stays_in_its_own_zone() {
        let member = |node: NodeId| Replica {
            service: "s".into(),
            partition: 0,
            node,
            resources: Resources::new(1000, 512),
            kind: WorkloadKind::LongRunning,
            expected_end_s: None,
            state_bytes: 1 << 20,
        };
        let mut view = ClusterView::from_parts(
            vec![
                Node::new(1, "a", "p", Resources::new(4000, 8192), 0.1),
                Node::new(2, "b", "p", Resources::new(4000, 8192), 0.1),
                Node::new(3, "c", "p", Resources::new(2000, 8192), 0.1),
                // Exactly the 3000m the member wants: the best fit, beside node 1.
                Node::new(4, "a", "p", Resources::new(3000, 8192), 0.1),
                Node::new(5, "c", "p", Resources::new(8000, 8192), 0.1),
            ],
            vec![member(1), member(2), member(3)],
        );
        let mut st = PartitionScalerState::default();
        let cfg = PartitionScalerConfig::default();
        // 2100 / 0.7 = 3000m: nodes 1 and 2 have the 2000m more; node 3 has 1000m.
        let acts = autoscale(&mut view, &[demand(0, 2100)], &[], &[], &mut st, &cfg, 0);
        let moves: Vec<_> = acts
            .iter()
            .filter_map(|a| match a {
                Action::Migrate { from, to, .. } => Some((*from, *to)),
                _ => None,
            })
            .collect();
        assert_eq!(moves, vec![(3, 5)], "{acts:?}");
        assert!(!acts.iter().any(|a| matches!(a, Action::AddNode { .. })));
        assert_eq!(view.zone_of(5), Some("c"));
    }

    /// The 10,000-node day (issue 11): once a round's migration budget was spent,
    /// the remaining raises that needed a move were dropped: no resize in part, no
    /// node asked for, so thousands of partitions ran short all day. Now they take
    /// what their node has and get a node when no existing node has the room;
    /// where one has, they wait for a later round's move instead.
    #[test]
    fn raises_past_the_migration_budget_resize_in_part_and_get_nodes() {
        let member = |node: NodeId| Replica {
            service: "s".into(),
            partition: 0,
            node,
            resources: Resources::new(1000, 512),
            kind: WorkloadKind::LongRunning,
            expected_end_s: None,
            state_bytes: 1 << 20,
        };
        let cfg = PartitionScalerConfig {
            max_migrations: 0,
            ..Default::default()
        };
        let pools = vec![pool("big", 8000, 0.3)];
        let run = |extra_room: bool| {
            let mut nodes = vec![
                Node::new(1, "a", "p", Resources::new(1500, 8192), 0.1),
                Node::new(2, "b", "p", Resources::new(1500, 8192), 0.1),
                Node::new(3, "c", "p", Resources::new(1500, 8192), 0.1),
            ];
            if extra_room {
                nodes.push(Node::new(4, "c", "p", Resources::new(8000, 8192), 0.1));
            }
            let mut view = ClusterView::from_parts(nodes, vec![member(1), member(2), member(3)]);
            let mut st = PartitionScalerState::default();
            // 2100 / 0.7 = 3000m per member; each node has 500m more.
            let acts = autoscale(&mut view, &[demand(0, 2100)], &pools, &[], &mut st, &cfg, 0);
            (view, acts)
        };
        let (view, acts) = run(false);
        assert!(!acts.iter().any(|a| matches!(a, Action::Migrate { .. })));
        let resized: Vec<u64> = acts
            .iter()
            .filter_map(|a| match a {
                Action::Resize { to, .. } => Some(to.cpu_millis),
                _ => None,
            })
            .collect();
        assert_eq!(resized, vec![1500, 1500, 1500], "{acts:?}");
        assert!(view.replicas().all(|(_, r)| r.resources.cpu_millis == 1500));
        let adds = acts
            .iter()
            .filter(|a| matches!(a, Action::AddNode { .. }))
            .count();
        assert_eq!(adds, 3, "a node per member short of room: {acts:?}");
        // Node 4 (zone c) has room for zone c's member: that one waits for a move;
        // the other two still get nodes.
        let (_, acts) = run(true);
        let zones: Vec<&str> = acts
            .iter()
            .filter_map(|a| match a {
                Action::AddNode { zone, .. } => Some(zone.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(zones.len(), 2, "{acts:?}");
        assert!(!zones.contains(&"c"), "{acts:?}");
    }

    /// Zones are compared by interned number: nodes named alike share a zone,
    /// a move out of a shared zone may not make things worse, and an unknown node
    /// (no zone) only clashes with another unknown one.
    #[test]
    fn zone_spread_compares_interned_zones() {
        let view = ClusterView::from_parts(
            vec![
                Node::new(1, "a", "p", Resources::new(4000, 8192), 0.1),
                Node::new(2, "b", "p", Resources::new(4000, 8192), 0.1),
                Node::new(3, "c", "p", Resources::new(4000, 8192), 0.1),
                Node::new(4, "a", "p", Resources::new(4000, 8192), 0.1),
                Node::new(5, "c", "p", Resources::new(4000, 8192), 0.1),
            ],
            vec![],
        );
        assert_eq!(view.zone_index_of(1), view.zone_index_of(4));
        assert_ne!(view.zone_index_of(1), view.zone_index_of(2));
        assert_eq!(view.zone_name(view.zone_index_of(5).unwrap()), Some("c"));
        assert_eq!(view.zone_index_of(99), None);
        // Members on 1 (a) and 2 (b); the third leaves 3 (c).
        assert!(keeps_zone_spread(&view, &[1, 2], 3, 5), "its own zone");
        assert!(
            !keeps_zone_spread(&view, &[1, 2], 3, 4),
            "a survivor's zone"
        );
        // Already sharing zone a with node 1: moving within a cannot get worse.
        assert!(keeps_zone_spread(&view, &[1, 2], 4, 1));
    }

    /// `plan_new_nodes` counts a pool's nodes in the view and booting (by borrowed
    /// name) against its maximum.
    #[test]
    fn new_nodes_respect_the_pool_maximum_counting_view_and_booting() {
        let view = three_zone_view(1000);
        let mut small = pool("small", 2000, 0.1);
        small.max_nodes = 5;
        let need = || UnmetNeed::new(Resources::new(1500, 512), Vec::new());
        let booting = vec![BootingNode {
            pool: "small".into(),
            zone: "a".into(),
        }];
        // Three in the view (pool "small") and one booting: room for one more;
        // the booting one takes the first need, a new node the second, none the third.
        let acts = plan_new_nodes(
            &view,
            &[need(), need(), need()],
            std::slice::from_ref(&small),
            &booting,
            PoolChoice::CheapestForShape,
        );
        assert_eq!(acts.len(), 1, "{acts:?}");
    }

    #[test]
    fn booting_nodes_in_avoided_zones_take_nothing_beyond_the_numbered_zones() {
        // 70 zones, a node booting in each (numbered in that order): the scale-up
        // keeps the first 64 zone numbers in a bit set and compares the rest by name.
        let zones: Vec<String> = (0..70).map(|z| format!("z{z}")).collect();
        let mut wide = pool("wide", 2000, 0.1);
        wide.zones = zones.clone();
        wide.max_nodes = 1000;
        let booting: Vec<BootingNode> = zones
            .iter()
            .map(|z| BootingNode {
                pool: "wide".into(),
                zone: z.clone(),
            })
            .collect();
        let fits_booting = |avoid: &[String]| {
            let need = UnmetNeed::new(Resources::new(1500, 512), avoid.to_vec());
            plan_new_nodes_with_fit(
                &ClusterView::new(),
                std::slice::from_ref(&need),
                std::slice::from_ref(&wide),
                &booting,
                PoolChoice::CheapestForShape,
            )
            .on_booting[0]
        };
        // Every zone avoided, the last six by name: no booting node takes it.
        assert!(!fits_booting(&zones));
        // All but the last: the node booting in z69 (past the bits) takes it.
        assert!(fits_booting(&zones[..69]));
        // All but one within the bits.
        let mut but_z5 = zones.clone();
        but_z5.remove(5);
        assert!(fits_booting(&but_z5));
    }

    #[test]
    fn survivors_carry_the_whole_load_until_the_replacement_joins() {
        // 3000m over R = 3: 1000m each; one lost: 1500m each; none yet or one extra
        // (a move under way): split over R.
        assert_eq!(per_member_used_millis(3000.0, 3, 3), 1000);
        assert_eq!(per_member_used_millis(3000.0, 2, 3), 1500);
        assert_eq!(per_member_used_millis(3000.0, 1, 3), 3000);
        assert_eq!(per_member_used_millis(3000.0, 0, 3), 1000);
        assert_eq!(per_member_used_millis(3000.0, 4, 3), 1000);
        assert_eq!(per_member_used_millis(1000.0, 3, 3), 334);
    }
}
