//! openraft's network traits over the shared [`Transport`].

use crate::timeline::{self, Stage};
use crate::transport::{Request, Response, Transport, TransportError};
use crate::types::{GroupId, NodeId, TypeConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

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
}

/// One group's view of one target replica.
pub struct GroupPeer {
    group: GroupId,
    from: NodeId,
    target: NodeId,
    addr: String,
    transport: Arc<Transport>,
    queued_writes: Arc<AtomicUsize>,
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
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
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
