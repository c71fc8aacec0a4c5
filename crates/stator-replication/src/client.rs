//! Calling partition groups from outside: gateways, SDKs, benchmarks, tests.

use crate::tls::{TlsConfig, TlsError, TransportTls};
use crate::transport::{Request, Response, Transport, TransportConfig, TransportError};
use crate::types::{ClientReply, ClientRequest, GroupId, RequestKind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Pause before retrying when no leader is known (an election is under way). Short,
/// because a LAN election takes a few hundred milliseconds at most.
pub const RETRY_PAUSE: Duration = Duration::from_millis(10);
/// Timeout of one attempt; a retry follows with the same sequence number.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1_000);

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

    /// One attempt at one replica.
    pub async fn call(
        &self,
        addr: &str,
        group: GroupId,
        request: ClientRequest,
        timeout: Duration,
    ) -> Result<ClientReply, TransportError> {
        match self
            .transport
            .call(addr, Request::Client(group, request), timeout)
            .await?
        {
            Response::Client(reply) => Ok(reply),
            Response::NoGroup => Ok(ClientReply::NoGroup),
            other => Err(TransportError::Protocol {
                addr: addr.into(),
                reason: format!("unexpected {other:?}"),
            }),
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
