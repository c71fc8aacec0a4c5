//! Durable services through the real binary: `stator up` SIGKILLed as a whole (server,
//! gateway, every agent) and started again on the same data directory brings back every
//! acknowledged write of a `durability = "disk"` service, with every node under its old
//! id; a `memory` service comes back empty.

mod common;

use common::{
    assert_all_readable, free_port, kv_spec, wait_for, wait_resp_ready, Cluster, Reply, Resp,
    Writers, WAIT,
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
