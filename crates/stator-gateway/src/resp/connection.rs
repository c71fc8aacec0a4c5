//! One RESP client connection: parse pipelined commands, forward them in batches,
//! answer in order.
//!
//! Every complete command of a read is parsed at once. Keyed commands are gathered per
//! partition ([`Backend::batches_partitions`]) and each batch goes as one
//! [`Backend::execute_batch`] when the buffered input runs out, all batches concurrently:
//! the backend answers a batch's commands in order (as one `STATOR.EXEC` write when it
//! holds a write, see [`super::pipeline`]: through the gateway's router, or into an
//! agent's own leading replica). A command waits while an earlier command of the connection on its slot is in
//! flight in an earlier batch, because Redis promises a connection's commands on one key
//! run in the order sent; commands on keys of different partitions run concurrently (the
//! promise across partitions is only the order of replies). Replies carry their
//! command's index and always leave in request order; the replies of the commands one
//! dispatch pass took (one read's pipeline) leave together in one write once the last of
//! them is in (see [`Pipeline::take_answered`]), so a client wakes once per pipeline.
//!
//! No copy per command on the batch path: a gathered command is a slice of the input
//! buffer (`BytesMut::split_to`, so the buffer it came from lives until its batch is
//! answered: at most [`MAX_PIPELINE_DEPTH`] commands' worth), and a batch's replies are
//! slices of the one reply its `STATOR.EXEC` got ([`pipeline::split`]).

use super::args::Args;
use super::auth;
use super::cluster;
use super::keyspace::{self, FanOut};
use super::local::{dispatch, ConnectionState, Dispatch};
use super::pipeline;
use super::pubsub::{self, PubSub};
use super::resp3::{self, Shape};
use super::transaction::{self, TxWork};
use super::Backend;
use super::Shared;
use crate::map::{PartitionMap, ServiceRoutes};
use crate::router::Router;
use bytes::{Buf, Bytes, BytesMut};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use rustc_hash::FxHashMap;
use stator_api::ids::NodeId;
use stator_kv::{encode_command, parse_reply, Value};
use stator_replication::{ClientError, RequestKind};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Commands of one connection in flight at once (a batch counts each of its commands).
/// Deeper than any benchmark pipeline (`redis-benchmark -P 16`) but small enough that one
/// client cannot flood a partition.
pub const MAX_PIPELINE_DEPTH: usize = 128;

/// Commands of one read sent together as one [`Backend::execute_batch`]: a whole
/// `-P 64` pipeline, and writes of small values stay far below the replica's write batch
/// size, so a batch is one Raft entry.
pub const MAX_BATCH_COMMANDS: usize = 64;

/// Payload bytes of one batch; a larger command goes alone in its own. Far below the
/// replica transport's 32 MiB frame limit, so a batch of large values never reaches it.
pub const MAX_BATCH_BYTES: usize = 1 << 20;
/// Commands a new batch has room for before it grows: a pipeline of up to 16 writes to
/// one partition gathers in one allocation instead of four (1, 4, 8, 16), about 2 % of
/// an agent's CPU in cluster-mode pipelined SET (docs/BENCHMARKS.md, session 16).
const GATHERING_FIRST_ROOM: usize = 16;

/// Largest single command accepted. Half the replica transport's 32 MiB frame limit,
/// leaving room for the request envelope; larger values belong in a blob store.
pub const MAX_COMMAND_BYTES: usize = 16 << 20;

/// Bytes asked of the socket per read: a full `-P 16` batch of small SETs fits.
const READ_CHUNK_BYTES: usize = 16 << 10;

/// What one in-flight unit (a command, or a batch of them) will produce.
enum Work {
    /// To forward to `partition` of `routes`.
    Forward {
        routes: Arc<ServiceRoutes>,
        partition: usize,
        slot: u16,
        kind: RequestKind,
        payload: Vec<u8>,
        /// A blocking pop (`BLPOP` ...): asked again until it pops or its timeout passes.
        blocking: Option<Blocking>,
    },
    /// A keyspace command over every partition of `routes`.
    FanOut {
        routes: Arc<ServiceRoutes>,
        fan: FanOut,
    },
    /// Commands of one read bound for `partition`, in order (see [`Gathering`]).
    Batch {
        routes: Arc<ServiceRoutes>,
        partition: usize,
        commands: Vec<Gathered>,
    },
    /// A held cluster topology command ([`Dispatch::Topology`]): answered from `map` once
    /// it covers every slot of `service`, or after [`cluster::TOPOLOGY_HOLD`].
    Topology {
        map: watch::Receiver<Arc<PartitionMap>>,
        service: String,
        node: Option<NodeId>,
        argv: Vec<Vec<u8>>,
    },
    /// `WATCH`: read the versions of `keys` (on `slot`) from `partition` of `routes`.
    Watch {
        routes: Arc<ServiceRoutes>,
        partition: usize,
        slot: u16,
        keys: Vec<Vec<u8>>,
        payload: Vec<u8>,
    },
}

impl Work {
    /// Whether the unit is answered as soon as its leader answers (a batch, a plain
    /// forward, a `WATCH` read), so replies sent with it may wait for it: not a blocking
    /// pop (it waits for a push, as long as its timeout) nor a fan-out over every
    /// partition.
    fn is_prompt(&self) -> bool {
        match self {
            Work::Batch { .. } | Work::Watch { .. } => true,
            Work::Forward { blocking, .. } => blocking.is_none(),
            Work::FanOut { .. } | Work::Topology { .. } => false,
        }
    }
}

/// One command of a [`Work::Batch`].
struct Gathered {
    /// Its place in the connection's order of replies.
    index: u64,
    slot: u16,
    kind: RequestKind,
    /// The command as received: a slice of the connection's input buffer.
    payload: Bytes,
    shape: Option<Shape>,
}

/// A finished command: its reply, its place in the order of replies and the slot it held.
struct Done {
    index: u64,
    /// Often a slice of its batch's one reply buffer.
    reply: Bytes,
    slot: Option<u16>,
    /// `WATCH` succeeded: keys and the versions to remember.
    watched: Vec<(Vec<u8>, u64)>,
}

/// What a finished unit answered: one command, or every command of a batch.
enum Finished {
    One(Done),
    Many(Vec<Done>),
}

impl Done {
    fn reply(index: u64, reply: impl Into<Bytes>, slot: Option<u16>) -> Done {
        Done {
            index,
            reply: reply.into(),
            slot,
            watched: Vec::new(),
        }
    }
}

/// Runs `work` (the command at `index`; a batch carries its own indices); with `resp3`,
/// re-types the reply for a RESP3 connection.
async fn perform<B: Backend>(
    backend: &B,
    index: u64,
    work: Work,
    resp3: Option<Shape>,
) -> Finished {
    let (routes, partition, commands) = match work {
        Work::Batch {
            routes,
            partition,
            commands,
        } => (routes, partition, commands),
        // The other hot unit: one command to a leader (a lone client's every command).
        Work::Forward {
            routes,
            partition,
            slot,
            kind,
            payload,
            blocking: None,
        } => {
            let reply = backend
                .execute(routes, partition, slot, kind, payload)
                .await;
            let reply = match resp3 {
                Some(shape) => resp3::convert(reply, shape),
                None => reply,
            };
            return Finished::One(Done::reply(index, reply, Some(slot)));
        }
        // Boxed: the rare units (fan-out over every partition, WATCH, blocking pops) have
        // large futures, and inline they would size the future of every batch, which
        // `serve` moves into its `FuturesUnordered` once per unit.
        work => {
            let mut done = Box::pin(perform_one(backend, index, work)).await;
            if let Some(shape) = resp3 {
                done.reply = resp3::convert(done.reply.to_vec(), shape).into();
            }
            return Finished::One(done);
        }
    };
    let count = commands.len();
    let mut requests = Vec::with_capacity(count);
    let mut slots = Vec::with_capacity(count);
    let mut places = Vec::with_capacity(count);
    for g in commands {
        requests.push((g.kind, g.payload));
        slots.push(g.slot);
        places.push((g.index, g.slot, g.shape));
    }
    let replies = backend
        .execute_batch(routes, partition, slots, requests)
        .await;
    assert_eq!(
        replies.len(),
        count,
        "a backend answers every command of a batch"
    );
    Finished::Many(
        replies
            .into_iter()
            .zip(places)
            .map(|(reply, (index, slot, shape))| {
                let reply = match shape {
                    Some(shape) => resp3::convert(reply.to_vec(), shape).into(),
                    None => reply,
                };
                Done::reply(index, reply, Some(slot))
            })
            .collect(),
    )
}

async fn perform_one<B: Backend>(backend: &B, index: u64, work: Work) -> Done {
    match work {
        Work::FanOut { routes, fan } => {
            Done::reply(index, keyspace::run(backend, &routes, fan).await, None)
        }
        Work::Batch { .. } => unreachable!("batches are performed by `perform`"),
        Work::Topology {
            mut map,
            service,
            node,
            argv,
        } => {
            let deadline = tokio::time::Instant::now() + cluster::TOPOLOGY_HOLD;
            let mut give_up = false;
            loop {
                let routes = map.borrow_and_update().services.get(&service).cloned();
                let covered = routes.as_deref().is_some_and(cluster::covers_every_slot);
                if covered || give_up {
                    let reply = cluster::topology(&argv, node, routes.as_deref());
                    return Done::reply(index, reply, None);
                }
                backend.request_refresh();
                // Out of time, or the map's sender gone: answer from what is known.
                let waited = tokio::time::timeout_at(deadline, map.changed()).await;
                give_up = !matches!(waited, Ok(Ok(())));
            }
        }
        Work::Watch {
            routes,
            partition,
            slot,
            keys,
            payload,
        } => {
            let reply = backend
                .execute(routes, partition, slot, RequestKind::Read, payload)
                .await;
            let value = match parse_reply(&reply) {
                Ok(Some((value, _))) => value,
                _ => Value::error("ERR a partition sent a WATCH reply the gateway cannot parse"),
            };
            match transaction::parse_versions(&value, keys.len()) {
                Ok(versions) => Done {
                    index,
                    reply: Value::ok().to_bytes().into(),
                    slot: None,
                    watched: keys.into_iter().zip(versions).collect(),
                },
                Err(error) => Done::reply(index, error.to_bytes(), None),
            }
        }
        Work::Forward { blocking: None, .. } => {
            unreachable!("plain forwards are performed by `perform`")
        }
        Work::Forward {
            routes,
            partition,
            slot,
            kind,
            payload,
            blocking: Some(blocking),
        } => Done::reply(
            index,
            block(backend, routes, partition, slot, kind, payload, blocking).await,
            Some(slot),
        ),
    }
}

/// First pause between two attempts of a blocking pop that found nothing.
const BLOCKING_FIRST_RETRY: Duration = Duration::from_millis(5);

/// Longest pause between two attempts: the most a push waits to be seen by a blocked
/// client, and (each attempt being one log entry) at most 10 entries a second per
/// blocked client.
const BLOCKING_MAX_RETRY: Duration = Duration::from_millis(100);

/// When a blocking pop (`BLPOP BRPOP BLMOVE BRPOPLPUSH BZPOPMIN BZPOPMAX`) gives up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Blocking {
    /// `None`: a timeout of 0, wait as long as the connection lives.
    deadline: Option<tokio::time::Instant>,
}

impl Blocking {
    /// The blocking form of `argv`, if it is a blocking pop with a valid timeout (its last
    /// argument, in seconds). Anything else, a bad timeout included, runs once and the
    /// machine answers it (with Redis's error for a bad timeout).
    pub(crate) fn of(argv: &[Vec<u8>]) -> Option<Blocking> {
        const BLOCKING_POPS: &[&str] = &[
            "blpop",
            "brpop",
            "blmove",
            "brpoplpush",
            "bzpopmin",
            "bzpopmax",
        ];
        /// The multi-key pops that name their timeout first: `BLMPOP timeout numkeys ...`.
        const TIMEOUT_FIRST: &[&str] = &["blmpop", "bzmpop"];
        let name = argv.first()?;
        let is = |names: &[&str]| {
            names
                .iter()
                .any(|pop| name.eq_ignore_ascii_case(pop.as_bytes()))
        };
        let timeout = if is(BLOCKING_POPS) {
            argv.last()
        } else if is(TIMEOUT_FIRST) {
            argv.get(1)
        } else {
            None
        };
        if argv.len() < 3 {
            return None;
        }
        let seconds: f64 = std::str::from_utf8(timeout?).ok()?.parse().ok()?;
        if !seconds.is_finite() || seconds < 0.0 {
            return None;
        }
        let deadline = (seconds > 0.0).then(|| {
            tokio::time::Instant::now()
                + Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX / 4)
        });
        Some(Blocking { deadline })
    }
}

/// Runs a blocking pop: the machine never waits (it answers Redis's timeout reply, a nil,
/// when there is nothing to pop), so the connection asks again, backing off, until it pops
/// or the client's timeout passes. Each attempt is a fresh write through the leader, so
/// the wait survives a leader failover, as a client of Redis would see it.
async fn block<B: Backend>(
    backend: &B,
    routes: Arc<ServiceRoutes>,
    partition: usize,
    slot: u16,
    kind: RequestKind,
    payload: Vec<u8>,
    blocking: Blocking,
) -> Vec<u8> {
    let mut pause = BLOCKING_FIRST_RETRY;
    loop {
        let reply = backend
            .execute(routes.clone(), partition, slot, kind, payload.clone())
            .await;
        let nothing_popped = reply == b"*-1\r\n" || reply == b"$-1\r\n";
        if !nothing_popped {
            return reply;
        }
        let now = tokio::time::Instant::now();
        let wake = match blocking.deadline {
            Some(deadline) if now >= deadline => return reply,
            Some(deadline) => deadline.min(now + pause),
            None => now + pause,
        };
        tokio::time::sleep_until(wake).await;
        pause = (pause * 2).min(BLOCKING_MAX_RETRY);
    }
}

/// The gateway: every keyed command goes to its partition's leader through the router.
impl Backend for Router {
    async fn execute(
        &self,
        routes: Arc<ServiceRoutes>,
        partition: usize,
        _slot: u16,
        kind: RequestKind,
        payload: Vec<u8>,
    ) -> Vec<u8> {
        let route = &routes.partitions[partition];
        // Boxed: the router's retrying forward is a large future, and inline it would size
        // every unit `serve` puts in flight (see `perform`), batches included.
        match Box::pin(self.forward(route, kind, payload)).await {
            Ok(reply) => reply,
            Err(error) => error_reply(&routes, route.partition, kind, &error),
        }
    }

    /// Reads of one kind as one read of the batch (side by side when their kinds differ),
    /// merged with the read batches other connections have waiting for the same
    /// partition; anything with a write as one `STATOR.EXEC` write, applied in
    /// order as one entry (see [`pipeline`]), merged with the batches other connections
    /// have waiting for the same partition (see [`crate::coalesce`]).
    async fn execute_batch(
        &self,
        routes: Arc<ServiceRoutes>,
        partition: usize,
        slots: Vec<u16>,
        commands: Vec<(RequestKind, Bytes)>,
    ) -> Vec<Bytes> {
        if let Some(kind) = pipeline::read_batch_kind(&commands) {
            // One read for the whole batch, merged with other connections' (`pipeline`).
            return self.merged_batch(routes, partition, kind, commands).await;
        }
        if pipeline::all_reads(&commands) {
            return futures::future::join_all(commands.into_iter().zip(slots).map(
                |((kind, payload), slot)| {
                    let routes = routes.clone();
                    async move {
                        let payload = payload.to_vec();
                        Bytes::from(
                            Backend::execute(self, routes, partition, slot, kind, payload).await,
                        )
                    }
                },
            ))
            .await;
        }
        self.merged_batch(routes, partition, RequestKind::Write, commands)
            .await
    }

    fn pipelines_slots(&self) -> bool {
        true
    }

    fn batches_partitions(&self) -> bool {
        true
    }

    fn request_refresh(&self) {
        Router::request_refresh(self);
    }
}

/// The RESP error for a request the router gave up on.
pub fn error_reply(
    routes: &ServiceRoutes,
    partition: u32,
    kind: RequestKind,
    error: &ClientError,
) -> Vec<u8> {
    let message = match error {
        ClientError::Timeout { deadline_ms, last, .. } => format!(
            "TRYAGAIN partition {partition} of service '{}' had no reachable leader within {deadline_ms} ms ({last}){}",
            routes.name,
            if kind == RequestKind::Write {
                "; the write may or may not have been applied"
            } else {
                ""
            }
        ),
        ClientError::StaleSequence { .. } => {
            format!("ERR internal gateway error, nothing was applied: {error}")
        }
    };
    Value::error(message).to_bytes()
}

/// Serves one connection (plain TCP with `TCP_NODELAY` set, or TLS over it) until the
/// client leaves, sends QUIT or garbage, or `cancel`.
///
/// One pass of the loop: [`Pipeline::dispatch_buffered`] parses and dispatches what the
/// client sent, the units it launched go in flight, [`Pipeline::take_answered`] collects
/// the replies known in order and one write sends them; then it waits for whichever comes
/// first: cancellation, an answer ([`Pipeline::accept`]), a pub/sub message, more input.
#[allow(
    clippy::too_many_arguments,
    reason = "gateway and agents call it, each argument distinct"
)]
pub async fn serve<B: Backend, S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    router: Arc<B>,
    shared: Arc<Shared>,
    service: String,
    mut map: watch::Receiver<Arc<PartitionMap>>,
    connection_id: u64,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let (pubsub, mut messages, too_slow) =
        PubSub::new(shared.broker.clone(), service.clone(), connection_id);
    let mut client = Client::new(&*router, &shared, &service, &mut map, pubsub, connection_id);
    if !client.access.admits(peer.ip()) {
        // Protected mode: say why, then close, as Redis does.
        stream
            .write_all(&Value::error(auth::DENIED).to_bytes())
            .await?;
        stream.shutdown().await.ok();
        return Ok(());
    }
    let mut input = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut output: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);
    let mut pipeline = Pipeline::new(&*router);
    let mut in_flight = FuturesUnordered::new();
    loop {
        let need_input = pipeline.dispatch_buffered(&mut client, &mut input);
        for Launch { index, work, shape } in pipeline.launches.drain(..) {
            in_flight.push(perform(&*router, index, work, shape));
        }
        // Every reply known in order leaves in one write.
        pipeline.take_answered(&mut output);
        if !output.is_empty() {
            stream.write_all(&output).await?;
            output.clear();
        }
        if in_flight.is_empty() && pipeline.closing {
            stream.shutdown().await.ok();
            return Ok(());
        }
        tokio::select! {
            // Cancellation first: a service removed from the map closes its connections.
            biased;
            _ = cancel.cancelled() => return Ok(()),
            // Redis closes a subscriber whose pending messages pass its limit.
            _ = too_slow.cancelled() => return Ok(()),
            Some(finished) = in_flight.next(), if !in_flight.is_empty() => {
                pipeline.accept(finished, &mut client.state);
                // Take every answer ready now so one write carries a whole pipeline.
                while let Some(finished) = in_flight.next().now_or_never().flatten() {
                    pipeline.accept(finished, &mut client.state);
                }
                if in_flight.is_empty() {
                    pipeline.alone_in_flight = false;
                }
            }
            // Messages wait while replies are owed, so a SUBSCRIBE's confirmation (and
            // anything sent before it) is answered before the first message.
            Some(message) = messages.recv(), if in_flight.is_empty() && pipeline.replies.is_empty() => {
                message.encode(client.state.resp3, &mut output);
                while let Ok(message) = messages.try_recv() {
                    message.encode(client.state.resp3, &mut output);
                }
                stream.write_all(&output).await?;
                output.clear();
            }
            read = stream.read_buf(&mut input), if need_input && !pipeline.closing => {
                if read? == 0 {
                    // The client left; anything still in flight has nobody to answer.
                    return Ok(());
                }
                if input.capacity() - input.len() < READ_CHUNK_BYTES / 4 {
                    input.reserve(READ_CHUNK_BYTES);
                }
            }
        }
    }
}

/// Who the client is and what it sees: its session state, its service's routes and
/// access rules (refreshed as the map changes), its pub/sub side.
struct Client<'a, B> {
    router: &'a B,
    shared: &'a Shared,
    service: &'a str,
    map: &'a mut watch::Receiver<Arc<PartitionMap>>,
    routes: Option<Arc<ServiceRoutes>>,
    access: Arc<auth::Access>,
    state: ConnectionState,
    pubsub: PubSub,
}

impl<'a, B: Backend> Client<'a, B> {
    fn new(
        router: &'a B,
        shared: &'a Shared,
        service: &'a str,
        map: &'a mut watch::Receiver<Arc<PartitionMap>>,
        pubsub: PubSub,
        connection_id: u64,
    ) -> Self {
        let routes = map.borrow_and_update().services.get(service).cloned();
        let access = match &routes {
            Some(routes) => shared.access.get(routes),
            None => Arc::new(auth::Access::Open {
                protected_mode: true,
            }),
        };
        let state = ConnectionState {
            id: connection_id,
            node: router.node(),
            ..ConnectionState::default()
        };
        Client {
            router,
            shared,
            service,
            map,
            routes,
            access,
            state,
            pubsub,
        }
    }

    /// Whether a newer map arrived since the routes were taken.
    fn map_changed(&self) -> bool {
        self.map.has_changed().unwrap_or(false)
    }

    /// Takes the service's routes and access rules from the newest map.
    fn refresh_routes(&mut self) {
        self.routes = self
            .map
            .borrow_and_update()
            .services
            .get(self.service)
            .cloned();
        if let Some(routes) = &self.routes {
            self.access = self.shared.access.get(routes);
            self.state.user = self.access.refresh_user(&self.state.user);
        }
    }

    /// What to do with `argv`: authentication, transactions and pub/sub decide first,
    /// then the connection-level commands and the classification of keyed ones. Returns
    /// the command to forward too: a script of a user limited to some keys is wrapped to
    /// carry the user's key patterns into the machine, which checks every `redis.call`
    /// against them (`auth.rs`); `None` forwards `argv` as received.
    fn decide(&mut self, argv: &[Vec<u8>]) -> (Dispatch, Option<Vec<Vec<u8>>>) {
        let decided = auth::intercept(argv, &mut self.state, &self.access);
        let scoped = decided
            .is_none()
            .then(|| auth::scope_script(argv, &self.state))
            .flatten();
        let argv = scoped.as_deref().unwrap_or(argv);
        let routes = self.routes.as_deref();
        let decided = decided
            .or_else(|| transaction::intercept(argv, &mut self.state.tx, routes))
            .or_else(|| pubsub::intercept(argv, &mut self.pubsub, self.state.resp3, routes))
            .unwrap_or_else(|| dispatch(argv, &mut self.state, routes));
        (decided, scoped)
    }
}

/// A unit ready to go in flight: `serve` runs it with [`perform`].
struct Launch {
    index: u64,
    work: Work,
    shape: Option<Shape>,
}

/// What [`Pipeline::route_keyed`] did with a keyed command.
enum Routed {
    /// It must wait for earlier commands: parsed again once they are answered.
    Wait,
    /// It joins the batch gathering for `partition` (its reply is owed): the caller
    /// takes its payload out of the input buffer and hands it to [`Pipeline::gather`].
    Gather {
        routes: Arc<ServiceRoutes>,
        partition: usize,
        slot: u16,
        kind: RequestKind,
        shape: Option<Shape>,
    },
    /// It goes in flight alone, or is answered at once.
    Unit(Result<Work, Vec<u8>>),
}

/// The order of one connection's commands: replies owed, slots busy, batches gathering,
/// units to launch. Pure bookkeeping; `serve` does the IO.
struct Pipeline {
    /// Replies in request order: `replies[i]` answers command `written + i`, its reply
    /// `None` until it is known.
    replies: VecDeque<Owed>,
    /// Dispatch passes so far: the number of the pass running, for [`Owed::pass`].
    passes: u64,
    /// Replies written so far.
    written: u64,
    /// Slot -> commands of this connection in flight on it (sent, not gathering). Fx
    /// hashed: touched twice per command, and a slot number needs no DoS-resistant hash.
    busy_slots: FxHashMap<u16, u32>,
    /// QUIT or a protocol error: answer what came before, then close.
    closing: bool,
    /// A command sent alone (keys over several slots, or every partition) is in flight:
    /// nothing else is dispatched until it is answered.
    alone_in_flight: bool,
    /// Commands sent and not answered yet (0 exactly when nothing is in flight).
    commands_in_flight: usize,
    /// Commands of this read gathered per partition (per slot where the backend keeps
    /// order per slot only), each sent as one `Work::Batch` when the buffered input runs
    /// out, the batch is full, or a command must wait.
    gatherings: Vec<Gathering>,
    /// Units to put in flight (taken by `serve` after each dispatch pass).
    launches: Vec<Launch>,
    /// [`Backend::pipelines_slots`].
    pipelines: bool,
    /// [`Backend::batches_partitions`] (with `pipelines`).
    per_partition: bool,
    /// The buffers each command's arguments are parsed into (see [`Args`]).
    args: Args,
}

impl Pipeline {
    fn new<B: Backend>(router: &B) -> Pipeline {
        let pipelines = router.pipelines_slots();
        Pipeline::with_modes(pipelines, pipelines && router.batches_partitions())
    }

    /// An empty pipeline with the router's modes (see the fields of the same names).
    fn with_modes(pipelines: bool, per_partition: bool) -> Pipeline {
        Pipeline {
            replies: VecDeque::new(),
            passes: 0,
            written: 0,
            busy_slots: FxHashMap::default(),
            closing: false,
            alone_in_flight: false,
            commands_in_flight: 0,
            gatherings: Vec::new(),
            launches: Vec::new(),
            pipelines,
            per_partition,
            args: Args::default(),
        }
    }

    /// Commands in flight or gathering: what counts against [`MAX_PIPELINE_DEPTH`].
    fn depth(&self) -> usize {
        self.commands_in_flight + self.gatherings.iter().map(Gathering::len).sum::<usize>()
    }

    fn anything_in_flight(&self) -> bool {
        self.commands_in_flight > 0 || !self.gatherings.is_empty()
    }

    /// Parses and dispatches every complete command buffered in `input`, until the
    /// pipeline is full or a command must wait for an earlier one on its slot; then sends
    /// whatever was gathered (nothing waits for a batch to fill). Returns whether it needs
    /// more input.
    fn dispatch_buffered<B: Backend>(
        &mut self,
        client: &mut Client<'_, B>,
        input: &mut BytesMut,
    ) -> bool {
        let mut need_input = false;
        self.passes += 1;
        // Taken out for the pass (borrowed by every command's `argv`), put back after.
        let mut args = std::mem::take(&mut self.args);
        while !self.closing && !self.alone_in_flight && self.depth() < MAX_PIPELINE_DEPTH {
            let Some(used) = self.parse_next(input, &mut args, &mut need_input) else {
                break;
            };
            let argv = args.argv();
            if argv.is_empty() {
                input.advance(used);
                continue;
            }
            if client.map_changed() {
                // Batches gathered under the old map go as they are.
                self.launch_gathered();
                client.refresh_routes();
            }
            if self.anything_in_flight() && transaction::waits_for_earlier(argv) {
                // Parsed again once everything before it is answered.
                break;
            }
            let index = self.written + self.replies.len() as u64;
            let (decided, scoped) = client.decide(argv);
            let as_received = scoped.is_none() && input.first() == Some(&b'*');
            let (argv, raw) = match &scoped {
                Some(wrapped) => (&wrapped[..], &[][..]),
                None => (argv, &input[..used]),
            };
            let work = match self.route(client, decided, raw, argv, used) {
                Routed::Wait => break,
                Routed::Gather {
                    routes,
                    partition,
                    slot,
                    kind,
                    shape,
                } => {
                    // An array travels as received: a slice of the input buffer, not a
                    // copy. Inline commands (telnet, redis-cli) are re-encoded because
                    // the kv machine accepts only arrays in its log.
                    let payload = if as_received {
                        input.split_to(used).freeze()
                    } else {
                        input.advance(used);
                        Bytes::from(encode_command(argv))
                    };
                    self.owe(None, true);
                    let command = Gathered {
                        index,
                        slot,
                        kind,
                        payload,
                        shape,
                    };
                    self.gather(routes, partition, command);
                    continue;
                }
                Routed::Unit(work) => work,
            };
            let shape = client.state.resp3.then(|| resp3::shape(argv));
            input.advance(used);
            match work {
                Err(reply) => self.owe(
                    Some(
                        match shape {
                            Some(shape) => resp3::convert(reply, shape),
                            None => reply,
                        }
                        .into(),
                    ),
                    false,
                ),
                Ok(work) => {
                    self.owe(None, work.is_prompt());
                    self.commands_in_flight += 1;
                    self.launches.push(Launch { index, work, shape });
                }
            }
        }
        args.release_large();
        self.args = args;
        self.launch_gathered();
        need_input
    }

    /// The next complete command of `input` and its length in bytes; `None` when there is
    /// none: more input is needed (`need_input` set), or the input is broken (its error is
    /// owed and the connection closes).
    fn parse_next(
        &mut self,
        input: &BytesMut,
        args: &mut Args,
        need_input: &mut bool,
    ) -> Option<usize> {
        match args.parse(input) {
            Ok(Some(used)) => Some(used),
            Ok(None) => {
                if input.len() > MAX_COMMAND_BYTES {
                    self.owe(Some(Value::error(format!(
                        "ERR Protocol error: command larger than {MAX_COMMAND_BYTES} bytes; split the value"
                    )).to_bytes().into()), false);
                    self.closing = true;
                }
                *need_input = true;
                None
            }
            Err(error) => {
                self.owe(Some(error.to_reply().to_bytes().into()), false);
                self.closing = true;
                None
            }
        }
    }

    /// Turns a decision into a unit of work (or a reply), or gathers it, or makes it wait.
    fn route<B: Backend>(
        &mut self,
        client: &Client<'_, B>,
        decided: Dispatch,
        raw: &[u8],
        argv: &[Vec<u8>],
        used: usize,
    ) -> Routed {
        let (router, routes, service) = (client.router, client.routes.as_ref(), client.service);
        match decided {
            Dispatch::Reply(reply) => Routed::Unit(Err(reply)),
            Dispatch::ReplyAndClose(reply) => {
                self.closing = true;
                Routed::Unit(Err(reply))
            }
            Dispatch::ForwardAlone { .. } | Dispatch::FanOut(_) | Dispatch::Transaction(_)
                if self.anything_in_flight() =>
            {
                // Parsed again once everything before it is answered.
                Routed::Wait
            }
            Dispatch::FanOut(fan) => Routed::Unit(match routes {
                Some(routes) => {
                    self.alone_in_flight = true;
                    Ok(Work::FanOut {
                        routes: routes.clone(),
                        fan,
                    })
                }
                None => Err(not_in_map(router, service)),
            }),
            Dispatch::Topology(argv) => Routed::Unit(Ok(Work::Topology {
                map: client.map.clone(),
                service: service.to_string(),
                node: client.state.node,
                argv,
            })),
            Dispatch::Transaction(tx_work) => Routed::Unit(
                transaction_work(router, routes, service, tx_work).inspect(|work| {
                    self.alone_in_flight = true;
                    if let Work::Forward { slot, .. } = work {
                        *self.busy_slots.entry(*slot).or_default() += 1;
                    }
                }),
            ),
            // One key slot, or keys over several slots of one partition (then sent alone:
            // after every earlier command is answered, before any later one).
            Dispatch::Forward { slot, kind } => {
                self.route_keyed(client, slot, kind, false, raw, argv, used)
            }
            Dispatch::ForwardAlone { slot, kind } => {
                self.route_keyed(client, slot, kind, true, raw, argv, used)
            }
        }
    }

    /// A keyed command: waits behind an earlier command on its slot, joins the batch
    /// gathering for its partition, or goes alone.
    #[allow(
        clippy::too_many_arguments,
        reason = "the parsed command's parts, each used once"
    )]
    fn route_keyed<B: Backend>(
        &mut self,
        client: &Client<'_, B>,
        slot: u16,
        kind: RequestKind,
        alone: bool,
        raw: &[u8],
        argv: &[Vec<u8>],
        used: usize,
    ) -> Routed {
        if self.busy_slots.contains_key(&slot) {
            // Parsed again once the earlier command on the slot is answered.
            return Routed::Wait;
        }
        let gatherable = !alone && self.pipelines && pipeline::may_batch(argv);
        if self
            .gatherings
            .iter()
            .any(|g| g.holds(slot) && !(gatherable && g.has_room(used)))
        {
            // Sent once the gathered commands on its slot are answered (it cannot join
            // them: sent alone, or their batch is full).
            return Routed::Wait;
        }
        let routes = client.routes.as_ref();
        if gatherable {
            return match partition_of(client.router, routes, client.service, slot) {
                Ok((routes, partition)) => Routed::Gather {
                    routes: routes.clone(),
                    partition,
                    slot,
                    kind,
                    shape: client.state.resp3.then(|| resp3::shape(argv)),
                },
                Err(reply) => Routed::Unit(Err(reply)),
            };
        }
        match forward_work(client.router, routes, client.service, slot, kind, raw, argv) {
            Ok(work) => {
                self.alone_in_flight = alone;
                *self.busy_slots.entry(slot).or_default() += 1;
                Routed::Unit(Ok(work))
            }
            Err(reply) => Routed::Unit(Err(reply)),
        }
    }

    /// Adds `command` to the batch gathering for its partition (its slot, where the
    /// backend keeps order per slot only), or starts one; a full batch goes now.
    fn gather(&mut self, routes: Arc<ServiceRoutes>, partition: usize, command: Gathered) {
        let per_partition = self.per_partition;
        let joins = |g: &Gathering| {
            g.partition == partition
                && Arc::ptr_eq(&g.routes, &routes)
                && (per_partition || g.slot == command.slot)
        };
        match self.gatherings.iter().position(joins) {
            // Holding its slot it had room (checked on the raw bytes): it must join, for
            // order.
            Some(at)
                if self.gatherings[at].holds(command.slot)
                    || self.gatherings[at].has_room(command.payload.len()) =>
            {
                self.gatherings[at].push(command)
            }
            at => {
                if let Some(at) = at {
                    // Full (and without this command's slot, checked before): it goes now,
                    // this command starts the next.
                    let batch = self.gatherings.swap_remove(at);
                    self.launch(batch);
                }
                self.gatherings
                    .push(Gathering::new(routes, partition, command));
            }
        }
    }

    /// Sends every gathered batch.
    fn launch_gathered(&mut self) {
        let batches = std::mem::take(&mut self.gatherings);
        for batch in batches {
            self.launch(batch);
        }
    }

    fn launch(&mut self, batch: Gathering) {
        self.commands_in_flight += batch.commands.len();
        for command in &batch.commands {
            *self.busy_slots.entry(command.slot).or_default() += 1;
        }
        self.launches.push(Launch {
            index: 0,
            work: batch.into_work(),
            shape: None,
        });
    }

    /// Records what a unit answered.
    fn accept(&mut self, finished: Finished, state: &mut ConnectionState) {
        let mut accept = |done: Done| {
            self.commands_in_flight -= 1;
            state.tx.watched.extend(done.watched);
            if let Some(slot) = done.slot {
                release(&mut self.busy_slots, slot);
            }
            let at = usize::try_from(done.index - self.written)
                .expect("a reply owed is within the pipeline");
            self.replies[at].reply = Some(done.reply);
        };
        match finished {
            Finished::One(done) => accept(done),
            Finished::Many(dones) => dones.into_iter().for_each(accept),
        }
    }

    /// A reply owed for the next command of this pass: `reply` when known at once, else
    /// `prompt` says whether its unit is answered without waiting on anything but the
    /// leader (see [`Work::is_prompt`]).
    fn owe(&mut self, reply: Option<Bytes>, prompt: bool) {
        self.replies.push_back(Owed {
            reply,
            pass: self.passes,
            prompt,
        });
    }

    /// Moves every reply known in request order to `output`, unless more replies of the
    /// same dispatch pass (commands that came in the same reads) are on their way: then
    /// they all leave together in one write once the last of them is in, as Redis answers
    /// one read's pipeline in one write at the end of its event-loop pass. A client that
    /// sent a pipeline wakes once for it, not once per partition that answered. Nothing
    /// waits on what is not already in flight: a reply held here waits only for a
    /// prompt unit sent in the same pass (never a blocking pop or a fan-out), and
    /// replies of a later pass never hold an earlier one's.
    fn take_answered(&mut self, output: &mut Vec<u8>) {
        let known = self
            .replies
            .iter()
            .take_while(|owed| owed.reply.is_some())
            .count();
        if known == 0 {
            return;
        }
        if let Some(next) = self.replies.get(known) {
            if next.prompt && next.pass == self.replies[known - 1].pass {
                return;
            }
        }
        for owed in self.replies.drain(..known) {
            output.extend_from_slice(&owed.reply.expect("counted as known"));
        }
        self.written += known as u64;
    }
}

/// The reply owed for one command, in request order.
struct Owed {
    /// `None` until known.
    reply: Option<Bytes>,
    /// The dispatch pass that took the command ([`Pipeline::passes`]).
    pass: u64,
    /// Its unit is answered promptly (see [`Work::is_prompt`]): known replies of the same
    /// pass may wait for it.
    prompt: bool,
}

/// Commands of one read bound for one partition (one slot, where the backend keeps order
/// per slot only), to send as one [`Work::Batch`]: the backend answers them in order
/// (the gateway as one `STATOR.EXEC` write, see [`pipeline`]).
struct Gathering {
    routes: Arc<ServiceRoutes>,
    partition: usize,
    slot: u16,
    commands: Vec<Gathered>,
    bytes: usize,
}

impl Gathering {
    fn new(routes: Arc<ServiceRoutes>, partition: usize, first: Gathered) -> Gathering {
        Gathering {
            routes,
            partition,
            slot: first.slot,
            bytes: first.payload.len(),
            commands: {
                let mut commands = Vec::with_capacity(GATHERING_FIRST_ROOM);
                commands.push(first);
                commands
            },
        }
    }

    fn len(&self) -> usize {
        self.commands.len()
    }

    fn holds(&self, slot: u16) -> bool {
        self.commands.iter().any(|c| c.slot == slot)
    }

    /// Whether one more command of `bytes` fits.
    fn has_room(&self, bytes: usize) -> bool {
        self.commands.len() < MAX_BATCH_COMMANDS && self.bytes + bytes <= MAX_BATCH_BYTES
    }

    fn push(&mut self, command: Gathered) {
        self.bytes += command.payload.len();
        self.commands.push(command);
    }

    fn into_work(self) -> Work {
        Work::Batch {
            routes: self.routes,
            partition: self.partition,
            commands: self.commands,
        }
    }
}

fn release(busy_slots: &mut FxHashMap<u16, u32>, slot: u16) {
    let count = busy_slots
        .get_mut(&slot)
        .expect("a finished command held its slot");
    *count -= 1;
    if *count == 0 {
        busy_slots.remove(&slot);
    }
}

/// The work of `WATCH` or `EXEC`, or the error reply when no partition owns its slot.
fn transaction_work<B: Backend>(
    router: &B,
    routes: Option<&Arc<ServiceRoutes>>,
    service: &str,
    tx_work: TxWork,
) -> Result<Work, Vec<u8>> {
    let Some(routes) = routes else {
        return Err(not_in_map(router, service));
    };
    let slot = match &tx_work {
        TxWork::Watch { slot, .. } | TxWork::Exec { slot, .. } => *slot,
    };
    let Some(partition) = routes.route_index(slot) else {
        router.request_refresh();
        return Err(Value::error(format!(
            "CLUSTERDOWN no partition of service '{service}' owns slot {slot} yet; retry shortly"
        ))
        .to_bytes());
    };
    Ok(match tx_work {
        TxWork::Watch {
            slot,
            keys,
            payload,
        } => Work::Watch {
            routes: routes.clone(),
            partition,
            slot,
            keys,
            payload,
        },
        TxWork::Exec { slot, payload } => Work::Forward {
            routes: routes.clone(),
            partition,
            slot,
            kind: RequestKind::Write,
            payload,
            // Inside MULTI a blocking pop does not block, as in Redis.
            blocking: None,
        },
    })
}

fn not_in_map<B: Backend>(router: &B, service: &str) -> Vec<u8> {
    router.request_refresh();
    Value::error(format!(
        "CLUSTERDOWN service '{service}' is not in the partition map (deleted, or not applied yet)"
    ))
    .to_bytes()
}

/// The routes and partition owning `slot`, or the error reply when no partition owns it.
fn partition_of<'r, B: Backend>(
    router: &B,
    routes: Option<&'r Arc<ServiceRoutes>>,
    service: &str,
    slot: u16,
) -> Result<(&'r Arc<ServiceRoutes>, usize), Vec<u8>> {
    let Some(routes) = routes else {
        return Err(not_in_map(router, service));
    };
    let Some(partition) = routes.route_index(slot) else {
        router.request_refresh();
        return Err(Value::error(format!(
            "CLUSTERDOWN no partition of service '{service}' owns slot {slot} yet; retry shortly"
        ))
        .to_bytes());
    };
    Ok((routes, partition))
}

/// The forwarding work of a command, or the error reply when no partition owns its slot.
fn forward_work<B: Backend>(
    router: &B,
    routes: Option<&Arc<ServiceRoutes>>,
    service: &str,
    slot: u16,
    kind: RequestKind,
    raw: &[u8],
    argv: &[Vec<u8>],
) -> Result<Work, Vec<u8>> {
    let (routes, partition) = partition_of(router, routes, service, slot)?;
    // Arrays are forwarded as received; inline commands (telnet, redis-cli) are re-encoded
    // because the kv machine accepts only arrays in its log.
    let payload = if raw.first() == Some(&b'*') {
        raw.to_vec()
    } else {
        encode_command(argv)
    };
    Ok(Work::Forward {
        routes: routes.clone(),
        partition,
        slot,
        kind,
        payload,
        blocking: Blocking::of(argv),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline() -> Pipeline {
        Pipeline::with_modes(true, true)
    }

    /// Owes a reply in flight (as a launch does) for the pass running.
    fn in_flight(p: &mut Pipeline, prompt: bool) {
        p.owe(None, prompt);
        p.commands_in_flight += 1;
    }

    fn answer(p: &mut Pipeline, index: u64, reply: &str) {
        let done = Done::reply(index, reply.as_bytes().to_vec(), None);
        p.accept(Finished::One(done), &mut ConnectionState::default());
    }

    fn written(p: &mut Pipeline) -> String {
        let mut output = Vec::new();
        p.take_answered(&mut output);
        String::from_utf8(output).expect("test replies are text")
    }

    #[test]
    fn one_reads_replies_over_several_partitions_leave_in_one_write() {
        let mut p = pipeline();
        p.passes = 1;
        in_flight(&mut p, true); // partition A
        in_flight(&mut p, true); // partition B
        p.owe(Some(Bytes::from_static(b"+PONG\r\n")), false);
        in_flight(&mut p, true); // partition A again
        answer(&mut p, 0, "+a0\r\n");
        answer(&mut p, 3, "+a3\r\n");
        assert_eq!(written(&mut p), "", "B's reply is on its way: wait for it");
        answer(&mut p, 1, "+b1\r\n");
        assert_eq!(written(&mut p), "+a0\r\n+b1\r\n+PONG\r\n+a3\r\n");
        assert_eq!(p.written, 4);
        assert!(p.replies.is_empty());
    }

    #[test]
    fn replies_never_wait_for_a_later_read_or_a_blocking_pop() {
        let mut p = pipeline();
        p.passes = 1;
        in_flight(&mut p, true);
        p.passes = 2;
        in_flight(&mut p, true);
        answer(&mut p, 0, "+first\r\n");
        assert_eq!(
            written(&mut p),
            "+first\r\n",
            "the next reply belongs to a later read"
        );
        // Same read: a SET, then a BLPOP that may wait for a push as long as it likes.
        p.passes = 3;
        in_flight(&mut p, true);
        in_flight(&mut p, false);
        answer(&mut p, 1, "+second\r\n");
        answer(&mut p, 2, "+OK\r\n");
        assert_eq!(written(&mut p), "+second\r\n+OK\r\n");
        answer(&mut p, 3, "*-1\r\n");
        assert_eq!(written(&mut p), "*-1\r\n");
    }

    /// A backend that only counts the map refreshes asked of it.
    #[derive(Default)]
    struct RefreshCounter(std::sync::atomic::AtomicUsize);

    impl Backend for RefreshCounter {
        #[allow(clippy::manual_async_fn, reason = "the trait's signature")]
        fn execute(
            &self,
            _: Arc<ServiceRoutes>,
            _: usize,
            _: u16,
            _: RequestKind,
            _: Vec<u8>,
        ) -> impl std::future::Future<Output = Vec<u8>> + Send {
            async { unreachable!("a topology command forwards nothing") }
        }

        fn request_refresh(&self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn map_of(service: ServiceRoutes) -> Arc<PartitionMap> {
        let mut map = PartitionMap::default();
        map.services.insert(service.name.clone(), Arc::new(service));
        Arc::new(map)
    }

    fn topology_work(map: &watch::Sender<Arc<PartitionMap>>) -> Work {
        Work::Topology {
            map: map.subscribe(),
            service: "kv".into(),
            node: None,
            argv: vec![b"CLUSTER".to_vec(), b"SLOTS".to_vec()],
        }
    }

    #[tokio::test]
    async fn a_held_cluster_slots_answers_once_the_map_covers_every_slot() {
        let covered = super::cluster::tests::routes(&[Some(1), Some(2)]);
        let mut half = covered.clone();
        half.partitions[1].resp_nodes.clear();
        let (map, _) = watch::channel(map_of(half));
        let backend = RefreshCounter::default();
        let work = topology_work(&map);
        let answer = perform_one(&backend, 7, work);
        let update = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            map.send_replace(map_of(covered));
        };
        let (done, ()) = tokio::join!(answer, update);
        assert_eq!(done.index, 7);
        let text = String::from_utf8(done.reply.to_vec()).unwrap();
        assert!(text.starts_with("*2\r\n"), "both ranges listed: {text}");
        let refreshes = backend.0.load(std::sync::atomic::Ordering::Relaxed);
        assert!(refreshes >= 1, "the poller was asked to refresh");
    }

    #[tokio::test]
    async fn a_held_cluster_slots_answers_with_what_it_has_after_the_hold() {
        let mut half = super::cluster::tests::routes(&[Some(1), Some(2)]);
        half.partitions[1].resp_nodes.clear();
        let (map, _) = watch::channel(map_of(half));
        let started = tokio::time::Instant::now();
        let done = perform_one(&RefreshCounter::default(), 0, topology_work(&map)).await;
        assert!(started.elapsed() >= super::cluster::TOPOLOGY_HOLD);
        let text = String::from_utf8(done.reply.to_vec()).unwrap();
        assert!(text.starts_with("*1\r\n"), "the covered range only: {text}");
    }
}
