//! Quiet idle groups (see `stator_replication::quiesce`): an idle group stops its timers,
//! wakes on a request, and still elects a new leader when its leader's node is lost.
//! Every wait is bounded by the harness's generous `WAIT`; nothing asserts a timing.

mod common;

use stator_replication::testing::{
    decode_reply, encode_op, InProcessCluster, RegisterFactory, RegisterOp, TEST_SECRET, WAIT,
};
use stator_replication::{
    ClientReply, ClientRequest, GroupId, GroupOptions, ReplicaClient, RequestKind,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

const GROUP: GroupId = GroupId(7 << 16);

async fn idle_group() -> (InProcessCluster, Vec<String>) {
    let cluster = InProcessCluster::start(3, Arc::new(RegisterFactory)).await;
    cluster
        .create_group(GROUP, &[1, 2, 3], GroupOptions::default())
        .await;
    cluster.leader(GROUP).await;
    let members = cluster.members(&[1, 2, 3]).into_values().collect();
    (cluster, members)
}

/// Waits until every live replica of the group is quiet.
async fn all_quiet(cluster: &InProcessCluster) {
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
    let cluster = InProcessCluster::start(3, Arc::new(RegisterFactory)).await;
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
    let mut cluster = InProcessCluster::start(3, Arc::new(RegisterFactory)).await;
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
    let cluster = InProcessCluster::start(3, Arc::new(RegisterFactory)).await;
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

/// Terms and leaders of the group on every live host: (node, term, leader).
fn terms(cluster: &InProcessCluster) -> Vec<(u64, u64, Option<u64>)> {
    cluster
        .hosts
        .iter()
        .filter_map(|(id, h)| h.status(GROUP).map(|s| (*id, s.term, s.leader)))
        .collect()
}

/// The cluster-mode bug of issue 10: a read-only load on a quiet group must not start
/// elections. Reads wake the leader only (its followers stay quiet, since no entry
/// reaches them), so nothing but the leader's heartbeats and the nodes' liveness pings
/// keep the followers from running; many election timeouts of reads must leave the term
/// and the leader as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_load_on_a_quiet_group_starts_no_election() {
    let (cluster, members) = idle_group().await;
    let client = ReplicaClient::new(TEST_SECRET);
    set(&client, &members, "k", "v").await;
    all_quiet(&cluster).await;
    let leader = cluster.leader(GROUP).await;
    let before = terms(&cluster);

    // Reads only, straight at the leader's host, from several tasks at once, for many
    // election timeouts (openraft's leader lease plus an election timeout is ~250 ms).
    let reads_for = Duration::from_secs(3);
    let host = cluster.hosts[&leader].clone();
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let host = host.clone();
            tokio::spawn(async move {
                let until = Instant::now() + reads_for;
                let mut served = 0u64;
                while Instant::now() < until {
                    let reply = host
                        .serve_client(
                            GROUP,
                            ClientRequest {
                                client_id: 0,
                                seq: 0,
                                kind: RequestKind::Read,
                                payload: encode_op(&RegisterOp::Get("k".into())),
                            },
                        )
                        .await;
                    // A read-index round may time out on a loaded machine (the read
                    // fails and the client retries); only an answer must be right.
                    if let ClientReply::Ok(bytes) = reply {
                        assert_eq!(decode_reply(&bytes).as_deref(), Some("v"));
                        served += 1;
                    }
                    tokio::task::yield_now().await;
                }
                served
            })
        })
        .collect();
    let mut served = 0;
    for reader in readers {
        served += reader.await.expect("reader panicked");
    }
    assert!(served > 0);
    assert_eq!(
        terms(&cluster),
        before,
        "reads alone changed a term or a leader ({served} reads served)"
    );
    assert_eq!(cluster.leader(GROUP).await, leader);
}

/// The same read-only load while the successor's view of the leader is stale: nothing the
/// leader sends reaches it (its appends, heartbeats and ping answers are lost, as when
/// that follower's process is starved), so its liveness pings declare the leader's node
/// lost and it prepares to run. The leader and the other follower still hear each other,
/// so the pre-vote refuses and no election starts: a candidate would depose the live
/// leader even by losing (openraft 0.9 has no pre-vote of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_with_a_stale_view_does_not_depose_a_live_leader() {
    let (cluster, members) = idle_group().await;
    let client = ReplicaClient::new(TEST_SECRET);
    set(&client, &members, "k", "v").await;
    all_quiet(&cluster).await;
    let leader = cluster.leader(GROUP).await;
    let successor = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let before = terms(&cluster);
    cluster
        .faults
        .cut_one_way(&cluster.addrs[&leader], &cluster.addrs[&successor]);

    let host = cluster.hosts[&leader].clone();
    let until = Instant::now() + Duration::from_secs(3);
    let mut served = 0u64;
    while Instant::now() < until {
        let reply = host
            .serve_client(
                GROUP,
                ClientRequest {
                    client_id: 0,
                    seq: 0,
                    kind: RequestKind::Read,
                    payload: encode_op(&RegisterOp::Get("k".into())),
                },
            )
            .await;
        if let ClientReply::Ok(bytes) = reply {
            assert_eq!(decode_reply(&bytes).as_deref(), Some("v"));
            served += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(
        terms(&cluster),
        before,
        "a follower that lost sight of a live leader started an election ({served} reads served)"
    );
    cluster.faults.heal();
}
