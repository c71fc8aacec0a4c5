//! RESP listeners: one per kv service that asks for one (`expose.resp`), started and
//! stopped as services come and go in the partition map.
//!
//! The connection code is shared with the agents' cluster-mode listeners: a [`Backend`]
//! says what happens to a keyed command (the gateway's [`Router`] forwards it to the
//! leader; an agent serves it from its own replica or answers `MOVED`).
//!
//! # Layout
//! - [`local`]: commands the gateway answers itself, and how the rest are classified.
//! - [`connection`]: one client connection, pipelined and answered in order.
//! - `args`: a connection's command arguments, parsed into buffers reused per command.
//! - [`pipeline`]: a connection's commands for one partition as one `STATOR.EXEC` write,
//!   or, when all are reads, as one read.
//! - [`cluster`]: the Redis Cluster topology commands (`CLUSTER SLOTS`, ...) from the map.
//! - [`command_table`]: `COMMAND` with every command's key positions.
//! - [`auth`]: `expose.auth` passwords and ACL users, AUTH, ACL, protected mode.
//! - [`keyspace`]: KEYS, SCAN, DBSIZE, FLUSHALL/FLUSHDB, RANDOMKEY over every partition.
//! - [`pubsub`]: SUBSCRIBE/PUBLISH and friends through this process's broker, carried to
//!   every other gateway and agent by the bus ([`crate::bus`]); `CONFIG SET|GET
//!   notify-keyspace-events`.
//! - [`transaction`]: MULTI/EXEC/DISCARD/WATCH/UNWATCH, one `STATOR.EXEC` write per EXEC.
//! - [`tls`]: `expose.tls`, the RESP endpoint's certificate (rustls).
//! - `resp3`: replies re-typed for connections that sent `HELLO 3`.
//! - `glob`: Redis's glob patterns (ACL key patterns, `KEYS`, `SCAN MATCH`).

mod args;
pub mod auth;
pub mod cluster;
pub(crate) mod command_table;
pub mod connection;
mod glob;
pub mod keyspace;
pub(crate) mod local;
pub mod pipeline;
pub mod pubsub;
mod resp3;
pub mod tls;
pub mod transaction;

use crate::map::{PartitionMap, ServiceRoutes};
use crate::router::Router;
use auth::AccessCache;
use bytes::Bytes;
use pubsub::Broker;
use stator_api::ids::NodeId;
use stator_api::spec::RespTlsSpec;
use stator_replication::RequestKind;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// RESP connections open at once through one gateway, over all services. Each costs a
/// task and buffers of tens of KiB; past this the listener stops accepting (clients wait
/// in the kernel backlog) rather than run the process out of file descriptors (the usual
/// soft limit is 1024 per process, and the replica transport needs some too).
pub const MAX_RESP_CONNECTIONS: usize = 768;

/// Pause after a failed accept (out of file descriptors, usually), so the loop does not
/// spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How often a listener whose address could not be bound is tried again.
const BIND_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Where a RESP connection sends the keyed commands it does not answer itself.
pub trait Backend: Send + Sync + 'static {
    /// Answers one command on `slot` of `routes.partitions[partition]` (`payload` is the
    /// command as RESP) with the RESP reply bytes, errors included.
    fn execute(
        &self,
        routes: Arc<ServiceRoutes>,
        partition: usize,
        slot: u16,
        kind: RequestKind,
        payload: Vec<u8>,
    ) -> impl Future<Output = Vec<u8>> + Send;

    /// Answers commands of one connection on `routes.partitions[partition]` (`slots[i]`
    /// is the slot of `commands[i]`: all the same unless [`Backend::batches_partitions`]),
    /// strictly in order, one reply each. Called only when [`Backend::pipelines_slots`] is
    /// true; the default runs them one by one. Each payload is a slice of the connection's
    /// input buffer (no copy per command); replies may be slices of one batch reply.
    fn execute_batch(
        &self,
        routes: Arc<ServiceRoutes>,
        partition: usize,
        slots: Vec<u16>,
        commands: Vec<(RequestKind, Bytes)>,
    ) -> impl Future<Output = Vec<Bytes>> + Send {
        async move {
            let mut replies = Vec::with_capacity(commands.len());
            for (slot, (kind, payload)) in slots.into_iter().zip(commands) {
                replies.push(
                    self.execute(routes.clone(), partition, slot, kind, payload.to_vec())
                        .await
                        .into(),
                );
            }
            replies
        }
    }

    /// Whether commands of one connection on one slot may be in flight together, as one
    /// [`Backend::execute_batch`] (the backend keeps their order). `false`: one command
    /// per slot per connection at a time.
    fn pipelines_slots(&self) -> bool {
        false
    }

    /// With [`Backend::pipelines_slots`]: whether one [`Backend::execute_batch`] may carry
    /// commands on any slots of its partition (`false`: all on one slot, the `slot`
    /// argument).
    fn batches_partitions(&self) -> bool {
        false
    }

    /// The map looks stale (a slot without a partition): refresh it soon.
    fn request_refresh(&self);

    /// The node whose endpoint this is: `None` for a gateway (a seed, no node), the
    /// agent's node id for an agent's cluster listener.
    fn node(&self) -> Option<NodeId> {
        None
    }
}

/// What every connection of every service through one gateway shares.
#[derive(Default)]
pub struct Shared {
    /// Loaded `expose.auth` per service (the HTTP routes read it too).
    pub(crate) access: AccessCache,
    /// Pub/Sub subscriptions.
    pub(crate) broker: Arc<Broker>,
}

impl Shared {
    /// The pub/sub broker of these listeners (the bus attaches to it).
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }
}

struct Running {
    listen: String,
    tls: Option<RespTlsSpec>,
    bound: SocketAddr,
    cancel: CancellationToken,
}

/// Keeps one listener per RESP-exposed service; publishes the bound addresses.
pub(crate) async fn supervise(
    router: Arc<Router>,
    shared: Arc<Shared>,
    mut map: watch::Receiver<Arc<PartitionMap>>,
    bound_tx: watch::Sender<BTreeMap<String, SocketAddr>>,
    cancel: CancellationToken,
) {
    let connections = Arc::new(Semaphore::new(MAX_RESP_CONNECTIONS));
    let connection_ids = Arc::new(AtomicU64::new(1));
    let mut running: HashMap<String, Running> = HashMap::new();
    // (service, address) pairs whose bind failed, so the failure is logged once.
    let mut reported: HashMap<String, String> = HashMap::new();
    loop {
        let snapshot = map.borrow_and_update().clone();
        // Level-triggered: compare what runs with what the map asks for.
        running.retain(|name, listener| {
            let keep = snapshot.services.get(name).is_some_and(|s| {
                s.serves_resp()
                    && s.resp_listen.as_deref() == Some(&listener.listen)
                    && s.tls == listener.tls
            });
            if !keep {
                tracing::info!(service = %name, addr = %listener.bound, "stopping RESP listener");
                listener.cancel.cancel();
            }
            keep
        });
        for service in snapshot.services.values().filter(|s| s.serves_resp()) {
            if running.contains_key(&service.name) {
                continue;
            }
            let listen = service
                .resp_listen
                .clone()
                .expect("serves_resp implies an address");
            let acceptor = match service.tls.as_ref().map(tls::acceptor).transpose() {
                Ok(acceptor) => acceptor,
                Err(message) => {
                    // Never fall back to plain TCP: the client expects TLS. Tried again
                    // with the bind retries, so fixed files are picked up.
                    if reported.get(&service.name) != Some(&message) {
                        tracing::error!(service = %service.name, %message,
                            "cannot start the RESP listener's TLS; retrying every {BIND_RETRY_INTERVAL:?}");
                        reported.insert(service.name.clone(), message);
                    }
                    continue;
                }
            };
            match TcpListener::bind(&listen).await {
                Ok(listener) => {
                    let bound = listener
                        .local_addr()
                        .expect("a bound listener has an address");
                    tracing::info!(service = %service.name, addr = %bound, "RESP listener up");
                    reported.remove(&service.name);
                    let token = cancel.child_token();
                    tokio::spawn(accept_loop(
                        listener,
                        service.name.clone(),
                        router.clone(),
                        shared.clone(),
                        map.clone(),
                        connections.clone(),
                        connection_ids.clone(),
                        acceptor,
                        token.clone(),
                    ));
                    running.insert(
                        service.name.clone(),
                        Running {
                            listen,
                            tls: service.tls.clone(),
                            bound,
                            cancel: token,
                        },
                    );
                }
                Err(error) => {
                    if reported.get(&service.name) != Some(&listen) {
                        tracing::warn!(service = %service.name, addr = %listen, %error,
                            "cannot bind the RESP listener; retrying every {BIND_RETRY_INTERVAL:?}");
                        reported.insert(service.name.clone(), listen);
                    }
                }
            }
        }
        let addrs: BTreeMap<String, SocketAddr> = running
            .iter()
            .map(|(name, r)| (name.clone(), r.bound))
            .collect();
        bound_tx.send_if_modified(|current| {
            let changed = *current != addrs;
            *current = addrs;
            changed
        });
        let retry = !reported.is_empty();
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            changed = map.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(BIND_RETRY_INTERVAL), if retry => {}
        }
    }
}

/// Accepts RESP connections for `service` on `listener` until `cancel`, each served by
/// [`connection::serve`] with `backend` and `shared` (access rules, pub/sub broker), at
/// most as many at once as `connections` has permits; with `tls`, inside a TLS session
/// (a client that does not finish its handshake within
/// [`tls::TLS_HANDSHAKE_TIMEOUT`] is dropped).
#[allow(
    clippy::too_many_arguments,
    reason = "gateway and agents call it, each argument distinct"
)]
pub async fn accept_loop<B: Backend>(
    listener: TcpListener,
    service: String,
    router: Arc<B>,
    shared: Arc<Shared>,
    map: watch::Receiver<Arc<PartitionMap>>,
    connections: Arc<Semaphore>,
    connection_ids: Arc<AtomicU64>,
    tls: Option<TlsAcceptor>,
    cancel: CancellationToken,
) {
    loop {
        // Wait for a free connection slot before accepting, so excess clients queue in
        // the kernel backlog instead of being accepted and starved.
        let permit = tokio::select! {
            _ = cancel.cancelled() => return,
            permit = connections.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors or similar: back off briefly instead of spinning.
                    tracing::warn!(service = %service, %error, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let id = connection_ids.fetch_add(1, Ordering::Relaxed);
        let (router, shared, map, service, cancel, tls) = (
            router.clone(),
            shared.clone(),
            map.clone(),
            service.clone(),
            cancel.clone(),
            tls.clone(),
        );
        tokio::spawn(async move {
            let served = match tls {
                None => {
                    async {
                        stream.set_nodelay(true)?;
                        connection::serve(
                            stream,
                            peer,
                            router,
                            shared,
                            service.clone(),
                            map,
                            id,
                            cancel,
                        )
                        .await
                    }
                    .await
                }
                Some(acceptor) => {
                    async {
                        stream.set_nodelay(true)?;
                        let handshake = tokio::time::timeout(
                            tls::TLS_HANDSHAKE_TIMEOUT,
                            acceptor.accept(stream),
                        );
                        let stream = handshake.await.map_err(|_| {
                            std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "no TLS handshake in time",
                            )
                        })??;
                        connection::serve(
                            stream,
                            peer,
                            router,
                            shared,
                            service.clone(),
                            map,
                            id,
                            cancel,
                        )
                        .await
                    }
                    .await
                }
            };
            if let Err(error) = served {
                tracing::debug!(service = %service, %peer, %error, "RESP connection ended");
            }
            drop(permit);
        });
    }
}
