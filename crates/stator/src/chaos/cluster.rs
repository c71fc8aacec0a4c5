//! The cluster under test: a child `stator up` of this same binary in a temporary
//! directory, the API calls the nemesis needs, and the agents' process ids.

use crate::client::Api;
use crate::context::Context;
use anyhow::{bail, Context as _};
use stator_server::model::NodeState;
use stator_server::views::{NodeView, PartitionView};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// Name of the kv service the clients use.
pub const SERVICE: &str = "chaos-kv";
/// Time allowed for `stator up` to start and every agent to register.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `stator up` and a client of its API.
pub struct Cluster {
    child: Child,
    pub api: Api,
    pub data_dir: PathBuf,
    /// Where the kv service's RESP endpoint listens.
    pub resp_addr: String,
    /// Agents `up` keeps running.
    pub nodes: usize,
}

/// A free loopback port (bound then released: a small race, fine for a test cluster).
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Whether the node is registered and alive (not lost).
pub fn alive(node: &NodeView) -> bool {
    node.state != NodeState::Lost
}

impl Cluster {
    /// Starts `stator up` with `nodes` agents in `data_dir` and waits until every agent
    /// is ready. The service is applied later by [`Cluster::apply_service`], once the
    /// caller has placed the agents in their cgroups.
    pub async fn start(data_dir: &Path, nodes: usize) -> anyhow::Result<Cluster> {
        let exe = std::env::current_exe()?;
        let log = std::fs::File::create(data_dir.join("up.log"))?;
        let mut cmd = Command::new(exe);
        cmd.arg("up")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--nodes", &nodes.to_string()])
            .args(["--api", "127.0.0.1:0", "--gateway-http", "127.0.0.1:0"])
            // `up` records its context as the user's current one under $HOME: keep the
            // user's own untouched.
            .env("HOME", data_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; if chaos dies, its cluster dies with it.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().context("starting `stator up`")?;
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let context_file = data_dir.join("context");
        let ctx: Context = loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "`stator up` exited ({status}); see {}",
                    data_dir.join("up.log").display()
                );
            }
            if let Ok(text) = std::fs::read_to_string(&context_file) {
                if let Ok(ctx) = serde_json::from_str(&text) {
                    break ctx;
                }
            }
            if Instant::now() > deadline {
                bail!("`stator up` wrote no context within {STARTUP_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let cluster = Cluster {
            child,
            api: Api::new(&ctx)?,
            data_dir: data_dir.to_path_buf(),
            resp_addr: format!("127.0.0.1:{}", free_port()?),
            nodes,
        };
        loop {
            let ready = cluster
                .nodes()
                .await
                .map(|n| n.iter().filter(|n| n.state == NodeState::Ready).count())
                .unwrap_or(0);
            if ready >= nodes {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "only {ready} of {nodes} agents registered within {STARTUP_TIMEOUT:?}; see {}/agents/*/agent.log",
                    data_dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(cluster)
    }

    /// The process id of `stator up`.
    pub fn up_pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Fails if `stator up` is gone.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "`stator up` exited during the run ({status}); see {}",
                self.data_dir.join("up.log").display()
            );
        }
        Ok(())
    }

    /// Applies the kv service: `partitions` partitions of 3 replicas, RESP on
    /// [`Cluster::resp_addr`].
    pub async fn apply_service(&self, partitions: u32) -> anyhow::Result<()> {
        let spec = format!(
            "name = \"{SERVICE}\"\nkind = \"replicated\"\npartitions = {partitions}\nreplicas = 3\n\
             app = {{ builtin = \"kv\" }}\nexpose = {{ resp = \"{}\" }}\n\
             resources = {{ cpu = \"250m\", memory = \"128Mi\" }}\n",
            self.resp_addr
        );
        self.api
            .put_raw(
                &format!("/v1/services/{SERVICE}"),
                "application/toml",
                spec.into_bytes(),
            )
            .await?;
        Ok(())
    }

    /// Every registered node, lost ones included.
    pub async fn nodes(&self) -> anyhow::Result<Vec<NodeView>> {
        self.api.get("/v1/nodes").await
    }

    /// The kv service's partitions.
    pub async fn partitions(&self) -> anyhow::Result<Vec<PartitionView>> {
        let all: Vec<PartitionView> = self.api.get("/v1/partitions").await?;
        Ok(all.into_iter().filter(|p| p.service == SERVICE).collect())
    }

    /// Transport port of every alive node, by name.
    pub async fn transport_ports(&self) -> anyhow::Result<BTreeMap<String, u16>> {
        let mut ports = BTreeMap::new();
        for node in self.nodes().await? {
            if !alive(&node) {
                continue;
            }
            let port = node
                .transport_addr
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .with_context(|| {
                    format!(
                        "node {} has no transport port: {}",
                        node.name, node.transport_addr
                    )
                })?;
            ports.insert(node.name, port);
        }
        Ok(ports)
    }

    /// Healthy: every agent ready, every partition with a leader, its replication factor
    /// met and every member alive. `None` when healthy, else why not.
    pub async fn unhealthy(&self) -> Option<String> {
        let nodes = match self.nodes().await {
            Ok(n) => n,
            Err(e) => return Some(format!("API: {e}")),
        };
        let ready = nodes.iter().filter(|n| n.state == NodeState::Ready).count();
        if ready < self.nodes {
            return Some(format!("{ready} of {} nodes ready", self.nodes));
        }
        let partitions = match self.partitions().await {
            Ok(p) => p,
            Err(e) => return Some(format!("API: {e}")),
        };
        if partitions.is_empty() {
            return Some("no partitions yet".into());
        }
        for p in &partitions {
            if p.leader.is_none() {
                return Some(format!("partition {} has no leader", p.partition));
            }
            if !p.replication_factor_met || p.members.iter().any(|m| !m.alive) {
                return Some(format!("partition {} is under-replicated", p.partition));
            }
        }
        None
    }

    /// Waits until [`Cluster::unhealthy`] is `None`, at most `timeout`; returns the last
    /// reason when it is not.
    pub async fn wait_healthy(&self, timeout: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        loop {
            match self.unhealthy().await {
                None => return Ok(start.elapsed()),
                Some(why) if start.elapsed() >= timeout => return Err(why),
                Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Stops `stator up` (SIGTERM, then SIGKILL after 10 s) and its agents.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Agent processes of `up_pid` by node name, from `/proc` (children whose command line is
/// `stator agent ... --name NODE ...`).
pub fn agent_pids(up_pid: u32) -> BTreeMap<String, u32> {
    let mut agents = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return agents;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`: comm may hold spaces, so split after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(up_pid) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.get(1).copied() != Some(b"agent".as_slice()) {
            continue;
        }
        if let Some(at) = args.iter().position(|a| *a == b"--name") {
            if let Some(name) = args.get(at + 1) {
                agents.insert(String::from_utf8_lossy(name).into_owned(), pid);
            }
        }
    }
    agents
}

/// Milliseconds since process `pid` started, from `/proc`.
pub fn process_age_ms(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (starttime, clock ticks after boot); 20th after the `(comm)` field.
    let start_ticks: u64 = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    let uptime_s: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(((uptime_s - start_ticks as f64 / ticks_per_s).max(0.0) * 1000.0) as u64)
}

/// Whether `pid` is stopped (SIGSTOP), from `/proc/PID/stat`.
pub fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(|c| c == "T"))
        })
        .unwrap_or(false)
}
