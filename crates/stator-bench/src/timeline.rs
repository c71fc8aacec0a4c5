//! Where a slow write of the migration benchmark comes from: a timeline of the move's
//! phases, of every stall of a host's runtime, and of the slow writes themselves.
//!
//! - [`Timeline`]: events stamped with their offset from the move's start.
//! - [`watch_stalls`]: a ticker on a host's own runtime; a tick that comes late by more
//!   than [`STALL_REPORT`] means something held that (single) thread, and is logged.
//! - [`watch_phases`]: samples the learner's and the leader's Raft metrics and logs each
//!   change of phase (snapshot built, snapshot installed, caught up, leader changed).
//! - [`slow_episodes`]: groups the slow writes of a window into episodes.

use stator_api::ids::GroupId;
use stator_replication::{Host, NodeId};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the stall ticker wakes on a host's runtime.
const STALL_TICK: Duration = Duration::from_millis(1);
/// A tick later than this is a stall worth logging (a loaded 2-core machine delays
/// wake-ups by a millisecond or two without anything being wrong).
pub const STALL_REPORT: Duration = Duration::from_millis(4);
/// How often the phase watcher samples metrics.
const PHASE_SAMPLE: Duration = Duration::from_millis(2);
/// Slow writes whose scheduled times are closer than this belong to one episode.
const EPISODE_GAP: Duration = Duration::from_millis(20);
/// Events kept at most (a runaway stall source must not grow the log without bound).
const MAX_EVENTS: usize = 10_000;

/// Events of one run, by time; printed relative to [`Timeline::start`] once set.
#[derive(Clone, Default)]
pub struct Timeline {
    events: Arc<Mutex<Vec<(Instant, String)>>>,
    start: Arc<Mutex<Option<Instant>>>,
    stopped: Arc<AtomicBool>,
}

impl Timeline {
    /// Records `what` as happening at `at`.
    pub fn event_at(&self, at: Instant, what: String) {
        let mut events = self.events.lock().expect("timeline lock");
        if events.len() < MAX_EVENTS {
            events.push((at, what));
        }
    }

    /// Records `what` as happening now.
    pub fn event(&self, what: String) {
        self.event_at(Instant::now(), what);
    }

    /// Offsets are printed from `at` on.
    pub fn set_start(&self, at: Instant) {
        *self.start.lock().expect("timeline lock") = Some(at);
    }

    /// Stops the watchers.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// Every event from `from` to `to`, sorted, as "offset ms  what" lines relative to
    /// the start.
    pub fn lines(&self, from: Instant, to: Instant) -> Vec<String> {
        let start = self.start.lock().expect("timeline lock").unwrap_or(from);
        let mut events: Vec<(Instant, String)> = self
            .events
            .lock()
            .expect("timeline lock")
            .iter()
            .filter(|(at, _)| *at >= from && *at <= to)
            .cloned()
            .collect();
        events.sort_by_key(|(at, _)| *at);
        events
            .into_iter()
            .map(|(at, what)| format!("{:>8.1} ms  {what}", offset_ms(start, at)))
            .collect()
    }
}

/// `at - start` in milliseconds, negative before the start.
pub fn offset_ms(start: Instant, at: Instant) -> f64 {
    if at >= start {
        at.duration_since(start).as_secs_f64() * 1e3
    } else {
        -(start.duration_since(at).as_secs_f64() * 1e3)
    }
}

/// Runs on host `node`'s runtime until the timeline stops: logs every tick that came
/// more than [`STALL_REPORT`] late, i.e. a time the host's thread ran something else
/// without yielding (or was not scheduled by the OS). Each stall says how much of it the
/// thread spent on a CPU, the fresh pages it touched and how often it was preempted
/// (the thread's own `getrusage`, read once a tick): a stall that ran is the host's own
/// work, one that did not is the thread waiting for a core.
pub async fn watch_stalls(node: NodeId, timeline: Timeline) {
    let mut last = Instant::now();
    let mut usage = ThreadUsage::now();
    while !timeline.stopped() {
        tokio::time::sleep(STALL_TICK).await;
        let now = Instant::now();
        let used = ThreadUsage::now();
        let late = now.duration_since(last).saturating_sub(STALL_TICK);
        if late > STALL_REPORT {
            let what = match (usage, used) {
                (Some(before), Some(after)) => format!(
                    "host {node}: runtime stalled {late:.1?} (ran {:.1} ms, {} fresh pages, preempted {}x)",
                    after.cpu_ns.saturating_sub(before.cpu_ns) as f64 / 1e6,
                    after.minflt.saturating_sub(before.minflt),
                    after.preempted.saturating_sub(before.preempted),
                ),
                _ => format!("host {node}: runtime stalled {late:.1?}"),
            };
            timeline.event_at(last, what);
        }
        last = now;
        usage = used;
    }
}

/// The calling thread's CPU time, minor faults and involuntary context switches.
#[derive(Clone, Copy)]
struct ThreadUsage {
    cpu_ns: u64,
    minflt: u64,
    preempted: u64,
}

impl ThreadUsage {
    #[cfg(target_os = "linux")]
    fn now() -> Option<Self> {
        // SAFETY: getrusage writes one rusage into the zeroed struct it is given.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: RUSAGE_THREAD is the calling thread; `ru` is valid for writes.
        if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
            return None;
        }
        let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
        Some(ThreadUsage {
            cpu_ns: ns(ru.ru_utime) + ns(ru.ru_stime),
            minflt: ru.ru_minflt as u64,
            preempted: ru.ru_nivcsw as u64,
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn now() -> Option<Self> {
        None
    }
}

/// What the phase watcher saw last, to log changes only.
#[derive(Default, PartialEq, Eq)]
struct Seen {
    leader: Option<NodeId>,
    snapshots: BTreeMap<NodeId, Option<u64>>,
    learner_applied_nonzero: bool,
    learner_caught_up: bool,
    voters: Vec<NodeId>,
}

/// Samples the group's metrics on every host until the timeline stops and logs phase
/// changes: a new leader, a snapshot built or installed (by its last index), the
/// learner's first applied entry and its catching up, a new voter set.
pub async fn watch_phases(
    hosts: BTreeMap<NodeId, Host>,
    group: GroupId,
    learner: NodeId,
    timeline: Timeline,
) {
    let mut seen = Seen::default();
    while !timeline.stopped() {
        let mut leader = None;
        let mut leader_last = 0;
        for (id, host) in &hosts {
            let Some(replica) = host.replica(group) else {
                continue;
            };
            let m = replica.raft.metrics().borrow().clone();
            if m.current_leader == Some(*id) && m.state == openraft::ServerState::Leader {
                leader = Some(*id);
                leader_last = m.last_log_index.unwrap_or(0);
                let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
                if voters != seen.voters {
                    timeline.event(format!("host {id} leads with voters {voters:?}"));
                    seen.voters = voters;
                }
            }
            let snapshot = m.snapshot.map(|l| l.index);
            if seen.snapshots.get(id) != Some(&snapshot) {
                if seen.snapshots.contains_key(id) {
                    timeline.event(format!("host {id}: snapshot up to index {snapshot:?}"));
                }
                seen.snapshots.insert(*id, snapshot);
            }
        }
        if leader != seen.leader {
            timeline.event(format!("leader: {:?} -> {leader:?}", seen.leader));
            seen.leader = leader;
        }
        if let Some(status) = hosts.get(&learner).and_then(|h| h.status(group)) {
            if status.applied_index > 0 && !seen.learner_applied_nonzero {
                seen.learner_applied_nonzero = true;
                timeline.event(format!(
                    "host {learner}: first applied index {}",
                    status.applied_index
                ));
            }
            if leader.is_some() && status.applied_index >= leader_last && !seen.learner_caught_up {
                seen.learner_caught_up = true;
                timeline.event(format!(
                    "host {learner}: applied {} = leader's last log index",
                    status.applied_index
                ));
            }
        }
        tokio::time::sleep(PHASE_SAMPLE).await;
    }
}

/// One run of slow writes: scheduled from `first` to `last`, `count` of them, the worst
/// `worst`.
#[derive(Debug, Clone)]
pub struct Episode {
    /// Scheduled time of the first slow write.
    pub first: Instant,
    /// Scheduled time of the last.
    pub last: Instant,
    /// Slow writes in it.
    pub count: usize,
    /// The slowest.
    pub worst: Duration,
}

/// Groups `(scheduled, latency)` pairs slower than `threshold` into episodes: writes
/// scheduled within [`EPISODE_GAP`] of the previous slow one join its episode.
pub fn slow_episodes(mut writes: Vec<(Instant, Duration)>, threshold: Duration) -> Vec<Episode> {
    writes.retain(|(_, latency)| *latency > threshold);
    writes.sort_by_key(|(at, _)| *at);
    let mut episodes: Vec<Episode> = Vec::new();
    for (at, latency) in writes {
        match episodes.last_mut() {
            Some(e) if at.duration_since(e.last) <= EPISODE_GAP => {
                e.last = at;
                e.count += 1;
                e.worst = e.worst.max(latency);
            }
            _ => episodes.push(Episode {
                first: at,
                last: at,
                count: 1,
                worst: latency,
            }),
        }
    }
    episodes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_writes_close_together_make_one_episode() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let writes = vec![
            (t0, ms(1)),
            (t0 + ms(2), ms(30)),
            (t0 + ms(4), ms(28)),
            (t0 + ms(100), ms(2)),
            (t0 + ms(200), ms(15)),
        ];
        let episodes = slow_episodes(writes, ms(10));
        assert_eq!(episodes.len(), 2);
        assert_eq!(episodes[0].count, 2);
        assert_eq!(episodes[0].worst, ms(30));
        assert_eq!(episodes[1].first, t0 + ms(200));
    }
}
