//! The Kubernetes baselines, `k8s-default` and `k8s-tuned`, modelled for comparison.
//!
//! Sources (see docs/PLANNING.md): kube-scheduler default plugins (LeastAllocated +
//! BalancedAllocation, [`Policy::Spread`]); the HPA v2 replica calculator
//! (kubernetes/kubernetes `pkg/controller/podautoscaler/replica_calculator.go`:
//! utilisation over ready pods, pending and unready pods at 0 % on a scale-up and left
//! out on a scale-down, 0.1 tolerance, the pod count scaled, not the spec) and its
//! default behaviour (`horizontal.go`: scale-up by max(4 pods, 100 %) per 15 s with no
//! stabilisation, scale-down by 100 % per 15 s after a 300 s stabilisation window);
//! Cluster Autoscaler (kubernetes/autoscaler `cluster-autoscaler/FAQ.md`: a 10 s loop,
//! one node group per scale-up through the `random` expander, pending pods simulated
//! onto nodes already booting; a node is unneeded when its requests are under 50 % of
//! allocatable, GPU nodes by their GPUs, and its pods fit elsewhere; removed after 10
//! minutes unneeded, not within 10 minutes of a scale-up, empty nodes in bulk and one
//! non-empty node at a time); the node lifecycle controller (NotReady after a 40 s
//! grace period, pods evicted after the 300 s toleration; StatefulSet pods replaced
//! only then). `k8s-tuned` adds what a skilled operator configures: VPA-style
//! requests ([`vpa_recommendation`]), Karpenter-like provisioning
//! ([`crate::PoolChoice::CheapestForBatch`]) and consolidation
//! ([`ScaleDownConfig::karpenter`]).

use std::collections::{HashMap, VecDeque};

use crate::actions::Action;
use crate::scheduler::{place_replacement, PlacementRequest, Policy, SpreadDomain};
use crate::view::{ClusterView, ReplicaSlot, WorkloadKind};
use stator_api::ids::NodeId;

/// HPA: no action while `|ratio - 1|` is within this (`--horizontal-pod-autoscaler-tolerance`).
pub const HPA_TOLERANCE: f64 = 0.1;
/// HPA sync period (`--horizontal-pod-autoscaler-sync-period`).
pub const HPA_SYNC_S: u64 = 15;
/// HPA default scale-down stabilisation window (`behavior.scaleDown`).
pub const HPA_SCALE_DOWN_WINDOW_S: u64 = 300;
/// HPA default scale-up policies: `Pods` 4 and `Percent` 100 per 15 s, the larger wins.
pub const HPA_SCALE_UP_PODS: u32 = 4;
/// See [`HPA_SCALE_UP_PODS`].
pub const HPA_SCALE_UP_PERCENT: u32 = 100;
/// Period of the default scale-up and scale-down policies.
pub const HPA_POLICY_PERIOD_S: u64 = 15;
/// HPA CPU utilisation target used when neither the scenario nor the SLO gives one
/// (the value in Kubernetes' HPA walkthrough; Kubernetes itself has no default).
pub const HPA_DEFAULT_TARGET: f64 = 0.5;
/// Cluster Autoscaler: requested/allocatable under which a node is unneeded
/// (`--scale-down-utilization-threshold`).
pub const CA_UTILIZATION_THRESHOLD: f64 = 0.5;
/// Cluster Autoscaler: how long a node must be unneeded before removal
/// (`--scale-down-unneeded-time`).
pub const CA_UNNEEDED_S: u64 = 600;
/// Cluster Autoscaler: no scale-down within this of a scale-up
/// (`--scale-down-delay-after-add`).
pub const CA_DELAY_AFTER_ADD_S: u64 = 600;
/// Cluster Autoscaler: scan interval (`--scan-interval`).
pub const CA_SCAN_INTERVAL_S: u64 = 10;
/// Cluster Autoscaler: most empty nodes deleted at once (`--max-empty-bulk-delete`).
pub const CA_MAX_EMPTY_BULK_DELETE: usize = 10;
/// Karpenter-like consolidation: how long a node must be a candidate before it is
/// disrupted (`consolidateAfter`; 5 minutes, a choice for stateful pods: each
/// disruption restarts members).
pub const KARPENTER_CONSOLIDATE_AFTER_S: u64 = 300;
/// VPA recommender: the usage percentile requests are sized from (`--target-cpu-percentile`).
pub const VPA_TARGET_PERCENTILE: f64 = 0.9;
/// Node lifecycle: time before an unreachable node is marked NotReady.
pub const NODE_MONITOR_GRACE_S: u64 = 40;
/// Default `not-ready`/`unreachable` toleration before pods are evicted.
pub const EVICTION_TOLERATION_S: u64 = 300;

/// The HPA's raw recommendation from the legacy formula
/// `ceil(current * utilization / target)`, or `current` within the tolerance.
pub fn hpa_recommendation(current_replicas: u32, utilization: f64, target: f64) -> u32 {
    let ratio = utilization / target;
    if (ratio - 1.0).abs() <= HPA_TOLERANCE {
        return current_replicas;
    }
    (current_replicas as f64 * ratio).ceil().max(1.0) as u32
}

/// The HPA v2 replica calculator for a CPU utilisation target
/// (`GetResourceReplicas` in `replica_calculator.go`). `ready` holds (usage, request)
/// in millicores of each ready pod with a metric; `unready_requests` the requests of
/// pods that are pending or not ready yet. Utilisation is an integer percentage of
/// the summed requests, as in `GetResourceUtilizationRatio`. On a scale-up the
/// unready pods count at 0 % usage; if that flips the direction or lands within the
/// tolerance, nothing changes. On a scale-down they are left out. Returns
/// `current_replicas` when no pod has a metric.
pub fn hpa_replica_calculator(
    current_replicas: u32,
    ready: &[(u64, u64)],
    unready_requests: &[u64],
    target_percent: u32,
) -> u32 {
    if ready.is_empty() || target_percent == 0 {
        return current_replicas;
    }
    let ratio_of = |usage: u64, requests: u64| -> f64 {
        let utilization = (usage * 100).checked_div(requests).unwrap_or(0);
        utilization as f64 / target_percent as f64
    };
    let usage: u64 = ready.iter().map(|r| r.0).sum();
    let requests: u64 = ready.iter().map(|r| r.1).sum();
    let usage_ratio = ratio_of(usage, requests);
    let scale_up_with_unready = !unready_requests.is_empty() && usage_ratio > 1.0;
    if !scale_up_with_unready {
        if (1.0 - usage_ratio).abs() <= HPA_TOLERANCE {
            return current_replicas;
        }
        return (usage_ratio * ready.len() as f64).ceil() as u32;
    }
    let all_requests = requests + unready_requests.iter().sum::<u64>();
    let new_ratio = ratio_of(usage, all_requests);
    if (1.0 - new_ratio).abs() <= HPA_TOLERANCE || new_ratio < 1.0 {
        return current_replicas;
    }
    let pods = (ready.len() + unready_requests.len()) as f64;
    let new_replicas = (new_ratio * pods).ceil() as u32;
    new_replicas.max(current_replicas)
}

/// HPA memory: raw recommendations over the stabilisation window and the scale events
/// of the last policy period, per target (one HPA per StatefulSet).
#[derive(Debug, Clone, Default)]
pub struct HpaState {
    history: HashMap<String, VecDeque<(u64, u32)>>,
    events: HashMap<String, VecDeque<(u64, i64)>>,
}

impl HpaState {
    /// The stabilised desired count for `target_name` (the legacy model): up at once,
    /// down only to the highest recommendation of the last 300 s; clamped to
    /// `[min, max]`.
    pub fn desired(
        &mut self,
        target_name: &str,
        now_s: u64,
        recommendation: u32,
        min: u32,
        max: u32,
    ) -> u32 {
        let q = self.history.entry(target_name.to_string()).or_default();
        while q
            .front()
            .is_some_and(|&(t, _)| t + HPA_SCALE_DOWN_WINDOW_S < now_s)
        {
            q.pop_front();
        }
        q.push_back((now_s, recommendation));
        let stabilised = q.iter().map(|&(_, r)| r).max().unwrap_or(recommendation);
        stabilised.clamp(min, max)
    }

    /// `normalizeDesiredReplicasWithBehaviors` with the default behaviour: the
    /// scale-down stabilisation (the highest recommendation of the last 300 s; none on
    /// the way up), then the rate limits (up to max(+4 pods, +100 %) and down by at most
    /// 100 % over any 15 s), then `[min, max]`. Records the recommendation and, when
    /// the count changes, the scale event.
    pub fn normalize(
        &mut self,
        target_name: &str,
        now_s: u64,
        current: u32,
        recommendation: u32,
        min: u32,
        max: u32,
    ) -> u32 {
        let q = self.history.entry(target_name.to_string()).or_default();
        while q
            .front()
            .is_some_and(|&(t, _)| t + HPA_SCALE_DOWN_WINDOW_S <= now_s)
        {
            q.pop_front();
        }
        let down = q.iter().map(|&(_, r)| r).fold(recommendation, u32::max);
        q.push_back((now_s, recommendation));
        // Stabilise: the up window is 0 s, so only the down limit applies.
        let stabilised = current.max(recommendation).min(down);
        let ev = self.events.entry(target_name.to_string()).or_default();
        while ev
            .front()
            .is_some_and(|&(t, _)| t + HPA_POLICY_PERIOD_S <= now_s)
        {
            ev.pop_front();
        }
        let added: i64 = ev.iter().filter(|e| e.1 > 0).map(|e| e.1).sum();
        let deleted: i64 = ev.iter().filter(|e| e.1 < 0).map(|e| -e.1).sum();
        let period_start = (current as i64 - added + deleted).max(0);
        let mut desired = stabilised;
        if desired > current {
            let by_pods = period_start + HPA_SCALE_UP_PODS as i64;
            let by_percent =
                (period_start as f64 * (1.0 + HPA_SCALE_UP_PERCENT as f64 / 100.0)).ceil() as i64;
            let limit = by_pods.max(by_percent).max(current as i64) as u32;
            desired = desired.min(limit.min(max));
        } else if desired < current {
            // 100 % per period: the limit is 0 pods, so only `min` binds.
            desired = desired.max(min);
        }
        let desired = desired.clamp(min, max.max(min));
        if desired != current {
            ev.push_back((now_s, desired as i64 - current as i64));
        }
        desired
    }
}

/// A VPA-style CPU request for a pod: the [`VPA_TARGET_PERCENTILE`] of its observed
/// usage (millicores) divided by `target_utilization` (the recommendation margin set
/// so the request meets the SLO at that percentile), rounded up to `step_millis`.
pub fn vpa_recommendation(
    usage_millis: &mut [f64],
    target_utilization: f64,
    step_millis: u64,
) -> u64 {
    if usage_millis.is_empty() {
        return step_millis.max(1);
    }
    usage_millis.sort_by(f64::total_cmp);
    let ix = ((usage_millis.len() as f64 * VPA_TARGET_PERCENTILE).ceil() as usize)
        .clamp(1, usage_millis.len())
        - 1;
    // The epsilon keeps 900 / 0.6 at 1500, not 1501.
    let raw = (usage_millis[ix] / target_utilization.max(0.05) - 1e-6)
        .ceil()
        .max(0.0) as u64;
    let step = step_millis.max(1);
    raw.div_ceil(step).max(1) * step
}

/// How nodes are removed: Cluster Autoscaler's defaults or a Karpenter-like
/// consolidation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScaleDownConfig {
    /// A node is a candidate when its requested share (GPU nodes: GPUs; others: the
    /// larger of CPU and memory) is below this.
    pub utilization_threshold: f64,
    /// How long a node must stay a candidate before removal.
    pub unneeded_s: u64,
    /// No removal within this of the last scale-up.
    pub delay_after_add_s: u64,
    /// Most empty nodes removed at once.
    pub max_empty_bulk_delete: usize,
    /// The scheduler that re-places evicted pods in the simulation.
    pub policy: Policy,
    /// Whether nodes running batch jobs may be emptied (false: jobs carry Karpenter's
    /// `do-not-disrupt` annotation, as an operator sets for batch work).
    pub disrupt_jobs: bool,
}

impl ScaleDownConfig {
    /// Cluster Autoscaler's defaults.
    pub fn cluster_autoscaler() -> Self {
        ScaleDownConfig {
            utilization_threshold: CA_UTILIZATION_THRESHOLD,
            unneeded_s: CA_UNNEEDED_S,
            delay_after_add_s: CA_DELAY_AFTER_ADD_S,
            max_empty_bulk_delete: CA_MAX_EMPTY_BULK_DELETE,
            policy: Policy::Spread,
            disrupt_jobs: true,
        }
    }
    /// Karpenter-like `WhenEmptyOrUnderutilized` consolidation: any node whose pods
    /// all fit elsewhere, after [`KARPENTER_CONSOLIDATE_AFTER_S`], one non-empty node
    /// at a time, pods re-placed by best fit (kube-scheduler's `MostAllocated`).
    pub fn karpenter() -> Self {
        ScaleDownConfig {
            utilization_threshold: f64::INFINITY,
            unneeded_s: KARPENTER_CONSOLIDATE_AFTER_S,
            delay_after_add_s: 0,
            max_empty_bulk_delete: usize::MAX,
            policy: Policy::Cost,
            disrupt_jobs: false,
        }
    }
}

/// Cluster Autoscaler scale-down memory: since when each node has been unneeded.
#[derive(Debug, Clone, Default)]
pub struct ClusterAutoscalerState {
    unneeded_since: HashMap<NodeId, u64>,
}

/// One Cluster Autoscaler scale-down pass. Nodes with requested CPU and memory both
/// under 50 % whose pods all fit elsewhere (spread scoring, node anti-affinity)
/// become unneeded; after 10 minutes unneeded, empty ones are deleted (up to 10) and
/// at most one non-empty one is drained. Pods on a drained node are evicted and
/// recreated elsewhere (returned as `Migrate`; the runtime treats them as restarts).
/// `min_nodes(pool)` gives each pool's floor. Applies its actions to `view`.
#[allow(clippy::too_many_arguments)] // reason: the pass's inputs, each one used once
pub fn cluster_autoscaler_scale_down(
    view: &mut ClusterView,
    state: &mut ClusterAutoscalerState,
    cfg: &ScaleDownConfig,
    min_nodes: &dyn Fn(&str) -> u32,
    busy_nodes: &[NodeId],
    last_scale_up_s: Option<u64>,
    now_s: u64,
) -> Vec<Action> {
    let unneeded = unneeded_nodes(view, cfg, busy_nodes);
    let cooling = last_scale_up_s.is_some_and(|t| now_s < t + cfg.delay_after_add_s);
    let ripe = ripe_nodes(state, &unneeded, cfg, cooling, now_s);
    let mut counts: HashMap<String, u32> = HashMap::new();
    for n in view.nodes() {
        *counts.entry(n.pool.clone()).or_insert(0) += 1;
    }
    let mut actions = Vec::new();
    let mut empty_deleted = 0;
    let mut drained_one = false;
    for id in ripe {
        let pool = view.node(id).expect("listed").pool.clone();
        if counts[&pool] <= min_nodes(&pool) {
            continue;
        }
        let slots = view.replicas_on(id).to_vec();
        if slots.is_empty() {
            if empty_deleted >= cfg.max_empty_bulk_delete {
                continue;
            }
            empty_deleted += 1;
        } else {
            if drained_one {
                continue;
            }
            let Some(moved) = drain_onto_other_nodes(view, id, &slots, cfg.policy) else {
                continue;
            };
            drained_one = true;
            actions.push(Action::Cordon { node: id });
            for (slot, to) in moved {
                let r = view.replica(slot).expect("moved");
                actions.push(Action::Migrate {
                    service: r.service.clone(),
                    partition: r.partition,
                    from: id,
                    to,
                    resources: r.resources,
                    state_bytes: r.state_bytes,
                });
            }
        }
        *counts.get_mut(&pool).expect("counted") -= 1;
        state.unneeded_since.remove(&id);
        view.remove_node(id);
        actions.push(Action::RemoveNode { node: id });
    }
    actions
}

/// Schedulable, not busy nodes whose requested CPU and memory (GPU on GPU nodes) are
/// under the utilisation threshold, least used first (the cheapest to empty).
fn unneeded_nodes(view: &ClusterView, cfg: &ScaleDownConfig, busy_nodes: &[NodeId]) -> Vec<NodeId> {
    let mut unneeded: Vec<(f64, NodeId)> = Vec::new();
    for n in view.nodes() {
        let a = view.allocated(n.id).expect("listed");
        let share = |u: u64, c: u64| u as f64 / c.max(1) as f64;
        let utilization = if n.capacity.gpu_milli > 0 {
            share(a.gpu_milli, n.capacity.gpu_milli)
        } else {
            share(a.cpu_millis, n.capacity.cpu_millis)
                .max(share(a.memory_mib, n.capacity.memory_mib))
        };
        let has_jobs = || {
            view.replicas_on(n.id).iter().any(|&s| {
                view.replica(s)
                    .is_some_and(|r| matches!(r.kind, WorkloadKind::Job { .. }))
            })
        };
        if n.schedulable
            && utilization < cfg.utilization_threshold
            && !busy_nodes.contains(&n.id)
            && (cfg.disrupt_jobs || !has_jobs())
        {
            unneeded.push((utilization, n.id));
        }
    }
    unneeded.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    unneeded.into_iter().map(|(_, id)| id).collect()
}

/// Remembers since when each node has been unneeded (forgetting nodes that no longer
/// are) and returns those unneeded for `cfg.unneeded_s`, none while cooling down after a
/// scale-up.
fn ripe_nodes(
    state: &mut ClusterAutoscalerState,
    unneeded: &[NodeId],
    cfg: &ScaleDownConfig,
    cooling: bool,
    now_s: u64,
) -> Vec<NodeId> {
    let unneeded_set: std::collections::HashSet<NodeId> = unneeded.iter().copied().collect();
    state
        .unneeded_since
        .retain(|id, _| unneeded_set.contains(id));
    let mut ripe: Vec<NodeId> = Vec::new();
    for &id in unneeded {
        let since = *state.unneeded_since.entry(id).or_insert(now_s);
        if now_s >= since + cfg.unneeded_s && !cooling {
            ripe.push(id);
        }
    }
    ripe
}

/// Cordons `id` and moves every pod in `slots` elsewhere (spread scoring, node
/// anti-affinity). If one does not fit, undoes the moves, uncordons and returns `None`.
fn drain_onto_other_nodes(
    view: &mut ClusterView,
    id: NodeId,
    slots: &[ReplicaSlot],
    policy: Policy,
) -> Option<Vec<(ReplicaSlot, NodeId)>> {
    view.set_schedulable(id, false);
    let mut moved = Vec::new();
    for &slot in slots {
        let r = view.replica(slot).expect("on node").clone();
        let survivors: Vec<NodeId> = view
            .partition_nodes(&r.service, r.partition)
            .into_iter()
            .filter(|&n| n != id)
            .collect();
        let req = PlacementRequest {
            spread: SpreadDomain::Zone,
            kind: r.kind,
            ..PlacementRequest::long_running(&r.service, r.partition, 1, r.resources)
        };
        let req = match r.kind {
            WorkloadKind::Job { .. } => PlacementRequest {
                spread: SpreadDomain::Node,
                ..req
            },
            WorkloadKind::LongRunning => req,
        };
        match place_replacement(view, &req, &survivors, policy) {
            Ok(to) => {
                view.move_replica(slot, to);
                moved.push((slot, to));
            }
            Err(_) => break,
        }
    }
    if moved.len() < slots.len() {
        for &(slot, _) in moved.iter().rev() {
            view.move_replica(slot, id);
        }
        view.set_schedulable(id, true);
        return None;
    }
    Some(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hpa_formula_and_tolerance() {
        assert_eq!(hpa_recommendation(4, 0.52, 0.5), 4); // within 0.1
        assert_eq!(hpa_recommendation(4, 1.0, 0.5), 8);
        assert_eq!(hpa_recommendation(4, 0.2, 0.5), 2); // ceil(1.6)
    }

    // Cases from kubernetes/kubernetes
    // pkg/controller/podautoscaler/replica_calculator_test.go (requests 1.0 core each).
    #[test]
    fn replica_calculator_matches_kubernetes_cases() {
        let r = |u: u64| (u, 1000u64);
        // TestReplicaCalcScaleUp: 50 % against 30 % -> ceil(1.667 * 3) = 5.
        assert_eq!(
            hpa_replica_calculator(3, &[r(300), r(500), r(700)], &[], 30),
            5
        );
        // TestReplicaCalcScaleUpUnreadyLessScale: ready 60 %; with the unready pod at
        // 0 %, 40 % -> ceil(1.333 * 3) = 4.
        assert_eq!(hpa_replica_calculator(3, &[r(500), r(700)], &[1000], 30), 4);
        // TestReplicaCalcScaleUpUnreadyNoScale: 40 % ready, 13 % with the unready: the
        // direction flips, so no change.
        assert_eq!(hpa_replica_calculator(3, &[r(400)], &[1000, 1000], 30), 3);
        // TestReplicaCalcScaleDown: 28 % against 50 % -> ceil(0.56 * 5) = 3.
        let five = [r(100), r(300), r(500), r(250), r(250)];
        assert_eq!(hpa_replica_calculator(5, &five, &[], 50), 3);
        // TestReplicaCalcScaleDownIncludeUnreadyPods: unready pods left out: 30 % of
        // 3 ready -> ceil(0.6 * 3) = 2.
        assert_eq!(
            hpa_replica_calculator(5, &[r(100), r(300), r(500)], &[1000, 1000], 50),
            2
        );
        // TestReplicaCalcScaleDownExcludeUnscheduledPods: 4 pending pods left out.
        assert_eq!(
            hpa_replica_calculator(5, &[r(100)], &[1000, 1000, 1000, 1000], 50),
            1
        );
        // Within the 0.1 tolerance: no change.
        assert_eq!(hpa_replica_calculator(4, &[r(520), r(540)], &[], 50), 4);
    }

    #[test]
    fn pending_pods_do_not_compound_the_scale_up() {
        // 3 ready pods at 100 % of 1 core against a 50 % target ask for 6; while the
        // 3 new pods pend, the next sync (unready at 0 %) keeps 6 instead of 12.
        let ready = [(1000, 1000); 3];
        assert_eq!(hpa_replica_calculator(3, &ready, &[], 50), 6);
        assert_eq!(hpa_replica_calculator(6, &ready, &[1000; 3], 50), 6);
    }

    // The default behaviour (Kubernetes docs, "Default Behavior"): scale-up by the
    // larger of 4 pods and 100 % per 15 s, no up window; scale-down 300 s window.
    #[test]
    fn hpa_default_behaviour_limits_rate_and_stabilises() {
        let mut st = HpaState::default();
        // 3 -> wants 20: max(3 + 4, 3 * 2) = 7.
        assert_eq!(st.normalize("s", 0, 3, 20, 3, 100), 7);
        // Within the same 15 s period nothing more.
        assert_eq!(st.normalize("s", 5, 7, 20, 3, 100), 7);
        // Next period: max(7 + 4, 14) = 14.
        assert_eq!(st.normalize("s", 15, 7, 20, 3, 100), 14);
        assert_eq!(st.normalize("s", 30, 14, 20, 3, 100), 20);
        // Down: held at the highest recommendation of the last 300 s.
        assert_eq!(st.normalize("s", 45, 20, 4, 3, 100), 20);
        assert_eq!(st.normalize("s", 329, 20, 4, 3, 100), 20);
        // 300 s after the last 20 was recommended (t = 30): down at once (100 %).
        assert_eq!(st.normalize("s", 330, 20, 4, 3, 100), 4);
        // Never under min.
        assert_eq!(st.normalize("s", 700, 4, 1, 3, 100), 3);
    }

    #[test]
    fn vpa_takes_the_percentile_over_the_target() {
        let mut usage: Vec<f64> = (1..=100).map(|x| x as f64 * 10.0).collect();
        // P90 = 900m; / 0.6 = 1500m.
        assert_eq!(vpa_recommendation(&mut usage, 0.6, 50), 1500);
    }

    #[test]
    fn hpa_scale_down_waits_for_window() {
        let mut st = HpaState::default();
        assert_eq!(st.desired("s", 0, 8, 3, 100), 8);
        assert_eq!(st.desired("s", 15, 4, 3, 100), 8);
        assert_eq!(st.desired("s", 301, 4, 3, 100), 4);
        assert_eq!(st.desired("s", 316, 1, 3, 100), 4);
        assert_eq!(st.desired("s", 700, 1, 3, 100), 3);
    }
}
