//! The gateway started against a (fake) stator server: it polls the API with its token,
//! fails over from a dead server URL, and opens the RESP listener the spec asks for.

mod common;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use common::*;
use stator_api::slot::partition_ranges;
use stator_gateway::GatewayConfig;
use stator_kv::Value;
use stator_replication::testing::{InProcessCluster, TEST_SECRET};
use stator_replication::GroupOptions;
use std::sync::Arc;

const TOKEN: &str = "api-token";

fn authorized(headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {TOKEN}"))
}

async fn fake_server(members: Vec<String>) -> String {
    let services = serde_json::json!([{
        "name": SERVICE, "kind": "replicated", "id": SERVICE_ID, "generation": 1,
        "spec": {"name": SERVICE, "partitions": 1, "replicas": 3, "app": {"builtin": "kv"},
                 "expose": {"resp": "127.0.0.1:0"}},
        "status": {}
    }]);
    let partitions = serde_json::json!([{
        "service": SERVICE, "partition": 0, "group": group(0), "slots": partition_ranges(1)[0],
        "leader": null, "members": [], "member_addrs": members, "replicas": 3,
        "replication_factor_met": true
    }]);
    let app = axum::Router::new()
        .route(
            "/v1/cluster",
            get(move |headers: HeaderMap| async move {
                if authorized(&headers) {
                    Ok(axum::Json(
                        serde_json::json!({ "cluster_secret": TEST_SECRET }),
                    ))
                } else {
                    Err(StatusCode::UNAUTHORIZED)
                }
            }),
        )
        .route(
            "/v1/services",
            get(move |headers: HeaderMap| async move {
                if authorized(&headers) {
                    Ok(axum::Json(services))
                } else {
                    Err(StatusCode::UNAUTHORIZED)
                }
            }),
        )
        .route(
            "/v1/partitions",
            get(move |headers: HeaderMap| async move {
                if authorized(&headers) {
                    Ok(axum::Json(partitions))
                } else {
                    Err(StatusCode::UNAUTHORIZED)
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_the_server_and_serves_its_services() {
    let cluster = InProcessCluster::start(3, Arc::new(stator_kv::KvFactory)).await;
    cluster
        .create_group(group(0), &[1, 2, 3], GroupOptions::default())
        .await;
    cluster.leader(group(0)).await;
    let url = fake_server(cluster.addrs.values().cloned().collect()).await;
    // A dead URL first: the poller must fail over to the live one. No secret given: the
    // gateway fetches it from the server.
    let config = GatewayConfig::new(vec!["http://127.0.0.1:1".into(), url], TOKEN, "");
    let gateway = stator_gateway::start(config).await.expect("gateway starts");
    let addr = gateway
        .wait_for_resp(SERVICE, WAIT)
        .await
        .expect("listener from the polled map");
    let mut c = Resp::connect(addr).await;
    assert_eq!(c.call(&["SET", "k", "v"]).await, Value::ok());
    assert_eq!(c.call(&["GET", "k"]).await, bulk("v"));
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_opens_nothing() {
    let url = fake_server(Vec::new()).await;
    let config = GatewayConfig::new(vec![url], "wrong", TEST_SECRET);
    let gateway = stator_gateway::start(config).await.expect("gateway starts");
    assert_eq!(
        gateway
            .wait_for_resp(SERVICE, std::time::Duration::from_millis(500))
            .await,
        None,
        "no map without the API token"
    );
    gateway.shutdown().await;
}
