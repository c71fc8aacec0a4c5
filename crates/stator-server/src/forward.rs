//! The server's front door: serves a call locally while this server runs the controller,
//! forwards it to the holder's URL while another server does (like Nomad forwarding RPCs
//! to its leader), and answers 503 while no holder is known.
//!
//! Followers check the bearer token before forwarding, so they never relay anonymous
//! traffic; the holder checks it again. A forwarded call carries [`FORWARDED_BY_HEADER`]
//! and is never forwarded a second time, so a lease moving mid-flight cannot make a loop.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use tokio::sync::watch;
use tower::ServiceExt;

use crate::api::MAX_HEARTBEAT_BODY_BYTES;
use crate::config::token_matches;
use crate::error::ServerError;
use crate::leader::ControllerRole;

/// Marks a call one server forwarded to another; its value is the forwarder's URL.
pub const FORWARDED_BY_HEADER: &str = "x-stator-forwarded-by";
/// Longest wait to connect to the holder: it is on the same network; a holder that does
/// not accept within this is down and its lease is about to lapse.
pub const FORWARD_CONNECT_TIMEOUT_MS: u64 = 2_000;
/// Largest body forwarded: the largest any route accepts (heartbeats).
pub const MAX_FORWARDED_BODY_BYTES: usize = MAX_HEARTBEAT_BODY_BYTES;

/// Headers that describe one HTTP hop, not the call, so they are not relayed (RFC 9110
/// section 7.6.1); `host` and `content-length` are set anew for the next hop.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    header::HOST,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

/// What the front door needs.
#[derive(Clone)]
pub struct FrontDoor {
    /// The current role, published by the election (or fixed for an embedded store).
    pub role: watch::Receiver<ControllerRole>,
    /// Client for forwarded calls.
    pub client: reqwest::Client,
    /// This server's URL, sent along with forwarded calls (checked once, at start, by
    /// [`advertise_header`]).
    pub me: HeaderValue,
    /// Bearer token of user routes.
    pub api_token: std::sync::Arc<str>,
    /// Bearer token of agent routes.
    pub join_token: std::sync::Arc<str>,
    /// Server shutdown: ends relayed streams so the server can stop.
    pub shutdown: watch::Receiver<bool>,
}

impl FrontDoor {
    /// A front door with a forwarding client; fails when `me` (the advertised URL) could
    /// not be sent along with a forwarded call, so a bad `--advertise` stops the server at
    /// start instead of failing each forwarded request.
    pub fn new(
        role: watch::Receiver<ControllerRole>,
        me: &str,
        api_token: std::sync::Arc<str>,
        join_token: std::sync::Arc<str>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, ServerError> {
        let me = advertise_header(me)?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(FORWARD_CONNECT_TIMEOUT_MS))
            .build()
            .expect("a plain HTTP client builds");
        Ok(FrontDoor {
            role,
            client,
            me,
            api_token,
            join_token,
            shutdown,
        })
    }

    /// The whole HTTP surface: `/healthz` answered here, everything else dispatched.
    pub fn router(self) -> Router {
        Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .fallback(dispatch)
            .with_state(self)
    }
}

/// Checks an advertised URL (`--advertise`, or the default `http://LISTEN`): other
/// servers forward calls to it and it travels in [`FORWARDED_BY_HEADER`], so it must be
/// an `http://` or `https://` URL with a host and nothing a header cannot carry.
pub fn advertise_header(url: &str) -> Result<HeaderValue, ServerError> {
    let bad = |reason: &str| ServerError::BadAdvertiseUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| bad("it must start with http:// or https://"))?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || host.starts_with(':') {
        return Err(bad("it names no host"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("it holds white space or control characters"));
    }
    HeaderValue::from_str(url).map_err(|_| bad("it holds characters an HTTP header cannot carry"))
}

async fn dispatch(State(door): State<FrontDoor>, request: Request) -> Response {
    // A closed channel means the election task is gone (the server stopped or crashed).
    if door.role.has_changed().is_err() {
        return ServerError::ShuttingDown.into_response();
    }
    let role = door.role.borrow().clone();
    match role {
        ControllerRole::Leading(router) => match router.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        },
        ControllerRole::Electing => ServerError::NoLeader.into_response(),
        ControllerRole::Following { leader_url } => {
            if request.headers().contains_key(FORWARDED_BY_HEADER) {
                return ServerError::ForwardedTooFar.into_response();
            }
            if let Err(refused) = door.authorize(&request) {
                return refused.into_response();
            }
            door.forward(&leader_url, request)
                .await
                .unwrap_or_else(IntoResponse::into_response)
        }
    }
}

impl FrontDoor {
    /// The token check the holder will make, made here first.
    fn authorize(&self, request: &Request) -> Result<(), ServerError> {
        let path = request.uri().path();
        let (expected, which) = if path.starts_with("/v1/agents/") {
            (&self.join_token, "join")
        } else if path.starts_with("/v1/") || path == "/v1" {
            (&self.api_token, "API")
        } else {
            return Ok(());
        };
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        // The pub/sub bus registry serves gateways (API token) and agents (join token).
        let either = path.starts_with("/v1/pubsub/");
        match presented {
            Some(token) if token_matches(token, expected) => Ok(()),
            Some(token) if either && token_matches(token, &self.join_token) => Ok(()),
            _ => Err(ServerError::Unauthorized { which }),
        }
    }

    /// Relays `request` to the holder and its answer back, streaming the answer (the
    /// event stream is long-lived).
    async fn forward(&self, leader_url: &str, request: Request) -> Result<Response, ServerError> {
        let (parts, body) = request.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let body = axum::body::to_bytes(body, MAX_FORWARDED_BODY_BYTES)
            .await
            .map_err(|_| {
                ServerError::BadRequest(format!(
                    "the body is unreadable or larger than {MAX_FORWARDED_BODY_BYTES} bytes"
                ))
            })?;
        let mut headers = relayed(&parts.headers);
        headers.insert(FORWARDED_BY_HEADER, self.me.clone());
        let unreachable = |detail: String| ServerError::LeaderUnreachable {
            leader: leader_url.to_string(),
            detail,
        };
        let answer = self
            .client
            .request(parts.method, format!("{leader_url}{path}"))
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = answer.status();
        let headers = relayed(answer.headers());
        let mut shutdown = self.shutdown.clone();
        let stream = answer.bytes_stream().take_until(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        });
        let mut response = Response::new(Body::from_stream(stream));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }
}

/// `headers` without the hop-by-hop ones.
fn relayed(headers: &HeaderMap) -> HeaderMap {
    let mut out = headers.clone();
    for name in &HOP_BY_HOP {
        out.remove(name);
    }
    out.remove("keep-alive");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertise_urls_others_can_reach_are_accepted() {
        for url in [
            "http://10.0.0.1:7070",
            "https://stator.example:443",
            "http://[::1]:7070",
            "http://host/",
        ] {
            assert!(advertise_header(url).is_ok(), "{url} refused");
        }
    }

    #[test]
    fn a_bad_advertise_url_is_refused_with_what_to_do() {
        for (url, why) in [
            ("10.0.0.1:7070", "http://"),
            ("ftp://host", "http://"),
            ("http://", "no host"),
            ("http://:7070", "no host"),
            ("http://host name:7070", "white space"),
            ("http://host\n:7070", "white space"),
        ] {
            let error = advertise_header(url).expect_err(url).to_string();
            assert!(error.contains(why), "{url}: {error}");
            assert!(error.contains("--advertise"), "{url}: {error}");
        }
    }

    #[tokio::test]
    async fn the_front_door_refuses_a_bad_advertise_url_at_start() {
        let (_role_tx, role) = watch::channel(ControllerRole::Electing);
        let (_stop_tx, stop) = watch::channel(false);
        let door = FrontDoor::new(role, "not a url", "a".into(), "j".into(), stop);
        assert!(matches!(door, Err(ServerError::BadAdvertiseUrl { .. })));
    }
}
