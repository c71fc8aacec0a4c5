//! End to end through the real binary: `stator up --pools` grows a pool under load and
//! shrinks it back when the load stops, while a client writes throughout.
//!
//! The pool holds 3 to 4 nodes of 1 CPU; a kv service of 4 partitions x 3 replicas
//! requests 240m per replica, so each node starts at 960m of 1000m. The pools file sets
//! the demand model to 10 ms of CPU per operation, so a steady load of 100-240 ops/s
//! (depending on how busy the machine is) makes each replica want 400-900m, more than
//! its node has left but less than a node: the autoscaler asks the local provider for a
//! 4th agent and live-migrates a replica onto it. When the load stops, the requests
//! fall after the (short) stabilisation window, the consolidator drains the emptiest node
//! and releases it once it has stayed empty.

mod common;

use common::{assert_all_readable, free_port, wait_for, Cluster, Reply, Resp};
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bound on scale-out and on scale-in, each. Generous: a loaded 2-core CI box.
const PHASE_WAIT: Duration = Duration::from_secs(100);
/// Load threads, and the pause between two of one thread's writes (at most ~40 ops/s
/// each: the load can never make a replica want more than a whole node).
const LOAD_THREADS: usize = 6;
const LOAD_PAUSE: Duration = Duration::from_millis(25);
/// The checking client's pause between writes (~25 ops/s: light enough to count as
/// idle once the load stops).
const CHECK_PAUSE: Duration = Duration::from_millis(40);

const POOLS: &str = r#"
[[pool]]
name = "small"
cpu = "1"
memory = "2Gi"
price_per_hour = 0.05
min = 3
max = 4

[autoscale]
interval_ms = 1000
scale_down_window_s = 5
empty_node_s = 3
disruption_budget = 2
cpu_micros_per_op = 10000
"#;

/// A client writing unique keys: every acknowledged write is recorded, every other
/// outcome (error reply, timeout, broken connection) is counted as a failure.
struct Client {
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicU64>,
    acked: Arc<Mutex<Vec<(String, String)>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Client {
    fn start(addr: &str, prefix: &str, threads: usize, pause: Duration) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(AtomicU64::new(0));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..threads)
            .map(|t| {
                let (stop, failures, acked) = (stop.clone(), failures.clone(), acked.clone());
                let (addr, prefix) = (addr.to_string(), prefix.to_string());
                std::thread::spawn(move || {
                    let mut conn: Option<Resp> = None;
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let key = format!("{prefix}:{t}:{i}");
                        let value = format!("v{i}");
                        if conn.is_none() {
                            match Resp::connect(&addr) {
                                Ok(c) => conn = Some(c),
                                Err(e) => {
                                    eprintln!("{prefix}: connect failed: {e}");
                                    failures.fetch_add(1, Ordering::Relaxed);
                                    std::thread::sleep(Duration::from_millis(100));
                                    continue;
                                }
                            }
                        }
                        let c = conn.as_mut().expect("connected above");
                        match c.call(&["SET", &key, &value]) {
                            Ok(Reply::Simple(s)) if s == "OK" => {
                                acked.lock().unwrap().push((key, value));
                            }
                            other => {
                                eprintln!("{prefix}: SET {key} failed: {other:?}");
                                failures.fetch_add(1, Ordering::Relaxed);
                                conn = None;
                            }
                        }
                        std::thread::sleep(pause);
                    }
                })
            })
            .collect();
        Client {
            stop,
            failures,
            acked,
            threads,
        }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Stops the threads; returns (acknowledged writes, failures).
    fn finish(self) -> (Vec<(String, String)>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("client thread");
        }
        let acked = std::mem::take(&mut *self.acked.lock().unwrap());
        (acked, self.failures.load(Ordering::Relaxed))
    }
}

fn alive_nodes(nodes: &[Value]) -> Vec<&Value> {
    nodes.iter().filter(|n| n["state"] != "lost").collect()
}

#[test]
fn a_pool_grows_under_load_and_shrinks_back_without_failed_requests() {
    let dir = tempfile::tempdir().unwrap();
    let pools = dir.path().join("pools.toml");
    std::fs::write(&pools, POOLS).unwrap();
    let cluster = Cluster::start(3, &["--pools", pools.to_str().unwrap()]);
    let initial: BTreeSet<String> = cluster
        .nodes()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(initial.len(), 3, "the pool's min nodes: {initial:?}");
    assert!(
        cluster
            .nodes()
            .iter()
            .all(|n| n["pool"] == "small" && n["cpu_millis"] == 1000),
        "{:?}",
        cluster.nodes()
    );

    let port = free_port();
    let spec = cluster.write_spec(
        "kv.toml",
        &format!(
            "name = \"kv\"\npartitions = 4\nreplicas = 3\napp = {{ builtin = \"kv\" }}\n\
             expose = {{ resp = \"127.0.0.1:{port}\" }}\n\
             resources = {{ cpu = \"240m\", memory = \"64Mi\" }}\nplacement = {{ spread = \"zone\" }}\n"
        ),
    );
    cluster.apply(&spec);
    cluster.wait_service_healthy("kv", 4);
    let addr = format!("127.0.0.1:{port}");
    common::wait_resp_ready(&addr);

    let checker = Client::start(&addr, "check", 1, CHECK_PAUSE);
    let load = Client::start(&addr, "load", LOAD_THREADS, LOAD_PAUSE);
    let started = Instant::now();

    // Scale-out: a 4th node joins and a replica moves onto it.
    let (new_node, moved) = wait_for(
        "a 4th node with a replica moved onto it",
        PHASE_WAIT,
        || {
            let nodes = cluster.try_json(&["get", "nodes"])?;
            let nodes = nodes.as_array()?;
            let new = alive_nodes(nodes).into_iter().find(|n| {
                n["name"]
                    .as_str()
                    .is_some_and(|name| !initial.contains(name))
            })?;
            let name = new["name"].as_str()?.to_string();
            let parts = cluster.try_json(&["get", "partitions", "kv"])?;
            let moved = parts
                .as_array()?
                .iter()
                .filter(|p| {
                    p["members"].as_array().is_some_and(|m| {
                        m.iter().any(|m| {
                            m["name"] == name.as_str()
                                && m["designed"] == true
                                && (m["role"] == "follower" || m["role"] == "leader")
                        })
                    })
                })
                .count();
            (moved > 0).then_some((name, moved))
        },
    );
    let scaled_out_s = started.elapsed().as_secs_f64();
    eprintln!("scale-out: {new_node} joined and hosts {moved} replica(s) {scaled_out_s:.1} s after the load started");
    let alive = alive_nodes(&cluster.nodes()).len();
    assert!(alive <= 4, "the pool's max is 4, saw {alive} nodes");

    // The load stops; the checking client goes on.
    let load_acked = load.acked();
    let (_, load_failures) = load.finish();
    let stopped = Instant::now();
    eprintln!("load: {load_acked} writes acknowledged, {load_failures} failed");

    // Scale-in: back to 3 nodes, every partition at full strength.
    let released = wait_for(
        "one node released and the pool back to 3",
        PHASE_WAIT,
        || {
            let nodes = cluster.try_json(&["get", "nodes"])?;
            let nodes = nodes.as_array()?.clone();
            let alive = alive_nodes(&nodes);
            if alive.len() != 3 || alive.iter().any(|n| n["state"] != "ready") {
                return None;
            }
            let parts = cluster.try_json(&["get", "partitions", "kv"])?;
            let healthy = parts
                .as_array()?
                .iter()
                .all(|p| !p["leader"].is_null() && p["replication_factor_met"] == true);
            let gone: Vec<String> = nodes
                .iter()
                .filter(|n| n["state"] == "lost")
                .filter_map(|n| n["name"].as_str().map(str::to_string))
                .collect();
            (healthy && !gone.is_empty()).then_some(gone)
        },
    );
    let scaled_in_s = stopped.elapsed().as_secs_f64();
    eprintln!("scale-in: {released:?} released, pool back to 3 nodes {scaled_in_s:.1} s after the load stopped");
    // A released agent is stopped, not restarted by `up`.
    for name in &released {
        assert!(
            cluster.agent_pid(name).is_none(),
            "released node {name} still has a running agent"
        );
    }

    assert!(checker.acked() > 0);
    let (acked, failures) = checker.finish();
    assert_eq!(failures, 0, "the checking client saw failed requests");
    assert_all_readable(&addr, &acked);
    eprintln!(
        "checker: {} writes acknowledged, 0 failed, all readable; total {:.1} s",
        acked.len(),
        started.elapsed().as_secs_f64()
    );
}
