//! openraft's network traits over the shared [`Transport`].

use crate::pacing::{
    pace_decision, prefix_within, CatchUpPacer, WriteRate, PACED_APPEND_MAX_BYTES,
    PACED_APPEND_MAX_WAIT, PACED_SNAPSHOT_MAX_WAIT,
};
use crate::timeline::{self, Stage};
use crate::transport::{Request, Response, Transport, TransportError};
use crate::types::{Entry, GroupId, NodeId, TypeConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, Timeout, Unreachable,
};
use openraft::metrics::RaftMetrics;
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, EntryPayload, LogId};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

/// Builds per-target clients for one group.
pub struct GroupNetwork {
    pub(crate) group: GroupId,
    pub(crate) node_id: NodeId,
    pub(crate) transport: Arc<Transport>,
    /// Client writes of this group waiting at this host for a proposer (the host's write
    /// queue keeps it); see [`RaftNetwork::writes_pending`].
    pub(crate) queued_writes: Arc<AtomicUsize>,
    /// The learner catch-up pacing of this group (see [`crate::pacing`]).
    pub(crate) pacing: Arc<GroupPacing>,
}

/// What a group's replication streams need to pace a learner's catch-up.
pub(crate) struct GroupPacing {
    /// The host's bucket and rate, shared by every group.
    pub(crate) host: Arc<CatchUpPacer>,
    /// How fast this group's log grows (on its leader).
    pub(crate) write_rate: Mutex<WriteRate>,
    /// The replica's Raft metrics (set once the Raft is built): the effective membership
    /// says which targets are voters.
    pub(crate) metrics: OnceLock<tokio::sync::watch::Receiver<RaftMetrics<NodeId, BasicNode>>>,
}

impl GroupPacing {
    pub(crate) fn new(host: Arc<CatchUpPacer>) -> Self {
        GroupPacing {
            host,
            write_rate: Mutex::new(WriteRate::default()),
            metrics: OnceLock::new(),
        }
    }

    /// Whether `target` votes in the leader's effective membership (a joint one counts
    /// both halves), and the leader's last log index; unknown before the metrics are
    /// set, and then taken as a voter.
    fn target_in_log(&self, target: NodeId) -> (bool, u64) {
        let Some(metrics) = self.metrics.get() else {
            return (true, 0);
        };
        let metrics = metrics.borrow();
        let voter = metrics
            .membership_config
            .membership()
            .get_joint_config()
            .iter()
            .any(|voters| voters.contains(&target));
        (voter, metrics.last_log_index.unwrap_or(0))
    }

    /// Counts new entries into the group's write rate and returns the rate.
    fn write_rate(&self, entries: &[Entry]) -> u64 {
        let now = self.host.now();
        // A std mutex: nothing awaits while it is held.
        let mut rate = self.write_rate.lock().expect("write rate poisoned");
        let last = entries.last().map_or(0, |e| e.log_id.index);
        if last > rate.counted_index() {
            rate.record(
                entries.iter().map(|e| (e.log_id.index, entry_bytes(e))),
                now,
            );
        }
        rate.bytes_per_sec(now)
    }
}

/// About the bytes an entry takes on the wire: what pacing counts.
fn entry_bytes(entry: &Entry) -> u64 {
    /// Log id, leader time and framing of an entry, and a write's ids and length.
    const ENTRY_OVERHEAD_BYTES: u64 = 32;
    const WRITE_OVERHEAD_BYTES: u64 = 24;
    ENTRY_OVERHEAD_BYTES
        + match &entry.payload {
            EntryPayload::Normal(cmd) => cmd
                .writes
                .iter()
                .map(|w| WRITE_OVERHEAD_BYTES + w.payload.len() as u64)
                .sum(),
            EntryPayload::Membership(_) | EntryPayload::Blank => 0,
        }
}

/// One group's view of one target replica.
pub struct GroupPeer {
    group: GroupId,
    from: NodeId,
    target: NodeId,
    addr: String,
    transport: Arc<Transport>,
    queued_writes: Arc<AtomicUsize>,
    pacing: Arc<GroupPacing>,
}

impl GroupPeer {
    /// Paces an append to a learner far behind (see [`crate::pacing`]): waits for the
    /// host's bucket and keeps only the entries its tokens cover. Returns the last log id
    /// kept when entries were cut (openraft is then told of a partial success).
    async fn pace_append(
        &self,
        rpc: &mut AppendEntriesRequest<TypeConfig>,
    ) -> Option<LogId<NodeId>> {
        let limit = self.pacing.host.limit_bytes_per_sec();
        if limit == 0 || rpc.entries.is_empty() {
            return None;
        }
        let write_rate = self.pacing.write_rate(&rpc.entries);
        let (voter, leader_last) = self.pacing.target_in_log(self.target);
        let sent_to = rpc.entries.last().map_or(0, |e| e.log_id.index);
        let behind_after = leader_last.saturating_sub(sent_to);
        if !pace_decision(limit, write_rate, behind_after, voter) {
            return None;
        }
        let sizes: Vec<u64> = rpc.entries.iter().map(entry_bytes).collect();
        let sizes = &sizes[..prefix_within(&sizes, PACED_APPEND_MAX_BYTES)];
        let admission =
            self.pacing
                .host
                .admit(sizes, PACED_APPEND_MAX_BYTES, PACED_APPEND_MAX_WAIT);
        if !admission.wait.is_zero() {
            tokio::time::sleep(admission.wait).await;
        }
        if admission.count < rpc.entries.len() {
            rpc.entries.truncate(admission.count);
            return rpc.entries.last().map(|e| e.log_id);
        }
        None
    }

    /// Paces a snapshot chunk to a learner like an append.
    async fn pace_snapshot_chunk(&self, bytes: u64) {
        let limit = self.pacing.host.limit_bytes_per_sec();
        if limit == 0 {
            return;
        }
        let write_rate = self.pacing.write_rate(&[]);
        let (voter, _) = self.pacing.target_in_log(self.target);
        // A replica taking a snapshot is far behind by definition.
        let far_behind = crate::host::MAX_ENTRIES_PER_APPEND;
        if !pace_decision(limit, write_rate, far_behind, voter) {
            return;
        }
        let admission = self
            .pacing
            .host
            .admit(&[bytes], bytes, PACED_SNAPSHOT_MAX_WAIT);
        if !admission.wait.is_zero() {
            tokio::time::sleep(admission.wait).await;
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for GroupNetwork {
    type Network = GroupPeer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        GroupPeer {
            group: self.group,
            from: self.node_id,
            target,
            addr: node.addr.clone(),
            transport: self.transport.clone(),
            queued_writes: self.queued_writes.clone(),
            pacing: self.pacing.clone(),
        }
    }
}

fn map_err<E: std::error::Error>(
    peer: &GroupPeer,
    option: &RPCOption,
    e: TransportError,
) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
    match e {
        TransportError::Timeout { .. } => RPCError::Timeout(Timeout {
            action: openraft::network::RPCTypes::AppendEntries,
            id: peer.from,
            target: peer.target,
            timeout: option.hard_ttl(),
        }),
        TransportError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&e)),
        TransportError::Protocol { .. } => RPCError::Network(NetworkError::new(&e)),
    }
}

fn no_group<E: std::error::Error>(
    peer: &GroupPeer,
) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
    // The target has not created its replica yet (a learner being added) or has removed
    // it: openraft backs off and retries an unreachable target.
    let e = std::io::Error::other(format!(
        "node {} has no replica of group {}",
        peer.target, peer.group
    ));
    RPCError::Unreachable(Unreachable::new(&e))
}

fn unexpected<E: std::error::Error>(
    r: Response,
) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(format!(
        "unexpected response {r:?}"
    ))))
}

/// First wait of a leader's replication to an unreachable peer before it tries again.
pub const UNREACHABLE_BACKOFF_MIN_MS: u64 = 10;
/// Longest wait between tries to an unreachable peer (openraft's default is a constant
/// 500 ms). A member that restarts on its own disk is caught up from the first append
/// that reaches it, so this bounds how long it sits ready but unused (also while its
/// host has started listening but is still opening the replica's store: "no replica"
/// is unreachable too). A try costs a lookup in the transport's own connect back-off
/// (no syscall) most of the time, so a dead peer stays cheap.
pub const UNREACHABLE_BACKOFF_MAX_MS: u64 = 100;

impl RaftNetwork<TypeConfig> for GroupPeer {
    /// Doubling from [`UNREACHABLE_BACKOFF_MIN_MS`] to [`UNREACHABLE_BACKOFF_MAX_MS`];
    /// openraft drops it after the next successful call.
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new((0..).map(|attempt: u32| {
            std::time::Duration::from_millis(
                UNREACHABLE_BACKOFF_MIN_MS
                    .saturating_mul(1u64 << attempt.min(16))
                    .min(UNREACHABLE_BACKOFF_MAX_MS),
            )
        }))
    }

    /// Writes queued for a proposer will be appended within a pass or two of this
    /// host's runtime: a new commit index waits for their AppendEntries to carry it.
    fn writes_pending(&self) -> bool {
        self.queued_writes.load(Ordering::Relaxed) > 0
    }

    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let cut_after = self.pace_append(&mut rpc).await;
        let traced = timeline::enabled() && !rpc.entries.is_empty();
        if traced {
            timeline::mark(Stage::AppendSend);
        }
        let resp = self
            .transport
            .call_node(
                &self.addr,
                self.target,
                Request::Append(self.group, rpc),
                option.hard_ttl(),
            )
            .await
            .map_err(|e| map_err(self, &option, e))?;
        if traced {
            timeline::mark(Stage::AppendAcked);
        }
        match resp {
            // Only the entries up to `cut_after` went: openraft sends the rest next.
            Response::Append(Ok(AppendEntriesResponse::Success)) if cut_after.is_some() => {
                Ok(AppendEntriesResponse::PartialSuccess(cut_after))
            }
            Response::Append(r) => r.map_err(|e| {
                RPCError::RemoteError(openraft::error::RemoteError::new(self.target, e))
            }),
            Response::NoGroup => Err(no_group(self)),
            other => Err(unexpected(other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.pace_snapshot_chunk(rpc.data.len() as u64).await;
        let resp = self
            .transport
            .call_node(
                &self.addr,
                self.target,
                Request::InstallSnapshot(self.group, rpc),
                option.hard_ttl(),
            )
            .await
            .map_err(|e| map_err(self, &option, e))?;
        match resp {
            Response::InstallSnapshot(r) => r.map_err(|e| {
                RPCError::RemoteError(openraft::error::RemoteError::new(self.target, e))
            }),
            Response::NoGroup => Err(no_group(self)),
            other => Err(unexpected(other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        let resp = self
            .transport
            .call_node(
                &self.addr,
                self.target,
                Request::Vote(self.group, rpc),
                option.hard_ttl(),
            )
            .await
            .map_err(|e| map_err(self, &option, e))?;
        match resp {
            Response::Vote(r) => r.map_err(|e| {
                RPCError::RemoteError(openraft::error::RemoteError::new(self.target, e))
            }),
            Response::NoGroup => Err(no_group(self)),
            other => Err(unexpected(other)),
        }
    }
}
