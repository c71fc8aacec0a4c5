//! The store conformance suite against [`EtcdStore`] on a real 3-member etcd cluster on
//! loopback, plus the etcd-specific behaviour (limits, member loss, bad endpoints).
//!
//! Needs the `etcd` binary (Debian's etcd-server); without it the tests print
//! `SKIPPED: etcd not installed` and pass, unless STATOR_REQUIRE_ALL=1.
#![cfg(feature = "etcd")]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use stator_harness::etcd::{available_or_skip as etcd_available_or_skip, EtcdOptions, LocalEtcd};
use stator_store::types::MAX_VALUE_BYTES;
use stator_store::{EtcdStore, Store, StoreError, WatchEvent};

/// A real etcd of `members` members on loopback, killed and removed on drop.
async fn start_etcd(members: usize) -> LocalEtcd {
    LocalEtcd::start(EtcdOptions::for_tests(members))
        .await
        .unwrap_or_else(|why| panic!("starting the test etcd: {why:#}"))
}

/// A store on `etcd` whose keys live under `namespace`.
async fn store_on(etcd: &LocalEtcd, namespace: &str) -> EtcdStore {
    EtcdStore::connect_with_namespace(etcd.endpoints(), namespace)
        .await
        .unwrap_or_else(|why| panic!("connecting to the test etcd: {why}"))
}

/// A fresh, empty store: its own namespace on the shared cluster.
async fn fresh_store(cluster: &LocalEtcd) -> Arc<dyn Store> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let namespace = format!("/conformance/{}", NEXT.fetch_add(1, Ordering::Relaxed));
    Arc::new(store_on(cluster, &namespace).await)
}

/// Every conformance case, in sequence, each on a fresh namespace of one 3-member cluster.
/// In sequence because several cases assert exact global revisions, and etcd's revision is
/// cluster-wide: a case running beside them would bump it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_on_three_member_etcd() {
    if !etcd_available_or_skip() {
        return;
    }
    let cluster = start_etcd(3).await;
    stator_store::conformance::run_all(|| fresh_store(&cluster)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_at_the_limit_fit_and_larger_ones_are_refused() {
    if !etcd_available_or_skip() {
        return;
    }
    let cluster = start_etcd(1).await;
    let store = fresh_store(&cluster).await;
    let biggest = Bytes::from(vec![7u8; MAX_VALUE_BYTES]);
    store.put("/big", biggest.clone()).await.unwrap();
    assert_eq!(store.get("/big").await.unwrap().unwrap().value, biggest);
    let too_big = Bytes::from(vec![7u8; MAX_VALUE_BYTES + 1]);
    assert!(matches!(
        store.put("/big", too_big).await,
        Err(StoreError::ValueTooLarge { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_span_several_pages_as_one_snapshot() {
    if !etcd_available_or_skip() {
        return;
    }
    let cluster = start_etcd(1).await;
    let store = fresh_store(&cluster).await;
    let keys = stator_store::etcd::LIST_PAGE_KEYS as usize * 2 + 5;
    for i in 0..keys {
        store
            .put(&format!("/many/{i:04}"), Bytes::from(i.to_string()))
            .await
            .unwrap();
    }
    let listed = store.list("/many/").await.unwrap();
    assert_eq!(listed.len(), keys);
    assert!(listed.windows(2).all(|w| w[0].0 < w[1].0), "sorted by key");
    assert_eq!(listed[keys - 1].0, format!("/many/{:04}", keys - 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_are_isolated() {
    if !etcd_available_or_skip() {
        return;
    }
    let cluster = start_etcd(1).await;
    let one = store_on(&cluster, "/one").await;
    let two = store_on(&cluster, "/two").await;
    one.put("/k", Bytes::from_static(b"1")).await.unwrap();
    assert_eq!(two.get("/k").await.unwrap(), None);
    assert!(two.list("/").await.unwrap().is_empty());
    assert_eq!(one.list("/").await.unwrap()[0].0, "/k");
}

/// With one of three members killed, calls and an open watch go on through the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_the_loss_of_one_member() {
    if !etcd_available_or_skip() {
        return;
    }
    let mut cluster = start_etcd(3).await;
    let store = fresh_store(&cluster).await;
    let mut watch = store.watch("/w/").await.unwrap();
    store
        .put("/w/before", Bytes::from_static(b"1"))
        .await
        .unwrap();
    cluster.kill(0).expect("member 0 runs");
    // The first calls after the kill may land on the dead member; a client retries.
    let mut written = None;
    for _ in 0..50 {
        match store.put("/w/after", Bytes::from_static(b"2")).await {
            Ok(revision) => {
                written = Some(revision);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let written = written.expect("writes go on with two of three members");
    let mut seen = Vec::new();
    while seen.last().map(WatchEvent::revision) != Some(written) {
        let event = tokio::time::timeout(Duration::from_secs(20), watch.next())
            .await
            .expect("watch event in time")
            .expect("watch still open")
            .expect("watch resumed after the member died");
        seen.push(event);
    }
    let keys: Vec<&str> = seen.iter().map(WatchEvent::key).collect();
    assert_eq!(keys, ["/w/before", "/w/after"], "no event lost or repeated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_etcd_is_a_clear_error() {
    // Needs no etcd: nothing listens on the port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let error = EtcdStore::connect(&[format!("127.0.0.1:{port}")])
        .await
        .expect_err("nothing listens there");
    let message = error.to_string();
    assert!(message.contains(&port.to_string()), "{message}");
}
