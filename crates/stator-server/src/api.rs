//! The HTTP API: routes, authentication, body limits, JSON errors, the SSE event stream.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

use stator_api::agent::{Assignments, Heartbeat, RegisterRequest, RegisterResponse};
use stator_api::ids::NodeId;
use stator_api::pubsub::{
    BusRegistration, BusView, NotifySetting, BUS_NOTIFY_PATH, BUS_PEERS_PATH,
};
use stator_api::spec::{parse_spec, SpecError, SpecFormat};

use crate::config::token_matches;
use crate::controller::{now_ms, ControllerHandle};
use crate::error::{Result, ServerError};
use crate::metrics::Metrics;
use crate::present::{node_view, partition_views, service_view};
use crate::pubsub::BusRegistry;
use stator_api::views::{
    ApplyResult, ClusterInfo, Event, EventKind, NodeView, PartitionView, ServiceDetail, ServiceView,
};

/// Largest request body on user routes: a spec is a few KiB; 1 MiB leaves room for
/// huge env maps while keeping a flood of large bodies cheap to refuse.
pub const MAX_REQUEST_BODY_BYTES: usize = 1024 * 1024;
/// Largest heartbeat body: a node reports every replica it hosts (about 300 bytes
/// each), so this allows tens of thousands per node.
pub const MAX_HEARTBEAT_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Largest body on the pub/sub bus routes: a registration with its subscriber summary
/// ([`stator_api::pubsub::MAX_REPORTED_CHANNELS`] channel names per service).
pub const MAX_BUS_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Interval of SSE keep-alive comments, so proxies do not close an idle stream.
pub const EVENTS_KEEP_ALIVE_MS: u64 = 15_000;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    /// The controller task.
    pub controller: ControllerHandle,
    /// Bearer token of the user routes.
    pub api_token: Arc<str>,
    /// Bearer token of the agent routes.
    pub join_token: Arc<str>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Flips to true on shutdown; ends event streams so the server can stop.
    pub shutdown: watch::Receiver<bool>,
    /// The pub/sub bus registry (a std mutex: map updates only, never across an await).
    pub pubsub: Arc<std::sync::Mutex<BusRegistry>>,
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    let user_routes = Router::new()
        .route("/v1/nodes", get(list_nodes))
        .route("/v1/nodes/{name}", get(get_node))
        .route("/v1/nodes/{name}/drain", post(drain_node))
        .route("/v1/services", get(list_services))
        .route(
            "/v1/services/{name}",
            get(get_service).put(apply_service).delete(delete_service),
        )
        .route("/v1/partitions", get(list_partitions))
        .route("/v1/cluster", get(cluster_info))
        .route("/v1/events", get(events))
        .route("/v1/events/recent", get(recent_events))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BODY_BYTES))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_token,
        ));
    let agent_routes = Router::new()
        .route("/v1/agents/register", post(register))
        .route("/v1/agents/{node_id}/heartbeat", post(heartbeat))
        .layer(DefaultBodyLimit::max(MAX_HEARTBEAT_BODY_BYTES))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_join_token,
        ));
    let bus_routes = Router::new()
        .route(BUS_PEERS_PATH, post(register_bus_peer))
        .route(BUS_NOTIFY_PATH, post(set_notify))
        .layer(DefaultBodyLimit::max(MAX_BUS_BODY_BYTES))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_any_token,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .merge(crate::dashboard::routes())
        .merge(user_routes)
        .merge(agent_routes)
        .merge(bus_routes)
        .fallback(|| async {
            ServerError::NotFound {
                kind: "route",
                name: "the requested path".to_string(),
            }
        })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

async fn count_requests(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().to_string();
    let response = next.run(request).await;
    state
        .metrics
        .api_request(&method, response.status().as_u16());
    response
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

async fn require_api_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    match bearer(request.headers()) {
        Some(token) if token_matches(token, &state.api_token) => next.run(request).await,
        _ => ServerError::Unauthorized { which: "API" }.into_response(),
    }
}

async fn require_join_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    match bearer(request.headers()) {
        Some(token) if token_matches(token, &state.join_token) => next.run(request).await,
        _ => ServerError::Unauthorized { which: "join" }.into_response(),
    }
}

/// The pub/sub bus routes serve gateways (API token) and agents (join token).
async fn require_any_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    match bearer(request.headers()) {
        Some(token)
            if token_matches(token, &state.api_token)
                || token_matches(token, &state.join_token) =>
        {
            next.run(request).await
        }
        _ => ServerError::Unauthorized {
            which: "API or join",
        }
        .into_response(),
    }
}

async fn register_bus_peer(
    State(state): State<AppState>,
    body: Result<Json<BusRegistration>, JsonRejection>,
) -> Result<Json<BusView>> {
    let Json(registration) = body.map_err(|e| ServerError::BadRequest(e.body_text()))?;
    let view = state
        .pubsub
        .lock()
        .expect("pub/sub registry lock poisoned")
        .register(registration, now_ms())?;
    Ok(Json(view))
}

async fn set_notify(
    State(state): State<AppState>,
    body: Result<Json<NotifySetting>, JsonRejection>,
) -> Result<Json<BusView>> {
    let Json(setting) = body.map_err(|e| ServerError::BadRequest(e.body_text()))?;
    let view = state
        .pubsub
        .lock()
        .expect("pub/sub registry lock poisoned")
        .set_notify(setting, now_ms())?;
    Ok(Json(view))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn list_nodes(State(state): State<AppState>) -> Result<Json<Vec<NodeView>>> {
    let nodes = state
        .controller
        .read(|cluster, now| {
            cluster
                .nodes
                .keys()
                .filter_map(|id| node_view(cluster, *id, now))
                .collect()
        })
        .await?;
    Ok(Json(nodes))
}

async fn get_node(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<NodeView>> {
    let Path(name) = path.map_err(|e| ServerError::BadRequest(e.body_text()))?;
    let wanted = name.clone();
    let node = state
        .controller
        .read(move |cluster, now| {
            cluster
                .nodes
                .values()
                .filter(|n| n.info.name == wanted || n.id.to_string() == wanted)
                .max_by_key(|n| (n.state.is_alive(), n.id))
                .and_then(|n| node_view(cluster, n.id, now))
        })
        .await?;
    node.map(Json)
        .ok_or(ServerError::NotFound { kind: "node", name })
}

async fn drain_node(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<NodeView>> {
    let Path(name) = path.map_err(|e| ServerError::BadRequest(e.body_text()))?;
    let id = state.controller.drain(name.clone()).await?;
    let node = state
        .controller
        .read(move |cluster, now| node_view(cluster, id, now))
        .await?;
    node.map(Json)
        .ok_or(ServerError::NotFound { kind: "node", name })
}

async fn list_services(State(state): State<AppState>) -> Result<Json<Vec<ServiceView>>> {
    let services = state
        .controller
        .read(|cluster, _| {
            cluster
                .services
                .values()
                .map(|s| service_view(cluster, s))
                .collect()
        })
        .await?;
    Ok(Json(services))
}

async fn get_service(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response> {
    let Path(name) = path.map_err(|e| ServerError::BadRequest(e.body_text()))?;
    let wanted = name.clone();
    let detail = state
        .controller
        .read(move |cluster, now| {
            cluster.services.get(&wanted).map(|s| ServiceDetail {
                service: service_view(cluster, s),
                partitions: partition_views(cluster, s, now),
            })
        })
        .await?;
    detail
        .map(|d| Json(d).into_response())
        .ok_or(ServerError::NotFound {
            kind: "service",
            name,
        })
}

/// The spec format a content type names; anything else is guessed from the text.
fn format_of(headers: &HeaderMap) -> SpecFormat {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match content_type.as_str() {
        "application/json" => SpecFormat::Json,
        "application/toml" => SpecFormat::Toml,
        "application/yaml" | "application/x-yaml" | "text/yaml" => SpecFormat::Yaml,
        _ => SpecFormat::Auto,
    }
}

async fn apply_service(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<ApplyResult>)> {
    let Path(name) = path.map_err(|e| ServerError::BadRequest(e.body_text()))?;
    let body = body.map_err(|e| {
        ServerError::BadRequest(format!(
            "{}; a spec body may be at most {MAX_REQUEST_BODY_BYTES} bytes",
            e.body_text()
        ))
    })?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ServerError::BadRequest("the spec must be UTF-8 text".to_string()))?;
    let spec = parse_spec(text, format_of(&headers))?;
    spec.validate()?;
    if spec.name != name {
        return Err(SpecError::Invalid {
            field: "name".to_string(),
            reason: format!(
                "must match the service in the URL ({name:?}), got {:?}",
                spec.name
            ),
        }
        .into());
    }
    let result = state.controller.apply(spec).await?;
    let status = if result.result == "created" {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(result)))
}

async fn delete_service(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode> {
    let Path(name) = path.map_err(|e| ServerError::BadRequest(e.body_text()))?;
    state.controller.delete(name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
struct PartitionQuery {
    service: Option<String>,
}

async fn cluster_info(State(state): State<AppState>) -> Json<ClusterInfo> {
    Json(ClusterInfo {
        cluster_secret: state.controller.cluster_secret().to_string(),
    })
}

async fn list_partitions(
    State(state): State<AppState>,
    query: Result<Query<PartitionQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<PartitionView>>> {
    let Query(query) = query.map_err(|e| ServerError::BadRequest(e.body_text()))?;
    let wanted = query.service.clone();
    let partitions = state
        .controller
        .read(move |cluster, now| {
            let services: Vec<_> = match &wanted {
                Some(name) => cluster.services.get(name).into_iter().collect(),
                None => cluster.services.values().collect(),
            };
            let found = wanted.is_none() || !services.is_empty();
            let views: Vec<PartitionView> = services
                .into_iter()
                .flat_map(|s| partition_views(cluster, s, now))
                .collect();
            found.then_some(views)
        })
        .await?;
    partitions.map(Json).ok_or(ServerError::NotFound {
        kind: "service",
        name: query.service.unwrap_or_default(),
    })
}

/// The last events the controller published, oldest first.
async fn recent_events(State(state): State<AppState>) -> Result<Json<Vec<Event>>> {
    Ok(Json(state.controller.recent_events().await?))
}

async fn events(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = std::result::Result<SseEvent, Infallible>>> {
    let receiver = state.controller.subscribe();
    let mut shutdown = state.shutdown.clone();
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        let event = match receiver.recv().await {
            Ok(event) => event,
            Err(RecvError::Lagged(missed)) => Event {
                seq: 0,
                time_ms: now_ms(),
                kind: EventKind::Lagged { missed },
            },
            Err(RecvError::Closed) => return None,
        };
        let sse = SseEvent::default()
            .event(event.kind.name())
            .json_data(&event)
            .expect("events always serialize");
        Some((Ok(sse), receiver))
    })
    // End the stream on shutdown: graceful shutdown waits for open connections.
    .take_until(async move {
        let _ = shutdown.wait_for(|stopping| *stopping).await;
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_millis(EVENTS_KEEP_ALIVE_MS)))
}

async fn register(
    State(state): State<AppState>,
    body: Result<Json<RegisterRequest>, JsonRejection>,
) -> Result<Json<RegisterResponse>> {
    let Json(request) = body.map_err(|e| ServerError::BadRequest(e.body_text()))?;
    Ok(Json(state.controller.register(request).await?))
}

async fn heartbeat(
    State(state): State<AppState>,
    path: Result<Path<NodeId>, PathRejection>,
    body: Result<Json<Heartbeat>, JsonRejection>,
) -> Result<Json<Assignments>> {
    let Path(node_id) = path.map_err(|e| ServerError::BadRequest(e.body_text()))?;
    let Json(heartbeat) = body.map_err(|e| ServerError::BadRequest(e.body_text()))?;
    if heartbeat.node_id != node_id {
        return Err(ServerError::BadRequest(format!(
            "node_id: the body says {} but the URL says {node_id}",
            heartbeat.node_id
        )));
    }
    Ok(Json(state.controller.heartbeat(heartbeat).await?))
}
