//! Quiet idle groups: a group that saw no client request for [`QUIET_AFTER`] stops its
//! Raft timers (no heartbeats, no election timeouts), and the host's one liveness ping
//! per peer node stands in for the heartbeats of all its quiet groups.
//!
//! # How a group goes quiet
//! The host sweeps its replicas every [`SWEEP_INTERVAL`]. A leader that has been idle
//! for [`QUIET_AFTER`], whose every member holds its whole log, whose membership is not
//! changing and that is not handing leadership over ([`may_quiesce`]) asks each member to
//! go quiet (`Quiesce(group, term)`). A follower agrees while it follows that leader in
//! that term, and stops its timers. Once every member agreed, the leader stops its own,
//! unless a request woke it meanwhile ([`Quiescence`] tracks that under one lock).
//!
//! # How it wakes
//! - A leader wakes on the first client request (read or write): its timers run again
//!   and the request is served as usual. A follower never wakes on a client request (it
//!   answers with the leader's address), since a follower whose timers restart after a
//!   long silence would run for election at once.
//! - A follower wakes on an AppendEntries that carries entries, on a snapshot, on a vote
//!   request and on an `Elect` request: the group is busy again. An empty AppendEntries
//!   (a heartbeat) does not wake it: a quiet follower under an awake leader is harmless,
//!   and a heartbeat sent just before the leader went quiet must not restart a
//!   follower's election timer that no heartbeat will then feed.
//! - When a peer node is lost (its connection closes and a probe finds nobody listening,
//!   or no liveness ping arrived from it for [`NODE_SILENT_AFTER`]), every quiet follower
//!   of a leader on that node wakes: the successor (the lowest other voter, one candidate
//!   so no split vote) runs for election as soon as openraft's leader lease allows, which
//!   for a group quiet that long is at once; the other followers wake one lease later
//!   unless the successor's vote request woke them first.
//!
//! # Elections on a liveness signal
//! An election started because a leader's node looks lost (its connection closed, or it
//! went silent) is preceded by a pre-vote (`Request::LeaderLost`, see
//! `crate::host`): the candidate runs only if, with itself, a majority of the voters no
//! longer hears a leader. A follower whose own view is stale (its process starved, its
//! pings' answers late) must not run while the others still follow a live leader:
//! openraft 0.9 has no pre-vote, a leader grants a vote whose log is as long as its own
//! (always so under reads only), and even a losing candidate deposes the leader. Any
//! message from a peer, not only a ping's answer, counts as hearing from it.
//!
//! # Forming groups
//! A replica created to form a new group (`GroupOptions::forming`: the group never had
//! a leader) starts quiet, its timers off, and AppendEntries and vote requests leave it
//! so. The member that bootstraps the group (or is asked to `Elect`, or succeeds a lost
//! leader's node) wakes and runs for election: each new group has one candidate, so
//! ~1,000 groups formed at once on a starved machine start no election storm (openraft
//! 0.9 has no pre-vote; without this, every late heartbeat made a follower a candidate).
//! A forming follower becomes an ordinary quiet follower when its first leader quiets
//! the group, and wakes anyway after [`FORMING_TIMERS_OFF_MAX`]. Its first leader's
//! loss is noticed by the liveness pings as for any quiet group.
//!
//! # What it promises
//! Quiescence only stops timers; it never changes what Raft decides, so it cannot lose or
//! reorder an acknowledged write. Lease reads stay safe: a lease only ever comes from a
//! quorum acknowledging messages sent at a known instant (see [`crate::read_index`]),
//! never from quiet time, so a quiet leader's lease simply runs out and its first read
//! after waking takes a read-index round. Followers keep refusing votes for openraft's
//! leader lease after each message from their leader whether their timers run or not,
//! so an election that a liveness signal starts early still cannot cut a lease short.
//! The cost is liveness only: a leader replica that stops while its host stays up (its
//! app or its disk failed) leaves its quiet followers waiting until the host hands the
//! group to a successor ([`crate::host`] does that on its next sweep).

use crate::types::NodeId;
use openraft::{RaftMetrics, ServerState};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::types::Raft;

/// A group with no client request for this long goes quiet. Long enough that a group in
/// use never pays the wake-up, short enough that idle ones stop costing soon.
pub const QUIET_AFTER: Duration = Duration::from_secs(1);
/// How often a host looks for groups to quiet (and for peers to ping).
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(250);
/// How often a host pings each peer node it shares a group with: one small frame per
/// peer per interval replaces every quiet group's heartbeats.
pub const LIVENESS_INTERVAL: Duration = Duration::from_millis(50);
/// A peer node silent this long counts as lost for the quiet groups it leads: five
/// missed pings, about what an awake follower waits today (openraft's leader lease plus
/// an election timeout at the default 100 ms).
pub const NODE_SILENT_AFTER: Duration = Duration::from_millis(250);
/// How long a probe of a peer whose connection closed may take before the peer counts as
/// lost. A killed process's port refuses at once; a live one answers within a round trip.
pub const LIVENESS_PROBE_TIMEOUT: Duration = Duration::from_millis(200);

/// The longest a forming replica (`GroupOptions::forming`) keeps its timers off without
/// having gone quiet under its first leader: then they run, as any awake replica's. Long
/// enough for 1,000 groups to form in paced waves on a loaded machine.
pub const FORMING_TIMERS_OFF_MAX: Duration = Duration::from_secs(20);

/// How long a leader waits for a member to agree to go quiet (it stays awake if one
/// does not).
pub const QUIESCE_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// Where a replica stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Timers run.
    Awake,
    /// A leader asking its members to go quiet; a wake-up cancels it.
    Quiescing,
    /// Timers stopped.
    Quiet,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    /// The last client request or busy Raft message (leaders count idleness from it).
    last_active: Instant,
    /// Timers off since creation to form a new group, until woken or quiet under its
    /// first leader (then `None`): appends and vote requests do not wake it.
    forming_since: Option<Instant>,
}

/// One replica's quiescence state. The lock makes "wake" and "go quiet" exclusive, so a
/// request that arrives while the leader asks its members to go quiet always wins.
#[derive(Debug)]
pub struct Quiescence {
    // A std mutex: a flag flip and three atomic stores, never held across an await.
    state: Mutex<State>,
    /// Quiescence is off for this group (the benchmark's baseline).
    disabled: bool,
}

impl Quiescence {
    /// An awake replica; `enabled: false` never goes quiet.
    pub fn new(enabled: bool) -> Self {
        Self {
            state: Mutex::new(State {
                phase: Phase::Awake,
                last_active: Instant::now(),
                forming_since: None,
            }),
            disabled: !enabled,
        }
    }

    /// A replica created to form a new group (see `GroupOptions::forming`): quiet from
    /// the start, with `raft`'s timers off.
    pub fn new_forming(raft: &Raft) -> Self {
        set_timers(raft, false);
        let now = Instant::now();
        Self {
            state: Mutex::new(State {
                phase: Phase::Quiet,
                last_active: now,
                forming_since: Some(now),
            }),
            disabled: false,
        }
    }

    /// Whether the replica still forms with its timers off.
    pub fn forming(&self) -> bool {
        self.state
            .lock()
            .expect("quiescence mutex poisoned")
            .forming_since
            .is_some()
    }

    /// A Raft message that wakes a quiet replica (entries, a vote request) leaves a
    /// forming one quiet: its group's one candidate is the member that bootstrapped it,
    /// and a follower whose timers ran on a starved machine would run too.
    pub fn wake_unless_forming(&self, raft: &Raft) {
        if self.forming() {
            self.state
                .lock()
                .expect("quiescence mutex poisoned")
                .last_active = Instant::now();
        } else {
            self.wake(raft);
        }
    }

    /// Whether a forming replica has kept its timers off for longer than
    /// [`FORMING_TIMERS_OFF_MAX`] at `now` (the caller then wakes it).
    pub fn forming_overdue(&self, now: Instant) -> bool {
        self.state
            .lock()
            .expect("quiescence mutex poisoned")
            .forming_since
            .is_some_and(|since| now.saturating_duration_since(since) >= FORMING_TIMERS_OFF_MAX)
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.state.lock().expect("quiescence mutex poisoned").phase
    }

    /// Records activity and restarts the timers of a quiet replica.
    pub fn wake(&self, raft: &Raft) {
        let mut s = self.state.lock().expect("quiescence mutex poisoned");
        s.last_active = Instant::now();
        s.forming_since = None;
        if s.phase == Phase::Quiet {
            set_timers(raft, true);
        }
        s.phase = Phase::Awake;
    }

    /// A client request arrived: it keeps the replica awake, and wakes a quiet leader. A
    /// quiet follower stays quiet: it only answers with its leader's address, and its
    /// election timer, restarted after a long silence, would start an election at once.
    pub fn on_request(&self, raft: &Raft) {
        let mut s = self.state.lock().expect("quiescence mutex poisoned");
        s.last_active = Instant::now();
        match s.phase {
            Phase::Awake => {}
            Phase::Quiescing => s.phase = Phase::Awake,
            Phase::Quiet => {
                if raft.metrics().borrow().state == ServerState::Leader {
                    set_timers(raft, true);
                    s.phase = Phase::Awake;
                    s.forming_since = None;
                }
            }
        }
    }

    /// Whether an awake replica idle since `now - QUIET_AFTER` may start quiescing; if so
    /// it is now [`Phase::Quiescing`].
    pub fn begin_quiescing(&self, now: Instant) -> bool {
        let mut s = self.state.lock().expect("quiescence mutex poisoned");
        if self.disabled
            || s.phase != Phase::Awake
            || now.saturating_duration_since(s.last_active) < QUIET_AFTER
        {
            return false;
        }
        s.phase = Phase::Quiescing;
        true
    }

    /// Ends a leader's quiescing: quiet when every member agreed and nothing woke it
    /// meanwhile; `false` leaves it awake (and idle from now, so it retries later).
    pub fn finish_quiescing(&self, raft: &Raft, all_agreed: bool) -> bool {
        let mut s = self.state.lock().expect("quiescence mutex poisoned");
        if s.phase != Phase::Quiescing {
            return false;
        }
        if all_agreed {
            set_timers(raft, false);
            s.phase = Phase::Quiet;
            true
        } else {
            s.phase = Phase::Awake;
            s.last_active = Instant::now();
            false
        }
    }

    /// A follower told by its leader to go quiet.
    pub fn quiet_follower(&self, raft: &Raft) -> bool {
        let mut s = self.state.lock().expect("quiescence mutex poisoned");
        if self.disabled {
            return false;
        }
        if s.phase != Phase::Quiet {
            set_timers(raft, false);
            s.phase = Phase::Quiet;
        }
        // Formed: from now on a quiet follower like any other.
        s.forming_since = None;
        true
    }
}

/// Ticks, heartbeats and elections on (`true`) or off.
fn set_timers(raft: &Raft, on: bool) {
    let config = raft.runtime_config();
    config.heartbeat(on);
    config.elect(on);
    config.tick(on);
}

/// Whether a leader may ask its group to go quiet, per its metrics: it leads in a settled
/// membership it is a voter of, and every member holds every entry of its log.
pub fn may_quiesce(m: &RaftMetrics<NodeId, openraft::BasicNode>) -> bool {
    if m.state != ServerState::Leader || m.current_leader != Some(m.id) {
        return false;
    }
    let membership = m.membership_config.membership();
    if membership.get_joint_config().len() > 1 || !membership.voter_ids().any(|id| id == m.id) {
        return false;
    }
    let Some(last) = m.last_log_index else {
        return false;
    };
    if m.last_applied.map(|l| l.index) != Some(last) {
        return false;
    }
    let Some(replication) = &m.replication else {
        return false;
    };
    membership.nodes().all(|(id, _)| {
        *id == m.id
            || replication
                .get(id)
                .copied()
                .flatten()
                .is_some_and(|l| l.index == last)
    })
}

/// What a host knows of its peer nodes' liveness.
#[derive(Debug, Default)]
pub struct NodeLiveness {
    peers: HashMap<NodeId, PeerLiveness>,
}

#[derive(Debug)]
struct PeerLiveness {
    addr: String,
    last_heard: Instant,
    /// Declared lost and not heard from since (acted on once).
    lost: bool,
}

impl NodeLiveness {
    /// Replaces the set of peers to ping; a newly known peer counts as just heard.
    pub fn set_peers(&mut self, peers: HashMap<NodeId, String>, now: Instant) {
        self.peers.retain(|id, _| peers.contains_key(id));
        for (id, addr) in peers {
            self.peers
                .entry(id)
                .and_modify(|p| p.addr.clone_from(&addr))
                .or_insert(PeerLiveness {
                    addr,
                    last_heard: now,
                    lost: false,
                });
        }
    }

    /// The peers to ping: (node id, address).
    pub fn targets(&self) -> Vec<(NodeId, String)> {
        self.peers
            .iter()
            .map(|(id, p)| (*id, p.addr.clone()))
            .collect()
    }

    /// A message came from `node`: a ping, its answer, or any request (a busy peer's
    /// heartbeats and appends prove it alive as well as a ping does, and under load a
    /// ping's round trip is the first thing to run late).
    pub fn heard(&mut self, node: NodeId, now: Instant) {
        if let Some(p) = self.peers.get_mut(&node) {
            p.last_heard = now;
            p.lost = false;
        }
    }

    /// Whether `node` was heard from within [`NODE_SILENT_AFTER`] of `now` and is not
    /// declared lost.
    pub fn alive(&self, node: NodeId, now: Instant) -> bool {
        self.peers.get(&node).is_some_and(|p| {
            !p.lost && now.saturating_duration_since(p.last_heard) <= NODE_SILENT_AFTER
        })
    }

    /// Whether `node` is declared lost (and not heard from since).
    pub fn is_lost(&self, node: NodeId) -> bool {
        self.peers.get(&node).is_some_and(|p| p.lost)
    }

    /// Marks `node` lost; `true` the first time (since it was last heard).
    pub fn mark_lost(&mut self, node: NodeId) -> bool {
        match self.peers.get_mut(&node) {
            Some(p) if !p.lost => {
                p.lost = true;
                true
            }
            _ => false,
        }
    }

    /// Peers silent for longer than [`NODE_SILENT_AFTER`] at `now` and not yet declared
    /// lost: they are now.
    pub fn newly_silent(&mut self, now: Instant) -> Vec<NodeId> {
        self.peers
            .iter_mut()
            .filter(|(_, p)| {
                !p.lost && now.saturating_duration_since(p.last_heard) > NODE_SILENT_AFTER
            })
            .map(|(id, p)| {
                p.lost = true;
                *id
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_peer_is_declared_lost_once_until_heard_again() {
        let mut live = NodeLiveness::default();
        let t0 = Instant::now();
        live.set_peers(HashMap::from([(2, "b".into()), (3, "c".into())]), t0);
        assert!(live.newly_silent(t0 + NODE_SILENT_AFTER / 2).is_empty());
        live.heard(3, t0 + NODE_SILENT_AFTER);
        let later = t0 + NODE_SILENT_AFTER + Duration::from_millis(1);
        assert_eq!(live.newly_silent(later), vec![2]);
        assert!(live.newly_silent(later).is_empty(), "declared once");
        live.heard(2, later);
        assert!(live.newly_silent(later).is_empty());
        assert!(live.mark_lost(3), "3 was heard recently: not yet lost");
        assert!(!live.mark_lost(3), "declared once");
        assert_eq!(
            live.newly_silent(later + NODE_SILENT_AFTER * 2),
            vec![2],
            "2 is lost again after being heard; 3 was already declared"
        );
    }

    #[test]
    fn a_peer_is_alive_until_silent_or_declared_lost() {
        let mut live = NodeLiveness::default();
        let t0 = Instant::now();
        live.set_peers(HashMap::from([(2, "b".into())]), t0);
        assert!(live.alive(2, t0), "a newly known peer counts as just heard");
        assert!(!live.alive(9, t0), "an unknown node is not");
        assert!(
            !live.alive(2, t0 + NODE_SILENT_AFTER * 2),
            "silent too long"
        );
        assert!(live.mark_lost(2));
        assert!(live.is_lost(2) && !live.alive(2, t0));
        live.heard(2, t0 + NODE_SILENT_AFTER);
        assert!(!live.is_lost(2), "any message clears it");
        assert!(live.alive(2, t0 + NODE_SILENT_AFTER));
    }

    #[test]
    fn quiescing_is_cancelled_by_a_wake_up() {
        let q = Quiescence::new(true);
        let now = Instant::now();
        assert!(!q.begin_quiescing(now), "not idle long enough");
        assert!(q.begin_quiescing(now + QUIET_AFTER));
        assert_eq!(q.phase(), Phase::Quiescing);
        assert!(!q.begin_quiescing(now + QUIET_AFTER), "one at a time");
        assert!(!Quiescence::new(false).begin_quiescing(now + QUIET_AFTER));
    }
}
