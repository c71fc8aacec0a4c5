//! [`LocalEtcd`]: a real etcd cluster of N members on loopback (Debian's `etcd-server`
//! binary), whose members can be killed and started again on their data directories;
//! killed and removed on drop. The etcd baselines of the benchmarks and the etcd that
//! chaos's servers share all start here. Also: calls to etcd's v3 JSON gateway.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use base64::Engine as _;

use crate::{free_port, installed};

/// How long a fresh cluster may take to elect a leader and accept a put, by default.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// One attempt of the readiness put.
const READY_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

/// How the members run.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Members in the cluster.
    pub members: usize,
    /// Raft heartbeat, ms (`None`: etcd's default, 100 ms).
    pub heartbeat_ms: Option<u64>,
    /// Raft election timeout, ms (`None`: etcd's default, 1 000 ms).
    pub election_timeout_ms: Option<u64>,
    /// `--initial-cluster-token`: names the run in etcd's own logs.
    pub token: &'static str,
    /// How long the cluster may take to accept its first put.
    pub start_timeout: Duration,
}

impl EtcdOptions {
    /// `members` members with etcd's default timing.
    pub fn members(members: usize) -> EtcdOptions {
        EtcdOptions {
            members,
            heartbeat_ms: None,
            election_timeout_ms: None,
            token: "stator-harness",
            start_timeout: START_TIMEOUT,
        }
    }
}

/// A running etcd cluster on loopback.
pub struct LocalEtcd {
    options: EtcdOptions,
    dir: tempfile::TempDir,
    /// (client, peer) port of each member.
    ports: Vec<(u16, u16)>,
    /// Each member's process; `None` while it is killed.
    children: Vec<Option<Child>>,
    endpoints: Vec<String>,
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl LocalEtcd {
    /// Starts the members and returns once a put succeeds, at most
    /// [`EtcdOptions::start_timeout`].
    pub async fn start(options: EtcdOptions) -> anyhow::Result<LocalEtcd> {
        if !installed("etcd") {
            bail!("etcd not installed (apt-get install etcd-server)");
        }
        anyhow::ensure!(options.members >= 1, "an etcd cluster needs a member");
        let mut ports = Vec::new();
        for _ in 0..options.members {
            ports.push((free_port()?, free_port()?));
        }
        let mut etcd = LocalEtcd {
            dir: tempfile::tempdir()?,
            endpoints: ports
                .iter()
                .map(|(client, _)| format!("http://127.0.0.1:{client}"))
                .collect(),
            ports,
            children: (0..options.members).map(|_| None).collect(),
            options,
        };
        for member in 0..etcd.options.members {
            etcd.restart(member)?;
        }
        let http = reqwest::Client::builder()
            .timeout(READY_ATTEMPT_TIMEOUT)
            .build()?;
        let started = Instant::now();
        let limit = etcd.options.start_timeout;
        while put(&http, &etcd.endpoints[0], b"ready", b"1")
            .await
            .is_err()
        {
            if started.elapsed() > limit {
                bail!("etcd did not become ready within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(etcd)
    }

    /// The members' client URLs (`http://127.0.0.1:PORT`), by member index.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Starts member `member` (again) on its data directory.
    pub fn restart(&mut self, member: usize) -> anyhow::Result<()> {
        let initial: Vec<String> = self
            .ports
            .iter()
            .enumerate()
            .map(|(j, (_, peer))| format!("e{j}=http://127.0.0.1:{peer}"))
            .collect();
        let (client, peer) = self.ports[member];
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", &format!("e{member}")])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("e{member}")))
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
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", self.options.token])
            .args(["--log-level", "error"]);
        if let Some(ms) = self.options.heartbeat_ms {
            cmd.args(["--heartbeat-interval", &ms.to_string()]);
        }
        if let Some(ms) = self.options.election_timeout_ms {
            cmd.args(["--election-timeout", &ms.to_string()]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting etcd")?;
        self.children[member] = Some(child);
        Ok(())
    }

    /// SIGKILLs member `member` and waits for it to die; an error if it was not running.
    pub fn kill(&mut self, member: usize) -> anyhow::Result<()> {
        let mut child = self.children[member]
            .take()
            .with_context(|| format!("etcd member e{member} is not running"))?;
        child.kill().context("kill -9 of an etcd member")?;
        let _ = child.wait();
        Ok(())
    }

    /// Member `member`'s own id and the leader it knows (`"0"`: none), from its status.
    pub async fn status(&self, http: &reqwest::Client, member: usize) -> Option<(String, String)> {
        let resp = http
            .post(format!("{}/v3/maintenance/status", self.endpoints[member]))
            .json(&serde_json::json!({}))
            .send()
            .await
            .ok()?;
        let body: serde_json::Value = resp.json().await.ok()?;
        let id = body["header"]["member_id"].as_str()?.to_string();
        let leader = body["leader"].as_str().unwrap_or("0").to_string();
        Some((id, leader))
    }

    /// The index and id of the member that is leader by its own account.
    pub async fn leader(&self, http: &reqwest::Client) -> Option<(usize, String)> {
        for member in 0..self.endpoints.len() {
            if let Some((id, leader)) = self.status(http, member).await {
                if id == leader {
                    return Some((member, id));
                }
            }
        }
        None
    }

    /// Every member up and agreeing on one leader.
    pub async fn healthy(&self, http: &reqwest::Client) -> bool {
        let mut leaders = Vec::new();
        for member in 0..self.endpoints.len() {
            match self.status(http, member).await {
                Some((_, leader)) if leader != "0" => leaders.push(leader),
                _ => return false,
            }
        }
        leaders.windows(2).all(|w| w[0] == w[1])
    }
}

/// One linearizable put through etcd's v3 JSON gateway.
pub async fn put(
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

/// The value under `key` and the revision that created it, through the JSON gateway;
/// `None` when the key is absent or etcd does not answer.
pub async fn get_with_create_revision(
    http: &reqwest::Client,
    endpoint: &str,
    key: &[u8],
) -> Option<(Vec<u8>, u64)> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let body = serde_json::json!({ "key": b64.encode(key) });
    let answer: serde_json::Value = http
        .post(format!("{endpoint}/v3/kv/range"))
        .json(&body)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let kv = &answer["kvs"][0];
    let value = b64.decode(kv["value"].as_str()?).ok()?;
    // The JSON gateway writes 64-bit integers as strings.
    let revision = kv["create_revision"].as_str()?.parse().ok()?;
    Some((value, revision))
}
