//! What differs between policy sets: one [`Policies`] impl per set, called by the
//! event loop at its decision points.
//!
//! The loop itself (events, cost, metrics, the scheduler's pass over pending pods) is
//! shared; everything a policy set decides goes through this trait, so a new set is
//! one more impl, not one more arm in a dozen `match`es.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::{Event, Pending, PendingKind, PolicySet, Sim, VPA_HISTORY_S, VPA_STEP_MILLIS};
use stator_planning::baseline::NODE_MONITOR_GRACE_S;
use stator_planning::baseline::{vpa_recommendation, ScaleDownConfig, HPA_SYNC_S};
use stator_planning::{
    consolidate_with_headroom, NodeId, Policy, PoolChoice, Resources, UnmetNeed,
};

/// One policy set's decisions. The loop calls each hook at a fixed point, in a fixed
/// order, so a run stays deterministic per seed.
///
/// To keep runs comparable, an implementation must:
/// - act on the [`Sim`] only through the actions of the planning crate (the view is the
///   projection of the cluster once they are carried out);
/// - draw from the run's random generator only where the real system would be random
///   (`k8s-default`'s choice of node group), never to break ties.
pub(super) trait Policies: Sync {
    /// Which set this is (reports, `--policy`).
    fn set(&self) -> PolicySet;

    /// The scheduler's scoring for pending pods and replicas.
    fn scheduler(&self) -> Policy;

    /// How new nodes pick their pool.
    fn pool_choice(&self, rng: &mut ChaCha8Rng) -> PoolChoice;

    /// Whether the node autoscaler may treat a pending pod's zone spread as a
    /// preference (Kubernetes' `ScheduleAnyway` spread) rather than a rule.
    fn soft_zone_spread(&self) -> bool;

    /// How scale-down picks and drains nodes.
    fn scale_down_config(&self) -> ScaleDownConfig {
        ScaleDownConfig::cluster_autoscaler()
    }

    /// Before the run: per-pod requests and anything else fixed up front.
    fn prepare(&self, _sim: &mut Sim<'_>) {}

    /// At t = 0: place every partition's members on the initial nodes, adding nodes
    /// at once until they fit.
    fn place_initial(&self, sim: &mut Sim<'_>);

    /// At t = 0, after the trace's tasks: the periodic loops.
    fn schedule_loops(&self, sim: &mut Sim<'_>) {
        sim.push(0, Event::Tick);
    }

    /// Every `tick_s`: the control period.
    fn control_tick(&self, sim: &mut Sim<'_>);

    /// Pods still wait after the scheduler's pass outside the control period (a
    /// node became ready, a task arrived): stator asks for nodes at once; Kubernetes
    /// waits for its autoscaler's own loop.
    fn pods_waiting(&self, _sim: &mut Sim<'_>, _unmet: Vec<UnmetNeed>) {}

    /// A trace task arrives (before it is queued).
    fn task_started(&self, _sim: &mut Sim<'_>, _task: usize) {}

    /// A node failed: schedule the moment its loss is acted on.
    fn node_failed(&self, sim: &mut Sim<'_>, node: NodeId);

    /// A partition lost a member for good (its node was released).
    fn member_lost(&self, _sim: &mut Sim<'_>, _part: usize) {}

    /// Room kept beyond what is pending (warm spares), asked for with every scale-up.
    fn spare_needs(&self, _sim: &mut Sim<'_>) -> Vec<UnmetNeed> {
        Vec::new()
    }

    /// At the end: the set's own fields of the summary.
    fn report(&self, _sim: &mut Sim<'_>) {}
}

/// The impl of a policy set.
pub(super) fn policies_of(set: PolicySet) -> &'static dyn Policies {
    match set {
        PolicySet::Stator => &Stator,
        PolicySet::K8sDefault => &K8sDefault,
        PolicySet::K8sTuned => &K8sTuned,
    }
}

/// stator: cost placement, the QoS-first autoscaler with forecasts, consolidation by
/// live migration, node-pair replacements, warm spares for recent task shapes.
struct Stator;

impl Policies for Stator {
    fn set(&self) -> PolicySet {
        PolicySet::Stator
    }

    fn scheduler(&self) -> Policy {
        Policy::Cost
    }

    fn pool_choice(&self, _rng: &mut ChaCha8Rng) -> PoolChoice {
        PoolChoice::CheapestForShape
    }

    fn soft_zone_spread(&self) -> bool {
        false
    }

    fn place_initial(&self, sim: &mut Sim<'_>) {
        sim.place_initial_by_autoscaler();
    }

    fn control_tick(&self, sim: &mut Sim<'_>) {
        if !sim.parts.is_empty() {
            let demands = sim.demands();
            let actions = sim.run_autoscaler(&demands);
            sim.return_demands(demands);
            sim.execute(actions, false);
        }
        let unmet = sim.place_pending();
        sim.scale_up(unmet);
        if sim.now_s >= sim.next_consolidate_s {
            sim.next_consolidate_s = sim.now_s + sim.sc.consolidate_every_s;
            let busy: Vec<NodeId> = sim.busy_nodes();
            let headroom = sim.headroom_shapes();
            let actions = consolidate_with_headroom(
                &mut sim.view,
                &sim.pools,
                sim.in_flight,
                &busy,
                &mut sim.c_state,
                &sim.c_cfg,
                sim.now_s,
                &headroom,
            );
            sim.execute(actions, false);
            sim.start_merges();
        }
    }

    fn pods_waiting(&self, sim: &mut Sim<'_>, unmet: Vec<UnmetNeed>) {
        sim.scale_up(unmet);
    }

    fn task_started(&self, sim: &mut Sim<'_>, task: usize) {
        let shape: Resources = sim.sc.tasks[task].resources;
        sim.recent_shapes.push_back((sim.now_s, shape));
    }

    fn node_failed(&self, sim: &mut Sim<'_>, node: NodeId) {
        // stator's failure detector; the autoscaler repairs from the next round.
        let at = sim.now_s + sim.sc.timing.detect_s;
        sim.push(at, Event::FailureDetected { node });
    }

    fn spare_needs(&self, sim: &mut Sim<'_>) -> Vec<UnmetNeed> {
        sim.headroom_needs()
    }
}

/// Kubernetes defaults: spread scoring, one HPA v2 per StatefulSet, Cluster
/// Autoscaler (random node group), StatefulSet failover after the node monitor grace
/// and the eviction toleration.
struct K8sDefault;

/// What a skilled operator runs: VPA-style requests, the HPA at the SLO's
/// utilisation, best fit (`MostAllocated`), Karpenter-like provisioning (cheapest
/// instance per batch of pending pods) and consolidation.
struct K8sTuned;

impl Policies for K8sDefault {
    fn set(&self) -> PolicySet {
        PolicySet::K8sDefault
    }

    fn scheduler(&self) -> Policy {
        Policy::Spread
    }

    fn pool_choice(&self, rng: &mut ChaCha8Rng) -> PoolChoice {
        // Cluster Autoscaler's default expander.
        PoolChoice::Random(rng.gen::<u64>())
    }

    fn soft_zone_spread(&self) -> bool {
        true
    }

    fn place_initial(&self, sim: &mut Sim<'_>) {
        kubernetes::place_initial(sim);
    }

    fn schedule_loops(&self, sim: &mut Sim<'_>) {
        kubernetes::schedule_loops(sim);
    }

    fn control_tick(&self, sim: &mut Sim<'_>) {
        kubernetes::control_tick(sim);
    }

    fn node_failed(&self, sim: &mut Sim<'_>, node: NodeId) {
        kubernetes::node_failed(sim, node);
    }

    fn member_lost(&self, sim: &mut Sim<'_>, part: usize) {
        kubernetes::member_lost(sim, part);
    }

    fn report(&self, sim: &mut Sim<'_>) {
        kubernetes::report(sim);
    }
}

impl Policies for K8sTuned {
    fn set(&self) -> PolicySet {
        PolicySet::K8sTuned
    }

    fn scheduler(&self) -> Policy {
        // kube-scheduler's `MostAllocated` scoring, modelled by best fit.
        Policy::Cost
    }

    fn pool_choice(&self, _rng: &mut ChaCha8Rng) -> PoolChoice {
        PoolChoice::CheapestForBatch
    }

    fn soft_zone_spread(&self) -> bool {
        true
    }

    fn scale_down_config(&self) -> ScaleDownConfig {
        ScaleDownConfig::karpenter()
    }

    fn prepare(&self, sim: &mut Sim<'_>) {
        // VPA-style requests: the percentile of the previous day's per-pod usage
        // (the load curve repeats daily; no jitter), over the HPA's target.
        let sc = sim.sc;
        for p in &mut sim.parts {
            let svc = &sc.services[p.service];
            let mut usage: Vec<f64> = (0..VPA_HISTORY_S)
                .step_by(sc.tick_s.max(1) as usize)
                .map(|t| svc.load.at(t as f64) * p.weight / svc.replicas as f64)
                .collect();
            let cpu = vpa_recommendation(&mut usage, sim.hpa_target[p.service], VPA_STEP_MILLIS);
            p.request = Resources::new(cpu, svc.memory_mib);
        }
    }

    fn place_initial(&self, sim: &mut Sim<'_>) {
        kubernetes::place_initial(sim);
    }

    fn schedule_loops(&self, sim: &mut Sim<'_>) {
        kubernetes::schedule_loops(sim);
    }

    fn control_tick(&self, sim: &mut Sim<'_>) {
        kubernetes::control_tick(sim);
    }

    fn node_failed(&self, sim: &mut Sim<'_>, node: NodeId) {
        kubernetes::node_failed(sim, node);
    }

    fn member_lost(&self, sim: &mut Sim<'_>, part: usize) {
        kubernetes::member_lost(sim, part);
    }

    fn report(&self, sim: &mut Sim<'_>) {
        kubernetes::report(sim);
    }
}

/// What both Kubernetes baselines share.
mod kubernetes {
    use super::super::round3;
    use super::*;
    use stator_planning::{plan_new_nodes, Action};

    /// Every StatefulSet's pods pending, then the scheduler and the node autoscaler
    /// (instant nodes) in turn until nothing more fits.
    pub(super) fn place_initial(sim: &mut Sim<'_>) {
        for part in 0..sim.parts.len() {
            for _ in 0..sim.parts[part].spec_replicas {
                sim.pending.push(Pending {
                    kind: PendingKind::Replica { part },
                    since_s: 0,
                });
            }
        }
        for _ in 0..64 {
            let unmet = sim.place_pending();
            if unmet.is_empty() {
                break;
            }
            let choice = sim.pool_choice();
            let adds = plan_new_nodes(&sim.view, &unmet, &sim.pools, &[], choice);
            if adds.is_empty() {
                break;
            }
            for a in adds {
                if let Action::AddNode { pool, zone } = a {
                    sim.provision(&pool, &zone, true);
                }
            }
        }
    }

    /// The control period, then the node autoscaler's own loop.
    pub(super) fn schedule_loops(sim: &mut Sim<'_>) {
        sim.push(0, Event::Tick);
        sim.push(0, Event::AutoscalerLoop);
    }

    /// The HPAs every [`HPA_SYNC_S`], then the scheduler places the pods they
    /// created; nodes come from the autoscaler's own loop.
    pub(super) fn control_tick(sim: &mut Sim<'_>) {
        if !sim.parts.is_empty() && sim.now_s >= sim.next_hpa_s {
            sim.next_hpa_s = sim.now_s + HPA_SYNC_S;
            sim.hpa_round();
        }
        sim.place_pending();
    }

    /// The node controller marks the node NotReady after its grace period; eviction
    /// follows the toleration.
    pub(super) fn node_failed(sim: &mut Sim<'_>, node: NodeId) {
        let at = sim.now_s + NODE_MONITOR_GRACE_S;
        sim.push(at, Event::K8sNotReady { node });
    }

    /// The StatefulSet controller recreates the pod.
    pub(super) fn member_lost(sim: &mut Sim<'_>, part: usize) {
        let since_s = sim.now_s;
        sim.pending.push(Pending {
            kind: PendingKind::Replica { part },
            since_s,
        });
    }

    /// The HPA target and the per-pod CPU request of each service.
    pub(super) fn report(sim: &mut Sim<'_>) {
        for (si, svc) in sim.sc.services.iter().enumerate() {
            sim.s
                .hpa_target_utilization
                .insert(svc.name.clone(), round3(sim.hpa_target[si]));
            let mut reqs: Vec<u64> = sim
                .parts
                .iter()
                .filter(|p| p.service == si)
                .map(|p| p.request.cpu_millis)
                .collect();
            reqs.sort_unstable();
            if let Some(&m) = reqs.get(reqs.len() / 2) {
                sim.s.cpu_request_millis.insert(svc.name.clone(), m);
            }
        }
    }
}
