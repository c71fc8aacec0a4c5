//! The one task that owns the partition map: polls the server's API and publishes each
//! new map; readers hold an `Arc` snapshot from a watch channel.

use crate::error::GatewayError;
use crate::map::{build_map, PartitionMap};
use stator_api::views::{ClusterInfo, PartitionView, ServiceView};
use stator_client::{CallError, FailoverClient, FailoverOn};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

/// Pause between polls when nothing asks for a refresh. Short, because the server's view
/// of leaders is what a gateway falls back to after it loses a leader.
pub const DEFAULT_POLL_INTERVAL_MS: u64 = 250;

/// Least time between two polls, however often routing failures ask for one: a failing
/// partition must not turn every failed request into an API call.
const MIN_POLL_GAP: Duration = Duration::from_millis(50);

/// Rounds over every server URL when fetching the cluster secret at start: a gateway
/// started beside a server that is still coming up waits for it a little.
pub const SECRET_FETCH_ROUNDS: u32 = 10;

/// Pause between those rounds.
const SECRET_FETCH_PAUSE: Duration = Duration::from_millis(500);

/// Timeout of one API request: a server slower than this counts as down and the next URL
/// is tried.
const API_TIMEOUT: Duration = Duration::from_secs(2);

/// Polls `GET /v1/services` and `GET /v1/partitions`, failing over between servers
/// through [`FailoverClient`] (on any 5xx: a poll would rather reach a healthy server).
/// A clone registers the gateway on the pub/sub bus ([`crate::bus::Registrar`]).
#[derive(Clone)]
pub(crate) struct Poller {
    /// Shared by the clones, so they all start with the server that answered last.
    servers: Arc<FailoverClient>,
}

/// A failed call as the gateway reports it.
fn unreachable(servers: &FailoverClient, error: CallError) -> GatewayError {
    match error {
        CallError::Unreachable { tried, last } => GatewayError::ServerUnreachable { tried, last },
        other => GatewayError::ServerUnreachable {
            tried: servers.servers().len(),
            last: other.to_string(),
        },
    }
}

impl Poller {
    pub(crate) fn new(server_urls: Vec<String>, api_token: String) -> Result<Self, GatewayError> {
        let servers =
            FailoverClient::new(server_urls, api_token, API_TIMEOUT, FailoverOn::ServerError)
                .map_err(|e| match e {
                    CallError::NoServers => GatewayError::Config(
                        "server_urls is empty; give at least one stator server URL".into(),
                    ),
                    other => GatewayError::Config(other.to_string()),
                })?;
        Ok(Self {
            servers: Arc::new(servers),
        })
    }

    /// The replica transport secret from `GET /v1/cluster`, from the first server that
    /// answers, trying all of them up to [`SECRET_FETCH_ROUNDS`] times.
    pub(crate) async fn fetch_cluster_secret(&mut self) -> Result<String, GatewayError> {
        let mut round = 0;
        loop {
            match self.servers.get::<ClusterInfo>("/v1/cluster").await {
                Ok(info) => return Ok(info.cluster_secret),
                Err(e) if round + 1 >= SECRET_FETCH_ROUNDS => {
                    return Err(unreachable(&self.servers, e))
                }
                Err(_) => {}
            }
            round += 1;
            tokio::time::sleep(SECRET_FETCH_PAUSE).await;
        }
    }

    /// One poll. Both lists come from the first server that answers, normally the same
    /// one (the partitions call starts at the server that answered the services call);
    /// a partition of a service missing from the list is dropped by [`build_map`].
    pub(crate) async fn fetch(&mut self) -> Result<PartitionMap, GatewayError> {
        let services: Vec<ServiceView> = self
            .servers
            .get("/v1/services")
            .await
            .map_err(|e| unreachable(&self.servers, e))?;
        let partitions: Vec<PartitionView> = self
            .servers
            .get("/v1/partitions")
            .await
            .map_err(|e| unreachable(&self.servers, e))?;
        Ok(build_map(&services, &partitions))
    }

    /// Polls until `cancel`, every `interval` or sooner when `refresh` is notified.
    pub(crate) async fn run(
        mut self,
        map: watch::Sender<Arc<PartitionMap>>,
        interval: Duration,
        refresh: Arc<Notify>,
        cancel: CancellationToken,
    ) {
        // Log a failing server once per outage, not once per poll.
        let mut failing = false;
        loop {
            match self.fetch().await {
                Ok(fresh) => {
                    if failing {
                        tracing::info!("stator server reachable again");
                        failing = false;
                    }
                    map.send_if_modified(|current| {
                        let changed = **current != fresh;
                        if changed {
                            *current = Arc::new(fresh);
                        }
                        changed
                    });
                }
                // The last map stays: its routes are mostly right, and leader hints
                // correct the rest while the server is away.
                Err(error) if !failing => {
                    tracing::warn!(%error, "partition map not refreshed; keeping the last one");
                    failing = true;
                }
                Err(_) => {}
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
                _ = refresh.notified() => tokio::time::sleep(MIN_POLL_GAP).await,
            }
        }
    }
}

impl crate::bus::Registrar for Poller {
    async fn register(
        &self,
        registration: &stator_api::pubsub::BusRegistration,
    ) -> Result<stator_api::pubsub::BusView, String> {
        self.servers
            .post(stator_api::pubsub::BUS_PEERS_PATH, registration)
            .await
            .map_err(|e| e.to_string())
    }

    async fn set_notify(
        &self,
        setting: &stator_api::pubsub::NotifySetting,
    ) -> Result<stator_api::pubsub::BusView, String> {
        self.servers
            .post(stator_api::pubsub::BUS_NOTIFY_PATH, setting)
            .await
            .map_err(|e| e.to_string())
    }
}
