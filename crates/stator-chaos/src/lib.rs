//! `stator chaos`: a Jepsen-style run. A local cluster, concurrent clients on a few keys,
//! a nemesis (kill, pause, partition, membership, server, restart, restart-late), then a
//! linearizability verdict.
//!
//! # Layout
//! - [`cluster`]: [`cluster::LocalCluster`], the servers (three on etcd, or one), the
//!   gateway and the agents as supervised child processes, the API calls and the
//!   controller holder.
//! - [`workload`]: RESP clients through the gateway, paced by the clock
//!   (`stator_harness::pace`), reply classification, final reads.
//! - [`nemesis`]: the seeded fault schedule and the injection of each fault.
//! - [`netns`]: agents in network namespaces on a bridge; isolation and cuts (default).
//! - [`firewall`]: partitions as iptables rules matching per-node cgroups on loopback
//!   (the fallback where namespaces cannot be made).
//! - [`logs`]: `--keep-logs`, the cluster's logs copied out after the run.

pub mod cluster;
pub mod firewall;
pub mod logs;
pub mod nemesis;
pub mod netns;
pub mod workload;

use anyhow::Context as _;
use cluster::{LocalCluster, Placement};
use firewall::Firewall;
use nemesis::{FaultKind, FaultRecord, Nemesis, Network, Schedule};
use netns::Netns;
use serde::Serialize;
use stator_api::spec::Durability;
use stator_check::{Recorder, Status, Verdict};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Partition groups of the kv service: several, so leaders spread over the nodes.
const PARTITIONS: u32 = 3;
/// Time allowed for the service to be placed and elect leaders after it is applied.
const SERVICE_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the agents are checked for a place in their node's cgroup: short, so an
/// agent `up` restarts is moved before it dials its peers.
const ADOPT_INTERVAL: Duration = Duration::from_millis(20);
/// An agent placed in its cgroup later than this after it started may have opened
/// connections before (registration and placement take longer than this).
const LATE_ADOPTION_MS: u64 = 500;
/// Set to 1 to fail instead of skipping a fault kind this machine cannot inject.
pub const REQUIRE_ALL_ENV: &str = "STATOR_REQUIRE_ALL";

/// Where the agents run and how partitions are made (`--network`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NetworkMode {
    /// Namespaces where they can be made (root, iproute2), else loopback.
    Auto,
    /// Each agent in a network namespace on a private bridge; fails where impossible.
    Netns,
    /// Agents on loopback; partitions by iptables rules per agent cgroup.
    Loopback,
}

impl NetworkMode {
    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            NetworkMode::Auto => "auto",
            NetworkMode::Netns => "netns",
            NetworkMode::Loopback => "loopback",
        }
    }
}

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long the clients run under faults.
    pub duration: Duration,
    /// Fault kinds to inject.
    pub faults: Vec<FaultKind>,
    /// Agents.
    pub nodes: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Keys the clients share.
    pub keys: usize,
    /// Seed of the schedule and the clients (default: random, printed).
    pub seed: u64,
    /// Where the history goes.
    pub history: PathBuf,
    /// Namespaces or loopback.
    pub network: NetworkMode,
    /// The kv service's durability; `None`: [`default_durability`] of the faults.
    pub durability: Option<Durability>,
    /// Where to copy the cluster's logs when the run ends, whatever the verdict
    /// (`--keep-logs`; [`logs`] says what is kept).
    pub keep_logs: Option<PathBuf>,
}

/// The kv service's durability when `--durability` is not given: `disk` when the
/// `restart` or `restart-late` fault is asked for (only disks survive them), else `memory`.
pub fn default_durability(faults: &[FaultKind]) -> Durability {
    if faults.iter().any(|f| f.kills_every_replica()) {
        Durability::Disk
    } else {
        Durability::Memory
    }
}

/// Parses `--durability`.
pub fn parse_durability(name: &str) -> anyhow::Result<Durability> {
    match name {
        "memory" => Ok(Durability::Memory),
        "periodic" => Ok(Durability::Periodic),
        "disk" => Ok(Durability::Disk),
        _ => anyhow::bail!("--durability: unknown mode {name:?}; use memory, periodic or disk"),
    }
}

/// Refuses a `restart` fault on a service that cannot survive it: a `memory` service
/// loses everything when every member dies, and `periodic` may lose its last
/// `fsync_interval_ms` of acknowledged writes, which the checker reports as lost.
fn check_durability(faults: &[FaultKind], durability: Durability) -> anyhow::Result<()> {
    anyhow::ensure!(
        !faults.iter().any(|f| f.kills_every_replica()) || durability == Durability::Disk,
        "--faults restart and restart-late kill every replica at once; only --durability disk \
         promises to keep every acknowledged write through them (drop them or use --durability disk)"
    );
    Ok(())
}

/// The last line of `--json` output.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Operations in the history.
    pub ops: usize,
    /// Operations acknowledged.
    pub ok: usize,
    /// Operations that certainly did not take effect.
    pub fail: usize,
    /// Operations that may or may not have taken effect.
    pub unknown: usize,
    /// Keys whose history is not linearizable.
    pub anomalies: usize,
    /// Acknowledged writes the final reads do not see.
    pub lost_acked_writes: usize,
    /// The checker's verdict over every key.
    pub verdict: Verdict,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, usize>,
    /// Length of the run, seconds (one decimal).
    pub duration_s: f64,
    /// Seed of the fault schedule and the clients.
    pub seed: u64,
    /// Agents.
    pub nodes: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Keys the clients shared.
    pub keys: usize,
    /// `netns` (agents in network namespaces) or `loopback`.
    pub network: &'static str,
    /// The kv service's durability (`memory`, `periodic`, `disk`).
    pub durability: Durability,
    /// Servers: 3 on one etcd (the `server` fault), else 1 on the embedded store.
    pub servers: usize,
    /// Faults after which the cluster did not become healthy within the recovery bound.
    pub unrecovered: usize,
    /// Keys whose final read never answered (not judged for lost writes).
    pub keys_without_final_read: usize,
    /// Client operations not sent because every client was busy when they were due.
    pub client_missed_ticks: u64,
    /// Fault kinds asked for but not injectable here, with why.
    pub skipped: BTreeMap<&'static str, String>,
    /// Where the history was written.
    pub history: String,
}

impl Summary {
    /// Whether the run found nothing wrong.
    pub fn passed(&self) -> bool {
        self.verdict == Verdict::Ok && self.lost_acked_writes == 0 && self.unrecovered == 0
    }
}

/// The kv service's durability in this run.
fn durability(opts: &Options) -> Durability {
    opts.durability
        .unwrap_or_else(|| default_durability(&opts.faults))
}

/// Runs chaos and returns the summary (it also prints progress and the human summary on
/// stderr). The caller prints the JSON and picks the exit code.
pub async fn run(opts: Options) -> anyhow::Result<Summary> {
    anyhow::ensure!(
        opts.nodes >= 3,
        "--nodes: at least 3, so a majority survives a fault"
    );
    anyhow::ensure!(opts.clients >= 1, "--clients: at least 1");
    anyhow::ensure!(opts.keys >= 1, "--keys: at least 1");
    anyhow::ensure!(!opts.faults.is_empty(), "--faults: name at least one");
    check_durability(&opts.faults, durability(&opts))?;
    if let Some(dir) = &opts.keep_logs {
        logs::prepare(dir)?;
    }
    let require_all = std::env::var(REQUIRE_ALL_ENV).is_ok_and(|v| v == "1");
    let mut skipped = BTreeMap::new();
    let (mut kinds, with_etcd) = injectable_kinds(&opts, require_all, &mut skipped)?;
    let netns = make_namespaces(&opts, require_all)?;
    let firewall = if kinds.contains(&FaultKind::Partition) && netns.is_none() {
        make_firewall(&mut kinds, require_all, &mut skipped)?
    } else {
        None
    };
    anyhow::ensure!(!kinds.is_empty(), "no fault kind can be injected here");

    let data_dir = tempfile::Builder::new()
        .prefix("stator-chaos-")
        .tempdir()
        .context("creating a temporary directory")?;
    eprintln!(
        "chaos: seed {}, {} nodes, {} clients, {} keys, durability {}, faults {:?}, data in {}",
        opts.seed,
        opts.nodes,
        opts.clients,
        opts.keys,
        durability(&opts),
        kinds.iter().map(|k| k.name()).collect::<Vec<_>>(),
        data_dir.path().display()
    );
    let placement = match &netns {
        Some(netns) => Placement::Netns(netns.clone()),
        None => Placement::Loopback,
    };
    // On Ctrl-C or SIGTERM the run is dropped: the cluster's processes die (kill on
    // drop, and their parent-death signal) and the namespaces and firewall are removed
    // below.
    let outcome = tokio::select! {
        outcome = run_in(&opts, &kinds, &placement, with_etcd, firewall.clone(), data_dir.path(), skipped) => outcome,
        _ = stator_harness::shutdown_signal() => Err(anyhow::anyhow!("interrupted; cluster stopped, partitions healed")),
    };
    drop(placement);
    remove_network(netns, firewall).await;
    if let Some(dir) = &opts.keep_logs {
        match logs::keep(data_dir.path(), dir) {
            Ok(kept) => eprintln!(
                "chaos: logs kept in {} ({} files, {} bytes; every file of the cluster listed in {})",
                dir.display(),
                kept.files,
                kept.bytes,
                logs::LISTING_FILE
            ),
            Err(e) => eprintln!("chaos: could not keep the logs in {}: {e:#}", dir.display()),
        }
    }
    match &outcome {
        Ok(summary) if summary.passed() => {}
        _ => {
            let kept = data_dir.keep();
            eprintln!(
                "chaos: cluster logs kept in {} (servers/*/server.log, gateway.log, agents/*/agent.log)",
                kept.display()
            );
        }
    }
    outcome
}

/// The fault kinds asked for, less those this machine cannot inject (recorded in
/// `skipped`; an error instead under [`REQUIRE_ALL_ENV`]); and whether the cluster
/// runs several servers on etcd (for kills of the controller holder).
fn injectable_kinds(
    opts: &Options,
    require_all: bool,
    skipped: &mut BTreeMap<&'static str, String>,
) -> anyhow::Result<(Vec<FaultKind>, bool)> {
    let mut kinds = opts.faults.clone();
    kinds.sort();
    kinds.dedup();
    if !kinds.contains(&FaultKind::Server) {
        return Ok((kinds, false));
    }
    match etcd_unavailable() {
        None => Ok((kinds, true)),
        Some(why) if require_all => {
            anyhow::bail!("the server fault cannot be injected here and {REQUIRE_ALL_ENV}=1: {why}")
        }
        Some(why) => {
            eprintln!("chaos: SKIPPING server kills: {why}");
            skipped.insert("server", why);
            kinds.retain(|k| *k != FaultKind::Server);
            Ok((kinds, false))
        }
    }
}

/// The agents' network namespaces, unless `--network loopback` or they cannot be made
/// (an error instead with `--network netns` or under [`REQUIRE_ALL_ENV`]).
fn make_namespaces(opts: &Options, require_all: bool) -> anyhow::Result<Option<Arc<Netns>>> {
    if opts.network == NetworkMode::Loopback {
        return Ok(None);
    }
    match Netns::new(&cluster::node_names(opts.nodes)) {
        Ok(netns) => {
            eprintln!("chaos: agents in network namespaces: {}", netns.describe());
            Ok(Some(Arc::new(netns)))
        }
        Err(e) if require_all || opts.network == NetworkMode::Netns => Err(e.context(format!(
            "network namespaces unavailable (--network {}, {REQUIRE_ALL_ENV}={})",
            opts.network.name(),
            u8::from(require_all)
        ))),
        Err(e) => {
            eprintln!("chaos: network namespaces unavailable: {e:#}; using loopback firewall");
            Ok(None)
        }
    }
}

/// The loopback firewall for partitions; without one, partitions are skipped (an error
/// instead under [`REQUIRE_ALL_ENV`]).
fn make_firewall(
    kinds: &mut Vec<FaultKind>,
    require_all: bool,
    skipped: &mut BTreeMap<&'static str, String>,
) -> anyhow::Result<Option<Arc<Firewall>>> {
    match Firewall::new() {
        Ok(f) => Ok(Some(Arc::new(f))),
        Err(e) if require_all => Err(e.context(format!(
            "partitions cannot be injected here and {REQUIRE_ALL_ENV}=1"
        ))),
        Err(e) => {
            eprintln!("chaos: SKIPPING partitions: {e:#}");
            skipped.insert("partition", format!("{e:#}"));
            kinds.retain(|k| *k != FaultKind::Partition);
            Ok(None)
        }
    }
}

/// Removes the namespaces and the firewall once the cluster is stopped (the cgroups are
/// empty by then).
async fn remove_network(netns: Option<Arc<Netns>>, firewall: Option<Arc<Firewall>>) {
    if let Some(netns) = netns {
        match Arc::try_unwrap(netns) {
            Ok(mut netns) => netns.cleanup(),
            Err(_) => eprintln!(
                "chaos: the namespaces are still shared; removed when the last user drops them"
            ),
        }
    }
    // The adopter task may hold it for a moment (it upgrades a weak reference per tick).
    let mut firewall = firewall;
    for _ in 0..100 {
        match firewall.take().map(Arc::try_unwrap) {
            None => break,
            Some(Ok(mut f)) => f.cleanup(),
            Some(Err(shared)) => {
                firewall = Some(shared);
                tokio::time::sleep(ADOPT_INTERVAL).await;
            }
        }
    }
    if firewall.is_some() {
        eprintln!("chaos: the firewall is still shared; it is removed when the last user drops it");
    }
}

/// Why several servers on etcd cannot run here, if they cannot.
fn etcd_unavailable() -> Option<String> {
    if !cfg!(feature = "etcd") {
        return Some(
            "needs several servers on etcd: rebuild with `--features etcd` (needs protoc)".into(),
        );
    }
    if !stator_harness::installed("etcd") {
        return Some("needs an etcd binary (apt-get install etcd-server)".into());
    }
    None
}

async fn run_in(
    opts: &Options,
    kinds: &[FaultKind],
    placement: &Placement,
    with_etcd: bool,
    firewall: Option<Arc<Firewall>>,
    data_dir: &std::path::Path,
    skipped: BTreeMap<&'static str, String>,
) -> anyhow::Result<Summary> {
    let mut cluster = LocalCluster::start(data_dir, opts.nodes, placement, with_etcd).await?;
    // The cluster's supervisor knows its agents, restarted ones included.
    let agents = cluster.agents();

    // Agents go into their node's cgroup before they open any replica connection, and
    // restarted ones as soon as they appear.
    // The task holds only a weak reference, so the firewall can be removed even if the
    // task outlives an interrupted run.
    let adopter = firewall.as_ref().map(Arc::downgrade).map(|firewall| {
        let agents = agents.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(ADOPT_INTERVAL);
            loop {
                ticker.tick().await;
                let Some(firewall) = firewall.upgrade() else {
                    return;
                };
                for (node, pid) in agents.pids() {
                    match firewall.adopt(&node, pid) {
                        Ok(true) => {
                            // A socket keeps the cgroup it was made in: an agent adopted
                            // late may have dialled peers outside its cgroup already.
                            if let Some(age_ms) = cluster::process_age_ms(pid) {
                                if age_ms > LATE_ADOPTION_MS {
                                    eprintln!("chaos: WARNING agent {node} placed in its cgroup {age_ms} ms after it started; its early connections escape partitions");
                                }
                            }
                        }
                        Ok(false) => {}
                        Err(e) => {
                            eprintln!("chaos: cannot place agent {node} in its cgroup: {e:#}")
                        }
                    }
                }
            }
        })
    });
    let result = async {
        if firewall.is_some() {
            // Wait for the first adoption pass to cover every agent.
            let deadline = Instant::now() + Duration::from_secs(5);
            while agents.pids().len() < opts.nodes && Instant::now() < deadline {
                tokio::time::sleep(ADOPT_INTERVAL).await;
            }
            tokio::time::sleep(ADOPT_INTERVAL * 3).await;
        }
        cluster.apply_service(PARTITIONS, durability(opts)).await?;
        cluster
            .wait_healthy(SERVICE_READY_TIMEOUT)
            .await
            .map_err(|why| anyhow::anyhow!("the kv service did not become healthy: {why}"))?;
        workload::wait_ready(&cluster.resp_addr, SERVICE_READY_TIMEOUT).await?;
        let network = match placement {
            Placement::Netns(netns) => Some(Network::Netns(netns)),
            Placement::Loopback => firewall.as_deref().map(Network::Firewall),
        };
        drive(opts, kinds, &mut cluster, network, skipped).await
    }
    .await;
    if let Some(adopter) = adopter {
        adopter.abort();
        let _ = adopter.await;
    }
    cluster.stop().await;
    result
}

/// The run proper: clients and nemesis, then the end phase and the verdict.
async fn drive(
    opts: &Options,
    kinds: &[FaultKind],
    cluster: &mut LocalCluster,
    network: Option<Network<'_>>,
    skipped: BTreeMap<&'static str, String>,
) -> anyhow::Result<Summary> {
    let recorder = Recorder::new();
    let started = Instant::now();
    let clients = workload::Clients::start(
        &cluster.resp_addr,
        opts.clients,
        opts.keys,
        opts.seed,
        recorder.clone(),
    );
    eprintln!(
        "chaos: cluster healthy; {} clients on {}, faults for {:?}",
        opts.clients, cluster.resp_addr, opts.duration
    );

    let mut records: Vec<FaultRecord> = Vec::new();
    let nemesis_result = inject_faults(opts, kinds, cluster, network, started, &mut records).await;
    // Let the clients run out the clock if the schedule stopped early.
    if let Some(left) = opts.duration.checked_sub(started.elapsed()) {
        tokio::time::sleep(left).await;
    }
    let final_health = cluster.wait_healthy(nemesis::RECOVERY_TIMEOUT).await;
    let clients = clients.stop().await;
    let error_samples = clients.samples;
    let run_s = started.elapsed().as_secs_f64();
    cluster.check_running()?;
    nemesis_result?;
    if let Err(why) = &final_health {
        eprintln!("chaos: the cluster is not healthy at the end: {why}");
    }

    let final_values = workload::final_reads(
        &cluster.resp_addr,
        opts.keys,
        opts.clients as u64,
        &recorder,
    )
    .await;
    let entries = recorder.entries();
    stator_check::write_file(&opts.history, &entries)
        .with_context(|| format!("writing {}", opts.history.display()))?;
    let check_entries = entries.clone();
    let report =
        tokio::task::spawn_blocking(move || stator_check::check_history(&check_entries)).await??;
    let lost = stator_check::lost_acked_writes(&entries, &final_values);

    let count = |status: Status| entries.iter().filter(|e| e.status == status).count();
    let mut faults: BTreeMap<&'static str, usize> =
        opts.faults.iter().map(|k| (k.name(), 0)).collect();
    for record in records.iter().filter(|r| r.injected) {
        *faults.entry(record.kind.name()).or_default() += 1;
    }
    let anomalies: Vec<_> = report.anomalies().collect();
    let summary = Summary {
        ops: entries.len(),
        ok: count(Status::Ok),
        fail: count(Status::Fail),
        unknown: count(Status::Unknown),
        anomalies: anomalies.len(),
        lost_acked_writes: lost.len(),
        verdict: report.verdict,
        faults,
        duration_s: (run_s * 10.0).round() / 10.0,
        seed: opts.seed,
        nodes: opts.nodes,
        clients: opts.clients,
        keys: opts.keys,
        network: match network {
            Some(Network::Netns(_)) => "netns",
            _ => "loopback",
        },
        durability: durability(opts),
        servers: cluster.server_urls.len(),
        unrecovered: records.iter().filter(|r| r.recovery_s.is_none()).count()
            + usize::from(final_health.is_err()),
        keys_without_final_read: opts.keys - final_values.len(),
        client_missed_ticks: clients.missed_ticks,
        skipped,
        history: opts.history.display().to_string(),
    };

    print_summary(opts, &summary, &records, error_samples, &report, &lost)?;
    Ok(summary)
}

/// The nemesis: faults from the seeded schedule until the duration is over or the
/// cluster does not recover from one; every fault is recorded in `records`.
async fn inject_faults(
    opts: &Options,
    kinds: &[FaultKind],
    cluster: &LocalCluster,
    network: Option<Network<'_>>,
    started: Instant,
    records: &mut Vec<FaultRecord>,
) -> anyhow::Result<()> {
    let mut schedule = Schedule::new(opts.seed, kinds.to_vec());
    let nemesis = Nemesis::new(cluster, network, started);
    loop {
        let plan = schedule.next_fault();
        if started.elapsed() + plan.gap >= opts.duration {
            return Ok(());
        }
        tokio::time::sleep(plan.gap).await;
        let record = nemesis.run_fault(&plan).await?;
        let recovered = record.recovery_s.is_some();
        records.push(record);
        if !recovered {
            eprintln!("chaos: the cluster did not recover; no more faults");
            return Ok(());
        }
    }
}

/// The human summary on stderr: each fault, error replies seen, counts, anomalies,
/// undetermined keys, lost writes and the verdict.
fn print_summary(
    opts: &Options,
    summary: &Summary,
    records: &[FaultRecord],
    mut error_samples: Vec<String>,
    report: &stator_check::Report,
    lost: &[stator_check::LostWrite],
) -> anyhow::Result<()> {
    eprintln!("chaos: ---- summary ----");
    for record in records {
        eprintln!(
            "chaos:   {:7.2}s {:<10} {}{} (recovered {})",
            record.at_s,
            record.kind.name(),
            if record.injected {
                ""
            } else {
                "NOT INJECTED: "
            },
            record.detail,
            record
                .recovery_s
                .map(|s| format!("in {s:.1}s"))
                .unwrap_or_else(|| "NO".into())
        );
    }
    if !error_samples.is_empty() {
        error_samples.sort();
        error_samples.dedup();
        for sample in error_samples.iter().take(5) {
            eprintln!("chaos:   error reply seen: {sample}");
        }
    }
    eprintln!(
        "chaos:   {} ops in {:.1}s: {} ok, {} fail, {} unknown; faults {:?}",
        summary.ops, summary.duration_s, summary.ok, summary.fail, summary.unknown, summary.faults
    );
    for (key, anomaly) in report.anomalies() {
        eprintln!("chaos:   ANOMALY on key {key}: {}", anomaly.explanation);
        for op in &anomaly.ops {
            eprintln!("chaos:     {}", serde_json::to_string(op)?);
        }
    }
    for (key, verdict) in &report.keys {
        if let stator_check::KeyVerdict::Undetermined { reason } = verdict {
            eprintln!("chaos:   UNDETERMINED key {key}: {reason}");
        }
    }
    for write in lost {
        eprintln!(
            "chaos:   LOST acknowledged write {} (final read {:?})",
            serde_json::to_string(&write.write)?,
            write.final_value
        );
    }
    eprintln!(
        "chaos:   verdict {:?}, {} anomalies, {} lost acknowledged writes; history in {}",
        summary.verdict,
        summary.anomalies,
        summary.lost_acked_writes,
        opts.history.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_that_kill_every_replica_need_disk_and_default_to_it() {
        for kind in [FaultKind::Restart, FaultKind::RestartLate] {
            let faults = [FaultKind::Kill, kind];
            assert_eq!(default_durability(&faults), Durability::Disk);
            assert!(check_durability(&faults, Durability::Disk).is_ok());
            for weaker in [Durability::Memory, Durability::Periodic] {
                let refused = check_durability(&faults, weaker).unwrap_err().to_string();
                assert!(refused.contains("--durability disk"), "{refused}");
            }
        }
        assert_eq!(default_durability(&[FaultKind::Kill]), Durability::Memory);
    }
}
