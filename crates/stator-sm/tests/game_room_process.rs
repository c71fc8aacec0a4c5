//! The Python game room through [`ProcessMachine`], with a real `kill -9` in the middle:
//! the state after recovery must equal an uninterrupted in-process model's.

mod common;

use serde_json::{json, Value};
use stator_api::app::StateMachine;
use stator_sm::host::ProcessMachine;
use std::collections::BTreeMap;

/// The game room's rules again, in Rust, as the reference the app must match.
#[derive(Default)]
struct RoomModel {
    players: BTreeMap<String, (i64, i64, u64, u64)>, // x, y, moves, joined_ms
    last_index: u64,
    last_time_ms: u64,
}

const GRID_SIZE: i64 = 100;
const MAX_STEP: i64 = 5;

impl RoomModel {
    fn apply(&mut self, index: u64, time_ms: u64, command: &Value) {
        self.last_index = index;
        self.last_time_ms = time_ms;
        let player = command["player"].as_str().unwrap().to_string();
        match command["op"].as_str().unwrap() {
            "join" => {
                self.players.entry(player).or_insert((0, 0, 0, time_ms));
            }
            "move" => {
                if let Some((x, y, moves, _)) = self.players.get_mut(&player) {
                    let step = |d: &Value| d.as_i64().unwrap().clamp(-MAX_STEP, MAX_STEP);
                    *x = (*x + step(&command["dx"])).clamp(0, GRID_SIZE - 1);
                    *y = (*y + step(&command["dy"])).clamp(0, GRID_SIZE - 1);
                    *moves += 1;
                }
            }
            "leave" => {
                self.players.remove(&player);
            }
            op => panic!("model has no op {op}"),
        }
    }

    fn state(&self) -> Value {
        let players: serde_json::Map<String, Value> = self
            .players
            .iter()
            .map(|(name, (x, y, moves, joined_ms))| {
                let player = json!({"x": x, "y": y, "moves": moves, "joined_ms": joined_ms});
                (name.clone(), player)
            })
            .collect();
        json!({"players": players, "last_index": self.last_index, "last_time_ms": self.last_time_ms})
    }
}

fn commands_before_kill() -> Vec<Value> {
    vec![
        json!({"op": "join", "player": "ana"}),
        json!({"op": "join", "player": "bo"}),
        json!({"op": "move", "player": "ana", "dx": 3, "dy": 4}),
        json!({"op": "move", "player": "bo", "dx": -1, "dy": 9}),
        json!({"op": "join", "player": "cy"}),
        json!({"op": "move", "player": "ana", "dx": 2, "dy": 2}),
        json!({"op": "join", "player": "ana"}), // already there: error reply, no change
        json!({"op": "move", "player": "cy", "dx": 40, "dy": 1}),
        json!({"op": "leave", "player": "bo"}),
        json!({"op": "move", "player": "zed", "dx": 1, "dy": 1}), // unknown: error reply
    ]
}

fn commands_after_kill() -> Vec<Value> {
    vec![
        json!({"op": "move", "player": "ana", "dx": 1, "dy": -1}),
        json!({"op": "join", "player": "bo"}),
        json!({"op": "move", "player": "bo", "dx": 5, "dy": 5}),
        json!({"op": "move", "player": "cy", "dx": -5, "dy": 0}),
    ]
}

#[tokio::test]
async fn sigkilled_app_is_restored_to_the_exact_state() {
    let Some(python) = common::python() else {
        eprintln!("skipping: no python3 >= 3.9 on PATH");
        return;
    };
    tokio::time::timeout(common::TEST_TIMEOUT, async {
        let mut config = common::config("room", python, &["examples/apps/game_room.py"]);
        // Snapshot every 4 applies so recovery needs both a RESTORE and a replay.
        config.limits.snapshot_every_applies = 4;
        let mut machine = ProcessMachine::new(config);
        let mut model = RoomModel::default();
        let mut index = 0;
        let mut time_ms = 1_000;

        for command in commands_before_kill() {
            index += 1;
            time_ms += 7;
            let bytes = serde_json::to_vec(&command).unwrap();
            machine.apply(index, time_ms, &bytes).await.unwrap();
            model.apply(index, time_ms, &command);
        }
        let before: Value =
            serde_json::from_slice(&machine.query(time_ms, b"").await.unwrap()).unwrap();
        assert_eq!(before, model.state());

        let pid = machine.pid().expect("app is running");
        common::kill_9(pid);

        for command in commands_after_kill() {
            index += 1;
            time_ms += 7;
            let bytes = serde_json::to_vec(&command).unwrap();
            let reply: Value =
                serde_json::from_slice(&machine.apply(index, time_ms, &bytes).await.unwrap())
                    .unwrap();
            assert_eq!(reply["ok"], json!(true), "{command} -> {reply}");
            model.apply(index, time_ms, &command);
        }
        let after: Value =
            serde_json::from_slice(&machine.query(time_ms, b"").await.unwrap()).unwrap();
        assert_eq!(after, model.state());
        assert_eq!(machine.restarts(), 1);
        assert_ne!(machine.pid(), Some(pid), "a new process serves the replica");

        let ana: Value = serde_json::from_slice(
            &machine
                .query(time_ms, br#"{"op":"player","player":"ana"}"#)
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(ana, model.state()["players"]["ana"]);

        // The app's own snapshot restores into a fresh process with the same state.
        let snapshot = machine.snapshot().await.unwrap();
        let mut fresh = ProcessMachine::new(common::config(
            "room2",
            common::python().unwrap(),
            &["examples/apps/game_room.py"],
        ));
        fresh.restore(&snapshot).await.unwrap();
        let restored: Value =
            serde_json::from_slice(&fresh.query(time_ms, b"").await.unwrap()).unwrap();
        assert_eq!(restored, model.state());
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn bad_client_commands_get_error_replies_not_a_stopped_replica() {
    let Some(python) = common::python() else {
        eprintln!("skipping: no python3 >= 3.9 on PATH");
        return;
    };
    tokio::time::timeout(common::TEST_TIMEOUT, async {
        let mut machine = ProcessMachine::new(common::config(
            "roombad",
            python,
            &["examples/apps/game_room.py"],
        ));
        for (index, command) in [&b"not json"[..], br#"{"op":"fly","player":"ana"}"#, b"[1]"]
            .into_iter()
            .enumerate()
        {
            let reply: Value =
                serde_json::from_slice(&machine.apply(index as u64 + 1, 5, command).await.unwrap())
                    .unwrap();
            assert_eq!(reply["ok"], json!(false), "{reply}");
        }
        let state: Value = serde_json::from_slice(&machine.query(5, b"").await.unwrap()).unwrap();
        assert_eq!(state["players"], json!({}));
        assert_eq!(state["last_index"], json!(3));
    })
    .await
    .expect("test finished in time");
}
