//! One RESP client connection: parse pipelined commands, forward them concurrently,
//! answer in order.
//!
//! Commands of one connection run concurrently (that is what makes `-P 16` fast) with one
//! exception: a command waits while an earlier command of the same connection on the
//! same slot is in flight, because the replicas give no order between concurrent requests
//! and Redis promises a connection's commands on one key run in the order sent. Where the
//! backend keeps order itself ([`Backend::pipelines_slots`]: an agent serving its own
//! replica), the consecutive commands on one slot of a read batch travel together as one
//! [`Backend::execute_batch`] instead, so a cluster client's `-P 16` pipeline (all on the
//! slots of one node, usually one slot) is one Raft entry, not sixteen round trips.
//! Replies always leave in request order.

use super::auth;
use super::keyspace::{self, FanOut};
use super::local::{dispatch, ConnectionState, Dispatch};
use super::pubsub::{self, PubSub};
use super::resp3::{self, Shape};
use super::transaction::{self, TxWork};
use super::Backend;
use super::Shared;
use crate::map::{PartitionMap, ServiceRoutes};
use crate::router::Router;
use bytes::{Buf, BytesMut};
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use stator_kv::{encode_command, parse_command, parse_reply, Value};
use stator_replication::{ClientError, RequestKind};
use std::collections::HashMap;
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

/// Commands on one slot sent together as one [`Backend::execute_batch`]: a whole
/// `-P 64` pipeline, and writes of small values stay far below the replica's write batch
/// size, so a batch is usually one Raft entry.
pub const MAX_SLOT_BATCH_COMMANDS: usize = 64;

/// Largest single command accepted. Half the replica transport's 32 MiB frame limit,
/// leaving room for the request envelope; larger values belong in a blob store.
pub const MAX_COMMAND_BYTES: usize = 16 << 20;

/// Bytes asked of the socket per read: a full `-P 16` batch of small SETs fits.
const READ_CHUNK_BYTES: usize = 16 << 10;

/// What one in-flight command will produce.
enum Work {
    /// Already answered.
    Ready(Vec<u8>),
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
    /// Consecutive commands on `slot`, in order, each with its RESP3 shape.
    Batch {
        routes: Arc<ServiceRoutes>,
        partition: usize,
        slot: u16,
        commands: Vec<(RequestKind, Vec<u8>, Option<Shape>)>,
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

/// A finished command: its reply and the slot it held, if any.
struct Done {
    reply: Vec<u8>,
    slot: Option<u16>,
    /// `WATCH` succeeded: keys and the versions to remember.
    watched: Vec<(Vec<u8>, u64)>,
    /// Commands answered (more than one for a batch).
    commands: usize,
}

impl Done {
    fn reply(reply: Vec<u8>, slot: Option<u16>) -> Done {
        Done {
            reply,
            slot,
            watched: Vec::new(),
            commands: 1,
        }
    }
}

/// Runs `work`; with `resp3`, re-types the reply for a RESP3 connection.
async fn perform<B: Backend>(backend: &B, work: Work, resp3: Option<Shape>) -> Done {
    let mut done = perform_resp2(backend, work).await;
    if let Some(shape) = resp3 {
        done.reply = resp3::convert(done.reply, shape);
    }
    done
}

async fn perform_resp2<B: Backend>(backend: &B, work: Work) -> Done {
    match work {
        Work::Ready(reply) => Done::reply(reply, None),
        Work::FanOut { routes, fan } => {
            Done::reply(keyspace::run(backend, &routes, fan).await, None)
        }
        Work::Batch {
            routes,
            partition,
            slot,
            commands,
        } => {
            let count = commands.len();
            let (requests, shapes): (Vec<_>, Vec<_>) = commands
                .into_iter()
                .map(|(kind, payload, shape)| ((kind, payload), shape))
                .unzip();
            let replies = backend
                .execute_batch(routes, partition, slot, requests)
                .await;
            assert_eq!(
                replies.len(),
                count,
                "a backend answers every command of a batch"
            );
            let mut reply = Vec::new();
            for (one, shape) in replies.into_iter().zip(shapes) {
                match shape {
                    Some(shape) => reply.extend(resp3::convert(one, shape)),
                    None => reply.extend(one),
                }
            }
            Done {
                reply,
                slot: Some(slot),
                watched: Vec::new(),
                commands: count,
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
                    reply: Value::ok().to_bytes(),
                    slot: None,
                    watched: keys.into_iter().zip(versions).collect(),
                    commands: 1,
                },
                Err(error) => Done::reply(error.to_bytes(), None),
            }
        }
        Work::Forward {
            routes,
            partition,
            slot,
            kind,
            payload,
            blocking: None,
        } => Done::reply(
            backend
                .execute(routes, partition, slot, kind, payload)
                .await,
            Some(slot),
        ),
        Work::Forward {
            routes,
            partition,
            slot,
            kind,
            payload,
            blocking: Some(blocking),
        } => Done::reply(
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
        match self.forward(route, kind, payload).await {
            Ok(reply) => reply,
            Err(error) => error_reply(&routes, route.partition, kind, &error),
        }
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
    let mut state = ConnectionState {
        id: connection_id,
        node: router.node(),
        ..ConnectionState::default()
    };
    let mut routes = map.borrow_and_update().services.get(&service).cloned();
    let mut access = match &routes {
        Some(routes) => shared.access.get(routes),
        None => Arc::new(auth::Access::Open {
            protected_mode: true,
        }),
    };
    if !access.admits(peer.ip()) {
        // Protected mode: say why, then close, as Redis does.
        stream
            .write_all(&Value::error(auth::DENIED).to_bytes())
            .await?;
        stream.shutdown().await.ok();
        return Ok(());
    }
    let (mut pubsub, mut messages, too_slow) =
        PubSub::new(shared.broker.clone(), service.clone(), connection_id);
    let mut input = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut output: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);
    let mut in_flight = FuturesOrdered::new();
    // Slot -> commands of this connection in flight on it.
    let mut busy_slots: HashMap<u16, u32> = HashMap::new();
    // QUIT or a protocol error: answer what came before, then close.
    let mut closing = false;
    // A command sent alone (keys over several slots, or every partition) is in flight:
    // nothing else is dispatched until it is answered.
    let mut alone_in_flight = false;
    // Commands in flight, a batch counting each of its commands.
    let mut commands_in_flight = 0usize;
    // Consecutive commands on one slot from this read, gathered into one `Work::Batch`
    // (only where the backend keeps their order); sent when another kind of command or
    // slot comes, or the buffered input runs out.
    let mut gathering: Option<Gathering> = None;
    let pipelines = router.pipelines_slots();
    loop {
        // Dispatch every complete command buffered, until the pipeline is full or a
        // command must wait for an earlier one on its slot.
        let mut need_input = false;
        while !closing
            && !alone_in_flight
            && commands_in_flight + gathering.as_ref().map_or(0, Gathering::len)
                < MAX_PIPELINE_DEPTH
        {
            let (argv, used) = match parse_command(&input) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => {
                    if input.len() > MAX_COMMAND_BYTES {
                        if let Some(batch) = gathering.take() {
                            commands_in_flight += batch.len();
                            in_flight.push_back(perform(&*router, batch.into_work(), None));
                        }
                        commands_in_flight += 1;
                        in_flight.push_back(perform(&*router, Work::Ready(Value::error(format!(
                            "ERR Protocol error: command larger than {MAX_COMMAND_BYTES} bytes; split the value"
                        )).to_bytes()), None));
                        closing = true;
                    }
                    need_input = true;
                    break;
                }
                Err(error) => {
                    if let Some(batch) = gathering.take() {
                        commands_in_flight += batch.len();
                        in_flight.push_back(perform(&*router, batch.into_work(), None));
                    }
                    commands_in_flight += 1;
                    in_flight.push_back(perform(
                        &*router,
                        Work::Ready(error.to_reply().to_bytes()),
                        None,
                    ));
                    closing = true;
                    break;
                }
            };
            if argv.is_empty() {
                input.advance(used);
                continue;
            }
            if map.has_changed().unwrap_or(false) {
                routes = map.borrow_and_update().services.get(&service).cloned();
                if let Some(routes) = &routes {
                    access = shared.access.get(routes);
                    state.user = access.refresh_user(&state.user);
                }
            }
            let anything_in_flight = !in_flight.is_empty() || gathering.is_some();
            if anything_in_flight && transaction::waits_for_earlier(&argv) {
                // Parsed again once everything before it is answered.
                break;
            }
            // A plain keyed command that may join the batch being gathered.
            let mut gatherable = false;
            let decided = auth::intercept(&argv, &mut state, &access);
            // A script of a user limited to some keys carries the user's key patterns into
            // the machine, which checks every `redis.call` against them (`auth.rs`).
            let scoped = decided
                .is_none()
                .then(|| auth::scope_script(&argv, &state))
                .flatten();
            let (argv, raw) = match scoped {
                Some(wrapped) => (wrapped, &[][..]),
                None => (argv, &input[..used]),
            };
            let decided = decided
                .or_else(|| transaction::intercept(&argv, &mut state.tx, routes.as_deref()))
                .or_else(|| pubsub::intercept(&argv, &mut pubsub, state.resp3, routes.as_deref()));
            let work = match decided
                .unwrap_or_else(|| dispatch(&argv, &mut state, routes.as_deref()))
            {
                Dispatch::Reply(reply) => Work::Ready(reply),
                Dispatch::ReplyAndClose(reply) => {
                    closing = true;
                    Work::Ready(reply)
                }
                Dispatch::ForwardAlone { .. } | Dispatch::FanOut(_) | Dispatch::Transaction(_)
                    if anything_in_flight =>
                {
                    // Parsed again once everything before it is answered.
                    break;
                }
                Dispatch::FanOut(fan) => match &routes {
                    Some(routes) => {
                        alone_in_flight = true;
                        Work::FanOut {
                            routes: routes.clone(),
                            fan,
                        }
                    }
                    None => Work::Ready(not_in_map(&*router, &service)),
                },
                Dispatch::Transaction(tx_work) => {
                    match transaction_work(&*router, routes.as_ref(), &service, tx_work) {
                        Ok(work) => {
                            alone_in_flight = true;
                            if let Work::Forward { slot, .. } = &work {
                                *busy_slots.entry(*slot).or_default() += 1;
                            }
                            work
                        }
                        Err(reply) => Work::Ready(reply),
                    }
                }
                Dispatch::ForwardAlone { slot, kind } => {
                    match forward_work(&*router, routes.as_ref(), &service, slot, kind, raw, &argv)
                    {
                        Ok(work) => {
                            alone_in_flight = true;
                            *busy_slots.entry(slot).or_default() += 1;
                            work
                        }
                        Err(reply) => Work::Ready(reply),
                    }
                }
                Dispatch::Forward { slot, kind } => {
                    gatherable = pipelines && Blocking::of(&argv).is_none();
                    let joins = gatherable
                        && gathering
                            .as_ref()
                            .is_some_and(|g| g.slot == slot && g.len() < MAX_SLOT_BATCH_COMMANDS);
                    if busy_slots.contains_key(&slot) && !joins {
                        // Parsed again once the earlier command is answered.
                        break;
                    }
                    match forward_work(&*router, routes.as_ref(), &service, slot, kind, raw, &argv)
                    {
                        Ok(work) => {
                            if !joins {
                                *busy_slots.entry(slot).or_default() += 1;
                            }
                            work
                        }
                        Err(reply) => Work::Ready(reply),
                    }
                }
            };
            let shape = state.resp3.then(|| resp3::shape(&argv));
            input.advance(used);
            match work {
                Work::Forward {
                    routes,
                    partition,
                    slot,
                    kind,
                    payload,
                    blocking: None,
                } if gatherable => match &mut gathering {
                    Some(batch) if batch.slot == slot => {
                        batch.commands.push((kind, payload, shape));
                    }
                    _ => {
                        if let Some(batch) = gathering.take() {
                            commands_in_flight += batch.len();
                            in_flight.push_back(perform(&*router, batch.into_work(), None));
                        }
                        gathering = Some(Gathering {
                            routes,
                            partition,
                            slot,
                            commands: vec![(kind, payload, shape)],
                        });
                    }
                },
                work => {
                    if let Some(batch) = gathering.take() {
                        commands_in_flight += batch.len();
                        in_flight.push_back(perform(&*router, batch.into_work(), None));
                    }
                    commands_in_flight += 1;
                    in_flight.push_back(perform(&*router, work, shape));
                }
            }
        }
        // Whatever was gathered goes now: nothing waits for a batch to fill.
        if let Some(batch) = gathering.take() {
            commands_in_flight += batch.len();
            in_flight.push_back(perform(&*router, batch.into_work(), None));
        }
        if in_flight.is_empty() && closing {
            stream.shutdown().await.ok();
            return Ok(());
        }
        tokio::select! {
            // Cancellation first: a service removed from the map closes its connections.
            biased;
            _ = cancel.cancelled() => return Ok(()),
            // Redis closes a subscriber whose pending messages pass its limit.
            _ = too_slow.cancelled() => return Ok(()),
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                let mut done = Some(done);
                // Collect every reply ready now so one write carries a whole pipeline.
                while let Some(Done { reply, slot, watched, commands }) = done.take() {
                    commands_in_flight -= commands;
                    output.extend_from_slice(&reply);
                    state.tx.watched.extend(watched);
                    if let Some(slot) = slot {
                        release(&mut busy_slots, slot);
                    }
                    if in_flight.is_empty() {
                        alone_in_flight = false;
                    }
                    done = in_flight.next().now_or_never().flatten();
                }
                stream.write_all(&output).await?;
                output.clear();
            }
            // Messages wait while replies are owed, so a SUBSCRIBE's confirmation (and
            // anything sent before it) is answered before the first message.
            Some(message) = messages.recv(), if in_flight.is_empty() => {
                message.encode(state.resp3, &mut output);
                while let Ok(message) = messages.try_recv() {
                    message.encode(state.resp3, &mut output);
                }
                stream.write_all(&output).await?;
                output.clear();
            }
            read = stream.read_buf(&mut input), if need_input && !closing => {
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

/// Commands on one slot gathered from one read, to send as one [`Work::Batch`].
struct Gathering {
    routes: Arc<ServiceRoutes>,
    partition: usize,
    slot: u16,
    commands: Vec<(RequestKind, Vec<u8>, Option<Shape>)>,
}

impl Gathering {
    fn len(&self) -> usize {
        self.commands.len()
    }

    fn into_work(self) -> Work {
        Work::Batch {
            routes: self.routes,
            partition: self.partition,
            slot: self.slot,
            commands: self.commands,
        }
    }
}

fn release(busy_slots: &mut HashMap<u16, u32>, slot: u16) {
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
