//! End-to-end: leaders spread over the nodes again after a node returns. The server
//! asks the busiest leaders to hand some partitions to caught-up followers on the
//! returned node (`stator_server::leaders`); the agents transfer leadership.
//!
//! Asserts behaviour with generous timeouts, never timings.

mod common;

use common::{busiest_leader, free_port, kv_spec, sigkill, wait_for, Cluster, WAIT};
use serde_json::Value;
use std::collections::BTreeMap;

const PARTITIONS: usize = 6;

/// Leaders per node id over `parts`, every node of `nodes` listed (0 when it leads none).
fn leaders_per_node(parts: &[Value], nodes: &[u64]) -> BTreeMap<u64, usize> {
    let mut led: BTreeMap<u64, usize> = nodes.iter().map(|&n| (n, 0)).collect();
    for p in parts {
        if let Some(leader) = p["leader"]["node_id"].as_u64() {
            *led.entry(leader).or_default() += 1;
        }
    }
    led
}

/// The partitions once all are healthy, every node is ready, and no node leads more than
/// one partition beyond another.
fn wait_spread(cluster: &Cluster, what: &str) -> BTreeMap<u64, usize> {
    wait_for(what, WAIT * 2, || {
        let nodes = cluster.try_json(&["get", "nodes"])?;
        let nodes: Vec<u64> = nodes
            .as_array()?
            .iter()
            .filter(|n| n["state"] == "ready")
            .filter_map(|n| n["id"].as_u64())
            .collect();
        if nodes.len() != 3 {
            return None;
        }
        let parts = cluster.try_json(&["get", "partitions", "sessions"])?;
        let parts = parts.as_array()?.clone();
        let healthy = parts.len() == PARTITIONS
            && parts
                .iter()
                .all(|p| p["replication_factor_met"] == true && p["leader"]["node_id"].is_u64());
        let led = leaders_per_node(&parts, &nodes);
        let (most, fewest) = (led.values().max()?, led.values().min()?);
        (healthy && led.len() == 3 && most - fewest <= 1).then_some(led)
    })
}

/// SIGKILL of the busiest leader's agent: its partitions fail over to the others; `up`
/// starts it again and it rejoins as a follower; then leaders end spread over all three
/// nodes again, the returned one leading its share.
#[test]
fn leaders_spread_again_after_a_node_returns() {
    let cluster = Cluster::start(3, &[]);
    let port = free_port();
    let spec = kv_spec("sessions", PARTITIONS as u32, port);
    cluster.apply(&cluster.write_spec("kv.toml", &spec));
    cluster.wait_service_healthy("sessions", PARTITIONS);
    let before = wait_spread(&cluster, "leaders spread over the three nodes");
    println!("leaders per node before: {before:?}");

    let parts = cluster.partitions("sessions");
    let victim = busiest_leader(&parts);
    let victim_id = cluster
        .nodes()
        .iter()
        .find(|n| n["name"] == victim.as_str())
        .and_then(|n| n["id"].as_u64())
        .unwrap_or_else(|| panic!("no node named {victim}"));
    let pid = cluster
        .agent_pid(&victim)
        .unwrap_or_else(|| panic!("no agent process for {victim}"));
    sigkill(pid);
    wait_for(
        &format!("every partition led by a node other than {victim}"),
        WAIT,
        || {
            let parts = cluster.try_json(&["get", "partitions", "sessions"])?;
            parts
                .as_array()?
                .iter()
                .all(|p| {
                    p["leader"]["node_id"]
                        .as_u64()
                        .is_some_and(|l| l != victim_id)
                })
                .then_some(())
        },
    );

    // `up` starts the agent again; once it has caught up it leads its share once more.
    let after = wait_spread(&cluster, "leaders spread again after the node returned");
    println!("leaders per node after the return: {after:?}");
    let led_by_returned: usize = cluster
        .nodes()
        .iter()
        .filter(|n| n["name"] == victim.as_str() && n["state"] == "ready")
        .filter_map(|n| after.get(&n["id"].as_u64()?))
        .sum();
    assert!(
        led_by_returned >= 1,
        "the returned node {victim} leads nothing: {after:?}"
    );
}
