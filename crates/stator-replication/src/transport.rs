//! One multiplexed, authenticated, batched TCP connection per peer.
//!
//! Every Raft message of every group between two hosts, and every client call to a host,
//! travels as a length-prefixed frame over one connection per (caller, callee) pair.
//! Frames carry a request id, so many requests are in flight at once. Frames queue for the
//! connection's writer task, which coalesces whatever is queued into one `write`
//! (batching under load); a frame is written straight from the task that sends it when
//! the connection is idle (the lone-call path, see `FrameWriter`). Connections start with a challenge-response handshake proving both
//! sides know the cluster secret; with [`TransportConfig::tls`] set, the connection is
//! first wrapped in mutual TLS 1.3 (see [`crate::tls`]) and that handshake runs inside it.
//!
//! # Wire format
//! `u32` big-endian length, then that many bytes of a postcard-encoded [`Message`].

use crate::timeline::{self, Stage};
use crate::tls::TransportTls;
use crate::traffic::{CountingReader, PeerCounters, Traffic};
use crate::types::{ClientReply, ClientRequest, GroupId, NodeId, TypeConfig};
use async_trait::async_trait;
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Largest frame accepted. Snapshot chunks are capped at [`crate::SNAPSHOT_CHUNK_BYTES`]
/// and append batches at `max_payload_entries`; 32 MiB leaves room for both while
/// keeping a garbled length from allocating gigabytes.
pub const MAX_FRAME_BYTES: usize = 32 << 20;
/// Bytes of requests in flight to one peer; past it callers wait (back-pressure).
pub const MAX_INFLIGHT_BYTES: usize = 64 << 20;
/// Frames queued for one connection's writer before senders wait.
pub const MAX_QUEUED_FRAMES: usize = 8192;
/// A writer stops coalescing frames into one write at this size.
pub const MAX_BATCH_BYTES: usize = 256 << 10;
/// Time allowed to connect and authenticate.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// First and largest delay between reconnect attempts to an unreachable peer.
pub const RECONNECT_BACKOFF_MIN_MS: u64 = 5;
/// See [`RECONNECT_BACKOFF_MIN_MS`]. Four dials a second keep a dead peer cheap (a dial
/// to a dead host is bounded by [`HANDSHAKE_TIMEOUT`] and holds the peer's dial lock);
/// a peer that dials in first ends the back-off at once (`Transport::peer_is_up`).
pub const RECONNECT_BACKOFF_MAX_MS: u64 = 250;
/// Read buffer of one connection. Without it every frame costs two `recv` calls (length,
/// then body) plus one that finds nothing; with it one `recv` takes in every frame that
/// has arrived. Frames larger than this bypass it.
pub const READ_BUFFER_BYTES: usize = 64 << 10;
/// Bytes a frame's buffer first grows to before more of the frame has arrived.
const FIRST_READ_BYTES: usize = 64 << 10;
/// Bumped on any incompatible change of [`Message`] (2: batched log entries and client
/// calls; 3: quiet groups and liveness pings).
pub const PROTOCOL_VERSION: u32 = 3;

/// Transport failures; openraft treats them as "unreachable" and retries with back-off.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// No connection could be made (or the link is cut by a test fault).
    #[error("peer {addr} unreachable: {reason}")]
    Unreachable {
        /// The peer's address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The request was sent but no answer came in time; it may or may not have been applied.
    #[error("no answer from {addr} within {timeout_ms} ms")]
    Timeout {
        /// The peer's address.
        addr: String,
        /// The deadline that passed.
        timeout_ms: u64,
    },
    /// The peer broke the protocol or failed authentication; check both sides use the same
    /// cluster secret and stator version.
    #[error("protocol error with {addr}: {reason}")]
    Protocol {
        /// The peer's address.
        addr: String,
        /// What went wrong.
        reason: String,
    },
}

/// Requests a host serves.
#[derive(Debug, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)] // reason: boxed or not, the frame is decoded once and moved on
pub enum Request {
    /// Raft AppendEntries for a group.
    Append(GroupId, AppendEntriesRequest<TypeConfig>),
    /// Raft RequestVote for a group.
    Vote(GroupId, VoteRequest<NodeId>),
    /// One chunk of a Raft snapshot for a group (its bytes encoded as one byte string,
    /// see [`snapshot_chunk`]).
    InstallSnapshot(
        GroupId,
        #[serde(with = "snapshot_chunk")] InstallSnapshotRequest<TypeConfig>,
    ),
    /// A client read or write.
    Client(GroupId, ClientRequest),
    /// Ask this replica to start an election now (used to move leadership before the
    /// current leader leaves the group).
    Elect(GroupId),
    /// Client calls that waited for the same host at the same moment, in one frame (see
    /// [`crate::client`]); served together, answered in order.
    ClientBatch(Vec<(GroupId, ClientRequest)>),
    /// The leader of a group in this term asks its replica here to go quiet (see
    /// [`crate::quiesce`]).
    Quiesce(GroupId, u64),
    /// A host's liveness signal to a peer host, one per interval for all groups.
    Ping,
    /// Pre-vote: a follower about to run for election because it lost `leader`'s node
    /// asks whether this replica of the group still hears from that leader (see
    /// [`crate::quiesce`], "Elections on a liveness signal").
    LeaderLost(GroupId, NodeId),
}

/// A snapshot chunk on the wire: [`InstallSnapshotRequest`] field for field, its data
/// as one byte string (see [`crate::byte_string`]): the same bytes as the derived
/// encoding, but a 4 MiB chunk costs the sending leader's runtime a memcpy rather than
/// one serde call per byte.
mod snapshot_chunk {
    use crate::types::{NodeId, TypeConfig};
    use openraft::raft::InstallSnapshotRequest;
    use openraft::{BasicNode, SnapshotMeta, Vote};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize)]
    struct ChunkRef<'a> {
        vote: &'a Vote<NodeId>,
        meta: &'a SnapshotMeta<NodeId, BasicNode>,
        offset: u64,
        #[serde(serialize_with = "crate::byte_string::serialize")]
        data: &'a [u8],
        done: bool,
    }

    #[derive(Deserialize)]
    struct Chunk {
        vote: Vote<NodeId>,
        meta: SnapshotMeta<NodeId, BasicNode>,
        offset: u64,
        #[serde(deserialize_with = "crate::byte_string::deserialize")]
        data: Vec<u8>,
        done: bool,
    }

    pub fn serialize<S: Serializer>(
        req: &InstallSnapshotRequest<TypeConfig>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        ChunkRef {
            vote: &req.vote,
            meta: &req.meta,
            offset: req.offset,
            data: &req.data,
            done: req.done,
        }
        .serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<InstallSnapshotRequest<TypeConfig>, D::Error> {
        let c = Chunk::deserialize(deserializer)?;
        Ok(InstallSnapshotRequest {
            vote: c.vote,
            meta: c.meta,
            offset: c.offset,
            data: c.data,
            done: c.done,
        })
    }
}

/// Answers to [`Request`]s.
#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    /// To [`Request::Append`].
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// To [`Request::Vote`].
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// To [`Request::InstallSnapshot`].
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    /// To [`Request::Client`].
    Client(ClientReply),
    /// To [`Request::Elect`].
    Elect(Result<(), String>),
    /// To [`Request::ClientBatch`]: one reply per call, in order.
    ClientBatch(Vec<ClientReply>),
    /// To [`Request::Quiesce`]: whether the replica went quiet.
    Quiesce(bool),
    /// To [`Request::Ping`].
    Pong,
    /// To [`Request::LeaderLost`]: `true` when this replica has not heard from that
    /// leader either (it would vote), `false` when the leader is alive here.
    LeaderLost(bool),
    /// The host has no replica of that group (yet, or any more).
    NoGroup,
}

#[derive(Debug, Serialize, Deserialize)]
enum Message {
    Hello {
        version: u32,
        node_id: NodeId,
        listen_addr: String,
        nonce: [u8; 32],
    },
    Proof {
        mac: [u8; 32],
    },
    Request {
        id: u64,
        body: Request,
    },
    Response {
        id: u64,
        body: Response,
    },
}

/// Who is on the other end of an accepted connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The caller's node id (0 for clients such as gateways).
    pub node_id: NodeId,
    /// Where the caller itself listens ("" for clients).
    pub listen_addr: String,
}

/// Serves requests arriving over accepted connections.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    async fn handle(&self, peer: &PeerInfo, request: Request) -> Response;

    /// The connection a peer host (node id not 0) opened to us has ended: the peer closed
    /// it, the network broke, or its process died (the kernel closes a killed process's
    /// sockets at once). A hint only: it may already have reconnected.
    fn peer_gone(&self, _peer: &PeerInfo) {}
}

/// What a fault filter decides for one message on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkAction {
    /// Send normally.
    Deliver,
    /// Lose it: the caller sees a timeout.
    Drop,
    /// Deliver after a delay.
    Delay(Duration),
}

/// Test hook deciding the fate of each message from one listen address to another.
pub trait LinkFilter: Send + Sync + 'static {
    /// Fate of a message sent by `from` (a listen address, "" for clients) to `to`.
    fn check(&self, from: &str, to: &str) -> LinkAction;
}

/// Settings of one transport endpoint.
#[derive(Clone)]
pub struct TransportConfig {
    /// This host's node id (0 for clients).
    pub node_id: NodeId,
    /// Where this host listens, as peers should dial it ("" for clients).
    pub listen_addr: String,
    /// The cluster secret both sides must share.
    pub cluster_secret: String,
    /// Optional fault injection, for tests.
    pub filter: Option<Arc<dyn LinkFilter>>,
    /// Mutual TLS on every connection, dialled or accepted; `None` is plain TCP with the
    /// secret handshake only.
    pub tls: Option<Arc<TransportTls>>,
}

fn derive_key(secret: &str) -> [u8; 32] {
    blake3::derive_key("stator transport v1 cluster secret", secret.as_bytes())
}

fn proof(key: &[u8; 32], role: &[u8], nonce: &[u8; 32]) -> blake3::Hash {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(role);
    h.update(nonce);
    h.finalize()
}

/// A frame: the message's length, then the message. Sized first (a walk over the message
/// that writes nothing) so the frame is one allocation: grown byte by byte from empty, a
/// reply or a small append reallocated five to ten times on its way up.
fn encode(msg: &Message) -> Vec<u8> {
    let size = postcard::experimental::serialized_size(msg).expect("sizing cannot fail");
    let mut out = Vec::with_capacity(4 + size);
    out.extend_from_slice(&[0u8; 4]);
    postcard::to_io(msg, &mut out).expect("encoding to a Vec cannot fail");
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out
}

async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<Message> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let prefix = len;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        // A TLS record (alert 0x15 or handshake 0x16, version 3.x) read as a length.
        if matches!(prefix, [0x15 | 0x16, 0x03, ..]) {
            return Err(std::io::Error::other(
                "the peer speaks TLS and this side does not: give both sides the same --tls-* settings",
            ));
        }
        return Err(std::io::Error::other(format!(
            "frame of {len} bytes exceeds the {MAX_FRAME_BYTES}-byte limit"
        )));
    }
    buf.clear();
    // Memory follows the bytes that arrive, not the length a peer claims: a connection
    // that sends a 4-byte prefix and nothing else (before the handshake proves anything)
    // holds at most FIRST_READ_BYTES. The buffer grows geometrically, capped exactly at the
    // frame's length, so it never passes MAX_FRAME_BYTES.
    while buf.len() < len {
        if buf.len() == buf.capacity() {
            let grow_to = len.min((buf.capacity() * 2).max(FIRST_READ_BYTES));
            buf.reserve_exact(grow_to - buf.len());
        }
        let start = buf.len();
        let end = len.min(buf.capacity());
        buf.resize(end, 0);
        let n = r.read(&mut buf[start..end]).await?;
        buf.truncate(start + n);
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    postcard::from_bytes(buf).map_err(|e| std::io::Error::other(format!("garbled frame: {e}")))
}

/// Runs the handshake; returns the peer's identity.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    config: &TransportConfig,
    we_dialed: bool,
) -> std::io::Result<PeerInfo> {
    let key = derive_key(&config.cluster_secret);
    let nonce: [u8; 32] = rand::random();
    let hello = Message::Hello {
        version: PROTOCOL_VERSION,
        node_id: config.node_id,
        listen_addr: config.listen_addr.clone(),
        nonce,
    };
    stream.write_all(&encode(&hello)).await?;
    // A no-op on TCP; TLS may hold the bytes until flushed.
    stream.flush().await?;
    let mut buf = Vec::new();
    let (peer, peer_nonce) = match read_message(stream, &mut buf).await? {
        Message::Hello { version, node_id, listen_addr, nonce } if version == PROTOCOL_VERSION => {
            (PeerInfo { node_id, listen_addr }, nonce)
        }
        Message::Hello { version, .. } => {
            return Err(std::io::Error::other(format!(
                "peer speaks transport version {version}, this host {PROTOCOL_VERSION}: upgrade the older side"
            )))
        }
        _ => return Err(std::io::Error::other("expected Hello")),
    };
    // Roles differ so a proof made on one connection cannot be replayed on another.
    let (my_role, peer_role): (&[u8], &[u8]) = if we_dialed {
        (b"dialer", b"listener")
    } else {
        (b"listener", b"dialer")
    };
    let mac = *proof(&key, my_role, &peer_nonce).as_bytes();
    stream.write_all(&encode(&Message::Proof { mac })).await?;
    stream.flush().await?;
    match read_message(stream, &mut buf).await? {
        Message::Proof { mac } if proof(&key, peer_role, &nonce) == blake3::Hash::from(mac) => {
            Ok(peer)
        }
        Message::Proof { .. } => Err(std::io::Error::other(
            "peer failed authentication: both sides must use the same cluster secret",
        )),
        _ => Err(std::io::Error::other("expected Proof")),
    }
}

/// The write half of a connection, boxed so dialled and accepted, plain and TLS
/// connections share one writer. `None` once it has failed or was closed.
type BoxedWrite = Option<Box<dyn AsyncWrite + Send + Unpin>>;

/// Writes one connection's outgoing frames, in the order their sends began.
///
/// A frame is written straight from the sending task when the connection is idle (no
/// write in progress, nothing queued): no hand-off to another task, no extra wake-up.
/// When a write is in progress the frame joins a queue that [`writer_task`] drains,
/// coalescing whatever queued meanwhile into one `write` (batching under load). A
/// direct write never overtakes a queued frame: it happens only under the write lock
/// and when [`FrameWriter::queued`] is zero, and the writer task counts a frame out only
/// after it wrote it.
struct FrameWriter {
    out: Arc<tokio::sync::Mutex<BoxedWrite>>,
    queue: mpsc::Sender<Vec<u8>>,
    /// Frames handed to the queue and not yet written.
    queued: Arc<AtomicUsize>,
    counters: Arc<PeerCounters>,
}

impl FrameWriter {
    /// Wraps `w` and starts its writer task (which ends, shutting `w` down, once every
    /// clone of the returned writer is dropped).
    fn start<W: AsyncWrite + Send + Unpin + 'static>(
        w: W,
        counters: Arc<PeerCounters>,
    ) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let out: Arc<tokio::sync::Mutex<BoxedWrite>> =
            Arc::new(tokio::sync::Mutex::new(Some(Box::new(w))));
        let queued = Arc::new(AtomicUsize::new(0));
        let (queue, rx) = mpsc::channel(MAX_QUEUED_FRAMES);
        let task = tokio::spawn(writer_task(
            out.clone(),
            rx,
            queued.clone(),
            counters.clone(),
        ));
        let writer = Arc::new(Self {
            out,
            queue,
            queued,
            counters,
        });
        (writer, task)
    }

    /// Sends `frame`: written at once from this task when the connection is idle,
    /// queued for the writer task otherwise. `Err` when the connection is closed.
    ///
    /// Cancel-safe: a direct write that cannot finish at once (a full socket buffer)
    /// is finished by a spawned task holding the write lock, so a dropped caller never
    /// leaves half a frame on the wire.
    async fn send(&self, frame: Vec<u8>) -> Result<(), ()> {
        if self.queued.load(Ordering::SeqCst) == 0 {
            if let Ok(guard) = self.out.clone().try_lock_owned() {
                // Checked again under the lock: the writer task counts a frame out only
                // after writing it, so zero here means every earlier frame is out.
                if self.queued.load(Ordering::SeqCst) == 0 {
                    return self.write_now(guard, frame);
                }
            }
        }
        self.queued.fetch_add(1, Ordering::SeqCst);
        if self.queue.send(frame).await.is_err() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(());
        }
        Ok(())
    }

    fn write_now(
        &self,
        mut guard: tokio::sync::OwnedMutexGuard<BoxedWrite>,
        frame: Vec<u8>,
    ) -> Result<(), ()> {
        let Some(w) = guard.as_mut() else {
            return Err(());
        };
        // One attempt, right here: on loopback or an idle link the kernel takes the whole
        // frame at once, and that is the end of it (no future, no allocation). The waker is
        // a no-op because whatever is left is handed to a task that polls with its own.
        let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
        let written = match std::pin::Pin::new(&mut **w).poll_write(&mut cx, &frame) {
            std::task::Poll::Ready(Ok(0)) if !frame.is_empty() => None,
            std::task::Poll::Ready(Ok(n)) => Some(n),
            std::task::Poll::Ready(Err(_)) => None,
            std::task::Poll::Pending => Some(0),
        };
        let Some(written) = written else {
            *guard = None;
            return Err(());
        };
        if written == frame.len() {
            // flush: a no-op on TCP, sends the buffered records on TLS.
            match std::pin::Pin::new(&mut **w).poll_flush(&mut cx) {
                std::task::Poll::Ready(Ok(())) => {
                    self.counters.sent(frame.len());
                    return Ok(());
                }
                std::task::Poll::Ready(Err(_)) => {
                    *guard = None;
                    return Err(());
                }
                std::task::Poll::Pending => {}
            }
        }
        // A full socket buffer (or TLS records still to flush): a task holding the write
        // lock finishes the frame, so a dropped caller never leaves half of it on the wire.
        let counters = self.counters.clone();
        tokio::spawn(async move {
            let w = guard.as_mut().expect("checked above");
            let done = w.write_all(&frame[written..]).await.is_ok() && w.flush().await.is_ok();
            if done {
                counters.sent(frame.len());
            } else {
                *guard = None;
            }
        });
        Ok(())
    }

    /// Drops the write half (a FIN on plain TCP) as soon as no write holds it; later
    /// sends fail.
    fn close(&self) {
        match self.out.try_lock() {
            Ok(mut out) => *out = None,
            Err(_) => {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let out = self.out.clone();
                    runtime.spawn(async move { *out.lock().await = None });
                }
            }
        }
    }
}

/// Drains a [`FrameWriter`]'s queue: takes the write lock for the first queued frame,
/// coalesces whatever else is queued into the same `write`, and counts the frames out.
async fn writer_task(
    out: Arc<tokio::sync::Mutex<BoxedWrite>>,
    mut rx: mpsc::Receiver<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    counters: Arc<PeerCounters>,
) {
    let mut batch = Vec::with_capacity(64 << 10);
    while let Some(frame) = rx.recv().await {
        let mut guard = out.lock().await;
        batch.extend_from_slice(&frame);
        let mut frames = 1;
        while batch.len() < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(frame) => {
                    batch.extend_from_slice(&frame);
                    frames += 1;
                }
                Err(_) => break,
            }
        }
        let Some(w) = guard.as_mut() else {
            break;
        };
        // flush: a no-op on TCP, sends the buffered records on TLS.
        if w.write_all(&batch).await.is_err() || w.flush().await.is_err() {
            *guard = None;
            break;
        }
        counters.sent(batch.len());
        batch.clear();
        queued.fetch_sub(frames, Ordering::SeqCst);
    }
    // Tells the peer we are done (FIN; close_notify first on TLS) even while our read half
    // lives on, so its side of the connection ends too.
    if let Some(mut w) = out.lock().await.take() {
        let _ = w.shutdown().await;
    }
}

struct Conn {
    /// The node id the host at the other end proved in the handshake.
    peer_node: NodeId,
    writer: Arc<FrameWriter>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Response>>>,
    next_id: AtomicU64,
    closed: AtomicBool,
    inflight: Semaphore,
    /// The writer task, aborted when the connection is dropped on purpose.
    writer_task: tokio::task::AbortHandle,
}

struct Peer {
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    /// (earliest next attempt, current delay), for capped exponential back-off.
    backoff: Mutex<(Instant, u64)>,
}

/// A transport endpoint: dials peers (lazily, one connection each) and, when
/// [`Transport::serve`] runs, answers requests with a [`Handler`].
pub struct Transport {
    config: TransportConfig,
    peers: Mutex<HashMap<String, Arc<Peer>>>,
    /// Bytes per peer node, both directions, dialled and accepted connections alike.
    traffic: Traffic,
}

impl Transport {
    /// A new endpoint; nothing is dialled until the first call.
    pub fn new(config: TransportConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            peers: Mutex::new(HashMap::new()),
            traffic: Traffic::default(),
        })
    }

    /// Bytes sent to and received from each peer node so far.
    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    /// This endpoint's settings.
    pub fn config(&self) -> &TransportConfig {
        &self.config
    }

    /// Sends `request` to the host at `addr` and waits up to `timeout` for its answer.
    pub async fn call(
        &self,
        addr: &str,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        self.call_checked(addr, None, request, timeout).await
    }

    /// [`Transport::call`] to node `node` at `addr`: refused as unreachable when another
    /// node answers there. A node that died and was replaced by a new node on the same
    /// address (an agent restarted on its port gets a new id) must not receive Raft
    /// messages meant for the old one: it would answer for a member it is not (counted
    /// twice towards a quorum) or, as a leader, receive its own appends.
    pub async fn call_node(
        &self,
        addr: &str,
        node: NodeId,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        self.call_checked(addr, Some(node), request, timeout).await
    }

    async fn call_checked(
        &self,
        addr: &str,
        node: Option<NodeId>,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        if let Some(filter) = &self.config.filter {
            match filter.check(&self.config.listen_addr, addr) {
                LinkAction::Deliver => {}
                LinkAction::Drop => {
                    tokio::time::sleep(timeout).await;
                    return Err(TransportError::Timeout {
                        addr: addr.into(),
                        timeout_ms: timeout.as_millis() as u64,
                    });
                }
                LinkAction::Delay(d) => tokio::time::sleep(d).await,
            }
        }
        let conn = self.connection(addr).await?;
        if let Some(node) = node.filter(|&node| node != conn.peer_node) {
            return Err(TransportError::Unreachable {
                addr: addr.into(),
                reason: format!(
                    "node {node} no longer listens there: node {} does",
                    conn.peer_node
                ),
            });
        }
        let id = conn.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = encode(&Message::Request { id, body: request });
        if frame.len() - 4 > MAX_FRAME_BYTES {
            return Err(TransportError::Protocol {
                addr: addr.into(),
                reason: format!("request of {} bytes exceeds the frame limit", frame.len()),
            });
        }
        let permits = frame.len().min(MAX_INFLIGHT_BYTES) as u32;
        let _inflight = conn
            .inflight
            .acquire_many(permits)
            .await
            .expect("semaphore never closed");
        let (tx, rx) = oneshot::channel();
        conn.pending
            .lock()
            .expect("pending mutex poisoned")
            .insert(id, tx);
        if conn.writer.send(frame).await.is_err() {
            conn.closed.store(true, Ordering::Relaxed);
            conn.pending
                .lock()
                .expect("pending mutex poisoned")
                .remove(&id);
            return Err(TransportError::Unreachable {
                addr: addr.into(),
                reason: "connection closed".into(),
            });
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(_)) => Err(TransportError::Unreachable {
                addr: addr.into(),
                reason: "connection lost".into(),
            }),
            Err(_) => {
                conn.pending
                    .lock()
                    .expect("pending mutex poisoned")
                    .remove(&id);
                Err(TransportError::Timeout {
                    addr: addr.into(),
                    timeout_ms: timeout.as_millis() as u64,
                })
            }
        }
    }

    /// Closes every connection this endpoint dialled (peers see them end, as when its
    /// process dies) and forgets them; a later call dials again.
    pub fn disconnect_all(&self) {
        let peers = std::mem::take(&mut *self.peers.lock().expect("peers mutex poisoned"));
        for peer in peers.values() {
            // A dial in progress holds the lock; its connection is left to the peer.
            if let Ok(conn) = peer.conn.try_lock() {
                if let Some(conn) = conn.as_ref() {
                    conn.closed.store(true, Ordering::Relaxed);
                    conn.writer_task.abort();
                    conn.writer.close();
                }
            }
        }
    }

    fn peer(&self, addr: &str) -> Arc<Peer> {
        let mut peers = self.peers.lock().expect("peers mutex poisoned");
        // Looked up first: the key is copied only for a new peer, not on every call.
        if let Some(peer) = peers.get(addr) {
            return peer.clone();
        }
        peers
            .entry(addr.to_string())
            .or_insert_with(|| {
                Arc::new(Peer {
                    conn: tokio::sync::Mutex::new(None),
                    backoff: Mutex::new((Instant::now(), 0)),
                })
            })
            .clone()
    }

    /// A peer that has just proved itself in a handshake on our listener is up: the
    /// back-off from its downtime must not delay our own next call to it (a restarted
    /// member would otherwise wait up to [`RECONNECT_BACKOFF_MAX_MS`] for its tail).
    fn peer_is_up(&self, listen_addr: &str) {
        let peer = self
            .peers
            .lock()
            .expect("peers mutex poisoned")
            .get(listen_addr)
            .cloned();
        if let Some(peer) = peer {
            *peer.backoff.lock().expect("backoff mutex poisoned") = (Instant::now(), 0);
        }
    }

    async fn connection(&self, addr: &str) -> Result<Arc<Conn>, TransportError> {
        let peer = self.peer(addr);
        // Fast path: the live connection, without queueing behind other callers for the
        // dial lock (held across an await only while a connection is being made).
        if let Ok(slot) = peer.conn.try_lock() {
            if let Some(conn) = slot.as_ref().filter(|c| !c.closed.load(Ordering::Relaxed)) {
                return Ok(conn.clone());
            }
        }
        let mut slot = peer.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            if !conn.closed.load(Ordering::Relaxed) {
                return Ok(conn.clone());
            }
        }
        *slot = None;
        {
            let backoff = peer.backoff.lock().expect("backoff mutex poisoned");
            if Instant::now() < backoff.0 {
                return Err(TransportError::Unreachable {
                    addr: addr.into(),
                    reason: "backing off after a failed connect".into(),
                });
            }
        }
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.dial(addr)).await {
            Ok(Ok(conn)) => {
                *peer.backoff.lock().expect("backoff mutex poisoned") = (Instant::now(), 0);
                *slot = Some(conn.clone());
                Ok(conn)
            }
            result => {
                let reason = match result {
                    Ok(Err(e)) => e.to_string(),
                    _ => "connect timed out".to_string(),
                };
                let mut backoff = peer.backoff.lock().expect("backoff mutex poisoned");
                let delay =
                    (backoff.1 * 2).clamp(RECONNECT_BACKOFF_MIN_MS, RECONNECT_BACKOFF_MAX_MS);
                *backoff = (Instant::now() + Duration::from_millis(delay), delay);
                Err(TransportError::Unreachable {
                    addr: addr.into(),
                    reason,
                })
            }
        }
    }

    async fn dial(&self, addr: &str) -> std::io::Result<Arc<Conn>> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        match &self.config.tls {
            None => {
                let mut stream = stream;
                let peer = handshake(&mut stream, &self.config, true).await?;
                let (r, w) = stream.into_split();
                Ok(start_dialled(
                    r,
                    w,
                    peer.node_id,
                    self.traffic.peer(peer.node_id),
                ))
            }
            Some(tls) => {
                let mut stream = tls.connect(addr, stream).await?;
                let peer = handshake(&mut stream, &self.config, true).await?;
                let (r, w) = tokio::io::split(stream);
                Ok(start_dialled(
                    r,
                    w,
                    peer.node_id,
                    self.traffic.peer(peer.node_id),
                ))
            }
        }
    }

    /// Accepts connections on `listener` and answers their requests with `handler`
    /// until the returned task is aborted.
    pub fn serve(
        self: &Arc<Self>,
        listener: TcpListener,
        handler: Arc<dyn Handler>,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            // Accepted connections live in this set: aborting the returned task (a host
            // shutting down) closes them too, as a crash would, so callers reconnect to
            // whatever listens on the address next.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else {
                            continue;
                        };
                        let this = this.clone();
                        let handler = handler.clone();
                        connections.spawn(async move {
                            if let Err(e) = this.serve_connection(stream, handler).await {
                                tracing::debug!("connection ended: {e}");
                            }
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        })
    }

    async fn serve_connection(
        self: Arc<Self>,
        stream: TcpStream,
        handler: Arc<dyn Handler>,
    ) -> std::io::Result<()> {
        stream.set_nodelay(true)?;
        let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
        let timed_out = |_| std::io::Error::other("handshake timed out");
        match self.config.tls.clone() {
            None => {
                let mut stream = stream;
                let peer =
                    tokio::time::timeout_at(deadline, handshake(&mut stream, &self.config, false))
                        .await
                        .map_err(timed_out)??;
                let (r, w) = stream.into_split();
                self.serve_requests(peer, r, w, handler).await
            }
            Some(tls) => {
                let mut stream = tokio::time::timeout_at(deadline, tls.accept(stream))
                    .await
                    .map_err(timed_out)??;
                let peer =
                    tokio::time::timeout_at(deadline, handshake(&mut stream, &self.config, false))
                        .await
                        .map_err(timed_out)??;
                let (r, w) = tokio::io::split(stream);
                self.serve_requests(peer, r, w, handler).await
            }
        }
    }

    /// Answers the requests of one authenticated caller until it goes away.
    async fn serve_requests<R, W>(
        self: Arc<Self>,
        peer: PeerInfo,
        r: R,
        w: W,
        handler: Arc<dyn Handler>,
    ) -> std::io::Result<()>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        self.peer_is_up(&peer.listen_addr);
        let counters = self.traffic.peer(peer.node_id);
        let peer = Arc::new(peer);
        let mut r = tokio::io::BufReader::with_capacity(
            READ_BUFFER_BYTES,
            CountingReader::new(r, counters.clone()),
        );
        let (writer, writer_task) = FrameWriter::start(w, counters);
        let mut buf = Vec::new();
        let result = loop {
            match read_message(&mut r, &mut buf).await {
                Ok(Message::Request { id, body }) => {
                    let traced = timeline::enabled().then(|| traced_request(&body)).flatten();
                    if let Some((read, _)) = traced {
                        timeline::mark(read);
                    }
                    let (handler, peer, writer, this) =
                        (handler.clone(), peer.clone(), writer.clone(), self.clone());
                    tokio::spawn(async move {
                        let body = handler.handle(&peer, body).await;
                        if let Some(filter) = &this.config.filter {
                            match filter.check(&this.config.listen_addr, &peer.listen_addr) {
                                LinkAction::Deliver => {}
                                LinkAction::Drop => return,
                                LinkAction::Delay(d) => tokio::time::sleep(d).await,
                            }
                        }
                        let _ = writer.send(encode(&Message::Response { id, body })).await;
                        if let Some((_, sent)) = traced {
                            timeline::mark(sent);
                        }
                    });
                }
                Ok(_) => break Err(std::io::Error::other("unexpected message from a caller")),
                Err(e) => break Err(e),
            }
        };
        drop(writer);
        if peer.node_id != 0 {
            handler.peer_gone(&peer);
        }
        let _ = writer_task.await;
        result
    }
}

/// The [`timeline`] stages of a request a write's path passes (its frame read, its
/// answer sent): a client call at the leader, an append carrying entries at a follower.
fn traced_request(body: &Request) -> Option<(Stage, Stage)> {
    match body {
        Request::Client(..) | Request::ClientBatch(..) => {
            Some((Stage::LeaderRead, Stage::ReplySent))
        }
        Request::Append(_, rpc) if !rpc.entries.is_empty() => {
            Some((Stage::FollowerRead, Stage::FollowerReplied))
        }
        _ => None,
    }
}

/// Fuzzing entry point (`fuzz/fuzz_targets/transport_frame.rs`), not an API: reads
/// frames from `bytes` as a connection does until one is refused or the bytes run out.
/// Returns every decoded message re-encoded as a frame, and the read buffer's capacity.
#[doc(hidden)]
pub fn fuzz_read_frames(mut bytes: &[u8]) -> (Vec<Vec<u8>>, usize) {
    use futures::FutureExt;
    let (mut buf, mut frames) = (Vec::new(), Vec::new());
    // Reading from a slice never waits, so one poll completes the future.
    while let Some(Ok(message)) = read_message(&mut bytes, &mut buf).now_or_never() {
        frames.push(encode(&message));
    }
    (frames, buf.capacity())
}

/// Starts the writer and the reply reader of a connection we dialled and authenticated.
fn start_dialled<R, W>(r: R, w: W, peer_node: NodeId, counters: Arc<PeerCounters>) -> Arc<Conn>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (writer, writer_task) = FrameWriter::start(w, counters.clone());
    let conn = Arc::new(Conn {
        peer_node,
        writer,
        writer_task: writer_task.abort_handle(),
        pending: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
        closed: AtomicBool::new(false),
        inflight: Semaphore::new(MAX_INFLIGHT_BYTES),
    });
    let reader_conn = conn.clone();
    tokio::spawn(async move {
        let mut r = tokio::io::BufReader::with_capacity(
            READ_BUFFER_BYTES,
            CountingReader::new(r, counters),
        );
        let mut buf = Vec::new();
        loop {
            match read_message(&mut r, &mut buf).await {
                Ok(Message::Response { id, body }) => {
                    if matches!(body, Response::Client(_) | Response::ClientBatch(_)) {
                        timeline::mark(Stage::ClientReplyRead);
                    }
                    let waiter = reader_conn
                        .pending
                        .lock()
                        .expect("pending mutex poisoned")
                        .remove(&id);
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(body);
                    }
                }
                Ok(other) => {
                    tracing::warn!("unexpected message on a dialled connection: {other:?}");
                    break;
                }
                Err(_) => break,
            }
        }
        reader_conn.closed.store(true, Ordering::Relaxed);
        // Dropping the waiters fails every pending call at once.
        reader_conn
            .pending
            .lock()
            .expect("pending mutex poisoned")
            .clear();
    });
    conn
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::RequestKind;

    /// A snapshot chunk encodes to the very bytes openraft's derived encoding gives (so
    /// peers on either side of the change read each other), and decodes back whole.
    #[test]
    fn a_snapshot_chunk_is_written_as_the_derived_encoding_writes_it() {
        let chunk = InstallSnapshotRequest::<TypeConfig> {
            vote: openraft::Vote::new_committed(3, 1),
            meta: openraft::SnapshotMeta {
                last_log_id: Some(openraft::LogId::new(
                    openraft::CommittedLeaderId::new(3, 1),
                    42,
                )),
                last_membership: Default::default(),
                snapshot_id: "3-1-42-1".into(),
            },
            offset: 4 << 20,
            data: (0..=255u8).cycle().take(70_000).collect(),
            done: false,
        };
        #[derive(Serialize)]
        struct Derived<'a>(GroupId, &'a InstallSnapshotRequest<TypeConfig>);
        let group = GroupId::new(7, 2);
        let request = Request::InstallSnapshot(group, chunk.clone());
        let ours = postcard::to_allocvec(&request).unwrap();
        // The enum's variant index, then the derived fields.
        let mut derived = postcard::to_allocvec(&2u32).unwrap();
        derived.extend(postcard::to_allocvec(&Derived(group, &chunk)).unwrap());
        assert_eq!(ours, derived);
        match postcard::from_bytes::<Request>(&ours).unwrap() {
            Request::InstallSnapshot(g, back) => {
                assert_eq!(g, group);
                assert_eq!(back, chunk);
            }
            other => panic!("decoded as {other:?}"),
        }
    }

    struct Echo;
    #[async_trait]
    impl Handler for Echo {
        async fn handle(&self, _peer: &PeerInfo, request: Request) -> Response {
            match request {
                Request::Client(_, req) => Response::Client(ClientReply::Ok(req.payload)),
                _ => Response::NoGroup,
            }
        }
    }

    fn config(secret: &str, addr: &str) -> TransportConfig {
        TransportConfig {
            node_id: 1,
            listen_addr: addr.into(),
            cluster_secret: secret.into(),
            filter: None,
            tls: None,
        }
    }

    fn client_request(payload: &[u8]) -> Request {
        Request::Client(
            GroupId(1),
            ClientRequest {
                client_id: 1,
                seq: 1,
                kind: RequestKind::Write,
                payload: payload.to_vec(),
            },
        )
    }

    async fn server(secret: &str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        Transport::new(config(secret, &addr)).serve(listener, Arc::new(Echo));
        addr
    }

    #[tokio::test]
    async fn many_requests_share_one_connection() {
        let addr = server("s3cret").await;
        let client = Transport::new(config("s3cret", ""));
        let calls = (0..200u32).map(|i| {
            let client = client.clone();
            let addr = addr.clone();
            async move {
                client
                    .call(
                        &addr,
                        client_request(&i.to_be_bytes()),
                        Duration::from_secs(5),
                    )
                    .await
            }
        });
        let replies = futures::future::join_all(calls).await;
        for (i, reply) in replies.into_iter().enumerate() {
            match reply.unwrap() {
                Response::Client(ClientReply::Ok(p)) => assert_eq!(p, (i as u32).to_be_bytes()),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(client.peers.lock().unwrap().len(), 1);
    }

    /// Answers after a delay given in the payload, so replies come back out of order.
    struct SlowEcho;
    #[async_trait]
    impl Handler for SlowEcho {
        async fn handle(&self, _peer: &PeerInfo, request: Request) -> Response {
            match request {
                Request::Client(_, req) => {
                    tokio::time::sleep(Duration::from_millis(u64::from(req.payload[0] % 8))).await;
                    Response::Client(ClientReply::Ok(req.payload))
                }
                _ => Response::NoGroup,
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_direct_and_queued_calls_each_get_their_own_reply() {
        // Many callers on two threads race for the idle connection: some write their frame
        // directly, the rest queue behind a busy writer. Every call gets its own answer.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        Transport::new(config("s", &addr)).serve(listener, Arc::new(SlowEcho));
        let client = Transport::new(config("s", ""));
        let tasks: Vec<_> = (0..500u32)
            .map(|i| {
                let (client, addr) = (client.clone(), addr.clone());
                // Some payloads are large, so a write is sometimes still in progress.
                let size = if i.is_multiple_of(50) { 512 << 10 } else { 16 };
                tokio::spawn(async move {
                    let mut payload = vec![0u8; size];
                    payload[..4].copy_from_slice(&i.to_le_bytes());
                    let reply = client
                        .call(&addr, client_request(&payload), Duration::from_secs(60))
                        .await;
                    (payload, reply)
                })
            })
            .collect();
        for task in tasks {
            let (sent, reply) = task.await.unwrap();
            match reply.unwrap() {
                Response::Client(ClientReply::Ok(got)) => assert!(got == sent, "a reply crossed"),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn frames_leave_in_the_order_their_sends_began() {
        // A writer that takes a few bytes per poll and is sometimes not ready: direct
        // writes, queued frames and writes finished by a spawned task all interleave.
        struct Trickle {
            out: Arc<Mutex<Vec<u8>>>,
            polls: usize,
        }
        impl AsyncWrite for Trickle {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                self.polls += 1;
                if self.polls.is_multiple_of(3) {
                    cx.waker().wake_by_ref();
                    return std::task::Poll::Pending;
                }
                let n = buf.len().min(7);
                self.out.lock().unwrap().extend_from_slice(&buf[..n]);
                std::task::Poll::Ready(Ok(n))
            }
            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }
            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }
        }
        let out = Arc::new(Mutex::new(Vec::new()));
        let (writer, task) = FrameWriter::start(
            Trickle {
                out: out.clone(),
                polls: 0,
            },
            Arc::new(PeerCounters::default()),
        );
        // One sender, frames sent one after another without waiting for the wire: each
        // send begins after the previous one returned, so the order is fixed.
        let frames: Vec<Vec<u8>> = (0..300u32)
            .map(|i| {
                encode(&Message::Request {
                    id: u64::from(i),
                    body: client_request(&vec![i as u8; (i as usize * 13) % 200]),
                })
            })
            .collect();
        for frame in &frames {
            writer.send(frame.clone()).await.unwrap();
            if frame.len().is_multiple_of(5) {
                tokio::task::yield_now().await;
            }
        }
        drop(writer);
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the writer task ends once its senders are gone")
            .unwrap();
        let wire = out.lock().unwrap().clone();
        assert_eq!(wire, frames.concat(), "frames left out of order or torn");
    }

    #[tokio::test]
    async fn a_call_to_a_node_answered_by_another_node_is_refused() {
        // The server proves node id 1 (see `config`): a node restarted on the address of a
        // dead one must not receive what was meant for the dead one.
        let addr = server("s3cret").await;
        let client = Transport::new(config("s3cret", ""));
        let timeout = Duration::from_secs(5);
        let err = client
            .call_node(&addr, 7, client_request(b"x"), timeout)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, TransportError::Unreachable { reason, .. } if reason.contains("node 7 no longer listens there")),
            "{err}"
        );
        match client
            .call_node(&addr, 1, client_request(b"y"), timeout)
            .await
        {
            Ok(Response::Client(ClientReply::Ok(p))) => assert_eq!(p, b"y"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn wrong_secret_is_refused() {
        let addr = server("right").await;
        let client = Transport::new(config("wrong", ""));
        let err = client
            .call(&addr, client_request(b"x"), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, TransportError::Unreachable { .. }), "{err}");
    }

    #[tokio::test]
    async fn garbage_and_oversized_frames_close_only_that_connection() {
        let addr = server("s").await;
        // Oversized length prefix, then pure garbage, on raw sockets.
        for junk in [
            vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3],
            vec![0, 0, 0, 3, 0xde, 0xad, 0xbe],
        ] {
            let mut raw = TcpStream::connect(&addr).await.unwrap();
            raw.write_all(&junk).await.unwrap();
            let mut sink = Vec::new();
            // The server closes the connection; reading sees EOF (after its Hello).
            let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut sink))
                .await
                .unwrap();
        }
        let client = Transport::new(config("s", ""));
        let reply = client
            .call(&addr, client_request(b"ok"), Duration::from_secs(5))
            .await
            .unwrap();
        assert!(matches!(reply, Response::Client(ClientReply::Ok(p)) if p == b"ok"));
    }

    #[tokio::test]
    async fn unreachable_peer_fails_fast_then_backs_off() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let client = Transport::new(config("s", ""));
        let first = client
            .call(&addr, client_request(b"x"), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(first, TransportError::Unreachable { .. }));
        let second = client
            .call(&addr, client_request(b"x"), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            second.to_string().contains("backing off")
                || matches!(second, TransportError::Unreachable { .. })
        );
    }

    #[tokio::test]
    async fn a_peer_that_dials_in_ends_our_back_off_towards_it() {
        let listener_a = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr_a = listener_a.local_addr().unwrap().to_string();
        let a = Transport::new(config("s", &addr_a));
        a.clone().serve(listener_a, Arc::new(Echo));
        // B's port is reserved but nobody serves it yet; A has backed off from it for a minute.
        let listener_b = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr_b = listener_b.local_addr().unwrap().to_string();
        *a.peer(&addr_b).backoff.lock().unwrap() = (
            Instant::now() + Duration::from_secs(60),
            RECONNECT_BACKOFF_MAX_MS,
        );
        let refused = a
            .call(&addr_b, client_request(b"x"), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("backing off"), "{refused}");
        // B comes back and calls A: the handshake proves B is up.
        let b = Transport::new(config("s", &addr_b));
        b.clone().serve(listener_b, Arc::new(Echo));
        b.call(&addr_a, client_request(b"hi"), Duration::from_secs(5))
            .await
            .unwrap();
        let reply = a
            .call(&addr_b, client_request(b"back"), Duration::from_secs(5))
            .await
            .unwrap();
        assert!(matches!(reply, Response::Client(ClientReply::Ok(p)) if p == b"back"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]

        /// Arbitrary bytes from a peer never panic the decoder and never make it allocate
        /// past the frame limit: they decode or are refused.
        #[test]
        fn decoder_survives_arbitrary_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let mut reader = bytes.as_slice();
                let mut buf = Vec::new();
                while read_message(&mut reader, &mut buf).await.is_ok() {}
                assert!(buf.capacity() <= MAX_FRAME_BYTES.max(512));
            });
        }

        /// Every message survives an encode/decode round trip.
        #[test]
        fn frames_round_trip(payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096), id in 0u64..u64::MAX) {
            let msg = Message::Request { id, body: client_request(&payload) };
            let bytes = encode(&msg);
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let decoded = rt.block_on(async { read_message(&mut bytes.as_slice(), &mut Vec::new()).await.unwrap() });
            match decoded {
                Message::Request { id: got, body: Request::Client(_, req) } => {
                    assert_eq!(got, id);
                    assert_eq!(req.payload, payload);
                }
                other => panic!("decoded {other:?}"),
            }
        }
    }
}
