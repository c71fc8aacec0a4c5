//! Durable services through the real binary: `stator up` SIGKILLed as a whole (server,
//! gateway, every agent) and started again on the same data directory brings back every
//! acknowledged write of a `durability = "disk"` service, with every node under its old
//! id; a `memory` service comes back empty. Every agent of a `disk` service SIGKILLed
//! and restarted later than the heartbeat grace (declared lost meanwhile) comes back as
//! the same node with its stores, and nothing acknowledged is lost.

mod common;

use common::{
    assert_all_readable, free_port, kv_spec, sigkill, wait_for, wait_resp_ready, Cluster, Reply,
    Resp, Writers, WAIT,
};

fn ids_by_name(cluster: &Cluster) -> Vec<(String, u64)> {
    let mut ids: Vec<(String, u64)> = cluster
        .nodes()
        .iter()
        .filter(|n| n["state"] == "ready")
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                n["id"].as_u64().unwrap(),
            )
        })
        .collect();
    ids.sort();
    ids
}

#[test]
fn whole_cluster_sigkill_and_restart_keeps_every_acknowledged_disk_write() {
    let mut cluster = Cluster::start(3, &[]);
    let (disk_port, memory_port) = (free_port(), free_port());
    let (disk_addr, memory_addr) = (
        format!("127.0.0.1:{disk_port}"),
        format!("127.0.0.1:{memory_port}"),
    );
    let ledger = format!("{}durability = \"disk\"\n", kv_spec("ledger", 2, disk_port));
    cluster.apply(&cluster.write_spec("ledger.toml", &ledger));
    cluster.apply(&cluster.write_spec("rooms.toml", &kv_spec("rooms", 1, memory_port)));
    cluster.wait_service_healthy("ledger", 2);
    cluster.wait_service_healthy("rooms", 1);
    wait_resp_ready(&disk_addr);
    wait_resp_ready(&memory_addr);
    let mut rooms = Resp::connect(&memory_addr).unwrap();
    assert!(
        matches!(rooms.call(&["SET", "room:1", "open"]).unwrap(), Reply::Simple(s) if s == "OK")
    );
    let ids_before = ids_by_name(&cluster);

    let writers = Writers::start(&disk_addr, "durable", 3);
    writers.wait_progress(300, "before the power cut");
    // Every process at once, writers still writing: what was acknowledged must survive.
    cluster.kill_everything_and_restart(3, &[]);
    let acked = writers.finish();
    assert!(
        acked.len() >= 300,
        "only {} writes acknowledged",
        acked.len()
    );

    assert_eq!(
        ids_by_name(&cluster),
        ids_before,
        "every node came back under its old id"
    );
    cluster.wait_service_healthy("ledger", 2);
    assert_all_readable(&disk_addr, &acked);
    println!(
        "{} acknowledged writes read back after the restart",
        acked.len()
    );

    // The memory service was placed again, empty (a `partition_reset` event says so).
    cluster.wait_service_healthy("rooms", 1);
    let after = wait_for("the memory service to answer again", WAIT, || {
        let mut c = Resp::connect(&memory_addr).ok()?;
        match c.call(&["GET", "room:1"]).ok()? {
            Reply::Bulk(None) => Some("nil".to_string()),
            Reply::Bulk(Some(v)) => Some(String::from_utf8_lossy(&v).into_owned()),
            _ => None,
        }
    });
    assert_eq!(after, "nil", "a memory service comes back empty");
}

/// The 30-minute soak's failure: `stator up` restarts a SIGKILLed agent after
/// `AGENT_RESTART_DELAY` (5 s), later than the server's heartbeat grace (3 s), so every
/// member of every partition is declared lost at once. They must come back under their
/// old ids with their stores (before the fix they joined as new nodes, wiped their
/// stores, and the partitions stayed leaderless).
#[test]
fn every_agent_of_a_disk_service_killed_past_the_grace_comes_back_as_itself() {
    let cluster = Cluster::start(3, &[]);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let ledger = format!("{}durability = \"disk\"\n", kv_spec("ledger", 2, port));
    cluster.apply(&cluster.write_spec("ledger.toml", &ledger));
    cluster.wait_service_healthy("ledger", 2);
    wait_resp_ready(&addr);
    let ids_before = ids_by_name(&cluster);
    assert_eq!(ids_before.len(), 3, "{ids_before:?}");

    let writers = Writers::start(&addr, "late", 3);
    writers.wait_progress(200, "before the agents die");
    let victims: Vec<u32> = ids_before
        .iter()
        .map(|(name, _)| cluster.agent_pid(name).expect("every agent runs"))
        .collect();
    for &pid in &victims {
        sigkill(pid);
    }
    // `up` restarts each agent after its restart delay, past the grace.
    for (name, _) in &ids_before {
        wait_for(&format!("agent {name} to be restarted"), WAIT, || {
            cluster.agent_pid(name).filter(|pid| !victims.contains(pid))
        });
    }
    cluster.wait_ready_nodes(3);
    cluster.wait_service_healthy("ledger", 2);
    writers.wait_progress(200, "after every agent came back");
    let acked = writers.finish();

    let events = cluster.stator_ok(&["events", "-o", "json"]);
    let parsed: Vec<serde_json::Value> = events
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for (name, id) in &ids_before {
        let of = |kind: &str| {
            parsed
                .iter()
                .any(|e| e["type"] == kind && e["node_id"].as_u64() == Some(*id))
        };
        assert!(
            of("node_lost") && of("node_rejoined"),
            "node {name} ({id}) was declared lost past the grace and rejoined:\n{events}"
        );
    }
    assert_eq!(
        ids_by_name(&cluster),
        ids_before,
        "every node came back under its old id"
    );
    assert_all_readable(&addr, &acked);
    println!(
        "{} acknowledged writes read back after every agent restarted past the grace",
        acked.len()
    );
}
