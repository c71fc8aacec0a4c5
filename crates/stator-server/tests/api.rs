//! The server through real HTTP on 127.0.0.1:0: authentication, apply, validation,
//! simulated agents (plain HTTP calls), node loss, drain, events, restart.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use stator_api::agent::{
    Assignments, Heartbeat, RegisterRequest, RegisterResponse, ReplicaRole, ReplicaStatus,
};
use stator_api::ids::NodeId;
use stator_api::views::PartitionView;
use stator_server::{ServerConfig, ServerHandle};

/// Grace used by these tests: short so node loss is detected quickly, long enough that
/// a loaded CI machine does not lose a node that keeps heartbeating every 100 ms.
const TEST_GRACE_MS: u64 = 1_500;
/// Bound on every wait-until loop: generous, the assertions never depend on timing.
const WAIT_LIMIT: Duration = Duration::from_secs(30);
/// Pause between rounds of simulated heartbeats.
const ROUND_PAUSE: Duration = Duration::from_millis(100);

const KV_SPEC: &str = r#"
name = "sessions"
kind = "replicated"
partitions = 4
replicas = 3
app = { builtin = "kv" }
expose = { resp = "127.0.0.1:6380" }
resources = { cpu = "250m", memory = "128Mi" }
placement = { spread = "node" }
qos = { p99_latency_ms = 5 }
"#;

struct TestServer {
    handle: ServerHandle,
    client: reqwest::Client,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut server = Self::start_in(dir.path()).await;
        server._dir = Some(dir);
        server
    }

    async fn start_in(path: &std::path::Path) -> Self {
        let mut config = ServerConfig::new(path);
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.node_grace_ms = TEST_GRACE_MS;
        config.heartbeat_interval_ms = 100;
        let handle = stator_server::start(config).await.unwrap();
        TestServer {
            handle,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            _dir: None,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.handle.url())
    }

    fn api(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(self.handle.api_token())
    }

    async fn get_json(&self, path: &str) -> Value {
        let response = self.api(Method::GET, path).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        response.json().await.unwrap()
    }

    async fn apply(&self, name: &str, content_type: &str, body: &str) -> (StatusCode, Value) {
        let response = self
            .api(Method::PUT, &format!("/v1/services/{name}"))
            .header("content-type", content_type)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    async fn register(&self, name: &str, zone: &str) -> RegisterResponse {
        let response = self.register_as(name, zone, None).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    async fn register_as(
        &self,
        name: &str,
        zone: &str,
        rejoin: Option<stator_api::agent::Rejoin>,
    ) -> reqwest::Response {
        let request = RegisterRequest {
            name: name.into(),
            zone: zone.into(),
            pool: "default".into(),
            cpu_millis: 4000,
            memory_mib: 8192,
            price_per_hour: 0.1,
            labels: BTreeMap::new(),
            transport_addr: format!(
                "127.0.0.1:{}",
                20000 + name.len() as u16 * 7 + zone.len() as u16
            ),
            rejoin,
        };
        self.client
            .post(self.url("/v1/agents/register"))
            .bearer_auth(self.handle.join_token())
            .json(&request)
            .send()
            .await
            .unwrap()
    }

    async fn heartbeat(&self, heartbeat: &Heartbeat) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/v1/agents/{}/heartbeat", heartbeat.node_id)))
            .bearer_auth(self.handle.join_token())
            .json(heartbeat)
            .send()
            .await
            .unwrap()
    }

    async fn partitions(&self) -> Vec<PartitionView> {
        serde_json::from_value(self.get_json("/v1/partitions").await).unwrap()
    }
}

/// A simulated agent: reports a replica for every assignment it got last time; the
/// first live member of a partition plays leader, and (standing in for the real
/// learner/catch-up/swap path) reports the designed members as the voters.
struct SimAgent {
    id: NodeId,
    assignments: Assignments,
}

impl SimAgent {
    fn heartbeat(&self, leaders_of: &BTreeMap<u32, NodeId>) -> Heartbeat {
        Heartbeat {
            node_id: self.id,
            replicas: self
                .assignments
                .replicas
                .iter()
                .map(|a| {
                    let leader = leaders_of.get(&a.partition).copied();
                    let role = if leader == Some(self.id) {
                        ReplicaRole::Leader
                    } else {
                        ReplicaRole::Follower
                    };
                    ReplicaStatus {
                        role,
                        leader,
                        voters: a.members.iter().map(|m| m.node_id).collect(),
                        applied_index: 1,
                        ..stator_api::testing::replica_status(a.group, &a.service, a.partition)
                    }
                })
                .collect(),
            instances: vec![],
            resp_addrs: Default::default(),
            metrics: Default::default(),
            ..Heartbeat::default()
        }
    }
}

/// One round: every live agent heartbeats and keeps its new assignments. The leader of
/// each partition is its first designed member among the live agents.
async fn round(server: &TestServer, agents: &mut [SimAgent], live: &BTreeSet<NodeId>) {
    let mut leaders_of = BTreeMap::new();
    for agent in agents.iter() {
        for assignment in &agent.assignments.replicas {
            if let Some(first) = assignment
                .members
                .iter()
                .map(|m| m.node_id)
                .find(|n| live.contains(n))
            {
                leaders_of.insert(assignment.partition, first);
            }
        }
    }
    for agent in agents.iter_mut().filter(|a| live.contains(&a.id)) {
        let response = server.heartbeat(&agent.heartbeat(&leaders_of)).await;
        assert_eq!(response.status(), StatusCode::OK);
        agent.assignments = response.json().await.unwrap();
    }
}

async fn register_agents(server: &TestServer, names: &[&str]) -> Vec<SimAgent> {
    let mut agents = Vec::new();
    for (index, name) in names.iter().enumerate() {
        let zone = format!("zone-{index}");
        let registered = server.register(name, &zone).await;
        assert_eq!(registered.heartbeat_interval_ms, 100);
        assert!(!registered.cluster_secret.is_empty());
        agents.push(SimAgent {
            id: registered.node_id,
            assignments: Assignments::default(),
        });
    }
    agents
}

/// Runs heartbeat rounds until `done` holds for the partitions, or panics at the limit.
async fn rounds_until(
    server: &TestServer,
    agents: &mut [SimAgent],
    live: &BTreeSet<NodeId>,
    what: &str,
    done: impl Fn(&[PartitionView]) -> bool,
) -> Vec<PartitionView> {
    let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
    loop {
        round(server, agents, live).await;
        let partitions = server.partitions().await;
        if done(&partitions) {
            return partitions;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}: {partitions:#?}"
        );
        tokio::time::sleep(ROUND_PAUSE).await;
    }
}

fn designed(partition: &PartitionView) -> BTreeSet<NodeId> {
    partition
        .members
        .iter()
        .filter(|m| m.designed)
        .map(|m| m.node_id)
        .collect()
}

#[tokio::test]
async fn every_v1_route_refuses_a_missing_or_wrong_token() {
    let server = TestServer::start().await;
    let api_routes = [
        (Method::GET, "/v1/nodes"),
        (Method::GET, "/v1/nodes/n1"),
        (Method::POST, "/v1/nodes/n1/drain"),
        (Method::GET, "/v1/services"),
        (Method::GET, "/v1/services/sessions"),
        (Method::PUT, "/v1/services/sessions"),
        (Method::DELETE, "/v1/services/sessions"),
        (Method::GET, "/v1/partitions"),
        (Method::GET, "/v1/cluster"),
        (Method::GET, "/v1/partitions?service=sessions"),
        (Method::GET, "/v1/events"),
        (Method::GET, "/v1/events/recent"),
    ];
    let agent_routes = [
        (Method::POST, "/v1/agents/register"),
        (Method::POST, "/v1/agents/1/heartbeat"),
    ];
    let join = server.handle.join_token().to_string();
    let api = server.handle.api_token().to_string();
    let wrong = "0".repeat(64);
    for (routes, right_token, other_token) in [
        (&api_routes[..], &api, &join),
        (&agent_routes[..], &join, &api),
    ] {
        for (method, path) in routes {
            for token in [None, Some(wrong.as_str()), Some(other_token.as_str())] {
                let mut request = server
                    .client
                    .request(method.clone(), server.url(path))
                    .header("content-type", "application/toml")
                    .body(KV_SPEC);
                if let Some(token) = token {
                    request = request.bearer_auth(token);
                }
                let response = request.send().await.unwrap();
                assert_eq!(
                    response.status(),
                    StatusCode::UNAUTHORIZED,
                    "{method} {path} with {token:?}"
                );
                let body: Value = response.json().await.unwrap();
                assert!(body["error"].as_str().unwrap().contains("bearer token"));
            }
            assert_ne!(right_token, other_token);
        }
    }
    // Nothing was applied by the refused PUTs.
    assert_eq!(server.get_json("/v1/services").await, serde_json::json!([]));
    // Open routes.
    let health = server
        .client
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let metrics = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    let text = metrics.text().await.unwrap();
    assert!(text.contains("stator_api_requests_total"), "{text}");
    assert!(text.contains("stator_nodes"), "{text}");
    server.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn apply_is_idempotent_in_every_format() {
    let server = TestServer::start().await;
    let (status, body) = server.apply("sessions", "application/toml", KV_SPEC).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["result"], "created");
    let (status, body) = server.apply("sessions", "application/toml", KV_SPEC).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["result"], "unchanged");
    // The same spec as JSON and YAML is still unchanged.
    let spec = stator_api::spec::parse_spec(KV_SPEC, stator_api::spec::SpecFormat::Toml).unwrap();
    let json = serde_json::to_string(&spec).unwrap();
    let (_, body) = server.apply("sessions", "application/json", &json).await;
    assert_eq!(body["result"], "unchanged");
    let yaml = "name: sessions\npartitions: 4\napp: {builtin: kv}\nexpose: {resp: \"127.0.0.1:6380\"}\nresources: {cpu: 250m, memory: 128Mi}\nqos: {p99_latency_ms: 5}\n";
    let (_, body) = server.apply("sessions", "application/yaml", yaml).await;
    assert_eq!(body["result"], "unchanged", "{body}");
    let services = server.get_json("/v1/services").await;
    assert_eq!(services.as_array().unwrap().len(), 1);
    assert_eq!(services[0]["generation"], 1);
    // A real change bumps the generation; a change of partitions is refused.
    let (_, body) = server
        .apply(
            "sessions",
            "application/toml",
            &KV_SPEC.replace("p99_latency_ms = 5", "p99_latency_ms = 7"),
        )
        .await;
    assert_eq!(body["result"], "updated");
    assert_eq!(body["service"]["generation"], 2);
    let (status, body) = server
        .apply(
            "sessions",
            "application/toml",
            &KV_SPEC.replace("partitions = 4", "partitions = 8"),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        body["error"].as_str().unwrap().starts_with("partitions:"),
        "{body}"
    );
    // Delete removes it; a second delete is a 404.
    let response = server
        .api(Method::DELETE, "/v1/services/sessions")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let response = server
        .api(Method::DELETE, "/v1/services/sessions")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    server.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_specs_are_refused_naming_the_field_and_nothing_is_stored() {
    let server = TestServer::start().await;
    let oversized = format!("{KV_SPEC}\n# {}\n", "x".repeat(2 * 1024 * 1024));
    let cases: Vec<(&str, String, StatusCode, &str)> = vec![
        (
            "application/toml",
            "name = \"sessions\"\npartitions = [".into(),
            StatusCode::BAD_REQUEST,
            "TOML",
        ),
        (
            "application/yaml",
            "name: sessions\n  partitions: : 3\n".into(),
            StatusCode::BAD_REQUEST,
            "YAML",
        ),
        (
            "application/json",
            "{\"name\": \"sessions\",".into(),
            StatusCode::BAD_REQUEST,
            "JSON",
        ),
        (
            "application/toml",
            KV_SPEC.replace("replicas = 3", "replicas = 3\nreplica_count = 3"),
            StatusCode::BAD_REQUEST,
            "replica_count",
        ),
        (
            "application/toml",
            KV_SPEC.replace("partitions = 4", "partitions = \"four\""),
            StatusCode::BAD_REQUEST,
            "partitions",
        ),
        (
            "application/toml",
            KV_SPEC.replace("replicas = 3", "replicas = 0"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "replicas: must be 1, 3, 5 or 7",
        ),
        (
            "application/toml",
            KV_SPEC.replace("partitions = 4", "partitions = 1000000000"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "partitions: must be between 1 and 1024",
        ),
        (
            "application/toml",
            KV_SPEC.replace("cpu = \"250m\"", "cpu = \"lots\""),
            StatusCode::BAD_REQUEST,
            "CPU quantity",
        ),
        (
            "application/toml",
            KV_SPEC.replace("name = \"sessions\"", "name = \"other\""),
            StatusCode::UNPROCESSABLE_ENTITY,
            "name:",
        ),
        (
            "application/toml",
            oversized,
            StatusCode::BAD_REQUEST,
            "at most 1048576 bytes",
        ),
    ];
    for (content_type, body, want_status, want_text) in cases {
        let (status, answer) = server.apply("sessions", content_type, &body).await;
        let error = answer["error"].as_str().unwrap_or_default().to_string();
        assert_eq!(status, want_status, "{want_text}: {error}");
        assert!(
            error.contains(want_text),
            "expected {want_text:?} in {error:?}"
        );
    }
    assert_eq!(server.get_json("/v1/services").await, serde_json::json!([]));
    server.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn agents_get_distinct_members_and_a_lost_node_is_replaced() {
    let server = TestServer::start().await;
    let mut agents = register_agents(&server, &["n1", "n2", "n3"]).await;
    let (status, _) = server.apply("sessions", "application/toml", KV_SPEC).await;
    assert_eq!(status, StatusCode::CREATED);
    let mut live: BTreeSet<NodeId> = agents.iter().map(|a| a.id).collect();
    let partitions = rounds_until(
        &server,
        &mut agents,
        &live,
        "replication factor met",
        |ps| {
            ps.len() == 4
                && ps
                    .iter()
                    .all(|p| p.replication_factor_met && p.leader.is_some())
        },
    )
    .await;
    for partition in &partitions {
        assert_eq!(designed(partition), live, "3 distinct members");
        assert_eq!(partition.member_addrs.len(), 3);
    }
    // Every agent got every partition; the first ones bootstrapped.
    for agent in &agents {
        assert_eq!(agent.assignments.replicas.len(), 4);
        for assignment in &agent.assignments.replicas {
            let members: BTreeSet<NodeId> = assignment.members.iter().map(|m| m.node_id).collect();
            assert_eq!(members, live);
            assert!(assignment.election_timeout_ms > 0);
        }
    }

    // A fourth node joins; the first stops heartbeating.
    agents.extend(register_agents(&server, &["n4"]).await);
    let fourth = agents[3].id;
    let victim = agents[0].id;
    live.insert(fourth);
    live.remove(&victim);
    let partitions = rounds_until(
        &server,
        &mut agents,
        &live,
        "replacement on the fourth node",
        |ps| {
            ps.iter()
                .all(|p| designed(p) == live && p.replication_factor_met)
        },
    )
    .await;
    assert!(partitions
        .iter()
        .all(|p| p.members.iter().all(|m| m.node_id != victim)));
    let replacement = &agents[3].assignments.replicas;
    assert_eq!(replacement.len(), 4);
    assert!(
        replacement.iter().all(|a| !a.bootstrap),
        "a replacement joins, never bootstraps"
    );
    let nodes = server.get_json("/v1/nodes").await;
    let victim_state = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == victim)
        .map(|n| n["state"].clone());
    assert_eq!(victim_state, Some(Value::from("lost")));
    // The lost agent must register again: its heartbeats are refused.
    let response = server
        .heartbeat(&Heartbeat {
            node_id: victim,
            ..Heartbeat::default()
        })
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains(stator_api::agent::UNKNOWN_NODE_ERROR));
    server.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn drain_moves_replicas_away_then_the_node_is_drained() {
    let server = TestServer::start().await;
    let mut agents = register_agents(&server, &["n1", "n2", "n3", "n4"]).await;
    let spec = KV_SPEC.replace("partitions = 4", "partitions = 2");
    server.apply("sessions", "application/toml", &spec).await;
    let live: BTreeSet<NodeId> = agents.iter().map(|a| a.id).collect();
    let partitions = rounds_until(
        &server,
        &mut agents,
        &live,
        "replication factor met",
        |ps| ps.len() == 2 && ps.iter().all(|p| p.replication_factor_met),
    )
    .await;
    // Drain a node that hosts at least one replica.
    let target = *designed(&partitions[0]).iter().next().unwrap();
    let name = agents
        .iter()
        .position(|a| a.id == target)
        .map(|i| format!("n{}", i + 1))
        .unwrap();
    let response = server
        .api(Method::POST, &format!("/v1/nodes/{name}/drain"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let node: Value = response.json().await.unwrap();
    assert!(
        node["state"] == "draining" || node["state"] == "drained",
        "{node}"
    );
    rounds_until(&server, &mut agents, &live, "node drained", |ps| {
        ps.iter()
            .all(|p| !designed(p).contains(&target) && p.replication_factor_met)
    })
    .await;
    let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
    loop {
        round(&server, &mut agents, &live).await;
        let node = server.get_json(&format!("/v1/nodes/{name}")).await;
        if node["state"] == "drained" {
            assert_eq!(node["replicas"], 0);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never drained: {node}"
        );
        tokio::time::sleep(ROUND_PAUSE).await;
    }
    let drained = agents.iter().find(|a| a.id == target).unwrap();
    assert!(drained.assignments.replicas.is_empty());
    server.handle.shutdown().await.unwrap();
}

/// A drain is asked for by name. An agent lost mid-drain that joins again as a new node
/// (declared lost under load, or restarted without its identity) keeps being drained:
/// it must not quietly take work again. Once a drain has finished, the node's next
/// incarnation starts ready (chaos seed 46: a drain that never finished because the
/// drained node came back `ready` under a fresh id).
#[tokio::test]
async fn a_node_lost_mid_drain_that_joins_as_a_new_node_is_still_drained() {
    let server = TestServer::start().await;
    let mut agents = register_agents(&server, &["n1", "n2", "n3"]).await;
    let spec = KV_SPEC.replace("partitions = 4", "partitions = 1");
    server.apply("sessions", "application/toml", &spec).await;
    let live: BTreeSet<NodeId> = agents.iter().map(|a| a.id).collect();
    rounds_until(
        &server,
        &mut agents,
        &live,
        "replication factor met",
        |ps| ps.len() == 1 && ps.iter().all(|p| p.replication_factor_met),
    )
    .await;
    // Three nodes, three replicas: n1's replica has nowhere to go, its drain waits.
    let response = server
        .api(Method::POST, "/v1/nodes/n1/drain")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let node = server.get_json("/v1/nodes/n1").await;
    assert_eq!(node["state"], "draining", "{node}");

    // n1's agent registers again without its identity: the old record is lost while
    // draining, the new one goes on draining (and, hosting nothing, is drained).
    let again = server.register("n1", "zone-0").await;
    assert_ne!(again.node_id, agents[0].id);
    let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
    loop {
        round(&server, &mut agents[1..], &live).await;
        let node = server.get_json("/v1/nodes/n1").await;
        assert_eq!(node["id"], again.node_id, "{node}");
        assert_ne!(node["state"], "ready", "the drain was forgotten: {node}");
        if node["state"] == "drained" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never drained: {node}"
        );
        tokio::time::sleep(ROUND_PAUSE).await;
    }

    // The drain finished; the next incarnation is a fresh, ready node.
    let third = server.register("n1", "zone-0").await;
    let node = server.get_json("/v1/nodes/n1").await;
    assert_eq!(node["id"], third.node_id, "{node}");
    assert_eq!(node["state"], "ready", "{node}");
    server.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_dashboard_is_served_without_data_and_recent_events_need_the_token() {
    let server = TestServer::start().await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let root = no_redirects.get(server.url("/")).send().await.unwrap();
    assert!(root.status().is_redirection());
    assert_eq!(root.headers()["location"], "/ui/");
    for (path, kind) in [
        ("/ui/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let response = server.client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers();
        assert!(headers["content-type"].to_str().unwrap().starts_with(kind));
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"));
        assert_eq!(headers["referrer-policy"], "no-referrer");
    }
    register_agents(&server, &["n1"]).await;
    server
        .apply(
            "sessions",
            "application/toml",
            &KV_SPEC.replace("replicas = 3", "replicas = 1"),
        )
        .await;
    let recent = server.get_json("/v1/events/recent").await;
    let types: Vec<&str> = recent
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(&types[..2], ["node_joined", "service_applied"], "{types:?}");
    let seqs: Vec<u64> = recent
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "oldest first: {seqs:?}"
    );
    server.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_event_stream_delivers_events() {
    use futures::StreamExt;
    let server = TestServer::start().await;
    let response = server.api(Method::GET, "/v1/events").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = response.bytes_stream();
    register_agents(&server, &["n1"]).await;
    server
        .apply(
            "sessions",
            "application/toml",
            &KV_SPEC.replace("replicas = 3", "replicas = 1"),
        )
        .await;
    let mut seen = String::new();
    let found = tokio::time::timeout(WAIT_LIMIT, async {
        while let Some(chunk) = stream.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if seen.contains("event: node_joined")
                && seen.contains("event: service_applied")
                && seen.contains("event: replica_placed")
            {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "events seen: {seen}");
    assert!(seen.contains("\"type\":\"service_applied\""), "{seen}");
    drop(stream);
    server.handle.shutdown().await.unwrap();
}

/// The number of replicas `node` leads in the server's view of it.
async fn leaders_seen(server: &TestServer, node: NodeId) -> u64 {
    server.get_json(&format!("/v1/nodes/{node}")).await["leaders"]
        .as_u64()
        .unwrap()
}

/// Heartbeats with only the changes since the view the server acknowledged: the server
/// merges them into the full view it keeps, refuses a delta whose base it does not hold
/// (a stale base after a lost answer, or any base after a restart) without changing
/// anything, and takes the full view again after that.
#[tokio::test]
async fn a_delta_heartbeat_builds_on_the_acknowledged_view_or_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path()).await;
    let mut agents = register_agents(&server, &["n1"]).await;
    let (status, _) = server
        .apply(
            "sessions",
            "application/toml",
            &KV_SPEC.replace("replicas = 3", "replicas = 1"),
        )
        .await;
    assert!(status.is_success());
    let node = agents[0].id;
    rounds_until(
        &server,
        &mut agents,
        &BTreeSet::from([node]),
        "every partition placed on the node",
        |partitions| partitions.len() == 4 && partitions.iter().all(|p| designed(p).len() == 1),
    )
    .await;
    round(&server, &mut agents, &BTreeSet::from([node])).await;
    assert_eq!(agents[0].assignments.replicas.len(), 4);
    // A full view, numbered 1: the node leads its 4 partitions.
    let leaders: BTreeMap<u32, NodeId> = (0..4).map(|p| (p, node)).collect();
    let full = Heartbeat {
        replicas_view: 1,
        ..agents[0].heartbeat(&leaders)
    };
    let response = server.heartbeat(&full).await;
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Assignments = response.json().await.unwrap();
    assert_eq!(answer.replicas_view, Some(1));
    assert_eq!(leaders_seen(&server, node).await, 4);

    // View 2: partition 0 steps down, partition 1 is gone; the rest is unchanged.
    let mut stepped_down = full.replicas[0].clone();
    stepped_down.role = ReplicaRole::Follower;
    stepped_down.leader = None;
    let delta = Heartbeat {
        node_id: node,
        replicas: vec![stepped_down],
        replicas_since: Some(1),
        replicas_gone: vec![full.replicas[1].group],
        replicas_view: 2,
        ..Heartbeat::default()
    };
    let response = server.heartbeat(&delta).await;
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Assignments = response.json().await.unwrap();
    assert_eq!(answer.replicas_view, Some(2));
    assert_eq!(leaders_seen(&server, node).await, 2);

    // The agent never saw that answer and builds on view 1 again: refused, view kept.
    let stale = Heartbeat {
        replicas_view: 3,
        ..delta.clone()
    };
    let response = server.heartbeat(&stale).await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("send every replica"));
    assert_eq!(leaders_seen(&server, node).await, 2);

    // A restarted server holds no view at all: even the right base is refused, and the
    // full view that follows is taken whole.
    server.handle.shutdown().await.unwrap();
    let server = TestServer::start_in(dir.path()).await;
    let after_restart = Heartbeat {
        replicas_since: Some(2),
        replicas_view: 4,
        ..delta.clone()
    };
    let response = server.heartbeat(&after_restart).await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let response = server
        .heartbeat(&Heartbeat {
            replicas_view: 5,
            ..full.clone()
        })
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Assignments = response.json().await.unwrap();
    assert_eq!(answer.replicas_view, Some(5));
    assert_eq!(leaders_seen(&server, node).await, 4);
    server.handle.shutdown().await.unwrap();
}

/// An agent that sends back the fingerprint of the assignments it holds gets
/// "unchanged" (and nothing else to parse) while they are still the server's answer, and
/// the full assignments again as soon as they differ.
#[tokio::test]
async fn assignments_the_agent_holds_are_not_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path()).await;
    let mut agents = register_agents(&server, &["n1"]).await;
    let node = agents[0].id;
    let spec = KV_SPEC.replace("replicas = 3", "replicas = 1");
    let (status, _) = server.apply("sessions", "application/toml", &spec).await;
    assert!(status.is_success());
    rounds_until(
        &server,
        &mut agents,
        &BTreeSet::from([node]),
        "every partition placed on the node",
        |partitions| partitions.len() == 4 && partitions.iter().all(|p| designed(p).len() == 1),
    )
    .await;
    let leaders: BTreeMap<u32, NodeId> = (0..4).map(|p| (p, node)).collect();
    let beat = agents[0].heartbeat(&leaders);
    // The leaders this heartbeat reports may reach the server's map after the answer to
    // the first one was built (CI saw exactly that): beat until two answers in a row are
    // the same, so the server's answer is settled before the fingerprint is checked.
    let mut full: Assignments = server.heartbeat(&beat).await.json().await.unwrap();
    for _ in 0..50 {
        let again: Assignments = server.heartbeat(&beat).await.json().await.unwrap();
        if again.fingerprint == full.fingerprint {
            break;
        }
        full = again;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(full.replicas.len(), 4);
    assert!(!full.unchanged);
    let fingerprint = full
        .fingerprint
        .expect("the server fingerprints its answers");

    let holding = Heartbeat {
        assignments_held: Some(fingerprint),
        ..beat.clone()
    };
    let answer: Assignments = server.heartbeat(&holding).await.json().await.unwrap();
    assert!(answer.unchanged, "the same assignments: {answer:?}");
    assert!(answer.replicas.is_empty() && answer.cluster.is_empty());
    assert_eq!(answer.fingerprint, Some(fingerprint));

    // A stale fingerprint gets everything.
    let stale = Heartbeat {
        assignments_held: Some(fingerprint ^ 1),
        ..beat.clone()
    };
    let answer: Assignments = server.heartbeat(&stale).await.json().await.unwrap();
    assert!(!answer.unchanged);
    assert_eq!(answer, full);

    // The assignments change (a second service is placed on the node): the held
    // fingerprint no longer matches.
    let other = spec
        .replace("name = \"sessions\"", "name = \"other\"")
        .replace("expose = { resp = \"127.0.0.1:6380\" }\n", "");
    let (status, _) = server.apply("other", "application/toml", &other).await;
    assert!(status.is_success(), "{status}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let answer: Assignments = server.heartbeat(&holding).await.json().await.unwrap();
        if !answer.unchanged {
            assert_ne!(answer.fingerprint, Some(fingerprint));
            assert!(!answer.replicas.is_empty());
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never changed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn services_and_nodes_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path()).await;
    let token = server.handle.api_token().to_string();
    let agents = register_agents(&server, &["n1"]).await;
    server
        .apply(
            "sessions",
            "application/toml",
            &KV_SPEC.replace("replicas = 3", "replicas = 1"),
        )
        .await;
    server.handle.shutdown().await.unwrap();

    let server = TestServer::start_in(dir.path()).await;
    assert_eq!(
        server.handle.api_token(),
        token,
        "tokens are kept in the data directory"
    );
    let services = server.get_json("/v1/services").await;
    assert_eq!(services[0]["name"], "sessions");
    // The node is still known: its heartbeat is answered, with its assignment.
    let response = server
        .heartbeat(&Heartbeat {
            node_id: agents[0].id,
            ..Heartbeat::default()
        })
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    // A new registration gets a fresh id, never a reused one.
    let again = server.register("n2", "z").await;
    assert!(again.node_id > agents[0].id);
    server.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn stateless_instances_and_jobs_are_assigned_and_jobs_finish() {
    use stator_api::agent::{InstanceKind, InstanceState, InstanceStatus};
    let server = TestServer::start().await;
    let agents = register_agents(&server, &["n1", "n2"]).await;
    let web = "name = \"web\"\nkind = \"stateless\"\ninstances = 2\nport = 8080\napp = { process = { command = [\"python3\", \"-m\", \"http.server\", \"8080\"] } }\nreadiness = { tcp = {} }\nexpose = { http = \"127.0.0.1:8088\" }";
    let (status, body) = server.apply("web", "application/toml", web).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let job = "name = \"batch\"\nkind = \"job\"\nretries = 0\napp = { process = { command = [\"true\"] } }";
    let (status, body) = server.apply("batch", "application/toml", job).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
    let mut reports: BTreeMap<NodeId, Vec<InstanceStatus>> = BTreeMap::new();
    loop {
        let mut web_nodes = BTreeSet::new();
        for agent in &agents {
            let heartbeat = Heartbeat {
                node_id: agent.id,
                replicas: vec![],
                instances: reports.get(&agent.id).cloned().unwrap_or_default(),
                resp_addrs: Default::default(),
                metrics: Default::default(),
                ..Heartbeat::default()
            };
            let assignments: Assignments = server.heartbeat(&heartbeat).await.json().await.unwrap();
            // Every job attempt succeeds, every web instance is ready.
            let statuses = assignments
                .instances
                .iter()
                .map(|i| InstanceStatus {
                    id: i.id.clone(),
                    service: i.service.clone(),
                    state: match i.kind {
                        InstanceKind::Job => InstanceState::Succeeded,
                        InstanceKind::Stateless => InstanceState::Ready,
                    },
                    restarts: 0,
                    exit_code: None,
                    message: None,
                    reason: None,
                    oom_kills: 0,
                })
                .collect();
            reports.insert(agent.id, statuses);
            if assignments.instances.iter().any(|i| i.service == "web") {
                // Each instance serves on the spec's port plus its id's ordinal, so
                // instances sharing one machine never collide.
                assert!(assignments.instances.iter().all(|i| i.service != "web"
                    || i.port == stator_server::assign::instance_port(Some(8080), &i.id)));
                assert!(assignments.instances.iter().all(|i| i.port != Some(0)));
                web_nodes.insert(agent.id);
            }
        }
        let batch = server.get_json("/v1/services/batch").await;
        let web = server.get_json("/v1/services/web").await;
        if batch["status"]["job_phase"] == "succeeded"
            && web["status"]["instances_ready"] == 2
            && web_nodes.len() == 2
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "batch {batch}\nweb {web}"
        );
        tokio::time::sleep(ROUND_PAUSE).await;
    }
    server.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_restarted_agent_keeps_its_id_only_with_its_node_secret() {
    let server = TestServer::start().await;
    let first = server.register("node-a", "z1").await;
    assert!(
        !first.node_secret.is_empty(),
        "registration hands out a node secret"
    );
    let other = server.register("node-b", "z2").await;
    assert_ne!(first.node_secret, other.node_secret);

    // The same data dir: same id, same secret.
    let rejoin = stator_api::agent::Rejoin {
        node_id: first.node_id,
        node_secret: first.node_secret.clone(),
    };
    let response = server.register_as("node-a", "z1", Some(rejoin)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let again: RegisterResponse = response.json().await.unwrap();
    assert_eq!(again.node_id, first.node_id);
    assert_eq!(again.node_secret, first.node_secret);
    let nodes = server.get_json("/v1/nodes").await;
    assert_eq!(
        nodes.as_array().unwrap().len(),
        2,
        "no second record: {nodes}"
    );

    // Someone else's id: refused with what to do.
    let forged = stator_api::agent::Rejoin {
        node_id: other.node_id,
        node_secret: first.node_secret.clone(),
    };
    let response = server.register_as("node-a", "z1", Some(forged)).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("node secret does not match"), "{error}");

    // An id the server never gave: a fresh one.
    let unknown = stator_api::agent::Rejoin {
        node_id: 999,
        node_secret: "x".into(),
    };
    let response = server.register_as("node-c", "z3", Some(unknown)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let fresh: RegisterResponse = response.json().await.unwrap();
    assert!(fresh.node_id != 999 && fresh.node_id != first.node_id);
}
