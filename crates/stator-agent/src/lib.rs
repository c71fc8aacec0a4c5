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

use stator_api::agent::{Heartbeat, RegisterRequest};
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

async fn run_incarnation(
    config: &AgentConfig,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<Ended, AgentError> {
    let previous = identity::load(&config.data_dir);
    let listener = bind_transport(config, previous.as_ref()).await?;
    let transport_addr = listener
        .local_addr()
        .map_err(|source| AgentError::Listen {
            addr: config.listen.clone(),
            source,
        })?
        .to_string();
    let server = server::ServerClient::new(config.server_urls.clone(), config.join_token.clone());
    let registration = server
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
                .as_ref()
                .filter(|i| !i.node_secret.is_empty())
                .map(identity::Identity::rejoin),
        })
        .await
        .map_err(|e| AgentError::Register(e.to_string()))?;
    let node_id = registration.node_id;
    let rejoined = previous.as_ref().is_some_and(|i| i.node_id == node_id);
    let raft_dir = identity::raft_dir(&config.data_dir);
    if !rejoined {
        // Stores of an earlier identity hold its votes and logs: never open them under
        // another member id.
        if raft_dir.exists() {
            tracing::info!(dir = %raft_dir.display(), "joined as a new node; removing the replica stores of the old identity");
            let _ = std::fs::remove_dir_all(&raft_dir);
        }
    }
    if !registration.node_secret.is_empty() {
        let kept = identity::Identity {
            node_id,
            node_secret: registration.node_secret.clone(),
            transport_addr: transport_addr.clone(),
        };
        if let Err(e) = identity::save(&config.data_dir, &kept) {
            tracing::warn!(
                "cannot store the node identity ({e}); a restart will join as a new node"
            );
        }
    }
    tracing::info!(node_id, rejoined, %transport_addr, "registered");
    let host = stator_replication::Host::start_with_listener(
        stator_replication::HostConfig {
            node_id,
            listen_addr: transport_addr.clone(),
            cluster_secret: registration.cluster_secret.clone(),
            filter: None,
            tls: config.tls.clone(),
            data_dir: Some(raft_dir.clone()),
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
    let resp = resp::RespServer::new(
        host.clone(),
        &registration.cluster_secret,
        config.resp_config(),
    );
    let bus_cancel = tokio_util::sync::CancellationToken::new();
    let bus = stator_gateway::bus::start(
        config.bus_config(node_id, &registration.cluster_secret),
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
        .with_raft_dir(raft_dir, rejoined)
        .with_notifications(notifier);
    let supervisor = driver::InstanceSupervisor::new(config.data_dir.join("instances"))
        .with_cpu_cgroups(cgroups.clone())
        .with_containers(containers);
    let interval = Duration::from_millis(registration.heartbeat_interval_ms.max(50));

    // Heartbeats and reconciling run side by side in this task: a pass that creates
    // hundreds of replicas (a 1,000-partition service placed at once) takes seconds, and a
    // heartbeat waiting behind it would let the server's grace run out and declare this
    // node lost. The heartbeat hands the latest assignments over; the reconciler works on
    // the newest it has (level-triggered: an older set it never got to is simply skipped).
    let (desired_tx, mut desired_rx) = tokio::sync::watch::channel(None);
    let heartbeat_loop = async {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut report = report::ReplicaReport::default();
        loop {
            ticker.tick().await;
            // At most twice: a delta the server refuses goes again, in full, at once.
            for _ in 0..2 {
                let prepared = report.prepare(replicas.statuses());
                let mut beat = Heartbeat {
                    node_id,
                    instances: supervisor.statuses(),
                    resp_addrs: resp.advertised(),
                    metrics: replicas.node_metrics(),
                    ..Heartbeat::default()
                };
                prepared.fill(&mut beat);
                match server.heartbeat(&beat).await {
                    Ok(assignments) => {
                        report.answered(prepared, assignments.replicas_view);
                        desired_tx.send_replace(Some(assignments));
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
    };
    let reconcile_loop = async {
        while desired_rx.changed().await.is_ok() {
            let Some(assignments) = desired_rx.borrow_and_update().clone() else {
                continue;
            };
            replicas.reconcile(&assignments.replicas).await;
            resp.reconcile(&assignments.cluster).await;
            supervisor.reconcile(&assignments.instances).await;
        }
        // The sender lives as long as the heartbeat loop, which ends the select first.
        std::future::pending::<Ended>().await
    };
    let ended = tokio::select! {
        // Shutdown first: a stopping agent must not start new work.
        biased;
        _ = shutdown.as_mut() => Ended::Shutdown,
        ended = heartbeat_loop => ended,
        ended = reconcile_loop => ended,
    };
    resp.shutdown();
    bus_cancel.cancel();
    supervisor.shutdown().await;
    if let Some(cgroups) = &cgroups {
        cgroups.remove_all();
    }
    host.shutdown().await;
    Ok(ended)
}
