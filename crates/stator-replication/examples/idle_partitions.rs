//! What idle partitions cost, and how fast the partitions of a dead host come back:
//! starts 3 hosts in this process, each on its own single-threaded runtime (threads named
//! `host-<id>`, so CPU is counted per host from `/proc/self/task`), forms N register
//! groups of 3 replicas (leaders spread over the hosts), then reports
//! - the time until every group has a leader,
//! - CPU per host over an idle window, in percent of one core,
//! - resident-set growth per replica,
//! - after host 1 stops (listener and replicas gone, connections closed, as a SIGKILL
//!   looks to its peers), the time until a write to every group it led succeeds again.
//!
//! `cargo run --release -p stator-replication --example idle_partitions -- 1000 10`
//! (partitions, idle window in seconds) runs twice, each in a fresh child process: first
//! with quiescence off (the baseline: every group heartbeats), then on, and prints both
//! and their ratios. A third argument `on` or `off` runs that mode alone; a fourth forms
//! the groups in waves of that many partitions, each once the last has leaders.

use stator_replication::host::ReplicaRole;
use stator_replication::testing::{encode_op, RegisterApp, RegisterOp, TEST_SECRET};
use stator_replication::{GroupId, GroupOptions, Host, HostConfig, ReplicaClient, RequestKind};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const HOSTS: u64 = 3;
/// Linux's USER_HZ (clock ticks per second in `/proc/<pid>/task/<tid>/stat`), 100 on
/// every mainstream architecture.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;
/// Bound on any wait; a run that passes it reports failure instead of hanging.
const WAIT: Duration = Duration::from_secs(60);

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

/// CPU ticks (user + system) used so far by the threads named `host-<id>`, per id.
fn host_cpu_ticks() -> BTreeMap<u64, u64> {
    let mut ticks = BTreeMap::new();
    for task in std::fs::read_dir("/proc/self/task")
        .expect("procfs")
        .flatten()
    {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // "tid (comm) state ...": the name may hold spaces, so split after the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let Some(id) = stat[open + 1..close]
            .strip_prefix("host-")
            .and_then(|id| id.parse::<u64>().ok())
        else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the state.
        let used: u64 =
            fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
        *ticks.entry(id).or_default() += used;
    }
    ticks
}

fn group(partition: u64) -> GroupId {
    GroupId::new(1 + partition / 60_000, (partition % 60_000) as u32)
}

struct Node {
    runtime: tokio::runtime::Runtime,
    host: Host,
}

fn start_node(id: u64) -> Node {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(format!("host-{id}"))
        .enable_all()
        .build()
        .expect("runtime");
    let host = runtime
        .block_on(Host::start(HostConfig {
            node_id: id,
            listen_addr: "127.0.0.1:0".into(),
            cluster_secret: TEST_SECRET.into(),
            filter: None,
            tls: None,
            data_dir: None,
            learner_catchup_bytes_per_sec:
                stator_replication::pacing::DEFAULT_LEARNER_CATCHUP_BYTES_PER_SEC,
        }))
        .expect("bind loopback");
    Node { runtime, host }
}

/// Creates `partitions` groups on every node (on that node's runtime, so their tasks run
/// there), then bootstraps each on one member, rotating, as agents do: `wave` partitions
/// at a time, each wave once the previous one has leaders (`wave >= partitions`: all at
/// once, as agents do today).
async fn create_groups(
    nodes: &BTreeMap<u64, Node>,
    partitions: u64,
    wave: u64,
    options: GroupOptions,
) {
    let members: BTreeMap<u64, String> = nodes
        .iter()
        .map(|(id, n)| (*id, n.host.addr().to_string()))
        .collect();
    let mut tasks = Vec::new();
    for node in nodes.values() {
        let host = node.host.clone();
        tasks.push(node.runtime.spawn(async move {
            for p in 0..partitions {
                host.create_group(group(p), options, Box::<RegisterApp>::default())
                    .await
                    .expect("create group");
            }
        }));
    }
    for task in tasks {
        task.await.expect("creating groups");
    }
    let wave = wave.max(1);
    for start in (0..partitions).step_by(wave as usize) {
        let end = (start + wave).min(partitions);
        let mut tasks = Vec::new();
        for (id, node) in nodes {
            let (host, members, id) = (node.host.clone(), members.clone(), *id);
            tasks.push(node.runtime.spawn(async move {
                for p in (start..end).filter(|p| p % HOSTS + 1 == id) {
                    host.bootstrap(group(p), &members).await.expect("bootstrap");
                }
            }));
        }
        for task in tasks {
            task.await.expect("bootstrapping groups");
        }
        if end < partitions {
            let deadline = Instant::now() + WAIT;
            while (start..end).any(|p| {
                !nodes.values().any(|n| {
                    n.host
                        .status(group(p))
                        .is_some_and(|s| s.role == ReplicaRole::Leader)
                })
            }) && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// The groups that have a leader a live host sees itself as, once every group has one or
/// when `WAIT` has passed (an overloaded machine may never get there).
async fn leaders(nodes: &BTreeMap<u64, Node>, partitions: u64) -> BTreeMap<GroupId, u64> {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut led = BTreeMap::new();
        for (id, node) in nodes {
            for s in node.host.statuses() {
                if s.role == ReplicaRole::Leader {
                    led.insert(s.group, *id);
                }
            }
        }
        if led.len() as u64 == partitions {
            return led;
        }
        if Instant::now() >= deadline {
            // What the replicas are doing instead, for whoever reads the run.
            for (id, node) in nodes {
                let mut roles: BTreeMap<String, usize> = BTreeMap::new();
                for s in node.host.statuses() {
                    *roles
                        .entry(format!(
                            "{:?}{}",
                            s.role,
                            if s.quiet { "/quiet" } else { "" }
                        ))
                        .or_default() += 1;
                }
                eprintln!("host-{id} after {WAIT:?}: {roles:?}");
            }
            return led;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a write to `group` succeeded within `WAIT`.
async fn write_until_ok(client: &ReplicaClient, group: GroupId, members: &[String]) -> bool {
    let mut leader = None;
    let op = encode_op(&RegisterOp::Set("k".into(), "v".into()));
    client
        .execute(group, members, &mut leader, RequestKind::Write, op, WAIT)
        .await
        .is_ok()
}

struct Figures {
    with_leader: usize,
    leaders_ms: u128,
    not_written: usize,
    cpu_percent: BTreeMap<u64, f64>,
    rss_per_replica_kib: f64,
    failover_ms: u128,
    failed_over: usize,
}

async fn run(
    mut nodes: BTreeMap<u64, Node>,
    rss_before: u64,
    partitions: u64,
    wave: u64,
    idle: Duration,
    options: GroupOptions,
) -> Figures {
    let started = Instant::now();
    create_groups(&nodes, partitions, wave, options).await;
    let with_leader = leaders(&nodes, partitions).await.len();
    let leaders_ms = started.elapsed().as_millis();
    // Let elections, membership entries and connection set-up settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_per_replica_kib =
        rss_kib().saturating_sub(rss_before) as f64 / (partitions * HOSTS) as f64;

    let before = host_cpu_ticks();
    let window = Instant::now();
    tokio::time::sleep(idle).await;
    let after = host_cpu_ticks();
    let seconds = window.elapsed().as_secs_f64();
    let cpu_percent = after
        .iter()
        .map(|(id, t)| {
            let used = t - before.get(id).copied().unwrap_or(0);
            (*id, used as f64 / CLOCK_TICKS_PER_SEC / seconds * 100.0)
        })
        .collect();

    let led_by_first: Vec<GroupId> = leaders(&nodes, partitions)
        .await
        .into_iter()
        .filter(|(_, l)| *l == 1)
        .map(|(g, _)| g)
        .collect();
    let members: Vec<String> = nodes.values().map(|n| n.host.addr().to_string()).collect();
    let client = ReplicaClient::new(TEST_SECRET);
    let first = nodes.remove(&1).expect("host 1");
    let killed = Instant::now();
    stop(first).await;
    let not_written = futures::future::join_all(
        led_by_first
            .iter()
            .map(|g| write_until_ok(&client, *g, &members)),
    )
    .await
    .into_iter()
    .filter(|ok| !ok)
    .count();
    let failover_ms = killed.elapsed().as_millis();
    for (_, node) in nodes {
        stop(node).await;
    }
    Figures {
        with_leader,
        leaders_ms,
        not_written,
        cpu_percent,
        rss_per_replica_kib,
        failover_ms,
        failed_over: led_by_first.len(),
    }
}

/// Stops a node's host and runtime from the driver's runtime.
async fn stop(node: Node) {
    let host = node.host.clone();
    node.runtime
        .spawn(async move { host.shutdown().await })
        .await
        .expect("host shutdown");
    node.runtime.shutdown_background();
}

fn print(mode: &str, partitions: u64, f: &Figures) -> String {
    let cpu: Vec<String> = f
        .cpu_percent
        .iter()
        .map(|(id, p)| format!("\"host-{id}\":{p:.1}"))
        .collect();
    format!(
        "{{\"mode\":\"{mode}\",\"partitions\":{partitions},\"replicas\":{},\"groups_with_leader\":{},\"all_leaders_ms\":{},\"idle_cpu_percent_of_core\":{{{}}},\"rss_per_replica_kib\":{:.1},\"groups_led_by_stopped_host\":{},\"all_written_again_ms\":{},\"not_written_again\":{}}}",
        partitions * HOSTS,
        f.with_leader,
        f.leaders_ms,
        cpu.join(","),
        f.rss_per_replica_kib,
        f.failed_over,
        f.failover_ms,
        f.not_written
    )
}

/// Runs one mode in a child process (so memory figures start clean); its JSON line.
fn child(partitions: u64, idle: Duration, mode: &str, wave: u64) -> String {
    let exe = std::env::current_exe().expect("own path");
    let out = std::process::Command::new(exe)
        .args([
            partitions.to_string(),
            idle.as_secs().to_string(),
            mode.into(),
            wave.to_string(),
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run the benchmark's child");
    assert!(out.status.success(), "the {mode} run failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A number field of a flat JSON line (the figures printed above).
fn field(line: &str, name: &str) -> f64 {
    let at = line.find(&format!("\"{name}\":")).expect("field") + name.len() + 3;
    line[at..]
        .split([',', '}'])
        .next()
        .and_then(|v| v.parse().ok())
        .expect("number")
}

fn mean_cpu(line: &str) -> f64 {
    (1..=HOSTS)
        .map(|id| field(line, &format!("host-{id}")))
        .sum::<f64>()
        / HOSTS as f64
}

fn main() {
    let mut args = std::env::args().skip(1);
    let partitions: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let idle = Duration::from_secs(args.next().and_then(|a| a.parse().ok()).unwrap_or(10));
    let mode = args.next().unwrap_or_else(|| "both".into());
    let wave: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(partitions);
    if mode == "both" {
        let off = child(partitions, idle, "off", wave);
        let on = child(partitions, idle, "on", wave);
        println!("{off}\n{on}");
        println!(
            "{{\"quiet_vs_awake\":{{\"idle_cpu\":{:.3},\"rss_per_replica\":{:.3},\"all_leaders\":{:.3},\"all_written_again\":{:.3}}}}}",
            mean_cpu(&on) / mean_cpu(&off).max(0.001),
            field(&on, "rss_per_replica_kib") / field(&off, "rss_per_replica_kib").max(0.001),
            field(&on, "all_leaders_ms") / field(&off, "all_leaders_ms").max(1.0),
            field(&on, "all_written_again_ms") / field(&off, "all_written_again_ms").max(1.0),
        );
        return;
    }
    let options = GroupOptions {
        quiesce: match mode.as_str() {
            "on" => true,
            "off" => false,
            other => panic!("mode must be on, off or both, not {other}"),
        },
        ..GroupOptions::default()
    };
    // The driver (client, polling) runs on this thread, not on any host's.
    let driver = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let rss_before = rss_kib();
    let nodes = (1..=HOSTS).map(|id| (id, start_node(id))).collect();
    let figures = driver.block_on(run(nodes, rss_before, partitions, wave, idle, options));
    let mode = if options.quiesce { "quiet" } else { "awake" };
    println!("{}", print(mode, partitions, &figures));
}
