//! Pipelines through the gateway: a connection's commands of one read bound for one
//! partition travel as one batch (one `STATOR.EXEC` write), yet every reply is the one a
//! sequential run gives, in request order, and nothing acknowledged is lost when a
//! leader dies mid-pipeline.
//!
//! The mixed-commands check compares against a real `redis-server`; without one it prints
//! `SKIPPED: ...` for that part and compares against the same commands sent one at a time
//! through the gateway instead (it fails when `STATOR_REQUIRE_ALL=1`).

mod common;

use common::*;
use stator_api::slot::partition_of_key;
use stator_kv::{encode_command, Value};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Commands of the mixed pipeline.
const MIXED_COMMANDS: usize = 10_000;
/// Commands sent in one write (one pipeline burst), like `redis-benchmark -P`.
const BURST: usize = 200;
/// Keys per type: enough to spread over every partition, few enough that keys repeat
/// inside a burst (per-key order is what is tested).
const KEYS: u64 = 12;

/// A deterministic mix of INCR/SET/GET/HSET/HGET/LPUSH/LRANGE/APPEND/DEL and a few
/// wrong-type and wrong-arity commands (sent alone by the gateway) over `prefix`ed keys.
fn mixed_commands(prefix: &str) -> Vec<Vec<String>> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..MIXED_COMMANDS)
        .map(|i| {
            let r = next();
            let k = r % KEYS;
            let words: Vec<String> = match (r >> 8) % 12 {
                0 | 1 => vec!["INCR".into(), format!("{prefix}c{k}")],
                2 => vec!["SET".into(), format!("{prefix}s{k}"), format!("v{i}")],
                3 => vec!["GET".into(), format!("{prefix}s{k}")],
                4 => vec!["GET".into(), format!("{prefix}c{k}")],
                5 => vec![
                    "HSET".into(),
                    format!("{prefix}h{k}"),
                    format!("f{}", r % 5),
                    format!("{i}"),
                ],
                6 => vec![
                    "HGET".into(),
                    format!("{prefix}h{k}"),
                    format!("f{}", r % 5),
                ],
                7 => vec!["LPUSH".into(), format!("{prefix}l{k}"), format!("{i}")],
                8 => vec![
                    "LRANGE".into(),
                    format!("{prefix}l{k}"),
                    "0".into(),
                    "2".into(),
                ],
                9 => vec!["APPEND".into(), format!("{prefix}s{k}"), format!("+{i}")],
                10 if r % 7 == 0 => vec!["DEL".into(), format!("{prefix}l{k}")],
                // Wrong type (a list as a counter) and wrong arity.
                10 => vec!["INCR".into(), format!("{prefix}l{k}")],
                _ if r % 3 == 0 => vec!["GET".into()],
                _ => vec!["HLEN".into(), format!("{prefix}h{k}")],
            };
            words
        })
        .collect()
}

/// Every reply of `commands` sent in bursts of [`BURST`] over one connection.
async fn pipelined(addr: std::net::SocketAddr, commands: &[Vec<String>]) -> Vec<Value> {
    let mut c = Resp::connect(addr).await;
    let mut replies = Vec::with_capacity(commands.len());
    for burst in commands.chunks(BURST) {
        let mut bytes = Vec::new();
        for argv in burst {
            bytes.extend(encode_command(argv));
        }
        c.send_raw(&bytes).await;
        for _ in burst {
            replies.push(c.read().await.expect("connection stays open"));
        }
    }
    replies
}

/// Every reply of `commands` sent one at a time.
async fn sequential(addr: std::net::SocketAddr, commands: &[Vec<String>]) -> Vec<Value> {
    let mut c = Resp::connect(addr).await;
    let mut replies = Vec::with_capacity(commands.len());
    for argv in commands {
        c.send_raw(&encode_command(argv)).await;
        replies.push(c.read().await.expect("connection stays open"));
    }
    replies
}

/// A `redis-server` to compare with, or `None` (SKIPPED) when it is not installed.
async fn redis_server() -> Option<stator_harness::servers::Servers> {
    if !stator_harness::installed("redis-server") {
        assert!(
            std::env::var("STATOR_REQUIRE_ALL").as_deref() != Ok("1"),
            "STATOR_REQUIRE_ALL=1 but redis-server is not installed (apt-get install redis-server)"
        );
        println!("SKIPPED: redis-server not installed; comparing with a sequential run through the gateway instead");
        return None;
    }
    Some(
        stator_harness::servers::start_redis()
            .await
            .expect("start redis-server"),
    )
}

fn assert_same(got: &[Value], expected: &[Value], commands: &[Vec<String>], against: &str) {
    assert_eq!(got.len(), expected.len());
    for (i, (got, expected)) in got.iter().zip(expected).enumerate() {
        assert_eq!(
            got, expected,
            "reply {i} to {:?} differs from {against}",
            commands[i]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_mixed_commands_match_a_sequential_run() {
    let setup = setup(3, false).await;
    let commands = mixed_commands("p:");
    let through_gateway = pipelined(setup.resp_addr, &commands).await;
    match redis_server().await {
        Some(redis) => {
            let addr = redis.endpoints[0].parse().expect("a socket address");
            let expected = sequential(addr, &commands).await;
            assert_same(&through_gateway, &expected, &commands, "redis-server");
        }
        None => {
            // The same commands on fresh keys, one at a time.
            let commands = mixed_commands("q:");
            let expected = sequential(setup.resp_addr, &commands).await;
            assert_same(&through_gateway, &expected, &commands, "a sequential run");
        }
    }
    setup.gateway.shutdown().await;
}

/// Connections pipelining at once in [`many_connections_pipelining_at_once_each_get_their_own_replies_in_order`].
const CONNECTIONS: usize = 24;
/// Commands each of them sends (of [`mixed_commands`], on keys of its own).
const COMMANDS_PER_CONNECTION: usize = 160;
/// Commands per burst, as `redis-benchmark -P 16`.
const SMALL_BURST: usize = 16;

/// Every reply of `commands` sent in bursts of `burst` over one connection.
async fn pipelined_in(
    addr: std::net::SocketAddr,
    commands: &[Vec<String>],
    burst: usize,
) -> Vec<Value> {
    let mut c = Resp::connect(addr).await;
    let mut replies = Vec::with_capacity(commands.len());
    for chunk in commands.chunks(burst) {
        let mut bytes = Vec::new();
        for argv in chunk {
            bytes.extend(encode_command(argv));
        }
        c.send_raw(&bytes).await;
        for _ in chunk {
            replies.push(c.read().await.expect("connection stays open"));
        }
    }
    replies
}

/// Many connections pipelining at the same moment: the gateway merges their batches for
/// one partition into one write, yet each connection gets the replies a sequential run of
/// its own commands gets, in its order; and on keys they all share, each connection sees
/// its own writes in the order it sent them, none lost or applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections_pipelining_at_once_each_get_their_own_replies_in_order() {
    let setup = setup(3, false).await;
    let addr = setup.resp_addr;
    // Phase 1: each connection on keys of its own; the replies do not depend on the
    // prefix, so one sequential run is the model of every connection.
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|connection| {
            tokio::spawn(async move {
                let mut commands = mixed_commands(&format!("m{connection}:"));
                commands.truncate(COMMANDS_PER_CONNECTION);
                pipelined_in(addr, &commands, SMALL_BURST).await
            })
        })
        .collect();
    let mut model = mixed_commands("model:");
    model.truncate(COMMANDS_PER_CONNECTION);
    let expected = match redis_server().await {
        Some(redis) => sequential(redis.endpoints[0].parse().expect("an address"), &model).await,
        None => sequential(addr, &model).await,
    };
    for (connection, task) in tasks.into_iter().enumerate() {
        let got = task.await.expect("connection task");
        assert_same(
            &got,
            &expected,
            &model,
            &format!("a sequential run (connection {connection})"),
        );
    }
    // Phase 2: every connection INCRs one shared counter and RPUSHes onto one shared list
    // per partition, in bursts.
    let keys: Vec<String> = (0..6).map(|k| format!("shared:{k}")).collect();
    let rounds = 8;
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|connection| {
            let keys = keys.clone();
            tokio::spawn(async move {
                let mut c = Resp::connect(addr).await;
                let mut seen: Vec<i64> = vec![0; keys.len()];
                for round in 0..rounds {
                    let mut bytes = Vec::new();
                    for key in &keys {
                        bytes.extend(encode_command(&["INCR", key]));
                        bytes.extend(encode_command(&[
                            "RPUSH".to_string(),
                            format!("{key}:list"),
                            format!("{connection}:{round}"),
                        ]));
                    }
                    c.send_raw(&bytes).await;
                    for (k, key) in keys.iter().enumerate() {
                        for what in ["INCR", "RPUSH"] {
                            let Some(Value::Integer(n)) = c.read().await else {
                                panic!("{what} {key} answered with a non-integer");
                            };
                            if what == "INCR" {
                                assert!(n > seen[k], "INCR {key} went back: {n} after {}", seen[k]);
                                seen[k] = n;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("connection task");
    }
    let mut c = Resp::connect(addr).await;
    let total = (CONNECTIONS * rounds) as i64;
    for key in &keys {
        assert_eq!(
            c.call(&["GET", key]).await,
            bulk(&total.to_string()),
            "{key}: every INCR counted exactly once"
        );
        let Value::Array(Some(items)) =
            c.call(&["LRANGE", &format!("{key}:list"), "0", "-1"]).await
        else {
            panic!("LRANGE {key}:list is an array");
        };
        assert_eq!(
            items.len() as i64,
            total,
            "{key}:list holds every push once"
        );
        for connection in 0..CONNECTIONS {
            let own: Vec<Value> = items
                .iter()
                .filter(|item| match item {
                    Value::Bulk(Some(bytes)) => {
                        bytes.starts_with(format!("{connection}:").as_bytes())
                    }
                    _ => false,
                })
                .cloned()
                .collect();
            let expected: Vec<Value> = (0..rounds)
                .map(|r| bulk(&format!("{connection}:{r}")))
                .collect();
            assert_eq!(
                own, expected,
                "{key}:list holds connection {connection}'s pushes in its order"
            );
        }
    }
    setup.gateway.shutdown().await;
}

/// Many connections pipelining bursts of reads only at the same moment: the gateway sends
/// each connection's reads for a partition as one read and merges those of all
/// connections into one (see `coalesce`), yet each connection reads the values it just
/// wrote (a read batch sent after the writes were answered sees them), in its order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections_pipelining_reads_each_read_their_own_writes() {
    const KEYS_PER_CONNECTION: usize = 8;
    const ROUNDS: usize = 4;
    let setup = setup(3, false).await;
    let addr = setup.resp_addr;
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|connection| {
            tokio::spawn(async move {
                let mut c = Resp::connect(addr).await;
                let keys: Vec<String> = (0..KEYS_PER_CONNECTION)
                    .map(|k| format!("r{connection}:{k}"))
                    .collect();
                for round in 0..ROUNDS {
                    let value = format!("{connection}:{round}");
                    let mut bytes = Vec::new();
                    for key in &keys {
                        bytes.extend(encode_command(&["SET", key, &value]));
                    }
                    c.send_raw(&bytes).await;
                    for key in &keys {
                        assert_eq!(c.read().await, Some(Value::ok()), "SET {key}");
                    }
                    // Reads only, each key twice, and one missing key per partition.
                    let mut bytes = Vec::new();
                    for key in keys.iter().chain(&keys) {
                        bytes.extend(encode_command(&["GET", key]));
                    }
                    for missing in 0..3 {
                        bytes.extend(encode_command(&["GET", &format!("none{missing}")]));
                    }
                    c.send_raw(&bytes).await;
                    for key in keys.iter().chain(&keys) {
                        assert_eq!(
                            c.read().await,
                            Some(bulk(&value)),
                            "GET {key} in round {round} reads the value just written"
                        );
                    }
                    for _ in 0..3 {
                        assert_eq!(c.read().await, Some(Value::null()));
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("connection task");
    }
    setup.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_over_several_partitions_keeps_per_key_order() {
    let setup = setup(3, false).await;
    let mut c = Resp::connect(setup.resp_addr).await;
    // One burst: INCR and RPUSH on keys of every partition, interleaved, 40 times each.
    let keys: Vec<String> = (0..9).map(|k| format!("order:{k}")).collect();
    let partitions: std::collections::BTreeSet<u32> = keys
        .iter()
        .map(|k| partition_of_key(3, k.as_bytes()))
        .collect();
    assert!(partitions.len() > 1, "keys span partitions: {partitions:?}");
    let mut bytes = Vec::new();
    for round in 0..40 {
        for key in &keys {
            bytes.extend(encode_command(&["INCR", key]));
            bytes.extend(encode_command(&[
                "RPUSH".to_string(),
                format!("{key}:list"),
                round.to_string(),
            ]));
        }
    }
    c.send_raw(&bytes).await;
    for round in 0..40 {
        for key in &keys {
            assert_eq!(
                c.read().await,
                Some(Value::Integer(round + 1)),
                "INCR {key} round {round} in order"
            );
            assert_eq!(
                c.read().await,
                Some(Value::Integer(round + 1)),
                "RPUSH {key}:list round {round} in order"
            );
        }
    }
    let expected: Vec<Value> = (0..40).map(|r| bulk(&r.to_string())).collect();
    for key in &keys {
        assert_eq!(
            c.call(&["LRANGE", &format!("{key}:list"), "0", "-1"]).await,
            Value::Array(Some(expected.clone())),
            "{key}:list holds every push in order"
        );
    }
    setup.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_change_mid_pipeline_loses_nothing_acknowledged() {
    let mut setup = setup(2, false).await;
    // Connections pipeline 16 INCRs over 8 keys of both partitions while the leader of
    // one partition dies: every acknowledged INCR counts exactly once, in order.
    let clients = 3;
    let total_acked = Arc::new(AtomicI64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (addr, total_acked, done) = (setup.resp_addr, total_acked.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Resp::connect(addr).await;
            let keys: Vec<String> = (0..8).map(|k| format!("fail:{client}:{k}")).collect();
            let mut acked = vec![0i64; keys.len()];
            while !done.load(Ordering::Relaxed) {
                let mut bytes = Vec::new();
                for _ in 0..2 {
                    for key in &keys {
                        bytes.extend(encode_command(&["INCR", key]));
                    }
                }
                c.send_raw(&bytes).await;
                for _ in 0..2 {
                    for (k, key) in keys.iter().enumerate() {
                        match c.read().await.expect("connection stays open") {
                            Value::Integer(n) => {
                                acked[k] += 1;
                                assert_eq!(n, acked[k], "INCR {key} exactly once, in order");
                            }
                            other => panic!("INCR {key} failed across the failover: {other:?}"),
                        }
                    }
                }
                total_acked.fetch_add(2 * keys.len() as i64, Ordering::Relaxed);
            }
            (keys, acked)
        }));
    }
    let wait_for_acks = |at_least: i64| {
        let total_acked = total_acked.clone();
        async move {
            let deadline = Instant::now() + WAIT;
            while total_acked.load(Ordering::Relaxed) < at_least {
                assert!(Instant::now() < deadline, "writes stalled below {at_least}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            total_acked.load(Ordering::Relaxed)
        }
    };
    let before_kill = wait_for_acks(200).await;
    let leader = setup.cluster.leader(group(0)).await;
    setup.cluster.kill(leader).await;
    wait_for_acks(before_kill + 400).await;
    done.store(true, Ordering::Relaxed);
    let mut c = Resp::connect(setup.resp_addr).await;
    for task in tasks {
        let (keys, acked) = task.await.expect("client task");
        for (key, acked) in keys.iter().zip(acked) {
            assert_eq!(
                c.call(&["GET", key]).await,
                bulk(&acked.to_string()),
                "{key}: no write lost or doubled"
            );
        }
    }
    setup.gateway.shutdown().await;
}
