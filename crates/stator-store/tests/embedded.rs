//! The embedded backend: the shared conformance suite plus what only a file-backed store has
//! (restarts, watch lag).

use std::sync::Arc;

use bytes::Bytes;
use stator_store::{EmbeddedOptions, EmbeddedStore, Store, StoreError};

/// A fresh store in a directory that is removed at once: the open file lives on until the
/// store is dropped, so tests leave nothing behind.
async fn make_store() -> Arc<dyn Store> {
    let dir = tempfile::tempdir().expect("create a temp dir");
    let store = EmbeddedStore::open(dir.path()).expect("open the embedded store");
    Arc::new(store)
}

stator_store::store_conformance_tests!(make_store());

#[tokio::test]
async fn reopening_keeps_data_and_revision() {
    let dir = tempfile::tempdir().unwrap();
    let (revision, lease) = {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.put("/k/a", Bytes::from_static(b"1")).await.unwrap();
        let lease = store.grant_lease(60_000).await.unwrap();
        store
            .put_with_lease("/k/leased", Bytes::from_static(b"2"), lease)
            .await
            .unwrap();
        (store.revision().await.unwrap(), lease)
    };
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let kept = store
        .get("/k/a")
        .await
        .unwrap()
        .expect("data must survive a restart");
    assert_eq!(kept.value, Bytes::from_static(b"1"));
    assert_eq!(
        store.get("/k/leased").await.unwrap(),
        None,
        "leased keys are deleted on open: leases do not survive a restart"
    );
    assert!(
        store.revision().await.unwrap() > revision,
        "the revision survives and the lease cleanup is a write"
    );
    assert!(matches!(
        store.keep_alive(lease).await,
        Err(StoreError::LeaseNotFound { .. })
    ));
    let next = store.put("/k/b", Bytes::from_static(b"3")).await.unwrap();
    assert!(next > revision, "revisions keep increasing across restarts");
}

#[tokio::test]
async fn second_open_of_the_same_directory_fails() {
    let dir = tempfile::tempdir().unwrap();
    let _first = EmbeddedStore::open(dir.path()).unwrap();
    let second = EmbeddedStore::open(dir.path());
    assert!(
        matches!(second, Err(StoreError::Backend { .. })),
        "{second:?}"
    );
}

#[tokio::test]
async fn lagging_watcher_gets_an_error_then_the_watch_ends() {
    const BUFFER_EVENTS: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let options = EmbeddedOptions {
        watch_buffer_events: BUFFER_EVENTS,
    };
    let store = EmbeddedStore::open_with(dir.path(), options).unwrap();
    let mut watch = store.watch("/w/").await.unwrap();
    for index in 0..BUFFER_EVENTS * 3 {
        store
            .put(&format!("/w/{index}"), Bytes::from_static(b"x"))
            .await
            .unwrap();
    }
    match watch.next().await {
        Some(Err(StoreError::WatchLagged { prefix, missed })) => {
            assert_eq!(prefix, "/w/");
            assert!(missed > 0);
        }
        other => panic!("a lagging watcher must get WatchLagged first, got {other:?}"),
    }
    assert!(
        watch.next().await.is_none(),
        "the watch must end after lagging"
    );
}

#[tokio::test]
async fn watch_ends_when_the_store_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let mut watch = store.watch("/").await.unwrap();
    drop(store);
    assert!(watch.next().await.is_none());
}
