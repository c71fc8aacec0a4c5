//! The behaviour every [`Store`] backend must show, as reusable async test cases.
//!
//! Each case takes a fresh, empty store and panics with a message on a violation. Run them
//! all as separate tests with [`store_conformance_tests!`](crate::store_conformance_tests)
//! or in one go with [`run_all`]. Lease cases wait in real time (TTLs of a few hundred
//! milliseconds), but every wait is bounded by [`EVENT_WAIT_LIMIT_MS`] and no assertion
//! depends on how fast the store is.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::error::StoreError;
use crate::store::Store;
use crate::types::{
    CasOutcome, Expected, Guard, Watch, WatchEvent, WriteOp, MAX_BATCH_OPS, MIN_LEASE_TTL_MS,
};

/// Longest wait for an expected watch event; generous so a loaded CI machine cannot make a
/// correct store fail, while a broken one still fails in bounded time.
pub const EVENT_WAIT_LIMIT_MS: u64 = 10_000;

/// TTL for leases that are meant to expire during a case: short, but long enough for the
/// puts that attach keys to it to land first on a loaded machine.
const EXPIRING_TTL_MS: u64 = 1_000;

/// TTL for leases that are kept alive; several keep-alive periods must fit in it, so a
/// stalled test thread does not let it lapse.
const KEPT_ALIVE_TTL_MS: u64 = 2_000;

/// Generates one `#[tokio::test]` per conformance case. `$make` is an expression evaluated
/// per test that yields a future of a fresh, empty `Arc<dyn Store>`, e.g. `make_store()`
/// for `async fn make_store() -> Arc<dyn Store>`. The calling crate needs `tokio` with the
/// `macros` and `rt-multi-thread` features as a dev-dependency.
#[macro_export]
macro_rules! store_conformance_tests {
    ($make:expr) => {
        $crate::store_conformance_tests!(@cases $make;
            get_put_delete,
            revisions_increase,
            cas_absent,
            cas_mod_revision,
            cas_value,
            cas_with_lease,
            cas_create_revision,
            guarded_batch_applies_while_the_guard_holds,
            guarded_batch_is_fenced_once_the_guard_changes,
            unguarded_batch_is_atomic,
            invalid_batch_is_rejected_whole,
            list_by_prefix,
            watch_sees_puts_and_deletes_in_order,
            watch_starts_after_current_revision,
            watch_filters_by_prefix,
            concurrent_writes_get_distinct_revisions,
            lease_expiry_deletes_keys,
            keep_alive_extends_lease,
            revoke_deletes_keys,
            put_without_lease_detaches,
            unknown_lease_is_rejected,
            invalid_input_is_rejected,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let store: ::std::sync::Arc<dyn $crate::Store> = ($make).await;
                $crate::conformance::$case(store).await;
            }
        )*
    };
}

/// Runs every case in sequence, each on a fresh store from `make`.
pub async fn run_all<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    get_put_delete(make().await).await;
    revisions_increase(make().await).await;
    cas_absent(make().await).await;
    cas_mod_revision(make().await).await;
    cas_value(make().await).await;
    cas_with_lease(make().await).await;
    cas_create_revision(make().await).await;
    guarded_batch_applies_while_the_guard_holds(make().await).await;
    guarded_batch_is_fenced_once_the_guard_changes(make().await).await;
    unguarded_batch_is_atomic(make().await).await;
    invalid_batch_is_rejected_whole(make().await).await;
    list_by_prefix(make().await).await;
    watch_sees_puts_and_deletes_in_order(make().await).await;
    watch_starts_after_current_revision(make().await).await;
    watch_filters_by_prefix(make().await).await;
    concurrent_writes_get_distinct_revisions(make().await).await;
    lease_expiry_deletes_keys(make().await).await;
    keep_alive_extends_lease(make().await).await;
    revoke_deletes_keys(make().await).await;
    put_without_lease_detaches(make().await).await;
    unknown_lease_is_rejected(make().await).await;
    invalid_input_is_rejected(make().await).await;
}

fn bytes(text: &'static str) -> Bytes {
    Bytes::from_static(text.as_bytes())
}

/// The next event of `watch`, failing the case if none comes in time or the watch errs.
async fn next_event(watch: &mut Watch) -> WatchEvent {
    match tokio::time::timeout(Duration::from_millis(EVENT_WAIT_LIMIT_MS), watch.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(error))) => panic!("watch failed: {error}"),
        Ok(None) => panic!("watch ended while an event was expected"),
        Err(_) => panic!("no watch event within {EVENT_WAIT_LIMIT_MS} ms"),
    }
}

/// Put, overwrite, get and delete one key.
pub async fn get_put_delete(store: Arc<dyn Store>) {
    assert_eq!(
        store.get("/t/k").await.unwrap(),
        None,
        "fresh store must be empty"
    );
    store.put("/t/k", bytes("one")).await.unwrap();
    let got = store.get("/t/k").await.unwrap().expect("key just put");
    assert_eq!(got.value, bytes("one"));
    assert_eq!(got.lease, None);
    store.put("/t/k", bytes("two")).await.unwrap();
    assert_eq!(
        store.get("/t/k").await.unwrap().unwrap().value,
        bytes("two")
    );
    assert!(
        store.delete("/t/k").await.unwrap(),
        "delete of an existing key"
    );
    assert_eq!(store.get("/t/k").await.unwrap(), None);
    assert!(
        !store.delete("/t/k").await.unwrap(),
        "delete of a missing key"
    );
    store.put("/t/empty", Bytes::new()).await.unwrap();
    assert_eq!(
        store.get("/t/empty").await.unwrap().unwrap().value,
        Bytes::new(),
        "an empty value is a value, not a missing key"
    );
}

/// Every write bumps the revision; reads, failed swaps and no-op deletes do not.
pub async fn revisions_increase(store: Arc<dyn Store>) {
    let start = store.revision().await.unwrap();
    let first = store.put("/r/a", bytes("1")).await.unwrap();
    assert!(first > start, "put must bump the revision");
    let second = store.put("/r/a", bytes("2")).await.unwrap();
    assert!(second > first);
    let got = store.get("/r/a").await.unwrap().unwrap();
    assert_eq!(
        got.create_revision, first,
        "overwrite keeps the create revision"
    );
    assert_eq!(got.mod_revision, second);
    assert_eq!(store.revision().await.unwrap(), second, "get must not bump");

    assert!(!store.delete("/r/missing").await.unwrap());
    let failed = store
        .compare_and_swap("/r/a", Expected::Absent, Some(bytes("x")))
        .await
        .unwrap();
    assert!(!failed.swapped());
    assert_eq!(
        store.revision().await.unwrap(),
        second,
        "no-op delete and failed swap must not bump"
    );

    assert!(store.delete("/r/a").await.unwrap());
    let after_delete = store.revision().await.unwrap();
    assert!(after_delete > second, "delete must bump the revision");
    let third = store.put("/r/a", bytes("3")).await.unwrap();
    let recreated = store.get("/r/a").await.unwrap().unwrap();
    assert_eq!(
        recreated.create_revision, third,
        "re-created key starts anew"
    );
}

/// `Expected::Absent` creates once, then reports the current value.
pub async fn cas_absent(store: Arc<dyn Store>) {
    let created = store
        .compare_and_swap("/c/k", Expected::Absent, Some(bytes("mine")))
        .await
        .unwrap();
    let CasOutcome::Swapped { revision } = created else {
        panic!("create on a missing key must succeed, got {created:?}");
    };
    assert_eq!(
        store.get("/c/k").await.unwrap().unwrap().mod_revision,
        revision
    );
    let second = store
        .compare_and_swap("/c/k", Expected::Absent, Some(bytes("theirs")))
        .await
        .unwrap();
    match second {
        CasOutcome::Mismatch {
            current: Some(current),
        } => assert_eq!(current.value, bytes("mine")),
        other => panic!("create on an existing key must fail with its value, got {other:?}"),
    }
    assert_eq!(
        store.get("/c/k").await.unwrap().unwrap().value,
        bytes("mine")
    );
}

/// `Expected::ModRevision` swaps only on the exact revision; `None` deletes.
pub async fn cas_mod_revision(store: Arc<dyn Store>) {
    let revision = store.put("/c/k", bytes("v1")).await.unwrap();
    let swapped = store
        .compare_and_swap("/c/k", Expected::ModRevision(revision), Some(bytes("v2")))
        .await
        .unwrap();
    assert!(
        swapped.swapped(),
        "swap at the current revision: {swapped:?}"
    );
    let stale = store
        .compare_and_swap("/c/k", Expected::ModRevision(revision), Some(bytes("v3")))
        .await
        .unwrap();
    match stale {
        CasOutcome::Mismatch {
            current: Some(current),
        } => assert_eq!(current.value, bytes("v2")),
        other => panic!("swap at a stale revision must fail, got {other:?}"),
    }
    let missing = store
        .compare_and_swap("/c/missing", Expected::ModRevision(1), Some(bytes("x")))
        .await
        .unwrap();
    assert_eq!(missing, CasOutcome::Mismatch { current: None });

    let current = store.get("/c/k").await.unwrap().unwrap().mod_revision;
    let deleted = store
        .compare_and_swap("/c/k", Expected::ModRevision(current), None)
        .await
        .unwrap();
    assert!(deleted.swapped());
    assert_eq!(
        store.get("/c/k").await.unwrap(),
        None,
        "swap to None deletes"
    );
}

/// `Expected::Value` compares the bytes.
pub async fn cas_value(store: Arc<dyn Store>) {
    store.put("/c/k", bytes("a")).await.unwrap();
    let wrong = store
        .compare_and_swap("/c/k", Expected::Value(bytes("b")), Some(bytes("c")))
        .await
        .unwrap();
    assert!(!wrong.swapped());
    let right = store
        .compare_and_swap("/c/k", Expected::Value(bytes("a")), Some(bytes("c")))
        .await
        .unwrap();
    assert!(right.swapped());
    assert_eq!(store.get("/c/k").await.unwrap().unwrap().value, bytes("c"));
}

/// Leader election: create-if-absent attached to a lease; the key goes with the lease.
pub async fn cas_with_lease(store: Arc<dyn Store>) {
    let lease = store.grant_lease(KEPT_ALIVE_TTL_MS).await.unwrap();
    let won = store
        .compare_and_swap_with_lease("/e/leader", Expected::Absent, Some(bytes("a")), Some(lease))
        .await
        .unwrap();
    assert!(won.swapped());
    assert_eq!(
        store.get("/e/leader").await.unwrap().unwrap().lease,
        Some(lease)
    );
    let lost = store
        .compare_and_swap("/e/leader", Expected::Absent, Some(bytes("b")))
        .await
        .unwrap();
    assert!(!lost.swapped(), "second candidate must lose");
    store.revoke(lease).await.unwrap();
    assert_eq!(store.get("/e/leader").await.unwrap(), None);
}

/// `Expected::CreateRevision` holds until the key is deleted, not after it is re-created.
pub async fn cas_create_revision(store: Arc<dyn Store>) {
    let created = store.put("/c/k", bytes("a")).await.unwrap();
    store.put("/c/k", bytes("b")).await.unwrap();
    let swapped = store
        .compare_and_swap("/c/k", Expected::CreateRevision(created), Some(bytes("c")))
        .await
        .unwrap();
    assert!(swapped.swapped(), "overwrites keep the create revision");
    assert!(store.delete("/c/k").await.unwrap());
    store.put("/c/k", bytes("c")).await.unwrap();
    let stale = store
        .compare_and_swap("/c/k", Expected::CreateRevision(created), Some(bytes("d")))
        .await
        .unwrap();
    assert!(
        !stale.swapped(),
        "a re-created key (same value) must not match the old create revision: {stale:?}"
    );
    let zero = store
        .compare_and_swap("/c/k", Expected::CreateRevision(0), Some(bytes("d")))
        .await
        .unwrap();
    assert!(!zero.swapped(), "no key is created at revision 0");
    let missing = store
        .compare_and_swap("/c/missing", Expected::CreateRevision(0), Some(bytes("d")))
        .await
        .unwrap();
    assert!(!missing.swapped(), "a missing key has no create revision");
    assert_eq!(store.get("/c/k").await.unwrap().unwrap().value, bytes("c"));
}

/// Wins a leader key the way an election does; returns the guard of that win.
async fn win_leader_key(store: &Arc<dyn Store>, key: &str, me: &'static str) -> Guard {
    let lease = store.grant_lease(KEPT_ALIVE_TTL_MS * 30).await.unwrap();
    let won = store
        .compare_and_swap_with_lease(key, Expected::Absent, Some(bytes(me)), Some(lease))
        .await
        .unwrap();
    let CasOutcome::Swapped { revision } = won else {
        panic!("the leader key must be free, got {won:?}");
    };
    Guard {
        key: key.to_string(),
        expected: Expected::CreateRevision(revision),
    }
}

fn put_op(key: &str, value: &'static str) -> WriteOp {
    WriteOp::Put {
        key: key.to_string(),
        value: bytes(value),
    }
}

fn delete_op(key: &str) -> WriteOp {
    WriteOp::Delete {
        key: key.to_string(),
    }
}

/// Every key under `prefix` with its value, for before/after comparisons.
async fn snapshot(store: &Arc<dyn Store>, prefix: &str) -> Vec<(String, Bytes)> {
    store
        .list(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|(key, versioned)| (key, versioned.value))
        .collect()
}

/// A guarded batch applies while its guard holds (create revision, mod revision or value),
/// all operations at one new revision, seen by watchers in order.
pub async fn guarded_batch_applies_while_the_guard_holds(store: Arc<dyn Store>) {
    let guard = win_leader_key(&store, "/f/leader", "a").await;
    store.put("/f/d/old", bytes("old")).await.unwrap();
    let mut watch = store.watch("/f/d/").await.unwrap();
    let before = store.revision().await.unwrap();
    let revision = store
        .write_batch(
            Some(&guard),
            vec![
                put_op("/f/d/a", "1"),
                put_op("/f/d/b", "2"),
                delete_op("/f/d/old"),
                delete_op("/f/d/never"),
            ],
        )
        .await
        .expect("the guard holds: the batch must apply");
    assert!(
        revision > before,
        "a batch that changes keys bumps the revision"
    );
    assert_eq!(
        store.revision().await.unwrap(),
        revision,
        "one revision for the batch"
    );
    for (key, value) in [("/f/d/a", "1"), ("/f/d/b", "2")] {
        let got = store.get(key).await.unwrap().expect("key of the batch");
        assert_eq!(
            (got.value, got.mod_revision, got.lease),
            (bytes(value), revision, None)
        );
    }
    assert_eq!(store.get("/f/d/old").await.unwrap(), None);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let event = next_event(&mut watch).await;
        assert_eq!(event.revision(), revision);
        seen.push(event.key().to_string());
    }
    assert_eq!(
        seen,
        ["/f/d/a", "/f/d/b", "/f/d/old"],
        "events in batch order"
    );

    let leader = store.get("/f/leader").await.unwrap().unwrap();
    for expected in [
        Expected::ModRevision(leader.mod_revision),
        Expected::Value(bytes("a")),
    ] {
        let guard = Guard {
            key: "/f/leader".to_string(),
            expected,
        };
        store
            .write_batch(Some(&guard), vec![put_op("/f/d/a", "3")])
            .await
            .expect("the guard holds");
    }
    assert_eq!(
        store.get("/f/d/a").await.unwrap().unwrap().value,
        bytes("3")
    );

    let current = store.revision().await.unwrap();
    let unchanged = store
        .write_batch(Some(&guard), vec![delete_op("/f/d/never")])
        .await
        .unwrap();
    assert_eq!(
        unchanged, current,
        "a batch that changes nothing does not bump"
    );
    let empty = store.write_batch(Some(&guard), Vec::new()).await.unwrap();
    assert_eq!(empty, current, "an empty batch only checks the guard");
}

/// Once the guard key is re-created by another winner (even with the same value), or
/// deleted, or never existed, a guarded batch fails with `Fenced` and applies nothing.
pub async fn guarded_batch_is_fenced_once_the_guard_changes(store: Arc<dyn Store>) {
    let old = win_leader_key(&store, "/f/leader", "a").await;
    store
        .write_batch(Some(&old), vec![put_op("/f/d/a", "mine")])
        .await
        .expect("the guard holds");

    // A new winner takes the key over, with the same value as the old holder.
    assert!(store.delete("/f/leader").await.unwrap());
    let new = win_leader_key(&store, "/f/leader", "a").await;
    assert_ne!(old, new, "a new win has a new create revision");
    let fenced = |result: crate::error::Result<u64>| match result {
        Err(StoreError::Fenced { key }) => assert_eq!(key, "/f/leader"),
        other => panic!("a deposed writer must be fenced, got {other:?}"),
    };
    let before = (
        store.revision().await.unwrap(),
        snapshot(&store, "/f/d/").await,
    );
    let stale_batch = || {
        vec![
            put_op("/f/d/a", "stale"),
            put_op("/f/d/b", "stale"),
            delete_op("/f/d/a2"),
        ]
    };
    fenced(store.write_batch(Some(&old), stale_batch()).await);
    assert_eq!(
        (
            store.revision().await.unwrap(),
            snapshot(&store, "/f/d/").await
        ),
        before,
        "a fenced batch applies nothing"
    );
    store
        .write_batch(Some(&new), vec![put_op("/f/d/a", "new")])
        .await
        .expect("the new holder writes");

    // The key is deleted (the holder's lease ended): nobody's guard holds.
    assert!(store.delete("/f/leader").await.unwrap());
    let before = (
        store.revision().await.unwrap(),
        snapshot(&store, "/f/d/").await,
    );
    fenced(store.write_batch(Some(&new), stale_batch()).await);
    fenced(store.write_batch(Some(&old), Vec::new()).await);
    let value_guard = Guard {
        key: "/f/leader".to_string(),
        expected: Expected::Value(bytes("a")),
    };
    fenced(store.write_batch(Some(&value_guard), stale_batch()).await);
    assert_eq!(
        (
            store.revision().await.unwrap(),
            snapshot(&store, "/f/d/").await
        ),
        before,
        "a fenced batch applies nothing"
    );
    assert_eq!(
        store.get("/f/d/a").await.unwrap().unwrap().value,
        bytes("new")
    );
}

/// Without a guard a batch still applies whole, at one revision.
pub async fn unguarded_batch_is_atomic(store: Arc<dyn Store>) {
    store.put("/u/gone", bytes("x")).await.unwrap();
    let revision = store
        .write_batch(None, vec![put_op("/u/a", "1"), delete_op("/u/gone")])
        .await
        .unwrap();
    assert_eq!(
        store.get("/u/a").await.unwrap().unwrap().mod_revision,
        revision
    );
    assert_eq!(store.get("/u/gone").await.unwrap(), None);
    assert_eq!(store.revision().await.unwrap(), revision);
}

/// Batches that break a limit are refused before anything is written.
pub async fn invalid_batch_is_rejected_whole(store: Arc<dyn Store>) {
    let before = store.revision().await.unwrap();
    let twice = store
        .write_batch(None, vec![put_op("/v/a", "1"), delete_op("/v/a")])
        .await;
    assert!(
        matches!(twice, Err(StoreError::InvalidBatch { .. })),
        "{twice:?}"
    );
    let too_many: Vec<WriteOp> = (0..=MAX_BATCH_OPS)
        .map(|index| put_op(&format!("/v/{index}"), "x"))
        .collect();
    let many = store.write_batch(None, too_many).await;
    assert!(
        matches!(many, Err(StoreError::InvalidBatch { .. })),
        "{many:?}"
    );
    let bad_key = store
        .write_batch(None, vec![put_op("/v/ok", "1"), put_op("", "2")])
        .await;
    assert!(
        matches!(bad_key, Err(StoreError::InvalidKey { .. })),
        "{bad_key:?}"
    );
    assert_eq!(
        store.revision().await.unwrap(),
        before,
        "nothing was written"
    );
    assert!(store.list("/v/").await.unwrap().is_empty());
}

/// Lists are sorted and exact: `/a/b/` does not include `/a/bc/..`.
pub async fn list_by_prefix(store: Arc<dyn Store>) {
    for key in ["/a/b/2", "/a/b/1", "/a/bc/1", "/a/c", "/b/b/1"] {
        store.put(key, bytes("x")).await.unwrap();
    }
    let keys = |listing: Vec<(String, _)>| -> Vec<String> {
        listing.into_iter().map(|(key, _)| key).collect()
    };
    assert_eq!(
        keys(store.list("/a/b/").await.unwrap()),
        ["/a/b/1", "/a/b/2"],
        "directory prefix must not leak into /a/bc/"
    );
    assert_eq!(
        keys(store.list("/a/b").await.unwrap()),
        ["/a/b/1", "/a/b/2", "/a/bc/1"],
        "prefixes are byte prefixes"
    );
    assert_eq!(store.list("/a/b/1").await.unwrap().len(), 1);
    assert!(store.list("/z").await.unwrap().is_empty());
    assert_eq!(store.list("/").await.unwrap().len(), 5);
    let listed = store.list("/a/c").await.unwrap();
    assert_eq!(listed[0].1, store.get("/a/c").await.unwrap().unwrap());
}

/// Puts and deletes arrive in order with the revisions the writes returned.
pub async fn watch_sees_puts_and_deletes_in_order(store: Arc<dyn Store>) {
    let mut watch = store.watch("/w/").await.unwrap();
    let first = store.put("/w/a", bytes("1")).await.unwrap();
    let second = store.put("/w/b", bytes("2")).await.unwrap();
    let third = store.put("/w/a", bytes("3")).await.unwrap();
    assert!(store.delete("/w/b").await.unwrap());
    let deleted = store.revision().await.unwrap();

    match next_event(&mut watch).await {
        WatchEvent::Put { key, value } => {
            assert_eq!(
                (key.as_str(), value.value, value.mod_revision),
                ("/w/a", bytes("1"), first)
            );
        }
        other => panic!("expected put of /w/a, got {other:?}"),
    }
    let event = next_event(&mut watch).await;
    assert_eq!((event.key(), event.revision()), ("/w/b", second));
    match next_event(&mut watch).await {
        WatchEvent::Put { key, value } => {
            assert_eq!(key, "/w/a");
            assert_eq!(value.value, bytes("3"));
            assert_eq!(value.create_revision, first);
            assert_eq!(value.mod_revision, third);
        }
        other => panic!("expected put of /w/a, got {other:?}"),
    }
    assert_eq!(
        next_event(&mut watch).await,
        WatchEvent::Delete {
            key: "/w/b".to_string(),
            revision: deleted
        }
    );
}

/// Writes before the watch are not replayed; the start revision is the current one.
pub async fn watch_starts_after_current_revision(store: Arc<dyn Store>) {
    store.put("/w/old", bytes("old")).await.unwrap();
    let before = store.revision().await.unwrap();
    let mut watch = store.watch("/w/").await.unwrap();
    assert_eq!(watch.start_revision(), before);
    let revision = store.put("/w/new", bytes("new")).await.unwrap();
    let event = next_event(&mut watch).await;
    assert_eq!(
        (event.key(), event.revision()),
        ("/w/new", revision),
        "the first event must be the first write after the watch started"
    );
}

/// Changes outside the prefix are not delivered.
pub async fn watch_filters_by_prefix(store: Arc<dyn Store>) {
    let mut watch = store.watch("/w/a/").await.unwrap();
    store.put("/w/ab", bytes("no")).await.unwrap();
    store.put("/x/a/1", bytes("no")).await.unwrap();
    store.put("/w/a/1", bytes("yes")).await.unwrap();
    assert_eq!(next_event(&mut watch).await.key(), "/w/a/1");
}

/// Concurrent writers get distinct revisions and a watcher sees them strictly increasing.
pub async fn concurrent_writes_get_distinct_revisions(store: Arc<dyn Store>) {
    const WRITERS: usize = 4;
    const WRITES_PER_WRITER: usize = 10;
    let mut watch = store.watch("/p/").await.unwrap();
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut revisions = Vec::new();
            for write in 0..WRITES_PER_WRITER {
                let key = format!("/p/{writer}/{write}");
                revisions.push(store.put(&key, Bytes::from(key.clone())).await.unwrap());
            }
            revisions
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("writer task panicked"));
    }
    all.sort_unstable();
    all.dedup();
    assert_eq!(
        all.len(),
        WRITERS * WRITES_PER_WRITER,
        "revisions must be distinct"
    );
    let mut last = watch.start_revision();
    for _ in 0..WRITERS * WRITES_PER_WRITER {
        let revision = next_event(&mut watch).await.revision();
        assert!(
            revision > last,
            "watch revisions must increase: {revision} after {last}"
        );
        last = revision;
    }
}

/// An expired lease deletes its keys, with a delete event for each.
pub async fn lease_expiry_deletes_keys(store: Arc<dyn Store>) {
    // Watch first so the deletes cannot happen before the watch exists.
    let mut watch = store.watch("/l/").await.unwrap();
    let lease = store.grant_lease(EXPIRING_TTL_MS).await.unwrap();
    store
        .put_with_lease("/l/a", bytes("1"), lease)
        .await
        .unwrap();
    store
        .put_with_lease("/l/b", bytes("2"), lease)
        .await
        .unwrap();
    store.put("/l/keep", bytes("3")).await.unwrap();
    let mut deleted = Vec::new();
    while deleted.len() < 2 {
        match next_event(&mut watch).await {
            WatchEvent::Delete { key, .. } => deleted.push(key),
            WatchEvent::Put { .. } => continue,
        }
    }
    deleted.sort();
    assert_eq!(deleted, ["/l/a", "/l/b"]);
    assert_eq!(store.get("/l/a").await.unwrap(), None);
    assert!(
        store.get("/l/keep").await.unwrap().is_some(),
        "unleased key stays"
    );
    assert!(matches!(
        store.keep_alive(lease).await,
        Err(StoreError::LeaseNotFound { .. })
    ));
}

/// Keep-alives hold a lease past its TTL; once they stop, it expires.
pub async fn keep_alive_extends_lease(store: Arc<dyn Store>) {
    const KEEP_ALIVES: u64 = 6;
    let lease = store.grant_lease(KEPT_ALIVE_TTL_MS).await.unwrap();
    store
        .put_with_lease("/l/k", bytes("1"), lease)
        .await
        .unwrap();
    let mut watch = store.watch("/l/").await.unwrap();
    // Keep-alives at a quarter of the TTL, for 1.5 TTLs in total: without them the key
    // would be gone by the end of the loop.
    for _ in 0..KEEP_ALIVES {
        tokio::time::sleep(Duration::from_millis(KEPT_ALIVE_TTL_MS / 4)).await;
        store.keep_alive(lease).await.unwrap();
    }
    assert!(
        store.get("/l/k").await.unwrap().is_some(),
        "key must survive while its lease is kept alive"
    );
    match next_event(&mut watch).await {
        WatchEvent::Delete { key, .. } => assert_eq!(key, "/l/k"),
        other => panic!("expected the key to expire, got {other:?}"),
    }
}

/// Revoking deletes the lease's keys at once and ends the lease.
pub async fn revoke_deletes_keys(store: Arc<dyn Store>) {
    let lease = store.grant_lease(KEPT_ALIVE_TTL_MS).await.unwrap();
    store
        .put_with_lease("/l/a", bytes("1"), lease)
        .await
        .unwrap();
    let mut watch = store.watch("/l/").await.unwrap();
    store.revoke(lease).await.unwrap();
    assert_eq!(store.get("/l/a").await.unwrap(), None);
    assert_eq!(next_event(&mut watch).await.key(), "/l/a");
    assert!(matches!(
        store.revoke(lease).await,
        Err(StoreError::LeaseNotFound { .. })
    ));
    assert!(matches!(
        store.put_with_lease("/l/a", bytes("2"), lease).await,
        Err(StoreError::LeaseNotFound { .. })
    ));
}

/// A plain put over a leased key detaches it: the lease ending no longer deletes it.
pub async fn put_without_lease_detaches(store: Arc<dyn Store>) {
    let lease = store.grant_lease(KEPT_ALIVE_TTL_MS).await.unwrap();
    store
        .put_with_lease("/l/a", bytes("1"), lease)
        .await
        .unwrap();
    store.put("/l/a", bytes("2")).await.unwrap();
    assert_eq!(store.get("/l/a").await.unwrap().unwrap().lease, None);
    store.revoke(lease).await.unwrap();
    assert_eq!(
        store.get("/l/a").await.unwrap().unwrap().value,
        bytes("2"),
        "a detached key must survive its old lease"
    );
}

/// Unknown leases are errors, not silent no-ops.
pub async fn unknown_lease_is_rejected(store: Arc<dyn Store>) {
    // Ids are opaque; a fresh lease's id plus a large offset is certainly not granted.
    let lease = store.grant_lease(KEPT_ALIVE_TTL_MS).await.unwrap();
    let unknown = lease.wrapping_add(1 << 40);
    assert!(matches!(
        store.put_with_lease("/l/x", bytes("1"), unknown).await,
        Err(StoreError::LeaseNotFound { lease }) if lease == unknown
    ));
    assert!(matches!(
        store.keep_alive(unknown).await,
        Err(StoreError::LeaseNotFound { .. })
    ));
    assert_eq!(store.get("/l/x").await.unwrap(), None);
}

/// Empty keys and out-of-range TTLs are refused with a specific error.
pub async fn invalid_input_is_rejected(store: Arc<dyn Store>) {
    assert!(matches!(
        store.put("", bytes("x")).await,
        Err(StoreError::InvalidKey { .. })
    ));
    assert!(matches!(
        store.grant_lease(0).await,
        Err(StoreError::InvalidTtl { ttl_ms: 0 })
    ));
    assert!(matches!(
        store.grant_lease(MIN_LEASE_TTL_MS - 1).await,
        Err(StoreError::InvalidTtl { .. })
    ));
}
