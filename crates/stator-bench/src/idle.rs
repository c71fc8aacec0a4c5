//! `stator bench idle`: what many idle partitions cost on real agents, and how fast they
//! form and recover.
//!
//! `stator up` starts the agents (child processes of this binary), then the benchmark
//! creates one kv service of `--partitions` partitions x 3 replicas and measures:
//! - the time from the service's creation until every partition has a leader, as the
//!   API reports it (agents report their replicas' roles in their heartbeats, so the
//!   figure includes up to one heartbeat interval);
//! - after one write to every partition (the gateway learns its map) and a settle for
//!   the groups to go quiet, each agent's CPU (utime + stime from `/proc`) over
//!   `--idle-s` seconds, and its RSS, per replica it hosts, beside its RSS before the
//!   service existed;
//! - after a SIGKILL of the agent leading the most partitions, the time until a write
//!   to each partition it led succeeds again through the gateway (one connection per
//!   partition, retrying at once on an error).

use super::figures::{median_max, ms, round1, round2};
use super::up::{UpCluster, UpOptions};
use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use stator_api::slot::{key_slot, partition_of_slot};
use stator_harness::resp::Connection;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// The benchmark's service name.
const SERVICE: &str = "idle-bench";
/// `up` must be serving its API by then.
const CLUSTER_START_TIMEOUT: Duration = Duration::from_secs(60);
/// Every partition must have a leader by then, or the benchmark fails.
const LEADERS_TIMEOUT: Duration = Duration::from_secs(180);
/// How often the API is polled while partitions form.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Before measuring: longer than `stator_replication::quiesce::QUIET_AFTER` plus a sweep,
/// with room for a loaded machine.
const QUIET_SETTLE: Duration = Duration::from_secs(5);
/// Agents settle this long before their RSS without the service is read.
const AGENTS_SETTLE: Duration = Duration::from_secs(2);
/// Writes to the partitions the killed agent led must be back by then.
const WRITES_BACK_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between two failed write attempts to one partition.
const RETRY_PAUSE: Duration = Duration::from_millis(5);
/// Connections writing to every partition once before the idle measurement.
const WARMUP_CONNECTIONS: usize = 16;

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// Agents `stator up` starts (3 replicas per partition).
    pub nodes: usize,
    /// Partitions of the benchmark's service.
    pub partitions: u32,
    /// Seconds over which idle CPU is measured.
    pub idle_s: u64,
    /// Heartbeat grace after which the server declares a node lost.
    pub node_grace_ms: u64,
    /// First run the baseline: agents forming new groups as before forming replicas
    /// (`STATOR_FORMING_REPLICAS=0`, every member's election timer running at once).
    pub baseline: bool,
}

/// CPU time (user + system) and RSS of a process, from `/proc`.
#[derive(Debug, Clone, Copy)]
struct ProcessUsage {
    cpu: Duration,
    rss_bytes: u64,
}

fn process_usage(pid: u32) -> anyhow::Result<ProcessUsage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at field 3 (state);
    // utime and stime are fields 14 and 15.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("/proc/PID/stat without a command name")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        Ok(fields
            .get(i)
            .context("/proc/PID/stat too short")?
            .parse::<u64>()?)
    };
    // SAFETY: sysconf has no preconditions.
    let ticks_per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let cpu_ticks = ticks(11)? + ticks(12)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("/proc/PID/status without VmRSS")?;
    Ok(ProcessUsage {
        cpu: Duration::from_micros(cpu_ticks * 1_000_000 / ticks_per_sec),
        rss_bytes: rss_kib * 1024,
    })
}

/// One key per partition, in partition order.
fn key_per_partition(partitions: u32) -> Vec<String> {
    let mut keys: Vec<Option<String>> = vec![None; partitions as usize];
    let mut missing = partitions as usize;
    for i in 0u64.. {
        let key = format!("idle:{i}");
        let p = partition_of_slot(partitions, key_slot(key.as_bytes())) as usize;
        if keys[p].is_none() {
            keys[p] = Some(key);
            missing -= 1;
            if missing == 0 {
                break;
            }
        }
    }
    keys.into_iter()
        .map(|k| k.expect("every partition got a key"))
        .collect()
}

/// SET `key` through the gateway until it answers OK or `deadline` passes.
async fn set_until_ok(
    addr: &str,
    conn: &mut Option<Connection>,
    key: &str,
    deadline: Instant,
) -> anyhow::Result<()> {
    loop {
        if conn.is_none() {
            *conn = Connection::connect(addr).await.ok();
        }
        if let Some(c) = conn.as_mut() {
            match c.call(&["SET", key, "v"]).await {
                Ok(reply) if !reply.is_error() => return Ok(()),
                Ok(_) => {}
                Err(_) => *conn = None,
            }
        }
        if Instant::now() > deadline {
            bail!("SET {key} through {addr} did not succeed in time");
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// Runs the benchmark (the baseline first, with `opts.baseline`); returns the report
/// object, one entry per run.
pub async fn run(opts: &Options) -> anyhow::Result<Value> {
    let mut runs = Vec::new();
    if opts.baseline {
        runs.push(run_mode(opts, false).await?);
    }
    runs.push(run_mode(opts, true).await?);
    Ok(json!({ "runs": runs }))
}

/// One run on a fresh cluster; `forming_replicas: false` is the baseline.
async fn run_mode(opts: &Options, forming_replicas: bool) -> anyhow::Result<Value> {
    let mode = if forming_replicas {
        "forming replicas"
    } else {
        "baseline"
    };
    eprintln!(
        "idle ({mode}): `stator up` with {} agents, then a kv service of {} partitions x 3 replicas ...",
        opts.nodes, opts.partitions
    );
    let env = if forming_replicas {
        Vec::new()
    } else {
        vec![(
            stator_agent::replicas::FORMING_REPLICAS_ENV.to_string(),
            "0".to_string(),
        )]
    };
    let cluster = UpCluster::start(&UpOptions {
        nodes: opts.nodes,
        node_grace_ms: opts.node_grace_ms,
        service: SERVICE.into(),
        spec_lines: format!(
            "kind = \"replicated\"\npartitions = {}\nreplicas = 3\n\
             resources = {{ cpu = \"1m\", memory = \"4Mi\" }}\n",
            opts.partitions
        ),
        apply_at_start: false,
        start_timeout: CLUSTER_START_TIMEOUT,
        env,
    })
    .await?;
    let result = measure(&cluster, opts).await;
    if result.is_err() {
        eprintln!("  `stator up`'s log: {}", cluster.log().display());
    }
    cluster.stop().await;
    let mut report = result?;
    report["mode"] = json!(mode);
    print_run(&report);
    Ok(report)
}

async fn measure(cluster: &UpCluster, opts: &Options) -> anyhow::Result<Value> {
    let started = Instant::now();
    while cluster.ready_nodes().await.unwrap_or(0) < opts.nodes {
        if started.elapsed() > CLUSTER_START_TIMEOUT {
            bail!(
                "{} agents not ready within {CLUSTER_START_TIMEOUT:?}",
                opts.nodes
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    tokio::time::sleep(AGENTS_SETTLE).await;
    let agents = cluster.agent_pids()?;
    let mut before: BTreeMap<String, ProcessUsage> = BTreeMap::new();
    for (name, pid) in &agents {
        before.insert(name.clone(), process_usage(*pid)?);
    }

    let leaders_s = form(cluster, opts).await?;
    eprintln!("  every partition has a leader after {leaders_s:.2} s");
    cluster
        .wait_healthy(opts.nodes, None, LEADERS_TIMEOUT)
        .await?;
    cluster.wait_resp(CLUSTER_START_TIMEOUT).await?;
    let keys = key_per_partition(opts.partitions);
    write_all(&cluster.resp_addr, &keys).await?;
    tokio::time::sleep(QUIET_SETTLE).await;

    let idle = idle_usage(cluster, opts, &agents, &before).await?;
    let writes_back = kill_and_write(cluster, &keys).await?;
    Ok(json!({
        "agents": opts.nodes,
        "partitions": opts.partitions,
        "replicas": 3,
        "leaders_after_s": round2(leaders_s),
        "idle_s": opts.idle_s,
        "idle": idle,
        "writes_back": writes_back,
        "targets": {
            "leaders_after_s": 10, "idle_cpu_percent_per_agent": 5,
            "rss_kib_per_replica": 64, "writes_back_ms_max": 1000,
        },
    }))
}

/// Creates the service; returns the seconds until every partition has a leader.
async fn form(cluster: &UpCluster, opts: &Options) -> anyhow::Result<f64> {
    let created = Instant::now();
    cluster.apply().await?;
    loop {
        let parts = cluster.partitions().await.unwrap_or_default();
        let led = parts.iter().filter(|p| !p["leader"].is_null()).count();
        if parts.len() == opts.partitions as usize && led == parts.len() {
            return Ok(created.elapsed().as_secs_f64());
        }
        if created.elapsed() > LEADERS_TIMEOUT {
            bail!(
                "{led} of {} partitions had a leader after {LEADERS_TIMEOUT:?}",
                opts.partitions
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// One write to every partition (`keys[p]` lives in partition `p`), over a few
/// connections.
async fn write_all(addr: &str, keys: &[String]) -> anyhow::Result<()> {
    let deadline = Instant::now() + WRITES_BACK_TIMEOUT;
    let mut tasks = Vec::new();
    for part in keys.chunks(keys.len().div_ceil(WARMUP_CONNECTIONS).max(1)) {
        let (addr, part) = (addr.to_string(), part.to_vec());
        tasks.push(tokio::spawn(async move {
            let mut conn = None;
            for key in &part {
                set_until_ok(&addr, &mut conn, key, deadline).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// Each agent's CPU over `opts.idle_s` and RSS per hosted replica.
async fn idle_usage(
    cluster: &UpCluster,
    opts: &Options,
    agents: &BTreeMap<String, u32>,
    before: &BTreeMap<String, ProcessUsage>,
) -> anyhow::Result<Value> {
    let parts = cluster.partitions().await?;
    let mut hosted: HashMap<String, u64> = HashMap::new();
    for p in &parts {
        for m in p["members"].as_array().into_iter().flatten() {
            if let Some(name) = m["name"].as_str() {
                *hosted.entry(name.to_string()).or_default() += 1;
            }
        }
    }
    let mut start = BTreeMap::new();
    for (name, pid) in agents {
        start.insert(name.clone(), process_usage(*pid)?);
    }
    let window = Duration::from_secs(opts.idle_s);
    let measured_from = Instant::now();
    tokio::time::sleep(window).await;
    let elapsed = measured_from.elapsed();
    let mut rows = Vec::new();
    for (name, pid) in agents {
        let end = process_usage(*pid)?;
        let cpu_percent = (end.cpu - start[name].cpu).as_secs_f64() / elapsed.as_secs_f64() * 100.0;
        let replicas = hosted.get(name).copied().unwrap_or(0).max(1);
        let rss_kib = end.rss_bytes as f64 / 1024.0;
        let rss_before_kib = before
            .get(name)
            .map_or(0.0, |u| u.rss_bytes as f64 / 1024.0);
        rows.push(json!({
            "agent": name,
            "replicas": hosted.get(name).copied().unwrap_or(0),
            "cpu_percent": round1(cpu_percent),
            "rss_mib": round1(rss_kib / 1024.0),
            "rss_mib_without_service": round1(rss_before_kib / 1024.0),
            "rss_kib_per_replica": round1(rss_kib / replicas as f64),
            "rss_kib_per_replica_over_empty_agent":
                round1((rss_kib - rss_before_kib) / replicas as f64),
        }));
    }
    Ok(json!(rows))
}

/// SIGKILLs the agent leading the most partitions; the time until a write to each of
/// them succeeds again.
async fn kill_and_write(cluster: &UpCluster, keys: &[String]) -> anyhow::Result<Value> {
    let parts = cluster.partitions().await?;
    let mut led: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for p in &parts {
        if let (Some(name), Some(partition)) =
            (p["leader"]["name"].as_str(), p["partition"].as_u64())
        {
            led.entry(name.to_string())
                .or_default()
                .push(partition as usize);
        }
    }
    let (victim, victim_parts) = led
        .into_iter()
        .max_by_key(|(_, ps)| ps.len())
        .context("no partition has a leader")?;
    // Connected before the kill, so the figure is the write path's recovery alone.
    let mut conns = Vec::with_capacity(victim_parts.len());
    for _ in &victim_parts {
        conns.push(Some(Connection::connect(cluster.resp_addr.as_str()).await?));
    }
    let pid = cluster.agent_pid(&victim)?;
    let kill_at = Instant::now();
    // SAFETY: kill(2) of an agent process `up` started for this benchmark.
    if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
        bail!(
            "kill -9 {pid} ({victim}): {}",
            std::io::Error::last_os_error()
        );
    }
    let deadline = kill_at + WRITES_BACK_TIMEOUT;
    let mut tasks = Vec::new();
    for (p, mut conn) in victim_parts.iter().zip(conns) {
        let (addr, key) = (cluster.resp_addr.clone(), keys[*p].clone());
        tasks.push(tokio::spawn(async move {
            set_until_ok(&addr, &mut conn, &key, deadline).await?;
            anyhow::Ok(kill_at.elapsed())
        }));
    }
    let mut back_ms = Vec::new();
    let mut failed = 0usize;
    for task in tasks {
        match task.await? {
            Ok(d) => back_ms.push(ms(d)),
            Err(_) => failed += 1,
        }
    }
    let (p50, max) = median_max(back_ms);
    eprintln!(
        "  killed {victim} (leader of {} partitions): writes back p50 {p50:?} ms, max {max:?} ms, {failed} never",
        victim_parts.len()
    );
    Ok(json!({
        "killed": victim,
        "partitions_led": victim_parts.len(),
        "ms_p50": p50,
        "ms_max": max,
        "failed": failed,
    }))
}

/// Prints one run's table on stderr.
fn print_run(report: &Value) {
    eprintln!();
    eprintln!(
        "idle ({}): {} partitions x 3 replicas on {} agents; every partition led after {} s",
        report["mode"].as_str().unwrap_or("?"),
        report["partitions"],
        report["agents"],
        report["leaders_after_s"]
    );
    eprintln!(
        "{:<10} {:>8} {:>9} {:>9} {:>14} {:>12} {:>18}",
        "agent",
        "replicas",
        "cpu_%",
        "rss_mib",
        "rss_mib_empty",
        "kib/replica",
        "kib/replica_added"
    );
    for row in report["idle"].as_array().into_iter().flatten() {
        eprintln!(
            "{:<10} {:>8} {:>9} {:>9} {:>14} {:>12} {:>18}",
            row["agent"].as_str().unwrap_or("?"),
            row["replicas"],
            row["cpu_percent"],
            row["rss_mib"],
            row["rss_mib_without_service"],
            row["rss_kib_per_replica"],
            row["rss_kib_per_replica_over_empty_agent"]
        );
    }
    let w = &report["writes_back"];
    eprintln!(
        "SIGKILL of {} (leader of {} partitions): writes to each back after p50 {} ms, max {} ms; {} never",
        w["killed"], w["partitions_led"], w["ms_p50"], w["ms_max"], w["failed"]
    );
}

/// Prints every run's table again on stderr and, with `json`, the report on stdout's
/// last line.
pub fn print_report(report: &Value, json: bool) {
    for run in report["runs"].as_array().into_iter().flatten() {
        print_run(run);
    }
    if json {
        println!("{report}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_partition_gets_a_key_of_its_own() {
        let keys = key_per_partition(1_000);
        assert_eq!(keys.len(), 1_000);
        for (p, key) in keys.iter().enumerate() {
            assert_eq!(
                partition_of_slot(1_000, key_slot(key.as_bytes())) as usize,
                p
            );
        }
    }

    #[test]
    fn usage_of_this_process_is_read_from_proc() {
        let usage = process_usage(std::process::id()).unwrap();
        assert!(usage.rss_bytes > 0);
        // Spend a little CPU so the tick count can only grow.
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(30) {}
        assert!(process_usage(std::process::id()).unwrap().cpu >= usage.cpu);
    }
}
