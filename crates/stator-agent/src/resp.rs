//! Cluster-mode RESP: this agent serves the Redis Cluster protocol for the kv services it
//! hosts, one listener per service, so cluster-aware clients reach leaders directly.
//!
//! A keyed command for a partition whose replica here leads goes straight into that
//! replica (no transport hop). For any other slot the agent answers `-MOVED <slot>
//! <host>:<port>` with the leader's RESP address: from its own replica's view of the
//! leader when it hosts the partition (fresher), else from the server's map. When no
//! leader is known at all (an election), it forwards the command like a gateway, so a
//! client is never bounced between two agents that each name the other.
//!
//! Writes carry an exactly-once session ([`Router::checkout`]): if the local replica loses
//! leadership while a write is in flight, the same `(client, sequence)` is handed to the
//! router, which finds the new leader; a write that had committed is answered from the
//! session table instead of applied twice.
//!
//! Pipelining: the connection gathers the commands of one read bound for one partition
//! (any of its slots) into one [`Backend::execute_batch`]. Where the batch holds a write
//! it is served as ONE `STATOR.EXEC` write on the local replica
//! ([`stator_gateway::resp::pipeline`], as the gateway sends it): one exactly-once
//! session, one write in the replica's write queue (which merges the writes of every
//! connection waiting at that moment into one Raft entry), the commands applied in order,
//! one reply each, so a `redis-benchmark --cluster -P 16` read costs the leader one session
//! check and one queued write per partition instead of one per command. A batch of reads
//! only goes to [`Host::serve_client_batch`], which serves them side by side. Nothing
//! crosses the transport: the listener runs in the leader's process and calls its
//! [`Host`] directly.
//!
//! The connection code, `CLUSTER ...`, `COMMAND` and `INFO` are the gateway's
//! ([`stator_gateway::resp`]); the slot map comes with every heartbeat answer
//! ([`Assignments::cluster`](stator_api::agent::Assignments)).
//!
//! # Access
//! The heartbeat answer carries the spec's `expose.auth`, `protected_mode` and `tls` for
//! each service ([`ClusterService`]); the listener asks for the same `AUTH` as the
//! gateway (the gateway's auth module, through the shared connection code) and presents
//! the same certificate. The password, certificate and key files are read on this
//! machine, as on every gateway host: secrets never travel with assignments, at the cost
//! of deploying the files to every agent machine.
//!
//! # Addresses
//! Each listener binds `bind_host:port` (port from `port_range`, or any free port) and is
//! advertised as `advertise_host:port`: in heartbeats to the server, which hands it out in
//! `/v1/partitions`, in `CLUSTER SLOTS` and in `MOVED`. On one machine both hosts are
//! 127.0.0.1; on several, bind `0.0.0.0` and advertise the address clients dial.

use bytes::Bytes;
use stator_api::agent::ClusterService;
use stator_api::ids::GroupId;
use stator_api::ids::NodeId;
use stator_api::spec::RespTlsSpec;
use stator_gateway::map::{PartitionMap, PartitionRoute, RespNode, ServiceRoutes};
use stator_gateway::resp::connection::error_reply;
use stator_gateway::resp::{accept_loop, pipeline, tls, Backend, Shared};
use stator_gateway::Router;
use stator_kv::Value;
use stator_replication::{ClientReply, ClientRequest, Host, ReplicaRole, RequestKind};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify, Semaphore};
use tokio_util::sync::CancellationToken;

/// RESP connections open at once on one agent, over all its services: below the usual
/// 1024 file descriptors per process, leaving room for the replica transport and the
/// app processes' sockets.
pub const MAX_AGENT_RESP_CONNECTIONS: usize = 512;

/// How long a command forwarded for lack of a known leader may take before the client
/// gets `TRYAGAIN` (several elections fit).
pub const FORWARD_DEADLINE: Duration = Duration::from_secs(5);

/// Where the listeners bind and what they advertise.
#[derive(Debug, Clone)]
pub struct RespConfig {
    /// IP the listeners bind (`127.0.0.1`, or `0.0.0.0` for every interface).
    pub bind_host: String,
    /// Host put in `MOVED` and `CLUSTER SLOTS`: what clients dial.
    pub advertise_host: String,
    /// Ports to bind, tried in order; `None`: any free port.
    pub port_range: Option<(u16, u16)>,
}

struct Listener {
    advertised: String,
    /// The `expose.tls` it was started with: another one restarts it.
    tls: Option<RespTlsSpec>,
    cancel: CancellationToken,
}

/// The agent's cluster-mode RESP listeners and the slot map they answer from.
pub struct RespServer {
    backend: Arc<AgentBackend>,
    /// Access rules and the pub/sub broker of this agent's listeners.
    shared: Arc<Shared>,
    config: RespConfig,
    map_tx: watch::Sender<Arc<PartitionMap>>,
    // A std mutex: bookkeeping only, never held across an await.
    listeners: Mutex<HashMap<String, Listener>>,
    connections: Arc<Semaphore>,
    connection_ids: Arc<AtomicU64>,
    cancel: CancellationToken,
}

impl RespServer {
    /// Listeners for the replicas of `host`; `cluster_secret` lets the fallback router
    /// reach other agents.
    pub fn new(host: Host, cluster_secret: &str, config: RespConfig) -> Self {
        let router = Arc::new(Router::new(
            cluster_secret,
            FORWARD_DEADLINE,
            Arc::new(Notify::new()),
        ));
        let (map_tx, _) = watch::channel(Arc::new(PartitionMap::default()));
        Self {
            backend: Arc::new(AgentBackend { host, router }),
            shared: Arc::new(Shared::default()),
            config,
            map_tx,
            listeners: Mutex::new(HashMap::new()),
            connections: Arc::new(Semaphore::new(MAX_AGENT_RESP_CONNECTIONS)),
            connection_ids: Arc::new(AtomicU64::new(1)),
            cancel: CancellationToken::new(),
        }
    }

    /// The pub/sub broker of these listeners (the agent's bus attaches to it).
    pub fn broker(&self) -> Arc<stator_gateway::resp::pubsub::Broker> {
        self.shared.broker().clone()
    }

    /// Service -> advertised address of every listener running, for the heartbeat.
    pub fn advertised(&self) -> BTreeMap<String, String> {
        self.listeners
            .lock()
            .expect("listeners mutex poisoned")
            .iter()
            .map(|(name, l)| (name.clone(), l.advertised.clone()))
            .collect()
    }

    /// One level-triggered pass: publish the slot maps of `services`, start a listener
    /// for each service without one, stop the listeners of services no longer listed.
    pub async fn reconcile(&self, services: &[ClusterService]) {
        let map = build_map(services, |group| self.backend.host.leader(group));
        self.map_tx.send_replace(Arc::new(map));
        self.listeners
            .lock()
            .expect("listeners mutex poisoned")
            .retain(|name, listener| {
                let keep = services
                    .iter()
                    .any(|s| &s.service == name && s.tls == listener.tls);
                if !keep {
                    tracing::info!(service = %name, addr = %listener.advertised, "stopping cluster RESP listener");
                    listener.cancel.cancel();
                }
                keep
            });
        for service in services {
            let running = self
                .listeners
                .lock()
                .expect("listeners mutex poisoned")
                .contains_key(&service.service);
            if running {
                continue;
            }
            let acceptor = match service.tls.as_ref().map(tls::acceptor).transpose() {
                Ok(acceptor) => acceptor,
                Err(message) => {
                    // Never plain TCP where the spec asks for TLS; retried next heartbeat.
                    tracing::error!(service = %service.service, %message, "cannot start the cluster RESP listener's TLS");
                    continue;
                }
            };
            let listener = match self.bind().await {
                Ok(listener) => listener,
                Err(error) => {
                    // Retried on the next heartbeat; the service stays reachable through
                    // the gateway meanwhile.
                    tracing::warn!(service = %service.service, %error, "cannot bind a cluster RESP listener");
                    continue;
                }
            };
            let port = listener
                .local_addr()
                .expect("a bound listener has an address")
                .port();
            let advertised = join_host_port(&self.config.advertise_host, port);
            tracing::info!(service = %service.service, addr = %advertised, "cluster RESP listener up");
            let cancel = self.cancel.child_token();
            tokio::spawn(accept_loop(
                listener,
                service.service.clone(),
                self.backend.clone(),
                self.shared.clone(),
                self.map_tx.subscribe(),
                self.connections.clone(),
                self.connection_ids.clone(),
                acceptor,
                cancel.clone(),
            ));
            self.listeners
                .lock()
                .expect("listeners mutex poisoned")
                .insert(
                    service.service.clone(),
                    Listener {
                        advertised,
                        tls: service.tls.clone(),
                        cancel,
                    },
                );
        }
    }

    async fn bind(&self) -> std::io::Result<TcpListener> {
        let host = &self.config.bind_host;
        let Some((low, high)) = self.config.port_range else {
            return TcpListener::bind(join_host_port(host, 0)).await;
        };
        let mut last = None;
        for port in low..=high {
            match TcpListener::bind(join_host_port(host, port)).await {
                Ok(listener) => return Ok(listener),
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                format!("the RESP port range {low}-{high} is empty"),
            )
        }))
        .map_err(|error| {
            std::io::Error::new(
                error.kind(),
                format!("no free port in --resp-ports {low}-{high} on {host} (last error: {error}); widen the range"),
            )
        })
    }

    /// Stops every listener and its connections.
    pub fn shutdown(&self) {
        self.cancel.cancel();
        self.listeners
            .lock()
            .expect("listeners mutex poisoned")
            .clear();
    }
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The gateway's partition map for `services`, as this agent's listeners answer from it.
/// `local_leader` gives the leader the local replica of a group knows of, which is
/// fresher than the server's view.
pub fn build_map(
    services: &[ClusterService],
    local_leader: impl Fn(GroupId) -> Option<NodeId>,
) -> PartitionMap {
    let services = services
        .iter()
        .map(|service| {
            let partitions = service
                .partitions
                .iter()
                .map(|p| {
                    let leader_id = local_leader(p.group).or(p.leader);
                    PartitionRoute {
                        partition: p.partition,
                        group: p.group,
                        slots: p.slots,
                        leader_addr: leader_id.and_then(|leader| {
                            p.members
                                .iter()
                                .find(|m| m.node_id == leader)
                                .map(|m| m.addr.clone())
                        }),
                        member_addrs: p.members.iter().map(|m| m.addr.clone()).collect(),
                        leader_id,
                        resp_nodes: p
                            .members
                            .iter()
                            .filter_map(|m| {
                                Some(RespNode {
                                    node_id: m.node_id,
                                    addr: m.resp_addr.clone()?,
                                })
                            })
                            .collect(),
                    }
                })
                .collect();
            let routes = ServiceRoutes {
                name: service.service.clone(),
                kind: stator_api::spec::ServiceKind::Replicated,
                builtin_kv: true,
                resp_listen: None,
                cluster: true,
                // The same credentials as the gateway's endpoint; the password files
                // are read on this machine (see the module doc).
                auth: service.auth.clone(),
                protected_mode: service.protected_mode,
                tls: service.tls.clone(),
                partitions,
                instances: Vec::new(),
            };
            (service.service.clone(), Arc::new(routes))
        })
        .collect();
    PartitionMap { services }
}

/// What an agent does with a keyed command: serve it where its replica leads, `MOVED`
/// where another node leads, forward where nobody is known to lead.
struct AgentBackend {
    host: Host,
    router: Arc<Router>,
}

/// Where a command on a partition should go, as this agent sees it.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// The local replica leads.
    Local,
    /// Another node leads and serves RESP here.
    Moved(String),
    /// No leader known, or it serves no RESP: forward through the router.
    Forward,
}

/// Decides the [`Target`] from the local replica's role and leader (if hosted here) and
/// the map's route.
fn target(
    me: NodeId,
    local: Option<(ReplicaRole, Option<NodeId>)>,
    route: &PartitionRoute,
) -> Target {
    let resp_addr = |node: NodeId| {
        route
            .resp_nodes
            .iter()
            .find(|n| n.node_id == node)
            .map(|n| n.addr.clone())
    };
    match local {
        Some((ReplicaRole::Leader, _)) => return Target::Local,
        Some((_, Some(leader))) if leader != me => {
            if let Some(addr) = resp_addr(leader) {
                return Target::Moved(addr);
            }
        }
        _ => {}
    }
    match route.leader_id {
        // The map names this node but the replica does not lead (or is not here): stale.
        Some(leader) if leader != me => resp_addr(leader).map_or(Target::Forward, Target::Moved),
        _ => Target::Forward,
    }
}

impl AgentBackend {
    /// The local replica's role and leader as [`target`] needs them, from the leader its
    /// Raft metrics name (a read of one watch value, once per batch): a replica that
    /// names itself leads, any other hosted one follows. A leader stepping down under
    /// the batch is answered `NotLeader` and the batch goes to the router, as for any
    /// leader change in flight. `None` where no leader is known or nothing is hosted,
    /// which [`target`] treats alike. (The full `Host::status` builds voter lists and
    /// takes the log's lock: too much for every batch of a pipeline.)
    fn local_view(&self, group: GroupId) -> Option<(ReplicaRole, Option<NodeId>)> {
        let leader = self.host.leader(group)?;
        let role = if leader == self.host.node_id() {
            ReplicaRole::Leader
        } else {
            ReplicaRole::Follower
        };
        Some((role, Some(leader)))
    }

    /// Serves one request on the local replica. `payload_again` rebuilds the payload for
    /// the rare retry through the router (leadership moved under it), so the common path
    /// hands its one copy to the replica instead of keeping another.
    async fn serve_locally(
        &self,
        routes: &ServiceRoutes,
        route: &PartitionRoute,
        kind: RequestKind,
        payload: Vec<u8>,
        payload_again: impl FnOnce() -> Vec<u8>,
    ) -> Vec<u8> {
        let session = (kind == RequestKind::Write).then(|| self.router.checkout());
        let (client_id, seq) = session
            .as_ref()
            .map_or((0, 0), stator_gateway::router::SessionGuard::ids);
        let request = ClientRequest {
            client_id,
            seq,
            kind,
            payload,
        };
        match self.host.serve_client(route.group, request).await {
            ClientReply::Ok(bytes) => bytes,
            ClientReply::StaleSequence { last_seq } => Value::error(format!(
                "ERR internal agent error, nothing was applied: sequence {seq} is older than {last_seq}"
            ))
            .to_bytes(),
            // Leadership moved (or the replica stopped) under the request: the router
            // finds the new leader, with the same session so nothing applies twice.
            // Boxed, as every forward here: the router's retrying forward is a large future,
            // and inline it would size every batch's unit on the common, local path.
            ClientReply::NotLeader { .. } | ClientReply::NoGroup | ClientReply::Unavailable(_) => {
                let forwarded =
                    self.router
                        .forward_in(route, kind, payload_again(), session.as_ref());
                match Box::pin(forwarded).await {
                    Ok(bytes) => bytes,
                    Err(error) => error_reply(routes, route.partition, kind, &error),
                }
            }
        }
    }
}

impl AgentBackend {
    /// Serves `commands` in order on the local replica (it led a moment ago): a batch
    /// with a write as one `STATOR.EXEC` write ([`pipeline::encode`]; applied as one unit,
    /// in order, one reply each; if leadership moves under it, the router retries it whole
    /// with the same session, so it never applies twice), reads side by side (one read
    /// of the whole batch, as the gateway sends it, did not lower CPU per GET here:
    /// docs/BENCHMARKS.md, session 9).
    async fn serve_batch_locally(
        &self,
        routes: &ServiceRoutes,
        route: &PartitionRoute,
        mut commands: Vec<(RequestKind, Bytes)>,
    ) -> Vec<Bytes> {
        let count = commands.len();
        if count == 1 {
            let (kind, payload) = commands.pop().expect("one command");
            let reply = self
                .serve_locally(routes, route, kind, payload.to_vec(), || payload.to_vec())
                .await;
            return vec![Bytes::from(reply)];
        }
        if pipeline::all_reads(&commands) {
            return self.serve_reads_locally(routes, route, commands).await;
        }
        let payload = pipeline::encode(&commands);
        let reply = self
            .serve_locally(routes, route, RequestKind::Write, payload, || {
                pipeline::encode(&commands)
            })
            .await;
        pipeline::split(reply, count)
    }

    /// Serves reads on the local replica side by side ([`Host::serve_client_batch`]). From
    /// the first one the replica could not serve (leadership moved under the batch), the
    /// rest go one by one through the router.
    async fn serve_reads_locally(
        &self,
        routes: &ServiceRoutes,
        route: &PartitionRoute,
        commands: Vec<(RequestKind, Bytes)>,
    ) -> Vec<Bytes> {
        let requests = commands
            .iter()
            .map(|(kind, payload)| ClientRequest {
                client_id: 0,
                seq: 0,
                kind: *kind,
                payload: payload.to_vec(),
            })
            .collect();
        let local = self.host.serve_client_batch(route.group, requests).await;
        let mut replies = Vec::with_capacity(commands.len());
        let mut moved = false;
        for ((kind, payload), reply) in commands.into_iter().zip(local) {
            let reply = match reply {
                ClientReply::Ok(bytes) if !moved => bytes,
                _ => {
                    moved = true;
                    match Box::pin(self.router.forward(route, kind, payload.to_vec())).await {
                        Ok(bytes) => bytes,
                        Err(error) => error_reply(routes, route.partition, kind, &error),
                    }
                }
            };
            replies.push(Bytes::from(reply));
        }
        replies
    }
}

impl Backend for AgentBackend {
    async fn execute_batch(
        &self,
        routes: Arc<ServiceRoutes>,
        partition: usize,
        slots: Vec<u16>,
        commands: Vec<(RequestKind, Bytes)>,
    ) -> Vec<Bytes> {
        let route = &routes.partitions[partition];
        let me = self.host.node_id();
        match target(me, self.local_view(route.group), route) {
            Target::Local => self.serve_batch_locally(&routes, route, commands).await,
            // Each command is told where its own slot lives.
            Target::Moved(addr) => slots
                .iter()
                .map(|slot| {
                    Value::error(format!("MOVED {slot} {addr}"))
                        .to_bytes()
                        .into()
                })
                .collect(),
            Target::Forward => {
                let mut replies = Vec::with_capacity(commands.len());
                for (kind, payload) in commands {
                    let forwarded = self.router.forward(route, kind, payload.to_vec());
                    let reply = match Box::pin(forwarded).await {
                        Ok(bytes) => bytes,
                        Err(error) => error_reply(&routes, route.partition, kind, &error),
                    };
                    replies.push(Bytes::from(reply));
                }
                replies
            }
        }
    }

    /// A batch is served in order on the local replica (one `STATOR.EXEC`, or reads).
    fn pipelines_slots(&self) -> bool {
        true
    }

    /// A batch is one partition's, whatever its slots: one write on its replica.
    fn batches_partitions(&self) -> bool {
        true
    }

    async fn execute(
        &self,
        routes: Arc<ServiceRoutes>,
        partition: usize,
        slot: u16,
        kind: RequestKind,
        payload: Vec<u8>,
    ) -> Vec<u8> {
        let route = &routes.partitions[partition];
        let me = self.host.node_id();
        match target(me, self.local_view(route.group), route) {
            Target::Local => {
                let again = payload.clone();
                self.serve_locally(&routes, route, kind, payload, move || again)
                    .await
            }
            Target::Moved(addr) => Value::error(format!("MOVED {slot} {addr}")).to_bytes(),
            Target::Forward => match Box::pin(self.router.forward(route, kind, payload)).await {
                Ok(bytes) => bytes,
                Err(error) => error_reply(&routes, route.partition, kind, &error),
            },
        }
    }

    fn request_refresh(&self) {}

    fn node(&self) -> Option<NodeId> {
        Some(self.host.node_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stator_api::agent::{ClusterMember, ClusterPartition};
    use stator_api::ids::GroupId;
    use stator_api::slot::partition_ranges;

    fn service() -> ClusterService {
        ClusterService {
            service: "kv".into(),
            partitions: partition_ranges(2)
                .into_iter()
                .enumerate()
                .map(|(i, slots)| ClusterPartition {
                    partition: i as u32,
                    group: GroupId::new(1, i as u32),
                    slots,
                    leader: Some(1),
                    members: (1..=3)
                        .map(|n| ClusterMember {
                            node_id: n,
                            addr: format!("127.0.0.1:900{n}"),
                            resp_addr: (n != 3).then(|| format!("127.0.0.1:700{n}")),
                        })
                        .collect(),
                })
                .collect(),
            auth: None,
            protected_mode: true,
            tls: None,
        }
    }

    #[test]
    fn the_local_view_of_the_leader_wins_over_the_server_map() {
        let map = build_map(&[service()], |group| (group.partition() == 1).then_some(2));
        let kv = &map.services["kv"];
        assert_eq!(kv.partitions[0].leader_id, Some(1));
        assert_eq!(
            kv.partitions[0].leader_addr.as_deref(),
            Some("127.0.0.1:9001")
        );
        assert_eq!(kv.partitions[1].leader_id, Some(2));
        assert_eq!(kv.partitions[1].leader_resp_addr(), Some("127.0.0.1:7002"));
        assert_eq!(
            kv.partitions[0].resp_nodes.len(),
            2,
            "node 3 serves no RESP yet"
        );
        assert!(kv.cluster);
    }

    #[test]
    fn leaders_serve_others_move_unknown_forwards() {
        let map = build_map(&[service()], |_| None);
        let route = &map.services["kv"].partitions[0];
        assert_eq!(
            target(2, Some((ReplicaRole::Leader, Some(2))), route),
            Target::Local
        );
        assert_eq!(
            target(2, Some((ReplicaRole::Follower, Some(1))), route),
            Target::Moved("127.0.0.1:7001".into())
        );
        assert_eq!(
            target(2, None, route),
            Target::Moved("127.0.0.1:7001".into()),
            "not hosted here: the map's leader"
        );
        assert_eq!(
            target(1, Some((ReplicaRole::Follower, None)), route),
            Target::Forward,
            "the map names me but I do not lead: forward, never MOVED to myself"
        );
        assert_eq!(
            target(2, Some((ReplicaRole::Follower, Some(3))), route),
            Target::Moved("127.0.0.1:7001".into()),
            "a leader without RESP yet: fall back to the map"
        );
    }
}
