//! End-to-end: who may talk to the data in cluster mode. The spec's `expose.auth` is
//! asked for on the gateway's RESP endpoint and on every agent's cluster listener alike,
//! and `expose.tls` encrypts both; driven with the real binary and `redis-cli`, reading
//! the reply text as a user would.
//!
//! Tests assert behaviour, never timings. Tests that need an outside program (redis-cli,
//! openssl) print `SKIPPED: ...` when it is missing, unless `STATOR_REQUIRE_ALL=1`.

mod common;

use common::{free_port, have, run, wait_for, Cluster, WAIT};
use serde_json::Value;
use std::path::Path;

const PASSWORD: &str = "cluster-secret";

/// `redis-cli -p port <args>`, the reply text trimmed.
fn redis_cli(port: u16, args: &[&str]) -> String {
    let port = port.to_string();
    let mut all = vec!["-p", &port, "--no-auth-warning"];
    all.extend(args);
    run("redis-cli", &all).1.trim().to_string()
}

/// One command of each family a kv service serves, keys on one slot (`{fam}`).
const FAMILIES: &[&[&str]] = &[
    &["SET", "{fam}:string", "v"],
    &["GET", "{fam}:string"],
    &["HSET", "{fam}:hash", "field", "v"],
    &["LPUSH", "{fam}:list", "v"],
    &["SADD", "{fam}:set", "v"],
    &["ZADD", "{fam}:zset", "1", "v"],
    &["EXISTS", "{fam}:string"],
    &["EXPIRE", "{fam}:string", "600"],
    &["PUBLISH", "room", "hello"],
    &["MULTI"],
    &["DBSIZE"],
];

/// Every family answers `NOAUTH` without AUTH and anything else with it, on `port`
/// (`extra` holds redis-cli's connection options: `-c`, `--tls`, ...).
fn assert_every_family_guarded(port: u16, extra: &[&str], what: &str) {
    for command in FAMILIES {
        let mut args: Vec<&str> = extra.to_vec();
        args.extend_from_slice(command);
        assert_eq!(
            redis_cli(port, &args),
            "NOAUTH Authentication required.",
            "{what}: {command:?} without AUTH"
        );
        let mut args: Vec<&str> = extra.to_vec();
        args.extend_from_slice(&["-a", PASSWORD]);
        args.extend_from_slice(command);
        let reply = redis_cli(port, &args);
        assert!(
            !reply.contains("NOAUTH") && !reply.contains("WRONGPASS"),
            "{what}: {command:?} with AUTH answered {reply:?}"
        );
    }
    let mut args: Vec<&str> = extra.to_vec();
    args.extend_from_slice(&["-a", "wrong", "GET", "{fam}:string"]);
    let refused = redis_cli(port, &args);
    assert!(
        refused.contains("WRONGPASS") && refused.contains("NOAUTH"),
        "{what}: a wrong password: {refused}"
    );
    let mut args: Vec<&str> = extra.to_vec();
    args.extend_from_slice(&["-a", PASSWORD, "GET", "{fam}:string"]);
    assert_eq!(redis_cli(port, &args), "v", "{what}: the value written");
}

/// The RESP port of an agent leading a partition of `service`, once every leader
/// serves RESP.
fn agent_port(cluster: &Cluster, service: &str, partitions: usize) -> u16 {
    let parts: Vec<Value> = wait_for(
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
    );
    let addr = parts[0]["leader"]["resp_addr"].as_str().unwrap();
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// A self-signed certificate for 127.0.0.1 (its own CA), made with the openssl CLI.
fn make_certificate(dir: &Path) -> Option<(String, String)> {
    if !have(
        "openssl",
        &["version"],
        "openssl, to make a test certificate",
    ) {
        return None;
    }
    let cert = dir.join("resp-cert.pem").display().to_string();
    let key = dir.join("resp-key.pem").display().to_string();
    let (ok, out) = run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &cert,
            "-days",
            "2",
            "-subj",
            "/CN=stator-test",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
    );
    assert!(ok, "openssl could not make a certificate: {out}");
    Some((cert, key))
}

/// `expose.auth` guards every command family on the gateway and on an agent's cluster
/// listener; with `expose.tls` both speak TLS only, and `redis-cli --tls --cacert`
/// reaches them (`-c` following MOVED between agents, authenticating again).
#[test]
fn auth_and_tls_on_the_gateway_and_every_agent() {
    if !have("redis-cli", &["--version"], "redis-tools") {
        return;
    }
    let cluster = Cluster::start(3, &[]);
    let dir = cluster.test_dir();
    let password_file = dir.join("kv.pass");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let port = free_port();
    let spec = |name: &str, port: u16, tls: &str| {
        format!(
            "name = \"{name}\"\nkind = \"replicated\"\npartitions = 2\nreplicas = 3\n\
             app = {{ builtin = \"kv\" }}\n\
             resources = {{ cpu = \"250m\", memory = \"128Mi\" }}\n\
             [expose]\nresp = \"127.0.0.1:{port}\"\n{tls}\
             [expose.auth]\npassword_file = \"{}\"\n",
            password_file.display()
        )
    };
    cluster.apply(&cluster.write_spec("guarded.toml", &spec("guarded", port, "")));
    cluster.wait_service_healthy("guarded", 2);
    let agent = agent_port(&cluster, "guarded", 2);
    wait_for("the gateway's RESP endpoint", WAIT, || {
        redis_cli(port, &["-a", PASSWORD, "PING"])
            .eq("PONG")
            .then_some(())
    });
    // The agent's listener learns `expose.auth` with its heartbeat answer.
    wait_for("the agent to ask for AUTH", WAIT, || {
        redis_cli(agent, &["GET", "{fam}:string"])
            .starts_with("NOAUTH")
            .then_some(())
    });
    assert_every_family_guarded(port, &[], "gateway");
    assert_every_family_guarded(agent, &["-c"], "agent");
    assert_eq!(
        redis_cli(
            agent,
            &["-c", "--user", "default", "--pass", PASSWORD, "CLUSTER", "MYID"]
        )
        .len(),
        40,
        "an authenticated cluster client sees the agent's node id"
    );

    let Some((cert, key)) = make_certificate(&dir) else {
        return;
    };
    let tls_port = free_port();
    let tls_line = format!("tls = {{ cert_file = \"{cert}\", key_file = \"{key}\" }}\n");
    cluster.apply(&cluster.write_spec("sealed.toml", &spec("sealed", tls_port, &tls_line)));
    cluster.wait_service_healthy("sealed", 2);
    let tls_agent = agent_port(&cluster, "sealed", 2);
    let tls = ["--tls", "--cacert", cert.as_str()];
    wait_for("the gateway's TLS endpoint", WAIT, || {
        let mut args = tls.to_vec();
        args.extend_from_slice(&["-a", PASSWORD, "PING"]);
        (redis_cli(tls_port, &args) == "PONG").then_some(())
    });
    wait_for("the agent's TLS listener", WAIT, || {
        let mut args = tls.to_vec();
        args.extend_from_slice(&["-c", "-a", PASSWORD, "SET", "sealed", "1"]);
        (redis_cli(tls_agent, &args) == "OK").then_some(())
    });
    assert_every_family_guarded(tls_port, &tls, "gateway over TLS");
    let mut cluster_tls = tls.to_vec();
    cluster_tls.push("-c");
    assert_every_family_guarded(tls_agent, &cluster_tls, "agent over TLS");
    for plain_port in [tls_port, tls_agent] {
        let reply = redis_cli(plain_port, &["-a", PASSWORD, "GET", "sealed"]);
        assert_ne!(reply, "1", "plain TCP to a TLS endpoint must not be served");
    }
}
