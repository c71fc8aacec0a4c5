//! The stator control plane: a REST API over a store, and the controllers that turn
//! service specs into placements that agents carry out.
//!
//! The server never sits in the data path: agents run replicas and fail over among
//! themselves; the server restores the replication factor afterwards, places new work,
//! and drains nodes.
//!
//! # Layout
//! - [`config`]: [`ServerConfig`], defaults, the token files of the data directory.
//! - [`api`]: the axum router: `/v1` routes (bearer token), agent routes (join token),
//!   `/healthz`, `/metrics`, body limits, JSON errors, the SSE event stream.
//! - [`leader`]: with several servers on one store (etcd), the election of the one that
//!   runs the controller (a lease), and controller terms that end the moment it is lost.
//! - [`fence`]: the guard on every store write of a controller term (the leader key's
//!   create revision), so a deposed holder cannot write.
//! - [`forward`]: the front door: serve locally while leading, forward to the holder
//!   while following, 503 while no holder is known.
//! - [`controller`]: the task that owns the cluster state, persists it, runs the
//!   reconcile loop and publishes events; handlers talk to it over a bounded channel.
//! - [`reconcile`]: the controllers' decisions as a pure function (cluster, time) ->
//!   actions: node lifecycle, replica groups, stateless instances, jobs, drain.
//! - [`autoscale`]: the live autoscaler and consolidator round (pure): resizes,
//!   migrations, drains, and nodes to provision or release.
//! - [`provider`]: [`provider::NodeProvider`], how nodes of a pool are provisioned and
//!   released (`static`: fixed machines).
//! - [`assign`]: what each node must run, answered to its heartbeat.
//! - [`leaders`]: leader re-spread (pure): which partitions' leaders hand over to
//!   caught-up followers on nodes that lead fewer, named in the heartbeat answer.
//! - [`model`]: persisted records (nodes, services, designed placement) and observed
//!   status (heartbeats).
//! - [`present`]: builds the views the API returns (nodes, services, partitions) from
//!   the model; the view types themselves are `stator_api::views`.
//! - [`dashboard`]: the web dashboard at `/ui/` (page, script and styles embedded in
//!   the binary; data through the `/v1` API with the user's token).
//! - [`metrics`]: Prometheus metrics.
//! - [`pubsub`]: the pub/sub bus registry: live gateways and agents, their subscriber
//!   summaries, each service's `notify-keyspace-events` flags.
//! - [`error`]: [`ServerError`] and its HTTP statuses.

pub mod api;
pub mod assign;
pub mod autoscale;
pub mod config;
pub mod controller;
pub mod dashboard;
pub mod error;
pub mod fence;
pub mod forward;
pub mod leader;
pub mod leaders;
pub mod metrics;
pub mod model;
pub mod present;
pub mod provider;
pub mod pubsub;
pub mod reconcile;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use stator_store::{EmbeddedStore, Store};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::leader::{ControllerRole, Election, StartTerm, Term};

pub use config::{ServerConfig, StoreConfig};
pub use error::{Result, ServerError};

/// A running server.
pub struct ServerHandle {
    addr: SocketAddr,
    advertise_url: String,
    api_token: String,
    join_token: String,
    shutdown: watch::Sender<bool>,
    http: JoinHandle<std::io::Result<()>>,
    /// Owns the controller term(s): the election loop, or the embedded store's one term.
    leadership: JoinHandle<()>,
    role: watch::Receiver<ControllerRole>,
}

impl ServerHandle {
    /// The address the API is bound to (the real port when configured with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The URL other servers forward to while this one runs the controller.
    pub fn advertise_url(&self) -> &str {
        &self.advertise_url
    }

    /// The API bearer token.
    pub fn api_token(&self) -> &str {
        &self.api_token
    }

    /// The agents' join token.
    pub fn join_token(&self) -> &str {
        &self.join_token
    }

    /// True while this server runs the controller.
    pub fn is_leader(&self) -> bool {
        matches!(*self.role.borrow(), ControllerRole::Leading(_))
    }

    /// The URL of the server running the controller, as this server knows it (None while
    /// an election is under way).
    pub fn leader_url(&self) -> Option<String> {
        match &*self.role.borrow() {
            ControllerRole::Leading(_) => Some(self.advertise_url.clone()),
            ControllerRole::Following { leader_url } => Some(leader_url.clone()),
            ControllerRole::Electing => None,
        }
    }

    /// A subscription to this server's role changes (for tests and tools).
    pub fn role(&self) -> watch::Receiver<ControllerRole> {
        self.role.clone()
    }

    /// Stops accepting requests, ends event streams, waits for in-flight requests, stops
    /// the controller and gives up the controller lease (so another server takes over at
    /// once).
    pub async fn shutdown(self) -> Result<()> {
        // Receivers may be gone already if a task ended; nothing else to tell then.
        let _ = self.shutdown.send(true);
        let http = self.http.await;
        let _ = self.leadership.await;
        match http {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(ServerError::Bind {
                addr: self.addr,
                source,
            }),
            Err(join) => panic!("HTTP server task panicked: {join}"),
        }
    }

    /// Stops the server the way a crash would, for failover tests: the controller and the
    /// listener stop at once, the lease is not given up (it expires after its TTL), and
    /// connections still open answer 503.
    pub fn abort(self) {
        self.leadership.abort();
        self.http.abort();
    }
}

/// Opens the configured store.
async fn open_store(config: &StoreConfig) -> Result<Arc<dyn Store>> {
    Ok(match config {
        StoreConfig::Shared(store) => store.clone(),
        StoreConfig::Embedded(dir) => {
            std::fs::create_dir_all(dir).map_err(|source| ServerError::DataDir {
                path: dir.display().to_string(),
                source,
            })?;
            Arc::new(EmbeddedStore::open(dir)?)
        }
        #[cfg(feature = "etcd")]
        StoreConfig::Etcd(endpoints) => {
            Arc::new(stator_store::EtcdStore::connect(endpoints).await?)
        }
    })
}

/// The API and join tokens: shared through the store when several servers may share it,
/// otherwise from the data directory.
async fn tokens(config: &ServerConfig, store: &dyn Store) -> Result<(String, String)> {
    if config.store.is_shared() {
        let api = config::shared_token(
            store,
            config.api_token.as_deref(),
            &config.data_dir,
            config::API_TOKEN_FILE,
            config::API_TOKEN_KEY,
            "API",
        )
        .await?;
        let join = config::shared_token(
            store,
            config.join_token.as_deref(),
            &config.data_dir,
            config::JOIN_TOKEN_FILE,
            config::JOIN_TOKEN_KEY,
            "join",
        )
        .await?;
        return Ok((api, join));
    }
    let api = match &config.api_token {
        Some(token) => token.clone(),
        None => config::load_or_create_token(&config.data_dir, config::API_TOKEN_FILE)?,
    };
    let join = match &config.join_token {
        Some(token) => token.clone(),
        None => config::load_or_create_token(&config.data_dir, config::JOIN_TOKEN_FILE)?,
    };
    Ok((api, join))
}

/// The controller's settings from the server config (public so tests can start a
/// controller on its own).
pub fn controller_settings(config: &ServerConfig) -> controller::ControllerSettings {
    controller::ControllerSettings {
        node_grace_ms: config.node_grace_ms,
        heartbeat_interval_ms: config.heartbeat_interval_ms,
        autoscale: config.autoscale.clone(),
    }
}

/// Starts a controller term: loads the cluster from the store, spawns the controller and
/// builds the API router bound to it.
async fn start_term(
    store: Arc<dyn Store>,
    fence: fence::Fence,
    settings: controller::ControllerSettings,
    metrics: Arc<metrics::Metrics>,
    api_token: Arc<str>,
    join_token: Arc<str>,
) -> Result<Term> {
    let (stop, stop_rx) = watch::channel(false);
    let (handle, controller) =
        controller::spawn(store, fence, settings, metrics.clone(), stop_rx.clone()).await?;
    let router = api::router(api::AppState {
        controller: handle,
        api_token,
        join_token,
        metrics,
        shutdown: stop_rx,
        pubsub: Default::default(),
    });
    Ok(Term {
        router,
        stop,
        controller,
    })
}

/// How long a server on its own store waits before it starts a new controller term
/// after its controller stopped (a store write failed): a store that failed once is
/// likely to fail again at once, and calls meanwhile get 503 and retry.
pub const TERM_RESTART_DELAY_MS: u64 = 1_000;

/// Leads on a store this server owns alone (no election): serves `term` until shutdown.
/// A controller that stops by itself (a store write failed, so memory ran ahead of the
/// store) is replaced by a new term loaded from the store, the way a server sharing a
/// store steps down and campaigns again.
async fn lead_alone(
    mut term: Term,
    new_term: StartTerm,
    role: watch::Sender<ControllerRole>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let exit = tokio::select! {
            biased;
            _ = stopping(&mut shutdown) => {
                term.stop_gracefully().await;
                return;
            }
            exit = &mut term.controller => exit.unwrap_or(controller::ControllerExit::Stopped),
        };
        // Stop serving from the stopped term before anything else.
        role.send_replace(ControllerRole::Electing);
        drop(term);
        tracing::warn!(
            ?exit,
            "the controller stopped; starting a new term from the store"
        );
        term = loop {
            tokio::select! {
                biased;
                _ = stopping(&mut shutdown) => return,
                _ = tokio::time::sleep(std::time::Duration::from_millis(TERM_RESTART_DELAY_MS)) => {}
            }
            match new_term(fence::Fence::unfenced()).await {
                Ok(term) => break term,
                Err(error) => tracing::warn!(%error, "could not start a new controller term"),
            }
        };
        role.send_replace(ControllerRole::Leading(term.router.clone()));
    }
}

/// Resolves once the server is shutting down (or the sender is gone with it).
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Starts the server: opens the store, binds the listen address, and either runs the
/// controller (embedded store) or joins the election for it (shared store, etcd); serves
/// until [`ServerHandle::shutdown`].
pub async fn start(config: ServerConfig) -> Result<ServerHandle> {
    // A bad `--advertise` fails here, before anything is opened, not per forwarded call.
    if let Some(url) = &config.advertise_url {
        forward::advertise_header(url)?;
    }
    let store = open_store(&config.store).await?;
    let (api_token, join_token) = tokens(&config, &*store).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: config.listen,
        source,
    })?;
    let advertise_url = config
        .advertise_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let metrics = Arc::new(metrics::Metrics::new());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let settings = controller_settings(&config);
    let (api_arc, join_arc): (Arc<str>, Arc<str>) =
        (api_token.clone().into(), join_token.clone().into());
    let term_store = store.clone();
    let (term_api, term_join) = (api_arc.clone(), join_arc.clone());
    let new_term: StartTerm = Arc::new(move |fence| {
        Box::pin(start_term(
            term_store.clone(),
            fence,
            settings.clone(),
            metrics.clone(),
            term_api.clone(),
            term_join.clone(),
        ))
    });
    let (role_tx, role) = watch::channel(ControllerRole::Electing);
    let leadership = if config.store.is_shared() {
        tokio::spawn(
            Election {
                store,
                me: advertise_url.clone(),
                ttl_ms: config.leader_lease_ttl_ms,
                start_term: new_term,
                role: role_tx,
                shutdown: shutdown_rx.clone(),
            }
            .run(),
        )
    } else {
        // The embedded store belongs to this server alone: it always leads, unfenced.
        let term = new_term(fence::Fence::unfenced()).await?;
        role_tx.send_replace(ControllerRole::Leading(term.router.clone()));
        tokio::spawn(lead_alone(term, new_term, role_tx, shutdown_rx.clone()))
    };
    let router = forward::FrontDoor::new(
        role.clone(),
        &advertise_url,
        api_arc,
        join_arc,
        shutdown_rx.clone(),
    )?
    .router();
    let mut stop = shutdown_rx;
    let http = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|stopping| *stopping).await;
            })
            .await
    });
    tracing::info!(%addr, "stator server listening");
    Ok(ServerHandle {
        addr,
        advertise_url,
        api_token,
        join_token,
        shutdown,
        http,
        leadership,
        role,
    })
}

/// Runs the server until `shutdown` completes, then stops it cleanly.
pub async fn run(config: ServerConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    let handle = start(config).await?;
    shutdown.await;
    handle.shutdown().await
}
