//! The app side: implement [`App`], call [`serve_from_env`], and the agent does the rest.
//!
//! Blocking std IO on purpose: an app serves one host connection whose requests are
//! sequential, so a runtime would add dependencies and nothing else.
//!
//! ```no_run
//! use stator_sm::sdk::{serve_from_env, App};
//!
//! #[derive(Default)]
//! struct Counter(u64);
//!
//! impl App for Counter {
//!     fn apply(&mut self, _index: u64, _time_ms: u64, _command: &[u8]) -> Vec<u8> {
//!         self.0 += 1;
//!         self.0.to_string().into_bytes()
//!     }
//!     fn query(&self, _time_ms: u64, _request: &[u8]) -> Vec<u8> {
//!         self.0.to_string().into_bytes()
//!     }
//!     fn snapshot(&self) -> Vec<u8> {
//!         self.0.to_be_bytes().to_vec()
//!     }
//!     fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
//!         let bytes = snapshot.try_into().map_err(|_| "want 8 bytes".to_string())?;
//!         self.0 = u64::from_be_bytes(bytes);
//!         Ok(())
//!     }
//! }
//!
//! fn main() -> Result<(), stator_sm::SmError> {
//!     serve_from_env(Counter::default())
//! }
//! ```

use crate::error::SmError;
use crate::frame::{self, Request, Response, HANDSHAKE, LENGTH_PREFIX_BYTES};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Environment variable with the host's socket path.
pub const ENV_SOCKET: &str = "STATOR_SM_SOCKET";
/// Environment variable with the service name.
pub const ENV_SERVICE: &str = "STATOR_SERVICE";
/// Environment variable with the partition index.
pub const ENV_PARTITION: &str = "STATOR_PARTITION";
/// Environment variable with the replica (node) id.
pub const ENV_REPLICA: &str = "STATOR_REPLICA";

/// A deterministic state machine served over `stator-sm/1`.
///
/// # To ensure correctness
/// - `apply` must depend only on the state, `index`, `time_ms` and `command`: no
///   clocks, randomness or environment. Every replica applies the same entries and must
///   reach the same state; the agent also replays entries after a crash.
/// - `query` must not change what later calls observe (it only gets `&self`).
/// - `restore(&snapshot())` must give back an indistinguishable machine.
/// - A client's bad command should produce an error *reply*, not a panic: a panic
///   kills the process, the agent restarts and replays it, and it panics again until
///   the replica is stopped.
pub trait App {
    /// Applies one committed command and returns the reply for the client.
    fn apply(&mut self, index: u64, time_ms: u64, command: &[u8]) -> Vec<u8>;
    /// Answers a read-only request.
    fn query(&self, time_ms: u64, request: &[u8]) -> Vec<u8>;
    /// Serialises the whole state.
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the whole state; an `Err` is reported to the host as a bad snapshot.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String>;
}

/// Where this app instance sits in the cluster, as the agent told it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppEnv {
    /// The host's socket path.
    pub socket_path: String,
    /// The service name.
    pub service: String,
    /// The partition index.
    pub partition: u32,
    /// The replica (node) id.
    pub replica: u64,
}

impl AppEnv {
    /// Reads the `STATOR_*` variables the agent sets.
    pub fn from_env() -> Result<Self, SmError> {
        fn var(name: &'static str) -> Result<String, SmError> {
            std::env::var(name).map_err(|_| SmError::MissingEnv { name })
        }
        fn number<T: std::str::FromStr>(name: &'static str) -> Result<T, SmError> {
            var(name)?.parse().map_err(|_| SmError::MissingEnv { name })
        }
        Ok(AppEnv {
            socket_path: var(ENV_SOCKET)?,
            service: var(ENV_SERVICE)?,
            partition: number(ENV_PARTITION)?,
            replica: number(ENV_REPLICA)?,
        })
    }
}

/// Connects to the socket in `STATOR_SM_SOCKET` and serves `app` until the host hangs up.
pub fn serve_from_env<A: App>(app: A) -> Result<(), SmError> {
    let socket_path =
        std::env::var(ENV_SOCKET).map_err(|_| SmError::MissingEnv { name: ENV_SOCKET })?;
    serve(socket_path, app)
}

/// Connects to the host at `socket_path`, shakes hands and serves requests until the
/// host closes the connection (then returns `Ok`).
pub fn serve<A: App>(socket_path: impl AsRef<Path>, mut app: A) -> Result<(), SmError> {
    let stream = UnixStream::connect(socket_path).map_err(SmError::io("connecting to the host"))?;
    let mut reader = BufReader::new(
        stream
            .try_clone()
            .map_err(SmError::io("cloning the socket"))?,
    );
    let mut writer = BufWriter::new(stream);
    writer
        .write_all(HANDSHAKE)
        .and_then(|()| writer.flush())
        .map_err(SmError::io("sending the handshake"))?;
    let mut greeting = [0u8; HANDSHAKE.len()];
    reader
        .read_exact(&mut greeting)
        .map_err(SmError::io("reading the host's handshake"))?;
    if &greeting != HANDSHAKE {
        return Err(SmError::BadHandshake {
            expected: String::from_utf8_lossy(HANDSHAKE).into_owned(),
            received: String::from_utf8_lossy(&greeting).into_owned(),
        });
    }

    let mut frame_buffer = Vec::new();
    let mut out = Vec::new();
    while read_frame(&mut reader, &mut frame_buffer)? {
        let request = frame::decode_request(&frame_buffer)?;
        out.clear();
        answer(&mut app, request, &mut out)?;
        writer
            .write_all(&out)
            .map_err(SmError::io("writing a response"))?;
        // Pipelining: while the host has already sent more requests, keep answering
        // and flush once; a lone request is answered at once.
        if reader.buffer().is_empty() {
            writer.flush().map_err(SmError::io("writing a response"))?;
        }
    }
    Ok(())
}

/// Runs one request through the app and encodes the response into `out`.
fn answer<A: App>(app: &mut A, request: Request<'_>, out: &mut Vec<u8>) -> Result<(), SmError> {
    let reply = match request {
        Request::Apply {
            index,
            time_ms,
            command,
        } => Ok(app.apply(index, time_ms, command)),
        Request::Query { time_ms, request } => Ok(app.query(time_ms, request)),
        Request::Snapshot => Ok(app.snapshot()),
        Request::Restore { snapshot } => app.restore(snapshot).map(|()| Vec::new()),
    };
    let encoded = match &reply {
        Ok(reply) => frame::encode_response(&Response::Ok(reply), out),
        Err(message) => frame::encode_response(&Response::Error(message.as_bytes()), out),
    };
    match encoded {
        Ok(()) => Ok(()),
        // An oversized reply must not kill the connection mid-stream: tell the host.
        Err(error @ SmError::FrameTooLarge { .. }) => {
            let message = format!("{} reply too large: {error}", request.describe());
            frame::encode_response(&Response::Error(message.as_bytes()), out)
        }
        Err(error) => Err(error),
    }
}

/// Reads one frame (type byte + body) into `frame_buffer`. `Ok(false)` means the host
/// closed the connection cleanly between frames.
fn read_frame<R: BufRead>(reader: &mut R, frame_buffer: &mut Vec<u8>) -> Result<bool, SmError> {
    // A clean close shows up as EOF before the first prefix byte.
    if reader
        .fill_buf()
        .map_err(SmError::io("reading a request"))?
        .is_empty()
    {
        return Ok(false);
    }
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    reader
        .read_exact(&mut prefix)
        .map_err(SmError::io("reading a request"))?;
    let length = frame::parse_length(prefix)?;
    frame_buffer.clear();
    frame_buffer.resize(length, 0);
    reader
        .read_exact(frame_buffer)
        .map_err(SmError::io("reading a request"))?;
    Ok(true)
}
