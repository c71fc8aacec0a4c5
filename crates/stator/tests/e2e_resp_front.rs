//! End-to-end: the gateway's Redis front through the real `stator` binary, with real
//! redis-cli and redis-py: a password and an ACL user from the spec, pub/sub, RESP3,
//! keyspace commands and transactions.
//!
//! Keyspace commands and transactions need the kv machine of issue 12 part A; until it is
//! there those parts print `SKIPPED: ...` (and fail under `STATOR_REQUIRE_ALL=1`).

mod common;

use common::{free_port, have, require_all, run, wait_for, Cluster, Reply, Resp, WAIT};
use std::io::Write;

fn sha1_hex(text: &str) -> String {
    stator_kv::scripting::sha1_hex(text.as_bytes())
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let port = port.to_string();
    let mut all = vec!["-p", &port, "--no-auth-warning"];
    all.extend(args);
    run("redis-cli", &all).1.trim().to_string()
}

#[test]
fn password_acl_pubsub_and_resp3_with_real_clients() {
    let cluster = Cluster::start(3, &[]);
    let dir = cluster.test_dir();
    let password_file = dir.join("kv.pass");
    let reader_file = dir.join("reader.pass");
    std::fs::File::create(&password_file)
        .unwrap()
        .write_all(b"e2e-secret\n")
        .unwrap();
    std::fs::write(&reader_file, "r3ader\n").unwrap();
    let port = free_port();
    let spec = format!(
        "name = \"guarded\"\nkind = \"replicated\"\npartitions = 1\nreplicas = 3\n\
         app = {{ builtin = \"kv\" }}\n\
         resources = {{ cpu = \"250m\", memory = \"128Mi\" }}\n\
         [expose]\nresp = \"127.0.0.1:{port}\"\n\
         [expose.auth]\npassword_file = \"{}\"\n\
         [[expose.auth.users]]\nname = \"reader\"\npassword_file = \"{}\"\n\
         commands = [\"+@read\"]\nkeys = [\"user:*\"]\n\
         [[expose.auth.users]]\nname = \"scripter\"\npassword_file = \"{}\"\n\
         commands = [\"+@all\"]\nkeys = [\"user:*\"]\n\
         [[expose.auth.users]]\nname = \"noset\"\npassword_file = \"{}\"\n\
         commands = [\"+@all\", \"-set\"]\nkeys = [\"*\"]\n",
        password_file.display(),
        reader_file.display(),
        reader_file.display(),
        reader_file.display()
    );
    cluster.apply(&cluster.write_spec("guarded.toml", &spec));
    cluster.wait_service_healthy("guarded", 1);
    let addr = format!("127.0.0.1:{port}");
    wait_for(
        &format!("{addr} to accept an authenticated SET"),
        WAIT,
        || {
            let mut c = Resp::connect(&addr).ok()?;
            match c.call(&["AUTH", "e2e-secret"]).ok()? {
                Reply::Simple(s) if s == "OK" => {}
                _ => return None,
            }
            match c.call(&["SET", "user:1", "ann"]).ok()? {
                Reply::Simple(s) if s == "OK" => Some(()),
                _ => None,
            }
        },
    );

    if have("redis-cli", &["--version"], "redis-tools") {
        assert_eq!(
            redis_cli(port, &["GET", "user:1"]),
            "NOAUTH Authentication required."
        );
        let refused = redis_cli(port, &["-a", "wrong", "GET", "user:1"]);
        assert!(
            refused.contains(
                "AUTH failed: WRONGPASS invalid username-password pair or user is disabled."
            ) && refused.contains("NOAUTH Authentication required."),
            "{refused}"
        );
        assert_eq!(
            redis_cli(port, &["-a", "e2e-secret", "GET", "user:1"]),
            "ann"
        );
        assert_eq!(
            redis_cli(
                port,
                &["--user", "reader", "--pass", "r3ader", "GET", "user:1"]
            ),
            "ann"
        );
        assert_eq!(
            redis_cli(
                port,
                &["--user", "reader", "--pass", "r3ader", "SET", "user:1", "x"]
            ),
            "NOPERM this user has no permissions to run the 'set' command"
        );
        assert_eq!(
            redis_cli(
                port,
                &["--user", "reader", "--pass", "r3ader", "ACL", "WHOAMI"]
            ),
            "NOPERM this user has no permissions to run the 'acl|whoami' command"
        );
        assert_eq!(
            redis_cli(port, &["-a", "e2e-secret", "ACL", "USERS"]),
            "default\nnoset\nreader\nscripter"
        );
        // A script reaches only the keys of its user's patterns, whatever its KEYS say.
        let scripter = ["--user", "scripter", "--pass", "r3ader"];
        let eval = |body: &str, args: &[&str]| {
            let mut all = scripter.to_vec();
            all.extend(["EVAL", body]);
            all.extend(args);
            redis_cli(port, &all)
        };
        assert_eq!(
            eval("return redis.call('get', KEYS[1])", &["1", "user:1"]),
            "ann"
        );
        // `{user:1}secret` is in user:1's slot but outside the user's `user:*`.
        let outside = "return redis.call('set', '{user:1}secret', 'x')";
        assert_eq!(
            eval(outside, &["1", "user:1"]),
            format!(
                "ERR The user executing the script can't access at least one of the keys mentioned in the command arguments script: {}, on @user_script:1.",
                sha1_hex(outside)
            )
        );
        assert_eq!(
            redis_cli(port, &["-a", "e2e-secret", "EXISTS", "{user:1}secret"]),
            "0"
        );
        // Scripts without KEYS run too (on slot 0's partition: here, every key).
        let keyless = "return redis.call('get', 'user:1')";
        assert_eq!(
            redis_cli(port, &["-a", "e2e-secret", "EVAL", keyless, "0"]),
            "ann"
        );
        assert_eq!(eval(keyless, &["0"]), "ann");
        let keyless_outside = "return redis.call('get', 'secret')";
        assert!(
            eval(keyless_outside, &["0"]).starts_with(
                "ERR The user executing the script can't access at least one of the keys"
            ),
            "a keyless script reached a key outside the user's patterns"
        );
        // A script runs only the commands its user may run (every replica checks it).
        let noset = |body: &str| {
            redis_cli(
                port,
                &[
                    "--user", "noset", "--pass", "r3ader", "EVAL", body, "1", "user:1",
                ],
            )
        };
        let set_in_script = "return redis.call('set', KEYS[1], 'changed')";
        assert_eq!(
            noset(set_in_script),
            format!(
                "ERR The user executing the script can't run this command or subcommand script: {}, on @user_script:1.",
                sha1_hex(set_in_script)
            )
        );
        assert_eq!(noset("return redis.call('get', KEYS[1])"), "ann");
        assert_eq!(
            redis_cli(port, &["-a", "e2e-secret", "GET", "user:1"]),
            "ann"
        );
        let size = redis_cli(port, &["-a", "e2e-secret", "DBSIZE"]);
        if size.starts_with("ERR unknown command") {
            assert!(
                !require_all(),
                "STATOR_REQUIRE_ALL=1 but the kv machine has no DBSIZE"
            );
            println!("SKIPPED: the kv machine has no DBSIZE yet (issue 12 part A)");
        } else {
            assert!(size.parse::<u64>().unwrap() >= 1, "{size}");
            assert_eq!(
                redis_cli(port, &["-a", "e2e-secret", "KEYS", "user:*"]),
                "user:1"
            );
        }
    }

    if have(
        "python3",
        &["-c", "import redis"],
        "the Python redis client (pip install redis)",
    ) {
        let script = format!(
            r#"
import time, redis
for protocol in (2, 3):
    try:
        redis.Redis(host="127.0.0.1", port={port}, protocol=protocol).get("user:1")
        raise SystemExit("no AUTH yet the GET ran")
    except redis.exceptions.AuthenticationError:
        pass
    r = redis.Redis(host="127.0.0.1", port={port}, password="e2e-secret",
                    decode_responses=True, protocol=protocol)
    assert r.ping()
    assert r.get("user:1") == "ann"
    assert r.get("py:missing") is None
    assert r.acl_whoami() == "default"
    assert r.config_get("save") == {{"save": ""}}, r.config_get("save")
    reader = redis.Redis(host="127.0.0.1", port={port}, username="reader",
                         password="r3ader", decode_responses=True, protocol=protocol)
    assert reader.get("user:1") == "ann"
    try:
        reader.set("user:1", "x")
        raise SystemExit("the reader wrote")
    except redis.exceptions.NoPermissionError:
        pass
    # Pub/Sub: subscribe on one connection, publish on another.
    p = r.pubsub()
    p.subscribe("room:%d" % protocol)
    confirm = p.get_message(timeout=10)
    assert confirm and confirm["type"] == "subscribe", confirm
    assert r.publish("room:%d" % protocol, "hi") == 1
    deadline = time.time() + 10
    message = None
    while message is None and time.time() < deadline:
        message = p.get_message(timeout=1)
    assert message and message["type"] == "message" and message["data"] == "hi", message
    p.close()
    # Transactions (need the kv machine of issue 12 part A).
    try:
        t = r.pipeline(transaction=True)
        t.set("{{tx}}a", "1")
        t.incr("{{tx}}a")
        assert t.execute() == [True, 2]
    except redis.exceptions.ResponseError as e:
        assert "unknown command" in str(e), e
        print("SKIPPED: transactions need the kv machine of issue 12 part A: %s" % e)
print("redis-py ok")
"#
        );
        let (ok, out) = run("python3", &["-c", &script]);
        assert!(ok && out.contains("redis-py ok"), "redis-py failed: {out}");
        if out.contains("SKIPPED") {
            assert!(!require_all(), "STATOR_REQUIRE_ALL=1: {out}");
            println!("{out}");
        }
    }
}
