//! End-to-end: the Redis Cluster protocol against the real binary. The gateway's RESP
//! endpoint is a cluster seed (`CLUSTER SLOTS`, `NODES`, `INFO`, ...); every agent serves
//! the slots it leads and answers `MOVED` for the rest. Driven with `redis-cli -c`,
//! `redis-benchmark --cluster` and redis-py's `RedisCluster`, including across a leader
//! SIGKILL and a `stator drain`.
//!
//! Tests assert behaviour (replies, nothing acknowledged lost), never timings. Tests that
//! need an outside program print `SKIPPED: ...` when it is missing, unless
//! `STATOR_REQUIRE_ALL=1`.

mod common;

use common::{
    busiest_leader, free_port, have, kv_spec, run, sigkill, wait_for, wait_resp_ready, Cluster,
    WAIT,
};
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

fn redis_cli(port: u16, args: &[&str]) -> String {
    let port = port.to_string();
    let mut all = vec!["-p", &port];
    all.extend(args);
    run("redis-cli", &all).1.trim().to_string()
}

/// Waits until every partition's leader serves RESP (its agent reported the address),
/// returning the partitions.
fn wait_cluster_addrs(cluster: &Cluster, service: &str, partitions: usize) -> Vec<Value> {
    wait_for(
        &format!("{service}: every leader with a RESP address"),
        WAIT,
        || {
            let parts = cluster.try_json(&["get", "partitions", service])?;
            let parts = parts.as_array()?.clone();
            (parts.len() == partitions
                && parts.iter().all(|p| {
                    p["leader"]["resp_addr"].is_string() && p["replication_factor_met"] == true
                }))
            .then_some(parts)
        },
    )
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// The gateway seeds cluster clients; agents serve their leaders' slots and redirect the
/// rest; `redis-cli -c` and `redis-benchmark --cluster` run without errors; a service
/// with `cluster = false` keeps the plain protocol.
#[test]
fn cluster_clients_reach_the_leaders() {
    let cluster = Cluster::start(3, &[]);
    let port = free_port();
    cluster.apply(&cluster.write_spec("kv.toml", &kv_spec("sessions", 4, port)));
    cluster.wait_service_healthy("sessions", 4);
    let parts = wait_cluster_addrs(&cluster, "sessions", 4);
    wait_resp_ready(&format!("127.0.0.1:{port}"));
    let plain_port = free_port();
    let plain = kv_spec("plain", 1, plain_port)
        .replace("\" }\nresources", "\", cluster = false }\nresources");
    assert!(plain.contains("cluster = false"), "{plain}");
    cluster.apply(&cluster.write_spec("plain.toml", &plain));
    if !have("redis-cli", &["--version"], "redis-tools") {
        return;
    }

    // The seed: topology from the partition map. The gateway polls the server's map
    // (every 250 ms), so it may not yet hold the addresses `get partitions` just showed.
    let info = wait_for("the gateway's seed to cover every slot", WAIT, || {
        let info = redis_cli(port, &["CLUSTER", "INFO"]);
        info.contains("cluster_state:ok").then_some(info)
    });
    assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
    assert!(redis_cli(port, &["INFO", "cluster"]).contains("cluster_enabled:1"));
    assert_eq!(redis_cli(port, &["CLUSTER", "KEYSLOT", "foo"]), "12182");
    assert_eq!(redis_cli(port, &["READONLY"]), "OK");
    let slots = redis_cli(port, &["CLUSTER", "SLOTS"]);
    let nodes = redis_cli(port, &["CLUSTER", "NODES"]);
    for p in &parts {
        let leader = p["leader"]["resp_addr"].as_str().unwrap();
        assert!(
            slots.contains(&port_of(leader).to_string()),
            "{leader} in {slots}"
        );
        let range = format!("{}-{}", p["slots"]["start"], p["slots"]["end_inclusive"]);
        assert!(
            nodes
                .lines()
                .any(|l| l.contains(leader) && l.contains("master") && l.contains(&range)),
            "{leader} masters {range}: {nodes}"
        );
    }
    let command = redis_cli(port, &["COMMAND", "INFO", "set"]);
    assert!(
        command.contains("set") && command.contains("write"),
        "{command}"
    );

    // An agent: serves its own slots, MOVED for the others; `redis-cli -c` follows.
    let agent = p_leader_port(&parts[0]);
    let key_elsewhere = (0..1000)
        .map(|i| format!("k{i}"))
        .find(|k| {
            let slot: u64 = redis_cli(port, &["CLUSTER", "KEYSLOT", k]).parse().unwrap();
            parts.iter().any(|p| {
                (p["slots"]["start"].as_u64().unwrap()
                    ..=p["slots"]["end_inclusive"].as_u64().unwrap())
                    .contains(&slot)
                    && p_leader_port(p) != agent
            })
        })
        .expect("a key led by another agent");
    // The agent's map comes with its heartbeats: it may forward until the next one.
    wait_for(
        "the agent to answer MOVED for another leader's slot",
        WAIT,
        || {
            redis_cli(agent, &["SET", &key_elsewhere, "v"])
                .starts_with("MOVED ")
                .then_some(())
        },
    );
    assert!(redis_cli(agent, &["CLUSTER", "NODES"]).contains("myself,master"));
    for i in 0..20 {
        let key = format!("cli:{i}");
        assert_eq!(redis_cli(agent, &["-c", "SET", &key, &i.to_string()]), "OK");
        assert_eq!(redis_cli(agent, &["-c", "GET", &key]), i.to_string());
        // Through the gateway too: one keyspace.
        assert_eq!(redis_cli(port, &["GET", &key]), i.to_string());
    }

    // A pipeline on one slot: every command in flight together, answered in order.
    let tag = (0..1000)
        .map(|i| format!("{{p{i}}}"))
        .find(|tag| {
            let slot: u64 = redis_cli(port, &["CLUSTER", "KEYSLOT", tag])
                .parse()
                .unwrap();
            (parts[0]["slots"]["start"].as_u64().unwrap()
                ..=parts[0]["slots"]["end_inclusive"].as_u64().unwrap())
                .contains(&slot)
        })
        .expect("a hash tag on the first partition");
    assert_pipeline_in_order(agent, &tag);
    // Several connections at once, each a pipeline over several slots of the partition
    // (one batch per read on the agent, merged with the other connections' writes).
    assert_concurrent_pipelines_in_order(agent, &parts[0]);

    // Cluster mode off: the plain protocol only.
    cluster.wait_service_healthy("plain", 1);
    wait_resp_ready(&format!("127.0.0.1:{plain_port}"));
    assert!(redis_cli(plain_port, &["CLUSTER", "SLOTS"]).contains("cluster support disabled"));
    assert!(redis_cli(plain_port, &["INFO"]).contains("cluster_enabled:0"));
    assert_eq!(redis_cli(plain_port, &["SET", "p", "1"]), "OK");

    if have("redis-benchmark", &["--version"], "redis-tools") {
        let port_arg = port.to_string();
        let (ok, out) = run(
            "redis-benchmark",
            &[
                "--cluster",
                "-p",
                &port_arg,
                "-c",
                "10",
                "-n",
                "3000",
                "-P",
                "4",
                "-r",
                "1000",
                "-t",
                "set,get",
                "-q",
            ],
        );
        assert!(ok, "redis-benchmark --cluster failed: {out}");
        for test in ["SET", "GET"] {
            assert!(
                out.lines()
                    .any(|l| l.contains(test) && l.contains("requests per second")),
                "no {test} result from redis-benchmark --cluster: {out}"
            );
        }
        assert!(
            !out.to_lowercase().contains("error"),
            "redis-benchmark --cluster saw errors: {out}"
        );
    }
}

/// Sends one pipeline of INCRs, APPENDs and GETs on keys tagged `tag` (one slot) to the
/// agent on `port` in one write and checks every reply arrives, in order: a read sees
/// every write sent before it.
fn assert_pipeline_in_order(port: u16, tag: &str) {
    use std::io::Read;
    const ROUNDS: usize = 40;
    let counter = format!("{tag}:counter");
    let text = format!("{tag}:text");
    let mut request = Vec::new();
    let mut expected = Vec::new();
    let encode = |args: &[&str], out: &mut Vec<u8>| {
        out.extend(format!("*{}\r\n", args.len()).bytes());
        for a in args {
            out.extend(format!("${}\r\n{a}\r\n", a.len()).bytes());
        }
    };
    encode(&["DEL", &counter, &text], &mut request);
    for i in 1..=ROUNDS {
        encode(&["INCR", &counter], &mut request);
        expected.extend(format!(":{i}\r\n").bytes());
        encode(&["APPEND", &text, "x"], &mut request);
        expected.extend(format!(":{i}\r\n").bytes());
        encode(&["GET", &counter], &mut request);
        let value = i.to_string();
        expected.extend(format!("${}\r\n{value}\r\n", value.len()).bytes());
        encode(&["STRLEN", &text], &mut request);
        expected.extend(format!(":{i}\r\n").bytes());
    }
    // Leaders may still move (the server spreads them over the nodes): follow MOVED.
    let mut port = port;
    for _ in 0..20 {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.write_all(&request).unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        // DEL answers 0, 1 or 2: read it first, then the rest.
        while !got.ends_with(b"\r\n") {
            let n = stream.read(&mut chunk[..1]).unwrap();
            assert!(n > 0, "the agent closed the connection");
            got.extend_from_slice(&chunk[..n]);
        }
        let first = String::from_utf8_lossy(&got).into_owned();
        got.clear();
        while got.len() < expected.len() {
            match stream.read(&mut chunk) {
                Ok(n) if n > 0 => got.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(moved) = [&first, &text].into_iter().find_map(|t| {
            let at = t.find("-MOVED ")?;
            t[at..].split_whitespace().nth(2).map(port_of)
        }) {
            port = moved;
            std::thread::sleep(Duration::from_millis(500));
            continue;
        }
        assert!(first.starts_with(':'), "DEL answered {first:?}");
        assert_eq!(
            text,
            String::from_utf8_lossy(&expected),
            "pipelined replies on one slot, in order"
        );
        return;
    }
    panic!("the slot's leader kept moving");
}

/// Connections pipelining at once to the agent on `port`, each on its own keys over
/// several slots of `partition`: every connection gets every reply, in its order, as a
/// sequential model of its own commands predicts (writes and reads interleaved, so a read
/// that overtook a write of its connection, or a reply given to the wrong connection,
/// shows).
fn assert_concurrent_pipelines_in_order(port: u16, partition: &Value) {
    use std::io::Read;
    const CONNECTIONS: usize = 8;
    const ROUNDS: usize = 25;
    const SLOTS: usize = 4;
    let range = partition["slots"]["start"].as_u64().unwrap()
        ..=partition["slots"]["end_inclusive"].as_u64().unwrap();
    let mut tags: Vec<(String, u16)> = Vec::new();
    for i in 0.. {
        let tag = format!("{{c{i}}}");
        let slot = stator_api::slot::key_slot(tag.as_bytes());
        if range.contains(&u64::from(slot)) && tags.iter().all(|(_, s)| *s != slot) {
            tags.push((tag, slot));
        }
        if tags.len() == SLOTS {
            break;
        }
    }
    let encode = |args: &[&str], out: &mut Vec<u8>| {
        out.extend(format!("*{}\r\n", args.len()).bytes());
        for a in args {
            out.extend(format!("${}\r\n{a}\r\n", a.len()).bytes());
        }
    };
    let bulk = |value: &str| format!("${}\r\n{value}\r\n", value.len());
    // The commands of connection `c` and the replies a sequential run gives them.
    let script = |c: usize| {
        let (mut request, mut expected) = (Vec::new(), String::new());
        let keys: Vec<(String, String, String)> = tags
            .iter()
            .map(|(tag, _)| {
                (
                    format!("{tag}:conn{c}:n"),
                    format!("{tag}:conn{c}:s"),
                    format!("{tag}:conn{c}:v"),
                )
            })
            .collect();
        for (n, s, v) in &keys {
            for (key, value) in [(n, "0"), (s, ""), (v, "")] {
                encode(&["SET", key, value], &mut request);
                expected.push_str("+OK\r\n");
            }
        }
        for round in 1..=ROUNDS {
            for (j, (n, s, v)) in keys.iter().enumerate() {
                encode(&["INCR", n], &mut request);
                expected.push_str(&format!(":{round}\r\n"));
                encode(&["APPEND", s, "ab"], &mut request);
                expected.push_str(&format!(":{}\r\n", 2 * round));
                let value = format!("c{c}r{round}k{j}");
                encode(&["GETSET", v, &value], &mut request);
                let before = if round == 1 {
                    String::new()
                } else {
                    format!("c{c}r{}k{j}", round - 1)
                };
                expected.push_str(&bulk(&before));
                encode(&["GET", n], &mut request);
                expected.push_str(&bulk(&round.to_string()));
                encode(&["STRLEN", s], &mut request);
                expected.push_str(&format!(":{}\r\n", 2 * round));
            }
        }
        (request, expected)
    };
    // Leaders may still move (the server spreads them over the nodes): on a MOVED, every
    // connection starts over (each script resets its keys first) at the new leader.
    let mut port = port;
    for _ in 0..20 {
        let runs: Vec<_> = (0..CONNECTIONS)
            .map(|c| {
                let (request, expected) = script(c);
                std::thread::spawn(move || {
                    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_secs(60)))
                        .unwrap();
                    // In pieces, so reads end mid-command and batches split anywhere.
                    for piece in request.chunks(997) {
                        stream.write_all(piece).unwrap();
                    }
                    let mut got = Vec::new();
                    let mut chunk = [0u8; 8192];
                    while got.len() < expected.len() {
                        match stream.read(&mut chunk) {
                            Ok(n) if n > 0 => got.extend_from_slice(&chunk[..n]),
                            _ => break,
                        }
                        if got.windows(7).any(|w| w == b"-MOVED ") {
                            break;
                        }
                    }
                    (String::from_utf8_lossy(&got).into_owned(), expected)
                })
            })
            .collect();
        let results: Vec<_> = runs.into_iter().map(|r| r.join().unwrap()).collect();
        if let Some(moved) = results.iter().find_map(|(got, _)| {
            let at = got.find("-MOVED ")?;
            got[at..].split_whitespace().nth(2).map(port_of)
        }) {
            port = moved;
            std::thread::sleep(Duration::from_millis(500));
            continue;
        }
        for (c, (got, expected)) in results.iter().enumerate() {
            assert_eq!(
                got, expected,
                "connection {c}: pipelined replies over {SLOTS} slots, in order"
            );
        }
        return;
    }
    panic!("the partition's leader kept moving");
}

fn p_leader_port(partition: &Value) -> u16 {
    port_of(partition["leader"]["resp_addr"].as_str().unwrap())
}

/// redis-py's writer: `RedisCluster` seeded with the gateway, one SET at a time,
/// retrying a failed one (the client refreshes its map) until it is acknowledged;
/// acknowledged keys are counted in `progress`; after `stop` appears every acknowledged
/// key is read back.
const PY_WRITER: &str = r#"
import os, sys, time
from redis.cluster import RedisCluster
port, workdir = int(sys.argv[1]), sys.argv[2]
rc = RedisCluster(host="127.0.0.1", port=port, decode_responses=True)
node = rc.get_node_from_key("c:0")
assert node.port != port, "RedisCluster must talk to the agents, not the gateway seed"
acked, retries, i = [], 0, 0
def publish():
    with open(os.path.join(workdir, "progress.tmp"), "w") as f:
        f.write("%d %d" % (len(acked), retries))
    os.replace(os.path.join(workdir, "progress.tmp"), os.path.join(workdir, "progress"))
while not os.path.exists(os.path.join(workdir, "stop")):
    key, deadline = "c:%d" % i, time.time() + 60
    while True:
        try:
            assert rc.set(key, str(i)) is True
            break
        except Exception as e:
            retries += 1
            if time.time() > deadline:
                raise
            time.sleep(0.05)
    acked.append(key)
    i += 1
    if i % 10 == 0:
        publish()
publish()
rc = RedisCluster(host="127.0.0.1", port=port, decode_responses=True)
lost = [k for k in acked if rc.get(k) != k[2:]]
assert not lost, "lost %d acknowledged writes, first %s" % (len(lost), lost[:5])
print("verified %d acknowledged writes, %d retries" % (len(acked), retries))
"#;

fn progress(dir: &std::path::Path) -> u64 {
    std::fs::read_to_string(dir.join("progress"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn wait_progress(dir: &std::path::Path, writer: &mut std::process::Child, more: u64, what: &str) {
    let start = progress(dir);
    wait_for(&format!("{more} more redis-py writes {what}"), WAIT, || {
        if let Ok(Some(status)) = writer.try_wait() {
            panic!("the redis-py writer exited ({status}) {what}");
        }
        (progress(dir) >= start + more).then_some(())
    });
}

/// redis-py `RedisCluster` seeded with the gateway writes straight to the leaders,
/// through a SIGKILL of the agent leading the most slots and a `stator drain` of the
/// next busiest: its writes succeed again after each, and every acknowledged one reads
/// back.
#[test]
fn redis_py_cluster_follows_failover_and_drain() {
    if !have(
        "python3",
        &["-c", "import redis.cluster"],
        "the Python redis client (pip install redis)",
    ) {
        return;
    }
    let cluster = Cluster::start(4, &[]);
    let port = free_port();
    cluster.apply(&cluster.write_spec("kv.toml", &kv_spec("sessions", 4, port)));
    cluster.wait_service_healthy("sessions", 4);
    let parts = wait_cluster_addrs(&cluster, "sessions", 4);
    wait_resp_ready(&format!("127.0.0.1:{port}"));

    let dir = cluster.test_dir().join("py");
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("writer.py");
    std::fs::File::create(&script)
        .unwrap()
        .write_all(PY_WRITER.as_bytes())
        .unwrap();
    let mut writer = Command::new("python3")
        .arg(&script)
        .arg(port.to_string())
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the redis-py writer");
    wait_progress(&dir, &mut writer, 100, "before the kill");

    let victim = busiest_leader(&parts);
    let pid = cluster.agent_pid(&victim).expect("the victim's agent");
    let victim_addr = parts
        .iter()
        .find(|p| p["leader"]["name"] == victim.as_str())
        .and_then(|p| p["leader"]["resp_addr"].as_str())
        .unwrap()
        .to_string();
    sigkill(pid);
    wait_for(&format!("no partition led by {victim}"), WAIT, || {
        let parts = cluster.try_json(&["get", "partitions", "sessions"])?;
        parts
            .as_array()?
            .iter()
            .all(|p| {
                p["leader"]["resp_addr"]
                    .as_str()
                    .is_some_and(|a| a != victim_addr)
            })
            .then_some(())
    });
    wait_progress(&dir, &mut writer, 100, "after the leader SIGKILL");

    let parts = wait_cluster_addrs(&cluster, "sessions", 4);
    let target = busiest_leader(&parts);
    cluster.stator_ok(&["drain", &target]);
    wait_for(&format!("no partition on {target}"), WAIT, || {
        let parts = cluster.try_json(&["get", "partitions", "sessions"])?;
        parts
            .as_array()?
            .iter()
            .all(|p| {
                p["replication_factor_met"] == true
                    && p["leader"]["resp_addr"].is_string()
                    && p["members"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|m| m["name"] != target.as_str())
            })
            .then_some(())
    });
    wait_progress(&dir, &mut writer, 100, "after the drain");

    std::fs::File::create(dir.join("stop")).unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let out = loop {
        if writer.try_wait().unwrap().is_some() {
            break writer.wait_with_output().unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the redis-py writer did not finish"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(
        out.status.success() && text.contains("verified"),
        "redis-py writer failed: {text}"
    );
}
