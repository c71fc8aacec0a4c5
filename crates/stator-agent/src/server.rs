//! The agent's client of the server API (join-token routes), failing over between URLs
//! through [`stator_client::FailoverClient`].

use stator_api::agent::{
    heartbeat_path, Assignments, Heartbeat, RegisterRequest, RegisterResponse, REGISTER_PATH,
};
use stator_client::{FailoverClient, FailoverOn};
use std::time::Duration;

/// One call's timeout: a heartbeat answer is small and the server is near.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts at registering before giving up (servers may still be starting).
pub const REGISTER_ATTEMPTS: u32 = 60;

/// Why a call failed: [`CallError::Refused`] is the server's answer (the same on every
/// server), anything else means no server could answer.
pub use stator_client::CallError as ServerCallError;

/// The agent's client: [`FailoverClient`] with the join token, passing a call on to the
/// next server on any 5xx (a heartbeat is better answered by a healthy server).
pub struct ServerClient {
    /// None when no URL was given: every call then fails with
    /// [`ServerCallError::NoServers`], which says what to pass.
    servers: Option<FailoverClient>,
}

impl ServerClient {
    /// A client of `urls` authenticating with the join token.
    pub fn new(urls: Vec<String>, join_token: String) -> Self {
        let servers =
            match FailoverClient::new(urls, join_token, CALL_TIMEOUT, FailoverOn::ServerError) {
                Ok(servers) => Some(servers),
                Err(ServerCallError::NoServers) => None,
                // The HTTP client only fails to build without a TLS backend: a broken
                // binary, not an input error.
                Err(e) => panic!("agent server client: {e}"),
            };
        Self { servers }
    }

    async fn post<B: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R, ServerCallError> {
        match &self.servers {
            Some(servers) => servers.post(path, body).await,
            None => Err(ServerCallError::NoServers),
        }
    }

    /// Registers, retrying while no server is reachable yet.
    pub async fn register(
        &self,
        request: &RegisterRequest,
    ) -> Result<RegisterResponse, ServerCallError> {
        let mut attempt = 0;
        loop {
            match self.post(REGISTER_PATH, request).await {
                Err(e @ ServerCallError::Unreachable { .. }) if attempt < REGISTER_ATTEMPTS => {
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
