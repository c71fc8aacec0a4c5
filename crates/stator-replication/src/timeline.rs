//! One write's path through the hosts, timestamped stage by stage: where a replicated
//! write's latency goes (`stator bench replication --timeline`).
//!
//! Off unless [`enable`]d: then each [`mark`] is one relaxed atomic load, nothing else.
//! When on, the process keeps one timestamp per [`Stage`], the first mark since the
//! last [`begin`]. That is exact only while one write is in flight in the whole process
//! (one client, hosts in one process sharing the clock, as the benchmark runs them); with
//! two followers, a follower stage is the first of the two (the one that makes the
//! quorum). A stage counts only once the stage before it is marked, so the slower
//! follower's answer to the previous write is not taken for this one's; [`medians`]
//! still discards the writes whose stages are not all there, in order.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// A point on a write's path, in the order a write passes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Stage {
    /// The client hands the write to its `ReplicaClient`.
    ClientSend,
    /// The leader's connection reader decoded the client's frame.
    LeaderRead,
    /// The leader's request task starts serving it.
    LeaderHandle,
    /// The leader proposes the write's entry to openraft (`client_write`).
    Propose,
    /// openraft's replication task hands the entry's AppendEntries to the transport.
    AppendSend,
    /// A follower's connection reader decoded that AppendEntries.
    FollowerRead,
    /// The follower's request task starts serving it.
    FollowerHandle,
    /// The follower's openraft answered it (the entry is in its log).
    FollowerAppended,
    /// The follower's answer is handed to its socket.
    FollowerReplied,
    /// The leader's replication task has the follower's answer.
    AppendAcked,
    /// The leader's state machine applies the entry (marked by the app, see
    /// [`mark`]; the benchmark wraps its kv machine on the leader).
    Applied,
    /// `client_write` returned to the leader's proposer: committed and applied.
    Committed,
    /// The leader's answer is handed to its socket.
    ReplySent,
    /// The client's connection reader decoded the answer.
    ClientReplyRead,
    /// The client has the answer.
    ClientRecv,
}

/// Number of [`Stage`]s.
pub const STAGES: usize = Stage::ClientRecv as usize + 1;

/// Every stage, in path order.
pub const ALL: [Stage; STAGES] = [
    Stage::ClientSend,
    Stage::LeaderRead,
    Stage::LeaderHandle,
    Stage::Propose,
    Stage::AppendSend,
    Stage::FollowerRead,
    Stage::FollowerHandle,
    Stage::FollowerAppended,
    Stage::FollowerReplied,
    Stage::AppendAcked,
    Stage::Applied,
    Stage::Committed,
    Stage::ReplySent,
    Stage::ClientReplyRead,
    Stage::ClientRecv,
];

impl Stage {
    /// A short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Stage::ClientSend => "client send",
            Stage::LeaderRead => "leader: frame read",
            Stage::LeaderHandle => "leader: request task runs",
            Stage::Propose => "leader: propose (client_write)",
            Stage::AppendSend => "leader: AppendEntries to transport",
            Stage::FollowerRead => "follower: frame read",
            Stage::FollowerHandle => "follower: request task runs",
            Stage::FollowerAppended => "follower: openraft appended",
            Stage::FollowerReplied => "follower: answer to socket",
            Stage::AppendAcked => "leader: replication task has ack",
            Stage::Applied => "leader: state machine applies",
            Stage::Committed => "leader: client_write returned",
            Stage::ReplySent => "leader: reply to socket",
            Stage::ClientReplyRead => "client: frame read",
            Stage::ClientRecv => "client: has reply",
        }
    }
}

static ON: AtomicBool = AtomicBool::new(false);
static MARKS: [AtomicU64; STAGES] = [const { AtomicU64::new(0) }; STAGES];

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Turns the marks on or off for the whole process.
pub fn enable(on: bool) {
    epoch();
    ON.store(on, Ordering::Relaxed);
}

/// Whether marks are recorded.
#[inline]
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Records `stage` now, unless it was already marked since the last [`begin`].
#[inline]
pub fn mark(stage: Stage) {
    if enabled() {
        mark_now(stage);
    }
}

#[cold]
fn mark_now(stage: Stage) {
    // A stage counts only after the one before it: a mark from the slower follower
    // still busy with the previous write (or a stray message) is not taken for this
    // write's.
    if let Some(before) = required_before(stage) {
        if MARKS[before as usize].load(Ordering::Relaxed) == 0 {
            return;
        }
    }
    // Never 0: 0 means "not seen".
    let t = (epoch().elapsed().as_nanos() as u64).max(1);
    let _ = MARKS[stage as usize].compare_exchange(0, t, Ordering::Relaxed, Ordering::Relaxed);
}

/// The stage that must be marked before `stage` counts: the one before it on the path,
/// skipping [`Stage::Applied`] (marked by the app, if at all).
fn required_before(stage: Stage) -> Option<Stage> {
    let i = stage as usize;
    ALL[..i]
        .iter()
        .rev()
        .find(|s| **s != Stage::Applied)
        .copied()
}

/// Starts a write: forgets every mark, then marks [`Stage::ClientSend`].
pub fn begin() {
    for m in &MARKS {
        m.store(0, Ordering::Relaxed);
    }
    mark(Stage::ClientSend);
}

/// The marks since the last [`begin`], in nanoseconds from a process epoch (0: not seen).
pub fn take() -> [u64; STAGES] {
    std::array::from_fn(|i| MARKS[i].load(Ordering::Relaxed))
}

/// Per-stage medians over many writes' [`take`]s: for each stage, the p50 of the time
/// since the stage before it and since [`Stage::ClientSend`], in nanoseconds. A write
/// counts only when every stage was marked and in path order (except [`Stage::Applied`],
/// which may come before or after the acknowledgement it follows, and stages the app
/// did not mark), so stray marks of another message do not skew it. Returns the medians
/// and the number of writes used.
pub fn medians(writes: &[[u64; STAGES]]) -> (Vec<(Stage, u64, u64)>, usize) {
    let usable: Vec<&[u64; STAGES]> = writes.iter().filter(|w| in_order(w)).collect();
    let mut out = Vec::with_capacity(STAGES);
    for (i, stage) in ALL.iter().enumerate() {
        let (mut step, mut total): (Vec<u64>, Vec<u64>) = usable
            .iter()
            .filter(|w| w[i] != 0)
            .map(|w| {
                let prev = (0..i).rev().find(|&j| w[j] != 0).map_or(w[0], |j| w[j]);
                (w[i].saturating_sub(prev), w[i] - w[0])
            })
            .unzip();
        out.push((*stage, median(&mut step), median(&mut total)));
    }
    (out, usable.len())
}

fn in_order(w: &[u64; STAGES]) -> bool {
    let must = ALL.iter().filter(|s| **s != Stage::Applied);
    if must.clone().any(|s| w[*s as usize] == 0) {
        return false;
    }
    let times: Vec<u64> = must.map(|s| w[*s as usize]).collect();
    times.windows(2).all(|p| p[0] <= p[1])
}

fn median(v: &mut [u64]) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(start: u64) -> [u64; STAGES] {
        std::array::from_fn(|i| start + 10 * i as u64)
    }

    #[test]
    fn medians_take_steps_between_stages_and_skip_writes_out_of_order() {
        let mut late = write(1_000);
        late[Stage::Propose as usize] = 1; // a stray mark before the write began
        let mut missing = write(2_000);
        missing[Stage::FollowerRead as usize] = 0;
        let (medians, used) = medians(&[write(100), write(500), late, missing]);
        assert_eq!(used, 2);
        assert_eq!(medians[0], (Stage::ClientSend, 0, 0));
        assert_eq!(medians[3], (Stage::Propose, 10, 30));
        assert_eq!(
            medians[STAGES - 1],
            (Stage::ClientRecv, 10, 10 * (STAGES as u64 - 1))
        );
    }

    #[test]
    fn marks_are_first_since_begin_and_off_unless_enabled() {
        // The only test touching the process-wide marks.
        begin();
        assert_eq!(take()[Stage::ClientSend as usize], 0, "off: nothing marked");
        enable(true);
        begin();
        mark(Stage::Propose);
        assert_eq!(
            take()[Stage::Propose as usize],
            0,
            "not before its predecessor"
        );
        for stage in [Stage::LeaderRead, Stage::LeaderHandle, Stage::Propose] {
            mark(stage);
        }
        let first = take()[Stage::Propose as usize];
        assert_ne!(first, 0);
        mark(Stage::Propose);
        assert_eq!(
            take()[Stage::Propose as usize],
            first,
            "the first mark stays"
        );
        assert!(take()[Stage::ClientSend as usize] <= first);
        for stage in &ALL[Stage::AppendSend as usize..=Stage::AppendAcked as usize] {
            mark(*stage);
        }
        mark(Stage::Committed);
        assert_ne!(take()[Stage::Committed as usize], 0, "Applied is optional");
        enable(false);
    }
}
