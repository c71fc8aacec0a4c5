//! Measures what an idle partition replica costs in memory: starts 3 hosts in this
//! process, forms N kv-less register groups (3 replicas each), waits until every group
//! has a leader, then reports the resident-set growth per replica.
//!
//! `cargo run --release -p stator-replication --example idle_memory -- 300`

use stator_replication::testing::{InProcessCluster, RegisterFactory};
use stator_replication::{GroupId, GroupOptions};
use std::sync::Arc;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let groups: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(300);
    let cluster = InProcessCluster::start(3, Arc::new(RegisterFactory)).await;
    // One group first, so runtime and connection set-up are not counted per replica.
    cluster
        .create_group(GroupId::new(1, 0), &[1, 2, 3], GroupOptions::default())
        .await;
    cluster.leader(GroupId::new(1, 0)).await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let before = rss_kib();
    for g in 1..=groups {
        let group = GroupId::new(2 + g / 60_000, (g % 60_000) as u32);
        cluster
            .create_group(group, &[1, 2, 3], GroupOptions::default())
            .await;
    }
    for g in 1..=groups {
        cluster
            .leader(GroupId::new(2 + g / 60_000, (g % 60_000) as u32))
            .await;
    }
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let after = rss_kib();
    let replicas = groups * 3;
    let per_replica_kib = (after.saturating_sub(before)) as f64 / replicas as f64;
    println!(
        "{{\"groups\":{groups},\"replicas\":{replicas},\"rss_before_kib\":{before},\"rss_after_kib\":{after},\"per_idle_replica_kib\":{per_replica_kib:.1}}}"
    );
}
