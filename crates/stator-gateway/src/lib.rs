//! The stator gateway: stateless, any number of them; routes each request by key slot to
//! its partition's leader and follows the leader when it moves.
//!
//! Used by `stator gateway` and, in-process, by `stator up`: call [`run`] or [`start`].
//!
//! # Layout
//! - [`map`]: the partition map (services -> partitions -> group, slots, leader, members)
//!   and the pure function that builds it from the server's API views.
//! - [`poller`]: the one task that owns the map, polling the server (with fail-over
//!   between server URLs) and publishing `Arc` snapshots on a watch channel.
//! - [`router`]: forwards one request to a partition leader, exactly once: a pool of
//!   replication sessions, a leader cache, retries with the same sequence number.
//! - `coalesce`: the batches of many connections waiting for one partition, merged into
//!   one request per kind: writes into one write (one session, one request, one reply
//!   split back), reads into one read.
//! - [`resp`]: a RESP (Redis protocol) listener per kv service, pipelined connections,
//!   the commands the gateway answers itself (AUTH/ACL and protected mode, keyspace
//!   commands over every partition, MULTI/EXEC/WATCH, pub/sub, RESP3), and the Redis
//!   Cluster seed commands (`CLUSTER SLOTS` ...); its connection code also serves the
//!   agents' cluster listeners.
//! - [`bus`]: the pub/sub bus: authenticated links to every other gateway and agent
//!   (found through the server's registry) carrying `PUBLISH`, `SPUBLISH` and keyspace
//!   notifications.
//! - [`http`]: the stator-sm/1 call route (bearer token when the service has a password)
//!   and the round-robin proxy of stateless services.
//! - [`error`]: the crate's one error type, [`GatewayError`].

pub mod bus;
mod coalesce;
pub mod error;
pub mod http;
pub mod map;
pub mod poller;
pub mod resp;
pub mod router;

pub use error::{GatewayError, Result};
pub use map::{PartitionMap, PartitionRoute, ServiceRoutes};
pub use router::Router;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a request may go unanswered (leader lost, election, retries) before the client
/// gets `TRYAGAIN`. Several LAN elections fit, so a failover is invisible but slower.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 5_000;

/// Where a gateway's pub/sub bus listens unless configured: loopback, any free port.
pub const DEFAULT_BUS_LISTEN: &str = "127.0.0.1:0";

/// How the gateway finds the cluster and where it listens.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Base URLs of stator servers (`http://127.0.0.1:7070`); tried in turn.
    pub server_urls: Vec<String>,
    /// API bearer token for `GET /v1/services` and `GET /v1/partitions`.
    pub api_token: String,
    /// The secret of the replica transport. Empty: [`start`] fetches it from the server's
    /// `GET /v1/cluster` with the API token.
    pub cluster_secret: String,
    /// Where the HTTP routes listen; none when absent.
    pub http_listen: Option<SocketAddr>,
    /// See [`DEFAULT_REQUEST_TIMEOUT_MS`].
    pub request_timeout_ms: u64,
    /// See [`poller::DEFAULT_POLL_INTERVAL_MS`].
    pub poll_interval_ms: u64,
    /// Where the pub/sub bus listens ([`bus`]); `None`: no bus, pub/sub stays inside this
    /// gateway. Default loopback, any port: set an address other machines reach when
    /// agents or gateways run elsewhere.
    pub bus_listen: Option<String>,
    /// Host other peers dial for the bus; `None`: the bound IP (127.0.0.1 for a wildcard).
    pub bus_advertise_host: Option<String>,
}

impl GatewayConfig {
    /// A configuration with default timeouts and no HTTP listener.
    pub fn new(
        server_urls: Vec<String>,
        api_token: impl Into<String>,
        cluster_secret: impl Into<String>,
    ) -> Self {
        Self {
            server_urls,
            api_token: api_token.into(),
            cluster_secret: cluster_secret.into(),
            http_listen: None,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            poll_interval_ms: poller::DEFAULT_POLL_INTERVAL_MS,
            bus_listen: Some(DEFAULT_BUS_LISTEN.into()),
            bus_advertise_host: None,
        }
    }
}

/// A running gateway.
pub struct GatewayHandle {
    http_addr: Option<SocketAddr>,
    bus_addr: Option<String>,
    resp_addrs: watch::Receiver<BTreeMap<String, SocketAddr>>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl GatewayHandle {
    /// Where the HTTP routes listen, if enabled.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The advertised address of the pub/sub bus listener, when it runs.
    pub fn bus_addr(&self) -> Option<&str> {
        self.bus_addr.as_deref()
    }

    /// Service -> bound address of every RESP listener running now.
    pub fn resp_addrs(&self) -> BTreeMap<String, SocketAddr> {
        self.resp_addrs.borrow().clone()
    }

    /// Waits until `service`'s RESP listener is up (it starts once the service appears in
    /// the map); `None` after `timeout`.
    pub async fn wait_for_resp(&self, service: &str, timeout: Duration) -> Option<SocketAddr> {
        let mut addrs = self.resp_addrs.clone();
        tokio::time::timeout(timeout, async {
            loop {
                if let Some(addr) = addrs.borrow_and_update().get(service) {
                    return Some(*addr);
                }
                addrs.changed().await.ok()?;
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// Stops every listener and connection and waits for the gateway's tasks.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Starts a gateway that polls the servers of `config` for its partition map.
pub async fn start(mut config: GatewayConfig) -> Result<GatewayHandle> {
    let mut poller = poller::Poller::new(config.server_urls.clone(), config.api_token.clone())?;
    if config.cluster_secret.is_empty() {
        config.cluster_secret = poller.fetch_cluster_secret().await?;
    }
    let (map_tx, map_rx) = watch::channel(Arc::new(PartitionMap::default()));
    let refresh = Arc::new(Notify::new());
    let cancel = CancellationToken::new();
    let registrar = Arc::new(poller.clone());
    let poll = tokio::spawn(poller.run(
        map_tx,
        Duration::from_millis(config.poll_interval_ms.max(1)),
        refresh.clone(),
        cancel.clone(),
    ));
    let mut handle = start_parts(&config, map_rx, refresh, cancel, Some(registrar)).await?;
    handle.tasks.push(poll);
    Ok(handle)
}

/// Starts a gateway whose partition map comes from `map` instead of a server: for tests,
/// and for embedders that already know the map. The server fields of `config` are unused.
pub async fn start_with_map(
    config: GatewayConfig,
    map: watch::Receiver<Arc<PartitionMap>>,
) -> Result<GatewayHandle> {
    start_parts(
        &config,
        map,
        Arc::new(Notify::new()),
        CancellationToken::new(),
        None,
    )
    .await
}

async fn start_parts(
    config: &GatewayConfig,
    map: watch::Receiver<Arc<PartitionMap>>,
    refresh: Arc<Notify>,
    cancel: CancellationToken,
    registrar: Option<Arc<poller::Poller>>,
) -> Result<GatewayHandle> {
    if config.cluster_secret.is_empty() {
        return Err(GatewayError::Config(
            "cluster_secret is empty; pass the cluster's replica transport secret".into(),
        ));
    }
    let router = Arc::new(Router::new(
        &config.cluster_secret,
        Duration::from_millis(config.request_timeout_ms.max(1)),
        refresh,
    ));
    let shared = Arc::new(resp::Shared::default());
    let bus_addr = match (&config.bus_listen, registrar) {
        (Some(listen), Some(registrar)) => {
            let bus = bus::start(
                bus::BusConfig {
                    listen: listen.clone(),
                    advertise_host: config.bus_advertise_host.clone(),
                    kind: stator_api::pubsub::BusPeerKind::Gateway,
                    node_id: None,
                    cluster_secret: config.cluster_secret.clone(),
                },
                shared.broker().clone(),
                registrar,
                cancel.clone(),
            )
            .await
            .map_err(|source| GatewayError::Bind {
                addr: listen.clone(),
                source,
            })?;
            Some(bus.addr().to_string())
        }
        _ => None,
    };
    let mut tasks = Vec::new();
    let http_addr = match config.http_listen {
        Some(listen) => {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|source| GatewayError::Bind {
                    addr: listen.to_string(),
                    source,
                })?;
            let addr = listener.local_addr().map_err(|source| GatewayError::Http {
                addr: listen,
                source,
            })?;
            let app = http::routes(router.clone(), map.clone(), shared.clone());
            let stop = cancel.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(source) = axum::serve(listener, app)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await
                {
                    tracing::error!(error = %GatewayError::Http { addr, source }, "HTTP listener stopped");
                }
            }));
            Some(addr)
        }
        None => None,
    };
    let (bound_tx, resp_addrs) = watch::channel(BTreeMap::new());
    tasks.push(tokio::spawn(resp::supervise(
        router,
        shared,
        map,
        bound_tx,
        cancel.clone(),
    )));
    Ok(GatewayHandle {
        http_addr,
        bus_addr,
        resp_addrs,
        cancel,
        tasks,
    })
}

/// Runs a gateway until `shutdown` completes, then stops it cleanly.
pub async fn run(config: GatewayConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    let handle = start(config).await?;
    shutdown.await;
    handle.shutdown().await;
    Ok(())
}
