//! Durable replicas (`durability = "disk"` / `"periodic"`): the log, vote and snapshot on
//! disk survive a host restart, a whole-group restart keeps every acknowledged write, a
//! corrupted record is refused at open and the replica is rebuilt from its peers, and a
//! full disk fails writes instead of acknowledging them.

mod common;

use stator_api::spec::Durability;
use stator_replication::disk_store::{quarantine, DiskStoreError};
use stator_replication::testing::{
    encode_op, InProcessCluster, RegisterFactory, RegisterOp, TEST_SECRET,
};
use stator_replication::{
    ClientError, GroupId, GroupOptions, HostError, ReplicaClient, RequestKind,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

const GROUP: GroupId = GroupId(1 << 16);
const DEADLINE: Duration = Duration::from_secs(20);
/// Writes of the whole-group restart: past openraft's 1,000 entries kept behind a
/// snapshot, so the restart must come back from a snapshot plus the log after it.
const WRITES: u64 = 1_300;

fn disk_options() -> GroupOptions {
    GroupOptions {
        durability: Durability::Disk,
        ..GroupOptions::default()
    }
}

fn addrs(cluster: &InProcessCluster) -> Vec<String> {
    cluster.addrs.values().cloned().collect()
}

async fn set(client: &ReplicaClient, members: &[String], key: &str, value: &str) {
    common::set_register(client, GROUP, members, key, value, DEADLINE).await
}

async fn get(client: &ReplicaClient, members: &[String], key: &str) -> Option<String> {
    common::get_register(client, GROUP, members, key, DEADLINE).await
}

async fn restart_all(cluster: &mut InProcessCluster, options: GroupOptions) {
    let ids: Vec<_> = cluster.addrs.keys().copied().collect();
    for id in &ids {
        cluster.kill(*id).await;
    }
    for id in &ids {
        cluster.restart(*id).await;
        cluster.open_replica(*id, GROUP, options).await;
    }
}

/// Three durable hosts in a fresh directory with a group that snapshots every 100
/// entries (so restarts come back from a snapshot plus a log tail), and its options.
async fn snapshotting_trio() -> (tempfile::TempDir, InProcessCluster, GroupOptions) {
    let dir = tempfile::tempdir().unwrap();
    let cluster =
        InProcessCluster::start_durable(3, Arc::new(RegisterFactory), dir.path().to_path_buf())
            .await;
    let options = GroupOptions {
        snapshot_every_entries: 100,
        ..disk_options()
    };
    cluster.create_group(GROUP, &[1, 2, 3], options).await;
    (dir, cluster, options)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_group_restart_keeps_every_acknowledged_write_and_compacts() {
    // A short snapshot policy: the restart must come back from snapshot + log tail.
    let (_dir, mut cluster, options) = snapshotting_trio().await;
    cluster.leader(GROUP).await;
    let client = ReplicaClient::new(TEST_SECRET);
    let members = addrs(&cluster);
    for i in 0..WRITES {
        set(&client, &members, &format!("k{i}"), &format!("v{i}")).await;
    }
    // openraft keeps up to 1,000 entries behind a snapshot for lagging followers. Snapshots
    // are built and the log purged in the background, which can trail the last write on a
    // loaded machine: wait for it (generously) rather than assume it is done.
    let waited = Instant::now();
    let before = loop {
        let status = cluster.hosts[&1].status(GROUP).unwrap();
        if status.log_entries < WRITES || waited.elapsed() > DEADLINE {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(before.disk_bytes > 0, "the store reports its size");
    assert!(
        before.log_entries < WRITES,
        "the log was compacted behind a snapshot: {} entries",
        before.log_entries
    );

    restart_all(&mut cluster, options).await;
    cluster.leader(GROUP).await;
    let client = ReplicaClient::new(TEST_SECRET);
    for i in 0..WRITES {
        assert_eq!(
            get(&client, &members, &format!("k{i}")).await.as_deref(),
            Some(format!("v{i}").as_str()),
            "acknowledged write k{i} lost across the restart"
        );
    }
    // And the group keeps working.
    set(&client, &members, "after", "restart").await;
    assert_eq!(
        get(&client, &members, "after").await.as_deref(),
        Some("restart")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_comes_back_as_itself_and_fetches_only_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster =
        InProcessCluster::start_durable(3, Arc::new(RegisterFactory), dir.path().to_path_buf())
            .await;
    let options = GroupOptions {
        durability: Durability::Periodic,
        fsync_interval_ms: 20,
        ..GroupOptions::default()
    };
    cluster.create_group(GROUP, &[1, 2, 3], options).await;
    let leader = cluster.leader(GROUP).await;
    let follower = *cluster.addrs.keys().find(|id| **id != leader).unwrap();
    let client = ReplicaClient::new(TEST_SECRET);
    let members = addrs(&cluster);
    for i in 0..50 {
        set(&client, &members, &format!("a{i}"), "1").await;
    }
    cluster.converged_state(GROUP).await;
    let applied_before = cluster.hosts[&follower]
        .status(GROUP)
        .unwrap()
        .applied_index;
    cluster.kill(follower).await;
    for i in 0..20 {
        set(&client, &members, &format!("b{i}"), "2").await;
    }
    cluster.restart(follower).await;
    cluster.open_replica(follower, GROUP, options).await;
    // Reopened from its own disk: it knows the group and the entries it had.
    let deadline = std::time::Instant::now() + DEADLINE;
    let status = loop {
        let status = cluster.hosts[&follower].status(GROUP).unwrap();
        if status.voters.len() == 3 || std::time::Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(status.voters.len(), 3, "the member reloaded its membership");
    assert!(
        status.log_entries as u64 >= applied_before,
        "the member reloaded its log ({} entries, had applied {applied_before})",
        status.log_entries
    );
    // It catches up the tail and the group converges with it as a voter.
    let state = cluster.converged_state(GROUP).await;
    assert!(!state.is_empty());
    assert_eq!(
        cluster.hosts[&follower].status(GROUP).unwrap().voters.len(),
        3
    );
}

/// A member whose disk holds a snapshot (the log behind it purged) and log entries after
/// it restarts from that snapshot, fetches the writes it missed, and holds every
/// acknowledged write: with it and one other member only, every value reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_restarted_from_its_snapshot_and_log_fetches_the_tail_and_holds_every_write() {
    let (_dir, mut cluster, options) = snapshotting_trio().await;
    let leader = cluster.leader(GROUP).await;
    let follower = *cluster.addrs.keys().find(|id| **id != leader).unwrap();
    let third = *cluster
        .addrs
        .keys()
        .find(|id| **id != leader && **id != follower)
        .unwrap();
    let client = ReplicaClient::new(TEST_SECRET);
    let members = addrs(&cluster);
    for i in 0..WRITES {
        set(&client, &members, &format!("k{i}"), "before").await;
    }
    cluster.converged_state(GROUP).await;
    let replica_dir = cluster.hosts[&follower].replica_dir(GROUP).unwrap();
    cluster.kill(follower).await;
    // The store holds a snapshot and only the log after (some of) it.
    assert!(
        snapshot_on_disk(&replica_dir),
        "the follower had a snapshot on disk"
    );
    for i in 0..50 {
        set(&client, &members, &format!("tail{i}"), "missed").await;
    }
    cluster.restart(follower).await;
    cluster.open_replica(follower, GROUP, options).await;
    // openraft publishes what the reopened store applied once its core has started, a
    // moment after the open returns (longer on a loaded machine): wait for it.
    let started = std::time::Instant::now();
    while cluster.hosts[&follower]
        .status(GROUP)
        .unwrap()
        .applied_index
        == 0
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the member starts from its snapshot, not empty"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cluster.converged_state(GROUP).await;
    // The third member goes: the leader and the restarted member are the quorum, and
    // every write acknowledged before and during the member's absence reads back.
    cluster.kill(third).await;
    for i in 0..WRITES {
        assert_eq!(
            get(&client, &members, &format!("k{i}")).await.as_deref(),
            Some("before"),
            "k{i}"
        );
    }
    for i in 0..50 {
        assert_eq!(
            get(&client, &members, &format!("tail{i}")).await.as_deref(),
            Some("missed"),
            "tail{i}"
        );
    }
    set(&client, &members, "with", "two").await;
}

/// A corrupt last record (a flipped bit in a record written whole) in a store that also
/// holds a snapshot: refused at open like any corrupt record (the snapshot does not make
/// the broken log servable), and the member rebuilt from its peers holds every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_tail_after_a_snapshot_is_refused_and_the_member_rebuilds() {
    let (_dir, mut cluster, options) = snapshotting_trio().await;
    cluster.leader(GROUP).await;
    let client = ReplicaClient::new(TEST_SECRET);
    let members = addrs(&cluster);
    for i in 0..300 {
        set(&client, &members, &format!("k{i}"), "x").await;
    }
    cluster.converged_state(GROUP).await;
    let victim = 3;
    let replica_dir = cluster.hosts[&victim].replica_dir(GROUP).unwrap();
    cluster.kill(victim).await;
    assert!(snapshot_on_disk(&replica_dir), "a snapshot was on disk");
    corrupt_last_log_record(&replica_dir);
    cluster.restart(victim).await;
    let refused = cluster.hosts[&victim]
        .create_group(
            GROUP,
            options,
            Box::<stator_replication::testing::RegisterApp>::default(),
        )
        .await;
    assert!(
        matches!(
            refused,
            Err(HostError::Storage {
                source: DiskStoreError::Corrupt { .. },
                ..
            })
        ),
        "a torn tail was served"
    );
    cluster.reconcile(GROUP, &[1, 2], options).await;
    quarantine(&replica_dir).unwrap();
    cluster.reconcile(GROUP, &[1, 2, 3], options).await;
    cluster.converged_state(GROUP).await;
    for i in 0..300 {
        assert_eq!(
            get(&client, &members, &format!("k{i}")).await.as_deref(),
            Some("x")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_record_is_refused_at_open_and_the_replica_rebuilds_from_its_peers() {
    let (_dir, mut cluster, members, replica_dir) = trio_with_a_member_down().await;
    let victim = VICTIM;
    // Flip one bit in the last log record, as a torn or rotting tail would.
    corrupt_last_log_record(&replica_dir);

    cluster.restart(victim).await;
    let refused = cluster.hosts[&victim]
        .create_group(
            GROUP,
            disk_options(),
            Box::<stator_replication::testing::RegisterApp>::default(),
        )
        .await;
    match refused {
        Err(HostError::Storage {
            source: DiskStoreError::Corrupt { what, .. },
            ..
        }) => assert!(what.starts_with("log entry"), "{what}"),
        Err(other) => panic!("expected a corrupt log entry, got {other}"),
        Ok(_) => panic!("a corrupt store was served"),
    }
    assert!(cluster.hosts[&victim].replica(GROUP).is_none());

    // The safe rebuild: the group drops the member that cannot prove its log, then adds
    // it back as a new learner with an empty store, which catches up from its peers.
    cluster.reconcile(GROUP, &[1, 2], disk_options()).await;
    quarantine(&replica_dir).unwrap();
    cluster.reconcile(GROUP, &[1, 2, 3], disk_options()).await;
    cluster.converged_state(GROUP).await;
    let client = ReplicaClient::new(TEST_SECRET);
    for i in 0..30 {
        assert_eq!(
            get(&client, &members, &format!("k{i}")).await.as_deref(),
            Some("x")
        );
    }
}

/// A crash in the middle of a batch (never acknowledged: its fdatasync had not returned)
/// leaves a torn record after the last whole one (the sectors not yet written are still
/// the segment's zeros): the replica cuts it off at open, serves again as itself without
/// a rebuild, and the group holds every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_cut_at_open_and_the_member_serves_again() {
    let (_dir, mut cluster, members, replica_dir) = trio_with_a_member_down().await;
    let (client, victim) = (ReplicaClient::new(TEST_SECRET), VICTIM);
    let (path, offset, len) = last_log_record(&replica_dir);
    let mut bytes = std::fs::read(&path).unwrap();
    // A batch after the last acknowledged record, cut by the crash: its first sector
    // reached the disk, the rest is still the segment's zeros.
    let at = offset + len;
    let torn_len: u32 = 1_000;
    bytes[at..at + 4].copy_from_slice(&torn_len.to_le_bytes());
    bytes[at + 4..at + 8].copy_from_slice(&0xdead_beef_u32.to_le_bytes());
    bytes[at + 8..at + 16].copy_from_slice(&u64::MAX.to_le_bytes());
    let sector_end = (at + 16) / 512 * 512 + 512;
    bytes[at + 16..sector_end].fill(0xab);
    std::fs::write(&path, &bytes).unwrap();

    cluster.restart(victim).await;
    cluster.open_replica(victim, GROUP, disk_options()).await;
    let cut = std::fs::read(&path).unwrap();
    assert!(
        cut[at..sector_end].iter().all(|b| *b == 0) || cut[at..at + 16] != bytes[at..at + 16],
        "the torn record was cut off (zeroed, or overwritten by a new append)"
    );
    for i in 30..40 {
        set(&client, &members, &format!("k{i}"), "y").await;
    }
    cluster.converged_state(GROUP).await;
    // One of the others goes: the restarted member is part of every quorum now.
    cluster.kill(1).await;
    for i in 0..40 {
        let want = if i < 30 { "x" } else { "y" };
        assert_eq!(
            get(&client, &members, &format!("k{i}")).await.as_deref(),
            Some(want),
            "k{i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_instead_of_acknowledging_them() {
    let dir = tempfile::tempdir().unwrap();
    let cluster =
        InProcessCluster::start_durable(1, Arc::new(RegisterFactory), dir.path().to_path_buf())
            .await;
    cluster.create_group(GROUP, &[1], disk_options()).await;
    cluster.leader(GROUP).await;
    let client = ReplicaClient::new(TEST_SECRET);
    let members = addrs(&cluster);
    set(&client, &members, "before", "full").await;
    let replica = cluster.hosts[&1].replica(GROUP).unwrap();
    replica.disk_store().unwrap().faults().fill_disk();
    let mut leader = None;
    let failed = client
        .execute(
            GROUP,
            &members,
            &mut leader,
            RequestKind::Write,
            encode_op(&RegisterOp::Set("after".into(), "full".into())),
            Duration::from_secs(3),
        )
        .await;
    let Err(ClientError::Timeout { last, .. }) = failed else {
        panic!("a write on a full disk was acknowledged: {failed:?}");
    };
    // The batch's clients hear the storage error (the core stopped on it), not only
    // their deadline passing.
    assert!(
        last.contains("disk full") || last.contains("No space left") || last.contains("stopped"),
        "the error says why: {last}"
    );
    let status = cluster.hosts[&1].status(GROUP).unwrap();
    assert!(
        status
            .error
            .as_deref()
            .is_some_and(|e| e.contains("disk full")),
        "the replica reports the full disk: {:?}",
        status.error
    );
}

/// The last record of a replica's log: (segment file, offset, length with its header).
/// The member that the log-damage tests stop.
const VICTIM: u64 = 3;

/// Three durable replicas holding `k0`..`k29` = `x`, with [`VICTIM`] killed afterwards:
/// its data dir, the cluster and the members' addresses. The caller damages the stopped
/// member's log and restarts it.
async fn trio_with_a_member_down() -> (
    tempfile::TempDir,
    InProcessCluster,
    Vec<String>,
    std::path::PathBuf,
) {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster =
        InProcessCluster::start_durable(3, Arc::new(RegisterFactory), dir.path().to_path_buf())
            .await;
    cluster
        .create_group(GROUP, &[1, 2, 3], disk_options())
        .await;
    cluster.leader(GROUP).await;
    let client = ReplicaClient::new(TEST_SECRET);
    let members = addrs(&cluster);
    for i in 0..30 {
        set(&client, &members, &format!("k{i}"), "x").await;
    }
    cluster.converged_state(GROUP).await;
    let replica_dir = cluster.hosts[&VICTIM].replica_dir(GROUP).unwrap();
    cluster.kill(VICTIM).await;
    (dir, cluster, members, replica_dir)
}

fn last_log_record(replica_dir: &std::path::Path) -> (std::path::PathBuf, usize, usize) {
    let spans = stator_replication::log_file::record_spans(replica_dir).unwrap();
    let (path, offset, len) = spans.last().expect("a log record").clone();
    (path, offset as usize, len)
}

/// Flips one bit in the last log record, as a rotting disk would (a torn write leaves
/// zeros instead, see `a_torn_tail_is_cut_at_open_and_the_member_serves_again`).
fn corrupt_last_log_record(replica_dir: &std::path::Path) {
    let (path, offset, len) = last_log_record(replica_dir);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offset + len - 1] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
}

/// Whether the replica whose directory is `replica_dir` holds a snapshot (its file).
fn snapshot_on_disk(replica_dir: &std::path::Path) -> bool {
    replica_dir
        .join(stator_replication::snapshot_file::SNAPSHOT_FILE_NAME)
        .exists()
}
