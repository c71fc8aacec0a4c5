//! Linearizable reads: served under a leader lease when one is held, otherwise batched
//! behind one leadership confirmation (read index) that serves every read that arrived
//! before it started.
//!
//! # Read index
//! A read must see every write acknowledged before it arrived, so without a lease it needs
//! a read-index round (the leader confirms with a quorum that it still leads, then waits
//! until it has applied up to its commit index) that *started after* the read arrived.
//! Reads arriving while a round is running wait for the next one, which starts as soon as
//! the running one ends: under load each round serves a whole batch instead of one read
//! each.
//!
//! # Leader lease
//! openraft 0.9 followers refuse to vote for anyone for `election_timeout_max` (its
//! "leader lease") after they last accepted a message from their leader. So when a quorum
//! has accepted messages the leader sent at or after instant `t` (a confirmed read-index
//! round that started at `t`, or a write proposed at `t` that committed), no other leader
//! can be elected before `t + election_timeout_max` as measured by those followers'
//! clocks. The leader serves reads from its applied state until
//! `t + election_timeout_max * (100 - LEASE_CLOCK_DRIFT_PERCENT) / 100` on its own
//! monotonic clock: clocks may run up to [`LEASE_CLOCK_DRIFT_PERCENT`] apart in rate
//! (NTP keeps real ones within 0.05 %). A lease read also needs the entry the leader
//! committed at the start of its term to be applied (so every write acknowledged by an
//! earlier leader is visible; writes this leader acknowledged were applied before their
//! reply), and is checked again *after* the state was read: a leader paused mid-read
//! (SIGSTOP, a long GC-like stall) finds its lease expired when it resumes and falls
//! back to a read-index round, which a deposed leader cannot pass. A replica that has
//! just started refuses to vote for one lease ([`crate::host`]), since a restarted
//! follower no longer remembers whom it heard from.
//!
//! A lease that is more than half used is renewed by a background round, so steady read
//! traffic never waits for a quorum; an idle group sends nothing.

use crate::types::{NodeId, Raft};
use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::ServerState;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Largest relative difference in clock rate between two replicas the lease tolerates,
/// in percent of the lease. Generous on purpose: real clocks disagree by far less, and
/// the cost is only that a lease is renewed a little earlier.
pub const LEASE_CLOCK_DRIFT_PERCENT: u32 = 10;

/// How long a lease anchored at one instant lasts on the leader's clock, given openraft's
/// leader lease (the election timeout's upper bound).
pub fn lease_duration(raft_leader_lease: Duration) -> Duration {
    raft_leader_lease * (100 - LEASE_CLOCK_DRIFT_PERCENT) / 100
}

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
    /// The lease held, if any, and until when it is valid.
    lease: Option<(Leadership, Instant)>,
    /// Leadership is being handed over: no lease is held or granted meanwhile.
    suspended: bool,
}

/// Lease reads and batched read-index rounds of one replica.
pub struct ReadIndex {
    // A std mutex: a few integer updates, never held across an await.
    state: Mutex<State>,
    done: watch::Sender<(u64, RoundResult)>,
    /// Lease length on this replica's clock; zero turns lease reads off.
    lease: Duration,
}

impl Default for ReadIndex {
    /// Read-index rounds only, no lease.
    fn default() -> Self {
        Self::new(Duration::ZERO)
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

/// What a lease is bound to: one term of this replica's leadership under one membership.
/// A membership change ends the lease (the quorum that granted it may no longer be one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leadership {
    /// The term led.
    pub term: u64,
    /// Log index of the effective membership.
    pub membership_index: u64,
}

/// Whom this replica leads as, and whether it has applied an entry of that term (its
/// first entry as leader, so everything committed before it), per its metrics.
pub fn leadership(raft: &Raft) -> Option<(Leadership, bool)> {
    let m = raft.metrics();
    let m = m.borrow();
    if m.state != ServerState::Leader || m.current_leader != Some(m.id) {
        return None;
    }
    let applied_own = m
        .last_applied
        .is_some_and(|l| l.leader_id.term == m.current_term);
    let membership_index = m.membership_config.log_id().map_or(0, |l| l.index);
    Some((
        Leadership {
            term: m.current_term,
            membership_index,
        },
        applied_own,
    ))
}

/// Whether a lease read may be served now, and whether the lease wants renewing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseCheck {
    /// Serve from the applied state; `renew` when more than half the lease is used.
    Valid {
        /// Start a background round to extend the lease.
        renew: bool,
    },
    /// No usable lease: take a read-index round.
    Unsure,
}

impl ReadIndex {
    /// Lease reads lasting `lease` after each quorum acknowledgement (see
    /// [`lease_duration`]); `Duration::ZERO` serves every read with a read-index round.
    pub fn new(lease: Duration) -> Self {
        Self {
            state: Mutex::new(State::default()),
            done: watch::channel((0, RoundResult::Confirmed)).0,
            lease,
        }
    }

    /// Records that a quorum accepted messages this leader sent at or after `sent` as
    /// `leader` (a confirmed round, a committed write): the lease runs from `sent`.
    pub fn renew(&self, leader: Leadership, sent: Instant) {
        if self.lease.is_zero() {
            return;
        }
        let until = sent + self.lease;
        let mut s = self.state.lock().expect("read-index mutex poisoned");
        if s.suspended {
            return;
        }
        match s.lease {
            Some((held, old)) if held == leader && old >= until => {}
            Some((held, _)) if held.term > leader.term => {}
            _ => s.lease = Some((leader, until)),
        }
    }

    /// Drops the lease and refuses new ones (`true`), as a leader handing its leadership
    /// over must: the successor may be elected with this replica's own vote before the
    /// lease would have run out. `false` allows leases again.
    pub fn suspend(&self, suspended: bool) {
        let mut s = self.state.lock().expect("read-index mutex poisoned");
        s.suspended = suspended;
        s.lease = None;
    }

    /// Whether `raft` may serve a read from its applied state right now. Call it before
    /// reading the state and again after: only a read both checks pass is linearizable.
    pub fn check_lease(&self, raft: &Raft) -> LeaseCheck {
        if self.lease.is_zero() {
            return LeaseCheck::Unsure;
        }
        let Some((leader, applied_own)) = leadership(raft) else {
            return LeaseCheck::Unsure;
        };
        let now = Instant::now();
        let s = self.state.lock().expect("read-index mutex poisoned");
        match s.lease {
            Some((held, until)) if held == leader && applied_own && now < until => {
                LeaseCheck::Valid {
                    renew: !s.running && until.saturating_duration_since(now) < self.lease / 2,
                }
            }
            _ => LeaseCheck::Unsure,
        }
    }

    /// Starts a round unless one runs, without waiting for it (it renews the lease).
    pub fn renew_in_background(self: &std::sync::Arc<Self>, raft: &Raft) {
        let mut s = self.state.lock().expect("read-index mutex poisoned");
        if !s.running {
            s.started += 1;
            s.running = true;
            self.spawn_round(raft.clone(), s.started);
        }
    }

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
                // The lease may only run from an instant before any message of the round
                // was sent, and only for the term the round confirmed.
                let sent = Instant::now();
                let before = leadership(&raft).map(|(l, _)| l);
                let result = round(&raft).await;
                if let (RoundResult::Confirmed, Some(leader)) = (&result, before) {
                    if leadership(&raft).map(|(l, _)| l) == Some(leader) {
                        this.renew(leader, sent);
                    }
                }
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
