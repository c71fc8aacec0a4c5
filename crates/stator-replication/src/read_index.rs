//! Linearizable reads, batched: one leadership confirmation serves every read that
//! arrived before it started.
//!
//! A read must see every write acknowledged before it arrived, so it needs a read-index
//! round (the leader confirms with a quorum that it still leads, then waits until it has
//! applied up to its commit index) that *started after* the read arrived. Reads arriving
//! while a round is running wait for the next one, which starts as soon as the running
//! one ends: under load each round serves a whole batch instead of one read each.

use crate::types::{NodeId, Raft};
use openraft::error::{CheckIsLeaderError, RaftError};
use std::sync::Mutex;
use tokio::sync::watch;

/// Outcome of one round, shared by its waiters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoundResult {
    /// Confirmed: the state machine has applied everything committed before the round.
    Confirmed,
    /// This replica does not lead; the hint says who may.
    NotLeader {
        /// Known leader.
        leader_id: Option<NodeId>,
        /// Its address.
        leader_addr: Option<String>,
    },
    /// No quorum answered, or the replica is stopping.
    Failed(String),
}

#[derive(Default)]
struct State {
    /// Rounds started so far; the running one, if any, is number `started`.
    started: u64,
    running: bool,
    /// Whether someone waits for a round after the running one.
    wanted_next: bool,
}

/// Batches read-index rounds of one replica.
pub struct ReadIndex {
    // A std mutex: a few integer updates, never held across an await.
    state: Mutex<State>,
    done: watch::Sender<(u64, RoundResult)>,
}

impl Default for ReadIndex {
    fn default() -> Self {
        Self {
            state: Mutex::new(State::default()),
            done: watch::channel((0, RoundResult::Confirmed)).0,
        }
    }
}

async fn round(raft: &Raft) -> RoundResult {
    match raft.ensure_linearizable().await {
        Ok(_) => RoundResult::Confirmed,
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
            RoundResult::NotLeader {
                leader_id: f.leader_id,
                leader_addr: f.leader_node.map(|n| n.addr),
            }
        }
        Err(e) => RoundResult::Failed(e.to_string()),
    }
}

impl ReadIndex {
    /// Waits for a round that started after this call; its result.
    pub async fn confirm(self: &std::sync::Arc<Self>, raft: &Raft) -> RoundResult {
        let mut done = self.done.subscribe();
        let target = {
            let mut s = self.state.lock().expect("read-index mutex poisoned");
            if s.running {
                s.wanted_next = true;
                s.started + 1
            } else {
                s.started += 1;
                s.running = true;
                self.spawn_round(raft.clone(), s.started);
                s.started
            }
        };
        loop {
            {
                let (finished, result) = &*done.borrow_and_update();
                if *finished >= target {
                    return result.clone();
                }
            }
            if done.changed().await.is_err() {
                return RoundResult::Failed("replica stopped".into());
            }
        }
    }

    fn spawn_round(self: &std::sync::Arc<Self>, raft: Raft, number: u64) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut number = number;
            loop {
                let result = round(&raft).await;
                let next = {
                    let mut s = this.state.lock().expect("read-index mutex poisoned");
                    if s.wanted_next {
                        s.wanted_next = false;
                        s.started += 1;
                        Some(s.started)
                    } else {
                        s.running = false;
                        None
                    }
                };
                this.done.send_replace((number, result));
                match next {
                    Some(n) => number = n,
                    None => return,
                }
            }
        });
    }
}
