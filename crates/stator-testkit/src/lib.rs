//! Process launchers for tests and examples, in a leaf crate that depends on nothing of
//! stator: `stator-kv`'s differential test and memory example use it, and
//! `stator-harness` (which depends on `stator-kv`) re-exports it, so there is no cycle.
//!
//! # Layout
//! - this file: [`RedisServer`], a blocking `redis-server` launcher (free loopback port,
//!   no persistence, killed on drop), and [`require_all`], the `STATOR_REQUIRE_ALL` rule
//!   for tests that need an outside program.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a started `redis-server` may take to listen.
pub const REDIS_STARTUP_LIMIT: Duration = Duration::from_secs(10);
/// Pause between connection attempts while it starts.
const STARTUP_POLL: Duration = Duration::from_millis(20);

/// Whether `STATOR_REQUIRE_ALL=1`: a test whose outside program is missing fails
/// instead of printing `SKIPPED:` and passing.
pub fn require_all() -> bool {
    std::env::var("STATOR_REQUIRE_ALL").as_deref() == Ok("1")
}

/// A `redis-server` on a free loopback port, without persistence, killed on drop.
pub struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    /// Whether `redis-server` runs (`redis-server --version`).
    pub fn installed() -> bool {
        Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    /// For a test: `None` (after printing `SKIPPED: redis-server not installed`) when
    /// `redis-server` is missing, unless [`require_all`], which panics instead; panics
    /// when it is installed but does not start.
    pub fn start_or_skip() -> Option<RedisServer> {
        if !Self::installed() {
            assert!(
                !require_all(),
                "STATOR_REQUIRE_ALL=1 but redis-server is not installed (apt-get install redis-server)"
            );
            println!("SKIPPED: redis-server not installed");
            return None;
        }
        match Self::start(&[]) {
            Ok(server) => Some(server),
            Err(e) => panic!("{e}"),
        }
    }

    /// Starts `redis-server` on a free loopback port with `--save "" --appendonly no`
    /// and `extra_args` after them, and waits until it listens, at most
    /// [`REDIS_STARTUP_LIMIT`].
    pub fn start(extra_args: &[&str]) -> std::io::Result<RedisServer> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(extra_args)
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("starting redis-server (is it on the PATH? apt-get install redis-server): {e}"),
                )
            })?;
        let server = RedisServer { child, port };
        let deadline = Instant::now() + REDIS_STARTUP_LIMIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() >= deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("redis-server did not listen on 127.0.0.1:{port} within {REDIS_STARTUP_LIMIT:?}"),
                ));
            }
            std::thread::sleep(STARTUP_POLL);
        }
        Ok(server)
    }

    /// Its loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A new blocking connection to it, with `TCP_NODELAY`.
    pub fn connect(&self) -> std::io::Result<TcpStream> {
        let stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
