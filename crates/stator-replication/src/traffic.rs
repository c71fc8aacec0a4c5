//! Bytes on the replica transport per peer node, counted where frames are written and
//! read, reported in heartbeats for Prometheus.

use stator_api::agent::{PeerTraffic, MAX_TRAFFIC_PEERS};
use stator_api::ids::NodeId;
use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

/// Bytes exchanged with one peer.
#[derive(Debug, Default)]
pub struct PeerCounters {
    sent_bytes: AtomicU64,
    received_bytes: AtomicU64,
}

impl PeerCounters {
    /// Counts bytes written to the peer.
    pub fn sent(&self, bytes: usize) {
        self.sent_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts bytes read from the peer.
    pub fn received(&self, bytes: usize) {
        self.received_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// Every peer's counters, cumulative for the life of the transport. Bounded: past
/// [`MAX_TRAFFIC_PEERS`] peers, new ones are counted under peer 0 with the clients.
#[derive(Debug, Default)]
pub struct Traffic {
    // A std mutex: a map lookup per connection, never held across an await.
    peers: Mutex<BTreeMap<NodeId, Arc<PeerCounters>>>,
}

impl Traffic {
    /// The counters of `peer` (0: clients), made on first use.
    pub fn peer(&self, peer: NodeId) -> Arc<PeerCounters> {
        let mut peers = self.peers.lock().expect("traffic mutex poisoned");
        let key = if peers.len() >= MAX_TRAFFIC_PEERS && !peers.contains_key(&peer) {
            0
        } else {
            peer
        };
        peers.entry(key).or_default().clone()
    }

    /// The counts so far, by peer.
    pub fn snapshot(&self) -> Vec<PeerTraffic> {
        self.peers
            .lock()
            .expect("traffic mutex poisoned")
            .iter()
            .map(|(peer, c)| PeerTraffic {
                peer: *peer,
                sent_bytes: c.sent_bytes.load(Ordering::Relaxed),
                received_bytes: c.received_bytes.load(Ordering::Relaxed),
            })
            .collect()
    }
}

/// A reader that counts what it reads as received from one peer.
pub struct CountingReader<R> {
    inner: R,
    counters: Arc<PeerCounters>,
}

impl<R> CountingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R, counters: Arc<PeerCounters>) -> Self {
        Self { inner, counters }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for CountingReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let read = buf.filled().len() - before;
            self.counters.received(read);
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn a_counting_reader_counts_every_byte_it_reads() {
        let traffic = Traffic::default();
        let mut reader = CountingReader::new(&b"hello world"[..], traffic.peer(3));
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.unwrap();
        traffic.peer(3).sent(5);
        assert_eq!(
            traffic.snapshot(),
            vec![PeerTraffic {
                peer: 3,
                sent_bytes: 5,
                received_bytes: 11
            }]
        );
    }

    #[test]
    fn peers_past_the_limit_are_counted_under_peer_zero() {
        let traffic = Traffic::default();
        for peer in 1..=MAX_TRAFFIC_PEERS as u64 + 5 {
            traffic.peer(peer).sent(1);
        }
        let snapshot = traffic.snapshot();
        assert_eq!(snapshot.len(), MAX_TRAFFIC_PEERS + 1);
        assert_eq!(snapshot[0].peer, 0);
        assert_eq!(snapshot[0].sent_bytes, 5);
    }
}
