//! The cluster under test, started by chaos itself in a temporary directory: one
//! `stator server` on the embedded store, or three on one etcd (the controller lease
//! moves between them); a `stator gateway` given every server URL; and `--nodes`
//! `stator agent`s, each in a network namespace of its own when there are namespaces
//! ([`super::netns`]), else on loopback. Every process is a child of chaos; a supervisor
//! starts dead ones again: agents after `up`'s restart delay (they rejoin as new
//! members, or as themselves while a durable partition still names them), servers after [`SERVER_RESTART_DELAY`] on the same address and data
//! directory. Also: the API calls the nemesis needs, failing over between servers.

use super::netns::Netns;
use anyhow::{bail, Context as _};
use stator_api::spec::Durability;
use stator_api::views::{NodeState, NodeView, PartitionView};
use stator_client::context::{self, Context};
use stator_client::Api;
use stator_harness::etcd::LocalEtcd as Etcd;
pub use stator_harness::process::{is_stopped, process_age_ms};
use stator_harness::supervisor::{ProcessSpec, Supervisor};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Name of the kv service the clients use.
pub const SERVICE: &str = "chaos-kv";
/// Time allowed for the servers to start and every agent to register.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Servers sharing etcd: a majority-free control plane needs only one alive, three lets
/// a kill of the holder hand the lease to one of two others.
pub const ETCD_SERVERS: usize = 3;
/// How long a killed server stays down before it is started again (a machine reboot).
pub const SERVER_RESTART_DELAY: Duration = Duration::from_secs(3);
/// How long a dead gateway stays down (it is not a fault target; a crash is logged).
const GATEWAY_RESTART_DELAY: Duration = Duration::from_secs(1);
/// Time allowed for the processes to stop after SIGTERM before they are killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Zones agents are spread over, round-robin, as `stator up` does.
const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];
/// The key holding the controller holder's URL (`stator_server::leader::LEADER_KEY`).
const LEADER_KEY: &str = stator_server::leader::LEADER_KEY;

/// Where the agents run.
pub enum Placement {
    /// On loopback, as processes of this machine (partitions: [`super::firewall`]).
    Loopback,
    /// Each in its own network namespace on a private bridge.
    Netns(Arc<Netns>),
}

/// The running cluster and clients of its API.
pub struct LocalCluster {
    /// The servers (`server s0`...), the `gateway` and the agents (`agent node-1`...).
    processes: Supervisor,
    /// The task restarting exited processes.
    supervisor: Option<JoinHandle<()>>,
    /// The API client, failing over between the servers (set once they are up).
    api: Option<Api>,
    /// Each server's URL (also its advertised URL), by index.
    pub server_urls: Vec<String>,
    etcd: Option<Etcd>,
    http: reqwest::Client,
    /// Where the processes keep their data and logs.
    pub data_dir: PathBuf,
    /// Where the kv service's RESP endpoint listens.
    pub resp_addr: String,
    /// Agents kept running.
    pub nodes: usize,
}

/// The agents of a [`LocalCluster`], read from its supervisor (the one source of agent
/// pids in chaos: what it started, including restarts). Cheap to clone.
#[derive(Clone)]
pub struct Agents(Supervisor);

impl Agents {
    /// The agents running now, by node name.
    pub fn pids(&self) -> BTreeMap<String, u32> {
        self.0
            .pids(|name| name.starts_with(AGENT_PREFIX))
            .into_iter()
            .map(|(name, pid)| (name[AGENT_PREFIX.len()..].to_string(), pid))
            .collect()
    }
}

/// A free port on `ip` (bound then released: a small race, fine for a test cluster).
fn free_port(ip: IpAddr) -> anyhow::Result<u16> {
    let listener =
        std::net::TcpListener::bind((ip, 0)).with_context(|| format!("binding a port on {ip}"))?;
    Ok(listener.local_addr()?.port())
}

/// Copies the binary this run started from into `data_dir`: every process runs the
/// copy, so a rebuild during the run (cargo replaces target/*/stator) does not change
/// what a restarted server or agent runs.
fn copy_this_binary(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let exe = data_dir.join("stator");
    std::fs::copy("/proc/self/exe", &exe)
        .with_context(|| format!("copying this binary to {}", exe.display()))?;
    Ok(exe)
}

/// The environment variable that sets a stator process's log filter.
const LOG_ENV: &str = "STATOR_LOG";
/// The cluster's processes' log filter when chaos runs without [`LOG_ENV`]: the control
/// plane's events and the agents' registrations (node id, rejoined or new), stores
/// and elections, which say what a fault did; `warn` elsewhere (a binary's default).
pub const CHILD_LOG_DEFAULT: &str =
    "warn,stator_server=info,stator_agent=info,stator_replication=info";

/// The environment given to every process of the cluster: [`CHILD_LOG_DEFAULT`] unless
/// chaos itself runs with [`LOG_ENV`] (the processes inherit it then).
fn child_log_env() -> Vec<(String, String)> {
    if std::env::var_os(LOG_ENV).is_some() {
        Vec::new()
    } else {
        vec![(LOG_ENV.into(), CHILD_LOG_DEFAULT.into())]
    }
}

/// The supervisor's name of the gateway process.
const GATEWAY: &str = "gateway";
/// Prefix of the supervisor's names of agent processes (`agent node-1`).
const AGENT_PREFIX: &str = "agent ";

/// The supervisor's name of server `index`'s process.
fn server_name(index: usize) -> String {
    format!("server s{index}")
}

/// The supervisor's name of agent `node`'s process.
fn agent_name(node: &str) -> String {
    format!("{AGENT_PREFIX}{node}")
}

/// Whether the node is registered and alive (not lost).
pub fn alive(node: &NodeView) -> bool {
    node.state != NodeState::Lost
}

/// Node names chaos gives its agents.
pub fn node_names(nodes: usize) -> Vec<String> {
    (1..=nodes).map(|i| format!("node-{i}")).collect()
}

impl LocalCluster {
    /// Starts etcd (when `with_etcd`), the servers, the gateway and `nodes` agents placed
    /// by `placement` in `data_dir`, and waits until every agent is ready. The service
    /// is applied later by [`LocalCluster::apply_service`].
    pub async fn start(
        data_dir: &Path,
        nodes: usize,
        placement: &Placement,
        with_etcd: bool,
    ) -> anyhow::Result<LocalCluster> {
        let exe = copy_this_binary(data_dir)?;
        let host_ip: IpAddr = match placement {
            Placement::Loopback => [127, 0, 0, 1].into(),
            Placement::Netns(netns) => netns.bridge_ip().into(),
        };
        let etcd = if with_etcd {
            Some(stator_harness::servers::start_etcd(1).await?)
        } else {
            None
        };
        let mut cluster = LocalCluster {
            processes: Supervisor::new("chaos"),
            supervisor: None,
            api: None,
            server_urls: Vec::new(),
            etcd,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
            data_dir: data_dir.to_path_buf(),
            resp_addr: format!("{host_ip}:{}", free_port(host_ip)?),
            nodes,
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        cluster.start_servers(&exe, host_ip, deadline).await?;
        let s0 = data_dir.join("servers").join("s0");
        let api_token = s0.join(stator_server::config::API_TOKEN_FILE);
        let join_token = s0.join(stator_server::config::JOIN_TOKEN_FILE);
        cluster.api = Some(Api::new(&Context {
            server: cluster.server_urls.join(","),
            token: context::read_token(&api_token)?,
            gateway_http: None,
        })?);
        cluster.start_gateway(&exe, host_ip, &api_token)?;
        cluster.start_agents(&exe, placement, &join_token)?;
        cluster.supervisor = Some(tokio::spawn(cluster.processes.clone().run()));
        cluster.wait_for_agents(deadline).await?;
        Ok(cluster)
    }

    /// Starts the servers one after the other, each waited for: the first one alone, so
    /// the others adopt the tokens it stores. Several share etcd when there is one.
    async fn start_servers(
        &mut self,
        exe: &Path,
        host_ip: IpAddr,
        deadline: Instant,
    ) -> anyhow::Result<()> {
        let server_count = if self.etcd.is_some() { ETCD_SERVERS } else { 1 };
        for i in 0..server_count {
            let dir = self.data_dir.join("servers").join(format!("s{i}"));
            std::fs::create_dir_all(&dir)?;
            let addr = format!("{host_ip}:{}", free_port(host_ip)?);
            let url = format!("http://{addr}");
            let mut args: Vec<String> = ["server", "--listen", &addr, "--advertise", &url]
                .map(String::from)
                .to_vec();
            args.extend(["--data-dir".into(), dir.display().to_string()]);
            if let Some(etcd) = &self.etcd {
                let hosts: Vec<&str> = etcd
                    .endpoints()
                    .iter()
                    .map(|e| e.trim_start_matches("http://"))
                    .collect();
                args.extend(["--store".into(), format!("etcd://{}", hosts.join(","))]);
            }
            self.server_urls.push(url.clone());
            self.processes.start(ProcessSpec {
                name: server_name(i),
                program: exe.to_path_buf(),
                args,
                log: dir.join("server.log"),
                pid_file: None,
                env: child_log_env(),
                restart_delay: SERVER_RESTART_DELAY,
            })?;
            self.wait_server(i, &dir, deadline).await?;
        }
        Ok(())
    }

    /// Starts the gateway, given every server URL.
    fn start_gateway(&self, exe: &Path, host_ip: IpAddr, api_token: &Path) -> anyhow::Result<()> {
        let gateway_http = format!("{host_ip}:{}", free_port(host_ip)?);
        self.processes.start(ProcessSpec {
            name: GATEWAY.into(),
            program: exe.to_path_buf(),
            args: vec![
                "gateway".into(),
                "--server".into(),
                self.server_urls.join(","),
                "--token-file".into(),
                api_token.display().to_string(),
                "--http".into(),
                gateway_http,
            ],
            log: self.data_dir.join("gateway.log"),
            pid_file: None,
            env: child_log_env(),
            restart_delay: GATEWAY_RESTART_DELAY,
        })
    }

    /// Starts the agents, each in its namespace when there are namespaces.
    fn start_agents(
        &self,
        exe: &Path,
        placement: &Placement,
        join_token: &Path,
    ) -> anyhow::Result<()> {
        for (i, name) in node_names(self.nodes).into_iter().enumerate() {
            let dir = self.data_dir.join("agents").join(&name);
            std::fs::create_dir_all(&dir)?;
            let (program, mut args, listen) = match placement {
                Placement::Loopback => (exe.to_path_buf(), Vec::new(), "127.0.0.1:0".to_string()),
                Placement::Netns(netns) => {
                    let net = netns
                        .node(&name)
                        .with_context(|| format!("no namespace for {name}"))?;
                    (
                        PathBuf::from("ip"),
                        vec![
                            "netns".to_string(),
                            "exec".into(),
                            net.ns.clone(),
                            exe.display().to_string(),
                        ],
                        format!("{}:0", net.ip),
                    )
                }
            };
            // `agent` first, as `up` starts its agents.
            args.extend([
                "agent".to_string(),
                "--server".into(),
                self.server_urls.join(","),
                "--join-token-file".into(),
                join_token.display().to_string(),
                "--name".into(),
                name.clone(),
                "--zone".into(),
                ZONES[i % ZONES.len()].into(),
                "--listen".into(),
                listen,
                "--data-dir".into(),
                dir.display().to_string(),
            ]);
            self.processes.start(ProcessSpec {
                name: agent_name(&name),
                program,
                args,
                log: dir.join("agent.log"),
                pid_file: None,
                env: child_log_env(),
                restart_delay: stator_harness::AGENT_RESTART_DELAY,
            })?;
        }
        Ok(())
    }

    /// Waits until every agent is ready, at most until `deadline`.
    async fn wait_for_agents(&self, deadline: Instant) -> anyhow::Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.api()?
            .wait_for_ready_nodes(self.nodes, left)
            .await
            .with_context(|| {
                format!(
                    "agents did not register within {STARTUP_TIMEOUT:?}; see {}/agents/*/agent.log",
                    self.data_dir.display()
                )
            })
    }

    /// Waits until server `index` has written its tokens and answers `/healthz`.
    async fn wait_server(&self, index: usize, dir: &Path, deadline: Instant) -> anyhow::Result<()> {
        let url = &self.server_urls[index];
        loop {
            let tokens = dir.join(stator_server::config::JOIN_TOKEN_FILE).exists()
                && dir.join(stator_server::config::API_TOKEN_FILE).exists();
            if tokens
                && self
                    .http
                    .get(format!("{url}/healthz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            {
                return Ok(());
            }
            if !self.server_running(index) {
                bail!(
                    "server s{index} exited at start-up; see {}",
                    dir.join("server.log").display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "server s{index} did not answer within {STARTUP_TIMEOUT:?}; see {}",
                    dir.join("server.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the cluster has several servers on etcd (so the controller can move).
    pub fn has_etcd(&self) -> bool {
        self.etcd.is_some()
    }

    /// The process id of agent `node`, if it runs now.
    pub fn agent_pid(&self, node: &str) -> Option<u32> {
        self.processes.pid(&agent_name(node))
    }

    /// The agents running now, by node name.
    pub fn agent_pids(&self) -> BTreeMap<String, u32> {
        self.agents().pids()
    }

    /// The agents as a handle that outlives a borrow of the cluster (for a task).
    pub fn agents(&self) -> Agents {
        Agents(self.processes.clone())
    }

    /// SIGKILLs every agent at once and has the supervisor start them again after
    /// `down` (instead of `up`'s restart delay); the killed pids by node name.
    pub fn kill_and_restart_agents(&self, down: Duration) -> BTreeMap<String, u32> {
        self.processes
            .kill_and_restart(|name| name.starts_with(AGENT_PREFIX), down)
            .into_iter()
            .map(|(name, pid)| (name[AGENT_PREFIX.len()..].to_string(), pid))
            .collect()
    }

    /// The process id of server `index`, if it runs now.
    pub fn server_pid(&self, index: usize) -> Option<u32> {
        self.processes.pid(&server_name(index))
    }

    /// Whether server `index` runs (not waiting for its restart).
    pub fn server_running(&self, index: usize) -> bool {
        self.processes.is_running(&server_name(index))
    }

    /// The index of the server holding the controller lease, read from etcd; `None`
    /// without etcd, or while no server holds it.
    pub async fn controller_holder(&self) -> Option<usize> {
        self.controller_term().await.map(|(index, _)| index)
    }

    /// The holder's index and the etcd revision at which it took the lease (a new
    /// revision is a new term, even for the same server).
    pub async fn controller_term(&self) -> Option<(usize, u64)> {
        let etcd = self.etcd.as_ref()?;
        let (url, revision) = stator_harness::etcd::get_with_create_revision(
            &self.http,
            &etcd.endpoints()[0],
            LEADER_KEY.as_bytes(),
        )
        .await?;
        let url = String::from_utf8(url).ok()?;
        let index = self.server_urls.iter().position(|u| *u == url)?;
        Some((index, revision))
    }

    /// The API client over every server.
    fn api(&self) -> anyhow::Result<&Api> {
        self.api
            .as_ref()
            .context("the servers have not started yet")
    }

    /// A GET through the first server that answers.
    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.api()?.get(path).await
    }

    /// POST `path` through the first server that answers.
    pub async fn post(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        self.api()?.post(path).await
    }

    /// Applies the kv service: `partitions` partitions of 3 replicas with `durability`,
    /// RESP on [`LocalCluster::resp_addr`]. Protected mode is off: in network-namespace runs that
    /// address is the private bridge's, not loopback, and chaos's own clients (on the
    /// host side of the bridge) must be served without a password.
    pub async fn apply_service(
        &self,
        partitions: u32,
        durability: Durability,
    ) -> anyhow::Result<()> {
        let spec = format!(
            "name = \"{SERVICE}\"\nkind = \"replicated\"\npartitions = {partitions}\nreplicas = 3\n\
             durability = \"{durability}\"\n\
             app = {{ builtin = \"kv\" }}\nexpose = {{ resp = \"{}\", protected_mode = false }}\n\
             resources = {{ cpu = \"250m\", memory = \"128Mi\" }}\n",
            self.resp_addr
        );
        self.api()?
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
        self.get("/v1/nodes").await
    }

    /// The kv service's partitions.
    pub async fn partitions(&self) -> anyhow::Result<Vec<PartitionView>> {
        let all: Vec<PartitionView> = self.get("/v1/partitions").await?;
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

    /// Healthy: every server running (and, on etcd, one holding the controller lease),
    /// every agent ready, every partition with a leader, its replication factor met and
    /// every member alive. `None` when healthy, else why not.
    pub async fn unhealthy(&self) -> Option<String> {
        for index in 0..self.server_urls.len() {
            if !self.server_running(index) {
                return Some(format!("server s{index} is down"));
            }
        }
        if self.has_etcd() && self.controller_holder().await.is_none() {
            return Some("no server holds the controller lease".into());
        }
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

    /// Waits until [`LocalCluster::unhealthy`] is `None`, at most `timeout`; returns the last
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

    /// Fails if the gateway is gone for good (it is not a fault target).
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if self.processes.gave_up(GATEWAY) {
            bail!(
                "the gateway could not be restarted; see {}",
                self.data_dir.join("gateway.log").display()
            );
        }
        Ok(())
    }

    /// Stops every process (SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]) and etcd.
    pub async fn stop(mut self) {
        if let Some(supervisor) = self.supervisor.take() {
            supervisor.abort();
            let _ = supervisor.await;
        }
        self.processes.stop_all(STOP_TIMEOUT).await;
        self.stop_etcd();
    }

    /// Stops etcd, its member logs copied into the cluster's directory first (etcd's
    /// own temporary directory goes with it).
    fn stop_etcd(&mut self) {
        if let Some(etcd) = self.etcd.take() {
            super::logs::save_etcd_logs(etcd.dir(), &self.data_dir);
        }
    }
}

impl Drop for LocalCluster {
    /// Without [`LocalCluster::stop`] (an error or Ctrl-C): the supervisor stops, so the
    /// processes, killed on drop, are not started again.
    fn drop(&mut self) {
        if let Some(supervisor) = self.supervisor.take() {
            supervisor.abort();
        }
        self.stop_etcd();
    }
}
