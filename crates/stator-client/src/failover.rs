//! One HTTP client of the server API over several server URLs, with failover: the one
//! loop the CLI ([`crate::Api`]), the agent (join-token routes) and the gateway
//! (partition-map polls, bus registration) share.
//!
//! Failover: the servers are tried in the order given, starting from the last one that
//! answered. A server that cannot be reached, or answers a status the caller's
//! [`FailoverOn`] names, passes the call to the next; any other answer, a refusal (4xx)
//! included, is the answer (every server would give the same).

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Which server answers pass a call on to the next server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailoverOn {
    /// Only 503: the server holds no controller and knows no holder, or is shutting
    /// down. Any other error is the cluster's answer (the CLI: a 500 is reported, not
    /// retried elsewhere).
    Unavailable,
    /// Any 5xx: for callers that repeat their calls anyway and would rather reach a
    /// healthy server (agent heartbeats, gateway polls).
    ServerError,
}

impl FailoverOn {
    fn passes_on(self, status: reqwest::StatusCode) -> bool {
        match self {
            FailoverOn::Unavailable => status == reqwest::StatusCode::SERVICE_UNAVAILABLE,
            FailoverOn::ServerError => status.is_server_error(),
        }
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No URL was given; give at least one server URL.
    #[error("no stator server URL given; pass at least one (--server URL[,URL...])")]
    NoServers,
    /// The HTTP client could not be built (TLS backend missing).
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// No server answered the call (unreachable, or every one passed it on).
    #[error("no stator server answered ({tried} URL(s) tried, last: {last}); is the server running and the URL right?")]
    Unreachable {
        /// How many URLs were tried.
        tried: usize,
        /// The last failure seen.
        last: String,
    },
    /// A server refused the call; its message says why.
    #[error("server refused: HTTP {status}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The server's error message (its JSON `error` field, or the body).
        message: String,
    },
    /// A server answered with a body this client cannot read.
    #[error("{url}: unreadable answer ({error}); is this client older than the server?")]
    BadAnswer {
        /// The URL called.
        url: String,
        /// The decoding error.
        error: String,
    },
}

/// An authenticated client of one server or several, sticking to the last one that
/// answered.
pub struct FailoverClient {
    /// Base URLs, without a trailing slash; never empty.
    bases: Vec<String>,
    /// The index of the server that answered last: calls start there.
    preferred: AtomicUsize,
    token: String,
    http: reqwest::Client,
    failover_on: FailoverOn,
}

impl FailoverClient {
    /// A client of `urls` (trailing slashes and blanks ignored) sending `token`, each
    /// call bounded by `call_timeout`.
    pub fn new(
        urls: impl IntoIterator<Item = impl AsRef<str>>,
        token: impl Into<String>,
        call_timeout: Duration,
        failover_on: FailoverOn,
    ) -> Result<Self, CallError> {
        let http = reqwest::Client::builder()
            .timeout(call_timeout)
            .build()
            .map_err(|e| CallError::Client(e.to_string()))?;
        Self::with_http(urls, token, http, failover_on)
    }

    /// As [`FailoverClient::new`], with a client the caller built (for streams, which
    /// have no total timeout).
    pub fn with_http(
        urls: impl IntoIterator<Item = impl AsRef<str>>,
        token: impl Into<String>,
        http: reqwest::Client,
        failover_on: FailoverOn,
    ) -> Result<Self, CallError> {
        let bases: Vec<String> = urls
            .into_iter()
            .map(|url| url.as_ref().trim().trim_end_matches('/').to_string())
            .filter(|url| !url.is_empty())
            .collect();
        if bases.is_empty() {
            return Err(CallError::NoServers);
        }
        Ok(Self {
            bases,
            preferred: AtomicUsize::new(0),
            token: token.into(),
            http,
            failover_on,
        })
    }

    /// The servers' base URLs, in the order given.
    pub fn servers(&self) -> &[String] {
        &self.bases
    }

    /// The HTTP client calls are built with.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Sends the request `build` makes for a server's base URL, with the token, failing
    /// over as the module doc says; the response if the server accepted it (2xx).
    pub async fn send(
        &self,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, CallError> {
        let first = self.preferred.load(Ordering::Relaxed) % self.bases.len();
        let mut last = String::new();
        for offset in 0..self.bases.len() {
            let index = (first + offset) % self.bases.len();
            let base = &self.bases[index];
            let response = match build(&self.http, base)
                .bearer_auth(&self.token)
                .send()
                .await
            {
                Ok(response) => response,
                Err(e) => {
                    last = format!("cannot reach {base}: {e}");
                    continue;
                }
            };
            let status = response.status();
            if status.is_success() {
                self.preferred.store(index, Ordering::Relaxed);
                return Ok(response);
            }
            let message = error_message(response).await;
            if self.failover_on.passes_on(status) {
                last = format!("{base}: HTTP {}: {message}", status.as_u16());
                continue;
            }
            self.preferred.store(index, Ordering::Relaxed);
            return Err(CallError::Refused {
                status: status.as_u16(),
                message,
            });
        }
        Err(CallError::Unreachable {
            tried: self.bases.len(),
            last,
        })
    }

    /// `GET path`, decoded from JSON.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CallError> {
        let response = self
            .send(|http, base| http.get(format!("{base}{path}")))
            .await?;
        decode(response).await
    }

    /// `POST path` with a JSON `body`, the answer decoded from JSON.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, CallError> {
        let response = self
            .send(|http, base| http.post(format!("{base}{path}")).json(body))
            .await?;
        decode(response).await
    }
}

/// The answer's JSON body as `T`.
pub async fn decode<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, CallError> {
    let url = response.url().to_string();
    response.json().await.map_err(|e| CallError::BadAnswer {
        url,
        error: e.to_string(),
    })
}

/// What a refusing server said: the API's JSON `{"error": ...}` field, or the body.
async fn error_message(response: reqwest::Response) -> String {
    let body = response.text().await.unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string())
}
