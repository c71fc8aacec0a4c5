//! [`EtcdStore`]: the [`Store`] trait on an etcd v3 cluster, through the `etcd-client` crate.
//!
//! The mapping is direct, so etcd's guarantees carry over unchanged:
//! - revisions are etcd's cluster-wide revisions;
//! - compare-and-swap is one etcd transaction: `create_revision == 0` for
//!   [`Expected::Absent`], `mod_revision == r` (and the key exists) for
//!   [`Expected::ModRevision`], `value == v` for [`Expected::Value`], `create_revision ==
//!   r` for [`Expected::CreateRevision`]; the else branch reads the key so a mismatch
//!   reports what is there;
//! - a guarded batch is one etcd transaction too: the guard's comparison, then every
//!   operation (etcd gives the whole transaction one revision);
//! - leases are etcd leases (TTL rounded up to whole seconds, etcd's unit; etcd may also
//!   raise a TTL below its own minimum, about 1.5 x its election timeout);
//! - a watch starts at `current revision + 1` on the prefix, resumes from the next
//!   revision by itself when its gRPC stream breaks (an etcd member died), and reports
//!   etcd compaction past that point as [`StoreError::WatchLagged`], like the embedded
//!   store does for a watcher that fell behind.
//!
//! Reads are linearizable (etcd's default) and every call asks for a member that has a
//! leader, so a member cut off from its quorum is never read from.

use std::collections::VecDeque;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KeyValue, PutOptions,
    Txn, TxnOp, TxnOpResponse, WatchOptions, WatchStream,
};
use tokio::sync::watch as signal;

use crate::error::{Result, StoreError};
use crate::store::Store;
use crate::types::{
    validate_batch, validate_key, validate_ttl, validate_value, CasOutcome, Expected, Guard,
    LeaseId, Revision, Versioned, Watch, WatchEvent, WriteOp,
};

/// Longest wait for one unary etcd call. A member that does not answer within this is
/// treated as down and the call fails with `Backend` (the caller retries); generous, since
/// a loaded etcd can take a few hundred ms to fsync.
pub const REQUEST_TIMEOUT_MS: u64 = 5_000;
/// Longest wait to open a TCP connection to one etcd endpoint.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// HTTP/2 keep-alive ping interval and timeout: a dead member under an open watch stream is
/// noticed within about twice this, and the watch resumes on another member.
pub const KEEP_ALIVE_INTERVAL_MS: u64 = 2_000;
/// Keys fetched per page by [`Store::list`]. Every page is read at the revision of the first
/// one, so a listing is one consistent snapshot. 64 x [`MAX_VALUE_BYTES`] fits the response
/// limit below.
///
/// [`MAX_VALUE_BYTES`]: crate::types::MAX_VALUE_BYTES
pub const LIST_PAGE_KEYS: i64 = 64;
/// Largest gRPC response accepted: one full list page of maximal values, with room to spare.
pub const MAX_RESPONSE_BYTES: usize = 128 * 1024 * 1024;
/// Times a broken watch stream is reopened in a row before the watch ends with `Backend`.
pub const WATCH_RESUME_ATTEMPTS: u32 = 10;
/// Pause between two attempts to reopen a watch stream.
pub const WATCH_RESUME_BACKOFF_MS: u64 = 200;

/// A [`Store`] on etcd. Cheap to share behind an `Arc`; all calls go through one
/// multiplexed, load-balanced gRPC channel to the given endpoints.
pub struct EtcdStore {
    client: Client,
    /// Prepended to every key, stripped from every key returned; empty by default. Lets
    /// several independent stores (tests, or clusters) share one etcd.
    namespace: String,
    /// Dropped with the store: open watches see it close and end with `None`.
    closed: signal::Sender<()>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects to the etcd cluster at `endpoints` (`host:port` or `http://host:port`) and
    /// checks that it answers.
    pub async fn connect(endpoints: &[String]) -> Result<EtcdStore> {
        Self::connect_with_namespace(endpoints, "").await
    }

    /// Like [`connect`](Self::connect), with every key living under `namespace` (for
    /// example `/tests/42`), invisible to stores with another namespace.
    pub async fn connect_with_namespace(
        endpoints: &[String],
        namespace: &str,
    ) -> Result<EtcdStore> {
        if endpoints.is_empty() {
            return Err(StoreError::backend(
                "connect",
                "no etcd endpoints given; pass at least one host:port",
            ));
        }
        let urls: Vec<String> = endpoints
            .iter()
            .map(|endpoint| {
                if endpoint.contains("://") {
                    endpoint.clone()
                } else {
                    format!("http://{endpoint}")
                }
            })
            .collect();
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .with_keep_alive(
                Duration::from_millis(KEEP_ALIVE_INTERVAL_MS),
                Duration::from_millis(KEEP_ALIVE_INTERVAL_MS),
            )
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        let client = bounded("connect", Client::connect(&urls, Some(options)))
            .await?
            .map_err(|error| {
                StoreError::backend("connect", format!("{error} (endpoints {urls:?})"))
            })?;
        let (closed, _) = signal::channel(());
        let store = EtcdStore {
            client,
            namespace: namespace.to_string(),
            closed,
        };
        // The channel connects lazily: make one call so a wrong address fails here, with
        // the endpoints in the message, rather than at the first write.
        store.revision().await.map_err(|error| {
            StoreError::backend(
                "connect",
                format!("etcd at {urls:?} does not answer: {error}"),
            )
        })?;
        Ok(store)
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.namespace)
    }

    fn versioned(&self, kv: &KeyValue) -> (String, Versioned) {
        to_versioned(self.namespace.len(), kv)
    }
}

/// Runs one etcd call with [`REQUEST_TIMEOUT_MS`].
async fn bounded<T>(
    operation: &'static str,
    call: impl std::future::Future<Output = T>,
) -> Result<T> {
    tokio::time::timeout(Duration::from_millis(REQUEST_TIMEOUT_MS), call)
        .await
        .map_err(|_| {
            StoreError::backend(
                operation,
                format!("etcd did not answer within {REQUEST_TIMEOUT_MS} ms"),
            )
        })
}

/// Maps an etcd error of a call that names `lease`: etcd says "lease not found" in two
/// ways (a gRPC NotFound status, or a keep-alive answer with TTL 0).
fn lease_error(operation: &'static str, lease: LeaseId, error: etcd_client::Error) -> StoreError {
    let lost = match &error {
        etcd_client::Error::GRpcStatus(status) => status.message().contains("lease not found"),
        etcd_client::Error::LeaseKeepAliveError(message) => message.contains("lease not found"),
        _ => false,
    };
    if lost {
        StoreError::LeaseNotFound { lease }
    } else {
        StoreError::backend(operation, error)
    }
}

fn header_revision(
    operation: &'static str,
    header: Option<&etcd_client::ResponseHeader>,
) -> Result<Revision> {
    header
        .map(|h| h.revision() as Revision)
        .ok_or_else(|| StoreError::backend(operation, "etcd answered without a response header"))
}

/// Etcd lease ids are positive i64; anything else cannot have been granted.
fn etcd_lease(lease: LeaseId) -> i64 {
    i64::try_from(lease).unwrap_or(-1)
}

fn to_versioned(namespace_len: usize, kv: &KeyValue) -> (String, Versioned) {
    let key = String::from_utf8_lossy(&kv.key()[namespace_len.min(kv.key().len())..]).into_owned();
    let versioned = Versioned {
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: kv.create_revision() as Revision,
        mod_revision: kv.mod_revision() as Revision,
        lease: (kv.lease() != 0).then_some(kv.lease() as LeaseId),
    };
    (key, versioned)
}

/// The end (exclusive) of the key range holding every key that starts with `prefix`: the
/// prefix with its last byte below 0xff incremented; `\0` (etcd's "no end") when there is
/// none, as for the empty prefix.
fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The etcd comparisons that hold exactly when `expected` holds for `full_key`; `None` if
/// it names a revision beyond etcd's range, which no key can have.
fn compares_for(full_key: &str, expected: &Expected) -> Option<Vec<Compare>> {
    let revision = |revision: Revision| i64::try_from(revision).ok();
    Some(match expected {
        Expected::Absent => vec![Compare::create_revision(full_key, CompareOp::Equal, 0)],
        // A missing key has mod_revision 0, so also require that it exists.
        Expected::ModRevision(want) => vec![
            Compare::create_revision(full_key, CompareOp::Greater, 0),
            Compare::mod_revision(full_key, CompareOp::Equal, revision(*want)?),
        ],
        // Etcd fails a value comparison on a missing key, as the trait wants.
        Expected::Value(value) => vec![Compare::value(full_key, CompareOp::Equal, value.to_vec())],
        // A missing key has create_revision 0, so also require that it exists (which makes
        // `CreateRevision(0)` false, as on every backend).
        Expected::CreateRevision(want) => vec![
            Compare::create_revision(full_key, CompareOp::Greater, 0),
            Compare::create_revision(full_key, CompareOp::Equal, revision(*want)?),
        ],
    })
}

/// TTL in etcd's unit: whole seconds, rounded up so a lease never lives shorter than asked.
fn ttl_seconds(ttl_ms: u64) -> i64 {
    ttl_ms.div_ceil(1000).max(1) as i64
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>> {
        validate_key(key)?;
        let response = bounded("get", self.client.kv_client().get(self.full_key(key), None))
            .await?
            .map_err(|e| StoreError::backend("get", e))?;
        Ok(response.kvs().first().map(|kv| self.versioned(kv).1))
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<Revision> {
        validate_key(key)?;
        validate_value(key, &value)?;
        let response = bounded(
            "put",
            self.client
                .kv_client()
                .put(self.full_key(key), value.to_vec(), None),
        )
        .await?
        .map_err(|e| StoreError::backend("put", e))?;
        header_revision("put", response.header())
    }

    async fn put_with_lease(&self, key: &str, value: Bytes, lease: LeaseId) -> Result<Revision> {
        validate_key(key)?;
        validate_value(key, &value)?;
        let options = PutOptions::new().with_lease(etcd_lease(lease));
        let response = bounded(
            "put",
            self.client
                .kv_client()
                .put(self.full_key(key), value.to_vec(), Some(options)),
        )
        .await?
        .map_err(|e| lease_error("put", lease, e))?;
        header_revision("put", response.header())
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        validate_key(key)?;
        let response = bounded(
            "delete",
            self.client.kv_client().delete(self.full_key(key), None),
        )
        .await?
        .map_err(|e| StoreError::backend("delete", e))?;
        Ok(response.deleted() > 0)
    }

    async fn compare_and_swap_with_lease(
        &self,
        key: &str,
        expected: Expected,
        new: Option<Bytes>,
        lease: Option<LeaseId>,
    ) -> Result<CasOutcome> {
        validate_key(key)?;
        if let Some(value) = &new {
            validate_value(key, value)?;
        }
        let full = self.full_key(key);
        let Some(compares) = compares_for(&full, &expected) else {
            // No etcd revision is this large: the condition cannot hold.
            return Ok(CasOutcome::Mismatch {
                current: self.get(key).await?,
            });
        };
        let write = match new {
            Some(value) => {
                let options = lease.map(|lease| PutOptions::new().with_lease(etcd_lease(lease)));
                TxnOp::put(full.clone(), value.to_vec(), options)
            }
            None => TxnOp::delete(full.clone(), None::<DeleteOptions>),
        };
        let txn = Txn::new()
            .when(compares)
            .and_then(vec![write])
            .or_else(vec![TxnOp::get(full, None::<GetOptions>)]);
        let response = bounded("compare_and_swap", self.client.kv_client().txn(txn))
            .await?
            .map_err(|e| match lease {
                Some(lease) => lease_error("compare_and_swap", lease, e),
                None => StoreError::backend("compare_and_swap", e),
            })?;
        if response.succeeded() {
            return Ok(CasOutcome::Swapped {
                revision: header_revision("compare_and_swap", response.header())?,
            });
        }
        let current = response
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                TxnOpResponse::Get(get) => Some(get.kvs().first().map(|kv| self.versioned(kv).1)),
                _ => None,
            })
            .flatten();
        Ok(CasOutcome::Mismatch { current })
    }

    async fn write_batch(&self, guard: Option<&Guard>, ops: Vec<WriteOp>) -> Result<Revision> {
        validate_batch(guard, &ops)?;
        let compares = match guard {
            Some(guard) => match compares_for(&self.full_key(&guard.key), &guard.expected) {
                Some(compares) => compares,
                // No etcd revision is this large: the guard cannot hold.
                None => {
                    return Err(StoreError::Fenced {
                        key: guard.key.clone(),
                    })
                }
            },
            None => Vec::new(),
        };
        let writes: Vec<TxnOp> = ops
            .into_iter()
            .map(|op| match op {
                WriteOp::Put { key, value } => {
                    TxnOp::put(self.full_key(&key), value.to_vec(), None::<PutOptions>)
                }
                WriteOp::Delete { key } => {
                    TxnOp::delete(self.full_key(&key), None::<DeleteOptions>)
                }
            })
            .collect();
        let txn = Txn::new().when(compares).and_then(writes);
        let response = bounded("write_batch", self.client.kv_client().txn(txn))
            .await?
            .map_err(|e| StoreError::backend("write_batch", e))?;
        if !response.succeeded() {
            let key = guard.map(|guard| guard.key.clone()).unwrap_or_default();
            return Err(StoreError::Fenced { key });
        }
        header_revision("write_batch", response.header())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>> {
        let full = self.full_key(prefix);
        // The prefix's range end, computed once; later pages start after the last key seen.
        let range_end = prefix_range_end(full.as_bytes());
        let mut start: Vec<u8> = if full.is_empty() {
            vec![0]
        } else {
            full.into_bytes()
        };
        let mut snapshot: Option<i64> = None;
        let mut listed = Vec::new();
        loop {
            let mut options = GetOptions::new()
                .with_range(range_end.clone())
                .with_limit(LIST_PAGE_KEYS);
            if let Some(revision) = snapshot {
                options = options.with_revision(revision);
            }
            let response = bounded(
                "list",
                self.client
                    .kv_client()
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .get(start.clone(), Some(options)),
            )
            .await?
            .map_err(|e| StoreError::backend("list", e))?;
            if snapshot.is_none() {
                snapshot = Some(header_revision("list", response.header())? as i64);
            }
            for kv in response.kvs() {
                listed.push(self.versioned(kv));
            }
            match response.kvs().last() {
                Some(last) if response.more() => {
                    // The smallest key after `last`.
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => return Ok(listed),
            }
        }
    }

    async fn revision(&self) -> Result<Revision> {
        let options = GetOptions::new().with_count_only();
        let response = bounded(
            "revision",
            self.client
                .kv_client()
                .get(self.full_key("/"), Some(options)),
        )
        .await?
        .map_err(|e| StoreError::backend("revision", e))?;
        header_revision("revision", response.header())
    }

    async fn watch(&self, prefix: &str) -> Result<Watch> {
        let start_revision = self.revision().await?;
        let mut state = WatchState {
            client: self.client.clone(),
            key: self.full_key(prefix).into_bytes(),
            prefix: prefix.to_string(),
            namespace_len: self.namespace.len(),
            stream: None,
            next_revision: start_revision as i64 + 1,
            pending: VecDeque::new(),
            closed: self.closed.subscribe(),
            finished: false,
        };
        // Open the stream now, so an unreachable etcd fails the call rather than the
        // first `next`.
        state.open().await?;
        Ok(Watch::new(
            start_revision,
            futures::stream::unfold(state, |mut state| async move {
                let item = state.next_item().await?;
                Some((item, state))
            }),
        ))
    }

    async fn grant_lease(&self, ttl_ms: u64) -> Result<LeaseId> {
        validate_ttl(ttl_ms)?;
        let response = bounded(
            "grant_lease",
            self.client.lease_client().grant(ttl_seconds(ttl_ms), None),
        )
        .await?
        .map_err(|e| StoreError::backend("grant_lease", e))?;
        if !response.error().is_empty() {
            return Err(StoreError::backend("grant_lease", response.error()));
        }
        Ok(response.id() as LeaseId)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        // `LeaseClient::keep_alive` opens a keep-alive stream, sends one request through
        // its lease keeper and waits for the answer (TTL 0 means the lease is gone). One
        // round trip per call is plenty at stator's renewal rate (a few per TTL).
        let (_keeper, _answers) = bounded(
            "keep_alive",
            self.client.lease_client().keep_alive(etcd_lease(lease)),
        )
        .await?
        .map_err(|e| lease_error("keep_alive", lease, e))?;
        Ok(())
    }

    async fn revoke(&self, lease: LeaseId) -> Result<()> {
        bounded(
            "revoke",
            self.client.lease_client().revoke(etcd_lease(lease)),
        )
        .await?
        .map_err(|e| lease_error("revoke", lease, e))?;
        Ok(())
    }
}

/// One watch: the gRPC stream (reopened from `next_revision` when it breaks) and the
/// events of the last response not handed out yet.
struct WatchState {
    client: Client,
    key: Vec<u8>,
    prefix: String,
    namespace_len: usize,
    stream: Option<WatchStream>,
    /// The revision the next event must have at least; where a reopened stream starts.
    next_revision: i64,
    pending: VecDeque<WatchEvent>,
    closed: signal::Receiver<()>,
    finished: bool,
}

impl WatchState {
    /// Opens the gRPC watch stream at `next_revision` and waits for etcd to confirm it.
    async fn open(&mut self) -> Result<()> {
        // An empty key with `with_prefix` means every key (etcd-client builds `\0..\0`).
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(self.next_revision);
        let mut stream = bounded(
            "watch",
            self.client
                .watch_client()
                .watch(self.key.clone(), Some(options)),
        )
        .await?
        .map_err(|e| StoreError::backend("watch", e))?;
        let created = bounded("watch", stream.message())
            .await?
            .map_err(|e| StoreError::backend("watch", e))?;
        match created {
            Some(response) if response.created() && !response.canceled() => {
                self.stream = Some(stream);
                Ok(())
            }
            Some(response) => Err(self.cancelled(&response)),
            None => Err(StoreError::backend(
                "watch",
                "etcd closed the watch stream before confirming it",
            )),
        }
    }

    /// The error for a watch etcd cancelled: compaction past our position is a lag.
    fn cancelled(&self, response: &etcd_client::WatchResponse) -> StoreError {
        if response.compact_revision() > 0 {
            StoreError::WatchLagged {
                prefix: self.prefix.clone(),
                // Revisions, not events, are known: an upper bound of what was missed.
                missed: (response.compact_revision() - self.next_revision).max(1) as u64,
            }
        } else {
            StoreError::backend(
                "watch",
                format!("etcd cancelled the watch: {}", response.cancel_reason()),
            )
        }
    }

    /// The next item of the watch stream, or `None` once it has ended.
    async fn next_item(&mut self) -> Option<Result<WatchEvent>> {
        let mut failures = 0u32;
        loop {
            if self.finished {
                return None;
            }
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            if self.stream.is_none() {
                if let Err(error) = self.open().await {
                    failures += 1;
                    let lagged = matches!(error, StoreError::WatchLagged { .. });
                    if lagged || failures >= WATCH_RESUME_ATTEMPTS {
                        self.finished = true;
                        return Some(Err(error));
                    }
                    tracing::warn!(prefix = %self.prefix, %error, "reopening etcd watch");
                    tokio::time::sleep(Duration::from_millis(WATCH_RESUME_BACKOFF_MS)).await;
                    continue;
                }
            }
            let stream = self.stream.as_mut().expect("opened above");
            let message = tokio::select! {
                message = stream.message() => message,
                // The store was dropped: end quietly, as the trait says.
                _ = self.closed.changed() => {
                    self.finished = true;
                    return None;
                }
            };
            match message {
                Ok(Some(response)) => {
                    if response.canceled() || response.compact_revision() > 0 {
                        self.finished = true;
                        return Some(Err(self.cancelled(&response)));
                    }
                    for event in response.events() {
                        let Some(kv) = event.kv() else { continue };
                        let (key, value) = to_versioned(self.namespace_len, kv);
                        self.next_revision = kv.mod_revision() + 1;
                        self.pending.push_back(match event.event_type() {
                            etcd_client::EventType::Put => WatchEvent::Put { key, value },
                            etcd_client::EventType::Delete => WatchEvent::Delete {
                                key,
                                revision: value.mod_revision,
                            },
                        });
                    }
                    failures = 0;
                }
                // The stream broke (a member died, the connection dropped): resume from
                // the next revision on whichever member the channel picks.
                Ok(None) | Err(_) => self.stream = None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounds_up_to_whole_seconds() {
        assert_eq!(ttl_seconds(50), 1);
        assert_eq!(ttl_seconds(1_000), 1);
        assert_eq!(ttl_seconds(1_001), 2);
        assert_eq!(ttl_seconds(3_000), 3);
    }

    #[test]
    fn prefix_ranges_end_after_the_prefix() {
        assert_eq!(prefix_range_end(b"/a/"), b"/a0");
        assert_eq!(prefix_range_end(b"a\xff"), b"b");
        assert_eq!(prefix_range_end(b""), b"\0");
        assert_eq!(prefix_range_end(b"\xff\xff"), b"\0");
    }

    #[test]
    fn out_of_range_lease_ids_are_never_granted_ones() {
        assert_eq!(etcd_lease(7), 7);
        assert_eq!(etcd_lease(u64::MAX), -1);
    }
}
