//! The agent's client of the server API (join-token routes), failing over between URLs.

use stator_api::agent::{
    heartbeat_path, Assignments, Heartbeat, RegisterRequest, RegisterResponse, REGISTER_PATH,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// One call's timeout: a heartbeat answer is small and the server is near.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts at registering before giving up (servers may still be starting).
pub const REGISTER_ATTEMPTS: u32 = 60;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerCallError {
    /// No server answered.
    #[error("no server reachable ({0})")]
    Unreachable(String),
    /// A server refused the call; its message says why.
    #[error("server refused: HTTP {status}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The server's error message.
        message: String,
    },
}

/// HTTP client over several server URLs; sticks to the last one that answered.
pub struct ServerClient {
    urls: Vec<String>,
    token: String,
    http: reqwest::Client,
    current: AtomicUsize,
}

impl ServerClient {
    /// A client of `urls` authenticating with the join token.
    pub fn new(urls: Vec<String>, join_token: String) -> Self {
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .build()
            .expect("HTTP client");
        Self {
            urls,
            token: join_token,
            http,
            current: AtomicUsize::new(0),
        }
    }

    async fn post<B: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R, ServerCallError> {
        let mut last = String::from("no server URL configured");
        let start = self.current.load(Ordering::Relaxed);
        for i in 0..self.urls.len() {
            let index = (start + i) % self.urls.len();
            let url = format!("{}{}", self.urls[index].trim_end_matches('/'), path);
            match self
                .http
                .post(&url)
                .bearer_auth(&self.token)
                .json(body)
                .send()
                .await
            {
                Ok(resp) if resp.status().is_success() => {
                    self.current.store(index, Ordering::Relaxed);
                    return resp
                        .json()
                        .await
                        .map_err(|e| ServerCallError::Unreachable(e.to_string()));
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let message = resp.text().await.unwrap_or_default();
                    // 5xx from one server: another may serve; 4xx is the same everywhere.
                    if status < 500 {
                        return Err(ServerCallError::Refused { status, message });
                    }
                    last = format!("{url}: HTTP {status}: {message}");
                }
                Err(e) => last = format!("{url}: {e}"),
            }
        }
        Err(ServerCallError::Unreachable(last))
    }

    /// Registers, retrying while no server is reachable yet.
    pub async fn register(
        &self,
        request: &RegisterRequest,
    ) -> Result<RegisterResponse, ServerCallError> {
        let mut attempt = 0;
        loop {
            match self.post(REGISTER_PATH, request).await {
                Err(ServerCallError::Unreachable(e)) if attempt < REGISTER_ATTEMPTS => {
                    attempt += 1;
                    tracing::info!("server not reachable yet ({e}); retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                other => return other,
            }
        }
    }

    /// Registers this agent's pub/sub bus endpoint; the live peers and notification flags.
    pub async fn bus_register(
        &self,
        registration: &stator_api::pubsub::BusRegistration,
    ) -> Result<stator_api::pubsub::BusView, ServerCallError> {
        self.post(stator_api::pubsub::BUS_PEERS_PATH, registration)
            .await
    }

    /// Stores a service's `notify-keyspace-events` flags (a `CONFIG SET` on this agent).
    pub async fn bus_notify(
        &self,
        setting: &stator_api::pubsub::NotifySetting,
    ) -> Result<stator_api::pubsub::BusView, ServerCallError> {
        self.post(stator_api::pubsub::BUS_NOTIFY_PATH, setting)
            .await
    }

    /// Sends a heartbeat; returns the assignments.
    pub async fn heartbeat(&self, beat: &Heartbeat) -> Result<Assignments, ServerCallError> {
        self.post(&heartbeat_path(beat.node_id), beat).await
    }
}
