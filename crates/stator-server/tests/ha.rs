//! Several servers on one store: exactly one runs the controller, the others forward to
//! it, and killing it hands the controller to another server, which reconciles.
//!
//! Every scenario runs twice: on one embedded store shared in-process (no etcd needed),
//! and, with the `etcd` feature, on a real 3-member etcd on loopback with each server on
//! its own etcd connection (printing `SKIPPED: etcd not installed` without etcd, unless
//! STATOR_REQUIRE_ALL=1). Waits are bounded; no assertion depends on a timing. The
//! failover time is printed (`FAILOVER ...`) for the record.
//!
//! Fencing: a controller whose term lost the leader key (as a holder paused past its lease
//! would find on waking) has its next write refused by the store, stops, and leaves the
//! store unchanged; a server whose key is taken over behind its back follows the new
//! holder and writes nothing more.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tokio::time::Instant;

use stator_api::agent::{Assignments, Heartbeat, RegisterRequest, RegisterResponse};
use stator_api::ids::NodeId;
use stator_server::controller::{self, ControllerExit};
use stator_server::fence::Fence;
use stator_server::leader::LEADER_KEY;
use stator_server::metrics::Metrics;
use stator_server::{ServerConfig, ServerError, ServerHandle, StoreConfig};
use stator_store::{CasOutcome, Expected, LeaseId, Store, StoreError};

/// Bound on every wait: generous for a loaded CI machine; a broken election still fails.
const WAIT_LIMIT: Duration = Duration::from_secs(30);
/// Pause between polls and heartbeat rounds.
const POLL_PAUSE: Duration = Duration::from_millis(50);
/// Node grace: long enough that nodes heartbeating every 100 ms survive a failover
/// (the new holder also gives every node a fresh grace).
const TEST_GRACE_MS: u64 = 5_000;

const WEB_SPEC: &str = "name = \"NAME\"\nkind = \"stateless\"\ninstances = 2\nport = 8080\napp = { process = { command = [\"sleep\", \"1000\"] } }";

fn web_spec(name: &str) -> String {
    WEB_SPEC.replace("NAME", name)
}

/// The servers of one test and a client.
struct Servers {
    servers: Vec<Option<ServerHandle>>,
    client: reqwest::Client,
    _dirs: Vec<tempfile::TempDir>,
}

impl Servers {
    async fn start(count: usize, store: impl Fn() -> StoreConfig) -> Servers {
        let mut servers = Vec::new();
        let mut dirs = Vec::new();
        for _ in 0..count {
            let dir = tempfile::tempdir().unwrap();
            let mut config = ServerConfig::new(dir.path());
            config.store = store();
            config.listen = "127.0.0.1:0".parse().unwrap();
            config.node_grace_ms = TEST_GRACE_MS;
            config.heartbeat_interval_ms = 100;
            servers.push(Some(stator_server::start(config).await.unwrap()));
            dirs.push(dir);
        }
        Servers {
            servers,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            _dirs: dirs,
        }
    }

    fn live(&self) -> impl Iterator<Item = (usize, &ServerHandle)> {
        self.servers
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
    }

    fn server(&self, index: usize) -> &ServerHandle {
        self.servers[index].as_ref().expect("server is running")
    }

    /// Waits until exactly one live server leads and every other one knows it; returns
    /// the leader's index.
    async fn settled_leader(&self) -> usize {
        let deadline = Instant::now() + WAIT_LIMIT;
        loop {
            let leaders: Vec<usize> = self
                .live()
                .filter(|(_, s)| s.is_leader())
                .map(|(i, _)| i)
                .collect();
            if let [leader] = leaders[..] {
                let url = self.server(leader).advertise_url().to_string();
                if self
                    .live()
                    .all(|(_, s)| s.leader_url().as_deref() == Some(url.as_str()))
                {
                    return leader;
                }
            }
            assert!(leaders.len() <= 1, "two servers lead at once: {leaders:?}");
            assert!(
                Instant::now() < deadline,
                "no single leader within {WAIT_LIMIT:?}: leaders {leaders:?}, views {:?}",
                self.live().map(|(_, s)| s.leader_url()).collect::<Vec<_>>()
            );
            tokio::time::sleep(POLL_PAUSE).await;
        }
    }

    /// Some live server other than `not`.
    fn other_than(&self, not: usize) -> usize {
        self.live()
            .map(|(i, _)| i)
            .find(|&i| i != not)
            .expect("another server is running")
    }

    async fn apply(&self, via: usize, name: &str) -> StatusCode {
        let server = self.server(via);
        self.client
            .put(format!("{}/v1/services/{name}", server.url()))
            .bearer_auth(server.api_token())
            .header("content-type", "application/toml")
            .body(web_spec(name))
            .send()
            .await
            .map(|r| r.status())
            .unwrap_or(StatusCode::BAD_GATEWAY)
    }

    async fn get_json(&self, via: usize, path: &str) -> (StatusCode, Value) {
        let server = self.server(via);
        let response = self
            .client
            .get(format!("{}{path}", server.url()))
            .bearer_auth(server.api_token())
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn register(&self, via: usize, name: &str) -> RegisterResponse {
        let server = self.server(via);
        let request = RegisterRequest {
            name: name.into(),
            zone: format!("zone-{name}"),
            pool: "default".into(),
            cpu_millis: 4000,
            memory_mib: 8192,
            price_per_hour: 0.1,
            labels: BTreeMap::new(),
            transport_addr: "127.0.0.1:1".into(),
            rejoin: None,
        };
        let response = self
            .client
            .post(format!("{}/v1/agents/register", server.url()))
            .bearer_auth(server.join_token())
            .json(&request)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    /// One heartbeat of `node` through server `via`: its assignments, or None if the
    /// call failed (no holder yet during a failover).
    async fn heartbeat(&self, via: usize, node: NodeId) -> Option<Assignments> {
        let server = self.server(via);
        let heartbeat = Heartbeat {
            node_id: node,
            replicas: vec![],
            instances: vec![],
            resp_addrs: Default::default(),
            metrics: Default::default(),
            ..Heartbeat::default()
        };
        let response = self
            .client
            .post(format!("{}/v1/agents/{node}/heartbeat", server.url()))
            .bearer_auth(server.join_token())
            .json(&heartbeat)
            .send()
            .await
            .ok()?;
        if response.status() != StatusCode::OK {
            return None;
        }
        response.json().await.ok()
    }

    /// Heartbeats every node through `via` until each has an instance of `service`;
    /// returns when they all do.
    async fn heartbeat_until_assigned(&self, via: usize, nodes: &[NodeId], service: &str) {
        let deadline = Instant::now() + WAIT_LIMIT;
        loop {
            let mut assigned = 0;
            for &node in nodes {
                if let Some(assignments) = self.heartbeat(via, node).await {
                    if assignments.instances.iter().any(|i| i.service == service) {
                        assigned += 1;
                    }
                }
            }
            if assigned == nodes.len() {
                return;
            }
            if Instant::now() > deadline {
                let (_, view) = self.get_json(via, &format!("/v1/services/{service}")).await;
                let (_, listed) = self.get_json(via, "/v1/nodes").await;
                panic!(
                    "{service} not assigned to every node within {WAIT_LIMIT:?}: {view:#}\n{listed:#}"
                );
            }
            tokio::time::sleep(POLL_PAUSE).await;
        }
    }

    async fn shutdown_all(mut self) {
        for server in self.servers.iter_mut().filter_map(Option::take) {
            server.shutdown().await.unwrap();
        }
    }
}

/// How the controller holder is stopped.
#[derive(Debug, Clone, Copy)]
enum Kill {
    /// `ServerHandle::shutdown`: the lease is given up at once.
    Graceful,
    /// `ServerHandle::abort`, like a crash: the lease must expire first.
    Crash,
}

/// Three servers: one leads, all share tokens, and every API and agent call works
/// through any of them.
async fn one_leader_and_calls_work_through_any_server(store: impl Fn() -> StoreConfig) {
    let servers = Servers::start(3, store).await;
    let leader = servers.settled_leader().await;
    let tokens: Vec<(&str, &str)> = servers
        .live()
        .map(|(_, s)| (s.api_token(), s.join_token()))
        .collect();
    assert!(
        tokens.windows(2).all(|w| w[0] == w[1]),
        "servers on one store share its tokens"
    );
    let follower = servers.other_than(leader);
    // Agents register through a follower before the service exists: with one node
    // registered and the other not yet, spread placement would put both instances on the
    // first (instances do not move once placed, as a Deployment's pods do not).
    let nodes = [
        servers.register(follower, "n1").await.node_id,
        servers.register(follower, "n2").await.node_id,
    ];
    assert_eq!(servers.apply(follower, "web").await, StatusCode::CREATED);
    for (index, _) in servers.live() {
        let (status, body) = servers.get_json(index, "/v1/services/web").await;
        assert_eq!(status, StatusCode::OK, "via server {index}: {body}");
        assert_eq!(body["name"], "web");
    }
    // A follower refuses a wrong token itself instead of relaying it.
    let response = servers
        .client
        .get(format!("{}/v1/services", servers.server(follower).url()))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // Agents get work through a follower.
    servers
        .heartbeat_until_assigned(follower, &nodes, "web")
        .await;
    servers.shutdown_all().await;
}

/// Kills the holder; another server takes over, loads the cluster and reconciles: a
/// service applied after the kill is assigned to nodes heartbeating through a survivor.
/// Returns the milliseconds from the kill to that assignment.
async fn the_controller_moves_when_its_holder_dies(
    store: impl Fn() -> StoreConfig,
    kill: Kill,
) -> u128 {
    let mut servers = Servers::start(3, store).await;
    let leader = servers.settled_leader().await;
    let survivor = servers.other_than(leader);
    let nodes = [
        servers.register(survivor, "n1").await.node_id,
        servers.register(survivor, "n2").await.node_id,
    ];
    assert_eq!(servers.apply(survivor, "before").await, StatusCode::CREATED);
    servers
        .heartbeat_until_assigned(survivor, &nodes, "before")
        .await;

    let holder = servers.servers[leader].take().unwrap();
    let killed_at = Instant::now();
    match kill {
        Kill::Graceful => holder.shutdown().await.unwrap(),
        Kill::Crash => holder.abort(),
    }
    // Keep heartbeating (nodes must not look lost) and apply the new service until a
    // holder accepts it.
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        for &node in &nodes {
            servers.heartbeat(survivor, node).await;
        }
        match servers.apply(survivor, "after").await {
            StatusCode::CREATED => break,
            status => assert!(
                status == StatusCode::SERVICE_UNAVAILABLE,
                "only 503 is expected while the controller moves, got {status}"
            ),
        }
        assert!(Instant::now() < deadline, "no holder took over");
        tokio::time::sleep(POLL_PAUSE).await;
    }
    servers
        .heartbeat_until_assigned(survivor, &nodes, "after")
        .await;
    let failover_ms = killed_at.elapsed().as_millis();
    let new_leader = servers.settled_leader().await;
    assert_ne!(new_leader, leader);
    // The new holder loaded what the old one stored: the first service and the nodes.
    let (_, before) = servers.get_json(survivor, "/v1/services/before").await;
    assert_eq!(before["name"], "before");
    let (_, listed) = servers.get_json(new_leader, "/v1/nodes").await;
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    servers.shutdown_all().await;
    failover_ms
}

/// While the key names a holder that does not answer, calls get a 503 that says so;
/// when its lease ends a live server takes over.
async fn an_unreachable_holder_is_a_503_until_its_lease_ends(store: Arc<dyn Store>) {
    let lease = store.grant_lease(60_000).await.unwrap();
    store
        .put_with_lease(
            stator_server::leader::LEADER_KEY,
            bytes::Bytes::from_static(b"http://127.0.0.1:1"),
            lease,
        )
        .await
        .unwrap();
    let shared = store.clone();
    let servers = Servers::start(1, move || StoreConfig::Shared(shared.clone())).await;
    let deadline = Instant::now() + WAIT_LIMIT;
    while servers.server(0).leader_url().as_deref() != Some("http://127.0.0.1:1") {
        assert!(Instant::now() < deadline, "the server never saw the holder");
        tokio::time::sleep(POLL_PAUSE).await;
    }
    let (status, body) = servers.get_json(0, "/v1/services").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let message = body["error"].as_str().unwrap_or_default();
    assert!(message.contains("does not answer"), "{message}");
    assert!(matches!(
        store.revoke(lease).await,
        Ok(()) | Err(StoreError::LeaseNotFound { .. })
    ));
    servers.settled_leader().await;
    let (status, _) = servers.get_json(0, "/v1/services").await;
    assert_eq!(status, StatusCode::OK);
    servers.shutdown_all().await;
}

/// Lease TTL of the keys the fencing tests plant by hand: far longer than any test.
const PLANTED_LEASE_TTL_MS: u64 = 60_000;

/// Wins [`LEADER_KEY`] for `url` the way an election does; returns the lease and the
/// revision the key was created at, or None if the key is taken.
async fn try_win_leader_key(store: &Arc<dyn Store>, url: &'static str) -> Option<(LeaseId, u64)> {
    let lease = store.grant_lease(PLANTED_LEASE_TTL_MS).await.unwrap();
    let won = store
        .compare_and_swap_with_lease(
            LEADER_KEY,
            Expected::Absent,
            Some(bytes::Bytes::from_static(url.as_bytes())),
            Some(lease),
        )
        .await
        .unwrap();
    match won {
        CasOutcome::Swapped { revision } => Some((lease, revision)),
        CasOutcome::Mismatch { .. } => {
            store.revoke(lease).await.unwrap();
            None
        }
    }
}

/// [`try_win_leader_key`] on a key nobody else campaigns for.
async fn win_leader_key(store: &Arc<dyn Store>, url: &'static str) -> (LeaseId, u64) {
    try_win_leader_key(store, url)
        .await
        .expect("the leader key must be free")
}

/// Every key the server keeps and the store revision: equal before and after a refused
/// write when nothing of it landed.
async fn store_state(store: &Arc<dyn Store>) -> (u64, Vec<(String, bytes::Bytes)>) {
    let listed = store.list("/stator/").await.unwrap();
    let keys = listed.into_iter().map(|(k, v)| (k, v.value)).collect();
    (store.revision().await.unwrap(), keys)
}

fn parsed_web_spec(name: &str) -> stator_api::spec::ServiceSpec {
    stator_api::spec::parse_spec(&web_spec(name), stator_api::spec::SpecFormat::Toml).unwrap()
}

/// Server A's controller runs with the fence of its win; another server takes the leader
/// key over behind its back (A's lease ended while A was paused, B won). A's next write,
/// an apply through its handle, is refused with the fenced error, nothing of it reaches
/// the store, and A's controller stops by itself with `Fenced`.
async fn a_deposed_controller_cannot_write(store: Arc<dyn Store>) {
    let (lease_a, won_at) = win_leader_key(&store, "http://server-a").await;
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(dir.path());
    config.node_grace_ms = TEST_GRACE_MS;
    let settings = stator_server::controller_settings(&config);
    let (handle, task) = controller::spawn(
        store.clone(),
        Fence::leader(LEADER_KEY, won_at),
        settings,
        Arc::new(Metrics::new()),
        stop_rx,
    )
    .await
    .unwrap();
    let applied = handle.apply(parsed_web_spec("while-leading")).await;
    assert!(applied.is_ok(), "A holds the key: {applied:?}");

    // B wins the key; A's controller has not noticed (no election task runs here).
    store.revoke(lease_a).await.unwrap();
    let (_lease_b, _) = win_leader_key(&store, "http://server-b").await;
    let before = store_state(&store).await;
    let refused = handle.apply(parsed_web_spec("after-deposed")).await;
    match &refused {
        Err(ServerError::Store(StoreError::Fenced { key })) => assert_eq!(key, LEADER_KEY),
        other => panic!("a deposed controller's write must be fenced, got {other:?}"),
    }
    assert_eq!(
        refused.unwrap_err().status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "callers are told to retry (the new holder answers)"
    );
    assert_eq!(
        store_state(&store).await,
        before,
        "nothing of the write landed"
    );
    let exit = tokio::time::timeout(WAIT_LIMIT, task)
        .await
        .expect("a fenced controller stops by itself")
        .expect("the controller task does not panic");
    assert_eq!(exit, ControllerExit::Fenced);
    let after_stop = handle.apply(parsed_web_spec("after-stop")).await;
    assert!(
        matches!(after_stop, Err(ServerError::ShuttingDown)),
        "a stopped controller takes no more commands: {after_stop:?}"
    );
    assert_eq!(store_state(&store).await, before);
}

/// A server leads; its leader key is taken over behind its back (deleted and won by
/// another server, as after a pause). It stops its controller and follows the new holder;
/// an apply sent to it is not written by it.
async fn a_server_whose_key_is_taken_follows_and_writes_nothing(store: Arc<dyn Store>) {
    let shared = store.clone();
    let servers = Servers::start(1, move || StoreConfig::Shared(shared.clone())).await;
    servers.settled_leader().await;
    assert_eq!(servers.apply(0, "before").await, StatusCode::CREATED);
    // B takes over: A's lease ends (its key goes) and B wins the free key. A may win it
    // back first when it notices; then B ends that lease too and tries again.
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        if let Some(held) = store.get(LEADER_KEY).await.unwrap() {
            let lease = held.lease.expect("the leader key carries a lease");
            assert!(matches!(
                store.revoke(lease).await,
                Ok(()) | Err(StoreError::LeaseNotFound { .. })
            ));
        }
        if try_win_leader_key(&store, "http://127.0.0.1:1")
            .await
            .is_some()
        {
            break;
        }
        assert!(Instant::now() < deadline, "B never won the leader key");
    }
    let deadline = Instant::now() + WAIT_LIMIT;
    while servers.server(0).leader_url().as_deref() != Some("http://127.0.0.1:1") {
        assert!(Instant::now() < deadline, "A never followed the new holder");
        tokio::time::sleep(POLL_PAUSE).await;
    }
    assert!(!servers.server(0).is_leader());
    let before = store_state(&store).await;
    let status = servers.apply(0, "after").await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "forwarded to the new holder, which does not answer"
    );
    assert_eq!(store_state(&store).await, before, "A wrote nothing more");
    servers.shutdown_all().await;
}

mod shared_embedded {
    use super::*;
    use stator_store::EmbeddedStore;

    fn shared_store() -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        (dir, store)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_leader_and_calls_work_through_any_server() {
        let (_dir, store) = shared_store();
        super::one_leader_and_calls_work_through_any_server(|| StoreConfig::Shared(store.clone()))
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn graceful_stop_of_the_holder_hands_over() {
        let (_dir, store) = shared_store();
        let ms = super::the_controller_moves_when_its_holder_dies(
            || StoreConfig::Shared(store.clone()),
            Kill::Graceful,
        )
        .await;
        println!("FAILOVER store=shared-embedded kill=graceful reconciled_after_ms={ms}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crash_of_the_holder_hands_over() {
        let (_dir, store) = shared_store();
        let ms = super::the_controller_moves_when_its_holder_dies(
            || StoreConfig::Shared(store.clone()),
            Kill::Crash,
        )
        .await;
        println!("FAILOVER store=shared-embedded kill=crash reconciled_after_ms={ms}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_holder_is_a_503_until_its_lease_ends() {
        let (_dir, store) = shared_store();
        super::an_unreachable_holder_is_a_503_until_its_lease_ends(store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deposed_controller_cannot_write() {
        let (_dir, store) = shared_store();
        super::a_deposed_controller_cannot_write(store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_whose_key_is_taken_follows_and_writes_nothing() {
        let (_dir, store) = shared_store();
        super::a_server_whose_key_is_taken_follows_and_writes_nothing(store).await;
    }
}

#[cfg(feature = "etcd")]
mod etcd {
    use super::*;
    use stator_harness::etcd::{
        available_or_skip as etcd_available_or_skip, EtcdOptions, LocalEtcd,
    };
    use stator_store::EtcdStore;

    /// A real 3-member etcd on loopback, killed and removed on drop.
    async fn start_etcd() -> LocalEtcd {
        LocalEtcd::start(EtcdOptions::for_tests(3))
            .await
            .unwrap_or_else(|why| panic!("starting the test etcd: {why:#}"))
    }

    /// One store on `cluster`, shared by the servers of a test.
    async fn shared_etcd_store(cluster: &LocalEtcd) -> Arc<dyn Store> {
        Arc::new(
            EtcdStore::connect(cluster.endpoints())
                .await
                .unwrap_or_else(|why| panic!("connecting to the test etcd: {why}")),
        )
    }

    /// Each server gets its own connection, as separate processes would.
    fn etcd_config(cluster: &LocalEtcd) -> impl Fn() -> StoreConfig {
        let endpoints: Vec<String> = cluster
            .endpoints()
            .iter()
            .map(|url| url.trim_start_matches("http://").to_string())
            .collect();
        move || StoreConfig::Etcd(endpoints.clone())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_leader_and_calls_work_through_any_server() {
        if !etcd_available_or_skip() {
            return;
        }
        let cluster = start_etcd().await;
        super::one_leader_and_calls_work_through_any_server(etcd_config(&cluster)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn graceful_stop_of_the_holder_hands_over() {
        if !etcd_available_or_skip() {
            return;
        }
        let cluster = start_etcd().await;
        let ms =
            super::the_controller_moves_when_its_holder_dies(etcd_config(&cluster), Kill::Graceful)
                .await;
        println!("FAILOVER store=etcd kill=graceful reconciled_after_ms={ms}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crash_of_the_holder_hands_over() {
        if !etcd_available_or_skip() {
            return;
        }
        let cluster = start_etcd().await;
        let ms =
            super::the_controller_moves_when_its_holder_dies(etcd_config(&cluster), Kill::Crash)
                .await;
        println!("FAILOVER store=etcd kill=crash reconciled_after_ms={ms}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_holder_is_a_503_until_its_lease_ends() {
        if !etcd_available_or_skip() {
            return;
        }
        let cluster = start_etcd().await;
        let store = shared_etcd_store(&cluster).await;
        super::an_unreachable_holder_is_a_503_until_its_lease_ends(store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deposed_controller_cannot_write() {
        if !etcd_available_or_skip() {
            return;
        }
        let cluster = start_etcd().await;
        let store = shared_etcd_store(&cluster).await;
        super::a_deposed_controller_cannot_write(store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_whose_key_is_taken_follows_and_writes_nothing() {
        if !etcd_available_or_skip() {
            return;
        }
        let cluster = start_etcd().await;
        let store = shared_etcd_store(&cluster).await;
        super::a_server_whose_key_is_taken_follows_and_writes_nothing(store).await;
    }
}
