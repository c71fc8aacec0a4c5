//! End-to-end: pub/sub across the gateway and the agents' cluster-mode listeners (the
//! pub/sub bus), and keyspace notifications read with redis-py, through the real
//! `stator` binary.

mod common;

use common::{free_port, have, kv_spec, wait_for, Cluster, Reply, Resp, WAIT};
use std::process::Command;
use std::time::{Duration, Instant};

/// How long one read for a pushed message waits before the test publishes again.
const READ_SLICE: Duration = Duration::from_millis(300);

fn bulk(text: &str) -> Reply {
    Reply::Bulk(Some(text.as_bytes().to_vec()))
}

/// Publishes `channel` messages through `publisher` until `subscriber` receives one
/// (links between peers come up within a few seconds of a start; earlier messages may
/// be lost, as Redis allows); returns the text it read.
fn publish_until_received(
    publisher: &mut Resp,
    command: &str,
    subscriber: &mut Resp,
    kind: &str,
    channel: &str,
) -> String {
    let deadline = Instant::now() + WAIT;
    let mut sent = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "no {command} on {channel} reached the subscriber within {WAIT:?}"
        );
        sent += 1;
        let message = format!("hello-{sent}");
        match publisher.call(&[command, channel, &message]) {
            Ok(Reply::Integer(_)) => {}
            other => panic!("{command} answered {other:?}"),
        }
        if let Ok(Reply::Array(Some(items))) = subscriber.next_reply(READ_SLICE) {
            assert_eq!(items[0], bulk(kind), "{items:?}");
            assert_eq!(items[1], bulk(channel), "{items:?}");
            let Reply::Bulk(Some(text)) = &items[2] else {
                panic!("message without text: {items:?}")
            };
            return String::from_utf8(text.clone()).unwrap();
        }
    }
}

fn subscribe(addr: &str, command: &str, channel: &str) -> Resp {
    let mut subscriber = Resp::connect(addr).expect("connect a subscriber");
    subscriber.send(&[command, channel]).unwrap();
    match subscriber.next_reply(Duration::from_secs(10)).unwrap() {
        Reply::Array(Some(items)) => assert_eq!(items[1], bulk(channel), "{items:?}"),
        other => panic!("{command} answered {other:?}"),
    }
    subscriber
}

#[test]
fn messages_cross_gateways_and_agents_and_keyspace_events_reach_redis_py() {
    let cluster = Cluster::start(3, &[]);
    let port = free_port();
    cluster.apply(&cluster.write_spec("rooms.toml", &kv_spec("rooms", 2, port)));
    cluster.wait_service_healthy("rooms", 2);
    let gateway = format!("127.0.0.1:{port}");
    common::wait_resp_ready(&gateway);
    // Two agents' cluster-mode listeners, neither of them the gateway.
    let agents: Vec<String> = wait_for("agents' RESP listeners in the map", WAIT, || {
        let partitions = cluster.partitions("rooms");
        let mut addrs: Vec<String> = partitions[0]["members"]
            .as_array()?
            .iter()
            .filter_map(|m| m["resp_addr"].as_str().map(str::to_string))
            .collect();
        addrs.sort();
        addrs.dedup();
        (addrs.len() >= 2).then_some(addrs)
    });

    // PUBLISH through the gateway reaches a subscriber on an agent...
    let mut on_agent = subscribe(&agents[0], "SUBSCRIBE", "room:1");
    let mut through_gateway = Resp::connect(&gateway).unwrap();
    let text = publish_until_received(
        &mut through_gateway,
        "PUBLISH",
        &mut on_agent,
        "message",
        "room:1",
    );
    assert!(text.starts_with("hello-"), "{text}");
    // ...and PUBLISH through another agent reaches a subscriber on the gateway.
    let mut on_gateway = subscribe(&gateway, "SUBSCRIBE", "room:2");
    let mut through_agent = Resp::connect(&agents[1]).unwrap();
    publish_until_received(
        &mut through_agent,
        "PUBLISH",
        &mut on_gateway,
        "message",
        "room:2",
    );
    // PUBSUB NUMSUB counts the subscribers of the whole service, wherever they are.
    wait_for(
        "PUBSUB NUMSUB room:1 = 1 through the gateway",
        WAIT,
        || match through_gateway.call(&["PUBSUB", "NUMSUB", "room:1"]).ok()? {
            Reply::Array(Some(items)) if items.get(1) == Some(&Reply::Integer(1)) => Some(()),
            _ => None,
        },
    );
    // SPUBLISH goes through the slot's leader and back to a shard subscriber anywhere.
    let mut shard_on_gateway = subscribe(&gateway, "SSUBSCRIBE", "{game}:events");
    publish_until_received(
        &mut through_gateway,
        "SPUBLISH",
        &mut shard_on_gateway,
        "smessage",
        "{game}:events",
    );

    // Keyspace notifications with redis-py.
    if !have(
        "python3",
        &["-c", "import redis"],
        "python3-redis (redis-py), for the keyspace notification part",
    ) {
        return;
    }
    assert_eq!(
        through_gateway
            .call(&["CONFIG", "SET", "notify-keyspace-events", "KQ"])
            .unwrap(),
        Reply::Error(
            "ERR CONFIG SET failed (possibly related to argument 'notify-keyspace-events') - Invalid event class character. Use 'Ag$lshzxeKEtmdn'."
                .into()
        )
    );
    let script = format!(
        r#"
import redis, time
r = redis.Redis(port={port}, decode_responses=True)
assert r.config_set("notify-keyspace-events", "KEA")
assert r.config_get("notify-keyspace-events") == {{"notify-keyspace-events": "AKE"}}
p = r.pubsub()
p.psubscribe("__keyspace@0__:{{n}}*")
assert p.get_message(timeout=5)["type"] == "psubscribe"
# The flags reach every leader within about a second: write until an event arrives.
deadline = time.time() + 60
while True:
    assert time.time() < deadline, "no keyspace event arrived"
    r.set("{{n}}probe", "1")
    m = p.get_message(timeout=0.5)
    if m and m["type"] == "pmessage":
        break
r.set("{{n}}k", "v")
r.hset("{{n}}h", "f", "v")
r.expire("{{n}}k", 100)
r.delete("{{n}}k")
r.set("{{n}}e", "v", px=50)
time.sleep(0.3)
r.set("{{n}}x", "1")
seen = []
deadline = time.time() + 30
while len(seen) < 8 and time.time() < deadline:
    m = p.get_message(timeout=1)
    if m and m["type"] == "pmessage" and not m["channel"].endswith("probe"):
        seen.append((m["channel"].split(":", 1)[1], m["data"]))
assert seen == [
    ("{{n}}k", "set"), ("{{n}}h", "hset"), ("{{n}}k", "expire"), ("{{n}}k", "del"),
    ("{{n}}e", "set"), ("{{n}}e", "expire"), ("{{n}}e", "expired"), ("{{n}}x", "set"),
], seen
r.config_set("notify-keyspace-events", "")
print("keyspace events ok")
"#
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("keyspace events ok"),
        "redis-py keyspace script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
