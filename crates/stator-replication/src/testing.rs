//! An in-process cluster for tests and benchmarks: N hosts on loopback, real TCP, real
//! openraft, plus faults a test can inject (kill a host, cut and heal links, drop and
//! delay messages) and a tiny register app to check histories against.

use crate::host::{GroupOptions, Host, HostConfig, MembershipStep};
use crate::tls::TlsConfig;
use crate::transport::{LinkAction, LinkFilter};
use crate::types::{GroupId, NodeId};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use stator_api::app::{AppError, StateMachine, StateMachineFactory};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Link faults shared by every host of an [`InProcessCluster`].
#[derive(Default)]
pub struct Faults {
    cut: Mutex<HashSet<(String, String)>>,
    drop_per_million: AtomicU32,
    delay_us: AtomicU64,
}

impl Faults {
    /// Cuts the link between two listen addresses, both ways.
    pub fn cut(&self, a: &str, b: &str) {
        let mut cut = self.cut.lock().expect("faults mutex poisoned");
        cut.insert((a.to_string(), b.to_string()));
        cut.insert((b.to_string(), a.to_string()));
    }

    /// Cuts the link from `from` to `to` only: nothing `from` sends reaches `to`
    /// (requests, and answers to `to`'s requests), while `to`'s requests still reach
    /// `from`. A peer whose view of `from` is stale, as a starved process's is.
    pub fn cut_one_way(&self, from: &str, to: &str) {
        let mut cut = self.cut.lock().expect("faults mutex poisoned");
        cut.insert((from.to_string(), to.to_string()));
    }

    /// Restores every cut link.
    pub fn heal(&self) {
        self.cut.lock().expect("faults mutex poisoned").clear();
    }

    /// Loses each message with probability `p` (0..=1).
    pub fn set_drop_probability(&self, p: f64) {
        self.drop_per_million
            .store((p.clamp(0.0, 1.0) * 1e6) as u32, Ordering::Relaxed);
    }

    /// Delays every message by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_us
            .store(delay.as_micros() as u64, Ordering::Relaxed);
    }
}

impl LinkFilter for Faults {
    fn check(&self, from: &str, to: &str) -> LinkAction {
        if self
            .cut
            .lock()
            .expect("faults mutex poisoned")
            .contains(&(from.to_string(), to.to_string()))
        {
            return LinkAction::Drop;
        }
        let p = self.drop_per_million.load(Ordering::Relaxed);
        if p > 0 && rand::random::<u32>() % 1_000_000 < p {
            return LinkAction::Drop;
        }
        match self.delay_us.load(Ordering::Relaxed) {
            0 => LinkAction::Deliver,
            us => LinkAction::Delay(Duration::from_micros(us)),
        }
    }
}

/// Commands of the register app: a map of string registers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum RegisterOp {
    /// Sets a register; replies the empty string.
    Set(String, String),
    /// Reads a register; replies its value, if any.
    Get(String),
}

/// A deterministic map of registers, the model the linearizability checker knows.
#[derive(Default)]
pub struct RegisterApp {
    values: BTreeMap<String, String>,
    bytes: u64,
}

impl RegisterApp {
    fn run(&mut self, op: RegisterOp) -> Option<String> {
        match op {
            RegisterOp::Set(k, v) => {
                self.bytes += (k.len() + v.len()) as u64;
                self.values.insert(k, v);
                None
            }
            RegisterOp::Get(k) => self.values.get(&k).cloned(),
        }
    }
}

fn decode(bytes: &[u8]) -> Result<RegisterOp, AppError> {
    postcard::from_bytes(bytes)
        .map_err(|e| AppError::Protocol(format!("bad register command: {e}")))
}

/// Encodes a register command.
pub fn encode_op(op: &RegisterOp) -> Vec<u8> {
    postcard::to_allocvec(op).expect("encoding to a Vec cannot fail")
}

/// Decodes a register reply.
pub fn decode_reply(bytes: &[u8]) -> Option<String> {
    postcard::from_bytes(bytes).expect("register replies are well-formed")
}

#[async_trait]
impl StateMachine for RegisterApp {
    async fn apply(
        &mut self,
        _index: u64,
        _time_ms: u64,
        command: &[u8],
    ) -> Result<Vec<u8>, AppError> {
        let reply = self.run(decode(command)?);
        Ok(postcard::to_allocvec(&reply).expect("encoding to a Vec cannot fail"))
    }
    async fn query(&mut self, _time_ms: u64, request: &[u8]) -> Result<Vec<u8>, AppError> {
        match decode(request)? {
            op @ RegisterOp::Get(_) => {
                Ok(postcard::to_allocvec(&self.run(op)).expect("encoding cannot fail"))
            }
            RegisterOp::Set(..) => Err(AppError::Protocol("a query cannot set".into())),
        }
    }
    async fn snapshot(&mut self) -> Result<Vec<u8>, AppError> {
        Ok(postcard::to_allocvec(&self.values).expect("encoding cannot fail"))
    }
    async fn restore(&mut self, snapshot: &[u8]) -> Result<(), AppError> {
        self.values =
            postcard::from_bytes(snapshot).map_err(|e| AppError::BadSnapshot(e.to_string()))?;
        Ok(())
    }
    fn state_bytes(&self) -> u64 {
        self.bytes
    }
}

/// Builds [`RegisterApp`]s.
pub struct RegisterFactory;

impl StateMachineFactory for RegisterFactory {
    fn create(&self, _group: GroupId) -> Box<dyn StateMachine> {
        Box::<RegisterApp>::default()
    }
}

/// The cluster secret of test clusters.
pub const TEST_SECRET: &str = "stator-test-secret";

/// N hosts in this process on loopback sharing a [`Faults`] table (not to be confused
/// with the server's model `Cluster` or the e2e tests' `Cluster` of real processes).
pub struct InProcessCluster {
    /// Live hosts by node id.
    pub hosts: BTreeMap<NodeId, Host>,
    /// Addresses of every host ever started (dead ones included).
    pub addrs: HashMap<NodeId, String>,
    /// Link faults.
    pub faults: Arc<Faults>,
    /// TLS files every host started from now on uses (`None`: plain TCP).
    pub tls: Option<TlsConfig>,
    factory: Arc<dyn StateMachineFactory>,
    next_node_id: NodeId,
    /// Where each host keeps durable replicas (`<root>/<node id>`); `None`: memory only.
    data_root: Option<std::path::PathBuf>,
}

/// A generous bound for anything a test waits on; tests assert behaviour, not speed.
pub const WAIT: Duration = Duration::from_secs(20);

impl InProcessCluster {
    /// Starts `n` hosts running apps from `factory`.
    pub async fn start(n: usize, factory: Arc<dyn StateMachineFactory>) -> InProcessCluster {
        Self::start_with_tls(n, factory, None).await
    }

    /// Starts `n` hosts whose transports use mutual TLS with `tls` (plain TCP if `None`).
    pub async fn start_with_tls(
        n: usize,
        factory: Arc<dyn StateMachineFactory>,
        tls: Option<TlsConfig>,
    ) -> InProcessCluster {
        let mut cluster = InProcessCluster {
            hosts: BTreeMap::new(),
            addrs: HashMap::new(),
            faults: Arc::new(Faults::default()),
            tls,
            factory,
            next_node_id: 1,
            data_root: None,
        };
        for _ in 0..n {
            cluster.add_host().await;
        }
        cluster
    }

    /// Starts `n` hosts that keep durable replicas under `data_root/<node id>`.
    pub async fn start_durable(
        n: usize,
        factory: Arc<dyn StateMachineFactory>,
        data_root: std::path::PathBuf,
    ) -> InProcessCluster {
        let mut cluster = InProcessCluster {
            hosts: BTreeMap::new(),
            addrs: HashMap::new(),
            faults: Arc::new(Faults::default()),
            tls: None,
            factory,
            next_node_id: 1,
            data_root: Some(data_root),
        };
        for _ in 0..n {
            cluster.add_host().await;
        }
        cluster
    }

    fn host_config(&self, node_id: NodeId, listen_addr: String) -> HostConfig {
        HostConfig {
            node_id,
            listen_addr,
            cluster_secret: TEST_SECRET.into(),
            filter: Some(self.faults.clone()),
            tls: self.tls.clone(),
            data_dir: self.data_root.as_ref().map(|r| r.join(node_id.to_string())),
            learner_catchup_bytes_per_sec: crate::pacing::DEFAULT_LEARNER_CATCHUP_BYTES_PER_SEC,
        }
    }

    /// Starts one more host with a fresh node id.
    pub async fn add_host(&mut self) -> NodeId {
        let node_id = self.next_node_id;
        self.next_node_id += 1;
        let host = Host::start(self.host_config(node_id, "127.0.0.1:0".into()))
            .await
            .expect("bind loopback and load the TLS files");
        self.addrs.insert(node_id, host.addr().to_string());
        self.hosts.insert(node_id, host);
        node_id
    }

    /// Starts a killed host again as itself: same node id, address and data directory
    /// (its durable replicas reopen when [`Host::create_group`] is called for them).
    pub async fn restart(&mut self, node: NodeId) {
        assert!(!self.hosts.contains_key(&node), "node {node} is running");
        let addr = self.addrs[&node].clone();
        let deadline = std::time::Instant::now() + WAIT;
        let host = loop {
            // The killed listener's port frees once its task is dropped.
            match Host::start(self.host_config(node, addr.clone())).await {
                Ok(host) => break host,
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::debug!("restart of {node} waits for its port: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("node {node} cannot listen on {addr} again: {e}"),
            }
        };
        self.hosts.insert(node, host);
    }

    /// Creates (or reopens, for a durable replica) the replica of `group` on `node`.
    pub async fn open_replica(&self, node: NodeId, group: GroupId, options: GroupOptions) {
        self.hosts[&node]
            .create_group(group, options, self.factory.create(group))
            .await
            .expect("open replica");
    }

    /// Creates a group on `members` and forms it.
    pub async fn create_group(&self, group: GroupId, members: &[NodeId], options: GroupOptions) {
        for id in members {
            self.hosts[id]
                .create_group(group, options, self.factory.create(group))
                .await
                .expect("create group");
        }
        let map = self.members(members);
        for id in members {
            self.hosts[id]
                .bootstrap(group, &map)
                .await
                .expect("bootstrap");
        }
    }

    /// node id -> address for `ids`.
    pub fn members(&self, ids: &[NodeId]) -> BTreeMap<NodeId, String> {
        ids.iter().map(|id| (*id, self.addrs[id].clone())).collect()
    }

    /// Waits until a live host leads `group` and a majority of `voters` agree; returns it.
    pub async fn leader(&self, group: GroupId) -> NodeId {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut votes: HashMap<NodeId, usize> = HashMap::new();
            let mut voters = 0;
            for host in self.hosts.values() {
                if let Some(s) = host.status(group) {
                    voters = voters.max(s.voters.len());
                    if let Some(l) = s.leader {
                        *votes.entry(l).or_default() += 1;
                    }
                }
            }
            for (leader, n) in votes {
                let leads = self
                    .hosts
                    .get(&leader)
                    .and_then(|h| h.status(group))
                    .map(|s| s.role);
                if n * 2 > voters && leads == Some(crate::host::ReplicaRole::Leader) {
                    return leader;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader for {group} within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Kills a host: its listener and every replica stop, as in a crash.
    pub async fn kill(&mut self, node: NodeId) {
        if let Some(host) = self.hosts.remove(&node) {
            host.shutdown().await;
        }
    }

    /// Cuts every link of `node`.
    pub fn isolate(&self, node: NodeId) {
        for (other, addr) in &self.addrs {
            if *other != node {
                self.faults.cut(&self.addrs[&node], addr);
            }
        }
    }

    /// Drives `group`'s membership to `desired` voters as the control plane would: creates
    /// empty replicas on new members, then repeats the leader's reconcile step until in sync.
    pub async fn reconcile(&self, group: GroupId, desired: &[NodeId], options: GroupOptions) {
        for id in desired {
            self.hosts[id]
                .create_group(group, options, self.factory.create(group))
                .await
                .expect("create group");
        }
        let want = self.members(desired);
        let deadline = Instant::now() + WAIT;
        loop {
            let leader = self.leader(group).await;
            if let Ok(MembershipStep::InSync) =
                self.hosts[&leader].reconcile_membership(group, &want).await
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "membership of {group} not reconciled within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every live replica of `group` has applied the same index and holds the
    /// same app snapshot; returns that snapshot.
    pub async fn converged_state(&self, group: GroupId) -> Vec<u8> {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut states = Vec::new();
            for host in self.hosts.values() {
                if let Some(r) = host.replica(group) {
                    states.push((
                        r.sm.last_applied_index().await,
                        r.sm.app_snapshot().await.expect("snapshot"),
                    ));
                }
            }
            if states.windows(2).all(|w| w[0] == w[1]) && !states.is_empty() {
                return states.remove(0).1;
            }
            assert!(
                Instant::now() < deadline,
                "replicas of {group} did not converge within {WAIT:?}: {:?}",
                self.hosts
                    .values()
                    .filter_map(|h| h.status(group))
                    .map(|s| (s.role, s.applied_index, s.log_entries, s.error))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
