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
//! - [`controller`]: the task that owns the cluster state, persists it, runs the
//!   reconcile loop and publishes events; handlers talk to it over a bounded channel.
//! - [`reconcile`]: the controllers' decisions as a pure function (cluster, time) ->
//!   actions: node lifecycle, replica groups, stateless instances, jobs, drain.
//! - [`assign`]: what each node must run, answered to its heartbeat.
//! - [`model`]: persisted records (nodes, services, designed placement) and observed
//!   status (heartbeats).
//! - [`views`]: the JSON the API returns (nodes, services, partitions, events).
//! - [`metrics`]: Prometheus metrics.
//! - [`error`]: [`ServerError`] and its HTTP statuses.

pub mod api;
pub mod assign;
pub mod config;
pub mod controller;
pub mod error;
pub mod metrics;
pub mod model;
pub mod reconcile;
pub mod views;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use stator_store::{EmbeddedStore, Store};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{ServerConfig, StoreConfig};
pub use error::{Result, ServerError};

/// A running server.
pub struct ServerHandle {
    addr: SocketAddr,
    api_token: String,
    join_token: String,
    shutdown: watch::Sender<bool>,
    http: JoinHandle<std::io::Result<()>>,
    controller: JoinHandle<()>,
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

    /// The API bearer token.
    pub fn api_token(&self) -> &str {
        &self.api_token
    }

    /// The agents' join token.
    pub fn join_token(&self) -> &str {
        &self.join_token
    }

    /// Stops accepting requests, ends event streams, waits for in-flight requests and
    /// stops the controller.
    pub async fn shutdown(self) -> Result<()> {
        // Receivers may be gone already if a task ended; nothing else to tell then.
        let _ = self.shutdown.send(true);
        let http = self.http.await;
        let _ = self.controller.await;
        match http {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(ServerError::Bind {
                addr: self.addr,
                source,
            }),
            Err(join) => panic!("HTTP server task panicked: {join}"),
        }
    }
}

/// Starts the server: opens the store, loads the cluster, binds the listen address and
/// serves until [`ServerHandle::shutdown`].
pub async fn start(config: ServerConfig) -> Result<ServerHandle> {
    let api_token = match &config.api_token {
        Some(token) => token.clone(),
        None => config::load_or_create_token(&config.data_dir, config::API_TOKEN_FILE)?,
    };
    let join_token = match &config.join_token {
        Some(token) => token.clone(),
        None => config::load_or_create_token(&config.data_dir, config::JOIN_TOKEN_FILE)?,
    };
    let store: Arc<dyn Store> = match &config.store {
        StoreConfig::Shared(store) => store.clone(),
        StoreConfig::Embedded(dir) => {
            std::fs::create_dir_all(dir).map_err(|source| ServerError::DataDir {
                path: dir.display().to_string(),
                source,
            })?;
            Arc::new(EmbeddedStore::open(dir)?)
        }
    };
    let metrics = Arc::new(metrics::Metrics::new());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (controller_handle, controller) = controller::spawn(
        store,
        controller::ControllerSettings {
            node_grace_ms: config.node_grace_ms,
            heartbeat_interval_ms: config.heartbeat_interval_ms,
        },
        metrics.clone(),
        shutdown_rx.clone(),
    )
    .await?;
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
    let router = api::router(api::AppState {
        controller: controller_handle,
        api_token: api_token.clone().into(),
        join_token: join_token.clone().into(),
        metrics,
        shutdown: shutdown_rx.clone(),
    });
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
        api_token,
        join_token,
        shutdown,
        http,
        controller,
    })
}

/// Runs the server until `shutdown` completes, then stops it cleanly.
pub async fn run(config: ServerConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    let handle = start(config).await?;
    shutdown.await;
    handle.shutdown().await
}
