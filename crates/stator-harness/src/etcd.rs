//! [`LocalEtcd`]: a real etcd cluster of N members on loopback (Debian's `etcd-server`
//! binary), whose members can be killed and started again on their data directories;
//! killed and removed on drop. The etcd baselines of the benchmarks, the etcd that
//! chaos's servers share, and the etcd of stator-store's and stator-server's tests all
//! start here. Also: calls to etcd's v3 JSON gateway.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use base64::Engine as _;

use crate::{free_port, installed};

/// How long a fresh cluster may take to elect a leader and accept a put, by default.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a test cluster may take: a loaded CI machine needs several seconds.
pub const TEST_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Raft heartbeat of test clusters: LAN-like, so elections take well under a second.
pub const TEST_HEARTBEAT_MS: u64 = 50;
/// Raft election timeout of test clusters (10 heartbeats, etcd's recommended ratio). It
/// also sets etcd's shortest lease TTL, about 1.5 x this rounded up to a second.
pub const TEST_ELECTION_TIMEOUT_MS: u64 = 500;
/// Largest request a test cluster accepts: above stator-store's `MAX_VALUE_BYTES`
/// (1.5 MiB) plus a key and framing, so a value at the limit fits (etcd's own default is
/// exactly 1.5 MiB).
pub const TEST_MAX_REQUEST_BYTES: u64 = 2 * 1024 * 1024;
/// Start attempts with fresh ports when a member finds its port taken (ports are picked
/// by closing a listener; another process may take one before etcd binds it).
pub const START_ATTEMPTS: u32 = 3;
/// One attempt of the readiness put.
const READY_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// Lines of each member's log shown when a cluster fails to start.
const LOG_TAIL_LINES: usize = 20;

/// How the members run.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Members in the cluster.
    pub members: usize,
    /// Raft heartbeat, ms (`None`: etcd's default, 100 ms).
    pub heartbeat_ms: Option<u64>,
    /// Raft election timeout, ms (`None`: etcd's default, 1 000 ms).
    pub election_timeout_ms: Option<u64>,
    /// `--max-request-bytes` (`None`: etcd's default, 1.5 MiB).
    pub max_request_bytes: Option<u64>,
    /// `--initial-cluster-token`: names the run in etcd's own logs.
    pub token: &'static str,
    /// How long the cluster may take until every member answers with one leader.
    pub start_timeout: Duration,
}

impl EtcdOptions {
    /// `members` members with etcd's default timing.
    pub fn members(members: usize) -> EtcdOptions {
        EtcdOptions {
            members,
            heartbeat_ms: None,
            election_timeout_ms: None,
            max_request_bytes: None,
            token: "stator-harness",
            start_timeout: START_TIMEOUT,
        }
    }

    /// `members` members as tests want them: fast elections, room for stator-store's
    /// largest value, a generous start-up limit.
    pub fn for_tests(members: usize) -> EtcdOptions {
        EtcdOptions {
            heartbeat_ms: Some(TEST_HEARTBEAT_MS),
            election_timeout_ms: Some(TEST_ELECTION_TIMEOUT_MS),
            max_request_bytes: Some(TEST_MAX_REQUEST_BYTES),
            token: "stator-tests",
            start_timeout: TEST_START_TIMEOUT,
            ..EtcdOptions::members(members)
        }
    }
}

/// For tests: true when etcd can be used; otherwise prints `SKIPPED: etcd not installed`
/// and returns false, or panics when `STATOR_REQUIRE_ALL=1` (see
/// [`crate::testkit::require_all`]).
pub fn available_or_skip() -> bool {
    if installed("etcd") {
        return true;
    }
    if crate::testkit::require_all() {
        panic!("STATOR_REQUIRE_ALL=1 but etcd is not installed (apt-get install etcd-server)");
    }
    println!("SKIPPED: etcd not installed");
    false
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
    /// Starts the members and returns once every member answers and they agree on a
    /// leader, at most [`EtcdOptions::start_timeout`]. A member that finds its port taken
    /// is retried on fresh ports ([`START_ATTEMPTS`]); a failure carries the tail of each
    /// member's log.
    pub async fn start(options: EtcdOptions) -> anyhow::Result<LocalEtcd> {
        if !installed("etcd") {
            bail!("etcd not installed (apt-get install etcd-server)");
        }
        anyhow::ensure!(options.members >= 1, "an etcd cluster needs a member");
        let mut attempt = 1;
        loop {
            let mut etcd = LocalEtcd::spawn(options.clone())?;
            match etcd.wait_ready().await {
                Ok(()) => return Ok(etcd),
                Err(why) if attempt < START_ATTEMPTS && why.contains("address already in use") => {
                    attempt += 1;
                }
                Err(why) => bail!("{why}"),
            }
        }
    }

    fn spawn(options: EtcdOptions) -> anyhow::Result<LocalEtcd> {
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
        Ok(etcd)
    }

    /// Waits until a put succeeds and every member reports the same leader; an error
    /// (with the members' logs) when a member exits or the time runs out.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let http = reqwest::Client::builder()
            .timeout(READY_ATTEMPT_TIMEOUT)
            .build()
            .map_err(|e| e.to_string())?;
        let started = Instant::now();
        let limit = self.options.start_timeout;
        loop {
            let exited = self.children.iter_mut().enumerate().find_map(|(i, c)| {
                let status = c.as_mut()?.try_wait().ok().flatten()?;
                Some((i, status))
            });
            if let Some((member, status)) = exited {
                return Err(format!(
                    "etcd member e{member} exited during start-up ({status}):\n{}",
                    self.logs()
                ));
            }
            if put(&http, &self.endpoints[0], b"ready", b"1").await.is_ok()
                && self.healthy(&http).await
            {
                return Ok(());
            }
            if started.elapsed() > limit {
                return Err(format!(
                    "etcd did not become ready within {limit:?}:\n{}",
                    self.logs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The members' client URLs (`http://127.0.0.1:PORT`), by member index, killed ones
    /// included.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// `etcd://H:P,H:P,...` for `stator server --store`.
    pub fn store_url(&self) -> String {
        let hosts: Vec<&str> = self
            .endpoints
            .iter()
            .map(|url| url.trim_start_matches("http://"))
            .collect();
        format!("etcd://{}", hosts.join(","))
    }

    /// The directory holding the members' data and logs (`e<N>/`, `e<N>.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The tail of every member's log, for failure messages.
    pub fn logs(&self) -> String {
        (0..self.options.members)
            .map(|member| {
                let text = std::fs::read_to_string(self.log_path(member)).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
                format!("--- e{member} ---\n{}", tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn log_path(&self, member: usize) -> std::path::PathBuf {
        self.dir.path().join(format!("e{member}.log"))
    }

    /// Starts member `member` (again) on its data directory; its output is appended to
    /// `e<member>.log`.
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
        if let Some(bytes) = self.options.max_request_bytes {
            cmd.args(["--max-request-bytes", &bytes.to_string()]);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(member))
            .context("opening an etcd member's log")?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("cloning a log handle")?)
            .stderr(log)
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
