//! The RESP listener against a real 3-host cluster: commands, pipelining, routing by
//! slot, errors, and a leader killed under load.

mod common;

use common::*;
use stator_api::slot::partition_of_key;
use stator_kv::{KvMachine, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_round_trip_through_the_leader() {
    let setup = setup(1, false).await;
    let mut c = Resp::connect(setup.resp_addr).await;
    assert_eq!(c.call(&["PING"]).await, Value::Simple("PONG".into()));
    assert_eq!(c.call(&["ECHO", "hi"]).await, bulk("hi"));
    assert_eq!(c.call(&["SELECT", "0"]).await, Value::ok());
    assert!(error_text(&c.call(&["SELECT", "3"]).await).starts_with("ERR DB index is out of range"));
    assert_eq!(
        c.call(&["COMMAND", "DOCS"]).await,
        Value::Array(Some(vec![]))
    );
    assert_eq!(c.call(&["CLIENT", "SETNAME", "t"]).await, Value::ok());
    assert_eq!(c.call(&["SET", "foo", "bar"]).await, Value::ok());
    assert_eq!(c.call(&["GET", "foo"]).await, bulk("bar"));
    assert_eq!(c.call(&["GET", "missing"]).await, Value::Bulk(None));
    assert_eq!(c.call(&["INCR", "n"]).await, Value::Integer(1));
    assert_eq!(c.call(&["INCR", "n"]).await, Value::Integer(2));
    assert_eq!(
        c.call(&["MSET", "{u}a", "1", "{u}b", "2"]).await,
        Value::ok()
    );
    assert_eq!(
        c.call(&["MGET", "{u}a", "{u}b", "{u}c"]).await,
        Value::Array(Some(vec![bulk("1"), bulk("2"), Value::Bulk(None)]))
    );
    // One partition holds every slot: keys of different slots work together, as on a
    // standalone Redis (several partitions answer CROSSSLOT: resp_front's keyspace test).
    assert_eq!(
        c.call(&["MGET", "foo", "n"]).await,
        Value::Array(Some(vec![bulk("bar"), bulk("2")]))
    );
    assert_eq!(
        error_text(&c.call(&["NOSUCH"]).await),
        "ERR unknown command 'NOSUCH', with args beginning with: "
    );
    // Inline commands, as telnet and redis-cli's interactive mode may send them.
    c.send_raw(b"GET foo\r\n").await;
    assert_eq!(c.read().await, Some(bulk("bar")));
    assert!(error_text(&c.call(&["HELLO", "4"]).await).starts_with("NOPROTO"));
    match c.call(&["INFO"]).await {
        Value::Bulk(Some(text)) => {
            assert!(String::from_utf8(text).unwrap().contains("redis_version:"))
        }
        other => panic!("INFO replied {other:?}"),
    }
    assert_eq!(c.call(&["QUIT"]).await, Value::ok());
    assert_eq!(c.read().await, None, "QUIT closes the connection");
    setup.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_commands_are_answered_in_order() {
    let setup = setup(2, false).await;
    let mut c = Resp::connect(setup.resp_addr).await;
    // One write carrying many commands, as `redis-benchmark -P` sends them: SETs on
    // distinct keys run concurrently, INCRs on one key must still apply in order.
    let mut batch = Vec::new();
    for i in 0..50 {
        batch.extend(stator_kv::encode_command(&[
            "SET".to_string(),
            format!("key:{i}"),
            format!("value:{i}"),
        ]));
        batch.extend(stator_kv::encode_command(&["INCR", "counter"]));
        batch.extend(stator_kv::encode_command(&[
            "GET".to_string(),
            format!("key:{i}"),
        ]));
    }
    batch.extend(stator_kv::encode_command(&["PING"]));
    c.send_raw(&batch).await;
    for i in 0..50 {
        assert_eq!(c.read().await, Some(Value::ok()), "SET {i}");
        assert_eq!(
            c.read().await,
            Some(Value::Integer(i + 1)),
            "INCR {i} in order"
        );
        assert_eq!(
            c.read().await,
            Some(bulk(&format!("value:{i}"))),
            "GET {i} sees its SET"
        );
    }
    assert_eq!(c.read().await, Some(Value::Simple("PONG".into())));
    setup.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_land_in_the_partition_owning_their_slot() {
    let setup = setup(2, false).await;
    let mut c = Resp::connect(setup.resp_addr).await;
    let keys: Vec<String> = (0..40).map(|i| format!("user:{i}")).collect();
    for key in &keys {
        assert_eq!(c.call(&["SET", key, key]).await, Value::ok());
    }
    let mut per_partition = [0usize; 2];
    for partition in 0..2 {
        let snapshot = setup.cluster.converged_state(group(partition)).await;
        let machine = KvMachine::from_snapshot(&snapshot).expect("kv snapshot");
        for key in &keys {
            let owner = partition_of_key(2, key.as_bytes());
            let found = machine.query_argv(
                machine.now_ms(),
                &[b"GET".to_vec(), key.as_bytes().to_vec()],
            );
            if owner == partition {
                assert_eq!(found, bulk(key), "{key} stored in its partition {owner}");
                per_partition[partition as usize] += 1;
            } else {
                assert_eq!(
                    found,
                    Value::Bulk(None),
                    "{key} absent from partition {partition}"
                );
            }
        }
    }
    assert!(
        per_partition.iter().all(|&n| n > 0),
        "both partitions used: {per_partition:?}"
    );
    setup.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_a_leader_kill_exactly_once() {
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
    use std::sync::Arc;
    let mut setup = setup(2, false).await;
    // Several connections increment their own counter, pipelined 4 deep, while the leader
    // of the counters' partition dies. Every acknowledged INCR must count exactly once.
    let clients = 4;
    let total_acked = Arc::new(AtomicI64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (addr, total_acked, done) = (setup.resp_addr, total_acked.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Resp::connect(addr).await;
            let key = format!("{{counter}}:{client}");
            let mut acked = 0i64;
            while !done.load(Ordering::Relaxed) {
                for _ in 0..4 {
                    c.send(&["INCR", &key]).await;
                }
                for _ in 0..4 {
                    match c.read().await.expect("connection stays open") {
                        Value::Integer(n) => {
                            acked += 1;
                            assert_eq!(n, acked, "INCR of {key} applied exactly once, in order");
                        }
                        other => panic!("INCR of {key} failed across the failover: {other:?}"),
                    }
                }
                total_acked.fetch_add(4, Ordering::Relaxed);
            }
            (key, acked)
        }));
    }
    let wait_for_acks = |at_least: i64| {
        let total_acked = total_acked.clone();
        async move {
            let deadline = std::time::Instant::now() + WAIT;
            while total_acked.load(Ordering::Relaxed) < at_least {
                assert!(
                    std::time::Instant::now() < deadline,
                    "writes stalled below {at_least}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            total_acked.load(Ordering::Relaxed)
        }
    };
    let partition = partition_of_key(2, b"{counter}");
    let before_kill = wait_for_acks(40).await;
    let leader = setup.cluster.leader(group(partition)).await;
    setup.cluster.kill(leader).await;
    // Writes keep succeeding once a new leader is elected.
    wait_for_acks(before_kill + 80).await;
    done.store(true, Ordering::Relaxed);
    let mut c = Resp::connect(setup.resp_addr).await;
    for task in tasks {
        let (key, acked) = task.await.expect("client task");
        assert_eq!(
            c.call(&["GET", &key]).await,
            bulk(&acked.to_string()),
            "no write lost or doubled"
        );
    }
    let new_leader = setup.cluster.leader(group(partition)).await;
    assert_ne!(new_leader, leader);
    setup.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_follow_the_map() {
    let setup = setup(1, false).await;
    let mut c = Resp::connect(setup.resp_addr).await;
    assert_eq!(c.call(&["SET", "k", "v"]).await, Value::ok());
    // The service disappears: its listener and connections go away.
    setup
        .map_tx
        .send_replace(std::sync::Arc::new(stator_gateway::PartitionMap::default()));
    assert_eq!(
        c.read().await,
        None,
        "connection closed when the service left the map"
    );
    let deadline = std::time::Instant::now() + WAIT;
    while setup.gateway.resp_addrs().contains_key(SERVICE) {
        assert!(std::time::Instant::now() < deadline, "listener not stopped");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    setup.gateway.shutdown().await;
}
