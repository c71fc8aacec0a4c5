//! The HTTP routes: the stator-sm/1 call route against a real cluster, and the
//! round-robin proxy to stateless instances.

mod common;

use common::*;
use stator_api::spec::ServiceKind;
use stator_gateway::ServiceRoutes;
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_route_writes_and_reads_by_key() {
    let setup = setup(2, true).await;
    let base = format!(
        "http://{}",
        setup.gateway.http_addr().expect("HTTP enabled")
    );
    let http = reqwest::Client::new();
    // The kv machine takes RESP commands as its stator-sm/1 command bytes.
    let set = http
        .post(format!("{base}/v1/services/{SERVICE}/call?key=alpha"))
        .body(stator_kv::encode_command(&["SET", "alpha", "1"]))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200);
    assert_eq!(set.bytes().await.unwrap().as_ref(), b"+OK\r\n");
    let get = http
        .post(format!(
            "{base}/v1/services/{SERVICE}/call?key=alpha&read=1"
        ))
        .body(stator_kv::encode_command(&["GET", "alpha"]))
        .send()
        .await
        .unwrap();
    assert_eq!(get.bytes().await.unwrap().as_ref(), b"$1\r\n1\r\n");
    let no_key = http
        .post(format!("{base}/v1/services/{SERVICE}/call"))
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status(), 400);
    let unknown = http
        .post(format!("{base}/v1/services/nope/call?key=a"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert!(unknown
        .text()
        .await
        .unwrap()
        .contains("not in the partition map"));
    setup.gateway.shutdown().await;
}

async fn instance(name: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let app = axum::Router::new()
        .fallback(move |uri: axum::http::Uri| async move { format!("{name} {uri}") });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_spreads_requests_over_instances() {
    let setup = setup(1, true).await;
    let web = ServiceRoutes {
        name: "web".into(),
        kind: ServiceKind::Stateless,
        builtin_kv: false,
        resp_listen: None,
        auth: None,
        protected_mode: true,
        tls: None,
        cluster: false,
        partitions: Vec::new(),
        instances: vec![instance("a").await, instance("b").await],
    };
    let empty = ServiceRoutes {
        name: "idle".into(),
        instances: Vec::new(),
        ..web.clone()
    };
    setup
        .map_tx
        .send_replace(Arc::new(kv_map(&setup.cluster, 1, vec![web, empty])));
    let base = format!("http://{}", setup.gateway.http_addr().unwrap());
    let mut seen = Vec::new();
    for _ in 0..4 {
        let body = reqwest::get(format!("{base}/proxy/web/hello/there?x=1"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        seen.push(body);
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "a /hello/there?x=1",
            "a /hello/there?x=1",
            "b /hello/there?x=1",
            "b /hello/there?x=1"
        ]
    );
    let idle = reqwest::get(format!("{base}/proxy/idle/")).await.unwrap();
    assert_eq!(idle.status(), 503);
    setup.gateway.shutdown().await;
}
