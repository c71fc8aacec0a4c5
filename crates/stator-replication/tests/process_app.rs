//! The Python game room (`examples/apps/game_room.py`, a stator-sm/1 app) as a 3-replica
//! group on real hosts: SIGKILL of the app process at the leader, then at a follower;
//! each is restarted and restored from snapshot + log, and all three replicas end with
//! identical app snapshots equal to the expected room.
//!
//! Needs `python3`: without it the test prints `SKIPPED` and passes, unless
//! `STATOR_REQUIRE_ALL=1`.

use serde_json::{json, Value};
use stator_api::app::StateMachineFactory;
use stator_replication::testing::{InProcessCluster, RegisterFactory, TEST_SECRET, WAIT};
use stator_replication::{GroupId, GroupOptions, NodeId, ReplicaClient, RequestKind};
use stator_sm::host::{ProcessFactory, ProcessLimits, ProcessTemplate};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const GROUP: GroupId = GroupId(7 << 16);
/// Deadline of one call: generous, since a call may wait for an app restart.
const CALL_DEADLINE: Duration = Duration::from_secs(30);

fn python_available() -> bool {
    let ok = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("STATOR_REQUIRE_ALL").map_or(true, |v| v != "1"),
            "STATOR_REQUIRE_ALL=1 but python3 is missing"
        );
        println!("SKIPPED: python3 is not installed (the game room is a Python app)");
    }
    ok
}

fn game_room() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/apps/game_room.py")
        .canonicalize()
        .expect("examples/apps/game_room.py")
}

/// Removes the run directories even when the test panics.
struct RunRoot(PathBuf);

impl Drop for RunRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The room's rules, as the reference: name -> (x, y, moves).
#[derive(Default)]
struct Room(BTreeMap<String, (i64, i64, u64)>);

impl Room {
    fn apply(&mut self, command: &Value) {
        let player = command["player"].as_str().unwrap().to_string();
        match command["op"].as_str().unwrap() {
            "join" => {
                self.0.entry(player).or_insert((0, 0, 0));
            }
            "move" => {
                if let Some((x, y, moves)) = self.0.get_mut(&player) {
                    let step = |d: &Value| d.as_i64().unwrap().clamp(-5, 5);
                    *x = (*x + step(&command["dx"])).clamp(0, 99);
                    *y = (*y + step(&command["dy"])).clamp(0, 99);
                    *moves += 1;
                }
            }
            "leave" => {
                self.0.remove(&player);
            }
            op => panic!("no op {op}"),
        }
    }
}

fn players_of(state: &Value) -> BTreeMap<String, (i64, i64, u64)> {
    state["players"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, p)| {
            let field = |f: &str| p[f].as_i64().unwrap();
            (
                name.clone(),
                (field("x"), field("y"), field("moves") as u64),
            )
        })
        .collect()
}

fn sigkill(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -9 {pid}");
}

struct Harness {
    cluster: InProcessCluster,
    factories: BTreeMap<NodeId, Arc<ProcessFactory>>,
    client: ReplicaClient,
    leader_hint: Option<String>,
    model: Room,
}

impl Harness {
    fn members(&self) -> Vec<String> {
        self.cluster.members(&[1, 2, 3]).into_values().collect()
    }

    async fn send(&mut self, commands: &[Value]) {
        for command in commands {
            let members = self.members();
            let reply = self
                .client
                .execute(
                    GROUP,
                    &members,
                    &mut self.leader_hint,
                    RequestKind::Write,
                    command.to_string().into_bytes(),
                    CALL_DEADLINE,
                )
                .await
                .unwrap_or_else(|e| panic!("{command}: {e}"));
            let reply: Value = serde_json::from_slice(&reply).unwrap();
            assert!(reply.get("ok").is_some(), "{command} -> {reply}");
            self.model.apply(command);
        }
    }

    async fn read_room(&mut self) -> Value {
        let members = self.members();
        let reply = self
            .client
            .execute(
                GROUP,
                &members,
                &mut self.leader_hint,
                RequestKind::Read,
                br#"{"op":"room"}"#.to_vec(),
                CALL_DEADLINE,
            )
            .await
            .expect("linearizable read");
        serde_json::from_slice(&reply).unwrap()
    }

    /// Kills the app of `node` and returns its old pid.
    fn kill_app(&self, node: NodeId) -> u32 {
        let handle = self.factories[&node].handle(GROUP).expect("a machine");
        let pid = handle.pid().expect("the app runs");
        sigkill(pid);
        pid
    }

    /// Waits until `node`'s app runs again under a new pid, restarted by its machine.
    async fn wait_restarted(&self, node: NodeId, old_pid: u32) {
        let handle = self.factories[&node].handle(GROUP).expect("a machine");
        let deadline = Instant::now() + WAIT;
        while !(handle.restarts() >= 1 && handle.pid().is_some_and(|p| p != old_pid)) {
            assert!(
                !handle.is_stopped(),
                "the app of node {node} was given up on"
            );
            assert!(
                Instant::now() < deadline,
                "the app of node {node} was not restarted within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_game_room_replicas_survive_app_kills_with_identical_state() {
    if !python_available() {
        return;
    }
    let run_root = RunRoot(std::env::temp_dir().join(format!("stator-pa-{}", std::process::id())));
    // The factory passed to the cluster is never used: each host gets its own process
    // factory below, so each replica has its own run directory and handle.
    let cluster = InProcessCluster::start(3, Arc::new(RegisterFactory)).await;
    let options = GroupOptions {
        // Snapshot often, so a restarted app is restored from a snapshot plus a log tail.
        snapshot_every_entries: 4,
        ..GroupOptions::default()
    };
    let mut factories = BTreeMap::new();
    for &node in cluster.hosts.keys() {
        let template = ProcessTemplate {
            program: "python3".into(),
            args: vec![game_room().to_string_lossy().into_owned()],
            env: Vec::new(),
            working_dir: None,
            service: "rooms".into(),
            limits: ProcessLimits::default(),
        };
        let factory = Arc::new(ProcessFactory::new(
            template,
            run_root.0.join(format!("n{node}")),
            node,
        ));
        cluster.hosts[&node]
            .create_group(GROUP, options, factory.create(GROUP))
            .await
            .expect("create group");
        factories.insert(node, factory);
    }
    let members = cluster.members(&[1, 2, 3]);
    for host in cluster.hosts.values() {
        host.bootstrap(GROUP, &members).await.expect("bootstrap");
    }
    cluster.leader(GROUP).await;

    let mut h = Harness {
        cluster,
        factories,
        client: ReplicaClient::new(TEST_SECRET),
        leader_hint: None,
        model: Room::default(),
    };
    h.send(&[
        json!({"op": "join", "player": "ana"}),
        json!({"op": "join", "player": "bo"}),
        json!({"op": "move", "player": "ana", "dx": 3, "dy": 4}),
        json!({"op": "join", "player": "cy"}),
        json!({"op": "move", "player": "bo", "dx": -2, "dy": 9}),
        json!({"op": "move", "player": "cy", "dx": 40, "dy": 1}),
        json!({"op": "join", "player": "ana"}), // already in: an error reply, no change
    ])
    .await;
    // Every replica's app has applied these, so every app process runs.
    h.cluster.converged_state(GROUP).await;

    let leader = h.cluster.leader(GROUP).await;
    let old = h.kill_app(leader);
    h.send(&[
        json!({"op": "move", "player": "ana", "dx": 9, "dy": -1}),
        json!({"op": "leave", "player": "bo"}),
        json!({"op": "join", "player": "dee"}),
        json!({"op": "move", "player": "dee", "dx": 2, "dy": 2}),
    ])
    .await;
    h.wait_restarted(leader, old).await;
    assert_eq!(
        h.cluster.leader(GROUP).await,
        leader,
        "an app crash is not a replica loss: no election"
    );

    let follower = *h.cluster.hosts.keys().find(|n| **n != leader).unwrap();
    let old = h.kill_app(follower);
    h.send(&[
        json!({"op": "move", "player": "cy", "dx": -1, "dy": 0}),
        json!({"op": "join", "player": "bo"}),
        json!({"op": "move", "player": "bo", "dx": 1, "dy": 5}),
        json!({"op": "move", "player": "ghost", "dx": 1, "dy": 1}), // unknown: no change
    ])
    .await;
    h.wait_restarted(follower, old).await;
    h.send(&[json!({"op": "move", "player": "ana", "dx": -4, "dy": 3})])
        .await;

    // All three replicas converge on one snapshot (converged_state compares them), and
    // it is exactly the expected room.
    let snapshot = h.cluster.converged_state(GROUP).await;
    let state: Value = serde_json::from_slice(&snapshot).expect("the room's snapshot is JSON");
    assert_eq!(players_of(&state), h.model.0, "snapshot {state}");
    let room = h.read_room().await;
    assert_eq!(room, state, "a linearizable read sees the converged state");
    for node in h.factories.keys() {
        let replica = h.cluster.hosts[node].replica(GROUP).expect("replica");
        assert_eq!(
            replica.sm.app_snapshot().await.expect("snapshot"),
            snapshot,
            "node {node}"
        );
    }
    for host in h.cluster.hosts.values() {
        host.shutdown().await;
    }
}
