//! Property test: random fault schedules against 3- and 5-replica groups under a
//! concurrent register workload. Every history must be linearizable and no acknowledged
//! write may be lost. Raise `PROPTEST_CASES` for a longer soak.

mod common;

use common::{assert_history_ok, spawn_workload, Members};
use proptest::prelude::*;
use stator_check::Recorder;
use stator_replication::testing::{InProcessCluster, RegisterFactory};
use stator_replication::{GroupId, GroupOptions, NodeId};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

const GROUP: GroupId = GroupId(7 << 16);

#[derive(Debug, Clone)]
enum Fault {
    /// SIGKILL-like crash of the leader, then replacement by a fresh host.
    KillLeader,
    /// Crash of a follower, then replacement.
    KillFollower,
    /// Cut every link of the leader for a while.
    IsolateLeader(u64),
    /// Cut one link between two members for a while.
    CutLink(usize, usize, u64),
    /// Lose a share of all messages for a while.
    Drop(f64, u64),
    /// Delay every message for a while.
    Delay(u64, u64),
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        Just(Fault::KillLeader),
        Just(Fault::KillFollower),
        (200u64..800).prop_map(Fault::IsolateLeader),
        (0usize..5, 0usize..5, 200u64..800).prop_map(|(a, b, ms)| Fault::CutLink(a, b, ms)),
        (0.05f64..0.3, 200u64..800).prop_map(|(p, ms)| Fault::Drop(p, ms)),
        (1u64..20, 200u64..600).prop_map(|(d, ms)| Fault::Delay(d, ms)),
    ]
}

async fn replace(cluster: &mut InProcessCluster, dead: NodeId, members: &Members) {
    cluster.kill(dead).await;
    let newcomer = cluster.add_host().await;
    let desired: Vec<NodeId> = cluster.hosts.keys().copied().collect();
    members
        .write()
        .unwrap()
        .push(cluster.addrs[&newcomer].clone());
    cluster
        .reconcile(GROUP, &desired, GroupOptions::default())
        .await;
}

async fn run_schedule(replicas: usize, faults: Vec<Fault>) {
    let mut cluster = InProcessCluster::start(replicas, Arc::new(RegisterFactory)).await;
    let ids: Vec<NodeId> = cluster.hosts.keys().copied().collect();
    cluster
        .create_group(GROUP, &ids, GroupOptions::default())
        .await;
    cluster.leader(GROUP).await;
    let members: Members = Arc::new(RwLock::new(cluster.members(&ids).into_values().collect()));
    let recorder = Recorder::new();
    let stop = Arc::new(AtomicBool::new(false));
    let clients = spawn_workload(GROUP, members.clone(), 3, recorder.clone(), stop.clone());
    for fault in faults {
        let live: Vec<NodeId> = cluster.hosts.keys().copied().collect();
        match fault {
            Fault::KillLeader => {
                let leader = cluster.leader(GROUP).await;
                replace(&mut cluster, leader, &members).await;
            }
            Fault::KillFollower => {
                let leader = cluster.leader(GROUP).await;
                let follower = *live.iter().find(|id| **id != leader).unwrap();
                replace(&mut cluster, follower, &members).await;
            }
            Fault::IsolateLeader(ms) => {
                let leader = cluster.leader(GROUP).await;
                cluster.isolate(leader);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            Fault::CutLink(a, b, ms) => {
                let (a, b) = (live[a % live.len()], live[b % live.len()]);
                cluster.faults.cut(&cluster.addrs[&a], &cluster.addrs[&b]);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            Fault::Drop(p, ms) => {
                cluster.faults.set_drop_probability(p);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            Fault::Delay(d, ms) => {
                cluster.faults.set_delay(Duration::from_millis(d));
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
        }
        cluster.faults.heal();
        cluster.faults.set_drop_probability(0.0);
        cluster.faults.set_delay(Duration::ZERO);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert!(
        assert_history_ok(&recorder, GROUP, &members).await > 0,
        "no operation succeeded"
    );
    cluster.converged_state(GROUP).await;
}

/// Schedules per replica count: 3 by default (CI), `PROPTEST_CASES` for a longer soak.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 0, ..ProptestConfig::default() })]

    #[test]
    fn three_replicas_stay_linearizable(faults in proptest::collection::vec(fault(), 2..5)) {
        runtime().block_on(run_schedule(3, faults));
    }

    #[test]
    fn five_replicas_stay_linearizable(faults in proptest::collection::vec(fault(), 2..5)) {
        runtime().block_on(run_schedule(5, faults));
    }
}
