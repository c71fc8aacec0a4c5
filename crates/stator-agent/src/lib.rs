//! The node agent: one per machine. It registers with the server, heartbeats its status,
//! and reconciles what it runs toward the assignments each heartbeat returns.
//!
//! Replicas fail over among themselves without the agent or the server: the agent only
//! creates and removes replicas, bootstraps new groups, and, where its replica leads,
//! moves the group's membership toward the designed member set one step at a time.
//!
//! # Layout
//! - [`config`]: [`AgentConfig`] and its defaults.
//! - [`identity`]: the node id, per-node secret and transport address kept on the data
//!   dir, so a restarted agent comes back as itself.
//! - [`server`]: the HTTP client of the server API, failing over between server URLs.
//! - [`replicas`]: hosts partition replicas (the replication engine) and reconciles them
//!   toward the assigned groups and members.
//! - [`report`]: what each heartbeat says of the replicas: the full view, or only the
//!   changes since the view the server acknowledged.
//! - [`ReconcileSchedule`] (here): when a replica reconcile pass is due (a change of
//!   the assignments or of the replicas, work in flight, or every
//!   [`RECONCILE_REFRESH`]); an unchanged answer reuses the assignments held.
//! - [`resp`]: the Redis Cluster protocol for the kv services it hosts: a RESP listener
//!   per service serving the slots its replicas lead (pipelines on one slot as one
//!   batch), `MOVED` for the rest, with the spec's AUTH/ACL, protected mode and TLS.
//! - [`pubsub`]: the agent's end of the pub/sub bus: registration through the server
//!   client, and the sink that publishes the keyspace events of the replicas it leads.
//! - [`driver`]: supervises stateless instances and jobs (processes and containers).
//! - [`container`]: the container driver's parts: local OCI images (verified, unpacked
//!   once per digest), runc bundles, and the launcher that runs a replica's stator-sm/1
//!   app in a container.
//! - [`cgroup`]: limits: one cgroup per app process or container: CPU share and
//!   ceiling, memory limit, OOM-kill detection.
//! - [`probe`]: readiness probes (TCP, HTTP, exec).

pub mod cgroup;
pub mod config;
pub mod container;
pub mod driver;
pub mod identity;
pub mod probe;
pub mod pubsub;
pub mod replicas;
pub mod report;
pub mod resp;
pub mod server;

pub use config::AgentConfig;

use stator_api::agent::{Assignments, Heartbeat, RegisterRequest, RegisterResponse};
use std::future::Future;
use std::time::Duration;

/// Agent failures that stop it.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The transport address could not be bound; pick another `--listen`.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// No server accepted the registration; check the URLs and the join token.
    #[error("registration failed: {0}")]
    Register(String),
    /// The replica host failed to start.
    #[error("replica host: {0}")]
    Host(#[from] stator_replication::HostError),
}

/// How one incarnation of the agent ended.
enum Ended {
    /// Asked to stop.
    Shutdown,
    /// The server declared this node lost (or forgot it): the agent stops everything and
    /// registers again. The server grants the old id while it keeps the node's record
    /// (durable stores reload; replicas replaced meanwhile are removed); otherwise it
    /// joins as a new node and wipes the old identity's stores.
    Forgotten,
}

/// Runs the agent until `shutdown` resolves; then stops every replica and process.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    // Bad TLS files fail here, before this node registers with the server.
    if let Some(tls) = &config.tls {
        stator_replication::tls::TransportTls::load(tls)
            .map_err(stator_replication::HostError::from)?;
    }
    tokio::pin!(shutdown);
    loop {
        match run_incarnation(&config, &mut shutdown).await? {
            Ended::Shutdown => return Ok(()),
            Ended::Forgotten => {
                tracing::warn!("the server declared this node lost; registering again")
            }
        }
    }
}

/// Binds the replica transport: where the previous run listened when the configured
/// address leaves the port open (`:0`), since the groups' memberships hold that address.
async fn bind_transport(
    config: &AgentConfig,
    previous: Option<&identity::Identity>,
) -> Result<tokio::net::TcpListener, AgentError> {
    if let Some(previous) = previous.filter(|_| config.listen.ends_with(":0")) {
        match tokio::net::TcpListener::bind(&previous.transport_addr).await {
            Ok(listener) => return Ok(listener),
            Err(e) => tracing::warn!(
                addr = %previous.transport_addr,
                "cannot listen where this node listened before ({e}); peers must learn the new address"
            ),
        }
    }
    tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|source| AgentError::Listen {
            addr: config.listen.clone(),
            source,
        })
}

/// What registering gave this incarnation: who it is and what the server said.
struct Registered {
    node_id: stator_api::ids::NodeId,
    /// The server granted the id this data dir held: its durable stores reopen.
    rejoined: bool,
    transport_addr: String,
    raft_dir: std::path::PathBuf,
    response: RegisterResponse,
}

/// Everything one incarnation runs; [`Node::stop`] stops it all.
struct Node {
    host: stator_replication::Host,
    cgroups: Option<std::sync::Arc<cgroup::Cgroups>>,
    resp: resp::RespServer,
    /// Held so the bus lives as long as the node.
    _bus: stator_gateway::bus::Bus,
    bus_cancel: tokio_util::sync::CancellationToken,
    replicas: replicas::Replicas,
    supervisor: driver::InstanceSupervisor,
}

async fn run_incarnation(
    config: &AgentConfig,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<Ended, AgentError> {
    let previous = identity::load(&config.data_dir);
    let listener = bind_transport(config, previous.as_ref()).await?;
    let server = server::ServerClient::new(config.server_urls.clone(), config.join_token.clone());
    let registered = register(config, &server, previous.as_ref(), &listener).await?;
    let interval = Duration::from_millis(registered.response.heartbeat_interval_ms.max(50));
    let node = start_node(config, &registered, listener).await?;

    // Heartbeats and reconciling run side by side in this task: a pass that creates
    // hundreds of replicas (a 1,000-partition service placed at once) takes seconds, and a
    // heartbeat waiting behind it would let the server's grace run out and declare this
    // node lost. The heartbeat hands the latest assignments over; the reconciler works on
    // the newest it has (level-triggered: an older set it never got to is simply skipped).
    let (desired_tx, desired_rx) = tokio::sync::watch::channel(None);
    let ended = tokio::select! {
        // Shutdown first: a stopping agent must not start new work.
        biased;
        _ = shutdown.as_mut() => Ended::Shutdown,
        ended = heartbeat_loop(&node, &server, registered.node_id, interval, desired_tx) => ended,
        ended = reconcile_loop(&node, desired_rx) => ended,
    };
    node.stop().await;
    Ok(ended)
}

/// Registers this node (as itself again when the data dir holds an identity the server
/// still grants), removes the stores of an old identity it did not get back, and keeps
/// the identity it got.
async fn register(
    config: &AgentConfig,
    server: &server::ServerClient,
    previous: Option<&identity::Identity>,
    listener: &tokio::net::TcpListener,
) -> Result<Registered, AgentError> {
    let transport_addr = listener
        .local_addr()
        .map_err(|source| AgentError::Listen {
            addr: config.listen.clone(),
            source,
        })?
        .to_string();
    let response = server
        .register(&RegisterRequest {
            name: config.name.clone(),
            zone: config.zone.clone(),
            pool: config.pool.clone(),
            cpu_millis: config.cpu_millis,
            memory_mib: config.memory_mib,
            price_per_hour: config.price_per_hour,
            labels: config.labels.clone(),
            transport_addr: transport_addr.clone(),
            rejoin: previous
                .filter(|i| !i.node_secret.is_empty())
                .map(identity::Identity::rejoin),
        })
        .await
        .map_err(|e| AgentError::Register(e.to_string()))?;
    let node_id = response.node_id;
    let rejoined = previous.is_some_and(|i| i.node_id == node_id);
    let raft_dir = identity::raft_dir(&config.data_dir);
    if !rejoined {
        // Stores of an earlier identity hold its votes and logs: never open them under
        // another member id.
        if raft_dir.exists() {
            tracing::info!(dir = %raft_dir.display(), "joined as a new node; removing the replica stores of the old identity");
            let _ = std::fs::remove_dir_all(&raft_dir);
        }
    }
    if !response.node_secret.is_empty() {
        let kept = identity::Identity {
            node_id,
            node_secret: response.node_secret.clone(),
            transport_addr: transport_addr.clone(),
        };
        if let Err(e) = identity::save(&config.data_dir, &kept) {
            tracing::warn!(
                "cannot store the node identity ({e}); a restart will join as a new node"
            );
        }
    }
    tracing::info!(node_id, rejoined, %transport_addr, "registered");
    Ok(Registered {
        node_id,
        rejoined,
        transport_addr,
        raft_dir,
        response,
    })
}

/// Starts what a registered node runs: the replica host on the bound transport, the
/// RESP listeners, the pub/sub bus, the replica reconciler and the instance supervisor.
async fn start_node(
    config: &AgentConfig,
    registered: &Registered,
    listener: tokio::net::TcpListener,
) -> Result<Node, AgentError> {
    let node_id = registered.node_id;
    let cluster_secret = &registered.response.cluster_secret;
    let host = stator_replication::Host::start_with_listener(
        stator_replication::HostConfig {
            node_id,
            listen_addr: registered.transport_addr.clone(),
            cluster_secret: cluster_secret.clone(),
            filter: None,
            tls: config.tls.clone(),
            data_dir: Some(registered.raft_dir.clone()),
            learner_catchup_bytes_per_sec: config.learner_catchup_bytes_per_sec,
        },
        listener,
    )?;
    let cgroups = match cgroup::Cgroups::for_agent() {
        Ok(cgroups) => Some(std::sync::Arc::new(cgroups)),
        Err(why) => {
            tracing::warn!("cgroups unavailable: {why}; CPU shares and memory limits not enforced");
            None
        }
    };
    let containers = std::sync::Arc::new(container::ContainerRuntime::new(&config.data_dir));
    let resp = resp::RespServer::new(host.clone(), cluster_secret, config.resp_config());
    let bus_cancel = tokio_util::sync::CancellationToken::new();
    let bus = stator_gateway::bus::start(
        config.bus_config(node_id, cluster_secret),
        resp.broker(),
        std::sync::Arc::new(server::ServerClient::new(
            config.server_urls.clone(),
            config.join_token.clone(),
        )),
        bus_cancel.clone(),
    )
    .await
    .map_err(|source| AgentError::Listen {
        addr: config.bus_config(node_id, "").listen,
        source,
    })?;
    tracing::info!(addr = %bus.addr(), "pub/sub bus up");
    let notifier = std::sync::Arc::new(pubsub::LeaderNotifier::new(host.clone(), resp.broker()));
    let replicas = replicas::Replicas::new(host.clone(), config.data_dir.join("replicas"))
        .with_cpu_cgroups(cgroups.clone())
        .with_containers(containers.clone())
        .with_raft_dir(registered.raft_dir.clone(), registered.rejoined)
        .with_notifications(notifier);
    let supervisor = driver::InstanceSupervisor::new(config.data_dir.join("instances"))
        .with_cpu_cgroups(cgroups.clone())
        .with_containers(containers);
    Ok(Node {
        host,
        cgroups,
        resp,
        _bus: bus,
        bus_cancel,
        replicas,
        supervisor,
    })
}

/// Heartbeats every `interval` and hands each answer's assignments to the reconcile
/// loop; ends only when the server has forgotten this node.
async fn heartbeat_loop(
    node: &Node,
    server: &server::ServerClient,
    node_id: stator_api::ids::NodeId,
    interval: Duration,
    desired_tx: tokio::sync::watch::Sender<Option<Desired>>,
) -> Ended {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut report = report::ReplicaReport::default();
    let mut replica_changes = 0;
    // The last full assignments and their fingerprint: an unchanged answer reuses them.
    let mut held: Option<std::sync::Arc<Assignments>> = None;
    loop {
        ticker.tick().await;
        // At most twice: a delta the server refuses goes again, in full, at once.
        for _ in 0..2 {
            let prepared = report.prepare(node.replicas.statuses());
            if prepared.has_changes() {
                replica_changes += 1;
            }
            let mut beat = Heartbeat {
                node_id,
                instances: node.supervisor.statuses(),
                resp_addrs: node.resp.advertised(),
                metrics: node.replicas.node_metrics(),
                assignments_held: held.as_ref().and_then(|a| a.fingerprint),
                ..Heartbeat::default()
            };
            prepared.fill(&mut beat);
            match server.heartbeat(&beat).await {
                Ok(assignments) => {
                    report.answered(prepared, assignments.replicas_view);
                    let assignments = match held.clone() {
                        Some(same) if assignments.unchanged => same,
                        _ => std::sync::Arc::new(assignments),
                    };
                    held = Some(assignments.clone());
                    desired_tx.send_replace(Some(Desired {
                        assignments,
                        replica_changes,
                    }));
                }
                Err(server::ServerCallError::Refused { status: 404, .. }) => {
                    return Ended::Forgotten
                }
                Err(server::ServerCallError::Refused { status: 409, .. })
                    if prepared.is_delta() =>
                {
                    tracing::debug!(
                        "the server holds no base for a delta heartbeat; sending every replica"
                    );
                    report.refused();
                    continue;
                }
                // Level-triggered: the next beat carries the changes since the last
                // acknowledged view again (or everything, if the server refuses it).
                Err(e) => tracing::warn!("heartbeat failed: {e}"),
            }
            break;
        }
    }
}

/// Reconciles replicas, RESP listeners and instances toward the newest assignments:
/// instances on every heartbeat, replicas and RESP listeners when [`ReconcileSchedule`]
/// says a pass is due.
async fn reconcile_loop(
    node: &Node,
    mut desired_rx: tokio::sync::watch::Receiver<Option<Desired>>,
) -> Ended {
    let mut schedule = ReconcileSchedule::default();
    while desired_rx.changed().await.is_ok() {
        let Some(desired) = desired_rx.borrow_and_update().clone() else {
            continue;
        };
        let now = std::time::Instant::now();
        if schedule.due(&desired, now) {
            let settled = node.replicas.reconcile(&desired.assignments.replicas).await;
            node.resp.reconcile(&desired.assignments.cluster).await;
            schedule.passed(desired.clone(), now, settled);
        }
        node.supervisor
            .reconcile(&desired.assignments.instances)
            .await;
    }
    // The sender lives as long as the heartbeat loop, which ends the select first.
    std::future::pending::<Ended>().await
}

/// The least often a settled agent passes over its replicas and RESP listeners with
/// nothing changed: what is retried only on a pass (a cgroup left behind, a listener
/// that could not bind) waits this long at most. Often enough for that, rarely enough
/// that 1,000 idle replicas cost nothing between passes.
pub const RECONCILE_REFRESH: Duration = Duration::from_secs(5);

/// What the heartbeat loop hands the reconcile loop: the newest assignments, and how
/// many heartbeats so far reported a change of this agent's replicas.
#[derive(Debug, Clone)]
pub struct Desired {
    /// The server's newest answer.
    pub assignments: std::sync::Arc<Assignments>,
    /// Heartbeats whose replica report carried a change (a leader elected, a member
    /// added, an index moved): the next step of a membership change depends on it.
    pub replica_changes: u64,
}

/// When a replica reconcile pass is due. Level-triggered as before, but an idle agent of
/// 1,000 replicas no longer walks every assignment twice a second to find nothing to do:
/// a pass runs when the assignments (replicas, RESP slot maps, draining) changed, when
/// the agent's own replicas changed, when the last pass left work in flight (it was not
/// settled), and at least every [`RECONCILE_REFRESH`]. Pure: time is an input.
#[derive(Debug, Default)]
pub struct ReconcileSchedule {
    last: Option<(Desired, std::time::Instant, bool)>,
}

impl ReconcileSchedule {
    /// Whether a pass toward `desired` is due at `now`.
    pub fn due(&self, desired: &Desired, now: std::time::Instant) -> bool {
        let Some((last, at, settled)) = &self.last else {
            return true;
        };
        let (a, b) = (&*last.assignments, &*desired.assignments);
        let same_answer = std::sync::Arc::ptr_eq(&last.assignments, &desired.assignments);
        !settled
            || last.replica_changes != desired.replica_changes
            || now.saturating_duration_since(*at) >= RECONCILE_REFRESH
            || !same_answer && a.replicas != b.replicas
            || !same_answer && (a.cluster != b.cluster || a.draining != b.draining)
    }

    /// A pass toward `desired` started at `now`; `settled` is what it returned.
    pub fn passed(&mut self, desired: Desired, now: std::time::Instant, settled: bool) {
        self.last = Some((desired, now, settled));
    }
}

impl Node {
    /// Stops listeners, the bus, every instance and every replica.
    async fn stop(self) {
        self.resp.shutdown();
        self.bus_cancel.cancel();
        self.supervisor.shutdown().await;
        if let Some(cgroups) = &self.cgroups {
            cgroups.remove_all();
        }
        self.host.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    fn desired(partitions: u32, replica_changes: u64) -> Desired {
        let replicas = (0..partitions)
            .map(|partition| stator_api::agent::ReplicaAssignment {
                group: stator_api::ids::GroupId::new(1, partition),
                service: "kv".into(),
                partition,
                app: stator_api::spec::AppSpec::Builtin("kv".into()),
                members: Vec::new(),
                bootstrap: false,
                election_timeout_ms: 100,
                cpu_millis: 0,
                durability: Default::default(),
                fsync_interval_ms: 0,
                memory_mib: 0,
                kv_maxmemory_bytes: 0,
                transfer_leader_to: None,
            })
            .collect();
        Desired {
            assignments: Arc::new(Assignments {
                replicas,
                ..Assignments::default()
            }),
            replica_changes,
        }
    }

    #[test]
    fn a_settled_agent_passes_again_only_on_a_change_or_the_refresh() {
        let mut schedule = ReconcileSchedule::default();
        let t0 = Instant::now();
        assert!(schedule.due(&desired(2, 0), t0), "the first pass");
        schedule.passed(desired(2, 0), t0, true);
        let beat = t0 + Duration::from_millis(500);
        assert!(!schedule.due(&desired(2, 0), beat), "nothing changed");
        let mut numbered = desired(2, 0);
        Arc::make_mut(&mut numbered.assignments).replicas_view = Some(7);
        assert!(!schedule.due(&numbered, beat), "a view number is no change");
        assert!(schedule.due(&desired(3, 0), beat), "assignments changed");
        assert!(schedule.due(&desired(2, 1), beat), "a replica changed");
        assert!(
            schedule.due(&desired(2, 0), t0 + RECONCILE_REFRESH),
            "the refresh"
        );
        schedule.passed(desired(2, 0), beat, false);
        assert!(
            schedule.due(&desired(2, 0), beat + Duration::from_millis(500)),
            "work left in flight: every beat"
        );
    }
}
