//! Restart time of a member holding N MiB of state, in one run: a `disk` replica that
//! reopens its own store and fetches only the writes it missed, beside the same member
//! started empty, which copies the whole state from the leader (what a `memory`
//! replica, or a node back after its grace, does today).
//!
//! Three hosts in this process on loopback form one `disk` group; the bench loads it
//! with `--state-mib` of values, then for each way: stops a follower, writes
//! [`TAIL_WRITES`] more, starts the follower again on its address and measures until
//! it has applied everything the leader had applied when it came back. The empty start
//! is a new member added as a learner in the stopped follower's place (what the server
//! does for a member whose state is gone), timed from its host's start until it has
//! applied the same index; the control plane's own delay (a heartbeat, a reconcile pass)
//! is not included, so the from-scratch figure is a lower bound of that path.
//!
//! Values are at most [`MAX_WRITE_BATCH_BYTES`]: one entry then holds at most that much,
//! and an AppendEntries of [`stator_replication::host::MAX_ENTRIES_PER_APPEND`] entries
//! stays near the 1 MiB the host is tuned for. The first version of this bench wrote
//! 16 KiB values (one write per entry, 2 MiB appends) at the default 100 ms election
//! timeout and hung while loading in a debug build: a follower's append plus its fsync
//! took longer than half the election timeout, which openraft uses as the AppendEntries
//! timeout, so appends were resent and elections repeated without end (seen in this
//! bench's log: `timeout after 50ms when AppendEntries`, terms past 200). See
//! [`ELECTION_TIMEOUT_MS`].

use super::hosts::kv_set;
use serde::Serialize;
use stator_api::spec::Durability;
use stator_replication::host::{LOG_KEPT_BEHIND_SNAPSHOT, MAX_WRITE_BATCH_BYTES};
use stator_replication::{GroupId, GroupOptions, Host, HostConfig, ReplicaClient};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Writes made while the follower is down: the tail it fetches on a restart from disk.
pub const TAIL_WRITES: usize = 200;
/// Concurrent loaders: enough to fill a group commit batch.
const LOADERS: usize = 16;
/// Longest wait for one write, a host's port, or a member's catch-up.
const DEADLINE: Duration = Duration::from_secs(600);
/// Election timeout of the group under test. openraft uses half of it as the
/// AppendEntries timeout: at the services' default (100 ms) a follower's append plus its
/// fsync missed 50 ms on a loaded 2-core machine in a debug build, appends were resent
/// and elections repeated (terms past 200 within a minute) and the load never finished.
/// Both restarts run with the same setting, so the ratio compares like with like.
pub const ELECTION_TIMEOUT_MS: u64 = 1_000;
/// The member id of the empty replacement in the `from-scratch` way.
const REPLACEMENT_NODE: u64 = 4;
/// The group under test.
fn group() -> GroupId {
    GroupId::new(1, 0)
}

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct Options {
    /// State held by the group before the restarts, MiB.
    pub state_mib: u64,
    /// Bytes per value, at most [`MAX_WRITE_BATCH_BYTES`].
    pub value_bytes: usize,
}

/// One way of restarting.
#[derive(Debug, Clone, Serialize)]
pub struct Restart {
    /// `own-disk` or `from-scratch`.
    pub way: &'static str,
    /// From starting the host again to its replica having applied the leader's index.
    pub catch_up_ms: f64,
    /// Of which: starting the host and opening its replica (for `own-disk`: reading and
    /// checking the store, restoring its snapshot and re-applying the committed log
    /// after it; for `from-scratch`: an empty replica and the membership change).
    pub open_ms: f64,
    /// The leader's applied index the member had to reach.
    pub target_index: u64,
}

/// The run's result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// State loaded, MiB (values only).
    pub state_mib: u64,
    /// Bytes per value.
    pub value_bytes: usize,
    /// Writes that loaded it.
    pub load_writes: u64,
    /// Writes the stopped member missed.
    pub tail_writes: usize,
    /// Restart from the member's own disk.
    pub own_disk: Restart,
    /// Restart with an empty store.
    pub from_scratch: Restart,
    /// `from_scratch.catch_up_ms / own_disk.catch_up_ms`.
    pub speedup: f64,
}

/// The three hosts and what is needed to restart one.
struct Trio {
    hosts: BTreeMap<u64, Host>,
    addrs: BTreeMap<u64, String>,
    secret: String,
    root: PathBuf,
    options: GroupOptions,
}

impl Trio {
    fn config(&self, node: u64, listen: String) -> HostConfig {
        HostConfig {
            node_id: node,
            listen_addr: listen,
            cluster_secret: self.secret.clone(),
            filter: None,
            tls: None,
            data_dir: Some(self.root.join(node.to_string())),
            // Unpaced: the "from scratch" baseline is a full copy to a new learner, and
            // pacing it would make the own-disk rejoin look better by slowing the other
            // side of the ratio. (The rejoin is a voter's catch-up: never paced.)
            learner_catchup_bytes_per_sec: 0,
        }
    }

    async fn start(root: &Path) -> anyhow::Result<Trio> {
        let mut trio = Trio {
            hosts: BTreeMap::new(),
            addrs: BTreeMap::new(),
            secret: format!("{:032x}", rand::random::<u128>()),
            root: root.to_path_buf(),
            options: GroupOptions {
                durability: Durability::Disk,
                election_timeout_ms: ELECTION_TIMEOUT_MS,
                ..GroupOptions::default()
            },
        };
        for node in 1..=3 {
            let host = Host::start(trio.config(node, "127.0.0.1:0".into())).await?;
            trio.addrs.insert(node, host.addr().to_string());
            host.create_group(
                group(),
                trio.options,
                Box::new(stator_kv::KvMachine::default()),
            )
            .await?;
            trio.hosts.insert(node, host);
        }
        trio.hosts[&1].bootstrap(group(), &trio.addrs).await?;
        Ok(trio)
    }

    fn members(&self) -> Vec<String> {
        self.addrs.values().cloned().collect()
    }

    fn applied(&self, node: u64) -> u64 {
        self.hosts
            .get(&node)
            .and_then(|h| h.status(group()))
            .map_or(0, |s| s.applied_index)
    }

    /// The node leading the group, once one does.
    async fn leader(&self) -> anyhow::Result<u64> {
        let started = Instant::now();
        loop {
            for (node, host) in &self.hosts {
                if host.status(group()).and_then(|s| s.leader) == Some(*node) {
                    return Ok(*node);
                }
            }
            anyhow::ensure!(
                started.elapsed() < DEADLINE,
                "no leader within {DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(&mut self, node: u64) {
        if let Some(host) = self.hosts.remove(&node) {
            host.shutdown().await;
        }
    }

    /// Starts `node` again on its address (retrying while the old port frees) and opens
    /// its replica: from its store when it has one, else empty.
    async fn start_again(&mut self, node: u64) -> anyhow::Result<()> {
        let started = Instant::now();
        let host = loop {
            match Host::start(self.config(node, self.addrs[&node].clone())).await {
                Ok(host) => break host,
                // The stopped listener's port frees once its task is dropped.
                Err(_) if started.elapsed() < DEADLINE => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        host.create_group(
            group(),
            self.options,
            Box::new(stator_kv::KvMachine::default()),
        )
        .await?;
        self.hosts.insert(node, host);
        Ok(())
    }

    /// Starts `node` with an empty store on a new address and has `leader` add it as a
    /// learner in place of `gone`.
    async fn add_empty_member(&mut self, node: u64, gone: u64, leader: u64) -> anyhow::Result<()> {
        let host = Host::start(self.config(node, "127.0.0.1:0".into())).await?;
        host.create_group(
            group(),
            self.options,
            Box::new(stator_kv::KvMachine::default()),
        )
        .await?;
        self.addrs.remove(&gone);
        self.addrs.insert(node, host.addr().to_string());
        self.hosts.insert(node, host);
        // One membership step: the new member joins as a learner and copies the state.
        self.hosts[&leader]
            .reconcile_membership(group(), &self.addrs)
            .await?;
        Ok(())
    }

    /// Waits until `node` has applied `index`.
    async fn wait_applied(&self, node: u64, index: u64) -> anyhow::Result<()> {
        let started = Instant::now();
        while self.applied(node) < index {
            anyhow::ensure!(
                started.elapsed() < DEADLINE,
                "node {node} did not apply index {index} within {DEADLINE:?} (at {})",
                self.applied(node)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Waits until `node` is not building a snapshot (its log is shorter than the
    /// snapshot interval plus what it keeps behind a snapshot). A host stopped in this
    /// process while its snapshot task still runs keeps its store open (redb's lock)
    /// until that task ends, up to a minute at 1 GiB on a loaded machine, and its
    /// restart on the same directory would time out waiting for the lock: a rebooted
    /// machine's agent has no such task left. Seen at `--state-mib 1024`, where the
    /// 260,000-entry snapshot starts as the load ends.
    /// A snapshot is also due once the log holds as many bytes as the state
    /// (`snapshot_due_by_bytes`), so this also waits until none is due that way and no
    /// build runs.
    async fn wait_no_snapshot_due(&self, node: u64) -> anyhow::Result<()> {
        let started = Instant::now();
        let due_at = self.options.snapshot_every_entries + LOG_KEPT_BEHIND_SNAPSHOT;
        let entries = || {
            self.hosts
                .get(&node)
                .and_then(|h| h.status(group()))
                .map_or(0, |s| s.log_entries)
        };
        let by_bytes = || {
            self.hosts
                .get(&node)
                .and_then(|h| h.replica(group()))
                .is_some_and(|r| r.sm.snapshot_due() || r.sm.building_snapshot())
        };
        while entries() >= due_at || by_bytes() {
            anyhow::ensure!(
                started.elapsed() < DEADLINE,
                "node {node} still holds {} log entries after {DEADLINE:?} (a snapshot is due)",
                entries()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    async fn shutdown(mut self) {
        for node in self.hosts.keys().copied().collect::<Vec<_>>() {
            self.stop(node).await;
        }
    }
}

/// Writes `count` values of `value_bytes` under keys `prefix-i`, `LOADERS` at a time.
async fn write_values(
    trio: &Trio,
    prefix: &str,
    count: u64,
    value_bytes: usize,
) -> anyhow::Result<()> {
    let members = Arc::new(trio.members());
    let value = Arc::new(vec![b'v'; value_bytes]);
    let next = Arc::new(AtomicU64::new(0));
    let mut loaders = tokio::task::JoinSet::new();
    for _ in 0..LOADERS {
        let (members, value, next) = (members.clone(), value.clone(), next.clone());
        // A client per loader: a session's writes must arrive in sequence order.
        let client = ReplicaClient::new(&trio.secret);
        let prefix = prefix.to_string();
        loaders.spawn(async move {
            let mut leader = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return anyhow::Ok(());
                }
                let key = format!("{prefix}-{i}");
                let kv = (key.as_str(), value.as_slice());
                let reply = kv_set(&client, group(), &members, &mut leader, kv, DEADLINE).await?;
                anyhow::ensure!(reply == b"+OK\r\n", "SET {key}: {reply:?}");
            }
        });
    }
    while let Some(loader) = loaders.join_next().await {
        loader??;
    }
    Ok(())
}

/// Stops a follower and writes the tail; then either starts that follower again on its
/// own store (`own-disk`), or, for `from-scratch`, leaves it down and adds a new, empty
/// member ([`REPLACEMENT_NODE`]) as a learner, as the server replaces a member whose
/// node came back without its state. (Restarting the same id with its store deleted is
/// not an option: a member that forgot entries it acknowledged must never rejoin under
/// its id, and openraft's leader panics on it: "follower log reversion is not allowed".)
/// Times from starting the member's host until it has applied the leader's index.
async fn restart_once(
    trio: &mut Trio,
    way: &'static str,
    replace: bool,
    value_bytes: usize,
) -> anyhow::Result<Restart> {
    let leader = trio.leader().await?;
    let follower = *trio.addrs.keys().find(|n| **n != leader).expect("3 hosts");
    trio.wait_applied(follower, trio.applied(leader)).await?;
    trio.wait_no_snapshot_due(follower).await?;
    trio.stop(follower).await;
    write_values(trio, way, TAIL_WRITES as u64, value_bytes).await?;
    let leader = trio.leader().await?;
    let target_index = trio.applied(leader);
    let started = Instant::now();
    let member = if replace {
        trio.add_empty_member(REPLACEMENT_NODE, follower, leader)
            .await?;
        REPLACEMENT_NODE
    } else {
        trio.start_again(follower).await?;
        follower
    };
    let open_ms = started.elapsed().as_secs_f64() * 1e3;
    trio.wait_applied(member, target_index).await?;
    let catch_up_ms = started.elapsed().as_secs_f64() * 1e3;
    eprintln!(
        "restart {way}: node {member} caught up to index {target_index} in {catch_up_ms:.0} ms (opened in {open_ms:.0} ms)"
    );
    Ok(Restart {
        way,
        catch_up_ms,
        open_ms,
        target_index,
    })
}

/// Worker threads of the bench's own runtime: the three hosts' durable stores block
/// their threads while they fsync, which must not starve the other hosts' timers (a
/// 2-core machine's default runtime has 2 workers).
const WORKER_THREADS: usize = 8;

/// Runs [`run_in_runtime`] on a runtime of its own with [`WORKER_THREADS`] workers.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    let opts = opts.clone();
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .enable_all()
            .build()?
            .block_on(run_in_runtime(&opts))
    })
    .await?
}

/// Runs both restarts on one loaded group.
pub async fn run_in_runtime(opts: &Options) -> anyhow::Result<Report> {
    anyhow::ensure!(opts.state_mib >= 1, "--state-mib: at least 1");
    anyhow::ensure!(
        (64..=MAX_WRITE_BATCH_BYTES).contains(&opts.value_bytes),
        "--value-bytes: between 64 and {MAX_WRITE_BATCH_BYTES} (a write batch's size: larger \
         values make appends too large to replicate within the heartbeat interval)"
    );
    let root = tempfile::tempdir()?;
    let mut trio = Trio::start(root.path()).await?;
    trio.leader().await?;
    let load_writes = (opts.state_mib << 20) / opts.value_bytes as u64;
    eprintln!(
        "restart: loading {} MiB ({load_writes} writes of {} bytes) into a disk group of 3 ...",
        opts.state_mib, opts.value_bytes
    );
    let loading = Instant::now();
    write_values(&trio, "state", load_writes, opts.value_bytes).await?;
    eprintln!(
        "restart: loaded in {:.1} s",
        loading.elapsed().as_secs_f64()
    );
    let result = async {
        let own_disk = restart_once(&mut trio, "own-disk", false, opts.value_bytes).await?;
        let from_scratch = restart_once(&mut trio, "from-scratch", true, opts.value_bytes).await?;
        anyhow::Ok((own_disk, from_scratch))
    }
    .await;
    trio.shutdown().await;
    let (own_disk, from_scratch) = result?;
    Ok(Report {
        state_mib: opts.state_mib,
        value_bytes: opts.value_bytes,
        load_writes,
        tail_writes: TAIL_WRITES,
        speedup: from_scratch.catch_up_ms / own_disk.catch_up_ms.max(0.001),
        own_disk,
        from_scratch,
    })
}

/// Prints the two restarts on stderr and, with `json`, the report on stdout's last line.
pub fn print_report(report: &Report, json: bool) -> anyhow::Result<()> {
    eprintln!(
        "{:<13} {:>12} {:>9} {:>12}",
        "restart", "catch_up_ms", "open_ms", "to_index"
    );
    for r in [&report.own_disk, &report.from_scratch] {
        eprintln!(
            "{:<13} {:>12.0} {:>9.0} {:>12}",
            r.way, r.catch_up_ms, r.open_ms, r.target_index
        );
    }
    eprintln!(
        "own disk is {:.1}x faster than a full copy ({} MiB, {} missed writes)",
        report.speedup, report.state_mib, report.tail_writes
    );
    if json {
        println!("{}", serde_json::to_string(report)?);
    }
    Ok(())
}
