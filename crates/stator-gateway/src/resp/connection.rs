//! One RESP client connection: parse pipelined commands, forward them concurrently,
//! answer in order.
//!
//! Commands of one connection run concurrently (that is what makes `-P 16` fast) with one
//! exception: a command waits while an earlier command of the same connection on the
//! same slot is in flight, because the replicas give no order between concurrent requests
//! and Redis promises a connection's commands on one key run in the order sent. Replies
//! always leave in request order.

use super::local::{dispatch, ConnectionState, Dispatch};
use super::Backend;
use crate::map::{PartitionMap, ServiceRoutes};
use crate::router::Router;
use bytes::{Buf, BytesMut};
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use stator_kv::{encode_command, parse_command, Value};
use stator_replication::{ClientError, RequestKind};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Commands of one connection in flight at once. Deeper than any benchmark pipeline
/// (`redis-benchmark -P 16`) but small enough that one client cannot flood a partition.
pub const MAX_PIPELINE_DEPTH: usize = 128;

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
    },
}

/// A finished command: its reply and the slot it held, if any.
struct Done {
    reply: Vec<u8>,
    slot: Option<u16>,
}

async fn perform<B: Backend>(backend: &B, work: Work) -> Done {
    match work {
        Work::Ready(reply) => Done { reply, slot: None },
        Work::Forward {
            routes,
            partition,
            slot,
            kind,
            payload,
        } => Done {
            reply: backend
                .execute(routes, partition, slot, kind, payload)
                .await,
            slot: Some(slot),
        },
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

/// Serves one connection until the client leaves, sends QUIT or garbage, or `cancel`.
pub async fn serve<B: Backend>(
    mut stream: TcpStream,
    router: Arc<B>,
    service: String,
    mut map: watch::Receiver<Arc<PartitionMap>>,
    connection_id: u64,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (mut reader, mut writer) = stream.split();
    let mut state = ConnectionState {
        id: connection_id,
        node: router.node(),
        ..ConnectionState::default()
    };
    let mut routes = map.borrow_and_update().services.get(&service).cloned();
    let mut input = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut output: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);
    let mut in_flight = FuturesOrdered::new();
    // Slot -> commands of this connection in flight on it.
    let mut busy_slots: HashMap<u16, u32> = HashMap::new();
    // QUIT or a protocol error: answer what came before, then close.
    let mut closing = false;
    loop {
        // Dispatch every complete command buffered, until the pipeline is full or a
        // command must wait for an earlier one on its slot.
        let mut need_input = false;
        while !closing && in_flight.len() < MAX_PIPELINE_DEPTH {
            let (argv, used) = match parse_command(&input) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => {
                    if input.len() > MAX_COMMAND_BYTES {
                        in_flight.push_back(perform(&*router, Work::Ready(Value::error(format!(
                            "ERR Protocol error: command larger than {MAX_COMMAND_BYTES} bytes; split the value"
                        )).to_bytes())));
                        closing = true;
                    }
                    need_input = true;
                    break;
                }
                Err(error) => {
                    in_flight
                        .push_back(perform(&*router, Work::Ready(error.to_reply().to_bytes())));
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
            }
            let work = match dispatch(&argv, &mut state, routes.as_deref()) {
                Dispatch::Reply(reply) => Work::Ready(reply),
                Dispatch::ReplyAndClose(reply) => {
                    closing = true;
                    Work::Ready(reply)
                }
                Dispatch::Forward { slot, kind } => {
                    if busy_slots.contains_key(&slot) {
                        // Parsed again once the earlier command is answered.
                        break;
                    }
                    match forward_work(
                        &*router,
                        routes.as_ref(),
                        &service,
                        slot,
                        kind,
                        &input[..used],
                        &argv,
                    ) {
                        Ok(work) => {
                            *busy_slots.entry(slot).or_default() += 1;
                            work
                        }
                        Err(reply) => Work::Ready(reply),
                    }
                }
            };
            in_flight.push_back(perform(&*router, work));
            input.advance(used);
        }
        if in_flight.is_empty() && closing {
            writer.shutdown().await.ok();
            return Ok(());
        }
        tokio::select! {
            // Cancellation first: a service removed from the map closes its connections.
            biased;
            _ = cancel.cancelled() => return Ok(()),
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                let mut done = Some(done);
                // Collect every reply ready now so one write carries a whole pipeline.
                while let Some(Done { reply, slot }) = done.take() {
                    output.extend_from_slice(&reply);
                    if let Some(slot) = slot {
                        release(&mut busy_slots, slot);
                    }
                    done = in_flight.next().now_or_never().flatten();
                }
                writer.write_all(&output).await?;
                output.clear();
            }
            read = reader.read_buf(&mut input), if need_input && !closing => {
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

fn release(busy_slots: &mut HashMap<u16, u32>, slot: u16) {
    let count = busy_slots
        .get_mut(&slot)
        .expect("a finished command held its slot");
    *count -= 1;
    if *count == 0 {
        busy_slots.remove(&slot);
    }
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
        router.request_refresh();
        return Err(Value::error(format!(
            "CLUSTERDOWN service '{service}' is not in the partition map (deleted, or not applied yet)"
        ))
        .to_bytes());
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
    })
}
