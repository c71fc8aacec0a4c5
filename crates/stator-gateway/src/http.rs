//! The HTTP side: `POST /v1/services/{name}/call?key=K[&read=1]` for stator-sm/1 apps, and
//! `/proxy/{service}/...`, a round-robin reverse proxy to a stateless service's instances.

use crate::map::PartitionMap;
use crate::resp::Shared;
use crate::router::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use serde::Deserialize;
use stator_api::slot::key_slot;
use stator_replication::{ClientError, RequestKind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Largest call body: stator-sm/1 commands are small messages, and the replica transport
/// caps a frame at 32 MiB; 1 MiB keeps a single call from stalling its partition's log.
pub const MAX_CALL_BODY_BYTES: usize = 1 << 20;

/// Largest request body the proxy forwards (it buffers bodies to keep the proxy simple).
pub const MAX_PROXY_BODY_BYTES: usize = 8 << 20;

/// Timeout of one proxied request, so a hung instance cannot hold a client forever.
const PROXY_TIMEOUT: Duration = Duration::from_secs(30);

/// Headers that describe one hop, not the message, and are never forwarded (RFC 9110).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

struct HttpState {
    router: Arc<Router>,
    map: watch::Receiver<Arc<PartitionMap>>,
    proxy: reqwest::Client,
    next_instance: AtomicUsize,
    shared: Arc<Shared>,
}

/// The gateway's HTTP routes.
pub(crate) fn routes(
    router: Arc<Router>,
    map: watch::Receiver<Arc<PartitionMap>>,
    shared: Arc<Shared>,
) -> axum::Router {
    let state = Arc::new(HttpState {
        router,
        map,
        shared,
        proxy: reqwest::Client::builder()
            .timeout(PROXY_TIMEOUT)
            .build()
            .expect("a client without TLS always builds"),
        next_instance: AtomicUsize::new(0),
    });
    axum::Router::new()
        .route(
            "/v1/services/{name}/call",
            post(call).layer(DefaultBodyLimit::max(MAX_CALL_BODY_BYTES)),
        )
        .route("/proxy/{service}", any(proxy_root))
        .route("/proxy/{service}/", any(proxy_root))
        .route("/proxy/{service}/{*rest}", any(proxy))
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route("/metrics", axum::routing::get(metrics))
        .with_state(state)
}

/// `GET /metrics`: the pub/sub bus's losses in Prometheus text format (they were only
/// logged): frames dropped on a full peer queue (delivery is at-most-once) and
/// subscribers closed for falling behind.
async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    let broker = state.shared.broker();
    let dropped = broker.fabric().map_or(0, |f| f.dropped_frames());
    let slow = broker.slow_subscribers_closed();
    let text = format!(
        "# HELP stator_gateway_bus_dropped_frames Pub/sub frames dropped because a bus peer's queue was full\n\
         # TYPE stator_gateway_bus_dropped_frames counter\n\
         stator_gateway_bus_dropped_frames_total {dropped}\n\
         # HELP stator_gateway_slow_subscribers_closed Subscribers disconnected for falling too far behind\n\
         # TYPE stator_gateway_slow_subscribers_closed counter\n\
         stator_gateway_slow_subscribers_closed_total {slow}\n\
         # EOF\n"
    );
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": message.into() })),
    )
        .into_response()
}

#[derive(Deserialize)]
struct CallQuery {
    key: Option<String>,
    #[serde(default)]
    read: Option<String>,
}

async fn call(
    State(state): State<Arc<HttpState>>,
    Path(name): Path<String>,
    Query(query): Query<CallQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(key) = query.key else {
        return error(
            StatusCode::BAD_REQUEST,
            "missing ?key=K: the key decides which partition serves the call",
        );
    };
    let kind = match query.read.as_deref() {
        None | Some("0") | Some("false") => RequestKind::Write,
        Some("1") | Some("true") => RequestKind::Read,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("read={other} is not understood; use read=1 for a query or leave it out for a command"),
            )
        }
    };
    let service = state.map.borrow().services.get(&name).cloned();
    let Some(service) = service else {
        state.router.request_refresh();
        return error(
            StatusCode::NOT_FOUND,
            format!("service '{name}' is not in the partition map; apply it first"),
        );
    };
    // The service's password is its bearer token (expose.auth), as AUTH is on RESP.
    let authorization = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    if let Err(message) = state
        .shared
        .access
        .get(&service)
        .check_bearer(authorization)
    {
        let mut response = error(StatusCode::UNAUTHORIZED, message);
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return response;
    }
    let slot = key_slot(key.as_bytes());
    let Some(route) = service.route(slot) else {
        state.router.request_refresh();
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no partition of service '{name}' owns slot {slot} yet (is it a replicated service?); retry shortly"),
        );
    };
    match state.router.forward(route, kind, body.to_vec()).await {
        Ok(reply) => ([(header::CONTENT_TYPE, "application/octet-stream")], reply).into_response(),
        Err(ClientError::Timeout { deadline_ms, last, .. }) => error(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "partition {} of '{name}' had no reachable leader within {deadline_ms} ms ({last}){}",
                route.partition,
                if kind == RequestKind::Write { "; the command may or may not have been applied" } else { "" }
            ),
        ),
        Err(other) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("nothing was applied: {other}")),
    }
}

async fn proxy_root(
    state: State<Arc<HttpState>>,
    Path(service): Path<String>,
    request: Request,
) -> Response {
    forward_to_instance(state, service, String::new(), request).await
}

async fn proxy(
    state: State<Arc<HttpState>>,
    Path((service, rest)): Path<(String, String)>,
    request: Request,
) -> Response {
    forward_to_instance(state, service, rest, request).await
}

async fn forward_to_instance(
    State(state): State<Arc<HttpState>>,
    service: String,
    rest: String,
    request: Request,
) -> Response {
    let instances = state
        .map
        .borrow()
        .services
        .get(&service)
        .map(|s| s.instances.clone());
    let Some(instances) = instances else {
        return error(
            StatusCode::NOT_FOUND,
            format!("service '{service}' is not in the partition map; apply it first"),
        );
    };
    if instances.is_empty() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("service '{service}' has no ready instance with a known address; check `stator describe service {service}`"),
        );
    }
    let instance =
        &instances[state.next_instance.fetch_add(1, Ordering::Relaxed) % instances.len()];
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_PROXY_BODY_BYTES).await {
        Ok(body) => body,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body over {MAX_PROXY_BODY_BYTES} bytes; the proxy does not forward larger ones"),
            )
        }
    };
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let url = format!("http://{instance}/{rest}{query}");
    let mut outgoing = state.proxy.request(parts.method, &url).body(body);
    for (name, value) in &parts.headers {
        if !is_hop_by_hop(name) {
            outgoing = outgoing.header(name, value);
        }
    }
    match outgoing.send().await {
        Ok(answer) => {
            let mut response = Response::builder().status(answer.status());
            for (name, value) in answer.headers() {
                if !is_hop_by_hop(name) {
                    response = response.header(name, value);
                }
            }
            response
                .body(Body::from_stream(answer.bytes_stream()))
                .unwrap_or_else(|e| {
                    error(
                        StatusCode::BAD_GATEWAY,
                        format!("bad answer from {instance}: {e}"),
                    )
                })
        }
        Err(e) => error(
            StatusCode::BAD_GATEWAY,
            format!("instance {instance} of '{service}' did not answer: {e}"),
        ),
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}
