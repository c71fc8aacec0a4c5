//! A replica host: one process's many partition replicas (multi-Raft) behind one transport.

use crate::disk_store::{DiskLogStore, DiskStoreError, SyncPolicy};
use crate::log_store::{MemLogStore, ReplicaLog};
use crate::network::{GroupNetwork, GroupPacing};
use crate::pacing::CatchUpPacer;
use crate::quiesce::{
    may_quiesce, NodeLiveness, Phase, Quiescence, FORMING_TIMERS_OFF_MAX, LIVENESS_INTERVAL,
    LIVENESS_PROBE_TIMEOUT, NODE_SILENT_AFTER, QUIESCE_REQUEST_TIMEOUT, SWEEP_INTERVAL,
};
use crate::read_index::{leadership, lease_duration, LeaseCheck, ReadIndex, RoundResult};
use crate::state_machine::ReplicaStateMachine;
use crate::stats::{CommitLatency, LatencyWindow};
use crate::timeline::{self, Stage};
use crate::tls::{TlsConfig, TlsError, TransportTls};
use crate::transport::{
    Handler, LinkFilter, PeerInfo, Request, Response, Transport, TransportConfig,
};
use crate::types::{
    ClientReply, ClientRequest, Command, CommandReply, GroupId, NodeId, Raft, RequestKind, Write,
};
use async_trait::async_trait;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use stator_api::app::StateMachine;
use stator_api::spec::Durability;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;

/// Default lower bound of the randomised election timeout (the upper is 1.25x). LAN
/// round trips are well under a millisecond, so a leader silent this long is gone.
pub const DEFAULT_ELECTION_TIMEOUT_MS: u64 = stator_api::spec::DEFAULT_ELECTION_TIMEOUT_MS;
/// Entries between snapshots; older entries are then purged, bounding log memory. A
/// replica also snapshots once its log holds as many bytes as its state, 16 MiB at least
/// ([`crate::state_machine::snapshot_due_by_bytes`], checked every sweep), so large
/// entries do not hold this many times their size.
pub const DEFAULT_SNAPSHOT_EVERY_ENTRIES: u64 = 20_000;
/// Largest snapshot chunk sent in one frame (well under the transport's frame limit).
pub const SNAPSHOT_CHUNK_BYTES: u64 = 4 << 20;
/// Log entries a replica keeps behind its latest snapshot (openraft's
/// `max_in_snapshot_log_to_keep`): a follower that lags by fewer catches up from the log
/// instead of a whole snapshot.
pub const LOG_KEPT_BEHIND_SNAPSHOT: u64 = 1_000;
/// Entries per AppendEntries message; bounds one frame's size for small commands.
pub const MAX_ENTRIES_PER_APPEND: u64 = 128;
/// A learner this many entries behind the leader counts as caught up: the last few are
/// replicated within one round trip once it is a voter.
pub const CATCH_UP_SLACK_ENTRIES: u64 = 64;

/// Longest a leadership transfer may take (the successor catching up on the last
/// entries, then winning its election); writes arriving meanwhile wait this long at most,
/// and a transfer that has not finished by then is abandoned and the leader carries on.
pub const LEADERSHIP_TRANSFER_TIMEOUT: Duration = Duration::from_millis(1_000);
/// How often a leadership transfer re-checks that in-flight writes reached the log.
const TRANSFER_POLL: Duration = Duration::from_millis(2);
/// Longest a leader handing over waits, writes still flowing, for an instant when its
/// successor holds its last entry and no write is on its way to the log. From such an
/// instant writes wait at the gate for the hand-over alone (the successor's election), not
/// for the replication of the writes in flight as well. Under a steady stream of writes
/// there may be no such instant: past this wait, new writes wait at the gate while those
/// in flight reach the successor, as before.
pub const TRANSFER_QUIET_WAIT: Duration = Duration::from_millis(50);

/// Most entries proposed at once per replica by write batching. One proposer is the
/// rule: what queues while its entry commits leaves as the next entry, so an entry
/// carries everything that arrived in one round trip (an entry costs the leader and each
/// follower about the same whatever it holds: log append, an AppendEntries and its
/// answer, an apply). A further proposer, up to this many, starts only when a whole
/// batch ([`MAX_WRITE_BATCH_BYTES`]) waits, since waiting longer would not make it
/// larger, and stops after its entry unless a whole batch waits again. (With four eager
/// proposers every batch found one free and became an entry of its own: docs/BENCHMARKS.md,
/// "Session 15", the gateway's coalescer and this queue.)
pub const MAX_WRITE_BATCHES_IN_FLIGHT: usize = 4;
/// A write batch closes at this many payload bytes (a larger single write goes alone).
/// With [`MAX_ENTRIES_PER_APPEND`] entries per AppendEntries an append carries about
/// 1 MiB at most: openraft times an append out after one heartbeat interval, and a
/// larger one would miss that on a busy machine again and again, so a lagging follower
/// would never catch up.
pub const MAX_WRITE_BATCH_BYTES: usize = 8 << 10;

/// Client writes waiting at a replica to be proposed as one entry.
struct WriteQueue {
    // A std mutex: a push or a take, never held across an await.
    state: std::sync::Mutex<WriteQueueState>,
    /// `state.waiting.len()`, kept under the lock, read without it by the group's
    /// replication streams (`GroupNetwork::queued_writes`).
    queued: Arc<AtomicUsize>,
    /// Proposers at once, and writes per entry.
    max_proposers: usize,
    max_writes: usize,
}

#[derive(Default)]
struct WriteQueueState {
    waiting: VecDeque<(Write, tokio::sync::oneshot::Sender<ClientReply>)>,
    /// Payload bytes of `waiting`.
    waiting_bytes: usize,
    /// `propose_writes` tasks running.
    proposers: usize,
}

impl WriteQueue {
    fn new(batch_writes: bool, queued: Arc<AtomicUsize>) -> Self {
        let (max_proposers, max_writes) = if batch_writes {
            (MAX_WRITE_BATCHES_IN_FLIGHT, usize::MAX)
        } else {
            (usize::MAX, 1)
        };
        Self {
            state: Default::default(),
            queued,
            max_proposers,
            max_writes,
        }
    }

    /// Whether writes are batched at all.
    fn batching(&self) -> bool {
        self.max_writes > 1
    }

    /// Whether what waits fills a whole entry ([`MAX_WRITE_BATCH_BYTES`], or the writes
    /// per entry when batching is off).
    fn holds_whole_batch(&self, s: &WriteQueueState) -> bool {
        s.waiting_bytes >= MAX_WRITE_BATCH_BYTES || s.waiting.len() >= self.max_writes
    }

    /// Whether a proposer back from its entry stops rather than take what waits: nothing
    /// waits, or another proposer is at work and what waits is less than a whole batch
    /// (that one takes it when back, so the extra proposers a burst started do not stay
    /// and split the queue among them). The last proposer never stops while writes wait.
    fn proposer_stops(&self, s: &WriteQueueState) -> bool {
        s.waiting.is_empty() || (s.proposers > 1 && !self.holds_whole_batch(s))
    }

    /// Queues writes, in order and with nothing between them; `true` when the caller must
    /// start a proposer for them: none is at work, or a whole batch waits and the limit
    /// allows one more ([`MAX_WRITE_BATCHES_IN_FLIGHT`]).
    fn push_all(&self, writes: Vec<(Write, tokio::sync::oneshot::Sender<ClientReply>)>) -> bool {
        let mut s = self.state.lock().expect("write queue poisoned");
        s.waiting_bytes += writes.iter().map(|(w, _)| w.payload.len()).sum::<usize>();
        s.waiting.extend(writes);
        self.queued.store(s.waiting.len(), Ordering::Relaxed);
        if s.proposers == 0 || (s.proposers < self.max_proposers && self.holds_whole_batch(&s)) {
            s.proposers += 1;
            true
        } else {
            false
        }
    }

    /// The next batch, oldest first, up to [`MAX_WRITE_BATCH_BYTES`]; `None` (and one
    /// proposer fewer) when the calling proposer stops ([`WriteQueue::proposer_stops`]).
    fn take_batch(&self) -> Option<Vec<(Write, tokio::sync::oneshot::Sender<ClientReply>)>> {
        let mut s = self.state.lock().expect("write queue poisoned");
        if self.proposer_stops(&s) {
            s.proposers -= 1;
            return None;
        }
        Some(self.next_batch(&mut s))
    }

    /// Gives back the proposer slot of a task that proposed one batch itself; `true`
    /// when writes queued meanwhile and the caller must start a proposer with the slot.
    fn release_or_hand_on(&self) -> bool {
        let mut s = self.state.lock().expect("write queue poisoned");
        if self.proposer_stops(&s) {
            s.proposers -= 1;
            false
        } else {
            true
        }
    }

    fn next_batch(
        &self,
        s: &mut WriteQueueState,
    ) -> Vec<(Write, tokio::sync::oneshot::Sender<ClientReply>)> {
        let mut bytes = 0;
        let mut batch = Vec::new();
        while let Some((write, _)) = s.waiting.front() {
            if !batch.is_empty()
                && (batch.len() == self.max_writes
                    || bytes + write.payload.len() > MAX_WRITE_BATCH_BYTES)
            {
                break;
            }
            bytes += write.payload.len();
            batch.push(s.waiting.pop_front().expect("front exists"));
        }
        s.waiting_bytes -= bytes;
        self.queued.store(s.waiting.len(), Ordering::Relaxed);
        batch
    }

    /// A batch for a task holding a proposer slot, keeping the slot; `None` when other
    /// proposers took everything.
    fn take_batch_keeping_slot(
        &self,
    ) -> Option<Vec<(Write, tokio::sync::oneshot::Sender<ClientReply>)>> {
        let mut s = self.state.lock().expect("write queue poisoned");
        if s.waiting.is_empty() {
            return None;
        }
        Some(self.next_batch(&mut s))
    }
}

/// A proposer slot held by the task whose writes claimed it (see [`submit_writes`]);
/// dropped (proposed, or the task cancelled), it passes to a spawned proposer when
/// writes queued meanwhile.
struct ProposerSlot<'a>(&'a Arc<Replica>);

impl Drop for ProposerSlot<'_> {
    fn drop(&mut self) {
        if self.0.writes.release_or_hand_on() {
            tokio::spawn(propose_writes(self.0.clone()));
        }
    }
}

/// After the connection from a leader's host breaks, the follower chosen to succeed it
/// runs for election this long after the other voters' leader lease has run out (their
/// last heartbeat came at about the same time as its own; this covers the difference).
pub const FAST_ELECTION_MARGIN: Duration = Duration::from_millis(15);
/// How much later than the follower before it in id order each further follower of a
/// lost leader runs for election, unless it has granted its vote meanwhile: about one
/// vote round trip on a busy machine. The successor (lowest id) can lose: the other
/// voters refuse it while it lacks an entry they hold (the leader replicated it to them
/// first) or while their own lease still runs; the next follower then takes over within
/// this delay instead of after openraft's election timer (a lease plus a timeout).
pub const FAST_ELECTION_STAGGER: Duration = Duration::from_millis(20);

/// How long a follower about to run on a liveness signal waits for each other voter's
/// pre-vote answer ([`Request::LeaderLost`]). A live host answers within a round trip;
/// one that does not counts as no, and the group then falls back to openraft's own
/// election timer.
pub const PRE_VOTE_TIMEOUT: Duration = Duration::from_millis(200);

/// The instant `last_append_us` counts from.
fn process_epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn micros_since_epoch() -> u64 {
    process_epoch().elapsed().as_micros() as u64
}

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
    /// Serve linearizable reads under a leader lease when one is held (see
    /// [`crate::read_index`]); `false` takes a read-index round for every read batch.
    pub lease_reads: bool,
    /// Propose the writes that wait at the leader together, as one log entry (up to
    /// [`MAX_WRITE_BATCHES_IN_FLIGHT`] entries at once); `false` proposes each write as
    /// its own entry at once (the benchmark's baseline).
    pub batch_writes: bool,
    /// Where the log, vote and snapshots live (durable modes need the host's `data_dir`).
    pub durability: Durability,
    /// Longest time between fsyncs for [`Durability::Periodic`].
    pub fsync_interval_ms: u64,
    /// Let the group go quiet when idle (see [`crate::quiesce`]); `false` keeps its
    /// heartbeats and election timers running always (the benchmark's baseline).
    pub quiesce: bool,
    /// A replica created to form a new group (one that never had a leader): its Raft
    /// timers start off, so it runs for election only once this host bootstraps the
    /// group (or is asked to elect, or the leader's node is lost). The member that
    /// bootstraps is then the only candidate: forming ~1,000 groups at once on a
    /// loaded machine starts no election storm (see [`crate::quiesce`], forming).
    /// Ignored when `quiesce` is off.
    pub forming: bool,
}

impl Default for GroupOptions {
    fn default() -> Self {
        Self {
            election_timeout_ms: DEFAULT_ELECTION_TIMEOUT_MS,
            snapshot_every_entries: DEFAULT_SNAPSHOT_EVERY_ENTRIES,
            lease_reads: true,
            batch_writes: true,
            durability: Durability::Memory,
            fsync_interval_ms: stator_api::spec::DEFAULT_FSYNC_INTERVAL_MS,
            quiesce: true,
            forming: false,
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
    /// Bytes per second this host's leaders feed their learners, all groups together
    /// (0: unlimited); see [`crate::pacing`] and
    /// [`crate::pacing::DEFAULT_LEARNER_CATCHUP_BYTES_PER_SEC`].
    pub learner_catchup_bytes_per_sec: u64,
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
    /// Until then this replica refuses to vote: it may have restarted and forgotten which
    /// leader it last heard from, whose lease it must not cut short.
    votes_from: Instant,
    /// Where a leadership hand-over from this replica stands: writes wait at the gate
    /// while it is pending, and are answered with the successor's address once decided.
    transfer: tokio::sync::watch::Sender<Handover>,
    /// When this replica was last asked to run for election (`Elect`), in µs since
    /// [`process_epoch`] (0: never), and its term then: a write reaching it while that
    /// election is open waits for the outcome (see [`await_asked_election`]).
    elect_asked_us: AtomicU64,
    elect_asked_term: AtomicU64,
    /// Client-write entries between the transfer gate in [`propose`] and their commit: a
    /// transfer waits for these to reach the log before it measures the successor's lag.
    proposing: AtomicUsize,
    /// Notified when [`Replica::proposing`] drops to zero.
    proposals_drained: tokio::sync::Notify,
    /// Writes waiting to be proposed together.
    writes: WriteQueue,
    /// openraft's leader lease (the election timeout's upper bound).
    raft_lease: Duration,
    /// When an AppendEntries last arrived, in µs since [`process_epoch`].
    last_append_us: AtomicU64,
    /// Whether its timers run (see [`crate::quiesce`]).
    quiet: Quiescence,
    /// Its Raft core stopped and the host asked a successor to take the group over.
    handed_over: AtomicBool,
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

/// The role of a replica as seen in its metrics: the same type agents report to the
/// server (one name for one thing).
pub use stator_api::agent::ReplicaRole;

/// A snapshot of one replica's state, for heartbeats and tests.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct GroupStatus {
    /// The group.
    pub group: GroupId,
    /// This replica's role.
    pub role: ReplicaRole,
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
    /// Idle with its Raft timers stopped (see [`crate::quiesce`]).
    #[serde(default)]
    pub quiet: bool,
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
    /// This leader is not wanted: it handed leadership to this caught-up voter, which
    /// makes the membership change from here.
    TransferredLeadership(NodeId),
}

/// Where a leadership hand-over from a leader stands, as the writes at its gate see it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Handover {
    /// No hand-over: writes are proposed.
    Idle,
    /// Handing over to this voter, which is catching up on the last entries: writes wait.
    Pending(NodeId),
    /// The successor holds every entry and was told to run for election: writes are not
    /// proposed here any more but answered at once with its address (the client retries
    /// there, where they wait for its election to end; see [`await_asked_election`]).
    Decided { to: NodeId, addr: String },
}

/// How a [`Host::transfer_leadership`] call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferOutcome {
    /// This replica does not lead (any more); nothing was done.
    NotLeader,
    /// The target is not a voter of the group.
    NotAVoter,
    /// The old leader has stepped down and knows this node as its successor.
    Moved(NodeId),
    /// The target did not catch up or win in time; the old leader carries on (or, if the
    /// target's election deposed it, an ordinary election follows).
    TimedOut,
}

struct HostInner {
    node_id: NodeId,
    addr: String,
    transport: Arc<Transport>,
    data_dir: Option<PathBuf>,
    // A std RwLock: lookups are short and never await while holding it.
    groups: RwLock<HashMap<GroupId, Arc<Replica>>>,
    // A std mutex: a table update, never held across an await.
    liveness: Mutex<NodeLiveness>,
    /// Every write this node's leaders acknowledged, for the node's histogram.
    commit_latency: CommitLatency,
    /// The learner catch-up pacing every group's replication streams share.
    catchup: Arc<CatchUpPacer>,
}

/// A process's replicas behind one listening transport.
#[derive(Clone)]
pub struct Host {
    inner: Arc<HostInner>,
    server: Arc<tokio::task::JoinHandle<()>>,
    /// The quiescence sweep and the liveness pings.
    background: Arc<[tokio::task::AbortHandle; 2]>,
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
            liveness: Mutex::new(NodeLiveness::default()),
            commit_latency: CommitLatency::default(),
            catchup: Arc::new(CatchUpPacer::new(config.learner_catchup_bytes_per_sec)),
        });
        let server = transport.serve(
            listener,
            Arc::new(HostHandler {
                inner: inner.clone(),
            }),
        );
        let background = [
            tokio::spawn(sweep_loop(Arc::downgrade(&inner))).abort_handle(),
            tokio::spawn(liveness_loop(Arc::downgrade(&inner))).abort_handle(),
        ];
        Ok(Host {
            inner,
            server: Arc::new(server),
            background: Arc::new(background),
        })
    }

    /// Node-wide counters since the host started: the commit-latency histogram and
    /// the transport's bytes per peer (what a heartbeat reports).
    pub fn node_metrics(&self) -> stator_api::agent::NodeMetrics {
        stator_api::agent::NodeMetrics {
            commit_latency: self.inner.commit_latency.snapshot(),
            transport: self.inner.transport.traffic().snapshot(),
        }
    }

    /// The rate this host's leaders feed learners at, bytes per second (0: unlimited).
    pub fn learner_catchup_bytes_per_sec(&self) -> u64 {
        self.inner.catchup.limit_bytes_per_sec()
    }

    /// Changes that rate (0: unlimited) for what is sent from now on.
    pub fn set_learner_catchup_bytes_per_sec(&self, bytes_per_sec: u64) {
        self.inner.catchup.set_limit(bytes_per_sec);
    }

    /// Bytes this host fed learners through the catch-up bucket, and the microseconds
    /// those sends waited in it, since the host started.
    pub fn learner_catchup_totals(&self) -> (u64, u64) {
        self.inner.catchup.totals()
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
        // openraft's leader lease: how long a follower refuses votes after hearing from
        // its leader, and how long a follower waits before it runs for election.
        let raft_lease_ms = election + (election / 4).max(10);
        let config = openraft::Config {
            cluster_name: format!("stator-{group}"),
            // openraft also uses the heartbeat interval as the AppendEntries timeout, so it
            // stays as long as the election timeout allows: a busy 2-core machine must not
            // time out large appends and resend them.
            heartbeat_interval: (election / 2).max(5),
            election_timeout_min: election,
            // openraft's leader lease equals this upper bound and delays every election
            // after a leader dies, so the randomisation range is kept narrow.
            election_timeout_max: raft_lease_ms,
            install_snapshot_timeout: 10_000,
            max_payload_entries: MAX_ENTRIES_PER_APPEND,
            replication_lag_threshold: options.snapshot_every_entries,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(
                options.snapshot_every_entries,
            ),
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
            max_in_snapshot_log_to_keep: LOG_KEPT_BEHIND_SNAPSHOT,
            purge_batch_size: 256,
            ..Default::default()
        };
        let config = Arc::new(config.validate().map_err(|e| HostError::Config {
            group,
            reason: e.to_string(),
        })?);
        let queued_writes = Arc::new(AtomicUsize::new(0));
        let pacing = Arc::new(GroupPacing::new(self.inner.catchup.clone()));
        let network = GroupNetwork {
            group,
            node_id: self.inner.node_id,
            transport: self.inner.transport.clone(),
            queued_writes: queued_writes.clone(),
            pacing: pacing.clone(),
        };
        let opening = Instant::now();
        let (log, sm) = self.open_storage(group, &options, app).await?;
        let stopped = |e: openraft::error::Fatal<NodeId>| HostError::Stopped {
            group,
            reason: e.to_string(),
        };
        let starting = Instant::now();
        let (applied_before, apply_us_before) = (sm.last_applied_index().await, sm.apply_us());
        let raft = match &log {
            ReplicaLog::Memory(log) => {
                Raft::new(self.inner.node_id, config, network, log.clone(), sm.clone()).await
            }
            ReplicaLog::Disk(log) => {
                Raft::new(self.inner.node_id, config, network, log.clone(), sm.clone()).await
            }
        }
        .map_err(stopped)?;
        let _ = pacing.metrics.set(raft.metrics());
        if matches!(log, ReplicaLog::Disk(_)) {
            // The restart profile's spans (docs/BENCHMARKS.md, "Session 10: the member
            // restart"): openraft's start re-applies the committed log after the snapshot.
            let raft_start_ms = starting.elapsed().as_secs_f64() * 1e3;
            let reapplied_entries = sm.last_applied_index().await - applied_before;
            tracing::info!(
                %group,
                open_storage_ms = (starting - opening).as_secs_f64() * 1e3,
                raft_start_ms,
                reapplied_entries,
                reapply_ms = (sm.apply_us() - apply_us_before) as f64 / 1e3,
                "durable replica started"
            );
        }
        let quiet = if options.quiesce && options.forming {
            Quiescence::new_forming(&raft)
        } else {
            Quiescence::new(options.quiesce)
        };
        let replica = Arc::new(Replica {
            group,
            raft,
            sm,
            log,
            latency: LatencyWindow::default(),
            read_index: Arc::new(if options.lease_reads {
                ReadIndex::new(lease_duration(Duration::from_millis(raft_lease_ms)))
            } else {
                ReadIndex::default()
            }),
            votes_from: Instant::now() + Duration::from_millis(raft_lease_ms),
            transfer: tokio::sync::watch::channel(Handover::Idle).0,
            elect_asked_us: AtomicU64::new(0),
            elect_asked_term: AtomicU64::new(0),
            proposing: AtomicUsize::new(0),
            proposals_drained: tokio::sync::Notify::new(),
            writes: WriteQueue::new(options.batch_writes, queued_writes),
            raft_lease: Duration::from_millis(raft_lease_ms),
            last_append_us: AtomicU64::new(0),
            quiet,
            handed_over: AtomicBool::new(false),
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
        // A forming replica's timers start off: the member that bootstraps runs them,
        // also when the group turns out to be initialised already (by a vote request of
        // a candidate that may since have died).
        replica.quiet.wake(&replica.raft);
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
        for task in self.background.iter() {
            task.abort();
        }
        for group in self.groups() {
            self.remove_group(group).await;
        }
        self.inner.transport.disconnect_all();
    }

    /// Serves a client request on the local replica of `group`.
    pub async fn serve_client(&self, group: GroupId, request: ClientRequest) -> ClientReply {
        serve_client(&self.inner, group, request).await
    }

    /// Serves `requests` on the local replica of `group` strictly in order, answering
    /// each: every run of consecutive writes joins the write queue at once (so they
    /// apply in the order given, usually as one entry), and a run of reads starts only
    /// after the writes before it are answered (its reads run together: reads do not
    /// change what another read sees). Used by pipelined RESP connections, which need
    /// order between the commands of one connection on one slot.
    pub async fn serve_client_batch(
        &self,
        group: GroupId,
        requests: Vec<ClientRequest>,
    ) -> Vec<ClientReply> {
        let mut replies = Vec::with_capacity(requests.len());
        let mut requests = requests.into_iter().peekable();
        while let Some(first) = requests.next() {
            if first.kind != RequestKind::Write {
                let mut reads = vec![first];
                while let Some(next) = requests.next_if(|r| r.kind != RequestKind::Write) {
                    reads.push(next);
                }
                replies.extend(
                    futures::future::join_all(
                        reads
                            .into_iter()
                            .map(|read| serve_client(&self.inner, group, read)),
                    )
                    .await,
                );
                continue;
            }
            let mut writes = vec![first];
            while let Some(next) = requests.next_if(|r| r.kind == RequestKind::Write) {
                writes.push(next);
            }
            replies.extend(serve_writes(&self.inner, group, writes).await);
        }
        replies
    }

    /// The status of the local replica of `group`.
    pub fn status(&self, group: GroupId) -> Option<GroupStatus> {
        self.replica(group).map(|r| status_of(&r))
    }

    /// The leader the replica of `group` knows of, read under the metrics borrow: what
    /// a route table needs, without building a whole [`GroupStatus`] per group on
    /// every heartbeat.
    pub fn leader(&self, group: GroupId) -> Option<NodeId> {
        self.replica(group)?.raft.metrics().borrow().current_leader
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

    /// Whether this replica leads `group` and its membership already is `desired`
    /// (voters, no learner, no joint configuration): a [`Host::reconcile_membership`]
    /// call would answer [`MembershipStep::InSync`]. `None` where it does not lead (or
    /// hosts no such group). Read under the metrics borrow, without cloning them or
    /// spawning: the agent asks this for every group it leads on each heartbeat, and
    /// at 1,000 partitions nearly all of them are settled.
    pub fn leads_in_sync(
        &self,
        group: GroupId,
        desired: &BTreeMap<NodeId, String>,
    ) -> Option<bool> {
        let replica = self.replica(group)?;
        let metrics = replica.raft.metrics();
        let m = metrics.borrow();
        if m.current_leader != Some(self.inner.node_id) || m.state != ServerState::Leader {
            return None;
        }
        let membership = m.membership_config.membership();
        let in_sync = membership.get_joint_config().len() == 1
            && membership.voter_ids().eq(desired.keys().copied())
            && membership.nodes().map(|(id, _)| id).eq(desired.keys());
        Some(in_sync)
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
        if missing.is_empty() && voters == wanted && known == wanted {
            return Ok(MembershipStep::InSync);
        }
        // A change follows: the leader's timers must run (openraft steps a leader that
        // removed itself down on a tick).
        replica.quiet.wake(&replica.raft);
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
            if !wanted.contains(&self.inner.node_id) {
                // Leaving: hand leadership to the most caught-up voter that stays, so
                // writes pause for about one round trip instead of an election timeout
                // (only now: while learners catch up, this leader keeps feeding them).
                // If that fails the leader commits the change itself and steps down.
                let successor = voters
                    .intersection(&wanted)
                    .filter(|id| **id != self.inner.node_id)
                    .max_by_key(|id| matched.get(id).copied().flatten().map_or(0, |l| l.index))
                    .copied();
                if let Some(to) = successor {
                    if let TransferOutcome::Moved(to) = self.transfer_leadership(group, to).await? {
                        return Ok(MembershipStep::TransferredLeadership(to));
                    }
                }
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

impl Host {
    /// Hands leadership of `group` from this replica (its leader) to the voter `to`:
    /// new writes wait, `to` catches up on the last entries, then starts an election at
    /// once (a TimeoutNow message, which openraft 0.9 lacks and the transport carries as
    /// `Elect`); this replica votes for it, since the candidate's log is as long as its
    /// own. Lease reads stop for the duration. Used to move a leader before it leaves the
    /// group and to spread leaders over nodes.
    pub async fn transfer_leadership(
        &self,
        group: GroupId,
        to: NodeId,
    ) -> Result<TransferOutcome, HostError> {
        let replica = self.replica(group).ok_or(HostError::NoGroup(group))?;
        let metrics = replica.raft.metrics().borrow().clone();
        if metrics.state != ServerState::Leader || to == self.inner.node_id {
            return Ok(TransferOutcome::NotLeader);
        }
        let membership = metrics.membership_config.membership().clone();
        let Some(addr) = membership
            .voter_ids()
            .any(|id| id == to)
            .then(|| membership.get_node(&to).map(|n| n.addr.clone()))
            .flatten()
        else {
            return Ok(TransferOutcome::NotAVoter);
        };
        replica.quiet.wake(&replica.raft);
        // Writes still flow while the successor takes this replica's last entries: the
        // gate closes at an instant when nothing is in flight, if one comes soon.
        let quiet_by = Instant::now() + TRANSFER_QUIET_WAIT;
        if successor_caught_up(&replica, to, quiet_by).await == Err(TransferOutcome::NotLeader) {
            return Ok(TransferOutcome::NotLeader);
        }
        // Writes wait from here on (see `serve_client`), and no lease is held: the
        // successor is elected with this replica's vote, before any lease would end.
        replica.transfer.send_replace(Handover::Pending(to));
        replica.read_index.suspend(true);
        let outcome = self.hand_over(&replica, to, &addr).await;
        replica.read_index.suspend(false);
        replica.transfer.send_replace(Handover::Idle);
        Ok(outcome)
    }

    async fn hand_over(&self, replica: &Replica, to: NodeId, addr: &str) -> TransferOutcome {
        let deadline = Instant::now() + LEADERSHIP_TRANSFER_TIMEOUT;
        // 1. The successor holds every entry this leader has. New writes wait at the gate;
        //    those that passed it before the transfer began must reach the log first, or
        //    the successor's log would end up shorter and this replica would refuse it
        //    its vote.
        if let Err(outcome) = successor_caught_up(replica, to, deadline).await {
            return outcome;
        }
        let mut metrics = replica.raft.metrics();
        // 2. TimeoutNow: the successor runs for election now.
        let remaining = deadline.saturating_duration_since(Instant::now());
        match self
            .inner
            .transport
            .call_node(addr, to, Request::Elect(replica.group), remaining)
            .await
        {
            Ok(Response::Elect(Ok(()))) => {}
            _ => return TransferOutcome::TimedOut,
        }
        // Decided: the writes waiting at the gate (and any arriving) go to the successor
        // now, instead of being proposed here once this replica learns it lost (its
        // vote, then the successor's first append: a round trip and more under load),
        // only to be refused. None of them was proposed, so none can be lost; should the
        // successor lose, its answer sends them back here.
        replica.transfer.send_replace(Handover::Decided {
            to,
            addr: addr.to_string(),
        });
        // 3. This replica learns of the successor by voting for it, then from its appends.
        loop {
            {
                let m = metrics.borrow_and_update();
                if m.state != ServerState::Leader && m.current_leader == Some(to) {
                    return TransferOutcome::Moved(to);
                }
            }
            if tokio::time::timeout_at(deadline.into(), metrics.changed())
                .await
                .map_or(true, |r| r.is_err())
            {
                return TransferOutcome::TimedOut;
            }
        }
    }
}

/// Waits until `to` holds this leader's last entry and no write that passed the transfer
/// gate is still on its way to the log; `Err` if this replica stops leading or `deadline`
/// passes first.
async fn successor_caught_up(
    replica: &Replica,
    to: NodeId,
    deadline: Instant,
) -> Result<(), TransferOutcome> {
    let mut metrics = replica.raft.metrics();
    loop {
        // Registered before the count is read, so a drop to zero in between is not missed.
        let drained = replica.proposals_drained.notified();
        tokio::pin!(drained);
        drained.as_mut().enable();
        let caught_up = {
            let m = metrics.borrow_and_update();
            if m.state != ServerState::Leader {
                return Err(TransferOutcome::NotLeader);
            }
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&to).copied().flatten())
                .map(|l| l.index);
            replica.proposing.load(Ordering::SeqCst) == 0
                && matched.is_some()
                && matched >= m.last_log_index
        };
        if caught_up {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(TransferOutcome::TimedOut);
        }
        // A proposal's end is notified; the poll is a backstop.
        let _ =
            tokio::time::timeout_at(deadline.min(Instant::now() + TRANSFER_POLL).into(), async {
                tokio::select! {
                    _ = metrics.changed() => {}
                    _ = &mut drained => {}
                }
            })
            .await;
    }
}

fn status_of(r: &Replica) -> GroupStatus {
    // Read under the borrow (released before anything else is locked), without cloning
    // the metrics: the agent asks for every replica's status on each heartbeat.
    let (role, leader, term, voters, learners, applied_index, error) = {
        let metrics = r.raft.metrics();
        let m = metrics.borrow();
        let role = match (&m.running_state, m.state) {
            (Err(_), _) | (_, ServerState::Shutdown) => ReplicaRole::Stopped,
            (_, ServerState::Leader) => ReplicaRole::Leader,
            (_, ServerState::Follower) => ReplicaRole::Follower,
            (_, ServerState::Learner) => ReplicaRole::Learner,
            (_, ServerState::Candidate) => ReplicaRole::Candidate,
        };
        let membership = m.membership_config.membership();
        (
            role,
            m.current_leader,
            m.current_term,
            membership.voter_ids().collect(),
            membership.learner_ids().collect(),
            m.last_applied.map_or(0, |l| l.index),
            m.running_state.as_ref().err().map(|e| e.to_string()),
        )
    };
    let (ops_per_sec, p99_us) = r.latency.summary();
    GroupStatus {
        group: r.group,
        role,
        leader,
        term,
        voters,
        learners,
        applied_index,
        log_entries: r.log.len() as u64,
        disk_bytes: r.log.disk_bytes(),
        state_bytes: r.sm.state_bytes(),
        ops_per_sec,
        p99_us,
        error,
        quiet: r.quiet.phase() == Phase::Quiet,
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
    let is_write = request.kind == RequestKind::Write;
    if request.kind != RequestKind::StaleRead {
        replica.quiet.on_request(&replica.raft);
    }
    let reply = match request.kind {
        RequestKind::Write => submit_writes(&replica, vec![request])
            .await
            .pop()
            .expect("one reply per write"),
        RequestKind::Read => match lease_read(&replica, &request.payload).await {
            Some(reply) => reply,
            None => read_index_read(&replica, &request.payload).await,
        },
        RequestKind::StaleRead => query(&replica, &request.payload).await,
    };
    if matches!(reply, ClientReply::Ok(_)) {
        replica.latency.record(started.elapsed());
        if is_write {
            inner.commit_latency.record(started.elapsed());
        }
    }
    reply
}

/// Serves `writes` (all [`RequestKind::Write`]) on the local replica of `group`, in order.
async fn serve_writes(
    inner: &HostInner,
    group: GroupId,
    writes: Vec<ClientRequest>,
) -> Vec<ClientReply> {
    let Some(replica) = inner
        .groups
        .read()
        .expect("groups lock poisoned")
        .get(&group)
        .cloned()
    else {
        return writes.iter().map(|_| ClientReply::NoGroup).collect();
    };
    let started = std::time::Instant::now();
    let replies = submit_writes(&replica, writes).await;
    for reply in &replies {
        if matches!(reply, ClientReply::Ok(_)) {
            replica.latency.record(started.elapsed());
            inner.commit_latency.record(started.elapsed());
        }
    }
    replies
}

/// Queues `writes` at `replica` together (one push, so nothing of another caller lands
/// between them) and waits for every reply, in order. Without batching they are proposed
/// as one entry right here.
async fn submit_writes(replica: &Arc<Replica>, writes: Vec<ClientRequest>) -> Vec<ClientReply> {
    let (batch, waits): (Vec<_>, Vec<_>) = writes
        .into_iter()
        .map(|request| {
            let (reply, wait) = tokio::sync::oneshot::channel();
            let write = Write {
                client_id: request.client_id,
                seq: request.seq,
                payload: request.payload,
            };
            ((write, reply), wait)
        })
        .unzip();
    if !replica.writes.batching() {
        propose(replica, batch).await;
    } else if replica.writes.push_all(batch) {
        // This task took a proposer slot: it proposes one batch itself (its own writes and
        // whatever queued with them, with no hand-off to another task: a lone write's
        // path) and passes the slot on if more writes queued meanwhile.
        let _slot = ProposerSlot(replica);
        if let Some(batch) = replica.writes.take_batch_keeping_slot() {
            propose(replica, batch).await;
        }
    }
    let mut replies = Vec::with_capacity(waits.len());
    for wait in waits {
        replies.push(
            wait.await
                .unwrap_or_else(|_| ClientReply::Unavailable("replica stopped".into())),
        );
    }
    replies
}

/// Proposes the writes waiting at `replica`, one entry per batch, until none wait. Up to
/// [`MAX_WRITE_BATCHES_IN_FLIGHT`] of these run per replica; writes arriving while they
/// are all busy queue up and go out together as the next entry.
async fn propose_writes(replica: Arc<Replica>) {
    while let Some(batch) = replica.writes.take_batch() {
        propose(&replica, batch).await;
    }
}

/// Counts a proposal in [`Replica::proposing`] until dropped.
struct Proposing<'a>(&'a Replica);

impl<'a> Proposing<'a> {
    fn count(replica: &'a Replica) -> Self {
        replica.proposing.fetch_add(1, Ordering::SeqCst);
        Proposing(replica)
    }
}

impl Drop for Proposing<'_> {
    fn drop(&mut self) {
        if self.0.proposing.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.proposals_drained.notify_waiters();
        }
    }
}

/// While leadership is handed over, a write waits for the successor to be decided (at
/// most [`LEADERSHIP_TRANSFER_TIMEOUT`]): then it is answered with the successor's address
/// (`Err`, never proposed here), or, when the hand-over was abandoned, proposed here as
/// usual. The count is taken before the hand-over state is read and the transfer sets
/// its state before it reads the count, so a write either waits here or is counted by
/// the transfer, never neither.
async fn pass_transfer_gate(replica: &Replica) -> Result<Proposing<'_>, ClientReply> {
    loop {
        let counted = Proposing::count(replica);
        let state = replica.transfer.borrow().clone();
        match state {
            Handover::Idle => return Ok(counted),
            Handover::Decided { to, addr } => {
                return Err(ClientReply::NotLeader {
                    leader_id: Some(to),
                    leader_addr: Some(addr),
                })
            }
            Handover::Pending(_) => drop(counted),
        }
        let mut transfer = replica.transfer.subscribe();
        if tokio::time::timeout(
            LEADERSHIP_TRANSFER_TIMEOUT,
            transfer.wait_for(|t| !matches!(t, Handover::Pending(_))),
        )
        .await
        .is_err()
        {
            // The transfer outlived its own deadline (it cannot, short of a stall):
            // propose anyway rather than hold the write forever.
            return Ok(Proposing::count(replica));
        }
    }
}

/// A write reaching a replica that was asked to run for election (`Elect`, a leader
/// handing over to it) while that election is still open waits for its outcome, at most
/// [`LEADERSHIP_TRANSFER_TIMEOUT`] after the request: the old leader redirects its
/// writes here the moment it asked, and a candidate would refuse them with no leader to
/// name, which costs a client a retry pause. Won, the write is proposed; lost, it is
/// answered with the winner's address as usual.
async fn await_asked_election(replica: &Replica) {
    let asked_us = replica.elect_asked_us.load(Ordering::Acquire);
    if asked_us == 0 {
        return;
    }
    let deadline = process_epoch() + Duration::from_micros(asked_us) + LEADERSHIP_TRANSFER_TIMEOUT;
    if Instant::now() >= deadline {
        return;
    }
    let asked_term = replica.elect_asked_term.load(Ordering::Acquire);
    // Open: not leading yet, and either still in the term it was asked in (the election
    // has not started) or a candidate in the term it started.
    let open = |m: &openraft::RaftMetrics<NodeId, BasicNode>| {
        m.state != ServerState::Leader
            && (m.current_term <= asked_term || m.state == ServerState::Candidate)
    };
    let mut metrics = replica.raft.metrics();
    let _ = tokio::time::timeout_at(deadline.into(), metrics.wait_for(|m| !open(m))).await;
}

/// Proposes `batch` as one entry and answers each write.
async fn propose(
    replica: &Replica,
    batch: Vec<(Write, tokio::sync::oneshot::Sender<ClientReply>)>,
) {
    await_asked_election(replica).await;
    let _proposing = match pass_transfer_gate(replica).await {
        Ok(counted) => counted,
        Err(hint) => {
            for (_, reply) in batch {
                let _ = reply.send(hint.clone());
            }
            return;
        }
    };
    let started = Instant::now();
    let before = leadership(&replica.raft).map(|(l, _)| l);
    let (writes, replies): (Vec<Write>, Vec<_>) = batch.into_iter().unzip();
    let command = Command {
        time_ms: now_ms(),
        writes: writes.into(),
    };
    // A storage failure (a full disk) stops the Raft core; the batch's clients must hear
    // that at once rather than wait out their deadlines, whatever openraft does with the
    // pending write meanwhile.
    timeline::mark(Stage::Propose);
    let result = tokio::select! {
        result = replica.raft.client_write(command) => result,
        why = core_stopped(&replica.raft) => {
            for reply in replies {
                let _ = reply.send(ClientReply::Unavailable(why.clone()));
            }
            return;
        }
    };
    timeline::mark(Stage::Committed);
    match result {
        Ok(resp) => {
            // Committed: a quorum accepted this term's messages sent after `started`.
            let after = leadership(&replica.raft).map(|(l, _)| l);
            if let Some(leader) =
                before.filter(|l| Some(*l) == after && l.term == resp.log_id.leader_id.term)
            {
                replica.read_index.renew(leader, started);
            }
            // One reply per write, in order (a shorter list would be a bug in `apply`;
            // the unanswered writes would then see "replica stopped").
            for (reply, answer) in replies.into_iter().zip(resp.data) {
                let _ = reply.send(match answer {
                    CommandReply::Applied(bytes) => ClientReply::Ok(bytes),
                    CommandReply::StaleSequence { last_seq } => {
                        ClientReply::StaleSequence { last_seq }
                    }
                    CommandReply::AppFailed(why) => ClientReply::Unavailable(why),
                });
            }
        }
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            for reply in replies {
                let _ = reply.send(leader_hint(f.leader_id, f.leader_node.clone()));
            }
        }
        Err(e) => {
            let why = e.to_string();
            for reply in replies {
                let _ = reply.send(ClientReply::Unavailable(why.clone()));
            }
        }
    }
}

/// Waits until `raft`'s core has stopped; why, as the clients of a failed write see it.
///
/// It watches the server metrics (vote, role, leader, membership), not the full metrics:
/// openraft publishes those on every pass of its core loop, and each publication woke
/// every proposer waiting here for nothing, several times per entry under load. The
/// core's task owns the server metrics' sender, so their channel closes the moment the
/// core stops, whatever stopped it; the full metrics then say why.
async fn core_stopped(raft: &Raft) -> String {
    let why = |raft: &Raft| {
        match &raft.metrics().borrow().running_state {
        Err(fatal) => format!(
            "the replica stopped on a storage error ({fatal}); the write was not acknowledged: free the disk or move the replica"
        ),
        Ok(()) => "the replica stopped; the write was not acknowledged".into(),
    }
    };
    let mut server = raft.server_metrics();
    loop {
        if raft.metrics().borrow().running_state.is_err() {
            return why(raft);
        }
        if server.changed().await.is_err() {
            return why(raft);
        }
    }
}

/// A read served under the leader lease, or `None` when the lease is unsure (not leader,
/// expired, this term's first entry not applied yet, or it expired while reading).
async fn lease_read(replica: &Arc<Replica>, payload: &[u8]) -> Option<ClientReply> {
    let LeaseCheck::Valid { renew } = replica.read_index.check_lease(&replica.raft) else {
        return None;
    };
    if renew {
        replica.read_index.renew_in_background(&replica.raft);
    }
    let reply = query(replica, payload).await;
    // Checked again after reading: a leader paused while reading must not answer from a
    // lease that expired meanwhile (a successor may have written since).
    match replica.read_index.check_lease(&replica.raft) {
        LeaseCheck::Valid { .. } => Some(reply),
        LeaseCheck::Unsure => None,
    }
}

async fn read_index_read(replica: &Arc<Replica>, payload: &[u8]) -> ClientReply {
    match replica.read_index.confirm(&replica.raft).await {
        RoundResult::Confirmed => query(replica, payload).await,
        RoundResult::NotLeader {
            leader_id,
            leader_addr,
        } => ClientReply::NotLeader {
            leader_id,
            leader_addr,
        },
        RoundResult::Failed(e) => ClientReply::Unavailable(e),
    }
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
    /// A leader's host that drops its connection is usually dead (SIGKILL, crash of the
    /// process): its successor runs for election as soon as the lease allows instead of
    /// after a full election timeout, and the other followers in turn if it cannot win
    /// (see [`elect_after_leader_loss`]). If the leader lives, its next heartbeat cancels
    /// them.
    ///
    /// Quiet groups hear nothing from a live leader either, so for them the host first
    /// probes the peer (see [`probe_after_disconnect`]).
    fn peer_gone(&self, peer: &PeerInfo) {
        let me = self.inner.node_id;
        let replicas: Vec<Arc<Replica>> = self
            .inner
            .groups
            .read()
            .expect("groups lock poisoned")
            .values()
            .filter(|r| {
                r.quiet.phase() != Phase::Quiet && succession_rank(r, me, peer.node_id).is_some()
            })
            .cloned()
            .collect();
        for replica in replicas {
            tokio::spawn(elect_after_leader_loss(
                self.inner.clone(),
                replica,
                me,
                peer.node_id,
            ));
        }
        tokio::spawn(probe_after_disconnect(
            self.inner.clone(),
            peer.node_id,
            peer.listen_addr.clone(),
        ));
    }

    async fn handle(&self, peer: &PeerInfo, request: Request) -> Response {
        if peer.node_id != 0 {
            // Any message proves its sender alive, not only a ping's answer.
            self.inner
                .liveness
                .lock()
                .expect("liveness mutex poisoned")
                .heard(peer.node_id, Instant::now());
        }
        match request {
            Request::Append(group, rpc) => match self.replica(group) {
                Some(r) => {
                    r.last_append_us
                        .store(micros_since_epoch(), Ordering::Relaxed);
                    // Entries wake a quiet follower; a heartbeat does not (see
                    // `crate::quiesce`). After the append, so its election timer restarts
                    // from this message.
                    let busy = !rpc.entries.is_empty();
                    if busy {
                        timeline::mark(Stage::FollowerHandle);
                    }
                    let result = r.raft.append_entries(rpc).await;
                    if busy {
                        timeline::mark(Stage::FollowerAppended);
                    }
                    if busy && result.is_ok() {
                        r.quiet.wake_unless_forming(&r.raft);
                    }
                    Response::Append(result)
                }
                None => Response::NoGroup,
            },
            Request::Vote(group, rpc) => match self.replica(group) {
                // Answered as if absent: the candidate retries after a back-off.
                Some(r) if Instant::now() < r.votes_from => Response::NoGroup,
                Some(r) => {
                    let result = r.raft.vote(rpc).await;
                    r.quiet.wake_unless_forming(&r.raft);
                    Response::Vote(result)
                }
                None => Response::NoGroup,
            },
            Request::InstallSnapshot(group, rpc) => match self.replica(group) {
                Some(r) => {
                    let result = r.raft.install_snapshot(rpc).await;
                    r.quiet.wake(&r.raft);
                    Response::InstallSnapshot(result)
                }
                None => Response::NoGroup,
            },
            Request::Quiesce(group, term) => match self.replica(group) {
                Some(r) => Response::Quiesce(
                    follows(&r, peer.node_id, term) && r.quiet.quiet_follower(&r.raft),
                ),
                None => Response::NoGroup,
            },
            Request::Ping => Response::Pong,
            Request::LeaderLost(group, _) => match self.replica(group) {
                Some(r) => Response::LeaderLost(!hears_a_leader(&self.inner, &r)),
                None => Response::NoGroup,
            },
            Request::Client(group, req) => {
                timeline::mark(Stage::LeaderHandle);
                Response::Client(serve_client(&self.inner, group, req).await)
            }
            // Polled in order, every write of the frame joins the replica's write queue
            // before any proposer runs, so they travel as one entry.
            Request::ClientBatch(calls) => Response::ClientBatch({
                timeline::mark(Stage::LeaderHandle);
                futures::future::join_all(
                    calls
                        .into_iter()
                        .map(|(group, req)| serve_client(&self.inner, group, req)),
                )
                .await
            }),
            Request::Elect(group) => match self.replica(group) {
                Some(r) => {
                    r.quiet.wake(&r.raft);
                    let term = r.raft.metrics().borrow().current_term;
                    r.elect_asked_term.store(term, Ordering::Release);
                    r.elect_asked_us
                        .store(micros_since_epoch().max(1), Ordering::Release);
                    Response::Elect(r.raft.trigger().elect().await.map_err(|e| e.to_string()))
                }
                None => Response::NoGroup,
            },
        }
    }
}

/// Whether this follower of `leader` is the voter to succeed it: the lowest id among
/// the other voters (one candidate, so no split vote), per its metrics.
fn is_successor(replica: &Replica, me: NodeId, leader: NodeId) -> bool {
    succession_rank(replica, me, leader) == Some(0)
}

/// This follower's place in the order in which the other voters take over from
/// `leader` (0: the successor, the lowest id); `None` when it does not follow `leader`
/// or is no voter.
fn succession_rank(replica: &Replica, me: NodeId, leader: NodeId) -> Option<usize> {
    let m = replica.raft.metrics();
    let m = m.borrow();
    if m.state != ServerState::Follower || m.current_leader != Some(leader) {
        return None;
    }
    let membership = m.membership_config.membership();
    let mut others: Vec<NodeId> = membership.voter_ids().filter(|id| *id != leader).collect();
    others.sort_unstable();
    others.iter().position(|id| *id == me)
}

/// Whether this replica may still run for election after `leader` went away: it is a
/// follower still voting for `leader`, or a candidate for itself. Not once it has
/// granted its vote to another candidate (that one is winning) or follows a new leader.
fn may_run_after_loss(replica: &Replica, me: NodeId, leader: NodeId) -> bool {
    let m = replica.raft.metrics();
    let m = m.borrow();
    let voted_for = m.vote.leader_id().voted_for();
    match m.state {
        ServerState::Follower => voted_for == Some(leader) && m.current_leader == Some(leader),
        ServerState::Candidate => voted_for == Some(me),
        _ => false,
    }
}

/// Runs for election as soon as the other voters will grant it, unless the leader turns
/// out to be alive (an AppendEntries arrives), someone else leads meanwhile, or a quorum
/// still hears from a leader (the pre-vote, see [`leader_lost_by_quorum`]). openraft's
/// own timer would wait a lease plus an election timeout, plus up to a tick.
///
/// Followers run in id order, [`FAST_ELECTION_STAGGER`] apart, each only while it has
/// granted no other candidate its vote: the successor first; the next one if the
/// successor could not win (it lacked an entry, or a voter's lease still ran). Two
/// candidates of one term never split the vote: openraft orders votes of one term by
/// node id, so the higher id wins it.
async fn elect_after_leader_loss(
    inner: Arc<HostInner>,
    replica: Arc<Replica>,
    me: NodeId,
    leader: NodeId,
) {
    let Some(rank) = succession_rank(&replica, me, leader) else {
        return;
    };
    let heard_us = replica.last_append_us.load(Ordering::Relaxed);
    let lease_ends = process_epoch() + Duration::from_micros(heard_us) + replica.raft_lease;
    let runs_at = lease_ends + FAST_ELECTION_MARGIN + FAST_ELECTION_STAGGER * rank as u32;
    tokio::time::sleep_until(runs_at.into()).await;
    let still_lost = || {
        replica.last_append_us.load(Ordering::Relaxed) == heard_us
            && may_run_after_loss(&replica, me, leader)
    };
    if !still_lost() {
        return;
    }
    if !leader_lost_by_quorum(&inner, &replica, me, leader).await {
        tracing::info!(group = %replica.group, leader, rank, "leader's node looked lost, but a quorum still hears a leader: no election");
        return;
    }
    if still_lost() {
        tracing::info!(group = %replica.group, leader, rank, "leader's host went away: running for election");
        replica.quiet.wake(&replica.raft);
        let _ = replica.raft.trigger().elect().await;
    }
}

/// The pre-vote of an election started on a liveness signal: whether enough of the
/// group's other voters (with this one, a majority) no longer hear from a leader either
/// ([`hears_a_leader`]). openraft 0.9 has no pre-vote, and a candidate deposes a live
/// leader even when it loses (its higher term turns the leader's next append away); so a
/// follower whose own view is stale (its process stalled, its pings ran late under load)
/// must not run while the others still follow a live leader. Each voter answers within
/// [`PRE_VOTE_TIMEOUT`]; one that does not (the dead leader) counts as no.
async fn leader_lost_by_quorum(
    inner: &Arc<HostInner>,
    replica: &Replica,
    me: NodeId,
    leader: NodeId,
) -> bool {
    let others: Vec<(NodeId, String)> = {
        let m = replica.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        membership
            .voter_ids()
            .filter(|id| *id != me)
            .filter_map(|id| membership.get_node(&id).map(|n| (id, n.addr.clone())))
            .collect()
    };
    // A majority of the voters, this one included.
    let voters = others.len() + 1;
    let needed = voters / 2 + 1;
    let mut granted = 1;
    if granted >= needed {
        return true;
    }
    let mut answers: futures::stream::FuturesUnordered<_> = others
        .into_iter()
        .map(|(id, addr)| {
            let transport = inner.transport.clone();
            let group = replica.group;
            async move {
                transport
                    .call_node(
                        &addr,
                        id,
                        Request::LeaderLost(group, leader),
                        PRE_VOTE_TIMEOUT,
                    )
                    .await
            }
        })
        .collect();
    while let Some(answer) = futures::StreamExt::next(&mut answers).await {
        if matches!(answer, Ok(Response::LeaderLost(true))) {
            granted += 1;
            if granted >= needed {
                return true;
            }
        }
    }
    false
}

/// Whether replica `r` still hears from a live leader, as a pre-vote asks: it leads here
/// itself, or its leader's node is not declared lost and sent an AppendEntries within
/// openraft's leader lease, or (a quiet group, whose live leader sends nothing) its
/// leader's node answered the liveness pings lately.
fn hears_a_leader(inner: &HostInner, r: &Replica) -> bool {
    let (leader, leads) = {
        let m = r.raft.metrics();
        let m = m.borrow();
        (
            m.current_leader,
            m.state == ServerState::Leader && m.running_state.is_ok(),
        )
    };
    let Some(leader) = leader else {
        return false;
    };
    if leader == inner.node_id {
        return leads;
    }
    let liveness = inner.liveness.lock().expect("liveness mutex poisoned");
    if liveness.is_lost(leader) {
        return false;
    }
    let since_append = Duration::from_micros(
        micros_since_epoch().saturating_sub(r.last_append_us.load(Ordering::Relaxed)),
    );
    since_append < r.raft_lease
        || (r.quiet.phase() == Phase::Quiet && liveness.alive(leader, Instant::now()))
}

/// Where a durable replica of `group` keeps its store under a host's data directory.
pub fn replica_dir(data_dir: &std::path::Path, group: GroupId) -> PathBuf {
    data_dir.join(format!("{}-{}", group.service_id(), group.partition()))
}

/// How long a host waits for a peer's answer to a client call it forwards.
pub const CLIENT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `r` follows `leader` in `term` (a follower or learner that knows it as leader).
fn follows(r: &Replica, leader: NodeId, term: u64) -> bool {
    let m = r.raft.metrics();
    let m = m.borrow();
    matches!(m.state, ServerState::Follower | ServerState::Learner)
        && m.current_term == term
        && m.current_leader == Some(leader)
}

/// Every replica hosted, as a snapshot (the lock is not held while they are looked at).
fn hosted(inner: &HostInner) -> Vec<Arc<Replica>> {
    inner
        .groups
        .read()
        .expect("groups lock poisoned")
        .values()
        .cloned()
        .collect()
}

/// Every [`SWEEP_INTERVAL`]: quiets idle groups led here, hands over groups whose leader
/// replica stopped, snapshots replicas whose log outgrew their state
/// ([`crate::state_machine::snapshot_due_by_bytes`]), and refreshes the peers to ping.
/// Ends when the host is dropped.
async fn sweep_loop(inner: Weak<HostInner>) {
    let mut ticker = tokio::time::interval(SWEEP_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        sweep(&inner);
    }
}

fn sweep(inner: &Arc<HostInner>) {
    let now = Instant::now();
    let me = inner.node_id;
    let mut peers = HashMap::new();
    for replica in hosted(inner) {
        // Quiet leaders (most, when idle) are not asked again. Read before the metrics
        // borrow: no other lock is taken while it is held.
        let may_begin =
            replica.quiet.phase() == Phase::Awake && *replica.transfer.borrow() == Handover::Idle;
        // Read under the metrics borrow, without cloning them: this runs for every
        // replica four times a second, most of them idle.
        let (stopped, quiesce) = {
            let metrics = replica.raft.metrics();
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            for (id, node) in membership.nodes() {
                if *id != me && !peers.contains_key(id) {
                    peers.insert(*id, node.addr.clone());
                }
            }
            if m.running_state.is_err() {
                (Some(m.clone()), None)
            } else {
                let quiesce = (may_begin && may_quiesce(&m)).then(|| {
                    let members: Vec<String> = membership
                        .nodes()
                        .filter(|(id, _)| **id != me)
                        .map(|(_, node)| node.addr.clone())
                        .collect();
                    (m.current_term, members)
                });
                (None, quiesce)
            }
        };
        if let Some(m) = stopped {
            hand_over_stopped(inner, &replica, &m);
            continue;
        }
        if replica.sm.snapshot_due() {
            // openraft ignores the trigger while a build runs; the build zeroes the count
            // when it takes the state, so this asks again only if the log outgrew it again.
            let raft = replica.raft.clone();
            let group = replica.group;
            tokio::spawn(async move {
                if let Err(e) = raft.trigger().snapshot().await {
                    tracing::debug!(%group, "snapshot by log size not triggered: {e}");
                }
            });
        }
        if replica.quiet.forming_overdue(now) {
            tracing::info!(group = %replica.group, "still forming after {FORMING_TIMERS_OFF_MAX:?}: timers on");
            replica.quiet.wake(&replica.raft);
        }
        if let Some((term, members)) = quiesce {
            if replica.quiet.begin_quiescing(now) {
                tokio::spawn(quiesce_group(inner.clone(), replica.clone(), term, members));
            }
        }
    }
    inner
        .liveness
        .lock()
        .expect("liveness mutex poisoned")
        .set_peers(peers, now);
}

/// Asks every other member of a group this host leads in `term` to go quiet; the leader
/// goes quiet too if all agree and no request came meanwhile.
async fn quiesce_group(
    inner: Arc<HostInner>,
    replica: Arc<Replica>,
    term: u64,
    members: Vec<String>,
) {
    let asks = members.iter().map(|addr| {
        inner.transport.call(
            addr,
            Request::Quiesce(replica.group, term),
            QUIESCE_REQUEST_TIMEOUT,
        )
    });
    let agreed = futures::future::join_all(asks)
        .await
        .into_iter()
        .all(|answer| matches!(answer, Ok(Response::Quiesce(true))));
    let still_leads = leadership(&replica.raft).is_some_and(|(l, _)| l.term == term);
    if replica
        .quiet
        .finish_quiescing(&replica.raft, agreed && still_leads)
    {
        tracing::debug!(group = %replica.group, term, "idle: quiet");
    }
}

/// A replica whose Raft core stopped (its app or its store failed) while its host lives:
/// if it led, its followers may be quiet and would never notice, so the lowest other
/// voter is asked once to run for election.
fn hand_over_stopped(
    inner: &Arc<HostInner>,
    replica: &Arc<Replica>,
    m: &openraft::RaftMetrics<NodeId, BasicNode>,
) {
    if m.current_leader != Some(inner.node_id) || replica.handed_over.swap(true, Ordering::Relaxed)
    {
        return;
    }
    let membership = m.membership_config.membership();
    let Some((to, addr)) = membership
        .voter_ids()
        .filter(|id| *id != inner.node_id)
        .min()
        .and_then(|id| membership.get_node(&id).map(|n| (id, n.addr.clone())))
    else {
        return;
    };
    tracing::warn!(group = %replica.group, to, "this leader replica stopped: asking a follower to take over");
    let (transport, group) = (inner.transport.clone(), replica.group);
    tokio::spawn(async move {
        let _ = transport
            .call_node(&addr, to, Request::Elect(group), QUIESCE_REQUEST_TIMEOUT)
            .await;
    });
}

/// Every [`LIVENESS_INTERVAL`]: pings each peer node, and acts on peers that fell silent.
async fn liveness_loop(inner: Weak<HostInner>) {
    let mut ticker = tokio::time::interval(LIVENESS_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let (targets, silent) = {
            let mut liveness = inner.liveness.lock().expect("liveness mutex poisoned");
            (liveness.targets(), liveness.newly_silent(Instant::now()))
        };
        for (node, addr) in targets {
            tokio::spawn(ping(inner.clone(), node, addr));
        }
        for node in silent {
            tracing::info!(node, "peer node silent: its quiet groups elect new leaders");
            node_lost(&inner, node);
        }
    }
}

/// One liveness ping; an answer marks the peer alive.
async fn ping(inner: Arc<HostInner>, node: NodeId, addr: String) -> bool {
    let alive = matches!(
        inner
            .transport
            .call(&addr, Request::Ping, NODE_SILENT_AFTER)
            .await,
        Ok(Response::Pong)
    );
    if alive {
        inner
            .liveness
            .lock()
            .expect("liveness mutex poisoned")
            .heard(node, Instant::now());
    }
    alive
}

/// A peer's connection to this host closed: if a probe finds nobody answering at its
/// address (a killed process's port refuses at once), its quiet groups elect new leaders
/// now instead of after [`NODE_SILENT_AFTER`].
async fn probe_after_disconnect(inner: Arc<HostInner>, node: NodeId, addr: String) {
    let alive = tokio::time::timeout(LIVENESS_PROBE_TIMEOUT, ping(inner.clone(), node, addr))
        .await
        .unwrap_or(false);
    let newly_lost = !alive
        && inner
            .liveness
            .lock()
            .expect("liveness mutex poisoned")
            .mark_lost(node);
    if newly_lost {
        tracing::info!(node, "peer node gone: its quiet groups elect new leaders");
        node_lost(&inner, node);
    }
}

/// `lost` is gone: every quiet group it led here wakes. Its successor runs for election
/// once openraft's leader lease allows (at once, for a group quiet that long); the other
/// followers wake one lease later unless its vote request woke them first.
fn node_lost(inner: &Arc<HostInner>, lost: NodeId) {
    let me = inner.node_id;
    for replica in hosted(inner) {
        if replica.quiet.phase() != Phase::Quiet
            || replica.raft.metrics().borrow().current_leader != Some(lost)
        {
            continue;
        }
        if is_successor(&replica, me, lost) {
            tokio::spawn(elect_after_leader_loss(inner.clone(), replica, me, lost));
        } else {
            tokio::spawn(async move {
                tokio::time::sleep(replica.raft_lease).await;
                if replica.quiet.phase() == Phase::Quiet {
                    replica.quiet.wake(&replica.raft);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writes(n: usize) -> Vec<(Write, tokio::sync::oneshot::Sender<ClientReply>)> {
        (0..n)
            .map(|i| {
                let write = Write {
                    client_id: 1,
                    seq: i as u64 + 1,
                    payload: vec![b'x'; 10],
                };
                (write, tokio::sync::oneshot::channel().0)
            })
            .collect()
    }

    /// The count the replication streams read (`GroupNetwork::queued_writes`) follows the
    /// writes waiting for a proposer: a new commit index waits for the entry of queued
    /// writes only while there are some.
    #[test]
    fn the_queued_count_follows_the_writes_waiting_for_a_proposer() {
        let queued = Arc::new(AtomicUsize::new(0));
        let queue = WriteQueue::new(true, queued.clone());
        assert!(
            queue.push_all(writes(3)),
            "the first push starts a proposer"
        );
        assert_eq!(queued.load(Ordering::Relaxed), 3);
        let batch = queue.take_batch_keeping_slot().expect("three wait");
        assert_eq!(batch.len(), 3, "one entry takes every waiting write");
        assert_eq!(queued.load(Ordering::Relaxed), 0);
        queue.push_all(writes(2));
        assert_eq!(queued.load(Ordering::Relaxed), 2);
        assert_eq!(queue.take_batch().map(|b| b.len()), Some(2));
        assert_eq!(queued.load(Ordering::Relaxed), 0);
        assert!(queue.take_batch().is_none());
    }

    fn writes_of(
        count: usize,
        bytes: usize,
    ) -> Vec<(Write, tokio::sync::oneshot::Sender<ClientReply>)> {
        (0..count)
            .map(|i| {
                let write = Write {
                    client_id: 1,
                    seq: i as u64 + 1,
                    payload: vec![b'x'; bytes],
                };
                (write, tokio::sync::oneshot::channel().0)
            })
            .collect()
    }

    /// One proposer is the rule: writes that queue while its entry commits wait for it
    /// (one entry, not one each), a further proposer starts only for a whole batch, and
    /// an extra proposer stops once less than a whole batch waits, while the last one
    /// never leaves writes behind.
    #[test]
    fn a_further_proposer_starts_only_for_a_whole_batch() {
        let queue = WriteQueue::new(true, Arc::new(AtomicUsize::new(0)));
        assert!(queue.push_all(writes_of(1, 100)), "none at work: start one");
        let first = queue.take_batch_keeping_slot().expect("one waits");
        assert_eq!(first.len(), 1);
        for _ in 0..10 {
            assert!(
                !queue.push_all(writes_of(1, 100)),
                "less than a whole batch waits behind a proposer at work"
            );
        }
        let to_whole = MAX_WRITE_BATCH_BYTES / 100 - 10 + 1;
        assert!(
            queue.push_all(writes_of(to_whole, 100)),
            "a whole batch waits: one more proposer"
        );
        // The second proposer takes a whole batch, which leaves one write, and then stops:
        // one write is not a whole batch, and the first proposer is still at work.
        let second = queue.take_batch().expect("a whole batch waits");
        assert_eq!(second.len(), MAX_WRITE_BATCH_BYTES / 100);
        assert!(
            queue.take_batch().is_none(),
            "an extra proposer stops while another is at work and less than a batch waits"
        );
        // The first proposer, now the only one, takes what is left and then stops.
        assert!(queue.release_or_hand_on(), "the last proposer keeps going");
        assert_eq!(queue.take_batch().map(|b| b.len()), Some(1));
        assert!(queue.take_batch().is_none());
        assert_eq!(queue.state.lock().unwrap().proposers, 0);
        assert_eq!(queue.state.lock().unwrap().waiting_bytes, 0);
    }
}
