//! Placements per second at 5,000 nodes (target >= 10,000/s).
//!
//! cargo bench -p stator-planning --bench placement

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use stator_planning::{
    place_partition, ClusterView, Node, PlacementRequest, Policy, Replica, Resources, WorkloadKind,
};

fn cluster(nodes: u64) -> ClusterView {
    let zones = ["a", "b", "c"];
    let mut view = ClusterView::new();
    for i in 0..nodes {
        view.add_node(Node::new(
            i + 1,
            zones[(i % 3) as usize],
            "p",
            Resources::new(16_000, 65_536),
            0.768,
        ));
    }
    // Half full, unevenly.
    for i in 0..nodes {
        let cpu = 1_000 * (i % 12);
        if cpu > 0 {
            view.add_replica(Replica {
                service: "bg".into(),
                partition: i as u32,
                node: i + 1,
                resources: Resources::new(cpu, cpu * 2),
                kind: WorkloadKind::LongRunning,
                expected_end_s: None,
                state_bytes: 0,
            });
        }
    }
    view
}

fn bench(c: &mut Criterion) {
    let view = cluster(5_000);
    let mut g = c.benchmark_group("place_5000_nodes");
    g.throughput(Throughput::Elements(1));
    for (name, policy) in [("cost", Policy::Cost), ("spread", Policy::Spread)] {
        let mut p = 0u32;
        g.bench_function(format!("{name}_1_replica"), |b| {
            b.iter(|| {
                p = p.wrapping_add(1);
                let req = PlacementRequest::long_running("svc", p, 1, Resources::new(500, 1024));
                place_partition(&view, &req, policy).unwrap()
            })
        });
        g.bench_function(format!("{name}_3_replicas_zone_spread"), |b| {
            b.iter(|| {
                p = p.wrapping_add(1);
                let req = PlacementRequest::long_running("svc", p, 3, Resources::new(500, 1024));
                place_partition(&view, &req, policy).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
