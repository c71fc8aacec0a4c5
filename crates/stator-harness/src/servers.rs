//! Baselines on loopback: etcd ([`crate::etcd`]; Debian's etcd-server) driven through its
//! JSON gateway, and Redis with one replica (driven with `SET` + `WAIT 1 0` in one round trip
//! through [`crate::resp::Connection`]).

use crate::etcd::{EtcdOptions, LocalEtcd};
use crate::resp::Connection;
use crate::{free_port, installed};
use anyhow::{bail, Context};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a baseline server may take to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Redis processes killed on drop, so a failed benchmark leaves nothing running.
pub struct Servers {
    children: Vec<Child>,
    _dir: tempfile::TempDir,
    /// Client endpoints.
    pub endpoints: Vec<String>,
}

impl Servers {
    /// The servers' process ids (for CPU accounting).
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `members` etcd members on loopback with etcd's default timing; returns once
/// a put succeeds.
pub async fn start_etcd(members: usize) -> anyhow::Result<LocalEtcd> {
    LocalEtcd::start(EtcdOptions {
        token: "stator-bench",
        ..EtcdOptions::members(members)
    })
    .await
}

/// One linearizable put through etcd's v3 JSON gateway.
pub use crate::etcd::put as etcd_put;

/// Starts one `redis-server` (no persistence) and returns once it answers `PING`.
pub async fn start_redis() -> anyhow::Result<Servers> {
    if !installed("redis-server") {
        bail!("redis-server not installed (apt-get install redis-server)");
    }
    let port = free_port()?;
    let mut servers = Servers {
        children: Vec::new(),
        _dir: tempfile::tempdir()?,
        endpoints: vec![format!("127.0.0.1:{port}")],
    };
    servers.children.push(spawn_redis(port, &servers, &[])?);
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(mut conn) = Connection::connect(servers.endpoints[0].as_str()).await {
            if conn.call(&["PING"]).await.is_ok() {
                return Ok(servers);
            }
        }
        if Instant::now() > deadline {
            bail!("redis-server did not answer within {START_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    let replica_of = [
        "--replicaof".to_string(),
        "127.0.0.1".into(),
        primary.to_string(),
    ];
    for (port, extra) in [(primary, &[][..]), (replica, &replica_of[..])] {
        let child = spawn_redis(port, &servers, extra)?;
        servers.children.push(child);
    }
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(mut conn) = Connection::connect(servers.endpoints[0].as_str()).await {
            if let Ok(stator_kv::Value::Bulk(Some(info))) =
                conn.call(&["INFO", "replication"]).await
            {
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

/// One `redis-server` on loopback `port`, without persistence, its files in `servers`' dir.
fn spawn_redis(port: u16, servers: &Servers, extra: &[String]) -> anyhow::Result<Child> {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(servers._dir.path())
        .args(["--dbfilename", &format!("dump-{port}.rdb")])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting redis-server")
}
