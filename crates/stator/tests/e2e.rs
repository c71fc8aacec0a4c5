//! End-to-end: the real `stator` binary driven as a user would. `stator up` in a temp
//! directory, specs applied with `stator apply`, real redis-cli, redis-benchmark and
//! redis-py against the gateway, agents killed with SIGKILL, a node drained, a stateless
//! service and a job, malformed specs, and calls without a token.
//!
//! Every test starts its own cluster on free loopback ports and kills it on drop. Tests
//! assert behaviour (nothing acknowledged lost, a new leader, the replication factor
//! restored), never timings; every wait is a bounded poll. Tests that need an outside
//! program print `SKIPPED: ...` when it is missing, unless `STATOR_REQUIRE_ALL=1`.

mod common;

use common::{
    assert_all_readable, busiest_leader, children_of, cmdline, environ, free_port, have, kv_spec,
    listening_addrs, repo_root, sigkill, wait_for, wait_resp_ready, Cluster, Resp, Writers, WAIT,
};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs `program args` with `stdin`, returning (success, stdout + stderr).
fn run(program: &str, args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let port = port.to_string();
    let mut all = vec!["-p", &port];
    all.extend(args);
    run("redis-cli", &all, "").1.trim().to_string()
}

/// The kv example with its RESP endpoint moved to a free port.
fn kv_example_on(cluster: &Cluster, port: u16) -> std::path::PathBuf {
    let text = std::fs::read_to_string(repo_root().join("examples/kv.toml")).unwrap();
    assert!(text.contains("127.0.0.1:6380"), "examples/kv.toml changed");
    cluster.write_spec(
        "kv.toml",
        &text.replace("127.0.0.1:6380", &format!("127.0.0.1:{port}")),
    )
}

fn node_id(cluster: &Cluster, name: &str) -> u64 {
    cluster
        .nodes()
        .iter()
        .find(|n| n["name"] == name && n["state"] == "ready")
        .and_then(|n| n["id"].as_u64())
        .unwrap_or_else(|| panic!("no ready node {name}"))
}

/// (a) up + apply the kv example; redis-cli (one-shot and piped), redis-benchmark with
/// and without pipelining, and redis-py all work unmodified.
#[test]
fn kv_example_serves_real_redis_clients() {
    let cluster = Cluster::start(3, &[]);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    cluster.apply(&kv_example_on(&cluster, port));
    let parts = cluster.wait_service_healthy("sessions", 4);
    assert!(parts
        .iter()
        .all(|p| p["members"].as_array().unwrap().len() == 3));
    wait_resp_ready(&addr);

    // Our own client first: it needs nothing installed.
    let mut c = Resp::connect(&addr).unwrap();
    assert_eq!(
        c.call(&["SET", "own", "client"]).unwrap(),
        common::Reply::Simple("OK".into())
    );
    assert_eq!(
        c.call(&["GET", "own"]).unwrap(),
        common::Reply::Bulk(Some(b"client".to_vec()))
    );

    if have("redis-cli", &["--version"], "redis-tools") {
        assert_eq!(redis_cli(port, &["PING"]), "PONG");
        assert_eq!(redis_cli(port, &["SET", "greeting", "hello"]), "OK");
        assert_eq!(redis_cli(port, &["GET", "greeting"]), "hello");
        assert_eq!(redis_cli(port, &["GET", "missing"]), "");
        for expected in 1..=3 {
            assert_eq!(redis_cli(port, &["INCR", "counter"]), expected.to_string());
        }
        assert_eq!(
            redis_cli(
                port,
                &["MSET", "{user:1}:name", "ana", "{user:1}:age", "30"]
            ),
            "OK"
        );
        assert_eq!(
            redis_cli(port, &["MGET", "{user:1}:name", "{user:1}:age"]),
            "ana\n30"
        );
        let unknown = redis_cli(port, &["NOSUCHCOMMAND", "x"]);
        assert!(unknown.contains("ERR unknown command"), "{unknown}");
        let cross = redis_cli(port, &["MSET", "a", "1", "b", "2"]);
        assert!(cross.contains("CROSSSLOT"), "{cross}");
        assert_eq!(
            redis_cli(port, &["GET", "a"]),
            "",
            "a refused MSET wrote nothing"
        );

        // Interactive-ish: commands on stdin, as a user typing into redis-cli.
        let (ok, out) = run(
            "redis-cli",
            &["-p", &port.to_string()],
            "PING\nSELECT 0\nSET typed yes\nGET typed\nECHO hi\nINCR counter\n",
        );
        assert!(ok, "{out}");
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        assert_eq!(lines, ["PONG", "OK", "OK", "yes", "hi", "4"], "{out}");
    }

    if have("redis-benchmark", &["--version"], "redis-tools") {
        for pipeline in ["16", "1"] {
            let (ok, out) = run(
                "redis-benchmark",
                &[
                    "-p",
                    &port.to_string(),
                    "-c",
                    "20",
                    "-n",
                    "5000",
                    "-P",
                    pipeline,
                    "-r",
                    "10000",
                    "-t",
                    "set,get,incr",
                    "-q",
                ],
                "",
            );
            assert!(ok, "redis-benchmark -P {pipeline} failed: {out}");
            for test in ["SET", "GET", "INCR"] {
                assert!(
                    out.lines()
                        .any(|l| l.contains(test) && l.contains("requests per second")),
                    "no {test} result from redis-benchmark -P {pipeline}: {out}"
                );
            }
            assert!(
                !out.to_lowercase().contains("error"),
                "redis-benchmark -P {pipeline} saw errors: {out}"
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
import redis
# Unmodified client defaults (redis-py 8 starts with HELLO 3), then RESP2 explicitly.
r = redis.Redis(host="127.0.0.1", port={port}, decode_responses=True)
assert r.ping() and r.set("py:default", "x") and r.get("py:default") == "x"
r = redis.Redis(host="127.0.0.1", port={port}, decode_responses=True, protocol=2)
assert r.ping()
assert r.set("py:k", "v1")
assert r.get("py:k") == "v1"
assert r.incr("py:n") == 1 and r.incr("py:n", 5) == 6
assert r.get("py:missing") is None
p = r.pipeline(transaction=False)
for i in range(50):
    p.set("py:p:%d" % i, str(i))
    p.incr("py:pn")
results = p.execute()
assert len(results) == 100, results
assert all(results[2 * i] is True for i in range(50)), results
assert [results[2 * i + 1] for i in range(50)] == list(range(1, 51)), results
assert [r.get("py:p:%d" % i) for i in range(50)] == [str(i) for i in range(50)]
assert r.get("py:pn") == "50"
assert r.mset({{"{{py}}a": "1", "{{py}}b": "2"}})
assert r.mget(["{{py}}a", "{{py}}b"]) == ["1", "2"]
print("redis-py ok")
"#
        );
        let (ok, out) = run("python3", &["-c", &script], "");
        assert!(ok && out.contains("redis-py ok"), "redis-py failed: {out}");
    }
}

/// (b) SIGKILL of the agent hosting the most leaders while clients write: new leaders
/// elsewhere, writes keep being acknowledged, the replication factor is restored, and
/// every acknowledged write reads back.
#[test]
fn sigkill_of_the_busiest_agent_loses_no_acknowledged_write() {
    let cluster = Cluster::start(4, &[]);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    cluster.apply(&cluster.write_spec("kv.toml", &kv_spec("sessions", 4, port)));
    let parts = cluster.wait_service_healthy("sessions", 4);
    wait_resp_ready(&addr);

    let victim = busiest_leader(&parts);
    let victim_id = node_id(&cluster, &victim);
    let pid = cluster
        .agent_pid(&victim)
        .unwrap_or_else(|| panic!("no agent process for {victim}"));

    let writers = Writers::start(&addr, "kill", 3);
    writers.wait_progress(300, "before the kill");
    sigkill(pid);

    wait_for(
        &format!("every partition led by a node other than {victim} (id {victim_id})"),
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
    writers.wait_progress(300, "after the failover");

    let healed = wait_for(
        "the replication factor restored without the killed node",
        WAIT,
        || {
            let parts = cluster.try_json(&["get", "partitions", "sessions"])?;
            let parts = parts.as_array()?.clone();
            let ok = parts.len() == 4
                && parts.iter().all(|p| {
                    let members = p["members"].as_array().unwrap();
                    p["replication_factor_met"] == true
                        && p["leader"]["node_id"].as_u64().is_some()
                        && members.len() == 3
                        && members
                            .iter()
                            .all(|m| m["alive"] == true && m["node_id"].as_u64() != Some(victim_id))
                });
            ok.then_some(parts)
        },
    );
    writers.wait_progress(100, "after healing");
    let acked = writers.finish();
    println!(
        "{} acknowledged writes; partitions after healing: {}",
        acked.len(),
        serde_json::to_string(&healed).unwrap()
    );
    assert_all_readable(&addr, &acked);

    let lost = cluster
        .nodes()
        .into_iter()
        .find(|n| n["id"].as_u64() == Some(victim_id));
    if let Some(lost) = lost {
        assert_ne!(
            lost["state"], "ready",
            "the killed node still counts as ready"
        );
    }
}

/// (c) `stator drain` while clients write: replicas move off the node by live
/// migration, the node ends drained, its agent still running, nothing acknowledged lost.
#[test]
fn drain_moves_replicas_away_without_losing_writes() {
    let cluster = Cluster::start(4, &[]);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    cluster.apply(&cluster.write_spec("kv.toml", &kv_spec("sessions", 4, port)));
    let parts = cluster.wait_service_healthy("sessions", 4);
    wait_resp_ready(&addr);

    // The node leading the most partitions: draining it moves leaders too.
    let target = busiest_leader(&parts);
    let target_id = node_id(&cluster, &target);
    let agent = cluster
        .agent_pid(&target)
        .expect("agent of the drained node");

    let writers = Writers::start(&addr, "drain", 3);
    writers.wait_progress(300, "before the drain");
    let out = cluster.stator_ok(&["drain", &target]);
    println!("stator drain {target}: {}", out.trim());

    wait_for(&format!("{target} to be drained"), WAIT, || {
        let nodes = cluster.try_json(&["get", "nodes"])?;
        nodes
            .as_array()?
            .iter()
            .any(|n| n["id"].as_u64() == Some(target_id) && n["state"] == "drained")
            .then_some(())
    });
    wait_for(
        &format!("no partition on {target}, RF met everywhere"),
        WAIT,
        || {
            let parts = cluster.try_json(&["get", "partitions", "sessions"])?;
            let parts = parts.as_array()?.clone();
            (parts.len() == 4
                && parts.iter().all(|p| {
                    let members = p["members"].as_array().unwrap();
                    p["replication_factor_met"] == true
                        && p["leader"]["node_id"]
                            .as_u64()
                            .is_some_and(|l| l != target_id)
                        && members.len() == 3
                        && members
                            .iter()
                            .all(|m| m["node_id"].as_u64() != Some(target_id))
                }))
            .then_some(())
        },
    );
    writers.wait_progress(200, "after the drain");
    let acked = writers.finish();
    println!("{} acknowledged writes across the drain", acked.len());
    assert_all_readable(&addr, &acked);

    assert!(
        std::path::Path::new(&format!("/proc/{agent}")).exists(),
        "draining must not kill the agent"
    );
    let drained = cluster
        .nodes()
        .into_iter()
        .find(|n| n["id"].as_u64() == Some(target_id))
        .unwrap();
    assert_eq!(drained["replicas"], 0, "{drained}");
}

/// A free port whose successor is free too (instance n serves on port + n).
fn free_port_pair() -> u16 {
    wait_for("two consecutive free ports", WAIT, || {
        let port = free_port();
        let next_free =
            port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok();
        next_free.then_some(port)
    })
}

/// A GET over a fresh connection: (status code, body); None if nothing answered.
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    runtime().block_on(async {
        let resp = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .ok()?
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.text().await.ok()?))
    })
}

/// (d) The stateless and job examples: instances ready and answering, directly and
/// through the gateway proxy; the job succeeded.
#[test]
fn stateless_service_and_job_examples_run() {
    if !have(
        "python3",
        &["--version"],
        "the stateless example runs a Python server",
    ) {
        return;
    }
    let cluster = Cluster::start(3, &[]);
    let port = free_port_pair();
    let web = std::fs::read_to_string(repo_root().join("examples/stateless.toml")).unwrap();
    // Instance n serves on port + n.
    assert!(
        web.contains("port = 8081"),
        "examples/stateless.toml changed"
    );
    cluster.apply(&cluster.write_spec(
        "stateless.toml",
        &web.replace("port = 8081", &format!("port = {port}")),
    ));
    cluster.apply(&repo_root().join("examples/job.toml"));

    let job = wait_for("hello-job to succeed", WAIT, || {
        let job = cluster.service("hello-job")?;
        assert_ne!(job["status"]["job_phase"], "failed", "{job}");
        (job["status"]["job_phase"] == "succeeded").then_some(job)
    });
    assert_eq!(job["status"]["completions_succeeded"], 2, "{job}");

    let web = wait_for("hello-web: 2 of 2 instances ready", WAIT, || {
        let web = cluster.service("hello-web")?;
        (web["status"]["instances_ready"] == 2 && web["status"]["instances_assigned"] == 2)
            .then_some(web)
    });
    // Each instance really serves on the address the server lists (its reply names it),
    // not just one process answering both readiness probes.
    let instances = web["instances"]
        .as_array()
        .unwrap_or_else(|| panic!("GET /v1/services lists no instances: {web}"));
    let mut names = BTreeSet::new();
    for instance in instances {
        let addr = instance["addr"].as_str().expect("an instance address");
        assert!(addr.starts_with("127.0.0.1:"), "{instance}");
        let id = instance["id"].as_str().unwrap();
        let (status, body) = wait_for(&format!("{id} to answer on {addr}"), WAIT, || {
            http_get(addr, "/")
        });
        assert_eq!(status, 200, "{body}");
        assert_eq!(body.trim(), format!("hello from {id}"));
        names.insert(body.trim().to_string());
    }
    assert_eq!(names.len(), 2, "{names:?}");

    // The gateway's proxy reaches both, round-robin.
    let gateway = cluster
        .gateway_http
        .trim_start_matches("http://")
        .to_string();
    let mut seen = BTreeSet::new();
    wait_for("the gateway proxy to reach both instances", WAIT, || {
        if let Some((200, body)) = http_get(&gateway, "/proxy/hello-web/") {
            seen.insert(body.trim().to_string());
        }
        (seen == names).then_some(())
    });
}

/// (e) Malformed specs: `stator apply` exits non-zero with one line naming the field, and
/// nothing is created; the API refuses the same specs with 400 or 422.
#[test]
fn malformed_specs_are_rejected_naming_the_field() {
    let cluster = Cluster::start(1, &[]);
    let good = kv_spec("bad", 2, 6399);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown.toml",
            format!("{good}bogus_field = 1\n"),
            "bogus_field",
        ),
        (
            "wrong-type.toml",
            good.replace("partitions = 2", "partitions = \"two\""),
            "partitions",
        ),
        (
            "zero-replicas.toml",
            good.replace("replicas = 3", "replicas = 0"),
            "replicas",
        ),
        (
            "huge.toml",
            good.replace("partitions = 2", "partitions = 1000000000"),
            "partitions",
        ),
        (
            "bad.yaml",
            "name: bad\napp: { builtin: kv\nreplicas: [3\n".to_string(),
            "YAML",
        ),
        (
            "unknown.yaml",
            "name: bad\napp: { builtin: kv }\nreplicaz: 3\n".to_string(),
            "replicaz",
        ),
    ];
    let rt = runtime();
    let http = reqwest::Client::new();
    for (file, text, field) in &cases {
        let path = cluster.write_spec(file, text);
        let out = cluster.stator(&["apply", "-f", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{file} was accepted");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{file}: want a one-line reason, got: {stderr}"
        );
        assert!(
            stderr.contains(field),
            "{file}: {stderr} does not name {field}"
        );
        println!("{file}: {}", stderr.trim());

        // The server validates too: a client that skips the CLI is refused.
        let content_type = if file.ends_with(".yaml") {
            "application/yaml"
        } else {
            "application/toml"
        };
        let (status, body) = rt.block_on(async {
            let resp = http
                .put(format!("{}/v1/services/bad", cluster.api))
                .bearer_auth(&cluster.token)
                .header("content-type", content_type)
                .body(text.clone())
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        });
        // 400 for what does not parse, 422 for values out of range.
        assert!(status == 400 || status == 422, "{file}: {status} {body}");
        assert!(body.contains(field), "{file}: {body} does not name {field}");
    }
    assert_eq!(
        cluster.services(),
        Vec::<Value>::new(),
        "nothing may be created"
    );
}

/// (f) Security: every /v1 route refuses a missing or wrong token, an agent with a wrong
/// join token cannot join, token files are private, and everything listens on loopback.
#[test]
fn unauthenticated_calls_and_agents_are_refused() {
    let cluster = Cluster::start(1, &[]);
    let server_dir = cluster.data_dir.join("server");
    let join_token = std::fs::read_to_string(server_dir.join("join-token")).unwrap();
    let join_token = join_token.trim();
    let routes: &[(&str, &str)] = &[
        ("GET", "/v1/nodes"),
        ("GET", "/v1/nodes/node-1"),
        ("POST", "/v1/nodes/node-1/drain"),
        ("GET", "/v1/services"),
        ("GET", "/v1/services/x"),
        ("PUT", "/v1/services/x"),
        ("DELETE", "/v1/services/x"),
        ("GET", "/v1/partitions"),
        ("GET", "/v1/cluster"),
        ("GET", "/v1/events"),
        ("POST", "/v1/agents/register"),
        ("POST", "/v1/agents/1/heartbeat"),
    ];
    let rt = runtime();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    rt.block_on(async {
        for (method, path) in routes {
            let is_agent_route = path.starts_with("/v1/agents/");
            // The other kind of token is as wrong as a made-up one.
            let other_token = if is_agent_route {
                cluster.token.as_str()
            } else {
                join_token
            };
            for token in [None, Some("not-the-token"), Some(other_token)] {
                let mut request = http
                    .request(method.parse().unwrap(), format!("{}{path}", cluster.api))
                    .header("content-type", "application/json")
                    .body("{}");
                if let Some(t) = token {
                    request = request.bearer_auth(t);
                }
                let status = request.send().await.unwrap().status().as_u16();
                assert_eq!(
                    status, 401,
                    "{method} {path} with token {token:?} answered {status}"
                );
            }
        }
        // The right token works (the routes exist; the 401s above are not 404s).
        let status = http
            .get(format!("{}/v1/nodes", cluster.api))
            .bearer_auth(&cluster.token)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 200);
    });

    // The CLI with a wrong token fails with a one-line reason.
    let bad_token = cluster.test_dir().join("bad-token");
    std::fs::write(&bad_token, "not-the-token\n").unwrap();
    let out = Command::new(common::stator_exe())
        .args(["--server", &cluster.api, "--token-file"])
        .arg(&bad_token)
        .args(["get", "nodes"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // An agent with a wrong join token is refused and exits.
    let mut intruder = Command::new(common::stator_exe())
        .args(["agent", "--server", &cluster.api, "--join-token-file"])
        .arg(&bad_token)
        .args(["--name", "intruder", "--data-dir"])
        .arg(cluster.test_dir().join("intruder"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for("the intruder agent to give up", WAIT, || {
        intruder.try_wait().unwrap()
    });
    let mut stderr = String::new();
    intruder
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let _ = intruder.kill();
    assert!(
        !status.success(),
        "an agent with a wrong join token ran: {stderr}"
    );
    println!("intruder agent: {}", stderr.trim());
    assert!(
        cluster.nodes().iter().all(|n| n["name"] != "intruder"),
        "the intruder joined"
    );

    // Token files are readable by their owner only.
    use std::os::unix::fs::PermissionsExt;
    for file in [
        server_dir.join("api-token"),
        server_dir.join("join-token"),
        cluster.context.clone(),
    ] {
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} has mode {mode:o}", file.display());
    }

    // Everything listens on loopback only.
    assert!(
        cluster.api.starts_with("http://127.0.0.1:"),
        "{}",
        cluster.api
    );
    assert!(
        cluster.gateway_http.starts_with("http://127.0.0.1:"),
        "{}",
        cluster.gateway_http
    );
    for node in cluster.nodes() {
        let addr = node["transport_addr"].as_str().unwrap();
        assert!(addr.starts_with("127.0.0.1:"), "transport on {addr}");
    }
    let listening = listening_addrs(&cluster.processes());
    // API, gateway HTTP and one agent transport at least.
    assert!(listening.len() >= 3, "listening sockets: {listening:?}");
    for addr in &listening {
        assert!(
            addr.starts_with("127.0.0.1:"),
            "something listens on {addr}: {listening:?}"
        );
    }
}

/// The game room's rules, as the reference the replicated app must match.
#[derive(Default)]
struct Room {
    players: BTreeMap<String, (i64, i64, u64)>, // x, y, moves
}

impl Room {
    fn apply(&mut self, command: &Value) {
        let player = command["player"].as_str().unwrap().to_string();
        match command["op"].as_str().unwrap() {
            "join" => {
                self.players.entry(player).or_insert((0, 0, 0));
            }
            "move" => {
                if let Some((x, y, moves)) = self.players.get_mut(&player) {
                    let step = |d: &Value| d.as_i64().unwrap().clamp(-5, 5);
                    *x = (*x + step(&command["dx"])).clamp(0, 99);
                    *y = (*y + step(&command["dy"])).clamp(0, 99);
                    *moves += 1;
                }
            }
            "leave" => {
                self.players.remove(&player);
            }
            op => panic!("no op {op}"),
        }
    }
}

/// The game_room.py process serving `partition` under agent `agent_pid`.
fn room_app_pid(agent_pid: u32, partition: u64) -> Option<u32> {
    children_of(agent_pid).into_iter().find(|&pid| {
        cmdline(pid).iter().any(|a| a.ends_with("game_room.py"))
            && environ(pid).get("STATOR_PARTITION") == Some(&partition.to_string())
    })
}

/// (g) The Python game room as a replicated service behind the gateway's HTTP call
/// route: SIGKILL of the app process at the leader, then at a follower; later calls
/// succeed and a linearizable read shows exactly the expected room.
#[test]
fn game_room_survives_app_kills_at_leader_and_follower() {
    if !have("python3", &["--version"], "the game room is a Python app") {
        return;
    }
    let cluster = Cluster::start(3, &[]);
    let app = repo_root().join("examples/apps/game_room.py");
    let text = std::fs::read_to_string(repo_root().join("examples/game-room.toml")).unwrap();
    assert!(text.contains("\"examples/apps/game_room.py\""));
    let spec = text.replace(
        "\"examples/apps/game_room.py\"",
        &format!("\"{}\"", app.display()),
    );
    cluster.apply(&cluster.write_spec("game-room.toml", &spec));
    let parts = cluster.wait_service_healthy("rooms", 2);

    const KEY: &str = "lobby";
    let slot = u64::from(stator_api::slot::key_slot(KEY.as_bytes()));
    let partition_of = |parts: &[Value]| -> Value {
        parts
            .iter()
            .find(|p| {
                p["slots"]["start"].as_u64().unwrap() <= slot
                    && slot <= p["slots"]["end_inclusive"].as_u64().unwrap()
            })
            .cloned()
            .expect("a partition owns the key's slot")
    };
    let partition = partition_of(&parts)["partition"].as_u64().unwrap();

    let rt = runtime();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let call = |body: &Value, read: bool| -> Value {
        let url = format!(
            "{}/v1/services/rooms/call?key={KEY}{}",
            cluster.gateway_http,
            if read { "&read=1" } else { "" }
        );
        rt.block_on(async {
            let resp = http.post(&url).body(body.to_string()).send().await.unwrap();
            let status = resp.status();
            let text = resp.text().await.unwrap();
            assert!(status.is_success(), "{body} -> {status}: {text}");
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{body} -> {text}: {e}"))
        })
    };
    let mut model = Room::default();
    let mut send = |commands: &[Value]| {
        for command in commands {
            let reply = call(command, false);
            assert!(reply.get("ok").is_some(), "{command} -> {reply}");
            model.apply(command);
        }
    };
    // The gateway may not have the new service in its map for a moment.
    wait_for("the gateway to route calls to rooms", WAIT, || {
        let url = format!(
            "{}/v1/services/rooms/call?key={KEY}&read=1",
            cluster.gateway_http
        );
        rt.block_on(async { http.post(&url).body("{}").send().await.ok() })
            .filter(|r| r.status().is_success())
    });

    send(&[
        json!({"op": "join", "player": "ana"}),
        json!({"op": "join", "player": "bo"}),
        json!({"op": "move", "player": "ana", "dx": 3, "dy": 4}),
        json!({"op": "join", "player": "cy"}),
        json!({"op": "move", "player": "bo", "dx": -2, "dy": 9}),
        json!({"op": "move", "player": "cy", "dx": 1, "dy": 1}),
    ]);

    let kill_app_on = |role: &str| -> (String, u32) {
        let parts = cluster.partitions("rooms");
        let p = partition_of(&parts);
        let node = if role == "leader" {
            p["leader"]["name"].as_str().unwrap().to_string()
        } else {
            p["members"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["role"] == "follower")
                .and_then(|m| m["name"].as_str())
                .expect("a follower")
                .to_string()
        };
        let agent = cluster.agent_pid(&node).expect("agent pid");
        let pid = wait_for(&format!("the game room app on {node}"), WAIT, || {
            room_app_pid(agent, partition)
        });
        sigkill(pid);
        println!("killed game_room.py pid {pid} of the {role} {node}");
        (node, pid)
    };

    let (leader, old_pid) = kill_app_on("leader");
    send(&[
        json!({"op": "move", "player": "ana", "dx": 9, "dy": -1}),
        json!({"op": "leave", "player": "bo"}),
        json!({"op": "join", "player": "dee"}),
    ]);
    let agent = cluster.agent_pid(&leader).unwrap();
    wait_for("the leader's app to be restarted", WAIT, || {
        room_app_pid(agent, partition).filter(|pid| *pid != old_pid)
    });

    let (follower, old_pid) = kill_app_on("follower");
    send(&[
        json!({"op": "move", "player": "dee", "dx": 2, "dy": 2}),
        json!({"op": "move", "player": "cy", "dx": -1, "dy": 0}),
        json!({"op": "join", "player": "bo"}),
    ]);
    let agent = cluster.agent_pid(&follower).unwrap();
    wait_for("the follower's app to be restarted", WAIT, || {
        room_app_pid(agent, partition).filter(|pid| *pid != old_pid)
    });
    send(&[json!({"op": "move", "player": "bo", "dx": 1, "dy": 0})]);

    let room = call(&json!({"op": "room"}), true);
    let players: BTreeMap<String, (i64, i64, u64)> = room["players"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, p)| {
            (
                name.clone(),
                (
                    p["x"].as_i64().unwrap(),
                    p["y"].as_i64().unwrap(),
                    p["moves"].as_u64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(players, model.players, "room state: {room}");
    // A dead app is an app restart, not a replica loss: the group kept its members.
    let parts = cluster.wait_service_healthy("rooms", 2);
    assert!(parts
        .iter()
        .all(|p| p["members"].as_array().unwrap().len() == 3));
}
