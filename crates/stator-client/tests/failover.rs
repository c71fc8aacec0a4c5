//! The failover rules of `FailoverClient`, against tiny HTTP servers that answer one
//! fixed status each.

use stator_client::{CallError, FailoverClient, FailoverOn};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A server answering every request with `status` and `body`; counts the requests.
async fn fixed_server(status: u16, body: &'static str) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let url = format!("http://{}", listener.local_addr().expect("bound address"));
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut request = vec![0u8; 4096];
                let _ = socket.read(&mut request).await;
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(reply.as_bytes()).await;
            });
        }
    });
    (url, hits)
}

/// A URL nothing listens on.
async fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    format!("http://{}", listener.local_addr().expect("bound address"))
}

fn client(urls: &[&str], failover_on: FailoverOn) -> FailoverClient {
    FailoverClient::new(urls, "token", Duration::from_secs(5), failover_on).expect("client")
}

#[tokio::test]
async fn passes_over_dead_and_failing_servers_and_sticks_to_the_one_that_answered() {
    let dead = dead_url().await;
    let (failing, failing_hits) = fixed_server(500, r#"{"error":"boom"}"#).await;
    let (good, good_hits) = fixed_server(200, r#"{"ok":true}"#).await;
    let servers = client(&[&dead, &failing, &good], FailoverOn::ServerError);
    let answer: serde_json::Value = servers.get("/v1/x").await.unwrap();
    assert_eq!(answer["ok"], true);
    assert_eq!(failing_hits.load(Ordering::SeqCst), 1);
    let _: serde_json::Value = servers.get("/v1/x").await.unwrap();
    assert_eq!(
        failing_hits.load(Ordering::SeqCst),
        1,
        "the next call starts at the server that answered"
    );
    assert_eq!(good_hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn only_503_passes_on_when_asked_so() {
    let (failing, _) = fixed_server(500, r#"{"error":"boom"}"#).await;
    let (unavailable, _) = fixed_server(503, r#"{"error":"no controller"}"#).await;
    let (good, good_hits) = fixed_server(200, r#"{"ok":true}"#).await;
    let servers = client(&[&unavailable, &failing, &good], FailoverOn::Unavailable);
    match servers.get::<serde_json::Value>("/v1/x").await {
        Err(CallError::Refused { status, message }) => {
            assert_eq!((status, message.as_str()), (500, "boom"));
        }
        other => panic!("expected the 500 as the answer, got {other:?}"),
    }
    assert_eq!(good_hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_refusal_is_the_answer_and_no_server_is_unreachable() {
    let (refusing, _) = fixed_server(404, "no such node").await;
    let (good, good_hits) = fixed_server(200, "{}").await;
    let servers = client(&[&refusing, &good], FailoverOn::ServerError);
    match servers.get::<serde_json::Value>("/v1/x").await {
        Err(CallError::Refused {
            status: 404,
            message,
        }) => assert_eq!(message, "no such node"),
        other => panic!("expected a 404 refusal, got {other:?}"),
    }
    assert_eq!(good_hits.load(Ordering::SeqCst), 0);

    let dead = dead_url().await;
    let servers = client(&[&dead], FailoverOn::ServerError);
    assert!(matches!(
        servers.get::<serde_json::Value>("/v1/x").await,
        Err(CallError::Unreachable { tried: 1, .. })
    ));
    assert!(matches!(
        FailoverClient::new(
            [" ", ""],
            "t",
            Duration::from_secs(1),
            FailoverOn::ServerError
        ),
        Err(CallError::NoServers)
    ));
}
