//! Baselines on loopback: a 3-member etcd (Debian's etcd-server) driven through its JSON
//! gateway, and Redis with one replica driven with `SET` + `WAIT 1 0` in one round trip.

use crate::{free_port, installed};
use anyhow::{bail, Context};
use base64::Engine;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a baseline server may take to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Child processes killed on drop, so a failed benchmark leaves nothing running.
pub struct Servers {
    children: Vec<Child>,
    _dir: tempfile::TempDir,
    /// Client endpoints.
    pub endpoints: Vec<String>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `members` etcd members on loopback; returns their client URLs once a put succeeds.
pub async fn start_etcd(members: usize) -> anyhow::Result<Servers> {
    if !installed("etcd") {
        bail!("etcd not installed (apt-get install etcd-server)");
    }
    let dir = tempfile::tempdir()?;
    let mut ports = Vec::new();
    for _ in 0..members {
        ports.push((free_port()?, free_port()?));
    }
    let cluster: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
        .collect();
    let mut servers = Servers {
        children: Vec::new(),
        _dir: dir,
        endpoints: Vec::new(),
    };
    for (i, (client, peer)) in ports.iter().enumerate() {
        let data = servers._dir.path().join(format!("e{i}"));
        let child = Command::new("etcd")
            .args(["--name", &format!("e{i}")])
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{client}"),
            ])
            .args([
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{client}"),
            ])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .args(["--initial-cluster", &cluster.join(",")])
            .args([
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "stator-bench",
            ])
            .args(["--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting etcd")?;
        servers.children.push(child);
        servers.endpoints.push(format!("http://127.0.0.1:{client}"));
    }
    let http = reqwest::Client::new();
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if etcd_put(&http, &servers.endpoints[0], b"ready", b"1")
            .await
            .is_ok()
        {
            return Ok(servers);
        }
        if Instant::now() > deadline {
            bail!("etcd did not become ready within {START_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One linearizable put through etcd's v3 JSON gateway.
pub async fn etcd_put(
    http: &reqwest::Client,
    endpoint: &str,
    key: &[u8],
    value: &[u8],
) -> anyhow::Result<()> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let body = serde_json::json!({ "key": b64.encode(key), "value": b64.encode(value) });
    let resp = http
        .post(format!("{endpoint}/v3/kv/put"))
        .json(&body)
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("etcd put: HTTP {}", resp.status());
    }
    resp.bytes().await?;
    Ok(())
}

/// Starts a Redis primary and one replica; returns the primary's address once the
/// replica is in sync.
pub async fn start_redis_with_replica() -> anyhow::Result<Servers> {
    if !installed("redis-server") {
        bail!("redis-server not installed (apt-get install redis-server)");
    }
    let dir = tempfile::tempdir()?;
    let (primary, replica) = (free_port()?, free_port()?);
    let mut servers = Servers {
        children: Vec::new(),
        _dir: dir,
        endpoints: vec![format!("127.0.0.1:{primary}")],
    };
    for (port, extra) in [
        (primary, vec![]),
        (
            replica,
            vec![
                "--replicaof".to_string(),
                "127.0.0.1".into(),
                primary.to_string(),
            ],
        ),
    ] {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(servers._dir.path())
            .args(["--dbfilename", &format!("dump-{port}.rdb")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server")?;
        servers.children.push(child);
    }
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(mut conn) = RespConn::connect(&servers.endpoints[0]).await {
            if let Ok(info) = conn.command(&[b"INFO".as_slice(), b"replication"]).await {
                let text = String::from_utf8_lossy(&info);
                if text.contains("connected_slaves:1") && text.contains("state=online") {
                    return Ok(servers);
                }
            }
        }
        if Instant::now() > deadline {
            bail!("redis replica not in sync within {START_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A minimal RESP connection for the baseline (requests pipelined, replies parsed with
/// stator's own RESP parser).
pub struct RespConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RespConn {
    /// Connects to `addr`.
    pub async fn connect(addr: &str) -> anyhow::Result<RespConn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(RespConn {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends one command and returns its raw reply payload.
    pub async fn command(&mut self, argv: &[&[u8]]) -> anyhow::Result<Vec<u8>> {
        self.stream
            .write_all(&stator_kv::encode_command(argv))
            .await?;
        Ok(self.read_replies(1).await?.remove(0))
    }

    /// Writes `frames` in one write and reads `n` replies.
    pub async fn pipeline(&mut self, frames: &[u8], n: usize) -> anyhow::Result<Vec<Vec<u8>>> {
        self.stream.write_all(frames).await?;
        self.read_replies(n).await
    }

    async fn read_replies(&mut self, n: usize) -> anyhow::Result<Vec<Vec<u8>>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            if let Some((value, used)) = stator_kv::parse_reply(&self.buf)? {
                self.buf.drain(..used);
                if value.is_error() {
                    bail!("server error: {value:?}");
                }
                out.push(match value {
                    stator_kv::Value::Bulk(Some(b)) => b,
                    other => other.to_bytes(),
                });
                continue;
            }
            let mut chunk = [0u8; 16 << 10];
            let read = self.stream.read(&mut chunk).await?;
            if read == 0 {
                bail!("connection closed");
            }
            self.buf.extend_from_slice(&chunk[..read]);
        }
        Ok(out)
    }
}
