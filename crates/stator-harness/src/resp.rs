//! One RESP connection for every caller that speaks to a Redis-compatible endpoint
//! (stator's kv through the gateway, or a real Redis baseline), after mini-redis's
//! `Connection`: commands out, whole replies in, with a bound on what is buffered.

use std::io;
use std::time::Duration;

use stator_kv::{encode_command, parse_reply, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};

/// Largest reply (or run of pipelined replies not yet read) a connection buffers. The
/// callers here read small values (chaos, benchmarks, tests); a peer that sends more
/// without finishing a reply is broken, and stopping there keeps a test from eating the
/// machine's memory.
pub const MAX_REPLY_BYTES: usize = 64 << 20;
/// Bytes asked of the socket per read.
const READ_CHUNK_BYTES: usize = 16 << 10;

/// A connection to a RESP endpoint: send commands (one or pipelined), read replies.
pub struct Connection {
    stream: TcpStream,
    /// Bytes read but not yet parsed into a reply.
    buffer: Vec<u8>,
}

impl Connection {
    /// Connects to `addr` (Nagle off: requests are small and latency matters).
    pub async fn connect(addr: impl ToSocketAddrs) -> io::Result<Connection> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            buffer: Vec::with_capacity(READ_CHUNK_BYTES),
        })
    }

    /// Connects, giving up after `timeout`.
    pub async fn connect_timeout(
        addr: impl ToSocketAddrs,
        timeout: Duration,
    ) -> io::Result<Connection> {
        tokio::time::timeout(timeout, Connection::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
    }

    /// Sends one command without waiting for its reply.
    pub async fn send<A: AsRef<[u8]>>(&mut self, argv: &[A]) -> io::Result<()> {
        self.stream.write_all(&encode_command(argv)).await
    }

    /// Sends bytes as they are (pipelined commands, or a malformed frame on purpose).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Reads the next reply; `None` when the peer closed the connection between replies.
    /// An error reply is a `Value::Error`, not an `Err`: what it means is the caller's.
    pub async fn read_reply(&mut self) -> io::Result<Option<Value>> {
        loop {
            match parse_reply(&self.buffer) {
                Ok(Some((value, used))) => {
                    self.buffer.drain(..used);
                    return Ok(Some(value));
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("malformed reply: {e}"),
                    ))
                }
            }
            if self.buffer.len() > MAX_REPLY_BYTES {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("reply larger than {MAX_REPLY_BYTES} bytes"),
                ));
            }
            let mut chunk = [0u8; READ_CHUNK_BYTES];
            let read = self.stream.read(&mut chunk).await?;
            if read == 0 {
                if self.buffer.is_empty() {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed in the middle of a reply",
                ));
            }
            self.buffer.extend_from_slice(&chunk[..read]);
        }
    }

    /// Sends one command and reads its reply; a closed connection is an error.
    pub async fn call<A: AsRef<[u8]>>(&mut self, argv: &[A]) -> io::Result<Value> {
        self.send(argv).await?;
        self.expect_reply().await
    }

    /// Writes `frames` (several encoded commands) in one write and reads `replies` replies.
    pub async fn pipeline(&mut self, frames: &[u8], replies: usize) -> io::Result<Vec<Value>> {
        self.send_raw(frames).await?;
        let mut out = Vec::with_capacity(replies);
        while out.len() < replies {
            out.push(self.expect_reply().await?);
        }
        Ok(out)
    }

    async fn expect_reply(&mut self) -> io::Result<Value> {
        self.read_reply().await?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            )
        })
    }
}

/// `replies` when none is an error reply; else the first error as an `Err`, for callers
/// to whom any error reply means "try again".
pub fn without_errors(replies: Vec<Value>) -> io::Result<Vec<Value>> {
    match replies.iter().find(|r| r.is_error()) {
        Some(error) => Err(io::Error::other(format!("server error: {error:?}"))),
        None => Ok(replies),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that answers every read with `reply` (then closes when told to).
    async fn answering(reply: &'static [u8], close: bool) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut request = [0u8; 1024];
            let _ = socket.read(&mut request).await;
            let _ = socket.write_all(reply).await;
            if !close {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn replies_are_read_whole_and_pipelined_replies_in_order() {
        let addr = answering(b"+OK\r\n$3\r\nabc\r\n:1\r\n", false).await;
        let mut conn = Connection::connect(addr).await.expect("connect");
        let replies = conn.pipeline(b"ignored", 3).await.expect("replies");
        assert_eq!(
            replies,
            vec![Value::ok(), Value::bulk("abc"), Value::Integer(1)]
        );
    }

    #[tokio::test]
    async fn a_closed_connection_is_none_between_replies_and_an_error_inside_one() {
        let addr = answering(b"", true).await;
        let mut conn = Connection::connect(addr).await.expect("connect");
        conn.send(&["PING"]).await.expect("send");
        assert_eq!(conn.read_reply().await.expect("clean close"), None);

        let addr = answering(b"$10\r\nabc", true).await;
        let mut conn = Connection::connect(addr).await.expect("connect");
        let error = conn.call(&["GET", "k"]).await.expect_err("cut reply");
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn a_reply_over_the_bound_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let header = format!("${}\r\n", MAX_REPLY_BYTES * 2);
            let _ = socket.write_all(header.as_bytes()).await;
            let chunk = vec![b'x'; 1 << 20];
            for _ in 0..(MAX_REPLY_BYTES >> 20) + 2 {
                if socket.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        });
        let mut conn = Connection::connect(addr).await.expect("connect");
        let error = conn.read_reply().await.expect_err("too large");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("larger than"), "{error}");
    }
}
