//! The client of the `/v1` API for the CLI, `up`, chaos and the benchmarks: the
//! [`FailoverClient`] with the user's token, failing over only on 503 (it holds no
//! controller and knows no holder, or is shutting down), with errors for people.

use crate::context::Context;
use crate::failover::{decode, CallError, FailoverClient, FailoverOn};
use serde::de::DeserializeOwned;
use stator_api::views::{Event, NodeState, NodeView};
use std::time::Duration;

/// One call's timeout.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait to connect for a stream (a stream itself has no end to wait for).
const STREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often [`Api::wait_for_ready_nodes`] asks again.
const READY_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Largest event the stream reader buffers: events are a few hundred bytes; a server
/// that sends more without a blank line is not speaking SSE.
const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// An authenticated API client of one server or several.
pub struct Api {
    servers: FailoverClient,
    /// Without a total timeout: for `/v1/events`, which stays open.
    streaming: reqwest::Client,
}

/// A failed call as the CLI reports it.
fn for_people(error: CallError) -> anyhow::Error {
    match error {
        CallError::Refused { status, message } => anyhow::anyhow!("{message} (HTTP {status})"),
        CallError::Unreachable { last, .. } => {
            anyhow::anyhow!("{last} (is `stator up` running?)")
        }
        other => other.into(),
    }
}

/// The `/v1/events` stream, one event at a time.
pub struct EventStream {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl EventStream {
    /// The next event; None when the server ends the stream.
    pub async fn next_event(&mut self) -> anyhow::Result<Option<Event>> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&block[..end]);
                let data: Vec<&str> = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                let event = serde_json::from_str(&data.join("\n"))
                    .map_err(|e| anyhow::anyhow!("the server sent an event this CLI cannot read ({e}); is the CLI older than the server?"))?;
                return Ok(Some(event));
            }
            match self.response.chunk().await? {
                Some(chunk) => {
                    self.buffer.extend_from_slice(&chunk);
                    anyhow::ensure!(
                        self.buffer.len() <= MAX_EVENT_BYTES,
                        "the event stream sent {MAX_EVENT_BYTES} bytes without ending an event"
                    );
                }
                None => return Ok(None),
            }
        }
    }
}

impl Api {
    /// A client for `ctx`; `ctx.server` may name several servers, comma-separated.
    pub fn new(ctx: &Context) -> anyhow::Result<Api> {
        let servers = FailoverClient::new(
            ctx.server.split(','),
            ctx.token.clone(),
            CALL_TIMEOUT,
            FailoverOn::Unavailable,
        )
        .map_err(|e| match e {
            CallError::NoServers => anyhow::anyhow!(
                "no API server given: pass --server URL[,URL...] or a context file naming one"
            ),
            other => other.into(),
        })?;
        Ok(Api {
            servers,
            streaming: reqwest::Client::builder()
                .connect_timeout(STREAM_CONNECT_TIMEOUT)
                .build()?,
        })
    }

    /// The servers' base URLs, in the order they are tried.
    pub fn servers(&self) -> &[String] {
        self.servers.servers()
    }

    /// Sends the request `build` makes for a server's base URL, failing over as
    /// [`crate::failover`] says; the response if the API accepted it.
    async fn send(
        &self,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        self.servers.send(build).await.map_err(for_people)
    }

    /// GET a JSON document.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let response = self
            .send(|http, base| http.get(format!("{base}{path}")))
            .await?;
        decode(response).await.map_err(for_people)
    }

    /// Opens a server-sent event stream.
    pub async fn stream(&self, path: &str) -> anyhow::Result<EventStream> {
        let request = |_: &reqwest::Client, base: &str| {
            self.streaming
                .get(format!("{base}{path}"))
                .header(reqwest::header::ACCEPT, "text/event-stream")
        };
        Ok(EventStream {
            response: self.send(request).await?,
            buffer: Vec::new(),
        })
    }

    /// PUT a raw body with a content type; returns the JSON answer.
    pub async fn put_raw(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<serde_json::Value> {
        let request = |http: &reqwest::Client, base: &str| {
            http.put(format!("{base}{path}"))
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(body.clone())
        };
        Ok(self.send(request).await?.json().await?)
    }

    /// POST without a body; returns the JSON answer, if any.
    pub async fn post(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let resp = self
            .send(|http, base| http.post(format!("{base}{path}")))
            .await?;
        Ok(resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// How many registered nodes are ready (not draining, drained or lost).
    pub async fn ready_nodes(&self) -> anyhow::Result<usize> {
        let nodes: Vec<NodeView> = self.get("/v1/nodes").await?;
        Ok(nodes.iter().filter(|n| n.state == NodeState::Ready).count())
    }

    /// Waits until at least `expected` nodes are ready, at most `timeout`. An API that
    /// does not answer yet counts as none ready (a server may still be starting).
    pub async fn wait_for_ready_nodes(
        &self,
        expected: usize,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let ready = self.ready_nodes().await.unwrap_or(0);
            if ready >= expected {
                return Ok(());
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "only {ready} of {expected} nodes were ready within {timeout:?}"
            );
            tokio::time::sleep(READY_POLL_INTERVAL).await;
        }
    }

    /// DELETE; returns the JSON answer, if any.
    pub async fn delete(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let resp = self
            .send(|http, base| http.delete(format!("{base}{path}")))
            .await?;
        Ok(resp.json().await.unwrap_or(serde_json::Value::Null))
    }
}
