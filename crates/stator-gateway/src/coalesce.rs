//! Batches of many connections bound for one partition, merged into one request: writes
//! into one write, reads into one read.
//!
//! A connection sends the commands of one read bound for one partition as one batch
//! ([`crate::resp::pipeline`]: one `STATOR.EXEC`). Fifty connections doing that at the
//! same moment would cost the leader fifty requests (a session check, a parse, a reply
//! frame each; for reads a lease check and a state-machine lock each). Instead a batch
//! queues for its partition and kind (writes, linearizable reads and stale reads queue
//! apart, since one request has one kind), and a sender takes whatever has queued, as soon
//! as its previous request is answered (nothing waits for a batch to fill or on a timer),
//! and sends it as ONE `STATOR.EXEC` write: one exactly-once session (retried whole on a
//! leader change), one request, one reply split back among the batches.
//!
//! One sender per partition and kind is at work, normally: what queues while its request
//! is out leaves as the next one, so a merged write carries everything that arrived in
//! one round trip. More senders in flight would each carry a share of it, and each
//! request is one Raft entry at the leader, whose cost (log append, one AppendEntries and
//! its answer per follower, apply, reply frame) hardly depends on its size: with four
//! eager senders the leaders made 2.1-3.2 times as many entries per pipelined SET
//! (docs/BENCHMARKS.md, "Session 15: the gateway's pipelined SET"). A further sender (up
//! to [`MAX_WRITES_IN_FLIGHT_PER_PARTITION`]) starts only when a whole merged write
//! ([`MAX_MERGED_COMMANDS`] or [`MAX_MERGED_BYTES`]) waits, since waiting longer would not
//! make it larger, and stops after its request unless a whole one waits again.
//! (The leader's write queue, `stator-replication` `host.rs` `WriteQueue`, keeps its
//! proposers by the same rule.)
//!
//! A batch that finds no sender at work is sent by its own caller, with no task hop, so a
//! lone client pays nothing for the coalescing; only batches that queued behind a busy
//! sender are sent by a spawned sender task (one per burst, not per batch), which a
//! connection that leaves cannot cancel under the other connections' feet.
//!
//! Order: each batch's commands stay contiguous and in their order inside the merged
//! write, so a connection's order is kept (and the connection still sends a command on a
//! slot only after its earlier commands on that slot are answered, see
//! [`crate::resp::connection`]). Batches of different connections were concurrent, so
//! any order between them is one Redis could have chosen; the merged write applies them
//! all atomically, in the order they queued. A merged read is answered at one point of
//! the partition's history, after every batch in it was submitted and before any gets
//! its reply: inside each batch's own window, so each read stays linearizable.

use crate::map::ServiceRoutes;
use crate::resp::{connection::error_reply, pipeline};
use crate::router::RouterCore;
use bytes::Bytes;
use stator_api::ids::GroupId;
use stator_kv::Value;
use stator_replication::host::MAX_WRITE_BATCH_BYTES;
use stator_replication::RequestKind;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Most merged writes (or merged reads of one kind) in flight to one partition at once.
/// One is the rule; the others start only for whole merged writes already waiting (see
/// the module doc). The leader keeps up to 4 log entries in flight per group; more
/// senders would only queue there.
pub const MAX_WRITES_IN_FLIGHT_PER_PARTITION: usize = 4;

/// Most commands in one merged write: a cap on one entry's apply time (and so on the wait
/// of the commands behind it).
pub const MAX_MERGED_COMMANDS: usize = 256;

/// Most payload bytes in one merged write (a larger single batch goes alone): the
/// leader's own write batch size, which keeps an AppendEntries of 128 entries near
/// 1 MiB, so a busy machine still sends it within openraft's append timeout (see
/// [`MAX_WRITE_BATCH_BYTES`]). Fifty `-P 16` connections of small SETs fit in one.
pub const MAX_MERGED_BYTES: usize = MAX_WRITE_BATCH_BYTES;

/// The write batches waiting for each partition; one per [`crate::Router`]. Holds an
/// empty queue (tens of bytes) for each partition ever written through it, also after its
/// service is deleted: bounded by the partitions a cluster ever had.
#[derive(Default)]
pub(crate) struct Coalescer {
    // A std mutex: a lookup or an insert, never held across an await.
    queues: Mutex<HashMap<(GroupId, KindIndex), Arc<PartitionQueue>>>,
}

/// Batches waiting for one partition, and how many senders are at work for it.
#[derive(Default)]
struct PartitionQueue {
    // A std mutex: a push or a take, never held across an await.
    state: Mutex<QueueState>,
}

#[derive(Default)]
struct QueueState {
    waiting: VecDeque<Waiting>,
    /// Commands and payload bytes of `waiting`.
    waiting_commands: usize,
    waiting_bytes: usize,
    senders: usize,
}

impl QueueState {
    /// Whether a batch just queued needs a sender of its own: none is at work, or a whole
    /// merged write waits and the limit allows one more.
    fn wants_sender(&self) -> bool {
        self.senders == 0
            || (self.senders < MAX_WRITES_IN_FLIGHT_PER_PARTITION && self.holds_whole_write())
    }

    /// Whether a sender back from its request stops rather than take what waits: nothing
    /// waits, or another sender is at work and what waits is less than a whole merged
    /// write (that one takes it when it is back, so the extra senders a burst started
    /// do not stay and split the queue among them).
    fn sender_stops(&self) -> bool {
        self.waiting.is_empty() || (self.senders > 1 && !self.holds_whole_write())
    }

    fn holds_whole_write(&self) -> bool {
        self.waiting_commands >= MAX_MERGED_COMMANDS || self.waiting_bytes >= MAX_MERGED_BYTES
    }
}

/// One connection's batch, queued.
struct Waiting {
    routes: Arc<ServiceRoutes>,
    partition: usize,
    commands: Vec<(RequestKind, Bytes)>,
    bytes: usize,
    reply: oneshot::Sender<Vec<Bytes>>,
}

impl Coalescer {
    /// Answers `commands` (for `routes.partitions[partition]`, in order, one reply each),
    /// merged with whatever other batches of the same `kind` wait for the same partition.
    /// `kind` is [`RequestKind::Write`] for a batch holding a write, else the one kind of
    /// all its reads.
    pub(crate) async fn submit(
        &self,
        core: &Arc<RouterCore>,
        routes: Arc<ServiceRoutes>,
        partition: usize,
        kind: RequestKind,
        commands: Vec<(RequestKind, Bytes)>,
    ) -> Vec<Bytes> {
        let queue = self.queue(routes.partitions[partition].group, kind);
        let count = commands.len();
        let queued = {
            let mut state = queue.state.lock().expect("write queue poisoned");
            if state.senders == 0 && state.waiting.is_empty() {
                // Nothing in flight: sent from here below, no task hop.
                state.senders += 1;
                Err(commands)
            } else {
                let (reply, answer) = oneshot::channel();
                let bytes = commands.iter().map(|(_, payload)| payload.len()).sum();
                state.waiting_commands += count;
                state.waiting_bytes += bytes;
                state.waiting.push_back(Waiting {
                    routes: routes.clone(),
                    partition,
                    commands,
                    bytes,
                    reply,
                });
                if state.wants_sender() {
                    state.senders += 1;
                    tokio::spawn(drain(core.clone(), queue.clone(), kind));
                }
                Ok(answer)
            }
        };
        let answer = match queued {
            Ok(answer) => answer,
            Err(commands) => {
                let slot = SenderSlot {
                    core: core.clone(),
                    queue,
                    kind,
                };
                // Boxed: `send` holds the router's retrying forward, a future of
                // kilobytes. Inline it would size every `submit` (and so every batch's unit
                // in its connection's `FuturesUnordered`: one allocation and copy of that
                // size per batch), though most batches under load take the queued path
                // above and only wait for their answer.
                let replies = Box::pin(send(core, &routes, partition, kind, commands)).await;
                drop(slot);
                return replies;
            }
        };
        answer.await.unwrap_or_else(|_| {
            // Only if the runtime shuts down under the sender task.
            let error = Value::error(
                "ERR the gateway stopped while sending this write; it may or may not have been applied",
            )
            .to_bytes();
            vec![Bytes::from(error); count]
        })
    }

    fn queue(&self, group: GroupId, kind: RequestKind) -> Arc<PartitionQueue> {
        let mut queues = self.queues.lock().expect("write queues poisoned");
        queues.entry((group, kind_index(kind))).or_default().clone()
    }
}

/// A [`RequestKind`] as a map key (it has no `Hash`).
type KindIndex = u8;

fn kind_index(kind: RequestKind) -> KindIndex {
    match kind {
        RequestKind::Write => 0,
        RequestKind::Read => 1,
        RequestKind::StaleRead => 2,
    }
}

impl PartitionQueue {
    /// The batches of the next merged write, oldest first; `None` (and one sender fewer)
    /// when the calling sender stops ([`QueueState::sender_stops`]).
    fn take(&self) -> Option<Vec<Waiting>> {
        let mut state = self.state.lock().expect("write queue poisoned");
        if state.sender_stops() {
            state.senders -= 1;
            return None;
        }
        let (mut commands, mut bytes) = (0, 0);
        let mut taken = Vec::new();
        while let Some(next) = state.waiting.front() {
            let fits = commands + next.commands.len() <= MAX_MERGED_COMMANDS
                && bytes + next.bytes <= MAX_MERGED_BYTES;
            if !taken.is_empty() && !fits {
                break;
            }
            commands += next.commands.len();
            bytes += next.bytes;
            taken.push(state.waiting.pop_front().expect("front exists"));
        }
        state.waiting_commands -= commands;
        state.waiting_bytes -= bytes;
        Some(taken)
    }
}

/// A sender's place among a partition's [`MAX_WRITES_IN_FLIGHT_PER_PARTITION`], held by a
/// caller sending its own batch. Given up when dropped (also when the caller's future is
/// dropped mid-send): batches that queued meanwhile go to a sender task, which takes the
/// place over.
struct SenderSlot {
    core: Arc<RouterCore>,
    queue: Arc<PartitionQueue>,
    kind: RequestKind,
}

impl Drop for SenderSlot {
    fn drop(&mut self) {
        let mut state = self.queue.state.lock().expect("write queue poisoned");
        if state.sender_stops() {
            state.senders -= 1;
        } else if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            drop(state);
            runtime.spawn(drain(self.core.clone(), self.queue.clone(), self.kind));
        } else {
            // The runtime is gone: so are the callers waiting for an answer.
            state.senders -= 1;
        }
    }
}

/// A sender task: sends what queued for `queue`, one merged write at a time, until
/// nothing waits.
async fn drain(core: Arc<RouterCore>, queue: Arc<PartitionQueue>, kind: RequestKind) {
    while let Some(batches) = queue.take() {
        let last = batches.last().expect("take returns at least one batch");
        // The freshest routes among them (batches queued under a newer map come later).
        let (routes, partition) = (last.routes.clone(), last.partition);
        if batches.len() == 1 {
            let batch = batches.into_iter().next().expect("one batch");
            let replies = send(&core, &routes, partition, kind, batch.commands).await;
            let _ = batch.reply.send(replies);
            continue;
        }
        let mut counts = Vec::with_capacity(batches.len());
        let mut commands = Vec::with_capacity(batches.iter().map(|b| b.commands.len()).sum());
        let mut replies_to = Vec::with_capacity(batches.len());
        for batch in batches {
            counts.push(batch.commands.len());
            commands.extend(batch.commands);
            replies_to.push(batch.reply);
        }
        let mut replies = send(&core, &routes, partition, kind, commands)
            .await
            .into_iter();
        for (count, reply) in counts.into_iter().zip(replies_to) {
            // A connection that left meanwhile has nobody to answer.
            let _ = reply.send(replies.by_ref().take(count).collect());
        }
    }
}

/// Sends `commands` as one request of `kind` (one command as itself, more as one
/// `STATOR.EXEC`) and answers each.
async fn send(
    core: &RouterCore,
    routes: &ServiceRoutes,
    partition: usize,
    kind: RequestKind,
    mut commands: Vec<(RequestKind, Bytes)>,
) -> Vec<Bytes> {
    let route = &routes.partitions[partition];
    let count = commands.len();
    let (kind, payload) = if count == 1 {
        let (kind, payload) = commands.pop().expect("one command");
        (kind, payload.to_vec())
    } else {
        (kind, pipeline::encode(&commands))
    };
    match core.forward(route, kind, payload).await {
        Ok(reply) if count == 1 => vec![Bytes::from(reply)],
        Ok(reply) if kind != RequestKind::Write && pipeline::refused_as_query(&reply) => {
            // A replica from before read batches: one read each.
            futures::future::join_all(commands.into_iter().map(|(kind, payload)| async move {
                Bytes::from(match core.forward(route, kind, payload.to_vec()).await {
                    Ok(reply) => reply,
                    Err(error) => error_reply(routes, route.partition, kind, &error),
                })
            }))
            .await
        }
        Ok(reply) => pipeline::split(reply, count),
        Err(error) => vec![Bytes::from(error_reply(routes, route.partition, kind, &error)); count],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(senders: usize, commands: usize, bytes: usize) -> QueueState {
        QueueState {
            waiting_commands: commands,
            waiting_bytes: bytes,
            senders,
            ..QueueState::default()
        }
    }

    fn waiting(commands: usize, bytes_each: usize) -> Waiting {
        let routes = Arc::new(ServiceRoutes {
            name: "s".into(),
            kind: stator_api::spec::ServiceKind::Replicated,
            builtin_kv: true,
            resp_listen: None,
            auth: None,
            protected_mode: false,
            tls: None,
            cluster: false,
            partitions: Vec::new(),
            instances: Vec::new(),
        });
        let payload = Bytes::from(vec![b'x'; bytes_each]);
        Waiting {
            routes,
            partition: 0,
            commands: vec![(RequestKind::Write, payload); commands],
            bytes: commands * bytes_each,
            reply: oneshot::channel().0,
        }
    }

    fn push(queue: &PartitionQueue, batch: Waiting) {
        let mut state = queue.state.lock().unwrap();
        state.waiting_commands += batch.commands.len();
        state.waiting_bytes += batch.bytes;
        state.waiting.push_back(batch);
    }

    #[test]
    fn a_take_is_one_merged_write_and_keeps_the_tallies() {
        let queue = PartitionQueue::default();
        queue.state.lock().unwrap().senders = 1;
        let per_batch = MAX_MERGED_COMMANDS / 4;
        for _ in 0..5 {
            push(&queue, waiting(per_batch, 10));
        }
        let taken = queue.take().expect("batches wait");
        assert_eq!(taken.len(), 4, "up to a whole merged write");
        let state = queue.state.lock().unwrap();
        assert_eq!(
            (state.waiting_commands, state.waiting_bytes),
            (per_batch, per_batch * 10)
        );
        drop(state);
        assert_eq!(queue.take().map(|t| t.len()), Some(1));
        assert!(queue.take().is_none(), "nothing left: the sender stops");
        // Two at work (a burst started the second) and less than a whole write waits:
        // the one back first stops, the other takes it.
        queue.state.lock().unwrap().senders = 2;
        push(&queue, waiting(per_batch, 10));
        assert!(queue.take().is_none());
        assert_eq!(queue.state.lock().unwrap().senders, 1);
        assert_eq!(queue.take().map(|t| t.len()), Some(1));
        assert!(queue.take().is_none());
        let state = queue.state.lock().unwrap();
        assert_eq!(
            (state.waiting_commands, state.waiting_bytes, state.senders),
            (0, 0, 0)
        );
    }

    #[test]
    fn one_sender_at_work_unless_a_whole_merged_write_waits() {
        assert!(
            !state(1, 16, 700).wants_sender(),
            "a batch behind a sender waits for it"
        );
        assert!(state(1, MAX_MERGED_COMMANDS, 700).wants_sender());
        assert!(state(1, 1, MAX_MERGED_BYTES).wants_sender());
        assert!(
            !state(MAX_WRITES_IN_FLIGHT_PER_PARTITION, MAX_MERGED_COMMANDS, 0).wants_sender(),
            "never past the limit"
        );
        assert!(
            state(0, 1, 10).wants_sender(),
            "queued batches always have a sender"
        );
    }
}
