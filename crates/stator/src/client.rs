//! The CLI's client of the `/v1` API.

use crate::context::Context;
use anyhow::bail;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// One call's timeout.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// An authenticated API client.
pub struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    /// A client for `ctx`.
    pub fn new(ctx: &Context) -> anyhow::Result<Api> {
        Ok(Api {
            base: ctx.server.trim_end_matches('/').to_string(),
            token: ctx.token.clone(),
            http: reqwest::Client::builder().timeout(CALL_TIMEOUT).build()?,
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

    /// DELETE; returns the JSON answer, if any.
    pub async fn delete(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let resp = self.send(self.http.delete(self.url(path))).await?;
        Ok(resp.json().await.unwrap_or(serde_json::Value::Null))
    }
}
