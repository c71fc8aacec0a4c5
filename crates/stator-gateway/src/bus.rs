//! The pub/sub bus: carries `PUBLISH`, `SPUBLISH` and keyspace notifications between
//! every process that serves RESP (gateways, and agents in cluster mode), as the Redis
//! Cluster bus carries `PUBLISH` between nodes.
//!
//! - **Finding peers.** Each process runs a bus listener (loopback unless configured)
//!   and registers it with the server about once a second ([`Registrar`],
//!   `POST /v1/pubsub/peers`); the answer lists every live peer, what each reports of
//!   its subscribers (for `PUBSUB NUMSUB/CHANNELS/NUMPAT` over the whole service) and
//!   each service's `notify-keyspace-events` flags. [`Fabric::apply_view`] dials new
//!   peers and drops gone ones (level-triggered).
//! - **Links.** One outgoing TCP connection per peer, written by one task from a bounded
//!   queue ([`MAX_BUS_QUEUE_FRAMES`], [`MAX_BUS_QUEUE_BYTES`]); a full queue drops the
//!   frame and counts it ([`Fabric::dropped_frames`]): delivery is at-most-once, as in
//!   Redis. A broken connection loses what was being written and is dialled again with
//!   back-off.
//! - **Authentication.** Each connection starts with a challenge-response on the cluster
//!   secret (HMAC-SHA256 of the other side's nonce and one's role), both ways, before a
//!   frame is accepted; a peer without the secret is closed.
//! - **Encryption.** After the handshake every byte is sealed: the dialer's frames travel
//!   in records (4-byte length, ChaCha20-Poly1305 ciphertext and tag) under a key derived
//!   per connection with HKDF-SHA256 from the cluster secret and both handshake nonces,
//!   with a counter nonce ([`link_key`], [`Sealer`], [`Opener`]). Only holders of the
//!   secret can read or forge bus traffic, and a recorded connection cannot be replayed
//!   into another (its key differs). Loopback stays the default listen address.
//! - **Frames** are RESP arrays: `publish service channel message` (deliver to channel
//!   and pattern subscribers), `spublish service channel message` (deliver to shard
//!   subscribers), `sequence service channel message` (sent to the agent leading the
//!   channel's slot, which delivers it and sends `spublish` to everyone, so every shard
//!   subscriber sees one partition's messages in the leader's order).
//!
//! Receivers deliver to their local subscribers only and never forward `publish`, so
//! a message crosses each link at most once.

use crate::resp::pubsub::Broker;
use ring::{aead, hkdf, hmac};
use stator_api::ids::NodeId;
use stator_api::pubsub::{
    BusPeer, BusPeerKind, BusRegistration, BusView, NotifySetting, SubscriberSummary,
};
use stator_kv::notify::NotifyFlags;
use stator_kv::{encode_command, parse_command};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;

/// Frames queued for one peer before new ones are dropped: a few seconds of a busy
/// channel, and what a peer that is briefly unreachable can catch up on.
pub const MAX_BUS_QUEUE_FRAMES: usize = 8_192;

/// Bytes queued for one peer before new frames are dropped: with messages of up to
/// [`MAX_BUS_FRAME_BYTES`], the frame count alone would not bound memory while a peer is
/// unreachable (the replica transport allows the same 64 MiB in flight per peer).
pub const MAX_BUS_QUEUE_BYTES: usize = 64 << 20;

/// Largest frame: a published message may be as large as a command
/// ([`crate::resp::connection::MAX_COMMAND_BYTES`]), plus the frame's other fields.
pub const MAX_BUS_FRAME_BYTES: usize = crate::resp::connection::MAX_COMMAND_BYTES + 64 * 1024;

/// Inbound bus connections at once: one per peer; past this the listener waits (the
/// process's descriptors are shared with RESP clients and the replica transport).
pub const MAX_BUS_INBOUND_CONNECTIONS: usize = 512;

/// How often a peer registers and learns the others (and new notification flags).
pub const BUS_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// Time a connection has to complete the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Back-off between two dials of an unreachable peer.
const REDIAL_FIRST: Duration = Duration::from_millis(50);
const REDIAL_MAX: Duration = Duration::from_secs(2);

/// Bytes coalesced into one write.
const MAX_BATCH_BYTES: usize = 256 << 10;

/// Bytes asked of the socket per read.
const READ_CHUNK_BYTES: usize = 16 << 10;

/// Largest sealed record: a batch ([`MAX_BATCH_BYTES`], plus the frame that passed it, at
/// most [`MAX_BUS_FRAME_BYTES`]) and its tag. A longer length prefix is a broken peer.
const MAX_SEALED_RECORD_BYTES: usize = MAX_BATCH_BYTES + MAX_BUS_FRAME_BYTES + TAG_BYTES;

/// ChaCha20-Poly1305's tag.
const TAG_BYTES: usize = 16;

/// Names this protocol in the proofs and the key derivation: a peer of another version
/// fails the handshake instead of misreading frames.
const PROTOCOL: &[u8] = b"stator pubsub bus v2 ";

/// Settings of a bus endpoint.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// Where the listener binds (`127.0.0.1:0`: loopback, any free port).
    pub listen: String,
    /// Host other peers dial; `None`: the bound IP (127.0.0.1 when it is a wildcard).
    pub advertise_host: Option<String>,
    /// Gateway or agent.
    pub kind: BusPeerKind,
    /// The agent's node id.
    pub node_id: Option<NodeId>,
    /// The cluster secret both sides of a link must share.
    pub cluster_secret: String,
}

/// How a peer registers with the server (the gateway's poller, the agent's client).
pub trait Registrar: Send + Sync + 'static {
    /// `POST /v1/pubsub/peers`.
    fn register(
        &self,
        registration: &BusRegistration,
    ) -> impl Future<Output = Result<BusView, String>> + Send;
    /// `POST /v1/pubsub/notify`.
    fn set_notify(
        &self,
        setting: &NotifySetting,
    ) -> impl Future<Output = Result<BusView, String>> + Send;
}

/// A frame on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameKind {
    /// `PUBLISH`: channel and pattern subscribers.
    Publish,
    /// `SPUBLISH`, ordered: shard subscribers.
    ShardDeliver,
    /// `SPUBLISH` for the leader of the channel's slot to order and send to everyone.
    ShardOrder,
}

impl FrameKind {
    fn word(self) -> &'static [u8] {
        match self {
            FrameKind::Publish => b"publish",
            FrameKind::ShardDeliver => b"spublish",
            FrameKind::ShardOrder => b"sequence",
        }
    }
}

/// Encodes one message frame.
pub(crate) fn frame(kind: FrameKind, service: &str, channel: &[u8], payload: &[u8]) -> Arc<[u8]> {
    encode_command(&[kind.word(), service.as_bytes(), channel, payload]).into()
}

struct Link {
    addr: String,
    node_id: Option<NodeId>,
    sender: mpsc::Sender<Arc<[u8]>>,
    /// Bytes in `sender`'s queue (the link task subtracts what it takes).
    queued_bytes: Arc<AtomicUsize>,
    cancel: CancellationToken,
}

/// What the other peers reported, and the notification flags, from the last view.
#[derive(Default)]
struct Remote {
    peers: Vec<BusPeer>,
    notify: BTreeMap<String, String>,
}

/// This process's side of the bus: links to every other peer and what they reported.
pub struct Fabric {
    id: String,
    node_id: Option<NodeId>,
    secret: Arc<BusSecret>,
    // std mutexes: map updates only, never held across an await.
    links: Mutex<HashMap<String, Link>>,
    remote: Mutex<Remote>,
    /// `CONFIG SET notify-keyspace-events` not yet accepted by the server.
    pending_notify: Mutex<BTreeMap<String, String>>,
    /// Wakes the refresh loop (a pending setting).
    wake: Notify,
    /// Whether any service has notification flags (pending or from the view): the one
    /// check on the apply path of every replica while none has.
    any_notify: AtomicBool,
    dropped: AtomicU64,
    cancel: CancellationToken,
}

impl Fabric {
    fn new(config: &BusConfig, cancel: CancellationToken) -> Fabric {
        Fabric {
            id: format!("{:016x}", rand::random::<u64>()),
            node_id: config.node_id,
            secret: Arc::new(BusSecret::new(config.cluster_secret.as_bytes())),
            links: Mutex::new(HashMap::new()),
            remote: Mutex::new(Remote::default()),
            pending_notify: Mutex::new(BTreeMap::new()),
            wake: Notify::new(),
            any_notify: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            cancel,
        }
    }

    /// This peer's id in the registry.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Frames dropped because a peer's queue was full (at-most-once delivery).
    pub fn dropped_frames(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Peers linked now.
    pub fn peer_count(&self) -> usize {
        self.links.lock().expect("bus links poisoned").len()
    }

    fn offer(&self, link: &Link, frame: Arc<[u8]>) {
        let len = frame.len();
        let over_budget =
            link.queued_bytes.fetch_add(len, Ordering::Relaxed) + len > MAX_BUS_QUEUE_BYTES;
        let refused = over_budget
            || matches!(
                link.sender.try_send(frame),
                Err(mpsc::error::TrySendError::Full(_))
            );
        if refused {
            link.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed);
            if (dropped + 1).is_power_of_two() {
                tracing::warn!(peer = %link.addr, dropped = dropped + 1,
                    "pub/sub bus queue full; dropping messages (at-most-once delivery)");
            }
        }
    }

    /// Queues `frame` for every other peer.
    pub(crate) fn broadcast(&self, frame: Arc<[u8]>) {
        for link in self.links.lock().expect("bus links poisoned").values() {
            self.offer(link, frame.clone());
        }
    }

    /// Queues `frame` for the agent of `node`; false when no such peer is linked.
    pub(crate) fn send_to_node(&self, node: NodeId, frame: Arc<[u8]>) -> bool {
        let links = self.links.lock().expect("bus links poisoned");
        match links.values().find(|link| link.node_id == Some(node)) {
            Some(link) => {
                self.offer(link, frame);
                true
            }
            None => false,
        }
    }

    /// This endpoint's node (agents).
    pub(crate) fn node_id(&self) -> Option<NodeId> {
        self.node_id
    }

    /// Takes a registry view: links new peers, drops gone ones, keeps the rest.
    pub fn apply_view(&self, view: BusView) {
        let mut links = self.links.lock().expect("bus links poisoned");
        let wanted: HashMap<&str, &BusPeer> = view
            .peers
            .iter()
            .filter(|peer| peer.id != self.id)
            .map(|peer| (peer.id.as_str(), peer))
            .collect();
        links.retain(|id, link| {
            let keep = wanted
                .get(id.as_str())
                .is_some_and(|peer| peer.addr == link.addr);
            if !keep {
                link.cancel.cancel();
            }
            keep
        });
        for (id, peer) in &wanted {
            if links.contains_key(*id) {
                continue;
            }
            let (sender, receiver) = mpsc::channel(MAX_BUS_QUEUE_FRAMES);
            let queued_bytes = Arc::new(AtomicUsize::new(0));
            let cancel = self.cancel.child_token();
            tokio::spawn(run_link(
                peer.addr.clone(),
                self.secret.clone(),
                self.id.clone(),
                (receiver, queued_bytes.clone()),
                cancel.clone(),
            ));
            links.insert(
                id.to_string(),
                Link {
                    addr: peer.addr.clone(),
                    node_id: peer.node_id,
                    sender,
                    queued_bytes,
                    cancel,
                },
            );
        }
        drop(links);
        let mut remote = self.remote.lock().expect("bus view poisoned");
        remote.peers = view
            .peers
            .into_iter()
            .filter(|peer| peer.id != self.id)
            .collect();
        remote.notify = view.notify;
        let any = !remote.notify.is_empty();
        drop(remote);
        self.refresh_any_notify(any);
    }

    fn refresh_any_notify(&self, remote_any: bool) {
        let pending_any = !self
            .pending_notify
            .lock()
            .expect("pending notify poisoned")
            .is_empty();
        self.any_notify
            .store(remote_any || pending_any, Ordering::Relaxed);
    }

    /// The `notify-keyspace-events` flags of `service` (a `CONFIG SET` not yet accepted
    /// by the server first).
    pub fn notify_flags(&self, service: &str) -> NotifyFlags {
        if !self.any_notify.load(Ordering::Relaxed) {
            return NotifyFlags::default();
        }
        let pending = self
            .pending_notify
            .lock()
            .expect("pending notify poisoned")
            .get(service)
            .cloned();
        let flags = pending.or_else(|| {
            self.remote
                .lock()
                .expect("bus view poisoned")
                .notify
                .get(service)
                .cloned()
        });
        flags
            .and_then(|text| NotifyFlags::parse(&text).ok())
            .unwrap_or_default()
    }

    /// `CONFIG SET notify-keyspace-events`: takes effect here at once, on every leader
    /// once the server has it and their next refresh has run (about a second).
    pub(crate) fn set_notify(&self, service: &str, flags: NotifyFlags) {
        self.pending_notify
            .lock()
            .expect("pending notify poisoned")
            .insert(service.to_string(), flags.to_string());
        self.any_notify.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// What the other peers reported for `service`.
    pub(crate) fn remote_summaries(&self, service: &str) -> Vec<SubscriberSummary> {
        self.remote
            .lock()
            .expect("bus view poisoned")
            .peers
            .iter()
            .filter_map(|peer| peer.subscribers.get(service).cloned())
            .collect()
    }
}

/// A running bus endpoint.
pub struct Bus {
    fabric: Arc<Fabric>,
    addr: String,
}

impl Bus {
    /// The fabric (links, view) of this endpoint.
    pub fn fabric(&self) -> &Arc<Fabric> {
        &self.fabric
    }

    /// The advertised `host:port` of the listener.
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

/// Binds the bus listener, attaches the fabric to `broker` and starts the accept and
/// refresh loops; they stop with `cancel`.
pub async fn start<R: Registrar>(
    config: BusConfig,
    broker: Arc<Broker>,
    registrar: Arc<R>,
    cancel: CancellationToken,
) -> std::io::Result<Bus> {
    let listener = TcpListener::bind(&config.listen).await.map_err(|error| {
        std::io::Error::new(
            error.kind(),
            format!(
                "cannot bind the pub/sub bus listener on {}: {error}; pick another address",
                config.listen
            ),
        )
    })?;
    let bound = listener.local_addr()?;
    let host = config.advertise_host.clone().unwrap_or_else(|| {
        if bound.ip().is_unspecified() {
            "127.0.0.1".into()
        } else {
            bound.ip().to_string()
        }
    });
    let addr = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{}", bound.port())
    } else {
        format!("{host}:{}", bound.port())
    };
    let fabric = Arc::new(Fabric::new(&config, cancel.clone()));
    broker.attach(fabric.clone());
    tokio::spawn(accept_loop(
        listener,
        fabric.clone(),
        broker.clone(),
        cancel.clone(),
    ));
    tokio::spawn(refresh_loop(
        fabric.clone(),
        broker,
        registrar,
        BusRegistration {
            id: fabric.id.clone(),
            addr: addr.clone(),
            kind: config.kind,
            node_id: config.node_id,
            subscribers: BTreeMap::new(),
        },
        cancel,
    ));
    tracing::info!(%addr, "pub/sub bus listening");
    Ok(Bus { fabric, addr })
}

async fn refresh_loop<R: Registrar>(
    fabric: Arc<Fabric>,
    broker: Arc<Broker>,
    registrar: Arc<R>,
    mut registration: BusRegistration,
    cancel: CancellationToken,
) {
    let mut failing = false;
    loop {
        let pending = fabric
            .pending_notify
            .lock()
            .expect("pending notify poisoned")
            .clone();
        for (service, flags) in pending {
            let setting = NotifySetting {
                service: service.clone(),
                flags: flags.clone(),
            };
            match registrar.set_notify(&setting).await {
                Ok(view) => {
                    let mut pending = fabric
                        .pending_notify
                        .lock()
                        .expect("pending notify poisoned");
                    // A newer CONFIG SET may have come meanwhile: keep that one.
                    if pending.get(&service) == Some(&flags) {
                        pending.remove(&service);
                    }
                    drop(pending);
                    fabric.apply_view(view);
                }
                Err(error) => {
                    tracing::warn!(%service, %error, "cannot store notify-keyspace-events on the server; retrying")
                }
            }
        }
        registration.subscribers = broker.summary();
        match registrar.register(&registration).await {
            Ok(view) => {
                if failing {
                    tracing::info!("pub/sub bus registry reachable again");
                    failing = false;
                }
                fabric.apply_view(view);
            }
            Err(error) if !failing => {
                tracing::warn!(%error, "cannot refresh the pub/sub bus peers; keeping the last ones");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(BUS_REFRESH_INTERVAL) => {}
            _ = fabric.wake.notified() => {}
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    fabric: Arc<Fabric>,
    broker: Arc<Broker>,
    cancel: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_BUS_INBOUND_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => return,
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "pub/sub bus accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (fabric, broker, cancel) = (fabric.clone(), broker.clone(), cancel.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                result = serve_inbound(stream, &fabric, &broker) => {
                    if let Err(error) = result {
                        tracing::debug!(%peer, %error, "pub/sub bus connection ended");
                    }
                }
            }
            drop(permit);
        });
    }
}

/// Reads RESP arrays from a stream, at most [`MAX_BUS_FRAME_BYTES`] each.
struct FrameReader {
    input: bytes::BytesMut,
}

impl FrameReader {
    fn new() -> Self {
        Self {
            input: bytes::BytesMut::with_capacity(READ_CHUNK_BYTES),
        }
    }

    /// A whole frame already buffered, if there is one.
    fn buffered(&mut self) -> std::io::Result<Option<Vec<Vec<u8>>>> {
        match parse_command(&self.input) {
            Ok(Some((argv, used))) => {
                bytes::Buf::advance(&mut self.input, used);
                Ok(Some(argv))
            }
            Ok(None) if self.input.len() > MAX_BUS_FRAME_BYTES => Err(std::io::Error::other(
                format!("bus frame larger than {MAX_BUS_FRAME_BYTES} bytes"),
            )),
            Ok(None) => Ok(None),
            Err(error) => Err(std::io::Error::other(format!("garbled bus frame: {error}"))),
        }
    }

    /// The next frame of the sealed stream after the handshake; `None` at a clean end.
    async fn next_sealed<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        opener: &mut Opener,
    ) -> std::io::Result<Option<Vec<Vec<u8>>>> {
        loop {
            if let Some(argv) = self.buffered()? {
                return Ok(Some(argv));
            }
            let mut length = [0u8; 4];
            match reader.read_exact(&mut length).await {
                Ok(_) => {}
                Err(error)
                    if error.kind() == std::io::ErrorKind::UnexpectedEof
                        && self.input.is_empty() =>
                {
                    return Ok(None)
                }
                Err(error) => return Err(error),
            }
            let record_bytes = u32::from_be_bytes(length) as usize;
            if !(TAG_BYTES..=MAX_SEALED_RECORD_BYTES).contains(&record_bytes) {
                return Err(std::io::Error::other(format!(
                    "pub/sub bus record of {record_bytes} bytes (at most {MAX_SEALED_RECORD_BYTES}); closing the link"
                )));
            }
            let mut body = vec![0u8; record_bytes];
            reader.read_exact(&mut body).await?;
            let plaintext = opener.open(length, &mut body)?;
            self.input.extend_from_slice(plaintext);
        }
    }

    /// The next frame of the (plaintext) handshake; `None` at a clean end of stream.
    async fn next<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
    ) -> std::io::Result<Option<Vec<Vec<u8>>>> {
        loop {
            if let Some(argv) = self.buffered()? {
                return Ok(Some(argv));
            }
            if self.input.capacity() - self.input.len() < READ_CHUNK_BYTES / 4 {
                self.input.reserve(READ_CHUNK_BYTES);
            }
            if reader.read_buf(&mut self.input).await? == 0 {
                return if self.input.is_empty() {
                    Ok(None)
                } else {
                    Err(std::io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &[u8]) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

/// What the cluster secret gives a bus peer: the handshake's proof key and the
/// extracted key every connection's link key is expanded from.
struct BusSecret {
    proof_key: hmac::Key,
    link_keys: hkdf::Prk,
}

impl BusSecret {
    fn new(cluster_secret: &[u8]) -> BusSecret {
        BusSecret {
            proof_key: hmac::Key::new(hmac::HMAC_SHA256, cluster_secret),
            link_keys: hkdf::Salt::new(hkdf::HKDF_SHA256, PROTOCOL).extract(cluster_secret),
        }
    }
}

/// The key sealing one connection's records: expanded from the cluster secret with both
/// handshake nonces, so every connection has its own.
fn link_key(secret: &BusSecret, listener_nonce: &[u8], dialer_nonce: &[u8]) -> aead::LessSafeKey {
    let info = [b"link key ".as_slice(), listener_nonce, b" ", dialer_nonce];
    let okm = secret
        .link_keys
        .expand(&info, &aead::CHACHA20_POLY1305)
        .expect("a 32-byte key is a valid HKDF output length");
    aead::LessSafeKey::new(aead::UnboundKey::from(okm))
}

/// The record nonce: the record's number on this connection (never repeats under one key).
fn record_nonce(counter: u64) -> aead::Nonce {
    let mut nonce = [0u8; aead::NONCE_LEN];
    nonce[aead::NONCE_LEN - 8..].copy_from_slice(&counter.to_be_bytes());
    aead::Nonce::assume_unique_for_key(nonce)
}

/// Seals the dialer's batches into records.
struct Sealer {
    key: aead::LessSafeKey,
    records: u64,
}

impl Sealer {
    /// `batch` as one record: its length (also the additional data) and ciphertext + tag.
    fn seal(&mut self, batch: &[u8]) -> Vec<u8> {
        let length = u32::try_from(batch.len() + TAG_BYTES)
            .expect("batches are far below 4 GiB")
            .to_be_bytes();
        let mut record = Vec::with_capacity(4 + batch.len() + TAG_BYTES);
        record.extend_from_slice(&length);
        let mut body = batch.to_vec();
        self.key
            .seal_in_place_append_tag(
                record_nonce(self.records),
                aead::Aad::from(length),
                &mut body,
            )
            .expect("sealing fails only past ChaCha20's 256 GiB per-record limit");
        self.records += 1;
        record.extend_from_slice(&body);
        record
    }
}

/// Opens the listener's records, in order.
struct Opener {
    key: aead::LessSafeKey,
    records: u64,
}

impl Opener {
    fn open<'a>(&mut self, length: [u8; 4], body: &'a mut [u8]) -> std::io::Result<&'a [u8]> {
        let plaintext = self
            .key
            .open_in_place(record_nonce(self.records), aead::Aad::from(length), body)
            .map_err(|_| {
                std::io::Error::other(
                    "pub/sub bus record failed its integrity check (tampered with, or not from the peer that authenticated); closing the link",
                )
            })?;
        self.records += 1;
        Ok(plaintext)
    }
}

/// The proof that one knows the cluster secret: HMAC of the role and the other side's
/// nonce (roles differ so a proof cannot be reflected back).
fn proof(secret: &BusSecret, role: &[u8], nonce: &[u8]) -> hmac::Tag {
    let mut context = hmac::Context::with_key(&secret.proof_key);
    context.update(PROTOCOL);
    context.update(role);
    context.update(nonce);
    context.sign()
}

fn verify(secret: &BusSecret, role: &[u8], nonce: &[u8], presented: &[u8]) -> bool {
    let Some(mac) = unhex(presented) else {
        return false;
    };
    let mut message = PROTOCOL.to_vec();
    message.extend_from_slice(role);
    message.extend_from_slice(nonce);
    hmac::verify(&secret.proof_key, &message, &mac).is_ok()
}

const REFUSED: &str = "pub/sub bus peer failed authentication: every gateway and agent must use the same cluster secret";

/// The listener's side: challenge, check the dialer's proof, prove itself, then deliver
/// every frame that arrives.
async fn serve_inbound(
    mut stream: TcpStream,
    fabric: &Fabric,
    broker: &Broker,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = FrameReader::new();
    let nonce = hex(&rand::random::<[u8; 32]>());
    let handshake = async {
        stream
            .write_all(&encode_command(&[b"challenge", nonce.as_bytes()]))
            .await?;
        match reader.next(&mut stream).await? {
            Some(argv)
                if argv.len() == 4
                    && argv[0] == b"auth"
                    && verify(&fabric.secret, b"dialer", nonce.as_bytes(), &argv[2]) =>
            {
                let mac = proof(&fabric.secret, b"listener", &argv[3]);
                stream
                    .write_all(&encode_command(&[
                        b"ok".as_slice(),
                        hex(mac.as_ref()).as_bytes(),
                    ]))
                    .await?;
                Ok(Opener {
                    key: link_key(&fabric.secret, nonce.as_bytes(), &argv[3]),
                    records: 0,
                })
            }
            _ => Err(std::io::Error::other(REFUSED)),
        }
    };
    let mut opener = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| std::io::Error::other("pub/sub bus handshake timed out"))??;
    if !reader.input.is_empty() {
        // The dialer waits for `ok` before its first record.
        return Err(std::io::Error::other(
            "pub/sub bus peer sent frames before the handshake ended",
        ));
    }
    while let Some(argv) = reader.next_sealed(&mut stream, &mut opener).await? {
        let [word, service, channel, payload] = argv.as_slice() else {
            return Err(std::io::Error::other(
                "bus frame with the wrong number of fields",
            ));
        };
        let service = String::from_utf8_lossy(service);
        match word.as_slice() {
            b"publish" => {
                broker.deliver(&service, false, channel, payload);
            }
            b"spublish" => {
                broker.deliver(&service, true, channel, payload);
            }
            b"sequence" => {
                broker.deliver(&service, true, channel, payload);
                fabric.broadcast(frame(FrameKind::ShardDeliver, &service, channel, payload));
            }
            other => {
                return Err(std::io::Error::other(format!(
                    "unknown bus frame '{}'",
                    String::from_utf8_lossy(other)
                )))
            }
        }
    }
    Ok(())
}

/// The dialer's side of the handshake.
async fn dial(addr: &str, secret: &BusSecret, id: &str) -> std::io::Result<(TcpStream, Sealer)> {
    let handshake = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut reader = FrameReader::new();
        let challenge = match reader.next(&mut stream).await? {
            Some(argv) if argv.len() == 2 && argv[0] == b"challenge" => argv[1].clone(),
            _ => return Err(std::io::Error::other("expected the bus challenge")),
        };
        let nonce = hex(&rand::random::<[u8; 32]>());
        let mac = proof(secret, b"dialer", &challenge);
        stream
            .write_all(&encode_command(&[
                b"auth".as_slice(),
                id.as_bytes(),
                hex(mac.as_ref()).as_bytes(),
                nonce.as_bytes(),
            ]))
            .await?;
        match reader.next(&mut stream).await? {
            Some(argv)
                if argv.len() == 2
                    && argv[0] == b"ok"
                    && verify(secret, b"listener", nonce.as_bytes(), &argv[1]) =>
            {
                let key = link_key(secret, &challenge, nonce.as_bytes());
                Ok((stream, Sealer { key, records: 0 }))
            }
            _ => Err(std::io::Error::other(REFUSED)),
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| std::io::Error::other("pub/sub bus handshake timed out"))?
}

/// One peer's link: dial (again after a failure, with back-off), then write queued
/// frames, coalesced, until cancelled.
async fn run_link(
    addr: String,
    secret: Arc<BusSecret>,
    id: String,
    (mut frames, queued_bytes): (mpsc::Receiver<Arc<[u8]>>, Arc<AtomicUsize>),
    cancel: CancellationToken,
) {
    let mut pause = REDIAL_FIRST;
    let mut batch = Vec::with_capacity(64 << 10);
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => return,
            dialled = dial(&addr, &secret, &id) => dialled,
        };
        let (mut stream, mut sealer) = match stream {
            Ok(linked) => {
                pause = REDIAL_FIRST;
                linked
            }
            Err(error) => {
                tracing::debug!(%addr, %error, "pub/sub bus peer unreachable; dialling again");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(REDIAL_MAX);
                continue;
            }
        };
        loop {
            let first = tokio::select! {
                _ = cancel.cancelled() => return,
                first = frames.recv() => match first {
                    Some(first) => first,
                    None => return,
                },
            };
            batch.clear();
            batch.extend_from_slice(&first);
            while batch.len() < MAX_BATCH_BYTES {
                match frames.try_recv() {
                    Ok(frame) => batch.extend_from_slice(&frame),
                    Err(_) => break,
                }
            }
            queued_bytes.fetch_sub(batch.len(), Ordering::Relaxed);
            if let Err(error) = write_batch(&mut stream, &sealer.seal(&batch)).await {
                tracing::debug!(%addr, %error, "pub/sub bus link broke; messages in it are lost");
                break;
            }
        }
    }
}

async fn write_batch<W: AsyncWrite + Unpin>(stream: &mut W, batch: &[u8]) -> std::io::Result<()> {
    stream.write_all(batch).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp::pubsub::{intercept, PubSub};

    /// An in-memory registry shared by the peers of one test.
    /// Peers by id, and addresses to hand out in place of a peer's own (a relay).
    #[derive(Clone, Default)]
    struct FakeRegistry(
        Arc<Mutex<BTreeMap<String, BusPeer>>>,
        Arc<Mutex<HashMap<String, String>>>,
    );

    impl Registrar for FakeRegistry {
        async fn register(&self, registration: &BusRegistration) -> Result<BusView, String> {
            let mut peers = self.0.lock().unwrap();
            peers.insert(registration.id.clone(), registration.clone());
            let relays = self.1.lock().unwrap();
            Ok(BusView {
                peers: peers
                    .values()
                    .cloned()
                    .map(|mut peer| {
                        if let Some(relay) = relays.get(&peer.addr) {
                            peer.addr = relay.clone();
                        }
                        peer
                    })
                    .collect(),
                notify: BTreeMap::new(),
            })
        }

        async fn set_notify(&self, _: &NotifySetting) -> Result<BusView, String> {
            Err("not in this test".into())
        }
    }

    async fn peer(
        registry: &FakeRegistry,
        secret: &str,
        cancel: &CancellationToken,
    ) -> Arc<Broker> {
        peer_with_addr(registry, secret, cancel).await.0
    }

    async fn peer_with_addr(
        registry: &FakeRegistry,
        secret: &str,
        cancel: &CancellationToken,
    ) -> (Arc<Broker>, String) {
        let broker = Arc::new(Broker::default());
        let bus = start(
            BusConfig {
                listen: "127.0.0.1:0".into(),
                advertise_host: None,
                kind: BusPeerKind::Gateway,
                node_id: None,
                cluster_secret: secret.into(),
            },
            broker.clone(),
            Arc::new(registry.clone()),
            cancel.clone(),
        )
        .await
        .unwrap();
        (broker, bus.addr().to_string())
    }

    /// What crossed a bus link: a relay between a dialer and `target` keeps a copy.
    async fn recording_relay(target: String) -> (String, Arc<Mutex<Vec<u8>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let Ok(mut outbound) = TcpStream::connect(&target).await else {
                    continue;
                };
                let record = record.clone();
                tokio::spawn(async move {
                    let (mut in_read, mut in_write) = inbound.split();
                    let (mut out_read, mut out_write) = outbound.split();
                    let upstream = async {
                        let mut buffer = vec![0u8; 4096];
                        loop {
                            let n = in_read.read(&mut buffer).await.unwrap_or(0);
                            if n == 0 {
                                break;
                            }
                            record.lock().unwrap().extend_from_slice(&buffer[..n]);
                            if out_write.write_all(&buffer[..n]).await.is_err() {
                                break;
                            }
                        }
                    };
                    let downstream = tokio::io::copy(&mut out_read, &mut in_write);
                    tokio::select! { _ = upstream => {}, _ = downstream => {} }
                });
            }
        });
        (addr, seen)
    }

    #[tokio::test]
    async fn bus_traffic_is_sealed() {
        let registry = FakeRegistry::default();
        let cancel = CancellationToken::new();
        let (b, b_addr) = peer_with_addr(&registry, "secret", &cancel).await;
        let (relay, seen) = recording_relay(b_addr.clone()).await;
        registry.1.lock().unwrap().insert(b_addr, relay);
        let a = peer(&registry, "secret", &cancel).await;
        let (_b_sub, mut b_messages) = {
            let (mut pubsub, messages, _) = PubSub::new(b.clone(), "kv".into(), 1);
            let argv = vec![b"SUBSCRIBE".to_vec(), b"room".to_vec()];
            intercept(&argv, &mut pubsub, false, None).unwrap();
            (pubsub, messages)
        };
        let payload = b"the-published-payload-must-not-cross-in-clear";
        let received = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                a.publish("kv", b"room", payload);
                tokio::select! {
                    message = b_messages.recv() => return message.unwrap(),
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        })
        .await
        .expect("a message from a reached b through the relay");
        assert_eq!(&*received.payload, payload);
        let seen = seen.lock().unwrap().clone();
        assert!(seen.len() > payload.len(), "the relay carried the link");
        for needle in [&payload[..], b"room", b"publish"] {
            assert!(
                !seen.windows(needle.len()).any(|w| w == needle),
                "{} crossed the bus in clear",
                String::from_utf8_lossy(needle)
            );
        }
        cancel.cancel();
    }

    #[test]
    fn records_open_only_with_the_link_key_and_in_order() {
        let secret = BusSecret::new(b"secret");
        let mut sealer = Sealer {
            key: link_key(&secret, b"n1", b"n2"),
            records: 0,
        };
        let open_with = |key, record: &[u8], records| {
            let mut opener = Opener { key, records };
            let mut body = record[4..].to_vec();
            let length: [u8; 4] = record[..4].try_into().unwrap();
            opener.open(length, &mut body).map(|p| p.to_vec())
        };
        let first = sealer.seal(b"frame one");
        let second = sealer.seal(b"frame two");
        assert_eq!(
            open_with(link_key(&secret, b"n1", b"n2"), &first, 0).unwrap(),
            b"frame one"
        );
        assert_eq!(
            open_with(link_key(&secret, b"n1", b"n2"), &second, 1).unwrap(),
            b"frame two"
        );
        // Replayed out of order, on another connection, or with another secret: refused.
        assert!(open_with(link_key(&secret, b"n1", b"n2"), &second, 0).is_err());
        assert!(open_with(link_key(&secret, b"n1", b"n3"), &first, 0).is_err());
        let other = BusSecret::new(b"other");
        assert!(open_with(link_key(&other, b"n1", b"n2"), &first, 0).is_err());
        let mut tampered = first.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(open_with(link_key(&secret, b"n1", b"n2"), &tampered, 0).is_err());
    }

    #[tokio::test]
    async fn publish_reaches_peers_with_the_secret_and_no_others() {
        let registry = FakeRegistry::default();
        let cancel = CancellationToken::new();
        let a = peer(&registry, "secret", &cancel).await;
        let b = peer(&registry, "secret", &cancel).await;
        let intruder = peer(&registry, "guess", &cancel).await;
        let subscribe = |broker: &Arc<Broker>, id| {
            let (mut pubsub, messages, _) = PubSub::new(broker.clone(), "kv".into(), id);
            let argv = vec![b"SUBSCRIBE".to_vec(), b"room".to_vec()];
            intercept(&argv, &mut pubsub, false, None).unwrap();
            (pubsub, messages)
        };
        let (_b_sub, mut b_messages) = subscribe(&b, 1);
        let (_i_sub, mut intruder_messages) = subscribe(&intruder, 2);
        let received = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                assert_eq!(a.publish("kv", b"room", b"hi"), 0, "no subscriber on a");
                tokio::select! {
                    message = b_messages.recv() => return message.unwrap(),
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        })
        .await
        .expect("a message from a reached b");
        assert_eq!(&*received.payload, b"hi");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            intruder_messages.try_recv().is_err(),
            "a peer without the cluster secret got a message"
        );
        cancel.cancel();
    }

    #[test]
    fn proofs_verify_only_with_the_same_secret_and_role() {
        let key = BusSecret::new(b"secret");
        let other = BusSecret::new(b"other");
        let mac = hex(proof(&key, b"dialer", b"n1").as_ref());
        assert!(verify(&key, b"dialer", b"n1", mac.as_bytes()));
        assert!(!verify(&key, b"listener", b"n1", mac.as_bytes()));
        assert!(!verify(&key, b"dialer", b"n2", mac.as_bytes()));
        assert!(!verify(&other, b"dialer", b"n1", mac.as_bytes()));
        assert!(!verify(&key, b"dialer", b"n1", b"zz"));
    }
}
