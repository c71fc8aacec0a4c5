//! End-to-end: blocking pops and `WATCH`/`MULTI`/`EXEC` through the gateway across a
//! SIGKILL of the partition leader's agent, against the real `stator` binary.
//!
//! What a client may see (docs/COMPATIBILITY.md, "Across a leader failover"): a client
//! blocked in `BLPOP`, `BZPOPMIN` or `BLMOVE` gets an element pushed after the new leader
//! is up, its timeout reply, or an error it can retry; never a lost element and never one
//! element delivered twice. An `EXEC` applies once or answers nil or an error, and a
//! watched key changed by another client still aborts it. The test reads replies, never
//! exit codes, and waits with generous timeouts.

mod common;

use common::{
    free_port, have, kv_spec, sigkill, wait_for, wait_resp_ready, Cluster, Reply, Resp, WAIT,
};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a blocked client waits (its timeout argument): far past a failover.
const BLOCK_SECONDS: &str = "120";

/// How long the test waits for a blocked client's reply.
const REPLY_WAIT: Duration = Duration::from_secs(150);

/// Sends `args` on a fresh connection and waits for the one reply, in a thread.
fn blocked(addr: &str, args: &[&str]) -> JoinHandle<std::io::Result<Reply>> {
    let addr = addr.to_string();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    std::thread::spawn(move || {
        let mut client = Resp::connect(&addr)?;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        client.send(&args)?;
        client.next_reply(REPLY_WAIT)
    })
}

/// Runs `args` until the service answers something other than an error (the new leader
/// is up), reconnecting as needed.
fn call_until_ok(addr: &str, args: &[&str]) -> Reply {
    wait_for(&format!("{args:?} to be answered"), WAIT, || {
        let mut client = Resp::connect(addr).ok()?;
        match client.call(args).ok()? {
            Reply::Error(error) => {
                println!("{args:?} -> {error} (retrying)");
                None
            }
            reply => Some(reply),
        }
    })
}

fn text(reply: &Reply) -> Option<String> {
    match reply {
        Reply::Bulk(Some(bytes)) => Some(String::from_utf8_lossy(bytes).into_owned()),
        _ => None,
    }
}

/// The strings of an array reply.
fn texts(reply: &Reply) -> Vec<String> {
    match reply {
        Reply::Array(Some(items)) => items.iter().filter_map(text).collect(),
        _ => Vec::new(),
    }
}

#[test]
fn blocking_pops_and_watch_survive_a_leader_sigkill_through_the_gateway() {
    let cluster = Cluster::start(4, &[]);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    cluster.apply(&cluster.write_spec("kv.toml", &kv_spec("rooms", 1, port)));
    let parts = cluster.wait_service_healthy("rooms", 1);
    wait_resp_ready(&addr);
    let leader = parts[0]["leader"]["name"]
        .as_str()
        .expect("the partition has a leader")
        .to_string();
    let leader_id = parts[0]["leader"]["node_id"].as_u64().unwrap();

    // Clients blocked before the failover, on keys that are still empty.
    let mut waiting = BTreeMap::new();
    waiting.insert("blpop", blocked(&addr, &["BLPOP", "q:list", BLOCK_SECONDS]));
    waiting.insert(
        "bzpopmin",
        blocked(&addr, &["BZPOPMIN", "q:zset", BLOCK_SECONDS]),
    );
    waiting.insert(
        "blmove",
        blocked(
            &addr,
            &["BLMOVE", "q:src", "q:dst", "LEFT", "RIGHT", BLOCK_SECONDS],
        ),
    );
    // A short timeout that passes during the failover: the timeout reply or an error.
    let short = blocked(&addr, &["BLPOP", "q:never", "2"]);

    // A transaction queued before the failover, executed after the kill.
    let mut setup = Resp::connect(&addr).unwrap();
    for (key, value) in [("acct:a", "10"), ("acct:b", "10")] {
        assert_eq!(
            setup.call(&["SET", key, value]).unwrap(),
            Reply::Simple("OK".into())
        );
    }
    let mut applying = Resp::connect(&addr).unwrap();
    let mut aborted = Resp::connect(&addr).unwrap();
    for (client, key) in [(&mut applying, "acct:a"), (&mut aborted, "acct:b")] {
        assert_eq!(
            client.call(&["WATCH", key]).unwrap(),
            Reply::Simple("OK".into())
        );
        assert_eq!(client.call(&["MULTI"]).unwrap(), Reply::Simple("OK".into()));
        assert_eq!(
            client.call(&["INCRBY", key, "5"]).unwrap(),
            Reply::Simple("QUEUED".into())
        );
    }
    // Let the blocked clients' first attempts reach the leader.
    std::thread::sleep(Duration::from_millis(500));

    let pid = cluster.agent_pid(&leader).expect("the leader's agent");
    sigkill(pid);
    wait_for(
        &format!("a leader other than {leader} (id {leader_id})"),
        WAIT,
        || {
            let parts = cluster.try_json(&["get", "partitions", "rooms"])?;
            parts.as_array()?[0]["leader"]["node_id"]
                .as_u64()
                .filter(|id| *id != leader_id)
        },
    );

    // Another client changes acct:b: the watching EXEC must not apply.
    assert_eq!(
        call_until_ok(&addr, &["SET", "acct:b", "99"]),
        Reply::Simple("OK".into())
    );
    let exec_a = applying.call(&["EXEC"]);
    let exec_b = aborted.call(&["EXEC"]);
    println!("EXEC across the failover: {exec_a:?}; with a changed watched key: {exec_b:?}");
    let a_now = text(&call_until_ok(&addr, &["GET", "acct:a"])).unwrap();
    match &exec_a {
        Ok(Reply::Array(Some(replies))) => {
            assert_eq!(replies, &[Reply::Integer(15)]);
            assert_eq!(a_now, "15", "EXEC answered applied: applied once");
        }
        Ok(Reply::Array(None)) => assert_eq!(a_now, "10", "EXEC answered nil: not applied"),
        Ok(Reply::Error(_)) | Err(_) => assert!(
            a_now == "10" || a_now == "15",
            "an EXEC that failed applied at most once: {a_now}"
        ),
        Ok(other) => panic!("EXEC answered {other:?}"),
    }
    assert!(
        matches!(
            &exec_b,
            Ok(Reply::Array(None)) | Ok(Reply::Error(_)) | Err(_)
        ),
        "EXEC with a watched key changed by another client answered {exec_b:?}"
    );
    assert_eq!(
        text(&call_until_ok(&addr, &["GET", "acct:b"])).as_deref(),
        Some("99"),
        "the aborted EXEC changed nothing"
    );

    // Push after the new leader is up: each element reaches its blocked client, or stays.
    call_until_ok(&addr, &["RPUSH", "q:list", "item-1"]);
    call_until_ok(&addr, &["ZADD", "q:zset", "1", "member-1"]);
    call_until_ok(&addr, &["RPUSH", "q:src", "moved-1"]);
    let replies: BTreeMap<&str, std::io::Result<Reply>> = waiting
        .into_iter()
        .map(|(name, handle)| (name, handle.join().unwrap()))
        .collect();
    println!("blocked clients answered: {replies:?}");
    let delivered = |name: &str| -> Option<Vec<String>> {
        match &replies[name] {
            Ok(Reply::Array(Some(_))) => Some(texts(replies[name].as_ref().unwrap())),
            Ok(Reply::Bulk(Some(_))) => Some(vec![text(replies[name].as_ref().unwrap()).unwrap()]),
            Ok(Reply::Error(_)) | Err(_) => None,
            Ok(other) => panic!("{name} answered {other:?} before its timeout"),
        }
    };
    let list_left = texts(&call_until_ok(&addr, &["LRANGE", "q:list", "0", "-1"]));
    match delivered("blpop") {
        Some(popped) => {
            assert_eq!(popped, ["q:list", "item-1"]);
            assert!(
                list_left.is_empty(),
                "popped and still there: {list_left:?}"
            );
        }
        None => assert_eq!(list_left, ["item-1"], "neither delivered nor kept"),
    }
    let zset_left = texts(&call_until_ok(&addr, &["ZRANGE", "q:zset", "0", "-1"]));
    match delivered("bzpopmin") {
        Some(popped) => {
            assert_eq!(popped, ["q:zset", "member-1", "1"]);
            assert!(
                zset_left.is_empty(),
                "popped and still there: {zset_left:?}"
            );
        }
        None => assert_eq!(zset_left, ["member-1"], "neither delivered nor kept"),
    }
    let src_left = texts(&call_until_ok(&addr, &["LRANGE", "q:src", "0", "-1"]));
    let dst_now = texts(&call_until_ok(&addr, &["LRANGE", "q:dst", "0", "-1"]));
    match delivered("blmove") {
        Some(moved) => {
            assert_eq!(moved, ["moved-1"]);
            assert!(src_left.is_empty() && dst_now == ["moved-1"], "moved once");
        }
        None => assert!(
            src_left.len() + dst_now.len() == 1,
            "neither lost nor doubled: src {src_left:?}, dst {dst_now:?}"
        ),
    }
    let short = short.join().unwrap();
    assert!(
        matches!(
            &short,
            Ok(Reply::Array(None)) | Ok(Reply::Error(_)) | Err(_)
        ),
        "a BLPOP on an empty key answered {short:?} around its timeout"
    );
}

/// Cluster mode: a client blocked on the leader agent's own listener loses its connection
/// when that agent is SIGKILLed (as with a Redis Cluster primary that dies); the element
/// pushed later is neither lost nor delivered to the dead connection, and the client's
/// retry on the new leader (found in the topology, as redis-py's `RedisCluster` and
/// `redis-cli -c` refresh it) pops it once. A `MULTI` on the dead connection is gone with
/// it: nothing of it applies.
#[test]
fn blocking_pops_in_cluster_mode_retry_on_the_new_leader() {
    let cluster = Cluster::start(4, &[]);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    cluster.apply(&cluster.write_spec("kv.toml", &kv_spec("rooms", 1, port)));
    cluster.wait_service_healthy("rooms", 1);
    wait_resp_ready(&addr);
    let leader_resp = |cluster: &Cluster, not: Option<&str>| {
        wait_for("the leader's cluster-mode RESP address", WAIT, || {
            let parts = cluster.try_json(&["get", "partitions", "rooms"])?;
            let leader = &parts.as_array()?[0]["leader"];
            let resp = leader["resp_addr"].as_str()?.to_string();
            (Some(resp.as_str()) != not)
                .then(|| (leader["name"].as_str().unwrap().to_string(), resp))
        })
    };
    let (leader, leader_addr) = leader_resp(&cluster, None);

    let first_try = blocked(&leader_addr, &["BLPOP", "q:list", BLOCK_SECONDS]);
    let mut transaction = Resp::connect(&leader_addr).unwrap();
    assert_eq!(
        transaction.call(&["MULTI"]).unwrap(),
        Reply::Simple("OK".into())
    );
    assert_eq!(
        transaction.call(&["SET", "tx:key", "x"]).unwrap(),
        Reply::Simple("QUEUED".into())
    );
    std::thread::sleep(Duration::from_millis(500));
    sigkill(cluster.agent_pid(&leader).expect("the leader's agent"));

    let first = first_try.join().unwrap();
    assert!(
        first.is_err(),
        "the client blocked on the killed agent got {first:?} instead of a closed connection"
    );
    assert!(
        transaction.call(&["EXEC"]).is_err(),
        "EXEC on the killed agent's connection answered"
    );
    let (_, new_addr) = leader_resp(&cluster, Some(&leader_addr));
    // The client retries on the new leader, then the element is pushed.
    let retry = blocked(&new_addr, &["BLPOP", "q:list", BLOCK_SECONDS]);
    std::thread::sleep(Duration::from_millis(200));
    call_until_ok(&addr, &["RPUSH", "q:list", "item-1"]);
    let retried = retry.join().unwrap();
    match &retried {
        Ok(reply @ Reply::Array(Some(_))) => assert_eq!(texts(reply), ["q:list", "item-1"]),
        other => {
            // An error the client can retry (e.g. the new leader still starting): the
            // element must still be there.
            println!("BLPOP on the new leader answered {other:?}");
            assert_eq!(
                texts(&call_until_ok(&addr, &["LRANGE", "q:list", "0", "-1"])),
                ["item-1"]
            );
            return;
        }
    }
    assert_eq!(
        call_until_ok(&addr, &["LLEN", "q:list"]),
        Reply::Integer(0),
        "popped once"
    );
    assert_eq!(
        call_until_ok(&addr, &["EXISTS", "tx:key"]),
        Reply::Integer(0),
        "the MULTI of the dead connection applied"
    );
}

/// A redis-py `RedisCluster` application blocked in `BLPOP` that retries on errors, as
/// applications do: its agent's SIGKILL closes the connection, the retry refreshes the
/// topology from the gateway seed and blocks on the new leader, and the element pushed
/// after the failover is popped exactly once.
const PY_BLOCKED: &str = r#"
import sys, time
from redis.cluster import RedisCluster
rc = RedisCluster(host="127.0.0.1", port=int(sys.argv[1]), decode_responses=True)
assert rc.get_node_from_key("q:py").port != int(sys.argv[1]), "must talk to an agent"
print("ready", flush=True)
deadline = time.time() + 120
while True:
    try:
        print("popped", rc.blpop(["q:py"], timeout=100), flush=True)
        break
    except Exception as e:
        print("retry", type(e).__name__, e, flush=True)
        if time.time() > deadline:
            raise
        time.sleep(0.2)
"#;

#[test]
fn redis_py_cluster_blpop_retries_across_a_leader_sigkill() {
    if !have(
        "python3",
        &["-c", "import redis.cluster"],
        "the Python redis client (pip install redis)",
    ) {
        return;
    }
    let cluster = Cluster::start(4, &[]);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    cluster.apply(&cluster.write_spec("kv.toml", &kv_spec("rooms", 1, port)));
    cluster.wait_service_healthy("rooms", 1);
    wait_resp_ready(&addr);
    let leader = wait_for("a leader with a RESP address", WAIT, || {
        let parts = cluster.try_json(&["get", "partitions", "rooms"])?;
        let leader = &parts.as_array()?[0]["leader"];
        leader["resp_addr"].as_str()?;
        Some((
            leader["name"].as_str()?.to_string(),
            leader["node_id"].as_u64()?,
        ))
    });
    // redis-py builds its slot map once, from the seed's CLUSTER SLOTS, and gives up if a
    // slot is uncovered. The gateway's map follows the API on its own beat, so asked now
    // (the API already shows the leader) the gateway holds the answer until its map
    // covers the slots: one ask must list the range.
    let mut seed = Resp::connect(&addr).expect("connect to the gateway's RESP endpoint");
    match seed.call(&["CLUSTER", "SLOTS"]).expect("CLUSTER SLOTS") {
        Reply::Array(Some(slots)) => assert_eq!(slots.len(), 1, "one range: {slots:?}"),
        other => panic!("CLUSTER SLOTS answered {other:?}"),
    }
    let script = cluster.test_dir().join("blocked.py");
    std::fs::write(&script, PY_BLOCKED).unwrap();
    let mut child = Command::new("python3")
        .arg(&script)
        .arg(port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the redis-py client");
    let (lines_in, lines) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("redis-py: {line}");
            if lines_in.send(line).is_err() {
                return;
            }
        }
    });
    let ready = lines
        .recv_timeout(WAIT)
        .expect("the redis-py client started");
    assert_eq!(ready, "ready");
    std::thread::sleep(Duration::from_millis(500));
    sigkill(cluster.agent_pid(&leader.0).expect("the leader's agent"));
    wait_for("a new leader with a RESP address", WAIT, || {
        let parts = cluster.try_json(&["get", "partitions", "rooms"])?;
        let new = &parts.as_array()?[0]["leader"];
        new["resp_addr"].as_str()?;
        new["node_id"].as_u64().filter(|id| *id != leader.1)
    });
    call_until_ok(&addr, &["RPUSH", "q:py", "item-1"]);
    let popped = loop {
        let line = lines
            .recv_timeout(REPLY_WAIT)
            .expect("the redis-py client answered");
        if line.starts_with("popped") {
            break line;
        }
    };
    // redis-py answers a tuple or a list depending on its version.
    assert!(
        popped.contains("'q:py', 'item-1'"),
        "redis-py popped {popped}"
    );
    assert!(child.wait().unwrap().success());
    assert_eq!(
        call_until_ok(&addr, &["LLEN", "q:py"]),
        Reply::Integer(0),
        "popped once"
    );
}
