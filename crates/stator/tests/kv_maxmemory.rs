//! End-to-end: the built-in kv's memory budget through the real binary. A kv service
//! with `maxmemory = "1Mi"` takes writes until its data would pass the budget, then
//! answers Redis' exact `OOM command not allowed when used memory > 'maxmemory'.` (read
//! here with `redis-cli`), while reads and deletes still work and a delete makes room.
//!
//! Needs `redis-cli` (redis-tools); without it the test prints `SKIPPED: ...` unless
//! `STATOR_REQUIRE_ALL=1`.

mod common;

use common::{free_port, have, wait_resp_ready, Cluster, Reply, Resp};
use std::process::Command;

const OOM: &str = "OOM command not allowed when used memory > 'maxmemory'.";

/// `redis-cli -p port args...`: its stdout, trimmed.
fn redis_cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[test]
fn kv_writes_past_maxmemory_get_redis_oom_error_and_deletes_make_room() {
    if !have(
        "redis-cli",
        &["--version"],
        "the OOM reply is read with redis-cli",
    ) {
        return;
    }
    let cluster = Cluster::start(1, &[]);
    let port = free_port();
    let spec = format!(
        "name = \"cache\"\nkind = \"replicated\"\npartitions = 1\nreplicas = 1\n\
         app = {{ builtin = \"kv\" }}\nexpose = {{ resp = \"127.0.0.1:{port}\" }}\n\
         maxmemory = \"1Mi\"\n"
    );
    cluster.apply(&cluster.write_spec("cache.toml", &spec));
    let addr = format!("127.0.0.1:{port}");
    wait_resp_ready(&addr);

    // 10 KiB values: the budget holds about a hundred of them.
    let value = "v".repeat(10 * 1024);
    let mut client = Resp::connect(&addr).unwrap();
    let mut stored = 0;
    let refusal = loop {
        assert!(
            stored < 200,
            "1 MiB budget not enforced after {stored} x 10 KiB"
        );
        match client
            .call(&["SET", &format!("key:{stored}"), &value])
            .unwrap()
        {
            Reply::Simple(ok) if ok == "OK" => stored += 1,
            Reply::Error(error) => break error,
            other => panic!("SET answered {other:?}"),
        }
    };
    assert_eq!(refusal, OOM);
    assert!(stored >= 90, "only {stored} x 10 KiB fit in 1 MiB");

    // What a Redis user sees, with Redis' own client.
    assert_eq!(redis_cli(port, &["SET", "one-more", &value]), OOM);
    assert_eq!(redis_cli(port, &["RPUSH", "list", &value]), OOM);
    // Reads and deletes still work; a delete makes room again.
    assert_eq!(redis_cli(port, &["GET", "key:0"]), value);
    assert_eq!(redis_cli(port, &["EXISTS", "one-more"]), "0");
    assert_eq!(redis_cli(port, &["DEL", "key:0", "key:1"]), "2");
    assert_eq!(redis_cli(port, &["SET", "one-more", &value]), "OK");
    assert_eq!(
        redis_cli(port, &["STRLEN", "one-more"]),
        value.len().to_string()
    );
}
