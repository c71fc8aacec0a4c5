//! Placement: filter the nodes, score the survivors, pick distinct nodes (and zones).
//!
//! Filters, in order: schedulable, free capacity for the request, the GPU devices
//! (`gpu_count` devices each with the request's per-device share free: a share never
//! spans two devices' leftovers), label requirements, node anti-affinity (no node
//! already hosting a member of the partition). Zone
//! anti-affinity is applied when choosing: with `SpreadDomain::Zone`, each new replica
//! goes to a zone no member uses while such zones have a feasible node; only when the
//! cluster has fewer usable zones than replicas does a zone take a second member.
//!
//! Scores (higher is better, ties broken by the lower node id so runs repeat):
//! - [`Policy::Spread`]: Kubernetes' defaults, NodeResourcesFit/LeastAllocated plus
//!   BalancedAllocation, weight 1 each, both on a 0-100 scale over CPU and memory.
//! - [`Policy::Cost`]: best fit (least capacity left after placing) with the node's
//!   price per unit of resource as a tie-breaker; long-running replicas and jobs kept
//!   on separate nodes; jobs binned by expected end time so nodes empty together;
//!   CPU-only work kept off GPU nodes; a GPU request scored by the fragmentation it
//!   leaves on the devices (a fractional share on the shared device it fits best
//!   rather than a whole free one; whole GPUs where they use up a node's whole free
//!   devices), see `gpu_fragmentation`. Which devices of the chosen node a replica
//!   takes is the view's (best fit, the same for every policy).

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

use crate::error::PlacementError;
use crate::view::{
    ClusterView, GpuDevices, HotNode, LabelRequirement, Resources, WorkloadKind, MILLI_PER_GPU,
    SCAN_BLOCK,
};
use stator_api::ids::NodeId;

/// Scoring policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Policy {
    /// Kubernetes default scoring: spread load, balance CPU against memory.
    Spread,
    /// Pack onto the cheapest fitting capacity so whole nodes can be released.
    Cost,
}

/// The failure domain that replicas of one partition must not share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SpreadDomain {
    /// Distinct nodes.
    Node,
    /// Distinct zones where enough zones exist (and always distinct nodes).
    Zone,
}

/// What to place: `replicas` new replicas of one partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlacementRequest {
    /// Service name.
    pub service: String,
    /// Partition index.
    pub partition: u32,
    /// How many new replicas to place (members already in the view are avoided, not
    /// counted).
    pub replicas: u32,
    /// Resources each replica requests.
    pub resources: Resources,
    /// Anti-affinity domain.
    pub spread: SpreadDomain,
    /// Long-running or job.
    pub kind: WorkloadKind,
    /// Now, in the caller's time base (seconds): a job's expected end is
    /// `now_s + expected_duration_s`.
    pub now_s: u64,
    /// Label requirements (e.g. an allowed GPU model); empty = none.
    pub node_selector: Vec<LabelRequirement>,
}

impl PlacementRequest {
    /// A long-running request with zone spread and no selector.
    pub fn long_running(
        service: &str,
        partition: u32,
        replicas: u32,
        resources: Resources,
    ) -> Self {
        PlacementRequest {
            service: service.to_string(),
            partition,
            replicas,
            resources,
            spread: SpreadDomain::Zone,
            kind: WorkloadKind::LongRunning,
            now_s: 0,
            node_selector: Vec::new(),
        }
    }

    /// A single-replica job expected to run `expected_duration_s` from `now_s`.
    pub fn job(service: &str, resources: Resources, now_s: u64, expected_duration_s: u64) -> Self {
        PlacementRequest {
            service: service.to_string(),
            partition: 0,
            replicas: 1,
            resources,
            spread: SpreadDomain::Node,
            kind: WorkloadKind::Job {
                expected_duration_s,
            },
            now_s,
            node_selector: Vec::new(),
        }
    }

    /// When a job placed now is expected to end (None for long-running).
    pub fn expected_end_s(&self) -> Option<u64> {
        match self.kind {
            WorkloadKind::LongRunning => None,
            WorkloadKind::Job {
                expected_duration_s,
            } => Some(self.now_s.saturating_add(expected_duration_s)),
        }
    }
}

/// Width of a job end-time bin: jobs ending within the same bin share nodes.
pub const JOB_END_BIN_S: u64 = 1800;

/// Places `req.replicas` new replicas of a partition on distinct nodes that host no
/// member of the partition yet, in distinct zones (also distinct from existing
/// members' zones) when `req.spread` is `Zone` and enough zones have room. Returns the
/// chosen nodes, best first. The view is not changed.
pub fn place_partition(
    view: &ClusterView,
    req: &PlacementRequest,
    policy: Policy,
) -> Result<Vec<NodeId>, PlacementError> {
    let members = view.partition_nodes(&req.service, req.partition);
    place_avoiding(view, req, &members, &[], req.replicas, policy)
}

/// Chooses the node for a replacement of a lost replica: one node that hosts none of
/// `survivors`, in a zone none of them uses where possible. The lost replica's own
/// node should be absent or unschedulable in the view (or listed among `survivors`
/// to be avoided).
pub fn place_replacement(
    view: &ClusterView,
    req: &PlacementRequest,
    survivors: &[NodeId],
    policy: Policy,
) -> Result<NodeId, PlacementError> {
    place_avoiding(view, req, survivors, &[], 1, policy).map(|v| v[0])
}

/// Chooses where to move a member off `from` (a raise its node cannot hold): like
/// [`place_replacement`], but `from` is excluded only as a node. Its zone is the one
/// the member leaves, so it counts as free: with one member per zone, the move stays
/// in its own zone instead of landing beside a survivor (which the zone spread then
/// forbids, so the move never happens and a node is added for nothing).
pub fn place_move(
    view: &ClusterView,
    req: &PlacementRequest,
    survivors: &[NodeId],
    from: NodeId,
    policy: Policy,
) -> Result<NodeId, PlacementError> {
    place_avoiding(view, req, survivors, &[from], 1, policy).map(|v| v[0])
}

/// Places several requests in best-fit-decreasing order (largest request first, by
/// its dominant share of the largest node), applying each placement to a scratch copy
/// of the view so later requests see earlier ones. Returns, per request in the input
/// order, its nodes or its error.
pub fn place_batch(
    view: &ClusterView,
    requests: &[PlacementRequest],
    policy: Policy,
) -> Vec<Result<Vec<NodeId>, PlacementError>> {
    let mut scratch = view.clone();
    let max_cap = view.nodes().fold(Resources::default(), |m, n| Resources {
        cpu_millis: m.cpu_millis.max(n.capacity.cpu_millis),
        memory_mib: m.memory_mib.max(n.capacity.memory_mib),
        gpu_milli: m.gpu_milli.max(n.capacity.gpu_milli),
        gpu_count: 0,
    });
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by(|&a, &b| {
        dominant_share(&requests[b].resources, &max_cap)
            .total_cmp(&dominant_share(&requests[a].resources, &max_cap))
            .then(a.cmp(&b))
    });
    let mut out: Vec<Option<Result<Vec<NodeId>, PlacementError>>> = vec![None; requests.len()];
    for i in order {
        let req = &requests[i];
        let result = place_partition(&scratch, req, policy);
        if let Ok(nodes) = &result {
            for &n in nodes {
                scratch.add_replica(crate::view::Replica {
                    service: req.service.clone(),
                    partition: req.partition,
                    node: n,
                    resources: req.resources,
                    kind: req.kind,
                    expected_end_s: req.expected_end_s(),
                    state_bytes: 0,
                });
            }
        }
        out[i] = Some(result);
    }
    out.into_iter()
        .map(|r| r.expect("every request placed or failed"))
        .collect()
}

fn dominant_share(r: &Resources, cap: &Resources) -> f64 {
    let f = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    f(r.cpu_millis, cap.cpu_millis)
        .max(f(r.memory_mib, cap.memory_mib))
        .max(f(r.gpu_milli, cap.gpu_milli))
}

/// Whether the node passes every filter for `req` (capacity, schedulable, selector).
/// Anti-affinity is the caller's: it depends on the partition's members. Reads the
/// hot record; the full entry only when a selector must be matched against labels.
#[inline]
fn passes_filters(view: &ClusterView, ix: usize, h: &HotNode, req: &PlacementRequest) -> bool {
    if !h.schedulable || !h.holds(&req.resources) {
        return false;
    }
    if req.resources.gpu_milli > 0 && !gpu_fits(view, ix, h, &req.resources) {
        return false;
    }
    if req.node_selector.is_empty() {
        return true;
    }
    if !h.has_labels {
        return false;
    }
    let labels = &view.nodes[ix].node.labels;
    req.node_selector.iter().all(|l| match labels.get(&l.key) {
        Some(v) => l.values.is_empty() || l.values.iter().any(|a| a == v),
        None => false,
    })
}

/// Whether the node's devices hold the request's GPU share: one device with the
/// per-device share free for each device asked (the hot record answers a one-device
/// share; more devices are counted on the node's entry).
#[inline]
fn gpu_fits(view: &ClusterView, ix: usize, h: &HotNode, r: &Resources) -> bool {
    match r.gpu_shape() {
        None => true,
        Some((1, each)) => h.gpu_max_free as u64 >= each,
        Some(_) => view.nodes[ix].gpus.fits(r),
    }
}

/// What a GPU request's placement on a node costs in GPU fragmentation, 0 (a perfect
/// fit) to 150, for [`Policy::Cost`]. A fractional share: the free left on the device
/// best fit gives it (in tenths of a device), plus 50 when that device was whole (a
/// shared device is preferred, so whole devices stay free for whole-GPU requests).
/// Whole devices: the devices that could take the same share still left on the node,
/// as a share of its devices (best fit on the count, so nodes whose GPUs are all free
/// stay free for the largest requests).
#[inline]
fn gpu_fragmentation(gpus: &GpuDevices, (n, each): (u32, u64)) -> f64 {
    if n == 1 && each < MILLI_PER_GPU {
        let f = gpus.best_fit_free(each).unwrap_or(MILLI_PER_GPU);
        let fresh = if f >= MILLI_PER_GPU { 50.0 } else { 0.0 };
        return (f - each.min(f)) as f64 * 100.0 / MILLI_PER_GPU as f64 + fresh;
    }
    let devices = gpus.len().max(1);
    let able = (0..gpus.len()).filter(|&d| gpus.free(d) >= each).count();
    able.saturating_sub(n as usize) as f64 * 100.0 / devices as f64
}

/// The score of placing `req` on the node (higher is better), or None if it does not
/// pass the filters. Exposed for tests and for explaining decisions.
pub fn score_node(
    view: &ClusterView,
    node: NodeId,
    req: &PlacementRequest,
    policy: Policy,
) -> Option<f64> {
    let ix = view.node_index(node)?;
    let h = &view.hot[ix];
    passes_filters(view, ix, h, req).then(|| Scorer::new(req, policy).score_at(view, ix, h))
}

/// What a score needs from the request, computed once per scan.
#[derive(Clone, Copy)]
struct Scorer {
    policy: Policy,
    req_cpu: f64,
    req_mem: f64,
    cpu_only: bool,
    /// The request's GPU shape (devices, milli-GPUs each), None for CPU-only work.
    gpu: Option<(u32, u64)>,
    /// None for long-running work; the end-time bin for a job.
    job_end_bin: Option<u64>,
}

impl Scorer {
    fn new(req: &PlacementRequest, policy: Policy) -> Self {
        Scorer {
            policy,
            req_cpu: req.resources.cpu_millis as f64,
            req_mem: req.resources.memory_mib as f64,
            cpu_only: req.resources.gpu_milli == 0,
            gpu: req.resources.gpu_shape(),
            job_end_bin: match req.kind {
                WorkloadKind::LongRunning => None,
                WorkloadKind::Job { .. } => Some(req.expected_end_s().unwrap_or(0) / JOB_END_BIN_S),
            },
        }
    }

    /// The score; `+ 0.0` turns a -0.0 into 0.0 so plain float compares order
    /// scores as `total_cmp` does.
    #[inline]
    fn score(&self, h: &HotNode) -> f64 {
        let s = match self.policy {
            Policy::Spread => self.spread_score(h),
            Policy::Cost => self.cost_score(h),
        };
        s + 0.0
    }

    /// The score on the node at `ix`: [`Scorer::score`], and for a GPU request under
    /// [`Policy::Cost`] less its [`gpu_fragmentation`] (read from the node's devices,
    /// so CPU-only scans never touch the full entry). [`Policy::Spread`] has no GPU
    /// term: kube-scheduler's default scores weigh CPU and memory only, and the
    /// gpushare extender chooses a device only once the node is chosen.
    #[inline]
    fn score_at(&self, view: &ClusterView, ix: usize, h: &HotNode) -> f64 {
        match self.gpu {
            Some(shape) if self.policy == Policy::Cost => {
                self.score(h) - gpu_fragmentation(&view.nodes[ix].gpus, shape) + 0.0
            }
            _ => self.score(h),
        }
    }

    /// LeastAllocated + BalancedAllocation (each 0-100, weight 1), over CPU and memory,
    /// with the request included, as kube-scheduler computes them.
    #[inline]
    fn spread_score(&self, h: &HotNode) -> f64 {
        // Requested before placing: capacity less free (at most the capacity, which
        // scores the same as anything above it). Sums of integers below 2^53: exact.
        let used_cpu = h.used_cpu + self.req_cpu;
        let used_mem = h.used_mem + self.req_mem;
        let frac = |u: f64, c: f64| if c == 0.0 { 1.0 } else { (u / c).min(1.0) };
        let cpu = frac(used_cpu, h.cap_cpu);
        let mem = frac(used_mem, h.cap_mem);
        let least_allocated = ((1.0 - cpu) * 100.0 + (1.0 - mem) * 100.0) / 2.0;
        let balanced = (1.0 - (cpu - mem).abs() / 2.0) * 100.0;
        least_allocated + balanced
    }

    /// Best fit on price: prefer nodes left fullest by the placement, then cheaper per
    /// unit of resource; keep jobs and long-running work apart; bin jobs by end time.
    #[inline]
    fn cost_score(&self, h: &HotNode) -> f64 {
        let used_cpu = h.used_cpu + self.req_cpu;
        let used_mem = h.used_mem + self.req_mem;
        let frac = |u: f64, inv: f64| if inv == 0.0 { 1.0 } else { (u * inv).min(1.0) };
        // Leftover after placing, 0 (perfect fit) to 100 (empty).
        let leftover = 100.0 - (frac(used_cpu, h.inv_cpu) + frac(used_mem, h.inv_mem)) * 50.0;
        let mut penalty = leftover;
        // Keep CPU-only work off GPU nodes: GPUs are the scarce, expensive part.
        if self.cpu_only && h.has_gpu {
            penalty += 400.0;
        }
        let is_empty = h.long_running == 0 && h.jobs == 0;
        match self.job_end_bin {
            None => {
                if h.jobs > 0 {
                    penalty += 200.0;
                }
            }
            Some(end) => {
                if h.long_running > 0 {
                    penalty += 200.0;
                } else if !is_empty {
                    let node_end = h.job_end_max_s / JOB_END_BIN_S;
                    // Each bin of distance costs like 10 % of a node's leftover; capped
                    // so a badly binned but nearly full node still beats an empty one.
                    penalty += (end.abs_diff(node_end) as f64 * 10.0).min(90.0);
                }
            }
        }
        // An empty node is capacity we could release: opening it costs its whole price.
        if is_empty {
            penalty += 100.0;
        }
        // Price per unit as a fine tie-breaker (USD/h per unit is typically 0.01-0.1).
        penalty += h.price_per_unit.min(10.0);
        -penalty
    }
}

#[derive(Clone, Copy)]
struct Candidate {
    score: f64,
    id: NodeId,
    zone: u32,
}

/// Whether `a` ranks before `b`: the order of [`better`] with plain float compares
/// (scores are never NaN and never -0.0, see [`Scorer::score`]), for the scan's hot path.
#[inline]
fn beats(a: &Candidate, b: &Candidate) -> bool {
    a.score > b.score || (a.score == b.score && a.id < b.id)
}

#[inline]
fn better(a: &Candidate, b: &Candidate) -> Ordering {
    // Descending score, ascending id.
    b.score.total_cmp(&a.score).then(a.id.cmp(&b.id))
}

/// The nodes a scan for `req` must look at, with their index: every node of the
/// blocks (`ClusterView::block_free`) whose largest free CPU, memory and GPU could
/// hold the request. The nodes skipped would all fail the capacity filter, so a scan
/// finds exactly what a scan of every node finds.
#[inline]
fn candidates<'v>(
    view: &'v ClusterView,
    req: &PlacementRequest,
) -> impl Iterator<Item = (usize, &'v HotNode)> + 'v {
    let need = req.resources;
    view.block_free
        .iter()
        .enumerate()
        .filter(move |(_, m)| need.fits_in(m))
        .flat_map(move |(b, _)| {
            let start = b * SCAN_BLOCK;
            let end = (start + SCAN_BLOCK).min(view.hot.len());
            (start..end).map(move |ix| (ix, &view.hot[ix]))
        })
}

/// `avoid_nodes` host members: skipped, and their zones are not fresh;
/// `exclude_nodes` are only skipped.
fn place_avoiding(
    view: &ClusterView,
    req: &PlacementRequest,
    avoid_nodes: &[NodeId],
    exclude_nodes: &[NodeId],
    count: u32,
    policy: Policy,
) -> Result<Vec<NodeId>, PlacementError> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let avoid_zones: Vec<u32> = avoid_nodes
        .iter()
        .filter_map(|&n| view.node_index(n))
        .map(|ix| view.nodes[ix].zone_ix)
        .collect();
    let want = count as usize;
    let zone_spread = req.spread == SpreadDomain::Zone;
    // Best candidate per zone (for zone spread) and the best `want` overall, kept
    // without sorting every node: one pass, small buffers.
    let mut best_per_zone: Vec<Option<Candidate>> = if zone_spread {
        vec![None; view.zone_count()]
    } else {
        Vec::new()
    };
    let mut top: Vec<Candidate> = Vec::with_capacity(want + avoid_nodes.len() + 1);
    let keep = want + if zone_spread { want } else { 0 };
    let mut feasible = 0u32;
    let scorer = Scorer::new(req, policy);
    for (ix, h) in candidates(view, req) {
        if !passes_filters(view, ix, h, req)
            || avoid_nodes.contains(&h.id)
            || exclude_nodes.contains(&h.id)
        {
            continue;
        }
        feasible += 1;
        let c = Candidate {
            score: scorer.score_at(view, ix, h),
            id: h.id,
            zone: h.zone_ix,
        };
        if zone_spread {
            let slot = &mut best_per_zone[c.zone as usize];
            if slot.is_none_or(|b| beats(&c, &b)) {
                *slot = Some(c);
            }
        }
        // Maintain the `keep` best overall (insertion into a short sorted vec).
        if top.len() < keep || beats(&c, top.last().expect("non-empty")) {
            let pos = top.partition_point(|t| beats(t, &c));
            top.insert(pos, c);
            if top.len() > keep {
                top.pop();
            }
        }
    }
    if (feasible as usize) < want {
        return Err(PlacementError::InsufficientNodes {
            service: req.service.clone(),
            partition: req.partition,
            wanted: count,
            feasible,
        });
    }
    let mut chosen: Vec<Candidate> = Vec::with_capacity(want);
    if zone_spread {
        let mut zone_best: Vec<Candidate> = best_per_zone
            .into_iter()
            .flatten()
            .filter(|c| !avoid_zones.contains(&c.zone))
            .collect();
        zone_best.sort_by(better);
        chosen.extend(zone_best.into_iter().take(want));
    }
    if chosen.len() < want {
        // Not enough fresh zones (or node spread): fill with the best remaining nodes,
        // preferring zones used least so far.
        let mut rest: Vec<Candidate> = top
            .iter()
            .filter(|c| !chosen.iter().any(|x| x.id == c.id))
            .copied()
            .collect();
        if chosen.len() + rest.len() < want {
            // `top` was too short after removing chosen ones: rescan everything.
            rest = candidates(view, req)
                .filter(|(ix, h)| {
                    passes_filters(view, *ix, h, req)
                        && !avoid_nodes.contains(&h.id)
                        && !exclude_nodes.contains(&h.id)
                })
                .filter(|(_, h)| !chosen.iter().any(|x| x.id == h.id))
                .map(|(ix, h)| Candidate {
                    score: scorer.score_at(view, ix, h),
                    id: h.id,
                    zone: h.zone_ix,
                })
                .collect();
            rest.sort_by(better);
        }
        while chosen.len() < want {
            let zone_uses = |z: u32| {
                avoid_zones.iter().filter(|&&x| x == z).count()
                    + chosen.iter().filter(|x| x.zone == z).count()
            };
            let pick = if zone_spread {
                rest.iter().enumerate().min_by(|(_, a), (_, b)| {
                    zone_uses(a.zone).cmp(&zone_uses(b.zone)).then(better(a, b))
                })
            } else {
                rest.iter().enumerate().next()
            };
            let (i, _) = pick.expect("feasible >= want");
            chosen.push(rest.remove(i));
        }
    }
    Ok(chosen.into_iter().map(|c| c.id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{Node, Replica};

    fn node(id: NodeId, zone: &str, cpu: u64, mem: u64, price: f64) -> Node {
        Node::new(id, zone, "p", Resources::new(cpu, mem), price)
    }

    fn lr(service: &str, partition: u32, node: NodeId, cpu: u64, mem: u64) -> Replica {
        Replica {
            service: service.into(),
            partition,
            node,
            resources: Resources::new(cpu, mem),
            kind: WorkloadKind::LongRunning,
            expected_end_s: None,
            state_bytes: 0,
        }
    }

    #[test]
    fn spread_score_matches_kubernetes_formula() {
        // Node 4000m / 8192Mi with 1000m / 2048Mi used; request 1000m / 2048Mi.
        // After: cpu 0.5, mem 0.5 -> LeastAllocated 50, Balanced 100.
        let view = ClusterView::from_parts(
            vec![node(1, "a", 4000, 8192, 1.0)],
            vec![lr("x", 9, 1, 1000, 2048)],
        );
        let req = PlacementRequest::long_running("s", 0, 1, Resources::new(1000, 2048));
        assert_eq!(score_node(&view, 1, &req, Policy::Spread), Some(150.0));
        // Unbalanced: request 2000m / 0 -> cpu 0.75, mem 0.25: LA 50, BA 75.
        let req = PlacementRequest::long_running("s", 0, 1, Resources::new(2000, 0));
        assert_eq!(score_node(&view, 1, &req, Policy::Spread), Some(125.0));
    }

    #[test]
    fn spread_prefers_least_allocated_cost_prefers_fullest() {
        let view = ClusterView::from_parts(
            vec![node(1, "a", 4000, 8192, 1.0), node(2, "a", 4000, 8192, 1.0)],
            vec![lr("x", 0, 1, 2000, 4096)],
        );
        let req = PlacementRequest {
            spread: SpreadDomain::Node,
            ..PlacementRequest::long_running("s", 0, 1, Resources::new(1000, 1024))
        };
        assert_eq!(
            place_partition(&view, &req, Policy::Spread).unwrap(),
            vec![2]
        );
        assert_eq!(place_partition(&view, &req, Policy::Cost).unwrap(), vec![1]);
    }

    #[test]
    fn distinct_zones_when_enough_zones() {
        // Zone a has the two emptiest nodes, but a partition of 3 must span a, b, c.
        let view = ClusterView::from_parts(
            vec![
                node(1, "a", 8000, 16384, 1.0),
                node(2, "a", 8000, 16384, 1.0),
                node(3, "b", 4000, 8192, 1.0),
                node(4, "c", 4000, 8192, 1.0),
            ],
            vec![],
        );
        let req = PlacementRequest::long_running("s", 0, 3, Resources::new(500, 512));
        for policy in [Policy::Spread, Policy::Cost] {
            let mut got = place_partition(&view, &req, policy).unwrap();
            let zones: std::collections::BTreeSet<_> =
                got.iter().map(|&n| view.zone_of(n).unwrap()).collect();
            assert_eq!(zones.len(), 3, "{policy:?} chose {got:?}");
            got.sort();
            got.dedup();
            assert_eq!(got.len(), 3);
        }
    }

    #[test]
    fn falls_back_to_distinct_nodes_with_too_few_zones() {
        let view = ClusterView::from_parts(
            vec![
                node(1, "a", 4000, 8192, 1.0),
                node(2, "a", 4000, 8192, 1.0),
                node(3, "b", 4000, 8192, 1.0),
            ],
            vec![],
        );
        let req = PlacementRequest::long_running("s", 0, 3, Resources::new(500, 512));
        let mut got = place_partition(&view, &req, Policy::Spread).unwrap();
        got.sort();
        assert_eq!(got, vec![1, 2, 3]);
        let req4 = PlacementRequest { replicas: 4, ..req };
        assert!(matches!(
            place_partition(&view, &req4, Policy::Spread),
            Err(PlacementError::InsufficientNodes {
                wanted: 4,
                feasible: 3,
                ..
            })
        ));
    }

    #[test]
    fn capacity_and_schedulable_filters() {
        let mut view = ClusterView::from_parts(
            vec![
                node(1, "a", 1000, 1024, 1.0),
                node(2, "b", 4000, 8192, 1.0),
                node(3, "c", 4000, 8192, 1.0),
            ],
            vec![],
        );
        view.set_schedulable(3, false);
        let req = PlacementRequest::long_running("s", 0, 1, Resources::new(2000, 512));
        assert_eq!(place_partition(&view, &req, Policy::Cost).unwrap(), vec![2]);
        assert_eq!(
            place_partition(&view, &req, Policy::Spread).unwrap(),
            vec![2]
        );
    }

    #[test]
    fn replacement_avoids_survivor_nodes_and_zones() {
        // Partition members on 1 (zone a) and 2 (zone b); 3 (zone c) lost. Candidates:
        // 4 in zone a (emptiest), 5 in zone c.
        let mut view = ClusterView::from_parts(
            vec![
                node(1, "a", 4000, 8192, 1.0),
                node(2, "b", 4000, 8192, 1.0),
                node(3, "c", 4000, 8192, 1.0),
                node(4, "a", 16000, 65536, 1.0),
                node(5, "c", 4000, 8192, 1.0),
            ],
            vec![
                lr("s", 0, 1, 500, 512),
                lr("s", 0, 2, 500, 512),
                lr("s", 0, 3, 500, 512),
            ],
        );
        view.remove_node(3);
        let req = PlacementRequest::long_running("s", 0, 1, Resources::new(500, 512));
        for policy in [Policy::Spread, Policy::Cost] {
            assert_eq!(place_replacement(&view, &req, &[1, 2], policy).unwrap(), 5);
        }
        // place_partition finds the members itself.
        assert_eq!(
            place_partition(&view, &req, Policy::Spread).unwrap(),
            vec![5]
        );
    }

    #[test]
    fn a_move_may_stay_in_the_zone_it_leaves() {
        // Members on 1 (a), 2 (b), 3 (c); the one on 3 moves. Node 4 (zone a, the
        // tightest fit) sits beside a survivor; node 5 is in zone c, the zone left.
        let view = ClusterView::from_parts(
            vec![
                node(1, "a", 4000, 8192, 1.0),
                node(2, "b", 4000, 8192, 1.0),
                node(3, "c", 4000, 8192, 1.0),
                node(4, "a", 2000, 8192, 1.0),
                node(5, "c", 16000, 65536, 4.0),
            ],
            vec![
                lr("s", 0, 1, 500, 512),
                lr("s", 0, 2, 500, 512),
                lr("s", 0, 3, 500, 512),
            ],
        );
        let req = PlacementRequest::long_running("s", 0, 1, Resources::new(2000, 512));
        for policy in [Policy::Spread, Policy::Cost] {
            assert_eq!(place_move(&view, &req, &[1, 2], 3, policy).unwrap(), 5);
        }
    }

    #[test]
    fn cost_prefers_cheaper_per_unit_among_equal_fits() {
        let view = ClusterView::from_parts(
            vec![node(1, "a", 4000, 8192, 2.0), node(2, "a", 4000, 8192, 1.0)],
            vec![lr("x", 0, 1, 1000, 1024), lr("x", 1, 2, 1000, 1024)],
        );
        let req = PlacementRequest {
            spread: SpreadDomain::Node,
            ..PlacementRequest::long_running("s", 0, 1, Resources::new(1000, 1024))
        };
        assert_eq!(place_partition(&view, &req, Policy::Cost).unwrap(), vec![2]);
    }

    #[test]
    fn cost_keeps_jobs_apart_and_bins_by_end_time() {
        let job = |node: NodeId, end: u64| Replica {
            service: format!("job-{node}-{end}"),
            partition: 0,
            node,
            resources: Resources::new(1000, 1024),
            kind: WorkloadKind::Job {
                expected_duration_s: end,
            },
            expected_end_s: Some(end),
            state_bytes: 0,
        };
        let view = ClusterView::from_parts(
            vec![
                node(1, "a", 8000, 16384, 1.0),
                node(2, "a", 8000, 16384, 1.0),
                node(3, "a", 8000, 16384, 1.0),
            ],
            vec![lr("svc", 0, 1, 1000, 1024), job(2, 600), job(3, 36000)],
        );
        // A job ending at t=700 goes with the job ending at 600, not the one at 36000
        // and not beside the long-running replica.
        let req = PlacementRequest::job("j", Resources::new(1000, 1024), 100, 600);
        assert_eq!(place_partition(&view, &req, Policy::Cost).unwrap(), vec![2]);
        let late = PlacementRequest::job("j", Resources::new(1000, 1024), 30000, 6000);
        assert_eq!(
            place_partition(&view, &late, Policy::Cost).unwrap(),
            vec![3]
        );
        // A long-running replica goes beside the long-running one.
        let svc = PlacementRequest {
            spread: SpreadDomain::Node,
            ..PlacementRequest::long_running("t", 0, 1, Resources::new(1000, 1024))
        };
        assert_eq!(place_partition(&view, &svc, Policy::Cost).unwrap(), vec![1]);
    }

    #[test]
    fn gpu_requests_need_gpu_and_selector() {
        let mut g1 = Node::new(1, "a", "g", Resources::with_gpu(8000, 16384, 2000), 3.0);
        g1.labels.insert("gpu.model".into(), "T4".into());
        let mut g2 = Node::new(2, "a", "g", Resources::with_gpu(8000, 16384, 2000), 3.0);
        g2.labels.insert("gpu.model".into(), "V100".into());
        let c = node(3, "a", 8000, 16384, 0.5);
        let view = ClusterView::from_parts(vec![g1, g2, c], vec![]);
        let mut req = PlacementRequest::job("j", Resources::with_gpu(1000, 1024, 500), 0, 60);
        req.node_selector = vec![LabelRequirement {
            key: "gpu.model".into(),
            values: vec!["V100".into()],
        }];
        assert_eq!(place_partition(&view, &req, Policy::Cost).unwrap(), vec![2]);
        // CPU-only work stays off the GPU nodes under Cost.
        let cpu = PlacementRequest::job("k", Resources::new(1000, 1024), 0, 60);
        assert_eq!(place_partition(&view, &cpu, Policy::Cost).unwrap(), vec![3]);
    }

    fn gpu_node(id: NodeId, gpus: u64) -> Node {
        Node::new(
            id,
            "a",
            "g",
            Resources::with_gpu(32000, 131072, gpus * 1000),
            5.0,
        )
    }

    fn gpu_job(name: &str, node: NodeId, count: u32, each: u64) -> Replica {
        Replica {
            service: name.into(),
            partition: 0,
            node,
            resources: Resources::with_gpus(1000, 1024, count, each),
            kind: WorkloadKind::Job {
                expected_duration_s: 600,
            },
            expected_end_s: Some(600),
            state_bytes: 0,
        }
    }

    #[test]
    fn a_share_larger_than_any_one_device_s_free_does_not_place() {
        // Node 1: 0.3 + 0.3 free on two devices; node 2: 0.7 free on one.
        let view = ClusterView::from_parts(
            vec![gpu_node(1, 2), gpu_node(2, 1)],
            vec![
                gpu_job("a", 1, 1, 700),
                gpu_job("b", 1, 1, 700),
                gpu_job("c", 2, 1, 300),
            ],
        );
        let req = PlacementRequest::job("j", Resources::with_gpus(1000, 1024, 1, 600), 0, 600);
        for policy in [Policy::Spread, Policy::Cost] {
            assert_eq!(place_partition(&view, &req, policy).unwrap(), vec![2]);
            assert_eq!(score_node(&view, 1, &req, policy), None);
        }
        let two = PlacementRequest::job("k", Resources::with_gpus(1000, 1024, 2, 1000), 0, 600);
        assert!(place_partition(&view, &two, Policy::Cost).is_err());
    }

    #[test]
    fn cost_puts_a_fractional_share_on_a_shared_device_and_whole_gpus_where_they_fill() {
        // Node 1: one device half used, three whole; node 2: one device taken whole,
        // three whole free.
        let view = ClusterView::from_parts(
            vec![gpu_node(1, 4), gpu_node(2, 4)],
            vec![gpu_job("a", 2, 1, 1000), gpu_job("b", 1, 1, 500)],
        );
        // 0.4 joins the half-used device rather than opening a whole one on node 2.
        let frac = PlacementRequest::job("f", Resources::with_gpus(1000, 1024, 1, 400), 0, 600);
        assert_eq!(
            place_partition(&view, &frac, Policy::Cost).unwrap(),
            vec![1]
        );
        // Node 1: two devices taken whole, two whole free; node 2: four whole free
        // (a CPU-only job keeps it from counting as empty). Two whole GPUs go where they
        // use up the whole devices (best fit on the count), keeping node 2's four for a
        // four-GPU request.
        let view = ClusterView::from_parts(
            vec![gpu_node(1, 4), gpu_node(2, 4)],
            vec![
                gpu_job("a", 1, 2, 1000),
                Replica {
                    resources: Resources::new(1000, 1024),
                    ..gpu_job("cpu", 2, 0, 0)
                },
            ],
        );
        let two = PlacementRequest::job("t", Resources::with_gpus(1000, 1024, 2, 1000), 0, 600);
        assert_eq!(place_partition(&view, &two, Policy::Cost).unwrap(), vec![1]);
    }

    #[test]
    fn batch_places_largest_first() {
        // One 4-core node and one 2-core node: first-come would put the 1-core request
        // on the 2-core node (best fit) and then the 3-core one on the 4-core; with a
        // single 4-core node and a 2-core node and requests 2+3 cores, order matters.
        let view = ClusterView::from_parts(
            vec![node(1, "a", 4000, 8192, 1.0), node(2, "a", 2000, 4096, 0.5)],
            vec![],
        );
        let small = PlacementRequest {
            spread: SpreadDomain::Node,
            ..PlacementRequest::long_running("a", 0, 1, Resources::new(2000, 1024))
        };
        let big = PlacementRequest {
            spread: SpreadDomain::Node,
            ..PlacementRequest::long_running("b", 0, 1, Resources::new(3000, 1024))
        };
        let out = place_batch(&view, &[small, big], Policy::Cost);
        assert_eq!(out[1].as_ref().unwrap(), &vec![1]);
        assert_eq!(out[0].as_ref().unwrap(), &vec![2]);
    }

    #[test]
    fn view_bookkeeping_follows_mutations() {
        let mut view = ClusterView::from_parts(
            vec![node(1, "a", 4000, 8192, 1.0), node(2, "b", 4000, 8192, 1.0)],
            vec![],
        );
        let s = view.add_replica(lr("s", 0, 1, 1000, 1024));
        assert_eq!(view.free(1), Some(Resources::new(3000, 7168)));
        view.move_replica(s, 2);
        assert_eq!(view.free(1), Some(Resources::new(4000, 8192)));
        assert_eq!(view.partition_nodes("s", 0), vec![2]);
        view.resize_replica(s, Resources::new(2000, 1024));
        assert_eq!(view.free(2), Some(Resources::new(2000, 7168)));
        let gone = view.remove_node(2);
        assert_eq!(gone.len(), 1);
        assert_eq!(view.replica_count(), 0);
        assert!(view.partition_nodes("s", 0).is_empty());
        assert_eq!(view.node_count(), 1);
        assert_eq!(view.free(1), Some(Resources::new(4000, 8192)));
    }
}
