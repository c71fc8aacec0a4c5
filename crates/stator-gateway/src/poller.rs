//! The one task that owns the partition map: polls the server's API and publishes each
//! new map; readers hold an `Arc` snapshot from a watch channel.

use crate::error::GatewayError;
use crate::map::{build_map, PartitionMap};
use stator_api::views::{PartitionView, ServiceView};
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

/// Polls `GET /v1/services` and `GET /v1/partitions`, failing over between servers.
/// A clone registers the gateway on the pub/sub bus ([`crate::bus::Registrar`]).
#[derive(Clone)]
pub(crate) struct Poller {
    http: reqwest::Client,
    server_urls: Vec<String>,
    api_token: String,
    /// Index of the URL that answered last; tried first next time.
    preferred: usize,
}

impl Poller {
    pub(crate) fn new(server_urls: Vec<String>, api_token: String) -> Result<Self, GatewayError> {
        if server_urls.is_empty() {
            return Err(GatewayError::Config(
                "server_urls is empty; give at least one stator server URL".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(API_TIMEOUT)
            .build()
            .map_err(|e| GatewayError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            http,
            server_urls: server_urls
                .into_iter()
                .map(|u| u.trim_end_matches('/').to_string())
                .collect(),
            api_token,
            preferred: 0,
        })
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        path: &str,
    ) -> Result<T, String> {
        let response = self
            .http
            .get(format!("{url}{path}"))
            .bearer_auth(&self.api_token)
            .send()
            .await
            .map_err(|e| format!("{url}{path}: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(format!("{url}{path}: HTTP {status}: {}", body.trim()));
        }
        response
            .json()
            .await
            .map_err(|e| format!("{url}{path}: bad JSON: {e}"))
    }

    /// `POST path` with `body` to the first server that answers, starting with the last
    /// good one.
    async fn post<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, String> {
        let mut last = String::new();
        for attempt in 0..self.server_urls.len() {
            let url = &self.server_urls[(self.preferred + attempt) % self.server_urls.len()];
            let response = match self
                .http
                .post(format!("{url}{path}"))
                .bearer_auth(&self.api_token)
                .json(body)
                .send()
                .await
            {
                Ok(response) => response,
                Err(e) => {
                    last = format!("{url}{path}: {e}");
                    continue;
                }
            };
            let status = response.status();
            if !status.is_success() {
                let text = response.text().await.unwrap_or_default();
                last = format!("{url}{path}: HTTP {status}: {}", text.trim());
                // A refusal (4xx) is the same on every server.
                if status.is_client_error() {
                    break;
                }
                continue;
            }
            return response
                .json()
                .await
                .map_err(|e| format!("{url}{path}: bad JSON: {e}"));
        }
        Err(last)
    }

    /// The replica transport secret from `GET /v1/cluster`, from the first server that
    /// answers, trying all of them up to [`SECRET_FETCH_ROUNDS`] times.
    pub(crate) async fn fetch_cluster_secret(&mut self) -> Result<String, GatewayError> {
        #[derive(serde::Deserialize)]
        struct ClusterInfo {
            cluster_secret: String,
        }
        let mut last = String::new();
        for round in 0..SECRET_FETCH_ROUNDS {
            if round > 0 {
                tokio::time::sleep(SECRET_FETCH_PAUSE).await;
            }
            for attempt in 0..self.server_urls.len() {
                let index = (self.preferred + attempt) % self.server_urls.len();
                match self
                    .get::<ClusterInfo>(&self.server_urls[index], "/v1/cluster")
                    .await
                {
                    Ok(info) => {
                        self.preferred = index;
                        return Ok(info.cluster_secret);
                    }
                    Err(e) => last = e,
                }
            }
        }
        Err(GatewayError::ServerUnreachable {
            tried: self.server_urls.len(),
            last,
        })
    }

    /// One poll: the first server (starting with the last good one) that answers both.
    pub(crate) async fn fetch(&mut self) -> Result<PartitionMap, GatewayError> {
        let mut last = String::new();
        for attempt in 0..self.server_urls.len() {
            let index = (self.preferred + attempt) % self.server_urls.len();
            let url = &self.server_urls[index];
            let services = self
                .get::<Vec<ServiceView>>(url, "/v1/services")
                .await;
            let partitions = match services {
                Ok(services) => self
                    .get::<Vec<PartitionView>>(url, "/v1/partitions")
                    .await
                    .map(|partitions| (services, partitions)),
                Err(e) => Err(e),
            };
            match partitions {
                Ok((services, partitions)) => {
                    self.preferred = index;
                    return Ok(build_map(&services, &partitions));
                }
                Err(e) => last = e,
            }
        }
        Err(GatewayError::ServerUnreachable {
            tried: self.server_urls.len(),
            last,
        })
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
        self.post(stator_api::pubsub::BUS_PEERS_PATH, registration)
            .await
    }

    async fn set_notify(
        &self,
        setting: &stator_api::pubsub::NotifySetting,
    ) -> Result<stator_api::pubsub::BusView, String> {
        self.post(stator_api::pubsub::BUS_NOTIFY_PATH, setting)
            .await
    }
}
