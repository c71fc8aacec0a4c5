//! Property tests: no planner action breaks quorum, anti-affinity or capacity.

use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

use stator_planning::autoscaler::plan_new_nodes_with_fit;
use stator_planning::{
    autoscale, consolidate, place_partition, score_node, Action, BootingNode, ClusterView,
    ConsolidatorConfig, ConsolidatorState, Node, PartitionDemand, PartitionScalerConfig,
    PartitionScalerState, PlacementRequest, Policy, PoolChoice, PoolSpec, Replica, Resources,
    SpreadDomain, UnmetNeed, WorkloadKind,
};

const ZONES: [&str; 4] = ["a", "b", "c", "d"];

fn check_capacity(view: &ClusterView) {
    for n in view.nodes() {
        let a = view.allocated(n.id).unwrap();
        assert!(
            a.fits_in(&n.capacity),
            "node {} over capacity: {a:?} > {:?}",
            n.id,
            n.capacity
        );
    }
}

/// Per partition: member count and distinct zones.
fn shape(view: &ClusterView) -> BTreeMap<(String, u32), (usize, usize)> {
    let mut out = BTreeMap::new();
    for (service, p) in view.partition_keys() {
        let nodes = view.partition_nodes(&service, p);
        let distinct_nodes: BTreeSet<_> = nodes.iter().collect();
        assert_eq!(
            distinct_nodes.len(),
            nodes.len(),
            "{service}/{p} has two members on one node: {nodes:?}"
        );
        let zones: BTreeSet<_> = nodes
            .iter()
            .map(|&n| view.zone_of(n).unwrap().to_string())
            .collect();
        out.insert((service, p), (nodes.len(), zones.len()));
    }
    out
}

fn check_no_worse(
    before: &BTreeMap<(String, u32), (usize, usize)>,
    after: &BTreeMap<(String, u32), (usize, usize)>,
) {
    for (k, &(members, zones)) in before {
        let &(m2, z2) = after.get(k).unwrap_or(&(0, 0));
        assert!(m2 >= members, "{k:?} lost members: {members} -> {m2}");
        assert!(z2 >= zones, "{k:?} lost zone spread: {zones} -> {z2}");
    }
}

prop_compose! {
    fn cluster()(nodes in prop::collection::vec((0usize..4, 1u64..9, 0u64..3), 3..12)) -> ClusterView {
        ClusterView::from_parts(
            nodes.into_iter().enumerate().map(|(i, (z, cores, price))| {
                Node::new(i as u64 + 1, ZONES[z], "p", Resources::new(cores * 1000, cores * 4096), 0.05 * (price + 1) as f64 * cores as f64)
            }).collect(),
            vec![],
        )
    }
}

fn pools() -> Vec<PoolSpec> {
    vec![PoolSpec {
        name: "p".into(),
        capacity: Resources::new(4000, 16384),
        price_per_hour: 0.2,
        boot_delay_s: 60,
        min_nodes: 0,
        max_nodes: 1000,
        zones: ZONES.iter().map(|z| z.to_string()).collect(),
        labels: Default::default(),
    }]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// The scan skips blocks of nodes whose largest free room cannot hold the request
    /// (`ClusterView::block_free`): it must choose exactly the node a scan of every
    /// node chooses (best score, lowest id on ties), through node removals (which
    /// move the last node into the gap), cordons and resizes, at sizes spanning
    /// several blocks.
    #[test]
    fn block_skipping_scan_finds_the_best_node(
        caps in prop::collection::vec((0usize..4, 1u64..9), 60..260),
        fills in prop::collection::vec((0usize..1000, 100u64..4000), 0..400),
        removed in prop::collection::vec(0usize..1000, 0..40),
        cordoned in prop::collection::vec(0usize..1000, 0..20),
        asks in prop::collection::vec((100u64..6000, 256u64..20000, any::<bool>()), 1..8),
    ) {
        let mut view = ClusterView::from_parts(
            caps.iter().enumerate().map(|(i, &(z, cores))| {
                Node::new(i as u64 + 1, ZONES[z], "p", Resources::new(cores * 1000, cores * 4096), 0.05 * cores as f64)
            }).collect(),
            vec![],
        );
        let n = caps.len();
        let mut slots = Vec::new();
        for (i, &(at, cpu)) in fills.iter().enumerate() {
            let node = (at % n) as u64 + 1;
            let r = Resources::new(cpu, 1024);
            if r.fits_in(&view.free(node).unwrap()) {
                slots.push(view.add_replica(Replica { service: "f".into(), partition: i as u32, node, resources: r, kind: WorkloadKind::LongRunning, expected_end_s: None, state_bytes: 0 }));
            }
        }
        // Shrink every other replica: frees room in the middle of blocks.
        for &slot in slots.iter().step_by(2) {
            view.resize_replica(slot, Resources::new(100, 1024));
        }
        for &r in &removed {
            view.remove_node((r % n) as u64 + 1);
        }
        for &c in &cordoned {
            view.set_schedulable((c % n) as u64 + 1, false);
        }
        for (i, &(cpu, mem, cost)) in asks.iter().enumerate() {
            let policy = if cost { Policy::Cost } else { Policy::Spread };
            let req = PlacementRequest {
                spread: SpreadDomain::Node,
                ..PlacementRequest::long_running("q", i as u32, 1, Resources::new(cpu, mem))
            };
            let brute = view
                .nodes()
                .filter_map(|nd| score_node(&view, nd.id, &req, policy).map(|s| (s, nd.id)))
                .fold(None::<(f64, u64)>, |best, (s, id)| match best {
                    Some((bs, bid)) if bs > s || (bs == s && bid < id) => Some((bs, bid)),
                    _ => Some((s, id)),
                })
                .map(|(_, id)| id);
            let got = place_partition(&view, &req, policy).ok().map(|v| v[0]);
            prop_assert_eq!(got, brute);
        }
    }

    #[test]
    fn placement_keeps_capacity_and_anti_affinity(
        mut view in cluster(),
        parts in prop::collection::vec((1u32..4, 100u64..1500, any::<bool>()), 1..12),
        cost in any::<bool>(),
    ) {
        let policy = if cost { Policy::Cost } else { Policy::Spread };
        for (i, (r, cpu, zone)) in parts.into_iter().enumerate() {
            let req = PlacementRequest {
                spread: if zone { SpreadDomain::Zone } else { SpreadDomain::Node },
                ..PlacementRequest::long_running("s", i as u32, r, Resources::new(cpu, 512))
            };
            if let Ok(nodes) = place_partition(&view, &req, policy) {
                prop_assert_eq!(nodes.len(), r as usize);
                let zones_avail: BTreeSet<_> = view.nodes().filter(|n| req.resources.fits_in(&view.free(n.id).unwrap())).map(|n| n.zone.clone()).collect();
                for n in nodes {
                    view.add_replica(Replica { service: "s".into(), partition: i as u32, node: n, resources: req.resources, kind: WorkloadKind::LongRunning, expected_end_s: None, state_bytes: 0 });
                }
                let s = shape(&view);
                if zone && zones_avail.len() >= r as usize {
                    prop_assert_eq!(s[&("s".to_string(), i as u32)].1, r as usize, "zones available {:?}", zones_avail);
                }
            }
            check_capacity(&view);
        }
    }

    #[test]
    fn autoscaler_and_consolidator_never_break_invariants(
        mut view in cluster(),
        parts in prop::collection::vec((1u32..4, 100u64..1200), 1..10),
        rounds in prop::collection::vec(prop::collection::vec(0u64..3000, 10), 1..6),
    ) {
        for (i, &(r, cpu)) in parts.iter().enumerate() {
            let req = PlacementRequest::long_running("s", i as u32, r, Resources::new(cpu, 512));
            if let Ok(nodes) = place_partition(&view, &req, Policy::Cost) {
                for n in nodes {
                    view.add_replica(Replica { service: "s".into(), partition: i as u32, node: n, resources: req.resources, kind: WorkloadKind::LongRunning, expected_end_s: None, state_bytes: 1 });
                }
            }
        }
        let mut ast = PartitionScalerState::default();
        let mut cst = ConsolidatorState::default();
        let acfg = PartitionScalerConfig::default();
        let ccfg = ConsolidatorConfig { empty_for_s: 0, ..Default::default() };
        for (t, usage) in rounds.into_iter().enumerate() {
            let now = t as u64 * 400;
            let demands: Vec<PartitionDemand> = view.partition_keys().into_iter().map(|(s, p)| {
                let members = view.partition_nodes(&s, p).len() as u32;
                PartitionDemand { service: s, partition: p, cpu_used_millis: usage[p as usize % usage.len()], min_replicas: members, base_resources: Resources::new(100, 512), state_bytes: 1, spread: SpreadDomain::Zone }
            }).collect();
            let before = shape(&view);
            autoscale(&mut view, &demands, &pools(), &[], &mut ast, &acfg, now);
            check_capacity(&view);
            let mid = shape(&view);
            check_no_worse(&before, &mid);
            consolidate(&mut view, &pools(), 0, &[], &mut cst, &ccfg, now);
            check_capacity(&view);
            let after = shape(&view);
            check_no_worse(&mid, &after);
        }
    }

    /// Cluster Autoscaler (and the other pool choices) never provision more capacity
    /// than the pending pods need: every new node holds at least one need and no more
    /// than fits it; a need that fits a booting node adds nothing; and asking again
    /// with the planned nodes booting adds nothing for the same needs (the old model
    /// added a node per pending pod on every pass).
    #[test]
    fn scale_up_never_provisions_beyond_the_pending_pods(
        view in cluster(),
        needs in prop::collection::vec((100u64..6000, 256u64..20000, 0usize..4, 0u32..6, any::<bool>()), 1..24),
        choice in 0u8..4,
        draw in any::<u64>(),
    ) {
        let pools = vec![
            PoolSpec { name: "small".into(), capacity: Resources::new(4000, 16384), price_per_hour: 0.19, max_nodes: 40, ..pools()[0].clone() },
            PoolSpec { name: "big".into(), capacity: Resources::new(16000, 65536), price_per_hour: 0.77, max_nodes: 40, ..pools()[0].clone() },
            PoolSpec { name: "cpu".into(), capacity: Resources::new(16000, 32768), price_per_hour: 0.68, max_nodes: 40, ..pools()[0].clone() },
        ];
        let unmet: Vec<UnmetNeed> = needs.iter().map(|&(cpu, mem, avoid, part, soft)| UnmetNeed {
            soft_spread: soft,
            partition: Some(("s".to_string(), part)),
            ..UnmetNeed::new(Resources::new(cpu, mem), ZONES[..avoid].iter().map(|z| z.to_string()).collect())
        }).collect();
        let choice = match choice {
            0 => PoolChoice::CheapestPerUnit,
            1 => PoolChoice::CheapestForShape,
            2 => PoolChoice::Random(draw),
            _ => PoolChoice::CheapestForBatch,
        };
        let plan = plan_new_nodes_with_fit(&view, &unmet, &pools, &[], choice);
        let booting: Vec<BootingNode> = plan.actions.iter().map(|a| match a {
            Action::AddNode { pool, zone } => BootingNode { pool: pool.clone(), zone: zone.clone() },
            other => panic!("not an AddNode: {other:?}"),
        }).collect();
        // Every new node holds at least one need, and what it holds fits it.
        for (i, b) in booting.iter().enumerate() {
            let on: Vec<usize> = (0..unmet.len()).filter(|&n| plan.new_node_of[n] == Some(i)).collect();
            prop_assert!(!on.is_empty(), "node {i} ({b:?}) holds no pending need: {plan:?}");
            let total = on.iter().fold(Resources::default(), |t, &n| t + unmet[n].resources);
            let cap = pools.iter().find(|p| p.name == b.pool).unwrap().capacity;
            prop_assert!(total.fits_in(&cap), "node {i} over capacity: {total:?} > {cap:?}");
            let mut parts: Vec<u32> = on.iter().map(|&n| unmet[n].partition.as_ref().unwrap().1).collect();
            parts.sort_unstable();
            let distinct = { let mut d = parts.clone(); d.dedup(); d.len() };
            prop_assert_eq!(distinct, parts.len(), "two members of a partition on one node");
        }
        prop_assert!(booting.len() <= unmet.len());
        // The same needs again, with those nodes booting: each need planned onto a
        // new node now lands on a booting one, and when every need was provided for
        // nothing more is added.
        let again = plan_new_nodes_with_fit(&view, &unmet, &pools, &booting, choice);
        for n in 0..unmet.len() {
            if plan.new_node_of[n].is_some() {
                prop_assert!(again.on_booting[n], "need {n} not on its booting node: {plan:?} then {again:?}");
            }
        }
        if plan.new_node_of.iter().all(Option::is_some) {
            prop_assert!(again.actions.is_empty(), "added again for the same pods: {:?}", again.actions);
        }
    }
}

fn shaped_pools() -> Vec<PoolSpec> {
    let pool = |name: &str, cpu: u64, mem: u64, price: f64| PoolSpec {
        name: name.into(),
        capacity: Resources::new(cpu, mem),
        price_per_hour: price,
        boot_delay_s: 60,
        min_nodes: 0,
        max_nodes: 1000,
        zones: ZONES.iter().map(|z| z.to_string()).collect(),
        labels: Default::default(),
    };
    vec![
        pool("gp-4", 4000, 16384, 0.192),
        pool("gp-16", 16000, 65536, 0.768),
        pool("c-16", 16000, 32768, 0.68),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The night's repack and the day's swaps (`plan_replacements` with groups,
    /// pairs and swaps, carried out as the simulator does: new nodes of the pool in
    /// the zone, every replica moved first fit decreasing into `Merge::bins`) never change a
    /// partition's member count or its set of zones (each member stays in its zone),
    /// never put two members on one node, never exceed a node's capacity and never
    /// cost more per hour than the nodes replaced.
    #[test]
    // The case in properties.proptest-regressions is a group merge that the planner
    // packed into its nodes' room within the fill limits while the carrying out packed
    // into their whole capacity, where first fit decreasing failed (larger bins are no
    // guarantee for it). Both now pack into `Merge::bins`.
    fn replacements_keep_every_partition_in_its_zones(
        nodes in prop::collection::vec((0usize..3, 0usize..3), 3..14),
        parts in prop::collection::vec((100u64..4000, 512u64..9000), 1..24),
        fill in 0.5f64..0.95,
        max_merges in 1usize..6,
    ) {
        use stator_planning::consolidator::pack_first_fit;
        use stator_planning::{plan_replacements, MergeConfig};
        let pools = shaped_pools();
        let mut view = ClusterView::from_parts(
            nodes.iter().enumerate().map(|(i, &(z, p))| {
                let spec = &pools[p];
                Node::new(i as u64 + 1, ZONES[z], &spec.name, spec.capacity, spec.price_per_hour)
            }).collect(),
            vec![],
        );
        for (i, &(cpu, mem)) in parts.iter().enumerate() {
            let req = PlacementRequest::long_running("s", i as u32, 3, Resources::new(cpu, mem));
            if let Ok(placed) = place_partition(&view, &req, Policy::Cost) {
                for n in placed {
                    view.add_replica(Replica { service: "s".into(), partition: i as u32, node: n, resources: req.resources, kind: WorkloadKind::LongRunning, expected_end_s: None, state_bytes: 1 });
                }
            }
        }
        let zones_of = |view: &ClusterView| -> BTreeMap<(String, u32), Vec<String>> {
            view.partition_keys().into_iter().map(|(s, p)| {
                let mut z: Vec<String> = view.partition_nodes(&s, p).iter().map(|&n| view.zone_of(n).unwrap().to_string()).collect();
                z.sort();
                ((s, p), z)
            }).collect()
        };
        let before = zones_of(&view);
        let shape_before = shape(&view);
        let mut counts: BTreeMap<String, u32> = BTreeMap::new();
        for n in view.nodes() {
            *counts.entry(n.pool.clone()).or_insert(0) += 1;
        }
        let cfg = MergeConfig { max_merges, groups: true, pairs: true, group_cpu_fill: fill, swaps: true };
        let merges = plan_replacements(&view, &pools, &counts, &[], &cfg);
        prop_assert!(merges.len() <= max_merges);
        let mut next_id = 1000;
        let mut seen = BTreeSet::new();
        for m in merges {
            let spec = pools.iter().find(|p| p.name == m.pool).unwrap();
            let old_price: f64 = m.nodes.iter().map(|&n| view.node(n).unwrap().price_per_hour).sum();
            prop_assert!(spec.price_per_hour * m.new_nodes as f64 <= old_price + 1e-9, "{m:?} costs more");
            prop_assert!(m.new_nodes as usize <= m.nodes.len());
            for &n in &m.nodes {
                prop_assert!(seen.insert(n), "node {n} in two replacements");
                prop_assert_eq!(view.zone_of(n).unwrap(), m.zone.as_str());
            }
            let new: Vec<u64> = (0..m.new_nodes).map(|_| { next_id += 1; next_id }).collect();
            for &id in &new {
                view.add_node(Node::new(id, &m.zone, &spec.name, spec.capacity, spec.price_per_hour));
            }
            let slots: Vec<usize> = m.nodes.iter().flat_map(|&n| view.replicas_on(n).to_vec()).collect();
            let items: Vec<(Resources, (String, u32))> = slots.iter().map(|&s| {
                let r = view.replica(s).unwrap();
                (r.resources, (r.service.clone(), r.partition))
            }).collect();
            let borrowed: Vec<(Resources, (&str, u32))> = items.iter().map(|(r, (s, p))| (*r, (s.as_str(), *p))).collect();
            let free: Vec<Resources> = new.iter().map(|&id| view.free(id).unwrap()).collect();
            let bins = m.bins(&free);
            let at = pack_first_fit(&borrowed, &bins);
            prop_assert!(at.is_some(), "{m:?}: the planned nodes do not hold the replicas");
            for (&slot, b) in slots.iter().zip(at.unwrap()) {
                view.move_replica(slot, new[b]);
            }
            for &n in &m.nodes {
                prop_assert!(view.replicas_on(n).is_empty());
                view.remove_node(n);
            }
        }
        check_capacity(&view);
        prop_assert_eq!(zones_of(&view), before);
        let shape_after = shape(&view);
        check_no_worse(&shape_before, &shape_after);
    }
}

/// One step of the GPU property test: place a request of `count` devices with `each`
/// milli-GPUs on each, or remove the replica at an index of the ones placed, or move
/// one to another node.
#[derive(Debug, Clone)]
enum GpuStep {
    Place { count: u32, each: u64, cost: bool },
    Remove(usize),
    Move(usize, usize),
}

fn gpu_step() -> impl Strategy<Value = GpuStep> {
    prop_oneof![
        3 => (1u64..1000, any::<bool>()).prop_map(|(each, cost)| GpuStep::Place { count: 1, each, cost }),
        2 => (1u32..5, any::<bool>()).prop_map(|(count, cost)| GpuStep::Place { count, each: 1000, cost }),
        2 => any::<usize>().prop_map(GpuStep::Remove),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| GpuStep::Move(a, b)),
    ]
}

/// Every device's share given out, recomputed from the replicas and the devices each
/// holds, is at most one GPU and equals what the view says is used; every replica
/// holds as many devices as it asked for.
fn check_gpu_devices(view: &ClusterView) -> Result<(), TestCaseError> {
    let mut used: BTreeMap<(u64, usize), u64> = BTreeMap::new();
    for (slot, r) in view.replicas() {
        let devices = view.replica_gpus(slot);
        match r.resources.gpu_shape() {
            None => prop_assert!(devices.is_empty()),
            Some((n, each)) => {
                prop_assert_eq!(
                    devices.len(),
                    n as usize,
                    "replica {} holds {:?}",
                    slot,
                    devices
                );
                for d in devices {
                    *used.entry((r.node, d)).or_insert(0) += each;
                }
            }
        }
    }
    for n in view.nodes() {
        let free = view.gpus(n.id).unwrap().free_per_device();
        for (d, f) in free.iter().enumerate() {
            let u = used.get(&(n.id, d)).copied().unwrap_or(0);
            prop_assert!(
                u <= 1000,
                "node {} device {} over-committed: {}",
                n.id,
                d,
                u
            );
            prop_assert_eq!(u + f, 1000, "node {} device {}", n.id, d);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Random GPU placements (by either policy), removals and moves never over-commit
    /// a device, and removals and moves free exactly the devices taken.
    #[test]
    fn gpu_devices_are_never_over_committed(
        gpus in prop::collection::vec(prop::sample::select(vec![1u64, 2, 4, 8]), 1..6),
        steps in prop::collection::vec(gpu_step(), 1..60),
    ) {
        let nodes: Vec<Node> = gpus
            .iter()
            .enumerate()
            .map(|(i, &g)| Node::new(i as u64 + 1, ZONES[i % 4], "g", Resources::with_gpu(64000, 262144, g * 1000), 1.0))
            .collect();
        let ids: Vec<u64> = nodes.iter().map(|n| n.id).collect();
        let mut view = ClusterView::from_parts(nodes, vec![]);
        let mut placed = Vec::new();
        for (i, step) in steps.into_iter().enumerate() {
            match step {
                GpuStep::Place { count, each, cost } => {
                    let policy = if cost { Policy::Cost } else { Policy::Spread };
                    let req = PlacementRequest::job(&format!("t{i}"), Resources::with_gpus(100, 128, count, each), 0, 600);
                    if let Ok(nodes) = place_partition(&view, &req, policy) {
                        prop_assert!(view.fits(nodes[0], &req.resources));
                        placed.push(view.add_replica(Replica {
                            service: req.service.clone(), partition: 0, node: nodes[0],
                            resources: req.resources, kind: req.kind,
                            expected_end_s: req.expected_end_s(), state_bytes: 0,
                        }));
                    } else {
                        // Refused only when no node's devices hold it.
                        prop_assert!(ids.iter().all(|&n| !view.fits(n, &req.resources)));
                    }
                }
                GpuStep::Remove(k) if !placed.is_empty() => {
                    let slot = placed.swap_remove(k % placed.len());
                    view.remove_replica(slot);
                }
                GpuStep::Move(k, to) if !placed.is_empty() => {
                    let slot = placed[k % placed.len()];
                    let to = ids[to % ids.len()];
                    let r = view.replica(slot).unwrap().clone();
                    if r.node != to && view.fits(to, &r.resources) {
                        view.move_replica(slot, to);
                    }
                }
                _ => {}
            }
            check_gpu_devices(&view)?;
        }
        // Everything removed: every device whole again.
        for slot in placed {
            view.remove_replica(slot);
        }
        for &n in &ids {
            prop_assert!(view.gpus(n).unwrap().free_per_device().iter().all(|&f| f == 1000));
        }
    }
}
