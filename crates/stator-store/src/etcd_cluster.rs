//! [`LocalEtcdCluster`]: a real etcd cluster of N members on loopback, for tests.
//!
//! Members run the `etcd` binary (Debian's `etcd-server`) on free loopback ports with
//! data in a fresh temporary directory; dropping the cluster kills every member and
//! removes the directory. Used by this crate's etcd conformance test and by the server's
//! several-servers tests.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::etcd::EtcdStore;

/// Longest wait for a fresh cluster to elect a leader and answer; etcd needs about a
/// second, a loaded CI machine several.
pub const START_LIMIT_MS: u64 = 30_000;
/// Raft heartbeat of the test members: LAN-like, so elections take well under a second.
pub const HEARTBEAT_INTERVAL_MS: u64 = 50;
/// Raft election timeout of the test members (10 heartbeats, etcd's recommended ratio).
/// It also sets etcd's shortest lease TTL, about 1.5 x this rounded up to a second.
pub const ELECTION_TIMEOUT_MS: u64 = 500;
/// Largest request etcd accepts: above the store's `MAX_VALUE_BYTES` (1.5 MiB) plus a key
/// and framing, so a value at the limit fits (etcd's own default is exactly 1.5 MiB).
pub const MAX_REQUEST_BYTES: u64 = 2 * 1024 * 1024;

/// Start attempts with fresh ports when a member finds its port taken.
pub const START_ATTEMPTS: u32 = 3;

/// The environment variable that turns a missing program into a test failure (CI sets it).
pub const REQUIRE_ALL_ENV: &str = "STATOR_REQUIRE_ALL";

/// True when an `etcd` binary is on the PATH.
pub fn etcd_installed() -> bool {
    Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// For tests: true when etcd can be used; otherwise prints `SKIPPED: etcd not installed`
/// and returns false, or panics when [`REQUIRE_ALL_ENV`] is `1`.
pub fn etcd_available_or_skip() -> bool {
    if etcd_installed() {
        return true;
    }
    if std::env::var(REQUIRE_ALL_ENV).is_ok_and(|v| v == "1") {
        panic!("{REQUIRE_ALL_ENV}=1 but etcd is not installed (apt-get install etcd-server)");
    }
    println!("SKIPPED: etcd not installed");
    false
}

/// A running etcd cluster on loopback; killed and deleted on drop.
pub struct LocalEtcdCluster {
    members: Vec<Member>,
    dir: PathBuf,
}

struct Member {
    name: String,
    client_url: String,
    process: Option<Child>,
}

impl LocalEtcdCluster {
    /// Starts `members` etcd processes forming one cluster and waits until it answers.
    /// Panics (with the members' logs) if it does not within [`START_LIMIT_MS`].
    pub async fn start(members: usize) -> LocalEtcdCluster {
        let mut attempt = 1;
        loop {
            match Self::try_start(members).await {
                Ok(cluster) => return cluster,
                // Free ports are picked by closing a listener; another process may take
                // one before etcd binds it. Try again with new ports.
                Err(logs)
                    if attempt < START_ATTEMPTS && logs.contains("address already in use") =>
                {
                    attempt += 1;
                }
                Err(logs) => panic!("{logs}"),
            }
        }
    }

    async fn try_start(members: usize) -> Result<LocalEtcdCluster, String> {
        assert!(members >= 1, "a cluster needs at least one member");
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let unique = format!(
            "stator-etcd-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(&unique);
        std::fs::create_dir_all(&dir).expect("create the etcd test directory");
        let ports: Vec<(u16, u16)> = (0..members).map(|_| (free_port(), free_port())).collect();
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = LocalEtcdCluster {
            members: Vec::new(),
            dir: dir.clone(),
        };
        for (i, (client, peer)) in ports.iter().enumerate() {
            let name = format!("m{i}");
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let log = std::fs::File::create(dir.join(format!("{name}.log")))
                .expect("create an etcd log file");
            let process = Command::new("etcd")
                .args(["--name", &name])
                .arg("--data-dir")
                .arg(dir.join(&name))
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial_cluster])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", &unique])
                .args(["--heartbeat-interval", &HEARTBEAT_INTERVAL_MS.to_string()])
                .args(["--election-timeout", &ELECTION_TIMEOUT_MS.to_string()])
                .args(["--max-request-bytes", &MAX_REQUEST_BYTES.to_string()])
                .args(["--logger", "zap", "--log-level", "warn"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone the log handle"))
                .stderr(log)
                .spawn()
                .expect("start etcd");
            cluster.members.push(Member {
                name,
                client_url,
                process: Some(process),
            });
        }
        cluster.wait_ready().await?;
        Ok(cluster)
    }

    /// Client URLs of the members still running, e.g. `http://127.0.0.1:23790`.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.process.is_some())
            .map(|m| m.client_url.clone())
            .collect()
    }

    /// `etcd://H:P,H:P,...` for `stator server --store`.
    pub fn store_url(&self) -> String {
        let hosts: Vec<&str> = self
            .members
            .iter()
            .map(|m| m.client_url.trim_start_matches("http://"))
            .collect();
        format!("etcd://{}", hosts.join(","))
    }

    /// A store on this cluster whose keys live under `namespace` (see
    /// [`EtcdStore::connect_with_namespace`]).
    pub async fn store(&self, namespace: &str) -> EtcdStore {
        EtcdStore::connect_with_namespace(&self.endpoints(), namespace)
            .await
            .unwrap_or_else(|error| panic!("connect to the test etcd: {error}"))
    }

    /// Kills member `index` (SIGKILL); the others keep a quorum if there are 3 or more.
    pub fn kill_member(&mut self, index: usize) {
        if let Some(mut process) = self.members[index].process.take() {
            // Already exited is fine: either way it is gone.
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_millis(START_LIMIT_MS);
        loop {
            let exited = self.members.iter_mut().find_map(|member| {
                let status = member.process.as_mut()?.try_wait().ok().flatten()?;
                Some((member.name.clone(), status))
            });
            if let Some((name, status)) = exited {
                return Err(format!(
                    "etcd member {name} exited during start-up ({status}):\n{}",
                    self.logs()
                ));
            }
            // Every member must answer, not just the first one a channel picks.
            if self.all_members_answer().await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "etcd cluster did not answer within {START_LIMIT_MS} ms:\n{}",
                    self.logs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn all_members_answer(&self) -> bool {
        for member in &self.members {
            let one = tokio::time::timeout(
                Duration::from_millis(2_000),
                EtcdStore::connect(std::slice::from_ref(&member.client_url)),
            )
            .await;
            if !matches!(one, Ok(Ok(_))) {
                return false;
            }
        }
        true
    }

    /// The tail of every member's log, for failure messages.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let text = std::fs::read_to_string(self.dir.join(format!("{}.log", m.name)))
                    .unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- {} ---\n{}", m.name, tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The directory holding the members' data and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for LocalEtcdCluster {
    fn drop(&mut self) {
        for index in 0..self.members.len() {
            self.kill_member(index);
        }
        // Best effort: a leftover temp directory is harmless.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port that was free a moment ago (the OS picks it; the listener is closed
/// before etcd binds it, a small race that is fine for tests).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("find a free loopback port")
}
