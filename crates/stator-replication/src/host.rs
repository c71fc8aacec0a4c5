//! A replica host: one process's many partition replicas (multi-Raft) behind one transport.

use crate::disk_store::{DiskLogStore, DiskStoreError, SyncPolicy};
use crate::log_store::{MemLogStore, ReplicaLog};
use crate::network::GroupNetwork;
use crate::read_index::{ReadIndex, RoundResult};
use crate::state_machine::ReplicaStateMachine;
use crate::stats::LatencyWindow;
use crate::tls::{TlsConfig, TlsError, TransportTls};
use crate::transport::{
    Handler, LinkFilter, PeerInfo, Request, Response, Transport, TransportConfig,
};
use crate::types::{
    ClientReply, ClientRequest, Command, CommandReply, GroupId, NodeId, Raft, RequestKind,
};
use async_trait::async_trait;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use stator_api::app::StateMachine;
use stator_api::spec::Durability;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;

/// Default lower bound of the randomised election timeout (the upper is 1.25x). LAN
/// round trips are well under a millisecond, so a leader silent this long is gone.
pub const DEFAULT_ELECTION_TIMEOUT_MS: u64 = stator_api::spec::DEFAULT_ELECTION_TIMEOUT_MS;
/// Entries between snapshots; older entries are then purged, bounding log memory.
pub const DEFAULT_SNAPSHOT_EVERY_ENTRIES: u64 = 20_000;
/// Largest snapshot chunk sent in one frame (well under the transport's frame limit).
pub const SNAPSHOT_CHUNK_BYTES: u64 = 4 << 20;
/// Entries per AppendEntries message; bounds one frame's size for small commands.
pub const MAX_ENTRIES_PER_APPEND: u64 = 1_024;
/// A learner this many entries behind the leader counts as caught up: the last few are
/// replicated within one round trip once it is a voter.
pub const CATCH_UP_SLACK_ENTRIES: u64 = 64;

/// Host failures.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The transport address could not be bound; pick a free port or address.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// openraft refused the configuration (a bug in the options given).
    #[error("invalid raft config for group {group}: {reason}")]
    Config {
        /// The group.
        group: GroupId,
        /// openraft's reason.
        reason: String,
    },
    /// The TLS files could not be loaded; fix the paths or the files. (Not a `source`:
    /// the message already carries the whole story, and error chains print it once.)
    #[error("transport TLS: {0}")]
    Tls(TlsError),
    /// The host has no replica of this group.
    #[error("no replica of group {0} on this host")]
    NoGroup(GroupId),
    /// The replica's Raft core stopped (its app failed or it was shut down).
    #[error("replica of group {group} stopped: {reason}")]
    Stopped {
        /// The group.
        group: GroupId,
        /// Why.
        reason: String,
    },
    /// A durable replica's store could not open (corrupt, unwritable) or the host has no
    /// data directory for durable replicas.
    #[error("replica of group {group}: {source}")]
    Storage {
        /// The group.
        group: GroupId,
        /// Why.
        source: DiskStoreError,
    },
    /// A durable group was asked of a host started without `data_dir`.
    #[error("group {0} is durable but this host has no data directory; start it with one")]
    NoDataDir(GroupId),
    /// A membership change was refused; the reconciler retries.
    #[error("membership change of group {group} refused: {reason}")]
    Membership {
        /// The group.
        group: GroupId,
        /// openraft's reason.
        reason: String,
    },
}

impl From<TlsError> for HostError {
    fn from(e: TlsError) -> Self {
        HostError::Tls(e)
    }
}

/// Per-group tunables.
#[derive(Debug, Clone, Copy)]
pub struct GroupOptions {
    /// Lower bound of the election timeout; the upper is 1.25x this; heartbeats every half.
    pub election_timeout_ms: u64,
    /// Entries between snapshots.
    pub snapshot_every_entries: u64,
    /// Where the log, vote and snapshots live (durable modes need the host's `data_dir`).
    pub durability: Durability,
    /// Longest time between fsyncs for [`Durability::Periodic`].
    pub fsync_interval_ms: u64,
}

impl Default for GroupOptions {
    fn default() -> Self {
        Self {
            election_timeout_ms: DEFAULT_ELECTION_TIMEOUT_MS,
            snapshot_every_entries: DEFAULT_SNAPSHOT_EVERY_ENTRIES,
            durability: Durability::Memory,
            fsync_interval_ms: stator_api::spec::DEFAULT_FSYNC_INTERVAL_MS,
        }
    }
}

/// Settings of a host.
#[derive(Clone)]
pub struct HostConfig {
    /// This host's node id: the Raft member id of every replica it hosts.
    pub node_id: NodeId,
    /// Where to listen (e.g. `127.0.0.1:0`).
    pub listen_addr: String,
    /// Shared by every host and client of the cluster.
    pub cluster_secret: String,
    /// Fault injection, for tests.
    pub filter: Option<Arc<dyn LinkFilter>>,
    /// Mutual TLS on the transport (every peer and client then needs a certificate from
    /// the same CA); `None` authenticates with the cluster secret alone.
    pub tls: Option<TlsConfig>,
    /// Where durable replicas keep their stores (`<data_dir>/<group>/`); `None`: this
    /// host hosts memory replicas only.
    pub data_dir: Option<PathBuf>,
}

/// One hosted replica.
pub struct Replica {
    /// Its group.
    pub group: GroupId,
    /// Its Raft handle.
    pub raft: Raft,
    /// Its state machine (shared with openraft).
    pub sm: ReplicaStateMachine,
    log: ReplicaLog,
    latency: LatencyWindow,
    read_index: Arc<ReadIndex>,
}

impl Replica {
    /// The on-disk store of a durable replica (`None` for memory replicas).
    pub fn disk_store(&self) -> Option<&DiskLogStore> {
        match &self.log {
            ReplicaLog::Disk(store) => Some(store),
            ReplicaLog::Memory(_) => None,
        }
    }
}

/// The role of a replica as seen in its metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Role {
    /// Answers clients.
    Leader,
    /// Votes and replicates.
    Follower,
    /// Replicates without voting (catching up before joining).
    Learner,
    /// Running an election.
    Candidate,
    /// Its Raft core has stopped.
    Stopped,
}

/// A snapshot of one replica's state, for heartbeats and tests.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct GroupStatus {
    /// The group.
    pub group: GroupId,
    /// This replica's role.
    pub role: Role,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// Current term.
    pub term: u64,
    /// Voters of the effective membership.
    pub voters: Vec<NodeId>,
    /// Learners of the effective membership.
    pub learners: Vec<NodeId>,
    /// Last applied log index.
    pub applied_index: u64,
    /// Entries held in memory (after compaction).
    pub log_entries: u64,
    /// Bytes of log, vote and snapshots on disk (0 for memory replicas).
    #[serde(default)]
    pub disk_bytes: u64,
    /// App state size.
    pub state_bytes: u64,
    /// Client operations per second served here, over the last window.
    pub ops_per_sec: f64,
    /// p99 of client latency served here, over the last window.
    pub p99_us: u64,
    /// Why the replica stopped, if it did.
    pub error: Option<String>,
}

/// What one membership reconcile step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipStep {
    /// This replica is not the leader; only the leader changes membership.
    NotLeader,
    /// Voters equal the desired set and no stray learner remains.
    InSync,
    /// A joint configuration is still being committed.
    ChangeInProgress,
    /// Added these nodes as learners.
    AddedLearners(Vec<NodeId>),
    /// Learners are still catching up.
    WaitingForCatchUp(Vec<NodeId>),
    /// Committed a new voter set.
    ChangedVoters(Vec<NodeId>),
    /// Removed learners that are not wanted.
    RemovedLearners(Vec<NodeId>),
}

struct HostInner {
    node_id: NodeId,
    addr: String,
    transport: Arc<Transport>,
    data_dir: Option<PathBuf>,
    // A std RwLock: lookups are short and never await while holding it.
    groups: RwLock<HashMap<GroupId, Arc<Replica>>>,
}

/// A process's replicas behind one listening transport.
#[derive(Clone)]
pub struct Host {
    inner: Arc<HostInner>,
    server: Arc<tokio::task::JoinHandle<()>>,
}

/// Milliseconds since the Unix epoch, as stamped into log entries.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Host {
    /// Binds the transport and starts serving.
    pub async fn start(config: HostConfig) -> Result<Host, HostError> {
        let listener = TcpListener::bind(&config.listen_addr)
            .await
            .map_err(|source| HostError::Listen {
                addr: config.listen_addr.clone(),
                source,
            })?;
        Self::start_with_listener(config, listener)
    }

    /// Serves on an already bound listener (an agent binds first, registers its address,
    /// then learns its node id). `config.listen_addr` is only used in error messages.
    pub fn start_with_listener(
        config: HostConfig,
        listener: TcpListener,
    ) -> Result<Host, HostError> {
        let addr = listener.local_addr().map_err(|source| HostError::Listen {
            addr: config.listen_addr.clone(),
            source,
        })?;
        let tls = config.tls.as_ref().map(TransportTls::load).transpose()?;
        let transport = Transport::new(TransportConfig {
            node_id: config.node_id,
            listen_addr: addr.to_string(),
            cluster_secret: config.cluster_secret,
            filter: config.filter,
            tls,
        });
        let inner = Arc::new(HostInner {
            node_id: config.node_id,
            addr: addr.to_string(),
            transport: transport.clone(),
            data_dir: config.data_dir,
            groups: RwLock::new(HashMap::new()),
        });
        let server = transport.serve(
            listener,
            Arc::new(HostHandler {
                inner: inner.clone(),
            }),
        );
        Ok(Host {
            inner,
            server: Arc::new(server),
        })
    }

    /// This host's node id.
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// The address peers and clients dial.
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// The replica of `group`, if hosted.
    pub fn replica(&self, group: GroupId) -> Option<Arc<Replica>> {
        self.inner
            .groups
            .read()
            .expect("groups lock poisoned")
            .get(&group)
            .cloned()
    }

    /// Groups hosted here.
    pub fn groups(&self) -> Vec<GroupId> {
        self.inner
            .groups
            .read()
            .expect("groups lock poisoned")
            .keys()
            .copied()
            .collect()
    }

    /// Creates an empty replica of `group` running `app` (idempotent: an existing replica
    /// is kept). It joins a group when the leader adds it, or forms one with [`Host::bootstrap`].
    pub async fn create_group(
        &self,
        group: GroupId,
        options: GroupOptions,
        app: Box<dyn StateMachine>,
    ) -> Result<Arc<Replica>, HostError> {
        if let Some(r) = self.replica(group) {
            return Ok(r);
        }
        let election = options.election_timeout_ms.max(10);
        let config = openraft::Config {
            cluster_name: format!("stator-{group}"),
            // openraft also uses the heartbeat interval as the AppendEntries timeout, so it
            // stays as long as the election timeout allows: a busy 2-core machine must not
            // time out large appends and resend them.
            heartbeat_interval: (election / 2).max(5),
            election_timeout_min: election,
            // openraft's leader lease equals this upper bound and delays every election
            // after a leader dies, so the randomisation range is kept narrow.
            election_timeout_max: election + (election / 4).max(10),
            install_snapshot_timeout: 10_000,
            max_payload_entries: MAX_ENTRIES_PER_APPEND,
            replication_lag_threshold: options.snapshot_every_entries,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(
                options.snapshot_every_entries,
            ),
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
            max_in_snapshot_log_to_keep: 1_000,
            purge_batch_size: 256,
            ..Default::default()
        };
        let config = Arc::new(config.validate().map_err(|e| HostError::Config {
            group,
            reason: e.to_string(),
        })?);
        let network = GroupNetwork {
            group,
            node_id: self.inner.node_id,
            transport: self.inner.transport.clone(),
        };
        let (log, sm) = self.open_storage(group, &options, app).await?;
        let stopped = |e: openraft::error::Fatal<NodeId>| HostError::Stopped {
            group,
            reason: e.to_string(),
        };
        let raft = match &log {
            ReplicaLog::Memory(log) => {
                Raft::new(self.inner.node_id, config, network, log.clone(), sm.clone()).await
            }
            ReplicaLog::Disk(log) => {
                Raft::new(self.inner.node_id, config, network, log.clone(), sm.clone()).await
            }
        }
        .map_err(stopped)?;
        let replica = Arc::new(Replica {
            group,
            raft,
            sm,
            log,
            latency: LatencyWindow::default(),
            read_index: Arc::default(),
        });
        let mut groups = self.inner.groups.write().expect("groups lock poisoned");
        // Another caller may have raced us; keep the first and drop ours.
        Ok(groups.entry(group).or_insert(replica).clone())
    }

    /// The directory of a durable replica of `group` on this host, if it has a data dir.
    pub fn replica_dir(&self, group: GroupId) -> Option<PathBuf> {
        self.inner
            .data_dir
            .as_ref()
            .map(|data_dir| replica_dir(data_dir, group))
    }

    /// Opens the log (memory, or the store on disk with its snapshot) of a new replica.
    async fn open_storage(
        &self,
        group: GroupId,
        options: &GroupOptions,
        app: Box<dyn StateMachine>,
    ) -> Result<(ReplicaLog, ReplicaStateMachine), HostError> {
        let policy = match options.durability {
            Durability::Memory => {
                return Ok((
                    ReplicaLog::Memory(MemLogStore::default()),
                    ReplicaStateMachine::new(app),
                ))
            }
            Durability::Disk => SyncPolicy::EveryAppend,
            Durability::Periodic => SyncPolicy::Periodic {
                interval_ms: options.fsync_interval_ms,
            },
        };
        let dir = self.replica_dir(group).ok_or(HostError::NoDataDir(group))?;
        // Opening reads and checks the whole store: blocking IO, off the runtime's workers.
        let store = tokio::task::spawn_blocking(move || DiskLogStore::open(&dir, policy))
            .await
            .map_err(|e| HostError::Stopped {
                group,
                reason: format!("opening the store panicked: {e}"),
            })?
            .map_err(|source| HostError::Storage { group, source })?;
        let sm = ReplicaStateMachine::durable(app, store.clone())
            .await
            .map_err(|e| HostError::Stopped {
                group,
                reason: format!("restoring the snapshot on disk: {e}"),
            })?;
        Ok((ReplicaLog::Disk(store), sm))
    }

    /// Forms a new group with `members` (node id -> transport address). Call it on the
    /// initial members only, and only for a group that has never had a leader: a node that
    /// is already part of a group ignores it.
    pub async fn bootstrap(
        &self,
        group: GroupId,
        members: &BTreeMap<NodeId, String>,
    ) -> Result<(), HostError> {
        let replica = self.replica(group).ok_or(HostError::NoGroup(group))?;
        let nodes: BTreeMap<NodeId, BasicNode> = members
            .iter()
            .map(|(id, addr)| (*id, BasicNode::new(addr.clone())))
            .collect();
        match replica.raft.initialize(nodes).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(_)) => Ok(()), // already initialised: nothing to do
            Err(e) => Err(HostError::Stopped {
                group,
                reason: e.to_string(),
            }),
        }
    }

    /// Stops and forgets the replica of `group`.
    pub async fn remove_group(&self, group: GroupId) {
        let replica = self
            .inner
            .groups
            .write()
            .expect("groups lock poisoned")
            .remove(&group);
        if let Some(replica) = replica {
            let _ = replica.raft.shutdown().await;
        }
    }

    /// Stops every replica and the listener: what a crash looks like to peers, minus the
    /// process exit.
    pub async fn shutdown(&self) {
        self.server.abort();
        for group in self.groups() {
            self.remove_group(group).await;
        }
    }

    /// Serves a client request on the local replica of `group`.
    pub async fn serve_client(&self, group: GroupId, request: ClientRequest) -> ClientReply {
        serve_client(&self.inner, group, request).await
    }

    /// The status of the local replica of `group`.
    pub fn status(&self, group: GroupId) -> Option<GroupStatus> {
        self.replica(group).map(|r| status_of(&r))
    }

    /// Statuses of every hosted replica.
    pub fn statuses(&self) -> Vec<GroupStatus> {
        let replicas: Vec<_> = self
            .inner
            .groups
            .read()
            .expect("groups lock poisoned")
            .values()
            .cloned()
            .collect();
        replicas.iter().map(|r| status_of(r)).collect()
    }

    /// One level-triggered step moving `group`'s membership toward `desired` voters
    /// (node id -> address). Only acts where this replica leads. Learners are added
    /// first, promoted once caught up, and voters swapped in one joint-consensus change,
    /// so the group never has fewer voters than it needs. A leader that is not in
    /// `desired` commits the change and then steps down; the others elect a successor.
    pub async fn reconcile_membership(
        &self,
        group: GroupId,
        desired: &BTreeMap<NodeId, String>,
    ) -> Result<MembershipStep, HostError> {
        let replica = self.replica(group).ok_or(HostError::NoGroup(group))?;
        let metrics = replica.raft.metrics().borrow().clone();
        if metrics.current_leader != Some(self.inner.node_id)
            || metrics.state != ServerState::Leader
        {
            return Ok(MembershipStep::NotLeader);
        }
        let membership = metrics.membership_config.membership().clone();
        if membership.get_joint_config().len() > 1 {
            return Ok(MembershipStep::ChangeInProgress);
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let known: BTreeSet<NodeId> = membership.nodes().map(|(id, _)| *id).collect();
        let wanted: BTreeSet<NodeId> = desired.keys().copied().collect();
        let membership_error =
            |e: openraft::error::RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>| {
                HostError::Membership {
                    group,
                    reason: e.to_string(),
                }
            };

        let missing: Vec<NodeId> = wanted.difference(&known).copied().collect();
        if !missing.is_empty() {
            for id in &missing {
                replica
                    .raft
                    .add_learner(*id, BasicNode::new(desired[id].clone()), false)
                    .await
                    .map_err(membership_error)?;
            }
            return Ok(MembershipStep::AddedLearners(missing));
        }
        if voters != wanted {
            let last = metrics.last_log_index.unwrap_or(0);
            let matched = metrics.replication.clone().unwrap_or_default();
            let lagging: Vec<NodeId> = wanted
                .difference(&voters)
                .filter(|id| {
                    let at = matched.get(id).copied().flatten().map_or(0, |l| l.index);
                    at + CATCH_UP_SLACK_ENTRIES < last
                })
                .copied()
                .collect();
            if !lagging.is_empty() {
                return Ok(MembershipStep::WaitingForCatchUp(lagging));
            }
            replica
                .raft
                .change_membership(wanted.clone(), false)
                .await
                .map_err(membership_error)?;
            return Ok(MembershipStep::ChangedVoters(wanted.into_iter().collect()));
        }
        let stray: BTreeSet<NodeId> = known.difference(&wanted).copied().collect();
        if !stray.is_empty() {
            replica
                .raft
                .change_membership(ChangeMembers::RemoveNodes(stray.clone()), false)
                .await
                .map_err(membership_error)?;
            return Ok(MembershipStep::RemovedLearners(stray.into_iter().collect()));
        }
        Ok(MembershipStep::InSync)
    }
}

fn status_of(r: &Replica) -> GroupStatus {
    let m = r.raft.metrics().borrow().clone();
    let role = match (&m.running_state, m.state) {
        (Err(_), _) | (_, ServerState::Shutdown) => Role::Stopped,
        (_, ServerState::Leader) => Role::Leader,
        (_, ServerState::Follower) => Role::Follower,
        (_, ServerState::Learner) => Role::Learner,
        (_, ServerState::Candidate) => Role::Candidate,
    };
    let membership = m.membership_config.membership();
    let (ops_per_sec, p99_us) = r.latency.summary();
    GroupStatus {
        group: r.group,
        role,
        leader: m.current_leader,
        term: m.current_term,
        voters: membership.voter_ids().collect(),
        learners: membership.learner_ids().collect(),
        applied_index: m.last_applied.map_or(0, |l| l.index),
        log_entries: r.log.len() as u64,
        disk_bytes: r.log.disk_bytes(),
        state_bytes: r.sm.state_bytes(),
        ops_per_sec,
        p99_us,
        error: m.running_state.err().map(|e| e.to_string()),
    }
}

fn leader_hint(raft_leader: Option<NodeId>, node: Option<BasicNode>) -> ClientReply {
    ClientReply::NotLeader {
        leader_id: raft_leader,
        leader_addr: node.map(|n| n.addr),
    }
}

async fn serve_client(inner: &HostInner, group: GroupId, request: ClientRequest) -> ClientReply {
    let Some(replica) = inner
        .groups
        .read()
        .expect("groups lock poisoned")
        .get(&group)
        .cloned()
    else {
        return ClientReply::NoGroup;
    };
    let started = std::time::Instant::now();
    let reply = match request.kind {
        RequestKind::Write => {
            let command = Command {
                client_id: request.client_id,
                seq: request.seq,
                time_ms: now_ms(),
                payload: request.payload,
            };
            match replica.raft.client_write(command).await {
                Ok(resp) => match resp.data {
                    CommandReply::Applied(bytes) => ClientReply::Ok(bytes),
                    CommandReply::StaleSequence { last_seq } => {
                        ClientReply::StaleSequence { last_seq }
                    }
                    CommandReply::AppFailed(why) => ClientReply::Unavailable(why),
                },
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    leader_hint(f.leader_id, f.leader_node)
                }
                Err(e) => ClientReply::Unavailable(e.to_string()),
            }
        }
        RequestKind::Read => match replica.read_index.confirm(&replica.raft).await {
            RoundResult::Confirmed => query(&replica, &request.payload).await,
            RoundResult::NotLeader {
                leader_id,
                leader_addr,
            } => ClientReply::NotLeader {
                leader_id,
                leader_addr,
            },
            RoundResult::Failed(e) => ClientReply::Unavailable(e),
        },
        RequestKind::StaleRead => query(&replica, &request.payload).await,
    };
    if matches!(reply, ClientReply::Ok(_)) {
        replica.latency.record(started.elapsed());
    }
    reply
}

async fn query(replica: &Replica, payload: &[u8]) -> ClientReply {
    match replica.sm.query(now_ms(), payload).await {
        Ok(bytes) => ClientReply::Ok(bytes),
        Err(e) => ClientReply::Unavailable(e.to_string()),
    }
}

struct HostHandler {
    inner: Arc<HostInner>,
}

impl HostHandler {
    fn replica(&self, group: GroupId) -> Option<Arc<Replica>> {
        self.inner
            .groups
            .read()
            .expect("groups lock poisoned")
            .get(&group)
            .cloned()
    }
}

#[async_trait]
impl Handler for HostHandler {
    async fn handle(&self, _peer: &PeerInfo, request: Request) -> Response {
        match request {
            Request::Append(group, rpc) => match self.replica(group) {
                Some(r) => Response::Append(r.raft.append_entries(rpc).await),
                None => Response::NoGroup,
            },
            Request::Vote(group, rpc) => match self.replica(group) {
                Some(r) => Response::Vote(r.raft.vote(rpc).await),
                None => Response::NoGroup,
            },
            Request::InstallSnapshot(group, rpc) => match self.replica(group) {
                Some(r) => Response::InstallSnapshot(r.raft.install_snapshot(rpc).await),
                None => Response::NoGroup,
            },
            Request::Client(group, req) => {
                Response::Client(serve_client(&self.inner, group, req).await)
            }
            Request::Elect(group) => match self.replica(group) {
                Some(r) => {
                    Response::Elect(r.raft.trigger().elect().await.map_err(|e| e.to_string()))
                }
                None => Response::NoGroup,
            },
        }
    }
}

/// Where a durable replica of `group` keeps its store under a host's data directory.
pub fn replica_dir(data_dir: &std::path::Path, group: GroupId) -> PathBuf {
    data_dir.join(format!("{}-{}", group.service_id(), group.partition()))
}

/// How long a host waits for a peer's answer to a client call it forwards.
pub const CLIENT_CALL_TIMEOUT: Duration = Duration::from_secs(5);
