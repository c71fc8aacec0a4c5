//! Calling partition groups from outside: gateways, SDKs, benchmarks, tests.
//!
//! Calls bound for the same host that wait at the same moment travel as one
//! [`Request::ClientBatch`] frame: a call queues for its host; up to
//! [`MAX_FRAMES_IN_FLIGHT`] sender tasks per host take whatever has queued (flushing as
//! soon as the queue is non-empty, never waiting for a batch to fill) and send it. A call
//! that finds nothing queued and a sender slot free sends itself, from its own task (no
//! hand-off for a lone call). The host serves a frame's writes as one log entry per group.

use crate::tls::{TlsConfig, TlsError, TransportTls};
use crate::transport::{Request, Response, Transport, TransportConfig, TransportError};
use crate::types::{ClientReply, ClientRequest, GroupId, RequestKind};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Pause before retrying when no leader is known (an election is under way). Short,
/// because a LAN election takes a few hundred milliseconds at most, and because it is
/// added, on average half of it, to every write's wait after a new leader takes office:
/// the gateway retries a partition's queued writes through one sender (one merged write
/// in flight per partition), not through several whose retries would interleave. At
/// this pause one sender tries about 300 times a second while no leader is known.
pub const RETRY_PAUSE: Duration = Duration::from_millis(3);
/// Timeout of one attempt; a retry follows with the same sequence number.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1_000);

/// Frames of batched calls in flight to one host at once; calls arriving while all are
/// out queue and leave together in the next frame.
pub const MAX_FRAMES_IN_FLIGHT: usize = 4;
/// Most calls in one frame.
pub const MAX_CALLS_PER_FRAME: usize = 512;
/// A frame closes at this many payload bytes (a larger single call goes alone).
pub const MAX_FRAME_PAYLOAD_BYTES: usize = 256 << 10;

type CallResult = Result<ClientReply, TransportError>;

struct QueuedCall {
    group: GroupId,
    request: ClientRequest,
    timeout: Duration,
    reply: oneshot::Sender<CallResult>,
}

/// Calls waiting for one host.
#[derive(Default)]
struct HostQueue {
    // A std mutex: a push or a take, never held across an await.
    state: Mutex<HostQueueState>,
}

#[derive(Default)]
struct HostQueueState {
    waiting: VecDeque<QueuedCall>,
    senders: usize,
}

impl HostQueue {
    /// Queues a call; `true` when the caller must start a sender.
    fn push(&self, call: QueuedCall) -> bool {
        let mut s = self.state.lock().expect("call queue poisoned");
        s.waiting.push_back(call);
        if s.senders < MAX_FRAMES_IN_FLIGHT {
            s.senders += 1;
            true
        } else {
            false
        }
    }

    /// Claims a sender slot for a call sent by its own task, when nothing waits and a
    /// slot is free: a lone call then goes out with no hand-off to a sender task.
    fn claim_alone(&self) -> bool {
        let mut s = self.state.lock().expect("call queue poisoned");
        if s.waiting.is_empty() && s.senders < MAX_FRAMES_IN_FLIGHT {
            s.senders += 1;
            true
        } else {
            false
        }
    }

    /// Gives back a slot claimed by [`HostQueue::claim_alone`]; `true` when calls queued
    /// meanwhile and the caller must start a sender with the slot instead.
    fn release_alone(&self) -> bool {
        let mut s = self.state.lock().expect("call queue poisoned");
        if s.waiting.is_empty() {
            s.senders -= 1;
            false
        } else {
            true
        }
    }

    /// The next frame's calls; `None` (and one sender fewer) when none wait.
    fn take(&self) -> Option<Vec<QueuedCall>> {
        let mut s = self.state.lock().expect("call queue poisoned");
        if s.waiting.is_empty() {
            s.senders -= 1;
            return None;
        }
        let mut bytes = 0;
        let mut calls = Vec::new();
        while let Some(call) = s.waiting.front() {
            let size = call.request.payload.len();
            if !calls.is_empty()
                && (calls.len() == MAX_CALLS_PER_FRAME || bytes + size > MAX_FRAME_PAYLOAD_BYTES)
            {
                break;
            }
            bytes += size;
            calls.push(s.waiting.pop_front().expect("front exists"));
        }
        Some(calls)
    }
}

/// Sends the calls queued for `addr`, one frame at a time, until none wait.
async fn send_frames(transport: Arc<Transport>, addr: String, queue: Arc<HostQueue>) {
    while let Some(calls) = queue.take() {
        let timeout = calls.iter().map(|c| c.timeout).max().unwrap_or_default();
        if calls.len() == 1 {
            let call = calls.into_iter().next().expect("one call");
            let result = transport
                .call(&addr, Request::Client(call.group, call.request), timeout)
                .await
                .and_then(|r| client_reply(&addr, r));
            let _ = call.reply.send(result);
            continue;
        }
        let (requests, replies): (Vec<_>, Vec<_>) = calls
            .into_iter()
            .map(|c| ((c.group, c.request), c.reply))
            .unzip();
        let count = requests.len();
        match transport
            .call(&addr, Request::ClientBatch(requests), timeout)
            .await
        {
            Ok(Response::ClientBatch(answers)) if answers.len() == count => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(Ok(answer));
                }
            }
            Ok(other) => {
                let error = TransportError::Protocol {
                    addr: addr.clone(),
                    reason: format!("unexpected answer to {count} batched calls: {other:?}"),
                };
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
            Err(error) => {
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// A sender slot held by a call sent from its own task; dropped (answered, failed or
/// cancelled), it passes to a new sender task when calls queued meanwhile.
struct AloneSlot<'a> {
    transport: &'a Arc<Transport>,
    addr: &'a str,
    queue: &'a Arc<HostQueue>,
}

impl Drop for AloneSlot<'_> {
    fn drop(&mut self) {
        if self.queue.release_alone() {
            tokio::spawn(send_frames(
                self.transport.clone(),
                self.addr.to_string(),
                self.queue.clone(),
            ));
        }
    }
}

fn client_reply(addr: &str, response: Response) -> CallResult {
    match response {
        Response::Client(reply) => Ok(reply),
        Response::NoGroup => Ok(ClientReply::NoGroup),
        other => Err(TransportError::Protocol {
            addr: addr.into(),
            reason: format!("unexpected {other:?}"),
        }),
    }
}

/// Why a call did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No replica answered before the deadline. A write may or may not have been
    /// applied; retrying it with the same sequence number is safe.
    #[error("no answer from group {group} within {deadline_ms} ms (last error: {last})")]
    Timeout {
        /// The group.
        group: GroupId,
        /// The deadline that passed.
        deadline_ms: u64,
        /// The last failure seen.
        last: String,
    },
    /// The group has forgotten this client's session; the write was not applied.
    #[error("sequence {seq} is older than the last one seen ({last_seq}): use a new client id")]
    StaleSequence {
        /// The sequence sent.
        seq: u64,
        /// The group's last.
        last_seq: u64,
    },
}

/// A client with its own exactly-once session (a random client id).
pub struct ReplicaClient {
    transport: Arc<Transport>,
    client_id: u64,
    seq: AtomicU64,
    queues: Mutex<HashMap<String, Arc<HostQueue>>>,
}

impl ReplicaClient {
    /// A client of the cluster sharing `cluster_secret` (plain TCP).
    pub fn new(cluster_secret: &str) -> Self {
        Self::with_transport(cluster_secret, None)
    }

    /// A client of a cluster whose hosts require mutual TLS: it presents the certificate
    /// in `tls` and checks theirs against its CA.
    pub fn with_tls(cluster_secret: &str, tls: &TlsConfig) -> Result<Self, TlsError> {
        Ok(Self::with_transport(
            cluster_secret,
            Some(TransportTls::load(tls)?),
        ))
    }

    fn with_transport(cluster_secret: &str, tls: Option<Arc<TransportTls>>) -> Self {
        let transport = Transport::new(TransportConfig {
            node_id: 0,
            listen_addr: String::new(),
            cluster_secret: cluster_secret.to_string(),
            filter: None,
            tls,
        });
        // Never 0: client 0 means "no session".
        Self {
            transport,
            client_id: rand::random::<u64>() | 1,
            seq: AtomicU64::new(1),
            queues: Mutex::new(HashMap::new()),
        }
    }

    /// This client's session id.
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// The next sequence number; use one per logical request and reuse it on retries.
    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// One attempt at one replica; it shares a frame with the other calls waiting for
    /// the same host.
    pub async fn call(
        &self,
        addr: &str,
        group: GroupId,
        request: ClientRequest,
        timeout: Duration,
    ) -> Result<ClientReply, TransportError> {
        let queue = {
            let mut queues = self.queues.lock().expect("call queues poisoned");
            match queues.get(addr) {
                Some(q) => q.clone(),
                None => queues.entry(addr.to_string()).or_default().clone(),
            }
        };
        if queue.claim_alone() {
            let _slot = AloneSlot {
                transport: &self.transport,
                addr,
                queue: &queue,
            };
            return self
                .transport
                .call(addr, Request::Client(group, request), timeout)
                .await
                .and_then(|r| client_reply(addr, r));
        }
        let (reply, answer) = oneshot::channel();
        let call = QueuedCall {
            group,
            request,
            timeout,
            reply,
        };
        if queue.push(call) {
            tokio::spawn(send_frames(self.transport.clone(), addr.to_string(), queue));
        }
        let timed_out = || TransportError::Timeout {
            addr: addr.into(),
            timeout_ms: timeout.as_millis() as u64,
        };
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(TransportError::Unreachable {
                addr: addr.into(),
                reason: "the call's sender stopped".into(),
            }),
            Err(_) => Err(timed_out()),
        }
    }

    /// Sends `payload` to `group`, starting at `*leader` (or the first member), following
    /// leader hints and trying every member, retrying with the same sequence number until
    /// an answer or `deadline` passes. On success `*leader` holds the replica that answered.
    pub async fn execute(
        &self,
        group: GroupId,
        members: &[String],
        leader: &mut Option<String>,
        kind: RequestKind,
        payload: Vec<u8>,
        deadline: Duration,
    ) -> Result<Vec<u8>, ClientError> {
        let seq = if kind == RequestKind::Write {
            self.next_seq()
        } else {
            0
        };
        let started = Instant::now();
        let mut next_member = 0usize;
        let mut last = String::from("no attempt");
        loop {
            let remaining = deadline.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                return Err(ClientError::Timeout {
                    group,
                    deadline_ms: deadline.as_millis() as u64,
                    last,
                });
            }
            let addr = match leader.clone() {
                Some(a) => a,
                None if members.is_empty() => {
                    return Err(ClientError::Timeout {
                        group,
                        deadline_ms: 0,
                        last: "no members known".into(),
                    })
                }
                None => {
                    next_member += 1;
                    members[(next_member - 1) % members.len()].clone()
                }
            };
            let request = ClientRequest {
                client_id: self.client_id,
                seq,
                kind,
                payload: payload.clone(),
            };
            match self
                .call(&addr, group, request, remaining.min(ATTEMPT_TIMEOUT))
                .await
            {
                Ok(ClientReply::Ok(bytes)) => {
                    *leader = Some(addr);
                    return Ok(bytes);
                }
                Ok(ClientReply::StaleSequence { last_seq }) => {
                    return Err(ClientError::StaleSequence { seq, last_seq })
                }
                Ok(ClientReply::NotLeader {
                    leader_addr: Some(hint),
                    ..
                }) if hint != addr => {
                    *leader = Some(hint);
                    continue;
                }
                Ok(other) => {
                    last = format!("{addr}: {other:?}");
                    *leader = None;
                }
                Err(e) => {
                    last = e.to_string();
                    *leader = None;
                }
            }
            tokio::time::sleep(RETRY_PAUSE.min(deadline.saturating_sub(started.elapsed()))).await;
        }
    }
}
