//! Forwarding one request to a partition's leader, exactly once.
//!
//! A Redis connection may pipeline many writes, and the replication layer remembers only
//! the last `(client id, sequence)` per client. So the router does not give each connection
//! one session: every write checks a session out of a pool for its whole life (first
//! attempt and all retries share its sequence number) and returns it with the next
//! sequence number afterwards. One session never has two writes in flight, so no retry can
//! ever be mistaken for an older request, however many writes run at once.
//!
//! A call made while no other call of the router is in flight goes straight onto the
//! transport connection ([`Transport::call`]); otherwise it joins [`ReplicaClient`]'s
//! queue for its host and leaves in a shared `ClientBatch` frame. A lone client (one
//! request at a time) so skips the frame sender task and its two task hops, and many
//! concurrent clients still share frames.

use crate::coalesce::Coalescer;
use crate::map::{PartitionRoute, ServiceRoutes};
use stator_replication::client::{ATTEMPT_TIMEOUT, RETRY_PAUSE};
use stator_replication::transport::{
    Request, Response, Transport, TransportConfig, TransportError,
};
use stator_replication::{
    ClientError, ClientReply, ClientRequest, GroupId, ReplicaClient, RequestKind,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Idle sessions kept for reuse. Above this the surplus is forgotten; the groups' own
/// session tables (65,536 clients each) then evict them in time. Sized above the writes
/// that can be in flight at once through one gateway in ordinary use.
pub const MAX_IDLE_SESSIONS: usize = 16_384;

/// Leader hints followed in a row without a pause: two replicas that each name the other
/// (a stale view during an election) must not make the router spin.
const MAX_HINTS_WITHOUT_PAUSE: u32 = 4;

#[derive(Debug, Clone, Copy)]
struct Session {
    client_id: u64,
    next_seq: u64,
}

/// Forwards requests to partition leaders; shared by every listener of a gateway.
pub struct Router {
    core: Arc<RouterCore>,
    /// Write batches of many connections for one partition, merged (see [`crate::coalesce`]).
    coalescer: Coalescer,
}

/// What forwarding needs, shared with the coalescer's sender tasks.
pub(crate) struct RouterCore {
    client: ReplicaClient,
    /// Calls made with nothing else in flight go here directly (see the module doc).
    direct: Arc<Transport>,
    /// Calls in flight through `client` or `direct`.
    calls: AtomicUsize,
    idle_sessions: Mutex<Vec<Session>>,
    /// Leaders learned from answers and hints, fresher than the polled map.
    leaders: RwLock<HashMap<GroupId, Arc<str>>>,
    /// Wakes the map poller early after a routing failure.
    refresh: Arc<Notify>,
    deadline: Duration,
}

/// An exactly-once session checked out for one write ([`Router::checkout`]).
///
/// Returns to the pool with its next sequence number when dropped, also when the
/// request's future is dropped mid-flight (the client went away): that sequence number may
/// or may not have been applied, so it is never sent again.
pub struct SessionGuard<'a> {
    router: &'a RouterCore,
    session: Session,
}

impl SessionGuard<'_> {
    /// `(client id, sequence number)` of this write.
    pub fn ids(&self) -> (u64, u64) {
        (self.session.client_id, self.session.next_seq)
    }
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        let mut idle = self
            .router
            .idle_sessions
            .lock()
            .expect("session pool poisoned");
        if idle.len() < MAX_IDLE_SESSIONS {
            idle.push(Session {
                client_id: self.session.client_id,
                next_seq: self.session.next_seq + 1,
            });
        }
    }
}

impl Router {
    /// A router of the cluster sharing `cluster_secret`; gives up on a request after
    /// `deadline`; pokes `refresh` when the map looks stale.
    pub fn new(cluster_secret: &str, deadline: Duration, refresh: Arc<Notify>) -> Self {
        Self {
            core: Arc::new(RouterCore {
                client: ReplicaClient::new(cluster_secret),
                direct: Transport::new(TransportConfig {
                    node_id: 0,
                    listen_addr: String::new(),
                    cluster_secret: cluster_secret.to_string(),
                    filter: None,
                    tls: None,
                }),
                calls: AtomicUsize::new(0),
                idle_sessions: Mutex::new(Vec::new()),
                leaders: RwLock::new(HashMap::new()),
                refresh,
                deadline,
            }),
            coalescer: Coalescer::default(),
        }
    }

    /// How long a request may take before it fails with [`ClientError::Timeout`].
    pub fn deadline(&self) -> Duration {
        self.core.deadline
    }

    /// Checks out a session for one write: its `(client id, sequence)` is used for every
    /// attempt of that write, wherever it is sent (an agent first proposes it to its own
    /// replica, then hands it to [`Router::forward_in`] if that replica lost leadership).
    pub fn checkout(&self) -> SessionGuard<'_> {
        self.core.checkout()
    }

    /// Asks the map poller for a fresh map now (a route was missing).
    pub fn request_refresh(&self) {
        self.core.request_refresh();
    }

    /// Sends `payload` to `route`'s leader as `kind`, following leader hints and trying
    /// every member, retrying a write with the same sequence number until it is answered
    /// or the deadline passes. A [`ClientError::Timeout`] of a write means the write may or
    /// may not have been applied.
    pub async fn forward(
        &self,
        route: &PartitionRoute,
        kind: RequestKind,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, ClientError> {
        self.core.forward(route, kind, payload).await
    }

    /// [`Router::forward`] within a session checked out by the caller (writes; `None` for
    /// reads).
    pub async fn forward_in(
        &self,
        route: &PartitionRoute,
        kind: RequestKind,
        payload: Vec<u8>,
        session: Option<&SessionGuard<'_>>,
    ) -> Result<Vec<u8>, ClientError> {
        self.core.forward_in(route, kind, payload, session).await
    }

    /// Commands of one connection for `routes.partitions[partition]`, each one
    /// [`crate::resp::pipeline::may_batch`] allows, answered in order: merged with the
    /// batches of other connections waiting for the same partition into one request of
    /// `kind` (see [`crate::coalesce`]): [`RequestKind::Write`] when one of them is a
    /// write, else the one kind of all the reads.
    pub(crate) async fn merged_batch(
        &self,
        routes: Arc<ServiceRoutes>,
        partition: usize,
        kind: RequestKind,
        commands: Vec<(RequestKind, bytes::Bytes)>,
    ) -> Vec<bytes::Bytes> {
        self.coalescer
            .submit(&self.core, routes, partition, kind, commands)
            .await
    }
}

impl RouterCore {
    /// Checks out a session for one write: its `(client id, sequence)` is used for every
    /// attempt of that write, wherever it is sent (an agent first proposes it to its own
    /// replica, then hands it to [`Router::forward_in`] if that replica lost leadership).
    pub fn checkout(&self) -> SessionGuard<'_> {
        let reused = self
            .idle_sessions
            .lock()
            .expect("session pool poisoned")
            .pop();
        let session = reused.unwrap_or_else(|| Session {
            // Never 0: client 0 means "no session". A fresh random id per session means a
            // restarted gateway never collides with its former self.
            client_id: rand_client_id(),
            next_seq: 1,
        });
        SessionGuard {
            router: self,
            session,
        }
    }

    fn cached_leader(&self, group: GroupId) -> Option<Arc<str>> {
        self.leaders
            .read()
            .expect("leader cache poisoned")
            .get(&group)
            .cloned()
    }

    fn remember_leader(&self, group: GroupId, addr: &Arc<str>) {
        let known = self.cached_leader(group);
        if known.as_deref() != Some(&**addr) {
            self.leaders
                .write()
                .expect("leader cache poisoned")
                .insert(group, addr.clone());
        }
    }

    fn forget_leader(&self, group: GroupId) {
        self.leaders
            .write()
            .expect("leader cache poisoned")
            .remove(&group);
        self.refresh.notify_one();
    }

    /// Asks the map poller for a fresh map now (a route was missing).
    pub fn request_refresh(&self) {
        self.refresh.notify_one();
    }

    /// Sends `payload` to `route`'s leader as `kind`, following leader hints and trying
    /// every member, retrying a write with the same sequence number until it is answered
    /// or the deadline passes. A [`ClientError::Timeout`] of a write means the write may or
    /// may not have been applied.
    pub async fn forward(
        &self,
        route: &PartitionRoute,
        kind: RequestKind,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, ClientError> {
        let session = (kind == RequestKind::Write).then(|| self.checkout());
        self.forward_in(route, kind, payload, session.as_ref())
            .await
    }

    /// [`Router::forward`] within a session checked out by the caller (writes; `None` for
    /// reads).
    pub async fn forward_in(
        &self,
        route: &PartitionRoute,
        kind: RequestKind,
        payload: Vec<u8>,
        session: Option<&SessionGuard<'_>>,
    ) -> Result<Vec<u8>, ClientError> {
        let group = route.group;
        let (client_id, seq) = session.map_or((0, 0), SessionGuard::ids);
        let started = Instant::now();
        let mut target: Option<Arc<str>> = self
            .cached_leader(group)
            .or_else(|| route.leader_addr.as_deref().map(Arc::from));
        let mut next_member = 0usize;
        let mut hints_in_a_row = 0u32;
        let mut last = String::from("no attempt");
        loop {
            let remaining = self.deadline.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                return Err(ClientError::Timeout {
                    group,
                    deadline_ms: self.deadline.as_millis() as u64,
                    last,
                });
            }
            let addr: Arc<str> = match target.take() {
                Some(addr) => addr,
                None if route.member_addrs.is_empty() => {
                    self.refresh.notify_one();
                    last = "the partition map lists no live member".into();
                    tokio::time::sleep(RETRY_PAUSE.min(remaining)).await;
                    continue;
                }
                None => {
                    next_member += 1;
                    Arc::from(
                        route.member_addrs[(next_member - 1) % route.member_addrs.len()].as_str(),
                    )
                }
            };
            let request = ClientRequest {
                client_id,
                seq,
                kind,
                payload: payload.clone(),
            };
            match self
                .call(&addr, group, request, remaining.min(ATTEMPT_TIMEOUT))
                .await
            {
                Ok(ClientReply::Ok(bytes)) => {
                    self.remember_leader(group, &addr);
                    return Ok(bytes);
                }
                Ok(ClientReply::StaleSequence { last_seq }) => {
                    // Impossible while sessions are checked out one request at a time; the
                    // request was not applied, so report it rather than panic.
                    return Err(ClientError::StaleSequence { seq, last_seq });
                }
                Ok(ClientReply::NotLeader {
                    leader_addr: Some(hint),
                    ..
                }) if *hint != *addr && hints_in_a_row < MAX_HINTS_WITHOUT_PAUSE => {
                    hints_in_a_row += 1;
                    target = Some(Arc::from(hint));
                    continue;
                }
                Ok(other) => {
                    last = format!("{addr}: {other:?}");
                    self.forget_leader(group);
                }
                Err(error) => {
                    last = format!("{addr}: {error}");
                    self.forget_leader(group);
                }
            }
            hints_in_a_row = 0;
            tokio::time::sleep(RETRY_PAUSE.min(self.deadline.saturating_sub(started.elapsed())))
                .await;
        }
    }
}

impl RouterCore {
    /// One attempt at one replica: straight onto the transport when no other call is in
    /// flight, else in a shared frame.
    async fn call(
        &self,
        addr: &str,
        group: GroupId,
        request: ClientRequest,
        timeout: Duration,
    ) -> Result<ClientReply, TransportError> {
        let _counted = CallCount::enter(&self.calls);
        if _counted.alone {
            match self
                .direct
                .call(addr, Request::Client(group, request), timeout)
                .await?
            {
                Response::Client(reply) => Ok(reply),
                Response::NoGroup => Ok(ClientReply::NoGroup),
                other => Err(TransportError::Protocol {
                    addr: addr.into(),
                    reason: format!("unexpected answer to a client call: {other:?}"),
                }),
            }
        } else {
            self.client.call(addr, group, request, timeout).await
        }
    }
}

/// Counts a call in flight for as long as it lives (also when its future is dropped).
struct CallCount<'a> {
    calls: &'a AtomicUsize,
    /// No other call was in flight when this one started.
    alone: bool,
}

impl<'a> CallCount<'a> {
    fn enter(calls: &'a AtomicUsize) -> Self {
        let alone = calls.fetch_add(1, Ordering::AcqRel) == 0;
        CallCount { calls, alone }
    }
}

impl Drop for CallCount<'_> {
    fn drop(&mut self) {
        self.calls.fetch_sub(1, Ordering::AcqRel);
    }
}

fn rand_client_id() -> u64 {
    rand::random::<u64>() | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_reused_with_the_next_sequence() {
        let router = Router::new("s", Duration::from_secs(1), Arc::new(Notify::new()));
        let (id, seq) = {
            let a = router.checkout();
            let b = router.checkout();
            assert_ne!(
                a.session.client_id, b.session.client_id,
                "in-flight writes never share a session"
            );
            (a.session.client_id, a.session.next_seq)
        };
        let ids: Vec<(u64, u64)> = (0..2)
            .map(|_| router.checkout())
            .map(|g| (g.session.client_id, g.session.next_seq))
            .collect();
        assert!(
            ids.contains(&(id, seq + 1)),
            "returned with its next sequence: {ids:?}"
        );
        assert!(
            ids.iter().all(|(id, _)| id & 1 == 1),
            "client ids are never 0"
        );
    }
}
