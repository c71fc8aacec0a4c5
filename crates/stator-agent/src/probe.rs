//! Readiness probes: a TCP connect, an HTTP GET expecting 2xx, or a command exiting 0.
//!
//! A probe answers one question, "does this instance serve yet?", within
//! [`PROBE_TIMEOUT_MS`]. The driver runs it every [`PROBE_PERIOD_MS`] while the process
//! lives. Network probes dial loopback: an instance must listen on `127.0.0.1` or on all
//! interfaces to be found ready.

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use stator_api::spec::{ExecProbe, HttpProbe, Probe, TcpProbe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

/// How often a live instance is probed. Short, because real-time services are routed
/// to as soon as they are ready and dropped from routing as soon as they are not.
pub const PROBE_PERIOD_MS: u64 = 500;

/// How long one probe may take before it counts as failed (Kubernetes' default, 1 s).
pub const PROBE_TIMEOUT_MS: u64 = 1_000;

/// Consecutive failures that take a ready instance out of readiness; one blip (a GC
/// pause, a slow accept) should not drop it from routing (Kubernetes' default, 3).
pub const PROBE_FAILURE_THRESHOLD: u32 = 3;

/// Most bytes read while looking for an HTTP status line; a real one is a few dozen.
const MAX_STATUS_LINE_BYTES: usize = 1_024;

/// Why a probe did not pass.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A TCP or HTTP probe without a port, for an instance that was assigned none.
    #[error("the {kind} probe names no port and the instance has none: set the probe's port or the service's port")]
    NoPort {
        /// `tcp` or `http`.
        kind: &'static str,
    },
    /// Nothing accepted the connection.
    #[error("could not connect to {addr}: {source} (is the instance listening on 127.0.0.1 or 0.0.0.0?)")]
    Connect {
        /// Where the probe dialled.
        addr: SocketAddr,
        /// The connect error.
        source: io::Error,
    },
    /// The probe did not finish within [`PROBE_TIMEOUT_MS`].
    #[error("no answer within {timeout_ms} ms")]
    TimedOut {
        /// The limit that was hit.
        timeout_ms: u64,
    },
    /// The HTTP exchange broke before a status line arrived.
    #[error("GET {url} failed: {source}")]
    HttpIo {
        /// What was requested.
        url: String,
        /// The read or write error.
        source: io::Error,
    },
    /// The answer did not start with an HTTP status line.
    #[error("GET {url} answered something that is not HTTP: {detail}")]
    HttpMalformed {
        /// What was requested.
        url: String,
        /// What was wrong with the answer.
        detail: String,
    },
    /// The server answered, but not 2xx.
    #[error("GET {url} answered {status}, expected 2xx")]
    HttpStatus {
        /// What was requested.
        url: String,
        /// The status code received.
        status: u16,
    },
    /// The exec probe has no program.
    #[error("the exec probe's command is empty: name a program to run")]
    ExecEmpty,
    /// The exec probe's program could not be started.
    #[error("could not run exec probe {program:?}: {source} (check the probe's command and the instance's working_dir)")]
    ExecSpawn {
        /// The program.
        program: String,
        /// The spawn error.
        source: io::Error,
    },
    /// The exec probe ran and did not exit 0.
    #[error("exec probe {program:?} {status}, expected exit code 0")]
    ExecFailed {
        /// The program.
        program: String,
        /// How it ended, e.g. `exited with code 1`.
        status: String,
    },
}

/// What a probe needs to know about the instance it checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeTarget {
    /// The instance's assigned port, used when the probe names none.
    pub port: Option<u16>,
    /// Where exec probes run (the instance's working directory).
    pub working_dir: Option<PathBuf>,
    /// Environment of exec probes (the instance's own).
    pub env: BTreeMap<String, String>,
}

/// Runs `probe` once against `target`: `Ok` when the instance is ready.
pub async fn check(probe: &Probe, target: &ProbeTarget) -> Result<(), ProbeError> {
    let attempt = async {
        match probe {
            Probe::Tcp(tcp) => check_tcp(tcp, target).await,
            Probe::Http(http) => check_http(http, target).await,
            Probe::Exec(exec) => check_exec(exec, target).await,
        }
    };
    // On timeout the attempt is dropped: its socket closes, and an exec probe's child is
    // killed (`kill_on_drop`), so a hung probe leaves nothing behind.
    match tokio::time::timeout(Duration::from_millis(PROBE_TIMEOUT_MS), attempt).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::TimedOut {
            timeout_ms: PROBE_TIMEOUT_MS,
        }),
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, ProbeError> {
    TcpStream::connect(addr)
        .await
        .map_err(|source| ProbeError::Connect { addr, source })
}

async fn check_tcp(tcp: &TcpProbe, target: &ProbeTarget) -> Result<(), ProbeError> {
    let port = tcp
        .port
        .or(target.port)
        .ok_or(ProbeError::NoPort { kind: "tcp" })?;
    connect(loopback(port)).await.map(drop)
}

/// A minimal HTTP/1.1 GET that reads only the status line: a probe needs nothing more,
/// and this keeps an HTTP client stack (pools, redirects, TLS) out of the probe loop.
async fn check_http(http: &HttpProbe, target: &ProbeTarget) -> Result<(), ProbeError> {
    let port = http
        .port
        .or(target.port)
        .ok_or(ProbeError::NoPort { kind: "http" })?;
    let addr = loopback(port);
    let url = format!("http://{addr}{}", http.path);
    let io_error = |source| ProbeError::HttpIo {
        url: url.clone(),
        source,
    };
    let mut stream = connect(addr).await?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: stator-probe\r\nConnection: close\r\n\r\n",
        http.path
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(io_error)?;
    let mut head = Vec::with_capacity(128);
    let mut chunk = [0_u8; 256];
    while !head.windows(2).any(|pair| pair == b"\r\n") && head.len() < MAX_STATUS_LINE_BYTES {
        let read = stream.read(&mut chunk).await.map_err(io_error)?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..read]);
    }
    let status = parse_status_line(&head).map_err(|detail| ProbeError::HttpMalformed {
        url: url.clone(),
        detail,
    })?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(ProbeError::HttpStatus { url, status })
    }
}

/// The status code of an answer starting `HTTP/1.x NNN ...`.
fn parse_status_line(head: &[u8]) -> Result<u16, String> {
    let end = head
        .windows(2)
        .position(|pair| pair == b"\r\n")
        .ok_or_else(|| {
            format!(
                "no complete status line in the first {} bytes",
                head.len().min(MAX_STATUS_LINE_BYTES)
            )
        })?;
    let line = String::from_utf8_lossy(&head[..end]);
    let mut words = line.split_whitespace();
    let version = words.next().unwrap_or_default();
    if !version.starts_with("HTTP/") {
        return Err(format!("status line {line:?} does not start with HTTP/"));
    }
    words
        .next()
        .filter(|code| code.len() == 3)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("status line {line:?} has no three-digit status code"))
}

async fn check_exec(exec: &ExecProbe, target: &ProbeTarget) -> Result<(), ProbeError> {
    let (program, args) = exec.command.split_first().ok_or(ProbeError::ExecEmpty)?;
    let mut command = Command::new(program);
    command
        .args(args)
        .envs(&target.env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    if let Some(dir) = &target.working_dir {
        command.current_dir(dir);
    }
    let status = command
        .status()
        .await
        .map_err(|source| ProbeError::ExecSpawn {
            program: program.clone(),
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(ProbeError::ExecFailed {
            program: program.clone(),
            status: describe_exit(status),
        })
    }
}

/// `exited with code N` or `was killed by signal N`, for status messages.
pub(crate) fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("ended with {status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_gives_the_code() {
        assert_eq!(parse_status_line(b"HTTP/1.1 204 No Content\r\n"), Ok(204));
        assert_eq!(
            parse_status_line(b"HTTP/1.0 404 Not Found\r\nServer: x"),
            Ok(404)
        );
    }

    #[test]
    fn malformed_status_lines_are_rejected() {
        assert!(
            parse_status_line(b"HTTP/1.1 200 OK").is_err(),
            "no line end"
        );
        assert!(parse_status_line(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse_status_line(b"HTTP/1.1 abc\r\n").is_err());
        assert!(parse_status_line(b"HTTP/1.1 2000 OK\r\n").is_err());
    }

    #[tokio::test]
    async fn network_probes_without_any_port_say_how_to_fix_it() {
        let probe = Probe::Tcp(TcpProbe { port: None });
        let error = check(&probe, &ProbeTarget::default()).await.unwrap_err();
        assert!(matches!(error, ProbeError::NoPort { kind: "tcp" }));
        assert!(error.to_string().contains("service's port"));
    }

    #[tokio::test]
    async fn tcp_probe_passes_only_while_something_listens() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = ProbeTarget {
            port: Some(port),
            ..ProbeTarget::default()
        };
        let probe = Probe::Tcp(TcpProbe { port: None });
        check(&probe, &target).await.unwrap();
        drop(listener);
        let error = check(&probe, &target).await.unwrap_err();
        assert!(matches!(error, ProbeError::Connect { .. }), "{error}");
    }

    #[tokio::test]
    async fn http_probe_reads_the_status_of_a_loopback_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            for answer in ["HTTP/1.1 200 OK\r\n\r\n", "HTTP/1.1 503 Busy\r\n\r\n"] {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut request = [0_u8; 512];
                let _ = stream.read(&mut request).await.unwrap();
                stream.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        let target = ProbeTarget {
            port: Some(port),
            ..ProbeTarget::default()
        };
        let probe = Probe::Http(HttpProbe {
            port: None,
            path: "/healthz".into(),
        });
        check(&probe, &target).await.unwrap();
        let error = check(&probe, &target).await.unwrap_err();
        assert!(
            matches!(error, ProbeError::HttpStatus { status: 503, .. }),
            "{error}"
        );
        server.await.unwrap();
    }

    #[tokio::test]
    async fn exec_probe_passes_on_exit_zero_only() {
        let target = ProbeTarget::default();
        let pass = Probe::Exec(ExecProbe {
            command: vec!["true".into()],
        });
        check(&pass, &target).await.unwrap();
        let fail = Probe::Exec(ExecProbe {
            command: vec!["sh".into(), "-c".into(), "exit 4".into()],
        });
        let error = check(&fail, &target).await.unwrap_err();
        assert!(error.to_string().contains("exited with code 4"), "{error}");
    }
}
