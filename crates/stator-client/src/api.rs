//! The CLI's client of the `/v1` API.

use crate::context::Context;
use anyhow::bail;
use serde::de::DeserializeOwned;
use stator_server::model::NodeState;
use stator_server::views::NodeView;
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

/// An authenticated API client.
pub struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
    /// Without a total timeout: for `/v1/events`, which stays open.
    streaming: reqwest::Client,
}

/// The `/v1/events` stream, one event at a time.
pub struct EventStream {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl EventStream {
    /// The next event; None when the server ends the stream.
    pub async fn next_event(&mut self) -> anyhow::Result<Option<stator_server::views::Event>> {
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
    /// A client for `ctx`.
    pub fn new(ctx: &Context) -> anyhow::Result<Api> {
        Ok(Api {
            base: ctx.server.trim_end_matches('/').to_string(),
            token: ctx.token.clone(),
            http: reqwest::Client::builder().timeout(CALL_TIMEOUT).build()?,
            streaming: reqwest::Client::builder()
                .connect_timeout(STREAM_CONNECT_TIMEOUT)
                .build()?,
        })
    }

    async fn check(resp: reqwest::Response) -> anyhow::Result<reqwest::Response> {
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or(body);
        bail!("{message} (HTTP {})", status.as_u16())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        anyhow::anyhow!(
            "cannot reach the stator API at {}: {e} (is `stator up` running?)",
            self.base
        )
    }

    /// Sends `request` with the token; the response if the API accepted it.
    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = request
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        Self::check(resp).await
    }

    /// GET a JSON document.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        Ok(self
            .send(self.http.get(self.url(path)))
            .await?
            .json()
            .await?)
    }

    /// Opens a server-sent event stream.
    pub async fn stream(&self, path: &str) -> anyhow::Result<EventStream> {
        let request = self
            .streaming
            .get(self.url(path))
            .header(reqwest::header::ACCEPT, "text/event-stream");
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
        let request = self
            .http
            .put(self.url(path))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        Ok(self.send(request).await?.json().await?)
    }

    /// POST without a body; returns the JSON answer, if any.
    pub async fn post(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let resp = self.send(self.http.post(self.url(path))).await?;
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
        let resp = self.send(self.http.delete(self.url(path))).await?;
        Ok(resp.json().await.unwrap_or(serde_json::Value::Null))
    }
}
