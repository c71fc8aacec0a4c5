//! Quiet idle groups (see `stator_replication::quiesce`): an idle group stops its timers,
//! wakes on a request, and still elects a new leader when its leader's node is lost.
//! Every wait is bounded by the harness's generous `WAIT`; nothing asserts a timing.

mod common;

use stator_replication::testing::{Cluster, RegisterFactory, TEST_SECRET, WAIT};
use stator_replication::{GroupId, GroupOptions, ReplicaClient};
use std::sync::Arc;
use std::time::{Duration, Instant};

const GROUP: GroupId = GroupId(7 << 16);

async fn idle_group() -> (Cluster, Vec<String>) {
    let cluster = Cluster::start(3, Arc::new(RegisterFactory)).await;
    cluster
        .create_group(GROUP, &[1, 2, 3], GroupOptions::default())
        .await;
    cluster.leader(GROUP).await;
    let members = cluster.members(&[1, 2, 3]).into_values().collect();
    (cluster, members)
}

/// Waits until every live replica of the group is quiet.
async fn all_quiet(cluster: &Cluster) {
    let deadline = Instant::now() + WAIT;
    loop {
        let statuses: Vec<_> = cluster
            .hosts
            .values()
            .filter_map(|h| h.status(GROUP))
            .collect();
        if statuses.iter().all(|s| s.quiet) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the idle group did not go quiet within {WAIT:?}: {:?}",
            statuses
                .iter()
                .map(|s| (s.role, s.quiet))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn set(client: &ReplicaClient, members: &[String], key: &str, value: &str) {
    common::set_register(client, GROUP, members, key, value, WAIT).await
}

async fn get(client: &ReplicaClient, members: &[String], key: &str) -> Option<String> {
    common::get_register(client, GROUP, members, key, WAIT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_group_goes_quiet_and_wakes_on_a_request() {
    let (cluster, members) = idle_group().await;
    let client = ReplicaClient::new(TEST_SECRET);
    set(&client, &members, "k", "1").await;
    all_quiet(&cluster).await;

    // A read wakes the leader; the write after it is served and read back.
    assert_eq!(get(&client, &members, "k").await.as_deref(), Some("1"));
    set(&client, &members, "k", "2").await;
    assert_eq!(get(&client, &members, "k").await.as_deref(), Some("2"));
    let leader = cluster.leader(GROUP).await;
    assert!(
        !cluster.hosts[&leader].status(GROUP).unwrap().quiet,
        "a leader serving requests is awake"
    );

    // Idle again: quiet again, and the state agrees everywhere.
    all_quiet(&cluster).await;
    cluster.converged_state(GROUP).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_quiet_groups_leader_node_elects_a_new_leader() {
    let (mut cluster, members) = idle_group().await;
    let client = ReplicaClient::new(TEST_SECRET);
    set(&client, &members, "k", "before").await;
    all_quiet(&cluster).await;

    let old = cluster.leader(GROUP).await;
    cluster.kill(old).await;
    let new = cluster.leader(GROUP).await;
    assert_ne!(new, old, "a dead host cannot lead");
    assert_eq!(
        get(&client, &members, "k").await.as_deref(),
        Some("before"),
        "the acknowledged write survives"
    );
    set(&client, &members, "k", "after").await;
    assert_eq!(get(&client, &members, "k").await.as_deref(), Some("after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_groups_leader_cut_off_is_replaced() {
    // No connection closes here: only the missing liveness pings tell the followers.
    let (cluster, members) = idle_group().await;
    let client = ReplicaClient::new(TEST_SECRET);
    set(&client, &members, "k", "before").await;
    all_quiet(&cluster).await;

    let old = cluster.leader(GROUP).await;
    cluster.isolate(old);
    let deadline = Instant::now() + WAIT;
    let new = loop {
        let new = cluster.leader(GROUP).await;
        if new != old {
            break new;
        }
        assert!(
            Instant::now() < deadline,
            "no new leader while {old} is cut off"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let others: Vec<String> = cluster
        .members(&[1, 2, 3])
        .into_iter()
        .filter(|(id, _)| *id != old)
        .map(|(_, addr)| addr)
        .collect();
    assert_eq!(get(&client, &others, "k").await.as_deref(), Some("before"));
    set(&client, &others, "k", "after").await;
    cluster.faults.heal();
    assert_eq!(get(&client, &members, "k").await.as_deref(), Some("after"));
    assert!(new != old);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_with_quiescence_off_stays_awake() {
    let cluster = Cluster::start(3, Arc::new(RegisterFactory)).await;
    let options = GroupOptions {
        quiesce: false,
        ..GroupOptions::default()
    };
    cluster.create_group(GROUP, &[1, 2, 3], options).await;
    cluster.leader(GROUP).await;
    tokio::time::sleep(stator_replication::quiesce::QUIET_AFTER * 2).await;
    for host in cluster.hosts.values() {
        assert!(!host.status(GROUP).unwrap().quiet);
    }
}

/// A group formed with `GroupOptions::forming`: the followers' timers stay off, so the
/// member that bootstraps is its one candidate; the group still goes quiet, and still
/// elects a new leader when that first leader's node dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forming_group_elects_its_bootstrapping_member_and_survives_its_loss() {
    let mut cluster = Cluster::start(3, Arc::new(RegisterFactory)).await;
    let options = GroupOptions {
        forming: true,
        ..GroupOptions::default()
    };
    for id in [1, 2, 3] {
        cluster.open_replica(id, GROUP, options).await;
    }
    for id in [2, 3] {
        let status = cluster.hosts[&id].status(GROUP).unwrap();
        assert!(status.quiet, "a forming replica starts with its timers off");
    }
    cluster.hosts[&1]
        .bootstrap(GROUP, &cluster.members(&[1, 2, 3]))
        .await
        .unwrap();
    assert_eq!(
        cluster.leader(GROUP).await,
        1,
        "only the bootstrapping member runs"
    );
    let members: Vec<String> = cluster.members(&[1, 2, 3]).into_values().collect();
    let client = ReplicaClient::new(TEST_SECRET);
    set(&client, &members, "k", "formed").await;
    all_quiet(&cluster).await;

    cluster.kill(1).await;
    let new = cluster.leader(GROUP).await;
    assert_ne!(new, 1, "a dead host cannot lead");
    assert_eq!(get(&client, &members, "k").await.as_deref(), Some("formed"));
}

/// A forming group whose designated member never bootstraps it (it died first) is formed
/// by whichever member bootstraps it instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forming_group_is_formed_by_a_fallback_member() {
    let cluster = Cluster::start(3, Arc::new(RegisterFactory)).await;
    let options = GroupOptions {
        forming: true,
        ..GroupOptions::default()
    };
    for id in [1, 2, 3] {
        cluster.open_replica(id, GROUP, options).await;
    }
    cluster.hosts[&2]
        .bootstrap(GROUP, &cluster.members(&[1, 2, 3]))
        .await
        .unwrap();
    assert_eq!(cluster.leader(GROUP).await, 2);
}
