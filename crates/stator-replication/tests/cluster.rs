//! Harness scenarios: a real 3- or 5-host cluster on loopback, faults injected, every
//! history checked for linearizability and lost acknowledged writes.

mod common;

use common::{assert_history_ok, set_register, spawn_workload, Members};
use stator_check::Recorder;
use stator_replication::testing::{
    decode_reply, encode_op, InProcessCluster, RegisterFactory, RegisterOp, TEST_SECRET,
};
use stator_replication::{
    ClientReply, ClientRequest, GroupId, GroupOptions, MembershipStep, ReplicaClient, ReplicaRole,
    RequestKind, TransferOutcome,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

const GROUP: GroupId = GroupId(1 << 16);

async fn three_hosts() -> (InProcessCluster, Members) {
    let cluster = InProcessCluster::start(3, Arc::new(RegisterFactory)).await;
    cluster
        .create_group(GROUP, &[1, 2, 3], GroupOptions::default())
        .await;
    cluster.leader(GROUP).await;
    let members = Arc::new(RwLock::new(
        cluster.members(&[1, 2, 3]).into_values().collect(),
    ));
    (cluster, members)
}

async fn with_load<F, Fut>(members: &Members, f: F) -> Recorder
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let recorder = Recorder::new();
    let stop = Arc::new(AtomicBool::new(false));
    let clients = spawn_workload(GROUP, members.clone(), 4, recorder.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    f().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        total += c.await.unwrap();
    }
    assert!(total > 0, "clients ran no operation");
    recorder
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_elects_a_new_leader_and_loses_nothing() {
    let (mut cluster, members) = three_hosts().await;
    let old = cluster.leader(GROUP).await;
    let recorder = with_load(&members, || async {
        cluster.kill(old).await;
        let new = cluster.leader(GROUP).await;
        assert_ne!(new, old, "a dead host cannot lead");
    })
    .await;
    assert!(assert_history_ok(&recorder, GROUP, &members).await > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_kill_keeps_the_leader_serving() {
    let (mut cluster, members) = three_hosts().await;
    let leader = cluster.leader(GROUP).await;
    let follower = *cluster.hosts.keys().find(|id| **id != leader).unwrap();
    let recorder = with_load(&members, || async {
        cluster.kill(follower).await;
    })
    .await;
    assert_eq!(
        cluster.leader(GROUP).await,
        leader,
        "losing a follower needs no election"
    );
    assert!(assert_history_ok(&recorder, GROUP, &members).await > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_is_replaced_and_rejoins_after_heal() {
    let (cluster, members) = three_hosts().await;
    let old = cluster.leader(GROUP).await;
    let recorder = with_load(&members, || async {
        cluster.isolate(old);
        // The majority side elects someone else while the old leader is cut off.
        let deadline = std::time::Instant::now() + stator_replication::testing::WAIT;
        loop {
            let others: Vec<_> = cluster.hosts.iter().filter(|(id, _)| **id != old).collect();
            if others
                .iter()
                .any(|(_, h)| h.status(GROUP).map(|s| s.role) == Some(ReplicaRole::Leader))
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "majority elected no leader"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.faults.heal();
    })
    .await;
    assert!(assert_history_ok(&recorder, GROUP, &members).await > 0);
    cluster.converged_state(GROUP).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_change_under_load_replaces_the_leader_without_loss() {
    let (mut cluster, members) = three_hosts().await;
    let old_leader = cluster.leader(GROUP).await;
    let newcomer = cluster.add_host().await;
    let desired: Vec<_> = cluster
        .hosts
        .keys()
        .copied()
        .filter(|id| *id != old_leader)
        .collect();
    members
        .write()
        .unwrap()
        .push(cluster.addrs[&newcomer].clone());
    let recorder = with_load(&members, || async {
        cluster
            .reconcile(GROUP, &desired, GroupOptions::default())
            .await;
    })
    .await;
    let status = cluster.hosts[&newcomer].status(GROUP).unwrap();
    let mut voters = status.voters.clone();
    voters.sort();
    assert_eq!(
        voters, desired,
        "the newcomer is a voter and the old leader is gone"
    );
    assert_ne!(cluster.leader(GROUP).await, old_leader);
    assert!(assert_history_ok(&recorder, GROUP, &members).await > 0);
    // The removed replica can go; the rest agree.
    cluster.hosts[&old_leader].remove_group(GROUP).await;
    cluster.converged_state(GROUP).await;
}

/// A leader move whose newcomer must catch up from a snapshot (the log behind it is
/// purged): snapshots are built while writes keep applying (the state machine's lock is
/// released while a snapshot is encoded) and streamed in chunks, and still nothing
/// acknowledged is lost and every history stays linearizable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_move_whose_newcomer_installs_a_snapshot_under_load_loses_nothing() {
    let options = GroupOptions {
        snapshot_every_entries: 200,
        ..Default::default()
    };
    let mut cluster = InProcessCluster::start(3, Arc::new(RegisterFactory)).await;
    cluster.create_group(GROUP, &[1, 2, 3], options).await;
    let members: Members = Arc::new(RwLock::new(
        cluster.members(&[1, 2, 3]).into_values().collect(),
    ));
    // Past the 1,000 entries openraft keeps behind a snapshot, so the log the newcomer
    // would need is gone and it must take a snapshot.
    let rpc = ReplicaClient::new(TEST_SECRET);
    let mut leader = None;
    let initial = members.read().unwrap().clone();
    for i in 0..1_500 {
        let op = encode_op(&RegisterOp::Set(
            format!("fill{}", i % 100),
            format!("v{i}"),
        ));
        rpc.execute(
            GROUP,
            &initial,
            &mut leader,
            RequestKind::Write,
            op,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    }
    let old_leader = cluster.leader(GROUP).await;
    let newcomer = cluster.add_host().await;
    let desired: Vec<_> = cluster
        .hosts
        .keys()
        .copied()
        .filter(|id| *id != old_leader)
        .collect();
    members
        .write()
        .unwrap()
        .push(cluster.addrs[&newcomer].clone());
    let recorder = with_load(&members, || async {
        cluster.reconcile(GROUP, &desired, options).await;
    })
    .await;
    assert_ne!(cluster.leader(GROUP).await, old_leader);
    let status = cluster.hosts[&newcomer].status(GROUP).unwrap();
    assert!(
        status.voters.contains(&newcomer),
        "the newcomer is a voter: {:?}",
        status.voters
    );
    assert!(assert_history_ok(&recorder, GROUP, &members).await > 0);
    cluster.hosts[&old_leader].remove_group(GROUP).await;
    cluster.converged_state(GROUP).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_is_applied_once() {
    let (cluster, _members) = three_hosts().await;
    let leader = cluster.leader(GROUP).await;
    let addr = cluster.addrs[&leader].clone();
    let rpc = ReplicaClient::new(TEST_SECRET);
    let seq = rpc.next_seq();
    let write = |value: &str| ClientRequest {
        client_id: rpc.client_id(),
        seq,
        kind: RequestKind::Write,
        payload: encode_op(&RegisterOp::Set("k".into(), value.into())),
    };
    let first = rpc
        .call(&addr, GROUP, write("first"), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(matches!(first, ClientReply::Ok(_)));
    // A retry with the same sequence number (even carrying other bytes) is answered from
    // the session table and changes nothing.
    let retry = rpc
        .call(&addr, GROUP, write("second"), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(retry, first);
    let read = ClientRequest {
        client_id: 0,
        seq: 0,
        kind: RequestKind::Read,
        payload: encode_op(&RegisterOp::Get("k".into())),
    };
    let value = rpc
        .call(&addr, GROUP, read, Duration::from_secs(5))
        .await
        .unwrap();
    let ClientReply::Ok(bytes) = value else {
        panic!("read failed: {value:?}")
    };
    assert_eq!(
        stator_replication::testing::decode_reply(&bytes).as_deref(),
        Some("first")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_answer_with_a_leader_hint() {
    let (cluster, _members) = three_hosts().await;
    let leader = cluster.leader(GROUP).await;
    let follower = *cluster.hosts.keys().find(|id| **id != leader).unwrap();
    // The majority that elected the leader may not include this follower yet: wait until
    // it has heard from the leader, which is what a hint is made of.
    let deadline = std::time::Instant::now() + stator_replication::testing::WAIT;
    while cluster.hosts[&follower].status(GROUP).unwrap().leader != Some(leader) {
        assert!(
            std::time::Instant::now() < deadline,
            "follower never heard from the leader"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rpc = ReplicaClient::new(TEST_SECRET);
    let req = ClientRequest {
        client_id: 0,
        seq: 0,
        kind: RequestKind::Write,
        payload: encode_op(&RegisterOp::Set("a".into(), "b".into())),
    };
    let reply = rpc
        .call(
            &cluster.addrs[&follower],
            GROUP,
            req,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(
        reply,
        ClientReply::NotLeader {
            leader_id: Some(leader),
            leader_addr: Some(cluster.addrs[&leader].clone())
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_bounds_the_log_and_a_new_member_catches_up_from_a_snapshot() {
    let options = GroupOptions {
        snapshot_every_entries: 200,
        ..Default::default()
    };
    let mut cluster = InProcessCluster::start(3, Arc::new(RegisterFactory)).await;
    cluster.create_group(GROUP, &[1, 2, 3], options).await;
    let members: Vec<String> = cluster.members(&[1, 2, 3]).into_values().collect();
    let rpc = ReplicaClient::new(TEST_SECRET);
    let mut leader = None;
    for i in 0..3_000 {
        let op = encode_op(&RegisterOp::Set(format!("key{}", i % 50), format!("v{i}")));
        rpc.execute(
            GROUP,
            &members,
            &mut leader,
            RequestKind::Write,
            op,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    }
    for host in cluster.hosts.values() {
        let s = host.status(GROUP).unwrap();
        assert!(
            s.log_entries < 1_500,
            "log not compacted: {} entries after 3000 writes",
            s.log_entries
        );
    }
    let newcomer = cluster.add_host().await;
    cluster
        .reconcile(GROUP, &[1, 2, 3, newcomer], options)
        .await;
    let state = cluster.converged_state(GROUP).await;
    assert!(!state.is_empty());
}

/// The log is also bounded by bytes: with the entry policy out of reach, a replica whose
/// applied writes since its last snapshot pass the byte floor (16 MiB here, the state
/// being small) is snapshotted by the host's sweep, on every member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_outgrows_the_byte_floor_is_snapshotted_without_the_entry_policy() {
    use stator_replication::state_machine::LOG_BYTES_BEFORE_SNAPSHOT_MIN;
    let options = GroupOptions {
        snapshot_every_entries: 1_000_000,
        ..Default::default()
    };
    let cluster = InProcessCluster::start(3, Arc::new(RegisterFactory)).await;
    cluster.create_group(GROUP, &[1, 2, 3], options).await;
    let members: Vec<String> = cluster.members(&[1, 2, 3]).into_values().collect();
    let rpc = ReplicaClient::new(TEST_SECRET);
    let value = "x".repeat(64 << 10);
    let writes = (LOG_BYTES_BEFORE_SNAPSHOT_MIN as usize / value.len()) * 5 / 4;
    for i in 0..writes {
        let key = format!("key{}", i % 8);
        set_register(&rpc, GROUP, &members, &key, &value, Duration::from_secs(10)).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for (id, host) in &cluster.hosts {
        let replica = host.replica(GROUP).unwrap();
        loop {
            let snapshot = replica.raft.metrics().borrow().snapshot;
            if snapshot.is_some() && replica.sm.log_bytes() < LOG_BYTES_BEFORE_SNAPSHOT_MIN {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "host {id}: no snapshot after {writes} writes of 64 KiB (snapshot {snapshot:?}, \
                 {} log bytes)",
                replica.sm.log_bytes()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn register_read(key: &str) -> ClientRequest {
    ClientRequest {
        client_id: 0,
        seq: 0,
        kind: RequestKind::Read,
        payload: encode_op(&RegisterOp::Get(key.into())),
    }
}

/// The leader lease: reads are served at the leader without a quorum round while it holds
/// one, and a leader cut off from its group stops serving them once the lease runs out,
/// even though it still believes it leads, so it never answers with a value its successor
/// has overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_leader_never_serves_a_stale_read() {
    let (cluster, _members) = three_hosts().await;
    let old = cluster.leader(GROUP).await;
    let rpc = ReplicaClient::new(TEST_SECRET);
    let all: Vec<String> = cluster.members(&[1, 2, 3]).into_values().collect();
    let mut leader = None;
    let set = |v: &str| encode_op(&RegisterOp::Set("k".into(), v.into()));
    rpc.execute(
        GROUP,
        &all,
        &mut leader,
        RequestKind::Write,
        set("old"),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let before = rpc
        .call(
            &cluster.addrs[&old],
            GROUP,
            register_read("k"),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let ClientReply::Ok(bytes) = before else {
        panic!("leader read failed: {before:?}")
    };
    assert_eq!(
        stator_replication::testing::decode_reply(&bytes).as_deref(),
        Some("old")
    );

    cluster.isolate(old);
    let others: Vec<String> = cluster
        .addrs
        .iter()
        .filter(|(id, _)| **id != old)
        .map(|(_, a)| a.clone())
        .collect();
    let mut new_leader = None;
    rpc.execute(
        GROUP,
        &others,
        &mut new_leader,
        RequestKind::Write,
        set("new"),
        Duration::from_secs(10),
    )
    .await
    .expect("the majority side elects a leader and takes the write");
    assert_ne!(new_leader.as_deref(), Some(cluster.addrs[&old].as_str()));

    // The old leader still thinks it leads (it has heard of no successor) but its lease
    // has expired: it must not answer "old".
    let stale = rpc
        .call(
            &cluster.addrs[&old],
            GROUP,
            register_read("k"),
            Duration::from_secs(2),
        )
        .await;
    if let Ok(ClientReply::Ok(bytes)) = stale {
        panic!(
            "cut-off leader served a read: {:?}",
            stator_replication::testing::decode_reply(&bytes)
        );
    }
    cluster.faults.heal();
}

/// Leadership transfer: the leader hands over to the voter it names while clients write
/// and read; the history stays linearizable and the named voter leads afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_to_the_named_voter_under_load() {
    let (cluster, members) = three_hosts().await;
    let old = cluster.leader(GROUP).await;
    let successor = *cluster.hosts.keys().find(|id| **id != old).unwrap();
    let recorder = with_load(&members, || async {
        // A leader refuses to vote during its first lease; give it time to be an old one.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let outcome = cluster.hosts[&old]
            .transfer_leadership(GROUP, successor)
            .await
            .unwrap();
        assert_eq!(outcome, TransferOutcome::Moved(successor));
        assert_eq!(cluster.leader(GROUP).await, successor);
    })
    .await;
    assert!(assert_history_ok(&recorder, GROUP, &members).await > 0);
    // Only a voter can take over.
    assert_eq!(
        cluster.hosts[&successor]
            .transfer_leadership(GROUP, 99)
            .await
            .unwrap(),
        TransferOutcome::NotAVoter
    );
}

/// A write that reaches the old leader while it hands over (held at its gate, or after)
/// is never proposed there: it is answered with the successor's address, and the
/// successor, elected or still running, takes it on the first try (it waits for the
/// election it was asked to run instead of answering that it knows no leader).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_a_hand_over_are_sent_to_the_successor_which_takes_them() {
    let (cluster, _members) = three_hosts().await;
    let old = cluster.leader(GROUP).await;
    let successor = *cluster.hosts.keys().find(|id| **id != old).unwrap();
    let (old_addr, successor_addr) = (
        cluster.addrs[&old].clone(),
        cluster.addrs[&successor].clone(),
    );
    // A leader refuses to vote during its first lease; give it time to be an old one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let done = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (done, old_addr, successor_addr) =
                (done.clone(), old_addr.clone(), successor_addr.clone());
            tokio::spawn(async move {
                let rpc = ReplicaClient::new(TEST_SECRET);
                let (mut acked, mut redirected) = (0, 0);
                // One more write once the transfer is over: the old leader refuses it.
                let mut last_round = false;
                while !last_round {
                    last_round = done.load(Ordering::Acquire);
                    let write = ClientRequest {
                        client_id: rpc.client_id(),
                        seq: rpc.next_seq(),
                        kind: RequestKind::Write,
                        payload: encode_op(&RegisterOp::Set(format!("w{w}"), acked.to_string())),
                    };
                    let first = rpc
                        .call(&old_addr, GROUP, write.clone(), Duration::from_secs(5))
                        .await
                        .unwrap();
                    match first {
                        ClientReply::Ok(_) => acked += 1,
                        ClientReply::NotLeader {
                            leader_id: Some(id),
                            leader_addr: Some(addr),
                        } if id == successor && addr == successor_addr => {
                            let second = rpc
                                .call(&addr, GROUP, write, Duration::from_secs(5))
                                .await
                                .unwrap();
                            assert!(
                                matches!(second, ClientReply::Ok(_)),
                                "the successor refused a redirected write: {second:?}"
                            );
                            redirected += 1;
                        }
                        other => panic!("a write during the hand-over got {other:?}"),
                    }
                }
                (acked, redirected)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let outcome = cluster.hosts[&old]
        .transfer_leadership(GROUP, successor)
        .await
        .unwrap();
    done.store(true, Ordering::Release);
    assert_eq!(outcome, TransferOutcome::Moved(successor));
    let mut redirected_total = 0;
    for writer in writers {
        let (_acked, redirected) = writer.await.unwrap();
        redirected_total += redirected;
    }
    assert!(
        redirected_total >= 4,
        "every writer's last write was redirected"
    );
    assert_eq!(cluster.leader(GROUP).await, successor);
    cluster.converged_state(GROUP).await;
}

/// Writes that wait at the leader at the same moment travel as one frame and become one
/// log entry, yet each is applied once, in order, with its own session and reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_entries_and_keep_their_own_replies() {
    const WRITES: u64 = 200;
    let (cluster, _members) = three_hosts().await;
    let leader = cluster.leader(GROUP).await;
    let addr = cluster.addrs[&leader].clone();
    let rpc = ReplicaClient::new(TEST_SECRET);
    let applied_before = cluster.hosts[&leader].status(GROUP).unwrap().applied_index;
    let write = |i: u64, value: &str| ClientRequest {
        client_id: 1_000 + 2 * i + 1,
        seq: 1,
        kind: RequestKind::Write,
        payload: encode_op(&RegisterOp::Set(format!("k{i}"), value.into())),
    };
    let calls = (0..WRITES).map(|i| {
        rpc.call(
            &addr,
            GROUP,
            write(i, &format!("v{i}")),
            Duration::from_secs(10),
        )
    });
    for reply in futures::future::join_all(calls).await {
        assert!(matches!(reply, Ok(ClientReply::Ok(_))), "{reply:?}");
    }
    let entries = cluster.hosts[&leader].status(GROUP).unwrap().applied_index - applied_before;
    assert!(
        entries < WRITES,
        "{WRITES} concurrent writes took {entries} log entries"
    );
    // Retries, also batched together, are answered from each write's own session.
    let retries =
        (0..WRITES).map(|i| rpc.call(&addr, GROUP, write(i, "again"), Duration::from_secs(10)));
    for reply in futures::future::join_all(retries).await {
        assert!(matches!(reply, Ok(ClientReply::Ok(_))), "{reply:?}");
    }
    for i in [0, WRITES / 2, WRITES - 1] {
        let reply = rpc
            .call(
                &addr,
                GROUP,
                register_read(&format!("k{i}")),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        let ClientReply::Ok(bytes) = reply else {
            panic!("read failed: {reply:?}")
        };
        assert_eq!(
            stator_replication::testing::decode_reply(&bytes),
            Some(format!("v{i}"))
        );
    }
}

/// `Host::serve_client_batch` answers every request of a batch in order: each read sees
/// exactly the writes before it in the batch, and writes apply in the order given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_served_in_order() {
    let (cluster, _members) = three_hosts().await;
    let leader = cluster.leader(GROUP).await;
    const ROUNDS: usize = 20;
    let mut requests = Vec::new();
    for i in 0..ROUNDS {
        for (kind, op) in [
            (
                RequestKind::Write,
                RegisterOp::Set("k".into(), format!("{i}a")),
            ),
            (
                RequestKind::Write,
                RegisterOp::Set("k".into(), format!("{i}b")),
            ),
            (RequestKind::Read, RegisterOp::Get("k".into())),
            (RequestKind::Read, RegisterOp::Get("k".into())),
        ] {
            requests.push(ClientRequest {
                client_id: 0,
                seq: 0,
                kind,
                payload: encode_op(&op),
            });
        }
    }
    let replies = cluster.hosts[&leader]
        .serve_client_batch(GROUP, requests)
        .await;
    assert_eq!(replies.len(), ROUNDS * 4);
    for (i, round) in replies.chunks(4).enumerate() {
        for read in &round[2..] {
            let ClientReply::Ok(bytes) = read else {
                panic!("round {i}: a read answered {read:?}");
            };
            assert_eq!(decode_reply(bytes), Some(format!("{i}b")), "round {i}");
        }
    }
}

/// The leader's host dies while the successor it would hand over to (the lowest id)
/// lags: the other follower holds writes the successor lacks, so the successor's fast
/// election fails. The other follower runs next and wins, with openraft's election
/// timers off on both followers: without that turn nobody would ever lead again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_successor_leaves_the_fast_election_to_the_next_follower() {
    let (mut cluster, _members) = three_hosts().await;
    let leader = cluster.leader(GROUP).await;
    let followers: Vec<_> = cluster
        .hosts
        .keys()
        .copied()
        .filter(|id| *id != leader)
        .collect();
    let (successor, next) = (followers[0], followers[1]);
    for id in &followers {
        let replica = cluster.hosts[id].replica(GROUP).unwrap();
        replica.raft.runtime_config().elect(false);
    }
    cluster
        .faults
        .cut(&cluster.addrs[&leader], &cluster.addrs[&successor]);
    for i in 0..5 {
        let reply = cluster.hosts[&leader]
            .serve_client(
                GROUP,
                ClientRequest {
                    client_id: 0,
                    seq: 0,
                    kind: RequestKind::Write,
                    payload: encode_op(&RegisterOp::Set("k".into(), format!("v{i}"))),
                },
            )
            .await;
        assert!(matches!(reply, ClientReply::Ok(_)), "{reply:?}");
    }
    cluster.kill(leader).await;
    cluster.faults.heal();
    assert_eq!(
        cluster.leader(GROUP).await,
        next,
        "only the follower holding every write can win"
    );
    let reply = cluster.hosts[&next]
        .serve_client(GROUP, register_read("k"))
        .await;
    let ClientReply::Ok(bytes) = reply else {
        panic!("read failed: {reply:?}")
    };
    assert_eq!(decode_reply(&bytes).as_deref(), Some("v4"));
}

/// `Host::leads_in_sync` (the agent's cheap check on every heartbeat) answers what a
/// membership step would: in sync for the current members, work to do for another set,
/// nothing on a follower. Retried when leadership moves meanwhile (a loaded machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cheap_in_sync_check_agrees_with_the_membership_step() {
    let (mut cluster, _members) = three_hosts().await;
    let current = cluster.members(&[1, 2, 3]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let leader = cluster.leader(GROUP).await;
        let host = &cluster.hosts[&leader];
        let cheap = host.leads_in_sync(GROUP, &current);
        match host.reconcile_membership(GROUP, &current).await.unwrap() {
            MembershipStep::NotLeader => {}
            step => {
                assert_eq!(step, MembershipStep::InSync);
                assert_eq!(cheap, Some(true));
                let follower = *cluster.hosts.keys().find(|id| **id != leader).unwrap();
                if cluster.hosts[&follower].status(GROUP).unwrap().role != ReplicaRole::Leader {
                    assert_eq!(
                        cluster.hosts[&follower].leads_in_sync(GROUP, &current),
                        None
                    );
                }
                break;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no stable leader");
    }
    let newcomer = cluster.add_host().await;
    let wanted = cluster.members(&[1, 2, 3, newcomer]);
    loop {
        let leader = cluster.leader(GROUP).await;
        let host = &cluster.hosts[&leader];
        if host.leads_in_sync(GROUP, &wanted) == Some(false) {
            // A fourth member wanted: the step has work to do (the learner is added).
            match host.reconcile_membership(GROUP, &wanted).await.unwrap() {
                MembershipStep::NotLeader => {}
                step => {
                    assert!(matches!(step, MembershipStep::AddedLearners(_)), "{step:?}");
                    break;
                }
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no stable leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // With the learner in the membership, the old set is no longer in sync either.
    loop {
        let leader = cluster.leader(GROUP).await;
        if cluster.hosts[&leader].leads_in_sync(GROUP, &current) == Some(false) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the learner never showed in the membership"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A write's commit index reaches the followers even when no later write carries it. Here
/// the leader's heartbeats and every election timer are off once the group has formed, so
/// only the replication stream's own commit message can carry it. (A new commit index
/// waits up to `COMMIT_PIGGYBACK_PASSES` runtime passes, or `COMMIT_PIGGYBACK_WAIT`,
/// vendor/openraft/src/replication/mod.rs, for the next AppendEntries to carry it, and
/// the leader holds it back until its own apply is answered: this test guards that it
/// still goes out alone when no write follows.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_apply_a_lone_write_without_waiting_for_a_heartbeat() {
    let cluster = InProcessCluster::start(3, Arc::new(RegisterFactory)).await;
    let options = GroupOptions {
        quiesce: false,
        ..GroupOptions::default()
    };
    cluster.create_group(GROUP, &[1, 2, 3], options).await;
    let leader = cluster.leader(GROUP).await;
    for host in cluster.hosts.values() {
        let replica = host.replica(GROUP).unwrap();
        let config = replica.raft.runtime_config();
        config.elect(false);
        config.heartbeat(false);
    }
    let rpc = ReplicaClient::new(TEST_SECRET);
    let write = ClientRequest {
        client_id: rpc.client_id(),
        seq: rpc.next_seq(),
        kind: RequestKind::Write,
        payload: encode_op(&RegisterOp::Set("k".into(), "v".into())),
    };
    let reply = rpc
        .call(
            &cluster.addrs[&leader],
            GROUP,
            write,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(matches!(reply, ClientReply::Ok(_)), "{reply:?}");
    let applied = cluster.hosts[&leader].status(GROUP).unwrap().applied_index;
    let deadline = std::time::Instant::now() + stator_replication::testing::WAIT;
    loop {
        let behind: Vec<_> = cluster
            .hosts
            .iter()
            .filter(|(_, h)| h.status(GROUP).map(|s| s.applied_index) < Some(applied))
            .map(|(id, _)| *id)
            .collect();
        if behind.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "followers {behind:?} never applied index {applied}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A learner fed through a slow catch-up bucket (1 MiB/s against ~2 MB of log) still
/// catches up and joins while a writer keeps writing, and the bytes it was fed went
/// through the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_learner_catches_up_and_joins_under_writes() {
    const PACED_BYTES_PER_SEC: u64 = 1 << 20;
    let (mut cluster, members) = three_hosts().await;
    let rpc = ReplicaClient::new(TEST_SECRET);
    let initial = members.read().unwrap().clone();
    let mut leader_hint = None;
    let value = "v".repeat(1_000);
    for i in 0..2_000 {
        let op = encode_op(&RegisterOp::Set(format!("fill{i}"), value.clone()));
        rpc.execute(
            GROUP,
            &initial,
            &mut leader_hint,
            RequestKind::Write,
            op,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    }
    for host in cluster.hosts.values() {
        host.set_learner_catchup_bytes_per_sec(PACED_BYTES_PER_SEC);
    }
    // The fill wrote faster than half the limit: pacing stays off for the group until
    // its measured write rate (two one-second windows) has forgotten the fill.
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let old_leader = cluster.leader(GROUP).await;
    let newcomer = cluster.add_host().await;
    cluster.hosts[&newcomer].set_learner_catchup_bytes_per_sec(PACED_BYTES_PER_SEC);
    let desired: Vec<_> = cluster
        .hosts
        .keys()
        .copied()
        .filter(|id| *id != old_leader)
        .collect();
    members
        .write()
        .unwrap()
        .push(cluster.addrs[&newcomer].clone());
    // A writer well below half the limit (one 1 KB write per 10 ms at most) all along.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, members, value) = (stop.clone(), members.clone(), value.clone());
        tokio::spawn(async move {
            let rpc = ReplicaClient::new(TEST_SECRET);
            let mut leader_hint = None;
            let mut acked = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let all = members.read().unwrap().clone();
                let op = encode_op(&RegisterOp::Set(format!("w{acked}"), value.clone()));
                if rpc
                    .execute(
                        GROUP,
                        &all,
                        &mut leader_hint,
                        RequestKind::Write,
                        op,
                        Duration::from_secs(10),
                    )
                    .await
                    .is_ok()
                {
                    acked += 1;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            acked
        })
    };
    cluster
        .reconcile(GROUP, &desired, GroupOptions::default())
        .await;
    stop.store(true, Ordering::Relaxed);
    assert!(writer.await.unwrap() > 0, "the writer wrote nothing");
    let (paced_bytes, waited_us) = cluster.hosts[&old_leader].learner_catchup_totals();
    assert!(
        paced_bytes > 0 && waited_us > 0,
        "the learner's catch-up went through the bucket: {paced_bytes} bytes, {waited_us} us waited"
    );
    let status = cluster.hosts[&newcomer].status(GROUP).unwrap();
    assert!(
        status.voters.contains(&newcomer),
        "the paced learner joined as a voter: {:?}",
        status.voters
    );
    cluster.hosts[&old_leader].remove_group(GROUP).await;
    cluster.converged_state(GROUP).await;
}
