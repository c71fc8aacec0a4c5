//! The `k8s-default` policy set: Kubernetes' defaults, modelled for comparison.
//!
//! Sources (see docs/PLANNING.md): kube-scheduler default plugins (LeastAllocated +
//! BalancedAllocation, [`Policy::Spread`]); the HPA algorithm
//! `desired = ceil(current * metric / target)` with a 0.1 tolerance, 15 s sync and a
//! 300 s scale-down stabilisation window; Cluster Autoscaler (scale up for pending
//! pods through the `random` expander; a node is unneeded when requested CPU and
//! memory are both under 50 % and its pods fit elsewhere, removed after 10 minutes,
//! empty nodes in bulk, non-empty ones one at a time); the node lifecycle controller
//! (NotReady after a 40 s grace period, pods evicted after the 300 s toleration;
//! StatefulSet pods replaced only then).

use std::collections::{HashMap, VecDeque};

use crate::actions::Action;
use crate::scheduler::{place_replacement, PlacementRequest, Policy, SpreadDomain};
use crate::view::{ClusterView, WorkloadKind};
use stator_api::ids::NodeId;

/// HPA: no action while `|metric/target - 1|` is within this.
pub const HPA_TOLERANCE: f64 = 0.1;
/// HPA sync period.
pub const HPA_SYNC_S: u64 = 15;
/// HPA scale-down stabilisation window.
pub const HPA_SCALE_DOWN_WINDOW_S: u64 = 300;
/// HPA default CPU utilisation target when the scenario gives none.
pub const HPA_DEFAULT_TARGET: f64 = 0.5;
/// Cluster Autoscaler: requested/allocatable under which a node is unneeded.
pub const CA_UTILIZATION_THRESHOLD: f64 = 0.5;
/// Cluster Autoscaler: how long a node must be unneeded before removal.
pub const CA_UNNEEDED_S: u64 = 600;
/// Cluster Autoscaler: scan interval.
pub const CA_SCAN_INTERVAL_S: u64 = 10;
/// Cluster Autoscaler: most empty nodes deleted at once.
pub const CA_MAX_EMPTY_BULK_DELETE: usize = 10;
/// Node lifecycle: time before an unreachable node is marked NotReady.
pub const NODE_MONITOR_GRACE_S: u64 = 40;
/// Default `not-ready`/`unreachable` toleration before pods are evicted.
pub const EVICTION_TOLERATION_S: u64 = 300;

/// The HPA's raw recommendation: `ceil(current * utilization / target)`, or `current`
/// within the tolerance.
pub fn hpa_recommendation(current_replicas: u32, utilization: f64, target: f64) -> u32 {
    let ratio = utilization / target;
    if (ratio - 1.0).abs() <= HPA_TOLERANCE {
        return current_replicas;
    }
    (current_replicas as f64 * ratio).ceil().max(1.0) as u32
}

/// HPA memory: recommendations over the scale-down window.
#[derive(Debug, Clone, Default)]
pub struct HpaState {
    history: HashMap<String, VecDeque<(u64, u32)>>,
}

impl HpaState {
    /// The stabilised desired count for `target_name`: up at once, down only to the
    /// highest recommendation of the last 300 s; clamped to `[min, max]`.
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
pub fn cluster_autoscaler_scale_down(
    view: &mut ClusterView,
    state: &mut ClusterAutoscalerState,
    min_nodes: &dyn Fn(&str) -> u32,
    busy_nodes: &[NodeId],
    now_s: u64,
) -> Vec<Action> {
    let mut unneeded: Vec<NodeId> = Vec::new();
    for n in view.nodes() {
        let a = view.allocated(n.id).expect("listed");
        let cpu = a.cpu_millis as f64 / n.capacity.cpu_millis.max(1) as f64;
        let mem = a.memory_mib as f64 / n.capacity.memory_mib.max(1) as f64;
        if n.schedulable
            && cpu < CA_UTILIZATION_THRESHOLD
            && mem < CA_UTILIZATION_THRESHOLD
            && !busy_nodes.contains(&n.id)
        {
            unneeded.push(n.id);
        }
    }
    let unneeded_set: std::collections::HashSet<NodeId> = unneeded.iter().copied().collect();
    state
        .unneeded_since
        .retain(|id, _| unneeded_set.contains(id));
    let mut ripe: Vec<NodeId> = Vec::new();
    for &id in &unneeded {
        let since = *state.unneeded_since.entry(id).or_insert(now_s);
        if now_s >= since + CA_UNNEEDED_S {
            ripe.push(id);
        }
    }
    ripe.sort();
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
            if empty_deleted >= CA_MAX_EMPTY_BULK_DELETE {
                continue;
            }
            empty_deleted += 1;
        } else {
            if drained_one {
                continue;
            }
            // Do all pods fit elsewhere?
            view.set_schedulable(id, false);
            let mut moved = Vec::new();
            for &slot in &slots {
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
                match place_replacement(view, &req, &survivors, Policy::Spread) {
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
                continue;
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hpa_formula_and_tolerance() {
        assert_eq!(hpa_recommendation(4, 0.52, 0.5), 4); // within 0.1
        assert_eq!(hpa_recommendation(4, 1.0, 0.5), 8);
        assert_eq!(hpa_recommendation(4, 0.2, 0.5), 2); // ceil(1.6)
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
